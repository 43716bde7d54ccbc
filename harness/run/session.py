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

from harness.qemu import accel as accel_mod
from harness.run import backends
from harness.run import guests
from harness.run import hygiene
from harness.images import builtin as images
from harness.plugin import options
from harness.guest import snapshot
from harness.core import pace as pace_mod
from harness.core.errors import ConfigError
from harness.images.builtin import GuestImage
from harness.qemu.machine import MACHINES
from harness.guest.pool import GuestPool
from harness.qemu.process import qemu_device_names, qemu_version, version_tuple
from harness.core.runconfig import RunConfig
from harness.guest.snapshot import StateCache

#: Oldest QEMU the harness supports: ACPI hotplug into q35 root ports is the default from 6.1,
#: DEVICE_UNPLUG_GUEST_ERROR exists from 6.2.
MIN_QEMU = (6, 2)
#: A run writes logs, bundles and reports; below this much free space it would fail half-way.
MIN_FREE_BYTES = 20 << 20


class HarnessSession:
    """Per-process state: the run configuration, the backend, the image, the guest pool."""

    def __init__(self, opt, *, config=None, worker: str = "", given: str | None = None):
        """``opt``: the parsed options. ``given``: the path of the run configuration the
        process that started the run wrote (an xdist worker, the run inside the lab host);
        None in that process itself, which decides and writes it."""
        self.config, self.option, self.worker = config, opt, worker
        #: For the summary's wall_seconds: the run's span as its user waited for it, from here
        #: (option parsing is done, nothing is built or booted yet) to the report.
        self.started_monotonic = time.monotonic()
        self.user_image = options.user_image(opt)
        self.access = opt.guest_access or ("ssh" if self.user_image and not opt.guest_ready else "console")
        self.keep_bundles, self.reuse = opt.keep_bundles, not opt.no_reuse
        self._image: GuestImage | None = None
        self._pool: GuestPool | None = None
        self.run = RunConfig.load(given) if given else RunConfig.new(
            Path(opt.report_dir), backend=opt.backend, qemu_binary=opt.qemu_binary,
            machines=tuple(opt.machine or MACHINES), image="user" if self.user_image else "builtin")
        decides = self.run.accel is None  # this process started the run
        if decides:
            _require_free_space(self.run.run_dir.parent)
        #: Scenario functions --backend vfio/lab deselected as emulated_only (collect.select).
        self.emulated_only: list[str] = []
        self.backend = backends.make(self.run.backend, worker=worker, qemu_binary=opt.qemu_binary,
                                     pace=None, lab=self.run.lab, roles=opt.roles)
        retries = opt.retry_dead_guest
        self.test_attempts = 1 + (self.backend.dead_guest_retries if retries is None else retries)
        self._seed_cloud_init(opt)
        #: --guest: the guests every scenario runs on (empty: one guest, as the options say).
        self.guest_choices = guests.resolve(
            opt.guest or [], Path(opt.image_cache or images.DEFAULT_CACHE), self.cloud_init_dir)
        if decides:
            self._decide()
        self.pace = pace_mod.Pace(**self.run.pace)
        self.backend.pace = self.pace
        self.deadlines = self._deadlines(self.run.accel)
        _require_qemu(self.qemu_binary, self.run.qemu_version)
        self.swept = hygiene.sweep_stale() if decides else []
        self.states = self._state_cache(opt)
        self.snapshot = hygiene.Snapshot.take(
            [self.user_image] + [c.image for c in self.guest_choices if not c.builtin],
            self.run.owner) if decides else None
        self.hygiene_problems: list[str] = []
        self.backend.setup(opt.inventory)
        if decides and self.run.lab is not None:
            from harness import lab

            lab.write_inside_figures(self.run.lab.workdir, self.deadlines)

    def _decide(self) -> None:
        """Measure the machine, choose the accelerator, find QEMU's version: once per run,
        written to the run folder for the run's other processes."""
        where = "lab" if self.run.lab is not None else "host"
        measured = pace_mod.Pace.measure(where, self.option.time_factor)
        self.pace = measured
        requested = self.option.accel
        if self.run.lab is not None and requested == "auto":
            requested = self.option.lab_accel  # the lab's setting (docs/lab.md)
        choice = accel_mod.choose(requested, probe=lambda: accel_mod.probe_boot(
            self.image, self.qemu_binary, self._deadlines("kvm"),
            attempts=self.backend.boot_attempts))
        if requested != self.option.accel:
            choice = dataclasses.replace(choice, reason=f"--lab-accel {requested}" + (
                "" if requested == "tcg" else f"; {choice.reason}"))
        # The process that decides owns the run's temporary folders (the outer lab run's PID
        # means nothing inside the lab host).
        self.run = dataclasses.replace(
            self.run, owner=str(os.getpid()), accel=choice.name, accel_reason=choice.reason,
            qemu_version=qemu_version(self.qemu_binary), pace=dataclasses.asdict(measured))
        self.run.write()

    def _seed_cloud_init(self, opt) -> None:
        if opt.guest_cloud_init:
            # A stock cloud image: an SSH key made for the run, handed to cloud-init by a
            # NoCloud seed (one for the run's processes, in the run folder: one command line
            # per guest shape, so the workers share its saved state).
            self.user_image = guests.cloud_seeded(self.user_image, self.cloud_init_dir)

    @property
    def cloud_init_dir(self) -> Path:
        """The run's one SSH key and NoCloud seed for cloud images (harness.guests)."""
        return self.run.run_dir / "cloud-init" / "run"

    # What the run decided, by name.
    run_dir = property(lambda self: self.run.run_dir)
    accel = property(lambda self: self.run.accel)
    accel_reason = property(lambda self: self.run.accel_reason)
    qemu_version = property(lambda self: self.run.qemu_version)
    machines = property(lambda self: self.run.machines)
    qemu_binary = property(lambda self: self.run.qemu_binary)
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
                                   states=self.states)
        return self._pool

    def _state_cache(self, opt) -> StateCache | None:
        """Saved guest states (harness.snapshot): the run's own (in its temporary folder,
        made before the hygiene snapshot so it is not taken for a guest's leftover), or
        --snapshot-cache's across runs; None with --no-snapshot."""
        if opt.no_snapshot:
            return None
        if self.run.lab is not None:
            # Inside the lab host: its /tmp is a tmpfs of half its RAM (harness/lab/host.py),
            # the one place with room; --snapshot-cache is the host's, not the lab's.
            return StateCache(snapshot.run_cache_dir(self.run.owner),
                              qemu_version=self.run.qemu_version,
                              min_free=snapshot.LAB_MIN_FREE_BYTES)
        if opt.snapshot_cache:
            return StateCache(Path(opt.snapshot_cache), qemu_version=self.run.qemu_version,
                              persistent=True)
        return StateCache(snapshot.run_cache_dir(self.run.owner), qemu_version=self.run.qemu_version)

    def header(self) -> list[str]:
        image = ("your own: " + ", ".join(str(p) for p in (self.user_image.kernel, self.user_image.disk) if p)
                 if self.user_image else "built-in Debian guest (fixtures/images)")
        return [f"hotplug-harness: backend={self.backend.name} accel={self.accel} ({self.accel_reason})",
                f"hotplug-harness: qemu={self.qemu_binary} ({self.qemu_version}) machines={','.join(self.machines)} "
                f"access={self.access}",
                f"hotplug-harness: image={image}; run folder {self.run_dir}",
                "hotplug-harness: guests: " + (
                    "each booted (--no-snapshot)" if self.states is None else
                    "the first of each shape booted and saved, the others restored from it "
                    f"(states in {self.states.root})"),
                f"hotplug-harness: {self.deadlines.describe()}"]

    def wants_role(self, role: str | None) -> bool:
        """Whether this run covers scenarios of ``role`` (tests of no role always run)."""
        roles = self.option.roles
        return role is None or roles is None or role in roles

    def _deadlines(self, accel: str) -> pace_mod.Deadlines:
        return pace_mod.Deadlines.for_run(self.pace, accel=accel,
                                          image="user" if self.user_image else "builtin",
                                          boot=self.option.boot_timeout)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        self.backend.close()


def _require_free_space(report_root: Path) -> None:
    report_root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(report_root).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(f"the report folder {report_root} has {free >> 10} KiB free: writing this "
                          f"run's logs and reports would fail with 'No space left on device'",
                          hint=f"free space there (a run needs {MIN_FREE_BYTES >> 20} MiB or more) "
                               "or pass --report-dir DIR")


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
