"""Pure parsers of the tool output the guide checks with: guest ``lspci -nn``/``-k``, ``lsusb``,
``fdisk -l``, ``ip -j``, and the monitor's ``info pci`` / ``info usb``.

Each takes text and returns plain data; each is unit-tested on real captured output
(``tests/unit/data/``).
"""

from __future__ import annotations

import dataclasses
import json
import re


@dataclasses.dataclass(frozen=True)
class LspciEntry:
    slot: str          # "00:1f.2" or "0000:00:1f.2" (as printed)
    class_name: str    # "SATA controller"
    class_id: str      # "0106"
    description: str   # "Intel Corporation 82801IR/IO/IH ... [AHCI mode]"
    vendor: str        # "8086"
    device: str        # "2922"

    @property
    def ids(self) -> str:
        return f"{self.vendor}:{self.device}"


_LSPCI_NN = re.compile(
    r"^(?P<slot>(?:[0-9a-f]{4}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])\s+(?P<cls>.+?)\s+\[(?P<cid>[0-9a-f]{4})\]:\s+"
    r"(?P<desc>.*?)\s*\[(?P<ven>[0-9a-f]{4}):(?P<dev>[0-9a-f]{4})\](?:\s+\(rev [0-9a-f]+\))?"
    r"(?:\s+\(prog-if [^)]*\))?\s*$")


def parse_lspci_nn(text: str) -> list[LspciEntry]:
    """``lspci -nn`` (optionally ``-D``) lines; indented ``-k``/``-v`` detail lines are skipped."""
    out = []
    for line in text.splitlines():
        m = _LSPCI_NN.match(line.rstrip())
        if m:
            out.append(LspciEntry(m["slot"], m["cls"], m["cid"], m["desc"], m["ven"], m["dev"]))
    return out


def parse_lspci_k(text: str) -> dict[str, dict[str, str]]:
    """``lspci -k`` (any of -nn/-D/-s): slot -> {"driver": ..., "modules": ..., "line": ...}."""
    out: dict[str, dict[str, str]] = {}
    current = None
    for line in text.splitlines():
        if line and not line[0].isspace():
            current = line.split(" ", 1)[0]
            out[current] = {"line": line.strip()}
        elif current is not None:
            m = re.match(r"\s+Kernel (driver in use|modules):\s*(.*)$", line)
            if m:
                out[current]["driver" if m[1].startswith("driver") else "modules"] = m[2].strip()
    return out


@dataclasses.dataclass(frozen=True)
class LsusbEntry:
    bus: int
    device: int
    vendor: str
    product: str
    name: str

    @property
    def ids(self) -> str:
        return f"{self.vendor}:{self.product}"


_LSUSB = re.compile(r"^Bus (\d+) Device (\d+): ID ([0-9a-f]{4}):([0-9a-f]{4})\s?(.*)$")


def parse_lsusb(text: str) -> list[LsusbEntry]:
    out = []
    for line in text.splitlines():
        m = _LSUSB.match(line.strip())
        if m:
            out.append(LsusbEntry(int(m[1]), int(m[2]), m[3], m[4], m[5].strip()))
    return out


@dataclasses.dataclass(frozen=True)
class InfoPciEntry:
    bus: int
    device: int
    function: int
    class_name: str    # "Ethernet controller"
    ids: str           # "8086:10d3"
    qdev_id: str       # "nic0", "" for unnamed


_INFO_PCI_HEAD = re.compile(r"^\s*Bus\s+(\d+), device\s+(\d+), function (\d+):\s*$")
_INFO_PCI_CLASS = re.compile(r"^\s*(.+?): PCI device ([0-9a-f]{4}:[0-9a-f]{4})\s*$")
_INFO_PCI_ID = re.compile(r'^\s*id "(.*)"\s*$')


def parse_info_pci(text: str) -> list[InfoPciEntry]:
    """HMP ``info pci``: one entry per function, with its qdev ``id``."""
    out: list[InfoPciEntry] = []
    head = cls = None
    for line in text.splitlines():
        if m := _INFO_PCI_HEAD.match(line):
            head, cls = (int(m[1]), int(m[2]), int(m[3])), None
        elif head and cls is None and (m := _INFO_PCI_CLASS.match(line)):
            cls = (m[1], m[2])
        elif head and cls and (m := _INFO_PCI_ID.match(line)):
            out.append(InfoPciEntry(*head, cls[0], cls[1], m[1]))
            head = cls = None
    return out


@dataclasses.dataclass(frozen=True)
class InfoUsbEntry:
    address: str   # "0.2"
    port: str
    speed: str     # "12 Mb/s"
    product: str
    qdev_id: str


_INFO_USB = re.compile(r"^\s*Device (\S+), Port (\S+), Speed ([^,]+), Product (.*?)(?:, ID: (\S*))?\s*$")


def parse_info_usb(text: str) -> list[InfoUsbEntry]:
    """HMP ``info usb`` (the ``ID:`` field appeared in QEMU 5.x; older output has none)."""
    out = []
    for line in text.splitlines():
        m = _INFO_USB.match(line)
        if m:
            out.append(InfoUsbEntry(m[1], m[2], m[3].strip(), m[4], m[5] or ""))
    return out


@dataclasses.dataclass(frozen=True)
class FdiskDisk:
    device: str    # "/dev/sda"
    size_bytes: int
    sectors: int


_FDISK_DISK = re.compile(r"^Disk (/dev/\S+): .*?, (\d+) bytes, (\d+) sectors", re.M)
_FDISK_DISK_OLD = re.compile(r"^Disk (/dev/\S+): .*?, (\d+) bytes\s*$", re.M)


def parse_fdisk_l(text: str) -> list[FdiskDisk]:
    """``fdisk -l``: util-linux (``..., N bytes, M sectors``) and the guide's older form."""
    disks = [FdiskDisk(m[1], int(m[2]), int(m[3])) for m in _FDISK_DISK.finditer(text)]
    seen = {d.device for d in disks}
    for m in _FDISK_DISK_OLD.finditer(text):
        if m[1] not in seen:
            disks.append(FdiskDisk(m[1], int(m[2]), int(m[2]) // 512))
    return disks


@dataclasses.dataclass(frozen=True)
class ScsiHost:
    """A SCSI host of the guest (``/sys/class/scsi_host/hostN``): its driver, the sysfs path of
    the device it hangs off, and how many targets were found on it."""
    name: str        # "host2"
    driver: str      # its proc_name: "virtio_scsi", "ahci", "usb-storage"
    path: str        # /sys/devices/pci0000:00/0000:00:02.1/0000:02:00.0/virtio3/host2
    targets: int

    def behind(self, address: str) -> bool:
        """Whether the host hangs off the PCI function ``address`` (the guest's ``02:00.0``)."""
        return any(part.endswith(f":{address}") for part in self.path.split("/"))


#: One line per SCSI host: ``name proc_name path target-count`` (parsed by parse_scsi_hosts).
SCSI_HOSTS = ("for h in /sys/class/scsi_host/host*; do [ -e \"$h\" ] || continue; "
              "p=$(readlink -f \"$h/device\"); "
              "echo \"${h##*/}\" \"$(cat \"$h/proc_name\")\" \"$p\" "
              "\"$(ls -d \"$p\"/target* 2>/dev/null | wc -l)\"; done")


def parse_scsi_hosts(text: str) -> list[ScsiHost]:
    """The output of :data:`SCSI_HOSTS`; a line cut mid-removal (fewer fields) is left out."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and re.fullmatch(r"host\d+", parts[0]) and parts[3].isdigit():
            out.append(ScsiHost(parts[0], parts[1], parts[2], int(parts[3])))
    return out


def ipv4_addresses(ip_j_addr: str) -> dict[str, list[str]]:
    """``ip -j addr``: interface -> its IPv4 addresses with prefix (``10.0.3.15/24``)."""
    out: dict[str, list[str]] = {}
    for link in json.loads(ip_j_addr or "[]"):
        out[link["ifname"]] = [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                               if a.get("family") == "inet"]
    return out


def default_gateways(ip_j_route: str) -> dict[str, str]:
    """``ip -j route``: interface -> gateway of its default route."""
    out: dict[str, str] = {}
    for r in json.loads(ip_j_route or "[]"):
        if r.get("dst") == "default" and "gateway" in r:
            out.setdefault(r["dev"], r["gateway"])
    return out


def parse_events(text: str) -> list[tuple[float, list[str]]]:
    """The built-in guest's /run/hh/events log: ``<uptime> <word> <word>...`` per line."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            try:
                out.append((float(parts[0]), parts[1:]))
            except ValueError:
                continue
    return out


def meminfo_kb(text: str) -> dict[str, int]:
    """/proc/meminfo: field -> kB."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+):\s+(\d+)", line)
        if m:
            out[m[1]] = int(m[2])
    return out


@dataclasses.dataclass(frozen=True)
class NetLink:
    """A network interface as sysfs describes it at one moment: its name (which udev may change
    at any time), its MAC, the PCI function behind it, its driver and its lower interfaces (a
    net_failover master's standby and primary)."""

    name: str
    mac: str
    pci: str | None            # "0000:01:00.0" (a virtio NIC's PCI function, not virtio0)
    driver: str | None         # "virtio_net", "e1000e"
    lowers: tuple[str, ...] = ()


_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def parse_net_links(text: str) -> list[NetLink]:
    """Lines of ``<name> <mac> <device path|-> <driver|-> [lower...]``
    (:data:`harness.guest.checks.NET_LINKS`). The PCI function is the last PCI address in the
    device's path: a virtio NIC's device is ``.../0000:00:03.0/virtio0``."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        name, mac, path, driver, *lowers = parts
        pci = next((c for c in reversed(path.split("/")) if _PCI_ADDRESS.match(c)), None)
        out.append(NetLink(name, mac.lower(), pci, None if driver == "-" else driver,
                           tuple(lowers)))
    return out


def interface_of(links: list[NetLink], mac: str | None, pci: str | None) -> NetLink | None:
    """The interface that carries a NIC's traffic, found by what QEMU gave the NIC (its MAC, its
    PCI function ``bb:ss.f``), never by name: the one with the MAC that is no other interface's
    lower (a failover pair's master, not its standby or primary), else the one at the PCI
    function. None while there is none, or no single one."""
    lowers = {name for link in links for name in link.lowers}
    tops = [n for n in links if n.name not in lowers]
    if mac:
        found = [n for n in tops if n.mac == mac.lower()]
        if len(found) > 1 and pci:
            found = [n for n in found if n.pci and n.pci.endswith(pci)]
    else:
        found = [n for n in tops if pci and n.pci and n.pci.endswith(pci)]
    return found[0] if len(found) == 1 else None


@dataclasses.dataclass(frozen=True)
class MemoryBlock:
    """A memory block in /sys/devices/system/memory, as its ``state`` and ``valid_zones`` say."""

    name: str                # "memory32"
    state: str               # "online", "offline", "going-offline"
    zones: tuple[str, ...]   # offline: where it may go ("Normal", "Movable"); online: its zone

    @property
    def zone(self) -> str:
        """The zone an online block is in ("Movable", "Normal"; "none" when it spans several)."""
        return self.zones[0] if self.state == "online" and self.zones else "?"


def parse_memory_blocks(text: str) -> list[MemoryBlock]:
    """Lines of ``<block> <state> <valid_zones...>`` (:data:`harness.guest.checks.MEMORY_BLOCKS`)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and re.fullmatch(r"memory\d+", parts[0]):
            out.append(MemoryBlock(parts[0], parts[1], tuple(parts[2:])))
    return out


#: Milestones of a boot on the serial console, latest first: (what it means, pattern).
_BOOT_STAGES = (
    ("a login prompt or shell on the console", re.compile(r"(?m)( login: ?$|[#$] ?$|hh: ready)")),
    ("userspace: systemd or the init reached its services",
     re.compile(r"(Reached target|Started |systemd\[1\]|hh: init)")),
    ("init: the kernel started the first process", re.compile(r"(Run /\S*init|Freeing unused kernel)")),
    ("the kernel: it printed its banner", re.compile(r"Linux version \d")),
    ("the firmware", re.compile(r"(SeaBIOS|iPXE|Booting from)")),
)


def boot_stage(console: str) -> str:
    """How far a boot got, from what its serial console showed: the latest milestone seen."""
    if not console.strip():
        return "nothing on the serial console (is console=ttyS0 on the kernel command line?)"
    for what, pattern in _BOOT_STAGES:
        if pattern.search(console):
            return what
    return "some console output, but no kernel banner (see the serial log)"



#: Daemons that configure a new interface by themselves, by their process name (``comm``:
#: systemd-networkd's is cut to 15 characters).
NETWORK_DAEMONS = ("systemd-network", "NetworkManager", "dhcpcd", "connmand", "wickedd")


def network_stacks(text: str, ifname: str) -> tuple[list[str], str]:
    """What the guest could use to configure a new interface ``ifname`` by itself, from
    checks.NETWORK_STACKS's output: (the stacks that may act, what was read). An empty list is
    proof that none will: the guest's network is ifupdown, which does not name the interface
    for hotplug, and nothing else that configures interfaces runs or is wired to udev. Anything
    not recognised (no ifupdown, a list that could not be read) leaves the guest its chance."""
    may, processes, hotplug = [], set(), None
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "process":
            processes.add(rest.strip())
        elif kind == "rule":
            may.append(f"the udev rule {rest.strip()} may start DHCP")
        elif kind == "ifupdown-hotplug":
            hotplug = rest.split()
        elif kind == "ifupdown-unreadable":
            may.append("ifupdown's hotplug list could not be read (ifquery failed)")
    may[:0] = [f"{d} runs" for d in NETWORK_DAEMONS if d in processes]
    if hotplug is None and not may:
        may.append("no ifupdown (ifquery) in the guest: what configures its NICs is unknown")
    elif hotplug is not None and ifname in hotplug:
        may.append(f"ifupdown lists {ifname} for hotplug")
    if may:
        return may, "; ".join(may)
    return [], (f"ifupdown lists {' '.join(hotplug) or 'nothing'} for hotplug, no "
                f"{'/'.join(NETWORK_DAEMONS)} process runs, no udev rule starts DHCP")
