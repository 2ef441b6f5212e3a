# Builds a realistic collection on the legacy client, like anki_client.py
# `make` does on the current one: a custom 3-field/2-template notetype with
# CSS, nested decks, a non-default deck option group, `notes` notes with
# tags and non-ASCII text, scheduling changes and reviews through the v3
# scheduler (switched on as a 2.1.56 user would in the preferences), and a
# config value. Prints the table counts and the number of reviews.
import random

from anki.scheduler_pb2 import CardAnswer

rng = random.Random(int(args.get("seed", "5")))
count = int(args.get("notes", "60"))
WORDS = "uno dos tres cuatro cinco seis siete ocho nueve diez casa perro gato".split()

col.set_v3_scheduler(True)
col._load_scheduler()

mm = col.models
nt = mm.new("Legacy Vocab")
for name in ("Word", "Meaning", "Example"):
    mm.add_field(nt, mm.new_field(name))
for name, q, a in (
    ("Recognise", "<div class=word>{{Word}}</div>", "{{FrontSide}}<hr id=answer>{{Meaning}}<br><i>{{Example}}</i>"),
    ("Recall", "{{Meaning}}", "{{FrontSide}}<hr id=answer>{{Word}}"),
):
    t = mm.new_template(name)
    t["qfmt"], t["afmt"] = q, a
    mm.add_template(nt, t)
nt["css"] = ".card { font-family: serif; color: #654321; }\n.word { font-size: 2em; }\n"
mm.add_dict(nt)
vocab = mm.by_name("Legacy Vocab")
basic = mm.by_name("Basic")

deck_ids = [col.decks.id(name) for name in ("Default", "Legacy", "Legacy::Nested", "Legacy Other")]
conf_id = col.decks.add_config_returning_id("Legacy options")
conf = col.decks.get_config(conf_id)
conf["new"]["perDay"] = 77
conf["rev"]["perDay"] = 777
conf["new"]["delays"] = [3.0, 30.0]
conf["maxTaken"] = 45
col.decks.update_config(conf)
col.decks.set_config_id_for_deck_dict(col.decks.get(deck_ids[2]), conf_id)

for i in range(count):
    if i % 3 == 0:
        note = col.new_note(basic)
        note["Front"] = f"LQ{i}: " + " ".join(rng.choice(WORDS) for _ in range(3))
        note["Back"] = f"LA{i}: <b>{rng.randint(0, 10**6)}</b>"
    else:
        note = col.new_note(vocab)
        note["Word"] = f"{rng.choice(WORDS)}-{i}"
        note["Meaning"] = " ".join(rng.choice(WORDS) for _ in range(3))
        note["Example"] = " ".join(rng.choice(WORDS) for _ in range(6)) + " \u00e9\u00fc\u65e5\u672c"
    note.tags = rng.sample(["legacy", "verb", "noun", "old::nested", "ünï"], 2)
    col.add_note(note, deck_ids[i % len(deck_ids)])

cids = sorted(col.db.list("select id from cards"))
sample = rng.sample(cids, max(9, len(cids) // 10))
third = len(sample) // 3
col.sched.set_due_date(sample[:third], "1-30!")
col.set_user_flag_for_cards(2, sample[third:2 * third])
col.sched.suspend_cards(sample[2 * third:2 * third + 2])
col.sched.bury_cards(sample[2 * third + 2:2 * third + 4])


def review(n, decks):
    """Answers up to `n` cards through the v3 queue, deck by deck."""
    ratings = [CardAnswer.AGAIN, CardAnswer.HARD, CardAnswer.GOOD, CardAnswer.EASY]
    done = 0
    for index, did in enumerate(decks):
        col.decks.select(did)
        share = n * (index + 1) // len(decks) - n * index // len(decks)
        for _ in range(share):
            queued = col.sched.get_queued_cards(fetch_limit=1)
            if not queued.cards:
                break
            qc = queued.cards[0]
            card = col.get_card(qc.card.id)
            card.start_timer()
            answer = col.sched.build_answer(card=card, states=qc.states, rating=rng.choice(ratings))
            answer.milliseconds_taken = rng.randint(500, 20000)
            col.sched.answer_card(answer)
            done += 1
    col.decks.select(decks[0])
    return done


reviewed = review(int(args.get("reviews", "20")), deck_ids)
col.set_config("legacyMadeBy", {"client": "2.1.56", "notes": count})
# 2.1.56 commits on close only if it sees a change, by comparing col.mod
# in milliseconds: a config write in the same millisecond as the last
# save would be rolled back. Mark it as a change.
col.db.modified_in_python = True
result = table_counts(col)
result["reviewed"] = reviewed
