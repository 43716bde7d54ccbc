"""Issue 31, read 34a (storage, USB, display, IOMMU groups, SR-IOV, the bind's mechanics, the
libvirt hand-over). What it found, one section below each:

1. the claim's re-reads (reads 31a, 32a, 33a: ``_used_since``, ``_nodes_opened_since``,
   ``_network_since``) judge the disks and device nodes that were below what moves when
   the claim began (``disks_below`` is listed once, before the claims): a disk that appears
   below a USB controller or an AHCI controller during those reads (a stick plugged into the
   spare USB card's port and automounted by udisks2; a drive pushed into a hot-swap bay or
   eSATA port and assembled by mdadm's udev rule ``--incremental``) is neither claimed nor
   read, and the controller is unbound under its mount.

Each section's test asserts the safe behaviour and fails on 92b5fc7; the controls show that
the idle shape is still taken, and what the existing re-reads already catch. A fake sysfs/proc
tree plays the host (:mod:`.fakesysfs`'s lab host); no guest is booted.
"""

from __future__ import annotations

import pytest

from . import fakesysfs
from .test_host_idle_review31a import _bind, during_the_network_read
from .test_host_usbhost import MOUNTS

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures (a fake sysfs lab host)

UPD = "0000:07:00.0"  # the lab's uPD720202 xHCI (USB bus 4, nothing on it), group 14
ASM = "0000:06:00.0"  # the lab's ASM1062 SATA controller (sdb, not mounted), group 13


# -- 1. a disk that appears below what moves while the claim's re-reads take their seconds -----


def _stick_plugged(lab) -> None:
    """A colleague's SanDisk stick plugged into the uPD720202's port (4-1), sdd below it on
    usb-storage, and udisks2 mounts its sdd1 on /media/alice/STICK."""
    iface = lab.add_usb("4-1", 2, "0781:5567", "Cruzer Blade", "SanDisk",
                        iface_driver="usb-storage")
    lab.add_disk("sdd", iface / "host7/target7:0:0/7:0:0:0", ("sdd1",), sectors=65536)
    lab.proc("mounts", MOUNTS + "/dev/sdd1 /media/alice/STICK vfat rw,nosuid,nodev 0 0\n")


def _drive_inserted(lab) -> None:
    """A drive pushed into the ASM1062's second port (an eSATA port, a hot-swap bay): sde,
    whose partition mdadm's udev rule assembles into md127 (``mdadm --incremental``), and
    md127 is mounted on /srv/scratch."""
    lab.add_disk("sde", lab.sata_port(ASM, 1), ("sde1",), sectors=65536)
    lab.add_dm("md127", "md127", ["sde1"])  # (a holder of sde1, as md's slaves/holders are)
    lab.proc("mounts", MOUNTS + "/dev/md127 /srv/scratch ext4 rw,relatime 0 0\n")


@pytest.mark.parametrize("on_call", [3, 2], ids=["during-the-claims-network-read",
                                                 "control-during-the-proofs-network-read"])
def test_1_a_stick_plugged_while_the_claim_rereads_is_not_unbound(lab, fake_root, monkeypatch,
                                                                  on_call):
    """(a, low likelihood: the host's own activity in a window of seconds that any local user
    stretches) Host shape: the lab's uPD720202 xHCI (07:00.0, group 14 with its root port;
    listed), nothing on its ports: idle at the proof, under the journal lock. The bind then
    lists the disks below what moves (none), claims them, reads the storage and every
    process's fds again for the nodes below (``_nodes_opened_since``) and then the network
    (``_network_since``, read 33a's fix: ``ip`` in every namespace, whose budget any user
    fills). Meanwhile a colleague plugs a USB stick into the card's port (the card's ports
    are on the back of the lab host, beside the host's own), and udisks2 (a desktop session
    on the host, or an ``x-systemd.automount``/udev-rule mount) mounts it.

    Path: :meth:`VfioBinder.bind` -> ``_move_all`` -> ``_disks_claimed``: ``disks_below``
    is listed once, before the claims; ``_used_since`` judges that list only, and
    ``_nodes_opened_since``/``_network_since`` look at nodes and interfaces, not at disks.
    Nothing lists the disks below the controller again, so a disk that arrives during the
    re-reads is neither claimed nor judged: xhci_hcd is unbound with sdd1 mounted (the
    stick's filesystem is lost with its dirty pages; the colleague's copy fails).

    On 92b5fc7: 07:00.0 goes to vfio-pci with sdd1 mounted. The control (the stick
    plugged during the proof's own network read) is refused by the claim's storage re-read.
    Fix: in ``binding.disks_claimed``, after ``_network_since``, list ``disks_below`` (and
    ``nodes_below``) of every path in ``below`` again and refuse any disk or node not in
    the claimed lists; better, claim the USB side too: write 0 to ``authorized_default`` of
    each root hub below a USB controller that moves (and ``authorized`` of nothing else)
    before the claims, so that a device plugged meanwhile gets no interface driver (no disk,
    no interface), put back if the bind refuses (the root hub goes away with the move, and
    comes back with the kernel's default at the give-back). An AHCI port (finding 1's second
    test) has no such switch: there the list must be read again right before the unbind."""
    calls = during_the_network_read(monkeypatch, on_call, lambda: _stick_plugged(lab)
                                    if not (lab.sys / "bus/usb/devices/4-1").exists() else None)
    refused, driver = _bind(lab, fake_root, UPD)
    assert len(calls) >= on_call, "the bind read the network fewer times (the path changed?)"
    assert "sdd" in refused and driver == "xhci_hcd", (
        f"07:00.0 went to {driver} with the stick's sdd1 mounted on /media/alice/STICK since "
        f"the claim began ({'refused: ' + refused if refused else 'not refused'})")


def test_1_a_drive_inserted_while_the_claim_rereads_is_not_unbound(lab, fake_root, monkeypatch):
    """(a, low likelihood, as above) Host shape: the lab's ASM1062 (06:00.0, group 13, listed)
    with sdb idle, its second port empty (an eSATA bracket, a hot-swap bay: AHCI hot plug).
    While the claim's last read (the network) takes its seconds, a drive is pushed into the
    bay: the kernel adds sde, udev's 64-md-raid-assembly.rules runs ``mdadm --incremental``
    and md127 (a scratch array whose other half is on another controller) is assembled and
    mounted by its fstab line or its systemd mount unit (``/srv/scratch``). sdb was claimed;
    sde never is, and nothing lists the disks again: ahci is unbound under md127 (the array
    degrades, its mount loses a member mid-write).

    On 92b5fc7: 06:00.0 goes to vfio-pci. Fix: the same as the test above (the disks below
    what moves listed again right before the unbind, and any new one refused)."""
    calls = during_the_network_read(monkeypatch, 3, lambda: _drive_inserted(lab)
                                    if not (lab.sys / "class/block/sde").exists() else None)
    refused, driver = _bind(lab, fake_root, ASM)
    assert len(calls) >= 3, "the bind read the network fewer than 3 times (the path changed?)"
    assert "sde" in refused and driver == "ahci", (
        f"06:00.0 went to {driver} with sde (md127, mounted on /srv/scratch) plugged since the "
        f"claim began ({'refused: ' + refused if refused else 'not refused'})")


def test_1_control_the_idle_controllers_are_still_taken(lab, fake_root):
    """Control: nothing plugged, both controllers go to vfio-pci."""
    for bdf in (UPD, ASM):
        refused, driver = _bind(lab, fake_root, bdf)
        assert refused == "" and driver == "vfio-pci", refused
