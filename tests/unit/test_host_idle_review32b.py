"""Issue 31, thirty-second adversarial read, part b (NICs and their netdevs in every namespace,
leases and the host journal between runs, shared paths, CI files, exit status). Findings, one
section below each (each test's docstring: the host shape, why the harness calls it idle, what
would be lost), on main at 45b56e8:

1. (a) a named network namespace that is the harness's own (``ip netns attach host 1``: a
   bind mount of /proc/1/ns/net in /run/netns) is read a second time under its name, and its
   interfaces are counted again: ``safety._ports_unseen`` counts each interface outside the
   harness's own namespace as "a port seen elsewhere", so the host-namespace copy of port 0
   stands in for the port 1 that no namespace shows (review 31b's kernel-held namespace), and
   the two-port function is judged idle with ``ports = 2`` stated (two names of one other
   namespace count its interfaces twice the same way: ``network._read_all`` never compares a
   name's inode with the namespaces already read).
2. (a) ``safety._ports_unseen`` takes, for a driver of one port per function (ice), any
   interface of the function for that port ("one port: the interface seen is it"); in
   switchdev mode the PF's VF representors are interfaces of the PF too
   (``SET_NETDEV_DEV(repr->netdev, ice_pf_to_dev(pf))``, ``phys_port_name`` ``pf0vf0``), so a
   down representor proves the PF idle while its uplink port, in a namespace only the kernel
   holds, carries an NFS mount.
3. (a) review 31b's fix for a clock's signal out of the card reads only its programmable pins
   (``pins/*``), but ixgbe's X540/X550 clock has none (``n_programmable_pins`` 0): its 1PPS
   goes out of SDP0 once ``pps_enable`` is written (``ixgbe_ptp_setup_sdp_X540``), a
   write-only switch; the clock's PPS source, held by no process, counts its pulses in
   ``assert`` (readable by anyone), and nothing reads it: the card reads idle.
4. (a) the same fix, for a clock that drives a periodic output with no pins at all: stmmac
   (Intel's mGbE, ``intel-eth-pci``) gives its clock ``n_per_out`` outputs and no
   programmable pins, and a ``PTP_PEROUT_REQUEST`` (``testptp -p``, which then exits) keeps
   the signal going with nothing in sysfs to show it: a clock that can drive an output the
   harness cannot read (``n_periodic_outputs`` above 0, no ``pins/``) should leave the
   function unproven; it reads idle.

Controls (pass on main): the same hosts without the use are still idle.
"""

from __future__ import annotations

import json
import os
import shutil

from harness.host.safety import HostUsage, plan_group

from . import fakesysfs
from .fakesysfs import FakeHost
from .test_host_idle_review31b import phc, pps_source
from .test_host_idle_review31b import T5, _t520

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
OWN_NET = "net:[4026531840]"   # the fake host's own namespace (FakeHost.host_namespaces)


# -- 1. the host's own namespace, also named, counted as a second port -------------------------


def _name_the_host_namespace(host: FakeHost, name: str = "host") -> None:
    """``ip netns attach host 1``: /run/netns/host is a bind mount of PID 1's namespace file,
    so ``ip netns list`` shows ``host`` and `ip -n host` prints what the harness's own
    namespace prints. (The fake: /var/run/netns/host stands for the nsfs file of the same
    inode as /proc/self/ns/net; ip/netns/host/ holds the same output as ip/.)"""
    netns = host.root / "var/run/netns"
    netns.mkdir(parents=True, exist_ok=True)
    os.symlink(OWN_NET, netns / name)  # (readlink: the inode of the host's own namespace)
    shutil.copytree(host.root / "ip", host.root / "ip/netns" / name,
                    ignore=shutil.ignore_patterns("netns", "netns.json"))
    host.file("ip/netns/%s/packet.txt" % name, (host.root / "proc/net/packet").read_text())
    listed = json.loads((host.root / "ip/netns.json").read_text() or "[]")
    host.file("ip/netns.json", json.dumps(listed + [{"name": name}]))


def test_1_the_host_namespace_named_again_is_no_second_port(lab):
    """Host shape: review 31b's finding 3 (a Chelsio T520's port 1 carrying an NFS mount in a
    namespace only the kernel holds after ``ip netns del storage``; port 0, enp12s0f4, down in
    the host's namespace), with the fix it asked for: the inventory says ``ports = 2``. The
    lab host also names its own namespace, as many do so that scripts can say ``ip -n host``
    or ``ip netns exec host`` from inside a container's tooling: ``ip netns attach host 1``
    (a bind mount of /proc/1/ns/net at /run/netns/host).

    Why it is called idle: ``network._read_all`` reads every name in ``ip netns list`` with no
    look at whether its inode is the harness's own namespace (or another name's): ``done``
    is only consulted by the holder search. So enp12s0f4 is there twice: as (OWN, enp12s0f4),
    whose dev_port 0 is ``seen``, and as (host, enp12s0f4), which ``_ports_unseen`` counts as
    one interface ``elsewhere`` ("one elsewhere may be any port"). wanted - seen = {1}, one
    elsewhere: every port accounted for, and the function is idle on the evidence of port 0
    alone. Taking 0c:00.4 unbinds cxgb4, port 1 goes, and every process on the hard NFS mount
    hangs. Expected: a namespace is read once, whatever its names (a named one of the
    harness's own inode, or of another name's, is the same namespace), so one interface never
    counts for two ports."""
    _t520(lab, seen=(0,))
    _name_the_host_namespace(lab)
    v = HostUsage.read(lab.root, nic_ports={T5: 2}).verdict(T5)
    assert not v.idle, (f"{T5} judged idle with its port 1 shown nowhere, the host's own "
                        f"namespace counted again as 'host': {v.evidence}")
    assert any("dev_port 1" in u for u in v.uses), v.uses


def test_1_control_both_ports_seen_with_the_host_namespace_named_is_idle(lab):
    """Control: both ports down in the host's namespace, the host's namespace named too:
    idle, and so is the plan of its group."""
    _t520(lab, seen=(0, 1))
    _name_the_host_namespace(lab)
    usage = HostUsage.read(lab.root, nic_ports={T5: 2})
    assert usage.verdict(T5).idle, usage.verdict(T5)
    assert plan_group(lab.root, T5, usage, allowed={T5}).safe


# -- 2. a switchdev representor taken for the PF's one port ---------------------------------------


E810 = "0000:0d:00.0"   # Intel E810-C (8086:1593) on ice: one port per function


def _e810_switchdev(host: FakeHost, uplink_seen: bool) -> None:
    """An E810 PF on ice in switchdev mode (``devlink dev eswitch set pci/0000:0d:00.0 mode
    switchdev``) with VF 0's representor ``enp13s0f0npf0vf0`` in the host's namespace, down
    (``phys_port_name`` pf0vf0, ``dev_port`` 0, the PF's ``phys_switch_id``). The uplink,
    ``enp13s0f0np0`` (``phys_port_name`` p0), is in the host's namespace only when
    ``uplink_seen``."""
    host.add_pci("0000:00:1c.5", "8086:a33d", 0x060400, "pcieport", 26)
    host.add_pci(E810, "8086:1593", 0x020000, "ice", 27, parent="0000:00:1c.5")
    names = [("enp13s0f0npf0vf0", "pf0vf0")] + ([("enp13s0f0np0", "p0")] if uplink_seen else [])
    for name, port_name in names:
        host.add_net(name, E810)
        d = host.sys / "class/net" / name
        (d / "dev_port").write_text("0\n")
        (d / "phys_port_name").write_text(f"{port_name}\n")
        (d / "phys_switch_id").write_text("a0369f0d0000\n")


def test_2_a_representor_is_not_the_port_of_a_one_port_function(lab):
    """Host shape: the lab host's E810 (one port per function, ice) is in switchdev mode for
    the lab's OVS-offload work, with one VF whose representor, enp13s0f0npf0vf0, sits in the
    host's namespace, down (the VF is free: on no driver). irdma is not loaded (an
    Ethernet-only host), so nothing else is below the PF. The PF's uplink port, enp13s0f0np0,
    carries the storage network: moved into ``storage``, /scratch NFS-mounted through it, and
    a clean-up's ``ip netns del storage`` left the namespace held by the NFS client alone (the
    shape review 30's finding 2 and 31b's finding 3 name). The inventory lists the E810 as a
    spare NIC (its port was one, before the storage network moved onto it).

    Why it is called idle: ``_ports_unseen`` sees one interface (the representor: the kernel
    puts a VF representor below its PF, ``SET_NETDEV_DEV(repr->netdev,
    ice_pf_to_dev(vf->pf))``), its driver is not one of several ports per function and its
    dev_port is 0: "one port: the interface seen is it". It is not: its ``phys_port_name``
    (pf0vf0) says it stands for VF 0, not for a port of the card (p0), and the port itself
    shows nowhere. The representor is down with no route, socket or upper device: idle.
    Taking 0d:00.0 unbinds ice, the uplink goes with it, and every process on /scratch hangs.
    Expected: an interface whose ``phys_port_name`` names a representor (pfNvfM, pfN, cN...,
    anything but a port pN) is no interface of a port; a function none of whose ports shows
    an interface is unproven, as one with no interface at all is."""
    _e810_switchdev(lab, uplink_seen=False)
    v = HostUsage.read(lab.root).verdict(E810)
    assert not v.idle, (f"{E810} judged idle on its VF representor alone, its uplink port "
                        f"shown nowhere: {v.evidence}")


def test_2_control_the_uplink_down_beside_the_representor_is_idle(lab):
    """Control: the uplink port down in the host's namespace beside the representor: idle."""
    _e810_switchdev(lab, uplink_seen=True)
    v = HostUsage.read(lab.root).verdict(E810)
    assert v.idle, v


# -- 3. a clock's 1PPS out of a card with no programmable pins -------------------------------------


X540 = "0000:03:00.0"   # Intel X540-T2 (8086:1528) on ixgbe, port 0


def _x540_clock(host: FakeHost, assert_line: str) -> None:
    """An X540-T2's port 0 (enp3s0f0, down) on ixgbe with its PTP hardware clock ptp0 below
    it: ``pps_available`` 1, no programmable pins (ixgbe gives the X540 none: ``n_pins`` 0, no
    ``pins/`` folder), and the clock's PPS source pps0 (no parent, ``name`` ptp0) whose
    ``assert`` is ``assert_line`` (``pps``'s ``assert_show``: "seconds.nanoseconds#sequence";
    "0.000000000#0": no pulse ever)."""
    host.add_pci("0000:00:1c.3", "8086:a33b", 0x060400, "pcieport", 19)
    host.add_pci(X540, "8086:1528", 0x020000, "ixgbe", 20, parent="0000:00:1c.3")
    host.add_net("enp3s0f0", X540)
    phc(host, X540, "enp3s0f0", pps_available=1, pins=0, outputs=0)
    pps_source(host, assert_line)


def test_3_a_clock_sending_1pps_out_of_a_pinless_card_is_in_use(lab):
    """Host shape: the lab's timing rack takes its 1PPS from the host's X540-T2: a boot unit
    writes ``echo 1 > /sys/class/ptp/ptp0/pps_enable`` (after ``phc2sys -s CLOCK_REALTIME -c
    ptp0 -O 0`` once, which ends), and ixgbe then drives a pulse per second out of the card's
    SDP0 (``ixgbe_ptp_feature_enable`` -> ``ixgbe_ptp_setup_sdp_X540``: SDP0 as output,
    native Clock Out), to the oscilloscope's trigger and a second host's time card. Port 0 is
    down (a timing card); the inventory lists it as a spare NIC.

    Why it is called idle: review 31b's fix (``_clock_pins``) reads the clock's programmable
    pins for a signal out of the card, but the X540's clock has none (``n_pins`` 0): its
    1PPS is switched on by ``pps_enable``, a write-only file, and no pin says it. The clock's
    PPS source pps0 is held by no process, and its node /dev/ptp0 by none either. What shows
    the pulses is the PPS source's ``assert`` (the time and count of the last pulse, readable
    by anyone: ``...#86400``, a day of them): nothing reads it. The port is down: idle, with
    "2 device node(s) below ... open by no process" as the evidence. Taking 03:00.0 unbinds
    ixgbe, the clock goes and the pulse stops: what takes its reference from it drifts or
    alarms. Expected: a clock below the function whose PPS source has counted pulses
    (``assert``'s sequence above 0, or one that cannot be read) keeps the NIC, named."""
    _x540_clock(lab, "1765083600.000000008#86400")
    v = HostUsage.read(lab.root).verdict(X540)
    assert not v.idle, (f"{X540}, whose clock sends a pulse per second out of SDP0 (pps0: "
                        f"86400 pulses), reads idle: {v.evidence}")
    assert any("pps0" in u or "ptp0" in u for u in v.uses), v.uses


def test_3_control_a_clock_that_never_pulsed_is_idle(lab):
    """Control: the same clock whose PPS source never counted a pulse (``pps_enable`` never
    written): idle."""
    _x540_clock(lab, "0.000000000#0")
    v = HostUsage.read(lab.root).verdict(X540)
    assert v.idle, v


# -- 4. a periodic output of a clock that has no pins -----------------------------------------------


MGBE = "0000:00:1e.4"   # Intel Elkhart Lake mGbE (8086:4b32), stmmac through intel-eth-pci


def _mgbe_clock(host: FakeHost, outputs: int) -> None:
    """The mGbE's port (enp0s30f4, down) with its PTP clock ptp0 below it: stmmac gives it
    ``n_per_out`` = the MAC's PPS outputs (``dma_cap.pps_out_num``), no programmable pins (no
    ``pins/`` folder) and no PPS source."""
    host.add_pci(MGBE, "8086:4b32", 0x020000, "intel-eth-pci", 31)
    host.add_net("enp0s30f4", MGBE)
    d = phc(host, MGBE, "stmmac ptp", pps_available=0, pins=0, outputs=outputs)
    (d / "n_external_timestamps").write_text(f"{outputs}\n")


def test_4_a_pinless_clock_that_can_drive_an_output_is_unproven(lab):
    """Host shape: an industrial lab host (Elkhart Lake) whose second Ethernet, the SoC's
    mGbE on stmmac, is a spare port, down, listed in the inventory; its clock drives the
    lab's 1PPS: a boot unit runs ``testptp -d /dev/ptp0 -p 1000000000`` (PTP_PEROUT_REQUEST
    on output 0, then exits), and ``stmmac_ptp_enable`` -> ``stmmac_flex_pps_config`` keeps
    the MAC's PPS output toggling on its pin to the instrument.

    Why it is called idle: review 31b's fix (``_clock_pins``) looks for a signal out of the
    card in the clock's programmable pins, and this clock has none (stmmac sets
    ``n_per_out``, never ``n_pins``: the ptp core makes no ``pins/`` folder); an output
    requested by ioctl leaves nothing in sysfs, and the process that asked has ended. The
    port is down and /dev/ptp0 is open by no process: idle. Taking 00:1e.4 unbinds the
    driver, the clock goes and the pulse stops. Expected: a clock below the function that can
    drive a periodic output (``n_periodic_outputs`` above 0) which no pin or file shows the
    state of leaves the function unproven, named (the harness cannot read whether one is
    on); one without outputs proves nothing against it."""
    _mgbe_clock(lab, outputs=4)
    v = HostUsage.read(lab.root).verdict(MGBE)
    assert not v.idle, (f"{MGBE}, whose pin-less clock may drive a periodic output nobody "
                        f"can read, reads idle: {v.evidence}")
    assert any("ptp0" in u for u in v.uses), v.uses


def test_4_control_a_clock_with_no_outputs_is_idle(lab):
    """Control: a clock with no periodic output (``n_periodic_outputs`` 0): idle."""
    _mgbe_clock(lab, outputs=0)
    v = HostUsage.read(lab.root).verdict(MGBE)
    assert v.idle, v
