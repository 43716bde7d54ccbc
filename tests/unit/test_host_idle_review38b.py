"""Issue 31, read 38b (NICs: what keeps a port that is down, in kernel tables ``ip route``,
``ss`` and /proc/net/packet do not show), on main at 0498058.

What it found, one section below each:

1. MPLS routes. :meth:`NetView.use_of` gives the evidence "down, no route in any table", but
   reads only ``ip route`` and ``ip -6 route``: the MPLS label table (``ip -f mpls route``,
   FRR's ``ldpd``/``zebra`` with ``mpls_router`` and ``net.mpls.conf.<port>.input=1``, the
   usual MPLS/LDP/segment-routing lab) is never read. Unlike IPv4 and IPv6 routes, which the
   kernel flushes when a port is set down, an MPLS route through it stays: ``mpls_ifdown``
   on ``NETDEV_DOWN`` only marks its nexthop ``RTNH_F_DEAD``/``LINKDOWN``; it is deleted on
   ``NETDEV_UNREGISTER``, that is when the harness unbinds the port. A down port that is the
   out-interface of the lab's label-switched paths is taken, and the routes are gone when it
   comes back.
2. Multicast routing interfaces (VIFs). A multicast router (``smcroute``, ``pimd``, FRR's
   ``pimd``/``pim6d``; the usual way a lab forwards multicast test streams) adds a VIF for
   each port it routes; the kernel keeps a VIF while its port is down (``ipmr_device_event``
   and ``ip6mr_device_event`` act on ``NETDEV_UNREGISTER`` only) and lists it in
   /proc/net/ip_mr_vif and /proc/net/ip6_mr_vif. The daemon's socket is the raw IGMP/MLD
   ``mroute`` socket, bound to no interface (``ss`` prints no ``%ifname``), and the multicast
   forwarding cache is not in ``ip route``: nothing the harness reads shows it, the port is
   taken, and the daemon's VIF (and every MFC entry through it) is deleted under it.
3. Protocol handlers bound to the port, in the kernel, with no socket: a TIPC bearer
   (``tipc bearer enable media eth device enp5s0f1``: ``tipc_enable_l2_media`` sets
   ``b->pt.dev`` and calls ``dev_add_pack``; a cluster's messaging bearer, enabled whether
   the port is up or not) shows only in /proc/net/ptype (``88ca enp5s0f1 tipc_l2_rcv_msg``),
   which lists every handler bound to one device of the reader's namespace. The harness reads
   /proc/net/packet (AF_PACKET sockets) only; the bearer is disabled, and the cluster
   configuration lost, when the port is unbound. This is the same kind of use as netconsole,
   which the harness counts on a down port (no socket, no process: the kernel's own user).
4. A connection over the port's own address, with no ``%ifname``. An IPv4 address stays on a
   port set down, and so does every TCP connection whose local address it is: one with no
   data in flight (an idle SSH session of a user on the lab network 10.0.5.0/24, a database
   replication or message-bus stream between heartbeats, an NFS or iSCSI session between
   its pings) stays ESTAB through a down/up of the port (a cable swap, a firmware setting
   changed with the port down, a multipath failover test) and carries on when it comes back.
   ``ss`` prints it ``10.0.5.1:22 10.0.5.50:50100``, with no ``%ifname`` (nothing bound it to
   the device), so :func:`_read_sockets` files it under no interface, and the evidence "no
   socket bound to it" is given while a connection of the port's own address waits on it;
   taking the port removes the address and the connection is lost for good. (The socket's
   local address being one of the port's, in the port's namespace, is positive evidence of
   use; an address alone on a down port stays idle, the rule as written: control 4.)

Each section's test asserts the safe behaviour (the port is in use, with the use named) and
fails on 0498058; the control shows the same port, down with none of these, is still idle. A
fake sysfs/proc tree plays the host (:mod:`.fakesysfs`'s lab host, enp5s0f1 on 05:00.1 down
in the harness's namespace); ``ip -f mpls`` is played by a patched :func:`network._run`.
"""

from __future__ import annotations

import json

from harness.host import network
from harness.host.network import NetView, Netdev
from harness.host.sysfs import Sysfs

from . import fakesysfs

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PORT = Netdev("", "enp5s0f1")


def _uses(lab) -> list[str]:
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    return uses


def test_control_the_down_port_with_none_of_these_is_idle(lab):
    lab.proc("net/ptype", "Type Device      Function\nALL           tpacket_rcv\n"
                          "0800          ip_rcv\n86dd          ipv6_rcv\n")
    lab.proc("net/ip_mr_vif", "Interface      BytesIn  PktsIn  BytesOut PktsOut Flags Local"
                              "    Remote\n")
    uses, evidence = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert uses == [] and "down" in evidence, uses


# -- 1. MPLS routes -----------------------------------------------------------------------------


def test_1_an_mpls_route_out_of_the_down_port_keeps_it(lab, monkeypatch):
    """``ip -j -f mpls route show`` on a host running FRR's LDP: label 100 swapped to 200
    out of enp5s0f1, which the operator set down (the route stays, its nexthop ``dead``)."""
    mpls = [{"dst": "100", "as": {"family": "mpls", "address": "200"},
             "via": {"family": "inet", "address": "10.0.5.2"}, "dev": "enp5s0f1",
             "flags": ["dead", "linkdown"]}]
    real = network._run

    def run(fs, argv, fake, *a, **k):
        if "mpls" in argv:
            return json.dumps(mpls)
        return real(fs, argv, fake, *a, **k)

    monkeypatch.setattr(network, "_run", run)
    lab.proc("sys/net/mpls/platform_labels", "1048575\n")  # (mpls_router is loaded: FRR's LDP)
    uses = _uses(lab)
    assert any("100" in u or "mpls" in u.lower() for u in uses), uses


# -- 2. multicast VIFs --------------------------------------------------------------------------


def test_2a_an_ipv4_multicast_vif_on_the_down_port_keeps_it(lab):
    """smcroute routes 239.1.1.1 from enp2s0 to enp5s0f1 (``phyint enp5s0f1 enable``)."""
    lab.proc("net/ip_mr_vif",
             "Interface      BytesIn  PktsIn  BytesOut PktsOut Flags Local    Remote\n"
             " 0 enp2s0          4096       8         0       0 00000 0A01A8C0 00000000\n"
             " 1 enp5s0f1           0       0     40960      80 00000 0105000A 00000000\n")
    uses = _uses(lab)
    assert any("multicast" in u.lower() or "vif" in u.lower() for u in uses), uses


def test_2b_an_ipv6_multicast_vif_on_the_down_port_keeps_it(lab):
    lab.proc("net/ip6_mr_vif",
             "Interface      BytesIn  PktsIn  BytesOut PktsOut Flags\n"
             " 0 enp2s0          4096       8         0       0 00000\n"
             " 1 enp5s0f1           0       0     40960      80 00000\n")
    uses = _uses(lab)
    assert any("multicast" in u.lower() or "vif" in u.lower() for u in uses), uses


# -- 3. protocol handlers bound to the port -----------------------------------------------------


def test_3_a_tipc_bearer_on_the_down_port_keeps_it(lab):
    lab.proc("net/ptype", "Type Device      Function\nALL           tpacket_rcv\n"
                          "0800          ip_rcv\n86dd          ipv6_rcv\n"
                          "88ca enp5s0f1 tipc_l2_rcv_msg\n")
    uses = _uses(lab)
    assert any("tipc" in u.lower() or "ptype" in u.lower() or "handler" in u.lower()
               for u in uses), uses


# -- 4. a connection over the port's own address ------------------------------------------------


def test_4_an_established_connection_from_the_down_ports_address_keeps_it(lab):
    lab.network(links=[fakesysfs.link(1, "lo", up=True),
                       fakesysfs.link(2, "enp2s0", "0000:02:00.0", up=True),
                       fakesysfs.link(3, "enp5s0f0", "0000:05:00.0"),
                       fakesysfs.link(4, "enp5s0f1", "0000:05:00.1"),
                       fakesysfs.link(5, "eno1", "0000:00:1f.6")],
                addrs={"lo": ["127.0.0.1/8"], "enp2s0": ["192.168.1.10/24"],
                       "enp5s0f1": ["10.0.5.1/24"]},
                ss="tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:*\n"
                   "tcp ESTAB 0 0 10.0.5.1:22 10.0.5.50:50100\n")
    uses = _uses(lab)
    assert any("10.0.5.50:50100" in u for u in uses), uses


def test_control_4_the_same_port_with_its_address_and_no_connection_is_idle(lab):
    """(The rule as written: an address on a down port is not a use by itself.)"""
    lab.network(links=[fakesysfs.link(1, "lo", up=True),
                       fakesysfs.link(4, "enp5s0f1", "0000:05:00.1")],
                addrs={"enp5s0f1": ["10.0.5.1/24"]},
                ss="tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:*\n")
    uses, evidence = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert uses == [] and "down" in evidence, uses


# -- the verdict on the function itself ---------------------------------------------------------


def test_control_the_lab_hosts_05_00_1_is_taken_as_it_stands(lab):
    from harness.host.safety import HostUsage
    assert HostUsage.read(lab.root).verdict("0000:05:00.1").uses == ()


def test_2_3_the_function_is_refused_with_its_ports_use_named(lab, monkeypatch):
    """The same as sections 2a and 3, judged as the binder judges 05:00.1 (HostUsage)."""
    from harness.host.safety import HostUsage
    lab.proc("net/ip_mr_vif",
             "Interface      BytesIn  PktsIn  BytesOut PktsOut Flags Local    Remote\n"
             " 1 enp5s0f1           0       0     40960      80 00000 0105000A 00000000\n")
    lab.proc("net/ptype", "Type Device      Function\n88ca enp5s0f1 tipc_l2_rcv_msg\n")
    uses = HostUsage.read(lab.root).verdict("0000:05:00.1").uses
    assert any("enp5s0f1" in u for u in uses), uses
