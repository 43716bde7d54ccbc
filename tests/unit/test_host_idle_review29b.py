"""Issue 31, twenty-ninth adversarial read (b: NICs in every namespace, leases and the journal,
the state/journal paths, ci/ and .ci/, the exit-status rules). What it found, one section below
each (the docstring of each test says the host shape, why the harness calls it idle or safe,
and what would be lost), on main at e1a1143:

1. (a) a lease is a host-wide fact, but the journal that records it is a per-process setting
   (``HH_VFIO_JOURNAL``, ``bind --journal``, ``release --journal``): ``refuse_foreign`` and
   ``_live_users_of_vfs`` read only the journal of the binder at hand, and its lock is that
   journal's lock. A group a person bound by hand with their own journal (moved to vfio-pci,
   their QEMU not started yet) is, to a nightly on the default journal, a group on vfio-pci
   that nobody holds: proven idle and taken.
2. (a) netconsole on a NIC that is down is the rule's own case (docs/vfio.md: "no XDP program,
   no netconsole"), but ``network._netconsoles`` sees only the first target of a
   ``netconsole=`` (the kernel takes several, separated by ``;``) and nothing of the targets
   given as the module's parameter (``options netconsole netconsole=...`` in
   /etc/modprobe.d: neither /proc/cmdline nor, before Linux 6.7 or without
   CONFIG_NETCONSOLE_DYNAMIC, configfs shows them).
3. (b) `.ci/check-root-tree`, the guard root runs before `make nightly`, keeps its work files
   (the PATH entries it checks, the queue of links it follows) in ``mktemp -d``, which is made
   in ``$TMPDIR`` unchecked: a TMPDIR another user can write (the very TMPDIR the harness
   itself refuses: ``checked_tempdir``) lets them rename root's work folder and put theirs in
   its place, so root writes ``$work/search`` through their link and checks the PATH list they
   wrote, not its own (review 14 found the same in the distribution build script; the guard
   before make was left).
4. (no silent pass) the run's report is written before the end-of-run give-back: ``finish``
   (plain ``pytest_sessionfinish``) writes summary.json with ``exit_status`` 0 and
   ``not_given_back`` empty, and only then does the ``pytest_sessionfinish_give_back`` wrapper
   run ``give_back``, whose failure turns the exit status to 1 with a red line on the
   terminal alone: the report the CI uploads (and `qualify` merges) says the host was left
   clean.
5. (a) a network namespace that only the kernel holds is never searched: an NFS mount made
   through a named namespace (`nsenter --net=/run/netns/storage mount -t nfs4 ...`) keeps it
   alive after `ip netns del` (the RPC client's ``get_net``), with the storage port in it,
   up; no process, fd, socket or bind mount names it. For a function with one port that is
   "no interface in any namespace" (in use), but for a function with two ports (mlx4's
   ConnectX-3, cxgb4's one function for all ports) the port left in the host's namespace,
   down, proves the whole function idle (``HostUsage._network``: any netdev seen is enough).
"""

import json
import os
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.core.errors import ConfigError, HostDeviceError
from harness.host.binding import VfioBinder, restore_from_journal
from harness.host.safety import HostUsage

from . import fakesysfs
from .fakesysfs import FakeHost

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
PORT0, PORT1 = "0000:05:00.0", "0000:05:00.1"
BOTH = {PORT0, PORT1}
ROOT_DIR = Path(__file__).resolve().parents[2]
NOBODY = 65534


@pytest.fixture
def journal(fake_root):
    """The host's journal (the default one, under the fake root)."""
    return fake_root / "var/lib/hotplug-harness/vfio-journal.json"


def uses(host: FakeHost, bdf: str) -> tuple[str, ...]:
    return HostUsage.read(host.root).verdict(bdf).uses


# -- 1. a lease in another journal is no lease -------------------------------------------------


def test_1_a_group_bound_by_hand_with_its_own_journal_is_not_taken_by_a_run(lab, journal,
                                                                            fake_root):
    """Host shape: a person on the lab host runs `sudo HH_VFIO_JOURNAL=/root/hh/journal.json
    python -m harness bind 05:00.0 --with 05:00.1` (or `bind --journal ...`: both are
    documented options; a shell profile that exports HH_VFIO_JOURNAL for their own trials
    does the same), which moves the 82599's two ports (group 12) from ixgbe to vfio-pci,
    journals them in that file and prints "give it back: python -m harness release 05:00".
    They go to start their QEMU. Meanwhile the nightly (systemd unit: the default journal,
    /var/lib/hotplug-harness/vfio-journal.json) binds 05:00.0.

    Why it is called idle: ``VfioBinder.bind`` reads only its own journal
    (``refuse_foreign(self.fs, plan, self.journal.read(), hold)``) and takes only its own lock
    (``<journal>.lock``); the default journal has no entry of group 12, the ports are on
    vfio-pci and /dev/vfio/12 is open by no process (the person's QEMU has not started), so
    the verdict is "on vfio-pci and /dev/vfio/12 is open by no process" and the group is
    taken (a HOLD entry in the nightly's journal, nothing moved). The nightly's guest gets
    the ports; the person's QEMU fails (group busy), or, started first, the nightly's does;
    and the person's `release` gives the group back to ixgbe by their journal whenever the
    nightly's QEMU is between two tests, under the nightly's lease. The same holds for SR-IOV: a run that binds a VF
    journals its reliance on the PF's VFs in its journal, and the run that made them (another
    journal) writes 0 to sriov_numvfs under it. Expected: the lease is seen whatever journal
    recorded it (one host-wide place for leases and their lock), or a journal other than the
    host's one is refused when devices are bound on the host."""
    theirs = fake_root / "root/hh/journal.json"
    try:
        by_hand = VfioBinder(lab.sysfs(), journal=theirs, manual=True)
        lease = by_hand.bind(PORT0, BOTH)
    except (HostDeviceError, ConfigError) as e:  # (a journal other than the host's one
        assert "journal" in str(e), e              # refused: no lease can hide there)
        return
    assert lease.moved == [PORT0, PORT1] and lab.driver_of(PORT0) == "vfio-pci"
    lab.writes.clear()
    with pytest.raises(HostDeviceError, match=r"0000:05:00\.[01] \(group 12\)"):
        VfioBinder(lab.sysfs(), journal=journal).bind(PORT0, BOTH)  # the nightly
    assert lab.writes == []


def test_1_control_a_group_the_harness_moved_and_gave_back_is_taken_again(lab, journal):
    """Control: with no lease anywhere (the person released it), the nightly takes group 12
    and gives it back to ixgbe."""
    VfioBinder(lab.sysfs(), journal=journal, manual=True).bind(PORT0, BOTH)
    restore_from_journal(lab.sysfs(), journal, only={PORT0})
    assert lab.driver_of(PORT0) == lab.driver_of(PORT1) == "ixgbe"
    with VfioBinder(lab.sysfs(), journal=journal).bind(PORT0, BOTH) as lease:
        assert lease.group == 12 and lab.driver_of(PORT1) == "vfio-pci"
    assert lab.driver_of(PORT0) == lab.driver_of(PORT1) == "ixgbe"


# -- 2. netconsole targets the rule does not read --------------------------------------------------


NETCONSOLE_SHAPES = {
    # two targets on the kernel command line, the second on the spare port
    "second-target": {"proc/cmdline": "root=/dev/sda2 netconsole=@/enp2s0,6666@192.168.1.5/;"
                                      "@/enp5s0f1,6666@10.0.5.9/ quiet\n"},
    # loaded by modprobe with its targets as a parameter (/etc/modprobe.d), a kernel before
    # 6.7 or without CONFIG_NETCONSOLE_DYNAMIC: no configfs tree, nothing on /proc/cmdline
    "module-options": {"sys/module/netconsole/initstate": "live\n",
                       "sys/module/netconsole/refcnt": "0\n"},
}


@pytest.mark.parametrize("shape", NETCONSOLE_SHAPES)
def test_2_a_down_port_that_carries_netconsole_is_in_use(lab, shape):
    """Host shape: the lab host sends its kernel log to two log hosts, one over the
    management port (enp2s0) and one over the 82599's port 1 (enp5s0f1, the lab's logging
    segment), in the form netconsole.rst gives for several targets (``netconsole=@/,@10.0.0.2/;@/eth1,6892@
    10.0.0.3/``), either on the kernel command line or as the module's parameter in
    /etc/modprobe.d (`options netconsole netconsole=...`, with netconsole in /etc/modules).
    The operator, following docs/vfio.md ("take it from the network manager ... ip link set
    enp5s0f1 down"), set the port down to offer it; netconsole keeps its target (it drops
    targets on unregister, not on down) and logs again once the port is up.

    Why it is called idle: ``network._netconsoles`` matches ``netconsole=`` once per
    occurrence and takes the device of its first target only (the ``;``-separated second is
    never looked at), and reads nothing but /proc/cmdline and configfs, where a module
    parameter's targets do not show; the port is down with no route, socket or upper device.
    Taking 05:00.1 unregisters enp5s0f1: netconsole drops that target for good ("network
    logging stopped on interface enp5s0f1 as it unregistered"), and the log host loses the
    lab host's oopses and panics from then on, the ones the crash triage needs. Expected:
    every target's device is read, and a loaded netconsole whose targets cannot be read
    leaves every NIC unproven (naming netconsole)."""
    for rel, text in NETCONSOLE_SHAPES[shape].items():
        lab.file(rel, text)
    found = uses(lab, PORT1)
    assert any("netconsole" in u for u in found), found


def test_2_control_the_first_target_is_seen_and_the_other_port_stays_idle(lab):
    """Control: a single target on the kernel command line is seen, and the port it is not
    on is still idle."""
    lab.file("proc/cmdline", "root=/dev/sda2 netconsole=@/enp5s0f1,6666@10.0.5.9/ quiet\n")
    assert uses(lab, PORT1) == ("enp5s0f1 carries the kernel's netconsole",)
    assert HostUsage.read(lab.root).verdict(PORT0).idle


# -- 3. check-root-tree's work folder in an unchecked TMPDIR ------------------------------------


def _checkout(top: Path) -> Path:
    for rel in ("harness/__pycache__", ".venv/bin", "reports/run-1"):
        (top / rel).mkdir(parents=True)
    for rel in ("harness/__init__.py", ".venv/bin/python3.11"):
        (top / rel).write_text("")
    (top / ".venv/bin/python").symlink_to("python3.11")
    return top


def _watched(folder: Path, run):
    """``run()``'s result, and every name seen in ``folder`` while it ran (looked at in a
    tight loop: root's work folder lives for the whole check)."""
    seen: set[str] = set()
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            try:
                seen.update(os.listdir(folder))
            except OSError:
                pass

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        result = run()
    finally:
        stop.set()
        t.join()
    return result, seen


def _check_tree(top: Path, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("SUDO_UID", "TMPDIR")}
    return subprocess.run(["sh", str(ROOT_DIR / ".ci/check-root-tree"), str(top)],
                          capture_output=True, text=True, timeout=60, env={**environ, **env})


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second user (nobody)")
def test_3_check_root_tree_keeps_nothing_in_a_tmpdir_another_user_can_write(tmp_path):
    """Host shape: a root CI agent whose environment sets TMPDIR to a scratch folder on the
    big disk that a lab group (here: nobody, its owner) can write, /srv/scratch (no sticky
    bit). The job runs root's copy of check-root-tree before `make nightly`.

    Why it is called safe: check-root-tree makes its work folder with ``mktemp -d``, which
    honours ``$TMPDIR`` as it is; the folder's 0700 keeps nobody out of it, but not from
    renaming it in their own folder (a rename in one parent needs write permission on the
    parent only) and putting a folder of theirs under its name: root then writes
    ``$work/search`` (``printf ... > "$work/search"``) and ``: > "$work/seen"`` through their
    links (truncating any file of root's), and reads back the PATH entries and the queue of
    links to follow that they wrote (a PATH with a folder staff can write then passes, and
    the links out of the checkout go unchecked). The harness's own code refuses exactly this
    TMPDIR (``checked_tempdir``: "a TMPDIR another user owns or can write is refused"), but
    the guard that runs before it trusts it. Expected: the guard keeps its work files in a
    folder nobody else can write (its own TMPDIR=/tmp, or none), or refuses such a TMPDIR,
    naming it."""
    scratch = tmp_path / "srv" / "scratch"
    scratch.mkdir(parents=True)
    os.chown(scratch, NOBODY, NOBODY)
    scratch.chmod(0o775)
    top = _checkout(tmp_path / "opt" / "hotplug-harness")
    r, seen = _watched(scratch, lambda: _check_tree(
        top, TMPDIR=str(scratch), PATH="/usr/sbin:/usr/bin:/sbin:/bin"))
    if r.returncode != 0:
        assert "TMPDIR" in r.stderr, r.stderr
    assert not seen, f"root's check kept its work files in {scratch}, which nobody owns: {seen}"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_3_control_check_root_tree_passes_with_roots_own_tmpdir(tmp_path):
    """Control: the same checkout with TMPDIR=/tmp (sticky, root's) passes."""
    top = _checkout(tmp_path / "opt" / "hotplug-harness")
    r = _check_tree(top, TMPDIR="/tmp", PATH="/usr/sbin:/usr/bin:/sbin:/bin")
    assert r.returncode == 0, r.stderr


# -- 4. the report is written before the end-of-run give-back ------------------------------------


def _end_of_run(tmp_path: Path, monkeypatch, give_back):
    """A vfio run's controller at pytest's session end, its hooks called in pytest's order:
    the ``pytest_sessionfinish_give_back`` wrapper around the plain ``pytest_sessionfinish``
    (the session's close, the checks, :func:`runner.finish`: summary.json and report.html).
    ``give_back``: the backend's end-of-run give-back (the journal's entries of the run and of
    its dead workers). Returns (the session, the run folder, the terminal's lines)."""
    import dataclasses

    import harness.plugin as plugin
    from harness.plugin import runner

    @dataclasses.dataclass
    class Nothing:
        pass

    report_root = tmp_path / "reports"
    run_dir = report_root / "run-20261207-023000-4242"
    (run_dir / "results").mkdir(parents=True)
    (run_dir / "results" / "0.json").write_text(json.dumps({
        "nodeid": "tests/scenarios/test_nic.py::test_hotplug[q35-nic0]", "outcome": "passed",
        "passthrough": "vfio-pci host=0000:05:00.0", "duration": 12.5, "reason": ""}))
    backend = SimpleNamespace(name="vfio", takes_host_devices=True, binder=object(),
                              give_back=give_back, report_meta=lambda: None)
    hs = SimpleNamespace(
        worker="", decided=True, run_dir=run_dir, backend=backend, binder=backend.binder,
        give_back_problems=[], close=lambda: None, user_image=None, guest_choices=[],
        snapshot=SimpleNamespace(for_owner=lambda owner: None), run=SimpleNamespace(owner="4242"),
        driver="qmp", accel="kvm", accel_reason="kvm", pace=Nothing(), deadlines=Nothing(),
        qemu_binary="/usr/bin/qemu-system-x86_64", qemu_version="7.2.22", inventory=None,
        started_monotonic=0.0, hygiene_problems=[])
    monkeypatch.setattr(runner.hygiene, "check", lambda *a, **k: [])
    monkeypatch.setattr(runner.identity, "run_identity", lambda **k: {})
    monkeypatch.setattr(runner.retention, "prune", lambda *a, **k: [])
    lines: list[str] = []
    terminal = SimpleNamespace(write_line=lambda text, **kw: lines.append(text),
                               write_sep=lambda sep, text="", **kw: lines.append(text))
    stash = pytest.Stash()
    stash[plugin._STASH_SESSION] = hs
    session = SimpleNamespace(exitstatus=pytest.ExitCode.OK, config=SimpleNamespace(
        stash=stash, invocation_params=SimpleNamespace(args=()), option=SimpleNamespace(collectonly=False, image_cache=None,
                                            report_dir=str(report_root), keep_runs=0),
        pluginmanager=SimpleNamespace(get_plugin=lambda name: terminal)))
    wrapper = plugin.pytest_sessionfinish_give_back(session, 0)
    next(wrapper)
    plugin.pytest_sessionfinish(session, 0)
    with pytest.raises(StopIteration):
        wrapper.send(None)
    return session, run_dir, lines


def test_4_a_device_the_runs_end_could_not_give_back_is_in_its_report(tmp_path, monkeypatch):
    """Host shape: a nightly with 4 xdist workers; one worker is killed mid-test (the OOM
    killer, ``--max-worker-restart``) with 05:00.0 on vfio-pci under its lease. At the end the
    controller gives back the journal's entries of the run and of its dead workers
    (``Vfio.give_back``: ``restore_from_journal(own_pids=...)``), and 05:00.0 cannot go back to
    ixgbe (its probe fails, or a process the harness cannot see holds the group): the run
    prints "HOST NOT RESTORED ..." in red and exits 1.

    Why the report says otherwise: ``runner.finish`` (the plain ``pytest_sessionfinish``)
    writes summary.json and report.html first, with ``exit_status`` 0 and ``not_given_back``
    empty (only :meth:`HarnessSession.close`'s problems are there), and the give-back runs
    after it, in the ``pytest_sessionfinish_give_back`` wrapper's ``finally``, changing only
    ``session.exitstatus`` and a terminal line. The run folder is what CI uploads
    (``reports/run-*/``), what `qualify` merges and `compare` gates, and what
    ``reports/latest`` shows the operator: a clean run on a host left with its NIC on vfio-pci
    (the host's own use of it, and the next nightly's, refused or broken). Expected: the run
    folder's report says the device was not given back, and its exit status (always a report,
    and the report tells the truth)."""
    def give_back():
        raise HostDeviceError("1 device(s) could not be given back to their drivers: "
                              "0000:05:00.0", hint="fix the cause below, then run restore")
    session, run_dir, lines = _end_of_run(tmp_path, monkeypatch, give_back)
    assert session.exitstatus == pytest.ExitCode.TESTS_FAILED
    assert any(line.startswith("HOST NOT RESTORED") for line in lines), lines
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exit_status"] != 0 and "0000:05:00.0" in json.dumps(
        summary["not_given_back"]), {k: summary[k] for k in ("exit_status", "not_given_back")}


def test_4_control_a_run_whose_end_gave_everything_back_reports_it_clean(tmp_path, monkeypatch):
    """Control: the same end with every device given back: exit 0, a clean report."""
    session, run_dir, lines = _end_of_run(tmp_path, monkeypatch, lambda: [])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert session.exitstatus == pytest.ExitCode.OK
    assert summary["exit_status"] == 0 and summary["not_given_back"] == []


# -- 5. a port in a namespace only the kernel holds -------------------------------------------------


CX3 = "0000:0a:00.0"
NFS_OVER_THE_STORAGE_PORT = (
    "filer:/scratch /scratch nfs4 rw,relatime,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,"
    "hard,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=10.9.0.5,local_lock=none,"
    "addr=10.9.0.1 0 0\n")


def connectx3_two_ethernet_ports(host: FakeHost) -> None:
    """A ConnectX-3 Pro (15b3:1007, mlx4_core): both ports Ethernet on one PCI function; port 1
    (enp10s0) in the harness's namespace, down; port 2 (enp10s0d1) not in any namespace the
    harness can read."""
    host.add_pci("0000:00:1c.7", "8086:a33f", 0x060400, "pcieport", 22)
    host.add_pci(CX3, "15b3:1007", 0x020000, "mlx4_core", 23, parent="0000:00:1c.7")
    (host.dev_dir(CX3) / "mlx4_port1").write_text("eth\n")
    (host.dev_dir(CX3) / "mlx4_port2").write_text("eth\n")
    host.add_net("enp10s0", CX3)


def test_5_a_port_in_a_namespace_only_an_nfs_mount_keeps_is_not_missed(lab):
    """Host shape: the lab host reaches its scratch filer over a storage network kept apart in
    a named namespace: `ip netns add storage; ip link set enp10s0d1 netns storage` (port 2 of
    the ConnectX-3, one PCI function for both ports), then `nsenter --net=/run/netns/storage
    mount -t nfs4 filer:/scratch /scratch` (nsenter with --net alone: the mount is in the
    host's mount namespace, its RPC client in `storage`), and a clean-up script's `ip netns
    del storage`. The NFS client holds the namespace (``get_net`` in nfs_alloc_client): it
    lives on with enp10s0d1 in it, up, carrying /scratch's traffic; no process lives in it, no
    fd or bind mount names it, no socket of any process is in it (the RPC transport's socket
    is the kernel's). Port 1 (enp10s0) is down in the host's namespace: the spare the operator
    lists.

    Why it is called idle: the holders the rule searches are all user-space handles (a
    process, thread, fd, socket, io_uring slot, nsfs mount); a namespace the kernel alone holds
    is never found, and a NIC "shows at least one interface" (enp10s0, down) so the
    "no interface in any namespace" rule does not fire for a function with two ports. Taking
    0a:00.0 unbinds mlx4_core: enp10s0d1 goes with it and every process using /scratch hangs
    in D state (a hard mount) until the host is rebooted. Expected: a port of the function that
    no namespace read shows (here mlx4's port 2, Ethernet, with no interface seen; or, for any
    NIC, an NFS mount whose clientaddr 10.9.0.5 is an address of no namespace read: a namespace
    the harness could not see exists) leaves it unproven."""
    connectx3_two_ethernet_ports(lab)
    mounts = (lab.root / "proc/mounts").read_text() + NFS_OVER_THE_STORAGE_PORT
    lab.proc("mounts", mounts)
    verdict = HostUsage.read(lab.root).verdict(CX3)
    assert not verdict.idle, verdict


def test_5_control_the_same_card_with_both_ports_seen_and_down_is_idle(lab):
    """Control: both ports in the host's namespace, down, and no NFS mount: idle."""
    connectx3_two_ethernet_ports(lab)
    lab.add_net("enp10s0d1", CX3)
    assert HostUsage.read(lab.root).verdict(CX3).idle
