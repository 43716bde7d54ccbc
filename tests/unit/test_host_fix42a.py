"""Fix of read 42a (tests/unit/test_host_idle_review42a.py): what its tests do not cover.

A lease on a PCI function holds what is below it: a USB device below a function a vfio or
HOLD entry holds is not handed to usb-host, and a PF such an entry holds gets no VFs, whoever
holds it (a live run, a bind by hand, a run that died), each refusal naming that lease and
what to do; `plan` says the same of the USB device. A lease elsewhere leaves the device to
its hand-over. One run's xdist group of a USB device is its listed controller's group, and
its port path's when nothing above it is listed. A fake sysfs/proc tree plays the host (the
review's: a stick 4-1 below the uPD720202 at 07:00.0); no guest is booted."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from harness.core.errors import HostDeviceError
from harness.host import usbhost
from harness.host.binding import RESTORE_HINT, Journal
from harness.host.inventory import parse_inventory
from harness.host.plan import plan_inventory

from . import fakesysfs
from .test_host_idle_review42a import (ALLOWED, INVENTORY, PF, STICK, UPD, _binder, pf_host,
                                       stick)

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
_ = pf_host, stick  # fixtures
DEAD = 4194303  # no such process: the lease's run died


def _refusal(binder, do) -> HostDeviceError:
    """The refusal of ``do(binder)``, the binder closed after."""
    try:
        with pytest.raises(HostDeviceError) as e:
            do(binder)
    finally:
        binder.close()
    return e.value


def _hand_stick(binder):
    with usbhost.handed(binder, STICK, "busaddr"):
        pass


def _died(host) -> None:
    """The journal's run died: every entry's pid is one no process has."""
    jr = Journal(host.root / "var/lib/hotplug-harness/vfio-journal.json")
    with jr.locked():
        jr.write([{**e, "pid": DEAD} for e in jr.read()])


def test_a_dead_run_s_lease_on_the_controller_keeps_the_stick_for_restore(stick):
    _binder(stick).bind(UPD, ALLOWED, moved_by="libvirt")
    _died(stick)
    e = _refusal(_binder(stick, timeout=0.2), _hand_stick)
    assert f"below {UPD} (group 14)" in e.message and "a run that died" in e.message, e.message
    assert e.hint == RESTORE_HINT


def test_a_controller_bound_by_hand_keeps_the_stick_until_its_release(stick):
    _binder(stick, manual=True).bind(UPD, ALLOWED, moved_by="libvirt")
    e = _refusal(_binder(stick, timeout=0.2), _hand_stick)
    assert "bound by hand" in e.message and "release 07:00.0" in e.hint, (e.message, e.hint)


def test_a_lease_on_another_function_leaves_the_stick_to_its_hand_over(pf_host):
    a = _binder(pf_host)
    a.bind(PF, {PF}, moved_by="libvirt")
    b = _binder(pf_host)
    try:
        with usbhost.handed(b, STICK, "busaddr") as usb:
            assert usb.name == "4-1"
    finally:
        b.close()
        a.close()


def test_a_dead_run_s_lease_on_the_pf_keeps_its_vfs_for_restore(pf_host):
    _binder(pf_host).bind(PF, {PF}, moved_by="libvirt")
    _died(pf_host)
    e = _refusal(_binder(pf_host), lambda b: b.enable_vfs(PF, 2))
    assert f"VFs of {PF} (group 17)" in e.message and "a run that died" in e.message, e.message
    assert e.hint == RESTORE_HINT and pf_host.driver_of(PF) == "igb"
    assert not (pf_host.dev_dir(PF) / "virtfn0").exists()


def test_plan_refuses_the_stick_below_a_leased_controller(stick):
    a = _binder(stick)
    a.bind(UPD, ALLOWED, moved_by="libvirt")
    try:
        lines, ok = plan_inventory(stick.sysfs(), parse_inventory(INVENTORY,
                                                                  root=stick.sysfs()),
                                   journal=a.journal.path)
    finally:
        a.close()
    assert not ok
    assert any("REFUSED" in line and f"below {UPD}" in line for line in lines), lines


@pytest.mark.parametrize("inventory, group", [
    (INVENTORY.split("\n\n")[1], "usb-4-1"),  # the stick alone: its port path
    (INVENTORY.replace('bdf = "0000:07:00.0"\n', 'bdf = "0000:00:14.0"\n')
     .replace('companions = ["0000:00:1d.0"]\n', ""), "usb-4-1"),  # another controller
])
def test_a_usb_device_with_no_listed_function_above_it_keeps_its_port_path(
        stick, monkeypatch, inventory, group):
    from harness.run import backends

    monkeypatch.setattr(backends.Sysfs, "of", staticmethod(lambda root: stick.sysfs()))
    vfio = backends.Vfio(worker="gw0", qemu_binary="qemu-system-x86_64", pace=lambda s: s)
    vfio.inventory = parse_inventory(inventory, root=stick.sysfs())
    stick_entry = next(d for d in vfio.inventory.devices if d.name == "stick")
    assert vfio.resource_group(SimpleNamespace(entry=stick_entry)) == group
