"""Issue 31, read 37a (storage, USB, IOMMU groups, SR-IOV, the bind's mechanics, the libvirt
hand-over). What it found, one section below each, on main at dc8e894:

1. read 35a/36a's fix (:func:`harness.host.binding._libvirt_gives_back`, ``_probed_driver``,
   ``_may_hold_unseen_ids``) leaves the move to libvirt when the one loaded driver whose
   aliases in ``modules.alias`` and ``modules.builtin.alias`` match the device is the driver
   it is on, and counts a driver with no alias as one that may hold unseen ids only when it
   is a loadable module (``/sys/module/M/initstate``). But ``modules.builtin.alias`` lists no
   ``pci:`` alias of a built-in driver on every kernel before 6.18 (``MODULE_DEVICE_TABLE``
   expands to nothing in code built in, so only ``MODULE_ALIAS()`` lines reach
   ``modules.builtin.modinfo``; aliases for built-in modules came with the 2025 series
   "modpost: Create modalias for builtin modules"): RHEL 8/9, Debian 12, Ubuntu 22.04/24.04,
   and any kernel a lab built itself before that. A built-in driver whose own id table
   matches the device is then invisible: not among the "matching", and skipped by
   ``_may_hold_unseen_ids`` as built in. It registered before every module, so libvirt's
   give-back (override cleared, unbind, ``drivers_probe``) hands the device to it. Shape: a
   kernel-development lab host booting a kernel built from ``x86_64_defconfig``
   (``CONFIG_R8169=y``; also ``E1000E``, ``TIGON3``, ``SKY2``, ``FORCEDETH`` built in), its
   Realtek RTL8111 NIC (10ec:8168) run on Realtek's own ``r8168`` (``r8168-dkms``: a module,
   its aliases in ``modules.alias`` from ``updates/dkms``); a built-in r8169 cannot be
   blacklisted and takes the NIC at boot, so it is moved by hand: ``driverctl set-override
   0000:0c:00.0 r8168`` (an override naming the driver it is on, which
   ``_libvirt_gives_back`` accepts) or ``echo ... > r8168/bind`` from a boot unit. Idle (its
   port down), taken with ``--driver libvirt --libvirt-managed yes``: libvirt's detach puts
   it on r8169 (a new netdev of the host's, which NetworkManager configures; driverctl's pin
   gone), ``_give_back`` waits for r8168 in vain, ``_restore_entry`` refuses a driver
   "neither vfio-pci nor its original", the release fails, and every session's `restore`
   after fails the same way until someone rebinds it by hand. Safe: a loaded built-in PCI
   driver whose aliases the alias files do not show (no ``pci:`` line for its module in
   ``modules.builtin.alias``: every built-in one before 6.18) may match the device, so the
   probed driver cannot be told: the harness moves it itself.

The tests assert the safe behaviour and fail on dc8e894; the controls show that the shape is
idle, that the harness's own move gives the same NIC back to r8168 with its override, and that
on a kernel whose ``modules.builtin.alias`` lists r8169's aliases the harness already moves it
itself. A fake sysfs/proc tree plays the host (:mod:`.fakesysfs`'s lab host) and libvirt's own
sysfs writes; no guest is booted.

Looked at, no test: a driver registered *after* the host driver (a module loaded later, with
``new_id`` or with ids of its own) cannot take the device at libvirt's ``drivers_probe``: the
kernel tries drivers in registration order, so only earlier ones matter (the built-in ones,
and modules loaded first); ``refuse_usb_handed`` and ``usbhost.handed`` (read 36b); the
override kept by driverctl and put back by ``_restore_entry`` after libvirt's give-back;
``handover``'s re-proof. A device on a built-in driver itself is safe (no alias: no driver
"probed", the harness moves it). An ifcvf/eni_vdpa virtio function under built-in
``virtio_pci`` has the same gap but no role (virtio-blk's class, a NIC with no interface): not
reachable.
"""

from __future__ import annotations

import os

import pytest

from harness.core.errors import HostDeviceError

from . import fakesysfs
from .test_host_binding import binder, entries, journal, libvirt_moves
from .test_host_idle_review9 import libvirt_guest
from .test_host_idle_review36a import probes_in_registration_order

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
journal = journal  # (a fixture: the journal in the fake root's /var/lib)


# -- 1. libvirt's give-back and a built-in driver's id table ----------------------------------

def libvirt_round(lab, journal, bdf: str):
    """bind with moved_by="libvirt", libvirt's attach under the hand-over, its detach
    (virPCIDeviceUnbindFromStub) when it moved the device, then the release."""
    b = binder(lab, journal, timeout=0.2)
    lease = b.bind(bdf, {bdf}, moved_by="libvirt")
    guest = libvirt_guest(lab, journal, {})
    with b.handover(lease):
        guest.device_add("vfio-pci", "nic0", bdf, managed="yes")
    assert lab.driver_of(bdf) == "vfio-pci"
    if lease.left_to == "libvirt":
        libvirt_moves(lab, bdf, None)
    try:
        return lease, lease.release()
    except HostDeviceError as e:
        return lease, [e]


# A NIC: r8169 built in (a kernel built from ``x86_64_defconfig``, as kernel-development lab
# hosts boot: ``CONFIG_R8169=y``), Realtek's own r8168 from ``r8168-dkms`` (a module, its
# aliases in ``modules.alias`` from ``updates/dkms``), which the host's Realtek NIC is put on
# by hand, since a built-in r8169 takes it at boot and cannot be blacklisted.

RTL = "0000:0c:00.0"  # added below: a Realtek RTL8111 NIC alone in group 32


def realtek_nic(lab, monkeypatch, override: str | None) -> None:
    """The RTL8111 (10ec:8168) on r8168 by ``driverctl set-override 0000:0c:00.0 r8168``
    (``override="r8168"``) or bound by hand (None); r8169 built in, its aliases in no alias
    file (before 6.18). Its port ``enp12s0`` down: no address, no route, no socket: idle."""
    lab.add_driver("r8169", ids={"10ec:8168"})
    lab.add_driver("r8168", ids={"10ec:8168"})
    release = os.uname().release
    alias = lab.root / f"lib/modules/{release}/modules.alias"
    alias.write_text("".join(line for line in alias.read_text().splitlines(keepends=True)
                             if not line.rstrip().endswith(" r8169")))
    lab.file(f"lib/modules/{release}/modules.builtin.alias",
             "alias crypto-crc32c crc32c_generic\nalias fs-ext4 ext4\n")
    lab.file("sys/module/r8168/initstate", "live\n")
    lab.add_pci(RTL, "10ec:8168", 0x020000, None, group=32)
    if override:
        (lab.dev_dir(RTL) / "driver_override").write_text(f"{override}\n")
    lab._bind(RTL, "r8168")
    lab.add_net("enp12s0", RTL)
    probes_in_registration_order(lab, monkeypatch, ["r8169", "r8168", "vfio-pci"])


@pytest.mark.parametrize("override", ["r8168", None], ids=["driverctl", "bound-by-hand"])
def test_a_nic_a_builtin_driver_matches_is_not_left_to_libvirts_give_back(
        lab, journal, monkeypatch, override):
    """Path: ``_libvirt_gives_back`` -> ``_probed_driver``: the modalias matches r8168's
    alias alone (r8169's id table is in no alias file, and ``_may_hold_unseen_ids`` skips it
    as built in: no ``initstate``), so libvirt moves the NIC; its detach clears the override
    and writes ``drivers_probe``, r8169 (built in, registered first) takes it (a new netdev
    of the host's, which NetworkManager configures), and the release finds it there and
    leaves it ("neither vfio-pci nor its original"). Safe: the harness moves it itself (its
    give-back binds through r8168's ``bind`` by name and puts the override back)."""
    realtek_nic(lab, monkeypatch, override)
    lease, results = libvirt_round(lab, journal, RTL)
    assert (lab.driver_of(RTL), lab.override_of(RTL)) == ("r8168", override), \
        f"left on {lab.driver_of(RTL)}: {results}"
    assert entries(journal) == []


@pytest.mark.parametrize("override", ["r8168", None], ids=["driverctl", "bound-by-hand"])
def test_the_harness_own_move_gives_the_nic_back_to_r8168(lab, journal, monkeypatch,
                                                          override):
    """Control: the harness's own move gives the NIC back to r8168 with its override."""
    realtek_nic(lab, monkeypatch, override)
    b = binder(lab, journal, timeout=0.2)
    lease = b.bind(RTL, {RTL})
    assert lab.driver_of(RTL) == "vfio-pci"
    results = lease.release()
    assert [r.status for r in results] == ["restored"]
    assert (lab.driver_of(RTL), lab.override_of(RTL)) == ("r8168", override)
    assert entries(journal) == []


def test_on_a_kernel_that_lists_builtin_aliases_the_harness_moves_it_itself(lab, journal,
                                                                            monkeypatch):
    """Control: the same host on a kernel whose ``modules.builtin.alias`` lists r8169's
    ``pci:`` aliases (6.18 on): two loaded drivers match, ``_probed_driver`` cannot tell, and
    the harness moves the NIC itself (``left_to`` None): the gap is the missing alias alone."""
    realtek_nic(lab, monkeypatch, "r8168")
    lab.file(f"lib/modules/{os.uname().release}/modules.builtin.alias",
             "alias pci:v000010ECd00008168sv*sd*bc*sc*i* r8169\n")
    lease, results = libvirt_round(lab, journal, RTL)
    assert lease.left_to is None
    assert [r.status for r in results] == ["restored"]
    assert (lab.driver_of(RTL), lab.override_of(RTL)) == ("r8168", "r8168")
