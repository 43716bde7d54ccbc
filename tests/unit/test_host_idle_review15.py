"""Issue 31, fifteenth adversarial read. What it found and this file's tests fix:

1. A user-space program on the host that drives a function through the kernel's older
   interface, ``/proc/bus/pci/BB/DD.F`` (config space read and written, BARs mapped through
   its ``PCIIOC_MMAP_IS_MEM`` ioctl; pciutils falls back to it, old user-space drivers use it),
   left the function reading idle when it was on no driver or on pci-stub: only its sysfs
   ``resource*``/``config``/``rom`` files counted, though the open-file read had the
   /proc path already.

2. A FUSE file held open by a process after its mount was lazily unmounted
   (``fusermount3 -u -z``), behind a daemon that never answers, blocked root's ``stat`` of
   every process's open files for good (the file's mount is in no mount list, so it was not
   skipped as a network or FUSE mount's): ``doctor``, ``plan`` and a bind hung, a bind with
   the journal's lock held. The type of an open file is now read from the kernel's cache
   (``statx`` with ``AT_STATX_DONT_SYNC``), and a file on a detached mount is given
   :data:`DETACHED_STAT_TIMEOUT` seconds, after which what it holds is unknown: a problem,
   so storage is unproven rather than the read hung. (Fixed the round after the read.)

Case 1: a fake sysfs and /proc tree. Case 2: a real FUSE mount served by
:mod:`tests.unit.fusestub`, as root; no guest is booted."""

import os
import threading
import time

import pytest

from harness.host import storage
from harness.host.safety import HostUsage, _proc_bus_pci
from harness.host.sysfs import Sysfs

from . import fakesysfs
from .fusestub import FuseStub
from .test_host_idle_review3 import PORT1
from .test_paths import as_root

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
#: The silent-FUSE tests read this host's /proc whole: a neighbour of many fds or namespaces (the
#: other real-host tests) spends the read's budgets before it reaches their holder.
REAL_HOST = pytest.mark.xdist_group("real-host-namespaces")


@pytest.mark.parametrize("how", ["fd", "maps"])
def test_1_a_function_a_process_holds_through_proc_bus_pci_is_in_use(lab, how):
    lab.kernel(lab.sys / "bus/pci/drivers/ixgbe/unbind", PORT1)
    assert HostUsage.read(lab.root).verdict(PORT1).idle
    proc_file = "/proc/bus/pci/05/00.1"
    lab.proc("5000/comm", "vendor-tool\n")
    if how == "fd":
        (lab.root / "proc/5000/fd").mkdir()
        os.symlink(proc_file, lab.root / "proc/5000/fd/3")
    else:  # a BAR mapped through the ioctl, the fd closed after
        lab.proc("5000/maps", f"7f1c40000000-7f1c40080000 rw-s 00000000 00:15 4026 {proc_file}\n")
    assert HostUsage.read(lab.root).verdict(PORT1).uses == (
        f"{PORT1}'s {proc_file} (procfs) is open or mapped by pid 5000 (vendor-tool): a "
        "user-space driver may use it",)
    assert HostUsage.read(lab.root).verdict("0000:05:00.0").idle  # its sibling's is not held


def test_1_proc_bus_pci_names_a_domain_other_than_0000_in_its_folder():
    """(and domain 0000 in both forms: x86's ``05/00.1``, arm64's and riscv64's
    ``0000:05/00.1``)"""
    assert _proc_bus_pci("0000:05:00.1") == ("/proc/bus/pci/05/00.1",
                                             "/proc/bus/pci/0000:05/00.1")
    assert _proc_bus_pci("0001:3a:02.7") == ("/proc/bus/pci/0001:3a/02.7",)


def _keep(box: list, call, *args) -> None:
    """``call(*args)``'s value into ``box``; an error is dropped (a stat the stub's abort ends
    fails with ECONNABORTED after the test)."""
    try:
        box.append(call(*args))
    except OSError:
        pass


def _read_storage(bound: float) -> tuple[storage.StorageView | None, float]:
    """The real host's StorageView, or None when it did not come in ``bound`` seconds (the read
    is left blocked in a daemon thread, which the FUSE stub's abort frees)."""
    box: list = []
    start = time.monotonic()
    thread = threading.Thread(target=_keep, args=(box, storage.StorageView.read, Sysfs("/")),
                              daemon=True)
    thread.start()
    thread.join(bound)
    return (box[0] if box else None), time.monotonic() - start


@pytest.fixture
def silent_fuse(tmp_path):
    """A FUSE file a process holds open, its daemon silent and its mount detached; and that a
    plain ``stat`` of it through /proc does hang (the premise)."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this host: modprobe fuse")
    with FuseStub(tmp_path / "mnt") as fuse:
        holder = fuse.hold_file()
        fuse.go_silent()
        fuse.detach()
        plain: list = []
        stuck = threading.Thread(target=_keep, args=(plain, os.stat, f"/proc/{holder.pid}/fd/3"),
                                 daemon=True)
        stuck.start()
        stuck.join(2)
        assert not plain, "a plain stat of the file answered: the daemon is not silent"
        yield holder


@REAL_HOST
@as_root
def test_2_a_file_on_a_detached_fuse_mount_with_a_silent_daemon_does_not_hang_the_read(
        silent_fuse, monkeypatch):
    # (a wait on the daemon would take the whole bound: 30 s tells it from a slow read of a
    # loaded host, which 5 s did not)
    monkeypatch.setattr(storage, "DETACHED_STAT_TIMEOUT", 30.0)
    view, took = _read_storage(90)
    assert view is not None, "the host's storage read hung on the silent FUSE daemon"
    assert any(who[0] == silent_fuse.pid for who in view.opened.paths.get("/f", ())), \
        "the held file is missing from the open files"
    assert not [p for p in view.problems if f"pid {silent_fuse.pid} " in p]  # its type came
    assert took < storage.DETACHED_STAT_TIMEOUT  # from the cache, without a wait


@REAL_HOST
@as_root
def test_2_a_filesystem_that_ignores_dont_sync_costs_a_bounded_wait_and_proves_nothing(
        silent_fuse, monkeypatch):
    """A kernel or filesystem that asks its server even with AT_STATX_DONT_SYNC (a plain stat
    stands for it): the file's type is given up on, and storage is unproven, with the holder."""
    monkeypatch.setattr(storage, "DETACHED_STAT_TIMEOUT", 1.0)
    monkeypatch.setattr(storage, "node_type", lambda path: (lambda st: (st.st_mode, st.st_rdev))(
        os.stat(path)))
    view, _ = _read_storage(60)
    assert view is not None, "the host's storage read hung on the silent FUSE daemon"
    assert [p for p in view.problems if f"pid {silent_fuse.pid} " in p] == [
        f"pid {silent_fuse.pid} ({_comm(silent_fuse.pid)}) holds /f open on a detached mount "
        f"(id {_mount_id(silent_fuse.pid)}, in no mount list) whose filesystem did not say in "
        f"1 s what the file is: which device it holds is unknown; end that process (kill "
        f"{silent_fuse.pid}) or its filesystem's daemon"]


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def _mount_id(pid: int) -> str:
    for line in open(f"/proc/{pid}/fdinfo/3"):
        if line.startswith("mnt_id:"):
            return line.split()[1]
    raise AssertionError("no mnt_id")


def test_a_lookup_given_up_on_hands_its_late_value_to_be_closed():
    """``call_within`` (the storage read's bounded stat, the network read's O_PATH lookup): a
    value that comes after the caller gave up is handed to ``late``, so an fd is not leaked."""
    go, late = threading.Event(), []
    with pytest.raises(TimeoutError, match="no answer in 0.2 s"):
        storage.call_within(lambda: go.wait() and "fd 42", 0.2, late=late.append)
    go.set()
    for _ in range(50):
        if late:
            break
        time.sleep(0.02)
    assert late == ["fd 42"]
    assert storage.call_within(lambda: "at once", 1) == "at once"
