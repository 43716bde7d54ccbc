"""Issue 31, twenty-second adversarial read. What it found, one section below each:

1. any local user with a FUSE mount of their own leaves every device on the host unproven, with
   no intent: the newest fix for mapped files (0dea287, :func:`harness.host.storage.
   _mapped_numbers`) looks each mapped file up through ``/proc/PID/map_files/START-END``
   (``statx``, which follows the link to the file) and calls a refusal (EACCES/EPERM) "root
   may not look at it" - a storage problem, which goes into every verdict ("1 files mapped by
   pid N cannot be looked at through /proc/PID/map_files (permission denied: run as root,
   outside any LSM confinement)"). For a file on a FUSE mount made without ``allow_other``
   the kernel refuses that to everyone but the mount's owner, root included
   (``fuse_allow_current_process``): the nineteenth read's first finding, back through
   mappings. What maps such files: a program run from an AppImage (squashfuse, the user's:
   its binary and libraries are mapped from it), an sqlite or git pack file on sshfs or
   rclone, a Flatpak app's file through the document portal (/run/user/UID/doc). Who: any
   user who does any of that; likely: high on shared lab hosts and desktops; bad: no device
   can be taken while it lasts (a false refusal that names an "LSM" that is not there). The
   open-file read skips FUSE files for this reason (fifteenth, nineteenth reads); a mapping
   says its filesystem's device number, which a FUSE mount's is.

2. any local user stalls every read of the host's open files for good on kernels before
   6.17 (Debian 12's 6.1, Ubuntu 24.04's 6.8, RHEL 9's 5.14): ``OpenFiles._add_maps`` reads
   ``/proc/PID/maps`` (and a thread's) with ``read_bytes()``, no bound, and the kernel takes
   the process's ``mmap_lock`` for it (``m_start``: ``mmap_read_lock_killable``). nobody
   maps a page of a file on their FUSE mount, stops answering, and has one thread touch the
   page through ``/proc/self/mem`` (``access_remote_vm`` faults with ``mmap_lock`` held and
   no retry: it waits for the daemon) while a second thread calls ``mmap`` (a writer waits,
   and every reader after it queues: reader stealing is refused when readers own the
   lock). ``doctor``, ``plan``, ``discover``, a bind (the journal's lock held) and every
   give-back (:func:`harness.host.binding._holders`) then wait until that user lets go. On
   this host's 6.18 ``maps`` is read under per-VMA locks and does not wait, but the
   ``map_files`` lookups do (tried here with review 19's FUSE stub: the storage read took
   5.05 s and ended with "the N files processes map did not all say in 5 s", which names no
   process, and a root thread left blocked in the kernel for each read). Likely: by intent
   only, one user with FUSE (fusermount3 is setuid on Debian and Ubuntu); bad: no bind and
   no give-back while it lasts.

3. a USB disk (usb-host's ``usb-device`` role) can never be handed over on a host with an
   automount point or ZFS loaded, and nothing the operator writes changes that: the
   twenty-first read's fourth fix (f3e06ad) makes any candidate with a disk below it
   "may hold /home (auto.home, autofs): the harness cannot tell which disk does"
   (:meth:`harness.host.safety.HostUsage._storage`); controllers may be cleared with
   ``no_host_filesystems = true``, but that key "does not apply to role 'usb-device'"
   (inventory.py ``_ROLE_KEYS``), :attr:`HostUsage.cleared` holds BDFs only, and
   :func:`harness.host.usbhost.proven_idle` reads the host with nothing cleared. An autofs
   map is the common shape of a shared lab host (NFS homes under ``/home``, ``/net``), and
   so is ZFS on Proxmox and Ubuntu hosts. Likely: medium; bad: the USB disk passthrough tests
   can never run there, and the refusal gives no way out (a false refusal).

4. any local user makes every SAS HBA on mpt3sas (and every RAID controller of the drivers in
   ``_DRIVER_NODES``) and every Mellanox NIC unproven, one command, with no privilege: the
   twenty-first read's second fix (87c96c4, :func:`harness.host.safety._tool_node_uses`)
   counts any process whose fd or mapping has a *path* ``/dev/mpt3ctl`` (``opened.holders``:
   by name, whatever the file is) or one under ``/dev/mst/`` (by prefix), in whatever mount
   namespace. nobody, in a user and mount namespace of theirs (``unshare -Urm``), mounts a
   tmpfs on ``/dev``, makes ``/dev/mst/x`` a plain file and keeps it open: "pid N (sleep)
   holds /dev/mst/x, through which its tools reach any function its vendor drives". The
   kernel says what the file is (``statx`` of the fd: a regular file, on that user's tmpfs;
   the node's number is matched already). Likely: by intent; bad: those controllers and NICs
   cannot be taken while it lasts (a false refusal that blames a tool).

5. any local user makes every read of the host's open files take hours again, with processes
   in place of threads: the eighteenth read's third finding said "forked processes that keep
   the fds do the same", and its fix bounds only the tables of one process's threads
   (:data:`~harness.host.storage.MAX_OWN_TABLES`). A fork copies the table (8 bytes of kernel
   memory an fd, the files themselves shared), and :class:`harness.host.storage.OpenFiles`
   reads every process's table fd by fd (link, fdinfo, a statx: about 100 us an fd here, 2.1
   s for one process of nobody's 20000 fds, their hard limit on this host; Debian's is
   524288). nobody opens 20000 fds of ``/dev/null`` and forks 1000 children that keep them
   (160 MB of kernel memory, well under their process limit): 20 million entries, about 35
   minutes for every ``doctor``, ``plan``, ``discover``, bind (the journal's lock held),
   ``restore`` and run's end (:func:`harness.host.binding._holders`), and nothing said. No
   bound on the fds read in all, and no problem, where kcmp answers (the budget of
   :data:`~harness.host.storage.MAX_UNCOMPARED_FDS` is only for hosts without it). Likely: by
   intent; bad: as the eighteenth's third (a CI job's timeout kills the run before the
   give-back).

Case 1: nobody's FUSE mount (review 19's stub, as ``fusermount`` mounts it: no
``allow_other``) and nobody's process mapping a file there, the whole host's storage read as
root; the control: the same on root's own mount. Case 2: the fake lab host with a process whose
``maps`` is a FIFO, standing for a read the kernel holds back (the test lets it go after 30 s).
Case 3: the fake lab host, review 21's USB disk and autofs mount, an inventory that clears the
disk; the controls: no automount, and the USB controller cleared. Case 4: nobody's user and
mount namespace with the plain file open, the host's open files read as root and judged for a
function of each driver or vendor. Case 5: nobody's process with 2000 fds and 20 forks that
keep them, the entries the read looks at counted (review 17's way), not seconds. Each fails on the code as it is (af7abdb): 1 says "1 files
mapped by pid N cannot be looked at through /proc/PID/map_files (permission denied ...)", 2
"the storage read was still blocked on pid 5422's maps after 30 s", 3 "key
'no_host_filesystems' does not apply to role 'usb-device'", 4 "pid N (sleep) holds
/dev/mst/mt4119_pciconf0 ...", 5 "the read looked at 42063 fds of 21 processes that hold the
same 2000 open files ..., 2003 of one, and said nothing"; the controls pass. No guest is booted.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import types

import pytest

from harness.host import safety, storage, usbhost
from harness.host.inventory import parse_inventory
from harness.host.safety import HostUsage
from harness.host.storage import StorageView
from harness.host.sysfs import Sysfs

from . import fakesysfs, fusestub
from .test_host_idle_review17 import NOBODY_RUN
from .test_host_idle_review19 import NobodysFuse, fuse_in_a_folder
from .test_host_idle_review16 import loop_disk as _loop_disk
from .test_host_idle_review21 import XHCI, _usb_disk
from .test_paths import as_root

#: The real-host cases make namespaces and processes of nobody's and read the whole host.
pytestmark = pytest.mark.xdist_group("real-host-namespaces")
fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures



# -- 1. a file mapped from a user's own FUSE mount ----------------------------------------------

class _SizedFuse(NobodysFuse):
    """Nobody's FUSE mount (review 19's), its file ``f`` one page long so that it can be
    mapped (and, once the daemon is silent, a fault on it waits for good)."""

    @staticmethod
    def _answer(opcode: int, node: int, body: bytes) -> tuple[int, bytes]:
        attr = fusestub._ATTR.pack(node, 0 if node == 1 else 4096, 0, 0, 0, 0, 0, 0, 0,
                                   0o40755 if node == 1 else 0o100644, 1, 0, 0, 0, 4096, 0)
        if opcode == fusestub._GETATTR:
            return 0, struct.pack("<QII", 0, 0, 0) + attr
        if opcode == fusestub._LOOKUP and node == 1 and body.rstrip(b"\0") == b"f":
            return 0, struct.pack("<QQQQII", 2, 0, 0, 0, 0, 0) + fusestub._ATTR.pack(
                2, 4096, 0, 0, 0, 0, 0, 0, 0, 0o100644, 1, 0, 0, 0, 4096, 0)
        return NobodysFuse._answer(opcode, node, body)


class _RootsSizedFuse(_SizedFuse):
    OWNER = 0  # (root's own mount: root may look at its files)


#: What nobody's program does with ``f``: maps it (a library of an AppImage's squashfuse
#: mount, an sqlite file on sshfs) and closes the fd.
MAPPER = ("import mmap, sys, time\n"
          "f = open(sys.argv[1], 'rb')\n"
          "m = mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ)\n"
          "f.close(); print('mapped', flush=True); time.sleep(600)\n")


@pytest.fixture
def nobodys_sized_fuse():
    with fuse_in_a_folder(_SizedFuse) as stub:
        yield stub


def _map_as(stub, run: list[str], program: str = MAPPER) -> subprocess.Popen:
    proc = subprocess.Popen(run + [sys.executable, "-c", program, str(stub.mountpoint / "f")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
    stub.holders.append(proc)
    assert proc.stdout.readline() == "mapped\n"
    return proc


@as_root
def test_1_a_file_mapped_from_a_users_fuse_mount_leaves_the_devices_provable(nobodys_sized_fuse):
    holder = _map_as(nobodys_sized_fuse, NOBODY_RUN)
    problems = StorageView.read(Sysfs("/")).problems
    theirs = [p for p in problems if f"pid {holder.pid}" in p]
    assert not theirs, theirs


@as_root
def test_1_control_a_file_mapped_from_roots_fuse_mount_is_no_problem(tmp_path):
    with _RootsSizedFuse(tmp_path / "mnt") as stub:
        holder = _map_as(stub, [])
        problems = StorageView.read(Sysfs("/")).problems
    assert not [p for p in problems if f"pid {holder.pid}" in p], problems


# -- 2. a read of a process's maps that the kernel holds --------------------------------------

def test_2_a_maps_read_the_kernel_holds_back_is_bounded(lab):
    """``/proc/PID/maps`` as a FIFO: a read the kernel blocks (before 6.17, ``m_start``'s
    ``mmap_read_lock_killable`` behind a pending writer while nobody's thread faults on their
    silent FUSE mount). The read of the host must end, and say which process it could not
    read."""
    maps = lab.root / "proc/5422/maps"
    lab.proc("5422/comm", "hh22-stuck\n")
    os.mkfifo(maps)
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(v=StorageView.read(lab.sysfs())),
                              daemon=True)
    thread.start()
    thread.join(30)
    ended = "v" in box
    try:  # (let a read still blocked go, the harness's or a bounded lookup's: an EOF)
        os.close(os.open(maps, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # (ENXIO: no one reads it)
    thread.join(10)
    assert ended, "the storage read was still blocked on pid 5422's maps after 30 s"
    assert any("pid 5422" in p for p in box["v"].problems), box["v"].problems


# -- 3. a USB disk an automount point may hold: no way to clear it -------------------------------

#: The USB disk of review 21's case 4 (bus 4, address 2), as an inventory lists it for usb-host,
#: with the statement the storage roles may make.
USB_DISK = """
[[device]]
role = "usb-device"
name = "backup"
hostbus = 4
hostaddr = 2
{cleared}
"""


def _usb_disk_verdict(host, automount: bool, cleared: str):
    _usb_disk(host, automount)
    inventory = parse_inventory(USB_DISK.format(cleared=cleared), root=host.root)
    return usbhost.proven_idle(host.sysfs(), inventory.devices[0], "busaddr", 0.0)[1]


def test_3_a_usb_disk_the_inventory_clears_is_handed_to_usb_host(lab):
    verdict = _usb_disk_verdict(lab, True, "no_host_filesystems = true")
    assert verdict.idle, verdict.uses


def test_3_control_with_no_automount_the_usb_disk_is_handed_over(lab):
    assert _usb_disk_verdict(lab, False, "").idle


def test_3_control_a_usb_controller_with_the_disk_can_be_cleared(lab):
    _usb_disk(lab, True)
    assert HostUsage.read(lab.root, cleared_storage={XHCI}).verdict(XHCI).idle


# -- 4. a file named like a tool's node, in nobody's own mount namespace --------------------------

#: (the driver or vendor of the function, the path nobody's file has in their namespace)
NAMED = {"mst": (None, "15b3", "/dev/mst/mt4119_pciconf0"),
         "mpt3ctl": ("mpt3sas", "1000", "/dev/mpt3ctl")}


def _tool_uses_with_nobodys_file(what: str) -> list[str]:
    """The tool-node uses of a function of ``what``'s driver or vendor while nobody, in a user
    and mount namespace of theirs, holds a regular file at the node's path there."""
    driver, vendor, path = NAMED[what]
    folder = path.rsplit("/", 1)[0]
    script = (f"mount -t tmpfs hh22 /dev && mkdir -p {folder} && : > {path} && "
              f"exec 3<{path} && echo ready && exec sleep 120")
    child = subprocess.Popen(NOBODY_RUN + ["unshare", "--user", "--map-root-user", "--mount",
                                           "sh", "-c", script],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if child.stdout.readline().strip() != "ready":
            pytest.skip(f"nobody cannot make a mount namespace here: {child.stderr.read()}")
        fs, problems = Sysfs("/"), []
        infos = storage.mountinfos(fs, problems)
        opened = storage.OpenFiles(fs, problems, storage.remote_mount_ids(infos),
                                   storage.mount_ids(infos))
        dev = types.SimpleNamespace(bdf="0000:0a:00.0", driver=driver, vendor=vendor)
        return [u for u in safety._tool_node_uses(fs, opened, dev) if f"pid {child.pid} " in u]
    finally:
        child.kill()
        child.wait()
        for stream in (child.stdout, child.stderr):
            stream.close()


@as_root
@pytest.mark.parametrize("what", sorted(NAMED))
def test_4_a_users_own_file_named_like_a_tools_node_is_no_use(what):
    assert _tool_uses_with_nobodys_file(what) == []


# -- 5. one table of open files, copied by fork ------------------------------------------------

#: nobody's process: ``fds`` fds of /dev/null, then ``children`` forks that keep them all
#: (a pre-forking server's workers, or anyone's loop of ``fork``); prints every pid.
FORKER = """
import os, resource, sys, time
fds, children = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (fds + 64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
null = os.open("/dev/null", os.O_RDONLY)
for _ in range(fds - 1):
    os.dup(null)
pids = [os.getpid()]
for _ in range(children):
    pid = os.fork()
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    pids.append(pid)
print(*pids, flush=True)
time.sleep(600)
"""


def _entries_read_of_forks(children: int, fds: int = 2000) -> tuple[int, list[str], list[int]]:
    """(the fd entries one read of the host's open files looked at for nobody's processes, its
    problems, their pids)."""
    child = subprocess.Popen(NOBODY_RUN + [sys.executable, "-c", FORKER, str(fds), str(children)],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pids = [int(p) for p in child.stdout.readline().split()]
        seen, add = [0], storage.OpenFiles._add

        def counted(self, fs, fd, who, *rest):
            seen[0] += who[0] in pids
            return add(self, fs, fd, who, *rest)

        problems: list[str] = []
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(storage.OpenFiles, "_add", counted)
            storage.OpenFiles(Sysfs("/"), problems)
        return seen[0], problems, pids
    finally:
        os.killpg(child.pid, 9)
        child.wait()
        child.stdout.close()


@as_root
def test_5_forks_that_keep_one_processs_fds_do_not_multiply_the_read():
    alone, _, _ = _entries_read_of_forks(0)
    copied, problems, pids = _entries_read_of_forks(20)
    assert alone >= 2000
    named = [p for p in problems if any(f"pid {pid}" in p for pid in pids)]
    assert copied <= (1 + storage.MAX_OWN_TABLES) * alone or named, (
        f"the read looked at {copied} fds of 21 processes that hold the same 2000 open files "
        f"(a fork's copy of one table), {alone} of one, and said nothing")


loop_disk = _loop_disk  # a fixture: a real loop device, the sixteenth read's


#: A process that opens ``argv[1]`` (a disk) and 100 more fds, forks a child that keeps
#: them all, and then, with ``argv[2]`` ``closed``, closes its own fd of the disk; prints
#: both pids.
FORK_HOLDER = """
import os, sys, time
disk = os.open(sys.argv[1], os.O_RDONLY)
null = [os.open("/dev/null", os.O_RDONLY) for _ in range(100)]
child = os.fork()
if child == 0:
    time.sleep(600)
    os._exit(0)
if sys.argv[2] == "closed":
    os.close(disk)
print(os.getpid(), child, flush=True)
time.sleep(600)
"""


@as_root
@pytest.mark.parametrize("parent", ["kept", "closed"])
def test_5_a_disk_a_fork_holds_is_in_use_by_it(loop_disk, parent):
    """A fork's copy of its parent's fd is read through the parent (above): its holders name
    the fork too; and one the parent closed since is the fork's alone, read as such."""
    name = os.path.basename(loop_disk)
    proc = subprocess.Popen([sys.executable, "-c", FORK_HOLDER, loop_disk, parent],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        uses = StorageView.read(Sysfs("/")).use_of_block(name)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
        proc.stdout.close()
    assert any(f"pid {pids[1]} " in u for u in uses), uses
    assert any(f"pid {pids[0]} " in u for u in uses) is (parent == "kept"), uses
