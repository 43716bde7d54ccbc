"""How fast this machine is, and every deadline of a guest's life derived from that.

Each deadline written in the harness is a *reference figure*: what the reference machine (2 cores,
TCG, the machine the figures in README.md and docs/lab.md come from) needs, with headroom for a
loaded machine. Machines of the same kind differ: one ran the whole suite 1.5-2.5x slower than
another, and inside the lab host (L1 under TCG) everything is slower again. So at session start
a short probe is timed (interpreted work plus process starts, the two costs of starting QEMU and
booting a guest under emulation) and compared with the same probe on the reference machine, in
the same place (``host`` or inside the ``lab`` host); ``factor`` is how many times slower this
machine is, never below 1. Every deadline below is its reference figure times ``factor``.
``--time-factor N`` sets the factor by hand (a loaded CI machine, a debug build of QEMU).

>>> p = Pace(factor=2.0, probe_seconds=0.2, reference_seconds=0.1, where="host", source="measured")
>>> Deadlines.for_run(p, accel="tcg", image="builtin").boot
120.0
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

#: The probe's time on the reference machine (best of 3 rounds; see :func:`probe_seconds`):
#: on the host, and inside the lab host (L1: q35, TCG, QEMU 10.0 running it).
REFERENCE_PROBE_SECONDS = {"host": 0.065, "lab": 1.20}
WHERE = tuple(REFERENCE_PROBE_SECONDS)


def _interpreted_work() -> int:
    """A fixed amount of interpreter work: calls, branches, dict and list traffic."""
    total, table = 0, {}
    for i in range(400_000):
        total = (total + i * i) % 1_000_003
        table[i & 1023] = [total, i]
    return total + len(table)


def probe_seconds(rounds: int = 3) -> float:
    """The best of ``rounds`` timings of the probe: fixed interpreted work plus 20 starts of
    ``sh -c :`` (fork, exec, dynamic loading: what a QEMU start is made of). The best round is
    the machine's speed; the others carry whatever else the machine was doing."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        _interpreted_work()
        for _ in range(20):
            subprocess.run(["sh", "-c", ":"], check=True)
        best = min(best, time.perf_counter() - t0)
    return best


@dataclasses.dataclass(frozen=True)
class Pace:
    """This machine's speed relative to the reference machine (``factor`` >= 1: slower)."""

    factor: float
    probe_seconds: float | None
    reference_seconds: float
    where: str
    #: ``measured`` (the probe) or ``--time-factor`` (given by hand).
    source: str

    @classmethod
    def measure(cls, where: str, override: float | None = None) -> "Pace":
        if where not in WHERE:
            raise ValueError(f"where must be one of {WHERE}, not {where!r}")
        reference = REFERENCE_PROBE_SECONDS[where]
        if override is not None:
            return cls(round(override, 2), None, reference, where, "--time-factor")
        seconds = probe_seconds()
        return cls(round(max(1.0, seconds / reference), 2), round(seconds, 4), reference, where,
                   "measured")

    def __call__(self, reference_seconds: float) -> float:
        """A reference figure, as this machine needs it."""
        return round(reference_seconds * self.factor, 1)

    def describe(self) -> str:
        if self.source != "measured":
            return f"time factor {self.factor:g} ({self.source}, {self.where})"
        return (f"time factor {self.factor:g} ({self.where}: probe {self.probe_seconds * 1000:.0f} "
                f"ms, reference {self.reference_seconds * 1000:.0f} ms)")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Pace":
        return cls(**json.loads(text))


#: Reference figures (seconds) of a guest's life. Measured on the reference machine: QEMU start
#: to a QMP connection 0.1-0.3 s on the host; for an L2 QEMU inside the lab host 0.6-4.6 s, once
#: 27.5 s alone, up to 51.9 s with two make lab runs sharing the machine (the old fixed 15 s
#: failed on a slower machine); the
#: built-in guest ready 9 s under TCG, an L2 guest 8-24 s under nested KVM in the lab, a
#: systemd Debian image 28-55 s under TCG (more with 3 guests running).
QMP_CONNECT = {"host": 15.0, "lab": 90.0}
CONSOLE_CONNECT = {"host": 10.0, "lab": 30.0}
BOOT = {("builtin", "tcg"): 60.0, ("builtin", "kvm"): 60.0,
        ("user", "tcg"): 240.0, ("user", "kvm"): 120.0}
#: The lab host (L1): QEMU start to "lab: ready" 7.4-8.6 s; silence after ready means hung
#: (the run inside prints at the end of each test; its longest test took 173-185 s, failing
#: ones up to 134 s; 300 s is 1.6 times the longest before the host's time factor scales it.
#: A wedged lab that prints nothing costs this much before `make lab`'s next run, of 3 at
#: most: it was 600 s).
LAB_BOOT = 300.0
LAB_SILENCE = 300.0
#: A guest command's default deadline, and the default deadline of an unplug in a scenario.
COMMAND = 30.0
UNPLUG = 20.0


@dataclasses.dataclass(frozen=True)
class Deadlines:
    """The deadlines one guest gets, in seconds on this machine (reference figures x factor)."""

    qmp_connect: float
    console_connect: float
    boot: float
    command: float
    unplug: float
    pace: Pace

    @classmethod
    def for_run(cls, pace: Pace, *, accel: str, image: str = "builtin",
                boot: float | None = None) -> "Deadlines":
        """``image``: ``builtin`` or ``user`` (a user's kernel or disk: a distribution's boot);
        ``boot``: ``--boot-timeout``, taken as given (not scaled)."""
        kind = "kvm" if accel == "kvm" else "tcg"
        return cls(qmp_connect=pace(QMP_CONNECT[pace.where]),
                   console_connect=pace(CONSOLE_CONNECT[pace.where]),
                   boot=boot if boot is not None else pace(BOOT[(image, kind)]),
                   command=pace(COMMAND), unplug=pace(UNPLUG), pace=pace)

    def scaled(self, reference_seconds: float) -> float:
        return self.pace(reference_seconds)

    def describe(self) -> str:
        return (f"{self.pace.describe()}; deadlines: QMP connect {self.qmp_connect:g} s, console "
                f"{self.console_connect:g} s, boot {self.boot:g} s, command {self.command:g} s, "
                f"unplug {self.unplug:g} s")


def reference() -> "Deadlines":
    """The reference machine's deadlines (factor 1), for tools and tests that make guests
    outside a pytest run."""
    return Deadlines.for_run(Pace(1.0, None, REFERENCE_PROBE_SECONDS["host"], "host", "default"),
                             accel="tcg")


def where_am_i() -> str:
    """``lab`` inside the lab host (its stage 2 is there), else ``host``."""
    return "lab" if Path("/etc/hh/lab-stage2").exists() else "host"


def _main() -> None:  # python -m harness.pace: what the probe says here
    where = where_am_i()
    runs = [probe_seconds() for _ in range(5)]
    print(json.dumps({"where": where, "probe_seconds": runs, "pid": os.getpid()}))


if __name__ == "__main__":
    _main()
