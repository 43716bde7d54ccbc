"""The image cache shared by several checkouts (harness/images/debroot.py): a build a live run
uses is never pruned from under it by another run's new build."""

import os
import subprocess
import sys
import time

from harness.images import debroot


def _build(cache, name, age):
    d = cache / name
    d.mkdir()
    (d / "manifest.json").write_text("{}\n")
    os.utime(d, (time.time() - age, time.time() - age))
    return d


def test_a_build_a_live_run_uses_is_not_pruned(tmp_path):
    held, old, spare, keep = (_build(tmp_path, n, a) for n, a in
                              (("held", 400), ("old", 300), ("spare", 200), ("keep", 0)))
    # another process (a run of another checkout) boots from "held": build_once holds it
    user = subprocess.Popen([sys.executable, "-c",
                             "import sys, time; from pathlib import Path\n"
                             "from harness.images import debroot\n"
                             f"debroot._hold(Path({str(held)!r})); print('held', flush=True)\n"
                             "time.sleep(30)"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert user.stdout.readline().strip() == "held"
        debroot.prune(tmp_path, keep=keep, spare=1)
        assert held.is_dir() and (held / "manifest.json").exists(), "pruned from under its run"
        assert not old.exists() and spare.is_dir() and keep.is_dir()
    finally:
        user.kill()
        user.wait()
    debroot.prune(tmp_path, keep=keep, spare=1)  # its run is over: an old build like any other
    assert not held.exists()


def test_build_once_holds_what_it_returns(tmp_path):
    out = tmp_path / "b1"
    assert debroot.build_once(out, lambda d: (d.mkdir(), (d / "manifest.json").write_text("{}")))
    assert out in debroot._HELD
    os.utime(out, (time.time() - 100, time.time() - 100))
    newer = _build(tmp_path, "b2", 0)
    debroot.prune(tmp_path, keep=newer, spare=0)
    assert out.is_dir(), "this process's own build was pruned while it uses it"
