"""Proven idle: a PCI function is taken only with positive evidence that nothing on the host
uses it; without that evidence it is refused, and the refusal names what was lacking.

The rule (docs/vfio.md, "What the harness takes"), for the function and everything below it
in sysfs:

* its class is one the harness has a role for (Ethernet, USB host, SATA/SAS/RAID/IDE
  storage); a display controller is never taken (``boot_vga``, a framebuffer the console
  draws on), nor anything else: there is no rule that could prove it idle;
* every network interface of it and of its SR-IOV VFs, in every network namespace, is idle
  (:mod:`.network`), and a NIC on a host driver has at least one interface the harness can
  see (else it may live in a container's namespace, or a DPDK process may drive it);
* every VF is on no driver or pci-stub, or on a host driver with idle interfaces (a VF on
  vfio-pci may be in a guest); and a PF that would leave its driver has no VF at all (its
  driver's remove deletes them, and nothing makes them again: :func:`plan_group`);
* every block device below it (NVMe multipath heads under ``nvme-subsystem`` included) is
  idle (:mod:`.storage`), and every device node below it (``/dev/input/event*``,
  ``/dev/bus/usb/...``, ``/dev/ttyUSB*``, the NVMe controller's ``/dev/nvme0`` and generic
  ``/dev/ng0n1``, a multipath head's too) is open by no process, by path or by number; no
  keyboard below it feeds the console;
* no GPIO line of a chip below it (a USB serial adapter's) is held, by the kernel
  (/sys/kernel/debug/gpio) or by a process, and every other device below it that is bound
  to a driver is one whose use those rules judge (:data:`_BOUND_JUDGED`: a HID device on
  hid-generic, a SCSI disk on sd...): an I2C sensor behind a USB-to-I2C bridge keeps its
  controller;
* its BARs, config space, ROM and peer-to-peer memory are mapped by no process (through
  any mount of sysfs or procfs, or /dev/mem), and nvmet lends none of its p2pmem to an
  RDMA NIC;
* on vfio-pci: its ``/dev/vfio/GROUP`` is open by no process (or the group is this run's).

What cannot be read (``ip`` or ``ss`` missing, a namespace it cannot enter, another
process's fds without root, a loaded ZFS) counts as "in use". So a host shape the harness does
not know fails closed: nothing it cannot explain is taken.

:func:`plan_group` applies this to an IOMMU group: the members that must move to vfio-pci
(each listed in the inventory, each proven idle), the bridges that stay, and the problems.

    >>> usage = HostUsage.read(Sysfs("/"))                 # doctest: +SKIP
    >>> usage.verdict("0000:05:00.0").uses
    ('enp5s0f0 is up with the address 10.0.5.1/24',)
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from pathlib import Path

from harness.core.text import shown
from harness.host.network import NetView
from harness.host.sriov import physfn_of, vf_index, vfs_of
from harness.host.storage import OpenFiles, StorageView, devname, other_paths, pci_file_holders
from harness.host.sysfs import (NVME_CLASS, STORAGE_CLASSES, SYSFS_BDF, PciDevice, Sysfs, UsbDevice,
                                bdfs_in_path, is_usb_host_controller, kernel_params, parse_bdf)

#: USB interface drivers whose use the rule can judge: through their network interfaces,
#: disks or device nodes (all looked at), or not at all (hubs). An interface on any other
#: driver (btusb: Bluetooth sockets the harness cannot see) keeps its controller.
USB_DRIVERS_JUDGED = {
    "hub", "usbhid", "usb-storage", "uas", "cdc_ether", "cdc_ncm", "rndis_host", "r8152",
    "ax88179_178a", "asix", "cdc_acm", "ftdi_sio", "pl2303", "cp210x", "ch341", "usbserial_generic",
    "snd-usb-audio", "uvcvideo", "usbfs"}
#: USB NIC drivers: their interface shows its netdev below it, unless the netdev went to
#: another namespace, where the harness cannot tie it to the device.
_USB_NIC_DRIVERS = {"cdc_ether", "cdc_ncm", "rndis_host", "r8152", "ax88179_178a", "asix"}
_USB_INTERFACE = re.compile(r"(?:\d+-[\d.]+|\d+-0):\d+\.\d+")
#: A USB device (``3-4``, a root hub ``usb3``), whose own driver is ``usb`` (the generic one,
#: which hands the interfaces to theirs). Any other takes the whole device: usbip-host exports
#: it to another machine, with no interface driver, node or process on this host to show it.
_USB_DEVICE = re.compile(r"usb\d+|\d+-[\d.]+")
_USB_DEVICE_DRIVERS_JUDGED = {None, "usb"}
#: NIC drivers that serve several ports on one PCI function (one netdev each, told apart by
#: ``dev_port``): such a function is proven only once its number of ports is known.
_MULTI_PORT = {"cxgb3", "cxgb4", "nfp", "mlx4_core", "mlxsw_spectrum", "mlxsw_spectrum2",
               "mlxsw_spectrum3", "mlxsw_spectrum4", "mlxsw_switchx2", "prestera_pci",
               "sky2", "skge"}
#: Drivers that leave a device to nobody on the host.
_NO_HOST_DRIVER = {None, "pci-stub"}
#: A function's sysfs files that reach the device itself: BARs, config space, option ROM,
#: and the peer-to-peer memory it publishes (an NVMe CMB: ``p2pmem/allocate``, which a
#: process maps to move data between devices with no driver of theirs to show it).
_BAR_FILE = re.compile(r"resource\d+(?:_wc)?|config|rom|p2pmem/allocate")
_IORESOURCE_IO = 0x100
#: Devices below a function, bound to a driver, whose use shows in full in what the rule
#: judges below them: their disks (a SCSI disk or CD-ROM), network interfaces, device nodes
#: (a HID device's input and hidraw nodes, a USB serial port's tty), GPIO lines (a GPIO chip
#: is on gpio_stub_drv, a placeholder). (bus, driver); any other bound device below a function
#: keeps it (an I2C sensor behind a USB-to-I2C bridge, a platform device of a HID sensor hub,
#: an RDMA driver on the auxiliary bus): a kernel driver may use it with nothing else to show.
_BOUND_JUDGED = {
    ("hid", "hid-generic"), ("hid", "hid-multitouch"), ("scsi", "sd"), ("scsi", "sr"),
    ("usb-serial", "cp210x"), ("usb-serial", "ftdi_sio"), ("usb-serial", "pl2303"),
    ("usb-serial", "ch341-uart"), ("usb-serial", "generic"), ("gpio", "gpio_stub_drv"),
    ("virtio", "virtio_net"), ("virtio", "virtio_blk"), ("virtio", "virtio_scsi"),
    ("auxiliary", "mlx5_core.eth")}
#: Buses whose every device below a function serves that function's network interfaces,
#: which are judged: a NIC's PHYs (r8169's, phylib's; the driver is named after the chip).
_BUSES_JUDGED = {"mdio_bus"}
#: A hub's port (``usb1-port2``, ``1-4-port1``): the kernel gives it a driver of its own with
#: no bus; what uses it is the USB device on it, judged as one, and whether it is switched off
#: (:func:`_ports_off`).
_USB_PORT = re.compile(r"(?:usb\d+|\d+-[\d.]+)-port\d+")
#: What a device on a bus is called in a refusal.
_ON_BUS = {"i2c": "an I2C client", "hid": "a HID device", "spi": "an SPI device",
           "platform": "a platform device", "scsi": "a SCSI device", "gpio": "a GPIO chip",
           "usb-serial": "a USB serial port", "auxiliary": "an auxiliary device",
           "mdio_bus": "an MDIO device", "virtio": "a virtio device"}
VFIO = "vfio-pci"


def _proc_bus_pci(bdf: str) -> tuple[str, ...]:
    """A function's file under /proc/bus/pci: ``00/03.0`` on x86's domain 0000; on another
    domain, and on every domain on arm64 and riscv64 (their ``pci_proc_domain()`` is 1), its
    folder names the domain too (``0000:00/03.0``). Both, where they can be."""
    domain, bus, slot_fn = bdf.split(":")
    named = f"/proc/bus/pci/{domain}:{bus}/{slot_fn}"
    return (f"/proc/bus/pci/{bus}/{slot_fn}", named) if domain == "0000" else (named,)


def role_of(dev: PciDevice) -> str | None:
    """The role a PCI function could play, or None: the harness takes nothing else."""
    base = dev.class_code >> 8
    if base == 0x0200:
        return "nic"
    if is_usb_host_controller(dev.class_code):  # (not a USB4 NHI: its use is elsewhere)
        return "usb-controller"
    if base in STORAGE_CLASSES:
        return "sata-controller"
    if base == NVME_CLASS:
        return "nvme"
    return None


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether one PCI function is proven idle: ``uses`` (why it is in use, or what could not
    be proven; empty when idle) and ``evidence`` (what was proven). Idle needs both: no use,
    and something read that shows it (no evidence at all proves nothing)."""

    bdf: str
    uses: tuple[str, ...]
    evidence: tuple[str, ...]

    @property
    def idle(self) -> bool:
        return not self.uses and bool(self.evidence)


class HostUsage:
    """The host's network, storage and open files, read once; :meth:`verdict` per function.
    ``cleared_storage``: controllers the inventory says hold no host filesystem
    (``no_host_filesystems = true``), for which a filesystem whose disks cannot be told (ZFS)
    is no reason to refuse. ``nic_ports``: NIC function -> its number of ports, as the
    inventory states it (``ports = N``; :func:`_ports_unseen`)."""

    def __init__(self, fs: Sysfs, net: NetView, storage: StorageView,
                 cleared_storage: "set[str] | frozenset[str]" = frozenset(),
                 nic_ports: "dict[str, int] | None" = None):
        self.fs, self.net, self.storage = fs, net, storage
        self.cleared = {parse_bdf(b) for b in cleared_storage}
        self.nic_ports = {parse_bdf(b): n for b, n in (nic_ports or {}).items()}
        self._reps: dict[str, dict] = {}  # (:meth:`_representors_of`)

    @classmethod
    def read(cls, root: "str | Path | Sysfs" = "/",
             cleared_storage: "set[str] | frozenset[str]" = frozenset(),
             nic_ports: "dict[str, int] | None" = None) -> "HostUsage":
        fs = Sysfs.of(root)
        # (the network last: a disk the move takes is claimed right before it, so a mount
        # after this read fails; an interface has no such claim, so its evidence is read
        # after the storage read's seconds, which any user can stretch to its budgets)
        storage = StorageView.read(fs)
        return cls(fs, NetView.read(fs), storage, cleared_storage, nic_ports)

    def verdict(self, bdf: str, held_groups: "set[int] | frozenset[int]" = frozenset()) -> Verdict:
        """``held_groups``: IOMMU groups this run holds already (its own QEMU may have them
        open)."""
        dev = self.fs.pci_device(bdf)
        uses: list[str] = []
        evidence: list[str] = []
        role = role_of(dev)
        if role is None:
            uses += self._display(dev) + [
                f"{dev.bdf} is a {dev.class_name}: the harness has no role for that class, so "
                "no rule that could prove it idle"]
        self._driver(dev, role, held_groups, uses, evidence)
        tree = _judged_tree(self.fs, dev.path)
        self._network(dev, role, tree, uses, evidence)
        for vf in vfs_of(self.fs, dev.bdf):
            self._vf(vf, uses, evidence)
        self._storage(dev, tree, uses, evidence)
        _held(self, dev, role, tree, uses, evidence)
        return _verdict(dev.bdf, uses, evidence)

    def _driver(self, dev: PciDevice, role, held_groups, uses: list, evidence: list) -> None:
        if dev.driver in _NO_HOST_DRIVER:
            evidence.append(f"{dev.bdf} is on {dev.driver or 'no driver'}: no host driver uses it")
        elif dev.driver == VFIO:
            self._vfio(dev, held_groups, uses, evidence)
        # On vfio-pci or on no driver too: a process whose fds or maps cannot be read may hold
        # the group, or drive the function from user space through its BARs (:meth:`_bars`).
        if self.storage.problems and not (dev.driver == VFIO and dev.iommu_group in held_groups):
            uses += [f"cannot tell whether {dev.bdf} is in use: {p}"
                     for p in self.storage.problems]

    def _vfio(self, dev: PciDevice, held_groups, uses: list, evidence: list) -> None:
        """A function on vfio-pci is idle only while no process holds its group: its group node
        /dev/vfio/GROUP or a vfio device fd of a member open (``dpdk-testpmd``, another run's
        QEMU) owns the group, and what joins it joins that process's IOMMU domain. One piece
        for the proof (:meth:`_driver`) and for the open files read again under the claim
        (:func:`uses_below`). ``held_groups``: this run's groups (its own QEMU may hold them)."""
        node = f"/dev/vfio/{dev.iommu_group}"
        number = self.fs.vfio_group_dev(dev.iommu_group) \
            if dev.iommu_group is not None else None
        users = self.storage.opened.users("char", node[len("/dev/"):], number)
        users += [f"{u} through a vfio device fd" for u in
                  self.storage.opened.vfio_device_users(
                      self.fs, self.fs.iommu_group_members(dev.iommu_group)
                      if dev.iommu_group is not None else [dev.bdf])]
        if dev.iommu_group in held_groups:
            evidence.append(f"{dev.bdf} is on vfio-pci for this run")
        elif number is None:
            uses.append(f"{dev.bdf} is on vfio-pci and the device number of {node} cannot "
                        f"be read (/sys/class/vfio/{dev.iommu_group}/dev): a process may "
                        "hold the group through a node of another path")
        elif users:
            uses.append(f"{dev.bdf} is on vfio-pci and {node} is open by "
                        f"{', '.join(users)}")
        else:
            evidence.append(f"{dev.bdf} is on vfio-pci and {node} is open by no process")

    def _network(self, dev: PciDevice, role, tree: "_Subtree", uses: list, evidence: list) -> None:
        host_driver = dev.driver not in _NO_HOST_DRIVER | {VFIO}
        netdevs = self.net.netdevs_of(dev.path, tree.netdevs)
        if role == "nic" and host_driver and not self.net.problems:
            uses += _ports_shown(self.fs, self.net, dev, netdevs, self.nic_ports.get(dev.bdf))
        self._interfaces(dev.bdf, netdevs, role == "nic" and host_driver, uses, evidence)
        pf = physfn_of(self.fs, dev.bdf)
        if pf and self.fs.pci_exists(pf):
            _representor(self, dev, pf, uses, evidence)

    def _interfaces(self, label: str, netdevs: list, may_have: bool, uses: list,
                    evidence: list) -> None:
        if (netdevs or may_have) and self.net.problems:
            uses += [f"cannot tell whether {label}'s interfaces are in use: {p}"
                     for p in self.net.problems]
        for nd in netdevs:  # what can be read is shown too (an unreadable namespace: above)
            if self.net.namespaces.get(nd.namespace) and self.net.namespaces[nd.namespace].problems:
                continue
            why, idle = self.net.use_of(nd)
            uses += why
            if not why:
                evidence.append(idle)

    def usb_verdict(self, usb: UsbDevice, cleared: bool = False) -> Verdict:
        """The same rule for a USB device (its interfaces, disks and device nodes), which
        QEMU's usb-host takes from its host drivers. ``cleared``: its inventory entry says
        it holds no host filesystem (``no_host_filesystems``)."""
        uses: list[str] = []
        evidence: list[str] = []
        tree = _judged_tree(self.fs, usb.path)
        self._interfaces(usb.name, self.net.netdevs_of(usb.path, tree.netdevs), False, uses,
                         evidence)
        self._storage(None, tree, uses, evidence, usb.name, cleared)
        self._nodes(usb.name, usb.path, tree, uses, evidence)
        uses += [f"cannot tell whether {usb.name} is in use: {p}" for p in self.storage.problems]
        return _verdict(usb.name, uses, evidence)

    def _vf(self, vf: str, uses: list, evidence: list) -> None:
        dev = self.fs.pci_device(vf)
        if dev.driver in _NO_HOST_DRIVER:  # (a user-space driver may map its BARs)
            held: list[str] = []
            self._bars(dev, held)
            uses += [f"its VF {u}" for u in held]
            evidence.append(f"its VF {vf} is on {dev.driver or 'no driver'}")
        elif dev.driver == VFIO:
            uses.append(f"its VF {vf} is on vfio-pci: a guest may use it (unbinding the PF "
                        "would remove it)")
        else:
            sub = self.verdict(vf)
            uses += [f"its VF {u}" for u in sub.uses]
            evidence += [f"its VF {e}" for e in sub.evidence]

    def _storage(self, dev: PciDevice | None, tree: "_Subtree", uses: list,
                 evidence: list, label: str = "", cleared: bool = False) -> None:
        """Its disks' uses; and a filesystem whose disk cannot be told (an automount point, ZFS)
        may be on any storage controller, and on any function or USB device with a disk below
        it (a USB backup disk that ``x-systemd.automount`` mounts on the next access)."""
        disks = tree.blocks + (_nvme_heads(self.fs, dev.path) if dev else [])
        for name in disks:
            why = self.storage.use_of_block(name)
            uses += why
            if not why:
                evidence.append(f"{name}: not mounted, not swap, not held, not a btrfs device, "
                                "open by no process")
        if dev and not disks and role_of(dev) == "sata-controller":
            evidence.append(f"{dev.bdf}: no disk below it (no drive on its ports)")
        name = dev.bdf if dev else label
        if self.storage.unmapped and (disks or (dev and dev.class_code >> 16 == 0x01)):
            if (dev.bdf in self.cleared) if dev else cleared:
                evidence.append(f"{name}: the inventory says it holds none of "
                                f"{'; '.join(self.storage.unmapped)} (no_host_filesystems)")
            else:
                uses.append(f"{name} may hold {'; '.join(self.storage.unmapped)}: the harness "
                            "cannot tell which " + ("controller" if dev else "disk") +
                            " does (if this one does not, say so in its inventory entry: "
                            "no_host_filesystems = true)")

    def _nodes(self, label: str, path: str, tree: "_Subtree", uses: list,
               evidence: list) -> None:
        before = len(uses)
        for node, majmin in tree.char_nodes:
            name = devname(node, self.fs)
            who = [f"pid {pid} ({comm})" for pid, comm in
                   node_holders(self.fs, self.storage.opened, node, majmin)[1]]
            uses += [f"/dev/{name} (below {label}) is open by {w}" for w in who]
            uses += [f"/dev/{name} (below {label}) is exported by {t}" for t in
                     self.storage.exported.get(majmin or "-", self.storage.exported.get(name, []))]
            if majmin in self.storage.consoles:
                uses.append(f"/dev/{name} (below {label}) is a kernel console "
                            f"({self.storage.consoles[majmin]} in /proc/consoles)")
            uses += _kernel_tty_uses(self.storage, node, name, majmin, label)
        uses += [f"{label}: {k}" for k in _console_inputs(self.fs, path, tree.inputs)]
        uses += [f"USB interface {name} (below {label}) is on {driver}, whose use the harness "
                 "cannot judge" for name, driver, _ in tree.usb_interfaces
                 if driver is not None and driver not in USB_DRIVERS_JUDGED]
        uses += [f"USB device {name} (below {label}) is on {driver}, not the generic usb driver: "
                 + ("usbip exports it to another machine" if driver == "usbip-host" else
                    "the harness cannot judge its use")
                 for name, driver in tree.usb_devices if driver not in _USB_DEVICE_DRIVERS_JUDGED]
        uses += [f"USB interface {name} (below {label}) is on the network driver {driver} and "
                 "shows no network interface here (another namespace may use it)"
                 for name, driver, has_net in tree.usb_interfaces
                 if driver in _USB_NIC_DRIVERS and not has_net]
        uses += _mice_fed(self.storage.opened, label, tree)
        self._gpio(label, tree, uses)
        uses += _phys_used_elsewhere(label, path, tree)
        uses += _midi_held_by_the_kernel(self.fs, label, tree)
        uses += _rdma_ports_up(self.fs, label, tree) + _ports_off(self.fs, label, tree) + \
            _clock_pins(self.fs, label, tree) + _pps_pulsed(self.fs, label, tree)
        uses += [f"{_ON_BUS.get(bus, f'a device on the {bus} bus')} {name} (below {label}) is "
                 f"on the driver {driver}, whose use the harness cannot judge (a kernel driver "
                 "may use it with no node or process to show it)"
                 for name, bus, driver in tree.bound
                 if (bus, driver) not in _BOUND_JUDGED and bus not in _BUSES_JUDGED]
        if tree.char_nodes and len(uses) == before:
            evidence.append(f"{len(tree.char_nodes)} device node(s) below {label} "
                            "open by no process, no console keyboard")

    @functools.cached_property
    def gpio_held(self) -> "dict[str, list[tuple[str, str]]] | None":
        """:func:`_gpio_held`, read once."""
        return _gpio_held(self.fs)

    def _gpio(self, label: str, tree: "_Subtree", uses: list) -> None:
        """GPIO lines of a chip below it (a USB serial adapter's: cp210x, ftdi_sio) that are
        held drive something on the host (a power relay) with the chip's node open by no one:
        held by anyone, the kernel included (gpio-aggregator hands lines on as a chip of its
        own), as the kernel lists them; exported through sysfs, or requested by a process,
        whose request fd holds them (a kernel that does not name the fd's chip: any chip may
        be the one)."""
        uses += [f"the GPIO line {line} (below {label}) is exported through sysfs: something "
                 "on the host drives or reads it" for line in tree.gpio_exported]
        for chip in tree.gpiochips:
            listed = self.gpio_held
            held = listed.get(chip) if listed is not None else None
            if held is None:
                uses.append(f"which lines of {chip} (below {label}) are held cannot be read: "
                            "/sys/kernel/debug/gpio " + ("does not list it" if listed is not None
                                                         else "cannot be read (mount debugfs "
                                                         "there, as root)"))
            uses += [f"the GPIO line {line} of {chip} (below {label}) is held by "
                     f"{consumer or 'a consumer the kernel does not name'}"
                     for line, consumer in held or ()]
        lines = self.storage.opened.gpio_lines
        for chip in tree.gpiochips:
            uses += [f"a GPIO line of {chip} (below {label}) is requested by pid {pid} ({comm})"
                     for pid, comm in sorted(lines.get(chip, ()))]
        if tree.gpiochips and None in lines:
            uses += [f"pid {pid} ({comm}) holds a GPIO line request whose chip its fdinfo does "
                     "not name (a v1 line handle or event, or a kernel before 6.7): it may be "
                     f"one of {', '.join(tree.gpiochips)} (below {label})"
                     for pid, comm in sorted(lines[None])]

    def _bars(self, dev: PciDevice, uses: list) -> None:
        """A user-space driver reaches a function through its sysfs BARs (``resource0``...),
        config space and ROM, open or mapped: no driver, node or interface shows that. The
        kernel's older interface, ``/proc/bus/pci/BB/DD.F`` (config space, and BARs mapped
        through its ioctl; pciutils and old user-space drivers use it), counts the same, and
        so does either through another mount of sysfs or procfs (a container's /host/sys),
        and /dev/mem."""
        here = "/" + os.path.relpath(dev.path, self.fs.root)
        held: dict[str, set] = {}
        for path, who in self.storage.opened.paths.items():
            rel = path[len(here) + 1:] if path.startswith(here + "/") else ""
            if _BAR_FILE.fullmatch(rel):
                held.setdefault(f"{rel} (sysfs)", set()).update(who)
            elif path in _proc_bus_pci(dev.bdf):
                held.setdefault(f"{path} (procfs)", set()).update(who)
        base = Path(dev.path)
        for file in [*base.glob("resource*"), base / "config", base / "rom",
                     base / "p2pmem/allocate"]:
            rel = os.path.relpath(file, base)
            if _BAR_FILE.fullmatch(rel):
                held.setdefault(f"{rel} (sysfs)", set()).update(
                    pci_file_holders(self.storage.opened, file, "sysfs"))
        for proc in _proc_bus_pci(dev.bdf):
            held.setdefault(f"{proc} (procfs)", set()).update(
                pci_file_holders(self.storage.opened, self.fs.path(proc.lstrip("/")),
                                 "proc"))
        for name, who in sorted(held.items()):
            if who:
                uses.append(f"{dev.bdf}'s {name} is open or mapped by "
                            + ", ".join(f"pid {pid} ({comm})" for pid, comm in sorted(who))
                            + ": a user-space driver may use it")
        uses += _devmem(self.fs, self.storage.opened, dev)
        self._p2pmem(dev, uses)

    def _p2pmem(self, dev: PciDevice, uses: list) -> None:
        """Peer-to-peer memory the function publishes (``p2pmem/``, an NVMe CMB) that nvmet
        lends to an RDMA NIC as its buffers: named, or taken from whichever function publishes
        some (then this one may be it). Not ``available < size``: the nvme driver puts its own
        queues there."""
        lent = self.storage.p2pmem_lent
        uses += [f"{dev.bdf}'s peer-to-peer memory (p2pmem) is lent by {t} (its p2pmem names "
                 f"{dev.bdf})" for t in lent.get(dev.bdf, [])]
        p2p = Path(dev.path) / "p2pmem"
        if lent.get("auto") and p2p.is_dir() and self.fs.read(p2p / "published") != "0":
            uses += [f"{dev.bdf} publishes peer-to-peer memory (p2pmem) and {t} takes its "
                     "buffers from any function that does (its p2pmem names none): which one it "
                     "took cannot be told" for t in lent["auto"]]

    def _display(self, dev: PciDevice) -> list[str]:
        if dev.class_code >> 16 != 0x03:
            return []
        out = []
        if self.fs.read(Path(dev.path) / "boot_vga") == "1":
            out.append(f"{dev.bdf} is the boot VGA device (boot_vga = 1): the firmware and "
                       "the console draw on it")
        for fb in sorted(Path(dev.path).glob("graphics/fb*")):
            out.append(f"{dev.bdf} backs the framebuffer {fb.name}, which the console "
                       "(fbcon) draws on")
        return out


def _held(usage: "HostUsage", dev: PciDevice, role, tree: "_Subtree", uses: list,
          evidence: list) -> None:
    """What the open files and the tree below it say of it, disks and network aside: its
    device nodes, GPIO lines and the drivers of what sits below it (:meth:`HostUsage._nodes`),
    its BARs and config space, by path or through /dev/mem (:meth:`HostUsage._bars`), the
    nodes below no device its tools reach it through (:func:`_tool_node_uses`,
    :func:`_raw_access_uses`), its USB buses' captures and debug port, the modules that work
    through its driver. One piece for the proof (:meth:`HostUsage.verdict`) and for the open
    files read again last under the claim (:func:`uses_below`), so that a use the one judges
    is never one the other leaves out (a flash tool started while the proof read the
    network)."""
    fs, opened = usage.fs, usage.storage.opened
    usage._nodes(dev.bdf, dev.path, tree, uses, evidence)
    usage._bars(dev, uses)
    uses += _tool_node_uses(fs, opened, dev) + _raw_access_uses(fs, opened, dev.bdf)
    if role == "usb-controller":
        uses += _usb_debug_uses(fs, usage.storage, dev) + \
            _usbmon_uses(fs, opened, dev.bdf, tree)
    uses += _modules_through_driver(fs, dev)


def _representor(usage: "HostUsage", vf: PciDevice, pf: str, uses: list, evidence: list) -> None:
    """A VF's port on the card's embedded switch, in switchdev mode (ice, mlx5, nfp: OVS
    hardware offload): its representor, an interface below the PF, not the VF
    (``SET_NETDEV_DEV(repr->netdev, ice_pf_to_dev(pf))``), named for the VF by its
    ``phys_port_name`` (``pf0vf3``, ``c1pf0vf3``). The host wires the VF through it (up,
    a port of an OVS bridge: the VF's traffic is the bridge's), so it is judged by the
    port rule as the VF's own interface would be. A PF that shows representors (switchdev
    mode) but none that can be told for this VF (its index unknown, a name that does not
    parse, none of its index) leaves the VF unproven. Any PF number matches: a driver's
    number for its PF is not always the PCI function's."""
    reps = _representors_of(usage, pf)
    if not reps:
        return  # (legacy mode: the VF's port is no interface of the host's)
    index = vf_index(usage.fs, pf, vf.bdf)
    names = {nd: _REPRESENTOR.fullmatch(name) for nd, name in reps.items()}
    mine = [nd for nd, m in names.items() if m and m[1] is not None and index is not None
            and int(m[1]) == index]
    why = _representor_untold(index, [f"{nd} ({reps[nd]})" for nd, m in names.items()
                                      if m is None], bool(mine))
    if why:
        uses.append(shown(f"{vf.bdf} is a VF of {pf}, which is in switchdev mode (it shows "
                          "representors), and which representor is its port on the card's "
                          f"switch cannot be told: {why}"))
    found, idle = [], []
    usage._interfaces(f"{vf.bdf}'s representor", mine, False, found, idle)
    uses += [u if u.startswith("cannot tell") else f"its representor {u}" for u in found]
    evidence += [f"its representor {e}" for e in idle]

def _representors_of(usage: "HostUsage", pf: str) -> dict:
    """:func:`representors` of ``pf``'s interfaces in every namespace, read once (each of
    its VFs asks)."""
    if pf not in usage._reps:
        path = usage.fs.pci_device(pf).path
        usage._reps[pf] = representors(usage.fs, usage.net, usage.net.netdevs_of(
            path, _Subtree(usage.fs, path).netdevs))
    return usage._reps[pf]


def _ranges(fs: Sysfs, dev: PciDevice) -> list[tuple[int, int, int]]:
    """A function's BARs and ROM as its ``resource`` file lists them: (first, last address,
    flags); an unreadable file reads as one range over everything."""
    text = fs.read(Path(dev.path) / "resource")
    if text is None:
        return [(0, 2 ** 64 - 1, _IORESOURCE_IO)]
    out = []
    for line in text.splitlines():
        try:
            start, end, flags = (int(n, 16) for n in line.split()[:3])
        except ValueError:
            return [(0, 2 ** 64 - 1, _IORESOURCE_IO)]
        if end > start:
            out.append((start, end, flags))
    return out


def _ecam(fs: Sysfs) -> list[tuple[int, int, int]]:
    """The PCI configuration windows (ECAM, ``PCI MMCONFIG``) /proc/iomem lists; unreadable:
    everything."""
    text = fs.read(fs.proc("iomem"))
    if text is None:
        return [(0, 2 ** 64 - 1, 0)]
    return [(int(m[1], 16), int(m[2], 16), 0) for m in re.finditer(
        r"^\s*([0-9a-f]+)-([0-9a-f]+) : PCI (?:MMCONFIG|ECAM)", text, re.M)]


def _devmem(fs: Sysfs, opened: OpenFiles, dev: PciDevice) -> list[str]:
    """/dev/mem reaches physical memory: a mapping whose offset (a physical address) falls in
    the function's BARs, or in the PCI configuration windows, drives it; an fd of it may read
    and write any address (``pread``), and one of /dev/port any I/O port."""
    ranges = _ranges(fs, dev)
    if opened.devmem:
        ranges += _ecam(fs)
    uses = [f"pid {pid} ({comm}) maps physical memory {lo:#x}-{hi:#x} through /dev/mem, "
            f"which holds {dev.bdf}'s BARs or PCI configuration space: a user-space driver "
            "may use it" for lo, hi, (pid, comm) in sorted(opened.devmem)
            if any(lo <= end and start <= hi for start, end, _ in ranges)]
    uses += [f"pid {pid} ({comm}) holds /dev/mem open: it can read and write any physical "
             f"address, {dev.bdf}'s BARs and configuration space included"
             for pid, comm in opened.holders("char", "mem", "1:1")]
    if any(flags & _IORESOURCE_IO for _, _, flags in ranges):
        uses += [f"pid {pid} ({comm}) holds /dev/port open: it can reach {dev.bdf}'s I/O "
                 "ports" for pid, comm in opened.holders("char", "port", "1:4")]
    return uses


#: Nodes through which a driver's management and flashing tools (``sas3flash``, ``storcli``,
#: a RAID monitor) reach every function it drives, the ioctl naming which, and which sit below
#: no function: misc devices (``/sys/class/misc/NAME/dev``) and bare character majors (by
#: their name in ``/proc/devices``: ``storcli`` makes its node itself). Driver -> names.
_DRIVER_NODES = {
    "mpt3sas": ("mpt3ctl", "mpt2ctl"), "mpt2sas": ("mpt2ctl",), "mptsas": ("mptctl",),
    "mptspi": ("mptctl",), "mptfc": ("mptctl",),
    "megaraid_sas": ("megaraid_sas_ioctl_node", "megaraid_sas_ioctl"), "aacraid": ("aac",),
    "3w-9xxx": ("twa",), "3w-sas": ("twl",), "3w-xxxx": ("twe",),
}
#: The same for a vendor's own tool modules, whatever the driver: vendor -> (their folder in
#: /dev, their majors' names). Mellanox MFT's ``/dev/mst/mt4119_pciconf0`` reaches a
#: ConnectX's configuration space (``mstflint``, ``flint`` burning its firmware).
_VENDOR_NODES = {"15b3": ("mst", ("mst_pciconf", "mst_pci"))}


def _tool_node_uses(fs: Sysfs, opened: OpenFiles, dev: PciDevice) -> list[str]:
    """Processes that hold a node of :data:`_DRIVER_NODES`, of :func:`_module_nodes` or of
    :data:`_VENDOR_NODES` that may reach ``dev``: which function their ioctls pick cannot be
    read, so any may be it."""
    text = fs.read(fs.proc("devices"))
    majors = _char_majors(text)
    found = _module_nodes(fs, dev, majors)
    names = _DRIVER_NODES.get(dev.driver or "", ()) + tuple(found)
    folder, named = _VENDOR_NODES.get(dev.vendor, (None, ()))
    if not names and not folder:
        return []
    if text is None and fs.real_host:
        return [f"{dev.bdf}: /proc/devices cannot be read, so whether a tool holds its "
                f"driver's node ({', '.join(names or named)}) cannot be told"]
    held = _named_holders(fs, opened, names, majors, found)
    for prefix in [f"/dev/{folder}/"] if folder and not fs.real_host else []:
        for path, whom in opened.paths.items():
            held.update({who: path for who in whom if path.startswith(prefix)
                         and who not in held})
    held.update({who: what for who, what in _named_holders(fs, opened, named, majors).items()
                 if who not in held})
    return [f"pid {pid} ({comm}) holds {what}, through which its tools reach any function "
            f"{dev.driver or 'its vendor'} drives, {dev.bdf} perhaps" for (pid, comm), what
            in sorted(held.items())]


def _char_majors(text: str | None) -> dict[str, int]:
    """The character majors of /proc/devices (its text), by name."""
    return {f[1]: int(f[0]) for f in (line.split() for line in
            (text or "").split("\n\n", 1)[0].splitlines()) if len(f) == 2 and f[0].isdigit()}


def _named_holders(fs: Sysfs, opened: OpenFiles, names: "tuple[str, ...]",
                   majors: dict[str, int], found: "dict[str, str] | None" = None
                   ) -> dict[tuple[int, str], str]:
    """Who holds a node below no device, by its name: the misc device of that name (by its
    number), any node of the bare character major of that name (``storcli`` and Intel's QV
    tools make theirs with mknod, anywhere), or, in a test's tree, which has no numbers, the
    path /dev/NAME (on the host a path is anyone's file in a namespace of their own).
    ``found``: names :func:`_module_nodes` gave, and the module each is named as. (pid,
    command) -> the node, as a refusal names it."""
    held: dict[tuple[int, str], str] = {}
    for name in names:
        for who in opened.holders("char", None if fs.real_host else name,
                                  fs.read(fs.sys("class", "misc", name, "dev"))):
            held.setdefault(who, f"/dev/{name}" + (f" (below no device, named as {found[name]} "
                                                   "is)" if found and name in found else ""))
    for name in names:
        for (kind, rdev), whom in opened.numbers.items() if name in majors else ():
            held.update({who: f"a node of {name} (major {majors[name]})" for who in whom
                         if kind == "char" and os.major(rdev) == majors[name]
                         and who not in held})
    return held


#: Raw-access drivers of NIC vendors' tools: one node below no device whose ioctls read and
#: write the configuration space of any PCI function, named by bus/device/function, and map
#: any physical address, as /dev/mem does. Name (the module's, its node's) -> its tools.
_RAW_ACCESS_NODES = {
    "iqvlinux": "Intel's NIC tools (eeupdate64e, lanconf64e, bootutil64e, nvmupdate64e)",
    "pgdrv": "Realtek's NIC tools (rtnicpg)",
}


def _raw_access_uses(fs: Sysfs, opened: OpenFiles, bdf: str) -> list[str]:
    """Processes that hold a node of :data:`_RAW_ACCESS_NODES`: an EEPROM, option ROM or NVM
    write that takes minutes may be going to any function, so, like an open fd of /dev/mem,
    one keeps every function (not only its vendor's: the ioctls reach any function). Which
    function the tool writes cannot be read from outside."""
    text = fs.read(fs.proc("devices"))
    if text is None and fs.real_host:
        return [f"{bdf}: /proc/devices cannot be read, so whether a process holds {name}'s "
                f"node ({tools}) cannot be told: unload the module (rmmod {name}) if no tool runs"
                for name, tools in _RAW_ACCESS_NODES.items() if fs.sys("module", name).exists()]
    held = _named_holders(fs, opened, tuple(_RAW_ACCESS_NODES), _char_majors(text))
    return [f"pid {pid} ({comm}) holds {what}, the raw-access node of "
            f"{_RAW_ACCESS_NODES[_raw_name(what)]}: its ioctls read and write any PCI "
            f"function's configuration space and map any physical address, {bdf}'s included (a "
            "flash write to it may be under way): run again once the tool is done, or unload "
            f"the module (rmmod {_raw_name(what)}) if it needs none"
            for (pid, comm), what in sorted(held.items())]


def _raw_name(what: str) -> str:
    """Which of :data:`_RAW_ACCESS_NODES` a node as :func:`_named_holders` names it is."""
    return next(name for name in _RAW_ACCESS_NODES if name in what)


def _module_nodes(fs: Sysfs, dev: PciDevice, majors: dict[str, int]) -> dict[str, str]:
    """Nodes below no device, which no list names, that the driver's tools may reach it
    through: megaraid_mbox's adapters are reached through ``/dev/megadev0``, a misc device of
    megaraid_mm, a module it depends on (``/sys/module/megaraid_mm/holders/megaraid_mbox``),
    the ioctl naming the adapter by number. The kernel says nowhere which module registered
    a misc device or a major, so names are all there is: a misc device under
    /sys/devices/virtual, or a bare character major (in /proc/devices, with no device in
    /sys/dev/char), whose name begins with the same four letters or more as the driver's,
    its module's or a module's it depends on counts as theirs (one that only looks like it,
    ``nvme-fabrics`` against ``nvme``, keeps the functions while a tool holds it: closed, not
    open). Name -> the module (or driver) it is named as."""
    if dev.driver in _NO_HOST_DRIVER | {VFIO}:
        return {}
    module = _driver_module(fs, dev.driver)
    modules = [p.parent.parent.name for p in sorted(fs.sys("module").glob(
        f"*/holders/{module}"))] + [module, dev.driver]
    misc = [p.name for p in sorted(fs.sys("class", "misc").glob("*"))
            if "/devices/virtual/" in os.path.realpath(p)]
    try:
        numbered = {name.split(":")[0] for name in os.listdir(fs.sys("dev", "char"))}
    except OSError:
        numbered = set()
    bare = [name for name, major in sorted(majors.items()) if str(major) not in numbered]
    out = {}
    for name in misc + bare:
        best = max(modules, key=lambda m: len(os.path.commonprefix([name, m])))
        if len(os.path.commonprefix([name, best])) >= 4:
            out[name] = best
    return out


def _driver_module(fs: Sysfs, driver: str) -> str:
    """The module of a PCI driver: its ``module`` link (megaraid's is megaraid_mbox), else the
    driver's name, as /sys/module spells it."""
    return (fs.link_name(fs.pci_driver_dir(driver) / "module") or driver).replace("-", "_")


#: Kernel parameters that drive a USB controller's debug port from boot: ``earlyprintk=xdbc``
#: (an xHCI's, prog-if 0x30), ``earlyprintk=dbgp`` and ``kgdbdbgp`` (an EHCI's, 0x20).
_DEBUG_PORT_ARGS = ((re.compile(r"earlyprintk=xdbc.*"), 0x30),
                    (re.compile(r"earlyprintk=dbgp.*|kgdbdbgp=.*"), 0x20))


def _usb_debug_uses(fs: Sysfs, storage: StorageView, dev: PciDevice) -> list[str]:
    """A USB controller's debug port, which the kernel drives with no device node below the
    controller: an xHCI's USB 3 Debug Capability that is up (``dbc`` not ``disabled``: its
    ``/dev/ttyDBC0``, a getty's or a debugger's, is a virtual tty below no device); an enabled
    kernel console with no device number (``earlyprintk=xdbc1,keep`` leaves ``earlyxdbc0``
    in /proc/consoles: which controller it is, ``xdbcN`` counting xHCIs in the early PCI scan,
    cannot be told, so every USB controller may be it); and the kernel parameters that start
    such a port at boot (:data:`_DEBUG_PORT_ARGS`)."""
    uses = []
    dbc = Path(dev.path) / "dbc"
    state = fs.read(dbc)
    if os.path.lexists(dbc) and state != "disabled":
        uses.append(f"{dev.bdf}'s USB 3 Debug Capability is {state or 'unreadable'} (dbc): "
                    "the kernel serves /dev/ttyDBC* through it (a getty or a debugger on the "
                    "other end of the cable), a node below no device; echo disable > "
                    f"{dbc} if nothing uses it")
    uses += [f"the kernel console {name} (/proc/consoles) has no device number: it may write "
             f"through {dev.bdf} (earlyprintk=xdbc or dbgp with keep writes the kernel's log "
             "through a USB controller's debug port, and which one cannot be told)"
             for name in storage.unnumbered_consoles]
    cmdline = fs.read(fs.proc("cmdline"))
    if cmdline is None and fs.real_host:
        uses.append(f"/proc/cmdline cannot be read: whether the kernel drives {dev.bdf}'s "
                    "debug port (earlyprintk=xdbc, dbgp, kgdbdbgp) cannot be told")
    uses += [f"the kernel command line has {arg}: the kernel may drive {dev.bdf}'s debug port "
             "(which controller it picks cannot be told)" for arg in kernel_params(cmdline or "")
             for pattern, prog_if in _DEBUG_PORT_ARGS
             if pattern.fullmatch(arg) and dev.class_code & 0xff == prog_if]
    return uses


def _usbmon_uses(fs: Sysfs, opened: OpenFiles, label: str, tree: "_Subtree") -> list[str]:
    """Processes that capture a bus of the controller (``dumpcap -i usbmon4``): usbmon's
    nodes are virtual (``/sys/devices/virtual/usbmon/usbmon4``, below no controller), one per
    bus, numbered as the root hub ``usb4``; ``usbmon0`` captures every bus. The text
    interface in debugfs (``usb/usbmon/4u``) counts the same."""
    buses = sorted({int(name[3:]) for name, _ in tree.usb_devices
                    if re.fullmatch(r"usb\d+", name)})
    uses = []
    for bus in buses + [0] if buses else []:
        node = fs.sys("class", "usbmon", f"usbmon{bus}")
        name = devname(node, fs) if node.exists() else f"usbmon{bus}"
        who = set(opened.holders("char", name, fs.read(node / "dev")))
        for kind in "ust":
            who |= opened.paths.get(f"/sys/kernel/debug/usb/usbmon/{bus}{kind}", set())
        what = "every USB bus" if bus == 0 else f"USB bus {bus}, {label}'s"
        uses += [f"the capture of {what} (/dev/{name}, or usbmon's debugfs files) is open "
                 f"by pid {pid} ({comm})" for pid, comm in sorted(who)]
    return uses


#: Modules that work through a NIC driver (its ``holders``) whose use the rules judge: mlx4's
#: Ethernet driver (its interfaces) and its RDMA driver (its device below the function and
#: that device's ports: :func:`_rdma_ports_up`).
_HOLDERS_JUDGED = {"mlx4_en", "mlx4_ib"}


def _modules_through_driver(fs: Sysfs, dev: PciDevice) -> list[str]:
    """Modules that work through the function's host driver (``/sys/module/DRIVER/holders``)
    and whose use no rule judges: Chelsio's chcr (a ULD of cxgb4, with no device, node or
    interface of its own) serves the kernel's crypto API (``xts(aes)`` at priority 500, above
    AES-NI: dm-crypt, IPsec, AF_ALG use the card), and cxgb4i, iw_cxgb4 or bnx2x's cnic serve
    iSCSI and RDMA the same way; unbinding the driver detaches them under their users. The
    module is the driver's ``module`` link (else its name); a built-in driver has no holders
    folder (a module cannot hold it), one that cannot be listed leaves the function unproven."""
    if dev.driver in _NO_HOST_DRIVER | {VFIO}:
        return []
    module = _driver_module(fs, dev.driver)
    folder, shown = fs.sys("module", module, "holders"), f"/sys/module/{module}/holders"
    try:
        holders = sorted(p.name for p in folder.iterdir() if p.name not in _HOLDERS_JUDGED)
    except FileNotFoundError:
        return []
    except OSError as e:
        return [f"cannot tell which modules work through {dev.driver}, the driver of "
                f"{dev.bdf}: {shown} cannot be read ({e.strerror})"]
    crypto = (fs.read(fs.proc("crypto")) or "") if holders else ""
    return [f"the module {m} works through {dev.driver}, the driver of {dev.bdf} ({shown}), "
            "and the harness cannot judge its use" + (
                " (it serves the kernel's crypto API: /proc/crypto names it)"
                if re.search(rf"^module\s*:\s*{re.escape(m)}$", crypto, re.M) else
                ": a kernel user of the function with no device, node or interface of its own")
            for m in holders]


def _gpio_held(fs: Sysfs) -> dict[str, list[tuple[str, str]]] | None:
    """GPIO chip -> its lines held by anyone, the kernel included, with who holds each
    (``gpiochip0`` -> [(``gpio-512``, ``gpio-aggregator.0``)]), as /sys/kernel/debug/gpio
    lists them (every chip; the lines held, with their consumer after ``|``, and the free
    lines that have a name, without); None: it cannot be read."""
    text = fs.read(fs.sys("kernel", "debug", "gpio"))
    if text is None:
        return None
    chips: dict[str, list[tuple[str, str]]] = {}
    lines: list[tuple[str, str]] = []
    for line in text.splitlines():
        if re.match(r"gpiochip\d+:", line):
            lines = chips.setdefault(line.split(":", 1)[0], [])
        elif line.strip():  # held: `` gpio-512 (name |consumer ) out hi``; a free line
            # with a name: `` gpio-513 (name )``; anything else a chip prints: held (unknown)
            named = re.match(r"\s*(gpio-\d+) \(([^)]*)\)", line)
            if named and "|" not in named[2]:
                continue
            lines.append((line.split()[0], named[2].split("|", 1)[1].strip() if named else ""))
    return chips


def _verdict(label: str, uses: list[str], evidence: list[str]) -> Verdict:
    """The verdict, with nothing read that shows it idle counted as a use: a shape no rule
    looked at (no interface, disk or node below it) is never called idle for that."""
    if not uses and not evidence:
        uses = [f"{label}: nothing was read that shows it idle (no interface, disk or device "
                "node below it, no driver state that proves it)"]
    return Verdict(label, tuple(dict.fromkeys(uses)), tuple(dict.fromkeys(evidence)))


def node_holders(fs: Sysfs, opened: OpenFiles, node: Path, majmin: str | None
                 ) -> tuple[str, list[tuple[int, str]]]:
    """(its name under /dev, (pid, command) of the processes that hold it open) for the device
    node of a sysfs directory ``node``, by path and by device number."""
    name = devname(node, fs)
    return name, opened.holders("char", name, majmin)


def network_uses(fs: Sysfs, net: NetView, path: str,
                 nic_ports: "dict[str, int] | None" = None) -> list[str]:
    """The proof's network rule alone (:meth:`HostUsage._network`), on ``net``, for the device
    at sysfs ``path``: a PCI function and its VFs, or a USB device. Why an interface of it is
    not idle, or cannot be told (empty: every one is idle). For the network read again last,
    right before a change (:func:`harness.host.binding.disks_claimed`): the re-reads under
    the claim come after the proof's network read, and nothing claims an interface."""
    usage = HostUsage(fs, net, None, nic_ports=nic_ports)  # (the network alone: no storage)
    uses: list[str] = []
    name = Path(path).name
    if not SYSFS_BDF.fullmatch(name):  # (a USB device, as :meth:`HostUsage.usb_verdict`)
        usage._interfaces(name, net.netdevs_of(path, _Subtree(fs, path).netdevs), False, uses,
                          [])
        return list(dict.fromkeys(uses))
    for bdf in [name, *vfs_of(fs, name)]:
        dev, found = fs.pci_device(bdf), []
        usage._network(dev, role_of(dev), _Subtree(fs, dev.path), found, [])
        uses += [f"its VF {u}" if bdf != name else u for u in found]
    return list(dict.fromkeys(uses))


def uses_below(fs: Sysfs, storage: StorageView, path: str,
               held_groups: "set[int] | frozenset[int]" = frozenset()) -> list[str]:
    """The proof's rules that the open files and the tree below a device judge, on ``storage``
    and the tree read now, for the device at sysfs ``path``: a PCI function's
    (:func:`_held`: its nodes, GPIO lines and drivers below, its BARs and /dev/mem,
    its driver's and its vendor's tool nodes, the raw-access nodes; on vfio-pci, its group
    node and vfio device fds, :meth:`HostUsage._vfio`, with ``held_groups`` this run's), a
    USB device's (its nodes, GPIO lines and drivers below, as :meth:`HostUsage.usb_verdict`);
    what could not be read (``storage.problems``) counts, as in the proof. Why it is not idle
    (empty: it is, by those rules). For the open files read again under the claim
    (:func:`harness.host.binding.disks_claimed`), so that a flash tool, a GPIO line request or
    a usbip export started while the last reads took their seconds is refused as the proof
    refuses it. Its disks (claimed, their users read again on their own) and its interfaces
    (:func:`network_uses`) are not judged here; ``storage.held`` keeps the claim from
    counting."""
    usage = HostUsage(fs, None, storage)  # (no network: judged on its own, network_uses)
    name = Path(path).name
    uses = [f"cannot tell whether {name} is in use: {p}" for p in storage.problems]
    tree = _judged_tree(fs, path)
    if SYSFS_BDF.fullmatch(name) and fs.pci_exists(name):
        dev = fs.pci_device(name)
        if dev.driver == VFIO:
            usage._vfio(dev, held_groups, uses, [])
        _held(usage, dev, role_of(dev), tree, uses, [])
    else:
        usage._nodes(name, path, tree, uses, [])
    return list(dict.fromkeys(uses))


def disks_below(fs: Sysfs, path: str) -> list[str]:
    """The block devices below a device's sysfs directory, by their /dev names (``sdb``,
    ``nvme0n1``; an NVMe controller's multipath heads and its subsystem's other controllers'
    disks too, :func:`_nvme_heads`, and the same disks' other paths,
    :func:`harness.host.storage.other_paths`: the host must not mount them while it moves):
    the whole disks, whose claim covers their partitions. Not a hidden one (``nvme0c0n1``, one
    path of a multipath head: no node, nothing to mount)."""
    tree = _Subtree(fs, path)
    names = tree.blocks + _nvme_heads(fs, path)
    return [devname(fs.sys("class", "block", name), fs)
            for name in names + [twin for twin, _ in other_paths(fs, names)]
            if fs.read(fs.sys("class", "block", name, "hidden")) != "1"]


def nodes_below(fs: Sysfs, path: str) -> list[tuple[Path, str | None]]:
    """The device nodes of a device (:func:`device_nodes`), and those of its disks' other
    paths (:func:`harness.host.storage.other_paths`: a dual-ported SAS disk's /dev/sg5 below
    the other HBA, which the proof judges with the disk): what the re-reads under the claim
    and the holders' check look at are the nodes the proof judged."""
    tree = _Subtree(fs, path)
    return device_nodes(fs, path, tree) + [
        node for _, nodes in other_paths(fs, tree.blocks + _nvme_heads(fs, path))
        for node in nodes]


def device_nodes(fs: Sysfs, path: str, tree: "_Subtree | None" = None
                 ) -> list[tuple[Path, str | None]]:
    """The device nodes a device's use shows in, with their ``MAJ:MIN``: those below its sysfs
    directory (a vfio-pci function's ``vfio-dev/vfioN``: iommufd's /dev/vfio/devices/vfioN),
    and those its removal takes from elsewhere: its NVMe subsystems' generic nodes
    (:func:`_nvme_char_heads`: under nvme-subsystem, or below the other controllers) and its
    PTP clocks' PPS sources (:func:`_clock_pps`, under /sys/devices/virtual/pps). One list
    for the proof (:meth:`HostUsage.verdict`) and for the read again under the claim, so a
    node the one judges is never one the other leaves out. ``tree``: its :class:`_Subtree`,
    if read."""
    tree = tree if tree is not None else _Subtree(fs, path)
    return tree.char_nodes + _nvme_char_heads(fs, path) + _clock_pps(fs, tree)


def _judged_tree(fs: Sysfs, path: str) -> "_Subtree":
    """The :class:`_Subtree` of a device with the device nodes its use shows in
    (:func:`device_nodes`): what the proof and the read again under the claim
    (:func:`uses_below`) both judge."""
    tree = _Subtree(fs, path)
    tree.char_nodes = device_nodes(fs, path, tree)
    return tree


class _Subtree:
    """What sits below a device's sysfs directory (links not followed): network interfaces,
    block devices, device nodes (directories with a ``dev`` file), USB devices and interfaces,
    GPIO chips and their exported lines, and every other device bound to a driver."""

    def __init__(self, fs: Sysfs, path: str):
        self.fs = fs
        self.netdevs: list[str] = []
        self.blocks: list[str] = []
        self.char_nodes: list[tuple[Path, str | None]] = []
        #: USB interfaces (``3-4:1.0``), their drivers (None: unbound), and whether a network
        #: interface shows below them.
        self.usb_interfaces: list[tuple[str, str | None, bool]] = []
        #: Input devices (``input5``: what /proc/bus/input/devices lists).
        self.inputs: list[str] = []
        #: USB devices (``3-4``) and their own drivers (``usb``; None: unconfigured).
        self.usb_devices: list[tuple[str, str | None]] = []
        #: GPIO chips (``gpiochip0``, as a line request's fdinfo names them) and the lines
        #: exported through /sys/class/gpio (``gpio513``, below the chip's ``gpio/``).
        self.gpiochips: list[str] = []
        self.gpio_exported: list[str] = []
        #: Every other device bound to a driver: (name, bus, driver).
        self.bound: list[tuple[str, str, str]] = []
        #: PHYs (devices on mdio_bus) and the network interface phylib attached each to
        #: (``attached_dev``, resolved; None: no interface uses it).
        self.phys: list[tuple[str, str | None]] = []
        #: ALSA sound cards (``card1``, below the device's ``sound/``).
        self.sound_cards: list[str] = []
        #: RDMA devices (``infiniband/mlx4_0``): their folders.
        self.rdma: list[Path] = []
        #: Hub ports with a ``disable`` attribute (Linux 6.0; read only when judged: reading
        #: it asks the hub).
        self.ports: list[Path] = []
        try:  # a disk is wherever /sys/class/block says (an NVMe namespace sits under nvme0/)
            self.disks = {os.path.realpath(p) for p in fs.sys("class", "block").iterdir()}
        except OSError:
            self.disks = set()
        for dirpath, dirnames, filenames in os.walk(path):
            if not self._look(Path(dirpath), filenames, dirpath != path and
                              "driver" in dirnames + filenames):
                dirnames.clear()  # a network interface's queues and statistics
        self.netdevs.sort()
        self.blocks.sort()

    def _look(self, here: Path, filenames: list[str], has_driver: bool) -> bool:
        """Note what ``here`` is; False: nothing below it is worth a look."""
        fs, usb = self.fs, False
        if re.fullmatch(r"input\d+", here.name):
            self.inputs.append(here.name)
        if _USB_DEVICE.fullmatch(here.name) and "busnum" in filenames:  # (not i2c's 0-0050)
            self.usb_devices.append((here.name, fs.link_name(here / "driver")))
            usb = True
        if _USB_INTERFACE.fullmatch(here.name):
            self.usb_interfaces.append((here.name, fs.link_name(here / "driver"),
                                        any(here.glob("net/*"))))
            usb = True
        if re.fullmatch(r"gpiochip\d+", here.name) and here.parent.name != "gpio":
            self.gpiochips.append(here.name)  # (gpio/gpiochip512: the legacy class's view)
        elif re.fullmatch(r"gpio\d+", here.name) and here.parent.name == "gpio":
            self.gpio_exported.append(here.name)
        elif re.fullmatch(r"gpio\d+", here.name) and re.fullmatch(r"chip\d+", here.parent.name) \
                and here.parent.parent.name == "gpio":  # (Linux 6.17's per-chip export)
            self.gpio_exported.append(f"{here.parent.name}/{here.name}")
        if _USB_PORT.fullmatch(here.name) and "disable" in filenames:
            self.ports.append(here)
        if has_driver and not usb and not _USB_PORT.fullmatch(here.name):
            driver = Path(os.path.realpath(here / "driver"))  # /sys/bus/BUS/drivers/NAME
            self.bound.append((here.name, driver.parent.parent.name, driver.name))
            if driver.parent.parent.name == "mdio_bus":
                attached = here / "attached_dev"
                self.phys.append((here.name, os.path.realpath(attached)
                                  if os.path.lexists(attached) else None))
        if re.fullmatch(r"card\d+", here.name) and here.parent.name == "sound":
            self.sound_cards.append(here.name)
        if here.parent.name == "infiniband":
            self.rdma.append(here)
        if here.parent.name == "net":
            self.netdevs.append(here.name)
            return False
        if str(here) in self.disks or here.parent.name == "block" or "partition" in filenames:
            if "partition" not in filenames:
                self.blocks.append(here.name)
        elif "dev" in filenames:
            self.char_nodes.append((here, fs.read(here / "dev")))
        return True


def _nvme_subsystems(fs: Sysfs, path: str) -> list[Path]:
    """The NVMe subsystems (native multipath) with a controller below ``path``: their
    namespaces' devices live under /sys/devices/virtual/nvme-subsystem, not below it."""
    prefix = path.rstrip("/") + "/"
    return [subsys for subsys in sorted(fs.sys("devices", "virtual", "nvme-subsystem").glob("*"))
            if any(os.path.realpath(p).startswith(prefix)
                   for p in subsys.glob("nvme*") if p.is_symlink())]


def _nvme_siblings(fs: Sysfs, path: str) -> list["_Subtree"]:
    """What sits below the other controllers of its NVMe subsystems (those not below
    ``path``: a dual-port drive's second port, cabled to the same host). Without native
    multipath (``nvme_core.multipath=N``: RHEL 8's default, dm-multipath set-ups) a
    namespace's disk and generic node sit below the controller it is attached to, not in the
    subsystem's folder, yet a guest holding any controller of the subsystem can reach it (a
    Namespace Attachment, a Sanitize or Format of every namespace, a Subsystem Reset)."""
    prefix = path.rstrip("/") + "/"
    ctrls = {os.path.realpath(p) for subsys in _nvme_subsystems(fs, path)
             for p in subsys.glob("nvme*") if p.is_symlink()}
    return [_Subtree(fs, ctrl) for ctrl in sorted(ctrls) if not ctrl.startswith(prefix)]


def _nvme_heads(fs: Sysfs, path: str) -> list[str]:
    """The namespaces' disks of its NVMe subsystems the host may mount, wherever they sit: the
    multipath heads (``nvme0n1``, beside the controllers' links) and the disks below the
    subsystems' other controllers (:func:`_nvme_siblings`), so a controller's verdict is the
    same with or without native multipath."""
    heads = [p.name for subsys in _nvme_subsystems(fs, path)
             for p in sorted(subsys.glob("nvme*")) if (p / "dev").exists() and not p.is_symlink()]
    return list(dict.fromkeys(heads + [name for tree in _nvme_siblings(fs, path)
                                       for name in tree.blocks]))


def _nvme_char_heads(fs: Sysfs, path: str) -> list[tuple[Path, str | None]]:
    """The namespaces' generic character devices (``/dev/ng0n1``: NVMe passthrough,
    io_uring) of its NVMe subsystems: a process holding one uses the subsystem with no block
    device open. The multipath heads' and those below the other controllers
    (:func:`_nvme_siblings`)."""
    heads = [(p, fs.read(p / "dev")) for subsys in _nvme_subsystems(fs, path)
             for p in sorted(subsys.glob("ng*")) if (p / "dev").exists()]
    return heads + [(node, majmin) for tree in _nvme_siblings(fs, path)
                    for node, majmin in tree.char_nodes if re.fullmatch(r"ng\d+n\d+", node.name)]


def _clock_pps(fs: Sysfs, tree: "_Subtree") -> list[tuple[Path, str | None]]:
    """The PPS sources of the PTP hardware clocks below it (``ptp/ptp0``): the PTP core
    registers a clock's PPS source (igb, ixgbe, ice...) with no parent
    (``/sys/devices/virtual/pps/pps0``), tied to the clock only by its ``name`` (``ptp0``),
    and chronyd's ``refclock PPS /dev/pps0`` holds that node, not the clock's. Taking the
    function unregisters both. One whose name cannot be read counts as the clock's."""
    clocks = {node.name for node, _ in tree.char_nodes if node.parent.name == "ptp"}
    pps = sorted(fs.sys("class", "pps").glob("*")) if clocks else []
    return [(p, fs.read(p / "dev")) for p in pps
            if (name := fs.read(p / "name")) is None or name.strip() in clocks]


#: What a PTP clock's pin is assigned (``ptp_pin_show``: "func chan"; 0 is PTP_PF_NONE).
_PIN_FUNCTIONS = {"1": "an external timestamp input (EXTTS)",
                  "2": "a periodic output (PEROUT)", "3": "PHY clock sync (PHYSYNC)"}


def _clock_pins(fs: Sysfs, label: str, tree: "_Subtree") -> list[str]:
    """Pins of a PTP hardware clock below it that are assigned a function (``echo 2 0 >
    ptp0/pins/SDP0``: a 1PPS out of the card to a lab instrument or another card's time
    input). The card does it alone, with no process, node or interface to show it, and a
    periodic output cannot be read back: the assignment is the evidence. Taking the function
    unregisters the clock and resets the card, and the signal stops. A pin that cannot be
    read counts too, and so does a clock with periodic outputs and no pins at all."""
    uses = []
    for clock in (node for node, _ in tree.char_nodes if node.parent.name == "ptp"):
        pins = sorted((clock / "pins").glob("*"))
        outputs = (fs.read(clock / "n_periodic_outputs") or "").strip()
        # A clock with periodic outputs and no pins (stmmac: n_per_out, never n_pins) drives
        # one on a PTP_PEROUT_REQUEST (``testptp -p``, which then exits) with nothing in sysfs
        # to show it: whether one is on cannot be read. (Unreadable: it may have some.)
        if not pins and outputs != "0":
            uses.append(f"the PTP clock {clock.name} (below {label}) can drive "
                        + (f"{outputs} periodic output(s)" if outputs.isdigit() else
                           f"periodic outputs ({clock / 'n_periodic_outputs'} cannot be read)")
                        + " and has no pins to show whether one is on: a signal out of the "
                        "card, started by a process that has since ended, shows nowhere")
        for pin in pins:
            func = ((fs.read(pin) or "").split() or [None])[0]
            if func == "0":
                continue
            what = f"is assigned {_PIN_FUNCTIONS.get(func, f'function {func}')}" if func \
                else f"cannot be read ({pin})"
            uses.append(f"the pin {pin.name} of the PTP clock {clock.name} (below {label}) "
                        f"{what}: the card drives or takes a signal there with no process, "
                        "node or interface to show it")
    return uses


def _pps_pulsed(fs: Sysfs, label: str, tree: "_Subtree") -> list[str]:
    """The PPS sources of its clocks (:func:`_clock_pps`) that have counted pulses: a clock's
    1PPS is switched on by ``pps_enable``, a write-only file, and may go out of the card with
    no pin to show it (ixgbe's X540: SDP0, ``ixgbe_ptp_setup_sdp_X540``) to an instrument or
    another host's time card. What shows it is the source's ``assert`` (``pps``'s
    ``assert_show``: "seconds.nanoseconds#sequence", readable by anyone): a sequence above 0,
    or one that cannot be read, keeps the NIC. Taking the function stops the pulse."""
    uses = []
    for node in (node for node, _ in tree.char_nodes if node.parent.name == "pps"):
        seq = (fs.read(node / "assert") or "").rpartition("#")[2].strip()
        if not seq.isdigit() or int(seq) > 0:
            uses.append(f"the PPS source {node.name} (of {label}'s PTP clock, or below it) " + (
                f"has counted {int(seq)} pulses" if seq.isdigit() else
                f"cannot say whether it pulses ({node / 'assert'} cannot be read)") +
                ": the clock's pulse per second (pps_enable, which cannot be read back) may "
                "go out of the card with no process, node or pin to show it")
    return uses


def _mice_fed(opened: OpenFiles, label: str, tree: "_Subtree") -> list[str]:
    """A mouse below ``label`` feeds the host's mixed mouse, open by a process: through
    ``/dev/input/mice`` or its other name ``/dev/psaux`` (misc 10:1, with
    ``CONFIG_INPUT_MOUSEDEV_PSAUX``, as Debian builds it: the same stream, below no device;
    ``gpm -m /dev/psaux``), by number too, as every node (a container's ``--device
    /dev/input/mice:/dev/input/pointer`` is 13:63 at another path)."""
    if not any(n.name.startswith("mouse") for n, _ in tree.char_nodes):
        return []
    return [f"a mouse below {label} feeds /dev/{node}, open by {', '.join(mice)}"
            for node, majmin in (("input/mice", "13:63"), ("psaux", "10:1"))
            if (mice := opened.users("char", node, majmin))]


def _phys_used_elsewhere(label: str, path: str, tree: "_Subtree") -> list[str]:
    """PHYs on the function's MDIO bus that phylib attached to an interface not below it: one
    bus may serve several MACs (ixgbe's X550EM_A registers it on the lowest function for up to
    4 ports; an SoC's second MAC's PHY on the first's bus). Unbinding the function removes the
    bus and the PHY under the other port. The kernel says whose each is (``attached_dev``)."""
    prefix = path.rstrip("/") + "/"
    return [f"the PHY {phy} on the MDIO bus of {label} serves the network interface "
            f"{os.path.basename(netdev)} of another device ("
            f"{os.path.basename(os.path.dirname(os.path.dirname(netdev)))}): taking {label} "
            "takes that interface's PHY"
            for phy, netdev in tree.phys if netdev is not None and not netdev.startswith(prefix)]


def _ports_off(fs: Sysfs, label: str, tree: "_Subtree") -> list[str]:
    """Hub ports the lab has switched off (``echo 1 > .../usb4-port2/disable``, Linux 6.0;
    uhubctl uses it so that the kernel does not power the port back): a board under test
    powered from the port is kept off, and has no USB device on it to show it. Unbinding and
    resetting the controller powers every port again, so a port whose ``disable`` reads
    anything but 0, or cannot be read, keeps it (and a USB device with such a hub below it)."""
    states = [(port, fs.read(port / "disable")) for port in tree.ports]
    return [f"the USB port {port.name} (below {label}) " + (
                f"is switched off ({port / 'disable'} reads {state!r}): what is on it is kept "
                f"unpowered, and resetting {label} powers it again" if state is not None else
                f"may be switched off: {port / 'disable'} cannot be read")
            for port, state in states if state != "0"]


def _midi_held_by_the_kernel(fs: Sysfs, label: str, tree: "_Subtree") -> list[str]:
    """MIDI ports of a sound card below it that the kernel holds open for a program: the ALSA
    sequencer opens a card's rawmidi itself for a client that holds only /dev/snd/seq (below
    no device), so no process holds the card's nodes; the kernel prints the opener as
    ``Owner PID`` under the substream in /proc/asound/cardN/midiM. A card whose MIDI ports
    cannot be read there is not proven free."""
    uses = []
    for card in tree.sound_cards:
        folder = fs.proc("asound", card)
        if not any(n.name.startswith("midiC") for n, _ in tree.char_nodes
                   if n.parent.name == card):
            continue
        try:
            ports = sorted(p for p in folder.iterdir() if re.fullmatch(r"midi\d+", p.name))
        except OSError as e:
            uses.append(f"cannot tell whether the kernel holds the MIDI ports of {card} (below "
                        f"{label}) open for a program: {folder} cannot be read ({e.strerror})")
            continue
        for port in ports:
            text = fs.read(port)
            owners = re.findall(r"Owner PID\s*:\s*(\d+)", text or "")
            uses += [f"the MIDI port {card}/{port.name} (below {label}) is held open by the "
                     f"kernel for pid {pid} ({fs.read(fs.proc(pid, 'comm')) or '?'}: the ALSA "
                     "sequencer)" for pid in owners]
            if text is None:
                uses.append(f"cannot tell whether the kernel holds the MIDI port {card}/"
                            f"{port.name} (below {label}) open: {port} cannot be read")
    return uses


#: ``phys_port_name`` of a port of the card (devlink's ``p0``, ``p0s1`` when split); a
#: switchdev representor's names a function instead (``pf0vf0``, ``pf0sf1``, ``pf1``,
#: ``c1pf0vf0``).
_PORT_NAME = re.compile(r"p\d+(?:s\d+)?")


#: A switchdev representor's ``phys_port_name`` (devlink's port names): a VF's
#: (``pf0vf3``, ``c1pf0vf3``: group 1, the VF's index), an SF's (``pf0sf1``), a PF's (``pf1``).
_REPRESENTOR = re.compile(r"(?:c\d+)?pf\d+(?:vf(\d+)|sf\d+)?")


def _representor_untold(index: int | None, unparsed: list[str], found: bool) -> str | None:
    """Why a VF's representor cannot be told among its PF's (None: it can)."""
    if index is None:
        return "its VF index cannot be read (no virtfnN link of the PF names it)"
    if unparsed:
        return (f"the representor(s) {', '.join(unparsed)} name no function the harness can "
                "parse, and one may be its")
    if not found:
        return (f"none is named for VF {index} (pf<N>vf{index}): it may sit in a namespace the "
                "harness cannot read")
    return None


def representors(fs: Sysfs, net: NetView, netdevs: list) -> dict:
    """The switchdev representors among ``netdevs`` (a PF's), each with its ``phys_port_name``:
    an interface whose name is set and is not a port's (:data:`_PORT_NAME`). (sysfs shows
    the harness's own namespace; `ip -d` the rest. An interface whose ``phys_port_name``
    cannot be read, as most drivers give none, is none.)"""
    def port_name(nd) -> str:
        if not nd.namespace:
            return fs.read(fs.sys("class", "net", nd.name, "phys_port_name")) or ""
        ns = net.namespaces.get(nd.namespace)
        return str(((ns.links.get(nd.name) or {}) if ns else {}).get("phys_port_name") or "")
    return {nd: n for nd in netdevs if (n := port_name(nd).strip()) and not _PORT_NAME.fullmatch(n)}


def _ports_shown(fs: Sysfs, net: NetView, dev: PciDevice, netdevs: list,
                 stated: int | None) -> list[str]:
    """:func:`_ports_unseen` of its interfaces that may be ports. In switchdev mode (ice,
    mlx5, nfp...) the PF's VF, SF and PF representors are interfaces below it too
    (``SET_NETDEV_DEV(repr->netdev, ice_pf_to_dev(pf))``), each standing for a function, not
    for a port of the card: a down ``pf0vf0`` proves nothing of the uplink, which may carry
    an NFS mount in a namespace only the kernel holds. A function that shows representors
    and no port is unproven. (An interface whose ``phys_port_name`` cannot be read, as most
    drivers give none, may be a port.)"""
    reps = list(representors(fs, net, netdevs))
    if reps and len(reps) == len(netdevs):
        return [f"{dev.bdf} is on {dev.driver} and shows only switchdev representors ("
                + shown(", ".join(str(nd) for nd in reps)) + ": each stands for a VF, SF or "
                "PF, not a port), no interface of its port in any namespace the harness can "
                "read (a namespace only the kernel holds may carry its traffic)"]
    return _ports_unseen(fs, dev, [nd for nd in netdevs if nd not in reps], stated)


def _ports_unseen(fs: Sysfs, dev: PciDevice, netdevs: list, stated: int | None) -> list[str]:
    """A NIC's ports that show no interface in any namespace read: a function with none, or
    one of several ports (a driver that serves several on one function, :data:`_MULTI_PORT`,
    or an interface of ``dev_port`` above 0) with fewer interfaces than ports. How many ports
    it has is read from the driver where it says (mlx4's ``mlx4_portN``: ``eth``, ``auto
    (eth)``; one that cannot be read counts too), else from the inventory (``ports = N``,
    ``stated``): ``dev_port`` says which port an interface is (numbered from 0 by the
    sysfs-class-net ABI), never how many there are, so without a count the function is
    unproven. A port may sit in a namespace no process, fd or mount names, which the harness
    never finds: an NFS mount made through a named namespace holds it after ``ip netns del``
    (its RPC client's reference), the port up in it carrying the mount; the other port, down
    in the host's namespace, is no evidence for it. An interface in the host's namespace is
    told by its ``dev_port`` (mlx4_en: the port less one); one elsewhere may be any port."""
    if not netdevs:
        return [f"{dev.bdf} is on {dev.driver}, which shows no network interface in any "
                "namespace the harness can read (a container's namespace, or a user-space "
                "driver, may use it)"]
    kinds = {int(p.name[len("mlx4_port"):]) - 1: re.findall(r"\w+", fs.read(p) or "eth")
             for p in Path(dev.path).glob("mlx4_port*") if p.name[len("mlx4_port"):].isdigit()}
    seen, elsewhere = set(), 0
    for nd in netdevs:
        port = fs.read(fs.sys("class", "net", nd.name, "dev_port")) if not nd.namespace else None
        if port is not None and port.strip().isdigit():
            seen.add(int(port))
        else:
            elsewhere += 1
    if not kinds and dev.driver not in _MULTI_PORT and max(seen, default=0) == 0:
        return []  # one port: the interface seen is it
    ports = set(kinds) or set(range(stated or 0))
    if not ports or seen - ports:
        return [f"{dev.bdf} is on {dev.driver}" + (
            ", which serves several ports on one function," if dev.driver in _MULTI_PORT else
            f" with an interface of dev_port {max(seen)},") + " and how many ports it has "
            + ("cannot be told" if not ports else f"is more than the {len(ports)} " + (
                "its mlx4_portN files show" if kinds else "its inventory entry states"))
            + ": a port no namespace the harness reads shows may carry "
            "traffic (say how many in its inventory entry: ports = N)"]
    # mlx4's InfiniBand ports show no Ethernet interface (mlx4_ib's; rule 'no RDMA port up').
    wanted = ports - {n for n, kind in kinds.items() if "ib" in kind}
    if len(wanted - seen) <= elsewhere:
        return []
    unseen = ", ".join(str(n) for n in sorted(wanted - seen))
    return [f"{dev.bdf} is on {dev.driver} with {len(wanted)} Ethernet ports, and the "
            f"port(s) of dev_port {unseen} show no network interface in any namespace the "
            "harness can read (a namespace only the kernel holds, such as one an NFS mount "
            "keeps after `ip netns del`, may carry its traffic)"]


def _rdma_ports_up(fs: Sysfs, label: str, tree: "_Subtree") -> list[str]:
    """Ports of an RDMA device below it that are not down: mlx4_ib puts its device below the
    function itself (``infiniband/mlx4_0``, a class device bound to no driver, unlike mlx5's,
    ice's or bnxt's on the auxiliary bus), and an InfiniBand port is ACTIVE with no network
    interface at all: the kernel's SRP, iSER, NVMe-over-RDMA and NFS-over-RDMA initiators and
    targets use it with no process, node or disk below the function to show it. Only a port
    whose ``state`` reads DOWN is free; one that cannot be read is not."""
    uses = []
    for rdma in tree.rdma:
        try:
            ports = sorted(p for p in (rdma / "ports").iterdir() if p.is_dir())
        except OSError as e:
            uses.append(f"cannot tell whether the RDMA device {rdma.name} (below {label}) is in "
                        f"use: {rdma / 'ports'} cannot be read ({e.strerror})")
            continue
        if not ports:
            uses.append(f"the RDMA device {rdma.name} (below {label}) lists no port: whether "
                        "one is in use cannot be told")
        for port in ports:
            state = fs.read(port / "state")
            if state is None or state.strip() != "1: DOWN":
                uses.append(f"port {port.name} of the RDMA device {rdma.name} (below {label}) "
                            f"is {state.strip() if state else 'in a state that cannot be read'}"
                            ": the kernel's RDMA users (NVMe over RDMA, SRP, iSER, NFS over "
                            "RDMA) may use it with no interface, node or process to show it")
    return uses


def _kernel_tty_uses(storage: StorageView, node: Path, name: str, majmin: "str | None",
                     label: str) -> list[str]:
    """A tty below the device that the kernel holds for itself, by number or by name
    (:attr:`StorageView.kernel_ttys`: speakup's synthesizer, the braille console), or may
    hold: no process has it open, and taking it silences the console's blind user."""
    if node.parent.name != "tty":
        return []
    who = storage.kernel_ttys.get(majmin or "-", storage.kernel_ttys.get(name))
    if who:
        return [f"/dev/{name} (below {label}) is held by the kernel for {who}: the console's "
                "blind user reads the host through it (for speakup, echo none > "
                "/sys/accessibility/speakup/synth if no one listens; else keep this device "
                "out of the inventory)"]
    return [f"/dev/{name} (below {label}) may be held by the kernel: {why}"
            for why in storage.kernel_ttys_unknown]


def _console_inputs(fs: Sysfs, path: str, inputs: list[str]) -> list[str]:
    """Keyboards below ``path`` the console's keyboard handler (kbd) reads: no process holds
    them open, and yet a person at the console types on them. ``inputs``: the input devices
    below it (``input5``), which an unreadable list leaves unproven."""
    text = fs.read(fs.proc("bus", "input", "devices"))
    if text is None:
        return [f"cannot tell whether the input device(s) {', '.join(inputs)} below it feed "
                "the console: /proc/bus/input/devices cannot be read"] if inputs else []
    out = []
    for block in text.split("\n\n"):
        fields = dict(line[3:].split("=", 1) for line in block.splitlines()
                      if line[1:3] == ": " and "=" in line)
        where = os.path.realpath(fs.sys(fields.get("Sysfs", "/nowhere").lstrip("/")))
        if where.startswith(path.rstrip("/") + "/") and "kbd" in fields.get("Handlers", "").split():
            out.append(f"the keyboard {fields.get('Name', '?').strip(chr(34))} below it feeds "
                       "the console (kbd handler)")
    return out


# -- IOMMU groups -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GroupPlan:
    """What taking ``target`` means: its IOMMU group, which members must move to vfio-pci, which
    stay where they are (and why), each function's verdict, and the problems that make it
    unsafe (empty when safe)."""

    target: PciDevice
    group: int | None
    members: tuple[PciDevice, ...]
    to_move: tuple[PciDevice, ...]
    kept: tuple[tuple[PciDevice, str], ...]
    problems: tuple[str, ...]
    verdicts: tuple[Verdict, ...] = ()

    @property
    def safe(self) -> bool:
        return not self.problems

    @property
    def companions(self) -> tuple[str, ...]:
        """The members an inventory must list with the target (all but the bridges)."""
        return tuple(m.bdf for m in self.members if m.bdf != self.target.bdf
                     and not m.kernel_bridge)


class _Planner:
    """One :func:`plan_group` call: the problems and verdicts it gathers."""

    def __init__(self, usage: HostUsage | None, held_groups):
        self.usage, self.held_groups = usage, held_groups
        self.problems: list[str] = []
        self.verdicts: list[Verdict] = []

    def judge(self, dev: PciDevice, label: str) -> None:
        if self.usage is not None:
            v = self.usage.verdict(dev.bdf, self.held_groups)
            self.verdicts.append(v)
            self.problems.extend(label + u for u in v.uses)

    def members_of(self, fs: Sysfs, target: PciDevice, group: int) -> tuple[PciDevice, ...]:
        """The group's members as sysfs lists them; one it cannot list is a problem, never a
        group of one (vfio takes every member with the device)."""
        try:
            members = tuple(fs.pci_device(m) if m != target.bdf else target
                            for m in fs.iommu_group_members(group, strict=True))
        except OSError as e:
            self.problems.append(f"the members of IOMMU group {group} cannot be read "
                                 f"({fs.sys('kernel', 'iommu_groups', str(group), 'devices')}: "
                                 f"{e.strerror or e}): vfio would take them all with "
                                 f"{target.bdf}")
            return (target,)
        if target not in members:
            self.problems.append(f"{target.bdf} is not among the members sysfs lists for IOMMU "
                                 f"group {group}: the group cannot be told")
            members = (target, *members)
        return members

    def member(self, m: PciDevice, target: str, group: int, listed: "set[str] | None") -> None:
        """Problems of a group member that is not a PCI-to-PCI bridge."""
        what = f"group {group} member {m.bdf} ({m.class_name}, {m.driver or 'no driver'})"
        if m.class_code >> 8 == 0x0600:
            self.problems.append(f"group {group} holds the host bridge {m.bdf}: the device is "
                                 "not isolated (no ACS there); use a slot with its own IOMMU "
                                 "group")
        elif m.normal_header_bridge:
            self.problems.append(f"{what} would have to leave the host for vfio-pci too")
        elif listed is not None and m.bdf not in listed:
            self.problems.append(f"{what} is not in the inventory: every function of the group "
                                 f"but its bridges must be (list it as a companion of {target} "
                                 "if the host can spare it)")
        else:
            self.judge(m, f"in group {group}, ")


def _new_id_strays(fs: Sysfs, to_move: list[PciDevice]) -> list[str]:
    """A kernel without ``driver_override`` (before 3.16) moves a function by vfio-pci's
    ``new_id``, and then binds to vfio-pci every function of those ids on no driver: any such
    function not itself moved (proven idle, journaled, given back) would be taken unseen."""
    moving = {m.bdf for m in to_move}
    ids = {m.ids for m in to_move if not m.has_driver_override}
    addresses = fs.pci_addresses() if ids else []
    if ids and not addresses:
        return [f"{fs.sys('bus', 'pci', 'devices')} cannot be listed: which functions vfio-pci's "
                "new_id would take with the device (this kernel has no driver_override) cannot "
                "be told"]
    out = []
    for other in addresses:
        dev = fs.pci_device(other)
        if dev.bdf not in moving and dev.ids in ids and dev.driver is None:
            out.append(f"{dev.bdf} ({dev.ids}) is on no driver: this kernel has no "
                       "driver_override, and vfio-pci's new_id, the only way to move "
                       f"{', '.join(sorted(m.bdf for m in to_move if m.ids == dev.ids))}, would "
                       f"take {dev.bdf} too, unproven and not given back (put {dev.bdf} on "
                       "pci-stub or a host driver first)")
    return out


def vfs_removed(fs: Sysfs, to_move: list[PciDevice]) -> list[str]:
    """An SR-IOV PF that leaves its driver loses its VFs (the driver's remove disables
    SR-IOV: ``pci_disable_sriov``), idle or not, and binding the driver back makes none:
    whoever made them (a boot unit, a libvirt hostdev pool) had them for a reason, and their
    MACs and VLANs go with them. So a PF that moves must have none, by ``sriov_numvfs`` and by
    its ``virtfn`` links, and a count that cannot be read counts as some. (Here, not in the
    verdict: a PF that stays on its driver, whose VFs a run makes or gives back, is judged by
    the verdict too, and its VFs are no use of it.)"""
    out = []
    for m in to_move:
        d = fs.pci_dir(m.bdf)
        if fs.read(d / "sriov_totalvfs") is None:
            continue  # (no SR-IOV capability: no VF to lose)
        text = (fs.read(d / "sriov_numvfs") or "").strip()
        count = int(text) if text.isdigit() else None
        made = max(count or 0, len(vfs_of(fs, m.bdf)))
        if count is None:
            out.append(f"{m.bdf}'s sriov_numvfs cannot be read: unbinding "
                       f"{m.driver or 'its driver'} from it "
                       "would remove whatever VFs it has, which nothing would make again (read "
                       "it as root, or list a VF instead)")
        elif made:
            out.append(f"unbinding {m.driver or 'its driver'} from {m.bdf} would remove its "
                       f"{made} VFs "
                       f"(sriov_numvfs = {count}), and nothing would make them again; set sriov_numvfs to 0 first if they are not needed "
                       f"(echo 0 > {d / 'sriov_numvfs'}), or list a VF instead")
    return out


def acs_override(fs: Sysfs) -> str | None:
    """Why the kernel's IOMMU groups prove no isolation on this host, or None. The ACS
    override patch (Proxmox VE's kernel, linux-zen) with ``pcie_acs_override=`` on the command
    line has the kernel *pretend* that functions without ACS are isolated: each gets a group
    of its own, while the card still routes a function's DMA to its siblings' BARs peer to
    peer (a guest with 3 GB or more writes the host's NIC beside it). Whether the command
    line has it must be read: unreadable on a real host counts as having it."""
    cmdline = fs.read(fs.proc("cmdline"))
    if cmdline is None:
        return ("/proc/cmdline cannot be read: whether pcie_acs_override split the IOMMU "
                "groups (a group is then no isolation) cannot be told") if fs.real_host else None
    arg = next((a for a in kernel_params(cmdline) if a.split("=", 1)[0] == "pcie_acs_override"),
               None)
    return (f"the kernel command line has {arg}: its IOMMU groups are split by the ACS "
            "override, not by the hardware, so a group is no proof that a function's DMA "
            "cannot reach its siblings (the host's devices beside it)") if arg else None


#: The ACS controls the kernel enables on a port at boot and requires for a group of its own
#: below it (REQ_ACS_FLAGS: Source Validation, P2P Request Redirect, P2P Completion Redirect,
#: Upstream Forwarding): those the port's ACS capability offers must be on.
_ACS_FLAGS = ((0x01, "SV"), (0x04, "RR"), (0x08, "CR"), (0x10, "UF"))
#: PCIe port types (the PCI Express capability's bits 7:4) whose ACS the kernel always reads:
#: a root port, a switch's downstream port (any other function only when multifunction).
_ACS_PORTS = {4: "a root port", 6: "a switch's downstream port"}


def _config_space(fs: Sysfs, bdf: str) -> bytes | None:
    """A function's whole config space, or None when it cannot be read in full (no file, or
    fewer bytes than its size: only root reads past the first 64)."""
    try:
        with open(fs.pci_dir(bdf) / "config", "rb") as f:
            data, size = f.read(), os.fstat(f.fileno()).st_size
    except OSError:
        return None
    return data if len(data) >= max(size, 64) else None


def _acs_registers(cfg: bytes, ids: str) -> "tuple[int | None, int, int] | None":
    """(the PCIe port type, the ACS capability and control registers) of a config space;
    (type, 0, 0) with no ACS capability, None for a conventional PCI function. Intel's Sunrise
    Point PCH root ports lay them out as dwords (the kernel's pci_quirk_intel_spt_pch_acs)."""
    ptype, ptr, seen = None, cfg[0x34] & 0xfc if cfg[0x06] & 0x10 else 0, 0
    while 0x40 <= ptr < len(cfg) - 3 and seen < 48 and ptype is None:
        ptype = cfg[ptr + 2] >> 4 & 0xf if cfg[ptr] == 0x10 else None
        ptr, seen = cfg[ptr + 1] & 0xfc, seen + 1
    if ptype is None:
        return None
    ptr, seen = 0x100, 0
    while 0x100 <= ptr <= len(cfg) - 12 and seen < 480:
        header = int.from_bytes(cfg[ptr:ptr + 4], "little")
        if header & 0xffff == 0x000d:
            device = int(ids.split(":")[1], 16)
            if ids.startswith("8086:") and ptype == 4 and (
                    device & ~0xf == 0xa110 or 0xa167 <= device <= 0xa16a):
                return (ptype, int.from_bytes(cfg[ptr + 4:ptr + 8], "little"),
                        int.from_bytes(cfg[ptr + 8:ptr + 12], "little"))
            return (ptype, int.from_bytes(cfg[ptr + 4:ptr + 6], "little"),
                    int.from_bytes(cfg[ptr + 6:ptr + 8], "little"))
        ptr, seen = header >> 20 & 0xffc, seen + 1
    return ptype, 0, 0


def acs_off(fs: Sysfs, dev: PciDevice) -> list[str]:
    """Why the IOMMU group the kernel made for ``dev`` at boot no longer isolates it: ACS
    switched off since on a port between it and its root bus (``setpci -s 04:10.0
    ECAP_ACS+6.w=0``, as GPUDirect/P2P set-up guides do on a switch's downstream ports: the
    switch then routes a function's DMA straight to its sibling's BARs, past the IOMMU), or on
    a multifunction function on the way (``dev`` too). The kernel groups once, when a device is
    added, and reads ACS as pci_acs_path_enabled does; so does this: a root port, a downstream
    port and a multifunction function must have on each of SV, RR, CR and UF that their ACS
    capability offers. One with no ACS capability, a conventional PCI bridge or a PCI-to-PCIe
    one the kernel grouped with what is below it already: no reason here. A config space that
    cannot be read in full (not root) counts as off."""
    out = []
    for bdf in bdfs_in_path(dev.path):
        cfg = _config_space(fs, bdf)
        if cfg is None:
            out.append(f"the config space of {bdf} (on {dev.bdf}'s way to its root port) "
                       "cannot be read in full (as root): whether ACS is on there, and the "
                       "IOMMU group any isolation, cannot be told")
            continue
        ids = f"{cfg[1]:02x}{cfg[0]:02x}:{cfg[3]:02x}{cfg[2]:02x}"
        regs = _acs_registers(cfg, ids)
        if regs is None or (regs[0] not in _ACS_PORTS and not cfg[0x0e] & 0x80) or not regs[1]:
            continue
        ptype, cap, ctrl = regs
        off = [name for bit, name in _ACS_FLAGS if cap & bit and not ctrl & bit]
        if off:
            out.append(f"ACS is off on {bdf} ({_ACS_PORTS.get(ptype, 'a multifunction device')}"
                       f", on {dev.bdf}'s way to its root port): {', '.join(off)} not enabled "
                       f"(ACS control {ctrl:#06x}): it may route {dev.bdf}'s DMA peer to peer "
                       "past the IOMMU, so the IOMMU group the kernel made at boot is no "
                       "isolation (ACS switched off since, by setpci? the kernel enables "
                       "SV, RR, CR, UF)")
    return out


def plan_group(root: "str | Path | Sysfs", bdf: str, usage: HostUsage | None,
               allowed: "set[str] | None" = None,
               held_groups: "set[int] | frozenset[int]" = frozenset()) -> GroupPlan:
    """Plan taking ``bdf`` (which must exist) the way the kernel's vfio sees its group: every
    normal-header function must be on vfio-pci, pci-stub or no driver; bridges stay on their
    driver. ``usage``: the host's usage (None: plan the moves only, prove nothing, as to
    explain a QEMU error). ``allowed``: the inventory's allow-list (devices and companions);
    every member but a bridge must be on it (None: no allow-list, as for `discover`, which
    drafts one). ``held_groups``: the groups this run holds already."""
    fs = Sysfs.of(root)
    target = fs.pci_device(bdf)
    bdf = target.bdf
    p = _Planner(usage, held_groups)
    p.judge(target, "")
    if target.kernel_bridge:
        p.problems.append(f"{bdf} ({target.class_name}) is a bridge: vfio-pci takes only "
                          "endpoint functions")
    if target.iommu_group is None:
        p.problems.append(f"{bdf} has no iommu_group: no IOMMU, or it is not enabled (VT-d in "
                          "the firmware, intel_iommu=on)")
        return GroupPlan(target, None, (target,), (), (), tuple(p.problems), tuple(p.verdicts))
    group = target.iommu_group
    if (split := acs_override(fs)) is not None:
        p.problems.append(split)
    p.problems += acs_off(fs, target)
    members = p.members_of(fs, target, group)
    listed = {parse_bdf(a) for a in allowed} if allowed is not None else None
    to_move, kept = [], []
    for m in members:
        if m.kernel_bridge:
            if m.bdf != bdf:
                kept.append((m, f"{m.class_name}: stays on {m.driver or 'no driver'}, as vfio "
                                "allows"))
            continue
        if m.bdf != bdf:
            p.member(m, bdf, group, listed)
        if m.bdf != bdf and m.driver in _NO_HOST_DRIVER:
            kept.append((m, f"on {m.driver or 'no driver'}, which vfio accepts"))
        elif m.driver != VFIO:
            to_move.append(m)
    if usage is not None:
        p.problems += _new_id_strays(fs, to_move) + vfs_removed(fs, to_move)
    pf = physfn_of(fs, bdf)
    if pf and pf in {m.bdf for m in members}:
        p.problems.append(f"group {group} holds {bdf}'s own physical function {pf}: the PF (and "
                          "every VF beside it) would leave the host with the VF; use a PF whose "
                          "VFs get IOMMU groups of their own (ACS)")
    return GroupPlan(target, group, members, tuple(to_move), tuple(kept),
                     tuple(dict.fromkeys(p.problems)), tuple(p.verdicts))
