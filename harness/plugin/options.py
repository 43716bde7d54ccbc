"""The harness's command-line options (``pytest --help``, group hotplug), and turning them
into what a run needs: the user's guest image, roles, numbers."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from harness.scenario import devices
from harness.run.backends import NAMES as BACKENDS
from harness.core.errors import ConfigError
from harness.images.builtin import GuestImage
from harness.qemu.machine import MACHINES

#: The run configuration the process that started the run wrote (harness/runconfig.py): given
#: to the run inside the lab host by the outer run; never typed by hand.
RUN_CONFIG = "--hh-run-config"


def add_options(parser) -> None:
    g = parser.getgroup("hotplug", "hotplug-harness")
    _what_runs(g)
    _how_it_runs(g)
    _where_results_go(g)
    _your_guest(g)
    g.addoption(RUN_CONFIG, default=None, help=argparse.SUPPRESS)


def _what_runs(g) -> None:
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


def _how_it_runs(g) -> None:
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
    g.addoption("--repeat", type=_positive_int, default=1, metavar="N",
                help="run each selected test N times (its id ends in -repeatK; a clean guest "
                     "serves the repeats): the report and summary.json give each test's pass "
                     "rate and each latency's distribution (median, p95, max)")
    g.addoption("--roles", type=_roles, default=None, metavar="ROLE,...",
                help="run only the scenarios of these roles (" + ", ".join(devices.ROLES) + "). "
                     "With --backend vfio a role the inventory lacks fails the run as 'not "
                     "covered' unless it is left out here; with --backend lab the lab host's "
                     "inventory lists only these roles' devices")


def _where_results_go(g) -> None:
    g.addoption("--report-dir", default="reports", metavar="DIR",
                help="where run folders and reports/latest go (default: reports)")
    g.addoption("--keep-runs", type=int, default=30, metavar="N",
                help="at the end of a run, keep the newest N run folders under --report-dir "
                     "and remove older ones (default 30; the run just finished is always kept)")
    g.addoption("--keep-bundles", action="store_true",
                help="keep the per-test bundle of passing tests too (failures always keep theirs)")
    g.addoption("--no-snapshot", action="store_true",
                help="boot every guest from scratch; by default the first guest of each shape "
                     "is saved once ready (QEMU migration to a file) and later ones are "
                     "restored from it (docs/architecture.md, Saved guest states)")
    g.addoption("--snapshot-cache", default=None, metavar="DIR",
                help="keep saved guest states in DIR across runs (keyed by image, QEMU and "
                     "command line; a changed one is never used); default: for this run only")
    g.addoption("--check-migrated-ram", action="store_true",
                help="after each live migration, before the destination runs, compare its RAM "
                     "with the source's page by page (two dumps of the guest's RAM, seconds "
                     "each): a page that differs fails the test as QEMU's migration losing it, "
                     "not the guest's fault")
    g.addoption("--guest-must-configure-nic", action="store_true",
                help="a hot-added NIC the guest leaves without an address fails the test; by "
                     "default the harness then starts DHCP with the guest's own tool "
                     "(networkctl, nmcli, ifup, dhclient, udhcpc) and says so in the notes")
    g.addoption("--no-reuse", action="store_true",
                help="boot a fresh guest for every test instead of reusing a clean one")


def _your_guest(g) -> None:
    g.addoption("--guest", action="append", default=None, metavar="NAME|FILE",
                help="run every scenario on this guest too; repeat for several (the guest "
                     "becomes part of the test ids and a column of the report): builtin, "
                     "systemd, systemd:console, cloudinit, cloudinit-ifupdown, cloudinit-nm "
                     "(Debian guests built from packages, "
                     "root and mmdebstrap needed), or a TOML file of your own [[guest]] tables")
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


def user_image(opt) -> GuestImage | None:
    """Your own guest from the --guest-* options (None: the built-in guest). Bad input is a
    :class:`ConfigError` that says which option and what to pass."""
    if opt.guest and (opt.guest_kernel or opt.guest_disk):
        raise ConfigError("--guest and --guest-kernel/--guest-disk: with --guest, describe your "
                          "own image in a guests file",
                          hint="a TOML [[guest]] table with name, disk/kernel, key or ready "
                               "(harness/guests.py), given as --guest FILE")
    if not (opt.guest_kernel or opt.guest_disk):
        if opt.guest_initrd or opt.guest_key or opt.guest_ready:
            raise ConfigError("--guest-initrd/--guest-key/--guest-ready describe your own "
                              "image: also pass --guest-kernel or --guest-disk")
        return None
    for flag, value in (("--guest-kernel", opt.guest_kernel), ("--guest-initrd", opt.guest_initrd),
                        ("--guest-disk", opt.guest_disk), ("--guest-key", opt.guest_key)):
        if value and not Path(value).is_file():
            raise ConfigError(f"{flag} {value}: no such file (or not a regular file)")
    if opt.guest_cloud_init and not opt.guest_disk:
        raise ConfigError("--guest-cloud-init seeds a cloud image's cloud-init: pass "
                          "the image with --guest-disk")
    if not opt.guest_ready and not opt.guest_key and not opt.guest_cloud_init:
        raise ConfigError("your own guest needs a way in: --guest-key (SSH), "
                          "--guest-cloud-init (a cloud image: the key is made for the "
                          "run) and/or --guest-ready REGEX (a root shell on ttyS0)")
    return GuestImage(kernel=_path(opt.guest_kernel), initrd=_path(opt.guest_initrd),
                      append=opt.guest_append, disk=_path(opt.guest_disk),
                      disk_format=opt.guest_disk_format, ssh_user=opt.guest_user,
                      ssh_key=_path(opt.guest_key), ready_pattern=opt.guest_ready)


def _positive_int(text: str) -> int:
    import argparse

    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return n


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
