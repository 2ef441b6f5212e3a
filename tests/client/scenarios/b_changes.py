# Device B's changes after receiving A's: new notes, an edit, a new deck,
# a deck deleted with its cards, a review and a config change.
rng = random.Random(int(args.get("seed", "11")))
deck = col.decks.id("Added on B")
add_notes(col, 20, rng, [deck])
nid = sorted(col.find_notes("tag:tagged_on_a"))[0]
note = col.get_note(nid)
note.fields[1] = "changed on B"
note.tags.append("tagged_on_b")
col.update_note(note)
gone = col.decks.id_for_name("Sync scenario::Child from A")
col.decks.remove([gone])
reviewed = review_some(col, 5, rng, [deck])
col.set_config("liteScenarioValue", {"from": "B", "n": 2})
result = {"reviewed": reviewed, "notes": col.note_count()}
