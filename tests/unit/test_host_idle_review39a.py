"""Issue 31, read 39a (storage, USB, IOMMU groups, SR-IOV, the bind's mechanics, the libvirt
hand-over), on main at ab073e9. What it found, one section below:

1. a dual-ported SAS disk's *other* path held through its SCSI generic node. A disk cabled to
   two HBAs of the host without dm-multipath is two block devices with one world-wide id
   (sdd behind HBA A, sde behind HBA B), and :meth:`StorageView.use_of_block` follows the id
   to the twin (read 8's rule) but judges only the twin's *block* uses: mounts, swap,
   holders, block fds, the kernel's claim, exports. The twin's SCSI generic node
   (``/dev/sg5``, below HBA B's SCSI device, ``device/scsi_generic/sg5``; its bsg node too)
   is judged only for HBA B, the function it sits below. A libvirt guest that holds the
   disk through HBA B as a SCSI host device (``<hostdev mode='subsystem' type='scsi'>``:
   QEMU's ``scsi-generic`` opens /dev/sg5 and sends every command, reads, writes and SCSI-3
   persistent reservations, through SG_IO; the usual way a failover-cluster guest gets a
   shared JBOD disk) uses the disk with no block device open, so HBA A reads idle ("sdd:
   not mounted ... open by no process") and is moved to vfio-pci: the test guest that gets
   it sees the same disk and can write it, reset it, or pre-empt the cluster's reservation.
   ``sg_persist``, ``sg_dd``, ``sg_write_buffer`` on /dev/sg5 likewise. The bind's re-reads
   under the claim (``disks_below``, ``nodes_below``) miss it the same way, and the claim
   holds sdd alone, not the twin sde (fix 38a put an NVMe subsystem's other controllers'
   disks in ``disks_below``; a SAS twin is not). Shape: a storage or cluster lab's shared
   SAS JBOD (dual-ported SAS HDDs/SSDs, two mpt3sas HBAs cabled to both expanders' ports),
   dm-multipath not set up because the disks are meant for guests.
2. Intel's NIC firmware and EEPROM tools hold a node of their own driver that no rule names.
   Intel's Quartzville/LAN tools (``eeupdate64e``, ``lanconf64e``: MAC and EEPROM
   programming; ``bootutil64e``: the option ROM; ``nvmupdate64e`` where it is run through
   the QV driver, as OEM and manufacturing scripts do) work through Intel's QV driver,
   ``iqvlinux.ko`` (shipped with them, built by hand or packaged: StarlingX ships it, a
   buildroot package builds it from e1000's sourceforge): one node, /dev/iqvlinux, below no
   device, whose ioctls reach the configuration space of any function by bus/device/function
   and map any physical address (a NIC's BARs, its flash through them). An NVM update takes
   minutes, ports down or not. :func:`harness.host.safety._tool_node_uses` knows SAS/RAID
   drivers' nodes, nodes sharing four letters with the driver or its modules (``iqvlinux``
   shares one with ``ixgbe``/``i40e``/``ice``/``igb``) and Mellanox MFT's ``/dev/mst``
   (vendor ``15b3``) only: the idle Intel port is moved to vfio-pci (driver unbound,
   vfio-pci's and the guest's resets of the function) under a flash write, which can leave
   the card unbootable (its NVM in recovery mode) or its option ROM mismatched. Shape: a
   lab host with Intel NICs (the commonest) on a kernel where iqvlinux builds and works
   (RHEL 8/9's 4.18/5.14, Ubuntu 22.04's 5.15; on 6.8 and later bootutil falls back to
   /dev/mem, which :func:`_devmem` sees already) where someone programs a card's EEPROM,
   MAC or option ROM, or updates its NVM, while a run binds. (nvmupdate64e through the base
   driver, ethtool's EEPROM ioctl on a socket, has no node: not this finding.)

The tests assert the safe behaviour and fail on ab073e9; the controls show both HBAs idle
with nothing on either path, a block user of the other path (``<disk device='lun'>`` on
/dev/sde) refused already, and the 82599 port idle with iqvlinux loaded and held by no
one. A fake sysfs/proc tree plays the host (:mod:`.fakesysfs`'s lab host, two SAS HBAs
added; /proc/devices for the QV driver's major); no guest is booted.

Looked at, no test (each held, or is a stated limit, or an over-refusal):

* fix 38a, :func:`harness.host.safety._nvme_siblings`/``_nvme_heads``/``_nvme_char_heads``:
  the subsystem's controller links exist with ``nvme_core.multipath=N`` too; a private
  namespace below the other controller, its partitions (``use_of_block`` recurses), hidden
  ``nvmeXcYnZ`` paths (no node, not claimed), the claim and re-reads (``disks_below``,
  ``nodes_below``). A dual-port drive whose other port is on vfio-pci or no driver (SPDK)
  shows no subsystem at all: nothing on the host names the two as one drive (not a shape
  the harness can read; low likelihood).
* :func:`harness.host.binding._nothing_new_below`, ``disks_claimed``'s order, the
  ``_restore_entry`` paths after a failed move (a member never moved is left as it was; a
  holder of a node makes the give-back fail closed and keeps the entry), ``_move_to_vfio``
  with a stale driver name (another tool rebinding inside the residual window only).
* :func:`harness.host.safety.vfs_removed` (group members included, ``virtfn`` links and the
  count; drivers' ``max_vfs=`` still show ``sriov_numvfs``), ``_refuse_pf_of_vfs``,
  ``_restore_sriov``/``_vfs_not_idle`` (a VF a container's SR-IOV CNI holds is judged in
  its namespace; a VF in a libvirt guest is held through its group).
* switchdev representors (``_representor``, every namespace); Socket Direct/multi-host
  secondary functions and NPAR partitions (no interface of their own: unproven).
* usb-host hand-overs (``UsbHandovers``, ``refuse_usb_handed``, ``_refuse_usb_below``,
  ``_restore_usb``), USB judged drivers (cdc_acm, hiddev nodes, PipeWire's held
  ``controlC1`` while its PCM is suspended), EHCI/UHCI/OHCI companions (one slot, no ACS:
  one group, the companion with the keyboard judged as a member).
* storage users with no process fd: ext4/XFS external journals and log devices, bcachefs
  members, DRBD, pstore/blk and zram backing devices all take an exclusive claim, which
  ``_claimed`` sees on a real host (not on a fake tree).
* vendor tool nodes besides iqvlinux: Broadcom's ``bnxt_lfc`` (niccli, bnxtnvm) shares
  ``bnxt_`` with bnxt_en (the four-letter rule holds it); flashes through the driver
  (``devlink dev flash``, ``ethtool -f``) hold the devlink lock or RTNL, which the unbind
  waits for. Realtek's ``pgdrv`` (rtnicpg) would be another iqvlinux, not tested here.
* Intel VMD (class 0x0104): the NVMe functions of its domain sit below it, bound to nvme on
  the pci bus: refused as a driver not judged.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.host.safety import HostUsage, disks_below, nodes_below

from . import fakesysfs
from .fakesysfs import bind_outcome
from .test_host_binding import journal
from .test_host_idle_review31a import opened_during_the_network_read

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
journal = journal  # (a fixture: the journal in the fake root's /var/lib)


# -- 1. a dual-ported SAS disk whose other path's SCSI generic node a guest holds ----------------

HBA_A, HBA_B = "0000:0a:00.0", "0000:0b:00.0"
SAS_WWID = "naa.5000c500a1b2c3d4"


def _sas_disk(lab, hba: str, host: int, disk: str, majmin: str, sg: str, sg_majmin: str) -> Path:
    """A SAS disk behind ``hba`` (mpt3sas), as sysfs shows it: its SCSI device
    ``host:0:0:0`` with the block device ``disk`` and the generic node ``sg``, and the disk's
    world-wide id (VPD page 0x83) in ``device/wwid``."""
    scsi = lab.dev_dir(hba) / (f"host{host}/port-{host}:0/end_device-{host}:0/"
                               f"target{host}:0:0/{host}:0:0:0")
    d = lab.add_disk(disk, scsi, majmin=majmin)
    os.symlink(os.path.relpath(scsi, d), d / "device")
    (scsi / "wwid").write_text(f"{SAS_WWID}\n")
    node = scsi / "scsi_generic" / sg
    node.mkdir(parents=True)
    (node / "dev").write_text(f"{sg_majmin}\n")
    (node / "uevent").write_text(f"MAJOR={sg_majmin.split(':')[0]}\n"
                                 f"MINOR={sg_majmin.split(':')[1]}\nDEVNAME={sg}\n")
    return scsi


def dual_ported_disk(lab) -> None:
    """Two SAS HBAs (Broadcom SAS3008 on mpt3sas, 0a:00.0 and 0b:00.0, groups 20 and 21) and a
    dual-ported SAS disk of a shared JBOD cabled to both, no dm-multipath: sdd (8:48, /dev/sg4)
    through HBA A and sde (8:64, /dev/sg5) through HBA B, one world-wide id."""
    for bdf, group in ((HBA_A, 20), (HBA_B, 21)):
        lab.add_pci(bdf, "1000:0097", 0x010700, "mpt3sas", group)
    _sas_disk(lab, HBA_A, 10, "sdd", "8:48", "sg4", "21:4")
    _sas_disk(lab, HBA_B, 11, "sde", "8:64", "sg5", "21:5")


def holds(lab, pid: int, comm: str, path: str, fd: int = 23) -> None:
    lab.proc(f"{pid}/comm", f"{comm}\n")
    (lab.root / f"proc/{pid}/fd").mkdir(parents=True, exist_ok=True)
    os.symlink(path, lab.root / f"proc/{pid}/fd/{fd}")


def test_1_control_the_idle_dual_ported_disk_leaves_both_hbas_idle(lab):
    """Control: nothing holds either path of the disk: both HBAs are idle, and a block user of
    the other path (a QEMU with ``<disk type='block' device='lun'>`` on /dev/sde) keeps HBA A
    already (the world-wide id rule)."""
    dual_ported_disk(lab)
    assert HostUsage.read(lab.root).verdict(HBA_A).idle
    holds(lab, 4711, "qemu-system-x86", "/dev/sde")
    uses = HostUsage.read(lab.root).verdict(HBA_A).uses
    assert any("sdd is the same disk" in u and "pid 4711" in u for u in uses), uses


def test_1_the_other_paths_scsi_generic_node_held_by_a_guest_keeps_the_hba(lab, journal):
    """(finding 1) Host shape: a storage/cluster lab's shared SAS JBOD, each dual-ported disk
    cabled to two HBAs of the host (mpt3sas, no dm-multipath: the disks are meant for the
    guests). A libvirt guest of a failover cluster (Windows Server Failover Clustering, a
    Pacemaker node with ``fence_scsi``) holds the disk through HBA B as a SCSI host device,
    ``<hostdev mode='subsystem' type='scsi'>`` on 11:0:0:0: QEMU's ``scsi-generic`` opens
    /dev/sg5 and sends every command of the guest (reads, writes, SCSI-3 persistent
    reservations) through SG_IO, with no block device of the disk open. ``sg_persist``,
    ``sg_dd`` or a firmware tool (``sg_write_buffer``) on /dev/sg5 does the same.

    Path: :meth:`HostUsage.verdict` -> ``_storage`` -> :meth:`StorageView.use_of_block`
    follows the world-wide id to the twin sde, but judges only the twin's *block* uses
    (mounts, holders, block fds, its claim); the twin's SCSI generic (and bsg) node is judged
    only for the function it sits below (``_nodes`` of HBA B). So HBA A reads idle ("sdd: not
    mounted ... open by no process") and is moved to vfio-pci: the test guest that gets HBA A
    sees the same disk and can write it, reset it (a LUN or target reset through its own
    HBA) or break the cluster's reservation under the running cluster guest.

    Safe: the twin's device nodes below its SCSI device (``device/scsi_generic/*``,
    ``device/bsg/*``) are judged like its block node: open by a process = the disk is in use."""
    dual_ported_disk(lab)
    holds(lab, 4711, "qemu-system-x86", "/dev/sg5")
    v = HostUsage.read(lab.root).verdict(HBA_A)
    assert not v.idle and any("sg5" in u and "4711" in u for u in v.uses), (
        f"HBA A ({HBA_A}) was proven idle while its disk sdd is the disk a guest's QEMU drives "
        f"through the other path's /dev/sg5: {v}")
    refused, driver = bind_outcome(lab, journal, HBA_A, {HBA_A})
    assert refused and driver == "mpt3sas", (refused, driver)


@pytest.mark.parametrize("on_call", [2, 1], ids=["opened-during-the-last-read",
                                                 "opened-during-the-first-read"])
def test_1_the_other_paths_scsi_generic_node_opened_during_the_bind_keeps_the_hba(
        lab, journal, monkeypatch, on_call):
    """(finding 1, the re-read under the claim) The same shape, the cluster guest started while
    the bind's last proof reads the network (seconds any user can stretch): its QEMU opens
    /dev/sg5 then. The re-reads under the claim (:func:`harness.host.binding.disks_claimed`:
    ``_used_since`` on ``disks_below``, ``_nodes_opened_since`` on ``nodes_below``) look at
    sdd, its twin's *block* uses, and the nodes below HBA A (/dev/sg4) only, and the claim
    itself holds sdd alone: neither the twin's disk sde (a mount of it during the move
    succeeds, unlike the NVMe sibling's disk, which fix 38a put in ``disks_below``) nor its
    generic node is in the lists. On ab073e9 HBA A is moved with the guest on sg5 either
    way (opened during the first proof's read, the second proof, under the journal's lock,
    is the one that must refuse it once finding 1's proof is fixed; during the last read,
    only the re-reads under the claim can). Safe: ``disks_below`` and ``nodes_below`` of a
    function hold its disks' world-wide-id twins and their SCSI generic and bsg nodes, as
    they hold an NVMe subsystem's other controllers' disks and generic nodes."""
    dual_ported_disk(lab)
    path = lab.sysfs().pci_device(HBA_A).path
    calls = opened_during_the_network_read(lab, monkeypatch, on_call, "/dev/sg5")
    refused, driver = bind_outcome(lab, journal, HBA_A, {HBA_A})
    assert len(calls) >= 2
    assert "sg5" in refused and "4711" in refused and driver == "mpt3sas", (
        f"HBA A was moved to {driver} with the same disk's /dev/sg5 (through HBA B) open by a "
        f"guest's QEMU ({'refused: ' + refused if refused else 'not refused'}); the claim "
        f"lists {disks_below(lab.sysfs(), path)}, the nodes read again "
        f"{[n.name for n, _ in nodes_below(lab.sysfs(), path)]}")


# -- 2. Intel's NVM update / LAN tools reach every Intel NIC through /dev/iqvlinux --------------

PORT0, PORT1 = "0000:05:00.0", "0000:05:00.1"  # (the lab's 82599, ixgbe, group 12, both down)


def _iqvlinux(lab, held: bool) -> None:
    """Intel's QV driver loaded (``iqvlinux.ko``, from the NVM update package: a bare
    character major, 240 here, its node /dev/iqvlinux made by the tool with mknod), and, if
    ``held``, ``nvmupdate64e`` (pid 5150) running with it open."""
    lab.proc("devices", "Character devices:\n  1 mem\n  4 /dev/vc/0\n  4 tty\n 10 misc\n"
                        "189 usb_device\n240 iqvlinux\n\nBlock devices:\n  8 sd\n259 blkext\n")
    (lab.sys / "module/iqvlinux").mkdir(parents=True, exist_ok=True)
    if held:
        holds(lab, 5150, "nvmupdate64e", "/dev/iqvlinux", fd=3)


def test_2_control_the_qv_driver_loaded_and_held_by_nobody_leaves_the_port_idle(lab):
    """Control: iqvlinux loaded, its node open by no process: the down 82599 port is idle."""
    _iqvlinux(lab, held=False)
    assert HostUsage.read(lab.root).verdict(PORT0).idle


def test_2_a_nic_while_intels_nvm_update_tool_holds_iqvlinux_is_in_use(lab, journal):
    """(finding 2) Host shape: a lab host with Intel NICs (X710/XL710 on i40e, E810 on ice,
    82599/X550 on ixgbe, I350 on igb: the commonest server NICs), where someone programs a
    card's MAC or EEPROM (``eeupdate64e``, ``lanconf64e``), its option ROM (``bootutil64e``)
    or its NVM (``nvmupdate64e`` run through the QV driver, as OEM and manufacturing scripts
    do: ``insmod iqvlinux.ko`` first). These work through Intel's QV driver,
    ``iqvlinux.ko``, shipped with them: one node, /dev/iqvlinux (a bare character major, made
    by the tool), below no device, whose ioctls read and write the configuration space of
    any PCI function named by bus/device/function and map any physical address (the NIC's
    BARs, its flash through them). An update takes minutes, with the ports down or not (the
    tool asks for no link); the function it writes, and which of the host's Intel functions it
    inventories meanwhile, cannot be read from outside.

    Path: :meth:`HostUsage.verdict` -> :func:`harness.host.safety._tool_node_uses`: nodes of
    :data:`_DRIVER_NODES` (SAS/RAID drivers'), of :func:`_module_nodes` (a name sharing four
    letters with the driver, its module or a module it depends on: ``iqvlinux`` shares one
    with ``ixgbe``, ``i40e``, ``ice``, ``igb``) and of :data:`_VENDOR_NODES` (Mellanox's MFT
    only, ``15b3``). So a process holding /dev/iqvlinux is no use of anything, the idle port
    is moved to vfio-pci (the driver unbound, vfio-pci's reset of the function on QEMU's open,
    the guest's driver resetting it again) in the middle of a flash write: a half-written NVM
    image leaves the card unbootable ("NVM image is corrupt", recovery mode) or with a
    mismatched option ROM.

    Safe: a process holding a node of the QV driver (``iqvlinux`` in /proc/devices, by number,
    or the misc device of that name) keeps every Intel function (vendor 8086) the harness
    would take, as MFT's /dev/mst nodes keep every Mellanox one; better, as /dev/mem's open fd
    keeps every function (its ioctls reach any function's config space and any physical
    address): every function."""
    _iqvlinux(lab, held=True)
    v = HostUsage.read(lab.root).verdict(PORT0)
    assert not v.idle and any("iqvlinux" in u and "5150" in u for u in v.uses), (
        f"{PORT0} (Intel 82599, ixgbe) was proven idle while nvmupdate64e holds /dev/iqvlinux, "
        f"through which it writes Intel NICs' flash: {v}")
    refused, driver = bind_outcome(lab, journal, PORT0, {PORT0, PORT1})
    assert refused and driver == "ixgbe", (refused, driver)
