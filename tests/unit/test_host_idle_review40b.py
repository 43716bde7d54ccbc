"""Issue 31, read 40b (the network side's kernel state on a down port, the leases and the
journal, temporary folders, CI files), on main at a12d4d4. What it found, one section below
each:

1. Multicast group memberships on the down port. A receiver joins a group on one interface
   (``IP_ADD_MEMBERSHIP`` with ``imr_ifindex``, ``IPV6_JOIN_GROUP`` with the port's index)
   from a socket bound to the group or to the wildcard (``0.0.0.0:5004``, ``239.1.1.1:5004``,
   ``*:5006``): ``ss`` prints no ``%ifname`` for it and its local address is not the port's,
   so neither "no socket bound to it" nor "no socket using its address" (read 38b, 4) sees
   it; the port needs no address at all for a join by index. The kernel keeps the
   membership on the interface while the port is down (``ip_mc_down`` only stops its
   reports; IPv6 the same) and lists it in /proc/net/igmp and /proc/net/igmp6 (and ``ip
   maddr``), under the port, with the socket's users count; it rejoins on the link when the
   port is set up again, and the receiver carries on. When the port is unregistered (the
   unbind), ``ip_mc_destroy_dev``/``ipv6_mc_destroy_dev`` free the device's list; the
   socket's membership still names the old ifindex, the port comes back (the give-back)
   with a new one, and the group is never joined again: the receiver gets nothing, for good,
   until it is restarted, and nothing says so. Checked on this host's 6.18 kernel in a
   namespace of its own: a UDP socket on 0.0.0.0:5004 joined to 239.1.1.1 on a down
   interface shows ``010101EF 1`` under it in /proc/net/igmp (and ``ff15::1`` in igmp6),
   ``ss -uan`` shows ``0.0.0.0:5004`` with no interface. Shape: a broadcast/media lab's
   SMPTE ST 2110 or ST 2022-7 receiver (two legs, one on each of two ports, the "red" and
   "blue" networks: GStreamer's ``udpsrc multicast-iface=``, ffmpeg, a vendor's receiver), a
   trading lab's market-data feed handler (an exchange's A and B feeds on two ports, line
   arbitration: one leg set down during a switch maintenance while the handler keeps both
   joins), an IPTV probe, ``socat UDP4-RECV:5004,ip-add-membership=239.1.1.1:enp5s0f1``,
   ``omping``: the redundant leg that is down for maintenance is taken, and the receiver
   silently loses it. The same kind of use as a VIF (read 38b, 2) and an nftables netdev
   chain (read 39b, 5): kept through a down, deleted at the unbind. Safe: a group in
   /proc/net/igmp or /proc/net/igmp6 under the port, other than the kernel's own (the
   all-nodes ``ff01::1``/``ff02::1`` that every IPv6 interface keeps, all-routers
   ``ff02::2``/``ff05::2`` with forwarding on, all-hosts
   ``224.0.0.1`` and solicited-node ``ff02::1:ffXX:XXXX`` of its own addresses), read in
   every namespace, is a use, named with the group.

Each test asserts the safe behaviour and fails on a12d4d4; the controls show the down port
with only the kernel's own groups taken as it stands. A fake sysfs/proc tree plays the host
(:mod:`.fakesysfs`'s lab host); no guest is booted.
"""

from __future__ import annotations

from harness.host.network import NetView, Netdev
from harness.host.sysfs import Sysfs

from . import fakesysfs

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PORT = Netdev("", "enp5s0f1")

#: /proc/net/igmp's header, and the loopback's all-hosts group (lo is up).
IGMP_HEAD = "Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter\n"
IGMP_LO = "1\tlo        :     1      V3\n\t\t\t\t010000E0     1 0:00000000\t\t0\n"
#: /proc/net/igmp6: what every IPv6 interface keeps (all-nodes), up or down.
IGMP6_KERNEL = ("1    lo              ff020000000000000000000000000001     1 0000000C 0\n"
                "1    lo              ff010000000000000000000000000001     1 00000008 0\n"
                "4    enp5s0f1        ff020000000000000000000000000001     1 00000004 0\n"
                "4    enp5s0f1        ff010000000000000000000000000001     1 00000008 0\n"
                # (forwarding on: all-routers; keep_addr_on_down: its address's solicited-node)
                "4    enp5s0f1        ff020000000000000000000000000002     1 00000004 0\n"
                "4    enp5s0f1        ff0200000000000000000001ff000001     1 00000004 0\n")
RECEIVER = ("udp UNCONN 0 0 0.0.0.0:5004 0.0.0.0:* users:((\"st2110-rx\",pid=4242,fd=7))\n"
            "udp UNCONN 0 0 *:5006 *:* users:((\"st2110-rx\",pid=4242,fd=8))\n")


def _network(lab, ss: str = "") -> None:
    lab.network(links=[fakesysfs.link(1, "lo", up=True),
                       fakesysfs.link(2, "enp2s0", "0000:02:00.0", up=True),
                       fakesysfs.link(3, "enp5s0f0", "0000:05:00.0"),
                       fakesysfs.link(4, "enp5s0f1", "0000:05:00.1"),
                       fakesysfs.link(5, "eno1", "0000:00:1f.6")],
                addrs={"lo": ["127.0.0.1/8"], "enp2s0": ["192.168.1.10/24"]},
                ss="tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:*\n" + ss)


def _uses(lab) -> list[str]:
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    return uses


def test_control_1_the_down_port_with_the_kernels_own_groups_is_idle(lab):
    _network(lab)
    lab.proc("net/igmp", IGMP_HEAD + IGMP_LO)
    lab.proc("net/igmp6", IGMP6_KERNEL)
    uses, evidence = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert uses == [] and "down" in evidence, uses


def test_1a_an_ipv4_group_joined_on_the_down_port_keeps_it(lab):
    """The ST 2110 receiver's red leg: 239.1.1.1 joined on enp5s0f1 (by index, no address
    on the port), its socket on 0.0.0.0:5004; the operator set the port down for a switch
    maintenance."""
    _network(lab, RECEIVER)
    lab.proc("net/igmp", IGMP_HEAD + IGMP_LO +
             "4\tenp5s0f1  :     1      V3\n\t\t\t\t010101EF     1 0:00000000\t\t0\n")
    lab.proc("net/igmp6", IGMP6_KERNEL)
    uses = _uses(lab)
    assert any("239.1.1.1" in u or "multicast" in u.lower() for u in uses), uses


def test_1b_an_ipv6_group_joined_on_the_down_port_keeps_it(lab):
    """The same receiver on IPv6 (ff15::1 on enp5s0f1, its socket on *:5006)."""
    _network(lab, RECEIVER)
    lab.proc("net/igmp", IGMP_HEAD + IGMP_LO)
    lab.proc("net/igmp6", IGMP6_KERNEL +
             "4    enp5s0f1        ff150000000000000000000000000001     1 00000004 0\n")
    uses = _uses(lab)
    assert any("ff15::1" in u or "multicast" in u.lower() for u in uses), uses


def test_1c_the_function_is_refused_with_the_group_named(lab):
    """Section 1a judged as the binder judges 05:00.1 (HostUsage)."""
    from harness.host.safety import HostUsage
    _network(lab, RECEIVER)
    lab.proc("net/igmp", IGMP_HEAD + IGMP_LO +
             "4\tenp5s0f1  :     1      V3\n\t\t\t\t010101EF     1 0:00000000\t\t0\n")
    uses = HostUsage.read(lab.root).verdict("0000:05:00.1").uses
    assert any("enp5s0f1" in u for u in uses), uses


def test_control_1c_the_same_function_with_no_group_is_taken(lab):
    from harness.host.safety import HostUsage
    _network(lab, RECEIVER)
    lab.proc("net/igmp", IGMP_HEAD + IGMP_LO)
    lab.proc("net/igmp6", IGMP6_KERNEL)
    assert HostUsage.read(lab.root).verdict("0000:05:00.1").uses == ()
