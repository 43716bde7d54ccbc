"""Retention: ``reports/`` keeps the newest runs (``--keep-runs``; ``make clean`` keeps one).

Run folders are named ``run-YYYYMMDD-HHMMSS-PID``, so their names sort by age. The run being
finished is never removed, nor anything that is not a run folder (``latest``, merged reports,
a user's own files).
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

_RUN = re.compile(r"^run-\d{8}-\d{6}-\d+$")


#: A run folder with no summary.json is a run still going (a long `make test` starts child
#: runs in the same folder) or one that was killed; only after this long is it the latter.
UNFINISHED_GRACE = 24 * 3600


def prune(report_root: Path, keep: int, current: Path | None = None) -> list[Path]:
    """Remove all but the newest ``keep`` run folders (``keep`` < 1 keeps one: the newest);
    returns what was removed. A run that has not finished (no summary.json, touched within a
    day) is never removed, nor ``current``."""
    runs = sorted((p for p in Path(report_root).iterdir()
                   if p.is_dir() and not p.is_symlink() and _RUN.match(p.name)),
                  key=lambda p: p.name)
    old = runs[:-max(keep, 1)]
    removed = []
    for p in old:
        if current is not None and p.resolve() == Path(current).resolve():
            continue
        if not (p / "summary.json").exists() and time.time() - p.stat().st_mtime < UNFINISHED_GRACE:
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed

