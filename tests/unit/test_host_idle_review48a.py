"""Issue 31, read 48a (devices side: what decides a PCI function, USB device or IOMMU group
idle: storage, USB, IOMMU groups and companions, SR-IOV, the bind's mechanics), on main at
66867d9. What it found: nothing it could show with a failing test in the time it had (about
40 minutes of a 45-minute slot). One control below documents a spot it checked.

Looked at, no finding (each held, is a stated limit, an over-refusal, or not a real shape):

* Intel VMD (a RAID-class function, ``0x010400``, on ``vmd``: every 11th-gen-and-later
  Intel desktop or laptop with "RST premium"/VMD on in the firmware, and Xeon Scalable
  servers' NVMe slots): the NVMe drives behind it are PCI functions of a domain of its own
  (``10000:e1:00.0``), whose root bus the vmd driver parents on the VMD function, so they
  and their disks sit below it in sysfs. :class:`harness.host.safety._Subtree` sees the child
  function bound to ``nvme`` on the ``pci`` bus, which :data:`_BOUND_JUDGED` does not judge:
  the VMD function is refused whatever its drives do (control 1: a fail-closed over-refusal,
  not a finding). Native-multipath heads of those drives (``_nvme_heads``) are found by the
  prefix of the VMD's path, so a mounted head is named as well.
* The roles (:func:`harness.host.safety.role_of`): only NICs, USB host controllers
  (not 0xfe device controllers, not a USB4 NHI), SATA/SAS/RAID/IDE and NVMe functions are
  ever taken; a display function has no role (refused, with boot_vga and fbcon named).
* usb-host (:mod:`harness.host.usbhost`): the device is found again under the journal lock
  and proven again with no settle; hubs are refused by the inventory
  (:func:`harness.host.inventory.find_usb_device`); the hand-over is journaled before QEMU
  opens it; its disks are claimed and its nodes read again under the claim
  (``disks_claimed(..., [(refusing, usb.path)])``). Interfaces left on no driver are no
  use; an interface on ``usbfs`` (a libusb claim: NUT's usbhid-ups, DisplayLinkManager)
  is judged by the holders of ``/dev/bus/usb/BBB/DDD``, which the claimer keeps open.
* Storage shapes on a shared host: dm-multipath's checkers (multipathd keeps the paths open),
  a Ceph OSD's bluestore device (ceph-osd holds it open), RHEL 8's ``raw`` bindings (the raw
  driver's open is exclusive: :func:`harness.host.storage._claimed`), an inactive md array
  (its members keep ``holders/mdN``), a tape drive or SES enclosure (``st``/``ses`` on the
  scsi bus: not judged, refused), a swap partition kept only for hibernation (written only
  while it is active swap, which is then seen).
* Tool nodes below no device (:func:`_tool_node_uses`, :func:`_module_nodes`,
  :func:`_raw_access_uses`), /dev/mem and /dev/port, /proc/bus/pci and sysfs BARs
  (:meth:`HostUsage._bars`), including a VF's on no driver.
* The claims under the lock (:func:`harness.host.binding.disks_claimed`): an empty card
  reader or CD drive (ENOMEDIUM) is not claimed, so a card put in during the change's own
  window (QEMU's ``device_add``, vfio's unbind) can be automounted and lost: the same
  residual as a disk plugged in after :func:`_nothing_new_below`, which docs/vfio.md states;
  not a finding.
* ACS (:func:`harness.host.safety.acs_off`): only the target's own path to its root port
  matters for the guest's DMA; ACS switched off on a *sibling's* downstream port (GPUDirect
  set-ups) lets that host device reach the target peer to peer, not the guest reach the
  host. EHCI/UHCI companions (Intel ICH/PCH, AMD SB7xx/8xx, VIA, NEC uPD720101 cards) are
  one multifunction slot without ACS: one group, every companion listed and judged.
* SR-IOV (:meth:`VfioBinder.enable_vfs`): VFs that are there are reused with no write (no
  proof of the PF needed); a write only on a proven-idle PF with none, autoprobe off first;
  a PF that moves with VFs is refused before and under the claim (``vfs_removed``). SFs,
  vDPA devices, mdevs, RDMA and ptp auxiliary devices below a function are bound devices
  the rule does not judge: refused.
* usb-host give-back (``_restore_usb``): a guest that switches the device's mode
  (usb_modeswitch) or its configuration is reported (``gone`` / ``failed``), not passed.
* The bind's mechanics: :func:`harness.host.binding._move_to_vfio` (override, unbind,
  ``drivers_probe``; new_id on kernels before 3.16, EEXIST tolerated) and ``_put_back``
  (``remove_id``, the group's and every member's nodes held refuse the give-back, a driver
  that is neither vfio-pci nor the original is left as it is and reported failed).

Control 1 passes on 66867d9. A fake sysfs/proc tree plays the host (:mod:`.fakesysfs`'s lab
host); no guest is booted.
"""

from __future__ import annotations

from harness.host.safety import HostUsage

from . import fakesysfs

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
VMD = "0000:00:0e.0"
BEHIND = "10000:e1:00.0"


def test_1_control_a_vmd_function_with_an_nvme_drive_behind_it_is_refused(lab):
    """Intel VMD on ``vmd`` (8086:467f, class 0x010400), an NVMe drive behind it in a PCI domain
    of its own, on ``nvme``, its namespace nvme0n1 mounted by no one: the child function on a
    driver the rule does not judge keeps the VMD function (fail closed)."""
    lab.add_pci(VMD, "8086:467f", 0x010400, driver="vmd", group=40)
    nvme = lab.add_pci(BEHIND, "144d:a808", 0x010802, driver="nvme", parent=VMD)
    ctrl = nvme / "nvme" / "nvme0"
    ctrl.mkdir(parents=True)
    (ctrl / "dev").write_text("241:0\n")
    lab.add_disk("nvme0n1", ctrl, majmin="259:0")
    verdict = HostUsage.read(lab.sysfs()).verdict(VMD)
    assert not verdict.idle
    assert any(BEHIND in u and "nvme" in u for u in verdict.uses), verdict.uses
