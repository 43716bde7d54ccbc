"""harness.host.sysfs: BDF parsing, class names, readers of a fake tree with the real layout."""

import pytest

from harness.core.errors import ConfigError, HostDeviceError
from harness.host import sysfs
from harness.host.sysfs import Sysfs, parse_bdf

from . import fakesysfs

lab_readonly = fakesysfs.lab_readonly  # fixture


@pytest.mark.parametrize("text, bdf", [
    ("05:00.0", "0000:05:00.0"),
    ("0000:05:00.1", "0000:05:00.1"),
    ("00:1F.2", "0000:00:1f.2"),
    (" 00:14.0\n", "0000:00:14.0"),
    ("10000:00:02.0", "10000:00:02.0"),  # Intel VMD domains have five digits
])
def test_parse_bdf(text, bdf):
    assert parse_bdf(text) == bdf


@pytest.mark.parametrize("text", ["5:00.0", "05:00", "05:00.8", "05:20.0", "0000-05:00.0",
                                  "000:05:00.0", "", "05:00.0.1"])
def test_parse_bdf_rejects_with_the_expected_form(text):
    with pytest.raises(ConfigError) as e:
        parse_bdf(text)
    assert repr(text) in e.value.message
    assert "DDDD:BB:DD.F" in e.value.message
    assert e.value.hint


def test_short_bdf_and_paths():
    assert sysfs.short_bdf("0000:05:00.0") == "05:00.0"
    path = "/sys/devices/pci0000:00/0000:00:14.0/usb3/3-1/3-1.2/3-1.2:1.0/net/eth1"
    assert sysfs.bdfs_in_path(path) == ["0000:00:14.0"]
    assert sysfs.usb_devices_in_path(path) == ["usb3", "3-1", "3-1.2"]


@pytest.mark.parametrize("code, name", [
    (0x020000, "Ethernet controller"),
    (0x0c0300, "USB controller (uhci)"),
    (0x0c0310, "USB controller (ohci)"),
    (0x0c0320, "USB controller (ehci)"),
    (0x0c0330, "USB controller (xhci)"),
    (0x010601, "SATA controller (AHCI)"),
    (0x010700, "Serial Attached SCSI controller"),
    (0x010400, "RAID bus controller"),
    (0x060400, "PCI bridge"),
    (0x0d1100, "class 0x0d11"),
])
def test_class_names(code, name):
    assert sysfs.class_name(code) == name


def test_usb_controller_kind():
    assert sysfs.usb_controller_kind(0x0c0330) == "xhci"
    assert sysfs.usb_controller_kind(0x020000) is None


def test_pci_device_snapshot(lab_readonly):
    fs = Sysfs(lab_readonly.root)
    nic = fs.pci_device("05:00.0")
    assert (nic.bdf, nic.ids, nic.class_code, nic.driver, nic.iommu_group) == \
        ("0000:05:00.0", "8086:10fb", 0x020000, "ixgbe", 12)
    assert nic.driver_override is None and nic.has_driver_override
    assert nic.path.endswith("/devices/pci0000:00/0000:00:1c.0/0000:05:00.0")
    assert not nic.kernel_bridge and not nic.normal_header_bridge
    port = fs.pci_device("00:1c.0")
    assert port.kernel_bridge and port.header_type == 1
    assert fs.pci_device("00:1f.0").normal_header_bridge  # the LPC bridge: vfio would take it
    assert fs.iommu_group_members(12) == ["0000:05:00.0", "0000:05:00.1"]
    assert fs.iommu_groups() == [0, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15]
    with pytest.raises(HostDeviceError, match="0000:09:00.0 does not exist"):
        fs.pci_device("09:00.0")


def test_usb_devices(lab_readonly):
    usb = {u.name: u for u in Sysfs(lab_readonly.root).usb_devices()}
    assert set(usb) == {"usb3", "usb4", "3-3", "3-4", "3-5"}  # interfaces are not devices
    mouse = usb["3-3"]
    assert (mouse.busnum, mouse.devnum, mouse.ids, mouse.product, mouse.manufacturer) == \
        (3, 3, "03f0:8607", "Optical Mobile Mouse", "HP")
    assert usb["usb3"].is_hub and not mouse.is_hub


def test_pci_names_from_pci_ids(lab_readonly):
    assert sysfs.pci_names(lab_readonly.root, "8086", "10fb") == \
        ("Intel Corporation", "82599ES 10-Gigabit SFI/SFP+ Network Connection")
    assert sysfs.pci_names(lab_readonly.root, "1b21", "ffff") == ("ASMedia Technology Inc.", None)
    assert sysfs.pci_names(lab_readonly.root / "nowhere", "8086", "10fb") == (None, None)


def test_write_never_creates_a_file_and_calls_the_hook(tmp_path):
    seen = []
    fs = Sysfs(tmp_path, on_write=lambda p, v: seen.append((p.name, v)))
    (tmp_path / "attr").write_text("old")
    fs.write(tmp_path / "attr", "vfio-pci")
    assert (tmp_path / "attr").read_text() == "vfio-pci" and seen == [("attr", "vfio-pci")]
    with pytest.raises(HostDeviceError, match="writing 'x' to .*missing failed"):
        fs.write(tmp_path / "missing", "x")
    assert not (tmp_path / "missing").exists()
