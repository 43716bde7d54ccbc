"""The real vfio stack's failure paths, with ``--backend lab`` (the nested lab host) or
``--backend vfio`` (a VT-d host): each way ``device_add vfio-pci,host=...`` can be refused comes
back as a harness error that says what is wrong on the host and what to do, with QEMU's own
words in its details, and nothing is left changed. These tests need real vfio-pci: with
``--backend emulated`` they are deselected."""

import os
import sys
from pathlib import Path

import pytest

from harness.guest import checks
from harness.scenario import devices
from harness.scenario.devices import PCI_PLATFORMS
from harness.core.errors import HostDeviceError
from harness.host.binding import VFIO, _move_to_vfio, _restore_entry
from harness.host.inventory import InventoryError, parse_inventory
from harness.host.sysfs import Sysfs

pytestmark = pytest.mark.passthrough
Q35 = PCI_PLATFORMS[1]
REPO = Path(__file__).resolve().parents[2]


def _nic(hs):
    entries = hs.inventory.for_role("nic") if hs.inventory else []
    if not entries:
        pytest.skip(f"the inventory {hs.inventory.path if hs.inventory else ''} has no 'nic' "
                    "entry: add one (docs/vfio.md) to run this test")
    return entries[0]


def _refused(guest, device_id: str, host: str) -> HostDeviceError:
    """``device_add vfio-pci,host=`` of a device as it is; with --driver libvirt a
    ``<hostdev managed='no'>``, which asks libvirt to use the device as it is too (with
    'yes' libvirt would move it to vfio-pci itself)."""
    libvirt = guest.driver == "libvirt"
    with pytest.raises(HostDeviceError) as info:
        devices.add_vfio(guest, device_id, host, bus=guest.free_bus(),
                         **({"managed": "no"} if libvirt else {}))
    err = info.value
    assert err.details.startswith(f"  {'libvirt' if libvirt else 'QEMU'} said: "), err.details
    assert checks.pci_function(guest, device_id) is None, f"{device_id} is in query-pci"
    return err


@pytest.mark.guest(platform=Q35)
def test_device_on_host_driver(hotplug_session, guest):
    """A device still on its host driver (not bound to vfio-pci): QEMU cannot open its group."""
    bdf = _nic(hotplug_session).bdf
    fs = Sysfs.of("/")
    driver = fs.pci_device(bdf).driver
    assert driver not in (None, VFIO), f"{bdf} should start on its host driver, it is on {driver}"
    err = _refused(guest, "nic0", bdf)
    assert err.message == f"{bdf} is on its host driver {driver}, not on vfio-pci", err
    assert fs.pci_device(bdf).driver == driver


@pytest.mark.guest(platform=Q35)
def test_group_not_viable(hotplug_session, guest):
    """A device whose IOMMU group it shares with devices on host drivers (q35's 00:1f.x: the LPC
    bridge, AHCI and SMBus): the binder refuses to take the group, and bound alone by hand it
    is "not viable" to QEMU."""
    hs = hotplug_session
    if hs.backend.name != "lab":
        pytest.skip("needs a device that shares its IOMMU group with host devices (the lab "
                    "host's 00:1f.2); the harness does not do this to a real host's devices")
    from harness import lab

    bdf, fs = lab.GROUPED_BDF, Sysfs.of("/")
    dev = fs.pci_device(bdf)
    others = [m for m in fs.iommu_group_members(dev.iommu_group) if m != bdf]
    busy = {m: fs.pci_device(m).driver for m in others if fs.pci_device(m).driver}
    assert busy, f"group {dev.iommu_group} should hold devices on host drivers: {others}"

    with pytest.raises(HostDeviceError) as info:
        hs.binder.bind(bdf, allowed={bdf})
    assert info.value.message.startswith(f"refusing to take {bdf}: group {dev.iommu_group} member "), info.value
    assert "would have to leave the host for vfio-pci too" in info.value.message
    assert fs.pci_device(bdf).driver == dev.driver, "the refused bind changed a driver"

    # By hand, what the binder refused: this one function alone onto vfio-pci (the binder's own
    # steps, without its group plan), and back the way `harness restore` gives devices back.
    _move_to_vfio(fs, dev, timeout=5)
    try:
        err = _refused(guest, "sata", bdf)
        assert err.message.startswith(f"IOMMU group {dev.iommu_group} of {bdf} is not viable: "), err
        for member, driver in busy.items():
            assert f"{member} (" in err.message and f", {driver})" in err.message, err
    finally:
        back = _restore_entry(fs, {"bdf": bdf, "driver": dev.driver, "group": dev.iommu_group,
                                   "driver_override": dev.driver_override}, timeout=5)
        assert back.status == "restored", back


@pytest.mark.guest(platform=Q35)
def test_device_already_attached(hotplug, hotplug_session, guest):
    """The same host device passed through twice to one guest."""
    hs = hotplug_session
    entry = _nic(hs)
    device = next(d for d in hs.vfio_devices("nic") if d.entry == entry)
    nic = hotplug.plug(guest, device, "nic0")
    err = _refused(guest, "nic1", entry.bdf)
    assert err.message == (f"{entry.bdf} is already passed through to this QEMU by another "
                           "vfio-pci device"), err
    assert checks.pci_function(guest, "nic0") is not None, "the first device went away"
    assert nic.unplug().event


@pytest.mark.guest(platform=Q35)
def test_missing_device(hotplug_session, guest):
    """A host address with no device behind it: refused by the inventory before anything
    changes on the host, and by QEMU when given to device_add directly."""
    fs = Sysfs.of("/")
    missing = next(f"0000:00:{slot:02x}.0" for slot in range(0x1e, 0, -1)
                   if not fs.pci_exists(f"0000:00:{slot:02x}.0"))
    with pytest.raises(InventoryError) as info:
        parse_inventory(f'[[device]]\nrole = "nic"\nbdf = "{missing}"\ngateway = "10.0.5.2"\n',
                        source="lab.toml")
    assert info.value.problems[0].startswith(f'lab.toml: device #1 "nic-{missing[5:].replace(":", "-")}"'), \
        info.value.problems
    assert f"PCI device {missing} does not exist on this host" in info.value.problems[0], \
        info.value.problems

    err = _refused(guest, "nic0", missing)
    assert err.message == f"there is no PCI device {missing} on this host", err


@pytest.mark.guest(platform=PCI_PLATFORMS[0], kernel_args=("acpi=off",), fresh=True,
                  check_prerequisites=False)
def test_refused_unplug_gives_the_device_back_after_its_guest_is_closed(hotplug, hotplug_session,
                                                                         guest):
    """A guest that refuses the unplug (pc booted with acpi=off never ejects) keeps the host
    device while its QEMU runs: the harness closes that guest first, then gives the device back
    to its host driver, and the journal ends with no entry for it. (It used to release the
    device while QEMU still held /dev/vfio/N: the restore failed and the device stayed on
    vfio-pci, held by the live worker, for every later test.)"""
    from harness.core.errors import UnplugError
    from harness.host.binding import Journal, default_journal_path

    hs = hotplug_session
    entry = _nic(hs)
    device = next(d for d in hs.vfio_devices("nic") if d.entry == entry)
    fs = Sysfs.of("/")
    host_driver = fs.pci_device(entry.bdf).driver
    hotplug.plug(guest, device, "nic0")
    assert fs.pci_device(entry.bdf).driver == VFIO
    with pytest.raises(UnplugError) as info:
        guest.device_del("nic0", timeout=5, grace=2)
    assert info.value.verdict == "guest-refused", str(info.value)
    record = hotplug.finish(passed=True)  # what the fixture does after the test, done here to look
    assert not guest.alive()
    assert fs.pci_device(entry.bdf).driver == host_driver, record["cleanup_errors"]
    assert [e for e in Journal(default_journal_path()).read() if e["bdf"] == entry.bdf] == []
    assert any(e.startswith("unplug nic0") for e in record["cleanup_errors"]), record


def _child_run(hs, tmp_path, *args: str) -> tuple[list[str], Path]:
    """The command of a pytest run of its own inside the lab host, on the lab's devices, and
    its run folder: the lab context of this run, a run folder of its own."""
    from harness.core.runconfig import LabContext, RunConfig

    workdir = tmp_path / "lab"
    workdir.mkdir(parents=True)
    run = RunConfig.new(tmp_path / "reports", backend="lab", qemu_binary=hs.qemu_binary,
                        machines=hs.machines, lab=LabContext(workdir, hs.run.lab.image))
    command = [sys.executable, "-m", "pytest", "--hh-run-config", str(run.write()),
               "--backend", "lab", "--accel", hs.accel, "-p", "no:cacheprovider",
               "--report-dir", str(tmp_path / "reports"), *args]
    return command, run.run_dir


def _child_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "HH_RETRY"))}


def test_sigterm_mid_test_gives_the_device_back_and_leaves_no_qemu(hotplug_session, tmp_path):
    """A cancelled CI job: pytest gets SIGTERM while a test has the lab's NIC passed through to
    a running guest. The run ends as interrupted, the NIC is back on its host driver, the
    journal has no entry left, and no QEMU of that run still runs."""
    import signal
    import subprocess

    from harness.core.errors import WaitTimeout
    from harness.core.waits import wait_until
    from harness.host.binding import Journal, default_journal_path

    hs = hotplug_session
    entry = _nic(hs)
    fs = Sysfs.of("/")
    host_driver = fs.pci_device(entry.bdf).driver
    command, run_dir = _child_run(hs, tmp_path, "tests/scenarios/test_nic.py", "-k", "q35-acpi")
    child = subprocess.Popen(command, cwd=REPO, env=_child_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    def passed_through():
        # On vfio-pci, and device_add done: the test has gone on to look for it with lspci.
        # (Its driver link only: a whole pci_device() opens the function's config space, and
        # the child's bind, which counts an open config as a user-space driver's, once met
        # this poll's and refused the NIC: "config (sysfs) is open ... by pid 276", Dec 7.)
        return fs.link_name(fs.pci_dir(entry.bdf) / "driver") == VFIO and any(
            "$ lspci -nn -s " in log.read_text(errors="replace")
            for log in run_dir.glob("guests/*/commands.log"))

    try:
        # (the child decides a run of its own first: its pace probe and a probe boot under
        # nested KVM, then a guest, then the bind: 199 s at factor 1-1.3 here, and over 300 s
        # once on a machine that grew busier after the lab run measured its factor; the wait
        # ends as soon as the NIC is in, so the margin costs a passing run nothing)
        try:
            wait_until("the child run's guest to have the NIC (passed through, seen by lspci)",
                       passed_through, hs.pace(600.0))
        except WaitTimeout as e:
            child.kill()
            raise AssertionError(f"{e}\nthe child run said:\n{child.communicate()[0][-3000:]}")
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=hs.pace(120.0))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 2, f"exit {child.returncode} (expected 'interrupted'):\n{out[-3000:]}"
    assert fs.pci_device(entry.bdf).driver == host_driver, out[-3000:]
    assert [e for e in Journal(default_journal_path()).read() if e["bdf"] == entry.bdf] == []
    for pidfile in run_dir.glob("guests/*/qemu.pid"):
        pid = int(pidfile.read_text())
        assert not Path(f"/proc/{pid}").exists() or b"qemu" not in Path(
            f"/proc/{pid}/cmdline").read_bytes(), f"QEMU pid {pid} of the child run still runs"


def test_two_workers_never_share_an_iommu_group(hotplug_session, tmp_path):
    """A run of its own inside the lab host with two xdist workers, on tests that all take the
    lab's NIC (one IOMMU group): they all go to one worker and run one after another, never at
    once. (Tests of two groups at once would mean two L2 guests at once under nested KVM on
    TCG, which crashed the lab host's kernel here: docs/lab.md.)"""
    import json
    import subprocess

    hs = hotplug_session
    command, run_dir = _child_run(hs, tmp_path, "tests/scenarios/test_nic.py", "-k", "not pciehp",
                                  "-n", "2", "--dist", "loadgroup")
    p = subprocess.run(command, cwd=REPO, env=_child_env(), capture_output=True, text=True,
                       timeout=hs.pace(900.0))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    tests = json.loads((run_dir / "summary.json").read_text())["tests"]
    assert len(tests) == 2 and {t["device"] for t in tests} == {"e1000e"}, tests
    assert len({t["worker"] for t in tests}) == 1, [(t["nodeid"], t["worker"]) for t in tests]
    (_, end, a), (start, _, b) = sorted((t["started_at"], t["ended_at"], t["nodeid"]) for t in tests)
    assert start >= end, f"{a} and {b} (one IOMMU group) overlapped"
