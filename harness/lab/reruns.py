"""``python -m harness lab-runs``: a lab run that survives a wedged lab host.

Nested virtualisation on TCG sometimes wedges the lab host (L1) itself: the outer run then
exits 3 (docs/lab.md) before its tests end. This runs ``pytest --backend lab`` with the given
arguments and, after such an exit, restarts the lab with the tests that did not finish (each
finished test is ``--deselect``-ed, whatever its outcome), up to ``--runs`` lab runs in all.
A test that failed fails the whole, whichever run it was in; exit 3 again on the last run is
final. What happened is printed and written to ``lab-runs.json`` in the last run's folder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from harness.core.paths import UnsafePathError, check_private, write_atomic
from harness.lab.outer import STOPPED
from harness.report.records import load_results

#: The outer run's status when the lab host stopped before its tests ended.
WEDGED = 3
FAILED = ("failed", "error")


def _run_dir(report_root: Path, pid: int) -> Path | None:
    """The run folder the outer pytest with this PID made (``run-<time>-<pid>``): the newest
    one that is ours and private (:func:`check_private`). The PID is seen by all while the run
    lasts: in a report folder others can write, a look-alike folder (or a link) another user
    made is not the run's, and what is read from it or written into it is theirs."""
    for found in sorted(report_root.glob(f"run-*-{pid}"), reverse=True):
        try:
            return check_private(found)
        except (UnsafePathError, OSError):
            continue
    return None


def _one_run(pytest: list[str], args: list[str], finished: dict[str, str],
             report_root: Path) -> tuple[int, Path | None, float]:
    """One lab run of ``args`` minus the tests already ``finished``; its status, run folder
    and wall seconds. The tests it finished are added to ``finished``."""
    deselect = [a for nodeid in finished for a in ("--deselect", nodeid)]
    t0 = time.monotonic()
    proc = subprocess.Popen([*pytest, "--backend", "lab", "--report-dir", str(report_root),
                             *args, *deselect])
    status = proc.wait()
    run_dir = _run_dir(report_root, proc.pid)
    if run_dir is not None and (run_dir / "results").is_dir():
        for r in load_results(run_dir):
            finished.setdefault(r["nodeid"], r["outcome"])
    return status, run_dir, round(time.monotonic() - t0, 1)


def _lab_stopped(status: int, run_dir: Path | None) -> bool:
    """Exit 3 with the lab's mark (harness.lab.outer.STOPPED): the lab host hung or stopped.
    Exit 3 without it is pytest's internal error, which another run would only repeat."""
    return status == WEDGED and run_dir is not None and (run_dir / "lab" / STOPPED).exists()


def run(pytest: list[str], args: list[str], report_root: Path, runs: int, echo=print) -> int:
    """Lab runs of ``args`` until one ends without a wedged lab host (or ``runs`` did)."""
    finished: dict[str, str] = {}
    history = []
    for attempt in range(1, runs + 1):
        status, run_dir, seconds = _one_run(pytest, args, finished, report_root)
        history.append({"run": attempt, "status": status, "seconds": seconds,
                        "run_dir": str(run_dir) if run_dir else None,
                        "finished_so_far": len(finished)})
        if not _lab_stopped(status, run_dir) or attempt == runs:
            break
        echo(f"hotplug-harness: lab-runs: the lab host hung or stopped before its tests ended "
             f"(exit 3, run {attempt} of at most {runs}, {len(finished)} tests finished): "
             f"restarting it for the tests left (docs/lab.md)")
    failed = sorted(n for n, outcome in finished.items() if outcome in FAILED)
    final = status if status == WEDGED else (1 if failed and status == 0 else status)
    summary = {"runs": history, "restarts": len(history) - 1, "tests_finished": len(finished),
               "failed": failed, "exit_status": final,
               "wall_seconds": round(sum(h["seconds"] for h in history), 1)}
    if run_dir is not None:
        write_atomic(run_dir / "lab-runs.json", (json.dumps(summary, indent=2) + "\n").encode(),
                     mode=0o644)
    echo(describe(summary))
    return final


def describe(summary: dict) -> str:
    """One paragraph for the terminal: how many lab runs, which restarted, the outcome."""
    runs = summary["runs"]
    lines = [f"hotplug-harness: lab-runs: {summary['tests_finished']} tests finished in "
             f"{len(runs)} lab run(s), {summary['wall_seconds']:g} s; "
             + (f"{summary['restarts']} restart(s) after a wedged lab host"
                if summary["restarts"] else "no restart")
             + (f"; failed: {', '.join(summary['failed'])}" if summary["failed"] else "")]
    lines += [f"  run {h['run']}: exit {h['status']} after {h['seconds']:g} s ({h['run_dir']})"
              for h in runs]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m harness lab-runs",
        description="pytest --backend lab ARGS, restarting a wedged lab host for the tests left")
    p.add_argument("--runs", type=int, default=3, help="lab runs at most (default 3)")
    p.add_argument("--report-dir", default="reports")
    p.add_argument("args", nargs=argparse.REMAINDER, help="pytest's arguments (after --)")
    opt = p.parse_args(argv)
    args = opt.args[1:] if opt.args[:1] == ["--"] else opt.args
    given, args = take_report_dir(args)
    return run([sys.executable, "-m", "pytest"], args, Path(given or opt.report_dir).resolve(),
               max(1, opt.runs))


def take_report_dir(args: list[str]) -> tuple[str | None, list[str]]:
    """pytest's own ``--report-dir`` among its arguments, taken out of them: the run folders
    are looked for there. (Left in, pytest would write them there while lab-runs looked
    under its default, found no run folder, and could neither tell a wedged lab host nor
    skip the finished tests.)"""
    given, rest, it = None, [], iter(args)
    for a in it:
        if a == "--report-dir":
            given = next(it, None)
        elif a.startswith("--report-dir="):
            given = a.split("=", 1)[1]
        else:
            rest.append(a)
    return given, rest
