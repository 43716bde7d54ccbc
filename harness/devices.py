"""Roles (nic, usb-device, usb-controller, sata-controller) and how each backend realises them.

A scenario test asks for a role; the backend decides what plays it: an emulated QEMU model
(``--backend emulated``, everywhere) or a host device through vfio-pci / usb-host
(``--backend vfio`` on a VT-d host). Either way the test calls ``plug`` and ``unplug`` and runs
the same checks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .machine import GuestSpec


@dataclasses.dataclass(frozen=True)
class Platform:
    """A machine shape a scenario runs on; its ``id`` is a readable part of the test id."""

    id: str
    machine: str
    pci_hotplug: str = "acpi"
    usb: str = ""

    def spec(self, **overrides: Any) -> GuestSpec:
        return GuestSpec(machine=self.machine, pci_hotplug=self.pci_hotplug, usb=self.usb,
                         **overrides)


#: PCI devices: pc's root bus (ACPI hotplug), q35 root ports with ACPI or native PCIe hotplug.
PCI_PLATFORMS = (Platform("pc", "pc"), Platform("q35-acpi", "q35"),
                 Platform("q35-pciehp", "q35", pci_hotplug="pciehp"))


@dataclasses.dataclass
class Plugged:
    """A device the test hot-added; ``unplug`` undoes everything ``plug`` did."""

    device_id: str
    device: "HotplugDevice"
    add_seconds: float
    bus: str | None = None
    #: Role-specific facts the checks need (a NIC's gateway, a disk's size, ...).
    facts: dict = dataclasses.field(default_factory=dict)
    removed: bool = False


class HotplugDevice:
    """Base of every role realisation. ``id`` is the device's part of the test id."""

    role: str = ""
    id: str = ""
    backend: str = "emulated"
    #: The guest kernel driver expected to bind (``lspci -k``), if the role has one.
    guest_driver: str | None = None

    def plug(self, guest, device_id: str) -> Plugged:
        raise NotImplementedError

    def unplug(self, guest, plugged: Plugged, timeout: float = 20.0):
        result = guest.device_del(plugged.device_id, timeout=timeout)
        plugged.removed = True
        self.cleanup(guest, plugged)
        return result

    def cleanup(self, guest, plugged: Plugged) -> None:
        """Release what ``plug`` set up besides the device (backends, host bindings)."""

    def __repr__(self) -> str:
        return f"<{self.backend} {self.role} {self.id}>"


class EmulatedNic(HotplugDevice):
    """A QEMU NIC model on its own user-mode network (its own subnet, gateway .2)."""

    role = "nic"

    def __init__(self, id: str, driver: str, guest_driver: str):
        self.id = id
        self.driver = driver
        self.guest_driver = guest_driver

    def plug(self, guest, device_id: str) -> Plugged:
        subnet = 10 + guest.allocate("subnet")  # 10.0.2.0/24 is the management network's
        netdev = f"{device_id}-net"
        guest.qmp("netdev_add", type="user", id=netdev, net=f"10.0.{subnet}.0/24")
        bus = guest.free_bus()
        seconds = guest.device_add(self.driver, device_id, bus=bus, netdev=netdev)
        return Plugged(device_id, self, seconds, bus,
                       facts={"gateway": f"10.0.{subnet}.2", "netdev": netdev})

    def cleanup(self, guest, plugged: Plugged) -> None:
        guest.qmp("netdev_del", id=plugged.facts["netdev"])


EMULATED = {
    "nic": (
        # The guide's NIC is an Intel one: e1000e (82574L) stands in for it.
        EmulatedNic("e1000e", "e1000e", guest_driver="e1000e"),
        EmulatedNic("virtio-net", "virtio-net-pci", guest_driver="virtio-pci"),
    ),
}

PLATFORMS = {
    "nic": PCI_PLATFORMS,
}
