"""Nothing happens until a scenario needs it: a run of unit tests, and a collection of the
whole suite, write nothing under the report folder and start no QEMU (the plugin is loaded in
every pytest of the venv)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    # A QEMU that leaves a mark if anything starts it (a version check, a probe boot).
    marker = tmp_path / "qemu-was-started"
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_text(f"#!/bin/sh\necho \"$@\" >> {marker}\nexit 1\n")
    qemu.chmod(0o755)
    reports = tmp_path / "reports"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:xdist", "-q",
                           "--report-dir", str(reports), "--qemu-binary", str(qemu), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_unit_tests_write_no_report_and_start_no_qemu(tmp_path, child_env):
    p = _run(tmp_path, child_env, "tests/unit/test_probes.py")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert not (tmp_path / "reports").exists(), sorted((tmp_path / "reports").rglob("*"))
    assert not (tmp_path / "qemu-was-started").exists(), (tmp_path / "qemu-was-started").read_text()
    assert "hotplug-harness report" not in p.stdout


def test_collect_only_writes_nothing_and_starts_no_qemu(tmp_path, child_env):
    p = _run(tmp_path, child_env, "--collect-only", "tests/unit", "tests/harness", "tests/scenarios")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "tests/scenarios/test_nic.py::test_nic[" in p.stdout
    assert not (tmp_path / "reports").exists()
    assert not (tmp_path / "qemu-was-started").exists(), (tmp_path / "qemu-was-started").read_text()
