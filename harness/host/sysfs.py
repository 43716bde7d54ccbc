"""Small readers of the host's sysfs, and the one place that writes to it.

Everything is relative to a ``root`` (``/`` on a real host, a temp dir in unit tests)::

    >>> fs = Sysfs("/")
    >>> dev = fs.pci_device("05:00.0")          # doctest: +SKIP
    >>> dev.ids, dev.class_name, dev.driver, dev.iommu_group
    ('8086:10fb', 'Ethernet controller', 'ixgbe', 12)

Files in a temp dir do not react to writes the way sysfs does, so :class:`Sysfs` calls an
optional ``on_write(path, value)`` hook after each write: the unit tests' fake kernel.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import os
import re
import stat
from pathlib import Path
from typing import Callable

from harness.core.errors import ConfigError, HostDeviceError
from harness.core.paths import UnsafePathError, check_ancestors, invoking_uids

log = logging.getLogger("harness.host")

_BDF = re.compile(r"(?:([0-9a-f]{4,8}):)?([0-9a-f]{2}):([01][0-9a-f])\.([0-7])", re.I)
#: A normalised BDF as sysfs names devices and :func:`parse_bdf` makes them (used to pick them
#: out of sysfs paths, and to check the vfio journal's). Linux prints the domain with %04x: a
#: VMD domain has 5 digits (10000:01:00.0).
SYSFS_BDF = re.compile(r"[0-9a-f]{4,8}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]")
#: USB device (not interface) names in sysfs paths: root hubs ``usb3``, devices ``3-1``, ``3-1.2``.
_USB_DEVICE = re.compile(r"usb\d+|\d+-\d+(?:\.\d+)*")


def parse_bdf(value: str) -> str:
    """Normalise a PCI address: ``"05:00.0"`` -> ``"0000:05:00.0"``.

    >>> parse_bdf("05:00.0"), parse_bdf("0000:00:1F.2")
    ('0000:05:00.0', '0000:00:1f.2')
    """
    m = _BDF.fullmatch(value.strip()) if isinstance(value, str) else None
    if not m:
        raise ConfigError(f"malformed PCI address {value!r}: expected DDDD:BB:DD.F "
                          f"(like 0000:05:00.0) or BB:DD.F",
                          hint="copy the address from `lspci -D` or `python -m harness discover`")
    domain, bus, dev, fn = m.groups()
    return f"{(domain or '0000').lower()}:{bus.lower()}:{dev.lower()}.{fn}"


def kernel_params(cmdline: str) -> list[str]:
    """The parameters of a kernel command line as the kernel reads them (``next_arg``,
    ``parameq``): words split at spaces outside double quotes, the quotes dropped
    (``"pcie_acs_override=downstream"`` is the parameter), and ``-`` in a name read as ``_``
    (``pcie-acs-override=`` is ``pcie_acs_override=``). Every quote is dropped, where the
    kernel drops only those around a word or a value: a name it would not match may match
    here, which refuses more, never less."""
    out = []
    for word in re.findall(r'(?:"[^"]*"?|[^\s"])+', cmdline):
        name, eq, value = word.replace('"', "").partition("=")
        out.append(name.replace("-", "_") + eq + value)
    return out


def short_bdf(bdf: str) -> str:
    """``0000:05:00.0`` -> ``05:00.0`` (the domain only when it is not 0000)."""
    return bdf[5:] if bdf.startswith("0000:") else bdf


def bdfs_in_path(path: str | Path) -> list[str]:
    """The PCI functions on a resolved sysfs path, upstream first: the last one is the device
    itself (``.../0000:00:1c.0/0000:02:00.0/net/eth0`` -> both)."""
    return [p for p in Path(path).parts if SYSFS_BDF.fullmatch(p)]


def usb_devices_in_path(path: str | Path) -> list[str]:
    """The USB devices (root hub, hubs, device) on a resolved sysfs path, upstream first."""
    return [p for p in Path(path).parts if _USB_DEVICE.fullmatch(p)]


# -- PCI classes --------------------------------------------------------------------------------

#: (class << 8 | subclass) -> the name lspci prints.
CLASS_NAMES = {
    0x0100: "SCSI storage controller", 0x0101: "IDE interface", 0x0104: "RAID bus controller",
    0x0106: "SATA controller", 0x0107: "Serial Attached SCSI controller",
    0x0108: "Non-Volatile memory controller", 0x0180: "Mass storage controller",
    0x0200: "Ethernet controller", 0x0280: "Network controller",
    0x0300: "VGA compatible controller", 0x0302: "3D controller", 0x0403: "Audio device",
    0x0600: "Host bridge", 0x0601: "ISA bridge", 0x0604: "PCI bridge", 0x0607: "CardBus bridge",
    0x0609: "PCI bridge", 0x0680: "Bridge", 0x0880: "System peripheral",
    0x0c03: "USB controller", 0x0c05: "SMBus", 0x1180: "Signal processing controller",
}
#: USB controller programming interfaces (the low byte of class 0x0c03xx).
USB_PROG_IF = {0x00: "uhci", 0x10: "ohci", 0x20: "ehci", 0x30: "xhci", 0x40: "usb4"}
#: The USB host controllers (UHCI, OHCI, EHCI, xHCI): their use shows below them in sysfs (root
#: hubs, devices, interfaces). A USB4/Thunderbolt NHI (0x40) tunnels PCIe and DisplayPort to
#: devices that sit elsewhere, and is none.
USB_HOST_PROG_IFS = (0x00, 0x10, 0x20, 0x30)
#: Class/subclass of SATA-capable storage controllers (AHCI SATA, SAS HBAs, RAID-mode chipsets,
#: IDE-mode SATA).
STORAGE_CLASSES = (0x0106, 0x0107, 0x0104, 0x0101)
#: Class/subclass of an NVMe controller (Non-Volatile memory controller).
NVME_CLASS = 0x0108


def class_name(class_code: int) -> str:
    """``0x0c0330`` -> ``"USB controller (xhci)"``; unknown -> ``"class 0x0c80"``."""
    base = class_code >> 8
    name = CLASS_NAMES.get(base, f"class 0x{base:04x}")
    if base == 0x0c03 and (kind := usb_controller_kind(class_code)):
        name += f" ({kind})"
    elif base == 0x0106 and class_code & 0xff == 0x01:
        name += " (AHCI)"
    return name


def is_usb_host_controller(class_code: int) -> bool:
    """A UHCI, OHCI, EHCI or xHCI controller (not a USB4 NHI, not a USB device, 0xfe)."""
    return class_code >> 8 == 0x0c03 and class_code & 0xff in USB_HOST_PROG_IFS


def usb_controller_kind(class_code: int) -> str | None:
    """``uhci``/``ohci``/``ehci``/``xhci`` for a USB host controller class, else None."""
    if class_code >> 8 != 0x0c03:
        return None
    return USB_PROG_IF.get(class_code & 0xff)


# -- snapshots ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PciDevice:
    """What sysfs says about one PCI function, read at one moment."""

    bdf: str
    vendor: str            # "8086"
    device: str            # "10fb"
    class_code: int        # 0x020000
    driver: str | None
    iommu_group: int | None
    driver_override: str | None   # None when sysfs shows "(null)"; the file may not exist
    has_driver_override: bool
    header_type: int       # 0 normal, 1 PCI-to-PCI bridge, 2 CardBus bridge
    path: str              # resolved sysfs directory

    @property
    def ids(self) -> str:
        return f"{self.vendor}:{self.device}"

    @property
    def class_name(self) -> str:
        return class_name(self.class_code)

    @property
    def kernel_bridge(self) -> bool:
        """A bridge header: the kernel leaves it to its driver (pcieport) when vfio takes the
        rest of its IOMMU group."""
        return self.header_type in (1, 2)

    @property
    def normal_header_bridge(self) -> bool:
        """A host, ISA/LPC or other bridge with a normal header: vfio would have to take it."""
        return self.class_code >> 16 == 0x06 and not self.kernel_bridge

    def to_dict(self) -> dict:
        return {"bdf": self.bdf, "ids": self.ids, "class": self.class_name, "driver": self.driver,
                "iommu_group": self.iommu_group, "driver_override": self.driver_override}


@dataclasses.dataclass(frozen=True)
class UsbDevice:
    """A USB device (not interface) under root/sys/bus/usb/devices."""

    name: str              # "3-3"
    busnum: int
    devnum: int
    vendorid: str          # "03f0"
    productid: str
    product: str | None
    manufacturer: str | None
    device_class: int      # bDeviceClass; 9 is a hub
    path: str

    @property
    def ids(self) -> str:
        return f"{self.vendorid}:{self.productid}"

    @property
    def is_hub(self) -> bool:
        return self.device_class == 0x09


# -- pci.ids ------------------------------------------------------------------------------------

PCI_IDS_PATHS = ("usr/share/misc/pci.ids", "usr/share/hwdata/pci.ids")


@functools.lru_cache(maxsize=4)
def _load_pci_ids(path: str, mtime: float) -> dict[str, tuple[str, dict[str, str]]]:
    vendors: dict[str, tuple[str, dict[str, str]]] = {}
    current: dict[str, str] | None = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            if line.startswith("C "):  # the class list that ends the file
                break
            if not line.startswith("\t"):
                vid, _, name = line.rstrip("\n").partition("  ")
                current = {}
                vendors[vid.lower()] = (name.strip(), current)
            elif not line.startswith("\t\t") and current is not None:
                did, _, name = line.strip().partition("  ")
                current[did.lower()] = name.strip()
    return vendors


def pci_names(root: str | Path, vendor: str, device: str) -> tuple[str | None, str | None]:
    """Vendor and device names from root's pci.ids; ``(None, None)`` if it is absent."""
    for rel in PCI_IDS_PATHS:
        path = Path(root, rel)
        try:
            table = _load_pci_ids(str(path), path.stat().st_mtime)
        except OSError:
            continue
        vname, devices = table.get(vendor.lower(), (None, {}))
        return vname, devices.get(device.lower())
    return None, None


# -- the sysfs object ---------------------------------------------------------------------------

WriteHook = Callable[[Path, str], None]


class Sysfs:
    """root/sys and root/proc. All sysfs writes of the harness go through :meth:`write`."""

    def __init__(self, root: str | Path = "/", on_write: WriteHook | None = None):
        # Resolved once: "//", "/./", "/proc/.." or a link to / are the real host too, and
        # every "real host or a test's fake root?" decision reads :attr:`real_host`.
        self.root = Path(os.path.realpath(root))
        self.on_write = on_write

    @property
    def real_host(self) -> bool:
        """Whether this is the running host (root ``/``), not a test's fake tree: the real
        host's tools run and its /dev nodes are opened, a fake root's stand-ins are read."""
        return self.root == Path("/")

    @classmethod
    def of(cls, root: "str | Path | Sysfs") -> "Sysfs":
        """``root`` as given to the host API: a path, or a ready Sysfs (tests pass one whose
        ``on_write`` is a fake kernel)."""
        return root if isinstance(root, Sysfs) else cls(root)

    def sys(self, *parts: str) -> Path:
        return self.root.joinpath("sys", *parts)

    def proc(self, *parts: str) -> Path:
        return self.root.joinpath("proc", *parts)

    def path(self, *parts: str) -> Path:
        """Any other path under root (``dev/kvm``, ``usr/share/qemu``)."""
        return self.root.joinpath(*parts)

    # reading

    @staticmethod
    def read(path: Path) -> str | None:
        """A file's text without the trailing newline, or None if it cannot be read."""
        try:
            return path.read_text(errors="replace").rstrip("\n")
        except OSError:
            return None

    @staticmethod
    def link_name(path: Path) -> str | None:
        """The last component of a symlink's target (``driver`` -> ``ixgbe``), or None."""
        try:
            return os.path.basename(os.readlink(path))
        except OSError:
            return None

    def pci_dir(self, bdf: str) -> Path:
        return self.sys("bus", "pci", "devices", bdf)

    def pci_exists(self, bdf: str) -> bool:
        return self.pci_dir(bdf).exists()

    def pci_addresses(self) -> list[str]:
        try:
            return sorted(p.name for p in self.sys("bus", "pci", "devices").iterdir())
        except OSError:
            return []

    def pci_device(self, bdf: str) -> PciDevice:
        """A snapshot of ``bdf`` (normalised first); HostDeviceError if the host has no such
        device."""
        bdf = parse_bdf(bdf)
        d = self.pci_dir(bdf)
        if not d.exists():
            raise HostDeviceError(f"PCI device {bdf} does not exist on this host "
                                  f"(no {d})",
                                  hint="check `lspci -D`; `python -m harness discover` lists the "
                                       "candidates; fix the inventory")
        group = self.link_name(d / "iommu_group")
        override = self.read(d / "driver_override")
        class_code = int(self.read(d / "class") or "0", 16)
        return PciDevice(
            bdf=bdf,
            vendor=(self.read(d / "vendor") or "0x0000")[2:].lower(),
            device=(self.read(d / "device") or "0x0000")[2:].lower(),
            class_code=class_code,
            driver=self.link_name(d / "driver"),
            iommu_group=int(group) if group is not None and group.isdigit() else None,
            driver_override=None if override in (None, "", "(null)") else override,
            has_driver_override=(d / "driver_override").exists(),
            header_type=self._header_type(d, class_code),
            path=os.path.realpath(d),
        )

    def _header_type(self, d: Path, class_code: int) -> int:
        # Byte 0x0e of config space; anyone may read the first 64 bytes.
        try:
            with open(d / "config", "rb") as f:
                head = f.read(64)
            if len(head) > 0x0e:
                return head[0x0e] & 0x7f
        except OSError:
            pass
        return {0x0604: 1, 0x0609: 1, 0x0607: 2}.get(class_code >> 8, 0)

    def iommu_groups(self) -> list[int]:
        try:
            return sorted(int(p.name) for p in self.sys("kernel", "iommu_groups").iterdir()
                          if p.name.isdigit())
        except OSError:
            return []

    def iommu_group_members(self, group: int, strict: bool = False) -> list[str]:
        """The PCI functions of IOMMU group ``group``; an unreadable group is empty, or raises
        OSError when ``strict`` (for a decision: an unread group is not a group of one)."""
        try:
            return sorted(p.name for p in
                          self.sys("kernel", "iommu_groups", str(group), "devices").iterdir())
        except OSError:
            if strict:
                raise
            return []

    def vfio_group_dev(self, group: int) -> str | None:
        """``MAJ:MIN`` of ``/dev/vfio/<group>`` (sysfs ``class/vfio/<group>/dev``), or None when
        it cannot be read: a process may hold the group through any node of that number (a
        container's own /dev), so it is matched by number, not by path."""
        dev = self.read(self.sys("class", "vfio", str(group), "dev"))
        return dev if dev and re.fullmatch(r"\d+:\d+", dev) else None

    def pci_driver_dir(self, driver: str) -> Path:
        return self.sys("bus", "pci", "drivers", driver)

    def usb_devices(self) -> list[UsbDevice]:
        """USB devices (root hubs and hubs included), not their interfaces."""
        out = []
        try:
            entries = sorted(self.sys("bus", "usb", "devices").iterdir())
        except OSError:
            return out
        for p in entries:
            if not _USB_DEVICE.fullmatch(p.name):
                continue
            busnum, devnum = self.read(p / "busnum"), self.read(p / "devnum")
            if not (busnum and devnum and busnum.isdigit() and devnum.isdigit()):
                continue
            out.append(UsbDevice(
                name=p.name, busnum=int(busnum), devnum=int(devnum),
                vendorid=(self.read(p / "idVendor") or "").lower(),
                productid=(self.read(p / "idProduct") or "").lower(),
                product=self.read(p / "product"), manufacturer=self.read(p / "manufacturer"),
                device_class=int(self.read(p / "bDeviceClass") or "0", 16),
                path=os.path.realpath(p)))
        return out

    # writing

    def write(self, path: Path, value: str) -> None:
        """Write ``value`` to an existing sysfs attribute (never creates a file).

        Raises HostDeviceError naming the file, the value and the kernel's errno. Under
        another root than ``/`` (a copy of a host's tree), a write whose path leads out of that
        tree is refused: the evidence read there proves nothing about the place it leads to
        (a ``sys`` linked to the real /sys would take a device on a copy's word)."""
        log.info("sysfs: echo %r > %s", value, path)
        real = os.path.realpath(path)
        if not self.real_host and not real.startswith(str(self.root) + os.sep):
            raise HostDeviceError(f"refusing to write {value.strip()!r} to {path}: it leads out "
                                  f"of {self.root} (to {real}), whose files were read as the "
                                  "host's evidence",
                                  hint="--root is for a copy of a host's tree; to bind on this "
                                       "host, leave --root out (it is /)")
        if not self.real_host:
            _check_copy_file(value, Path(path), Path(real))
        try:
            # (in a copy: the checked real path, and never a FIFO's reader awaited)
            fd = (os.open(path, os.O_WRONLY | os.O_TRUNC) if self.real_host else
                  os.open(real, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK))
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
            if self.on_write:
                self.on_write(Path(path), value)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                hint = "binding host devices needs root: run as root (sudo)"
            else:
                hint = "the kernel refused; `dmesg | tail` shows the driver's reason"
            raise HostDeviceError(f"writing {value.strip()!r} to {path} failed: "
                                  f"{e.strerror or e}", hint=hint) from e


def _check_copy_file(value: str, path: Path, real: Path) -> None:
    """As root, a file of a copy's tree (``--root``) is written only when nobody else can
    have chosen or swapped it: every folder above ``path`` and above where it leads
    (``real``), each link on the way and the file are root's (or the sudo user's), writable by
    nobody else (a sticky folder such as /tmp above the tree aside), and it is a regular file.
    Otherwise another user who owns the copy, or can write a folder of it, links it to a file
    of root's (at the last moment, past the check that it leads inside the tree) and root
    overwrites that. Not root: nothing to check."""
    if os.geteuid() != 0:
        return
    uids = invoking_uids()
    try:
        check_ancestors(path, uids)
        check_ancestors(real, uids)
        link, st = os.lstat(path), os.lstat(real)
    except UnsafePathError as e:
        problem = e.finding
    except OSError:
        return  # (no such file: the write fails, saying so; it never creates one)
    else:
        problem = (f"the link {path} is owned by uid {link.st_uid}"
                   if stat.S_ISLNK(link.st_mode) and link.st_uid not in uids else
                   f"{real} is not a regular file" if not stat.S_ISREG(st.st_mode) else
                   f"{real} is owned by uid {st.st_uid}" if st.st_uid not in uids else
                   f"{real} is writable by others (mode {st.st_mode & 0o7777:o})"
                   if st.st_mode & 0o022 else "")
    if problem:
        raise HostDeviceError(f"refusing to write {value.strip()!r} as root into a copy of a "
                              f"host's tree: {problem}, so another user could choose what "
                              "root overwrites",
                              hint="keep the copy (--root) in a folder only root (or you) can "
                                   "write: chown -R root it and chmod -R go-w it")
