"""Fix of read 42b (tests/unit/test_host_idle_review42b.py): what its tests do not cover.

Whether the kernel has tcx is its answer to ``BPF_PROG_QUERY`` at ``BPF_TCX_INGRESS`` of
``lo`` on the real host (EINVAL: none), never its release number; a fake root plays its
kernel by its ``osrelease``. ``bpftool -j net show``'s empty list is proof of no tcx program
only from a bpftool of 7.3 or later (``bpftool -j version``): an older one, or one whose
version cannot be read, is as if missing, and the refusal says to install 7.3 or later. The
query is checked on this host's 6.18 kernel (read only: the tcx programs of ``lo``); a fake
sysfs/proc tree plays the host, ``bpftool`` by monkeypatched output."""

from __future__ import annotations

import errno
import json
import os

import pytest

from harness.host import network
from harness.host.network import NetView
from harness.host.sysfs import Sysfs

from . import fakesysfs
from .test_host_idle_review42b import _ADDRS, _LINKS, _TCP, PORT

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures


@pytest.mark.parametrize("answer, has", [(0, True), (errno.EINVAL, False),
                                         (errno.EPERM, True), (errno.ENOSYS, True)])
def test_the_host_s_kernel_is_asked_not_its_release(monkeypatch, answer, has):
    """This host's release (6.18) would say tcx; the kernel's answer decides, and only
    EINVAL (an attach type it does not know) rules tcx out: any other failure tells
    nothing."""
    monkeypatch.setattr(network, "_tcx_query", lambda: answer)
    assert network._tcx_possible(Sysfs("/")) is has


@pytest.mark.skipif(os.geteuid() != 0, reason="BPF_PROG_QUERY needs CAP_NET_ADMIN")
def test_this_kernel_answers_the_tcx_query_and_refuses_an_unknown_attach_type():
    """6.18 has tcx: 0. A kernel before tcx sees 46 as this one sees a type past its last:
    EINVAL."""
    if tuple(map(int, os.uname().release.split(".")[:2])) < (6, 6):
        pytest.skip("a kernel without upstream tcx")
    assert network._tcx_query() == 0
    done, err, _ = network._bpf(network._BPF_QUERY, 1, 4095, 0)
    assert done < 0 and err == errno.EINVAL, (done, err)


def _host(lab, monkeypatch, version: str) -> None:
    """A 6.12 kernel, no tcx program anywhere, a bpftool whose ``-j version`` prints
    ``version`` (raw) and whose ``net show`` lists nothing."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    lab.proc("sys/kernel/osrelease", "6.12.9+bpo-amd64\n")
    real = network._run

    def run(fs, argv, fake, *a, **k):
        names = {str(w).rsplit("/", 1)[-1] for w in argv}
        if "bpftool" in names:
            return version if "version" in argv else json.dumps([{"xdp": [], "tc": []}])
        if "tc" in names:
            return "[]"
        return real(fs, argv, fake, *a, **k)

    monkeypatch.setattr(network, "_run", run)


@pytest.mark.parametrize("version", ['{"version": "7.1.0"}', '{"version": "5.15.0"}',
                                     '{"version": "v6.1"}', '{"version": "7.2.9"}',
                                     '{"libbpf_version": "1.3"}', "bpftool v7.4.0\n", ""])
def test_a_bpftool_before_7_3_or_unread_is_no_proof(lab, monkeypatch, version):
    """Old ones (7.1.0, Debian 12's; 5.15.0 or v6.1, a kernel tree's before bpftool had its
    own numbers), none named, not JSON: every NIC unproven, the hint naming 7.3."""
    _host(lab, monkeypatch, version)
    view = NetView.read(Sysfs(lab.root))
    uses, _ = view.use_of(PORT)
    assert uses and any("install bpftool 7.3 or later" in p for p in view.problems), (
        uses, view.problems)


def test_an_old_bpftool_on_a_host_with_no_sched_cls_program_proves_none(lab, monkeypatch):
    """The kernel's own list rules tcx out where no ``sched_cls`` program is loaded."""
    _host(lab, monkeypatch, '{"version": "7.1.0"}')
    monkeypatch.setattr(network, "_tcx_unproven", lambda fs: "")
    view = NetView.read(Sysfs(lab.root))
    uses, evidence = view.use_of(PORT)
    assert uses == [] and "down" in evidence and not view.problems, (uses, view.problems)


@pytest.mark.parametrize("version", ["7.3.0", "7.5.0", "v7.4.0", "8.0.0"])
def test_a_bpftool_from_7_3_lists_tcx_and_its_empty_list_proves_none(lab, monkeypatch,
                                                                     version):
    _host(lab, monkeypatch, json.dumps({"version": version, "libbpf_version": "1.3"}))
    view = NetView.read(Sysfs(lab.root))
    uses, evidence = view.use_of(PORT)
    assert uses == [] and "down" in evidence and not view.problems, (uses, view.problems)
