#!/usr/bin/env python3
"""Where a normal sync's cost goes, on either server: runs one kind of normal
sync a few times against a server started under callgrind or watched by
strace, with only the syncs inside the measured window.

bench/run times syncs; this counts what they do. Instruction counts from
callgrind are repeatable on a busy machine, where timings are not, and strace
shows the system calls (fsyncs, file opens, locks) behind a sync. The setup
(two devices holding the collection, one untimed sync each so that the day's
first-sync work is done) runs before the window; client-side edits between
syncs run outside it.

    bench/run-profile --server ours --tool callgrind --workload one-note
    bench/run-profile --server official --tool strace --workload rounds --count 5

Prints a JSON summary (syncs in the window, their wall time, server CPU and,
per tool, the output file: callgrind's profile for callgrind_annotate, or
strace's per-syscall counts, which are also parsed into the summary).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench
import sync_worker
from bench import Server

VALGRIND_HEALTH_TIMEOUT = 600.0
# Requests that mark the measured windows in strace's trace. Short: the
# official server reads a request's first 24 bytes in one call, and the
# trace shows only those ("GET /health?pw-close" is 20).
OPEN_MARK, CLOSE_MARK = "pw-open", "pw-close"
SYNC_CALLS = ("fsync", "fdatasync", "sync_file_range", "syncfs", "msync")
WORKLOADS = ("one-note", "new-notes", "rounds")
ROUND_ADDS, ROUND_EDITS = bench.ROUND_ADDS, bench.ROUND_EDITS


def wrapped(tool: str, command: list[str], out: Path) -> list[str]:
    """`command` run under `tool` from its start, when the tool must start it."""
    if tool == "callgrind":
        # Instrumentation stays off until the window opens: start-up and setup
        # run at near-native speed, and the counts hold only the syncs.
        return ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={out}", "--dump-instr=no", *command]
    if tool == "perf":
        # Sampling on the CPU clock (a VM has no hardware counters), kernel
        # included; disabled until the window opens through the control fifo.
        return ["perf", "record", "-e", "cpu-clock", "-F", "20000", "-g", "-D", "-1",
                "--control", f"fifo:{out}.ctl,{out}.ack", "-o", str(out), "--", *command]
    if tool == "strace":
        # From the start, not attached later: attaching interrupts blocked
        # socket reads (EINTR), which can cost the client a request.
        return ["strace", "-f", "-qq", "-tt", "-T", "-s", "80", "-o", str(out), *command]
    return command


class Window:
    """Opens and closes the measured window around each measured sync."""

    def __init__(self, tool: str, server: Server, out: Path) -> None:
        self.tool, self.server, self.out = tool, server, out

    def perf_control(self, command: str) -> None:
        """Tells `perf record` to enable or disable sampling; waits for its ack."""
        with open(f"{self.out}.ctl", "w") as ctl:
            ctl.write(command + "\n")
        with open(f"{self.out}.ack") as ack:
            ack.readline()

    def control(self, command: str) -> None:
        """Runs a callgrind monitor command (`instrumentation on`, `dump`).
        vgdb must not force it into a server blocked in a system call (its
        ptrace wake-up makes socket reads with timeouts fail with EINTR, and
        the client's request with them), so it waits until the server runs
        code: a /health request wakes it."""
        vgdb = subprocess.Popen(
            ["vgdb", f"--pid={self.server.pid}", "--max-invoke-ms=0", *command.split()],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while vgdb.poll() is None:
            if time.monotonic() > deadline:
                vgdb.kill()
                raise bench.BenchError(f"vgdb {command}: no answer")
            bench.health_status(self.server.port)
            time.sleep(0.05)
        if vgdb.returncode != 0:
            raise bench.BenchError(f"vgdb {command} failed: {vgdb.stderr.read()}")

    def __enter__(self) -> "Window":
        if self.tool == "callgrind":
            self.control("instrumentation on")
        elif self.tool == "strace":
            bench.mark(self.server, OPEN_MARK)
        elif self.tool == "perf":
            self.perf_control("enable")
        return self

    def __exit__(self, *exc) -> None:
        if self.tool == "callgrind":
            self.control("instrumentation off")
        elif self.tool == "strace":
            bench.mark(self.server, CLOSE_MARK)
        elif self.tool == "perf":
            self.perf_control("disable")


CALL = re.compile(r"^\d+ +[\d:.]+ (?:<\.\.\. )?([a-z_0-9]+)(\(| resumed>)")
DURATION = re.compile(r"<([\d.]+)>$")


def strace_windows(path: Path) -> tuple[dict[str, int], dict[str, float]]:
    """{syscall: calls} and {syscall: seconds inside it} over every window
    of the trace at `path` (a window runs from the line carrying OPEN_MARK to
    the one carrying CLOSE_MARK; the marks' own requests count, a few calls)."""
    counts: dict[str, int] = {}
    seconds: dict[str, float] = {}
    inside = False
    for line in path.read_text(errors="replace").splitlines():
        if OPEN_MARK in line:
            inside = True
        elif CLOSE_MARK in line:
            inside = False
        if not inside:
            continue
        found = CALL.match(line)
        if not found:
            continue
        name, how = found.groups()
        if how == "(":  # a call's start (or a whole call); "resumed" ends one
            counts[name] = counts.get(name, 0) + 1
        spent = DURATION.search(line)
        if spent and not line.rstrip().endswith("<unfinished ...>"):
            seconds[name] = seconds.get(name, 0.0) + float(spent.group(1))
    return counts, seconds


def cpu_split(pid: int) -> tuple[float, float, int]:
    """(user, system) CPU seconds and minor page faults of the server's
    process tree."""
    user = system = faults = 0
    for p in bench.process_tree(pid):
        with open(f"/proc/{p}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        user, system = user + int(fields[11]), system + int(fields[12])
        faults += int(fields[7])
    return user / bench.CLK_TCK, system / bench.CLK_TCK, faults


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=bench.KINDS, required=True)
    parser.add_argument("--tool", choices=("callgrind", "strace", "perf", "cpu"), required=True)
    parser.add_argument("--workload", choices=WORKLOADS, required=True,
                        help="one-note: A edits one note; new-notes: A adds --new notes; "
                        f"rounds: A adds {ROUND_ADDS} and edits {ROUND_EDITS}")
    parser.add_argument("--notes", type=int, default=50_000, help="collection size")
    parser.add_argument("--new", type=int, default=5_000, help="notes added by new-notes")
    parser.add_argument("--count", type=int, default=5, help="iterations (A syncs, B syncs)")
    parser.add_argument("--phase", choices=("up", "down", "both"), default="both",
                        help="which syncs are inside the window: A's (up), B's (down)")
    parser.add_argument("--rested", action="store_true",
                        help="ours closes the collection after 1 s idle, and before each measured "
                        "sync the client rests 3 s (either server): the reopen is inside the window")
    parser.add_argument("--binary", default=str(bench.TARGET / "release/anki-sync-lite"))
    parser.add_argument("--out", default=None, help="folder for the tool's output")
    args = parser.parse_args()

    out_dir = Path(args.out or tempfile.mkdtemp(prefix="anki-sync-profile-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{args.tool}-{args.server}-{args.workload}.out"
    for old in out_dir.glob(out.name + "*"):
        old.unlink()
    commands = {"ours": [args.binary],
                "official": [sys.executable, "-m", "anki.syncserver"]}
    commands = {k: wrapped(args.tool, c, out) for k, c in commands.items()}
    if args.tool == "perf":
        for fifo in (f"{out}.ctl", f"{out}.ack"):
            os.mkfifo(fifo)
    if args.tool == "callgrind":
        bench.HEALTH_TIMEOUT = VALGRIND_HEALTH_TIMEOUT

    prepared = bench.prepare(sys.executable, args.notes)
    add_notes = bench.driver_module().add_notes
    workdir = Path(tempfile.mkdtemp(prefix="anki-sync-profile-run-"))
    runner = bench.Bench(commands, workdir, repeats=1)
    rng = random.Random(5)
    try:
        server = runner.start(
            args.server, env={"SYNC_IDLE_CLOSE_SECS": bench.REST_IDLE_CLOSE} if args.rested else None)
        # Includes a first normal sync each (ours: the daily backup), untimed.
        dev = bench.open_devices(server, prepared, workdir, (bench.USER, bench.PASSWORD))
        a, b = dev.a, dev.b
        nids = sorted(a.find_notes(""))
        deck = a.decks.id("Default")

        def change(i: int) -> None:
            if args.workload == "new-notes":
                add_notes(a, args.new, rng, [deck])
            elif args.workload == "one-note":
                bench.edit_note(a, nids[i % len(nids)], f"profile {i}")
            else:
                sync_worker.change_round(a, nids, i, "profile", ROUND_ADDS, ROUND_EDITS)

        try:
            window = Window(args.tool, server, out)
            walls, cpus, syncs = [], [], 0
            user0, sys0, faults0 = cpu_split(server.pid)
            for i in range(args.count):
                change(i)
                for col, auth, phase in ((a, dev.auth_a, "up"), (b, dev.auth_b, "down")):
                    if args.phase not in (phase, "both"):
                        bench.normal_sync(server, col, auth)
                        continue
                    if args.rested:
                        bench.rest(server, bench.USER)
                    with window:
                        measured = bench.normal_sync(server, col, auth)
                    walls.append(measured.wall)
                    cpus.append(measured.cpu)
                    syncs += 1
            user1, sys1, faults1 = cpu_split(server.pid)
            if a.note_count() != b.note_count():
                raise bench.BenchError(f"A holds {a.note_count()} notes, B {b.note_count()}")
        finally:
            dev.close()
        if args.tool == "callgrind":
            window.control("dump")
            time.sleep(1)
        if args.tool == "perf":
            # perf finishes its file on SIGINT; SIGKILL (stop_all) would not let it.
            server.proc.send_signal(signal.SIGINT)
            server.proc.wait(timeout=60)
    finally:
        runner.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    summary: dict = {
        "server": args.server, "tool": args.tool, "workload": args.workload,
        "notes": args.notes, "phase": args.phase, "syncs": syncs,
        "wall_s": sum(walls), "server_cpu_s": sum(cpus),
        # Over the whole loop, client edits included (the server idles then).
        "server_user_ms_per_sync": (user1 - user0) * 1000 / max(syncs, 1),
        "server_sys_ms_per_sync": (sys1 - sys0) * 1000 / max(syncs, 1),
        "server_minor_faults_per_sync": (faults1 - faults0) / max(syncs, 1),
    }
    if args.tool == "callgrind":
        dumps = sorted(out_dir.glob(out.name + "*"))
        summary["callgrind"] = [str(p) for p in dumps]
    if args.tool == "perf":
        for fifo in (f"{out}.ctl", f"{out}.ack"):
            os.unlink(fifo)
        summary["perf"] = str(out)
    if args.tool == "strace":
        counts, seconds = strace_windows(out)
        if not counts:
            raise bench.BenchError(f"no measured window found in {out} (marks not traced?)")
        summary["strace"] = str(out)
        summary["syscalls_per_sync"] = {
            name: round(n / max(syncs, 1), 2)
            for name, n in sorted(counts.items(), key=lambda kv: -kv[1])}
        summary["syscall_ms_per_sync"] = {
            name: round(t * 1000 / max(syncs, 1), 3)
            for name, t in sorted(seconds.items(), key=lambda kv: -kv[1])}
        summary["fsyncs_per_sync"] = sum(counts.get(s, 0) for s in SYNC_CALLS) / max(syncs, 1)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
