#!/usr/bin/env python3
"""One user's client for bench.py's concurrent workload: a separate process,
so several users really sync at once, each through its own Anki library.

The user's two devices (collections already synced with the server) are
opened and logged in first; then the worker prints "ready" and waits for a
line on stdin, so every user starts at the same moment and no process
start-up is timed. Each round device A adds notes and edits a few, A runs a
normal sync, then B does, and B must then hold what A did. Prints one JSON
object ({"synced": N, "markers": {nid: first field}}) and exits 0; on
failure prints the reason on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from anki.collection import Collection
from anki.sync_pb2 import SyncCollectionResponse

NORMAL_OUTCOMES = (
    SyncCollectionResponse.ChangesRequired.NO_CHANGES,
    SyncCollectionResponse.ChangesRequired.NORMAL_SYNC,
)


def change_round(col: Collection, nids: list[int], rnd: int, label: str, adds: int,
                 edits: int) -> dict[int, str]:
    """Round `rnd` on device A: edits `edits` of `nids` (the first field) and
    adds `adds` Basic notes; returns {note id: first field} of what changed.
    bench.py's one-user rounds use it too."""
    changed = {}
    for k in range(edits):
        nid = nids[(rnd * edits + k) % len(nids)]
        note = col.get_note(nid)
        note.fields[0] = f"{label} round {rnd} edit {k}"
        col.update_note(note)
        changed[nid] = note.fields[0]
    basic = col.models.by_name("Basic")
    deck = col.decks.id("Default")
    for k in range(adds):
        note = col.new_note(basic)
        note["Front"] = f"{label} added in round {rnd} ({k})"
        note["Back"] = "bench"
        col.add_note(note, deck)
        changed[note.id] = note["Front"]
    return changed


def differences(col: Collection, changed: dict[int, str]) -> dict[int, str]:
    """{note id: first field found} where `col` lacks what `changed` says."""
    wrong = {}
    for nid, text in changed.items():
        try:
            got = col.get_note(nid).fields[0]
        except Exception:  # the library raises NotFoundError for a missing note
            got = "<missing>"
        if got != text:
            wrong[nid] = got
    return wrong


def sync(col: Collection, auth, what: str) -> None:
    out = col.sync_collection(auth, sync_media=False)
    if out.required not in NORMAL_OUTCOMES:
        name = SyncCollectionResponse.ChangesRequired.Name(out.required)
        raise SystemExit(f"{what}: sync answered {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--device", action="append", required=True, help="A, then B")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--adds", type=int, default=20, help="notes A adds per round")
    parser.add_argument("--edits", type=int, default=5, help="notes A edits per round")
    args = parser.parse_args()

    a, b = (Collection(path) for path in args.device)
    try:
        auth_a = a.sync_login(args.user, args.password, args.endpoint)
        auth_b = b.sync_login(args.user, args.password, args.endpoint)
        nids = sorted(a.find_notes(""))
        print("ready", flush=True)
        sys.stdin.readline()
        # This process's CPU (every thread: the backend syncs on its own),
        # to show how much of the two cores the clients themselves take.
        started_cpu = time.process_time()
        markers: dict[int, str] = {}  # nid -> the first field A last gave it
        for rnd in range(args.rounds):
            changed = change_round(a, nids, rnd, args.user, args.adds, args.edits)
            sync(a, auth_a, f"{args.user} round {rnd}, device A")
            sync(b, auth_b, f"{args.user} round {rnd}, device B")
            wrong = differences(b, changed)
            if wrong:
                raise SystemExit(f"{args.user} round {rnd}: B lacks A's changes: {wrong}")
            markers.update(changed)
        cpu_secs = time.process_time() - started_cpu
    finally:
        a.close()
        b.close()
    json.dump({"synced": 2 * args.rounds, "cpu_secs": cpu_secs,
               "markers": {str(k): v for k, v in markers.items()}}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
