"""Issue 31, ninth adversarial read. What it found, one section below each:

1. through ``--driver libvirt``, a ``device_add vfio-pci`` that did not say ``managed`` became
   ``<hostdev managed='yes'>``: libvirt unbound the device from its host driver itself, a
   device the harness had neither proven idle nor journaled (any scenario's plain
   ``devices.add_vfio``);
2. with ``--libvirt-managed yes`` the proof was read under the journal lock, the lock let go,
   and libvirt moved the device later, at ``attach-device``, looking at nothing: a disk
   mounted or an interface brought up in between was taken all the same;
3. libvirt's give-back (``driver_override`` cleared, unbind, ``drivers_probe``) was trusted for
   a device on no driver or ``pci-stub`` (which it hands to whichever host driver claims it)
   and for a device that shares its IOMMU group (libvirt gives it back while a guest may
   have another member: the harness never does, eighth read, item 10).

Each finding's tests fail on the code before its fix. A fake sysfs tree plays the host and
plays libvirt's own sysfs writes (virPCIDeviceBindToStub, virPCIDeviceUnbindFromStub); no
guest is booted."""

import xml.etree.ElementTree as ET

from harness.qemu.machine import GuestSpec
from harness.virt import xml as vx


# -- 1. managed='yes' only when asked ---------------------------------------------------------


def test_a_plain_vfio_device_add_through_libvirt_takes_the_device_as_it_is():
    """libvirt's managed='yes' unbinds the host's driver with no proof and no journal: a
    device_add that does not ask for it must get managed='no' (libvirt then uses the device
    only if it is on vfio-pci already, as QEMU's device_add does)."""
    spec, b = GuestSpec(machine="q35"), vx.Backends()
    plain = ET.fromstring(vx.device_xml(spec, "vfio-pci", "v0", {"host": "0000:05:00.0"}, b))
    assert plain.get("managed") == "no"
    asked = ET.fromstring(vx.device_xml(spec, "vfio-pci", "v0",
                                        {"host": "0000:05:00.0", "managed": "yes"}, b))
    assert asked.get("managed") == "yes"
