# A legacy device's everyday work between two syncs: 15 new notes in a new
# deck, 3 edits, 2 deleted notes and one deleted deck (with its cards), a
# tag, a deck option change on the Default group, 5 reviews, a new notetype
# with a note, and a config value. Prints what it did, so the other device
# can be checked for each change.
import random
import time

rng = random.Random(int(args.get("seed", "9")))
nids = sorted(col.find_notes(""))
edited = nids[:3]
for nid in edited:
    note = col.get_note(nid)
    note.fields[0] = note.fields[0] + " (edited on legacy)"
    col.update_note(note)
deleted = nids[3:5]
col.remove_notes(deleted)
col.tags.bulk_add(nids[5:9], "tagged_on_legacy")

doomed = col.decks.id("Legacy doomed deck")
basic = col.models.by_name("Basic")
doomed_notes = []
for i in range(2):
    # Ids are millisecond stamps: objects made in the same millisecond can
    # share an id across kinds, and 2.1.56's deck removal then misses a
    # note (seen with the official server too). Keep them apart.
    time.sleep(0.005)
    note = col.new_note(basic)
    note["Front"], note["Back"] = f"doomed {i}", "gone soon"
    col.add_note(note, doomed)
    doomed_notes.append(note.id)
time.sleep(0.005)
col.decks.remove([doomed])
left = [n for n in doomed_notes if col.db.scalar("select count() from notes where id = ?", n)]
if left:
    raise Exception(f"2.1.56 kept notes of the deck it removed: {left}")

deck = col.decks.id("Added on legacy")
added = []
for i in range(15):
    note = col.new_note(basic)
    note["Front"] = f"legacy new {i}"
    note["Back"] = f"r\u00e9ponse {rng.randint(0, 999)} \u65e5\u672c"
    note.tags = ["from_legacy"]
    col.add_note(note, deck)
    added.append(note.id)

conf = col.decks.get_config(1)
conf["new"]["perDay"] = 44
conf["rev"]["perDay"] = 555
conf["lapse"]["leechFails"] = 6
col.decks.update_config(conf)

mm = col.models
nt = mm.new("Legacy two fields")
for name in ("Left", "Right"):
    mm.add_field(nt, mm.new_field(name))
t = mm.new_template("Card L")
t["qfmt"], t["afmt"] = "{{Left}}", "{{FrontSide}}<hr id=answer>{{Right}}"
mm.add_template(nt, t)
nt["css"] = ".card { color: teal; }"
mm.add_dict(nt)
note = col.new_note(mm.by_name("Legacy two fields"))
note["Left"], note["Right"] = "links", "rechts"
col.add_note(note, deck)
added.append(note.id)

reviewed = 0
if col.v3_scheduler():
    from anki.scheduler_pb2 import CardAnswer

    col.decks.select(deck)
    for _ in range(5):
        queued = col.sched.get_queued_cards(fetch_limit=1)
        if not queued.cards:
            break
        qc = queued.cards[0]
        card = col.get_card(qc.card.id)
        card.start_timer()
        answer = col.sched.build_answer(card=card, states=qc.states, rating=CardAnswer.GOOD)
        answer.milliseconds_taken = 4000
        col.sched.answer_card(answer)
        reviewed += 1
col.set_config("legacyScenarioValue", {"from": "legacy", "n": 1})
# 2.1.56 commits on close only if it sees a change, by comparing col.mod
# in milliseconds: a config write in the same millisecond as the last
# save would be rolled back. Mark it as a change.
col.db.modified_in_python = True
result = {
    "edited": edited,
    "deleted": deleted + doomed_notes,
    "deleted_deck": doomed,
    "added": added,
    "reviewed": reviewed,
    "notes": col.note_count(),
}
