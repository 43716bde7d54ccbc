"""Issue 31, twenty-ninth adversarial read (29a: storage controllers and block devices, USB
controllers and gadgets, consoles, other device classes, IOMMU groups, plan against bind).
What it found, one section below each (each test's docstring says the host shape, why the
harness calls it idle on e1a1143, and what would be lost; each fails on e1a1143 and passes
once the rule sees the use). All on a fake sysfs/proc tree, as the gadget, pktcdvd and OCFS2
cases of read 28a are.

1. (a) a disk a *legacy* USB gadget other than the three named ones exports as mass storage
   (``g_nokia file=/dev/sdb``: nokia.c carries FSG_MODULE_PARAMETERS and selects
   USB_F_MASS_STORAGE) reads idle: :data:`harness.host.storage._LEGACY_GADGETS` lists
   ``g_mass_storage``, ``g_multi`` and ``g_acm_ms`` only, and the fail-closed net of
   :func:`harness.host.storage._gadget_luns` fires only when configfs cannot be read.
2. (a) a disk a legacy gadget's LUN was switched to at run time, through the LUN's own sysfs
   attribute (``/sys/devices/.../gadget.0/lun0/file``, Documentation/usb/mass-storage.rst;
   how an image is swapped on a removable LUN), reads idle: the harness reads the module's
   ``parameters/file``, which keeps the value it was loaded with (empty, or an image file).
3. (a) a MegaRAID SATA/SCSI controller on ``megaraid_mbox`` whose management node
   ``/dev/megadev0`` (a misc device of ``megaraid_mm``, below no function; the ioctl picks the
   adapter by number) a RAID tool holds reads idle: :data:`harness.host.safety._DRIVER_NODES`
   is a list of the drivers known today, and a driver's node from a module it depends on is
   not looked for.
4. (a) a USB controller one of whose ports the lab has switched off (``echo 1 >
   .../usb4-port2/disable``, Linux 6.0's port power switch: a board under test powered from
   that port is kept off) reads idle: a hub's ``usbN-portM`` device is "judged by the USB
   device on it", and a port switched off has none.
5. (a, low likelihood) a disk a LIO fileio backstore opened (``info``: ``File: /dev/sdb``)
   reads idle when the backstore's ``udev_path`` attribute names something else (an image
   path, another disk): ``udev_path`` is an informational label any configfs writer sets at
   any time, and :func:`harness.host.storage._target_device` reads ``info``, the kernel's
   record of what it opened, only when that label is empty.

Each finding's test also asserts that `python -m harness plan` marks the device REFUSED and
that `harness bind` refuses it (on e1a1143 plan prints "would be taken" and bind takes it: the
two agree, on the same verdict). Controls: the same controllers and disks with none of those
uses are still idle, and plan would take them.

Looked at and found covered on e1a1143 (no test): kernel openers of a disk that claim it
(md, dm, bcache, zram's backing_dev, DRBD, block2mtd, pstore/blk, iblock, pscsi, rnbd, external
journals: ``_claimed``'s exclusive open sees them on a real host); nvmet/LIO device paths
while enabled; EHCI and its UHCI/OHCI companions (one slot, no ACS: always one IOMMU group);
display functions (no role: refused whatever their ``boot_vga``); bridges of a group (never
moved); plan's move steps against ``_move_to_vfio``'s writes.
"""

from __future__ import annotations

import os

import pytest

from harness.core.errors import HostDeviceError
from harness.host.binding import VfioBinder
from harness.host.inventory import parse_inventory
from harness.host.plan import plan_inventory
from harness.host.safety import HostUsage

from . import fakesysfs
from .fakesysfs import FakeHost
from .test_host_bound_below import _root_hub
from .test_host_idle_review28a import _holds

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
SATA = "0000:06:00.0"   # sdb, not mounted: idle on the lab host
XHCI = "0000:07:00.0"   # USB bus 4, nothing on it: idle on the lab host


def _verdict(host: FakeHost, bdf: str):
    return HostUsage.read(host.root).verdict(bdf)


def _refused_by_bind(host: FakeHost, bdf: str, role: str) -> None:
    """`python -m harness plan` marks ``bdf`` (a ``role`` entry) REFUSED, and `harness bind`
    refuses it and leaves it on its driver."""
    gateway = 'gateway = "10.0.5.1"\n' if role == "nic" else ""  # (a nic entry needs one)
    inventory = parse_inventory(f'[[device]]\nrole = "{role}"\nbdf = "{bdf}"\n{gateway}',
                                root=host.sysfs())
    lines, ok = plan_inventory(host.sysfs(), inventory)
    assert not ok, "plan says it would be taken:\n" + "\n".join(lines)
    driver = host.driver_of(bdf)
    with pytest.raises(HostDeviceError):
        VfioBinder(host.sysfs(), journal=host.root / "var/lib/hh/j.json").bind(bdf, {bdf})
    assert host.driver_of(bdf) == driver


# -- 1. a legacy gadget not on the list exports the disk ----------------------------------------


def _udc(host: FakeHost) -> str:
    """A USB device controller (a dwc3 on an SoC, or dummy_hcd's dummy_udc in a lab) with the
    gadget framework loaded and configfs mounted (systemd mounts it at boot), so that
    ``/sys/kernel/config/usb_gadget`` is there, empty: no configfs gadget is set up."""
    host.file("sys/module/libcomposite/refcnt", "2\n")
    (host.sys / "kernel/config/usb_gadget").mkdir(parents=True)
    d = host.sys / "devices/platform/dummy_udc.0"
    (d / "udc/dummy_udc.0").mkdir(parents=True)
    (host.sys / "class/udc").mkdir(parents=True, exist_ok=True)
    os.symlink("../../devices/platform/dummy_udc.0/udc/dummy_udc.0",
               host.sys / "class/udc/dummy_udc.0")
    os.symlink("../../../dummy_udc.0", d / "udc/dummy_udc.0/device")  # (its parent)
    return "devices/platform/dummy_udc.0"


def _legacy_gadget(host: FakeHost, module: str, file_param: str) -> None:
    """A legacy gadget ``module`` loaded with ``file=<file_param>`` (FSG_MODULE_PARAMETERS:
    its ``parameters/file`` shows what it was loaded with), working through
    usb_f_mass_storage (``holders/<module>``)."""
    host.file("sys/module/usb_f_mass_storage/refcnt", "1\n")
    (host.sys / "module/usb_f_mass_storage/holders").mkdir(parents=True, exist_ok=True)
    host.file(f"sys/module/{module}/parameters/file", f"{file_param}\n")
    host.file(f"sys/module/{module}/parameters/removable", "Y\n")
    host.file(f"sys/module/{module}/parameters/luns", "1\n")
    os.symlink(f"../../{module}", host.sys / f"module/usb_f_mass_storage/holders/{module}")


def test_1_a_disk_g_nokia_exports_as_mass_storage_is_in_use(lab):
    """Host shape: a lab host that plays a phone-like USB composite device (serial, Phonet,
    ECM and mass storage) for a device under test: ``modprobe g_nokia file=/dev/sdb``
    (drivers/usb/gadget/legacy/nokia.c carries a mass storage function:
    ``FSG_MODULE_PARAMETERS(/* no prefix */, fsg_mod_data)``, and Kconfig's USB_G_NOKIA
    selects USB_F_MASS_STORAGE). ``fsg_lun_open`` opens sdb with ``filp_open``: no claim,
    no ``holders/`` link, no process fd, whether or not the gadget is bound to its UDC.

    Why it reads idle: :func:`harness.host.storage._gadget_luns` reads the ``file``
    parameter of :data:`~harness.host.storage._LEGACY_GADGETS` (``g_mass_storage``,
    ``g_multi``, ``g_acm_ms``) only, and its fail-closed net (``usb_f_mass_storage`` loaded
    with nothing readable) is skipped because ``/sys/kernel/config/usb_gadget`` is there
    (libcomposite loaded, configfs mounted) -- empty, as the legacy gadgets never show in
    configfs. The list is what is known today; the module that says which gadgets use it is
    ``/sys/module/usb_f_mass_storage/holders``.

    What would be lost: ``harness bind`` takes 06:00.0; the device under test's USB disk
    fails mid-write, and the gadget keeps a file of a disk that is now a guest's.

    Fix: read the ``parameters/file`` of every holder of usb_f_mass_storage (and of
    libcomposite), and count a holder without one as a problem."""
    _udc(lab)
    assert _verdict(lab, SATA).idle  # (idle before the export)
    _legacy_gadget(lab, "g_nokia", "/dev/sdb")
    v = _verdict(lab, SATA)
    assert not v.idle, f"sdb, which g_nokia exports as USB mass storage, was judged idle: " \
                       f"{v.evidence}"
    assert any("g_nokia" in u for u in v.uses), v.uses
    _refused_by_bind(lab, SATA, "sata-controller")


# -- 2. a legacy gadget's LUN switched through its sysfs attribute ------------------------------


def test_2_a_disk_a_legacy_gadget_lun_was_switched_to_through_sysfs_is_in_use(lab):
    """Host shape: the same lab host's gadget loaded with a removable LUN and an image
    (``modprobe g_mass_storage removable=1 file=/srv/dut/blank.img``), and the medium
    swapped at run time to the spare disk through the LUN's own attribute, as
    Documentation/usb/mass-storage.rst describes for removable LUNs (``echo /dev/sdb >
    /sys/devices/platform/dummy_udc.0/gadget.0/lun0/file``; Android's UMS and many
    board-farm scripts switch images this way). A legacy gadget registers its LUNs as
    devices below the gadget (``fsg_common_create_lun``: ``common->sysfs`` is true for the
    legacy gadgets), and ``file_store`` -> ``fsg_store_file`` -> ``fsg_lun_open`` opens the
    new file with ``filp_open`` (no claim, no holder, no process fd).

    Why it reads idle: :func:`harness.host.storage._gadget_luns` reads the module's
    ``parameters/file``, a ``charp`` read once at bind time (``fsg_config_from_params``),
    which still says ``/srv/dut/blank.img``: an image file, so no disk. The LUN's own
    ``file`` attribute, which says what the kernel has open now, is never read.

    What would be lost: as in 1: the device under test's disk goes away mid-write; the
    guest and the gadget write one disk.

    Fix: read what each LUN has open now: the legacy LUN devices' ``file`` attributes below
    every gadget (``/sys/class/udc/*/device/gadget*/lun*/file``), as configfs' ``lun.N/file``
    is read for configfs gadgets (a LUN that cannot be read: a problem)."""
    udc = _udc(lab)
    lab.file("srv/dut/blank.img", "")
    _legacy_gadget(lab, "g_mass_storage", "/srv/dut/blank.img")
    lab.file(f"sys/{udc}/gadget.0/lun0/ro", "0\n")
    lab.file(f"sys/{udc}/gadget.0/lun0/removable", "1\n")
    lab.file(f"sys/{udc}/gadget.0/lun0/file", "/srv/dut/blank.img\n")
    assert _verdict(lab, SATA).idle, _verdict(lab, SATA).uses  # (the image: sdb idle)
    lab.file(f"sys/{udc}/gadget.0/lun0/file", "/dev/sdb\n")  # (the medium swapped)
    v = _verdict(lab, SATA)
    assert not v.idle, f"sdb, which the gadget's LUN 0 now exports, was judged idle: " \
                       f"{v.evidence}"
    assert any("gadget" in u or "mass storage" in u for u in v.uses), v.uses
    _refused_by_bind(lab, SATA, "sata-controller")


# -- 3. a MegaRAID controller's management node from the module its driver depends on ------------


MEGA = "0000:0b:00.0"   # LSI MegaRAID SATA 150-4 (1000:1960 subsystem), on megaraid_mbox


def _megaraid(host: FakeHost, held: bool) -> None:
    """A MegaRAID controller on megaraid_mbox with its logical drive sdm (not mounted), the
    management module megaraid_mm (which megaraid_mbox depends on: ``holders/megaraid_mbox``)
    and its misc node ``/dev/megadev0`` (below no function); ``held``: a RAID tool holds it."""
    host.add_pci(MEGA, "1000:1960", 0x010400, "megaraid", 41)
    host.add_disk("sdm", host.dev_dir(MEGA) / "host11/target11:1:0/11:1:0:0", ("sdm1",))
    (host.sys / "module/megaraid_mm/holders").mkdir(parents=True)
    os.symlink("../../megaraid_mbox", host.sys / "module/megaraid_mm/holders/megaraid_mbox")
    (host.sys / "module/megaraid_mbox/holders").mkdir(parents=True)
    host.file("sys/devices/virtual/misc/megadev0/dev", "10:58\n")
    host.file("sys/devices/virtual/misc/megadev0/uevent", "MAJOR=10\nMINOR=58\nDEVNAME=megadev0\n")
    (host.sys / "class/misc").mkdir(parents=True, exist_ok=True)
    os.symlink("../../devices/virtual/misc/megadev0", host.sys / "class/misc/megadev0")
    os.symlink("../../../../module/megaraid_mbox", host.sys / "bus/pci/drivers/megaraid/module")
    if held:
        _holds(host, 6120, "MegaCli64", "/dev/megadev0", 4)


def test_3_a_megaraid_mbox_controller_whose_management_node_a_tool_holds_is_in_use(lab):
    """Host shape: an older storage lab host with an LSI MegaRAID SATA 150-4 (or SCSI 320) on
    ``megaraid_mbox`` (its PCI driver is named ``megaraid``), the logical drive sdm not
    mounted, and a RAID tool holding the management node: ``MegaCli64`` flashing the
    adapter's firmware, or a RAID monitor. That node is ``/dev/megadev0``, a misc device of
    ``megaraid_mm`` (``misc_register(&megaraid_mm_dev)``, below no function), which every
    megaraid_mbox adapter registers with (``mraid_mm_register_adp``); the ioctl names the
    adapter by number (``adapno``), so any controller may be the one a tool drives.

    Why it reads idle: :func:`harness.host.safety._tool_node_uses` looks up the driver's
    nodes in :data:`harness.host.safety._DRIVER_NODES`, a list of the drivers known today
    (mpt*sas, megaraid_sas, aacraid, 3ware); ``megaraid`` is not there, and a node of a
    module the driver depends on (``/sys/module/megaraid_mm/holders/megaraid_mbox``) is not
    looked for. The disk is idle, so the controller is proven idle.

    What would be lost: the bind unbinds megaraid_mbox in the middle of the tool's firmware
    flash or configuration change (a bricked adapter, a half-written RAID config).

    Fix: fail closed: a node below no device (a misc or a bare char major) of the driver's
    module or of a module it depends on (``holders/`` naming the driver's module), held by
    a process, keeps every function of that driver."""
    _megaraid(lab, held=True)
    v = _verdict(lab, MEGA)
    assert not v.idle, f"{MEGA} was judged idle while MegaCli64 holds /dev/megadev0: " \
                       f"{v.evidence}"
    assert any("megadev0" in u for u in v.uses), v.uses
    _refused_by_bind(lab, MEGA, "sata-controller")


# -- 4. a USB port the lab switched off ------------------------------------------------------------


def test_4_a_usb_controller_with_a_port_switched_off_is_in_use(lab):
    """Host shape: a board farm's lab host powers a device under test (a Raspberry Pi, a
    dev board, a USB relay) from a port of the xHCI 07:00.0 and keeps it off between jobs:
    ``echo 1 > /sys/bus/usb/devices/4-0:1.0/usb4-port2/disable`` (the port's ``disable``
    attribute, Linux 6.0; Documentation/ABI/testing/sysfs-bus-usb: "This file controls the state of a USB port, including Vbus power output"; recent
    uhubctl releases use it on Linux so that the kernel does not power the port back).
    The port reads ``disable`` = 1 (``disable_show`` reads the port's power bit from the
    hub: a port powered off by a hub request counts the same). Nothing is connected, so no
    USB device, interface or node shows on it.

    Why it reads idle: :class:`harness.host.safety._Subtree` skips a hub's port devices
    (``_USB_PORT``: "what uses it is the USB device on it, judged as one"); a port switched
    off has no device on it, and the root hub's node is open by no process.

    What would be lost: the bind resets the controller (unbind, vfio-pci's reset, the guest's
    xHCI driver), which powers every root port again: the device under test boots in the
    middle of another job, or a USB relay's load switches on.

    Fix: a hub port (``usbN-portM``, ``B-P-portM``) whose ``disable`` reads anything but 0
    keeps its controller (and a USB device with such a hub below it keeps itself), named
    with the port; one that cannot be read likewise."""
    _root_hub(lab, XHCI, 4, 4)
    port = lab.dev_dir(XHCI) / "usb4/4-0:1.0/usb4-port2"
    (port / "disable").write_text("0\n")
    assert _verdict(lab, XHCI).idle, _verdict(lab, XHCI).uses  # (every port powered: idle)
    (port / "disable").write_text("1\n")
    v = _verdict(lab, XHCI)
    assert not v.idle, f"{XHCI} was judged idle with usb4-port2 switched off: {v.evidence}"
    assert any("usb4-port2" in u for u in v.uses), v.uses
    _refused_by_bind(lab, XHCI, "usb-controller")


# -- 5. a LIO backstore whose udev_path label is not what it opened ---------------------------------


def test_5_a_disk_lio_fileio_opened_under_another_udev_path_label_is_in_use(lab):
    """Host shape: a host exporting the spare disk over iSCSI through LIO's fileio backstore,
    set up by a provisioning script through configfs (``echo fd_dev_name=/dev/sdb,
    fd_dev_size=... > core/fileio_0/lun0/control; echo 1 > .../enable``) that labels the
    backstore with the name of the image it used to serve (``echo /srv/luns/lun0.img >
    .../udev_path``; or a backstore re-pointed by hand, the label left as it was). The
    kernel opened sdb (``fd_configure_device``: ``filp_open(fd_dev_name)``, a block device
    allowed, no claim, no holder, no process fd) and says so in ``info``
    (``fd_show_configfs_dev_params``: ``File: /dev/sdb``). ``udev_path`` is a separate
    attribute (``target_dev_udev_path_store`` copies any string into ``dev->udev_path``,
    enabled or not) that no opener reads.

    Why it reads idle: :func:`harness.host.storage._target_device` returns the label when it
    is not empty and reads ``info`` only for an empty one (read 27a's fix);
    :func:`harness.host.storage._outside_dev` finds ``/srv/luns/lun0.img`` a regular file,
    "an image", so nothing is exported.

    What would be lost: the iSCSI initiators' LUN goes to a guest (two writers of one disk).

    Fix: read the kernel's record (fileio's ``File:``, iblock's ``iBlock device:``/``UDEV
    PATH:`` in ``info``) for every enabled backstore, the label as well at most; a
    backstore whose two disagree counts both."""
    (lab.sys / "module/target_core_mod").mkdir()
    (lab.sys / "module/target_core_file").mkdir()
    lab.file("srv/luns/lun0.img", "")
    lun = "sys/kernel/config/target/core/fileio_0/lun0"
    lab.file(f"{lun}/udev_path", "/srv/luns/lun0.img\n")
    lab.file(f"{lun}/info", "Status: ACTIVATED  Max Queue Depth: 128  SectorSize: 512  "
                            "HwMaxSectors: 16384\n        TCM FILEIO ID: 0        File: "
                            "/srv/luns/lun0.img  Size: 0  Mode: O_DSYNC\n")
    lab.file(f"{lun}/enable", "1\n")
    lab.file(f"{lun}/control", "")
    assert _verdict(lab, SATA).idle, _verdict(lab, SATA).uses  # (the image: sdb idle)
    lab.file(f"{lun}/info", "Status: ACTIVATED  Max Queue Depth: 128  SectorSize: 512  "
                            "HwMaxSectors: 16384\n        TCM FILEIO ID: 0        File: "
                            "/dev/sdb  Size: 164696555520  Mode: O_DSYNC\n")
    v = _verdict(lab, SATA)
    assert not v.idle, f"sdb, which LIO's fileio backstore lun0 has open, was judged idle: " \
                       f"{v.evidence}"
    _refused_by_bind(lab, SATA, "sata-controller")


# -- controls ---------------------------------------------------------------------------------------


def test_control_a_legacy_gadget_over_an_image_leaves_the_disk_idle(lab):
    """g_nokia and g_mass_storage over image files (their LUNs too) leave sdb idle."""
    udc = _udc(lab)
    lab.file("srv/dut/phone.img", "")
    _legacy_gadget(lab, "g_nokia", "/srv/dut/phone.img")
    lab.file(f"sys/{udc}/gadget.0/lun0/file", "/srv/dut/phone.img\n")
    v = _verdict(lab, SATA)
    assert v.idle, v.uses
    inventory = parse_inventory(f'[[device]]\nrole = "sata-controller"\nbdf = "{SATA}"\n',
                                root=lab.sysfs())
    lines, ok = plan_inventory(lab.sysfs(), inventory)
    assert ok, "\n".join(lines)  # (plan would take it, as the helper above expects not)


def test_control_the_megaraid_controller_with_no_tool_holding_its_node_is_idle(lab):
    _megaraid(lab, held=False)
    v = _verdict(lab, MEGA)
    assert v.idle, v.uses
