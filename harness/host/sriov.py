"""SR-IOV: a NIC's physical function (PF) stays on the host, its virtual functions (VFs) go to
guests through vfio-pci like any other device.

The kernel makes a PF's VFs when a number is written to its ``sriov_numvfs`` (at most
``sriov_totalvfs``; a count can only change through 0, which removes every VF). The harness
writes it only when the PF has no VF yet, journals the count it found (0) before the write, and
writes it back when it lets go. Before the write it turns the PF's ``sriov_drivers_autoprobe``
off (journaled too, put back), so the host's VF driver (igbvf, ixgbevf, iavf) never takes the
new VFs: they are for vfio-pci, a host driver would only make netdevs the host's network
manager picks up, and a VF driver that probes first consumes the VF's one-time "PF reset done"
mailbox bit (82576: RSTD, clear on read), after which the guest's igbvf refuses the VF ("PF
still in reset state"). A run killed in between is put right by ``python -m harness
restore`` as a device left on vfio-pci is (:func:`harness.host.binding.restore_from_journal`).

    >>> vfs = binder.enable_vfs("0000:05:00.0", 2)       # doctest: +SKIP
    >>> binder.bind(vfs[0], allowed=...)                  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import re

from harness.core.errors import HostDeviceError, WaitTimeout
from harness.core.waits import wait_until
from harness.host.sysfs import Sysfs, parse_bdf

_VIRTFN = re.compile(r"virtfn(\d+)")


@dataclasses.dataclass(frozen=True)
class PhysicalFunction:
    """A PCI function with the SR-IOV capability, as sysfs shows it now."""

    bdf: str
    totalvfs: int
    numvfs: int
    #: Its VFs' addresses, by VF index (``virtfn0``, ``virtfn1``, ...).
    vfs: tuple[str, ...]
    driver: str | None


def physical_function(root: "str | Sysfs", bdf: str) -> PhysicalFunction | None:
    """The PF at ``bdf``; None when the function has no SR-IOV capability (no
    ``sriov_totalvfs``: not SR-IOV hardware, SR-IOV off in the firmware, or a driver without
    it)."""
    fs = Sysfs.of(root)
    bdf = parse_bdf(bdf)
    d = fs.pci_dir(bdf)
    total = fs.read(d / "sriov_totalvfs")
    if total is None:
        return None
    numvfs = fs.read(d / "sriov_numvfs")
    return PhysicalFunction(bdf, _int(total), _int(numvfs or "0"), tuple(vfs_of(fs, bdf)),
                            fs.link_name(d / "driver"))


def vfs_of(root: "str | Sysfs", pf: str) -> list[str]:
    """The VFs of ``pf`` now, ordered by VF index."""
    fs = Sysfs.of(root)
    d = fs.pci_dir(parse_bdf(pf))
    found = []
    for link in d.glob("virtfn*"):
        m = _VIRTFN.fullmatch(link.name)
        name = fs.link_name(link)
        if m and name:
            found.append((int(m[1]), name))
    return [name for _, name in sorted(found)]


def physfn_of(root: "str | Sysfs", bdf: str) -> str | None:
    """The PF of a VF (None: ``bdf`` is not a VF)."""
    fs = Sysfs.of(root)
    return fs.link_name(fs.pci_dir(parse_bdf(bdf)) / "physfn")


def vf_index(root: "str | Sysfs", pf: str, vf: str) -> int | None:
    """``vf``'s index among ``pf``'s VFs (the N of the PF's ``virtfnN`` link to it), as
    devlink numbers its port (``pf0vf<N>``); None when no link of the PF names it."""
    fs = Sysfs.of(root)
    vf = parse_bdf(vf)
    for link in fs.pci_dir(parse_bdf(pf)).glob("virtfn*"):
        m = _VIRTFN.fullmatch(link.name)
        if m and fs.link_name(link) == vf:
            return int(m[1])
    return None


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        return 0


def check_request(pf: PhysicalFunction | None, bdf: str, count: int, *,
                  in_use: "tuple[str, ...] | list[str]") -> str | None:
    """Why ``count`` VFs of the PF at ``bdf`` cannot be had (None: they can). ``in_use``: why
    the PF is not proven idle (:meth:`harness.host.safety.HostUsage.verdict`; empty: it is)."""
    if pf is None:
        return (f"{bdf} has no SR-IOV capability (no sriov_totalvfs): not an SR-IOV device, "
                "SR-IOV switched off in the firmware, or its driver does not offer it")
    if count < 1:
        return f"vfs = {count}: ask for at least one VF"
    if count > pf.totalvfs:
        return f"{bdf} offers at most {pf.totalvfs} VFs (sriov_totalvfs), {count} asked for"
    if pf.numvfs >= count:
        return None  # nothing to write: the VFs are there
    if pf.numvfs:
        return (f"{bdf} has {pf.numvfs} VFs already and the kernel changes a count only "
                f"through 0, which would remove them from whoever uses them")
    if in_use:
        return (f"{bdf} is not proven idle ({'; '.join(in_use)}): making VFs resets some PFs' "
                "links (ixgbe, i40e), so the harness writes sriov_numvfs only on an idle PF")
    return None


def autoprobe(fs: Sysfs, pf: str) -> int | None:
    """The PF's ``sriov_drivers_autoprobe`` (1: the host's VF driver takes each new VF; None:
    a kernel older than 4.12, without the switch)."""
    text = fs.read(fs.pci_dir(pf) / "sriov_drivers_autoprobe")
    return None if text is None else _int(text)


def set_autoprobe(fs: Sysfs, pf: str, value: int) -> None:
    fs.write(fs.pci_dir(pf) / "sriov_drivers_autoprobe", str(value))


def set_numvfs(fs: Sysfs, pf: str, count: int, timeout: float) -> list[str]:
    """Write ``count`` to the PF's ``sriov_numvfs`` and wait until its VFs are on the bus."""
    fs.write(fs.pci_dir(pf) / "sriov_numvfs", str(count))

    def all_there():
        vfs = vfs_of(fs, pf)
        if len(vfs) == count and all(fs.pci_exists(v) for v in vfs):
            return (vfs,)  # (truthy even when there are none to wait for)
        raise HostDeviceError(f"{len(vfs)} VFs on the bus")
    try:
        return wait_until(f"{pf}'s {count} VFs after writing sriov_numvfs", all_there, timeout,
                          interval=0.05, retry_on=(HostDeviceError,))[0]
    except WaitTimeout as e:
        raise HostDeviceError(f"{pf}: {e.details.removeprefix('last seen: ')} {timeout:g} s "
                              f"after writing {count} to sriov_numvfs",
                              hint="`dmesg | tail` says why the PF's driver did not make them") from e
