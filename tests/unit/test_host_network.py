"""harness.host.network: what the host needs beyond the plain default route and inbound SSH,
failing closed. Each case is a fake lab host (tests/unit/fakesysfs.py) with what `ip -j`
would print, and the binder refusing before any write."""

import json
import os

import pytest

from harness.core.errors import HostDeviceError
from harness.host.binding import VfioBinder
from harness.host.inventory import parse_inventory
from harness.host.network import namespace_problem
from harness.host.safety import critical_devices

from . import fakesysfs

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
PORT0, PORT1 = "0000:05:00.0", "0000:05:00.1"
ALLOWED = {"05:00.0", "05:00.1", "06:00.0", "07:00.0", "02:00.0", "00:1f.6", "00:17.0"}
#: The lab host's routes as `ip -j route show table all` prints them (main table: no "table").
MAIN = [{"dst": "default", "gateway": "192.168.1.1", "dev": "enp2s0", "flags": []},
        {"dst": "192.168.1.0/24", "dev": "enp2s0", "scope": "link", "flags": []},
        {"dst": "10.0.5.0/24", "dev": "enp5s0f1", "scope": "link", "flags": []},
        {"type": "local", "dst": "127.0.0.1", "dev": "lo", "table": "local", "flags": []}]


def ip(host, what: str, data) -> None:
    host.file(f"ip/{what}.json", json.dumps(data))


def no_tcp(host) -> None:
    host.proc("net/tcp", "  sl  local_address rem_address   st\n")


def refused(host, bdf: str, **kw) -> HostDeviceError:
    journal = host.root / "var/lib/hotplug-harness/vfio-journal.json"
    before = host.snapshot()
    with pytest.raises(HostDeviceError) as e:
        VfioBinder(host.sysfs(), journal=journal, **kw).bind(bdf, ALLOWED)
    assert host.writes == [] and host.snapshot() == before and not journal.exists()
    return e.value


def test_default_route_of_another_table_is_protected(lab):
    """Policy routing: the main table's default is enp2s0, table 100's is enp5s0f0."""
    ip(lab, "route", MAIN + [{"dst": "default", "gateway": "10.0.6.1", "dev": "enp5s0f0",
                              "table": "100", "flags": []}])
    ip(lab, "rule", [{"priority": 0, "src": "all", "table": "local"},
                     {"priority": 100, "from": "10.0.6.0/24", "table": "100"}])
    # (failing closed, the SSH client's address counts in every table whose routes reach it)
    assert "carries the default route of table 100 (enp5s0f0)" in critical_devices(lab.root)[PORT0]
    e = refused(lab, "05:00.0")
    assert "carries the default route of table 100 (enp5s0f0)" in e.message


def test_output_device_of_a_rule_is_protected(lab):
    ip(lab, "route", MAIN)
    ip(lab, "rule", [{"priority": 90, "src": "all", "oif": "enp5s0f0", "table": "90"}])
    assert critical_devices(lab.root)[PORT0] == [
        "is the output device of a routing rule (priority 90) (enp5s0f0)"]


def test_vrf_default_route_protects_its_enslaved_nic(lab):
    lab.add_net("blue", lower=["enp5s0f0"])
    ip(lab, "route", MAIN + [{"dst": "default", "dev": "blue", "table": "blue", "flags": []}])
    assert "carries the default route of table blue (blue)" in critical_devices(lab.root)[PORT0]


def test_tunnel_resolves_to_the_nic_that_reaches_its_endpoint(lab):
    """A default route through a GRE tunnel: the physical NIC is the one the route to the
    tunnel's remote end goes through (enp5s0f1 for 10.0.5.9), not the tunnel itself."""
    no_tcp(lab)
    lab.add_net("gre1")
    ip(lab, "route", [r for r in MAIN if r["dst"] != "default"]
       + [{"dst": "default", "dev": "gre1", "flags": []}])
    ip(lab, "link", [{"ifname": "gre1", "linkinfo": {"info_kind": "gre",
                                                     "info_data": {"remote": "10.0.5.9"}}}])
    critical = critical_devices(lab.root, ssh_connection="")
    assert critical[PORT1] == ["carries the default route (gre1 through gre gre1 (endpoint "
                               "10.0.5.9 via enp5s0f1))"]
    assert PORT0 not in critical and "0000:02:00.0" not in critical


def test_vpn_with_no_readable_endpoint_fails_closed(lab):
    """A default route through WireGuard: its endpoint is not in `ip link`, so every physical
    NIC with a route counts as carrying it."""
    no_tcp(lab)
    lab.add_net("wg0")
    ip(lab, "route", [r for r in MAIN if r["dst"] != "default"]
       + [{"dst": "default", "dev": "wg0", "flags": []}])
    ip(lab, "link", [{"ifname": "wg0", "linkinfo": {"info_kind": "wireguard"}}])
    critical = critical_devices(lab.root, ssh_connection="")
    for bdf in (PORT1, "0000:02:00.0"):
        assert critical[bdf] == ["carries the default route (wg0 through wireguard wg0, whose "
                                 "endpoint cannot be read: every physical interface with a "
                                 "route may carry it)"], bdf
    assert PORT0 not in critical  # no route through it
    assert "whose endpoint cannot be read" in refused(lab, "05:00.1").message


def test_nic_to_a_network_filesystem_server_is_protected(lab):
    no_tcp(lab)
    lab.proc("mounts", "/dev/sda2 / ext4 rw 0 0\n10.0.5.20:/export /mnt/nfs nfs4 rw 0 0\n")
    assert critical_devices(lab.root, ssh_connection="")[PORT1] == [
        "carries the nfs4 mount /mnt/nfs (10.0.5.20:/export) (enp5s0f1)"]


def test_nic_of_an_iscsi_session_is_protected(lab):
    no_tcp(lab)
    lab.file("sys/class/iscsi_connection/connection1:0/persistent_address", "10.0.5.30\n")
    assert critical_devices(lab.root, ssh_connection="")[PORT1] == [
        "carries the iSCSI session to 10.0.5.30 (enp5s0f1)"]


def test_nic_of_an_outbound_connection_is_protected(lab):
    """A CI agent's long-lived connection to its server (10.0.5.40:443) from 10.0.5.1:40000."""
    lab.proc("net/tcp", "  sl  local_address rem_address   st\n"
                        "   0: 0105000A:9C40 2805000A:01BB 01 00000000:00000000 00:0 0 0 0\n")
    assert critical_devices(lab.root, ssh_connection="")[PORT1] == [
        "carries an established TCP connection with 10.0.5.40:443 (local port 40000) (enp5s0f1)"]


def test_binding_is_refused_outside_the_hosts_network_namespace(lab):
    (lab.root / "proc/self/ns").mkdir(parents=True)
    (lab.root / "proc/1/ns").mkdir(parents=True)
    os.symlink("net:[4026532301]", lab.root / "proc/self/ns/net")
    os.symlink("net:[4026531840]", lab.root / "proc/1/ns/net")
    assert "network namespace net:[4026532301], not the host's" in namespace_problem(lab.sysfs())
    e = refused(lab, "05:00.0")
    assert e.message.startswith("refusing to take 0000:05:00.0: this process is in network "
                                "namespace net:[4026532301]"), e.message
    assert "not in a container" in e.hint


def test_binding_is_refused_in_a_container(lab):
    lab.file(".dockerenv")
    assert "/.dockerenv exists" in refused(lab, "05:00.0").message


def test_zfs_makes_every_storage_controller_critical_unless_the_inventory_clears_it(lab):
    lab.proc("mounts", "rpool/ROOT/debian / zfs rw 0 0\n")
    lab.proc("swaps", "Filename Type Size Used Priority\n")
    critical = critical_devices(lab.root)
    for bdf in ("0000:00:17.0", "0000:06:00.0"):
        assert critical[bdf] == ["may hold / (rpool/ROOT/debian, zfs): the harness cannot tell "
                                 "which controller does (if this one does not, say so in its "
                                 "inventory entry: no_host_filesystems = true)"]
    assert "may hold /" in refused(lab, "06:00.0").message
    inventory = parse_inventory('[[device]]\nrole = "sata-controller"\nbdf = "06:00.0"\n'
                                'no_host_filesystems = true\n', root=lab.root)
    assert inventory.cleared_storage() == {"0000:06:00.0"}
    assert "0000:06:00.0" not in critical_devices(lab.root,
                                                  cleared_storage=inventory.cleared_storage())
    assert "no_host_filesystems = true" in inventory.to_toml()
