"""Fix of read 43b: the edges of the new reads beyond the reviewer's tests: a ``snat`` map
named by ``@``, a ``fib oif`` compared with an index nft printed (the port already made
again: which port cannot be told), an MPTCP endpoint in another namespace, one that cannot
be read, and a kernel without MPTCP (nothing asked)."""

from __future__ import annotations

import json

from harness.host import network
from harness.host.network import NetView, Netdev
from harness.host.sysfs import Sysfs

from . import fakesysfs
from .test_host_idle_review39b import _LINKS
from .test_host_idle_review41b import _with_ruleset

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PORT = Netdev("", "enp5s0f1")
_TCP = "tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:*\n"


def test_a_snat_map_named_by_at_is_read_for_its_ports(lab, monkeypatch):
    """``snat to oif map @uplinks``: the named map's elements are read as a set's are."""
    lab.network(links=_LINKS, ss=_TCP)
    rule = [{"snat": {"addr": {"map": {"key": {"meta": {"key": "oif"}}, "data": "@uplinks"}}}}]
    _with_ruleset(lab, monkeypatch, [rule], sets={"uplinks": [["enp5s0f1", "192.0.2.1"]]})
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert any("`oif`" in u for u in uses), uses


def test_fib_oif_compared_with_a_number_cannot_be_told(lab, monkeypatch):
    """``fib daddr oif 5``: the index of a port made again; whose it was cannot be told."""
    lab.network(links=_LINKS, ss=_TCP)
    rule = [{"match": {"op": "==", "left": {"fib": {"result": "oif", "flags": ["daddr"]}},
                       "right": 5}}]
    _with_ruleset(lab, monkeypatch, [rule])
    view = NetView.read(Sysfs(lab.root))
    assert view.use_of(PORT)[0] and any("fib oif" in p for p in view.problems), view.problems


def test_an_mptcp_endpoint_in_another_namespace_is_read_there(lab):
    lab.proc("sys/net/mptcp/enabled", "1")
    lab.file("ip/mptcp.json", "[]")
    lab.network("blue", links=[fakesysfs.link(1, "lo", up=True), fakesysfs.link(7, "veth7")])
    lab.file("ip/netns/blue/mptcp.json", json.dumps(
        [{"address": "10.0.7.1", "id": 3, "signal": True, "dev": "veth7"}]))
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(Netdev("blue", "veth7"))
    assert any("MPTCP endpoint 10.0.7.1 (id 3, signal)" in u for u in uses), uses


def test_mptcp_endpoints_that_cannot_be_read_leave_the_namespace_unproven(lab):
    lab.proc("sys/net/mptcp/enabled", "1")  # (and no ip/mptcp.json)
    view = NetView.read(Sysfs(lab.root))
    assert view.use_of(PORT)[0] and any("mptcp" in p for p in view.problems), view.problems


def test_no_mptcp_no_endpoints_asked(lab, monkeypatch):
    def run(fs, argv, fake, *a, **k):
        assert "mptcp" not in argv, argv
        return real(fs, argv, fake, *a, **k)
    real = network._run
    monkeypatch.setattr(network, "_run", run)
    assert NetView.read(Sysfs(lab.root)).use_of(PORT)[0] == []
