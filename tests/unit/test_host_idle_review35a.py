"""Issue 31, read 35a (storage, USB, IOMMU groups, SR-IOV, the bind's mechanics, the libvirt
hand-over). What it found, one section below each:

1. libvirt is left to move a device (``<hostdev managed='yes'>``) whenever it is on a host
   driver, alone in its group (:func:`harness.host.binding._libvirt_gives_back`), on the
   ground that libvirt's give-back (``driver_override`` cleared, unbind, ``drivers_probe``:
   virPCIDeviceUnbindFromStub) "puts the target back as it was only when a host driver had
   it". That holds only when the host driver is the one a probe picks by the ids. An NVMe
   drive whose driver was chosen by its ``driver_override`` (SPDK's ``scripts/setup.sh`` with
   ``DRIVER_OVERRIDE=uio_pci_generic``, ``dpdk-devbind.py``, ``driverctl set-override``: all
   write ``driver_override``), idle between two jobs (its /dev/uio0 open by nobody), comes
   back on the driver its ids match (``nvme``), with its override gone: the release then
   finds it on a driver that is neither vfio-pci nor its own, fails, and leaves it there;
   `restore` does the same at every session's start after, and raises (``Vfio.setup``), so
   every later vfio run on the host fails until someone rebinds the drive by hand.
   Meanwhile the drive's namespaces are the host's block devices (udev, LVM, mdadm and
   multipathd scan them). The harness's own move puts the override back
   (:func:`harness.host.binding._restore_entry`): it should move such a device itself. The
   same for a driver given the device by ``new_id`` and ``bind`` (older SPDK ``setup.sh``
   and ``dpdk_nic_bind.py``): two drivers match then, and libvirt's probe picks the one
   registered first (the in-kernel one). (A NIC on such a driver is refused already: it
   shows no interface.)

2. usb-host's hand-over never reads the journal's hand-overs: the PCI bind refuses a group
   another lease holds, live or left by a run that died (``refuse_foreign``), and a
   controller with a journaled hand-over below it (``_refuse_usb_below``), but
   :func:`harness.host.usbhost.handed` proves the device idle and hands it over with the
   journal lock held and looks at no entry of it. A QEMU that aborted or was killed (read
   34a, 4) leaves the device's interfaces on no driver and its run's entry in the journal,
   to be bound back by that run's plug clean-up (or its close, or `restore`); meanwhile the
   device reads idle (nothing bound, its usbfs node open by nobody), and another run (a
   parallel run on the same inventory, another xdist worker) hands it to its own guest,
   journaling "no driver" as what its interfaces had. The first run's give-back then finds
   the second's QEMU on the device and fails (its run reports a device not given back), and
   the stick stays off usb-storage until one of them gets to it later. Safe: the hand-over
   refuses a device the journal lists, naming whose it is (a live run: wait; a run that
   died: `restore`), as the PCI bind does. (A run that died leaves its entry for the next
   session's start; a run killed while another runs, SIGKILLed by a CI job's cancel or the
   OOM killer, leaves it to the living run's tests, whose workers never restore: the stick
   is handed over with "no driver" journaled, and stays off usb-storage after that guest.)

Each section's test asserts the safe behaviour and fails on 26c8ba4; the controls show that
the idle shape is still taken, and what the existing checks already catch. A fake sysfs/proc
tree plays the host (:mod:`.fakesysfs`'s lab host) and libvirt's own sysfs writes; no guest is
booted.

Looked at and found covered on 26c8ba4 (no test): read 34's fixes: ``disks_claimed``'s order
and ``_nothing_new_below`` (a disk replaced by one of the same name during the re-reads gets
another name on a real host: the claim's open keeps the old disk's index taken; an empty
drive opened O_NONBLOCK is claimed all the same, so ENOMEDIUM is rare), ``device_nodes`` in
the proof, the claim's re-read and ``_holders``; ``_representor`` (mlx5's older bare-number
``phys_port_name`` is unparsed: refused; SF representors; one in an unreadable namespace);
``_usb_entry``/``_same_usb``/``_restore_usb`` (a replug, another configuration, an
interface on usbfs, a holder of the usbfs node; the PCI side's ``_refuse_usb_below``);
``acs_off`` (only the target's path matters, as for the kernel's grouping); a VF on a
vfio-pci variant driver (``mlx5_vfio_pci``: refused, no interface); vfio device fds and
their BAR mappings after the fd is closed (``anon_inode:[vfio-device]`` in maps); kept
group members on no driver; ``_move_to_vfio``'s crash points against ``_restore_entry``.
"""

from __future__ import annotations

import os

import pytest

from harness.core.errors import HostDeviceError
from harness.host import usbhost

from . import fakesysfs
from .test_host_binding import binder, entries, journal, libvirt_moves
from .test_host_idle_review9 import libvirt_guest
from .test_host_usbhost import STICK, _bind_file, _journal_entries, _qemu_takes
from .test_host_usbhost import binder as usb_binder
from .test_host_usbhost import stick  # noqa: F401 (a fixture: the SanDisk stick, 4-1)

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
journal = journal  # (a fixture: the journal in the fake root's /var/lib)


# -- 1. libvirt's give-back and a driver chosen by driver_override ----------------------------

SPDK = "0000:08:00.0"  # added below: an NVMe drive alone in group 20


def spdk_drive(lab, driver: str = "uio_pci_generic", override: str | None = "uio_pci_generic"):
    """A Samsung NVMe drive SPDK's setup.sh (or driverctl, or dpdk-devbind.py) put on
    ``driver`` through its ``driver_override``: the in-kernel ``nvme`` matches its ids, the
    user-space I/O driver matches none. Its /dev/uio0 is open by nobody (the SPDK target is
    stopped between two jobs): idle."""
    lab.add_driver("nvme", ids={"144d:a808"})
    lab.add_driver(driver)
    lab.add_pci(SPDK, "144d:a808", 0x010802, None, group=20)
    if override:
        (lab.dev_dir(SPDK) / "driver_override").write_text(f"{override}\n")
    lab._bind(SPDK, driver)
    node = ("uio/uio0", "243:0", "uio0") if driver != "nvme" else ("nvme/nvme1", "240:1",
                                                                    "nvme1")
    where = lab.dev_dir(SPDK) / node[0]
    where.mkdir(parents=True)
    (where / "dev").write_text(f"{node[1]}\n")
    (where / "uevent").write_text(f"MAJOR={node[1].split(':')[0]}\nMINOR="
                                  f"{node[1].split(':')[1]}\nDEVNAME={node[2]}\n")
    lab.file(f"dev/{node[2]}")


def libvirt_round(lab, journal) -> tuple[object, list]:
    """bind with moved_by="libvirt", libvirt's attach (under the hand-over) and its detach
    (which gives back only what libvirt moved), then the release: the lease and the
    release's results (or its error)."""
    b = binder(lab, journal, timeout=0.2)
    lease = b.bind(SPDK, {SPDK}, moved_by="libvirt")
    seen: dict = {}
    guest = libvirt_guest(lab, journal, seen)
    with b.handover(lease):
        guest.device_add("vfio-pci", "nvme0", SPDK, managed="yes")
    assert lab.driver_of(SPDK) == "vfio-pci"
    if lease.left_to == "libvirt":
        libvirt_moves(lab, SPDK, None)  # detach-device: virPCIDeviceUnbindFromStub
    try:
        return lease, lease.release()
    except HostDeviceError as e:
        return lease, [e]


def test_a_drive_on_the_driver_its_override_chose_is_not_left_to_libvirts_give_back(lab,
                                                                                      journal):
    """SPDK's drive on uio_pci_generic by its driver_override, idle, taken with
    ``--driver libvirt --libvirt-managed yes``. Path: ``_libvirt_gives_back`` looks at the
    driver alone (not None, pci-stub or vfio-pci: libvirt's), so libvirt moves it; its
    detach clears the override and writes drivers_probe, and ``nvme`` (whose ids match)
    takes the drive; ``_give_back`` waits for uio_pci_generic in vain and ``_restore_entry``
    refuses to unbind a driver that is neither vfio-pci nor the original: the drive stays on
    nvme (its namespaces the host's block devices), its override gone. Safe: the harness
    moves it itself (``lease.left_to`` None), and gives it back to uio_pci_generic with its
    override."""
    spdk_drive(lab)
    lease, results = libvirt_round(lab, journal)
    assert (lab.driver_of(SPDK), lab.override_of(SPDK)) == \
        ("uio_pci_generic", "uio_pci_generic"), f"left on {lab.driver_of(SPDK)}: {results}"
    assert lease.left_to is None
    assert entries(journal) == []


def test_a_drive_bound_by_new_id_is_not_left_to_libvirts_give_back(lab, journal):
    """The same drive put on uio_pci_generic the older way, by the driver's ``new_id`` and
    ``bind`` (older SPDK ``setup.sh`` and ``dpdk_nic_bind.py``, the guides' ``echo "144d
    a808" > .../uio_pci_generic/new_id``): no override, and two drivers match its ids now.
    libvirt's ``drivers_probe`` gives it to the first registered that matches: ``nvme``,
    loaded at boot, long before uio_pci_generic (the fake probes in name order, which here
    is the same). Path and outcome as above: left on nvme, the release failed. Safe: the
    harness moves it (its own give-back binds by name through uio_pci_generic's ``bind``)."""
    spdk_drive(lab, override=None)
    lab.dynids["uio_pci_generic"].add("144d:a808")
    lease, results = libvirt_round(lab, journal)
    assert lab.driver_of(SPDK) == "uio_pci_generic", f"left on {lab.driver_of(SPDK)}: {results}"
    assert entries(journal) == []


def test_a_drive_whose_override_names_its_own_driver_is_given_back_with_it(lab, journal):
    """Control: driverctl pinned the drive to nvme itself (the driver its ids pick): libvirt's
    give-back brings it back on nvme, and the release puts the override back that libvirt
    cleared (``_give_back``: "its driver_override was not put back")."""
    spdk_drive(lab, driver="nvme", override="nvme")
    lease, results = libvirt_round(lab, journal)
    assert [getattr(r, "status", r) for r in results] == ["restored"]
    assert (lab.driver_of(SPDK), lab.override_of(SPDK)) == ("nvme", "nvme")
    assert entries(journal) == []


def test_a_drive_on_its_ids_driver_is_still_left_to_libvirt(lab, journal):
    """Control: the same drive on nvme with no override is libvirt's to move and give back."""
    spdk_drive(lab, driver="nvme", override=None)
    lease, results = libvirt_round(lab, journal)
    assert lease.left_to == "libvirt"
    assert [getattr(r, "status", r) for r in results] == ["restored"]
    assert (lab.driver_of(SPDK), lab.override_of(SPDK)) == ("nvme", None)


# -- 2. usb-host's hand-over and the journal's hand-overs -------------------------------------

def first_run_left_it(stick) -> list[dict]:
    """Run A (a binder of its own: another run's entries look like this) handed the stick to
    its guest; its QEMU was killed (an assertion in the device code a hotplug test hit), so
    usbfs let go of the interface and nothing bound usb-storage back: on no driver. Run A is
    alive (its stat file says so), its test not yet torn down."""
    stick.file(f"proc/{os.getpid()}/stat", f"{os.getpid()} (pytest) S " + "0 " * 18 + "4242 0\n")
    _bind_file(stick)
    a = usb_binder(stick, timeout=0.3)
    with usbhost.handed(a, STICK, "busaddr"):
        _qemu_takes(stick)
    (stick.sys / "bus/usb/devices/4-1:1.0/driver").unlink()  # QEMU killed: usbfs lets go
    return _journal_entries(stick)


def test_a_device_another_runs_killed_qemu_left_is_not_handed_over_again(stick):
    """Path: ``usbhost.handed`` -> ``proven_idle`` (4-1:1.0 on no driver, sdd gone with
    usb-storage, /dev/bus/usb/004/002 open by nobody: idle) -> ``UsbHandovers.handed``
    journals a second entry, its interface's driver "None"; nothing compares it with run
    A's. Safe: refused, naming run A's hand-over."""
    [a_entry] = first_run_left_it(stick)
    b = usb_binder(stick, timeout=0.3)
    with pytest.raises(HostDeviceError, match=r"4-1.*handed to usb-host by pid"):
        with usbhost.handed(b, STICK, "busaddr"):
            pytest.fail("run B's QEMU opened the device run A has not given back")


def test_a_device_a_dead_runs_qemu_left_is_not_handed_over_before_restore(stick):
    """The same, run A dead (its pid gone) and `restore` not run since (or refused: its
    give-back failed once): its entry is what binds usb-storage back; a hand-over now makes
    the host's stick run B's with "no driver" journaled. Safe: refused until `restore`."""
    [a_entry] = first_run_left_it(stick)
    usb_binder(stick).journal.write([{**a_entry, "pid": 1, "pid_start": None}])
    b = usb_binder(stick, timeout=0.3)
    with pytest.raises(HostDeviceError, match=r"4-1.*(run that died|restore)"):
        with usbhost.handed(b, STICK, "busaddr"):
            pytest.fail("run B's QEMU opened the device a dead run left on no driver")


def test_the_stick_given_back_is_handed_over_again(stick):
    """Control: once run A's give-back bound usb-storage back and dropped its entry, run B
    takes the idle stick."""
    first_run_left_it(stick)
    a = usb_binder(stick, timeout=0.3)
    a.journal.write([])  # (run A's clean-up: usb-storage bound back, entry dropped)
    os.symlink(os.path.relpath(stick.sys / "bus/usb/drivers/usb-storage",
                               os.path.realpath(stick.sys / "bus/usb/devices/4-1:1.0")),
               stick.sys / "bus/usb/devices/4-1:1.0/driver")
    with usbhost.handed(usb_binder(stick, timeout=0.3), STICK, "busaddr") as usb:
        assert usb.name == "4-1"
