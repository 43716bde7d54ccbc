"""Issue 31, a third adversarial read of the host code: holes each closed fail-closed, each
test failing on the code before its fix. Fake sysfs, fake `ip -j` output and real files
(tests/unit/fakesysfs.py)."""

import json
import os

import pytest

from harness.core.errors import HostDeviceError
from harness.host.binding import VfioBinder, restore_from_journal
from harness.host.safety import HostUsage

from . import fakesysfs
from . import test_host_sriov as sriov
from .fakesysfs import FakeHost

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
PF, VF0, VF1 = sriov.PF, sriov.VF0, sriov.VF1
sriov_host, journal = sriov.host, sriov.journal  # (fixtures: an idle 82576 PF; the journal)
entries = sriov.entries


def numvfs(host: FakeHost) -> int:
    return int((host.dev_dir(PF) / "sriov_numvfs").read_text())


def bring_up(host: FakeHost, ifname: str) -> None:
    """`ip link set IFNAME up`, as `ip -j -d link` then shows it."""
    listed = host.root / "ip/link.json"
    links = json.loads(listed.read_text())
    listed.write_text(json.dumps([dict(li, flags=li["flags"] + ["UP", "LOWER_UP"],
                                       operstate="UP") if li["ifname"] == ifname else li
                                  for li in links]))


# -- 3. a PF's count goes back only over idle VFs this run made ---------------------------------


def test_restore_leaves_a_vf_another_user_bound_with_its_interface_up(sriov_host, journal):
    """`_restore_sriov` checked only the journal and /dev/vfio/GROUP: a VF another user had
    bound to igbvf, its interface up, was destroyed by the write of 0 to sriov_numvfs."""
    host = sriov_host
    VfioBinder(host.sysfs(), journal=journal).enable_vfs(PF, 2)  # the run dies here
    host._bind(VF0, "igbvf")  # another user: echo 0000:08:10.0 > .../igbvf/bind
    host.add_net("enp8s0v0", VF0)
    bring_up(host, "enp8s0v0")
    with pytest.raises(HostDeviceError) as e:
        restore_from_journal(host.sysfs(), journal, include_live=True)
    assert (f"{PF}: failed: its VF {VF0} is not proven idle (enp8s0v0 is up (with no "
            "address))") in e.value.details
    assert numvfs(host) == 2 and host.driver_of(VF0) == "igbvf"
    assert [e["kind"] for e in entries(journal)] == ["sriov"]  # kept for a later restore


def test_a_runs_end_leaves_a_count_someone_else_changed(sriov_host, journal):
    """The run set 2 VFs; someone made it 4 (theirs among them): its end must not write 0."""
    host = sriov_host
    binder = VfioBinder(host.sysfs(), journal=journal)
    binder.enable_vfs(PF, 2)
    host.sysfs().write(host.dev_dir(PF) / "sriov_numvfs", "0")
    host.sysfs().write(host.dev_dir(PF) / "sriov_numvfs", "4")
    with pytest.raises(HostDeviceError) as e:
        binder.close()
    assert ("sriov_numvfs is 4, not the 2 this run set: someone else changed it"
            in e.value.message)
    assert numvfs(host) == 4 and len(entries(journal)) == 1
    host.sysfs().write(host.dev_dir(PF) / "sriov_numvfs", "0")  # they put it back by hand
    assert [r.status for r in restore_from_journal(host.sysfs(), journal,
                                                    include_live=True)] == ["restored"]
    assert entries(journal) == []


# -- 4. nothing is made or given back from a container -------------------------------------------


def in_a_container(host: FakeHost) -> None:
    host.file(".dockerenv")


def test_vfs_are_not_made_from_a_container(sriov_host, journal):
    """`bind` refused in a container; `enable_vfs` wrote sriov_numvfs all the same, on a PF
    whose users (interfaces, sockets in the host's namespaces) it could not see."""
    host = sriov_host
    in_a_container(host)
    with pytest.raises(HostDeviceError, match=r"refusing to change 0000:08:00.0's "
                                              r"sriov_numvfs: this runs in a container"):
        VfioBinder(host.sysfs(), journal=journal).enable_vfs(PF, 2)
    assert numvfs(host) == 0 and host.writes == [] and entries(journal) == []


def test_restore_gives_nothing_back_from_a_container(sriov_host, journal):
    """From a container, the run that journaled a device looks dead (its pid is not in the
    container's /proc) and a QEMU holding the group is unseen: restore took devices back."""
    host = sriov_host
    VfioBinder(host.sysfs(), journal=journal).bind("05:00.0", {"05:00.0", "05:00.1"})
    host.writes.clear()
    in_a_container(host)
    with pytest.raises(HostDeviceError, match="refusing to give devices back: this runs in a "
                                              "container"):
        restore_from_journal(host.sysfs(), journal, include_live=True)
    assert host.writes == [] and host.driver_of("0000:05:00.0") == "vfio-pci"
    assert len(entries(journal)) == 2
    (host.root / ".dockerenv").unlink()
    restore_from_journal(host.sysfs(), journal, include_live=True)
    assert host.driver_of("0000:05:00.0") == "ixgbe" and entries(journal) == []


# -- 5. a port `ip -d link` ties to no PCI function leaves every NIC unproven ---------------------

PORT0 = "0000:05:00.0"


def old_iproute2_in_a_container(host: FakeHost) -> None:
    """Port 2 of the function 05:00.0 (a two-port function, like mlx4's) moved into a named
    namespace and up there; this iproute2 prints no parentdev, so nothing ties it to 05:00.0."""
    host.network("ctr", links=[fakesysfs.link(1, "lo", up=True),
                               fakesysfs.link(2, "eth1", up=True),
                               fakesysfs.link(3, "veth0", up=True, linkinfo={"info_kind": "veth"})],
                 addrs={"eth1": ["10.9.0.1/24"]})


def test_a_port_with_no_parentdev_in_another_namespace_leaves_nics_unproven(lab):
    """A physical link with no parentdev was tied to nothing: the function whose other port it
    is was taken while that port carried a container's traffic."""
    old_iproute2_in_a_container(lab)
    why = HostUsage.read(lab.root).verdict(PORT0).uses
    assert ("cannot tell whether 0000:05:00.0's interfaces are in use: eth1 (netns ctr) is a "
            "physical link, but `ip -d link` names no device under it (no parentdev: iproute2 "
            "or the kernel is too old), so which PCI function's port it is cannot be told") in why
    assert not any("veth0" in u or "lo (netns" in u for u in why)  # virtual: no port of any


def test_a_port_with_no_parentdev_in_the_harness_namespace_is_told_by_sysfs(lab):
    """In the harness's own namespace sysfs names a port's device: one there with no
    parentdev counts the same; a virtual link there (no device in sysfs) does not."""
    links = json.loads((lab.root / "ip/link.json").read_text())
    lab.add_net("dummy0")
    lab.file("ip/link.json", json.dumps(
        [{k: v for k, v in li.items() if k not in ("parentbus", "parentdev")}
         if li["ifname"] == "enp5s0f1" else li for li in links]
        + [fakesysfs.link(len(links) + 1, "dummy0")]))
    why = " ".join(HostUsage.read(lab.root).verdict(PORT0).uses)
    assert "enp5s0f1 is a physical link, but `ip -d link` names no device" in why
    assert "dummy0" not in why


# -- 6. a function's BARs, config space or ROM held from user space ------------------------------

PORT1 = "0000:05:00.1"


def sysfs_path_on_the_host(host: FakeHost, bdf: str, name: str) -> str:
    """What /proc shows for a function's sysfs file: its path on the host."""
    return "/" + os.path.relpath(os.path.realpath(host.dev_dir(bdf) / name),
                                 os.path.realpath(host.root))


@pytest.mark.parametrize("how", ["fd", "maps"])
def test_a_function_whose_bar_a_process_holds_is_in_use(lab, how):
    """A user-space driver (DPDK, a vendor tool) opens and mmaps resource0 of an unbound
    function: no driver, no node, no interface shows it, and it was taken."""
    lab.kernel(lab.sys / "bus/pci/drivers/ixgbe/unbind", PORT1)
    assert HostUsage.read(lab.root).verdict(PORT1).idle
    bar = sysfs_path_on_the_host(lab, PORT1, "resource0")
    lab.proc("5000/comm", "dpdk-testpmd\n")
    if how == "fd":
        (lab.root / "proc/5000/fd").mkdir()
        os.symlink(bar, lab.root / "proc/5000/fd/42")
    else:  # the fd was closed after the mmap: the mapping holds the BAR
        lab.proc("5000/maps", "55d0c0a00000-55d0c0a2b000 r--p 00000000 08:02 1311 /usr/bin/x\n"
                              f"7f1c40000000-7f1c40080000 rw-s 00000000 00:15 30512 {bar}\n")
    assert HostUsage.read(lab.root).verdict(PORT1).uses == (
        f"{PORT1}'s resource0 (sysfs) is open or mapped by pid 5000 (dpdk-testpmd): a "
        "user-space driver may use it",)
    assert HostUsage.read(lab.root).verdict("0000:05:00.0").idle  # its sibling's is not held


# -- 7. giving back sees the vfio device node (iommufd) too --------------------------------------


def qemu_on_iommufd(host: FakeHost, bdf: str, pid: int = 4321) -> None:
    """vfio-pci's cdev of ``bdf`` (/dev/vfio/devices/vfio0), open by a QEMU that uses iommufd
    (`-object iommufd`): it holds no /dev/vfio/GROUP."""
    node = host.dev_dir(bdf) / "vfio-dev/vfio0"
    node.mkdir(parents=True)
    (node / "dev").write_text("511:0\n")
    (node / "uevent").write_text("MAJOR=511\nMINOR=0\nDEVNAME=vfio/devices/vfio0\n")
    host.proc(f"{pid}/comm", "qemu-system-x86\n")
    (host.root / f"proc/{pid}/fd").mkdir()
    os.symlink("/dev/vfio/devices/vfio0", host.root / f"proc/{pid}/fd/23")


def test_restore_leaves_a_function_a_qemu_holds_through_iommufd(lab, journal):
    """`_holders` saw only /dev/vfio/GROUP: restore unbound a function a QEMU on iommufd still
    held through its vfio device node."""
    VfioBinder(lab.sysfs(), journal=journal).bind(PORT0, {PORT0, PORT1})  # the run dies
    qemu_on_iommufd(lab, PORT0)
    lab.writes.clear()
    with pytest.raises(HostDeviceError) as e:
        restore_from_journal(lab.sysfs(), journal, include_live=True)
    assert (f"{PORT0}: failed: /dev/vfio/devices/vfio0 is still open by pid 4321 "
            "(qemu-system-x86); stop it (kill 4321), then restore again") in e.value.details
    assert lab.driver_of(PORT0) == "vfio-pci" and len(entries(journal)) >= 1


def test_restore_leaves_a_pf_whose_vf_a_qemu_holds_through_iommufd(sriov_host, journal):
    VfioBinder(sriov_host.sysfs(), journal=journal).enable_vfs(PF, 2)
    qemu_on_iommufd(sriov_host, VF1)
    with pytest.raises(HostDeviceError) as e:
        restore_from_journal(sriov_host.sysfs(), journal, include_live=True)
    assert (f"{PF}: failed: its VF {VF1} is in use (/dev/vfio/devices/vfio0 open by pid 4321 "
            "(qemu-system-x86)); stop it (kill 4321), then restore again") in e.value.details
    assert numvfs(sriov_host) == 2
