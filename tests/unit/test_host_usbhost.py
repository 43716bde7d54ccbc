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
