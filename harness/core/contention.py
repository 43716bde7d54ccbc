"""The time a guest could not run, measured on the host, so that a guest's deadline counts only
the time the guest had.

Every deadline of a guest's life is a reference figure times the run's time factor, and the
factor is measured once, at session start (harness.core.pace). Load that comes later is not in
it: a self-test that boots a systemd guest beside the matrix, an image build writing gigabytes,
a neighbour of the CI machine's own hypervisor. A guest that cannot run then misses a deadline
it would have met, and the failure names the guest. So each wait on a guest takes a
:class:`Meter`, started when the wait starts, and the wait's deadline moves later by what the
meter saw, and by no more than :data:`EXTRA_AT_MOST` times the wait itself:

- the time the QEMU process's threads waited for a host CPU (the scheduler's run-queue delay,
  ``/proc/PID/task/TID/schedstat``), the most of any one thread, not their sum, since they wait
  side by side: the vCPU threads and the main loop are among them, and QEMU names them
  (``CPU 0/TCG``) only with ``-name ...,debug-threads=on``, so no name is relied on;
- the time this machine's own hypervisor took its CPUs away (``steal`` in ``/proc/stat``, per
  CPU);
- the time every task on the machine was stalled on I/O or memory (PSI's ``full`` line,
  ``/proc/pressure/io`` and ``/proc/pressure/memory``).

What the meter cannot read counts as nothing (no stretch): it never makes a deadline shorter.
A wait that still fails says how much it was stretched and why, which tells a loaded machine
from a guest that hung.

    >>> m = Meter({"tid 1": 1.0, "steal": 0.0}, lambda: {"tid 1": 3.5, "steal": 0.5})
    >>> m.seconds(), m.describe()
    (3.0, 'waited 2.5 s for a host CPU, 0.5 s of CPU steal')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

#: A wait is stretched by at most this many times its own length (a guest that gets a third of
#: a CPU still meets every deadline; one that gets less is reported with the figure).
EXTRA_AT_MOST = 2.0
Sample = dict[str, float]


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _threads(pid: int) -> list[int]:
    """The QEMU process's threads (a thread started later has no start to compare with)."""
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except (OSError, ValueError):
        return []


def _run_delay(pid: int, tid: int) -> float | None:
    fields = _read(f"/proc/{pid}/task/{tid}/schedstat").split()
    return int(fields[1]) / 1e9 if len(fields) >= 2 and fields[1].isdigit() else None


def _steal_per_cpu() -> float | None:
    """Seconds of CPU steal since boot, averaged over this machine's CPUs."""
    for line in _read("/proc/stat").splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu" and len(fields) > 8 and fields[8].isdigit():
            return int(fields[8]) / os.sysconf("SC_CLK_TCK") / (os.cpu_count() or 1)
    return None


def _psi_full(resource: str) -> float | None:
    for line in _read(f"/proc/pressure/{resource}").splitlines():
        if line.startswith("full "):
            total = line.rsplit("total=", 1)[-1]
            return int(total) / 1e6 if total.isdigit() else None
    return None


def sample(pid: int) -> Sample:
    """Cumulative figures now, in seconds; what cannot be read is left out."""
    found: Sample = {}
    for tid in _threads(pid):
        found[f"tid {tid}"] = _run_delay(pid, tid)
    found["steal"] = _steal_per_cpu()
    found["io"], found["memory"] = _psi_full("io"), _psi_full("memory")
    return {k: v for k, v in found.items() if v is not None}


class Meter:
    """What a guest could not run since this meter started (:func:`meter`)."""

    def __init__(self, start: Sample, now: Callable[[], Sample]):
        self._start, self._now = start, now

    def parts(self) -> dict[str, float]:
        now = self._now()
        delta = {k: max(0.0, v - self._start[k]) for k, v in now.items() if k in self._start}
        waited = max((v for k, v in delta.items() if k.startswith("tid ")), default=0.0)
        return {"cpu": waited, "steal": delta.get("steal", 0.0), "io": delta.get("io", 0.0),
                "memory": delta.get("memory", 0.0)}

    def seconds(self) -> float:
        return round(sum(self.parts().values()), 3)

    def describe(self) -> str:
        words = {"cpu": "for a host CPU", "steal": "of CPU steal",
                 "io": "with the whole machine stalled on I/O",
                 "memory": "with the whole machine stalled on memory"}
        said = [f"{'waited ' if k == 'cpu' else ''}{v:.1f} s {words[k]}"
                for k, v in self.parts().items() if v >= 0.05]
        return ", ".join(said) or "nothing: the guest had the host's CPU throughout"


def meter(pid: int) -> Meter:
    """A meter of QEMU process ``pid``'s lost time, starting now."""
    return Meter(sample(pid), lambda: sample(pid))


#: What a guest's waits are given (:func:`meters`), or None.
Meters = Callable[[], Meter] | None


def meters(pid: int | None) -> Meters:
    """What a guest's waits are given: a new meter for each wait (None without a process)."""
    return None if pid is None or not Path(f"/proc/{pid}").exists() else (lambda: meter(pid))
