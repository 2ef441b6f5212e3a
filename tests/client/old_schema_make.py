#!/usr/bin/env python3
"""Makes a collection with an old Anki library (2.1.26 writes schema 14,
2.1.41 schema 17) and closes it without a downgrade, so the file keeps the
library's own schema: the kind of file no client uploads, which a server
must still take (tests/it/old_schemas.rs). Uses only the API both versions
have. Prints {"ver": ..., "notes": [...]} on stdout.

Usage: old_schema_make.py PATH
"""

import json
import sys

try:
    from anki.collection import Collection
except ImportError:  # 2.1.26 exports it from the package only
    from anki import Collection

col = Collection(sys.argv[1])
deck = col.decks.id("Old::Child")
conf = col.decks.confId("Old preset")
preset = col.decks.getConf(conf)
preset["new"]["initialFactor"] = 2300
preset["new"]["perDay"] = 33
col.decks.updateConf(preset)
child = col.decks.get(deck)
child["conf"] = conf
col.decks.save(child)
notes = []
for i in range(3):
    note = col.newNote()
    note["Front"] = f"old front {i}"
    note["Back"] = f"old back {i}"
    note.tags = ["old_tag", f"n{i}"]
    note.model()["did"] = deck
    col.addNote(note)
    notes.append(note.id)
col.conf["oldClientKey"] = {"kept": True}
col.setMod()
col.close(downgrade=False)
ver = __import__("sqlite3").connect(sys.argv[1]).execute("select ver from col").fetchone()[0]
print(json.dumps({"ver": ver, "notes": notes}))
