"""Binding host PCI devices to vfio-pci, and giving them back, without ever losing one.

The guide's ``vfio-pci.sh`` (unbind, ``new_id``) done safely:

* :meth:`VfioBinder.bind` refuses, before any write, a device not in the inventory, a device the
  host needs (:mod:`.safety`), a device without IOMMU group, a group with such a member.
* It then writes a journal entry per device it is about to move (its original driver and
  ``driver_override``), fsyncs it, and only then moves the devices: ``driver_override=vfio-pci``,
  unbind, ``drivers_probe``, and checks the ``driver`` link. A group it holds with nothing to
  move (on vfio-pci from boot) is journaled too (``hold``), and so is its reliance on a VF's PF.
* :meth:`Lease.release` moves them back and drops their entries. A run killed in between
  leaves the entries; :func:`restore_from_journal` (``python -m harness restore``, and every
  session start) finishes the job from whatever step the run reached.

    >>> binder = VfioBinder("/", journal=default_journal_path())          # doctest: +SKIP
    >>> with binder.bind("05:00.0", allowed=inventory.pci_addresses()) as lease:
    ...     ...  # device_add vfio-pci,host=0000:05:00.0
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fnmatch
import json
import logging
import os
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path

from harness.core.errors import HarnessError, HostDeviceError, WaitTimeout
from harness.core.waits import wait_until
from harness.core.locks import flock_within
from harness.core.paths import UnsafePathError, open_nofollow, private_dir, write_atomic
from harness.host.network import NetView, namespace_problem
from harness.host.safety import (GroupPlan, HostUsage, _driver_module, disks_below,
                                 network_uses, node_holders, nodes_below, plan_group,
                                 uses_below, vfs_removed)
from harness.host.storage import OpenFiles, StorageView
from harness.host import sriov
from harness.host.sysfs import (SYSFS_BDF, PciDevice, Sysfs, UsbDevice, bdfs_in_path,
                                parse_bdf, short_bdf)
from harness.qemu.process import start_time

log = logging.getLogger("harness.host")

VFIO = "vfio-pci"
#: The journal entry of a PF whose ``sriov_numvfs`` the harness changed (``numvfs``: what it was).
SRIOV = "sriov"
#: The journal entry of a function a lease holds that the harness did not move (on vfio-pci
#: from boot: ``vfio-pci.ids=``, ``driverctl``): nothing to give back, but the group is held.
HOLD = "hold"
#: Who moved a journaled device to vfio-pci instead of the harness (<hostdev managed='yes'>).
LIBVIRT = "libvirt"
#: The journal entry of a host USB device handed to QEMU's usb-host (``bdf``: its bus id,
#: ``4-1``): QEMU detaches each interface's host driver and binds it back only on a clean
#: close, so what the device was and each interface's driver before (:func:`_usb_entry`).
USB = "usb"
#: The driver a USB interface shows while a process (QEMU's usb-host) claims it through usbfs.
USBFS = "usbfs"
DEFAULT_JOURNAL = Path("/var/lib/hotplug-harness/vfio-journal.json")
RESTORE_HINT = "run `python -m harness restore` (as root) to give the devices back"


def default_journal_path() -> Path:
    """``$HH_VFIO_JOURNAL``, else /var/lib/hotplug-harness/vfio-journal.json."""
    return Path(os.environ.get("HH_VFIO_JOURNAL") or DEFAULT_JOURNAL)


# -- the journal --------------------------------------------------------------------------------


class Journal:
    """The devices moved to vfio-pci, and the USB devices handed to usb-host, not yet given
    back, as JSON on disk.

    Every change happens under an exclusive lock (pytest-xdist workers share one journal) and
    replaces the file atomically after an fsync, so a crash leaves either the old or the new
    list."""

    def __init__(self, path: str | Path, lock_timeout: float = 30.0):
        self.path = Path(path)
        self.lock_timeout = lock_timeout

    @contextlib.contextmanager
    def locked(self):
        lock_path = self.path.with_name(self.path.name + ".lock")
        self._private_folder()
        try:
            fd = open_nofollow(lock_path, os.O_RDWR | os.O_CREAT)
        except OSError as e:
            raise HostDeviceError(f"cannot create the vfio journal lock {lock_path}: {e.strerror}",
                                  hint="run as root, or set HH_VFIO_JOURNAL to a path in a "
                                       "folder only you can write") from e
        try:
            if not flock_within(fd, self.lock_timeout):
                raise HostDeviceError(
                    f"the vfio journal {self.path} stayed locked for {self.lock_timeout:.0f} s",
                    hint=f"another run is binding devices; `fuser {lock_path}` names it")
            yield self
        finally:
            os.close(fd)  # releases the lock

    def _private_folder(self) -> None:
        """The journal says which drivers to bind devices back to, as root: a folder anybody
        else can write to (its group included) would let them swap it, plant a symlink or a
        forged entry, and choose those drivers. The folder is made 0700, or refused."""
        try:
            private_dir(self.path.parent)
        except UnsafePathError as e:
            raise HostDeviceError(f"refusing the vfio journal {self.path}: {e.message}",
                                  details="what the harness writes as root must be in a folder "
                                          "nobody else can write: docs/vfio.md",
                                  hint="keep the journal in a folder only root can write, such "
                                       f"as the default {DEFAULT_JOURNAL.parent} (unset "
                                       "HH_VFIO_JOURNAL)") from e

    def read(self) -> list[dict]:
        if not self.path.parent.exists():
            return []
        self._private_folder()
        try:
            fd = open_nofollow(self.path, os.O_RDONLY)
            with os.fdopen(fd) as f:
                text = f.read()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise HostDeviceError(f"cannot read the vfio journal {self.path}: {e.strerror}",
                                  hint="run as root") from e
        try:
            entries = json.loads(text)["entries"] if text.strip() else []
            if not isinstance(entries, list):
                raise TypeError("entries is not a list")
            for n, entry in enumerate(entries, start=1):
                _check_entry(entry, n)
        except (ValueError, KeyError, TypeError) as e:
            raise HostDeviceError(f"the vfio journal {self.path} is corrupt: {e}",
                                  hint="read it, give the devices back by hand (driver_override, "
                                       "unbind, bind), then delete it") from e
        return entries

    def write(self, entries: list[dict]) -> None:
        """Replace the entries; each is checked first as :meth:`read` checks it, so the journal
        never holds what it could not read back (and give back)."""
        try:
            for n, entry in enumerate(entries, start=1):
                _check_entry(entry, n)
        except (ValueError, KeyError, TypeError) as e:
            raise HostDeviceError(f"refusing to write the vfio journal {self.path}: {e}",
                                  hint="nothing was written; this is a bug of the harness: "
                                       "report it with this message") from e
        data = json.dumps({"version": 1, "entries": entries}, indent=1) + "\n"
        try:
            write_atomic(self.path, data.encode())
        except OSError as e:
            raise HostDeviceError(f"cannot write the vfio journal {self.path}: {e.strerror}",
                                  hint="run as root, or set HH_VFIO_JOURNAL to a writable "
                                       "path") from e


_DRIVER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: What parse_bdf makes and sysfs names (a VMD domain has 5 digits: 10000:01:00.0).
_ENTRY_BDF = SYSFS_BDF


def _check_entry(entry, n: int) -> None:
    """An entry's values become sysfs path parts and values written as root: each must be what
    the harness itself writes, or the journal is refused (ValueError)."""
    if not isinstance(entry, dict):
        raise ValueError(f"entry {n} is not an object")
    if "boot" in entry and not (isinstance(entry["boot"], str) and
                                _BOOT_ID.fullmatch(entry["boot"])):
        raise ValueError(f"entry {n} ({entry.get('bdf')}): boot {entry['boot']!r} is not a "
                         "boot id")
    if entry.get("kind") == USB:
        _check_usb_entry(entry, n)
        return
    if not isinstance(entry.get("bdf"), str) or not _ENTRY_BDF.fullmatch(entry["bdf"]):
        raise ValueError(f"entry {n}: bdf {entry.get('bdf')!r} is not a PCI address like "
                         "0000:05:00.0")
    if entry.get("kind", "vfio") not in ("vfio", SRIOV, HOLD):
        raise ValueError(f"entry {n} ({entry['bdf']}): kind {entry.get('kind')!r} is not vfio, "
                         f"{SRIOV} or {HOLD}")
    numvfs = entry.get("numvfs")
    if entry.get("kind") == SRIOV and (not isinstance(numvfs, int) or isinstance(numvfs, bool)
                                       or not 0 <= numvfs <= 4096):
        raise ValueError(f"entry {n} ({entry['bdf']}): numvfs {numvfs!r} is not a VF count")
    made = entry.get("set")
    if made is not None and (not isinstance(made, int) or isinstance(made, bool)
                             or not 0 <= made <= 4096):
        raise ValueError(f"entry {n} ({entry['bdf']}): set {made!r} is not a VF count")
    if entry.get("kind") == SRIOV and entry.get("autoprobe", 1) not in (0, 1):
        raise ValueError(f"entry {n} ({entry['bdf']}): autoprobe {entry['autoprobe']!r} is "
                         "not 0 or 1")
    for key in ("driver", "driver_override"):
        value = entry.get(key)
        if value is not None and (not isinstance(value, str) or not _DRIVER_NAME.fullmatch(value)):
            raise ValueError(f"entry {n} ({entry['bdf']}): {key} {value!r} is not a driver name")
    if entry.get("method") not in (None, "driver_override", "new_id"):
        raise ValueError(f"entry {n} ({entry['bdf']}): method {entry.get('method')!r} is not "
                         "driver_override or new_id")
    ids = entry.get("ids")
    if ids is not None and (not isinstance(ids, str) or not re.fullmatch(r"[0-9a-f]{4} [0-9a-f]{4}", ids)):
        raise ValueError(f"entry {n} ({entry['bdf']}): ids {ids!r} is not 'vendor device'")
    if entry.get("moved_by") not in (None, LIBVIRT):
        raise ValueError(f"entry {n} ({entry['bdf']}): moved_by {entry.get('moved_by')!r} is "
                         f"not {LIBVIRT}")
    if not isinstance(entry.get("manual", False), bool):
        raise ValueError(f"entry {n} ({entry['bdf']}): manual {entry.get('manual')!r} is not "
                         "true or false")
    for key, optional in (("group", True), ("pid", False)):
        value = entry.get(key)
        if (value is None and optional) or (isinstance(value, int) and not isinstance(value, bool)):
            continue
        raise ValueError(f"entry {n} ({entry['bdf']}): {key} {value!r} is not a number")


_USB_NAME = re.compile(r"\d{1,3}-\d{1,3}(?:\.\d{1,3}){0,6}")
_USB_PATH_PART = re.compile(r"[A-Za-z0-9:._-]{1,64}")


def _check_usb_entry(entry: dict, n: int) -> None:
    """A usb-host entry's values name a sysfs folder, the interfaces bound and their drivers,
    all written as root: each must be what :func:`_usb_entry` writes."""
    name = entry.get("bdf")
    if not isinstance(name, str) or not _USB_NAME.fullmatch(name):
        raise ValueError(f"entry {n}: bdf {name!r} is not a USB device like 4-1.2")
    for key, top in (("busnum", 999), ("devnum", 999), ("pid", 1 << 31)):
        value = entry.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= top:
            raise ValueError(f"entry {n} ({name}): {key} {value!r} is not a number")
    if not isinstance(entry.get("ids"), str) or not re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{4}",
                                                                  entry["ids"]):
        raise ValueError(f"entry {n} ({name}): ids {entry.get('ids')!r} is not 'vvvv:pppp'")
    parts = str(entry.get("path")).split("/")
    if not isinstance(entry.get("path"), str) or parts[0] != "devices" or parts[-1] != name or \
            not all(_USB_PATH_PART.fullmatch(p) and p not in (".", "..") for p in parts):
        raise ValueError(f"entry {n} ({name}): path {entry.get('path')!r} is not its sysfs "
                         "folder under devices/")
    interfaces = entry.get("interfaces")
    if not isinstance(interfaces, dict) or not all(
            isinstance(i, str) and re.fullmatch(re.escape(name) + r":\d{1,3}\.\d{1,3}", i) and
            (d is None or (isinstance(d, str) and _DRIVER_NAME.fullmatch(d) and
                           d not in (".", "..")))
            for i, d in interfaces.items()):
        raise ValueError(f"entry {n} ({name}): interfaces {interfaces!r} are not its "
                         "interfaces with their drivers")


def _process_start(fs: Sysfs, pid: int) -> int | None:
    """The start time of ``pid`` in ``fs``'s /proc (:func:`start_time`)."""
    return start_time(fs.read(fs.proc(str(pid), "stat")))


_BOOT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def boot_id(fs: Sysfs) -> str | None:
    """This boot's id (/proc/sys/kernel/random/boot_id), or None if it cannot be read."""
    value = fs.read(fs.proc("sys", "kernel", "random", "boot_id"))
    return value.strip() if value and _BOOT_ID.fullmatch(value.strip()) else None


def _boot_time(fs: Sysfs) -> int | None:
    """When this boot began (``btime`` in /proc/stat, seconds since the epoch), or None."""
    for line in (fs.read(fs.proc("stat")) or "").splitlines():
        key, _, value = line.partition(" ")
        if key == "btime" and value.strip().isdigit():
            return int(value)
    return None


def _entry_time(entry: dict) -> float | None:
    """When the entry was written (its ``time``, with its zone), or None."""
    try:
        when = datetime.fromisoformat(entry.get("time"))
    except (TypeError, ValueError):
        return None
    return when.timestamp() if when.tzinfo is not None else None


def _of_another_boot(fs: Sysfs, entry: dict) -> str | None:
    """Why an entry is of an earlier boot (None: it is not, or that cannot be told): the
    journal is on disk, but every binding, ``driver_override``, VF count and hand-over its
    run wrote died with that boot (a host crash, a power cut), so what is at its address now
    is this boot's (a card put in the slot meanwhile, one pinned to vfio-pci for a VM by
    ``driverctl``): giving it back would write to a device the run never had. Its boot id
    is not this one's, or it has none (an entry older than the boot id) and its ``time`` is
    before ``btime``."""
    now = boot_id(fs)
    if entry.get("boot") and now:
        return None if entry["boot"] == now else (
            f"journaled by pid {entry.get('pid')} at {entry.get('time')} in another boot "
            f"({entry['boot']}; this is {now})")
    written, booted = _entry_time(entry), _boot_time(fs)
    if written is None or booted is None or written >= booted:
        return None
    return (f"journaled by pid {entry.get('pid')} at {entry.get('time')}, before this boot "
            f"({datetime.fromtimestamp(booted, timezone.utc).isoformat(timespec='seconds')})")


def _own(fs: Sysfs, entry: dict, pids=None) -> bool:
    """Whether ``entry`` was written by this process (or by one of ``pids``, the run's
    processes): its pid *and* its start time (``pid_start``, as :func:`_stamp` wrote it). A
    later process that got the pid of a `bind` by hand (its CLI ended, its lease did not) is
    not it; a bind by hand's entry without a start time is never taken for one's own."""
    pid = entry.get("pid")
    return pid in (pids if pids is not None else {os.getpid()}) and \
        entry.get("pid_start") == _process_start(fs, pid) and \
        not (entry.get("manual") and entry.get("pid_start") is None)


def owner_alive(fs: Sysfs, entry: dict) -> bool:
    """Whether the process that wrote a journal entry still runs (pid and start time match, in
    this boot: a start time counts from the boot, so another boot's may match by chance)."""
    if not fs.proc(str(entry.get("pid")), "stat").exists() or _of_another_boot(fs, entry):
        return False
    recorded = entry.get("pid_start")
    return recorded is None or _process_start(fs, entry["pid"]) == recorded


# -- moving devices -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Restored:
    """What happened to one journaled device. ``status``: ``restored`` (back on ``driver``),
    ``gone`` (no longer on the host, or another device at its address), ``stale`` (an entry
    of an earlier boot: nothing written), ``in-use`` (its run is alive: left alone),
    ``failed``."""

    bdf: str
    status: str
    driver: str | None
    detail: str

    def __str__(self) -> str:
        return f"{self.bdf}: {self.status}: {self.detail}"


def _wait_driver(fs: Sysfs, bdf: str, expected: str | None, timeout: float) -> None:
    """Wait until the device's driver link names ``expected`` (binding is synchronous in Linux;
    the deadline covers drivers that finish probing late)."""
    link = fs.pci_dir(bdf) / "driver"
    seen: list[str | None] = [None]

    def bound() -> bool:
        seen[0] = fs.link_name(link)
        return seen[0] == expected
    try:
        wait_until(f"{bdf} on {expected or 'no driver'}", bound, timeout, interval=0.02)
    except WaitTimeout as e:
        raise HostDeviceError(
            f"{bdf} is on {seen[0] or 'no driver'} after {timeout:g} s, not {expected or 'unbound'}",
            hint=f"`dmesg | tail` shows why {expected or 'the driver'} did not take it") from e


def move_steps(fs: Sysfs, dev: PciDevice) -> list[str]:
    """What :func:`_move_to_vfio` writes, as shell lines (``python -m harness plan``)."""
    d, vfio = fs.pci_dir(dev.bdf), fs.pci_driver_dir(VFIO)
    unbind = [f"echo {dev.bdf} > {fs.pci_driver_dir(dev.driver) / 'unbind'}"] if dev.driver else []
    if dev.has_driver_override:
        return [f"echo {VFIO} > {d / 'driver_override'}", *unbind,
                f"echo {dev.bdf} > {fs.sys('bus', 'pci', 'drivers_probe')}"]
    return [*unbind, f"echo '{dev.vendor} {dev.device}' > {vfio / 'new_id'}",
            f"echo {dev.bdf} > {vfio / 'bind'} (if new_id did not bind it)"]


def _move_to_vfio(fs: Sysfs, dev: PciDevice, timeout: float) -> None:
    d = fs.pci_dir(dev.bdf)
    vfio = fs.pci_driver_dir(VFIO)
    if dev.has_driver_override:
        fs.write(d / "driver_override", VFIO)
        if dev.driver:
            fs.write(fs.pci_driver_dir(dev.driver) / "unbind", dev.bdf)
        fs.write(fs.sys("bus", "pci", "drivers_probe"), dev.bdf)
    else:  # kernels before 3.16: teach vfio-pci the ids, which also probes unbound devices
        if dev.driver:
            fs.write(fs.pci_driver_dir(dev.driver) / "unbind", dev.bdf)
        try:
            fs.write(vfio / "new_id", f"{dev.vendor} {dev.device}")
        except HostDeviceError as e:
            if getattr(e.__cause__, "errno", None) != errno.EEXIST:
                raise
        if fs.link_name(d / "driver") != VFIO:
            fs.write(vfio / "bind", dev.bdf)
    _wait_driver(fs, dev.bdf, VFIO, timeout)


def _holders(fs: Sysfs, group: int | None, bdf: str | None = None
             ) -> tuple[str, str, str] | None:
    """Who holds /dev/vfio/<group> open, or a device node below ``bdf`` or below any other
    member of its group (vfio-pci's /dev/vfio/devices/vfioN, which a QEMU on iommufd opens
    instead of the group: a host driver on one member would share DMA with a guest that has
    another): (the node, "pid 4321 (qemu-system-x86)", what to do: "stop it (kill 4321)"), or
    None: a device in use is never touched. Open files that cannot be read count as a holder
    (fail closed)."""
    problems: list[str] = []
    opened = OpenFiles.read(fs, problems)
    held = [(f"/dev/vfio/{group}", opened.holders("char", f"vfio/{group}",
                                                  fs.vfio_group_dev(group)))] \
        if group is not None else []
    members = [bdf] if bdf is not None else []
    members += [m for m in (fs.iommu_group_members(group) if group is not None else [])
                if m not in members]
    for member in members:
        if not fs.pci_exists(member):
            continue
        for node, majmin in nodes_below(fs, fs.pci_device(member).path):
            name, users = node_holders(fs, opened, node, majmin)
            held.append((f"/dev/{name}", users))
    for node, users in held:
        if users:
            return (node, ", ".join(f"pid {pid} ({comm})" for pid, comm in users),
                    f"stop it (kill {users[0][0]})")
    by_fd = opened.vfio_device_users(fs, members) if group is not None else []
    if by_fd:  # the group's fd may be closed: a device fd holds the group all the same
        return (f"a vfio device fd of group {group}", ", ".join(by_fd),
                "stop it (kill " + by_fd[0].split()[1] + ")")
    if problems and held:
        return (held[0][0], f"a process the harness cannot see ({'; '.join(problems)})",
                "run as root in the host's PID namespace, or wait until that process is gone")
    return None


def _restore_sriov(fs: Sysfs, entry: dict, timeout: float, journaled: list[dict] = ()) -> Restored:
    """Put a PF's ``sriov_numvfs`` back to the count journaled before the harness changed it
    (its VFs' own entries, if any, are given back first: :func:`restore_from_journal`), unless
    a live run relies on the PF's VFs (``journaled``: the journal now): then it stays
    (``in-use``) and the entry with it, for the last run to let go."""
    pf, original = entry["bdf"], entry["numvfs"]
    stale = _stale(fs, entry)  # (its VFs and its count ended with its boot)
    if stale:
        return stale
    now = sriov.physical_function(fs, pf) if fs.pci_exists(pf) else None
    if now is None:
        return Restored(pf, "gone", None, "no longer on this host (or no longer SR-IOV); "
                                          "nothing to do")
    probe = entry.get("autoprobe")
    if now.numvfs == original:
        _restore_autoprobe(fs, pf, probe)
        return Restored(pf, "restored", now.driver, f"sriov_numvfs is {original} already")
    # A run that only relied on VFs that were there (enable_vfs found them, or it bound one)
    # changed nothing: the count is the run's that made them, to put back (or keep).
    if entry.get("set") is None and probe is None:
        return Restored(pf, "restored", now.driver, "let go of its VFs: this run changed "
                                                    f"nothing (sriov_numvfs is {now.numvfs})")
    relying = _live_users_of_vfs(fs, entry, now, journaled)
    if relying:
        return Restored(pf, "in-use", now.driver,
                        f"sriov_numvfs stays {now.numvfs}: {relying}; the last run to let go "
                        f"puts it back to {original}")
    busy = _vfs_not_idle(fs, entry, now)
    if busy:
        return Restored(pf, "failed", now.driver, busy)
    try:
        if original and now.numvfs:
            sriov.set_numvfs(fs, pf, 0, timeout)
        # (the switch first: VFs made again get the host's drivers, as before the harness)
        _restore_autoprobe(fs, pf, probe)
        sriov.set_numvfs(fs, pf, original, timeout)
    except HostDeviceError as e:
        return Restored(pf, "failed", now.driver, e.message)
    return Restored(pf, "restored", now.driver,
                    f"sriov_numvfs back to {original} (from {now.numvfs})"
                    + (f", sriov_drivers_autoprobe {probe}" if probe is not None else ""))


def _vfs_not_idle(fs: Sysfs, entry: dict, pf: "sriov.PhysicalFunction") -> str | None:
    """Why writing ``sriov_numvfs`` would disturb what someone uses (None: it would not): the
    count is not the one this run set (someone changed it, or the run set none), the PF
    itself is not proven idle (it stays on its host driver through the run, and may have
    come to carry host traffic since: the write resets it), or a VF is not proven idle (a
    QEMU holds its group, a host driver's interface is up...)."""
    made = entry.get("set")
    if pf.numvfs != made:
        return (f"sriov_numvfs is {pf.numvfs}, not the "
                + (f"{made} this run set" if made is not None else "count of this run (it set "
                   "none)") + ": someone else changed it, and its VFs may be theirs; left as it "
                f"is (once they are free, set it to {entry['numvfs']} by hand, then restore "
                "again)")
    for vf in pf.vfs:
        group = fs.pci_device(vf).iommu_group if fs.pci_exists(vf) else None
        held = _holders(fs, group, vf)
        if held:
            return (f"its VF {vf} is in use ({held[0]} open by {held[1]}); {held[2]}, "
                    "then restore again")
    usage = HostUsage.read(fs)
    for vf in pf.vfs:
        uses = usage.verdict(vf).uses if fs.pci_exists(vf) else ()
        if uses:
            return (f"its VF {vf} is not proven idle ({'; '.join(uses)}); sriov_numvfs stays "
                    f"{pf.numvfs}: free the VF, then restore again")
    uses = usage.verdict(pf.bdf).uses
    if uses:
        return (f"{pf.bdf} itself is not proven idle ({'; '.join(uses)}); sriov_numvfs stays "
                f"{pf.numvfs}: free it (down, no address, route or socket), then restore again")
    return None


def _live_users_of_vfs(fs: Sysfs, entry: dict, pf: "sriov.PhysicalFunction",
                       journaled: list[dict]) -> str | None:
    """Which live run (other than this process) holds a VF of ``pf`` or relies on its VFs."""
    for e in journaled:  # (a binding by hand outlives the `bind` that made it: live)
        if (e["bdf"], e.get("lease")) == (entry["bdf"], entry.get("lease")) or \
                _own(fs, e) or _of_another_boot(fs, e) or \
                not (e.get("manual") or owner_alive(fs, e)):
            continue
        who = (f"a bind by hand (`python -m harness release {short_bdf(_named_by(e, journaled))}`"
               " gives it back)" if e.get("manual") else f"pid {e.get('pid')} (a live run)")
        if e["bdf"] in pf.vfs:
            return f"{who} holds its VF {e['bdf']}"
        if e.get("kind") == SRIOV and e["bdf"] == pf.bdf:
            return f"{who} uses its VFs"
    return None


def _restore_autoprobe(fs: Sysfs, pf: str, value: int | None) -> None:
    if value is not None and sriov.autoprobe(fs, pf) != value:
        sriov.set_autoprobe(fs, pf, value)


def _restore_entry(fs: Sysfs, entry: dict, timeout: float,
                   journaled: list[dict] = ()) -> Restored:
    """Give one journaled device back, from whatever state a run left it in (``journaled``:
    the journal now, for a PF's count: :func:`_restore_sriov`), if it is still the state a
    run of this boot left (:func:`_stale`), on the device it took (:func:`_other_pci_device`)."""
    if entry.get("kind") == SRIOV:
        return _restore_sriov(fs, entry, timeout, journaled)
    if entry.get("kind") == USB:
        return _restore_usb(fs, entry, timeout)
    bdf, original = entry["bdf"], entry.get("driver")
    stale = _stale(fs, entry)
    if stale:
        return stale
    if entry.get("kind") == HOLD:
        return Restored(bdf, "restored", original, "let go: it stays on vfio-pci, where it was "
                                                   "before the harness held it")
    if not fs.pci_exists(bdf):
        return Restored(bdf, "gone", None, "no longer on this host (removed?); nothing to do")
    try:
        other = _other_pci_device(fs, entry)
        if other:
            return Restored(bdf, "gone", fs.link_name(fs.pci_dir(bdf) / "driver"),
                            f"{other}; nothing given back, its entry dropped")
        return _put_back(fs, fs.pci_device(bdf), entry, timeout)
    except HostDeviceError as e:
        return Restored(bdf, "failed", fs.link_name(fs.pci_dir(bdf) / "driver"),
                        f"{e.message} ({e.hint})" if e.hint else e.message)


def _stale(fs: Sysfs, entry: dict) -> Restored | None:
    """An entry of an earlier boot (:func:`_of_another_boot`), as a give-back that writes
    nothing (``stale``: its entry is dropped); None: it is of this boot, or that cannot be
    told."""
    why = _of_another_boot(fs, entry)
    if why is None:
        return None
    driver = fs.link_name(fs.pci_dir(entry["bdf"]) / "driver") if entry.get("kind") != USB \
        else None
    return Restored(entry["bdf"], "stale", driver,
                    f"{why}: what that run wrote ended with its boot; nothing given back, "
                    "its entry dropped (the device is left as this boot has it)")


def _other_pci_device(fs: Sysfs, entry: dict) -> str | None:
    """Why the function at the entry's address is not the one journaled (None: it is, or the
    entry names no ids): other ``vendor device`` ids, a card put in that slot since. A
    give-back writes only to the device it took, as a USB one does (:func:`_same_usb`)."""
    dev = fs.pci_device(entry["bdf"])
    now = f"{dev.vendor} {dev.device}"
    if entry.get("ids") is None or entry["ids"] == now:
        return None
    return (f"another device is there now ({now.replace(' ', ':')}; it was "
            f"{entry['ids'].replace(' ', ':')}, journaled by pid {entry.get('pid')} at "
            f"{entry.get('time')})")


def _put_back(fs: Sysfs, dev: PciDevice, entry: dict, timeout: float) -> Restored:
    """The writes of a give-back: vfio-pci's ``new_id`` removed, the device unbound from
    vfio-pci, its ``driver_override`` as it was, bound to its original driver (raises
    HostDeviceError: the caller's ``failed``)."""
    bdf, original = dev.bdf, entry.get("driver")
    if entry.get("method") == "new_id":
        with contextlib.suppress(HostDeviceError):  # already removed
            fs.write(fs.pci_driver_dir(VFIO) / "remove_id", entry["ids"])
    # While a process (a QEMU) has the group open, unbinding blocks in the kernel until it
    # lets go, and a host driver on any member would share DMA with it: touch none.
    group = dev.iommu_group if dev.iommu_group is not None else entry.get("group")
    held = _holders(fs, group, bdf)
    if held:
        return Restored(bdf, "failed", dev.driver, f"{held[0]} is still open by {held[1]}; "
                                                   f"{held[2]}, then restore again")
    if dev.driver == VFIO:
        fs.write(fs.pci_driver_dir(VFIO) / "unbind", bdf)
    elif dev.driver not in (None, original):
        return Restored(bdf, "failed", dev.driver,
                        f"bound to {dev.driver}, neither vfio-pci nor its original "
                        f"{original or 'no driver'}; left as it is")
    wanted_override = entry.get("driver_override")
    if dev.has_driver_override and dev.driver_override != wanted_override:
        fs.write(fs.pci_dir(bdf) / "driver_override", wanted_override or "\n")
    if original and fs.link_name(fs.pci_dir(bdf) / "driver") != original:
        bind = fs.pci_driver_dir(original) / "bind"
        fs.write(bind if bind.exists() else fs.sys("bus", "pci", "drivers_probe"), bdf)
    _wait_driver(fs, bdf, original, timeout)
    return Restored(bdf, "restored", original, f"back on {original or 'no driver'}")


# -- usb-host hand-overs ------------------------------------------------------------------------


def _usb_entry(fs: Sysfs, usb: UsbDevice, lease: str) -> dict:
    """The journal entry of ``usb`` handed to usb-host: what tells it is still the same device
    (its bus and address, which a replug changes, its ids and its sysfs folder) and each of
    its interfaces with its driver now, which QEMU detaches."""
    here = Path(os.path.realpath(usb.path))
    return {"kind": USB, "bdf": usb.name, "busnum": usb.busnum, "devnum": usb.devnum,
            "ids": usb.ids, "path": str(here.relative_to(os.path.realpath(fs.sys()))),
            "interfaces": {i.name: fs.link_name(i / "driver") for i in _usb_interfaces(here)},
            "lease": lease, **_stamp(fs, False)}


def _usb_interfaces(here: Path) -> list[Path]:
    """The interfaces of the USB device at ``here`` (``4-1:1.0``: its active configuration's)."""
    return sorted(p for p in here.glob(f"{here.name}:*") if p.is_dir())


def _same_usb(fs: Sysfs, entry: dict) -> str | None:
    """Why the device at the entry's bus id is not the one handed over (None: it is): gone,
    or another device in its place (a replug changes its address; a device plugged into the
    same port has other ids). A give-back writes only to the device it took."""
    here = fs.sys("bus", "usb", "devices", entry["bdf"])
    if not here.exists():
        return "no longer on this host (unplugged)"
    now = (os.path.relpath(os.path.realpath(here), os.path.realpath(fs.sys())),
           fs.read(here / "busnum"), fs.read(here / "devnum"),
           f"{fs.read(here / 'idVendor')}:{fs.read(here / 'idProduct')}")
    then = (entry["path"], str(entry["busnum"]), str(entry["devnum"]), entry["ids"])
    if now != then:
        return (f"another device is there now ({now[3]}, bus {now[1]} address {now[2]}; it "
                f"was {then[3]}, bus {then[1]} address {then[2]}): replugged")
    return None


def _usb_holders(fs: Sysfs, entry: dict) -> str | None:
    """Who holds the device's usbfs node (/dev/bus/usb/BBB/DDD: a QEMU not yet gone has it,
    its interfaces claimed), by path and by number; open files that cannot be read count as
    a holder (fail closed). None: nobody."""
    problems: list[str] = []
    opened = OpenFiles.read(fs, problems)
    here = fs.sys("bus", "usb", "devices", entry["bdf"])
    node = f"bus/usb/{entry['busnum']:03d}/{entry['devnum']:03d}"
    users = opened.holders("char", node, fs.read(here / "dev"))
    if users:
        return f"/dev/{node} is open by " + ", ".join(f"pid {p} ({c})" for p, c in users)
    if problems:
        return f"whether /dev/{node} is open cannot be told ({'; '.join(problems)})"
    return None


def _restore_usb(fs: Sysfs, entry: dict, timeout: float) -> Restored:
    """Bind each interface of a device handed to usb-host back to the driver it had, where it
    is on none now: QEMU detached them (``USBDEVFS_DISCONNECT``) and a QEMU that aborts or is
    killed binds nothing back (usbfs's release does not), so the stick's disk, a USB NIC's
    interface or a serial adapter's tty stays gone until someone replugs it. Only once no
    process holds its usbfs node, and only to the same device (:func:`_same_usb`)."""
    name = entry["bdf"]
    stale = _stale(fs, entry)  # (its bus and address are this boot's: another device's)
    if stale:
        return stale
    other = _same_usb(fs, entry)
    if other:
        return Restored(name, "gone", None, f"{other}; nothing to give back")
    held = _usb_holders(fs, entry)
    if held:
        return Restored(name, "failed", None, f"{held}: its interfaces stay with it; stop it "
                                              "(or let its guest end), then restore again")
    done, left = [], []
    for iface, original in entry["interfaces"].items():
        where = fs.sys("bus", "usb", "devices", iface)
        now = fs.link_name(where / "driver")
        if original in (None, USBFS) or now == original:
            continue  # (on usbfs before: a process's claim, which is not the harness's to make)
        if not where.exists():
            left.append(f"{iface} is gone (the guest chose another configuration?): replug it")
        elif now is not None:
            left.append(f"{iface} is on {now}, not its {original}; left as it is")
        else:
            try:
                _bind_usb_interface(fs, iface, original, timeout)
                done.append(f"{iface} on {original}")
            except HostDeviceError as e:
                left.append(e.message)
    if left:
        return Restored(name, "failed", None, "; ".join(done + left))
    return Restored(name, "restored", None, "its interfaces are back on their drivers"
                    + (f" (bound again: {', '.join(done)})" if done else ""))


def _bind_usb_interface(fs: Sysfs, iface: str, driver: str, timeout: float) -> None:
    """Bind ``iface`` to ``driver`` (its ``bind``, else ``drivers_probe``: the kernel matches
    it again), and wait until its ``driver`` link names it. A write refused because the
    kernel bound it meanwhile (QEMU's own give-back, a moment late: EBUSY) is no failure."""
    bind = fs.sys("bus", "usb", "drivers", driver, "bind")
    link = fs.sys("bus", "usb", "devices", iface, "driver")
    try:
        fs.write(bind if bind.exists() else fs.sys("bus", "usb", "drivers_probe"), iface)
    except HostDeviceError:
        if fs.link_name(link) != driver:
            raise
    try:
        wait_until(f"{iface} on {driver}", lambda: fs.link_name(link) == driver, timeout,
                   interval=0.02)
    except WaitTimeout as e:
        raise HostDeviceError(f"{iface} is on {fs.link_name(link) or 'no driver'} after "
                              f"{timeout:g} s, not {driver}",
                              hint=f"`dmesg | tail` shows why {driver} did not take it") from e


def _give_back(fs: Sysfs, entry: dict, timeout: float) -> Restored:
    """A release's give-back: :func:`_restore_entry`, but an entry libvirt moved
    (``<hostdev managed='yes'>``) should be back on its driver already (libvirt re-attaches
    it when QEMU lets go); given the deadline to get there, then put back by the harness,
    which the result says. An entry of an earlier boot is dropped, nothing waited for or
    written (:func:`_stale`)."""
    if not entry.get("moved_by") or _of_another_boot(fs, entry):
        return _restore_entry(fs, entry, timeout)
    bdf, original, who = entry["bdf"], entry.get("driver"), entry["moved_by"]
    try:
        _wait_driver(fs, bdf, original, timeout)
        if fs.pci_device(bdf).driver_override == entry.get("driver_override"):
            return Restored(bdf, "restored", original,
                            f"back on {original or 'no driver'}, given back by {who}")
    except HostDeviceError as e:
        left = e.message
    else:
        left = "its driver_override was not put back"
    result = _restore_entry(fs, entry, timeout)
    return dataclasses.replace(result, detail=f"{who} did not give it back ({left}); "
                                              f"the harness: {result.detail}")


def restore_from_journal(root: "str | Path | Sysfs" = "/", journal: str | Path | None = None, *,
                         include_live: bool = False, timeout: float = 5.0,
                         own_pids: "set[int] | frozenset[int]" = frozenset(),
                         only: "set[str] | None" = None) -> list[Restored]:
    """Give back every device a run left on vfio-pci, and drop its journal entries.

    Entries of a run that is still alive (another session, an xdist worker) and devices bound
    by hand (``python -m harness bind``) are left alone (``status="in-use"``) unless
    ``include_live``; ``own_pids`` are the calling run's own processes, whose entries are given
    back although they live (a session's end). ``only``: just the groups (leases) of these
    BDFs (``python -m harness release``): bound by hand, or of a dead run; a live run's only
    with ``include_live``. A PF's ``sriov_numvfs`` stays while a live run holds one of its VFs
    (``in-use``, the entry kept). With a journal other than the host's, the host's is read and
    locked too, and a group or PF a lease there holds is left (``in-use``). Idempotent. Raises
    HostDeviceError after trying them all if any could not be given back (their entries stay)."""
    fs = Sysfs.of(root)
    jr = Journal(journal or default_journal_path())
    if not jr.path.exists():
        return []
    results: list[Restored] = []
    with _host_leases(fs, jr) as host_leases, jr.locked():
        # VFs before the PFs whose sriov_numvfs made them (a VF on vfio-pci blocks the PF).
        entries = sorted(jr.read(), key=lambda e: e.get("kind") == SRIOV)
        refuse_outside_host(fs, "give devices back", bool(entries))
        if only is not None:
            leases = {e.get("lease") for e in entries
                      if _named_by(e, entries) in {parse_bdf(b) for b in only}}
            entries = [e for e in entries if e.get("lease") in leases]
        for entry in entries:
            held = _held_elsewhere(fs, entry, include_live, own_pids, only is not None,
                                   _named_by(entry, entries)) or \
                _leased_on_host(fs, entry, host_leases)
            if held:
                results.append(Restored(entry["bdf"], "in-use", fs.link_name(
                    fs.pci_dir(entry["bdf"]) / "driver"), held))
                continue
            result = _restore_entry(fs, entry, timeout,
                                    ([] if include_live else jr.read()) + host_leases)
            log.info("restore: %s", result)
            results.append(result)
            if result.status in ("restored", "gone", "stale"):
                _drop(jr, entry)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise HostDeviceError(
            f"{len(failed)} device(s) could not be given back to their drivers: "
            f"{', '.join(r.bdf for r in failed)}",
            hint="fix the cause below, then run `python -m harness restore` again",
            details="\n".join(f"  {r}" for r in results))
    return results


def _host_journal(fs: Sysfs) -> Path:
    return fs.path(*DEFAULT_JOURNAL.parts[1:])


@contextlib.contextmanager
def _host_leases(fs: Sysfs, jr: Journal):
    """The entries of the host's journal, locked until the give-back ends, when ``jr`` is
    another one (empty: it is that one). Every lease is taken there (:func:`refuse_other_
    journal`), so `restore --journal OLD` (an old ``HH_VFIO_JOURNAL`` a run that died left)
    may list a group a live run holds now: it stayed on vfio-pci, open by no process between
    two of that run's tests, and the run took it as a HOLD lease in the host's journal; or a
    PF whose VF a run there relies on. (The host's lock first, as every binder takes it.)"""
    host = Journal(_host_journal(fs))
    if os.path.realpath(jr.path) == os.path.realpath(host.path):
        yield []
        return
    with host.locked():
        yield host.read()


def _leased_on_host(fs: Sysfs, entry: dict, leases: list[dict]) -> str | None:
    """Why an entry of another journal is not this give-back's (None: it is): the host's
    journal (``leases``) has a lease on its group or on the device itself (a PF's count
    included), live or left by a run that died: the host's own `restore` or `release`
    gives that back (:func:`_host_leases`)."""
    bdf = entry["bdf"]
    groups = {entry.get("group")} | ({fs.pci_device(bdf).iommu_group} if fs.pci_exists(bdf)
                                     else set())
    for e in leases:
        if e["bdf"] == bdf or (SRIOV not in (e.get("kind"), entry.get("kind"))
                               and e.get("group") in groups - {None}):
            return (f"the host's journal ({_host_journal(fs)}) has a lease on "
                    f"{e['bdf']}" + (f" (group {e['group']})" if e.get("group") is not None
                                     else "") + f" by pid {e.get('pid')} since "
                    f"{e.get('time')}; `python -m harness restore` (or `release`, without "
                    "--journal) gives it back once that lease ends")
    return None


def refuse_outside_host(fs: Sysfs, what: str, acting: bool = True,
                        journal: Path | None = None) -> None:
    """Outside the host's namespaces (a container), the processes, interfaces and open files
    seen are not the host's: a live run looks dead, a VF's interface unseen. Nothing is
    taken, made or given back there (``acting``: there is something to do); and nothing is
    taken or made with a ``journal`` other than the host's (:func:`refuse_other_journal`)."""
    outside = namespace_problem(fs) if acting else None
    if outside:
        raise HostDeviceError(f"refusing to {what}: {outside}",
                              hint="run the harness on the host itself (not in a container "
                                   "or another network namespace)")
    if journal is not None:
        refuse_other_journal(fs, journal, what)


def refuse_other_journal(fs: Sysfs, journal: Path, what: str) -> None:
    """A lease is a host-wide fact, but a journal is read only by the binders that name it: a
    group bound by hand with a journal of its own (``HH_VFIO_JOURNAL``, ``bind --journal``),
    its QEMU not started yet, is on vfio-pci and open by no process to a run on the host's
    journal, which takes it; a run's end writes 0 to ``sriov_numvfs`` under a VF another
    journal relies on. So devices are taken and VFs made only under the host's journal
    (``<root>/var/lib/hotplug-harness/vfio-journal.json``): one place for every lease, and one
    lock. (release and restore read any journal: they give back, leaving what a lease in the
    host's journal holds: :func:`_host_leases`.)"""
    host = _host_journal(fs)
    if os.path.realpath(journal) != os.path.realpath(host):
        raise HostDeviceError(f"refusing to {what} with the vfio journal {journal}: a run on "
                              f"the host's journal ({host}) would not see this lease, nor "
                              "this one the leases there", hint="unset HH_VFIO_JOURNAL (or "
                              "leave out --journal); give back what an old journal lists "
                              "with `python -m harness restore --journal PATH`")


def _named_by(entry: dict, entries: list[dict]) -> str:
    """The function that names ``entry``'s lease for `release`: its own, but for an entry
    that only relies on a PF's VFs (SR-IOV, no count set, no autoprobe: :meth:`VfioBinder.
    _hold_and_rely`) in the lease of a VF, which is that VF's lease, not one of the PF:
    `release PF` must not give back a VF another user bound by hand below it."""
    if entry.get("kind") != SRIOV or "set" in entry or "autoprobe" in entry:
        return entry["bdf"]
    return next((e["bdf"] for e in entries if e.get("lease") == entry.get("lease")
                 and e.get("kind") != SRIOV), entry["bdf"])


def _held_elsewhere(fs: Sysfs, entry: dict, take_all: bool, own_pids,
                    releasing: bool, name: str | None = None) -> str | None:
    """Why an entry is not this restore's to give back (None: it is). ``releasing``: `release
    BDF` names the lease, which gives back one bound by hand, not a live run's. ``name``: the
    function `release` names its lease by (:func:`_named_by`)."""
    if take_all or _own(fs, entry, own_pids) or _of_another_boot(fs, entry):
        return None  # (an entry of an earlier boot: its lease ended with it, for restore to drop)
    if entry.get("manual"):
        return None if releasing else (
            f"bound by hand (`python -m harness bind`) since {entry.get('time')}; "
            f"`python -m harness release {short_bdf(name or entry['bdf'])}` gives it back")
    if owner_alive(fs, entry):
        return (f"held by pid {entry.get('pid')} (a live run) since {entry.get('time')}"
                + ("; --force takes it back anyway" if releasing else ""))
    return None


def refuse_foreign(fs: Sysfs, plan: GroupPlan, entries: list[dict], hold) -> None:
    """Refuses a group another lease holds: a live run's, one bound by hand (`python -m
    harness bind`: its process has ended, its lease has not), or one a run that died left."""
    members = {m.bdf for m in plan.members}
    for e in entries:
        if e.get("kind") == USB:
            _refuse_usb_below(fs, plan, e)
            continue
        if e.get("kind") == SRIOV:
            if e["bdf"] in members:
                _stale_refused(fs, e, f"{e['bdf']} (group {plan.group})")
                _refuse_pf_of_vfs(fs, e, plan.group)
            continue
        if e["bdf"] in members and (hold is None or e.get("lease") != hold.lease_id):
            _refuse_leased(fs, e, f"{e['bdf']} (group {plan.group})")


def _stale_refused(fs: Sysfs, e: dict, lead: str) -> None:
    """An entry of an earlier boot is stale (:func:`_of_another_boot`): no run holds what it
    names, but nor is its own entry (a bind by hand, a live run) told from it until
    `restore` drops it, which writes nothing to the device (``lead``: what is refused)."""
    why = _of_another_boot(fs, e)
    if why:
        raise HostDeviceError(f"{lead} has a stale journal entry: {why}",
                              hint="run `python -m harness restore` (as root): it drops an "
                                   "entry of an earlier boot without writing to the device")


def _refuse_usb_below(fs: Sysfs, plan: GroupPlan, e: dict) -> None:
    """A group with a member above a USB device handed to usb-host (a live run's QEMU has it,
    or a run that died left its interfaces on no driver, for `restore` to bind back)."""
    here = os.path.realpath(fs.sys(e["path"]))
    above = [m.bdf for m in sorted(plan.members, key=lambda m: -len(m.path))
             if here.startswith(os.path.realpath(m.path) + "/")]  # (the nearest first)
    if not above:
        return
    if owner_alive(fs, e):
        raise HostDeviceError(f"{above[0]} (group {plan.group}) has the USB device {e['bdf']} "
                              f"below it, handed to usb-host by pid {e.get('pid')} since "
                              f"{e.get('time')}", hint="another run uses it: wait for it, or "
                                                       "take another device")
    raise HostDeviceError(f"{above[0]} (group {plan.group}) has the USB device {e['bdf']} below "
                          f"it, which a run that died (pid {e.get('pid')}) handed to usb-host "
                          "and did not give back", hint=RESTORE_HINT)


def refuse_usb_handed(fs: Sysfs, usb: UsbDevice, entries: list[dict], refusing: str,
                      own: list[dict] = ()) -> None:
    """Refuses a USB device the journal lists as handed to usb-host (its bus id or its sysfs
    folder) by a hand-over not among ``own`` (this binder's, not given back yet): a live
    run's QEMU has it, or had it and was killed, its interfaces left on no driver for that
    run's give-back; or a run that died left it so, for `restore`. Such a device reads idle
    (nothing bound, its usbfs node open by nobody), and a second hand-over would journal
    "no driver" as what its interfaces had, while the first give-back finds the second
    guest on it and fails. A device below a PCI function a lease holds is refused first
    (:func:`_refuse_below_leased`)."""
    _refuse_below_leased(fs, usb, entries, refusing)
    path = os.path.relpath(os.path.realpath(usb.path), os.path.realpath(fs.sys()))
    mine = {e.get("lease") for e in own}
    for e in entries:
        if e.get("kind") != USB or e.get("lease") in mine or \
                (e["bdf"] != usb.name and e.get("path") != path):
            continue
        if owner_alive(fs, e):
            raise HostDeviceError(f"{refusing}: handed to usb-host by pid {e.get('pid')} since "
                                  f"{e.get('time')}, not given back yet (its guest has it, or "
                                  "had it and left its interfaces on no driver)",
                                  hint="another run or xdist worker uses it: wait for it, or "
                                       "take another device")
        raise HostDeviceError(f"{refusing}: a run that died (pid {e.get('pid')}) handed it to "
                              f"usb-host since {e.get('time')} and did not give it back",
                              hint=RESTORE_HINT)


def _refuse_below_leased(fs: Sysfs, usb: UsbDevice, entries: list[dict], refusing: str) -> None:
    """Refuses a USB device below a PCI function a lease holds (its vfio or HOLD entry, the
    nearest first), as :func:`_refuse_usb_below` refuses the function above a handed device.
    Such a function is on vfio-pci (nothing below it), or left on its host driver for libvirt
    to move at the lease's handover (``moved_by``): the device below it reads idle until then,
    and a QEMU that has it makes that handover refuse the controller, the lease broken by
    another run. A dead run's lease counts until `restore` gives it back."""
    above = bdfs_in_path(usb.path)
    held = sorted((e for e in entries if e.get("kind", "vfio") in ("vfio", HOLD)
                   and e["bdf"] in above), key=lambda e: -above.index(e["bdf"]))
    if held:
        e = held[0]
        _refuse_leased(fs, e, f"{refusing}: it is below {e['bdf']} (group {e.get('group')}), "
                              "which")


def _refuse_pf_leased(fs: Sysfs, pf: str, count: int, entries: list[dict]) -> None:
    """Refuses VFs of a PF a lease holds (its vfio or HOLD entry), as :func:`_refuse_pf_of_vfs`
    refuses the PF whose VFs a run relies on: left on its driver for libvirt to move at the
    lease's handover, it reads idle until then, and VFs made meanwhile make that handover
    refuse it (its VFs would be removed), the lease broken by another run; and VFs of a PF
    a run is about to move are none to rely on."""
    held = [e for e in entries if e.get("kind", "vfio") in ("vfio", HOLD) and e["bdf"] == pf]
    if held:
        _refuse_leased(fs, held[0], f"cannot have {count} VFs of {pf} (group "
                                    f"{held[0].get('group')}): it")


def _refuse_leased(fs: Sysfs, e: dict, lead: str) -> None:
    """Raises for the vfio or HOLD entry ``e`` of a lease, saying whose it is and what to do
    (``lead`` names what is refused, ending in its subject: "..., which"): stale (an earlier
    boot's), bound by hand, a live run's, or a dead run's left for `restore`."""
    _stale_refused(fs, e, lead)
    if e.get("manual"):
        raise HostDeviceError(f"{lead} is bound by hand (`python -m harness bind`) since "
                              f"{e.get('time')}", hint="its user gives it back with `python -m "
                              f"harness release {short_bdf(e['bdf'])}`; take another device "
                              "meanwhile")
    left = f" (left on {e.get('driver')} for {e['moved_by']} to move)" if e.get("moved_by") \
        else ""
    if owner_alive(fs, e):
        raise HostDeviceError(f"{lead} is held by pid {e.get('pid')} since {e.get('time')}"
                              f"{left}", hint="another run or xdist worker uses it: wait for "
                                              "it, or give that run another device")
    where = (f"on {e.get('driver')} for {e['moved_by']} to move" if e.get("moved_by")
             else "on vfio-pci")
    raise HostDeviceError(f"{lead} was left {where} by a run that died (pid {e.get('pid')})",
                          hint=RESTORE_HINT)


def _refuse_pf_of_vfs(fs: Sysfs, e: dict, group: int) -> None:
    """A PF whose sriov_numvfs a run journaled: unbinding its driver removes the VFs that
    run relies on (alive, or bound by hand), or leaves its count for `restore` to put back
    (dead)."""
    if e.get("manual") or owner_alive(fs, e):
        raise HostDeviceError(
            f"{e['bdf']} (group {group}) is the PF whose VFs pid {e.get('pid')} (a live "
            f"run) relies on since {e.get('time')}: unbinding its driver would remove them",
            hint="wait for that run to end, or take another device")
    raise HostDeviceError(f"{e['bdf']} (group {group}) is the PF whose sriov_numvfs a run "
                          f"that died (pid {e.get('pid')}) changed", hint=RESTORE_HINT)


def _drop_own_reliance(fs: Sysfs, jr: Journal, pf: str) -> None:
    """This process's entries that only rely on ``pf``'s VFs (its other binders' binds of a
    VF: one process is one run), once its count is put back: the VFs are gone with it."""
    jr.write([e for e in jr.read() if not (e.get("kind") == SRIOV and e["bdf"] == pf and
                                           "set" not in e and _own(fs, e))])


def _drop(jr: Journal, entry: dict) -> None:
    key = (entry["bdf"], entry.get("lease"))
    jr.write([e for e in jr.read() if (e["bdf"], e.get("lease")) != key])


# -- the binder ---------------------------------------------------------------------------------


@dataclasses.dataclass
class _Hold:
    """One IOMMU group this binder holds: its journal lease id, the journaled entries, and how
    many Leases share it (two inventory devices can share a group)."""

    lease_id: str
    entries: list[dict]
    count: int = 0


class Lease:
    """A device on vfio-pci for as long as the lease is held. ``release()`` (or leaving the
    ``with`` block) gives its group back once no other lease of the binder needs it."""

    def __init__(self, binder: "VfioBinder", plan: GroupPlan, moved: list[str], *,
                 left_to: str | None = None, allowed=frozenset()):
        self._binder = binder
        self.bdf = plan.target.bdf
        self.group = plan.group
        self.plan = plan
        #: The functions this bind moved to vfio-pci (none when the group was held already).
        self.moved = moved
        #: Who moves the target itself ("libvirt": <hostdev managed='yes'>), None: the binder
        #: did (or it was on vfio-pci already). :meth:`VfioBinder.handover` around the attach.
        self.left_to = left_to
        #: The inventory's allow-list it was bound with (for the proof again at the handover).
        self.allowed = allowed
        self.released = False

    @property
    def members(self) -> list[str]:
        return [m.bdf for m in self.plan.members]

    @property
    def vfio_group_path(self) -> Path:
        return Path("/dev/vfio", str(self.group))

    def release(self) -> list[Restored]:
        """Give the group back (once no other lease needs it). A release that could not give a
        device back (a QEMU still held the group) raises and may be called again."""
        if self.released:
            return []
        results = self._binder._release(self.group)
        self.released = True
        return results

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Lease {self.bdf} group {self.group} moved={self.moved}>"


def _stamp(fs: Sysfs, manual: bool) -> dict:
    """Who wrote a journal entry, and when: this process, with its start time (a pid reused by
    another process is told apart), the boot (every binding the entry records dies with it:
    :func:`_of_another_boot`), and whether it is a bind by hand (``harness bind``)."""
    pid, boot = os.getpid(), boot_id(fs)
    return {"pid": pid, "pid_start": _process_start(fs, pid),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **({"boot": boot} if boot else {}), **({"manual": True} if manual else {})}


def _refuse_stale_count(pf: str, entries: list[dict]) -> None:
    """Refuses to change ``pf``'s VF count while the journal holds another run's change of it
    that was never put back (its ``restore`` comes first)."""
    stale = [e for e in entries if e.get("kind") == SRIOV and e["bdf"] == pf]
    if stale:
        raise HostDeviceError(f"{pf}'s sriov_numvfs was changed by pid "
                              f"{stale[0].get('pid')}, which did not put it back",
                              hint=RESTORE_HINT)


class UsbHandovers:
    """A binder's usb-host hand-overs (``binder.usb``): each journaled before QEMU opens the
    device, and given back to its host drivers once its guest let it go."""

    def __init__(self, binder: "VfioBinder"):
        self.binder = binder
        #: journal entries of the hand-overs this binder made and has not given back yet
        self.entries: list[dict] = []

    @contextlib.contextmanager
    def handed(self, usb: UsbDevice):
        """Around QEMU's open of ``usb`` (usb-host), with the journal lock held by the caller
        (:func:`harness.host.usbhost.handed`): the hand-over is journaled first (the device and
        each interface's driver), since QEMU detaches those drivers and a QEMU that aborts or
        is killed binds none back. A hand-over that fails is given back at once; one that
        succeeds is given back by :meth:`give_back` once its guest let it go (or is gone),
        by :meth:`VfioBinder.close`, or by `restore` after a run that died."""
        entry = _usb_entry(self.binder.fs, usb, uuid.uuid4().hex[:12])
        self.binder.journal.write(self.binder.journal.read() + [entry])
        self.entries.append(entry)
        try:
            yield entry
        except BaseException as e:
            result = self._give_back(entry)  # (the lock is the caller's: still held)
            if result.status == "failed" and isinstance(e, Exception):
                e.add_note(f"(USB {usb.name} is given back to its host drivers once its guest "
                           f"is closed: {result.detail})")
            raise

    def give_back(self, name: str) -> list[Restored]:
        """Bind the interfaces of the USB device ``name`` (``4-1``) that this binder handed to
        usb-host back to their drivers, once its guest let it go (``device_del``, or the guest
        is gone: :func:`_restore_usb`). Raises if that cannot be done yet (the entry stays, for
        a later call, :meth:`VfioBinder.close` or `restore`)."""
        results = []
        with self.binder.journal.locked():
            for entry in [e for e in self.entries if e["bdf"] == name]:
                results.append(self._give_back(entry))
        failed = [r for r in results if r.status == "failed"]
        if failed:
            raise HostDeviceError(f"USB {name}: not given back to its host drivers: "
                                  + "; ".join(r.detail for r in failed), hint=RESTORE_HINT)
        return results

    def _give_back(self, entry: dict) -> Restored:
        """:func:`_restore_usb` of one hand-over, its entry dropped once done (the journal lock
        held)."""
        result = _restore_usb(self.binder.fs, entry, self.binder.timeout)
        log.info("usb-host: give back %s", result)
        if result.status != "failed":
            _drop(self.binder.journal, entry)
            self.entries.remove(entry)
        return result


class VfioBinder:
    """Binds inventory devices to vfio-pci for one run; use one per process (another binder's
    entries look like another run's). ``close()`` gives back everything still held. ``root``
    may be a :class:`Sysfs` whose ``on_write`` plays the kernel (unit tests)."""

    def __init__(self, root: "str | Path | Sysfs" = "/", journal: str | Path | None = None, *,
                 timeout: float = 5.0,
                 cleared_storage: "set[str] | frozenset[str]" = frozenset(),
                 nic_ports: "dict[str, int] | None" = None, manual: bool = False):
        """``cleared_storage``: the inventory's ``no_host_filesystems`` controllers
        (:meth:`Inventory.cleared_storage`); ``nic_ports``: its NICs' ``ports``. ``manual``:
        a binding by hand (``python -m harness bind``) that outlives this process: no
        automatic restore takes it back."""
        self.manual = manual
        self.fs = Sysfs.of(root)
        self.journal = Journal(journal or default_journal_path())
        self.cleared_storage = frozenset(cleared_storage)
        self.nic_ports = dict(nic_ports or {})
        self.timeout = timeout
        self._holds: dict[int, _Hold] = {}
        #: The PFs whose sriov_numvfs this binder changed (their journal entries).
        self._sriov: list[dict] = []
        #: The USB devices this binder handed to usb-host and has not given back.
        self.usb = UsbHandovers(self)

    def bind(self, bdf: str, allowed: set[str] | frozenset[str], *,
             moved_by: str | None = None) -> Lease:
        """Put ``bdf`` and the rest of its IOMMU group on vfio-pci. ``allowed``: the inventory's
        BDFs (``Inventory.pci_addresses()``). ``moved_by="libvirt"`` (``<hostdev
        managed='yes'>``): the same proof and journal, ``bdf`` left for libvirt to move on
        attach (in :meth:`handover`) and give back on detach when that is safe
        (:func:`_libvirt_gives_back`; else moved here, ``Lease.left_to`` None); the release
        checks that libvirt gave it back, and gives it back itself if not."""
        if moved_by not in (None, LIBVIRT):
            raise ValueError(f"moved_by {moved_by!r}")
        bdf = parse_bdf(bdf)
        if bdf not in {parse_bdf(a) for a in allowed}:
            raise HostDeviceError(f"{bdf} is not in the inventory: the harness takes only "
                                  f"devices listed there",
                                  hint="add it to the inventory if the host can spare it "
                                       "(`python -m harness discover` says whether it can)")
        if not self.fs.pci_driver_dir(VFIO).is_dir():
            raise HostDeviceError(f"the vfio-pci driver is not loaded (no "
                                  f"{self.fs.pci_driver_dir(VFIO)})", hint="modprobe vfio-pci")
        refuse_outside_host(self.fs, f"take {bdf}", journal=self.journal.path)
        first = self._proven_plan(bdf, allowed, "")
        with self.journal.locked():
            # The host may have changed while this waited for the lock (another run's bind, an
            # interface brought up): read the evidence again right before the first write.
            plan = self._proven_plan(bdf, allowed, "while it waited for the vfio journal "
                                                   "lock, ")
            if _moves(plan) != _moves(first):
                raise HostDeviceError(
                    f"refusing to take {plan.target.bdf}: its IOMMU group {plan.group} changed "
                    f"while it waited for the vfio journal lock (was {_moves(first)}, now "
                    f"{_moves(plan)})", hint="run again; if it repeats, something on the host "
                                             "is rebinding these devices")
            entries = self.journal.read()
            hold = self._holds.get(plan.group)
            refuse_foreign(self.fs, plan, entries, hold)
            hold = hold or _Hold(uuid.uuid4().hex[:12], [])
            keep = plan.target.bdf if moved_by and _libvirt_gives_back(self.fs, plan) else None
            new = [self._entry(m, plan.group, hold.lease_id, moved_by if m.bdf == keep else None)
                   for m in plan.to_move]
            if new:
                self.journal.write(entries + new)
            self._move_all(plan, new, keep=keep)
            hold.entries = hold.entries + new + self._hold_and_rely(plan, hold, new)
        hold.count += 1
        self._holds[plan.group] = hold
        moved = [e["bdf"] for e in new if not e.get("moved_by")]
        left = moved_by if any(e.get("moved_by") for e in new) else None
        log.info("vfio: %s (group %s) %s; moved %s", plan.target.bdf, plan.group,
                 f"journaled for {left} to move" if left else "on vfio-pci", moved or "nothing")
        return Lease(self, plan, moved, left_to=left, allowed=allowed)

    @contextlib.contextmanager
    def handover(self, lease: "Lease"):
        """Around the ``attach-device`` of a lease whose target libvirt moves (``<hostdev
        managed='yes'>``): the journal lock held, and the target proven idle again and on its
        journaled driver, right before libvirt unbinds it, as the binder's own move is right
        after its proof. Between the bind and the attach the host may have started using it
        (an interface brought up, a disk mounted), and libvirt looks at none of that. A lease
        the binder moved itself: nothing to do."""
        if lease.left_to is None:
            yield lease
            return
        with self.journal.locked():
            plan = self._proven_plan(lease.bdf, lease.allowed, f"right before {lease.left_to} "
                                                               "moves it, ")
            hold = self._holds.get(lease.group)
            journaled = next((e for e in (hold.entries if hold else [])
                              if e["bdf"] == lease.bdf and e.get("moved_by")), None)
            now = plan.target.driver
            if journaled is None or now != journaled.get("driver"):
                raise HostDeviceError(
                    f"refusing to let {lease.left_to} take {lease.bdf}: it is on "
                    f"{now or 'no driver'}, not the "
                    f"{(journaled or {}).get('driver') or 'no driver'} it was proven idle on",
                    hint="something on the host rebound it since the bind; run again, and if "
                         "it repeats, find what rebinds it")
            # Its disks claimed from the proof until libvirt's attach returns, and their
            # users (and those of every node below it) read again once claimed: the proof read
            # the storage seconds before its network read, and libvirt looks at none of it.
            with _disks_claimed(self.fs, plan, refusing=f"refusing to let {lease.left_to} "
                                "take", before=f"{lease.left_to} moves it",
                                nic_ports=self.nic_ports, held_groups=frozenset(self._holds)):
                yield lease

    def _proven_plan(self, bdf: str, allowed, when: str) -> GroupPlan:
        """The group's plan from the host's evidence read now; raises unless it is safe."""
        plan = plan_group(self.fs, bdf,
                          HostUsage.read(self.fs, self.cleared_storage, self.nic_ports),
                          allowed=set(allowed), held_groups=frozenset(self._holds))
        if plan.group is None:
            raise HostDeviceError(f"{plan.target.bdf}: no iommu_group found",
                                  hint="enable VT-d in the firmware and boot with intel_iommu=on")
        if plan.problems:  # (another lease's refusal first: it says whose, and what to do)
            refuse_foreign(self.fs, plan, self.journal.read(), self._holds.get(plan.group))
            raise HostDeviceError(f"refusing to take {plan.target.bdf}: {when}"
                                  + "; ".join(plan.problems),
                                  hint="take it out of the inventory; `python -m harness "
                                       "discover` lists the devices that are safe to take")
        return plan

    def enable_vfs(self, pf: str, count: int) -> list[str]:
        """Make sure the PF at ``pf`` has at least ``count`` VFs and return the first
        ``count`` VFs' BDFs. Journals that this run relies on them either way (VFs that were
        there already included), so that no other run's end puts ``sriov_numvfs`` back under
        it. Writes ``sriov_numvfs`` only when the PF has none yet (the count journaled first,
        put back by :meth:`close` once no live run holds a VF of it); refuses a PF without
        SR-IOV, more than ``sriov_totalvfs``, a PF with fewer VFs than asked (changing them
        would remove someone's), and a PF not proven idle."""
        pf = parse_bdf(pf)
        refuse_outside_host(self.fs, f"change {pf}'s sriov_numvfs", journal=self.journal.path)
        if not self.fs.pci_exists(pf):
            raise HostDeviceError(f"PCI device {pf} (an SR-IOV PF in the inventory) does not "
                                  "exist on this host", hint="check `lspci -D`; fix the pf")
        with self.journal.locked():
            entries = self.journal.read()  # (another lease's refusal first: it says whose)
            _refuse_pf_leased(self.fs, pf, count, entries)
            now = sriov.physical_function(self.fs, pf)
            why = sriov.check_request(now, pf, count, in_use=HostUsage.read(
                self.fs, self.cleared_storage, self.nic_ports).verdict(pf).uses)
            if why:
                raise HostDeviceError(f"cannot have {count} VFs of {pf}: {why}",
                                      hint="fix the inventory's pf/vfs (`python -m harness "
                                           "discover` lists the SR-IOV PFs and their VF counts)")
            reuse = now.numvfs >= count
            if not reuse:
                _refuse_stale_count(pf, entries)
            probe = None if reuse else sriov.autoprobe(self.fs, pf)
            entry = self._sriov_entry(pf, now.numvfs, probe, None if reuse else count)
            self.journal.write(entries + [entry])
            vfs = list(now.vfs[:count]) if reuse else self._make_vfs(pf, count, probe, entry)
        self._sriov.append(entry)
        log.info("sriov: %s has %d VFs for this run (%s): %s", pf, count,
                 "there already" if reuse else "made", vfs)
        return vfs

    def _sriov_entry(self, pf: str, numvfs: int, probe: int | None, made: int | None,
                     lease: str | None = None) -> dict:
        """``numvfs``: the count before; ``made``: the count this run sets (None: it sets
        none), the only one its end may write over. ``lease``: a VF's group's, whose
        `release` by hand lets go of this too."""
        return {"kind": SRIOV, "bdf": pf, "numvfs": numvfs,
                **({"set": made} if made is not None else {}),
                **({"autoprobe": probe} if probe is not None else {}),
                "lease": lease or uuid.uuid4().hex[:12], **_stamp(self.fs, self.manual)}

    def _make_vfs(self, pf: str, count: int, probe: int | None, entry: dict) -> list[str]:
        try:
            if probe:  # the new VFs are for vfio-pci, never the host's VF driver
                sriov.set_autoprobe(self.fs, pf, 0)
            return sriov.set_numvfs(self.fs, pf, count, self.timeout)
        except HarnessError:
            if _restore_sriov(self.fs, entry, self.timeout).status != "failed":
                _drop(self.journal, entry)
            raise

    def _hold_and_rely(self, plan: GroupPlan, hold: _Hold, new: list[dict]) -> list[dict]:
        """What a lease holds with nothing moved, journaled all the same: a group on vfio-pci
        from boot (``vfio-pci.ids=``, ``driverctl``) gets an entry per member (kind
        :data:`HOLD`, nothing to give back), so that no other run proves it idle while this
        lease (a `bind` by hand, whose QEMU has not opened it yet) has it; and a VF this run
        binds makes it rely on its PF's VFs (an entry as :meth:`enable_vfs` journals for VFs
        that are there), kept to the binder's end, so that the run that made them does not
        write 0 to ``sriov_numvfs`` between this run's tests. The group's hold entries."""
        held = [] if new or hold.entries else [
            {**self._entry(m, plan.group, hold.lease_id), "kind": HOLD}
            for m in plan.members if not m.kernel_bridge]
        mine = {e["bdf"] for e in self._sriov}
        pfs = dict.fromkeys(p for m in plan.members if (p := sriov.physfn_of(self.fs, m.bdf))
                            and p not in mine)
        relied = [self._sriov_entry(pf, now.numvfs, None, None, hold.lease_id) for pf in pfs
                  if (now := sriov.physical_function(self.fs, pf)) is not None]
        if held or relied:
            self.journal.write(self.journal.read() + held + relied)
        self._sriov += relied
        return held

    def _entry(self, dev: PciDevice, group: int, lease_id: str,
               moved_by: str | None = None) -> dict:
        return {"bdf": dev.bdf, "group": group, "driver": dev.driver,
                **({"moved_by": moved_by} if moved_by else {}),
                "driver_override": dev.driver_override,
                "method": "driver_override" if dev.has_driver_override else "new_id",
                "ids": f"{dev.vendor} {dev.device}", "lease": lease_id,
                **_stamp(self.fs, self.manual)}

    def _move_all(self, plan: GroupPlan, new: list[dict], keep: str | None = None) -> None:
        try:
            with _disks_claimed(self.fs, plan, keep, nic_ports=self.nic_ports,
                                held_groups=frozenset(self._holds)):
                for dev in plan.to_move:
                    if dev.bdf != keep:
                        _move_to_vfio(self.fs, dev, self.timeout)
        except HarnessError as e:
            # Put back what already moved (and the half-moved one), newest first.
            leftovers = []
            for entry in reversed(new):
                result = _restore_entry(self.fs, entry, self.timeout)
                if result.status == "failed":
                    leftovers.append(result)
                else:
                    _drop(self.journal, entry)
            if leftovers:
                e.hint = f"{e.hint}; then {RESTORE_HINT}" if e.hint else RESTORE_HINT
                e.details = "\n".join(f"  not given back: {r}" for r in leftovers)
            raise

    def _release(self, group: int) -> list[Restored]:
        hold = self._holds.get(group)
        if hold is None:
            return []
        if hold.count > 1:
            hold.count -= 1
            return []
        results = []
        with self.journal.locked():
            for entry in reversed(hold.entries):
                result = _give_back(self.fs, entry, self.timeout)
                log.info("vfio: release %s", result)
                results.append(result)
                if result.status != "failed":
                    _drop(self.journal, entry)
        failed = {r.bdf for r in results if r.status == "failed"}
        if failed:
            # Kept, with only what is still out, so that a later release (once the QEMU that
            # held the group is gone) or close() gives it back.
            hold.entries = [e for e in hold.entries if e["bdf"] in failed]
            raise HostDeviceError(f"group {group}: {len(failed)} device(s) not given back",
                                  hint=RESTORE_HINT,
                                  details="\n".join(f"  {r}" for r in results))
        del self._holds[group]
        return results

    def close(self) -> list[Restored]:
        """Give back every group still held, and every USB device handed to usb-host (errors of
        one do not stop the others)."""
        results, errors = [], []
        for group in list(self._holds):
            self._holds[group].count = 1
            try:
                results += self._release(group)
            except HostDeviceError as e:
                errors.append(e)
        if not errors and self._sriov:  # VFs still held keep their PF's count
            kept = []
            with self.journal.locked():
                for entry in reversed(self._sriov):
                    result = _restore_sriov(self.fs, entry, self.timeout, self.journal.read())
                    log.info("sriov: release %s", result)
                    results.append(result)
                    if result.status == "failed":
                        kept.append(entry)
                        errors.append(HostDeviceError(f"{entry['bdf']}: {result.detail}",
                                                      details=str(result)))
                    elif result.status != "in-use":  # (in use: the entry stays for the last run)
                        _drop(self.journal, entry)
                        if "set" in entry:  # (its count is back: the VFs this run used too)
                            _drop_own_reliance(self.fs, self.journal, entry["bdf"])
            self._sriov = kept
        for name in dict.fromkeys(e["bdf"] for e in self.usb.entries):
            try:
                results += self.usb.give_back(name)
            except HostDeviceError as e:
                errors.append(e)
        if errors:
            raise HostDeviceError("; ".join(e.message for e in errors), hint=RESTORE_HINT,
                                  details="\n".join(e.details for e in errors))
        return results

    def __enter__(self) -> "VfioBinder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _disks_claimed(fs: Sysfs, plan: GroupPlan, keep: str | None = None,
                   refusing: str = "refusing to take", before: str = "the move",
                   nic_ports: "dict[str, int] | None" = None,
                   held_groups: "frozenset[int]" = frozenset()):
    """:func:`disks_claimed` of every disk below what moves (but ``keep``, libvirt's), and
    what the proof judged from the open files and the tree below every member it judged (but
    the bridges and ``keep``), and their network interfaces, read again with them
    (``nic_ports``: the inventory's, as the proof had them; ``held_groups``: this run's, as
    the proof had them). Not only what moves: vfio attaches the whole group to the guest's
    IOMMU domain, so a member kept on no driver or ``pci-stub`` that a flash tool or a
    user-space driver maps, or one on vfio-pci whose group a DPDK process opens, while the
    last reads take their seconds, is refused as the proof refuses it."""
    moving = [dev for dev in plan.to_move if dev.bdf != keep]
    judged = [dev for dev in plan.members if not dev.kernel_bridge and dev.bdf != keep]
    return disks_claimed(fs, [(f"{refusing} {dev.bdf}", name) for dev in moving
                              for name in disks_below(fs, dev.path)], before,
                         [(f"{refusing} {dev.bdf}", dev.path) for dev in judged], nic_ports,
                         held_groups)


@contextlib.contextmanager
def disks_claimed(fs: Sysfs, disks: "list[tuple[str, str]]", before: str = "the move",
                  below: "list[tuple[str, str]]" = (),
                  nic_ports: "dict[str, int] | None" = None,
                  held_groups: "frozenset[int]" = frozenset()):
    """An exclusive claim of each disk (the refusal's start, its /dev name), held from right
    after the proof to the end of the change (vfio's move, usb-host's open): a mount or a
    swapon in between fails (EBUSY) rather than lose its disk under it (the proof's own
    exclusive open is let go at once). A disk that cannot be claimed now was taken since the
    proof: refused. Once claimed, the open files are read again (:func:`_opened_since`: the
    disks' users, and everything else the proof judged from the open files and the tree below
    the devices judged: their nodes, tool nodes, BARs, GPIO lines, drivers below, a vfio-pci
    member's group; ``below``: the refusal's start, the device's sysfs path; ``held_groups``:
    the IOMMU groups this run holds, as the proof had them), then their network interfaces
    (:func:`_network_since`; ``nic_ports``: the inventory's ports of each NIC, as the proof had
    them), then the open files once more: neither read can be claimed, and each takes seconds
    any user can stretch, so each is followed by the other, and the last is the open files
    (what libvirt's QEMU, ``ser2net`` or ``sg_*`` opens without O_EXCL). Not in a loop: some
    read is always last, and its own seconds are the residual docs/vfio.md states."""
    fds: list[int] = []
    held: set[str] = set()
    try:
        for refusing, name in disks if fs.real_host else ():
            if name in held:  # (below two functions that move: a dual-ported disk's two
                continue      # paths, an NVMe subsystem's controllers; a second claim fails)
            try:
                fds.append(os.open(fs.path("dev", name), os.O_RDONLY | os.O_EXCL |
                                   os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW))
                held.add(name)
            except OSError as e:
                if e.errno == errno.ENOMEDIUM:
                    continue  # (an empty drive: nothing on it to use)
                raise HostDeviceError(
                    f"{refusing}: /dev/{name} cannot be claimed right before {before} "
                    f"({e.strerror}): something started using it since it was proven idle",
                    hint="run again; `python -m harness plan` says what uses it now") from e
        _opened_since(fs, disks, below, before, held, held_groups)
        _network_since(fs, below, before, nic_ports)
        _opened_since(fs, disks, below, before, held, held_groups)
        _nothing_new_below(fs, disks, below, before)
        yield
    finally:
        for fd in fds:
            os.close(fd)


def _opened_since(fs: Sysfs, disks: "list[tuple[str, str]]", below: "list[tuple[str, str]]",
                  before: str, held: "set[str]",
                  held_groups: "frozenset[int]" = frozenset()) -> None:
    """Refuses what was opened or taken since the last read: a claimed disk's users
    (:func:`_used_since`), then whatever else the proof judged from the open files and the
    tree below the devices judged (:func:`_held_since`). One read of the host's storage
    and open files, with the claim held (``held``), serves both: each walks every process's
    fds."""
    view = _claimed_view(fs, disks, held) if disks or below else None
    _used_since(view, disks, before)
    _held_since(fs, below, before, view, held_groups)


def _claimed_view(fs: Sysfs, disks: "list[tuple[str, str]]", held: "set[str]") -> StorageView:
    """The host's storage and open files read with the claim held (``held``): in full where
    there are disks to judge; with none, every process's open files and what the kernel
    holds (exports, consoles, p2pmem), no mount table: the proof's rules for nodes, tool
    nodes, BARs and GPIO lines need no more, and the mounts' sources would take their own
    seconds for nothing."""
    if disks:
        return StorageView.read(fs, frozenset(held))
    problems: list[str] = []
    return StorageView(fs, OpenFiles.read(fs, problems), [], problems, held=frozenset(held))


def _network_since(fs: Sysfs, below: "list[tuple[str, str]]", before: str,
                   nic_ports: "dict[str, int] | None" = None) -> None:
    """Refuses ``below``'s devices (the refusal's start, the sysfs path) once an interface of
    one (or of a PF's VF) is no longer idle by the proof's rule (:func:`network_uses`), or
    cannot be told, or once a PF that leaves has VFs (:func:`vfs_removed`): the re-reads
    under the claim come after the proof's network read and take seconds any user can
    stretch, and nothing claims an interface, so NetworkManager activating a profile
    meanwhile (a cable plugged in, ``nmcli con up``; its ``sriov.total-vfs`` makes VFs) would
    have the driver unbound under an address. Read between the two reads of the open files
    (:func:`disks_claimed`), so its own seconds are looked into too."""
    if not below:
        return
    net = NetView.read(fs)
    for refusing, path in below:
        uses = network_uses(fs, net, path, nic_ports)
        name = Path(path).name
        if SYSFS_BDF.fullmatch(name) and fs.pci_exists(name) and \
                fs.pci_device(name).driver != VFIO:  # (one on vfio-pci stays: its VFs too)
            uses += vfs_removed(fs, [fs.pci_device(name)])
        if uses:
            raise HostDeviceError(f"{refusing}: right before {before}, " + "; ".join(uses),
                                  hint="run again once that has ended (an interface down "
                                       "and left alone: `nmcli device set IFACE managed no`, "
                                       "`ip link set IFACE down`); `python -m harness plan` "
                                       "says what uses it now")


def _held_since(fs: Sysfs, below: "list[tuple[str, str]]", before: str,
                view: "StorageView | None", held_groups: "frozenset[int]" = frozenset()
                ) -> None:
    """Refuses a device of ``below`` (the refusal's start, the sysfs path) that the proof's
    rules for the open files and the tree below it (:func:`harness.host.safety.uses_below`,
    the proof's own code) find in use on ``view``, the storage and open files read with the
    claim held: no claim keeps a node from being opened, and the proof read them seconds
    before (its network read last, which any user can stretch). A node below it opened since
    (a disk's /dev/sg1, which a libvirt ``<hostdev type='scsi'>`` guest's QEMU opens; an NVMe
    controller's /dev/nvme0 or /dev/ng0n1; a USB serial port's tty: ``ser2net``), and as much
    a flash tool on its driver's node below no device (``sas3flash`` on /dev/mpt3ctl,
    ``nvmupdate64e`` on /dev/iqvlinux, /dev/mem), a GPIO line of a chip below it requested, a
    USB device below it put on usbip-host; a member on vfio-pci whose group node or a vfio
    device fd of it was opened (``dpdk-testpmd``). What cannot be read counts (fail
    closed)."""
    for refusing, path in below:
        uses = uses_below(fs, view, path, held_groups)
        if uses:
            raise HostDeviceError(f"{refusing}: right before {before}, " + "; ".join(uses),
                                  hint="run again once that use has ended (a flash tool done, "
                                       "a GPIO line let go, `usbip unbind`); `python -m "
                                       "harness plan` says what uses it now")


def _used_since(view: "StorageView | None", disks: "list[tuple[str, str]]",
                before: str) -> None:
    """Refuses a claimed disk that someone has open, or mounted, now: an open without O_EXCL
    is no claim (a libvirt guest's QEMU with ``<source dev='/dev/sdb'/>`` opens it O_RDWR,
    O_DIRECT; so do ``dd``, ``losetup``, an nvmet or LIO fileio export), and the proof read
    the storage seconds before (its network read last, which any user can stretch). Its
    partitions too, by path and by device number; what cannot be read counts as a use.
    ``view``: the storage read with the claim held (``view.held``: the disks claimed)."""
    if not disks:
        return
    assert view is not None
    problems = list(dict.fromkeys(view.problems))
    for refusing, name in disks:
        uses = view.use_of_block(name) + [f"cannot tell whether {name} is in use: {p}"
                                          for p in problems]
        if uses:
            raise HostDeviceError(f"{refusing}: right before {before}, with /dev/{name} "
                                  "claimed, " + "; ".join(dict.fromkeys(uses)),
                                  hint="run again once that use has ended; `python -m harness "
                                       "plan` says what uses it now")


def _nothing_new_below(fs: Sysfs, disks: "list[tuple[str, str]]",
                       below: "list[tuple[str, str]]", before: str) -> None:
    """Refuses ``below``'s devices (the refusal's start, the sysfs path) once a disk below one
    is not among the ``disks`` claimed (their /dev names): the disks were listed once, before
    the claims, and the re-reads take seconds, in which a stick plugged into a USB
    controller's port (udisks2 mounts it) or a drive pushed into an AHCI hot-swap bay
    (``mdadm --incremental`` assembles it) arrives below what leaves, neither claimed nor
    judged. Listed again last, right before the change; a disk that arrives after this is
    the residual docs/vfio.md states."""
    claimed = {name for _, name in disks}
    for refusing, path in below:
        new = [name for name in disks_below(fs, path) if name not in claimed]
        if new:
            raise HostDeviceError(
                f"{refusing}: right before {before}, "
                + ", ".join(f"/dev/{name}" for name in new) + " appeared below it since it "
                "was proven idle (a disk plugged in meanwhile: neither claimed nor judged)",
                hint="run again once it is unplugged, or once it is idle (unmounted, out of "
                     "its array); `python -m harness plan` says what uses it now")


def _libvirt_gives_back(fs: Sysfs, plan: GroupPlan) -> bool:
    """Whether libvirt may move ``plan``'s target (``<hostdev managed='yes'>``): its give-back
    on detach clears ``driver_override``, unbinds and writes ``drivers_probe``
    (virPCIDeviceUnbindFromStub), and looks at nothing else. That puts the target back as it
    was only when its host driver is the one a probe picks by the device's ids alone
    (:func:`_probed_driver`; one on no driver or ``pci-stub`` would be handed to whichever
    host driver claims it, and one on a driver its ``driver_override`` or a ``new_id`` chose,
    an NVMe drive SPDK's ``setup.sh`` put on ``uio_pci_generic``, would come back on
    ``nvme``, its override gone and its namespaces the host's block devices, while the
    release waits for uio_pci_generic in vain), and shares no DMA with a guest only when no
    other function of its group can be in one (libvirt gives a member back while a guest has
    another: the harness never does). An override that names that same driver (driverctl
    pinning a drive to ``nvme``) is put back by the release. Otherwise the harness moves the
    target too (its give-back puts the override back and binds by name), and libvirt, which
    finds it on vfio-pci already, leaves it there on detach."""
    target = plan.target
    others = [m for m in plan.members if m.bdf != target.bdf and not m.kernel_bridge]
    return (target.driver not in (None, "pci-stub", VFIO) and not others
            and target.driver_override in (None, target.driver)
            and _probed_driver(fs, target) == target.driver)


def _probed_driver(fs: Sysfs, dev: PciDevice) -> str | None:
    """The loaded PCI driver a probe picks for ``dev`` by its ids alone (``drivers_probe`` with
    no ``driver_override``): the one whose module's aliases in the running kernel's
    ``modules.alias`` and ``modules.builtin.alias`` match the device's ``modalias``. None
    when that cannot be told, which leaves the device to the harness's own give-back: no
    loaded driver matches, or more than one does (the kernel tries them in the order they
    registered, which sysfs does not show), or the modalias, the alias files or the loaded
    drivers cannot be read. Ids given to a driver at run time (``new_id``, a module's
    ``ids=`` parameter: ``pci-stub.ids=`` on the kernel command line) are shown nowhere, and
    the kernel tries them before any driver's own table: so None too while a driver loaded
    that may hold such ids (:func:`_may_hold_unseen_ids`) could take the device first."""
    modalias = fs.read(fs.pci_dir(dev.bdf) / "modalias")
    aliases = _pci_aliases(fs)
    if not modalias or aliases is None:
        return None
    try:
        loaded = sorted(p.name for p in fs.sys("bus", "pci", "drivers").iterdir())
    except OSError:
        return None
    aliased = {module for _, module in aliases}
    if any(_may_hold_unseen_ids(fs, d, aliased) for d in loaded):
        return None
    matching = {module for pattern, module in aliases  # (the literal head first: quick)
                if modalias.startswith(re.split(r"[*?\[]", pattern, maxsplit=1)[0])
                and fnmatch.fnmatchcase(modalias, pattern)}
    picked = [d for d in loaded if _driver_module(fs, d) in matching]
    return picked[0] if len(picked) == 1 else None


def _may_hold_unseen_ids(fs: Sysfs, driver: str, aliased: "set[str]") -> bool:
    """Whether loaded PCI ``driver`` (not vfio-pci, whose catch of a device the release puts
    right) may take a device by ids no file shows: any driver whose module has no ``pci:``
    alias (``aliased``: the modules that have one), built in or not. That is every driver
    with no id table of its own, which takes devices only by ids given at run time
    (``pci-stub``, whose ``pci-stub.ids=`` reserves a model for guests; ``uio_pci_generic``
    and ``igb_uio``, which DPDK and SPDK bind by ``new_id``); and, before Linux 6.18, whose
    ``modules.builtin.alias`` lists no PCI ids, every built-in one (a built-in r8169 takes a
    Realtek NIC kept on r8168 by ``driverctl``): there, with pcieport always loaded, libvirt
    is never left a move, and the harness's own, given back by name, is the one used."""
    return driver != VFIO and _driver_module(fs, driver) not in aliased


def _pci_aliases(fs: Sysfs) -> list[tuple[str, str]] | None:
    """The running kernel's PCI module aliases, (pattern, module) as ``modprobe`` matches
    them (``pci:v0000144Dd0000A808sv*sd*bc*sc*i*``, ``nvme``), from its ``modules.alias``
    and ``modules.builtin.alias`` (depmod's, kmod 27 on); None if either cannot be read."""
    release = os.uname().release
    out = []
    for name in ("modules.alias", "modules.builtin.alias"):
        text = next((t for base in ("lib", "usr/lib") if (t := fs.read(
            fs.path(base, "modules", release, name))) is not None), None)
        if text is None:
            return None
        out += [(f[1], f[2].replace("-", "_")) for f in (line.split() for line in
                                                          text.splitlines())
                if len(f) == 3 and f[0] == "alias" and f[1].startswith("pci:")]
    return out


def _moves(plan: GroupPlan) -> list[str]:
    """What a plan changes: the group's members, and each one it moves with its driver now,
    for telling whether the host changed between two reads."""
    moving = {m.bdf: m.driver for m in plan.to_move}
    return [m.bdf + (f" (moves from {moving[m.bdf] or 'no driver'})" if m.bdf in moving else "")
            for m in sorted(plan.members, key=lambda m: m.bdf)]


def vfio_state(root: "str | Path | Sysfs", bdfs) -> list[dict]:
    """For a test's bundle: each device's IOMMU group members with their drivers and
    overrides, as sysfs shows them now."""
    fs = Sysfs.of(root)
    out = []
    for bdf in bdfs:
        bdf = parse_bdf(bdf)
        if not fs.pci_exists(bdf):
            out.append({"bdf": bdf, "present": False})
            continue
        dev = fs.pci_device(bdf)
        members = fs.iommu_group_members(dev.iommu_group) if dev.iommu_group is not None else []
        out.append({**dev.to_dict(), "present": True,
                    "group_members": [fs.pci_device(m).to_dict() for m in members]})
    return out


def explain_vfio_add_error(root: "str | Path | Sysfs", host: str, qemu_desc: str,
                           who: str = "QEMU") -> HostDeviceError:
    """Turn QEMU's refusal of ``device_add vfio-pci,host=...`` (or libvirt's of its
    ``<hostdev>``: ``who``) into what is wrong on this host and what to do, read from sysfs
    now. Their own words go into the details."""
    fs = Sysfs.of(root)
    details = f"  {who} said: {qemu_desc}"
    try:
        bdf = parse_bdf(host)
    except HarnessError:
        return HostDeviceError(f"vfio-pci host={host!r} is not a PCI address",
                               hint="write it as 0000:05:00.0 (domain:bus:device.function)",
                               details=details)
    if not fs.pci_exists(bdf):
        return HostDeviceError(f"there is no PCI device {bdf} on this host",
                               hint="check the address: `python -m harness discover` lists the "
                                    "host's devices", details=details)
    dev = fs.pci_device(bdf)
    if "already attached" in qemu_desc or re.search(r"in use by driver \S+, domain", qemu_desc):
        # (QEMU's words; libvirt's: "PCI device ... is in use by driver QEMU, domain NAME")
        return HostDeviceError(f"{bdf} is already passed through to this QEMU by another vfio-pci "
                               f"device", hint="a host device goes to one guest device at a time: "
                                               "device_del the first one before adding it again",
                               details=details)
    if dev.iommu_group is None:
        return HostDeviceError(f"{bdf} has no IOMMU group: the IOMMU is off",
                               hint="enable VT-d in the firmware and boot the host with "
                                    "intel_iommu=on (`python -m harness doctor`)", details=details)
    if dev.driver != VFIO:
        return HostDeviceError(f"{bdf} is on its host driver {dev.driver or '(none)'}, not on "
                               f"vfio-pci", hint="the harness binds inventory devices itself; by "
                                                 "hand: driver_override, unbind, drivers_probe "
                                                 "(docs/vfio.md)", details=details)
    # The members vfio still needs moved, by the binder's own rule (plan_group).
    blockers = [f"{m.bdf} ({m.class_name}, {m.driver})"
                for m in plan_group(fs, bdf, None).to_move if m.bdf != bdf]
    if blockers or "not viable" in qemu_desc:
        return HostDeviceError(f"IOMMU group {dev.iommu_group} of {bdf} is not viable: "
                               + (", ".join(blockers) or "a member")
                               + " still on a host driver",
                               hint="every endpoint of the group must be on vfio-pci: list the "
                                    "device in the inventory and let the harness bind its group, "
                                    "or use a device with an IOMMU group of its own",
                               details=details)
    return HostDeviceError(f"QEMU refused to pass through {bdf}: {qemu_desc}",
                           hint="`python -m harness doctor` checks the host's vfio set-up",
                           details=details)
