"""Issue 31, fourteenth adversarial read. What it found, one section below each:

1. whether a run had been decided (``HarnessSession.decided``) was read from the ``run.json``
   found in the run folder's path, whoever made that folder: in a report folder others share
   (sticky, as docs/vfio.md's ``latest`` rule is for), another user who saw root's pytest
   start made its folder first (``run-<second>-<pid>``, both visible), with a ``run.json`` and
   a ``junit.xml`` link in it. Root's run refused the folder (it is not private) and stopped,
   but its session's end took the run as decided by that ``run.json`` and aimed pytest's
   junitxml at ``<their folder>/junit.xml``, which junitxml opens by name: root truncated and
   wrote the file the link named. So did a run of no guest (``pytest tests/unit`` as root).
   A run is now decided only by a ``run.json`` in a folder of its own that nobody else can
   write.

Each finding's tests fail on the code before its fix. Real files and links, a real junitxml
writer, and a second user (nobody) who owns a folder in a sticky one; no guest is booted.
"""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from _pytest.junitxml import LogXML, xml_key
from _pytest.stash import Stash

from harness import plugin
from harness.core.runconfig import RunConfig
from harness.run.session import HarnessSession

from . import test_paths

NOBODY = test_paths.NOBODY
as_nobody = test_paths.as_nobody    # (the local attacker)
shared_tmp = test_paths.shared_tmp  # (a fixture: a sticky folder others can write, like /tmp)
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second user "
                                                       "(nobody): run as root, as CI does")


def _victim(tmp_path: Path) -> Path:
    """A file of root's that nobody may change."""
    victim = tmp_path / "root-only" / "shadow"
    victim.parent.mkdir(mode=0o700)
    victim.write_text("root's\n")
    return victim


# -- 1. a run folder another user made first, with a run.json and a junit.xml link -------------


def _session(run_dir: Path) -> HarnessSession:
    """The session of a run whose folder is ``run_dir`` and that decided nothing itself (its
    decision refused the folder, or no test needed a guest): only what the session's end
    reads."""
    hs = HarnessSession.__new__(HarnessSession)
    hs._run, hs.worker = None, ""
    hs.plan = RunConfig.new(run_dir.parent, run_dir=run_dir)
    return hs


def _end_junit(hs: HarnessSession, default: Path) -> LogXML:
    """The session's end as pytest runs it for junitxml: the plugin aims the writer (its
    tryfirst pytest_sessionfinish), then junitxml writes its file."""
    xml = LogXML(str(default), None)
    xml.pytest_sessionstart()
    config = SimpleNamespace(stash=Stash())
    config.stash[plugin._STASH_SESSION] = hs
    config.stash[plugin._STASH_JUNIT] = True
    config.stash[xml_key] = xml
    plugin.pytest_sessionfinish_junit(SimpleNamespace(config=config), 0)
    xml.pytest_sessionfinish()
    return xml


@as_root
def test_1_a_run_json_in_another_users_run_folder_does_not_decide_roots_run(tmp_path,
                                                                           shared_tmp):
    victim = _victim(tmp_path)
    theirs = shared_tmp / "run-20261205-230000-4242"
    decided = json.dumps({"run_dir": str(theirs), "owner": "4242", "accel": "tcg"})
    as_nobody(f"mkdir -m 755 {theirs} {theirs}/results; echo '{decided}' > {theirs}/run.json; "
              f"ln -s {victim} {theirs}/junit.xml")
    hs = _session(theirs)
    assert not hs.decided
    xml = _end_junit(hs, theirs / "junit.xml")
    assert xml.logfile == os.devnull
    assert victim.read_text() == "root's\n"


def test_1_a_run_of_its_own_folder_is_still_decided_and_gets_its_junit(tmp_path):
    run_dir = tmp_path / "reports" / "run-20261205-230000-4242"
    run_dir.mkdir(parents=True, mode=0o700)
    RunConfig(run_dir=run_dir, owner="4242", accel="tcg").write()
    hs = _session(run_dir)
    assert hs.decided
    _end_junit(hs, tmp_path / "elsewhere.xml")
    assert (run_dir / "junit.xml").read_text().startswith("<?xml")
