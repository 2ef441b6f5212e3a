# Adds one Basic note whose back is `chars` characters of random base64
# (text that compresses badly, as a pasted image or a long random id list;
# the back, so that the sort field does not hold a second copy); prints its
# id and the field's SHA-1.
import base64
import hashlib
import random

rng = random.Random(int(args.get("seed", "1")))
chars = int(args["chars"])
text = base64.b64encode(rng.randbytes(chars * 3 // 4 + 3)).decode()[:chars]
note = col.new_note(col.models.by_name("Basic"))
note["Front"] = "noise"
note["Back"] = text
col.add_note(note, col.decks.id("Default"))
result = {"nid": note.id, "sha1": hashlib.sha1(text.encode()).hexdigest()}
