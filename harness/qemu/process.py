"""QemuProcess: the one owner of a QEMU process, for guests and the lab host alike.

* started without ``preexec_fn`` (Python's subprocess documentation warns it can deadlock in a
  process that has threads, and ours have the QMP loop and console readers): the child's
  parent-death signal is set by util-linux ``setpriv --pdeathsig KILL``, which then execs
  QEMU under the same PID, so a killed test runner cannot leave a QEMU behind;
* QEMU's stdout and stderr go to a log file;
* :meth:`stop` escalates (the owner's polite request, SIGTERM, SIGKILL) and always reaps, also
  when it is interrupted part-way (Ctrl-C during a stop still kills and reaps).
"""

from __future__ import annotations

import functools
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Callable

from harness.core.errors import QemuLaunchError
from harness.core.paths import check_search_path, trusted_program


@functools.lru_cache(maxsize=1)
def _pdeathsig_prefix() -> tuple[str, ...]:
    """``setpriv --pdeathsig KILL --`` where util-linux has it (Debian 10 and newer)."""
    check_search_path()  # (as root: setpriv execs QEMU, and is found on PATH)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    probe = subprocess.run([setpriv, "--pdeathsig", "KILL", "--", "true"], capture_output=True)
    return (setpriv, "--pdeathsig", "KILL", "--") if probe.returncode == 0 else ()


def qemu_version(binary: str, timeout: float = 20.0) -> str:
    """What ``binary --version`` says its version is ("7.2.22"), or why it cannot be run."""
    try:
        out = qemu_query(binary, ["--version"], timeout).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"not runnable: {e}"
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else out.strip()[:60]


def qemu_query(binary: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Ask QEMU something and let it exit (``--version``, ``-device help``): the one place
    besides :class:`QemuProcess` that runs QEMU. As root, only a ``binary`` nobody else can
    have written (:func:`~harness.core.paths.trusted_program`). Raises OSError,
    TimeoutExpired or UnsafePathError."""
    return subprocess.run([trusted_program(binary), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def device_names(device_help: str) -> frozenset[str]:
    """The device model names in the output of ``qemu -device help``."""
    return frozenset(re.findall(r'^name "([^"]+)"', device_help, re.M))


def qemu_device_names(binary: str, timeout: float) -> frozenset[str] | None:
    """The device models ``binary`` has (``-device help``); None if it could not say."""
    try:
        proc = qemu_query(binary, ["-device", "help"], timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return device_names(proc.stdout) if proc.returncode == 0 else None


def version_tuple(version: str) -> tuple[int, int] | None:
    """(major, minor) of a version string like "7.2.22", None if it is not one."""
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m[1]), int(m[2])) if m else None


class QemuProcess:
    """One QEMU process and its output log.

    >>> p = QemuProcess(["qemu-system-x86_64", "-M", "none", "-S"], Path("qemu.log"))  # doctest: +SKIP
    >>> p.start(); p.stop()                                                             # doctest: +SKIP
    0
    """

    def __init__(self, argv: list[str], log_path: Path):
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.popen: subprocess.Popen | None = None

    def start(self) -> "QemuProcess":
        binary = self.argv[0]
        if shutil.which(binary) is None and not Path(binary).is_file():
            raise QemuLaunchError(f"QEMU binary {binary!r} not found",
                                  hint="install qemu-system-x86 (`make setup`) or pass --qemu-binary")
        with open(self.log_path, "wb") as log:
            try:
                self.popen = subprocess.Popen([*_pdeathsig_prefix(), *self.argv],
                                              stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=subprocess.STDOUT)
            except OSError as e:
                raise QemuLaunchError(f"cannot start {binary}: {e}",
                                      hint="install qemu-system-x86 (`make setup`) or pass "
                                           "--qemu-binary") from e
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def poll(self) -> int | None:
        """QEMU's exit status once it has exited, else None (also before :meth:`start`)."""
        return self.popen.poll() if self.popen else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def exit_reason(self) -> str | None:
        """Why QEMU can no longer answer ("QEMU exited with status 1"), or None while it runs."""
        status = self.poll()
        return None if status is None else f"QEMU exited with status {status}"

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, polite: Callable[[], None] | None = None,
             waits: tuple[float, float, float] = (3.0, 3.0, 10.0)) -> int | None:
        """End QEMU and reap it; its exit status. ``polite`` asks QEMU to quit (QMP ``quit``);
        then each step waits its share of ``waits``: after the request, after SIGTERM, after
        SIGKILL. Safe to call any number of times."""
        p = self.popen
        if p is None:
            return None
        try:
            if p.poll() is None and polite is not None:
                try:
                    polite()
                except Exception:
                    pass  # QEMU does not answer: escalate
            for sig, wait in zip((None, signal.SIGTERM, signal.SIGKILL), waits):
                if sig is not None and p.poll() is None:
                    p.send_signal(sig)
                try:
                    p.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        finally:
            if p.poll() is None:  # interrupted part-way, or QEMU stuck in the kernel
                p.kill()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    pass  # uninterruptible; PDEATHSIG and the end-of-run check are the backstop
        return p.returncode


def start_time(stat: str | None) -> int | None:
    """A process's start time (clock ticks since boot) from the text of its ``/proc/PID/stat``
    (the 22nd field, counted after the command name, which may hold spaces and parentheses);
    it tells a reused PID apart. None for no text or text that is not a stat line."""
    try:
        return int(stat.rsplit(")", 1)[1].split()[19]) if stat else None
    except (IndexError, ValueError):
        return None


def process_start(pid: int) -> int | None:
    """When process ``pid`` of this host started (:func:`start_time`); None when it is gone
    or cannot be read."""
    try:
        return start_time(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return None


def record_pid(workdir: Path, pid: int | None) -> None:
    """A guest's QEMU in its folder: ``qemu.pid`` (the PID) and ``qemu.start`` (its start
    time), so that the run's end kills a QEMU it left by that PID only while the PID is still
    that QEMU's (harness.run.hygiene), never another user's process that got the PID since.
    No PID known (libvirt's PID file unread): nothing recorded."""
    if pid is None:
        return
    (workdir / "qemu.pid").write_text(f"{pid}\n")
    (workdir / "qemu.start").write_text(f"{process_start(pid)}\n")
