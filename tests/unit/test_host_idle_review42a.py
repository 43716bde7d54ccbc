"""Issue 31, read 42a (devices side: the re-reads under the claim, the USB hand-over, the
bind's mechanics, the give-back), on main at 723dbcf. What it found: nothing that fails,
in the time the read had (35 minutes, most of it reading). No test here is a finding.

Looked at, no test (each held, is a stated limit, or an over-refusal):

* fixes 40a/41a: :func:`harness.host.binding._disks_claimed` (``judged`` = every member but
  the bridges and libvirt's ``keep``; the target judged again at :meth:`VfioBinder.handover`,
  with this run's ``held_groups``), ``_opened_since`` -> ``_claimed_view`` (the no-disk view
  still reads exports, consoles, p2pmem, GPIO and the fds; only the mount table is left out,
  which no rule of :func:`safety.uses_below` reads), ``_held_since`` ->
  :func:`safety.uses_below` (``_vfio`` + ``_held``, the proof's own pieces, on a fresh
  ``_judged_tree``), ``_network_since`` (``network_uses``: a fresh ``_Subtree``, VFs' interfaces
  too; ``vfs_removed`` skipped only for a member on vfio-pci), ``_nothing_new_below`` (the
  judged members' disks listed again). ``uses_below`` counts ``storage.problems`` even for a
  group this run holds, where the proof does not: an over-refusal, not a finding.
* :func:`harness.host.usbhost.handed`: the same re-reads around QEMU's open, the device found
  again by bus/address with its ids, twins counted for the vidpid form; a USB device on
  ``usbip-host`` or any driver but ``usb`` judged from the device's own folder (the walk's
  root included). A device deauthorized by USBGuard (``authorized`` 0, unconfigured) reads
  idle and is handed over: no host use is lost (the kernel keeps it unconfigured), so none.
* the move and give-back: ``_move_to_vfio`` (a rebind between the proof under the lock and the
  unbind makes the ``unbind`` write fail and the moved members go back), ``_put_back`` (a
  device on a third driver is left as it is and reported; the override put back before the
  bind by name; ``_holders`` reads the group node, every member's nodes, iommufd's
  ``/dev/vfio/devices/vfioN`` below ``vfio-dev/``, and vfio device fds); a kept member bound
  to a host driver meanwhile cannot join a group a process owns (``driver_managed_dma``).
* SR-IOV: ``enable_vfs`` (autoprobe unreadable leaves the host's VF driver probing the new VFs,
  which each bind then proves like any function: fail closed), a PF on vfio-pci with VFs (the
  proof refuses a VF on vfio-pci; vfio-pci's ``enable_sriov`` shape, too rare to count).
* ``disks_claimed``'s ENOMEDIUM skip (an empty card reader or optical drive is not claimed; a
  medium inserted and automounted during the last read is the arrival residual
  docs/vfio.md states).
"""
