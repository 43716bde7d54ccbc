"""Hot-add an NVMe controller with a namespace, see its disk, read it, remove it."""

import pytest

from harness.guest import checks
from harness.scenario.devices import HARNESS_DISK_ID


@pytest.mark.scenario("nvme")
def test_nvme(hotplug, platform, device, guest):
    """``device_add`` an NVMe controller as ``nvme0`` (emulated: QEMU's ``nvme`` with one
    namespace on a partitioned disk; with ``--backend vfio``/``lab``: the host's controller
    through vfio-pci); ``info pci`` lists it; the guest's ``lspci -k`` shows ``Kernel driver in
    use: nvme``; its namespace appears in ``fdisk -l`` as ``/dev/nvmeXnY`` with both partitions
    and reads back (256 KiB with O_DIRECT: from the device, not the page cache). ``device_del
    nvme0``; gone from QEMU, from ``lspci`` and from ``fdisk -l``.

    A disk the harness wrote (emulated, and the lab's) is checked to the partition: ``fdisk -l``
    reads its identifier and both partitions from the device. A real spare drive's contents are
    its own: its namespace must appear with the inventory's size and read."""
    disks_before = checks.disks(guest)

    nvme = hotplug.plug(guest, device, "nvme0")
    checks.monitor_shows(guest, "nvme0")
    fn = nvme.function
    seen = checks.guest_sees_pci(guest, fn)
    assert seen.class_name == "Non-Volatile memory controller", seen
    checks.guest_driver_bound(guest, fn, device.guest_driver)
    disk = checks.new_disk(guest, disks_before, nvme.facts.disk_bytes)
    assert disk.device.startswith("/dev/nvme"), f"the new disk is {disk.device}, not a namespace"
    listing = guest.shell.succeed(f"fdisk -l {disk.device}")
    ours = f"Disk identifier: {HARNESS_DISK_ID:#010x}" in listing
    assert ours or device.backend != "emulated", listing
    if ours:
        assert f"{disk.device}p1" in listing and f"{disk.device}p2" in listing, listing
    guest.shell.succeed(f"dd if={disk.device} of=/dev/null bs=64k count=4 iflag=direct")

    result = nvme.unplug()
    assert result.event, "the NVMe controller left QEMU without a DEVICE_DELETED event"
    checks.monitor_lacks(guest, "nvme0")
    checks.guest_lacks_pci(guest, fn)
    checks.disk_gone(guest, disk)
