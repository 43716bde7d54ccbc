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

import atexit
import os
import re
import shutil
import subprocess
import time
import weakref
from pathlib import Path
from typing import Any, Callable

from harness.core import contention, pace
from harness.guest import migration, probes
from harness.guest.access import ConsoleChannel, Shell, SSHChannel
from harness.core.errors import (GuestDiedError, HarnessError, ImageError, QemuLaunchError,
                                 WaitTimeout, tail)
from harness.qemu.machine import GuestImage
from harness.qemu.machine import GuestSpec, Paths, build_argv, format_argv, replay_script
from harness.qemu.monitor import UnplugResult
from harness.qemu.qmp_sync import SyncMonitor
from harness.core.pace import Deadlines
from harness.core.paths import new_private_dir, run_tmp_prefix
from harness.core.waits import Deadline, wait_until
from harness.qemu.process import QemuProcess, record_pid


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

    driver = "qmp"  # (who starts it and hot-adds: harness.virt.domain's guests say libvirt)

    def __init__(self, spec: GuestSpec, image: GuestImage, *, workdir: Path,
                 qemu_binary: str = "qemu-system-x86_64", accel: str = "tcg",
                 deadlines: Deadlines | None = None, name: str = "guest",
                 owner: str | None = None, extra_args: tuple[str, ...] = ()):
        """``deadlines``: this machine's (harness.core.pace; default the reference's). Nothing
        is made on disk until :meth:`launch` or :meth:`receive`."""
        self.spec, self.image, self.workdir = spec, image, Path(workdir)
        self.qemu_binary, self.accel, self.name, self.owner = qemu_binary, accel, name, owner
        self.deadlines = deadlines or pace.reference()
        self.extra_args = tuple(extra_args)
        self._tmp: Path | None = None
        self.paths: Paths | None = None
        self.argv: list[str] = []
        self.qemu: QemuProcess | None = None
        self.monitor: SyncMonitor | None = None
        self.shell: Shell | None = None
        self.ssh_port: int | None = None
        self.boot_seconds: float | None = None
        self.guest_uptime_at_ready: float | None = None
        #: The saved state this guest was restored from (None: booted).
        self.restored_from: Path | None = None
        #: The figures of this guest's state being saved for later guests (set by the pool).
        self.saved: dict | None = None
        #: Where this guest's run went on after a completed live migration (this QEMU is then
        #: ``postmigrate``, never to run again).
        self.migrated_to: "Guest | None" = None
        #: Seconds from QEMU's start to each launch step (qmp, console, loaded, ready), and how
        #: long a reboot, migration or wait for a saved state took (rebooted, migrated, ...).
        self.launch_marks: dict[str, float] = {}
        self._used_buses: dict[str, str] = {}  # bus -> device id
        self._counters: dict[str, int] = {}
        #: State right after boot; a pool reuses the guest only while its state equals this.
        self.baseline: tuple | None = None
        #: The guide's section 1 checks, run once per guest (see harness.scenario.prereq).
        self.prerequisites: list | None = None
        self._closed, self.exit_status = False, None

    def _prepare(self) -> None:
        """The guest's folders and command line, made as it starts (once)."""
        if self._tmp is None:
            self._tmp, self.paths = _folders(self)
            self._command()

    def _command(self) -> None:
        self.argv = build_argv(self.spec, self.image, self.paths, qemu_binary=self.qemu_binary,
                               accel=self.accel, name=self.name) + list(self.extra_args)
        self.qemu = QemuProcess(self.argv, self.workdir / "qemu.log")
        (self.workdir / "cmdline.txt").write_text(format_argv(self.argv) + "\n")

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> "Guest":
        return self.launch()

    def __exit__(self, *exc) -> None:
        self.close()

    def launch(self, on_running: Callable[["Guest"], None] | None = None, *,
               restore: Path | None = None) -> "Guest":
        """Start QEMU, connect QMP and the console, let the guest run, wait until it is ready.
        ``on_running`` is called right after ``cont``, while the guest's OS is still booting
        (a scenario that hot-adds during boot). ``restore``: a saved state's folder
        (harness.snapshot) to start from instead of booting."""
        t0 = time.monotonic()
        self._prepare()
        try:
            if restore is not None:
                migration.restore(self, restore, t0)
            else:
                self._connect(t0)
                d = self.deadlines
                self.qmp("cont")
                if on_running is not None:
                    on_running(self)
                    self.launch_marks["on_running_done"] = round(time.monotonic() - t0, 2)
                _wait_ready(self, time.monotonic() + d.boot)
            self.launch_marks["ready"] = round(time.monotonic() - t0, 2)
        except BaseException as e:
            output = self.qemu_output()
            self.close()
            if not isinstance(e, Exception):
                raise  # Ctrl-C, SIGTERM, exit: not a launch error, and nothing is left behind
            if isinstance(e, HarnessError) and not isinstance(e, (QemuLaunchError, WaitTimeout, GuestDiedError)):
                raise
            raise _launch_error(self, e, output) from e
        self.boot_seconds = time.monotonic() - t0
        return self

    @property
    def started(self) -> str | None:
        """``"booted"`` or ``"restored"`` (from a saved state) once launched, else None."""
        return None if self.boot_seconds is None else (
            "restored" if self.restored_from is not None else "booted")

    def _connect(self, t0: float) -> None:
        """Start QEMU (paused), connect QMP and the serial console."""
        self._start_process()
        d = self.deadlines
        self.monitor = SyncMonitor(self.workdir / "qmp.jsonl", self.name, dead=self._raise_if_dead)
        self.monitor.connect(str(self.paths.qmp_socket), timeout=d.qmp_connect,
                             gone=self.qemu.exit_reason)
        self.launch_marks["qmp"] = round(time.monotonic() - t0, 2)
        console = ConsoleChannel(self.paths.console_socket, timeout=d.console_connect,
                                 name=self.name)
        self.launch_marks["console"] = round(time.monotonic() - t0, 2)
        self.shell = Shell(self.workdir / "commands.log", console, default_timeout=d.command,
                           scale=d.scaled, meters=contention.meters(self.qemu.pid))

    def take_over(self, source: "Guest") -> None:
        """Go on where ``source`` was (a completed live migration, this guest now running):
        its devices' buses, counters, baseline and image; SSH to this QEMU's forward."""
        self._used_buses, self._counters = dict(source._used_buses), dict(source._counters)
        self.baseline, self.prerequisites, self.image = (source.baseline, source.prerequisites,
                                                         source.image)
        if self.spec.access == "ssh":
            self.connect_ssh(self.deadlines.command)
        self.shell.succeed("true")

    def receive(self) -> "Guest":
        """Start as a migration destination (``-incoming`` in ``extra_args``), connected."""
        try:
            self._prepare()
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
        if self.image.disk:
            _make_overlay(self.image, self.paths.disk_overlay, self.restored_from)
        self.qemu.start()
        record_pid(self.workdir, self.qemu.pid)
        (self.workdir / "replay.sh").write_text(
            replay_script(self.argv, self.paths, self.image, self.restored_from is not None))
        os.chmod(self.workdir / "replay.sh", 0o755)

    def connect_ssh(self, timeout: "float | Deadline") -> None:
        self.ssh_port = _forwarded_ssh_port(self)
        if self.image.ssh_key is None:
            raise QemuLaunchError("access=ssh needs an SSH key", hint="pass --guest-key")
        self.shell.ssh = SSHChannel("127.0.0.1", self.ssh_port, self.image.ssh_user,
                                    Path(self.image.ssh_key), meters=self.shell.meters,
                                    timeout=timeout)

    def reboot_from_inside(self) -> None:
        """``reboot -f`` on the console; back once it reset (:func:`_reboot_from_inside`)."""
        _reboot_from_inside(self)

    def wait_rebooted(self) -> None:
        """After a reset the guest boots again: wait for it to be ready, as at launch."""
        if self.shell.ssh is not None:
            self.shell.ssh.close()
            self.shell.ssh = None
        self.shell.console.forget_output()
        t0 = time.monotonic()
        _wait_ready(self, t0 + self.deadlines.boot)
        self.launch_marks["rebooted"] = round(time.monotonic() - t0, 2)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def died(self) -> bool:
        """QEMU exited on its own (guest reset or power-off, a crash), not asked by close()."""
        return self.process is not None and not self._closed and self.process.poll() is not None

    @property
    def process(self) -> subprocess.Popen | None:
        """QEMU's process (None before :meth:`launch`)."""
        return self.qemu.popen if self.qemu is not None else None

    def close(self) -> None:
        """Stop QEMU and release everything. Safe to call any number of times; an interrupted
        close still kills and reaps QEMU and removes the temporary directory."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.shell is not None:
                self.shell.close()
            self._stop_vm()
        finally:
            self._release_vm()
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
            _open_guests.discard(self)

    def _stop_vm(self) -> None:  # (the orderly way: QMP quit)
        if self.qemu is not None:
            self.exit_status = self.qemu.stop(self.monitor.quit if self.monitor else None)

    def _release_vm(self) -> None:  # (what _stop_vm did not get to: QEMU killed, reaped)
        if self.monitor is not None:
            self.monitor.close()
        if self.qemu is not None:
            self.exit_status = self.qemu.stop()

    # -- QMP (harness.qemu.qmp_sync: the async Monitor called synchronously) --------------------

    def _raise_if_dead(self) -> None:  # (QEMU gone: say so, with its output)
        if self.process is not None and self.process.poll() is not None:
            self.exit_status = self.process.returncode
            raise GuestDiedError(f"QEMU exited with status {self.process.returncode}",
                                 details="QEMU output:\n" + tail(self.qemu_output()))

    # (a ``timeout`` is a reference figure, scaled here: docs/architecture.md)
    def qmp(self, command: str, timeout: float = 30.0, **arguments: Any) -> Any:
        return self._monitor().execute(command, self.deadlines.scaled(timeout), **arguments)

    def hmp(self, command_line: str, timeout: float = 30.0) -> str:
        return self._monitor().hmp(command_line, self.deadlines.scaled(timeout))

    def query_pci(self) -> list[dict]:
        return self._monitor().query_pci()

    def _monitor(self) -> SyncMonitor:
        if self.monitor is None:
            raise GuestDiedError(f"guest {self.name} was never started")
        return self.monitor

    def qemu_id(self, device_id: str) -> str:
        return device_id  # (the id QEMU knows it by: a driver above QEMU may rename it)

    def driver_lists(self, device_id: str) -> bool | None:
        return None  # (the driver's own record lists it? QMP keeps none; libvirt its live XML)

    def device_add(self, driver: str, device_id: str, **props: Any) -> float:
        seconds = self._monitor().device_add(driver, device_id, **props)
        if "bus" in props:
            self._used_buses[props["bus"]] = device_id
        return seconds

    def device_del(self, device_id: str, timeout: float = pace.UNPLUG, grace: float = 10.0) -> UnplugResult:
        result = self._monitor().device_del(device_id, *map(self.deadlines.scaled, (timeout, grace)))
        self._used_buses = {b: d for b, d in self._used_buses.items() if d != device_id}
        return result

    def device_del_all(self, ids: list[str], timeout: float,
                       limit: float | None = None) -> list[UnplugResult]:
        """``device_del`` all at once; ``timeout`` with none leaving fails, ``limit`` in all."""
        d = self.deadlines
        results = self._monitor().device_del_all(ids, d.scaled(timeout),
                                                 d.scaled(max(limit or timeout, timeout)))
        self._used_buses = {b: d for b, d in self._used_buses.items() if d not in ids}
        return results

    def wait_removed(self, device_id: str, timeout: float = pace.UNPLUG) -> UnplugResult:
        """Wait (no new request) for a device whose unplug was requested earlier."""
        result = self._monitor().wait_removed(device_id, self.deadlines.scaled(timeout))
        self._used_buses = {b: d for b, d in self._used_buses.items() if d != device_id}
        return result

    def allocate(self, kind: str) -> int:
        """A number unique within this guest's life for ``kind`` (subnets, disk names...)."""
        self._counters[kind] = n = self._counters.get(kind, -1) + 1
        return n

    def scratch_path(self, name: str) -> Path:
        """A path in the guest's temporary directory (removed when the guest closes)."""
        return self._tmp / name

    def log_sizes(self) -> dict[str, int]:
        """Its logs' sizes now (a test's part of a shared guest's logs starts there)."""
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
        return self.qemu.output() if self.qemu is not None else ""

    def serial_text(self) -> str:
        try:
            return self.paths.serial_log.read_text(errors="replace") if self.paths else ""
        except OSError:
            return ""


def _folders(guest: "Guest") -> tuple[Path, Paths]:
    """The guest's work folder, and its temporary folder for sockets and the disk overlay (a
    short path: unix socket paths are limited to 107 bytes), removed by :meth:`Guest.close`."""
    guest.workdir.mkdir(parents=True, exist_ok=True)
    tmp = new_private_dir(run_tmp_prefix(guest.owner))  # (QEMU's monitor and disk overlay)
    _open_guests.add(guest)
    return tmp, Paths(qmp_socket=tmp / "qmp.sock", console_socket=tmp / "console.sock",
                      serial_log=guest.workdir / "serial.log",
                      disk_overlay=tmp / "disk.qcow2" if guest.image.disk else None)


def _reboot_from_inside(guest: "Guest") -> None:
    """``reboot -f`` through the guest's access channel, then wait for QEMU's RESET event: until
    the reset the old system still answers, and a wait for the guest to be ready again took it
    for the rebooted one (a loaded systemd guest reset 5 s after the line; its SSH answered at
    once, and the test's checks then ran into the reboot). Over SSH it is not typed on the
    console: a guest reached by SSH need not have a shell there yet (a line typed while its
    autologin was starting was run 5 s late once, and lost another time: no reset in 31 s)."""
    monitor = guest._monitor()
    before = monitor.resets
    if guest.shell.ssh is not None:  # detached, so that the command returns before the reset
        guest.shell.succeed("(sleep 1; reboot -f) </dev/null >/dev/null 2>&1 &")
    else:
        guest.shell.console.send_line("reboot -f")
    wait_until("a RESET event from QEMU after `reboot -f`", lambda: monitor.resets > before,
               guest.deadlines.command)


def _wait_ready(guest: "Guest", by: float) -> None:
    """Until the guest is ready for commands: its ready marker, SSH, cloud-init's last stage.
    The deadline ``by`` moves by the time the guest could not run (harness.core.contention)."""
    deadline = Deadline(by - time.monotonic(), guest.shell.meters)
    if guest.image.ready_pattern:
        m = guest.shell.console.expect_by(guest.image.ready_pattern, deadline)
        if m.groups():
            try:
                guest.guest_uptime_at_ready = float(m.group(1))
            except ValueError:
                pass
    if guest.spec.access == "console":
        # Kernel messages printed on the serial console land inside a command's output
        # (a systemd guest's `ls /sys/class/net` once read "70.451999]" as an interface):
        # keep only emergencies on the console. dmesg still has everything (in the bundle).
        # TERM=dumb: tools do not colour what they print on the console (a terminal).
        guest.shell.run("dmesg -n 1 2>/dev/null; export TERM=dumb; true",
                       max(1.0, deadline.left()))
    if guest.spec.access == "ssh":
        guest.connect_ssh(deadline)
    if guest.image.seed is not None:
        # SSH answers before cloud-init has finished (its last stage writes the DHCP rule
        # for NICs that appear later): a NIC hot-added before then got no address. Its own
        # `status --wait` (22.4) returned between two stages, so wait for the file the last
        # stage writes when it is done.
        channel = guest.shell.ssh or guest.shell.console
        channel.exec("! command -v cloud-init >/dev/null || while ! test -e "
                     "/var/lib/cloud/instance/boot-finished; do sleep 0.5; done",
                     deadline, guest.shell.meters)


def _forwarded_ssh_port(guest: "Guest") -> int:
    # hostfwd asked for port 0; the kernel chose a free one, which `info usernet` shows.
    text = guest.hmp("info usernet")
    m = re.search(r"HOST_FORWARD\]\s+\d+\s+127\.0\.0\.1\s+(\d+)\s+\S+\s+22\b", text)
    if not m:
        raise QemuLaunchError("cannot find the forwarded SSH port in `info usernet`",
                              details=text)
    return int(m.group(1))


def _make_overlay(image: GuestImage, overlay: Path, restored_from: Path | None) -> None:
    """The guest's disk: a throw-away qcow2 overlay (the user's image is never written), or
    the overlay as it was when a restored state was saved (its file system is in the RAM)."""
    if restored_from is not None:
        shutil.copyfile(restored_from / migration.DISK_FILE, overlay)
        return
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", image.disk_format, "-b",
                    str(Path(image.disk).resolve()), str(overlay)],
                   check=True, capture_output=True, timeout=30)


def _launch_error(guest: "Guest", e: Exception, output: str) -> QemuLaunchError:
    """A guest that did not come up: how far it got, its command line, QEMU's output, the
    serial log's last lines."""
    console = guest.serial_text()
    return QemuLaunchError(
        f"guest {guest.name} ({guest.spec.label}) did not come up: {e}",
        hint=getattr(e, "hint", "") or "read QEMU's output and the serial log below",
        details=f"how far it got: {_progress(guest, console)}\n"
                f"command line:\n    {format_argv(guest.argv)}\nQEMU output:\n{tail(output)}\n"
                f"serial log (last lines):\n{tail(console)}")


def _progress(guest: "Guest", console: str) -> str:
    """How far the launch got, for a launch error: QEMU, the boot, the network and SSH."""
    if "qmp" not in guest.launch_marks:
        return "QEMU did not answer QMP (the guest never started running)"
    text = f"console: {probes.boot_stage(console)}"
    if guest.spec.access == "ssh":
        text += ("; SSH: " + ("answered" if guest.shell is not None and guest.shell.ssh else
                              f"no login on 127.0.0.1:{guest.ssh_port}" if guest.ssh_port else
                              "not tried (the console never showed the ready marker)"))
    return text


def retime(guest: Guest, deadlines: Deadlines) -> None:
    """Give a running guest other deadlines (its pool's, once they follow the guest's speed:
    :meth:`harness.core.pace.Deadlines.following`), its shell's waits included."""
    guest.deadlines = deadlines
    if guest.shell is not None:
        guest.shell.default_timeout = deadlines.command
        guest.shell.scale = deadlines.scaled


#: Guests not closed yet. A run that ends by Ctrl-C or SIGTERM (which the plugin turns into an
#: ordinary exit) skips fixture teardown in xdist workers; closing them at exit keeps the
#: promise that no QEMU and no temporary directory is left behind.
_open_guests: "weakref.WeakSet[Guest]" = weakref.WeakSet()


@atexit.register
def _close_open_guests() -> None:
    for guest in list(_open_guests):
        guest.close()
