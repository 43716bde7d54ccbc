"""A host USB device is proven idle again right before each usb-host plug, not only at the
run's start (issue 31, third read): harness/host/usbhost.py against a fake host
(tests/unit/fakesysfs.py, the lab host: USB bus 4 on 07:00.0 is free)."""

import fcntl
import os
import threading
import time
from types import SimpleNamespace

import pytest

from harness.core.errors import HostDeviceError
from harness.host import usbhost
from harness.host.binding import VfioBinder

from . import fakesysfs

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
MOUNTS = ("/dev/sda2 / ext4 rw,relatime 0 0\n"
          "/dev/sdc1 /mnt/usb\\040stick vfat rw,relatime 0 0\n")
STICK = SimpleNamespace(name="stick", hostbus=4, hostaddr=2, vendorid="0x0781",
                        productid="0x5567")


@pytest.fixture
def stick(lab):
    iface = lab.add_usb("4-1", 2, "0781:5567", "Cruzer Blade", "SanDisk",
                        iface_driver="usb-storage")
    lab.add_disk("sdd", iface / "host6/target6:0:0/6:0:0:0", ("sdd1",), sectors=65536)
    lab.proc("mounts", MOUNTS)
    return lab


def binder(host, **kw):
    return VfioBinder(host.sysfs(),
                      journal=host.root / "var/lib/hotplug-harness/vfio-journal.json", **kw)


@pytest.mark.parametrize("form", usbhost.FORMS)
def test_an_idle_stick_is_handed_over_with_the_journal_lock_held(stick, form):
    b = binder(stick)
    with usbhost.handed(b, STICK, form) as usb:
        assert (usb.name, usb.ids) == ("4-1", "0781:5567")
        lock = os.open(b.journal.path.with_name(b.journal.path.name + ".lock"), os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # another run cannot take it meanwhile
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(lock)


def test_a_stick_mounted_after_the_run_started_is_refused_at_its_plug(stick):
    stick.proc("mounts", MOUNTS + "/dev/sdd1 /media/backup vfat rw 0 0\n")
    with pytest.raises(HostDeviceError, match=r"refusing usb-host for stick \(USB 4-1 "
                                              r"\[0781:5567\]\): .*sdd1.*/media/backup"):
        with usbhost.handed(binder(stick, timeout=0.3), STICK, "busaddr"):
            pytest.fail("the plug must not happen")


def test_a_use_that_ends_within_the_settle_time_is_waited_out(stick):
    """Right after a guest gives a stick back, the host's drivers take it again and udev
    probes it: a use seen for a moment is read again before the plug is refused."""
    stick.proc("mounts", MOUNTS + "/dev/sdd1 /media/backup vfat rw 0 0\n")
    later = threading.Timer(0.3, stick.proc, ("mounts", MOUNTS))
    later.start()
    t0 = time.monotonic()
    with usbhost.handed(binder(stick, timeout=5.0), STICK, "busaddr") as usb:
        assert usb.name == "4-1" and 0.2 < time.monotonic() - t0 < 5.0
    later.join()


def test_another_device_at_the_address_is_refused(stick):
    stick.add_usb("4-2", 3, "046d:c52b", "USB Receiver", "Logitech")
    moved = SimpleNamespace(**{**vars(STICK), "hostaddr": 3})
    with pytest.raises(HostDeviceError, match="bus 4 address 3 is now 046d:c52b, not 0781:5567"):
        with usbhost.handed(binder(stick), moved, "busaddr"):
            pass
    gone = SimpleNamespace(**{**vars(STICK), "hostaddr": 9})
    with pytest.raises(HostDeviceError, match="no USB device at bus 4 address 9 any more"):
        with usbhost.handed(binder(stick), gone, "busaddr"):
            pass


def test_a_twin_plugged_since_the_start_makes_the_ids_form_refused(stick):
    stick.add_usb("4-2", 3, "0781:5567", "Cruzer Blade", "SanDisk", iface_driver="usb-storage")
    with pytest.raises(HostDeviceError, match=r"2 devices on this host have those ids "
                                              r"\(bus 4 addr 2, bus 4 addr 3\)"):
        with usbhost.handed(binder(stick), STICK, "vidpid"):
            pass
    with usbhost.handed(binder(stick), STICK, "busaddr") as usb:  # the address still names one
        assert usb.name == "4-1"


def test_a_disk_that_appears_below_the_stick_while_its_claim_rereads_is_refused(
        stick, monkeypatch):
    """(read 34a, finding 1, the usb-host side) A card reader's second LUN (a card pushed
    into its other slot, mounted by udisks2) appears below the device while its claim's
    re-reads take their seconds: it was never claimed nor judged, so the plug is refused,
    naming it."""
    from .test_host_idle_review31a import during_the_network_read

    def card_inserted():
        if not (stick.sys / "class/block/sde").exists():
            stick.add_disk("sde", stick.sys / "bus/usb/devices/4-1:1.0/host6/target6:0:0/"
                           "6:0:0:1", ("sde1",), sectors=65536)
            stick.proc("mounts", MOUNTS + "/dev/sde1 /media/alice/CARD vfat rw 0 0\n")
    calls = during_the_network_read(monkeypatch, 3, card_inserted)
    with pytest.raises(HostDeviceError, match=r"refusing usb-host for stick .*right before "
                                              r"QEMU opens it, /dev/sde appeared below it"):
        with usbhost.handed(binder(stick, timeout=0.3), STICK, "busaddr"):
            pytest.fail("the plug must not happen")
    assert len(calls) >= 3, "the plug read the network fewer than 3 times (the path changed?)"


# -- the hand-over journaled and given back (read 34a, finding 4) --------------------------------


def _journal_entries(host) -> list[dict]:
    import json
    path = host.root / "var/lib/hotplug-harness/vfio-journal.json"
    return json.loads(path.read_text())["entries"] if path.exists() else []


def _qemu_takes(host, iface: str = "4-1:1.0") -> None:
    """QEMU detaches usb-storage and claims the interface through usbfs."""
    usbfs = host.sys / "bus/usb/drivers/usbfs"
    usbfs.mkdir(parents=True, exist_ok=True)
    where = host.sys / "bus/usb/devices" / iface
    (where / "driver").unlink()
    os.symlink(os.path.relpath(usbfs, os.path.realpath(where)), where / "driver")


def _bind_file(host) -> None:
    (host.sys / "bus/usb/drivers/usb-storage/bind").write_text("")


def test_a_hand_over_is_journaled_while_qemu_has_the_device(stick):
    """Journaled before QEMU opens it: the device's identity and each interface's driver."""
    b = binder(stick)
    with usbhost.handed(b, STICK, "busaddr"):
        [e] = _journal_entries(stick)
        assert (e["kind"], e["bdf"], e["busnum"], e["devnum"], e["ids"]) == (
            "usb", "4-1", 4, 2, "0781:5567")
        assert e["interfaces"] == {"4-1:1.0": "usb-storage"} and e["path"].endswith("usb4/4-1")
        _qemu_takes(stick)
    assert len(_journal_entries(stick)) == 1  # (QEMU has it: nothing given back yet)


def test_a_clean_close_needs_no_write_and_drops_the_entry(stick):
    """device_del: QEMU binds usb-storage back itself (USBDEVFS_CONNECT); the plug's clean-up
    finds it there, writes nothing and drops the entry."""
    b = binder(stick)
    with usbhost.handed(b, STICK, "busaddr") as usb:
        pass
    [r] = b.usb.give_back(usb.name)
    assert r.status == "restored" and stick.writes == [] and _journal_entries(stick) == []


def test_an_interface_left_on_no_driver_is_bound_back_at_the_plugs_end(stick):
    _bind_file(stick)
    b = binder(stick, timeout=0.3)
    with usbhost.handed(b, STICK, "busaddr") as usb:
        _qemu_takes(stick)
    (stick.sys / "bus/usb/devices/4-1:1.0/driver").unlink()  # QEMU killed: usbfs lets go
    [r] = b.usb.give_back(usb.name)
    assert r.status == "restored" and "4-1:1.0 on usb-storage" in r.detail
    assert stick.writes == [("sys/bus/usb/drivers/usb-storage/bind", "4-1:1.0")]
    assert os.path.basename(os.readlink(stick.sys / "bus/usb/devices/4-1:1.0/driver")) == \
        "usb-storage"
    assert _journal_entries(stick) == []


def test_nothing_is_bound_while_a_process_holds_the_device(stick):
    """A QEMU not yet gone (its interfaces claimed, or released one by one as it exits) holds
    /dev/bus/usb/004/002: nothing is written, the entry stays; once it is gone, close() binds
    the interface back."""
    _bind_file(stick)
    b = binder(stick, timeout=0.3)
    with usbhost.handed(b, STICK, "busaddr") as usb:
        _qemu_takes(stick)
    (stick.sys / "bus/usb/devices/4-1:1.0/driver").unlink()
    stick.proc("4321/comm", "qemu-system-x86\n")
    (stick.root / "proc/4321/fd").mkdir(parents=True)
    os.symlink("/dev/bus/usb/004/002", stick.root / "proc/4321/fd/20")
    with pytest.raises(HostDeviceError, match=r"/dev/bus/usb/004/002 is open by pid 4321"):
        b.usb.give_back(usb.name)
    assert stick.writes == [] and len(_journal_entries(stick)) == 1
    os.unlink(stick.root / "proc/4321/fd/20")
    b.close()
    assert stick.writes == [("sys/bus/usb/drivers/usb-storage/bind", "4-1:1.0")]
    assert _journal_entries(stick) == []


def test_another_device_at_the_port_is_never_bound(stick):
    """The stick replugged (a new address) or another device in its port: not the device
    handed over, nothing written (the kernel probed the new one itself)."""
    _bind_file(stick)
    b = binder(stick, timeout=0.3)
    with usbhost.handed(b, STICK, "busaddr") as usb:
        _qemu_takes(stick)
    (stick.sys / "bus/usb/devices/4-1:1.0/driver").unlink()
    (stick.sys / "bus/usb/devices/4-1/devnum").write_text("5\n")  # replugged: address 5
    [r] = b.usb.give_back(usb.name)
    assert r.status == "gone" and "bus 4 address 5" in r.detail
    assert stick.writes == [] and _journal_entries(stick) == []


def test_restore_gives_back_a_hand_over_a_dead_run_left(stick):
    """A run killed with its QEMU (no clean-up of ours ran): the journal's entry is given back
    by `restore` (every session's start)."""
    from harness.host.binding import restore_from_journal
    _bind_file(stick)
    b = binder(stick, timeout=0.3)
    with usbhost.handed(b, STICK, "busaddr"):
        _qemu_takes(stick)
    (stick.sys / "bus/usb/devices/4-1:1.0/driver").unlink()
    journal = stick.root / "var/lib/hotplug-harness/vfio-journal.json"
    [e] = _journal_entries(stick)
    b.journal.write([{**e, "pid": 1, "pid_start": None}])  # (its run died)
    [r] = restore_from_journal(stick.sysfs(), journal, timeout=0.3)
    assert (r.bdf, r.status) == ("4-1", "restored")
    assert stick.writes == [("sys/bus/usb/drivers/usb-storage/bind", "4-1:1.0")]
    assert _journal_entries(stick) == []


def test_the_controller_of_a_handed_device_is_not_taken(stick):
    """While a hand-over below it is journaled (a live run's QEMU has it, or a dead run's left
    its interfaces on no driver), the xHCI above it is refused."""
    stick.file(f"proc/{os.getpid()}/stat", f"{os.getpid()} (pytest) S " + "0 " * 18 + "4242 0\n")
    b = binder(stick)
    with usbhost.handed(b, STICK, "busaddr"):
        _qemu_takes(stick)
    with pytest.raises(HostDeviceError, match=r"0000:07:00.0 \(group 14\) has the USB device "
                                              r"4-1 below it, handed to usb-host by pid"):
        binder(stick).bind("07:00.0", {"00:1d.0", "07:00.0"})
    [e] = _journal_entries(stick)
    b.journal.write([{**e, "pid": 1, "pid_start": None}])  # (its run died)
    with pytest.raises(HostDeviceError, match=r"which a run that died \(pid 1\) handed to "
                                              r"usb-host and did not give back") as refused:
        binder(stick).bind("07:00.0", {"00:1d.0", "07:00.0"})
    assert "python -m harness restore" in refused.value.hint


def test_a_failed_plug_is_given_back_at_once(stick):
    """device_add refused (QEMU closed the device again): the entry is dropped at once."""
    b = binder(stick)
    with pytest.raises(RuntimeError, match="device_add refused"):
        with usbhost.handed(b, STICK, "busaddr"):
            raise RuntimeError("device_add refused")
    assert _journal_entries(stick) == [] and stick.writes == []


@pytest.mark.parametrize("bad", [{"bdf": "../../x"}, {"path": "devices/../../etc/4-1"},
                                 {"interfaces": {"4-1:1.0": "../x"}},
                                 {"interfaces": {"5-1:1.0": "usb-storage"}}, {"busnum": "4"}])
def test_a_journal_with_a_bad_usb_entry_is_refused(stick, bad):
    from harness.host.binding import Journal
    good = {"kind": "usb", "bdf": "4-1", "busnum": 4, "devnum": 2, "ids": "0781:5567",
            "path": "devices/pci0000:00/0000:00:1d.0/0000:07:00.0/usb4/4-1",
            "interfaces": {"4-1:1.0": "usb-storage"}, "lease": "x", "pid": 1}
    jr = Journal(stick.root / "var/lib/hotplug-harness/vfio-journal.json")
    with jr.locked():  # (makes its folder)
        jr.write([good])
    with pytest.raises(HostDeviceError, match="refusing to write the vfio journal"):
        jr.write([{**good, **bad}])


def test_an_interface_the_kernel_bound_meanwhile_is_no_failure(stick):
    """QEMU's own give-back a moment late: the interface is bound by the time the harness's
    write lands (EBUSY), which is the outcome wanted."""
    _bind_file(stick)
    b = binder(stick, timeout=0.3)
    with usbhost.handed(b, STICK, "busaddr") as usb:
        _qemu_takes(stick)
    (stick.sys / "bus/usb/devices/4-1:1.0/driver").unlink()

    def late(rel, value):  # (the kernel binds it just before the write)
        if rel.endswith("usb-storage/bind"):
            stick._usb_bind(value, "usb-storage")
    stick.on_any_write = late
    [r] = b.usb.give_back(usb.name)
    assert r.status == "restored" and _journal_entries(stick) == []
