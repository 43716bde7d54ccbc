"""Issue 31, read 42b (the network side's tc, tcx and nftables reads; the leases and the
journal), on main at 723dbcf. What it found, one section below each:

1. A tcx program on the down port, listed by a ``bpftool`` too old to know tcx. Read 39b's
   fix (:func:`harness.host.network._read_tcx`, docs/vfio.md "a tcx program (Linux 6.6 and
   later, no qdisc: ``bpftool -j net show``)") takes ``bpftool -j net show``'s word for it
   whenever bpftool runs: no ``tcx/`` entry, no tcx program. But ``bpftool net show`` lists
   tcx links only from bpftool 7.3 on ("bpftool: Extend net dump with tcx progs", the tcx
   series of Linux 6.6, July 2023; libbpf/bpftool 4294230, first in v7.3.0: v7.1.0's
   src/net.c has no tcx at all. It asks ``BPF_PROG_QUERY`` for ``BPF_TCX_INGRESS`` and
   ``BPF_TCX_EGRESS``); an older one dumps the netlink tc filters (``clsact`` ones) and XDP
   only, and prints ``"tc": []`` for a port whose programs are all tcx: tcx keeps them in
   ``dev->tcx_ingress``/``tcx_egress``, which no netlink dump shows, with no qdisc (so
   :func:`_read_tc_qdiscs` sees nothing either). The harness checks neither bpftool's version
   nor falls back to the kernel's own list (:func:`_sched_cls_programs`, used only when
   bpftool is missing). Shape: a Debian 12 lab host on the bookworm-backports kernel (6.12:
   ``apt install -t bookworm-backports linux-image-amd64``, the usual way to get a newer
   NIC driver or io_uring there) with ``apt install bpftool`` from bookworm itself (7.1.0,
   built from Linux 6.1: backports is not preferred by default, so the kernel and bpftool
   disagree); k3s with Cilium 1.15+ (``cil_from_netdev``/``cil_to_netdev`` attached as tcx
   links on 6.6+ kernels, on each device of ``--devices=enp+``), or a lab's own libbpf loader
   (``bpf_program__attach_tcx``), on a port the operator set down. The unbind runs
   ``tcx_uninstall``: the program is detached for good (Cilium's datapath on that port, or the
   lab's program, gone until it is reloaded), and nothing says so. Safe: ``bpftool net
   show`` is proof of no tcx program only from a bpftool that lists tcx (``bpftool -j
   version`` 7.3 or later); an older one is as if bpftool were missing (the kernel's
   ``sched_cls`` list decides, :func:`_tcx_unproven`), else every NIC is unproven, naming
   it.

2. A tcx program on a kernel whose release number is below 6.6 but which has tcx: RHEL 9.4
   and later (and AlmaLinux/Rocky 9.4+), ``5.14.0-427...el9_4`` to ``5.14.0-570...el9_6``,
   whose eBPF is rebased to upstream 6.6 (9.4) and 6.12 (9.6, its release notes: "eBPF
   facility rebased to Linux kernel version 6.12"). :func:`harness.host.network._tcx_possible`
   decides from ``osrelease`` alone ("5.14" < 6.6: no tcx) and then reads nothing: neither
   ``bpftool -j net show`` nor the kernel's ``sched_cls`` list, so a tcx link on the down
   port is not seen. tcx works there: ptcpdump's users report ``attach tcx/egress hooks`` on
   AlmaLinux 9.4's ``5.14.0-427.42.1.el9_4`` (mozillazg/ptcpdump#244), and Cilium's loader
   (cilium/cilium#30103) attaches with tcx wherever the kernel takes it, falling back to tc
   only on ``ErrNotSupported``. Shape: a RHEL 9.4+ lab host that is also a k8s/OpenShift
   node with Cilium 1.15+ (``cil_from_netdev`` as tcx links on the devices it manages), or
   ptcpdump/a libbpf loader left attached to a spare port, the port set down; the unbind's
   ``tcx_uninstall`` drops the program for good. Safe: whether tcx can be there is not read
   from the version number: ``bpftool -j net show`` (or, without bpftool, the kernel's
   ``sched_cls`` programs) is read on every kernel; a ``tcx/`` entry on the port is a use.

Each test asserts the safe behaviour and fails on 723dbcf; the controls show the same host
with a bpftool that lists tcx (7.5.0, bookworm-backports') naming the program, and the tcx
program on another port, the down port taken. A fake sysfs/proc tree plays the host
(:mod:`.fakesysfs`'s lab host), ``tc`` and ``bpftool`` by monkeypatched output; no guest is
booted.

Looked at, checked against this host's tools in a namespace of its own (nft 1.0.6, iproute2
6.1, kernel 6.18), and held: ``tc -j actions ls action mirred`` past one dump message (41
actions print as two ``total acts``/``actions`` pairs, both read); ``tc -j qdisc show`` and
``tc -j filter show`` of a ``clsact`` with a ``u32`` mirred; ``nft list chains``' text of a
netdev egress chain and a two-device ingress chain and an ``inet`` ingress one (the JSON
names no device; the text parser reads each); named ``typeof meta iif`` sets and verdict maps
(``"type": "iface_index"``, ``iif @set``, ``iif vmap @map``, ``nft -j list set|map``'s
elements); bpftool's JSON keys for tcx (``devname``, ``kind`` ``tcx/ingress``: libbpf/bpftool
src/net.c). A VXLAN with only ``local`` on the down port's address (socket on 0.0.0.0:4789,
nothing names the port): judged no finding by read 40b, not reported again.
"""

from __future__ import annotations

import json

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


# -- 1. a tcx program that a bpftool older than 7.3 does not list --------------------------------

def _with_bpftool(lab, monkeypatch, version: str, tcx: list,
                  release: str = "6.12.9+bpo-amd64", has_tcx: bool | None = None) -> None:
    """A 6.12 kernel (Debian 12's bookworm-backports, ``6.12.9+bpo-amd64``; or ``release``)
    with tcx programs ``tcx`` ((device, hook, name)) attached, and a ``bpftool`` of
    ``version``: one from 7.3 on lists them as ``tcx/ingress`` entries, an older one does not
    know tcx and lists the netlink tc filters only (none here: no qdisc on any port). ``tc -j
    qdisc show`` lists the kernel's own qdiscs only (tcx needs none). ``has_tcx``: the
    kernel's answer to the harness's tcx query (``BPF_PROG_QUERY`` at ``BPF_TCX_INGRESS``),
    which only the real host is asked; a fake root plays its kernel by its ``osrelease``
    (6.6+: tcx), so a 5.14 that has tcx (RHEL 9.4+) is played by that answer."""
    lab.proc("sys/kernel/osrelease", release + "\n")
    if has_tcx is not None:
        monkeypatch.setattr(network, "_tcx_possible", lambda fs: has_tcx)
    real = network._run
    knows_tcx = tuple(map(int, version.split("."))) >= (7, 3)

    def run(fs, argv, fake, *a, **k):
        words = [str(w) for w in argv]
        names = {w.rsplit("/", 1)[-1] for w in words}
        if "bpftool" in names:
            if "version" in words:
                return json.dumps({"version": version, "libbpf_version": "1.1",
                                   "features": {"libbfd": False, "llvm": False,
                                                "skeletons": True}})
            tc = [{"devname": d, "ifindex": 4 if d == "enp5s0f1" else 2, "kind": f"tcx/{h}",
                   "name": n, "prog_id": 421} for d, h, n in tcx] if knows_tcx else []
            return json.dumps([{"xdp": [], "tc": tc, "flow_dissector": []}])
        if "tc" in names:
            if "qdisc" in words:
                return json.dumps([{"kind": "noqueue", "handle": "0:", "dev": "lo", "root": True,
                                    "refcnt": 2, "options": {}}] +
                                  [{"kind": "mq", "handle": "0:", "dev": li["ifname"],
                                    "root": True, "options": {}} for li in _LINKS[1:]])
            return "[]"
        return real(fs, argv, fake, *a, **k)

    monkeypatch.setattr(network, "_run", run)


def test_1a_a_tcx_program_unseen_by_an_old_bpftool_keeps_the_port(lab, monkeypatch):
    """Cilium's ``cil_from_netdev`` as a tcx link on the down enp5s0f1, bpftool 7.1.0."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_bpftool(lab, monkeypatch, "7.1.0", [("enp5s0f1", "ingress", "cil_from_netdev")])
    uses, evidence = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert uses, f"taken as idle: {evidence}"


def test_1b_the_function_is_refused_naming_the_old_bpftool(lab, monkeypatch):
    """As the binder judges 05:00.1 (HostUsage)."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_bpftool(lab, monkeypatch, "7.1.0", [("enp5s0f1", "ingress", "cil_from_netdev")])
    verdict = HostUsage.read(lab.root).verdict("0000:05:00.1")
    assert verdict.uses, f"taken: {verdict}"


def test_control_1a_a_bpftool_that_lists_tcx_names_the_program(lab, monkeypatch):
    """The same host with bookworm-backports' bpftool 7.5.0: the tcx link is named."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_bpftool(lab, monkeypatch, "7.5.0", [("enp5s0f1", "ingress", "cil_from_netdev")])
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert any("cil_from_netdev" in u for u in uses), uses


def test_control_1b_a_tcx_program_on_another_port_leaves_it_idle(lab, monkeypatch):
    """bpftool 7.5.0 lists Cilium's program on enp2s0 only: the down port is taken."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_bpftool(lab, monkeypatch, "7.5.0", [("enp2s0", "ingress", "cil_from_netdev")])
    uses, evidence = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert uses == [] and "down" in evidence, uses


# -- 2. a tcx program on a RHEL 9.4+ kernel, whose release says 5.14 ----------------------------

#: RHEL 9.6's kernel: 5.14 by its release, its eBPF rebased to 6.12 (the 9.6 release notes;
#: 9.4's to 6.6), tcx included; AlmaLinux/Rocky 9.4+ the same.
_EL9 = "5.14.0-570.12.1.el9_6.x86_64"


def test_2a_a_tcx_program_on_a_rhel9_kernel_keeps_the_port(lab, monkeypatch):
    """Cilium 1.16 (tcx when the kernel takes it: its loader falls back to tc only on
    ``ErrNotSupported``) on a RHEL 9.6 k8s node: ``cil_from_netdev`` as a tcx link on the
    down enp5s0f1; RHEL 9.6's bpftool (7.5, from the same rebase) lists it."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_bpftool(lab, monkeypatch, "7.5.0", [("enp5s0f1", "ingress", "cil_from_netdev")],
                  release=_EL9, has_tcx=True)
    uses, evidence = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert uses, f"taken as idle: {evidence}"


def test_2b_the_function_is_refused_on_the_rhel9_host(lab, monkeypatch):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_bpftool(lab, monkeypatch, "7.5.0", [("enp5s0f1", "ingress", "cil_from_netdev")],
                  release=_EL9, has_tcx=True)
    verdict = HostUsage.read(lab.root).verdict("0000:05:00.1")
    assert verdict.uses, f"taken: {verdict}"


def test_control_2_a_tcx_program_on_another_port_of_the_rhel9_host_leaves_it_idle(
        lab, monkeypatch):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_bpftool(lab, monkeypatch, "7.5.0", [("enp2s0", "ingress", "cil_from_netdev")],
                  release=_EL9, has_tcx=True)
    uses, evidence = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert uses == [] and "down" in evidence, uses
