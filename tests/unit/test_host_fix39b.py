"""Fix of read 39b (tests/unit/test_host_idle_review39b.py): what its tests do not cover.

A multi-homed SCTP endpoint or association shows ``ss`` one of its local addresses: every one
is read from /proc/net/sctp. Each new read is asked only where its module is there (asking
loads it), and one that cannot be read leaves the port unproven with the way out: ``nft``
missing with ``nf_tables`` loaded, ``bpftool`` missing on a 6.6+ kernel with ``sched_cls``
programs that cannot be ruled out, ``tc`` failing. A fake sysfs/proc tree plays the host;
the tools by monkeypatched output."""

from __future__ import annotations

import pytest

from harness.host import network
from harness.host.network import NetView, Netdev
from harness.host.sysfs import Sysfs

from . import fakesysfs
from .test_host_idle_review39b import _ADDRS, _LINKS, PORT

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

_EPS = (" ENDPT     SOCK   STY SST HBKT LPORT   UID INODE LADDRS\n"
        "ffff0001 ffff0002 2   10  29   38412     0 40123 10.0.6.1 10.0.5.1 \n")
_ASSOCS = (" ASSOC     SOCK   STY SST ST HBKT ASSOC-ID TX_QUEUE RX_QUEUE UID INODE LPORT RPORT "
           "LADDRS <-> RADDRS HBINT INS OUTS MAXRT T1X T2X RTXC wmema wmemq sndbuf rcvbuf\n"
           "ffff0003 ffff0004 2   1   3  0       2        0        0     0 40124 36412 36412 "
           "*10.0.6.1 10.0.5.1 <-> *10.0.6.50 10.0.5.50 \t 30000    10    10   10    0    0"
           "        0        1        0   212992   212992\n")


def _host(lab, **modules) -> None:
    lab.network(links=_LINKS, addrs=_ADDRS, ss="tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:*\n")
    for m in modules:
        (lab.sys / "module" / m).mkdir(exist_ok=True)


def _uses(lab):
    view = NetView.read(Sysfs(lab.root))
    return view.use_of(PORT), view.problems


@pytest.mark.parametrize("table, text, port", [("eps", _EPS, "38412"),
                                               ("assocs", _ASSOCS, "36412")])
def test_a_multi_homed_sctp_socket_is_seen_on_each_of_its_addresses(lab, table, text, port):
    """ss names 10.0.6.1 (the first address); the port's 10.0.5.1 is the second."""
    _host(lab, sctp=True)
    lab.proc(f"net/sctp/{table}", text)
    (uses, _), problems = _uses(lab)
    assert any(port in u and "10.0.5.1" in u for u in uses) and not problems, (uses, problems)


def test_sctp_is_not_asked_for_where_its_module_is_not_there(lab, monkeypatch):
    _host(lab)
    asked = []
    real = network._run
    monkeypatch.setattr(network, "_run", lambda fs, argv, *a, **k: (
        asked.append(argv), real(fs, argv, *a, **k))[1])
    (uses, evidence), problems = _uses(lab)
    assert uses == [] and "down" in evidence and not problems, (uses, problems)
    # (``tc -j qdisc show`` is a dump, which loads no module: read 41b, 1, asks it anywhere)
    assert not [a for a in asked if "-S" in a or a[0] in ("tc", "nft", "bpftool") and
                a[1:] != ["-j", "qdisc", "show"]], asked


def test_nft_missing_with_nf_tables_loaded_leaves_the_port_unproven(lab):
    _host(lab, nf_tables=True)
    (uses, _), problems = _uses(lab)
    assert any("install nftables" in p for p in problems), problems
    assert uses and "cannot be read" in uses[0], uses


def test_tc_failing_leaves_the_port_unproven(lab):
    """With or without ``sch_ingress`` (read 41b, 1: a root qdisc needs no module to list)."""
    _host(lab, sch_ingress=True)
    (lab.root / "ip/tc-qdisc.json").unlink()
    (uses, _), problems = _uses(lab)
    assert any("tc -j qdisc show" in p and "install iproute2" in p for p in problems), problems


def test_a_6_6_kernel_without_bpftool_is_unproven_unless_no_sched_cls_program(lab,
                                                                             monkeypatch):
    """A fake root has no kernel to ask: unproven, with the way out. On the real host the
    bpf system call rules tcx out when no sched_cls program is loaded."""
    _host(lab)
    lab.proc("sys/kernel/osrelease", "6.8.0-49-generic\n")
    (uses, _), problems = _uses(lab)
    assert any("install bpftool" in p for p in problems), problems
    monkeypatch.setattr(network, "_tcx_unproven", lambda fs: "")
    (uses, evidence), problems = _uses(lab)
    assert uses == [] and "down" in evidence and not problems, (uses, problems)


def test_the_lab_host_s_6_1_kernel_asks_for_no_tcx(lab):
    _host(lab)
    assert not network._tcx_possible(Sysfs(lab.root))


@pytest.mark.parametrize("config, asked_nft", [("CONFIG_NF_TABLES=y\n", True),
                                               ("# CONFIG_NF_TABLES is not set\n", False)])
def test_a_kernel_without_modules_builtin_is_asked_through_its_config(lab, config, asked_nft):
    """A cloud or microVM kernel installed with no /lib/modules (no ``modules.builtin``) and
    nf_tables built in shows no /sys/module/nf_tables: its /proc/config.gz says it is there,
    so its hooks are read (here ``nft`` is missing: the port is unproven, with the way out);
    where the config says it is not, nothing is asked."""
    import gzip

    _host(lab)
    (lab.root / "proc").mkdir(exist_ok=True)
    with gzip.open(lab.root / "proc" / "config.gz", "wt") as f:
        f.write("CONFIG_NET=y\n" + config)
    _, problems = _uses(lab)
    assert any("install nftables" in p for p in problems) == asked_nft, problems


def test_a_kernel_whose_built_in_modules_cannot_be_told_counts_them_there(monkeypatch):
    """On the host, with neither ``modules.builtin`` nor /proc/config.gz to read, a module
    with no /sys/module entry may be built in: what it would keep is read, not ruled out."""
    from harness.host import storage

    fs = Sysfs("/")
    monkeypatch.setattr(storage, "_kernel_config", lambda fs: None)
    monkeypatch.setattr(fs, "read", lambda path: None)
    assert storage._built_in(fs, "nf_tables") and storage._built_in(fs, "sctp")
