"""Fix of read 40b (tests/unit/test_host_idle_review40b.py): what its tests do not cover.

Multicast: a group the kernel prints under a name of 10 characters or more (run into its
colon) is read, and a /proc/net/igmp that cannot be parsed leaves the port unproven.
nftables: a flowtable whose JSON names no device is read from ``nft list flowtables``' text;
a chain whose device neither the JSON nor the text names, or a ``fwd`` to a device a map
picks, leaves every port unproven; where the JSON names every device, no text is asked
for (one command per namespace). A fake sysfs/proc tree plays the host; ``nft`` by
monkeypatched output, as nft 1.0.6 prints it."""

from __future__ import annotations

from harness.host import network
from harness.host.network import NetView
from harness.host.sysfs import Sysfs

from . import fakesysfs
from .test_host_idle_review40b import (IGMP_HEAD, IGMP_LO, NFT_106_CHAIN, PORT, SPAN_CHAIN,
                                       _network, _rule, _with_nft)

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures


def _read(lab):
    view = NetView.read(Sysfs(lab.root))
    return view.use_of(PORT), view.problems


def test_a_group_under_a_long_interface_name_is_read():
    text = IGMP_HEAD + "4\tenp5s0f1np1:     1      V3\n\t\t\t\t010101EF     1 0:00000000\t\t0\n"
    assert network._igmp_groups(text) == [("enp5s0f1np1", "239.1.1.1")]


def test_an_igmp_table_that_cannot_be_parsed_leaves_the_port_unproven(lab):
    _network(lab)
    lab.proc("net/igmp", IGMP_HEAD + "\t\t\t\tnot-hex     1 0:00000000\t\t0\n")
    (uses, _), problems = _read(lab)
    assert uses and any("/proc/net/igmp" in p for p in problems), (uses, problems)


def test_control_an_ipv4_group_on_another_port_leaves_it_idle(lab):
    _network(lab)
    lab.proc("net/igmp", IGMP_HEAD + IGMP_LO +
             "2\tenp2s0    :     1      V3\n\t\t\t\t010101EF     1 0:00000000\t\t0\n")
    (uses, evidence), problems = _read(lab)
    assert uses == [] and "down" in evidence and not problems, (uses, problems)


def test_a_flowtable_with_no_dev_is_read_from_the_text(lab, monkeypatch):
    _network(lab)
    flowtable = {"flowtable": {"family": "inet", "table": "x", "name": "f", "handle": 2,
                               "hook": "ingress", "prio": 0}}
    text = ("table inet x {\n\tflowtable f {\n\t\thook ingress priority filter\n"
            "\t\tdevices = { enp2s0, enp5s0f1 }\n\t}\n}\n")
    _with_nft(lab, monkeypatch, [flowtable], text)
    (uses, _), problems = _read(lab)
    assert any("flowtable inet x f" in u for u in uses) and not problems, (uses, problems)


def test_a_chain_whose_device_cannot_be_told_leaves_the_port_unproven(lab, monkeypatch):
    """``nft -j`` names no device, and the text does not show the chain (an nft that prints
    neither, or a text the harness cannot parse): no "no hook"."""
    _network(lab)
    _with_nft(lab, monkeypatch, [NFT_106_CHAIN], "table netdev filter {\n}\n")
    (uses, _), problems = _read(lab)
    assert uses and any("netdev filter ingress" in p for p in problems), (uses, problems)


def test_a_fwd_to_a_device_a_map_picks_leaves_the_port_unproven(lab, monkeypatch):
    _network(lab)
    fwd = {"fwd": {"dev": {"map": {"key": {"meta": {"key": "mark"}}, "data": "@ports"}}}}
    _with_nft(lab, monkeypatch, [SPAN_CHAIN, _rule(fwd)], version="1.1.1")
    (uses, _), problems = _read(lab)
    assert uses and any("fwd" in p for p in problems), (uses, problems)


def test_where_the_json_names_every_device_no_text_is_asked_for(lab, monkeypatch):
    _network(lab)
    _with_nft(lab, monkeypatch, [SPAN_CHAIN, _rule({"dup": {"addr": "eno1"}})],
              version="1.1.1")
    asked, real = [], network._run
    monkeypatch.setattr(network, "_run", lambda fs, argv, *a, **k: (
        asked.append(argv), real(fs, argv, *a, **k))[1])
    (uses, _), problems = _read(lab)
    assert uses == [] and not problems, (uses, problems)
    assert [a for a in asked if "nft" in a] == [network._NFT_RULESET], asked
