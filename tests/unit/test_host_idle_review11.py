"""Issue 31, eleventh adversarial read. What it found, one section below each:

1. on a kernel without ``driver_override`` (before 3.16) the move wrote vfio-pci's ``new_id``,
   and the kernel then binds to vfio-pci every function of that vendor:device on no driver,
   not only the one proven idle: another function of the same model (a second card, or the
   other port of the same one), which nothing proved idle, no journal entry records and no
   give-back returns, was taken with it and left on vfio-pci after the run;
2. an NVMe controller that nvmet exports whole to other machines (``passthru/device_path`` =
   ``/dev/nvme1``: the kernel opens the controller's node, no process, no claim on a disk) was
   judged by the disks named ``nvme1n*``: with native multipath its namespaces are named after
   the subsystem (``nvme0n1``: a drive's second controller, or any controller whose number is
   not its subsystem's), and a controller with no namespace has none, so it read idle and was
   taken from under the remote hosts.

Each finding's tests fail on the code before its fix. A fake sysfs tree plays the host and the
kernel's new_id, which probes every unbound function of the ids; no guest is booted."""

import json
import os

import pytest

from harness.core.errors import HostDeviceError
from harness.host.binding import VfioBinder
from harness.host.safety import HostUsage
from harness.host.storage import StorageView

from . import fakesysfs

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures


@pytest.fixture
def journal(fake_root):
    return fake_root / "var/lib/hotplug-harness/vfio-journal.json"


def _entries(journal) -> list[dict]:
    return json.loads(journal.read_text())["entries"] if journal.exists() else []


# -- 1. new_id takes every unbound function of the same ids ------------------------------------


def _old_kernel_pair(lab) -> None:
    """Two cards of one model on a kernel with no driver_override: 08:00.0 listed and idle, on
    e1000e; 09:00.0 on no driver (another user's, or one the operator keeps off the host)."""
    lab.add_pci("0000:08:00.0", "8086:10d3", 0x020000, "e1000e", group=20, override_file=False)
    lab.add_net("enp8s0", "0000:08:00.0")
    lab.add_pci("0000:09:00.0", "8086:10d3", 0x020000, None, group=21, override_file=False)


def test_new_id_does_not_take_another_unbound_function_of_the_same_ids(lab, journal):
    _old_kernel_pair(lab)
    with pytest.raises(HostDeviceError) as e:
        VfioBinder(lab.sysfs(), journal=journal).bind("08:00.0", {"08:00.0"})
    assert "0000:09:00.0" in e.value.message and "new_id" in e.value.message
    assert e.value.hint
    assert lab.driver_of("0000:09:00.0") is None
    assert lab.driver_of("0000:08:00.0") == "e1000e"  # refused before any write
    assert not any(rel.startswith("sys/bus/pci") for rel, _ in lab.writes)
    assert _entries(journal) == []


def test_new_id_still_used_when_no_other_function_has_the_ids(lab, journal):
    _old_kernel_pair(lab)
    lab.add_driver("e1000e", ["8086:10d3"])
    lab.kernel(lab.sys / "bus/pci/drivers/e1000e/bind", "0000:09:00.0")
    lab.add_net("enp9s0", "0000:09:00.0")  # on a host driver: new_id does not probe it
    with VfioBinder(lab.sysfs(), journal=journal).bind("08:00.0", {"08:00.0"}):
        assert lab.driver_of("0000:08:00.0") == "vfio-pci"
        assert lab.driver_of("0000:09:00.0") == "e1000e"
    assert lab.driver_of("0000:08:00.0") == "e1000e"


# -- 2. an NVMe controller nvmet passes through whole -------------------------------------------

NVME = "0000:09:00.0"


def _nvme_controller(host, namespace: bool) -> None:
    """An idle NVMe controller nvme1 (242:1) with native multipath: its subsystem is
    nvme-subsys0, so its namespace's disk (if any) is nvme0n1, under the subsystem."""
    host.add_pci(NVME, "144d:a808", 0x010802, "nvme", 21)
    ctrl = host.dev_dir(NVME) / "nvme/nvme1"
    ctrl.mkdir(parents=True)
    (ctrl / "dev").write_text("242:1\n")
    (ctrl / "uevent").write_text("MAJOR=242\nMINOR=1\nDEVNAME=nvme1\n")
    (host.sys / "class/nvme").mkdir(parents=True, exist_ok=True)
    os.symlink(ctrl, host.sys / "class/nvme/nvme1")
    subsys = host.sys / "devices/virtual/nvme-subsystem/nvme-subsys0"
    subsys.mkdir(parents=True)
    os.symlink(ctrl, subsys / "nvme1")
    if namespace:
        (ctrl / "nvme0c1n1").mkdir()
        (subsys / "nvme0n1").mkdir()
        (subsys / "nvme0n1/dev").write_text("259:0\n")
        os.symlink(subsys / "nvme0n1", host.sys / "class/block/nvme0n1")


def _passthru(host, device_path: str) -> None:
    host.file("sys/module/nvmet/refcnt", "1\n")
    host.file("sys/kernel/config/nvmet/subsystems/nqn.lab:pt/passthru/device_path",
              device_path + "\n")


@pytest.mark.parametrize("namespace", [True, False], ids=["multipath-namespace", "no-namespace"])
def test_an_nvme_controller_nvmet_passes_through_is_in_use(lab, namespace):
    _nvme_controller(lab, namespace)
    assert HostUsage.read(lab.root).verdict(NVME).idle  # (idle before the export)
    _passthru(lab, "/dev/nvme1")
    v = HostUsage.read(lab.root).verdict(NVME)
    assert not v.idle
    assert "/dev/nvme1 (below 0000:09:00.0) is exported by nvmet (nqn.lab:pt)" in v.uses
    with pytest.raises(HostDeviceError, match="exported by nvmet"):
        VfioBinder(lab.sysfs(), journal=lab.root / "var/lib/hotplug-harness/vfio-journal.json"
                   ).bind(NVME, {NVME})
    assert lab.driver_of(NVME) == "nvme"


def test_another_controllers_passthru_leaves_this_one_idle(lab):
    _nvme_controller(lab, True)
    lab.add_pci("0000:0a:00.0", "144d:a808", 0x010802, "nvme", 22)  # (nvme7: another one)
    ctrl = lab.dev_dir("0000:0a:00.0") / "nvme/nvme7"
    ctrl.mkdir(parents=True)
    (ctrl / "dev").write_text("242:7\n")
    os.symlink(ctrl, lab.sys / "class/nvme/nvme7")
    _passthru(lab, "/dev/nvme7")
    assert HostUsage.read(lab.root).verdict(NVME).idle


def test_an_exported_disk_is_named_once(lab):
    """(the controller lookup adds nothing for a block device's path)"""
    lab.file("sys/module/nvmet/refcnt", "1\n")
    lab.file("sys/kernel/config/nvmet/subsystems/nqn.lab:san/namespaces/1/device_path",
             "/dev/sdb\n")
    assert StorageView.read(lab.sysfs()).exported == {"sdb": ["nvmet (nqn.lab:san)"]}
