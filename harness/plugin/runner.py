"""Running and recording tests: --retry-dead-guest's protocol, one result record per test, and
the run's end (hygiene check, "nothing tested", summary and report)."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path

import pytest

from harness.plugin import collect
from harness.run import hygiene
from harness.run import identity
from harness.images import builtin as images
from harness.report import junit, records
from harness.report import summary as report
from harness.report import retention
from _pytest.junitxml import xml_key
from _pytest.runner import runtestprotocol
from harness.core.errors import HarnessError

STASH_REPORTS = pytest.StashKey[dict]()
STASH_RECORD = pytest.StashKey[dict]()
#: What :func:`finish` wrote the run's summary from, for :func:`give_back` to write it again.
STASH_SUMMARY = pytest.StashKey[dict]()


def plain_nodeid(nodeid: str) -> str:
    """The node id without the ``@group`` suffix xdist's loadgroup adds."""
    at, bracket = nodeid.rfind("@"), nodeid.rfind("]")
    return nodeid[:at] if at > bracket else nodeid


_REPEAT = re.compile(r"-?repeat(\d+)\]$")


def base_nodeid(nodeid: str) -> tuple[str, int | None]:
    """A --repeat test's node id without its repetition, and the repetition:
    ``t[pc-e1000e-repeat3]`` -> ``(t[pc-e1000e], 3)``; ``t[repeat2]`` -> ``(t, 2)``."""
    m = _REPEAT.search(nodeid)
    if not m:
        return nodeid, None
    base = nodeid[:m.start()] + "]"
    return (base[:-2] if base.endswith("[]") else base), int(m.group(1))


def bundle_name(nodeid: str) -> str:
    name = plain_nodeid(nodeid).split("::", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.\[\]-]+", "_", name)[:150]


def run_with_retries(item: pytest.Item, nextitem, attempts: int) -> None:
    """--retry-dead-guest: a test that failed while one of its guests' QEMU exited on its own
    (or stopped answering) runs again, up to ``attempts`` runs in all. Only such failures; the
    failed attempt's bundle is kept beside the next one's, and the test's notes say so."""
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    properties = list(item.user_properties)
    earlier: list[str] = []
    for attempt in range(1, attempts + 1):
        item.stash[STASH_REPORTS], item.stash[STASH_RECORD] = {}, {}
        item.user_properties[:] = properties
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        record = item.stash[STASH_RECORD]
        why = _guests_lost(record)
        if attempt == attempts or not why or not any(r.failed for r in reports):
            break
        bundle = record.get("bundle")
        if bundle and Path(bundle).exists():
            bundle = str(Path(bundle).rename(f"{bundle}.attempt-{attempt}"))
        _, reason = records.outcome_of(item.stash[STASH_REPORTS])
        earlier.append(f"attempt {attempt} failed after {why}, so it ran again "
                       f"(--retry-dead-guest): {reason} (bundle: {bundle})")
    if earlier:
        record["notes"] = earlier + record.get("notes", [])
        record["attempts"] = attempt
    for rep in reports:
        item.ihook.pytest_runtest_logreport(report=rep)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)


def _guests_lost(record: dict) -> str:
    died = [g["name"] for g in record.get("guests", ()) if g.get("died")]
    hung = [g["name"] for g in record.get("guests", ()) if g.get("hung")]
    return "; ".join(filter(None, [f"its guest {', '.join(died)} died under it" if died else "",
                                   f"its guest {', '.join(hung)} stopped answering" if hung else ""]))


def write_record(item: pytest.Item, hs) -> None:
    """The test's result record (results/<n>.json in the run folder), for the report."""
    outcome, reason = records.outcome_of(item.stash.get(STASH_REPORTS, {}))
    platform, device = collect.param(item, "platform"), collect.param(item, "device")
    callspec = getattr(item, "callspec", None)
    scenario = item.get_closest_marker("scenario")
    reports = list(item.stash.get(STASH_REPORTS, {}).values())
    nodeid, repetition = base_nodeid(plain_nodeid(item.nodeid))
    records.write_result(hs.run_dir, {
        # (a --repeat test's runs share their node id; "repetition" tells them apart)
        "nodeid": nodeid,
        "repetition": repetition,
        "test": getattr(item, "originalname", item.name),
        "id": base_nodeid(f"[{callspec.id}]")[0][1:-1] if callspec else "",
        # (a scenario may report under a name of its own: the lifecycle tests of a role)
        "scenario": (scenario.kwargs.get("name", scenario.args[0]) if scenario else
                     item.module.__name__.split(".")[-1].removeprefix("test_")),
        "cell": (getattr(item, "originalname", item.name).removeprefix("test_")
                 if scenario is not None and "name" in scenario.kwargs else ""),
        "platform": platform.id if platform else "",
        # The report's axes: machine type, PCI hotplug path, USB bus (see reporthtml.axes).
        "kind": "scenario" if scenario else "self-test",
        "machine": platform.machine if platform else "",
        "hotplug_path": platform.pci_hotplug if platform else "",
        "usb_bus": platform.spec().usb_controller if platform else "",
        "device": device.id if device else "",
        "guest": getattr(collect.param(item, "hh_guest"), "name", ""),
        "backend": hs.backend.name,
        # who started the guests and hot-added: QEMU's monitor (qmp) or libvirt
        "driver": hs.driver,
        "passthrough": getattr(device, "passthrough", "") or (
            records.FAILURE_PATH if item.get_closest_marker("passthrough") else ""),
        "outcome": outcome,
        "reason": reason,
        "failure_kind": dict(item.user_properties).get("failure_kind"),
        "duration": round(sum(r.duration for r in reports), 3),
        # Wall-clock span of set-up, call and teardown: when the test held its devices.
        "started_at": min((r.start for r in reports), default=None),
        "ended_at": max((r.stop for r in reports), default=None),
        "worker": hs.worker or "main",
        **item.stash.get(STASH_RECORD, {}),
    })


def give_back(session: pytest.Session, hs) -> None:
    """At the very end (xdist's workers are gone): the backend gives back every host device of
    this run. A device that cannot be given back fails the run, naming it, in the run's report
    too: that was written before (the give-back waits for xdist's workers to be gone, after
    every other end-of-run hook), and CI uploads it, `qualify` merges it, reports/latest shows
    it, so it is written again with the exit status and the device not given back."""
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    try:
        restored = hs.backend.give_back()
    except HarnessError as e:
        restored = []
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        problem = f"[{e.kind}] {e}"
        if tr is not None:
            tr.write_line(f"HOST NOT RESTORED: {problem}", red=True)
        if problem not in hs.give_back_problems:
            hs.give_back_problems.append(problem)
        _report_again(session, hs, tr)
    for r in restored:
        if tr is not None and r.status != "in-use":
            tr.write_line(f"hotplug-harness: end of run: {r}")


def not_given_back(session: pytest.Session, hs) -> None:
    """A host device the session's close could not give back fails the run, said in red."""
    if not hs.give_back_problems:
        return
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    for problem in hs.give_back_problems:
        if tr is not None:
            tr.write_line(f"HOST NOT RESTORED: {problem}", red=True)


def _report_again(session: pytest.Session, hs, tr) -> None:
    """The run's summary and report written again (if :func:`finish` wrote them) with the
    session's exit status and every device not given back."""
    meta = session.config.stash.get(STASH_SUMMARY, None)
    if meta is None:
        return
    meta.update(exit_status=int(session.exitstatus), not_given_back=list(hs.give_back_problems))
    try:
        report.finish_run(hs.run_dir, Path(session.config.option.report_dir).resolve(), meta)
    except (OSError, ValueError) as e:  # (in the give-back's finally: never raised)
        if tr is not None:
            tr.write_line(f"HOST NOT RESTORED, and {hs.run_dir / 'summary.json'} still says it "
                          f"was: it could not be written again: {e}", red=True)


def finish(session: pytest.Session, hs) -> None:
    """The controller's end of the run: hygiene, "nothing tested", summary, report."""
    option = session.config.option
    used = (hs.run_dir / "guests").exists()
    image = (hs.user_image or images.image_from_dir(images.builtin_dir(
        Path(option.image_cache or images.DEFAULT_CACHE)), verify=False)) if used else None
    hs.hygiene_problems = hygiene.check(hs.snapshot.for_owner(hs.run.owner), hs.run_dir,
                                        [image] + [c.image for c in hs.guest_choices])
    nothing_tested = _nothing_tested(hs)
    if (hs.hygiene_problems or nothing_tested) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    meta = session.config.stash[STASH_SUMMARY] = {
        "backend": hs.backend.name, "driver": hs.driver, "accel": hs.accel, "accel_reason": hs.accel_reason,
        "pace": dataclasses.asdict(hs.pace),
        "deadlines": {k: v for k, v in dataclasses.asdict(hs.deadlines).items()
                      if k not in ("pace", "image")},
        "qemu_binary": hs.qemu_binary, "qemu_version": hs.qemu_version,
        "image": image.manifest if image is not None else {},
        "guests": [{"name": c.name, "access": c.access, "builtin": c.builtin,
                    "image": str(c.image.disk or c.image.kernel)} for c in hs.guest_choices],
        "exit_status": int(session.exitstatus),
        "wall_seconds": round(time.monotonic() - hs.started_monotonic, 1),
        "lab": hs.backend.report_meta(),
        "hygiene": hs.hygiene_problems or "clean: no QEMU left running, no temp directory left, "
                                          "guest image unchanged",
        "nothing_tested": nothing_tested,
        "not_given_back": hs.give_back_problems,
        "identity": identity.run_identity(
            qemu_binary=hs.qemu_binary, qemu_version=hs.qemu_version,
            inventory=hs.inventory.path if hs.inventory is not None else None,
            args=[str(a) for a in session.config.invocation_params.args]),
    }
    summary = report.finish_run(hs.run_dir, Path(option.report_dir).resolve(), meta)
    pruned = retention.prune(Path(option.report_dir), option.keep_runs, current=hs.run_dir)
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_sep("=", "hotplug-harness report")
        if pruned:
            tr.write_line(f"removed {len(pruned)} old run folder(s) (--keep-runs {option.keep_runs})")
        for line in report.summary_lines(summary):
            tr.write_line(line)
        for problem in hs.hygiene_problems:
            tr.write_line(f"HYGIENE: {problem}", red=True)
        if nothing_tested:
            tr.write_line(f"NOTHING TESTED: {nothing_tested}", red=True)


def _nothing_tested(hs) -> str | None:
    """A run on host devices that passed a single device through to no guest tested nothing
    it is for."""
    if hs.backend.takes_host_devices and not sum(records.passthrough_counts(
            records.load_results(hs.run_dir)).values()):
        return (f"--backend {hs.backend.name}: no test went through real passthrough "
                "(vfio-pci or usb-host): this run tested nothing of the host")
    return None


def aim_junit(config, run_dir: Path | None) -> Path | None:
    """At the session's end, before pytest's junitxml writes (its hook list for this call is
    fixed already): into ``run_dir``; or, when the run never made a folder, into
    ``/dev/null`` (no file: junitxml opens its file by name, so one in a temporary folder
    another user can write could be swapped for a link to a file root then overwrites), and
    :func:`drop_junit` sends junitxml away. Returns ``/dev/null`` then."""
    xml = config.stash.get(xml_key, None)
    if xml is None:
        return None
    if run_dir is not None:
        xml.logfile = str(run_dir / junit.FILE)
        return None
    xml.logfile = os.devnull
    return Path(os.devnull)


def drop_junit(config, scratch: Path) -> None:
    """A run of no guest writes no JUnit file: junitxml wrote to /dev/null, and leaves (as its
    own unconfigure does) so it does not print where it wrote."""
    xml = config.stash.get(xml_key, None)
    if xml is not None:
        del config.stash[xml_key]
        config.pluginmanager.unregister(xml)
