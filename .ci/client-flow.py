#!/usr/bin/env python3
"""The real-client flow an installed artifact must pass (.ci/dist-check):
the real Anki library (tests/client/anki_client.py, run with the anki26
venv's python) logs in and syncs through a server someone installed, and
every step is checked on content, not on the absence of errors.

  first   device A makes a collection and does a full upload; device B does
          a full download and must hold exactly what A holds; A adds notes
          and both do a normal sync (equal again); A adds media files and
          both do a media sync (B's media folder must hold exactly A's
          bytes). What was synced is saved in WORK/expected.json.
  again   after a restart (or anywhere the same data should be): a new
          device C does a full download and a media sync and must hold what
          `first` saved; A then has nothing to sync.

Usage: client-flow.py first|again --endpoint URL --user U --password P --work DIR
Prints one JSON object of timings; exits 1 with the first difference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from typing import Any

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "client", "anki_client.py")
NOTES = 300


class FlowError(Exception):
    pass


def driver(*args: str) -> Any:
    out = subprocess.run(
        [sys.executable, DRIVER, *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise FlowError(f"anki_client.py {' '.join(args)} failed:\n{out.stderr.strip()}")
    return json.loads(out.stdout)


def first_difference(path: str, a: Any, b: Any) -> str | None:
    """The first place two dumps differ, as a path; values that differ
    between devices by design are skipped (as tests/support/dumps.rs)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            found = first_difference(f"{path}.{key}", a.get(key), b.get(key))
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(f"{path}[{i}]", x, y)
            if found:
                return found
        return None
    if a == b or locally_stamped(path):
        return None
    return f"{path}: A={str(a)[:200]} B={str(b)[:200]}"


def locally_stamped(path: str) -> bool:
    # A receiving device stamps config rows, its own graves and the tags it
    # registers with its own time and usn; the values themselves are compared.
    return (
        (path.startswith("dump.tables.config[") and path.endswith((".mtime_secs", ".usn")))
        or (path.startswith("dump.tables.graves[") and path.endswith(".usn"))
        or (path.startswith("dump.tables.tags[") and path.endswith(".usn"))
    )


def same(what: str, a: Any, b: Any) -> None:
    found = first_difference("dump", a, b)
    if found:
        raise FlowError(f"{what}: the devices differ at {found}")


class Flow:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = args.work
        self.timings: dict[str, float] = {}

    def server(self, command: str, device: str, *extra: str) -> Any:
        a = self.args
        return driver(
            command, "--path", self.col(device), "--endpoint", a.endpoint,
            "--user", a.user, "--password", a.password, *extra,
        )

    def col(self, device: str) -> str:
        folder = os.path.join(self.work, device)
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, "collection.anki2")

    def sync(self, device: str, want: str) -> None:
        got = self.server("sync", device)["required"]
        if got != want:
            raise FlowError(f"device {device}: sync said {got}, expected {want}")

    def timed(self, name: str, fn: Any) -> Any:
        started = time.monotonic()
        result = fn()
        self.timings[name] = round(time.monotonic() - started, 2)
        return result

    def first(self) -> None:
        made = driver("make", "--path", self.col("a"), "--notes", str(NOTES), "--seed", "12")
        if made["notes"] != NOTES:
            raise FlowError(f"make: {made}")
        login = self.timed("login", lambda: driver(
            "login", "--endpoint", self.args.endpoint, "--user", self.args.user,
            "--password", self.args.password))
        if len(login.get("hkey", "")) < 16:
            raise FlowError(f"login gave no host key: {login}")

        def upload() -> None:
            self.sync("a", "FULL_UPLOAD")
            uploaded = self.server("full-upload", "a")
            if uploaded["notes"] != NOTES:
                raise FlowError(f"full upload: {uploaded}")

        self.timed("full_upload", upload)

        def download() -> None:
            self.sync("b", "FULL_DOWNLOAD")
            self.server("full-download", "b")

        self.timed("full_download", download)
        same("after the full sync", self.dump("a"), self.dump("b"))

        def normal() -> None:
            driver("add-notes", "--path", self.col("a"), "--notes", "25", "--seed", "7")
            self.sync("a", "NO_CHANGES")
            self.sync("b", "NO_CHANGES")

        self.timed("normal_sync", normal)
        dump = self.dump("a")
        if len(dump["notes"]) != NOTES + 25:
            raise FlowError(f"device A has {len(dump['notes'])} notes, expected {NOTES + 25}")
        same("after the normal sync", dump, self.dump("b"))

        media = self.media_files()

        def media_sync() -> None:
            driver("media-add", "--path", self.col("a"), "--src", media)
            self.server("media-sync", "a", "--with-collection")
            self.server("media-sync", "b", "--with-collection")

        self.timed("media_sync", media_sync)
        listing = driver("media-list", "--path", self.col("a"))
        expected = {name: sha1 for name, sha1 in listing.items()}
        if len(expected) != len(os.listdir(media)):
            raise FlowError(f"device A's media folder: {listing}")
        got = driver("media-list", "--path", self.col("b"))
        if got != expected:
            raise FlowError(f"device B's media differ from A's:\n{got}\n{expected}")
        with open(os.path.join(self.work, "expected.json"), "w", encoding="utf-8") as f:
            json.dump({"dump": self.dump("a"), "media": expected}, f)

    def again(self) -> None:
        with open(os.path.join(self.work, "expected.json"), encoding="utf-8") as f:
            expected = json.load(f)
        device = f"c{int(time.time() * 1000)}"

        def download() -> None:
            self.sync(device, "FULL_DOWNLOAD")
            self.server("full-download", device)
            self.server("media-sync", device)

        self.timed("download_again", download)
        same("after the restart", expected["dump"], self.dump(device))
        got = driver("media-list", "--path", self.col(device))
        if got != expected["media"]:
            raise FlowError(f"media after the restart differ:\n{got}\n{expected['media']}")
        self.sync("a", "NO_CHANGES")

    def dump(self, device: str) -> Any:
        return driver("dump", "--path", self.col(device))

    def media_files(self) -> str:
        """A few files of varied names and sizes (one spans several zip
        chunks of the media protocol)."""
        folder = os.path.join(self.work, "media-src")
        os.makedirs(folder, exist_ok=True)
        rng = random.Random(5)
        for name, size in (("flow-1.jpg", 20_000), ("flow-ü ñ.mp3", 700_000), ("flow-3.png", 3)):
            with open(os.path.join(folder, name), "wb") as f:
                f.write(rng.randbytes(size))
        return folder


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=["first", "again"])
    p.add_argument("--endpoint", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--work", required=True)
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    flow = Flow(args)
    try:
        getattr(flow, args.phase)()
    except FlowError as e:
        print(f"client-flow {args.phase}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(flow.timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
