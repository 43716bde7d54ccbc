"""Issue 31, fifth adversarial read: holes in the host code and in what root reads, runs or
writes, each closed fail-closed, each test failing on the code before its fix. Fake sysfs and
fake `ip -j` output (tests/unit/fakesysfs.py), real files, and a second user (nobody)."""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.core.errors import ConfigError, HostDeviceError
from harness.core.paths import UnsafePathError
from harness.host.binding import VfioBinder, restore_from_journal
from harness.host.safety import HostUsage
from harness.images import builtin as builtin_images
from harness.lab import image as lab_image
from harness.run import guests
from harness.run.session import HarnessSession

from . import fakesysfs
from .test_paths import _check_tree, _checkout
from .fakesysfs import FakeHost, link

from . import test_paths

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
PORT0, PORT1 = "0000:05:00.0", "0000:05:00.1"
NOBODY = test_paths.NOBODY
as_root = test_paths.as_root
as_nobody = test_paths.as_nobody   # (the local attacker)
shared_tmp = test_paths.shared_tmp  # (a fixture: a sticky folder others can write, like /tmp)


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
    assert any("eth0 (netns ctr) sits on auxiliary/mlx5_core.sf.9, which "
               "/sys/bus/auxiliary/devices does not show" in p for p in usage.net.problems)
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
    # systemd's automount of binfmt_misc (on most hosts) is no disk
    mountinfo.write_text(mountinfo.read_text().replace(AUTOMOUNT, AUTOMOUNT.replace(
        "/data", "/proc/sys/fs/binfmt_misc")))
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
    bound_then_unreadable(lab, fake_root / "var/lib/hotplug-harness/vfio-journal.json")
    usage = HostUsage.read(lab.sysfs())
    assert any("pid 77" in p for p in usage.storage.problems)
    verdict = usage.verdict(PORT0)
    assert not verdict.idle
    assert any(u.startswith(f"cannot tell whether {PORT0} is in use: ") and "pid 77" in u
               for u in verdict.uses)


def test_7_restore_does_not_unbind_while_fds_cannot_be_read(lab, fake_root):
    """restore unbound the group from vfio-pci (blocking in the kernel, or handing a QEMU's
    device to a host driver) because unreadable fds counted as "no holder"."""
    journal = fake_root / "var/lib/hotplug-harness/vfio-journal.json"
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
    disk = qcow2(tmp / "cloud.qcow2")
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


# -- 1. root runs the lab QEMU (and --qemu-binary backports' wrapper) from the image cache ------

FAKE_QEMU = "#!/bin/sh\ntouch {marker}\necho 'QEMU emulator version 10.0.2'\n"


def planted_lab_qemu(cache: Path, marker: Path, mode: int = 0o755) -> Path:
    """A lab QEMU "already unpacked" in ``cache`` (its folder is named predictably), a script
    that leaves ``marker`` when it runs."""
    digest = hashlib.sha256(lab_image.LAB_QEMU_RECIPE.read_bytes()
                            + Path(builtin_images.__file__).read_bytes()).hexdigest()[:16]
    out = cache / "lab-qemu" / digest  # (predictable: named by the recipe and the code)
    binary = out / "usr/bin/qemu-system-x86_64"
    binary.parent.mkdir(parents=True)
    binary.write_text(FAKE_QEMU.format(marker=marker))
    binary.chmod(mode)
    (out / "manifest.json").write_text("{}\n")
    return out


@as_root
def test_1_a_lab_qemu_planted_in_a_cache_another_user_owns_is_not_run(shared_tmp):
    """--image-cache DIR that others can write: nobody plants lab-qemu/<digest>/usr/bin/
    qemu-system-x86_64 (the digest is predictable) and root ran it at once (--version)."""
    cache, marker = shared_tmp / "cache", shared_tmp / "ran"
    as_nobody(f"mkdir -m 755 {cache}")
    out = planted_lab_qemu(cache, marker)
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(cache)], check=True)
    with pytest.raises(UnsafePathError, match=f"{cache}.* is owned by uid {NOBODY}"):
        lab_image.ensure_lab_qemu(cache, log=lambda s: None)
    with pytest.raises(UnsafePathError):
        lab_image.backports_qemu(cache, log=lambda s: None)
    assert not marker.exists() and not (out / "bin").exists()


@as_root
def test_1_a_world_writable_lab_qemu_in_roots_cache_is_not_run(tmp_path):
    cache, marker = tmp_path / "cache", tmp_path / "ran"
    out = planted_lab_qemu(cache, marker, mode=0o777)
    with pytest.raises(UnsafePathError, match=f"the file {out}/usr/bin/qemu-system-x86_64 .* "
                                              r"is writable by others than its owner \(mode 777\)"):
        lab_image.ensure_lab_qemu(cache, log=lambda s: None)
    assert not marker.exists()


@as_root
def test_1_a_link_out_of_the_lab_qemu_tree_is_not_run(tmp_path):
    cache, marker = tmp_path / "cache", tmp_path / "ran"
    out = planted_lab_qemu(cache, marker)
    elsewhere = tmp_path / "elsewhere"
    (out / "usr/bin/qemu-system-x86_64").rename(elsewhere)
    (out / "usr/bin/qemu-system-x86_64").symlink_to(elsewhere)
    with pytest.raises(UnsafePathError, match="leads to .*elsewhere, out of it"):
        lab_image.ensure_lab_qemu(cache, log=lambda s: None)
    assert not marker.exists()


@as_root
def test_1_check_root_tree_looks_at_the_lab_qemu_in_full(tmp_path):
    """It pruned fixtures/images/build/*/*/* (guest root trees), which skipped the lab's QEMU
    below lab-qemu/<digest>/usr: a binary root runs on the host."""
    top = _checkout(tmp_path / "srv" / "hotplug-harness")
    binary = top / "fixtures/images/build/lab-qemu/5c5f0ea6a5acbffd/usr/bin/qemu-system-x86_64"
    binary.parent.mkdir(parents=True)
    binary.write_text("")
    assert _check_tree(top).returncode == 0
    binary.chmod(0o777)
    r = _check_tree(top)
    assert r.returncode == 1 and str(binary) in r.stderr, r.stderr


@as_root
def test_1_a_backports_wrapper_of_another_user_is_not_kept(tmp_path):
    """The wrapper was kept whenever its text matched, whatever its owner and mode."""
    cache, marker = tmp_path / "cache", tmp_path / "ran"
    out = planted_lab_qemu(cache, marker)
    wrapper = lab_image.backports_qemu(cache, log=lambda s: None)
    assert Path(wrapper) == out / "bin/qemu-system-x86_64"
    assert os.stat(wrapper).st_mode & 0o777 == 0o755
    text = Path(wrapper).read_text()
    os.chown(wrapper, NOBODY, NOBODY)
    assert Path(wrapper).read_text() == text
    with pytest.raises(UnsafePathError, match=f"the file {wrapper} .* is owned by uid {NOBODY}"):
        lab_image.backports_qemu(cache, log=lambda s: None)


# -- 2. .ci/check-root-tree follows every link and .pth entry, hop by hop, however deep ---------


def venv_elsewhere(tmp_path: Path) -> tuple[Path, Path]:
    """A checkout whose .venv is a link to root's /opt/venvs/hh (a venv kept out of the tree)."""
    top = _checkout(tmp_path / "srv" / "hotplug-harness")
    venv = tmp_path / "opt" / "venvs" / "hh"
    venv.parent.mkdir(parents=True)
    shutil.move(top / ".venv", venv)
    (top / ".venv").symlink_to(venv)
    assert _check_tree(top).returncode == 0
    return top, venv


def alices(tmp_path: Path, rel: str, folder_too: bool = True) -> Path:
    """``home/alice/<rel>``, a file of nobody's (and so, with ``folder_too``, alice's folder)."""
    path = tmp_path / "home" / "alice" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    os.chmod(tmp_path / "home", 0o755)
    os.chown(path, NOBODY, NOBODY)
    if folder_too:
        os.chown(tmp_path / "home" / "alice", NOBODY, NOBODY)
    return path


@as_root
def test_2a_a_pth_file_in_a_venv_linked_from_the_checkout_is_followed(tmp_path):
    """.venv -> /opt/venvs/hh: `find $top/.venv -name '*.pth'` did not descend into the link,
    so a .pth there adding alice's folder to root's Python path went unchecked."""
    top, venv = venv_elsewhere(tmp_path)
    theirs = alices(tmp_path, "lib/sitecustomize.py").parent
    site = venv / "lib/python3.11/site-packages"
    site.mkdir(parents=True)
    (site / "extra.pth").write_text(f"{theirs}\n")
    r = _check_tree(top)
    assert r.returncode == 1 and f"the folder {tmp_path / 'home' / 'alice'} above" in \
        r.stderr, r.stderr


@as_root
def test_2b_a_link_below_a_place_outside_the_checkout_is_followed(tmp_path):
    """/opt/venvs/hh/bin/python3 -> a file alice owns: the outside target's check skipped its
    links (`! -type l`) and followed none."""
    top, venv = venv_elsewhere(tmp_path)
    theirs = alices(tmp_path, "python3", folder_too=False)
    (venv / "bin" / "python3").symlink_to(theirs)
    r = _check_tree(top)
    assert r.returncode == 1 and str(theirs) in r.stderr, r.stderr


@as_root
def test_2c_a_link_chain_through_a_folder_others_can_write_is_refused(tmp_path):
    """.venv/bin/python -> /srv/shared/py -> root's python3.11: `readlink -f` checked only the
    end, so anyone could swap the middle link in the world-writable (not sticky) folder."""
    top = _checkout(tmp_path / "srv" / "hotplug-harness")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "py").symlink_to(top / ".venv/bin/python3.11")
    (top / ".venv/bin/python").unlink()
    (top / ".venv/bin/python").symlink_to(shared / "py")
    assert _check_tree(top).returncode == 0
    shared.chmod(0o777)
    r = _check_tree(top)
    assert r.returncode == 1 and f"the folder {shared} above {shared / 'py'} is writable" in \
        r.stderr, r.stderr


# -- 5. as root, a guest's files (its guests file, disk, kernel, key) are ones no one else wrote --


def user_guest(tmp: Path, **given) -> SimpleNamespace:
    """--guest-disk DISK --guest-key KEY (and what ``given`` adds)."""
    opt = dict(guest=[], guest_kernel=None, guest_initrd=None, guest_disk=None,
               guest_key=None, guest_ready=None, guest_cloud_init=False, guest_append="",
               guest_disk_format="qcow2", guest_user="root")
    return SimpleNamespace(**{**opt, **given})


def qcow2(path: Path, backing: Path | None = None) -> Path:
    args = ["-b", str(backing), "-F", "raw"] if backing else []
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *args, str(path), "1M"],
                   check=True, timeout=30)
    return path


@as_root
def test_5_a_disk_with_a_backing_file_of_its_own_is_refused(tmp_path):
    """A user's qcow2 whose backing file is /dev/nvme0n1 (here a file standing in for it):
    root's QEMU opened the backing file too, the host's disk in the guest."""
    base = tmp_path / "nvme0n1"
    base.write_bytes(b"\0" * (1 << 20))
    disk = qcow2(tmp_path / "rhel.qcow2", backing=base)
    key = tmp_path / "id_ed25519"
    key.write_text("")
    with pytest.raises(ConfigError, match=f"--guest-disk {disk} refers to other files "
                                          f"\\({base}\\)") as e:
        guests.user_image(user_guest(tmp_path, guest_disk=str(disk), guest_key=str(key)))
    assert f"qemu-img convert -O qcow2 {disk} FLAT" in e.value.hint
    whole = qcow2(tmp_path / "whole.qcow2")
    assert guests.user_image(user_guest(tmp_path, guest_disk=str(whole),
                                        guest_key=str(key))).disk == whole


@as_root
def test_5_a_guest_disk_or_key_another_user_can_write_is_refused(tmp_path):
    disk, key = qcow2(tmp_path / "rhel.qcow2"), tmp_path / "id_ed25519"
    key.write_text("")
    os.chown(disk, NOBODY, NOBODY)
    with pytest.raises(UnsafePathError, match=f"--guest-disk: the file {disk} is owned by uid "
                                              f"{NOBODY}"):
        guests.user_image(user_guest(tmp_path, guest_disk=str(disk), guest_key=str(key)))
    os.chown(disk, 0, 0)
    key.chmod(0o666)
    with pytest.raises(UnsafePathError, match=f"--guest-key: the file {key} is writable"):
        guests.user_image(user_guest(tmp_path, guest_disk=str(disk), guest_key=str(key)))


@as_root
def test_5_a_guests_file_another_user_owns_is_refused(tmp_path):
    """The guests file says which disk root's QEMU opens: read like the inventory."""
    disk = qcow2(tmp_path / "rhel.qcow2")
    listed = tmp_path / "guests.toml"
    listed.write_text(f'[[guest]]\nname = "rhel"\ndisk = "{disk}"\nready = "# "\n')
    assert [c.name for c in guests.resolve([str(listed)], tmp_path, tmp_path / "seeds")] == \
        ["rhel"]
    os.chown(listed, NOBODY, NOBODY)
    with pytest.raises(UnsafePathError, match=f"the file {listed} is owned by uid {NOBODY}"):
        guests.resolve([str(listed)], tmp_path, tmp_path / "seeds")
    os.chown(listed, 0, 0)
    os.chown(disk, NOBODY, NOBODY)
    with pytest.raises(UnsafePathError, match=f"guest 'rhel': disk: the file {disk} is owned"):
        guests.resolve([str(listed)], tmp_path, tmp_path / "seeds")
