"""harness.virt.xml: guest shapes and hot-added devices as libvirt XML (no daemon needed;
the same XML is what the end-to-end tests hand the real daemon in tests/harness/test_libvirt.py)."""

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.core.errors import Unexpressible
from harness.qemu.machine import GuestImage, GuestSpec, Paths
from harness.virt import xml as vx

PATHS = Paths(qmp_socket=Path("/t/qmp.sock"), console_socket=Path("/t/console.sock"),
              serial_log=Path("/w/serial.log"), disk_overlay=Path("/t/disk.qcow2"))
IMAGE = GuestImage(kernel=Path("/i/vmlinux"), initrd=Path("/i/initrd"), append="console=ttyS0")


def domain(spec, image=IMAGE, accel="tcg"):
    return ET.fromstring(vx.domain_xml(spec, image, PATHS, name="hh-1-g1",
                                       emulator="/usr/bin/qemu-system-x86_64", accel=accel))


def test_q35_domain_has_the_root_ports_console_and_kernel_boot_of_the_spec():
    d = domain(GuestSpec(machine="q35", root_ports=3, kernel_args=("hh.x=1",)))
    assert d.get("type") == "qemu" and d.find("os/type").get("machine") == "q35"
    ports = [c for c in d.findall("devices/controller") if c.get("model") == "pcie-root-port"]
    assert [(p.get("index"), p.find("alias").get("name")) for p in ports] == [
        ("1", "ua-rp0"), ("2", "ua-rp1"), ("3", "ua-rp2")]
    assert d.find("os/cmdline").text == "console=ttyS0 hh.x=1"
    serial = d.find("devices/serial")
    assert serial.find("source").get("path") == "/t/console.sock"
    assert serial.find("log").get("file") == "/w/serial.log"
    assert d.find("on_reboot").text == "destroy"  # QEMU's -no-reboot
    assert d.find("features/tcg/tb-cache").text == "128"
    assert d.find("seclabel/label").text == "+0:+0"
    # (no USB bus asked for: none, as -nodefaults gives)
    assert [c.get("model") for c in d.findall("devices/controller[@type='usb']")] == ["none"]


def test_usb_buses_follow_the_guide():
    pc = domain(GuestSpec(machine="pc", usb="default"))
    assert [c.get("model") for c in pc.findall("devices/controller[@type='usb']")] == ["piix3-uhci"]
    q35 = domain(GuestSpec(machine="q35", usb="default"))
    assert [c.get("model") for c in q35.findall("devices/controller[@type='usb']")] == [
        "ich9-ehci1", "ich9-uhci1", "ich9-uhci2", "ich9-uhci3"]


def test_pciehp_turns_acpi_hotplug_off_through_a_qemu_argument_and_kvm_passes_the_host_cpu():
    d = domain(GuestSpec(machine="q35", pci_hotplug="pciehp"), accel="kvm")
    ns = {"qemu": "http://libvirt.org/schemas/domain/qemu/1.0"}
    args = [a.get("value") for a in d.findall("qemu:commandline/qemu:arg", ns)]
    assert args == ["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"]
    assert d.get("type") == "kvm" and d.find("cpu").get("mode") == "host-passthrough"


def test_a_disk_guest_boots_its_overlay_never_its_image():
    d = domain(GuestSpec(machine="pc"), GuestImage(disk=Path("/u/mine.qcow2"), ready_pattern=None,
                                                   seed=Path("/u/seed.img")))
    sources = [s.get("file") for s in d.findall("devices/disk/source")]
    assert sources == ["/t/disk.qcow2", "/u/seed.img"]
    # on the root bus, as QEMU's -drive if=virtio: never on a root port the harness hot-adds to
    assert [a.get("bus") for a in d.findall("devices/disk/address")] == ["0x00", "0x00"]
    assert d.find("devices/disk[2]/readonly") is not None


def test_a_guest_reached_over_ssh_has_the_qmp_drivers_management_nic_at_a_fixed_slot():
    """libvirt forwards a user interface's ports only through passt (another network stack):
    the QMP driver's own management NIC goes to QEMU as is, at a slot libvirt leaves alone."""
    d = domain(GuestSpec(machine="q35", access="ssh", pci_hotplug="pciehp"))
    ns = "{http://libvirt.org/schemas/domain/qemu/1.0}"
    args = [a.get("value") for a in d.iter(f"{ns}arg")]
    assert args == ["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
                    "-netdev", "user,id=mgmt,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:0-:22",
                    "-device", "virtio-net-pci,netdev=mgmt,id=mgmt0,bus=pcie.0,addr=0x0c"]
    slots = {int(a.get("slot"), 16) for a in d.iter("address") if a.get("bus") == "0x00"}
    assert vx.MGMT_SLOT not in slots
    assert not list(domain(GuestSpec(machine="pc")).iter(f"{ns}arg"))


def test_cpu_and_memory_room_is_offline_vcpus_in_qemus_topology_and_dimm_slots_in_a_numa_cell():
    """As ``-smp 1,maxcpus=2 -m 512,slots=2,maxmem=2048M`` gives the QMP driver's guests: QEMU
    (6.2 and newer) makes that one socket of two cores, so the hot-added CPU is core 1 in both."""
    from harness.virt import vcpus
    d = domain(GuestSpec(machine="pc", cpus=1, max_cpus=2, mem_slots=2, max_memory_mb=2048))
    assert (d.find("vcpu").text, d.find("vcpu").get("current")) == ("2", "1")
    assert d.find("cpu/topology").attrib == {"sockets": "1", "dies": "1", "cores": "2", "threads": "1"}
    assert d.find("maxMemory").attrib == {"slots": "2", "unit": "MiB"} and d.find("maxMemory").text == "2048"
    assert d.find("cpu/numa/cell").attrib == {"id": "0", "cpus": "0-1", "memory": "512", "unit": "MiB"}
    text = ET.tostring(d, encoding="unicode")
    assert vcpus.vcpu_number(text, {"socket-id": 0, "core-id": 1, "thread-id": 0, "node-id": 0}) == 1
    plain = domain(GuestSpec(machine="pc"))
    assert plain.find("vcpu").get("current") is None and plain.find("maxMemory") is None
    assert plain.find("cpu/topology") is None and plain.find("cpu/numa") is None


def test_a_dimm_is_a_memory_element_of_its_backends_size():
    b = vx.Backends(memdevs={"mem1": 256 << 20})
    el = ET.fromstring(vx.device_xml(GuestSpec(machine="q35"), "pc-dimm", "dimm1",
                                     {"memdev": "mem1"}, b))
    assert (el.tag, el.get("model"), el.find("target/size").text, el.find("target/size").get("unit"),
            el.find("target/node").text, el.find("alias").get("name")) == (
        "memory", "dimm", "262144", "KiB", "0", "ua-dimm1")
    with pytest.raises(Unexpressible, match="memory-backend-ram of known size"):
        vx.device_xml(GuestSpec(machine="q35"), "pc-dimm", "dimm2", {"memdev": "nope"}, b)


def test_a_nic_is_an_interface_with_its_model_network_alias_and_root_port():
    spec = GuestSpec(machine="q35")
    b = vx.Backends(netdevs={"n0": {"type": "user", "id": "n0", "net": "10.0.11.0/24"}})
    el = ET.fromstring(vx.device_xml(spec, "e1000e", "nic0", {"bus": "rp2", "netdev": "n0"}, b))
    assert el.tag == "interface" and el.get("type") == "user"
    assert el.find("model").get("type") == "e1000e"
    assert (el.find("ip").get("address"), el.find("ip").get("prefix")) == ("10.0.11.0", "24")
    assert el.find("alias").get("name") == "ua-nic0"
    assert el.find("address").get("bus") == "0x03"  # rp2 is controller index 3
    virtio = ET.fromstring(vx.device_xml(spec, "virtio-net-pci", "nic1", {"netdev": "n0"}, b))
    assert virtio.find("model").get("type") == "virtio" and virtio.find("address") is None


def test_the_guides_fixed_sata_slot_and_a_multifunction_address_on_pc():
    spec = GuestSpec(machine="pc")
    b = vx.Backends(netdevs={"n0": {"type": "user"}})
    el = ET.fromstring(vx.device_xml(spec, "e1000", "f1", {"bus": "pci.0", "addr": "0x06.1",
                                                            "multifunction": "on", "netdev": "n0"}, b))
    a = el.find("address")
    assert (a.get("bus"), a.get("slot"), a.get("function"), a.get("multifunction")) == (
        "0x00", "0x06", "0x1", "on")


def test_disks_controllers_and_host_devices():
    spec = GuestSpec(machine="q35", usb="xhci")
    b = vx.Backends(disks={"d0": Path("/t/d0.raw"), "d1": Path("/t/d1.raw")},
                    indexes={"usb": {0}, "sata": {0}})
    stick = ET.fromstring(vx.device_xml(spec, "usb-storage", "usb0", {"drive": "d0"}, b))
    assert (stick.find("target").get("bus"), stick.find("target").get("dev")) == ("usb", "sdb")
    blk = ET.fromstring(vx.device_xml(spec, "virtio-blk-pci", "blk0", {"drive": "d1", "bus": "rp0"}, b))
    assert blk.find("target").get("dev") == "vdb" and blk.find("source").get("file") == "/t/d1.raw"
    sata = ET.fromstring(vx.device_xml(spec, "ich9-ahci", "sata0", {"bus": "rp1"}, b))
    assert (sata.get("type"), sata.get("index")) == ("sata", "1")  # q35's own AHCI is 0
    vfio = ET.fromstring(vx.device_xml(spec, "vfio-pci", "v0", {"host": "0000:03:00.1",
                                                                 "managed": "yes"}, b))
    src = vfio.find("source/address")
    assert (vfio.get("managed"), src.get("bus"), src.get("function")) == ("yes", "0x03", "0x1")
    unmanaged = vx.device_xml(spec, "vfio-pci", "v0", {"host": "03:00.1", "managed": "no"}, b)
    assert ET.fromstring(unmanaged).get("managed") == "no"  # (--libvirt-managed no)
    usbhost = ET.fromstring(vx.device_xml(spec, "usb-host", "u0", {"vendorid": "0x46f4",
                                                                    "productid": "0x0001"}, b))
    assert usbhost.find("source/vendor").get("id") == "0x46f4"
    both = ET.fromstring(vx.device_xml(spec, "usb-host", "u0", {
        "vendorid": 0x46f4, "productid": 1, "hostbus": 4, "hostaddr": 2}, b))
    assert both.find("source/product").get("id") == "0x0001"  # (and the proven address: both)
    assert (both.find("source/address").get("bus"), both.find("source/address").get("device")) \
        == ("4", "2")
    with pytest.raises(Unexpressible, match="each pair whole"):
        vx.device_xml(spec, "usb-host", "u0", {"vendorid": 0x46f4, "hostbus": 4, "hostaddr": 2}, b)
    with pytest.raises(Unexpressible, match="nvme"):
        vx.device_xml(spec, "nvme", "nvme0", {"drive": "d0"}, b)


def test_live_aliases_and_elements_from_a_live_domain_xml():
    live = ("<domain><devices><controller type='usb' index='0'><alias name='usb'/></controller>"
            "<interface type='user'><alias name='ua-nic0'/></interface>"
            "<controller type='pci' index='1'/></devices></domain>")
    assert vx.live_aliases(live) == {"usb": "controller", "ua-nic0": "interface"}
    assert vx.controller_indexes(live) == {"usb": {0}, "pci": {1}}
    assert "ua-nic0" in vx.element_of(live, "ua-nic0")
    assert vx.element_of(live, "ua-nic1") is None


def test_a_property_libvirt_has_no_place_for_is_refused_not_dropped():
    spec = GuestSpec(machine="q35")
    b = vx.Backends(netdevs={"n0": {"type": "user"}})
    with pytest.raises(Unexpressible, match="failover=True.*hostdev"):
        vx.device_xml(spec, "virtio-net-pci", "standby0", {"netdev": "n0", "failover": True}, b)
    with pytest.raises(Unexpressible, match="speed=fast"):
        vx.device_xml(spec, "usb-tablet", "t0", {"speed": "fast"}, b)


class _Err(Exception):
    def __init__(self, text, domain, code):
        super().__init__(text)
        self._domain, self._code = domain, code

    def get_error_domain(self):
        return self._domain

    def get_error_code(self):
        return self._code


def test_a_daemon_gone_under_an_open_connection_is_told_apart_from_a_refusal(monkeypatch):
    """The first call after libvirtd died may still find its connection alive and fail writing
    to it (CI, Dec 5: "Cannot write data: Broken pipe"): that is the daemon gone, not a refusal."""
    from types import SimpleNamespace

    from harness.virt import connect, domain as vd
    monkeypatch.setattr(connect, "libvirt_module",
                        lambda: SimpleNamespace(VIR_FROM_RPC=7, VIR_ERR_SYSTEM_ERROR=38))
    assert vd._connection_lost(_Err("Cannot write data: Broken pipe", 7, 38))
    assert vd._connection_lost(_Err("internal error: client socket is closed", 7, 1))
    assert vd._connection_lost(_Err("some new RPC wording", 7, 38))
    assert not vd._connection_lost(_Err("operation failed: device not found", 10, 9))


@pytest.mark.parametrize("text, says", [
    ("Failed to connect socket to '/run/libvirt/libvirt-sock': No such file or directory",
     "the libvirt daemon is not running"),
    ("Cannot recv data: Connection reset by peer", "the libvirt daemon stopped answering"),
    ("End of file while reading data: Input/output error", "the libvirt daemon stopped answering"),
    ("authentication unavailable: no polkit agent", "no permission to use"),
    ("something else entirely", "cannot connect to"),
])
def test_a_connection_error_says_what_happened_to_the_daemon(text, says):
    """A daemon killed after its socket accepted the connection, before it answered (seen in
    the libvirt tests' SIGKILL of the daemon), is one that stopped answering, not an unknown
    failure."""
    from harness.virt import connect
    assert connect._connect_error("qemu:///system", Exception(text)).message.startswith(says)
