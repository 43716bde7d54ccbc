"""The suite checks itself at its end: no QEMU it started is still running, no temporary
directory of a guest is left, and the guest image it booted from is unchanged."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import stat
import tempfile
from pathlib import Path

from harness.core.paths import run_tmp_prefix
from harness.guest.snapshot import STATES_TAG
from harness.core.paths import sha256 as _sha256
from harness.qemu.machine import GuestImage
from harness.qemu.process import process_start


def _tmp_dirs(owner: str | None) -> set[str]:
    """This run's temporary folders: real folders of ours (another user's look-alike is not
    ours to report or remove)."""
    tmp = Path(tempfile.gettempdir())
    return {p.name for p in tmp.glob(f"{run_tmp_prefix(owner)}*") if _ours(p)}


def _ours(p: Path) -> bool:
    try:
        st = os.lstat(p)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()


def _is_states(name: str) -> bool:
    """The run's saved guest states (harness.guest.snapshot), not a guest's leftover."""
    return f"-{STATES_TAG}-" in name


def _fingerprint(image: GuestImage) -> dict[str, str]:
    """Built-in image: the checksums its manifest recorded at build time are the reference.
    A user's files: size and modification time (hashing a 20 GB disk is not affordable)."""
    out = {}
    for p in (image.kernel, image.initrd, image.disk):
        if p is not None and Path(p).exists():
            st = Path(p).stat()
            out[str(p)] = f"{st.st_size}:{st.st_mtime_ns}"
    return out


def sweep_stale() -> list[str]:
    """Remove guest temp directories (sockets, overlays) of runs whose process is gone -- a
    killed test runner's; its QEMUs died with it (PR_SET_PDEATHSIG). Returns what was removed."""
    removed = []
    for d in Path(tempfile.gettempdir()).glob("hh-*-*"):
        tag = d.name.split("-")[1]
        try:
            st = os.lstat(d)
        except OSError:
            continue
        # only real folders of ours: root never deletes what another user made or links to
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and tag.isdigit() \
                and not Path(f"/proc/{tag}").exists():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
    return removed


def _kill_recorded_qemus(run_dir: Path) -> list[tuple[int, str]]:
    """Kill the QEMUs of this run that still run, by the PIDs its guests recorded with their
    start times (harness.qemu.process.record_pid); (pid, guest) of each one killed. A PID
    whose process started at another time is another process's now (on a shared host, maybe
    another user's QEMU): root never kills it, nor one whose start was not recorded."""
    killed = []
    for pidfile in sorted((run_dir / "guests").glob("*/qemu.pid")):
        try:
            pid = int(pidfile.read_text())
            start = int((pidfile.parent / "qemu.start").read_text())
        except (OSError, ValueError):
            continue
        if _alive_qemu(pid, start):
            os.kill(pid, signal.SIGKILL)
            killed.append((pid, pidfile.parent.name))
    return killed


def sweep_run(run_dir: Path, owner: str) -> list[str]:
    """End what this run left when it was interrupted (a worker killed mid-test): its QEMUs,
    by the PIDs its guests recorded, and its temporary directories. Returns what was done."""
    done = [f"killed QEMU pid {pid} ({guest}), left by an interrupted worker"
            for pid, guest in _kill_recorded_qemus(run_dir)]
    for name in sorted(_tmp_dirs(owner)):
        shutil.rmtree(Path(tempfile.gettempdir()) / name, ignore_errors=True)
        if not _is_states(name):  # the run's saved guest states: theirs to go now
            done.append(f"removed {tempfile.gettempdir()}/{name}, left by an interrupted worker")
    return done


@dataclasses.dataclass
class Snapshot:
    tmp_dirs: set[str]
    image_fingerprint: dict[str, str] | None = None
    #: The run's owner tag (harness.runconfig): whose temporary folders are looked at.
    owner: str | None = None

    @classmethod
    def take(cls, image: "GuestImage | list[GuestImage | None] | None" = None,
             owner: str | None = None) -> "Snapshot":
        """``image``: the user's image(s) whose files must not change (size and mtime)."""
        found = [i for i in (image if isinstance(image, list) else [image]) if i is not None]
        prints = {k: v for i in found for k, v in _fingerprint(i).items()}
        return cls(_tmp_dirs(owner), prints or None, owner)

    def for_owner(self, owner: str) -> "Snapshot":
        """The same image fingerprints, for a run whose owner tag was decided after the
        snapshot was taken (no temporary folder of a new owner existed before it)."""
        return self if owner == self.owner else dataclasses.replace(self, tmp_dirs=set(),
                                                                    owner=owner)


def _alive_qemu(pid: int, start: int) -> bool:
    """Whether ``pid`` is still the QEMU that started at ``start`` and has not exited."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return b"qemu-system" in cmdline and state != "Z" and process_start(pid) == start


def check(before: Snapshot, run_dir: Path,
          image: "GuestImage | list[GuestImage | None] | None") -> list[str]:
    """Problems left behind, each one line that says what and what to do. Stray QEMU processes
    of this run (by the PIDs its guests recorded) are killed after being reported."""
    problems = [f"QEMU pid {pid} ({guest}) was still running at the end of the run; killed it. "
                "A Guest was not closed: report this as a harness bug"
                for pid, guest in _kill_recorded_qemus(run_dir)]
    # (the run's saved guest states are not a guest's leftover: harness.snapshot; they go with
    # the run's other temporary folders at its very end, sweep_run)
    for name in sorted(n for n in _tmp_dirs(before.owner) - before.tmp_dirs
                       if not _is_states(n)):
        problems.append(f"temporary directory {tempfile.gettempdir()}/{name} (sockets, overlays) "
                        "was left behind: a Guest was not closed")
    for img in (i for i in (image if isinstance(image, list) else [image]) if i is not None):
        if img.builtin:
            for name, want in img.manifest.get("sha256", {}).items():
                if _sha256(img.kernel.parent / name) != want:
                    problems.append(f"the guest image's {name} changed during the run "
                                    f"(checksum differs from its build): delete {img.kernel.parent} "
                                    "and rebuild; a test wrote to the base image")
            continue
        now = _fingerprint(img)
        if before.image_fingerprint is not None and any(
                before.image_fingerprint.get(k) != v for k, v in now.items()):
            problems.append("your guest image files changed during the run (size or mtime): "
                            "the harness must only use them through an overlay")
    return problems
