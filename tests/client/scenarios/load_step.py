# One device's work between two syncs in the load test (issue 8): a new note
# whose front names the device and the step, and an edit of the note it
# added the step before (only this device touches its notes, so every change
# must survive).
tag = args["tag"]
step = int(args["step"])
note = col.new_note(col.models.by_name("Basic"))
note["Front"] = f"load-{tag}-{step}"
note["Back"] = "new"
col.add_note(note, col.decks.id("Default"))
if step > 0:
    for nid in col.find_notes(f'"Front:load-{tag}-{step - 1}"'):
        prev = col.get_note(nid)
        prev["Back"] = f"edited at {step}"
        col.update_note(prev)
result = {"notes": col.note_count()}
