"""The time a guest could not run (harness.core.contention) and the deadlines it moves
(harness.core.waits.Deadline): measured on real processes that compete for one CPU."""

import os
import subprocess
import sys
import time

import pytest

from harness.core import contention
from harness.core.contention import EXTRA_AT_MOST, Meter
from harness.core.errors import WaitTimeout
from harness.core.waits import Deadline, wait_until

SPIN = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 30: pass\n"


def _spinner(cpu: int, name: str | None = None) -> subprocess.Popen:
    """A busy process pinned to ``cpu``; with ``name``, its main thread is called that."""
    code = SPIN if name is None else (
        f"open('/proc/self/comm', 'w').write({name!r})\n" + SPIN)
    p = subprocess.Popen([sys.executable, "-c", code])
    os.sched_setaffinity(p.pid, {cpu})
    return p


@pytest.fixture
def one_cpu():
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[0]


def test_a_process_sharing_its_cpu_is_seen_waiting(one_cpu):
    """Two busy processes on one CPU: each waits for it about half the time, and the meter of
    one of them says so (its run-queue delay); alone on the CPU it would say about nothing."""
    busy = [_spinner(one_cpu), _spinner(one_cpu)]
    try:
        time.sleep(0.3)
        m = contention.meter(busy[0].pid)
        time.sleep(2.0)
        parts, said = m.parts(), m.describe()
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert 0.5 <= parts["cpu"] <= 2.5, parts
    assert said.startswith("waited ") and "s for a host CPU" in said, said


def test_the_thread_that_waited_most_counts_whatever_it_is_called(one_cpu):
    """QEMU names its vCPU threads only with ``debug-threads=on``: every thread of the
    process is read, and the one that waited most is what the guest lost. Here a process
    whose second thread spins on a CPU another process spins on."""
    p = subprocess.Popen([sys.executable, "-c", (
        "import threading, time\n"
        "def spin():\n"
        "    t = time.monotonic()\n"
        "    while time.monotonic() - t < 30: pass\n"
        "threading.Thread(target=spin, daemon=True).start()\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
    other = _spinner(one_cpu)
    try:
        assert p.stdout.readline().strip() == "ready"
        for t in os.listdir(f"/proc/{p.pid}/task"):  # (the spinning thread too)
            os.sched_setaffinity(int(t), {one_cpu})
        assert len(contention._threads(p.pid)) == 2
        m = contention.meter(p.pid)
        time.sleep(1.5)
        waited = m.parts()["cpu"]
    finally:
        for q in (p, other):
            q.kill()
            q.wait()
    assert 0.4 <= waited <= 1.6, waited


def test_what_cannot_be_read_stretches_nothing():
    """A process that is gone: no thread is read, and the meter never makes a deadline longer
    than what the machine-wide figures say."""
    p = subprocess.Popen(["true"])
    p.wait()
    m = contention.meter(p.pid)
    assert not [k for k in contention.sample(p.pid) if k.startswith("tid ")]
    assert m.parts()["cpu"] == 0.0
    assert contention.meters(p.pid) is None


class GrowingMeter(Meter):
    """A meter that says the guest lost ``rate`` seconds for each second that passes."""

    def __init__(self, rate: float):
        t0 = time.monotonic()
        super().__init__({"tid 1": 0.0}, lambda: {"tid 1": rate * (time.monotonic() - t0)})


def test_a_wait_is_moved_by_the_time_the_guest_could_not_run():
    """A check that holds after 0.6 s, with a 0.3 s deadline: a guest that lost most of that
    time still gets it; one that lost none does not."""
    t0 = time.monotonic()
    late = lambda: time.monotonic() - t0 > 0.6
    assert wait_until("late", late, 0.3, interval=0.02, meters=lambda: GrowingMeter(0.9))
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout) as e:
        wait_until("late", late, 0.3, interval=0.02, meters=lambda: GrowingMeter(0.0))
    assert "stretched by 0.0 s" in str(e.value) and "had the host's CPU throughout" in str(e.value)


def test_the_stretch_is_bounded():
    """A guest that never gets a CPU still fails, after at most 1 + EXTRA_AT_MOST times the
    wait, and the error says by how much it was moved and why."""
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout) as e:
        wait_until("never", lambda: False, 0.2, interval=0.02, meters=lambda: GrowingMeter(5.0))
    took = time.monotonic() - t0
    assert 0.2 * (1 + EXTRA_AT_MOST) <= took < 0.2 * (1 + EXTRA_AT_MOST) + 0.5, took
    assert f"stretched by {0.2 * EXTRA_AT_MOST:.1f} s" in str(e.value)
    assert "waited" in str(e.value) and "for a host CPU" in str(e.value)


def test_a_deadline_without_meters_is_plain():
    d = Deadline(0.05)
    assert d.said() == "" and not d.passed()
    time.sleep(0.06)
    assert d.passed()
