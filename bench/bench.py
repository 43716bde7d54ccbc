#!/usr/bin/env python3
"""Benchmark figures for hotplug-harness. Prints them; asserts nothing.

    .venv/bin/python bench/bench.py [--boots 5] [--cycles 10] [--soak 50] [--skip-matrix]

1. guest image build time (a fresh build into a temporary cache)
2. QEMU start to guest ready, median/max over --boots boots, pc and q35; and side by side, the
   same guest restored from its saved state (harness.snapshot): save time, state size, restore
   to ready, and restore/boot as a ratio measured in this run (--qemu-binary: another QEMU)
3. each hotplug latency (device_add sent -> guest_visible, driver_bound, interface_addressed,
   disk_present; device_del -> DEVICE_DELETED, guest_gone), median and max over --cycles cycles
4. a --soak cycle add/remove soak of one NIC: QEMU RSS and open files before/after, and whether
   the guest's state is back to its baseline
5. the whole `make qualify` matrix wall time, serially and with 2, 3 and 4 workers (each run
   saving its own guest states); then with 4 workers: twice with one state cache (as make
   qualify's STATES: the first run saves, the second restores every shape the first booted) and
   with --no-snapshot (every guest booted), back to back, and the ratios
6. the lab (--backend lab, docs/lab.md): lab image build (fresh), lab host ready, L2 guest boot
   under nested KVM, and the wall time of `make lab`'s tests (--lab-tests to choose others)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.qemu import accel
from harness.guest import checks
from harness.scenario import devices
from harness.images import builtin as images
from harness import lab
from harness.guest import latency
from harness.core import pace
from harness.report import records
from harness.core.errors import HarnessError
from harness.guest.guest import Guest
from harness.virt import connect
from harness.virt.domain import DomainGuest
from harness.qemu.machine import GuestSpec
from harness.guest.pool import GuestPool, guest_state, probe_boot
from harness.guest.snapshot import StateCache


def stats(values: list[float]) -> str:
    if not values:
        return "n=0"
    return f"median {statistics.median(values):.3f} s, max {max(values):.3f} s (n={len(values)})"


def qemu_rss_kb(guest: Guest) -> int:
    for line in Path(f"/proc/{guest.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def qemu_fds(guest: Guest) -> int:
    return len(os.listdir(f"/proc/{guest.process.pid}/fd"))


def bench_build() -> None:
    with tempfile.TemporaryDirectory(prefix="hh-bench-") as d:
        t0 = time.monotonic()
        images.ensure_builtin(Path(d), log=lambda s: None)
        print(f"image build (fresh, incl. apt-get download): {time.monotonic() - t0:.2f} s")


def bench_boot(image, n: int, workdir: Path, qemu_version: str, **guest) -> None:
    for machine in ("pc", "q35"):
        times = []
        for i in range(n):
            with Guest(GuestSpec(machine=machine), image, workdir=workdir / f"boot-{machine}-{i}",
                       **guest) as g:
                times.append(g.boot_seconds)
        print(f"QEMU start -> guest ready, {machine}: {stats(times)}")
        # The pool's way: the first guest boots and is saved, the next ones are restored.
        states = StateCache(workdir / f"states-{machine}", qemu_version=qemu_version)
        pool = GuestPool(image, workdir=workdir / f"pool-{machine}", reuse=False, states=states,
                         **guest)
        try:
            first = pool.acquire(GuestSpec(machine=machine))
            restores, loads = [], []
            for _ in range(n):
                g = pool.acquire(GuestSpec(machine=machine))
                assert g.started == "restored", pool.boot_retries
                restores.append(g.boot_seconds)
                loads.append(g.launch_marks["loaded"])
                g.close()
        finally:
            pool.close()
        saved = first.saved or {}
        print(f"    restored from a saved state, {machine}: {stats(restores)} (of which loading "
              f"the state: median {statistics.median(loads):.3f} s); saving it took "
              f"{saved.get('save_seconds')} s, {saved.get('bytes', 0) >> 20} MiB; restore/boot "
              f"{statistics.median(restores) / statistics.median(times):.3f} (medians, this run)")


def cycle(guest: Guest, device, device_id: str) -> dict[str, float]:
    clock = latency.measure_offset(guest)
    before_usb = checks.lsusb(guest) if device.role == "usb-device" else None
    add_sent = time.monotonic()
    plugged = device.plug(guest, device_id)
    fn = checks.pci_function(guest, device_id)
    if device.role == "nic":
        checks.nic_address(guest, plugged)
    elif device.role == "usb-device":
        checks.guest_usb_appears(guest, before_usb, plugged.facts.product)
    elif fn is not None:
        checks.guest_driver_bound(guest, fn, device.guest_driver)
    del_sent = time.monotonic()
    result = device.unplug(guest, plugged)
    if fn is not None:
        checks.guest_lacks_pci(guest, fn)
    events = latency.parse_trace(guest.shell.run(latency.TRACE_COMMAND).output)
    address = fn.address if fn else None
    usb = None if fn else latency.usb_device_name(events, clock, add_sent)
    out = {"device_add": plugged.add_seconds, "device_del_to_event": result.seconds,
           **latency.plug_latencies(events, clock, add_sent, address),
           **latency.unplug_latency(events, clock, del_sent, address, usb)}
    return out


def bench_latencies(image, n: int, workdir: Path, **guest) -> None:
    cases = [("q35-acpi", GuestSpec(machine="q35"), devices.EMULATED["nic"][0]),
             ("pc", GuestSpec(machine="pc"), devices.EMULATED["nic"][1]),
             ("q35-acpi", GuestSpec(machine="q35"), devices.EMULATED["sata-controller"][0]),
             ("q35-xhci", GuestSpec(machine="q35", usb="xhci"), devices.EMULATED["usb-device"][0])]
    for label, spec, device in cases:
        figures: dict[str, list[float]] = {}
        with Guest(spec, image, workdir=workdir / f"lat-{label}-{device.id}", **guest) as g:
            for i in range(n):
                for k, v in cycle(g, device, f"d{i}").items():
                    figures.setdefault(k, []).append(v)
        print(f"latencies, {device.role} {device.id} on {label}, {n} cycles:")
        for k, v in figures.items():
            print(f"    {k:<22} {stats(v)}")


def bench_drivers(image, n: int, workdir: Path, **guest) -> None:
    """The NIC's attach and detach through QMP and through libvirt (--driver libvirt), in one
    run: a guest of each driver side by side, their cycles taken in turn, so both sides see the
    same machine at the same time; the ratio is libvirt's over QMP's."""
    try:
        connect.connection()
    except HarnessError as e:
        print(f"drivers: skipped, libvirt is not usable here: {e.message}")
        return
    nic = devices.EMULATED["nic"][0]
    for label, spec in (("pc", GuestSpec(machine="pc")), ("q35-acpi", GuestSpec(machine="q35"))):
        figures: dict[str, dict[str, list[float]]] = {"qmp": {}, "libvirt": {}}
        with Guest(spec, image, workdir=workdir / f"drv-qmp-{label}", **guest) as q, \
                DomainGuest(spec, image, workdir=workdir / f"drv-lv-{label}", name=f"bench-{label}",
                            **guest) as lv:
            figures["qmp"]["boot"], figures["libvirt"]["boot"] = [q.boot_seconds], [lv.boot_seconds]
            for i in range(n):
                for driver, g in (("qmp", q), ("libvirt", lv)):
                    for k, v in cycle(g, nic, f"d{i}").items():
                        figures[driver].setdefault(k, []).append(v)
        print(f"drivers, {nic.id} on {label}, {n} cycles each, taken in turn (median, libvirt/qmp):")
        for k in ("boot", "device_add", "device_del_to_event", "interface_addressed", "guest_gone"):
            a, b = figures["qmp"].get(k), figures["libvirt"].get(k)
            if a and b:
                ma, mb = statistics.median(a), statistics.median(b)
                print(f"    {k:<22} qmp {ma:7.3f} s   libvirt {mb:7.3f} s   ratio {mb / ma:5.2f}")


def bench_soak(image, n: int, workdir: Path, **guest) -> None:
    device = devices.EMULATED["nic"][1]  # virtio-net: the fastest full cycle, so most cycles/min
    with Guest(GuestSpec(machine="q35"), image, workdir=workdir / "soak", **guest) as g:
        baseline = guest_state(g)
        rss0, fds0 = qemu_rss_kb(g), qemu_fds(g)
        t0 = time.monotonic()
        warm = min(5, n)  # after warm-up QEMU's allocator has reached its working set
        rss5 = rss0
        for i in range(n):
            cycle(g, device, f"s{i}")
            if i == warm - 1:
                rss5 = qemu_rss_kb(g)
        elapsed = time.monotonic() - t0
        rss1, fds1 = qemu_rss_kb(g), qemu_fds(g)
        same = guest_state(g) == baseline
    print(f"soak, {n} add/remove cycles of {device.id} on q35 in {elapsed:.1f} s "
          f"({elapsed / n:.2f} s/cycle):")
    print(f"    QEMU RSS {rss0} kB at start, {rss5} kB after {warm} cycles, {rss1} kB at the end "
          f"(growth after warm-up {rss1 - rss5:+d} kB)")
    print(f"    QEMU open files {fds0} -> {fds1}; guest state back to baseline: {same}")


#: The matrix runs: workers and extra options. "@cache" is one folder for the bench's runs, as
#: make qualify's STATES: its first run saves the states (cold), the next restores them (warm).
MATRIX_RUNS = (("0",), ("2",), ("3",), ("4",), ("4", "--snapshot-cache=@cache"),
               ("4", "--snapshot-cache=@cache"), ("4", "--no-snapshot"))


def bench_matrix(qemu_binary: str, runs=MATRIX_RUNS) -> None:
    walls: list[tuple[tuple, float]] = []
    with tempfile.TemporaryDirectory(prefix="hh-bench-states-") as cache:
        for jobs, *extra in runs:
            args = [a.replace("@cache", cache) for a in extra]
            t0 = time.monotonic()
            p = subprocess.run([str(REPO / ".venv/bin/pytest"), "tests/scenarios", "-q", "-n", jobs,
                                "--dist", "loadgroup", "--qemu-binary", qemu_binary, *args],
                               cwd=REPO, capture_output=True, text=True)
            tail = [l for l in p.stdout.splitlines() if " passed" in l or " failed" in l][-1:]
            walls.append(((jobs, *extra), time.monotonic() - t0))
            print(f"make qualify matrix, -n {jobs} {' '.join(extra)}: {walls[-1][1]:.1f} s "
                  f"wall ({tail[0].strip('= ') if tail else 'exit ' + str(p.returncode)})")
    cold = [w for r, w in walls if r == ("4",)]
    cached = [w for r, w in walls if r == ("4", "--snapshot-cache=@cache")]
    booted = [w for r, w in walls if r == ("4", "--no-snapshot")]
    if booted and cold:
        print(f"make qualify, saved states of this run / --no-snapshot (-n 4): "
              f"{cold[0] / booted[0]:.2f}")
    if booted and len(cached) > 1:
        print(f"make qualify, states saved by the run before / --no-snapshot (-n 4): "
              f"{cached[1] / booted[0]:.2f}")


LAB_TESTS = ["tests/scenarios/test_nic.py", "tests/scenarios/test_usb.py",
             "tests/scenarios/test_sata.py", "tests/scenarios/test_passthrough_failures.py"]


def bench_lab(tests: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="hh-bench-lab-") as d:
        t0 = time.monotonic()
        image = lab.ensure_lab(Path(d), log=lambda s: None)
        print(f"lab image build (fresh, incl. apt-get download of "
              f"{len(image.manifest['packages'])} packages): {time.monotonic() - t0:.2f} s")
    with tempfile.TemporaryDirectory(prefix="hh-bench-lab-reports-") as reports:
        t0 = time.monotonic()
        p = subprocess.run([str(REPO / ".venv/bin/pytest"), "--backend", "lab", "-q", *tests,
                            "--report-dir", reports], cwd=REPO, capture_output=True, text=True)
        wall = time.monotonic() - t0
        runs = sorted(Path(reports).glob("run-*"))
        if not runs or not (runs[-1] / "summary.json").exists():
            print(f"lab run: no report (exit {p.returncode}); its output ends:")
            print("\n".join(p.stdout.splitlines()[-15:]))
            return
        summary = json.loads((runs[-1] / "summary.json").read_text())
        figures = json.loads((runs[-1] / "lab" / "lab.json").read_text())
    boots = list(records.guest_boots(summary["tests"]).values())
    c = summary["counts"]
    print(f"lab host: QEMU {figures.get('lab_qemu')} start to ready {figures['lab_boot_seconds']} s")
    inside = (figures.get("inside") or {}).get("pace") or {}
    print(f"time factor: host {figures.get('host_pace', {}).get('factor')}, inside the lab host "
          f"{inside.get('factor')} (probe {inside.get('probe_seconds')} s, reference "
          f"{inside.get('reference_seconds')} s)")
    print(f"L2 guest boot (nested KVM in the lab host): {stats(boots)}")
    print(f"lab suite ({len(summary['tests'])} tests: "
          + ", ".join(f"{n} {o}" for o, n in c.items() if n)
          + f"): {wall:.1f} s wall, {summary['test_seconds_total']:.1f} s in tests")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--boots", type=int, default=5)
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--soak", type=int, default=50)
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--skip-matrix", action="store_true")
    ap.add_argument("--skip-lab", action="store_true")
    ap.add_argument("--drivers-only", action="store_true",
                    help="only the NIC's attach/detach through QMP next to libvirt")
    ap.add_argument("--boot-only", action="store_true",
                    help="only 2 (boot and restore side by side): no latencies, soak, matrix, lab")
    ap.add_argument("--lab-tests", nargs="+", default=LAB_TESTS, metavar="PATH")
    ap.add_argument("--qemu-binary", default="qemu-system-x86_64",
                    help="the QEMU to measure (boot, restore, latencies, matrix)")
    ap.add_argument("--matrix-jobs", nargs="+", default=None, metavar="RUN",
                    help="only these matrix runs, e.g. 4 4,--no-snapshot (@cache: the bench's state cache)")
    args = ap.parse_args()
    if not args.skip_build:
        bench_build()
    image = images.ensure_builtin(log=lambda s: None)
    host_pace = pace.Pace.measure("host")
    choice = accel.choose("auto", probe=lambda: probe_boot(
        image, args.qemu_binary, pace.Deadlines.for_run(host_pace, accel="kvm")))
    guest = {"accel": choice.name, "deadlines": pace.Deadlines.for_run(host_pace, accel=choice.name),
             "qemu_binary": args.qemu_binary}
    qemu = subprocess.run([args.qemu_binary, "--version"], capture_output=True, text=True).stdout
    print(f"hotplug-harness bench: {os.cpu_count()} cores, accel {choice.name} ({choice.reason}), "
          f"{qemu.splitlines()[0]}")
    print(f"machine speed: {host_pace.describe()}")
    with tempfile.TemporaryDirectory(prefix="hh-bench-") as d:
        work = Path(d)
        if args.drivers_only:
            bench_drivers(image, args.cycles, work, **guest)
            return 0
        bench_boot(image, args.boots, work, qemu.splitlines()[0], **guest)
        if args.boot_only:
            return 0
        bench_latencies(image, args.cycles, work, **guest)
        bench_drivers(image, args.cycles, work, **guest)
        bench_soak(image, args.soak, work, **guest)
    if not args.skip_matrix:
        bench_matrix(args.qemu_binary, *([tuple(tuple(r.split(",")) for r in args.matrix_jobs)]
                                         if args.matrix_jobs else []))
    if not args.skip_lab:
        bench_lab(args.lab_tests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
