"""``python -m harness``: the harness's commands outside pytest.

    image build|path   build the built-in guest image (cached), or print where it is;
                       --distro systemd|cloudinit[-ifupdown|-nm]: a systemd Debian guest,
                       or one that behaves like a stock cloud image (root, mmdebstrap)
    doctor             check this host's prerequisites for the vfio backend
    discover           list the host devices that could play each role
    plan --inventory F a dry run: what a run would change on this host, and the evidence
                       that each device is idle (or why it is refused)
    restore            give back host devices a killed run left on vfio-pci
    bind BDF           put a host device on vfio-pci by hand (the guide's vfio-pci.sh -h),
                       through the same safety checks and journal as a run
    release BDF        give a device bound with `bind` back to its host driver
    merge RUN_DIR...   one qualification report from several runs (hosts, QEMU builds,
                       guests), with what they differ in as an axis, and one JUnit file
    compare OLD NEW    what changed between two runs (outcomes, coverage, notes, pass
                       rates, latencies); exits 1 on a regression
    trend RUNS_DIR     per scenario, pass rate and latency over the last runs
    prune [DIR]        remove all but the newest run folders (--keep N; make clean)
    lab-runs -- ARGS   pytest --backend lab ARGS, with a wedged lab host restarted for the
                       tests left (--runs N in all, default 3; make lab-smoke)
    check-pytest-args  as root, refuse HH_PYTEST_ARGS and PYTEST_ADDOPTS holding options that
                       load code before the harness's checks (-p, -c, -o, @FILE...) or a
                       path another user could have written (make nightly)
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from harness.cli import host, report
from harness.lab import reruns
from harness.core.errors import HarnessError
from harness.core.paths import check_pytest_options, check_search_path
from harness.core.text import shown
from harness.images import builtin as images
from harness.images import distro


def _image(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m harness image")
    p.add_argument("action", choices=("build", "path"))
    p.add_argument("--cache", default=str(images.DEFAULT_CACHE))
    p.add_argument("--distro", choices=distro.DISTROS, default=None,
                   help="a conventional distribution guest instead of the built-in one (needs "
                        "root and mmdebstrap); prints the pytest options that use it")
    args = p.parse_args(argv)

    if args.distro:
        guest = distro.ensure_distro(args.distro, Path(args.cache))
        lines = [f"{args.distro} guest ready: {guest.folder}",
                 f"  over SSH:     {shlex.join(guest.pytest_args('ssh'))}"]
        if guest.manifest.get("console_prompt"):
            lines.append(f"  over ttyS0:   {shlex.join(guest.pytest_args('console'))}")
        print(guest.folder if args.action == "path" else "\n".join(lines))
        return 0
    image = images.ensure_builtin(Path(args.cache))
    if args.action == "path":
        print(image.kernel.parent)
    else:
        print(f"image ready: {image.kernel.parent} (kernel {image.manifest['kernel_version']}, "
              f"built in {image.manifest['build_seconds']} s)")
    return 0


def _check_pytest_args(argv: list[str]) -> int:
    """``make nightly``, before root's pytest: the options CI hands it through the environment
    (``HH_PYTEST_ARGS``, and ``PYTEST_ADDOPTS`` they are added to) hold none that pytest acts on
    before any check of the harness can run (:func:`harness.core.paths.check_pytest_options`:
    ``-p``, ``-c``, ``-o``, ``--rootdir``, ``--confcutdir``, ``@FILE``...), and each word it may
    take as a path is held to its owner (pytest chooses its ini file from the folders above
    it). Read from the environment, never from make's command line or a shell's. Not root:
    nothing to check."""
    argparse.ArgumentParser(prog="python -m harness check-pytest-args",
                            description=_check_pytest_args.__doc__).parse_args(argv)
    if os.geteuid() == 0:
        for var in ("PYTEST_ADDOPTS", "HH_PYTEST_ARGS"):
            check_pytest_options(os.environ.get(var, ""), var)
    return 0


COMMANDS = {"image": _image, "compare": report.compare_main, "merge": report.merge_main,
            "trend": report.trend_main, "prune": report.prune_main, "lab-runs": reruns.main,
            "doctor": host.doctor_main, "discover": host.discover_main, "plan": host.plan_main,
            "restore": host.restore_main, "bind": host.bind_main, "release": host.release_main,
            "check-pytest-args": _check_pytest_args}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):  # (a name another user chose, not UTF-8, that
        if hasattr(stream, "reconfigure"):   # reaches a print unshown: \udcff, no traceback)
            stream.reconfigure(errors="backslashreplace")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        check_search_path()  # (as root: every command may run ip, ss, qemu-img... by name)
        return COMMANDS[argv[0]](argv[1:])
    except HarnessError as e:
        print(shown(f"error [{e.kind}]: {e}"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
