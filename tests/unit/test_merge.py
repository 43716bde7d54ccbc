"""harness.merge and the report's matrix: runs of two QEMU builds or two hosts become one report
with what they differ in as an axis, per-host coverage and one JUnit file."""

import json
import re
import xml.etree.ElementTree as ET

import pytest

from harness.report import merge
from harness.report import html as reporthtml
from harness.report import records
from harness.cli import main
from harness.core.errors import ConfigError


def rec(scenario, platform, outcome="passed", device="e1000e", **kw):
    machine = platform.split("-")[0]
    path = "pciehp" if "pciehp" in platform else "acpi"
    usb = next((p for p in ("uhci", "ehci", "xhci") if p in platform), "")
    return {"nodeid": f"tests/scenarios/test_{scenario}.py::test_{scenario}[{platform}-{device}]",
            "test": f"test_{scenario}", "scenario": scenario, "platform": platform, "device": device,
            "kind": "scenario", "machine": machine, "hotplug_path": path, "usb_bus": usb,
            "backend": "emulated", "passthrough": "", "outcome": outcome,
            "reason": "AssertionError: boom" if outcome == "failed" else "", "duration": 2.0,
            "latencies": {"nic0.guest_visible": 0.02, "nic0.device_del_to_event": 0.2}, **kw}


def write_run(folder, name, tests, qemu="7.2.22", host="vtd-1", inventory=None, roles=None):
    folder.mkdir(parents=True)
    s = {"run": name, "finished_at": f"2026-11-29T1{len(name) % 10}:00:00+0000", "backend": "emulated",
         "qemu_version": qemu, "counts": {"passed": sum(t["outcome"] == "passed" for t in tests)},
         "tests": tests, "latencies": {}, "exit_status": 0,
         "identity": {"host": host, "inventory_sha256": inventory, "inventory_roles": roles,
                      "qemu": {"version": qemu, "build": f"QEMU emulator version {qemu}"},
                      "harness": {"version": "0.1.0", "commit": "abc"}}}
    (folder / "summary.json").write_text(json.dumps(s))
    return folder


def test_two_qemu_builds_merge_with_the_qemu_as_the_axis_and_one_junit(tmp_path, capsys):
    old = write_run(tmp_path / "a" / "run-1", "run-1", [rec("nic", "pc"), rec("nic", "q35-pciehp")])
    new = write_run(tmp_path / "b" / "run-2", "run-2",
                    [rec("nic", "pc"), rec("nic", "q35-pciehp", "failed",
                                            bundle="/x/bundles/test_nic-q35")], qemu="10.0.2")
    out = tmp_path / "merged"
    assert main(["merge", str(old), str(new), "--out", str(out)]) == 0
    assert "merged on qemu" in capsys.readouterr().out
    merged = json.loads((out / "summary.json").read_text())
    assert [r["label"] for r in merged["runs"]] == ["QEMU 7.2.22", "QEMU 10.0.2"]
    page = (out / "report.html").read_text()
    assert '<th class="group" colspan="2">QEMU 7.2.22</th>' in page
    assert page.index("QEMU 7.2.22</th>") < page.index("QEMU 10.0.2</th>")   # the runs' order
    assert "pc \u00b7 ACPI</th>" in page and "q35 \u00b7 pciehp</th>" in page
    # the failing cell links to its bundle, in the run's own folder
    assert '<a href="../b/run-2/bundles/test_nic-q35/">bundle</a>' in page
    assert page.count("<svg") >= 1 and "<script" not in page
    suites = ET.parse(out / "junit.xml").getroot().findall("testsuite")
    assert [(s.get("name"), s.get("tests"), s.get("failures")) for s in suites] == \
        [("QEMU 7.2.22", "2", "0"), ("QEMU 10.0.2", "2", "1")]
    props = {p.get("name"): p.get("value") for p in suites[1].find("properties")}
    assert props["qemu"] == "QEMU emulator version 10.0.2" and props["host"] == "vtd-1"
    failure = suites[1].findall("testcase")[1].find("failure")
    assert failure.get("message") == "AssertionError: boom"


def test_two_hosts_with_different_inventories_are_two_columns_with_their_coverage(tmp_path):
    a = write_run(tmp_path / "run-a", "run-a", [rec("nic", "q35-acpi"), rec("usb-device", "q35-xhci", device="stick")],
                  host="lab", inventory="1" * 64, roles=["nic", "usb-device"])
    b = write_run(tmp_path / "run-b", "run-b", [rec("nic", "q35-acpi"), rec("sata-controller", "q35-acpi", device="ahci")],
                  host="lab", inventory="2" * 64, roles=["nic", "sata-controller"])
    merged = merge.merge([a, b], tmp_path / "m")
    assert merged["axis"] == "host"
    cov = {r["label"]: r["coverage"] for r in merged["runs"]}
    assert cov["lab (inventory 11111111)"]["usb-device"] == "1/1 passed"
    assert cov["lab (inventory 11111111)"]["sata-controller"] == "no device in its inventory"
    assert cov["lab (inventory 22222222)"]["sata-controller"] == "1/1 passed"
    assert cov["lab (inventory 22222222)"]["cpu"] == "not run"


def test_merge_needs_two_runs(tmp_path):
    a = write_run(tmp_path / "run-a", "run-a", [rec("nic", "pc")])
    with pytest.raises(ConfigError, match="at least two runs"):
        merge.merge([a], tmp_path / "m")


def test_matrix_axes_are_machine_and_hotplug_path_then_usb_bus_and_self_tests_stay_out():
    tests = [rec("nic", "pc"), rec("nic", "q35-acpi"), rec("usb-device", "pc-uhci", device="mouse"),
             rec("usb-device", "q35-ehci", device="mouse"), rec("usb-device", "q35-xhci", device="mouse"),
             {"nodeid": "tests/unit/test_x.py::test_y", "test": "test_y", "scenario": "x",
              "platform": "", "kind": "self-test", "outcome": "passed", "duration": 0.1}]
    page = reporthtml.matrix(tests)
    assert "test_y" not in page and ">x<" not in page
    headers = [h for h in re.findall(r"<th[^>]*>([^<]*)</th>", page) if h]
    assert headers == [
        "pc \u00b7 ACPI", "q35 \u00b7 ACPI", "scenario", "no USB", "UHCI", "no USB", "EHCI", "xHCI",
        "nic", "usb-device"]
    # an old record (no axis fields) lands in the same columns
    old = {k: v for k, v in rec("nic", "q35-pciehp").items() if k not in ("machine", "hotplug_path", "usb_bus", "kind")}
    assert reporthtml.axes(old) == ("q35", "pciehp", "")
    assert reporthtml.axes({"platform": "q35-xhci"}) == ("q35", "acpi", "xhci")


def test_repeated_test_shows_its_pass_rate_in_its_cell():
    cell = reporthtml._cell([rec("nic", "pc")] * 3 + [rec("nic", "pc", "failed", bundle="/r/bundles/b1")])
    assert cell.startswith('<td class="failed">') and "e1000e 3/4 passed" in cell
    assert '<a href="bundles/b1/">bundle</a>' in cell


def test_trend_gives_pass_rate_and_latency_per_scenario_oldest_first(tmp_path, capsys):
    write_run(tmp_path / "run-2", "run-20261129-2", [rec("nic", "pc", "failed"), rec("nic", "q35-acpi")])
    write_run(tmp_path / "run-1", "run-20261128-1", [rec("nic", "pc"), rec("nic", "q35-acpi")])
    write_run(tmp_path / "unit", "run-3", [{"nodeid": "tests/unit/t.py::t", "scenario": "t",
                                            "kind": "self-test", "outcome": "passed"}])
    runs = records.load_runs(tmp_path, 10)
    assert [r["run"] for r in runs] == ["run-20261128-1", "run-20261129-2"]
    rows = records.table(runs)
    assert rows["nic"]["pass_rate"] == [100.0, 50.0]
    assert rows["nic"]["guest_visible"] == [0.02, 0.02]
    assert main(["trend", str(tmp_path), "--html", str(tmp_path / "t.html")]) == 0
    assert "<svg" in (tmp_path / "t.html").read_text()


def test_retention_keeps_the_newest_runs_and_never_the_current_or_other_folders(tmp_path):
    from harness.report import retention

    names = [f"run-20261129-0{i}0000-{100 + i}" for i in range(5)]
    for n in names:
        (tmp_path / n).mkdir()
        (tmp_path / n / "summary.json").write_text("{}")
    for other in ("latest", "merged-20261129-010000", "my-notes"):
        (tmp_path / other).mkdir()
    current = tmp_path / names[0]   # (a clock set back: the run being finished sorts oldest)
    removed = retention.prune(tmp_path, 2, current=current)
    assert sorted(p.name for p in removed) == names[1:3]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [names[0], *names[3:], "latest", "merged-20261129-010000", "my-notes"])
    assert retention.prune(tmp_path, 0) and [p.name for p in tmp_path.glob("run-*")] == [names[4]]


def test_a_run_report_shows_the_trend_of_its_folder(tmp_path):
    from harness.report import summary as report

    for i in range(3):
        write_run(tmp_path / f"run-2026112{i}", f"run-2026112{i}", [rec("nic", "pc", "failed" if i == 1 else "passed")])
    last = json.loads((tmp_path / "run-20261122" / "summary.json").read_text())
    runs = report.history(tmp_path, last)
    assert [r["run"] for r in runs] == ["run-20261120", "run-20261121", "run-20261122"]
    page = reporthtml.trend_section(runs)
    assert "Trend: the last 3 runs" in page and page.count("<svg") == 2
    assert report.history(tmp_path, {**last, "run": "run-elsewhere"}) == []


def test_retention_never_removes_a_run_still_going(tmp_path):
    """A long `make test` starts child runs in the same report folder: the parent run, oldest
    and without its summary yet, must survive their pruning; a killed one goes after a day."""
    import os
    import time

    from harness.report import retention

    going, killed = tmp_path / "run-20261129-000000-1", tmp_path / "run-20261128-000000-2"
    going.mkdir(), killed.mkdir()
    old = time.time() - retention.UNFINISHED_GRACE - 60
    os.utime(killed, (old, old))
    for i in range(3):
        (tmp_path / f"run-20261129-0{i + 1}0000-{10 + i}").mkdir()
        (tmp_path / f"run-20261129-0{i + 1}0000-{10 + i}" / "summary.json").write_text("{}")
    removed = retention.prune(tmp_path, 1)
    assert killed in removed and going not in removed and going.exists()
