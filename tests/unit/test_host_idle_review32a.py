"""Issue 31, read 32a (storage, USB, display, IOMMU groups, the bind's mechanics, ``plan``).

What it found, one section below each:

1. ``pcie_acs_override`` is looked for in /proc/cmdline spelt exactly so; the kernel matches
   a parameter with dashes for underscores (``parameq``, as ``do_early_param`` compares it),
   and strips the quotes around a quoted one: ``pcie-acs-override=downstream,multifunction``
   or ``"pcie_acs_override=multifunction"`` split the groups all the same, and the harness
   trusts them (the bind takes the function; ``doctor`` passes its IOMMU groups check);
2. ACS switched off at run time on a switch's downstream ports (``setpci ... ECAP_ACS+6.w=0``,
   as GPUDirect/P2P set-up guides say): the kernel made the IOMMU groups at boot, with ACS on,
   and never makes them again, so each port's endpoint keeps a group of its own while the
   switch now routes one endpoint's DMA straight to its sibling's BARs; nothing reads the ACS
   control register;
3. the "read again under the claim" step (review 31a, 1) reads the disks' block nodes only:
   the disk's SCSI generic node (``/dev/sg1``, what a libvirt ``<hostdev type='scsi'>`` guest's
   QEMU opens), opened while the bind's last proof reads the network, is not looked for again,
   and the controller is unbound under it; the same for usb-host's plug (a USB serial
   adapter's /dev/ttyUSB0 that ``ser2net`` opens then is handed to QEMU);
4. libvirt's move (``managed = "yes"``): :meth:`VfioBinder.handover` proves the target idle
   again right before libvirt unbinds it, but claims none of its disks and reads nothing again
   (the claim of review 31a's fix covers the harness's own move and usb-host only): a mount
   while that proof reads the network is handed to libvirt.

Each section's test asserts the safe behaviour (refused, with the use named) and fails on
45b56e8; the controls show that the idle shape is still taken. A fake sysfs/proc tree plays
the host (:mod:`.fakesysfs`'s lab host); no guest is booted.
"""

from __future__ import annotations

import os
import struct

import pytest

from harness.core.errors import HostDeviceError
from types import SimpleNamespace

from harness.host import doctor, safety, usbhost
from harness.host.binding import VfioBinder

from . import fakesysfs
from .test_host_idle_review31a import (ALLOWED, ASM, _bind, _dual_port_card, _journal, _up,
                                       during_the_network_read, opened_during_the_network_read)

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures (a fake sysfs lab host)

def test_control_an_idle_sata_controller_is_still_taken(lab, fake_root):
    """The control for the file: nothing uses sdb (nor its SCSI generic node), the kernel
    command line has no ACS override, and the ASM1062 goes to vfio-pci."""
    _scsi_generic(lab)
    refused, driver = _bind(lab, fake_root, ASM)
    assert refused == "" and driver == "vfio-pci", refused


# -- 1. pcie_acs_override spelt as the kernel also takes it -----------------------------------


@pytest.mark.parametrize("arg", [
    "pcie-acs-override=downstream,multifunction",
    "pcie_acs-override=multifunction",
    '"pcie_acs_override=downstream,multifunction"',
    None], ids=["dashes", "one-dash", "quoted", "control-no-override"])
def test_1_pcie_acs_override_spelt_with_dashes_or_quoted_is_no_isolation(lab, fake_root, arg):
    """(a) Host shape: the lab host of review 31a's finding 4 (the ACS override patch:
    Proxmox VE's kernel, linux-zen, an Arch/Gentoo ``linux-vfio`` build), but its boot loader
    entry spells the parameter ``pcie-acs-override=downstream,multifunction`` (GRUB snippets
    and some guides write it so; systemd-boot/kernelstub entries copied from them too), or
    quotes it (``"pcie_acs_override=..."``, as a ``GRUB_CMDLINE_LINUX`` edited by a script
    can end up). The kernel takes both: ``pcie_acs_override`` is an ``early_param``, and
    ``do_early_param`` compares names with ``parameq``, which treats ``-`` and ``_`` alike;
    ``next_arg`` strips the quotes around an argument before it splits off the value. The
    patched kernel says "PCIe ACS overrides enabled" and gives 03:00.0 and 03:00.1 (one
    multifunction device without ACS) a group each.

    Path: :func:`harness.host.safety.plan_group` -> :func:`acs_override`, which looks for a
    word of /proc/cmdline whose part before ``=`` is exactly ``pcie_acs_override``: neither
    spelling matches, the split groups are trusted, and 03:00.1 is moved to vfio-pci beside
    the host's NIC, which the guest reaches peer to peer (review 31a's finding 4, again).

    On 45b56e8: 03:00.1 goes to vfio-pci for every spelling but the exact one. Fix: parse the
    command line as the kernel does (strip quotes, compare names with ``-`` read as ``_``),
    and/or read the kernel log's "PCIe ACS overrides enabled" line."""
    base = "BOOT_IMAGE=/vmlinuz root=/dev/sda2 ro intel_iommu=on"
    lab.file("proc/cmdline", f"{base} {arg}\n" if arg else f"{base}\n")
    _dual_port_card(lab)
    refused, driver = _bind(lab, fake_root, "0000:03:00.1", ALLOWED | {"03:00.1"})
    if arg is None:
        assert refused == "" and driver == "vfio-pci", refused
        return
    assert "acs" in refused.lower(), (
        f"03:00.1 was moved to {driver} although the kernel command line has {arg}, which the "
        f"kernel takes as pcie_acs_override ({'refused: ' + refused if refused else 'not refused'})")
    assert driver == "igb"


@pytest.mark.parametrize("arg", ["pcie-acs-override=downstream,multifunction",
                                 '"pcie_acs_override=downstream,multifunction"', None],
                         ids=["dashes", "quoted", "control-no-override"])
def test_1_doctor_fails_its_iommu_groups_check_for_either_spelling(lab, arg):
    """The same host, as ``python -m harness doctor`` (and ``make nightly`` before it binds)
    reports it: its IOMMU groups check passes with either spelling, though the kernel split the
    groups (:func:`harness.host.doctor._iommu_checks` asks :func:`acs_override`). Fix: as
    above."""
    base = "BOOT_IMAGE=/vmlinuz root=/dev/sda2 ro intel_iommu=on"
    cmdline = f"{base} {arg}" if arg else base
    lab.file("proc/cmdline", cmdline + "\n")
    groups = next(c for c in doctor._iommu_checks(lab.sysfs(), "GenuineIntel", cmdline.split())
                  if c.name == "IOMMU groups")
    if arg is None:
        assert groups.ok is True, groups
        return
    assert groups.ok is False and "acs" in groups.detail.lower(), (
        f"doctor's IOMMU groups check passes ({groups.detail}) with {arg} on the kernel "
        "command line, which the kernel takes as pcie_acs_override")


# -- 2. ACS switched off at run time on a switch's ports ---------------------------------------

#: PCIe port types (the PCI Express capability's bits 7:4).
_ROOT_PORT, _UPSTREAM, _DOWNSTREAM, _ENDPOINT = 4, 5, 6, 0
#: ACS capability bits: Source Validation, Translation Blocking, P2P Request Redirect,
#: P2P Completion Redirect, Upstream Forwarding.
_ACS_CAP = 0x001f
_ACS_ON = 0x001d  # SV | RR | CR | UF: what the kernel enables at boot (pci_std_enable_acs)


def _config(vendor_device: str, header: int, port_type: int, acs_ctrl: int | None) -> bytes:
    """4 KiB of config space as root reads it from sysfs: the header, a PCI Express capability
    at 0x40 (its port type), and an ACS extended capability at 0x100 with control
    ``acs_ctrl`` (None: no ACS capability)."""
    vendor, device = (int(x, 16) for x in vendor_device.split(":"))
    cfg = bytearray(4096)
    struct.pack_into("<HH", cfg, 0, vendor, device)
    struct.pack_into("<H", cfg, 0x06, 0x0010)  # status: capabilities list
    cfg[0x0e] = header
    cfg[0x34] = 0x40
    struct.pack_into("<BBH", cfg, 0x40, 0x10, 0, 0x0002 | port_type << 4)  # PCIe cap v2
    if acs_ctrl is not None:
        struct.pack_into("<IHH", cfg, 0x100, 0x000d | 1 << 16, _ACS_CAP, acs_ctrl)
    return bytes(cfg)


def _switch(lab, acs_ctrl: int) -> None:
    """A PCIe switch (PLX/Broadcom PEX 8747) below root port 00:1c.6: its upstream port 03:00.0
    and downstream ports 04:08.0 and 04:10.0, each with ACS (on at boot: the kernel gave each
    endpoint below them a group of its own); 08:00.0 below 04:08.0 carries the host's storage
    network (igb, up, 10.0.8.1/24), 09:00.0 below 04:10.0 is down and listed. ``acs_ctrl``:
    the downstream ports' ACS control now."""
    plx = "10b5:8747"
    lab.add_pci("0000:00:1c.6", "8086:a33e", 0x060400, "pcieport", 20)
    lab.add_pci("0000:03:00.0", plx, 0x060400, "pcieport", 21, parent="0000:00:1c.6")
    lab.add_pci("0000:04:08.0", plx, 0x060400, "pcieport", 22, parent="0000:03:00.0")
    lab.add_pci("0000:04:10.0", plx, 0x060400, "pcieport", 23, parent="0000:03:00.0")
    lab.add_pci("0000:08:00.0", "8086:1521", 0x020000, "igb", 24, parent="0000:04:08.0")
    lab.add_pci("0000:09:00.0", "8086:1521", 0x020000, "igb", 25, parent="0000:04:10.0")
    (lab.dev_dir("0000:00:1c.6") / "config").write_bytes(
        _config("8086:a33e", 1, _ROOT_PORT, _ACS_ON))
    (lab.dev_dir("0000:03:00.0") / "config").write_bytes(_config(plx, 1, _UPSTREAM, None))
    for port in ("0000:04:08.0", "0000:04:10.0"):
        (lab.dev_dir(port) / "config").write_bytes(_config(plx, 1, _DOWNSTREAM, acs_ctrl))
    for ep in ("0000:08:00.0", "0000:09:00.0"):
        (lab.dev_dir(ep) / "config").write_bytes(_config("8086:1521", 0, _ENDPOINT, None))
    lab.add_net("enp8s0", "0000:08:00.0")
    lab.add_net("enp9s0", "0000:09:00.0")
    _up(lab, "enp8s0", "10.0.8.1/24")


@pytest.mark.parametrize("acs_ctrl", [0x0000, _ACS_ON], ids=["acs-off-at-run-time",
                                                              "control-acs-on"])
def test_2_a_switch_whose_acs_was_switched_off_at_run_time_is_no_isolation(
        lab, fake_root, acs_ctrl):
    """(a) Host shape: a lab host with a PCIe switch (a PLX/Broadcom PEX card, or a GPU
    server's PCIe backplane) carrying two NICs: 08:00.0 below downstream port 04:08.0 is the
    host's storage network (igb, up, 10.0.8.1/24), 09:00.0 below 04:10.0 is down and listed.
    At boot the kernel enabled ACS (SV, RR, CR, UF) on both downstream ports and gave each
    NIC a group of its own. Since then a set-up script turned ACS off on the switch's ports
    for peer-to-peer DMA between devices below it (NVIDIA's GPUDirect RDMA / NCCL and many
    P2P guides: ``setpci -s 04:08.0 ECAP_ACS+0x6.w=0000`` for every downstream port): with
    P2P Request Redirect off, the switch routes a TLP from 09:00.0 addressed to 08:00.0's BAR
    straight across, never through the root complex and the IOMMU. The kernel makes IOMMU
    groups only when a device is added, so /sys/kernel/iommu_groups still shows them apart.

    Path: :func:`harness.host.safety.plan_group` takes 09:00.0's group (25) as its isolation
    and finds it alone; nothing reads the ACS control register of the ports above it (the
    harness reads 64 bytes of config space, for the header type). 09:00.0 is moved to
    vfio-pci; the guest's driver (or any DMA address the guest programs in 08:00.0's window,
    which a guest with 3 GB or more uses as RAM) writes the host's NIC beside it.

    On 45b56e8: 09:00.0 is moved to vfio-pci with ACS off on its port (and the control, ACS
    still on, rightly). Fix: read the ACS extended capability of every bridge between the
    function and its root port (and of the function itself when it is multifunction), and
    refuse unless SV, RR, CR and UF are enabled as the kernel's REQ_ACS_FLAGS require
    (a port with no ACS capability keeps the group the kernel made from it); an unreadable
    config space counts as off."""
    _switch(lab, acs_ctrl)
    assert any("enp8s0 is up with the address 10.0.8.1/24" in u
               for u in safety.HostUsage.read(lab.sysfs()).verdict("0000:08:00.0").uses)
    refused, driver = _bind(lab, fake_root, "0000:09:00.0", ALLOWED | {"09:00.0"})
    if acs_ctrl == _ACS_ON:
        assert refused == "" and driver == "vfio-pci", refused
        return
    assert "acs" in refused.lower(), (
        f"09:00.0 was moved to {driver} although ACS is off on its switch port 04:10.0: the "
        "switch routes its DMA to 08:00.0, the host's NIC below the next port "
        f"({'refused: ' + refused if refused else 'not refused'})")
    assert driver == "igb"


# -- 3. a disk's SCSI generic node opened while the bind's last proof reads the network ------


def _scsi_generic(lab) -> None:
    """sdb's SCSI device (6:0:0:0 of the ASM1062's port 0) has its generic node, /dev/sg1
    (21:1), as every SCSI disk does with sg loaded."""
    sg = lab.sata_port(ASM) / "scsi_generic/sg1"
    sg.mkdir(parents=True)
    (sg / "dev").write_text("21:1\n")
    (sg / "uevent").write_text("MAJOR=21\nMINOR=1\nDEVNAME=sg1\n")


def _sg_opened_during_the_network_read(h, monkeypatch, on_call: int) -> list:
    """From the ``on_call``-th read of the host's network on, pid 4711 (the QEMU of a libvirt
    guest started meanwhile, with ``<hostdev mode='subsystem' type='scsi'>`` on sdb's
    address: libvirt hands QEMU /dev/sg1, ``scsi-generic``) holds /dev/sg1 open once that
    read ends."""
    return opened_during_the_network_read(h, monkeypatch, on_call, "/dev/sg1")


@pytest.mark.parametrize("on_call", [2, 1], ids=["opened-during-the-last-read",
                                                 "control-opened-during-the-first-read"])
def test_3_a_disks_scsi_generic_node_opened_while_the_bind_reads_the_network_is_not_taken(
        lab, fake_root, monkeypatch, on_call):
    """(a, low likelihood: the host's own activity in a window of seconds that any user can
    stretch, as review 31a's finding 1) Host shape: the lab's ASM1062 (06:00.0, group 13)
    with sdb and its SCSI generic node /dev/sg1, idle when the bind's last proof reads the
    storage; while that proof then reads the network (every namespace's ``ip``, ``ss``, every
    process's sockets: seconds, which any user stretches), libvirt starts a guest with sdb
    passed as a SCSI host device (``<hostdev type='scsi'>``: QEMU's ``scsi-generic`` opens
    /dev/sg1 O_RDWR and sends its commands, reads and writes included, through SG_IO). So
    does ``sg_dd``, ``sg_format`` or a firmware update tool (``sg_write_buffer``).

    Path: :meth:`harness.host.binding.VfioBinder.bind` -> ``_move_all`` ->
    :func:`harness.host.binding.disks_claimed`, whose read again under the claim
    (``_used_since``, review 31a's fix) asks :meth:`StorageView.use_of_block` about sdb's
    block nodes only (by path and number, its partitions, holders, mounts); the device nodes
    below the moved function (``nodes_below``: sg1, bsg, an NVMe controller's /dev/nvme0 and
    generic /dev/ng0n1, a USB serial port's tty for usb-host) are judged only by the proof,
    before the network read. The controller is unbound under the guest's SCSI device (its
    I/O fails, its filesystem is lost).

    On 45b56e8: 06:00.0 is moved to vfio-pci with /dev/sg1 open by the QEMU (the control,
    opened during the first proof's network read, is refused by the second proof). Fix: under
    the claim, read again who holds every device node below what moves (by path and by
    number, as :meth:`HostUsage._nodes` does), not only the disks; the same in
    :func:`harness.host.usbhost.handed`."""
    _scsi_generic(lab)
    calls = _sg_opened_during_the_network_read(lab, monkeypatch, on_call)
    refused, driver = _bind(lab, fake_root, ASM)
    assert len(calls) >= 2  # (the proof, then the proof again under the journal's lock)
    assert "sg1" in refused and "4711" in refused, (
        f"06:00.0 was moved to {driver} with /dev/sg1 open by pid 4711 (qemu-system-x86), "
        f"opened after the last proof's storage read ({'refused: ' + refused if refused else 'not refused'})")
    assert driver == "ahci"


#: A USB serial adapter the inventory hands to usb-host (an FTDI FT232R on bus 4, port 1).
FTDI = SimpleNamespace(name="serial", hostbus=4, hostaddr=2, vendorid="0x0403",
                       productid="0x6001", product="FT232R USB UART", disk_bytes=None,
                       no_host_filesystems=False)


@pytest.fixture
def ftdi(lab):
    """4-1 (0403:6001) on the uPD720202's bus 4: its interface on ftdi_sio, its port ttyUSB0
    (usb-serial, ftdi_sio) with the tty node /dev/ttyUSB0 (188:0)."""
    iface = lab.add_usb("4-1", 2, "0403:6001", "FT232R USB UART", "FTDI",
                        iface_driver="ftdi_sio")
    port = iface / "ttyUSB0"
    (port / "tty/ttyUSB0").mkdir(parents=True)
    (port / "tty/ttyUSB0/dev").write_text("188:0\n")
    (port / "tty/ttyUSB0/uevent").write_text("MAJOR=188\nMINOR=0\nDEVNAME=ttyUSB0\n")
    drv = lab.sys / "bus/usb-serial/drivers/ftdi_sio"
    drv.mkdir(parents=True)
    os.symlink(os.path.relpath(drv, port), port / "driver")
    return lab


def ftdi_handed(ftdi) -> "tuple[str | None, str]":
    """The FTDI adapter through usb-host's plug: (the device handed over, or None; the
    refusal's message, or "")."""
    binder = VfioBinder(ftdi.sysfs(), timeout=0.3,
                        journal=ftdi.root / "var/lib/hotplug-harness/vfio-journal.json")
    try:
        with usbhost.handed(binder, FTDI, "busaddr") as usb:
            return usb.name, ""
    except HostDeviceError as e:
        return None, e.message


def _tty_opened_during_the_network_read(h, monkeypatch, on_call: int) -> list:
    """From the ``on_call``-th read of the host's network on, pid 4712 (``ser2net``, a
    ``screen`` session, a getty a udev rule starts) holds /dev/ttyUSB0 open."""
    return opened_during_the_network_read(h, monkeypatch, on_call, "/dev/ttyUSB0",
                                          pid=4712, comm="ser2net", fd=3)


def test_3_control_an_idle_usb_serial_adapter_is_handed_over(ftdi):
    """Nobody holds /dev/ttyUSB0: the adapter is handed to usb-host."""
    binder = VfioBinder(ftdi.sysfs(), timeout=0.3,
                        journal=ftdi.root / "var/lib/hotplug-harness/vfio-journal.json")
    with usbhost.handed(binder, FTDI, "busaddr") as usb:
        assert usb.name == "4-1"


@pytest.mark.parametrize("on_call", [2, 1], ids=["opened-during-the-last-read",
                                                 "control-opened-during-the-first-read"])
def test_3_a_usb_serial_port_opened_while_its_plug_reads_the_network_is_not_handed_over(
        ftdi, monkeypatch, on_call):
    """(a, low likelihood, as section 3's first test) Host shape: the inventory's USB serial
    adapter (4-1, an FT232R: ttyUSB0, the console cable of a board in the lab) is idle when
    usb-host's plug proves it under the journal lock; while that proof reads the network,
    ``ser2net`` (or a ``screen`` session, a getty a udev rule starts, a lab's console server)
    opens /dev/ttyUSB0.

    Path: :func:`harness.host.usbhost.handed` -> :func:`proven_idle` (storage, then network)
    -> :func:`harness.host.binding.disks_claimed` over the device's disks (none) -> yield ->
    QEMU's ``device_add usb-host`` detaches ftdi_sio: the console server's tty hangs up under
    it. Review 31a's fix reads again only the disks under their claim; a device node below
    the device (the tty, a hidraw, /dev/bus/usb itself) opened after the storage read is
    not looked for.

    On 45b56e8: 4-1 is handed to usb-host with /dev/ttyUSB0 open by pid 4712 (the control,
    opened during the proof outside the lock, is refused by the one under it). Fix: as
    section 3's first test: read again the holders of every node below the device right
    before the yield (after the network read)."""
    calls = _tty_opened_during_the_network_read(ftdi, monkeypatch, on_call)
    handed, refused = ftdi_handed(ftdi)
    assert len(calls) >= 2  # (the proof outside the lock, then under it)
    assert handed is None and "ttyUSB0" in refused and "4712" in refused, (
        "USB 4-1 was handed to usb-host with /dev/ttyUSB0 open by pid 4712 (ser2net) since "
        f"the last proof's storage read ({'refused: ' + refused if refused else 'not refused'})")


# -- 4. libvirt's move (<hostdev managed='yes'>): proven, never claimed -----------------------

MOUNTS = ("/dev/sda2 / ext4 rw,relatime 0 0\n")


def _mounted_from_the_network_read(h, monkeypatch, on_call: int) -> list:
    """From the ``on_call``-th read of the host's network on, sdb1 is mounted on /srv/backup
    once that read ends (a backup job's mount, an automount's first access)."""
    return during_the_network_read(monkeypatch, on_call, lambda: h.proc(
        "mounts", MOUNTS + "/dev/sdb1 /srv/backup ext4 rw 0 0\n"))


@pytest.mark.parametrize("on_call", [3, 2], ids=["mounted-during-the-handovers-read",
                                                 "control-mounted-during-the-binds-read"])
def test_4_a_disk_mounted_while_libvirts_handover_reads_the_network_is_not_handed_over(
        lab, fake_root, monkeypatch, on_call):
    """(a, low likelihood: the host's own activity in a window of seconds that any user can
    stretch, as review 31a's findings 1 and 2) Host shape: the lab's ASM1062 (06:00.0, alone
    in group 13, on ahci) is listed with ``managed = "yes"``: the run binds it with
    ``moved_by="libvirt"`` (journaled, left on ahci for libvirt's ``<hostdev
    managed='yes'>``), and right before ``attach-device``, :meth:`VfioBinder.handover` proves
    it idle again under the journal lock. While that proof reads the network (its seconds),
    a backup job mounts sdb1.

    Path: :meth:`harness.host.binding.VfioBinder.handover` -> ``_proven_plan`` (storage, then
    network) -> yield -> libvirt's ``virPCIDeviceDetach`` unbinds ahci under the mount.
    Review 31a's fix claims the disks from the proof to the change in the harness's own move
    (``_move_all`` -> ``_disks_claimed``, which leaves out libvirt's target: ``keep``) and in
    usb-host's plug (:func:`harness.host.usbhost.handed`), but ``handover``, the third way a
    device leaves the host, claims nothing and reads nothing again: a mount (or a
    non-exclusive open: a libvirt guest's QEMU on /dev/sdb) after its storage read is handed
    to libvirt, which looks at nothing, and the filesystem loses its disk.

    On 45b56e8: ``handover`` yields (libvirt would move 06:00.0 with sdb1 mounted); the
    control, mounted during the bind's own last read, is refused by ``handover``'s proof.
    Fix: in ``handover``, claim the target's disks right after its proof and read their users
    again (:func:`harness.host.binding.disks_claimed`), held until libvirt's attach returns."""
    lab.proc("mounts", MOUNTS)
    calls = _mounted_from_the_network_read(lab, monkeypatch, on_call)
    binder = VfioBinder(lab.sysfs(), journal=_journal(fake_root))
    handed = refused = ""
    try:
        lease = binder.bind(ASM, ALLOWED, moved_by="libvirt")
        assert lease.left_to == "libvirt" and lab.driver_of(ASM) == "ahci"
        with binder.handover(lease):
            handed = "libvirt would move it now"
    except HostDeviceError as e:
        refused = e.message
    finally:
        try:
            binder.close()
        except HostDeviceError:
            pass
    assert len(calls) >= 3  # (the bind's proof twice, then the handover's)
    assert not handed and "sdb1 is mounted on /srv/backup" in refused, (
        "libvirt was handed 06:00.0 (its attach unbinds ahci) with sdb1 mounted on /srv/backup "
        f"since the handover's storage read ({'refused: ' + refused if refused else handed})")
