"""Issue 31, read 34a (storage, USB, display, IOMMU groups, SR-IOV, the bind's mechanics, the
libvirt hand-over). What it found, one section below each:

1. the claim's re-reads (reads 31a, 32a, 33a: ``_used_since``, ``_nodes_opened_since``,
   ``_network_since``) judge the disks and device nodes that were below what moves when
   the claim began (``disks_below`` is listed once, before the claims): a disk that appears
   below a USB controller or an AHCI controller during those reads (a stick plugged into the
   spare USB card's port and automounted by udisks2; a drive pushed into a hot-swap bay or
   eSATA port and assembled by mdadm's udev rule ``--incremental``) is neither claimed nor
   read, and the controller is unbound under its mount.
2. a VF is judged by what is below the VF alone; in switchdev mode (mlx5, ice, nfp: the
   OVS hardware-offload set-up) a VF's port on the card's embedded switch is its
   representor, an interface of the PF (``phys_port_name`` ``pf0vf0``), and the host wires
   the VF through it: a representor that is up and enslaved to an OVS bridge (master
   ``ovs-system``) carries the host's switch traffic to the VF, yet the VF on no driver
   reads idle and is taken, the harness's guest joining the host's bridge.
3. read 32a's re-read of the device nodes under the claim (``_nodes_opened_since``) takes
   its nodes from ``nodes_below`` (the nodes in the function's own sysfs tree), not from the
   proof's list, which adds the nodes that live elsewhere but are the function's
   (``_nvme_char_heads``: a native-multipath namespace's ``/dev/ng0n1`` under
   /sys/devices/virtual/nvme-subsystem; ``_clock_pps``: its clock's ``/dev/pps0``, where a
   source that pulses is kept by its ``assert`` count anyway): a
   passthrough user (``fio --ioengine=io_uring_cmd --filename=/dev/ng0n1``, SPDK's
   io_uring bdev, ``nvme`` commands through the head) that opens the head while the proof
   reads the network is never looked for again, and the NVMe controller is unbound under it.
4. usb-host's plug journals nothing: QEMU detaches the device's host drivers
   (``USBDEVFS_DISCONNECT``) and puts them back only on a clean close
   (``usb_host_attach_kernel``, ``USBDEVFS_CONNECT``, from its exit notifier); a QEMU that
   aborts (an assertion in the device code a hotplug test exercises) or that the harness's
   stop escalates to SIGKILL leaves every interface on no driver (usbfs's release binds
   nothing back), and neither the plug's clean-up, the binder's close nor ``restore`` (every
   session's start) knows the device was handed over: the stick's usb-storage, a USB NIC's
   netdev, a serial adapter's tty stay gone from the host until someone replugs it, and the
   run passes.

Each section's test asserts the safe behaviour and fails on 92b5fc7; the controls show that
the idle shape is still taken, and what the existing re-reads already catch. A fake sysfs/proc
tree plays the host (:mod:`.fakesysfs`'s lab host); no guest is booted.
"""

from __future__ import annotations

import json
import os

import pytest

from harness.host import usbhost
from harness.host.binding import VfioBinder, restore_from_journal

from . import fakesysfs
from .test_host_idle_review import NVME, nvme_multipath
from .test_host_idle_review31a import (ALLOWED, _bind, during_the_network_read,
                                       opened_during_the_network_read)
from .test_host_idle_review31a import STICK
from .test_host_usbhost import MOUNTS, stick  # noqa: F401 (a fixture: the SanDisk stick, 4-1)

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


# -- 2. a VF whose switchdev representor is up in the host's OVS bridge --------------------------


E810, E810_VF0 = "0000:0d:00.0", "0000:0d:10.0"


def _e810_switchdev_vf(lab, rep_in_bridge: bool = True) -> None:
    """The lab host's E810 (0d:00.0, ice, behind root port 00:1c.5) in switchdev mode
    (``devlink dev eswitch set pci/0000:0d:00.0 mode switchdev``) with one VF, 0d:10.0 on no
    driver in group 100 (``sriov_drivers_autoprobe`` 0: for guests). Below the PF, in the
    host's namespace: its uplink ``enp13s0f0np0`` (p0, down: the port is spare) and VF 0's
    representor ``enp13s0f0npf0vf0`` (pf0vf0); with ``rep_in_bridge`` the representor is up
    and a port of the OVS bridge ``br-sriov`` (``ovs-vsctl add-port br-sriov
    enp13s0f0npf0vf0``: master ``ovs-system``, the kernel datapath, with ``upper_ovs-system``
    in sysfs), as NVIDIA's and Intel's OVS-offload guides set each VF up before the VM that
    gets it starts."""
    lab.add_pci("0000:00:1c.5", "8086:a33d", 0x060400, "pcieport", 26)
    lab.add_pci(E810, "8086:1593", 0x020000, "ice", 27, parent="0000:00:1c.5")
    lab.sriov_capable(E810, 8, vf_ids="8086:1889", vf_driver=None)
    (lab.dev_dir(E810) / "sriov_drivers_autoprobe").write_text("0\n")
    lab.kernel(lab.sys / "bus/pci/devices" / E810 / "sriov_numvfs", "1")
    assert lab.driver_of(E810_VF0) is None
    for name, port_name in (("enp13s0f0np0", "p0"), ("enp13s0f0npf0vf0", "pf0vf0")):
        lab.add_net(name, E810)
        d = lab.sys / "class/net" / name
        (d / "dev_port").write_text("0\n")
        (d / "phys_port_name").write_text(f"{port_name}\n")
        (d / "phys_switch_id").write_text("a0369f0d0000\n")
    if rep_in_bridge:
        lab.add_net("ovs-system")
        rep = lab.sys / "class/net/enp13s0f0npf0vf0"
        os.symlink(os.path.relpath(os.path.realpath(lab.sys / "class/net/ovs-system"), rep),
                   rep / "upper_ovs-system")
        links = json.loads((lab.root / "ip/link.json").read_text())
        for li in links:
            if li["ifname"] == "enp13s0f0npf0vf0":
                li.update(fakesysfs.link(li["ifindex"], li["ifname"], E810, up=True,
                                         master="ovs-system"))
        (lab.root / "ip/link.json").write_text(json.dumps(links))


def test_2_control_a_vf_whose_representor_is_down_and_alone_is_taken(lab, fake_root):
    """Control: the representor down and in no bridge (switchdev set, nothing wired): VF 0
    goes to vfio-pci."""
    _e810_switchdev_vf(lab, rep_in_bridge=False)
    refused, driver = _bind(lab, fake_root, E810_VF0, ALLOWED | {"0d:10.0"})
    assert refused == "" and driver == "vfio-pci", refused


def test_2_a_vf_whose_representor_is_up_in_the_hosts_ovs_bridge_is_not_taken(lab, fake_root):
    """(a) Host shape: a lab host doing OVS hardware-offload work (an OpenStack/OVN compute
    node, or a colleague's switchdev tests): the E810's eswitch in switchdev mode, VF 0 made
    and left on no driver for a VM, its representor enp13s0f0npf0vf0 up and added to the
    OVS bridge br-sriov (which bonds to the lab network, with flows that steer that VM's
    traffic to the representor and so to the VF, offloaded to the card as TC flower rules).
    The inventory lists VF 0 of the E810 for the harness's SR-IOV tests (``pf``/``vf``), as
    docs/vfio.md's SR-IOV section drafts it.

    Path: :meth:`VfioBinder.bind` -> ``plan_group(0d:10.0)`` -> :meth:`HostUsage.verdict`
    of the VF: on no driver ("no host driver uses it"), no interface, disk or node below
    its own sysfs directory; its group holds it alone; ``vfs_removed`` and the PF check
    concern a PF that moves. Nothing reads the PF's interfaces for a VF, and the VF's port
    on the embedded switch is not below the VF: the kernel puts the representor below the
    PF (``SET_NETDEV_DEV(repr->netdev, ice_pf_to_dev(pf))``; mlx5 likewise), named for the
    VF by ``phys_port_name`` ``pf0vf0`` (devlink's ``pci_vf`` port attributes). By the
    rule's own standard for a port (up, or with an upper device: in use) the VF's port is
    in use; the VF is taken, and the harness's guest is wired into br-sriov: its test
    traffic (its DHCP, the addresses the inventory gives it) reaches the host's bridge and
    the network behind it, and the VM the VF was set up for cannot start.

    On 92b5fc7: 0d:10.0 goes to vfio-pci. Fix: in ``HostUsage.verdict`` (or ``_vf``'s
    counterpart for a VF target), for a VF read its PF's interfaces whose
    ``phys_port_name`` names that VF (``pf<N>vf<index>``, ``c<C>pf<N>vf<index>``, with the
    PF's ``phys_switch_id``; in every namespace, as ``ip -d`` shows them) and judge each by
    the port rule (up, addressed, an upper device: in use); a PF in switchdev mode whose
    representors cannot be told apart leaves its VFs unproven."""
    _e810_switchdev_vf(lab)
    refused, driver = _bind(lab, fake_root, E810_VF0, ALLOWED | {"0d:10.0"})
    assert "enp13s0f0npf0vf0" in refused and driver is None, (
        f"VF 0d:10.0 went to {driver} while its representor enp13s0f0npf0vf0 is up in the "
        f"host's OVS bridge ({'refused: ' + refused if refused else 'not refused'})")


# -- 3. an NVMe multipath head's generic node opened while the proof reads the network ---------


@pytest.mark.parametrize("on_call", [2, 1], ids=["opened-during-the-last-proofs-network-read",
                                                 "control-opened-during-the-first-read"])
def test_3_an_nvme_head_opened_while_the_proof_reads_the_network_is_not_unbound(
        lab, fake_root, monkeypatch, on_call):
    """(a, low likelihood: the host's activity in a window of seconds that any user
    stretches, as reads 31a, 32a and 33a's) Host shape: an idle NVMe drive (09:00.0, group 21,
    listed) with native multipath on (the default of Debian's, Fedora's and RHEL 9's kernels:
    ``nvme_core.multipath=Y``), so its namespace's block device nvme0n1 and its generic
    character device ng0n1 (238:0) are the subsystem's, under
    /sys/devices/virtual/nvme-subsystem/nvme-subsys0, not below the controller. While the
    bind's last proof reads the network, a colleague's benchmark starts on the drive through
    NVMe passthrough: ``fio --ioengine=io_uring_cmd --cmd_type=nvme --filename=/dev/ng0n1``
    (or SPDK's uring bdev, ``nvme io-passthru /dev/ng0n1``): no block device is opened, so
    the claim of nvme0n1 succeeds and its re-read sees no opener.

    Path: :meth:`VfioBinder.bind` -> ``_move_all`` -> ``disks_claimed`` ->
    ``_nodes_opened_since(below)``: ``nodes_below(fs, 09:00.0's path)`` is
    ``_Subtree(...).char_nodes``, the nodes inside the function's sysfs tree (nvme0, 242:0);
    the proof's verdict adds ``_nvme_char_heads`` (ng0n1) and ``_clock_pps`` (a clock's
    pps0) to its list, this re-read does not. The opener is not looked for again; nvme is
    unbound under fio's io_uring ring (its commands fail; a run of hours is lost, and a
    write workload leaves the namespace half written for the guest to see).

    On 92b5fc7: 09:00.0 goes to vfio-pci with /dev/ng0n1 open by pid 4711. The control (the
    same open during the first proof's network read) is refused by the proof under the lock.
    Fix: give ``nodes_below`` the proof's whole list (``_Subtree.char_nodes`` +
    ``_nvme_char_heads`` + ``_clock_pps``, one helper both use), so that the claim reads
    again every node the proof read."""
    nvme_multipath(lab)
    calls = opened_during_the_network_read(lab, monkeypatch, on_call, "/dev/ng0n1",
                                           comm="fio")
    refused, driver = _bind(lab, fake_root, NVME, ALLOWED | {"09:00.0"})
    assert len(calls) >= on_call
    assert "/dev/ng0n1" in refused and "pid 4711" in refused and driver == "nvme", (
        f"09:00.0 went to {driver} with /dev/ng0n1 open by pid 4711 (fio) since the proof "
        f"({'refused: ' + refused if refused else 'not refused'})")


def test_3_control_the_idle_nvme_drive_is_taken(lab, fake_root):
    """Control: nothing opens the head; the drive goes to vfio-pci."""
    nvme_multipath(lab)
    refused, driver = _bind(lab, fake_root, NVME, ALLOWED | {"09:00.0"})
    assert refused == "" and driver == "vfio-pci", refused


# -- 4. a USB device left on no driver by a QEMU that died holding it --------------------------


def test_4_a_usb_device_a_killed_qemu_left_driverless_is_given_back(stick, fake_root):
    """(a) Host shape: the inventory's SanDisk stick (4-1, interface 4-1:1.0 on usb-storage,
    sdd not mounted) handed to usb-host by its bus address, proven idle. QEMU's usb-host
    opens /dev/bus/usb/004/002 and detaches usb-storage from 4-1:1.0 (libusb's
    ``libusb_detach_kernel_driver``: ``USBDEVFS_DISCONNECT``), claiming it through usbfs.
    Then QEMU dies without its exit notifier: it aborts on an assertion in the USB or
    hotplug code the test drives (what a hotplug harness exists to find), or the harness's
    stop escalates to SIGKILL (``harness.qemu.process``: SIGTERM unanswered). usbfs's release
    of the claimed interface (``usbdev_release`` -> ``releaseintf``) binds no driver back:
    only QEMU's ``usb_host_attach_kernel`` (``USBDEVFS_CONNECT``) on a clean close did.

    Path: :func:`harness.host.usbhost.handed` claims the disks and proves the device, and
    writes nothing to the journal; :class:`harness.scenario.devices.UsbHost` has no
    clean-up; :meth:`VfioBinder.close` and :func:`restore_from_journal` (every session's
    start, ``harness restore``) give back only the journal's PCI functions and PF counts.
    The stick stays with no driver on its interface (no sdd, nothing for udisks or a backup
    job to mount) until someone replugs it; for a USB NIC its netdev is gone, for a serial
    adapter its /dev/ttyUSB0; the next usb-host test proves it idle again (no driver: idle)
    and the run ends green.

    On 92b5fc7: nothing asks the kernel to bind 4-1:1.0 again. Fix: journal a usb-host
    hand-over before QEMU opens the device (its bus path, its ``busnum``/``devnum`` and
    serial or ``devpath``, and each interface with its driver), drop the entry once QEMU
    has given it back (each interface on its driver again), and in ``_restore_entry`` (the
    plug's clean-up, the binder's close, ``restore``) bind each interface that is on no
    driver and no process's usbfs claim to its journaled driver (``echo 4-1:1.0 >
    /sys/bus/usb/drivers/usb-storage/bind``, or ``/sys/bus/usb/drivers_probe``), once no
    process holds /dev/bus/usb/004/002."""
    lab = stick
    iface = lab.sys / "bus/usb/devices/4-1:1.0"
    for f in ("bus/usb/drivers_probe", "bus/usb/drivers/usb-storage/bind"):
        (lab.sys / f).parent.mkdir(parents=True, exist_ok=True)
        (lab.sys / f).write_text("")
    journal = fake_root / "var/lib/hotplug-harness/vfio-journal.json"
    binder = VfioBinder(lab.sysfs(), journal=journal, timeout=0.3)
    usbfs = lab.sys / "bus/usb/drivers/usbfs"
    usbfs.mkdir(parents=True, exist_ok=True)
    with usbhost.handed(binder, STICK, "busaddr"):
        # QEMU opens the device and detaches usb-storage, claiming the interface through
        # usbfs (USBDEVFS_DISCONNECT_CLAIM): its driver is usbfs while QEMU holds it.
        (iface / "driver").unlink()
        os.symlink(os.path.relpath(usbfs, os.path.realpath(iface)), iface / "driver")
    # ... and is SIGKILLed (or aborts): usbfs lets go, no USBDEVFS_CONNECT, no driver.
    (iface / "driver").unlink()
    binder.close()
    restore_from_journal(lab.sysfs(), journal)
    rebinds = [(path, v) for path, v in lab.writes
               if path.startswith("sys/bus/usb/") and v == "4-1:1.0"]
    assert rebinds, ("4-1:1.0 was left on no driver after its QEMU died holding it: nothing "
                     "bound usb-storage back (writes: " + repr(lab.writes) + ")")
