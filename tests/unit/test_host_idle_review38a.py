"""Issue 31, read 38a (storage, USB, IOMMU groups, SR-IOV, the bind's mechanics, the libvirt
hand-over), on main at 0498058. What it found: nothing it could show with a failing test in
the time it had. What it looked at, and why each held:

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

The control below shows the libvirt hand-over with a vfio variant driver loaded.
"""

from __future__ import annotations

import pytest

from . import fakesysfs
from .test_host_binding import journal
from .test_host_idle_review35a import SPDK, libvirt_round, spdk_drive

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
journal = journal  # (a fixture: the journal in the fake root's /var/lib)


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
