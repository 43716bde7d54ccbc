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
from pathlib import Path

from harness.core.errors import LabError
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


def start() -> None:
    """Start the daemon again and wait until ``qemu:///system`` answers."""
    if systemd():
        subprocess.run(["systemctl", "start", "libvirtd"], check=True, timeout=60)
    else:
        subprocess.run(["libvirtd", "-d"], check=True, timeout=60)
    wait_until("libvirtd to answer on qemu:///system", _answers, 30, interval=0.2)


def restart() -> None:
    stop()
    start()


def _running(p: int) -> bool:
    try:
        stat = Path(f"/proc/{p}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _answers() -> bool:
    try:
        connect.connection()
        return True
    except LabError:
        return False
