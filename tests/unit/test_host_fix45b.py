"""Fix of read 45b: the edges of the new reads beyond the reviewer's tests: a VXLAN's MDB that
cannot be read (``bridge`` failing for it alone); an MDB entry, a tc filter's input device and
an xfrm policy's ``dev`` spelt ``ifN`` for the port's index; a ``route`` classifier's
``fromif``; the filters of another link that cannot be listed, and of its ``clsact`` hooks;
no xfrm read where ``xfrm_user`` is not there (asking would load it), a built-in one read;
xfrm output that is no policy listing. Facts checked on this host's 6.18 kernel, iproute2
6.1, in a namespace of its own (``ip xfrm policy show`` prints ``dev ifN`` once the port is
gone; ``bridge -j mdb show dev vx0`` of a VXLAN with none prints ``[{"mdb": [], "router":
{}}]``); a fake sysfs/proc tree plays the host, the tools their fake output files."""

from __future__ import annotations

import json
import os

import pytest

from harness.host import network
from harness.host.network import NetView, Netdev
from harness.host.sysfs import Sysfs

from . import fakesysfs
from .test_host_idle_review39b import _LINKS
from .test_host_idle_review45b import (_ADDRS, _QDISCS, _TCP, _VXLAN, _entry, _policy,
                                       _u32_indev, _with_mdb, _with_xfrm)

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PORT = Netdev("", "enp5s0f1")


def test_an_mdb_that_cannot_be_read_leaves_the_port_unproven(lab):
    """The FDB reads, the MDB's fake is missing (`bridge mdb` failing)."""
    lab.network(links=_LINKS + [_VXLAN], addrs=_ADDRS, ss=_TCP)
    (lab.root / "ip/bridge-mdb-vxlan42.json").unlink()
    view = NetView.read(Sysfs(lab.root))
    assert any("multicast entries (MDB) of the VXLAN vxlan42" in p for p in view.problems), \
        view.problems


def test_an_mdb_entry_via_the_ports_index_is_its_use(lab, monkeypatch):
    lab.network(links=_LINKS + [_VXLAN], addrs=_ADDRS, ss=_TCP)
    _with_mdb(monkeypatch, [_entry("if4", "::")])
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert any("vxlan42" in u and "group ::" in u and "10.9.9.9" in u for u in uses), uses


def test_an_old_bridge_names_its_way_out(lab, monkeypatch):
    lab.network(links=_LINKS + [_VXLAN], addrs=_ADDRS, ss=_TCP)
    _with_mdb(monkeypatch, [_entry(None, new=False)])
    view = NetView.read(Sysfs(lab.root))
    assert any("iproute2 6.4 or later" in p for p in view.problems), view.problems


def test_a_hosts_own_mdb_entry_needs_no_dst(lab, monkeypatch):
    """An entry whose ``port`` is not the VXLAN (a bridge's port group) has no ``dst``."""
    lab.network(links=_LINKS + [_VXLAN], addrs=_ADDRS, ss=_TCP)
    _with_mdb(monkeypatch, [{**_entry(None, new=False), "port": "enp2s0"}])
    view = NetView.read(Sysfs(lab.root))
    assert not view.problems and view.use_of(PORT)[0] == [], view.problems


def test_an_indev_filter_by_the_ports_index_is_its_use(lab):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    lab.file("ip/tc-qdisc.json", json.dumps(_QDISCS))
    lab.file("ip/tc-filter-enp2s0-1.json", json.dumps(_u32_indev("if4")))
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert any("u32 filter (pref 2) on enp2s0 parent 1:" in u for u in uses), uses


def test_a_route_classifiers_fromif_on_a_clsact_hook_is_a_use(lab):
    """``tc filter add dev enp2s0 egress route fromif enp5s0f1 classid 1:1``, under a
    ``clsact`` of the uplink."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    lab.file("ip/tc-qdisc.json", json.dumps([{"kind": "clsact", "handle": "ffff:",
                                             "dev": "enp2s0", "parent": "ffff:fff1"}]))
    lab.file("ip/tc-filter-enp2s0-ingress.json", "[]")
    lab.file("ip/tc-filter-enp2s0-egress.json", json.dumps([
        {"protocol": "all", "pref": 49152, "kind": "route", "chain": 0,
         "options": {"fh": "0x8001", "flowid": "1:1", "fromif": "enp5s0f1"}}]))
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert any("(fromif) of a tc route filter" in u and "enp2s0 egress" in u
               for u in uses), uses


def test_another_links_filters_that_cannot_be_listed_leave_every_port_unproven(lab):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    lab.file("ip/tc-qdisc.json", json.dumps(_QDISCS))  # (no tc-filter-enp2s0-1.json)
    view = NetView.read(Sysfs(lab.root))
    assert any("tc filters of enp2s0 parent 1:" in p for p in view.problems), \
        view.problems


def test_a_virtual_links_filters_that_cannot_be_listed_leave_every_port_unproven(lab):
    bond = fakesysfs.link(7, "bond0", up=True, linkinfo={"info_kind": "bond"})
    lab.network(links=_LINKS + [bond], addrs=_ADDRS, ss=_TCP)
    lab.file("ip/tc-qdisc.json", json.dumps([{**_QDISCS[0], "dev": "bond0"}]))
    view = NetView.read(Sysfs(lab.root))
    assert any("tc filters of bond0's htb qdisc 1:" in p for p in view.problems), \
        view.problems


def test_another_links_default_filterless_qdisc_is_not_asked(lab):
    """``noqueue`` on a bond, ``mq`` on the uplink: no filter to list, no fake needed."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    lab.file("ip/tc-qdisc.json", json.dumps([
        {"kind": "mq", "handle": "0:", "dev": "enp2s0", "root": True},
        {"kind": "noqueue", "handle": "0:", "dev": "lo", "root": True}]))
    view = NetView.read(Sysfs(lab.root))
    assert not view.problems and view.use_of(PORT)[0] == [], view.problems


def test_no_xfrm_user_no_xfrm_read(lab, monkeypatch):
    """No /sys/module/xfrm_user, none built in: ``ip xfrm`` would load it; not asked."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    asked = []
    real = network._run

    def run(fs, argv, fake, *a, **k):
        if "xfrm" in [str(w) for w in argv]:
            asked.append(argv)
        return real(fs, argv, fake, *a, **k)

    monkeypatch.setattr(network, "_run", run)
    view = NetView.read(Sysfs(lab.root))
    assert asked == [] and not view.problems, (asked, view.problems)


def test_a_built_in_xfrm_user_is_read(lab):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    lab.file(f"lib/modules/{os.uname().release}/modules.builtin",
             "kernel/net/xfrm/xfrm_user.ko\n")
    lab.file("ip/xfrm-policy.txt", _policy("if4", block=True))
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert any("src 0.0.0.0/0 dst 0.0.0.0/0 dev if4 dir out action block" in u
               for u in uses), uses


@pytest.mark.parametrize("text", ["Error: something else\n", "\tdir out priority 0\n"],
                         ids=["no-selector", "indented-first"])
def test_xfrm_output_that_is_no_listing_leaves_every_port_unproven(lab, monkeypatch, text):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_xfrm(lab, monkeypatch, text)
    view = NetView.read(Sysfs(lab.root))
    assert any("IPsec policies" in p for p in view.problems), view.problems


def test_xfrm_missing_names_its_way_out(lab):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    (lab.sys / "module/xfrm_user").mkdir(parents=True, exist_ok=True)  # (no fake: `ip` fails)
    view = NetView.read(Sysfs(lab.root))
    assert any("IPsec policies" in p and "install iproute2" in p for p in view.problems), \
        view.problems
