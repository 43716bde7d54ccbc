"""Journal entries of another boot, and of another device at the journaled address (read 39b,
finding 4): entries carry the boot id; `restore`, a release and a usb-host give-back drop an
entry of an earlier boot (its boot id, or for an older entry its ``time`` before ``btime``)
or for another device (other ids) without writing to the device; a bind refuses a group
whose member has an entry of an earlier boot (`restore` first). The fake host's /proc gives
``btime`` and the boot id; no guest is booted."""

from __future__ import annotations

import json
import os

import pytest

from harness.core.errors import HostDeviceError
from harness.host.binding import VfioBinder, restore_from_journal

from . import fakesysfs

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PORT0, PORT1 = "0000:05:00.0", "0000:05:00.1"
BOOT, OLD_BOOT = "5f0e0c3a-6b0e-4d53-9d0b-1c2f64a1e001", "0b3c9d2e-1111-4a2b-8c3d-4e5f60718293"
_BTIME = 1796609525  # 2026-12-07T02:12:05+00:00
BEFORE, AFTER = "2026-12-07T01:40:11+00:00", "2026-12-07T03:40:11+00:00"


@pytest.fixture
def booted(lab):
    """The lab host, up since ``_BTIME`` as boot ``BOOT``."""
    lab.proc("stat", f"cpu  1 0 1 100 0 0 0 0 0 0\nbtime {_BTIME}\nprocesses 2000\n")
    lab.proc("sys/kernel/random/boot_id", BOOT + "\n")
    return lab


def _journal(host):
    return host.root / "var/lib/hotplug-harness/vfio-journal.json"


def _entries(host) -> list[dict]:
    path = _journal(host)
    return json.loads(path.read_text())["entries"] if path.exists() else []


def _crashed(host, **changes) -> None:
    """05:00.0's group bound by a run that then died (pid 4242, no process now), its entries
    changed by ``changes`` (a key set to None is left out: an older entry)."""
    VfioBinder(host.sysfs(), journal=_journal(host)).bind("05:00.0", {PORT0, PORT1})
    entries = [{k: v for k, v in {**e, "pid": 4242, "pid_start": 51234, **changes}.items()
                if v is not None} for e in _entries(host)]
    _journal(host).write_text(json.dumps({"version": 1, "entries": entries}) + "\n")
    host.writes.clear()


def _restore(host):
    return restore_from_journal(host.sysfs(), _journal(host), timeout=0.3)


def test_an_entry_records_the_boot_it_was_written_in(booted):
    VfioBinder(booted.sysfs(), journal=_journal(booted)).bind("05:00.0", {PORT0, PORT1})
    assert [e["boot"] for e in _entries(booted)] == [BOOT, BOOT]


def test_a_journal_entry_whose_boot_is_not_a_boot_id_is_refused(booted):
    _crashed(booted, boot="../../x")
    with pytest.raises(HostDeviceError, match="boot '../../x' is not a boot id"):
        _restore(booted)
    assert booted.writes == []


def test_an_entry_of_another_boot_id_is_dropped_with_nothing_written(booted):
    """Its boot id decides, whatever its time says (a clock set wrong)."""
    _crashed(booted, boot=OLD_BOOT, time=AFTER)
    results = _restore(booted)
    assert [(r.bdf, r.status) for r in results] == [(PORT0, "stale"), (PORT1, "stale")]
    assert f"in another boot ({OLD_BOOT}; this is {BOOT})" in results[0].detail
    assert "nothing given back, its entry dropped" in str(results[0])
    assert booted.writes == [] and _entries(booted) == []
    assert booted.driver_of(PORT0) == "vfio-pci"  # (as this boot has it)


def test_an_older_entry_before_btime_is_dropped_with_nothing_written(booted):
    _crashed(booted, boot=None, time=BEFORE)
    results = _restore(booted)
    assert {r.status for r in results} == {"stale"}
    assert "before this boot (2026-12-07T02:12:05+00:00)" in results[0].detail
    assert booted.writes == [] and _entries(booted) == []


@pytest.mark.parametrize("changes", [{"boot": BOOT, "time": BEFORE},
                                     {"boot": None, "time": AFTER}])
def test_control_an_entry_of_this_boot_is_given_back(booted, changes):
    """This boot's id (a clock set wrong does not matter), or an older entry written after
    ``btime``."""
    _crashed(booted, **changes)
    assert {r.status for r in _restore(booted)} == {"restored"}
    assert booted.driver_of(PORT0) == booted.driver_of(PORT1) == "ixgbe"


def test_control_an_older_entry_is_given_back_where_the_boot_cannot_be_read(lab):
    """No boot id, no ``btime``: nothing tells it is of another boot; the ids check stays."""
    _crashed(lab, boot=None, time=BEFORE)
    assert {r.status for r in _restore(lab)} == {"restored"}


def test_an_entry_of_another_device_at_the_address_is_dropped_with_nothing_written(booted):
    _crashed(booted)
    entries = _entries(booted)
    entries[0]["ids"] = "15b3 1017"  # (the run had a ConnectX-5 there)
    _journal(booted).write_text(json.dumps({"version": 1, "entries": entries}) + "\n")
    results = _restore(booted)
    assert (results[0].bdf, results[0].status) == (PORT0, "gone")
    assert "another device is there now (8086:10fb; it was 15b3:1017" in results[0].detail
    assert PORT0 not in [v for _, v in booted.writes]
    assert results[1].status == "restored"  # (its own entry: the same device)
    assert _entries(booted) == []


def test_a_bind_by_hand_of_another_boot_is_dropped_by_restore(booted):
    """Not "bound by hand": that binding ended with its boot."""
    _crashed(booted, boot=OLD_BOOT, manual=True)
    assert {r.status for r in _restore(booted)} == {"stale"}
    assert booted.writes == [] and _entries(booted) == []


def test_a_bind_refuses_a_member_with_an_entry_of_another_boot(booted):
    _crashed(booted, boot=OLD_BOOT)
    _restore_nothing = VfioBinder(booted.sysfs(), journal=_journal(booted), timeout=0.3)
    with pytest.raises(HostDeviceError, match=r"0000:05:00.0 \(group 12\) has a stale journal "
                                              r"entry: journaled by pid 4242") as e:
        _restore_nothing.bind("05:00.0", {PORT0, PORT1})
    assert "drops an entry of an earlier boot without writing" in e.value.hint
    assert booted.writes == []


def test_an_sriov_count_of_another_boot_is_not_written(booted):
    pf = "0000:08:00.0"
    booted.add_pci("0000:00:1c.6", "8086:a33e", 0x060400, "pcieport", 16)
    booted.add_pci(pf, "8086:10c9", 0x020000, "igb", 17, parent="0000:00:1c.6")
    booted.sriov_capable(pf, 7)
    booted.add_net("enp8s0", pf)
    booted.sysfs().write(booted.sys / "bus/pci/devices" / pf / "sriov_numvfs", "2")  # this boot's
    entry = {"kind": "sriov", "bdf": pf, "numvfs": 0, "set": 2, "autoprobe": 1,
             "lease": "4f1c2a9e0b7d", "pid": 4242, "pid_start": 51234, "time": AFTER,
             "boot": OLD_BOOT}
    _journal(booted).parent.mkdir(parents=True, exist_ok=True)
    os.chmod(_journal(booted).parent, 0o700)
    _journal(booted).write_text(json.dumps({"version": 1, "entries": [entry]}) + "\n")
    booted.writes.clear()
    [r] = _restore(booted)
    assert r.status == "stale" and booted.writes == [] and _entries(booted) == []
    assert (booted.dev_dir(pf) / "sriov_numvfs").read_text().strip() == "2"


def test_a_usb_hand_over_of_another_boot_is_not_given_back(booted):
    booted.add_usb("4-1", 2, "0781:5567", "Cruzer Blade", "SanDisk", iface_driver=None)
    entry = {"kind": "usb", "bdf": "4-1", "busnum": 4, "devnum": 2, "ids": "0781:5567",
             "path": os.path.relpath(os.path.realpath(booted.sys / "bus/usb/devices/4-1"),
                                     os.path.realpath(booted.sys)),
             "interfaces": {"4-1:1.0": "usb-storage"}, "lease": "4f1c2a9e0b7d", "pid": 4242,
             "pid_start": 51234, "time": AFTER, "boot": OLD_BOOT}
    _journal(booted).parent.mkdir(parents=True, exist_ok=True)
    os.chmod(_journal(booted).parent, 0o700)
    _journal(booted).write_text(json.dumps({"version": 1, "entries": [entry]}) + "\n")
    booted.writes.clear()
    [r] = _restore(booted)
    assert (r.bdf, r.status) == ("4-1", "stale")
    assert booted.writes == [] and _entries(booted) == []
