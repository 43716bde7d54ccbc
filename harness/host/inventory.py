"""The inventory: which host devices a run may take, and for which role.

A TOML file of ``[[device]]`` tables (docs/vfio.md)::

    [[device]]
    role = "nic"
    bdf = "0000:05:00.0"
    gateway = "192.168.100.1"

:func:`load_inventory` validates it all at once and reports one line per problem, naming the
file, the entry and the fix::

    inventory.toml: device #1 "nic-05-00.0": unknown key 'gatway': did you mean 'gateway'?
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
import tomllib
from pathlib import Path

from harness.core.errors import ConfigError
from harness.core.paths import UnsafePathError, read_trusted_file
from harness.host.sriov import physical_function
from harness.host.sysfs import (NVME_CLASS, STORAGE_CLASSES, Sysfs, UsbDevice, is_usb_host_controller,
                                parse_bdf, short_bdf)

PCI_ROLES = ("nic", "usb-controller", "sata-controller", "nvme")
ROLES = PCI_ROLES + ("usb-device",)
_ROLE_KEYS = {
    "nic": ("bdf", "gateway", "companions", "pf", "vf", "vfs", "ports"),
    "usb-controller": ("bdf", "product", "companions", "no_host_filesystems"),
    "sata-controller": ("bdf", "disk_bytes", "companions", "no_host_filesystems"),
    "nvme": ("bdf", "disk_bytes", "companions", "no_host_filesystems"),
    "usb-device": ("hostbus", "hostaddr", "vendorid", "productid", "product", "disk_bytes",
                   "no_host_filesystems"),
}
_ALL_KEYS = ("role", "name") + tuple(dict.fromkeys(k for ks in _ROLE_KEYS.values() for k in ks))
#: The class/subclass a PCI role's device must have.
_ROLE_CLASSES = {"nic": (0x0200,), "usb-controller": (0x0c03,), "sata-controller": STORAGE_CLASSES,
                 "nvme": (NVME_CLASS,)}
_ROLE_WANTS = {"nic": "an Ethernet controller",
               "usb-controller": "a USB host controller (UHCI, OHCI, EHCI or xHCI)",
               "sata-controller": "a SATA, SAS, RAID or IDE controller",
               "nvme": "an NVMe controller (class 0x0108)"}


def _role_fits(role: str, class_code: int) -> bool:
    """Whether a function of ``class_code`` can play ``role`` (as harness.host.safety's
    ``role_of`` says: a USB4 NHI, class 0x0c0340, is no usb-controller)."""
    return class_code >> 8 in _ROLE_CLASSES[role] and (
        role != "usb-controller" or is_usb_host_controller(class_code))


#: What ``discover --write`` puts where only a person can know the value.
GATEWAY_PLACEHOLDER = "FILL-IN"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class InventoryError(ConfigError):
    """The inventory has problems; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        if len(problems) == 1:
            super().__init__(problems[0], hint="fix that line of the inventory (format: "
                                               "docs/vfio.md)")
        else:
            super().__init__(f"the inventory has {len(problems)} problems:",
                             hint="fix each line below (format: docs/vfio.md)",
                             details="\n".join(f"  {p}" for p in problems))
        self.problems = problems


@dataclasses.dataclass(frozen=True)
class InventoryDevice:
    """One host device and the role it plays. PCI roles have ``bdf``; usb-device has
    hostbus/hostaddr and/or vendorid/productid (``"0x03f0"``)."""

    role: str
    name: str
    bdf: str | None = None
    gateway: str | None = None
    disk_bytes: int | None = None
    hostbus: int | None = None
    hostaddr: int | None = None
    vendorid: str | None = None
    productid: str | None = None
    product: str | None = None
    #: Other functions of the device's IOMMU group the run may move to vfio-pci with it (the
    #: other port of a dual-port NIC, a GPU's audio function). Nothing else is ever taken.
    companions: tuple[str, ...] = ()
    #: sata-controller, nvme: the person who wrote the inventory says no host filesystem is on it.
    #: Only matters when a mounted filesystem maps to no controller (a ZFS pool), which
    #: otherwise leaves every storage controller unproven (harness/host/safety.py).
    no_host_filesystems: bool | None = None
    #: nic: an SR-IOV virtual function instead of ``bdf``: its physical function (which stays
    #: on the host), the VF's index, and how many VFs the PF gets (``sriov_numvfs``). The
    #: VF's BDF exists once the VFs do: :meth:`Inventory.with_vfs` fills ``bdf`` in.
    pf: str | None = None
    vf: int | None = None
    vfs: int | None = None
    #: nic: how many ports the function has, for a NIC that serves several on one function
    #: (cxgb4, nfp, mlxsw): without it such a function is never proven idle (a port no
    #: namespace the harness reads shows may carry traffic; harness/host/safety.py).
    ports: int | None = None
    #: A comment ``to_toml`` writes above the entry (what discovery saw); not read back.
    note: str = dataclasses.field(default="", compare=False)

    @property
    def is_pci(self) -> bool:
        return self.role in PCI_ROLES

    @property
    def address(self) -> str:
        """Where the device is: its BDF, ``VF 0 of 0000:05:00.0`` (not made yet), or
        ``bus 3 addr 3`` / ``03f0:8607`` for USB."""
        if self.bdf:
            return self.bdf
        if self.pf:
            return f"VF {self.vf} of {self.pf}"
        if self.hostbus is not None:
            return f"bus {self.hostbus} addr {self.hostaddr}"
        return f"{self.vendorid[2:]}:{self.productid[2:]}"


@dataclasses.dataclass(frozen=True)
class Inventory:
    devices: tuple[InventoryDevice, ...]
    path: Path | None = None

    def for_role(self, role: str) -> list[InventoryDevice]:
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}", hint=f"use one of {', '.join(ROLES)}")
        return [d for d in self.devices if d.role == role]

    def by_name(self, name: str) -> InventoryDevice:
        for d in self.devices:
            if d.name == name:
                return d
        raise ConfigError(f"no device named {name!r} in {self.path or 'the inventory'}",
                          hint=f"names there: {', '.join(d.name for d in self.devices)}")

    def pci_addresses(self) -> set[str]:
        """The BDFs the run may bind to vfio-pci (``VfioBinder.bind(bdf, allowed=...)``): the
        listed devices and their companions: the allow-list."""
        return {d.bdf for d in self.devices if d.bdf} | {
            c for d in self.devices for c in d.companions}

    def vf_counts(self) -> dict[str, int]:
        """PF -> how many VFs the inventory wants it to have (the most any entry asks)."""
        out: dict[str, int] = {}
        for d in self.devices:
            if d.pf:
                out[d.pf] = max(out.get(d.pf, 0), d.vfs or 0)
        return out

    def with_vfs(self, vfs: dict[str, list[str]]) -> "Inventory":
        """This inventory with each VF entry's ``bdf`` filled in from ``vfs`` (PF -> its VFs'
        BDFs by index, as :func:`harness.host.sriov.vfs_of` reads them)."""
        return Inventory(tuple(dataclasses.replace(d, bdf=vfs[d.pf][d.vf]) if d.pf else d
                               for d in self.devices), self.path)

    def nic_ports(self) -> dict[str, int]:
        """NIC function -> how many ports its entry says it has (``ports``)."""
        return {d.bdf: d.ports for d in self.devices if d.ports and d.bdf}

    def cleared_storage(self) -> frozenset[str]:
        """Storage controllers the inventory says hold no host filesystem."""
        return frozenset(d.bdf for d in self.devices if d.no_host_filesystems and d.bdf)

    def to_toml(self) -> str:
        lines = ["# Host devices the hotplug harness may take over for --backend vfio.",
                 "# Taking a PCI device takes its whole IOMMU group (see docs/vfio.md).",
                 "# Check it, then: python -m harness doctor --inventory <this file>"]
        for d in self.devices:
            lines += ["", "[[device]]"]
            lines += [f"# {line}" for line in d.note.splitlines()]
            for key in ("role", "name") + _ROLE_KEYS[d.role]:
                value = getattr(d, key)
                if value is None or value == ():
                    continue
                if key == "companions":
                    lines.append(f"companions = {json.dumps(list(value))}")
                    continue
                if isinstance(value, bool):
                    lines.append(f"{key} = {str(value).lower()}")
                    continue
                # A JSON string is a TOML basic string.
                text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) \
                    else str(value)
                if key == "gateway" and value == GATEWAY_PLACEHOLDER:
                    text += "  # FILL IN: the address the guest pings through this NIC"
                lines.append(f"{key} = {text}")
        return "\n".join(lines) + "\n"


def default_name(role: str, bdf: str | None = None, hostbus: int | None = None,
                 hostaddr: int | None = None, vendorid: str | None = None,
                 productid: str | None = None, pf: str | None = None, vf: int | None = None) -> str:
    """A name usable in test ids: ``nic-05-00.0``, ``nic-vf0-05-00.0`` (VF 0 of that PF: ``-k
    vf``), ``usb-device-3-3``, ``usb-device-03f0-8607``."""
    if pf:
        return f"{role}-vf{vf or 0}-{short_bdf(pf).replace(':', '-')}"
    if bdf:
        return f"{role}-{short_bdf(bdf).replace(':', '-')}"
    if hostbus is not None:
        return f"{role}-{hostbus}-{hostaddr}"
    return f"{role}-{(vendorid or '0x')[2:]}-{(productid or '0x')[2:]}"


def load_inventory(path: str | Path, root: "str | Path | Sysfs" = "/", *,
                   check_host: bool = True) -> Inventory:
    """Read and validate an inventory file. ``check_host`` also checks each device against
    root/sys (present, right class). Raises :class:`InventoryError` listing every problem."""
    path = Path(path)
    try:
        # it says which host devices root takes: judged by the fd it is read from
        text = read_trusted_file(path) if os.geteuid() == 0 else path.read_text()
    except UnsafePathError as e:
        raise UnsafePathError(f"refusing the inventory {path}: {e.message}", hint=e.hint,
                              details="an inventory says which host devices root takes: "
                                      "docs/vfio.md, 'What the harness writes as root'") from e
    except OSError as e:
        raise ConfigError(f"cannot read the inventory {path}: {e.strerror}",
                          hint="give an existing file; `python -m harness discover --write "
                               f"{path}` drafts one") from e
    return parse_inventory(text, source=str(path), root=root, check_host=check_host, path=path)


def _device_tables(text: str, source: str) -> tuple[list[dict], list[str]]:
    """The file's [[device]] tables, and what is wrong with its shape."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InventoryError([f"{source}: not valid TOML: {e}; fix the syntax there"]) from e
    problems: list[str] = []
    for key in data:
        if key != "device":
            problems.append(f"{source}: unknown top-level key {key!r}{_suggest(key, ['device'])}; "
                            f"each device is a [[device]] table")
    entries = data.get("device", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        problems.append(f"{source}: 'device' must be [[device]] tables, not "
                        f"{type(entries).__name__}; write each device as a [[device]] table")
        entries = []
    if not entries and not problems:
        problems.append(f"{source}: no [[device]] entries; `python -m harness discover --write "
                        f"{source}` drafts them")
    return entries, problems


def parse_inventory(text: str, *, source: str = "inventory.toml",
                    root: "str | Path | Sysfs" = "/", check_host: bool = True,
                    path: Path | None = None) -> Inventory:
    entries, problems = _device_tables(text, source)
    fs = Sysfs.of(root) if check_host else None
    devices: list[InventoryDevice] = []
    seen_names: dict[str, str] = {}
    seen_devices: dict[tuple, str] = {}
    for i, entry in enumerate(entries, start=1):
        checker = _EntryChecker(source, i, entry)
        device = checker.check()
        if device is not None:
            label = checker.label
            if device.name in seen_names:
                checker.problem(f"name {device.name!r} is also {seen_names[device.name]}",
                                "give each device its own name")
            seen_names.setdefault(device.name, label)
            identity = _identity(device)
            if identity in seen_devices:
                checker.problem(f"same device ({device.address}) as {seen_devices[identity]}",
                                "list each host device once")
            seen_devices.setdefault(identity, label)
            if fs is not None and not checker.problems:
                checker.check_host(fs, device)
            devices.append(device)
        problems += checker.problems
    taken = {d.bdf for d in devices if d.bdf} | {c for d in devices for c in d.companions}
    for pf in sorted({d.pf for d in devices if d.pf} & taken):
        problems.append(f"{source}: {pf} is the PF of VF entries and is also listed to be "
                        "taken (bdf or companions); a PF whose VFs the run uses stays on the "
                        "host (unbinding its driver removes the VFs): drop one")
    if problems:
        raise InventoryError(problems)
    return Inventory(tuple(devices), path)


def _identity(d: InventoryDevice) -> tuple:
    if d.pf:
        return ("vf", d.pf, d.vf)
    if d.bdf:
        return ("pci", d.bdf)
    if d.hostbus is not None:
        return ("usb", d.hostbus, d.hostaddr)
    return ("usb-ids", d.vendorid, d.productid)


def _tentative_name(entry: dict) -> str | None:
    """The default name of an entry without one, for messages, if its address is readable."""
    role, bdf, bus, addr = (entry.get(k) for k in ("role", "bdf", "hostbus", "hostaddr"))
    if role not in ROLES:
        return None
    if isinstance(bdf, str):
        try:
            return default_name(role, bdf=parse_bdf(bdf))
        except ConfigError:
            return None
    if isinstance(bus, int) and isinstance(addr, int):
        return default_name(role, hostbus=bus, hostaddr=addr)
    return None


def _closest(word: str, choices) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def _suggest(word: str, choices) -> str:
    close = _closest(word, choices)
    return f" (did you mean {close!r}?)" if close else ""


class _EntryChecker:
    """Validates one ``[[device]]`` table, collecting one line per problem."""

    def __init__(self, source: str, index: int, entry: dict):
        self.source, self.entry = source, entry
        self.problems: list[str] = []
        name = entry.get("name")
        if not isinstance(name, str):
            name = _tentative_name(entry)
        self.label = f'device #{index}' + (f' "{name}"' if name else "")

    def problem(self, what: str, fix: str) -> None:
        self.problems.append(f"{self.source}: {self.label}: {what}; {fix}")

    def check(self) -> InventoryDevice | None:
        e = self.entry
        role = e.get("role")
        if role is None:
            self.problem("missing key 'role'", f"add role = one of {', '.join(ROLES)}")
            return None
        if not isinstance(role, str) or role not in ROLES:
            self.problem(f"unknown role {role!r}{_suggest(str(role), ROLES)}",
                         f"use one of {', '.join(ROLES)}")
            return None
        present = self._check_keys(role)
        fields = {k: self._field(k) for k in _ROLE_KEYS[role] if k in e}
        self._check_required(role, present)

        name = e.get("name")
        if name is not None and not (isinstance(name, str) and _NAME.fullmatch(name)):
            self.problem(f"name {name!r} is not letters, digits, '.', '_' and '-'",
                         "rename it: the name becomes part of test ids")
            name = None
        if fields.get("pf") and not self.problems:
            fields.setdefault("vf", 0)
            fields.setdefault("vfs", fields["vf"] + 1)
            if fields["vf"] >= fields["vfs"]:
                self.problem(f"vf = {fields['vf']} but vfs = {fields['vfs']}: the PF's VFs are "
                             f"numbered 0 to {fields['vfs'] - 1}", f"ask for vfs = "
                             f"{fields['vf'] + 1} or more, or pick a lower vf")
        if self.problems:
            return None
        if name is None:
            name = default_name(role, **{k: fields.get(k) for k in
                                         ("bdf", "hostbus", "hostaddr", "vendorid", "productid",
                                          "pf", "vf")})
        return InventoryDevice(role=role, name=name, **fields)

    def _check_keys(self, role: str) -> set[str]:
        """Keys that do not apply or do not exist; returns the keys present, a misspelt key
        counted as the one it is close to (so it is reported once, as misspelt)."""
        allowed = ("role", "name") + _ROLE_KEYS[role]
        misspelt = set()
        for key in self.entry:
            if key in allowed:
                continue
            if key in _ALL_KEYS:
                self.problem(f"key {key!r} does not apply to role {role!r}",
                             f"remove it (keys of {role}: {', '.join(allowed)})")
            else:
                if close := _closest(key, allowed):
                    misspelt.add(close)
                self.problem(f"unknown key {key!r}{_suggest(key, allowed)}",
                             f"keys of {role}: {', '.join(allowed)}")
        return set(self.entry) | misspelt

    def _check_required(self, role: str, present: set[str]) -> None:
        if role == "nic" and {"bdf", "pf"} <= present:
            self.problem("both 'bdf' and 'pf'", "a VF's entry names its PF (pf, vf, vfs) and "
                                                "the harness finds the VF's address; drop one")
        elif role in PCI_ROLES and "bdf" not in present and "pf" not in present:
            self.problem("missing key 'bdf'", 'add bdf = "DDDD:BB:DD.F" (from `lspci -D` or '
                                              '`python -m harness discover`)' +
                         (", or pf = the PF of an SR-IOV VF" if role == "nic" else ""))
        if ({"vf", "vfs"} & present) and "pf" not in present:
            self.problem("'vf'/'vfs' without 'pf'", 'add pf = "DDDD:BB:DD.F", the physical '
                                                   "function whose VFs these are")
        if role == "nic" and "gateway" not in present:
            self.problem("missing key 'gateway'", 'add gateway = "A.B.C.D", the address the '
                                                  'guest pings through this NIC')
        if role != "usb-device":
            return
        by_bus = ("hostbus" in present, "hostaddr" in present)
        by_ids = ("vendorid" in present, "productid" in present)
        if any(by_bus) and not all(by_bus):
            missing = "hostaddr" if by_bus[0] else "hostbus"
            self.problem(f"missing key {missing!r}", "give hostbus and hostaddr together "
                                                     "(Bus and Device of `lsusb`)")
        elif any(by_ids) and not all(by_ids):
            missing = "productid" if by_ids[0] else "vendorid"
            self.problem(f"missing key {missing!r}", "give vendorid and productid together "
                                                     '(ID of `lsusb`, like "0x03f0")')
        elif not any(by_bus + by_ids):
            self.problem("no hostbus/hostaddr and no vendorid/productid",
                         "add either (Bus and Device, or ID, of `lsusb`)")

    def _field(self, key: str):
        value = self.entry[key]
        if key in ("bdf", "pf"):
            if not isinstance(value, str):
                return self._type(key, value, 'a string like "0000:05:00.0"')
            try:
                return parse_bdf(value)
            except ConfigError as err:
                self.problem(err.message, "write it like 0000:05:00.0 or 05:00.0")
                return None
        if key == "gateway":
            return self._gateway(value)
        if key == "companions":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                return self._type(key, value, 'a list of PCI addresses like ["0000:05:00.1"]')
            try:
                return tuple(parse_bdf(v) for v in value)
            except ConfigError as err:
                self.problem(f"companions: {err.message}", "write each like 0000:05:00.1")
                return None
        if key == "vf":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                return self._type(key, value, "a VF index: 0, 1, ... (0 is the first VF)")
            return value
        if key in ("disk_bytes", "hostbus", "hostaddr", "vfs", "ports"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                example = {"disk_bytes": "164696555520 (bytes, as `fdisk -l` shows)",
                           "vfs": "2 (VFs the PF gets, at most its sriov_totalvfs)",
                           "ports": "2 (the ports of the card on this one PCI function)",
                           "hostbus": "3 (Bus of `lsusb`)", "hostaddr": "3 (Device of `lsusb`)"}
                return self._type(key, value, f"a positive integer like {example[key]}")
            return value
        if key in ("vendorid", "productid"):
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xffff:
                return f"0x{value:04x}"
            if isinstance(value, str) and re.fullmatch(r"(0x)?[0-9a-fA-F]{4}", value):
                return "0x" + value[-4:].lower()
            return self._type(key, value, 'four hex digits like "0x03f0" (ID of `lsusb`)')
        if key == "product":
            return value if isinstance(value, str) else self._type(key, value, "a string")
        if key == "no_host_filesystems":
            return value if isinstance(value, bool) else self._type(key, value, "true or false")
        raise AssertionError(key)

    def _gateway(self, value):
        if value == GATEWAY_PLACEHOLDER:
            self.problem(f"gateway is still the placeholder {GATEWAY_PLACEHOLDER!r} from "
                         f"`discover --write`", "set the address the guest pings through this NIC")
            return None
        try:
            return str(ipaddress.ip_address(value)) if isinstance(value, str) else \
                self._type("gateway", value, 'an IP address string like "192.168.100.1"')
        except ValueError:
            self.problem(f"gateway {value!r} is not an IP address", 'write it like "192.168.100.1"')
            return None

    def _type(self, key: str, value, expected: str) -> None:
        self.problem(f"{key} = {value!r} is not {expected}", f"write {key} as {expected}")
        return None

    def check_host(self, fs: Sysfs, d: InventoryDevice) -> None:
        for what, fix in host_problems(fs, d):
            self.problem(what, fix)


def host_problems(root: "str | Path | Sysfs", d: InventoryDevice) -> list[tuple[str, str]]:
    """(problem, fix) if the device is not on this host, or is not what its role needs."""
    fs = Sysfs.of(root)
    if d.pf and not d.bdf:
        if not fs.pci_exists(d.pf):
            return [(f"PCI device {d.pf} (pf) does not exist on this host",
                     "check `lspci -D` or `python -m harness discover`")]
        dev = fs.pci_device(d.pf)
        if dev.class_code >> 8 not in _ROLE_CLASSES["nic"]:
            return [(f"pf {d.pf} [{dev.ids}] is of class {dev.class_name}; a VF's PF must be "
                     "an Ethernet controller", "fix the pf")]
        pf = physical_function(fs, d.pf)
        if pf is None:
            return [(f"pf {d.pf} has no SR-IOV capability (no sriov_totalvfs)",
                     "switch SR-IOV on in the firmware and load the PF's driver, or pick an "
                     "SR-IOV NIC (`python -m harness discover` lists them)")]
        if d.vfs > pf.totalvfs:
            return [(f"vfs = {d.vfs} but {d.pf} offers at most {pf.totalvfs} "
                     "(sriov_totalvfs)", f"ask for {pf.totalvfs} or fewer")]
        return []
    if d.is_pci:
        if not fs.pci_exists(d.bdf):
            return [(f"PCI device {d.bdf} does not exist on this host",
                     "check `lspci -D` or `python -m harness discover`")]
        dev = fs.pci_device(d.bdf)
        if not _role_fits(d.role, dev.class_code):
            return [(f"{d.bdf} [{dev.ids}] is of class {dev.class_name}; role {d.role!r} needs "
                     f"{_ROLE_WANTS[d.role]}", "fix the bdf or the role")]
        return []
    usb = fs.usb_devices()
    wanted_ids = f"{d.vendorid[2:]}:{d.productid[2:]}" if d.vendorid else None
    at = [u for u in usb if (u.busnum, u.devnum) == (d.hostbus, d.hostaddr)]
    ids = [u for u in usb if u.ids == wanted_ids]
    if d.hostbus is not None and not at:
        return [(f"no USB device at bus {d.hostbus} address {d.hostaddr} on this host",
                 "check `lsusb` (the address changes when the device is replugged)")]
    if wanted_ids and not ids:
        return [(f"no USB device {wanted_ids} on this host", "check `lsusb` and plug it in")]
    if at and wanted_ids and at[0].ids != wanted_ids:
        return [(f"bus {d.hostbus} address {d.hostaddr} is {at[0].ids}, not {wanted_ids}",
                 "fix one of them (`lsusb` shows both)")]
    if not at and len(ids) > 1:
        where = ", ".join(f"bus {u.busnum} addr {u.devnum}" for u in ids)
        return [(f"{len(ids)} USB devices are {wanted_ids} ({where})",
                 "add hostbus and hostaddr to pick one")]
    if (at or ids)[0].is_hub:
        return [(f"{d.address} is a USB hub", "pick the device behind it (`lsusb -t`)")]
    return []


def find_usb_device(root: "str | Path | Sysfs", d: InventoryDevice) -> UsbDevice | None:
    """The host USB device an inventory usb-device names (by address if given, else by ids)."""
    for u in Sysfs.of(root).usb_devices():
        if d.hostbus is not None:
            if (u.busnum, u.devnum) == (d.hostbus, d.hostaddr):
                return u
        elif d.vendorid and u.ids == f"{d.vendorid[2:]}:{d.productid[2:]}":
            return u
    return None
