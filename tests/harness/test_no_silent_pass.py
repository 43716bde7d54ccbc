"""A vfio run never passes having tested nothing (issue: a nightly on a broken VT-d host went
green because every scenario was skipped). Child pytest runs on this host, which has no IOMMU."""

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

NIC_ONLY = """
[[device]]
role = "nic"
bdf = "0000:00:03.0"
gateway = "10.0.5.2"
"""


def run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "tests/scenarios", "-p", "no:xdist",
                           "-p", "no:cacheprovider", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def test_vfio_without_an_iommu_ends_the_session_with_the_doctors_reasons(tmp_path, child_env):
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(NIC_ONLY)
    p = run({**child_env, "HH_VFIO_JOURNAL": str(tmp_path / "journal.json")},
            "--backend", "vfio", "--host-inventory", str(inventory))
    assert p.returncode != 0, p.stdout[-2000:]
    assert "cannot run vfio-pci" in p.stderr and "no IOMMU" in p.stderr, p.stderr[-2000:]
    assert "[FAIL]" in p.stderr and "verdict" not in p.stdout.split("ERROR")[0]
    assert " passed" not in p.stdout and " skipped" not in p.stdout


def test_vfio_without_an_inventory_is_refused(tmp_path, child_env):
    p = run(child_env, "--backend", "vfio")
    assert p.returncode != 0 and "needs --host-inventory" in p.stderr, p.stderr[-2000:]


def test_a_role_the_inventory_lacks_is_not_covered_unless_left_out(tmp_path, child_env):
    """On a host whose doctor says yes (faked here: this host has no IOMMU), the scenarios of a
    role the inventory has no device for fail in set-up as "not covered"; --roles without that
    role leaves them out on purpose."""
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(NIC_ONLY)
    (tmp_path / "hh_fake_vtd.py").write_text(textwrap.dedent("""
        from harness.host import doctor
        doctor.run_checks = lambda *a, **k: [doctor.Check("VT-d (faked by the test)", True, "ok")]
    """))
    env = {**child_env, "PYTHONPATH": str(tmp_path), "HH_VFIO_JOURNAL": str(tmp_path / "j.json")}
    args = ("--backend", "vfio", "--host-inventory", str(inventory), "-p", "hh_fake_vtd",
            "--report-dir", str(tmp_path / "reports"), "-k", "test_usb_device")
    p = run(env, *args)
    assert p.returncode == 1, p.stdout[-3000:]
    assert p.stdout.count("not covered: the inventory") >= 3, p.stdout[-3000:]
    assert "3 errors" in p.stdout.splitlines()[-1], p.stdout.splitlines()[-1]
    # Left out on purpose: not covered is gone. What is left (the emulated failure tests of
    # -k test_usb_device) passes, but nothing went through passthrough: the run still fails.
    p = run(env, *args, "--roles", "nic,sata-controller")
    assert "not covered" not in p.stdout and "test_usb_device[" not in p.stdout, p.stdout[-3000:]
    assert "2 passed" in p.stdout.splitlines()[-1], p.stdout[-3000:]
    assert p.returncode == 1 and "NOTHING TESTED: --backend vfio" in p.stdout, p.stdout[-3000:]


def test_usb_vendor_product_form_is_refused_when_two_devices_share_the_ids(tmp_path, child_env):
    """The guide's `usb_add host:VVVV:PPPP` form takes whichever device QEMU finds first: with
    two devices of those ids on the host (faked here, with a doctor that says yes), that form's
    tests fail in set-up naming both; the hostbus/hostaddr form is unaffected."""
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(textwrap.dedent("""
        [[device]]
        role = "usb-device"
        name = "stick"
        hostbus = 1
        hostaddr = 2
        vendorid = "0x46f4"
        productid = "0x0001"
    """))
    (tmp_path / "hh_fake_twins.py").write_text(textwrap.dedent("""
        from harness.host import doctor, sysfs
        doctor.run_checks = lambda *a, **k: [doctor.Check("VT-d (faked by the test)", True, "ok")]
        twin = lambda addr: sysfs.UsbDevice(f"1-{addr}", 1, addr, "46f4", "0001", "stick", "QEMU",
                                            0, f"/sys/bus/usb/devices/1-{addr}")
        sysfs.Sysfs.usb_devices = lambda self: [twin(2), twin(3)]
    """))
    env = {**child_env, "PYTHONPATH": str(tmp_path), "HH_VFIO_JOURNAL": str(tmp_path / "j.json")}
    p = subprocess.run([sys.executable, "-m", "pytest", "tests/scenarios/test_usb.py", "-p",
                        "no:xdist", "-p", "no:cacheprovider", "--backend", "vfio", "--host-inventory",
                        str(inventory), "-p", "hh_fake_twins", "--collect-only", "-q"],
                       cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert "stick-vidpid" in p.stdout and "stick-busaddr" in p.stdout, p.stdout[-2000:]
    p = subprocess.run([sys.executable, "-m", "pytest", "tests/scenarios/test_usb.py", "-p",
                        "no:xdist", "-p", "no:cacheprovider", "--backend", "vfio", "--host-inventory",
                        str(inventory), "-p", "hh_fake_twins", "-k", "vidpid and pc",
                        "--report-dir", str(tmp_path / "reports")],
                       cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 1 and "1 error" in p.stdout.splitlines()[-1], p.stdout[-3000:]
    assert "2 devices on this host have those ids (bus 1 addr 2, bus 1 addr 3)" in p.stdout


FAKE_HOST = """
from types import SimpleNamespace
from pathlib import Path
from harness.host import doctor, inventory, sysfs
doctor.run_checks = lambda *a, **k: [doctor.Check("VT-d (faked by the test)", True, "ok")]
inventory._EntryChecker.check_host = lambda self, fs, device: None
GROUPS = {"0000:00:03.0": 7, "0000:00:04.0": 7, "0000:00:05.0": 9}
sysfs.Sysfs.pci_dir = lambda self, bdf: Path("/")
sysfs.Sysfs.pci_device = lambda self, bdf: SimpleNamespace(iommu_group=GROUPS[bdf])
sysfs.Sysfs.usb_devices = lambda self: [sysfs.UsbDevice("3-3", 3, 3, "46f4", "0001", "stick",
                                                        "QEMU", 0, "/sys/bus/usb/devices/3-3")]

def pytest_collection_finish(session):
    for item in session.items:
        group = item.get_closest_marker("xdist_group")
        print("GROUP", item.nodeid, group.args[0] if group else None)
"""

TWO_NICS_ONE_GROUP = """
[[device]]
role = "nic"
name = "port0"
bdf = "0000:00:03.0"
gateway = "10.0.5.2"
[[device]]
role = "nic"
name = "port1"
bdf = "0000:00:04.0"
gateway = "10.0.6.2"
[[device]]
role = "sata-controller"
name = "ahci"
bdf = "0000:00:05.0"
[[device]]
role = "usb-device"
name = "stick"
hostbus = 3
hostaddr = 3
vendorid = "0x46f4"
productid = "0x0001"
"""


def test_one_physical_resource_is_one_xdist_group(tmp_path, child_env):
    """Tests that take host hardware are grouped by what they physically take: two inventory
    NICs in one IOMMU group are one group; a USB device's two forms are one group; the
    failure-path tests go with the NIC they bind. And -n without --dist loadgroup is refused."""
    (tmp_path / "inventory.toml").write_text(TWO_NICS_ONE_GROUP)
    (tmp_path / "hh_fake_groups.py").write_text(FAKE_HOST)
    env = {**child_env, "PYTHONPATH": str(tmp_path), "HH_VFIO_JOURNAL": str(tmp_path / "j.json")}
    args = ["--backend", "vfio", "--host-inventory", str(tmp_path / "inventory.toml"),
            "-p", "hh_fake_groups", "--report-dir", str(tmp_path / "reports")]
    p = subprocess.run([sys.executable, "-m", "pytest", "tests/scenarios", "-p", "no:cacheprovider",
                        "--collect-only", "-q", "-s", *args],
                       cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    groups = {}
    for line in p.stdout.splitlines():
        if line.startswith("GROUP "):
            _, nodeid, group = line.split(" ", 2)
            groups[nodeid.split("::")[-1]] = group
    assert groups, p.stdout[-3000:] + p.stderr[-2000:]
    assert groups["test_nic[vfio-pc-port0]"] == groups["test_nic[vfio-pc-port1]"] == "iommu-group-7"
    assert groups["test_sata_controller[vfio-pc-ahci]"] == "iommu-group-9"
    assert groups["test_usb_device[vfio-pc-uhci-stick-busaddr]"] == \
        groups["test_usb_device[vfio-pc-uhci-stick-vidpid]"] == "usb-3-3"
    assert groups["test_device_on_host_driver"] == "iommu-group-7"
    p = subprocess.run([sys.executable, "-m", "pytest", "tests/scenarios", "-p", "no:cacheprovider",
                        "-n", "2", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=env)
    assert p.returncode == 4 and "needs --dist loadgroup" in p.stderr, p.stderr[-2000:]
