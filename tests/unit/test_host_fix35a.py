"""Issue 31, the fixes of read 35a's findings, beyond the reviewer's tests
(test_host_idle_review35a.py): the edges of each rule.

1. libvirt is left to move only a device on the driver its ids pick alone: one of two loaded
   drivers that match it, one whose kernel's alias files cannot be read, or one whose
   override names another driver, is moved by the harness; a built-in driver's aliases
   (``modules.builtin.alias``) count as a module's;
2. a hand-over still journaled refuses only its own device, and not a later plug by the same
   binder (a replug in one test); ``plan`` says what the plug would.
"""

from __future__ import annotations

import os

from harness.host import binding, usbhost
from harness.host.inventory import parse_inventory
from harness.host.plan import plan_inventory

from . import fakesysfs
from .test_host_binding import binder, entries, journal
from .test_host_idle_review35a import SPDK, first_run_left_it, libvirt_round, spdk_drive
from .test_host_usbhost import STICK, _journal_entries
from .test_host_usbhost import binder as usb_binder
from .test_host_usbhost import stick  # noqa: F401 (a fixture: the SanDisk stick, 4-1)

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
journal = journal  # (a fixture: the journal in the fake root's /var/lib)
ALIASES = f"lib/modules/{os.uname().release}"


# -- 1 ---------------------------------------------------------------------------------------

def test_a_drive_two_loaded_drivers_match_is_moved_by_the_harness(lab, journal):
    """nvme and a second driver whose id table has the drive (both loaded): the kernel probes
    them in the order they registered, which sysfs does not show."""
    spdk_drive(lab, driver="nvme", override=None)
    lab.add_driver("nvme_vendor", ids={"144d:a808"})
    lease, results = libvirt_round(lab, journal)
    assert lease.left_to is None
    assert [getattr(r, "status", r) for r in results] == ["restored"]
    assert lab.driver_of(SPDK) == "nvme" and entries(journal) == []


def test_a_drive_whose_kernel_aliases_cannot_be_read_is_moved_by_the_harness(lab, journal):
    """No modules.alias for the running kernel (a kernel installed by hand, a stripped
    image): which driver its ids pick cannot be told."""
    spdk_drive(lab, driver="nvme", override=None)
    (lab.root / ALIASES / "modules.alias").unlink()
    lease, results = libvirt_round(lab, journal)
    assert lease.left_to is None and lab.driver_of(SPDK) == "nvme"


def test_a_drive_whose_override_names_another_driver_is_moved_by_the_harness(lab):
    """On nvme, its override naming uio_pci_generic (written after the bind, for the next
    probe): libvirt's give-back would clear it."""
    spdk_drive(lab, driver="nvme", override=None)
    lab.add_driver("uio_pci_generic")
    (lab.dev_dir(SPDK) / "driver_override").write_text("uio_pci_generic\n")
    fs = lab.sysfs()
    plan = binding.plan_group(fs, SPDK, binding.HostUsage.read(fs), allowed={SPDK})
    assert plan.safe, plan.problems
    assert not binding._libvirt_gives_back(fs, plan)


def test_a_built_in_drivers_aliases_count(lab):
    """nvme built in: its aliases are in modules.builtin.alias, not modules.alias."""
    spdk_drive(lab, driver="nvme", override=None)
    aliases = lab.root / ALIASES / "modules.alias"
    ours = [line for line in aliases.read_text().splitlines() if line.endswith(" nvme")]
    aliases.write_text("".join(f"{line}\n" for line in aliases.read_text().splitlines()
                               if line not in ours))
    fs = lab.sysfs()
    assert binding._probed_driver(fs, fs.pci_device(SPDK)) is None
    (lab.root / ALIASES / "modules.builtin.alias").write_text("".join(f"{x}\n" for x in ours))
    assert binding._probed_driver(fs, fs.pci_device(SPDK)) == "nvme"


# -- 2 ---------------------------------------------------------------------------------------

def test_a_hand_over_of_another_device_does_not_refuse_the_stick(stick):
    """Run A's entry names another port's device (3-3, its mouse): the stick is not it."""
    a = usb_binder(stick)
    [mouse] = [u for u in a.fs.usb_devices() if u.name == "3-3"]
    with a.journal.locked():
        a.journal.write([binding._usb_entry(a.fs, mouse, "run-a-lease0")])
    with usbhost.handed(usb_binder(stick, timeout=0.3), STICK, "busaddr") as usb:
        assert usb.name == "4-1"


def test_the_same_binders_hand_over_does_not_refuse_its_next_plug(stick):
    """One run plugs the stick, its guest lets it go, and plugs it again before the plug's
    clean-up gave it back: its own entry, given back with the other by that clean-up."""
    b = usb_binder(stick, timeout=0.3)
    with usbhost.handed(b, STICK, "busaddr"):
        pass
    with usbhost.handed(b, STICK, "busaddr"):
        pass
    assert [e["bdf"] for e in _journal_entries(stick)] == ["4-1", "4-1"]
    b.usb.give_back("4-1")
    assert _journal_entries(stick) == []


def test_plan_refuses_a_stick_another_run_handed_over(stick):
    """``plan`` says what the plug would: refused, naming run A's hand-over; with the journal
    empty, the same stick reads idle and takeable."""
    first_run_left_it(stick)
    inv = parse_inventory('[[device]]\nrole = "usb-device"\nhostbus = 4\nhostaddr = 2\n',
                          root=stick.root)
    path = stick.root / "var/lib/hotplug-harness/vfio-journal.json"
    lines, ok = plan_inventory(stick.sysfs(), inv, journal=path)
    assert not ok
    assert any(line.startswith("  REFUSED: USB 4-1: handed to usb-host by pid ")
               for line in lines), lines
    usb_binder(stick).journal.write([])
    lines, ok = plan_inventory(stick.sysfs(), inv, journal=path)
    assert ok, lines
