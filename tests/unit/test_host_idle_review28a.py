"""Issue 31, twenty-eighth adversarial read (28a: storage, holders, consoles, USB controllers).
What it found, one section below each (each test's docstring says the host shape, why the
harness calls it idle, and what would be lost; each fails on 798bb5e and passes once the rule
sees the use). All on a fake sysfs/proc tree, as the nvmet and LIO cases of earlier reads are.

1. (a) a disk a USB gadget exports as mass storage (``usb_f_mass_storage``, configfs
   ``functions/mass_storage.N/lun.M/file = /dev/sdb``) reads idle: the kernel opens the disk
   with ``filp_open`` (no claim, no holder, no process fd), :data:`harness.host.storage.
   _TARGETS` does not read the gadget's configfs, and :func:`harness.host.storage.
   _unread_servers`' name pattern does not match ``usb_f_mass_storage`` / ``g_mass_storage``.
2. (a) an xHCI whose USB 3 Debug Capability is up (``dbc`` = ``configured``) reads idle while a
   getty (or a debugger) holds its ``/dev/ttyDBC0``: the DbC tty is registered with no parent
   device (``/sys/devices/virtual/tty/ttyDBC0``), so no node shows below the controller.
3. (a) a USB controller that carries a kept early console (``earlyprintk=xdbc,keep`` or
   ``dbgp,keep``: ``earlyxdbc0`` / ``earlydbg0`` in /proc/consoles) reads idle: the console
   list is matched by ``MAJ:MIN`` alone, and these consoles have none; the kernel keeps
   writing its log through the controller's registers.
4. (a) a SATA controller whose DVD writer pktcdvd maps (``pktsetup``; Debian's udftools
   does it for every CD drive) reads idle: pktcdvd opens the drive with no holder (so no
   claim), no ``holders/`` link and no process fd; only ``/sys/class/pktcdvd/device_map``
   names it.
5. (a) a USB controller whose bus a process captures (``/dev/usbmonN``: Wireshark, tcpdump
   ``-i usbmonN``) reads idle: the usbmon node is a virtual device, below no controller.
6. (a) a mouse below a USB controller feeds ``/dev/input/mice``, which is looked up by its
   path alone: a process holding it through a node of another path (a container's
   ``--device /dev/input/mice:/dev/input/pointer``) is not seen, where every other node is
   matched by number too.
7. (a) a disk OCFS2's global heartbeat writes (o2hb region, configfs ``cluster/C/heartbeat/
   R/dev``) reads idle: o2hb opens the disk with no holder (no claim), no ``holders/`` link,
   no process fd; losing it makes o2quo fence (panic) the host.
8. (a) a disk a pNFS block/SCSI layout client writes (``blocklayoutdriver``) reads idle: the
   NFS client opens the LUN with no holder, no link and no fd, and names it nowhere but the
   kernel log.

Controls: the same controllers with none of those uses are still idle.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.core.errors import HostDeviceError
from harness.host.binding import VfioBinder
from harness.host.safety import HostUsage
from harness.host.storage import StorageView

from . import fakesysfs
from .fakesysfs import FakeHost
from .test_host_idle_review import hold_by_number

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
SATA = "0000:06:00.0"   # sdb, not mounted: idle on the lab host
XHCI = "0000:07:00.0"   # USB bus 4, nothing on it: idle on the lab host


def _holds(host: FakeHost, pid: int, comm: str, path: str, fd: int = 5) -> None:
    """Process ``pid`` (``comm``) holds ``path`` open as its fd ``fd``."""
    host.proc(f"{pid}/comm", f"{comm}\n")
    (host.root / f"proc/{pid}/fd").mkdir(parents=True, exist_ok=True)
    os.symlink(path, host.root / f"proc/{pid}/fd/{fd}")


def _virtual_node(host: FakeHost, cls: str, name: str, majmin: str) -> Path:
    """A class device with no parent (``/sys/devices/virtual/CLS/NAME``) and its node."""
    d = host.sys / "devices/virtual" / cls / name
    d.mkdir(parents=True)
    (d / "dev").write_text(f"{majmin}\n")
    (d / "uevent").write_text(f"MAJOR={majmin.split(':')[0]}\nMINOR={majmin.split(':')[1]}\n"
                              f"DEVNAME={name}\n")
    (host.sys / "class" / cls).mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(d, host.sys / "class" / cls), host.sys / "class" / cls / name)
    return d


def _verdict(host: FakeHost, bdf: str):
    return HostUsage.read(host.root).verdict(bdf)


# -- 1. a disk a USB gadget exports as mass storage ----------------------------------------------


def _gadget_exports(host: FakeHost, path: str) -> None:
    """A configfs USB gadget (``/sys/kernel/config/usb_gadget/dut``) whose mass storage
    function's first LUN is ``path``, as ``echo /dev/sdb > .../lun.0/file`` leaves it."""
    host.file("sys/module/usb_f_mass_storage/refcnt", "1\n")
    host.file("sys/module/libcomposite/refcnt", "2\n")
    g = "sys/kernel/config/usb_gadget/dut"
    host.file(f"{g}/UDC", "dwc3.0.auto\n")
    host.file(f"{g}/functions/mass_storage.usb0/lun.0/file", f"{path}\n")
    host.file(f"{g}/functions/mass_storage.usb0/lun.0/ro", "0\n")
    host.file(f"{g}/functions/mass_storage.usb0/stall", "1\n")


def test_1_a_disk_a_usb_gadget_exports_as_mass_storage_is_in_use(lab):
    """Host shape: a lab host that plays a USB stick for a device under test, through its
    USB device controller (an Intel dwc3 or an SoC's UDC): a configfs gadget with a
    ``mass_storage`` function whose LUN is the spare SATA disk (``lun.0/file = /dev/sdb``;
    the legacy ``modprobe g_mass_storage file=/dev/sdb`` does the same, shown in
    ``/sys/module/g_mass_storage/parameters/file``). ``fsg_lun_open`` opens the disk with
    ``filp_open(O_RDWR)``: no exclusive claim (so ``_claimed`` sees nothing on a real host),
    no ``holders/`` link, no process fd; the gadget keeps it open whether or not the gadget
    is bound to its UDC.

    Why it reads idle: :func:`harness.host.storage._exported` reads nvmet's and LIO's
    configfs only, and :func:`harness.host.storage._unread_servers` (the fail-closed net for
    kernel servers it does not read) matches module names against ``blkback|_server|_srv|
    target|tgt|trgt|scst|vhost_blk``: ``usb_f_mass_storage``, ``g_mass_storage``,
    ``g_multi`` and ``g_acm_ms`` match none.

    What would be lost: ``harness bind`` takes 06:00.0; the device under test's USB disk
    fails mid-write (its firmware image, its root filesystem), and the gadget keeps a file
    of a disk that is now a guest's."""
    assert _verdict(lab, SATA).idle  # (idle before the export)
    _gadget_exports(lab, "/dev/sdb")
    v = _verdict(lab, SATA)
    assert not v.idle, f"sdb, which a USB gadget exports, was judged idle: {v.evidence}"
    assert any("mass_storage" in u or "gadget" in u for u in v.uses), v.uses
    with pytest.raises(HostDeviceError):  # (and `harness bind` refuses it, touching nothing)
        VfioBinder(lab.sysfs(),
                   journal=lab.root / "var/lib/hotplug-harness/vfio-journal.json").bind(SATA, {SATA})
    assert lab.driver_of(SATA) == "ahci"


def test_1_control_a_gadget_that_exports_an_image_file_leaves_the_disk_idle(lab):
    """The same gadget over an image file (a regular file on / of sda) leaves sdb idle."""
    _gadget_exports(lab, "/var/lib/dut/stick.img")
    lab.file("var/lib/dut/stick.img", "")
    assert _verdict(lab, SATA).idle, _verdict(lab, SATA).uses


# -- 2. an xHCI whose USB 3 Debug Capability is up ----------------------------------------------


def test_2_an_xhci_whose_debug_capability_a_getty_holds_is_in_use(lab):
    """Host shape: a lab host reached (or debugged) through a USB 3 debug cable on its xHCI
    07:00.0: ``echo enable > /sys/bus/pci/devices/0000:07:00.0/dbc`` (Documentation/driver-api/
    usb/usb3-debug-port.rst), the other end plugged in (``dbc`` reads ``configured``), and
    ``agetty ttyDBC0`` (or a kgdb/serial session) on ``/dev/ttyDBC0``. xhci-dbgtty registers
    that tty with no parent device (``tty_port_register_device(..., NULL)``): it sits at
    ``/sys/devices/virtual/tty/ttyDBC0``, below no PCI function.

    Why it reads idle: :meth:`harness.host.safety.HostUsage._nodes` judges the device nodes
    found below the function's sysfs folder (:class:`harness.host.safety._Subtree`); the
    ttyDBC node is not there, the root hubs' nodes are open by no one, and nothing reads
    the controller's ``dbc`` state.

    What would be lost: the bind unbinds xhci_hcd, which tears the debug capability down;
    the login (or the debug session) on the other end of the cable dies."""
    (lab.dev_dir(XHCI) / "dbc").write_text("configured\n")
    _virtual_node(lab, "tty", "ttyDBC0", "242:0")
    _holds(lab, 812, "agetty", "/dev/ttyDBC0")
    v = _verdict(lab, XHCI)
    assert not v.idle, f"the xHCI with a live debug capability was judged idle: {v.evidence}"
    assert any("dbc" in u.lower() for u in v.uses), v.uses


# -- 3. a kept early console through a USB controller -------------------------------------------


def test_3_a_usb_controller_that_carries_a_kept_early_console_is_in_use(lab):
    """Host shape: a lab host with no serial port, booted with ``earlyprintk=xdbc1,keep``
    (or ``earlyprintk=dbgp,keep`` on an EHCI): kernel-parameters.txt, "Append ',keep' to not
    disable it when the real console takes over". With ``keep``, the early console loses
    ``CON_BOOT`` and stays registered (xdbc's ``xdbc_init`` starts its kthread to keep it
    running): /proc/consoles lists ``earlyxdbc0`` (``earlydbg0`` for EHCI) with no
    ``MAJ:MIN``, since it has no tty.

    Why it reads idle: :class:`harness.host.storage.StorageView` keeps only the consoles
    whose last field is a ``MAJ:MIN`` (``self.consoles``), and
    :meth:`harness.host.safety.HostUsage._nodes` matches them to the nodes below a
    function; a console with no device number is dropped, though it names a controller the
    kernel writes its log through (which one: ``xdbcN`` counts xHCIs in the early PCI scan,
    which the harness cannot tell, so every USB controller is unproven).

    What would be lost: the host's kernel log (the only one it has) stops, and the kernel
    keeps poking the DbC registers of a function a guest now drives."""
    lab.proc("cmdline", "BOOT_IMAGE=/vmlinuz-6.1.0-18-amd64 root=UUID=1234 ro quiet "
                        "intel_iommu=on iommu=pt earlyprintk=xdbc1,keep\n")
    lab.proc("consoles", "tty0                 -WU (EC p  )    4:7\n"
                         "earlyxdbc0           -W- (E  p  )\n")
    v = _verdict(lab, XHCI)
    assert not v.idle, f"the xHCI that may carry earlyxdbc0 was judged idle: {v.evidence}"
    assert any("earlyxdbc0" in u for u in v.uses), v.uses


# -- 4. a DVD writer pktcdvd maps ------------------------------------------------------------------


def _dvd_writer(host: FakeHost) -> None:
    """A SATA DVD writer (sr0, 11:0) on 06:00.0's second port."""
    host.add_disk("sr0", host.sata_port(SATA, 1), (), sectors=0, majmin="11:0")
    (host.sys / "class/block/sr0/dev").write_text("11:0\n")


def test_4_a_dvd_writer_pktcdvd_maps_is_in_use(lab):
    """Host shape: a SATA DVD writer sr0 on 06:00.0 mapped by the packet-writing driver
    (``pktsetup dvd /dev/sr0``; Debian's udftools installs a udev rule that maps every CD
    drive so, as Jens Axboe's commit dropping pktcdvd's "Attempt to register a non-SCSI
    queue" warning notes). ``pkt_new_dev`` opens the drive with
    ``bdev_file_open_by_dev(dev, BLK_OPEN_READ | BLK_OPEN_NDELAY, NULL, NULL)``: no holder,
    so no exclusive claim (``_claimed`` sees nothing on a real host), no ``holders/`` link,
    no process fd; its ``kcdrwd`` thread and ``/dev/pktcdvd/dvd`` (253:0) stay on it. The
    kernel lists the map in ``/sys/class/pktcdvd/device_map``
    (``pktcdvd0 253:0 11:0``).

    Why it reads idle: :meth:`harness.host.storage.StorageView.use_of_block` looks at
    mounts, swap, btrfs, loops, nvmet/LIO, claims, fds and ``holders/``; nothing reads the
    pktcdvd map.

    What would be lost: the drive leaves under pktcdvd (a UDF disc mounted through
    ``/dev/pktcdvd/dvd`` later, or a write in progress through it, fails; the map is left
    pointing at a device that is gone)."""
    _dvd_writer(lab)
    assert _verdict(lab, SATA).idle  # (idle before the map)
    lab.file("sys/module/pktcdvd/refcnt", "1\n")
    lab.file("sys/class/pktcdvd/device_map", "pktcdvd0 253:0 11:0\n")
    pkt = lab.sys / "devices/virtual/block/pktcdvd0"
    pkt.mkdir(parents=True)
    (pkt / "dev").write_text("253:0\n")
    os.symlink(os.path.relpath(pkt, lab.sys / "class/block"), lab.sys / "class/block/pktcdvd0")
    v = _verdict(lab, SATA)
    assert not v.idle, f"sr0, which pktcdvd maps, was judged idle: {v.evidence}"
    assert any("pktcdvd" in u for u in v.uses), v.uses
    assert StorageView.read(lab.sysfs()).use_of_block("sr0"), "sr0 reads unused"


# -- 5. a process that captures the controller's bus (usbmon) --------------------------------------


def test_5_a_usb_controller_whose_bus_a_process_captures_is_in_use(lab):
    """Host shape: someone on the lab host captures USB bus 4 (07:00.0's) to debug a device:
    Wireshark's ``dumpcap -i usbmon4`` or ``tcpdump -i usbmon4`` hold ``/dev/usbmon4``
    (the binary usbmon interface, char major of ``usbmon``). usbmon's nodes are class
    devices made with no parent (``device_create(&mon_bin_class, NULL, ...)``):
    ``/sys/devices/virtual/usbmon/usbmon4``, below no controller.

    Why it reads idle: :meth:`harness.host.safety.HostUsage._nodes` judges the nodes below the
    function (root hubs, devices, interfaces); the bus's usbmon node is not below it, and
    nothing maps ``usbmonN`` to the controller whose ``usbN`` root hub has that bus number
    (and ``/dev/usbmon0`` captures every bus: a holder of it uses every USB controller).

    What would be lost: the capture stops (the bus goes away under it) without its holder
    having been asked; the run takes a controller another process is using."""
    _virtual_node(lab, "usbmon", "usbmon4", "246:4")
    _holds(lab, 2207, "dumpcap", "/dev/usbmon4")
    v = _verdict(lab, XHCI)
    assert not v.idle, f"bus 4, which dumpcap captures, was judged idle: {v.evidence}"
    assert any("usbmon4" in u for u in v.uses), v.uses


# -- 6. /dev/input/mice held through a node of another path ---------------------------------------


def _usb_mouse(host: FakeHost) -> None:
    """A USB mouse 4-1 on 07:00.0, its input device with ``mouse1`` and ``event9``, as
    /proc/bus/input/devices lists it (no kbd handler: not a console keyboard)."""
    iface = host.add_usb("4-1", 2, "046d:c077", "USB Optical Mouse", "Logitech")
    inp = iface / "0003:046D:C077.0009/input/input9"
    for name, majmin in (("mouse1", "13:33"), ("event9", "13:73")):
        (inp / name).mkdir(parents=True)
        (inp / name / "dev").write_text(f"{majmin}\n")
        (inp / name / "uevent").write_text(f"DEVNAME=input/{name}\n")
    host.proc("bus/input/devices",
              'I: Bus=0003 Vendor=046d Product=c077\nN: Name="Logitech USB Optical Mouse"\n'
              f"S: Sysfs=/{inp.relative_to(host.sys)}\nH: Handlers=mouse1 event9\n\n")


def test_6_a_mouse_whose_mice_node_a_container_holds_by_another_path_is_in_use(lab, tmp_path):
    """Host shape: a kiosk or a lab dashboard runs Xorg in a container given the host's
    pointer as ``--device /dev/input/mice:/dev/input/pointer`` (a node of 13:63 at another
    path; as the host reads the fd's link, a path under the container's root). The USB mouse
    4-1 on 07:00.0 feeds ``/dev/input/mice`` (mousedev multiplexes every mouse), so Xorg
    uses that mouse with no node below the controller open.

    Why it reads idle: :meth:`harness.host.safety.HostUsage._nodes` asks
    ``opened.users("char", "input/mice", None)``: by the path ``/dev/input/mice`` only, with
    no device number, where every other node (``_nodes``' own, ``/dev/mem``, vfio groups,
    the tools' nodes) is matched by ``MAJ:MIN`` too (``10:1``... here ``13:63``).

    What would be lost: the kiosk's pointer stops mid-session; the rule's own "a mouse below
    it feeds /dev/input/mice, open by ..." refusal is skipped for a node that is the same
    device."""
    _usb_mouse(lab)
    assert _verdict(lab, XHCI).idle  # (idle while nothing holds the mice node)
    hold_by_number(lab, 3301, "Xorg", 13, 63,
                   tmp_path / "var/lib/containers/kiosk/rootfs/dev/input/pointer")
    v = _verdict(lab, XHCI)
    assert not v.idle, f"the mouse whose mice node Xorg holds was judged idle: {v.evidence}"
    assert any("/dev/input/mice" in u and "3301" in u for u in v.uses), v.uses


# -- 7. a disk OCFS2's global heartbeat writes ------------------------------------------------------


def test_7_a_disk_ocfs2s_global_heartbeat_writes_is_in_use(lab):
    """Host shape: the lab host is a node of an OCFS2 cluster (an Oracle RAC test bed, a
    shared SAS JBOD on two hosts) in global heartbeat mode: ``o2cb add-heartbeat labclu
    /dev/sdb`` and ``o2cb register-cluster`` start a heartbeat region on the shared disk,
    with no OCFS2 filesystem mounted yet. ``ocfs2_hb_ctl`` hands the kernel an fd of the
    disk (``echo FD > /sys/kernel/config/cluster/labclu/heartbeat/UUID/dev``) and exits;
    ``o2hb_region_dev_store`` opens it with ``bdev_file_open_by_dev(..., BLK_OPEN_WRITE |
    BLK_OPEN_READ, NULL, NULL)``: no holder (so no exclusive claim: ``_claimed`` sees
    nothing on a real host), no ``holders/`` link, no process fd. The ``o2hb-UUID`` kernel
    thread writes the node's heartbeat block every two seconds. configfs shows the disk
    (``.../heartbeat/UUID/dev`` reads ``sdb``).

    Why it reads idle: :class:`harness.host.storage.StorageView` reads no o2hb region, and
    :func:`harness.host.storage._unread_servers` looks for servers by module name
    (``ocfs2_nodemanager`` is none).

    What would be lost: the heartbeat writes fail once the disk is a guest's; o2hb stops
    the region and o2quo fences the node: the lab host panics and reboots (and the other
    nodes evict it)."""
    assert _verdict(lab, SATA).idle  # (idle before the heartbeat)
    lab.file("sys/module/ocfs2_nodemanager/refcnt", "3\n")
    region = "sys/kernel/config/cluster/labclu/heartbeat/0AB12C34D56E78F90A1B2C3D4E5F6A7B"
    lab.file(f"{region}/dev", "sdb\n")
    lab.file(f"{region}/block_bytes", "512\n")
    lab.file(f"{region}/blocks", "255\n")
    lab.file(f"{region}/start_block", "2304\n")
    lab.file("sys/kernel/config/cluster/labclu/heartbeat/mode", "global\n")
    v = _verdict(lab, SATA)
    assert not v.idle, f"sdb, which o2hb writes, was judged idle: {v.evidence}"
    assert any("heartbeat" in u or "o2hb" in u or "ocfs2" in u for u in v.uses), v.uses
    with pytest.raises(HostDeviceError):  # (and `harness bind` refuses it, touching nothing)
        VfioBinder(lab.sysfs(),
                   journal=lab.root / "var/lib/hotplug-harness/vfio-journal.json").bind(SATA, {SATA})
    assert lab.driver_of(SATA) == "ahci"


# -- 8. a disk a pNFS block/SCSI layout client writes ---------------------------------------------


def test_8_a_disk_a_pnfs_scsi_layout_client_writes_is_in_use(lab):
    """Host shape: the lab host mounts an NFS export whose server hands out pNFS SCSI (or
    block) layouts (a Linux nfsd exporting XFS with ``pnfs``, a filer): the client loads
    ``blocklayoutdriver`` and writes file data straight to the shared LUN it sees as sdb
    (``bl_open_path`` opens ``/dev/disk/by-id/wwn-0x...`` with
    ``bdev_file_open_by_path(..., BLK_OPEN_READ | BLK_OPEN_WRITE, NULL, NULL)``: no holder,
    so no exclusive claim, no ``holders/`` link, no process fd; the kernel logs "pNFS: using
    block device sdb"). The only mount is the NFS one (``server:/export``, a network
    filesystem the storage read leaves out), and which disk the layout uses is not listed
    anywhere a reader can find.

    Why it reads idle: ``use_of_block`` knows nothing of the pNFS client, and the loaded
    ``blocklayoutdriver`` fails nothing closed (``_unread_servers`` is about servers).

    What would be lost: writes the NFS client has in flight to the LUN fail once the disk
    is a guest's (the client falls back to the MDS only for new I/O); the guest, given the
    disk, can overwrite file data of a filesystem that other clients share."""
    assert _verdict(lab, SATA).idle  # (idle before the layout)
    lab.file("sys/module/blocklayoutdriver/refcnt", "1\n")
    mounts = (lab.root / "proc/mounts").read_text()
    lab.proc("mounts", mounts + "filer:/export /srv/shared nfs4 rw,relatime,vers=4.1 0 0\n")
    v = _verdict(lab, SATA)
    assert not v.idle, f"sdb, which the pNFS client may write, was judged idle: {v.evidence}"
    assert any("blocklayout" in u or "pNFS" in u for u in v.uses), v.uses


# -- controls --------------------------------------------------------------------------------------


def test_control_an_idle_xhci_with_its_debug_capability_off_and_a_mouse_is_idle(lab):
    """The xHCI 07:00.0 with its DbC off (``dbc`` = ``disabled``), a mouse nobody holds, the
    usual console list (tty0, 4:7) and a usbmon node of another bus that a capture holds:
    still idle, and its nodes are the evidence."""
    (lab.dev_dir(XHCI) / "dbc").write_text("disabled\n")
    _usb_mouse(lab)
    _virtual_node(lab, "usbmon", "usbmon3", "246:3")
    _holds(lab, 2207, "dumpcap", "/dev/usbmon3")
    v = _verdict(lab, XHCI)
    assert v.idle, v.uses
    assert any("device node(s) below 0000:07:00.0 open by no process" in e for e in v.evidence)


def test_control_an_idle_sata_controller_with_a_dvd_writer_is_idle(lab):
    """06:00.0 with sdb and a DVD writer that nothing maps, mounts or holds: idle."""
    _dvd_writer(lab)
    v = _verdict(lab, SATA)
    assert v.idle, v.uses
    assert any(e.startswith("sr0: not mounted") for e in v.evidence), v.evidence
