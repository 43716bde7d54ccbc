"""Which host, QEMU, guest and harness a run was: written into summary.json and the report, so
runs of several hosts, QEMU builds and nights can be told apart and put side by side."""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import socket
import subprocess
from pathlib import Path

from harness.core.paths import read_plain_file
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
    return {"version": v, **_git_state(images.REPO_ROOT)}


#: What a run records as "dirty" when it ran no git: git reads .git/config (core.fsmonitor, a
#: filter driver's clean command, an include), so as root, on a .git others can write, it
#: would run their code as root.
DIRTY_NOT_CHECKED = "not checked (.git writable by others)"

#: git as root runs no fsmonitor hook and no hook at all, whatever .git/config says.
_GIT = ["git", "-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null"]


def _git_state(repo: Path) -> dict:
    """The commit of ``repo`` and whether its tracked files changed. As root, git runs only on
    a .git no one but root (or the user who ran sudo) can write; otherwise the commit is read
    from HEAD and the refs, and the changes are not checked."""
    dirs = _git_dirs(repo)
    if dirs is None:
        return {"commit": None, "dirty": None}
    if os.geteuid() == 0 and not _trusted_git(repo, *dirs):
        return {"commit": _read_head(*dirs), "dirty": DIRTY_NOT_CHECKED}
    commit = dirty = None
    try:
        commit = subprocess.run([*_GIT, "-C", str(repo), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
        status = subprocess.run([*_GIT, "-C", str(repo), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=10)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"commit": commit, "dirty": dirty}


def _git_dirs(repo: Path) -> tuple[Path, Path] | None:
    """The git folder of ``repo`` and its common folder (they differ in a worktree)."""
    dot = repo / ".git"
    try:
        if dot.is_dir():
            return dot, dot
        text = read_plain_file(dot)
    except OSError:
        return None
    if not text.startswith("gitdir:"):
        return None
    gitdir = repo / text.split(":", 1)[1].strip()
    try:
        common = gitdir / read_plain_file(gitdir / "commondir").strip()
    except OSError:
        common = gitdir
    return gitdir, common


def _trusted_git(repo: Path, gitdir: Path, common: Path) -> bool:
    """Whether only root (or the user who ran sudo) can write what git reads as its config;
    a config that includes another file is not followed, so it is not trusted."""
    owners = {0, os.geteuid()}
    if os.environ.get("SUDO_UID", "").isdigit():
        owners.add(int(os.environ["SUDO_UID"]))
    paths = [repo / ".git", gitdir, common, common / "config"] + [
        p for p in (gitdir / "config.worktree", common / "config.worktree") if p.exists()]
    try:
        for path in paths:
            st = path.stat()
            if st.st_uid not in owners or st.st_mode & 0o022:
                return False
        configs = [(p).read_text() for p in paths if p.name.startswith("config")]
    except OSError:
        return False
    return not any(line.strip().lower().startswith("[include")
                   for text in configs for line in text.splitlines())


def _read_head(gitdir: Path, common: Path) -> str | None:
    """The commit HEAD names, read from the files (no git run)."""
    try:
        head = read_plain_file(gitdir / "HEAD").strip()
        if not head.startswith("ref: "):
            return head if _is_hash(head) else None
        ref = head.removeprefix("ref: ").strip()
        loose = common / ref
        if loose.is_file():
            value = read_plain_file(loose).strip()
            return value if _is_hash(value) else None
        for line in read_plain_file(common / "packed-refs").splitlines():
            value, _, name = line.partition(" ")
            if name.strip() == ref and _is_hash(value):
                return value
    except OSError:
        pass
    return None


def _is_hash(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)
