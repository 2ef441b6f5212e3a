# Creates deck `name` and prints its id.
result = col.decks.id(args["name"])
