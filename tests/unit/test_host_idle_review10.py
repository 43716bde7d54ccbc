"""Issue 31, tenth adversarial read. What it found, one section below each:

1. a link on the way to a folder root trusts was judged by where it finally leads, not by who
   can repoint it: check-root-tree followed a PATH or PYTHONPATH entry, and the folders
   above each place a link of the tree leads to, with ``stat -L`` and never asked who owned
   a link among them; harness.core.paths.check_ancestors (PATH, PYTHONPATH, the vfio
   journal's and the run's folders, a --root copy's files) checked the first link's owner
   and then only the end of its chain. Another user's link in a sticky folder such as /tmp,
   met on the way, passed while it led to a root folder, and was repointed afterwards to a
   folder of theirs (a program root runs by name, a journal root trusts);
2. check_trusted_tree (the image cache root boots and runs from) judged a link of the cache
   by the real path its chain ended at: a chain that left the cache through another user's
   link and came back inside passed, theirs to repoint at a kernel or a QEMU of their own.

Each finding's tests fail on the code before its fix. Real files and links, and a second user
(nobody) who owns a link in a sticky folder; no guest is booted."""

import os
from pathlib import Path

import pytest

from harness.core.paths import (UnsafePathError, check_search_path, check_trusted_tree,
                                private_dir, read_trusted_file)

from .test_host_idle_review5 import NOBODY, as_root
from .test_paths import _check_tree, _checkout


def sticky(tmp_path: Path) -> Path:
    """A sticky folder everybody can write, like /tmp (root's, below root's tmp_path)."""
    folder = tmp_path / "sticky"
    folder.mkdir()
    folder.chmod(0o1777)
    return folder


def nobodys_link(folder: Path, name: str, to: Path) -> Path:
    """A link of nobody's in ``folder`` (sticky): they may repoint it whenever they like."""
    link = folder / name
    link.symlink_to(to)
    os.lchown(link, NOBODY, NOBODY)  # (as if nobody had made it: the same link, theirs)
    return link


def roots_link(at: Path, to: Path) -> Path:
    at.parent.mkdir(parents=True, exist_ok=True)
    at.symlink_to(to)
    return at


# -- 1. every link on the way is judged by its owner, not by where it leads now ---------------


@as_root
def test_1_check_root_tree_refuses_a_path_entry_that_is_another_users_link(tmp_path):
    """PATH=/tmp/x/bin:... with /tmp/x/bin nobody's link to /usr/bin: stat -L saw /usr/bin,
    root's; nobody then points it at a folder of theirs, and make's recipes run their sh."""
    top = _checkout(tmp_path / "srv" / "hotplug-harness")
    link = nobodys_link(sticky(tmp_path), "bin", Path("/usr/bin"))
    for var in ("PATH", "PYTHONPATH"):
        env = {"PATH": f"{link}:/usr/bin:/bin"} if var == "PATH" else \
            {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(link)}
        r = _check_tree(top, **env)
        assert r.returncode == 1 and f"the link {link}" in r.stderr and \
            f"owned by uid {NOBODY}" in r.stderr, (var, r.stderr)
    assert _check_tree(top, PATH="/usr/bin:/bin").returncode == 0


@as_root
def test_1_check_root_tree_refuses_a_link_of_another_user_above_where_the_tree_leads(tmp_path):
    """A .venv link that leads to <nobody's link>/python3: the hop's folder part was checked
    with stat -L (root's /usr/bin), and nobody swaps the link under the interpreter root runs."""
    top = _checkout(tmp_path / "srv" / "hotplug-harness")
    link = nobodys_link(sticky(tmp_path), "pybin", Path("/usr/bin"))
    (top / ".venv/bin/python3.11").unlink()
    (top / ".venv/bin/python3.11").symlink_to(link / "python3")
    r = _check_tree(top, PATH="/usr/bin:/bin")
    assert r.returncode == 1 and f"the link {link}" in r.stderr and \
        f"owned by uid {NOBODY}" in r.stderr, r.stderr


@as_root
def test_1_a_path_entry_whose_chain_of_links_passes_through_another_users_is_refused(
        tmp_path, monkeypatch):
    """Root's link /opt/tools/bin -> /tmp/x (nobody's) -> /usr/bin: only the first link's owner
    and the end of the chain were checked."""
    link = nobodys_link(sticky(tmp_path), "tools", Path("/usr/bin"))
    entry = roots_link(tmp_path / "opt" / "bin", link)
    monkeypatch.setenv("PATH", f"{entry}:/usr/bin:/bin")
    with pytest.raises(UnsafePathError, match=f"{link} .*owned by uid {NOBODY}"):
        check_search_path()
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("PYTHONPATH", str(entry))
    with pytest.raises(UnsafePathError, match=f"PYTHONPATH entry {entry}: .*{link}"):
        check_search_path()


@as_root
def test_1_a_private_folder_reached_through_another_users_link_is_refused(tmp_path):
    """The vfio journal's folder (or a run's) behind root's link -> nobody's link -> a root
    folder: nobody repoints theirs, and root's next run reads their journal."""
    real = tmp_path / "var" / "lib"
    real.mkdir(parents=True)
    link = nobodys_link(sticky(tmp_path), "lib", real)
    above = roots_link(tmp_path / "etc" / "lib", link)
    with pytest.raises(UnsafePathError, match=f"{link} .*owned by uid {NOBODY}"):
        private_dir(above / "hotplug-harness")
    assert private_dir(real / "hotplug-harness").is_dir()  # (root's own folder: fine)


@as_root
def test_1_an_inventory_in_a_folder_reached_through_another_users_link_is_refused(tmp_path):
    """The inventory (which devices root takes) read through a folder link of root's whose
    next hop is nobody's: read_trusted_file followed the file's own links hop by hop, but
    judged the folders above each hop by where their chain ended."""
    real = tmp_path / "etc" / "hotplug-harness"
    real.mkdir(parents=True)
    (real / "inventory.toml").write_text("")
    link = nobodys_link(sticky(tmp_path), "conf", real)
    above = roots_link(tmp_path / "srv" / "conf", link)
    with pytest.raises(UnsafePathError, match=f"{link} .*owned by uid {NOBODY}"):
        read_trusted_file(above / "inventory.toml")
    assert read_trusted_file(real / "inventory.toml") == ""


@as_root
def test_1_roots_own_chains_of_links_still_pass(tmp_path, monkeypatch):
    """Root's links all the way (/bin -> usr/bin on a merged-/usr host, and a chain of two)."""
    first = roots_link(tmp_path / "a" / "bin", Path("/usr/bin"))
    entry = roots_link(tmp_path / "b" / "bin", first)
    monkeypatch.setenv("PATH", f"{entry}:/bin:/usr/bin")
    check_search_path()
    top = _checkout(tmp_path / "srv" / "hotplug-harness")
    assert _check_tree(top, PATH=f"{entry}:/bin:/usr/bin").returncode == 0


# -- 2. the image cache's links, hop by hop too -----------------------------------------------


@as_root
def test_2_a_cache_link_whose_chain_passes_through_another_users_link_is_refused(tmp_path):
    """The image cache root runs from: a link of root's that leads, through nobody's link in
    /tmp, back to a file inside it was judged by where it ended (inside), and nobody repoints
    theirs at a kernel or a QEMU of their own."""
    top = tmp_path / "cache"
    (top / "build").mkdir(parents=True)
    (top / "build" / "vmlinux").write_text("")
    link = nobodys_link(sticky(tmp_path), "vmlinux", top / "build" / "vmlinux")
    (top / "build" / "kernel").symlink_to(link)
    with pytest.raises(UnsafePathError, match=f"{link} .*owned by uid {NOBODY}"):
        check_trusted_tree(top)
    (top / "build" / "kernel").unlink()
    (top / "build" / "kernel").symlink_to("vmlinux")
    check_trusted_tree(top)  # (root's link inside the tree: fine)
