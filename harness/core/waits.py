"""The one way to wait: poll a condition until it holds or a deadline passes, and on the
deadline say what was awaited and what was last seen (NixOS's ``wait_until_succeeds``).

``timeout``/``stall``/``limit`` here are wall-clock seconds: the caller has already scaled its
reference figure by the run's pace (harness.core.pace), so no wait scales twice.

    >>> wait_until("the answer", lambda: 42, timeout=1.0)
    42
"""

from __future__ import annotations

import time
from typing import Callable

from harness.core.contention import EXTRA_AT_MOST, Meters
from harness.core.errors import GuestCheckError, WaitTimeout

#: What a check may raise and still be tried again: "not yet", not "broken".
RETRY_ON: tuple[type[BaseException], ...] = (GuestCheckError, WaitTimeout)


class Deadline:
    """``seconds`` from now; with ``meters`` (a guest's, harness.core.contention), moved later by
    the time the guest could not run meanwhile, up to EXTRA_AT_MOST times ``seconds`` more. The
    meter is only asked once the nominal deadline has passed.

    >>> Deadline(5.0).left() > 4.9
    True
    """

    def __init__(self, seconds: float, meters: Meters = None):
        self.seconds, self.t0 = seconds, time.monotonic()
        self.meter = meters() if meters else None
        self.extra = 0.0

    def left(self) -> float:
        now = time.monotonic()
        if self.meter is not None and now >= self.t0 + self.seconds + self.extra:
            self.extra = min(self.meter.seconds(), EXTRA_AT_MOST * self.seconds)
        return self.t0 + self.seconds + self.extra - now

    def passed(self) -> bool:
        return self.left() <= 0

    @classmethod
    def of(cls, timeout: "float | Deadline", meters: Meters = None) -> "Deadline":
        """``timeout`` as a deadline: a wait that is one step of a longer one (the boot's
        console, SSH login and cloud-init) is handed that one's Deadline, so the time its guest
        lost in any step moves the whole, up to EXTRA_AT_MOST times the whole: a last step
        given what was left had room for only twice that rest."""
        return timeout if isinstance(timeout, Deadline) else cls(timeout, meters)

    def said(self) -> str:
        """What stretched the deadline, for an error message ("" when nothing could)."""
        if self.meter is None:
            return ""
        return (f" (stretched by {self.extra:.1f} s, at most {EXTRA_AT_MOST:g} times the wait: "
                f"the guest's QEMU {self.meter.describe()})")


def wait_progress(what: str, count: Callable[[], int], want: int, *, stall: float,
                  limit: float, interval: float = 0.5,
                  retry_on: tuple[type[BaseException], ...] = RETRY_ON) -> float:
    """Poll ``count`` until it reaches ``want``. A guest that works through many devices one
    by one (a storm of hot-adds) is waited for as long as it makes progress: the wait fails when
    the count has not grown for ``stall`` seconds, or after ``limit`` seconds in all. Returns
    the seconds it took."""
    t0 = time.monotonic()
    best, moved, last = -1, t0, None
    while True:
        try:
            seen = count()
            last = seen
            if seen >= want:
                return time.monotonic() - t0
            if seen > best:
                best, moved = seen, time.monotonic()
        except retry_on as e:
            last = e
        now = time.monotonic()
        if now - moved >= stall or now - t0 >= limit:
            why = (f"no progress for {now - moved:.1f} s" if now - moved >= stall
                   else f"still moving after the {limit:g} s limit")
            raise WaitTimeout(f"timed out waiting for {what}: {why} "
                              f"({max(best, 0)} of {want} after {now - t0:.1f} s)",
                              details=f"last seen: {last}")
        time.sleep(interval)


def wait_until(what: str, check: Callable[[], object], timeout: "float | Deadline",
               interval: float = 0.1,
               retry_on: tuple[type[BaseException], ...] = RETRY_ON,
               meters: Meters = None):
    """The one retry helper: poll ``check`` until truthy; on the deadline, say what was awaited
    and what was last seen. ``meters``: a guest's (:class:`Deadline`)."""
    deadline = Deadline.of(timeout, meters)
    last: object = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except retry_on as e:
            last = e
        if deadline.passed():
            raise WaitTimeout(f"timed out after {deadline.seconds:g} s waiting for {what}"
                              f"{deadline.said()}",
                              details=f"last seen: {last}")
        time.sleep(interval)  # the condition is re-checked; the deadline bounds the loop
