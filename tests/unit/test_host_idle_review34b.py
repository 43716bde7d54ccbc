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
"""

from __future__ import annotations

import pytest

from . import fakesysfs
from .test_host_idle_review28a import _holds
from .test_host_idle_review31a import _bind, opened_during_the_network_read, ASM
from .test_host_idle_review31b import PORT0, BOTH, _phc_with_pps
from .test_host_idle_review32a import _scsi_generic

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
    the open files (``_used_since`` + ``_nodes_opened_since``) after ``_network_since`` too
    (the network's own re-read first, then one open-files read, whose window any user can
    no longer hide a network change in, since an interface's use must be made by root or the
    namespace's owner), or repeat the two reads until one pass of both sees nothing new."""
    _scsi_generic(lab)
    calls = opened_during_the_network_read(lab, monkeypatch, on_call, path)
    refused, driver = _bind(lab, fake_root, ASM)
    assert len(calls) >= on_call
    assert "4711" in refused, (
        f"06:00.0 was moved to {driver} with {path} open by pid 4711 (qemu-system-x86), opened "
        f"while the read under the claim read the network, the last read before the unbind "
        f"({'refused: ' + refused if refused else 'not refused'})")
    assert driver == "ahci"


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
