# Adds one Basic note whose front is an HTML table of about `chars`
# characters (a legitimately large field); prints its id and field length.
rows = []
size = 0
i = 0
while size < int(args["chars"]):
    row = f"<tr><td>row {i}</td><td>{'cell text ' * 8}</td><td>{i * 7}</td></tr>"
    rows.append(row)
    size += len(row)
    i += 1
note = col.new_note(col.models.by_name("Basic"))
note["Front"] = "<table>" + "".join(rows) + "</table>"
note["Back"] = "large table"
col.add_note(note, col.decks.id("Default"))
result = {"nid": note.id, "len": len(note["Front"])}
