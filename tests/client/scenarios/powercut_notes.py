# The power-cut trials' note changes (tests/it/powercut/): adds `add` notes,
# edits `edit` notes and deletes `delete` notes, chosen with `seed`. Every
# added or edited note's first field carries the marker `#v<version>#`, so
# the trials can tell which version of a note reached the server.
import random
import re

rng = random.Random(int(args["seed"]))
version = int(args["version"])
marker = f"#v{version}#"
existing = sorted(col.find_notes(""))
deleted = rng.sample(existing, min(int(args.get("delete", "0")), max(0, len(existing) - 5)))
kept = [nid for nid in existing if nid not in deleted]
edited = rng.sample(kept, min(int(args.get("edit", "0")), len(kept)))
for nid in edited:
    note = col.get_note(nid)
    note.fields[0] = re.sub(r"#v\d+#", "", note.fields[0]) + marker
    col.update_note(note)
if deleted:
    col.remove_notes(deleted)
basic = col.models.by_name("Basic")
added = []
for i in range(int(args.get("add", "0"))):
    note = col.new_note(basic)
    note["Front"] = f"power cut {version}.{i} {marker}"
    note["Back"] = f"answer {rng.randint(0, 10**9)}"
    col.add_note(note, col.decks.id("Default"))
    added.append(note.id)
result = {"added": added, "edited": sorted(edited), "deleted": sorted(deleted)}
