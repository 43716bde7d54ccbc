"""harness.host.cli: discover, doctor and restore as ``python -m harness`` runs them, on a fake
root (no fake kernel here: nothing these tests run writes to sysfs)."""

import json
import os

import pytest

from harness.core.errors import ConfigError, HostDeviceError
from harness.cli.host import discover_main, doctor_main, plan_main, restore_main
from harness.host.inventory import load_inventory

from . import fakesysfs

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures


def test_discover_prints_and_writes_a_draft(lab, fake_root, capsys):
    out = fake_root / "inventory.toml"
    assert discover_main(["--root", str(lab.root), "--write", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "NOT safe: enp2s0 carries the route default (table main)" in printed
    assert printed.rstrip().endswith(f'wrote {out} (6 devices). Edit it: set each nic\'s gateway '
                                     f'(now "FILL-IN"); remove what you do not want tested. '
                                     f'Then: python -m harness doctor --inventory {out}')
    out.write_text(out.read_text().replace('"FILL-IN"', '"10.0.5.1"'))
    assert len(load_inventory(out, lab.root).devices) == 6
    with pytest.raises(ConfigError, match="exists; not overwriting it"):
        discover_main(["--root", str(lab.root), "--write", str(out)])


def test_doctor_reports_inventory_problems_as_checks(lab, fake_root, capsys, monkeypatch):
    monkeypatch.setenv("HH_VFIO_JOURNAL", str(fake_root / "journal.json"))
    inv = fake_root / "inv.toml"
    inv.write_text('[[device]]\nrole = "nic"\nbdf = "05:00.0"\n')
    code = doctor_main(["--root", str(lab.root), "--inventory", str(inv),
                        "--qemu-binary", "/nonexistent/qemu"])
    printed = capsys.readouterr().out
    assert code == 1
    assert f"[FAIL] inventory: {inv}: device #1 \"nic-05-00.0\": missing key 'gateway'" in printed
    assert "[FAIL] QEMU binary: /nonexistent/qemu not found" in printed
    assert printed.splitlines()[-1].startswith("verdict: vfio cannot run here: ")


def test_restore_prints_what_it_did(lab, fake_root, capsys):
    journal = fake_root / "journal.json"
    assert restore_main(["--root", str(lab.root), "--journal", str(journal)]) == 0
    assert capsys.readouterr().out == f"nothing to restore ({journal} lists no devices)\n"
    # a killed run wrote its journal and died before touching sysfs
    journal.write_text(json.dumps({"version": 1, "entries": [
        {"bdf": "0000:05:00.0", "driver": "ixgbe", "driver_override": None,
         "method": "driver_override", "lease": "a", "pid": 1, "pid_start": None},
        {"bdf": "0000:0a:00.0", "driver": "igb", "driver_override": None,
         "method": "driver_override", "lease": "a", "pid": 1, "pid_start": None}]}))
    assert restore_main(["--root", str(lab.root), "--journal", str(journal)]) == 0
    assert capsys.readouterr().out == (
        "0000:05:00.0: restored: back on ixgbe\n"
        "0000:0a:00.0: gone: no longer on this host (removed?); nothing to do\n")
    assert json.loads(journal.read_text())["entries"] == []


def test_restore_fails_loudly(lab, fake_root):
    journal = fake_root / "journal.json"
    journal.write_text(json.dumps({"version": 1, "entries": [
        {"bdf": "0000:05:00.0", "driver": "igb", "driver_override": None, "lease": "a",
         "pid": 1}]}))
    with pytest.raises(HostDeviceError) as e:
        restore_main(["--root", str(lab.root), "--journal", str(journal)])
    assert "0000:05:00.0: failed: bound to ixgbe, neither vfio-pci nor its original igb" in \
        e.value.details


def test_restore_exits_non_zero_while_a_device_is_still_held(lab, fake_root, capsys):
    """A live run's device is left alone, and restore says the host is not clean (exit 1)."""
    journal = fake_root / "journal.json"
    lab.file(f"proc/{os.getpid()}/stat", f"{os.getpid()} (py test) S " + "0 " * 18 + "77 0\n")
    journal.write_text(json.dumps({"version": 1, "entries": [
        {"bdf": "0000:05:00.0", "driver": "ixgbe", "driver_override": None,
         "method": "driver_override", "lease": "a", "pid": os.getpid(), "pid_start": None}]}))
    assert restore_main(["--root", str(lab.root), "--journal", str(journal)]) == 1
    assert "still held" in capsys.readouterr().out
    assert len(json.loads(journal.read_text())["entries"]) == 1


def test_bind_and_release_by_hand_like_the_guides_vfio_pci_sh(lab, fake_root, capsys):
    """``python -m harness bind 05:00.0 --with 05:00.1``: the group on vfio-pci through the
    safety checks and the journal, left there (a later automatic restore does not take it);
    ``release 05:00.0`` gives both back. A group member not named is refused, as is a device
    the host needs."""
    from harness.host.binding import Journal

    from harness.cli.host import bind_main, release_main

    journal = fake_root / "var/lib/hotplug-harness/vfio-journal.json"
    with pytest.raises(HostDeviceError, match="0000:05:00.1 .* is not in the inventory"):
        bind_main(["05:00.0", "--journal", str(journal)], fs=lab.sysfs())
    with pytest.raises(HostDeviceError, match="enp2s0 carries the route default"):
        bind_main(["02:00.0", "--journal", str(journal)], fs=lab.sysfs())
    assert lab.driver_of("0000:05:00.0") == "ixgbe"

    assert bind_main(["05:00.0", "--with", "05:00.1", "--journal", str(journal)], fs=lab.sysfs()) == 0
    out = capsys.readouterr().out
    assert "0000:05:00.0 is on vfio-pci (IOMMU group 12" in out
    assert "device_add vfio-pci,host=05:00.0,id=dev0" in out
    assert lab.driver_of("0000:05:00.0") == lab.driver_of("0000:05:00.1") == "vfio-pci"
    assert all(e["manual"] for e in Journal(journal).read())

    # The binding outlives its command: an automatic restore leaves it, and says so (exit 1).
    assert restore_main(["--root", str(lab.root), "--journal", str(journal)]) == 1
    assert "bound by hand (`python -m harness bind`)" in capsys.readouterr().out
    assert lab.driver_of("0000:05:00.0") == "vfio-pci"

    assert release_main(["05:00.1", "--journal", str(journal)], fs=lab.sysfs()) == 0
    assert lab.driver_of("0000:05:00.0") == lab.driver_of("0000:05:00.1") == "ixgbe"
    assert Journal(journal).read() == []
    capsys.readouterr()
    assert release_main(["05:00.0", "--journal", str(journal)], fs=lab.sysfs()) == 1
    assert "the harness did not bind it" in capsys.readouterr().out


def test_plan_refuses_a_group_another_lease_holds(lab, fake_root, capsys):
    """Review 28b's note: `plan` read no journal, so a group bound by hand (or a live run's,
    before its QEMU opens it) was "would be taken" where the run's bind refuses it."""
    from harness.host.binding import VfioBinder

    journal = fake_root / "var/lib/hotplug-harness/vfio-journal.json"
    VfioBinder(lab.sysfs(), journal=journal, manual=True).bind("05:00.0", {"05:00.0", "05:00.1"})
    inv = fake_root / "inv.toml"
    inv.write_text('[[device]]\nrole = "nic"\nbdf = "05:00.0"\ngateway = "10.0.5.1"\n'
                   'companions = ["05:00.1"]\n')
    args = ["--root", str(lab.root), "--inventory", str(inv)]
    assert plan_main(args + ["--journal", str(journal)]) == 1
    printed = capsys.readouterr().out
    assert "  REFUSED: 0000:05:00.0 (group 12) is bound by hand (`python -m harness bind`)" \
        in printed and "would be taken" not in printed
    assert plan_main(args) == 0  # (a copy of a host's tree: no journal read)


def test_plan_prints_each_members_changes_and_evidence_and_changes_nothing(lab, fake_root, capsys):
    inv = fake_root / "inv.toml"
    inv.write_text('[[device]]\nrole = "nic"\nbdf = "05:00.0"\ngateway = "10.0.5.1"\n'
                   'companions = ["05:00.1"]\n\n[[device]]\nrole = "nic"\nbdf = "02:00.0"\n'
                   'gateway = "192.168.1.1"\n\n[[device]]\nrole = "usb-device"\n'
                   'hostbus = 3\nhostaddr = 3\n')
    before = lab.snapshot()
    assert plan_main(["--root", str(lab.root), "--inventory", str(inv)]) == 1
    assert lab.snapshot() == before
    printed = capsys.readouterr().out
    sys_ = lab.root / "sys"
    assert (f"nic nic-05-00.0 (0000:05:00.0)\n"
            f"  IOMMU group 12\n"
            f"  0000:05:00.0 Ethernet controller [8086:10fb] on ixgbe (the device)\n"
            f"    would write: echo vfio-pci > {sys_}/bus/pci/devices/0000:05:00.0/driver_override\n"
            f"    would write: echo 0000:05:00.0 > {sys_}/bus/pci/drivers/ixgbe/unbind\n"
            f"    would write: echo 0000:05:00.0 > {sys_}/bus/pci/drivers_probe\n"
            f"    idle: enp5s0f0: down, no route in any table, no upper device, no socket bound "
            f"to it\n") in printed
    assert "  would be taken: 2 function(s) to vfio-pci" in printed
    assert ("    in use: enp2s0 carries the route default (table main)\n" in printed)
    assert '  REFUSED: 4 use(s) marked "in use" above\n' in printed
    assert ("usb-device usb-device-3-3 (bus 3 addr 3)\n  USB 3-3 [03f0:8607] Optical Mobile "
            "Mouse\n") in printed
    assert printed.rstrip().endswith("verdict: this run would refuse what is marked REFUSED "
                                     "above")


def test_plan_says_when_the_host_has_no_iommu_groups(lab, fake_root, capsys):
    for group in (lab.root / "sys/kernel/iommu_groups").iterdir():
        for member in (group / "devices").iterdir():
            member.unlink()
        (group / "devices").rmdir()
        group.rmdir()
    inv = fake_root / "inv.toml"
    inv.write_text('[[device]]\nrole = "sata-controller"\nbdf = "06:00.0"\n')
    assert plan_main(["--root", str(lab.root), "--inventory", str(inv)]) == 1
    printed = capsys.readouterr().out
    assert "this host has no IOMMU groups (/sys/kernel/iommu_groups is empty)" in printed
    assert "    idle: sdb: not mounted, not swap, not held" in printed


def test_release_refuses_a_live_runs_lease_without_force(lab, fake_root, capsys):
    """Issue 31, item 14: `release BDF` took back a live run's device."""
    from harness.host.binding import Journal, VfioBinder

    from harness.cli.host import release_main

    journal = fake_root / "var/lib/hotplug-harness/vfio-journal.json"
    VfioBinder(lab.sysfs(), journal=journal).bind("06:00.0", {"06:00.0"})
    lab.proc("4321/stat", "4321 (pytest) S 1 " + "0 " * 40 + "\n")
    with Journal(journal).locked():
        Journal(journal).write([dict(e, pid=4321, pid_start=None)
                                for e in Journal(journal).read()])
    assert release_main(["06:00.0", "--journal", str(journal)], fs=lab.sysfs()) == 1
    assert "held by pid 4321 (a live run)" in capsys.readouterr().out
    assert lab.driver_of("0000:06:00.0") == "vfio-pci"
    assert release_main(["06:00.0", "--journal", str(journal), "--force"], fs=lab.sysfs()) == 0
    assert lab.driver_of("0000:06:00.0") == "ahci" and Journal(journal).read() == []
