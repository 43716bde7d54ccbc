"""Choose the accelerator by evidence, not by ``query-kvm``.

``/dev/kvm`` can exist (and QEMU's ``query-kvm`` say "enabled") on a host whose KVM is a software
layer that cannot run a stock kernel. So ``auto`` picks KVM only when the CPU advertises
hardware virtualization (vmx/svm), ``/dev/kvm`` opens read-write, and a probe boot of the built-in
guest under KVM reaches its ready marker within a deadline. Otherwise TCG.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from harness.core.errors import ConfigError, HarnessError


@dataclasses.dataclass(frozen=True)
class AccelChoice:
    name: str     # "kvm" or "tcg"
    reason: str


def cpu_virt_flags(cpuinfo: str) -> set[str]:
    """The hardware-virtualization flags (vmx, svm) in /proc/cpuinfo text."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return flags & {"vmx", "svm"}


def kvm_device_usable(path: str = "/dev/kvm") -> tuple[bool, str]:
    if not os.path.exists(path):
        return False, f"{path} does not exist"
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as e:
        return False, f"{path} cannot be opened read-write: {e.strerror}"
    os.close(fd)
    return True, f"{path} opens read-write"


def choose(requested: str, *, probe=None, cpuinfo_path: str = "/proc/cpuinfo",
           kvm_path: str = "/dev/kvm") -> AccelChoice:
    """Decide the accelerator for ``--accel requested``.

    ``probe`` is a callable that boots a guest under KVM and raises on failure; it is called only
    when the static evidence says KVM might work.
    """
    if requested == "tcg":
        return AccelChoice("tcg", "requested with --accel tcg")
    if requested not in ("kvm", "auto"):
        raise ConfigError(f"--accel {requested!r} is not one of auto, kvm, tcg",
                          hint="use --accel auto (the default), kvm or tcg")
    try:
        flags = cpu_virt_flags(Path(cpuinfo_path).read_text())
    except OSError:
        flags = set()
    usable, why = kvm_device_usable(kvm_path)
    problems = []
    if not flags:
        problems.append("the CPU advertises no vmx/svm")
    if not usable:
        problems.append(why)
    if not problems and probe is not None:
        try:
            probe()
        except HarnessError as e:
            problems.append(f"a probe boot under KVM failed: {e.message}")
    if problems:
        if requested == "kvm":
            raise ConfigError("--accel kvm, but KVM cannot run guests here: " + "; ".join(problems),
                              hint="use --accel tcg (or auto), or enable VT-x/AMD-V and load kvm_intel/kvm_amd")
        return AccelChoice("tcg", "KVM not usable: " + "; ".join(problems))
    return AccelChoice("kvm", f"CPU has {'/'.join(sorted(flags))}, {why}"
                       + (", probe boot passed" if probe else ""))
