"""Issue 31, fifth adversarial read: holes in the host code and in what root reads, runs or
writes, each closed fail-closed, each test failing on the code before its fix. Fake sysfs and
fake `ip -j` output (tests/unit/fakesysfs.py), real files, and a second user (nobody)."""

import os
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.core.errors import HostDeviceError
from harness.core.paths import UnsafePathError
from harness.host.binding import VfioBinder, restore_from_journal
from harness.host.safety import HostUsage
from harness.run.session import HarnessSession

from . import fakesysfs
from .fakesysfs import FakeHost, link

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
PORT0, PORT1 = "0000:05:00.0", "0000:05:00.1"
NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second user "
                                                       "(nobody): run as root, as CI does")


def as_nobody(script: str) -> None:
    """Run a shell ``script`` as the user nobody (the local attacker)."""
    subprocess.run(["/bin/sh", "-ec", script], check=True, timeout=30, cwd="/",
                   preexec_fn=lambda: (os.setgroups([]), os.setgid(NOBODY), os.setuid(NOBODY)))


@pytest.fixture
def shared_tmp():
    """A sticky, world-writable folder like /tmp, owned by root."""
    d = Path(tempfile.mkdtemp(prefix="hh-test-sharedtmp-"))
    d.chmod(0o1777)
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=True)


def nobodys_folder(path: Path) -> Path:
    path.mkdir(mode=0o755)
    os.chown(path, NOBODY, NOBODY)
    return path


# -- 3. a netdev on an auxiliary device (an mlx5 sub-function) of the PF ------------------------


def sub_function(host: FakeHost, pf: str, name: str) -> None:
    """An auxiliary device ``name`` below ``pf`` in sysfs, as mlx5_core makes for an SF."""
    sf = host.dev_dir(pf) / name
    sf.mkdir()
    (host.sys / "bus/auxiliary/devices").mkdir(parents=True, exist_ok=True)
    os.symlink(sf, host.sys / "bus/auxiliary/devices" / name)


def test_3_a_sub_functions_netdev_in_a_container_ties_the_pf(lab):
    """eth0 in a container sits on mlx5_core.sf.2 (parentbus auxiliary), a child of the PF:
    only ``parentbus pci`` links counted, so the PF read idle while the container used it."""
    sub_function(lab, PORT0, "mlx5_core.sf.2")
    lab.network("ctr", links=[link(1, "lo", up=True),
                              link(2, "eth0", up=True, parentbus="auxiliary",
                                   parentdev="mlx5_core.sf.2")],
                addrs={"eth0": ["10.9.0.2/24"]},
                routes=[{"dst": "default", "gateway": "10.9.0.1", "dev": "eth0"}])
    verdict = HostUsage.read(lab.sysfs()).verdict(PORT0)
    assert not verdict.idle
    assert "eth0 (netns ctr) is up with the address 10.9.0.2/24" in verdict.uses


def test_3_a_netdev_on_a_parent_sysfs_does_not_show_makes_every_nic_unproven(lab):
    """A parent the harness cannot find in /sys/bus/<bus>/devices may be below any function."""
    lab.network("ctr", links=[link(1, "lo", up=True),
                              link(2, "eth0", parentbus="auxiliary",
                                   parentdev="mlx5_core.sf.9")])
    usage = HostUsage.read(lab.sysfs())
    assert any("eth0 (netns ctr) sits on auxiliary/mlx5_core.sf.9, which /sys/bus/auxiliary/devices "
               "does not show" in p for p in usage.net.problems)
    assert not usage.verdict(PORT0).idle


# -- 4. an automount point whose disk is not mounted yet ----------------------------------------

SATA2 = "0000:06:00.0"
AUTOMOUNT = ("99 1 0:55 / /data rw,relatime shared:50 - autofs systemd-1 rw,fd=45,pgrp=1,"
             "timeout=0,minproto=5,maxproto=5,direct\n")


def test_4_an_automount_point_makes_storage_controllers_unproven(lab):
    """fstab's ``UUID=... /data ext4 x-systemd.automount``: until something opens /data only
    an autofs mount shows, on no disk; the controller behind /data read idle."""
    assert HostUsage.read(lab.sysfs()).verdict(SATA2).idle
    mountinfo = lab.root / "proc/self/mountinfo"
    mountinfo.write_text(mountinfo.read_text() + AUTOMOUNT)
    usage = HostUsage.read(lab.sysfs())
    assert usage.storage.unmapped == ["/data (systemd-1, autofs)"]
    verdict = usage.verdict(SATA2)
    assert not verdict.idle
    assert any("may hold /data (systemd-1, autofs)" in u for u in verdict.uses)
    cleared = HostUsage.read(lab.sysfs(), cleared_storage=frozenset({SATA2})).verdict(SATA2)
    assert cleared.idle


def test_4_systemds_binfmt_misc_automount_is_no_disk(lab):
    mountinfo = lab.root / "proc/self/mountinfo"
    mountinfo.write_text(mountinfo.read_text() + AUTOMOUNT.replace(
        "/data", "/proc/sys/fs/binfmt_misc"))
    assert HostUsage.read(lab.sysfs()).verdict(SATA2).idle


# -- 7. a device on vfio-pci while some process's fds cannot be read ---------------------------


def bound_then_unreadable(host: FakeHost, journal) -> None:
    """PORT0 and PORT1 (one group) on vfio-pci; pid 77 is a QEMU whose fds cannot be read."""
    VfioBinder(host.sysfs(), journal=journal).bind(PORT0, {PORT0, PORT1})
    host.proc("77/comm", "qemu-system-x86\n")
    host.file("proc/77/fd", "not a folder")
    host.writes.clear()


def test_7_a_vfio_device_with_unreadable_fds_is_not_idle(lab, fake_root):
    """It read "on vfio-pci and /dev/vfio/N is open by no process" while pid 77's fds could
    not be read at all."""
    bound_then_unreadable(lab, fake_root / "var/lib/hh/journal.json")
    usage = HostUsage.read(lab.sysfs())
    assert any("pid 77" in p for p in usage.storage.problems)
    verdict = usage.verdict(PORT0)
    assert not verdict.idle
    assert any(u.startswith(f"cannot tell whether {PORT0} is in use: ") and "pid 77" in u
               for u in verdict.uses)


def test_7_restore_does_not_unbind_while_fds_cannot_be_read(lab, fake_root):
    """restore unbound the group from vfio-pci (blocking in the kernel, or handing a QEMU's
    device to a host driver) because unreadable fds counted as "no holder"."""
    journal = fake_root / "var/lib/hh/journal.json"
    bound_then_unreadable(lab, journal)
    with pytest.raises(HostDeviceError, match="could not be given back") as e:
        restore_from_journal(lab.sysfs(), journal, include_live=True)
    assert "is still open by a process the harness cannot see" in str(e.value.details) + \
        e.value.message
    assert lab.writes == []
    assert lab.driver_of(PORT0) == "vfio-pci"


# -- 6. the run folder is checked before root's SSH key and seed go into it ---------------------


def cloud_image_options(tmp: Path, reports: Path) -> SimpleNamespace:
    """--guest-disk cloud.qcow2 --guest-cloud-init --report-dir REPORTS: the run makes an
    SSH key and a NoCloud seed in its run folder when the session is made."""
    disk = tmp / "cloud.qcow2"
    disk.write_bytes(b"")
    return SimpleNamespace(
        backend="emulated", driver="qmp", guest=[], guest_access=None, guest_append="",
        guest_cloud_init=True, guest_disk=str(disk), guest_disk_format="qcow2",
        guest_initrd=None, guest_kernel=None, guest_key=None, guest_ready=None,
        guest_user="root", host_inventory=None, image_cache=str(tmp / "cache"),
        keep_bundles=False, machine=None, no_reuse=False, qemu_binary="qemu-system-x86_64",
        report_dir=str(reports), retry_dead_guest=None, roles=None)


@as_root
def test_6_a_reports_folder_another_user_owns_gets_no_key(tmp_path):
    reports = nobodys_folder(tmp_path / "reports")
    with pytest.raises(UnsafePathError, match=f"the folder {reports} above .* is owned by uid "
                                              f"{NOBODY}"):
        HarnessSession(cloud_image_options(tmp_path, reports))
    assert list(reports.iterdir()) == []


@as_root
def test_6_a_run_folder_planted_as_a_symlink_gets_no_key(shared_tmp, tmp_path):
    """A worker (or the lab's run) is handed its run folder: one planted as a link to a
    folder of nobody's got root's private key before anything looked at it."""
    target = nobodys_folder(tmp_path / "nobodys")
    os.chmod(tmp_path, 0o755)
    as_nobody(f"ln -s {target} {shared_tmp}/run-1")
    with pytest.raises(UnsafePathError):
        HarnessSession(cloud_image_options(tmp_path, shared_tmp), plan=str(shared_tmp / "run-1"))
    assert list(target.iterdir()) == []
