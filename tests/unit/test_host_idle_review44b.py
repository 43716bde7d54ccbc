"""Issue 31, read 44b (the network side: what the kernel keeps on a down port, the reads of
reads 39b-43b: nftables, tc, MPTCP's and MPLS's ``_ip_list``), on main at f8b05cf. What it
found, one section below each:

1. An SRv6 ``End.DX2`` route (``seg6local``) that sends into the port. An SRv6 provider edge
   on Linux terminates an L2VPN by decapsulating the Ethernet frame and sending it out of the
   attachment circuit, a port named by ``oif``: ``ip -6 route add fc00:0:1::d2/128 encap
   seg6local action End.DX2 oif enp5s0f1 dev enp2s0`` (the iproute2 man page's and the Linux
   SRv6 tutorials' L2VPN; FRR's zebra installs the same ``seg6local`` action). The route's
   own ``dev`` is another port (the core-facing one, or ``lo``), so it is filed under that
   one (:func:`harness.host.network._read_namespace` reads a route's ``dev`` and its
   nexthops' ``dev`` only) and is not flushed when the attachment port is set down. The
   kernel keeps the port as a bare ifindex (``seg6_local.c``: ``parse_nla_oif`` stores
   ``slwt->oif = nla_get_u32(...)``, no reference, no netdev notifier;
   ``input_action_end_dx2`` looks it up per packet with ``dev_get_by_index_rcu`` and drops
   when it is gone or down), so while the port is down the L2VPN is paused, and after the
   unbind the port comes back with a new ifindex and every frame of the pseudowire is
   dropped, for good, until the route is installed again; nothing says so. ``ip -j -6 route
   show table all`` names the port: ``print_encap_seg6local`` prints ``oif`` through
   ``ll_index_to_name`` (``if7`` once the index is gone), at the route's top level in
   iproute2 up to at least 6.1 (``"encap": "seg6local", "action": "End.DX2", "oif":
   "enp5s0f1"``: Debian 12's), inside an ``encap`` object in later ones (``lwt_print_encap``
   now opens one: ``"encap": {"encap_type": "seg6local", ...}``); both are tested. This host's kernel 6.18 has no ``seg6local`` lwtunnel ("lwt
   encapsulation type not supported"), so the JSON below is from iproute2's source
   (``ip/iproute_lwtunnel.c``), not from a run here. Shape: an SRv6 lab host (a Linux PE
   in an SRv6 L2VPN testbed) whose customer-facing port is set down between campaigns; the
   same kind of use as read 38b's MPLS routes through a down port (kept, holding the port,
   lost at the unbind). Safe: a route's ``encap`` that names a port (``oif`` of a
   ``seg6local``; the same holds for ``encap xfrm ... link_dev X``, iproute2's ``link_dev``
   in that object) is a route of that port too, filed under it (or its index spelt
   ``ifN``: unproven).

2. A VXLAN forwarding entry that sends out of the port (``bridge fdb append 00:00:00:00:00:00
   dev vxlan42 dst 239.1.1.1 via enp5s0f1``: ``man bridge``'s ``via DEVICE``, "the outgoing
   interface for the VXLAN device driver to reach the remote VXLAN tunnel endpoint"; the
   all-zeros entry floods broadcast, unknown unicast and multicast to a multicast group,
   or to a remote VTEP's IPv6 link-local address, out of a chosen underlay port). The VXLAN
   device itself names no lower device (no ``dev``: ``info_data`` has no ``link``), so it
   is no upper device of the port, and the entry is a ``remote_ifindex`` in its
   ``vxlan_rdst``, which nothing clears: checked on this host (kernel 6.18, iproute2 6.1, a
   namespace of its own, veth ``d6``): ``bridge -j fdb show dev vx0`` prints ``"viaIf":
   "d6"`` with ``d6`` set down, and ``"viaIf": "if13"`` after ``d6`` is deleted. After the
   give-back the port has a new index, and the flood to that group (ARP, ND, DHCP of every
   VM or container on the overlay's far side) goes nowhere, for good, until the entry is
   made again. Shape: a lab's VXLAN overlay over a multicast underlay (or IPv6 link-local
   VTEPs) with several uplinks, its flood entry pinned to one uplink that is set down
   between campaigns. Less common than 1 (most overlays put ``dev`` on the VXLAN, which is
   an upper device, refused already, or use unicast VTEPs with no ``via``). Safe: ``bridge
   -j fdb show`` read in every namespace that has a VXLAN device (only there can an entry
   carry ``via``), an entry's ``viaIf`` naming the port is a use, named with the VXLAN and
   its ``dst``; a ``viaIf`` spelt ``ifN`` cannot be told (a problem); ``bridge`` missing or
   failing, a problem of the namespace.

Each test asserts the safe behaviour and fails on f8b05cf (the port is taken as idle: "down,
no route in any table, no upper device, no socket bound to it"); the controls show the same
route sending into another port, and an ``End.DT6`` route (into a table, no port), leaving
the down port idle. A fake sysfs/proc tree plays the host (:mod:`.fakesysfs`'s lab host);
no guest is booted.

Looked at and not reported (each already refused, held, or not a real shape): an IPv4
address on the down port (its ``local`` route in table ``local`` stays through the down,
checked here with a veth in a namespace of its own: the harness files it under the port, so
a down port with an IPv4 address is refused already); a route on another port with ``src``
the down port's address (same: refused by the local route); ``tc -j actions ls action
mirred`` past 32 actions (iproute2 6.1 reads every part of the dump: 42 of 42 listed here);
named ``typeof iif`` sets and verdict maps (``nft -j -t`` prints ``"type": "iface_index"``
for them, and ``nft -j list set`` their elements by name); nexthop objects, neighbours, proxy
entries and offloaded xfrm states (flushed at the down); fib rules (``iif``/``oif`` by name,
resolved again at register); netdev chains with a wildcard device (6.16+, name-based hooks
that come back with the port: not a loss); CAN raw sockets and AF_XDP (judged by read 37b).
``ip addrlabel add prefix P dev X label N`` also keeps a bare ifindex past the unregister
(checked here: ``dev if11`` after the delete), but a per-interface RFC 6724 label is not a
shape a lab host has: not reported.
"""

from __future__ import annotations

import json

import pytest

from harness.host import network
from harness.host.network import NetView, Netdev
from harness.host.safety import HostUsage
from harness.host.sysfs import Sysfs

from . import fakesysfs
from .test_host_idle_review39b import _LINKS

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PORT = Netdev("", "enp5s0f1")

_ADDRS = {"lo": ["127.0.0.1/8"], "enp2s0": ["192.168.1.10/24", "2001:db8:1::10/64"]}
_TCP = "tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:*\n"

# -- 1. an SRv6 End.DX2 route into the port -----------------------------------------------------


def _seg6local(action: str, oif: "str | None", dev: str = "enp2s0",
               nested: bool = False) -> dict:
    """``ip -6 route add fc00:0:1::d2/128 encap seg6local action ACTION [oif OIF] dev DEV``
    as ``ip -j -6 route show table all`` prints it (iproute2's ``lwt_print_encap`` and
    ``print_encap_seg6local``): flat, as 6.1 prints it, or ``nested`` in an ``encap``
    object, as later ones do."""
    encap = {"action": action}
    if oif is not None:
        encap["oif"] = oif
    else:
        encap["table"] = "100"
    route = {"dst": "fc00:0:1::d2"}
    route.update({"encap": {"encap_type": "seg6local", **encap}} if nested else
                 {"encap": "seg6local", **encap})
    return {**route, "dev": dev, "metric": 1024, "flags": [], "pref": "medium"}


#: The core-facing port's own routes, up: what an SRv6 PE has beside its SIDs.
_CORE = [{"dst": "2001:db8:1::/64", "dev": "enp2s0", "protocol": "kernel", "metric": 256,
          "flags": [], "pref": "medium"}]


@pytest.mark.parametrize("nested", [False, True], ids=["iproute2-6.1", "iproute2-later"])
def test_1a_an_srv6_end_dx2_route_into_the_down_port_keeps_it(lab, nested):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP,
                routes6=_CORE + [_seg6local("End.DX2", "enp5s0f1", nested=nested)])
    view = NetView.read(Sysfs(lab.root))
    uses, _ = view.use_of(PORT)
    assert any("End.DX2" in u or "seg6local" in u or "fc00:0:1::d2" in u for u in uses) or \
        view.problems, (uses, view.problems)


def test_1b_the_function_is_refused_with_its_srv6_route_named(lab):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP,
                routes6=_CORE + [_seg6local("End.DX2", "enp5s0f1", dev="lo")])
    uses = HostUsage.read(lab.root).verdict("0000:05:00.1").uses
    assert any("enp5s0f1" in u and ("fc00:0:1::d2" in u or "seg6local" in u or
                                    "End.DX2" in u) for u in uses), uses


@pytest.mark.parametrize("route", [_seg6local("End.DX2", "enp2s0", dev="lo"),
                                   _seg6local("End.DX2", "enp2s0", nested=True),
                                   _seg6local("End.DT6", None)],
                         ids=["dx2-into-another-port", "dx2-into-another-port-nested",
                              "dt6-into-a-table"])
def test_control_1_an_srv6_route_elsewhere_leaves_it_idle(lab, route):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP, routes6=_CORE + [route])
    view = NetView.read(Sysfs(lab.root))
    uses, evidence = view.use_of(PORT)
    assert uses == [] and "down" in evidence, (uses, view.problems)


# -- 2. a VXLAN flood entry out of the port -----------------------------------------------------


#: ``ip link add vxlan42 type vxlan id 42 dstport 4789 local 192.168.1.10 nolearning``: no
#: ``dev``, so no lower device in ``info_data`` (as ``ip -j -d link`` prints it here).
_VXLAN = fakesysfs.link(6, "vxlan42", up=True, linkinfo={
    "info_kind": "vxlan", "info_data": {"id": 42, "local": "192.168.1.10", "port": 4789,
                                        "learning": False, "ttl": 0}})


def _with_fdb(lab, monkeypatch, via: str) -> None:
    """``bridge -j fdb show`` (with or without ``dev vxlan42``) prints the overlay's flood
    entry ``via`` a port, as iproute2 6.1 prints it here; the other fakes as they are."""
    real = network._run
    entries = [{"mac": "00:00:00:00:00:00", "ifname": "vxlan42", "dst": "239.1.1.1",
                "viaIf": via, "flags": ["self"], "state": "permanent"}]

    def run(fs, argv, fake, *a, **k):
        words = [str(w) for w in argv]
        if any(w.endswith("bridge") for w in words) and "fdb" in words:
            return json.dumps(entries)
        return real(fs, argv, fake, *a, **k)

    monkeypatch.setattr(network, "_run", run)


def test_2a_a_vxlan_flood_entry_via_the_down_port_keeps_it(lab, monkeypatch):
    lab.network(links=_LINKS + [_VXLAN], addrs=_ADDRS, ss=_TCP)
    _with_fdb(lab, monkeypatch, "enp5s0f1")
    view = NetView.read(Sysfs(lab.root))
    uses, _ = view.use_of(PORT)
    assert any("vxlan42" in u or "fdb" in u.lower() or "239.1.1.1" in u for u in uses) or \
        view.problems, (uses, view.problems)


def test_2b_the_function_is_refused_with_its_vxlan_entry_named(lab, monkeypatch):
    lab.network(links=_LINKS + [_VXLAN], addrs=_ADDRS, ss=_TCP)
    _with_fdb(lab, monkeypatch, "enp5s0f1")
    uses = HostUsage.read(lab.root).verdict("0000:05:00.1").uses
    assert any("enp5s0f1" in u and ("vxlan42" in u or "239.1.1.1" in u) for u in uses), uses


def test_control_2_a_flood_entry_via_another_port_leaves_it_idle(lab, monkeypatch):
    lab.network(links=_LINKS + [_VXLAN], addrs=_ADDRS, ss=_TCP)
    _with_fdb(lab, monkeypatch, "enp2s0")
    view = NetView.read(Sysfs(lab.root))
    uses, evidence = view.use_of(PORT)
    assert uses == [] and "down" in evidence, (uses, view.problems)
