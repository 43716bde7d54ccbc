"""What a run decided, decided once and written down.

The process that starts a run (pytest's controller, or the outer ``--backend lab`` run for the
run inside the lab host) decides the run folder, the owner tag of its temporary folders, the
accelerator and why, the QEMU under test, the machine's pace and the lab it runs in, and
writes them to ``<run folder>/run.json``. Everyone else reads that file: xdist workers get its
path in their ``workerinput``, the run inside the lab host gets it with ``--hh-run-config``.
No run state passes through environment variables.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from harness.core.errors import ConfigError
from harness.core.paths import write_atomic

FILE = "run.json"


@dataclasses.dataclass
class LabContext:
    """The lab host a run runs in, as the outer run set it up."""

    #: The lab's work folder (shared into the lab host): inventory, console log, lab.json.
    workdir: Path
    #: The lab host image: folder, build seconds, built now or cached, the QEMU running L1.
    image: dict = dataclasses.field(default_factory=dict)

    #: File the lab host's stage 2 writes its uptime at "lab: ready" to (see its job script).
    READY_FILE = "ready-uptime"

    def ready_seconds(self) -> float | None:
        try:
            return float((self.workdir / self.READY_FILE).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


@dataclasses.dataclass
class RunConfig:
    run_dir: Path
    #: Tag in the names of the run's temporary folders (``hh-<owner>-...``): the PID of the
    #: process that started the run, so a later run can tell a dead run's leftovers.
    owner: str
    backend: str = "emulated"
    accel: str | None = None
    accel_reason: str = ""
    qemu_binary: str = ""
    qemu_version: str = ""
    machines: tuple[str, ...] = ()
    #: The measured pace (harness.pace.Pace as a dict).
    pace: dict | None = None
    #: "builtin" or "user".
    image: str = "builtin"
    lab: LabContext | None = None
    #: The run's own saved guest states (a private temporary folder), or None.
    states_dir: str | None = None

    @classmethod
    def new(cls, report_root: Path, run_dir: Path | None = None, **fields) -> "RunConfig":
        """The plan of a run: its folder's path under ``report_root`` (chosen, not made) and
        what the options say; nothing is measured or written yet."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = run_dir or Path(report_root).resolve() / f"run-{stamp}-{os.getpid()}"
        return cls(run_dir=run_dir, owner=str(os.getpid()), **fields)

    @property
    def path(self) -> Path:
        return self.run_dir / FILE

    def write(self, path: Path | None = None) -> Path:
        path = path or self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        data = dataclasses.asdict(self)
        write_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode())
        return path

    @classmethod
    def load(cls, path: Path | str) -> "RunConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read the run configuration {path}: {e}",
                              hint="it is written by the process that started the run; "
                                   "start the run again") from e
        lab = data.pop("lab", None)
        return cls(**{**data, "run_dir": Path(data["run_dir"]),
                      "machines": tuple(data.get("machines") or ()),
                      "lab": LabContext(Path(lab["workdir"]), lab.get("image") or {}) if lab else None})
