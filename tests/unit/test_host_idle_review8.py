"""Issue 31, eighth adversarial read. What it found, one section below each:

1. root ran its tools (ip, ss, nsenter, setpriv, which execs the checked QEMU, qemu-img...)
   by name from whatever PATH it had, and imported from whatever PYTHONPATH: a folder another
   user can write there gave them root;
2. check-root-tree did not follow a .venv script's `#!` interpreter, nor an editable
   install's source folder, out of the tree;
3. a run that made no folder had junitxml write by name into an unchecked $TMPDIR;
4. a function on no driver (or its PF's VF on none) read idle without every process's files
   read, and without the VF's BARs looked at;
5. in a shared report folder root removed another user's `latest`, and wrote its junit.xml
   through a link in it;
6. root read other users' summary.json files, and an untrusted .git's HEAD, following links
   and blocking on FIFOs;
7. a controller whose disk the host uses through another controller (one disk, two paths, no
   multipath) read idle;
8. a report that raised at the run's end skipped the give-back;
9. under --root, a link in the tree led sysfs writes out of it, on the copy's evidence;
10. restore gave a group's member back to its host driver while a QEMU on iommufd held
    another member.

Each finding's tests fail on the code before its fix. Real files, real programs, a fake sysfs
tree where the host is read, and a second user (nobody); no guest is booted and nothing is
downloaded."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from _pytest.junitxml import xml_key

import harness.plugin as plugin
from harness import cli
from harness.core.errors import HostDeviceError
from harness.core.paths import UnsafePathError, check_search_path, private_dir
from harness.host.binding import VfioBinder, restore_from_journal
from harness.host.network import NetView
from harness.host.safety import HostUsage
from harness.host.sysfs import Sysfs
from harness.lab.outer import write_job
from harness.plugin import runner
from harness.run import identity
from harness.qemu import process
from harness.images import builtin as builtin_images
from harness.report import junit, records
from harness.report import summary as report_summary

from . import test_host_idle_review5 as review5
from .test_host_idle_review5 import NOBODY, SATA2, as_nobody, as_root, nobodys_folder
from .test_host_idle_review6 import roots_secret
from .test_paths import _check_tree, _checkout
from . import fakesysfs
from .test_host_idle_review3 import qemu_on_iommufd, sysfs_path_on_the_host
from .test_host_proven_idle import PORT0, PORT1
from .test_host_sriov import PF, VF0, host, set_numvfs

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
host = host  # (a fixture: the lab host with an SR-IOV 82576)
shared_tmp = review5.shared_tmp  # (a fixture: a sticky folder others can write, like /tmp)

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("ip", "ss", "nsenter", "setpriv", "cat", "qemu-img", "git")


def nobodys_bin(tmp_path: Path, marker: Path) -> Path:
    """A folder of nobody's, first on root's PATH, with an ``ip``, ``ss``, ``setpriv``... that
    leave ``marker`` (in root's own folder) when root runs them."""
    folder = nobodys_folder(tmp_path / "bin")
    for tool in TOOLS:
        (folder / tool).write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
        (folder / tool).chmod(0o755)
        os.chown(folder / tool, NOBODY, NOBODY)
    return folder


@pytest.fixture
def planted_path(tmp_path, monkeypatch) -> Path:
    """PATH is nobody's folder first, then root's usual ones; returns the marker."""
    marker = tmp_path / "root" / "ran"
    marker.parent.mkdir()
    monkeypatch.setenv("PATH", f"{nobodys_bin(tmp_path, marker)}:{os.environ['PATH']}")
    process._pdeathsig_prefix.cache_clear()
    yield marker
    process._pdeathsig_prefix.cache_clear()


# -- 1. root runs no program from a PATH folder another user can write -------------------------


@as_root
def test_1_the_host_evidence_is_not_read_with_another_users_ip(planted_path):
    """Every verdict (discover, doctor, plan, bind, a run's set-up) runs `ip -j ...`, `ss` and
    `nsenter` by name: nobody's `ip` ran as root."""
    with pytest.raises(UnsafePathError, match=f"PATH entry .*/bin: .* owned by uid {NOBODY}"):
        NetView.read(Sysfs("/"))
    assert not planted_path.exists()


@as_root
def test_1_qemu_is_not_started_through_another_users_setpriv(planted_path):
    """QEMU is checked before root runs it, but `setpriv --pdeathsig KILL -- QEMU` (the
    program that execs it) was taken from PATH unchecked: nobody's setpriv ran as root, with
    the checked QEMU as its argument."""
    with pytest.raises(UnsafePathError, match=f"owned by uid {NOBODY}"):
        process._pdeathsig_prefix()
    assert not planted_path.exists()


@as_root
def test_1_the_commands_refuse_such_a_path_before_they_run_anything(planted_path, capsys):
    """`python -m harness restore` (make nightly's first step, and the CI jobs' clean-up)."""
    assert cli.main(["restore", "--journal", str(planted_path.parent / "journal.json")]) == 1
    err = capsys.readouterr().err
    assert "PATH entry" in err and "what to do:" in err
    assert not planted_path.exists()


@as_root
def test_1_a_pytest_run_refuses_such_a_path_before_its_session(planted_path, tmp_path):
    """The plugin made its session (qemu-img of the user's guest disks, QEMU's --version) with
    whatever PATH it had."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--co", "-q",
                        str(REPO / "tests/unit/test_waits.py")], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 4, p.stdout + p.stderr
    assert "PATH entry" in p.stdout and f"owned by uid {NOBODY}" in p.stdout
    assert not planted_path.exists()


@as_root
@pytest.mark.parametrize("entry", ["", ".", "bin"])
def test_1_a_relative_path_entry_is_refused(entry, monkeypatch):
    """An empty or relative PATH entry is the folder root happens to be in."""
    monkeypatch.setenv("PATH", f"/usr/bin:{entry}:/bin")
    with pytest.raises(UnsafePathError, match="relative entry"):
        NetView.read(Sysfs("/"))


@as_root
def test_1_a_sticky_world_writable_path_entry_is_refused(tmp_path, monkeypatch):
    """A sticky folder (like /tmp) protects what is in it, not the names not yet there."""
    folder = tmp_path / "sticky"
    folder.mkdir()
    folder.chmod(0o1777)
    monkeypatch.setenv("PATH", f"{folder}:/usr/bin:/bin")
    with pytest.raises(UnsafePathError, match="writable by every user"):
        NetView.read(Sysfs("/"))


@as_root
def test_1_a_pythonpath_folder_another_user_owns_is_refused(tmp_path, monkeypatch, capsys):
    """PYTHONPATH is where root's Python imports from, as PATH is where it runs from."""
    theirs = nobodys_folder(tmp_path / "lib")
    monkeypatch.setenv("PYTHONPATH", f"{theirs}")
    assert cli.main(["restore", "--journal", str(tmp_path / "journal.json")]) == 1
    assert f"PYTHONPATH entry {theirs}: " in capsys.readouterr().err


@as_root
def test_1_check_root_tree_refuses_such_a_path_before_make_runs(planted_path, tmp_path):
    """The CI jobs and the systemd unit run check-root-tree, then `make` by name: from a PATH
    folder of nobody's, make itself (and the shell the recipes run in) was theirs."""
    top = _checkout(tmp_path / "srv" / "hotplug-harness")
    r = _check_tree(top, PATH=os.environ["PATH"])
    assert r.returncode == 1 and "the PATH entry" in r.stderr and \
        f"owned by uid {NOBODY}" in r.stderr, r.stderr
    for bad in (f"{os.environ['PATH']}:", "bin:/usr/bin:/bin"):
        r = _check_tree(top, PATH=bad)
        assert r.returncode == 1 and "PATH holds" in r.stderr, r.stderr
    r = _check_tree(top, PATH="/usr/bin:/bin", PYTHONPATH=str(planted_path.parent.parent / "bin"))
    assert r.returncode == 1 and "the PYTHONPATH entry" in r.stderr, r.stderr
    assert _check_tree(top, PATH="/usr/local/bin:/usr/bin:/bin").returncode == 0
    assert not planted_path.exists()


@as_root
def test_1_the_sudo_users_checkout_on_the_lab_jobs_pythonpath_passes(tmp_path, monkeypatch):
    """The lab host's job puts the checkout on PYTHONPATH; under sudo the checkout is the sudo
    user's, who is trusted on the host and, told by the job, in the lab host too."""
    checkout = nobodys_folder(tmp_path / "hh")
    monkeypatch.setenv("SUDO_UID", str(NOBODY))
    job = write_job(tmp_path, tmp_path / "run.json", checkout, checkout, ["-k", "nic"])
    assert f"export SUDO_UID={NOBODY}\n" in job.read_text()
    monkeypatch.setenv("PYTHONPATH", str(checkout))
    check_search_path()  # (what the run inside the lab host checks first)
    monkeypatch.delenv("SUDO_UID")
    assert "SUDO_UID" not in write_job(tmp_path, tmp_path / "run.json", checkout, checkout,
                                       []).read_text()
    with pytest.raises(UnsafePathError, match=f"PYTHONPATH entry {checkout}: "):
        check_search_path()


@as_root
def test_1_roots_own_path_still_runs(tmp_path, monkeypatch):
    """Root-owned folders, one linked (/bin -> usr/bin), one that does not exist: all fine."""
    monkeypatch.setenv("PATH", f"{tmp_path / 'missing'}:/usr/local/bin:/usr/bin:/bin")
    process._pdeathsig_prefix.cache_clear()
    try:
        assert process._pdeathsig_prefix()[1:] == ("--pdeathsig", "KILL", "--")
    finally:
        process._pdeathsig_prefix.cache_clear()


# -- 2. check-root-tree follows what a .venv runs outside the tree, not only its links ---------


def users_build(tmp_path: Path) -> Path:
    """/home/alice/hh: the folder the checkout's .venv was made in (``make setup`` as alice),
    before root copied the checkout to /srv and chowned it: alice's python and harness."""
    home = nobodys_folder(tmp_path / "home")
    for rel in (".venv/bin", "harness"):
        (home / "hh" / rel).mkdir(parents=True)
    (home / "hh/.venv/bin/python").write_text("#!/bin/sh\n")
    (home / "hh/harness/__init__.py").write_text("")
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(home)], check=True)
    return home / "hh"


@as_root
def test_2_a_venv_script_whose_interpreter_is_another_users_python_is_refused(tmp_path):
    """`make nightly` runs .venv/bin/pytest, whose `#!` pip wrote as the python of the folder
    the .venv was made in: the check followed links and .pth entries, not that line, so root
    ran alice's python."""
    top = _checkout(tmp_path / "srv" / "hotplug-harness")
    theirs = users_build(tmp_path)
    pytest_script = top / ".venv/bin/pytest"
    pytest_script.write_text(f"#!{theirs}/.venv/bin/python\nimport sys\n")
    pytest_script.chmod(0o755)
    r = _check_tree(top)
    assert r.returncode == 1 and f"owned by uid {NOBODY}" in r.stderr and \
        f"the interpreter of {pytest_script}" in r.stderr, r.stderr
    # pip's form for a long path: `#!/bin/sh` and the python on the next line
    pytest_script.write_text(f"#!/bin/sh\n'''exec' \"{theirs}/.venv/bin/python\" \"$0\" \"$@\"\n"
                             "' '''\nimport sys\n")
    r = _check_tree(top)
    assert r.returncode == 1 and str(theirs) in r.stderr, r.stderr
    # the python it named is gone (the folder was moved): whoever makes it chooses
    pytest_script.write_text(f"#!{tmp_path}/gone/.venv/bin/python\n")
    r = _check_tree(top)
    assert r.returncode == 1 and "leads out of the tree to nothing" in r.stderr, r.stderr
    pytest_script.write_text(f"#!{top}/.venv/bin/python\nimport sys\n")  # (make setup's own)
    assert _check_tree(top).returncode == 0, _check_tree(top).stderr


@as_root
def test_2_an_editable_install_of_another_users_source_is_refused(tmp_path):
    """`pip install -e .` maps `harness` to the folder it ran in (setuptools' finder): pytest
    loads the plugin through it before anything puts the checkout on sys.path, so root
    imported alice's harness."""
    top = _checkout(tmp_path / "srv" / "hotplug-harness")
    theirs = users_build(tmp_path)
    site = top / ".venv/lib/python3.11/site-packages"
    site.mkdir(parents=True)
    finder = site / "__editable___hotplug_harness_0_1_0_finder.py"
    finder.write_text(f"import sys\nMAPPING: dict[str, str] = {{'harness': '{theirs}/harness'}}\n"
                      "NAMESPACES: dict[str, list[str]] = {}\n")
    r = _check_tree(top)
    assert r.returncode == 1 and f"owned by uid {NOBODY}" in r.stderr and \
        "an editable install's source" in r.stderr, r.stderr
    finder.write_text(f"MAPPING: dict[str, str] = {{'harness': '{top}/harness'}}\n")
    assert _check_tree(top).returncode == 0, _check_tree(top).stderr


# -- 3. a run that made no folder writes its JUnit file into no temporary folder ---------------


@as_root
def test_3_junit_of_a_run_with_no_folder_is_not_written_under_another_users_tmpdir(
        tmp_path, monkeypatch):
    """A run that never needed a guest (`pytest tests/unit` as root, a -k that selects no
    scenario) had junitxml write a mkstemp file in $TMPDIR, unchecked, which junitxml then
    opened by name: in a TMPDIR of nobody's (not sticky) they swap it for a link, and root
    writes the XML over the file it leads to."""
    theirs = nobodys_folder(tmp_path / "usertmp")
    monkeypatch.setattr(tempfile, "tempdir", str(theirs))
    xml = SimpleNamespace(logfile="unset")
    config = SimpleNamespace(stash={xml_key: xml})
    runner.aim_junit(config, None)
    assert not Path(xml.logfile).resolve().is_relative_to(theirs) and \
        list(theirs.iterdir()) == []
    assert xml.logfile == os.devnull


def test_3_a_run_with_no_folder_still_ends_cleanly_and_writes_no_junit(tmp_path):
    """The plugin's own JUnit file of a run with no folder goes nowhere, and says nothing."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                        str(REPO / "tests/unit/test_waits.py")], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "junit" not in p.stdout.lower() and "devnull" not in p.stdout
    assert Path(os.devnull).is_char_device()


# -- 4. a function on no driver, or its PF's VF on none, is proven idle only by what was read ---


def test_4_an_unbound_function_is_not_idle_while_some_processes_files_cannot_be_read(lab):
    """A function on no driver is used only from user space, through its sysfs BARs, which
    only every process's fds and maps show: with pid 5000's unreadable it still read "on no
    driver: no host driver uses it" (the unreadable-files rule skipped unbound functions)."""
    lab.kernel(lab.sys / "bus/pci/drivers/ixgbe/unbind", PORT1)
    assert HostUsage.read(lab.root).verdict(PORT1).idle
    lab.proc("5000/comm", "dpdk-testpmd\n")
    lab.file("proc/5000/fd", "not a folder")
    lab.proc("5000/maps/x", "")  # (a folder: cannot be read as a file)
    verdict = HostUsage.read(lab.root).verdict(PORT1)
    assert not verdict.idle
    assert any(u.startswith(f"cannot tell whether {PORT1} is in use: ") and "pid 5000" in u
               for u in verdict.uses), verdict.uses


def test_4_a_vf_on_no_driver_whose_bar_a_process_maps_keeps_its_pf(host):
    """The PF's verdict took a VF on no driver as idle without looking at its BARs: a
    user-space driver on the VF (mapped resource0) lost it when the PF was unbound (or its
    sriov_numvfs written)."""
    (host.dev_dir(PF) / "sriov_drivers_autoprobe").write_text("0\n")
    set_numvfs(host, 2)
    assert host.driver_of(VF0) is None
    assert HostUsage.read(host.root).verdict(PF).idle
    host.proc("5000/comm", "dpdk-testpmd\n")
    host.proc("5000/maps", "7f1c40000000-7f1c40080000 rw-s 00000000 00:15 30512 "
                           f"{sysfs_path_on_the_host(host, VF0, 'resource0')}\n")
    uses = HostUsage.read(host.root).verdict(PF).uses
    assert any(u.startswith(f"its VF {VF0}'s resource0 (sysfs) is open or mapped by pid 5000")
               for u in uses), uses


# -- 5. reports/latest in a shared report folder -----------------------------------------------


#: What a run's end hands the report (harness/plugin/runner.py: finish).
META = {"backend": "vfio", "accel": "kvm", "accel_reason": "kvm", "qemu_binary": "qemu",
        "qemu_version": "7.2.22", "image": {}, "lab": None}


def finished_run(report_root: Path) -> Path:
    """A run folder of root's (private, as the session makes it) with its JUnit file."""
    run = private_dir(report_root / "run-20261205-184500-4242")
    (run / "junit.xml").write_text('<?xml version="1.0"?><testsuites><testsuite name="s" '
                                   'tests="0"/></testsuites>\n')
    return run


def nobodys_latest(report_root: Path, run: Path, secret: Path) -> Path:
    """nobody's `latest` in the shared report folder, made to look like this run's copy, with
    a junit.xml that is a link to root's secret."""
    latest = nobodys_folder(report_root / "latest")
    as_nobody(f"echo '{{\"run\": \"{run.name}\"}}' > {latest}/summary.json; "
              f"echo mine > {latest}/notes.txt; ln -s {secret} {latest}/junit.xml")
    return latest


@as_root
def test_5_root_does_not_delete_another_users_latest(shared_tmp, tmp_path):
    """A report folder shared by several users (sticky, as the harness allows): root's end of
    run removed (rmtree) the `latest` folder nobody had made there, with what was in it."""
    secret = roots_secret(tmp_path / "root-only")
    run = finished_run(shared_tmp)
    latest = nobodys_latest(shared_tmp, run, secret)
    done = report_summary.finish_run(run, shared_tmp, META)
    assert (latest / "notes.txt").read_text() == "mine\n"  # theirs: left alone
    assert done["latest"] is None
    assert "copy of the newest run" not in "\n".join(report_summary.summary_lines(done))
    junit.add_junit_identity(run, shared_tmp)
    assert secret.read_text() == "PRIVATE"


@as_root
def test_5_root_writes_no_junit_through_another_users_latest(shared_tmp, tmp_path):
    """When root's copy could not be made (nobody made `latest` again between root's rmtree
    and its copytree, which then failed), the end of run wrote its junit.xml into that
    `latest` of nobody's, through their link: over root's secret."""
    secret = roots_secret(tmp_path / "root-only")
    run = finished_run(shared_tmp)
    (run / "summary.json").write_text(json.dumps({"run": run.name, **META}))
    nobodys_latest(shared_tmp, run, secret)
    junit.add_junit_identity(run, shared_tmp)
    assert secret.read_text() == "PRIVATE"


def test_5_roots_own_latest_is_replaced_by_the_new_runs_copy(tmp_path):
    report_root = tmp_path / "reports"
    report_root.mkdir()
    old = report_root / "latest"
    old.mkdir()
    (old / "stale.txt").write_text("old run")
    run = finished_run(report_root)
    done = report_summary.finish_run(run, report_root, META)
    assert done["latest"] == str(old / "report.html") and (old / "report.html").is_file()
    assert not (old / "stale.txt").exists() and not list(report_root.glob(".latest-*"))
    junit.add_junit_identity(run, report_root)
    assert "hotplug." in (old / "junit.xml").read_text()


# -- 6. what root only reads, in folders others can write: no FIFO, no link to a device -------


class Blocked(BaseException):
    """Raised by :func:`deadline` (not an OSError: the code under test catches those)."""


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) if the block blocks longer than ``seconds``."""
    def expired(signum, frame):
        raise Blocked(f"blocked for {seconds} s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@as_root
def test_6_a_fifo_in_another_users_run_folder_does_not_hang_roots_report(shared_tmp):
    """The end of root's run read every `*/summary.json` of the (shared) report folder for its
    trend pictures: nobody's run folder with a FIFO there hung it (before the devices of its
    dead workers were given back); a link there to /dev/zero or /dev/watchdog would have been
    opened and read as root."""
    theirs = nobodys_folder(shared_tmp / "run-20261205-000000-1")
    as_nobody(f"mkfifo {theirs}/summary.json")
    run = finished_run(shared_tmp)
    with deadline(5):
        assert records.load_runs(shared_tmp, 10) == []
        done = report_summary.finish_run(run, shared_tmp, META)
    assert done["run"] == run.name


@as_root
def test_6_another_users_runs_are_not_read_into_roots_report(shared_tmp):
    """Their summary.json files are theirs to shape (and theirs to make FIFOs or links, above):
    root's report read them into its trend pictures as runs of its own."""
    scenario = {"scenario": "nic", "platform": "pc", "outcome": "passed", "nodeid": "t"}
    for n in range(3):
        theirs = nobodys_folder(shared_tmp / f"run-20261205-00000{n}-1")
        (theirs / "summary.json").write_text(json.dumps(
            {"run": theirs.name, "finished_at": f"2026-12-05T00:00:0{n}", "tests": [scenario]}))
    run = finished_run(shared_tmp)
    (run / "summary.json").write_text(json.dumps(
        {"run": run.name, "finished_at": "2026-12-05T18:45:00", "tests": [scenario]}))
    assert report_summary.history(shared_tmp, {"run": run.name}) == []  # (fewer than 3 runs)
    assert [r["run"] for r in records.load_runs(shared_tmp, 10, owner=os.geteuid())] == \
        [run.name]


@as_root
def test_6_a_fifo_as_git_head_does_not_hang_root(shared_tmp, monkeypatch):
    """A .git others can write (a shared repository, core.sharedRepository=group): root runs no
    git there and reads HEAD as a file, and a FIFO planted as HEAD hung the run."""
    repo = shared_tmp / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(repo / ".git")], check=True)
    as_nobody(f"rm {repo}/.git/HEAD; mkfifo {repo}/.git/HEAD")
    monkeypatch.setattr(builtin_images, "REPO_ROOT", repo)
    with deadline(5):
        assert identity._harness_version()["commit"] is None


# -- 7. one disk through two controllers ---------------------------------------------------------


def with_wwid(host, disk: str, wwid: str) -> None:
    """The SCSI device of ``disk`` reports ``wwid`` (VPD page 0x83), as sysfs shows it."""
    d = Path(os.path.realpath(host.sys / "class/block" / disk))
    (d / "device").symlink_to(d.parent.parent)
    (d.parent.parent / "wwid").write_text(f"{wwid}\n")


SAS_WWID = "naa.5000c500a1b2c3d4"


def test_7_a_disk_the_host_mounts_through_another_controller_keeps_this_one(lab):
    """A dual-ported SAS disk cabled to two HBAs, no dm-multipath: the host mounts / from sda
    (00:17.0), and the same disk is sdd behind 06:00.0, which showed nothing mounted, held or
    open there: 06:00.0 was taken with the host's root disk behind it."""
    assert HostUsage.read(lab.root).verdict(SATA2).idle
    lab.add_disk("sdd", lab.sata_port(SATA2, 1))
    with_wwid(lab, "sda", SAS_WWID)
    with_wwid(lab, "sdd", SAS_WWID)
    uses = HostUsage.read(lab.root).verdict(SATA2).uses
    assert f"sdd is the same disk (wwid {SAS_WWID}) as sda: sda2 is mounted on /" in uses, uses
    with_wwid(lab, "sdb", "naa.5000c500ffffffff")  # (a disk of its own: no twin)
    assert not any("sdb is the same disk" in u for u in
                   HostUsage.read(lab.root).verdict(SATA2).uses)


# -- 8. the end of a run gives the host's devices back even when its report failed --------------


class Backend:
    """The backend's end-of-run give-back (harness.run.backends.Vfio.give_back gives back
    every journal entry of the run on the real host; here it says that it ran)."""

    def __init__(self):
        self.given_back = 0

    def give_back(self) -> list:
        self.given_back += 1
        return []


def test_8_devices_go_back_when_the_report_raised():
    """pytest_sessionfinish (the "nothing tested" check, the summary, the report) raised (a
    full disk, a QEMU that became untrusted for its version line...), and the give-back after
    it never ran: a dead worker's devices stayed on vfio-pci, and no HOST NOT RESTORED line."""
    backend = Backend()
    hs = SimpleNamespace(worker="", binder=object(), backend=backend)
    session = SimpleNamespace(exitstatus=pytest.ExitCode.OK, config=SimpleNamespace(
        stash={plugin._STASH_SESSION: hs}, pluginmanager=SimpleNamespace(
            get_plugin=lambda name: None)))
    wrapper = plugin.pytest_sessionfinish_give_back(session, 0)
    next(wrapper)  # (the other pytest_sessionfinish hooks run now)
    with pytest.raises(OSError, match="No space left"):
        wrapper.throw(OSError(28, "No space left on device"))
    assert backend.given_back == 1


# -- 9. --root: the evidence of a copy never takes a device of the real host ----------------------


def test_9_a_root_tree_whose_sysfs_leads_elsewhere_is_never_written_through(lab, tmp_path):
    """`harness bind --root DIR` reads DIR's files as the host's evidence (its ip/*.json, its
    /proc) and writes DIR/sys/...: with DIR's sys/bus/pci/devices/<bdf> a link to another
    tree (the real /sys, or here a stand-in for it), the device there was unbound on the
    copy's word."""
    elsewhere = tmp_path / "elsewhere"
    real_dev = lab.dev_dir(PORT1)
    elsewhere.mkdir()
    (elsewhere / "driver_override").write_text("(null)\n")
    link = lab.sys / "bus/pci/devices" / PORT1 / "driver_override"
    link.unlink()
    link.symlink_to(elsewhere / "driver_override")
    with pytest.raises(HostDeviceError, match="leads out of"):
        VfioBinder(lab.sysfs(), journal=lab.root / "var/lib/hotplug-harness/vfio-journal.json"
                   ).bind(PORT0, {PORT0, PORT1})
    assert (elsewhere / "driver_override").read_text() == "(null)\n"
    assert lab.driver_of(PORT0) == "ixgbe" and (real_dev / "driver").exists()


# -- 10. give back no member of a group a QEMU holds through another member's vfio device node --


def test_10_restore_leaves_the_whole_group_while_a_qemu_holds_one_member_on_iommufd(lab):
    """A QEMU on iommufd holds PORT0 through /dev/vfio/devices/vfio0 (not /dev/vfio/12): restore
    left PORT0 alone, but gave PORT1, of the same group, back to ixgbe: a host driver on a
    member of a group a guest uses (its DMA not isolated from the guest's)."""
    journal = lab.root / "var/lib/hotplug-harness/vfio-journal.json"
    VfioBinder(lab.sysfs(), journal=journal).bind(PORT0, {PORT0, PORT1})  # the run dies
    qemu_on_iommufd(lab, PORT0)
    lab.writes.clear()
    with pytest.raises(HostDeviceError) as e:
        restore_from_journal(lab.sysfs(), journal, include_live=True)
    assert (f"{PORT1}: failed: /dev/vfio/devices/vfio0 is still open by pid 4321") in \
        e.value.details, e.value.details
    assert lab.driver_of(PORT0) == lab.driver_of(PORT1) == "vfio-pci"
    assert lab.writes == []
