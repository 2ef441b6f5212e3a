#!/usr/bin/env python3
"""One compatibility scenario with whatever `anki` release is importable
(2.1.26 to 26.9), run by scripts/compat in that release's own virtualenv.

Two devices, A and B, on one account, through the release's own sync code,
called the way that release's desktop app calls it:
    login          A logs in
    full upload    A (3 notes, 2 media files) uploads to the empty account
    full download  B (empty) downloads; B must hold A's notes and cards
    normal A->B    A adds a note; both sync; B must hold it
    normal B->A    B adds a note and edits one; both sync; A must hold them
    media A->B     A syncs its 2 files up; B syncs and must hold them, byte for byte
    media B->A     B adds a file and syncs; A syncs and must hold it

Prints one JSON object: {"version": ..., "steps": {step: "ok" | "FAIL: why"},
"notes": [...]} and exits 0 even when steps fail (a broken step is a result);
exits 1 only if the scenario itself could not run.

The sync API changed four times in these releases; `Client` picks the one
the release has:
  * 2.1.26: Python sync code (`anki.sync.Syncer`, endpoint `anki.sync.SYNC_BASE`),
    media through the Rust backend with an explicit endpoint;
  * 2.1.28 to 2.1.40: backend calls (`col.backend.sync_login` ...), endpoints
    from the SYNC_ENDPOINT / SYNC_ENDPOINT_MEDIA environment variables;
  * 2.1.41 to 2.1.56: the same through `col.sync_login` ...;
  * 2.1.57 and later: an endpoint argument at login (protocol v11), and from
    23.10 `full_upload_or_download` and a background media sync.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
import traceback


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", required=True, help="server URL with the trailing /")
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    return p.parse_args()


ARGS = parse_args()
BASE = ARGS.endpoint if ARGS.endpoint.endswith("/") else ARGS.endpoint + "/"
# Read by 2.1.28 to 2.1.56 for every request; harmless later.
os.environ["SYNC_ENDPOINT"] = BASE + "sync/"
os.environ["SYNC_ENDPOINT_MEDIA"] = BASE + "msync/"

import anki  # noqa: E402

# The test drivers' helpers that work with every release (Python 3.8 too).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "client"))
from driver_common import media_listing  # noqa: E402

try:
    from anki.collection import Collection  # 2.1.28 and later
except ImportError:
    from anki.storage import Collection  # 2.1.26

VERSION = getattr(anki, "version", None) or __import__("anki.buildinfo").buildinfo.version

# ------------------------------------------------------------ collections


def open_col(path: str):
    return Collection(path)


def close_col(col) -> None:
    col.close()


def add_note(col, front: str, back: str) -> None:
    models = col.models
    basic = models.by_name("Basic") if hasattr(models, "by_name") else models.byName("Basic")
    if hasattr(col, "new_note"):
        note = col.new_note(basic)
    else:
        models.setCurrent(basic)
        note = col.newNote()
    note["Front"] = front
    note["Back"] = back
    if hasattr(col, "add_note"):
        col.add_note(note, 1)
    else:
        col.addNote(note)


def edit_first_note(col, back: str) -> None:
    nid = col.db.scalar("select id from notes order by id limit 1")
    note = col.get_note(nid) if hasattr(col, "get_note") else col.getNote(nid)
    note["Back"] = back
    if hasattr(col, "update_note"):
        col.update_note(note)
    else:
        note.flush()


def add_media(col, name: str, data: bytes) -> str:
    with tempfile.TemporaryDirectory() as folder:
        src = os.path.join(folder, name)
        with open(src, "wb") as f:
            f.write(data)
        media = col.media  # (which copies the file into the media folder)
        return media.add_file(src) if hasattr(media, "add_file") else media.addFile(src)


def content(col) -> dict:
    """What two devices must agree on after a sync. (2.1.26 keeps an empty
    tag list as "  " locally and sends "", with either server.)"""
    return {
        "notes": [list(r) for r in col.db.all("select guid, flds, trim(tags) from notes order by guid")],
        "cards": [
            list(r)
            for r in col.db.all(
                "select id, nid, ord, type, queue, due, ivl, factor, reps, lapses from cards order by id"
            )
        ],
    }


def media_files(col) -> dict:
    return media_listing(col.media.dir())


def difference(a: dict, b: dict) -> str | None:
    """None if equal; else which part differs (and for cards, which columns)."""
    if a["notes"] != b["notes"]:
        pairs = [(x, y) for x, y in zip(a["notes"], b["notes"]) if x != y]
        first = f": {pairs[0][0]} vs {pairs[0][1]}" if pairs else ""
        return f"notes differ ({len(a['notes'])} vs {len(b['notes'])}){first}"
    if a["cards"] != b["cards"]:
        cols = ["id", "nid", "ord", "type", "queue", "due", "ivl", "factor", "reps", "lapses"]
        if len(a["cards"]) != len(b["cards"]):
            return f"cards differ ({len(a['cards'])} vs {len(b['cards'])})"
        which = sorted(
            {cols[i] for x, y in zip(a["cards"], b["cards"]) for i in range(len(cols)) if x[i] != y[i]}
        )
        return "cards differ in " + ", ".join(which)
    return None


# ------------------------------------------------------------ sync APIs


def required_name(out) -> str:
    field = out.DESCRIPTOR.fields_by_name["required"]
    return field.enum_type.values_by_number[out.required].name


class Client:
    """The release's sync calls. `sync` returns NO_CHANGES, NORMAL_SYNC
    (done), FULL_SYNC, FULL_UPLOAD or FULL_DOWNLOAD; full syncs and media
    sync leave the collection closed and return a reopened one."""

    def __init__(self, col):
        if hasattr(col, "full_upload_or_download"):
            self.kind = "v11-23.10"
        elif hasattr(col, "sync_login") and "endpoint" in inspect.signature(col.sync_login).parameters:
            self.kind = "v11-2.1.57"
        elif hasattr(col, "sync_login"):
            self.kind = "backend-col"
        elif hasattr(getattr(col, "backend", None), "sync_login"):
            self.kind = "backend"
        else:
            self.kind = "python"

    def login(self, col):
        if self.kind == "python":
            from anki.sync import RemoteServer

            self._python_endpoint()
            hkey = RemoteServer(None, None).hostKey(ARGS.user, ARGS.password)
            if not hkey:
                raise RuntimeError("login refused")
            return hkey
        if self.kind == "backend":
            return col.backend.sync_login(username=ARGS.user, password=ARGS.password)
        if self.kind == "backend-col":
            return col.sync_login(ARGS.user, ARGS.password)
        auth = col.sync_login(ARGS.user, ARGS.password, BASE)
        # 2.1.57 to 23.10 answer with the key alone; their desktop app sends
        # the endpoint from its profile with every call (ProfileManager.sync_auth).
        if not auth.endpoint:
            auth.endpoint = BASE
        return auth

    def _python_endpoint(self) -> None:
        import anki.sync

        # `SYNC_BASE % hostNum` + "sync/"; our host number is empty.
        anki.sync.SYNC_BASE = BASE + "%s"

    def sync(self, col, auth) -> str:
        if self.kind == "python":
            from anki.sync import RemoteServer, Syncer

            self._python_endpoint()
            ret = Syncer(col, RemoteServer(auth, None)).sync()
            return {"noChanges": "NO_CHANGES", "success": "NORMAL_SYNC", "fullSync": "FULL_SYNC"}.get(
                ret, ret
            )
        self._leave_transaction(col)
        try:
            if self.kind == "backend":
                out = col.backend.sync_collection(auth)
            elif self.kind == "v11-23.10":
                out = col.sync_collection(auth, False)
            else:
                out = col.sync_collection(auth)
        finally:
            self._enter_transaction(col)
        name = required_name(out)
        return name

    def full(self, col, auth, path: str, upload: bool):
        if self.kind == "python":
            from anki.sync import FullSyncer, RemoteServer

            self._python_endpoint()
            server = RemoteServer(auth, None)
            syncer = FullSyncer(col, auth, server.client, None)
            if upload:
                ok = syncer.upload()  # closes the collection
                if not ok:
                    raise RuntimeError("upload refused")
            else:
                ret = syncer.download()  # closes the collection
                if ret:
                    raise RuntimeError(ret)
            return open_col(path)
        col.close_for_full_sync()
        try:
            if self.kind == "backend":
                (col.backend.full_upload if upload else col.backend.full_download)(auth)
            elif self.kind == "v11-23.10":
                col.full_upload_or_download(auth=auth, server_usn=None, upload=upload)
            else:
                (col.full_upload if upload else col.full_download)(auth)
        finally:
            col.reopen(after_full_sync=True)
        return col

    def media(self, col, auth) -> None:
        if self.kind == "python":
            col.backend.sync_media(auth, BASE + "msync/")
        elif self.kind == "backend":
            col.backend.sync_media(auth)
        else:
            col.sync_media(auth)
            if hasattr(col, "media_sync_status"):
                deadline = time.monotonic() + 300
                while col.media_sync_status().active:
                    if time.monotonic() > deadline:
                        raise RuntimeError("media sync still running after 300 s")
                    time.sleep(0.05)

    # Releases before 23.10 keep a Python-side transaction open; their
    # desktop app commits it before the backend syncs and opens a new one after.
    def _leave_transaction(self, col) -> None:
        if self.kind in ("backend", "backend-col", "v11-2.1.57"):
            col.save(trx=False)

    def _enter_transaction(self, col) -> None:
        if self.kind in ("backend", "backend-col", "v11-2.1.57"):
            col.db.begin()


# ------------------------------------------------------------ scenario


def main() -> int:
    tmp = tempfile.mkdtemp(prefix="compat-")
    try:
        return scenario(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def scenario(tmp: str) -> int:
    path_a = os.path.join(tmp, "a", "collection.anki2")
    path_b = os.path.join(tmp, "b", "collection.anki2")
    os.makedirs(os.path.dirname(path_a))
    os.makedirs(os.path.dirname(path_b))
    steps: dict[str, str] = {}
    notes: list[str] = []
    state = {"auth": None}

    def step(name: str, fn) -> None:
        if any(v != "ok" for v in steps.values()):
            steps[name] = "skipped"
            return
        try:
            why = fn()
            steps[name] = "ok" if not why else "FAIL: " + why
        except Exception as err:  # a client error is a result
            steps[name] = f"FAIL: {type(err).__name__}: {str(err)[:300]}"
            notes.append(traceback.format_exc(limit=3))

    col_a = open_col(path_a)
    client = Client(col_a)
    notes.append(f"sync API: {client.kind}")
    for i in range(3):
        add_note(col_a, f"front {i} 日本語", f"back {i}")
    add_media(col_a, "apple.jpg", os.urandom(20_000))
    add_media(col_a, "日本語 音声.mp3", os.urandom(5_000))
    close_col(col_a)

    def login():
        col = open_col(path_a)
        try:
            state["auth"] = client.login(col)
        finally:
            close_col(col)

    def sync_then(path: str, allowed: tuple[str, ...], full_upload: bool | None = None):
        col = open_col(path)
        try:
            required = client.sync(col, state["auth"])
            if required not in allowed:
                return f"sync said {required}, expected one of {', '.join(allowed)}"
            if full_upload is not None:
                col = client.full(col, state["auth"], path, full_upload)
            return None
        finally:
            close_col(col)

    def with_col(path: str, fn):
        """fn(collection at path), closed afterwards."""
        col = open_col(path)
        try:
            return fn(col)
        finally:
            close_col(col)

    def full_upload():
        return sync_then(path_a, ("FULL_SYNC", "FULL_UPLOAD"), full_upload=True)

    def full_download():
        why = sync_then(path_b, ("FULL_SYNC", "FULL_DOWNLOAD"), full_upload=False)
        return why or difference(with_col(path_a, content), with_col(path_b, content))

    def normal(src: str, dst: str, change):
        with_col(src, change)
        for path in (src, dst):
            why = sync_then(path, ("NORMAL_SYNC", "NO_CHANGES"))
            if why:
                return why
        return difference(with_col(path_a, content), with_col(path_b, content))

    def media(src: str, dst: str, change):
        if change:
            with_col(src, change)
        for path in (src, dst):
            with_col(path, lambda col: client.media(col, state["auth"]))
        a, b = with_col(path_a, media_files), with_col(path_b, media_files)
        want = with_col(src, media_files)
        if with_col(dst, media_files) != want:
            return f"media differ: {sorted(a)} vs {sorted(b)}"
        return None

    step("login", login)
    step("full upload", full_upload)
    step("full download", full_download)
    step("normal A->B", lambda: normal(path_a, path_b, lambda c: add_note(c, "from A", "a")))

    def b_changes(col):
        add_note(col, "from B", "b")
        edit_first_note(col, "edited on B")

    step("normal B->A", lambda: normal(path_b, path_a, b_changes))
    step("media A->B", lambda: media(path_a, path_b, None))
    step(
        "media B->A",
        lambda: media(path_b, path_a, lambda c: add_media(c, "from b.png", os.urandom(3_000))),
    )
    print(json.dumps({"version": VERSION, "steps": steps, "notes": notes}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(1)
