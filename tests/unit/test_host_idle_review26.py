"""Issue 31, twenty-sixth adversarial read. What it found, one section below each (the
docstring of each test says the host shape, the path and the result on 01145f1).

1. (a) a disk registered with an io_uring reads idle on every kernel before the one that
   prints a registered file's path (Linux 6.14): Debian 12's 6.1, Ubuntu 22.04's 5.15 and
   24.04's 6.8, RHEL 9's 5.14 print the file's dentry name alone (``sdb``), which the
   harness takes for an anonymous file (a socket, a pipe) and drops.
2. (a) a disk held by a fork through a device node on a network or FUSE mount that allows
   devices reads idle when the parent lets its copy go while the host is read and an
   earlier fork of the same parent has *another* file at that fd number: review 25's fix
   looks the file up through every fork of the parent, in pid order, and takes the first
   that is still there, whatever file it is (the parent's own fd, reopened to another
   file, is taken the same way).
3. (b) any local user makes every search of the network read take 80 s and more again: the
   bound review 25 gave it is a count of fds (``MAX_FDS_READ``, 1,000,000 a search, the
   storage read's), not a time, and each fd costs the network read about 80 us here; forks
   that remake their fds (or processes that are no forks) are not copies for kcmp. The
   storage read has the same count, at about 180 us an fd here: 37 s for 209,000.
4. (a) review 25's fourth finding (a disk mapped through a node at another path by two
   processes, the first of which maps another file at those addresses while the host is
   read) is read idle again when the node is on an overlayfs whose layers are on two
   filesystems (a live or PXE-booted host's root: squashfs under tmpfs): the identity
   check its fix added never matches there, and the first answer stands.
5. (b) any local user makes every network read wait 20 s for each way into a network
   namespace that they bind (nsfs) under a FUSE mount of theirs and then stop answering:
   :func:`harness.host.network._pin` tries every way, each with its own 20 s bound, outside
   every budget, and a user makes as many ways as they like (one mount each).
6. (a) on kernels that print registered files' paths (6.14 on), a ring's list is read
   only up to the first path with a carriage return or a Unicode line separator in it:
   the kernel escapes only space, tab, newline and backslash, and ``_registered`` splits
   with ``str.splitlines``, then stops at the first line that is not a slot.

Most important first: 1, 2, 4 and 6 (a device in use taken), then 5 and 3 (stalls). Each test
fails on 01145f1 and names what it saw; the controls pass. No guest is booted; everything
started (processes, FUSE, tmpfs and overlay mounts, namespaces) is ended by the test.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import textwrap
import threading
import time

import pytest

from harness.host import storage
from harness.host.safety import HostUsage
from harness.host.storage import StorageView
from harness.host.sysfs import Sysfs

from harness.host import network
from harness.host.network import NetView

from . import fakesysfs
from .test_host_idle_review16 import loop_disk as _loop_disk
from .fusestub import FuseStub
from .hostload import scale_budgets
from .test_host_idle_review19 import fuse_in_a_folder
from .test_host_idle_review23 import FORKER, PYTHON, read_beside
from .test_host_idle_review24 import _node_fuse
from .test_host_idle_review25 import REMAP_NODE, read_as_the_parent_lets_go
from .test_paths import as_root

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
loop_disk = _loop_disk  # fixture
#: The real-host cases make processes and FUSE mounts and read the whole host.
pytestmark = pytest.mark.xdist_group("real-host-namespaces")
SATA = "0000:06:00.0"     # sdb, not mounted: idle on the lab host


# -- 1. a registered file as kernels before 6.14 print it: its dentry name alone ---------------

#: A ring's fdinfo as Linux 5.10 to 6.13 print it (io_uring/fdinfo.c: ``seq_printf(m, "%5u:
#: %s\n", i, file_dentry(f)->d_iname)``, ``<none>`` for an empty slot), and as 6.14 on print
#: it (``seq_file_path``: the path).
RING_FDINFO = ("pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1071\nSqMask:\t0x3\nSqHead:\t0\n"
               "SqTail:\t0\nCachedSqHead:\t0\nCqMask:\t0x7\nCqHead:\t0\nCqTail:\t0\n"
               "CachedCqTail:\t0\nSQEs:\t0\nCQEs:\t0\nSqThread:\t-1\nSqThreadCpu:\t-1\n"
               "UserFiles:\t2\n    0: {name}\n    1: <none>\nUserBufs:\t0\nPollList:\n")


@pytest.mark.parametrize("printed", ["sdb", "/dev/sdb"],
                         ids=["before-6.14-dentry-name", "control-6.14-path"])
def test_1_a_disk_registered_with_io_uring_on_a_distro_kernel_is_in_use(lab, printed):
    """(a) Host shape: any host on a distribution kernel older than 6.14 (Debian 12: 6.1;
    Ubuntu 22.04: 5.15, 24.04: 6.8; RHEL 9: 5.14) where a program reads a disk through an
    io_uring's registered files and closed its own fd of it (review 16's first finding: it
    reads by fixed index; a storage engine, a ``ublk`` or SPDK-less NVMe-oF server,
    ``fio --registerfiles``-style tools that close the fd).

    Path: :meth:`harness.host.storage.OpenFiles._add_ring` parses the ring's
    ``UserFiles:`` list (:func:`~harness.host.storage._registered`) and looks up only the
    entries that begin with ``/``; every other entry goes to ``_add_anonymous``, which keeps
    only vfio devices and GPIO requests (a socket, a pipe: no device). Until Al Viro's
    ``d_iname`` clean-up (6.14) the kernel printed each registered file as
    ``file_dentry(f)->d_iname``: the node's name alone (``sdb``, ``nvme0n1``; empty past 32
    bytes), never a path. So on the kernels of every supported Debian, Ubuntu and RHEL the
    disk's entry is dropped as anonymous: the ring has files (no "did not list" problem), no
    process holds an fd, the open is not exclusive, and the disk reads idle while it is
    read and written. The review-16 test that found the io_uring case ran on a kernel that
    prints paths, so the parser was only ever tried on that format.

    On 01145f1: the verdict of the controller is idle, nothing said; the control (the 6.14
    path) is in use. Fix: a registered entry that is neither a path nor a known anonymous
    kind (``anon_inode:``, ``socket:[``, ``pipe:[``...) cannot be placed: count it as an
    unproven holder (every device, or at least every device whose node has that name),
    never as no device."""
    assert HostUsage.read(lab.root).verdict(SATA).idle  # (idle before the ring)
    lab.proc("5300/comm", "reader\n")
    (lab.root / "proc/5300/fd").mkdir(parents=True)
    os.symlink("anon_inode:[io_uring]", lab.root / "proc/5300/fd/5")
    lab.proc("5300/fdinfo/5", RING_FDINFO.format(name=printed))
    lab.proc("5300/maps", "7f0000000000-7f0000001000 rw-s 00000000 00:0f 1071    "
                          "                 anon_inode:[io_uring]\n")
    v = HostUsage.read(lab.root).verdict(SATA)
    assert not v.idle, (f"the controller of sdb reads idle while pid 5300's io_uring holds "
                        f"sdb (printed {printed!r}): {v}")


# -- 2. a fork's copy of a node on a network or FUSE mount, looked up through any fork ---------

#: Root's pre-forking server: opens the node ``argv[1]`` (a disk's, on a FUSE mount that
#: allows devices), reads the disk, keeps 70 more fds (a table the read keeps for its forks:
#: ``FORK_TABLE_MIN``), forks a first worker that lets its copy of the node go and (with
#: ``argv[2]`` ``other``) has the plain file ``argv[3]`` at that fd number instead (a log it
#: opens: the lowest free number), then a second worker that keeps its copy and reads the disk
#: through it; prints both workers' pids; then, on a line read, closes its own copy.
FORKING_SERVER = textwrap.dedent("""
    import os, sys, time
    fd = os.open(sys.argv[1], os.O_RDONLY)
    assert os.pread(fd, 11, 0) == b"HH-REVIEW16"
    kept = [os.open("/dev/null", os.O_RDONLY) for _ in range(70)]
    r, w = os.pipe()
    first = os.fork()
    if first == 0:
        os.close(fd)
        if sys.argv[2] == "other":
            log = os.open(sys.argv[3], os.O_RDONLY)
            if log != fd:
                os.dup2(log, fd)
                os.close(log)
        os.write(w, b".")
        while True:
            time.sleep(1)
    os.read(r, 1)
    second = os.fork()
    if second == 0:
        while True:
            os.pread(fd, 11, 0)
            time.sleep(0.2)
    print(first, second, flush=True)
    sys.stdin.readline()
    os.close(fd)
    print("done", flush=True)
    time.sleep(600)
""")


@as_root
@pytest.mark.parametrize("first", ["other", "none"], ids=["first-fork-has-another-file",
                                                          "control-first-fork-has-none"])
def test_2_a_disk_a_second_fork_holds_through_a_node_on_a_fuse_mount_stays_in_use(
        loop_disk, tmp_path, monkeypatch, first):
    """(a) Host shape: review 25's first (a device node of a disk on a mount that allows
    devices: an NFS root of ``defaults``, a container root on NFS or fuse-overlayfs with its
    own /dev nodes; a pre-forking server whose parent closes its copy, or ends, while the
    host is read), with one more thing every pre-forking server does: a worker that does not
    need the disk closes its copy and opens something else, which takes the lowest free fd
    number, the disk's (its log, a socket's file, a config file).

    Path: :meth:`harness.host.storage.OpenFiles._add_fds` skips the second worker's fd as a
    fork's copy (``_copied``) and records it only as a fork of the parent (``_forks``, per
    process, not per fd). Review 25's fix (:func:`harness.host.storage._remote_numbers`)
    then looks the parent's queued file up through ``[parent's fd N] + [every fork's fd N]``,
    in pid order, with :func:`~harness.host.storage._first_type` and no key: "the first
    still there". The first worker is a fork of the parent too (its /dev/null fds are
    copies) and its fd N is its own plain file: that answers, the parent's file is taken to
    be a plain file, and the disk is dropped for everyone. The second worker, which reads
    the disk through its copy, is looked up by no one: the disk reads idle, nothing said.

    On 01145f1: the list holds no use naming the second worker (the disk is idle while it
    reads it); the control (the first worker has nothing at that number: ENOENT, skipped)
    names it. Fix: record which forks' fds were skipped as copies of which parent fd
    (``_forks`` per (pid, fd)) and look up only those, or pass a key (the parent's file's
    ``st_dev``/``st_ino`` from the cache when it was read) so that a way leading to another
    file is never taken."""
    name, rdev = os.path.basename(loop_disk), os.stat(loop_disk).st_rdev
    plain = tmp_path / "worker.log"
    plain.write_bytes(b"log\n")
    with fuse_in_a_folder(_node_fuse(rdev)) as fuse:
        server = subprocess.Popen([PYTHON, "-c", FORKING_SERVER, str(fuse.mountpoint / "f"),
                                   first, str(plain)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, cwd="/",
                                  start_new_session=True)
        try:
            one, two = (int(p) for p in server.stdout.readline().split())
            if not server.pid < one < two:
                pytest.skip("pids wrapped between the server and its workers")
            view = read_as_the_parent_lets_go(monkeypatch, server)
            assert os.path.exists(f"/proc/{two}/fd")  # (the second holds it all along)
        finally:
            os.killpg(server.pid, signal.SIGKILL)  # (the workers too: its group)
            server.wait()
    seen = view.use_of_block(name) + view.problems
    assert any(f"pid {two} " in u for u in seen), seen


# -- 3. the network read's fds bounded by a count that costs 80 s a search ----------------------

#: Review 23's FORKER (nobody's table of ``argv[1]`` fds of /dev/null and ``argv[2]`` forks),
#: each fork remaking its fds with a /dev/null of its own (no copy for kcmp: what any two
#: processes that are not forks of each other have too); says "ready".
OWN_FORKS = FORKER.replace("HOW", "own").replace("WHERE", "main").replace(
    "print(*pids, flush=True)", "print('ready', flush=True)")
assert "'ready'" in OWN_FORKS, "review 23's FORKER changed: adapt OWN_FORKS"


@as_root
@pytest.mark.parametrize("fds", [19000, 10], ids=["fds-19000", "control-fds-10"])
def test_3_open_files_a_user_remakes_in_forks_do_not_stall_the_network_read(fds, monkeypatch):
    """(b) Host shape: any multi-user host (a hard limit of 20000 open files here; Debian's
    and Ubuntu's systemd gives every user 524288, so two processes are enough there).

    Path: review 25's fix (:class:`harness.host.network._FdsRead`, from
    :func:`~harness.host.network._held_by_process` in each of up to ``1 + RESEARCHES``
    searches of :func:`~harness.host.network._namespaces`) bounds the fds a search reads
    by their number, :data:`~harness.host.storage.MAX_FDS_READ` (1,000,000, sized for the
    storage read), and skips a fork's fds only when kcmp finds them the same open files as
    its parent's. Each fd the network read does read costs a ``readlink``, a cached
    ``statx`` and a ``stat`` of ``/proc/self/ns/net`` (:func:`~harness.host.nsholders.
    fd_namespace`, for every fd whose link is a path): about 80 us here. nobody's 52
    processes of 19000 fds each (988,000: under the cap, so nothing is said), forks that
    each opened their own /dev/null (as any forked worker opens its own files; or 52
    processes that are no forks), made one network search take 83 s here; the
    storage read then reads them again, and a search is made up to four times.

    On 01145f1: "the host's network read did not end in 45 s ..." (review 25's bound for its
    own test of this path); the control (52 processes of 10 fds) ends at once. Fix: bound the fds'
    read by time as the other reads are (``NAMESPACES_BUDGET``, ``MAPS_BUDGET``), past
    which the processes left are a problem; and ``fd_namespace`` need not stat
    ``/proc/self/ns/net`` once per fd."""
    f = scale_budgets(monkeypatch)
    bound = network.NAMESPACES_BUDGET + 15 * f
    view = read_beside([PYTHON, "-c", OWN_FORKS, str(fds), "51"],
                       lambda: NetView.read(Sysfs("/")), bound)
    assert view is not None, (
        f"the host's network read did not end in {bound:g} s: nobody's 52 processes of {fds} "
        "fds each (none a copy of another's) are each listed and every fd read, under the "
        "cap of fds, and nothing said")


# -- 4. a mapped node on an overlayfs of two filesystems: the identity never matches ------------


@as_root
@pytest.mark.parametrize("remap", [True, False], ids=["first-remaps", "control-first-stays"])
def test_4_a_disk_mapped_through_a_node_on_an_overlay_stays_in_use_when_its_first_mapper_remaps(
        loop_disk, tmp_path, monkeypatch, remap):
    """(a) Host shape: review 25's fourth (a disk's node at a path other than its ``/dev``
    name, mapped by two processes, the first of which maps another file of that size at the
    same addresses while the host is read), with the node on an overlayfs whose lower and
    upper layers are on different filesystems: a live or PXE-booted lab host's root
    (squashfs under a tmpfs), a container root whose image and writable layer sit on two
    filesystems. ``xino`` off, the kernel's default (``CONFIG_OVERLAY_FS_XINO_AUTO`` unset,
    as here; with ``xino=on`` the two agree).

    Path: review 25's fix (:func:`harness.host.storage._first_type` with a key) takes a
    mapper's way only when ``statx`` through ``map_files`` gives the ``MAJ:MIN`` and inode
    that ``/proc/PID/maps`` printed; when none does, "what the first that answered leads
    to". On such an overlay the two never agree for any mapper: maps prints the overlay's
    own superblock device (``i_sb->s_dev``), and ``stat`` gives the layer's pseudo device
    (``ovl_map_dev_ino``; measured here: maps ``00:2a``, stat ``0:44``, the same inode). So
    the second mapper, which still maps the disk, does not match, and the first's answer (the
    plain file it maps there now) stands: the disk is dropped for both mappers, as before
    the fix.

    On 01145f1: the list holds no pid of the second mapper (the disk reads idle while it is
    mapped); the control (the first keeps it mapped) names both. Fix: when no way matches
    the key exactly, prefer a way that leads to a device node with the key's inode (or
    look at every way and keep the device numbers of all that are nodes), never a single
    first answer."""
    name = os.path.basename(loop_disk)
    layers = {k: tmp_path / k for k in ("lower", "upper", "merged")}
    for d in layers.values():
        d.mkdir()
    mounted = []
    try:
        for k in ("lower", "upper"):  # (two filesystems: overlayfs's layers on two devices)
            subprocess.run(["mount", "-t", "tmpfs", f"hh-r26-{k}", str(layers[k])], check=True)
            mounted.insert(0, layers[k])
        (layers["upper"] / "up").mkdir()
        (layers["upper"] / "work").mkdir()
        os.mknod(layers["lower"] / "xvdb", stat.S_IFBLK | 0o600, os.stat(loop_disk).st_rdev)
        subprocess.run(["mount", "-t", "overlay", "hh-r26", "-o",
                        f"lowerdir={layers['lower']},upperdir={layers['upper'] / 'up'},"
                        f"workdir={layers['upper'] / 'work'}", str(layers["merged"])],
                       check=True)
        mounted.insert(0, layers["merged"])
        node = layers["merged"] / "xvdb"
        plain = tmp_path / "plain"
        plain.write_bytes(b"\0" * 4096)
        first, second = (subprocess.Popen([PYTHON, "-c", REMAP_NODE, str(node), how,
                                           str(plain)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          text=True)
                         for how in ("remap" if remap else "stay", "stay"))
        looked = storage._mapped_numbers

        def after_the_first_remapped(*args):  # (during the read: its whole length the window)
            if remap:
                first.stdin.write("\n")
                first.stdin.flush()
                assert first.stdout.readline().strip() == "remapped"
            return looked(*args)

        monkeypatch.setattr(storage, "_mapped_numbers", after_the_first_remapped)
        try:
            assert [p.stdout.readline().strip() for p in (first, second)] == \
                ["HH-REVIEW16"] * 2
            if first.pid > second.pid:
                pytest.skip("pids wrapped between the two mappers")
            view = StorageView.read(Sysfs("/"))
        finally:
            for proc in (first, second):
                proc.kill()
                proc.wait()
    finally:
        for where in mounted:
            subprocess.run(["umount", str(where)], check=False)
    seen = view.use_of_block(name) + view.problems
    assert any(f"pid {second.pid}" in u for u in seen), seen


# -- 5. each way into a namespace through a silent FUSE path waited 20 s, all of them -----------


@as_root
@pytest.mark.parametrize("silent", [True, False], ids=["daemon-silent", "control-answering"])
def test_5_ways_into_a_namespace_through_a_silent_fuse_path_do_not_each_cost_20_s(
        tmp_path, silent, monkeypatch):
    """(b) Host shape: any multi-user host where unprivileged user namespaces are allowed
    (Debian, Ubuntu, RHEL): in a user and mount namespace of their own, a user mounts a
    FUSE filesystem of theirs (allowed there since Linux 4.18), makes a network namespace
    and bind-mounts its nsfs file on a file of that FUSE mount, once or as many times as
    they like (``mount --bind f f``: each is a line of their ``mountinfo``), lets the
    namespace's process end (the mounts hold it), and has their daemon stop answering.
    (The test does the same as root, with the suite's FUSE stub: the kernel's paths are the
    same.)

    Path: :func:`harness.host.network._search_held` enters every namespace not read yet
    through :func:`~harness.host.network._pin` *before* ``NAMESPACES_BUDGET`` starts;
    ``_pin`` tries each way in turn (here every nsfs mount line,
    ``/proc/PID/root/<mountpoint>``) with :func:`~harness.host.nsholders.open_path`, whose
    lookup of the FUSE file waits on the daemon, given up after 20 s; the TimeoutError is an
    OSError that is not "went away", so the next way is tried, for another 20 s, with no
    bound on the ways or on them all (the storage read's :class:`~harness.host.storage.
    Lookups` stops after the first that does not answer; this does not). Three stacked
    mounts cost 60 s; a user's thousand, 5.5 hours, in each search of every ``doctor``,
    ``plan``, bind (the journal's lock held) and give-back, and each leaves a thread of the
    harness blocked in the kernel until it exits.

    On 01145f1: "the host's network read did not end in 45 s ..."; the control (the daemon
    answers) ends at once. Fix: once a way has not answered, make no more lookups that can
    wait on a file server in that read (as ``Lookups``), count the namespace (and those
    left) as a problem, and start ``NAMESPACES_BUDGET`` before the pins."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this host: modprobe fuse")
    f = scale_budgets(monkeypatch)
    bound = network.NAMESPACES_BUDGET + 15 * f
    with FuseStub(tmp_path / "mnt") as fuse:
        target = fuse.mountpoint / "f"
        maker = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'unshare --net="$1" true && mount --bind "$1" "$1" && mount --bind "$1" "$1" '
             '&& echo ready && exec sleep 600', "sh", str(target)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        box: list = []
        reader = None
        try:
            if maker.stdout.readline().strip() != "ready":
                pytest.skip(f"the namespace could not be made here: {maker.stderr.read()}")
            if silent:
                fuse.go_silent()
            reader = threading.Thread(target=lambda: box.append(NetView.read(Sysfs("/"))),
                                      daemon=True)
            start = time.monotonic()
            reader.start()
            reader.join(bound)
            took = time.monotonic() - start
        finally:
            os.killpg(maker.pid, signal.SIGKILL)
            maker.wait()
            maker.stdout.close()
            maker.stderr.close()
    if reader is not None:
        reader.join(600)  # (the stub's end aborts what still waits on it)
    assert box and took < bound, (
        f"the host's network read did not end in {bound:g} s: each of the 3 nsfs mounts of a "
        "network namespace, on a file of a FUSE mount whose daemon does not answer, was "
        "tried for 20 s, outside every budget")



@as_root
@pytest.mark.parametrize("fds", [19000, 10], ids=["fds-19000", "control-fds-10"])
def test_3_open_files_a_user_remakes_in_forks_do_not_stall_the_storage_read(fds, monkeypatch):
    """(b) Finding 3's storage side. Host shape: the same.

    Path: :meth:`harness.host.storage.OpenFiles._add_fds` stops at ``MAX_FDS_READ``
    (1,000,000 fds a read) and skips forks' copies (``_copied``); each fd it reads costs a
    ``readlink``, its ``fdinfo`` read whole and a ``statx`` (:meth:`~harness.host.storage.
    OpenFiles._add_node`): about 180 us here. nobody's 11 processes of 19000 fds of their
    own /dev/null each (209,000, a fifth of the cap) made one storage read take 37 s here;
    at the cap it is about 3 minutes, in every ``doctor``, ``plan``, bind and give-back.
    (Past 10 s the maps and io_uring budgets make it fail closed, but only once it ends.)

    On 01145f1: "the host's storage read did not end in 20 s ..." (review 25's bound for
    the storage read, ``MAPS_BUDGET`` and two lookups); the control (11 processes of 10 fds)
    ends at once. Fix: a time budget for the fds of all processes (past it, the processes left
    are a problem, as ``MAPS_BUDGET`` does for maps), not only a count."""
    scale_budgets(monkeypatch)
    bound = storage.MAPS_BUDGET + 2 * storage.DETACHED_STAT_TIMEOUT
    view = read_beside([PYTHON, "-c", OWN_FORKS, str(fds), "10"],
                       lambda: StorageView.read(Sysfs("/")), bound)
    assert view is not None, (
        f"the host's storage read did not end in {bound:g} s: nobody's 11 processes of {fds} "
        "fds each (none a copy of another's) are each read, under the cap of fds")



# -- 6. a ring's list read up to the first path with a carriage return --------------------------


@pytest.mark.parametrize("other", ["report\rfinal.txt", "report-final.txt"],
                         ids=["name-with-carriage-return", "control-plain-name"])
def test_6_a_disk_registered_after_a_file_named_with_a_carriage_return_is_in_use(lab, other):
    """(a) Host shape: a host on Linux 6.14 or later (the kernel that prints a registered
    file's path) where a server registers with one io_uring the files its clients name
    (a file server, a backup or object-storage daemon using direct descriptors) and the
    disk it serves from, at a later slot; a client's file name holds a carriage return
    (``\\r``, which Linux and macOS clients can make) or a Unicode line or paragraph
    separator (U+2028, U+0085: any UTF-8 name).

    Path: the kernel writes each slot as ``%5u: `` and ``seq_file_path(m, f, " \\t\\n\\\\")``:
    only space, tab, newline and backslash are escaped. :func:`harness.host.storage.
    _registered` splits the fdinfo with ``str.splitlines()``, which also splits on ``\\r``,
    ``\\x0b``, ``\\x0c``, ``\\x1c``-``\\x1e``, ``\\x85``, U+2028 and U+2029, and stops at
    the first line that is not a slot: the rest of the name is such a line. Every slot after
    it is never looked at, and the list is not empty (no "did not list" problem): the disk
    reads idle, nothing said. (The same split drops a mount line of ``mountinfo``, which
    escapes the same four; there the exclusive-open probe still catches a mounted disk.)

    On 01145f1: the controller of sdb reads idle; the control (a plain name) is in use.
    Fix: split on ``\\n`` alone (``text.split("\\n")``) wherever the kernel's own escaping is
    relied on, and count the slots read against ``UserFiles:``."""
    assert HostUsage.read(lab.root).verdict(SATA).idle  # (idle before the ring)
    lab.proc("5300/comm", "fileserver\n")
    (lab.root / "proc/5300/fd").mkdir(parents=True)
    os.symlink("anon_inode:[io_uring]", lab.root / "proc/5300/fd/5")
    lab.proc("5300/fdinfo/5", RING_FDINFO.replace("    1: <none>\n", "").replace(
        "UserFiles:\t2\n    0: {name}\n",
        f"UserFiles:\t2\n    0: /srv/share/{other}\n    1: /dev/sdb\n"))
    lab.file(f"proc/5300/root/srv/share/{other.split(chr(13))[0]}", "a client's file\n")
    lab.file("proc/5300/root/dev/sdb", "")  # (the fake tree's stand-in for the node)
    v = HostUsage.read(lab.root).verdict(SATA)
    assert not v.idle, (f"the controller of sdb reads idle while pid 5300's io_uring holds "
                        f"/dev/sdb after {other!r}: {v}")
