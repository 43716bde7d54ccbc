"""Issue 31, read 48b (the network side: 47b's fixes read against the real kernel; what a
namespace only the kernel holds leaves the host to see), on main at dacacc9. What it found,
one section below each:

1. A VLAN or macvlan of the down port *made* in the hidden namespace, not moved there. 47b's
   fix (:func:`harness.host.network._unheld_peers`) finds a namespace only the kernel holds
   by the nsid the harness's own namespace gave it, on the ground that "moving a device
   between the two allocates one" (docs/vfio.md). Moving does (``dev_change_net_namespace``
   -> ``peernet2id_alloc`` in the *old* namespace); making the upper device straight in the
   other namespace does not: ``ip link add link enp5s0f1 name stor0 netns storage type vlan
   id 100`` (ip-link(8)'s ``netns`` on ``add``; the CNI macvlan, ipvlan and vlan plugins make
   theirs the same way, ``IFLA_NET_NS_FD`` on RTM_NEWLINK) creates the device in ``storage``
   with its lower device in the host's, and the only nsid allocated is the one ``storage``
   gives the host (``rtnl_fill_link_netnsid``, run in the device's namespace for its
   RTM_NEWLINK). Checked on this host's 6.18 kernel with iproute2 6.1, in namespaces of its
   own (``unshare -n``; a down veth ``d0`` as the port; macvlan, since this kernel has no
   8021q, which takes the same rtnl path): after ``ip link add link d0 name mv0 netns $S type
   macvlan``, ``ip -j netns list-id`` in d0's namespace prints ``[]`` (in ``$S``:
   ``[{"nsid":0}]``); after ``ip link add link d0 name mv1 type macvlan; ip link set mv1
   netns $T`` it prints ``[{"nsid":0}]``. So 47b's very shape, with the VLAN made by the
   other command (``ip netns add storage; ip link add link enp5s0f1 name stor0 netns storage
   type vlan id 100; ip -n storage addr add 10.9.0.5/24 dev stor0; ip -n storage link set
   stor0 up; nsenter --net=/run/netns/storage mount -t nfs4 filer:/scratch /scratch``, later
   ``ip netns del storage``), leaves no nsid, and enp5s0f1, down, is proven idle and taken:
   the unbind deletes stor0 under the ``hard`` NFS mount (every process touching /scratch
   hangs in D state until reboot). The host still shows the client: the NFSv4 mount's
   ``clientaddr=10.9.0.5`` in /proc/mounts, an address of no namespace the harness read
   (the second sign 47b's docstring names, which the fix never read); for a Ceph RBD disk
   mapped there, ``/sys/bus/rbd/devices/0/client_addr`` (``10.9.0.5:0/2381329734``, Linux
   5.0 and later), likewise global. Safe: a kernel network client whose local address
   (NFSv4 ``clientaddr``, rbd ``client_addr``) is an address of no namespace read is a
   namespace the harness did not read: every NIC unproven, the mount or disk named. An
   NFSv3 mount prints no client address at all (``mountaddr=``/``addr=`` are the server's);
   what tells it is the per-namespace NFS volume list: ``/proc/fs/nfsfs/volumes`` (a link to
   ``/proc/self/net/nfsfs``) lists, by ``DEV`` (``0:53``), only the superblocks whose client
   is in the reader's namespace, so an NFS mount of /proc/self/mountinfo whose device no
   namespace read lists was made in one the harness never read (test 1c).

Looked at, no test (each held, is refused already, is a stated limit, or not a real shape):

* the other ways into a namespace with no host nsid: a macvlan moved host -> A -> B (A
  gets B's nsid, the host none; the same finding, the same fix); a VF moved into a hidden
  namespace (a move: the host gets the nsid, 47b's fix holds); ``_unheld_peers``'s match by
  name (list-id names only what the harness's own /run/netns binds, which it reads) and by
  RTM_GETNSID (no allocation; an unanswered one is None, so fail-closed); an nsid allocated
  in the host *after* a namespace was read (a later ``ip -d link`` dump of a veth whose peer
  is there) over-refuses only.
* the AoE reader: ``netif`` is printed by ``aoedisk_show_netif`` comma-separated, up to 8,
  ``none`` when empty (fail-closed); a target found by a config reply whose ATA identify
  never came has interfaces held but no gendisk (only debugfs ``aoe/eX.Y`` shows it): not a
  shape a lab meets with a live vblade.
* no-socket kernel users of a down port: FCoE (its ``packet_type`` per interface is in
  /proc/net/ptype), the IPVS sync daemon (its sockets: the port's address, and its group in
  /proc/net/igmp), AF_XDP (needs the XDP program ``ip -d link`` shows), an xfrm interface
  (``dev`` is also its top-level ``link``), ``ip nexthop ... dev X`` (flushed at the down),
  802.1X/LLDP/DHCP (packet sockets).

Each section's test asserts the safe behaviour (refused, with the use named) and fails on
dacacc9; the controls show that the same client with an address of a namespace read leaves
the free port idle. A fake sysfs/proc tree plays the host (:mod:`.fakesysfs`'s lab host); no
guest is booted.
"""

from __future__ import annotations

import json

from harness.host.safety import HostUsage

from . import fakesysfs

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PORT1 = "0000:05:00.1"           # enp5s0f1, the lab host's free 82599 port


def _nfs4(clientaddr: str) -> str:
    return ("filer:/scratch /scratch nfs4 rw,relatime,vers=4.2,rsize=1048576,wsize=1048576,"
            "namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,"
            f"clientaddr={clientaddr},local_lock=none,addr=10.9.0.1 0 0\n")


def _nfs_mount(lab, clientaddr: str) -> None:
    """The NFSv4 mount of /scratch in the host's mount namespace, its client made in the
    network namespace whose address is ``clientaddr``; ``ip -j netns list-id`` in the
    harness's namespace prints ``[]`` (the VLAN was made in ``storage``, never moved)."""
    lab.proc("mounts", (lab.root / "proc/mounts").read_text() + _nfs4(clientaddr))
    lab.file("ip/netns-list-id.json", "[]")


def _nfs3_mount(lab, volumes: str) -> None:
    """``mount -t nfs -o vers=3 filer:/scratch /scratch`` made in ``storage`` (``nsenter
    --net``), its superblock ``0:53``; /proc/fs/nfsfs/volumes in the harness's namespace lists
    ``volumes`` (its header and the superblocks whose client is there)."""
    lab.proc("mounts", (lab.root / "proc/mounts").read_text() +
             "filer:/scratch /scratch nfs rw,relatime,vers=3,rsize=1048576,wsize=1048576,"
             "namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,mountaddr=10.9.0.1,"
             "mountvers=3,mountport=20048,mountproto=udp,local_lock=none,addr=10.9.0.1 0 0\n")
    mountinfo = lab.root / "proc/self/mountinfo"
    if mountinfo.exists():
        mountinfo.write_text(mountinfo.read_text() + "95 1 0:53 / /scratch rw,relatime shared:50 - "
                             "nfs filer:/scratch rw,vers=3,addr=10.9.0.1\n")
    lab.proc("fs/nfsfs/volumes", "NV SERVER   PORT DEV          FSID                              "
             "FSC\n" + volumes)
    lab.file("ip/netns-list-id.json", "[]")


def _rbd_disk(lab, client_addr: str) -> None:
    """``rbd map scratch/vol0`` run in the namespace of ``client_addr``: /sys/bus/rbd/devices/0
    (a link to /sys/devices/rbd/0) with rbd's attributes, as ``rbd showmapped`` reads them."""
    dev = lab.sys / "devices/rbd/0"
    dev.mkdir(parents=True)
    for name, value in (("pool", "scratch"), ("name", "vol0"), ("client_id", "client4171"),
                        ("client_addr", client_addr), ("major", "251"), ("minor", "0"),
                        ("cluster_fsid", "6c3c0a5e-2b1a-11ee-9c4b-525400a1b2c3")):
        (dev / name).write_text(f"{value}\n")
    (lab.sys / "bus/rbd/devices").mkdir(parents=True)
    (lab.sys / "bus/rbd/devices/0").symlink_to("../../../devices/rbd/0")
    (lab.sys / "module/rbd").mkdir(parents=True, exist_ok=True)
    lab.file("ip/netns-list-id.json", "[]")


# -- 1. a VLAN made in the hidden namespace (no nsid in the host's) ----------------------------


def test_1_an_nfs_client_through_a_vlan_made_in_a_deleted_namespace_is_not_missed(lab):
    """Host shape: above (section 1): stor0 made with ``ip link add ... netns storage``, the
    NFSv4 mount of /scratch from 10.9.0.5 made there, ``ip netns del storage``. The harness's
    namespace lists no peer nsid (what the kernel prints, checked above). Expected: 05:00.1 is
    not proven idle: the NFS client's address 10.9.0.5 is on no namespace read, so a namespace
    the harness never read carries it, and an upper device of the port may sit there."""
    _nfs_mount(lab, "10.9.0.5")
    verdict = HostUsage.read(lab.root).verdict(PORT1)
    assert not verdict.idle, verdict
    assert any("namespace" in u or "10.9.0.5" in u for u in verdict.uses), verdict.uses


def test_1b_a_ceph_rbd_client_through_a_vlan_made_in_a_deleted_namespace_is_not_missed(lab):
    """The same with a Ceph RBD disk (``nsenter --net=/run/netns/storage rbd map
    scratch/vol0``, then ``ip netns del storage``): no mount line names a client address, no
    peer nsid is listed; rbd's ``client_addr`` is 10.9.0.5, on no namespace read. Expected:
    not proven idle, the disk or its address named."""
    _rbd_disk(lab, "10.9.0.5:0/2381329734")
    verdict = HostUsage.read(lab.root).verdict(PORT1)
    assert not verdict.idle, verdict
    assert any("namespace" in u or "10.9.0.5" in u or "rbd" in u for u in verdict.uses), \
        verdict.uses


def test_1c_an_nfsv3_client_through_a_vlan_made_in_a_deleted_namespace_is_not_missed(lab):
    """The same with NFSv3 (no ``clientaddr`` in the mount line): the host's own
    /proc/fs/nfsfs/volumes lists no volume ``0:53``, so no namespace read has /scratch's
    client. Expected: not proven idle, the mount named."""
    _nfs3_mount(lab, "")
    verdict = HostUsage.read(lab.root).verdict(PORT1)
    assert not verdict.idle, verdict
    assert any("namespace" in u or "/scratch" in u for u in verdict.uses), verdict.uses


def test_control_1c_an_nfsv3_client_of_the_hosts_namespace_leaves_the_port_idle(lab):
    """Control: the NFSv3 mount made in the host's namespace, its volume listed there."""
    _nfs3_mount(lab, "v3 0a090001  801 0:53         0:0                               no\n")
    verdict = HostUsage.read(lab.root).verdict(PORT1)
    assert verdict.idle, verdict.uses


def test_control_1_an_nfs_client_on_the_hosts_own_address_leaves_the_port_idle(lab):
    """Control: the same mount made in the host's namespace (``clientaddr=192.168.1.10``,
    enp2s0's): nothing hidden, enp5s0f1 (down, nothing on it) is idle."""
    _nfs_mount(lab, "192.168.1.10")
    verdict = HostUsage.read(lab.root).verdict(PORT1)
    assert verdict.idle, verdict.uses


def test_control_1b_an_rbd_client_on_the_hosts_own_address_leaves_the_port_idle(lab):
    """Control: the RBD disk mapped from the host's namespace: enp5s0f1 is idle."""
    _rbd_disk(lab, "192.168.1.10:0/2381329734")
    verdict = HostUsage.read(lab.root).verdict(PORT1)
    assert verdict.idle, verdict.uses
