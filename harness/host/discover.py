"""Which host devices could play each role, and which of them the host can spare.

:func:`discover` reads root/sys and returns data; :func:`format_candidates` turns it into text;
:func:`draft_inventory` makes an inventory of the safe candidates (``discover --write``).

    >>> print(format_candidates(discover("/")))          # doctest: +SKIP
    nic
      0000:05:00.0  Intel Corporation 82599ES 10-Gigabit SFI/SFP+ Network Connection [8086:10fb]
          driver ixgbe, IOMMU group 12 with 0000:05:00.1 (Ethernet controller, ixgbe)
          safe to take
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from harness.core.text import shown
from harness.host.inventory import (GATEWAY_PLACEHOLDER, ROLES, Inventory, InventoryDevice,
                                    default_name)
from harness.host import network
from harness.host import sriov
from harness.host.safety import HostUsage, plan_group, role_of
from harness.host.sysfs import Sysfs, pci_names


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A host device that could play ``role``. ``address`` is the BDF, or the USB device's
    sysfs name (``3-3``). ``reasons`` says why it is not ``safe`` to take."""

    role: str
    address: str
    ids: str
    vendor_name: str | None
    device_name: str | None
    class_name: str
    driver: str | None
    iommu_group: int | None
    #: The rest of the IOMMU group, one line each: "0000:05:00.1 Ethernet controller (ixgbe)".
    group_others: tuple[str, ...]
    safe: bool
    reasons: tuple[str, ...]
    #: Interfaces and disks the host sees behind it ("interfaces enp5s0f0", "disks sdb").
    uses: tuple[str, ...] = ()
    busnum: int | None = None
    devnum: int | None = None
    #: Bytes of the one disk behind a storage controller, if there is exactly one.
    disk_bytes: int | None = None
    #: The other group members that would move to vfio-pci with it (the draft's companions).
    companions: tuple[str, ...] = ()
    #: An SR-IOV PF: (sriov_totalvfs, sriov_numvfs), and why the harness may not make its VFs
    #: (None: it may).
    sriov: tuple[int, int] | None = None
    sriov_refused: str | None = None
    #: A PF with VFs already: the indices of those proven idle, which the draft lists (None:
    #: the VFs the run makes, 0 up), and why each other one is not for the harness.
    sriov_vfs: tuple[int, ...] | None = None
    sriov_busy: tuple[str, ...] = ()
    #: A VF: its PF.
    physfn: str | None = None

    @property
    def title(self) -> str:
        name = " ".join(n for n in (self.vendor_name, self.device_name) if n) or self.class_name
        return f"{name} [{self.ids}]"


def discover(root: "str | Path | Sysfs" = "/") -> list[Candidate]:
    """Every NIC, USB controller, SATA/SAS controller and USB device of the host, PCI ones in
    address order, with whether it is proven idle and why not."""
    fs = Sysfs.of(root)
    usage = HostUsage.read(fs)
    outside = network.namespace_problem(fs)
    out = []
    for bdf in fs.pci_addresses():
        dev = fs.pci_device(bdf)
        role = role_of(dev)
        if role is None:
            continue
        plan = plan_group(fs, bdf, usage)
        kept = {m.bdf: why for m, why in plan.kept}
        others = tuple(f"{m.bdf} {m.class_name} ({m.driver or 'no driver'})"
                       + (f": {kept[m.bdf]}" if m.bdf in kept else "")
                       for m in plan.members if m.bdf != bdf)
        uses, disk_bytes = _uses(fs, dev.path)
        vname, dname = pci_names(fs.root, dev.vendor, dev.device)
        out.append(Candidate(role, bdf, dev.ids, vname, dname, dev.class_name, dev.driver,
                             dev.iommu_group, others, plan.safe and not outside,
                             plan.problems + ((outside,) if outside else ()), uses,
                             disk_bytes=disk_bytes if role in ("sata-controller", "nvme") else None,
                             companions=plan.companions, physfn=sriov.physfn_of(fs, bdf),
                             **(_sriov_fields(fs, usage, bdf, outside) if role == "nic" else {})))
    for usb in fs.usb_devices():
        if usb.is_hub:
            continue
        reasons = usage.usb_verdict(usb).uses
        drivers = sorted({d for p in fs.sys("bus", "usb", "devices").glob(f"{usb.name}:*")
                          if (d := fs.link_name(p / "driver"))})
        out.append(Candidate("usb-device", usb.name, usb.ids, usb.manufacturer, usb.product,
                             "USB device", ", ".join(drivers) or None, None, (), not reasons,
                             reasons, busnum=usb.busnum, devnum=usb.devnum))
    return out


def _sriov_fields(fs: Sysfs, usage: HostUsage, bdf: str, outside: str | None) -> dict:
    """A NIC's SR-IOV fields of :class:`Candidate` (none: not a PF). VFs that are there
    already may be anyone's (on igbvf with an address and a route, in a guest on vfio-pci):
    each is judged as its bind would judge it, and only those proven idle are drafted; none
    proven idle: its VFs are not for the harness."""
    pf = sriov.physical_function(fs, bdf)
    if pf is None:
        return {}
    count = draft_vfs(pf.totalvfs, pf.numvfs)
    refused = sriov.check_request(pf, bdf, count, in_use=usage.verdict(bdf).uses) or outside
    if refused or not pf.numvfs:
        return dict(sriov=(pf.totalvfs, pf.numvfs), sriov_refused=refused)
    idle, busy = [], []
    for n, vf in enumerate(pf.vfs[:count]):
        problems = plan_group(fs, vf, usage).problems
        if problems:
            busy.append(f"VF {n} ({vf}): {'; '.join(problems)}")
        else:
            idle.append(n)
    return dict(sriov=(pf.totalvfs, pf.numvfs), sriov_vfs=tuple(idle), sriov_busy=tuple(busy),
                sriov_refused=None if idle else "none of its VFs is proven idle: "
                + "; ".join(busy))


def draft_vfs(totalvfs: int, numvfs: int) -> int:
    """How many VFs a drafted inventory asks of a PF: the ones it has, else two (the tests of
    two VFs of one PF) when it offers two."""
    return numvfs or min(2, totalvfs)


def _uses(fs: Sysfs, device_path: str) -> tuple[tuple[str, ...], int | None]:
    """Interfaces and whole disks the host has behind a device's sysfs directory."""
    prefix = device_path.rstrip("/") + "/"

    def below(cls: str) -> list[Path]:
        try:
            return [p for p in sorted(fs.sys("class", cls).iterdir())
                    if os.path.realpath(p).startswith(prefix)]
        except OSError:
            return []

    nets = [p.name for p in below("net")]
    disks = [p for p in below("block") if not (p / "partition").exists()]
    uses = []
    if nets:
        uses.append("interfaces " + ", ".join(nets))
    if disks:
        uses.append("disks " + ", ".join(p.name for p in disks))
    size = fs.read(disks[0] / "size") if len(disks) == 1 else None
    return tuple(uses), int(size) * 512 if size and size.isdigit() else None


def format_candidates(candidates: list[Candidate]) -> str:
    lines = []
    for role in ROLES:
        mine = [c for c in candidates if c.role == role]
        lines.append(f"{role}" + ("" if mine else ": none on this host"))
        for c in mine:
            where = c.address
            if c.busnum is not None:
                where += f" (bus {c.busnum} addr {c.devnum})"
            lines.append(f"  {where}  {c.title}")
            facts = [f"driver {c.driver or 'none'}"]
            if c.role != "usb-device":
                if c.iommu_group is None:
                    facts.append("no IOMMU group")
                else:
                    facts.append(f"IOMMU group {c.iommu_group}"
                                 + (" alone" if not c.group_others else ""))
            if c.sriov:
                facts.append(f"SR-IOV PF: {c.sriov[1]} of {c.sriov[0]} VFs")
            if c.physfn:
                facts.append(f"SR-IOV VF of {c.physfn}")
            facts += c.uses
            lines.append("      " + ", ".join(facts))
            lines += [f"      group also holds {o}" for o in c.group_others]
            if c.safe:
                lines.append("      safe to take")
            else:
                lines += [f"      NOT safe: {r}" for r in c.reasons]
            if c.sriov:
                lines += _sriov_lines(c)
    safe = sum(c.safe for c in candidates)
    lines.append(f"{safe} of {len(candidates)} candidates are safe to take"
                 + ("; `python -m harness discover --write inventory.toml` drafts an inventory "
                    "of them" if safe else ""))
    return shown("\n".join(lines))  # (a name another user chose may be in any line)


def _sriov_lines(c: Candidate) -> list[str]:
    if c.sriov_refused:
        return [f"      its VFs: NOT for the harness: {c.sriov_refused}"]
    listed = " and ".join(f"VF {n}" for n in _drafted_vfs(c))
    return [f"      its VFs can be taken (the draft lists {listed} instead of the PF: pf, vf, "
            "vfs)"] + [f"      its VF NOT for the harness: {b}" for b in c.sriov_busy]


def _drafted_vfs(c: Candidate) -> "tuple[int, ...] | range":
    """The VF indices the draft lists for a PF: those proven idle, or the ones the run makes."""
    return c.sriov_vfs if c.sriov_vfs is not None else range(draft_vfs(*c.sriov))


def draft_inventory(candidates: list[Candidate]) -> Inventory:
    """An inventory of the safe candidates. NICs get ``gateway = "FILL-IN"``, which the loader
    rejects until a person puts the real address there."""
    devices = []
    ids_count: dict[str, int] = {}
    for c in candidates:
        if c.role == "usb-device":
            ids_count[c.ids] = ids_count.get(c.ids, 0) + 1
    for c in candidates:
        if c.sriov and not c.sriov_refused:
            # The common production set-up: the PF stays on the host, its VFs go to guests.
            count, drafted = draft_vfs(*c.sriov), _drafted_vfs(c)
            for vf in drafted:
                devices.append(InventoryDevice(
                    role=c.role, name=default_name(c.role, pf=c.address, vf=vf), pf=c.address,
                    vf=vf, vfs=count, gateway=GATEWAY_PLACEHOLDER,
                    note=f"VF {vf} of {c.title}, driver {c.driver or 'none'} (SR-IOV: "
                         f"{c.sriov[0]} VFs at most); " + (
                             "the harness uses the VFs there (proven idle now)" if c.sriov[1]
                             else "the harness sets sriov_numvfs and puts it back")
                         if vf == drafted[0] else ""))
            continue
        if not c.safe or c.physfn:  # a VF: its PF's entry makes and names it
            continue
        note = c.title + (f", driver {c.driver}" if c.driver else "")
        if c.role == "usb-device":
            vendorid, productid = (f"0x{x}" for x in c.ids.split(":"))
            by_bus = ids_count[c.ids] > 1  # two alike devices: only the address tells them apart
            kw = dict(hostbus=c.busnum, hostaddr=c.devnum) if by_bus else {}
            devices.append(InventoryDevice(
                role=c.role, name=default_name(c.role, vendorid=vendorid, productid=productid,
                                               **kw),
                vendorid=vendorid, productid=productid, product=c.device_name, note=note, **kw))
            continue
        if c.group_others:
            note += f"\nIOMMU group {c.iommu_group} also holds " + "; ".join(c.group_others)
        if c.companions:
            note += ("\ncompanions move to vfio-pci with it: check the host can spare them, "
                     "or remove this entry")
        devices.append(InventoryDevice(
            role=c.role, name=default_name(c.role, bdf=c.address), bdf=c.address,
            gateway=GATEWAY_PLACEHOLDER if c.role == "nic" else None,
            disk_bytes=c.disk_bytes, companions=c.companions, note=note))
    return Inventory(tuple(devices))
