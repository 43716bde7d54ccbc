"""The pytest plugin (entry point ``pytest11: hotplug``): the hook wiring and the fixtures.

What the hooks do lives beside it: options (harness/options.py), the run's session and
configuration (session.py, runconfig.py), who plays each device (backends.py), collection
(collect.py), and running and recording tests (runner.py). docs/architecture.md has the map.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import pytest

from harness.plugin import collect
from harness.plugin import early
from harness.scenario import devices
from harness.run import hygiene
from harness.plugin import options
from harness.report import junit
from harness.plugin import runner
from harness.core.errors import HarnessError, LabError, Unexpressible
from harness.core.paths import check_search_path
from harness.scenario.prereq import PrerequisiteError
from harness.scenario.run import ScenarioRun
from harness.run.session import HarnessSession
from harness import lab

_STASH_SESSION = pytest.StashKey[HarnessSession]()
#: What an xdist worker finds in its workerinput: the run folder the controller chose.
_WORKER_RUN_DIR = "hh_run_dir"
#: ... and the controller's pid: the process that started the run, which lives to its end, owns
#: its temporary folders (a worker that decides may crash and be replaced mid-run).
_WORKER_STARTER = "hh_starter_pid"
#: Set when the plugin chose where junitxml writes (the user did not pass --junitxml); at the
#: end, the temporary file to remove if the run never made a folder.
_STASH_JUNIT = pytest.StashKey["bool | Path"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """As root, before pytest imports any conftest.py (its own implementation of this hook
    comes after, and the harness, an installed plugin, is registered before it is called):
    a test path, ini file or pythonpath another user could have written is refused
    (:func:`harness.plugin.early.check_initial_paths`): pytest would import their code as
    root, before :func:`pytest_cmdline_main` checks anything."""
    try:
        early.check_initial_paths(early_config)
    except HarnessError as e:
        raise pytest.UsageError(f"hotplug-harness: [{e.kind}] {e}") from e


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config):
    """As root, a PATH another user could have put a program in is refused before anything
    runs (:func:`harness.core.paths.check_search_path`). ``--backend lab`` on the host: run
    this same command inside the lab host instead (harness/lab/); the run inside does the
    collecting, the testing and the report."""
    opt = config.option
    if opt.help or opt.version:
        return None
    try:  # (as root: a run runs ip, setpriv, qemu-img, ssh-keygen... by name from PATH)
        check_search_path()
    except HarnessError as e:
        print(f"hotplug-harness: ERROR [{e.kind}] {e}")
        return pytest.ExitCode.USAGE_ERROR
    if opt.backend != "lab" or opt.hh_run_config:
        return None

    try:
        return lab.run_outer(config)
    except HarnessError as e:
        print(f"hotplug-harness: ERROR [{e.kind}] {e}")
        return pytest.ExitCode.USAGE_ERROR


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for line in ("scenario(role): a hotplug scenario of the guide; the plugin parametrizes it "
                 "over platforms and backend devices",
                 "guest(**spec): the guest fixture's shape beyond the platform's: GuestSpec "
                 "fields (kernel_args, cpus, ...), fresh=True, check_prerequisites=False",
                 "fault: injects a fault (kills QEMU, panics the guest, ...)",
                 "slow: takes longer than a minute",
                 "passthrough: needs real vfio-pci (--backend vfio or lab); deselected with "
                 "--backend emulated",
                 "emulated_only(why): plugs what only QEMU's emulated devices can give (more "
                 "devices than a host has, QEMU's own models); deselected with --backend vfio "
                 "or lab"):
        config.addinivalue_line("markers", line)
    if config.option.help:
        return
    for line in options.deprecations([str(a) for a in config.invocation_params.args]):
        config.issue_config_time_warning(pytest.PytestDeprecationWarning(line), stacklevel=2)
    _terminate_like_ctrl_c()
    workerinput = getattr(config, "workerinput", {})
    try:
        hs = HarnessSession(config.option, config=config, plan=workerinput.get(_WORKER_RUN_DIR),
                            given=config.option.hh_run_config,
                            worker=workerinput.get("workerid", ""),
                            starter=workerinput.get(_WORKER_STARTER))
    except HarnessError as e:
        raise pytest.UsageError(str(e)) from e
    config.stash[_STASH_SESSION] = hs
    collect.require_loadgroup(config, hs)
    if not hs.worker and not getattr(config.option, "xmlpath", None) and not config.option.collectonly:
        # Every run writes JUnit XML into its own folder, which exists only once a test needed
        # a guest: junitxml is aimed there (or stopped) at the session's end.
        config.option.xmlpath = str(hs.run_dir / junit.FILE)
        config.stash[_STASH_JUNIT] = True


def _terminate_like_ctrl_c() -> None:
    """SIGTERM (a cancelled CI job) ends the run the way Ctrl-C does: pytest stops, guests are
    closed, vfio devices given back. Python's default for SIGTERM is to die on the spot."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        def interrupt(signum, frame):
            raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")
        signal.signal(signal.SIGTERM, interrupt)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """(xdist, controller side) Each worker reads the run configuration instead of deciding."""
    hs: HarnessSession | None = node.config.stash.get(_STASH_SESSION, None)
    if hs is not None:
        node.workerinput[_WORKER_RUN_DIR] = str(hs.run_dir)
        node.workerinput[_WORKER_STARTER] = os.getpid()


def pytest_unconfigure(config: pytest.Config) -> None:
    """The last step of every process of a run, however it ended: nothing it started stays.
    The controller (xdist workers are gone by now) also ends what an interrupted worker left:
    QEMUs by the PIDs the run folder recorded, and this run's temporary directories."""
    hs: HarnessSession | None = config.stash.get(_STASH_SESSION, None)
    if hs is None:
        return
    hs.close()
    if hs.worker:
        return
    if not hs.decided:  # no test needed a guest: nothing was written, nothing to sweep
        return
    for line in hygiene.sweep_run(hs.run_dir, hs.run.owner):
        print(f"hotplug-harness: {line}")
    junit.add_junit_identity(hs.run_dir, Path(config.option.report_dir).resolve())


def pytest_report_header(config: pytest.Config) -> list[str]:
    hs = config.stash.get(_STASH_SESSION, None)
    return hs.header() if hs else []


# -- collection ----------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    collect.parametrize(metafunc, metafunc.config.stash[_STASH_SESSION])


@pytest.hookimpl(trylast=True, specname="pytest_generate_tests")
def pytest_generate_tests_guest_axis(metafunc: pytest.Metafunc) -> None:
    collect.parametrize_guests(metafunc, metafunc.config.stash[_STASH_SESSION])
    collect.parametrize_repeat(metafunc, metafunc.config.option.repeat)


@pytest.fixture
def hh_repetition(request: pytest.FixtureRequest) -> int:
    """--repeat: which run of the test this is (1..N)."""
    return request.param


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    hs: HarnessSession = config.stash[_STASH_SESSION]
    collect.select(config, items, hs)
    if config.option.collectonly or not any("hotplug_session" in getattr(i, "fixturenames", ())
                                            for i in items):
        return
    # A test will need a guest: the run is decided now, before any test runs, so a QEMU that
    # cannot serve or a full report disk stops the run with one line (exit 4).
    try:
        hs.run
    except HarnessError as e:  # (as pytest says a usage error: one line on stderr, exit 4)
        print(f"ERROR: {e}", file=sys.stderr)
        pytest.exit("hotplug-harness: the run cannot start (the error above)",
                    returncode=pytest.ExitCode.USAGE_ERROR)
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if hs.decided_here and not hs.worker and tr is not None:
        for line in hs.decision_lines():
            tr.write_line(line)


def pytest_report_collectionfinish(config: pytest.Config, items) -> list[str]:
    hs: HarnessSession | None = config.stash.get(_STASH_SESSION, None)
    if hs is None:
        return []
    notes = [hs.backend.collection_note()]
    if hs.emulated_only:
        notes.append(f"hotplug-harness: --backend {hs.backend.name}: deselected, emulated backend "
                     f"only (marked emulated_only, each says why): {', '.join(hs.emulated_only)}")
    return [n for n in notes if n]


# -- fixtures: the session, the test's scenario run, its booted guest ------------------------------


@pytest.fixture(scope="session")
def hotplug_session(request: pytest.FixtureRequest) -> HarnessSession:
    hs: HarnessSession = request.config.stash[_STASH_SESSION]
    request.addfinalizer(hs.close)
    hs.run  # (decided at collection; a worker that collected no such test loads it now)
    return hs


@pytest.fixture
def hotplug(request: pytest.FixtureRequest, hotplug_session: HarnessSession):
    """The test's :class:`~harness.scenario.ScenarioRun`: guests, plug/unplug, latencies."""
    hs = hotplug_session
    device = collect.param(request.node, "device")
    if isinstance(device, devices.Placeholder):
        raise LabError(device.why, hint="add a device for the role to the inventory "
                                        "(docs/vfio.md), or leave the role out on purpose with "
                                        "--roles" if device.why.startswith("not covered") else
                                        "remove vendorid/productid from the inventory entry, or "
                                        "unplug its twin")
    if isinstance(device, devices.EmulatedModel):
        missing = device.missing_from(hs.qemu_devices, f"QEMU {hs.qemu_version} ({hs.qemu_binary})")
        if missing:
            pytest.skip(missing)
    run = ScenarioRun(hs.pool, hs.run_dir / "bundles" / runner.bundle_name(request.node.nodeid),
                      keep_bundle=hs.keep_bundles, access=hs.access,
                      check_migrated_ram=request.config.option.check_migrated_ram,
                      guest_must_configure_nic=request.config.option.guest_must_configure_nic)
    yield run
    reports = request.node.stash.get(runner.STASH_REPORTS, {})
    record = run.finish("call" in reports and reports["call"].passed)
    request.node.stash[runner.STASH_RECORD] = record
    platform = collect.param(request.node, "platform")
    kernel = hs._image.manifest.get("kernel_version", "user image") if hs._image else ""
    request.node.user_properties.extend([
        ("backend", hs.backend.name), ("driver", hs.driver), ("machine", platform.machine if platform else ""),
        ("platform", platform.id if platform else ""), ("accelerator", hs.accel),
        ("qemu_version", hs.qemu_version), ("guest_kernel", kernel)])
    for name, value in record["latencies"].items():
        request.node.user_properties.append((f"latency.{name}", value))


@pytest.fixture
def hh_guest(request: pytest.FixtureRequest, hotplug_session: HarnessSession):
    """Which guest the test runs on: one of --guest's (a parameter), or the run's one guest."""
    return getattr(request, "param", None) or hotplug_session.default_guest()


@pytest.fixture
def guest(request: pytest.FixtureRequest, hotplug: ScenarioRun, hh_guest,
          hotplug_session: HarnessSession):
    """The test's guest, booted in set-up: a guest that cannot boot is an error in set-up (its
    serial log in the bundle), not a failed hotplug. Its shape is the test's ``platform``
    parameter, or ``@pytest.mark.guest(platform=...)``; the marker's other arguments are
    :class:`~harness.machine.GuestSpec` fields and ``fresh``/``check_prerequisites``."""
    marker = request.node.get_closest_marker("guest")
    kwargs = dict(marker.kwargs) if marker else {}
    platform = kwargs.pop("platform", None) or collect.param(request.node, "platform")
    if platform is None:
        raise HarnessError("the guest fixture needs a platform: parametrize the test with "
                           "@pytest.mark.scenario or pass @pytest.mark.guest(platform=...)")
    pool_args = {k: kwargs.pop(k) for k in ("fresh", "check_prerequisites") if k in kwargs}
    return hotplug.guest(platform.spec(**kwargs), hh_guest.image, access=hh_guest.access,
                         deadlines=hotplug_session.deadlines_for(hh_guest), **pool_args)


# -- running and reporting ---------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    return (yield from _prerequisites_skip_on_your_guest(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    try:
        result = yield from _prerequisites_skip_on_your_guest(item)
    except (AssertionError, HarnessError):
        _note_guest_kernels(item)
        raise
    _check_guest_kernels(item)
    return result


def _note_guest_kernels(item: pytest.Item) -> None:
    """A test that failed: whether the guest kernel had logged a problem by then (a guest
    whose command died with SIGSEGV after an Oops fails on the command; the Oops is the
    cause). Each problem's first line goes in the report's notes, the trace is in the
    bundle's dmesg.txt and serial.log. Best effort: the failure stands as it is."""
    run = getattr(item, "funcargs", {}).get("hotplug")
    if not isinstance(run, ScenarioRun):
        return
    try:
        problems = run.kernel_problems()
    except Exception:  # a guest that no longer answers: its serial log is in the bundle
        return
    for problem in problems:
        run.note("the guest kernel logged a problem before the failure: "
                 + problem.splitlines()[0])


def _check_guest_kernels(item: pytest.Item) -> None:
    """Every test that used a guest, once its body passed: the guest kernel logged no Oops,
    BUG, WARNING, call trace, hung task or lockup since the test got it (a test that provokes
    one on purpose says so with ``hotplug.allow_kernel``)."""
    run = getattr(item, "funcargs", {}).get("hotplug")
    if isinstance(run, ScenarioRun):
        problems = run.kernel_problems()
        if problems:
            raise AssertionError("the guest kernel logged a problem during the test:\n"
                                 + "\n\n".join(problems))


def _prerequisites_skip_on_your_guest(item: pytest.Item):
    """A guest of yours that lacks what a scenario needs skips it, saying what; the built-in
    guest must meet every prerequisite (if not, that is a harness bug and it fails)."""
    try:
        return (yield)
    except Unexpressible as e:
        # (libvirt's limit, said per test and tried again each run: never a pass, never hidden)
        pytest.xfail(f"--driver libvirt: {e.message}")
    except PrerequisiteError as e:
        chosen = collect.param(item, "hh_guest")
        builtin = chosen.builtin if chosen else item.config.stash[_STASH_SESSION].user_image is None
        if builtin:
            raise
        pytest.skip(f"your guest cannot run this scenario: {e.message}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    rep = yield
    item.stash.setdefault(runner.STASH_REPORTS, {})[rep.when] = rep
    if rep.failed and call.excinfo is not None:
        exc = call.excinfo.value
        # lab: the host is broken; product: QEMU or the guest misbehaved (a failed assertion
        # is a product check); harness: a bug in the harness itself.
        kind = (exc.kind if isinstance(exc, HarnessError) else
                "product" if isinstance(exc, AssertionError) else "harness")
        item.user_properties.append(("failure_kind", kind))
    return rep


@pytest.hookimpl(tryfirst=True, specname="pytest_runtest_protocol")
def pytest_runtest_protocol_retrying(item: pytest.Item, nextitem):
    hs: HarnessSession | None = item.config.stash.get(_STASH_SESSION, None)
    if hs is None or hs.test_attempts == 1:
        return None
    runner.run_with_retries(item, nextitem, hs.test_attempts)
    return True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    yield
    hs: HarnessSession | None = item.config.stash.get(_STASH_SESSION, None)
    if hs is not None and "hotplug_session" in item.fixturenames and hs.decided:
        runner.write_record(item, hs)


@pytest.hookimpl(tryfirst=True, specname="pytest_sessionfinish")
def pytest_sessionfinish_junit(session: pytest.Session, exitstatus: int) -> None:
    """Before junitxml writes: into the run folder if the run has one, else nothing at all."""
    hs: HarnessSession | None = session.config.stash.get(_STASH_SESSION, None)
    if hs is not None and not hs.worker and _STASH_JUNIT in session.config.stash:
        scratch = runner.aim_junit(session.config, hs.run_dir if hs.decided else None)
        if scratch is not None:
            session.config.stash[_STASH_JUNIT] = scratch


@pytest.hookimpl(wrapper=True, specname="pytest_sessionfinish")
def pytest_sessionfinish_give_back(session: pytest.Session, exitstatus: int):
    """After everything else at the session's end (xdist's workers are gone by then), also
    when that failed (the report could not be written...): the host's devices go back."""
    try:
        return (yield)
    finally:
        scratch = session.config.stash.get(_STASH_JUNIT, None)
        if isinstance(scratch, Path):
            runner.drop_junit(session.config, scratch)
        hs: HarnessSession | None = session.config.stash.get(_STASH_SESSION, None)
        if hs is not None and not hs.worker and hs.binder is not None:
            runner.give_back(session, hs)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    hs: HarnessSession | None = session.config.stash.get(_STASH_SESSION, None)
    if hs is None:
        return
    hs.close()
    runner.not_given_back(session, hs)
    if (hs.worker or session.config.option.collectonly or not hs.decided
            or not (hs.run_dir / "results").exists()):
        return
    runner.finish(session, hs)
