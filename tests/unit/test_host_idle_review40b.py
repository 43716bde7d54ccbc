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

2. Read 39b's fix for nftables netdev chains (:func:`harness.host.network._read_nft`) reads
   each chain's ``dev`` from ``nft -j list chains``; the ``nft`` of Debian 12 (nftables
   1.0.6-2+deb12u2: the lab's Debian 12 L1, and this host) prints no ``dev`` at all for a
   base chain, netdev or ``inet`` ingress, of one device or of several: checked here, in a
   network namespace of this host's own, ``table netdev filter { chain ingress { type filter
   hook ingress device "lo" priority 0; } }`` is ``{"chain": {"family": "netdev", "table":
   "filter", "name": "ingress", "handle": 1, "type": "filter", "hook": "ingress", "prio": 0,
   "policy": "accept"}}`` in ``nft -j list chains`` and ``nft -j list ruleset`` alike, while
   ``nft list chains`` prints ``device "lo"``. Why: nft 0.9.3's "src: add multidevice
   support for netdev chain" (Pablo Neira Ayuso, October 2019) made ``chain_print_json``
   print ``dev`` from ``chain->dev_expr``, which only the parser fills; a chain listed from
   the kernel (``netlink_delinearize_chain``) has ``dev_array`` instead, which the text
   printer uses. So, as that code reads, every nft from 0.9.3 to at least 1.0.6 (1.0.6 run
   here) lists no chain device in JSON:
   RHEL 8's and 9's 0.9.x and 1.0.4, Ubuntu 20.04's 0.9.3 and 22.04's 1.0.2, Debian 12's
   1.0.6. Read 39b's own fake prints ``"version":
   "1.0.6"`` with a ``dev`` the real 1.0.6 does not print. So on Debian 12 the fix finds no
   chain on any port, and 39b's shape (a netdev ingress chain on the down port from
   /etc/nftables.conf, released with its rules at the unbind before 6.16: Debian 12's 6.1
   among them) is taken as before. Safe: a netdev-family (or ``inet`` ingress/egress) base
   chain whose JSON names no device is read from ``nft list chains``' text (``device "X"``,
   ``devices = { X, Y }``), or leaves every port unproven, naming it; never "no hook".
3. An nftables ``dup to``/``fwd to`` the down port from a chain on another port (``table
   netdev span { chain c { type filter hook ingress device "enp2s0" priority -100; dup to
   "enp5s0f1" } }``: the nftables wiki's way to mirror a port, the nft counterpart of read
   39b's ``tc mirred`` SPAN, to a capture box or IDS sensor on a spare port; ``fwd to`` as a
   software patch between two ports; ``ip`` family ``dup to 10.0.5.2 device "enp5s0f1"``).
   nft resolves the device name to its ifindex when the rule is loaded (``nft
   --debug=netlink`` on this host: ``[ immediate reg 1 0x00000001 ] [ dup sreg_dev 1 ]`` for
   ``dup to "lo"``), and the rule keeps that number. While the port is down the copies are
   dropped at it, and flow again when it is back; the unbind unregisters it, the give-back
   registers it with a new ifindex, and the rule then duplicates to nothing, for good, until
   the ruleset is loaded again: the SPAN is gone and nothing says so. The rule sits in a
   chain on enp2s0, so the chains and flowtables the harness reads do not name the port.
   Safe: a rule of ``nft -j list ruleset`` whose ``dup`` or ``fwd`` names the port (its
   ``dev``, or its ``addr`` in the netdev family, where ``dup to "X"`` prints so) is a use,
   as a ``tc mirred`` target is.

Each test asserts the safe behaviour and fails on a12d4d4 (each was also run against a
throw-away fix, not committed: /proc/net/igmp and igmp6 read for groups other than the
kernel's own; ``nft list chains``' text where the JSON names no device; ``nft -j list
ruleset``'s ``dup``/``fwd``; under which they pass); the controls show the down port
with only the kernel's own groups, Debian's default ruleset (an inet filter table on no
device) and an nftables SPAN to another port taken as it stands. A fake sysfs/proc tree plays the host
(:mod:`.fakesysfs`'s lab host), ``ss`` and ``nft`` by monkeypatched output (as nft 1.0.6
prints it where said); no guest is booted.

Looked at, no test (each held, or too weak to report): read 39b's tc fixes against this
host's iproute2 6.1 in a namespace of its own (``tc -j qdisc show``, ``tc -j actions ls
action mirred``, ``tc -j filter show``: the same JSON as 39b's fakes, ``to_dev`` and
``total acts`` included); ``storage._loaded``/``_built_in`` (``modules.builtin``'s
``.ko`` lines, ``/proc/config.gz``, "there" on the host when neither reads); the SCTP tables'
columns (``/proc/net/sctp/eps``, ``assocs``); ``binding._of_another_boot`` (every entry is
stamped with the boot id, readable on any host; only entries of older versions fall back to
``time`` against ``btime``, which a clock step moves: an old version's entry of this boot,
written before an NTP step forward, then reads "another boot": too narrow); flowtables under
nft 1.0.6 (not tried: ``nf_flow_table`` is not built into this host's kernel, and the harness
must load no module). Kernel state on a down port that the unbind would lose and that turned
out to be no finding: static neighbours and proxy entries (flushed at the down), IPsec
offloaded states (``xfrm_dev_down`` at the down), PPPoE sessions (flushed at the down),
``ip rule iif/oif`` (by name, kept at the unregister), a tunnel with only ``local`` on the
port's address (no binding to the port), a multicast sender's ``IP_MULTICAST_IF`` (shown
nowhere: no proof to ask for).
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


# -- 2. and 3. nftables: what Debian 12's nft prints, and a dup or fwd to the port --------------

import json  # noqa: E402

from harness.host import network  # noqa: E402
from harness.host.safety import HostUsage  # noqa: E402

#: What ``nft`` 1.0.6 (Debian 12's nftables 1.0.6-2+deb12u2, this host's) prints, run in a
#: network namespace of this host with a netdev chain on ``lo``: ``nft -j list chains`` names
#: no device (no ``dev`` key), ``nft list chains`` does.
NFT_106_CHAIN = {"chain": {"family": "netdev", "table": "filter", "name": "ingress", "handle": 1,
                           "type": "filter", "hook": "ingress", "prio": 0, "policy": "accept"}}
NFT_106_TEXT = ('table netdev filter {\n\tchain ingress {\n\t\ttype filter hook ingress device '
                '"enp5s0f1" priority filter; policy accept;\n\t}\n}\n')
#: Debian's default /etc/nftables.conf: an inet filter table, hooked on no device.
DEBIAN_DEFAULT = [{"chain": {"family": "inet", "table": "filter", "name": name, "handle": n,
                             "type": "filter", "hook": name, "prio": 0, "policy": "accept"}}
                  for n, name in enumerate(("input", "forward", "output"), start=1)]
DEBIAN_DEFAULT_TEXT = "".join(
    f"table inet filter {{\n\tchain {name} {{\n\t\ttype filter hook {name} priority filter; "
    "policy accept;\n\t}\n}\n" for name in ("input", "forward", "output"))


def _with_nft(lab, monkeypatch, items: list, text: str = "", version: str = "1.0.6") -> None:
    """``nft -j list chains|flowtables|ruleset`` prints ``items`` as nft ``version`` does (a
    rule is listed by ``list ruleset`` only), ``nft list ...`` (no ``-j``) prints ``text``;
    ``nf_tables`` is loaded."""
    (lab.sys / "module/nf_tables").mkdir(exist_ok=True)
    real = network._run

    def run(fs, argv, fake, *a, **k):
        words = [str(w) for w in argv]
        if "nft" not in {w.rsplit("/", 1)[-1] for w in words}:
            return real(fs, argv, fake, *a, **k)
        if "-j" not in words and "--json" not in words:
            return text
        kinds = {"chains": {"chain"}, "flowtables": {"flowtable"},
                 "ruleset": {"table", "chain", "flowtable", "rule"}}
        wanted = set().union(*(kinds[w] for w in words if w in kinds)) or kinds["ruleset"]
        return json.dumps({"nftables": [{"metainfo": {"version": version,
                                                      "json_schema_version": 1}},
                                        *[i for i in items if next(iter(i)) in wanted]]})

    monkeypatch.setattr(network, "_run", run)


def test_control_2_debians_default_ruleset_leaves_the_port_idle(lab, monkeypatch):
    _network(lab)
    _with_nft(lab, monkeypatch, DEBIAN_DEFAULT, DEBIAN_DEFAULT_TEXT)
    uses, evidence = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert uses == [] and "down" in evidence, uses


def test_2a_a_netdev_chain_on_the_down_port_as_debian_12s_nft_lists_it_keeps_it(lab, monkeypatch):
    """Read 39b's section 5 on the nft that Debian 12 ships: the chain's JSON has no
    ``dev``, so the port it hooks is never named; the port must not read idle (named from
    ``nft list chains``' ``device "enp5s0f1"``, or the chain's device unproven)."""
    _network(lab)
    _with_nft(lab, monkeypatch, DEBIAN_DEFAULT + [NFT_106_CHAIN],
              DEBIAN_DEFAULT_TEXT + NFT_106_TEXT)
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert uses, "the netdev chain on enp5s0f1 is not seen: the port reads idle"


def test_2b_the_function_is_refused_under_debian_12s_nft(lab, monkeypatch):
    _network(lab)
    _with_nft(lab, monkeypatch, DEBIAN_DEFAULT + [NFT_106_CHAIN],
              DEBIAN_DEFAULT_TEXT + NFT_106_TEXT)
    assert HostUsage.read(lab.root).verdict("0000:05:00.1").uses != ()


#: A software SPAN in nftables on enp2s0 (a netdev ingress chain there, listed with its ``dev``
#: as a newer nft prints it, so that section 2 plays no part), and the rule that sends to the
#: down port, as nft prints each (1.0.6 checked on this host: ``dup to "lo"`` is
#: ``{"dup": {"addr": "lo"}}``, ``fwd to "lo"`` is ``{"fwd": {"dev": "lo"}}``; ``nft
#: --debug=netlink`` shows each as ``immediate reg 1 0x00000001``, the port's ifindex).
SPAN_CHAIN = {"chain": {"family": "netdev", "table": "span", "name": "c", "handle": 1,
                        "type": "filter", "hook": "ingress", "prio": -100, "dev": "enp2s0",
                        "policy": "accept"}}


def _rule(expr: dict, family: str = "netdev") -> dict:
    return {"rule": {"family": family, "table": "span", "chain": "c", "handle": 2,
                     "expr": [expr]}}


def test_control_3_a_span_to_another_port_leaves_the_port_idle(lab, monkeypatch):
    _network(lab)
    _with_nft(lab, monkeypatch, [SPAN_CHAIN, _rule({"dup": {"addr": "eno1"}})],
              version="1.1.1")
    uses, evidence = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert uses == [] and "down" in evidence, uses


import pytest  # noqa: E402


@pytest.mark.parametrize("expr, family", [
    ({"dup": {"addr": "enp5s0f1"}}, "netdev"),                 # dup to "enp5s0f1"
    ({"fwd": {"dev": "enp5s0f1"}}, "netdev"),                  # fwd to "enp5s0f1"
    ({"dup": {"addr": "10.0.5.2", "dev": "enp5s0f1"}}, "ip"),  # dup to 10.0.5.2 device ...
], ids=["dup", "fwd", "ip-dup-device"])
def test_3_an_nftables_dup_or_fwd_to_the_down_port_keeps_it(lab, monkeypatch, expr, family):
    _network(lab)
    _with_nft(lab, monkeypatch, [SPAN_CHAIN, _rule(expr, family)], version="1.1.1")
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert any("dup" in u or "fwd" in u or "mirror" in u.lower() or "forward" in u.lower()
               for u in uses), uses
