"""Compare the hotplug latencies of two runs (``python -m harness compare OLD NEW``).

A latency is flagged when its median grew by more than ``threshold`` (relative) *and* by more than
``min_seconds`` (absolute, so a 2 ms figure doubling to 4 ms on a noisy host is not a regression).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .errors import ConfigError


def load_summary(path: str) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / "summary.json"
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such summary", hint="pass a run folder or its summary.json "
                          "(reports/latest, reports/run-...)") from None
    except ValueError as e:
        raise ConfigError(f"{p}: not a summary.json ({e})", hint="pass a summary written by a run") from None


def compare(old: dict, new: dict, threshold: float = 0.25, min_seconds: float = 0.05) -> list[dict]:
    rows = []
    for name in sorted(set(old["latencies"]) | set(new["latencies"])):
        a, b = old["latencies"].get(name), new["latencies"].get(name)
        row = {"name": name, "old": a and a["median"], "new": b and b["median"], "flag": ""}
        if a and b:
            grew = b["median"] - a["median"]
            if grew > min_seconds and b["median"] > a["median"] * (1 + threshold):
                row["flag"] = f"SLOWER +{grew:.3f} s ({b['median'] / a['median'] - 1:+.0%})"
        elif a and not b:
            row["flag"] = "missing in new"
        rows.append(row)
    return rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m harness compare",
                                description="flag hotplug latencies that grew between two runs")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--threshold", type=float, default=0.25, help="relative growth to flag (0.25 = 25%%)")
    p.add_argument("--min-seconds", type=float, default=0.05, help="absolute growth to flag")
    args = p.parse_args(argv)
    rows = compare(load_summary(args.old), load_summary(args.new), args.threshold, args.min_seconds)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    width = max([len(r["name"]) for r in rows] + [10])
    print(f"{'latency (median s)':<{width}}  {'old':>8}  {'new':>8}")
    for r in rows:
        print(f"{r['name']:<{width}}  {fmt(r['old']):>8}  {fmt(r['new']):>8}  {r['flag']}")
    flagged = [r for r in rows if r["flag"].startswith("SLOWER")]
    print(f"{len(flagged)} of {len(rows)} latencies grew beyond {args.threshold:.0%} and {args.min_seconds} s")
    return 1 if flagged else 0
