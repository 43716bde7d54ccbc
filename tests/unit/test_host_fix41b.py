"""Fix of read 41b (tests/unit/test_host_idle_review41b.py): what its tests do not cover.

A qdisc someone configured is a use by its handle alone, with no filter (shaping: ``tbf``,
``netem``) and on a child of the root; the kernel's own (handle ``0:``: ``mq`` and its
``pfifo_fast`` children, ``noqueue``) are none, and take no filter; a default root that takes
filters (``fq_codel`` as ``net.core.default_qdisc``) is read for them. An nftables match by
index in a map or a concatenation is named too; a named set that cannot be read leaves every
port unproven; ``iifname`` is no use. Facts checked on this host's 6.18 kernel, iproute2 6.1
and nft 1.0.6 in a namespace of its own; a fake sysfs/proc tree plays the host, the tools
their fake output files."""

from __future__ import annotations

import json

from harness.host.network import NetView, Netdev
from harness.host.sysfs import Sysfs

from . import fakesysfs
from .test_host_idle_review41b import _ADDRS, _LINKS, _TCP, _U32, PORT

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

#: ``tc -j qdisc show`` of a multi-queue port the kernel set up (mq, pfifo_fast children).
_MQ = [{"kind": "mq", "handle": "0:", "dev": "enp5s0f1", "root": True, "options": {}}] + [
    {"kind": "pfifo_fast", "handle": "0:", "dev": "enp5s0f1", "parent": f":{n}",
     "options": {"bands": 3, "multiqueue": False}} for n in range(1, 5)]


def _uses(lab, qdiscs: list | None = None, **files: object):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    if qdiscs is not None:
        lab.file("ip/tc-qdisc.json", json.dumps(qdiscs))
    for name, value in files.items():
        lab.file(f"ip/{name.replace('_', '-')}.json", json.dumps(value))
    view = NetView.read(Sysfs(lab.root))
    return view.use_of(PORT), view.problems


def test_the_kernels_own_qdiscs_are_no_use(lab):
    (uses, evidence), problems = _uses(lab, _MQ)
    assert uses == [] and "down" in evidence and not problems, (uses, problems)


def test_shaping_alone_is_a_use(lab):
    """``tc qdisc add dev enp5s0f1 root tbf rate 1mbit ...`` (no handle given: 8002:)."""
    (uses, _), problems = _uses(lab, [{"kind": "tbf", "handle": "8002:", "dev": "enp5s0f1",
                                       "root": True, "options": {"rate": 125000}}])
    assert any("tbf qdisc 8002:" in u and "tc qdisc del dev enp5s0f1 root" in u
               for u in uses), (uses, problems)


def test_a_configured_child_of_the_default_mq_is_a_use(lab):
    (uses, _), problems = _uses(lab, _MQ[:1] + [{"kind": "netem", "handle": "8001:",
                                                 "dev": "enp5s0f1", "parent": ":2"}])
    assert any("netem qdisc 8001: (parent :2)" in u for u in uses), (uses, problems)


def test_a_root_qdiscs_filters_and_mirred_source_are_named(lab):
    """htb 1: with the u32 filter whose mirred mirrors to enp2s0: the mirror's target is told
    it is taken from enp5s0f1's root."""
    lab.sys.joinpath("module", "act_mirred").mkdir(parents=True, exist_ok=True)
    acts = [a for f in _U32 for a in f.get("options", {}).get("actions", [])]
    (uses, _), _ = _uses(lab, [{"kind": "htb", "handle": "1:", "dev": "enp5s0f1",
                                "root": True}], tc_filter_enp5s0f1_1=_U32,
                         tc_mirred=[{"total acts": 1}, {"actions": acts}])
    assert any("htb qdisc 1: (root)" in u and "u32" in u for u in uses), uses
    view = NetView.read(Sysfs(lab.root))
    uplink, _ = view.use_of(Netdev("", "enp2s0"))
    assert any("mirred" in u and "enp5s0f1 parent 1:" in u for u in uplink), uplink


def test_filters_on_a_default_fq_codel_root_are_a_use(lab):
    (uses, _), problems = _uses(lab, [{"kind": "fq_codel", "handle": "0:", "dev": "enp5s0f1",
                                       "root": True}], tc_filter_enp5s0f1_root=_U32)
    assert any("default fq_codel" in u and "u32" in u for u in uses), (uses, problems)


def test_a_default_fq_codel_root_with_no_filter_is_no_use(lab):
    (uses, evidence), problems = _uses(lab, [{"kind": "fq_codel", "handle": "0:",
                                              "dev": "enp5s0f1", "root": True}],
                                       tc_filter_enp5s0f1_root=[])
    assert uses == [] and "down" in evidence and not problems, (uses, problems)


def test_a_qdisc_listed_with_no_device_leaves_the_port_unproven(lab):
    (uses, _), problems = _uses(lab, [{"kind": "htb", "handle": "1:", "root": True}])
    assert any("no device" in p for p in problems) and uses, (uses, problems)


# -- nftables --------------------------------------------------------------------------------


def _ruleset(lab, exprs: list, sets: list = ()) -> None:
    """``nft -j -t list ruleset``: inet filter input with one rule of each of ``exprs``,
    and ``sets`` (their JSON, as ``-t`` lists them); ``nf_tables`` loaded."""
    lab.sys.joinpath("module", "nf_tables").mkdir(parents=True, exist_ok=True)
    items = [{"table": {"family": "inet", "name": "filter", "handle": 1}}]
    items += [{k: {"family": "inet", "table": "filter", **s}} for k, s in sets]
    items += [{"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1,
                         "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}}]
    items += [{"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": n,
                        "expr": e}} for n, e in enumerate(exprs, start=10)]
    lab.file("ip/nft-ruleset.json", json.dumps({"nftables": items}))


_IIF = {"meta": {"key": "iif"}}


def test_an_iif_vmap_and_a_concatenation_are_named(lab):
    """``iif vmap { "enp5s0f1" : drop }`` and ``iif . ip saddr { "enp5s0f1" . 10.0.0.2 }``,
    as nft 1.0.6 printed them here."""
    _ruleset(lab, [[{"vmap": {"key": _IIF, "data": {"set": [["enp5s0f1", {"drop": None}]]}}}],
                   [{"match": {"op": "==", "left": {"concat": [_IIF, {"payload": {
                       "protocol": "ip", "field": "saddr"}}]},
                       "right": {"set": [{"concat": ["enp5s0f1", "10.0.0.2"]}]}}},
                    {"drop": None}]])
    (uses, _), problems = _uses(lab)
    assert len([u for u in uses if "(`iif`)" in u and "inet filter input" in u]) == 2, \
        (uses, problems)


def test_a_named_map_of_indexes_is_read(lab):
    """``map vm { type iface_index : verdict }`` and ``iif vmap @vm``: read with ``nft -j
    list map inet filter vm``."""
    _ruleset(lab, [[{"vmap": {"key": _IIF, "data": "@vm"}}]],
             [("map", {"name": "vm", "type": "iface_index", "map": "verdict"})])
    lab.file("ip/nft-map-inet-filter-vm.json", json.dumps({"nftables": [{"map": {
        "family": "inet", "name": "vm", "table": "filter", "type": "iface_index",
        "map": "verdict", "elem": [["enp5s0f1", {"drop": None}]]}}]}))
    (uses, _), problems = _uses(lab)
    assert any("(`iif`)" in u for u in uses), (uses, problems)


def test_a_named_set_that_cannot_be_read_leaves_every_port_unproven(lab):
    _ruleset(lab, [[{"match": {"op": "==", "left": _IIF, "right": "@dut_ports"}},
                    {"drop": None}]],
             [("set", {"name": "dut_ports", "type": "iface_index"})])
    (uses, _), problems = _uses(lab)
    assert any("nft-set-inet-filter-dut_ports" in p and "install nftables" in p
               for p in problems) and uses, (uses, problems)


def test_an_ifname_set_or_another_ports_index_is_no_use(lab):
    """``iifname @names`` (type ifname: not read) and ``oif "enp2s0"``."""
    _ruleset(lab, [[{"match": {"op": "==", "left": {"meta": {"key": "iifname"}},
                               "right": "@names"}}, {"drop": None}],
                   [{"match": {"op": "!=", "left": {"meta": {"key": "oif"}},
                               "right": "enp2s0"}}, {"accept": None}]],
             [("set", {"name": "names", "type": "ifname"})])
    (uses, evidence), problems = _uses(lab)
    assert uses == [] and "down" in evidence and not problems, (uses, problems)
