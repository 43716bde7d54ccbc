"""One process's share of a run: its configuration, its backend, its guest pool.

The process that starts a run decides (run folder, pace, accelerator) and writes the run
configuration (harness/runconfig.py); xdist workers and the run inside the lab host read it.
Knows nothing of pytest: the plugin builds one from the parsed options.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import time
from pathlib import Path

import fcntl

from harness import lab
from harness.qemu import accel as accel_mod
from harness.run import backends
from harness.run import guests
from harness.run import hygiene
from harness.images import builtin as images
from harness.guest import snapshot
from harness.core import pace as pace_mod
from harness.core.errors import ConfigError, HarnessError
from harness.qemu.machine import GuestImage
from harness.qemu.machine import MACHINES
from harness.guest.guest import Guest
from harness.guest.pool import GuestPool, probe_boot
from harness.virt import connect, daemon
from harness.virt.domain import DomainGuest
from harness.core.paths import (UnsafePathError, check_private, open_nofollow, private_dir,
                                trusted_program)
from harness.qemu.process import qemu_device_names, qemu_version, version_tuple
from harness.core.runconfig import RunConfig
from harness.guest.snapshot import StateCache

#: Oldest QEMU the harness supports: ACPI hotplug into q35 root ports is the default from 6.1,
#: DEVICE_UNPLUG_GUEST_ERROR exists from 6.2.
MIN_QEMU = (6, 2)
#: A run writes logs, bundles and reports; below this much free space it would fail half-way.
MIN_FREE_BYTES = 20 << 20


class HarnessSession:
    """Per-process state: the run configuration, the backend, the image, the guest pool.

    Made cheaply when pytest starts (options, backend, guest choices: what collection needs).
    The run itself -- its folder, run.json, the pace probe, the accelerator choice (maybe a
    probe boot), QEMU's version, the saved-states folder -- is decided the first time a test
    needs it (:attr:`run`), by whichever of the run's processes gets there first, under a lock;
    the others load what it wrote. A run that never needs it (``pytest tests/unit``,
    ``--collect-only``) writes nothing and starts no QEMU."""

    def __init__(self, opt, *, config=None, worker: str = "", plan: str | None = None,
                 given: str | None = None, starter: int | None = None):
        """``opt``: the parsed options. ``plan``: the run folder the process that started the
        run (``starter``: its pid; None: this one) chose, for an xdist worker (None: choose one
        now). ``given``: the path of a run configuration already decided (inside the lab)."""
        self.config, self.option, self.worker, self.starter = (config, opt, worker,
                                                              starter or os.getpid())
        #: For the summary's wall_seconds: the run's span as its user waited for it, from here
        #: (option parsing is done, nothing is built or booted yet) to the report.
        self.started_monotonic = time.monotonic()
        self.user_image = guests.user_image(opt)
        self.access = opt.guest_access or ("ssh" if self.user_image and not opt.guest_ready else "console")
        self.keep_bundles, self.reuse = opt.keep_bundles, not opt.no_reuse
        self.driver = getattr(opt, "driver", "qmp")
        self._image: GuestImage | None = None
        self._pool: GuestPool | None = None
        self._run: RunConfig | None = None
        given_run = RunConfig.load(given) if given else None
        self.plan = given_run or RunConfig.new(
            Path(opt.report_dir), run_dir=Path(plan) if plan else None, backend=opt.backend,
            qemu_binary=_qemu_binary(opt), machines=tuple(opt.machine or MACHINES),
            image="user" if self.user_image else "builtin")
        #: Whether this process decided the run (and so owns its end-of-run work's inputs).
        self.decided_here = False
        #: Scenario functions --backend vfio/lab deselected as emulated_only (collect.select).
        self.emulated_only: list[str] = []
        #: What :meth:`close` could not give back to the host (the report says so; the run fails).
        self.give_back_problems: list[str] = []
        self.backend = backends.make(self.plan.backend, worker=worker, qemu_binary=self.plan.qemu_binary,
                                     pace=None, lab=self.plan.lab, roles=opt.roles,
                                     managed=getattr(opt, "libvirt_managed", "yes") if self.driver == "libvirt" else None)
        retries = opt.retry_dead_guest
        self.test_attempts = 1 + (self.backend.dead_guest_retries if retries is None else retries)
        self._seed_cloud_init(opt)
        #: --guest: the guests every scenario runs on (empty: one guest, as the options say).
        self.guest_choices = guests.resolve(
            opt.guest or [], Path(opt.image_cache or images.DEFAULT_CACHE), self.cloud_init_dir)
        #: What the end-of-run check compares against (read-only: temporary folders, the
        #: user's image files' sizes and times); the process that started the run takes it.
        self.snapshot = None if worker else hygiene.Snapshot.take(
            [self.user_image] + [c.image for c in self.guest_choices if not c.builtin])
        self.hygiene_problems, self.swept = list[str](), list[str]()  # (leftovers; stale folders)
        if given_run is not None and given_run.accel is not None:  # decided by whoever started it
            self._run = given_run
            self._after_decided(given_run)
        elif self.backend.takes_host_devices:
            # A run on host devices is a run of scenarios, and its set-up (the doctor, the
            # binder) needs the run's pace: decided now, before collection.
            self.run
        self.backend.setup(opt.host_inventory)

    @property
    def run(self) -> RunConfig:
        """The run as decided (by this process, or loaded from the one that did)."""
        if self._run is None:
            self._run = self._join_or_decide()
        return self._run

    @property
    def decided(self) -> bool:
        """Whether any process of the run has decided it (nothing is decided here by asking)."""
        return self._run is not None or self._written() is not None

    def _written(self) -> RunConfig | None:
        """The run as another process decided it, if one has. (The lab's outer run writes a
        plan there, with the lab but nothing decided: the run inside decides.) Only a
        ``run.json`` in a run folder of our own that nobody else can write counts: one in a
        look-alike folder another user made first in a shared report folder (its name can be
        guessed) would have the session's end aim junitxml, which opens its file by name,
        at a link of theirs there."""
        try:
            check_private(self.plan.run_dir)
        except (UnsafePathError, OSError):
            return None
        if not self.plan.path.is_file():
            return None
        run = RunConfig.load(self.plan.path)
        return run if run.accel is not None else None

    def _join_or_decide(self) -> RunConfig:
        _require_free_space(self.plan.run_dir.parent)
        folder = private_dir(self.plan.run_dir)
        fd = open_nofollow(folder / ".decide.lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for one pace probe and maybe a probe boot
            run = self._written()
            if run is None:
                run = self._decide()
                self.decided_here = True
        except BaseException:
            if not self.plan.path.is_file():  # nothing decided: no run folder stays
                shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            os.close(fd)
        self._after_decided(run)
        return run

    def _decide(self) -> RunConfig:
        """Measure the machine, choose the accelerator, find QEMU's version: once per run,
        written to the run folder for the run's other processes."""
        version = qemu_version(self.plan.qemu_binary)
        _require_qemu(self.plan.qemu_binary, version)  # (first: cheap, and nothing is written yet)
        where = "lab" if self.plan.lab is not None else "host"
        measured = pace_mod.Pace.measure(where, self.option.time_factor)
        if self.driver == "libvirt":  # (no daemon, or one that cannot use this QEMU: one line,
            # before any test)
            self._libvirt_ready(version, measured)
        requested = self.option.accel
        if self.plan.lab is not None and requested == "auto":
            requested = self.option.lab_accel  # the lab's setting (docs/lab.md)
        deadlines = pace_mod.Deadlines.for_run(measured, accel="kvm", image=self._image_kind,
                                               boot=self.option.boot_timeout)
        choice = accel_mod.choose(requested, probe=lambda: probe_boot(
            self.image, self.plan.qemu_binary, deadlines, attempts=self.backend.boot_attempts))
        if requested != self.option.accel:
            choice = dataclasses.replace(choice, reason=f"--lab-accel {requested}" + (
                "" if requested == "tcg" else f"; {choice.reason}"))
        # The process that started the run owns its temporary folders: it lives to the run's
        # end, while the xdist worker that decides may crash and be replaced mid-run, and
        # another run's sweep (hygiene.sweep_stale) would then remove the live run's folders.
        # (The outer lab run's PID means nothing inside the lab host: there, the inner run's.)
        owner = str(self.starter)
        self.swept = hygiene.sweep_stale()
        run = dataclasses.replace(
            self.plan, owner=owner, accel=choice.name, accel_reason=choice.reason,
            qemu_version=version, pace=dataclasses.asdict(measured),
            states_dir=self._new_states_dir(owner))
        run.write()
        if run.lab is not None:
            lab.write_inside_figures(run.lab.workdir, pace_mod.Deadlines.for_run(
                measured, accel=run.accel, image=self._image_kind, boot=self.option.boot_timeout))
        return run

    def _libvirt_ready(self, version: str, measured: pace_mod.Pace) -> None:
        if self.plan.lab is not None:  # (inside the lab host the daemon is the lab's to start:
            # it answered in 2 s here)
            log = self.plan.lab.workdir / "libvirtd.log"
            took = daemon.ensure_running(measured(LIBVIRTD_READY_SECONDS), log)
            if took is not None:
                print(f"hotplug-harness: lab host: libvirtd answered {took:g} s after its start "
                      f"(its log: {log})", flush=True)
        connect.check_emulator(shutil.which(self.plan.qemu_binary) or self.plan.qemu_binary,
                               version)

    def _after_decided(self, run: RunConfig) -> None:
        _require_qemu(run.qemu_binary, run.qemu_version)
        self.pace = pace_mod.Pace(**run.pace)
        self.backend.pace = self.pace
        self.deadlines = pace_mod.Deadlines.for_run(self.pace, accel=run.accel,
                                                    image=self._image_kind,
                                                    boot=self.option.boot_timeout)
        self.states = self._state_cache(run)

    @property
    def _image_kind(self) -> str:
        return "user" if self.user_image else "builtin"

    def _new_states_dir(self, owner: str) -> str | None:
        """The run's own saved-states folder (None: --no-snapshot, or --snapshot-cache's)."""
        if (self.option.no_snapshot or self.driver != "qmp"
                or (self.option.snapshot_cache and self.plan.lab is None)):
            return None
        return str(snapshot.new_run_cache_dir(owner))

    def _seed_cloud_init(self, opt) -> None:
        if opt.guest_cloud_init or opt.guest:
            # Root's SSH key and NoCloud seeds go below the run folder (here, or as --guest
            # resolves): a planted symlink or a folder others can write is refused first.
            private_dir(self.plan.run_dir)
        if opt.guest_cloud_init:
            # A stock cloud image: an SSH key made for the run, handed to cloud-init by a
            # NoCloud seed (one for the run's processes, in the run folder: one command line
            # per guest shape, so the workers share its saved state).
            self.user_image = guests.cloud_seeded(self.user_image, self.cloud_init_dir)

    @property
    def cloud_init_dir(self) -> Path:
        """The run's one SSH key and NoCloud seed for cloud images (harness.run.guests)."""
        return self.run_dir / "cloud-init" / "run"

    # What the run decided, by name (the run folder is chosen up front, the rest on first use).
    run_dir = property(lambda self: self.plan.run_dir)
    accel = property(lambda self: self.run.accel)
    accel_reason = property(lambda self: self.run.accel_reason)
    qemu_version = property(lambda self: self.run.qemu_version)
    machines = property(lambda self: self.plan.machines)
    qemu_binary = property(lambda self: self.plan.qemu_binary)
    inventory = property(lambda self: self.backend.inventory)
    binder = property(lambda self: self.backend.binder)

    @functools.cached_property
    def qemu_devices(self) -> frozenset[str] | None:
        """The device models of the QEMU under test (``-device help``; None: it did not say)."""
        return qemu_device_names(self.qemu_binary, self.pace(20.0))

    def default_guest(self) -> guests.GuestChoice:
        """The run's one guest when --guest is not given (the built-in one, or --guest-*'s)."""
        return guests.GuestChoice("", self.image, self.access)

    def deadlines_for(self, choice: guests.GuestChoice) -> pace_mod.Deadlines:
        return pace_mod.Deadlines.for_run(self.pace, accel=self.accel,
                                          image="builtin" if choice.builtin else "user",
                                          boot=self.option.boot_timeout)

    def vfio_devices(self, role: str) -> list:
        return self.backend.host_devices(role)

    @property
    def image(self) -> GuestImage:
        if self._image is None:
            if self.user_image:
                self._image = self.user_image
            else:
                cache = Path(self.option.image_cache or images.DEFAULT_CACHE)
                self._image = images.ensure_builtin(cache, log=lambda s: None)
        return self._image

    @property
    def pool(self) -> GuestPool:
        if self._pool is None:
            self._pool = GuestPool(self.image, qemu_binary=self.qemu_binary, accel=self.accel,
                                   deadlines=self.deadlines,
                                   workdir=self.run_dir / "guests", reuse=self.reuse,
                                   name_prefix=f"{self.worker or 'main'}-g",
                                   boot_attempts=self.backend.boot_attempts, owner=self.run.owner,
                                   states=self.states,
                                   guest_class=DomainGuest if self.driver == "libvirt" else Guest)
        return self._pool

    def _state_cache(self, run: RunConfig) -> StateCache | None:
        """Saved guest states (harness.guest.snapshot): the run's own (a private temporary
        folder the deciding process made), or --snapshot-cache's across runs; None with
        --no-snapshot."""
        if run.states_dir:
            # (inside the lab host this is its /tmp, a tmpfs of half its RAM: harness/lab/host.py)
            return StateCache(Path(run.states_dir), qemu_version=run.qemu_version,
                              min_free=(snapshot.LAB_MIN_FREE_BYTES if run.lab is not None
                                        else snapshot.MIN_FREE_BYTES))
        if self.option.snapshot_cache and not self.option.no_snapshot and self.driver == "qmp":
            return StateCache(Path(self.option.snapshot_cache), qemu_version=run.qemu_version,
                              persistent=True)
        return None

    def header(self) -> list[str]:
        """What the run is, as far as it is known before any test: the rest (accelerator,
        pace, QEMU's version) is decided at the first test that needs a guest and printed then
        (:meth:`decision_lines`) and in the summary."""
        if self.guest_choices:  # (--guest: each guest its own image and access)
            image, access = "guests=" + ", ".join(
                f"{c.name} ({c.access})" for c in self.guest_choices), ""
        else:
            image = "image=" + ("your own: " + ", ".join(
                str(p) for p in (self.user_image.kernel, self.user_image.disk) if p)
                if self.user_image else "built-in Debian guest (fixtures/images)")
            access = f" access={self.access}"
        return [f"hotplug-harness: backend={self.backend.name} driver={self.driver} qemu={self.qemu_binary} "
                f"machines={','.join(self.machines)}{access}",
                f"hotplug-harness: {image}; run folder {self.run_dir}"]

    def decision_lines(self) -> list[str]:
        run = self.run
        return [f"hotplug-harness: accel={run.accel} ({run.accel_reason}); QEMU {run.qemu_version}",
                "hotplug-harness: guests: " + (
                    "each booted (--no-snapshot)" if self.states is None else
                    "the first of each shape booted and saved, the others restored from it "
                    f"(states in {self.states.root})"),
                f"hotplug-harness: {self.deadlines.describe()}"]

    def wants_role(self, role: str | None) -> bool:
        """Whether this run covers scenarios of ``role`` (tests of no role always run)."""
        roles = self.option.roles
        return role is None or roles is None or role in roles

    def close(self) -> None:
        """Close the guests, then let the backend give back its host devices. A device it
        cannot give back is recorded in :attr:`give_back_problems`, not raised: the session's
        end still checks, reports and sets the exit status (plugin: pytest_sessionfinish)."""
        try:
            if self._pool is not None:
                self._pool.close()
        finally:
            try:
                self.backend.close()
            except HarnessError as e:
                problem = f"[{e.kind}] {e}"
                if problem not in self.give_back_problems:
                    self.give_back_problems.append(problem)


def _require_free_space(report_root: Path) -> None:
    report_root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(report_root).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(f"the report folder {report_root} has {free >> 10} KiB free: writing this "
                          f"run's logs and reports would fail with 'No space left on device'",
                          hint=f"free space there (a run needs {MIN_FREE_BYTES >> 20} MiB or more) "
                               "or pass --report-dir DIR")


def _qemu_binary(opt) -> str:
    """The QEMU the run runs, as the plan keeps it: ``--qemu-binary`` (``$HH_QEMU``);
    ``backports``: QEMU 10 from bookworm-backports beside Debian 12's 7.2, unpacked into the
    image cache as the lab host's QEMU is (docs/running.md). As root, the real path of a
    program nobody else can have written (:func:`trusted_program`)."""
    if opt.qemu_binary != lab.BACKPORTS:
        return trusted_program(opt.qemu_binary)
    cache = Path(opt.image_cache or images.DEFAULT_CACHE)
    return trusted_program(lab.backports_qemu(
        cache, log=lambda s: print(f"hotplug-harness: {s}", flush=True)))


#: How long the lab host's libvirtd may take to answer, on the reference machine (times the
#: time factor measured inside the lab host).
LIBVIRTD_READY_SECONDS = 60.0


def _require_qemu(binary: str, version: str) -> None:
    have = version_tuple(version)
    if have is None:
        raise ConfigError(f"QEMU binary {binary!r} is not usable ({version})",
                          hint="install qemu-system-x86 (make setup) or pass --qemu-binary PATH")
    if have < MIN_QEMU:
        raise ConfigError(f"QEMU {version} ({binary}) is too old: the harness needs "
                          f"{MIN_QEMU[0]}.{MIN_QEMU[1]} or newer",
                          hint="install a newer QEMU (Debian 12 has 7.2, bookworm-backports 10.0) "
                               "and pass it with --qemu-binary")
