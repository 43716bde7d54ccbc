"""Which host devices the host itself needs, so that a run never takes them.

A device is *critical* when it is on the sysfs path of:

* a block device behind a mounted filesystem or an active swap (``root/proc/self/mountinfo``
  or ``root/proc/mounts``, and ``root/proc/swaps``), through device-mapper/md ``slaves``;
* the interface of a default route (``root/proc/net/route``, ``ipv6_route``), through
  bridge/bond/VLAN ``lower_*`` links;
* the interface that carries an SSH session: the peer of ``$SSH_CONNECTION`` and of every
  established TCP connection to local port 22 (``root/proc/net/tcp``, ``tcp6``), routed through
  the routing table.

Critical devices are named by their sysfs names: PCI functions (``0000:02:00.0``, every function
on the path, so a USB NIC makes its USB controller critical) and USB devices (``3-1``).
:func:`unmapped_filesystems` names the local filesystems whose disks cannot be told (ZFS).

:func:`plan_group` applies this to an IOMMU group: which members must move to vfio-pci, which
stay, and why taking the group would hurt the host. Binding, discovery and doctor all use it.

    >>> critical_devices("/", ssh_connection="")          # doctest: +SKIP
    {'0000:00:17.0': ['backs / (/dev/sda2)'],
     '0000:02:00.0': ['carries the default route (enp2s0)']}
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import struct
from pathlib import Path
from typing import NamedTuple

from .sysfs import PciDevice, Sysfs, bdfs_in_path, parse_bdf, usb_devices_in_path

#: Mounts that never sit on a device of their own.
_NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "ceph", "glusterfs", "9p", "virtiofs"}
#: Local filesystems on pools whose disks sysfs does not link to the mount.
_POOL_FS = {"zfs"}


def critical_devices(root: "str | Path | Sysfs" = "/", *,
                     ssh_connection: str | None = None) -> dict[str, list[str]]:
    """Every device the host needs -> the reasons (one line each).

    ``ssh_connection`` is ``$SSH_CONNECTION`` ("client port server port"); None reads the
    environment, "" means none."""
    fs = Sysfs.of(root)
    if ssh_connection is None:
        ssh_connection = os.environ.get("SSH_CONNECTION", "")
    out: dict[str, list[str]] = {}

    def mark(sysfs_path: str, reason: str) -> None:
        for name in bdfs_in_path(sysfs_path) + usb_devices_in_path(sysfs_path):
            if reason not in out.setdefault(name, []):
                out[name].append(reason)

    for mount in _local_mounts(fs):
        for path in _block_device_paths(fs, mount):
            mark(path, f"backs {mount.mountpoint} ({mount.source})")

    routes4, routes6 = _read_routes(fs)
    for iface in sorted({r.iface for r in routes4 + routes6 if r.prefixlen == 0}):
        for path in _interface_paths(fs, iface):
            mark(path, f"carries the default route ({iface})")

    for peer, why in _ssh_peers(fs, ssh_connection):
        iface = _route_lookup(peer, routes4, routes6)
        if iface:
            for path in _interface_paths(fs, iface):
                mark(path, f"carries the SSH session {why} ({iface})")
    return out


# -- mounts -------------------------------------------------------------------------------------


class _Mount(NamedTuple):
    source: str             # /dev/sda2, rpool/ROOT/debian
    mountpoint: str         # "swap" for a swap partition
    fstype: str
    majmin: str | None      # from mountinfo: resolves even /dev/root


def _local_mounts(fs: Sysfs) -> list[_Mount]:
    """Mounts of local filesystems (not proc, tmpfs, NFS...) and swap partitions."""
    out = []
    mountinfo = fs.read(fs.proc("self", "mountinfo"))
    if mountinfo is not None:
        for line in mountinfo.splitlines():
            head, _, tail = line.partition(" - ")
            fields, rest = head.split(), tail.split()
            if len(fields) >= 5 and len(rest) >= 2:
                out.append(_Mount(_unescape(rest[1]), _unescape(fields[4]), rest[0], fields[2]))
    else:
        for line in (fs.read(fs.proc("mounts")) or "").splitlines():
            fields = line.split()
            if len(fields) >= 3:
                out.append(_Mount(_unescape(fields[0]), _unescape(fields[1]), fields[2], None))
    for line in (fs.read(fs.proc("swaps")) or "").splitlines()[1:]:
        fields = line.split()
        if fields and fields[0].startswith("/dev/"):
            out.append(_Mount(_unescape(fields[0]), "swap", "swap", None))
    return [m for m in out if m.fstype in _POOL_FS or
            (m.source.startswith("/dev/") and m.fstype not in _NETWORK_FS)]


def unmapped_filesystems(root: "str | Path | Sysfs" = "/") -> list[str]:
    """Local filesystems whose disks sysfs does not name (ZFS pools; a device that does not
    resolve), as "mountpoint (source, fstype)": the host needs them, the harness cannot tell
    which controller holds them."""
    fs = Sysfs.of(root)
    return [f"{m.mountpoint} ({m.source}, {m.fstype})" for m in _local_mounts(fs)
            if not _block_device_paths(fs, m)]


def _unescape(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _block_name(fs: Sysfs, source: str) -> str | None:
    """The sysfs block name of a /dev path (``/dev/mapper/vg-root`` -> ``dm-0``)."""
    name = source[len("/dev/"):]
    dev = fs.path("dev", name)
    if dev.is_symlink():  # /dev/mapper/x, /dev/disk/by-uuid/y -> ../dm-0, ../../sda2
        name = os.path.basename(os.path.realpath(dev))
    name = name.rsplit("/", 1)[-1]
    if fs.sys("class", "block", name).exists():
        return name
    if source.startswith("/dev/mapper/"):  # no /dev under root: look the dm name up
        wanted = source[len("/dev/mapper/"):]
        for dm in sorted(fs.sys("class", "block").glob("dm-*")):
            if fs.read(dm / "dm" / "name") == wanted:
                return dm.name
    return None


def _block_device_paths(fs: Sysfs, mount: _Mount) -> list[str]:
    if mount.fstype in _POOL_FS:
        return []
    name = _block_name(fs, mount.source)
    if name is None and mount.majmin and fs.sys("dev", "block", mount.majmin).exists():
        name = os.path.basename(os.path.realpath(fs.sys("dev", "block", mount.majmin)))
    if name is None:
        return []
    names = [name]
    if mount.fstype == "btrfs":  # a multi-device btrfs shows one of its devices in mounts
        for devices in fs.sys("fs", "btrfs").glob("*/devices"):
            members = sorted(p.name for p in devices.iterdir())
            if name in members:
                names = members
    seen: set[str] = set()
    return [path for n in names for path in _block_paths_of(fs, n, seen)]


def _block_paths_of(fs: Sysfs, name: str, seen: set[str]) -> list[str]:
    if name in seen:
        return []
    seen.add(name)
    path = os.path.realpath(fs.sys("class", "block", name))
    paths = [path]
    # device-mapper and md devices: their components are in slaves/ (of the disk, for a partition)
    for slaves in (Path(path, "slaves"), Path(path).parent / "slaves"):
        if slaves.is_dir():
            for slave in sorted(slaves.iterdir()):
                paths += _block_paths_of(fs, slave.name, seen)
    return paths


# -- network ------------------------------------------------------------------------------------


class _Route(NamedTuple):
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    prefixlen: int
    metric: int
    iface: str


def _read_routes(fs: Sysfs) -> tuple[list[_Route], list[_Route]]:
    v4, v6 = [], []
    for line in (fs.read(fs.proc("net", "route")) or "").splitlines()[1:]:
        f = line.split()
        if len(f) < 8:
            continue
        iface, dest, flags = f[0], int(f[1], 16), int(f[3], 16)
        metric, mask = int(f[6]), int(f[7], 16)
        if not flags & 0x1 or flags & 0x200:  # RTF_UP, RTF_REJECT
            continue
        net = ipaddress.IPv4Address(struct.pack("<I", dest))
        prefix = bin(mask).count("1")
        v4.append(_Route(ipaddress.IPv4Network(f"{net}/{prefix}", strict=False), prefix, metric,
                         iface))
    for line in (fs.read(fs.proc("net", "ipv6_route")) or "").splitlines():
        f = line.split()
        if len(f) < 10 or f[9] == "lo":
            continue
        flags = int(f[8], 16)
        if not flags & 0x1 or flags & 0x200:
            continue
        prefix = int(f[1], 16)
        net = ipaddress.IPv6Address(bytes.fromhex(f[0]))
        v6.append(_Route(ipaddress.IPv6Network(f"{net}/{prefix}", strict=False), prefix,
                         int(f[5], 16), f[9]))
    return v4, v6


def _route_lookup(addr, routes4: list[_Route], routes6: list[_Route]) -> str | None:
    """The interface the kernel would send to ``addr`` through (longest prefix, then metric)."""
    routes = routes4 if addr.version == 4 else routes6
    best = None
    for r in routes:
        if addr in r.network and (best is None or (r.prefixlen, -r.metric) >
                                  (best.prefixlen, -best.metric)):
            best = r
    return best.iface if best else None


def _interface_paths(fs: Sysfs, iface: str, seen: set[str] | None = None) -> list[str]:
    """Resolved sysfs paths of an interface and, for bridges/bonds/VLANs, its lower devices."""
    seen = set() if seen is None else seen
    if iface in seen:
        return []
    seen.add(iface)
    link = fs.sys("class", "net", iface)
    if not link.exists():
        return []
    paths = [os.path.realpath(link)]
    for lower in sorted(link.glob("lower_*")):
        paths += _interface_paths(fs, os.path.basename(os.path.realpath(lower)), seen)
    return paths


def _ssh_peers(fs: Sysfs, ssh_connection: str):
    """(peer address, description) of this SSH session and every established SSH connection."""
    seen = set()
    fields = ssh_connection.split()
    ports = {22}
    if len(fields) == 4:
        try:
            peer = _plain(ipaddress.ip_address(fields[0].split("%")[0]))
            ports.add(int(fields[3]))
            seen.add(peer)
            yield peer, f"from {peer} ($SSH_CONNECTION)"
        except ValueError:
            pass
    for name in ("tcp", "tcp6"):
        for line in (fs.read(fs.proc("net", name)) or "").splitlines()[1:]:
            f = line.split()
            if len(f) < 4 or f[3] != "01":  # ESTABLISHED
                continue
            local, remote = _hex_endpoint(f[1]), _hex_endpoint(f[2])
            if local and remote and local[1] in ports and remote[0] not in seen:
                seen.add(remote[0])
                yield remote[0], f"from {remote[0]}"


def _hex_endpoint(text: str):
    try:
        addr_hex, port_hex = text.split(":")
        raw = bytes.fromhex(addr_hex)
        # /proc/net/tcp{,6}: the address as 32-bit words in host (little-endian) order.
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
        return _plain(ipaddress.ip_address(raw)), int(port_hex, 16)
    except ValueError:
        return None


def _plain(addr):
    """An IPv4-mapped IPv6 address as the IPv4 address it is."""
    return (addr.ipv4_mapped or addr) if addr.version == 6 else addr


# -- IOMMU groups -------------------------------------------------------------------------------

#: Drivers the kernel accepts in a viable vfio group besides vfio-pci itself.
_VIABLE_DRIVERS = {"vfio-pci", "pci-stub"}


@dataclasses.dataclass(frozen=True)
class GroupPlan:
    """What taking ``target`` means: its IOMMU group, which members must move to vfio-pci, which
    stay where they are (and why), and the problems that make it unsafe (empty when safe)."""

    target: PciDevice
    group: int | None
    members: tuple[PciDevice, ...]
    to_move: tuple[PciDevice, ...]
    kept: tuple[tuple[PciDevice, str], ...]
    problems: tuple[str, ...]

    @property
    def safe(self) -> bool:
        return not self.problems


def plan_group(root: "str | Path | Sysfs", bdf: str,
               critical: dict[str, list[str]], allowed: "set[str] | None" = None) -> GroupPlan:
    """Plan taking ``bdf`` (which must exist) the way the kernel's vfio sees its group: every
    normal-header function must be on vfio-pci, pci-stub or no driver; bridges stay on their
    driver. ``critical`` comes from :func:`critical_devices`. ``allowed``: the inventory's
    allow-list (devices and companions); a member that would have to move and is not on it is
    a problem (None: no allow-list, as for `discover`, which drafts one)."""
    fs = Sysfs.of(root)
    target = fs.pci_device(bdf)
    bdf = target.bdf
    problems = [f"{bdf} {why}" for why in critical.get(bdf, [])]
    if target.kernel_bridge:
        problems.append(f"{bdf} ({target.class_name}) is a bridge: vfio-pci takes only "
                        f"endpoint functions")
    if target.iommu_group is None:
        problems.append(f"{bdf} has no iommu_group: no IOMMU, or it is not enabled (VT-d in the "
                        f"firmware, intel_iommu=on)")
        return GroupPlan(target, None, (target,), (), (), tuple(problems))
    group = target.iommu_group
    members = tuple(fs.pci_device(m) if m != bdf else target
                    for m in fs.iommu_group_members(group) or [bdf])
    to_move, kept = [], []
    for m in members:
        if m.bdf == bdf:
            if m.driver != "vfio-pci" and not m.kernel_bridge:
                to_move.append(m)
        elif m.kernel_bridge:
            kept.append((m, f"{m.class_name}: stays on {m.driver or 'no driver'}, as vfio allows"))
        elif m.driver is None or m.driver in _VIABLE_DRIVERS:
            kept.append((m, f"on {m.driver or 'no driver'}, which vfio accepts"))
        else:
            to_move.append(m)
        if m.bdf != bdf and m.class_code >> 8 == 0x0600:
            problems.append(f"group {group} holds the host bridge {m.bdf}: the device is not "
                            f"isolated (no ACS there); use a slot with its own IOMMU group")
    listed = {parse_bdf(a) for a in allowed} if allowed is not None else None
    for m in to_move:
        if m.bdf == bdf:
            continue
        problems += [f"group {group} member {m.bdf} ({m.class_name}, {m.driver}) {why}"
                     for why in critical.get(m.bdf, [])]
        if listed is not None and m.bdf not in listed:
            problems.append(f"group {group} member {m.bdf} ({m.class_name}, {m.driver}) would "
                            "have to move to vfio-pci too and is not in the inventory (list it "
                            f"as a companion of {bdf} if the host can spare it)")
        if m.normal_header_bridge and m.class_code >> 8 != 0x0600:
            problems.append(f"group {group} member {m.bdf} ({m.class_name}, {m.driver}) would "
                            f"have to leave the host for vfio-pci too")
    return GroupPlan(target, group, members, tuple(to_move), tuple(kept), tuple(problems))
