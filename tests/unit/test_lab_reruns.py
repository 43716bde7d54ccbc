"""harness.lab.reruns: a wedged lab host (exit 3) is restarted for the tests left, at most
``runs`` lab runs; finished tests are not run again; a failure anywhere fails the whole. The
"pytest" here is a real process playing the outer lab run: it writes each test's result as the
run inside does, and exits as the script of its run says."""

import json
import sys
from pathlib import Path

from harness.lab import reruns

FAKE = r'''
import json, os, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from harness.report.records import write_result
args = sys.argv[1:]
report = Path(args[args.index("--report-dir") + 1])
deselected = {{args[i + 1] for i, a in enumerate(args) if a == "--deselect"}}
script = Path({script!r})
plan = json.loads(script.read_text())
step = plan.pop(0)
script.write_text(json.dumps(plan))
with open({calls!r}, "a") as f:
    f.write(json.dumps(sorted(deselected)) + "\n")
run_dir = report / f"run-20261205-000000-{{os.getpid()}}"
for nodeid, outcome in step["results"]:
    assert nodeid not in deselected, nodeid
    write_result(run_dir, {{"nodeid": nodeid, "outcome": outcome}})
if step.get("stopped"):   # the outer run's mark of a lab host that hung or stopped
    (run_dir / "lab").mkdir(parents=True, exist_ok=True)
    (run_dir / "lab" / "stopped").write_text("wedged\n")
sys.exit(step["exit"])
'''

TESTS = ["t.py::a", "t.py::b", "t.py::c"]


def fake_pytest(tmp_path, plan):
    script, calls = tmp_path / "plan.json", tmp_path / "calls.jsonl"
    script.write_text(json.dumps(plan))
    fake = tmp_path / "fake_pytest.py"
    root = str(Path(reruns.__file__).parents[2])
    fake.write_text(FAKE.format(root=root, script=str(script), calls=str(calls)))
    return [sys.executable, str(fake)], calls


def test_wedged_lab_host_is_restarted_for_the_tests_left(tmp_path):
    pytest, calls = fake_pytest(tmp_path, [
        {"results": [["t.py::a", "passed"]], "exit": 3, "stopped": True},
        {"results": [["t.py::b", "passed"], ["t.py::c", "passed"]], "exit": 0}])
    said = []
    status = reruns.run(pytest, TESTS, tmp_path / "reports", runs=3, echo=said.append)
    assert status == 0
    assert [json.loads(line) for line in calls.read_text().splitlines()] == [[], ["t.py::a"]]
    assert "1 restart(s) after a wedged lab host" in said[-1]
    [summary] = (tmp_path / "reports").glob("run-*/lab-runs.json")
    assert json.loads(summary.read_text())["restarts"] == 1


def test_a_failure_before_the_wedge_fails_the_whole(tmp_path):
    pytest, _ = fake_pytest(tmp_path, [
        {"results": [["t.py::a", "failed"]], "exit": 3, "stopped": True},
        {"results": [["t.py::b", "passed"], ["t.py::c", "passed"]], "exit": 0}])
    said = []
    assert reruns.run(pytest, TESTS, tmp_path / "reports", runs=3, echo=said.append) == 1
    assert "failed: t.py::a" in said[-1]


def test_at_most_runs_lab_runs_and_a_last_wedge_is_final(tmp_path):
    pytest, calls = fake_pytest(tmp_path, [{"results": [], "exit": 3, "stopped": True}] * 3)
    assert reruns.run(pytest, TESTS, tmp_path / "reports", runs=2, echo=lambda s: None) == 3
    assert len(calls.read_text().splitlines()) == 2


def test_any_other_failure_is_not_restarted(tmp_path):
    pytest, calls = fake_pytest(tmp_path, [{"results": [["t.py::a", "passed"]], "exit": 2},
                                           {"results": [], "exit": 0}])
    assert reruns.run(pytest, TESTS, tmp_path / "reports", runs=3, echo=lambda s: None) == 2
    assert len(calls.read_text().splitlines()) == 1


def test_exit_3_without_the_labs_mark_is_pytests_internal_error_and_final(tmp_path):
    """pytest exits 3 on an internal error too: without the outer run's mark that the lab host
    stopped, another lab run would only repeat it."""
    pytest, calls = fake_pytest(tmp_path, [{"results": [["t.py::a", "passed"]], "exit": 3},
                                           {"results": [], "exit": 0}])
    assert reruns.run(pytest, TESTS, tmp_path / "reports", runs=3, echo=lambda s: None) == 3
    assert len(calls.read_text().splitlines()) == 1


def test_pytests_own_report_dir_is_where_the_run_folders_are_looked_for():
    """`lab-runs -- ... --report-dir DIR` (as one would give pytest) used to leave lab-runs
    looking under reports/ for a run folder pytest made in DIR: it said "0 tests finished"
    and could not have told a wedged lab host."""
    args = ["t.py::a", "--report-dir", "/x/reports", "-k", "nic", "--report-dir=/y"]
    assert reruns.take_report_dir(args) == ("/y", ["t.py::a", "-k", "nic"])
    assert reruns.take_report_dir(["t.py::a"]) == (None, ["t.py::a"])
