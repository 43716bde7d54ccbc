"""The outer run: ``pytest --backend lab`` on the host builds the lab, boots L1 with the same
pytest command as its job, and waits; and what the run inside leaves for it."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import time
from pathlib import Path

from harness.images import builtin as images
from harness.core import pace
from harness.core.errors import ConfigError, HarnessError
from harness.core.paths import private_dir
from harness.qemu.machine import MACHINES
from harness.core.runconfig import LabContext, RunConfig
from harness.lab.host import HEARTBEAT, HEARTBEAT_SECONDS, LabHost, lab_argv, shares_for
from harness.lab.image import BACKPORTS, choose_lab_qemu, ensure_lab

#: What the run inside measured (its time factor and the L2 guests' deadlines), for lab.json.
INSIDE_FIGURES = "inside-pace.json"


def run_outer(config, echo=print) -> int:
    """``pytest --backend lab`` on the host: build, boot L1, run the same pytest inside it."""
    opt = config.option
    if opt.qemu_binary == BACKPORTS:
        raise ConfigError("--qemu-binary backports is for the emulated and vfio backends",
                          hint="the lab host runs on that QEMU already (--lab-qemu auto); the "
                               "QEMU under test inside it is the lab image's")
    t0 = time.monotonic()
    cache = Path(opt.image_cache or images.DEFAULT_CACHE).resolve()
    guest = images.ensure_builtin(cache, log=echo)
    image = ensure_lab(cache, log=echo)
    l1_qemu = choose_lab_qemu(opt.lab_qemu, opt.qemu_binary, cache, log=echo)
    report_root = Path(opt.report_dir).resolve()
    run = RunConfig.new(report_root, backend="lab", qemu_binary=opt.qemu_binary,
                        machines=tuple(opt.machine or MACHINES))
    # (a report folder others can write: no run folder planted there, nor a link, is used;
    # L1 runs as root what is written here)
    workdir = private_dir(run.run_dir) / "lab"
    workdir.mkdir(mode=0o700)
    run.lab = LabContext(workdir, {"folder": str(image.folder),
                                   "build_seconds": image.manifest.get("build_seconds"),
                                   "built_now": image.built_now,
                                   "l1_qemu": f"{l1_qemu.version} ({l1_qemu.origin})"})
    invocation = Path(config.invocation_params.dir).resolve()
    shares = shares_for([Path(config.rootpath), invocation, report_root, cache])
    job = write_job(workdir, run.write(), invocation, Path(config.rootpath).resolve(),
                    [str(a) for a in config.invocation_params.args])
    return _boot_and_wait(opt, image, l1_qemu, guest, workdir, shares, job, t0, echo)


def _boot_and_wait(opt, image, l1_qemu, guest, workdir: Path, shares, job: Path, t0: float,
                   echo) -> int:
    """Boot L1 with the job, copy its console until it powers off, write lab.json."""
    echo(f"hotplug-harness: backend=lab: lab host image {image.folder.name} "
         f"({'built in ' + str(image.manifest.get('build_seconds')) + ' s' if image.built_now else 'cached'}), "
         f"guest image {guest.manifest.get('kernel_version', '')}")
    echo(f"hotplug-harness: booting the lab host (L1: q35, TCG, emulated Intel IOMMU) with QEMU "
         f"{l1_qemu.version} ({l1_qemu.origin}); its console: {workdir / 'console.log'}")
    host_pace = pace.Pace.measure("host", opt.time_factor)
    l2_accel = opt.accel if opt.accel != "auto" else opt.lab_accel
    boot_timeout = host_pace(pace.LAB_BOOT)
    silence_timeout = host_pace(pace.LAB_SILENCE_NESTED_TCG if l2_accel == "tcg"
                                else pace.LAB_SILENCE)
    beat_timeout = host_pace(pace.LAB_BEAT_STOPPED)
    echo(f"hotplug-harness: {host_pace.describe()}; lab host deadlines: ready {boot_timeout:g} s, "
         f"silence {silence_timeout:g} s, {beat_timeout:g} s once its job beats (guests under "
         f"{l2_accel})")
    host = LabHost(lab_argv(image, l1_qemu.argv(), workdir, shares, job), workdir, echo=echo,
                   boot_timeout=boot_timeout, silence_timeout=silence_timeout,
                   beat_timeout=beat_timeout)
    try:
        qemu_status = host.run(time.monotonic() + opt.lab_timeout)
    except HarnessError as e:
        echo(f"hotplug-harness: ERROR [{e.kind}] {e}")
        return stopped(workdir, str(e))
    figures = {"lab_boot_seconds": host.marks.get("ready"), "lab_qemu": l1_qemu.version,
               "wall_seconds": round(time.monotonic() - t0, 1), "qemu_exit_status": qemu_status,
               "host_pace": dataclasses.asdict(host_pace),
               "host_deadlines": {"lab_ready": boot_timeout, "lab_silence": silence_timeout,
                                  "lab_beat_stopped": beat_timeout},
               "inside": _read_json(workdir / INSIDE_FIGURES)}
    (workdir / "lab.json").write_text(json.dumps(figures, indent=2) + "\n")
    return _outcome(workdir, host, figures, echo)


#: In the run's lab folder when the lab host hung, wedged or stopped before its run ended: the
#: exit status 3 that goes with it is the lab's, not pytest's own (an internal error is 3 too).
STOPPED = "stopped"


def stopped(workdir: Path, why: str) -> int:
    (workdir / STOPPED).write_text(why.splitlines()[0] + "\n")
    return 3


def _outcome(workdir: Path, host: "LabHost", figures: dict, echo) -> int:
    """The exit status of the run inside, or 3 when the lab host stopped before it ended."""
    status_file = workdir / "exit_status"
    qemu_status = figures["qemu_exit_status"]
    if not status_file.exists():
        echo(f"hotplug-harness: ERROR [lab] the lab host stopped (QEMU exit status {qemu_status}) "
             f"before the test run inside it finished")
        echo(f"  what to do: read {host.console_log} (the lab host's console)")
        return stopped(workdir, f"the lab host stopped (QEMU exit status {qemu_status})")
    echo(f"hotplug-harness: lab host ready in {figures['lab_boot_seconds']} s; whole lab run "
         f"{figures['wall_seconds']} s")
    return int(status_file.read_text().strip() or 3)


_BEAT = ("import time\n"
         "while True:\n"
         "    with open({path!r}, 'w') as f, open('/proc/uptime') as u:\n"
         "        f.write(u.read())\n"
         "    time.sleep({every})\n")


def write_job(workdir: Path, run_config: Path, invocation: Path, root: Path, args: list[str]) -> Path:
    """The job the lab host's stage 2 runs (given the lab host's uptime at "lab: ready"): the
    same pytest command, inside, reading the run configuration the outer run wrote."""
    job = workdir / "job.sh"
    job.write_text(
        "# Written by the outer `pytest --backend lab`; run by the lab host's stage 2 with its\n"
        "# uptime at ready as $1.\n"
        f"echo \"$1\" > {shlex.quote(str(workdir / LabContext.READY_FILE))}\n"
        f"export PYTHONPATH={shlex.quote(str(root))} PYTHONDONTWRITEBYTECODE=1\n"
        # (the user who ran sudo on the host owns what they own in the lab host too: its
        # files there pass the same checks, the checkout on PYTHONPATH among them)
        + (f"export SUDO_UID={os.environ['SUDO_UID']}\n"
           if os.environ.get("SUDO_UID", "").isdigit() else "") +
        f"cd {shlex.quote(str(invocation))} || exit 2\n"
        # (the lab host's heartbeat while the run prints nothing: harness.lab.host.HEARTBEAT)
        # (in Python: the lab host's userland has no coreutils, and a shell loop whose
        # sleep is missing spins)
        f"python3.11 -c {shlex.quote(_BEAT.format(path=str(workdir / HEARTBEAT), every=HEARTBEAT_SECONDS))} &\n"
        "beat=$!\n"
        # (-P: the invocation folder is not put first on sys.path, so no pytest.py planted
        # there runs as root in the lab host; the harness comes from PYTHONPATH)
        f"python3.11 -P -m pytest {shlex.join(['--hh-run-config', str(run_config), *args])}\n"
        "status=$?\n"
        "kill $beat\n"
        f"echo $status > {shlex.quote(str(workdir / 'exit_status'))}\n")
    return job


def write_inside_figures(workdir: Path, deadlines: "pace.Deadlines") -> None:
    figures = dataclasses.asdict(deadlines)
    (workdir / INSIDE_FIGURES).write_text(json.dumps(figures, indent=2) + "\n")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None

