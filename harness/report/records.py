"""A run's records: one JSON file per test in ``results/``, and what is computed from them
(outcomes, pass rates, latency statistics, guest boots, passthrough counts), and the history of
runs in a report folder. Pure data: every page and summary is drawn from these."""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from pathlib import Path

from harness.core.paths import read_plain_file


def outcome_of(reports: dict) -> tuple[str, str]:
    """(outcome, reason) from a test's setup/call/teardown pytest reports."""
    for when in ("setup", "call", "teardown"):
        rep = reports.get(when)
        if rep is None:
            continue
        if hasattr(rep, "wasxfail"):
            return ("xfailed" if rep.skipped else "xpassed"), str(rep.wasxfail)
        if rep.skipped:
            reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
            return "skipped", reason.removeprefix("Skipped: ")
        if rep.failed:
            crash = getattr(rep.longrepr, "reprcrash", None)
            message = crash.message if crash is not None else str(rep.longrepr)
            return ("failed" if when == "call" else "error"), message[:2000]
    return "passed", ""


def write_result(run_dir: Path, record: dict) -> None:
    out = run_dir / "results"
    out.mkdir(parents=True, exist_ok=True)
    key = record["nodeid"] + (f"#{record['repetition']}" if record.get("repetition") else "")
    name = hashlib.sha1(key.encode()).hexdigest()[:16] + ".json"
    (out / name).write_text(json.dumps(record, indent=2, default=str) + "\n")


def load_results(run_dir: Path) -> list[dict]:
    return sorted((json.loads(p.read_text()) for p in (run_dir / "results").glob("*.json")),
                  key=lambda r: (r["nodeid"], r.get("repetition") or 0))


def pass_rates(results: list[dict]) -> dict[str, dict]:
    """Per test that ran more than once (--repeat): how often it ran and passed."""
    runs: dict[str, list[dict]] = {}
    for r in results:
        if r["outcome"] != "skipped":
            runs.setdefault(r["nodeid"], []).append(r)
    return {n: {"ran": len(rs), "passed": sum(r["outcome"] in ("passed", "xfailed") for r in rs),
                "rate": round(sum(r["outcome"] in ("passed", "xfailed") for r in rs) / len(rs), 4)}
            for n, rs in runs.items() if len(rs) > 1}


def latency_group(r: dict) -> str:
    """Whose latencies a test's are pooled with: its scenario (``nic``), or, for a scenario
    made of several kinds of test (``lifecycle``), the scenario and the test's cell
    (``lifecycle.storm_fills_every_slot``): a storm's 30 NICs are not an unplug-at-once."""
    return f"{r['scenario']}.{r['cell']}" if r.get("cell") else r["scenario"]


def latency_key(r: dict, name: str) -> str:
    """A test's latency ``name`` (``nic0.device_del_to_event``) as the run pools it: the
    device id folded out, the test's :func:`latency_group` in its place."""
    return f"{latency_group(r)}.{name.split('.', 1)[-1]}"


def latency_stats(results: list[dict]) -> dict[str, dict]:
    """Per latency (:func:`latency_key`): its distribution over the run's tests."""
    values: dict[str, list[float]] = {}
    for r in results:
        for name, v in (r.get("latencies") or {}).items():
            values.setdefault(latency_key(r, name), []).append(v)
    return {k: distribution(v) for k, v in sorted(values.items())}


def distribution(values: list[float]) -> dict:
    """n, median, p95 (nearest rank) and max of a latency's values."""
    ordered = sorted(values)
    p95 = ordered[max(0, -(-95 * len(ordered) // 100) - 1)]
    return {"n": len(ordered), "median": round(statistics.median(ordered), 4),
            "p95": round(p95, 4), "max": round(ordered[-1], 4)}


def guest_boots(results: list[dict], started: str = "booted") -> dict[str, float]:
    """Each guest's time from QEMU's start to ready, once per guest (a reused guest is in every
    test it served): of the guests ``started`` so, ``"booted"`` or ``"restored"`` from a saved
    state (harness.snapshot; records older than it say neither: booted)."""
    return {g["name"]: g["boot_seconds"] for r in results for g in r.get("guests", [])
            if g.get("boot_seconds") and g.get("after_test")
            and (g.get("started") or "booted") == started}


#: Outcomes of a test whose body ran: a skipped test (or one whose set-up failed) passed no
#: device through, whatever its device was.
_RAN = ("passed", "failed", "xfailed", "xpassed")


#: The label of a test of real passthrough's failure paths (a missing device, a group not
#: viable): it passes no host device through, so it never counts as passthrough.
FAILURE_PATH = "vfio-pci (failure path)"


def passthrough_counts(results: list[dict]) -> dict[str, int]:
    """How many tests ran through each real passthrough path (vfio-pci, usb-host); skipped
    tests, set-up errors and the failure-path tests (:data:`FAILURE_PATH`) never count."""
    counts: dict[str, int] = {}
    for r in results:
        kind = (r.get("passthrough") or "").split(" ")[0]
        if kind and r.get("outcome") in _RAN and r.get("passthrough") != FAILURE_PATH:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def failure_path_count(results: list[dict]) -> int:
    """How many tests of real passthrough's failure paths ran (they touch no host device)."""
    return sum(r.get("passthrough") == FAILURE_PATH and r.get("outcome") in _RAN
               for r in results)


def is_scenario(r: dict) -> bool:
    """A scenario test (a role on a platform), not one of the harness's own tests."""
    return r.get("kind", "scenario" if r.get("platform") else "self-test") == "scenario"


#: The latencies a trend follows (the others are in each run's report).
MEASURES = ("guest_visible", "device_del_to_event", "interface_addressed", "disk_present")


def load_runs(root: Path, last: int, owner: int | None = None) -> list[dict]:
    """The last ``last`` runs of the report folder ``root`` (their ``summary.json``), oldest
    first; with ``owner``, only the run folders that user owns (a run's own report: in a shared
    report folder, another user's files are not read into it)."""
    runs = []
    for path in sorted(root.glob("*/summary.json")):
        if path.parent.name == "latest" or path.parent.is_symlink():
            continue
        if owner is not None and _owner(path.parent) != owner:
            continue
        try:  # (a report folder may be shared: another user's file may be a FIFO or a link)
            s = json.loads(read_plain_file(path))
        except (OSError, ValueError):
            continue
        if not isinstance(s, dict) or not isinstance(s.get("tests"), list) or \
                not isinstance(s.get("run"), str):
            continue
        if s.get("merged") or not any(is_scenario(t) for t in s.get("tests", [])):
            continue
        runs.append(s)
    runs.sort(key=lambda s: (s.get("finished_at") or "", s["run"]))
    return runs[-last:]


def _owner(folder: Path) -> int | None:
    try:
        return os.lstat(folder).st_uid
    except OSError:
        return None


def table(runs: list[dict]) -> dict[str, dict]:
    """{scenario: {"pass_rate": [per run], measure: [median per run]}}; None where a run did
    not run that scenario."""
    out: dict[str, dict] = {}
    scenarios = sorted({t["scenario"] for s in runs for t in s["tests"] if is_scenario(t)})
    for scen in scenarios:
        rows: dict[str, list] = {"pass_rate": []}
        for s in runs:
            mine = [t for t in s["tests"] if is_scenario(t) and t["scenario"] == scen
                    and t["outcome"] != "skipped"]
            rows["pass_rate"].append(round(100 * sum(t["outcome"] == "passed" for t in mine)
                                           / len(mine), 1) if mine else None)
            for m in MEASURES:
                values = [v for t in mine for k, v in (t.get("latencies") or {}).items()
                          if k.split(".", 1)[-1] == m]
                rows.setdefault(m, []).append(round(statistics.median(values), 3) if values else None)
        out[scen] = {k: v for k, v in rows.items() if any(x is not None for x in v)}
    return out
