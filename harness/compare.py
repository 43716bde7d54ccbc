"""Compare two runs (``python -m harness compare OLD NEW``): outcomes, notes and latencies.

A test that passed in OLD and fails (or errs) in NEW, and a test of OLD that NEW no longer ran
(no longer covered), are regressions; a test that newly passes, and a note that changed (say,
DEVICE_DELETED now sent where it was not) are reported. A latency is flagged when its median
grew by more than ``threshold`` (relative) *and* by more than ``min_seconds`` (absolute, so a
2 ms figure doubling to 4 ms on a noisy host is not a regression). The exit status is 1 on any
regression, so a pipeline can gate a QEMU release on it.
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


_BAD = ("failed", "error")


def _by_test(summary: dict) -> dict[str, dict]:
    return {t["nodeid"]: t for t in summary.get("tests", [])}


def compare_outcomes(old: dict, new: dict) -> list[tuple[str, str, str]]:
    """(kind, test, what) for every test whose outcome or notes differ; kind is "REGRESSED",
    "NOT COVERED", "FIXED", "NEW" or "NOTES"."""
    a, b = _by_test(old), _by_test(new)
    out = []
    for nodeid in sorted(set(a) | set(b)):
        was, now = a.get(nodeid), b.get(nodeid)
        if now is None:
            if was["outcome"] == "passed":
                out.append(("NOT COVERED", nodeid, "passed in OLD, not run in NEW"))
            continue
        if was is None:
            out.append(("NEW", nodeid, f"{now['outcome']} (not in OLD)"))
            continue
        if was["outcome"] not in _BAD and now["outcome"] in _BAD:
            reason = (now.get("reason") or "").splitlines()[0][:160] if now.get("reason") else ""
            out.append(("REGRESSED", nodeid, f"{was['outcome']} -> {now['outcome']}: {reason}"))
        elif was["outcome"] in _BAD and now["outcome"] == "passed":
            out.append(("FIXED", nodeid, f"{was['outcome']} -> passed"))
        elif was["outcome"] == "passed" and now["outcome"] == "skipped":
            out.append(("NOT COVERED", nodeid, f"passed -> skipped: {now.get('reason', '')[:160]}"))
        gone = [n for n in was.get("notes", []) if n not in now.get("notes", [])]
        came = [n for n in now.get("notes", []) if n not in was.get("notes", [])]
        if (gone or came) and now["outcome"] == was["outcome"]:
            out.append(("NOTES", nodeid, "; ".join([f"- {n}" for n in gone] + [f"+ {n}" for n in came])))
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m harness compare",
                                description="what changed between two runs: tests that regressed "
                                            "or are no longer covered, notes, latencies that "
                                            "grew; exit 1 on a regression")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--threshold", type=float, default=0.25, help="relative growth to flag (0.25 = 25%%)")
    p.add_argument("--min-seconds", type=float, default=0.05, help="absolute growth to flag")
    args = p.parse_args(argv)
    old, new = load_summary(args.old), load_summary(args.new)
    changes = compare_outcomes(old, new)
    for kind, nodeid, what in changes:
        print(f"{kind:<11}  {nodeid}: {what}")
    regressed = [c for c in changes if c[0] in ("REGRESSED", "NOT COVERED")]
    print(f"{len(regressed)} regression(s) of outcome or coverage"
          + (f", {len(changes) - len(regressed)} other change(s)" if len(changes) > len(regressed) else ""))
    rows = compare(old, new, args.threshold, args.min_seconds)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    width = max([len(r["name"]) for r in rows] + [10])
    print(f"{'latency (median s)':<{width}}  {'old':>8}  {'new':>8}")
    for r in rows:
        print(f"{r['name']:<{width}}  {fmt(r['old']):>8}  {fmt(r['new']):>8}  {r['flag']}")
    flagged = [r for r in rows if r["flag"].startswith("SLOWER")]
    print(f"{len(flagged)} of {len(rows)} latencies grew beyond {args.threshold:.0%} and {args.min_seconds} s")
    return 1 if flagged or regressed else 0
