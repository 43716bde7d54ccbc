"""Guest: one object owns one QEMU process and everything it opened.

* the QEMU process (a :class:`~harness.process.QemuProcess`: tied to its owner's life, so a
  killed test runner cannot leave it behind), its output log, and its temporary directory
  (sockets, disk overlays);
* the QMP :class:`~harness.monitor.Monitor`, run on an event loop in a thread of its own, so test
  code stays synchronous while the QMP core stays async;
* the guest :class:`~harness.access.Shell` (serial console, plus SSH when the guest has a
  management NIC).

``close()`` is idempotent and always reaps: QMP ``quit``, then SIGTERM, then SIGKILL; the
temporary directory goes even when the close is interrupted part-way. Guests still open when
the process exits (a run ended by Ctrl-C or SIGTERM) are closed at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

from harness.core import pace
from harness.guest import probes
from harness.guest.access import ConsoleChannel, Shell, SSHChannel, _tail
from harness.core.errors import (GuestDiedError, HarnessError, ImageError, QemuLaunchError,
                                 QMPCommandError, WaitTimeout)
from harness.images.builtin import GuestImage
from harness.qemu.machine import GuestSpec, Paths, build_argv, format_argv
from harness.qemu.monitor import Monitor, UnplugResult
from harness.core.pace import Deadlines
from harness.qemu.process import QemuProcess


def tmp_prefix(owner: str | None = None) -> str:
    """Prefix of a guest's temporary directory: ``hh-<owner>-``, the owner being the run's tag
    (harness.runconfig; by default this process's PID), so the end-of-run check
    (harness.hygiene) finds this run's leftovers and not another run's."""
    return f"hh-{owner or os.getpid()}-"


def without_incoming(args: tuple[str, ...]) -> tuple[str, ...]:
    """``args`` less an ``-incoming URI`` (a migration destination's, which a guest that
    migrates on from there must not pass to its own destination)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "-incoming":
            skip = True
        else:
            out.append(a)
    return tuple(out)


class Guest:
    """A running QEMU guest.

    >>> with Guest(GuestSpec(machine="q35"), image, workdir=Path("out")) as g:   # doctest: +SKIP
    ...     g.device_add("e1000e", "nic0", bus=g.free_bus(), netdev="n0")
    ...     g.shell.succeed("lspci -nn | grep 8086:10d3")
    """

    def __init__(self, spec: GuestSpec, image: GuestImage, *, workdir: Path,
                 qemu_binary: str = "qemu-system-x86_64", accel: str = "tcg",
                 deadlines: Deadlines | None = None, name: str = "guest",
                 owner: str | None = None, extra_args: tuple[str, ...] = ()):
        """``deadlines``: this machine's (:meth:`harness.pace.Deadlines.for_run`); by default
        the reference machine's."""
        self.spec = spec
        self.image = image
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.qemu_binary = qemu_binary
        self.accel = accel
        self.deadlines = deadlines or pace.reference()
        self.name = name
        # Sockets live in a short temp dir: unix socket paths are limited to 107 bytes.
        self._tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(owner)))
        self.paths = Paths(qmp_socket=self._tmp / "qmp.sock",
                           console_socket=self._tmp / "console.sock",
                           serial_log=self.workdir / "serial.log",
                           disk_overlay=self._tmp / "disk.qcow2" if image.disk else None)
        self.extra_args = tuple(extra_args)
        self.argv = build_argv(spec, image, self.paths, qemu_binary=qemu_binary, accel=self.accel,
                               name=name) + list(extra_args)
        self.qemu = QemuProcess(self.argv, self.workdir / "qemu.log")
        self.monitor: Monitor | None = None
        self.shell: Shell | None = None
        self.ssh_port: int | None = None
        self.boot_seconds: float | None = None
        #: The saved state this guest was restored from (None: booted).
        self.restored_from: Path | None = None
        #: The figures of this guest's state being saved for later guests (set by the pool).
        self.saved: dict | None = None
        #: The guest this one's run went on in once a live migration completed (this QEMU is
        #: then ``postmigrate``: its vCPUs never run again, its console never answers).
        self.migrated_to: "Guest | None" = None
        #: Seconds from QEMU's start to each step of the launch (qmp, console, loaded, ready);
        #: also how long a reboot or migration took (rebooted, migrated) and, before the launch,
        #: how long the pool waited for another worker saving this shape (waited_for_state).
        self.launch_marks: dict[str, float] = {}
        _open_guests.add(self)
        self.guest_uptime_at_ready: float | None = None
        self._used_buses: dict[str, str] = {}  # bus -> device id
        self._counters: dict[str, int] = {}
        #: State right after boot; a pool reuses the guest only while its state equals this.
        self.baseline: tuple | None = None
        #: The guide's section 1 checks, run once per guest (see harness.prereq).
        self.prerequisites: list | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.exit_status: int | None = None
        (self.workdir / "cmdline.txt").write_text(format_argv(self.argv) + "\n")

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> "Guest":
        self.launch()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def launch(self, on_running: Callable[["Guest"], None] | None = None, *,
               restore: Path | None = None) -> "Guest":
        """Start QEMU, connect QMP and the console, let the guest run, wait until it is ready.
        ``on_running`` is called right after ``cont``, while the guest's OS is still booting
        (a scenario that hot-adds during boot). ``restore``: a saved state's folder
        (harness.snapshot) to start from instead of booting."""
        t0 = time.monotonic()
        try:
            if restore is not None:
                self._restore(restore, t0)
            else:
                self._connect(t0)
                d = self.deadlines
                self.qmp("cont")
                if on_running is not None:
                    on_running(self)
                    self.launch_marks["on_running_done"] = round(time.monotonic() - t0, 2)
                self._wait_ready(time.monotonic() + d.boot)
            self.launch_marks["ready"] = round(time.monotonic() - t0, 2)
        except BaseException as e:
            output = self.qemu_output()
            self.close()
            if not isinstance(e, Exception):
                raise  # Ctrl-C, SIGTERM, exit: not a launch error, and nothing is left behind
            if isinstance(e, HarnessError) and not isinstance(e, (QemuLaunchError, WaitTimeout, GuestDiedError)):
                raise
            console = self.serial_text()
            raise QemuLaunchError(
                f"guest {self.name} ({self.spec.label}) did not come up: {e}",
                hint=getattr(e, "hint", "") or "read QEMU's output and the serial log below",
                details=f"how far it got: {self._progress(console)}\n"
                        f"command line:\n    {format_argv(self.argv)}\nQEMU output:\n{_tail(output)}\n"
                        f"serial log (last lines):\n{_tail(console)}") from e
        self.boot_seconds = time.monotonic() - t0
        return self

    def retime(self, deadlines: Deadlines) -> None:
        """Give this running guest other deadlines (its pool's, once they follow the guest's
        speed: :meth:`harness.core.pace.Deadlines.following`), its shell's waits included."""
        self.deadlines = deadlines
        if self.shell is not None:
            self.shell.default_timeout = deadlines.command
            self.shell.scale = deadlines.scaled

    @property
    def started(self) -> str | None:
        """``"booted"`` or ``"restored"`` (from a saved state, harness.snapshot) once launched."""
        if self.boot_seconds is None:
            return None
        return "restored" if self.restored_from is not None else "booted"

    def _restore(self, state_dir: Path, t0: float) -> None:
        """Start QEMU with ``-incoming`` from a saved state, run it once loaded, and make it
        this moment's guest: its clock set to the host's, host randomness in its pool."""
        from harness.guest.snapshot import STATE_FILE

        self.restored_from = Path(state_dir)
        self.argv = self.argv + ["-incoming", f"exec:{_cat()} {shlex.quote(str(self.restored_from / STATE_FILE))}"]
        self.qemu = QemuProcess(self.argv, self.workdir / "qemu.log")
        (self.workdir / "cmdline.txt").write_text(format_argv(self.argv) + "\n")
        self._connect(t0)
        deadline = t0 + self.deadlines.boot
        while (status := self.qmp("query-status")["status"]) == "inmigrate":
            if time.monotonic() > deadline:
                raise WaitTimeout(f"the saved state {self.restored_from} did not load within "
                                  f"{self.deadlines.boot:.0f} s")
            time.sleep(0.02)  # QEMU 7.2 has no event for a finished incoming load without the events capability
        if status not in ("paused", "prelaunch"):
            raise HarnessError(f"QEMU is {status!r} after loading the saved state {self.restored_from}")
        self.launch_marks["loaded"] = round(time.monotonic() - t0, 2)
        self.qmp("cont")
        if self.spec.access == "ssh":
            self._connect_ssh(deadline)
        # The clock reads the moment of the save; the guest's random pool is the saved one
        # (the vmgenid device makes Linux reseed; host bytes are mixed in as well).
        # (busybox's date takes whole seconds only: within half a second there)
        channel = self.shell.ssh or self.shell.console
        now = time.time()
        status, output = channel.exec(f"{{ date -s @{now:.6f} || date -s @{round(now)}; }} >/dev/null "
                                      f"2>&1 && printf %s {os.urandom(32).hex()} > /dev/urandom",
                                      max(1.0, deadline - time.monotonic()))
        if status != 0:
            raise HarnessError("could not set the restored guest's clock (date -s)",
                               details=output)

    def save_state(self, state: Path, disk: Path) -> dict:
        """Save this running guest's whole state (RAM included) into ``state`` with QEMU's
        migration, and its disk overlay as it was then into ``disk``; resume the guest either
        way. Returns the figures (seconds)."""
        t0 = time.monotonic()
        before = self.qmp("query-migrate-parameters").get("max-bandwidth")
        self.qmp("migrate-set-parameters", **{"max-bandwidth": 64 << 30})  # a file, not a link
        try:
            self.qmp("migrate", uri=f"exec:{_cat()} > {shlex.quote(str(state))}")
            status = self._wait_migration(f"saving {self.name}'s state", t0)
            if status != "completed":
                raise HarnessError(f"saving {self.name}'s state: migration {status}",
                                   details=str(self.qmp("query-migrate")))
            seconds = time.monotonic() - t0
            if self.image.disk:
                # Migration flushed and let go of the disk: the overlay is consistent now.
                shutil.copyfile(self.paths.disk_overlay, disk)
        finally:
            if self.qmp("query-status")["status"] != "running":
                self.qmp("cont")
            if before is not None:
                self.qmp("migrate-set-parameters", **{"max-bandwidth": before})
        return {"save_seconds": round(seconds, 3), "paused_seconds": round(time.monotonic() - t0, 3)}

    def _wait_migration(self, what: str, t0: float) -> str:
        deadline = t0 + self.deadlines.scaled(60)
        while (status := self.qmp("query-migrate").get("status")) not in ("completed", "failed", "cancelled"):
            if time.monotonic() > deadline:
                raise WaitTimeout(f"{what}: migration still {status} after "
                                  f"{time.monotonic() - t0:.1f} s")
            time.sleep(0.02)  # QMP's MIGRATION events need migrate-set-capabilities events=on; polling is as exact here
        return status

    def _connect(self, t0: float) -> None:
        """Start QEMU (paused), connect QMP and the serial console."""
        self._start_process()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"qmp-{self.name}")
        self._thread.start()
        d = self.deadlines
        self.monitor = Monitor(self.workdir / "qmp.jsonl")
        self._call(self.monitor.connect(str(self.paths.qmp_socket), timeout=d.qmp_connect,
                                        gone=self.qemu.exit_reason), d.qmp_connect + 5)
        self.launch_marks["qmp"] = round(time.monotonic() - t0, 2)
        console = ConsoleChannel(self.paths.console_socket, timeout=d.console_connect,
                                 name=self.name)
        self.launch_marks["console"] = round(time.monotonic() - t0, 2)
        self.shell = Shell(self.workdir / "commands.log", console,
                           default_timeout=d.command, scale=d.scaled)

    def migrate_to(self, dest: "Guest", before_running=None) -> float:
        """Live-migrate this guest into ``dest`` (a Guest made with ``-incoming`` on a unix
        socket, see :meth:`receive`): migrate, wait for completion, run the destination and
        attach to it. Returns the seconds the migration took. This guest is left paused
        (``postmigrate``); close it. ``before_running(source, dest)`` is called once the
        migration completed, before the destination runs."""
        t0 = time.monotonic()
        uri = dest.argv[dest.argv.index("-incoming") + 1]
        self.qmp("migrate", uri=uri)
        status = self._wait_migration(f"migration of {self.name} to {dest.name}", t0)
        if status != "completed":
            raise HarnessError(f"migration of {self.name} to {dest.name} {status}",
                               details=str(self.qmp("query-migrate")))
        seconds = time.monotonic() - t0
        self.migrated_to = dest
        if before_running is not None:
            before_running(self, dest)
        dest.qmp("cont")
        dest._used_buses, dest._counters = dict(self._used_buses), dict(self._counters)
        dest.baseline, dest.prerequisites, dest.image = self.baseline, self.prerequisites, self.image
        if dest.spec.access == "ssh":
            dest.ssh_port = dest._forwarded_ssh_port()
            dest.shell.ssh = SSHChannel("127.0.0.1", dest.ssh_port, dest.image.ssh_user,
                                        Path(dest.image.ssh_key), timeout=dest.deadlines.command)
        dest.shell.succeed("true")
        dest.launch_marks["migrated"] = round(seconds, 2)
        return seconds

    def receive(self) -> "Guest":
        """Start as a migration destination: QEMU started with ``-incoming`` (in ``extra_args``),
        QMP and console connected, waiting for the stream."""
        try:
            self._connect(time.monotonic())
        except BaseException:
            self.close()
            raise
        return self

    def _start_process(self) -> None:
        for f in (self.image.kernel, self.image.initrd, self.image.disk):
            if f is not None and not Path(f).is_file():
                raise ImageError(f"guest image file {f} does not exist",
                                 hint="run `make image`, or fix the --guest-* option")
        if self.image.disk and self.restored_from is not None:
            # The overlay as it was when the state was saved (its file system is in the RAM).
            from harness.guest.snapshot import DISK_FILE

            shutil.copyfile(self.restored_from / DISK_FILE, self.paths.disk_overlay)
        elif self.image.disk:
            # A throw-away overlay: the user's image is never written.
            fmt = self.image.disk_format
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b",
                            str(Path(self.image.disk).resolve()), str(self.paths.disk_overlay)],
                           check=True, capture_output=True, timeout=30)
        self.qemu.start()
        (self.workdir / "qemu.pid").write_text(f"{self.qemu.pid}\n")
        (self.workdir / "replay.sh").write_text(self._replay_script())
        os.chmod(self.workdir / "replay.sh", 0o755)

    def _replay_script(self) -> str:
        """A script that starts the same guest by hand, with an HMP monitor on stdio."""
        argv = [a for a in self.argv if a != "-S"]
        out, skip = [], 0
        for i, a in enumerate(argv):
            if skip:
                skip -= 1
                continue
            if a in ("-chardev", "-mon") and i + 1 < len(argv) and (
                    "id=qmp" in argv[i + 1] or "chardev=qmp" in argv[i + 1]):
                skip = 1
                continue
            if a == "-incoming" and self.restored_from is not None:
                skip = 1  # a restored guest's replay boots it (the saved state may be gone)
                continue
            out.append(a)
        out += ["-monitor", "unix:./monitor.sock,server=on,wait=off"]
        text = format_argv(out).replace(str(self.paths.console_socket), "./console.sock")
        text = text.replace(f"logfile={self.paths.serial_log}", "logfile=./serial-replay.log")
        overlay = ""
        if self.image.disk:
            # The run's overlay was in its temp folder, gone with the guest: make a fresh one
            # over the same image, so the replay starts the same guest and never writes the image.
            text = text.replace(str(self.paths.disk_overlay), "./disk-replay.qcow2")
            overlay = (f"rm -f ./disk-replay.qcow2\nqemu-img create -q -f qcow2 -F "
                       f"{self.image.disk_format} -b {shlex.quote(str(Path(self.image.disk).resolve()))}"
                       " ./disk-replay.qcow2 || exit 1\n")
        return ("#!/bin/sh\n# Start the same guest by hand. Console: socat -,raw,echo=0 "
                "UNIX-CONNECT:./console.sock\n# Monitor (device_add, info pci): socat - "
                "UNIX-CONNECT:./monitor.sock\ncd \"$(dirname \"$0\")\"\n" + overlay
                + "exec " + text + "\n")

    def _progress(self, console: str) -> str:
        """How far the launch got, for a launch error: QEMU, the boot, the network and SSH."""
        if "qmp" not in self.launch_marks:
            return "QEMU did not answer QMP (the guest never started running)"
        text = f"console: {probes.boot_stage(console)}"
        if self.spec.access == "ssh":
            text += ("; SSH: " + ("answered" if self.shell is not None and self.shell.ssh else
                                  f"no login on 127.0.0.1:{self.ssh_port}" if self.ssh_port else
                                  "not tried (the console never showed the ready marker)"))
        return text

    def _wait_ready(self, deadline: float) -> None:
        if self.image.ready_pattern:
            m = self.shell.console.expect(self.image.ready_pattern, deadline - time.monotonic())
            if m.groups():
                try:
                    self.guest_uptime_at_ready = float(m.group(1))
                except ValueError:
                    pass
        if self.spec.access == "console":
            # Kernel messages printed on the serial console land inside a command's output
            # (a systemd guest's `ls /sys/class/net` once read "70.451999]" as an interface):
            # keep only emergencies on the console. dmesg still has everything (in the bundle).
            # TERM=dumb: tools do not colour what they print on the console (a terminal).
            self.shell.run("dmesg -n 1 2>/dev/null; export TERM=dumb; true",
                           max(1.0, deadline - time.monotonic()))
        if self.spec.access == "ssh":
            self._connect_ssh(deadline)
        if self.image.seed is not None:
            # SSH answers before cloud-init has finished (its last stage writes the DHCP rule
            # for NICs that appear later): a NIC hot-added before then got no address. Its own
            # `status --wait` (22.4) returned between two stages, so wait for the file the last
            # stage writes when it is done.
            channel = self.shell.ssh or self.shell.console
            channel.exec("! command -v cloud-init >/dev/null || while ! test -e "
                         "/var/lib/cloud/instance/boot-finished; do sleep 0.5; done",
                         max(1.0, deadline - time.monotonic()))

    def _connect_ssh(self, deadline: float) -> None:
        self.ssh_port = self._forwarded_ssh_port()
        if self.image.ssh_key is None:
            raise QemuLaunchError("access=ssh needs an SSH key", hint="pass --guest-key")
        self.shell.ssh = SSHChannel("127.0.0.1", self.ssh_port, self.image.ssh_user,
                                    Path(self.image.ssh_key),
                                    timeout=max(1.0, deadline - time.monotonic()))

    def reboot_from_inside(self) -> None:
        """The guest reboots itself (``reboot -f`` typed on its console); see :meth:`wait_rebooted`."""
        self.shell.console.send_line("reboot -f")

    def wait_rebooted(self) -> None:
        """After a reset the guest boots again: wait for it to be ready, as at launch."""
        if self.shell.ssh is not None:
            self.shell.ssh.close()
            self.shell.ssh = None
        self.shell.console.forget_output()
        t0 = time.monotonic()
        self._wait_ready(t0 + self.deadlines.boot)
        self.launch_marks["rebooted"] = round(time.monotonic() - t0, 2)

    def _forwarded_ssh_port(self) -> int:
        # hostfwd asked for port 0; the kernel chose a free one, which `info usernet` shows.
        text = self.hmp("info usernet")
        m = re.search(r"HOST_FORWARD\]\s+\d+\s+127\.0\.0\.1\s+(\d+)\s+\S+\s+22\b", text)
        if not m:
            raise QemuLaunchError("cannot find the forwarded SSH port in `info usernet`",
                                  details=text)
        return int(m.group(1))

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def died(self) -> bool:
        """QEMU exited on its own (the guest reset or powered off, QEMU crashed), not at
        :meth:`close`'s request."""
        return self.process is not None and not self._closed and self.process.poll() is not None

    @property
    def process(self) -> subprocess.Popen | None:
        """QEMU's process (None before :meth:`launch`)."""
        return self.qemu.popen

    def close(self) -> None:
        """Stop QEMU and release everything. Safe to call any number of times; an interrupted
        close still kills and reaps QEMU and removes the temporary directory."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.shell is not None:
                self.shell.close()
            self.exit_status = self.qemu.stop(self._quit if self.monitor is not None else None)
            if self.monitor is not None and self._loop is not None and self._loop.is_running():
                try:
                    self._call(self.monitor.close(), 6, closing=True)
                except Exception:
                    pass
        finally:
            self.exit_status = self.qemu.stop()  # at once if the steps above ran; else kills
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                if self._thread is not None:
                    self._thread.join(5)
                if not self._loop.is_running():
                    self._loop.close()
            shutil.rmtree(self._tmp, ignore_errors=True)
            _open_guests.discard(self)

    def _quit(self) -> None:
        self._call(self.monitor.quit(timeout=3), 4, closing=True)

    # -- QMP (sync facade over the async Monitor) ----------------------------------------------

    def _call(self, coro, timeout: float, *, closing: bool = False) -> Any:
        if self._loop is None or (self._closed and not closing):
            coro.close()
            raise GuestDiedError(f"guest {self.name} is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            self._raise_if_dead()
            raise WaitTimeout(f"QMP call did not return within {timeout} s") from None
        except Exception:
            self._raise_if_dead()
            raise

    def _raise_if_dead(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            self.exit_status = self.process.returncode
            raise GuestDiedError(f"QEMU exited with status {self.process.returncode}",
                                 details="QEMU output:\n" + _tail(self.qemu_output()))

    def qmp(self, command: str, timeout: float = 30.0, **arguments: Any) -> Any:
        return self._call(self.monitor.execute(command, arguments, timeout=timeout), timeout + 5)

    def hmp(self, command_line: str, timeout: float = 30.0) -> str:
        return self._call(self.monitor.hmp(command_line, timeout=timeout), timeout + 5)

    def query_pci(self) -> list[dict]:
        return self._call(self.monitor.query_pci(), 35)

    def device_add(self, driver: str, device_id: str, **props: Any) -> float:
        try:
            seconds = self._call(self.monitor.device_add(driver, device_id, **props), 35)
        except QMPCommandError as e:
            if driver != "vfio-pci" or "host" not in props:
                raise
            # What is wrong on the host, read from sysfs, instead of QEMU's terse words.
            from harness.host.binding import explain_vfio_add_error

            raise explain_vfio_add_error("/", str(props["host"]), e.qemu_desc) from e
        if "bus" in props:
            self._used_buses[props["bus"]] = device_id
        return seconds

    def device_del(self, device_id: str, timeout: float = 20.0, grace: float = 10.0) -> UnplugResult:
        result = self._call(self.monitor.device_del(device_id, timeout=timeout, grace=grace),
                            timeout + grace + 15)
        self._used_buses = {b: d for b, d in self._used_buses.items() if d != device_id}
        return result

    def device_del_all(self, ids: list[str], timeout: float,
                       limit: float | None = None) -> list[UnplugResult]:
        """``device_del`` all of ``ids`` at once and wait for all of them to leave: ``timeout``
        without one leaving fails, ``limit`` (default ``timeout``) bounds the whole wait."""
        limit = max(limit or timeout, timeout)
        results = self._call(self.monitor.device_del_all(ids, timeout=timeout, limit=limit),
                             limit + 30)
        self._used_buses = {b: d for b, d in self._used_buses.items() if d not in ids}
        return results

    def wait_removed(self, device_id: str, timeout: float) -> UnplugResult:
        """Wait, without a new request, for a device whose unplug was requested earlier."""
        result = self._call(self.monitor.wait_removed(device_id, timeout=timeout), timeout + 15)
        self._used_buses = {b: d for b, d in self._used_buses.items() if d != device_id}
        return result

    def allocate(self, kind: str) -> int:
        """A number unique within this guest's life for ``kind`` (subnets, disk names...)."""
        self._counters[kind] = self._counters.get(kind, -1) + 1
        return self._counters[kind]

    def scratch_path(self, name: str) -> Path:
        """A path in the guest's temporary directory (removed when the guest closes)."""
        return self._tmp / name

    def log_sizes(self) -> dict[str, int]:
        """Current sizes of the guest's logs, to cut one test's part out of a shared guest's."""
        return {p.name: p.stat().st_size for p in self.workdir.iterdir()
                if p.suffix in (".log", ".jsonl")}

    def free_bus(self) -> str:
        """A bus a PCI device can be hot-added to now: a free q35 root port, or pc's root bus."""
        if not self.spec.one_device_per_bus:
            return self.spec.hotplug_bus_ids[0]
        for bus in self.spec.hotplug_bus_ids:
            if bus not in self._used_buses:
                return bus
        raise HarnessError(f"all {self.spec.root_ports} root ports of {self.name} are in use",
                           hint="give the guest more root ports (GuestSpec.root_ports)")

    # -- logs ---------------------------------------------------------------------------------

    def qemu_output(self) -> str:
        return self.qemu.output()

    def serial_text(self) -> str:
        try:
            return self.paths.serial_log.read_text(errors="replace")
        except OSError:
            return ""


def _cat() -> str:
    """The ``cat`` of QEMU's ``exec:`` migration (QEMU runs it with /bin/sh): coreutils', or
    busybox's where there is no other (the lab host's root has busybox and no coreutils)."""
    if shutil.which("cat"):
        return "cat"
    if shutil.which("busybox"):
        return "busybox cat"
    raise HarnessError("saving or restoring a guest's state needs cat (QEMU's exec: migration)",
                       hint="install coreutils or busybox, or run with --no-snapshot")


#: Guests not closed yet. A run that ends by Ctrl-C or SIGTERM (which the plugin turns into an
#: ordinary exit) skips fixture teardown in xdist workers; closing them at exit keeps the
#: promise that no QEMU and no temporary directory is left behind.
_open_guests: "weakref.WeakSet[Guest]" = weakref.WeakSet()


@atexit.register
def _close_open_guests() -> None:
    for guest in list(_open_guests):
        guest.close()
