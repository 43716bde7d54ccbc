"""Guide 2.2: USB devices, and whole USB controllers, hot-added to a running guest.

The guide's ``usb_add host:BUS.ADDR`` / ``usb_add host:VID:PID`` and ``usb_del`` are gone from
QEMU's monitor; they map to ``device_add usb-host,hostbus=..,hostaddr=..,id=X`` (or
``vendorid=..,productid=..``) and ``device_del X``, and the emulated stand-ins here use the same
``device_add``/``device_del`` path with QEMU's own USB devices.
"""

import pytest

from harness.guest import checks


@pytest.mark.scenario("usb-device")
def test_usb_device(hotplug, platform, device, guest):
    """A guest with a USB bus; ``device_add`` a USB device; ``info usb`` lists it and the
    guest's ``lsusb`` shows it by product name (tablet and mouse share an ID); a storage device's
    disk shows in ``fdisk -l`` and reads back (256 KiB with O_DIRECT: from the device, not from
    what the partition scan left in the page cache; small, because a high-speed stick on the
    guide's full-speed UHCI bus is slow, very slow in the nested lab). ``device_del``; gone from
    both sides."""
    usb_before = checks.lsusb(guest)
    disks_before = checks.disks(guest)

    dev = hotplug.plug(guest, device, "usbdev0")
    shown = checks.monitor_usb_shows(guest, "usbdev0", dev.facts.monitor_product)
    entry = checks.guest_usb_appears(guest, usb_before, dev.facts.product)
    hotplug.note(f"info usb: Device {shown.address}, {shown.speed}; lsusb: Bus {entry.bus:03d} "
                 f"Device {entry.device:03d} ID {entry.ids} {entry.name}")
    if dev.facts.disk_bytes:
        disk = checks.new_disk(guest, disks_before, dev.facts.disk_bytes)
        guest.shell.succeed(f"dd if={disk.device} of=/dev/null bs=64k count=4 iflag=direct")

    result = dev.unplug()
    assert result.event, "the USB device left QEMU without a DEVICE_DELETED event"
    checks.monitor_usb_lacks(guest, "usbdev0", dev.facts.monitor_product)
    checks.guest_usb_gone(guest, entry)
    if dev.facts.disk_bytes:
        checks.disk_gone(guest, disk)


@pytest.mark.scenario("usb-controller")
def test_usb_controller(hotplug, platform, device, guest):
    """``device_add`` a whole USB controller as ``myusb`` (a PCI device) with a USB device
    behind it; ``lspci -k`` shows the controller with its driver, ``lsusb`` the device on the new
    bus. ``device_del myusb``; the controller and the device behind it are gone."""
    usb_before = checks.lsusb(guest)

    ctl = hotplug.plug(guest, device, "myusb")
    fn = ctl.function
    assert fn is not None, "query-pci does not list myusb after device_add"
    assert checks.monitor_shows(guest, "myusb").class_name == "USB controller"
    assert checks.guest_sees_pci(guest, fn).class_name == "USB controller"
    checks.guest_driver_bound(guest, fn, device.guest_driver)
    if ctl.facts.behind_product:
        behind = checks.guest_usb_appears(guest, usb_before, ctl.facts.behind_product)
    else:  # a host controller with nothing named in the inventory behind it: its root hub
        behind = checks.new_usb_bus(guest, usb_before)
    assert behind.bus not in {e.bus for e in usb_before}, \
        f"{behind.name} is on bus {behind.bus}, which existed before the controller was added"

    result = ctl.unplug()
    if not result.event:
        # QEMU 7.2's xhci never emits DEVICE_DELETED for the controller: the device has left
        # QEMU's device tree (device_del verified that), and the checks below verify the rest.
        hotplug.note(f"QEMU emitted no DEVICE_DELETED for {device.id} 'myusb'; removal verified "
                     "through the device tree, query-pci and the guest instead")
    checks.monitor_lacks(guest, "myusb")
    checks.guest_lacks_pci(guest, fn)
    checks.guest_usb_gone(guest, behind)
