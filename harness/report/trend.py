"""``python -m harness trend RUNS_DIR``: per scenario, pass rate and latency over the last runs.

Reads every ``summary.json`` under RUNS_DIR (``reports/``, or a folder of nightly artifacts),
keeps the runs that ran scenario tests, oldest first, the last ``--last`` of them. Prints a table
per scenario (one column per run) and, with ``--html FILE``, a page with one picture per
scenario: its pass rate and the median of each of its latencies, run after run.
"""

from __future__ import annotations

import argparse
import html
import json
import statistics
from pathlib import Path

from harness.report import charts
from harness.report import html as rh
from harness.core.errors import ConfigError

#: The latencies a trend follows (the others are in each run's report).
MEASURES = ("guest_visible", "device_del_to_event", "interface_addressed", "disk_present")


def load_runs(root: Path, last: int) -> list[dict]:
    runs = []
    for path in sorted(root.glob("*/summary.json")):
        if path.parent.name == "latest" or path.parent.is_symlink():
            continue
        try:
            s = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if s.get("merged") or not any(rh.is_scenario(t) for t in s.get("tests", [])):
            continue
        runs.append(s)
    runs.sort(key=lambda s: (s.get("finished_at") or "", s["run"]))
    return runs[-last:]


def table(runs: list[dict]) -> dict[str, dict]:
    """{scenario: {"pass_rate": [per run], measure: [median per run]}}; None where a run did
    not run that scenario."""
    out: dict[str, dict] = {}
    scenarios = sorted({t["scenario"] for s in runs for t in s["tests"] if rh.is_scenario(t)})
    for scen in scenarios:
        rows: dict[str, list] = {"pass_rate": []}
        for s in runs:
            mine = [t for t in s["tests"] if rh.is_scenario(t) and t["scenario"] == scen
                    and t["outcome"] != "skipped"]
            rows["pass_rate"].append(round(100 * sum(t["outcome"] == "passed" for t in mine)
                                           / len(mine), 1) if mine else None)
            for m in MEASURES:
                values = [v for t in mine for k, v in (t.get("latencies") or {}).items()
                          if k.split(".", 1)[-1] == m]
                rows.setdefault(m, []).append(round(statistics.median(values), 3) if values else None)
        out[scen] = {k: v for k, v in rows.items() if any(x is not None for x in v)}
    return out


def text(runs: list[dict], rows: dict[str, dict]) -> list[str]:
    fmt = lambda v: "-" if v is None else f"{v:g}"  # noqa: E731
    lines = [f"{len(runs)} runs, oldest first: " + ", ".join(s["run"] for s in runs)]
    for scen, series in rows.items():
        lines.append(f"{scen}")
        for name, values in series.items():
            unit = "%" if name == "pass_rate" else "s"
            lines.append(f"  {name + ' (' + unit + ')':<30}" + " ".join(f"{fmt(v):>7}" for v in values))
    return lines


def render(runs: list[dict], rows: dict[str, dict]) -> str:
    names = [s["run"] for s in runs]
    parts = []
    for scen, series in rows.items():
        parts.append(f"<h2>{html.escape(scen)}</h2>" + charts.trend_lines(
            f"{scen}: pass rate (%)", names, {"pass rate": series["pass_rate"]}, "%", percent=True))
        lat = {k: v for k, v in series.items() if k != "pass_rate"}
        if lat:
            parts.append(charts.trend_lines(f"{scen}: latency medians (seconds)", names, lat, "s"))
    body = (f"<h1>hotplug-harness trend: last {len(runs)} runs</h1><p class=\"meta\">"
            + ", ".join(f"<code>{html.escape(n)}</code>" for n in names) + "</p>" + "".join(parts))
    return rh.page("hotplug-harness trend", body)


def main(argv: list[str]) -> int:
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
    print("\n".join(text(runs, rows)))
    if args.html:
        Path(args.html).write_text(render(runs, rows))
        print(f"trend pictures: {args.html}")
    return 0
