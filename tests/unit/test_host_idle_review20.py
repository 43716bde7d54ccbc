"""Issue 31, twentieth adversarial read. What it found, one section below each:

1. a disk (or a function's BAR, or /dev/mem) that a process has mapped reads idle when that
   process's main thread has ended (``pthread_exit`` from ``main``; the leader stays a
   zombie while its other threads run on): the mappings are read from ``/proc/PID/maps``
   alone (:meth:`harness.host.storage.OpenFiles._add_maps`), and the kernel shows a zombie
   leader's maps empty (its ``mm`` is gone from the leader; the threads share it, and each
   ``/proc/PID/task/TID/maps`` lists it in full). The nineteenth read's fourth fix reads
   such a process's fd tables through its live threads; its mappings stay unread, and a
   mapping is exactly what holds a file after its fd is closed (the docstring's own
   reason: a user-space driver's mmap of ``resource0``). Nothing else shows it: a mapping
   of a block device is no exclusive claim (the open ``O_EXCL`` succeeds), no holder, no
   fd. Who: a process written that way (a daemon whose main thread hands over to workers
   and ends, the documented use of ``pthread_exit`` in ``main``) that maps a disk, a BAR,
   a vfio device or /dev/mem and closes the fd. Likely: low; bad: the worst kind, a device
   in use is taken, with nothing said.

2. the network read's holder search (:func:`harness.host.network._held_by_process`) lists
   ``/proc/PID/fd`` alone: the fds of a thread with a table of its own
   (``unshare(CLONE_FILES)``) and of a process whose main thread ended (a zombie leader
   shows no fds; its threads keep the table) are never looked at. The storage read reads
   both (:meth:`harness.host.storage.OpenFiles._add_threads`, with the nineteenth read's
   fourth fix); this one does not. A network namespace held only by such fds (an nsfs fd, a
   socket made in it, a tun fd: a routing daemon's per-VRF sockets, a runtime's handle:
   the thread shape is a worker that isolates its table) is never found, and no
   problem says so: its interfaces are in no namespace read. A NIC with a netdev there (a
   second port, an mlx5 sub-function's netdev moved into it) reads idle by what shows of
   it elsewhere. Likely: low (the holder must be root's to have a physical netdev in its
   namespace); bad: a device in use taken, with nothing said.

3. any local user ends every read of the host's network (``doctor``, ``plan``,
   ``discover``, every bind with the journal's lock held, an SR-IOV PF's give-back) with a
   traceback: ``ValueError: filedescriptor out of range in select()``. The search keeps
   one fd open for each network namespace a process lives in (``early``, the nineteenth
   read's second fix), with the soft limit of open files raised to the hard one
   (:func:`harness.host.nsholders.more_open_files`), so past about a thousand namespaces the
   next fds the harness opens are numbered past 1023; the visit of a mount namespace no
   process is in (:meth:`harness.host.nsholders.MountVisits._enter`) then waits for its
   helper with ``select.select``, which refuses such an fd, and the ``ValueError`` passes
   every ``except OSError``. nobody, in a user namespace of theirs, makes 1100 processes
   each alone in a network namespace (``unshare --net sleep``: a few seconds, about 200 MB
   of kernel memory) and binds one mount namespace to a file (``unshare --mount=FILE``).
   Without intent: an Ubuntu host, whose snapd keeps each snap's mount namespace bound in
   /run/snapd/ns with no process in it (visited by every read), that also runs more than
   about a thousand network namespaces with a process in each (a large container or
   OpenStack network node). Likely: by intent, or on such hosts; bad: no plan, no doctor,
   no bind while it lasts (a crash on something another user controls).

4. a disk mapped through a node at another path than the host's ``/dev/NAME`` reads idle
   once the fd that made the mapping is closed: a mapping is matched by the path
   ``/proc/PID/maps`` prints (:meth:`harness.host.storage.OpenFiles._add_mapped` adds it to
   ``paths`` only), while an fd is matched by the device number of what it leads to too. A
   container's ``/dev/xvdb`` (the runtime's ``mknod`` with the host's numbers, or a bind
   mount of the host's node, as runc and kubelet's raw block volumes make them) prints as
   ``/dev/xvdb``, and the maps line gives the filesystem and inode of that node, not the
   disk's number; ``/proc/PID/map_files/START-END`` would lead to the node and its
   ``st_rdev``. (Where the container's name is another host disk's, that one reads in use
   instead: safe.) Who: a program in a privileged container or with a raw block volume that
   maps its disk and closes the fd, or any root program given a node made elsewhere.
   Likely: low; bad: the worst kind, the disk is taken with nothing said. The same holds for
   a character node mapped so (usbfs' buffers, a UIO device's ``/dev/uioN``).

5. any local user stops every read of the host's open files, and with it every give-back,
   with a traceback (``UnicodeDecodeError``), in one command: the nineteenth read's fixes
   read ``/proc/PID/stat`` with ``Path.read_text()``, strict UTF-8
   (:func:`harness.host.storage._ended_leader`, and :func:`~harness.host.storage._ended`),
   and that file holds the process's name, which is any bytes its owner chose
   (``prctl(PR_SET_NAME)``, ``/proc/self/comm``, an executable's name). ``_ended_leader``
   runs for every process with more than one thread, so one multi-threaded process of
   anyone's whose name is not UTF-8 ends ``OpenFiles``: ``doctor``, ``plan``, ``discover``,
   every bind, and the check every give-back makes before it touches a device
   (:func:`harness.host.binding._holders`: ``restore``, ``release``, a run's end), so
   nothing the harness took goes back while it runs. No intent is needed: the kernel cuts
   a name at 15 bytes, inside a character when it is not ASCII (an executable named in
   Cyrillic, ``мониторинг``; Wine names a process after its ``.exe``). Likewise
   :func:`harness.host.nsholders._on_fuse` (the nineteenth read's first fix) reads the
   holder's ``mountinfo`` strictly, where a mount point is any bytes too: a user's FUSE
   mount at ``~/mnt\xff`` (``fusermount``, no privilege) with a file open there ends the
   network read. Likely: high by intent, plausible without; bad: no bind, no plan, and no
   give-back while it lasts (a crash on something another user controls).

6. on arm64 and riscv64 hosts a function driven through /proc/bus/pci reads idle (the
   fifteenth read's first finding, back on those architectures): the kernel names every
   folder there with its domain when ``pci_proc_domain()`` says so, which
   ``asm-generic/pci.h`` makes 1 on every architecture that takes it (arm64, riscv64, and
   others; arm64 under Hyper-V: the domain's number), so the file is
   ``/proc/bus/pci/0000:05/00.1``; :func:`harness.host.safety._proc_bus_pci` gives
   ``/proc/bus/pci/05/00.1`` for domain 0000 (x86's layout), which is matched against
   what processes hold and stat'ed for another mount's holders
   (:func:`~harness.host.storage.pci_file_holders`): no such file, no holder. A
   user-space program holding the function's config space or a BAR mapped through its
   ``PCIIOC_MMAP_IS_MEM`` (pciutils' ``proc`` method, an old user-space driver) on a function
   on no driver or pci-stub leaves it idle. Who: arm64 lab hosts (Ampere, Graviton, Grace:
   SMMU, vfio-pci as on x86; the harness knows kcmp's number there). Likely: low (the procfs
   interface is rare); bad: the worst kind, the function is taken from its program.

Case 1: a real loop device mapped by a process of root's (a user-space program maps what
only root may open) whose main thread has ended, and the control (its main thread alive).
Case 2: nobody, in a user namespace of theirs, holding an fd of a second network namespace
(with a veth in it), in a thread's own table or with its main thread ended; and the control
(the fd in the process's table). Case 3: nobody's 1100
namespaces and one bound mount namespace, the harness at a soft limit of 1024 open files as
systemd gives a root service (raised by the read itself). Case 4: a real loop device and
a node of it made in a test folder, mapped by a process of root's (test 1's control maps
``/dev/loopN`` itself and is seen). Case 5: nobody's two-threaded process named
``hh20\xff``; nobody's FUSE mount (review 19's stub) at ``mnt\xff`` with a file held open
there. Case 6: the fake tree, its /proc/bus/pci laid out as arm64's (review 15's test is the
control: x86's layout, seen). Each fails on the code as it is (329e872): 1, 4 and 6 read
the device idle (no use at all), 2 reads neither the namespace nor a problem, 3 ends in
``ValueError``, 5 in ``UnicodeDecodeError``; the controls pass. No guest is booted.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import stat
import subprocess
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from harness.host import binding, network, nsholders, storage
from harness.host.network import NetView
from harness.host.safety import HostUsage
from harness.host.storage import StorageView
from harness.host.sysfs import Sysfs

from . import fakesysfs, test_host_idle_review16, test_host_idle_review18
from .test_host_idle_review17 import NOBODY_RUN
from .test_host_idle_review19 import fuse_in_a_folder
from .test_host_idle_review3 import PORT1
from .test_paths import NOBODY, as_root

#: These tests make real namespaces, loop devices and processes and read the whole host.
pytestmark = [pytest.mark.xdist_group("real-host-namespaces"), as_root]
loop_disk = test_host_idle_review16.loop_disk  # fixture
fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PYTHON = "/usr/bin/python3"  # (one nobody may run: not under root's home)


def _wait_main_ended(pid: int) -> None:
    """Until ``pid``'s main thread has ended (its leader a zombie), 10 s at most."""
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the main thread did not end"
        time.sleep(0.05)


def _within(seconds: float, read):
    """``read()`` in a daemon thread: its value, or the exception it raised; fails the test
    when it does not end in ``seconds``."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = read()
        except BaseException as e:  # noqa: BLE001 (handed to the test)
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert box, f"the read did not end in {seconds} s"
    if "error" in box:  # (shown short: a decoding error carries the whole file)
        box["error"] = f"{type(box['error']).__name__}: {str(box['error'])[:300]}"
    return box


# -- 1. a mapping of a process whose main thread ended -----------------------------------------

#: Maps the first page of the block device ``argv[1]`` (``mmap(2)`` through the C library:
#: Python's mmap would keep a dup of the fd), closes its fd, starts a thread that lives on,
#: and ends its main thread when ``argv[2]`` is ``ends``.
MAPPER = textwrap.dedent(r"""
    import ctypes, os, sys, threading, time
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    fd = os.open(sys.argv[1], os.O_RDONLY)
    at = libc.mmap(None, 4096, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
    if at in (None, ctypes.c_void_p(-1).value):
        sys.exit("mmap: " + os.strerror(ctypes.get_errno()))
    os.close(fd)  # (the mapping holds the disk now; no fd does)
    threading.Thread(target=time.sleep, args=(600,)).start()
    print("ready", flush=True)
    if sys.argv[2] == "ends":
        libc.pthread_exit(None)
    time.sleep(600)
""")


@pytest.mark.parametrize("main", ["ends", "lives"])
def test_1_a_disk_mapped_by_a_process_whose_main_thread_ended_is_in_use(loop_disk, main):
    name = os.path.basename(loop_disk)
    assert StorageView.read(Sysfs("/")).use_of_block(name) == []  # (idle before)
    def shape(pid: int) -> None:
        if main == "ends":
            _wait_main_ended(pid)
        # (the mapping is in its live thread's maps, and no fd holds the disk)
        tasks = os.listdir(f"/proc/{pid}/task")
        assert any(loop_disk in Path(f"/proc/{pid}/task/{t}/maps").read_text()
                   for t in tasks if t != str(pid))
    pid, uses = _uses_while_mapped(name, [loop_disk, main], shape)
    assert any(f"pid {pid}" in u for u in uses), \
        f"{name}, mapped by pid {pid} (main thread {main}), reads: {uses}"


def _uses_while_mapped(name: str, args: list[str], shape) -> "tuple[int, list[str]]":
    """(the pid of a :data:`MAPPER` run with ``args``, what the host's storage read says of
    the disk ``name`` while it maps it, in 120 s at most); ``shape(pid)`` checks the premise
    first."""
    proc = subprocess.Popen([PYTHON, "-c", MAPPER, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        said = proc.stdout.readline().strip()
        assert said == "ready", proc.stderr.read()
        shape(proc.pid)
        box = _within(120, lambda: StorageView.read(Sysfs("/")).use_of_block(name))
    finally:
        proc.kill()
        proc.wait(10)
    assert "error" not in box, box.get("error")
    return proc.pid, box["value"]


# -- 2. an fd of a process whose main thread ended, holding a network namespace ----------------

#: nobody's, in a user namespace and a network namespace of theirs (A): makes a second
#: network namespace (B) with a veth ``hh20held`` in it, keeps an fd of B, goes back to A, and
#: starts a thread that lives on. ``argv[1]``: ``ends``, its main thread ends; ``own``, the
#: thread takes a table of files of its own (``unshare(CLONE_FILES)``, a copy) and the main
#: thread closes its fd of B; ``lives``, neither. B is then held by that fd alone.
HOLDER = textwrap.dedent(r"""
    import ctypes, os, subprocess, sys, threading, time
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
        sys.exit("unshare: " + os.strerror(ctypes.get_errno()))
    if subprocess.run(["ip", "link", "add", "hh20held", "type", "veth", "peer", "name",
                       "hh20peer"]).returncode:
        sys.exit("no veth")
    held = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    b = os.readlink(f"/proc/self/fd/{held}")
    if libc.setns(home, 0x40000000) != 0:
        sys.exit("setns: " + os.strerror(ctypes.get_errno()))
    os.close(home)
    copied = threading.Event()
    def keep():
        if sys.argv[1] == "own" and libc.unshare(0x400) != 0:  # CLONE_FILES
            os._exit(3)
        copied.set()
        time.sleep(600)
    threading.Thread(target=keep).start()
    copied.wait()
    if sys.argv[1] == "own":
        os.close(held)  # (the thread's copy holds B now)
    print("ready", b, flush=True)
    if sys.argv[1] == "ends":
        libc.pthread_exit(None)
    time.sleep(600)
""")


@pytest.mark.parametrize("main", ["ends", "own", "lives"])
def test_2_a_namespace_held_by_an_fd_of_a_thread_is_read(main):
    if not os.access(PYTHON, os.X_OK):
        pytest.skip(f"no {PYTHON} for nobody")
    proc = subprocess.Popen(NOBODY_RUN + ["unshare", "--user", "--map-root-user", "--net",
                                          PYTHON, "-c", HOLDER, main],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        said = proc.stdout.readline().split()
        if not said or said[0] != "ready":
            pytest.skip(f"nobody cannot make two network namespaces here: {proc.stderr.read()}")
        if main == "ends":
            _wait_main_ended(proc.pid)
        box = _within(180, lambda: NetView.read(Sysfs("/")))
    finally:
        proc.kill()
        proc.wait(10)
    assert "error" not in box, box.get("error")
    view = box["value"]
    found = [name for name, ns in view.namespaces.items() if "hh20held" in ns.links]
    told = [p for p in view.problems if f"pid {proc.pid}" in p]
    assert found or told, (f"the namespace {said[1]} that an fd of pid {proc.pid} holds "
                           f"({main}), with hh20held in it, was neither read nor named: read "
                           f"{sorted(view.namespaces)}")


@as_root
def test_2_threads_with_copies_of_one_table_do_not_multiply_the_network_read():
    """Reading threads' own tables (the fix above) is bounded as the storage read bounds them
    (eighteenth read, 3): 150 threads of nobody's, each a copy of 2000 fds, are 8 tables read
    and a problem, not 150."""
    child = subprocess.Popen(NOBODY_RUN + [PYTHON, "-c", test_host_idle_review18.OWN_TABLES,
                                           "150", "2000"], cwd="/", stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    seen, held_by_entry = [0], network._held_by_entry

    def counted(fs, proc, what, entry, *rest):
        seen[0] += what == "fd" and proc.name == str(child.pid)
        return held_by_entry(fs, proc, what, entry, *rest)
    try:
        if child.stdout.readline().strip() != "ready":
            pytest.skip("nobody could not hold 2000 fds in 150 threads here")
        fs, problems = Sysfs("/"), []
        with pytest.MonkeyPatch.context() as patch, nsholders.MountVisits(fs) as visits:
            patch.setattr(network, "_held_by_entry", counted)
            network._holders(fs, visits, problems)
    finally:
        child.kill()
        child.wait()
    assert seen[0] <= (1 + storage.MAX_OWN_TABLES) * 2010, f"{seen[0]} fds read"
    assert any(f"pid {child.pid}" in p and "fd tables of their own" in p for p in problems)


# -- 3. a thousand namespaces, then a visit that waits with select() ----------------------------

#: nobody, in a user namespace and a mount namespace of theirs: one mount namespace bound to a
#: file of a tmpfs there (no process is in it: every read of the host visits it), then
#: ``$2`` processes, each alone in a network namespace of its own.
MAKER = ('mount -t tmpfs hh-r20 "$1" || exit 1; j=0; touch "$1/m0"; '
         'until unshare --mount="$1/m$j" true 2>/dev/null; do j=$((j + 1)); '
         '[ "$j" -lt 40 ] || exit 1; touch "$1/m$j"; done; '
         'i=0; while [ "$i" -lt "$2" ]; do unshare --net sleep 600 & i=$((i + 1)); done; '
         'echo ready; wait')


def _nobodys_namespaces() -> int:
    """How many network namespaces processes of nobody's live in."""
    seen = set()
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            if os.stat(f"/proc/{pid}").st_uid == NOBODY:
                seen.add(os.readlink(f"/proc/{pid}/ns/net"))
        except OSError:
            continue
    return len(seen)


def test_3_a_thousand_namespaces_do_not_end_the_network_read_in_a_traceback():
    count = 1100
    folder = Path(tempfile.mkdtemp(prefix="hh-review20-"))
    os.chown(folder, NOBODY, NOBODY)
    maker = subprocess.Popen(NOBODY_RUN + ["unshare", "--user", "--map-root-user", "--mount",
                                           "sh", "-c", MAKER,
                                           "sh", str(folder), str(count)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd="/", start_new_session=True)
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if maker.stdout.readline().strip() != "ready":
            pytest.skip(f"nobody cannot make {count} namespaces here: {maker.stderr.read()}")
        deadline = time.monotonic() + 60
        while _nobodys_namespaces() < count:  # (each sleep in its namespace)
            assert time.monotonic() < deadline, _nobodys_namespaces()
            time.sleep(0.2)
        if limits[1] < 4096:
            pytest.skip(f"a hard limit of {limits[1]} open files: the read cannot keep {count}")
        # (a root service on a systemd host: DefaultLimitNOFILE=1024:524288; sudo keeps it)
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, limits[1]))
        fs, problems, early = Sysfs("/"), [], {}

        def search() -> int:  # (as network._search does, up to the visits)
            with nsholders.more_open_files():
                try:
                    with nsholders.MountVisits(fs) as visits:
                        network._holders(fs, visits, problems, early)
                        return len(visits.helpers)
                finally:
                    for _, fd in early.values():
                        os.close(fd)

        box = _within(180, search)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
        try:
            os.killpg(maker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        maker.wait(30)
        subprocess.run(["rm", "-rf", "--one-file-system", str(folder)], check=False)
    assert "error" not in box, (f"nobody's {count} namespaces ended the host's network read "
                                f"in a traceback: {box.get('error')}")
    assert len(early) > 1024  # (the premise: an fd kept for each namespace seen)
    visited = box["value"]
    assert visited or any("mount namespace" in p for p in problems), problems[:3]


# -- 4. a disk mapped through a node of another path ----------------------------------------------


def test_4_a_disk_mapped_through_a_node_of_another_path_is_in_use(loop_disk, tmp_path):
    """A node of the disk made elsewhere, as a container runtime makes ``/dev/xvdb`` in a
    container's /dev (``mknod``, the host's numbers); a process maps the disk through it and
    closes its fd. ``/proc/PID/maps`` prints that path, and the filesystem and inode of that
    node (not the disk's number); an fd of it would have been matched by number."""
    name = os.path.basename(loop_disk)
    alias = tmp_path / "xvdb"
    os.mknod(alias, stat.S_IFBLK | 0o600, os.stat(loop_disk).st_rdev)
    assert StorageView.read(Sysfs("/")).use_of_block(name) == []  # (idle before)
    def shape(pid: int) -> None:
        assert str(alias) in Path(f"/proc/{pid}/maps").read_text()
    pid, uses = _uses_while_mapped(name, [str(alias), "lives"], shape)
    assert any(f"pid {pid}" in u for u in uses), \
        f"{name}, mapped by pid {pid} through {alias}, reads: {uses}"


def test_4_mapped_files_root_may_not_look_at_are_a_named_problem(monkeypatch):
    """An LSM that confines root (or a kernel without ``CAP_CHECKPOINT_RESTORE`` for it) denies
    ``/proc/PID/map_files``: what those mappings are is then unknown, and says so. The
    kernel's answer is put in place of the lookup: no LSM here confines root."""
    monkeypatch.setattr(storage, "_first_type",
                        lambda links, key=None: PermissionError(errno.EACCES, "denied"))
    problems = StorageView.read(Sysfs("/")).problems
    assert any("map_files" in p and "permission denied" in p for p in problems), problems


# -- 5. a name not UTF-8 in what the nineteenth read's fixes read strictly ------------------------

#: nobody's process named ``hh20\xff`` (``prctl(PR_SET_NAME)``; or an executable's name cut at
#: 15 bytes inside a character), with a second thread.
NAMED = textwrap.dedent(r"""
    import ctypes, threading, time
    ctypes.CDLL(None).prctl(15, b"hh20\xff", 0, 0, 0)  # PR_SET_NAME
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
    print("ready", flush=True)
    time.sleep(600)
""")


@pytest.fixture
def named_not_utf8():
    if not os.access(PYTHON, os.X_OK):
        pytest.skip(f"no {PYTHON} for nobody")
    proc = subprocess.Popen(NOBODY_RUN + [PYTHON, "-c", NAMED], stdout=subprocess.PIPE,
                            text=True, cwd="/")
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert Path(f"/proc/{proc.pid}/stat").read_bytes().split(b" ", 2)[1] == b"(hh20\xff)"
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def test_5_a_process_name_not_utf8_does_not_stop_the_storage_read(named_not_utf8):
    box = _within(120, lambda: StorageView.read(Sysfs("/")))
    assert "error" not in box, (f"nobody's process name ended the host's storage read in a "
                                f"traceback: {box.get('error')}")


def test_5_a_process_name_not_utf8_does_not_stop_the_give_back(named_not_utf8):
    """The check every give-back makes (``restore``, ``release``, a run's end) before it
    touches a device: who holds its group or nodes open."""
    box = _within(120, lambda: binding._holders(Sysfs("/"), None))
    assert "error" not in box, (f"nobody's process name ended the give-back's check in a "
                                f"traceback: {box.get('error')}")


@pytest.fixture
def nobodys_fuse_not_utf8():
    """nobody's FUSE mount (as ``fusermount`` makes it) at a path whose name is not UTF-8."""
    with fuse_in_a_folder(name=b"mnt\xff") as stub:
        yield stub


def test_5_a_file_open_on_a_fuse_mount_named_not_utf8_does_not_stop_the_network_read(
        nobodys_fuse_not_utf8):
    stub = nobodys_fuse_not_utf8
    holder = subprocess.Popen(  # (an editor, a ``tail -f``; /usr/bin's Python: nobody's to run)
        NOBODY_RUN + [PYTHON, "-c", "import sys, time; f = open(sys.argv[1]); "
                      "print('open', flush=True); time.sleep(600)", str(stub.mountpoint / "f")],
        stdout=subprocess.PIPE, text=True, cwd="/")
    stub.holders.append(holder)
    assert holder.stdout.readline() == "open\n"
    box = _within(120, lambda: NetView.read(Sysfs("/")))
    assert "error" not in box, (f"a file pid {holder.pid} of nobody's holds on their FUSE mount "
                                f"ended the host's network read in a traceback: "
                                f"{box.get('error')}")


# -- 6. /proc/bus/pci as arm64 and riscv64 name its folders -----------------------------------


@pytest.mark.parametrize("how", ["fd", "maps"])
def test_6_a_function_held_through_proc_bus_pci_with_its_domain_named_is_in_use(lab, how):
    """The fifteenth read's case on a kernel that names the domain in every folder of
    /proc/bus/pci (``pci_proc_domain()`` is 1 on arm64 and riscv64: ``0000:05/00.1``)."""
    lab.kernel(lab.sys / "bus/pci/drivers/ixgbe/unbind", PORT1)
    lab.proc("bus/pci/0000:05/00.1", "")  # (no 05/00.1 on such a kernel)
    assert HostUsage.read(lab.root).verdict(PORT1).idle
    proc_file = "/proc/bus/pci/0000:05/00.1"
    inode = os.stat(lab.root / proc_file.lstrip("/")).st_ino
    lab.proc("5000/comm", "vendor-tool\n")
    if how == "fd":
        (lab.root / "proc/5000/fd").mkdir()
        os.symlink(proc_file, lab.root / "proc/5000/fd/3")
    else:  # a BAR mapped through the ioctl, the fd closed after
        lab.proc("5000/maps", f"7f1c40000000-7f1c40080000 rw-s 00000000 00:15 {inode} "
                              f"{proc_file}\n")
    uses = HostUsage.read(lab.root).verdict(PORT1).uses
    assert any("pid 5000" in u for u in uses), uses
