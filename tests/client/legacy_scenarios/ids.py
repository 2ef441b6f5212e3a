# Which of the given note, card and deck ids exist (comma-separated lists).
def present(sql, ids):
    return sorted(i for i in ids if col.db.scalar(sql, i))


def id_list(key):
    return [int(x) for x in args.get(key, "").split(",") if x]


result = {
    "notes": present("select count() from notes where id = ?", id_list("notes")),
    "cards": present("select count() from cards where id = ?", id_list("cards")),
    "decks": present("select count() from decks where id = ?", id_list("decks")),
}
