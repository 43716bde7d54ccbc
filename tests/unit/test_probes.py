"""Parsers of tool output, on real captured output (data/: the built-in guest under QEMU 7.2,
and the guide's own samples, data/guide-*)."""

from pathlib import Path

import pytest

from harness.guest import probes
from harness.scenario.prereq import parse_kernel_config

DATA = Path(__file__).parent / "data"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_lspci_nn_q35():
    entries = probes.parse_lspci_nn(read("lspci-nn.q35.txt"))
    by_slot = {e.slot: e for e in entries}
    nic = by_slot["01:00.0"]
    assert (nic.class_name, nic.class_id, nic.ids) == ("Ethernet controller", "0200", "8086:10d3")
    assert nic.description.startswith("Intel Corporation 82574L")
    sata = by_slot["00:1f.2"]
    assert sata.description.endswith("[AHCI mode]")  # a bracket inside the name is not the ids
    assert sata.ids == "8086:2922"


def test_lspci_nn_with_domain_and_k_lines():
    entries = probes.parse_lspci_nn(read("lspci-nnkD.q35.txt"))
    assert all(e.slot.startswith("0000:") for e in entries)
    assert "0000:01:00.0" in {e.slot for e in entries}


def test_lspci_k_driver_and_modules():
    info = probes.parse_lspci_k(read("lspci-k-s.pc-sata.txt"))
    assert info["00:06.0"]["driver"] == "ahci"
    assert info["00:06.0"]["modules"] == "ahci"
    q35 = probes.parse_lspci_k(read("lspci-k.q35.txt"))
    assert q35["01:00.0"]["driver"] == "e1000e"


def test_lspci_k_guide_vfio_bound():
    info = probes.parse_lspci_k(read("guide-lspci-k.txt"))
    assert info["00:1f.2"] == {"line": info["00:1f.2"]["line"], "driver": "vfio-pci", "modules": "ahci"}


def test_lsusb_guest_and_guide_host():
    guest = probes.parse_lsusb(read("lsusb.q35-xhci.txt"))
    assert [(e.bus, e.device, e.ids, e.name) for e in guest if e.ids == "0627:0001"] == \
        [(1, 2, "0627:0001", "QEMU QEMU USB Tablet")]
    host = probes.parse_lsusb(read("guide-lsusb-host.txt"))
    mouse = next(e for e in host if e.ids == "03f0:8607")
    assert (mouse.bus, mouse.device, mouse.name) == (3, 3, "Hewlett-Packard Optical Mobile Mouse")
    assert next(e for e in host if e.ids == "8087:8002").name == "Intel Corp."  # trailing space


def test_info_pci_guide_sample():
    entries = probes.parse_info_pci(read("guide-info-pci.txt"))
    assert [(e.bus, e.device, e.function, e.class_name, e.ids, e.qdev_id) for e in entries] == [
        (0, 3, 0, "Ethernet controller", "8086:10fb", "nic0"),
        (0, 6, 0, "SATA controller", "8086:3a22", "sata"),
    ]


def test_info_pci_qemu72():
    pc = probes.parse_info_pci(read("info-pci.pc.txt"))
    sata = next(e for e in pc if e.qdev_id == "sata")
    assert (sata.bus, sata.device, sata.class_name) == (0, 6, "SATA controller")
    q35 = probes.parse_info_pci(read("info-pci.q35.txt"))
    nic = next(e for e in q35 if e.qdev_id == "nic0")
    assert (nic.bus, nic.device, nic.ids) == (1, 0, "8086:10d3")
    assert {e.qdev_id for e in q35 if e.class_name == "PCI bridge"} >= {"rp0", "rp1"}


def test_info_usb_with_and_without_id():
    new = probes.parse_info_usb(read("info-usb.q35-xhci.txt"))
    assert [(e.product, e.qdev_id, e.speed) for e in new] == [
        ("QEMU USB MSD", "stick0", "5000 Mb/s"), ("QEMU USB Tablet", "tab0", "480 Mb/s")]
    old = probes.parse_info_usb(read("guide-info-usb.txt"))
    assert [(e.address, e.port, e.speed, e.product, e.qdev_id) for e in old] == [
        ("0.2", "3", "1.5 Mb/s", "HP Mobile USB Optical Mouse", "")]


def test_fdisk_new_and_guide_format():
    assert probes.parse_fdisk_l(read("fdisk-l.txt")) == [probes.FdiskDisk("/dev/sda", 33554432, 65536)]
    assert probes.parse_fdisk_l(read("guide-fdisk-l.txt")) == [
        probes.FdiskDisk("/dev/sdb", 164696555520, 164696555520 // 512)]


def test_ip_json():
    addrs = probes.ipv4_addresses(read("ip-j-addr.json"))
    assert addrs["eth0"] == ["10.0.10.15/24"]
    assert addrs["lo"] == ["127.0.0.1/8"]
    assert probes.default_gateways(read("ip-j-route.json")) == {"eth0": "10.0.10.2"}
    assert probes.ipv4_addresses("") == {}


def test_meminfo_and_kernel_config():
    assert probes.meminfo_kb(read("meminfo.txt"))["MemTotal"] > 300_000
    config = parse_kernel_config(read("kernel-config.txt"))
    assert config["CONFIG_HOTPLUG_PCI_ACPI"] == "y"
    assert config["CONFIG_MEMORY_HOTPLUG_DEFAULT_ONLINE"] == "n"


@pytest.mark.parametrize("line", ["", "garbage", "Bus 1 Device 2: ID zzzz:0001", "  Device , Port"])
def test_parsers_ignore_noise(line):
    assert probes.parse_lsusb(line) == [] and probes.parse_info_usb(line) == []
    assert probes.parse_lspci_nn(line) == [] and probes.parse_info_pci(line) == []


def test_events_log():
    assert probes.parse_events("3.46 modules-loaded\nbad line\n7.9 uevent add pci /devices/x\n") == [
        (3.46, ["modules-loaded"]), (7.9, ["uevent", "add", "pci", "/devices/x"])]


def test_boot_stage_follows_a_systemd_boot_on_its_console():
    """A debootstrap'd systemd Debian 12 guest's real console (QEMU 7.2, TCG, q35), cut where a
    boot that hangs would stop."""
    full = (DATA / "serial.systemd-debian12.txt").read_text(errors="replace")
    cut = lambda marker: full[:full.index(marker)]  # noqa: E731
    assert probes.boot_stage("").startswith("nothing on the serial console")
    assert probes.boot_stage("SeaBIOS (version 1.16.2-debian-1.16.2-1)\n") == "the firmware"
    assert probes.boot_stage(cut("Freeing unused")).startswith("the kernel")
    assert probes.boot_stage(cut("systemd[1]")).startswith("init")
    assert probes.boot_stage(cut("login:")).startswith("userspace")
    assert probes.boot_stage(full).startswith("a login prompt or shell")


def test_memory_blocks_before_and_after_onlining():
    """Captured on the systemd guest after a 256 MiB pc-dimm: memory32 still offline (where it
    may go: Normal first, the default), memory33 onlined by udev into Normal."""
    blocks = probes.parse_memory_blocks("memory0 online DMA\nmemory1 online DMA32\n"
                                        "memory32 offline Normal Movable\nmemory33 online Normal\n")
    assert [(b.name, b.state, b.zones) for b in blocks[2:]] == [
        ("memory32", "offline", ("Normal", "Movable")), ("memory33", "online", ("Normal",))]
    assert (blocks[2].zone, blocks[3].zone) == ("?", "Normal")


def test_net_links_of_a_failover_pair_after_udev_renamed_it():
    """Captured on the systemd guest (QEMU 7.2, q35): net_failover's master enp1s0 (the
    virtio device's link, as the kernel sets it up), its standby enp1s0nsby (virtio_net) and
    its primary enp2s0 (e1000e), all three with the one MAC; lo has no device."""
    text = ("enp1s0 52:54:00:fa:11:00 /sys/devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio1 "
            "virtio_net enp1s0nsby enp2s0\n"
            "enp1s0nsby 52:54:00:FA:11:00 /sys/devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio1 virtio_net\n"
            "enp2s0 52:54:00:fa:11:00 /sys/devices/pci0000:00/0000:00:02.1/0000:02:00.0 e1000e\n"
            "lo 00:00:00:00:00:00 - -\n"
            "half\n")
    links = probes.parse_net_links(text)
    assert [(n.name, n.pci, n.driver, n.lowers) for n in links] == [
        ("enp1s0", "0000:01:00.0", "virtio_net", ("enp1s0nsby", "enp2s0")),
        ("enp1s0nsby", "0000:01:00.0", "virtio_net", ()),
        ("enp2s0", "0000:02:00.0", "e1000e", ()),
        ("lo", None, None, ())]
    assert {n.mac for n in links[:3]} == {"52:54:00:fa:11:00"}


def test_interface_of_a_nic_is_found_by_mac_or_pci_never_by_name():
    links = probes.parse_net_links(
        "enp1s0 52:54:00:fa:11:00 /sys/devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio1 "
        "virtio_net enp1s0nsby enp2s0\n"
        "enp1s0nsby 52:54:00:fa:11:00 /sys/devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio1 virtio_net\n"
        "enp2s0 52:54:00:fa:11:00 /sys/devices/pci0000:00/0000:00:02.1/0000:02:00.0 e1000e\n"
        "ens4 52:54:00:12:34:56 /sys/devices/pci0000:00/0000:00:04.0 e1000\n"
        "ens5 52:54:00:12:34:57 /sys/devices/pci0000:00/0000:00:05.0 vfio-less\n")
    assert probes.interface_of(links, "52:54:00:FA:11:00", "01:00.0").name == "enp1s0"  # the master
    assert probes.interface_of(links, "52:54:00:12:34:56", None).name == "ens4"
    assert probes.interface_of(links, None, "00:05.0").name == "ens5"   # a passed-through NIC
    assert probes.interface_of(links, "52:54:00:00:00:01", "00:06.0") is None


def test_scsi_hosts_and_the_pci_function_each_hangs_off():
    """Captured on the built-in guest (QEMU 7.2, q35) after the SATA stand-in's hot-add: the
    chipset's AHCI (00:1f.2), the hot-added ich9-ahci (01:00.0), each port a host with no
    target, and the virtio-scsi carrier (02:00.0) with its disk; a line cut mid-removal is
    not data."""
    text = ("host0 ahci /sys/devices/pci0000:00/0000:00:1f.2/ata1/host0 0\n"
            "host6 ahci /sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/ata7/host6 0\n"
            "host12 virtio_scsi /sys/devices/pci0000:00/0000:00:02.0/0000:02:00.0/virtio0/host12 1\n"
            "host13 virtio_scsi\n")
    hosts = probes.parse_scsi_hosts(text)
    assert [(h.name, h.driver, h.targets) for h in hosts] == [
        ("host0", "ahci", 0), ("host6", "ahci", 0), ("host12", "virtio_scsi", 1)]
    assert [h.name for h in hosts if h.behind("02:00.0")] == ["host12"]
    assert [h.name for h in hosts if h.behind("01:00.0")] == ["host6"]
    # (the root port 00:01.0 is on the path of the ahci behind it, not of the chipset's)
    assert [h.name for h in hosts if h.behind("00:01.0")] == ["host6"]
    assert not [h for h in hosts if h.behind("00:02.1")]
