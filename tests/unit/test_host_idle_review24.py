"""Issue 31, twenty-fourth adversarial read. What it found, one section below each:

1. a disk mapped through a node at a path other than its ``/dev`` name (a container's
   ``/dev/xvdb``) by two processes is read idle when the first of them unmaps it, or ends,
   while the host is read: :meth:`harness.host.storage.OpenFiles._add_mapped` keeps one way
   to each mapped file (``map_files/START-END`` of the *first* mapper read, by pid), and
   :func:`~harness.host.storage._mapped_numbers` looks at it only at the end of the whole
   read; an error there other than EACCES ("unmapped since, or its process ended") drops the
   file for *all* its mappers, the second still mapping it. The window is the whole read
   (seconds on a busy host): a mapper that maps the node briefly, or a helper that ends,
   with a lower pid than the one that keeps it, is enough; one that maps another file at the
   same addresses turns the way into a plain file's, dropped as well. nobody may do it on
   purpose for a device they may open (a ``uaccess`` USB node, whose usbfs file maps), bound
   to another path in a mount namespace of theirs. Likely: low by accident, by intent for a
   user with a device; bad: the worst kind (a device in use is taken), nothing said.

2. a disk held through a device node that lives on a network or FUSE mount is read idle, and
   nothing is said: :meth:`harness.host.storage.OpenFiles._add_node` never looks at a file
   whose fd's mount is in :func:`~harness.host.storage.remote_mount_ids` (NFS, CIFS, 9p,
   virtiofs, ceph, any ``fuse*``), on the first read's word that "device nodes do not live
   there", and the node's path (``/mnt/nfs/chroot/dev/sdb``) matches no ``/dev/NAME``. They
   do live there: root's mounts are ``dev`` unless told ``nodev`` (fstab's ``defaults``, a
   ``mount -t fuse``, an NFS-root or NFS-held container root with its own ``/dev`` nodes,
   fuse-overlayfs as a root container's rootfs), and the node opens the host's device. The
   mapping side has the same hole when the mount refuses root a look: the twenty-second
   read's :func:`~harness.host.storage._on_fuse` takes any EACCES from a FUSE file for "no
   device node could be reached" (a user's mount is ``nodev``), but a mount root made for a
   user (``user_id=`` without ``allow_other``: pam_mount, a root-run ``sshfs -o uid=``)
   without ``nodev`` refuses root and serves nodes all the same. The fifteenth read's reason
   (a stat there can hang) asks for a bounded look (``Lookups.node_type``, as for a
   detached mount), not none. Likely: low (root's configuration); bad: the worst kind (a
   device in use is taken), with no word said.

3. any local user makes every read of the host's network take as long as they like with
   network namespaces alone: :func:`harness.host.network._read_all` enters and reads each
   namespace anything holds, in turn (``ip -j`` five times, ``ss``, ``/proc/net/packet``:
   seven programs a namespace, each bounded at 20 s, with no bound on them all and none on
   how many namespaces). nobody, in a user namespace of theirs, keeps 800 network
   namespaces by an fd each in one process (``unshare(CLONE_NEWNET)`` in a loop: a second to
   make, no other process, ``user.max_net_namespaces`` is 96367 here): the network read, 2.7
   s on this host alone, did not end in 20 s (72 ms a namespace measured with 40; review 18
   saw 33 ms). 10000 of them are minutes in every ``doctor``, ``plan``, ``discover``, bind
   (the journal's lock held) and give-back, and nothing says why: review 23's second finding
   (mount tables) for network namespaces, whose budget (``MOUNT_TABLES_BUDGET``) this read
   has no counterpart of. Likely: by intent; bad: as review 23's second (a CI job's timeout
   kills the run before the give-back).

4. any local user makes every read of the host's open files take as long as they like with
   files mapped: the twenty-second read's bound on ``/proc/PID/maps``
   (:meth:`harness.host.storage.Lookups.read`, from :meth:`~harness.host.storage.OpenFiles.
   _add_maps`) is 5 s *each*, and each is then decoded and split whole outside it; there is
   no bound on them all and none on their size. A file at a path of about 3800 bytes mapped
   15000 times (areas that do not merge: ``vm.max_map_count`` is 65530) is 58 MB of
   ``maps``, 2.4 to 2.9 s to read and parse here, and a fork copies it: nobody's process
   with 20 forks made the storage read take 26.8 s (not ended in 12.5 s); a thousand forks
   of 65530 areas each (each read just under the 5 s) are over an hour, in every ``doctor``,
   ``plan``, bind (the journal's lock held) and give-back, and the harness holds three copies
   of each 250 MB text while it parses it. Likely: by intent; bad: as 3.

5. a program that registers with io_uring a plain file whose path has a space (a tab, a
   newline or a backslash) leaves every device unproven while it runs: the kernel prints the
   ring's registered files in fdinfo escaped as mountinfo is (``seq_file_path(m, f,
   " \\t\\n\\\\")``: ``my\\040disk.img``), and
   :meth:`harness.host.storage.OpenFiles._add_ring` takes the text for the path (no
   :func:`~harness.host.storage.unescape_mountinfo`): the lookup through the holder's root
   finds no such file, and "pid N uses .../my\\040disk.img (No such file or directory)
   through its io_uring, which cannot be looked at" is in every verdict. Any user's program
   does it with a file in their home (``VM images/disk.qcow2``; QEMU, SPDK and databases
   register their files). Likely: medium where io_uring is used; bad: a false refusal of
   everything, naming a missing file that is there.

Case 1: two root processes map review 16's loop disk through a node made with ``mknod`` in a
folder (their fds closed), the first unmapping it while the host is read (told to when the
read's mapped files are looked at: the end of the window); the control: it stays mapped.
Case 2: a FUSE stub root mounts without ``nodev`` whose one file is a block node of review
16's loop disk; root's process opens it and reads the disk (fd kept), or nobody's (the mount
made for nobody, without ``allow_other``) maps it and closes the fd. The controls: the same
node made with ``mknod`` in a local folder, opened or mapped. Case 3: nobody's 800 network
namespaces, the network read bounded at twice ``MOUNT_TABLES_BUDGET`` (20 s); the control: 5.
Case 4: nobody's process mapping one file 30000 times (15000 areas) at a 3800-byte path,
with 20 forks, the storage read bounded at 2.5 times the lookups' bound (12.5 s, as review
23's case 2); the control: 100 times. Case 5: review 16's io_uring reader as root, of a
plain file named ``my disk.img``; the control: ``disk.img``. Each fails on the code as it is
(7194e45): 1 with a list without the second mapper's pid, 2 with a list without the holder's
pid (the disk is idle while it is held; only this host's own problems: ``the mount namespace
of pid 1 cannot be read ...``), 3 "the host's network read did not end in 20 s ...", 4 "the
host's storage read did not end in 12.5 s ...", 5 "pid N (python3) uses .../my\\040disk.img
(No such file or directory) through its io_uring, which cannot be looked at ..."; the
controls pass. No guest is booted.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness.host import network, storage
from harness.host.network import NetView
from harness.host.storage import StorageView
from harness.host.sysfs import Sysfs

from . import fusestub
from .hostload import scale_budgets
from .test_host_idle_review16 import URING, loop_disk as _loop_disk
from .test_host_idle_review17 import NOBODY_RUN
from .test_host_idle_review19 import fuse_in_a_folder
from .test_host_idle_review23 import PYTHON, read_beside
from .test_paths import as_root

#: The real-host cases make namespaces and processes of nobody's and read the whole host.
pytestmark = pytest.mark.xdist_group("real-host-namespaces")
loop_disk = _loop_disk  # fixture


# -- 1. a mapped node looked at through its first mapper only -----------------------------------

#: Maps ``argv[1]`` (a disk's node; its fd closed: Python's mmap would keep a copy) and
#: prints its first bytes; with ``argv[2]`` ``unmap``, unmaps it on a line read and says so;
#: then stays.
MAP_NODE = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
fd = os.open(sys.argv[1], os.O_RDONLY)
at = libc.mmap(None, 4096, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
os.close(fd)
print(ctypes.string_at(at, 11).decode(), flush=True)
if sys.argv[2] == "unmap":
    sys.stdin.readline()
    libc.munmap(at, 4096)
    print("unmapped", flush=True)
time.sleep(600)
"""


def read_with_two_mappers(monkeypatch, argvs: list[list[str]], change: bool, said: str):
    """The host's storage read beside two mappers started from ``argvs``, each printing
    ``HH-REVIEW16`` once it maps; with ``change``, the first is sent a line during the read,
    once every process is read (the whole read is the window), and must answer ``said``.
    Returns (the view, the second mapper)."""
    first, second = (subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True) for argv in argvs)
    looked = storage._mapped_numbers

    def after_the_first_changed(*args):
        if change:
            first.stdin.write("\n")
            first.stdin.flush()
            assert first.stdout.readline().strip() == said
        return looked(*args)

    monkeypatch.setattr(storage, "_mapped_numbers", after_the_first_changed)
    try:
        assert [p.stdout.readline().strip() for p in (first, second)] == ["HH-REVIEW16"] * 2
        if first.pid > second.pid:
            pytest.skip("pids wrapped between the two mappers")
        return StorageView.read(Sysfs("/")), second
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()


@as_root
@pytest.mark.parametrize("unmap", [True, False], ids=["first-unmaps", "control-first-stays"])
def test_1_a_disk_mapped_through_a_node_stays_in_use_when_its_first_mapper_unmaps(
        loop_disk, tmp_path, monkeypatch, unmap):
    name = os.path.basename(loop_disk)
    node = tmp_path / "xvdb"  # (a container's node of the disk, in its own /dev)
    os.mknod(node, stat.S_IFBLK | 0o600, os.stat(loop_disk).st_rdev)
    view, second = read_with_two_mappers(
        monkeypatch, [[PYTHON, "-c", MAP_NODE, str(node), how]
                      for how in ("unmap" if unmap else "stay", "stay")], unmap, "unmapped")
    seen = view.use_of_block(name) + view.problems
    assert any(f"pid {second.pid}" in u for u in seen), seen



# -- 2. a device node on a network or FUSE mount ------------------------------------------------

def _node_fuse(rdev: int, owner: int = 0) -> type:
    """A FUSE stub that root mounted without ``nodev`` (as ``mount -t fuse`` and an NFS mount
    of fstab's ``defaults`` are), for ``owner`` (not ``allow_other``), whose ``f`` is a block
    device node of ``rdev``, open to all."""
    attr = fusestub._ATTR.pack(2, 0, 0, 0, 0, 0, 0, 0, 0, stat.S_IFBLK | 0o666, 1, 0, 0,
                               (os.minor(rdev) & 0xff) | (os.major(rdev) << 8)
                               | ((os.minor(rdev) & ~0xff) << 12), 4096, 0)

    class NodeFuse(fusestub.FuseStub):
        OWNER = owner

        @staticmethod
        def _answer(opcode: int, node: int, body: bytes) -> tuple[int, bytes]:
            if opcode == fusestub._GETATTR and node == 2:
                return 0, struct.pack("<QII", 0, 0, 0) + attr
            if opcode == fusestub._LOOKUP and node == 1 and body.rstrip(b"\0") == b"f":
                return 0, struct.pack("<QQQQII", 2, 0, 0, 0, 0, 0) + attr
            return fusestub.FuseStub._answer(opcode, node, body)
    return NodeFuse


#: Opens the node (``argv[1]``), reads the disk's first bytes, then keeps it open (``fd``) or
#: only a mapping of it (``map``: the fd closed).
HOLD = ("import mmap, sys, time\nf = open(sys.argv[1], 'rb')\n"
        "print(f.read(11).decode(), flush=True)\n"
        "if sys.argv[2] == 'map':\n"
        "    kept = mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ)\n    f.close()\n"
        "time.sleep(600)\n")


@as_root
@pytest.mark.parametrize("where, how", [("fuse", "fd"), ("nobodys-fuse", "map"), ("tmp", "fd"),
                                        ("tmp", "map")],
                         ids=["fuse-open", "nobodys-fuse-mapped", "control-local-folder-open",
                              "control-local-folder-mapped"])
def test_2_a_disk_held_through_a_node_on_a_fuse_mount_is_in_use(loop_disk, where, how,
                                                                 tmp_path):
    name, rdev = os.path.basename(loop_disk), os.stat(loop_disk).st_rdev
    with contextlib.ExitStack() as stack:
        if where != "tmp":
            node = stack.enter_context(fuse_in_a_folder(_node_fuse(
                rdev, 65534 if where == "nobodys-fuse" else 0))).mountpoint / "f"
        else:
            node = tmp_path / "f"
            os.mknod(node, stat.S_IFBLK | 0o600, rdev)
        child = subprocess.Popen(
            (NOBODY_RUN if where == "nobodys-fuse" else []) + [PYTHON, "-c", HOLD, str(node), how],
            stdout=subprocess.PIPE, text=True, cwd="/")
        try:
            assert child.stdout.readline().strip() == "HH-REVIEW16"  # (it reads the disk)
            view = StorageView.read(Sysfs("/"))
        finally:
            child.kill()
            child.wait()
    seen = view.use_of_block(name) + view.problems
    assert any(f"pid {child.pid}" in u for u in seen), seen


# -- 3. network namespaces a user makes, each read in turn with no bound on them all ------------

#: nobody's program, in a user namespace of theirs: ``argv[1]`` network namespaces, each kept
#: by an fd of it (one process; nothing else to make); prints "ready" once all are made.
NETNS_MAKER = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
kept = []
for _ in range(int(sys.argv[1])):
    if libc.unshare(0x40000000):  # CLONE_NEWNET
        sys.exit("unshare: " + os.strerror(ctypes.get_errno()))
    kept.append(os.open("/proc/self/ns/net", os.O_RDONLY))
print("ready", flush=True)
time.sleep(600)
"""


@as_root
@pytest.mark.parametrize("count", [800, 5], ids=["namespaces-800", "control-namespaces-5"])
def test_3_network_namespaces_a_user_makes_do_not_stall_the_read(count, monkeypatch):
    f = scale_budgets(monkeypatch)
    bound = network.NAMESPACES_BUDGET + 15 * f
    view = read_beside(["unshare", "-Ur", PYTHON, "-c", NETNS_MAKER, str(count)],
                       lambda: NetView.read(Sysfs("/")), bound)
    assert view is not None, (
        f"the host's network read did not end in {bound:g} s: nobody's {count} network "
        "namespaces (one process's fds) are each entered and read in turn, and nothing said")


# -- 4. mapped-file lists a user sizes, each read within the bound, with no bound on them all ---

#: nobody's program: one file at a path of about 3800 bytes below ``argv[1]``, mapped
#: ``argv[2]`` times (neighbours at alternate offsets: about half as many areas in
#: ``/proc/PID/maps``, each a line with that path), then ``argv[3]`` forks (each a copy of
#: the areas); prints "ready" once all are made.
MAPPER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
path = os.path.join(sys.argv[1], *(chr(97 + i) * 250 for i in range(15)))
os.makedirs(path)
with open(os.path.join(path, "f"), "wb") as w:
    w.truncate(8192)
fd = os.open(os.path.join(path, "f"), os.O_RDONLY)
for i in range(int(sys.argv[2])):
    if libc.mmap(None, 4096, 1, 2, fd, 4096 * (i % 2)) in (None, 2 ** 64 - 1):
        sys.exit("mmap: " + os.strerror(ctypes.get_errno()))
os.close(fd)
for _ in range(int(sys.argv[3])):
    if os.fork() == 0:
        time.sleep(600)
        os._exit(0)
print("ready", flush=True)
time.sleep(600)
"""


@as_root
@pytest.mark.parametrize("count", [30000, 100], ids=["mapped-30000", "control-mapped-100"])
def test_4_mapped_files_a_user_lists_do_not_stall_the_read(count, monkeypatch):
    scale_budgets(monkeypatch)
    top = Path(tempfile.mkdtemp(prefix="hh-test-r24-"))
    top.chmod(0o755)
    os.chown(top, 65534, 65534)
    bound = storage.MAPS_BUDGET + 2 * storage.DETACHED_STAT_TIMEOUT
    try:
        view = read_beside([PYTHON, "-c", MAPPER, str(top), str(count), "20"],
                           lambda: StorageView.read(Sysfs("/")), bound)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(top)], check=False)
    assert view is not None, (
        f"the host's storage read did not end in {bound:g} s: nobody's 21 processes that map "
        f"one file {count // 2} times at a long path are each read whole, and said nothing")


# -- 5. a registered file whose path has a space -----------------------------------------------

@as_root
@pytest.mark.parametrize("file", ["my disk.img", "disk.img"], ids=["space", "control-no-space"])
def test_5_a_plain_file_registered_with_io_uring_at_a_path_with_a_space_is_provable(
        tmp_path, file):
    image = tmp_path / file
    image.write_bytes(b"HH-REVIEW16".ljust(4096, b"\0"))
    child = subprocess.Popen([PYTHON, "-c", URING, str(image), "fd"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        if child.stdout.readline().strip() != "reading":
            pytest.skip("io_uring is not usable here")
        view = StorageView.read(Sysfs("/"))
    finally:
        child.kill()
        child.wait()
    theirs = [p for p in view.problems if f"pid {child.pid} " in p]
    assert not theirs, theirs
