"""Guide section 1: what hotplug needs -- firmware, a guest kernel with PCI hotplug, drivers."""

import pytest

from harness.scenario.devices import PCI_PLATFORMS
from harness.scenario.prereq import check_driver


@pytest.mark.parametrize("platform", [pytest.param(p, id=p.id) for p in PCI_PLATFORMS])
def test_prerequisites(hotplug, platform, guest):
    """The guest's firmware is SeaBIOS (QEMU's default, as the guide says), its kernel has the
    hotplug support this machine's path uses, and the drivers of every emulated stand-in are
    there."""
    checks = {c.name: c for c in guest.prerequisites}
    assert checks["firmware"].detail.startswith("SeaBIOS"), checks["firmware"]
    for c in guest.prerequisites:
        hotplug.note(f"{c.name}: {c.detail}")
    for driver in ("e1000e", "virtio-pci", "ahci", "xhci_hcd", "ehci-pci", "uhci_hcd", "usb-storage"):
        assert check_driver(guest, driver).ok, f"the built-in guest lacks {driver}"
