"""Issue 31, twenty-third adversarial read. What it found, one section below each:

1. a process that reads a disk through a file it registered with io_uring, and then has
   another file mounted over that path in its mount namespace, leaves the disk idle: the
   registered file is looked up *by path* through the holder's root
   (:meth:`harness.host.storage.OpenFiles._look_up_registered`, the seventeenth read's
   fix), and the path now names the file on top, a plain file: no device number is
   recorded, the path (``/srv/vol``, not ``/dev/loopN``) matches no node, and no problem is
   said. The holder controls what its root resolves a path to (a mount over it, a
   ``chroot`` or ``pivot_root`` after registering; an unprivileged user in a user and mount
   namespace of their own, for a device they may open: a ``dialout`` serial adapter, a
   ``uaccess`` USB node), so a path lookup there is no evidence. Likely: low by accident
   (a container that mounts over its volume path), by intent for any user with a device;
   bad: the worst kind (a device in use is taken).

2. any local user makes every read of the host take as long as they like, with mounts alone:
   :func:`harness.host.storage.mountinfos` reads the whole ``mountinfo`` of every mount
   namespace, with no bound on the time or the size, and the kernel's cost of that file grows
   with the *square* of how deep mounts are stacked (twice the depth took 4.6 times as long): 20000 bind mounts stacked on one folder took 2.4 s to
   read here, 40000 took 11.2 s. nobody, in a user and mount namespace of theirs (no
   privilege; ``fs.mount-max`` is 100000 a namespace), stacks 15000 and forks 15 copies of
   the table (``unshare(CLONE_NEWNS)``; 6 s to make): the storage read took 31 s here, 23 s
   of it in ``mountinfos``; 20 copies of 50000 make every ``doctor``, ``plan``, ``discover``,
   bind (the journal's lock held) and give-back take minutes (the network read and
   finding 4's ``_mounted_as`` read the same tables again), and nothing says why. Likely: by
   intent; bad: as the twenty-second read's second (a CI job's timeout kills the run before
   the give-back).

3. any local user makes every read of the host's open files take hours again, past the
   twenty-second read's fifth fix (f6a0f92, :func:`harness.host.storage._copied`): a fork's
   fd is skipped only when ``kcmp`` says it is its parent's *same open file*, and the
   parent's table is kept only when ``/proc/PID/task/PID/children`` lists a child. Two
   one-line changes keep every entry read: (a) each fork points its copied fds at an open
   file of its own (``dup2(open("/dev/null"), fd)`` over each: the same 8 bytes of kernel
   memory an fd, and no copy for ``kcmp`` to find), (b) the forks are made by a thread other
   than the main one (the kernel lists a child under the thread that forked it:
   ``task/PID/children`` is empty, so the table is not kept; Go and Java programs fork from
   any thread). nobody's 20000 fds and 1000 forks are again 20 million entries, about 35
   minutes for every ``doctor``, ``plan``, ``discover``, bind (the journal's lock held),
   ``restore`` and run's end, and nothing said: there is still no bound on the fds read in
   all where kcmp answers. Likely: by intent; bad: as the twenty-second's fifth.

4. any local user makes every read of the host's open files take as long as they like with
   FUSE files mapped: the twenty-second read's first fix (13cf2b2,
   :func:`harness.host.storage._on_fuse`) reads the *whole* ``/proc/PID/mountinfo`` of each
   mapper (:func:`~harness.host.storage._mounted_as`) once for each denied file it maps, with
   no cache and no bound: files times mappers reads of a table the user sizes (``fs.mount-max``
   is 100000 mounts a namespace; nobody makes them in a user and mount namespace of theirs).
   Here, a namespace with 20000 bind mounts stacked on one folder took 2.5 s for one
   ``_mounted_as`` (the kernel's mountinfo read is the cost, and grows faster than the table);
   three processes in it mapping 30 files of nobody's FUSE mount are 90 reads, about 4
   minutes, and 1000 files hours, in every ``doctor``, ``plan``, bind (the journal's lock
   held) and give-back. Likely: by intent; bad: no bind and no give-back while it lasts.

5. a FUSE mount lazily unmounted while a program still maps one of its files
   (``fusermount -uz``, the usual way out of a hung sshfs; an AppImage runtime that went
   away before its children) leaves every device on the host unproven: the mount is in no
   mountinfo, so :func:`harness.host.storage._on_fuse` is False and the denial (FUSE still
   refuses root) is "1 files mapped by pid N cannot be looked at through
   /proc/PID/map_files (permission denied: run as root, outside any LSM confinement)", in
   every verdict. Likely: medium on shared hosts with sshfs users; bad: a false refusal that
   names an LSM that is not there, until that program ends.

Case 1: review 17's io_uring reader, as root in a mount namespace of its own or as nobody in
a user and mount namespace of theirs (review 16's loop disk, made readable to all,
bind-mounted over a plain file), then a second plain file bind-mounted over that path in the
reader's namespace; the control: nothing mounted over it. Case 2: nobody's 16 mount
namespaces of 15000 stacked bind mounts, the storage read bounded at 2.5 times the lookups'
bound (12.5 s); the control: 100 stacked. Case 3: review 22's count of the fd entries a read
looks at for nobody's process with 2000 fds and 20 forks, the forks remaking their fds (a) or
made by a thread (b); review 22's own case 5 (plain forks) is the control. Case 4: nobody's
FUSE mount with 30 files, three of nobody's processes mapping all of them, the
``_mounted_as`` calls of one storage read counted (not seconds). Case 5: review 22's sized
FUSE mount, nobody's mapper, the mount then detached (review 22's case 1, attached, is the
control). Each fails on the code as it is (56b34f5): 1 with a list without the reader's pid
(the disk is idle while the reader still reads it; only this host's own problems), 2 "the
host's storage read did not end in 12.5 s ...", 3 "the read looked at 42023 fds of 21
processes ..., 2003 of one, and said nothing" (42063 for b), 4 "the read read nobody's mount
tables 90 times for 3 processes that map 30 files ...", 5 "1 files mapped by pid N cannot be
looked at through /proc/PID/map_files (permission denied ...)"; the controls pass. No guest
is booted.
"""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from harness.host import storage
from harness.host.storage import StorageView
from harness.host.sysfs import Sysfs

from . import fusestub, test_host_idle_review22 as review22
from .hostload import scale_budgets
from .test_host_idle_review16 import URING, loop_disk as _loop_disk
from .test_host_idle_review17 import NOBODY_RUN
from .test_host_idle_review19 import fuse_in_a_folder
from .test_host_idle_review22 import _SizedFuse, _map_as
from .test_host_idle_review22 import nobodys_sized_fuse as _nobodys_sized_fuse
from .test_paths import as_root

#: The real-host cases make namespaces and processes of nobody's and read the whole host.
pytestmark = pytest.mark.xdist_group("real-host-namespaces")
loop_disk, nobodys_sized_fuse = _loop_disk, _nobodys_sized_fuse  # fixtures


# -- 1. a registered file looked up by a path its holder controls ------------------------------

#: Who reads the disk and has the other file mounted over its path: root in a mount namespace
#: of its own (a container), or nobody in a user and mount namespace of theirs, for a disk they
#: may open (here the loop device made readable to all: a ``dialout`` or ``uaccess`` node).
READERS = {"root": ([], ["unshare", "--mount", "--propagation", "private"], []),
           "nobody": (NOBODY_RUN, ["unshare", "-Urm", "--propagation", "private"],
                      ["-U", "--preserve-credentials"])}
#: A Python that nobody may run in a user namespace of theirs too (this host's own may sit in
#: /root, which nobody reaches only outside one).
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


@as_root
@pytest.mark.parametrize("who, over", [("root", True), ("nobody", True), ("nobody", False)],
                         ids=["root", "nobody", "control-nobody-nothing-over-it"])
def test_1_a_disk_read_through_io_uring_with_another_file_mounted_over_its_path_is_in_use(
        loop_disk, who, over):
    run, unshare, enter = READERS[who]
    name, top = os.path.basename(loop_disk), Path(tempfile.mkdtemp(prefix="hh-test-r23-"))
    plain, other, script = top / "volume", top / "other", top / "uring.py"
    for path, text in ((plain, ""), (other, ""), (script, URING)):
        path.write_text(text)
        path.chmod(0o644)
    top.chmod(0o755)
    mode = stat.S_IMODE(os.stat(loop_disk).st_mode)
    os.chmod(loop_disk, 0o666 if who == "nobody" else mode)
    child = subprocess.Popen(
        run + unshare + ["sh", "-c", 'mount --bind "$1" "$2" && exec "$3" "$4" "$2" fd', "sh",
                         loop_disk, str(plain), PYTHON, str(script)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        first = child.stdout.readline().strip()
        if first != "reading":
            pytest.skip(f"io_uring or unshare is not usable here: {first or child.wait()}")
        if over:  # (in the holder's own mount namespace)
            subprocess.run(run + ["nsenter", "-t", str(child.pid), *enter, "-m", "mount",
                                  "--bind", str(other), str(plain)], check=True)
        view = StorageView.read(Sysfs("/"))
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "still reading"  # (in use all along)
    finally:
        child.kill()
        child.wait()
        os.chmod(loop_disk, mode)
        subprocess.run(["rm", "-rf", "--one-file-system", str(top)], check=False)
    seen = view.use_of_block(name) + view.problems
    assert any(f"pid {child.pid}" in u for u in seen), seen


# -- 2. mount tables a user sizes, each read whole ----------------------------------------------

#: nobody's program, in a user and mount namespace of theirs: a tmpfs on /tmp (theirs only),
#: ``argv[1]`` bind mounts stacked on /tmp/a, then ``argv[2]`` forks that each take a copy of
#: that table (``unshare(CLONE_NEWNS)``); prints "ready" once all are made (its pid, with
#: ``argv[3]`` ``pid``).
STACKER = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
depth, copies = int(sys.argv[1]), int(sys.argv[2])
if libc.mount(b"hh-r23", b"/tmp", b"tmpfs", 0, None):
    sys.exit("tmpfs: " + os.strerror(ctypes.get_errno()))
os.mkdir("/tmp/a")
for _ in range(depth):
    if libc.mount(b"/tmp/a", b"/tmp/a", None, 4096, None):  # MS_BIND, on the one before
        sys.exit("bind: " + os.strerror(ctypes.get_errno()))
done, tell = os.pipe()
for _ in range(copies):
    if os.fork() == 0:
        libc.unshare(0x20000)  # CLONE_NEWNS
        os.write(tell, b".")
        time.sleep(600)
        os._exit(0)
told = b""
while len(told) < copies:  # (a pipe's read returns what is there: wait for them all)
    told += os.read(done, copies - len(told))
print(os.getpid() if sys.argv[3:] == ["pid"] else "ready", flush=True)
time.sleep(600)
"""


@as_root
@pytest.mark.parametrize("depth", [15000, 100], ids=["stacked-15000", "control-stacked-100"])
def test_2_mount_tables_a_user_makes_slow_do_not_stall_the_read(depth, monkeypatch):
    """The mount tables' budget, made 2 s here (their unbounded read took 31 s on a quiet
    machine), ends the read well inside the bound even on a loaded one, and says so."""
    f = scale_budgets(monkeypatch)
    monkeypatch.setattr(storage, "MOUNT_TABLES_BUDGET", 2.0 * f)
    bound = storage.MOUNT_TABLES_BUDGET + 4 * storage.DETACHED_STAT_TIMEOUT
    view = read_beside(["unshare", "-Urm", "--propagation", "private", PYTHON, "-c", STACKER,
                        str(depth), "15"], lambda: StorageView.read(Sysfs("/")), bound)
    assert view is not None, (
        f"the host's storage read did not end in {bound:g} s: nobody's 16 mount namespaces of "
        f"{depth} bind mounts stacked on one folder are each read whole, and said nothing")
    assert depth < 1000 or any("the mount tables took more than" in p for p in view.problems)


def read_beside(maker: list[str], read, bound: float):
    """``read()``'s value while nobody's ``maker`` (a command that prints ``ready`` once it
    has made what it makes) lives, or None if it did not end in ``bound`` seconds; the maker
    and all it started are ended after, and the read is let finish then."""
    box: list = []
    reader = None
    proc = subprocess.Popen(NOBODY_RUN + maker, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd="/", start_new_session=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            pytest.skip(f"nobody's {maker[0]} could not make it here: {proc.stderr.read()}")
        reader = threading.Thread(target=lambda: box.append(read()), daemon=True)
        reader.start()
        reader.join(bound)
        return box[0] if box else None
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        if reader is not None:
            reader.join(600)  # (what it read gone, it ends; none left for the next test)


# -- 3. forks whose fds are no copies to kcmp, or forked by a thread ---------------------------

#: Review 22's FORKER, the forks made by ``WHERE`` (``main``, or a thread that stays) and with
#: ``HOW`` ``own`` each pointing every copied fd at an open file of its own.
FORKER = """
import os, resource, sys, threading, time
fds, children = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (fds + 64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
null = os.open("/dev/null", os.O_RDONLY)
mine = [null] + [os.dup(null) for _ in range(fds - 1)]
pids, done = [os.getpid()], threading.Event()
def fork_all():
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            if "HOW" == "own":
                own = os.open("/dev/null", os.O_RDONLY)
                for fd in mine:
                    os.dup2(own, fd)
            time.sleep(600)
            os._exit(0)
        pids.append(pid)
    done.set()
if "WHERE" == "thread":
    threading.Thread(target=lambda: (fork_all(), time.sleep(600)), daemon=True).start()
    done.wait()
else:
    fork_all()
print(*pids, flush=True)
time.sleep(600)
"""


def _host_fds() -> int:
    """How many fds the host's processes hold now."""
    count = 0
    for fds in Path("/proc").glob("[0-9]*/fd"):
        try:
            count += len(os.listdir(fds))
        except OSError:
            pass  # (gone)
    return count


@as_root
@pytest.mark.parametrize("how, where", [("own", "main"), ("copied", "thread")],
                         ids=["forks-remake-their-fds", "forked-by-a-thread"])
def test_3_forks_do_not_multiply_the_read_whatever_their_fds_or_forker(how, where):
    """Forks that copied their fds are read through their parent, whichever thread forked
    them; forks that remade theirs are no copies, and the read's bound on fds in all
    (:data:`~harness.host.storage.MAX_FDS_READ`, put here between this host's fds with one
    such table and with 21) stops it, naming where."""
    program = FORKER.replace("HOW", how).replace("WHERE", where)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(review22, "FORKER", program)
        alone, _, _ = review22._entries_read_of_forks(0)
        patch.setattr(storage, "MAX_FDS_READ", _host_fds() + 4 * alone)
        forked, problems, pids = review22._entries_read_of_forks(20)
    assert alone >= 2000
    named = [p for p in problems if any(f"pid {pid}" in p for pid in pids)]
    assert forked <= (1 + storage.MAX_OWN_TABLES) * alone or named, (
        f"the read looked at {forked} fds of 21 processes (a table of 2000 fds and 20 forks, "
        f"{how}, forked from {'the main' if where == 'main' else 'another'} thread), {alone} "
        "of one, and said nothing")


# -- 4. a mapper's mount table read again for each file it maps ---------------------------------

class _ManyFilesFuse(_SizedFuse):
    """Review 22's sized FUSE mount of nobody's, with files ``f0`` ... ``f29`` (nodes 2...)."""

    FILES = 30

    @staticmethod
    def _answer(opcode: int, node: int, body: bytes) -> tuple[int, bytes]:
        name = body.rstrip(b"\0").decode(errors="replace")
        if opcode == fusestub._GETATTR and node != 1:
            return 0, struct.pack("<QII", 0, 0, 0) + _file_attr(node)
        if opcode == fusestub._LOOKUP and node == 1 and name[1:].isdigit() and \
                name[0] == "f" and int(name[1:]) < _ManyFilesFuse.FILES:
            return 0, struct.pack("<QQQQII", int(name[1:]) + 2, 0, 0, 0, 0, 0) + \
                _file_attr(int(name[1:]) + 2)
        return _SizedFuse._answer(opcode, node, body)


def _file_attr(node: int) -> bytes:
    return fusestub._ATTR.pack(node, 4096, 0, 0, 0, 0, 0, 0, 0, 0o100644, 1, 0, 0, 0, 4096, 0)


MAP_ALL = ("import mmap, sys, time\nkept = []\n"
           "for path in sys.argv[1:]:\n"
           "    f = open(path, 'rb')\n"
           "    kept.append(mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ))\n"
           "    f.close()\n"
           "print('mapped', flush=True); time.sleep(600)\n")


@as_root
def test_4_each_mappers_mount_table_is_read_once_not_once_a_file():
    reads, mount_types = [0], storage._mount_types

    def counted(text):
        reads[0] += 1
        return mount_types(text)

    with fuse_in_a_folder(_ManyFilesFuse) as stub:
        files = [str(stub.mountpoint / f"f{i}") for i in range(_ManyFilesFuse.FILES)]
        for _ in range(3):
            proc = subprocess.Popen(NOBODY_RUN + [sys.executable, "-c", MAP_ALL, *files],
                                    stdout=subprocess.PIPE, text=True, cwd="/")
            stub.holders.append(proc)
            assert proc.stdout.readline() == "mapped\n"
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(storage, "_mount_types", counted)
            StorageView.read(Sysfs("/"))
    assert 1 <= reads[0] <= 3, (
        f"the read read nobody's mount tables {reads[0]} times for 3 processes that map "
        f"{_ManyFilesFuse.FILES} files of their FUSE mount: files times mappers, each table as "
        "large as they make it")


# -- 5. a mapping of a FUSE mount since lazily unmounted ----------------------------------------

@as_root
def test_5_a_file_mapped_from_a_users_detached_fuse_mount_leaves_the_devices_provable(
        nobodys_sized_fuse):
    holder = _map_as(nobodys_sized_fuse, NOBODY_RUN)
    nobodys_sized_fuse.detach()  # (fusermount -uz: the mapping stays, and FUSE's refusal)
    problems = StorageView.read(Sysfs("/")).problems
    theirs = [p for p in problems if f"pid {holder.pid}" in p]
    assert not theirs, theirs
