"""Run reports: one JSON record per test (written by whichever process ran it), then, at the
end of the run, ``summary.json`` for machines and a self-contained ``report.html`` for people,
in the run's folder and copied to ``reports/latest/``.
"""

from __future__ import annotations

import hashlib
import html
import json
import shutil
import statistics
import time
from pathlib import Path

OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


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
    name = hashlib.sha1(record["nodeid"].encode()).hexdigest()[:16] + ".json"
    (out / name).write_text(json.dumps(record, indent=2, default=str) + "\n")


def load_results(run_dir: Path) -> list[dict]:
    return sorted((json.loads(p.read_text()) for p in (run_dir / "results").glob("*.json")),
                  key=lambda r: r["nodeid"])


def latency_stats(results: list[dict]) -> dict[str, dict]:
    """Per latency name (``nic0.device_del_to_event``, with the device id folded out):
    count, median and max over the run's tests."""
    values: dict[str, list[float]] = {}
    for r in results:
        for name, v in (r.get("latencies") or {}).items():
            key = f"{r['scenario']}.{name.split('.', 1)[-1]}"
            values.setdefault(key, []).append(v)
    return {k: {"n": len(v), "median": round(statistics.median(v), 4), "max": round(max(v), 4)}
            for k, v in sorted(values.items())}


def guest_boots(results: list[dict]) -> dict[str, float]:
    """Each guest's boot time, once per guest (a reused guest is in every test it served)."""
    return {g["name"]: g["boot_seconds"] for r in results for g in r.get("guests", [])
            if g.get("boot_seconds") and g.get("after_test")}


def finish_run(run_dir: Path, report_root: Path, meta: dict) -> dict:
    results = load_results(run_dir)
    counts = {o: sum(r["outcome"] == o for r in results) for o in OUTCOMES}
    boots = list(guest_boots(results).values())
    summary = {
        "run": run_dir.name,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **meta,
        "counts": counts,
        "wall_seconds": None,
        "latencies": latency_stats(results),
        "tests": results,
    }
    durations = [r["duration"] for r in results]
    summary["test_seconds_total"] = round(sum(durations), 2)
    summary["boot_seconds_median"] = round(statistics.median(boots), 3) if boots else None
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (run_dir / "report.html").write_text(render_html(summary))
    latest = report_root / "latest"
    if latest.is_symlink() or latest.is_file():
        latest.unlink()
    elif latest.exists():
        shutil.rmtree(latest)
    shutil.copytree(run_dir, latest, ignore=shutil.ignore_patterns("guests"))
    summary["html"] = str(run_dir / "report.html")
    summary["latest"] = str(latest / "report.html")
    return summary


def passthrough_counts(results: list[dict]) -> dict[str, int]:
    """How many tests ran through each real passthrough path (vfio-pci, usb-host)."""
    counts: dict[str, int] = {}
    for r in results:
        kind = (r.get("passthrough") or "").split(" ")[0]
        if kind:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def summary_lines(summary: dict) -> list[str]:
    c = summary["counts"]
    lines = [f"backend {summary['backend']}, accel {summary['accel']}, QEMU {summary['qemu_version']}: "
             + ", ".join(f"{n} {o}" for o, n in c.items() if n)]
    through = passthrough_counts(summary["tests"])
    if through:
        n = sum(through.values())
        lines.append(f"through real passthrough: {n} of {len(summary['tests'])} tests ("
                     + ", ".join(f"{k} {v}" for k, v in sorted(through.items())) + ")")
    again = [t for t in summary["tests"] if t.get("attempts", 1) > 1]
    if again:
        lines.append("ran again after a guest died or stopped answering under them "
                     "(--retry-dead-guest): "
                     + ", ".join(t["nodeid"].split("::")[-1] for t in again))
    if identity_line(summary):
        lines.append(identity_line(summary))
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
    lines.append(f"        {summary['latest']} (copy of the newest run)")
    return lines


# -- HTML ------------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#1d2330;max-width:1200px}
h1{font-size:22px;margin:0 0 .2em} h2{font-size:17px;margin:1.6em 0 .5em}
.meta{color:#555} table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #d5d9e0;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#f1f3f7} .passed{background:#dff3e3} .failed,.error{background:#f9dcdc}
.skipped{background:#f4f1dc} .xfailed{background:#e6e9f7} .xpassed{background:#f9e6cc}
.badge{display:inline-block;padding:1px 8px;border-radius:9px;margin-right:6px;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums} small{color:#555}
code{background:#f1f3f7;padding:0 3px}
"""


def _cell(results: list[dict]) -> str:
    if not results:
        return "<td></td>"
    parts = []
    worst = next((o for o in ("failed", "error", "xpassed", "skipped", "xfailed", "passed")
                  if any(r["outcome"] == o for r in results)), "passed")
    for r in results:
        label = html.escape(r["device"] or r["test"].removeprefix("test_"))
        title = html.escape(r["reason"] or r["outcome"])
        link = f' <a href="bundles/{html.escape(Path(r["bundle"]).name)}/">bundle</a>' if r.get("bundle") else ""
        parts.append(f'<span title="{title}">{label}: {r["outcome"]}</span>{link}')
    return f'<td class="{worst}">' + "<br>".join(parts) + "</td>"


def _column(r: dict) -> str:
    """A matrix column: the platform, and the guest when the run covers several (--guest)."""
    return r["platform"] + (f" / {r['guest']}" if r.get("guest") else "")


def _matrix(summary: dict) -> str:
    tests = summary["tests"]
    columns = sorted({_column(r) for r in tests})
    rows = []
    for s in sorted({r["scenario"] for r in tests}):
        cells = "".join(_cell([r for r in tests if r["scenario"] == s and _column(r) == c])
                        for c in columns)
        rows.append(f"<tr><th>{html.escape(s)}</th>{cells}</tr>")
    axis = "platform / guest" if any(r.get("guest") for r in tests) else "platform"
    return (f"<table><tr><th>scenario \\ {axis} ({html.escape(summary['backend'])})</th>"
            + "".join(f"<th>{html.escape(c or '-')}</th>" for c in columns) + "</tr>"
            + "".join(rows) + "</table>")


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


def _detail_row(r: dict) -> str:
    reason = html.escape(r["reason"] or "")
    notes = "".join(f"<br><small>note: {html.escape(n)}</small>" for n in r.get("notes", []))
    link = f'<a href="bundles/{html.escape(Path(r["bundle"]).name)}/">bundle</a>' if r.get("bundle") else ""
    kind = f" [{r['failure_kind']}]" if r.get("failure_kind") else ""
    return (f'<tr class="{r["outcome"]}"><td><code>{html.escape(r["nodeid"])}</code></td>'
            f'<td>{html.escape(r.get("backend", ""))}</td>'
            f'<td>{html.escape(r.get("passthrough") or "emulated")}</td>'
            f'<td>{r["outcome"]}{kind}</td><td class="num">{r["duration"]:.1f}</td>'
            f'<td>{reason}{notes}</td><td>{link}</td></tr>')


def _where_it_ran(summary: dict) -> str:
    """The meta lines on passthrough and on the lab host."""
    tests = summary["tests"]
    through = passthrough_counts(tests)
    through_line = ("<br>through real passthrough: <b>" + str(sum(through.values())) + f"</b> of "
                    f"{len(tests)} tests (" + ", ".join(f"{html.escape(k)} {v}" for k, v in
                                                        sorted(through.items())) + ")"
                    if through else "")
    lab = summary.get("lab") or {}
    lab_line = (f"<br>lab host: kernel <b>{html.escape(str(lab.get('kernel')))}</b>, ready "
                f"{lab.get('ready_seconds')} s after boot, image "
                f"<code>{html.escape(Path(lab.get('folder', '')).name)}</code>"
                + (f" built in {lab.get('build_seconds')} s" if lab.get("built_now") else " (cached)")
                + f", run by QEMU {html.escape(str(lab.get('l1_qemu')))}"
                if lab else "")
    return through_line + lab_line


def identity_line(summary: dict) -> str | None:
    """Which host, QEMU build and harness commit ran (summary.json's identity)."""
    i = summary.get("identity")
    if not i:
        return None
    h = i.get("harness") or {}
    commit = (h.get("commit") or "")[:12] + (" (with local changes)" if h.get("dirty") else "")
    return (f"host {i.get('host')} ({i.get('cpu')}, kernel {i.get('host_kernel')}, {i.get('iommu')})"
            f"; {(i.get('qemu') or {}).get('build') or 'QEMU ?'}; harness {h.get('version')}"
            + (f" {commit}" if commit else "")
            + (f"; inventory sha256 {i['inventory_sha256'][:12]}" if i.get("inventory_sha256") else ""))


def render_html(summary: dict) -> str:
    c = summary["counts"]
    badges = "".join(f'<span class="badge {o}">{n} {o}</span>' for o, n in c.items() if n)
    image = summary.get("image") or {}
    matrix = _matrix(summary)
    lat = "".join(f'<tr><td>{html.escape(k)}</td><td class="num">{v["n"]}</td>'
                  f'<td class="num">{v["median"]:.3f}</td><td class="num">{v["max"]:.3f}</td></tr>'
                  for k, v in summary["latencies"].items())
    detail = [_detail_row(r) for r in summary["tests"]]
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>hotplug-harness {html.escape(summary['run'])}</title><style>{_CSS}</style></head><body>
<h1>hotplug-harness qualification report</h1>
<p class="meta">run <b>{html.escape(summary['run'])}</b>, finished {html.escape(summary['finished_at'])}<br>
backend <b>{html.escape(summary['backend'])}</b> &middot; accelerator <b>{html.escape(summary['accel'])}</b>
<small>({html.escape(summary.get('accel_reason', ''))})</small>
&middot; time factor <b>{(summary.get('pace') or {}).get('factor', 'n/a')}</b>
<small>(every deadline is its reference figure times this: {html.escape(', '.join(f"{k.replace('_', ' ')} {v:g} s" for k, v in (summary.get('deadlines') or {}).items()))})</small><br>
QEMU <b>{html.escape(str(summary['qemu_version']))}</b> <small>{html.escape(summary['qemu_binary'])}</small>
&middot; guest kernel <b>{html.escape(str(image.get('kernel_version', 'user image')))}</b>
&middot; median guest boot {summary.get('boot_seconds_median')} s{_where_it_ran(summary)}
<br><small>{html.escape(identity_line(summary) or '')}<br><code>{html.escape((summary.get('identity') or {}).get('command', ''))}</code></small></p>
<p>{badges}</p>
<h2>Matrix</h2>{matrix}
<h2>Hotplug latencies (seconds)</h2>
<table><tr><th>scenario.measure</th><th>n</th><th>median</th><th>max</th></tr>{lat}</table>
<h2>Tests</h2>
<table><tr><th>test</th><th>backend</th><th>device path</th><th>outcome</th><th>s</th><th>reason / notes</th><th></th></tr>{''.join(detail)}</table>
</body></html>
"""
