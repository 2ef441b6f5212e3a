#!/usr/bin/env python3
"""A FUSE file system that loses, on command, everything a power cut would.

The power-cut trials (tests/it/powercut/) put SYNC_BASE on it. Every call is
passed through to a backing folder, so the processes on top see an ordinary
file system, but the simulator also keeps the state a disk would be left with
if the power went off now (the model of LazyFS, strictest form):

  * file contents (writes, truncations, size changes) become durable only at
    fsync or fdatasync of that file;
  * a directory's entries (files and folders created, renamed or unlinked in
    it) become durable only at fsync of that directory;
  * nothing else survives: no write-back of dirty pages, no journal that
    happens to carry a rename along. Memory-mapped pages (SQLite's -shm) that
    the kernel never wrote back are simply not there.

`cut` unmounts and rewrites the backing folder to exactly that durable state,
so a new mount on it (and a restarted server) sees what survived.

Control (a Unix socket given by --control; one command a line, one answer a
line; connections are served side by side): `ops` (mutating calls so far),
`arm K` (freeze at the K-th mutating call from now: it and every later call
wait, as if the power went off just before it), `disarm`, `freeze` (now),
`status` (frozen|running), `wait` (answers `frozen` once frozen),
`writeback` (make everything durable, as the kernel does once the machine
has idled a while), `release` (fail every waiting and later call with EIO:
send it once the processes using the mount are SIGKILLed, so they can
exit), `cut` (unmount, write the durable state, exit 0), `stop` (unmount and
exit, keeping everything: a clean shutdown).

Written in Python (pyfuse3, trio): the model is a few dictionaries, every
handler runs to completion on one thread (trio switches tasks only at
`await`, and handlers await only at the power gate), so there are no locks to
review, and the unit tests (test_powercutfs.py) drive it through the kernel.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import stat
import sys
from typing import Optional

import pyfuse3
import trio

# Attributes and names may be cached by the kernel this long: every change
# goes through this mount, so the kernel's cache never goes stale.
CACHE_SECS = 1.0


class Node:
    """One file or folder, with its live place in the tree and what of it
    is durable."""

    def __init__(self, ino: int, is_dir: bool, parent: Optional[int], name: Optional[bytes], mode: int):
        self.ino = ino
        self.is_dir = is_dir
        # Live position; `name` is None once unlinked (an open file lives on).
        self.parent = parent
        self.name = name
        # Folders: live entries, and the entries as of the last fsync (None:
        # never fsynced, so empty on disk).
        self.children: dict[bytes, int] = {}
        self.durable_entries: Optional[dict[bytes, int]] = None
        # Files: open descriptors on the backing file, and whether the live
        # contents still equal the durable ones (`clean`). When they differ,
        # the durable contents are kept in the store (absent there: empty).
        self.fds: set[int] = set()
        self.clean = True
        # Permission bits: the ones given at creation, then as of each fsync;
        # times (atime, mtime in ns) as of the last fsync (None: the live ones
        # while clean, else the time of the first change).
        self.durable_mode = stat.S_IMODE(mode)
        self.durable_times: Optional[tuple[int, int]] = None


class Disk:
    """The live tree over the backing folder and the durable state beside it.
    No FUSE here: the mount (PowerCutFS) calls these with kernel requests,
    and the unit tests can call them directly."""

    def __init__(self, backing: str, store: str):
        self.backing = os.fsencode(os.path.abspath(backing))
        self.store = os.fsencode(os.path.abspath(store))
        os.makedirs(self.store, exist_ok=True)
        self.nodes: dict[int, Node] = {}
        self.next_ino = pyfuse3.ROOT_INODE + 1
        root = Node(pyfuse3.ROOT_INODE, True, None, b"", os.lstat(self.backing).st_mode)
        self.nodes[root.ino] = root
        # At mount the backing folder is what the disk holds: all durable.
        self._adopt(root, self.backing)

    def _adopt(self, folder: Node, path: bytes) -> None:
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            st = entry.stat(follow_symlinks=False)
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise SystemExit(f"powercutfs: {entry.path!r} is neither a file nor a folder")
            node = self._new(folder, entry.name, stat.S_ISDIR(st.st_mode), st.st_mode)
            if node.is_dir:
                self._adopt(node, entry.path)
        folder.durable_entries = dict(folder.children)

    def _new(self, parent: Node, name: bytes, is_dir: bool, mode: int) -> Node:
        node = Node(self.next_ino, is_dir, parent.ino, name, mode)
        self.next_ino += 1
        self.nodes[node.ino] = node
        parent.children[name] = node.ino
        return node

    # ------------------------------------------------------------ live paths

    def node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise OSError(errno.ENOENT, "no such inode") from None

    @staticmethod
    def linked(node: Node) -> bool:
        """Whether the node still has a name (the root always has)."""
        return node.ino == pyfuse3.ROOT_INODE or node.name is not None

    def path(self, node: Node) -> bytes:
        """The backing path of a node that is still linked."""
        if not self.linked(node):
            raise OSError(errno.ENOENT, "unlinked")
        parts = []
        while node.ino != pyfuse3.ROOT_INODE:
            parts.append(node.name)
            node = self.nodes[node.parent]
        return os.path.join(self.backing, *reversed(parts))

    def child(self, parent_ino: int, name: bytes) -> Node:
        parent = self.node(parent_ino)
        if not parent.is_dir:
            raise OSError(errno.ENOTDIR, "not a folder")
        ino = parent.children.get(name)
        if ino is None:
            raise OSError(errno.ENOENT, "no such entry")
        return self.nodes[ino]

    def stat(self, node: Node) -> os.stat_result:
        if self.linked(node):
            return os.lstat(self.path(node))
        for fd in node.fds:
            return os.fstat(fd)
        raise OSError(errno.ENOENT, "unlinked and closed")

    # ------------------------------------------------------------ durability

    def _stored(self, node: Node) -> bytes:
        return os.path.join(self.store, str(node.ino).encode())

    def _copy_live(self, node: Node, to: bytes) -> None:
        """Copies the node's live contents (by path, or by an open
        descriptor once unlinked) to `to`."""
        if self.linked(node):
            shutil.copyfile(self.path(node), to)
            return
        fd = next(iter(node.fds))
        with open(to, "wb") as out:
            offset = 0
            while True:
                block = os.pread(fd, 1 << 20, offset)
                if not block:
                    break
                out.write(block)
                offset += len(block)

    def _before_change(self, node: Node) -> None:
        """Called before the live contents change or may vanish: keeps the
        durable contents, which until now were the live ones."""
        if node.is_dir or not node.clean:
            return
        st = self.stat(node)
        node.durable_times = (st.st_atime_ns, st.st_mtime_ns)
        self._copy_live(node, self._stored(node))
        node.clean = False

    def fsync(self, node: Node) -> None:
        """fsync/fdatasync of a file: its contents, mode and times are durable."""
        st = self.stat(node)
        node.durable_mode = stat.S_IMODE(st.st_mode)
        node.durable_times = (st.st_atime_ns, st.st_mtime_ns)
        if node.is_dir:
            self.fsyncdir(node)
            return
        if self.linked(node):
            # Live equals durable now; nothing to keep aside.
            node.clean = True
            try:
                os.unlink(self._stored(node))
            except FileNotFoundError:
                pass
        else:
            # Unlinked: its live contents go with the last descriptor, so
            # keep the durable copy (a name of it may still be on disk).
            self._copy_live(node, self._stored(node))
            node.clean = False

    def fsyncdir(self, node: Node) -> None:
        """fsync of a folder: its entries are durable (not their contents)."""
        node.durable_entries = dict(node.children)
        node.durable_mode = stat.S_IMODE(self.stat(node).st_mode)

    def writeback(self) -> None:
        """Everything becomes durable, as after sync(2) or the kernel's
        write-back once the machine has idled a while."""
        for node in list(self.nodes.values()):
            if node.is_dir:
                if self.linked(node):
                    self.fsyncdir(node)
            elif self.linked(node) or node.fds:
                self.fsync(node)

    # ------------------------------------------------------------ changes

    def create(self, parent_ino: int, name: bytes, mode: int, flags: int) -> tuple[Node, int]:
        parent = self.node(parent_ino)
        if name in parent.children:
            if flags & os.O_EXCL:
                raise OSError(errno.EEXIST, "exists")
            node = self.nodes[parent.children[name]]
            return node, self.open(node, flags)
        fd = os.open(os.path.join(self.path(parent), name), flags | os.O_CREAT | os.O_EXCL, mode)
        node = self._new(parent, name, False, mode)
        node.fds.add(fd)
        return node, fd

    def open(self, node: Node, flags: int) -> int:
        if node.is_dir:
            raise OSError(errno.EISDIR, "is a folder")
        if flags & os.O_TRUNC:
            self._before_change(node)
        fd = os.open(self.path(node), flags & ~(os.O_CREAT | os.O_EXCL))
        node.fds.add(fd)
        return fd

    def close(self, node: Node, fd: int) -> None:
        node.fds.discard(fd)
        os.close(fd)

    def write(self, node: Node, fd: int, offset: int, data: bytes) -> int:
        self._before_change(node)
        return os.pwrite(fd, data, offset)

    def truncate(self, node: Node, size: int, fd: Optional[int]) -> None:
        self._before_change(node)
        if fd is not None:
            os.ftruncate(fd, size)
        else:
            os.truncate(self.path(node), size)

    def mkdir(self, parent_ino: int, name: bytes, mode: int) -> Node:
        parent = self.node(parent_ino)
        if name in parent.children:
            raise OSError(errno.EEXIST, "exists")
        os.mkdir(os.path.join(self.path(parent), name), mode)
        return self._new(parent, name, True, mode | stat.S_IFDIR)

    def _unlink_node(self, parent: Node, name: bytes) -> None:
        """Forgets a live entry whose backing entry is gone or replaced."""
        node = self.nodes[parent.children.pop(name)]
        node.name = None
        node.parent = None

    def unlink(self, parent_ino: int, name: bytes) -> None:
        node = self.child(parent_ino, name)
        if node.is_dir:
            raise OSError(errno.EISDIR, "is a folder")
        # The backing file may vanish now; its durable contents must not.
        self._before_change(node)
        os.unlink(self.path(node))
        self._unlink_node(self.node(parent_ino), name)

    def rmdir(self, parent_ino: int, name: bytes) -> None:
        node = self.child(parent_ino, name)
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, "not a folder")
        os.rmdir(self.path(node))
        self._unlink_node(self.node(parent_ino), name)

    def rename(self, old_ino: int, old: bytes, new_ino: int, new: bytes, noreplace: bool) -> None:
        node = self.child(old_ino, old)
        new_parent = self.node(new_ino)
        replaced = new_parent.children.get(new)
        if replaced == node.ino:
            return
        if replaced is not None and noreplace:
            raise OSError(errno.EEXIST, "exists")
        source = self.path(node)
        target = os.path.join(self.path(new_parent), new)
        if replaced is not None:
            # The replaced file's backing contents vanish with the rename.
            self._before_change(self.nodes[replaced])
        os.rename(source, target)
        if replaced is not None:
            self._unlink_node(new_parent, new)
        del self.node(old_ino).children[old]
        new_parent.children[new] = node.ino
        node.parent = new_ino
        node.name = new

    # ------------------------------------------------------------ the cut

    def _write_durable(self, folder: Node, target: bytes, open_dirs: set[int]) -> None:
        os.chmod(target, folder.durable_mode)
        open_dirs.add(folder.ino)
        for name, ino in sorted((folder.durable_entries or {}).items()):
            node = self.nodes[ino]
            path = os.path.join(target, name)
            if node.is_dir:
                # Each folder's entries are durable on their own, so a folder
                # moved into its own durable child could form a loop.
                if node.ino in open_dirs:
                    continue
                os.mkdir(path)
                self._write_durable(node, path, open_dirs)
            else:
                times = node.durable_times
                if node.clean:
                    self._copy_live(node, path)
                    st = self.stat(node)
                    times = (st.st_atime_ns, st.st_mtime_ns)
                elif os.path.exists(self._stored(node)):
                    shutil.copyfile(self._stored(node), path)
                else:
                    open(path, "wb").close()
                os.chmod(path, node.durable_mode)
                if times is not None:
                    # A file's age outlives a power cut (stale-lock checks read it).
                    os.utime(path, ns=times)
        open_dirs.discard(folder.ino)

    def cut(self) -> None:
        """Replaces the backing folder's contents with the durable state.
        Call only when nothing uses the files (after unmounting)."""
        staging = self.backing + b".cut"
        old = self.backing + b".old"
        for leftover in (staging, old):
            shutil.rmtree(leftover, ignore_errors=True)
        os.mkdir(staging)
        self._write_durable(self.nodes[pyfuse3.ROOT_INODE], staging, set())
        os.rename(self.backing, old)
        os.rename(staging, self.backing)
        shutil.rmtree(old)
        shutil.rmtree(self.store, ignore_errors=True)


def oserror_to_fuse(fn):
    """Handlers raise OSError like the calls they pass through; FUSE wants
    FUSEError with the same errno."""

    async def wrapper(self, *args, **kwargs):
        try:
            return await fn(self, *args, **kwargs)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    wrapper.__name__ = fn.__name__
    return wrapper


class PowerCutFS(pyfuse3.Operations):
    """The kernel's requests, each first through the power gate, then to Disk."""

    enable_writeback_cache = False  # every write reaches us, one by one

    def __init__(self, disk: Disk):
        super().__init__()
        self.disk = disk
        self.ops = 0
        self.freeze_at: Optional[int] = None
        self.frozen = trio.Event()
        self.released = trio.Event()
        self.fh_node: dict[int, Node] = {}
        # "cut" or "stop", once the control socket said which.
        self.outcome: Optional[str] = None

    def freeze(self) -> None:
        if not self.frozen.is_set():
            self.frozen.set()

    async def gate(self, mutating: bool) -> None:
        """Counts mutating calls; once the power is off, waits for `release`
        and then fails, so nothing more reaches the disk."""
        if mutating and not self.frozen.is_set():
            self.ops += 1
            if self.freeze_at is not None and self.ops >= self.freeze_at:
                self.freeze()
        if self.frozen.is_set():
            await self.released.wait()
            raise pyfuse3.FUSEError(errno.EIO)

    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        st = self.disk.stat(node)
        entry = pyfuse3.EntryAttributes()
        for field in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                      "st_blksize", "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
            setattr(entry, field, getattr(st, field))
        entry.st_ino = node.ino
        entry.generation = 0
        entry.entry_timeout = CACHE_SECS
        entry.attr_timeout = CACHE_SECS
        return entry

    @oserror_to_fuse
    async def lookup(self, parent_inode, name, ctx=None):
        await self.gate(False)
        return self.attrs(self.disk.child(parent_inode, name))

    async def forget(self, inode_list):
        # Nodes are kept for the life of the mount: the model needs them.
        pass

    @oserror_to_fuse
    async def getattr(self, inode, ctx=None):
        await self.gate(False)
        return self.attrs(self.disk.node(inode))

    @oserror_to_fuse
    async def setattr(self, inode, attr, fields, fh, ctx):
        changes = fields.update_size or fields.update_mode or fields.update_uid or fields.update_gid
        await self.gate(bool(changes))
        node = self.disk.node(inode)
        fd = fh if fh is not None and fh in self.fh_node else None
        if fields.update_size:
            self.disk.truncate(node, attr.st_size, fd)
        path = self.disk.path(node) if self.disk.linked(node) else None
        if fields.update_mode:
            os.chmod(path if path is not None else fd, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            os.chown(path if path is not None else fd, uid, gid)
        if fields.update_atime or fields.update_mtime:
            st = self.disk.stat(node)
            atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            os.utime(path if path is not None else fd, ns=(atime, mtime))
        return self.attrs(node)

    @oserror_to_fuse
    async def open(self, inode, flags, ctx):
        await self.gate(bool(flags & os.O_TRUNC))
        node = self.disk.node(inode)
        fd = self.disk.open(node, flags)
        self.fh_node[fd] = node
        return pyfuse3.FileInfo(fh=fd)

    @oserror_to_fuse
    async def create(self, parent_inode, name, mode, flags, ctx):
        await self.gate(True)
        node, fd = self.disk.create(parent_inode, name, mode, flags)
        self.fh_node[fd] = node
        return pyfuse3.FileInfo(fh=fd), self.attrs(node)

    @oserror_to_fuse
    async def read(self, fh, off, size):
        await self.gate(False)
        return os.pread(fh, size, off)

    @oserror_to_fuse
    async def write(self, fh, off, buf):
        await self.gate(True)
        return self.disk.write(self.fh_node[fh], fh, off, buf)

    async def flush(self, fh):
        pass

    async def release(self, fh):
        # Always honoured, even without power: a dying process closes its files.
        self.disk.close(self.fh_node.pop(fh), fh)

    @oserror_to_fuse
    async def fsync(self, fh, datasync):
        await self.gate(True)
        self.disk.fsync(self.fh_node[fh])

    @oserror_to_fuse
    async def opendir(self, inode, ctx):
        await self.gate(False)
        node = self.disk.node(inode)
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, "not a folder")
        return inode

    @oserror_to_fuse
    async def readdir(self, fh, start_id, token):
        await self.gate(False)
        folder = self.disk.node(fh)
        names = sorted(folder.children)
        for index in range(start_id, len(names)):
            child = self.disk.nodes[folder.children[names[index]]]
            if not pyfuse3.readdir_reply(token, names[index], self.attrs(child), index + 1):
                break

    async def releasedir(self, fh):
        pass

    @oserror_to_fuse
    async def fsyncdir(self, fh, datasync):
        await self.gate(True)
        self.disk.fsyncdir(self.disk.node(fh))

    @oserror_to_fuse
    async def mkdir(self, parent_inode, name, mode, ctx):
        await self.gate(True)
        return self.attrs(self.disk.mkdir(parent_inode, name, mode))

    @oserror_to_fuse
    async def unlink(self, parent_inode, name, ctx):
        await self.gate(True)
        self.disk.unlink(parent_inode, name)

    @oserror_to_fuse
    async def rmdir(self, parent_inode, name, ctx):
        await self.gate(True)
        self.disk.rmdir(parent_inode, name)

    @oserror_to_fuse
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self.gate(True)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise OSError(errno.EINVAL, "RENAME_EXCHANGE is not modelled")
        noreplace = bool(flags & pyfuse3.RENAME_NOREPLACE)
        self.disk.rename(parent_inode_old, name_old, parent_inode_new, name_new, noreplace)

    @oserror_to_fuse
    async def statfs(self, ctx):
        await self.gate(False)
        st = os.statvfs(self.disk.backing)
        out = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                      "f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(out, field, getattr(st, field))
        return out

    async def link(self, inode, new_parent_inode, new_name, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)  # hard links are not modelled

    async def symlink(self, parent_inode, name, target, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)  # nor symbolic links

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)


async def control(fs: PowerCutFS, path: str, done: trio.Event) -> None:
    """Serves the control socket (see the module doc), each connection on
    its own task, until `cut` or `stop`; then ends the FUSE main loop."""
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await listener.bind(path)
    listener.listen()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_until_done, listener, fs, done, nursery)
        await done.wait()
        nursery.cancel_scope.cancel()
    pyfuse3.terminate()


async def serve_until_done(listener, fs: PowerCutFS, done: trio.Event, nursery) -> None:
    while True:
        conn, _ = await listener.accept()
        nursery.start_soon(serve_connection, conn, fs, done)


async def serve_connection(conn, fs: PowerCutFS, done: trio.Event) -> None:
    with conn:
        buffered = b""
        while True:
            data = await conn.recv(4096)
            if not data:
                return
            buffered += data
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                words = line.decode().split()
                if words == ["wait"]:
                    await fs.frozen.wait()
                answer = command(fs, words)
                await conn.send((answer + "\n").encode())
                if fs.outcome is not None:
                    done.set()  # only now: the answer has gone out


def command(fs: PowerCutFS, words: list[str]) -> str:
    match words:
        case ["ops"]:
            return str(fs.ops)
        case ["arm", count]:
            fs.freeze_at = fs.ops + max(1, int(count))
            return "ok"
        case ["disarm"]:
            fs.freeze_at = None
            return "ok"
        case ["freeze"]:
            fs.freeze()
            return "ok"
        case ["writeback"]:
            if fs.frozen.is_set():
                return "error: the power is off"
            fs.disk.writeback()
            return "ok"
        case ["status"] | ["wait"]:
            return "frozen" if fs.frozen.is_set() else "running"
        case ["release"]:
            fs.freeze()
            fs.released.set()
            return "ok"
        case ["cut" | "stop" as what]:
            if fs.outcome is None:
                fs.outcome = what
            return "ok"
    return f"error: unknown command {' '.join(words)!r}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backing", help="folder whose contents the mount shows")
    parser.add_argument("mountpoint")
    parser.add_argument("--control", required=True, help="Unix socket for commands")
    parser.add_argument("--store", help="where durable contents are kept (default: BACKING.durable)")
    args = parser.parse_args()
    # The kernel already applied the caller's umask to modes it passes on.
    os.umask(0)
    disk = Disk(args.backing, args.store or args.backing.rstrip("/") + ".durable")
    fs = PowerCutFS(disk)
    options = set(pyfuse3.default_options)
    options.add("fsname=powercutfs")
    pyfuse3.init(fs, args.mountpoint, options)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(control, fs, args.control, trio.Event())
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    try:
        print("powercutfs: mounted", flush=True)
        trio.run(run)
    finally:
        pyfuse3.close(unmount=True)
    if fs.outcome == "cut":
        disk.cut()
        print(f"powercutfs: cut after {fs.ops} mutating calls", flush=True)
    else:
        shutil.rmtree(disk.store, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
