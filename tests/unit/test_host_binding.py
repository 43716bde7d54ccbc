"""harness.host.binding on a fake host whose fake kernel reacts to sysfs writes like Linux:
binding a whole IOMMU group and giving it back, refusing before any write, the journal, and a
run killed half-way; and the claim of a moving controller's disks, on a real loop device."""

import errno
import json
import os
import subprocess
from types import SimpleNamespace

import pytest

from harness.core.errors import ConfigError, HostDeviceError
from harness.host import binding
from harness.host.binding import (Journal, VfioBinder, _disks_claimed, default_journal_path,
                                  restore_from_journal, vfio_state)
from harness.host.storage import StorageView
from harness.host.sysfs import Sysfs

from . import fakesysfs
from .fakesysfs import FakeHost, Killed

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PORT0, PORT1 = "0000:05:00.0", "0000:05:00.1"
ALLOWED = {"05:00.0", "05:00.1", "06:00.0", "07:00.0", "02:00.0", "00:1f.6", "00:17.0"}


@pytest.fixture
def journal(fake_root):
    return fake_root / "var/lib/hotplug-harness/vfio-journal.json"


def binder(host: FakeHost, journal, **kw) -> VfioBinder:
    return VfioBinder(host.sysfs(), journal=journal, **kw)


def entries(journal) -> list[dict]:
    return json.loads(journal.read_text())["entries"]


def test_bind_moves_the_whole_group_and_release_gives_it_back(lab, journal):
    seen_journal_first = []
    lab.on_any_write = lambda rel, v: seen_journal_first.append(
        {e["bdf"] for e in entries(journal)} == {PORT0, PORT1})
    with binder(lab, journal).bind("05:00.0", ALLOWED) as lease:
        lab.on_any_write = None
        assert len(seen_journal_first) == 6 and all(seen_journal_first)  # journal, then sysfs
        assert (lease.bdf, lease.group, lease.members) == (PORT0, 12, [PORT0, PORT1])
        assert lease.moved == [PORT0, PORT1]
        assert lab.driver_of(PORT0) == lab.driver_of(PORT1) == "vfio-pci"
        assert lab.override_of(PORT0) == "vfio-pci"
        assert (lab.root / "dev/vfio/12").exists()
        held = entries(journal)
        assert [(e["bdf"], e["driver"], e["driver_override"], e["group"]) for e in held] == \
            [(PORT0, "ixgbe", None, 12), (PORT1, "ixgbe", None, 12)]
        assert all(e["pid"] == os.getpid() and e["time"] for e in held)
    assert lab.writes[:3] == [
        (f"sys/bus/pci/devices/{PORT0}/driver_override", "vfio-pci"),
        ("sys/bus/pci/drivers/ixgbe/unbind", PORT0),
        ("sys/bus/pci/drivers_probe", PORT0)]
    assert lab.writes[6:9] == [  # newest first: unbind, clear the override, back to its driver
        ("sys/bus/pci/drivers/vfio-pci/unbind", PORT1),
        (f"sys/bus/pci/devices/{PORT1}/driver_override", ""),
        ("sys/bus/pci/drivers/ixgbe/bind", PORT1)]
    assert lab.driver_of(PORT0) == lab.driver_of(PORT1) == "ixgbe"
    assert lab.override_of(PORT0) is lab.override_of(PORT1) is None
    assert entries(journal) == []
    assert lease.released and lease.release() == []  # idempotent


def test_bridges_and_listed_unbound_members_stay(lab, journal):
    """Issue 31, item 10: an unbound (or pci-stub) member the inventory does not list was
    accepted; now every member but the bridges must be listed."""
    lab.add_pci("0000:07:00.1", "1912:0016", 0x0c0330, None, group=14, parent="0000:00:1d.0")
    e = refused(lab, journal, "07:00.0")
    assert e.message == ("refusing to take 0000:07:00.0: group 14 member 0000:07:00.1 (USB "
                         "controller (xhci), no driver) is not in the inventory: every function "
                         "of the group but its bridges must be (list it as a companion of "
                         "0000:07:00.0 if the host can spare it)")
    lab.add_driver("pci-stub")
    lab._bind("0000:07:00.1", "pci-stub")
    assert "0000:07:00.1 (USB controller (xhci), pci-stub) is not in the inventory" in \
        refused(lab, journal, "07:00.0").message
    with binder(lab, journal).bind("07:00.0", ALLOWED | {"07:00.1"}) as lease:
        assert lease.moved == ["0000:07:00.0"]
        assert lab.driver_of("0000:00:1d.0") == "pcieport"
        assert lab.driver_of("0000:07:00.1") == "pci-stub"
    assert lab.driver_of("0000:07:00.0") == "xhci_hcd"


def test_a_target_without_driver_goes_back_to_no_driver(lab, journal):
    lab.add_pci("0000:08:00.0", "8086:10d3", 0x020000, None, group=20)
    with binder(lab, journal).bind("08:00.0", {"08:00.0"}) as lease:
        assert lease.moved == ["0000:08:00.0"]
        assert lab.driver_of("0000:08:00.0") == "vfio-pci"
    assert lab.driver_of("0000:08:00.0") is None


def test_two_leases_in_one_group_share_it(lab, journal):
    b = binder(lab, journal)
    first = b.bind("05:00.0", ALLOWED)
    second = b.bind("05:00.1", ALLOWED)
    assert (first.moved, second.moved) == ([PORT0, PORT1], [])
    assert len(entries(journal)) == 2
    first.release()
    assert lab.driver_of(PORT0) == lab.driver_of(PORT1) == "vfio-pci"
    second.release()
    assert lab.driver_of(PORT0) == lab.driver_of(PORT1) == "ixgbe"
    assert entries(journal) == []


def test_close_gives_back_everything(lab, journal):
    with binder(lab, journal) as b:
        b.bind("05:00.0", ALLOWED)
        b.bind("06:00.0", ALLOWED)
        b.bind("05:00.1", ALLOWED)
        assert len(entries(journal)) == 3
    assert lab.driver_of(PORT0) == "ixgbe" and lab.driver_of("0000:06:00.0") == "ahci"
    assert entries(journal) == []


def refused(lab, journal, bdf, allowed=ALLOWED, **kw) -> HostDeviceError:
    before = lab.snapshot()
    with pytest.raises(HostDeviceError) as e:
        binder(lab, journal, **kw).bind(bdf, allowed)
    assert lab.writes == []
    assert lab.snapshot() == before
    assert not journal.exists()
    assert e.value.hint
    return e.value


def test_refuses_a_device_not_in_the_inventory(lab, journal):
    e = refused(lab, journal, "05:00.0", allowed={"05:00.1"})
    assert e.message.startswith("0000:05:00.0 is not in the inventory")


def test_refuses_the_root_disk_controller(lab, journal):
    e = refused(lab, journal, "00:17.0")
    assert e.message == ("refusing to take 0000:00:17.0: sda2 is mounted on /; sda3 is used as "
                         "swap")


def test_refuses_the_nic_of_the_default_route_and_ssh(lab, journal):
    e = refused(lab, journal, "02:00.0")
    assert "enp2s0 carries the route default (table main)" in e.message
    assert "enp2s0 is up with the address 192.168.1.10/24, fe80::1:10/64" in e.message


def test_refuses_a_group_whose_member_carries_a_route(lab, journal):
    routes = json.loads((lab.root / "ip/route.json").read_text())
    lab.file("ip/route.json", json.dumps(routes + [{"dst": "10.0.5.0/24", "dev": "enp5s0f1"}]))
    e = refused(lab, journal, "05:00.0")
    assert e.message == ("refusing to take 0000:05:00.0: in group 12, enp5s0f1 carries the "
                         "route 10.0.5.0/24 (table main)")


def test_refuses_a_group_with_the_lpc_bridge(lab, journal):
    e = refused(lab, journal, "00:1f.6", allowed={"00:1f.6", "00:1f.0", "00:1f.3"})
    assert e.message == ("refusing to take 0000:00:1f.6: group 15 member 0000:00:1f.0 (ISA bridge, "
                         "lpc_ich) would have to leave the host for vfio-pci too; in group 15, "
                         "0000:00:1f.3 is a SMBus: the harness has no role for that class, so no "
                         "rule that could prove it idle")


def test_the_inventory_is_the_allow_list_for_the_whole_group(lab, journal):
    """Binding a listed device moves its whole IOMMU group: a member not listed (as a device or
    a companion) is refused before any host change, named; listed as a companion it moves."""
    e = refused(lab, journal, "05:00.0", allowed={"05:00.0"})
    assert e.message == ("refusing to take 0000:05:00.0: group 12 member 0000:05:00.1 (Ethernet "
                         "controller, ixgbe) is not in the inventory: every function of the "
                         "group but its bridges must be (list it as a companion of 0000:05:00.0 "
                         "if the host can spare it)")  # refused() checked: nothing written, no journal
    with binder(lab, journal).bind("05:00.0", {"05:00.0", "05:00.1"}) as lease:
        assert sorted(lease.moved) == ["0000:05:00.0", "0000:05:00.1"]


def test_refuses_a_device_without_iommu_group(lab, journal):
    lab.add_pci("0000:08:00.0", "8086:10d3", 0x020000, "e1000e", group=None)
    e = refused(lab, journal, "08:00.0", allowed={"08:00.0"})
    assert (e.message, e.hint) == ("0000:08:00.0: no iommu_group found", "enable VT-d in the "
                                   "firmware and boot with intel_iommu=on")


def test_refuses_when_vfio_pci_is_not_loaded(lab, journal):
    lab.remove_driver("vfio-pci")
    e = refused(lab, journal, "05:00.0")
    assert e.hint == "modprobe vfio-pci"


def test_refuses_a_device_the_host_does_not_have(lab, journal):
    e = refused(lab, journal, "09:00.0", allowed={"09:00.0"})
    assert "0000:09:00.0 does not exist" in e.message


def test_malformed_address_is_a_config_error(lab, journal):
    with pytest.raises(ConfigError, match="malformed PCI address '5:0.0'"):
        binder(lab, journal).bind("5:0.0", ALLOWED)


def test_refuses_a_group_another_live_run_holds(lab, journal):
    lab.file(f"proc/{os.getpid()}/stat", f"{os.getpid()} (pytest) S " + "0 " * 18 + "4242 0\n")
    binder(lab, journal).bind("05:00.0", ALLOWED)  # another run, still alive
    lab.writes.clear()
    with pytest.raises(HostDeviceError, match=r"0000:05:00.0 \(group 12\) is held by pid"):
        binder(lab, journal).bind("05:00.1", ALLOWED)
    assert lab.writes == []
    assert entries(journal)[0]["pid_start"] == 4242


def test_refuses_a_group_a_dead_run_left_and_says_restore(lab, journal):
    lab.kill_at = ("drivers_probe", PORT1)
    with pytest.raises(Killed):
        binder(lab, journal).bind("05:00.0", ALLOWED)
    lab.kill_at = None
    with pytest.raises(HostDeviceError, match="left on vfio-pci by a run that died") as e:
        binder(lab, journal).bind("05:00.1", ALLOWED)
    assert "python -m harness restore" in e.value.hint


def test_a_run_killed_between_unbind_and_bind_is_restored(lab, journal):
    lab.kill_at = ("drivers_probe", PORT1)  # SIGKILL: no except, no finally of ours runs
    with pytest.raises(Killed):
        binder(lab, journal).bind("05:00.0", ALLOWED)
    assert lab.driver_of(PORT0) == "vfio-pci"
    assert lab.driver_of(PORT1) is None and lab.override_of(PORT1) == "vfio-pci"
    assert [e["bdf"] for e in entries(journal)] == [PORT0, PORT1]

    lab.kill_at = None
    # The next session (or `python -m harness restore`): a new process, nothing but the journal.
    restored = restore_from_journal(lab.sysfs(), journal)
    assert [(r.bdf, r.status, r.driver) for r in restored] == [(PORT0, "restored", "ixgbe"),
                                                               (PORT1, "restored", "ixgbe")]
    assert lab.driver_of(PORT0) == lab.driver_of(PORT1) == "ixgbe"
    assert lab.override_of(PORT0) is lab.override_of(PORT1) is None
    assert entries(journal) == []
    assert restore_from_journal(lab.sysfs(), journal) == []  # idempotent


def test_a_run_killed_right_after_driver_override_is_restored(lab, journal):
    lab.kill_at = ("ixgbe/unbind", PORT0)
    with pytest.raises(Killed):
        binder(lab, journal).bind("05:00.0", ALLOWED)
    assert lab.driver_of(PORT0) == "ixgbe" and lab.override_of(PORT0) == "vfio-pci"
    lab.kill_at = None
    lab.writes.clear()
    restored = restore_from_journal(lab.sysfs(), journal)
    assert [r.status for r in restored] == ["restored", "restored"]
    assert lab.writes == [(f"sys/bus/pci/devices/{PORT0}/driver_override", "")]  # nothing else
    assert lab.override_of(PORT0) is None and lab.driver_of(PORT0) == "ixgbe"


def test_restore_leaves_a_live_run_alone_unless_forced(lab, journal):
    lab.file(f"proc/{os.getpid()}/stat", f"{os.getpid()} (py test) S " + "0 " * 18 + "77 0\n")
    binder(lab, journal).bind("05:00.0", ALLOWED)
    restored = restore_from_journal(lab.sysfs(), journal)
    assert [(r.bdf, r.status, r.driver) for r in restored] == [(PORT0, "in-use", "vfio-pci"),
                                                               (PORT1, "in-use", "vfio-pci")]
    assert len(entries(journal)) == 2
    forced = restore_from_journal(lab.sysfs(), journal, include_live=True)
    assert [r.status for r in forced] == ["restored", "restored"]
    assert lab.driver_of(PORT0) == "ixgbe"


def test_a_reused_pid_is_not_the_run_that_wrote_the_entry(lab, journal):
    lab.file(f"proc/{os.getpid()}/stat", f"{os.getpid()} (pytest) S " + "0 " * 18 + "77 0\n")
    binder(lab, journal).bind("06:00.0", ALLOWED)
    lab.file(f"proc/{os.getpid()}/stat", f"{os.getpid()} (bash) S " + "0 " * 18 + "99 0\n")
    [r] = restore_from_journal(lab.sysfs(), journal)
    assert r.status == "restored"


def test_a_failed_move_puts_back_what_moved(lab, journal):
    lab.fail[("drivers_probe", PORT1)] = errno.EINVAL
    with pytest.raises(HostDeviceError, match=f"writing '{PORT1}' to .*drivers_probe failed"):
        binder(lab, journal).bind("05:00.0", ALLOWED)
    assert lab.driver_of(PORT0) == lab.driver_of(PORT1) == "ixgbe"
    assert lab.override_of(PORT0) is lab.override_of(PORT1) is None
    assert entries(journal) == []


def test_a_device_vfio_does_not_take_is_reported_after_the_deadline(lab, journal):
    # vfio-pci refuses the device (probe error): drivers_probe succeeds, nothing binds.
    lab.remove_driver("vfio-pci")
    lab.file("sys/bus/pci/drivers/vfio-pci/unbind")  # present, but binds nothing
    lab.ids.pop("vfio-pci")
    with pytest.raises(HostDeviceError, match="0000:06:00.0 is on no driver after 0.05 s, not "
                                              "vfio-pci"):
        binder(lab, journal, timeout=0.05).bind("06:00.0", ALLOWED)
    assert lab.driver_of("0000:06:00.0") == "ahci" and entries(journal) == []


def test_restore_reports_what_it_cannot_give_back_and_keeps_the_entry(lab, journal):
    lab.kill_at = ("drivers_probe", PORT1)
    with pytest.raises(Killed):
        binder(lab, journal).bind("05:00.0", ALLOWED)
    lab.kill_at = None
    lab.fail[("ixgbe/bind", PORT1)] = errno.EIO
    with pytest.raises(HostDeviceError, match=r"1 device\(s\) could not be given back") as e:
        restore_from_journal(lab.sysfs(), journal)
    assert f"{PORT0}: restored: back on ixgbe" in e.value.details
    assert f"{PORT1}: failed: writing '{PORT1}' to" in e.value.details
    assert [x["bdf"] for x in entries(journal)] == [PORT1]
    lab.fail.clear()
    assert [r.status for r in restore_from_journal(lab.sysfs(), journal)] == ["restored"]


def test_restore_drops_devices_that_are_gone(lab, journal):
    jr = Journal(journal)
    with jr.locked():
        jr.write([{"bdf": "0000:0a:00.0", "driver": "igb", "driver_override": None,
                   "method": "driver_override", "lease": "x", "pid": 1, "pid_start": None}])
    [r] = restore_from_journal(lab.sysfs(), journal)
    assert (r.status, r.detail) == ("gone", "no longer on this host (removed?); nothing to do")
    assert entries(journal) == []


def test_restore_without_journal_is_a_no_op(lab, journal):
    assert restore_from_journal(lab.sysfs(), journal) == []
    assert not journal.parent.exists()


def test_corrupt_journal(lab, journal):
    journal.parent.mkdir(parents=True)
    journal.write_text("{not json")
    with pytest.raises(HostDeviceError, match="is corrupt"):
        restore_from_journal(lab.sysfs(), journal)


def test_new_id_where_there_is_no_driver_override(lab, journal):
    lab.add_pci("0000:08:00.0", "8086:10d3", 0x020000, "e1000e", group=20, override_file=False)
    lab.add_net("enp8s0", "0000:08:00.0")
    with binder(lab, journal).bind("08:00.0", {"08:00.0"}):
        assert lab.driver_of("0000:08:00.0") == "vfio-pci"
        assert ("sys/bus/pci/drivers/vfio-pci/new_id", "8086 10d3") in lab.writes
        assert entries(journal)[0]["method"] == "new_id"
    assert lab.driver_of("0000:08:00.0") == "e1000e"
    assert ("sys/bus/pci/drivers/vfio-pci/remove_id", "8086 10d3") in lab.writes
    assert lab.dynids["vfio-pci"] == set()


def test_default_journal_path(monkeypatch):
    monkeypatch.delenv("HH_VFIO_JOURNAL", raising=False)
    assert str(default_journal_path()) == "/var/lib/hotplug-harness/vfio-journal.json"
    monkeypatch.setenv("HH_VFIO_JOURNAL", "/tmp/j.json")
    assert str(default_journal_path()) == "/tmp/j.json"


def test_vfio_state_for_bundles(lab):
    [state] = vfio_state(lab.root, ["05:00.1"])
    assert state["driver"] == "ixgbe" and state["iommu_group"] == 12
    assert [m["bdf"] for m in state["group_members"]] == [PORT0, PORT1]
    assert vfio_state(lab.root, ["09:00.0"]) == [{"bdf": "0000:09:00.0", "present": False}]


def test_restore_does_not_unbind_a_group_a_qemu_still_has_open(lab, journal):
    lab.kill_at = ("drivers_probe", PORT1)
    with pytest.raises(Killed):
        binder(lab, journal).bind("05:00.0", ALLOWED)
    lab.kill_at = None
    lab.file("proc/4321/comm", "qemu-system-x86\n")
    (lab.root / "proc/4321/fd").mkdir()
    os.symlink("/dev/vfio/12", lab.root / "proc/4321/fd/17")
    lab.writes.clear()
    with pytest.raises(HostDeviceError) as e:
        restore_from_journal(lab.sysfs(), journal)
    assert (f"{PORT0}: failed: /dev/vfio/12 is still open by pid 4321 (qemu-system-x86); stop it "
            f"(kill 4321), then restore again") in e.value.details
    assert f"{PORT1}: failed: /dev/vfio/12 is still open by pid 4321" in e.value.details
    assert lab.writes == []  # neither member touched
    assert len(entries(journal)) == 2


def test_journal_in_a_folder_anybody_can_write_is_refused(fake_root):
    folder = fake_root / "shared"
    folder.mkdir()
    folder.chmod(0o1777)  # like /tmp
    jr = Journal(folder / "journal.json")
    with pytest.raises(HostDeviceError, match="others can write to it"):
        jr.read()
    with pytest.raises(HostDeviceError, match="others can write to it"):
        with jr.locked():
            pass
    assert not (folder / "journal.json.lock").exists()


@pytest.mark.parametrize("bad", [
    {"bdf": "../../../../etc"},
    {"driver": "../../../../../tmp/x"},
    {"driver_override": "vfio-pci\nigb"},
    {"method": "rm -rf"},
    {"ids": "8086 10d3\n1234 5678"},
    {"pid": "1"},
])
def test_tampered_journal_entries_are_refused_before_any_write(lab, journal, bad):
    """Journal values become sysfs paths and values written as root: each must be what the
    harness writes itself, or nothing is restored and nothing is written."""
    entry = {"bdf": "0000:05:00.0", "driver": "ixgbe", "driver_override": None,
             "method": "driver_override", "lease": "a", "pid": 1, "pid_start": None, **bad}
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text(json.dumps({"version": 1, "entries": [entry]}))
    with pytest.raises(HostDeviceError, match="is corrupt"):
        restore_from_journal(lab.sysfs(), journal)
    assert lab.writes == []


def test_a_release_refused_while_qemu_holds_the_group_can_be_tried_again(lab, journal):
    """The vfio-pci driver will not let go while a QEMU holds the group: the release fails, the
    journal keeps the entry, and once QEMU is gone the same lease gives the device back."""
    lease = binder(lab, journal).bind("06:00.0", ALLOWED)
    lab.fail[("drivers/vfio-pci/unbind", "0000:06:00.0")] = errno.EBUSY
    with pytest.raises(HostDeviceError, match="not given back"):
        lease.release()
    assert [e["bdf"] for e in entries(journal)] == ["0000:06:00.0"]
    del lab.fail[("drivers/vfio-pci/unbind", "0000:06:00.0")]  # QEMU closed
    lease.release()
    assert lab.driver_of("0000:06:00.0") == "ahci" and entries(journal) == []
    assert lease.release() == []  # and only once


def test_the_end_of_a_run_gives_back_its_own_entries_too(lab, journal):
    """At the session's end the controller restores every entry of the run: a dead worker's
    (its owner is gone) and its own (own_pids), but not another live run's."""
    me = os.getpid()
    lab.file(f"proc/{me}/stat", f"{me} (py test) S " + "0 " * 18 + "77 0\n")
    binder(lab, journal).bind("06:00.0", ALLOWED)  # this run's, never released
    assert [r.status for r in restore_from_journal(lab.sysfs(), journal)] == ["in-use"]
    [r] = restore_from_journal(lab.sysfs(), journal, own_pids={me})
    assert r.status == "restored" and lab.driver_of("0000:06:00.0") == "ahci"
    assert entries(journal) == []


def test_an_interrupt_during_device_add_stays_an_interrupt_and_the_group_goes_back_at_close(lab, journal):
    """SIGTERM (as KeyboardInterrupt) lands while QEMU attaches the device, so QEMU holds the
    group and the plug's own release fails: the interrupt still ends the run (it used to be
    replaced by the release's HostDeviceError, so the run 'failed' instead of 'interrupted'),
    and the binder gives the group back at its close, once the QEMU is gone."""
    from types import SimpleNamespace

    from harness.scenario.devices import VfioPci
    from harness.qemu.machine import GuestSpec

    b = binder(lab, journal)
    entry = SimpleNamespace(bdf="0000:06:00.0", role="sata-controller", name="ahci")

    def device_add(*args, **kw):
        lab.fail[("drivers/vfio-pci/unbind", "0000:06:00.0")] = errno.EBUSY  # QEMU has it now
        raise KeyboardInterrupt("signal SIGTERM")

    guest = SimpleNamespace(free_bus=lambda: "rp0", spec=GuestSpec(machine="q35"),
                            device_add=device_add)
    with pytest.raises(KeyboardInterrupt):
        VfioPci(entry, b, ALLOWED).plug(guest, "sata")
    assert lab.driver_of("0000:06:00.0") == "vfio-pci" and len(entries(journal)) == 1
    del lab.fail[("drivers/vfio-pci/unbind", "0000:06:00.0")]  # the guest was closed
    b.close()
    assert lab.driver_of("0000:06:00.0") == "ahci" and entries(journal) == []


def test_a_journal_held_by_another_run_is_waited_for_then_refused(tmp_path):
    """Two runs share one journal: the second waits for the first's lock, and past its deadline
    says who to look for instead of binding anything."""
    import time

    first, second = Journal(tmp_path / "j.json"), Journal(tmp_path / "j.json", lock_timeout=0.3)
    with first.locked():
        t0 = time.monotonic()
        with pytest.raises(HostDeviceError, match="stayed locked for 0 s") as e:
            with second.locked():
                pass
        assert time.monotonic() - t0 >= 0.3
        assert "fuser" in e.value.hint
    with second.locked():  # free again once the first run let go
        pass


def libvirt_moves(lab: FakeHost, bdf: str, to: str | None) -> None:
    """What libvirt does for <hostdev managed='yes'> (virPCIDeviceBindToStub on attach,
    virPCIDeviceUnbindFromStub on detach): driver_override, unbind, drivers_probe."""
    fs = lab.sysfs()
    back = to is None
    fs.write(fs.pci_dir(bdf) / "driver_override", "\n" if back else to)
    fs.write(fs.pci_driver_dir(lab.driver_of(bdf)) / "unbind", bdf)
    fs.write(fs.sys("bus", "pci", "drivers_probe"), bdf)


def test_managed_yes_leaves_the_target_to_libvirt_and_checks_it_came_back(lab, journal):
    """--driver libvirt --libvirt-managed yes: proven idle and journaled as always; the target
    (alone in its IOMMU group, on a host driver: test_host_idle_review9 for the others) moved
    by libvirt, whose give-back the release checks without writing anything of its own."""
    asm = "0000:06:00.0"
    b = binder(lab, journal)
    lease = b.bind(asm, ALLOWED, moved_by="libvirt")
    assert lease.moved == [] and lease.left_to == "libvirt"
    assert lab.driver_of(asm) == "ahci"
    assert [(e["bdf"], e.get("moved_by")) for e in entries(journal)] == [(asm, "libvirt")]
    libvirt_moves(lab, asm, "vfio-pci")  # attach-device
    assert lab.driver_of(asm) == "vfio-pci"
    libvirt_moves(lab, asm, None)  # detach-device
    writes = len(lab.writes)
    results = {r.bdf: r for r in lease.release()}
    assert results[asm].status == "restored"
    assert results[asm].detail == "back on ahci, given back by libvirt"
    assert lab.writes[writes:] == []
    assert lab.driver_of(asm) == "ahci"
    assert lab.override_of(asm) is None and entries(journal) == []


def test_managed_yes_a_device_libvirt_left_on_vfio_is_given_back_and_said(lab, journal):
    asm = "0000:06:00.0"
    lease = binder(lab, journal, timeout=0.2).bind(asm, ALLOWED, moved_by="libvirt")
    libvirt_moves(lab, asm, "vfio-pci")
    results = {r.bdf: r for r in lease.release()}
    assert results[asm].status == "restored"
    assert results[asm].detail.startswith(
        f"libvirt did not give it back ({asm} is on vfio-pci after 0.2 s, not ahci); "
        "the harness: back on ahci")
    assert lab.driver_of(asm) == "ahci" and lab.override_of(asm) is None
    assert entries(journal) == []


def test_managed_yes_entry_of_a_run_that_died_is_restored(lab, journal):
    """A run killed while libvirt had the device: `restore` puts it back like any entry."""
    asm = "0000:06:00.0"
    binder(lab, journal).bind(asm, ALLOWED, moved_by="libvirt")
    libvirt_moves(lab, asm, "vfio-pci")
    held = entries(journal)
    for e in held:
        e["pid"] = 2 ** 22 + 7  # a run that is gone
    journal.write_text(json.dumps({"entries": held}))
    assert {r.bdf: r.status for r in restore_from_journal(lab.sysfs(), journal)} == \
        {asm: "restored"}
    assert lab.driver_of(asm) == "ahci" and lab.override_of(asm) is None


def test_journal_refuses_an_unknown_mover(lab, journal):
    binder(lab, journal).bind("06:00.0", ALLOWED, moved_by="libvirt")
    held = entries(journal)
    held[0]["moved_by"] = "someone"
    journal.write_text(json.dumps({"entries": held}))
    with pytest.raises(HostDeviceError, match="moved_by .someone. is not libvirt"):
        Journal(journal).read()


# -- the disks below what moves stay claimed from the proof to the move ---------------------------


@pytest.fixture
def claimed_plan(tmp_path):
    """A real loop device standing for a controller's disk, and a plan that moves a "function"
    whose sysfs directory is the loop's own (what lies below it is what counts)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: real loop devices and exclusive claims")
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * (1 << 20))
    made = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"no loop device to play the disk: {made.stderr.strip()}")
    loop = made.stdout.strip()
    fn = SimpleNamespace(bdf="0000:06:00.0", kernel_bridge=False, path=os.path.realpath(
        f"/sys/class/block/{os.path.basename(loop)}"))
    yield loop, SimpleNamespace(to_move=(fn,), members=(fn,))  # (a group of one: as a plan)
    subprocess.run(["losetup", "-d", loop], check=False)


def _exclusive(node: str) -> "int | None":
    try:
        return os.open(node, os.O_RDONLY | os.O_EXCL | os.O_NONBLOCK)
    except OSError as e:
        assert e.errno == errno.EBUSY, e
        return None


def test_the_disks_below_what_moves_stay_claimed_through_the_move(claimed_plan, monkeypatch):
    """A mount (or swapon) between the proof and the unbind fails rather than lose its disk;
    after the move the claim is let go. (The users read again once claimed, and what else the
    proof judged from the open files: stubbed here, as the host this runs on may have
    processes it cannot read; the next test reads the users.)"""
    loop, plan = claimed_plan
    read_again: list = []
    monkeypatch.setattr(binding, "_used_since", lambda view, disks, before:
                        read_again.append(view.held))
    monkeypatch.setattr(binding, "_held_since", lambda fs, below, before, view, held_groups: None)
    with _disks_claimed(Sysfs("/"), plan):
        assert _exclusive(loop) is None  # (what a mount's claim meets: busy)
        # (read with the claim held, before the network's read again and after it)
        assert read_again == [{os.path.basename(loop)}] * 2
    fd = _exclusive(loop)
    assert fd is not None
    os.close(fd)


def test_a_disk_taken_since_the_proof_refuses_the_move(claimed_plan):
    loop, plan = claimed_plan
    taken = os.open(loop, os.O_RDONLY | os.O_EXCL)  # (mounted between the proof and the move)
    try:
        with pytest.raises(HostDeviceError, match="cannot be claimed right before the move"):
            with _disks_claimed(Sysfs("/"), plan):
                pass
    finally:
        os.close(taken)


# (it reads the whole host's open files: not beside the tests that plant hostile ones, such as
# an io_uring's files on a silent FUSE mount, which make every loop device's backing unknown)
@pytest.mark.xdist_group("real-host-namespaces")
def test_the_users_read_again_under_the_claim_are_others_only(claimed_plan):
    """What :func:`harness.host.binding._used_since` reads of a disk this process claims: its
    own claim and fd are no use, and another process's open without O_EXCL (a libvirt
    guest's QEMU, ``dd``) is one (review 31a, 1). (Only the disk's uses: the host this runs on
    may have processes whose files cannot be read, a problem of their own.)"""
    loop, _ = claimed_plan
    name = os.path.basename(loop)
    claim = os.open(loop, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    try:
        assert StorageView.read(Sysfs("/"), frozenset({name})).use_of_block(name) == []
        with open(loop, "rb") as disk:
            reader = subprocess.Popen(["sleep", "60"], stdin=disk)
        try:
            uses = StorageView.read(Sysfs("/"), frozenset({name})).use_of_block(name)
        finally:
            reader.kill()
            reader.wait()
        assert uses == [f"{name} is open by pid {reader.pid} (sleep)"]
    finally:
        os.close(claim)
