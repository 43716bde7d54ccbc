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
2. the lab host's root file system, unpacked by root from Debian packages into the image cache
   (``lab/<digest>/root``, folders any user can enter), kept the packages' set-user-ID and
   set-group-ID bits: ``su``, ``passwd``, ``chsh``, ``chfn``, ``gpasswd`` and ``unix_chkpwd``
   setuid root, ``chage`` and ``expiry`` setgid shadow, each one any local user could run on
   the host. Those copies are outside apt's reach and live as long as the lab's recipe (its
   digest names no package version): when the host's packages fix a hole in one of them,
   the lab's copy, still setuid root, keeps it. L1 runs everything as root and needs none
   of the bits: a lab image is now built without them, and a lab image (or an older one
   kept beside it) that has them loses them before it is used.
3. a distribution guest's build script (``image build --distro``, ``--guest systemd``: root,
   mmdebstrap) made its work folder with ``mktemp -d "${TMPDIR:-/tmp}/..."`` under whatever
   ``TMPDIR`` root had, which the harness's own temporary folders refuse when another user
   owns it or can write it (seventh read): there they could rename root's folder and put a
   link in its place, and the script then copied the guest's kernel and initrd over what
   the link named (``cp -L ... "$tmp/"``: ``/vmlinuz``, a link to the host's own kernel,
   is written through) and built the guest from their files. The script now runs only under
   a temporary folder checked as the harness's own are, handed to it as ``TMPDIR``.
4. .ci/check-root-tree did not read a ``.venv``'s ``pyvenv.cfg``: its ``home`` is where the
   venv's Python finds its standard library (``sys.base_prefix`` is searched up from it,
   whatever ``bin/python`` links to, or is a copy of), so a ``.venv`` another user made with
   their own Python (``python -m venv --copies`` from a pyenv in their home: the binaries
   are copies, no link leads out) and that root then took over as the check's own hint
   says (``chown -R root``) passed, and root's ``make nightly`` imported ``json``,
   ``subprocess``... from that user's folder. The home, the folders above it and the
   standard library it leads to are now checked like the rest.

Each finding's tests fail on the code before its fix. Real files and links, a real junitxml
writer, a real build script in place of a recipe's (no mmdebstrap run, nothing downloaded), and
a second user (nobody) who owns a folder in a sticky one or the TMPDIR; no guest is booted.
"""

import json
import os
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from _pytest.junitxml import LogXML, xml_key
from _pytest.stash import Stash

from harness import plugin
from harness.lab import image as lab_image
from harness.core.paths import UnsafePathError
from harness.core.runconfig import RunConfig
from harness.images import distro
from harness.run.session import HarnessSession

from . import test_paths
from .test_paths import _check_tree, _checkout
from .test_host_idle_review6 import planted_lab_image

NOBODY = test_paths.NOBODY
as_nobody = test_paths.as_nobody    # (the local attacker)
shared_tmp = test_paths.shared_tmp  # (a fixture: a sticky folder others can write, like /tmp)
as_root = test_paths.as_root

_victim = test_paths.victim


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


# -- 2. set-user-ID programs of the lab's root file system, on the host -------------------------


def _set_ids(top: Path) -> list[str]:
    return sorted(str(p.relative_to(top)) for p in top.rglob("*")
                  if not p.is_symlink() and p.is_file() and p.stat().st_mode & 0o6000)


def test_2_a_lab_image_keeps_no_setuid_program_any_user_could_run_on_the_host(tmp_path):
    cache = tmp_path / "cache"
    out = planted_lab_image(cache)  # as root's build left it: the packages' modes kept
    older = cache / "lab" / "0123456789abcdef"
    (older / "root/usr/sbin").mkdir(parents=True)
    (older / "manifest.json").write_text("{}\n")
    for build, rel, mode in ((out, "root/usr/bin/su", 0o4755), (out, "root/usr/bin/chage", 0o2755),
                             (older, "root/usr/sbin/unix_chkpwd", 0o6755)):
        (build / rel).write_text("#!/bin/sh\n")
        os.chmod(build / rel, mode)
    assert _set_ids(cache) != []
    image = lab_image.ensure_lab(cache, log=lambda s: None)
    assert image.folder == out
    assert _set_ids(cache) == []
    assert (out / "root/usr/bin/su").stat().st_mode & 0o7777 == 0o755
    assert (out / "root/usr/bin/chage").stat().st_mode & 0o7777 == 0o755


def test_2_the_lab_root_is_finished_without_set_id_bits(tmp_path):
    """What build_lab unpacks goes through _finish_root before it is renamed into the cache."""
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/passwd").write_text("")
    os.chmod(root / "usr/bin/passwd", 0o4755)
    (root / "usr/bin/python3.11").write_text("")
    os.chmod(root / "usr/bin/python3.11", 0o755)
    lab_image._finish_root(root)
    assert _set_ids(root) == []
    assert (root / "usr/bin/python3.11").stat().st_mode & 0o7777 == 0o755


# -- 3. a distribution guest's build script under another user's TMPDIR ------------------------


def _recipe(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A recipe whose build script (a real one) notes the TMPDIR it was given and builds a
    guest's files, as fixtures/images/systemd/build does with mktemp and mmdebstrap."""
    recipes = tmp_path / "recipes"
    (recipes / "systemd").mkdir(parents=True)
    script, seen = recipes / "systemd" / "build", tmp_path / "seen-tmpdir"
    script.write_text("#!/bin/sh\nset -eu\n"
                      f"echo \"${{TMPDIR:-/tmp}}\" > {seen}\n"
                      "mkdir -p \"$1\"; touch \"$1/disk.qcow2\" \"$1/vmlinuz\"\n")
    script.chmod(0o755)
    monkeypatch.setattr(distro, "REPO_ROOT", recipes)
    return script, seen


@as_root
def test_3_a_distro_guest_is_not_built_under_another_users_tmpdir(tmp_path, monkeypatch):
    script, seen = _recipe(tmp_path, monkeypatch)
    theirs = tmp_path / "usertmp"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)
    monkeypatch.setenv("TMPDIR", str(theirs))
    monkeypatch.setattr(tempfile, "tempdir", None)  # (as a process that starts with it)
    dest = tmp_path / "cache" / "systemd" / "0123456789abcdef"
    dest.parent.mkdir(parents=True)
    with pytest.raises(UnsafePathError, match=f"owned by uid {NOBODY}"):
        distro._build("systemd", script, "", dest, log=lambda s: None)
    assert not seen.exists(), "the build script ran under their TMPDIR"
    assert not dest.exists()


@as_root
def test_3_a_distro_guest_is_built_under_the_checked_temporary_folder(tmp_path, monkeypatch):
    script, seen = _recipe(tmp_path, monkeypatch)
    ours = tmp_path / "roottmp"
    ours.mkdir(mode=0o755)
    monkeypatch.setenv("TMPDIR", str(ours))
    monkeypatch.setattr(tempfile, "tempdir", None)
    dest = tmp_path / "cache" / "systemd" / "0123456789abcdef"
    dest.parent.mkdir(parents=True)
    distro._build("systemd", script, "", dest, log=lambda s: None)
    assert seen.read_text().strip() == str(ours)
    assert (dest / "manifest.json").is_file()


# -- 4. check-root-tree: the standard library a .venv's pyvenv.cfg names -----------------------


def _venv_home(top: Path, home: str) -> None:
    (top / ".venv" / "pyvenv.cfg").write_text(
        f"home = {home}\ninclude-system-site-packages = false\nversion = 3.11.2\n")


@as_root
def test_4_a_venv_whose_standard_library_is_another_users_is_refused(tmp_path):
    """The .venv was made by another user with their own Python, ``--copies`` (binaries
    copied, no link out), then chowned to root: its pyvenv.cfg still names their Python."""
    top = _checkout(tmp_path / "srv" / "hotplug-harness")
    theirs = tmp_path / "home" / "alice" / ".pyenv" / "versions" / "3.11.2"
    (theirs / "bin").mkdir(parents=True)
    (theirs / "lib" / "python3.11" / "json").mkdir(parents=True)
    (theirs / "lib" / "python3.11" / "os.py").write_text("")
    (theirs / "lib" / "python3.11" / "json" / "__init__.py").write_text("")
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(tmp_path / "home" / "alice")],
                   check=True)
    _venv_home(top, str(theirs / "bin"))
    r = _check_tree(top, PATH="/usr/bin:/bin")
    assert r.returncode == 1 and str(tmp_path / "home" / "alice") in r.stderr \
        and "pyvenv.cfg" in r.stderr, r.stderr


@as_root
def test_4_a_venv_whose_home_is_missing_or_relative_is_refused(tmp_path, shared_tmp):
    top = _checkout(tmp_path / "srv" / "hotplug-harness")
    _venv_home(top, str(shared_tmp / "py" / "bin"))  # (anyone could make it)
    r = _check_tree(top, PATH="/usr/bin:/bin")
    assert r.returncode == 1 and "does not exist" in r.stderr, r.stderr
    _venv_home(top, "py/bin")
    r = _check_tree(top, PATH="/usr/bin:/bin")
    assert r.returncode == 1 and "relative" in r.stderr, r.stderr


@as_root
def test_4_a_venv_of_the_systems_python_still_passes(tmp_path):
    top = _checkout(tmp_path / "srv" / "hotplug-harness")
    _venv_home(top, "/usr/bin")
    r = _check_tree(top, PATH="/usr/bin:/bin")
    assert r.returncode == 0, r.stderr
