"""Unit tests of the power-cut simulator's model: each test mounts
powercutfs.py over a fresh folder, makes changes through the kernel, cuts the
power and checks what the backing folder holds, which is what a disk would
hold: file contents only as of their last fsync, folder entries only as of
their folder's last fsync.

Run by tests/it/powercut/ (needs root and /dev/fuse), or by hand:
    python -m unittest -v tests/powercut/test_powercutfs.py
with the venv that `tests/setup-venv.sh powercut` prints.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
FS = os.path.join(HERE, "powercutfs.py")


class Mount:
    """powercutfs.py running over `root/back`, mounted at `root/mnt`."""

    def __init__(self, root: str):
        self.back = os.path.join(root, "back")
        self.mnt = os.path.join(root, "mnt")
        self.ctl = os.path.join(root, "ctl")
        os.makedirs(self.back, exist_ok=True)
        os.makedirs(self.mnt, exist_ok=True)
        if os.path.exists(self.ctl):
            os.unlink(self.ctl)
        self.proc = subprocess.Popen(
            [sys.executable, FS, self.back, self.mnt, "--control", self.ctl],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(self.ctl)
                break
            except OSError:
                self.sock.close()
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"powercutfs did not start: {self.proc.stdout.read()}")
                time.sleep(0.02)
        self.reader = self.sock.makefile("r")

    def __call__(self, *words: str) -> str:
        self.sock.sendall((" ".join(words) + "\n").encode())
        return self.reader.readline().strip()

    def path(self, name: str) -> str:
        return os.path.join(self.mnt, name)

    def finish(self, how: str) -> None:
        assert self(how) == "ok"
        self.sock.close()
        out, _ = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, out

    def cut(self) -> None:
        self.finish("cut")


def write(path: str, data: bytes, sync: bool, mode: int = os.O_CREAT | os.O_WRONLY | os.O_TRUNC) -> None:
    fd = os.open(path, mode, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class PowerCutTests(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.root = self.tmp.name
        self.fs: Mount | None = None

    def tearDown(self) -> None:
        if self.fs is not None and self.fs.proc.poll() is None:
            self.fs("release")
            self.fs.finish("stop")
        self.tmp.cleanup()

    def mount(self) -> Mount:
        self.fs = Mount(self.root)
        return self.fs

    def back(self, *names: str) -> str:
        return os.path.join(self.root, "back", *names)

    def listing(self, *names: str) -> list[str]:
        return sorted(os.listdir(self.back(*names)))

    def seed(self, files: dict[str, bytes]) -> None:
        """Files that are on disk before the mount (so all durable)."""
        for name, data in files.items():
            os.makedirs(os.path.dirname(self.back(name)), exist_ok=True)
            with open(self.back(name), "wb") as f:
                f.write(data)

    # ------------------------------------------------------------ file data

    def test_unsynced_write_to_an_existing_file_is_lost(self) -> None:
        self.seed({"a": b"old"})
        fs = self.mount()
        write(fs.path("a"), b"new contents", sync=False)
        self.assertEqual(read(fs.path("a")), b"new contents")  # the live view
        fs.cut()
        self.assertEqual(read(self.back("a")), b"old")

    def test_fsync_makes_a_write_durable(self) -> None:
        self.seed({"a": b"old"})
        fs = self.mount()
        write(fs.path("a"), b"new contents", sync=True)
        fs.cut()
        self.assertEqual(read(self.back("a")), b"new contents")

    def test_only_writes_before_the_last_fsync_survive(self) -> None:
        self.seed({"a": b"0123456789"})
        fs = self.mount()
        fd = os.open(fs.path("a"), os.O_RDWR)
        os.pwrite(fd, b"AB", 0)
        os.fdatasync(fd)
        os.pwrite(fd, b"XY", 8)
        os.close(fd)
        fs.cut()
        self.assertEqual(read(self.back("a")), b"AB23456789")

    def test_truncation_and_growth_are_file_data(self) -> None:
        self.seed({"short": b"0123456789", "long": b"abc"})
        fs = self.mount()
        os.truncate(fs.path("short"), 4)
        write(fs.path("long"), b"abcdefgh", sync=False, mode=os.O_WRONLY)
        fs.cut()
        self.assertEqual(read(self.back("short")), b"0123456789")
        self.assertEqual(read(self.back("long")), b"abc")

        fs = self.mount()
        fd = os.open(fs.path("short"), os.O_RDWR)
        os.ftruncate(fd, 4)
        os.fsync(fd)
        os.close(fd)
        fs.cut()
        self.assertEqual(read(self.back("short")), b"0123")

    def test_open_with_o_trunc_is_undone(self) -> None:
        self.seed({"a": b"keep me"})
        fs = self.mount()
        os.close(os.open(fs.path("a"), os.O_WRONLY | os.O_TRUNC))
        self.assertEqual(read(fs.path("a")), b"")
        fs.cut()
        self.assertEqual(read(self.back("a")), b"keep me")

    # ------------------------------------------------------------ names

    def test_new_file_needs_its_folder_fsynced(self) -> None:
        fs = self.mount()
        write(fs.path("synced-data-only"), b"data", sync=True)
        fs.cut()
        self.assertEqual(self.listing(), [])

    def test_durable_name_without_durable_data_is_an_empty_file(self) -> None:
        fs = self.mount()
        write(fs.path("a"), b"data", sync=False)
        sync_dir(fs.mnt)
        fs.cut()
        self.assertEqual(self.listing(), ["a"])
        self.assertEqual(read(self.back("a")), b"")

    def test_file_and_folder_fsynced_survives(self) -> None:
        fs = self.mount()
        write(fs.path("a"), b"data", sync=True)
        sync_dir(fs.mnt)
        fs.cut()
        self.assertEqual(read(self.back("a")), b"data")

    def test_rename_over_needs_the_folder_fsynced(self) -> None:
        # The "temp file, fsync, rename" steps without the folder fsync.
        self.seed({"target": b"old"})
        fs = self.mount()
        write(fs.path("target.tmp"), b"new", sync=True)
        os.rename(fs.path("target.tmp"), fs.path("target"))
        fs.cut()
        self.assertEqual(self.listing(), ["target"])
        self.assertEqual(read(self.back("target")), b"old")

        # ... and with it.
        fs = self.mount()
        write(fs.path("target.tmp"), b"new", sync=True)
        os.rename(fs.path("target.tmp"), fs.path("target"))
        sync_dir(fs.mnt)
        fs.cut()
        self.assertEqual(self.listing(), ["target"])
        self.assertEqual(read(self.back("target")), b"new")

    def test_rename_of_unsynced_data_leaves_an_empty_file(self) -> None:
        self.seed({"target": b"old"})
        fs = self.mount()
        write(fs.path("target.tmp"), b"new", sync=False)
        os.rename(fs.path("target.tmp"), fs.path("target"))
        sync_dir(fs.mnt)
        fs.cut()
        self.assertEqual(read(self.back("target")), b"")

    def test_unlink_is_undone_without_a_folder_fsync(self) -> None:
        self.seed({"a": b"keep", "b": b"gone"})
        fs = self.mount()
        os.unlink(fs.path("a"))
        os.unlink(fs.path("b"))
        fs.cut()
        self.assertEqual(read(self.back("a")), b"keep")
        fs = self.mount()
        os.unlink(fs.path("b"))
        sync_dir(fs.mnt)
        fs.cut()
        self.assertEqual(self.listing(), ["a"])

    def test_fsync_of_an_unlinked_open_file_reaches_its_old_name(self) -> None:
        # The unlink was never made durable, so the name comes back, with
        # what was fsynced through the open descriptor.
        self.seed({"a": b"before"})
        fs = self.mount()
        fd = os.open(fs.path("a"), os.O_RDWR)
        os.unlink(fs.path("a"))
        os.pwrite(fd, b"AFTER!", 0)
        os.fsync(fd)
        os.close(fd)
        fs.cut()
        self.assertEqual(read(self.back("a")), b"AFTER!")

    def test_new_folder_needs_its_parent_fsynced(self) -> None:
        # A user's folder created on a fresh SYNC_BASE: everything inside is
        # fsynced, the base folder is not.
        fs = self.mount()
        os.mkdir(fs.path("user"))
        write(fs.path("user/collection.anki2"), b"notes", sync=True)
        sync_dir(fs.path("user"))
        fs.cut()
        self.assertEqual(self.listing(), [])

        fs = self.mount()
        os.mkdir(fs.path("user"))
        write(fs.path("user/collection.anki2"), b"notes", sync=True)
        sync_dir(fs.path("user"))
        sync_dir(fs.mnt)
        fs.cut()
        self.assertEqual(self.listing("user"), ["collection.anki2"])
        self.assertEqual(read(self.back("user", "collection.anki2")), b"notes")

    def test_each_folder_of_a_move_is_durable_on_its_own(self) -> None:
        # Moving a file between folders and fsyncing only the target: the
        # source still lists it too (the strict model; ext4 would commit both).
        self.seed({"from/a": b"data", "to/keep": b"k"})
        fs = self.mount()
        os.rename(fs.path("from/a"), fs.path("to/a"))
        sync_dir(fs.path("to"))
        fs.cut()
        self.assertEqual(self.listing("from"), ["a"])
        self.assertEqual(self.listing("to"), ["a", "keep"])
        self.assertEqual(read(self.back("to", "a")), b"data")

        # Fsyncing only the source: the file is nowhere.
        fs = self.mount()
        os.rename(fs.path("to/a"), fs.path("from/b"))
        sync_dir(fs.path("to"))
        fs.cut()
        self.assertEqual(self.listing("from"), ["a"])
        self.assertEqual(self.listing("to"), ["keep"])

    def test_file_times_survive_a_cut(self) -> None:
        self.seed({"old": b"x"})
        os.utime(self.back("old"), (1_000_000, 1_000_000))
        fs = self.mount()
        write(fs.path("new"), b"y", sync=True)
        os.utime(fs.path("new"), (2_000_000, 2_000_000))
        write(fs.path("new"), b"z", sync=True)
        sync_dir(fs.mnt)
        fs.cut()
        self.assertEqual(os.stat(self.back("old")).st_mtime, 1_000_000)
        self.assertGreater(os.stat(self.back("new")).st_mtime, 2_000_000)

    def test_chmod_is_durable_at_fsync(self) -> None:
        self.seed({"a": b"x"})
        os.chmod(self.back("a"), 0o644)
        fs = self.mount()
        os.chmod(fs.path("a"), 0o600)
        fs.cut()
        self.assertEqual(os.stat(self.back("a")).st_mode & 0o777, 0o644)

    def test_writeback_makes_everything_durable(self) -> None:
        self.seed({"gone": b"x"})
        fs = self.mount()
        os.mkdir(fs.path("dir"))
        write(fs.path("dir/a"), b"data", sync=False)
        os.unlink(fs.path("gone"))
        self.assertEqual(fs("writeback"), "ok")
        write(fs.path("dir/a"), b"later", sync=False)
        fs.cut()
        self.assertEqual(self.listing(), ["dir"])
        self.assertEqual(read(self.back("dir", "a")), b"data")

    def test_stop_keeps_everything(self) -> None:
        fs = self.mount()
        write(fs.path("a"), b"unsynced", sync=False)
        fs.finish("stop")
        self.assertEqual(read(self.back("a")), b"unsynced")

    # ------------------------------------------------------------ the power switch

    def test_armed_freeze_stops_at_the_kth_mutating_call(self) -> None:
        self.seed({"a": b"old"})
        fs = self.mount()
        self.assertEqual(fs("arm", "3"), "ok")
        # create (1), write (2), fsync (3: frozen before it runs).
        child = subprocess.Popen([sys.executable, "-c", (
            "import os, sys\n"
            "fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o644)\n"
            "os.write(fd, b'x')\n"
            "os.fsync(fd)\n"
            "print('fsync returned')\n"
        ), fs.path("b")], stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while fs("status") != "frozen":
            self.assertLess(time.monotonic(), deadline, "never froze")
            time.sleep(0.01)
        self.assertEqual(fs("ops"), "3")
        time.sleep(0.2)
        self.assertIsNone(child.poll(), "the fsync returned without power")
        child.send_signal(signal.SIGKILL)
        self.assertEqual(fs("release"), "ok")
        out, _ = child.communicate(timeout=20)
        self.assertEqual(out, "")
        fs.cut()
        self.assertEqual(self.listing(), ["a"])

    def test_frozen_calls_fail_once_released(self) -> None:
        fs = self.mount()
        self.assertEqual(fs("freeze"), "ok")
        self.assertEqual(fs("release"), "ok")
        with self.assertRaises(OSError):
            write(fs.path("a"), b"x", sync=False)
        fs.cut()
        self.assertEqual(self.listing(), [])

    # ------------------------------------------------------------ SQLite on top

    def commit_and_cut(self, synchronous: str, journal: str = "wal") -> int:
        """Commits one row in a child process (`journal` mode, `synchronous`
        as given), cuts the power as the trials do (freeze, SIGKILL, release,
        cut) and returns the rows that survived."""
        fs = self.mount()
        child = subprocess.Popen([sys.executable, "-c", (
            "import sqlite3, sys, time\n"
            "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            f"db.execute('pragma journal_mode = {journal}')\n"
            f"db.execute('pragma synchronous = {synchronous}')\n"
            "db.execute('insert into t values (1)')\n"
            "print('committed', flush=True)\n"
            "time.sleep(600)\n"
        ), fs.path("db.sqlite")], stdout=subprocess.PIPE, text=True)
        self.assertEqual(child.stdout.readline().strip(), "committed")
        fs("freeze")
        child.send_signal(signal.SIGKILL)
        fs("release")
        child.wait(timeout=20)
        child.stdout.close()
        fs.cut()
        db = sqlite3.connect(self.back("db.sqlite"))
        try:
            return db.execute("select count(*) from t").fetchone()[0]
        finally:
            db.close()

    def test_sqlite_wal_commit_survives_only_with_synchronous_full(self) -> None:
        fs = self.mount()
        db = sqlite3.connect(fs.path("db.sqlite"), isolation_level=None)
        db.execute("pragma journal_mode = wal")
        db.execute("create table t (x)")
        db.close()
        sync_dir(fs.mnt)  # SQLite never fsyncs the folder of a new database
        fs.cut()
        # FULL fsyncs the WAL at each commit, and the WAL's folder when it
        # creates the WAL.
        self.assertEqual(self.commit_and_cut("FULL"), 1)
        # OFF leaves both to the kernel: the row is lost.
        self.assertEqual(self.commit_and_cut("OFF"), 1)

    def test_sqlite_rollback_journal_commit_needs_synchronous_extra(self) -> None:
        fs = self.mount()
        db = sqlite3.connect(fs.path("db.sqlite"), isolation_level=None)
        db.execute("pragma journal_mode = delete")
        db.execute("create table t (x)")
        db.close()
        sync_dir(fs.mnt)
        fs.cut()
        # Deleting the journal is the commit. With FULL its folder is not
        # fsynced after, so the cut brings the journal back and SQLite rolls
        # the committed row back; EXTRA fsyncs the folder.
        self.assertEqual(self.commit_and_cut("FULL", "delete"), 0)
        self.assertEqual(self.commit_and_cut("EXTRA", "delete"), 1)


if __name__ == "__main__":
    unittest.main()
