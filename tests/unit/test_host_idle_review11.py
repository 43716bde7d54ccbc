"""Issue 31, eleventh adversarial read. What it found, one section below each:

1. on a kernel without ``driver_override`` (before 3.16) the move wrote vfio-pci's ``new_id``,
   and the kernel then binds to vfio-pci every function of that vendor:device on no driver,
   not only the one proven idle: another function of the same model (a second card, or the
   other port of the same one), which nothing proved idle, no journal entry records and no
   give-back returns, was taken with it and left on vfio-pci after the run.

Each finding's tests fail on the code before its fix. A fake sysfs tree plays the host and the
kernel's new_id, which probes every unbound function of the ids; no guest is booted."""

import json

import pytest

from harness.core.errors import HostDeviceError
from harness.host.binding import VfioBinder

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
