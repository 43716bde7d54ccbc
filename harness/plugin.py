"""The pytest plugin (entry point ``pytest11: hotplug``): options, markers, parametrization,
fixtures and report hooks. The only module of the harness that imports pytest.

A scenario test declares its role with ``@pytest.mark.scenario("nic")``; the plugin
parametrizes it over the platforms that role runs on and the devices the backend offers,
with ids like ``test_nic[emulated-q35-pciehp-e1000e]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from . import accel as accel_mod
from . import pace as pace_mod
from . import devices, hygiene, images, keywords, report
from .errors import ConfigError, HarnessError, LabError
from .process import qemu_version, version_tuple
from .images import GuestImage
from .machine import MACHINES
from .pool import GuestPool
from .prereq import PrerequisiteError
from .scenario import ScenarioRun

BACKENDS = ("emulated", "vfio", "lab")
#: Id parts matched as whole words by -k: "pc" must not select "pciehp" tests.
EXACT_KEYWORDS = {"pc", "q35"}
_STASH_SESSION = pytest.StashKey["HarnessSession"]()
_STASH_REPORTS = pytest.StashKey[dict]()


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("hotplug", "hotplug-harness")
    g.addoption("--machine", action="append", choices=MACHINES, default=None,
                help="machine type(s) to run on; repeat for several (default: pc and q35)")
    g.addoption("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                help="accelerator: kvm only if the CPU has vmx/svm and a probe boot works "
                     "(auto, the default), or forced")
    g.addoption("--qemu-binary", default=os.environ.get("HH_QEMU", "qemu-system-x86_64"),
                help="QEMU to test (default: qemu-system-x86_64 on PATH, or $HH_QEMU)")
    g.addoption("--backend", choices=BACKENDS, default="emulated",
                help="who plays each device role: emulated QEMU models (default), host devices "
                     "through vfio-pci/usb-host (vfio, needs --inventory), or a nested lab host (lab)")
    g.addoption("--inventory", default=None, metavar="TOML",
                help="host device inventory for --backend vfio (see docs/vfio.md)")
    g.addoption("--lab-timeout", type=float, default=3600.0, metavar="SECONDS",
                help="--backend lab: deadline of the whole lab run, the lab host's boot "
                     "included (default 3600)")
    g.addoption("--lab-qemu", default="auto", metavar="PATH",
                help="--backend lab: the QEMU that runs the lab host; auto (default): the "
                     "host's QEMU if it is 10.0 or newer, else QEMU 10 from bookworm-backports, "
                     "unpacked into the image cache")
    g.addoption("--retry-dead-guest", type=int, default=None, metavar="N",
                help="run a test again, up to N more times, when a guest's QEMU exits on its own "
                     "under it (reset, power-off, crash) or the guest stops answering (not even "
                     "`true` after the test failed); the failed attempt stays in the report. "
                     "Default 0; 1 with --backend lab, where nested KVM on TCG sometimes resets "
                     "or wedges an L2 guest")
    g.addoption("--time-factor", type=_positive_float, default=None, metavar="N",
                help="how many times slower than the reference machine this one is: every "
                     "deadline (QMP connect, boot, guest commands, waits) is its reference figure "
                     "times N. Default: measured by a short probe at session start (never below 1)")
    g.addoption("--boot-timeout", type=_positive_float, default=None, metavar="SECONDS",
                help="deadline from QEMU's `cont` to a ready guest. Default: by accelerator and "
                     "image (built-in 60 s, your own image 240 s under TCG, 120 s under KVM), "
                     "times the time factor")
    g.addoption("--roles", type=_roles, default=None, metavar="ROLE,...",
                help="run only the scenarios of these roles (" + ", ".join(devices.ROLES) + "). "
                     "With --backend vfio a role the inventory lacks fails the run as 'not "
                     "covered' unless it is left out here")
    g.addoption("--report-dir", default="reports", metavar="DIR",
                help="where run folders and reports/latest go (default: reports)")
    g.addoption("--keep-bundles", action="store_true",
                help="keep the per-test bundle of passing tests too (failures always keep theirs)")
    g.addoption("--no-reuse", action="store_true",
                help="boot a fresh guest for every test instead of reusing a clean one")
    g.addoption("--image-cache", default=None, metavar="DIR",
                help="where the built-in guest image is built and cached "
                     "(default: fixtures/images/build)")
    g.addoption("--guest-kernel", default=None, metavar="PATH",
                help="your guest's kernel (instead of the built-in image)")
    g.addoption("--guest-initrd", default=None, metavar="PATH", help="your guest's initrd")
    g.addoption("--guest-append", default="", metavar="ARGS",
                help="kernel command line for --guest-kernel (include console=ttyS0)")
    g.addoption("--guest-disk", default=None, metavar="PATH",
                help="your guest's bootable disk image; it runs on a throw-away overlay")
    g.addoption("--guest-disk-format", default="qcow2", choices=("qcow2", "raw"),
                help="format of --guest-disk (default qcow2)")
    g.addoption("--guest-user", default="root", help="SSH user of your guest (default root)")
    g.addoption("--guest-key", default=None, metavar="PATH",
                help="private SSH key that logs into your guest")
    g.addoption("--guest-cloud-init", action="store_true",
                help="your --guest-disk is a stock cloud image (Debian genericcloud, RHEL/Rocky/"
                     "Alma KVM guest images, Ubuntu cloud images): make an SSH key for the run "
                     "and a NoCloud seed that gives it to root, with DHCP on every NIC")
    g.addoption("--guest-ready", default=None, metavar="REGEX",
                help="what your guest prints on ttyS0 when a root shell is ready there; "
                     "without it the harness waits for SSH")
    g.addoption("--guest-access", choices=("console", "ssh"), default=None,
                help="how tests reach the guest: serial console (default for the built-in "
                     "image) or SSH over a management NIC (default for your own image)")


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config):
    """``--backend lab`` on the host: run this same command inside the lab host instead
    (harness/lab.py); the run inside does the collecting, the testing and the report."""
    opt = config.option
    if opt.backend != "lab" or opt.help or opt.version:
        return None
    from . import lab

    if lab.inside():
        return None
    try:
        return lab.run_outer(config)
    except HarnessError as e:
        print(f"hotplug-harness: ERROR [{e.kind}] {e}")
        return pytest.ExitCode.USAGE_ERROR


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "scenario(role): a hotplug scenario of the guide; the "
                            "plugin parametrizes it over platforms and backend devices")
    config.addinivalue_line("markers", "fault: injects a fault (kills QEMU, panics the guest, ...)")
    config.addinivalue_line("markers", "slow: takes longer than a minute")
    config.addinivalue_line("markers", "passthrough: needs real vfio-pci (--backend vfio or lab); "
                            "deselected with --backend emulated")
    if config.option.help:
        return
    _terminate_like_ctrl_c()
    try:
        hs = HarnessSession(config)
    except HarnessError as e:
        raise pytest.UsageError(str(e)) from e
    config.stash[_STASH_SESSION] = hs
    _require_loadgroup_for_host_devices(config, hs)
    if not hs.worker and not getattr(config.option, "xmlpath", None) and not config.option.collectonly:
        # Every run writes JUnit XML into its own folder (junitxml reads this after us).
        config.option.xmlpath = str(hs.run_dir / "junit.xml")


def _require_loadgroup_for_host_devices(config: pytest.Config, hs: "HarnessSession") -> None:
    """Host devices are kept to one worker at a time by xdist groups, which only
    ``--dist loadgroup`` honours: any other distribution could give one device to two workers."""
    workers = getattr(config.option, "numprocesses", None)
    dist = getattr(config.option, "dist", "no")
    if hs.backend != "emulated" and workers not in (None, 0) and dist != "loadgroup":
        raise pytest.UsageError(f"--backend {hs.backend} with -n {workers} needs --dist loadgroup "
                                f"(not {dist}): it keeps each host device to one worker at a time")


def _terminate_like_ctrl_c() -> None:
    """SIGTERM (a cancelled CI job) ends the run the way Ctrl-C does: pytest stops, guests are
    closed, vfio devices given back. Python's default for SIGTERM is to die on the spot."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        def interrupt(signum, frame):
            raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")
        signal.signal(signal.SIGTERM, interrupt)


def pytest_unconfigure(config: pytest.Config) -> None:
    """The last step of every process of a run, however it ended: nothing it started stays.
    The controller (xdist workers are gone by now) also ends what an interrupted worker left:
    QEMUs by the PIDs the run folder recorded, and this run's temporary directories."""
    hs: HarnessSession | None = config.stash.get(_STASH_SESSION, None)
    if hs is None:
        return
    hs.close()
    if not hs.worker:
        for line in hygiene.sweep_run(hs.run_dir):
            print(f"hotplug-harness: {line}")


def pytest_report_header(config: pytest.Config) -> list[str]:
    hs = config.stash.get(_STASH_SESSION, None)
    return hs.header() if hs else []


class HarnessSession:
    """Per-process state: options, accelerator, image, run folder, guest pool."""

    def __init__(self, config: pytest.Config):
        self.config = config
        opt = config.option
        self.worker = os.environ.get("PYTEST_XDIST_WORKER", "")
        self.backend = opt.backend
        self.boot_attempts = LAB_BOOT_ATTEMPTS if self.backend == "lab" else 1
        retries = opt.retry_dead_guest
        self.test_attempts = 1 + (retries if retries is not None else
                                  LAB_DEAD_GUEST_RETRIES if self.backend == "lab" else 0)
        self.machines = tuple(opt.machine or MACHINES)
        self.qemu_binary = opt.qemu_binary
        self.keep_bundles = opt.keep_bundles
        self.reuse = not opt.no_reuse
        self._image: GuestImage | None = None
        self._pool: GuestPool | None = None
        self.user_image = self._user_image(opt)
        self.access = opt.guest_access or ("ssh" if self.user_image and not opt.guest_ready else "console")
        # The controller (or a run without xdist) decides the run folder and the accelerator once;
        # xdist workers inherit both through the environment.
        if not os.environ.get("HH_RUN_DIR"):
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = Path(opt.report_dir).resolve() / f"run-{stamp}-{os.getpid()}"
            os.environ["HH_RUN_DIR"] = str(run_dir)
            os.environ["HH_RUN_TAG"] = str(os.getpid())
        self.run_dir = Path(os.environ["HH_RUN_DIR"])
        if not self.worker:
            _require_free_space(self.run_dir.parent)
        if opt.guest_cloud_init:
            # A stock cloud image: an SSH key made for the run, handed to cloud-init by a
            # NoCloud seed (each process makes its own, in the run folder).
            folder = self.run_dir / "cloud-init" / (self.worker or "main")
            key, public = images.run_ssh_key(folder)
            self.user_image = dataclasses.replace(self.user_image, ssh_key=key,
                                                  seed=images.nocloud_seed(folder, public))
        # The controller (or a run without xdist) measures the machine and chooses the
        # accelerator once; xdist workers get both through their workerinput.
        given = getattr(config, "workerinput", {})
        if "hh_pace" in given:
            self.pace = pace_mod.Pace.from_json(given["hh_pace"])
            self.accel, self.accel_reason = given["hh_accel"], given["hh_accel_reason"]
        else:
            self.pace = pace_mod.Pace.measure(pace_mod.where_am_i(), opt.time_factor)
            choice = accel_mod.choose(opt.accel, probe=lambda: accel_mod.probe_boot(
                self.image, self.qemu_binary, self._deadlines("kvm"), attempts=self.boot_attempts))
            self.accel, self.accel_reason = choice.name, choice.reason
        self.deadlines = self._deadlines(self.accel)
        self.qemu_version = qemu_version(self.qemu_binary)
        _require_qemu(self.qemu_binary, self.qemu_version)
        self.swept = hygiene.sweep_stale() if not self.worker else []
        self.snapshot = hygiene.Snapshot.take(self.user_image) if not self.worker else None
        self.hygiene_problems: list[str] = []
        self.lab_left_out = 0
        self.inventory = None
        self.binder = None
        if self.backend == "vfio":
            self._setup_vfio(opt.inventory)
        elif self.backend == "lab":
            # Only reached inside the lab host (pytest_cmdline_main sends the outer run there):
            # the lab writes its own inventory, then it is the vfio backend, unchanged.
            from . import lab

            workdir = lab.inside()
            if workdir is None:
                raise ConfigError("--backend lab runs inside the lab host only",
                                  hint="run `pytest --backend lab` on the host: it boots the lab")
            if opt.inventory:
                raise ConfigError("--backend lab writes its own inventory: drop --inventory",
                                  hint="--inventory is for --backend vfio on a VT-d host")
            inventory = lab.write_inventory(workdir) if not self.worker else workdir / "inventory.toml"
            if not self.worker:  # the outer run puts the inside's figures into lab.json
                lab.write_inside_figures(workdir, self.deadlines)
            self._setup_vfio(str(inventory))

    def _setup_vfio(self, inventory: str | None) -> None:
        """Give back what a killed run left on vfio-pci, load the inventory, ask the doctor.
        A host that cannot run vfio ends the session with the doctor's reasons: a nightly on a
        broken VT-d host must fail, not pass having skipped everything."""
        from .host import binding, doctor
        from .host.inventory import load_inventory

        if self.backend == "vfio" and os.geteuid() != 0:
            # Before any host step: binding goes through sysfs and the journal lives in /var/lib.
            raise ConfigError("--backend vfio needs root: it binds host devices to vfio-pci "
                              "through sysfs and journals them in /var/lib/hotplug-harness",
                              hint="run it as root (sudo .venv/bin/pytest ...)")
        if not self.worker:
            for r in binding.restore_from_journal("/"):
                print(f"hotplug-harness: {r.bdf} left on vfio-pci by a killed run: {r.status} "
                      f"({r.detail})")
        if inventory:
            self.inventory = load_inventory(inventory)  # bad input stops here, one line each
        elif self.backend == "vfio":
            raise ConfigError("--backend vfio needs --inventory TOML naming the host devices to "
                              "use", hint="`python -m harness discover --write inventory.toml`, "
                                          "then review it (docs/vfio.md)")
        checks = doctor.run_checks("/", self.qemu_binary, self.inventory,
                                   qemu_timeout=self.pace(20.0))
        if doctor.exit_code(checks):
            where = "the lab host" if self.backend == "lab" else "this host"
            raise LabError(f"--backend {self.backend}: {where} cannot run vfio-pci: "
                           + doctor.verdict(checks).removeprefix("verdict: "),
                           hint="fix what the doctor lists below (`python -m harness doctor` "
                                "runs the same checks)"
                                + (": a bug in the lab image (harness/lab.py)"
                                   if self.backend == "lab" else ""),
                           details=doctor.format_report(checks))
        self.binder = binding.VfioBinder("/", timeout=self.pace(5.0))

    def vfio_devices(self, role: str) -> list:
        """The inventory's devices for ``role`` as hotplug devices (usb-host in both of the
        guide's devname forms when the inventory gives both)."""
        out = []
        for entry in self.inventory.for_role(role):
            if entry.is_pci:
                out.append(devices.VfioPci(entry, self.binder, self.inventory.pci_addresses()))
            else:
                if entry.hostbus is not None:
                    out.append(devices.UsbHost(entry, "busaddr"))
                if entry.vendorid is not None:
                    out.append(self._usb_by_ids(entry))
        return out

    @staticmethod
    def _usb_by_ids(entry):
        """The guide's ``usb_add host:VVVV:PPPP`` form, unless those ids name more than one
        device on this host: usb-host would take whichever it finds first, maybe one the host
        needs, so that form is refused (its tests fail in set-up saying why)."""
        from .host.sysfs import Sysfs

        ids = f"{entry.vendorid[2:]}:{entry.productid[2:]}"
        twins = [u for u in Sysfs.of("/").usb_devices() if u.ids == ids]
        if len(twins) > 1:
            where = ", ".join(f"bus {u.busnum} addr {u.devnum}" for u in twins)
            return devices.Placeholder(
                "usb-device", f"refusing usb-host vendorid={entry.vendorid},productid="
                              f"{entry.productid} for {entry.name}: {len(twins)} devices on this "
                              f"host have those ids ({where}) and usb-host would take whichever "
                              "it finds first; the hostbus/hostaddr form names one",
                id=f"{entry.name}-vidpid")
        return devices.UsbHost(entry, "vidpid")

    @staticmethod
    def _user_image(opt) -> GuestImage | None:
        if not (opt.guest_kernel or opt.guest_disk):
            if opt.guest_initrd or opt.guest_key or opt.guest_ready:
                raise pytest.UsageError("--guest-initrd/--guest-key/--guest-ready describe your own "
                                        "image: also pass --guest-kernel or --guest-disk")
            return None
        for flag, value in (("--guest-kernel", opt.guest_kernel), ("--guest-initrd", opt.guest_initrd),
                            ("--guest-disk", opt.guest_disk), ("--guest-key", opt.guest_key)):
            if value and not Path(value).is_file():
                raise pytest.UsageError(f"{flag} {value}: no such file (or not a regular file)")
        if opt.guest_cloud_init and not opt.guest_disk:
            raise pytest.UsageError("--guest-cloud-init seeds a cloud image's cloud-init: pass "
                                    "the image with --guest-disk")
        if not opt.guest_ready and not opt.guest_key and not opt.guest_cloud_init:
            raise pytest.UsageError("your own guest needs a way in: --guest-key (SSH), "
                                    "--guest-cloud-init (a cloud image: the key is made for the "
                                    "run) and/or --guest-ready REGEX (a root shell on ttyS0)")
        return GuestImage(kernel=_path(opt.guest_kernel), initrd=_path(opt.guest_initrd),
                          append=opt.guest_append, disk=_path(opt.guest_disk),
                          disk_format=opt.guest_disk_format, ssh_user=opt.guest_user,
                          ssh_key=_path(opt.guest_key), ready_pattern=opt.guest_ready)

    @property
    def image(self) -> GuestImage:
        if self._image is None:
            if self.user_image:
                self._image = self.user_image
            else:
                cache = Path(self.config.option.image_cache or images.DEFAULT_CACHE)
                self._image = images.ensure_builtin(cache, log=lambda s: None)
        return self._image

    @property
    def pool(self) -> GuestPool:
        if self._pool is None:
            self._pool = GuestPool(self.image, qemu_binary=self.qemu_binary, accel=self.accel,
                                   deadlines=self.deadlines,
                                   workdir=self.run_dir / "guests", reuse=self.reuse,
                                   name_prefix=f"{self.worker or 'main'}-g",
                                   boot_attempts=self.boot_attempts)
        return self._pool

    def header(self) -> list[str]:
        image = ("your own: " + ", ".join(str(p) for p in (self.user_image.kernel, self.user_image.disk) if p)
                 if self.user_image else "built-in Debian guest (fixtures/images)")
        return [f"hotplug-harness: backend={self.backend} accel={self.accel} ({self.accel_reason})",
                f"hotplug-harness: qemu={self.qemu_binary} ({self.qemu_version}) machines={','.join(self.machines)} "
                f"access={self.access}",
                f"hotplug-harness: image={image}; run folder {self.run_dir}",
                f"hotplug-harness: {self.deadlines.describe()}"]

    def resource_group(self, device) -> str:
        """The xdist group of a test that takes host hardware: the IOMMU group of a PCI device
        (two inventory entries in one group are one resource), the USB port path of a USB
        device (its hostbus/hostaddr and vendorid/productid forms are one device). The vfio
        failure-path tests bind the inventory's first NIC by hand: they go with its group."""
        from .host.inventory import find_usb_device
        from .host.sysfs import Sysfs

        fs = Sysfs.of("/")
        entry = getattr(device, "entry", None)
        if entry is None:  # a failure-path test, or a role nobody plays
            nics = self.inventory.for_role("nic") if self.inventory else []
            entry = nics[0] if nics else None
            if entry is None:
                return "host-failure-paths"
        if entry.is_pci:
            group = fs.pci_device(entry.bdf).iommu_group if fs.pci_dir(entry.bdf).exists() else None
            return f"iommu-group-{group}" if group is not None else f"host-{entry.bdf}"
        usb = find_usb_device(fs, entry)
        return f"usb-{usb.name}" if usb is not None else f"host-{entry.name}"

    def wants_role(self, role: str | None) -> bool:
        """Whether this run covers scenarios of ``role`` (tests of no role always run)."""
        roles = self.config.option.roles
        return role is None or roles is None or role in roles

    def _deadlines(self, accel: str) -> pace_mod.Deadlines:
        return pace_mod.Deadlines.for_run(self.pace, accel=accel,
                                          image="user" if self.user_image else "builtin",
                                          boot=self.config.option.boot_timeout)

    def worker_input(self) -> dict:
        """What every xdist worker takes from the controller instead of deciding again."""
        return {"hh_pace": self.pace.to_json(), "hh_accel": self.accel,
                "hh_accel_reason": self.accel_reason}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self.binder is not None:
            self.binder.close()  # gives back anything a test could not


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """(xdist, controller side) Hand each worker the run's measured pace and accelerator."""
    hs: HarnessSession | None = node.config.stash.get(_STASH_SESSION, None)
    if hs is not None:
        node.workerinput.update(hs.worker_input())


def _roles(text: str) -> frozenset[str]:
    roles = frozenset(r.strip() for r in text.split(",") if r.strip())
    unknown = sorted(roles - set(devices.ROLES))
    if unknown or not roles:
        raise argparse.ArgumentTypeError(f"unknown role(s) {', '.join(unknown) or '(none)'}: "
                                         f"choose from {', '.join(devices.ROLES)}")
    return roles


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, not {text!r}")
    return value


def _path(value: str | None) -> Path | None:
    return Path(value).resolve() if value else None


#: A run writes logs, bundles and reports; below this much free space it would fail half-way.
MIN_FREE_BYTES = 20 << 20


def _require_free_space(report_root: Path) -> None:
    report_root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(report_root).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(f"the report folder {report_root} has {free >> 10} KiB free: writing this "
                          f"run's logs and reports would fail with 'No space left on device'",
                          hint=f"free space there (a run needs {MIN_FREE_BYTES >> 20} MiB or more) "
                               "or pass --report-dir DIR")


#: Guests booted inside the lab host (L2, nested KVM on TCG) sometimes hang before they are
#: ready (1 boot in 42 here, with QEMU 10 running L1): the lab boots another, up to this
#: many in all, and the test's notes say so. Everywhere else a boot that fails fails the test.
LAB_BOOT_ATTEMPTS = 3

#: Oldest QEMU the harness supports: ACPI hotplug into q35 root ports is the default from 6.1,
#: DEVICE_UNPLUG_GUEST_ERROR exists from 6.2.
MIN_QEMU = (6, 2)


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


# -- parametrization ---------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("scenario")
    if marker is None:
        return
    hs: HarnessSession = metafunc.config.stash[_STASH_SESSION]
    role = marker.args[0]
    platforms = [p for p in devices.PLATFORMS[role] if p.machine in hs.machines]
    if role not in devices.DEVICE_ROLES:
        # CPU and memory are QEMU's own in every backend: the platform is the only axis.
        metafunc.parametrize("platform", platforms, ids=[p.id for p in platforms])
        return
    if hs.backend == "emulated":
        candidates = list(devices.EMULATED[role])
    else:
        # A role the inventory cannot play is "not covered": its tests fail in set-up, saying
        # so, unless the run was narrowed to other roles on purpose (--roles).
        candidates = hs.vfio_devices(role) or [devices.Placeholder(
            role, f"not covered: the inventory {hs.inventory.path} has no {role!r} entry")]
    params = []
    for platform in platforms:
        for device in candidates:
            params.append(pytest.param(platform, device,
                                       id=f"{hs.backend}-{platform.id}-{device.id}"))
    metafunc.parametrize(("platform", "device"), params)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _keyword_select_exact(config, items)
    hs: HarnessSession = config.stash[_STASH_SESSION]
    drop = [i for i in items if not hs.wants_role(_role_of(i))]
    if hs.backend == "emulated":
        # Real passthrough's failure paths have no emulated equivalent: not run, not "skipped".
        drop += [i for i in items if i.get_closest_marker("passthrough")]
    elif hs.backend == "lab":
        # The lab is for the scenarios' real passthrough; the unit and self-tests (emulated
        # devices only) are `make test`'s, and nested they take minutes for nothing new.
        outside = [i for i in items if "scenarios" not in i.path.parts]
        hs.lab_left_out = len(outside)
        drop += outside
    if drop:
        config.hook.pytest_deselected(items=drop)
        dropped = set(map(id, drop))
        items[:] = [i for i in items if id(i) not in dropped]
    # Tests that share a guest shape run one after another (and on one xdist worker with
    # --dist loadgroup), so one clean booted guest serves them all.
    grouping = config.pluginmanager.hasplugin("xdist")
    for item in items:
        callspec = getattr(item, "callspec", None)
        platform = callspec.params.get("platform") if callspec else None
        device = callspec.params.get("device") if callspec else None
        if not grouping:
            continue
        if hs.backend != "emulated" and (device is not None or item.get_closest_marker("passthrough")):
            # One physical resource, one worker at a time: tests that take host hardware are
            # grouped by what they really take (see HarnessSession.resource_group).
            item.add_marker(pytest.mark.xdist_group(hs.resource_group(device)))
        elif platform is not None:
            item.add_marker(pytest.mark.xdist_group(platform.id))
    items.sort(key=_group_key)


def _role_of(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("scenario")
    return marker.args[0] if marker else None


def pytest_report_collectionfinish(config: pytest.Config, items) -> list[str]:
    hs: HarnessSession | None = config.stash.get(_STASH_SESSION, None)
    if hs is not None and hs.lab_left_out:
        return [f"hotplug-harness: --backend lab runs tests/scenarios only: {hs.lab_left_out} "
                "unit and self-tests deselected (`make test` runs them)"]
    return []


def _group_key(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    platform = callspec.params.get("platform") if callspec else None
    return platform.id if platform is not None else ""


def _keyword_select_exact(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``-k`` with whole-word matching for machine names (harness/keywords.py): ``-k pc`` means
    the pc machine, not every ``pciehp`` test too."""
    expr_text = (config.option.keyword or "").strip()
    if not expr_text:
        return
    try:
        expr = keywords.parse(expr_text)
    except keywords.KeywordSyntaxError as e:
        raise pytest.UsageError(str(e)) from e
    if not {w.lower() for w in keywords.identifiers(expr)} & EXACT_KEYWORDS:
        return  # pytest's own -k does the rest
    keep, drop = [], []
    for item in items:
        matches = keywords.matcher(item, EXACT_KEYWORDS)
        (keep if keywords.evaluate(expr, matches) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    config.option.keyword = ""  # already applied; pytest's own pass would undo the exact rule


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def hotplug_session(request: pytest.FixtureRequest) -> HarnessSession:
    hs: HarnessSession = request.config.stash[_STASH_SESSION]
    request.addfinalizer(hs.close)
    return hs


def _plain_nodeid(nodeid: str) -> str:
    """The node id without the ``@group`` suffix xdist's loadgroup adds."""
    at, bracket = nodeid.rfind("@"), nodeid.rfind("]")
    return nodeid[:at] if at > bracket else nodeid


def _bundle_name(nodeid: str) -> str:
    name = _plain_nodeid(nodeid).split("::", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.\[\]-]+", "_", name)[:150]


@pytest.fixture
def hotplug(request: pytest.FixtureRequest, hotplug_session: HarnessSession):
    """The test's :class:`~harness.scenario.ScenarioRun`: guests, plug/unplug, latencies."""
    hs = hotplug_session
    callspec = getattr(request.node, "callspec", None)
    device = callspec.params.get("device") if callspec else None
    if isinstance(device, devices.Placeholder):
        raise LabError(device.why, hint="add a device for the role to the inventory "
                                        "(docs/vfio.md), or leave the role out on purpose with "
                                        "--roles" if device.why.startswith("not covered") else
                                        "remove vendorid/productid from the inventory entry, or "
                                        "unplug its twin")
    try:
        pool = hs.pool
    except HarnessError as e:
        pytest.fail(f"[{e.kind}] {e}", pytrace=False)
    run = ScenarioRun(pool, hs.run_dir / "bundles" / _bundle_name(request.node.nodeid),
                      keep_bundle=hs.keep_bundles, access=hs.access)
    yield run
    reports = request.node.stash.get(_STASH_REPORTS, {})
    passed = "call" in reports and reports["call"].passed
    record = run.finish(passed)
    request.node.stash[_STASH_RECORD] = record
    callspec = getattr(request.node, "callspec", None)
    platform = callspec.params.get("platform") if callspec else None
    kernel = hs._image.manifest.get("kernel_version", "user image") if hs._image else ""
    request.node.user_properties.extend([
        ("backend", hs.backend), ("machine", platform.machine if platform else ""),
        ("platform", platform.id if platform else ""), ("accelerator", hs.accel),
        ("qemu_version", hs.qemu_version), ("guest_kernel", kernel)])
    for name, value in record["latencies"].items():
        request.node.user_properties.append((f"latency.{name}", value))


_STASH_RECORD = pytest.StashKey[dict]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    try:
        return (yield)
    except PrerequisiteError as e:
        hs = item.config.stash[_STASH_SESSION]
        if hs.user_image is None:
            raise  # the built-in guest must meet every prerequisite: that is a harness bug
        pytest.skip(f"your guest cannot run this scenario: {e.message}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    rep = yield
    item.stash.setdefault(_STASH_REPORTS, {})[rep.when] = rep
    if rep.failed and call.excinfo is not None:
        exc = call.excinfo.value
        # lab: the host is broken; product: QEMU or the guest misbehaved (a failed assertion
        # is a product check); harness: a bug in the harness itself.
        if isinstance(exc, HarnessError):
            kind = exc.kind
        else:
            kind = "product" if isinstance(exc, AssertionError) else "harness"
        item.user_properties.append(("failure_kind", kind))
    return rep


#: --retry-dead-guest's default in the lab: nested KVM on TCG sometimes resets an L2 guest
#: under a test (about 1 test in 40 here, QEMU 10 running L1; docs/lab.md).
LAB_DEAD_GUEST_RETRIES = 1


@pytest.hookimpl(tryfirst=True, specname="pytest_runtest_protocol")
def pytest_runtest_protocol_retrying(item: pytest.Item, nextitem):
    """--retry-dead-guest: a test that failed while one of its guests' QEMU exited on its own
    runs again. Only such failures; the failed attempt's bundle is kept beside the next one's,
    and the test's notes say what happened."""
    hs: HarnessSession | None = item.config.stash.get(_STASH_SESSION, None)
    if hs is None or hs.test_attempts == 1:
        return None
    from _pytest.runner import runtestprotocol

    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    properties = list(item.user_properties)
    earlier: list[str] = []
    for attempt in range(1, hs.test_attempts + 1):
        item.stash[_STASH_REPORTS] = {}
        item.stash[_STASH_RECORD] = {}
        item.user_properties[:] = properties
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        record = item.stash[_STASH_RECORD]
        died = [g["name"] for g in record.get("guests", ()) if g.get("died")]
        hung = [g["name"] for g in record.get("guests", ()) if g.get("hung")]
        if attempt == hs.test_attempts or not (died or hung) or not any(r.failed for r in reports):
            break
        bundle = record.get("bundle")
        if bundle and Path(bundle).exists():
            bundle = str(Path(bundle).rename(f"{bundle}.attempt-{attempt}"))
        _, reason = report.outcome_of(item.stash[_STASH_REPORTS])
        what = "; ".join(filter(None, [f"its guest {', '.join(died)} died under it" if died else "",
                                       f"its guest {', '.join(hung)} stopped answering" if hung else ""]))
        earlier.append(f"attempt {attempt} failed after {what}, so it ran again "
                       f"(--retry-dead-guest): {reason} (bundle: {bundle})")
    if earlier:
        record["notes"] = earlier + record.get("notes", [])
        record["attempts"] = attempt
    for rep in reports:
        item.ihook.pytest_runtest_logreport(report=rep)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    yield
    hs: HarnessSession | None = item.config.stash.get(_STASH_SESSION, None)
    if hs is None:
        return
    reports = item.stash.get(_STASH_REPORTS, {})
    outcome, reason = report.outcome_of(reports)
    callspec = getattr(item, "callspec", None)
    platform = callspec.params.get("platform") if callspec else None
    device = callspec.params.get("device") if callspec else None
    record = item.stash.get(_STASH_RECORD, {})
    report.write_result(hs.run_dir, {
        "nodeid": _plain_nodeid(item.nodeid),
        "test": item.originalname if hasattr(item, "originalname") else item.name,
        "id": callspec.id if callspec else "",
        "scenario": (item.get_closest_marker("scenario").args[0]
                     if item.get_closest_marker("scenario") else
                     item.module.__name__.split(".")[-1].removeprefix("test_")),
        "platform": platform.id if platform else "",
        "device": device.id if device else "",
        "backend": hs.backend,
        "passthrough": getattr(device, "passthrough", "") or (
            "vfio-pci (failure path)" if item.get_closest_marker("passthrough") else ""),
        "outcome": outcome,
        "reason": reason,
        "failure_kind": dict(item.user_properties).get("failure_kind"),
        "duration": round(sum(r.duration for r in reports.values()), 3),
        "worker": hs.worker or "main",
        **record,
    })


def _lab_meta() -> dict:
    """What the report says about the lab host this run ran in (set by the outer run)."""
    meta = json.loads(os.environ.get("HH_LAB_IMAGE") or "{}")
    meta["kernel"] = os.uname().release
    meta["ready_seconds"] = float(os.environ.get("HH_LAB_READY") or 0) or None
    return meta


@pytest.hookimpl(wrapper=True, specname="pytest_sessionfinish")
def give_back_what_the_run_left(session: pytest.Session, exitstatus: int):
    """After everything else at the session's end (xdist's workers are gone by then): every
    journal entry of this run goes back to its host driver, its dead workers' and its own
    included (a worker killed mid-test, a release that failed while a QEMU held the group, a
    SIGTERM). A device that cannot be given back fails the run, naming it."""
    result = yield
    hs: HarnessSession | None = session.config.stash.get(_STASH_SESSION, None)
    if hs is None or hs.worker or hs.backend == "emulated" or hs.binder is None:
        return result
    from .host import binding

    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    try:
        restored = binding.restore_from_journal("/", own_pids={os.getpid()})
    except HarnessError as e:
        restored = []
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if tr is not None:
            tr.write_line(f"HOST NOT RESTORED: [{e.kind}] {e}", red=True)
    for r in restored:
        if tr is not None and r.status != "in-use":
            tr.write_line(f"hotplug-harness: end of run: {r}")
    return result


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    hs: HarnessSession | None = session.config.stash.get(_STASH_SESSION, None)
    if hs is None:
        return
    hs.close()
    if hs.worker:
        return
    if session.config.option.collectonly or not (hs.run_dir / "results").exists():
        return
    used = (hs.run_dir / "guests").exists()
    image = (hs.user_image or images.image_from_dir(images.builtin_dir(
        Path(session.config.option.image_cache or images.DEFAULT_CACHE)), verify=False)) if used else None
    hs.hygiene_problems = hygiene.check(hs.snapshot, hs.run_dir, image)
    if hs.hygiene_problems and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    nothing_tested = None
    if hs.backend != "emulated" and not sum(report.passthrough_counts(
            report.load_results(hs.run_dir)).values()):
        # A vfio run that passed a single device through to no guest tested nothing it is for.
        nothing_tested = (f"--backend {hs.backend}: no test went through real passthrough "
                          "(vfio-pci or usb-host): this run tested nothing of the host")
        if session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    summary = report.finish_run(hs.run_dir, Path(session.config.option.report_dir).resolve(), {
        "backend": hs.backend, "accel": hs.accel, "accel_reason": hs.accel_reason,
        "pace": dataclasses.asdict(hs.pace),
        "deadlines": {k: v for k, v in dataclasses.asdict(hs.deadlines).items() if k != "pace"},
        "qemu_binary": hs.qemu_binary, "qemu_version": hs.qemu_version,
        "image": image.manifest if image is not None else {},
        "exit_status": int(session.exitstatus),
        "lab": _lab_meta() if hs.backend == "lab" else None,
        "hygiene": hs.hygiene_problems or "clean: no QEMU left running, no temp directory left, "
                                          "guest image unchanged",
        "nothing_tested": nothing_tested,
    })
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_sep("=", "hotplug-harness report")
        for line in report.summary_lines(summary):
            tr.write_line(line)
        for problem in hs.hygiene_problems:
            tr.write_line(f"HYGIENE: {problem}", red=True)
        if nothing_tested:
            tr.write_line(f"NOTHING TESTED: {nothing_tested}", red=True)
