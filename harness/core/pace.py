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

    def following(self, ready_seconds: float, image: str = "builtin") -> "Pace":
        """This pace, or a slower one if a guest took ``ready_seconds`` from QEMU's start to
        ready: the probe times the CPU of the machine that starts QEMU, but a guest may run far
        slower than that CPU (under TCG inside the lab host, whose probe says 1.0, an L2 guest
        boots ~9x slower than the reference guest; a user's guest on a loaded host). So the
        first boot, against :data:`REFERENCE_READY`, measures where the guest runs. Only a
        guest more than :data:`FOLLOW_ABOVE` times slower than the probe says counts (boots
        of 4 guests at once on 2 cores vary that much); a factor given by hand stays.

        >>> p = Pace(1.0, 1.2, 1.2, "lab", "measured")
        >>> p.following(82.8).factor, p.following(13.0) is p
        (8.9, True)
        """
        factor = round(ready_seconds / REFERENCE_READY[image], 2)
        if self.source == "--time-factor" or factor <= self.factor * FOLLOW_ABOVE:
            return self
        return Pace(factor, self.probe_seconds, self.reference_seconds, self.where,
                    f"a guest's boot: ready in {ready_seconds:.1f} s, reference "
                    f"{REFERENCE_READY[image]:g} s")

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
#: TCG inside the lab host (L2 under TCG in L1 under TCG): the built-in guest ready in
#: 82.8 s (issue 34), so its boot deadline is of its own kind; later deadlines then follow the
#: first boot (Pace.following).
NESTED_TCG_BOOT = {"builtin": 300.0, "user": 1200.0}
#: QEMU start to ready of a guest on the reference machine under TCG: the built-in guest 9.2 s
#: (pc) and 9.3 s (q35), median of 5 (bench); a systemd Debian 12 guest about 33 s. What the
#: first boot of a run is measured against (Pace.following).
REFERENCE_READY = {"builtin": 9.3, "user": 33.0}
#: A first boot this many times slower than the probe's factor says makes deadlines follow it;
#: below, it is the noise of a loaded machine (4 workers' boots on 2 cores: 6-15 s).
FOLLOW_ABOVE = 1.5
#: The lab host (L1): QEMU start to "lab: ready" 7.4-8.6 s; silence after ready means hung
#: (the run inside prints at the end of each test; its longest test took 173-185 s, failing
#: ones up to 134 s; 300 s is 1.6 times the longest before the host's time factor scales it.
#: A wedged lab that prints nothing costs this much before `make lab`'s next run, of 3 at
#: most: it was 600 s).
LAB_BOOT = 300.0
LAB_SILENCE = 300.0
#: ... with the guests under TCG inside the lab host (--lab-accel tcg), whose first test alone
#: (an L2 boot of 83-155 s, then commands of 6-12 s each over the console) passed 300 s
#: without a line; that mode does not wedge the lab host, so a long silence costs little.
LAB_SILENCE_NESTED_TCG = 900.0
#: Once the lab host's job beats (harness.lab.host.HEARTBEAT, every 20 s), a healthy L1 never
#: leaves it and its console both silent for long: this many seconds (6 beats missed) of both
#: means hung. A wedge that stops the console mid-test used to cost the whole silence deadline
#: (324 s in one `.ci/run`) before the lab ran again for the tests left.
LAB_BEAT_STOPPED = 120.0
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
    #: ``builtin`` or ``user``: which guest these are for (its reference boot, REFERENCE_READY).
    image: str = "builtin"

    @classmethod
    def for_run(cls, pace: Pace, *, accel: str, image: str = "builtin",
                boot: float | None = None) -> "Deadlines":
        """``image``: ``builtin`` or ``user`` (a user's kernel or disk: a distribution's boot);
        ``boot``: ``--boot-timeout``, taken as given (not scaled)."""
        kind = "kvm" if accel == "kvm" else "tcg"
        reference_boot = (NESTED_TCG_BOOT[image] if pace.where == "lab" and kind == "tcg"
                          else BOOT[(image, kind)])
        return cls(qmp_connect=pace(QMP_CONNECT[pace.where]),
                   console_connect=pace(CONSOLE_CONNECT[pace.where]),
                   boot=boot if boot is not None else pace(reference_boot),
                   command=pace(COMMAND), unplug=pace(UNPLUG), pace=pace, image=image)

    def following(self, ready_seconds: float) -> "Deadlines":
        """These deadlines for guests as slow as one that was ready ``ready_seconds`` after its
        QEMU started (:meth:`Pace.following`): commands, device waits and unplugs scale with
        the guest's speed; QMP and console connects (the starting machine's) and the boot
        deadline (the guest just met it) stay."""
        pace = self.pace.following(ready_seconds, self.image)
        if pace is self.pace:
            return self
        return dataclasses.replace(self, command=pace(COMMAND), unplug=pace(UNPLUG), pace=pace)

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
