"""--driver libvirt end to end, on the real daemon (qemu:///system) and real QEMU guests: the
NIC scenario through libvirt next to QMP, the scenarios that exist only at this layer
(re-attach of a device just detached, attach after the daemon restarted, a detach the guest
refuses), and libvirt's failures: each a clear harness error, and nothing left behind (no
domain, no QEMU) even when the daemon is killed mid-test."""

import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.core.errors import LabError, UnplugError
from harness.core.waits import wait_until
from harness.guest import checks
from harness.qemu.machine import GuestSpec
from harness.virt import connect, daemon, xml as vx
from harness.virt.domain import DomainGuest, LibvirtCommandError

REPO = Path(__file__).resolve().parents[2]
#: One daemon serves them all, and three of them stop or restart it: on two workers at once, a
#: test met the daemon another had just killed ("the libvirt daemon is not running", a fresh
#: clone's make test, Dec 6). They run one after another, on one worker.
pytestmark = pytest.mark.xdist_group("libvirt-daemon")


@pytest.fixture
def boot(hotplug_session, tmp_path):
    """Boot guests of the built-in image as libvirt domains; each is destroyed at the end."""
    guests = []

    def start(spec: GuestSpec, launch: bool = True, **kw) -> DomainGuest:
        g = DomainGuest(spec, hotplug_session.image, workdir=tmp_path / f"g{len(guests)}",
                        qemu_binary=hotplug_session.qemu_binary, accel=hotplug_session.accel,
                        deadlines=hotplug_session.deadlines, name=f"t{os.getpid()}-{len(guests)}", **kw)
        guests.append(g)
        return g.launch() if launch else g

    yield start
    for g in guests:
        g.close()


def domains() -> list[str]:
    return subprocess.run(["virsh", "-c", connect.URI, "list", "--all", "--name"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.split()


def qemu_of(name: str) -> list[int]:
    """PIDs of QEMU processes libvirt started for domain ``name``."""
    out = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.startswith(f"guest={name},".encode()) for a in argv):
            out.append(int(p.name))
    return out


def plug_nic(guest, device_id: str, net: str) -> None:
    guest.qmp("netdev_add", type="user", id=f"n-{device_id}", net=net)
    guest.device_add("e1000e", device_id, bus=guest.free_bus(), netdev=f"n-{device_id}")


def guest_macs(guest) -> set[str]:
    links = json.loads(guest.shell.succeed("ip -j link show"))
    return {link.get("address") for link in links if link.get("link_type") == "ether"}


def live_mac(guest, device_id: str) -> str:
    element = vx.element_of(guest.live_xml(), guest.qemu_id(device_id))
    assert element is not None, f"the live XML lacks {guest.qemu_id(device_id)}"
    return ET.fromstring(element).find("mac").get("address")


def test_nic_scenario_through_libvirt_on_pc_and_q35(tmp_path, child_env):
    """The NIC scenario itself (tests/scenarios/test_nic.py, unchanged) with --driver libvirt on
    pc and q35: every check passes, and each result says it went through libvirt, with the
    attach and detach latencies libvirt measured."""
    out = tmp_path / "reports"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/scenarios/test_nic.py",
         "-k", "e1000e and not pciehp", "--driver", "libvirt", "--report-dir", str(out),
         "--no-snapshot"], cwd=REPO, env=child_env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "driver=libvirt" in run.stdout and "2 passed" in run.stdout, run.stdout[-2000:]
    results = [json.loads(p.read_text()) for p in out.glob("run-*/results/*.json")]
    assert len(results) == 2
    for r in results:
        assert r["outcome"] == "passed" and r["driver"] == "libvirt", r
        assert r["latencies"]["nic0.device_add"] > 0 and r["latencies"]["nic0.device_del_to_event"] > 0


def test_reattach_a_device_just_detached_and_the_live_xml_agrees_with_the_guest(boot):
    """Detach, then attach the same alias again at once: libvirt takes it, the guest sees the
    NIC again (the MAC in the live XML is the guest's), and the live XML lists it exactly
    while it is plugged."""
    g = boot(GuestSpec(machine="q35"))
    plug_nic(g, "nic0", "10.0.11.0/24")
    mac = live_mac(g, "nic0")
    checks.guest_sees_pci(g, checks.pci_function(g, "nic0"))
    assert mac in guest_macs(g)
    assert g.device_del("nic0").event
    assert "ua-nic0" not in vx.live_aliases(g.live_xml())
    g.shell.wait_until("the NIC to leave the guest", lambda: mac not in guest_macs(g), 30)
    plug_nic(g, "nic0", "10.0.12.0/24")
    again = live_mac(g, "nic0")
    g.shell.wait_until("the re-attached NIC in the guest", lambda: again in guest_macs(g), 30)
    checks.monitor_shows(g, "nic0")
    assert g.device_del("nic0").event
    checks.monitor_lacks(g, "nic0")


def test_attach_after_the_daemon_restarted_with_the_domain_running(boot):
    """libvirtd restarts while the guest runs: the domain lives on, the harness finds it through
    a new connection, and a NIC attached afterwards works in the guest and detaches."""
    g = boot(GuestSpec(machine="pc"))
    before = g.qemu_pid
    daemon.restart()
    assert g.qemu_pid == before and qemu_of(g.domain_name) == [before]
    plug_nic(g, "nic0", "10.0.13.0/24")
    checks.guest_sees_pci(g, checks.pci_function(g, "nic0"))
    assert g.device_del("nic0").event


def test_a_detach_the_guest_refuses_is_libvirts_timeout_and_the_harness_verdict(boot):
    """A guest booted with acpi=off never answers pc's eject request: libvirt's detach is
    accepted, no device-removed comes, and the verdict is "guest-refused" while libvirt answers
    and the live XML still lists the device."""
    g = boot(GuestSpec(machine="pc", kernel_args=("acpi=off",)))
    plug_nic(g, "nic0", "10.0.14.0/24")
    with pytest.raises(UnplugError) as info:
        g.device_del("nic0", timeout=5, grace=2)
    assert info.value.verdict == "guest-refused", str(info.value)
    assert "live XML still lists" in info.value.message
    assert "ua-nic0" in vx.live_aliases(g.live_xml())


def test_daemon_killed_mid_test_leaves_no_domain_and_no_qemu(boot):
    """libvirtd is killed (SIGKILL) while the guest runs with a NIC attached: the harness's next
    libvirt call is a lab error that says the daemon stopped answering; closing the guest ends
    its QEMU by its PID (checked to be this domain's); once the daemon is back and has
    reconnected to its domains, it knows no such domain. (It reconnects in a thread per domain
    after it answers: the domain is listed until that thread found its QEMU gone, 0-2 s here.)"""
    g = boot(GuestSpec(machine="pc"))
    plug_nic(g, "nic0", "10.0.15.0/24")
    pid = g.qemu_pid
    daemon.stop(signal.SIGKILL)
    try:
        with pytest.raises(LabError, match="stopped answering|not running"):
            g.device_del("nic0")
        g.close()
        assert qemu_of(g.domain_name) == [], f"QEMU {pid} of {g.domain_name} still runs"
    finally:
        daemon.start()
    wait_until(f"libvirt to drop {g.domain_name} once it reconnected",
               lambda: g.domain_name not in domains(), g.deadlines.scaled(30), interval=0.5)


def test_libvirt_failures_are_clear_harness_errors(boot, tmp_path):
    """No daemon at the address; a domain name already taken; an element libvirt rejects."""
    with pytest.raises(LabError, match="libvirt daemon is not running") as info:
        connect.connection(f"qemu:///system?socket={tmp_path}/none.sock")
    assert "make libvirt-daemon" in info.value.hint
    g = boot(GuestSpec(machine="pc"))
    twin = boot(GuestSpec(machine="pc"), launch=False)
    twin.domain_name = g.domain_name
    twin._prepare()
    with pytest.raises(Exception, match="already exists") as info:
        twin.launch()
    assert f"virsh destroy {g.domain_name}" in str(info.value)
    assert qemu_of(g.domain_name) == [g.qemu_pid]  # the first one is untouched
    with pytest.raises(LibvirtCommandError) as refused:
        g.device_add("e1000e", "nic0", bus="pci.0", addr="0x01")  # slot 1: the ISA bridge's
    assert "libvirt" in str(refused.value) and refused.value.qemu_desc
    assert "ua-nic0" not in vx.live_aliases(g.live_xml())
