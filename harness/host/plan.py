"""``python -m harness plan``: what a run would change on this host, and the evidence that each
device is idle (or why it is refused), without changing anything.

For each inventory entry and each member of its IOMMU group: the sysfs writes the binder
would make (the same :func:`harness.host.binding.move_steps`), what stays, and the verdict
of the proven-idle rule (:mod:`harness.host.safety`) with its evidence line by line.

    >>> lines, ok = plan_inventory("/", load_inventory("inventory.toml"))   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from harness.core.errors import HostDeviceError
from harness.core.text import shown
from harness.host import sriov
from harness.host.binding import Journal, move_steps, refuse_foreign, refuse_usb_handed
from harness.host.inventory import Inventory, InventoryDevice, find_usb_device
from harness.host.network import namespace_problem
from harness.host.safety import GroupPlan, HostUsage, Verdict, plan_group
from harness.host.sysfs import Sysfs


def plan_inventory(root: "str | Path | Sysfs", inventory: Inventory,
                   journal: "str | Path | None" = None) -> tuple[list[str], bool]:
    """The plan's lines, and whether every device would be taken. The lines are as shown to
    people: a name in them that is not UTF-8 spelt ``\\xff`` (:func:`~harness.core.text.shown`),
    so that any stream or file takes them. ``journal``: the vfio journal, whose leases (a live
    run's, one bound by hand) a run would refuse as its bind does (None: not read)."""
    fs = Sysfs.of(root)
    usage = HostUsage.read(fs, inventory.cleared_storage(), inventory.nic_ports())
    lines = [f"plan for {inventory.path or 'the inventory'}: a dry run, nothing on this host "
             "is changed"]
    ok = True
    if not fs.iommu_groups():
        ok = False
        lines.append("this host has no IOMMU groups (/sys/kernel/iommu_groups is empty): "
                     "vfio-pci can take no device here; enable VT-d (AMD-Vi) in the firmware "
                     "and boot with intel_iommu=on")
    outside = namespace_problem(fs)
    if outside:
        ok = False
        lines.append(f"every bind is refused here: {outside}")
    try:
        held = Journal(journal).read() if journal is not None else []
    except HostDeviceError as e:
        ok, held = False, []
        lines.append(f"every bind is refused here: {e.message}")
    for d in inventory.devices:
        lines.append("")
        lines.append(f"{d.role} {d.name} ({d.address})")
        if d.pf and not d.bdf:
            more, fine = _vf_entry(fs, usage, d, inventory.pci_addresses(), held)
        elif d.is_pci:
            more, fine = _pci_entry(fs, usage, d, inventory.pci_addresses(), held)
        else:
            more, fine = _usb_entry(fs, usage, d, held)
        lines += [f"  {line}" for line in more]
        ok = ok and fine
    lines += ["", "verdict: every device would be taken" if ok else
              "verdict: this run would refuse what is marked REFUSED above"]
    return [shown(line) for line in lines], ok


def _verdict_lines(v: Verdict) -> list[str]:
    return [f"idle: {e}" for e in v.evidence] + [f"in use: {u}" for u in v.uses]


def _leased(fs: Sysfs, plan: GroupPlan, held: list[dict]) -> list[str]:
    """A group another lease holds (a live run's before its QEMU opens it, one bound by hand):
    the refusal the bind would give (:func:`harness.host.binding.refuse_foreign`); none for
    a function with no IOMMU group (refused already: no bind gets that far)."""
    if plan.group is None:
        return []
    try:
        refuse_foreign(fs, plan, held, None)
    except HostDeviceError as e:
        return [f"REFUSED: {e.message} ({e.hint})"]
    return []


def _pci_entry(fs: Sysfs, usage: HostUsage, d: InventoryDevice,
               allowed: set[str], held: list[dict]) -> tuple[list[str], bool]:
    if not fs.pci_exists(d.bdf):
        return [f"REFUSED: there is no PCI device {d.bdf} on this host"], False
    plan = plan_group(fs, d.bdf, usage, allowed=allowed)
    verdicts = {v.bdf: v for v in plan.verdicts}
    kept = {m.bdf: why for m, why in plan.kept}
    moving = {m.bdf for m in plan.to_move}
    lines = [f"IOMMU group {plan.group}" if plan.group is not None else "no IOMMU group"]
    for m in plan.members:
        lines.append(f"{m.bdf} {m.class_name} [{m.ids}] on {m.driver or 'no driver'}"
                     + (" (the device)" if m.bdf == plan.target.bdf else ""))
        if m.bdf in moving:
            verb = "would write" if plan.safe else "(refused, so never written)"
            lines += [f"  {verb}: {step}" for step in move_steps(fs, m)]
        elif m.bdf in kept:
            lines.append(f"  would stay: {kept[m.bdf]}")
        elif m.driver == "vfio-pci":
            lines.append("  no change: on vfio-pci already")
        if m.bdf in verdicts:
            lines += [f"  {line}" for line in _verdict_lines(verdicts[m.bdf])]
    busy = [u for v in plan.verdicts for u in v.uses]
    if busy:
        lines.append(f"REFUSED: {len(busy)} use(s) marked \"in use\" above")
    lines += [f"REFUSED: {p}" for p in plan.problems if not any(p.endswith(u) for u in busy)]
    leased = _leased(fs, plan, held)
    if plan.safe and not leased:
        lines.append(f"would be taken: {len(moving)} function(s) to vfio-pci, journaled "
                     "first, given back at the end of the run")
    return lines + leased, plan.safe and not leased


def _vf_entry(fs: Sysfs, usage: HostUsage, d: InventoryDevice,
              allowed: set[str], held: list[dict]) -> tuple[list[str], bool]:
    if not fs.pci_exists(d.pf):
        return [f"REFUSED: there is no PCI device {d.pf} (its pf) on this host"], False
    pf = sriov.physical_function(fs, d.pf)
    verdict = usage.verdict(d.pf)
    lines = [f"PF {d.pf} on {pf.driver if pf else 'no SR-IOV'}: stays on the host"]
    lines += [f"  {line}" for line in _verdict_lines(verdict)]
    why = sriov.check_request(pf, d.pf, d.vfs, in_use=verdict.uses)
    if why:
        return lines + [f"REFUSED: {why}"], False
    pf_dir = fs.pci_dir(d.pf)
    if pf.numvfs >= d.vfs:
        lines.append(f"would use its existing VF {d.vf} ({pf.vfs[d.vf]}), journaled as this "
                     "run's: sriov_numvfs stays while any live run holds a VF of it")
        # A VF that is there already may be someone's (on igbvf with an address and a route,
        # or in a guest on vfio-pci): judged now as its bind will judge it, not "would be
        # taken" on the PF's count alone.
        plan = plan_group(fs, pf.vfs[d.vf], usage, allowed=allowed | {pf.vfs[d.vf]})
        lines += [f"  {line}" for v in plan.verdicts for line in _verdict_lines(v)]
        leased = _leased(fs, plan, held)
        if not plan.safe or leased:
            return lines + [f"REFUSED: VF {d.vf} ({pf.vfs[d.vf]}): {p}"
                            for p in plan.problems] + leased, False
    else:
        lines += [f"would write: echo 0 > {pf_dir / 'sriov_drivers_autoprobe'} (journaled, "
                  "put back)", f"would write: echo {d.vfs} > {pf_dir / 'sriov_numvfs'} "
                  f"(journaled: {pf.numvfs}, put back at the end of the run)"]
    lines.append(f"then VF {d.vf} is bound like any listed device (driver_override, "
                 "drivers_probe), after its own proven-idle check")
    return lines, True


def _usb_entry(fs: Sysfs, usage: HostUsage, d: InventoryDevice,
               held: list[dict]) -> tuple[list[str], bool]:
    """A USB device's verdict, and the refusal a plug would give while the journal lists a
    hand-over of it (:func:`harness.host.binding.refuse_usb_handed`): a live run's QEMU has
    it, or a killed one left it on no driver, idle to the verdict; or a lease of a PCI
    function above it (a controller left on its driver for libvirt to move)."""
    usb = find_usb_device(fs, d)
    if usb is None:
        return [f"REFUSED: no such USB device on this host ({d.address})"], False
    verdict = usage.usb_verdict(usb, bool(d.no_host_filesystems))
    lines = [f"USB {usb.name} [{usb.ids}] {usb.product or ''}".rstrip(),
             f"would write: nothing on the host; QEMU's usb-host opens "
             f"/dev/bus/usb/{usb.busnum:03d}/{usb.devnum:03d} and detaches its host drivers "
             "(journaled first; the harness binds back any QEMU left on none)"]
    lines += _verdict_lines(verdict)
    lines += [f"REFUSED: {u}" for u in verdict.uses]
    try:
        refuse_usb_handed(fs, usb, held, f"USB {usb.name}")
    except HostDeviceError as e:
        return lines + [f"REFUSED: {e.message} ({e.hint})"], False
    return lines, verdict.idle
