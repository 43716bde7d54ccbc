"""Issue 31, read 38a (storage, USB, IOMMU groups, SR-IOV, the bind's mechanics, the libvirt
hand-over), on main at 0498058. What it found, one section below:

1. an NVMe controller whose NVM subsystem the host mounts from through *another* controller
   is proven idle and taken when the kernel runs without native NVMe multipath
   (``nvme_core.multipath=N``: RHEL 8's default, and what dm-multipath set-ups ask for).
   :meth:`HostUsage.verdict` judges the block devices below the function and, through
   :func:`harness.host.safety._nvme_heads`, every namespace head of each subsystem it has a
   controller in: with native multipath those are all of the subsystem's namespaces, so a
   dual-port drive's second controller (nvme1, no namespace of its own) is refused while the
   host mounts nvme0n1 through nvme0. With ``multipath=N`` the subsystem folder holds only
   the links to its controllers, and nvme0n1 sits below nvme0: nothing below nvme1, nothing
   in the subsystem, so nvme1 reads idle and goes to vfio-pci. Shape: a dual-port U.2/E3
   drive (``CMIC`` bit 0: Samsung PM1733/PM1735, Kioxia CM6/CM7)
   with both ports cabled to the host (an HA test bench, a dual-port backplane), on RHEL 8
   or with ``nvme_core.multipath=N``. The guest holds a primary controller of the subsystem
   the host writes: a Namespace Attachment of the host's (shared) namespace to it, a
   Sanitize (subsystem-wide: every namespace's data), a Format whose FNA covers all
   namespaces, a firmware activation or an NVM Subsystem Reset (nvme0 reset under the host's
   I/O). Safe: the same verdict either way: the disks of the subsystem's other controllers
   on the host are the subsystem's, judged for each of its controllers as its heads are.

The test asserts the safe behaviour and fails on 0498058; the controls show the same drive
refused with native multipath, both shapes taken (and given back) when nothing of the
subsystem is mounted, and the libvirt hand-over with a vfio variant driver loaded. A fake
sysfs/proc tree plays the host (:mod:`.fakesysfs`'s lab host); no guest is booted.

Looked at, no test (each held):

* read 37a's fix (:func:`harness.host.binding._libvirt_gives_back`, ``_probed_driver``,
  ``_may_hold_unseen_ids``): any loaded PCI driver without a ``pci:`` alias now counts as one
  that may hold unseen ids (built in or not), so before 6.18 (``pcieport`` always loaded, no
  built-in aliases) libvirt is never left a move. On 6.18 on: drivers with dynamic ids and
  aliases of their own (``vfio-pci.ids=``: its catch is put right by the release, which
  unbinds it from vfio-pci and binds the original by name; ``new_id`` written by
  ``dpdk-devbind.py``/SPDK's ``setup.sh`` to a kernel driver adds ids that driver's own
  table has already); vfio variant drivers (``mlx5_vfio_pci``, ``pds_vfio_pci``,
  ``virtio_vfio_pci``: only ``vfio_pci:`` aliases, so counted as aliasless: the harness
  moves; the control below); a module providing several PCI drivers (two picked: None);
  built-in module names (``KBUILD_MODNAME``, the ``module`` link) against the alias files'.
  A VF kept on its host driver by ``driver_override`` under a PF with
  ``sriov_drivers_autoprobe`` 0 comes back from libvirt's give-back on no driver
  (``pci_device_can_probe``), and the release's fallback (:func:`_restore_entry`: the
  override put back, then ``bind`` by name) gives it back: no harm (read from the kernel's
  code; the fake does not play ``sriov_drivers_autoprobe``, so no test).
* :func:`harness.host.safety.acs_off` and :func:`acs_override` against the kernel's grouping
  (``pci_acs_path_enabled``, ``get_pci_function_alias_group``): a sibling function with ACS
  switched off since boot while the target's stays on reaches the guest's device, not the
  host's; ``disable_acs_redir=``/``config_acs=`` show in the ACS control register, which
  ``acs_off`` reads.
* kept group members on no driver: a host driver that matches one later (a module loaded by
  hand) fails its probe since 5.19 (the group's DMA owner); on older kernels vfio's
  ``BUG_ON(vfio_group_nb_verify)`` fires, but a member left on no driver at boot has no
  autoloadable driver (udev's coldplug loads every module a modalias names): no shape.
* :mod:`harness.host.usbhost` (``find_for_plug``, ``proven_idle``, ``handed``),
  ``usb_verdict``'s ``_Subtree`` walk (the device's own usbfs node is below its folder, as a
  ``dev`` file: a libusb holder such as OpenOCD, NUT's usbhid-ups or pcscd shows), the judged
  USB drivers (a console on a USB serial port is in /proc/consoles; ``ldattach``/gpsd/pppd
  hold the tty they set a line discipline on; btusb, CAN, WWAN and HID sub-drivers are not
  judged: refused), ``_restore_usb``/``_same_usb``/``_bind_usb_interface``.
* storage: ``_claimed`` (O_EXCL on the whole disk fails while a partition is claimed, so the
  harness's own claim cannot hide a mount; zram's ``backing_dev`` opens with O_EXCL: EBUSY),
  hibernation's resume device (swap, already a use), NVMe generic nodes (``ng0n1``) and
  multipath heads, tape drives and enclosures (``st``, ``ses``: not in ``_BOUND_JUDGED``,
  refused).
* :mod:`harness.host.sriov` (``check_request``, ``set_numvfs``) and ``enable_vfs``'s reuse
  (each reused VF is proven idle by its own bind).
"""

from __future__ import annotations

import os

import pytest

from harness.core.errors import HostDeviceError
from harness.host.binding import VfioBinder
from harness.host.safety import HostUsage

from . import fakesysfs
from .test_host_binding import journal
from .test_host_idle_review35a import SPDK, libvirt_round, spdk_drive

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
journal = journal  # (a fixture: the journal in the fake root's /var/lib)


# -- control: the libvirt hand-over with a vfio variant driver loaded ----------------------

@pytest.mark.parametrize("variant", [None, "mlx5_vfio_pci"], ids=["none", "mlx5_vfio_pci"])
def test_a_vfio_variant_driver_loaded_leaves_the_move_to_the_harness(lab, journal, variant):
    """Control: an idle NVMe drive on nvme, no override, on a kernel whose alias files show
    every driver's ids (6.18 on), is libvirt's to move and give back; with a vfio variant
    driver loaded (``mlx5_vfio_pci``, whose ``modules.alias`` lines are ``vfio_pci:`` ones,
    none ``pci:``), the probed driver cannot be told and the harness moves it itself. Either
    way the drive is back on nvme with no override."""
    spdk_drive(lab, driver="nvme", override=None)
    if variant:
        lab.add_driver(variant)  # (no id table the fake's alias file would list)
    lease, results = libvirt_round(lab, journal)
    assert lease.left_to == (None if variant else "libvirt")
    assert [getattr(r, "status", r) for r in results] == ["restored"]
    assert (lab.driver_of(SPDK), lab.override_of(SPDK)) == ("nvme", None)


# -- 1. the other controller of the same NVMe subsystem -----------------------------------

CTRL_A, CTRL_B = "0000:08:00.0", "0000:09:00.0"


def two_controller_drive(lab, native: bool) -> None:
    """One NVMe subsystem (nvme-subsys0: a dual-port U.2 drive, ``CMIC`` bit 0, both ports
    cabled to this host) seen through two controllers: nvme0 at 08:00.0 and nvme1 at 09:00.0.
    Its one namespace is attached to nvme0 only, and the host mounts it on /srv/scratch;
    nvme1 has no namespace. ``native``: native NVMe multipath (the disk is the subsystem's
    head nvme0n1, the path nvme0c0n1 hidden below nvme0); else ``nvme_core.multipath=N``
    (RHEL 8's default, and the set-up dm-multipath asks for): the disk nvme0n1 sits below
    nvme0 itself. The subsystem, with a link to each controller, is there either way."""
    subsys = lab.sys / "devices/virtual/nvme-subsystem/nvme-subsys0"
    subsys.mkdir(parents=True)
    (lab.sys / "class/nvme").mkdir(parents=True, exist_ok=True)
    for n, (bdf, group) in enumerate(((CTRL_A, 20), (CTRL_B, 21))):
        lab.add_pci(bdf, "144d:a824", 0x010802, "nvme", group)
        ctrl = lab.dev_dir(bdf) / f"nvme/nvme{n}"
        ctrl.mkdir(parents=True)
        (ctrl / "dev").write_text(f"242:{n}\n")
        (ctrl / "uevent").write_text(f"MAJOR=242\nMINOR={n}\nDEVNAME=nvme{n}\n")
        os.symlink(ctrl, lab.sys / f"class/nvme/nvme{n}")
        os.symlink(ctrl, subsys / f"nvme{n}")
    a = lab.dev_dir(CTRL_A) / "nvme/nvme0"
    if native:
        (a / "nvme0c0n1").mkdir()
        (a / "nvme0c0n1/hidden").write_text("1\n")
        disk = lab.add_disk("nvme0n1", subsys.parent, majmin="259:0")  # (…/nvme-subsys0/…)
        os.rename(disk, subsys / "nvme0n1")
        os.unlink(lab.sys / "class/block/nvme0n1")
        os.unlink(lab.sys / "dev/block/259:0")
        os.symlink(subsys / "nvme0n1", lab.sys / "class/block/nvme0n1")
        os.symlink(subsys / "nvme0n1", lab.sys / "dev/block/259:0")
        (subsys / "nvme0n1/dev").write_text("259:0\n")
    else:
        disk = lab.add_disk("nvme0n1", a.parent.parent / "nvme/nvme0", majmin="259:0")
        os.rename(disk, a / "nvme0n1")
        os.unlink(lab.sys / "class/block/nvme0n1")
        os.unlink(lab.sys / "dev/block/259:0")
        os.symlink(a / "nvme0n1", lab.sys / "class/block/nvme0n1")
        os.symlink(a / "nvme0n1", lab.sys / "dev/block/259:0")
        (a / "nvme0n1/dev").write_text("259:0\n")
    lab.file("dev/nvme0n1")
    mounts = (lab.root / "proc/mounts").read_text() if (lab.root / "proc/mounts").exists() else ""
    lab.proc("mounts", mounts + "/dev/nvme0n1 /srv/scratch xfs rw,relatime 0 0\n")


JOURNAL = "var/lib/hotplug-harness/vfio-journal.json"


def test_a_controller_whose_subsystem_the_host_mounts_through_another_is_refused(lab):
    """Path: ``HostUsage.verdict`` -> ``_storage``: the disks judged are those below the
    function and the heads of its subsystems (:func:`harness.host.safety._nvme_heads`, which
    reads only the subsystem's own ``nvme*`` disks: native multipath's heads). With
    ``nvme_core.multipath=N`` the subsystem holds links to its controllers and no disk, and the
    host's namespace nvme0n1 sits below the *other* controller: nvme1 has none below it, reads
    idle, and is bound to vfio-pci. Its guest holds a primary controller of the subsystem the
    host mounts from: a Namespace Attachment of NSID 1 to it (the guest then writes the
    host's XFS), a Sanitize (subsystem-wide: every namespace's data), a Format with the
    drive's FNA "all namespaces", a firmware activation or an NVM Subsystem Reset (nvme0 reset
    under the host's I/O). Native multipath refuses the same drive, naming the mount (the
    control below). Safe: refused the same way, the sibling controller's disk named."""
    two_controller_drive(lab, native=False)
    v = HostUsage.read(lab.root).verdict(CTRL_B)
    assert not v.idle and any("nvme0n1" in u and "/srv/scratch" in u for u in v.uses), v
    with pytest.raises(HostDeviceError, match="nvme0n1"):
        VfioBinder(lab.sysfs(), journal=lab.root / JOURNAL).bind(CTRL_B, {CTRL_B})
    assert lab.driver_of(CTRL_B) == "nvme"


def test_with_native_multipath_the_same_controller_is_refused_already(lab):
    """Control: the same drive with native multipath: the subsystem's head nvme0n1 is judged
    for nvme1 too, and its mount refuses it (the rule the first test asks for)."""
    two_controller_drive(lab, native=True)
    v = HostUsage.read(lab.root).verdict(CTRL_B)
    assert "nvme0n1 is mounted on /srv/scratch" in v.uses
    with pytest.raises(HostDeviceError, match="nvme0n1 is mounted"):
        VfioBinder(lab.sysfs(), journal=lab.root / JOURNAL).bind(CTRL_B, {CTRL_B})


@pytest.mark.parametrize("native", [False, True], ids=["multipath-N", "native"])
def test_a_controller_whose_subsystem_holds_nothing_the_host_uses_is_taken(lab, native):
    """Control: nothing mounted from the subsystem: nvme1 is idle and taken, and given back."""
    two_controller_drive(lab, native=native)
    lab.proc("mounts", (lab.root / "proc/mounts").read_text().replace(
        "/dev/nvme0n1 /srv/scratch xfs rw,relatime 0 0\n", ""))
    assert HostUsage.read(lab.root).verdict(CTRL_B).idle
    with VfioBinder(lab.sysfs(), journal=lab.root / JOURNAL).bind(CTRL_B, {CTRL_B}):
        assert lab.driver_of(CTRL_B) == "vfio-pci"
    assert lab.driver_of(CTRL_B) == "nvme"
