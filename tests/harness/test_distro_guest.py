"""Your own guest as users have it: a conventional systemd Debian 12 image (mmdebstrap, Debian's
kernel and initramfs-tools initrd, ext4 disk, systemd-networkd, openssh-server), a stand-in for
the guide's RHEL 7 image, runs the guide's scenarios over SSH and over the serial console.

Built once by fixtures/images/systemd/build (root and mmdebstrap: CI runs as root) and cached.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.images import builtin as images
from harness.images import distro

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="building the systemd guest needs root "
                                "(mmdebstrap); CI runs as root")
# Each test runs its own pytest. All three on one worker were `make test`'s critical path
# (2321 s of its 2329 s, the other workers idle after 971 s); all three at once put 14 TCG
# guests on 2 cores. Three groups now: the SSH run (two workers), the console matrix (two)
# with the NetworkManager cloud image, and the networkd and ifupdown cloud images (one guest
# each). With the last two in one group, that group was the critical path again: 1815 s of
# a fresh clone's 1831 s of `make test` (Dec 6, 19:05), the other workers done by 1166-1769 s.
SSH_GROUP = pytest.mark.xdist_group("distribution-guest-ssh")
OTHER_GROUP = pytest.mark.xdist_group("distribution-guests")
CLOUD_GROUP = pytest.mark.xdist_group("cloud-images")
#: Over SSH, each of the systemd guest's roles once, and the scenarios its habits break. Each
#: role runs on every platform in make test's matrix of the built-in guest (the same Debian 12
#: kernel and drivers), so here it runs on one: what is tried is the guest's userland (udev,
#: systemd) reached over SSH, not the slot. The NIC is the console run's (below); beside the
#: management NIC, the failover pair and the two NICs in one slot hot-add NICs udev renames.
#: (This run had every role on all three platforms: 16 tests, 770 s on 2 workers unloaded,
#: one of make test's longest child runs, Dec 6.)
ROLES_ONCE = ["tests/scenarios/test_usb.py::test_usb_device[emulated-q35-xhci-storage]",
              "tests/scenarios/test_usb.py::test_usb_controller[emulated-q35-acpi-qemu-xhci]",
              "tests/scenarios/test_sata.py::test_sata_controller[emulated-pc-ich9-ahci]"]
#: What a cloud image adds to the systemd guest (the same Debian 12 kernel, udev and roles,
#: each of which runs over SSH below): the run's key and NoCloud seed, and a
#: hot-added NIC configured by the seed's networkd rule. A cloud image boots in about 80 s
#: under TCG, so each cloud image boots once, on q35 (ACPI hotplug): what is tried is the
#: guest's network stack, not the slot, and its USB and SATA roles, the systemd guest's
#: already, are not run again. (Each cloud image's NIC on pc too cost three more boots, and
#: the four cloud and console runs, one after another on one worker, were `make test`'s
#: longest path: 1893 s of 2130 s, Dec 6.)
CLOUD_NIC = ("-k", "test_nic and e1000e and q35-acpi")
#: The scenarios a guest's own habits break (issue 33): memory it onlines itself, NICs udev
#: renames late (a failover pair's three interfaces, two NICs in one slot), a network stack that
#: is not networkd. On the systemd guest with its habits, beside ROLES_ONCE, each on one platform
#: as the roles are: the habit is the guest's userland (its udev rules), the same on pc and q35,
#: whose ACPI and pciehp paths make test's built-in matrix tries. (Memory and two NICs in one
#: slot on pc as well cost two more systemd boots, about a quarter of this run, Dec 7.)
HABITS = ["tests/scenarios/test_memory.py::test_memory_hotadd[q35]",
          "tests/scenarios/test_lifecycle.py::test_failover_pair_through_migration[emulated-q35-acpi-e1000e]",
          "tests/scenarios/test_lifecycle.py::test_multifunction_slot[emulated-q35-pciehp-e1000e]"]
#: Users run Debian 12's QEMU 7.2 and newer ones: the console matrix and the NetworkManager
#: cloud image run on QEMU 10 from bookworm-backports (issue 33), the others on the host's.
QEMU_10 = ("--qemu-binary", "backports")


@pytest.fixture(scope="module")
def systemd_guest(hotplug_session) -> distro.DistroImage:
    cache = Path(hotplug_session.config.option.image_cache or images.DEFAULT_CACHE)
    return distro.ensure_distro("systemd", cache, log=lambda s: None)


def run_scenarios(env, tmp_path, image_args, tests, *extra):
    p = subprocess.run([sys.executable, "-m", "pytest", *tests, "-p", "no:cacheprovider",
                        "--report-dir", str(tmp_path / "reports"), *image_args, *extra],
                       cwd=REPO, capture_output=True, text=True, timeout=1800, env=env)
    summary_file = tmp_path / "reports" / "latest" / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    return p, summary


def said(p: subprocess.CompletedProcess) -> str:
    """The end of a child run's output, for an assertion's message: its test summary and the
    errors above it, without the log lines of a library retrying (paramiko's transport)."""
    lines = [line for line in p.stdout.splitlines() if "paramiko.transport" not in line]
    return "\n".join(lines)[-6000:] + p.stderr[-2000:]


def notes_of(summary, test: str) -> list[str]:
    return [n for t in summary["tests"] if f"::{test}[" in t["nodeid"] for n in t.get("notes") or ()]


@SSH_GROUP
def test_systemd_guest_with_its_habits_runs_the_nic_usb_sata_memory_and_failover_scenarios(
        systemd_guest, tmp_path, child_env):
    """USB device, USB controller and SATA, each once, reached over SSH through a
    management NIC (the console is still drained, or the guest would stall in printk); and the
    scenarios its habits used to break: it onlines hot-added memory itself into the kernel's
    zone (the notes say so, and the unplug it may refuse is expected), and udev renames every
    new NIC only after 3 s (NICs are found by MAC and PCI function, never by the kernel's
    first name: a failover pair's master, standby and primary, two NICs in one slot; the
    single NIC on every platform is the console run's)."""
    p, summary = run_scenarios(child_env, tmp_path, systemd_guest.pytest_args("ssh"),
                               ROLES_ONCE + HABITS, "-n", "2", "--dist", "loadgroup")
    assert p.returncode == 0, said(p)
    counts = summary["counts"]
    assert counts["passed"] == 3 + 1 + 1 + 1 and not counts.get("skipped"), counts
    assert summary["hygiene"].startswith("clean")
    memory = notes_of(summary, "test_memory_hotadd")
    assert len([n for n in memory if "onlined by the guest into Normal" in n]) == 1, memory


@OTHER_GROUP
def test_systemd_guest_over_the_console_and_the_builtin_guest_in_one_matrix(systemd_guest, tmp_path,
                                                                           child_env):
    """``--guest builtin --guest systemd:console``: the NIC, USB and SATA scenarios on pc and
    q35 run on both guests in one run, the guest part of each test id; the systemd guest has
    no network at boot (the guide's -net none) and is driven over its serial console, ready
    when root's prompt appears. The terminal and the report show one matrix with the guest as
    an axis. On QEMU 10 (bookworm-backports, ``--qemu-binary backports``)."""
    # (the NIC on every platform: the built-in guest's whole matrix is make test's own, and
    # the systemd guest's every role runs over SSH above; what is tried here is the console
    # and two guests in one run)
    p, summary = run_scenarios(child_env, tmp_path, ["--guest", "builtin", "--guest", "systemd:console"],
                               ["tests/scenarios/test_nic.py"], "-k", "e1000e",
                               "-n", "2", "--dist", "loadgroup", *QEMU_10)
    assert p.returncode == 0, said(p)
    assert summary["qemu_version"].startswith("10."), summary["qemu_version"]
    by_guest = {g: [t for t in summary["tests"] if t["guest"] == g] for g in ("builtin", "systemd-console")}
    for g, tests in by_guest.items():
        assert len(tests) == 3 and all(t["outcome"] == "passed" for t in tests), (g, len(tests))
        assert all(t["nodeid"].endswith(f"-{g}]") for t in tests), g
    assert [line.split() for line in p.stdout.splitlines() if line.startswith("scenario ")] == \
        [["scenario", "builtin", "systemd-console"]], p.stdout[-3000:]
    page = (tmp_path / "reports" / "latest" / "report.html").read_text()
    for g in ("builtin", "systemd-console"):   # the guest is the matrix's outer axis
        assert re.search(f'<th class="group" colspan="\\d+">{g}</th>', page), g
    assert summary["hygiene"].startswith("clean")
    # the systemd guest's udev renamed each hot-added NIC, found by its MAC all the same
    nics = [n.split()[0] for t in by_guest["systemd-console"] for n in t.get("notes") or ()
            if " got " in n]
    assert len(nics) == 3 and not [n for n in nics if n.startswith("eth")], nics


@pytest.fixture(scope="module")
def cloud_guest(hotplug_session) -> distro.DistroImage:
    cache = Path(hotplug_session.config.option.image_cache or images.DEFAULT_CACHE)
    return distro.ensure_distro("cloudinit", cache, log=lambda s: None)


@CLOUD_GROUP
def test_cloud_image_with_no_key_baked_in_gets_its_hot_added_nics_configured_by_the_seed(
        cloud_guest, tmp_path, child_env):
    """A guest that behaves like a stock cloud image (cloud-init, no user key, no password):
    --guest-cloud-init makes the run's SSH key and a NoCloud seed; the guest comes up over SSH
    and the seed's networkd rule gives its hot-added NIC an address by DHCP (q35, ACPI
    hotplug), with no help from the harness."""
    assert not (cloud_guest.folder / "id_ed25519").exists()
    args = cloud_guest.pytest_args("ssh")
    assert "--guest-cloud-init" in args and "--guest-key" not in args
    p, summary = run_scenarios(child_env, tmp_path, args, ["tests/scenarios/test_nic.py"],
                               *CLOUD_NIC)
    assert p.returncode == 0, said(p)
    assert summary["counts"]["passed"] == 1, summary["counts"]
    who = [n for n in notes_of(summary, "test_nic") if "configured by the guest" in n]
    assert len(who) == 1, notes_of(summary, "test_nic")
    seeds = list((tmp_path / "reports").glob("run-*/cloud-init/*/seed.vfat"))
    assert seeds, "no NoCloud seed in the run folder"


@pytest.mark.parametrize("network", [pytest.param("ifupdown", marks=CLOUD_GROUP),
                                     pytest.param("nm", marks=OTHER_GROUP)])
def test_cloud_image_whose_network_is_not_networkd_gets_its_hot_added_nics_configured(
        network, hotplug_session, tmp_path, child_env):
    """Cloud images whose cloud-init renders ifupdown (Debian's genericcloud) or
    NetworkManager (RHEL, Rocky, Alma): the seed's networkd rule means nothing there. The NIC
    scenario and two NICs in one slot on q35 (ACPI hotplug) pass: the guest's own stack
    gets its chance (or, on the ifupdown image, the guest's state shows it has nothing for a
    hot-added NIC), then the harness starts DHCP with the guest's own tool and the notes say
    so (on the ifupdown image, for all three NICs). (Both on q35 with ACPI hotplug, one guest
    for both: a cloud image takes about 80 s to boot under TCG, and what is tried here is the
    guest's network stack, not the slot.) The NetworkManager image on QEMU 10
    (bookworm-backports), the ifupdown one on the host's."""
    cache = Path(hotplug_session.config.option.image_cache or images.DEFAULT_CACHE)
    guest = distro.ensure_distro(f"cloudinit-{network}", cache, log=lambda s: None)
    qemu = QEMU_10 if network == "nm" else ()
    p, summary = run_scenarios(child_env, tmp_path, guest.pytest_args("ssh"),
                               ["tests/scenarios/test_nic.py", "tests/scenarios/test_lifecycle.py"],
                               "-k", "e1000e and q35-acpi and (test_nic or multifunction)",
                               *qemu)
    assert p.returncode == 0, said(p)
    assert summary["qemu_version"].startswith("10." if qemu else "7."), summary["qemu_version"]
    assert summary["counts"]["passed"] == 2, summary["counts"]
    who = [n for n in notes_of(summary, "test_nic") if "configured by the" in n]
    assert len(who) == 1, notes_of(summary, "test_nic")
    if network == "ifupdown":  # (it has nothing for a hot-added NIC: the harness runs ifup)
        by_harness = [n for n in notes_of(summary, "test_nic") + notes_of(
            summary, "test_multifunction_slot") if "configured by the harness (ifup" in n]
        assert len(by_harness) == 3, summary["tests"]
