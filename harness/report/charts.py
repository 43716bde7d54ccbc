"""Pictures for the reports, drawn with matplotlib and inlined as SVG: a report is one file that
works offline and can be attached to a release.

Every picture is deterministic for its data (fixed hash salt, no date), so two renders of one
summary are byte-identical and a report can be diffed.
"""

from __future__ import annotations

import io
import re

#: One colour per series (run, QEMU build, host), in order; matplotlib's colour-blind-safe cycle.
_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    matplotlib.rcParams.update({"svg.hashsalt": "hotplug-harness", "svg.fonttype": "none",
                                "font.size": 9, "font.family": "sans-serif",
                                "axes.spines.top": False, "axes.spines.right": False})
    import matplotlib.pyplot as plt

    return plt


def _svg(fig, plt, title: str) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Title": title}, bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    # Inline: drop the XML prolog and DOCTYPE; give the picture a role and a name for readers.
    text = text[text.index("<svg"):]
    return re.sub(r"<svg ", f'<svg role="img" aria-label="{_attr(title)}" ', text, count=1)


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def _plain_log_ticks(ax) -> None:
    """Ticks at 1, 2 and 5 of each decade, labelled as plain numbers (0.02, not 2x10^-2);
    none of matplotlib's crowded minor labels on a span of less than a decade."""
    from matplotlib import ticker

    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(ticker.NullLocator())


def latency_distributions(title: str, measures: dict[str, dict[str, list[float]]]) -> str:
    """Horizontal box plots, one row per measure and one box per series (say QEMU 7.2 and 10.0),
    every value drawn as a dot over its box; a log time axis, since a device_add takes
    milliseconds and a DHCP lease seconds."""
    plt = _pyplot()
    series = list(dict.fromkeys(s for per in measures.values() for s in per))
    names = list(measures)
    rows = len(names) * len(series)
    fig, ax = plt.subplots(figsize=(6.2, 0.7 + 0.28 * rows + 0.25 * len(series)))
    ticks = []
    for i, name in enumerate(names):
        for j, s in enumerate(series):
            values = [max(v, 1e-4) for v in measures[name].get(s, [])]
            y = i * (len(series) + 0.6) + j
            if not values:
                continue
            colour = _COLOURS[j % len(_COLOURS)]
            ax.boxplot(values, positions=[y], orientation="horizontal", widths=0.7, manage_ticks=False,
                       showfliers=False, medianprops={"color": colour, "linewidth": 2},
                       boxprops={"color": colour}, whiskerprops={"color": colour},
                       capprops={"color": colour})
            jitter = [y + 0.25 * ((k * 7919) % 11 - 5) / 5 for k in range(len(values))]
            ax.scatter(values, jitter, s=9, color=colour, alpha=0.6, linewidths=0,
                       label=s if i == 0 else None)
        ticks.append((i * (len(series) + 0.6) + (len(series) - 1) / 2, name))
    ax.set_yticks([t for t, _ in ticks], [n for _, n in ticks])
    ax.invert_yaxis()
    ax.set_xscale("log")
    _plain_log_ticks(ax)
    ax.set_xlabel("seconds (log scale)")
    ax.grid(axis="x", color="#dde1e8", linewidth=0.6)
    ax.set_title(title, loc="left", fontsize=10)
    if len(series) > 1:
        ax.legend(loc="lower right", fontsize=8, frameon=False)
    return _svg(fig, plt, title)


def trend_lines(title: str, runs: list[str], series: dict[str, list[float | None]],
                ylabel: str, percent: bool = False) -> str:
    """One line per series over the runs (oldest left); a gap where a run has no value."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 2.4))
    x = list(range(len(runs)))
    for j, (name, values) in enumerate(series.items()):
        pts = [(i, v) for i, v in zip(x, values) if v is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                    linewidth=1.3, color=_COLOURS[j % len(_COLOURS)], label=name)
    step = max(1, len(runs) // 10)
    ax.set_xticks(x[::step], [r[-15:] for r in runs[::step]], rotation=30, ha="right", fontsize=7)
    if percent:
        ax.set_ylim(-5, 105)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", color="#dde1e8", linewidth=0.6)
    ax.set_title(title, loc="left", fontsize=10)
    if series:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    return _svg(fig, plt, title)
