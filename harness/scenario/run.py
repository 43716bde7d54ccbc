"""ScenarioRun: what one test uses -- guests from the pool, devices it plugs, latencies it
records -- and the bundle it leaves behind.

Knows nothing of pytest: the plugin creates one per test and calls :meth:`finish`.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

from harness.guest import checks, latency, migration
from harness.scenario import prereq
from harness.guest import ramcheck
from harness.core.pace import UNPLUG
from harness.scenario.bundle import write_guest_bundle, write_record
from harness.scenario.devices import HotplugDevice, Plugged
from harness.core.errors import MigrationRefused, QMPCommandError, QemuLaunchError
from harness.guest.guest import Guest, without_incoming
from harness.qemu.machine import GuestImage
from harness.qemu.machine import GuestSpec
from harness.guest.pool import GuestPool


class ScenarioRun:
    def __init__(self, pool: GuestPool, bundle_dir: Path, *, keep_bundle: bool = False,
                 access: str = "console", check_migrated_ram: bool = False,
                 guest_must_configure_nic: bool = False):
        self.pool = pool
        #: ``--guest-must-configure-nic``: a hot-added NIC the guest leaves unconfigured fails.
        self.guest_must_configure_nic = guest_must_configure_nic
        #: ``--check-migrated-ram``: compare each migration's source and destination RAM.
        self.check_migrated_ram = check_migrated_ram
        #: How guests are reached unless a test says otherwise (``--guest-access``).
        self.access = access
        self.bundle_dir, self.keep_bundle = Path(bundle_dir), keep_bundle
        self.guests: list[tuple[Guest, dict[str, int]]] = []
        self.plugged: list[tuple[Guest, Plugged]] = []
        self.latencies: dict[str, float] = {}
        self.notes: list[str] = []
        self.fresh_only = False
        self.prerequisites: list = []
        #: Guests that did not boot for this test (kept for the bundle).
        self.failed_boots: list[Guest] = []
        self._clocks: dict[Guest, latency.ClockOffset] = {}
        self._record: dict | None = None
        #: Per guest, the kernel log's last timestamp when this test got it.
        self._kernel_marks: dict[Guest, float | None] = {}
        #: (pattern, why) of kernel messages not to fail on: allow_kernel's and the plugged
        #: devices' known noise (noted in the report when seen).
        self._kernel_allowed: list[tuple[re.Pattern, str]] = []

    def guest(self, spec: GuestSpec, image: GuestImage | None = None, *, fresh: bool = False,
              check_prerequisites: bool = True, access: str | None = None,
              deadlines=None, on_running=None) -> Guest:
        """A booted guest of this shape. ``fresh``: a new one, never given to another test
        (for scenarios that leave changes no check can undo, such as an onlined CPU).
        ``on_running(guest)``: called right after the new guest starts running, before its OS
        is up (implies ``fresh``).

        The guide's section 1 prerequisites are checked once per guest; a missing one raises
        :class:`~harness.prereq.PrerequisiteError` naming it."""
        spec = dataclasses.replace(spec, access=access or self.access)
        if fresh or on_running is not None:
            self.fresh_only = True
            self.pool.discard_idle(spec)
        retried, booted = len(self.pool.boot_retries), len(self.pool.booted)
        paced = self.pool.paced
        try:
            guest = self.pool.acquire(spec, image, deadlines, on_running)
        except QemuLaunchError:
            # The guest that could not boot goes into the bundle (its serial log, command line,
            # replay script), as the test's first and only guest.
            self.failed_boots += self.pool.booted[booted:]
            raise
        finally:
            self.notes += self.pool.boot_retries[retried:]
        if self.pool.paced != paced:
            self.notes.append(self.pool.paced)
        self.guests.append((guest, guest.log_sizes()))
        self._kernel_marks[guest] = checks.kernel_log_mark(guest)
        if check_prerequisites:
            if guest.prerequisites is None:
                guest.prerequisites = prereq.check_guest(guest, machine=spec.machine,
                                                         pci_hotplug=spec.pci_hotplug)
            self.prerequisites = guest.prerequisites
            missing = [c for c in guest.prerequisites if not c.ok]
            if missing:
                raise prereq.PrerequisiteError(
                    "guest prerequisite missing (guide section 1): "
                    + "; ".join(f"{c.name}: {c.detail}" for c in missing),
                    hint="use a guest kernel with PCI hotplug support and the device's driver")
        return guest

    def require_driver(self, guest: Guest, driver: str | None) -> None:
        """Fail with the reason, before any hotplug, if the guest lacks the device's driver."""
        if not driver:
            return
        check = prereq.check_driver(guest, driver)
        if not check.ok:
            raise prereq.PrerequisiteError(f"guest prerequisite missing: {check.detail}",
                                           hint=f"install or build the {driver} driver in the guest")

    def plug(self, guest: Guest, device: HotplugDevice, device_id: str, **at) -> Plugged:
        """``device_add`` ``device`` as ``device_id``; ``at``: where (``bus``, ``addr``,
        ``multifunction``), for the models that take it (a NIC), instead of a free slot."""
        self.require_driver(guest, device.guest_driver)
        if guest.image.builtin and guest not in self._clocks:
            self._clocks[guest] = latency.measure_offset(guest)
        add_sent = time.monotonic()
        plugged = device.plug(guest, device_id, **at)
        plugged.add_sent = add_sent
        return self.adopt(guest, plugged)

    def migrate(self, guest: Guest) -> Guest:
        """Live-migrate ``guest`` with the devices this test plugged into it to a second QEMU
        on this machine (``-incoming`` on a unix socket, the devices on its command line), and
        return the destination, which the test uses from then on. The source is closed."""
        mine = [p for g, p in self.plugged if g is guest and not p.removed]
        through = [p for p in mine if getattr(p.device, "passthrough", "")]
        # A passed-through device cannot be on the destination's command line (the source holds
        # it); QEMU's migration blocker is what refuses, and the harness says so (below).
        extra = [a for p in mine if p not in through for a in p.device.command_line(guest, p)]
        dest = _destination(self.pool, guest, extra)
        dest.receive()
        self.guests.append((dest, dest.log_sizes()))  # (in the bundle if the migration fails)
        try:
            seconds = migration.migrate(guest, dest, before_running=self._check_ram
                                       if self.check_migrated_ram else None)
        except QMPCommandError as e:
            if guest.migrated_to is None:
                dest.close()
                if e.command == "migrate" and through:
                    raise MigrationRefused(guest.name, through[0].device_id,
                                           through[0].device.passthrough, e.qemu_desc) from e
            raise
        finally:
            if guest.migrated_to is dest:
                # From the moment the migration completed the devices, the kernel check and
                # the clean-up are the destination's, even if its first command fails: the
                # source is postmigrate and would answer nothing.
                self.plugged = [(dest if g is guest else g, p) for g, p in self.plugged]
                for p in mine:
                    p.guest = dest
                self._kernel_marks[dest] = self._kernel_marks.pop(guest, None)
                self._clocks.pop(guest, None)
        self.record("migration", seconds)
        self.fresh_only = True
        if guest.image.builtin:
            self._clocks[dest] = latency.measure_offset(dest)
        guest.close()
        return dest

    def _check_ram(self, source: Guest, dest: Guest) -> None:
        self.note(ramcheck.check(source, dest, timeout=120))

    def adopt(self, guest: Guest, plugged: Plugged) -> Plugged:
        """A device plugged outside :meth:`plug` (during boot, before the guest could answer):
        from now on this run owns it, as if :meth:`plug` had plugged it (which ends here)."""
        plugged.guest, plugged.run = guest, self
        for pattern, why in plugged.device.kernel_noise:
            self.allow_kernel(pattern, why)
        self.plugged.append((guest, plugged))
        self.record(f"{plugged.device_id}.device_add", plugged.add_seconds)
        plugged.function = checks.pci_function(guest, plugged.device_id)
        plugged.pci_address = plugged.function.address if plugged.function else None
        return plugged

    def wait_removed(self, guest: Guest, plugged: Plugged, timeout: float | None = None):
        """A device whose unplug was requested earlier (its ``unplug`` said "paused"): wait for
        it to leave, then release what its plug set up."""
        result = guest.wait_removed(plugged.device_id, timeout or UNPLUG)
        plugged.removed = True
        plugged.device.cleanup(guest, plugged)
        return result

    def unplug(self, guest: Guest, plugged: Plugged, timeout: float | None = None):
        """``device_del`` and wait for it to complete by ``timeout`` seconds (default: the
        guest's unplug deadline, a reference figure scaled to this machine)."""
        plugged.del_sent = time.monotonic()
        result = plugged.device.unplug(guest, plugged, timeout=timeout or UNPLUG)
        self.record(f"{plugged.device_id}.device_del_to_event", result.seconds)
        if result.busy_seconds:
            self.record(f"{plugged.device_id}.port_busy", result.busy_seconds)
        return result

    def _guest_side_latencies(self) -> None:
        """device_add/device_del to what the guest kernel logged, on the guest's own clock.
        Read once at the end of the test, when the test's own checks have seen the device come
        and go, so every event is in the log."""
        traces: dict[Guest, list] = {}
        for guest, plugged in self.plugged:
            clock = self._clocks.get(guest)
            if clock is None or not guest.alive():
                continue
            if guest not in traces:
                traces[guest] = latency.parse_trace(guest.shell.run(latency.TRACE_COMMAND, timeout=15).output)
            events = traces[guest]
            measured = latency.plug_latencies(events, clock, plugged.add_sent, plugged.pci_address)
            if plugged.del_sent:
                usb = None if plugged.pci_address else latency.usb_device_name(events, clock, plugged.add_sent)
                measured.update(latency.unplug_latency(events, clock, plugged.del_sent,
                                                       plugged.pci_address, usb))
            for name, seconds in measured.items():
                self.record(f"{plugged.device_id}.{name}", seconds)
            self.record(f"{plugged.device_id}.clock_error", clock.error)

    def record(self, name: str, seconds: float) -> None:
        self.latencies[name] = round(seconds, 4)

    def allow_kernel(self, pattern: str, why: str = "") -> None:
        """Kernel log lines this test provokes on purpose (a surprise removal's WARNING, say):
        the end-of-test kernel check leaves problems matching ``pattern`` (a regex, searched
        in the problem and the lines after it) alone; with ``why``, a seen one is noted."""
        self._kernel_allowed.append((re.compile(pattern), why))

    def kernel_problems(self) -> list[str]:
        """Oops, BUG, WARNING, call traces, hung tasks, soft lockups the guests' kernels logged
        since this test got them (each with the lines that follow it), allowed ones left out."""
        problems = []
        for guest, mark in self._kernel_marks.items():
            if not guest.alive():
                continue
            for block in checks.kernel_problems(guest, mark):
                why = next((w for p, w in self._kernel_allowed if p.search(block)), None)
                if why is None:
                    problems.append(f"guest {guest.name}: {block}")
                elif why and not any(why in n for n in self.notes):
                    self.notes.append(f"allowed: {why}: {block.splitlines()[0]}")
        return problems

    def note(self, text: str) -> None:
        """A line for the report (e.g. a QEMU anomaly the test verified around)."""
        self.notes.append(text)

    # -- end of test ---------------------------------------------------------------------------

    def finish(self, passed: bool) -> dict:
        """Undo what is left, write the bundle, give guests back. Returns the test's record.
        A second call returns the first one's record (a test may finish early to look at the
        host afterwards)."""
        if self._record is not None:
            return self._record
        try:
            self._guest_side_latencies()
        except Exception as e:  # figures are a by-product; never let them mask the verdict
            self.notes.append(f"guest-side latencies not measured: {e}")
        cleanup_errors: list[str] = []
        stranded = self._unplug_what_is_left(cleanup_errors)
        keep = self.keep_bundle or not passed or bool(cleanup_errors)
        guests = self._give_guests_back(passed, keep, cleanup_errors)
        for guest, plugged in stranded:
            guest.close()  # (released above unless reusable, and a guest with errors is not)
            self._give_back(guest, plugged, cleanup_errors)
        record = {"latencies": self.latencies, "notes": self.notes, "guests": guests,
                  "prerequisites": [f"{c.name}: {'ok' if c.ok else 'MISSING'} ({c.detail})"
                                    for c in self.prerequisites],
                  "cleanup_errors": cleanup_errors,
                  "bundle": str(self.bundle_dir) if keep else None}
        if keep:
            write_record(self.bundle_dir, record, self.plugged)
        self._record = record
        return record

    def _unplug_what_is_left(self, errors: list[str]) -> list[tuple[Guest, Plugged]]:
        """Unplug devices the test left plugged. Returns those still attached after their
        unplug failed (the guest refused it, QEMU died): they are given back to the host only
        once their guest is closed, since a QEMU that still runs holds /dev/vfio/N and the host
        driver could not take the device back."""
        stranded: list[tuple[Guest, Plugged]] = []
        for guest, plugged in reversed(self.plugged):
            if plugged.removed:
                continue
            if guest.alive():
                try:
                    plugged.device.unplug(guest, plugged, timeout=10)
                    continue
                except Exception as e:  # the test already failed or will be marked failed
                    errors.append(f"unplug {plugged.device_id}: {e}")
            if not plugged.removed:
                stranded.append((guest, plugged))
        return stranded

    def _give_guests_back(self, passed: bool, keep: bool, cleanup_errors: list[str]) -> list[dict]:
        """Bundle each guest (when the bundle is kept) and give it back to the pool, which
        keeps it for reuse only when clean. Returns what the record says of each guest."""
        guests = [{"name": g.name, "spec": g.spec.label, "boot_failed": True,
                   "launch_marks": g.launch_marks, "qemu_exit_status": g.exit_status}
                  for g in self.failed_boots]
        for guest in self.failed_boots if keep else ():
            write_guest_bundle(self.bundle_dir, guest, {}, passed)
        for guest, marks in self.guests:
            died = guest.died()
            hung = (not passed and not died and guest.alive() and guest.migrated_to is None
                    and _stopped_answering(guest))
            if keep:  # (a guest that stopped answering is not asked for its logs)
                write_guest_bundle(self.bundle_dir, guest, marks, passed, answers=not hung)
            reusable = passed and not cleanup_errors and not self.fresh_only
            verdict = self.pool.release(guest, clean_exit=reusable)
            guests.append({"name": guest.name, "spec": guest.spec.label,
                           "boot_seconds": round(guest.boot_seconds or 0, 3),
                           "started": guest.started, "state_saved": guest.saved,
                           "launch_marks": guest.launch_marks,
                           "after_test": verdict, "qemu_exit_status": guest.exit_status,
                           "died": died, "hung": hung})
        return guests

    def _give_back(self, guest: Guest, plugged: Plugged, errors: list[str],
                   attempts: int = 3) -> None:
        """Undo what ``plug`` set up on the host (a vfio binding) for a device whose guest is
        closed; a few tries, as the kernel may still be releasing the device's group."""
        for attempt in range(1, attempts + 1):
            try:
                plugged.device.cleanup(guest, plugged)
                plugged.removed = True
                if attempt > 1:
                    self.notes.append(f"{plugged.device_id} given back to the host on try {attempt}")
                return
            except Exception as e:
                if attempt == attempts:
                    errors.append(f"give back {plugged.device_id}: {e}")
                    return
                time.sleep(guest.deadlines.scaled(1.0))  # the group's release is not an event we can wait on


def _destination(pool: GuestPool, guest: Guest, extra: list[str]) -> Guest:
    """A second QEMU of ``guest``'s shape that waits for its live migration, with ``extra``
    (the devices plugged into the source) on its command line."""
    if guest.driver != "qmp":
        guest.migrate_on_this_host()  # (libvirt's refusal: an expected failure in its words)
    name = f"{guest.name}-dst"
    # (the socket in the source's temp folder: a unix socket path is limited to 107 bytes)
    dest = Guest(guest.spec, guest.image, workdir=pool.workdir / f"{name}-{guest.spec.label}",
                 qemu_binary=guest.qemu_binary, accel=guest.accel, deadlines=guest.deadlines,
                 name=name, owner=pool.owner,
                 extra_args=(*without_incoming(guest.extra_args), *extra,
                             "-incoming", f"unix:{guest.scratch_path('migration.sock')}"))
    pool.booted.append(dest)
    return dest


def _stopped_answering(guest: Guest) -> bool:
    """Whether a guest whose test failed no longer runs even ``true`` (seen in the lab: an L2
    guest stuck in a disk read through nested vfio); such a guest is closed, never reused, and
    --retry-dead-guest treats it like one that died."""
    try:
        return not guest.shell.run("true", timeout=5).ok
    except Exception:  # a timeout or a dead link: no answer
        return True
