"""Issue 31, read 42a (devices side: the re-reads under the claim, the USB hand-over, the
bind's mechanics, the give-back), on main at 723dbcf. What it found, one section below:

1. (a, low likelihood, and fail closed for the host: a run's lease broken by another run)
   A USB device below a PCI controller that a live run has leased for libvirt to move is
   handed to another run's usb-host. With ``--driver libvirt --libvirt-managed yes``,
   :meth:`harness.host.binding.VfioBinder.bind` proves an xHCI idle, journals it
   (``moved_by: libvirt``) and *leaves it on xhci_hcd* until :meth:`VfioBinder.handover`,
   right before ``attach-device`` (:func:`binding._libvirt_gives_back`: the controller alone
   in its group, on the driver a probe picks: on Linux 6.18 and later, where built-in
   drivers have aliases). Between the two, the USB devices below it are still on the host,
   and :func:`harness.host.usbhost.handed` -> :func:`binding.refuse_usb_handed` looks only at
   the journal's *USB* entries: the PCI lease of the controller above the device is not
   looked at, where :func:`binding.refuse_foreign` -> ``_refuse_usb_below`` refuses the
   reverse (a controller above a handed device). So run B (another xdist worker of the same
   session, or another session on the host journal) hands the stick to its QEMU while run A's
   lease holds the xHCI; A's handover then finds the stick open by B's QEMU and refuses: A's
   test fails for B's doing, naming B's QEMU, a lease that did not hold. (The host keeps its
   devices: A's handover re-proof is under the journal lock and reads the node open. Not
   worse than that, hence "fail closed"; the lease is what is broken.) Shape: an inventory
   with a ``usb-controller`` entry (an add-in uPD720202/ASM3142 card alone in its group,
   ``managed = "yes"``) and a ``usb-device`` entry for a stick or serial adapter plugged
   into that card (the usb-controller entry's own ``product`` names a device behind it the
   guest must see: the natural one to also list as a usb-device), with pytest-xdist.
   Safe: ``refuse_usb_handed`` (or ``usbhost.handed``) refuses a USB device with a PCI
   function above it that a journal entry of another lease holds (``moved_by`` or not, live
   or dead), as ``_refuse_usb_below`` does the other way. The same lease is broken the same
   way by :meth:`VfioBinder.enable_vfs` (test 1b): a PF leased for libvirt (left on igb) gets
   VFs from another run whose inventory lists VFs of it (it reads no PCI entry of the PF),
   and the lease's handover then refuses it (``vfs_removed``). Safe: ``enable_vfs`` refuses
   a PF another lease's entry holds, as ``_refuse_pf_of_vfs`` does the other way.
   Nor does this need two sessions (test 1c): one run's xdist scheduling
   (:meth:`harness.run.backends.Vfio.resource_group`, "one physical resource, one worker at
   a time") groups a PCI entry by its IOMMU group and a USB entry by its port path, so the
   controller's tests and the stick's go to two workers at once (the inventory takes both
   entries; nothing in ``load_inventory`` or ``doctor`` says one is below the other). With
   the harness's own move the two still collide, fail closed (the later one is refused:
   ``_refuse_usb_below``, or "no USB device at bus 4 address 2 any more"): a test failure
   the run made for itself; with libvirt's, it is the lease holder that fails. Safe: a USB
   device below a PCI function the inventory lists shares that function's xdist group.

The tests assert the safe behaviour and fail on 723dbcf; the control shows the same stick
handed over when no lease holds its controller. A fake sysfs/proc tree plays the host
(:mod:`.fakesysfs`'s lab host, a stick 4-1 below the uPD720202 at 07:00.0, group 14 with its
root port); no guest is booted.

Looked at, no test (each held, is a stated limit, or an over-refusal):

* fixes 40a/41a: :func:`harness.host.binding._disks_claimed` (``judged`` = every member but
  the bridges and libvirt's ``keep``; the target judged again at ``handover``, with this
  run's ``held_groups``), ``_opened_since`` -> ``_claimed_view`` (the no-disk view still
  reads exports, consoles, p2pmem, GPIO and the fds; only the mount table is left out,
  which no rule of :func:`safety.uses_below` reads), ``_held_since`` ->
  :func:`safety.uses_below` (``_vfio`` + ``_held``, the proof's own pieces, on a fresh
  ``_judged_tree``), ``_network_since`` (``network_uses``: a fresh ``_Subtree``, VFs'
  interfaces too; ``vfs_removed`` skipped only for a member on vfio-pci),
  ``_nothing_new_below``. ``uses_below`` counts ``storage.problems`` even for a group this
  run holds, where the proof does not: an over-refusal.
* the move and give-back: ``_move_to_vfio`` (a rebind between the proof under the lock and
  the unbind makes the ``unbind`` write fail and the moved members go back), ``_put_back``
  (a device on a third driver is left and reported; the override put back before the bind
  by name; its ``drivers_probe`` fallback runs only when the original driver is no longer
  registered, then ``_wait_driver`` fails it), ``_holders`` (group node, every member's
  nodes, iommufd's ``vfio-dev/vfioN``, vfio device fds); a kept member bound to a host
  driver meanwhile cannot join a group a process owns (``driver_managed_dma``).
* SR-IOV: ``enable_vfs``/``_restore_sriov``/``_vfs_not_idle``/``_live_users_of_vfs``
  (a run that relies on another's VFs keeps the count; the maker's entry stays for
  ``restore``: stated); a PF kept on no driver with VFs left by ``pci_vfs_assigned``
  (ixgbe's remove keeps assigned VFs) is not unbound by the move.
* IOMMU groups and ACS: ``acs_off`` reads the target's path only; a sibling downstream
  port's ACS off lets host devices reach the target, not the target the host (the kernel's
  rule too). Intel VMD (class 0x0104, its NVMe drives in a domain below it): the child
  functions are bound to ``nvme``/``pcieport`` on the pci bus, which ``_BOUND_JUDGED`` does
  not list: refused (fail closed).
* storage kernel openers that claim (zram backing_dev, block2mtd, DRBD, f2fs devices,
  pscsi): ``_claimed`` on a real host; usbmon's debugfs text files matched by path only
  (debugfs elsewhere than /sys/kernel/debug: rare, and a capture is no host use lost).
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from harness.core.errors import HostDeviceError
from harness.host import usbhost
from harness.host.binding import VfioBinder

from . import fakesysfs
from .test_host_usbhost import STICK  # (its SanDisk stick, on 4-1)

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
UPD = "0000:07:00.0"  # uPD720202 xHCI, group 14 with its root port 00:1d.0 (kept)
ALLOWED = {"00:1d.0", "07:00.0"}


@pytest.fixture
def stick(lab):
    iface = lab.add_usb("4-1", 2, "0781:5567", "Cruzer Blade", "SanDisk",
                        iface_driver="usb-storage")
    lab.add_disk("sdd", iface / "host6/target6:0:0/6:0:0:0", ("sdd1",), sectors=65536)
    lab.proc("mounts", "/dev/sda2 / ext4 rw,relatime 0 0\n")
    # (this process is a live run: its journal entries hold)
    lab.file(f"proc/{os.getpid()}/stat", f"{os.getpid()} (pytest) S " + "0 " * 18 + "4242 0\n")
    return lab


def _binder(host, **kw):
    return VfioBinder(host.sysfs(),
                      journal=host.root / "var/lib/hotplug-harness/vfio-journal.json", **kw)


def test_1_a_usb_device_below_a_controller_leased_for_libvirt_is_not_handed_over(stick):
    """Run A binds the xHCI for libvirt to move (``managed = "yes"``): journaled, left on
    xhci_hcd until its handover. Run B's usb-host hand-over of the stick below it must be
    refused while A's lease holds the controller, as A's bind would be refused while B's
    hand-over holds the stick (``_refuse_usb_below``)."""
    a = _binder(stick)
    lease = a.bind(UPD, ALLOWED, moved_by="libvirt")
    assert lease.left_to == "libvirt" and stick.driver_of(UPD) == "xhci_hcd"
    b = _binder(stick, timeout=0.2)
    def hand(b):
        with usbhost.handed(b, STICK, "busaddr") as usb:
            return f"run B's QEMU opened USB {usb.name} below {UPD}, which run A holds"

    handed, refused = run_b(b, a, hand)
    assert not handed and UPD in refused, handed or refused


def run_b(b, a, do) -> "tuple[str, str]":
    """Run B's ``do(b)`` while run A (binder ``a``) holds its lease: (what B did, or ""; its
    refusal, or ""), both binders closed after (a refused give-back of a lease left in use
    is no matter here)."""
    done = refused = ""
    try:
        done = do(b)
    except HostDeviceError as e:
        refused = e.message
    finally:
        for binder in (b, a):
            try:
                binder.close()
            except HostDeviceError:
                pass
    return done, refused


def test_1_control_with_no_lease_on_its_controller_the_stick_is_handed_over(stick):
    b = _binder(stick)
    try:
        with usbhost.handed(b, STICK, "busaddr") as usb:
            assert usb.name == "4-1"
    finally:
        b.close()


PF = "0000:08:00.0"  # an 82576 (igb, SR-IOV) alone in group 17, as test_host_sriov's host


@pytest.fixture
def pf_host(stick):
    stick.add_pci("0000:00:1c.6", "8086:a33e", 0x060400, "pcieport", 16)
    stick.add_pci(PF, "8086:10c9", 0x020000, "igb", 17, parent="0000:00:1c.6")
    stick.sriov_capable(PF, 7)
    stick.add_net("enp8s0", PF)  # down, no address: idle
    return stick


def test_1b_a_pf_leased_for_libvirt_gets_no_vfs_from_another_run(pf_host):
    """The same lease, the other way into it: run A binds the 82576 PF itself for libvirt to
    move (left on igb until its handover); run B, whose inventory lists VFs of that PF,
    writes its ``sriov_numvfs`` (:meth:`VfioBinder.enable_vfs` reads no PCI lease of the
    PF). A's handover then refuses the PF (it has VFs now: ``vfs_removed``) and A's test
    fails for B's doing. Safe: ``enable_vfs`` refuses a PF that another lease's journal
    entry holds (as ``refuse_foreign`` -> ``_refuse_pf_of_vfs`` refuses the other way)."""
    a = _binder(pf_host)
    lease = a.bind(PF, {PF}, moved_by="libvirt")
    assert lease.left_to == "libvirt" and pf_host.driver_of(PF) == "igb"
    b = _binder(pf_host)
    made, refused = run_b(b, a, lambda b: f"run B made VFs {b.enable_vfs(PF, 2)} of {PF}, "
                                          "which run A holds")
    assert not made and PF in refused, made or refused


INVENTORY = """\
[[device]]
role = "usb-controller"
bdf = "0000:07:00.0"
companions = ["0000:00:1d.0"]
product = "Cruzer Blade"

[[device]]
role = "usb-device"
name = "stick"
hostbus = 4
hostaddr = 2
"""


def test_1c_one_run_puts_a_usb_device_and_the_controller_above_it_on_two_workers(
        stick, monkeypatch):
    """Why the collision of test 1 needs no second session: within one run, the xdist group
    of a test (:meth:`harness.run.backends.Vfio.resource_group`, "one physical resource, one
    worker at a time") is the IOMMU group for a PCI entry and the USB port path for a USB
    entry, so the uPD720202's tests (``iommu-group-14``) and the stick's below it
    (``usb-4-1``) go to two workers at once, each with a binder of its own. Safe: a USB
    device whose controller (or any PCI function above it) the inventory lists is in that
    function's group (the one resource it is part of)."""
    from harness.host.inventory import parse_inventory
    from harness.run import backends

    monkeypatch.setattr(backends.Sysfs, "of", staticmethod(lambda root: stick.sysfs()))
    inv = parse_inventory(INVENTORY, root=stick.sysfs())
    vfio = backends.Vfio(worker="gw0", qemu_binary="qemu-system-x86_64", pace=lambda s: s)
    vfio.inventory = inv
    groups = {d.name: vfio.resource_group(SimpleNamespace(entry=d)) for d in inv.devices}
    assert groups["stick"] == groups[inv.devices[0].name], groups
