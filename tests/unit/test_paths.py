"""What root writes is safe from other local users (harness.core.paths): the saved-states cache
(root's QEMU restores what is in it) and the vfio journal (it says which driver each device
goes back to). The other user is real: a process running as ``nobody`` plants the files."""

import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness.core.paths import (UnsafePathError, check_test_path, new_private_dir, private_dir,
                                 read_trusted_file)
from harness.core.errors import ConfigError, HostDeviceError
from harness.guest.snapshot import StateCache, new_run_cache_dir
from harness.host.binding import Journal
from harness.host.inventory import load_inventory

NOBODY = 65534
#: The mark of a test that acts as a second user (nobody): the reviews' files use it per test.
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second user "
                                                       "(nobody): run as root, as CI does")
pytestmark = as_root


def victim(tmp_path: Path) -> Path:
    """A file of root's that nobody may change (what a planted link would have root write)."""
    target = tmp_path / "root-only" / "shadow"
    target.parent.mkdir(mode=0o700)
    target.write_text("root's\n")
    return target


def as_nobody(script: str) -> None:
    """Run a shell ``script`` as the user nobody (the local attacker)."""
    subprocess.run(["/bin/sh", "-ec", script], check=True, timeout=30, cwd="/",
                   preexec_fn=lambda: (os.setgroups([]), os.setgid(NOBODY), os.setuid(NOBODY)))


@pytest.fixture
def shared_tmp():
    """A sticky, world-writable folder like /tmp, owned by root."""
    d = Path(tempfile.mkdtemp(prefix="hh-test-sharedtmp-"))
    d.chmod(0o1777)
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=True)


def test_a_cache_folder_another_user_made_first_is_refused(shared_tmp):
    """Issue 31, item 11: the old default (hh-<pid>-snapshots in /tmp, exist_ok) used whatever a
    local user had made there, with a state.bin root's QEMU then restored."""
    planted = shared_tmp / "hh-4242-snapshots"
    as_nobody(f"mkdir -m 777 {planted}; echo 'not a state' > {planted}/state.bin")
    with pytest.raises(UnsafePathError, match="owned by uid 65534"):
        StateCache(planted, qemu_version="7.2.22")


def test_a_symlink_planted_as_the_cache_is_refused(shared_tmp):
    target = shared_tmp / "elsewhere"
    target.mkdir(mode=0o700)
    link = shared_tmp / "cache"
    as_nobody(f"ln -s {target} {link}")
    with pytest.raises(UnsafePathError, match="is a symlink"):
        private_dir(link)


def test_the_runs_own_cache_is_private_and_unpredictable(shared_tmp, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(shared_tmp))
    first, second = new_run_cache_dir("4242"), new_run_cache_dir("4242")
    assert first != second and first.name.startswith("hh-4242-states-")
    for d in (first, second):
        st = d.stat()
        assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700


def test_a_cache_below_a_folder_another_user_can_write_is_refused(tmp_path):
    open_folder = tmp_path / "team"
    open_folder.mkdir()
    os.chown(open_folder, 0, NOBODY)
    open_folder.chmod(0o775)  # group-writable, not sticky: its group can swap our folder
    with pytest.raises(UnsafePathError, match="writable by its group"):
        private_dir(open_folder / "states")


def test_journal_in_a_group_writable_folder_is_refused(tmp_path):
    """Issue 31, item 12: a group-writable journal folder let its group plant the temporary
    file as a symlink (root wrote through it) or a forged journal."""
    folder = tmp_path / "journal"
    folder.mkdir()
    os.chown(folder, 0, NOBODY)
    folder.chmod(0o770)
    with pytest.raises(HostDeviceError, match="others can write to it"):
        Journal(folder / "vfio-journal.json").read()


def test_journal_write_never_follows_a_planted_link(tmp_path):
    """Inside a folder only root can write nobody can plant anything; and even a link left
    there (an older version's folder, or root's own mistake) is neither followed nor kept."""
    folder = private_dir(tmp_path / "journal")
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    (folder / "vfio-journal.json.tmp").symlink_to(victim)
    journal = Journal(folder / "vfio-journal.json")
    with journal.locked():
        journal.write([{"bdf": "0000:05:00.0", "driver": "e1000e", "pid": 1}])
    assert victim.read_text() == "root's file\n"
    assert not (folder / "vfio-journal.json").is_symlink()
    (folder / "vfio-journal.json").unlink()
    (folder / "vfio-journal.json").symlink_to(victim)
    with pytest.raises(HostDeviceError, match="cannot read the vfio journal"):
        journal.read()


def test_new_private_dir_refuses_a_parent_another_user_owns(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(UnsafePathError, match="owned by uid 65534"):
        new_private_dir("hh-1-states-", theirs)


def test_discover_write_never_writes_through_a_planted_link(shared_tmp):
    """`discover --write inv.toml` as root in a folder others can write: a dangling symlink
    planted at that name is refused, not followed (found by a second, adversarial read)."""
    from harness.cli.host import discover_main

    target = shared_tmp / "target-root-would-create"
    as_nobody(f"ln -s {target} {shared_tmp}/inv.toml")
    with pytest.raises(ConfigError, match="exists; not overwriting it"):
        discover_main(["--write", str(shared_tmp / "inv.toml")])
    assert not target.exists()


def test_another_users_look_alike_temp_folder_is_not_this_runs(shared_tmp, monkeypatch):
    """/tmp/hh-<owner>-x made by another user is neither reported as this run's leftover nor
    removed by its sweep."""
    from harness.run import hygiene

    monkeypatch.setattr(tempfile, "tempdir", str(shared_tmp))
    as_nobody(f"mkdir {shared_tmp}/hh-4242-planted")
    assert hygiene.sweep_run(shared_tmp / "no-run", "4242") == []
    assert (shared_tmp / "hh-4242-planted").is_dir()


# -- what root reads and runs: the inventory, the checkout and its .venv -------------------------

INVENTORY = """\
[[device]]
role = "nic"
bdf = "0000:05:00.0"
gateway = "10.0.5.1"
"""
ROOT_DIR = Path(__file__).resolve().parents[2]


def _inventory_in(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "inventory.toml"
    path.write_text(INVENTORY)
    path.chmod(0o644)
    return path


def test_an_inventory_only_root_can_write_is_read(tmp_path, monkeypatch):
    monkeypatch.delenv("SUDO_UID", raising=False)
    inv = load_inventory(_inventory_in(tmp_path / "etc"), check_host=False)
    assert [d.bdf for d in inv.devices] == ["0000:05:00.0"]


def test_an_inventory_another_user_rewrote_is_refused(shared_tmp, monkeypatch):
    """The inventory says which host devices root takes: one another user owns (or can
    rewrite) chooses them. Before, root read any inventory it was given."""
    monkeypatch.delenv("SUDO_UID", raising=False)
    path = _inventory_in(shared_tmp / "etc")
    os.chown(path, NOBODY, NOBODY)
    as_nobody(f"echo 'bdf = \"0000:00:17.0\"' >> {path}")
    with pytest.raises(UnsafePathError) as e:
        load_inventory(path, check_host=False)
    assert e.value.message == (f"refusing the inventory {path}: the file {path} is owned by uid "
                               f"{NOBODY}, so another user could choose what root does with it")
    assert "chown root and chmod go-w" in e.value.hint


@pytest.mark.parametrize("mode, who", [(0o664, "its group"), (0o646, "every user")])
def test_an_inventory_others_can_write_is_refused(tmp_path, mode, who, monkeypatch):
    monkeypatch.delenv("SUDO_UID", raising=False)
    path = _inventory_in(tmp_path / "etc")
    path.chmod(mode)
    with pytest.raises(UnsafePathError, match=f"the file {path} is writable by {who}"):
        load_inventory(path, check_host=False)


def test_an_inventory_in_a_folder_others_can_write_is_refused(tmp_path, monkeypatch):
    """Swapping the file needs only the folder: a group-writable (not sticky) folder above it,
    or one another user owns, is refused too, and a link is judged where it leads."""
    monkeypatch.delenv("SUDO_UID", raising=False)
    path = _inventory_in(tmp_path / "team")
    os.chown(tmp_path / "team", 0, NOBODY)
    (tmp_path / "team").chmod(0o775)
    link = tmp_path / "inventory.toml"
    link.symlink_to(path)
    with pytest.raises(UnsafePathError, match=f"the folder {tmp_path / 'team'} .* is writable "
                                              "by its group"):
        load_inventory(link, check_host=False)
    (tmp_path / "team").chmod(0o755)
    os.chown(tmp_path / "team", NOBODY, NOBODY)
    with pytest.raises(UnsafePathError, match="is owned by uid 65534"):
        load_inventory(link, check_host=False)


def test_under_sudo_the_invoking_users_inventory_is_theirs(tmp_path, monkeypatch):
    path = _inventory_in(tmp_path / "home")
    os.chown(path, NOBODY, NOBODY)
    monkeypatch.setenv("SUDO_UID", str(NOBODY))
    assert read_trusted_file(path) == INVENTORY


def _checkout(top: Path) -> Path:
    """A checkout as `make nightly` runs it: code, a .venv and a __pycache__, all root's."""
    for rel in ("harness/__pycache__", ".venv/bin", "reports/run-1",
                "fixtures/images/build/0123abcd", "fixtures/images/build/lab/4567/root/var/mail"):
        (top / rel).mkdir(parents=True)
    for rel in ("harness/__init__.py", "harness/__pycache__/x.cpython-311.pyc",
                ".venv/bin/python3.11", "fixtures/images/build/0123abcd/vmlinux"):
        (top / rel).write_text("")
    (top / ".venv/bin/python").symlink_to("python3.11")
    return top


def _check_tree(top: Path, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "SUDO_UID"}
    return subprocess.run(["sh", str(ROOT_DIR / ".ci/check-root-tree"), str(top)],
                          capture_output=True, text=True, timeout=60, env={**environ, **env})


def test_the_nightlys_checkout_and_venv_are_refused_when_another_user_could_write_them(
        tmp_path):
    """`make nightly` runs the checkout's code and .venv as root: a group-writable .venv (a
    umask 002 install), a .pyc another user left, or a folder above the checkout others can
    write, each is refused before any of it runs."""
    top = _checkout(tmp_path / "srv" / "hotplug-harness")
    assert _check_tree(top).returncode == 0
    os.chown(top / "reports/run-1", NOBODY, NOBODY)          # not run: not looked at
    # the lab host's root file system: its links are paths inside it, not followed here
    (top / "fixtures/images/build/lab/4567/root/var/spool").symlink_to("/nonexistent/in/guest")
    assert _check_tree(top).returncode == 0
    # but no exception for its modes (L1 runs it as root; its root is read-only in L1)
    (top / "fixtures/images/build/lab/4567/root/var/mail").chmod(0o2775)
    r = _check_tree(top)
    assert r.returncode == 1 and "4567/root/var/mail" in r.stderr, r.stderr
    (top / "fixtures/images/build/lab/4567/root/var/mail").chmod(0o755)
    (top / "fixtures/images/build/0123abcd/vmlinux").chmod(0o666)  # root's QEMU boots it
    r = _check_tree(top)
    assert r.returncode == 1 and "0123abcd/vmlinux" in r.stderr, r.stderr
    (top / "fixtures/images/build/0123abcd/vmlinux").chmod(0o644)

    (top / ".venv/bin/python3.11").chmod(0o775)
    r = _check_tree(top)
    assert r.returncode == 1 and f"{top}/.venv/bin/python3.11" in r.stderr, r.stderr
    (top / ".venv/bin/python3.11").chmod(0o755)

    os.chown(top / "harness/__pycache__/x.cpython-311.pyc", NOBODY, NOBODY)
    r = _check_tree(top)
    assert r.returncode == 1 and "x.cpython-311.pyc" in r.stderr, r.stderr
    assert _check_tree(top, SUDO_UID=str(NOBODY)).returncode == 0  # sudo by that user
    os.chown(top / "harness/__pycache__/x.cpython-311.pyc", 0, 0)

    (tmp_path / "srv").chmod(0o777)
    r = _check_tree(top)
    assert r.returncode == 1 and f"the folder {tmp_path / 'srv'} above it is writable" in \
        r.stderr, r.stderr


def test_what_leads_out_of_the_checkout_is_checked_where_it_leads(tmp_path):
    """Third adversarial read: the check followed no symlink, so a .venv linked to a folder of
    a user's (or a python linked into one, or a .pth adding one to Python's path) ran their
    files as root. Each target and the folders above it are checked like the tree."""
    top = _checkout(tmp_path / "srv" / "hotplug-harness")
    theirs = tmp_path / "home" / "alice" / "venv"
    (theirs / "bin").mkdir(parents=True)
    (theirs / "bin" / "python3.11").write_text("")
    for d in (tmp_path / "home", tmp_path / "home" / "alice", theirs, theirs / "bin"):
        d.chmod(0o755)
    os.chown(tmp_path / "home" / "alice", NOBODY, NOBODY)
    (top / ".venv/bin/python").unlink()
    (top / ".venv/bin/python").symlink_to(theirs / "bin" / "python3.11")
    r = _check_tree(top)
    assert r.returncode == 1 and f"the folder {tmp_path / 'home' / 'alice'} above " \
        f"{theirs / 'bin' / 'python3.11'} is owned by uid {NOBODY}" in r.stderr, r.stderr
    os.chown(tmp_path / "home" / "alice", 0, 0)
    assert _check_tree(top).returncode == 0  # the same link to root's own folder: fine
    os.chown(theirs / "bin" / "python3.11", NOBODY, NOBODY)
    r = _check_tree(top)
    assert r.returncode == 1 and str(theirs / "bin" / "python3.11") in r.stderr, r.stderr

    (top / ".venv/bin/python").unlink()
    (top / ".venv/bin/python").symlink_to(tmp_path / "nowhere" / "python")
    r = _check_tree(top)
    assert r.returncode == 1 and "leads out of the tree to nothing" in r.stderr, r.stderr
    (top / ".venv/bin/python").unlink()
    (top / ".venv/bin/python").symlink_to("python3.11")

    site = top / ".venv/lib/python3.11/site-packages"
    site.mkdir(parents=True)
    (site / "extra.pth").write_text(f"import sys\n{theirs}\nrelative/ignored\n")
    assert _check_tree(top).returncode == 1  # python3.11 in it is still nobody's
    os.chown(theirs / "bin" / "python3.11", 0, 0)
    theirs.chmod(0o777)
    r = _check_tree(top)
    assert r.returncode == 1 and str(theirs) in r.stderr, r.stderr


def test_a_test_file_in_roots_own_temporary_folder_needs_confcutdir_there(shared_tmp):
    """Stop 46's CI: root's probe test file in a folder of its own (0700) below a sticky /tmp.
    pytest would import the sticky folder's ``conftest.py`` for it (anyone may make one), so
    root's run refuses it, naming that folder and saying ``--confcutdir`` at the file's own
    folder is the way; with that cut the file is taken."""
    folder = shared_tmp / "probe"
    folder.mkdir(mode=0o700)
    test = folder / "probe_test.py"
    test.write_text("def test_x():\n    pass\n")
    with pytest.raises(UnsafePathError) as e:
        check_test_path(test, None)
    assert f"the folder {shared_tmp} (of the test path {test})" in str(e.value), e.value
    assert "sticky" in str(e.value) and "--confcutdir naming its folder" in e.value.hint
    check_test_path(test, folder)
