"""Fix of read 38b: the edges of the new reads (MPLS label table, /proc/net VIF and ptype
tables, sockets on a port's own address) beyond the reviewer's tests: another namespace, a
read that fails, ECMP MPLS nexthops, a listener on the address."""

from __future__ import annotations

import json

from harness.host import network
from harness.host.network import NetView, Netdev
from harness.host.sysfs import Sysfs

from . import fakesysfs

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PORT = Netdev("", "enp5s0f1")
HEADER = "Type Device      Function\n"


def _blue(lab, **kw) -> None:
    lab.network("blue", links=[fakesysfs.link(1, "lo", up=True), fakesysfs.link(7, "veth7")],
                **kw)


def test_mpls_ecmp_nexthops_in_another_namespace_are_routes_of_each(lab):
    lab.proc("sys/net/mpls/platform_labels", "1048575\n")
    lab.file("ip/mpls.json", "[]")
    _blue(lab)
    lab.file("ip/netns/blue/mpls.json", json.dumps(
        [{"dst": "300", "nexthops": [{"dev": "veth7"}, {"dev": "lo"}]}]))
    view = NetView.read(Sysfs(lab.root))
    assert view.namespaces["blue"].routes["veth7"] == ["mpls label 300"]
    assert view.use_of(PORT)[0] == []


def test_an_mpls_table_that_cannot_be_read_leaves_the_namespace_unproven(lab):
    lab.proc("sys/net/mpls/platform_labels", "1048575\n")  # (and no ip/mpls.json)
    uses, evidence = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert uses == ["enp5s0f1: its namespace cannot be read"] and evidence == ""


def test_no_mpls_router_no_label_table_read(lab, monkeypatch):
    def run(fs, argv, fake, *a, **k):
        assert "mpls" not in argv, argv
        return real(fs, argv, fake, *a, **k)
    real = network._run
    monkeypatch.setattr(network, "_run", run)
    assert NetView.read(Sysfs(lab.root)).use_of(PORT)[0] == []


def test_a_handler_bound_in_another_namespace_is_read_there(lab):
    lab.proc("net/ptype", HEADER + "0800          ip_rcv\n")
    _blue(lab)
    lab.file("ip/netns/blue/ptype.txt", HEADER + "88ca veth7    tipc_l2_rcv_msg [tipc]\n")
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(Netdev("blue", "veth7"))
    assert uses == ["veth7 (netns blue) has the protocol handler tipc_l2_rcv_msg [tipc] "
                    "(type 88ca) bound to it"]


def test_a_vif_table_another_namespace_cannot_show_is_a_problem(lab):
    lab.proc("net/ip_mr_vif", "Interface      BytesIn  PktsIn  BytesOut PktsOut Flags\n")
    _blue(lab)  # (no ip/netns/blue/ip_mr_vif.txt: `cat` failed there)
    view = NetView.read(Sysfs(lab.root))
    assert any("ip_mr_vif in network namespace blue" in p for p in view.problems), \
        view.problems


def test_a_listener_on_the_down_ports_address_keeps_it(lab):
    lab.network(links=[fakesysfs.link(1, "lo", up=True),
                       fakesysfs.link(4, "enp5s0f1", "0000:05:00.1")],
                addrs={"enp5s0f1": ["10.0.5.1/24"]},
                ss="tcp LISTEN 0 128 10.0.5.1:8080 0.0.0.0:*\n"
                   "tcp ESTAB 0 0 [::ffff:10.0.5.1]:22 [::ffff:10.0.5.50]:50100\n")
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert uses == ["enp5s0f1 has a socket listening on its address (tcp LISTEN 0 128 "
                    "10.0.5.1:8080 0.0.0.0:*)",
                    "enp5s0f1 has the connection [::ffff:10.0.5.1]:22 [::ffff:10.0.5.50]:50100 "
                    "from its address"]
