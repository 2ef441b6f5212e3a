# Device A's everyday work between two syncs (issue 3's first scenario):
# 50 new notes, 5 edits, 3 deletions, a new deck, a filtered deck, a tag, a
# deck option, reviews, a new 3-field/2-template notetype and a config value.
rng = random.Random(int(args.get("seed", "7")))
main_deck = col.decks.id("Sync scenario")
add_notes(col, 50, rng, [main_deck])
nids = sorted(col.find_notes(f"did:{main_deck}"))
for nid in nids[:5]:
    note = col.get_note(nid)
    note.fields[0] = note.fields[0] + " (edited on A)"
    col.update_note(note)
col.tags.bulk_add(nids[8:12], "tagged_on_a")
child = col.decks.id("Sync scenario::Child from A")
filtered = col.sched.get_or_create_filtered_deck(deck_id=0)
filtered.name = "Filtered on A"
filtered.config.search_terms[0].search = "tag:tagged_on_a"
filtered.config.search_terms[0].limit = 100
col.sched.add_or_update_filtered_deck(filtered)
conf = col.decks.get_config(1)
conf["new"]["perDay"] = 33
conf["rev"]["perDay"] = 444
col.decks.update_config(conf)
reviewed = review_some(col, 10, rng, [main_deck])
mm = col.models
nt = mm.new("Three fields")
for name in ("One", "Two", "Three"):
    mm.add_field(nt, mm.new_field(name))
for name, q, a in (("Forward", "{{One}}", "{{Two}}"), ("Reverse", "{{Two}}", "{{One}} {{Three}}")):
    t = mm.new_template(name)
    t["qfmt"], t["afmt"] = q, a
    mm.add_template(nt, t)
nt["css"] = ".card { color: green; }"
mm.add_dict(nt)
three = mm.by_name("Three fields")
note = col.new_note(three)
note["One"], note["Two"], note["Three"] = "1", "2", "3"
col.add_note(note, child)
# Deleted last: Anki gives a new card the current millisecond as its id when
# no card has it, and `add_notes` above numbered its cards ahead of the
# clock, so a card added after the deletion could take a deleted card's id.
# Its grave would then already be in the graves table (with the usn of the
# sync that sent it), and deleting that card later (B deletes its deck)
# would add no new grave: the server would keep the card, and the sanity
# check fail on either server (seen under qemu in CI).
col.remove_notes(nids[5:8])
col.set_config("liteScenarioValue", {"from": "A", "n": 1})
result = {"reviewed": reviewed, "notes": col.note_count()}
