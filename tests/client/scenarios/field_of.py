# Prints field `ord` (default 0) of note `nid`, or null if it is gone.
try:
    result = col.get_note(int(args["nid"])).fields[int(args.get("ord", "0"))]
except Exception:
    result = None
