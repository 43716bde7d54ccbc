"""Issue 31, nineteenth adversarial read. What it found, one section below each:

1. any local user with a FUSE mount of their own (``sshfs``, ``rclone mount``, GNOME's gvfs
   and the document portal under /run/user/UID, or a FUSE mount in a user namespace of
   theirs) who keeps one file open there leaves every NIC on the host unproven, with no
   intent: the network read now asks the kernel of *every* fd on the host whose link is a
   path whether it is a namespace's file (:func:`harness.host.nsholders.fd_namespace`, the
   nsmiss merge), by ``statx`` of ``/proc/PID/fd/N``; for a file on a FUSE mount that was
   not made with ``allow_other`` the kernel refuses that to everyone but the mount's owner,
   root included (``fuse_allow_current_process``: EACCES), and the refusal is taken for "a
   namespace's file which cannot be told" (``went_away`` is only ENOENT, ENOTDIR, ESRCH,
   ESTALE): a problem of the whole network read. The open-file read skips FUSE files for
   just this reason; this new path does not. ``doctor``/``plan`` call every NIC unproven and
   a bind of any NIC is refused for as long as, say, an editor or a ``tail -f`` of the user
   keeps a file of their sshfs mount open. Likely: high on shared lab hosts (sshfs homes,
   desktops); bad: no NIC can be taken (a false refusal, fail closed), and the problem
   names an fd of a user's editor as "may be a namespace's file", which sends the operator
   looking in the wrong place.

2. a host where network namespaces keep ending (sandboxes that live a moment: Bazel's
   ``linux-sandbox`` makes one a build action, Chrome one a renderer, ``systemd-run -p
   PrivateNetwork=yes``, CI containers; or any local user's ``while :; do unshare -Urn true;
   done``) makes every NIC unproven: the re-search (``RESEARCHES``, the nsmiss merge) counts
   searches in which *some* namespace went away between being seen and being entered, not
   the namespace that did: a namespace seen through a process that ended, and that the next
   search finds held by nothing, was gone (the docstring's own rule), but the next search
   sees another that ends, and after four such searches the last one's is "each way into it
   was gone ... in each of 4 searches": a problem of the whole read. The window is the whole
   holder search (every process's fds, every mount namespace, ``fd_namespace`` of every
   fd): the ways in are opened after it, not as each holder is found. Here, two of nobody's
   loops making namespaces that live 5 ms failed one read in five; on a host with
   thousands of processes (a read of a second or more) a build's sandboxes do it to nearly
   every read. Likely: medium on shared build/CI lab hosts; bad: no NIC can be taken while
   it lasts (a false refusal), and by intent any user keeps it so.

3. ``harness bind`` (and a run's bind) of any NVMe controller whose namespaces have native
   multipath heads is refused, idle or not: the claim held through the move
   (:func:`harness.host.binding._disks_claimed`) opens ``/dev/<name>`` of every disk
   :func:`harness.host.safety.disks_below` lists, and that lists the controller's *path*
   devices too (``nvme0c0n1``: a hidden disk, in /sys/class/block, below the controller,
   with ``hidden`` = 1 and no device number, so no /dev node). Its open says ENOENT, which
   is "something started using it since it was proven idle": "refusing to take ...:
   /dev/nvme0c0n1 cannot be claimed right before the move (No such file or directory)".
   The storage read knows this shape (``use_of_block`` skips the claim of a hidden path:
   "the kernel claims the disk through its head"); the move's claim does not. Who: every
   host with a dual-port (multi-controller, ``CMIC``) NVMe SSD, which most U.2/E3
   datacenter drives are, on a kernel with ``CONFIG_NVME_MULTIPATH`` (Debian, Ubuntu,
   Fedora, RHEL 9: on), or ``nvme_core.multipath_always_on``, or QEMU's ``nvme-subsys``.
   Likely: high on server lab hosts; bad: the NVMe passthrough tests can never run there (a
   false refusal that plan/doctor do not predict: they call the controller idle).

4. a process whose main thread has ended (``pthread_exit`` from ``main``, the documented way
   to let a program's other threads run on; the leader stays a zombie) with more than
   :data:`harness.host.storage.MAX_OWN_TABLES` (8) threads makes every device on the host
   unproven: the eighteenth read's bound counts the threads that do not share their
   *leader's* table of open files (``kcmp(pid, tid, KCMP_FILES)``), and a zombie leader has
   no table, so every live thread "has a table of its own" although all share one: "pid N
   has 12 threads with fd tables of their own (unshare(CLONE_FILES)); only 8 were read",
   a storage problem, which goes into every verdict. (Comparing the threads with one
   another, not with the leader, reads that one table once.) Who: any program written that
   way, a service or a user's; any local user by intent, with one command. Likely: low
   without intent, trivial with; bad: nothing can be taken while it runs.

Case 1: a real FUSE mount owned by nobody (served by :mod:`tests.unit.fusestub`, mounted as
``fusermount`` mounts it for a user: ``user_id=65534``, no ``allow_other``) and a process of
nobody's holding a file there; the whole host's network read as root. Case 2: a real
namespace of nobody's (a user namespace and its network namespace, held by one process) made
before each search of the holders and ended, its process reaped, right as the read reaches
for it (the race made exact, as tests/unit/test_host_ns_churn.py makes it). Case 3: a fake
sysfs tree with an NVMe controller, its hidden path device and its multipath head, read as
the running host is (the claim is made only there), the head's /dev node a stand-in file.
Case 4: a real process of nobody's, its main thread ended, twelve threads left (and the
control: its main thread alive). Each fails on the code as it is (ea6ff04). No guest is
booted.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from harness.core.errors import HarnessError
from harness.host import network
from harness.host.binding import _disks_claimed
from harness.host.safety import HostUsage
from harness.host.storage import MAX_OWN_TABLES, StorageView
from harness.host.network import NetView
from harness.host.sysfs import Sysfs

from . import fakesysfs
from .fusestub import FuseStub
from .test_host_idle_review17 import NOBODY_RUN
from .test_paths import NOBODY, as_root

#: These tests make real namespaces, mounts and processes and read the whole host.
pytestmark = [pytest.mark.xdist_group("real-host-namespaces"), as_root]
fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures


# -- 1. a file open on a user's FUSE mount ---------------------------------------------------


class NobodysFuse(FuseStub):
    """:class:`FuseStub` mounted as ``fusermount`` mounts a user's FUSE filesystem: owned by
    that user (``user_id``/``group_id``), without ``allow_other``, so that the kernel lets no
    other user, root included, look at its files."""

    OWNER = NOBODY
    FLAGS = 0x2 | 0x4  # (MS_NOSUID | MS_NODEV, as fusermount mounts it)

    def hold_file_as_nobody(self) -> subprocess.Popen:
        """A process of nobody's that keeps ``f`` open (an editor, a ``tail -f``)."""
        proc = subprocess.Popen(
            NOBODY_RUN + [sys.executable, "-c", "import sys, time; f = open(sys.argv[1]); "
                          "print('open', flush=True); time.sleep(600)",
                          str(self.mountpoint / "f")],
            stdout=subprocess.PIPE, text=True, cwd="/")
        self.holders.append(proc)
        assert proc.stdout.readline() == "open\n"
        return proc


@contextlib.contextmanager
def fuse_in_a_folder(stub=None, name: "str | bytes" = "mnt"):
    """A mount of ``stub`` (a :class:`NobodysFuse`, nobody's by default) at ``name`` in a
    temporary folder that nobody reaches (as a user reaches their home), removed after."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this host: modprobe fuse")
    top = Path(tempfile.mkdtemp(prefix="hh-test-fuse-"))
    top.chmod(0o755)
    try:
        with (stub or NobodysFuse)(top / os.fsdecode(name)) as mounted:
            yield mounted
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(top)], check=False)


@pytest.fixture
def nobodys_fuse():
    with fuse_in_a_folder() as stub:
        yield stub


def _read_network_within(seconds: float) -> NetView:
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(view=NetView.read(Sysfs("/"))),
                              daemon=True)
    thread.start()
    thread.join(seconds)
    assert "view" in box, f"the host's network read did not end in {seconds} s"
    return box["view"]


def test_1_a_file_open_on_a_users_fuse_mount_leaves_the_nics_provable(nobodys_fuse):
    """The kernel refuses root a ``statx`` of nobody's FUSE file (EACCES); the file is no
    namespace's (a namespace's file is on nsfs, which the kernel never refuses root), so
    nothing about the host's network namespaces is unknown."""
    holder = nobodys_fuse.hold_file_as_nobody()
    with pytest.raises(PermissionError):  # (the shape: root may not look at it)
        os.stat(nobodys_fuse.mountpoint / "f")
    view = _read_network_within(60)
    theirs = [p for p in view.problems if f"pid {holder.pid}" in p]
    assert not theirs, theirs


def test_1_control_a_file_open_on_roots_own_fuse_mount_is_no_problem(tmp_path):
    """The same file on a FUSE mount root may look at (``user_id=0``) is no problem: what
    the finding turns on is only the kernel's refusal."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this host: modprobe fuse")
    with FuseStub(tmp_path / "mnt") as stub:
        holder = stub.hold_file()
        view = _read_network_within(60)
    assert not [p for p in view.problems if f"pid {holder.pid}" in p], view.problems


# -- 2. namespaces that keep ending while the host is read ------------------------------------


def _sandbox() -> "tuple[subprocess.Popen, str]":
    """A process of nobody's alone in a network namespace of its own (a sandbox): (it, the
    namespace's inode ``[N]``)."""
    proc = subprocess.Popen(NOBODY_RUN + ["unshare", "--user", "--map-root-user", "--net",
                                          "sh", "-c", "echo ready; exec sleep 60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    if proc.stdout.readline().strip() != "ready":
        pytest.skip(f"nobody cannot make a network namespace here: {proc.stderr.read()}")
    deadline = time.monotonic() + 10
    while True:  # (`ready` is said in it: the namespace is made)
        inode = os.readlink(f"/proc/{proc.pid}/ns/net").removeprefix("net:")
        if inode != os.readlink("/proc/self/ns/net").removeprefix("net:"):
            return proc, inode
        assert time.monotonic() < deadline, "the sandbox never entered its namespace"
        time.sleep(0.01)


def test_2_namespaces_that_end_in_each_search_leave_the_nics_provable(monkeypatch):
    """Before each search of the holders a new sandbox starts; it ends (and is reaped) right
    when the read reaches for its namespace, as one of a build's does on a busy host. Each
    one was held by its process alone: gone, as the next search shows (it is in none). The
    host has nothing unknown: no problem may say a namespace went away in every search."""
    sandboxes: list[tuple[subprocess.Popen, str]] = []
    real_search, real_open = network._search, network.open_namespace

    def search(fs, done, *fds):
        sandboxes.append(_sandbox())
        return real_search(fs, done, *fds)

    def open_namespace(fs, path, inode, kind):
        for proc, theirs in sandboxes:
            if theirs == inode and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        return real_open(fs, path, inode, kind)

    monkeypatch.setattr(network, "_search", search)
    monkeypatch.setattr(network, "open_namespace", open_namespace)
    try:
        view = _read_network_within(120)
    finally:
        for proc, _ in sandboxes:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
    went = [p for p in view.problems if "each way into it was gone" in p]
    assert not went, went
    # (the premise: each search met a sandbox that ended; or, a namespace being held from the
    # moment it is seen, the first sandbox's was read before it could end)
    assert len(sandboxes) > 1 or f"pid {sandboxes[0][0].pid}" in view.namespaces, \
        (len(sandboxes), sorted(view.namespaces))


# -- 3. an NVMe controller's hidden multipath path at the move's claim --------------------------

NVME = "0000:09:00.0"


class HostShaped(Sysfs):
    """A fake tree read as the running host is (:attr:`Sysfs.real_host`): the move's claim of
    the disks below what moves is made only there, on the tree's /dev."""

    @property
    def real_host(self) -> bool:
        return True


def _multipath_nvme(host) -> None:
    """An idle NVMe controller nvme0 whose namespace has a native multipath head, as a
    dual-port SSD's does: the head nvme0n1 (259:0) under the subsystem, with its /dev node;
    the path nvme0c0n1 below the controller, in /sys/class/block, hidden, with no device
    number (so no ``dev``, no DEVNAME, no /dev node)."""
    host.add_pci(NVME, "144d:a824", 0x010802, "nvme", 21)
    ctrl = host.dev_dir(NVME) / "nvme/nvme0"
    ctrl.mkdir(parents=True)
    (ctrl / "dev").write_text("242:0\n")
    (ctrl / "uevent").write_text("MAJOR=242\nMINOR=0\nDEVNAME=nvme0\n")
    path = ctrl / "nvme0c0n1"
    path.mkdir()
    (path / "hidden").write_text("1\n")
    (path / "uevent").write_text("DEVTYPE=disk\n")
    os.symlink(path, host.sys / "class/block/nvme0c0n1")
    subsys = host.sys / "devices/virtual/nvme-subsystem/nvme-subsys0"
    (subsys / "nvme0n1").mkdir(parents=True)
    os.symlink(ctrl, subsys / "nvme0")
    (subsys / "nvme0n1/dev").write_text("259:0\n")
    (subsys / "nvme0n1/uevent").write_text("MAJOR=259\nMINOR=0\nDEVNAME=nvme0n1\n")
    os.symlink(subsys / "nvme0n1", host.sys / "class/block/nvme0n1")
    host.file("dev/nvme0n1")  # (a stand-in for the head's node: an exclusive open succeeds)


def test_3_an_idle_nvme_controller_with_multipath_heads_can_be_claimed_for_the_move(lab):
    _multipath_nvme(lab)
    verdict = HostUsage.read(lab.root).verdict(NVME)
    assert verdict.idle, verdict  # (the proof: idle)
    # (a host says what is built in: one that cannot counts every module there)
    lab.file(f"lib/modules/{os.uname().release}/modules.builtin")
    fs = HostShaped(lab.root)
    dev = fs.pci_device(NVME)
    plan = type("Plan", (), {"to_move": (dev,), "members": (dev,)})()
    try:
        with _disks_claimed(fs, plan):
            pass
    except HarnessError as e:
        pytest.fail(f"an idle NVMe controller with a multipath head was refused at the move: {e}")


# -- 4. a process whose main thread ended -----------------------------------------------------

#: A program whose main thread starts ``argv[1]`` threads and ends (``pthread_exit``): the
#: threads live on, sharing the one table of open files the process had.
MAIN_ENDS = ("import ctypes, sys, threading, time\n"
             "for _ in range(int(sys.argv[1])):\n"
             "    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
             "print('ready', flush=True)\n"
             "if sys.argv[2] == 'ends':\n"
             "    ctypes.CDLL(None).pthread_exit(None)\n"
             "time.sleep(600)\n")


@pytest.mark.parametrize("main", ["ends", "lives"])
def test_4_threads_of_a_process_whose_main_thread_ended_share_one_table(main):
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        pytest.skip("no /usr/bin/python3 for nobody")
    threads = MAX_OWN_TABLES + 4
    proc = subprocess.Popen(NOBODY_RUN + [python, "-c", MAIN_ENDS, str(threads), main],
                            stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        while main == "ends" and not open(f"/proc/{proc.pid}/stat").read().rsplit(
                ")", 1)[1].split()[0] == "Z":
            assert time.monotonic() < deadline, "the main thread did not end"
            time.sleep(0.05)
        box: dict = {}
        reader = threading.Thread(target=lambda: box.update(
            view=StorageView.read(Sysfs("/"))), daemon=True)
        reader.start()
        reader.join(120)
        assert "view" in box, "the host's storage read did not end in 120 s"
    finally:
        proc.kill()
        proc.wait(10)
    theirs = [p for p in box["view"].problems if f"pid {proc.pid} " in p]
    assert not theirs, theirs
