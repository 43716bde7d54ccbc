"""``python -m harness merge RUN_DIR...``: one qualification report from the runs of several
hosts, QEMU builds or guests.

The thing the runs differ in becomes an axis of the matrix (``--axis auto`` finds it: host,
QEMU build, guest image, backend; several at once are joined), each host's coverage is listed
(which roles its inventory could play, and how its tests ended), and the runs' tests go into one
JUnit file, a test suite per run named by its axis value, for CI systems to ingest. Writes
``report.html``, ``summary.json`` and ``junit.xml`` into ``--out``. Exits 0 once written: the
gate is ``compare``.
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path
from xml.etree import ElementTree as ET

from harness.core import roles
from harness.report import records
from harness.report import summary as report
from harness.report import html as rh
from harness.report.compare import load_summary
from harness.core.errors import ConfigError
from harness.core.paths import private_dir
from harness.core.text import shown


def host_label(s: dict) -> str:
    i = s.get("identity") or {}
    digest = i.get("inventory_sha256")
    return (i.get("host") or "?") + (f" (inventory {digest[:8]})" if digest else "")


def qemu_label(s: dict) -> str:
    return f"QEMU {s.get('qemu_version') or ((s.get('identity') or {}).get('qemu') or {}).get('version')}"


def guest_label(s: dict) -> str:
    guests = [g["name"] for g in s.get("guests") or []]
    if guests:
        return "guests " + "+".join(guests)
    return "guest kernel " + str((s.get("image") or {}).get("kernel_version", "user image"))


AXES = {"host": host_label, "qemu": qemu_label, "guest": guest_label,
        "backend": lambda s: f"backend {s.get('backend')}",
        # (runs from before the driver axis went through QMP)
        "driver": lambda s: f"driver {s.get('driver') or 'qmp'}"}


def choose_axes(summaries: list[dict], axis: str) -> list[str]:
    """The axes the runs differ in (``auto``), or the one asked for."""
    if axis != "auto":
        return [axis]
    differ = [a for a, f in AXES.items() if len({f(s) for s in summaries}) > 1]
    return differ or ["run"]


def label(s: dict, axes: list[str]) -> str:
    return " / ".join(s["run"] if a == "run" else AXES[a](s) for a in axes)


def coverage(s: dict) -> dict[str, str]:
    """Per role: what this run's host could do with it."""
    listed = (s.get("identity") or {}).get("inventory_roles")
    out = {}
    for role in roles.ROLES:
        tests = [t for t in s["tests"] if t.get("scenario") == role and records.is_scenario(t)]
        ran = [t for t in tests if t["outcome"] not in ("skipped",)]
        ok = sum(t["outcome"] == "passed" for t in ran)
        if listed is not None and role in roles.DEVICE_ROLES and role not in listed:
            out[role] = "no device in its inventory" + (f" ({len(ran)} ran)" if ran else "")
        elif not tests:
            out[role] = "not run"
        else:
            out[role] = f"{ok}/{len(ran)} passed" + (f", {len(tests) - len(ran)} skipped"
                                                      if len(tests) > len(ran) else "")
    return out


def merge(run_dirs: list[Path], out: Path, axis: str = "auto") -> dict:
    runs = []
    for d in run_dirs:
        s = load_summary(str(d))
        runs.append((Path(d) if Path(d).is_dir() else Path(d).parent, s))
    if len(runs) < 2:
        raise ConfigError("merge needs at least two runs", hint="pass two or more run folders "
                          "(reports/run-...) or their summary.json")
    axes = choose_axes([s for _, s in runs], axis)
    labels = [label(s, axes) for _, s in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} ({s['run']})" for lab, (_, s) in zip(labels, runs)]
    tests = []
    for lab, (d, s) in zip(labels, runs):
        base = rh.href_base(d.resolve(), out.resolve())
        tests += [{**t, "axis_value": lab, "href_base": base, "run": s["run"]} for t in s["tests"]]
    merged = {
        "run": out.name, "merged": True, "axis": "+".join(axes),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": [{"label": lab, "run": s["run"], "folder": str(d), "backend": s.get("backend"),
                  "qemu_version": s.get("qemu_version"), "identity": s.get("identity"),
                  "counts": s["counts"], "exit_status": s.get("exit_status"),
                  "coverage": coverage(s)} for lab, (d, s) in zip(labels, runs)],
        "counts": {o: sum(t["outcome"] == o for t in tests) for o in report.OUTCOMES},
        "latencies": {lab: records.latency_stats(s["tests"]) for lab, (_, s) in zip(labels, runs)},
        "tests": tests,
    }
    if os.geteuid() == 0:
        # (root writes there by name: a folder another user made first, in a report folder
        # others share, could hold a link to any file of root's)
        private_dir(out)
    else:
        out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(merged, indent=2, default=str) + "\n")
    (out / "report.html").write_text(shown(render(merged)), encoding="utf-8")  # (as summary's)
    write_junit(merged, out / "junit.xml")
    return merged


def write_junit(merged: dict, path: Path) -> None:
    """One JUnit file: a test suite per run, named by its axis value, with the run's identity
    as properties."""
    root = ET.Element("testsuites", name=f"hotplug-harness {merged['run']}")
    for run in merged["runs"]:
        mine = [t for t in merged["tests"] if t["axis_value"] == run["label"]]
        suite = ET.SubElement(root, "testsuite", name=run["label"], tests=str(len(mine)),
                              failures=str(sum(t["outcome"] == "failed" for t in mine)),
                              errors=str(sum(t["outcome"] == "error" for t in mine)),
                              skipped=str(sum(t["outcome"] == "skipped" for t in mine)),
                              time=f"{sum(t['duration'] for t in mine):.3f}")
        props = ET.SubElement(suite, "properties")
        for k, v in report.identity_properties(run).items():
            ET.SubElement(props, "property", name=k, value=str(v))
        for t in mine:
            _testcase(suite, t, run["label"])
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _testcase(suite, t: dict, lab: str) -> None:
    path, _, name = t["nodeid"].partition("::")
    case = ET.SubElement(suite, "testcase", classname=f"{lab}.{path.removesuffix('.py').replace('/', '.')}",
                         name=name or path, time=f"{t['duration']:.3f}")
    reason = shown(t.get("reason") or "")  # (XML takes no lone surrogate, no control character)
    if t["outcome"] in ("failed", "error"):
        ET.SubElement(case, "failure" if t["outcome"] == "failed" else "error",
                      message=reason.splitlines()[0][:500] if reason else t["outcome"]).text = reason
    elif t["outcome"] == "skipped":
        ET.SubElement(case, "skipped", message=reason[:500])
    if t.get("bundle"):
        ET.SubElement(case, "system-out").text = f"bundle: {t['bundle']}"


def render(merged: dict) -> str:
    runs = "".join(
        f"<tr><th>{html.escape(r['label'])}</th><td><code>{html.escape(r['run'])}</code></td>"
        f"<td>{html.escape(report.identity_line(r) or r.get('backend') or '')}</td>"
        + "".join(f"<td>{html.escape(c)}</td>" for c in r["coverage"].values()) + "</tr>"
        for r in merged["runs"])
    cover = ("<table><tr><th>run</th><th>folder</th><th>host, QEMU, harness</th>"
             + "".join(f"<th>{r}</th>" for r in roles.ROLES) + "</tr>" + runs + "</table>")
    tests = merged["tests"]
    scen = [t for t in tests if records.is_scenario(t)]
    body = (f"<h1>hotplug-harness qualification report: {len(merged['runs'])} runs merged</h1>"
            f"<p class=\"meta\">merged {html.escape(merged['finished_at'])}; axis: "
            f"<b>{html.escape(merged['axis'])}</b></p>" + rh.badges(merged["counts"])
            + "<h2>Runs and what each host covers</h2>" + cover
            + "<h2>Qualification matrix</h2>" + rh.matrix(tests)
            + "<h2>Hotplug latencies</h2><p>Each colour is one run.</p>" + rh.latency_pictures(scen)
            + "<h2>Scenario tests</h2>" + rh.tests_table(scen, merged=True) + rh.self_tests(tests))
    return rh.page(f"hotplug-harness merged {merged['run']}", body)

