"""Run reports: one JSON record per test (written by whichever process ran it), then, at the
end of the run, ``summary.json`` for machines and a self-contained ``report.html`` for people,
in the run's folder and copied to ``reports/latest/``.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import stat
import statistics
import tempfile
import time
from pathlib import Path

from harness.core.text import shown
from harness.report import html as rh
from harness.report import records

OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


def _guest_starts(summary: dict) -> str:
    started = summary.get("guests_started") or {}
    text = f"median guest boot {summary.get('boot_seconds_median')} s"
    if started.get("restored"):
        text += (f" ({started['booted']} booted), restore from a saved state "
                 f"{summary.get('restore_seconds_median')} s ({started['restored']} restored)")
    return text


def _wall(summary: dict) -> str:
    wall = summary.get("wall_seconds")
    return f" after {wall:g} s" if wall is not None else ""


def finish_run(run_dir: Path, report_root: Path, meta: dict) -> dict:
    results = records.load_results(run_dir)
    counts = {o: sum(r["outcome"] == o for r in results) for o in OUTCOMES}
    boots = list(records.guest_boots(results).values())
    restores = list(records.guest_boots(results, "restored").values())
    summary = {
        "run": run_dir.name,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **meta,
        "counts": counts,
        "latencies": records.latency_stats(results),
        "pass_rates": records.pass_rates(results),
        "tests": results,
    }
    durations = [r["duration"] for r in results]
    summary["test_seconds_total"] = round(sum(durations), 2)
    summary["boot_seconds_median"] = round(statistics.median(boots), 3) if boots else None
    summary["guests_started"] = {"booted": len(boots), "restored": len(restores)}
    summary["restore_seconds_median"] = round(statistics.median(restores), 3) if restores else None
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    # (its messages may carry a name another user chose that is not UTF-8: shown, never a
    # UnicodeEncodeError; UTF-8 whatever the locale, as the page says)
    page = shown(render_html(summary, history(report_root, summary)))
    (run_dir / "report.html").write_text(page, encoding="utf-8")
    summary["html"] = str(run_dir / "report.html")
    summary["latest"] = refresh_latest(run_dir, report_root)
    return summary


def refresh_latest(run_dir: Path, report_root: Path) -> str | None:
    """``report_root/latest`` made a copy of ``run_dir``; its report's path, or None when it
    was left alone. A report folder may be shared (a sticky folder others can write): a
    ``latest`` another user owns is theirs, neither removed nor written through (root would
    delete their folder, or follow their link); the copy is made aside under a name nobody can
    predict and renamed into place, so a ``latest`` made meanwhile is never written into."""
    latest = report_root / "latest"
    try:
        st = os.lstat(latest)
    except FileNotFoundError:
        st = None
    if st is not None and st.st_uid != os.geteuid():
        return None
    aside = Path(tempfile.mkdtemp(prefix=".latest-", dir=report_root))
    try:
        shutil.copytree(run_dir, aside, ignore=shutil.ignore_patterns("guests"),
                        dirs_exist_ok=True)
        if st is not None and stat.S_ISDIR(st.st_mode):
            shutil.rmtree(latest)
        elif st is not None:
            latest.unlink()
        os.rename(aside, latest)  # (a `latest` someone made since: the rename fails)
    except OSError:
        shutil.rmtree(aside, ignore_errors=True)
        return None
    return str(latest / "report.html")


def history(report_root: Path, summary: dict, last: int = 10) -> list[dict]:
    """This run and the ones before it in the same report folder (this user's: a shared report
    folder's other runs are not read), for the report's trend pictures (none for a run of
    self-tests only, or with fewer than 3 scenario runs)."""
    runs = records.load_runs(report_root, last, owner=os.geteuid()) \
        if report_root.is_dir() else []
    if not runs or runs[-1]["run"] != summary["run"] or len(runs) < 3:
        return []
    return runs


def repeat_lines(summary: dict) -> list[str]:
    """--repeat: each test's pass rate, and each latency's distribution."""
    rates = summary.get("pass_rates") or {}
    if not rates:
        return []
    lines = ["pass rate (--repeat):"]
    lines += [f"  {v['passed']}/{v['ran']} ({v['rate']:.0%})  {n}" for n, v in sorted(rates.items())]
    lines.append("latency (s)                            n    median       p95       max")
    lines += [f"  {k:<34} {v['n']:>4} {v['median']:>9.3f} {v['p95']:>9.3f} {v['max']:>9.3f}"
              for k, v in summary["latencies"].items() if not k.endswith("clock_error")]
    return lines


def summary_lines(summary: dict) -> list[str]:
    c = summary["counts"]
    driver = summary.get("driver") or "qmp"
    lines = [f"backend {summary['backend']}" + ("" if driver == "qmp" else f" via {driver}")
             + f", accel {summary['accel']}, QEMU {summary['qemu_version']}: "
             + ", ".join(f"{n} {o}" for o, n in c.items() if n)
             + (f" in {summary['wall_seconds']:g} s" if summary.get("wall_seconds") is not None else "")]
    through = records.passthrough_counts(summary["tests"])
    if through:
        n = sum(through.values())
        lines.append(f"through real passthrough: {n} of {len(summary['tests'])} tests ("
                     + ", ".join(f"{k} {v}" for k, v in sorted(through.items())) + ")")
    failure_paths = records.failure_path_count(summary["tests"])
    if failure_paths:
        lines.append(f"failure paths of real passthrough: {failure_paths} tests "
                     "(no host device passed through, not counted above)")
    again = [t for t in summary["tests"] if t.get("attempts", 1) > 1]
    if again:
        lines.append("ran again after a guest died or stopped answering under them "
                     "(--retry-dead-guest): "
                     + ", ".join(t["nodeid"].split("::")[-1] for t in again))
    if identity_line(summary):
        lines.append(identity_line(summary))
    lines += repeat_lines(summary)
    lines += guest_matrix_lines(summary)
    lab = summary.get("lab")
    if lab:
        lines.append(f"lab host: kernel {lab.get('kernel')}, ready {lab.get('ready_seconds')} s "
                     f"after boot; image {Path(lab.get('folder', '')).name}"
                     + (f" built in {lab.get('build_seconds')} s" if lab.get("built_now") else
                        " (cached)") + f"; run by QEMU {lab.get('l1_qemu')}")
    for r in summary["tests"]:
        if r["outcome"] in ("failed", "error"):
            kind = f"[{r.get('failure_kind') or '?'}] "
            lines.append(f"  {r['outcome'].upper()} {kind}{r['nodeid']}: {r['reason'].splitlines()[0][:160] if r['reason'] else ''}")
            if r.get("bundle"):
                lines.append(f"      bundle: {r['bundle']}")
    lines.append(f"report: {summary['html']}")
    if summary.get("latest"):
        lines.append(f"        {summary['latest']} (copy of the newest run)")
    return lines


# -- HTML (the page itself is reporthtml's) ------------------------------------------------


def guest_matrix_lines(summary: dict) -> list[str]:
    """With several guests (--guest): passed/total per scenario and guest, for the terminal."""
    tests = [t for t in summary["tests"] if t.get("guest")]
    guests = list(dict.fromkeys(t["guest"] for t in tests))
    if not guests:
        return []
    width = max(len(s) for s in {t["scenario"] for t in tests} | {"scenario"})
    lines = ["scenario".ljust(width) + "".join(f"  {g:>12}" for g in guests)]
    for s in sorted({t["scenario"] for t in tests}):
        cells = []
        for g in guests:
            mine = [t for t in tests if t["scenario"] == s and t["guest"] == g]
            ok = sum(t["outcome"] in ("passed", "xfailed") for t in mine)
            cells.append(f"  {f'{ok}/{len(mine)}':>12}")
        lines.append(s.ljust(width) + "".join(cells))
    return lines


def _where_it_ran(summary: dict) -> str:
    """The meta lines on passthrough and on the lab host."""
    tests = summary["tests"]
    through = records.passthrough_counts(tests)
    through_line = ("<br>through real passthrough: <b>" + str(sum(through.values())) + f"</b> of "
                    f"{len(tests)} tests (" + ", ".join(f"{html.escape(k)} {v}" for k, v in
                                                        sorted(through.items())) + ")"
                    if through else "")
    failure_paths = records.failure_path_count(tests)
    if failure_paths:
        through_line += (f"<br>failure paths of real passthrough: <b>{failure_paths}</b> tests "
                         "(no host device passed through, not counted as passthrough)")
    lab = summary.get("lab") or {}
    lab_line = (f"<br>lab host: kernel <b>{html.escape(str(lab.get('kernel')))}</b>, ready "
                f"{lab.get('ready_seconds')} s after boot, image "
                f"<code>{html.escape(Path(lab.get('folder', '')).name)}</code>"
                + (f" built in {lab.get('build_seconds')} s" if lab.get("built_now") else " (cached)")
                + f", run by QEMU {html.escape(str(lab.get('l1_qemu')))}"
                if lab else "")
    return through_line + lab_line


def identity_properties(summary: dict) -> dict[str, str]:
    """A run's identity as JUnit test-suite properties (a run's or a merged run's entry)."""
    i = summary.get("identity") or {}
    h = i.get("harness") or {}
    return {k: str(v) for k, v in {
        "run": summary.get("run"), "host": i.get("host"), "cpu": i.get("cpu"),
        "host_kernel": i.get("host_kernel"), "iommu": i.get("iommu"),
        "inventory_sha256": i.get("inventory_sha256"),
        "qemu": (i.get("qemu") or {}).get("build") or summary.get("qemu_version"),
        "harness": f"{h.get('version')} {h.get('commit') or ''}".strip(), "command": i.get("command"),
    }.items() if v}


def identity_line(summary: dict) -> str | None:
    """Which host, QEMU build and harness commit ran (summary.json's identity)."""
    i = summary.get("identity")
    if not i:
        return None
    h = i.get("harness") or {}
    dirty = h.get("dirty")
    commit = (h.get("commit") or "")[:12] + (
        f" (local changes {dirty})" if isinstance(dirty, str) else
        " (with local changes)" if dirty else "")
    return (f"host {i.get('host')} ({i.get('cpu')}, kernel {i.get('host_kernel')}, {i.get('iommu')})"
            f"; {(i.get('qemu') or {}).get('build') or 'QEMU ?'}; harness {h.get('version')}"
            + (f" {commit}" if commit else "")
            + (f"; inventory sha256 {i['inventory_sha256'][:12]}" if i.get("inventory_sha256") else ""))


def render_html(summary: dict, runs: list[dict] | None = None) -> str:
    image = summary.get("image") or {}
    deadlines = ", ".join(f"{k.replace('_', ' ')} {v:g} s" for k, v in (summary.get("deadlines") or {}).items())
    meta = f"""<p class="meta">run <b>{html.escape(summary['run'])}</b>, finished {html.escape(summary['finished_at'])}{_wall(summary)}<br>
backend <b>{html.escape(summary['backend'])}</b> &middot; driver <b>{html.escape(summary.get('driver') or 'qmp')}</b> &middot; accelerator <b>{html.escape(summary['accel'])}</b>
<small>({html.escape(summary.get('accel_reason', ''))})</small>
&middot; time factor <b>{(summary.get('pace') or {}).get('factor', 'n/a')}</b>
<small>(every deadline is its reference figure times this: {html.escape(deadlines)})</small><br>
QEMU <b>{html.escape(str(summary['qemu_version']))}</b> <small>{html.escape(summary['qemu_binary'])}</small>
&middot; guest kernel <b>{html.escape(str(image.get('kernel_version', 'user image')))}</b>
&middot; {_guest_starts(summary)}{_where_it_ran(summary)}
<br><small>{html.escape(identity_line(summary) or '')}<br><code>{html.escape((summary.get('identity') or {}).get('command', ''))}</code></small></p>"""
    tests = summary["tests"]
    scen = [r for r in tests if records.is_scenario(r)]
    body = ("<h1>hotplug-harness qualification report</h1>" + meta + rh.badges(summary["counts"])
            + f"<h2>Qualification matrix ({html.escape(summary['backend'])})</h2>" + rh.matrix(tests)
            + ("<h2>Hotplug latencies</h2>" + rh.latency_pictures(scen)
               + rh.latency_table(summary["latencies"]) if summary["latencies"] else "")
            + rh.trend_section(runs or [])
            + "<h2>Scenario tests</h2>" + rh.tests_table(scen) + rh.self_tests(tests))
    return rh.page(f"hotplug-harness {summary['run']}", body)
