"""Roles (nic, usb-device, usb-controller, sata-controller, nvme) and how each backend
realises them.

A scenario test asks for a role; the backend decides what plays it: an emulated QEMU model
(``--backend emulated``, everywhere) or a host device through vfio-pci / usb-host
(``--backend vfio`` on a VT-d host). Either way the test calls ``plug`` and ``unplug`` and runs
the same checks.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from harness.core.errors import HarnessError, QMPCommandError
from harness.core.pace import UNPLUG
from harness.core.paths import open_nofollow
from harness.core.roles import ROLES
from harness.qemu.machine import GuestSpec
from harness.host import usbhost
from harness.host.binding import explain_vfio_add_error, vfio_state


@dataclasses.dataclass(frozen=True)
class Platform:
    """A machine shape a scenario runs on; its ``id`` is a readable part of the test id."""

    id: str
    machine: str
    pci_hotplug: str = "acpi"
    usb: str = ""

    def spec(self, **overrides: Any) -> GuestSpec:
        return GuestSpec(machine=self.machine, pci_hotplug=self.pci_hotplug, usb=self.usb,
                         **overrides)


#: PCI devices: pc's root bus (ACPI hotplug), q35 root ports with ACPI or native PCIe hotplug.
PCI_PLATFORMS = (Platform("pc", "pc"), Platform("q35-acpi", "q35"),
                 Platform("q35-pciehp", "q35", pci_hotplug="pciehp"))


@dataclasses.dataclass(frozen=True)
class Facts:
    """What the checks expect of a plugged device (None: not this role's, or not known)."""

    #: nic: the address the guest pings through it (its default route's gateway).
    gateway: str | None = None
    #: usb-device: its name as the guest's lsusb shows it, and as `info usb` shows it.
    product: str | None = None
    monitor_product: str | None = None
    #: A disk comes with the device (usb-storage, a SATA controller's disk): its size.
    disk_bytes: int | None = None
    #: usb-controller: the name of the USB device behind it, as the guest's lsusb shows it.
    behind_product: str | None = None
    #: The device id of the controller the disk hangs off, when it is not the device itself
    #: (the SATA stand-in's virtio-scsi carrier): a scan of the disk looks behind it too.
    disk_carrier: str | None = None
    #: A line for the report about how the role is played here.
    note: str | None = None


@dataclasses.dataclass
class Plugged:
    """A device the test hot-added, bound to its guest: ``unplug()`` undoes everything its
    ``plug`` did. Made by :meth:`harness.scenario.ScenarioRun.plug`."""

    device_id: str
    device: "HotplugDevice"
    add_seconds: float
    bus: str | None = None
    facts: Facts = Facts()
    #: What the device model keeps to undo its plug (a netdev, a disk node, a vfio lease).
    own: dict = dataclasses.field(default_factory=dict)
    removed: bool = False
    #: Host monotonic time device_add was sent, and the guest address QEMU gave a PCI device.
    add_sent: float = 0.0
    del_sent: float = 0.0
    pci_address: str | None = None
    #: Where ``query-pci`` listed the device just after ``device_add`` (a
    #: :class:`harness.probes.PciFunction`; None for a USB device).
    function: object = None
    #: The guest it is plugged into, and the test's ScenarioRun (set by ScenarioRun.plug).
    guest: object = None
    run: object = dataclasses.field(default=None, repr=False)

    def unplug(self, timeout: float | None = None):
        """``device_del`` and wait for its completion (default deadline: the guest's unplug
        deadline); the latency is recorded for the report."""
        return self.run.unplug(self.guest, self, timeout)

    def wait_removed(self, timeout: float | None = None):
        """After an ``unplug`` whose verdict was "paused" and a ``cont``: wait for the removal
        (no new request) and release what the plug set up."""
        return self.run.wait_removed(self.guest, self, timeout)


class HotplugDevice:
    """Base of every role realisation. ``id`` is the device's part of the test id."""

    role: str = ""
    id: str = ""
    backend: str = "emulated"
    #: The guest kernel driver expected to bind (``lspci -k``), if the role has one.
    guest_driver: str | None = None
    #: (regex, why) of guest kernel messages this device is known to cause that are not what
    #: the test checks: the end-of-test kernel check notes them instead of failing.
    kernel_noise: tuple[tuple[str, str], ...] = ()

    def plug(self, guest, device_id: str) -> Plugged:
        raise NotImplementedError

    def unplug(self, guest, plugged: Plugged, timeout: float = UNPLUG):
        result = guest.device_del(plugged.device_id, timeout=timeout)
        plugged.removed = True
        self.cleanup(guest, plugged)
        return result

    def command_line(self, guest, plugged: Plugged) -> list[str]:
        """The QEMU options that give a migration destination this plugged device, with the
        same id, backend, bus, slot and MAC, so the migration stream fits it."""
        raise HarnessError(f"cannot migrate a guest with {plugged.device_id} ({self!r}) plugged: "
                           "the harness does not know its command-line form",
                           hint="unplug it before migrating")

    def cleanup(self, guest, plugged: Plugged) -> None:
        """Release what ``plug`` set up besides the device (backends, host bindings)."""

    def host_state(self) -> list[dict] | None:
        """The host side of the device for a failure bundle (vfio: drivers, IOMMU group)."""
        return None

    def __repr__(self) -> str:
        return f"<{self.backend} {self.role} {self.id}>"


class EmulatedModel(HotplugDevice):
    """A QEMU device model (``driver``) and the guest driver expected to bind it. ``since``: the
    first QEMU with the model, for a model some supported QEMUs lack (its tests skip on them,
    saying so: :meth:`missing_from`)."""

    def __init__(self, id: str, driver: str, guest_driver: str, since: str | None = None):
        self.id = id
        self.driver = driver
        self.guest_driver = guest_driver
        self.since = since

    def missing_from(self, qemu_devices: "frozenset[str] | None", qemu: str) -> str | None:
        """Why this model cannot run on the QEMU under test (None: it can). ``qemu_devices``:
        that QEMU's ``-device help`` names; None when it could not be asked (then QEMU's own
        error at ``device_add`` says it)."""
        if self.since is None or qemu_devices is None or self.driver in qemu_devices:
            return None
        return (f"{qemu} has no {self.driver} device model ({self.since} and newer emulate it; "
                "--qemu-binary can point at one)")


class EmulatedNic(EmulatedModel):
    """A QEMU NIC model on its own user-mode network (its own subnet, gateway .2)."""

    role = "nic"

    def plug(self, guest, device_id: str, *, network: str | None = None, **at) -> Plugged:
        """``at``: where (``bus``/``addr``/``multifunction``, else a free bus) and the model's
        other properties (``mac``, ``failover``, ``failover_pair_id``), kept for the migration
        destination's command line; ``network``: another NIC's user network (its
        ``own["net"]``: the two halves of a failover pair share one), else a subnet of its own."""
        net = network or f"10.0.{10 + guest.allocate('subnet')}.0/24"  # 10.0.2.0/24: management
        netdev = f"{device_id}-net"
        guest.qmp("netdev_add", type="user", id=netdev, net=net)
        bus = at.pop("bus", None) or guest.free_bus()
        seconds = guest.device_add(self.driver, device_id, bus=bus, netdev=netdev, **at)
        props = {k: ("on" if v else "off") if isinstance(v, bool) else v
                 for k, v in at.items() if k not in ("addr", "mac")}
        return Plugged(device_id, self, seconds, bus, Facts(gateway=net.rsplit(".", 1)[0] + ".2"),
                       own={"netdev": netdev, "net": net, "props": props})

    def command_line(self, guest, plugged: Plugged) -> list[str]:
        fn = plugged.function
        mac = guest.qmp("qom-get", path=f"/machine/peripheral/{guest.qemu_id(plugged.device_id)}",
                        property="mac")
        props = "".join(f",{k}={v}" for k, v in plugged.own["props"].items())
        return ["-netdev", f"user,id={plugged.own['netdev']},net={plugged.own['net']}",
                "-device", f"{self.driver},id={plugged.device_id},netdev={plugged.own['netdev']},"
                           f"bus={plugged.bus},addr={fn.slot:#x}.{fn.function:#x},mac={mac}{props}"]

    def cleanup(self, guest, plugged: Plugged) -> None:
        guest.qmp("netdev_del", id=plugged.own["netdev"])


#: The MBR disk identifier of every disk image the harness writes (``fdisk -l``: "Disk
#: identifier: 0x48480001"): a disk that shows it is one of ours, with its two partitions.
HARNESS_DISK_ID = 0x48480001


def _disk_image(path, size: int) -> None:
    """A sparse raw disk with an MBR of two partitions (Linux, swap), like the guide's /dev/sdb,
    so the guest's ``fdisk -l`` has partitions to list."""
    sectors = size // 512
    half = sectors // 2
    entries = b""
    for start, count, ptype in ((2048, half - 2048, 0x83), (half, sectors - half, 0x82)):
        entries += bytes([0, 0xFE, 0xFF, 0xFF, ptype, 0xFE, 0xFF, 0xFF]) + start.to_bytes(4, "little") \
            + count.to_bytes(4, "little")
    mbr = bytearray(512)
    mbr[440:444] = HARNESS_DISK_ID.to_bytes(4, "little")
    mbr[446:446 + len(entries)] = entries
    mbr[510:512] = b"\x55\xaa"
    # A new file, never through a link (root writes it: a planted link would be root's write)
    with os.fdopen(open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as f:
        f.write(mbr)
        f.truncate(size)


def _add_disk(guest, node: str, size: int) -> None:
    path = guest.scratch_path(f"{node}.raw")
    path.unlink(missing_ok=True)  # (an earlier plug's that failed, in the guest's own folder)
    _disk_image(path, size)
    guest.qmp("blockdev-add", driver="raw", **{"node-name": node},
              file={"driver": "file", "filename": str(path)})


def _del_disk(guest, node: str) -> None:
    guest.qmp("blockdev-del", **{"node-name": node})
    guest.scratch_path(f"{node}.raw").unlink(missing_ok=True)


class EmulatedDisk(HotplugDevice):
    """A virtio-blk disk with a partitioned image in the guest's temp folder: not one of the
    guide's roles, the disk the lifecycle scenarios hot-add beside a NIC, reboot with and
    unplug under I/O."""

    role = "disk"
    id = "virtio-blk"
    guest_driver = "virtio_blk"

    def __init__(self, disk_bytes: int = 32 << 20):
        self.disk_bytes = disk_bytes

    def plug(self, guest, device_id: str) -> Plugged:
        node = f"{device_id}-node"
        _add_disk(guest, node, self.disk_bytes)
        bus = guest.free_bus()
        seconds = guest.device_add("virtio-blk-pci", device_id, bus=bus, drive=node)
        return Plugged(device_id, self, seconds, bus, Facts(disk_bytes=self.disk_bytes),
                       own={"disk_node": node})

    def cleanup(self, guest, plugged: Plugged) -> None:
        _del_disk(guest, plugged.own["disk_node"])

    def command_line(self, guest, plugged: Plugged) -> list[str]:
        # (the destination uses the same disk file: migration moves RAM and device state only)
        node, fn = plugged.own["disk_node"], plugged.function
        return ["-blockdev", f"driver=raw,node-name={node},file.driver=file,"
                             f"file.filename={guest.scratch_path(node + '.raw')}",
                "-device", f"virtio-blk-pci,id={plugged.device_id},drive={node},bus={plugged.bus},"
                           f"addr={fn.slot:#x}.{fn.function:#x}"]


class EmulatedUsbDevice(HotplugDevice):
    """A QEMU USB device on the guest's USB bus; usb-storage brings a disk."""

    role = "usb-device"

    def __init__(self, id: str, driver: str, product: str, monitor_product: str,
                 disk_bytes: int = 0):
        self.id = id
        self.driver = driver
        self.product = product                  # as the guest's lsusb names it
        self.monitor_product = monitor_product  # as `info usb` names it
        self.disk_bytes = disk_bytes

    def plug(self, guest, device_id: str) -> Plugged:
        props, own = {}, {}
        if self.disk_bytes:
            own["disk_node"] = props["drive"] = f"{device_id}-disk"
            _add_disk(guest, props["drive"], self.disk_bytes)
        seconds = guest.device_add(self.driver, device_id, **props)
        return Plugged(device_id, self, seconds, facts=Facts(
            product=self.product, monitor_product=self.monitor_product,
            disk_bytes=self.disk_bytes or None), own=own)

    def cleanup(self, guest, plugged: Plugged) -> None:
        if "disk_node" in plugged.own:
            _del_disk(guest, plugged.own["disk_node"])


class EmulatedUsbController(EmulatedModel):
    """A whole USB host controller (a PCI device) with a USB tablet plugged in behind it."""

    role = "usb-controller"

    def plug(self, guest, device_id: str) -> Plugged:
        bus = guest.free_bus()
        seconds = guest.device_add(self.driver, device_id, bus=bus)
        behind = f"{device_id}-tablet"
        guest.device_add("usb-tablet", behind, bus=f"{device_id}.0")
        return Plugged(device_id, self, seconds, bus, Facts(behind_product="QEMU USB Tablet"),
                       own={"behind_id": behind})


class EmulatedSataController(HotplugDevice):
    """The guide's SATA controller: ich9-ahci, at slot 6 on pc's root bus as in the guide.

    QEMU cannot hot-add a disk onto an AHCI bus (``Bus 'sata.0' does not support
    hotplugging``) nor hot-add a controller that already has one, so the disk half of the
    guide's check is played by a SCSI disk on a hot-added virtio-scsi controller: the guest sees
    it through the same SCSI disk layer (``sd``, ``/dev/sdX``) that an AHCI disk uses.
    """

    role = "sata-controller"
    id = "ich9-ahci"
    guest_driver = "ahci"
    disk_bytes = 64 << 20
    #: Known guest-kernel noise of this stand-in (see HotplugDevice.kernel_noise): Debian 12's
    #: 6.1 kernel sometimes warns removing the virtio-scsi disk carrier (WARNING in
    #: __cancel_work_timer from virtscsi_remove; seen on the systemd guest, q35 ACPI). The
    #: carrier is ours, not the guide's controller: the warning is noted, not failed on.
    kernel_noise = ((r"__cancel_work_timer[\s\S]*virtscsi_remove",
                     "the guest kernel's virtio_scsi warned removing the SATA stand-in's disk "
                     "carrier (a known bug of Debian 12's 6.1 kernel, not of the AHCI controller)"),)

    def plug(self, guest, device_id: str) -> Plugged:
        bus = guest.free_bus()
        seconds = guest.device_add("ich9-ahci", device_id, bus=bus,
                                   **guest.spec.fixed_slot(self.role, bus))
        hba, disk, node = f"{device_id}-hba", f"{device_id}-disk", f"{device_id}-disk0"
        guest.device_add("virtio-scsi-pci", hba, bus=guest.free_bus())
        _add_disk(guest, node, self.disk_bytes)
        guest.device_add("scsi-hd", disk, bus=f"{hba}.0", drive=node)
        return Plugged(device_id, self, seconds, bus, Facts(
            disk_bytes=self.disk_bytes, disk_carrier=hba,
            note="disk on a hot-added virtio-scsi controller: QEMU cannot hot-add a disk onto AHCI"),
            own={"disk_carrier": [disk, hba], "disk_node": node})

    def cleanup(self, guest, plugged: Plugged) -> None:
        for carrier in plugged.own["disk_carrier"]:
            guest.device_del(carrier)
        _del_disk(guest, plugged.own["disk_node"])


class EmulatedNvme(HotplugDevice):
    """An NVMe controller with one namespace: QEMU's ``nvme`` with ``drive=`` makes namespace 1
    of that disk (a partitioned image in the guest's temp folder); ``serial=`` is required."""

    role = "nvme"
    id = "nvme"
    guest_driver = "nvme"
    disk_bytes = 64 << 20

    def plug(self, guest, device_id: str) -> Plugged:
        node = f"{device_id}-ns1"
        _add_disk(guest, node, self.disk_bytes)
        bus = guest.free_bus()
        try:
            seconds = guest.device_add("nvme", device_id, bus=bus, drive=node,
                                       serial=f"hh-{device_id}")
        except BaseException:
            _del_disk(guest, node)
            raise
        return Plugged(device_id, self, seconds, bus, Facts(disk_bytes=self.disk_bytes),
                       own={"disk_node": node})

    def cleanup(self, guest, plugged: Plugged) -> None:
        _del_disk(guest, plugged.own["disk_node"])


class Placeholder(HotplugDevice):
    """Stands for a role no device can play in this run; ``why`` is what its tests report in
    set-up (a role nobody can play is not covered, which fails the run; it is never a skip)."""

    backend = "none"

    def __init__(self, role: str, why: str, id: str | None = None):
        self.role = role
        self.id = id or role
        self.why = why


#: The guest driver a host device of a role binds whatever its make (every NVMe controller is
#: nvme's; a NIC or SATA controller's depends on the model).
HOST_ROLE_DRIVERS = {"nvme": "nvme"}


class VfioPci(HotplugDevice):
    """A host PCI device passed through: bound to vfio-pci (with its IOMMU group) for the time it
    is plugged, ``device_add vfio-pci,host=BDF`` as in the guide, given back afterwards."""

    backend = "vfio"

    def __init__(self, entry, binder, allowed: set[str], prepare=None, managed: str | None = None):
        self.entry = entry
        #: --driver libvirt: <hostdev managed=...>; 'yes': libvirt moves the device to
        #: vfio-pci on attach and back on detach (the harness proves it idle, journals it and
        #: checks it came back). None: the QMP driver.
        self.managed = managed
        self.role = entry.role
        self.id = entry.name
        self.binder = binder
        self.allowed = allowed
        #: Called once the device is on vfio-pci, right before ``device_add``
        #: (:meth:`harness.backends.Vfio.before_plug`).
        self.prepare = prepare
        self.guest_driver = getattr(entry, "guest_driver", None) or HOST_ROLE_DRIVERS.get(self.role)
        #: What the report says this test passed through.
        self.passthrough = f"vfio-pci host={entry.bdf}" + (
            f" (VF {entry.vf} of {entry.pf})" if getattr(entry, "pf", None) else "")

    def plug(self, guest, device_id: str) -> Plugged:
        lease = self.binder.bind(self.entry.bdf, allowed=self.allowed,
                                 moved_by="libvirt" if self.managed == "yes" else None)
        try:
            if self.prepare is not None:
                self.prepare()
            bus = guest.free_bus()
            with self.binder.handover(lease):  # (libvirt moves it: proven idle again first)
                seconds = add_vfio(guest, device_id, self.entry.bdf, bus=bus,
                                   **guest.spec.fixed_slot(self.role, bus),
                                   **({"managed": self.managed} if self.managed else {}))
        except BaseException as e:
            # Ctrl-C or SIGTERM can land while QEMU is attaching the device: QEMU then holds
            # the group and the release fails. That must not replace the interrupt (or QEMU's
            # refusal): the binder keeps the lease and gives the group back when it is closed,
            # after the guests (HarnessSession.close).
            try:
                lease.release()
            except HarnessError as failed:
                if isinstance(e, Exception):
                    e.add_note(f"(the device goes back to its host driver once the guest is "
                               f"closed: {failed.message})")
            raise
        e = self.entry
        return Plugged(device_id, self, seconds, bus, Facts(
            gateway=getattr(e, "gateway", None), disk_bytes=getattr(e, "disk_bytes", None),
            behind_product=getattr(e, "product", None)), own={"lease": lease})

    def cleanup(self, guest, plugged: Plugged) -> None:
        given_back = plugged.own["lease"].release()
        if plugged.run is not None:  # (who gave each device back: the harness, or libvirt)
            for r in given_back:
                plugged.run.note(f"host: {r}")

    def host_state(self) -> list[dict]:
        return vfio_state("/", [self.entry.bdf])


class UsbHost(HotplugDevice):
    """A host USB device through ``usb-host``, chosen as the guide's ``usb_add`` did: by
    ``hostbus``/``hostaddr`` (``host:003.003``) or by ``vendorid``/``productid``
    (``host:03f0:8607``; QEMU gets the proven device's bus and address too)."""

    backend = "vfio"
    role = "usb-device"

    def __init__(self, entry, form: str, binder):
        self.entry = entry
        self.form = form
        self.binder = binder
        self.id = f"{entry.name}-{form}"
        self.passthrough = (f"usb-host hostbus={entry.hostbus},hostaddr={entry.hostaddr}"
                            if form == "busaddr" else
                            f"usb-host vendorid={entry.vendorid},productid={entry.productid}")

    def plug(self, guest, device_id: str) -> Plugged:
        e = self.entry
        # Proven idle again right before QEMU opens it (the doctor did at the run's start),
        # under the vfio journal's lock (harness.host.usbhost).
        with usbhost.handed(self.binder, e, self.form) as usb:
            # Both forms name the device proven idle by its bus and address: usb-host matches
            # every property given, and with the ids alone it keeps a standing filter (its
            # auto-scan opens any twin that appears once this one leaves the bus).
            ids = ({"vendorid": int(e.vendorid, 16), "productid": int(e.productid, 16)}
                   if self.form == "vidpid" else {})
            seconds = guest.device_add("usb-host", device_id, **ids, hostbus=usb.busnum,
                                       hostaddr=usb.devnum)
        return Plugged(device_id, self, seconds, facts=Facts(
            product=e.product or "", monitor_product=e.product or "",
            disk_bytes=getattr(e, "disk_bytes", None) or None), own={"usb": usb.name})

    def cleanup(self, guest, plugged: Plugged) -> None:
        # Its interfaces back on their host drivers: QEMU binds them back when it closes the
        # device cleanly (device_del); one that aborted or was killed left them on none.
        self.binder.usb.give_back(plugged.own["usb"])


EMULATED = {
    "nic": (
        # The guide's NIC is an Intel one: e1000e (82574L) stands in for it.
        EmulatedNic("e1000e", "e1000e", guest_driver="e1000e"),
        EmulatedNic("virtio-net", "virtio-net-pci", guest_driver="virtio-pci"),
        # The 82576 with SR-IOV (the guide's igb/igbvf family): QEMU 8.0 and newer only.
        EmulatedNic("igb", "igb", guest_driver="igb", since="QEMU 8.0"),
    ),
    "usb-device": (
        EmulatedUsbDevice("tablet", "usb-tablet", "QEMU QEMU USB Tablet", "QEMU USB Tablet"),
        EmulatedUsbDevice("mouse", "usb-mouse", "QEMU QEMU USB Mouse", "QEMU USB Mouse"),
        EmulatedUsbDevice("storage", "usb-storage", "QEMU QEMU USB HARDDRIVE", "QEMU USB MSD",
                          disk_bytes=32 << 20),
    ),
    "usb-controller": (
        EmulatedUsbController("qemu-xhci", "qemu-xhci", guest_driver="xhci_hcd"),
        EmulatedUsbController("usb-ehci", "usb-ehci", guest_driver="ehci-pci"),
    ),
    "sata-controller": (EmulatedSataController(),),
    "nvme": (EmulatedNvme(),),
}

#: USB devices: the guide's ``-usb`` bus (UHCI on pc, EHCI+UHCI on q35) and a qemu-xhci bus.
USB_PLATFORMS = (Platform("pc-uhci", "pc", usb="default"), Platform("q35-ehci", "q35", usb="default"),
                 Platform("q35-xhci", "q35", usb="xhci"))
#: CPU and memory hot-add: the machine type is the only axis.
MACHINE_PLATFORMS = (Platform("pc", "pc"), Platform("q35", "q35"))

PLATFORMS = {
    "nic": PCI_PLATFORMS,
    "usb-controller": PCI_PLATFORMS,
    "sata-controller": PCI_PLATFORMS,
    "nvme": PCI_PLATFORMS,
    "usb-device": USB_PLATFORMS,
    "cpu": MACHINE_PLATFORMS,
    "memory": MACHINE_PLATFORMS,
}


def add_vfio(guest, device_id: str, host: str, **props) -> float:
    """``device_add vfio-pci,host=...``; a refusal says what is wrong on the host, read from
    its sysfs (harness.host.binding), instead of QEMU's terse words."""
    try:
        return guest.device_add("vfio-pci", device_id, host=host, **props)
    except QMPCommandError as e:  # (libvirt's refusals are QMPCommandErrors of libvirtError)
        raise explain_vfio_add_error("/", host, e.qemu_desc, who="libvirt" if e.qemu_class ==
                                     "libvirtError" else "QEMU") from e


assert tuple(PLATFORMS) == ROLES, "a role of harness.core.roles without platforms, or the reverse"
