"""Issue 31, read 47b (the network side: what sits on a down port from a namespace the
harness does not find, what the kernel holds of it with no socket; the leases and the
journal), on main at b625e37. What it found, one section below each:

1. An upper device of the port (a VLAN, a macvlan) that lives in a network namespace only the
   kernel holds. The storage network of a lab host is kept apart in a named namespace, reached
   through a VLAN of a host port rather than the port itself: ``ip link add link enp5s0f1
   name stor0 type vlan id 100; ip link set stor0 netns storage; ip -n storage addr add
   10.9.0.5/24 dev stor0; ip -n storage link set stor0 up; nsenter --net=/run/netns/storage
   mount -t nfs4 filer:/scratch /scratch`` (``nsenter --net`` alone: the mount is in the host's
   mount namespace, its RPC client in ``storage``), and later a clean-up script's ``ip netns
   del storage``. The NFS client holds the namespace (``get_net`` in ``nfs_alloc_client``; the
   same for a CIFS, Ceph or NVMe/TCP client made there), and with it ``stor0``, which no
   process, fd, socket or bind mount names: read 29b, 5's holder, whose fix
   (:func:`harness.host.safety._ports_unseen`) catches only a *port* moved in there (its
   function then shows too few interfaces). An upper device moved there is seen from nowhere
   the harness looks: the kernel drops the port's ``upper_*`` sysfs links when the two are in
   different namespaces (``netdev_adjacent_is_neigh_list`` wants ``net_eq``), ``ip -d link
   show enp5s0f1`` names no upper device, and :func:`harness.host.network._uppers` finds a
   VLAN of another namespace only by reading that namespace (``link_netnsid``, a problem),
   which it never finds. Checked on this host's 6.18 kernel with namespaces of its own (a
   macvlan on a down veth ``d0``, moved to a second namespace that a process then held alone,
   its name deleted): ``d0`` has no ``upper_*`` link, ``ip -j -d link show d0`` names nothing,
   and the only trace in ``d0``'s namespace is ``ip -j netns list-id``: ``[{"nsid":0}]``, a
   peer namespace with no name (the move allocated it: ``dev_change_net_namespace`` ->
   ``peernet2id_alloc``). So a port that is down (set down by an operator who, from ``ip``,
   sees nothing on it; or a storage leg down for a switch's maintenance) is proven idle
   and taken; unregistering it (the unbind) deletes every VLAN and macvlan on it
   (``vlan_device_event``/``macvlan_device_event`` on ``NETDEV_UNREGISTER``), so the NFS mount
   (a ``hard`` one) loses its only interface for good: every process that touches /scratch
   hangs in D state until the host is rebooted, where setting the port up again would have
   let it carry on. Safe: a namespace the harness's own lists by ``nsid`` (``ip -j netns
   list-id``, RTM_GETNSID) that is none of the namespaces it read (each one's nsid told by
   RTM_GETNSID with its fd, ``NETNSA_FD``), or a network file system mount whose
   ``clientaddr`` is an address of no namespace read (read 29b, 5's second sign), is a
   namespace no holder names: every NIC is unproven, naming it.

2. An ATA-over-Ethernet (AoE) target found through the down port. AoE needs no address, no
   route and no socket: ``modprobe aoe; aoe-discover`` (aoetools) finds a ``vblade`` or Coraid
   shelf on the lab network, and the kernel's initiator keeps, for each target, the interfaces
   it answered on, each with a reference to the netdev (``setifbcnt``: ``dev_hold(nd)``, from
   ``aoecmd_cfg_rsp``; the one handler in /proc/net/ptype, ``88a2 aoenet``, is bound to no
   device). The reference is dropped only when another interface of the same target takes
   over (``ejectif``, never the last one) or when the device is freed (``aoe-flush``, module
   unload: ``freetgt``); aoe has no netdevice notifier. So a port that an AoE target was found
   on keeps that reference down, and for good: after ``aoe_deadsecs`` (180 s) with the port
   down the device is only marked down (``aoedev_downdev``: its interfaces stay). The only
   trace is the AoE disk's ``netif`` (``/sys/block/etherd!e1.0/netif``: ``enp5s0f1``, what
   ``aoe-stat`` prints), which the harness does not read (the disk is a virtual device, below
   no function; :mod:`harness.host.network` counts AoE only through "up is in use"). Taking
   the port then does not merely cut the AoE disk off (a mount on /dev/etherd/e1.0p1 loses its
   only path, every I/O failed): the driver's unbind, in ``unregister_netdevice``, waits for
   the reference forever (``unregister_netdevice: waiting for enp5s0f1 to become free. Usage
   count = 2`` every 10 s, ``netdev_wait_allrefs_any``), so the harness's write to ``unbind``
   never returns, in uninterruptible sleep, holding the device's lock: the run (or ``harness
   bind``) hangs unkillable, nothing is given back, and the port is lost to the host until
   the AoE device is flushed (which refuses while it is mounted) or the host reboots. Shape: a
   lab host that uses, or once used, an AoE disk (diskless-boot and storage labs; Debian and
   RHEL ship ``aoe.ko``, aoetools ``aoe-discover``/``aoe-stat``), on the port an operator later
   sets down to offer it, seeing no address, route or socket on it. Safe: with the ``aoe``
   module there, each AoE disk's ``netif`` naming the port (or ``none``/unreadable: which
   port cannot be told) is a use, named: ``aoe-flush`` it first.

Looked at, no test (each held, is refused already, is a stated limit, or not a real shape):

* the tc reads of reads 41b-45c with real iproute2 6.1 output in a namespace of its own (an
  ``htb`` root with classes on a veth, ``u32 ... indev d0`` filters on chain 0 and chain 7):
  ``tc -j filter show dev d2 parent 1:`` lists every chain's filters with ``input_dev``,
  ``tc class show`` prints each class at column 0 as :func:`_tc_classes` reads it; the
  kernel's own ``noop`` qdiscs are not dumped at all. Module gates (``_loaded``/
  ``_built_in``): a kernel without /lib/modules is asked through /proc/config.gz, else counts
  as built in.
* nftables: ``iif``/``oif`` in concatenations, maps inside statements, named sets, ``fib``
  ``oif``; iptables(-nft) matches by name (``-i``/``-o``, ``physdev``, ``TEE --oif`` by name
  through its notifier): hold after a give-back.
* IPv6 anycast joins (``IPV6_JOIN_ANYCAST``, kept through a down, destroyed at the
  unregister) and a packet socket bound to no interface with a ``PACKET_ADD_MEMBERSHIP`` on
  the port: no lab software found that does either (Mobile IPv6 home agents only).
* sockets: an ``ss`` scope's ``%ifname``, /proc/net/packet's index, SCTP's addresses; the
  port must be down to be taken, which stops what a socket on it carries (judged by reads
  40b-44b).
* :mod:`harness.run.hygiene` (``sweep_stale``/``sweep_run``: real folders of root's only),
  ``run_tmp_prefix``; ``ci/`` and ``.ci/check-root-tree`` (``.pth`` ``import`` lines are
  skipped, but the project builds with setuptools, whose editable finder is followed);
  :class:`harness.run.backends.Vfio` ``_make_vfs`` and :func:`harness.host.binding.
  _restore_sriov` (``_live_users_of_vfs``, ``_vfs_not_idle`` under the journal's lock).

Each section's test asserts the safe behaviour (refused, with the use named) and fails on
b625e37; the controls show that the idle shape is still taken (and, for 1, that the same
VLAN in the host's namespace is refused). A fake sysfs/proc tree plays the host
(:mod:`.fakesysfs`'s lab host); no guest is booted.
"""

from __future__ import annotations

import json

from harness.host.safety import HostUsage

from . import fakesysfs
from .fakesysfs import link

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PORT1 = "0000:05:00.1"           # enp5s0f1, the lab host's free 82599 port
NFS_THROUGH_THE_HIDDEN_VLAN = (
    "filer:/scratch /scratch nfs4 rw,relatime,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,"
    "hard,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=10.9.0.5,local_lock=none,"
    "addr=10.9.0.1 0 0\n")


# -- 1. a VLAN of the down port in a namespace only the kernel holds ---------------------------


def _storage_vlan_in_a_deleted_namespace(lab) -> None:
    """``stor0`` (VLAN 100 of enp5s0f1) in the namespace ``storage``, whose name was deleted:
    the NFS client of /scratch holds it. What the harness can read of it: the mount (the
    host's mount namespace) and, in its own network namespace, a peer namespace with no
    name listed by ``ip -j netns list-id``; enp5s0f1 itself is down in the host's namespace,
    with no address, route or upper device it can see."""
    mounts = (lab.root / "proc/mounts").read_text() + NFS_THROUGH_THE_HIDDEN_VLAN
    lab.proc("mounts", mounts)
    lab.file("ip/netns-list-id.json", json.dumps([{"nsid": 0}]))  # (`ip -j netns list-id`)


def test_1_a_vlan_of_the_port_in_a_namespace_only_an_nfs_mount_keeps_is_not_missed(lab):
    """Host shape: above (section 1). The harness reads the host's namespace (enp5s0f1 down,
    nothing on it) and every namespace a process, fd, socket or mount holds; ``storage`` is
    none of them. Expected: 05:00.1 is not proven idle: a namespace exists that the harness
    cannot read (the peer nsid 0 its own namespace lists, no namespace read; an NFS mount
    from 10.9.0.5, an address of no namespace read), and an upper device of the port may
    sit there."""
    _storage_vlan_in_a_deleted_namespace(lab)
    verdict = HostUsage.read(lab.root).verdict(PORT1)
    assert not verdict.idle, verdict
    assert any("namespace" in u for u in verdict.uses), verdict.uses


def test_1b_a_ceph_rbd_client_through_a_hidden_vlan_leaves_only_the_nsid(lab):
    """The same shape with a Ceph RBD disk instead of NFS: ``nsenter --net=/run/netns/storage
    rbd map scratch/vol0`` (libceph's messenger holds the namespace: ``get_net`` in
    ``ceph_messenger_init``), /dev/rbd0 mounted on /data in the host's mount namespace, then
    ``ip netns del storage``. No mount line names a client address; the peer namespace with
    no name that ``ip -j netns list-id`` lists in the harness's own is the sign. Expected: not
    proven idle, a namespace the harness cannot read named."""
    lab.file("ip/netns-list-id.json", json.dumps([{"nsid": 0}]))
    verdict = HostUsage.read(lab.root).verdict(PORT1)
    assert not verdict.idle, verdict
    assert any("namespace" in u for u in verdict.uses), verdict.uses


def test_control_1_the_same_vlan_in_the_hosts_namespace_is_refused(lab):
    """Control: the rule is there. ``stor0`` left in the host's namespace (``ip -d`` shows
    ``"link": "enp5s0f1"``): enp5s0f1 has the upper device stor0, in use."""
    links = json.loads((lab.root / "ip/link.json").read_text())
    links.append(link(6, "stor0", up=True, link="enp5s0f1",
                      linkinfo={"info_kind": "vlan", "info_data": {"protocol": "802.1Q",
                                                                    "id": 100}}))
    (lab.root / "ip/link.json").write_text(json.dumps(links))
    lab.file("ip/tc-class-stor0.txt", "")
    verdict = HostUsage.read(lab.root).verdict(PORT1)
    assert not verdict.idle
    assert any("upper device stor0" in u for u in verdict.uses), verdict.uses


def test_control_1_the_free_port_with_no_hidden_namespace_is_idle(lab):
    """Control: no namespace the harness cannot read, no network file system: enp5s0f1, down,
    is idle, as before."""
    verdict = HostUsage.read(lab.root).verdict(PORT1)
    assert verdict.idle, verdict.uses


# -- 2. an AoE target found through the down port --------------------------------------------


def _aoe_disk(lab, netif: str) -> None:
    """The aoe module loaded and its disk e1.0 (a vblade export), found through ``netif``:
    ``/sys/block/etherd!e1.0/netif`` as ``aoeblk.c``'s ``aoedisk_show_netif`` prints it, with
    ``state`` and ``mac`` beside it; a virtual block device, below no PCI function."""
    (lab.sys / "module/aoe/parameters").mkdir(parents=True)
    lab.file("sys/module/aoe/parameters/aoe_iflist", "\n")
    lab.add_disk("etherd!e1.0", lab.sys / "devices/virtual", ("etherd!e1.0p1",),
                 sectors=16777216, majmin="152:16")
    disk = lab.sys / "devices/virtual/block/etherd!e1.0"
    (disk / "netif").write_text(f"{netif}\n")
    (disk / "state").write_text("up\n")
    (disk / "mac").write_text("525400a1b2c3\n")
    (disk / "fwver").write_text("0x4019\n")


def test_2_an_aoe_target_found_through_the_down_port_keeps_it(lab):
    """Host shape: above (section 2). enp5s0f1 is down, with no address, route, socket or
    upper device; the AoE disk e1.0 was found through it and holds a reference to it.
    Expected: 05:00.1 is not proven idle, the AoE disk named (its unbind would wait for that
    reference forever)."""
    _aoe_disk(lab, "enp5s0f1")
    verdict = HostUsage.read(lab.root).verdict(PORT1)
    assert not verdict.idle, verdict
    assert any("e1.0" in u or "AoE" in u for u in verdict.uses), verdict.uses


def test_control_2_an_aoe_target_on_another_port_leaves_it_idle(lab):
    """Control: the AoE disk found through enp2s0 (the uplink): enp5s0f1 is idle, as before."""
    _aoe_disk(lab, "enp2s0")
    verdict = HostUsage.read(lab.root).verdict(PORT1)
    assert verdict.idle, verdict.uses


# -- fix 47b: the edges of both rules -------------------------------------------------------


def test_fix_1_a_peer_nsid_of_a_namespace_read_is_no_hidden_one(lab):
    """A peer listed by its name (a named namespace, read) or by the nsid of one read through
    a process in it (its fake ``nsid``, RTM_GETNSID on the host) is no namespace the harness
    missed: enp5s0f1 stays idle."""
    from .test_host_proven_idle import container

    lab.network("storage", links=[link(1, "lo", up=True)])
    lab.file("var/run/netns/storage")  # (its nsfs file: else the fake searches no holder)
    container(lab, "self", 4026531840)
    container(lab, 1, 4026531840)
    container(lab, 2301, 4026532500)  # a container's init, its namespace the peer nsid 1
    lab.file("ip/pidns/2301/link.json", json.dumps([link(1, "lo", up=True)]))
    for what in ("addr", "route", "route6"):
        lab.file(f"ip/pidns/2301/{what}.json", "[]")
    lab.file("ip/pidns/2301/ss.txt", "")
    lab.file("ip/pidns/2301/packet.txt", "sk RefCnt Type Proto Iface R Rmem User Inode\n")
    lab.file("ip/pidns/2301/nsid", "1\n")
    lab.file("ip/netns-list-id.json", json.dumps([{"nsid": 0, "name": "storage"},
                                                   {"nsid": 1}]))
    verdict = HostUsage.read(lab.root).verdict(PORT1)
    assert verdict.idle, verdict.uses
    (lab.root / "ip/pidns/2301/nsid").unlink()  # its nsid not told: nsid 1 is unaccounted for
    verdict = HostUsage.read(lab.root).verdict(PORT1)
    assert any("nsid 1 " in u for u in verdict.uses), verdict.uses


def test_fix_1_peers_that_cannot_be_listed_leave_every_nic_unproven(lab):
    """`ip -j netns list-id` failing (or an ``ip`` too old for it): fail closed, said."""
    (lab.root / "ip/netns-list-id.json").unlink()
    verdict = HostUsage.read(lab.root).verdict(PORT1)
    assert not verdict.idle
    assert any("netns list-id" in u for u in verdict.uses), verdict.uses


def test_fix_2_an_aoe_disk_of_several_interfaces_or_none_told(lab):
    """``netif`` may name several interfaces; one that says ``none`` or cannot be read leaves
    which it holds untold: every NIC unproven, the disk named with ``aoe-flush``."""
    _aoe_disk(lab, "enp2s0,enp5s0f1")
    verdict = HostUsage.read(lab.root).verdict(PORT1)
    assert any("AoE disk e1.0" in u and "aoe-flush e1.0" in u for u in verdict.uses)
    netif = lab.sys / "devices/virtual/block/etherd!e1.0/netif"
    netif.write_text("none\n")
    verdict = HostUsage.read(lab.root).verdict(PORT1)
    assert any("names no interface" in u for u in verdict.uses), verdict.uses
    netif.unlink()
    verdict = HostUsage.read(lab.root).verdict(PORT1)
    assert any("netif cannot be read" in u for u in verdict.uses), verdict.uses
