"""The lab host (L1): its QEMU command line, the folders shared into it, and the process that
runs it with its console copied out and its deadlines watched."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

from harness.core.errors import ConfigError, LabError, QemuLaunchError
from harness.core.paths import open_nofollow
from harness.qemu.process import QemuProcess
from harness.lab import devices
from harness.lab.devices import NVME_DISK_BYTES, SATA_DISK_BYTES, STICK_BYTES
from harness.lab.image import LabImage
from harness.scenario.devices import _disk_image

SHARE_SLOT = 0x10  # the lab root's 9p device; the shared folders' follow it
MAX_SHARES = 8
#: How the guests under test (L2) run inside the lab host (``--lab-accel``): KVM nested on the
#: emulated SVM of L1's TCG, or TCG inside TCG. Measured on this kind of machine: docs/lab.md.
LAB_ACCELS = ("kvm", "tcg")
DEFAULT_LAB_ACCEL = "kvm"


def lab_argv(image: LabImage, qemu: list[str], workdir: Path, shares: dict[str, Path],
             job: Path | None, memory_mb: int = 8192, cpus: int = 2) -> list[str]:
    """L1's command line; ``qemu`` is the emulator's own part (:meth:`LabQemu.argv`)."""
    disk, stick = workdir / "sata-disk.raw", workdir / "usb-stick.raw"
    nvme = workdir / "nvme-disk.raw"
    if len(shares) > MAX_SHARES:
        raise ConfigError(f"the lab host takes at most {MAX_SHARES} shared folders, not "
                          f"{len(shares)}", hint="keep the report folder and image cache under "
                                                 "the repository")
    for path, size in ((disk, SATA_DISK_BYTES), (stick, STICK_BYTES), (nvme, NVME_DISK_BYTES)):
        _disk_image(path, size)  # two partitions, like the guide's /dev/sdb (new files only)
    share_arg = ",".join(f"{tag}:{path}" for tag, path in shares.items())
    # (loglevel=4: errors reach the console too, among them the RCU stall reports that are
    # the only sign of a wedge where the stuck CPU's own watchdog cannot speak: LabHost)
    append = ("console=ttyS0 intel_iommu=on iommu=pt panic=-1 quiet loglevel=4 "
              f"hh.shares={share_arg} hh.job={job or ''}")
    argv = [*qemu, "-name", "hh-lab", "-M", "q35", "-accel", "tcg,tb-size=512",
            "-cpu", "max", "-smp", str(cpus), "-m", str(memory_mb),
            "-nodefaults", "-display", "none", "-no-reboot",
            "-chardev", f"file,id=console,path={workdir / 'console.log'}", "-serial", "chardev:console",
            "-device", "intel-iommu,intremap=on,caching-mode=on",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", append,
            "-fsdev", f"local,id=labroot,path={image.root},security_model=none,readonly=on,"
                      "multidevs=remap",
            "-device", f"virtio-9p-pci,fsdev=labroot,mount_tag=labroot,addr={SHARE_SLOT:#x}"]
    # The shares at fixed slots too: auto-assigned ones took 00:03.0 from the lab NIC when a
    # run had more shares than usual (a --report-dir outside the repository).
    for i, (tag, path) in enumerate(shares.items(), start=1):
        argv += ["-fsdev", f"local,id={tag},path={path},security_model=none,multidevs=remap",
                 "-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag},addr={SHARE_SLOT + i:#x}"]
    return argv + devices.qemu_args(disk, stick, nvme)


def shares_for(paths: list[Path]) -> dict[str, Path]:
    """The host folders to share into the lab (each at its own path), without nesting."""
    out: list[Path] = []
    for p in sorted({p.resolve() for p in paths}, key=lambda p: (len(p.parts), str(p))):
        if any(p == q or q in p.parents for q in out):
            continue
        if p.parts[1:2] and p.parts[1] in ("proc", "sys", "dev"):
            raise ConfigError(f"cannot share {p} into the lab host: the lab host has its own "
                              f"/{p.parts[1]}", hint="run from (and report into) a plain path")
        if re.search(r"[\s,:]", str(p)):
            raise ConfigError(f"cannot share {p} into the lab host: its path has a space, comma "
                              "or colon", hint="run from (and report into) a plain path")
        out.append(p)
    return {f"share{i}": p for i, p in enumerate(out)}


#: L1's soft-lockup watchdog: a CPU that ran kernel code this long without scheduling. Seen in
#: the lab only as nested KVM on TCG wedging (a qemu-system-x86 of an L2 guest stuck, "45s",
#: then "71s", and the lab never printed again); the watchdog speaks after 20-25 s, so a stuck
#: time of a minute is no passing hiccup. The run stops at once instead of waiting out the
#: silence deadline (over 12 minutes).
STUCK_SECONDS = 60
_STUCK = re.compile(r"watchdog: BUG: soft lockup - CPU#\d+ stuck for (\d+)s!")
#: The other wedge: a CPU stuck in the L2 guest whose own timer interrupts no longer reach L1,
#: so its watchdog never speaks, and every task whose timer is queued on it sleeps forever
#: (seen: one L1 vCPU at 100 %, the other idle, the lab silent). RCU reports the stall 21 s
#: into it. Seen in CI-like `make lab`: one report ("self-detected stall on CPU", "Possible
#: timer handling issue on cpu=1", "kthread starved"), cut off in its own stack dump, then
#: nothing more: no second report comes, so the first one ends the run.
_RCU_STALL = re.compile(r"rcu: INFO: rcu_\w+ (?:detected stalls on CPUs/tasks|self-detected stall)")


#: The lab host's job writes its uptime to this file of the run folder (shared over 9p) every
#: HEARTBEAT_SECONDS while its pytest runs: a test may print nothing for minutes (the SIGTERM
#: test runs a pytest of its own inside L1: 199-300 s, longer on a busy machine), and silence
#: alone then read as a hung lab host (seen Dec 5: "printed nothing for 309 s", the lab
#: restarted, the one test left passed in 170 s). A lab host whose kernel still runs its
#: tasks is not hung; one that is stops beating too. A wedge that leaves one CPU running
#: (tasks queued on the stuck one sleep forever) is what the RCU stall report above catches.
HEARTBEAT = "alive"
HEARTBEAT_SECONDS = 20


class LabHost:
    """One L1 QEMU process running one job, its console copied to a log and to ``echo``."""

    def __init__(self, argv: list[str], workdir: Path, *, boot_timeout: float,
                 silence_timeout: float, beat_timeout: float | None = None, echo=None):
        """``boot_timeout``: QEMU start to "lab: ready" (a lab not up by then hangs in its
        boot and would otherwise be noticed only at --lab-timeout). ``silence_timeout``: after
        "lab: ready" the run inside prints at least a character a test; a lab host silent for
        this long is hung (seen once: nested KVM on TCG wedged L1), not slow.
        ``beat_timeout``: once the job's heartbeat has come, the silence deadline is at most
        this (a healthy job beats every HEARTBEAT_SECONDS whatever its tests print)."""
        self.argv = argv
        self.boot_timeout = boot_timeout
        self.silence_timeout = silence_timeout
        self.workdir = workdir
        self.console_log = workdir / "console.log"
        self.heartbeat = workdir / HEARTBEAT
        self._beat = ""
        self.beat_timeout = beat_timeout
        self.qemu_log = workdir / "qemu.log"
        self.echo = echo
        self.qemu = QemuProcess(argv, self.qemu_log)
        self.marks: dict[str, float] = {}
        #: L1's kernel said one of its CPUs has been stuck for a long time (the line).
        self.wedged: str | None = None

    @property
    def process(self) -> subprocess.Popen | None:
        return self.qemu.popen

    def run(self, deadline: float) -> int:
        """Start L1 and copy its console until it powers off; QEMU's exit status."""
        # (never through a link: QEMU, as root, appends L1's console to what is there)
        for path, text, how in ((self.workdir / "lab.cmdline", shlex.join(self.argv) + "\n",
                                 os.O_TRUNC), (self.console_log, "", os.O_APPEND)):
            with os.fdopen(open_nofollow(path, os.O_WRONLY | os.O_CREAT | how), "w") as f:
                f.write(text)
        t0 = time.monotonic()
        try:
            self.qemu.start()
        except QemuLaunchError as e:
            raise LabError(f"cannot start the lab host: {e.message}", hint=e.hint) from e
        self._pos, self._pending, heard = 0, b"", t0
        try:
            while True:
                done = self.process.poll() is not None
                if self._copy_console(t0) | self._beating():
                    heard = time.monotonic()
                if done:
                    return self._ended()
                self._check_deadlines(t0, heard, deadline)
                time.sleep(0.2)
        finally:
            self.stop()

    def _copy_console(self, t0: float) -> bool:
        """Copy what the console log gained to ``echo``, noting the lab's marks; whether it
        gained anything."""
        with open(self.console_log, "rb") as f:
            f.seek(self._pos)
            chunk = f.read()
        self._pos += len(chunk)
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            m = re.match(r"lab: (stage 1 done|ready)", line)
            if m:
                self.marks[m.group(1)] = round(time.monotonic() - t0, 2)
            stuck = _STUCK.search(line)
            if self.wedged is None and (_RCU_STALL.search(line) or (
                    stuck and int(stuck.group(1)) >= STUCK_SECONDS)):
                self.wedged = line.strip()
            if self.echo:
                self.echo(line)
        return bool(chunk)

    def _beating(self) -> bool:
        """Whether the job's heartbeat file changed since the last look."""
        try:
            beat = self.heartbeat.read_text()
        except OSError:
            return False
        changed, self._beat = beat != self._beat, beat
        return changed

    def _ended(self) -> int:
        if self._pending and self.echo:
            self.echo(self._pending.decode("utf-8", "replace"))
        if self.process.returncode and self.echo:
            for line in self.qemu_log.read_text(errors="replace").splitlines()[-10:]:
                self.echo(f"lab QEMU: {line}")
        return self.process.returncode

    def _check_deadlines(self, t0: float, heard: float, deadline: float) -> None:
        now = time.monotonic()
        if "ready" not in self.marks and now > t0 + self.boot_timeout:
            raise LabError(f"the lab host did not boot in {self.boot_timeout:g} s (no "
                           f"'lab: ready' on its console {self.console_log})",
                           hint="its last console lines say where it stopped")
        if self.wedged is not None:
            raise LabError(f"the lab host is wedged: its kernel says {self.wedged!r} (console: "
                           f"{self.console_log})",
                           hint="nested KVM on TCG stops now and then with a CPU stuck in the L2 "
                                "guest's QEMU (docs/lab.md); `make lab` and `make lab-smoke` run "
                                "the lab again, 3 runs at most")
        silence = self.silence_timeout
        if self._beat and self.beat_timeout is not None:
            silence = min(silence, self.beat_timeout)
        if "ready" in self.marks and now > heard + silence:
            raise LabError(f"the lab host has printed nothing for {silence:g} s"
                           f" and its job's heartbeat stopped: it is hung (console: "
                           f"{self.console_log})",
                           hint="the guests of the test that was running are in the run "
                                "folder's guests/; run again, and if it recurs, report it "
                                "with the console log")
        if now > deadline:
            raise LabError(f"the lab host did not finish in time (console: {self.console_log})",
                           hint="look at the console log; raise --lab-timeout if the run "
                                "was only slow")

    def stop(self) -> None:
        """L1 has no QMP: SIGTERM (QEMU powers the lab off), then SIGKILL; always reaped."""
        self.qemu.stop(waits=(0.0, 10.0, 10.0))

