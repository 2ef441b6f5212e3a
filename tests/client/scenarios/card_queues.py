# Prints type, queue, mod and usn of the cards `--arg ids=1,2,...` and the
# `lastUnburied` config, straight from the database: the scheduler is never
# asked (it would unbury by itself and hide what the server sent).
ids = [int(x) for x in args["ids"].split(",")]
result = {
    "cards": {
        str(cid): col.db.first("select type, queue, due, mod, usn from cards where id = ?", cid)
        for cid in ids
    },
    "lastUnburied": col.get_config("lastUnburied", None),
}
