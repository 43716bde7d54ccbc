"""``python -m harness trend RUNS_DIR``: per scenario, pass rate and latency over the last runs.

Reads every ``summary.json`` under RUNS_DIR (``reports/``, or a folder of nightly artifacts),
keeps the runs that ran scenario tests, oldest first, the last ``--last`` of them. Prints a table
per scenario (one column per run) and, with ``--html FILE``, a page with one picture per
scenario: its pass rate and the median of each of its latencies, run after run.
"""

from __future__ import annotations

import html

from harness.report import charts
from harness.report import html as rh

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

