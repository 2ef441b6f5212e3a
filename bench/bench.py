#!/usr/bin/env python3
"""Benchmarks anki-sync-lite against the official sync server in one run.

Both servers get the same workloads, each on a fresh instance with its own
temporary SYNC_BASE on 127.0.0.1: idle memory, sequential logins, full
upload / full download of generated collections, normal syncs between two
devices, four users syncing at once from separate client processes, media
files up and down, and a decompression bomb. The client is the real Anki
library (imported here, so timings carry no process start-up, except the
concurrent one's), and every workload checks what arrived so a broken server
cannot look fast. Prints a markdown table; exits 1 if any workload failed.

Run it through bench/run, which prepares the venv and the release binary; see
bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

try:
    import anki.buildinfo
    from anki.collection import Collection
    from anki.sync_pb2 import SyncCollectionResponse
except ImportError:
    sys.exit("bench.py needs the anki library: run it through bench/run")

REPO = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
if not TARGET.is_absolute():
    TARGET = REPO / TARGET
CACHE = TARGET / "bench-cache"
DRIVER = REPO / "tests/client/anki_client.py"

USER, PASSWORD = "bench", "bench-pass"
KINDS = ("ours", "official")
SIZES = (5_000, 50_000)
LOGINS = 20
IDLE_SETTLE_SECONDS = 2.0
HEALTH_TIMEOUT = 20.0
START_ATTEMPTS = 5
# Generous caps so a hung server fails the workload instead of the whole run.
LOGIN_TIMEOUT = 60.0
FULL_SYNC_TIMEOUT = 180.0
# The same limit for both servers; the official default (100) would be
# enough today, but a cap must never be what decides a comparison.
PAYLOAD_MEGS = "1024"
CLK_TCK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


class BenchError(Exception):
    """A workload failed: a server misbehaved or a check did not hold."""


# ---------------------------------------------------------------- /proc


def process_tree(pid: int) -> list[int]:
    """`pid` and all its live descendants (the official server is one python
    process today, but a future one may fork)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass  # exited meanwhile
    return pids


def status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {key} in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process tree, in seconds."""
    total = 0
    for p in process_tree(pid):
        with open(f"/proc/{p}/stat") as f:
            # Fields after "(comm)": state is [0], utime [11], stime [12].
            fields = f.read().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    return sum(status_kb(p, key) for p in process_tree(pid)) / 1024


def pss_mb(pid: int) -> float:
    """Proportional set size of the process tree: pages shared with other
    processes (libc, ld.so) count by their share, so this is what the
    server adds to the machine's memory use."""
    total = 0
    for p in process_tree(pid):
        with open(f"/proc/{p}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total / 1024


def reset_peak(pid: int) -> bool:
    """Resets VmHWM to the current RSS (`echo 5 > clear_refs`, Linux >= 4.0);
    returns whether the reset took effect."""
    ok = True
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return False
        # HWM may only exceed RSS by what was freed in the last instant.
        ok = ok and status_kb(p, "VmHWM") - status_kb(p, "VmRSS") < 1024
    return ok


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health_status(port: int) -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.settimeout(2)
            s.sendall(
                f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            head = s.recv(12).decode("latin-1")
    except OSError:
        return None
    for prefix in ("HTTP/1.1 ", "HTTP/1.0 "):
        if head.startswith(prefix):
            try:
                return int(head[len(prefix):])
            except ValueError:
                return None
    return None


class PortTaken(Exception):
    pass


class Server:
    """One server process on a free loopback port with its own SYNC_BASE,
    created under `workdir`; `stop()` kills it and removes its files."""

    def __init__(
        self, kind: str, command: list[str], workdir: Path,
        users: list[tuple[str, str]] | None = None, payload_megs: str | None = PAYLOAD_MEGS,
    ) -> None:
        self.kind = kind
        self.dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=workdir))
        self.port = free_port()
        base = self.dir / "base"
        base.mkdir()
        env = {
            k: v
            for k, v in os.environ.items()
            if not (k.startswith("SYNC_") or k in ("MAX_SYNC_PAYLOAD_MEGS", "PASSWORDS_HASHED"))
        }
        for n, (user, password) in enumerate(users or [(USER, PASSWORD)], 1):
            env[f"SYNC_USER{n}"] = f"{user}:{password}"
        env.update(
            SYNC_HOST="127.0.0.1",
            SYNC_PORT=str(self.port),
            SYNC_BASE=str(base),
        )
        if payload_megs is not None:  # None: the server's own default
            env["MAX_SYNC_PAYLOAD_MEGS"] = payload_megs
        self.log_path = self.dir / "server.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
            )
        self.killed_by_watchdog = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT
        while True:
            healthy = health_status(self.port) == 200
            # Checked after the probe: a 200 from whoever took our port while
            # our server failed to bind must not count.
            if self.proc.poll() is not None:
                with socket.socket() as s:
                    try:
                        s.bind(("127.0.0.1", self.port))
                    except OSError:
                        raise PortTaken(self.log_tail())
                raise BenchError(
                    f"{self.kind} server exited ({self.proc.returncode}) before /health:\n"
                    + self.log_tail()
                )
            if healthy:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{self.kind} server: no 200 from /health:\n{self.log_tail()}")
            time.sleep(0.05)

    def check_alive(self) -> None:
        if self.killed_by_watchdog:
            raise BenchError(f"{self.kind} server killed: phase exceeded its time limit")
        if self.proc.poll() is not None:
            raise BenchError(
                f"{self.kind} server died ({self.proc.returncode}):\n{self.log_tail()}"
            )

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the server and any children
            except ProcessLookupError:
                pass
        self.proc.wait()

    def stop(self) -> None:
        try:
            self.kill()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Bench:
    commands: dict[str, list[str]]
    workdir: Path
    repeats: int
    servers: list[Server] = field(default_factory=list)

    def start(
        self, kind: str, users: list[tuple[str, str]] | None = None,
        payload_megs: str | None = PAYLOAD_MEGS,
    ) -> Server:
        for _ in range(START_ATTEMPTS):
            server = Server(kind, self.commands[kind], self.workdir, users, payload_megs)
            self.servers.append(server)
            try:
                server.wait_healthy()
                return server
            except PortTaken:
                server.stop()
        raise BenchError(f"{kind} server lost the race for a free port {START_ATTEMPTS} times")

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers.clear()

    def repeated(self, tmp: Path, once: Callable[[Path], Any]) -> list[Any]:
        """`once(folder)` `repeats` times, each in a fresh folder under `tmp`
        and with every server it started stopped after it."""
        results = []
        for attempt in range(self.repeats):
            attempt_dir = tmp / str(attempt)
            attempt_dir.mkdir()
            try:
                results.append(once(attempt_dir))
            finally:
                self.stop_all()
        return results


class Watchdog:
    """Kills `server` if the block outlives `seconds`: the client's call then
    fails on its connection, which bounds every phase's run time."""

    def __init__(self, server: Server, seconds: float) -> None:
        self.server = server
        self.timer = threading.Timer(seconds, self._fire)

    def _fire(self) -> None:
        self.server.killed_by_watchdog = True
        self.server.kill()

    def __enter__(self) -> "Watchdog":
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.cancel()


# ---------------------------------------------------------------- client


def opened(path: Path) -> Collection:
    return Collection(str(path))


def login(col: Collection, server: Server):
    return guarded(
        server, LOGIN_TIMEOUT, lambda: col.sync_login(USER, PASSWORD, server.endpoint)
    )


@dataclass
class Phase:
    """What one timed client call cost the server."""

    wall: float
    cpu: float
    peak_mb: float | None  # None when VmHWM could not be reset


def guarded(server: Server, timeout: float, call: Callable[[], T]) -> T:
    """Runs the client `call` with `server` killed after `timeout`; a failure
    says whether the server died, hung or answered wrongly."""
    with Watchdog(server, timeout):
        try:
            result = call()
        except Exception as err:
            server.check_alive()
            raise BenchError(f"client call failed: {type(err).__name__}: {err}") from err
    server.check_alive()
    return result


def measured(server: Server, timeout: float, call: Callable[[], None]) -> Phase:
    peak_ok = reset_peak(server.pid)
    cpu0 = cpu_seconds(server.pid)
    started = time.perf_counter()
    guarded(server, timeout, call)
    wall = time.perf_counter() - started
    cpu = cpu_seconds(server.pid) - cpu0
    peak = rss_mb(server.pid, "VmHWM") if peak_ok else None
    return Phase(wall, cpu, peak)


def full_sync(server: Server, col: Collection, upload: bool) -> Phase:
    auth = login(col, server)
    # As the desktop app does (and tests/client/anki_client.py): the backend
    # closes and reopens the collection itself; Python drops its handle first.
    col.close_for_full_sync()
    return measured(
        server,
        FULL_SYNC_TIMEOUT,
        lambda: col.full_upload_or_download(auth=auth, server_usn=None, upload=upload),
    )


def summary(phases: list[Phase]) -> Phase:
    """Median wall and CPU time over repeats; the highest peak."""
    peaks = [p.peak_mb for p in phases]
    return Phase(
        statistics.median(p.wall for p in phases),
        statistics.median(p.cpu for p in phases),
        None if None in peaks else max(peaks),
    )


# ---------------------------------------------------------------- workloads

# Each workload returns rows (label, metric, value, unit) for one server.
Row = tuple[str, str, float | str | None, str]  # a str value has the unit "text"


def idle_rss(bench: Bench, kind: str, tmp: Path) -> list[Row]:
    """Memory at rest: right after start-up (the server answered /health),
    and again after one login. RSS counts every page mapped, also the libc
    pages all processes share; PSS counts those by share."""
    server = bench.start(kind)
    time.sleep(IDLE_SETTLE_SECONDS)
    server.check_alive()
    rows: list[Row] = [
        ("idle (after start-up)", "RSS MB", rss_mb(server.pid), "mb"),
        ("idle (after start-up)", "PSS MB", pss_mb(server.pid), "mb"),
    ]
    col = opened(tmp / "idle.anki2")
    try:
        login(col, server)
    finally:
        col.close()
    time.sleep(IDLE_SETTLE_SECONDS)
    server.check_alive()
    rows.append(("idle (after 1 login)", "RSS MB", rss_mb(server.pid), "mb"))
    rows.append(("idle (after 1 login)", "PSS MB", pss_mb(server.pid), "mb"))
    return rows


def logins(bench: Bench, kind: str, tmp: Path) -> list[Row]:
    phases = []
    for attempt in range(bench.repeats):
        server = bench.start(kind)
        col = opened(tmp / f"login-{attempt}.anki2")
        try:
            def call() -> None:
                for _ in range(LOGINS):
                    if not col.sync_login(USER, PASSWORD, server.endpoint).hkey:
                        raise BenchError("login returned no host key")

            phases.append(measured(server, LOGIN_TIMEOUT, call))
        finally:
            col.close()
            bench.stop_all()
    phase = summary(phases)
    label = f"{LOGINS} sequential logins"
    return [
        (label, "wall s", phase.wall, "s"),
        (label, "ms per login", phase.wall / LOGINS * 1000, "ms"),
        (label, "server CPU s", phase.cpu, "s"),
    ]


@dataclass
class Prepared:
    notes: int
    path: Path
    counts: dict[str, int]

    @property
    def label(self) -> str:
        mb = self.path.stat().st_size / 2**20
        return f"{self.notes // 1000}k notes ({mb:.0f} MB)"


def prepare(python: str, notes: int) -> Prepared:
    """The collection with `notes` notes, made once by the test driver and
    kept in target/bench-cache/ (keyed by note count)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"notes-{notes}.anki2"
    meta = CACHE / f"notes-{notes}.json"
    if path.exists() and meta.exists():
        return Prepared(notes, path, json.loads(meta.read_text()))
    print(f"bench: making a {notes}-note collection (cached in {CACHE})", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        made = Path(tmp) / "col.anki2"
        out = subprocess.run(
            [python, str(DRIVER), "make", "--path", str(made), "--notes", str(notes)],
            capture_output=True, text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        if out.returncode != 0:
            raise BenchError(f"anki_client.py make failed:\n{out.stderr}")
        counts = json.loads(out.stdout)
        if counts.get("notes") != notes:
            raise BenchError(f"make produced {counts.get('notes')} notes, wanted {notes}")
        os.replace(made, path)
    meta.write_text(json.dumps(counts, sort_keys=True))
    return Prepared(notes, path, counts)


def round_trip(prepared: Prepared) -> Callable[[Bench, str, Path], list[Row]]:
    def once(bench: Bench, kind: str, tmp: Path) -> tuple[Phase, Phase]:
        server = bench.start(kind)
        # The upload marks the local collection as synced: work on a copy.
        source = tmp / "upload.anki2"
        shutil.copyfile(prepared.path, source)
        col = opened(source)
        try:
            up = full_sync(server, col, upload=True)
        finally:
            col.close()

        col = opened(tmp / "download.anki2")  # a fresh, empty client
        try:
            down = full_sync(server, col, upload=False)
            col.reopen(after_full_sync=True)
            got = {"notes": col.note_count(), "cards": col.card_count(),
                   "revlog": col.db.scalar("select count() from revlog")}
        finally:
            col.close()
        want = {key: prepared.counts[key] for key in got}
        if got != want:
            raise BenchError(f"downloaded collection has {got}, uploaded one {want}")
        return up, down

    def run(bench: Bench, kind: str, tmp: Path) -> list[Row]:
        pairs = bench.repeated(tmp, lambda folder: once(bench, kind, folder))
        ups, downs = [up for up, _ in pairs], [down for _, down in pairs]
        rows: list[Row] = []
        for name, phase in (("full upload", summary(ups)), ("full download", summary(downs))):
            label = f"{name} {prepared.label}"
            rows += [
                (label, "wall s", phase.wall, "s"),
                (label, "server CPU s", phase.cpu, "s"),
                (label, "server peak RSS MB", phase.peak_mb, "mb"),
            ]
        return rows

    return run


# ---------------------------------------------------------------- normal sync
# Issue 3's incremental workloads: two devices hold the same collection
# (setup, not timed), then single normal syncs are timed, and several users
# sync at once from separate client processes.

NORMAL_SYNC_TIMEOUT = 180.0
NEW_NOTES = 5_000
CONCURRENT_USERS = 4
CONCURRENT_NOTES = 2_000
CONCURRENT_ROUNDS = 20
CONCURRENT_EDITS = 3  # notes edited per round (plus one added)
CONCURRENT_TIMEOUT = 600.0
WORKER = REPO / "bench/sync_worker.py"


def driver_module():
    """tests/client/anki_client.py as a module, for its add_notes helper."""
    sys.path.insert(0, str(DRIVER.parent))
    try:
        import anki_client
    finally:
        sys.path.remove(str(DRIVER.parent))
    return anki_client


def two_devices(
    server: Server, source: Path, tmp: Path, user: str = USER, password: str = PASSWORD
) -> tuple[Path, Path]:
    """Device A (a copy of `source`) full-uploads, device B full-downloads;
    returns their paths, both closed and ready for normal syncs."""
    a, b = tmp / f"{user}-a.anki2", tmp / f"{user}-b.anki2"
    shutil.copyfile(source, a)
    for path, upload in ((a, True), (b, False)):
        col = opened(path)
        try:
            auth = guarded(server, LOGIN_TIMEOUT,
                           lambda: col.sync_login(user, password, server.endpoint))
            col.close_for_full_sync()
            guarded(server, FULL_SYNC_TIMEOUT,
                    lambda: col.full_upload_or_download(auth=auth, server_usn=None, upload=upload))
            col.reopen(after_full_sync=True)
        finally:
            col.close()
    return a, b


def normal_sync(server: Server, col: Collection) -> Phase:
    """Times one normal sync (the login before it is not timed); a sync that
    asks for a full sync fails the workload."""
    auth = login(col, server)
    outcome = []
    phase = measured(server, NORMAL_SYNC_TIMEOUT,
                     lambda: outcome.append(col.sync_collection(auth, sync_media=False)))
    required = SyncCollectionResponse.ChangesRequired
    if outcome[0].required not in (required.NO_CHANGES, required.NORMAL_SYNC):
        raise BenchError(f"normal sync answered {required.Name(outcome[0].required)}")
    return phase


def phase_rows(label: str, phase: Phase) -> list[Row]:
    return [
        (label, "wall s", phase.wall, "s"),
        (label, "server CPU s", phase.cpu, "s"),
        (label, "server peak RSS MB", phase.peak_mb, "mb"),
    ]


def incremental(prepared: Prepared) -> Callable[[Bench, str, Path], list[Row]]:
    """One edited note up (A) and down (B), then NEW_NOTES new notes up and
    down, on two devices holding `prepared`; B must end up with A's content."""
    add_notes = driver_module().add_notes

    def once(bench: Bench, kind: str, tmp: Path) -> list[Phase]:
        server = bench.start(kind)
        a_path, b_path = two_devices(server, prepared.path, tmp)
        a, b = opened(a_path), opened(b_path)
        try:
            # The day's first normal sync is where our server takes its daily
            # backup; time it on its own so the rows below show typical syncs.
            # (It needs a change: a sync with nothing to do stops at `meta`.)
            warm = a.get_note(max(a.find_notes("")))
            warm.fields[0] = f"first change of the day on {kind}"
            a.update_note(warm)
            first_of_day = normal_sync(server, a)
            nid = min(a.find_notes(""))
            note = a.get_note(nid)
            text = f"edited for the bench on {kind}"
            note.fields[0] = text
            a.update_note(note)
            one_up, one_down = normal_sync(server, a), normal_sync(server, b)
            if b.get_note(nid).fields[0] != text:
                raise BenchError(f"B's note {nid} lacks A's edit after its sync")

            add_notes(a, NEW_NOTES, random.Random(3), [a.decks.id("Default")])
            new_up, new_down = normal_sync(server, a), normal_sync(server, b)
            want = prepared.notes + NEW_NOTES
            got = {"A": a.note_count(), "B": b.note_count()}
            if got != {"A": want, "B": want}:
                raise BenchError(f"after {NEW_NOTES} new notes: {got} notes, want {want}")
            if b.card_count() != a.card_count():
                raise BenchError(f"cards: B {b.card_count()}, A {a.card_count()}")
        finally:
            a.close()
            b.close()
        return [first_of_day, one_up, one_down, new_up, new_down]

    def run(bench: Bench, kind: str, tmp: Path) -> list[Row]:
        runs = bench.repeated(tmp, lambda folder: once(bench, kind, folder))
        base = f"{prepared.notes // 1000}k"
        names = (f"first sync of a day, 1 edited note up (ours: + daily backup), {base} notes",
                 f"1 edited note up, {base} notes", f"1 edited note down, {base} notes",
                 f"{NEW_NOTES // 1000}k new notes up, {base} notes",
                 f"{NEW_NOTES // 1000}k new notes down, {base} notes")
        rows: list[Row] = []
        for i, name in enumerate(names):
            rows += phase_rows(name, summary([phases[i] for phases in runs]))
        return rows

    return run


def server_notes(server: Server, user: str, password: str, tmp: Path) -> dict[int, str]:
    """{note id: first field} of what the server holds for `user`, through a
    full download to a fresh client (the official server keeps its collection
    files locked, so they cannot be read directly)."""
    col = opened(tmp / f"{user}-check.anki2")
    try:
        auth = guarded(server, LOGIN_TIMEOUT,
                       lambda: col.sync_login(user, password, server.endpoint))
        col.close_for_full_sync()
        guarded(server, FULL_SYNC_TIMEOUT,
                lambda: col.full_upload_or_download(auth=auth, server_usn=None, upload=False))
        col.reopen(after_full_sync=True)
        return {nid: flds.split("\x1f", 1)[0]
                for nid, flds in col.db.all("select id, flds from notes")}
    finally:
        col.close()


def concurrent(prepared: Prepared) -> Callable[[Bench, str, Path], list[Row]]:
    """CONCURRENT_USERS users on one server, each with `prepared` on two
    devices; one client process per user runs CONCURRENT_ROUNDS rounds of
    (edit, add a note, normal sync). Timed from launching the processes to
    the last exit; afterwards every user's server collection must hold its
    added notes and last edits."""
    users = [(f"{USER}{n}", f"{PASSWORD}-{n}") for n in range(1, CONCURRENT_USERS + 1)]

    def once(bench: Bench, kind: str, tmp: Path) -> Phase:
        server = bench.start(kind, users)
        devices = {user: two_devices(server, prepared.path, tmp, user, password)
                   for user, password in users}
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        procs: list[tuple[str, subprocess.Popen]] = []
        peak_ok = reset_peak(server.pid)
        cpu0 = cpu_seconds(server.pid)
        started = time.perf_counter()
        try:
            for user, password in users:
                a, b = devices[user]
                cmd = [sys.executable, str(WORKER), "--endpoint", server.endpoint,
                       "--user", user, "--password", password, "--device", str(a),
                       "--device", str(b), "--rounds", str(CONCURRENT_ROUNDS),
                       "--edits", str(CONCURRENT_EDITS)]
                procs.append((user, subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True, env=env)))
            deadline = started + CONCURRENT_TIMEOUT
            outputs = {}
            for user, proc in procs:
                try:
                    outputs[user] = proc.communicate(timeout=max(0.0, deadline - time.perf_counter()))
                except subprocess.TimeoutExpired:
                    raise BenchError(f"{user}'s client still running after {CONCURRENT_TIMEOUT:.0f} s")
            wall = time.perf_counter() - started
        finally:
            for _, proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        cpu = cpu_seconds(server.pid) - cpu0
        peak = rss_mb(server.pid, "VmHWM") if peak_ok else None
        server.check_alive()

        for (user, password), (_, proc) in zip(users, procs):
            out, err = outputs[user]
            if proc.returncode != 0:
                raise BenchError(f"{user}'s client failed ({proc.returncode}): "
                                 f"{err.strip().splitlines()[-1:] or ''}")
            markers = json.loads(out)["markers"]
            held = server_notes(server, user, password, tmp)
            want = prepared.notes + CONCURRENT_ROUNDS
            if len(held) != want:
                raise BenchError(f"server holds {len(held)} notes for {user}, want {want}")
            wrong = {nid: text for nid, text in markers.items() if held.get(int(nid)) != text}
            if wrong:
                raise BenchError(f"server lacks {len(wrong)} of {user}'s changes, e.g. "
                                 f"{next(iter(wrong.items()))}")
        return Phase(wall, cpu, peak)

    def run(bench: Bench, kind: str, tmp: Path) -> list[Row]:
        phases = bench.repeated(tmp, lambda folder: once(bench, kind, folder))
        phase = summary(phases)
        label = (f"{CONCURRENT_USERS} users × {CONCURRENT_ROUNDS} rounds, "
                 f"{prepared.notes // 1000}k notes each")
        syncs = CONCURRENT_USERS * CONCURRENT_ROUNDS
        return phase_rows(label, phase) + [
            (label, "server CPU ms per sync", phase.cpu / syncs * 1000, "ms"),
        ]

    return run


def normal_sync_workloads(
    sizes: tuple[int, ...], errors: list[str]
) -> list[tuple[str, Callable[[Bench, str, Path], list[Row]]]]:
    """Incremental syncs on the largest collection of the run (50k notes, or
    5k with --quick), and the concurrent users on small ones."""
    workloads = []
    try:
        prepared = prepare(sys.executable, sizes[-1])
        workloads.append((f"incremental sync {prepared.label}", incremental(prepared)))
    except Exception as err:
        errors.append(f"preparing {sizes[-1]} notes: {err}")
    try:
        prepared = prepare(sys.executable, CONCURRENT_NOTES)
        workloads.append((f"concurrent {CONCURRENT_USERS} users", concurrent(prepared)))
    except Exception as err:
        errors.append(f"preparing {CONCURRENT_NOTES} notes: {err}")
    return workloads


# ---------------------------------------------------------------- media and bombs
# Issue 4's media figure: MEDIA_FILES files up from one device and down to a
# fresh one through the library's own media syncer. Issue 8's decompression
# bomb: a tiny v11 request that inflates to BOMB_BYTES, sent to a bulk and a
# JSON method.

MEDIA_FILES = 500
MEDIA_BYTES = 50 * 10**6  # in total; sizes from about 4 KB to 5x the mean (100 KB)
MEDIA_SYNC_TIMEOUT = 300.0
BOMB_BYTES = 1 << 30
BOMB_TIMEOUT = 120.0
BOMB_METHODS = ("upload", "meta")
UPLOAD_TOO_LARGE = "collection exceeds size limit"  # the text both servers refuse an upload with
# Some names outside ASCII, so both servers' name handling is on the measured
# path; all are names the media manager keeps as given (NFC; it rewrote a
# capital omega as a small one).
MEDIA_NAMES = ("café-{:03}.jpg", "日本語-{:03}.png", "ωμέγα {:03}.mp3", "naïve_ß-{:03}.ogg")


@functools.cache
def media_files() -> list[tuple[str, bytes]]:
    """MEDIA_FILES random files of varied sizes totalling about MEDIA_BYTES,
    the same in every run; every 50th name is non-ASCII."""
    rng = random.Random(4)
    weights = [rng.expovariate(1.0) + 0.05 for _ in range(MEDIA_FILES)]
    scale = MEDIA_BYTES / sum(weights)
    files = []
    for i, weight in enumerate(weights):
        if i % 50 == 0:
            name = MEDIA_NAMES[i // 50 % len(MEDIA_NAMES)].format(i)
        else:
            name = f"media-{i:03}.{('jpg', 'png', 'mp3', 'webm')[i % 4]}"
        files.append((name, rng.randbytes(int(weight * scale))))
    return files


def sha1_listing(folder: str) -> dict[str, str]:
    listing = {}
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "rb") as f:
            listing[name] = hashlib.sha1(f.read()).hexdigest()
    return listing


def media_sync(server: Server, col: Collection) -> Phase:
    """Times one stand-alone media sync (as anki_client.py's media-sync), from
    `sync_media` until the library reports it finished; the login before it
    is not timed."""
    auth = login(col, server)

    def call() -> None:
        col.sync_media(auth)
        deadline = time.monotonic() + MEDIA_SYNC_TIMEOUT
        # Raises the sync's error, if it failed.
        while col.media_sync_status().active:
            if time.monotonic() > deadline:
                col.abort_media_sync()
                raise BenchError(f"media sync still running after {MEDIA_SYNC_TIMEOUT:.0f} s")
            time.sleep(0.01)

    return measured(server, MEDIA_SYNC_TIMEOUT + 10, call)


def media(bench: Bench, kind: str, tmp: Path) -> list[Row]:
    """Device A adds media_files() and syncs them up; a fresh device B syncs
    them down and must hold the same bytes under the same names."""
    files = media_files()

    def once(tmp: Path) -> tuple[Phase, Phase]:  # one run, in its own folder
        server = bench.start(kind)
        a, b = opened(tmp / "a.anki2"), opened(tmp / "b.anki2")
        try:
            # Written directly (the media manager's write_data takes 17 s for
            # these): the names are already what it would keep. The sync then
            # finds them in its scan, as files added in the app.
            folder = Path(a.media.dir())
            for name, data in files:
                (folder / name).write_bytes(data)
            stored = {name: hashlib.sha1(data).hexdigest() for name, data in files}
            up = media_sync(server, a)
            down = media_sync(server, b)
            got = sha1_listing(b.media.dir())
        finally:
            a.close()
            b.close()
        if got != stored:
            missing, wrong = stored.keys() - got.keys(), {n for n in got if got[n] != stored.get(n)}
            raise BenchError(f"B's media differ from A's: {len(missing)} missing, "
                             f"{len(wrong)} unexpected or different, e.g. "
                             f"{sorted(missing | wrong)[:3]}")
        return up, down

    pairs = bench.repeated(tmp, once)
    ups, downs = [up for up, _ in pairs], [down for _, down in pairs]
    mb = sum(len(data) for _, data in files) / 10**6
    label = f"{len(files)} media files ({mb:.0f} MB)"
    return (phase_rows(f"{label} up", summary(ups))
            + phase_rows(f"{label} down, fresh device", summary(downs)))


def zstd_frame(blocks: list[bytes]) -> bytes:
    """A zstd frame of the given blocks (each with its 3-byte header), with a
    128 KiB window and no content size or checksum: decodable by any zstd,
    built by hand because the venv has no zstd module."""
    return b"\x28\xb5\x2f\xfd" + b"\x00" + b"\x38" + b"".join(blocks)


def zstd_raw(data: bytes) -> bytes:
    """`data` as one stored (uncompressed) zstd block in its own frame."""
    if len(data) > 1 << 17:
        raise ValueError("a raw block holds at most 128 KiB")
    return zstd_frame([(len(data) << 3 | 1).to_bytes(3, "little") + data])


def zstd_bomb(size: int) -> bytes:
    """A frame of RLE blocks that inflates to `size` spaces (valid JSON
    whitespace, so a JSON method must decode it all to find it empty): four
    bytes per 128 KiB, so 32 KiB for 1 GiB."""
    block = 1 << 17
    count = size // block
    return zstd_frame([
        (block << 3 | 1 << 1 | (i == count - 1)).to_bytes(3, "little") + b" "
        for i in range(count)
    ])


def raw_post(server: Server, method: str, body: bytes, timeout: float) -> tuple[int, bytes]:
    """POST /sync/`method` as a v11 client would, with a zstd `body`; returns
    the status and the (still compressed) response body."""
    hkey = hashlib.sha1(f"{USER}:{PASSWORD}".encode()).hexdigest()
    header = json.dumps({"v": 11, "k": hkey, "c": f"{anki.buildinfo.version},bench,linux",
                         "s": "bench"})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request("POST", f"/sync/{method}", body=body,
                     headers={"anki-sync": header, "Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def bomb(bench: Bench, kind: str, tmp: Path) -> list[Row]:
    """For each of BOMB_METHODS, on a fresh server with its default payload
    limit (the setting a real deployment meets the bomb with): a real /sync/meta
    first, so the user's collection is open, then the bomb; the server's RSS
    before, its peak during the request, the wall time and the status. Ours
    must refuse it; the official server's answer is reported as it comes."""
    payload = zstd_bomb(BOMB_BYTES)
    meta = zstd_raw(json.dumps({"v": 11, "cv": f"{anki.buildinfo.version},bench,linux"}).encode())
    label = f"bomb: {len(payload) // 1024} KiB zstd → {BOMB_BYTES >> 30} GiB"
    results: dict[str, list[tuple[float, float | None, float, str]]] = {m: [] for m in BOMB_METHODS}
    for _ in range(bench.repeats):
        for method in BOMB_METHODS:
            server = bench.start(kind, payload_megs=None)
            try:
                status, _ = guarded(server, LOGIN_TIMEOUT,
                                    lambda: raw_post(server, "meta", meta, LOGIN_TIMEOUT))
                if status != 200:
                    raise BenchError(f"a plain /sync/meta answered {status}")
                time.sleep(0.5)  # let the first request's allocations settle
                before = rss_mb(server.pid)
                peak_ok = reset_peak(server.pid)
                started = time.perf_counter()
                reply = guarded(server, BOMB_TIMEOUT,
                                lambda: raw_post(server, method, payload, BOMB_TIMEOUT))
                wall = time.perf_counter() - started
                peak = rss_mb(server.pid, "VmHWM") if peak_ok else None
            finally:
                bench.stop_all()
            status, body = reply
            # A v11 reply is zstd, but a short text is stored in it verbatim;
            # upload answers a refusal with 200 and the text clients show.
            too_large = UPLOAD_TOO_LARGE.encode() in body
            if kind == "ours" and status < 400 and not too_large:
                raise BenchError(f"our server accepted the bomb to /sync/{method} ({status})")
            answer = f'{status} "{UPLOAD_TOO_LARGE}"' if too_large else str(status)
            results[method].append((before, peak, wall, answer))
    rows: list[Row] = []
    for method, runs in results.items():
        peaks = [peak for _, peak, _, _ in runs]
        answers = sorted({answer for *_, answer in runs})
        rows += [
            (f"{label} to /sync/{method}", "server RSS before MB",
             max(before for before, *_ in runs), "mb"),
            (f"{label} to /sync/{method}", "server peak RSS MB",
             None if None in peaks else max(peaks), "mb"),
            (f"{label} to /sync/{method}", "wall s",
             statistics.median(wall for _, _, wall, _ in runs), "s"),
            (f"{label} to /sync/{method}", "answer", " / ".join(answers), "text"),
        ]
    return rows


# ---------------------------------------------------------------- report


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def git_revision() -> str:
    out = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True, text=True,
    )
    return out.stdout.strip() or "unknown"


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "mb":
        return f"{value:.1f}"
    if unit == "ms":
        return f"{value:.2f}"
    if unit == "text":
        return str(value)
    return f"{value:.3f}"


def table(results: dict[str, dict[str, list[Row]]], failed: set[tuple[str, str]]) -> str:
    """One line per (workload, metric); `results[workload][kind]` holds the
    rows a server produced, `failed` the (workload, kind) pairs that failed."""
    lines = [
        "| workload | metric | ours | official | ours/official |",
        "|---|---|---:|---:|---:|",
    ]
    for name, by_kind in results.items():
        keys: dict[tuple[str, str], str] = {}
        values: dict[tuple[str, str, str], float | str | None] = {}
        for kind, rows in by_kind.items():
            for label, metric, value, unit in rows:
                keys[label, metric] = unit
                values[label, metric, kind] = value
        if not keys:
            keys[name, "—"] = ""
        for (label, metric), unit in keys.items():
            cells = []
            for kind in KINDS:
                if (name, kind) in failed:
                    cells.append("FAILED")
                elif (label, metric, kind) in values:
                    cells.append(fmt(values[label, metric, kind], unit))
                else:
                    cells.append("—")
            ours = values.get((label, metric, "ours"))
            official = values.get((label, metric, "official"))
            comparable = ours is not None and official and unit != "text"
            ratio = f"{ours / official:.2f}" if comparable else "—"
            lines.append(f"| {label} | {metric} | {cells[0]} | {cells[1]} | {ratio} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5k-note collection only")
    parser.add_argument(
        "--only-workloads", metavar="NAMES",
        help="comma-separated workload kinds to run (the first word of a workload's name: "
        "idle, login, full, incremental, concurrent, media, bomb); default all",
    )
    parser.add_argument("--only", choices=KINDS, help="run one server only")
    parser.add_argument(
        "--binary", default=str(TARGET / "release/anki-sync-lite"), help="our server binary"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, metavar="N",
        help="runs of every workload but idle "
        "(fresh server each); "
        "times are medians, peaks the highest (default 3)",
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    kinds = [args.only] if args.only else list(KINDS)
    commands = {"ours": [args.binary], "official": [sys.executable, "-m", "anki.syncserver"]}
    if "ours" in kinds and not os.access(args.binary, os.X_OK):
        print(f"bench: {args.binary} missing: run cargo build --release", file=sys.stderr)
        return 1
    sizes = SIZES[:1] if args.quick else SIZES

    started = time.monotonic()
    load_at_start = os.getloadavg()[0]
    workloads: list[tuple[str, Callable[[Bench, str, Path], list[Row]]]] = [
        ("idle", idle_rss),
        ("login", logins),
    ]
    errors: list[str] = []
    for notes in sizes:
        try:
            prepared = prepare(sys.executable, notes)
            workloads.append((f"full sync {prepared.label}", round_trip(prepared)))
        except Exception as err:
            errors.append(f"preparing {notes} notes: {err}")
    workloads += normal_sync_workloads(sizes, errors)
    workloads += [(f"media {MEDIA_FILES} files up and down", media),
                  ("bomb (decompression)", bomb)]
    if args.only_workloads:
        wanted = {name.strip() for name in args.only_workloads.split(",") if name.strip()}
        known = {name.split()[0] for name, _ in workloads}
        if wanted - known:
            parser.error(f"unknown workloads {sorted(wanted - known)}; known: {sorted(known)}")
        workloads = [w for w in workloads if w[0].split()[0] in wanted]

    results: dict[str, dict[str, list[Row]]] = {}
    failed: set[tuple[str, str]] = set()
    workdir = Path(tempfile.mkdtemp(prefix="anki-sync-bench-"))
    bench = Bench(commands, workdir, args.repeat)
    try:
        for name, run in workloads:
            results[name] = {}
            for kind in kinds:
                print(f"bench: {name} on {kind}", file=sys.stderr)
                tmp = Path(tempfile.mkdtemp(prefix="client-", dir=workdir))
                try:
                    results[name][kind] = run(bench, kind, tmp)
                except Exception as err:
                    detail = "".join(traceback.format_exception_only(type(err), err)).strip()
                    errors.append(f"{name} on {kind}: {detail}")
                    failed.add((name, kind))
                finally:
                    bench.stop_all()
                    shutil.rmtree(tmp, ignore_errors=True)
    except KeyboardInterrupt:
        errors.append("interrupted")
    finally:
        bench.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)

    print("## anki-sync-lite vs official sync server\n")
    print(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"- CPU: {cpu_model()}, {os.cpu_count()} cores")
    print(f"- ours: {args.binary} (git {git_revision()}); "
          f"official: anki {anki.buildinfo.version} (`python -m anki.syncserver`)")
    print(f"- all but idle: median of {args.repeat} runs, each on a fresh server; "
          f"peak RSS: highest VmHWM of those runs")
    print(f"- server CPU: utime+stime from /proc/PID/stat, resolution {1 / CLK_TCK:.3f} s")
    print(f"- runtime: {time.monotonic() - started:.0f} s; load average (1 min) at start "
          f"{load_at_start:.2f}, at end {os.getloadavg()[0]:.2f} (other processes skew times, "
          "not memory)\n")
    print(table(results, failed))
    if errors:
        print("\nFailures:")
        for error in errors:
            print(f"- {error}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
