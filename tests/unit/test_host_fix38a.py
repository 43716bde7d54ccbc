"""Fix of read 38a: the edges of "a controller's disks are its subsystem's" beyond the
reviewer's tests: the generic node (``ng0n1``) below the other controller held open, the
claim under the bind covering the other controller's disk, and a controller in no subsystem
with a sibling function's disk (not its own: nothing shared)."""

from __future__ import annotations

import os

from harness.host.safety import HostUsage, disks_below, nodes_below

from . import fakesysfs
from .test_host_idle_review38a import CTRL_A, CTRL_B, two_controller_drive

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures


def _idle(lab, native: bool = False) -> None:
    two_controller_drive(lab, native=native)
    lab.proc("mounts", (lab.root / "proc/mounts").read_text().replace(
        "/dev/nvme0n1 /srv/scratch xfs rw,relatime 0 0\n", ""))


def _generic_node(lab) -> None:
    """nvme0n1's generic node ng0n1 (238:0) below nvme0, as without native multipath."""
    ng = lab.dev_dir(CTRL_A) / "nvme/nvme0/ng0n1"
    ng.mkdir()
    (ng / "dev").write_text("238:0\n")
    (ng / "uevent").write_text("MAJOR=238\nMINOR=0\nDEVNAME=ng0n1\n")


def test_the_other_controllers_generic_node_held_open_keeps_the_controller(lab):
    """``fio --ioengine=io_uring_cmd`` on /dev/ng0n1 (below nvme0) uses the subsystem with no
    block device open: nvme1 is refused, the node named."""
    _idle(lab)
    _generic_node(lab)
    assert HostUsage.read(lab.root).verdict(CTRL_B).idle
    lab.proc("6060/comm", "fio\n")
    (lab.root / "proc/6060/fd").mkdir()
    os.symlink("/dev/ng0n1", lab.root / "proc/6060/fd/4")
    v = HostUsage.read(lab.root).verdict(CTRL_B)
    assert "/dev/ng0n1 (below 0000:09:00.0) is open by pid 6060 (fio)" in v.uses, v


def test_the_claim_under_the_bind_covers_the_other_controllers_disk(lab):
    """What the bind claims and reads again (``disks_below``, ``nodes_below``) is what the
    proof judged: the other controller's disk and generic node, so a mount of nvme0n1 during
    nvme1's move fails (EBUSY). nvme0's own controller node is not nvme1's: not listed."""
    _idle(lab)
    _generic_node(lab)
    path = lab.sysfs().pci_device(CTRL_B).path
    assert disks_below(lab.sysfs(), path) == ["nvme0n1"]
    names = [node.name for node, _ in nodes_below(lab.sysfs(), path)]
    assert "ng0n1" in names and "nvme0" not in names, names


def test_with_native_multipath_the_hidden_path_is_not_claimed(lab):
    """Native multipath: the head nvme0n1 is claimed, not the hidden path nvme0c0n1 below
    nvme0 (no node)."""
    _idle(lab, native=True)
    assert disks_below(lab.sysfs(), lab.sysfs().pci_device(CTRL_B).path) == ["nvme0n1"]
