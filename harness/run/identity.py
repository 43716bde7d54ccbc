"""Which host, QEMU, guest and harness a run was: written into summary.json and the report, so
runs of several hosts, QEMU builds and nights can be told apart and put side by side."""

from __future__ import annotations

import hashlib
import platform
import shlex
import socket
import subprocess
from pathlib import Path

from harness.images import builtin as images
from harness.qemu.process import qemu_query
import tomllib
from importlib.metadata import PackageNotFoundError, version


def run_identity(*, qemu_binary: str, qemu_version: str, inventory: Path | None,
                 args: list[str], root: Path = Path("/")) -> dict:
    return {
        "host": socket.gethostname(),
        "cpu": _cpu_model(root),
        "host_kernel": platform.release(),
        "iommu": _iommu(root),
        "inventory_sha256": _digest(inventory) if inventory else None,
        "inventory_roles": _roles(inventory) if inventory else None,
        "qemu": {"binary": qemu_binary, "version": qemu_version,
                 "build": _qemu_build(qemu_binary)},
        "harness": _harness_version(),
        "command": shlex.join(["pytest", *args]),
    }


def _cpu_model(root: Path) -> str | None:
    try:
        for line in (root / "proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _iommu(root: Path) -> str:
    groups = root / "sys/kernel/iommu_groups"
    try:
        n = sum(1 for _ in groups.iterdir())
    except OSError:
        n = 0
    try:
        cmdline = (root / "proc/cmdline").read_text().split()
    except OSError:
        cmdline = []
    flags = [w for w in cmdline if w.startswith(("intel_iommu=", "amd_iommu=", "iommu="))]
    return (f"{n} IOMMU groups" if n else "no IOMMU groups") + (f" ({' '.join(flags)})" if flags else "")


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _roles(path: Path) -> list[str] | None:
    """The roles the inventory's devices can play: what this host covers."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return sorted({d.get("role") for d in data.get("device", []) if d.get("role")})


def _qemu_build(binary: str) -> str | None:
    """QEMU's own version line (it names the distribution build, like ``Debian 1:7.2+dfsg-7``)."""
    try:
        out = qemu_query(binary, ["--version"], timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0].strip() if out else None


def _harness_version() -> dict:
    try:
        v = version("hotplug-harness")
    except PackageNotFoundError:
        v = None
    commit = dirty = None
    if (images.REPO_ROOT / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(images.REPO_ROOT), "rev-parse", "HEAD"],
                                    capture_output=True, text=True, timeout=10).stdout.strip() or None
            status = subprocess.run(["git", "-C", str(images.REPO_ROOT), "status", "--porcelain",
                                     "--untracked-files=no"], capture_output=True, text=True,
                                    timeout=10)
            dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            pass
    return {"version": v, "commit": commit, "dirty": dirty}
