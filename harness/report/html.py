"""The HTML of a report: one self-contained page (no script, no external file; pictures are
inline SVG) for a run (``report.html`` in its folder) or for several runs merged
(``python -m harness merge``).

The qualification matrix has scenarios as rows and consistent columns: the machine type and its
PCI hotplug path (pc with ACPI, q35 with ACPI, q35 with native PCIe hotplug), then the USB bus
as a sub-axis (none, the guide's ``-usb``: UHCI on pc and EHCI on q35, or xHCI). A merged report
puts the thing its runs differ in (host, QEMU build, guest) above those. The harness's own
tests are not scenarios: they get their own short section.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from harness.report import charts, records

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#1d2330;max-width:1500px}
h1{font-size:22px;margin:0 0 .2em} h2{font-size:17px;margin:1.6em 0 .5em} h3{font-size:14px;margin:1em 0 .3em}
.meta{color:#555} table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #d5d9e0;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#f1f3f7} th.group{text-align:center} .passed{background:#dff3e3}
.failed,.error{background:#f9dcdc} .skipped{background:#f4f1dc} .xfailed{background:#e6e9f7}
.xpassed{background:#f9e6cc} .na{background:#fafafa;color:#aaa}
.badge{display:inline-block;padding:1px 8px;border-radius:9px;margin-right:6px;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums} small{color:#555}
code{background:#f1f3f7;padding:0 3px} svg{max-width:100%;height:auto}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1em}
figure{margin:0} .v{white-space:nowrap} .wide{overflow-x:auto}
"""

#: Sort order and header text of the axes.
_MACHINES = {"pc": 0, "q35": 1}
_PATHS = {"acpi": "ACPI", "pciehp": "pciehp"}
_USB = {"": "no USB", "uhci": "UHCI", "ehci": "EHCI", "xhci": "xHCI"}
_LEGEND = ("<p><small>Columns: machine type \u00b7 PCI hotplug path (ACPI; pciehp: native PCIe "
           "hotplug on q35's root ports), then the guest's USB bus (UHCI and EHCI: the guide's "
           "<code>-usb</code> on pc and q35; xHCI: a qemu-xhci controller). \u2713 passed, "
           "\u2717 failed; an empty cell: not a shape that scenario runs on.</small></p>")
_BAD = ("failed", "error")
#: A cell's word for an outcome (the full outcome is the tooltip and in the tests table).
_MARKS = {"passed": "\u2713", "failed": "\u2717 failed", "error": "\u2717 error",
          "skipped": "\u2013 skipped", "xfailed": "\u2713 (xfail)", "xpassed": "! xpassed"}


def axes(r: dict) -> tuple[str, str, str]:
    """(machine type, PCI hotplug path, USB bus) of a scenario record; records written before
    these fields existed are read from their platform id (``q35-pciehp``, ``pc-uhci``)."""
    if "machine" in r:
        return r["machine"], r.get("hotplug_path") or "acpi", r.get("usb_bus") or ""
    parts = (r.get("platform") or "").split("-")
    path = next((p for p in parts if p in _PATHS), "acpi")
    usb = next((p for p in parts if p in _USB and p), "")
    return parts[0], path, usb


def _outer(r: dict) -> str:
    return " / ".join(filter(None, [r.get("axis_value", ""), r.get("guest", "")]))


def _column(r: dict, order: dict[str, int]) -> tuple:
    """A matrix column, sortable: the outer axis in the runs' order, then machine type, hotplug
    path, USB bus."""
    machine, path, usb = axes(r)
    return (order[_outer(r)], _outer(r), _MACHINES.get(machine, 9), machine, path,
            list(_USB).index(usb) if usb in _USB else 9, usb)


def _href(r: dict) -> str | None:
    if not r.get("bundle"):
        return None
    return html.escape(f"{r.get('href_base', '')}bundles/{Path(r['bundle']).name}/")


def _cell(results: list[dict]) -> str:
    """One matrix cell: each device variant's outcome (with a pass rate when it ran more than
    once), a link to the bundle of a failing one."""
    if not results:
        return '<td class="na"></td>'
    worst = next((o for o in ("failed", "error", "xpassed", "skipped", "xfailed", "passed")
                  if any(r["outcome"] == o for r in results)), "passed")
    labels: dict[str, list[dict]] = {}
    for r in results:
        labels.setdefault(r.get("cell") or r.get("device") or r["test"].removeprefix("test_"), []).append(r)
    parts = []
    for label, runs in labels.items():
        bad = [r for r in runs if r["outcome"] in _BAD]
        if len(runs) > 1:
            ok = sum(r["outcome"] in ("passed", "xfailed") for r in runs)
            text = f"{ok}/{len(runs)} passed"
        else:
            text = _MARKS.get(runs[0]["outcome"], runs[0]["outcome"])
        first = (bad or runs)[0]
        title = html.escape(first.get("reason") or first["outcome"])
        link = f' <a href="{_href(bad[0])}">bundle</a>' if bad and _href(bad[0]) else ""
        parts.append(f'<span class="v" title="{title}">{html.escape(label)} {text}</span>{link}')
    return f'<td class="{worst}">' + "<br>".join(parts) + "</td>"


def _spans(columns: list[tuple], key, text) -> str:
    """Header cells spanning the runs of columns that share ``key``."""
    out, i = [], 0
    while i < len(columns):
        j = i
        while j < len(columns) and key(columns[j]) == key(columns[i]):
            j += 1
        out.append(f'<th class="group" colspan="{j - i}">{html.escape(text(columns[i]))}</th>')
        i = j
    return "".join(out)


def _header_rows(columns: list[tuple]) -> str:
    """Header rows: the merged runs' axis (when there is one), machine type and hotplug path,
    USB bus."""
    rows = []
    if any(c[1] for c in columns):
        rows.append("<tr><th></th>" + _spans(columns, lambda c: c[:2], lambda c: c[1]) + "</tr>")
    rows.append("<tr><th></th>" + _spans(columns, lambda c: c[:5],
                                          lambda c: f"{c[3]} \u00b7 {_PATHS.get(c[4], c[4])}")
                + "</tr>")
    rows.append("<tr><th>scenario</th>" + "".join(
        f"<th>{html.escape(_USB.get(c[6], c[6]))}</th>" for c in columns) + "</tr>")
    return "".join(rows)


def matrix(tests: list[dict]) -> str:
    scen = [r for r in tests if records.is_scenario(r)]
    if not scen:
        return "<p>No scenario test ran.</p>"
    order = {o: i for i, o in enumerate(dict.fromkeys(_outer(r) for r in scen))}
    columns = sorted({_column(r, order) for r in scen})
    rows = []
    for s in sorted({r["scenario"] for r in scen}):
        cells = "".join(_cell([r for r in scen if r["scenario"] == s and _column(r, order) == c])
                        for c in columns)
        rows.append(f"<tr><th>{html.escape(s)}</th>{cells}</tr>")
    return ('<div class="wide"><table>' + _header_rows(columns) + "".join(rows) + "</table></div>"
            + _LEGEND)


def self_tests(tests: list[dict]) -> str:
    """The harness's own tests, short: per file how many passed, and any that did not."""
    own = [r for r in tests if not records.is_scenario(r)]
    if not own:
        return ""
    files: dict[str, list[dict]] = {}
    for r in own:
        files.setdefault(r["nodeid"].split("::")[0], []).append(r)
    rows = "".join(
        f"<tr><td><code>{html.escape(f)}</code></td>"
        + "".join(f'<td class="num">{sum(r["outcome"] == o for r in rs) or ""}</td>'
                  for o in ("passed", "failed", "error", "skipped"))
        + "</tr>" for f, rs in sorted(files.items()))
    bad = [r for r in own if r["outcome"] in _BAD]
    listing = "".join(f'<li><code>{html.escape(r["nodeid"])}</code> {r["outcome"]}: '
                      f'{html.escape((r.get("reason") or "").splitlines()[0][:200] if r.get("reason") else "")}'
                      + (f' <a href="{_href(r)}">bundle</a>' if _href(r) else "") + "</li>"
                      for r in bad)
    ok = sum(r["outcome"] == "passed" for r in own)
    return (f"<h2>Self-tests</h2><p>The harness's own tests (parsers, host logic, fault "
            f"injection): {ok} of {len(own)} passed.</p>"
            + (f"<ul>{listing}</ul>" if listing else "")
            + "<details><summary>per file</summary><table><tr><th>file</th><th>passed</th>"
              "<th>failed</th><th>error</th><th>skipped</th></tr>" + rows + "</table></details>")


def latency_pictures(tests: list[dict], series_of=lambda r: r.get("axis_value") or "this run") -> str:
    """Per scenario (per kind of test where a scenario has several:
    :func:`~harness.report.records.latency_group`), each latency's distribution over the tests (and
    over the merged runs' axis, one colour each) as an inline SVG."""
    per: dict[str, dict[str, dict[str, list[float]]]] = {}
    for r in tests:
        for name, v in (r.get("latencies") or {}).items():
            if name.endswith("clock_error"):
                continue
            per.setdefault(records.latency_group(r), {}).setdefault(records.latency_key(r, name), {}) \
               .setdefault(series_of(r), []).append(v)
    return '<div class="charts">' + "".join(
        "<figure>" + charts.latency_distributions(
            f"{s}: each test's latency (seconds)",
            {k.removeprefix(f"{s}."): v for k, v in sorted(m.items())}) + "</figure>"
        for s, m in sorted(per.items())) + "</div>"


def trend_section(runs: list[dict]) -> str:
    """This run and the ones before it in its report folder: pass rate and the time to the
    guest seeing the device, per scenario (``python -m harness trend`` has more)."""
    if len(runs) < 3:
        return ""
    rows = records.table(runs)
    names = [s["run"] for s in runs]
    visible = {k: v["guest_visible"] for k, v in rows.items() if "guest_visible" in v}
    return (f"<h2>Trend: the last {len(runs)} runs in this folder</h2><div class=\"charts\"><figure>"
            + charts.trend_lines("pass rate per scenario (%)", names,
                                 {k: v["pass_rate"] for k, v in rows.items()}, "%", percent=True)
            + "</figure>" + ("<figure>" + charts.trend_lines(
                "device_add to guest-visible, median (seconds)", names, visible, "s")
                + "</figure>" if visible else "") + "</div>")


def latency_table(latencies: dict) -> str:
    rows = "".join(f'<tr><td>{html.escape(k)}</td><td class="num">{v["n"]}</td>'
                   f'<td class="num">{v["median"]:.3f}</td><td class="num">{v.get("p95", v["max"]):.3f}</td>'
                   f'<td class="num">{v["max"]:.3f}</td></tr>' for k, v in latencies.items())
    return ("<table><tr><th>scenario.measure</th><th>n</th><th>median</th><th>p95</th><th>max</th>"
            "</tr>" + rows + "</table>")


def detail_row(r: dict) -> str:
    reason = html.escape(r.get("reason") or "")
    notes = "".join(f"<br><small>note: {html.escape(n)}</small>" for n in r.get("notes", []))
    link = f'<a href="{_href(r)}">bundle</a>' if _href(r) else ""
    kind = f" [{r['failure_kind']}]" if r.get("failure_kind") else ""
    where = f"<td>{html.escape(r['axis_value'])}</td>" if "axis_value" in r else ""
    rep = f" <small>#{r['repetition']}</small>" if r.get("repetition") else ""
    return (f'<tr class="{r["outcome"]}">{where}<td><code>{html.escape(r["nodeid"])}</code>{rep}</td>'
            f'<td>{html.escape(r.get("backend", ""))}'
            f'{"" if r.get("driver", "qmp") == "qmp" else " via " + html.escape(r["driver"])}</td>'
            f'<td>{html.escape(r.get("passthrough") or "emulated")}</td>'
            f'<td>{r["outcome"]}{kind}</td><td class="num">{r["duration"]:.1f}</td>'
            f'<td>{reason}{notes}</td><td>{link}</td></tr>')


def tests_table(tests: list[dict], merged: bool = False) -> str:
    head = ("<th>run</th>" if merged else "") + ("<th>test</th><th>backend</th><th>device path</th>"
                                                 "<th>outcome</th><th>s</th><th>reason / notes</th><th></th>")
    return f"<table><tr>{head}</tr>" + "".join(detail_row(r) for r in tests) + "</table>"


def page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
            f"</title><style>{_CSS}</style></head><body>{body}</body></html>\n")


def badges(counts: dict) -> str:
    return "<p>" + "".join(f'<span class="badge {o}">{n} {o}</span>' for o, n in counts.items() if n) + "</p>"


def href_base(run_dir: Path, out_dir: Path) -> str:
    """How a page in ``out_dir`` links into ``run_dir`` (its bundles)."""
    rel = os.path.relpath(run_dir, out_dir)
    return "" if rel == "." else rel.rstrip("/") + "/"

