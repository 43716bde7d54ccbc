"""Fix of read 44b: the edges of the new reads beyond the reviewer's tests: an ``xfrm``
encap's ``link_dev`` (flat and nested), a VXLAN's entries that cannot be read (``bridge``
missing, output that is no list), an entry ``via`` an index of another namespace
(``viaIfIndex``: which port cannot be told), and one ``via`` an index `bridge` spelt
``ifN`` that is the port's."""

from __future__ import annotations

import json

import pytest

from harness.host.network import NetView, Netdev
from harness.host.sysfs import Sysfs

from . import fakesysfs
from .test_host_idle_review39b import _LINKS
from .test_host_idle_review44b import _ADDRS, _CORE, _TCP, _VXLAN, _with_fdb

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PORT = Netdev("", "enp5s0f1")


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_an_xfrm_encap_into_the_port_is_a_route_of_it(lab, nested):
    """``ip route add 10.9.0.0/16 encap xfrm if_id 7 link_dev enp5s0f1 dev enp2s0``."""
    encap = {"if_id": 7, "link_dev": "enp5s0f1"}
    route = {"dst": "10.9.0.0/16", "dev": "enp2s0", "flags": [],
             **({"encap": {"encap_type": "xfrm", **encap}} if nested else
                {"encap": "xfrm", **encap})}
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP, routes=[route])
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert any("xfrm 10.9.0.0/16" in u for u in uses), uses


def test_a_route_with_no_encap_port_is_filed_under_its_dev_only(lab):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP, routes6=_CORE)
    view = NetView.read(Sysfs(lab.root))
    assert set(view.namespaces[""].routes) == {"enp2s0"}, view.namespaces[""].routes


def test_a_vxlan_whose_entries_cannot_be_read_leaves_every_port_unproven(lab):
    lab.network(links=_LINKS + [_VXLAN], addrs=_ADDRS, ss=_TCP)
    (lab.root / "ip/bridge-fdb-vxlan42.json").unlink()  # (`bridge` missing or failing)
    view = NetView.read(Sysfs(lab.root))
    assert any("vxlan42" in p and "`bridge`" in p for p in view.problems), view.problems
    assert view.use_of(PORT)[0]


def test_entries_that_are_no_list_leave_every_port_unproven(lab):
    lab.network(links=_LINKS + [_VXLAN], addrs=_ADDRS, ss=_TCP)
    lab.file("ip/bridge-fdb-vxlan42.json", json.dumps({"mac": "00:00:00:00:00:00"}))
    view = NetView.read(Sysfs(lab.root))
    assert any("not a list" in p for p in view.problems), view.problems


def test_an_entry_via_an_index_of_another_namespace_cannot_be_told(lab):
    """A VXLAN moved from the namespace it was made in keeps that one's underlay: `bridge`
    prints the index, ``viaIfIndex``, which names no port of this one."""
    lab.network(links=_LINKS + [_VXLAN], addrs=_ADDRS, ss=_TCP)
    lab.file("ip/bridge-fdb-vxlan42.json", json.dumps([
        {"mac": "00:00:00:00:00:00", "dst": "239.1.1.1", "viaIfIndex": 4, "flags": ["self"]}]))
    view = NetView.read(Sysfs(lab.root))
    assert any("another namespace" in p for p in view.problems), view.problems


def test_an_entry_via_the_ports_index_spelt_ifn_is_a_use_of_it(lab, monkeypatch):
    lab.network(links=_LINKS + [_VXLAN], addrs=_ADDRS, ss=_TCP)
    _with_fdb(lab, monkeypatch, "if4")  # (enp5s0f1 is index 4)
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert any("vxlan42" in u for u in uses), uses


def test_a_namespace_with_no_vxlan_asks_bridge_nothing(lab, monkeypatch):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_fdb(lab, monkeypatch, "enp5s0f1")  # (what it would say, if asked)
    view = NetView.read(Sysfs(lab.root))
    assert view.use_of(PORT)[0] == [] and not view.problems, view.problems
