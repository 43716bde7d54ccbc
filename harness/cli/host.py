"""``python -m harness discover|doctor|plan|restore|bind|release``: each ``*_main(argv)`` returns the
exit code.

They raise :class:`~harness.errors.HarnessError` for a problem they cannot report otherwise
(an existing --write file, a device that cannot be given back); ``python -m harness`` prints it
with its hint and exits 1.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from harness.core.errors import ConfigError
from harness.core.paths import open_nofollow
from harness.host.binding import VfioBinder, default_journal_path, restore_from_journal
from harness.host.sysfs import Sysfs, parse_bdf, short_bdf
from harness.host.discover import discover, draft_inventory, format_candidates
from harness.host.doctor import Check, exit_code, format_report, run_checks
from harness.host.inventory import InventoryError, load_inventory
from harness.host.plan import plan_inventory


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m harness {command}", description=description)
    p.add_argument("--root", default="/",
                   help="where /sys and /proc are (default /; a copy of a host's tree for tests)")
    return p


def discover_main(argv: list[str]) -> int:
    p = _parser("discover", "List the host devices that could play each role, and whether the "
                            "host can spare them.")
    p.add_argument("--write", metavar="PATH",
                   help="also write an inventory of the safe devices to PATH (a new file)")
    args = p.parse_args(argv)
    candidates = discover(args.root)
    print(format_candidates(candidates))
    if args.write:
        path = Path(args.write)
        if os.path.lexists(path):
            raise ConfigError(f"{path} exists; not overwriting it",
                              hint="give --write a new path, or move the old file away")
        inventory = draft_inventory(candidates)
        if not inventory.devices:
            print(f"nothing safe to take on this host: {path} not written")
            return 1
        # (a new file, never through a link: root may run this in a folder others can write)
        with os.fdopen(open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w") as f:
            f.write(inventory.to_toml())
        todo = ["remove what you do not want tested"]
        if inventory.for_role("nic"):
            todo.insert(0, 'set each nic\'s gateway (now "FILL-IN")')
        print(f"wrote {path} ({len(inventory.devices)} devices). Edit it: {'; '.join(todo)}. "
              f"Then: python -m harness doctor --inventory {path}")
    return 0


def doctor_main(argv: list[str]) -> int:
    p = _parser("doctor", "Check this host's prerequisites for --backend vfio.")
    p.add_argument("--qemu-binary", default=os.environ.get("HH_QEMU", "qemu-system-x86_64"),
                   help="QEMU to check (default qemu-system-x86_64, or $HH_QEMU)")
    p.add_argument("--inventory", metavar="TOML", help="also check these devices")
    args = p.parse_args(argv)
    inventory, problems = None, []
    if args.inventory:
        try:
            inventory = load_inventory(args.inventory, args.root, check_host=False)
        except InventoryError as e:
            problems = [Check("inventory", False, line, "edit the inventory (docs/vfio.md)")
                        for line in e.problems]
    checks = run_checks(args.root, args.qemu_binary, inventory,
                        journal=default_journal_path()) + problems
    print(format_report(checks))
    return exit_code(checks)


def plan_main(argv: list[str]) -> int:
    p = _parser("plan", "A dry run: for each inventory device and each member of its IOMMU "
                        "group, what a run would change on this host and the evidence that it "
                        "is idle (or why it is refused). Changes nothing. Exits 1 when "
                        "anything would be refused.")
    p.add_argument("--inventory", metavar="TOML", required=True, help="the devices to plan for")
    p.add_argument("--journal", default=None, metavar="PATH",
                   help="the vfio journal, whose leases a run would refuse (default "
                        f"{default_journal_path()} on the host itself, none for a copy)")
    args = p.parse_args(argv)
    inventory = load_inventory(args.inventory, args.root, check_host=False)
    journal = args.journal or (default_journal_path() if Sysfs(args.root).real_host else None)
    lines, ok = plan_inventory(args.root, inventory, journal)
    print("\n".join(lines))
    return 0 if ok else 1


def restore_main(argv: list[str]) -> int:
    p = _parser("restore", "Give back host devices a killed run left on vfio-pci.")
    p.add_argument("--journal", default=None, metavar="PATH",
                   help=f"the vfio journal (default {default_journal_path()}, or "
                        f"$HH_VFIO_JOURNAL)")
    p.add_argument("--force", action="store_true",
                   help="also take back devices of a run that is still alive")
    args = p.parse_args(argv)
    journal = Path(args.journal) if args.journal else default_journal_path()
    results = restore_from_journal(args.root, journal, include_live=args.force)
    for r in results:
        print(r)
    if not results:
        print(f"nothing to restore ({journal} lists no devices)")
    in_use = [r for r in results if r.status == "in-use"]
    if in_use:
        # Still held: a nightly's clean-up step must not read this as "the host is clean".
        print(f"{len(in_use)} device(s) belong to a run that is still alive and are still held; "
              "--force takes them back anyway")
        return 1
    return 0


def bind_main(argv: list[str], fs: Sysfs | None = None) -> int:
    """The guide's ``vfio-pci.sh -h BB:DD.F``, through the harness's safety checks and journal.
    ``fs``: a Sysfs whose on_write plays the kernel (unit tests)."""
    p = _parser("bind", "Put a host device (and the rest of its IOMMU group) on vfio-pci for "
                        "QEMU's device_add vfio-pci,host=BB:DD.F, as the guide's vfio-pci.sh "
                        "does, after the same safety checks as a test run. It stays there "
                        "until `python -m harness release BB:DD.F`.")
    p.add_argument("bdf", help="the device, like 05:00.0 or 0000:05:00.0")
    p.add_argument("--with", dest="companions", action="append", default=[], metavar="BDF",
                   help="another function of its IOMMU group that may move to vfio-pci too "
                        "(repeat); nothing unnamed is ever taken")
    p.add_argument("--inventory", metavar="TOML",
                   help="take the allow-list (devices and companions) from an inventory")
    p.add_argument("--journal", default=None, metavar="PATH",
                   help="the vfio journal: only the host's (/var/lib/hotplug-harness/"
                        "vfio-journal.json) is taken, as a lease in any other is one no run "
                        "sees")
    args = p.parse_args(argv)
    _require_root(args.root, fs)
    fs = fs or Sysfs(args.root)
    allowed = {parse_bdf(args.bdf)} | {parse_bdf(c) for c in args.companions}
    cleared: frozenset[str] = frozenset()
    ports: dict[str, int] = {}
    if args.inventory:
        inventory = load_inventory(args.inventory, fs)
        allowed |= inventory.pci_addresses()
        cleared, ports = inventory.cleared_storage(), inventory.nic_ports()
    binder = VfioBinder(fs, journal=args.journal, manual=True, cleared_storage=cleared,
                        nic_ports=ports)
    lease = binder.bind(args.bdf, allowed)
    short = short_bdf(lease.bdf)
    print(f"{lease.bdf} is on vfio-pci (IOMMU group {lease.group}; moved "
          f"{', '.join(lease.moved) or 'nothing: it already was'}).")
    print(f"  in QEMU's monitor: device_add vfio-pci,host={short},id=dev0")
    print(f"  give it back:      python -m harness release {short}")
    return 0


def release_main(argv: list[str], fs: Sysfs | None = None) -> int:
    p = _parser("release", "Give a device bound with `python -m harness bind` (and the rest of "
                           "its IOMMU group) back to its host driver.")
    p.add_argument("bdf", help="the device, like 05:00.0")
    p.add_argument("--journal", default=None, metavar="PATH", help="the vfio journal")
    p.add_argument("--force", action="store_true",
                   help="also take it back from a run that is still alive")
    args = p.parse_args(argv)
    _require_root(args.root, fs)
    journal = Path(args.journal) if args.journal else default_journal_path()
    results = restore_from_journal(fs or args.root, journal, only={args.bdf},
                                   include_live=args.force)
    if not results:
        print(f"{parse_bdf(args.bdf)} is not in the journal {journal}: the harness did not bind "
              "it (nothing to give back)")
        return 1
    for r in results:
        print(r)
    return 1 if any(r.status == "in-use" for r in results) else 0


def _require_root(root: str, fs: Sysfs | None) -> None:
    if fs is None and Sysfs(root).real_host and os.geteuid() != 0:
        raise ConfigError("binding host devices needs root (sysfs writes, the journal in "
                          "/var/lib/hotplug-harness)", hint="run it with sudo")
