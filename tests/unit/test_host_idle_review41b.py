"""Issue 31, read 41b (the network side's tc hooks; the leases and the journal), on main at
5d76b2e. What it found, one section below each:

1. tc filters on the port's root (egress) qdisc. Read 39b's fix
   (:func:`harness.host.network._read_tc_qdiscs`, docs/vfio.md "no tc or nftables hook on
   it") counts a port's tc filters only under an ``ingress`` or ``clsact`` qdisc, and reads
   even those only where ``sch_ingress`` is loaded. Filters hang just as well on the port's
   root qdisc, a classful one (``htb``, ``prio``, ``mqprio``/``taprio``, ``hfsc``):
   ``tc qdisc add dev enp5s0f1 root handle 1: htb default 10`` then ``tc filter add dev
   enp5s0f1 parent 1: bpf obj cls.o classid 1:10`` (tc-bpf(8)'s egress classifier, a lab's
   shaping/marking program), or ``... parent 1: protocol ip u32 match ... action mirred
   egress mirror dev enp2s0`` (classic classification with an action). Checked on this
   host's 6.18 kernel in a network namespace of its own (veth pair, the port down):
   ``tc -j qdisc show dev d0`` prints ``[{"kind":"htb","handle":"1:","root":true,...}]``, the
   u32 filter and its mirred action are listed by ``tc -j filter show dev d0 parent 1:``,
   and the port is down (``qdisc noop state DOWN`` in ``ip link``: the configured qdisc is
   kept, ``dev_deactivate`` only swaps in noop while down). The harness reads none of it:
   the qdisc kind is not ``ingress``/``clsact``, and on a host where ``sch_ingress`` is not
   loaded (nobody used ``clsact``: the Debian 12 L1, ``sch_ingress`` a module) it asks ``tc``
   nothing at all; ``bpftool`` (where installed) is read for ``tcx/`` entries only, and a
   kernel before 6.6 (Debian 12's 6.1) is not asked for BPF programs at all. Unregistering
   the port (the unbind) destroys the qdisc with its filters (``dev_shutdown``), and the
   port given back has the default qdisc: the BPF classifier (or the shaping with it) is
   gone for good, and nothing says so. Shape: a TSN or QoS lab (``taprio``/``mqprio`` with
   ``flower``/``bpf`` filters mapping traffic classes on an i210/i225/E810 port, set down
   between test cases), a lab's egress marking program (``htb`` + ``cls_bpf``), classic
   ``tc`` shaping scripts (wondershaper-style ``htb`` + ``u32``). The same kind of use as an
   ``ingress``/``clsact`` filter (read 39b, 2). Safe: the port's filters under every qdisc
   (``tc -j filter show dev X parent H:`` for each qdisc ``tc -j qdisc show dev X`` lists,
   or ``tc -j filter show dev X`` for the root) are read wherever a classifier module
   (``cls_bpf``, ``cls_u32``, ``cls_flower``, ``cls_matchall``...) is loaded, not only where
   ``sch_ingress`` is; one is a use, named.

2. An nftables rule that matches the port by its index (``meta iif``/``oif``, ``iif
   "enp5s0f1" ...``), in any chain. Read 40b's fix (:func:`harness.host.network._read_nft`,
   :func:`_nft_sends`) counts a rule that *sends* to the port (``dup``/``fwd``) because nft
   resolves the name to the port's ifindex when the rule is loaded and the port given back
   has a new one; a rule that *matches* ``iif``/``oif`` is resolved the same way, and is read
   by nothing. Checked on this host (nft 1.0.6, kernel 6.18, a namespace of its own):
   ``table inet filter { chain input { type filter hook input priority 0; policy accept;
   iif "d1" tcp dport 22 drop } }`` lists in ``nft -j -t list ruleset`` as ``{"match": {"op":
   "==", "left": {"meta": {"key": "iif"}}, "right": "d1"}}`` (a set of ports: ``"right":
   {"set": ["d1", "d0"]}``); after the veth is deleted and made again under the same name,
   ``nft list ruleset`` prints ``iif 2 tcp dport 22 drop``, the old number, and the rule
   matches nothing. So the unbind and the give-back silently switch the rule off, for good,
   until the ruleset is loaded again. Shape: the hand-written ``/etc/nftables.conf`` of a lab
   host that keeps an untrusted network (the DUT or customer-equipment network on a spare
   port, set down between campaigns) away from its services: ``iif "enp5s0f1" drop`` in
   ``input`` (the nftables wiki's own examples use ``iif`` for interfaces that exist at
   load, ``iifname`` for those that come and go), or ``oif``/``iif`` in ``forward`` to keep
   it from being routed. After the harness has taken and given back the port, the drop is
   gone: the port, brought up again for the next campaign, reaches the host's sshd and
   everything else. ``iifname``/``oifname`` match by name and survive (control 2). Safe: a
   rule of ``nft -j list ruleset`` with a ``meta`` ``iif`` or ``oif`` match naming the port
   (a string or a set of them) is a use, named with its chain, as a ``dup``/``fwd`` to it is;
   a match against a named set of type ``iface_index`` (``iif @dut_ports``: ``-t`` lists no
   elements, so ``nft -j list set FAMILY TABLE NAME`` for each such set, elements only, a few
   ports) names the ports in it; one that cannot be read leaves every NIC unproven (2d).

Each test asserts the safe behaviour and fails on 5d76b2e (the port is taken as idle: "down,
no route in any table, no upper device, no socket bound to it"); the controls show the same
filter on another port, and an ``iifname`` rule (by name) with an ``iif`` on another port,
leaving the down port idle. A fake sysfs/proc tree plays the host (:mod:`.fakesysfs`'s lab
host), ``tc``, ``bpftool`` and ``nft`` by monkeypatched output, as this host's iproute2 6.1
and nft 1.0.6 print it; no guest is booted.

Looked at and not reported (each already refused, or not a real shape): the multicast
parser against this host's /proc/net/igmp; nft 1.0.6's text listing of a multi-device
netdev chain; the journal's VF leases (``_restore_sriov``, ``_live_users_of_vfs``,
``_vfs_not_idle``, ``enable_vfs``'s reuse, the session's ``give_back`` with ``own_pids``) in
the two-runs-one-PF orders: a count another live run relies on stays, and the last run's end
(or `restore`) puts it back. ``release PF --force`` selects every lease with an entry on the
PF, another live run's VF lease among them (its reliance entry carries that VF group's lease
id) and gives that VF back too: ``--force`` is the operator's override, not reported. A root
qdisc someone configured with no filter (``netem``, ``taprio``, ``tbf``), also deleted at the
unbind: a question for the lead (is shaping alone a use?), no test. AF_XDP sockets (judged
by read 37b).
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

_ADDRS = {"lo": ["127.0.0.1/8"], "enp2s0": ["192.168.1.10/24"]}
_TCP = "tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:*\n"

# -- 1. tc filters on the port's root (egress) qdisc --------------------------------------------

#: ``tc -j qdisc show dev d0`` on this host (iproute2 6.1, kernel 6.18), the port down.
_HTB = [{"kind": "htb", "handle": "1:", "root": True, "refcnt": 3,
         "options": {"r2q": 10, "default": "0x10", "direct_packets_stat": 0,
                     "direct_qlen": 1000}}]
#: ``tc -j filter show dev d0 parent 1:`` on this host for ``u32 match ip dst 10.9.9.9/32
#: action mirred egress mirror dev lo`` (the target renamed to the host's uplink).
_U32 = [{"protocol": "ip", "pref": 49152, "kind": "u32", "chain": 0},
        {"protocol": "ip", "pref": 49152, "kind": "u32", "chain": 0,
         "options": {"fh": "800:", "ht_divisor": 1}},
        {"protocol": "ip", "pref": 49152, "kind": "u32", "chain": 0,
         "options": {"fh": "800::800", "order": 2048, "key_ht": "800", "bkt": "0",
                     "not_in_hw": True, "match": {"value": "a090909", "mask": "ffffffff",
                                                  "offmask": "", "off": 16},
                     "actions": [{"order": 1, "kind": "mirred", "mirred_action": "mirror",
                                  "direction": "egress", "to_dev": "enp2s0",
                                  "control_action": {"type": "pipe"}, "index": 1, "ref": 1,
                                  "bind": 1}]}}]
#: ``tc filter add dev enp5s0f1 parent 1: bpf obj cls.o classid 1:10`` (tc-bpf(8)).
_BPF = [{"protocol": "all", "pref": 49152, "kind": "bpf", "chain": 0},
        {"protocol": "all", "pref": 49152, "kind": "bpf", "chain": 0,
         "options": {"handle": "0x1", "flowid": "1:10", "bpf_name": "cls.o:[classifier]",
                     "not_in_hw": True, "prog": {"id": 37, "name": "egress_mark",
                                                 "tag": "9f2c1d0b7a6e5d4c", "jited": 1}}}]


def _with_root_qdisc(lab, monkeypatch, dev: str, filters: list, *, modules=("sch_htb",
                     "cls_bpf", "cls_u32", "act_mirred"), release="6.1.0-28-amd64") -> None:
    """``tc`` as it prints on a host where ``dev`` has an htb root qdisc with ``filters`` under
    it (and nothing at ingress: ``sch_ingress`` not loaded, as on a Debian 12 host where
    nobody used clsact); ``modules`` loaded, the kernel ``release``."""
    for module in modules:
        (lab.sys / "module" / module).mkdir(parents=True, exist_ok=True)
    lab.proc("sys/kernel/osrelease", release + "\n")
    real = network._run

    def run(fs, argv, fake, *a, **k):
        words = [str(w) for w in argv]
        names = {w.rsplit("/", 1)[-1] for w in words}
        if "tc" in names:
            on = next((w for w in words if w in {li["ifname"] for li in _LINKS}), None)
            if "qdisc" in words:  # (no ``dev``: every device's, each entry naming its own)
                return json.dumps(_HTB if on == dev else [{**q, "dev": dev} for q in _HTB]
                                  if on is None else [])
            if "filter" in words:
                hooked = on == dev and ("parent" in words or not
                                        {"ingress", "egress"} & set(words))
                return json.dumps(filters if hooked else [])
            if "actions" in words or "action" in words:
                acts = [x for f in filters for x in f.get("options", {}).get("actions", [])]
                return json.dumps([{"total acts": len(acts)}, {"actions": acts}])
            if "class" in words:  # (`tc class show dev X` prints text: the htb has no class)
                return ""
            return "[]"
        if "bpftool" in names:  # (where installed: the filter under htb, not a tcx link)
            if "version" in words:  # (Ubuntu 24.04's, from linux-tools 6.8: lists tcx)
                return json.dumps({"version": "7.4.0", "libbpf_version": "1.4"})
            tc = [{"devname": dev, "ifindex": 4, "kind": "htb", "name": "egress_mark",
                   "prog_id": 37}] if any(f.get("kind") == "bpf" for f in filters) else []
            return json.dumps([{"xdp": [], "tc": tc, "flow_dissector": [], "netfilter": []}])
        return real(fs, argv, fake, *a, **k)

    monkeypatch.setattr(network, "_run", run)


_DEBIAN_12 = {}
_WITH_SCH_INGRESS = {"release": "6.8.0-49-generic",
                     "modules": ("sch_htb", "cls_bpf", "sch_ingress", "act_mirred")}


@pytest.mark.parametrize("filters, host, named", [
    # 1a: Debian 12 (6.1, no tcx), sch_ingress not loaded: an htb root with a cls_bpf filter
    (_BPF, _DEBIAN_12, ("bpf", "egress_mark", "htb")),
    # 1b: the u32 filter (with its mirred action) as this host's tc printed it, under htb
    (_U32, _DEBIAN_12, ("u32", "htb", "filter")),
    # 1c: the same host with sch_ingress loaded (something used clsact on another port), 6.8
    (_BPF, _WITH_SCH_INGRESS, ("bpf", "egress_mark", "htb"))],
    ids=["1a-bpf", "1b-u32", "1c-bpf-with-sch_ingress"])
def test_1_a_filter_on_the_down_ports_root_qdisc_keeps_it(lab, monkeypatch, filters, host,
                                                          named):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_root_qdisc(lab, monkeypatch, "enp5s0f1", filters, **host)
    view = NetView.read(Sysfs(lab.root))
    uses, _ = view.use_of(PORT)
    assert any(word in u.lower() for u in uses for word in named), (uses, view.problems)


def test_1d_the_function_is_refused_with_its_root_filter_named(lab, monkeypatch):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_root_qdisc(lab, monkeypatch, "enp5s0f1", _BPF)
    uses = HostUsage.read(lab.root).verdict("0000:05:00.1").uses
    assert any("enp5s0f1" in u and ("bpf" in u.lower() or "htb" in u or "tc" in u)
               for u in uses), uses


def test_control_1_a_root_filter_on_another_port_leaves_it_idle(lab, monkeypatch):
    """The classifier on enp2s0 (the uplink) only: enp5s0f1 down, nothing on it."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_root_qdisc(lab, monkeypatch, "enp2s0", _BPF)
    view = NetView.read(Sysfs(lab.root))
    uses, evidence = view.use_of(PORT)
    assert uses == [] and "down" in evidence, (uses, view.problems)


# -- 2. an nftables rule that matches the port by its index -------------------------------------


def _with_ruleset(lab, monkeypatch, rules: list, sets: dict | None = None) -> None:
    """``nft -j -t list ruleset`` prints Debian's inet filter table with ``rules`` in its
    input chain, as nft 1.0.6 prints them, and ``sets`` (name -> elements, of type
    ``iface_index``: their elements only without ``-t``, as nft prints them); ``nf_tables``
    loaded."""
    (lab.sys / "module" / "nf_tables").mkdir(parents=True, exist_ok=True)
    items = [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5",
                           "json_schema_version": 1}},
             {"table": {"family": "inet", "name": "filter", "handle": 1}},
             {"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1,
                        "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}}]
    items += [{"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": n,
                        "expr": expr}} for n, expr in enumerate(rules, start=2)]
    real = network._run

    def run(fs, argv, fake, *a, **k):
        words = [str(w) for w in argv]
        if "nft" in {w.rsplit("/", 1)[-1] for w in words}:
            listed = items + [{"set": {"family": "inet", "name": name, "table": "filter",
                                       "type": "iface_index", "handle": 20 + n,
                                       **({} if "-t" in words or "--terse" in words
                                          else {"elem": elem})}}
                              for n, (name, elem) in enumerate((sets or {}).items())]
            return json.dumps({"nftables": listed})
        return real(fs, argv, fake, *a, **k)

    monkeypatch.setattr(network, "_run", run)


def _meta(key: str, right) -> list:
    """``KEY RIGHT tcp dport 22 drop`` as nft 1.0.6 prints it in JSON."""
    return [{"match": {"op": "==", "left": {"meta": {"key": key}}, "right": right}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                       "right": 22}},
            {"drop": None}]


def test_2a_an_iif_drop_rule_on_the_down_port_keeps_it(lab, monkeypatch):
    """``iif "enp5s0f1" tcp dport 22 drop`` in inet filter input."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_ruleset(lab, monkeypatch, [_meta("iif", "enp5s0f1")])
    view = NetView.read(Sysfs(lab.root))
    uses, _ = view.use_of(PORT)
    assert any("iif" in u or "nftables" in u for u in uses), (uses, view.problems)


def test_2b_a_port_in_an_iif_set_keeps_it(lab, monkeypatch):
    """``iif { "enp5s0f0", "enp5s0f1" } tcp dport 22 drop``: both DUT-network ports."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_ruleset(lab, monkeypatch, [_meta("iif", {"set": ["enp5s0f1", "enp5s0f0"]})])
    view = NetView.read(Sysfs(lab.root))
    uses, _ = view.use_of(PORT)
    assert any("iif" in u or "nftables" in u for u in uses), (uses, view.problems)


def test_2c_the_function_is_refused_with_its_iif_rule_named(lab, monkeypatch):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_ruleset(lab, monkeypatch, [_meta("oif", "enp5s0f1")])
    uses = HostUsage.read(lab.root).verdict("0000:05:00.1").uses
    assert any("enp5s0f1" in u and ("oif" in u or "nftables" in u) for u in uses), uses


def test_2d_a_port_in_a_named_iface_index_set_keeps_it(lab, monkeypatch):
    """``set dut_ports { type iface_index; elements = { "enp5s0f1" } }`` and ``iif @dut_ports
    drop``: ``-t`` lists the set with no elements (checked with nft 1.0.6 here), so the port
    is named nowhere in what the harness reads. Safe: the set's elements are read, or the
    port is left unproven."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_ruleset(lab, monkeypatch, [[{"match": {"op": "==", "left": {"meta": {"key": "iif"}},
                                                 "right": "@dut_ports"}}, {"drop": None}]],
                  sets={"dut_ports": ["enp5s0f1"]})
    view = NetView.read(Sysfs(lab.root))
    uses, _ = view.use_of(PORT)
    assert uses, (uses, view.problems)  # (named, or its namespace unproven)


def test_control_2_an_iifname_rule_leaves_it_idle(lab, monkeypatch):
    """``iifname "enp5s0f1" ... drop`` matches by name: it holds after the give-back too."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_ruleset(lab, monkeypatch, [_meta("iifname", "enp5s0f1"), _meta("iif", "enp2s0")])
    view = NetView.read(Sysfs(lab.root))
    uses, evidence = view.use_of(PORT)
    assert uses == [] and "down" in evidence, (uses, view.problems)
