"""Issue 31, read 45b (the network side: read 44b's fixes, ``_read_vxlan_fdb`` and
``_encap_ports``; what else the kernel keeps on a down port; the shared paths), on main at
96a888f. What it found, one section below:

1. A VXLAN *multicast database* entry sent out of the port. Read 44b's fix
   (:func:`harness.host.network._read_vxlan_fdb`) reads a VXLAN's forwarding entries
   (``bridge -j fdb show dev X``) for ``via``; but a VXLAN has a second table whose remotes
   carry the very same ``via``: the MDB (Linux 6.4 and later, "vxlan: Add MDB data path
   support"; iproute2 6.4 and later, ``bridge mdb add dev vxlan42 port vxlan42 grp
   239.1.1.1 permanent dst 10.9.9.9 via enp5s0f1``; ``man bridge``'s ``via DEV``: "device
   name of the outgoing interface for the VXLAN device to reach the remote VXLAN tunnel
   endpoint", the same words as for ``bridge fdb``). An entry of it replicates the
   overlay's traffic to that group to the remote VTEP (or the underlay group) ``dst``, out
   of the port; the catch-all entries ``grp 0.0.0.0`` and ``grp ::`` take over the flood of
   every unregistered IPv4/IPv6 multicast group from the all-zeros FDB entry (``man
   bridge``). The kernel keeps the port as a bare ifindex in the entry's ``vxlan_rdst``
   (``remote_ifindex``), as for the FDB. Checked on this host (kernel 6.18, a namespace of
   its own, veth ``d0`` index 3, a VXLAN ``vx0`` with no ``dev``; the entry added through
   rtnetlink, ``RTM_NEWMDB`` with ``MDBE_ATTR_DST`` and ``MDBE_ATTR_IFINDEX``, since this
   host's iproute2 6.1 has no ``dst``/``via`` for ``bridge mdb``): the dump
   (``RTM_GETMDB``) gives the entry ``grp 239.1.1.1 dst 10.9.9.9`` with
   ``MDBA_MDB_EATTR_IFINDEX`` 3 with ``d0`` up, after ``ip link set d0 down``, after ``ip
   link del d0``, and after ``d0`` is made again (now index 6): still 3. So after the unbind
   and the give-back, that group's traffic (or, for a catch-all entry, every unregistered
   group's) to that VTEP goes to an index that is gone, for good, until the entry is made
   again; nothing says so, and the harness takes the port as "down, no route in any table,
   no upper device, no socket bound to it". It reads no MDB at all. Shape: a lab overlay
   that maps overlay multicast groups to VTEPs or underlay groups (the series' purpose:
   EVPN's selective multicast, per-group ingress replication; or the catch-all entries
   standing in for the FDB flood entry) over a chosen uplink, the same overlay as read
   44b's finding 2, an uplink set down between campaigns. Safe: for each VXLAN of a
   namespace (only a VXLAN's MDB entries can carry ``via``), ``bridge -j mdb show dev X``
   is read as the FDB is; an entry whose ``via`` is the port (``ifN``: the link of that
   index) is a use, named with the VXLAN, its group and ``dst``. A ``bridge`` older than
   6.4 prints a VXLAN's remote entries with no ``dst`` and no ``via`` (as this host's 6.1
   printed the entry above: ``{"index": 4, "dev": "vx0", "port": "vx0", "grp":
   "239.1.1.1", "state": "permanent", "flags": []}``): such an entry cannot be told (a
   problem of the namespace, the way out being iproute2 6.4 or later); a VXLAN with no MDB
   entry proves nothing is sent via the port that way, whatever the version.

2. A tc filter on *another* port that matches the port as the packet's input device: ``u32
   ... indev enp5s0f1``, ``flower indev enp5s0f1`` (tc-flower(8): "Match on incoming
   interface name. Obviously this makes sense only for forwarded flows"), ``fw ... indev``,
   ``route fromif``. The harness reads the filters of the port's own qdiscs, and of another
   port only their ``mirred`` targets (:func:`harness.host.network._note_mirreds`); an
   ``indev`` is not read. The kernel resolves the name once, at the filter's creation, and
   keeps the bare ifindex (``tcf_change_indev``: ``dev->ifindex``, no reference, no
   notifier; u32 ``n->ifindex``, flower ``key->meta.ingress_ifindex``); the dump names it
   only while a device of that index exists (``u32_dump``, ``fl_dump_key``: ``if (dev &&
   nla_put_string(...INDEV, dev->name))``). Checked on this host (kernel 6.18, iproute2 6.1,
   a namespace of its own; u32 is built in here, flower is not): ``tc filter add dev d2
   parent 1: protocol ip prio 2 u32 match u32 0 0 indev d0 classid 1:10`` under an ``htb``
   root on ``d2``; ``tc -j filter show dev d2 parent 1:`` prints ``"input_dev": "d0"`` with
   ``d0`` set down; after ``ip link del d0`` the filter is still there and prints no input
   device at all, nor after ``d0`` is made again (index 6, then 10). So after the unbind
   and the give-back, the filter matches nothing from the port (``skb->skb_iif`` is the new
   index) and its traffic falls to the default class, for good, and the listing no longer
   even shows what the filter was for; nothing says so. Shape: a lab router or WAN
   emulator host that shapes or delays forwarded traffic by the port it came in on (an
   ``htb`` on the uplink with a ``netem`` class per test segment, the segment's traffic
   picked with ``u32``/``flower`` ``indev``), a segment's port set down between campaigns.
   The same kind of use as read 41b's nftables ``iif`` match (an index resolved at load).
   The uplink is often no port of a device at all (a ``bond0`` of two ports, a bridge):
   :func:`_read_tc_qdiscs` lists only links with ``parentdev``, so its filters are not even
   listed (test 2c). Safe: the filters on every qdisc that holds them, of every link of the
   namespace (and their classes), are read as the port's own are; a filter whose ``input_dev``/``indev``
   (u32, flower, fw) or ``fromif`` (route) is the port (``ifN``: the link of that index) is
   a use, named with the port and qdisc it is on; one that cannot be listed is a problem.

3. An IPsec (xfrm) policy restricted to the port: its selector's ``dev`` (``ip xfrm policy
   add src 10.0.5.0/24 dst 10.20.0.0/16 dev enp5s0f1 dir out tmpl ... proto esp mode
   tunnel``; strongSwan's ``children.<child>.interface = enp5s0f1``, "Optional interface
   name to restrict IPsec policies" (swanctl.conf), which its kernel-netlink plugin installs
   as ``sel.ifindex = interface ? if_nametoindex(interface) : 0``, for a CHILD_SA's
   policies, its trap policies and its shunts, e.g. the DROP shunt of the strongSwan docs'
   ``swanctl --list-pols`` example, ``shunts/drop-eth0-default``; VyOS's ``set vpn ipsec
   interface``). The kernel keeps the bare index in the selector (``xfrm_selector.ifindex``,
   matched against the flow's ``oif`` in ``xfrm_selector_match``); a down flushes only
   *offloaded* states and policies (``xfrm_dev_down``), and nothing clears a selector's
   index. Checked on this host (kernel 6.18, iproute2 6.1, a namespace of its own): ``ip
   xfrm policy show`` prints ``src 10.4.4.0/24 dst 10.9.9.0/24 dev d4`` with ``d4`` set
   down, ``dev if14`` after ``ip link del d4``, and still ``dev if14`` once ``d4`` is made
   again (index 16). So after the unbind and the give-back the policy applies to nothing
   on the port: traffic to the protected subnet leaves the port given back *in the clear*
   (the ESP policy no longer matches it), and a DROP shunt meant to keep the port from
   sending anything unprotected (a kill switch) drops nothing, for good, until the policies
   are installed again; nothing says so. The harness reads no xfrm state at all (the
   port, down with no address, is "idle"; charon's IKE sockets are on the wildcard). Shape:
   a lab host that is also an IPsec endpoint or gateway for a test network (strongSwan with
   ``interface`` set per child, or a kill-switch shunt on the uplink to a test segment, or
   policies added by hand with ``dev``), the port set down between campaigns; trap policies
   and shunts are installed at configuration load, whether the peer is reachable or not.
   Safe: where the kernel has ``xfrm_user`` (``/sys/module/xfrm_user``: loaded or built
   in; asking elsewhere would load it), ``ip xfrm policy show`` is read in every namespace
   (it prints no JSON: each policy's first line is its selector, ``... dev X``); a policy
   whose selector's ``dev`` is the port (``ifN``: the link of that index) is a use, named
   with its selector, direction and action; one that cannot be read is a problem.

The tests assert the safe behaviour and fail on 96a888f; the controls show the same entry
sent via another port, and one with no ``via``, the same filter matching another port's
input, and policies with no ``dev`` or another port's, leaving the down port idle. A fake
sysfs/proc tree plays the host (:mod:`.fakesysfs`'s lab host), ``bridge`` by
monkeypatched output as iproute2's ``bridge/mdb.c`` prints it (``print_mdb_entry``: keys
``index``, ``dev``, ``port``, ``grp``, ``state``, ``flags``, ``dst``, ``via``); no guest is
booted.

Looked at, no test (each held, is refused already, or not a real shape):

* read 44b's fixes: ``_encap_ports``/``_encap`` (the ``oif`` of any ``seg6local`` action,
  End.X's included; flat and nested ``encap``), ``_vxlan_entry`` (``viaIfIndex`` for a
  VXLAN moved from the namespace of its underlay: a problem), ``_link_named``.
* a PCI CAN card (PEAK PCAN-PCIe on ``peak_pci``, class 0x0c09) whose port a ``cangw``
  rule routes to or from (the CAN gateway keeps both ifindexes and drops the rule at the
  unregister): refused already, "the harness has no role for that class"; a USB CAN
  adapter's interface driver (``gs_usb``, ``peak_usb``) is not in ``USB_DRIVERS_JUDGED``:
  refused.
* an XDP ``devmap`` entry on another port's program redirecting into the down port (the
  devmap holds it, and drops it at the unregister): the drivers of this harness's NICs
  (ixgbe, i40e) take ``ndo_xdp_xmit`` only with an XDP program of their own attached, which
  ``ip -d link`` shows (refused); not shown to be a lab shape otherwise.
* tunnels with ``dev`` (GRE, IPIP, ip6tnl: ``link`` at the top level, an upper device, as
  read 37b found; this host's kernel has no tunnel modules to check it again);
  nexthop objects and neighbours (flushed at the down); ``TEE``'s ``oif`` and ipset's
  ``hash:net,iface`` (by name).
* the shared paths: :func:`harness.core.paths.private_dir`, ``_make_below``,
  ``check_ancestors`` (links hop by hop), ``write_atomic``; the journal (``Journal.locked``,
  ``read``, ``write``: its folder made private first, ``O_NOFOLLOW``), ``_host_leases``;
  :func:`harness.run.hygiene.sweep_stale`/``sweep_run`` (real folders of ours only; QEMU
  killed only by pid and start time); ``cloud_seeded`` (its folder private before the
  lock file is opened).
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

#: ``ip link add vxlan42 type vxlan id 42 dstport 4789 local 192.168.1.10 nolearning``: no
#: ``dev``, so no lower device in ``info_data`` (as ``ip -j -d link`` prints it here).
_VXLAN = fakesysfs.link(6, "vxlan42", up=True, linkinfo={
    "info_kind": "vxlan", "info_data": {"id": 42, "local": "192.168.1.10", "port": 4789,
                                        "learning": False, "ttl": 0}})


def _entry(via: "str | None", grp: str = "239.1.1.1", new: bool = True) -> dict:
    """One remote entry of the VXLAN's MDB as ``bridge -j mdb show`` prints it: ``new``,
    iproute2 6.4 and later (``dst``, and ``via`` when the entry has an outgoing interface);
    else as 6.1 printed it on this host, with neither."""
    out = {"index": 6, "dev": "vxlan42", "port": "vxlan42", "grp": grp,
           "state": "permanent", "flags": []}
    if new:
        out["dst"] = "10.9.9.9"
        if via is not None:
            out["via"] = via
    return out


def _with_mdb(monkeypatch, entries: list[dict]) -> None:
    """``bridge -j mdb show`` (with or without ``dev vxlan42``) prints ``entries``; the
    VXLAN's FDB has no entry ``via`` a port (``bridge -j fdb show``: []), the other fakes as
    they are."""
    real = network._run

    def run(fs, argv, fake, *a, **k):
        words = [str(w) for w in argv]
        if any(w.endswith("bridge") for w in words) and "mdb" in words:
            return json.dumps([{"mdb": entries, "router": {}}])
        if any(w.endswith("bridge") for w in words) and "fdb" in words:
            return "[]"
        return real(fs, argv, fake, *a, **k)

    monkeypatch.setattr(network, "_run", run)


@pytest.mark.parametrize("grp", ["239.1.1.1", "0.0.0.0"], ids=["group", "catch-all"])
def test_1a_a_vxlan_mdb_entry_via_the_down_port_keeps_it(lab, monkeypatch, grp):
    lab.network(links=_LINKS + [_VXLAN], addrs=_ADDRS, ss=_TCP)
    _with_mdb(monkeypatch, [_entry("enp5s0f1", grp)])
    view = NetView.read(Sysfs(lab.root))
    uses, _ = view.use_of(PORT)
    assert any("vxlan42" in u or "mdb" in u.lower() or "10.9.9.9" in u for u in uses) or \
        view.problems, (uses, view.problems)


def test_1b_the_function_is_refused_with_its_vxlan_mdb_entry_named(lab, monkeypatch):
    lab.network(links=_LINKS + [_VXLAN], addrs=_ADDRS, ss=_TCP)
    _with_mdb(monkeypatch, [_entry("enp5s0f1")])
    uses = HostUsage.read(lab.root).verdict("0000:05:00.1").uses
    assert any("enp5s0f1" in u and ("vxlan42" in u or "239.1.1.1" in u or "10.9.9.9" in u)
               for u in uses), uses


def test_1c_a_vxlan_mdb_entry_an_old_bridge_cannot_show_is_unproven(lab, monkeypatch):
    """iproute2 6.1 (Debian 12's) on a 6.4+ kernel: the remote entry is listed, with no
    ``dst`` and no ``via``: whether it goes via the port cannot be told."""
    lab.network(links=_LINKS + [_VXLAN], addrs=_ADDRS, ss=_TCP)
    _with_mdb(monkeypatch, [_entry(None, new=False)])
    view = NetView.read(Sysfs(lab.root))
    uses, _ = view.use_of(PORT)
    assert uses or view.problems, (uses, view.problems)


@pytest.mark.parametrize("entries", [[_entry("enp2s0")], [_entry(None)], []],
                         ids=["via-another-port", "no-via", "no-entry"])
def test_control_1_an_mdb_entry_elsewhere_leaves_it_idle(lab, monkeypatch, entries):
    lab.network(links=_LINKS + [_VXLAN], addrs=_ADDRS, ss=_TCP)
    _with_mdb(monkeypatch, entries)
    view = NetView.read(Sysfs(lab.root))
    uses, evidence = view.use_of(PORT)
    assert uses == [] and "down" in evidence, (uses, view.problems)


# -- 2. a tc filter on another port that matches the port as its input device ----------------


#: ``tc qdisc add dev enp2s0 root handle 1: htb default 20`` as ``tc -j qdisc show`` prints
#: it here (with ``dev``: a listing of every port), the other ports' default qdiscs beside.
_QDISCS = [{"kind": "htb", "handle": "1:", "dev": "enp2s0", "root": True, "refcnt": 3,
            "options": {"r2q": 10, "default": "0x20", "direct_packets_stat": 1,
                        "direct_qlen": 1000}},
           {"kind": "noqueue", "handle": "0:", "dev": "enp5s0f1", "root": True, "refcnt": 2,
            "options": {}}]


def _u32_indev(indev: str) -> list[dict]:
    """``tc filter add dev enp2s0 parent 1: protocol ip prio 2 u32 match u32 0 0 indev
    INDEV classid 1:10`` as ``tc -j filter show dev enp2s0 parent 1:`` printed it here."""
    return [{"protocol": "ip", "pref": 2, "kind": "u32", "chain": 0},
            {"protocol": "ip", "pref": 2, "kind": "u32", "chain": 0,
             "options": {"fh": "800:", "ht_divisor": 1}},
            {"protocol": "ip", "pref": 2, "kind": "u32", "chain": 0,
             "options": {"fh": "800::800", "order": 2048, "key_ht": "800", "bkt": "0",
                         "flowid": "1:10", "not_in_hw": True,
                         "match": {"value": "0", "mask": "0", "offmask": "", "off": 0},
                         "input_dev": indev}}]


def _flower_indev(indev: str) -> list[dict]:
    """``tc filter add dev enp2s0 parent 1: protocol all prio 1 flower indev INDEV classid
    1:10`` as iproute2's ``tc/f_flower.c`` prints it (``flower_print``: ``"indev"``)."""
    return [{"protocol": "all", "pref": 1, "kind": "flower", "chain": 0},
            {"protocol": "all", "pref": 1, "kind": "flower", "chain": 0,
             "options": {"handle": 1, "classid": "1:10", "indev": indev,
                         "not_in_hw": True}}]


def _shaped(lab, filters: list[dict]) -> None:
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    lab.file("ip/tc-qdisc.json", json.dumps(_QDISCS))
    lab.file("ip/tc-filter-enp2s0-1.json", json.dumps(filters))


@pytest.mark.parametrize("filters", [_u32_indev("enp5s0f1"), _flower_indev("enp5s0f1")],
                         ids=["u32", "flower"])
def test_2a_a_filter_on_the_uplink_matching_the_down_port_as_indev_keeps_it(lab, filters):
    _shaped(lab, filters)
    view = NetView.read(Sysfs(lab.root))
    uses, _ = view.use_of(PORT)
    assert any("enp2s0" in u or "indev" in u or "input" in u for u in uses) or \
        view.problems, (uses, view.problems)


def test_2b_the_function_is_refused_with_the_indev_filter_named(lab):
    _shaped(lab, _u32_indev("enp5s0f1"))
    uses = HostUsage.read(lab.root).verdict("0000:05:00.1").uses
    assert any("enp5s0f1" in u and "enp2s0" in u for u in uses), uses


def test_2c_the_same_filter_on_a_bond_uplink_keeps_it(lab):
    """The uplink is ``bond0`` (``ip link add bond0 type bond``, its slaves elsewhere): a
    virtual link, no ``parentdev``."""
    bond = fakesysfs.link(7, "bond0", up=True, linkinfo={"info_kind": "bond"})
    lab.network(links=_LINKS + [bond], addrs=_ADDRS, ss=_TCP)
    lab.file("ip/tc-qdisc.json", json.dumps([{**_QDISCS[0], "dev": "bond0"}, _QDISCS[1]]))
    lab.file("ip/tc-filter-bond0-1.json", json.dumps(_u32_indev("enp5s0f1")))
    view = NetView.read(Sysfs(lab.root))
    uses, _ = view.use_of(PORT)
    assert any("bond0" in u for u in uses) or view.problems, (uses, view.problems)


@pytest.mark.parametrize("filters", [_u32_indev("eno1"), _flower_indev("eno1")],
                         ids=["u32", "flower"])
def test_control_2_a_filter_matching_another_ports_input_leaves_it_idle(lab, filters):
    _shaped(lab, filters)
    view = NetView.read(Sysfs(lab.root))
    uses, evidence = view.use_of(PORT)
    assert uses == [] and "down" in evidence, (uses, view.problems)


# -- 3. an xfrm policy restricted to the port ------------------------------------------------


def _policy(dev: "str | None", block: bool = False) -> str:
    """One policy as ``ip xfrm policy show`` prints it here (iproute2 6.1: text only, ``-j``
    prints the same): an outbound ESP tunnel policy of strongSwan's, or its DROP shunt;
    ``dev`` the selector's interface (none: not restricted)."""
    on = f" dev {dev}" if dev else ""
    if block:
        return (f"src 0.0.0.0/0 dst 0.0.0.0/0{on} \n"
                "\tdir out action block priority 2000 ptype main \n")
    return (f"src 10.0.5.0/24 dst 10.20.0.0/16{on} \n"
            "\tdir out priority 367231 ptype main \n"
            "\ttmpl src 10.0.5.1 dst 198.51.100.7\n"
            "\t\tproto esp spi 0xc1d2e3f4 reqid 1 mode tunnel\n")


def _with_xfrm(lab, monkeypatch, text: str) -> None:
    """``ip xfrm policy show`` (``ip [-j] xfrm policy [list|show]``, with ``-n``/``nsenter``
    or not) prints ``text``; ``xfrm_user`` is loaded (/sys/module/xfrm_user: a host with
    an xfrm policy has it); the other fakes as they are."""
    (lab.sys / "module/xfrm_user").mkdir(parents=True, exist_ok=True)
    real = network._run

    def run(fs, argv, fake, *a, **k):
        words = [str(w) for w in argv]
        if "xfrm" in words:
            return text
        return real(fs, argv, fake, *a, **k)

    monkeypatch.setattr(network, "_run", run)


@pytest.mark.parametrize("block", [False, True], ids=["esp-policy", "drop-shunt"])
def test_3a_an_xfrm_policy_restricted_to_the_down_port_keeps_it(lab, monkeypatch, block):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_xfrm(lab, monkeypatch, _policy("enp5s0f1", block) + _policy(None))
    view = NetView.read(Sysfs(lab.root))
    uses, _ = view.use_of(PORT)
    assert any("xfrm" in u or "IPsec" in u or "policy" in u for u in uses) or \
        view.problems, (uses, view.problems)


def test_3b_the_function_is_refused_with_its_xfrm_policy_named(lab, monkeypatch):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_xfrm(lab, monkeypatch, _policy("enp5s0f1"))
    uses = HostUsage.read(lab.root).verdict("0000:05:00.1").uses
    assert any("enp5s0f1" in u and ("10.20.0.0/16" in u or "xfrm" in u or "IPsec" in u)
               for u in uses), uses


@pytest.mark.parametrize("dev", [None, "enp2s0"], ids=["no-dev", "another-port"])
def test_control_3_an_xfrm_policy_elsewhere_leaves_it_idle(lab, monkeypatch, dev):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_xfrm(lab, monkeypatch, _policy(dev) + _policy(dev, block=True))
    view = NetView.read(Sysfs(lab.root))
    uses, evidence = view.use_of(PORT)
    assert uses == [] and "down" in evidence, (uses, view.problems)
