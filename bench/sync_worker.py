#!/usr/bin/env python3
"""One user's client for bench.py's concurrent workload: a separate process,
so several users really sync at once, each through its own Anki library.

The user's two devices (collections already synced with the server) are
opened once; then every round picks device A or B in turn, edits a few notes,
adds one, and runs a normal sync. From the second round on, the sync must also
bring down what the other device did in the round before, so each sync moves
changes both ways and a server that drops them fails here. Prints one JSON
object ({"synced": N, "markers": {nid: first field}}) and exits 0; on failure
prints the reason on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from anki.collection import Collection
from anki.sync_pb2 import SyncCollectionResponse

NORMAL_OUTCOMES = (
    SyncCollectionResponse.ChangesRequired.NO_CHANGES,
    SyncCollectionResponse.ChangesRequired.NORMAL_SYNC,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--device", action="append", required=True, help="A, then B")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--edits", type=int, default=3, help="notes edited per round")
    args = parser.parse_args()

    cols = [Collection(path) for path in args.device]
    try:
        auth = cols[0].sync_login(args.user, args.password, args.endpoint)
        nids = sorted(cols[0].find_notes(""))
        basic = [col.models.by_name("Basic") for col in cols]
        markers: dict[int, str] = {}  # nid -> the first field it was last given
        previous: dict[int, str] = {}  # what the other device did last round
        for rnd in range(args.rounds):
            device = rnd % 2
            col = cols[device]
            edited = {}
            for k in range(args.edits):
                nid = nids[(rnd * args.edits + k) % len(nids)]
                note = col.get_note(nid)
                note.fields[0] = f"{args.user} round {rnd} edit {k}"
                col.update_note(note)
                edited[nid] = note.fields[0]
            note = col.new_note(basic[device])
            note["Front"] = f"{args.user} added in round {rnd}"
            note["Back"] = "bench"
            col.add_note(note, col.decks.id("Default"))
            edited[note.id] = note["Front"]

            out = col.sync_collection(auth, sync_media=False)
            if out.required not in NORMAL_OUTCOMES:
                name = SyncCollectionResponse.ChangesRequired.Name(out.required)
                raise SystemExit(f"{args.user} round {rnd}: sync answered {name}")
            for nid, text in previous.items():
                got = col.get_note(nid).fields[0]
                if got != text:
                    raise SystemExit(
                        f"{args.user} round {rnd}: note {nid} has {got!r}, "
                        f"the other device wrote {text!r}"
                    )
            markers.update(edited)
            previous = edited
    finally:
        for col in cols:
            col.close()
    json.dump({"synced": args.rounds, "markers": {str(k): v for k, v in markers.items()}},
              sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
