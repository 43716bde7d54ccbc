"""Issue 31, read 34b (NICs and their netdevs in every namespace, the read again under the
claim, leases and the journal, shared paths, exit status). What it found, one section below
each (each test's docstring: the host shape, why the harness calls it idle, what would be
lost), on main at 92b5fc7:

1. (a, low likelihood: the host's own activity in a window of seconds that any user can
   stretch, as reviews 31a/1 and 32a/3) read 33a's fix puts the network read again
   (``binding._network_since``) *after* the disks' and nodes' reads under the claim
   (``_used_since``, ``_nodes_opened_since``), so it is now the last read before the unbind,
   and the seconds it takes (``ip``/``ss`` in every namespace, every process's fds and
   sockets: budgets any user fills) are a window nothing reads again: a libvirt guest started
   then (QEMU opens /dev/sdb O_RDWR without O_EXCL, so the claim does not stop it; or
   /dev/sg1 for a ``<hostdev type='scsi'>``) is unbound under. Reviews 31a/32a's tests still
   pass because they open the node during the 2nd network read (the proof under the journal
   lock), which is no longer the last one: there are three now.
2. (a, same window, its own gap) the nodes read again under the claim are
   ``safety.nodes_below`` (the function's own sysfs subtree), not the nodes the proof judged:
   :meth:`HostUsage.verdict` adds the PPS sources of the function's clocks
   (``_clock_pps``: /dev/pps0 under /sys/devices/virtual/pps, review 31b/1) and the NVMe
   multipath generic heads (``_nvme_char_heads``); chronyd started (or restarted: ``systemctl
   restart chrony`` from a config management run) while the proof under the journal lock
   reads the network opens /dev/pps0, and the NIC is unbound under it.
3. (b) `make nightly`'s options check (read 33b's fix, ``check_pytest_options``) does not know
   pytest's ``@FILE`` (``fromfile_prefix_chars="@"``, pytest 8.2+): ``HH_PYTEST_ARGS=@FILE``
   passes, and pytest reads the file's lines as root as if they were on its command line:
   ``-c``, ``-o pythonpath=``, ``--disable-plugin-autoload`` there load another user's code
   as root before the harness's first hook (shown end to end on this host: the plugin
   named by the file's ini was imported as uid 0).
4. (b) the shape of review 33b's finding 3 itself still runs another user's code as root: a
   test path in HH_PYTEST_ARGS passes ``check-pytest-args`` (left to the plugin's early
   hook), but pytest picks its ini file from the paths it is given before any plugin hook
   (``determine_setup``: with ``tests/scenarios`` beside it the common ancestor is ``/``, so
   the first ini met walking up from each path, PYTEST_ADDOPTS's first: theirs), puts that
   ini's ``pythonpath`` on ``sys.path`` and imports its ``addopts`` ``-p`` plugin; the
   harness's check then refuses the path, too late (shown end to end as root here).

Controls (pass on 92b5fc7): the same opens made during the first proof's network read are
refused; a test path of the checkout itself passes the options check.

Looked at and found covered on 92b5fc7 (no test): ``_told_apart`` and the named namespaces'
dedupe (a /run/netns name that is a symlink to /proc/PID/ns/net: on the host
``open_namespace`` sees another inode, ESTALE, and the search reads it once by its holder;
nsfs mounts such as Docker's /var/run/docker/netns/default of the host's namespace share the
``[N]`` form of ``done``), ``_names_in_data`` (VXLAN, HSR/PRP, AMT: by name, ``ifN`` or
index), uppers with an iflink (VLAN, macvlan, ipvlan, macsec, macvtap, DSA user ports), an
upper in another namespace (``link_netnsid``: a problem), USB NICs with no netdev in sight
(refused), mlx5 SFs (their auxiliary device keeps the PF), ``vfs_removed`` under the claim,
``_restore_sriov``'s checks, the journal's and the netns read lock's files, ``--qemu-binary``
and the harness's own path options in HH_PYTEST_ARGS (``trusted_program``, private folders).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness.core.errors import ConfigError, HostDeviceError
from harness.core.paths import check_pytest_options

from . import fakesysfs
from .test_host_idle_review31a import _bind, opened_during_the_network_read, ASM
from .test_host_idle_review31b import PORT0, _phc_with_pps
from .test_host_idle_review32a import _scsi_generic, ftdi, ftdi_handed  # noqa: F401 (a fixture)

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures (a fake sysfs lab host)
ALLOWED_NIC = {"05:00.0", "05:00.1"}


# -- 1. the network read again under the claim is now the last read: what opens during it -------


@pytest.mark.parametrize("path,on_call", [("/dev/sg1", 3), ("/dev/sdb", 3), ("/dev/sg1", 2)],
                         ids=["sg1-during-the-read-under-the-claim",
                              "sdb-during-the-read-under-the-claim",
                              "control-sg1-during-the-proofs-read"])
def test_1_a_node_opened_while_the_claim_reads_the_network_again_is_not_taken(
        lab, fake_root, monkeypatch, path, on_call):
    """(a, low likelihood) Host shape: the lab's ASM1062 (06:00.0, group 13) with sdb and its
    SCSI generic node /dev/sg1, idle through both proofs; the bind claims sdb (O_EXCL, on the
    real host), reads the storage and every process's fds again (``_used_since``,
    ``_nodes_opened_since``: nothing), then reads the network again (``_network_since``,
    read 33a's fix: ``ip``/``ss`` in every namespace, every process's sockets; seconds, which
    any local user stretches with namespaces and fds up to their budgets). Meanwhile libvirt
    starts a guest with sdb as its disk (``<disk type='block'><source dev='/dev/sdb'/>``:
    QEMU opens it O_RDWR|O_DIRECT, no O_EXCL, so the claim does not refuse it) or as a SCSI
    host device (/dev/sg1).

    Path: :func:`harness.host.binding.disks_claimed` runs ``_used_since``,
    ``_nodes_opened_since`` and then ``_network_since``, and moves: nothing reads the open
    files after the network read, so the last read is again a window nobody looks into (the
    one reviews 31a/1 and 32a/3 closed; their tests open the node during the 2nd network
    read, the proof under the journal lock, which the 3rd read now follows). The controller
    is unbound under the guest's disk.

    On 92b5fc7: 06:00.0 is moved to vfio-pci with /dev/sg1 (or /dev/sdb) open by pid 4711;
    the control (opened during the proof's read) is refused. Fix: in ``disks_claimed``, read
    the open files (``_used_since`` + ``_nodes_opened_since``) again after
    ``_network_since`` (or repeat the network and open-files reads until one pass of both
    sees nothing new): neither can be claimed, so whichever is read last leaves the seconds
    of the other unwatched, and the network read is the one any user stretches most."""
    _scsi_generic(lab)
    calls = opened_during_the_network_read(lab, monkeypatch, on_call, path)
    refused, driver = _bind(lab, fake_root, ASM)
    assert len(calls) >= on_call
    assert "4711" in refused, (
        f"06:00.0 was moved to {driver} with {path} open by pid 4711 (qemu-system-x86), opened "
        f"while the read under the claim read the network, the last read before the unbind "
        f"({'refused: ' + refused if refused else 'not refused'})")
    assert driver == "ahci"


@pytest.mark.parametrize("on_call", [3, 2], ids=["tty-during-the-read-under-the-claim",
                                                 "control-tty-during-the-proofs-read"])
def test_1_a_usb_serial_port_opened_while_the_plug_reads_the_network_again_is_not_handed(
        ftdi, monkeypatch, on_call):
    """(a, low likelihood) The same for usb-host's plug (:func:`harness.host.usbhost.handed`,
    which runs :func:`disks_claimed` with the device's nodes and its network read last): the
    inventory's FT232R (4-1, ttyUSB0: a lab board's console cable) is idle through both
    proofs and the node read under the claim; ``ser2net`` (or a getty a udev rule starts)
    opens /dev/ttyUSB0 while the network is read again, and QEMU's usb-host detaches
    ftdi_sio under it. On 92b5fc7: handed over (the control, opened during the proof under
    the lock, is refused). Fix: as above."""
    calls = opened_during_the_network_read(ftdi, monkeypatch, on_call, "/dev/ttyUSB0",
                                           pid=4712, comm="ser2net")
    handed, refused = ftdi_handed(ftdi)
    assert len(calls) >= on_call
    assert handed is None and "ttyUSB0" in refused and "4712" in refused, (
        "USB 4-1 was handed to usb-host with /dev/ttyUSB0 open by pid 4712 (ser2net), opened "
        "while the plug read the network again, its last read "
        f"({'refused: ' + refused if refused else 'not refused'})")


@pytest.mark.parametrize("on_call", [2, 1], ids=["pps-during-the-proofs-read",
                                                 "control-pps-during-the-first-read"])
def test_2_a_pps_node_opened_while_the_proof_reads_the_network_is_not_taken(
        lab, fake_root, monkeypatch, on_call):
    """(a, low likelihood) Host shape: review 31b/1's timing card (the 82599 at 05:00.0/.1,
    group 12, ports down; ptp0's PPS source pps0 enabled by a boot unit), chronyd not running
    when the bind's first proof reads; chronyd is started (``refclock PPS /dev/pps0``; or
    restarted by a config management run) while the proof under the journal lock reads the
    network, and holds /dev/pps0.

    Path: :func:`harness.host.binding.disks_claimed` -> ``_nodes_opened_since`` reads again
    who holds the nodes of :func:`harness.host.safety.nodes_below` (``_Subtree.char_nodes``:
    ptp0 only), while :meth:`HostUsage.verdict` judged ``tree.char_nodes +
    _nvme_char_heads(...) + _clock_pps(...)``: pps0 (below no device) is not read again, so
    the open is seen by nothing and ixgbe is unbound under chronyd's reference clock. (The
    same holds for an NVMe multipath subsystem's generic head /dev/ng0n1, outside the
    controller's subtree.)

    On 92b5fc7: 05:00.0 is moved to vfio-pci with /dev/pps0 open by chronyd; the control
    (opened during the first proof's read) is refused by the second proof. Fix: let
    ``safety.nodes_below`` return what the verdict judges: its subtree's nodes plus
    ``_nvme_char_heads`` and ``_clock_pps`` (one function both use)."""
    _phc_with_pps(lab)
    calls = opened_during_the_network_read(lab, monkeypatch, on_call, "/dev/pps0", pid=812,
                                           comm="chronyd")
    refused, driver = _bind(lab, fake_root, PORT0, ALLOWED_NIC)
    assert "pps0" in refused and "812" in refused, (
        f"05:00.0 was moved to {driver} with /dev/pps0 open by chronyd "
        f"({'refused: ' + refused if refused else 'not refused'})")
    assert driver == "ixgbe"


@pytest.mark.parametrize("on_call", [2, 1], ids=["ng0n1-during-the-proofs-read",
                                                 "control-ng0n1-during-the-first-read"])
def test_2_an_nvme_multipath_generic_head_opened_while_the_proof_reads_the_network_is_not_taken(
        lab, fake_root, monkeypatch, on_call):
    """(a, low likelihood; storage's side of the same gap) Host shape: an idle NVMe drive
    (09:00.0, group 21) with native multipath (``nvme_core.multipath=Y``, the default of
    Fedora, RHEL and Debian kernels): its namespace's generic node /dev/ng0n1 sits under
    /sys/devices/virtual/nvme-subsystem, outside the controller's subtree. fio's
    ``io_uring_cmd`` engine (or SPDK's, or ``nvme io-passthru``) opens /dev/ng0n1 while the
    proof under the journal lock reads the network. The verdict judges that node
    (``_nvme_char_heads``); the read again under the claim (``nodes_below``) does not, and no
    block device is opened, so the claim of nvme0n1 does not see it either. On 92b5fc7: the
    controller is moved to vfio-pci under fio's passthrough I/O. Fix: as above."""
    from .test_host_idle_review import NVME, nvme_multipath
    nvme_multipath(lab)
    opened_during_the_network_read(lab, monkeypatch, on_call, "/dev/ng0n1", pid=6060,
                                   comm="fio")
    refused, driver = _bind(lab, fake_root, NVME, {"09:00.0"})
    assert "ng0n1" in refused and "6060" in refused, (
        f"09:00.0 was moved to {driver} with /dev/ng0n1 open by fio "
        f"({'refused: ' + refused if refused else 'not refused'})")
    assert driver == "nvme"


# -- 3. make nightly's options check: pytest reads more options from an @FILE ----------------------


def _alice_args(tmp_path):
    """Another user's (uid 65534, ``nobody``) files: an args file that names their ini file,
    whose ``addopts`` loads their plugin from their ``pythonpath``; the plugin leaves a mark
    saying which uid imported it."""
    d = tmp_path / "alice"
    (d / "lib").mkdir(parents=True)
    (d / "evil.ini").write_text(f"[pytest]\npythonpath = {d / 'lib'}\naddopts = -p hh_evilplug\n")
    (d / "lib" / "hh_evilplug.py").write_text(
        "import os\n"
        f"open({str(d)!r} + '/imported-as-uid-%d' % os.geteuid(), 'w').close()\n")
    (d / "args").write_text(f"-c\n{d / 'evil.ini'}\n")
    for p in [d, d / "lib", d / "evil.ini", d / "lib" / "hh_evilplug.py", d / "args"]:
        if os.geteuid() == 0:
            os.chown(p, 65534, 65534)
    return d


@pytest.mark.parametrize("text", ["@{d}/args", "-v @{d}/args", "-k nic @{d}/args"],
                         ids=["alone", "after-a-flag", "among-a-selection"])
def test_3_an_args_file_in_hh_pytest_args_is_refused(tmp_path, text):
    """(b) Host shape: a nightly whose test selection is long (a lab's list of scenarios, one
    per line), so the operator keeps it in a file and hands it to pytest as pytest 8.2 and
    later documents (``pytest @tests_to_run.txt``): ``HH_PYTEST_ARGS=@/srv/lab/nightly.args``
    in the systemd unit's Environment, a GitLab variable or a Jenkins parameter; the file is
    the lab team's (a group-writable folder, a colleague's home), or anyone allowed to start
    the protected pipeline with variables names a file of theirs.

    Path: ``make nightly`` runs ``python -m harness check-pytest-args``, whose
    :func:`harness.core.paths.check_pytest_options` splits HH_PYTEST_ARGS as pytest does and
    refuses -p, -c, -o, --rootdir, --confcutdir, --disable-plugin-autoload: ``@/srv/...`` is
    none of them, and passes. pytest's own parser is built with ``fromfile_prefix_chars="@"``
    (``_pytest.config.argparsing.MyOptionParser``): every word that starts with ``@`` is
    replaced by the lines of that file, read as root, before ``_initini`` and the second
    parse. So ``-c THEIR.ini`` there is read (its ``pythonpath`` put on root's ``sys.path``
    by ``_configure_python_path``, its ``addopts`` ``-p THEIRS`` imported by
    ``consider_preparse``) before the harness's first hook, and
    ``--disable-plugin-autoload`` there keeps the harness (and its conftest and test-path
    checks) from loading at all: their code runs as root, which is what the check exists to
    stop (review 33b's finding 3).

    On 92b5fc7: ``check_pytest_options`` passes each text. Fix: in
    :func:`code_loading_options`, refuse any word that starts with ``@`` (argparse expands it
    wherever it stands, an option's value included), with a hint to put the selection in the
    checkout's own files; and in :func:`harness.plugin.early.check_initial_paths`, hold an
    ``@`` word of ``invocation_params.args`` to its owner too (a direct ``pytest @FILE`` as
    root)."""
    d = _alice_args(tmp_path)
    with pytest.raises(ConfigError):
        check_pytest_options(text.format(d=d), "HH_PYTEST_ARGS")


@pytest.mark.skipif(os.geteuid() != 0, reason="the check acts as root only, as make nightly runs")
def test_3_make_nightlys_check_passes_an_args_file_that_pytest_then_acts_on(tmp_path):
    """The same, end to end as ``make nightly`` runs it as root: ``python -m harness
    check-pytest-args`` with HH_PYTEST_ARGS=@FILE must fail. It exits 0 on 92b5fc7, and
    pytest, given the same PYTEST_ADDOPTS, imports the other user's plugin as root (shown
    first, with a collection of this file only, so that the shape is real)."""
    d = _alice_args(tmp_path)
    env = dict(os.environ, PYTEST_ADDOPTS=f"@{d}/args", HH_PYTEST_ARGS=f"@{d}/args")
    subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--co", "-q",
                    __file__], env=env, capture_output=True, timeout=120)
    assert (d / "imported-as-uid-0").exists(), "pytest did not read the @FILE (older pytest?)"
    env.pop("PYTEST_ADDOPTS")
    check = subprocess.run([sys.executable, "-m", "harness", "check-pytest-args"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode != 0, (
        "python -m harness check-pytest-args passed HH_PYTEST_ARGS=@FILE, whose file makes "
        "root's pytest import another user's plugin before any check of the harness")


# -- 4. a test path in HH_PYTEST_ARGS chooses root's ini file before any check ------------------


def _alice_checkout(tmp_path):
    """Another user's (uid 65534) checkout of the harness: its pytest.ini (which its owner
    may edit at will) puts their ``lib`` on root's ``sys.path`` and loads their plugin from
    it; their scenario test beside it. The plugin leaves a mark saying which uid imported it."""
    d = tmp_path / "alice" / "hh"
    (d / "lib").mkdir(parents=True)
    (d / "tests").mkdir()
    (d / "pytest.ini").write_text("[pytest]\npythonpath = lib\naddopts = -p hh_evil_ini\n")
    (d / "lib" / "hh_evil_ini.py").write_text(
        "import os\n"
        f"open({str(d)!r} + '/imported-as-uid-%d' % os.geteuid(), 'w').close()\n")
    (d / "tests" / "test_nic.py").write_text("def test_nic():\n    pass\n")
    if os.geteuid() == 0:
        for top, dirs, files in os.walk(tmp_path / "alice"):
            for name in [top, *(os.path.join(top, f) for f in dirs + files)]:
                os.chown(name, 65534, 65534)
    return d


@pytest.mark.skipif(os.geteuid() != 0, reason="the check acts as root only, as make nightly runs")
def test_4_a_test_path_in_another_users_checkout_is_refused_before_pytest_runs(tmp_path):
    """(b) Host shape: review 33b's finding 3 itself: an operator narrows the nightly to a
    scenario of a colleague's checkout (``HH_PYTEST_ARGS=/home/alice/hh/tests/scenarios/
    test_nic.py``), or anyone allowed to start the protected pipeline with variables names a
    test of theirs. Their checkout has its pytest.ini (the harness's own has one at its
    root), which they may edit; so may a pyproject.toml, tox.ini, setup.cfg or pytest.toml
    in any folder above their test.

    Path: read 33b's fix lets a test path through ``check-pytest-args`` ("a test path there
    is held to its owner by the harness's plugin", the Makefile says) and holds it to its
    owner in :func:`harness.plugin.early.check_initial_paths`, the harness's
    ``pytest_load_initial_conftests``. But pytest chooses its ini file from the paths it is
    given before that (``Config._initini`` -> ``determine_setup``: the common ancestor of
    ``tests/scenarios`` and their path is ``/``, which has none, so ``locate_config`` walks
    up from each path in order, PYTEST_ADDOPTS's first, and takes the first ini it meets:
    theirs), then puts its ``pythonpath`` first on ``sys.path`` (``_configure_python_path``)
    and imports its ``addopts``'s ``-p`` plugins (``consider_preparse``), all in
    ``_preparse``. The harness's check refuses the path afterwards, with their code already
    run as root (shown here: the mark is made by uid 0, and then the harness's refusal of
    the path is printed).

    On 92b5fc7: ``python -m harness check-pytest-args`` exits 0 for that path, and root's
    pytest imports their plugin. Fix: in ``check-pytest-args`` (before make runs pytest),
    hold every word that names an existing path to
    :func:`harness.core.paths.check_test_path` (its folders above, sticky ones included, must
    be root's or the invoking user's and writable by nobody else: that covers an ini there
    too); and say in docs/vfio.md that a direct ``pytest PATH`` as root has its ini chosen
    before the plugin can look."""
    d = _alice_checkout(tmp_path)
    test = d / "tests" / "test_nic.py"
    env = dict(os.environ, PYTEST_ADDOPTS=str(test))
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--co",
                          "-q", __file__], env=env, capture_output=True, text=True, timeout=120)
    assert (d / "imported-as-uid-0").exists(), (
        "pytest did not take their pytest.ini (precondition of the shape): " + run.stdout[-800:])
    env = dict(os.environ, HH_PYTEST_ARGS=str(test))
    env.pop("PYTEST_ADDOPTS", None)
    check = subprocess.run([sys.executable, "-m", "harness", "check-pytest-args"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode != 0, (
        f"python -m harness check-pytest-args passed HH_PYTEST_ARGS={test}, a test in a "
        "checkout uid 65534 owns, whose pytest.ini root's pytest then reads and whose plugin "
        "it imports, before the harness's own check of the path")


def test_4_control_a_test_path_of_this_checkout_still_passes(tmp_path):
    """Control: a test path in the checkout root runs from passes the options check."""
    check_pytest_options(f"-k nic {__file__}", "HH_PYTEST_ARGS")


@pytest.mark.skipif(os.geteuid() != 0, reason="the check acts as root only, as make nightly runs")
def test_3_an_args_file_that_disables_the_harness_runs_their_conftest_as_root(tmp_path):
    """The other form of section 3: the file holds ``--disable-plugin-autoload`` (which
    ``check-pytest-args`` refuses when it is in HH_PYTEST_ARGS itself) and a test path of
    theirs: pytest reads the flag from the file (``known_args_namespace``, which argparse
    filled from it), loads no entry point, so the harness's early check of test paths never
    runs, and imports their ``conftest.py`` as root (shown first). ``check-pytest-args`` must
    refuse ``@FILE``; it exits 0 on 92b5fc7."""
    d = tmp_path / "alice"
    (d / "t").mkdir(parents=True)
    (d / "t" / "conftest.py").write_text(
        "import os\n"
        f"open({str(d)!r} + '/conftest-as-uid-%d' % os.geteuid(), 'w').close()\n")
    (d / "t" / "test_a.py").write_text("def test_a():\n    pass\n")
    (d / "args").write_text(f"--disable-plugin-autoload\n{d / 't' / 'test_a.py'}\n")
    for top, dirs, files in os.walk(d):
        for name in [top, *(os.path.join(top, f) for f in dirs + files)]:
            os.chown(name, 65534, 65534)
    env = dict(os.environ, PYTEST_ADDOPTS=f"@{d}/args")
    subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--co", "-q"],
                   env=env, capture_output=True, timeout=120, cwd=tmp_path)
    assert (d / "conftest-as-uid-0").exists(), "pytest did not act on the @FILE (older pytest?)"
    env = dict(os.environ, HH_PYTEST_ARGS=f"@{d}/args")
    env.pop("PYTEST_ADDOPTS", None)
    check = subprocess.run([sys.executable, "-m", "harness", "check-pytest-args"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode != 0, (
        "python -m harness check-pytest-args passed HH_PYTEST_ARGS=@FILE, whose file keeps the "
        "harness from loading and has root's pytest import another user's conftest.py")
