# Sets the first field of note `nid` (or of the lowest note id) to `text`.
nid = int(args["nid"]) if "nid" in args else min(col.find_notes(""))
note = col.get_note(nid)
note.fields[0] = args["text"]
col.update_note(note)
result = {"nid": nid, "mod": col.get_note(nid).mod}
