import json

import pytest

from harness.report import compare
from harness.cli import main
from harness.core.errors import ConfigError


def summary(**medians):
    return {"latencies": {k: {"n": 3, "median": v, "max": v} for k, v in medians.items()}}


def test_flags_only_real_growth():
    rows = compare.compare(summary(a=0.2, b=0.002, c=1.0, gone=0.1), summary(a=0.4, b=0.006, c=1.1))
    flags = {r["name"]: r["flag"] for r in rows}
    assert flags["a"].startswith("SLOWER +0.200 s")
    assert flags["b"] == ""            # tripled, but by 4 ms: noise
    assert flags["c"] == ""            # +10%: under the threshold
    assert flags["gone"] == "missing in new"


def test_command_exit_status(tmp_path, capsys):
    (tmp_path / "old").mkdir()
    (tmp_path / "old/summary.json").write_text(json.dumps(summary(nic=0.2)))
    (tmp_path / "new.json").write_text(json.dumps(summary(nic=0.5)))
    assert main(["compare", str(tmp_path / "old"), str(tmp_path / "new.json")]) == 1
    assert "SLOWER" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "old"), str(tmp_path / "old")]) == 0


def test_missing_summary_says_what_to_pass(tmp_path):
    with pytest.raises(ConfigError, match="pass a run folder"):
        compare.load_summary(str(tmp_path / "nope"))


def run(*tests):
    return {"latencies": {}, "tests": [dict(nodeid=n, outcome=o, reason=r, notes=list(notes))
                                       for n, o, r, notes in tests]}


def test_outcomes_notes_and_coverage_are_compared_and_gate(tmp_path, capsys):
    old = run(("t::a", "passed", "", ["DEVICE_DELETED sent"]), ("t::b", "passed", "", []),
              ("t::c", "failed", "boom", []), ("t::d", "passed", "", []))
    new = run(("t::a", "passed", "", []), ("t::b", "failed", "AssertionError: gone\nmore", []),
              ("t::c", "passed", "", []), ("t::e", "passed", "", []))
    changes = {(k, n) for k, n, _ in compare.compare_outcomes(old, new)}
    assert changes == {("NOTES", "t::a"), ("REGRESSED", "t::b"), ("FIXED", "t::c"),
                       ("NOT COVERED", "t::d"), ("NEW", "t::e")}
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    assert main(["compare", str(tmp_path / "old.json"), str(tmp_path / "new.json")]) == 1
    out = capsys.readouterr().out
    assert "REGRESSED    t::b: passed -> failed: AssertionError: gone" in out
    assert "2 regression(s) of outcome, coverage or pass rate, 3 other change(s)" in out
    assert main(["compare", str(tmp_path / "old.json"), str(tmp_path / "old.json")]) == 0


def test_a_pass_rate_that_fell_gates_and_the_threshold_is_settable(tmp_path, capsys):
    """--repeat (or merged runs) gives a test several records: 18/20 -> 12/20 is a regression
    even though it failed in both runs."""
    old = run(*[("t::flaky", "passed", "", [])] * 18, *[("t::flaky", "failed", "timeout", [])] * 2)
    new = run(*[("t::flaky", "passed", "", [])] * 12, *[("t::flaky", "failed", "timeout", [])] * 8)
    [(kind, test, what)] = compare.compare_outcomes(old, new)
    assert (kind, test) == ("PASS RATE", "t::flaky")
    assert what.startswith("18/20 -> 12/20 passed (-30%)")
    assert compare.compare_outcomes(old, new, pass_rate_drop=0.5) == []
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    assert main(["compare", str(tmp_path / "old.json"), str(tmp_path / "new.json")]) == 1
    assert main(["compare", str(tmp_path / "old.json"), str(tmp_path / "new.json"),
                 "--pass-rate-drop", "0.5"]) == 0
    all_passed = run(*[("t::flaky", "passed", "", [])] * 20)
    [(kind, _, what)] = compare.compare_outcomes(all_passed, new)
    assert (kind, what) == ("REGRESSED", "20/20 -> 12/20: timeout")


def test_latency_gate_can_be_turned_off(tmp_path):
    (tmp_path / "old.json").write_text(json.dumps(summary(nic=0.2)))
    (tmp_path / "new.json").write_text(json.dumps(summary(nic=0.5)))
    assert main(["compare", str(tmp_path / "old.json"), str(tmp_path / "new.json"),
                 "--no-latency-gate"]) == 0


def test_merged_runs_compare_per_host_but_not_per_qemu_build():
    t = {"nodeid": "t::a", "outcome": "passed", "notes": []}
    by_host = {"merged": True, "axis": "host", "tests": [
        {**t, "axis_value": "vtd-1"}, {**t, "axis_value": "vtd-2", "outcome": "failed", "reason": "x"}]}
    by_host_old = {**by_host, "tests": [{**t, "axis_value": "vtd-1"}, {**t, "axis_value": "vtd-2"}]}
    assert [(k, n) for k, n, _ in compare.compare_outcomes(by_host_old, by_host)] == \
        [("REGRESSED", "vtd-2 :: t::a")]
    by_qemu = {"merged": True, "axis": "qemu", "tests": [{**t, "axis_value": "QEMU 7.2"},
                                                        {**t, "axis_value": "QEMU 10.0"}]}
    assert compare._by_test(by_qemu) == {"t::a": {"outcome": "passed", "passed": 2, "ran": 2,
                                                  "reason": "", "notes": [], "skipped": 0}}


def test_a_note_that_differs_only_in_a_measured_time_is_not_a_change():
    old = run(("t::a", "passed", "", ["unplug completed in 2.26 s (event=False)", "firmware: SeaBIOS 1.16.2"]))
    new = run(("t::a", "passed", "", ["unplug completed in 2.27 s (event=False)", "firmware: SeaBIOS 1.16.3"]))
    assert compare.compare_outcomes(old, new) == [
        ("NOTES", "t::a", "- firmware: SeaBIOS 1.16.2; + firmware: SeaBIOS 1.16.3")]
