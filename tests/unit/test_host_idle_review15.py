"""Issue 31, fifteenth adversarial read. What it found and this file's tests fix:

1. A user-space program on the host that drives a function through the kernel's older
   interface, ``/proc/bus/pci/BB/DD.F`` (config space read and written, BARs mapped through
   its ``PCIIOC_MMAP_IS_MEM`` ioctl; pciutils falls back to it, old user-space drivers use it),
   left the function reading idle when it was on no driver or on pci-stub: only its sysfs
   ``resource*``/``config``/``rom`` files counted, though the open-file read had the
   /proc path already.

(It also found that a FUSE file held open by a process whose mount was lazily unmounted,
with a daemon that never answers, blocks root's stat of every process's open files for good;
that one is left for the next round, docs/vfio.md says so.)

A fake sysfs and /proc tree; no guest is booted."""

import os

import pytest

from harness.host.safety import HostUsage, _proc_bus_pci

from . import fakesysfs
from .test_host_idle_review3 import PORT1

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures


@pytest.mark.parametrize("how", ["fd", "maps"])
def test_1_a_function_a_process_holds_through_proc_bus_pci_is_in_use(lab, how):
    lab.kernel(lab.sys / "bus/pci/drivers/ixgbe/unbind", PORT1)
    assert HostUsage.read(lab.root).verdict(PORT1).idle
    proc_file = "/proc/bus/pci/05/00.1"
    lab.proc("5000/comm", "vendor-tool\n")
    if how == "fd":
        (lab.root / "proc/5000/fd").mkdir()
        os.symlink(proc_file, lab.root / "proc/5000/fd/3")
    else:  # a BAR mapped through the ioctl, the fd closed after
        lab.proc("5000/maps", f"7f1c40000000-7f1c40080000 rw-s 00000000 00:15 4026 {proc_file}\n")
    assert HostUsage.read(lab.root).verdict(PORT1).uses == (
        f"{PORT1}'s {proc_file} (procfs) is open or mapped by pid 5000 (vendor-tool): a "
        "user-space driver may use it",)
    assert HostUsage.read(lab.root).verdict("0000:05:00.0").idle  # its sibling's is not held


def test_1_proc_bus_pci_names_a_domain_other_than_0000_in_its_folder():
    assert _proc_bus_pci("0000:05:00.1") == "/proc/bus/pci/05/00.1"
    assert _proc_bus_pci("0001:3a:02.7") == "/proc/bus/pci/0001:3a/02.7"
