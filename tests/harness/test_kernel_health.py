"""After every test that used a guest, the guest kernel's log is checked: an Oops, BUG,
WARNING, call trace, hung task or lockup logged during the test fails it, with the trace."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.scenario.devices import PCI_PLATFORMS

REPO = Path(__file__).resolve().parents[2]
DELIBERATE = "WARNING: CPU: 0 PID: 1 at hotplug-harness/deliberate.c:1 check_the_check"


@pytest.mark.guest(platform=PCI_PLATFORMS[0])
def test_a_warning_in_the_guest_kernel_log_is_found_and_can_be_allowed(hotplug, guest):
    assert hotplug.kernel_problems() == []
    guest.shell.succeed(f"echo '{DELIBERATE}' > /dev/kmsg")
    [problem] = hotplug.kernel_problems()
    assert DELIBERATE in problem and problem.startswith(f"guest {guest.name}: ")
    hotplug.allow_kernel(r"hotplug-harness/deliberate\.c")
    assert hotplug.kernel_problems() == []
    # known noise (a device's kernel_noise goes the same way): not failed on, but noted
    guest.shell.succeed("echo 'WARNING: CPU: 0 PID: 2 at kernel/noise.c:1 known_noise' > /dev/kmsg")
    hotplug.allow_kernel(r"noise\.c", "a known noise")
    assert hotplug.kernel_problems() == []
    assert [n for n in hotplug.notes if n.startswith("allowed: a known noise: ")]


CHILD_TEST = f'''
import pytest
from harness.scenario.devices import PCI_PLATFORMS

@pytest.mark.guest(platform=PCI_PLATFORMS[0])
def test_passes_but_its_guest_kernel_warned(guest):
    guest.shell.succeed("echo '{DELIBERATE}' > /dev/kmsg")


@pytest.mark.guest(platform=PCI_PLATFORMS[0])
def test_fails_on_a_command_after_its_guest_kernel_warned(guest):
    guest.shell.succeed("echo '{DELIBERATE}' > /dev/kmsg")
    guest.shell.succeed("exit 3")
'''


def test_a_test_whose_guest_kernel_warned_fails_with_the_trace(tmp_path, child_env, probe_options):
    test_file = tmp_path / "test_warned.py"
    test_file.write_text(CHILD_TEST)
    p = subprocess.run([sys.executable, "-m", "pytest", str(test_file), "-p", "no:cacheprovider",
                        "--report-dir", str(tmp_path / "reports"), *probe_options], cwd=REPO,
                       capture_output=True, text=True, timeout=300, env=child_env)
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-2000:]
    warned, failed = sorted(json.loads((tmp_path / "reports" / "latest" / "summary.json").read_text())["tests"],
                            key=lambda r: r["test"], reverse=True)
    assert warned["outcome"] == "failed" and warned["failure_kind"] == "product", warned
    assert "the guest kernel logged a problem during the test" in warned["reason"]
    assert DELIBERATE in warned["reason"]
    # A test that failed on its own: the failure stands, and its notes say the kernel's problem
    assert failed["outcome"] == "failed" and "exit 3" in failed["reason"], failed
    [bundle] = (tmp_path / "reports").glob("run-*/bundles/*fails_on_a_command*")
    notes = json.loads((bundle / "record.json").read_text())["notes"]
    assert [n for n in notes if n.startswith("the guest kernel logged a problem before the "
                                             "failure: guest ") and DELIBERATE in n], notes
