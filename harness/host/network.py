"""Which network interfaces the host needs, failing closed.

An interface is needed when it carries a default route in any routing table, is the output
device of a routing rule, carries an established TCP connection (an SSH session, a CI agent,
NFS, iSCSI, NBD or Ceph over TCP), reaches the server of a network filesystem or an iSCSI
session, or lies under one that does: bridge ports, bond slaves, VLANs and macvlans through
their ``lower_*`` links, ip tunnels through the route to their endpoint. A VPN or tun device
whose endpoint cannot be read makes every physical interface with a route needed. Routes come
from ``ip -j route show table all`` (every table; policy routing and VRFs included), falling
back to ``/proc/net/route`` (the main table) when ``ip`` cannot be run.

:func:`namespace_problem` says why binding must not happen at all: a process outside the host's
network namespace (or in a container) sees routes and connections that are not the host's.

Everything is read under a root: on ``/`` the ``ip`` tool is run; under a test's fake root its
output is read from ``<root>/ip/<what>.json``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
from pathlib import Path
from typing import NamedTuple

from harness.host.sysfs import Sysfs, bdfs_in_path, usb_devices_in_path

#: Route types that send nothing anywhere.
_NOT_FORWARDING = {"local", "broadcast", "anycast", "multicast", "unreachable", "prohibit",
                   "blackhole", "throw", "nat"}
#: Link kinds whose traffic leaves through nothing physical.
_NOWHERE = {"dummy", "ifb", "nlmon", "vcan"}
#: Network filesystems and how their mount source names the server(s).
_NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "ceph", "glusterfs"}
_IP_QUERIES = {"route": ["route", "show", "table", "all"],
               "route6": ["-6", "route", "show", "table", "all"],
               "rule": ["rule"], "rule6": ["-6", "rule"], "link": ["-d", "link", "show"]}


class Route(NamedTuple):
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    dev: str
    table: str


class NetState:
    """The host's routes, rules and links, read once."""

    def __init__(self, fs: Sysfs):
        self.fs = fs
        self.routes: list[Route] = []
        self.rules: list[dict] = []
        self.links: dict[str, dict] = {}
        routes = (_ip_json(fs, "route") or []) + (_ip_json(fs, "route6") or [])
        if routes:
            self.routes = [r for r in map(_route, routes) if r is not None]
        else:
            self.routes = _proc_routes(fs)
        self.rules = (_ip_json(fs, "rule") or []) + (_ip_json(fs, "rule6") or [])
        self.links = {link["ifname"]: link for link in _ip_json(fs, "link") or [] if "ifname" in link}

    def lookup(self, addr) -> set[str]:
        """The interfaces the host could send to ``addr`` through: the best route of every
        table (the rules decide between tables; failing closed, all count)."""
        best: dict[str, Route] = {}
        for r in self.routes:
            if r.network.version == addr.version and addr in r.network:
                b = best.get(r.table)
                if b is None or r.network.prefixlen > b.network.prefixlen:
                    best[r.table] = r
        return {r.dev for r in best.values()}

    def physical(self, iface: str) -> bool:
        """A PCI or USB device is on the interface's sysfs path (a virtual one's is
        /sys/devices/virtual/net/...)."""
        link = self.fs.sys("class", "net", iface)
        if not link.exists():
            return False
        path = os.path.realpath(link)
        return bool(bdfs_in_path(path) or usb_devices_in_path(path))

    def routed_physical(self) -> list[str]:
        return sorted({r.dev for r in self.routes if self.physical(r.dev)})


def _ip_json(fs: Sysfs, what: str) -> list | None:
    if fs.root != Path("/"):
        text = fs.read(fs.path("ip", f"{what}.json"))
    else:
        try:
            text = subprocess.run(["ip", "-j", *_IP_QUERIES[what]], capture_output=True,
                                  text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            text = None
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    return data if isinstance(data, list) else None


def _route(r: dict) -> Route | None:
    if r.get("type", "unicast") in _NOT_FORWARDING or "dev" not in r:
        return None
    dst = r.get("dst", "default")
    try:
        if dst == "default":
            v6 = ":" in str(r.get("gateway", "")) or r.get("family") == "inet6"
            net = ipaddress.ip_network("::/0" if v6 else "0.0.0.0/0")
        else:
            net = ipaddress.ip_network(dst, strict=False)
    except ValueError:
        return None
    return Route(net, r["dev"], str(r.get("table", "main")))


def _proc_routes(fs: Sysfs) -> list[Route]:
    out = []
    for line in (fs.read(fs.proc("net", "route")) or "").splitlines()[1:]:
        f = line.split()
        if len(f) < 8 or not int(f[3], 16) & 0x1 or int(f[3], 16) & 0x200:  # RTF_UP, REJECT
            continue
        dest = ipaddress.IPv4Address(int(f[1], 16).to_bytes(4, "little"))
        prefix = bin(int(f[7], 16)).count("1")
        out.append(Route(ipaddress.IPv4Network(f"{dest}/{prefix}", strict=False), f[0], "main"))
    for line in (fs.read(fs.proc("net", "ipv6_route")) or "").splitlines():
        f = line.split()
        if len(f) < 10 or f[9] == "lo" or not int(f[8], 16) & 0x1 or int(f[8], 16) & 0x200:
            continue
        net = ipaddress.IPv6Address(bytes.fromhex(f[0]))
        out.append(Route(ipaddress.IPv6Network(f"{net}/{int(f[1], 16)}", strict=False), f[9], "main"))
    return out


# -- what the host needs --------------------------------------------------------------------------


def needed_interfaces(fs: Sysfs, ssh_connection: str) -> tuple[dict[str, list[str]], NetState]:
    """Interface -> why the host needs it (before resolving to physical devices), and the
    network state it was read from."""
    net = NetState(fs)
    out: dict[str, list[str]] = {}

    def need(iface: str, why: str) -> None:
        if iface != "lo" and why not in out.setdefault(iface, []):
            out[iface].append(why)

    for r in net.routes:
        if r.network.prefixlen == 0:
            need(r.dev, "carries the default route" + (f" of table {r.table}" if r.table != "main" else ""))
    for rule in net.rules:
        if rule.get("oif") and rule["oif"] != "lo":
            need(rule["oif"], f"is the output device of a routing rule (priority {rule.get('priority')})")
    for addr, why in _peers(fs, ssh_connection):
        for iface in net.lookup(addr):
            need(iface, why)
    return out, net


def _peers(fs: Sysfs, ssh_connection: str):
    """(address, why) of every peer the host is talking to: SSH, established TCP, network
    filesystem servers, iSCSI targets."""
    fields = ssh_connection.split()
    if len(fields) == 4:
        try:
            peer = _plain(ipaddress.ip_address(fields[0].split("%")[0]))
            yield peer, f"carries the SSH session from {peer} ($SSH_CONNECTION)"
        except ValueError:
            pass
    ssh_ports = {22} | ({int(fields[3])} if len(fields) == 4 and fields[3].isdigit() else set())
    for local, remote in _established(fs):
        if local[1] in ssh_ports:
            yield remote[0], f"carries the SSH session from {remote[0]}"
        else:
            yield remote[0], (f"carries an established TCP connection with {_ep(remote)} "
                              f"(local port {local[1]})")
    for mount in _network_mounts(fs):
        for addr in _servers(mount, resolve=fs.root == Path("/")):
            yield addr, f"carries the {mount[2]} mount {mount[1]} ({mount[0]})"
    for conn in sorted(fs.sys("class", "iscsi_connection").glob("*")):
        for name in ("persistent_address", "address"):
            text = fs.read(conn / name)
            try:
                yield _plain(ipaddress.ip_address(text)), f"carries the iSCSI session to {text}"
                break
            except ValueError:
                continue


def _ep(endpoint) -> str:
    addr, port = endpoint
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def _established(fs: Sysfs):
    for name in ("tcp", "tcp6"):
        for line in (fs.read(fs.proc("net", name)) or "").splitlines()[1:]:
            f = line.split()
            if len(f) < 4 or f[3] != "01":  # ESTABLISHED
                continue
            local, remote = _hex_endpoint(f[1]), _hex_endpoint(f[2])
            if local and remote and not remote[0].is_loopback:
                yield local, remote


def _hex_endpoint(text: str):
    try:
        addr_hex, port_hex = text.split(":")
        raw = bytes.fromhex(addr_hex)
        # /proc/net/tcp{,6}: the address as 32-bit words in host (little-endian) order.
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
        return _plain(ipaddress.ip_address(raw)), int(port_hex, 16)
    except ValueError:
        return None


def _plain(addr):
    """An IPv4-mapped IPv6 address as the IPv4 address it is."""
    return (addr.ipv4_mapped or addr) if addr.version == 6 else addr


def _network_mounts(fs: Sysfs) -> list[tuple[str, str, str]]:
    """(source, mountpoint, fstype) of mounted network filesystems."""
    out = []
    for line in (fs.read(fs.proc("mounts")) or "").splitlines():
        f = line.split()
        if len(f) >= 3 and f[2] in _NETWORK_FS:
            out.append((f[0], f[1], f[2]))
    return out


def _servers(mount: tuple[str, str, str], resolve: bool) -> list:
    """The server addresses a network mount's source names (``srv:/export``, ``//srv/share``,
    ``mon1:6789,mon2:6789:/``); host names are resolved on the real host only."""
    source = mount[0]
    if source.startswith("//"):
        hosts = [source[2:].split("/", 1)[0]]
    else:
        head = source.rsplit(":/", 1)[0] if ":/" in source else source.split(":", 1)[0]
        hosts = [h for h in head.split(",") if h]
    out = []
    for host in hosts:
        host = host.strip("[]")
        host = re.sub(r":\d+$", "", host) if host.count(":") == 1 else host
        try:
            out.append(_plain(ipaddress.ip_address(host)))
        except ValueError:
            if resolve:
                try:
                    out += [_plain(ipaddress.ip_address(a[4][0].split("%")[0]))
                            for a in socket.getaddrinfo(host, None)]
                except (OSError, ValueError):
                    pass
    return out


# -- from interfaces to physical devices ----------------------------------------------------------


def physical_paths(fs: Sysfs, net: NetState, iface: str, seen: set[str] | None = None) -> tuple[list[str], str]:
    """Resolved sysfs paths of the physical devices under ``iface``, and a note on how they
    were found ("" when the interface itself is physical or a plain bridge/bond/VLAN)."""
    seen = set() if seen is None else seen
    if iface in seen:
        return [], ""
    seen.add(iface)
    link = fs.sys("class", "net", iface)
    if not link.exists():
        return [], ""
    paths = [os.path.realpath(link)]
    lowers = sorted(link.glob("lower_*"))
    for lower in lowers:
        paths += physical_paths(fs, net, os.path.basename(os.path.realpath(lower)), seen)[0]
    if net.physical(iface) or lowers:
        return paths, ""
    info = net.links.get(iface, {})
    kind = (info.get("linkinfo") or {}).get("info_kind", "")
    if kind in _NOWHERE or iface == "lo":
        return paths, ""
    remote = ((info.get("linkinfo") or {}).get("info_data") or {}).get("remote")
    under = {info["link"]} if info.get("link") else set()
    try:
        under |= net.lookup(_plain(ipaddress.ip_address(remote))) if remote else set()
    except ValueError:
        pass
    if under:
        for dev in sorted(under):
            paths += physical_paths(fs, net, dev, seen)[0]
        return paths, f" through {kind or 'tunnel'} {iface} (endpoint {remote or 'link'} via {', '.join(sorted(under))})"
    # A VPN or tun device whose endpoint cannot be read: any routed physical NIC may carry it.
    for dev in net.routed_physical():
        paths += physical_paths(fs, net, dev, seen)[0]
    return paths, (f" through {kind or 'virtual device'} {iface}, whose endpoint cannot be read: "
                   "every physical interface with a route may carry it")


# -- namespaces ---------------------------------------------------------------------------------


def namespace_problem(fs: Sysfs) -> str | None:
    """Why this process must not bind host devices at all, or None: it is outside the host's
    network namespace or in a container, so the routes and connections it can see are not the
    host's and the checks above would prove nothing."""
    try:
        mine = os.readlink(fs.proc("self", "ns", "net"))
        init = os.readlink(fs.proc("1", "ns", "net"))
        if mine != init:
            return (f"this process is in network namespace {mine}, not the host's ({init}, "
                    "PID 1's): the routes and connections it sees are not the host's")
    except OSError:
        pass
    for marker in (".dockerenv", "run/.containerenv"):
        if fs.path(marker).exists():
            return (f"this runs in a container (/{marker} exists): the routes and connections "
                    "it sees are the container's, not the host's")
    cgroup = fs.read(fs.proc("self", "cgroup")) or ""
    if re.search(r"docker|lxc|kubepods|containerd|libpod", cgroup):
        return ("this runs in a container (its cgroup says so): the routes and connections it "
                "sees are the container's, not the host's")
    return None
