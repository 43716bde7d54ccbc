"""Waiting for a file lock with a deadline (``flock`` itself has no timeout)."""

from __future__ import annotations

import fcntl
import time


def flock_within(fd, seconds: float, interval: float = 0.05) -> bool:
    """Take an exclusive ``flock`` on ``fd`` (a file or a descriptor), trying every ``interval``
    seconds for up to ``seconds``. True once held; False if another holder kept it that long.
    The lock goes when ``fd`` is closed (or its process dies)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)
