"""Fix of read 45c, 1 (left open by fix 45b): a tc filter attached to a *class* of a classful
qdisc, or to a qdisc below the root, on a link other than the port, that matches the port as
its input device. ``tc filter show dev X parent 1:`` lists the root's filters only: one at
``parent 1:1`` (an ``htb`` inner class: a lab router or WAN emulator shaping forwarded
traffic by the port it came in on, a ``netem`` class per test segment) or at ``parent 20:``
(an ``htb`` below class ``1:20``) is not shown, and keeps the port's bare ifindex: after the
give-back it matches nothing from it, for good.

Facts checked on this host (kernel 6.18, iproute2 6.1, ``sch_htb`` there, u32 built in;
``netem`` and ``prio`` are not, so the child qdisc was another ``htb``), in a namespace of its
own with veths: ``tc filter add dev d2 parent 1:1 protocol ip prio 3 u32 match u32 0 0 indev
d0 classid 1:10`` is listed by ``tc -j filter show dev d2 parent 1:1`` (``"input_dev":
"d0"``, the same shape as at the root) and by neither ``parent 1:`` nor no parent; a filter
at ``parent 20:`` likewise. ``tc -j class show dev d2`` prints *text* on iproute2 6.1 (JSON
came with 6.2, "tc: Add JSON output to tc-class"): ``class htb 1:10 parent 1:1 prio 0 rate
10Mbit ...``, one line per class (6.2 and later print the same words without ``-j``), so the
classes are read from the text. ``tc -j filter show dev d2 parent 1:77`` (no such class)
prints ``[]``. A fake sysfs/proc tree plays the host, ``tc`` its fake output files."""

from __future__ import annotations

import json

import pytest

from harness.host import network
from harness.host.network import NetView, Netdev
from harness.host.safety import HostUsage
from harness.host.sysfs import Sysfs

from . import fakesysfs
from .test_host_idle_review39b import _LINKS
from .test_host_idle_review45b import _ADDRS, _QDISCS, _TCP, _u32_indev

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PORT = Netdev("", "enp5s0f1")
BOND = fakesysfs.link(7, "bond0", up=True, linkinfo={"info_kind": "bond"})

#: ``tc qdisc add dev bond0 parent 1:20 handle 20: htb`` as ``tc -j qdisc show`` printed it.
_CHILD = {"kind": "htb", "handle": "20:", "dev": "bond0", "parent": "1:20",
          "options": {"r2q": 10, "default": "0", "direct_packets_stat": 0,
                      "direct_qlen": 1000}}


def _class(cid: str, parent: str = "1:1", kind: str = "htb") -> str:
    """One class as ``tc class show dev X`` printed it here."""
    where = "root" if parent == "root" else f"parent {parent}"
    return (f"class {kind} {cid} {where} prio 0 rate 10Mbit ceil 10Mbit burst 1600b "
            "cburst 1600b \n")


_CLASSES = _class("1:1", "root") + _class("1:10") + _class("1:20")


def _pref(filters: list[dict], pref: int) -> list[dict]:
    return [{**f, "pref": pref} for f in filters]


def _uplink(lab, link: str = "bond0", classes: str = _CLASSES, child: bool = False,
            **filters: list) -> NetView:
    """An ``htb 1:`` root on ``link`` (``bond0``: a virtual uplink; ``enp2s0``: a port),
    its classes, and its filters by place (``f_1_1``: ``parent 1:1``; ``f_20``: the child
    qdisc ``20:``); every other listing empty."""
    lab.network(links=_LINKS + [BOND], addrs=_ADDRS, ss=_TCP)
    qdiscs = [{**_QDISCS[0], "dev": link}, _QDISCS[1]] + (
        [{**_CHILD, "dev": link}] if child else [])
    lab.file("ip/tc-qdisc.json", json.dumps(qdiscs))
    lab.file(f"ip/tc-class-{link}.txt", classes)
    for place in ["1", "1-1", "1-10", "1-20"] + (["20"] if child else []):
        lab.file(f"ip/tc-filter-{link}-{place}.json", "[]")
    for key, value in filters.items():
        lab.file(f"ip/tc-filter-{link}-{key[2:].replace('_', '-')}.json", json.dumps(value))
    return NetView.read(Sysfs(lab.root))


@pytest.mark.parametrize("link", ["bond0", "enp2s0"], ids=["bond", "port-uplink"])
def test_an_indev_filter_on_an_htb_class_of_the_uplink_is_a_use(lab, link):
    view = _uplink(lab, link, f_1_1=_pref(_u32_indev("enp5s0f1"), 3))
    uses, _ = view.use_of(PORT)
    assert any(f"on {link} parent 1:1," in u and "(pref 3)" in u and "input_dev" in u and
               f"tc filter del dev {link} parent 1:1 pref 3" in u for u in uses), \
        (uses, view.problems)


def test_the_function_is_refused_with_the_class_filter_named(lab):
    _uplink(lab, f_1_1=_pref(_u32_indev("enp5s0f1"), 3))
    uses = HostUsage.read(lab.root).verdict("0000:05:00.1").uses
    assert any("enp5s0f1" in u and "bond0 parent 1:1" in u for u in uses), uses


def test_an_indev_filter_on_a_qdisc_below_the_root_is_a_use(lab):
    view = _uplink(lab, child=True, f_20=_pref(_u32_indev("enp5s0f1"), 4))
    uses, _ = view.use_of(PORT)
    assert any("on bond0 parent 20:," in u and "(pref 4)" in u for u in uses), \
        (uses, view.problems)


@pytest.mark.parametrize("child", [False, True], ids=["class", "child-qdisc"])
def test_control_a_class_filter_matching_another_port_leaves_it_idle(lab, child):
    view = _uplink(lab, child=child, f_1_1=_u32_indev("eno1"), f_20=_u32_indev("eno1"))
    uses, evidence = view.use_of(PORT)
    assert uses == [] and "down" in evidence and not view.problems, (uses, view.problems)


def test_too_many_classes_to_list_leave_every_port_unproven(lab):
    classes = _class("1:1", "root") + "".join(
        _class(f"1:{n:x}") for n in range(2, network._TC_BELOW_ROOT_MAX + 3))
    view = _uplink(lab, classes=classes)
    assert any("bond0" in p and str(network._TC_BELOW_ROOT_MAX) in p for p in view.problems), \
        view.problems


def test_a_class_listing_that_fails_leaves_every_port_unproven(lab):
    _uplink(lab)
    (lab.root / "ip/tc-class-bond0.txt").unlink()
    view = NetView.read(Sysfs(lab.root))
    assert any("classes of bond0" in p and "install iproute2" in p for p in view.problems), \
        view.problems


def test_a_class_filter_listing_that_fails_leaves_every_port_unproven(lab):
    _uplink(lab)
    (lab.root / "ip/tc-filter-bond0-1-10.json").unlink()
    view = NetView.read(Sysfs(lab.root))
    assert any("bond0 parent 1:10" in p for p in view.problems), view.problems


@pytest.mark.parametrize("text", ["qdisc htb 1: root\n", "class htb 1:x root\n"],
                         ids=["no-class-line", "bad-classid"])
def test_a_class_listing_that_is_none_leaves_every_port_unproven(lab, text):
    view = _uplink(lab, classes=text)
    assert any("classes of bond0" in p for p in view.problems), view.problems


def test_classes_that_hold_no_filter_are_not_asked(lab):
    """A ``prio`` root's bands (``prio_tcf_block``: a class has no block) and the default
    qdiscs: no class listing (no fake for it), no filter listing for a band."""
    lab.network(links=_LINKS + [BOND], addrs=_ADDRS, ss=_TCP)
    lab.file("ip/tc-qdisc.json", json.dumps([
        {"kind": "prio", "handle": "1:", "dev": "bond0", "root": True, "options": {}},
        {"kind": "fq_codel", "handle": "0:", "dev": "enp2s0", "root": True}]))
    lab.file("ip/tc-filter-bond0-1.json", "[]")
    lab.file("ip/tc-filter-enp2s0-root.json", "[]")
    for name in ("bond0", "enp2s0"):
        (lab.root / f"ip/tc-class-{name}.txt").unlink()
    view = NetView.read(Sysfs(lab.root))
    assert not view.problems and view.use_of(PORT)[0] == [], view.problems


def test_a_kernel_made_child_of_mq_is_not_asked(lab):
    """``mq``'s children (handle ``0:``) cannot be named as a parent."""
    lab.network(links=_LINKS + [BOND], addrs=_ADDRS, ss=_TCP)
    lab.file("ip/tc-qdisc.json", json.dumps(
        [{"kind": "mq", "handle": "0:", "dev": "enp2s0", "root": True}] +
        [{"kind": "fq_codel", "handle": "0:", "dev": "enp2s0", "parent": f":{n}"}
         for n in range(1, 5)]))
    view = NetView.read(Sysfs(lab.root))
    assert not view.problems and view.use_of(PORT)[0] == [], view.problems
