"""Issue 31, read 43b (the network side: nftables and tc reads of reads 39b-42b, what else
the kernel keeps on a down port; the leases and the journal), on main at d4ffd14. What it
found, one section below each:

1. An nftables map lookup keyed by ``iif``/``oif`` inside a statement. Read 41b's fix
   (:func:`harness.host.network._nft_matches`, :func:`_nft_compared`) reads a port's index
   only where a statement *is* a ``match``, ``vmap`` or ``map``; nft puts a map lookup that
   computes a value *inside* the statement that uses it: ``snat to oif map { "enp5s0f1" :
   192.0.2.1, ... }`` is ``{"snat": {"addr": {"map": {"key": {"meta": {"key": "oif"}},
   "data": {"set": [["enp5s0f1", "192.0.2.1"], ...]}}}}}``, and ``ct mark set iif map {
   "enp5s0f1" : 0x1 }`` (or ``meta mark set ...``) is ``{"mangle": {"key": ..., "value":
   {"map": {...}}}}``. The key is an ``iface_index`` all the same: nft resolved the name to
   the port's ifindex at load. Checked on this host (nft 1.0.6, kernel 6.18, a namespace of
   its own, veth pairs d0/d1 and d2/d3): after ``d0`` is deleted and made again under the
   same name, ``nft list table ip nat`` prints ``snat to oif map { 3 : 192.0.2.1, "d2" :
   198.51.100.1 }`` and the mangle rule ``ct mark set iif map { 3 : 0x00000001, "d2" :
   0x00000002 }``: the old number; the port given back is no longer SNATed to its address,
   its connections are no longer marked (the policy route or the QoS class keyed by the
   mark no longer applies), for good, until the ruleset is loaded again, and nothing says
   so. Shape: a lab gateway's multi-uplink ``/etc/nftables.conf`` (one SNAT address per
   uplink, ``snat to oif map``; the nftables wiki's "Multiple NATs using nftables maps"),
   or connection marking by input port for policy routing (``ct mark set iif map``, then
   ``ip rule add fwmark 1 table 101``), one uplink a spare port set down between
   campaigns. The same kind of use as read 41b's ``iif``/``oif`` match. Safe: an ``iif`` or
   ``oif`` key of a ``map`` anywhere in a rule's statements (recursively: ``snat``/``dnat``
   ``addr``/``port``, ``mangle`` ``value``, ``redirect``, ``ct``/``meta`` set...) is read as
   :func:`_nft_matches` reads a top-level one; its elements (or a named map's) naming the
   port are a use, named. The same for a ``fib`` result compared with a port, ``fib daddr
   oif "enp5s0f1"`` (``{"fib": {"result": "oif", ...}}``: an ``iface_index`` resolved at
   load; after ``d2`` was made again here nft prints ``fib daddr oif 5``), but not its
   ``missing``/``exists`` test (``"right": false``/``true``: firewalld's rpfilter, ``fib
   saddr . iif oif missing drop``), which names no port and must not make one unproven.

2. An MPTCP endpoint on the port (``ip mptcp endpoint add 10.0.5.1 dev enp5s0f1 subflow``:
   the in-kernel path manager opens an extra subflow of every MPTCP connection from that
   address, bound to that device; ``backup`` makes it the standby path). The endpoint is
   kept by the kernel, per network namespace, with the port's *ifindex*
   (``mptcp_pm_addr_entry.addr.ifindex``), through a down and through the unregister: the
   path manager has no netdev notifier. Checked on this host (kernel 6.18, iproute2 6.1, a
   namespace of its own): ``ip -j mptcp endpoint show`` prints ``[{"address": "10.0.5.1",
   "id": 1, "subflow": true, "dev": "d0"}]`` with ``d0`` down; after ``d0`` is deleted and
   made again under the same name (index 7 then 9), it prints ``"dev": "if7"``, and the
   address put back on the new ``d0`` does not mend it. So after the unbind and the
   give-back, every subflow the endpoint opens is bound to an index that no longer exists
   (``__mptcp_subflow_connect`` sets ``sk_bound_dev_if`` from it): the second path (or the
   backup path) of every MPTCP connection is gone, for good, until someone deletes and adds
   the endpoint again, and nothing says so. The harness reads no MPTCP state at all (the
   port is down with its address, no socket on it: "idle"). Shape: a lab host with MPTCP
   (built in and enabled by default, ``net.mptcp.enabled = 1``, on Fedora, RHEL 9, Ubuntu
   22.04+ kernels) that tests multipath or failover over two uplinks (a backup subflow over
   a spare port the operator sets down between campaigns; ``mptcpize run``, iperf3 with
   MPTCP, a 5G ATSSS or hybrid-access test bed), in the host's namespace or a container's.
   Safe: where the kernel has MPTCP (``/proc/sys/net/mptcp`` exists: it is built in, asking
   loads nothing), ``ip -j mptcp endpoint show`` is read in every namespace, as the routes
   are; an endpoint whose ``dev`` is the port is a use, named with its address and flags
   (one that cannot be read is a problem of the namespace).

The tests assert the safe behaviour and fail on d4ffd14; the controls show the same rules
keyed by ``oifname``/``iifname`` (which hold) leaving the port idle, and an MPTCP endpoint
with no device, or on another port, leaving it idle. A fake sysfs/proc tree
plays the host (:mod:`.fakesysfs`'s lab host), ``nft`` by monkeypatched output as nft 1.0.6
prints it here; no guest is booted.
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
from .test_host_idle_review41b import _with_ruleset

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PORT = Netdev("", "enp5s0f1")

_ADDRS = {"lo": ["127.0.0.1/8"], "enp2s0": ["192.168.1.10/24"]}
_TCP = "tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:*\n"

# -- 1. an nftables map lookup keyed by iif/oif inside a statement ------------------------------


def _snat_by(key: str) -> list:
    """``snat to KEY map { "enp5s0f1" : 192.0.2.1, "enp2s0" : 198.51.100.1 }`` as nft 1.0.6
    prints it in ``nft -j -t list ruleset`` (checked here with veth ports)."""
    return [{"snat": {"addr": {"map": {"key": {"meta": {"key": key}},
                                       "data": {"set": [["enp5s0f1", "192.0.2.1"],
                                                        ["enp2s0", "198.51.100.1"]]}}}}}]


def _ct_mark_by(key: str) -> list:
    """``ct state new ct mark set KEY map { "enp5s0f1" : 0x1, "enp2s0" : 0x2 }`` as nft 1.0.6
    prints it in JSON (checked here)."""
    return [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
            {"mangle": {"key": {"ct": {"key": "mark"}},
                        "value": {"map": {"key": {"meta": {"key": key}},
                                          "data": {"set": [["enp5s0f1", 1], ["enp2s0", 2]]}}}}}]


def _fib_oif(right) -> list:
    """``fib daddr oif "enp5s0f1" drop`` (traffic the routing table sends out of
    the port) as nft 1.0.6 prints its match in JSON (checked here: ``{"fib": {"result":
    "oif", "flags": ["daddr"]}}``); ``right`` false is ``fib saddr . iif oif missing``."""
    flags = ["daddr"] if right is not False else ["saddr", "iif"]
    return [{"match": {"op": "==", "left": {"fib": {"result": "oif", "flags": flags}},
                       "right": right}}, {"drop": None}]


@pytest.mark.parametrize("rule", [_snat_by("oif"), _ct_mark_by("iif"), _fib_oif("enp5s0f1")],
                         ids=["snat-to-oif-map", "ct-mark-set-iif-map", "fib-daddr-oif"])
def test_1_a_map_keyed_by_the_ports_index_in_a_statement_keeps_it(lab, monkeypatch, rule):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_ruleset(lab, monkeypatch, [rule])
    view = NetView.read(Sysfs(lab.root))
    uses, _ = view.use_of(PORT)
    assert any("oif" in u or "iif" in u or "nftables" in u for u in uses), (uses,
                                                                           view.problems)


def test_1c_the_function_is_refused_with_its_snat_map_named(lab, monkeypatch):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_ruleset(lab, monkeypatch, [_snat_by("oif")])
    uses = HostUsage.read(lab.root).verdict("0000:05:00.1").uses
    assert any("enp5s0f1" in u and ("oif" in u or "nftables" in u) for u in uses), uses


@pytest.mark.parametrize("rule", [_snat_by("oifname"), _ct_mark_by("iifname"), _fib_oif(False)],
                         ids=["snat-to-oifname-map", "ct-mark-set-iifname-map",
                              "fib-rpfilter-missing"])
def test_control_1_the_same_maps_by_name_leave_it_idle(lab, monkeypatch, rule):
    """Keyed by ``oifname``/``iifname`` the maps match by name, and hold after the give-back;
    firewalld's and the nftables wiki's reverse-path filter, ``fib saddr . iif oif missing
    drop`` (``"right": false``), names no port: a fix must not refuse every port for it."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_ruleset(lab, monkeypatch, [rule])
    view = NetView.read(Sysfs(lab.root))
    uses, evidence = view.use_of(PORT)
    assert uses == [] and "down" in evidence, (uses, view.problems)


# -- 2. an MPTCP endpoint on the port ----------------------------------------------------------


def _with_mptcp(lab, monkeypatch, endpoints: list) -> None:
    """The kernel has MPTCP (``/proc/sys/net/mptcp/enabled``, built in) and ``ip -j mptcp
    endpoint show`` prints ``endpoints`` in the harness's namespace, as iproute2 6.1 prints
    them here."""
    lab.proc("sys/net/mptcp/enabled", "1")
    real = network._run

    def run(fs, argv, fake, *a, **k):
        if "mptcp" in [str(w) for w in argv]:
            return json.dumps(endpoints)
        return real(fs, argv, fake, *a, **k)

    monkeypatch.setattr(network, "_run", run)


#: ``ip mptcp endpoint add 10.0.5.1 dev enp5s0f1 subflow backup``, as ``ip -j`` prints it.
_ENDPOINT = {"address": "10.0.5.1", "id": 1, "subflow": True, "backup": True,
             "dev": "enp5s0f1"}
_ADDRS_5 = {**_ADDRS, "enp5s0f1": ["10.0.5.1/24"]}


def test_2a_an_mptcp_endpoint_on_the_down_port_keeps_it(lab, monkeypatch):
    lab.network(links=_LINKS, addrs=_ADDRS_5, ss=_TCP)
    _with_mptcp(lab, monkeypatch, [_ENDPOINT])
    view = NetView.read(Sysfs(lab.root))
    uses, _ = view.use_of(PORT)
    assert any("mptcp" in u.lower() for u in uses) or view.problems, (uses, view.problems)


def test_2b_the_function_is_refused_with_its_mptcp_endpoint_named(lab, monkeypatch):
    lab.network(links=_LINKS, addrs=_ADDRS_5, ss=_TCP)
    _with_mptcp(lab, monkeypatch, [_ENDPOINT])
    uses = HostUsage.read(lab.root).verdict("0000:05:00.1").uses
    assert any("enp5s0f1" in u and "mptcp" in u.lower() for u in uses), uses


@pytest.mark.parametrize("endpoint", [{"address": "192.168.1.10", "id": 1, "subflow": True},
                                      {**_ENDPOINT, "address": "192.168.1.10",
                                       "dev": "enp2s0"}], ids=["no-dev", "another-port"])
def test_control_2_an_endpoint_elsewhere_leaves_it_idle(lab, monkeypatch, endpoint):
    lab.network(links=_LINKS, addrs=_ADDRS_5, ss=_TCP)
    _with_mptcp(lab, monkeypatch, [endpoint])
    view = NetView.read(Sysfs(lab.root))
    uses, evidence = view.use_of(PORT)
    assert uses == [] and "down" in evidence, (uses, view.problems)
