"""The harness's command-line options (``pytest --help``, group hotplug), and turning them
into what a run needs: the user's guest image, roles, numbers."""

from __future__ import annotations

import argparse
import os

from harness.core import roles
from harness.run.backends import NAMES as BACKENDS
from harness.lab.host import DEFAULT_LAB_ACCEL, LAB_ACCELS
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


#: The old spelling of --host-inventory (pytest-ansible registers --inventory too).
OLD_INVENTORY = "--inventory"


def _add_inventory(g) -> None:
    help_text = "host device inventory for --backend vfio (see docs/vfio.md)"
    try:
        g.addoption("--host-inventory", OLD_INVENTORY, dest="host_inventory", default=None,
                    metavar="TOML", help=help_text + f"; {OLD_INVENTORY} is its deprecated "
                                                     "spelling, to go in the next release")
    except ValueError:  # another plugin owns --inventory: ours is --host-inventory only
        g.addoption("--host-inventory", dest="host_inventory", default=None, metavar="TOML",
                    help=help_text)


def deprecations(args: list[str]) -> list[str]:
    """What the command line spells the old way, with the new spelling."""
    if any(a == OLD_INVENTORY or a.startswith(OLD_INVENTORY + "=") for a in args):
        return [f"{OLD_INVENTORY} is deprecated: use --host-inventory (pytest-ansible also "
                f"registers {OLD_INVENTORY}; it goes in the next release)"]
    return []


def _what_runs(g) -> None:
    g.addoption("--machine", action="append", choices=MACHINES, default=None,
                help="machine type(s) to run on; repeat for several (default: pc and q35)")
    g.addoption("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                help="accelerator: kvm only if the CPU has vmx/svm and a probe boot works "
                     "(auto, the default), or forced")
    g.addoption("--qemu-binary", default=os.environ.get("HH_QEMU", "qemu-system-x86_64"),
                help="QEMU to test (default: qemu-system-x86_64 on PATH, or $HH_QEMU); "
                     "'backports': QEMU 10 from bookworm-backports, unpacked into the image "
                     "cache beside the host's (docs/running.md)")
    g.addoption("--backend", choices=BACKENDS, default="emulated",
                help="who plays each device role: emulated QEMU models (default), host devices "
                     "through vfio-pci/usb-host (vfio, needs --host-inventory), or a nested lab host (lab)")
    g.addoption("--driver", choices=("qmp", "libvirt"), default=os.environ.get("HH_DRIVER", "qmp"),
                help="who starts the guests and hot-adds: QEMU's monitor (qmp, default) or "
                     "libvirt (transient domains on qemu:///system, attach-device/detach-device; "
                     "docs/libvirt.md). Default $HH_DRIVER or qmp")
    g.addoption("--libvirt-managed", choices=("yes", "no"), default="yes",
                help="--driver libvirt with host PCI devices (--backend vfio or lab): "
                     "<hostdev managed='yes'> (default: libvirt moves the device to vfio-pci and "
                     "back, after the harness proved it idle and journaled it) or 'no' (the "
                     "harness binds it, as with qmp)")
    _add_inventory(g)
    g.addoption("--lab-timeout", type=float, default=3600.0, metavar="SECONDS",
                help="--backend lab: deadline of the whole lab run, the lab host's boot "
                     "included (default 3600)")
    g.addoption("--lab-qemu", default="auto", metavar="PATH",
                help="--backend lab: the QEMU that runs the lab host; auto (default): the "
                     "host's QEMU if it is 10.0 or newer, else QEMU 10 from bookworm-backports, "
                     "unpacked into the image cache")
    g.addoption("--lab-accel", choices=LAB_ACCELS, default=DEFAULT_LAB_ACCEL,
                help="--backend lab: how the guests under test (L2) run inside the lab host: "
                     "kvm (nested on the lab host's emulated SVM: faster, and it wedges the lab "
                     "host now and then) or tcg (slower; deadlines follow the guest's speed); "
                     f"default {DEFAULT_LAB_ACCEL} (docs/lab.md). --accel kvm/tcg overrides it")


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
                help="run only the scenarios of these roles (" + ", ".join(roles.ROLES) + "). "
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


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return n


def _roles(text: str) -> frozenset[str]:
    chosen = frozenset(r.strip() for r in text.split(",") if r.strip())
    unknown = sorted(chosen - set(roles.ROLES))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown role(s) {', '.join(unknown) or '(none)'}: "
                                         f"choose from {', '.join(roles.ROLES)}")
    return chosen


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, not {text!r}")
    return value
