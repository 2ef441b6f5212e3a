# Which of the given note, card and deck ids still exist.
def present(sql, ids):
    return sorted(i for i in ids if col.db.scalar(sql, i))
result = {
    "notes": present("select count() from notes where id = ?", [int(x) for x in args.get("notes", "").split(",") if x]),
    "cards": present("select count() from cards where id = ?", [int(x) for x in args.get("cards", "").split(",") if x]),
    "decks": present("select count() from decks where id = ?", [int(x) for x in args.get("decks", "").split(",") if x]),
}
