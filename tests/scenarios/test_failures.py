"""The failure cases: each asserts QEMU's exact refusal, or the harness's verdict, and that the
guest was left as it was."""

import re
import signal
import time

import pytest

from harness.guest import checks
from harness.scenario.devices import PCI_PLATFORMS
from harness.core.errors import QMPCommandError, UnplugError

PC, Q35 = PCI_PLATFORMS[0], PCI_PLATFORMS[1]
NO_USB = [pytest.param(PC, id="pc"), pytest.param(Q35, id="q35-acpi")]


def refused(guest, command: str, **arguments) -> QMPCommandError:
    with pytest.raises(QMPCommandError) as info:
        guest.qmp(command, **arguments)
    return info.value


@pytest.mark.parametrize("platform", NO_USB)
def test_usb_device_without_usb_bus(platform, guest):
    """A USB device into a guest started without ``-usb``: QEMU refuses, naming the missing bus."""
    err = refused(guest, "device_add", driver="usb-tablet", id="tab0")
    assert re.fullmatch(r"No '?usb-bus'? bus found for device '?usb-tablet'?", err.qemu_desc), err.qemu_desc
    assert checks.lsusb(guest) == []


@pytest.mark.parametrize("platform", [pytest.param(Q35, id="q35-acpi")])
def test_pci_device_on_q35_root_bus(hotplug, platform, guest):
    """q35's root bus (pcie.0) takes no hotplug: devices go into a root port."""
    err = refused(guest, "device_add", driver="e1000e", id="nic0", bus="pcie.0")
    assert err.qemu_desc == "Bus 'pcie.0' does not support hotplugging", err.qemu_desc
    assert checks.pci_function(guest, "nic0") is None


@pytest.mark.parametrize("platform", NO_USB)
def test_device_del_unknown_id(platform, guest):
    """``device_del`` of an id nobody added."""
    err = refused(guest, "device_del", id="nosuchdev")
    assert err.qemu_desc == "Device 'nosuchdev' not found", err.qemu_desc


@pytest.mark.parametrize("platform", NO_USB)
def test_duplicate_id(platform, guest):
    """A second ``device_add`` with an id already in use is refused; the first device stays."""
    bus = guest.free_bus()
    guest.device_add("e1000e", "nic0", bus=bus)
    try:
        err = refused(guest, "device_add", driver="virtio-net-pci", id="nic0",
                      bus=guest.free_bus() if platform.machine == "q35" else bus)
        assert re.fullmatch(r"Duplicate (device )?ID 'nic0'( for device)?", err.qemu_desc), err.qemu_desc
        assert checks.monitor_shows(guest, "nic0").ids == "8086:10d3"
    finally:
        guest.device_del("nic0")


@pytest.mark.parametrize("platform", [pytest.param(PC, id="pc")])
def test_slot_already_taken(platform, guest):
    """A device at ``addr=0x06`` on pc while the guide's SATA controller sits there."""
    guest.device_add("ich9-ahci", "sata", bus="pci.0", addr="0x06")
    try:
        err = refused(guest, "device_add", driver="e1000e", id="nic0", bus="pci.0", addr="0x06")
        assert re.fullmatch(r"PCI: slot 6 function 0 not available for e1000e, in use by "
                            r"ich9-ahci(,id=sata)?", err.qemu_desc), err.qemu_desc
    finally:
        guest.device_del("sata")


@pytest.mark.parametrize("platform", [pytest.param(PC, id="pc")])
@pytest.mark.guest(kernel_args=("acpi=off",), fresh=True, check_prerequisites=False)
def test_unplug_refused_by_guest(hotplug, platform, guest):
    """A guest booted with ``acpi=off`` never answers pc's ACPI eject request. ``device_del``
    must end, within its deadline, with the verdict "guest-refused" while QEMU stays
    responsive, not hang; the guest is not reused."""
    guest.device_add("e1000e", "nic0", bus=guest.free_bus())
    t0 = time.monotonic()
    with pytest.raises(UnplugError) as info:
        guest.device_del("nic0", timeout=5, grace=2)
    elapsed = time.monotonic() - t0
    assert info.value.verdict == "guest-refused", str(info.value)
    # (the deadlines scale with the run's time factor: a loaded machine gets longer ones)
    limit = guest.deadlines.scaled(5) + guest.deadlines.scaled(2) + 5
    assert elapsed < limit, (f"the verdict took {elapsed:.1f} s; deadline 5 s + grace 2 s, "
                             f"{limit - 5:.1f} s at this run's time factor")
    assert checks.pci_function(guest, "nic0") is not None, "QEMU removed the device anyway"
    hotplug.note(f"verdict '{info.value.verdict}' after {elapsed:.1f} s: {info.value.message}")


@pytest.mark.parametrize("platform", [pytest.param(PCI_PLATFORMS[2], id="q35-pciehp")])
@pytest.mark.guest(fresh=True)
def test_unplug_verdict_guest_slow(hotplug, platform, guest):
    """Native PCIe hotplug waits 5 s after the attention button before the guest powers the slot
    off. With a 2 s deadline and a 10 s grace, the event comes late: the verdict is "guest-slow",
    not "guest-refused". The 5 s is the guest's own timer, and a guest's clock follows the
    host's, so the deadline is 2 s of wall time on any machine: scaled by a slow guest's factor
    (2.5 and up) it outlasted the 5 s and the event came in time (a loaded make test, Dec 7).
    The grace still scales."""
    guest.device_add("e1000e", "nic0", bus=guest.free_bus())
    checks.guest_sees_pci(guest, checks.pci_function(guest, "nic0"))
    with pytest.raises(UnplugError) as info:  # (device_del scales both: 2 s / factor, scaled)
        guest.device_del("nic0", timeout=2 / guest.deadlines.scaled(1.0), grace=10)
    assert info.value.verdict == "guest-slow", str(info.value)
    assert checks.pci_function(guest, "nic0") is None, "the device should be gone after all"
    hotplug.note(info.value.message)


@pytest.mark.parametrize("platform", [pytest.param(PC, id="pc")])
@pytest.mark.guest(fresh=True)
def test_unplug_verdict_qemu_stuck(platform, guest):
    """QEMU stopped (SIGSTOP) under a device_del: the verdict is "qemu-stuck" within the
    deadline, not a hang; the guest is not reused."""
    guest.device_add("e1000e", "nic0", bus=guest.free_bus())
    guest.process.send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        with pytest.raises(UnplugError) as info:
            guest.device_del("nic0", timeout=3, grace=1)
    finally:
        guest.process.send_signal(signal.SIGCONT)
    assert info.value.verdict == "qemu-stuck", str(info.value)
    limit = guest.deadlines.scaled(3) + guest.deadlines.scaled(1) + 6
    assert time.monotonic() - t0 < limit  # (deadline and grace at this run's time factor)
