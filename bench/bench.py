#!/usr/bin/env python3
"""Benchmarks anki-sync-lite against the official sync server in one run.

Both servers get the same workloads on 127.0.0.1, in two modes: a fresh
server (with its own temporary SYNC_BASE) for every attempt of a workload,
and one long-running server per implementation that serves every workload
in turn, as a real server does for months. The workloads: idle memory,
sequential logins, full upload / full download, normal syncs between two
devices (one edited note and 5,000 new notes on 50k notes, rounds of 20
added and 5 edited notes on 2k, four users at once), a sync after the
collection rested (ours closes it when idle) and the day's first sync,
fsyncs per normal sync, media files up and down, and a decompression bomb.
Attempts alternate between the two servers, so a noisy minute hits both.
The client is the real Anki library (imported here, so timings carry no
process start-up), and every workload checks what arrived so a broken
server cannot look fast. Prints one markdown table per mode; exits 1 if any
workload failed.

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
import re
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

import sync_worker

REPO = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
if not TARGET.is_absolute():
    TARGET = REPO / TARGET
CACHE = TARGET / "bench-cache"
DRIVER = REPO / "tests/client/anki_client.py"

KINDS = ("ours", "official")
MODES = ("fresh", "long")
USER, PASSWORD = "bench", "bench-pass"
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
# Ours closes a collection unused for SYNC_IDLE_CLOSE_SECS (default 300; a
# sweep every second does it); the official server never does. The long-running
# server uses 15 s: long enough that every timed sync but the rested ones
# finds the collection open, as with the default (checked, see warm()), and
# short enough that a run can wait for the close. The fresh servers of the
# rested workload use 1 s.
LONG_IDLE_CLOSE = "15"
REST_IDLE_CLOSE = "1"
CLOSE_TIMEOUT = 120.0
# How long the client rests before an "after a rest" sync, the same for both
# servers in a mode: long enough for ours to close the collection (its idle
# close, then the next sweep), which is checked after it: 3 s for the fresh
# servers, 17 s for the long-running ones. A client (and a machine) that has
# rested is slower than one that synced a moment ago, whichever the server:
# the official server's one-note sync took 13.3-14.8 ms after a 2.5 s rest
# against 11.5-12.5 ms without one. Only ours resting would charge that to
# ours.
REST_SECS = 3.0
DEFAULT_IDLE_CLOSE = "300"
CLOSE_SWEEP_MARGIN = 2.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


class BenchError(Exception):
    """A workload failed: a server misbehaved or a check did not hold."""


# ---------------------------------------------------------------- /proc


def process_tree(pid: int) -> list[int]:
    """`pid` and all its live descendants (the official server is one python
    process today, but a future one may fork; under strace, the server is
    strace's child)."""
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


def cpu_ticks(pid: int) -> float:
    """utime + stime of the process tree, in seconds (10 ms resolution, but
    it includes threads that have exited)."""
    total = 0
    for p in process_tree(pid):
        with open(f"/proc/{p}/stat") as f:
            # Fields after "(comm)": state is [0], utime [11], stime [12].
            fields = f.read().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


@dataclass
class CpuSnapshot:
    """Time on CPU of every live thread of the process tree, in ns (from
    /proc/PID/task/TID/schedstat, which counts to the nanosecond), and the
    tree's utime+stime in seconds."""

    threads: dict[int, int]
    ticks: float


def cpu_snapshot(pid: int) -> CpuSnapshot:
    threads = {}
    for p in process_tree(pid):
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/schedstat") as f:
                    threads[int(task)] = int(f.read().split()[0])
        except OSError:
            pass  # exited meanwhile
    return CpuSnapshot(threads, cpu_ticks(pid))


def cpu_between(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """CPU seconds the server used between two snapshots: to the nanosecond
    while every thread of `before` still lives (new threads count whole);
    if one has exited, its last run is lost, so the 10 ms ticks decide. A
    thread born and gone between the two (ours' background backup) is in
    neither snapshot: the ticks, which count it, decide when they exceed
    the threads' sum by more than their rounding."""
    ticks = after.ticks - before.ticks
    if all(tid in after.threads for tid in before.threads):
        used = sum(ns - before.threads.get(tid, 0) for tid, ns in after.threads.items()) / 1e9
        return ticks if ticks > used + 2 / CLK_TCK else used
    return ticks


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


def open_collections(pid: int) -> set[Path]:
    """The `collection.anki2` files the process tree holds open."""
    found = set()
    for p in process_tree(pid):
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = Path(os.readlink(f"/proc/{p}/fd/{fd}"))
            except OSError:
                continue
            if target.name == "collection.anki2":
                found.add(target)
    return found


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health_status(port: int, query: str = "") -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.settimeout(2)
            s.sendall(
                f"GET /health{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
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


def mark(server: "Server", text: str) -> None:
    """A request whose line shows `text` in a system-call trace of the
    server (`GET /health?text`), to cut measured windows out of the trace;
    returns once the server answered, so the trace holds the mark."""
    if health_status(server.port, f"?{text}") != 200:
        server.check_alive()
        raise BenchError(f"mark {text!r}: /health did not answer 200")


class PortTaken(Exception):
    pass


class Server:
    """One server process on a free loopback port with its own SYNC_BASE,
    created under `workdir`; `stop()` kills it and removes its files.
    `wrap` prefixes the command (e.g. strace); `env` adds settings."""

    def __init__(
        self, kind: str, command: list[str], workdir: Path,
        users: list[tuple[str, str]], payload_megs: str | None = PAYLOAD_MEGS,
        env: dict[str, str] | None = None, wrap: list[str] | None = None,
    ) -> None:
        self.kind = kind
        self.users = [user for user, _ in users]
        self.dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=workdir))
        self.port = free_port()
        self.base = self.dir / "base"
        self.base.mkdir()
        self.max_peak_mb = 0.0  # the highest VmHWM read so far
        # What a client rests before an "after a rest" sync on this server
        # (see REST_SECS); the official server is given the same setting.
        idle_close = int((env or {}).get("SYNC_IDLE_CLOSE_SECS", DEFAULT_IDLE_CLOSE))
        self.rest_secs = max(REST_SECS, idle_close + CLOSE_SWEEP_MARGIN)
        environ = {
            k: v
            for k, v in os.environ.items()
            if not (k.startswith("SYNC_") or k in ("MAX_SYNC_PAYLOAD_MEGS", "PASSWORDS_HASHED"))
        }
        for n, (user, password) in enumerate(users, 1):
            environ[f"SYNC_USER{n}"] = f"{user}:{password}"
        environ.update(
            SYNC_HOST="127.0.0.1",
            SYNC_PORT=str(self.port),
            SYNC_BASE=str(self.base),
        )
        if payload_megs is not None:  # None: the server's own default
            environ["MAX_SYNC_PAYLOAD_MEGS"] = payload_megs
            # Every client of the bench connects from 127.0.0.1: ours' cap per
            # address (8) would refuse the four users' devices, a limit the
            # official server does not have.
            environ["SYNC_MAX_CONNECTIONS_PER_IP"] = "256"
        environ.update(env or {})
        self.log_path = self.dir / "server.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*(wrap or []), *command], env=environ, stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True,
            )
        self.killed_by_watchdog = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def collection_open(self, user: str) -> bool:
        return self.base / user / "collection.anki2" in open_collections(self.pid)

    def peak_mb(self) -> float:
        """VmHWM now (since the last reset), remembered for the run's peak."""
        peak = rss_mb(self.pid, "VmHWM")
        self.max_peak_mb = max(self.max_peak_mb, peak)
        return peak

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
    """The servers of a run. In the fresh mode `start` starts a new server
    (stopped by `stop_all` after the attempt); in the long mode it returns
    the implementation's long-running server, which serves every user of
    every workload (LONG_USERS) until `stop_long`."""

    commands: dict[str, list[str]]
    workdir: Path
    repeats: int
    servers: list[Server] = field(default_factory=list)
    long: dict[str, Server] = field(default_factory=dict)
    # Remarks for the report (e.g. a warm row that found ours closed).
    remarks: list[str] = field(default_factory=list)

    def start(
        self, kind: str, users: list[tuple[str, str]] | None = None,
        payload_megs: str | None = PAYLOAD_MEGS, env: dict[str, str] | None = None,
        wrap: list[str] | None = None, fresh: bool = False,
    ) -> Server:
        users = users or [(USER, PASSWORD)]
        if self.long and not fresh:
            server = self.long[kind]
            missing = {user for user, _ in users} - set(server.users)
            if missing:
                raise BenchError(f"the long-running server has no users {sorted(missing)}")
            return server
        for _ in range(START_ATTEMPTS):
            server = Server(kind, self.commands[kind], self.workdir, users, payload_megs,
                            env, wrap)
            self.servers.append(server)
            try:
                server.wait_healthy()
                return server
            except PortTaken:
                server.stop()
        raise BenchError(f"{kind} server lost the race for a free port {START_ATTEMPTS} times")

    def start_long(self, kinds: list[str]) -> None:
        for kind in kinds:
            server = self.start(kind, LONG_USERS, env={"SYNC_IDLE_CLOSE_SECS": LONG_IDLE_CLOSE},
                                fresh=True)
            self.servers.remove(server)
            self.long[kind] = server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers.clear()

    def stop_long(self) -> None:
        for server in self.long.values():
            server.stop()
        self.long.clear()

    def warm(self, server: Server, user: str, what: str) -> None:
        """Before a timed sync that should find the collection open (every
        one but the rested rows): notes it if ours had closed it, which
        would make the row pay for a reopen."""
        if server.kind == "ours" and self.long and not server.collection_open(user):
            self.remarks.append(f"{what}: ours had closed {user}'s collection (idle close) "
                                "before a timed sync that should find it open")


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


def login(col: Collection, server: Server, user: str = USER, password: str = PASSWORD):
    return guarded(server, LOGIN_TIMEOUT, lambda: col.sync_login(user, password, server.endpoint))


@dataclass
class Phase:
    """What one timed client call cost the server."""

    wall: float
    cpu: float
    peak_mb: float | None  # None when VmHWM could not be reset
    client_cpu: float | None = None  # the client processes' own, where they report it


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
    before = cpu_snapshot(server.pid)
    started = time.perf_counter()
    guarded(server, timeout, call)
    wall = time.perf_counter() - started
    cpu = cpu_between(before, cpu_snapshot(server.pid))
    return Phase(wall, cpu, server.peak_mb() if peak_ok else None)


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


# ---------------------------------------------------------------- rows

# Each workload's report gives rows (label, metric, value, unit) for one
# server; a str value has the unit "text".
@dataclass
class Stat:
    """The median of a figure over a workload's attempts, with its range."""

    median: float
    low: float
    high: float
    count: int


def stat(values: list[float]) -> Stat:
    return Stat(statistics.median(values), min(values), max(values), len(values))


Row = tuple[str, str, "float | Stat | str | None", str]


def phase_rows(label: str, phases: list[Phase], syncs: int = 0) -> list[Row]:
    """Wall and CPU time as medians with their range, the highest peak, and
    (given `syncs` per phase) the server CPU per sync."""
    peaks = [p.peak_mb for p in phases]
    rows: list[Row] = [
        (label, "wall s", stat([p.wall for p in phases]), "s"),
        (label, "server CPU s", stat([p.cpu for p in phases]), "s"),
        (label, "server peak RSS MB", None if None in peaks else max(peaks), "mb"),
    ]
    if syncs:
        rows.append((label, "server CPU ms per sync",
                     stat([p.cpu / syncs * 1000 for p in phases]), "ms"))
    client = [p.client_cpu for p in phases]
    if None not in client:
        rows.append((label, "clients' CPU s", stat(client), "s"))
    return rows


def total(phases: list[Phase]) -> Phase:
    """Several timed calls as one: summed times, the highest peak."""
    peaks = [p.peak_mb for p in phases]
    return Phase(sum(p.wall for p in phases), sum(p.cpu for p in phases),
                 None if None in peaks else max(peaks))


@dataclass
class Workload:
    """`once(bench, kind, folder)` runs one attempt on one server and
    returns its figures; `report(figures of every attempt)` makes the rows.
    The name's first word selects it (--only-workloads)."""

    name: str
    once: Callable[[Bench, str, Path], Any]
    report: Callable[[list[Any]], list[Row]]
    modes: tuple[str, ...] = MODES
    repeated: bool = True  # False: one attempt whatever --repeat says


# ---------------------------------------------------------------- idle and logins


def idle_once(bench: Bench, kind: str, tmp: Path) -> list[Row]:
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


def login_once(bench: Bench, kind: str, tmp: Path) -> Phase:
    server = bench.start(kind)
    col = opened(tmp / "login.anki2")
    try:
        def call() -> None:
            for _ in range(LOGINS):
                if not col.sync_login(USER, PASSWORD, server.endpoint).hkey:
                    raise BenchError("login returned no host key")

        return measured(server, LOGIN_TIMEOUT, call)
    finally:
        col.close()


def login_report(phases: list[Phase]) -> list[Row]:
    label = f"{LOGINS} sequential logins"
    return [
        (label, "wall s", stat([p.wall for p in phases]), "s"),
        (label, "ms per login", stat([p.wall / LOGINS * 1000 for p in phases]), "ms"),
        (label, "server CPU s", stat([p.cpu for p in phases]), "s"),
    ]


# ---------------------------------------------------------------- full sync


@dataclass
class Prepared:
    notes: int
    path: Path
    counts: dict[str, int]

    @property
    def label(self) -> str:
        mb = self.path.stat().st_size / 2**20
        return f"{self.notes // 1000}k notes ({mb:.0f} MB)"

    @property
    def short(self) -> str:
        return f"{self.notes // 1000}k notes"


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


def full_sync_workload(prepared: Prepared) -> Workload:
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

    def report(pairs: list[tuple[Phase, Phase]]) -> list[Row]:
        return (phase_rows(f"full upload {prepared.label}", [up for up, _ in pairs])
                + phase_rows(f"full download {prepared.label}", [down for _, down in pairs]))

    return Workload(f"full sync {prepared.label}", once, report)


# ---------------------------------------------------------------- normal sync
# Two devices hold the same collection (set up by a full upload and a full
# download, not timed), then normal syncs are timed. Every workload's first
# normal sync after that set-up is untimed: it is where the official server
# opens the collection and ours may take its daily backup; the day's first
# sync has its own row in the rested workload.

NORMAL_SYNC_TIMEOUT = 180.0
NEW_NOTES = 5_000
ONE_NOTE_SYNCS = 3  # per attempt, each up and down
ROUND_NOTES = 2_000
ROUNDS = 20
ROUND_ADDS = 20  # notes A adds per round
ROUND_EDITS = 5  # notes A edits per round
CONCURRENT_USERS = 4
CONCURRENT_TIMEOUT = 600.0
FSYNC_SYNCS = 3
WORKER = REPO / "bench/sync_worker.py"
NORMAL_OUTCOMES = (SyncCollectionResponse.ChangesRequired.NO_CHANGES,
                   SyncCollectionResponse.ChangesRequired.NORMAL_SYNC)

INC_USER = ("bench-inc", "bench-inc-pass")
ROUNDS_USER = ("bench-rounds", "bench-rounds-pass")
REST_USER = ("bench-rest", "bench-rest-pass")
FSYNC_USER = ("bench-fsync", "bench-fsync-pass")
CONCURRENT = [(f"bench{n}", f"bench-pass-{n}") for n in range(1, CONCURRENT_USERS + 1)]
# Everyone the long-running servers serve: each workload has its own users,
# so their collections stay on the server side by side, as a household's do.
LONG_USERS = [(USER, PASSWORD), INC_USER, ROUNDS_USER, REST_USER, *CONCURRENT]


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
            auth = login(col, server, user, password)
            col.close_for_full_sync()
            guarded(server, FULL_SYNC_TIMEOUT,
                    lambda: col.full_upload_or_download(auth=auth, server_usn=None, upload=upload))
            col.reopen(after_full_sync=True)
        finally:
            col.close()
    return a, b


@dataclass
class Devices:
    """A user's two open devices, logged in, on one server."""

    server: Server
    user: str
    a: Collection
    b: Collection
    auth_a: Any
    auth_b: Any

    def close(self) -> None:
        self.a.close()
        self.b.close()


def open_devices(server: Server, prepared: Prepared, tmp: Path,
                 account: tuple[str, str]) -> Devices:
    """Both devices of `account` holding `prepared`, after one untimed
    normal sync each (see above), and (ours) once the day's backup that the
    first of them started in the background is on disk: it is timed in the
    first-sync rows, and would otherwise run beside the first timed syncs."""
    user, password = account
    a_path, b_path = two_devices(server, prepared.path, tmp, user, password)
    a, b = opened(a_path), opened(b_path)
    try:
        devices = Devices(server, user, a, b, login(a, server, user, password),
                          login(b, server, user, password))
        edit_note(a, min(a.find_notes("")), f"set-up sync on {server.kind}")
        started = time.perf_counter()
        normal_sync(server, a, devices.auth_a)
        normal_sync(server, b, devices.auth_b)
        if server.kind == "ours":
            wait_for_daily_backup(server, user, started)
        return devices
    except BaseException:
        a.close()
        b.close()
        raise


def edit_note(col: Collection, nid: int, text: str) -> None:
    note = col.get_note(nid)
    note.fields[0] = text
    col.update_note(note)


def normal_sync(server: Server, col: Collection, auth) -> Phase:
    """Times one normal sync; a sync that asks for a full sync fails the
    workload."""
    outcome = []
    phase = measured(server, NORMAL_SYNC_TIMEOUT,
                     lambda: outcome.append(col.sync_collection(auth, sync_media=False)))
    if outcome[0].required not in NORMAL_OUTCOMES:
        name = SyncCollectionResponse.ChangesRequired.Name(outcome[0].required)
        raise BenchError(f"normal sync answered {name}")
    return phase


def incremental_workload(prepared: Prepared) -> Workload:
    """ONE_NOTE_SYNCS times an edited note up (A) and down (B), then
    NEW_NOTES new notes up and down; B must end up with A's content."""
    add_notes = driver_module().add_notes

    def once(bench: Bench, kind: str, tmp: Path) -> dict[str, list[Phase]]:
        dev = open_devices(bench.start(kind, [INC_USER]), prepared, tmp, INC_USER)
        a, b, server = dev.a, dev.b, dev.server
        try:
            ups, downs = [], []
            nids = sorted(a.find_notes(""))
            for i in range(ONE_NOTE_SYNCS):
                text = f"edit {i} for the bench on {kind}"
                edit_note(a, nids[i + 1], text)
                bench.warm(server, dev.user, "1 edited note up")
                ups.append(normal_sync(server, a, dev.auth_a))
                downs.append(normal_sync(server, b, dev.auth_b))
                if b.get_note(nids[i + 1]).fields[0] != text:
                    raise BenchError(f"B's note {nids[i + 1]} lacks A's edit after its sync")

            add_notes(a, NEW_NOTES, random.Random(3), [a.decks.id("Default")])
            bench.warm(server, dev.user, "new notes up")
            new_up = normal_sync(server, a, dev.auth_a)
            new_down = normal_sync(server, b, dev.auth_b)
            want = prepared.notes + NEW_NOTES
            got = {"A": a.note_count(), "B": b.note_count()}
            if got != {"A": want, "B": want}:
                raise BenchError(f"after {NEW_NOTES} new notes: {got} notes, want {want}")
            if b.card_count() != a.card_count():
                raise BenchError(f"cards: B {b.card_count()}, A {a.card_count()}")
        finally:
            dev.close()
        return {"one up": ups, "one down": downs, "new up": [new_up], "new down": [new_down]}

    def report(runs: list[dict[str, list[Phase]]]) -> list[Row]:
        base = prepared.short
        names = {"one up": f"1 edited note up, {base}",
                 "one down": f"1 edited note down, {base}",
                 "new up": f"{NEW_NOTES // 1000}k new notes up, {base}",
                 "new down": f"{NEW_NOTES // 1000}k new notes down, {base}"}
        rows: list[Row] = []
        for key, name in names.items():
            rows += phase_rows(name, [phase for run in runs for phase in run[key]])
        return rows

    return Workload(f"incremental sync {prepared.label}", once, report)


def rounds_workload(prepared: Prepared) -> Workload:
    """One user, ROUNDS rounds: A adds ROUND_ADDS notes and edits ROUND_EDITS,
    A syncs, B syncs (both timed; the client's edits are not), and B must
    then hold what A did."""

    def once(bench: Bench, kind: str, tmp: Path) -> Phase:
        dev = open_devices(bench.start(kind, [ROUNDS_USER]), prepared, tmp, ROUNDS_USER)
        a, b, server = dev.a, dev.b, dev.server
        try:
            nids = sorted(a.find_notes(""))
            phases = []
            for rnd in range(ROUNDS):
                changed = sync_worker.change_round(a, nids, rnd, dev.user, ROUND_ADDS,
                                                   ROUND_EDITS)
                bench.warm(server, dev.user, "rounds")
                phases.append(normal_sync(server, a, dev.auth_a))
                phases.append(normal_sync(server, b, dev.auth_b))
                wrong = sync_worker.differences(b, changed)
                if wrong:
                    raise BenchError(f"round {rnd}: B lacks A's changes: {wrong}")
        finally:
            dev.close()
        return total(phases)

    def report(phases: list[Phase]) -> list[Row]:
        label = (f"{ROUNDS} rounds, {prepared.short}, 1 user (A adds {ROUND_ADDS} notes and "
                 f"edits {ROUND_EDITS}; A syncs, B syncs)")
        return phase_rows(label, phases, syncs=2 * ROUNDS)

    return Workload(f"rounds {prepared.short}", once, report)


def server_notes(server: Server, user: str, password: str, tmp: Path) -> dict[int, str]:
    """{note id: first field} of what the server holds for `user`, through a
    full download to a fresh client (the official server keeps its collection
    files locked, so they cannot be read directly)."""
    col = opened(tmp / f"{user}-check.anki2")
    try:
        auth = login(col, server, user, password)
        col.close_for_full_sync()
        guarded(server, FULL_SYNC_TIMEOUT,
                lambda: col.full_upload_or_download(auth=auth, server_usn=None, upload=False))
        col.reopen(after_full_sync=True)
        return {nid: flds.split("\x1f", 1)[0]
                for nid, flds in col.db.all("select id, flds from notes")}
    finally:
        col.close()


def concurrent_workload(prepared: Prepared) -> Workload:
    """CONCURRENT_USERS users on one server, each with `prepared` on two
    devices; one client process per user (bench/sync_worker.py) runs the
    rounds of rounds_workload. The processes start, open their collections
    and log in first; the time runs from the moment all are told to go until
    the last exits. Afterwards every user's server collection must hold
    their added notes and last edits."""

    def once(bench: Bench, kind: str, tmp: Path) -> Phase:
        server = bench.start(kind, CONCURRENT)
        devices = {}
        for account in CONCURRENT:
            dev = open_devices(server, prepared, tmp, account)
            devices[account[0]] = (Path(dev.a.path), Path(dev.b.path))
            dev.close()
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        procs: list[tuple[str, subprocess.Popen]] = []
        try:
            for user, password in CONCURRENT:
                a, b = devices[user]
                cmd = [sys.executable, str(WORKER), "--endpoint", server.endpoint,
                       "--user", user, "--password", password, "--device", str(a),
                       "--device", str(b), "--rounds", str(ROUNDS),
                       "--adds", str(ROUND_ADDS), "--edits", str(ROUND_EDITS)]
                procs.append((user, subprocess.Popen(
                    cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True, env=env)))
            for user, proc in procs:
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    raise BenchError(f"{user}'s client did not start: "
                                     f"{proc.communicate()[1].strip()[-300:]}")
            for user, _ in CONCURRENT:
                bench.warm(server, user, "4 users")
            peak_ok = reset_peak(server.pid)
            before = cpu_snapshot(server.pid)
            started = time.perf_counter()
            for _, proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
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
        cpu = cpu_between(before, cpu_snapshot(server.pid))
        peak = server.peak_mb() if peak_ok else None
        server.check_alive()

        for (user, password), (_, proc) in zip(CONCURRENT, procs):
            out, err = outputs[user]
            if proc.returncode != 0:
                raise BenchError(f"{user}'s client failed ({proc.returncode}): "
                                 f"{err.strip().splitlines()[-1:] or ''}")
            markers = json.loads(out)["markers"]
            held = server_notes(server, user, password, tmp)
            want = prepared.notes + ROUNDS * ROUND_ADDS
            if len(held) != want:
                raise BenchError(f"server holds {len(held)} notes for {user}, want {want}")
            wrong = {nid: text for nid, text in markers.items() if held.get(int(nid)) != text}
            if wrong:
                raise BenchError(f"server lacks {len(wrong)} of {user}'s changes, e.g. "
                                 f"{next(iter(wrong.items()))}")
        client_cpu = sum(json.loads(outputs[user][0])["cpu_secs"] for user, _ in CONCURRENT)
        return Phase(wall, cpu, peak, client_cpu)

    def report(phases: list[Phase]) -> list[Row]:
        label = (f"{CONCURRENT_USERS} users at once, {ROUNDS} rounds each, {prepared.short} "
                 f"each (A adds {ROUND_ADDS} notes and edits {ROUND_EDITS}; A syncs, B syncs)")
        return phase_rows(label, phases, syncs=2 * ROUNDS * CONCURRENT_USERS)

    return Workload(f"concurrent {CONCURRENT_USERS} users", once, report)


# ---------------------------------------------------------------- rested collections
# A household syncs a few times a day, so most syncs find the server idle:
# ours has closed the collection (SYNC_IDLE_CLOSE_SECS) and reopens it, the
# official server keeps it open. And the day's first sync is where each
# server does its daily work: ours backs the collection up (the state before
# the day's first changes), the official server unburies cards when its
# stored `lastUnburied` day is behind the scheduler's today. The bench makes
# that day honest for both: the clients say when they were last used
# (`lastUnburied`, which the official server stores from the newer side's
# config), and ours' backups are renamed a day back, the state it finds at
# the first sync of a new day.

BACKUP_NAME = re.compile(r"^collection-(\d{8}-\d{6})-([a-z-]+)\.anki2\.zst$")
BACKUP_TIMEOUT = 300.0


def rest(server: Server, user: str) -> None:
    """The client rests as long with either server (`Server.rest_secs`);
    ours must have closed `user`'s collection by then (the official server
    never does)."""
    time.sleep(server.rest_secs)
    wait_closed(server, user)


def wait_closed(server: Server, user: str) -> None:
    """Until ours has closed `user`'s collection (its idle close); the
    official server never does, so it waits for nothing."""
    if server.kind != "ours":
        return
    deadline = time.monotonic() + CLOSE_TIMEOUT
    while server.collection_open(user):
        server.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"ours kept {user}'s collection open for {CLOSE_TIMEOUT:.0f} s")
        time.sleep(0.2)


def our_backups(server: Server, user: str) -> list[tuple[Path, datetime.datetime, str]]:
    """(file, when (UTC), reason) of ours' backups of `user`."""
    folder = server.base / user / "backups"
    found = []
    for path in folder.glob("collection-*.anki2.zst") if folder.is_dir() else []:
        parsed = BACKUP_NAME.match(path.name)
        if parsed:
            when = datetime.datetime.strptime(parsed[1], "%Y%m%d-%H%M%S").replace(
                tzinfo=datetime.timezone.utc)
            found.append((path, when, parsed[2]))
    return sorted(found, key=lambda b: b[1])


def back_a_day(server: Server, user: str) -> None:
    """Renames ours' backups of `user` one day back (oldest first, so no
    name is taken twice): the newest is then yesterday's."""
    if server.kind != "ours":
        return
    for path, when, reason in our_backups(server, user):
        earlier = (when - datetime.timedelta(days=1)).strftime("%Y%m%d-%H%M%S")
        path.rename(path.with_name(f"collection-{earlier}-{reason}.anki2.zst"))


def daily_backup_today(server: Server, user: str) -> bool:
    today = datetime.datetime.now(datetime.timezone.utc).date()
    return any(reason == "daily" and when.date() == today
               for _, when, reason in our_backups(server, user))


def wait_for_daily_backup(server: Server, user: str, since: float) -> None:
    """Waits until ours' daily backup of `user`, started by a sync at
    `since` (perf_counter), is on disk."""
    while not daily_backup_today(server, user):
        server.check_alive()
        if time.perf_counter() - since > BACKUP_TIMEOUT:
            raise BenchError(f"no daily backup {BACKUP_TIMEOUT:.0f} s after the day's "
                             "first sync")
        time.sleep(0.01)


@dataclass
class FirstSync:
    phase: Phase  # the sync as the client sees it
    cpu_with_backup: float  # until ours' backup is on disk
    backup_after: float | None  # seconds from the sync's start to the backup file


def first_sync_of_day(server: Server, col: Collection, auth, user: str) -> FirstSync:
    """Times the sync, then (ours) waits for its daily backup to be on disk,
    so its cost counts whether it is written before or after the answer."""
    peak_ok = reset_peak(server.pid)
    before = cpu_snapshot(server.pid)
    started = time.perf_counter()
    outcome = []
    guarded(server, NORMAL_SYNC_TIMEOUT,
            lambda: outcome.append(col.sync_collection(auth, sync_media=False)))
    wall = time.perf_counter() - started
    synced = cpu_snapshot(server.pid)
    if outcome[0].required not in NORMAL_OUTCOMES:
        raise BenchError(f"normal sync answered {outcome[0].required}")
    backup_after = None
    if server.kind == "ours":
        wait_for_daily_backup(server, user, started)
        backup_after = time.perf_counter() - started
    done = cpu_snapshot(server.pid)
    peak = server.peak_mb() if peak_ok else None
    return FirstSync(Phase(wall, cpu_between(before, synced), peak),
                     cpu_between(before, done), backup_after)


def rested_workload(prepared: Prepared) -> Workload:
    """A edits a note and syncs after the collection rested (ours: closed),
    then again as the day's first sync; B takes no part after the set-up."""

    def once(bench: Bench, kind: str, tmp: Path) -> tuple[Phase, FirstSync]:
        server = bench.start(kind, [REST_USER], env={"SYNC_IDLE_CLOSE_SECS": REST_IDLE_CLOSE})
        dev = open_devices(server, prepared, tmp, REST_USER)
        a = dev.a
        try:
            nids = sorted(a.find_notes(""))
            today = a.sched.today

            def sync_after(last_used: int, edit: int) -> None:
                a.set_config("lastUnburied", last_used)
                edit_note(a, nids[edit], f"rested edit {edit} on {kind}")

            # Untimed: the server stores that A was used today.
            sync_after(today, 1)
            normal_sync(server, a, dev.auth_a)
            rest(server, dev.user)
            # After a rest on the same day; A says it was last used yesterday,
            # which the server stores for the next sync.
            sync_after(today - 1, 2)
            rested = normal_sync(server, a, dev.auth_a)
            rest(server, dev.user)
            back_a_day(server, dev.user)
            sync_after(today, 3)
            first = first_sync_of_day(server, a, dev.auth_a, dev.user)
            if server.kind == "ours" and not daily_backup_today(server, dev.user):
                raise BenchError("ours took no daily backup on the day's first sync")
        finally:
            dev.close()
        return rested, first

    def report(runs: list[tuple[Phase, FirstSync]]) -> list[Row]:
        firsts = [first for _, first in runs]
        label = (f"first sync of the day, 1 edited note up, {prepared.short} "
                 "(ours: reopens, daily backup; official: unbury check)")
        rows = phase_rows(f"1 edited note up after a rest, {prepared.short} "
                          "(ours reopens the collection)", [rested for rested, _ in runs])
        rows += [
            (label, "wall s", stat([f.phase.wall for f in firsts]), "s"),
            (label, "server CPU s", stat([f.phase.cpu for f in firsts]), "s"),
            (label, "server CPU s, until the backup is on disk",
             stat([f.cpu_with_backup for f in firsts]), "s"),
        ]
        backups = [f.backup_after for f in firsts if f.backup_after is not None]
        if backups:
            rows.append((label, "backup on disk after s", stat(backups), "s"))
        peaks = [f.phase.peak_mb for f in firsts]
        rows.append((label, "server peak RSS MB", None if None in peaks else max(peaks), "mb"))
        return rows

    return Workload(f"rested sync {prepared.label}", once, report)


# ---------------------------------------------------------------- fsyncs

SYNC_CALLS = ("fsync", "fdatasync", "sync_file_range", "syncfs", "msync")
# Short: the official server reads a request's first 24 bytes on their own
# (hyper looking for an HTTP/2 preface), and the mark must be in them.
FSYNC_MARK = "fs-"
TRACED_CALL = re.compile(r"^\d+ +([a-z_0-9]+)\(")


def fsyncs_between_marks(trace: Path) -> dict[str, int]:
    """{window name: fsync-family calls} in an strace output whose windows
    open at a line carrying FSYNC_MARK + name and close at FSYNC_MARK + "end"."""
    counts: dict[str, int] = {}
    window = None
    for line in trace.read_text(errors="replace").splitlines():
        if FSYNC_MARK in line:
            name = line.split(FSYNC_MARK, 1)[1].split()[0]
            window = None if name == "end" else name
            counts.setdefault(window or "end", 0)
            continue
        called = TRACED_CALL.match(line)
        if window and called and called[1] in SYNC_CALLS:
            counts[window] += 1
    return counts


def fsync_workload(prepared: Prepared) -> Workload:
    """Calls that force data to disk during a normal sync (1 edited note up,
    then down), counted by strace on the whole server: the server is started
    under it (attaching later would interrupt blocked reads) and marks each
    sync with a /health request the trace shows."""

    def once(bench: Bench, kind: str, tmp: Path) -> dict[str, float]:
        trace = tmp / f"strace-{kind}.out"
        traced = ",".join(SYNC_CALLS + ("read", "recvfrom", "recvmsg"))
        wrap = ["strace", "-f", "-qq", "--seccomp-bpf", "-e", f"trace={traced}", "-s", "64",
                "-o", str(trace)]
        server = bench.start(kind, [FSYNC_USER], wrap=wrap, fresh=True)
        dev = open_devices(server, prepared, tmp, FSYNC_USER)
        try:
            nids = sorted(dev.a.find_notes(""))
            for i in range(FSYNC_SYNCS):
                edit_note(dev.a, nids[i + 1], f"fsync {i} on {kind}")
                for col, auth, direction in ((dev.a, dev.auth_a, "up"),
                                             (dev.b, dev.auth_b, "down")):
                    mark(server, FSYNC_MARK + direction)
                    normal_sync(server, col, auth)
                    mark(server, FSYNC_MARK + "end")
        finally:
            dev.close()
        counts = fsyncs_between_marks(trace)
        if counts.get("end", 0) != 0 or set(counts) != {"up", "down", "end"}:
            raise BenchError(f"the trace's windows are not what was marked: {counts}")
        return {direction: counts[direction] / FSYNC_SYNCS for direction in ("up", "down")}

    def report(runs: list[dict[str, float]]) -> list[Row]:
        return [(f"fsyncs per normal sync, 1 edited note {direction}, {prepared.short}",
                 "calls", stat([run[direction] for run in runs]), "n")
                for direction in ("up", "down")]

    return Workload(f"fsyncs per sync {prepared.short}", once, report, modes=("fresh",),
                    repeated=False)


# ---------------------------------------------------------------- long-running servers


def long_memory_once(bench: Bench, kind: str, tmp: Path) -> dict[str, float]:
    """The long-running server after all workloads, once ours has closed the
    idle collections (the official server keeps them open)."""
    server = bench.long[kind]
    if kind == "ours":
        deadline = time.monotonic() + CLOSE_TIMEOUT
        while open_collections(server.pid):
            server.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"ours kept collections open for {CLOSE_TIMEOUT:.0f} s")
            time.sleep(0.5)
    time.sleep(IDLE_SETTLE_SECONDS)
    server.check_alive()
    return {"rss": rss_mb(server.pid), "pss": pss_mb(server.pid), "peak": server.max_peak_mb}


def long_memory_report(runs: list[dict[str, float]]) -> list[Row]:
    run = runs[0]
    label = "long-running server after all workloads (ours: idle collections closed)"
    return [(label, "RSS MB", run["rss"], "mb"), (label, "PSS MB", run["pss"], "mb"),
            ("long-running server, highest peak RSS of a timed phase", "MB", run["peak"],
             "mb")]


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


def media_once(bench: Bench, kind: str, tmp: Path) -> tuple[Phase, Phase]:
    """Device A adds media_files() and syncs them up; a fresh device B syncs
    them down and must hold the same bytes under the same names."""
    files = media_files()
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


def media_report(pairs: list[tuple[Phase, Phase]]) -> list[Row]:
    files = media_files()
    mb = sum(len(data) for _, data in files) / 10**6
    label = f"{len(files)} media files ({mb:.0f} MB)"
    return (phase_rows(f"{label} up", [up for up, _ in pairs])
            + phase_rows(f"{label} down, fresh device", [down for _, down in pairs]))


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




# What one bomb did: server RSS before, its peak (None: no reset), wall, answer.
BombResult = tuple[float, "float | None", float, str]


def bomb_once(bench: Bench, kind: str, tmp: Path) -> dict[str, BombResult]:
    """For each of BOMB_METHODS, on a fresh server with its default payload
    limit (the setting a real deployment meets the bomb with): a real /sync/meta
    first, so the user's collection is open, then the bomb; the server's RSS
    before, its peak during the request, the wall time and the status. Ours
    must refuse it; the official server's answer is reported as it comes."""
    payload = zstd_bomb(BOMB_BYTES)
    meta = zstd_raw(json.dumps({"v": 11, "cv": f"{anki.buildinfo.version},bench,linux"}).encode())
    results = {}
    for method in BOMB_METHODS:
        server = bench.start(kind, payload_megs=None, fresh=True)
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
        results[method] = (before, peak, wall, answer)
    return results


def bomb_report(runs: list[dict[str, BombResult]]) -> list[Row]:
    label = f"bomb: {len(zstd_bomb(BOMB_BYTES)) // 1024} KiB zstd → {BOMB_BYTES >> 30} GiB"
    rows: list[Row] = []
    for method in BOMB_METHODS:
        results = [run[method] for run in runs]
        peaks = [peak for _, peak, _, _ in results]
        answers = sorted({answer for *_, answer in results})
        rows += [
            (f"{label} to /sync/{method}", "server RSS before MB",
             max(before for before, *_ in results), "mb"),
            (f"{label} to /sync/{method}", "server peak RSS MB",
             None if None in peaks else max(peaks), "mb"),
            (f"{label} to /sync/{method}", "wall s",
             stat([wall for _, _, wall, _ in results]), "s"),
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


def fmt(value: "float | Stat | str | None", unit: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, Stat):
        median = fmt(value.median, unit)
        if value.count < 2:
            return median
        return f"{median} ({fmt(value.low, unit)}–{fmt(value.high, unit)})"
    if unit == "mb":
        return f"{value:.1f}"
    if unit in ("ms", "n"):
        return f"{value:.2f}" if unit == "ms" else f"{value:.1f}"
    if unit == "text":
        return str(value)
    return f"{value:.3f}"


def median_of(value: "float | Stat | str | None") -> float | None:
    if isinstance(value, Stat):
        return value.median
    if isinstance(value, (int, float)):
        return float(value)
    return None


def table(results: dict[str, dict[str, list[Row]]], failed: set[tuple[str, str]]) -> str:
    """One line per (workload, metric); `results[workload][kind]` holds the
    rows a server produced, `failed` the (workload, kind) pairs that failed.
    Cells are medians with (lowest–highest) over the attempts; the ratio is
    of the medians."""
    lines = [
        "| workload | metric | ours | official | ours/official |",
        "|---|---|---:|---:|---:|",
    ]
    for name, by_kind in results.items():
        keys: dict[tuple[str, str], str] = {}
        values: dict[tuple[str, str, str], Any] = {}
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
            ours = median_of(values.get((label, metric, "ours")))
            official = median_of(values.get((label, metric, "official")))
            comparable = ours is not None and official and unit != "text"
            ratio = f"{ours / official:.2f}" if comparable else "—"
            lines.append(f"| {label} | {metric} | {cells[0]} | {cells[1]} | {ratio} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def workloads_for(quick: bool, errors: list[str]) -> list[Workload]:
    """Every workload of a run, in the order they run; a collection that
    cannot be made costs only the workloads that need it."""
    sizes = SIZES[:1] if quick else SIZES
    workloads = [Workload("idle", idle_once, lambda runs: runs[0], modes=("fresh",),
                          repeated=False),
                 Workload("login", login_once, login_report)]

    def with_collection(notes: int, *makers: Callable[[Prepared], Workload]) -> None:
        try:
            prepared = prepare(sys.executable, notes)
        except Exception as err:
            errors.append(f"preparing {notes} notes: {err}")
            return
        workloads.extend(make(prepared) for make in makers)

    for notes in sizes:
        with_collection(notes, full_sync_workload)
    with_collection(sizes[-1], incremental_workload, rested_workload)
    with_collection(ROUND_NOTES, rounds_workload, concurrent_workload, fsync_workload)
    workloads += [
        Workload(f"media {MEDIA_FILES} files up and down", media_once, media_report,
                 modes=("fresh",)),
        Workload("bomb (decompression)", bomb_once, bomb_report, modes=("fresh",)),
        Workload("memory of the long-running server", long_memory_once, long_memory_report,
                 modes=("long",), repeated=False),
    ]
    return workloads


def run_mode(bench: Bench, mode: str, kinds: list[str], workloads: list[Workload],
             errors: list[str]) -> tuple[dict[str, dict[str, list[Row]]], set[tuple[str, str]]]:
    """Runs the workloads of `mode`; attempts alternate between the servers
    (and which goes first), so a noisy stretch of the run hits both."""
    results: dict[str, dict[str, list[Row]]] = {}
    failed: set[tuple[str, str]] = set()
    if mode == "long":
        try:
            bench.start_long(kinds)
        except Exception as err:
            errors.append(f"starting the long-running servers: {err}")
            return results, set((w.name, k) for w in workloads for k in kinds)
    try:
        for workload in workloads:
            figures: dict[str, list[Any]] = {kind: [] for kind in kinds}
            attempts = bench.repeats if workload.repeated else 1
            for attempt in range(attempts):
                order = kinds if attempt % 2 == 0 else kinds[::-1]
                for kind in order:
                    if (workload.name, kind) in failed:
                        continue
                    print(f"bench: {mode}: {workload.name} on {kind} "
                          f"({attempt + 1}/{attempts})", file=sys.stderr)
                    tmp = Path(tempfile.mkdtemp(prefix="client-", dir=bench.workdir))
                    try:
                        figures[kind].append(workload.once(bench, kind, tmp))
                    except Exception as err:
                        detail = "".join(traceback.format_exception_only(type(err), err)).strip()
                        errors.append(f"{mode}: {workload.name} on {kind}: {detail}")
                        failed.add((workload.name, kind))
                    finally:
                        bench.stop_all()
                        shutil.rmtree(tmp, ignore_errors=True)
            results[workload.name] = {kind: workload.report(figures[kind])
                                      for kind in kinds if (workload.name, kind) not in failed}
    finally:
        bench.stop_long()
    return results, failed


MODE_TITLES = {
    "fresh": "a fresh server for every attempt",
    "long": ("one long-running server per implementation, serving every workload in turn "
             f"(ours with SYNC_IDLE_CLOSE_SECS={LONG_IDLE_CLOSE})"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="the 5k-note collection where 50k would be used")
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both",
                        help="fresh: a new server for every attempt; long: one server per "
                        "implementation for the whole run; default both")
    parser.add_argument(
        "--only-workloads", metavar="NAMES",
        help="comma-separated workload kinds to run (the first word of a workload's name: "
        "idle, login, full, incremental, rested, rounds, concurrent, fsyncs, media, bomb, "
        "memory); default all",
    )
    parser.add_argument("--only", choices=KINDS, help="run one server only")
    parser.add_argument(
        "--binary", default=str(TARGET / "release/anki-sync-lite"), help="our server binary"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, metavar="N",
        help="attempts of every workload but idle, fsyncs and memory; figures are "
        "medians with their range, peaks the highest (default 3)",
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    kinds = [args.only] if args.only else list(KINDS)
    commands = {"ours": [args.binary], "official": [sys.executable, "-m", "anki.syncserver"]}
    if "ours" in kinds and not os.access(args.binary, os.X_OK):
        print(f"bench: {args.binary} missing: run cargo build --release", file=sys.stderr)
        return 1
    if shutil.which("strace") is None:
        print("bench: strace missing (apt-get install strace): the fsync count needs it",
              file=sys.stderr)
        return 1
    modes = list(MODES) if args.mode == "both" else [args.mode]

    started = time.monotonic()
    load_at_start = os.getloadavg()[0]
    errors: list[str] = []
    workloads = workloads_for(args.quick, errors)
    if args.only_workloads:
        wanted = {name.strip() for name in args.only_workloads.split(",") if name.strip()}
        known = {w.name.split()[0] for w in workloads}
        if wanted - known:
            parser.error(f"unknown workloads {sorted(wanted - known)}; known: {sorted(known)}")
        workloads = [w for w in workloads if w.name.split()[0] in wanted]

    tables = {}
    workdir = Path(tempfile.mkdtemp(prefix="anki-sync-bench-"))
    bench = Bench(commands, workdir, args.repeat)
    try:
        for mode in modes:
            chosen = [w for w in workloads if mode in w.modes]
            if chosen:
                tables[mode] = run_mode(bench, mode, kinds, chosen, errors)
    except KeyboardInterrupt:
        errors.append("interrupted")
    finally:
        bench.stop_all()
        bench.stop_long()
        shutil.rmtree(workdir, ignore_errors=True)

    print("## anki-sync-lite vs official sync server\n")
    print(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"- CPU: {cpu_model()}, {os.cpu_count()} cores")
    print(f"- ours: {args.binary} (git {git_revision()}); "
          f"official: anki {anki.buildinfo.version} (`python -m anki.syncserver`)")
    print(f"- cells: median of {args.repeat} attempts (lowest–highest), attempts alternating "
          "between the servers; peak RSS: the highest VmHWM of those attempts")
    print("- server CPU: time on CPU of all the server's threads (/proc/PID/task/*/schedstat, "
          f"or utime+stime at {1 / CLK_TCK:.3f} s if a thread exited meanwhile, or came and "
          "went unseen)")
    print(f"- runtime: {time.monotonic() - started:.0f} s; load average (1 min) at start "
          f"{load_at_start:.2f}, at end {os.getloadavg()[0]:.2f} (other processes skew times, "
          "not memory)")
    for mode, (results, failed) in tables.items():
        print(f"\n### {MODE_TITLES[mode]}\n")
        print(table(results, failed))
    if bench.remarks:
        print("\nRemarks:")
        for remark in sorted(set(bench.remarks)):
            print(f"- {remark}")
    if errors:
        print("\nFailures:")
        for error in errors:
            print(f"- {error}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
