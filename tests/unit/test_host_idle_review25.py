"""Issue 31, twenty-fifth adversarial read. What it found, one section below each (the
docstring of each test says the host shape, the path and the result on 5f6a2dc).

1. (a) a disk held by a fork through a device node on a network or FUSE mount that allows
   devices is read idle when the fork's parent lets its copy go while the host is read.
2. (b) any local user makes every verdict (each function of ``discover``, ``plan``, a bind
   with the journal's lock held) take as long as they like: a holder's mount table is read
   again, whole and with no bound, for each of its processes, for each sysfs file of each
   function judged.
3. (b) any local user makes every read of the host's open files take as long as they like
   with io_uring file tables: each ring's fdinfo is read whole, with no budget.
4. (a) a disk mapped through a node at another path by two processes is read idle when the
   first maps another file at the same addresses while the host is read (review 24's first
   finding, its remap case).
5. (b) any local user makes every read of the host's network take as long as they like
   with mount namespaces kept by an fd, no process in them: each is visited and its
   table read whole, outside the mount tables' budget.
6. (b) any local user makes every read of the host's network take as long as they like
   with open files: every fd of every process is read, with no bound on them all (the
   storage read's ``MAX_FDS_READ`` and fork dedupe are not applied there).
7. (a) a disk registered with an io_uring at slot 10000 or above reads idle: the kernel
   prints such a slot with no space before it, and the ring's list is parsed for lines
   that begin with one.

Most important first: 7, 4 and 1 (a device in use taken), then 6, 2, 5 and 3 (stalls).
Each test fails on 5f6a2dc and names what it saw; the controls pass. No guest is booted.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from harness.host import network, storage
from harness.host.network import NetView
from harness.host.storage import StorageView, pci_file_holders
from harness.host.sysfs import Sysfs

from .test_host_idle_review16 import URING, read_while_it_reads
from .test_host_idle_review16 import loop_disk as _loop_disk
from .test_host_idle_review19 import fuse_in_a_folder
from .test_host_idle_review23 import PYTHON, STACKER, read_beside
from .test_host_idle_review24 import _node_fuse, read_with_two_mappers
from .hostload import scale_budgets
from .test_paths import as_root

#: The real-host cases make processes and namespaces of nobody's and read the whole host.
pytestmark = pytest.mark.xdist_group("real-host-namespaces")
loop_disk = _loop_disk  # fixture


def _bounded(what, seconds: float):
    """``what()``'s value, or None when it did not end in ``seconds`` (it is let finish)."""
    box: list = []
    thread = threading.Thread(target=lambda: box.append(what()), daemon=True)
    thread.start()
    thread.join(seconds)
    return box[0] if box else None, thread


# -- 1. a fork's copy of a node on a network or FUSE mount, looked up through its parent only --

#: Root's pre-forking server: opens the node ``argv[1]`` (a disk's, on a FUSE mount that
#: allows devices), reads the disk, keeps 70 more fds (a table the read keeps for its forks:
#: ``FORK_TABLE_MIN``), forks a worker that keeps the copy and reads through it, prints the
#: worker's pid; then, on a line read, closes its own copy (``close``) and says so.
FORKING_SERVER = textwrap.dedent("""
    import os, sys, time
    fd = os.open(sys.argv[1], os.O_RDONLY)
    assert os.pread(fd, 11, 0) == b"HH-REVIEW16"
    kept = [os.open("/dev/null", os.O_RDONLY) for _ in range(70)]
    worker = os.fork()
    if worker == 0:
        while True:
            os.pread(fd, 11, 0)
            time.sleep(0.2)
    print(worker, flush=True)
    sys.stdin.readline()
    if sys.argv[2] == "close":
        os.close(fd)
    print("done", flush=True)
    time.sleep(600)
""")


@as_root
@pytest.mark.parametrize("parent", ["close", "keep"], ids=["parent-lets-go",
                                                            "control-parent-keeps"])
def test_1_a_disk_a_fork_holds_through_a_node_on_a_fuse_mount_stays_in_use(
        loop_disk, monkeypatch, parent):
    """(a) Host shape: a device node of a disk on a mount that allows devices (review 24's
    second finding: an NFS root of ``defaults``, a container root on NFS or
    fuse-overlayfs with its own /dev nodes; the lab's own root is 9p without ``nodev``), and
    a pre-forking server (or a daemon's double fork) that opens it, forks its worker, and
    closes its own copy, or ends, while the host is read (a read takes seconds on a busy
    host: the whole read is the window).

    Path: :meth:`harness.host.storage.OpenFiles._add_fds` skips the worker's fd as a fork's
    copy (:func:`~harness.host.storage._copied`: the parent's of that number, the same
    open file) and names the worker only through the parent's holders; but
    :meth:`~harness.host.storage.OpenFiles._add_node` does not look a file on such a mount up
    then: it queues the *parent's* ``/proc/PID/fd/N`` (``_remote_files``), looked up once at
    the end of the read (:func:`~harness.host.storage._remote_numbers`), where ENOENT
    ("closed since, holds nothing") drops it. The worker's copy is looked up by no one: the
    disk has no holder by number, its path is no ``/dev`` name, and it reads idle, nothing
    said. The parent closes its copy in the test when the read reaches the queued lookups
    (told then, as review 24's first test tells its mapper).

    On 5f6a2dc: the list holds neither pid (the disk is idle while the worker reads it);
    the control (the parent keeps its copy) names both. Fix: queue each fork's copy with its
    parent's (or look the file up through every holder of it, as review 24's fix looks a
    mapped file up through each mapper in turn), or look remote files up as they are read."""
    name, rdev = os.path.basename(loop_disk), os.stat(loop_disk).st_rdev
    with fuse_in_a_folder(_node_fuse(rdev)) as fuse:
        server = subprocess.Popen([PYTHON, "-c", FORKING_SERVER, str(fuse.mountpoint / "f"),
                                   parent], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, cwd="/", start_new_session=True)
        try:
            worker = int(server.stdout.readline())
            if worker < server.pid:
                pytest.skip("pids wrapped between the server and its worker")
            view = read_as_the_parent_lets_go(monkeypatch, server)
            assert os.path.exists(f"/proc/{worker}/fd")  # (the worker holds it all along)
        finally:
            os.killpg(server.pid, signal.SIGKILL)  # (the worker too: its group)
            server.wait()
    seen = view.use_of_block(name) + view.problems
    assert any(f"pid {worker} " in u for u in seen), seen


def read_as_the_parent_lets_go(monkeypatch, server: subprocess.Popen) -> StorageView:
    """The host's storage read, the forking ``server`` told (a line) to close its own copy at
    the read's queued lookups (the end of the read), which it answers ``done``."""
    queued = storage._remote_numbers

    def after_the_parent_let_go(*args):
        server.stdin.write("\n")
        server.stdin.flush()
        assert server.stdout.readline().strip() == "done"
        return queued(*args)

    monkeypatch.setattr(storage, "_remote_numbers", after_the_parent_let_go)
    return StorageView.read(Sysfs("/"))


# -- 2. a holder's mount table read again, whole, for each of its processes and each file ------

#: nobody's program, in a user and mount namespace of theirs: a tmpfs on /tmp (its inode
#: numbers count from 2), files made until one has the inode number ``argv[1]`` (a PCI
#: function's sysfs ``config``: ``stat`` shows it to anyone), renamed ``config``;
#: ``argv[2]`` bind mounts stacked on /tmp/a; then ``argv[3]`` processes in that namespace
#: that each open ``config`` (an fd of their own: no fork's copy); prints "ready".
NAMESAKE = textwrap.dedent("""
    import ctypes, os, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    inode, depth, holders = (int(a) for a in sys.argv[1:4])
    if libc.mount(b"hh-r25", b"/tmp", b"tmpfs", 0, None):
        sys.exit("tmpfs: " + os.strerror(ctypes.get_errno()))
    os.mkdir("/tmp/made")
    for n in range(inode + 2):
        path = f"/tmp/made/{n}"
        open(path, "w").close()
        if os.stat(path).st_ino == inode:
            os.rename(path, "/tmp/config")
            break
    else:
        sys.exit("no file got the inode number " + str(inode))
    os.mkdir("/tmp/a")
    for _ in range(depth):
        if libc.mount(b"/tmp/a", b"/tmp/a", None, 4096, None):  # MS_BIND, on the one before
            sys.exit("bind: " + os.strerror(ctypes.get_errno()))
    done, tell = os.pipe()
    for _ in range(holders):
        if os.fork() == 0:
            kept = open("/tmp/config")
            os.write(tell, b".")
            time.sleep(600)
            os._exit(0)
    os.read(done, holders)
    print("ready", flush=True)
    time.sleep(600)
""")


def _a_function() -> Path:
    functions = sorted(Path("/sys/bus/pci/devices").glob("*/config"))
    if not functions:
        pytest.skip("no PCI function on this host")
    return functions[-1]


@as_root
@pytest.mark.parametrize("depth", [12000, 50], ids=["stacked-12000", "control-stacked-50"])
def test_2_a_users_namesake_of_a_functions_file_does_not_stall_each_verdict(depth, monkeypatch):
    """(b) Host shape: any multi-user host; the user needs nothing but ``unshare -Urm``
    (Debian, Ubuntu and RHEL allow unprivileged user namespaces).

    Path: :func:`harness.host.storage.pci_file_holders` (from
    :meth:`harness.host.safety.HostUsage._bars`, for each of a function's ``resource*``,
    ``config``, ``rom`` and /proc/bus/pci files, for each function judged) asks, for each
    holder of a file of that name and inode number on another filesystem,
    :func:`~harness.host.storage._mounted_as`, which reads that holder's
    ``/proc/PID/mountinfo`` through :func:`~harness.host.storage._mount_types`: whole, each
    time (no cache across holders, files or verdicts), and with no bound (review 23's
    ``MOUNT_TABLES_BUDGET`` bounds only :func:`~harness.host.storage.mountinfos`; the kernel's
    cost of that file grows with the square of the mounts stacked). A file's name is the
    user's to choose and its inode number too (a tmpfs of their own counts from 2; a FUSE
    daemon answers any), so nobody's 20 processes holding a ``config`` with the inode
    number of a function's ``config``, in a namespace with 12000 bind mounts stacked, cost
    20 reads of that table for this one file of this one function (of ``discover``'s every
    candidate; a bind does it with the journal's lock held); :func:`~harness.host.storage.
    _on_fuse` reads each mapper's table the same way for files mapped from a FUSE mount
    that refuses root. ``fs.mount-max`` (100000) and the user's process limit bound it only
    in hours.

    On 5f6a2dc: the one call did not end in the bound (the storage read before it is not
    counted); the control (50 stacked) ends at once. Fix: read each mount namespace's table
    once per read, within ``MOUNT_TABLES_BUDGET`` (the ``infos`` :func:`mountinfos` read
    already, by namespace), and count one that was not read as not known (the holder
    counts)."""
    config = _a_function()
    f = scale_budgets(monkeypatch)
    monkeypatch.setattr(storage, "MOUNT_TABLES_BUDGET", 3.0 * f)  # (the read before: bounded)
    bound = 2 * storage.DETACHED_STAT_TIMEOUT

    def read_then_judge():
        view = StorageView.read(Sysfs("/"))
        start = time.monotonic()
        found, thread = _bounded(lambda: pci_file_holders(view.opened, config, "sysfs"), bound)
        return time.monotonic() - start, found, thread

    got = read_beside(["unshare", "-Urm", "--propagation", "private", PYTHON, "-c", NAMESAKE,
                       str(os.stat(config).st_ino), str(depth), "20"], read_then_judge,
                      bound + 60 * f)
    assert got is not None, "the storage read itself did not end"
    took, found, thread = got
    thread.join(600)  # (none left for the next test)
    assert found is not None, (
        f"who holds {config} was not told in {bound:g} s ({took:.1f} s): nobody's 20 "
        f"holders of a file named config with its inode number, in a namespace of {depth} "
        "stacked mounts, each had their mount table read whole, with no bound")
    assert found == set()  # (theirs is no sysfs: nobody holds the function's file)


# -- 3. io_uring file tables a user sizes, each read whole with no bound ------------------------

#: nobody's program: one file at a path of about 3800 bytes below ``argv[1]``, registered
#: ``argv[3]`` times (one slot each: the same fd may fill every slot) with each of ``argv[2]``
#: io_urings (the slots' count is bounded by the user's open-file limit, raised to its hard
#: one: 20000 here, 524288 on Debian and Ubuntu with systemd); the file's own fd closed;
#: prints "ready".
RINGS = textwrap.dedent("""
    import ctypes, os, resource, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    top, rings, slots = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    slots = min(slots, hard - rings - 16)
    path = os.path.join(top, *(chr(97 + i) * 250 for i in range(15)))
    os.makedirs(path)
    open(os.path.join(path, "f"), "w").close()
    fd = os.open(os.path.join(path, "f"), os.O_RDONLY)
    params = ctypes.create_string_buffer(120)  # (struct io_uring_params)
    fds = (ctypes.c_int * slots)(*([fd] * slots))
    kept = []
    for _ in range(rings):
        ring = libc.syscall(425, 4, params)  # io_uring_setup
        if ring < 0 or libc.syscall(427, ring, 2, fds, slots) < 0:  # REGISTER_FILES
            sys.exit("io_uring: " + os.strerror(ctypes.get_errno()))
        kept.append(ring)
    os.close(fd)
    print("ready", flush=True)
    time.sleep(600)
""")


@as_root
@pytest.mark.parametrize("slots", [19000, 10], ids=["slots-19000", "control-slots-10"])
def test_3_io_uring_file_tables_a_user_fills_do_not_stall_the_read(slots, monkeypatch):
    """(b) Host shape: any host where unprivileged io_uring is allowed
    (``kernel.io_uring_disabled`` 0: the kernel's default, Debian's and Ubuntu's).

    Path: :meth:`harness.host.storage.OpenFiles._add_ring` reads each ring fd's
    ``/proc/PID/fdinfo/N`` (``_fdinfo``: ``fs.read``, whole, outside
    :class:`~harness.host.storage.Lookups` and with no budget, up to three times when the
    list is left out), and the kernel renders a ring's whole ``UserFiles:`` list in one
    ``seq_file`` show, one line per slot with the file's path: a buffer doubled until it
    fits, however little of it is read. A ring with 19000 slots of one file at a 3800-byte
    path is 72 MB of fdinfo and took 2.7 s of the kernel's time here to read; 524288 slots
    (Debian's hard limit) near 1 GB, which the harness then holds three or four times over
    (``partition``, ``findall``). No budget covers it: not ``MAX_FDS_READ`` (slots are no
    fds), not ``MAPS_BUDGET``, not the lookups' bound (the lookup of the paths that follows
    is bounded, the read before it is not). nobody's 12 such rings made the storage read
    take longer than the bound here; each ring costs a few kB of the user's open files and
    about 1 MB of their kernel memory, so thousands are hours, in every ``doctor``, ``plan``,
    bind (the journal's lock held) and give-back, and nothing says why.

    On 5f6a2dc: "the host's storage read did not end in 20 s ..."; the control (10 slots)
    ends at once. Fix: read rings' fdinfo in the bounded worker (``Lookups.read``) under a
    budget for them all, as ``MAPS_BUDGET`` bounds the maps, and count a ring not read (or
    past a size cap, as ``MAX_MAPS_BYTES``) as unproven: a size cap alone does not bound the
    kernel's rendering."""
    top = Path(tempfile.mkdtemp(prefix="hh-test-r25-"))
    top.chmod(0o755)
    os.chown(top, 65534, 65534)
    scale_budgets(monkeypatch)
    bound = storage.MAPS_BUDGET + 2 * storage.DETACHED_STAT_TIMEOUT
    try:
        view = read_beside([PYTHON, "-c", RINGS, str(top), "12", str(slots)],
                           lambda: StorageView.read(Sysfs("/")), bound)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(top)], check=False)
    assert view is not None, (
        f"the host's storage read did not end in {bound:g} s: nobody's 12 io_urings of "
        f"{slots} registered slots each of one file at a long path are each read whole, and "
        "nothing said")


# -- 4. a mapped node looked at through a mapper that mapped another file there since ---------

#: Maps ``argv[1]`` (a disk's node; its fd closed) and prints its first bytes; with ``argv[2]``
#: ``remap``, on a line read maps the plain file ``argv[3]`` over the same addresses
#: (``MAP_FIXED``: what a program's next mapping of that size gets anyway, the kernel handing
#: out the range just freed) and says so; then stays.
REMAP_NODE = textwrap.dedent(r"""
    import ctypes, os, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    fd = os.open(sys.argv[1], os.O_RDONLY)
    at = libc.mmap(None, 4096, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
    os.close(fd)
    print(ctypes.string_at(at, 11).decode(), flush=True)
    if sys.argv[2] == "remap":
        sys.stdin.readline()
        plain = os.open(sys.argv[3], os.O_RDONLY)
        if libc.mmap(at, 4096, 1, 1 | 0x10, plain, 0) != at:  # MAP_SHARED | MAP_FIXED
            sys.exit("remap: " + os.strerror(ctypes.get_errno()))
        os.close(plain)
        print("remapped", flush=True)
    time.sleep(600)
""")


@as_root
@pytest.mark.parametrize("remap", [True, False], ids=["first-remaps", "control-first-stays"])
def test_4_a_disk_mapped_through_a_node_stays_in_use_when_its_first_mapper_maps_another_file(
        loop_disk, tmp_path, monkeypatch, remap):
    """(a) Host shape: review 24's first: a disk mapped through a node at a path other than
    its ``/dev`` name (a container's ``/dev/xvdb``, made with the host's numbers) by two
    processes, the first of which maps something else at those addresses while the host is
    read (a program that maps, reads, unmaps and maps its next file of that size gets the
    same range back from the kernel: the window is the whole read).

    Path: review 24's fix (0c10b94) keeps a way to the file through each mapper
    (``map_files/START-END``) and :func:`harness.host.storage._first_type` goes on to the
    next only when one is gone (ENOENT, ESRCH); a way that leads to *another* file now (the
    range mapped anew: ``map_files`` follows whatever is mapped at those addresses) is
    taken as the file's: a plain file, and :func:`~harness.host.storage._mapped_numbers`
    drops the device for all its mappers, the second still mapping the disk. Review 24's
    text names this case ("one that maps another file at the same addresses turns the way
    into a plain file's, dropped as well"); its test only unmaps.

    On 5f6a2dc: the list holds no pid of the second mapper (the disk is idle while it is
    mapped); the control (the first keeps it mapped) names both. Fix: take a way's answer
    only when what it leads to is the file ``maps`` named (its ``st_dev``/``st_ino``, from the
    kernel's cache as :func:`~harness.host.storage.cached_identity`, equal to the key's
    ``MAJ:MIN`` and inode), else try the next mapper."""
    name = os.path.basename(loop_disk)
    node = tmp_path / "xvdb"  # (a container's node of the disk, in its own /dev)
    os.mknod(node, stat.S_IFBLK | 0o600, os.stat(loop_disk).st_rdev)
    plain = tmp_path / "plain"
    plain.write_bytes(b"\0" * 4096)
    view, second = read_with_two_mappers(
        monkeypatch, [[PYTHON, "-c", REMAP_NODE, str(node), how, str(plain)]
                      for how in ("remap" if remap else "stay", "stay")], remap, "remapped")
    seen = view.use_of_block(name) + view.problems
    assert any(f"pid {second.pid}" in u for u in seen), seen


# -- 5. mount namespaces no process is in: each visited one's table read whole, with no bound --

#: nobody's program in the host's mount namespace: runs review 23's ``STACKER``, keeps an fd of
#: each of its mount namespaces (``/proc/PID/ns/mnt``: ``mnt:[N]`` in this process's fds),
#: ends every process in them, and prints "ready": the namespaces live on, no process in
#: them, held by its fds only (as ``unshare --mount=FILE`` or snapd keep theirs by a mount).
MOUNT_NS_KEEPER = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    inner = subprocess.Popen(["unshare", "-Urm", "--propagation", "private", sys.executable,
                              "-c", sys.argv[1], sys.argv[2], sys.argv[3], "pid"],
                             stdout=subprocess.PIPE, text=True)
    top = int(inner.stdout.readline())
    pids = [top] + [int(p) for t in os.listdir(f"/proc/{top}/task")
                    for p in open(f"/proc/{top}/task/{t}/children").read().split()]
    kept = [os.open(f"/proc/{p}/ns/mnt", os.O_RDONLY) for p in pids]
    for p in pids:
        os.kill(p, signal.SIGKILL)
    inner.wait()
    print("ready", flush=True)
    time.sleep(600)
""")


@as_root
@pytest.mark.parametrize("depth", [15000, 100], ids=["stacked-15000", "control-stacked-100"])
def test_5_mount_namespaces_a_user_keeps_do_not_stall_the_network_read(depth, monkeypatch):
    """(b) Host shape: any multi-user host (``unshare -Urm`` is all it takes).

    Path: :meth:`harness.host.nsholders.MountVisits.visit` (from
    :func:`harness.host.network._holders`, in each of up to 4 searches of every holder)
    enters each mount namespace that no process is in but an fd, a thread's link or an
    nsfs mount holds (up to ``MAX_VISITS``, 32) and reads its ``mountinfo`` through the
    helper with ``fs.read``: whole, with no bound. Review 23's ``MOUNT_TABLES_BUDGET``
    bounds :func:`~harness.host.storage.mountinfos` (the tables of namespaces processes are
    in) and nothing else, so a user who keeps their namespaces by an fd, after the processes
    in them end, moves the same cost past it: 17 namespaces of 15000 stacked bind mounts
    (one table made, 16 cheap copies: ``unshare(CLONE_NEWNS)``) took 25.5 s to visit here
    (26.5 s the whole read, nothing said), and
    32 of 30000 (6.5 s each) are 3.5 minutes a search, in every ``doctor``, ``plan``, bind
    (the journal's lock held) and give-back, nothing said.

    On 5f6a2dc, with the budget made 2 s as review 23's test makes it: "the host's network
    read did not end in 22 s ..."; the control (100 stacked) ends at once. Fix: read the
    visited namespaces' tables within the same budget as :func:`mountinfos` (one deadline
    for all tables of the read, in the bounded reader), past which the rest are a problem."""
    f = scale_budgets(monkeypatch)
    monkeypatch.setattr(storage, "MOUNT_TABLES_BUDGET", 2.0 * f)
    bound = storage.MOUNT_TABLES_BUDGET + 4 * storage.DETACHED_STAT_TIMEOUT
    view = read_beside([PYTHON, "-c", MOUNT_NS_KEEPER, STACKER, str(depth), "16"],
                       lambda: NetView.read(Sysfs("/")), bound)
    assert view is not None, (
        f"the host's network read did not end in {bound:g} s: nobody's 17 mount namespaces "
        f"of {depth} stacked bind mounts, kept by fds with no process in them, are each "
        "visited and their tables read whole, and nothing said")


# -- 6. every process's fds read by the network read, with no bound on them all ----------------

#: nobody's program: ``argv[1]`` fds of /dev/null (its open-file limit raised to the hard one),
#: then ``argv[2]`` forks, each with a copy of that table; prints "ready".
FD_FORKS = textwrap.dedent("""
    import os, resource, sys, time
    fds, forks = int(sys.argv[1]), int(sys.argv[2])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    null = os.open("/dev/null", os.O_RDONLY)
    kept = [os.dup(null) for _ in range(min(fds, hard - 64))]
    for _ in range(forks):
        if os.fork() == 0:
            time.sleep(600)
            os._exit(0)
    print("ready", flush=True)
    time.sleep(600)
""")


@as_root
@pytest.mark.parametrize("fds", [19000, 10], ids=["fds-19000", "control-fds-10"])
def test_6_open_files_a_user_multiplies_do_not_stall_the_network_read(fds, monkeypatch):
    """(b) Host shape: any multi-user host (an open-file limit of 20000 here; Debian's and
    Ubuntu's systemd gives every user a hard limit of 524288).

    Path: :func:`harness.host.network._held_by_process` (from
    :func:`~harness.host.network._holders`, in each of up to 4 searches) lists every fd of
    every process, sorts them, reads each link and, for each path, asks whether it is a
    namespace's file (:func:`harness.host.nsholders.fd_namespace`): with no bound on them
    all. The storage read stops at ``MAX_FDS_READ`` (1,000,000) and reads a fork's copy of
    its parent's fds once (``_copied``), the fixes of reviews 22 and 23; the network read
    has neither (review 22's fix bounded only the threads' own tables there,
    ``tables_within``). nobody's one table of 19000 fds of /dev/null and 100 forks of it
    (1.9 million fds; 12 MB of their kernel memory) made the network read take longer than
    the bound; 50 forks took 49 s here (about 50 µs an fd). With 524288 fds a process, a
    user's hundred forks are 52 million: most of an hour a search, in every ``doctor``,
    ``plan``, bind (the journal's lock held) and give-back, nothing said. (The storage read
    of the 50 forks ended in 19.5 s, but failed closed on "the mapped files of all
    processes took more than 10 s to read": ``MAPS_BUDGET`` is counted from the start of the
    whole read, fds included.)

    On 5f6a2dc: "the host's network read did not end in 45 s ..."; the control (10 fds a
    process) ends at once. Fix: bound the network read's fds as the storage read's
    (``MAX_FDS_READ`` in all, a fork's copies read through its parent, past which every NIC
    is unproven; ``fd_namespace`` could also keep nsfs's ``st_dev`` rather than ``stat`` it
    again for each fd)."""
    f = scale_budgets(monkeypatch)
    bound = network.NAMESPACES_BUDGET + 15 * f
    view = read_beside([PYTHON, "-c", FD_FORKS, str(fds), "100"],
                       lambda: NetView.read(Sysfs("/")), bound)
    assert view is not None, (
        f"the host's network read did not end in {bound:g} s: nobody's 101 processes of "
        f"{fds} fds each are each listed and every fd's link read, with no bound on them all")


# -- 7. a file registered with io_uring at a slot of five digits or more -------------------------

#: Review 16's :data:`URING` reader, its disk registered at slot ``argv[3]`` of a table whose
#: other slots hold /dev/null (one fd may fill many slots; the open-file limit raised to the
#: hard one, as a server's is), and read by that fixed index.
URING_AT = URING.replace(
    "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
    "check(libc.syscall(REGISTER, ring, 2, (ctypes.c_int * 1)(fd), 1))  # REGISTER_FILES\n",
    "import resource\n"
    "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))\n"
    "slot = int(sys.argv[3])\n"
    "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
    "null = os.open('/dev/null', os.O_RDONLY)\n"
    "table = (ctypes.c_int * (slot + 1))(*([null] * slot + [fd]))\n"
    "check(libc.syscall(REGISTER, ring, 2, table, slot + 1))  # REGISTER_FILES\n"
    "os.close(null)\n").replace(
    'sqe = struct.pack("<BBHiQQIIQ", 22, 1, 0, 0, 0,',
    'sqe = struct.pack("<BBHiQQIIQ", 22, 1, 0, slot, 0,')
assert URING_AT.count("slot") == 5, "review 16's URING changed: adapt URING_AT"


@as_root
@pytest.mark.parametrize("slot", [10000, 9999], ids=["slot-10000", "control-slot-9999"])
def test_7_a_disk_registered_with_io_uring_at_slot_10000_is_in_use(loop_disk, slot):
    """(a) Host shape: a program that reads a disk through an io_uring whose table of
    registered files is large: a server's sparse table (``IORING_REGISTER_FILES_SPARSE``)
    filled with its sockets and files as direct descriptors (``IORING_FILE_INDEX_ALLOC``
    hands out slots in order: the disk's comes after the first 10000 connections), a
    storage engine or ``ublk`` server with many files; it closed its own fd of the disk (it
    reads by index).

    Path: the kernel prints each registered file as ``seq_printf(m, "%5u: ", i)`` and its
    path (io_uring/fdinfo.c): a slot of five digits or more has no space before it
    (``10000: /dev/loop0``); :meth:`harness.host.storage.OpenFiles._add_ring` takes only
    lines that begin with whitespace (``^\\s+\\d+: (.+)$``), so every slot from 10000 on is
    never looked at. With any file below that slot the list is not empty (no "did not
    list" problem, review 16's fail-closed case), and a disk registered from slot 10000 on
    reads idle while it is read, nothing said.

    On 5f6a2dc: the list holds no use naming the reader (the disk is idle); the control
    (slot 9999, printed `` 9999: ...``) names it. Fix: ``^\\s*\\d+: (.+)$``, and count the
    lines against ``UserFiles:`` (the kernel prints every slot that holds a file: fewer
    paths than that, sparse slots aside, is a list that was not read whole)."""
    name = os.path.basename(loop_disk)
    child = subprocess.Popen([PYTHON, "-c", URING_AT, loop_disk, "fd", str(slot)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        seen = read_while_it_reads(child, name, "io_uring is not usable here", lambda: {
            os.readlink(f"/proc/{child.pid}/fd/{fd}") for fd in
            os.listdir(f"/proc/{child.pid}/fd")})
    finally:
        child.kill()
        child.wait()
    assert any(f"pid {child.pid}" in u for u in seen), seen
