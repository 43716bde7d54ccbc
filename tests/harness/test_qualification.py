"""A qualification from real runs: two runs of the same scenario, the second on a QEMU whose
root bus refuses hotplug (a wrapper that adds ``-global PIIX4_PM.acpi-root-pci-hotplug=off``,
as a build with that default would), merged into one report, compared (the regression gates),
and every page opened in headless Chromium: it renders, with no console error."""

import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SELECT = ["tests/scenarios/test_nic.py", "-k", "pc and e1000e"]
NODEID = "tests/scenarios/test_nic.py::test_nic[emulated-pc-e1000e]"


def harness(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env)


def child_run(env: dict, reports: Path, *extra: str) -> Path:
    subprocess.run([sys.executable, "-m", "pytest", *SELECT, "-p", "no:cacheprovider",
                    "--report-dir", str(reports), *extra], cwd=REPO, capture_output=True,
                   text=True, timeout=600, env=env)
    [run] = reports.glob("run-*")
    return run


def open_in_chromium(page: Path, tmp_path: Path, screenshot: Path | None = None) -> tuple[str, list[str]]:
    """The page's DOM as Chromium built it, and the console messages it logged (Chromium
    writes them to stderr as ``INFO:CONSOLE`` lines)."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--window-size=1300,1800"]
    p = subprocess.run([*args, "--dump-dom", page.resolve().as_uri()], capture_output=True,
                       text=True, timeout=120)
    console = [line for line in p.stderr.splitlines() if ":CONSOLE" in line]
    if screenshot is not None:
        subprocess.run([*args, f"--screenshot={screenshot}", page.resolve().as_uri()],
                       capture_output=True, timeout=120, check=True)
    return p.stdout, console


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                    "(make test installs Debian's chromium package)")


@needs_chromium
def test_the_console_check_sees_a_page_with_errors(tmp_path):
    """The check below would see an error: a page with one is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><p>x</p><script>console.error('deliberate'); nope();</script>")
    dom, console = open_in_chromium(bad, tmp_path)
    assert "<p>x</p>" in dom
    assert any('"deliberate"' in c for c in console) and any("ReferenceError" in c for c in console), console


@needs_chromium
def test_two_runs_merge_compare_gates_and_every_report_renders(tmp_path, child_env):
    wrapper = tmp_path / "qemu-root-bus-without-hotplug"
    wrapper.write_text(f"#!/bin/sh\nexec {shutil.which('qemu-system-x86_64')} \"$@\" "
                       "-global PIIX4_PM.acpi-root-pci-hotplug=off\n")
    wrapper.chmod(0o755)
    good = child_run(child_env, tmp_path / "a")
    bad = child_run(child_env, tmp_path / "b", "--qemu-binary", str(wrapper))
    outcomes = [json.loads((r / "summary.json").read_text())["tests"][0]["outcome"] for r in (good, bad)]
    assert outcomes == ["passed", "failed"], outcomes

    # each run's junit.xml carries its identity, for CI systems that read only JUnit
    suite = ET.parse(bad / "junit.xml").getroot().find("testsuite")
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["hotplug.qemu"].startswith("QEMU emulator version") and props["hotplug.run"] == bad.name

    out = tmp_path / "merged"
    p = harness("merge", str(good), str(bad), "--out", str(out), env=child_env)
    assert p.returncode == 0, p.stderr
    merged = json.loads((out / "summary.json").read_text())
    assert [r["coverage"]["nic"] for r in merged["runs"]] == ["1/1 passed", "0/1 passed"]

    p = harness("compare", str(good), str(bad), env=child_env)
    assert p.returncode == 1, p.stdout
    assert re.search(rf"REGRESSED\s+{re.escape(NODEID)}: passed -> failed", p.stdout), p.stdout
    assert harness("compare", str(good), str(good), env=child_env).returncode == 0

    for page in (good / "report.html", bad / "report.html", out / "report.html"):
        html = page.read_text()
        # self-contained: nothing to fetch, nothing to run
        assert not re.search(r"<script|<link|src=|url\((?!#)", html), page
        dom, console = open_in_chromium(page, tmp_path, tmp_path / f"{page.parent.name}.png")
        assert console == [], (page, console)
        assert "Qualification matrix" in dom, page
        # latency pictures where the run measured any (the failing run's device_add failed)
        assert ("<svg" in dom) == (page.parent != bad), page
        assert (tmp_path / f"{page.parent.name}.png").stat().st_size > 20_000
    # the failing cell of the merged matrix links to the bundle, which is there
    link = re.search(r'<td class="failed">.*?<a href="([^"]+)">bundle</a>', (out / "report.html").read_text())
    assert link and list((out / link.group(1)).glob("*/serial.log")), link


def test_repeat_gives_each_test_a_pass_rate_and_each_latency_a_distribution(tmp_path, child_env):
    p = subprocess.run([sys.executable, "-m", "pytest", *SELECT, "-p", "no:cacheprovider",
                        "--report-dir", str(tmp_path), "--repeat", "3"], cwd=REPO,
                       capture_output=True, text=True, timeout=600, env=child_env)
    assert p.returncode == 0, p.stdout[-3000:]
    summary = json.loads((tmp_path / "latest" / "summary.json").read_text())
    assert [(t["nodeid"], t["repetition"]) for t in summary["tests"]] == [(NODEID, k) for k in (1, 2, 3)]
    assert summary["pass_rates"] == {NODEID: {"ran": 3, "passed": 3, "rate": 1.0}}
    visible = summary["latencies"]["nic.guest_visible"]
    assert visible["n"] == 3 and visible["median"] <= visible["p95"] <= visible["max"]
    assert f"3/3 (100%)  {NODEID}" in p.stdout
    assert "e1000e 3/3 passed" in (tmp_path / "latest" / "report.html").read_text()
    # one guest served all three (reused while clean)
    assert len({g["name"] for t in summary["tests"] for g in t["guests"]}) == 1
