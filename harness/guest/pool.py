"""GuestPool: boot a guest per spec, and let the next test reuse it when it is verifiably clean.

A guest goes back to the pool only if the test passed, QEMU is alive, and the guest's state
(QEMU's device tree, guest lspci/lsusb, network interfaces, block devices, online CPUs and
memory) equals what it was right after boot. Anything else closes it, so no test ever sees
another test's leftovers.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path
from typing import Callable

from harness.core.errors import GuestDiedError, HarnessError, QemuLaunchError, WaitTimeout
from harness.guest.guest import Guest, retime
from harness.qemu.machine import GuestImage
from harness.qemu.machine import GuestSpec
from harness.core.pace import Deadlines
from harness.core.paths import checked_tempdir
from harness.guest.snapshot import RESTORABLE_ARGS, StateCache

# One command that captures what a test could leave behind in the guest.
STATE_COMMAND = ("lspci -n; echo --net; ls /sys/class/net; echo --usb; lsusb 2>/dev/null; "
                 "echo --block; ls /sys/block; echo --cpu; cat /sys/devices/system/cpu/online; "
                 "echo --mem; grep -h . /sys/devices/system/memory/memory*/online 2>/dev/null | sort | uniq -c")


def guest_state(guest: Guest) -> tuple:
    peripherals = sorted(c["name"] for c in guest.qmp("qom-list", path="/machine/peripheral"))
    return tuple(peripherals), guest.shell.succeed(STATE_COMMAND, timeout=15)


class GuestPool:
    def __init__(self, image: GuestImage, *, qemu_binary: str, accel: str, workdir: Path,
                 deadlines: Deadlines, reuse: bool = True, name_prefix: str = "g",
                 log: Callable[[str], None] = lambda s: None, boot_attempts: int = 1,
                 owner: str | None = None, states: StateCache | None = None,
                 guest_class: type[Guest] = Guest):
        """``boot_attempts`` > 1 boots another guest when one does not come up (its QEMU does
        not answer QMP in time, or it hangs or dies before its ready marker): only for the
        lab, where L2 boots under nested KVM on TCG sometimes hang (docs/lab.md). Each retry is
        kept in :attr:`boot_retries`. ``owner``: the run's owner tag (its guests' temp folders).
        ``states``: saved guest states (harness.snapshot): a guest of a shape saved before is
        restored from it, the first of a shape is saved after its boot; None boots every one.
        ``guest_class``: what a guest is (a :class:`~harness.virt.domain.DomainGuest` for
        ``--driver libvirt``)."""
        self.states, self.guest_class = states, guest_class
        self.owner = owner
        self.image = image
        self.deadlines = deadlines
        self.boot_attempts = boot_attempts
        self.boot_retries: list[str] = []
        #: What the first booted guest's speed did to the deadlines (Deadlines.following),
        #: once; None until a guest booted.
        self.paced: str | None = None
        self.qemu_binary = qemu_binary
        self.accel = accel
        self.workdir = Path(workdir)
        self.reuse = reuse
        self.log = log
        self._names = (f"{name_prefix}{i}" for i in itertools.count(1))
        self._idle: dict[GuestSpec, tuple[Guest, tuple]] = {}
        self.booted: list[Guest] = []

    def acquire(self, spec: GuestSpec, image: GuestImage | None = None,
                deadlines: Deadlines | None = None, on_running=None) -> Guest:
        """A clean guest of ``spec`` booted from ``image`` (default: the pool's), with its
        ``deadlines`` (default: the pool's). ``on_running``: see :meth:`Guest.launch` (a new
        guest then, never an idle one)."""
        image = image or self.image
        idle = self._idle.pop(spec, None)
        if idle is not None and idle[0].image == image and on_running is None:
            return idle[0]
        if idle is not None:
            idle[0].close()
        for attempt in range(1, self.boot_attempts + 1):
            guest = self._new_guest(spec, image, deadlines)
            try:
                guest = self._start(guest, on_running)
                break
            except QemuLaunchError as e:
                if attempt == self.boot_attempts or not isinstance(e.__cause__, (WaitTimeout,
                                                                                 GuestDiedError)):
                    raise
                self.boot_retries.append(f"boot of {guest.name} ({spec.label}) failed, another guest "
                                         f"booted instead: {e.message.splitlines()[0]} (serial "
                                         f"log: {guest.workdir / 'serial.log'})")
                self.log(self.boot_retries[-1])
        if self.paced is None and guest.started == "booted":
            self._follow(guest, own_deadlines=deadlines is not None)
        guest.baseline = guest_state(guest) if self.reuse else None
        self.log(f"{guest.started} {guest.name} ({spec.label}) in {guest.boot_seconds:.2f} s")
        return guest

    def _follow(self, guest: Guest, *, own_deadlines: bool) -> None:
        """The first boot measures how fast guests run here (the probe measured the CPU that
        starts them): the deadlines of this guest and, unless it came with its own, of the
        pool's later guests follow it."""
        before = guest.deadlines
        after = before.following(guest.launch_marks["ready"])
        if after is before:
            self.paced = (f"{guest.name} was ready in {guest.launch_marks['ready']:.1f} s: "
                          f"deadlines stay at time factor {before.pace.factor:g}")
            return
        retime(guest, after)
        if not own_deadlines:
            self.deadlines = after
        self.paced = (f"{guest.name} was ready in {guest.launch_marks['ready']:.1f} s: deadlines "
                      f"follow its speed, time factor {before.pace.factor:g} -> "
                      f"{after.pace.factor:g} (command {after.command:g} s, unplug "
                      f"{after.unplug:g} s)")
        self.log(self.paced)

    def _new_guest(self, spec: GuestSpec, image: GuestImage, deadlines: Deadlines | None) -> Guest:
        name = next(self._names)
        guest = self.guest_class(spec, image, workdir=self.workdir / f"{name}-{spec.label}",
                      qemu_binary=self.qemu_binary, accel=self.accel,
                      deadlines=deadlines or self.deadlines, name=name, owner=self.owner,
                      extra_args=RESTORABLE_ARGS if self.states is not None else ())
        self.booted.append(guest)
        return guest

    def _start(self, guest: Guest, on_running) -> Guest:
        """Restore ``guest`` from its shape's saved state if there is one (a guest started
        during its boot never is), else boot it and save its state for the next ones. A state
        that does not load is thrown away and another guest boots instead, noted."""
        key = self.states.key(guest) if self.states is not None and on_running is None else None
        if key is None:
            return guest.launch(on_running)
        asked = time.monotonic()
        with self.states.claim(key, wait=guest.deadlines.boot) as entry:
            waited = time.monotonic() - asked
            if waited >= 0.05:  # another worker was booting this shape to save it
                guest.launch_marks["waited_for_state"] = round(waited, 2)
            if entry is not None:
                try:
                    return guest.launch(restore=entry)
                except HarnessError as e:
                    self.states.discard(key)
                    self.boot_retries.append(
                        f"restore of {guest.name} ({guest.spec.label}) from its saved state "
                        f"failed, booted instead: {e.message.splitlines()[0]} (QEMU output: "
                        f"{guest.workdir / 'qemu.log'})")
                    self.log(self.boot_retries[-1])
                    guest = self._new_guest(guest.spec, guest.image, guest.deadlines)
            guest.launch()
            try:
                guest.saved = self.states.save(guest, key)
            except (HarnessError, OSError) as e:  # costs this guest nothing but the time
                guest.saved = {"skipped": f"save failed: {str(e).splitlines()[0]}"}
            if guest.saved:
                self.log(f"saved the state of {guest.name} ({guest.spec.label}): {guest.saved}")
        return guest

    def discard_idle(self, spec: GuestSpec) -> None:
        idle = self._idle.pop(spec, None)
        if idle is not None:
            idle[0].close()

    def release(self, guest: Guest, *, clean_exit: bool) -> str:
        """Give a guest back. Returns why it was kept or closed (for the test's bundle)."""
        if not (self.reuse and clean_exit and guest.alive() and guest.baseline is not None):
            guest.close()
            return "closed (test failed, reuse off, or QEMU gone)"
        try:
            state = guest_state(guest)
        except Exception as e:  # any failure to read state means: do not trust this guest
            guest.close()
            return f"closed (could not read its state: {e})"
        if state != guest.baseline:
            guest.close()
            return "closed (state differs from the clean baseline)"
        # Keep one idle guest per spec; the previous idle one of this spec is replaced.
        old = self._idle.pop(guest.spec, None)
        if old is not None:
            old[0].close()
        self._idle[guest.spec] = (guest, guest.baseline)
        return "kept for reuse (state equals the clean baseline)"

    def close(self) -> None:
        for guest, _ in self._idle.values():
            guest.close()
        self._idle.clear()
        for guest in self.booted:
            guest.close()


def probe_boot(image, qemu_binary: str, deadlines, attempts: int = 1) -> None:
    """Boot the built-in guest under KVM; raise unless it becomes ready by ``deadlines.boot``
    (a working KVM boots it in about a second, nested KVM in the lab host in 10-25 s).
    ``attempts``: boots to try, as the lab's guest pool does (nested boots sometimes hang)."""
    with tempfile.TemporaryDirectory(prefix="hh-kvm-probe-", dir=checked_tempdir()) as d:
        pool = GuestPool(image, qemu_binary=qemu_binary, accel="kvm", workdir=Path(d),
                         deadlines=deadlines, reuse=False, name_prefix="kvm-probe",
                         boot_attempts=attempts)
        try:
            pool.acquire(GuestSpec(machine="q35", root_ports=0)).shell.succeed("true", timeout=10)
        finally:
            pool.close()
