"""Issue 31, items 1-10: host shapes the old "known critical" rule let through as free, each
now refused by the proven-idle rule (harness/host/safety.py) before any host change, and the
lab host's devices still taken by the same rule. Fake sysfs and fake `ip -j`/`ss` output per
network namespace (tests/unit/fakesysfs.py)."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from harness.core.errors import HostDeviceError
from harness.host.binding import VfioBinder
from harness.host.inventory import load_inventory
from harness.host.safety import HostUsage, disks_below, plan_group
from harness.host.storage import _ended
from harness.host.sysfs import Sysfs
from harness.lab import devices as lab_devices

from . import fakesysfs
from .fakesysfs import FakeHost, link

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
PORT0, PORT1 = "0000:05:00.0", "0000:05:00.1"
BOTH_PORTS = {PORT0, PORT1}
IDLE_PORTS = [link(1, "lo", up=True), link(2, "enp2s0", "0000:02:00.0", up=True),
              link(3, "enp5s0f0", PORT0), link(4, "enp5s0f1", PORT1),
              link(5, "eno1", "0000:00:1f.6")]
HOST_ADDRS = {"lo": ["127.0.0.1/8"], "enp2s0": ["192.168.1.10/24"]}


def uses(host: FakeHost, bdf: str) -> tuple[str, ...]:
    return HostUsage.read(host.root).verdict(bdf).uses


def refused(host: FakeHost, bdf: str, allowed=BOTH_PORTS) -> str:
    """The binder refuses before any write, journal or sysfs."""
    journal = host.root / "var/lib/hotplug-harness/vfio-journal.json"
    before = host.snapshot()
    with pytest.raises(HostDeviceError) as e:
        VfioBinder(host.sysfs(), journal=journal).bind(bdf, allowed)
    assert host.writes == [] and host.snapshot() == before and not journal.exists()
    return e.value.message


def test_the_ports_are_idle_to_begin_with(lab):
    assert HostUsage.read(lab.root).verdict(PORT0).idle and not uses(lab, PORT1)


def test_1_an_ecmp_default_route_makes_every_next_hop_in_use(lab):
    """`ip -j route` prints ``nexthops`` and no top-level ``dev``: the old parser dropped it."""
    lab.network(links=[link(1, "lo", up=True), link(2, "enp2s0", "0000:02:00.0", up=True),
                       link(3, "enp5s0f0", PORT0, up=True), link(4, "enp5s0f1", PORT1)],
                addrs={**HOST_ADDRS, "enp5s0f0": ["10.0.5.1/24"]},
                routes=[{"dst": "default", "flags": [], "nexthops": [
                    {"gateway": "192.168.1.1", "dev": "enp2s0", "weight": 1, "flags": []},
                    {"gateway": "10.0.5.254", "dev": "enp5s0f0", "weight": 1, "flags": []}]}])
    assert "in group 12, enp5s0f0 carries the route default (ECMP: enp2s0, enp5s0f0) (table " \
           "main)" in refused(lab, PORT1)


def test_2_an_open_vswitch_uplink_is_in_use(lab):
    """The default route is on br-ex; the physical port has no route of its own."""
    lab.network(links=IDLE_PORTS[:2] + [
        link(3, "enp5s0f0", PORT0, up=True, master="ovs-system"), IDLE_PORTS[3],
        link(6, "ovs-system", linkinfo={"info_kind": "openvswitch"}),
        link(7, "br-ex", up=True, linkinfo={"info_kind": "openvswitch"})],
        addrs={**HOST_ADDRS, "br-ex": ["10.0.5.1/24"]},
        routes=[{"dst": "default", "gateway": "10.0.5.254", "dev": "br-ex", "flags": []}])
    assert uses(lab, PORT0) == ("enp5s0f0 has the upper device ovs-system",
                                "enp5s0f0 is up (with no address)")
    assert "enp5s0f0 has the upper device ovs-system" in refused(lab, PORT0)


def test_3_ports_of_a_bridge_bond_or_vlan_are_in_use(lab):
    """Upper devices that carry VMs' traffic but not the host's default route."""
    lab.network(links=IDLE_PORTS[:3] + [
        link(4, "enp5s0f1", PORT1, up=True, master="br-vm"),
        link(6, "br-vm", up=True, linkinfo={"info_kind": "bridge"}),
        link(7, "enp5s0f0.100", up=True, link="enp5s0f0", linkinfo={"info_kind": "vlan"})],
        addrs=HOST_ADDRS)
    assert uses(lab, PORT0) == ("enp5s0f0 has the upper device enp5s0f0.100",)
    assert uses(lab, PORT1) == ("enp5s0f1 has the upper device br-vm",
                                "enp5s0f1 is up (with no address)")
    # a bond the `ip` output does not show, known only from sysfs' upper_* link
    lab.network(links=IDLE_PORTS, addrs=HOST_ADDRS)
    lab.add_net("bond0")
    os.symlink(os.path.realpath(lab.sys / "class/net/bond0"),
               lab.sys / "class/net/enp5s0f1/upper_bond0")
    assert uses(lab, PORT1) == ("enp5s0f1 has the upper device bond0",)


def test_4_ssh_over_an_ipv6_link_local_address_protects_every_such_nic(lab):
    """Every up NIC has fe80::/64; the old rule protected the first route's NIC only."""
    lab.network(links=IDLE_PORTS[:2] + [link(3, "enp5s0f0", PORT0, up=True),
                                        link(4, "enp5s0f1", PORT1, up=True)],
                addrs={**HOST_ADDRS, "enp5s0f0": ["fe80::a/64"], "enp5s0f1": ["fe80::b/64"]},
                ss="tcp ESTAB 0 0 [fe80::b]%enp5s0f1:22 [fe80::99]%enp5s0f1:50022\n")
    assert uses(lab, PORT0) == ("enp5s0f0 is up with the address fe80::a/64",)
    assert uses(lab, PORT1) == (
        "enp5s0f1 is up with the address fe80::b/64",
        "enp5s0f1 has a socket bound to it (tcp ESTAB 0 0 [fe80::b]%enp5s0f1:22 "
        "[fe80::99]%enp5s0f1:50022)")


def test_4_a_packet_socket_bound_to_a_down_interface_is_in_use(lab):
    lab.proc("net/packet", "sk RefCnt Type Proto Iface R Rmem User Inode\n"
                           "ffff8a 3 3 88cc 3 1 0 0 31337\n")   # lldpd on ifindex 3
    assert uses(lab, PORT0) == ("enp5s0f0 has a socket bound to it (packet socket, inode "
                                "31337)",)


SRIOV_PF, VF0, VF1 = "0000:08:00.0", "0000:08:10.0", "0000:08:10.1"


def test_5_the_pf_of_a_vf_that_carries_the_hosts_route_is_in_use(lab):
    """The PF is not on the VF's path, so the old rule unbound it (and destroyed the VF)."""
    lab.add_pci("0000:00:1c.6", "8086:a33e", 0x060400, "pcieport", 16)
    lab.add_pci(SRIOV_PF, "8086:10c9", 0x020000, "igb", 17, parent="0000:00:1c.6")
    lab.sriov_capable(SRIOV_PF, 7)
    lab.add_net("enp8s0", SRIOV_PF)
    lab.sysfs().write(lab.sys / "bus/pci/devices" / SRIOV_PF / "sriov_numvfs", "2")
    assert lab.driver_of(VF0) == "igbvf"
    lab.add_net("enp8s0v0", VF0)
    lab.add_net("enp8s0v1", VF1)
    links = json.loads((lab.root / "ip/link.json").read_text())
    lab.network(links=[dict(li, flags=li["flags"] + ["UP"]) if li["ifname"] == "enp8s0v0"
                       else li for li in links],
                addrs={**HOST_ADDRS, "enp8s0v0": ["10.0.8.2/24"]},
                routes=[{"dst": "default", "gateway": "10.0.8.1", "dev": "enp8s0v0"}])
    assert uses(lab, SRIOV_PF) == ("its VF enp8s0v0 carries the route default (table main)",
                                   "its VF enp8s0v0 is up with the address 10.0.8.2/24")
    # a VF on vfio-pci may be in a guest: its PF stays too
    lab.network(links=links, addrs=HOST_ADDRS)
    lab._unbind(VF1)
    lab._bind(VF1, "vfio-pci")
    assert uses(lab, SRIOV_PF) == ("its VF 0000:08:10.1 is on vfio-pci: a guest may use it "
                                   "(unbinding the PF would remove it)",)


def nvme_root(host: FakeHost) -> None:
    """An NVMe controller whose namespace the host mounts as /, with native multipath: the
    disk is under /sys/devices/virtual/nvme-subsystem, its path device under the controller."""
    host.add_pci("0000:09:00.0", "144d:a808", 0x010802, "nvme", 21)
    ctrl = host.dev_dir("0000:09:00.0") / "nvme/nvme0"
    (ctrl / "nvme0c0n1").mkdir(parents=True)
    (ctrl / "dev").write_text("242:0\n")
    subsys = host.sys / "devices/virtual/nvme-subsystem/nvme-subsys0"
    head = subsys / "nvme0n1"
    (head / "nvme0n1p1").mkdir(parents=True)
    (head / "dev").write_text("259:0\n")
    (head / "nvme0n1p1/dev").write_text("259:1\n")
    (head / "nvme0n1p1/partition").write_text("1\n")
    os.symlink(ctrl, subsys / "nvme0")
    os.symlink(head, host.sys / "class/block/nvme0n1")
    os.symlink(head / "nvme0n1p1", host.sys / "class/block/nvme0n1p1")
    host.proc("self/mountinfo", "22 1 259:1 / / rw,relatime - ext4 /dev/nvme0n1p1 rw\n")


def test_6_the_root_disk_on_nvme_with_native_multipath_is_in_use(lab):
    nvme_root(lab)
    assert uses(lab, "09:00.0") == ("nvme0n1p1 is mounted on /",)
    # `harness bind` takes no inventory: the allow-list is the BDF itself
    assert "nvme0n1p1 is mounted on /" in refused(lab, "09:00.0", {"09:00.0"})


def test_7_the_boot_vga_and_console_gpu_is_never_taken(lab):
    lab.add_pci("0000:00:02.0", "8086:3e92", 0x030000, "i915", 2)
    (lab.dev_dir("0000:00:02.0") / "boot_vga").write_text("1\n")
    (lab.dev_dir("0000:00:02.0") / "graphics/fb0").mkdir(parents=True)
    assert uses(lab, "00:02.0") == (
        "0000:00:02.0 is the boot VGA device (boot_vga = 1): the firmware and the console "
        "draw on it",
        "0000:00:02.0 backs the framebuffer fb0, which the console (fbcon) draws on",
        "0000:00:02.0 is a VGA compatible controller: the harness has no role for that class, "
        "so no rule that could prove it idle")


def test_8_disks_of_an_unmounted_md_array_or_a_ceph_osd_are_in_use(lab):
    md = lab.sys / "devices/virtual/block/md127"
    (md / "slaves").mkdir(parents=True)
    os.symlink(md, lab.sys / "class/block/md127")
    sdb1 = lab.sys / "class/block/sdb1"
    (sdb1 / "holders").mkdir()
    os.symlink(md, sdb1 / "holders/md127")
    assert uses(lab, "06:00.0") == ("sdb1 is held by md127",)
    (sdb1 / "holders/md127").unlink()
    lab.proc("4242/comm", "ceph-osd\n")
    (lab.root / "proc/4242/fd").mkdir()
    os.symlink("/dev/sdb", lab.root / "proc/4242/fd/7")
    assert uses(lab, "06:00.0") == ("sdb is open by pid 4242 (ceph-osd)",)


def test_8_a_mount_in_another_mount_namespace_is_in_use(lab):
    """A container's mount: not in the harness's own mountinfo."""
    lab.proc("77/mountinfo", "40 30 8:17 / /data rw - ext4 /dev/sdb1 rw\n")
    (lab.root / "proc/77/ns").mkdir()
    os.symlink("mnt:[4026532400]", lab.root / "proc/77/ns/mnt")
    (lab.dev_dir("0000:06:00.0") / "ata1/host0/target0:0:0/0:0:0:0/block/sdb/sdb1/dev") \
        .write_text("8:17\n")
    assert uses(lab, "06:00.0") == ("sdb1 is mounted on /data",)


def test_9_interfaces_in_another_network_namespace_are_looked_at(lab):
    lab.network(links=IDLE_PORTS[:3] + IDLE_PORTS[4:], addrs=HOST_ADDRS)
    (lab.dev_dir(PORT1) / "net/enp5s0f1").rename(lab.root / "moved")  # not in our sysfs now
    lab.network("tenant", links=[link(1, "lo"), link(9, "enp5s0f1", PORT1, up=True)],
                addrs={"enp5s0f1": ["10.9.0.1/24"]},
                routes=[{"dst": "10.9.0.0/24", "dev": "enp5s0f1", "table": "vrf-blue"}])
    assert uses(lab, PORT1) == (
        "enp5s0f1 (netns tenant) carries the route 10.9.0.0/24 (table vrf-blue)",
        "enp5s0f1 (netns tenant) is up with the address 10.9.0.1/24")
    assert "in group 12, enp5s0f1 (netns tenant) carries the route" in refused(lab, PORT0)


def test_9_a_namespace_that_cannot_be_read_makes_every_nic_in_use(lab):
    lab.file("ip/netns.json", json.dumps([{"name": "ghost"}]))
    [why] = uses(lab, PORT0)
    assert why.startswith("cannot tell whether 0000:05:00.0's interfaces are in use: `ip -j -d "
                          "link show` in network namespace ghost cannot be read")
    assert uses(lab, "06:00.0") == ()  # a storage controller has no interface to tell


def test_9_a_macvlan_whose_lower_device_is_elsewhere_makes_every_nic_in_use(lab):
    lab.network("ctr", links=[link(2, "mv0", up=True, link_index=3, link_netnsid=0,
                                   linkinfo={"info_kind": "macvlan"})])
    [why] = uses(lab, PORT1)
    assert "mv0 (netns ctr) (macvlan) sits on a device of another namespace" in why


def test_a_tool_that_is_missing_counts_as_in_use(lab):
    (lab.root / "ip/ss.txt").unlink()
    [why] = uses(lab, PORT0)
    assert "the sockets cannot be read: no ip/ss.txt" in why


def test_a_keyboard_that_feeds_the_console_keeps_its_usb_controller(lab):
    lab.proc("bus/input/devices",
             'I: Bus=0003 Vendor=046d Product=c31c\nN: Name="Logitech USB Keyboard"\n'
             "S: Sysfs=/devices/pci0000:00/0000:00:14.0/usb3/3-4/3-4:1.0/input/input4\n"
             "H: Handlers=sysrq kbd leds event4\n\n")
    (lab.sys / "devices/pci0000:00/0000:00:14.0/usb3/3-4/3-4:1.0/input/input4").mkdir(
        parents=True)
    assert "0000:00:14.0: the keyboard Logitech USB Keyboard below it feeds the console (kbd " \
           "handler)" in uses(lab, "00:14.0")


# -- the lab host (harness/lab), by the same rule ------------------------------------------------


def lab_l1(root) -> FakeHost:
    """The nested lab host's shape (harness/lab/devices.py): q35, VT-d; a virtio management
    NIC with the default route (harder than the real lab, whose only link up is lo); the
    devices to take idle: e1000e 00:03.0 (down), ich9-ahci 00:04.0 (a disk, not mounted),
    qemu-xhci 00:05.0 (a usb-tablet), usb-ehci 00:06.0 (a usb-storage stick), an igb SR-IOV
    PF behind the root port 00:07.0, an NVMe drive 00:08.0 (not mounted); the LPC bridge, SMBus and Q35's own AHCI share group 9.
    Its root is 9p, its /tmp tmpfs; pytest (pid 300) holds only its console open."""
    h = FakeHost(root)
    h.add_pci("0000:00:00.0", "8086:29c0", 0x060000, group=0)
    h.add_pci("0000:00:02.0", "1af4:1000", 0x020000, "virtio-pci", 1)
    h.add_pci("0000:00:03.0", "8086:10d3", 0x020000, "e1000e", 2)
    h.add_pci("0000:00:04.0", "8086:2922", 0x010601, "ahci", 3)
    h.add_pci("0000:00:05.0", "1b36:000d", 0x0c0330, "xhci_hcd", 4)
    h.add_pci("0000:00:06.0", "8086:24cd", 0x0c0320, "ehci-pci", 5)
    h.add_pci("0000:00:07.0", "1b36:000c", 0x060400, "pcieport", 6)
    h.add_pci("0000:00:08.0", "1b36:0010", 0x010802, "nvme", 8)
    h.add_pci("0000:01:00.0", "8086:10c9", 0x020000, "igb", 7, parent="0000:00:07.0")
    h.sriov_capable("0000:01:00.0", 7, first_group=20)
    h.add_pci("0000:00:1f.0", "8086:2918", 0x060100, "lpc_ich", 9)
    h.add_pci("0000:00:1f.2", "8086:2922", 0x010601, "ahci", 9)
    h.add_pci("0000:00:1f.3", "8086:2930", 0x0c0500, "i801_smbus", 9)
    h.add_net("eth0", None)
    h.add_net("enp0s3", "0000:00:03.0")
    h.add_net("enp1s0", "0000:01:00.0")
    h.network(links=[link(1, "lo", up=True), link(2, "eth0", "0000:00:02.0", up=True),
                     link(3, "enp0s3", "0000:00:03.0"), link(4, "enp1s0", "0000:01:00.0")],
              addrs={"lo": ["127.0.0.1/8"], "eth0": ["10.0.2.15/24", "fe80::5054:ff:fe12:3456/64"]},
              routes=[{"dst": "default", "gateway": "10.0.2.2", "dev": "eth0"},
                      {"dst": "10.0.2.0/24", "dev": "eth0", "scope": "link"}])
    h.add_disk("sda", h.sata_port("0000:00:04.0"), (), sectors=131072)
    h.add_disk("nvme0n1", h.dev_dir("0000:00:08.0") / "nvme/nvme0", (),
               sectors=lab_devices.NVME_DISK_BYTES // 512)
    bsg = h.sata_port("0000:00:04.0") / "bsg/0:0:0:0"
    h.file(str((bsg / "dev").relative_to(root)), "247:0\n")
    h.add_usb_bus(1, "0000:00:05.0")
    h.add_usb_bus(2, "0000:00:06.0")
    tablet = h.add_usb("1-1", 2, "0627:0001", lab_devices.TABLET_PRODUCT, "QEMU")
    event = tablet / "0003:0627:0001.0001/input/input2/event2"
    h.file(str((event / "dev").relative_to(root)), "13:66\n")
    h.file(str((event / "uevent").relative_to(root)), "MAJOR=13\nMINOR=66\nDEVNAME=input/event2\n")
    h.file(str((event.parent / "mouse0/dev").relative_to(root)), "13:32\n")
    h.proc("bus/input/devices", f'N: Name="QEMU {lab_devices.TABLET_PRODUCT}"\n'
                                f"S: Sysfs={str(event.parent).split('/sys', 1)[1]}\n"
                                "H: Handlers=mouse0 event2\n\n")
    stick = h.add_usb("2-1", 2, "46f4:0001", lab_devices.STICK_PRODUCT, "QEMU",
                      iface_driver="usb-storage")
    h.add_disk("sdb", stick / "host1/target1:0:0/1:0:0:0", (), sectors=65536)
    h.proc("self/mountinfo", "1 0 0:20 / / ro - 9p hhroot ro\n2 1 0:21 / /tmp rw - tmpfs tmpfs rw\n"
                             "3 1 0:5 / /dev rw - devtmpfs devtmpfs rw\n")
    h.proc("swaps", "Filename Type Size Used Priority\n")
    (h.root / "proc/300/fd").mkdir(parents=True)
    h.proc("300/comm", "python3.11\n")
    for fd, target in enumerate(("/dev/null", "/dev/ttyS0", "/dev/ttyS0")):
        os.symlink(target, h.root / f"proc/300/fd/{fd}")
    return h


def test_the_lab_hosts_devices_are_proven_idle_by_the_same_rule(fake_root):
    h = lab_l1(fake_root)
    inventory = load_inventory(lab_devices.write_inventory(fake_root, root=fake_root), h.sysfs())
    journal = fake_root / "var/lib/hotplug-harness/vfio-journal.json"
    with VfioBinder(h.sysfs(), journal=journal,
                    cleared_storage=inventory.cleared_storage()) as binder:
        for d in inventory.devices:
            if d.is_pci:
                binder.bind(d.bdf, inventory.pci_addresses())
                assert h.driver_of(d.bdf) == "vfio-pci", d.name
        # the igb PF (lab_devices.SRIOV_NIC, not in the lab's DEVICES yet) gives its VFs
        vfs = binder.enable_vfs("0000:01:00.0", lab_devices.SRIOV_VFS)
        binder.bind(vfs[0], {vfs[0]})
        [stick] = [u for u in Sysfs(fake_root).usb_devices() if u.name == "2-1"]
        assert HostUsage.read(fake_root).usb_verdict(stick).idle
    assert h.driver_of("0000:00:03.0") == "e1000e"
    # ...and its management NIC and Q35's own AHCI are refused
    usage = HostUsage.read(fake_root)
    assert "eth0 carries the route default (table main)" in usage.verdict("00:02.0").uses
    assert not plan_group(h.sysfs(), "00:1f.2", usage, allowed={"00:1f.2"}).safe


def test_8_a_disk_a_kernel_storage_target_exports_is_in_use(lab):
    """nvmet and LIO open the disks they export to other machines without an exclusive
    claim, a holder or a process fd: only their configfs says so (found by a second,
    adversarial read)."""
    lab.file("sys/module/nvmet/refcnt", "1\n")
    lab.file("sys/kernel/config/nvmet/subsystems/nqn.lab:san/namespaces/1/device_path",
             "/dev/sdb\n")
    assert uses(lab, "06:00.0") == ("sdb is exported by nvmet (nqn.lab:san)",)


def test_8_a_loaded_target_whose_configfs_cannot_be_read_is_in_use(lab):
    lab.file("sys/module/target_core_mod/refcnt", "1\n")
    assert any("target_core_mod is loaded" in u for u in uses(lab, "06:00.0"))


def test_8_a_disk_a_loop_device_reads_directly_is_in_use(lab):
    """`losetup /dev/loop0 /dev/sdb`: no holders/ link, no process keeps it open."""
    loop = lab.sys / "devices/virtual/block/loop0"
    lab.file(str((loop / "loop/backing_file").relative_to(lab.root)), "/dev/sdb\n")
    os.symlink(loop, lab.sys / "class/block/loop0")
    assert uses(lab, "06:00.0") == ("sdb backs the loop device loop0",)


def test_an_nvme_namespace_without_multipath_is_a_disk_too(lab):
    """/sys/class/block/nvme0n1 -> .../nvme/nvme0/nvme0n1: not under a block/ folder."""
    lab.add_pci("0000:09:00.0", "144d:a808", 0x010802, "nvme", 21)
    ns = lab.dev_dir("0000:09:00.0") / "nvme/nvme0/nvme0n1"
    (ns / "nvme0n1p2").mkdir(parents=True)
    (ns / "dev").write_text("259:0\n")
    (ns / "nvme0n1p2/partition").write_text("2\n")
    os.symlink(ns, lab.sys / "class/block/nvme0n1")
    os.symlink(ns / "nvme0n1p2", lab.sys / "class/block/nvme0n1p2")
    lab.proc("swaps", "Filename Type Size Used Priority\n/dev/nvme0n1p2 partition 8 0 -2\n")
    assert "nvme0n1p2 is used as swap" in uses(lab, "09:00.0")


def test_a_block_node_that_cannot_be_opened_exclusively_counts_as_in_use():
    from harness.host.storage import _claimed

    assert _claimed("hh-no-such-disk") == [
        "hh-no-such-disk cannot be checked: opening /dev/hh-no-such-disk failed (No such file "
        "or directory)"]


def test_an_up_port_with_no_address_is_in_use(lab):
    """An FCoE or AoE port, a tc mirror target, an uplink whose cable is out right now: up,
    with no address, route, upper device or socket. Up at all is in use; only a port the
    operator set down is offered (found by a second, adversarial read)."""
    lab.network(links=IDLE_PORTS[:2] + [link(3, "enp5s0f0", PORT0, up=True), IDLE_PORTS[3]])
    assert uses(lab, PORT0) == ("enp5s0f0 is up (with no address)",)
    assert "enp5s0f0 is up (with no address)" in refused(lab, PORT0)


def test_an_interface_with_an_xdp_program_is_in_use(lab):
    lab.network(links=IDLE_PORTS[:2] + [link(3, "enp5s0f0", PORT0, up=True,
                                             xdp={"mode": 1, "prog": {"id": 42}})]
                + IDLE_PORTS[3:], addrs=HOST_ADDRS)
    assert uses(lab, PORT0) == ("enp5s0f0 is up (with no address)",
                                "enp5s0f0 has an XDP program attached")


def test_a_netconsole_interface_is_in_use(lab):
    """The kernel sends its log through it: no socket, no process, maybe no address."""
    lab.proc("cmdline", "root=/dev/sda2 netconsole=6665@/enp5s0f1,6666@10.0.5.9/ quiet\n")
    assert uses(lab, PORT1) == ("enp5s0f1 carries the kernel's netconsole",)
    lab.proc("cmdline", "root=/dev/sda2\n")
    lab.file("sys/kernel/config/netconsole/t1/enabled", "1\n")
    lab.file("sys/kernel/config/netconsole/t1/dev_name", "enp5s0f0\n")
    assert uses(lab, PORT0) == ("enp5s0f0 carries the kernel's netconsole",)


def test_a_usb_serial_adapter_that_is_the_kernel_console_keeps_its_controller(lab):
    tty = lab.dev_dir("0000:07:00.0") / "usb4/4-1/4-1:1.0/ttyUSB0/tty/ttyUSB0"
    lab.file(str((tty / "dev").relative_to(lab.root)), "188:0\n")
    lab.proc("consoles", "ttyUSB0              -W- (EC p a)  188:0\n")
    assert uses(lab, "07:00.0") == ("/dev/ttyUSB0 (below 0000:07:00.0) is a kernel console "
                                    "(ttyUSB0 in /proc/consoles)",)


def test_a_usb_interface_on_a_driver_the_rule_cannot_judge_keeps_its_controller(lab):
    """Bluetooth (btusb) is used through sockets `ss` does not list: fail closed."""
    lab.add_usb("4-1", 2, "8087:0a2b", "Bluetooth", iface_driver="btusb")
    assert uses(lab, "07:00.0") == ("USB interface 4-1:1.0 (below 0000:07:00.0) is on btusb, "
                                    "whose use the harness cannot judge",)


def container(host: FakeHost, pid: "int | str", inode: int) -> None:
    """A process in a network namespace of its own, not named in /var/run/netns."""
    (host.root / f"proc/{pid}/ns").mkdir(parents=True, exist_ok=True)
    if (host.root / f"proc/{pid}/ns/net").is_symlink():  # (the fake host's own)
        (host.root / f"proc/{pid}/ns/net").unlink()
    os.symlink(f"net:[{inode}]", host.root / f"proc/{pid}/ns/net")


def test_9_an_unnamed_namespace_a_container_lives_in_is_read_too(lab):
    """Docker's and Kubernetes' namespaces are in no /var/run/netns: read through a process
    in them (nsenter -t PID -n); the macvlan there sits on the host's enp5s0f1."""
    container(lab, "self", 4026531840)
    container(lab, 1, 4026531840)      # init, in the host's namespace
    container(lab, 2301, 4026532500)   # a container's init
    container(lab, 2302, 4026532500)   # and its other process: one namespace, read once
    lab.file("ip/pidns/2301/link.json", json.dumps(
        [link(1, "lo", up=True), link(2, "eth0", up=True, link_index=4, link_netnsid=0,
                                      linkinfo={"info_kind": "macvlan"})]))
    for what in ("addr", "route", "route6"):
        lab.file(f"ip/pidns/2301/{what}.json", "[]")
    lab.file("ip/pidns/2301/ss.txt", "")
    lab.file("ip/pidns/2301/packet.txt", "sk RefCnt Type Proto Iface R Rmem User Inode\n")
    [why] = uses(lab, PORT1)
    assert "eth0 (netns pid 2301) (macvlan) sits on a device of another namespace" in why
    (lab.root / "ip/pidns/2301/ss.txt").unlink()  # it cannot be entered: fail closed
    assert any("the sockets in network namespace pid 2301 cannot be read" in why
               for why in uses(lab, PORT1))
    assert not (lab.root / "ip/pidns/2302").exists()


def test_binding_is_refused_outside_the_hosts_network_namespace(lab):
    from harness.host.network import namespace_problem

    container(lab, "self", 4026532301)
    assert "network namespace net:[4026532301], not the host's" in namespace_problem(lab.sysfs())
    assert refused(lab, PORT0).startswith("refusing to take 0000:05:00.0: this process is in "
                                          "network namespace net:[4026532301]")


def test_binding_is_refused_in_a_container(lab):
    lab.file(".dockerenv")
    assert "/.dockerenv exists" in refused(lab, PORT0)


def test_zfs_leaves_every_storage_controller_unproven_unless_the_inventory_clears_it(lab):
    from harness.host.inventory import parse_inventory

    lab.proc("mounts", "rpool/ROOT/debian / zfs rw 0 0\n")
    lab.proc("swaps", "Filename Type Size Used Priority\n")
    assert "0000:06:00.0 may hold / (rpool/ROOT/debian, zfs)" in refused(lab, "06:00.0",
                                                                        {"06:00.0"})
    inventory = parse_inventory('[[device]]\nrole = "sata-controller"\nbdf = "06:00.0"\n'
                                'no_host_filesystems = true\n', root=lab.root)
    cleared = HostUsage.read(lab.root, inventory.cleared_storage()).verdict("06:00.0")
    assert cleared.idle and "0000:06:00.0: the inventory says it holds none of / " \
                            "(rpool/ROOT/debian, zfs) (no_host_filesystems)" in cleared.evidence


def test_a_usb_nic_whose_interface_went_to_another_namespace_keeps_its_controller(lab):
    iface = lab.add_usb("4-1", 2, "0bda:8153", "USB 10/100/1000 LAN", iface_driver="r8152")
    assert uses(lab, "07:00.0") == (
        "USB interface 4-1:1.0 (below 0000:07:00.0) is on the network driver r8152 and shows no "
        "network interface here (another namespace may use it)",)
    (iface / "net/enx00e04c680001").mkdir(parents=True)  # back in the harness's namespace
    lab.file("ip/link.json", json.dumps(json.loads((lab.root / "ip/link.json").read_text())
                                        + [link(9, "enx00e04c680001")]))
    assert uses(lab, "07:00.0") == ()


def test_a_process_that_ended_mid_read_is_gone_not_a_problem():
    """Reaped, or a zombie alone: it holds no namespace, so a read that met it mid-way is
    no reason to refuse; a live process is not taken for ended."""
    live = subprocess.Popen(["sleep", "60"])
    zombie = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "Z" not in open(f"/proc/{zombie.pid}/stat").read() \
                .rsplit(")", 1)[1].split()[0]:
            time.sleep(0.01)
        assert _ended(Path(f"/proc/{zombie.pid}"))
        assert not _ended(Path(f"/proc/{live.pid}"))
    finally:
        live.kill()
        live.wait()
        zombie.wait()
    assert _ended(Path(f"/proc/{zombie.pid}"))  # (reaped)


def test_the_disks_a_move_claims_are_the_multipath_head_not_its_hidden_path(lab):
    """What :func:`harness.host.binding._disks_claimed` claims of an NVMe controller with
    native multipath: the head (``/dev/nvme0n1``), not the path device ``nvme0c0n1``, which
    the kernel hides (no node: the lab's first try to claim it met ENOENT and refused)."""
    nvme_root(lab)
    path_dev = lab.dev_dir("0000:09:00.0") / "nvme/nvme0/nvme0c0n1"
    (path_dev / "hidden").write_text("1\n")
    (path_dev / "dev").write_text("259:2\n")
    os.symlink(path_dev, lab.sys / "class/block/nvme0c0n1")
    assert disks_below(Sysfs(lab.root), str(lab.dev_dir("0000:09:00.0"))) == ["nvme0n1"]
