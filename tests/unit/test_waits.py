"""harness.core.waits.wait_progress: a wait that lasts as long as the awaited count keeps growing."""

import itertools

import pytest

from harness.core.waits import wait_progress
from harness.core.errors import WaitTimeout


def test_progress_keeps_the_wait_going_past_the_stall_window():
    counts = itertools.count()  # one more device every poll: 0, 1, 2, ...
    seconds = wait_progress("ten", lambda: next(counts), 10, stall=0.05, limit=5, interval=0.01)
    assert seconds < 5  # ten polls of 10 ms: far beyond one stall window, never stalled


def test_no_progress_fails_after_the_stall_window_and_says_how_far_it_got():
    values = iter([0, 1, 2] + [2] * 1000)
    with pytest.raises(WaitTimeout, match=r"no progress for 0\.[0-9] s \(2 of 5 after"):
        wait_progress("five", lambda: next(values), 5, stall=0.1, limit=5, interval=0.01)


def test_the_limit_ends_a_wait_that_still_moves():
    counts = itertools.count()
    with pytest.raises(WaitTimeout, match="still moving after the 0.1 s limit"):
        wait_progress("a million", lambda: next(counts), 10**6, stall=1, limit=0.1, interval=0.01)
