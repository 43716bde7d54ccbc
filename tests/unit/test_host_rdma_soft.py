"""A software RDMA device over a port (review 46b, 1; :func:`harness.host.network._read_rdma`):
the ways it is read besides the review's (``rdma`` missing: sysfs; ``netdev_index`` only; an
exclusive ib_core), and the fail-closed ones (a siw device that names no interface, a listing
that cannot be read), and that ``rdma`` is not asked where ib_core is not there. A fake
sysfs/proc tree plays the host (:mod:`.fakesysfs`'s lab host); no guest is booted."""

from __future__ import annotations

import json

from harness.host import network
from harness.host.safety import HostUsage

from . import fakesysfs

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

_BDF = "0000:05:00.1"


def _virtual(lab, name: str, parent: "str | None") -> None:
    """``rdma link add NAME type rxe|siw netdev ...`` as sysfs shows it (since 5.10): in
    devices/virtual/infiniband, port 1 DOWN; rxe's ``parent`` and GID ``ndevs`` name the
    interface, siw's sysfs names none."""
    virt = lab.root / "sys/devices/virtual/infiniband" / name
    (virt / "ports/1/gid_attrs/ndevs").mkdir(parents=True)
    (virt / "ports/1/state").write_text("1: DOWN\n")
    if parent:
        (virt / "parent").write_text(f"{parent}\n")
        (virt / "ports/1/gid_attrs/ndevs/0").write_text(f"{parent}\n")
    cls = lab.root / "sys/class/infiniband"
    cls.mkdir(parents=True, exist_ok=True)
    (cls / name).symlink_to(f"../../devices/virtual/infiniband/{name}")


def _asked(monkeypatch) -> list:
    """The ``rdma`` commands run (any other is run as before)."""
    asked, real = [], network._run

    def run(fs, argv, fake, *a, **k):
        if any(str(w).endswith("rdma") for w in argv):
            asked.append(argv)
        return real(fs, argv, fake, *a, **k)

    monkeypatch.setattr(network, "_run", run)
    return asked


def test_an_rxe_device_is_read_from_sysfs_where_rdma_is_missing(lab, monkeypatch):
    _virtual(lab, "rxe0", "enp5s0f1")
    asked = _asked(monkeypatch)
    uses = HostUsage.read(lab.root).verdict(_BDF).uses
    assert not asked
    assert any("software RDMA device rxe0" in u and "rdma link delete rxe0" in u
               for u in uses), uses


def test_a_siw_device_with_no_rdma_to_name_its_port_is_a_problem(lab, monkeypatch):
    _virtual(lab, "siw0", None)
    uses = HostUsage.read(lab.root).verdict(_BDF).uses
    assert any(u.startswith("cannot tell") and "siw0" in u for u in uses), uses


def test_a_port_named_by_its_index_alone_is_tied(lab, monkeypatch):
    _virtual(lab, "siw0", None)
    lab.file("ip/rdma-link.json", json.dumps([{"ifname": "siw0", "port": 1, "state": "DOWN",
                                                "netdev_index": 4}]))
    uses = HostUsage.read(lab.root).verdict(_BDF).uses
    assert any("software RDMA device siw0" in u for u in uses), uses
    assert not any(u.startswith("cannot tell") for u in uses), uses


def test_a_listing_that_cannot_be_read_leaves_the_port_unproven(lab, monkeypatch):
    _virtual(lab, "rxe0", "enp2s0")
    lab.file("ip/rdma-link.json", '{"link": ')
    uses = HostUsage.read(lab.root).verdict(_BDF).uses
    assert any(u.startswith("cannot tell") and "rdma -j link show" in u for u in uses), uses


def test_rdma_is_not_asked_where_ib_core_is_not_there(lab, monkeypatch):
    lab.file("ip/rdma-link.json", "not read")
    asked = _asked(monkeypatch)
    verdict = HostUsage.read(lab.root).verdict(_BDF)
    assert not asked and not verdict.uses, verdict.uses


def test_an_empty_shared_ib_core_is_not_asked(lab, monkeypatch):
    (lab.root / "sys/class/infiniband").mkdir(parents=True)
    lab.file("sys/module/ib_core/parameters/netns_mode", "Y\n")
    lab.file("ip/rdma-link.json", "not read")
    asked = _asked(monkeypatch)
    verdict = HostUsage.read(lab.root).verdict(_BDF)
    assert not asked and not verdict.uses, verdict.uses


def test_an_exclusive_ib_core_is_asked_though_its_class_here_is_empty(lab, monkeypatch):
    """``rdma system set netns exclusive``: a device moved into another namespace shows in
    that one's sysfs only; the listing of each namespace is read."""
    (lab.root / "sys/class/infiniband").mkdir(parents=True)
    lab.file("sys/module/ib_core/parameters/netns_mode", "N\n")
    lab.file("ip/rdma-link.json", json.dumps([{"ifname": "rxe1", "port": 1, "state": "DOWN",
                                                "netdev": "enp5s0f1"}]))
    uses = HostUsage.read(lab.root).verdict(_BDF).uses
    assert any("software RDMA device rxe1" in u for u in uses), uses


def test_a_hardware_rdma_device_is_left_to_the_functions_own_rule(lab, monkeypatch):
    """mlx4_0 below its function, over the down port: judged by its port state below the
    function (:func:`harness.host.safety._rdma_ports_up`), not as a software one."""
    ib = lab.root / "sys/bus/pci/devices" / _BDF / "infiniband/mlx4_0"
    (ib / "ports/1").mkdir(parents=True)
    (ib / "ports/1/state").write_text("1: DOWN\n")
    (lab.root / "sys/class/infiniband").mkdir(parents=True)
    (lab.root / "sys/class/infiniband/mlx4_0").symlink_to(ib.resolve())
    lab.file("ip/rdma-link.json", json.dumps([{"ifname": "mlx4_0", "port": 1, "state": "DOWN",
                                                "netdev": "enp5s0f1"}]))
    verdict = HostUsage.read(lab.root).verdict(_BDF)
    assert not verdict.uses, verdict.uses
