"""Issue 31, read 36b (NICs and their netdevs in every namespace, leases and the journal, the
VF give-back, temporary folders, CI files, exit status). What it found, one section below (the
test's docstring: the shape, why the harness lets it through, what is lost), on main at
3d4d6b2:

1. (temporary folders; runs must not hurt each other) a run's temporary folders
   (``hh-<owner>-...``: every guest's QMP socket and disk overlay, and the run's saved guest
   states, ``hh-<owner>-states-XXXXXXXX``, which all its processes share) are tagged with
   the PID of the process that *decided* the run, and :func:`harness.run.hygiene.sweep_stale`
   (which every other run of the same user runs when it decides) removes every such folder
   whose tag names no live process. docs/runconfig say the tag is "the PID of the process
   that started the run"; but a run without host devices (``make qualify``, ``make test``:
   ``-n 4``) is decided by whichever xdist *worker* collects a guest test first
   (``pytest_collection_modifyitems``: the controller collects nothing), and its PID becomes
   the tag. A worker that dies mid-run (a crash in a C extension such as libvirt-python, the
   OOM killer, a ``kill`` of a hung worker) is replaced by xdist ("replacing crashed worker gw0":
   up to 4 x ``-n`` crashes by default, ``--max-worker-restart``) and the run goes on (the
   test that crashed is reported failed; every other test still runs), its controller and the other workers alive,
   their guests' overlays and sockets, and the saved states, in folders tagged with the dead
   PID. The next run of the same user that decides deletes them all under the live run: a
   second CI job on the same shell runner, a developer's second terminal, and in ``make
   test`` the run's own self-tests, which start child runs (``python -m pytest`` in
   tests/harness/test_faults.py, test_no_silent_pass.py, test_kernel_health.py...) with the
   same TMPDIR, each deciding and sweeping. The live run's saved states are gone,
   and every guest it boots after that fails in set-up (:meth:`StateCache.claim` opens its
   lock file in the states folder, which no longer exists: ``FileNotFoundError``); its
   running guests' QMP sockets and overlays are unlinked under them.

Each test asserts the safe behaviour and fails on 3d4d6b2; the controls show what is still
swept (a run that is really gone) and what is kept (a run whose deciding process lives).

Looked at and found covered on 3d4d6b2 (no test): :meth:`NetView.use_of` and
:func:`_uppers` (a down port: uppers by ``master``, top-level ``link``, ``info_data``; GRE/IPIP
tunnels' ``dev`` shows both as ``link``), routes of every table (IPv4, IPv6, ECMP
``nexthops``; IPv4 routes and nexthop objects go with the link's ``down``), ``ss`` TCP, UDP
and raw sockets scoped ``%ifname`` and ``/proc/net/packet`` per namespace (``cat`` entered in
the namespace reads that namespace's ``/proc/self/net``), netconsole (``netpoll_setup`` opens
its interface: it is up, whatever its name has become), XDP; RDMA ports (``_rdma_ports_up``),
switchdev representors (``_representor``, ``_ports_shown``), ``_ports_unseen``;
``_interfaces``' ``may_have`` for USB NICs (a USB NIC on a judged driver with no interface
here is refused by the node rule); the journal (``_check_entry`` of every key written as root,
``owner_alive`` with ``pid_start``, ``_held_elsewhere``, ``_leased_on_host``,
``refuse_other_journal``); ``_restore_sriov`` (the count back only when it is the one the run
set, no live run relies on it, and every VF and the PF are proven idle; a reused count's
entry lets go; ``restore --force``'s VF entries go first and a QEMU holding a VF's group
keeps the count), ``enable_vfs``'s ``_refuse_stale_count`` and reuse, a worker's
``_make_vfs``, ``_hold_and_rely`` and ``release`` of a PF's address (its leases' live entries
stay ``in-use``); ``refuse_usb_handed`` (bus id or sysfs folder; the binder's own
hand-overs); ``Vfio.give_back`` after xdist's ``teardown_nodes`` (the wrapper runs last, so a
worker's failed release is retried once its PID is gone, and a failure sets the exit status
and rewrites the summary); ``_nothing_tested``; the GitLab, Jenkins and systemd files' order
and artifacts (``cloud-init/**`` and ``id_*`` excluded).

Seen, not reported (no shape strong enough): journal entries carry no boot id, so one left by
a run the host's crash ended is judged after the reboot against the new boot's state, where
only ``set``'s equality says the VFs are the run's (a host that makes the same count at boot,
its VFs idle, would have them removed by the next `restore`; the host must then have made
none when the run started, or the run would have reused them); the claim's re-reads judge
the network rule (``network_uses``) but not the rest of the node rule (an IB port that goes
ACTIVE, a keyboard plugged in that feeds the console, a PTP pin programmed) during their
seconds.
"""

from __future__ import annotations

import os
import tempfile
import types
from pathlib import Path

import pytest

from harness.core.paths import new_private_dir, run_tmp_prefix
from harness.core.runconfig import RunConfig
from harness.run import hygiene
from harness.run import session as session_mod
from harness.run.session import HarnessSession


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """The temporary folder both runs use (the user's /tmp), private to this test."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(mode=0o700)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def _deciding_worker(run_dir: Path, monkeypatch) -> RunConfig:
    """What an xdist worker of an emulated run does when it collects the first guest test and
    so decides the run (:meth:`HarnessSession._decide`, QEMU's version and the pace given):
    in a child process, which then ends as a crashed worker does. Returns the run.json it
    wrote, as the run's other (and replacement) workers load it."""
    monkeypatch.setattr(session_mod, "qemu_version", lambda binary: "8.2.2")
    monkeypatch.setattr(session_mod, "_require_qemu", lambda binary, version: None)
    hs = object.__new__(HarnessSession)
    hs.plan = RunConfig.new(run_dir.parent, run_dir=run_dir, backend="emulated",
                            qemu_binary="qemu-system-x86_64", machines=("q35",))
    hs.option = types.SimpleNamespace(time_factor=1.0, accel="tcg", lab_accel="tcg",
                                      boot_timeout=None, no_snapshot=False, snapshot_cache=None)
    hs.driver, hs.user_image, hs._image = "qmp", None, None
    hs.backend = types.SimpleNamespace(boot_attempts=1)
    hs.starter = os.getpid()  # (the worker's workerinput: its controller, this process)
    run_dir.mkdir(parents=True, mode=0o700)
    pid = os.fork()
    if pid == 0:  # the worker gw0: decides, then dies (xdist replaces it; the run goes on)
        code = 1
        try:
            hs._decide()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return RunConfig.load(run_dir / "run.json")  # (3d4d6b2 tagged it with the dead worker's pid)


def test_1_another_run_keeps_away_from_a_live_run_whose_deciding_worker_was_replaced(
        tmp_path, private_tmp, monkeypatch):
    """An emulated run (``make qualify -n 4``), its controller alive (this process: its run
    folder is ``run-<stamp>-<controller's pid>``, as ``RunConfig.new`` names it), was decided
    by worker gw0, which has since crashed and been replaced. The run's saved states and a
    running guest's folder (made by a live worker from the run.json) are tagged with gw0's
    PID. Another run of the same user decides now and sweeps: the live run's folders must
    stay."""
    run_dir = tmp_path / "reports" / f"run-20261207-090000-{os.getpid()}"
    run = _deciding_worker(run_dir, monkeypatch)
    states = Path(run.states_dir)
    guest = new_private_dir(run_tmp_prefix(run.owner))  # a live worker's guest: QMP, overlay
    (guest / "qmp.sock").write_text("")
    (states / "0123456789abcdef01234567").mkdir()  # a saved shape the run restores from
    assert states.is_dir() and guest.is_dir()

    swept = hygiene.sweep_stale()  # the other run's _decide

    assert str(states) not in swept and states.is_dir(), (
        f"another run removed the live run's saved states {states}: {swept}")
    assert str(guest) not in swept and (guest / "qmp.sock").exists(), (
        f"another run removed a live guest's folder {guest}: {swept}")


def test_1_control_a_run_whose_processes_are_all_gone_is_still_swept(private_tmp):
    """A run that really died (its controller and workers gone, as after a reboot or a
    ``kill -9`` of the whole job) leaves folders tagged with a PID nothing has: swept."""
    dead = _gone_pid()
    left = new_private_dir(run_tmp_prefix(str(dead)))
    assert str(left) in hygiene.sweep_stale()
    assert not left.exists()


def test_1_control_a_run_whose_deciding_process_lives_is_kept(private_tmp):
    """The root nightly's vfio run is decided by its controller (``HarnessSession``'s
    ``__init__`` for a backend that takes host devices), which lives to the run's end: kept."""
    mine = new_private_dir(run_tmp_prefix(str(os.getpid())))
    assert str(mine) not in hygiene.sweep_stale()
    assert mine.is_dir()


def _gone_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid

