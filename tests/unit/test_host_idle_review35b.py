"""Issue 31, read 35b (NICs and their netdevs in every namespace, leases and the journal, the
give-back, shared paths, CI files, exit status). What it found, one section below (the test's
docstring: the host shape, why the harness lets it through, what would be lost), on main at
26c8ba4:

1. (b) `make nightly`'s options check (``check-pytest-args``,
   :func:`harness.core.paths.check_pytest_options`) holds "any other word pytest may take as a
   path (an option's value such as ``--qemu-binary PATH``)" to its owner, docs/fleet.md says;
   but :func:`~harness.core.paths.path_words` sees an option's value only when it is a word of
   its own: the same value joined with ``=`` (``--junitxml=/srv/lab/results/nightly.xml``,
   the form most CI snippets use) is never looked at. pytest's own writers then write there
   as root, following links: ``--junitxml=``/``--junit-xml=`` (``open(logfile, "w")``),
   ``--debug=FILE``, ``--log-file=FILE`` (logging's FileHandler); in a folder another user
   can write (a results folder the lab group shares, setgid and group-writable; a colleague's
   folder), a link they leave at that name has root truncate and overwrite a file of their
   choosing (shown end to end: root's pytest, given the option through ``PYTEST_ADDOPTS`` as
   `make nightly` gives it, overwrote a root-owned file through uid 65534's link; the kernel's
   ``protected_symlinks`` covers sticky world-writable folders only). The word given apart
   (``--junitxml /srv/...``) is refused: the control.

Looked at and found covered on 26c8ba4 (no test): ``NetView.use_of`` for a down port (an upper
by ``master``, a top-level ``link`` or ``info_data``, routes in every table with ECMP
nexthops, ``ss`` TCP/UDP/raw sockets scoped ``%ifname`` and ``/proc/net/packet`` by
ifindex, netconsole by name or MAC from the command line and every configfs mount, XDP);
what an up port carries without a socket (refused as up); ``_ports_unseen`` with an mlx5
SF's netdev below the PF (its auxiliary device keeps the PF), IPoIB (the RDMA port rule);
``_network_since`` over a PF and its VFs and their representors, ``vfs_removed``;
``_restore_sriov``'s ``set``/``autoprobe`` and ``_live_users_of_vfs``; ``enable_vfs``'s reuse
of VFs that were there; the usb-host hand-over's journal entry (``_check_usb_entry``'s path
parts), ``_same_usb`` (a replug changes the address) and ``_usb_holders``;
``hygiene.sweep_stale`` (root's own folders only, by a PID owner tag); the GitLab and
systemd units' order (root's installed check before make, restore in after_script and
ExecStopPost), the Jenkinsfile's (``timeout`` signals the whole group); in HH_PYTEST_ARGS,
xdist's ``--tx popen//python=PATH`` (the command line's ``-n`` replaces every ``--tx``),
``-W ...::mod.Category`` (imports a module by name from root's own ``sys.path`` only),
``--basetemp=DIR`` (pytest removes what is there, symlink-safe, then ``mkdir`` fails on a
name made again meanwhile), ``--report-dir=``/``--snapshot-cache=``/``--image-cache=``
(the harness holds them itself: ``private_dir``, ``build_once``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness.core.errors import ConfigError
from harness.core.paths import check_pytest_options

NOBODY = 65534


def _others_folder(tmp_path):
    """A folder uid 65534 owns (a colleague's, or a group-writable results folder): what is
    in it is theirs to make, links included."""
    d = tmp_path / "shared-results"
    d.mkdir()
    os.chmod(tmp_path, 0o755)
    if os.geteuid() == 0:
        os.chown(d, NOBODY, NOBODY)
    return d


@pytest.mark.skipif(os.geteuid() != 0, reason="the check acts as root only, as make nightly runs")
@pytest.mark.parametrize("option", ["--junitxml", "--junit-xml", "--debug", "--log-file"])
def test_1_a_file_root_writes_in_another_users_folder_joined_with_equals_is_refused(
        tmp_path, option):
    """(b) Host shape: the nightly's results are wanted where the lab collects them
    (``HH_PYTEST_ARGS=--junitxml=/srv/lab/results/vtd-a.xml``, a folder of the lab group,
    group-writable; or a colleague's folder), or pytest's debug log or log file is asked for
    while a flaky host is chased (``--debug=/home/alice/hh-debug.log``,
    ``--log-file=...``).

    Path: ``check_pytest_options`` takes the words pytest may take as paths from
    :func:`~harness.core.paths.path_words`, which skips every word that starts with ``-``:
    ``--junitxml=PATH`` is one word, so ``PATH`` is never held to its owner, where
    ``--junitxml PATH`` (two words) is (the control below). root's pytest then opens PATH for
    writing, following a link there (``LogXML.pytest_sessionfinish``: ``open(self.logfile,
    "w")``; ``--debug``'s ``open(path, "w")``; logging's ``FileHandler``): a link another user
    leaves at that name has root overwrite any file.

    On 26c8ba4: no error. Fix: in :func:`harness.core.paths.path_words`, take the value of a
    ``--long=VALUE`` word as a path word too (fail closed: any option's), and hold it as
    ``check_test_path`` does (or, for the options pytest writes to, refuse any path that is
    not in a folder only root can write)."""
    target = _others_folder(tmp_path) / "nightly.xml"
    joined, apart = f"{option}={target}", f"{option} {target}"
    with pytest.raises(ConfigError):  # (UnsafePathError is one)
        check_pytest_options(apart, "HH_PYTEST_ARGS")  # precondition: two words are refused
    with pytest.raises(ConfigError):
        check_pytest_options(joined, "HH_PYTEST_ARGS")


@pytest.mark.skipif(os.geteuid() != 0, reason="the check acts as root only, as make nightly runs")
@pytest.mark.parametrize("option", ["--junitxml", "--debug", "--log-file"])
def test_1_root_s_pytest_writes_through_their_link(tmp_path, option):
    """(b) The same shape end to end: what ``check-pytest-args`` passes, root's pytest acts on
    as `make nightly` gives it (``PYTEST_ADDOPTS``). uid 65534 leaves a link at the name in
    their folder, to a file of root's; root's pytest, run with ``--junitxml=`` that name,
    overwrites root's file (the test shows that the check passes, then that the file root
    owned now holds what pytest wrote). The harness's plugin aims junitxml into the run
    folder only when no ``--junitxml`` is given (``pytest_configure``: ``not
    config.option.xmlpath``), and :func:`harness.plugin.runner.aim_junit` says why: "one in
    a temporary folder another user can write could be swapped for a link to a file root
    then overwrites"; a given one is left as it is. ``--debug=FILE`` is opened in pytest's
    ``pytest_cmdline_parse``, ``--log-file=FILE`` at its configure: both before any hook of
    the harness could look."""
    victim = tmp_path / "roots-file"
    victim.write_text("root's own content\n")
    folder = _others_folder(tmp_path)
    link = folder / "nightly.xml"
    link.symlink_to(victim)
    os.lchown(link, NOBODY, NOBODY)
    words = f"{option}={link}"
    try:
        check_pytest_options(words, "HH_PYTEST_ARGS")
        passed = True
    except ConfigError:
        passed = False
    test = tmp_path / "t" / "test_one.py"
    test.parent.mkdir()
    test.write_text("def test_one():\n    pass\n")
    env = dict(os.environ, PYTEST_ADDOPTS=words)
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                          str(test)], env=env, capture_output=True, text=True, timeout=120,
                         cwd=test.parent)
    overwritten = victim.read_text() != "root's own content\n"
    assert not (passed and overwritten), (
        f"HH_PYTEST_ARGS={words} passed check-pytest-args, and root's pytest then wrote "
        f"through uid 65534's link over {victim} (a file of root's): "
        + run.stdout[-400:])


def test_1_control_a_results_file_in_roots_own_folder_still_passes(tmp_path):
    """Control: ``--junitxml=`` a file in a folder only root writes passes the check."""
    os.chmod(tmp_path, 0o755)
    check_pytest_options(f"--junitxml={tmp_path / 'out.xml'} -k nic", "HH_PYTEST_ARGS")
