"""A guest's state moved with QEMU's migration: saved into a file, restored from one, or sent
live to a second QEMU. QEMU 7.2 and 10.0 alike (``exec:`` and ``unix:`` URIs)."""

from __future__ import annotations

import os
import shlex
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from harness.core.errors import HarnessError
from harness.core.waits import wait_until
from harness.qemu.machine import format_argv
from harness.qemu.process import QemuProcess

if TYPE_CHECKING:
    from harness.guest.guest import Guest

#: A saved state's folder: QEMU's migration stream, and the disk overlay as it was then.
STATE_FILE = "state.bin"
DISK_FILE = "disk.qcow2"
#: Where a migration ends; QEMU says anything else while it runs.
_ENDED = ("completed", "failed", "cancelled")


def cat_command() -> str:
    """The ``cat`` of QEMU's ``exec:`` migration (QEMU runs it with /bin/sh): coreutils', or
    busybox's where there is no other (the lab host's root has busybox and no coreutils)."""
    if shutil.which("cat"):
        return "cat"
    if shutil.which("busybox"):
        return "busybox cat"
    raise HarnessError("saving or restoring a guest's state needs cat (QEMU's exec: migration)",
                       hint="install coreutils or busybox, or run with --no-snapshot")


def restore(guest: "Guest", state_dir: Path, t0: float) -> None:
    """Start ``guest``'s QEMU with ``-incoming`` from a saved state, run it once loaded, and make
    it this moment's guest: its clock set to the host's, host randomness in its pool."""
    guest.restored_from = Path(state_dir)
    start_incoming(guest, f"exec:{cat_command()} {shlex.quote(str(guest.restored_from / STATE_FILE))}",
                         t0)
    deadline = t0 + guest.deadlines.boot
    # (QEMU 7.2 has no event for a finished incoming load without the events capability)
    status = wait_until(f"the saved state {guest.restored_from} to load",
                        lambda: _loaded_status(guest), max(0.0, deadline - time.monotonic()),
                        interval=0.02)
    if status not in ("paused", "prelaunch"):
        raise HarnessError(f"QEMU is {status!r} after loading the saved state {guest.restored_from}")
    guest.launch_marks["loaded"] = round(time.monotonic() - t0, 2)
    guest.qmp("cont")
    if guest.spec.access == "ssh":
        guest.connect_ssh(max(1.0, deadline - time.monotonic()))
    # The clock reads the moment of the save; the guest's random pool is the saved one
    # (the vmgenid device makes Linux reseed; host bytes are mixed in as well).
    # (busybox's date takes whole seconds only: within half a second there)
    channel = guest.shell.ssh or guest.shell.console
    now = time.time()
    status, output = channel.exec(f"{{ date -s @{now:.6f} || date -s @{round(now)}; }} >/dev/null "
                                  f"2>&1 && printf %s {os.urandom(32).hex()} > /dev/urandom",
                                  max(1.0, deadline - time.monotonic()))
    if status != 0:
        raise HarnessError("could not set the restored guest's clock (date -s)", details=output)


def _loaded_status(guest: "Guest") -> str | None:
    status = guest.qmp("query-status")["status"]
    return None if status == "inmigrate" else status


def save_state(guest: "Guest", state: Path, disk: Path) -> dict:
    """Save the running guest's whole state (RAM included) into ``state`` with QEMU's
    migration, and its disk overlay as it was then into ``disk``; resume the guest either
    way. Returns the figures (seconds)."""
    t0 = time.monotonic()
    before = guest.qmp("query-migrate-parameters").get("max-bandwidth")
    guest.qmp("migrate-set-parameters", **{"max-bandwidth": 64 << 30})  # a file, not a link
    try:
        guest.qmp("migrate", uri=f"exec:{cat_command()} > {shlex.quote(str(state))}")
        status = wait_done(guest, f"saving {guest.name}'s state")
        if status != "completed":
            raise HarnessError(f"saving {guest.name}'s state: migration {status}",
                               details=str(guest.qmp("query-migrate")))
        seconds = time.monotonic() - t0
        if guest.image.disk:
            # Migration flushed and let go of the disk: the overlay is consistent now.
            shutil.copyfile(guest.paths.disk_overlay, disk)
    finally:
        if guest.qmp("query-status")["status"] != "running":
            guest.qmp("cont")
        if before is not None:
            guest.qmp("migrate-set-parameters", **{"max-bandwidth": before})
    return {"save_seconds": round(seconds, 3), "paused_seconds": round(time.monotonic() - t0, 3)}


def wait_done(guest: "Guest", what: str) -> str:
    """Wait for ``guest``'s outgoing migration to end; its final status."""
    # (QMP's MIGRATION events need migrate-set-capabilities events=on; polling is as exact)
    def ended():
        status = guest.qmp("query-migrate").get("status")
        return status if status in _ENDED else None
    return wait_until(f"{what}: the migration to end", ended, guest.deadlines.scaled(60),
                      interval=0.02)


def migrate(source: "Guest", dest: "Guest", before_running=None) -> float:
    """Live-migrate ``source`` into ``dest`` (a Guest started with ``-incoming`` on a unix
    socket, :meth:`Guest.receive`): migrate, wait for completion, run the destination and
    attach to it. Returns the seconds the migration took. ``source`` is left paused
    (``postmigrate``); close it. ``before_running(source, dest)`` is called once the
    migration completed, before the destination runs."""
    t0 = time.monotonic()
    uri = dest.argv[dest.argv.index("-incoming") + 1]
    source.qmp("migrate", uri=uri)
    status = wait_done(source, f"migration of {source.name} to {dest.name}")
    if status != "completed":
        raise HarnessError(f"migration of {source.name} to {dest.name} {status}",
                           details=str(source.qmp("query-migrate")))
    seconds = time.monotonic() - t0
    source.migrated_to = dest
    if before_running is not None:
        before_running(source, dest)
    dest.qmp("cont")
    dest.take_over(source)
    dest.launch_marks["migrated"] = round(seconds, 2)
    return seconds


def start_incoming(guest, uri: str, t0: float) -> None:
    """Start ``guest``'s QEMU as a migration destination of ``uri`` and connect to it."""
    guest.argv = guest.argv + ["-incoming", uri]
    guest.qemu = QemuProcess(guest.argv, guest.workdir / "qemu.log")
    (guest.workdir / "cmdline.txt").write_text(format_argv(guest.argv) + "\n")
    guest._connect(t0)
