"""Issue 31, twelfth adversarial read. What it found, one section below each:

1. ``python -m harness merge ... --out DIR`` as root made DIR with ``exist_ok`` and wrote its
   summary.json, report.html and junit.xml there by name: in a report folder others share
   (sticky, like the one docs/vfio.md's ``latest`` rule is for), another user who made DIR
   first (the default, ``reports/merged-<second>``, can be guessed) put a link in it, and
   root truncated and wrote whatever file the link named (a sticky folder's link protection
   does not apply inside their own folder);
2. ``python -m harness trend RUNS --html FILE`` as root wrote FILE through whatever was
   there, a link another user put in a folder they own or can write included;
3. ``merge`` and ``compare`` as root (``merge reports/run-*/``, ``compare BASELINE
   reports/latest`` on a lab host) opened each run's summary.json by name: another user's run
   folder in a shared report folder held a link there, and root opened what it led to (a
   file only root may read, copied into the report; ``/dev/watchdog``, which arms on open and
   reboots the host) or a FIFO that blocked root for good. ``trend`` and the run's own history
   read them safely since the eighth read; these two did not.

Each finding's tests fail on the code before its fix. Real files and links, and a second user
(nobody) who owns a folder in a sticky one; no guest is booted."""

import json
import os
import threading
from pathlib import Path

import pytest

from harness.cli import COMMANDS, main
from harness.core.errors import ConfigError
from harness.core.paths import UnsafePathError

from . import test_paths
from .test_merge import rec, write_run

NOBODY = test_paths.NOBODY
as_nobody = test_paths.as_nobody    # (the local attacker)
shared_tmp = test_paths.shared_tmp  # (a fixture: a sticky folder others can write, like /tmp)
as_root = test_paths.as_root

_victim = test_paths.victim


# -- 1. merge --out: a folder another user made first, with a link in it ------------------------


@as_root
def test_1_merge_as_root_refuses_an_out_folder_another_user_made(tmp_path, shared_tmp):
    victim = _victim(tmp_path)
    runs = two_runs(tmp_path)
    out = shared_tmp / "merged-20261205-203000"
    as_nobody(f"mkdir -m 755 {out}; ln -s {victim} {out}/summary.json")
    with pytest.raises(UnsafePathError) as e:
        main_raising(["merge", *runs, "--out", str(out)])
    assert str(out) in e.value.message and e.value.hint
    assert victim.read_text() == "root's\n"


@as_root
def test_1_merge_as_root_still_writes_a_new_out_folder_and_reuses_its_own(tmp_path, shared_tmp):
    runs = two_runs(tmp_path)
    out = shared_tmp / "merged"
    assert main(["merge", *runs, "--out", str(out)]) == 0
    assert (out / "summary.json").is_file() and os.stat(out).st_uid == 0
    assert main(["merge", *runs, "--out", str(out)]) == 0   # again, into root's own folder


# -- 2. trend --html: a link another user put where root writes the page ------------------------


@as_root
def test_2_trend_html_as_root_is_not_written_through_another_users_link(tmp_path, shared_tmp):
    victim = _victim(tmp_path)
    write_run(tmp_path / "runs" / "run-1", "run-1", [rec("nic", "pc")])
    theirs = shared_tmp / "pages"
    as_nobody(f"mkdir -m 755 {theirs}; ln -s {victim} {theirs}/trend.html")
    with pytest.raises(UnsafePathError) as e:
        main_raising(["trend", str(tmp_path / "runs"), "--html", str(theirs / "trend.html")])
    assert str(theirs) in e.value.message and e.value.hint
    assert victim.read_text() == "root's\n"


@as_root
def test_2_trend_html_as_root_replaces_a_link_in_its_own_folder_without_following_it(tmp_path):
    victim = _victim(tmp_path)
    write_run(tmp_path / "runs" / "run-1", "run-1", [rec("nic", "pc")])
    page = tmp_path / "trend.html"
    page.symlink_to(victim)
    assert main(["trend", str(tmp_path / "runs"), "--html", str(page)]) == 0
    assert not page.is_symlink() and "<svg" in page.read_text()
    assert victim.read_text() == "root's\n"


def main_raising(argv: list[str]) -> int:
    """The command's own function, so that its error reaches the test (``main`` prints it)."""
    return COMMANDS[argv[0]](argv[1:])


def two_runs(tmp_path: Path) -> list[str]:
    return [str(write_run(tmp_path / "runs" / f"run-{n}", f"run-{n}", [rec("nic", "pc")],
                          qemu=qemu)) for n, qemu in ((1, "7.2.22"), (2, "10.0.2"))]


# -- 3. merge and compare read another user's summary.json through a link, or a FIFO ------------


def nobodys_run(shared: Path, target: str, fifo: bool = False) -> Path:
    """A run folder of nobody's whose summary.json is a link to ``target`` (or a FIFO)."""
    run = shared / "run-20261205-0230-4242"
    make = f"mkfifo {run}/summary.json" if fifo else f"ln -s {target} {run}/summary.json"
    as_nobody(f"mkdir -m 755 {run}; {make}")
    return run


@as_root
@pytest.mark.parametrize("command", ["compare", "merge"])
def test_3_root_does_not_read_a_summary_through_another_users_link(tmp_path, shared_tmp,
                                                                   command):
    mine = two_runs(tmp_path)
    secret = tmp_path / "root-only" / "summary.json"   # root's, readable by root only
    secret.parent.mkdir(mode=0o700)
    secret.write_text((Path(mine[1]) / "summary.json").read_text())
    theirs = nobodys_run(shared_tmp, str(secret))
    argv = [command, mine[0], str(theirs)] + (["--out", str(tmp_path / "out")]
                                               if command == "merge" else [])
    with pytest.raises(ConfigError) as e:
        main_raising(argv)
    assert str(theirs / "summary.json") in e.value.message and e.value.hint
    assert not (tmp_path / "out").exists()


@as_root
def test_3_root_does_not_wait_on_a_fifo_for_a_summary(tmp_path, shared_tmp):
    mine = two_runs(tmp_path)
    theirs = nobodys_run(shared_tmp, "", fifo=True)

    waited = []

    def writer():  # (so that the code before the fix ends: it waits for a writer)
        waited.append(True)
        with open(theirs / "summary.json", "w") as f:
            f.write(json.dumps({"tests": []}))
    t = threading.Timer(3.0, writer)
    t.start()
    try:
        with pytest.raises(ConfigError) as e:
            main_raising(["compare", mine[0], str(theirs)])
        assert "not a regular file" in e.value.message and not waited
    finally:
        t.cancel()


def test_3_compare_still_reads_a_runs_summary(tmp_path):
    mine = two_runs(tmp_path)
    assert main(["compare", mine[0], mine[1]]) in (0, 1)
