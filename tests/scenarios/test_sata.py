"""Guide 2.3: hot-add a SATA (AHCI) controller at slot 6, see its disk, remove it."""

import pytest

from harness.guest import checks


@pytest.mark.scenario("sata-controller")
def test_sata_controller(hotplug, platform, device, guest):
    """``device_add`` the SATA controller as ``sata`` (on pc at ``addr=0x06`` as in the guide; on
    q35 into a root port, as its root bus takes no hotplug); ``info pci`` shows a SATA controller
    with ``id "sata"``; the guest's ``lspci -k`` shows ``Kernel driver in use: ahci``; the disk
    behind it appears in ``fdisk -l`` with its partitions (if the guest's kernel did not scan
    for it, the harness scans the SCSI host it hangs off and says so in the notes).
    ``device_del sata``; all gone.

    Emulated difference: QEMU cannot hot-add a disk onto an AHCI bus, so the disk half is a SCSI
    disk on a hot-added virtio-scsi controller (same ``sd`` layer and ``/dev/sdX`` name in the
    guest); with ``--backend vfio`` it is the disk behind the real controller.
    """
    disks_before = checks.disks(guest)

    sata = hotplug.plug(guest, device, "sata")
    info = checks.monitor_shows(guest, "sata")
    assert info.class_name == "SATA controller", info
    if platform.machine == "pc":
        assert (info.bus, info.device, info.function) == (0, 6, 0), \
            f"the guide puts the controller at bus 0 device 6; info pci says {info}"
    fn = sata.function
    assert checks.guest_sees_pci(guest, fn).class_name == "SATA controller"
    checks.guest_driver_bound(guest, fn, device.guest_driver)
    # (a disk the guest's kernel did not find by itself is scanned for, with the guest's own
    # sysfs, behind the controller it hangs off only, and the notes say so)
    carrier = sata.facts.disk_carrier
    behind = [checks.pci_function(guest, carrier) if carrier else fn]
    disk, found_by = checks.new_disk_behind(guest, disks_before, sata.facts.disk_bytes, behind)
    if found_by != "guest":
        hotplug.note(f"{disk.device} found by the {found_by}")
    listing = guest.shell.succeed(f"fdisk -l {disk.device}")
    assert f"{disk.device}1" in listing and f"{disk.device}2" in listing, listing
    if sata.facts.note:
        hotplug.note(sata.facts.note)

    result = sata.unplug()
    assert result.event, "the SATA controller left QEMU without a DEVICE_DELETED event"
    checks.monitor_lacks(guest, "sata")
    checks.guest_lacks_pci(guest, fn)
    checks.disk_gone(guest, disk)
