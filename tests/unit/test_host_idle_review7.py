"""Issue 31, seventh adversarial read: root ran a QEMU another user could write (--qemu-binary,
$HH_QEMU, --lab-qemu, the doctor's), pruned other users' run folders and cache builds (and let
planted newer ones push its own out), made its temporary folders under a TMPDIR another user
owns, and ran the lab host's pytest with the invocation folder first on sys.path. Each test
fails on the code before its fix. Real files, real programs, and a second user (nobody); no
guest is booted and nothing is downloaded."""

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.core.paths import UnsafePathError
from harness.guest import pool as pool_mod
from harness.guest.guest import Guest
from harness.host import doctor
from harness.images import builtin as builtin_images
from harness.images import debroot
from harness.lab import image as lab_image
from harness.lab.outer import write_job
from harness.qemu.machine import GuestImage, GuestSpec
from harness.qemu.process import qemu_version
from harness.report import retention
from harness.run import session

from . import test_host_idle_review5 as review5
from .test_host_idle_review5 import NOBODY, as_nobody, as_root, nobodys_folder, planted_lab_qemu

shared_tmp = review5.shared_tmp  # (a fixture: a sticky folder others can write, like /tmp)

FAKE_QEMU = "#!/bin/sh\ntouch {marker}\necho 'QEMU emulator version 10.0.0'\n"


def nobodys_qemu(tmp_path: Path, marker: Path) -> Path:
    """/opt/qemu/bin/qemu-system-x86_64 as a colleague installed it: the folders and the
    program are nobody's; when it runs it leaves ``marker`` (in root's folder)."""
    qemu = tmp_path / "opt/qemu/bin/qemu-system-x86_64"
    qemu.parent.mkdir(parents=True)
    qemu.write_text(FAKE_QEMU.format(marker=marker))
    qemu.chmod(0o755)
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(tmp_path / "opt")], check=True)
    return qemu


# -- 1. root runs only a QEMU nobody else can have written --------------------------------------


@as_root
def test_1_a_qemu_binary_another_user_owns_is_never_run(tmp_path):
    """--qemu-binary (or $HH_QEMU) /opt/qemu/bin/qemu-system-x86_64 of nobody's: root ran it
    (`--version`) as the run was decided, and every guest after."""
    marker = tmp_path / "ran"
    qemu = nobodys_qemu(tmp_path, marker)
    opt = SimpleNamespace(qemu_binary=str(qemu), image_cache=None)
    with pytest.raises(UnsafePathError, match=f"{tmp_path / 'opt'}.* is owned by uid {NOBODY}"):
        qemu_version(session._qemu_binary(opt))  # (what HarnessSession keeps, then runs)
    with pytest.raises(UnsafePathError):
        qemu_version(str(qemu))
    assert not marker.exists()


@as_root
def test_1_a_lab_qemu_another_user_owns_is_never_run(tmp_path):
    """--lab-qemu PATH was "taken as given": root ran it for its version, then as L1."""
    marker = tmp_path / "ran"
    qemu = nobodys_qemu(tmp_path, marker)
    with pytest.raises(UnsafePathError, match=f"is owned by uid {NOBODY}"):
        lab_image.choose_lab_qemu(str(qemu), "qemu-system-x86_64", tmp_path / "cache")
    with pytest.raises(UnsafePathError, match=f"is owned by uid {NOBODY}"):  # (auto: the host's)
        lab_image.choose_lab_qemu("auto", str(qemu), tmp_path / "cache")
    assert not marker.exists()


@as_root
def test_1_a_roots_qemu_in_a_folder_another_user_owns_is_never_run(tmp_path):
    """The program root's own, its folder nobody's: nobody swaps it for another."""
    marker = tmp_path / "ran"
    qemu = nobodys_qemu(tmp_path, marker)
    for p in (qemu, tmp_path / "opt", tmp_path / "opt/qemu"):
        os.chown(p, 0, 0)
    with pytest.raises(UnsafePathError, match=f"the folder {qemu.parent} .*is owned by uid {NOBODY}"):
        lab_image.choose_lab_qemu(str(qemu), "qemu-system-x86_64", tmp_path / "cache")
    assert not marker.exists()


@as_root
def test_1_a_doctors_qemu_another_user_owns_is_a_failed_check_not_run(tmp_path):
    marker = tmp_path / "ran"
    qemu = nobodys_qemu(tmp_path, marker)
    checks = doctor._qemu_checks(str(qemu), None, None, timeout=10)
    assert len(checks) == 1 and checks[0].ok is False
    assert f"is owned by uid {NOBODY}" in checks[0].detail
    assert not marker.exists()


@as_root
def test_1_the_default_and_backports_run_as_the_real_paths_checked(tmp_path):
    """The default name resolves to root's /usr/bin QEMU, and the plan keeps that path (what
    runs); `backports` is the cache's wrapper, checked as any program."""
    default = session._qemu_binary(SimpleNamespace(qemu_binary="qemu-system-x86_64",
                                                   image_cache=None))
    assert default == os.path.realpath(subprocess.run(
        ["sh", "-c", "command -v qemu-system-x86_64"], capture_output=True, text=True,
        check=True).stdout.strip())
    assert qemu_version(default)[0].isdigit()
    cache = tmp_path / "cache"
    out = planted_lab_qemu(cache, tmp_path / "ran")
    wrapper = session._qemu_binary(SimpleNamespace(qemu_binary="backports", image_cache=str(cache)))
    assert wrapper == str(out / "bin/qemu-system-x86_64")


# -- 2. prunes remove and count only our own ----------------------------------------------------


def _run_folder(root: Path, name: str, *, nobody: bool = False) -> Path:
    p = root / name
    if nobody:
        as_nobody(f"mkdir -m 755 {p} && echo '{{}}' > {p}/summary.json")
    else:
        p.mkdir()
        (p / "summary.json").write_text("{}\n")
    return p


@as_root
def test_2_root_prunes_no_other_users_run_folders_and_is_not_pushed_out(shared_tmp):
    """A report folder others share (sticky, like /tmp): root's prune deleted nobody's runs,
    and two newer run-* names nobody planted pushed both of root's runs out."""
    older = _run_folder(shared_tmp, "run-20261201-100000-1")
    newer = _run_folder(shared_tmp, "run-20261202-100000-1")
    theirs = [_run_folder(shared_tmp, "run-20261101-100000-9", nobody=True),
              _run_folder(shared_tmp, "run-20991231-235958-9", nobody=True),
              _run_folder(shared_tmp, "run-20991231-235959-9", nobody=True)]
    assert retention.prune(shared_tmp, keep=2) == []
    assert older.exists() and newer.exists() and all(p.exists() for p in theirs)
    assert retention.prune(shared_tmp, keep=1) == [older]
    assert newer.exists() and all(p.exists() for p in theirs)


@as_root
def test_2_root_prunes_no_other_users_cache_builds_and_is_not_pushed_out(shared_tmp):
    """debroot.prune in a cache others share: nobody's builds were removed, and a newer one
    nobody planted took the place of root's spare."""
    def build(name: str, age: int, nobody: bool = False) -> Path:
        d = shared_tmp / name
        if nobody:
            as_nobody(f"mkdir -m 755 {d} && echo '{{}}' > {d}/manifest.json")
        else:
            d.mkdir()
            (d / "manifest.json").write_text("{}\n")
        os.utime(d, (time.time() - age, time.time() - age))
        return d

    current = build("current", 0)
    roots_old, roots_spare = build("a-old", 300), build("b-spare", 200)
    theirs = [build("n-older", 400, nobody=True), build("n-newest", 10, nobody=True)]
    debroot.prune(shared_tmp, keep=current, spare=1)
    assert current.exists() and roots_spare.exists() and not roots_old.exists()
    assert all(p.exists() for p in theirs)


# -- 3. temporary folders only under a TMPDIR nobody else can write -----------------------------


@pytest.fixture
def nobodys_tmpdir(tmp_path, monkeypatch) -> Path:
    """TMPDIR is a folder of nobody's (not sticky): it can rename root's folders in it."""
    tmp = nobodys_folder(tmp_path / "usertmp")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


@as_root
def test_3_a_guests_temporary_folder_is_not_made_under_another_users_tmpdir(nobodys_tmpdir,
                                                                           tmp_path):
    """The folder holds QEMU's monitor socket and the disk overlay root's QEMU writes."""
    guest = Guest(GuestSpec(machine="q35"), GuestImage(kernel=tmp_path / "vmlinuz"),
                  workdir=tmp_path / "guest")
    try:
        with pytest.raises(UnsafePathError, match=f"owned by uid {NOBODY}"):
            guest._prepare()
    finally:
        guest.close()
    assert list(nobodys_tmpdir.iterdir()) == []


@as_root
def test_3_the_kvm_probe_and_the_image_build_are_not_made_under_another_users_tmpdir(
        nobodys_tmpdir, monkeypatch):
    reached = []

    def stop(*a, **k):
        reached.append(a)
        raise RuntimeError("went on under the planted TMPDIR")

    monkeypatch.setattr(pool_mod, "GuestPool", stop)
    monkeypatch.setattr(debroot, "resolve_kernel_package", stop)
    with pytest.raises(UnsafePathError, match=f"owned by uid {NOBODY}"):
        pool_mod.probe_boot(None, "qemu-system-x86_64", SimpleNamespace(boot=1.0))
    recipe = SimpleNamespace(kernel_package="linux-image-amd64", packages=[])
    with pytest.raises(UnsafePathError, match=f"owned by uid {NOBODY}"):
        builtin_images.build(recipe, nobodys_tmpdir / "out", log=lambda s: None)
    assert reached == [] and list(nobodys_tmpdir.iterdir()) == []


# -- 4. the lab host's pytest does not import from the invocation folder first ------------------


def test_4_the_lab_jobs_pytest_ignores_a_pytest_py_planted_in_the_invocation_folder(tmp_path):
    """L1 runs the job as root after `cd` to the invocation folder: `python3.11 -m pytest`
    put that folder first on sys.path, so a planted pytest.py ran instead of pytest."""
    invocation, marker = tmp_path / "invocation", tmp_path / "ran"
    invocation.mkdir()
    (invocation / "pytest.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    text = write_job(tmp_path, tmp_path / "run.json", invocation, tmp_path, ["-k", "nic"]).read_text()
    line = next(line for line in text.splitlines() if " -m pytest " in line)
    assert line.startswith("python3.11 -P -m pytest ")
    # That command, with this host's Python 3.11 (the venv's: it has pytest), asking only for
    # pytest's version:
    command = line.split(" pytest ")[0].replace("python3.11", shlex.quote(sys.executable), 1)
    r = subprocess.run(f"{command} pytest --version", shell=True, cwd=invocation,
                       capture_output=True, text=True, timeout=60)
    assert not marker.exists()
    assert r.returncode == 0 and "pytest" in (r.stdout + r.stderr), r.stderr
