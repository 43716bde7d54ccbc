"""Guest shapes and hot-added devices as libvirt XML, and what the live domain XML says.

Pure functions (unit-tested in tests/unit/test_virt_xml.py): nothing here talks to libvirt.

A device the roles hot-add is asked for as QEMU would be (``device_add e1000e,id=nic0,
bus=rp0,netdev=n0`` after ``netdev_add user,id=n0,net=...``); :func:`device_xml` writes the
element libvirt attaches for it (``<interface type='user'>`` with its ``<model>``, ``<ip>``,
``<alias name='ua-nic0'/>`` and ``<address>``), or raises :class:`Unexpressible` naming what
libvirt has no element for. libvirt names a device it was given by the user ``ua-<name>``
(its rule for user aliases): :func:`alias` is the one place that says so.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from xml.sax.saxutils import quoteattr

from harness.core.errors import ConfigError, Unexpressible
from harness.qemu.machine import GuestImage, GuestSpec, Paths

#: libvirt's prefix for aliases the user chooses (domain_conf.c: USER_ALIAS_PREFIX).
ALIAS_PREFIX = "ua-"

#: QEMU NIC models and libvirt's ``<model type=...>`` for each.
NIC_MODELS = {"e1000e": "e1000e", "e1000": "e1000", "virtio-net-pci": "virtio",
              "rtl8139": "rtl8139", "igb": "igb"}
#: USB input devices: libvirt's ``<input type=...>``.
USB_INPUTS = {"usb-tablet": "tablet", "usb-kbd": "keyboard", "usb-mouse": "mouse"}
#: Controllers the roles hot-add: libvirt's ``<controller type=... model=...>``.
CONTROLLERS = {"ich9-ahci": ("sata", None), "qemu-xhci": ("usb", "qemu-xhci"),
               "nec-usb-xhci": ("usb", "nec-xhci"), "usb-ehci": ("usb", "ehci"),
               "virtio-scsi-pci": ("scsi", "virtio-scsi")}


_PCI = frozenset({"bus", "addr", "multifunction"})
#: The device_add properties each model's element carries (any other is refused).
MAPPED_PROPS = {**{d: _PCI | {"netdev", "mac"} for d in NIC_MODELS},
                **{d: frozenset({"bus", "port"}) for d in USB_INPUTS},
                "usb-storage": frozenset({"drive", "bus", "port"}),
                "virtio-blk-pci": _PCI | {"drive"}, "scsi-hd": frozenset({"drive", "bus"}),
                "vfio-pci": _PCI | {"host", "managed"},
                "usb-host": frozenset({"hostbus", "hostaddr", "vendorid", "productid", "bus", "port"}),
                "pc-dimm": frozenset({"memdev", "node"})}


def alias(device_id: str) -> str:
    """The name QEMU and the live XML know a hot-added device by."""
    return ALIAS_PREFIX + device_id


@dataclasses.dataclass
class Backends:
    """What QMP would have made before a ``device_add`` (``netdev_add``, ``blockdev-add``),
    kept for the element that carries it in libvirt's XML."""

    netdevs: dict[str, dict] = dataclasses.field(default_factory=dict)
    disks: dict[str, Path] = dataclasses.field(default_factory=dict)
    #: Controller aliases (``ua-hba1``) -> libvirt's controller index (of its type).
    controllers: dict[str, int] = dataclasses.field(default_factory=dict)
    #: The live domain's controller indexes by type (:func:`controller_indexes`), read before
    #: each attach: a new controller takes the next of its type.
    indexes: dict[str, set[int]] = dataclasses.field(default_factory=dict)
    #: ``object-add memory-backend-ram`` ids -> size in bytes (a DIMM's ``memdev``).
    memdevs: dict[str, int] = dataclasses.field(default_factory=dict)
    #: Disk target names handed out (``sda``, ``vdb``...).
    targets: set[str] = dataclasses.field(default_factory=set)


def domain_xml(spec: GuestSpec, image: GuestImage, paths: Paths, *, name: str, emulator: str,
               accel: str) -> str:
    """A transient domain of ``spec``: the same machine, sizes, buses, serial console and boot
    as :func:`harness.qemu.machine.build_argv` gives QEMU, written as libvirt elements."""
    features = "<acpi/>" + ("<tcg><tb-cache unit='MiB'>128</tb-cache></tcg>" if accel == "tcg" else "")
    parts = [f"<domain type={quoteattr('kvm' if accel == 'kvm' else 'qemu')} "
             "xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>",
             f"<name>{_text(name)}</name>",
             *_sizes(spec),
             f"<os><type arch='x86_64' machine={quoteattr(spec.machine)}>hvm</type>{_boot(spec, image)}</os>",
             f"<features>{features}</features>",
             _cpu(spec, accel),
             "<on_poweroff>destroy</on_poweroff>",
             f"<on_reboot>{'restart' if spec.reboot else 'destroy'}</on_reboot>",
             "<on_crash>destroy</on_crash>",
             f"<devices><emulator>{_text(emulator)}</emulator>",
             *_controllers(spec), *_disks(image, paths),
             f"<serial type='unix'><source mode='bind' path={quoteattr(str(paths.console_socket))}/>"
             f"<log file={quoteattr(str(paths.serial_log))} append='off'/><target port='0'/></serial>",
             "<video><model type='none'/></video><memballoon model='none'/></devices>",
             # QEMU runs as root, as the harness's own QEMUs do, on files in the guest's own
             # root-only folder: libvirt neither switches user nor relabels them.
             "<seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>"]
    args = _qemu_args(spec)
    if args:
        parts.append("<qemu:commandline>" + "".join(f"<qemu:arg value={quoteattr(a)}/>" for a in args)
                     + "</qemu:commandline>")
    return "".join(parts) + "</domain>"


#: The SSH management NIC's slot on the root bus (after the disks' :data:`DISK_SLOTS`).
MGMT_SLOT = 0x0C


def _qemu_args(spec: GuestSpec) -> list[str]:
    """What libvirt's XML has no element for, passed to QEMU as is (libvirt marks the domain
    tainted for it):

    * q35's ACPI hotplug switch (libvirt 9.0 has none; ``<acpi-bridge-hotplug>`` came in 9.2,
      for pc only);
    * the SSH management NIC: user networking with a port forward to the guest's port 22,
      the QMP driver's own (``hostfwd=tcp:127.0.0.1:0-:22``, the port read from ``info
      usernet``). libvirt forwards ports of a user interface only through passt, a different
      network stack (the guest would get the host's address): the same NIC for both drivers
      keeps what is compared the same. libvirt does not know the device, so it sits at a
      fixed slot of the root bus (:data:`MGMT_SLOT`)."""
    args = []
    if spec.pci_hotplug == "pciehp":
        args += ["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"]
    if spec.access == "ssh":
        args += ["-netdev", "user,id=mgmt,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:0-:22",
                 "-device", f"virtio-net-pci,netdev=mgmt,id=mgmt0,bus={spec.root_bus},"
                            f"addr={MGMT_SLOT:#04x}"]
    return args


def _sizes(spec: GuestSpec) -> list[str]:
    """Memory and vCPUs, with the hot-add room of ``-m size,slots=N,maxmem=M`` and ``-smp
    cpus,maxcpus=N``: vCPUs past ``current`` are hotpluggable offline ones, and DIMM slots
    come with ``<maxMemory>`` (which libvirt takes only with a NUMA cell: :func:`_cpu`)."""
    out = []
    if spec.mem_slots:
        out.append(f"<maxMemory slots='{spec.mem_slots}' unit='MiB'>{spec.max_memory_mb}</maxMemory>")
    out.append(f"<memory unit='MiB'>{spec.memory_mb}</memory>")
    top = max(spec.max_cpus, spec.cpus)
    current = f" current='{spec.cpus}'" if top > spec.cpus else ""
    out.append(f"<vcpu placement='static'{current}>{top}</vcpu>")
    return out


def _cpu(spec: GuestSpec, accel: str) -> str:
    """The CPU model, its topology (one socket of ``maxcpus`` cores, as QEMU 6.2 and newer
    give ``-smp N,maxcpus=M`` to the QMP driver's guests, so that a hot-added CPU is the same
    core there and here) and, for DIMM slots, the one NUMA cell libvirt wants before it lets
    memory be hot-added."""
    mode = "mode='host-passthrough'" if accel == "kvm" else "mode='maximum' check='none'"
    top = max(spec.max_cpus, spec.cpus)
    inner = ""
    if top > spec.cpus:
        inner += f"<topology sockets='1' dies='1' cores='{top}' threads='1'/>"
    if spec.mem_slots:
        inner += (f"<numa><cell id='0' cpus='0-{top - 1}' memory='{spec.memory_mb}' "
                  "unit='MiB'/></numa>")
    return f"<cpu {mode}>{inner}</cpu>" if inner else f"<cpu {mode}/>"


def _text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _boot(spec: GuestSpec, image: GuestImage) -> str:
    if not image.kernel:
        return "<boot dev='hd'/>"
    out = f"<kernel>{_text(str(image.kernel))}</kernel>"
    if image.initrd:
        out += f"<initrd>{_text(str(image.initrd))}</initrd>"
    append = " ".join(filter(None, [image.append, *spec.kernel_args]))
    return out + (f"<cmdline>{_text(append)}</cmdline>" if append else "")


def root_port_index(spec: GuestSpec, port: str) -> int:
    """libvirt's controller index of q35 root port ``rpN`` (pcie-root is index 0)."""
    return spec.root_port_ids.index(port) + 1


def _controllers(spec: GuestSpec) -> list[str]:
    out = []
    if spec.machine == "q35":
        out.append("<controller type='pci' index='0' model='pcie-root'/>")
        out += [f"<controller type='pci' index='{root_port_index(spec, p)}' model='pcie-root-port'>"
                f"<alias name='{alias(p)}'/></controller>" for p in spec.root_port_ids]
    else:
        out.append("<controller type='pci' index='0' model='pci-root'/>")
    usb = {"": "none", "xhci": "qemu-xhci", "default": "piix3-uhci" if spec.machine == "pc"
           else "ich9-ehci1"}[spec.usb]
    out.append(f"<controller type='usb' index='0' model='{usb}'/>")
    if spec.usb == "default" and spec.machine == "q35":  # -usb on q35: EHCI and its companions
        out += [f"<controller type='usb' index='0' model='ich9-uhci{i}'><master startport='{2 * i - 2}'/>"
                "</controller>" for i in (1, 2, 3)]
    return out


#: The boot disk's and seed's slots on the root bus. As QEMU's -drive if=virtio puts them (the
#: QMP driver's guests): left to itself, libvirt puts a q35 PCIe device on the first root port,
#: the one the harness hot-adds to.
DISK_SLOTS = (0x0A, 0x0B)


def _disks(image: GuestImage, paths: Paths) -> list[str]:
    out = []
    at = [f"<address type='pci' domain='0x0000' bus='0x00' slot='{slot:#04x}' function='0x0'/>"
          for slot in DISK_SLOTS]
    if image.disk:
        out.append("<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                   f"<source file={quoteattr(str(paths.disk_overlay))}/>"
                   f"<target dev='vda' bus='virtio'/>{at[0]}</disk>")
    if image.seed:
        out.append("<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
                   f"<source file={quoteattr(str(image.seed))}/><target dev='vdb' bus='virtio'/>"
                   f"<readonly/>{at[1]}</disk>")
    return out


def device_xml(spec: GuestSpec, driver: str, device_id: str, props: dict,
               backends: Backends) -> str:
    """The element ``attach-device`` takes for ``device_add driver,id=device_id,props``. A
    property not mapped is refused, never dropped: the device would not be the one asked for."""
    name = f"<alias name={quoteattr(alias(device_id))}/>"
    if driver not in MAPPED_PROPS and driver not in CONTROLLERS:
        raise Unexpressible(f"device_add {driver}", "libvirt has no device element for this QEMU "
                            "model in the versions the harness knows (an NVMe controller is "
                            "<disk bus='nvme'> only since libvirt 10.x)",
                            hint="run this role with --driver qmp")
    unmapped = sorted(set(props) - MAPPED_PROPS.get(driver, _PCI))
    if unmapped:
        raise Unexpressible(f"device_add {driver} with {', '.join(f'{k}={props[k]}' for k in unmapped)}",
                            "the harness maps no libvirt element or attribute to "
                            + ("it" if len(unmapped) == 1 else "them")
                            + (" (libvirt's <teaming> fails over only to a hostdev)"
                               if {"failover", "failover_pair_id"} & set(unmapped) else ""),
                            hint="run this test with --driver qmp")
    if driver in NIC_MODELS:
        return _interface(spec, driver, name, props, backends)
    if driver in USB_INPUTS:
        return f"<input type='{USB_INPUTS[driver]}' bus='usb'>{name}{_usb_address(props)}</input>"
    if driver in ("usb-storage", "virtio-blk-pci", "scsi-hd"):
        return _disk(spec, driver, name, props, backends)
    if driver == "pc-dimm":
        return _dimm(name, props, backends)
    if driver in CONTROLLERS:
        kind, model = CONTROLLERS[driver]
        model_attr = f" model='{model}'" if model else ""
        index = max(backends.indexes.get(kind, set()), default=-1) + 1
        backends.controllers[alias(device_id)] = index
        return (f"<controller type='{kind}' index='{index}'{model_attr}>{name}"
                f"{_pci_address(spec, props)}</controller>")
    if driver == "vfio-pci":
        return _hostdev_pci(spec, name, props)
    return _hostdev_usb(name, props)


def _interface(spec: GuestSpec, driver: str, name: str, props: dict, backends: Backends) -> str:
    netdev = backends.netdevs.get(props.get("netdev", ""), {})
    if netdev.get("type", "user") != "user":
        raise Unexpressible(f"a {netdev.get('type')} network back end", "only user networking is "
                            "mapped to libvirt XML", hint="use --driver qmp")
    ip = ""
    if netdev.get("net"):
        net = ipaddress.ip_network(netdev["net"])
        ip = f"<ip family='ipv4' address='{net.network_address}' prefix='{net.prefixlen}'/>"
    mac = f"<mac address={quoteattr(props['mac'])}/>" if props.get("mac") else ""
    return (f"<interface type='user'>{mac}<model type={quoteattr(NIC_MODELS[driver])}/>{ip}"
            f"{name}{_pci_address(spec, props)}</interface>")


def _disk(spec: GuestSpec, driver: str, name: str, props: dict, backends: Backends) -> str:
    path = backends.disks.get(props.get("drive", ""))
    if path is None:
        raise Unexpressible(f"{driver} without a file-backed drive", "libvirt attaches a disk "
                            "with its source file", hint="use --driver qmp")
    bus, prefix = {"usb-storage": ("usb", "sd"), "virtio-blk-pci": ("virtio", "vd"),
                   "scsi-hd": ("scsi", "sd")}[driver]
    target = next(f"{prefix}{c}" for c in "bcdefghijklmnopqrstuvwxyz"
                  if f"{prefix}{c}" not in backends.targets)
    backends.targets.add(target)
    if driver == "scsi-hd":
        hba = props.get("bus", "").split(".")[0]
        where = f"<address type='drive' controller='{backends.controllers[alias(hba)]}' bus='0' target='0' unit='0'/>"
    elif driver == "usb-storage":
        where = _usb_address(props)
    else:
        where = _pci_address(spec, props)
    return (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file={quoteattr(str(path))}/><target dev='{target}' bus='{bus}'/>"
            f"{name}{where}</disk>")


def _dimm(name: str, props: dict, backends: Backends) -> str:
    size = backends.memdevs.get(props.get("memdev", ""))
    if not size:
        raise Unexpressible("pc-dimm without a memory-backend-ram of known size", "libvirt "
                            "makes a DIMM's memory itself, of the size its element says",
                            hint="object-add the backend (with its size) before the device_add")
    return (f"<memory model='dimm'><target><size unit='KiB'>{int(size) // 1024}</size>"
            f"<node>{int(props.get('node', 0))}</node></target>{name}</memory>")


def _pci_address(spec: GuestSpec, props: dict) -> str:
    """Where on the PCI topology: a q35 root port's index, or slot ``addr`` of pc's root bus."""
    bus = props.get("bus")
    if bus is None:
        return ""
    index = root_port_index(spec, bus) if bus in spec.root_port_ids else 0
    slot = int(str(props.get("addr", "0")).split(".")[0], 0)
    if index == 0 and not slot:
        return ""  # libvirt picks a free slot of the root bus
    multi = " multifunction='on'" if str(props.get("multifunction", "")).lower() in ("on", "true") else ""
    fn = int(str(props["addr"]).split(".")[1], 0) if "." in str(props.get("addr", "")) else 0
    return (f"<address type='pci' domain='0x0000' bus='{index:#04x}' slot='{slot:#04x}' "
            f"function='{fn:#x}'{multi}/>")


def _usb_address(props: dict) -> str:
    port = props.get("port")
    return f"<address type='usb' bus='0' port={quoteattr(str(port))}/>" if port else ""


def _hostdev_pci(spec: GuestSpec, name: str, props: dict) -> str:
    m = re.fullmatch(r"(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])", props["host"].lower())
    if not m:
        raise Unexpressible(f"vfio-pci host={props['host']}", "not a PCI address libvirt takes")
    dom, bus, slot, fn = m.group(1) or "0000", *m.group(2, 3, 4)
    # managed='yes' has libvirt unbind the device from its host driver itself, proving
    # nothing and journaling nothing: only a caller that had the binder prove it idle and
    # journal it asks for that (harness.scenario.devices.VfioPci); by default libvirt takes
    # the device as it is, as QEMU's device_add does.
    managed = props.get("managed", "no")
    if managed not in ("yes", "no"):
        raise ConfigError(f"vfio-pci managed={managed!r}: libvirt takes yes or no",
                          hint="pass managed=\"yes\" (once the binder proved it idle and "
                               "journaled it) or \"no\"")
    return (f"<hostdev mode='subsystem' type='pci' managed='{managed}'>"
            f"<source><address domain='0x{dom}' bus='0x{bus}' slot='0x{slot}' function='0x{fn}'/>"
            f"</source>{name}{_pci_address(spec, props)}</hostdev>")


def _hostdev_usb(name: str, props: dict) -> str:
    """The host device by every part ``device_add`` names it with: its ids and its bus
    address both, when both are given (libvirt then takes only a device that matches both,
    ``virUSBDeviceFind``: with the ids alone it takes whichever device has them at attach
    time, a twin never proven idle); its guest port too."""
    ids, where = {"vendorid", "productid"} & set(props), {"hostbus", "hostaddr"} & set(props)
    if len(ids) == 1 or len(where) == 1 or not ids | where:
        raise Unexpressible(f"usb-host with {', '.join(f'{k}={props[k]}' for k in sorted(props))}",
                            "libvirt names a host USB device by vendor and product, or by bus "
                            "and device address, each pair whole",
                            hint="give vendorid with productid, hostbus with hostaddr (or both "
                                 "pairs)")
    source = (f"<vendor id='{int(str(props['vendorid']), 0):#06x}'/>"
              f"<product id='{int(str(props['productid']), 0):#06x}'/>") if ids else ""
    if where:
        source += f"<address bus='{props['hostbus']}' device='{props['hostaddr']}'/>"
    return (f"<hostdev mode='subsystem' type='usb' managed='yes'><source>{source}</source>"
            f"{name}{_usb_address(props)}</hostdev>")


def live_aliases(domain_xml_text: str) -> dict[str, str]:
    """Every device of a live domain XML by its alias: ``{"ua-nic0": "interface", ...}``."""
    out = {}
    for el in _devices(domain_xml_text):
        a = el.find("alias")
        if a is not None and a.get("name"):
            out[a.get("name")] = el.tag
    return out


def controller_indexes(domain_xml_text: str) -> dict[str, set[int]]:
    """The live domain's controllers: ``{"usb": {0}, "sata": {0}, "pci": {0, 1, 2}}``."""
    out: dict[str, set[int]] = {}
    for el in _devices(domain_xml_text):
        if el.tag == "controller":
            out.setdefault(el.get("type", ""), set()).add(int(el.get("index", "0")))
    return out


def _devices(domain_xml_text: str) -> list[ET.Element]:
    devices = ET.fromstring(domain_xml_text).find("devices")
    return list(devices) if devices is not None else []


def element_of(domain_xml_text: str, name: str) -> str | None:
    """The live XML of the device aliased ``name`` (None: the domain has no such device)."""
    for el in _devices(domain_xml_text):
        a = el.find("alias")
        if a is not None and a.get("name") == name:
            return ET.tostring(el, encoding="unicode")
    return None
