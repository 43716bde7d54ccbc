"""`.ci/check-root-tree` and a file system mounted inside the checkout (read 46b's side note).

The guard's ``find -xdev`` does not look into a file system mounted inside the tree (a
tmpfs or a disk at ``fixtures/images/build``), so a file another user owns there passed
while the guard's header said the image cache is "checked in full". Only root can mount in
the host's namespace, so this is the guard keeping its word rather than a way in: the run's
own ``check_trusted_tree`` crosses mounts and refused it later. Now the guard refuses any
mount inside the tree, naming it. Each test runs the guard in a mount namespace of its own
(``unshare --mount``), so the host's mounts are not touched."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .test_host_idle_review29b import ROOT_DIR, _checkout
from .test_paths import NOBODY

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a mount, a file of nobody's)"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare here"),
]


def _guard_with_a_mount(top: Path, mount_at: Path | None, nobody_file: bool):
    """The guard run on ``top`` in a mount namespace of its own where a tmpfs is mounted at
    ``mount_at`` (none: no mount; root's, 0755: a tmpfs's default 1777 would be refused
    as a folder others can write), holding a file of nobody's if ``nobody_file``."""
    script = 'exec sh "$1" "$2"'
    if mount_at is not None:
        script = ('mount -t tmpfs -o mode=0755 hh-check "$3" && : > "$3/kernel" && '
                  + ('chown 65534 "$3/kernel" && ' if nobody_file else '') + script)
    env = {k: v for k, v in os.environ.items() if k not in ("SUDO_UID", "TMPDIR")}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(ROOT_DIR / ".ci/check-root-tree"), str(top), str(mount_at or "")],
        capture_output=True, text=True, timeout=60, env=env)


def test_a_file_system_mounted_in_the_image_cache_is_refused_and_named(tmp_path):
    top = _checkout(tmp_path / "opt" / "hotplug-harness")
    build = top / "fixtures/images/build"
    build.mkdir(parents=True)
    assert NOBODY == 65534
    r = _guard_with_a_mount(top, build, nobody_file=True)
    assert r.returncode != 0, f"a nobody's file on a tmpfs at {build} passed: {r.stderr}"
    assert "mounted inside it" in r.stderr and str(build) in r.stderr, r.stderr


def test_a_mount_with_only_roots_files_is_refused_too(tmp_path):
    """What a mount holds is not looked at, so it is refused whoever owns its files."""
    top = _checkout(tmp_path / "opt" / "hotplug-harness")
    (top / "cache dir").mkdir()
    r = _guard_with_a_mount(top, top / "cache dir", nobody_file=False)
    assert r.returncode != 0 and f"{top}/cache dir" in r.stderr, r.stderr


def test_control_a_mount_beside_the_tree_passes_and_so_does_no_mount(tmp_path):
    """A mount outside the checkout (its sibling, whose name starts like it) passes, and so
    does the same checkout with no mount."""
    top = _checkout(tmp_path / "opt" / "hotplug-harness")
    sibling = tmp_path / "opt" / "hotplug-harness-cache"
    sibling.mkdir()
    r = _guard_with_a_mount(top, sibling, nobody_file=True)
    assert r.returncode == 0, r.stderr
    r = _guard_with_a_mount(top, None, nobody_file=False)
    assert r.returncode == 0, r.stderr
