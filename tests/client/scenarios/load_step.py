# One device's work between two syncs in the load test (issue 8): a new note
# whose front names the device and the step, and an edit of the note it
# added the step before (only this device touches its notes, so every change
# must survive).
import fcntl
import tempfile
import time

tag = args["tag"]
step = int(args["step"])
note = col.new_note(col.models.by_name("Basic"))
note["Front"] = f"load-{tag}-{step}"
note["Back"] = "new"
# Note and card ids are millisecond stamps: two devices adding a note in the
# same millisecond would create the same card id, a clash real Anki has too
# (with any server). The test is about the server, so devices take turns,
# each holding the turn into the next millisecond.
with open(os.path.join(tempfile.gettempdir(), "anki_sync_lite_load_step.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    col.add_note(note, col.decks.id("Default"))
    time.sleep(0.003)
if step > 0:
    for nid in col.find_notes(f'"Front:load-{tag}-{step - 1}"'):
        prev = col.get_note(nid)
        prev["Back"] = f"edited at {step}"
        col.update_note(prev)
result = {"notes": col.note_count()}
