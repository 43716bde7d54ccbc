"""Issue 31, read 43a (devices side: storage, USB, IOMMU groups, SR-IOV, the bind's mechanics,
the libvirt hand-over), on main at d4ffd14. What it found: nothing it could show with a
failing test in the time it had. One control below documents a spot it checked.

Looked at, no finding (each held, is a stated limit, an over-refusal, or not a real shape):

* fix 42a: :func:`harness.host.binding._refuse_below_leased` (``usb.path`` is resolved by
  :meth:`Sysfs.usb_devices`, so ``bdfs_in_path`` sees every function above, a Thunderbolt
  dock's xHCI included; the nearest entry first; a dead run's, a bind by hand's, a stale
  one's each named), :func:`_refuse_pf_leased` (every member the harness moves gets an entry,
  so a PF moved as another function's group member is refused too: the control below;
  a PF kept on no driver or ``pci-stub`` has no ``sriov_configure`` to write to),
  :meth:`harness.run.backends.Vfio.resource_group` (``pci_addresses`` includes companions, so
  a stick below a listed function's companion shares that group). A USB device below a
  controller this same binder leased is refused too (no own-lease exemption): an
  over-refusal.
* the re-reads under the claim (``_disks_claimed``/``_opened_since``/``_held_since``/
  ``_network_since``/``_nothing_new_below``) on the hand-over and the move; the libvirt
  give-back (``_libvirt_gives_back``, ``_probed_driver``, ``_give_back``), ``_put_back``,
  ``_move_to_vfio`` (driver_override and new_id paths, ``_new_id_strays``), ``vfs_removed``.
* usb-host: both forms give QEMU the proven device's bus and address (no standing ids
  filter); ``_restore_usb`` writes only to the same device (path, bus, address, ids).
  An address reused after the handed device re-enumerates would match QEMU's bus/address
  filter again only after the bus has cycled through its 127 addresses within one test: not
  a real window.
* ``_Subtree`` stops at a netdev's folder, so disks below a netdev (software FCoE's
  ``ctlr_0/hostN/.../sdX``, parented on the port's netdev) are not listed below the
  function; the port is refused anyway (fcoe and bnx2fc register a packet handler with the
  port as its device: /proc/net/ptype; and it must be up to carry FCoE).
* Intel 7/8-series PCH xHCI/EHCI port switching (XUSB2PR in the xHCI's config space, the
  EHCIs in groups of their own): the host's early PCI quirk switches every switchable port
  to the xHCI at boot whatever driver binds later, so no host device is left on an EHCI
  port a guest's xHCI driver could switch away; not shown to be a real shape.
* USB interface drivers: ``USB_DRIVERS_JUDGED`` (btusb, cdc_mbim, qmi_wwan,
  hid-logitech-dj, a CH341A in I2C/SPI mode: not listed, refused); serial line
  disciplines (slcand, ldattach, hciattach, btattach keep the tty open); storage stacks
  (aacraid's ``/dev/aac0`` and the other tool nodes; bcache, dm, md, LIO/nvmet passthru).
"""

from __future__ import annotations


from . import fakesysfs
from .test_host_idle_review42a import _binder, run_b, stick  # noqa: F401  (fixture)

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PORT0 = "0000:08:00.0"  # a dual-port 82576: both PFs in one IOMMU group (no ACS)
PORT1 = "0000:08:00.1"


def test_control_a_pf_moved_as_another_function_s_group_member_gets_no_vfs(stick):
    """Run A takes port 1 of a dual-port 82576 whose two functions share group 17 (port 0
    its companion): both move to vfio-pci, each journaled. Run B, whose inventory lists VFs
    of port 0, is refused (vfio-pci offers ``sriov_configure``: a write would succeed)."""
    stick.add_pci("0000:00:1c.6", "8086:a33e", 0x060400, "pcieport", 16)
    for bdf in (PORT0, PORT1):
        stick.add_pci(bdf, "8086:10c9", 0x020000, "igb", 17, parent="0000:00:1c.6")
    stick.sriov_capable(PORT0, 7)
    stick.add_net("enp8s0f0", PORT0)
    stick.add_net("enp8s0f1", PORT1)
    a = _binder(stick)
    lease = a.bind(PORT1, {PORT0, PORT1})
    assert set(lease.moved) == {PORT0, PORT1}
    b = _binder(stick)
    made, refused = run_b(b, a, lambda b: f"run B made VFs {b.enable_vfs(PORT0, 2)} of "
                                          f"{PORT0}, which run A holds")
    assert not made and PORT0 in refused, made or refused
