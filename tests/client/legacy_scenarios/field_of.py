# Prints the first field of note `nid`, or null if it is gone.
try:
    result = col.get_note(int(args["nid"])).fields[0]
except Exception:
    result = None
