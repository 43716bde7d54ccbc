"""Retention: ``reports/`` keeps the newest runs (``--keep-runs``; ``make clean`` keeps one).

Run folders are named ``run-YYYYMMDD-HHMMSS-PID``, so their names sort by age. The run being
finished is never removed, nor anything that is not a run folder (``latest``, merged reports,
a user's own files), nor another user's run folder.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import time
from pathlib import Path

_RUN = re.compile(r"^run-\d{8}-\d{6}-\d+$")


#: A run folder with no summary.json is a run still going (a long `make test` starts child
#: runs in the same folder) or one that was killed; only after this long is it the latter.
UNFINISHED_GRACE = 24 * 3600


def prune(report_root: Path, keep: int, current: Path | None = None) -> list[Path]:
    """Remove all but the newest ``keep`` run folders (``keep`` < 1 keeps one: the newest);
    returns what was removed. A run that has not finished (no summary.json, touched within a
    day) is never removed, nor ``current``. Only our own run folders count: in a report folder
    others share, another user's runs are neither removed (root would delete them) nor counted
    (newer names planted there would push ours out)."""
    runs = sorted((p for p in Path(report_root).iterdir() if _RUN.match(p.name) and _ours(p)),
                  key=lambda p: p.name)
    old = runs[:-max(keep, 1)]
    removed = []
    for p in old:
        if current is not None and p.resolve() == Path(current).resolve():
            continue
        if not (p / "summary.json").exists() and time.time() - os.lstat(p).st_mtime < UNFINISHED_GRACE:
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def _ours(p: Path) -> bool:
    """A real folder (not a link) of this process's user."""
    st = os.lstat(p)
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
