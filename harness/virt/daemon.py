"""The libvirt daemon's life, for the scenarios that exist only at this layer: attach after the
daemon restarted with the domain running, and a daemon killed mid-test.

With systemd the daemon is systemd's (``systemctl``); without it (a container, a CI machine
of this kind) it is the ``libvirtd -d`` that ``.ci/libvirt-daemon`` started, found by its
PID file. Running domains outlive the daemon by libvirt's design; a restarted daemon finds them
again from its status files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from harness.core.errors import LabError, WaitTimeout
from harness.core.waits import wait_until
from harness.virt import connect

PID_FILE = Path("/run/libvirtd.pid")


def systemd() -> bool:
    return Path("/run/systemd/system").is_dir()


def pid() -> int:
    """The running daemon's PID."""
    if systemd():
        out = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", "libvirtd"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        if out and out != "0":
            return int(out)
    try:
        value = int(PID_FILE.read_text().strip())
    except (OSError, ValueError):
        raise LabError("the libvirt daemon's PID is not known (no running libvirtd.service, no "
                       f"{PID_FILE})", hint="start it with `make libvirt-daemon`") from None
    if not Path(f"/proc/{value}/comm").exists() or Path(f"/proc/{value}/comm").read_text().strip() != "libvirtd":
        raise LabError(f"{PID_FILE} names PID {value}, which is not libvirtd",
                       hint="start the daemon with `make libvirt-daemon`")
    return value


def stop(sig: int = signal.SIGTERM) -> int:
    """Send ``sig`` to the daemon and wait until it is gone; its PID."""
    victim = pid()
    os.kill(victim, sig)
    wait_until(f"libvirtd {victim} to exit", lambda: not _running(victim), 30)
    return victim


def start(timeout: float = 30, log: Path | None = None) -> None:
    """Start the daemon again and wait until ``qemu:///system`` answers (``timeout``: it
    answers once its drivers are up, QEMU's capabilities probed). ``log``: where a daemon
    started here writes its log (the lab host's, kept in its run folder)."""
    if systemd():
        subprocess.run(["systemctl", "start", "libvirtd"], check=True, timeout=60)
    else:
        env = {**os.environ, **({"LIBVIRT_LOG_OUTPUTS": f"3:file:{log}"} if log else {})}
        done = subprocess.run(["libvirtd", "-d"], capture_output=True, text=True, timeout=60,
                              env=env)
        if done.returncode:
            raise LabError(f"libvirtd -d failed (exit {done.returncode}): "
                           f"{(done.stderr.strip() or done.stdout.strip() or 'no output')[-500:]}",
                           hint=f"start it by hand to see why (libvirtd -v); its log: "
                                f"{log or '/var/log/libvirt/libvirtd.log'}")
    refusal = [""]  # (why it did not answer the last time it was asked)

    def answers() -> bool:
        refusal[0] = _refusal() or ""
        return not refusal[0]
    try:
        wait_until("libvirtd to answer on qemu:///system", answers, timeout, interval=0.2)
    except WaitTimeout:
        raise LabError(f"libvirtd did not answer on {connect.URI} within {timeout:g} s of its "
                       f"start: {refusal[0]}",
                       hint=f"its log says why: {log or 'journalctl -u libvirtd'}") from None


def ensure_running(timeout: float, log: Path) -> float | None:
    """The lab host's daemon (its run inside asked for ``--driver libvirt``): started when
    ``qemu:///system`` does not answer yet; the seconds it took to answer, None if it was
    running. Its configuration is the lab image's (fixtures/images/lab/libvirt-qemu.conf), its
    log ``log``; it ends with the lab host."""
    if _answers():
        return None
    t0 = time.monotonic()
    start(timeout, log)
    return round(time.monotonic() - t0, 1)


def restart() -> None:
    stop()
    start()


def _running(p: int) -> bool:
    try:
        stat = Path(f"/proc/{p}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _refusal() -> str | None:
    """Why ``qemu:///system`` does not answer now; None when it does."""
    try:
        connect.connection()
        return None
    except LabError as e:
        return e.message


def _answers() -> bool:
    return _refusal() is None
