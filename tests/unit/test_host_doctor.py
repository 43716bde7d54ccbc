"""harness.host.doctor on fake hosts: each check, the report, the verdict and the exit code.
QEMU's ``-device help`` is the captured output of QEMU 7.2, injected."""

import os

from harness.host.doctor import Check, exit_code, format_report, run_checks, verdict
from harness.host.inventory import parse_inventory

from . import fakesysfs
from .fakesysfs import DEVICE_HELP_QEMU72, FakeHost

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

INVENTORY = """
[[device]]
role = "nic"
bdf = "05:00.0"
gateway = "10.0.5.1"
companions = ["05:00.1"]
[[device]]
role = "usb-device"
vendorid = "0x03f0"
productid = "0x8607"
"""


def checks(host: FakeHost, inventory: str | None = None, help_text=DEVICE_HELP_QEMU72, **kw):
    inv = parse_inventory(inventory, root=host.root, check_host=False) if inventory else None
    return {c.name: c for c in run_checks(host.root, inventory=inv, device_help=help_text, **kw)}


def test_a_good_vt_d_host_can_run_vfio(lab):
    by_name = checks(lab, INVENTORY)
    by_name.pop("locked memory")  # depends on who runs the test
    assert [c for c in by_name.values() if c.ok is False] == []
    assert by_name["CPU virtualization"].detail == "vmx in /proc/cpuinfo"
    assert by_name["IOMMU groups"].detail == "11 groups"
    assert by_name["IOMMU kernel command line"].detail == "intel_iommu=on iommu=pt"
    assert by_name["interrupt remapping"].ok is True
    assert by_name["QEMU vfio-pci device"].ok and by_name["QEMU usb-host device"].ok
    assert by_name["inventory nic-05-00.0"].detail == (
        "0000:05:00.0 Ethernet controller on ixgbe, IOMMU group 12 viable (also takes "
        "0000:05:00.1)")
    assert by_name["inventory usb-device-03f0-8607"].detail == \
        "USB 3-3 [03f0:8607] Optical Mobile Mouse"
    assert exit_code(list(by_name.values())) == 0
    assert format_report(list(by_name.values())).endswith("\nverdict: vfio can run here")


def test_no_iommu(lab):
    lab.proc("cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/sda2 ro quiet\n")
    for group in (lab.sys / "kernel/iommu_groups").iterdir():
        for dev in (group / "devices").iterdir():
            dev.unlink()
        (group / "devices").rmdir()
        group.rmdir()
    all_checks = list(checks(lab).values())
    by_name = {c.name: c for c in all_checks}
    assert by_name["IOMMU groups"].fix == ("add intel_iommu=on iommu=pt to the kernel command "
                                           "line (GRUB_CMDLINE_LINUX), update-grub, reboot")
    assert exit_code(all_checks) == 1
    assert verdict(all_checks) == (
        "verdict: vfio cannot run here: no IOMMU groups (no VT-d/AMD-Vi, or not enabled). Fix: "
        "add intel_iommu=on iommu=pt to the kernel command line (GRUB_CMDLINE_LINUX), "
        "update-grub, reboot.")


def test_no_iommu_in_the_firmware(fake_root):
    host = FakeHost(fake_root)
    host.proc("cpuinfo", "vendor_id\t: AuthenticAMD\nflags\t\t: fpu svm\n")
    host.proc("cmdline", "ro quiet\n")
    by_name = checks(host)
    assert by_name["IOMMU groups"].fix == ("enable VT-d (AMD: IOMMU) in the firmware setup, boot "
                                           "with iommu=pt, and reboot")
    assert by_name["IOMMU hardware"].ok is False and not by_name["IOMMU hardware"].required
    assert by_name["interrupt remapping"].ok is None
    assert by_name["/dev/kvm"].ok is False and not by_name["/dev/kvm"].required


def test_a_software_kvm_without_cpu_flags_is_a_warning(lab):
    lab.proc("cpuinfo", "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2\n")
    (lab.sys / "module/kvm_intel").rmdir()
    (lab.sys / "module/kvm_pvm").mkdir()
    by_name = checks(lab)
    kvm = by_name["/dev/kvm"]
    assert (kvm.ok, kvm.required) == (False, False)
    assert kvm.detail.startswith("present, but the CPU has no vmx/svm (modules: kvm_pvm): a "
                                 "software KVM")
    assert "[warn] /dev/kvm: present, but" in format_report(list(by_name.values()))


def test_vfio_pci_not_loaded_but_available(lab):
    lab.remove_driver("vfio-pci")
    lab.file("lib/modules/6.1.0-18-amd64/kernel/drivers/vfio/pci/vfio-pci.ko.xz")
    check = checks(lab)["vfio-pci driver"]
    assert (check.ok, check.detail, check.required) == (False, "available but not loaded", True)
    assert check.fix.startswith("modprobe vfio-pci")


def test_interrupt_remapping(lab):
    lab.file("sys/class/iommu/dmar0/intel-iommu/ecap", "f050d2\n")  # bit 3 clear
    check = checks(lab)["interrupt remapping"]
    assert check.blocking and "No interrupt remapping support" in check.detail
    assert "allow_unsafe_interrupts=1" in check.fix
    lab.file("sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts", "Y\n")
    check = checks(lab)["interrupt remapping"]
    assert (check.ok, check.required) == (False, False)
    assert "allow_unsafe_interrupts=Y" in check.detail
    lab.file("sys/class/iommu/dmar0/intel-iommu/ecap", "f050da\n")
    lab.proc("cmdline", "ro intel_iommu=on intremap=off\n")
    assert "intremap=off" in checks(lab)["interrupt remapping"].detail


def test_qemu_without_usb_host_matters_only_for_usb_devices(lab):
    no_libusb = DEVICE_HELP_QEMU72.replace('name "usb-host", bus usb-bus\n', "")
    check = checks(lab, help_text=no_libusb)["QEMU usb-host device"]
    assert (check.ok, check.required) == (False, False)
    assert "CONFIG_USB_LIBUSB" in check.detail
    assert checks(lab, INVENTORY, help_text=no_libusb)["QEMU usb-host device"].blocking


def test_qemu_without_vfio(lab):
    check = checks(lab, help_text='name "usb-host", bus usb-bus\n')["QEMU vfio-pci device"]
    assert check.blocking and "built without VFIO" in check.detail


def test_qemu_binary_missing(lab):
    check = checks(lab, help_text=None, qemu_binary="/nonexistent/qemu-system-x86_64")[
        "QEMU binary"]
    assert check.blocking and check.detail == "/nonexistent/qemu-system-x86_64 not found"


def test_firmware(lab):
    assert checks(lab)["SeaBIOS firmware"].detail == "/usr/share/seabios/bios-256k.bin"
    assert checks(lab)["OVMF firmware"].ok is None
    os.unlink(lab.root / "usr/share/seabios/bios-256k.bin")
    assert checks(lab)["SeaBIOS firmware"].blocking


def test_inventory_devices_that_cannot_be_taken(lab):
    inventory = """
[[device]]
role = "nic"
bdf = "02:00.0"
gateway = "192.168.1.1"
[[device]]
role = "nic"
bdf = "09:00.0"
gateway = "10.0.5.1"
[[device]]
role = "usb-device"
hostbus = 3
hostaddr = 5
"""
    by_name = checks(lab, inventory)
    assert by_name["inventory nic-02-00.0"].blocking
    assert "enp2s0 carries the route default (table main)" in by_name["inventory nic-02-00.0"].detail
    assert by_name["inventory nic-09-00.0"].detail == \
        "PCI device 0000:09:00.0 does not exist on this host"
    assert by_name["inventory usb-device-3-5"].detail == \
        "USB 3-5: sdc1 is mounted on /mnt/usb stick"


def test_journal_left_by_a_killed_run(lab, fake_root):
    journal = fake_root / "journal.json"
    journal.write_text('{"version": 1, "entries": [{"bdf": "0000:05:00.0", "pid": 1}]}')
    check = checks(lab, journal=journal)["vfio journal"]
    assert (check.ok, check.required, check.fix) == (False, False, "python -m harness restore")
    assert check.detail == "a killed run left 0000:05:00.0 on vfio-pci"


def test_report_format():
    report = format_report([Check("a", True, "fine"), Check("b", None, "does not apply"),
                            Check("c", False, "meh", "do x", required=False),
                            Check("d", False, "broken", "do y")])
    assert report == ("[ ok ] a: fine\n"
                      "[n/a ] b: does not apply\n"
                      "[warn] c: meh\n"
                      "       fix: do x\n"
                      "[FAIL] d: broken\n"
                      "       fix: do y\n"
                      "verdict: vfio cannot run here: broken. Fix: do y.")


def test_inventory_device_of_the_wrong_class(lab):
    check = checks(lab, '[[device]]\nrole = "usb-controller"\nbdf = "06:00.0"\n')[
        "inventory usb-controller-06-00.0"]
    assert check.blocking
    assert check.detail == ("0000:06:00.0 [1b21:0612] is of class SATA controller (AHCI); role "
                            "'usb-controller' needs a USB host controller (UHCI, OHCI, EHCI or "
                            "xHCI)")


def test_a_zfs_root_is_a_warning(lab):
    lab.proc("mounts", "rpool/ROOT/debian / zfs rw 0 0\n")
    check = checks(lab)["host filesystems"]
    assert (check.ok, check.required) == (False, False)
    assert check.detail == ("cannot tell which controller holds / (rpool/ROOT/debian, zfs): "
                            "every storage controller counts as holding it")
    assert "no_host_filesystems = true" in check.fix


def test_an_unlisted_group_member_fails_its_inventory_entry(lab):
    by_name = checks(lab, INVENTORY.replace('companions = ["05:00.1"]\n', ""))
    check = by_name["inventory nic-05-00.0"]
    assert check.ok is False and "0000:05:00.1" in check.detail
    assert "is not in the inventory: every function of the group but its bridges" in check.detail
