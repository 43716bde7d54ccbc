"""Issue 31, thirty-first adversarial read, part b (NICs and their netdevs in every namespace,
leases and the host journal between runs, shared paths, CI files, exit status). What it found,
one section below each (each test's docstring says the host shape, why the harness calls it
idle, and what would be lost), on main at b2c7379:

1. (a) a NIC's PTP hardware clock feeds the kernel's PPS source (``pps_register_source`` in
   ``ptp_clock_register`` for a clock with ``pps``: igb, ixgbe, ice...): its node /dev/ppsN
   sits under /sys/devices/virtual/pps, below no device, and names its clock only in its
   ``name`` (``ptp0``). chronyd's ``refclock PPS /dev/pps0`` holds that node, not the clock's
   /dev/ptp0 below the function, so ``HostUsage._nodes`` finds nothing open below the NIC and
   its port is down: idle. Taking it unregisters the clock and its PPS source under chronyd.

Controls (pass on main): the same hosts without the use are still idle.
"""

from __future__ import annotations

import os

import pytest  # noqa: F401  (fixtures)

from harness.host.safety import HostUsage, plan_group

from . import fakesysfs
from .fakesysfs import FakeHost
from .test_host_idle_review28a import _holds, _virtual_node

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
PORT0, PORT1 = "0000:05:00.0", "0000:05:00.1"
BOTH = {PORT0, PORT1}


def _verdict(host: FakeHost, bdf: str):
    return HostUsage.read(host.root).verdict(bdf)


# -- 1. the NIC's clock feeds a PPS source that chronyd holds ------------------------------------


def _phc_with_pps(host: FakeHost, bdf: str = PORT0) -> None:
    """``bdf``'s driver registered its PTP hardware clock ptp0 (``/sys/class/ptp/ptp0``, below
    the function, node 246:0) with a PPS source: the PTP core registers it as pps0, a device
    of no parent (``/sys/devices/virtual/pps/pps0``, node 247:0) whose ``name`` is the
    clock's (``snprintf(pps.name, ..., "ptp%d", index)``)."""
    d = host.dev_dir(bdf) / "ptp" / "ptp0"
    d.mkdir(parents=True)
    (d / "dev").write_text("246:0\n")
    (d / "uevent").write_text("MAJOR=246\nMINOR=0\nDEVNAME=ptp0\n")
    (d / "clock_name").write_text("ixgbe\n")
    (d / "pps_available").write_text("1\n")
    (host.sys / "class/ptp").mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(d, host.sys / "class/ptp"), host.sys / "class/ptp/ptp0")
    pps = _virtual_node(host, "pps", "pps0", "247:0")
    (pps / "name").write_text("ptp0\n")
    (pps / "path").write_text("\n")
    (pps / "mode").write_text("1133\n")


def test_1_a_nic_whose_clock_feeds_the_pps_chronyd_holds_is_in_use(lab):
    """Host shape: the lab host keeps its time from the 82599's hardware clock (a GPS
    receiver's 1PPS into the card's SDP pin, ``ts2phc`` run once at boot to align it, the
    card's clock then free-running in holdover), the kernel's PPS source of that clock
    enabled (``echo 1 > /sys/class/ptp/ptp0/pps_enable``, a boot unit), and chronyd
    disciplining the system clock from it: ``refclock PPS /dev/pps0 lock NMEA`` (chrony.conf's
    own example of a PHC's PPS). The port itself carries no traffic (down): the 82599 is a
    timing card, and the inventory lists it (both ports, group 12) as a spare NIC.

    Why it is called idle: ``HostUsage._nodes`` looks at the device nodes *below* the function
    (``_Subtree``: ptp/ptp0, open by no process: the one-shot ts2phc has ended); the PTP core
    registers the clock's PPS source with no parent (``pps_register_source`` ->
    ``device_create(pps_class, NULL, ...)``), so /dev/pps0, which chronyd holds, is below no
    device, and nothing ties it to the NIC but its ``name`` (``ptp0``). The port is down with
    no route, socket or upper device: idle, with the evidence "1 device node(s) below ...
    open by no process". Taking 05:00.0 unbinds ixgbe, which unregisters ptp0 and its PPS
    source under chronyd: the host's time reference is gone (chronyd falls back or drifts,
    and every log and trace timestamp of the lab with it). Expected: a PPS source named after
    a clock below the function (``/sys/class/pps/*/name`` = ``ptpN``) counts as that
    function's node, and a process holding it keeps the NIC."""
    _phc_with_pps(lab)
    _holds(lab, 812, "chronyd", "/dev/pps0")
    verdict = _verdict(lab, PORT0)
    assert not verdict.idle, (
        f"05:00.0, whose clock ptp0 feeds /dev/pps0 held by chronyd, reads idle: {verdict}")
    assert any("pps0" in u for u in verdict.uses), verdict.uses
    usage = HostUsage.read(lab.root)
    assert not plan_group(lab.root, PORT0, usage, allowed=BOTH).safe


def test_1_control_a_nic_whose_pps_nobody_holds_is_idle(lab):
    """Control: the same clock and PPS source, held by no process (chronyd not running):
    the port is idle, and so is the group."""
    _phc_with_pps(lab)
    assert _verdict(lab, PORT0).idle, _verdict(lab, PORT0)
    usage = HostUsage.read(lab.root)
    assert plan_group(lab.root, PORT0, usage, allowed=BOTH).safe
