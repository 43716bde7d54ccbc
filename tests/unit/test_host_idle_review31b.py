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
2. (a) the same clock drives a signal out of the card: a pin of it set to periodic output
   (``pins/SDP0`` reads ``2 0``, PTP_PF_PEROUT, and ``period`` written: 1PPS to a lab
   instrument or a second card's time input). The kernel and the card do it alone, with no
   process, node or interface to show it, and nothing in the rule looks at a clock's pins.
3. (a) ``safety._ports_unseen`` (review 30's fix) wants, for a function of several ports
   (cxgb4, nfp, mlxsw), an interface for each port *below* the highest ``dev_port`` seen:
   the highest port itself can never be missed. A Chelsio T520's port 1 in a namespace only
   the kernel holds (an NFS mount's), port 0 down in the host's namespace: ``wanted`` is
   empty, and the down port 0 "proves" the function idle, which docs/vfio.md says it must not
   ("the port left down in the host's namespace proves nothing of the other").
4. (a) ``NetView.use_of`` looks for netconsole only on interfaces of the harness's own
   namespace (``dev.namespace == OWN``), but a dynamic target binds to the interface of that
   name in the network namespace of the process that enables it (``netpoll_setup``:
   ``current->nsproxy->net_ns``): a target enabled from a management namespace (``ip netns
   exec mgmt sh -c 'echo 1 > .../enabled'``) keeps its port there, and the port, down, reads
   idle although configfs names it (``dev_name``, and ``local_mac``: its MAC).

Controls (pass on main): the same hosts without the use are still idle.
"""

from __future__ import annotations

import json
import os

from harness.host.safety import HostUsage, plan_group

from . import fakesysfs
from .fakesysfs import FakeHost, link
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
    d = phc(host, bdf, "ixgbe", pps_available=1, pins=2)
    for pin in ("SDP0", "SDP1"):  # (ptp_pin_show: "func chan"; 0: PTP_PF_NONE)
        (d / "pins").mkdir(exist_ok=True)
        (d / "pins" / pin).write_text("0 0\n")
    pps_source(host, "0.000000000#0")  # (pps's assert_show: no pulse counted)


def phc(host: FakeHost, bdf: str, clock_name: str, *, pps_available: int, pins: int = 0,
        outputs: int | None = None):
    """A PTP hardware clock ptp0 below ``bdf`` (node 246:0, linked from /sys/class/ptp) as
    ``ptp_register`` shows it: its name, whether it has a PPS source, its programmable pins
    (a count: the caller makes ``pins/``) and, when given, its periodic outputs."""
    d = host.dev_dir(bdf) / "ptp" / "ptp0"
    d.mkdir(parents=True)
    (d / "dev").write_text("246:0\n")
    (d / "uevent").write_text("MAJOR=246\nMINOR=0\nDEVNAME=ptp0\n")
    (d / "clock_name").write_text(f"{clock_name}\n")
    (d / "pps_available").write_text(f"{pps_available}\n")
    (d / "n_programmable_pins").write_text(f"{pins}\n")
    if outputs is not None:
        (d / "n_periodic_outputs").write_text(f"{outputs}\n")
    (host.sys / "class/ptp").mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(d, host.sys / "class/ptp"), host.sys / "class/ptp/ptp0")
    return d


def pps_source(host: FakeHost, assert_line: str) -> None:
    """ptp0's PPS source pps0 (no parent, node 247:0, ``name`` ptp0), its ``assert`` the line
    given ("seconds.nanoseconds#sequence")."""
    pps = _virtual_node(host, "pps", "pps0", "247:0")
    (pps / "name").write_text("ptp0\n")
    (pps / "path").write_text("\n")
    (pps / "mode").write_text("1133\n")
    (pps / "assert").write_text(f"{assert_line}\n")


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


# -- 2. a pin of the NIC's clock drives a signal out of the card ----------------------------------


def test_2_a_nic_whose_clock_drives_a_periodic_output_pin_is_in_use(lab):
    """Host shape: the 82599's hardware clock, disciplined once at boot, outputs a 1PPS
    signal on its SDP0 pin (``echo 2 0 > /sys/class/ptp/ptp0/pins/SDP0; echo "0 0 0 1 0" >
    /sys/class/ptp/ptp0/period``, a boot unit, or ``testptp -L0,2 -p 1000000000``, which then
    exits): the lab's oscilloscope and a second host's time card take their reference from
    that cable. The port is down (a timing card), listed in the inventory as a spare NIC.

    Why it is called idle: the periodic output runs in the card, set up through write-only
    sysfs files or an ioctl of a process that has ended: no process holds /dev/ptp0, no
    interface is up, and ``HostUsage`` never reads the clock's pins (``ptp_pin_show``: the
    function each pin is assigned, readable by anyone, ``2 0`` = PTP_PF_PEROUT on channel 0).
    Taking 05:00.0 unbinds ixgbe, which unregisters the clock and resets the card: the signal
    stops, and what takes its reference from it drifts or alarms. Expected: a clock below the
    function with a pin assigned a function (EXTTS, PEROUT, PHYSYNC: anything but 0) keeps
    the NIC, named (a periodic output cannot be read back, so the assignment is the
    evidence)."""
    _phc_with_pps(lab)
    (lab.dev_dir(PORT0) / "ptp/ptp0/pins/SDP0").write_text("2 0\n")
    verdict = _verdict(lab, PORT0)
    assert not verdict.idle, (
        f"05:00.0, whose clock drives a periodic output on SDP0, reads idle: {verdict}")
    assert any("SDP0" in u for u in verdict.uses), verdict.uses


# -- 3. the highest port of a multi-port function, in a namespace only the kernel holds -----------


T5 = "0000:0c:00.4"   # Chelsio T520-CR (1425:5401): PF4 is the NIC function of both ports


def _t520(host: FakeHost, seen: tuple[int, ...]) -> None:
    """A Chelsio T520-CR on cxgb4, one PCI function for its two ports (enp12s0f4, dev_port 0;
    enp12s0f4d1, dev_port 1), of which the ports in ``seen`` are in the host's namespace,
    down."""
    host.add_pci("0000:00:1c.6", "8086:a33e", 0x060400, "pcieport", 24)
    host.add_pci(T5, "1425:5401", 0x020000, "cxgb4", 25, parent="0000:00:1c.6")
    for name, port in (("enp12s0f4", 0), ("enp12s0f4d1", 1)):
        if port in seen:
            host.add_net(name, T5)
            (host.sys / "class/net" / name / "dev_port").write_text(f"{port}\n")


def test_3_a_multi_port_function_whose_highest_port_no_namespace_shows_is_in_use(lab):
    """Host shape: review 30's finding 2 with the ports the other way round: the storage
    network is on the T520's port 1 (``ip link set enp12s0f4d1 netns storage``), /scratch is
    NFS-mounted through it (``nsenter --net=/run/netns/storage mount -t nfs4 ...``), and a
    clean-up script's ``ip netns del storage`` leaves the namespace alive, held by the NFS
    client alone (no process, fd or mount names it), port 1 up in it carrying /scratch. Port
    0, enp12s0f4, is down in the host's namespace: the spare the inventory lists the card for.

    Why it is called idle: ``_ports_unseen`` wants ``set(range(max(seen)))``: with only
    dev_port 0 seen that is the empty set, so no port is missing, and the one down interface
    is the evidence for the whole function. dev_port says which port an interface is, never
    how many the function has; a function of several ports whose highest ones are all in
    unreadable places looks exactly like one of a single port. Taking 0c:00.4 unbinds cxgb4,
    port 1 goes with it, and every process on /scratch hangs (a hard mount). Expected: a
    function of a driver that serves several ports on one function (cxgb4, nfp, mlxsw) is
    proven only once its number of ports is known (devlink's port list, which names every
    port, its netdev only when it is in the reader's namespace; the board, told by its
    device id; or the inventory) and each shows an interface; else unproven, naming the
    ports it could not see."""
    _t520(lab, seen=(0,))
    v = _verdict(lab, T5)
    assert not v.idle, f"{T5} judged idle with its port 1 (dev_port 1) unseen: {v.evidence}"


# -- 4. a netconsole target enabled from another network namespace --------------------------------


MAC1 = "a0:36:9f:05:00:01"


def _port1_in_mgmt(host: FakeHost) -> None:
    """The 82599's port 1 lives in the named namespace ``mgmt`` (the lab's management VRF
    done as a namespace), down, no address; the host's own namespace no longer shows it."""
    own = [li for li in (json.loads((host.root / "ip/link.json").read_text()))
           if li["ifname"] != "enp5s0f1"]
    host.file("ip/link.json", json.dumps(own))
    (host.dev_dir(PORT1) / "net/enp5s0f1").rename(host.root / "moved")  # (not in our sysfs)
    (host.sys / "class/net/enp5s0f1").unlink()
    host.network("mgmt", links=[link(1, "lo", up=True),
                                link(7, "enp5s0f1", PORT1, address=MAC1)])


def _built_in_netconsole_target(host: FakeHost, enabled: str) -> None:
    """netconsole built in, configfs mounted at /sys/kernel/config, one dynamic target
    ``lab`` on enp5s0f1 (``local_mac``: the MAC of the interface it bound, as the kernel
    shows it once enabled)."""
    host.file(f"lib/modules/{os.uname().release}/modules.builtin",
              "kernel/drivers/net/netconsole.ko\nkernel/fs/configfs/configfs.ko\n")
    target = "sys/kernel/config/netconsole/lab"
    host.file(f"{target}/enabled", f"{enabled}\n")
    host.file(f"{target}/dev_name", "enp5s0f1\n")
    host.file(f"{target}/local_mac", f"{MAC1}\n")
    host.file(f"{target}/remote_ip", "10.77.0.9\n")
    host.file("sys/module/netconsole/parameters/oops_only", "N\n")  # (mode 0600: shown)
    mounts = (host.root / "proc/mounts").read_text()
    host.proc("mounts", mounts + "configfs /sys/kernel/config configfs rw,relatime 0 0\n")


def test_4_a_port_netconsole_bound_in_another_namespace_is_in_use(lab):
    """Host shape: the lab host's management network is a named namespace, ``mgmt`` (the
    82599's port 1 moved into it: ``ip link set enp5s0f1 netns mgmt``), and the log-shipping
    unit runs in it (``NetworkNamespacePath=/run/netns/mgmt``), doing what netconsole.rst
    shows: ``mkdir /sys/kernel/config/netconsole/lab; echo enp5s0f1 > .../dev_name; echo
    10.77.0.9 > .../remote_ip; echo 1 > .../enabled``. The kernel's log now goes out of
    port 1 in mgmt. The operator, to offer the 82599 for a night (as docs/vfio.md says),
    set enp5s0f1 down in mgmt; netconsole keeps its target over a down, as review 29b's
    finding 2 says.

    Why it is called idle: ``_configfs_netconsoles`` reads the target (``enp5s0f1``), but
    ``use_of`` compares it only with interfaces of the harness's own namespace (``dev.namespace
    == OWN``), where no enp5s0f1 is; netconsole binds by name in the namespace of the
    process that writes ``enabled`` (``netpoll_setup``: ``current->nsproxy->net_ns``), and
    configfs says which interface it bound (``local_mac`` is its MAC). enp5s0f1 (netns mgmt)
    is down with no route, socket or upper device: idle. Taking 05:00.1 unregisters it and
    netconsole loses the target (dropped; a kernel with deactivated targets takes it up again
    only when that interface comes back): the log host loses the lab host's oopses and
    panics. Expected: a netconsole target's device is looked for in every namespace (by its
    MAC, ``local_mac``, or its name anywhere), and the port keeps it."""
    _port1_in_mgmt(lab)
    _built_in_netconsole_target(lab, enabled="1")
    found = _verdict(lab, PORT1)
    assert any("enp5s0f1 (netns mgmt)" in e for e in found.evidence + found.uses), found
    assert not found.idle and any("netconsole" in u for u in found.uses), found


def test_4_control_a_disabled_target_leaves_the_port_in_mgmt_idle(lab):
    """Control: the same target disabled (``enabled`` 0): the port in mgmt is idle, read
    there."""
    _port1_in_mgmt(lab)
    _built_in_netconsole_target(lab, enabled="0")
    found = _verdict(lab, PORT1)
    assert found.idle, found
    assert any("enp5s0f1 (netns mgmt)" in e for e in found.evidence), found
