"""A NIC function of several ports (cxgb4: a Chelsio T520's two ports on one function) is
proven only once its number of ports is known, from the driver (mlx4's ``mlx4_portN``) or the
inventory (``ports = N``), and each port shows an interface (review 31b, 3)."""

from __future__ import annotations

import pytest

from harness.host.inventory import InventoryError, parse_inventory
from harness.host.plan import plan_inventory
from harness.host.safety import HostUsage

from . import fakesysfs
from .test_host_idle_review31b import T5, _t520
from .test_host_inventory import entry

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
T520 = dict(role="nic", bdf=T5, gateway="10.0.12.1")


def test_the_inventory_count_reaches_the_plan(lab):
    _t520(lab, seen=(0, 1))
    stated = parse_inventory(entry(**T520, ports=2), root=lab.root)
    assert stated.nic_ports() == {T5: 2}
    assert plan_inventory(lab.root, stated)[1]
    lines, ok = plan_inventory(lab.root, parse_inventory(entry(**T520), root=lab.root))
    assert not ok and any("ports = N" in line for line in lines), lines


def test_a_stated_count_still_wants_every_port_seen(lab):
    _t520(lab, seen=(0,))
    v = HostUsage.read(lab.root, nic_ports={T5: 2}).verdict(T5)
    assert not v.idle and any("dev_port 1 show no network interface" in u for u in v.uses), v


def test_a_port_beyond_the_stated_count_leaves_it_unproven(lab):
    _t520(lab, seen=(0, 1))
    v = HostUsage.read(lab.root, nic_ports={T5: 1}).verdict(T5)
    assert not v.idle and any("more than the 1 its inventory" in u for u in v.uses), v


def test_ports_must_be_a_positive_integer(lab):
    with pytest.raises(InventoryError, match="ports = 0"):
        parse_inventory(entry(**T520, ports=0), root=lab.root)
