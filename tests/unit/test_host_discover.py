"""harness.host.safety and .discover: what the host needs, which candidates are safe, the draft."""

import json
import os

import pytest

from harness.host.discover import discover, draft_inventory, format_candidates
from harness.host.inventory import GATEWAY_PLACEHOLDER, InventoryError, parse_inventory
from harness.host.safety import HostUsage, plan_group
from harness.host.storage import StorageView
from harness.host.sysfs import Sysfs

from . import fakesysfs

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures


def uses(host, bdf: str) -> tuple[str, ...]:
    return HostUsage.read(host.root).verdict(bdf).uses


def test_verdicts_of_the_lab_host(lab):
    usage = HostUsage.read(lab.root)
    assert usage.verdict("00:17.0").uses == ("sda2 is mounted on /", "sda3 is used as swap")
    assert usage.verdict("00:14.0").uses == ("sdc1 is mounted on /mnt/usb stick",)
    assert usage.verdict("02:00.0").uses == (
        "enp2s0 carries the route default (table main)",
        "enp2s0 carries the route 192.168.1.0/24 (table main)",
        "enp2s0 is up with the address 192.168.1.10/24, fe80::1:10/64",
        "enp2s0 has the connection 192.168.1.10:22 192.168.1.50:50022 from its address")
    idle = usage.verdict("05:00.0")
    assert idle.idle and idle.evidence == (
        "enp5s0f0: down, no route in any table, no upper device, no socket bound to it",)
    assert usage.verdict("06:00.0").evidence == (
        "sdb: not mounted, not swap, not held, not a btrfs device, open by no process",)


def test_a_nic_whose_interface_cannot_be_seen_is_in_use(lab):
    """Its interface moved into a container's (unnamed) namespace, or DPDK drives it."""
    (lab.dev_dir("0000:05:00.0") / "net/enp5s0f0").rename(lab.root / "moved-away")
    links = json.loads((lab.root / "ip/link.json").read_text())
    lab.file("ip/link.json", json.dumps([li for li in links if li["ifname"] != "enp5s0f0"]))
    assert uses(lab, "05:00.0") == (
        "0000:05:00.0 is on ixgbe, which shows no network interface in any namespace the "
        "harness can read (a container's namespace, or a user-space driver, may use it)",)


def test_a_nic_is_in_use_when_ip_cannot_be_read(lab):
    (lab.root / "ip/route6.json").unlink()
    [why] = uses(lab, "05:00.0")
    assert why.startswith("cannot tell whether 0000:05:00.0's interfaces are in use: "
                          "`ip -j -6 route show table all` cannot be read: no ip/route6.json")


def test_root_on_lvm_holds_the_disks_under_it(lab):
    lab.add_dm("dm-0", "vg-root", ["sdb1"])
    lab.proc("mounts", "/dev/mapper/vg-root / ext4 rw 0 0\n")
    lab.proc("swaps", "Filename Type Size Used Priority\n")
    assert uses(lab, "06:00.0") == ("sdb1 is held by dm-0 (vg-root)",)
    assert uses(lab, "00:17.0") == ()


def test_dev_root_resolved_through_mountinfo(lab):
    lab.proc("self/mountinfo", "22 1 8:0 / / rw,relatime shared:1 - ext4 /dev/root rw\n"
                                "23 22 0:21 / /proc rw - proc proc rw\n")
    lab.proc("swaps", "Filename Type Size Used Priority\n")
    (lab.dev_dir("0000:00:17.0") / "ata1/host0/target0:0:0/0:0:0:0/block/sda/dev").write_text("8:0\n")
    assert uses(lab, "00:17.0") == ("sda is mounted on /",)


def test_plan_group_moves_the_whole_group_and_leaves_bridges(lab):
    fs = Sysfs(lab.root)
    plan = plan_group(fs, "05:00.1", HostUsage.read(fs))
    assert plan.safe and plan.group == 12
    assert [m.bdf for m in plan.to_move] == ["0000:05:00.0", "0000:05:00.1"]
    plan = plan_group(fs, "07:00.0", None)
    assert [m.bdf for m in plan.to_move] == ["0000:07:00.0"]
    [(bridge, why)] = plan.kept
    assert bridge.bdf == "0000:00:1d.0" and why == "PCI bridge: stays on pcieport, as vfio allows"


def test_candidates_by_role_and_safety(lab):
    found = {c.address: c for c in discover(lab.root)}
    assert {a: (c.role, c.safe) for a, c in found.items()} == {
        "0000:00:14.0": ("usb-controller", False),   # a mounted USB stick is behind it
        "0000:00:17.0": ("sata-controller", False),  # the root disk
        "0000:00:1f.6": ("nic", False),              # shares a group with the LPC bridge
        "0000:02:00.0": ("nic", False),              # default route, SSH
        "0000:05:00.0": ("nic", True),
        "0000:05:00.1": ("nic", True),
        "0000:06:00.0": ("sata-controller", True),
        "0000:07:00.0": ("usb-controller", True),
        "3-3": ("usb-device", True),
        "3-4": ("usb-device", True),
        "3-5": ("usb-device", False),
    }
    nic = found["0000:05:00.0"]
    assert nic.title == "Intel Corporation 82599ES 10-Gigabit SFI/SFP+ Network Connection [8086:10fb]"
    assert (nic.driver, nic.iommu_group, nic.uses) == ("ixgbe", 12, ("interfaces enp5s0f0",))
    assert nic.group_others == ("0000:05:00.1 Ethernet controller (ixgbe)",)
    assert found["0000:00:1f.6"].reasons == (
        "group 15 member 0000:00:1f.0 (ISA bridge, lpc_ich) would have to leave the host for "
        "vfio-pci too", "in group 15, 0000:00:1f.3 is a SMBus: the harness has no role for "
        "that class, so no rule that could prove it idle")
    assert found["0000:02:00.0"].reasons == uses(lab, "02:00.0")
    assert found["0000:06:00.0"].disk_bytes == 321672960 * 512
    assert found["3-5"].reasons == ("sdc1 is mounted on /mnt/usb stick",)
    assert (found["3-3"].busnum, found["3-3"].devnum, found["3-3"].driver) == (3, 3, "usbhid")


def test_no_iommu_group_is_not_safe(lab):
    lab.add_pci("0000:08:00.0", "8086:10d3", 0x020000, "e1000e", group=None)
    lab.add_net("enp8s0", "0000:08:00.0")
    [c] = [c for c in discover(lab.root) if c.address == "0000:08:00.0"]
    assert not c.safe and c.iommu_group is None
    assert "has no iommu_group" in c.reasons[0]


def test_group_with_the_host_bridge_is_not_safe(lab):
    lab.add_pci("0000:00:02.0", "8086:10d3", 0x020000, "e1000e", group=0)
    lab.add_net("enp0s2", "0000:00:02.0")
    [c] = [c for c in discover(lab.root) if c.address == "0000:00:02.0"]
    assert c.reasons == ("group 0 holds the host bridge 0000:00:00.0: the device is not isolated "
                         "(no ACS there); use a slot with its own IOMMU group",)


def test_format_candidates(lab):
    text = format_candidates(discover(lab.root))
    assert "nic\n  0000:00:1f.6  Intel Corporation Ethernet Connection (7) I219-LM [8086:15bb]\n" \
           in text
    assert "      driver ixgbe, IOMMU group 12, interfaces enp5s0f0\n" \
           "      group also holds 0000:05:00.1 Ethernet controller (ixgbe)\n" \
           "      safe to take\n" in text
    assert "      NOT safe: enp2s0 carries the route default (table main)\n" in text
    assert "  3-3 (bus 3 addr 3)  HP Optical Mobile Mouse [03f0:8607]\n" in text
    assert ("group also holds 0000:00:1d.0 PCI bridge (pcieport): PCI bridge: stays on "
            "pcieport, as vfio allows") in text
    assert text.endswith("6 of 11 candidates are safe to take; `python -m harness discover "
                         "--write inventory.toml` drafts an inventory of them")


def test_draft_inventory_has_the_safe_ones_and_a_placeholder_gateway(lab):
    inv = draft_inventory(discover(lab.root))
    assert [(d.role, d.name) for d in inv.devices] == [
        ("nic", "nic-05-00.0"), ("nic", "nic-05-00.1"),
        ("sata-controller", "sata-controller-06-00.0"), ("usb-controller", "usb-controller-07-00.0"),
        ("usb-device", "usb-device-03f0-8607"), ("usb-device", "usb-device-046d-c31c")]
    assert inv.devices[0].gateway == GATEWAY_PLACEHOLDER
    text = inv.to_toml()
    with pytest.raises(InventoryError) as e:
        parse_inventory(text, root=lab.root)
    assert len(e.value.problems) == 2 and all("placeholder" in p for p in e.value.problems)
    filled = parse_inventory(text.replace(f'"{GATEWAY_PLACEHOLDER}"', '"10.0.5.1"'),
                             root=lab.root)
    assert filled.pci_addresses() == {"0000:05:00.0", "0000:05:00.1", "0000:06:00.0",
                                      "0000:07:00.0"}
    assert filled.by_name("sata-controller-06-00.0").disk_bytes == 321672960 * 512
    assert filled.by_name("usb-device-03f0-8607").product == "Optical Mobile Mouse"
    # The two ports share an IOMMU group: each is drafted with the other as its companion, so
    # the allow-list names everything a bind would move.
    assert filled.by_name("nic-05-00.0").companions == ("0000:05:00.1",)
    assert 'companions = ["0000:05:00.1"]' in text


def test_draft_tells_alike_usb_devices_apart_by_address(lab):
    lab.add_usb("3-6", 6, "03f0:8607", "Optical Mobile Mouse", "HP")
    inv = draft_inventory(discover(lab.root))
    mice = [d for d in inv.for_role("usb-device") if d.vendorid == "0x03f0"]
    assert [(d.name, d.hostbus, d.hostaddr) for d in mice] == [("usb-device-3-3", 3, 3),
                                                                 ("usb-device-3-6", 3, 6)]
    parse_inventory(inv.to_toml().replace('"FILL-IN"', '"10.0.5.1"'), root=lab.root)


def test_multi_device_btrfs_marks_every_member(lab):
    lab.proc("mounts", "/dev/sda2 / btrfs rw 0 0\n")
    lab.proc("swaps", "Filename Type Size Used Priority\n")
    devices = lab.sys / "fs/btrfs/4d1f/devices"
    devices.mkdir(parents=True)
    for member in ("sda2", "sdb1"):
        os.symlink(os.path.realpath(lab.sys / "class/block" / member), devices / member)
    assert uses(lab, "00:17.0") == ("sda2 is mounted on /",
                                    "sda2 is a device of the btrfs filesystem 4d1f")
    assert uses(lab, "06:00.0") == ("sdb1 is a device of the btrfs filesystem 4d1f",)


def test_zfs_root_is_reported_as_unmapped(lab):
    lab.proc("mounts", "rpool/ROOT/debian / zfs rw,xattr,noacl 0 0\n/dev/sdb1 /data ext4 rw 0 0\n"
                       "tmpfs /run tmpfs rw 0 0\nserver:/export /mnt/nfs nfs4 rw 0 0\n")
    assert StorageView.read(Sysfs(lab.root)).unmapped == ["/ (rpool/ROOT/debian, zfs)"]
    assert uses(lab, "06:00.0") == (
        "sdb1 is mounted on /data",
        "0000:06:00.0 may hold / (rpool/ROOT/debian, zfs): the harness cannot tell which "
        "controller does (if this one does not, say so in its inventory entry: "
        "no_host_filesystems = true)")


def _nvme(lab, bdf: str, port: str, group: int, mounted: str | None = None):
    """An NVMe drive behind its own root port, namespace 1 with one partition."""
    lab.add_pci(port, "8086:a33e", 0x060400, "pcieport", group)
    lab.add_pci(bdf, "144d:a808", 0x010802, "nvme", group + 1, parent=port)
    name = f"nvme{group}n1"
    lab.add_disk(name, lab.dev_dir(bdf) / f"nvme/nvme{group}", (f"{name}p1",), sectors=976773168)
    if mounted:
        mounts = (lab.root / "proc/mounts").read_text()
        lab.proc("mounts", mounts + f"/dev/{name}p1 {mounted} ext4 rw,relatime 0 0\n")


def test_an_nvme_drive_is_role_nvme_and_one_holding_a_host_filesystem_is_refused(lab):
    """A spare NVMe drive is offered as role nvme with its namespace's size; one whose
    namespace holds a mounted filesystem of the host is not safe to take (proven-idle)."""
    _nvme(lab, "0000:08:00.0", "0000:00:1c.6", 16)
    _nvme(lab, "0000:09:00.0", "0000:00:1c.7", 18, mounted="/data")
    found = {c.address: c for c in discover(lab.root)}
    spare, busy = found["0000:08:00.0"], found["0000:09:00.0"]
    assert (spare.role, spare.safe, spare.disk_bytes) == ("nvme", True, 976773168 * 512)
    assert busy.role == "nvme" and not busy.safe
    assert any("/data" in r for r in busy.reasons), busy.reasons
