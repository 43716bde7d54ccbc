"""Can this host run ``--backend vfio``? Checks with a fix for each, and a verdict.

    >>> checks = run_checks("/", inventory=load_inventory("inventory.toml"))   # doctest: +SKIP
    >>> print(format_report(checks)); sys.exit(exit_code(checks))

A :class:`Check` is ``ok`` True, False, or None (does not apply here). A failed check with
``required=False`` is a warning: the run works, with a caveat.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import shutil
import subprocess
from pathlib import Path

from harness.qemu.accel import cpu_virt_flags
from harness.core.errors import HostDeviceError
from harness.core.paths import UnsafePathError, trusted_program
from harness.core.text import shown
from harness.qemu.process import device_names, qemu_query
from harness.host import sriov
from harness.host.binding import Journal, owner_alive
from harness.host.inventory import Inventory, find_usb_device, host_problems
from harness.host.network import namespace_problem
from harness.host.safety import HostUsage, acs_override, plan_group
from harness.host.storage import StorageView
from harness.host.sysfs import Sysfs, UsbDevice

#: Where Debian/Fedora put the firmware QEMU loads.
SEABIOS = ("usr/share/seabios/bios-256k.bin", "usr/share/qemu/bios-256k.bin",
           "usr/share/seabios/bios.bin", "usr/share/qemu/bios.bin")
OVMF = ("usr/share/OVMF/OVMF_CODE.fd", "usr/share/OVMF/OVMF_CODE_4M.fd",
        "usr/share/ovmf/OVMF.fd", "usr/share/qemu/OVMF.fd", "usr/share/edk2/ovmf/OVMF_CODE.fd")
#: Locked memory QEMU needs to pin a guest's RAM for vfio when it does not run as root.
MEMLOCK_NEEDED = 2 << 30


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None
    detail: str
    fix: str = ""
    #: False: a failure is a warning, vfio still runs.
    required: bool = True

    @property
    def blocking(self) -> bool:
        return self.ok is False and self.required


def run_checks(root: "str | Path | Sysfs" = "/", qemu_binary: str = "qemu-system-x86_64",
               inventory: Inventory | None = None, *, device_help: str | None = None,
               journal: str | Path | None = None, qemu_timeout: float = 20.0) -> list[Check]:
    """All host checks. ``device_help`` is the output of ``qemu -device help`` (tests inject
    it; otherwise QEMU is asked, the only subprocess here). ``journal``: a vfio journal to look
    for devices a killed run left behind."""
    fs = Sysfs.of(root)
    cpuinfo = fs.read(fs.proc("cpuinfo")) or ""
    cmdline = (fs.read(fs.proc("cmdline")) or "").split()
    checks = [_cpu_check(cpuinfo), _kvm_check(fs, cpuinfo)]
    checks += _iommu_checks(fs, cpuinfo, cmdline)
    checks.append(_vfio_module_check(fs))
    checks.append(_interrupt_remapping_check(fs, cmdline))
    checks += _qemu_checks(qemu_binary, device_help, inventory, qemu_timeout)
    checks += _firmware_checks(fs)
    checks.append(_memlock_check())
    if journal is not None:
        checks.append(_journal_check(fs, Path(journal)))
    checks.append(_host_filesystems_check(fs))
    checks.append(_namespace_check(fs))
    if inventory is not None:
        checks += _inventory_checks(fs, inventory)
    return checks


def format_report(checks: list[Check]) -> str:
    marks = {True: " ok ", False: "FAIL", None: "n/a "}
    lines = []
    for c in checks:
        mark = "warn" if c.ok is False and not c.required else marks[c.ok]
        lines.append(f"[{mark}] {c.name}: {c.detail}")
        if c.ok is False and c.fix:
            lines.append(f"       fix: {c.fix}")
    lines.append(verdict(checks))
    return shown("\n".join(lines))  # (a name another user chose may be in any line)


def verdict(checks: list[Check]) -> str:
    blocking = [c for c in checks if c.blocking]
    if not blocking:
        warnings = sum(c.ok is False for c in checks)
        return "verdict: vfio can run here" + (f" ({warnings} warning(s) above)" if warnings
                                               else "")
    first = blocking[0]
    more = f" ({len(blocking) - 1} more problem(s) above.)" if len(blocking) > 1 else ""
    return f"verdict: vfio cannot run here: {first.detail}. Fix: {first.fix}.{more}"


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.blocking for c in checks) else 0


# -- the checks ---------------------------------------------------------------------------------


def _cpu_check(cpuinfo: str) -> Check:
    flags = cpu_virt_flags(cpuinfo)
    if flags:
        return Check("CPU virtualization", True, f"{', '.join(sorted(flags))} in /proc/cpuinfo")
    return Check("CPU virtualization", False,
                 "no vmx/svm flag in /proc/cpuinfo: guests run under TCG (slow, but vfio works)",
                 "enable VT-x/AMD-V in the firmware setup", required=False)


def _kvm_check(fs: Sysfs, cpuinfo: str) -> Check:
    kvm = fs.path("dev", "kvm")
    modules = sorted(p.name for p in fs.sys("module").glob("kvm_*")) if fs.sys("module").is_dir() \
        else []
    loaded = f" (modules: {', '.join(modules)})" if modules else ""
    if not kvm.exists():
        return Check("/dev/kvm", False, f"absent{loaded}: QEMU runs guests under TCG",
                     "modprobe kvm_intel (or kvm_amd) after enabling VT-x/AMD-V", required=False)
    if not os.access(kvm, os.R_OK | os.W_OK):
        return Check("/dev/kvm", False, f"present but not read-write for this user{loaded}",
                     "add the user to group kvm, or run as root", required=False)
    if not cpu_virt_flags(cpuinfo):
        return Check("/dev/kvm", False, f"present, but the CPU has no vmx/svm{loaded}: a "
                                        f"software KVM that may not boot a stock kernel; the "
                                        f"harness decides by a probe boot and may use TCG",
                     "nothing to do for vfio; for speed use a host with VT-x/AMD-V",
                     required=False)
    return Check("/dev/kvm", True, f"present and read-write{loaded}")


def _iommu_checks(fs: Sysfs, cpuinfo: str, cmdline: list[str]) -> list[Check]:
    groups = fs.iommu_groups()
    units = sorted(p.name for p in fs.sys("class", "iommu").glob("*")) \
        if fs.sys("class", "iommu").is_dir() else []
    intel = "AuthenticAMD" not in cpuinfo
    # Intel kernels want intel_iommu=on; AMD-Vi is on by default (amd_iommu=off turns it off).
    on_arg = "intel_iommu=on iommu=pt" if intel else "iommu=pt"
    off = [a for a in cmdline if a in ("intel_iommu=off", "amd_iommu=off", "iommu=off")]
    enabled = [a for a in cmdline if a.startswith(("intel_iommu=on", "amd_iommu="))
               or a == "iommu=pt"]
    checks = []
    split = acs_override(fs)  # (groups the kernel pretends, not the hardware's: no isolation)
    if groups and split:
        checks.append(Check("IOMMU groups", False, f"{len(groups)} groups, but {split}",
                            "boot without pcie_acs_override (GRUB_CMDLINE_LINUX, update-grub, "
                            "reboot): the harness takes no PCI device while it is there"))
    elif groups:
        checks.append(Check("IOMMU groups", True, f"{len(groups)} groups"))
    else:
        if off:
            fix = f"remove {' '.join(off)} from the kernel command line"
        elif not units:
            fix = (f"enable VT-d (AMD: IOMMU) in the firmware setup, boot with {on_arg}, "
                   f"and reboot")
        else:
            fix = f"add {on_arg} to the kernel command line (GRUB_CMDLINE_LINUX), " \
                  f"update-grub, reboot"
        checks.append(Check("IOMMU groups", False,
                            "no IOMMU groups (no VT-d/AMD-Vi, or not enabled)", fix))
    checks.append(Check(
        "IOMMU hardware", bool(units),
        f"{', '.join(units)} in /sys/class/iommu" if units
        else "nothing in /sys/class/iommu: the firmware exposes no DMAR/IVRS table, or the "
             "kernel ignores it",
        "enable VT-d (AMD: IOMMU) in the firmware setup", required=False))
    if off:
        checks.append(Check("IOMMU kernel command line", False, f"{' '.join(off)} is set",
                            f"remove it and boot with {on_arg}", required=False))
    elif enabled:
        checks.append(Check("IOMMU kernel command line", True, " ".join(enabled)))
    else:
        checks.append(Check("IOMMU kernel command line", bool(groups),
                            f"no {on_arg}" + (" (the kernel enables the IOMMU by default)"
                                              if groups else ""),
                            f"add {on_arg} to the kernel command line", required=False))
    return checks


def _vfio_module_check(fs: Sysfs) -> Check:
    if fs.pci_driver_dir("vfio-pci").is_dir():
        return Check("vfio-pci driver", True, "loaded")
    release = fs.read(fs.proc("sys", "kernel", "osrelease")) or os.uname().release
    found = []
    for base in ("lib/modules", "usr/lib/modules"):
        mods = fs.path(base, release)
        found += list(mods.glob("kernel/drivers/vfio/pci/vfio-pci.ko*"))
        if "vfio-pci.ko" in (fs.read(mods / "modules.builtin") or ""):
            found.append(mods / "modules.builtin")
    if found:
        return Check("vfio-pci driver", False, "available but not loaded",
                     "modprobe vfio-pci (and add vfio-pci to /etc/modules-load.d/vfio.conf)")
    return Check("vfio-pci driver", False, f"no vfio-pci module for kernel {release}",
                 "install a kernel with CONFIG_VFIO_PCI (every distribution kernel has it)")


def _interrupt_remapping_check(fs: Sysfs, cmdline: list[str]) -> Check:
    unsafe = (fs.read(fs.sys("module", "vfio_iommu_type1", "parameters",
                             "allow_unsafe_interrupts")) or "N") in ("Y", "1")
    units = sorted(fs.sys("class", "iommu").glob("*")) if fs.sys("class", "iommu").is_dir() else []
    if not units:
        return Check("interrupt remapping", None, "no IOMMU, so nothing to remap")
    disabled = "intremap=off" in cmdline
    supported = []
    for unit in units:
        ecap = fs.read(unit / "intel-iommu" / "ecap")
        if ecap is not None:
            supported.append(bool(int(ecap, 16) >> 3 & 1))  # ECAP.IR
        elif (unit / "amd-iommu").is_dir():
            supported.append(True)  # AMD-Vi always remaps interrupts
    if supported and all(supported) and not disabled:
        return Check("interrupt remapping", True, "supported by every IOMMU unit")
    why = "intremap=off on the kernel command line" if disabled else \
        "the IOMMU does not support it" if supported else "cannot tell from sysfs"
    if unsafe:
        return Check("interrupt remapping", False,
                     f"missing ({why}); vfio allowed anyway by "
                     f"vfio_iommu_type1 allow_unsafe_interrupts=Y: a device can inject "
                     f"interrupts into the host", "fine on a dedicated lab host",
                     required=False)
    if not supported:
        return Check("interrupt remapping", None, why)
    return Check("interrupt remapping", False,
                 f"missing ({why}): vfio refuses devices (\"No interrupt remapping support\")",
                 "drop intremap=off; or, on a lab host you trust, `options vfio_iommu_type1 "
                 "allow_unsafe_interrupts=1` in /etc/modprobe.d/vfio.conf")


def _qemu_checks(qemu: str, device_help: str | None, inventory: Inventory | None,
                 timeout: float) -> list[Check]:
    name = "QEMU binary"
    if device_help is None:
        path = shutil.which(qemu)
        if path is None:
            return [Check(name, False, f"{qemu} not found",
                          "install qemu-system-x86 or pass --qemu-binary PATH")]
        try:
            path = trusted_program(path)  # (as root: only a QEMU nobody else can have written)
        except UnsafePathError as e:
            return [Check(name, False, str(e), e.hint)]
        try:
            proc = qemu_query(path, ["-device", "help"], timeout)
        except subprocess.TimeoutExpired:
            return [Check(name, False, f"`{path} -device help` did not finish in {timeout:g} s",
                          "run it by hand to see why")]
        except OSError as e:
            return [Check(name, False, f"{path} cannot run: {e.strerror}", "fix the install")]
        if proc.returncode != 0:
            return [Check(name, False, f"`{path} -device help` exited {proc.returncode}: "
                                       f"{proc.stderr.strip()[:200]}", "fix the install")]
        device_help = proc.stdout
        checks = [Check(name, True, path)]
    else:
        checks = [Check(name, True, f"{qemu} (its -device help was given)")]
    devices = device_names(device_help)
    checks.append(Check("QEMU vfio-pci device", "vfio-pci" in devices,
                        "listed by -device help" if "vfio-pci" in devices
                        else "not in -device help: this QEMU was built without VFIO",
                        "install a QEMU built with VFIO (Debian's qemu-system-x86 has it)"))
    wants_usb = inventory is not None and bool(inventory.for_role("usb-device"))
    checks.append(Check("QEMU usb-host device", "usb-host" in devices,
                        "listed by -device help" if "usb-host" in devices
                        else "not in -device help: this QEMU was built without libusb "
                             "(CONFIG_USB_LIBUSB), so it cannot pass host USB devices",
                        "install a QEMU built with libusb (Debian's qemu-system-x86 has it)",
                        required=wants_usb))
    return checks


def _firmware_checks(fs: Sysfs) -> list[Check]:
    bios = [p for p in SEABIOS if fs.path(p).exists()]
    ovmf = [p for p in OVMF if fs.path(p).exists()]
    return [Check("SeaBIOS firmware", bool(bios), f"/{bios[0]}" if bios else
                  "no bios-256k.bin/bios.bin under /usr/share/seabios or /usr/share/qemu",
                  "apt install seabios"),
            Check("OVMF firmware", True if ovmf else None, f"/{ovmf[0]}" if ovmf else
                  "not installed (only UEFI guests need it: apt install ovmf)", required=False)]


def _memlock_check() -> Check:
    if os.geteuid() == 0:
        return Check("locked memory", True, "running as root: QEMU may pin guest RAM")
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY or soft >= MEMLOCK_NEEDED:
        return Check("locked memory", True, "ulimit -l allows pinning the guest's RAM")
    return Check("locked memory", False,
                 f"ulimit -l is {soft >> 10} KiB: QEMU must pin all guest RAM for vfio "
                 f"(vfio_dma_map ... Cannot allocate memory)",
                 "run the harness as root, or raise memlock in /etc/security/limits.conf")


def _journal_check(fs: Sysfs, path: Path) -> Check:
    name = "vfio journal"
    if not path.exists():
        return Check(name, True, f"{path}: no devices held")
    try:
        entries = Journal(path).read()
    except HostDeviceError as e:
        return Check(name, False, e.message, e.hint)
    dead = [e["bdf"] for e in entries if not owner_alive(fs, e) and e.get("kind") != "usb"]
    usb = [e["bdf"] for e in entries if not owner_alive(fs, e) and e.get("kind") == "usb"]
    live = [e["bdf"] for e in entries if e["bdf"] not in dead + usb]
    if dead or usb:  # (a USB device handed to usb-host: its interfaces may be on no driver)
        left = ([f"{', '.join(dead)} on vfio-pci"] if dead else []) + \
            ([f"the USB device(s) {', '.join(usb)} handed to usb-host"] if usb else [])
        return Check(name, False, f"a killed run left {' and '.join(left)}",
                     "python -m harness restore", required=False)
    return Check(name, True, f"{len(live)} device(s) held by a live run" if live
                 else "no devices held")


def _host_filesystems_check(fs: Sysfs) -> Check:
    unmapped = StorageView.read(fs).unmapped
    if not unmapped:
        return Check("host filesystems", True, "every local filesystem and swap maps to its "
                                               "disk controller, which the harness will not take")
    return Check("host filesystems", False,
                 f"cannot tell which controller holds {'; '.join(unmapped)}: every storage "
                 "controller counts as holding it",
                 "to take a storage controller anyway, mark its inventory entry "
                 "no_host_filesystems = true (only if none of those disks is on it)",
                 required=False)


def _namespace_check(fs: Sysfs) -> Check:
    problem = namespace_problem(fs)
    if problem is None:
        return Check("host network namespace", True, "the routes, connections, processes "
                                                     "and open files read are the host's (its "
                                                     "network, PID and mount namespaces)")
    return Check("host network namespace", False, problem,
                 "run the harness on the host itself (not in a container or another network "
                 "namespace): binding is refused there")


def _inventory_checks(fs: Sysfs, inventory: Inventory) -> list[Check]:
    usage = HostUsage.read(fs, inventory.cleared_storage(), inventory.nic_ports())
    checks = []
    for d in inventory.devices:
        name = f"inventory {d.name}"
        problems = host_problems(fs, d)
        if problems:
            what, fix = problems[0]
            checks.append(Check(name, False, what, fix))
        elif not d.is_pci:
            checks.append(_usb_device_check(fs, name, find_usb_device(fs, d), usage,
                                            bool(d.no_host_filesystems)))
        elif d.pf and not d.bdf:
            checks.append(_vf_check(fs, name, d, usage))
        else:
            plan = plan_group(fs, d.bdf, usage, allowed=inventory.pci_addresses())
            if plan.problems:
                checks.append(Check(name, False, "; ".join(plan.problems),
                                    "take it out of the inventory, or move the card to a slot "
                                    "with its own IOMMU group"))
                continue
            moving = [m.bdf for m in plan.to_move if m.bdf != d.bdf]
            checks.append(Check(name, True, f"{d.bdf} {plan.target.class_name} on "
                                            f"{plan.target.driver or 'no driver'}, IOMMU group "
                                            f"{plan.group} viable"
                                            + (f" (also takes {', '.join(moving)})" if moving
                                               else "")))
    return checks


def _vf_check(fs: Sysfs, name: str, d, usage: HostUsage) -> Check:
    """An SR-IOV VF entry before the run makes the VFs: may the harness have them?"""
    pf = sriov.physical_function(fs, d.pf)
    why = sriov.check_request(pf, d.pf, d.vfs, in_use=usage.verdict(d.pf).uses if pf else ())
    if why:
        return Check(name, False, why, "fix the entry's pf/vfs (docs/vfio.md, SR-IOV)")
    made = (f"has {pf.numvfs} VFs: used as they are" if pf.numvfs >= d.vfs else
            f"has no VF: the run makes {d.vfs} (sriov_numvfs, put back at its end)")
    return Check(name, True, f"VF {d.vf} of {d.pf} ({pf.driver or 'no driver'}, up to "
                             f"{pf.totalvfs} VFs): the PF {made}")


def _usb_device_check(fs: Sysfs, name: str, u: UsbDevice, usage: HostUsage,
                      cleared: bool = False) -> Check:
    reasons = usage.usb_verdict(u, cleared).uses
    if reasons:
        return Check(name, False, f"USB {u.name}: {reasons[0]}", "take it out of the inventory")
    # QEMU's usb-host opens /dev/bus/usb/BBB/DDD itself.
    node = fs.path("dev", "bus", "usb", f"{u.busnum:03d}", f"{u.devnum:03d}")
    if node.exists() and not os.access(node, os.R_OK | os.W_OK):
        return Check(name, False, f"/dev/bus/usb/{u.busnum:03d}/{u.devnum:03d} is not "
                                  f"read-write for this user",
                     "run as root, or add a udev rule giving the user the device")
    return Check(name, True, f"USB {u.name} [{u.ids}] {u.product or ''}".rstrip())
