"""Issue 31, read 49b (the network side: 48b's fix, :func:`harness.host.network._hidden_clients`,
read for what fails open and what over-refuses; what a namespace only the kernel holds still
leaves the host to see), on main at 14ce95a. An empty read: no finding with a real shape.

Looked at, no test that fails (each held, is refused already, is a stated limit, or is not a
real shape):

* iSCSI (open-iscsi's ``iscsi_tcp``) made in the hidden namespace, 48b's shape with the other
  common kernel block client: ``_hidden_clients`` reads NFS, rbd and NVMe-oF only, and a
  session's socket, handed to the kernel by iscsid (``iscsi_sw_tcp_conn_bind``), would hold
  its namespace; its local address is global (``/sys/class/iscsi_host/hostN/ipaddress``,
  ``ISCSI_HOST_PARAM_IPADDRESS`` -> ``kernel_getsockname``). Not a real shape: the kernel's
  ``NETLINK_ISCSI`` socket is made in ``init_net`` only (per-namespace iSCSI netlink was an
  RFC, Lee Duncan, 2023), so iscsid, and the TCP socket it makes and hands over, run in the
  initial namespace, which the harness always reads. The test written for it (a session of
  10.9.0.5, no namespace read having it) failed on 14ce95a, and was dropped for that reason;
  the control below stays: a session from the host's namespace leaves the free port idle.
* the NFS superblock check: ``DEV`` of /proc/net/nfsfs/volumes is per superblock and an
  ``nfs_client`` is per network namespace (``nfs_match_client`` compares ``cl_net``), so a
  superblock is listed by one namespace only; NFSv4 submounts (referrals, crossmnt) are
  superblocks of their own, each listed. A named or held namespace's list is read by entering
  its network namespace alone (``nsenter -n``/``--net=``: ``/proc/net`` is ``/proc/self/net``,
  the reader's, through the host's own procfs and ``cat``), so a container whose image has no
  ``cat`` or a masked /proc does not matter: the over-refusal asked about does not arise for
  Docker/Kubernetes NFS volumes (dockerd's ``local`` driver and kubelet mount them from the
  host's namespace, listed there) nor for NFS mounted inside an LXC/nspawn container (its
  init holds its namespace, which is read). Where a list cannot be read, an NFSv4
  ``clientaddr`` of *some* namespace read passes; a hidden namespace reusing a container's
  address would pass there, but only with no list readable at all (no ``nfsfs`` proc files):
  not pursued.
* an NFS mount seen in no mountinfo: ``storage.mountinfos`` reads the mount namespaces of
  processes only, so one held by an nsfs bind mount alone (``unshare --mount=FILE``; snapd's
  ``/run/snapd/ns/*.mnt``) is unread; a hidden *network* namespace needs a client made in it
  from such a mount namespace by a process that then ended: no software found doing that (snap
  daemons, LXD included, run in the host's network namespace, their NFS clients listed
  there). A loop device on an NFS file after ``umount -l``: three unusual steps, not pursued.
* Ceph RBD ``client_addr``: the kernel messenger learns its own IP from what the monitor saw
  (``peer_addr_for_me``), so behind NAT it is the NAT's address; for that to be an address of
  a namespace read the NAT would be the host itself, whose uplink is up (refused anyway).
  ``%pISpc`` prints no IPv6 zone; a blank one (not yet learnt) is a wildcard: refused.
* other kernel-held sockets that would keep a deleted namespace alive: NBD over netlink
  (``nbd-client`` gone; sysfs has ``pid``/``backend``, no address), 9p ``trans=tcp`` (no
  client address in its mount line), L2TP tunnels made with a socket fd, a BPF sockmap pinned
  in bpffs, io_uring direct sockets: no global sign of their namespace, the same kind as the
  stated limits (CIFS, CephFS, rpc.nfsd, NVMe-oF with no source address), and not shapes a
  lab host meets with a VLAN made straight in a namespace since deleted. DRBD's and nvmet's
  sockets are made in ``init_net``. A netconsole, a TIPC bearer, a VXLAN's or WireGuard's
  socket do not hold a namespace (each is torn down with it).
* NVMe/TCP with ``--host-iface stor0`` on a 5.14-6.0 kernel (RHEL 9, Ubuntu 22.04), whose
  ``address`` prints ``host_iface=stor0`` but no ``src_addr``: the name is a sign the code
  ignores, but nvme-tcp makes its sockets with ``sock_create_kern`` (no reference on the
  namespace), so ``ip netns del`` tears the namespace, and stor0 with it, down at once: no
  hidden namespace is left to carry it. Inside the stated limit.
* the read lock: ``/run/hotplug-harness-netns.lock`` is opened ``O_NOFOLLOW``, mode 0600,
  in /run (root's): no other user can hold it.

A fake sysfs/proc tree plays the host (:mod:`.fakesysfs`'s lab host); no guest is booted.
"""

from __future__ import annotations

from harness.host.safety import HostUsage

from . import fakesysfs

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PORT1 = "0000:05:00.1"           # enp5s0f1, the lab host's free 82599 port


def _iscsi_session(lab, ipaddress: str) -> None:
    """An open-iscsi software session (host7, session1, connection1:0) to 10.9.0.1:3260 whose
    socket's local address is ``ipaddress``, as the kernel's iscsi transport classes show it:
    /sys/class/iscsi_host/host7 (``ipaddress``, ``netdev`` ``<NULL>`` for the default iface,
    ``hwaddress``, ``initiatorname``), the session and connection, scsi_host host7 with
    ``proc_name`` iscsi_tcp; the iscsi_tcp module loaded; ``ip -j netns list-id`` ``[]``."""
    host = lab.sys / "devices/platform/host7"
    iscsi_host = host / "iscsi_host/host7"
    iscsi_host.mkdir(parents=True)
    for name, value in (("ipaddress", ipaddress), ("netdev", "<NULL>"),
                        ("hwaddress", "<NULL>"),
                        ("initiatorname", "iqn.2004-10.com.ubuntu:01:labhost")):
        (iscsi_host / name).write_text(f"{value}\n")
    scsi_host = host / "scsi_host/host7"
    scsi_host.mkdir(parents=True)
    (scsi_host / "proc_name").write_text("iscsi_tcp\n")
    session = host / "session1/iscsi_session/session1"
    session.mkdir(parents=True)
    for name, value in (("targetname", "iqn.2003-01.org.linux-iscsi.filer:scratch"),
                        ("state", "LOGGED_IN"), ("recovery_tmo", "120")):
        (session / name).write_text(f"{value}\n")
    conn = host / "session1/connection1:0/iscsi_connection/connection1:0"
    conn.mkdir(parents=True)
    for name, value in (("address", "10.9.0.1"), ("port", "3260"), ("local_port", "41872"),
                        ("state", "up")):
        (conn / name).write_text(f"{value}\n")
    for cls, node, target in (("iscsi_host", "host7", iscsi_host),
                              ("scsi_host", "host7", scsi_host),
                              ("iscsi_session", "session1", session),
                              ("iscsi_connection", "connection1:0", conn)):
        (lab.sys / "class" / cls).mkdir(parents=True, exist_ok=True)
        (lab.sys / "class" / cls / node).symlink_to(target)
    for module in ("iscsi_tcp", "libiscsi_tcp", "libiscsi", "scsi_transport_iscsi"):
        (lab.sys / "module" / module).mkdir(parents=True, exist_ok=True)
    lab.file("ip/netns-list-id.json", "[]")


# -- control: an iSCSI session of the host's namespace -------------------------------------


def test_control_1_an_iscsi_session_on_the_hosts_own_address_leaves_the_port_idle(lab):
    """Control: the session logged in from the host's namespace (``ipaddress`` 192.168.1.10,
    enp2s0's): nothing hidden, enp5s0f1 (down, nothing on it) is idle."""
    _iscsi_session(lab, "192.168.1.10")
    verdict = HostUsage.read(lab.root).verdict(PORT1)
    assert verdict.idle, verdict.uses
