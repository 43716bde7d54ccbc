"""Issue 31, item 16: when the backend's binder cannot give a device back at the session's end,
HarnessSession.close() used to raise, so pytest_sessionfinish skipped the give-back, the
"nothing tested" check and the report, and pytest ended in a traceback. Now the problem is
recorded, the run fails, and the session's end goes on. A real Vfio backend and binder on a
fake host (tests/unit/fakesysfs.py) whose group a QEMU still holds open."""

import os
from types import SimpleNamespace

import pytest

from harness.host.binding import VfioBinder
from harness.plugin import runner
from harness.run.backends import Vfio
from harness.run.session import HarnessSession

from . import fakesysfs

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures


def a_session_whose_device_a_qemu_still_holds(lab) -> HarnessSession:
    backend = Vfio(worker="", qemu_binary="qemu-system-x86_64", pace=None)
    backend.binder = VfioBinder(lab.sysfs(),
                                journal=lab.root / "var/lib/hotplug-harness/vfio-journal.json")
    backend.binder.bind("06:00.0", {"06:00.0"})
    (lab.root / "proc/4242/fd").mkdir(parents=True)  # a QEMU that outlived its test
    lab.proc("4242/comm", "qemu-system-x86\n")
    os.symlink("/dev/vfio/13", lab.root / "proc/4242/fd/30")
    hs = HarnessSession.__new__(HarnessSession)  # only what close() touches: no guest, no QEMU
    hs._pool, hs.backend, hs.give_back_problems = None, backend, []
    return hs


def test_a_failed_give_back_is_recorded_not_raised_and_fails_the_run(lab):
    hs = a_session_whose_device_a_qemu_still_holds(lab)
    hs.close()  # no exception: the session's end goes on to check and report
    [problem] = hs.give_back_problems
    assert problem.startswith("[lab] group 13: 1 device(s) not given back"), problem
    assert lab.driver_of("0000:06:00.0") == "vfio-pci"
    hs.close()  # pytest_unconfigure closes again: the same problem, once
    assert len(hs.give_back_problems) == 1

    lines = []
    session = SimpleNamespace(exitstatus=pytest.ExitCode.OK, config=SimpleNamespace(
        pluginmanager=SimpleNamespace(get_plugin=lambda name: SimpleNamespace(
            write_line=lambda text, **kw: lines.append(text)))))
    runner.not_given_back(session, hs)
    assert session.exitstatus == pytest.ExitCode.TESTS_FAILED
    assert lines == [f"HOST NOT RESTORED: {problem}"]

    (lab.root / "proc/4242/fd/30").unlink()  # the QEMU is gone: the next close gives it back
    hs.close()
    assert lab.driver_of("0000:06:00.0") == "ahci"


def test_a_vfio_run_whose_passthrough_tests_all_skipped_tested_nothing(tmp_path):
    """Issue 31, item 15: skipped tests counted as passthrough, so such a run exited 0."""
    import json

    (tmp_path / "results").mkdir()
    for n, (outcome, through) in enumerate([("skipped", "vfio-pci host=0000:05:00.0"),
                                            ("skipped", "usb-host hostbus=3,hostaddr=3"),
                                            ("passed", "")]):
        (tmp_path / "results" / f"{n}.json").write_text(json.dumps(
            {"nodeid": f"t{n}", "outcome": outcome, "passthrough": through}))
    hs = SimpleNamespace(backend=Vfio(worker="", qemu_binary="q", pace=None), run_dir=tmp_path)
    assert "no test went through real passthrough" in runner._nothing_tested(hs)
    (tmp_path / "results" / "0.json").write_text(json.dumps(
        {"nodeid": "t0", "outcome": "failed", "passthrough": "vfio-pci host=0000:05:00.0"}))
    assert runner._nothing_tested(hs) is None


def test_a_vfio_run_of_only_failure_path_tests_tested_nothing(tmp_path):
    """Issue 31, third review, item 1: tests marked ``passthrough`` (test_missing_device...)
    were labelled vfio-pci and satisfied the "nothing tested" check with no host device used."""
    import json

    (tmp_path / "results").mkdir()
    for n in range(2):
        (tmp_path / "results" / f"{n}.json").write_text(json.dumps(
            {"nodeid": f"t{n}", "outcome": "passed", "passthrough": "vfio-pci (failure path)"}))
    hs = SimpleNamespace(backend=Vfio(worker="", qemu_binary="q", pace=None), run_dir=tmp_path)
    assert "no test went through real passthrough" in runner._nothing_tested(hs)
    (tmp_path / "results" / "2.json").write_text(json.dumps(
        {"nodeid": "t2", "outcome": "passed", "passthrough": "vfio-pci host=0000:05:00.0"}))
    assert runner._nothing_tested(hs) is None
