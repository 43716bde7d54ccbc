"""The lab host's devices: one table that gives both the lab host's QEMU command line and, inside
the lab host, the lab's own inventory (the format of docs/vfio.md)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

from harness.core.errors import LabError
from harness.host.sysfs import Sysfs

NIC_BDF = "0000:00:03.0"
SATA_BDF = "0000:00:04.0"
XHCI_BDF = "0000:00:05.0"
EHCI_BDF = "0000:00:06.0"
NVME_BDF = "0000:00:08.0"
#: The PCIe root port the SR-IOV NIC (an igb, Intel 82576) sits behind; the PF is on its bus.
SRIOV_PORT_BDF = "0000:00:07.0"
SRIOV_PF_IDS = ("8086", "10c9")
SRIOV_GATEWAY = "10.0.6.2"
#: VFs the lab's PF gets: two, for the tests that hot-add two VFs of one PF.
SRIOV_VFS = 2
#: Q35's own AHCI, sharing IOMMU group with the LPC bridge and SMBus: never viable alone.
GROUPED_BDF = "0000:00:1f.2"
LAB_GATEWAY = "10.0.5.2"
SATA_DISK_BYTES = 64 << 20
NVME_DISK_BYTES = 64 << 20
STICK_BYTES = 32 << 20
STICK_IDS = ("0x46f4", "0x0001")
STICK_PRODUCT = "QEMU USB HARDDRIVE"
TABLET_PRODUCT = "QEMU USB Tablet"


@dataclasses.dataclass(frozen=True)
class LabDevice:
    """One role the lab host plays: its inventory entry and its part of L1's command line."""

    role: str
    name: str
    #: The L1 PCI function that plays the role (for a USB device: its controller's), at a
    #: fixed slot of pcie.0; ``{addr}`` in ``qemu`` is that slot.
    bdf: str
    #: Its part of L1's command line; ``{disk}``, ``{stick}`` and ``{nvme}`` are the disk
    #: images' paths.
    qemu: tuple[str, ...]
    #: The inventory's keys besides role, name and bdf (a USB device's hostbus/hostaddr are
    #: found inside the lab host).
    inventory: tuple[tuple[str, object], ...] = ()
    usb: bool = False
    #: An SR-IOV PF behind the root port at ``bdf``: the inventory gets this many VF entries
    #: (the PF's address is found inside the lab host).
    vfs: int = 0

    @property
    def addr(self) -> str:
        return f"0x{int(self.bdf.split(':')[2].split('.')[0], 16):x}"


DEVICES = (
    LabDevice("nic", "e1000e", NIC_BDF,
              ("-netdev", "user,id=labnet,net=10.0.5.0/24",
               "-device", "e1000e,netdev=labnet,id=labnic,bus=pcie.0,addr={addr},romfile="),
              (("gateway", LAB_GATEWAY),)),
    LabDevice("sata-controller", "ahci", SATA_BDF,
              ("-drive", "if=none,id=labdisk,file={disk},format=raw",
               "-device", "ich9-ahci,id=labahci,bus=pcie.0,addr={addr}",
               "-device", "ide-hd,drive=labdisk,bus=labahci.0"),
              (("disk_bytes", SATA_DISK_BYTES),)),
    LabDevice("usb-controller", "xhci", XHCI_BDF,
              ("-device", "qemu-xhci,id=labxhci,bus=pcie.0,addr={addr}",
               "-device", "usb-tablet,bus=labxhci.0"),
              (("product", TABLET_PRODUCT),)),
    LabDevice("usb-device", "stick", EHCI_BDF,
              ("-device", "usb-ehci,id=labehci,bus=pcie.0,addr={addr}",
               "-drive", "if=none,id=labstick,file={stick},format=raw",
               "-device", "usb-storage,drive=labstick,bus=labehci.0"),
              (("vendorid", STICK_IDS[0]), ("productid", STICK_IDS[1]),
               ("product", STICK_PRODUCT), ("disk_bytes", STICK_BYTES)), usb=True),
    # (serial= is required by QEMU's nvme; drive= makes its namespace 1)
    LabDevice("nvme", "nvme", NVME_BDF,
              ("-drive", "if=none,id=labnvme,file={nvme},format=raw",
               "-device", "nvme,id=labnvmectl,serial=hh-lab-nvme,drive=labnvme,bus=pcie.0,"
                          "addr={addr}"),
              (("disk_bytes", NVME_DISK_BYTES),)),
)


#: The guide's SR-IOV NIC family: QEMU 8.0+ emulates the 82576 with up to 7 VFs (L1's QEMU is
#: 10.0); Linux treats 82576 functions as isolated (an ACS quirk), so each VF has an IOMMU group
#: of its own behind the root port. Its own user network (no IPv6: a router advertisement made
#: the PF the lab host's default route): the VFs' DHCP and gateway. NOT in DEVICES yet: in L2
#: the VF's igbvf says "PF still in reset state" and gets no link. Found so far: the host's
#: igbvf took the VFs first and used up their one-time "PF reset done" bit (now the harness
#: turns sriov_drivers_autoprobe off, and rearm_vfs sets the bit again before each hot-add);
#: with that, igbvf in L2 sees the bit, but its reset message to the PF goes unanswered within
#: igbvf's 1 s mailbox timeout (the message 1.27 s after "enabling device"): the PF's igb in L1
#: (TCG) answers too late or not at all. And with it in L1 one `make lab` ended in an L1 kernel
#: panic (stack guard page hit in KVM's vcpu run, an interrupt in nested SVM under TCG);
#: docs/lab.md. Adding it to DEVICES tries it again.
SRIOV_NIC = LabDevice("nic", "igb", SRIOV_PORT_BDF,
                      ("-netdev", "user,id=labvfnet,net=10.0.6.0/24,ipv6=off",
                       "-device", "pcie-root-port,id=labrp,bus=pcie.0,addr={addr},chassis=7",
                       "-device", "igb,netdev=labvfnet,id=labigb,bus=labrp,romfile="),
                      (("gateway", SRIOV_GATEWAY),), vfs=SRIOV_VFS)


def qemu_args(disk: Path, stick: Path, nvme: Path) -> list[str]:
    """The emulated devices that play the lab's host devices, at their fixed slots."""
    return [a.format(addr=d.addr, disk=disk, stick=stick, nvme=nvme)
            for d in DEVICES for a in d.qemu]


def find_usb(vendorid: str, productid: str, root: "str | Path" = "/") -> tuple[int, int]:
    """(bus, address) of the one USB device with these ids."""
    ids = f"{vendorid[2:]}:{productid[2:]}"
    found = [(u.busnum, u.devnum) for u in Sysfs.of(root).usb_devices() if u.ids == ids]
    if len(found) != 1:
        raise LabError(f"the lab host has {len(found)} USB devices {ids} (expected the one "
                       "usb-storage behind its EHCI controller)",
                       hint="the lab host's devices are set in harness/lab/devices.py (DEVICES)")
    return found[0]


def rearm_vfs(pf: str) -> None:
    """Close and open the PF's interface, as its driver then tells every VF "PF reset done":
    igb writes PFRSTD when its port opens with VFs allocated, and QEMU's igb then sets each
    VF's RSTD mailbox bit. That bit is cleared when read and QEMU sets it again only that way
    (not on a VF's reset), so each VF driver that starts (igbvf in an L2 guest) uses it up;
    without it igbvf says "PF still in reset state. Is the PF interface up?" and the VF never
    gets a link. Done once the VFs exist, and before each VF hot-add (Lab.host_devices).
    Its network has no IPv6 (the netdev's ipv6=off): a router advertisement would give the lab
    host a default route there, and the harness then rightly refuses to touch the PF."""
    fs = Sysfs.of("/")
    for net in sorted(fs.pci_dir(pf).glob("net/*")):
        for state in ("down", "up"):
            p = subprocess.run(["busybox", "ip", "link", "set", "dev", net.name, state],
                               capture_output=True, text=True, timeout=30)
            if p.returncode != 0:
                raise LabError(f"the lab host could not bring {net.name} ({pf}) {state}: "
                               f"{p.stderr.strip()}",
                               hint="a bug in the lab (harness/lab/devices.py)")
        print(f"hotplug-harness: lab: {net.name} ({pf}, the SR-IOV PF) closed and opened: its "
              "VFs are told the PF is ready")


def find_pci(vendor: str, device: str, root: "str | Path" = "/") -> str:
    """The address of the one PCI function with these ids (a PF behind a root port: its bus
    number is the firmware's choice)."""
    fs = Sysfs.of(root)
    found = [b for b in fs.pci_addresses()
             if (d := fs.pci_device(b)).vendor == vendor and d.device == device]
    if len(found) != 1:
        raise LabError(f"the lab host has {len(found)} PCI functions {vendor}:{device} "
                       "(expected the one igb PF behind its root port)",
                       hint="the lab host's devices are set in harness/lab/devices.py (DEVICES)")
    return found[0]


def write_inventory(workdir: Path, root: "str | Path" = "/", roles=None) -> Path:
    """The lab's own inventory (the format of docs/vfio.md), from the table and what the lab
    host has (the stick's bus and address); with ``roles`` (--roles), only their devices."""
    text = "# The lab host's devices (written by harness/lab/devices.py inside the lab host).\n"
    for d in DEVICES:
        if roles and d.role not in roles:
            continue
        if d.vfs:
            pf = find_pci(*SRIOV_PF_IDS, root=root)
            for vf in range(d.vfs):
                text += (f"\n[[device]]\nrole = {json.dumps(d.role)}\nname = "
                         f'"{d.name}-vf{vf}"\npf = "{pf}"\nvf = {vf}\nvfs = {d.vfs}\n')
                text += "".join(f"{k} = {json.dumps(v)}\n" for k, v in d.inventory)
            continue
        text += f"\n[[device]]\nrole = {json.dumps(d.role)}\nname = {json.dumps(d.name)}\n"
        if d.usb:
            bus, addr = find_usb(*STICK_IDS, root=root)
            text += f"hostbus = {bus}\nhostaddr = {addr}\n"
        else:
            text += f"bdf = {json.dumps(d.bdf)}\n"
        text += "".join(f"{k} = {json.dumps(v)}\n" for k, v in d.inventory)
    path = workdir / "inventory.toml"
    path.write_text(text)
    return path
