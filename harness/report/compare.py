"""Compare two runs (``python -m harness compare OLD NEW``): outcomes, notes and latencies.

A test that passed in OLD and fails (or errs) in NEW, and a test of OLD that NEW no longer ran
(no longer covered), are regressions; a test that newly passes, and a note that changed (say,
DEVICE_DELETED now sent where it was not) are reported. A latency is flagged when its median
grew by more than ``threshold`` (relative) *and* by more than ``min_seconds`` (absolute, so a
2 ms figure doubling to 4 ms on a noisy host is not a regression). The exit status is 1 on any
regression, so a pipeline can gate a QEMU release on it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from harness.core.errors import ConfigError
from harness.core.paths import read_plain_file
from harness.report.records import latency_stats


def load_summary(path: str) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / "summary.json"
    try:
        # As root, in a report folder others share, another user's summary.json may be a link
        # (to a file only root may read, or /dev/watchdog, which arms on open) or a FIFO.
        return json.loads(read_plain_file(p) if os.geteuid() == 0 else p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such summary", hint="pass a run folder or its summary.json "
                          "(reports/latest, reports/run-...)") from None
    except OSError as e:
        if os.geteuid() != 0:
            raise
        raise ConfigError(f"{p}: refused: {e.strerror} (a link or not a regular file)",
                          hint="as root, a summary is read only as a regular file, never through "
                               "a link: pass the run folder itself, or run merge/compare as "
                               "the user who owns the runs") from None
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
#: What gates: a change of these kinds makes ``compare`` exit 1.
GATING = ("REGRESSED", "NOT COVERED", "PASS RATE")


def _key(summary: dict, t: dict) -> str:
    """A test's identity across runs: its node id, and in a merged summary whose axis is a
    host, guest or backend, that axis value too (a QEMU build is what a release changes)."""
    axis = summary.get("axis") or ""
    if summary.get("merged") and axis and not {"qemu", "run"} & set(axis.split("+")):
        return f"{t['axis_value']} :: {t['nodeid']}"
    return t["nodeid"]


def _by_test(summary: dict) -> dict[str, dict]:
    """Per test: its worst outcome, how often it ran and passed (--repeat, merged runs), the
    first failure's reason and its notes."""
    out: dict[str, dict] = {}
    for t in summary.get("tests", []):
        agg = out.setdefault(_key(summary, t), {"outcome": "passed", "passed": 0, "ran": 0,
                                                "reason": "", "notes": [], "skipped": 0})
        if t["outcome"] == "skipped":
            agg["skipped"] += 1
            agg["skip_reason"] = t.get("reason") or ""
        else:
            agg["ran"] += 1
            agg["passed"] += t["outcome"] in ("passed", "xfailed")
        if _rank(t["outcome"]) < _rank(agg["outcome"]) or agg["ran"] + agg["skipped"] == 1:
            agg["outcome"] = t["outcome"]
            if t["outcome"] in _BAD:
                agg["reason"] = (t.get("reason") or "").splitlines()[0][:160] if t.get("reason") else ""
        agg["notes"] += [n for n in t.get("notes", []) if n not in agg["notes"]]
    return out


#: Worst first: a test that ran several times shows its worst outcome.
OUTCOME_RANKS = ("failed", "error", "xpassed", "passed", "xfailed", "skipped")


def _rank(outcome: str) -> int:
    return OUTCOME_RANKS.index(outcome) if outcome in OUTCOME_RANKS else len(OUTCOME_RANKS)


def _rate(agg: dict) -> str:
    return f"{agg['passed']}/{agg['ran']}" if agg["ran"] > 1 else agg["outcome"]


def _outcome_change(was: dict, now: dict, pass_rate_drop: float) -> tuple[str, str] | None:
    bad_was, bad_now = was["outcome"] in _BAD, now["outcome"] in _BAD
    if not now["ran"]:
        if was["passed"]:
            return "NOT COVERED", f"passed -> skipped: {now.get('skip_reason', '')[:160]}"
        return None
    if not bad_was and bad_now:
        return "REGRESSED", f"{_rate(was)} -> {_rate(now)}: {now['reason']}"
    if bad_was and not bad_now and now["passed"]:
        return "FIXED", f"{_rate(was)} -> {_rate(now)}"
    if bad_was and bad_now and was["ran"] and now["ran"]:
        drop = was["passed"] / was["ran"] - now["passed"] / now["ran"]
        if drop > pass_rate_drop:
            return "PASS RATE", f"{_rate(was)} -> {_rate(now)} passed ({-drop:+.0%}): {now['reason']}"
    return None


_SECONDS = re.compile(r"\b\d+(?:\.\d+)? s\b")


def _gist(note: str) -> str:
    """A note without its measured times: "unplug completed in 2.26 s" and "... in 2.27 s" are
    the same note; "DEVICE_DELETED sent" and "not sent", or a firmware version, are not."""
    return _SECONDS.sub("<t> s", note)


def compare_outcomes(old: dict, new: dict, pass_rate_drop: float = 0.0) -> list[tuple[str, str, str]]:
    """(kind, test, what) for every test whose outcome, pass rate or notes differ; kind is
    "REGRESSED", "NOT COVERED", "PASS RATE" (it failed in both, more often now), "FIXED",
    "NEW" or "NOTES"."""
    a, b = _by_test(old), _by_test(new)
    out = []
    for key in sorted(set(a) | set(b)):
        was, now = a.get(key), b.get(key)
        if now is None:
            if was["passed"]:
                out.append(("NOT COVERED", key, "passed in OLD, not run in NEW"))
            continue
        if was is None:
            out.append(("NEW", key, f"{_rate(now)} (not in OLD)"))
            continue
        change = _outcome_change(was, now, pass_rate_drop)
        if change:
            out.append((change[0], key, change[1]))
        gone = [n for n in was["notes"] if _gist(n) not in {_gist(m) for m in now["notes"]}]
        came = [n for n in now["notes"] if _gist(n) not in {_gist(m) for m in was["notes"]}]
        if (gone or came) and now["outcome"] == was["outcome"]:
            out.append(("NOTES", key, "; ".join([f"- {n}" for n in gone] + [f"+ {n}" for n in came])))
    return out


def latencies(summary: dict) -> dict:
    """A summary's latency distributions (a merged summary's over all its runs)."""
    if summary.get("merged"):
        return latency_stats(summary["tests"])
    return summary.get("latencies", {})

