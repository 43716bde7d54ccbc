"""What the host does with its block devices and device nodes, read to prove a device idle.

A block device is *idle* when neither it nor any of its partitions is mounted (in any mount
namespace), used as swap, held by another block device (``holders/``: device-mapper, LVM, md,
bcache, dm-crypt), a member of a btrfs filesystem, or open by a process, and no other block
device with its world-wide id (the same disk through another controller) is in use. Open device nodes
are read from every process's ``/proc/PID/fd`` and its threads' ``/proc/PID/task/TID/fd`` (a
thread that did ``unshare(CLONE_FILES)`` has files of its own; their type from the kernel's
cache, so no file server is waited on); one that cannot be read, a mount
namespace whose mounts cannot be read (``mountinfo``), an unreadable ``/proc/swaps`` or
``/proc/consoles``, a local filesystem whose disk cannot be told and a
loaded ZFS (whose pools hold disks with none of the above) make every device unproven:
:attr:`StorageView.problems` (ZFS, automount points whose disk shows only once mounted, and
unmapped filesystems: :attr:`StorageView.unmapped`, which an inventory may clear per
controller with ``no_host_filesystems = true``).

    >>> view = StorageView.read(Sysfs("/"))              # doctest: +SKIP
    >>> view.use_of_block("sdb")
    []
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import gzip
import os
import platform
import queue
import re
import stat
import threading
import time
from pathlib import Path
from typing import NamedTuple

from harness.host.sysfs import Sysfs, kernel_params

#: Mounts that never sit on a device of their own.
_NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "ceph", "glusterfs", "9p", "virtiofs"}
#: Local filesystems on pools whose disks sysfs does not link to the mount.
_POOL_FS = {"zfs"}
#: An automount point (fstab ``x-systemd.automount``, autofs maps): what it will mount, and
#: from which disk, shows only once something opens a path below it.
_AUTOMOUNT_FS = {"autofs"}
#: systemd's automount of the kernel's binfmt_misc filesystem (no disk): on most hosts.
_VIRTUAL_AUTOMOUNTS = {"/proc/sys/fs/binfmt_misc"}


class Mount(NamedTuple):
    source: str             # /dev/sda2, rpool/ROOT/debian
    mountpoint: str         # "swap" for a swap partition
    fstype: str
    majmin: str | None      # from mountinfo: resolves even /dev/root


def unescape_mountinfo(field: str) -> str:
    """A path field of mountinfo (or /proc/mounts) as it is."""
    # /proc/mounts writes space, tab, newline and backslash as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def kernel_lines(text: str) -> list[str]:
    """The lines of a file the kernel writes with ``\\n`` escaped in names (mountinfo, maps,
    fdinfo): split on ``\\n`` alone; ``str.splitlines`` also splits on ``\\r``, U+2028 and
    others, which a name may hold unescaped."""
    return [line for line in text.split("\n") if line]


def _parse_mountinfo(text: str) -> list[Mount]:
    out = []
    for line in kernel_lines(text):
        head, _, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if len(fields) >= 5 and len(rest) >= 2:
            out.append(Mount(unescape_mountinfo(rest[1]), unescape_mountinfo(fields[4]), rest[0],
                             fields[2]))
    return out


#: Seconds all mount namespaces' ``mountinfo`` may take to read in one :func:`mountinfos`:
#: the kernel's cost of that file grows with the square of how deep mounts are stacked, and
#: any user may stack thousands in a namespace of theirs (20000 took 2.4 s here).
MOUNT_TABLES_BUDGET = 10.0


def mountinfos(fs: Sysfs, problems: list[str], budget: "Budget | None" = None
               ) -> list[tuple[Path, str]]:
    """(a process of it, its ``mountinfo``) for every mount namespace, the harness's own first
    (``self``): a container's mounts are in no other. One that cannot be read is a problem,
    never an empty one (a process that ended meanwhile: gone); so are those past
    :data:`MOUNT_TABLES_BUDGET` (``budget``: that of the read, which what is done with the
    mounts then spends too: :func:`_look_up_mounts`)."""
    seen, out = set(), []
    t0 = time.monotonic()
    deadline = t0 + (MOUNT_TABLES_BUDGET if budget is None else budget.seconds - budget.spent)
    try:
        return _read_tables(fs, problems, seen, out, deadline)
    finally:
        if budget is not None:
            budget.spent += time.monotonic() - t0


def _read_tables(fs: Sysfs, problems: list[str], seen: set, out: list, deadline: float
                 ) -> list[tuple[Path, str]]:
    """:func:`mountinfos`' reading, until ``deadline``."""
    for proc in [fs.proc("self")] + sorted(fs.proc().glob("[0-9]*")):
        try:
            ns = os.readlink(proc / "ns" / "mnt")
        except FileNotFoundError:
            ns = "self" if proc.name == "self" else "gone"
        except OSError as e:
            if not _ended(proc):
                problems.append(f"the mount namespace of pid {proc.name} cannot be read "
                                f"({e.strerror}): run as root")
            continue
        if ns == "gone" or ns in seen:
            continue
        seen.add(ns)
        try:
            text = call_within(lambda: fs.read(proc / "mountinfo"),
                               max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            problems.append(f"the mount tables took more than {MOUNT_TABLES_BUDGET:g} s to read "
                            f"(pid {proc.name}'s mount namespace {ns} was the one read then; "
                            "a namespace with mounts stacked thousands deep is that slow): "
                            "what is mounted in it and in the namespaces after it is unknown")
            break
        if text is None:
            if proc.name == "self" or not _ended(proc):
                problems.append(f"/proc/{proc.name}/mountinfo cannot be read: what is mounted "
                                "there is unknown")
            continue
        out.append((proc, text))
    return out


def thread_tables(fs: Sysfs, proc: Path, tasks: list[Path], ended: bool | None = None
                  ) -> list[Path]:
    """A process's threads (``tasks``, its main thread left out) whose fd table is to be read
    besides its own: those ``kcmp`` does not find sharing it (a thread that did
    ``unshare(CLONE_FILES)``). A zombie leader (its main thread ended: ``pthread_exit``;
    ``ended``, when the caller has read it already) has no table: its first live thread's
    stands for it, read first."""
    ref, first = proc.name, []
    if ended is None:
        ended = bool(tasks) and fs.real_host and _ended_leader(proc)
    if tasks and ended:
        ref, first, tasks = tasks[0].name, tasks[:1], tasks[1:]
    return first + [t for t in tasks if not (fs.real_host and _same_files(ref, t.name))]


def _state(proc: Path) -> str:
    """A process's state letter (``R``, ``S``, ``Z``...) from its ``stat``, read as bytes: the
    name before it is any bytes its process chose. Raises OSError or IndexError."""
    return (proc / "stat").read_bytes().rsplit(b")", 1)[1].split()[0].decode("ascii", "replace")


def _ended_leader(proc: Path) -> bool:
    """Whether a process's main thread has ended (a zombie leader; its threads may live on)."""
    try:
        return _state(proc) in ("Z", "X")
    except (OSError, IndexError):
        return False


def _ended(proc: Path) -> bool:
    """Whether a process ended while it was read: reaped (its /proc folder gone), or a zombie
    with no other thread (it holds no namespace any more; a zombie leader's live threads
    still do)."""
    try:
        state = _state(proc)
        threads = [t for t in (proc / "task").iterdir() if t.name != proc.name]
    except (OSError, IndexError):
        return not proc.exists()
    return state in ("Z", "X") and not threads


def remote_mount_ids(infos: list[tuple[Path, str]]) -> dict[str, bool]:
    """The mount ids of network and FUSE filesystems, each with whether it is ``nodev``: a
    ``stat`` of a file there may block for as long as its server does not answer, and a
    device node there is a device only where the mount lets it be (root's mounts may)."""
    out = {}
    for _, text in infos:
        for line in kernel_lines(text):
            fstype = line.partition(" - ")[2].split()[:1]
            if fstype and (fstype[0] in _NETWORK_FS or fstype[0].startswith("fuse")):
                fields = line.split(" ")
                out[fields[0]] = len(fields) > 5 and "nodev" in fields[5].split(",")
    return out


def mount_ids(infos: list[tuple[Path, str]]) -> set[str]:
    """The ids of every mount of every mount namespace: an open file whose mount id is in none
    sits on a mount that was detached (``umount -l``) while the file stayed open."""
    return {line.split(maxsplit=1)[0] for _, text in infos for line in kernel_lines(text)
            if line.strip()}


def _mounts(fs: Sysfs, infos: list[tuple[Path, str]], problems: list[str]) -> list[Mount]:
    """The mounts of every mount namespace (``infos``: :func:`mountinfos`), and swap."""
    out = [m for _, text in infos for m in _parse_mountinfo(text)]
    swaps = fs.read(fs.proc("swaps"))
    if swaps is None:
        problems.append("/proc/swaps cannot be read: which disks are swap is unknown")
    for line in (swaps or "").splitlines()[1:]:
        fields = line.split()
        if fields and fields[0].startswith("/dev/"):
            out.append(Mount(unescape_mountinfo(fields[0]), "swap", "swap", None))
    automounts = [m for m in out if m.fstype in _AUTOMOUNT_FS and
                  m.mountpoint not in _VIRTUAL_AUTOMOUNTS]
    return automounts + [m for m in out if m.fstype in _POOL_FS or
                         (m.source.startswith("/dev/") and m.fstype not in _NETWORK_FS)]


def block_name(fs: Sysfs, source: str) -> str | None:
    """The sysfs block name of a /dev path (``/dev/mapper/vg-root`` -> ``dm-0``), or None. The
    path may be any string another user chose (a mount's source): it is looked at only
    inside /dev's own filesystem (:func:`_udev_link`), and one that cannot be looked at is
    None."""
    parts = source[len("/dev/"):].split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    name = _udev_link(fs, parts) or parts[-1]
    try:
        if fs.sys("class", "block", name).exists():
            return name
        if source.startswith("/dev/mapper/"):  # no /dev under root: look the dm name up
            wanted = source[len("/dev/mapper/"):]
            for dm in sorted(fs.sys("class", "block").glob("dm-*")):
                if fs.read(dm / "dm" / "name") == wanted:
                    return dm.name
    except OSError:  # (a name too long for a path)
        return None
    return None


def _udev_link(fs: Sysfs, parts: list[str]) -> str | None:
    """The node a /dev link names (``mapper/x``, ``disk/by-uuid/y`` -> ``../dm-0``,
    ``../../sda2``: udev's links are one level, relative, and in /dev's own filesystem), or
    None when ``/dev/<parts>`` is no such link. Each component is looked at on its own and
    the walk never leaves /dev's filesystem (``/dev/shm`` is another user's tmpfs, whose links
    may lead to a file server that does not answer)."""
    here = fs.path("dev")
    try:
        top = os.lstat(here).st_dev
        for i, part in enumerate(parts):
            here = here / part
            st = os.lstat(here)
            if st.st_dev != top:
                return None  # (another filesystem mounted in /dev)
            if stat.S_ISLNK(st.st_mode):
                target = os.path.normpath(os.path.join(here.parent, os.readlink(here)))
                inside = target.startswith(str(fs.path("dev")) + "/")
                return os.path.basename(target) if inside and i == len(parts) - 1 else None
    except OSError:
        return None
    return None


def _claimed(name: str) -> list[str]:
    """Whether the kernel holds ``/dev/<name>`` exclusively (a mount, swap, md, dm, ZFS, DRBD,
    bcache: an exclusive open then fails with EBUSY), which catches users that leave no other
    trace. The open has no side effect; a node that cannot be opened counts as in use."""
    try:
        fd = os.open(f"/dev/{name}", os.O_RDONLY | os.O_EXCL | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENOMEDIUM:  # an empty drive: nothing on it to use
            return []
        if e.errno == errno.EBUSY:
            return [f"{name} is claimed by the kernel (an exclusive open of /dev/{name} says "
                    "busy: mounted, swap, or part of md, dm, ZFS, DRBD...)"]
        return [f"{name} cannot be checked: opening /dev/{name} failed ({e.strerror})"]
    os.close(fd)
    return []


_AT_FDCWD = -100
_AT_STATX_DONT_SYNC = 0x4000
_STATX_TYPE = 0x1
_STATX_INO = 0x100
#: How long the type of a file on a detached mount is waited for (seconds).
DETACHED_STAT_TIMEOUT = 5.0


_LIBC = ctypes.CDLL(None, use_errno=True)


def _libc_statx():
    try:
        fn = _LIBC.statx
    except AttributeError:
        return None  # a C library older than glibc 2.28: os.stat
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    return fn


_statx = _libc_statx()


def node_type(path: str) -> tuple[int, int]:
    """(``st_mode``, ``st_rdev``) of what ``path`` leads to, from what the kernel has cached
    (``statx`` with ``AT_STATX_DONT_SYNC``): a FUSE, NFS or CIFS file is not asked of its
    server, which may never answer. A file's type and device number never change, so the
    cached ones are the truth. Raises OSError."""
    if _statx is None:
        st = os.stat(path)
        return st.st_mode, st.st_rdev
    raw = _statx_cached(path, _STATX_TYPE)
    mode = int.from_bytes(raw[28:30], "little")
    major, minor = (int.from_bytes(raw[i:i + 4], "little") for i in (128, 132))
    return mode, os.makedev(major, minor)


def cached_identity(path: str) -> tuple[int, int]:
    """(``st_dev``, ``st_ino``) of what ``path`` leads to, from the kernel's cache as
    :func:`node_type`. Raises OSError."""
    if _statx is None:
        st = os.stat(path)
        return st.st_dev, st.st_ino
    raw = _statx_cached(path, _STATX_INO)
    major, minor = (int.from_bytes(raw[i:i + 4], "little") for i in (136, 140))
    return os.makedev(major, minor), int.from_bytes(raw[32:40], "little")


def cached_inode(path: str) -> int:
    """The inode number of what ``path`` leads to, from the kernel's cache as
    :func:`node_type`. Raises OSError."""
    if _statx is None:
        return os.stat(path).st_ino
    return int.from_bytes(_statx_cached(path, _STATX_INO)[32:40], "little")


def _statx_cached(path: str, mask: int) -> bytes:
    buf = ctypes.create_string_buffer(256)  # struct statx
    if _statx(_AT_FDCWD, os.fsencode(path), _AT_STATX_DONT_SYNC, mask, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return buf.raw


def call_within(look, timeout: float, late=None):
    """``look()`` in a daemon thread, given up after ``timeout`` seconds: TimeoutError (the
    thread stays blocked in the kernel, on a file server that never answers, until the
    harness exits). A value that comes after that is handed to ``late`` (to close an fd)."""
    box: dict = {}
    lock = threading.Lock()

    def run() -> None:
        try:
            value = look()
        except BaseException as e:  # noqa: BLE001 (handed to the caller)
            with lock:
                box["error"] = e
            return
        with lock:
            if "given up" not in box:
                box["value"] = value
            elif late is not None:
                late(value)

    thread = threading.Thread(target=run, name="hh-bounded-lookup", daemon=True)
    thread.start()
    thread.join(timeout)
    with lock:
        if "error" in box:
            raise box["error"]
        if "value" in box:
            return box["value"]
        box["given up"] = True
    raise TimeoutError(f"no answer in {timeout:g} s")


#: The anonymous files of a GPIO line request: ``gpio-line`` (the chardev's v2 ABI),
#: ``gpio-linehandle`` and ``gpio-event`` (v1).
_GPIO_REQUESTS = {"anon_inode:gpio-line", "anon_inode:gpio-linehandle", "anon_inode:gpio-event"}


def _read_jobs(jobs: "queue.SimpleQueue") -> None:
    """:meth:`Lookups.read`'s worker: reads each (path, box, done) it is given, until None."""
    while (job := jobs.get()) is not None:
        path, box, done, limit = job
        try:
            with open(path, "rb") as f:
                box["value"] = f.read() if limit is None else f.read(limit + 1)
        except OSError as e:
            box["error"] = e
        done.set()


class NotLookedAt(TimeoutError):
    """A lookup :class:`Lookups` did not make: an earlier one of the same read did not answer."""


class Lookups:
    """The bounded lookups of one read of the host, of paths other users chose (a file an
    io_uring registered, a loop's backing file, a file kept open on a detached mount): each
    waits :data:`DETACHED_STAT_TIMEOUT` seconds at most, and once one has not answered, no
    other is made: the read has failed closed already, and a user with a thousand files on a
    server that does not answer would otherwise make it take hours. ``silent``: the first
    that did not answer; ``skipped``: how many were not made after it."""

    def __init__(self) -> None:
        self.silent: str | None = None
        self.skipped = 0
        self._jobs: "queue.SimpleQueue | None" = None

    def read(self, path: Path, what: str, limit: int | None = None) -> bytes:
        """``path``'s bytes, bounded as :meth:`within` is, through one worker thread kept for
        the read (a thread each would cost more than most reads: ``/proc/PID/maps`` of every
        process, which waits for that process's memory lock, and another user's thread can
        hold it while it faults on a file server that does not answer). ``limit``: at most
        that many bytes, and one more to tell a longer file. Raises OSError, TimeoutError or
        NotLookedAt. :meth:`close` ends the worker."""
        if self.silent is not None:
            self.skipped += 1
            raise NotLookedAt(f"not looked at: {self.silent} did not answer before")
        if self._jobs is None:
            self._jobs = queue.SimpleQueue()
            threading.Thread(target=_read_jobs, args=(self._jobs,), name="hh-bounded-read",
                             daemon=True).start()
        box: dict = {}
        done = threading.Event()
        self._jobs.put((path, box, done, limit))
        if not done.wait(DETACHED_STAT_TIMEOUT):
            self.silent, self._jobs = what, None  # (its worker stays blocked; none is made again)
            raise TimeoutError(f"no answer in {DETACHED_STAT_TIMEOUT:g} s")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def close(self) -> None:
        if self._jobs is not None:
            self._jobs.put(None)
            self._jobs = None

    def node_type(self, path: str, what: str) -> tuple[int, int]:
        """:func:`node_type` of ``path`` (``what`` names it in a problem), bounded; raises
        OSError, TimeoutError, or NotLookedAt."""
        return self.within(lambda: node_type(path), what)

    def within(self, look, what: str):
        if self.silent is not None:
            self.skipped += 1
            raise NotLookedAt(f"not looked at: {self.silent} did not answer before")
        try:
            return call_within(look, DETACHED_STAT_TIMEOUT)
        except TimeoutError:
            self.silent = what
            raise

    def problems(self) -> list[str]:
        return [f"{self.skipped} more file(s) that other processes use were not looked at, "
                f"after {self.silent} did not answer in {DETACHED_STAT_TIMEOUT:g} s: which "
                "devices they are is unknown"] if self.skipped else []


#: How many threads of one process with fd tables of their own are read; more is a problem
#: (a user could make every read of the host take hours with thousands of copies).
MAX_OWN_TABLES = 8
#: kcmp(2)'s number (x86-64, arm64, riscv64, ppc64, s390x), and its KCMP_FILES.
_KCMP = {"x86_64": 312, "aarch64": 272, "riscv64": 272, "loongarch64": 272, "ppc64le": 354,
         "ppc64": 354, "ppc": 354, "s390x": 343, "i386": 349, "i486": 349, "i586": 349,
         "i686": 349, "armv6l": 378, "armv7l": 378, "armv8l": 378}.get(platform.machine())
_KCMP_FILES = 2
#: Where ``kcmp`` cannot be asked (a machine the table above does not name, a kernel built
#: without it), which threads share a table cannot be told: each thread's table is read, up
#: to this many fds in all in one read (past it, the rest are a problem).
MAX_UNCOMPARED_FDS = 20_000


def _same(pid1, pid2, kind: int, fd1: int = 0, fd2: int = 0) -> bool:
    """``kcmp``'s "the same": False when it says otherwise or cannot be asked."""
    return _KCMP is not None and _LIBC.syscall(_KCMP, int(pid1), int(pid2), kind, fd1, fd2) == 0


def _same_files(pid: str, tid: str) -> bool:
    """Whether thread ``tid`` shares its process's table of open files (``kcmp``; threads do,
    unless they did ``unshare(CLONE_FILES)``). False when it cannot be told: then it is read."""
    return _same(pid, tid, _KCMP_FILES)


def kcmp_answers() -> bool:
    """Whether ``kcmp`` tells tables apart here (its number known, the kernel built with it)."""
    return _same(os.getpid(), os.getpid(), _KCMP_FILES)


def tables_budget(fs: Sysfs) -> "list[int] | None":
    """A new budget for :func:`tables_within`: None where ``kcmp`` tells tables apart (or in
    a test's fake tree), else :data:`MAX_UNCOMPARED_FDS` to spend in one read."""
    return None if not fs.real_host or kcmp_answers() else [MAX_UNCOMPARED_FDS]


def tables_within(own: list[Path], who: tuple[int, str], budget: "list[int] | None"
                  ) -> tuple[list[Path], str | None]:
    """Which of a process's threads' own tables (:func:`thread_tables`) to read, and the
    problem of those left. ``budget``: None where kcmp told them apart (a table of its own is
    one the thread made: past :data:`MAX_OWN_TABLES`, the rest are left); else the fds still
    to be read in this read (:data:`MAX_UNCOMPARED_FDS`), spent here."""
    if budget is None:
        return own[:MAX_OWN_TABLES], (
            f"pid {who[0]} ({who[1]}) has {len(own)} threads with fd tables of their own "
            f"(unshare(CLONE_FILES)); only {MAX_OWN_TABLES} were read: which files the others "
            "hold is unknown") if len(own) > MAX_OWN_TABLES else None
    for n, task in enumerate(own):
        try:
            count = len(os.listdir(task / "fd"))
        except OSError:
            count = 0  # (gone; or unreadable, which reading it says)
        if count > budget[0]:
            return own[:n], (
                f"kcmp cannot be asked here ({platform.machine()}, or a kernel without "
                f"CONFIG_KCMP): which threads share a table of open files cannot be told, so "
                f"each thread's is read, up to {MAX_UNCOMPARED_FDS} fds in all; {len(own) - n} "
                f"threads of pid {who[0]} ({who[1]}) were past it: which files they hold is "
                "unknown")
        budget[0] -= count
    return own, None


#: The names of a PCI function's files through which a process reaches the device itself:
#: sysfs BARs, config space, ROM, p2pmem's ``allocate``, and its /proc/bus/pci file
#: (``03.0``). Open or mapped through another mount of sysfs or procfs (a container's
#: /host/sys), they are found by name and inode (:func:`pci_file_holders`).
_PCI_FILE_NAME = re.compile(r"resource\d+(?:_wc)?|config|rom|allocate|[0-9a-f]{2}\.[0-7]")


class Budget:
    """The seconds one kind of reading may take in all, in one read of the host, counted only
    while that kind reads (the time other kinds take is not its: a host with many fds must not
    leave its maps unread), and how many were left unread past it."""

    def __init__(self, seconds: float):
        self.seconds, self.spent, self.left_out = seconds, 0.0, 0

    def allows(self) -> bool:
        if self.spent >= self.seconds:
            self.left_out += 1
            return False
        return True

    @contextlib.contextmanager
    def timing(self):
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.spent += time.monotonic() - t0


def _ring_info(opened: "OpenFiles", fd: Path, who: tuple[int, str]) -> str | None:
    """A ring's fdinfo, through the bounded reader, all rings within :data:`RINGS_BUDGET`
    and :data:`MAX_RING_BYTES` each (the kernel renders a ring's whole table of files in
    one pass, and a user chooses how large it is); None, counted, past either."""
    info = fd.parent.parent / "fdinfo" / fd.name
    if not opened._rings.allows():
        return None
    try:
        with opened._rings.timing():
            data = opened.lookups.read(info, f"the io_uring of pid {who[0]} ({who[1]})",
                                       MAX_RING_BYTES)
    except (FileNotFoundError, ProcessLookupError, NotLookedAt):
        return ""  # (closed since; or counted by the lookups)
    except (OSError, TimeoutError):
        opened._rings.left_out += 1
        return None
    if len(data) > MAX_RING_BYTES:
        opened._rings.left_out += 1
        return None
    return os.fsdecode(data)


def _registered(info: str) -> list[str]:
    """The files listed after an io_uring fdinfo's ``UserFiles:`` line, one per line as
    ``%5u: path`` (a slot of five digits or more has no space before it), until the next
    header; a path's newline is escaped (``\\012``)."""
    lines = info.split("\n")  # (not splitlines: \r, U+2028... are in names unescaped)
    start = next((i for i, line in enumerate(lines) if line.startswith("UserFiles:")), None)
    if start is None:
        return []
    files = []
    for line in lines[start + 1:]:
        m = re.fullmatch(r"\s*\d+: (.*)", line)
        if not m:
            break
        files.append(m[1])
    return files


#: What a registered slot may print that is no file of a folder: an empty slot, and (before
#: Linux 6.14, which prints the name alone) a socket's or pipe's empty name or an anonymous
#: inode's ``[eventfd]``; from 6.14, ``anon_inode:[...]``, ``socket:[N]``, ``pipe:[N]``.
_NOT_A_FOLDERS_FILE = re.compile(r"|<none>|\[.*\]|(anon_inode|socket|pipe):.*")


def _names_alone(opened: "OpenFiles", files: list[str], who: tuple[int, str]) -> None:
    """Registered files a kernel before 6.14 names without their folder (``sdb``): which file
    each is cannot be told (a disk's node, anywhere), so the ring's holder is a problem."""
    names = sorted({f for f in files if not f.startswith("/")
                    and not _NOT_A_FOLDERS_FILE.fullmatch(f)})
    if names:
        opened.problems.append(
            f"pid {who[0]} ({who[1]}) has an io_uring with registered files this kernel names "
            f"without their folder ({', '.join(map(repr, names[:3]))}"
            f"{' and more' if len(names) > 3 else ''}; Linux 6.14 prints paths): which files "
            "they are cannot be told")


def _node_types(paths: list[str]) -> list:
    """:func:`node_type` of each path, or its OSError (for one bounded lookup of many)."""
    out: list = []
    for path in paths:
        try:
            out.append(node_type(path))
        except OSError as e:
            out.append(e)
    return out


#: Seconds all processes' ``/proc/PID/maps`` may take to read in one read, and the most of
#: one that is read (a user maps one file at a path of 4000 bytes in 65000 pieces: 250 MB).
MAPS_BUDGET = 10.0
#: The same for every io_uring's fdinfo (its registered files), and each one's size.
RINGS_BUDGET = 10.0
MAX_RING_BYTES = 16 << 20
MAX_MAPS_BYTES = 16 << 20
#: The open files one read looks at in all: past this many (a user's forks, each keeping
#: 20000 fds, would make the read take hours), the rest are a problem.
MAX_FDS_READ = 1_000_000
#: ... and the seconds reading them may take in all, in each read (80-180 us an fd on the
#: reference machine under load, so 55,000-125,000 fds; a count alone let a user's million
#: fds take minutes).
FDS_BUDGET = 10.0
#: A process's table of at least this many fds, and with children, is kept while the host is
#: read: a fork's copy of it (a pre-forking server's workers; anyone's loop of ``fork``) is
#: then told by ``kcmp`` and not read again, which any user could otherwise multiply.
FORK_TABLE_MIN = 64
_KCMP_FILE = 0


#: What stands for a path the kernel does not print (too long for its buffer): never looked up.
_UNPRINTED = "<a path the kernel cannot print>"


def _link(fd: Path) -> str | None:
    """What an fd links to; None when it was closed since (or its process ended). A link the
    kernel cannot print (a path longer than PATH_MAX: ENAMETOOLONG) is :data:`_UNPRINTED`
    with its error: the fd is still looked at, through the magic link, which leads to the
    file whatever its path."""
    try:
        return os.readlink(fd)
    except (FileNotFoundError, ProcessLookupError):
        return None  # (closed since)
    except OSError as e:
        return f"{_UNPRINTED} ({e.strerror})"


def _has_children(proc: Path) -> bool:
    """Whether a process has children (``task/TID/children`` of any thread: a child is listed
    under the thread that forked it); True when that cannot be read."""
    try:
        return any((task / "children").read_bytes().strip() for task in (proc / "task").iterdir())
    except OSError:
        return True


def _parent_table(proc: Path, tables: dict) -> "tuple[int, dict] | None":
    """(its parent's pid, the parent's table of fd -> link) when that table was kept."""
    try:
        ppid = int((proc / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return (ppid, tables[ppid]) if ppid in tables else None


def _copied(parent: tuple[int, dict], pid: int, fd: str, target: str) -> bool:
    """Whether ``pid``'s fd ``fd`` is its parent's of that number, the same open file
    (``kcmp(KCMP_FILE)``), that linked to the same file when the parent was read."""
    return parent[1].get(fd) == target and _same(parent[0], pid, _KCMP_FILE, int(fd), int(fd))


def _first_type(links: list[str], key: tuple[int, int, int]):
    """:func:`node_type` of one mapped file (``key``: its maps ``MAJ``, ``MIN`` and inode)
    through the first of ``links`` (one way through each mapper) that still leads to it: a
    mapper may have mapped another file at those addresses since. An overlayfs of two
    filesystems names the file by its own device in maps and by its layer's in a stat: when
    no way matches both, a device node with the inode matches; when none does, what the
    first that answered leads to; else the last error."""
    answers, error = [], OSError(errno.ENOENT, "no mapper left")
    for link in links:
        try:
            got = _type_and_identity(link)
        except OSError as e:
            error = e
            if e.errno not in (errno.ENOENT, errno.ESRCH):
                return e
            continue
        if got[2] == (os.makedev(key[0], key[1]), key[2]):
            return got[:2]
        answers.append(got)
    nodes = [got for got in answers if got[2][1] == key[2]
             and (stat.S_ISBLK(got[0]) or stat.S_ISCHR(got[0]))]
    return (nodes or answers)[0][:2] if answers else error


def _held_type(ways: list[str], target: str):
    """:func:`node_type` of an open file through the first of ``ways`` (an fd, and its forks'
    copies of it, which were not read) that still links to ``target``, as the fd did when it
    was read (a fork may have closed its copy and opened a log at that number since), or the
    last error."""
    error: OSError = OSError(errno.ENOENT, "closed since")
    for way in ways:
        try:
            if os.readlink(way) != target:  # (no file server is asked for a link)
                continue
            return node_type(way)
        except OSError as e:
            error = e
            if e.errno not in (errno.ENOENT, errno.ESRCH):
                return e
    return error


def _type_and_identity(path: str) -> tuple[int, int, tuple[int, int]]:
    """(``st_mode``, ``st_rdev``, (``st_dev``, ``st_ino``)) of what ``path`` leads to, from
    the kernel's cache in one call (:func:`node_type`, :func:`cached_identity`)."""
    if _statx is None:
        st = os.stat(path)
        return st.st_mode, st.st_rdev, (st.st_dev, st.st_ino)
    raw = _statx_cached(path, _STATX_TYPE | _STATX_INO)
    major, minor, dmaj, dmin = (int.from_bytes(raw[i:i + 4], "little")
                                for i in (128, 132, 136, 140))
    return (int.from_bytes(raw[28:30], "little"), os.makedev(major, minor),
            (os.makedev(dmaj, dmin), int.from_bytes(raw[32:40], "little")))


def _mapped_numbers(fs: Sysfs, mapped: dict, lookups: Lookups, problems: list[str],
                    tables: "MountTables") -> list:
    """((mode, rdev), holders) of each mapped file that is a device node: a disk mapped
    through a node at any path (a container's ``/dev/xvdb`` made with the host's numbers)
    holds it after its fd is closed, and ``maps`` names only the node's path. Each distinct
    file is looked at once, through ``map_files`` (the mapping itself), from the kernel's
    cache, in one bounded lookup for the read."""
    if not fs.real_host or not mapped:
        return []
    keys, files = list(mapped), list(mapped.values())
    try:
        found = lookups.within(lambda: [_first_type(links, key) for key, (links, _)
                                        in zip(keys, files)],
                               "the files processes map")
    except NotLookedAt:
        return []
    except TimeoutError:
        problems.append(f"the {len(files)} files processes map did not all say in "
                        f"{DETACHED_STAT_TIMEOUT:g} s what they are: a disk mapped through a "
                        "node of another path would be missed")
        return []
    denied = [(links, who) for key, (links, who), got in zip(keys, files, found)
              if isinstance(got, OSError) and got.errno in (errno.EACCES, errno.EPERM)
              and not _on_fuse(key[0], key[1], who, tables)]
    denied = [who for (links, who), nodev in zip(denied, _nodev_mounts(lookups, denied))
              if not nodev]
    if denied:
        pids = sorted({pid for who in denied for pid, _ in who})
        problems.append(f"{len(denied)} files mapped by pid {', '.join(map(str, pids[:5]))}"
                        f"{' and others' if len(pids) > 5 else ''} cannot be looked at through "
                        "/proc/PID/map_files (permission denied: run as root, outside any "
                        "LSM confinement): a disk mapped through a node of another path would "
                        "be missed")
    return [(got, who) for (_, who), got in zip(files, found)  # (another error: unmapped
            if not isinstance(got, OSError)                      # since, or its process ended)
            and (stat.S_ISBLK(got[0]) or stat.S_ISCHR(got[0]))]


def _nodev(ways: list[str]) -> bool:
    """Whether the mount of the file the first of ``ways`` that answers leads to (magic links:
    ``/proc/PID/fd/N``, ``map_files/...``) is ``nodev``: ``statfs``'s flags are the mount's
    own, which a detached mount keeps and which FUSE gives without asking its daemon when it
    refuses the caller a look; a device node there is no device. False when none answers."""
    for way in ways:
        try:
            return bool(os.statvfs(way).f_flag & os.ST_NODEV)
        except OSError:
            continue
    return False


def _nodev_mounts(lookups: Lookups, files: list) -> list[bool]:
    """:func:`_nodev` of each (ways, holders) of ``files``, in one bounded lookup for all (a
    file server that does allow the caller is asked); all False when it does not answer."""
    if not files:
        return []
    try:
        return lookups.within(lambda: [_nodev(ways) for ways, _ in files],
                              "the mounts of files root may not look at")
    except TimeoutError:
        return [False] * len(files)


def _mounted_as(tables: "MountTables", pid: int, dev: int, fstype: str) -> bool | None:
    """Whether the filesystem ``dev`` is a mount of ``fstype`` (or ``fstype.*``, a FUSE
    subtype: ``fuse.sshfs``) in pid's mount namespace (its mountinfo); None when that cannot
    be read."""
    types = tables.of(pid)
    if types is None:
        return None
    kind = types.get(f"{os.major(dev)}:{os.minor(dev)}")
    return kind is not None and kind.split(" ")[0].split(".", 1)[0] == fstype


def _in_my_mount_namespace(fs: Sysfs, pid: int) -> bool:
    """Whether pid lives in the harness's mount namespace (False when that cannot be read)."""
    try:
        return os.readlink(fs.proc(str(pid), "ns", "mnt")) == os.readlink(fs.proc("self", "ns",
                                                                                   "mnt"))
    except OSError:
        return False


class MountTables:
    """Each mount namespace's :func:`_mount_types`, read once in one read of the host (a
    holder's, a mapper's: many share one namespace), all of them within
    :data:`MOUNT_TABLES_BUDGET` (any user stacks mounts thousands deep in a namespace of
    theirs, and the kernel's cost of the table grows with the square of that); one not read
    in it is None, as one that cannot be read."""

    def __init__(self, fs: Sysfs):
        self._fs, self._by_ns = fs, {}
        self._deadline: float | None = None

    def of(self, pid: int) -> dict[str, str] | None:
        fs = self._fs
        try:
            ns = os.readlink(fs.proc(str(pid), "ns", "mnt"))
        except OSError:
            ns = f"pid {pid}"  # (gone, or a fake process: its own)
        if ns not in self._by_ns:
            if self._deadline is None:
                self._deadline = time.monotonic() + MOUNT_TABLES_BUDGET
            left = self._deadline - time.monotonic()
            try:
                text = (call_within(lambda: fs.read(fs.proc(str(pid), "mountinfo")), left)
                        if left > 0 else None)
            except TimeoutError:
                text = None
            self._by_ns[ns] = None if text is None else _mount_types(text)
        return self._by_ns[ns]


def _mount_types(text: str) -> dict[str, str]:
    """``MAJ:MIN`` -> filesystem type of the mounts of a ``mountinfo``, with `` dev`` after
    it when one of them is not ``nodev`` (a node there may be a device)."""
    out: dict[str, str] = {}
    for f in (line.split(" ") for line in kernel_lines(text)):
        if "-" in f[3:] and len(f) > f.index("-") + 1 and not out.get(f[2], "").endswith(" dev"):
            out[f[2]] = f[f.index("-") + 1] + ("" if "nodev" in f[5].split(",") else " dev")
    return out


def _on_fuse(major: int, minor: int, who: set, types: "MountTables") -> bool:
    """Whether the filesystem ``major:minor`` its mappers map a file of is FUSE and ``nodev``
    to all of them: one mounted without ``allow_other`` refuses root even a look (EACCES),
    and a device node there is no device (root may mount one for a user without ``nodev``).
    One in none of a mapper's mounts (detached since: ``fusermount -uz``) is not told here:
    its flags are in no table, and only :func:`_nodev` (``statfs``) can say.
    ``types``: the read's mount tables."""
    for pid, _ in who:
        table = types.of(pid)
        kind = (table or {}).get(f"{major}:{minor}") or ""
        if not (kind.split(".")[0] in ("fuse", "fuseblk") and not kind.endswith(" dev")):
            return False
    return bool(who)


def tasks_of(proc: Path, problems: list[str]) -> list[Path]:
    """A process's other threads: one that did ``unshare(CLONE_FILES)`` holds files that
    only its own ``/proc/PID/task/TID/fd`` lists (the main thread's are ``/proc/PID/fd``)."""
    try:
        return sorted(t for t in (proc / "task").iterdir() if t.name != proc.name)
    except FileNotFoundError:
        return []  # gone, or a fake process without threads
    except OSError as e:
        problems.append(f"the threads of pid {proc.name} cannot be read ({e.strerror}): "
                        "files only one of them holds would be missed; run as root")
        return []


class OpenFiles:
    """Which device nodes processes hold open: by path (``/dev/sdb``) and by device number,
    whatever the path (a node in a container's /dev stands for the same device). Files on
    ``remote_mounts`` (mount ids: :func:`remote_mount_ids`) are not looked at by number. A file
    on a mount in none of ``known_mounts`` (:func:`mount_ids`; None: not known, as in a fake
    tree) was left open on a detached mount: its type is waited for only
    :data:`DETACHED_STAT_TIMEOUT` seconds, and one that does not come is a problem (what that
    process holds is unknown)."""

    @classmethod
    def read(cls, fs: Sysfs, problems: list[str]) -> "OpenFiles":
        """Every process's open files, with the mount tables that tell remote files from local
        ones read first (their problems, and the open files', added to ``problems``)."""
        infos = mountinfos(fs, problems)
        return cls(fs, problems, remote_mount_ids(infos), mount_ids(infos))

    def __init__(self, fs: Sysfs, problems: list[str], remote_mounts: "dict | None" = None,
                 known_mounts: "set[str] | None" = None):
        self.paths: dict[str, set[tuple[int, str]]] = {}
        self.numbers: dict[tuple[str, int], set[tuple[int, str]]] = {}
        self.remote = remote_mounts or {}
        self.known = known_mounts
        self.problems = problems
        self.silent_mounts: set[str] = set()  # detached mounts that did not answer
        #: vfio devices held through a device fd (``VFIO_GROUP_GET_DEVICE_FD``: the group's
        #: fd may be closed since, its file held by the device fd's): BDF -> holders; and the
        #: holders of device fds whose device the kernel does not name (fail closed).
        self.vfio_devices: dict[str, set[tuple[int, str]]] = {}
        self.vfio_unnamed: set[tuple[int, str]] = set()
        self._rings_mapped: dict[str, tuple[int, str]] = {}  # io_uring inode -> a mapper
        self._rings_held: set[str] = set()                   # io_uring inodes with an fd
        #: GPIO lines requested from user space, by chip (``gpiochip0``; None: a kernel whose
        #: fdinfo does not name it) -> who holds them: the request's own fd keeps the lines
        #: after the chip's node is closed.
        self.gpio_lines: dict[str | None, set[tuple[int, str]]] = {}
        #: A PCI function's files (:data:`_PCI_FILE_NAME`) open or mapped, wherever mounted:
        #: (name, inode) -> filesystem (``st_dev``) -> holders.
        self.pci_files: dict[tuple[str, int], dict[int, set[tuple[int, str]]]] = {}
        #: Mappings of /dev/mem: (first, last physical address, holder).
        self.devmem: list[tuple[int, int, tuple[int, str]]] = []
        self._fs = fs
        self.lookups = Lookups()
        self.mount_tables = MountTables(fs)
        self._mapped: dict[tuple[int, int, int], tuple[list[str], set]] = {}
        self._budget = tables_budget(fs)
        self._forks: dict[int, set[tuple[int, str]]] = {}  # pid -> forks that copied its fds
        self._fds_left = [MAX_FDS_READ, 0, None]  # (fds still to read; tables not read; first)
        self._fds, self._maps, self._rings = (Budget(FDS_BUDGET), Budget(MAPS_BUDGET),
                                              Budget(RINGS_BUDGET))
        self._remote_files: list[tuple[str, str, tuple[int, str]]] = []  # (_remote_numbers)
        tables: dict[int, dict[str, str]] = {}  # (of processes with children: :func:`_copied`)
        try:
            for proc in sorted(fs.proc().glob("[0-9]*"), key=lambda p: int(p.name)):
                who = (int(proc.name), fs.read(proc / "comm") or "?")
                self._add_maps(proc, who, problems)
                parent = _parent_table(proc, tables) if self._budget is None else None
                table = self._add_fds(fs, proc / "fd", who, problems, f"pid {who[0]}", parent)
                if fs.real_host and len(table) >= FORK_TABLE_MIN and _has_children(proc):
                    tables[who[0]] = table
                self._add_threads(fs, proc, who, problems)
        finally:
            self.lookups.close()
        _finish(self, fs, problems)

    def _add_threads(self, fs: Sysfs, proc: Path, who: tuple[int, str],
                     problems: list[str]) -> None:
        """The fds of up to :data:`MAX_OWN_TABLES` threads' own tables (:func:`thread_tables`)."""
        tasks = tasks_of(proc, problems)
        ended = bool(tasks) and fs.real_host and _ended_leader(proc)
        if ended:  # (its maps read empty; its threads share one memory)
            self._add_maps(tasks[0], who, problems)
        read, left = tables_within(thread_tables(fs, proc, tasks, ended), who, self._budget)
        for task in read:  # (not its process's table, read already)
            self._add_fds(fs, task / "fd", who, problems, f"pid {proc.name}'s thread {task.name}")
        if left:
            problems.append(left)

    def _add_fds(self, fs: Sysfs, folder: Path, who: tuple[int, str], problems: list[str],
                 whose: str, parent: "tuple[int, dict] | None" = None) -> dict[str, str]:
        """Each fd's file, but a fork's copy of its ``parent``'s (:func:`_parent_table`), read
        already, whose holders stand for their forks (:meth:`holders`). Returns fd -> link."""
        try:
            fds = list(folder.iterdir())
        except FileNotFoundError:
            return {}  # gone, or a fake process without fds
        except OSError as e:
            problems.append(f"the open files of {whose} cannot be read ({e.strerror}): run as "
                            "root")
            return {}
        if len(fds) > self._fds_left[0] or not self._fds.allows():
            self._fds_left[1:] = self._fds_left[1] + 1, self._fds_left[2] or whose
            return {}  # (a problem, counted: the read stops looking)
        self._fds_left[0] -= len(fds)
        with self._fds.timing():
            table = {fd.name: target for fd in fds if (target := _link(fd)) is not None}
            for fd in (fd for fd in fds if fd.name in table):
                if parent and _copied(parent, who[0], fd.name, table[fd.name]):
                    self._forks.setdefault(parent[0], set()).add(who)
                else:
                    self._add(fs, fd, who, table[fd.name])
        return table

    def _add_maps(self, proc: Path, who: tuple[int, str], problems: list[str]) -> None:
        """The files a process has mapped (``/proc/PID/maps``): a mapping holds a file after
        its fd is closed (a user-space driver's mmap of a BAR, ``resource0``)."""
        if not self._maps.allows():  # (past the budget: a problem, counted)
            return
        try:  # (a path is any bytes another user chose: as the kernel has it, not UTF-8)
            with self._maps.timing():
                data = self.lookups.read(proc / "maps", f"the maps of pid {who[0]} "
                                         f"({who[1]})", MAX_MAPS_BYTES)
            if len(data) > MAX_MAPS_BYTES:
                raise OSError(errno.EFBIG, f"more than {MAX_MAPS_BYTES >> 20} MB of mappings")
            text = os.fsdecode(data)
        except (FileNotFoundError, ProcessLookupError, NotLookedAt):
            return  # gone, or a fake process without mappings; or counted by the lookups
        except TimeoutError:
            problems.append(f"the mapped files of pid {who[0]} ({who[1]}) did not come in "
                            f"{DETACHED_STAT_TIMEOUT:g} s (its memory is locked, perhaps by a "
                            "fault on a file server that does not answer): which files it "
                            "maps is unknown")
            return
        except OSError as e:
            problems.append(f"the mapped files of pid {proc.name} cannot be read "
                            f"({e.strerror})" + (": run as root" if e.errno in (
                                errno.EACCES, errno.EPERM) else ": which files it maps is "
                                "unknown"))
            return
        for line in kernel_lines(text):
            fields = line.split(None, 5)
            if len(fields) == 6 and fields[5].startswith("/"):
                self._add_mapped(proc, fields, who)
            elif len(fields) == 6 and fields[5] == "anon_inode:[io_uring]":
                self._rings_mapped.setdefault(fields[4], who)
            elif len(fields) == 6 and fields[5] == "anon_inode:[vfio-device]":
                self.vfio_unnamed.add(who)  # (a BAR mapped through a device fd since closed:
                # the mapping holds the device; which one, /proc does not say)

    def _add_mapped(self, proc: Path, fields: list[str], who: tuple[int, str]) -> None:
        """A file mapping of /proc/PID/maps: ``start-end perms offset MAJ:MIN inode path``,
        the numbers in hex but the inode; each distinct file is kept with a way to it
        (``map_files/START-END``) for :func:`_mapped_numbers`."""
        path = fields[5].removesuffix(" (deleted)")
        devmem = path == "/dev/mem" or path.endswith("/dev/mem")
        if not devmem:  # (a mapping of /dev/mem holds the addresses it maps, not all of it)
            self.paths.setdefault(path, set()).add(who)
        name = path.rsplit("/", 1)[-1]
        try:
            major, minor = (int(n, 16) for n in fields[3].split(":"))
            start, end = (int(n, 16) for n in fields[0].split("-"))
            offset, inode = int(fields[2], 16), int(fields[4])
        except ValueError:
            return
        links, whom = self._mapped.setdefault((major, minor, inode), ([], set()))
        if who not in whom:  # (a way through each mapper: the first may unmap it meanwhile)
            links.append(f"{proc}/map_files/{start:x}-{end:x}")
            whom.add(who)
        if _PCI_FILE_NAME.fullmatch(name):
            self.pci_files.setdefault((name, inode), {}).setdefault(
                os.makedev(major, minor), set()).add(who)
        if devmem:  # (its offset: a physical address)
            self.devmem.append((offset, offset + end - start - 1, who))

    def _add(self, fs: Sysfs, fd: Path, who: tuple[int, str], target: str) -> None:
        if target in _GPIO_REQUESTS:
            self._add_gpio_request(fs, fd, who)
        elif target == "anon_inode:[io_uring]":
            self._add_ring(fs, fd, who)
        elif target == "anon_inode:[vfio-device]":
            syspath = re.search(r"^vfio-device-syspath:\s*(\S+)", self._fdinfo(fs, fd), re.M)
            if syspath:
                self.vfio_devices.setdefault(syspath[1].rsplit("/", 1)[-1], set()).add(who)
            else:  # (kernels before 6.14 do not name it)
                self.vfio_unnamed.add(who)
        elif target.startswith(("/", _UNPRINTED)):
            self._add_node(fs, fd, target, who)
        # socket:[...], pipe:[...], other anon_inode:..., net:[...]: no device node

    _fdinfo = staticmethod(lambda fs, fd: fs.read(fd.parent.parent / "fdinfo" / fd.name) or "")

    def _add_ring(self, fs: Sysfs, fd: Path, who: tuple[int, str]) -> None:
        """The files an io_uring has registered (``IORING_REGISTER_FILES``): the process may
        have closed its own fds of them and use them by index (``UserFiles:`` in the ring's
        fdinfo). The kernel leaves the list out while the ring is busy: read again, then
        unknown."""
        for _ in range(3):
            info = _ring_info(self, fd, who)
            if info is None:
                return
            inode = re.search(r"^ino:\s*(\d+)", info, re.M)
            if inode:
                self._rings_held.add(inode[1])
            count = re.search(r"^UserFiles:\s*(\d+)", info, re.M)
            files = _registered(info)
            if not count or int(count[1]) == 0 or files:
                break
        else:
            self.problems.append(f"pid {who[0]} ({who[1]}) has an io_uring with {count[1]} "
                                 "registered files the kernel did not list (the ring was busy, "
                                 "or its table is sparse): which files it uses is unknown")
        _names_alone(self, files, who)
        paths = list(dict.fromkeys(  # (many slots may hold one file; the kernel escapes
            re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)),  # " \t\n\\" as \040...)
                   f.removesuffix(" (deleted)")) for f in files if f.startswith("/")))
        for other in set(f for f in files if not f.startswith("/")):
            self._add_anonymous(other, who)
        for path in paths:
            self.paths.setdefault(path, set()).add(who)
        if paths:
            _look_up_registered(self, fs, paths, who)

    def _add_anonymous(self, target: str, who: tuple[int, str]) -> None:
        """A registered file with no path: a vfio device or a GPIO line request holds its
        device (which one, the ring's fdinfo does not say); a socket, pipe, eventfd... none."""
        target = f"anon_inode:{target}" if target.startswith("[") else target  # (before 6.14)
        if target == "anon_inode:[vfio-device]":
            self.vfio_unnamed.add(who)
        elif target in _GPIO_REQUESTS:
            self.gpio_lines.setdefault(None, set()).add(who)

    def _add_number(self, mode: int, rdev: int, who: tuple[int, str]) -> None:
        if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
            kind = "block" if stat.S_ISBLK(mode) else "char"
            self.numbers.setdefault((kind, rdev), set()).add(who)

    def vfio_device_users(self, fs: Sysfs, bdfs: "list[str]") -> list[str]:
        """Who holds a vfio device fd of one of ``bdfs``. A device fd the kernel does not name
        (before 6.14) counts when one of ``bdfs`` is enabled or its ``enable`` cannot be read:
        vfio-pci enables a function while a device fd of it is open, and only then."""
        found = set().union(*(self.vfio_devices.get(b, ()) for b in bdfs))
        if self.vfio_unnamed and any(
                fs.read(Path(fs.pci_device(b).path) / "enable") != "0"
                for b in bdfs if fs.pci_exists(b)):
            found |= self.vfio_unnamed
        return [f"pid {pid} ({comm})" for pid, comm in sorted(found)]

    def _add_node(self, fs: Sysfs, fd: Path, target: str, who: tuple[int, str]) -> None:
        self.paths.setdefault(target, set()).add(who)
        info = self._fdinfo(fs, fd)
        mount = re.search(r"^mnt_id:\s*(\d+)", info, re.M)
        remote = self.remote.get(mount[1]) if mount else None
        if remote is not None:  # (nodev: no device there; else one bounded lookup for all:
            if remote is False:  # a stat can hang on a server that is gone)
                self._remote_files.append((str(fd), target, who))
            return
        detached = bool(mount and self.known is not None and mount[1] not in self.known)
        got = _node_of(self, fd, target, who, mount[1] if detached else None)
        if got is None:
            return
        mode, rdev = got
        self._add_number(mode, rdev, who)
        name = target.rsplit("/", 1)[-1]
        if stat.S_ISREG(mode) and _PCI_FILE_NAME.fullmatch(name):
            try:  # (pread/pwrite of a BAR or config space through a mount of sysfs elsewhere)
                dev, inode = self.lookups.within(lambda: cached_identity(str(fd)), target) \
                    if detached else cached_identity(str(fd))
            except (OSError, TimeoutError):
                return
            self.pci_files.setdefault((name, inode), {}).setdefault(dev, set()).add(who)

    def _add_gpio_request(self, fs: Sysfs, fd: Path, who: tuple[int, str]) -> None:
        """A GPIO line request (``gpioset``, libgpiod): its chip is named in the fd's fdinfo
        (``gpio-chip:``, a v2 request on Linux 6.7 and later); a v1 handle or event, or an older
        kernel, leaves it unknown (None)."""
        info = self._fdinfo(fs, fd)
        chip = re.search(r"^gpio-chip:\s*(\S+)", info, re.M)
        self.gpio_lines.setdefault(chip[1] if chip else None, set()).add(who)

    def holders(self, kind: str, devname: str | None, majmin: str | None
                ) -> list[tuple[int, str]]:
        """(pid, command) of the processes that hold the node open (its ``DEVNAME`` under
        /dev, or any node of its ``MAJ:MIN``)."""
        found = set(self.paths.get(f"/dev/{devname}", ())) if devname else set()
        if majmin and re.fullmatch(r"\d+:\d+", majmin):
            major, minor = map(int, majmin.split(":"))
            found |= self.numbers.get((kind, os.makedev(major, minor)), set())
        return sorted(found.union(*(self._forks.get(pid, ()) for pid, _ in found)))

    def users(self, kind: str, devname: str | None, majmin: str | None) -> list[str]:
        """:meth:`holders` as ``pid 4242 (ceph-osd)``."""
        return [f"pid {pid} ({comm})" for pid, comm in self.holders(kind, devname, majmin)]


def _node_of(opened: "OpenFiles", fd: Path, target: str, who: tuple[int, str],
             detached: str | None) -> tuple[int, int] | None:
    """(``st_mode``, ``st_rdev``) of the file an fd holds, through its magic link (which leads
    to the file at any path length); on a ``detached`` mount (its id: in no mount list),
    bounded. None when it was closed since, or when it cannot be told, which is then a
    problem naming its holder (a FUSE mount refuses root a look: EACCES is no answer)."""
    try:
        if detached is None:
            return node_type(str(fd))
        if detached in opened.silent_mounts:
            return None  # (already a problem)
        return opened.lookups.node_type(str(fd), f"{target} (pid {who[0]})")
    except NotLookedAt:
        return None  # (counted: one problem for all)
    except TimeoutError:
        opened.silent_mounts.add(detached)
        opened.problems.append(
            f"pid {who[0]} ({who[1]}) holds {target} open on a detached mount (id {detached}, "
            f"in no mount list) whose filesystem did not say in {DETACHED_STAT_TIMEOUT:g} s what "
            f"the file is: which device it holds is unknown; end that process (kill {who[0]}) "
            "or its filesystem's daemon")
    except (FileNotFoundError, ProcessLookupError):
        return None  # (closed since)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM) and _nodev_mounts(opened.lookups,
                                                                    [([str(fd)], who)])[0]:
            return None  # (refused, but on a nodev mount: a node there is no device)
        where = f" on a detached mount (id {detached}, in no mount list)" if detached else ""
        opened.problems.append(
            f"pid {who[0]} ({who[1]}) holds {target} open{where}, which cannot be looked at "
            f"({e.strerror}): which device it holds is unknown; end that process "
            f"(kill {who[0]}), or run as root outside any LSM confinement")
    return None


def _finish(opened: "OpenFiles", fs: Sysfs, problems: list[str]) -> None:
    """What :class:`OpenFiles` reads once every process is read: the device numbers of
    mapped files; what was left unread; rings mapped with no fd of them held."""
    for (mode, rdev), who in _mapped_numbers(fs, opened._mapped, opened.lookups, problems,
                                             opened.mount_tables):
        for w in who:
            opened._add_number(mode, rdev, w)
    _remote_numbers(opened, problems)
    problems += opened.lookups.problems()
    if opened._rings.left_out:
        problems.append(f"{opened._rings.left_out} io_uring(s) whose registered files were not "
                        f"read within {RINGS_BUDGET:g} s for all, {MAX_RING_BYTES >> 20} MB "
                        "each: which files they use is unknown")
    if opened._maps.left_out:
        problems.append(f"the mapped files of all processes took more than {MAPS_BUDGET:g} s "
                        f"to read: {opened._maps.left_out} processes' were not read, which files "
                        "they map is unknown")
    left, first = opened._fds_left[1:]
    if left:
        problems.append(f"more than {MAX_FDS_READ} open files on the host, or more than "
                        f"{FDS_BUDGET:g} s to read them: the tables of {first} and {left - 1} "
                        "more were not read: which files they hold is unknown")
    for inode in sorted(set(opened._rings_mapped) - opened._rings_held):
        pid, comm = opened._rings_mapped[inode]
        problems.append(f"pid {pid} ({comm}) maps an io_uring (inode {inode}) that no "
                        "process holds an fd of (its fd registered with the ring and "
                        "closed): which files it reads and writes cannot be read")


def _remote_numbers(opened: "OpenFiles", problems: list[str]) -> None:
    """The device numbers of files open on network and FUSE mounts that allow device nodes
    (not ``nodev``: root's mounts of fstab's ``defaults``), in one bounded lookup for all; an
    fd closed since holds nothing, one that cannot be looked at is a problem."""
    files = opened._remote_files
    if not files:
        return
    ways = [[fd] + [str(Path(fd).parents[2] / str(pid) / "fd" / Path(fd).name)  # (a fork's
                    for pid, _ in sorted(opened._forks.get(who[0], ()))]  # copy, not read: the
            for fd, _, who in files]                                      # parent may close it)
    try:
        found = opened.lookups.within(lambda: [_held_type(w, target) for w, (_, target, _)
                                               in zip(ways, files)],
                                      "the files open on network and FUSE mounts")
    except NotLookedAt:
        return
    except TimeoutError:
        problems.append(f"the {len(files)} files open on network and FUSE mounts that allow "
                        f"device nodes did not all say in {DETACHED_STAT_TIMEOUT:g} s what they "
                        "are: a disk's node there would be missed")
        return
    for (_, target, who), got in zip(files, found):
        if not isinstance(got, OSError):
            opened._add_number(*got, who)
        elif got.errno not in (errno.ENOENT, errno.ESRCH):
            problems.append(f"pid {who[0]} ({who[1]}) holds {target} on a network or FUSE mount "
                            f"that allows device nodes, which cannot be looked at "
                            f"({got.strerror}): which device it is is unknown")


def _look_up_registered(opened: "OpenFiles", fs: Sysfs, paths: list[str], who: tuple[int, str]
                        ) -> None:
    """The registered files' types, through the holder's root (the kernel prints a path
    as the holder's mount namespace has it), in one bounded lookup for the ring (a path
    on a file server that does not answer waits); the first few that cannot be looked at
    are named, the others counted."""
    try:
        found = opened.lookups.within(  # (through its root: as its mount namespace has them)
            lambda: _node_types([str(fs.proc(str(who[0]), "root", p.lstrip("/")))
                                 for p in paths]),
            f"the files pid {who[0]}'s io_uring registered")
    except NotLookedAt:
        return  # (counted: one problem for all)
    except TimeoutError as e:
        found = [e] * len(paths)
    failed, own = [], fs.real_host and not _in_my_mount_namespace(fs, who[0])
    for path, got in zip(paths, found):
        if not isinstance(got, Exception) and stat.S_ISDIR(got[0]):
            got = OSError(errno.ENOENT, "its mount is gone")  # ("/": in no namespace now)
        elif own and not isinstance(got, Exception) and not stat.S_ISBLK(got[0]) \
                and not stat.S_ISCHR(got[0]):  # (a mount over the path since, a chroot)
            got = OSError(errno.EPERM, "not a device node at that path in its own mount "
                          "namespace, which it may have changed since it registered it")
        if isinstance(got, Exception):
            failed.append(f"{path} ({getattr(got, 'strerror', None) or got})")
        else:
            opened._add_number(*got, who)
    if failed:
        opened.problems.append(
            f"pid {who[0]} ({who[1]}) uses {', '.join(failed[:3])}"
            + (f" and {len(failed) - 3} more file(s)" if len(failed) > 3 else "")
            + " through its io_uring, which cannot be looked at: which devices they are is "
            "unknown")


def pci_file_holders(opened: OpenFiles, path: Path, fstype: str) -> set[tuple[int, str]]:
    """Who holds open or maps a function's file ``path`` (its sysfs ``resource0``, its
    /proc/bus/pci file) through any mount of it: the same name and inode on the same
    filesystem, or on another mount of ``fstype`` in the holder's mount namespace (sysfs
    mounted in another network namespace is a superblock of its own, with the same
    inodes), or where the holder's mounts cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return set()
    found = set()
    for dev, who in opened.pci_files.get((path.name, st.st_ino), {}).items():
        found |= {(pid, comm) for pid, comm in who if dev == st.st_dev
                  or _mounted_as(opened.mount_tables, pid, dev, fstype) is not False}
    return found


def devname(node: Path, fs: Sysfs) -> str:
    """A sysfs device's node name under /dev (``DEVNAME`` of its uevent, else its own name)."""
    for line in (fs.read(node / "uevent") or "").splitlines():
        if line.startswith("DEVNAME="):
            return line[len("DEVNAME="):]
    return node.name


#: configfs trees of the kernel's storage targets: (module, folder, globs of the files that name
#: a block device) -- NVMe over Fabrics (namespaces, and passthrough controllers) and LIO.
_TARGETS = (("nvmet", ("kernel", "config", "nvmet", "subsystems"),
             ("*/namespaces/*/device_path", "*/passthru/device_path")),
            ("target_core_mod", ("kernel", "config", "target", "core"), ("*/*/udev_path",)))


def _exported(fs: Sysfs, problems: list[str], lookups: "Lookups | None" = None
              ) -> dict[str, list[str]]:
    """Block device name -> the targets that export it; also an NVMe controller's node passed
    through whole (``/dev/nvme1``), by its name and its ``MAJ:MIN`` (the kernel opens it: no
    process holds it, and its namespaces may be named after its subsystem, ``nvme0n1``, or be
    none). A target module that is loaded with a configfs tree the harness cannot read is a
    problem (every disk counts as in use); so is a device it names that cannot be told
    (:func:`_target_devices`, :func:`_outside_dev`) and a block server it does not know
    (:func:`_unread_servers`)."""
    out: dict[str, list[str]] = {}
    lookups = lookups or Lookups()
    for module, folder, globs in _TARGETS:
        root = fs.sys(*folder)
        if not (root.is_dir() or _loaded(fs, module)):
            continue
        if not root.is_dir():
            problems.append(f"{module} is loaded or built in but {root} cannot be read (is "
                            "configfs mounted?): the disks it exports are unknown")
            continue
        for f in sorted(f for pattern in globs for f in root.glob(pattern)):
            where = f"{module} ({f.relative_to(root).parts[0]})"
            for path in _target_devices(fs, f, where, problems):
                names = _named_here(fs, path)
                if names is None and fs.read(f.parent / "enable") != "0":
                    names = _outside_dev(fs, path, where, lookups, problems)
                for name in names or []:
                    out.setdefault(name, []).append(where)
    _unread_servers(fs, problems)
    return out


#: LIO backstores that open no block device (a RAM disk; TCMU's, served by a process, which
#: is seen holding its files).
_LIO_NO_DISK = ("rd_mcp", "user")


def _target_devices(fs: Sysfs, f: Path, where: str, problems: list[str]) -> list[str]:
    """The device paths a target's file ``f`` names (nvmet's ``device_path``, LIO's
    ``udev_path``). LIO's ``udev_path`` is a label, not what the backstore opened: only
    targetcli writes it, any configfs writer may set it to anything at any time (a script
    labels a fileio backstore with the image it once served, then points ``control``'s
    ``fd_dev_name`` at /dev/sdb), and no opener reads it. The kernel's record is ``info``
    (fileio's ``File:``, iblock's ``iBlock device:`` and ``UDEV PATH:``), read for every
    backstore but a disabled one with a label; the label counts too (pscsi's ``info`` names
    no path), so a backstore whose two disagree exports both. An enabled one that names a
    device in neither is a problem (a disk opened with no claim, holder or process fd)."""
    label = (fs.read(f) or "").strip()
    enable = fs.read(f.parent / "enable")
    if f.name != "udev_path" or (label and enable == "0"):
        return [label] if label else []
    info = fs.read(f.parent / "info") or ""
    opened = re.findall(r"(?:File|UDEV PATH): (/\S+)", info)
    opened += [f"/dev/{name}" for name in re.findall(r"iBlock device: (\S+)", info)]
    hba = f.parent.parent.name.rsplit("_", 1)[0]
    if not (opened or label) and hba not in _LIO_NO_DISK and enable not in (None, "0"):
        problems.append(f"{where}: the LIO backstore {f.parent.name} is enabled and names no "
                        f"device the harness can read (no udev_path, and its info says "
                        f"{info.strip()[:200]!r}): which disk it opened is unknown")
    return list(dict.fromkeys(opened + ([label] if label else [])))


def _outside_dev(fs: Sysfs, path: str, where: str, lookups: "Lookups", problems: list[str]
                 ) -> list[str]:
    """The block device a target's path outside ``/dev`` opens (``/host/dev/sdb`` written
    from a pod, a link kept anywhere): looked at, bounded (a path on a file server that
    does not answer waits). A regular file is an image (its filesystem is mounted, and that
    is seen); anything else (a node of no disk listed here, a path that cannot be looked
    up: another mount namespace's) is a problem."""
    try:
        mode, rdev = lookups.node_type(str(fs.path(path.lstrip("/"))), f"{path} ({where})")
    except (OSError, TimeoutError) as e:
        why = f"cannot be looked at here ({getattr(e, 'strerror', None) or e}: it may be a " \
              "path in the writer's mount namespace)"
    else:
        if stat.S_ISREG(mode):
            return []
        name = _block_of(fs, rdev) if stat.S_ISBLK(mode) else None
        if name:
            return [name]
        why = "is no regular file and no block device this host lists"
    problems.append(f"{where} opens {path}, which {why}: it may be a disk's node, so which "
                    "disk it exports is unknown")
    return []


#: A kernel module whose name says it serves disks to other machines or guests: Xen's
#: ``xen_blkback``, ``rnbd_server``/``rtrs_server``, IET's ``iscsi_trgt``, SCST, vhost-blk.
_BLOCK_SERVER = re.compile(r".*(blkback|_server|_srv|target|tgt|trgt|scst|vhost_blk).*")


def _unread_servers(fs: Sysfs, problems: list[str]) -> None:
    """Loaded kernel block servers the harness does not read: they open a disk with no holder
    (no claim, no ``holders/`` link) and no process fd, so any disk may be theirs. LIO's and
    nvmet's own modules and fabrics (read through configfs) are known; any other module
    whose name says it serves disks is a problem, named, rather than a list of the ones known
    today (a new server fails closed)."""
    known = {p.name for base in ("target_core_mod", "nvmet")
             for p in fs.sys("module", base, "holders").glob("*")}
    try:
        loaded = sorted(os.listdir(fs.sys("module")))
    except OSError as e:
        problems.append(f"the kernel's modules cannot be listed ({e.strerror}): which block "
                        "servers are loaded is unknown")
        return
    for name in loaded:
        if _BLOCK_SERVER.fullmatch(name) and name not in known \
                and not name.startswith(("nvmet", "target_core")):
            problems.append(f"the kernel module {name} is loaded, and its name says it serves "
                            "disks to other machines or guests, which the harness cannot read: "
                            "such a server opens a disk with no holder, claim or process fd, so "
                            f"every disk is unproven; unload it (modprobe -r {name}) if it "
                            "serves nothing")


def _loaded(fs: Sysfs, module: str) -> bool:
    """Whether ``module`` is loaded or built in (a built-in one may have no /sys/module entry).
    Asking the kernel for what a module keeps (``ss -S``, ``tc actions ls action mirred``,
    ``nft``) makes it load the module when it is not there (``request_module``), and the
    harness loads none as a side effect (a host may blacklist sctp for its CVEs); with the
    module not there, nothing of its kind exists to be read."""
    return fs.sys("module", module).exists() or _built_in(fs, module)


def _kernel_held(fs: Sysfs, problems: list[str], lookups: Lookups) -> dict[str, list[str]]:
    """Block device -> how the kernel itself holds it open with no holder (so no exclusive
    claim), no ``holders/`` link and no process fd, each read where the kernel lists it: a
    USB gadget's mass storage LUN (:func:`_gadget_luns`), pktcdvd's map
    (:func:`_pktcdvd_mapped`), OCFS2's global heartbeat (:func:`_o2hb_regions`). What cannot
    be read there, with the module loaded, is a problem; and a loaded pNFS block/SCSI layout
    client, which names its disks nowhere but the kernel log, is one too."""
    out: dict[str, list[str]] = {}
    for name, how in (_gadget_luns(fs, problems, lookups) + _pktcdvd_mapped(fs, problems)
                      + _o2hb_regions(fs, problems)):
        out.setdefault(name, []).append(how)
    if _loaded(fs, "blocklayoutdriver"):
        problems.append("the pNFS block/SCSI layout client (blocklayoutdriver) is loaded: it "
                        "writes file data of an NFS mount straight to the disks its layouts "
                        "name, opened with no holder, claim or process fd, and names them "
                        "nowhere but the kernel log, so every disk is unproven; unload it "
                        "(modprobe -r blocklayoutdriver) if no pNFS mount uses it")
    return out


def _gadget_luns(fs: Sysfs, problems: list[str], lookups: Lookups) -> list[tuple[str, str]]:
    """The disks a USB gadget exports as mass storage to the USB host on its other end (a
    lab host playing a USB stick for a device under test): configfs ``usb_gadget/G/functions/
    mass_storage.I/lun.N/file``, a legacy gadget's ``file`` parameter (what it was loaded
    with: :func:`_legacy_gadgets`), and a legacy gadget's LUNs as they are now (a removable
    LUN's medium is swapped through its own ``file``, ``/sys/class/udc/U/device/gadget.0/
    lun0/file``, and the parameter keeps its old value). ``fsg_lun_open`` opens the file with
    ``filp_open`` whether or not the gadget is bound to its UDC. A path outside /dev is looked
    at as a target's is (:func:`_outside_dev`: an image file is none)."""
    out: list[tuple[str, str]] = []
    legacy = _legacy_gadgets(fs, problems)
    root = fs.sys("kernel", "config", "usb_gadget")
    if _loaded(fs, "usb_f_mass_storage") and not root.is_dir() and not legacy:
        problems.append(f"usb_f_mass_storage is loaded or built in but {root} cannot be read "
                        "(is configfs mounted?): the disks a USB gadget exports are unknown")
    files = [(f, f"the USB gadget {f.parts[-5]} ({f.parts[-3]}, {f.parts[-2]})")
             for f in sorted(root.glob("*/functions/mass_storage.*/lun.*/file"))]
    files += [(fs.sys("module", g, "parameters", "file"), f"the USB gadget {g} (its file "
               "parameter)") for g in legacy]
    files += [(f, f"the USB gadget on {f.parts[-5]} ({f.parts[-3]}, {f.parts[-2]})")
              for f in sorted(fs.sys("class", "udc").glob("*/device/gadget*/lun*/file"))]
    for f, where in files:
        text = fs.read(f)
        if text is None:
            problems.append(f"{where}: {f} cannot be read: which disk it exports as USB mass "
                            "storage is unknown")
        for path in (p.strip() for p in (text or "").split(",") if p.strip()):
            name = block_name(fs, path) if path.startswith("/dev/") else None
            out += [(n, f"exported as USB mass storage by {where}") for n in
                    ([name] if name else _outside_dev(fs, path, where, lookups, problems))]
    return out


def _legacy_gadgets(fs: Sysfs, problems: list[str]) -> list[str]:
    """The legacy USB gadgets that may serve mass storage, whatever their name (g_mass_storage,
    g_multi, g_acm_ms, g_nokia, an out-of-tree one): the modules that work through
    usb_f_mass_storage (its ``holders``), and any module, built in too, with the mass storage
    parameters ``file`` and ``luns`` (FSG_MODULE_PARAMETERS). A holder without a readable
    ``file`` parameter is a problem (:func:`_gadget_luns` cannot read it), and so is a
    ``holders`` folder that cannot be listed."""
    folder = fs.sys("module", "usb_f_mass_storage", "holders")
    try:
        held = {p.name for p in folder.iterdir()}
    except FileNotFoundError:  # (not loaded, or built in: no module can hold it)
        held = set()
    except OSError as e:
        problems.append(f"usb_f_mass_storage is loaded but {folder} cannot be listed "
                        f"({e.strerror}): which legacy USB gadgets export disks is unknown")
        held = set()
    return sorted(held | {p.parent.parent.name for p in fs.sys("module").glob("*/parameters/luns")
                          if (p.parent / "file").exists()})


def _pktcdvd_mapped(fs: Sysfs, problems: list[str]) -> list[tuple[str, str]]:
    """The drives pktcdvd maps (``pktsetup dvd /dev/sr0``; Debian's udftools maps every CD
    drive): ``pkt_new_dev`` opens the drive with no holder, and only the kernel's map,
    ``/sys/class/pktcdvd/device_map`` (``pktcdvd0 253:0 11:0``), names it."""
    listing = fs.sys("class", "pktcdvd", "device_map")
    if not (_loaded(fs, "pktcdvd") or listing.exists()):
        return []
    text = fs.read(listing)
    if text is None:
        problems.append(f"pktcdvd is loaded or built in but {listing} cannot be read: which "
                        "drives it holds is unknown")
    out = []
    for line in (text or "").splitlines():
        fields = line.split()
        name = _block_of(fs, os.makedev(*map(int, fields[2].split(":")))) \
            if len(fields) == 3 and re.fullmatch(r"\d+:\d+", fields[2]) else None
        if name is None:
            problems.append(f"{listing} has {line!r}, whose drive is no block device this host "
                            "lists: which drive pktcdvd holds is unknown")
        else:
            out.append((name, f"mapped by pktcdvd ({fields[0]}, {fields[1]})"))
    return out


def _o2hb_regions(fs: Sysfs, problems: list[str]) -> list[tuple[str, str]]:
    """The disks OCFS2's heartbeat writes (global heartbeat: ``o2cb add-heartbeat``, with no
    OCFS2 filesystem mounted yet): ``o2hb_region_dev_store`` opens the disk with no holder and
    the o2hb thread writes it every two seconds; losing it, o2quo fences (panics) the host.
    configfs names it: ``cluster/C/heartbeat/R/dev`` (``sdb``; empty: not started)."""
    if not _loaded(fs, "ocfs2_nodemanager"):
        return []
    root = fs.sys("kernel", "config", "cluster")
    if not root.is_dir():
        problems.append(f"ocfs2_nodemanager is loaded or built in but {root} cannot be read "
                        "(is configfs mounted?): which disks OCFS2's heartbeat writes is unknown")
    out = []
    for f in sorted(root.glob("*/heartbeat/*/dev")):
        where = f"OCFS2's heartbeat of cluster {f.parts[-4]} (o2hb region {f.parts[-2]})"
        text = fs.read(f)
        name = text.strip() if text is not None else None
        if name and "/" not in name and fs.sys("class", "block", name).exists():
            out.append((name, f"written by {where}"))
        elif name != "":
            problems.append(f"{where}: {f} " + ("cannot be read" if name is None else
                            f"names {name!r}, no block device this host lists") +
                            ": which disk it writes is unknown")
    return out


def _built_in(fs: Sysfs, module: str) -> bool:
    """Whether the running kernel has ``module`` built in: a built-in module without
    parameters or a version shows no /sys/module entry. ``modules.builtin`` says; a kernel
    installed without it (a cloud or microVM kernel with no /lib/modules, one built with no
    module support at all) is asked through /proc/config.gz (:data:`_CONFIG_OF`); where
    neither can be read on the host, it counts as built in: what the module would keep is
    read, not ruled out unseen."""
    text = fs.read(fs.path("lib", "modules", os.uname().release, "modules.builtin"))
    if text is not None:
        return any(line.rsplit("/", 1)[-1] == f"{module}.ko" for line in text.splitlines())
    config = _kernel_config(fs)
    if config is None or module not in _CONFIG_OF:
        return fs.real_host  # (a test's tree without either file: nothing built in)
    return f"CONFIG_{_CONFIG_OF[module]}=y" in config


#: The kernel configuration option that builds each module the harness asks about in.
_CONFIG_OF = {
    "netconsole": "NETCONSOLE", "sctp": "IP_SCTP", "sch_ingress": "NET_SCH_INGRESS",
    "act_mirred": "NET_ACT_MIRRED", "nf_tables": "NF_TABLES", "nvmet": "NVME_TARGET",
    "target_core_mod": "TARGET_CORE", "blocklayoutdriver": "PNFS_BLOCK",
    "usb_f_mass_storage": "USB_F_MASS_STORAGE", "pktcdvd": "CDROM_PKTCDVD",
    "ocfs2_nodemanager": "OCFS2_FS", "xfrm_user": "XFRM_USER",
}


def _kernel_config(fs: Sysfs) -> set[str] | None:
    """The running kernel's ``CONFIG_X=y`` lines (/proc/config.gz, with ``IKCONFIG_PROC``), or
    None where it cannot be read."""
    try:
        with gzip.open(fs.proc("config.gz"), "rt") as f:
            return {line.strip() for line in f if line.endswith("=y\n")}
    except (OSError, EOFError, UnicodeDecodeError):
        return None


_P2PMEM_OFF = {"", "0", "n", "no", "off", "false", "none"}
_PCI_NAME = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")


def _p2pmem_lent(fs: Sysfs) -> dict[str, list[str]]:
    """PCI function -> the nvmet namespaces that take their data buffers from its peer-to-peer
    memory (configfs ``namespaces/N/p2pmem`` names it: the kernel allocates from it for an RDMA
    NIC, with no process, node or disk to show it); ``"auto"`` -> those that take it from any
    function that publishes p2pmem (``1``: which one each controller took is not shown).
    (An unreadable configfs with nvmet loaded is already a problem: :func:`_exported`.)"""
    out: dict[str, list[str]] = {}
    root = fs.sys("kernel", "config", "nvmet", "subsystems")
    if not root.is_dir():  # (nvmet loaded or built in: its configfs is there)
        return out
    for f in sorted(root.glob("*/namespaces/*/p2pmem")):
        text = fs.read(f)  # (one that cannot be read may name any function)
        value = "unreadable" if text is None else text.strip().lower()
        if value in _P2PMEM_OFF:
            continue
        where = f"nvmet ({f.relative_to(root).parts[0]}, namespace {f.parent.name})"
        out.setdefault(value if _PCI_NAME.fullmatch(value) else "auto", []).append(where)
    return out


def _named_here(fs: Sysfs, path: str) -> list[str] | None:
    """The disks, or the NVMe controller, a target's path names in this host's /dev, or None
    when it names none: a path outside /dev, or one under /dev that is no disk or controller
    here (a container given the disk as `--device /dev/sdb:/dev/lun0` writes /dev/lun0 to
    configfs, and the kernel opens it in the writer's mount namespace: the host has no lun0).
    Such a path is looked up by its node (:func:`_outside_dev`), never dropped."""
    if not path.startswith("/dev/"):
        return None
    blocks, controller = _exported_blocks(fs, path), _exported_controller(fs, path)
    return blocks + controller if blocks or len(controller) == 2 else None  # (name, MAJ:MIN)


def _exported_controller(fs: Sysfs, path: str) -> list[str]:
    """The node name and ``MAJ:MIN`` of the NVMe controller a passthrough device path names."""
    if not path.startswith("/dev/") or block_name(fs, path):
        return []
    dev = fs.path("dev", path[len("/dev/"):])
    name = os.path.basename(os.path.realpath(dev) if dev.is_symlink() else path)
    majmin = fs.read(fs.sys("class", "nvme", name, "dev"))
    return [name] + ([majmin] if majmin else [])


def _exported_blocks(fs: Sysfs, path: str) -> list[str]:
    """The block devices a target's device path gives away: a disk (``/dev/sdb``), or every
    namespace of an NVMe controller passed through whole (``/dev/nvme0``)."""
    if not path.startswith("/dev/"):
        return []  # (a path elsewhere: :func:`_outside_dev`)
    name = block_name(fs, path)
    if name:
        return [name]
    controller = path.rsplit("/", 1)[-1]
    return sorted(p.name for p in fs.sys("class", "block").glob(f"{controller}n*"))


class StorageView:
    """Mounts, swap, holders and open files, read once. ``held``: whole disks this process
    claims (O_EXCL) while the view reads them again (:func:`harness.host.binding.disks_claimed`):
    that claim, and this process's fd of the disk, are no use by anyone else."""

    def __init__(self, fs: Sysfs, opened: OpenFiles, mounts: list[Mount], problems: list[str],
                 budget: "Budget | None" = None, held: "frozenset[str]" = frozenset()):
        self.fs, self.opened, self.problems, self.held = fs, opened, problems, held
        self.by_majmin: dict[str, list[str]] = {}
        self.by_name: dict[str, list[str]] = {}
        #: Filesystems whose disks cannot be told (ZFS pools, a device that resolves nowhere).
        self.unmapped: list[str] = []
        self._map_mounts(fs, mounts, budget or Budget(MOUNT_TABLES_BUDGET), problems)
        if fs.sys("module", "zfs").exists():
            self.unmapped.append("ZFS is loaded (its pools hold disks the harness cannot tell)")
        self.btrfs = {p.name: p.parent.parent.name
                      for p in fs.sys("fs", "btrfs").glob("*/devices/*")}
        #: Block devices a loop device reads directly (``losetup /dev/loop0 /dev/sdb``): the
        #: loop holds them with no holders/ link and no process fd.
        self.loop_backed, self.loops_unknown = _loop_backing(fs, opened.lookups)

        #: Whole disks by their world-wide id (SCSI ``device/wwid``, NVMe ``wwid``): one disk
        #: reached through two controllers (a dual-ported SAS disk without dm-multipath, an
        #: NVMe drive's two ports without native multipath) is two block devices, and the
        #: host's use of one is a use of the other.
        self.wwid_of, self.by_wwid = _wwids(fs)

        #: Block devices a kernel storage target exports to other machines (nvmet, LIO):
        #: they open the disk without an exclusive claim, a holder or a process fd; and the
        #: NVMe controllers nvmet passes through whole (by node name and ``MAJ:MIN``).
        self.exported = _exported(fs, problems, opened.lookups)
        self.p2pmem_lent = _p2pmem_lent(fs)  # (PCI functions whose p2pmem nvmet lends)

        #: Block devices the kernel opens with no holder and names elsewhere (a USB gadget's
        #: LUN, pktcdvd's map, OCFS2's heartbeat): name -> how.
        self.kernel_held = _kernel_held(fs, problems, opened.lookups)

        #: Character devices the kernel prints its console to (/proc/consoles: a serial
        #: adapter can be the console with no process holding it open): MAJ:MIN -> name;
        #: and the enabled consoles with no device number (``earlyxdbc0``: a USB debug port).
        self.consoles, self.unnumbered_consoles = _consoles(fs, problems)

        #: ttys the kernel opens for itself, in no /proc/consoles line and with no process fd
        #: (speakup's hardware synthesizer, the braille console): name and MAJ:MIN -> who;
        #: and why which ones it holds cannot be told (every tty below a device is then
        #: unproven).
        self.kernel_ttys, self.kernel_ttys_unknown = _kernel_ttys(fs)

    def _map_mounts(self, fs: Sysfs, mounts: list[Mount], budget: "Budget",
                    problems: list[str]) -> None:
        """Files each mount (and swap) under its device's number and its disk's name; one
        whose disk cannot be told goes to :attr:`unmapped`."""
        looked = _look_up_mounts(fs, mounts, budget, problems)
        for m in mounts:
            what = "used as swap" if m.mountpoint == "swap" else f"mounted on {m.mountpoint}"
            if m.majmin and not m.majmin.startswith("0:"):
                self.by_majmin.setdefault(m.majmin, []).append(what)
            if (m.source, m.majmin) not in looked:
                continue  # (past the budget: a problem, counted)
            name, on_a_disk = looked[(m.source, m.majmin)]
            if name:
                self.by_name.setdefault(name, []).append(what)
            if m.fstype in _POOL_FS | _AUTOMOUNT_FS or (name is None and not on_a_disk):
                self.unmapped.append(f"{m.mountpoint} ({m.source}, {m.fstype})")

    @classmethod
    def read(cls, fs: Sysfs, held: "frozenset[str]" = frozenset()) -> "StorageView":
        problems: list[str] = []
        budget = Budget(MOUNT_TABLES_BUDGET)  # (the tables' reading, then their sources')
        infos = mountinfos(fs, problems, budget)
        mounts = _mounts(fs, infos, problems)
        return cls(fs, OpenFiles(fs, problems, remote_mount_ids(infos), mount_ids(infos)), mounts,
                   problems, budget, held)

    def use_of_block(self, name: str, seen: set[str] | None = None) -> list[str]:
        """Why block device ``name`` (or a partition of it, or what holds it) is in use."""
        seen = set() if seen is None else seen
        if name in seen:
            return []
        seen.add(name)
        d = Path(os.path.realpath(self.fs.sys("class", "block", name)))
        majmin = self.fs.read(d / "dev")
        uses = [f"{name} is {w}" for w in self.by_name.get(name, []) +
                self.by_majmin.get(majmin or "-", [])]
        if name in self.btrfs:
            uses.append(f"{name} is a device of the btrfs filesystem {self.btrfs[name]}")
        if name in self.loop_backed:
            uses.append(f"{name} backs the loop device {self.loop_backed[name]}")
        uses += [f"{name} may back the loop device {why}" for why in self.loops_unknown]
        uses += [f"{name} is exported by {target}" for target in self.exported.get(name, [])]
        uses += [f"{name} is {how}" for how in self.kernel_held.get(name, [])]
        # (a hidden NVMe multipath path, nvme0c0n1, has no /dev node: the kernel claims the
        # disk through its head, nvme0n1, which is looked at as the namespace's own device)
        # (a disk this process claims, or a partition of one: its own claim makes the
        # exclusive open fail, and proves that no one else holds it exclusively)
        mine = os.getpid() if {name, d.parent.name} & self.held else None
        if self.fs.real_host and self.fs.read(d / "hidden") != "1" and mine is None:
            uses += _claimed(devname(d, self.fs))
        uses += [f"{name} is open by pid {pid} ({comm})" for pid, comm in
                 self.opened.holders("block", devname(d, self.fs), majmin) if pid != mine]
        for holder in sorted(p.name for p in (d / "holders").glob("*")):
            label = self.fs.read(self.fs.sys("class", "block", holder, "dm", "name"))
            uses.append(f"{name} is held by {holder}" + (f" ({label})" if label else ""))
        for part in sorted(p.name for p in d.iterdir() if (p / "partition").exists()) \
                if d.is_dir() else []:
            uses += self.use_of_block(part, seen)
        for twin, nodes in other_paths(self.fs, [name], (self.wwid_of, self.by_wwid)):
            if twin not in seen:
                uses += [f"{name} is the same disk (wwid {self.wwid_of[name]}) as {twin}: {u}"
                         for u in self.use_of_block(twin, seen) + self._nodes_held(nodes)]
        return uses

    def _nodes_held(self, nodes: "list[tuple[Path, str | None]]") -> list[str]:
        """Who holds the disk's SCSI generic or bsg nodes (:func:`scsi_nodes`), by path and by
        number: QEMU's scsi-generic drives the disk through one with no block device open."""
        return [f"/dev/{devname(node, self.fs)} is open by pid {pid} ({comm})"
                for node, majmin in nodes
                for pid, comm in self.opened.holders("char", devname(node, self.fs), majmin)]


def _consoles(fs: Sysfs, problems: list[str]) -> tuple[dict[str, str], list[str]]:
    """/proc/consoles: (``MAJ:MIN`` -> name of the consoles with a tty, the names of the
    enabled ones with none). A console without a device number still writes through a device:
    ``earlyprintk=xdbc,keep`` or ``dbgp,keep`` keeps ``earlyxdbc0``/``earlydbg0`` on a USB
    controller's debug port, netconsole (``netcon0``) on a NIC; a line whose flags cannot be
    read counts as enabled."""
    text = fs.read(fs.proc("consoles"))
    if text is None:
        problems.append("/proc/consoles cannot be read: which device nodes the kernel "
                        "prints its console to is unknown")
    numbered, unnumbered = {}, []
    for line in (text or "").splitlines():
        f = line.split()
        if len(f) >= 2 and re.fullmatch(r"\d+:\d+", f[-1]):
            numbered[f[-1]] = f[0]
        elif f:
            flags = re.search(r"\(([^)]*)\)", line)
            if flags is None or "E" in flags[1]:
                unnumbered.append(f[0])
    return numbered, unnumbered


#: speakup's synths that open no tty: ``soft`` (espeakup's, through /dev/softsynth) and
#: ``none`` (no synth selected).
_SPEAKUP_NO_TTY = frozenset({"none", "soft"})


def _kernel_ttys(fs: Sysfs) -> tuple[dict[str, str], list[str]]:
    """The ttys the kernel opens for itself, which no process holds and /proc/consoles does
    not list: (tty name and ``MAJ:MIN`` -> who, why which ones cannot be told): speakup's
    synthesizer (:func:`_speakup_ttys`) and the braille console (:func:`_braille_ttys`)."""
    held: dict[str, str] = {}
    unknown: list[str] = []
    for tty, who in _speakup_ttys(fs, unknown) + _braille_ttys(fs, unknown):
        held[tty] = who
        majmin = fs.read(fs.sys("class", "tty", tty, "dev"))
        if majmin:
            held[majmin.strip()] = who
    return held, unknown


def _speakup_ttys(fs: Sysfs, unknown: list[str]) -> list[tuple[str, str]]:
    """Speakup, the kernel's screen reader, drives a hardware speech synthesizer through the
    tty its synth module names (``speakup_ltlk dev=ttyUSB0``: a USB serial adapter), opened in
    the kernel (``tty_kopen_exclusive``), while that synth is the one selected
    (``/sys/accessibility/speakup/synth``): taking the adapter silences the console's blind
    user. Loaded with either file unreadable, which tty it holds cannot be told."""
    if not fs.sys("module", "speakup").exists():
        return []
    synth = fs.read(fs.sys("accessibility", "speakup", "synth"))
    if synth is not None and synth.strip() in _SPEAKUP_NO_TTY:
        return []
    params = fs.sys("module", f"speakup_{(synth or '').strip()}", "parameters")
    tty = _speakup_tty(fs.read(params / "dev"), fs.read(params / "ser")) if synth else None
    if tty is None:
        unread = "/sys/accessibility/speakup/synth" if synth is None else \
            f"{params}/{'ser' if fs.read(params / 'dev') else 'dev'}"
        unknown.append(f"speakup is loaded and {unread} cannot be read: which tty its "
                       "synthesizer holds cannot be told")
        return []
    return [(tty, f"speakup's synthesizer {synth.strip()} (speakup_{synth.strip()}: {tty})")]


def _braille_ttys(fs: Sysfs, unknown: list[str]) -> list[tuple[str, str]]:
    """The kernel's braille console (``console=brl,ttyS0`` on the command line: a braille
    display on that serial port reads the console out), which /proc/consoles does not list.
    An unreadable /proc/cmdline on a real host leaves it untold."""
    cmdline = fs.read(fs.proc("cmdline"))
    if cmdline is None:
        if fs.real_host:
            unknown.append("/proc/cmdline cannot be read: whether the kernel's braille "
                           "console (console=brl,TTY) is on a tty cannot be told")
        return []
    return [(tty, f"the braille console (console=brl,{tty} on /proc/cmdline)")
            for arg in kernel_params(cmdline) if arg.startswith("console=brl,")
            and (tty := arg.split(",")[1])]


def _speakup_tty(dev: "str | None", ser: "str | None") -> "str | None":
    """The tty a speakup synth opens, as its ``get_dev_to_use`` picks it: ``dev`` unless it is
    the default (``ttyS0``) and ``ser`` is set (not 0), then ``ttyS<ser>``; None if that
    cannot be told."""
    dev, ser = (dev or "").strip(), (ser or "").strip()
    if not dev:
        return None
    if dev != "ttyS0" or ser == "0":
        return dev
    return f"ttyS{ser}" if ser else None


def _look_up_mounts(fs: Sysfs, mounts: list[Mount], budget: Budget, problems: list[str]
                    ) -> dict[tuple[str, str | None], tuple[str | None, bool]]:
    """(source, ``MAJ:MIN``) of each distinct mount -> (its block device by name,
    :func:`block_name`; whether its ``MAJ:MIN`` is a block device). Any user makes mounts
    with sources that read as /dev paths, thousands in each of many namespaces, and a lookup
    costs some eight times the mount's read: each distinct one is looked up once, within
    what is left of the mount tables' ``budget``; the mounts past it are a problem."""
    looked: dict[tuple[str, str | None], tuple[str | None, bool]] = {}
    left = 0
    for m in mounts:
        key = (m.source, m.majmin)
        if key in looked:
            continue
        if not budget.allows():
            left += 1
            continue
        with budget.timing():
            name = block_name(fs, m.source) if m.source.startswith("/dev/") else None
            looked[key] = name, bool(name is None and m.majmin
                                     and fs.sys("dev", "block", m.majmin).exists())
    if left:
        problems.append(f"the mount tables and their {len(looked) + left} distinct mounts took "
                        f"more than {budget.seconds:g} s to read and look up: {left} mounts "
                        f"were not looked up (the first: {_first_left(mounts, looked)}), so "
                        "which disks they are on is unknown; a user may make that many")
    return looked


def _first_left(mounts: list[Mount], looked: dict) -> str:
    """The first mount :func:`_look_up_mounts` did not look up, for its problem."""
    m = next(m for m in mounts if (m.source, m.majmin) not in looked)
    return f"{m.mountpoint} ({m.source}, {m.fstype})"


def _loop_backing(fs: Sysfs, lookups: Lookups) -> tuple[dict[str, str], list[str]]:
    """The block devices loop devices read directly (``losetup /dev/loop0 /dev/sdb``; kubelet's
    loop over a raw volume's node bind-mounted for a pod, a node made anywhere): disk ->
    loop, matched by the backing node's number, not only by a /dev name. The loop holds its
    disk with no holders/ link, no claim and no process fd. And the loops whose backing file
    cannot be told: any disk may be theirs."""
    backed, unknown = {}, []
    for loop in sorted(fs.sys("class", "block").glob("loop*")):
        backing = _backing_file(loop)
        if not backing:
            continue  # (no backing file: the loop is not set up)
        name, why = _loop_disk(fs, loop, backing, lookups)
        if why:
            unknown.append(f"{loop.name}, whose backing {why}")
        elif name:
            backed[name] = loop.name
    return backed, unknown


def _backing_file(loop: Path) -> str | None:
    """A loop's ``loop/backing_file``; None when the loop is not set up (no ``loop/`` folder,
    or nothing in it). One that is set up but whose path cannot be read (the kernel prints it
    into a page, and fails with ENAMETOOLONG for a longer one) is named by that error in
    :data:`_UNPRINTED`: the loop still reads a file, which the kernel is asked about."""
    try:
        return (loop / "loop" / "backing_file").read_text(errors="replace").rstrip("\n")
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"{_UNPRINTED} ({e.strerror})"


def _loop_disk(fs: Sysfs, loop: Path, backing: str, lookups: Lookups
               ) -> tuple[str | None, str | None]:
    """(the disk a loop reads, None); (None, None) for an image file; (None, why) when that
    cannot be told. The kernel's word first (:func:`_loop_rdev`): it holds whichever mount
    namespace the path is printed for; without a node of the loop here, the path (and
    without a path the kernel printed, nothing: unknown)."""
    if fs.real_host:
        try:
            rdev = _loop_rdev(fs, loop, lookups)
        except TimeoutError as e:
            return None, f"file {backing} did not answer the kernel ({e}): it may be a disk's node"
        except OSError:
            rdev = None  # (no node of the loop here to ask: the path, below)
        if rdev == 0:
            return None, None  # a regular file: an image
        if rdev is not None:
            name = _block_of(fs, rdev)
            return (name, None) if name else (
                None, f"node {backing} is of no block device this host lists")
    if backing.startswith(_UNPRINTED):
        return None, (f"file is {backing}, and the kernel could not be asked which device it "
                      "reads (LOOP_GET_STATUS64 through the loop's node): it may be a disk's "
                      "node")
    name = block_name(fs, backing) if backing.startswith("/dev/") else None
    if name is not None:
        return name, None
    try:  # (a path on a file server that does not answer waits: bounded)
        mode, rdev = lookups.node_type(str(fs.path(backing.lstrip("/"))),
                                       f"{backing} ({loop.name}'s backing file)")
    except (OSError, TimeoutError) as e:
        return None, (f"file {backing} cannot be looked at ({getattr(e, 'strerror', None) or e}):"
                      " it may be a disk's node in another mount namespace")
    if stat.S_ISDIR(mode):  # ("/": set up in a mount namespace since gone)
        return None, (f"file the kernel prints as {backing}: its mount is in no namespace any "
                      "more, and it may be a disk's node")
    if not stat.S_ISBLK(mode):
        return None, None  # an image file
    name = _block_of(fs, rdev)
    return (name, None) if name else (None, f"node {backing} is of no block device this host "
                                            "lists")


#: LOOP_GET_STATUS64 and the size of its struct loop_info64; ``lo_rdevice`` at offset 16.
_LOOP_GET_STATUS64, _LOOP_INFO64_SIZE = 0x4C05, 232


def _loop_rdev(fs: Sysfs, loop: Path, lookups: Lookups) -> int:
    """The device number of a loop device's backing file as the kernel has it
    (``LOOP_GET_STATUS64``'s ``lo_rdevice``: a block device's number, 0 for a regular file),
    whatever path it prints the file as. The ioctl asks the file's filesystem (a FUSE file's
    daemon), so it is bounded (:class:`Lookups`). Raises OSError or TimeoutError."""
    node = fs.path("dev", devname(loop, fs))
    want = fs.read(loop / "dev")

    def look() -> int:
        fd = os.open(node, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            if not stat.S_ISBLK(st.st_mode) or \
                    f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" != want:
                raise OSError(errno.ENODEV, f"{node} is not {loop.name}'s node")
            buf = bytearray(_LOOP_INFO64_SIZE)
            fcntl.ioctl(fd, _LOOP_GET_STATUS64, buf)
            return int.from_bytes(buf[16:24], "little")
        finally:
            os.close(fd)
    return lookups.within(look, f"{loop.name}'s backing file")


def _block_of(fs: Sysfs, rdev: int) -> str | None:
    """The block device (``sdb``, ``sdb1``) of a device number, or None."""
    disk = fs.sys("dev", "block", f"{os.major(rdev)}:{os.minor(rdev)}")
    return os.path.basename(os.path.realpath(disk)) if disk.exists() else None


def _wwids(fs: Sysfs) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(block device -> its world-wide id, world-wide id -> its block devices)."""
    wwid_of = {blk.name: w for blk in sorted(fs.sys("class", "block").glob("*"))
               if (w := _wwid(fs, blk))}
    by_wwid: dict[str, list[str]] = {}
    for name, w in wwid_of.items():
        by_wwid.setdefault(w, []).append(name)
    return wwid_of, by_wwid


def scsi_nodes(fs: Sysfs, disk: str) -> list[tuple[Path, str | None]]:
    """The device nodes below a disk's SCSI device (``device/scsi_generic/sg5``,
    ``device/bsg/11:0:0:0``), with their ``MAJ:MIN``: through them a process sends the disk any
    command (reads, writes, persistent reservations: QEMU's scsi-generic for a libvirt
    ``<hostdev type='scsi'>``, ``sg_persist``, ``sg_dd``) with no block device open."""
    scsi = Path(os.path.realpath(fs.sys("class", "block", disk, "device")))
    return [(node, fs.read(node / "dev")) for kind in ("scsi_generic", "bsg")
            for node in sorted(scsi.glob(f"{kind}/*")) if (node / "dev").exists()]


def other_paths(fs: Sysfs, disks: list[str],
                wwids: "tuple[dict[str, str], dict[str, list[str]]] | None" = None
                ) -> list[tuple[str, list[tuple[Path, str | None]]]]:
    """The same media reached another way: the whole disks, not among ``disks``, with the
    world-wide id of one of them (a dual-ported SAS disk cabled to two HBAs without
    dm-multipath: sdd behind one, sde behind the other), each with its SCSI device's nodes
    (:func:`scsi_nodes`: sde's /dev/sg5). One list for the proof
    (:meth:`StorageView.use_of_block`) and for the claim and its re-reads
    (:func:`harness.host.safety.disks_below`, ``nodes_below``), so the twin a guest holds
    through its generic node is neither proven idle nor left out of the claim. ``wwids``:
    :func:`_wwids`, if read."""
    wwid_of, by_wwid = wwids if wwids is not None else _wwids(fs)
    twins = [twin for name in disks if name in wwid_of
             for twin in by_wwid[wwid_of[name]] if twin not in disks]
    return [(twin, scsi_nodes(fs, twin)) for twin in dict.fromkeys(twins)]


def _wwid(fs: Sysfs, blk: Path) -> str | None:
    """A whole disk's world-wide id, or None (a partition; a hidden NVMe path, whose head is
    judged as the namespace's own device; a disk without one)."""
    if (blk / "partition").exists() or fs.read(blk / "hidden") == "1":
        return None
    for rel in ("wwid", "device/wwid"):
        text = (fs.read(blk / rel) or "").strip()
        if text:
            return text
    return None
