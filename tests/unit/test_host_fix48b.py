"""Fix of read 48b: the edges of :func:`harness.host.network._hidden_clients` beyond the
reviewer's tests. An NFSv4 mount whose ``clientaddr`` is a wildcard (the kernel chose none)
is told by the volume lists alone; a superblock listed by a named namespace's list is one
read; a named namespace's list that cannot be read leaves only ``clientaddr``; an rbd disk
whose ``client_addr`` cannot be read (a kernel before 5.0) or is an IPv6 address
(``[addr]:0/nonce``); an NVMe/TCP controller by its ``src_addr``, none (a stated limit) or
an ``address`` that cannot be read, its ``host_traddr`` where no ``src_addr`` is printed, and
a PCIe one not looked at. A fake sysfs/proc tree plays the host (:mod:`.fakesysfs`'s lab
host), the tools their fake output files; no guest is booted."""

from __future__ import annotations

import os

from harness.host.safety import HostUsage

from . import fakesysfs
from .test_host_idle_review48b import _nfs3_mount, _rbd_disk

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PORT1 = "0000:05:00.1"           # enp5s0f1, the lab host's free 82599 port
_HEADER = "NV SERVER   PORT DEV          FSID                              FSC\n"


def _nfs4_at(lab, clientaddr: str, dev: str = "0:53") -> None:
    """An NFSv4 mount of /scratch, superblock ``dev``, its ``clientaddr`` as given."""
    lab.proc("mounts", (lab.root / "proc/mounts").read_text() +
             f"filer:/scratch /scratch nfs4 rw,vers=4.2,hard,clientaddr={clientaddr},"
             "addr=10.9.0.1 0 0\n")
    mountinfo = lab.root / "proc/self/mountinfo"
    lines = [line for line in mountinfo.read_text().splitlines() if " /scratch " not in line]
    mountinfo.write_text("\n".join(lines + [
        f"95 1 {dev} / /scratch rw,relatime shared:50 - nfs4 filer:/scratch rw,vers=4.2,"
        f"clientaddr={clientaddr},addr=10.9.0.1"]) + "\n")


def _storage(lab, volumes: "str | None") -> None:
    """A named namespace ``storage`` with stor0 (10.9.0.5, a dummy: no port of the host's)
    and, unless None, its NFS volume list (``cat /proc/net/nfsfs/volumes`` entered there)."""
    lab.network("storage", links=[fakesysfs.link(1, "lo", up=True),
                                  fakesysfs.link(7, "stor0", up=True,
                                                 linkinfo={"info_kind": "dummy"})],
                addrs={"lo": ["127.0.0.1/8"], "stor0": ["10.9.0.5/24"]})
    if volumes is not None:
        lab.file("ip/netns/storage/nfsfs-volumes.txt", _HEADER + volumes)


def _verdict(lab):
    return HostUsage.read(lab.root).verdict(PORT1)


# -- NFS ------------------------------------------------------------------------------------------


def test_a_wildcard_clientaddr_is_told_by_the_volume_lists(lab):
    """``clientaddr=0.0.0.0`` names no namespace; the host's list naming 0:53 does."""
    _nfs4_at(lab, "0.0.0.0")
    lab.proc("fs/nfsfs/volumes", _HEADER + "v4 0a090001  801 0:53         0:0      no\n")
    assert _verdict(lab).idle, _verdict(lab).uses


def test_a_wildcard_clientaddr_listed_nowhere_is_unproven(lab):
    _nfs4_at(lab, "::")
    verdict = _verdict(lab)
    assert not verdict.idle and any("/scratch" in u for u in verdict.uses), verdict.uses


def test_a_wildcard_clientaddr_with_no_volume_list_is_unproven(lab):
    _nfs4_at(lab, "0.0.0.0")
    os.unlink(lab.root / "proc/fs/nfsfs/volumes")
    verdict = _verdict(lab)
    assert not verdict.idle and any("/scratch" in u for u in verdict.uses), verdict.uses


def test_a_superblock_a_named_namespace_lists_is_one_read(lab):
    """The NFSv3 mount's client in ``storage``, which the harness reads: it lists 0:53."""
    _storage(lab, "v3 0a090001  801 0:53         0:0      no\n")
    _nfs3_mount(lab, "")
    assert _verdict(lab).idle, _verdict(lab).uses


def test_a_named_namespaces_list_that_cannot_be_read_leaves_nfsv3_unproven(lab):
    _storage(lab, None)
    _nfs3_mount(lab, "v3 0a090001  801 0:53         0:0      no\n")
    verdict = _verdict(lab)
    assert not verdict.idle and any("nfsfs" in u for u in verdict.uses), verdict.uses


def test_a_clientaddr_of_a_named_namespace_read_is_one_read(lab):
    """With no list there, NFSv4's clientaddr of ``storage``'s stor0 tells it."""
    _storage(lab, None)
    _nfs4_at(lab, "10.9.0.5")
    assert _verdict(lab).idle, _verdict(lab).uses


def test_no_nfs_module_no_mount_read(lab):
    """Without nfs (neither loaded nor built in) no NFS mount exists: nothing is asked."""
    assert not (lab.sys / "module/nfs").exists()
    assert _verdict(lab).idle, _verdict(lab).uses


# -- Ceph RBD -------------------------------------------------------------------------------------


def test_an_rbd_disk_whose_client_addr_cannot_be_read_is_unproven(lab):
    _rbd_disk(lab, "192.168.1.10:0/1")
    os.unlink(lab.sys / "devices/rbd/0/client_addr")  # (Linux before 5.0)
    verdict = _verdict(lab)
    assert not verdict.idle and any("rbd0" in u for u in verdict.uses), verdict.uses


def test_an_rbd_disk_on_an_ipv6_address_of_the_host_is_idle(lab):
    _rbd_disk(lab, "[fe80::1:10]:0/2381329734")
    assert _verdict(lab).idle, _verdict(lab).uses


# -- NVMe over TCP --------------------------------------------------------------------------------


def _nvme(lab, transport: str, address: "str | None") -> None:
    ctrl = lab.sys / "devices/virtual/nvme-fabrics/ctl/nvme3"
    ctrl.mkdir(parents=True)
    (ctrl / "transport").write_text(f"{transport}\n")
    if address is not None:
        (ctrl / "address").write_text(f"{address}\n")
    (lab.sys / "class/nvme").mkdir(parents=True, exist_ok=True)
    os.symlink(ctrl, lab.sys / "class/nvme/nvme3")


def test_an_nvme_tcp_controller_from_a_hidden_namespaces_address_is_unproven(lab):
    _nvme(lab, "tcp", "traddr=10.9.0.1,trsvcid=4420,src_addr=10.9.0.5")
    verdict = _verdict(lab)
    assert not verdict.idle and any("nvme3" in u for u in verdict.uses), verdict.uses


def test_an_nvme_tcp_controller_from_the_hosts_address_is_idle(lab):
    _nvme(lab, "tcp", "traddr=192.168.1.20,trsvcid=4420,src_addr=192.168.1.10")
    assert _verdict(lab).idle, _verdict(lab).uses


def test_an_nvme_tcp_controller_with_no_src_addr_is_not_refused(lab):
    """The stated limit: no ``src_addr`` (a kernel before 6.1), its namespace not told."""
    _nvme(lab, "tcp", "traddr=192.168.1.20,trsvcid=4420")
    assert _verdict(lab).idle, _verdict(lab).uses


def test_an_nvme_controller_asked_for_a_hidden_namespaces_address_is_unproven(lab):
    """No ``src_addr`` (RDMA), but ``host_traddr`` (``--host-traddr 10.9.0.5``) tells it."""
    _nvme(lab, "rdma", "traddr=10.9.0.1,trsvcid=4420,host_traddr=10.9.0.5")
    verdict = _verdict(lab)
    assert not verdict.idle and any("10.9.0.5" in u for u in verdict.uses), verdict.uses


def test_an_nvme_tcp_controller_whose_address_cannot_be_read_is_unproven(lab):
    _nvme(lab, "rdma", None)
    verdict = _verdict(lab)
    assert not verdict.idle and any("nvme3" in u for u in verdict.uses), verdict.uses


def test_a_pcie_nvme_controller_is_not_looked_at(lab):
    _nvme(lab, "pcie", None)
    assert _verdict(lab).idle, _verdict(lab).uses
