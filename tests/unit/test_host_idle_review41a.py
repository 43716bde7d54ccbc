"""Issue 31, read 41a (storage, USB, IOMMU groups, SR-IOV, the bind's mechanics, the libvirt
hand-over), on main at 5d76b2e. What it found, one section below:

1. (a, low likelihood: a tool started in a window of seconds that any user can stretch, as
   reviews 31a/1, 34b/1-2, 39a/1 and 40a/1) read 40a's fix makes the re-reads under the claim
   (:func:`harness.host.binding.disks_claimed` -> ``_opened_since`` -> ``_held_since`` ->
   :func:`harness.host.safety.uses_below`) judge, with the proof's own code, what the open
   files say of each function that *moves*, but ``below`` (:func:`binding._disks_claimed`) is
   ``plan.to_move`` only: the group's members the proof judged and *kept* where they are (on
   no driver or ``pci-stub``, which vfio accepts: :func:`safety.plan_group`'s ``kept``) are
   not read again. The proof refuses such a member whose BARs or config space a process holds
   or maps (:meth:`HostUsage._bars`: "a user-space driver may use it"), because vfio attaches
   the whole group to the guest's IOMMU domain when QEMU opens it: a user-space driver's DMA
   from the kept member (set up with host physical addresses under ``iommu=pt``) then goes
   through the guest's page tables (faults, or writes into guest memory), and a flash tool
   writes the card's shared NVM while the other port is reset (FLR) and initialised by a
   guest's driver. The same tool started while the proof under the lock, or the re-read
   under the claim, reads the network is not seen, and the group goes to the guest under
   it. Shape: a dual-port card whose two functions share an IOMMU group (no
   ACS on the card: Intel 82599/X710, Mellanox ConnectX-4 Lx), one port listed for the
   harness, the other left on no driver (``driverctl set-override 0000:05:00.1 none``, or
   unbound by hand) and listed as its companion; an admin runs ``mstflint -d 05:00.1 burn``
   (Mellanox's flash tool reaches a function on no driver through its sysfs ``config`` and
   ``resource0``), ``pcimem``/``devmem2`` on its BAR, or a user-space driver maps it, while a
   run binds port 0. (The target's own re-read does not name it: its BARs are other files; an
   open /dev/mem would be seen through the target's ``_devmem``, a /dev/mem mapping with its
   fd closed would not.) The same gap for a member already on vfio-pci (neither moved nor
   kept): the proof's :meth:`HostUsage._driver` refuses it while its group node
   /dev/vfio/GROUP or a vfio device fd of it is open, and nothing reads that again; and
   :func:`safety.uses_below` has no ``_driver`` rule at all. Shape: port 1 put on vfio-pci
   for DPDK (``dpdk-devbind.py -b vfio-pci``) and listed as port 0's companion;
   ``dpdk-testpmd -a 05:00.1`` started while a run binds port 0: port 0 leaves ixgbe and is
   bound to vfio-pci into a group DPDK's process owns (vfio-pci's ``driver_managed_dma``
   lets it bind while the group is owned), the harness's QEMU cannot open the group, and the
   release cannot give port 0 back while DPDK holds it (``_holders``): it stays off the host
   until DPDK ends. Safe: the re-reads under the claim judge every member the proof judged
   (what moves, what is kept, what is on vfio-pci already: ``plan.members`` but the
   bridges), by the same rules (``_driver``'s group and device-fd rule included).

The tests assert the safe behaviour and fail on 5d76b2e; the controls show the same tool
started during the first proof refused (the rule is there: for the kept member's files and for
the vfio member's group node), and the group taken when the kept member is mapped by no one. A fake sysfs/proc tree plays the host (:mod:`.fakesysfs`'s lab
host, 05:00.1 left on no driver); the tool's open is played at the end of a network read
(:func:`.test_host_idle_review31a.during_the_network_read`); no guest is booted.
"""

from __future__ import annotations

import os
import shutil

import pytest

from . import fakesysfs
from .fakesysfs import bind_outcome
from .test_host_binding import journal
from .test_host_idle_review31a import opened_during_the_network_read

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
journal = journal  # (a fixture: the journal in the fake root's /var/lib)

PORT0, PORT1 = "0000:05:00.0", "0000:05:00.1"  # (the lab's 82599, group 12, both down)


def _port1_on_no_driver(lab) -> str:
    """05:00.1 left on no driver (``driverctl set-override 0000:05:00.1 none``): a kept member
    of group 12. Its sysfs folder, as the kernel's fd links name its files."""
    lab._unbind(PORT1)
    return "/" + os.path.relpath(lab.dev_dir(PORT1), lab.root)


@pytest.mark.parametrize("file", ["resource0", "config"])
def test_1_control_a_kept_member_mapped_during_the_first_proof_is_refused(
        lab, journal, monkeypatch, file):
    """Control: the tool started while the *first* proof reads the network: the proof under
    the lock judges the kept member's BARs and refuses, naming the tool."""
    here = _port1_on_no_driver(lab)
    opened_during_the_network_read(lab, monkeypatch, 1, f"{here}/{file}", pid=6100,
                                   comm="mstflint", fd=3)
    refused, driver = bind_outcome(lab, journal, PORT0, {PORT0, PORT1})
    assert "6100" in refused and driver == "ixgbe", (refused, driver)


def test_1_control_the_group_with_an_idle_kept_member_is_taken(lab, journal):
    """Control: nobody holds 05:00.1's files: port 0 is moved, 05:00.1 kept on no driver."""
    _port1_on_no_driver(lab)
    refused, driver = bind_outcome(lab, journal, PORT0, {PORT0, PORT1})
    assert refused == "" and driver == "vfio-pci", (refused, driver)


@pytest.mark.parametrize("on_call", [2, 3], ids=["during-the-proof-under-the-lock",
                                                 "during-the-read-under-the-claim"])
@pytest.mark.parametrize("file", ["resource0", "config"])
def test_1_a_kept_member_mapped_during_the_last_reads_keeps_the_group(
        lab, journal, monkeypatch, file, on_call):
    """(finding 1) Host shape: the lab's 82599 (group 12), port 0 listed for the harness,
    port 1 (05:00.1) left on no driver and listed as its companion. While a run binds port 0,
    an admin starts ``mstflint -d 05:00.1 burn`` (its sysfs ``config`` and ``resource0``
    held) or maps port 1's BAR (``pcimem``, a user-space driver), during the proof under the
    lock's network read (call 2) or the re-read under the claim's (call 3).

    Path: :meth:`VfioBinder.bind` -> ``_proven_plan`` (kept member judged, its files read
    before the network) -> ``_move_all`` -> :func:`binding._disks_claimed`: ``below`` is
    ``plan.to_move`` (05:00.0 only); ``uses_below`` judges 05:00.0's files and tree, never
    05:00.1's. Port 0 goes to vfio-pci, and on QEMU's open the group (05:00.1 with it) to the
    guest's IOMMU domain, under the tool.

    On 5d76b2e: moved. Safe: refused, naming pid 6100 (as the proof refuses it a moment
    earlier: the control)."""
    here = _port1_on_no_driver(lab)
    calls = opened_during_the_network_read(lab, monkeypatch, on_call, f"{here}/{file}",
                                           pid=6100, comm="mstflint", fd=3)
    fakesysfs.assert_kept(lab, journal, PORT0, {PORT0, PORT1}, "ixgbe", "6100", calls, on_call,
                          f"mstflint (pid 6100) opened {PORT1}'s {file} (its group with it)")


# -- 1, the same gap: a member already on vfio-pci whose group is opened during the last reads --

def _port1_on_vfio(lab) -> None:
    """05:00.1 put on vfio-pci by ``dpdk-devbind.py -b vfio-pci 0000:05:00.1`` (no run of the
    harness holds it), its group node /dev/vfio/12 open by no one yet."""
    if not (lab.sys / "bus/pci/drivers/vfio-pci").is_dir():
        lab.add_driver("vfio-pci")
    lab._unbind(PORT1)
    lab._bind(PORT1, "vfio-pci")


def test_1_control_a_member_on_vfio_opened_during_the_first_proof_is_refused(
        lab, journal, monkeypatch):
    """Control: ``dpdk-testpmd`` opens /dev/vfio/12 while the *first* proof reads the network:
    the proof under the lock sees the member's group open and refuses."""
    _port1_on_vfio(lab)
    opened_during_the_network_read(lab, monkeypatch, 1, "/dev/vfio/12", pid=6200,
                                   comm="dpdk-testpmd", fd=9)
    refused, driver = bind_outcome(lab, journal, PORT0, {PORT0, PORT1})
    assert "6200" in refused and driver == "ixgbe", (refused, driver)


@pytest.mark.parametrize("on_call", [2, 3], ids=["during-the-proof-under-the-lock",
                                                 "during-the-read-under-the-claim"])
def test_1_a_member_on_vfio_opened_during_the_last_reads_keeps_the_group(
        lab, journal, monkeypatch, on_call):
    """(finding 1, a member on vfio-pci) Host shape: the 82599's port 1 on vfio-pci for a
    DPDK application (``dpdk-devbind.py``), listed as port 0's companion; ``dpdk-testpmd -a
    05:00.1`` starts while a run binds port 0 (call 2: the proof under the lock's network read;
    call 3: the re-read under the claim's). The proof's ``_driver`` refuses a member on
    vfio-pci whose group node is open; the re-reads under the claim read only what moves.
    Port 0 is unbound from ixgbe and bound to vfio-pci into a group DPDK's process owns (its
    container, its IOMMU domain: vfio-pci binds with ``driver_managed_dma`` while the group is
    owned); the harness's QEMU then cannot open the group, and the release cannot give port 0
    back while DPDK holds it (``_holders``): it stays off the host until DPDK ends.

    On 5d76b2e: moved. Safe: refused, naming pid 6200."""
    _port1_on_vfio(lab)
    calls = opened_during_the_network_read(lab, monkeypatch, on_call, "/dev/vfio/12",
                                           pid=6200, comm="dpdk-testpmd", fd=9)
    fakesysfs.assert_kept(lab, journal, PORT0, {PORT0, PORT1}, "ixgbe", "6200", calls, on_call,
                          "dpdk-testpmd (pid 6200) opened /dev/vfio/12, its group's node")


def test_1_control_a_group_this_run_holds_is_judged_as_the_proof_judges_it(
        lab, journal, monkeypatch):
    """Control (fix 41a): the re-reads under the claim judge a member on vfio-pci with this
    run's held groups, as the proof does (``_driver``: "on vfio-pci for this run"). This run
    took group 12 with 05:00.1 (both ports moved) and its QEMU opened /dev/vfio/12; a second
    lease of the same group (05:00.0, on vfio-pci already) is its own, not a use."""
    from harness.host.binding import VfioBinder
    binder = VfioBinder(lab.sysfs(), journal=journal)
    try:
        binder.bind(PORT1, {PORT0, PORT1})
        opened_during_the_network_read(lab, monkeypatch, 1, "/dev/vfio/12", pid=6300,
                                       comm="qemu-system-x86", fd=20)
        lease = binder.bind(PORT0, {PORT0, PORT1})
        assert lease.plan.group == 12 and lab.driver_of(PORT0) == "vfio-pci"
    finally:
        shutil.rmtree(lab.root / "proc/6300", ignore_errors=True)  # (the QEMU gone)
        binder.close()
