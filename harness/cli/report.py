"""``python -m harness merge|compare|trend|prune``: the report commands, on run folders after
the fact (harness.report does the work; this module parses the command lines and prints)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from harness.core.errors import ConfigError
from harness.core.paths import check_ancestors, write_atomic
from harness.core.text import shown
from harness.report import compare, merge, retention, trend
from harness.report.records import load_runs, table


def _compare_arguments(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m harness compare",
                                description="what changed between two runs (run folders, merged "
                                            "folders or summary.json): tests that regressed, are "
                                            "no longer covered or pass less often, notes, "
                                            "latencies that grew; exit 1 on a regression")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--threshold", type=float, default=0.25,
                   help="a latency median's relative growth that gates (0.25 = 25%%)")
    p.add_argument("--min-seconds", type=float, default=0.05,
                   help="and its absolute growth that gates (seconds)")
    p.add_argument("--pass-rate-drop", type=float, default=0.0, metavar="FRACTION",
                   help="a test that failed in both runs gates when its pass rate fell by more "
                        "than this (0.1 = 10 points; default 0: any drop)")
    p.add_argument("--no-latency-gate", action="store_true",
                   help="print latencies that grew but do not fail on them")
    return p.parse_args(argv)


def compare_main(argv: list[str]) -> int:
    args = _compare_arguments(argv)
    old, new = compare.load_summary(args.old), compare.load_summary(args.new)
    changes = compare.compare_outcomes(old, new, args.pass_rate_drop)
    for kind, nodeid, what in changes:
        print(f"{kind:<11}  {nodeid}: {what}")
    regressed = [c for c in changes if c[0] in compare.GATING]
    print(f"{len(regressed)} regression(s) of outcome, coverage or pass rate"
          + (f", {len(changes) - len(regressed)} other change(s)" if len(changes) > len(regressed) else ""))
    rows = compare.compare({"latencies": compare.latencies(old)}, {"latencies": compare.latencies(new)},
                   args.threshold, args.min_seconds)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    width = max([len(r["name"]) for r in rows] + [10])
    print(f"{'latency (median s)':<{width}}  {'old':>8}  {'new':>8}")
    for r in rows:
        print(f"{r['name']:<{width}}  {fmt(r['old']):>8}  {fmt(r['new']):>8}  {r['flag']}")
    flagged = [r for r in rows if r["flag"].startswith("SLOWER")]
    print(f"{len(flagged)} of {len(rows)} latencies grew beyond {args.threshold:.0%} and "
          f"{args.min_seconds} s" + (" (not gating: --no-latency-gate)" if args.no_latency_gate else ""))
    return 1 if regressed or (flagged and not args.no_latency_gate) else 0


def merge_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m harness merge",
                                description="one qualification report (HTML, summary.json, "
                                            "JUnit) from several runs: hosts, QEMU builds, guests")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders or their summary.json")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where to write (default reports/merged-<time>)")
    p.add_argument("--axis", choices=("auto", *merge.AXES), default="auto",
                   help="what the runs differ in (auto: whatever differs)")
    args = p.parse_args(argv)
    out = Path(args.out or f"reports/merged-{time.strftime('%Y%m%d-%H%M%S')}")
    merged = merge.merge([Path(r) for r in args.runs], out, args.axis)
    for r in merged["runs"]:
        c = ", ".join(f"{n} {o}" for o, n in r["counts"].items() if n)
        print(f"{r['label']}: {r['run']}: {c}")
    print(f"merged on {merged['axis']}: {out / 'report.html'}\n"
          f"          {out / 'summary.json'}, {out / 'junit.xml'}")
    return 0


def trend_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m harness trend",
                                description="per scenario, pass rate and latency medians over "
                                            "the last runs under RUNS_DIR")
    p.add_argument("runs_dir", metavar="RUNS_DIR", help="a folder of run folders (reports/)")
    p.add_argument("--last", type=int, default=20, metavar="N", help="the last N runs (20)")
    p.add_argument("--html", default=None, metavar="FILE", help="also write a page of pictures")
    args = p.parse_args(argv)
    root = Path(args.runs_dir)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a folder", hint="pass the folder the runs are in (reports/)")
    runs = load_runs(root, args.last)
    if not runs:
        raise ConfigError(f"{root}: no run with scenario tests in it",
                          hint="a run folder holds summary.json; run the scenarios first (make qualify)")
    rows = table(runs)
    print("\n".join(trend.text(runs, rows)))
    if args.html:
        _write_page(Path(args.html), trend.render(runs, rows))
        print(f"trend pictures: {args.html}")
    return 0


def _write_page(path: Path, page: str) -> None:
    page = shown(page)  # (a run's messages may carry a name, not UTF-8, another user chose)
    if os.geteuid() != 0:
        path.write_text(page, encoding="utf-8")
        return
    # As root: only in folders nobody else can write, and a link there is replaced, never
    # followed (another user's link would choose which of root's files is written).
    check_ancestors(path)
    write_atomic(path, page.encode(), 0o644)


def prune_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m harness prune",
                                description="remove all but the newest run folders of a report folder")
    p.add_argument("report_dir", nargs="?", default="reports")
    p.add_argument("--keep", type=int, default=1, metavar="N", help="how many of the newest to keep (1)")
    args = p.parse_args(argv)
    if not Path(args.report_dir).is_dir():
        return 0
    removed = retention.prune(Path(args.report_dir), args.keep)
    print(f"removed {len(removed)} run folder(s) from {args.report_dir}, kept the newest {max(args.keep, 1)}")
    return 0
