"""Which host devices the host itself needs, so that a run never takes them.

A device is *critical* when it is on the sysfs path of:

* a block device behind a mounted filesystem or an active swap (``root/proc/self/mountinfo``
  or ``root/proc/mounts``, and ``root/proc/swaps``), through device-mapper/md ``slaves``; and
  when a local filesystem maps to no disk (a ZFS pool), every storage controller the inventory
  does not clear by name (``no_host_filesystems = true``);
* an interface the host needs (harness/host/network.py): a default route in any routing table,
  a routing rule's output device, an established TCP connection (SSH, a CI agent, NFS, iSCSI,
  NBD, Ceph), a network filesystem's server, an iSCSI session; resolved to the physical
  devices under bridges, bonds, VLANs, macvlans and tunnels, failing closed for a VPN whose
  endpoint cannot be read.

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
import os
import re
from pathlib import Path
from typing import NamedTuple

from harness.host import network
from harness.host.sriov import physfn_of
from harness.host.sysfs import PciDevice, Sysfs, bdfs_in_path, parse_bdf, usb_devices_in_path

#: Mounts that never sit on a device of their own.
_NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "ceph", "glusterfs", "9p", "virtiofs"}
#: Local filesystems on pools whose disks sysfs does not link to the mount.
_POOL_FS = {"zfs"}


def critical_devices(root: "str | Path | Sysfs" = "/", *, ssh_connection: str | None = None,
                     cleared_storage: "set[str] | frozenset[str]" = frozenset()
                     ) -> dict[str, list[str]]:
    """Every device the host needs -> the reasons (one line each).

    ``ssh_connection`` is ``$SSH_CONNECTION`` ("client port server port"); None reads the
    environment, "" means none. ``cleared_storage``: storage controllers the inventory says
    hold no host filesystem (``no_host_filesystems = true``), which a filesystem that maps to
    no controller (ZFS) does not make critical."""
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
    _storage_of_unmapped_filesystems(fs, cleared_storage, out)
    needed, net = network.needed_interfaces(fs, ssh_connection)
    for iface, reasons in sorted(needed.items()):
        paths, how = network.physical_paths(fs, net, iface)
        for path in paths:
            for why in reasons:
                mark(path, f"{why} ({iface}{how})")
    return out


def _storage_of_unmapped_filesystems(fs: Sysfs, cleared: "set[str] | frozenset[str]",
                                     out: dict[str, list[str]]) -> None:
    """A filesystem whose disks sysfs does not name (a ZFS pool) may be on any storage
    controller: every one is critical, unless the inventory clears it by name."""
    unmapped = unmapped_filesystems(fs)
    if not unmapped:
        return
    cleared = {parse_bdf(b) for b in cleared}
    for bdf in fs.pci_addresses():
        dev = fs.pci_device(bdf)
        if dev.class_code >> 16 == 0x01 and bdf not in cleared:
            out.setdefault(bdf, []).append(
                f"may hold {'; '.join(unmapped)}: the harness cannot tell which controller "
                "does (if this one does not, say so in its inventory entry: "
                "no_host_filesystems = true)")


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
    pf = physfn_of(fs, bdf)
    if pf and pf in {m.bdf for m in members}:
        problems.append(f"group {group} holds {bdf}'s own physical function {pf}: the PF (and "
                        "every VF beside it) would leave the host with the VF; use a PF whose "
                        "VFs get IOMMU groups of their own (ACS)")
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
