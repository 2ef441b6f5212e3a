# Deletes `notes` notes (with their cards), one card of the next note, and
# deck `deck` (by name); prints what was deleted so the other device can be
# checked.
count = int(args.get("notes", "2"))
nids = sorted(col.find_notes(""))
deleted_notes = nids[:count]
col.remove_notes(deleted_notes)
victim = nids[count]
deleted_cards = sorted(col.card_ids_of_note(victim))
col.remove_cards_and_orphaned_notes(deleted_cards[:1])
deck = col.decks.id_for_name(args["deck"])
col.decks.remove([deck])
result = {"notes": deleted_notes, "card": deleted_cards[0], "deck": deck}
