"""The host's network interfaces in every network namespace, read to prove a NIC idle.

A network interface (netdev) is *idle* when it has no upper device (a bridge, bond, OVS or VRF
master; a VLAN, macvlan or ipvlan on top of it; a VXLAN or HSR/PRP device bound to it), no route
in any routing table of its namespace (ECMP ``nexthops`` included, and one whose ``encap`` sends
into it: SRv6 ``seg6local``'s ``oif``, ``xfrm``'s ``link_dev``) nor in its MPLS label table, no
VXLAN forwarding or multicast (MDB) entry sent ``via`` it, no MPTCP endpoint on it (kept with
its index through the unregister), no IPsec (xfrm) policy whose selector is restricted to it
(``dev``; read where ``xfrm_user`` is loaded or built in), no socket bound to it or using its
address (a connection from it, which ``ss`` prints with no ``%ifname``; SCTP ones too where
``sctp`` is loaded), no multicast routing interface (VIF), no multicast group joined on it other
than the kernel's own (/proc/net/igmp and igmp6: a receiver's join by its index), no pktgen
thread that has it, no ATA-over-Ethernet disk found through it (its ``netif``, where ``aoe`` is
loaded: the driver holds it until ``aoe-flush``), no software RDMA device over it (Soft-RoCE's
``rxe``, Soft-iWARP's ``siw``, whatever its port's state: the unbind unregisters it for good;
read where ib_core is there, as asking would load it), and no protocol handler bound to it
(/proc/net/ptype: a TIPC bearer), no tc or nftables hook on it (a qdisc someone configured, any
but the kernel's own of handle ``0:``: a classful root with its filters, shaping alone, an
``ingress``/``clsact``; a filter on a default root that takes one; a filter on any link's root
or hook matching it as its input device, ``indev``; a tcx program (listed by a ``bpftool`` of
7.3 or later: an older one lists none), the target of a ``tc mirred`` action on any port, a
chain or flowtable hooked on it, its devices read from ``nft list chains`` where ``nft -j``
names none, a ``dup``/``fwd`` to it from a rule on any port, a rule matching it by its index,
``iif``/``oif`` (a map keyed by it anywhere in a statement, ``snat to oif map``, and a ``fib``
``oif`` compared with it, included), named sets of ``iface_index`` read for their elements: each
kept through a down and deleted, or left sending to or matching nothing, at the unbind; each
read only where its module is loaded or built in, as asking would load it, but the qdiscs, a
dump that loads none), and is down or has no address at all (an IPv6 link-local address counts:
SSH may run over it).
What cannot be read (``ip`` or ``ss`` missing, ``tc``, ``nft``, ``bpftool`` or ``bridge``
where they are needed, a namespace the harness cannot enter, a device in another namespace
whose lower device cannot be told, a software RDMA device tied to no interface read, an AoE
disk whose ``netif`` names none, a peer nsid of the harness's namespace that is none read: one
only the kernel holds; an NFS mount, Ceph RBD disk or NVMe-oF controller whose client no
namespace read accounts for: :func:`_hidden_clients`) makes every interface unproven:
:attr:`NetView.problems`.

Namespaces: the harness's own, every named one (``ip -all netns``, ``/var/run/netns``), and
every other one anything holds: a process lives in it (a container's, ``/proc/PID/ns/net``),
one of its threads does (``/proc/PID/task/TID/ns/net``), it holds it by an open fd
(``net:[N]``, or a path: the file opened through its bind mount), or an nsfs file is
bind-mounted for it anywhere (``nsfs`` lines of every mount namespace's ``mountinfo``, those
no process is in included: :mod:`harness.host.nsholders` visits them); those are entered
through an ``O_PATH`` fd proven to be that namespace (``nsenter --net=/proc/self/fd/N``),
never by path, all opened as soon as the holders are found (so none can go away while it is
read). A socket or tun fd holds the namespace the kernel names for it (``SIOCGSKNS`` on a
copy taken with ``pidfd_getfd``), entered through that fd. One that cannot be read, or a
place that cannot be searched, makes every interface unproven; one whose way in went away
between being seen and being entered (a container that ended, a name deleted) is looked for
again in a new search of every holder: read where it is held now, or gone (held by nothing,
it holds no interface), and unproven only if it went away in every search.

Everything is read under a root: on ``/`` the tools are run; under a test's fake root their
output is read from files: ``<root>/ip/<what>.json`` for the harness's own namespace,
``<root>/ip/netns/<name>/<what>.json`` for a named one, ``ip/pidns/<pid>/`` for a process's,
``ip/nsfs/<inode>/`` for one entered through a file,
``ip/netns.json``, ``ip/netns-list-id.json`` (``ip -j netns list-id``; a namespace's nsid in
its ``nsid`` file), ``nfsfs-volumes.txt`` (another one's /proc/net/nfsfs/volumes, where
``nfs`` is there and an NFS mount is), ``ss.txt``, ``bridge-fdb-<vxlan>.json`` and
``bridge-mdb-<vxlan>.json``
(``bridge -j fdb|mdb show dev X``, read for each VXLAN), ``mpls.json`` (``ip -f mpls
route``, read when ``proc/sys/net/mpls/platform_labels`` exists), ``mptcp.json`` (``ip mptcp
endpoint show``, read when ``proc/sys/net/mptcp`` exists), ``xfrm-policy.txt`` (``ip xfrm
policy show``, read where ``xfrm_user`` is) and ``packet.txt`` (``/proc/net/packet``; and
``ptype.txt``, ``ip_mr_vif.txt``, ``ip6_mr_vif.txt``, ``igmp.txt``, ``igmp6.txt``, read
when the harness's own ``proc/net`` has that file) likewise; ``rdma-link.json`` (``rdma -j
link show``, where ``sys/class/infiniband`` lists a device or ib_core shares none; without
it, as on a host with no ``rdma``, sysfs is read); ``tc-qdisc.json`` where a port
sits on a device; ``tc-filter-<link>-<hook|handle|root>.json`` for a qdisc of any link that
can hold filters; ``tc-mirred.json``, ``bpftool-net.json`` (with ``bpftool-version.json``) and
``nft-ruleset.json`` (and ``nft-chains.txt``/``nft-flowtables.txt``,
``nft-set|map-<family>-<table>-<name>.json``) only when their module says there can be
something, or, for tcx, the kernel: on the host its answer to ``BPF_PROG_QUERY`` at
``BPF_TCX_INGRESS`` of ``lo`` (EINVAL: no tcx, whatever its release says), under a fake
root a 6.6+ ``osrelease``.

    >>> view = NetView.read(Sysfs("/"))                 # doctest: +SKIP
    >>> view.use_of(Netdev(OWN, "enp5s0f0"))
    ([], 'enp5s0f0: down, no route in any table, no upper device, no socket bound to it')
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

from harness.core.locks import flock_within
from harness.core.paths import check_search_path, open_nofollow
from harness.core.text import shown
from harness.host.nsholders import (PROC_NET, Identity, MountVisits, fd_namespace,
                                    more_open_files, node_holds_namespace, nsfs_mounts,
                                    open_namespace, proc_net_problems, procfs_devices,
                                    ring_problems, socket_namespaces, tap_majors, went_away)
from harness.host.storage import (FDS_BUDGET, FORK_TABLE_MIN, MAX_FDS_READ, Budget, _built_in,
                                  _copied, _has_children, _link, _loaded, _parent_table,
                                  kernel_lines, mountinfos, tables_budget, tables_within, tasks_of,
                                  thread_tables, unescape_mountinfo)
from harness.host.sysfs import Sysfs

#: The harness's own network namespace, as :class:`NetView` names it.
OWN = ""
_IP = {"link": ["-j", "-d", "link", "show"], "addr": ["-j", "addr", "show"],
       "route": ["-j", "route", "show", "table", "all"],
       "route6": ["-j", "-6", "route", "show", "table", "all"]}
_SS = ["ss", "-H", "-a", "-n", "-t", "-u", "-w"]
#: Kinds of link that lie in another namespace than their peer and carry nothing physical.
_PEERED_VIRTUAL = {"veth", "vxcan", "netkit"}
#: ``ss``: a socket bound to (or scoped to) an interface prints ``addr%ifname:port``.
_SCOPED = re.compile(r"%([^\s:\]]+)")


class Netdev(NamedTuple):
    namespace: str          # OWN or the named namespace
    name: str

    def __str__(self) -> str:
        return self.name + (f" (netns {self.namespace})" if self.namespace else "")


class Namespace:
    """One namespace's links, addresses, routes and sockets, or the reasons it is unreadable.
    ``name``: OWN, a named namespace, or how it is held (an unnamed one: ``pid N``, a
    container's, entered through a process in it; ``nsfs mount PATH``...), unique in a
    :class:`NetView` (:func:`_told_apart`); ``enter``: the argv prefix that runs a command in
    it; ``fake``: where a test's fake root keeps the tools' output for it."""

    def __init__(self, name: str, enter: list[str], ip: list[str], fake: Path,
                 fds: tuple[int, ...] = ()):
        self.name, self.enter, self.ip, self.fake = name, enter, ip, fake
        #: What it is (``[N]``: its nsfs inode; None: not known), which tells it from another
        #: of the same name: two containers' ``ip netns add test`` are both ``nsfs mount
        #: /run/netns/test``, each in its own mount namespace.
        self.ident: str | None = None
        #: Its nsid in the harness's own namespace (RTM_GETNSID with its fd; None: none
        #: assigned, or not told), matched against ``ip netns list-id`` (:func:`_unheld_peers`).
        self.nsid: int | None = None
        #: fds the commands that enter it inherit (``nsenter --net=/proc/self/fd/N``)
        self.fds = fds
        #: When all its commands must have ended (``time.monotonic()``; None: each has
        #: :data:`RUN_TIMEOUT`): what is left of the budget it is read within.
        self.deadline: float | None = None
        self.links: dict[str, dict] = {}
        self.addresses: dict[str, list[str]] = {}
        self.routes: dict[str, list[str]] = {}
        self.sockets: dict[str, list[str]] = {}
        #: Every ``ss`` socket by its local address (no port, no ``%ifname``): (state, local,
        #: peer, the line), what a port's own address is matched against.
        self.local: dict[str, list[tuple[str, str, str, str]]] = {}
        #: What the kernel keeps on an interface with no socket (a multicast VIF, a protocol
        #: handler bound to it, a group joined on it; tc and nftables hooks), by interface:
        #: :func:`_read_kernel_users`, :func:`_read_multicast`, :func:`_read_tc`,
        #: :func:`_read_nft`.
        self.kernel_users: dict[str, list[str]] = {}
        #: A tc mirred action's index -> the port and hook whose filter holds it, as far as
        #: the filters read show (:func:`_tc_filters`): what a mirror's target is told it
        #: is taken from.
        self.mirred_from: dict[int, str] = {}
        #: Software RDMA devices (:func:`_read_rdma`) listed here, and those of them whose
        #: port names an interface of this namespace: one tied to none anywhere is a problem
        #: (:func:`_rdma_untied`).
        self.rdma_seen: set[str] = set()
        self.rdma_tied: set[str] = set()
        self.problems: list[str] = []


class NetView:
    """Every namespace the harness can read, read once."""

    def __init__(self, fs: Sysfs, namespaces: list[Namespace], problems: list[str]):
        self.fs = fs
        self.namespaces = {ns.name: ns for ns in namespaces}
        problems = problems + [p for ns in namespaces for p in ns.problems]
        #: Interfaces the kernel sends its log through (netconsole: no socket, no process), by
        #: name or by MAC address.
        self.netconsoles = _netconsoles(fs, problems)
        #: Interface name (the harness's namespace: AoE runs in the initial one only) -> the AoE
        #: disks found through it, each holding a reference to it (:func:`_aoe_netifs`).
        self.aoe = _aoe_netifs(fs, problems)
        #: (namespace, link) -> the resolved sysfs path of the device ``ip -d`` puts it on.
        self.parents: dict[tuple[str, str], str] = _parents(fs, namespaces, problems)
        #: Why no interface can be proven idle (empty: all was read), as shown to people: a
        #: name that is not UTF-8 spelt ``\xff`` (:func:`~harness.core.text.shown`).
        self.problems = [shown(p) for p in problems]

    @classmethod
    def read(cls, fs: Sysfs) -> "NetView":
        problems: list[str] = []
        with more_open_files():  # (an fd of each namespace a socket holds is kept until read)
            spaces = _told_apart(_namespaces(fs, problems), problems)
        for ns in spaces:
            for link in ns.links.values():
                if link.get("link_netnsid") is not None and \
                        _kind(link) not in _PEERED_VIRTUAL and \
                        ("link" in link or "link_index" in link or _lower_in_data(link)):
                    what = _kind(link) or "link"
                    problems.append(f"{Netdev(ns.name, link['ifname'])} ({what}) sits on a "
                                    "device of another namespace, which the harness cannot "
                                    "name")
            problems += [f"{Netdev(ns.name, name)} is a physical link, but `ip -d link` names "
                         "no device under it (no parentdev: iproute2 or the kernel is too "
                         "old), so which PCI function's port it is cannot be told"
                         for name, link in ns.links.items()
                         if "parentdev" not in link and _physical(fs, ns, name, link)]
        problems += _rdma_untied(fs, spaces)
        problems += _unheld_peers(fs, spaces)
        problems += _hidden_clients(fs, spaces)
        return cls(fs, spaces, problems)

    def netdevs_of(self, path: str | None, own_names: list[str]) -> list[Netdev]:
        """The interfaces of the device at sysfs ``path`` (resolved) in every namespace:
        ``own_names`` (its ``net/`` entries in sysfs, the harness's namespace) and the links
        ``ip -d`` says sit on it or on a device below it anywhere (``parentbus``/``parentdev``:
        a PCI function, or an auxiliary device such as an mlx5 sub-function under it)."""
        found = {Netdev(OWN, n) for n in own_names}
        for ns in self.namespaces.values() if path else ():
            found |= {Netdev(ns.name, name) for name, link in ns.links.items()
                      if (parent := self.parents.get((ns.name, name))) and
                      (parent == path or parent.startswith(path + "/"))}
        return sorted(found)

    def use_of(self, dev: Netdev) -> tuple[list[str], str]:
        """(why ``dev`` is in use, the evidence that it is idle); the first is empty when it
        is idle. Both as shown to people (:func:`~harness.core.text.shown`): ``dev``'s name
        stays raw for the lookups."""
        ns = self.namespaces.get(dev.namespace)
        if ns is None or ns.problems:
            return [shown(f"{dev}: its namespace cannot be read")], ""
        link = ns.links.get(dev.name)
        if link is None:
            return [shown(f"{dev}: `ip link` does not show it")], ""
        uses = [f"{dev} has the upper device {up}" for up in _uppers(self.fs, ns, dev)]
        uses += [f"{dev} carries the route {r}" for r in ns.routes.get(dev.name, [])]
        # Up at all is in use: an address-less port that is up carries what no address, route
        # or socket shows (FCoE, AoE, a tc or nftables hook of a kind not read, an uplink
        # whose cable is out right now); the operator sets a spare port down to offer it.
        # (tc qdiscs, tcx programs, mirred targets, nftables chains, dup/fwd targets and
        # iif/oif matches, multicast groups: ``ns.kernel_users``.)
        if "UP" in link.get("flags", []):
            addresses = ns.addresses.get(dev.name)
            uses.append(f"{dev} is up " + (f"with the address {', '.join(addresses)}"
                                           if addresses else "(with no address)"))
        uses += [f"{dev} has a socket bound to it ({s})" for s in ns.sockets.get(dev.name, [])]
        uses += [f"{dev} {u}" for u in ns.kernel_users.get(dev.name, [])]
        uses += _on_its_address(ns, dev)
        # In any namespace: a dynamic target binds the interface of its name in the namespace
        # of the process that enables it (``netpoll_setup``: ``current->nsproxy->net_ns``).
        if {dev.name, str(link.get("address", "")).lower()} & self.netconsoles:
            uses.append(f"{dev} carries the kernel's netconsole")
        if link.get("xdp"):  # a program handles its packets before any socket sees them
            uses.append(f"{dev} has an XDP program attached")
        uses += [f"{dev} is the interface the AoE disk {disk} was found through (its netif): "
                 "the aoe driver holds it until the disk is flushed, and the unbind would wait "
                 f"for it forever, unkillable; `aoe-flush {disk}` first (after unmounting what "
                 "is on it)" for disk in (self.aoe.get(dev.name, []) if not dev.namespace else [])]
        evidence = (f"{dev}: down, no route in any table, no upper device, no socket bound "
                    "to it")
        return [shown(u) for u in uses], shown(evidence)


def _told_apart(spaces: list[Namespace], problems: list[str]) -> list[Namespace]:
    """``spaces``, each under a name no other has: every interface is judged in the namespace
    it is in, by (its namespace's name, its own). A name is how a namespace is held, which two
    can share (a bind mount at one path in two mount namespaces: two containers cloned from
    one template, each running ``ip netns add test``; a pid reused between two searches): those
    that share one are each named with their identity added (``, net:[N]``). Two that share a
    name and cannot be told apart (an identity unknown, or the same one read twice) leave
    every interface unproven: which one an interface is in cannot be told."""
    names: dict[str, list[Namespace]] = {}
    for ns in spaces:
        names.setdefault(ns.name, []).append(ns)
    for name, same in names.items():
        idents = [ns.ident for ns in same]
        if len(same) == 1:
            continue
        if None in idents or len(set(idents)) < len(idents):
            problems.append(f"{len(same)} network namespaces are each {name or 'the harness'}"
                            f"'s ({', '.join(str(i) for i in idents)}) and cannot be told apart: "
                            "which one an interface is in cannot be told")
            continue
        for ns in same:
            ns.name = f"{name}, net:{ns.ident}"
    return spaces


def _parents(fs: Sysfs, spaces: list[Namespace], problems: list[str]) -> dict:
    """Where each link's ``parentbus``/``parentdev`` sits in sysfs; a parent that does not
    resolve is a problem (fail closed: the link may sit on any device)."""
    out = {}
    for ns in spaces:
        for name, link in ns.links.items():
            bus, dev = link.get("parentbus"), link.get("parentdev")
            if not bus and not dev:
                continue
            where = fs.sys("bus", str(bus), "devices", str(dev))
            if not bus or not dev or "/" in f"{bus}{dev}" or not where.exists():
                problems.append(f"{Netdev(ns.name, name)} sits on {bus}/{dev}, which "
                                f"/sys/bus/{bus}/devices does not show: which device it is "
                                "on cannot be told")
                continue
            out[(ns.name, name)] = os.path.realpath(where)
    return out


#: One netconsole target as the kernel parses it (``netpoll_parse_options``):
#: ``[+][r][src-port]@[src-ip]/[dev],[tgt-port]@<tgt-ip>/[tgt-mac]``; the device (a name or, in
#: recent kernels, a MAC address) runs to the first comma.
_NETCONSOLE_TARGET = re.compile(r"[^@]*@[^/]*/([^,]*),")


def _netconsoles(fs: Sysfs, problems: list[str]) -> set[str]:
    """netconsole's interfaces: every target of ``netconsole=`` (built in) or
    ``netconsole.netconsole=`` (the module's parameter, which modprobe takes from the kernel
    command line) there, several separated by ``;`` (no dev: eth0), and its enabled configfs
    targets. A netconsole loaded as a module got its targets from modprobe (its arguments,
    ``options netconsole netconsole=...`` in /etc/modprobe.d), which nothing shows afterwards:
    the parameter has no sysfs file and configfs shows such a target only once someone makes
    its ``cmdlineN``; so every interface is unproven then (a problem)."""
    names = []
    cmdline = fs.read(fs.proc("cmdline"))
    for m in re.finditer(r'(?:^|\s)(?:netconsole\.)?netconsole=("[^"]*"|\S*)', cmdline or ""):
        names += [t[1] or "eth0" for target in m[1].strip('"').split(";")
                  if (t := _NETCONSOLE_TARGET.match(target))]
    built_in = _built_in(fs, "netconsole")
    names += _configfs_netconsoles(fs, built_in, problems)
    if cmdline is None and built_in:
        problems.append("netconsole is built in and /proc/cmdline cannot be read: which "
                        "interfaces carry the kernel's log is unknown")
    if fs.sys("module", "netconsole").exists() and not built_in:
        problems.append("netconsole is loaded as a module, and the targets modprobe gave it "
                        "(its arguments, `options netconsole` in /etc/modprobe.d) show nowhere "
                        "(no sysfs parameter; configfs only once a cmdlineN is made for one): "
                        "any interface may carry the kernel's log; unload it (modprobe -r "
                        "netconsole) while NICs are taken, or build it in with its targets on "
                        "the kernel command line")
    return set(names) | {n.lower() for n in names}  # (a MAC address in either case)


_NO_MAC = "00:00:00:00:00:00"


def _aoe_netifs(fs: Sysfs, problems: list[str]) -> dict[str, list[str]]:
    """Interface -> the ATA-over-Ethernet disks found through it (``aoe-stat``'s ``e1.0``),
    read from each ``/sys/class/block/etherd!*/netif`` where the ``aoe`` module is there. The
    initiator holds a reference to each interface a target answered on (``dev_hold`` in
    ``setifbcnt``) that only ``aoe-flush`` or the module's unload drop, down or not: no
    address, route or socket shows it, and ``unregister_netdevice`` (the unbind) waits for it
    forever, in D state with the device's lock held. A disk whose ``netif`` cannot be read,
    or names none, leaves which interface it holds untold: a problem."""
    if not _loaded(fs, "aoe"):
        return {}
    out: dict[str, list[str]] = {}
    block = fs.sys("class", "block")
    try:
        disks = sorted(p for p in block.iterdir()  # (a partition, etherd!e1.0p1, has none)
                       if p.name.startswith("etherd!") and not (p / "partition").exists())
    except OSError as e:
        problems.append(f"{block} cannot be read ({e.strerror}): the interfaces the AoE disks "
                        "(aoe is loaded) hold cannot be told")
        return {}
    for path in disks:
        disk = path.name.removeprefix("etherd!")
        netif = fs.read(path / "netif")
        names = [n for n in re.split(r"[,\s]+", netif or "") if n and n != "none"]
        if not names:
            said = "cannot be read" if netif is None else f"names no interface ({netif!r})"
            problems.append(f"the AoE disk {disk}'s {path}/netif {said}: which interface the "
                            "aoe driver holds for it cannot be told; `aoe-flush "
                            f"{disk}` first (after unmounting what is on it)")
        for name in names:
            out.setdefault(name, []).append(disk)
    return out


def _configfs_netconsoles(fs: Sysfs, built_in: bool, problems: list[str]) -> list[str]:
    """The interfaces of netconsole's enabled dynamic targets, in every configfs mount of the
    harness's namespace (/proc/mounts), not only /sys/kernel/config: netconsole.rst's `mount
    -t configfs none /config` on a host with no systemd mount unit for it is as good. A
    built-in netconsole with no configfs mounted here leaves its targets unknown (a problem):
    ones made through a mount since gone, or one in another mount namespace, live on. (With
    configfs mounted and no netconsole folder in it, the kernel has no dynamic targets: a
    built-in netconsole registers its folder at boot.)"""
    mounts = fs.read(fs.proc("mounts"))
    mounted = {fs.path(*unescape_mountinfo(f[1]).strip("/").split("/"))
               for f in (line.split() for line in kernel_lines(mounts or ""))
               if f[2:3] == ["configfs"]}
    names, readable = [], bool(mounted)
    for folder in sorted(mounted | {fs.sys("kernel", "config")}):
        try:
            targets = sorted((folder / "netconsole").iterdir())
        except FileNotFoundError:
            continue
        except OSError as e:
            problems.append(f"netconsole's targets in {folder}/netconsole cannot be read "
                            f"({e.strerror}): which interfaces carry the kernel's log is unknown")
            continue
        readable = True
        for t in (t for t in targets if fs.read(t / "enabled") == "1"):
            # (``local_mac``: the MAC of the interface it bound, wherever that is)
            names += [fs.read(t / "dev_name") or "eth0"] + [
                mac for mac in [fs.read(t / "local_mac")] if mac and mac != _NO_MAC]
    if built_in and not readable:
        problems.append("netconsole is built in and no configfs is mounted here (/proc/mounts"
                        + ("" if mounts is not None else " cannot be read") + "): its dynamic "
                        "targets are unknown (`mount -t configfs none /sys/kernel/config`)")
    return names


def _physical(fs: Sysfs, ns: Namespace, name: str, link: dict) -> bool:
    """Whether a link is a device's port (a PCI function's, a USB adapter's), not a virtual
    one: in the harness's namespace sysfs says so (``/sys/class/net/X/device``); elsewhere, a
    link of no kind (``linkinfo``) that is not the loopback is taken for one."""
    if ns.name == OWN:
        return fs.sys("class", "net", name, "device").exists()
    return not _kind(link) and link.get("link_type") != "loopback"


def _kind(link: dict) -> str:
    return (link.get("linkinfo") or {}).get("info_kind", "")


#: ``info_data`` keys that name a link's lower device (by name, or ``if<N>``/N by ifindex): a
#: VXLAN's ``link`` (``dev``), an HSR or PRP device's ``slave1``, ``slave2`` and ``interlink``.
_LOWER_KEYS = {"link", "slave1", "slave2", "interlink"}


def _lower_in_data(link: dict) -> bool:
    """Whether ``info_data`` names a lower device of ``link`` (:data:`_LOWER_KEYS`): one of
    another namespace (a VXLAN made there and moved, ``link_netnsid``) is named by an ifindex
    of that namespace, which `ip` spells as if it were of this one."""
    data = (link.get("linkinfo") or {}).get("info_data")
    return isinstance(data, dict) and bool(_LOWER_KEYS & data.keys())


def _names_in_data(link: dict, name: str, ifindex: "int | None") -> bool:
    """Whether ``link``'s ``linkinfo.info_data`` names the interface ``name`` (of ``ifindex``)
    of its namespace. A VXLAN or HSR/PRP device is linked as an upper device of its lower ones
    (``netdev_upper_dev_link``: unbinding the port deletes the VXLAN, drops the port from the
    ring), but has no ``ndo_get_iflink``, so `ip` names them only there (``"link":
    "enp5s0f1"``, ``"slave1": ...``). Any value there that is the interface's name counts, a
    kind not listed in :data:`_LOWER_KEYS` included (fail closed: a false "in use" keeps a
    device, a missed upper device loses what sits on it)."""
    data = (link.get("linkinfo") or {}).get("info_data")
    if not isinstance(data, dict):
        return False
    spelt = {name} | ({f"if{ifindex}"} if ifindex is not None else set())
    return any((isinstance(value, str) and value in spelt) or
               (key in _LOWER_KEYS and type(value) is int and value == ifindex)
               for key, value in data.items())


def _uppers(fs: Sysfs, ns: Namespace, dev: Netdev) -> list[str]:
    """Its master, the links on top of it (a top-level ``link``: a VLAN, macvlan, ipvlan), and
    those whose ``info_data`` names it (:func:`_names_in_data`: a VXLAN, an HSR/PRP device), in
    any namespace; in the harness's own, sysfs ``upper_*`` too."""
    out = []
    link = ns.links[dev.name]
    if link.get("master"):
        out.append(link["master"])
    out += sorted(name for name, other in ns.links.items()
                  if other.get("link") == dev.name and "link_netnsid" not in other)
    out += sorted(name for name, other in ns.links.items()
                  if name != dev.name and _names_in_data(other, dev.name, link.get("ifindex")))
    if dev.namespace == OWN:  # sysfs shows the harness's own namespace
        out += sorted(p.name[len("upper_"):] for p in fs.sys("class", "net", dev.name)
                      .glob("upper_*"))
    return sorted(set(out))


# -- reading ------------------------------------------------------------------------------------


#: Seconds one command that reads a namespace may take (less: what is left of the budget of
#: the namespaces found by a search, :data:`NAMESPACES_BUDGET`, which all of one namespace's
#: commands share), and the most output it may print (bytes): past either it is ended, and
#: the namespace is not read (a user's namespace with millions of routes would otherwise cost
#: minutes and root's memory for the whole listing, every read).
RUN_TIMEOUT = 20.0
MAX_OUTPUT = 32 << 20


def _run(fs: Sysfs, argv: list[str], fake: Path, fds: tuple[int, ...] = (),
         deadline: float | None = None) -> str:
    """A tool's output; under a fake root, the file that stands for it. ``fds``: the ones it
    inherits; ``deadline`` (``time.monotonic()``): when it must have ended (else
    :data:`RUN_TIMEOUT` from now). Raises OSError (with what went wrong) when it cannot be had."""
    if not fs.real_host:
        text = fs.read(fake)
        if text is None:
            raise OSError(f"no {fake.relative_to(fs.root)} (the fake of `{' '.join(argv)}`)")
        return text
    check_search_path()  # (as root: ip, ss, nsenter and what they run are found on PATH)
    timeout = RUN_TIMEOUT if deadline is None else min(RUN_TIMEOUT, deadline - time.monotonic())
    if timeout <= 0:
        raise OSError(f"`{' '.join(argv)}` was not run: the namespaces' budget of "
                      f"{NAMESPACES_BUDGET:g} s is spent")
    try:
        code, out, err = _capture(argv, timeout, fds)
    except (OSError, TimeoutError) as e:
        raise OSError(f"`{' '.join(argv)}` could not run: {e}") from e
    if code != 0:
        raise OSError(f"`{' '.join(argv)}` failed: {err.strip() or code}")
    return out


def _capture(argv: list[str], timeout: float, fds: tuple[int, ...]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``argv``, run in a session of its own, whose every
    process is killed past ``timeout`` seconds or :data:`MAX_OUTPUT` bytes (a child that keeps
    the pipe open would make a wait for its end last as long as the child). An interface name
    is any bytes the user who named it chose: kept as the kernel has them (surrogateescape).
    Raises OSError or TimeoutError."""
    deadline = time.monotonic() + timeout
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, pass_fds=fds, start_new_session=True)
    streams = (p.stdout.fileno(), p.stderr.fileno())
    got: dict[int, list[bytes]] = {fd: [] for fd in streams}
    size, waiting = 0, select.poll()
    for fd in got:
        waiting.register(fd, select.POLLIN)
    try:
        open_fds = set(got)
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no end in {timeout:.3g} s")
            for fd, _ in waiting.poll(left * 1000):
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    waiting.unregister(fd)
                    open_fds.discard(fd)
                size += len(chunk)
                got[fd].append(chunk)
            if size > MAX_OUTPUT:
                raise OSError(errno.EFBIG, f"more than {MAX_OUTPUT >> 20} MB of output")
        code = p.wait(max(0.1, deadline - time.monotonic()))  # (its pipes closed: ending)
    except subprocess.TimeoutExpired as e:
        raise TimeoutError(f"no end in {timeout:.3g} s") from e
    finally:
        if p.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(p.pid, 9)
            p.wait()
        p.stdout.close()
        p.stderr.close()
    out, err = (b"".join(got[fd]).decode(errors="surrogateescape") for fd in streams)
    return code, out, err


#: How many more times every holder is searched when a namespace, or a mount namespace one
#: may be mounted in, went away between being seen and being entered (a container that ended
#: while it was read, a name deleted, an fd closed): each search either finds it again, and
#: reads it, or shows that nothing holds it any more.
RESEARCHES = 3
#: Held (``flock``) while the host's holders are searched and their namespaces read: two reads
#: at once (two runs, two xdist workers) would each find the other's fds of every namespace and
#: enter through them, and a namespace nothing else holds would live on, passed from one to
#: the other, for as long as their reads overlap (seen: hundreds kept so, and reads 6 times
#: slower). In /run, where only root makes files.
READ_LOCK = Path("/run/hotplug-harness-netns.lock")
#: How long a read waits for another one to end (seconds).
READ_LOCK_WAIT = 120.0


def _namespaces(fs: Sysfs, problems: list[str]) -> list[Namespace]:
    """The harness's own namespace, every named one, and every other one that anything holds:
    a process or one of its threads lives in it, a process holds it by an open fd (an nsfs
    file, a socket, a tun fd), or an nsfs file is bind-mounted for it anywhere, in any mount
    namespace (one no process is in included). Each is read (the others through
    ``nsenter``); one that cannot be read reports why in its problems.

    A way into one that went away before it was entered (its process ended, its bind mount
    was undone or replaced) says nothing of the namespace, which may live on, or have moved,
    through another holder: every holder is searched again, and it is read through what
    holds it now, or found held by nothing (gone: it holds no interface any more). One that
    went away in each of ``1 +`` :data:`RESEARCHES` searches is a problem. One read at a time
    (:data:`READ_LOCK`)."""
    with _alone(fs, problems) as alone:
        return _read_all(fs, problems, alone)


def _read_all(fs: Sysfs, problems: list[str], alone: bool) -> list[Namespace]:
    """:func:`_namespaces`; the holders searched only when ``alone``."""
    out = [_read_namespace(fs, Namespace(OWN, [], ["ip"], fs.path("ip")))]
    done = {_inode(fs.proc("self", "ns", "net"))}
    out[0].ident = next(iter(done))
    for name in _named_namespaces(fs, problems):
        inode = _inode(fs.path("var", "run", "netns", name))
        # A namespace is read once, whatever its names: ``ip netns attach host 1`` names the
        # harness's own, two names may bind one; read again, each interface counts twice
        # (``safety._ports_unseen`` took the copy for a port seen elsewhere).
        if inode is not None and inode in done:
            continue
        ns = _named_namespace(fs, name, inode)
        if ns is not None:  # (else its name went away: the searches below find it if held)
            ns.ident = inode
            out.append(ns)
            done.add(inode)
    if None in done or not alone:  # a bare fake with no namespace of its own
        return out
    fds = _FdsRead()  # (one budget of fds for all searches: a user who made one slow)
    for _ in range(1 + RESEARCHES):
        found, went, said = _search(fs, done, fds)
        out += found
        problems += [p for p in said if p not in problems]
        if not went:
            return out
    problems += [f"{what}: each way into it was gone, or was another file (not that "
                 f"namespace), in each of {1 + RESEARCHES} searches of every holder (made and "
                 "torn down faster than it could be entered, or its file replaced): the "
                 "interfaces of a namespace held only there would be missed" for what in went]
    return out


@contextlib.contextmanager
def _alone(fs: Sysfs, problems: list[str]):
    """True while this is the only read of the host's holders (:data:`READ_LOCK`); False,
    with the problem said, when that cannot be had. Under a test's fake root: True."""
    if not fs.real_host:
        yield True
        return
    try:
        fd = open_nofollow(READ_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        problems.append(f"{READ_LOCK} cannot be opened ({e.strerror}): the host's network "
                        "namespaces are not searched (run as root)")
        yield False
        return
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            problems.append(f"{READ_LOCK} is not this user's: the host's network namespaces "
                            "are not searched")
            yield False
        elif not flock_within(fd, READ_LOCK_WAIT):
            problems.append(f"another read of the host's network namespaces held {READ_LOCK} "
                            f"for {READ_LOCK_WAIT:g} s: they are not searched")
            yield False
        else:
            yield True
    finally:
        os.close(fd)


#: Seconds the namespaces one search finds may take to read, in all (about 70 ms each here:
#: a node's few hundred pods fit; any user may make thousands, held by one process's fds).
NAMESPACES_BUDGET = 30.0


def _search(fs: Sysfs, done: set, fds: "_FdsRead") -> tuple[list[Namespace], list[str], list[str]]:
    """One search of every holder: (the network namespaces it finds that are not in ``done``,
    read, and added to it; what went away between being seen and being entered; the
    problems)."""
    problems: list[str] = []
    early: dict[str, tuple[str, int]] = {}
    try:
        with MountVisits(fs) as visits:
            return _search_held(fs, done, visits, early, problems, fds)
    finally:
        for _, fd in early.values():
            os.close(fd)


def _search_held(fs: Sysfs, done: set, visits: MountVisits, early: dict, problems: list[str],
                 fds: "_FdsRead") -> tuple[list[Namespace], list[str], list[str]]:
    """:func:`_search`, given the visits of mount namespaces and the fds of the namespaces
    processes live in, opened as they were seen (``early``: inode -> (how, fd); taken)."""
    held, sockets = _holders(fs, visits, problems, early if fs.real_host else None, fds)
    if not fs.real_host:
        fakes = {inode: _held_namespace(fs, inode, ways) for inode, ways in held.items()
                 if inode not in done}
        for inode, ns in fakes.items():
            ns.ident = inode
        done |= fakes.keys()
        return list(fakes.values()), visits.went, problems
    pins, went, found, silent = {}, {}, {}, []
    try:
        for inode, ways in held.items():  # (entered first, all at once: held by this
            if inode in done:             # process, none can go away while it is read)
                continue
            pin = early.pop(inode, None) or _pin(fs, inode, ways, silent)
            if isinstance(pin, tuple):
                pins[inode] = pin
            elif pin is None:
                went[inode] = f"network namespace {inode} ({ways[0][0]})"
            else:
                found[inode] = pin
        for inode, way in socket_namespaces(sockets, done | pins.keys(), problems).items():
            pins[inode] = way  # (a way in after all, for one that went away or failed)
            went.pop(inode, None)
            found.pop(inode, None)
        deadline = time.monotonic() + NAMESPACES_BUDGET
        for n, (inode, (how, fd)) in enumerate(pins.items()):
            if time.monotonic() > deadline:
                problems.append(f"the network namespaces took more than {NAMESPACES_BUDGET:g} "
                                f"s to read: {len(pins) - n} were not read ({inode}, {how}, "
                                "and others): the interfaces in them are unknown")
                break
            found[inode] = _read_namespace_fd(fs, how, fd,
                                              fs.path("ip", "nsfs", inode.strip("[]")),
                                              deadline)
    finally:
        for _, fd in pins.values():
            os.close(fd)
    for inode, ns in found.items():
        ns.ident = inode
    done |= found.keys()
    return list(found.values()), visits.went + list(went.values()), problems


def _pin(fs: Sysfs, inode: str, ways: list[tuple[str, Path]],
         silent: list[str]) -> tuple[str, int] | Namespace | None:
    """The first way into the namespace ``inode`` that opens, as (how it is held, an ``O_PATH``
    fd proven to be it: a process's ``/proc/PID/ns/net``, a thread's or an fd's link, a bind
    mount); else the first that could not be entered, as a namespace with that problem; None
    when every way went away before it was opened (:func:`went_away`: its process, thread or
    fd ended, its mount was undone or replaced), which alone does not prove it gone: it may
    live on, or have moved, through another holder.

    A file is never opened by its path (``nsenter --net=PATH`` would: a path inside another
    user's mount namespace, or an fd of their process, is theirs to turn into a FIFO that
    blocks root or a device whose open acts, ``/dev/watchdog``, over the nsfs mount seen a
    moment ago): it is reached with ``O_PATH``, which opens nothing, proven to be the
    namespace ``inode``, and entered through that fd (a process's too: ``nsenter -t PID``
    would enter whatever namespace it has moved to since).

    A way whose lookup does not answer (a path on a FUSE mount of a daemon that stopped) costs
    its bound once in a search: ``silent`` then names it, and no other way is tried in that
    search (any user can bind a namespace's file on their FUSE mount a thousand times)."""
    failed = None
    for how, path in ways:
        where = path / "ns" / "net" if how.startswith("pid ") else path
        if silent:
            why = f"not tried: {silent[0]} did not answer before, in this search"
        else:
            try:
                return how, open_namespace(fs, where, inode, "net")
            except TimeoutError as e:
                silent.append(f"{where} ({how})")
                why = f"{where}: {e}"
            except OSError as e:
                if went_away(e):
                    continue
                why = f"{where}: {e.strerror or e}"
        if failed is None:
            failed = Namespace(how, [], [], fs.path("ip", "nsfs", inode.strip("[]")))
            failed.problems.append(f"network namespace {inode} ({how}) cannot be entered: {why}")
        if silent:
            break
    return failed


def _named_namespace(fs: Sysfs, name: str, inode: str | None) -> Namespace | None:
    """The namespace named ``name`` (``ip netns``), read through an fd of its file proven to
    be the namespace ``inode`` seen when the names were listed, so that every tool reads that
    one even if the name is deleted or made again meanwhile; None when the name went away
    first (:func:`went_away`)."""
    fake = fs.path("ip", "netns", name)
    if not fs.real_host:
        return _read_namespace(fs, Namespace(name, ["ip", "netns", "exec", name],
                                             ["ip", "-n", name], fake))
    if inode is None:
        return None
    try:
        fd = open_namespace(fs, fs.path("var", "run", "netns", name), inode, "net")
    except OSError as e:
        if went_away(e):
            return None
        ns = Namespace(name, [], [], fake)
        ns.problems.append(f"network namespace {name} ({inode}) cannot be entered: "
                           f"{e.strerror or e}")
        return ns
    try:
        return _read_namespace_fd(fs, name, fd, fake)
    finally:
        os.close(fd)


def _holders(fs: Sysfs, visits: MountVisits, problems: list[str],
             early: dict | None = None, fds: "_FdsRead | None" = None) -> tuple[dict, list]:
    """({namespace: [(how it is held, the path that enters it)]} for every network namespace
    a process, thread, nsfs fd or nsfs mount holds, and the (link, path) of every socket and
    tun fd, whose namespaces only the kernel can tell; an open ``/proc/PID/net`` file of a
    namespace that cannot be named is a problem. Mount namespaces no process is in (held
    by an nsfs ``mnt:`` fd, thread link or mount) are visited for their nsfs mounts. With
    ``early``, the namespace each process lives in is opened as it is seen (:func:`_live_in`),
    its fd kept there: a sandbox that ends right after cannot take it away unseen. ``fds``:
    the read's (:class:`_FdsRead`, shared by its searches)."""
    found: dict[str, list] = {"net": [], "mnt": [], "socket": [], "procnet": [], "path": [],
                              "ring": []}
    budget = tables_budget(fs)
    fds = fds or _FdsRead()
    fds.left = MAX_FDS_READ  # (a count for each search; the time is the read's)
    for proc in sorted(fs.proc().glob("[0-9]*"), key=lambda p: int(p.name)):
        for kind, what, how, path in _held_by_process(fs, proc, problems, early, budget, fds):
            found[kind].append((what, how, path) if kind != "socket" else (what, path))
    problems += fds.problems(new=True)
    seen = _path_namespaces(fs, found, fds.budget, problems)
    infos = mountinfos(fs, problems)
    infos += visits.visit(infos, found["mnt"], problems)
    if fs.real_host:
        procfs = procfs_devices(infos)
        found["procnet"] += [(t, how, e) for t, how, e in found["path"]
                             if e in seen and seen[e].dev in procfs and PROC_NET.fullmatch(t)]
        problems += proc_net_problems(found["procnet"], infos, fs)
        problems += ring_problems(found["ring"], {t for t, _ in found["socket"]},
                                  {i for i, _, _ in found["net"]} | {_inode(fs.proc(
                                      "self", "ns", "net"))}, fds.budget)
    held: dict[str, list[tuple[str, Path | int]]] = {}
    for inode, how, path in found["net"] + nsfs_mounts(infos, fs.path(), "net"):
        held.setdefault(inode, []).append((how, path))
    return held, found["socket"]


def _path_namespaces(fs: Sysfs, found: dict, budget: Budget, problems: list[str]
                     ) -> "dict[Path, Identity]":
    """Of the open files whose link reads as a path (``found["path"]``), those that are a
    namespace's file (:func:`fd_namespace`) go to ``found["net"]`` or ``found["mnt"]``, the
    tun device's fds (by its number, at any path) to ``found["socket"]``, and a macvtap or
    ipvtap queue's is a problem (:func:`node_holds_namespace`), within what is left of the
    search's fd ``budget``. Returns what the others are (:func:`cached_file`)."""
    paths, seen = found["path"], {}
    nsfs = os.stat(fs.proc("self", "ns", "net")).st_dev if paths else None
    taps = tap_majors(fs) if paths else {}
    for n, (target, how, entry) in enumerate(paths):
        if not budget.allows():
            problems.append(f"{len(paths) - n} open files that may be namespaces' were not "
                            f"looked at within {FDS_BUDGET:g} s: a network namespace held "
                            "only by one would be missed")
            break
        try:
            with budget.timing():
                held = fd_namespace(fs, entry, nsfs, seen)
            if held:
                found[held[0]].append((held[1], how, entry))
            elif entry in seen:
                _held_node(target, how, entry, seen[entry], taps, found, problems)
        except OSError as e:
            if not went_away(e):  # (else closed meanwhile, as an fd that no longer reads)
                problems.append(f"{how} may be a namespace's file, which cannot be told: "
                                f"{e.strerror or e}: a network namespace held only by it "
                                "would be missed")
    return seen


def _held_node(target: str, how: str, entry: Path, ident: Identity, taps: dict[int, str],
               found: dict, problems: list[str]) -> None:
    """An open character device that holds a network namespace (:func:`node_holds_namespace`):
    the tun device is asked as a socket is; a macvtap or ipvtap queue, whose namespace no
    kernel interface names, is a problem."""
    kind = node_holds_namespace(ident, taps)
    if kind == "tun":
        found["socket"].append((target, entry))
    elif kind:
        problems.append(f"{how} is {target}, a {kind} queue (character device "
                        f"{os.major(ident.rdev)}:{os.minor(ident.rdev)}), which holds the network "
                        "namespace it was opened in, and no kernel interface names which: the "
                        "interfaces of a namespace held only by it would be missed (end pid "
                        f"{entry.parent.parent.name}, or its VM, to prove the host's NICs idle)")


class _FdsRead:
    """What one search's read of every process's fds has cost: at most
    :data:`~harness.host.storage.MAX_FDS_READ` fds in all (the rest a problem), and a fork's
    copies of its parent's fds not read again (as the storage read: a process of 64 fds or
    more with children keeps its table while the host is read, and a child's fd that
    ``kcmp`` finds the same open file, linking where the parent's did, holds what the
    parent's holds)."""

    def __init__(self) -> None:
        self.left, self.skipped, self.first, self._said = MAX_FDS_READ, 0, "", False
        self.tables: dict[int, dict[str, str]] = {}
        #: Listing them and looking at those that are paths, in one search.
        self.budget = Budget(FDS_BUDGET)

    def to_read(self, fs: Sysfs, proc: Path, entries: list[Path], own: bool) -> list[Path]:
        """Of the ``entries`` of a process's table (``own``) or a thread's, those to read."""
        if len(entries) > self.left or not self.budget.allows():
            self.skipped, self.first = self.skipped + 1, self.first or f"pid {proc.name}"
            return []
        self.left -= len(entries)
        if not own:
            return entries
        pid = int(proc.name)
        parent = _parent_table(proc, self.tables) if fs.real_host else None
        keep = fs.real_host and len(entries) >= FORK_TABLE_MIN and _has_children(proc)
        if not (parent or keep):
            return entries
        with self.budget.timing():  # (comparing a fork's table costs as reading it would)
            table = {e.name: t for e in entries if (t := _link(e)) is not None}
            if keep:
                self.tables[pid] = table
            return [e for e in entries if not (parent and e.name in table
                                               and _copied(parent, pid, e.name, table[e.name]))]

    def problems(self, new: bool = False) -> list[str]:
        """The problem of fds not read; with ``new``, only once in the read (its searches
        share the budget: a later one leaves out what the first left out, and more)."""
        if new and self._said:
            return []
        self._said = bool(self.skipped)
        return [f"more than {MAX_FDS_READ} open files on the host, or more than "
                f"{FDS_BUDGET:g} s to read them: the fds of {self.first} and "
                f"{self.skipped - 1} more were not read: a network namespace held only there "
                "would be missed"] if self.skipped else []


def _held_by_process(fs: Sysfs, proc: Path, problems: list[str], early=None,
                     budget: "list[int] | None" = None, fds: "_FdsRead | None" = None
                     ) -> list[tuple]:
    """(kind, what, how it is held, its path) for what one process holds that may keep a
    network namespace: the one it lives in; its threads' (``task/TID/ns/net``, ``ns/mnt``)
    and its open fds' nsfs files (``net:[N]``, ``mnt:[N]``): kind ``net`` or ``mnt``, what the
    namespace; its sockets and tun fds: kind ``socket``, what the fd's link; and its open
    ``/proc/PID/net`` files: kind ``procnet``, likewise. ``early``: :func:`_live_in`'s;
    ``budget``: :func:`~harness.host.storage.tables_within`'s; ``fds``: the search's."""
    try:
        inode = _live_in(fs, proc, early)
    except OSError as e:  # (one reaped meanwhile says ESRCH, or EACCES: get_proc_task)
        if not isinstance(e, FileNotFoundError) and e.errno != errno.ESRCH and \
                os.path.lexists(proc):
            problems.append(f"the network namespace of pid {proc.name} cannot be read "
                            f"({e.strerror}): run as root")
            return []
        if not os.path.lexists(proc / "task"):
            return []  # it ended (and with it all it held) while it was read
        inode = None  # its main thread ended (a zombie): threads of it may live on
    out = [("net", inode, f"pid {proc.name}", proc)] if inode else []
    own = thread_tables(fs, proc, tasks_of(proc, []))
    if own:  # (bounded as the storage read bounds them: one user's copies cannot multiply it)
        own, left = tables_within(own, (int(proc.name), fs.read(proc / "comm") or "?"), budget)
        problems += [f"{left}: a network namespace held only there would be missed"] if left else []
    own = [("fd", f"task/{t.name}/fd") for t in own]
    for what, folder in [("thread", "task"), ("fd", "fd")] + own:  # (own: threads' tables)
        try:  # (a link's target does not exist: listed, not globbed)
            entries = sorted(p / "ns" / kind if what == "thread" else p
                             for p in (proc / folder).iterdir()
                             for kind in (("net", "mnt") if what == "thread" else ("",)))
        except FileNotFoundError:
            continue  # gone, or a fake process without threads or fds
        except OSError as e:
            problems.append(f"the {what}s of pid {proc.name} cannot be read ({e.strerror}): "
                            "a network namespace held only there would be missed")
            continue
        if what == "fd" and fds is not None:  # (a thread's table is counted, not compared)
            entries = fds.to_read(fs, proc, entries, own=folder == "fd")
        with fds.budget.timing() if fds is not None else contextlib.nullcontext():
            for entry in entries:
                out += _held_by_entry(fs, proc, what, entry, inode, problems)
    return out


def _held_by_entry(fs: Sysfs, proc: Path, what: str, entry: Path, inode: str | None,
                   problems: list[str]) -> list[tuple]:
    """:func:`_held_by_process`'s tuples for one thread's namespace link or one fd."""
    try:
        target = os.readlink(entry)
    except OSError as e:  # (a task reaped meanwhile says EACCES: get_proc_task)
        if not isinstance(e, FileNotFoundError) and os.path.lexists(entry.parent.parent):
            problems.append(f"{entry} cannot be read ({e.strerror}): run as root")
        return []  # (else closed, or its thread or process ended)
    label = (f"thread {entry.parent.parent.name} of pid {proc.name}"
             if what == "thread" else f"fd {entry.name} of pid {proc.name}")
    kind = target.partition(":")[0]
    if kind in ("net", "mnt") and target != f"net:{inode}":
        return [(kind, target.removeprefix(kind + ":"), label, entry)]
    if what == "fd" and kind == "socket":
        return [("socket", target, label, entry)]
    if what == "fd" and target == "anon_inode:[io_uring]":  # (its registered files)
        return [("ring", target, label, entry)]
    if what == "fd" and target.startswith("/") and fs.real_host:  # (told by what the kernel
        return [("path", target, label, entry)]  # says it is: :func:`_path_namespaces`)
    return []


def _live_in(fs: Sysfs, proc: Path, early: "dict[str, tuple[str, int]] | None") -> str:
    """The namespace a process lives in, seen by opening it (``O_PATH`` of ``ns/net``, proven
    nsfs), not by reading its link first: what is seen is held, so it cannot go away between
    being seen and being entered (a sandbox that lives 5 ms, of which a busy build host has
    many, would otherwise be a namespace that went away in every search). Its fd is kept in
    ``early`` (the first of each namespace); without it (a fake tree), its link is read.
    Raises OSError."""
    if early is None:
        return _inode(proc / "ns" / "net", strict=True)
    fd = os.open(proc / "ns" / "net", os.O_PATH | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if st.st_dev != os.stat(fs.proc("self", "ns", "net")).st_dev:
            raise OSError(errno.EINVAL, "not a namespace's file", str(proc / "ns" / "net"))
    except OSError:
        os.close(fd)
        raise
    inode = f"[{st.st_ino}]"
    if inode in early:
        os.close(fd)
    else:
        early[inode] = (f"pid {proc.name}", fd)
    return inode


def _held_namespace(fs: Sysfs, inode: str, ways: list[tuple[str, Path]]) -> Namespace:
    """Under a test's fake root (on the host: :func:`_pin`), a namespace in no list, read
    from the files that stand for the first way into it still there: a process in it
    (``ip/pidns/PID``), else the file that holds it (``ip/nsfs/N``: a thread's, an fd's, a
    bind mount). A thread's or fd's file that is not there ended; one whose every way ended
    is returned empty; a bind mount is never taken for gone."""
    for how, path in ways:
        if how.startswith("pid "):
            enter, fake = ["nsenter", "-t", how[4:], "-n"], fs.path("ip", "pidns", how[4:])
        else:
            enter, fake = ["nsenter", f"--net={path}"], fs.path("ip", "nsfs", inode.strip("[]"))
        ns = _read_namespace(fs, Namespace(how, enter, enter + ["ip"], fake))
        ns.nsid = _fake_nsid(fs, fake)
        if not ns.problems or how.startswith("nsfs mount") or os.path.lexists(path):
            return ns
    return Namespace(ways[0][0], [], [], fs.path("ip", "nsfs", inode.strip("[]")))


def _read_namespace_fd(fs: Sysfs, how: str, fd: int, fake: Path,
                       deadline: float | None = None) -> Namespace:
    """A namespace read through an fd of it this process holds (``nsenter --net=/proc/self/
    fd/N``: the path is this process's own, the fd already proven), all its commands ended by
    ``deadline`` when one is given."""
    enter = ["nsenter", f"--net=/proc/self/fd/{fd}"]
    ns = Namespace(how, enter, enter + ["ip"], fake, (fd,))
    ns.deadline = deadline
    ns.nsid = _nsid_of(fd)
    return _read_namespace(fs, ns)


#: ``ip -j netns list-id``: the nsids the harness's own namespace gave its peers.
_NSIDS = ["-j", "netns", "list-id"]
#: rtnetlink: ask a namespace's nsid (``RTM_GETNSID``) by an fd of it (``NETNSA_FD``).
_RTM_GETNSID, _RTM_NEWNSID, _NLMSG_ERROR = 90, 88, 2
_NETNSA_NSID, _NETNSA_FD = 1, 3


def _unheld_peers(fs: Sysfs, spaces: list[Namespace]) -> list[str]:
    """A peer namespace the harness's own one lists by nsid (``ip -j netns list-id``: one it
    has a device of, or had one moved to) that is none of those read: only the kernel holds
    it (an NFS, CIFS, Ceph or NVMe/TCP client made in it, then ``ip netns del``), which no
    process, fd or mount names. A VLAN or macvlan of a port moved there is seen from nowhere
    the harness looks (the port's ``upper_*`` links are dropped across namespaces), and the
    unbind deletes it under that client: every interface is unproven, the nsid named. (One
    *made* there, not moved, allocates no nsid here: :func:`_hidden_clients` catches that.)"""
    try:
        listed = _ip_json(_run(fs, ["ip"] + _NSIDS, fs.path("ip", "netns-list-id.json")) or "[]")
        peers = {int(p["nsid"]): p.get("name") for p in listed}
    except (OSError, ValueError, TypeError, KeyError) as e:
        return [f"the peer namespaces of the harness's own (`ip {' '.join(_NSIDS)}`) cannot be "
                f"read ({e}): one only the kernel holds (a network file system's client made "
                "in it), with an upper device of a port in it, would be missed"]
    read = {ns.nsid for ns in spaces if ns.nsid is not None} | {_own_nsid(fs)}
    names = {ns.name for ns in spaces if ns.name}
    return [f"the network namespace of nsid {nsid} (a peer `ip netns list-id` lists in the "
            "harness's own) is none the harness read: nothing it searched holds it, the kernel "
            "does (a network file system's or Ceph client made in it, then `ip netns del`), "
            "and an upper device of a port (a VLAN, a macvlan) may sit there unseen; find "
            "what holds it (`ip netns identify`, a mount made in it) and free it, or delete "
            "the ports' upper devices there"
            for nsid, name in sorted(peers.items()) if nsid not in read and name not in names]


def _hidden_clients(fs: Sysfs, spaces: list[Namespace]) -> list[str]:
    """A kernel network-storage client (an NFS mount, a Ceph RBD disk, an NVMe/TCP or RDMA
    controller) that no namespace read accounts for lives in one the harness never read: an
    upper device of a port made straight in it (``ip link add link P name V netns S``, CNI's
    macvlan/ipvlan/vlan plugins) allocates no nsid in the harness's namespace, so after ``ip
    netns del S`` only that client shows it (:func:`_unheld_peers` cannot), and the unbind
    deletes the device under it (a ``hard`` NFS mount hangs in D state until reboot): every
    interface is unproven, the mount or disk named."""
    addresses = {a for ns in spaces for a in _own_addresses(ns)}
    return (_hidden_nfs(fs, spaces, addresses) + _hidden_rbd(fs, addresses)
            + _hidden_nvme(fs, addresses))


def _own_addresses(ns: Namespace) -> set[str]:
    """``ns``'s addresses (``ip -j addr``), without their prefix length, normalized."""
    return {_normal(a.partition("/")[0]) for listed in ns.addresses.values() for a in listed}


def _normal(address: str) -> str:
    """``address`` as :mod:`ipaddress` writes it (one spelling of each: case, zeros), or as
    it is when it is not one."""
    try:
        return str(ipaddress.ip_address(address.partition("%")[0]))  # (no ``%ifname`` zone)
    except ValueError:
        return address


def _unaccounted(address: str, addresses: set[str]) -> bool:
    """Whether a client's local ``address`` tells no namespace read: none has it, or it is
    a wildcard (``0.0.0.0``, ``::``: the kernel chose by route, in a namespace not told)."""
    address = _normal(address)
    return address in _WILDCARDS or address not in addresses


#: A local address that names no interface: the kernel chose one by route (or none yet).
_WILDCARDS = ("0.0.0.0", "::", "")


_HIDDEN_HINT = ("a namespace the harness did not read (one made for it, then `ip netns del`: "
                "only the kernel holds it) may hold an upper device of a port (a VLAN, a "
                "macvlan made there with `ip link add ... netns`)")


def _hidden_nfs(fs: Sysfs, spaces: list[Namespace], addresses: set[str]) -> list[str]:
    """Each NFS mount of every mount namespace, told to be of a namespace read: its superblock
    (mountinfo's ``0:NN``) listed in one's /proc/fs/nfsfs/volumes (per namespace: only the
    superblocks whose client is there; NFSv3 and v4 alike). Where those lists cannot be read
    (a kernel or a namespace whose list is missing), an NFSv4 mount's ``clientaddr=`` is the
    second sign: an address of a namespace read (a wildcard tells none). A ``clientaddr`` of
    no namespace read (not a wildcard) is refused whatever the lists say. Read only where
    ``nfs`` is loaded or built in: with it not there, no NFS mount exists."""
    if not _loaded(fs, "nfs"):
        return []
    problems: list[str] = []
    mounts = _nfs_mounts(fs, problems)
    volumes = _nfs_volumes(fs, spaces) if mounts else set()
    for dev, point, options in mounts:
        why = _nfs_unaccounted(fs, dev, options, volumes, addresses)
        if why:
            problems.append(f"the NFS mount of {point} {why}: {_HIDDEN_HINT}; unmount it "
                            "(`umount -f -l` if its server is gone) while NICs are taken, or "
                            "find the namespace it was made in")
    return problems


def _nfs_unaccounted(fs: Sysfs, dev: str, options: str, volumes: "set[str] | str",
                     addresses: set[str]) -> str | None:
    """Why the NFS mount of superblock ``dev`` and super options ``options`` is of no
    namespace read (:func:`_hidden_nfs`), or None when one read accounts for it."""
    client = re.search(r"(?:^|,)clientaddr=([^,]+)", options)
    address = _normal(client[1]) if client else ""
    if address not in _WILDCARDS and address not in addresses:
        return f"has the client address {client[1]}, of no network namespace read"
    if isinstance(volumes, str):
        return None if address not in _WILDCARDS else (
            f"tells which network namespace its client is in nowhere ({volumes}, and its "
            f"clientaddr is {client[1] if client else 'not printed (NFSv3)'})")
    if dev in volumes or (dev == "0:0" and not fs.real_host):  # (a fake's mount: no MAJ:MIN)
        return None
    return (f"(superblock {dev}) is listed by no network namespace read "
            "(/proc/fs/nfsfs/volumes): its client is in one the harness did not read")


def _nfs_mounts(fs: Sysfs, problems: list[str]) -> list[tuple[str, str, str]]:
    """(superblock ``MAJ:MIN``, mount point, its options) of each NFS mount of every mount
    namespace (:func:`~harness.host.storage.mountinfos`), each superblock once."""
    out, seen = [], set()
    for _proc, text in mountinfos(fs, problems):
        for line in kernel_lines(text):
            head, _, tail = line.partition(" - ")
            fields, rest = head.split(), tail.split()
            if len(fields) < 5 or len(rest) < 3 or rest[0] not in ("nfs", "nfs4"):
                continue
            key = (fields[2], unescape_mountinfo(fields[4]))
            if key not in seen:
                seen.add(key)
                out.append((fields[2], key[1], rest[2]))
    return out


def _nfs_volumes(fs: Sysfs, spaces: list[Namespace]) -> "set[str] | str":
    """The NFS superblocks (``DEV``) whose client is in a namespace read: the union of each
    one's /proc/fs/nfsfs/volumes (a link to /proc/self/net/nfsfs/volumes, so per namespace;
    in another, ``cat /proc/net/nfsfs/volumes`` entered there: ``<fake>/nfsfs-volumes.txt``),
    or why they cannot be read (one namespace's list missing is all unknown)."""
    own = fs.proc("fs", "nfsfs", "volumes")
    own_text = fs.read(own)
    if own_text is None:
        return f"{own} cannot be read"
    listed = set()
    for ns in spaces:
        if ns.problems:
            continue  # (unreadable: a problem already)
        try:
            text = own_text if not ns.name else _run(
                fs, ns.enter + ["cat", "/proc/net/nfsfs/volumes"], ns.fake / "nfsfs-volumes.txt",
                ns.fds, **_by(ns))
        except OSError as e:
            return f"network namespace {ns.name}'s NFS volume list cannot be read: {e}"
        listed |= {f[3] for line in text.splitlines()[1:] if len(f := line.split()) >= 4}
    return listed


def _hidden_rbd(fs: Sysfs, addresses: set[str]) -> list[str]:
    """Each mapped Ceph RBD disk's client address (/sys/bus/rbd/devices/N/client_addr,
    ``10.9.0.5:0/2381329734``, Linux 5.0 and later: global, not per namespace) must be one
    of a namespace read; one that cannot be read tells nothing (unproven)."""
    problems = []
    for dev in sorted(fs.sys("bus", "rbd", "devices").glob("*")):
        text = fs.read(dev / "client_addr")
        address = _address_of(text.strip().rpartition("/")[0]) if text else ""
        if not text or _unaccounted(address, addresses):
            said = (f"is {text.strip()}, of no network namespace read" if text else
                    "cannot be read (a kernel before 5.0 has none): its namespace is not told")
            problems.append(f"the Ceph RBD disk rbd{dev.name}'s client address ({dev}/"
                            f"client_addr) {said}: {_HIDDEN_HINT}; unmap it (`rbd unmap "
                            f"/dev/rbd{dev.name}`) while NICs are taken")
    return problems


def _hidden_nvme(fs: Sysfs, addresses: set[str]) -> list[str]:
    """Each NVMe over TCP or RDMA controller's source address, in its ``address``, must be
    one of a namespace read: ``src_addr=`` (a live TCP controller's socket's, Linux 6.1 and
    later) or else ``host_traddr=`` (the one asked for, ``nvme connect --host-traddr``). One
    that prints neither (an older kernel, RDMA, a TCP controller reconnecting) chose its
    source by route in a namespace not told: not refused (a stated limit, docs/vfio.md); an
    ``address`` that cannot be read is."""
    problems = []
    for ctrl in sorted(fs.sys("class", "nvme").glob("nvme*")):
        if (fs.read(ctrl / "transport") or "").strip() not in ("tcp", "rdma"):
            continue
        text = fs.read(ctrl / "address")
        source = (re.search(r"(?:^|,)src_addr=([^,\s]+)", text or "") or
                  re.search(r"(?:^|,)host_traddr=([^,\s]+)", text or ""))
        if text is None or (source and _unaccounted(source[1], addresses)):
            said = (f"has the source address {source[1]}, of no network namespace read"
                    if source else f"has an {ctrl}/address that cannot be read: its source "
                    "address, and so its namespace, is not told")
            problems.append(f"the NVMe-oF controller {ctrl.name} {said}: {_HIDDEN_HINT}; "
                            f"disconnect it (`nvme disconnect -d {ctrl.name}`) while NICs are "
                            "taken")
    return problems


def _own_nsid(fs: Sysfs) -> int | None:
    """The nsid the harness's namespace gave itself, if any (under a fake root: its
    ``ip/nsid``)."""
    if not fs.real_host:
        return _fake_nsid(fs, fs.path("ip"))
    try:
        fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _nsid_of(fd)
    finally:
        os.close(fd)


def _fake_nsid(fs: Sysfs, fake: Path) -> int | None:
    """Under a test's fake root, the nsid of the namespace whose files are in ``fake``: its
    ``nsid`` file (none: no nsid)."""
    text = fs.read(fake / "nsid") if not fs.real_host else None
    return int(text) if text and text.strip().lstrip("-").isdigit() else None


def _nsid_of(fd: int) -> int | None:
    """The nsid the harness's own namespace has for the namespace of ``fd`` (RTM_GETNSID with
    NETNSA_FD, what ``ip netns list-id`` lists it by); None when it has none, or it cannot be
    asked (then a listed nsid matches none read: the namespace counts as one not found)."""
    attr = struct.pack("=HHI", 8, _NETNSA_FD, fd)
    body = struct.pack("=B3x", socket.AF_UNSPEC) + attr
    msg = struct.pack("=IHHII", 16 + len(body), _RTM_GETNSID, 1, 1, 0) + body  # NLM_F_REQUEST
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
            s.settimeout(RUN_TIMEOUT)
            s.send(msg)
            reply = s.recv(4096)
        length, kind = struct.unpack_from("=IH", reply)
    except (OSError, struct.error):
        return None
    pos = 20  # (nlmsghdr, rtgenmsg padded to 4)
    while kind == _RTM_NEWNSID and pos + 8 <= min(length, len(reply)):
        size, what = struct.unpack_from("=HH", reply, pos)
        if what == _NETNSA_NSID:
            nsid = struct.unpack_from("=i", reply, pos + 4)[0]
            return nsid if nsid >= 0 else None
        pos += max(4, (size + 3) & ~3)
    return None


def _inode(path: Path, strict: bool = False) -> str | None:
    """A namespace's identity: ``net:[4026531840]`` from a /proc link, the inode of a bind
    mount in /var/run/netns."""
    try:
        return os.readlink(path).removeprefix("net:")
    except OSError:
        if strict and not path.exists() and not path.is_symlink():
            raise FileNotFoundError(path)
        try:
            return f"[{os.stat(path).st_ino}]"
        except OSError:
            if strict:
                raise
            return None


def _ip_json(text: str):
    """``ip -j``'s output: iproute2 prints control characters other than ``\\b \\f \\n \\r
    \\t`` in a string as they are (an interface's name or alias may hold any, in a user's own
    namespace), which strict JSON refuses. Raises ValueError."""
    return json.loads(text, strict=False)


def _named_namespaces(fs: Sysfs, problems: list[str]) -> list[str]:
    try:
        text = _run(fs, ["ip", "-j", "netns", "list"], fs.path("ip", "netns.json"))
        listed = _ip_json(text) if text.strip() else []
        names = {n["name"] for n in listed}
    except (OSError, ValueError, TypeError, KeyError) as e:
        problems.append(f"the network namespaces cannot be listed: {e}")
        return []
    run_netns = fs.path("var", "run", "netns")
    try:
        names |= {p.name for p in run_netns.iterdir()}
    except FileNotFoundError:
        pass
    except OSError as e:
        problems.append(f"{run_netns} cannot be read: {e.strerror}")
    return sorted(names)


def _read_namespace(fs: Sysfs, ns: Namespace) -> Namespace:
    where = f" in network namespace {ns.name}" if ns.name else ""
    data = {}
    for what, args in _IP.items():
        try:
            data[what] = _ip_json(_run(fs, ns.ip + args, ns.fake / f"{what}.json", ns.fds,
                                       **_by(ns)) or "[]")
            if not isinstance(data[what], list):
                raise ValueError("not a list")
            if ns.deadline is not None and time.monotonic() > ns.deadline:
                raise OSError(f"the namespaces' budget of {NAMESPACES_BUDGET:g} s was spent "
                              "reading it")
        except (OSError, ValueError) as e:
            ns.problems.append(f"`ip {' '.join(args)}`{where} cannot be read: {e}")
            return ns
    ns.links = {link["ifname"]: link for link in data["link"] if "ifname" in link}
    for entry in data["addr"]:
        ns.addresses[entry.get("ifname", "")] = [
            f"{a.get('local')}/{a.get('prefixlen')}" for a in entry.get("addr_info", [])
            if a.get("local")]
    for r in data["route"] + data["route6"]:
        for dev in {r.get("dev")} | {h.get("dev") for h in r.get("nexthops", [])}:
            if dev:
                ns.routes.setdefault(dev, []).append(_route_text(r))
        for dev in _encap_ports(ns, r):
            ns.routes.setdefault(dev, []).append(_encap_text(r))
    if not _read_mpls(fs, ns, where):
        return ns
    _read_vxlan_fdb(fs, ns, where)
    _read_mptcp(fs, ns, where)
    _read_xfrm(fs, ns, where)
    _read_sockets(fs, ns, where)
    _read_kernel_users(fs, ns, where)
    _read_multicast(fs, ns, where)
    _read_pktgen(fs, ns, where)
    _read_rdma(fs, ns, where)
    _read_tc(fs, ns, where)
    _read_nft(fs, ns, where)
    return ns


#: ``ip -j -f mpls route show``: the MPLS label table.
_MPLS = ["-j", "-f", "mpls", "route", "show"]


def _read_mpls(fs: Sysfs, ns: Namespace, where: str) -> bool:
    """The MPLS label table's routes, filed under each nexthop's ``dev`` as ``mpls label N``
    (False: it could not be read, a problem of ``ns``). Unlike IPv4 and IPv6 routes, which the
    kernel flushes when a port is set down, an MPLS route through it stays (``mpls_ifdown``
    only marks its nexthop dead; it is deleted at ``NETDEV_UNREGISTER``, the unbind): FRR's
    LDP paths out of a port the operator set down. A kernel without ``mpls_router`` has no
    label table in any namespace (``/proc/sys/net/mpls/platform_labels`` is made in every
    namespace by the module's pernet init, or in none): nothing to read then."""
    routes = _ip_list(fs, ns, where, ("mpls", "platform_labels"), _MPLS, "mpls", "")
    if routes is None:
        return False
    for r in routes:
        hops = r.get("nexthops") if isinstance(r.get("nexthops"), list) else []
        for dev in {r.get("dev")} | {h.get("dev") for h in hops if isinstance(h, dict)}:
            if dev:
                ns.routes.setdefault(dev, []).append(f"mpls label {r.get('dst', '?')}")
    return True


#: ``ip -j mptcp endpoint show``: the in-kernel MPTCP path manager's endpoints.
_MPTCP = ["-j", "mptcp", "endpoint", "show"]


def _ip_list(fs: Sysfs, ns: Namespace, where: str, sysctl: "tuple[str, ...]",
             args: list[str], fake: str, why: str) -> "list[dict] | None":
    """``ip -j ARGS`` in ``ns`` (``<fake>.json`` under a fake root), a list of objects, where
    the kernel has the feature whose /proc/sys/net/``sysctl`` is made in every namespace or in
    none (MPLS's label table, MPTCP's endpoints): [] where it has not; None once what cannot
    be read is a problem of ``ns`` (``why``: what is at stake, and the way out)."""
    try:
        os.stat(fs.proc("sys", "net", *sysctl))
    except FileNotFoundError:
        return []
    except OSError as e:
        ns.problems.append(f"whether the kernel has /proc/sys/net/{'/'.join(sysctl)} cannot be "
                           f"told{where}: {e.strerror}{why}")
        return None
    try:
        out = _ip_json(_run(fs, ns.ip + args, ns.fake / f"{fake}.json", ns.fds, **_by(ns))
                       or "[]")
        if not isinstance(out, list) or not all(isinstance(o, dict) for o in out):
            raise ValueError("not a list of objects")
    except (OSError, ValueError) as e:
        ns.problems.append(f"`ip {' '.join(args)}`{where} cannot be read: {e}{why}")
        return None
    return out


def _read_mptcp(fs: Sysfs, ns: Namespace, where: str) -> None:
    """Each MPTCP endpoint on a port (``ip mptcp endpoint add ADDR dev PORT subflow``), filed
    in ``ns.kernel_users``: the path manager keeps it per namespace with the port's ifindex,
    through a down and the unregister (it has no netdev notifier; ``ip`` prints ``"dev":
    "ifN"`` once the port is made again), so after the give-back every subflow it opens is
    bound to an index that is gone: the second (or backup) path of every MPTCP connection,
    for good. MPTCP is built in or absent (``/proc/sys/net/mptcp`` is in every namespace, or
    in none): asking loads nothing. What cannot be read is a problem of ``ns``."""
    endpoints = _ip_list(fs, ns, where, ("mptcp",), _MPTCP, "mptcp",
                         ": an MPTCP endpoint on a port holds its ifindex, gone after the "
                         "unbind; install iproute2 5.8 or later")
    for e in endpoints or []:
        if e.get("dev"):
            flags = " ".join(f for f in ("signal", "subflow", "backup", "fullmesh") if e.get(f))
            ns.kernel_users.setdefault(str(e["dev"]), []).append(
                f"has the MPTCP endpoint {e.get('address', '?')} (id {e.get('id', '?')}"
                f"{', ' + flags if flags else ''}) on it, which holds its ifindex: after the "
                "unbind its subflows are bound to an index that is gone, for good (`ip mptcp "
                f"endpoint delete id {e.get('id', '?')}` first, if it may go)")


#: ``ip xfrm policy show``: the IPsec policies (text: ``-j`` prints the same text).
_XFRM = ["xfrm", "policy", "show"]


def _read_xfrm(fs: Sysfs, ns: Namespace, where: str) -> None:
    """Each IPsec (xfrm) policy restricted to a port (``ip xfrm policy add ... dev enp5s0f1
    dir out tmpl ... proto esp``; strongSwan's ``children.<child>.interface``, for a child's
    policies, its trap policies and its shunts; VyOS's ``vpn ipsec interface``), filed in
    ``ns.kernel_users``: the selector keeps the port's bare ifindex (a down flushes only
    offloaded policies), so after the unbind and the give-back the policy applies to nothing
    on it: traffic to the protected subnet leaves in the clear, a DROP shunt (a kill switch)
    drops nothing, for good. Read where the kernel has ``xfrm_user`` (:func:`_loaded`:
    asking elsewhere would load it; without it no policy can have been added through
    netlink). What cannot be read is a problem of ``ns``."""
    if not _loaded(fs, "xfrm_user"):
        return
    try:
        policies = _xfrm_policies(_run(fs, ns.ip + _XFRM, ns.fake / "xfrm-policy.txt", ns.fds,
                                       **_by(ns)))
    except (OSError, ValueError) as e:
        _unread(ns, f"the IPsec policies{where}", ["ip", *_XFRM], e,
                "a policy restricted to a port (`dev`)")
        return
    for selector, rest in policies:
        dev = re.search(r"\bdev (\S+)", selector)
        if not dev:
            continue
        direction = re.search(r"\bdir (\S+)", rest)
        action = re.search(r"\baction (\S+)", rest)
        what = (f"{selector} dir {direction[1] if direction else '?'} action "
                f"{action[1] if action else 'allow'}")
        ns.kernel_users.setdefault(_link_named(ns, dev[1]), []).append(
            f"has the IPsec (xfrm) policy {what} restricted to it, which holds its ifindex: "
            "after the unbind the policy applies to nothing on it (traffic it protects leaves "
            f"in the clear, a block drops nothing), for good (`ip xfrm policy delete {selector} "
            f"dir {direction[1] if direction else '?'}`, or the IPsec daemon's configuration "
            "without `interface`, first, if it may go)")


def _unread(ns: Namespace, what: str, argv: list[str], e: Exception, holder: str) -> None:
    """A problem of ``ns``: ``what`` cannot be read by ``argv`` (``e``), where ``holder``
    would hold a port's ifindex, gone after the unbind; an iproute2 tool that could not run
    is named to install."""
    hint = f"; install iproute2's `{argv[0]}`" if isinstance(e, OSError) else ""
    ns.problems.append(f"{what} cannot be read (`{' '.join(argv)}`: {e}): {holder} holds its "
                       f"ifindex, gone after the unbind{hint}")


def _xfrm_policies(text: str) -> list[tuple[str, str]]:
    """``ip xfrm policy show``'s policies as (selector, the rest): each begins with its
    selector at the start of a line (``src 10.0.5.0/24 dst 10.20.0.0/16 dev X``), its
    direction, action, templates indented below. ValueError for another shape."""
    policies: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            if not line.startswith("src "):
                raise ValueError(f"a policy begins with {shown(line.strip())}, not its selector")
            policies.append((line.strip(), ""))
        elif policies:
            policies[-1] = (policies[-1][0], f"{policies[-1][1]} {line.strip()}")
        else:
            raise ValueError(f"{shown(line.strip())} comes before any selector")
    return policies


def _read_vxlan_fdb(fs: Sysfs, ns: Namespace, where: str) -> None:
    """Each VXLAN forwarding or multicast entry sent out of a port (``bridge fdb append
    00:00:00:00:00:00 dev vxlan42 dst 239.1.1.1 via enp5s0f1``: an overlay's flood to a
    multicast group, or to a link-local VTEP, pinned to one uplink; ``bridge mdb add dev
    vxlan42 port vxlan42 grp 239.1.1.1 permanent dst 10.9.9.9 via enp5s0f1``, Linux 6.4 and
    later: a group's traffic, or with ``grp 0.0.0.0``/``::`` every unregistered group's,
    replicated to a VTEP), filed in ``ns.kernel_users``. The VXLAN names no lower device, so
    it is no upper device of the port; the entry keeps the port as a bare ifindex
    (``vxlan_rdst.remote_ifindex``), which nothing clears: after the unbind that traffic (ARP,
    ND, DHCP of the overlay's far side; a multicast group's) goes nowhere, for good. Only a
    VXLAN's entries can carry ``via``: both tables are read for each VXLAN of ``ns``
    (:data:`_VXLAN_TABLES`) by one reader. What cannot be read is a problem of ``ns``."""
    for name in sorted(n for n, link in ns.links.items() if _kind(link) == "vxlan"):
        for table, (what, entries_of, judge) in _VXLAN_TABLES.items():
            argv = ["bridge", "-j", table, "show", "dev", name]
            try:
                text = _run(fs, ns.enter + argv, ns.fake / f"bridge-{table}-{name}.json",
                            ns.fds, **_by(ns))
                entries = entries_of(_ip_json(text) if text.strip() else [])
                if not isinstance(entries, list) or not all(isinstance(e, dict)
                                                            for e in entries):
                    raise ValueError("not a list of objects")
                for entry in entries:
                    judge(ns, name, entry)
            except (OSError, ValueError) as e:
                _unread(ns, f"the {what} of the VXLAN {name}{where}", argv, e,
                        "an entry sent `via` a port")
                return


def _vxlan_entry(ns: Namespace, vxlan: str, entry: dict) -> None:
    """One entry of ``bridge -j fdb show dev VXLAN``: its ``viaIf`` (a name, ``ifN`` for an
    index `bridge` cannot name: the link of that index) is a use of that port. ``viaIfIndex``
    is an index in another namespace (a VXLAN moved from the one it was made in, whose
    underlay it keeps): which port cannot be told, ValueError."""
    where = f"{entry.get('mac', '?')} dst {entry.get('dst', '?')}"
    if "viaIfIndex" in entry:
        raise ValueError(f"the entry {where} goes via the ifindex {entry['viaIfIndex']} of "
                         "another namespace: which port cannot be told (`bridge fdb del "
                         f"{entry.get('mac', '?')} dev {vxlan} dst {entry.get('dst', '?')}`, "
                         "if it may go)")
    _via_use(ns, entry.get("viaIf"), f"the VXLAN {vxlan}'s forwarding entry {where}",
             "the entry sends", f"bridge fdb del {entry.get('mac', '?')} dev {vxlan} dst "
             f"{entry.get('dst', '?')}")


def _via_use(ns: Namespace, via, what: str, sent: str, undo: str) -> None:
    """A VXLAN entry ``what`` sent ``via`` a port (a name, ``ifN``: the link of that index;
    None: none) is a use of that port: ``sent`` to an index that is gone after the unbind."""
    if via is None:
        return
    ns.kernel_users.setdefault(_link_named(ns, str(via)), []).append(
        f"carries {what} (`via` it), which holds its ifindex: after the unbind {sent} to an "
        f"index that is gone, for good (`{undo}` first, if it may go)")


def _mdb_entries(listing) -> list:
    """The entries of ``bridge -j mdb show dev X``'s listing (``[{"mdb": [...], "router":
    {...}}]``, as 6.1 prints it for a VXLAN with none: ``"mdb": []``)."""
    if not isinstance(listing, list) or not all(isinstance(t, dict) for t in listing):
        raise ValueError("not a list of objects")
    return [e for t in listing for e in t.get("mdb", [])]


def _vxlan_mdb_entry(ns: Namespace, vxlan: str, entry: dict) -> None:
    """One entry of ``bridge -j mdb show dev VXLAN``: a remote one (its ``port`` is the VXLAN
    itself) whose ``via`` (a name, ``ifN``: the link of that index) is a use of that port. A
    remote entry printed with no ``dst`` comes from a `bridge` older than 6.4, which prints
    neither ``dst`` nor ``via``: whether it goes via a port cannot be told, ValueError."""
    group = entry.get("grp", "?")
    if entry.get("port") == vxlan and "dst" not in entry:
        raise ValueError(f"its entry for the group {group} is printed with no `dst` nor `via` "
                         "(iproute2 before 6.4): whether it goes via a port cannot be told; "
                         "install iproute2 6.4 or later")
    _via_use(ns, entry.get("via"), f"the VXLAN {vxlan}'s multicast entry for the group "
             f"{group} dst {entry.get('dst', '?')}", "that group's traffic goes",
             f"bridge mdb del dev {vxlan} port {vxlan} grp {group} dst {entry.get('dst', '?')}")


#: A VXLAN's tables whose entries can be sent ``via`` a port, read by
#: :func:`_read_vxlan_fdb`: ``bridge -j TABLE show dev X``, what the table is called, its
#: entries from the listing, and the judge of one entry.
_VXLAN_TABLES = {"fdb": ("forwarding entries", lambda listing: listing, _vxlan_entry),
                 "mdb": ("multicast entries (MDB)", _mdb_entries, _vxlan_mdb_entry)}


def _by(ns: Namespace) -> dict:
    """:func:`_run`'s ``deadline`` for ``ns``'s commands, when it has one."""
    return {"deadline": ns.deadline} if ns.deadline is not None else {}


def _route_text(r: dict) -> str:
    text = f"{r.get('type', '')} {r.get('dst', 'default')}".strip()
    if r.get("nexthops"):
        text += " (ECMP: " + ", ".join(h.get("dev", "?") for h in r["nexthops"]) + ")"
    return text + f" (table {r.get('table', 'main')})"


#: Lightweight tunnels whose ``encap`` names a port by its ifindex, and the key `ip -j` prints
#: it under: SRv6's ``seg6local`` (``End.DX2``/``End.DX4``/``End.DX6`` send out of ``oif``)
#: and ``xfrm`` (``link_dev``).
_ENCAP_PORT_KEYS = {"seg6local": ("oif",), "xfrm": ("link_dev",)}


def _encap(r: dict) -> dict:
    """A route's ``encap`` as one object: later iproute2 nest it (``"encap": {"encap_type":
    "seg6local", "action": ..., "oif": ...}``), 6.1 prints its fields at the route's top level
    beside ``"encap": "seg6local"``; {} for a route with none."""
    encap = r.get("encap")
    if isinstance(encap, dict):
        return {**encap, "encap_type": encap.get("encap_type")}
    return {**r, "encap_type": encap} if isinstance(encap, str) else {}


def _encap_ports(ns: Namespace, r: dict) -> set[str]:
    """The ports a route's ``encap`` sends into (``ip -6 route add SID encap seg6local action
    End.DX2 oif enp5s0f1 dev enp2s0``: an SRv6 L2VPN's attachment port), by name, a name `ip`
    spells ``ifN`` included as the link of that index. The route is filed under its ``dev``,
    another port, so the down does not flush it; the kernel keeps the port as a bare ifindex
    (no reference, no notifier), which after the unbind names nothing: every frame is dropped,
    for good, until the route is made again. So it is a route of that port too."""
    encap = _encap(r)
    names = {encap[key] for key in _ENCAP_PORT_KEYS.get(encap["encap_type"], ()) if
             isinstance(encap.get(key), str)} if encap else set()
    return {_link_named(ns, name) for name in names}


def _link_named(ns: Namespace, name: str) -> str:
    """The link of ``ns`` a name `ip` or `bridge` printed stands for: itself, or for an
    index they could not name (``ifN``) the link of that index, where there is one."""
    return next((other for other, link in ns.links.items()
                 if name == f"if{link.get('ifindex')}"), name)


def _encap_text(r: dict) -> str:
    """A route whose ``encap`` sends into a port, as its refusal names it: ``seg6local
    End.DX2 fc00:0:1::d2 (table main)`` and why it matters."""
    encap = _encap(r)
    what = " ".join(str(w) for w in (encap["encap_type"], encap.get("action")) if w)
    return (f"{what} {r.get('dst', 'default')} (table {r.get('table', 'main')}), which sends "
            "into it by its ifindex: after the unbind that index names nothing and the "
            "route's traffic is dropped, for good (delete the route first, if it may go)")


def _address_of(endpoint: str) -> str:
    """``ss -n``'s local address without its port, brackets or ``%ifname``: ``10.0.5.1:22``
    and ``[fe80::1%enp5s0f1]:22`` give ``10.0.5.1`` and ``fe80::1``; an IPv4 connection to a
    dual-stack listener (``[::ffff:10.0.5.1]:22``) gives its IPv4 address."""
    host = endpoint.rpartition(":")[0] if ":" in endpoint else endpoint
    host = host.partition("%")[0].strip("[]")
    mapped = host.removeprefix("::ffff:")
    return mapped if mapped != host and "." in mapped else host


def _on_its_address(ns: Namespace, dev: Netdev) -> list[str]:
    """The sockets whose local address is one of ``dev``'s own in its namespace, those
    ``ss`` prints with no ``%ifname`` (a connection from its address: nothing bound it to the
    device). An IPv4 address stays on a port set down, and so does a TCP connection from it
    with no data in flight (an idle SSH session, a replication stream between heartbeats),
    which carries on when the port comes back; taking the port removes the address and loses
    it. A listener on the address is counted too (fail closed: it serves the lab network
    through that port only)."""
    uses, scoped = [], set(ns.sockets.get(dev.name, []))
    for address in ns.addresses.get(dev.name, []):
        for state, local, peer, line in ns.local.get(address.partition("/")[0], []):
            if line in scoped:
                continue  # (named already, as a socket bound to it)
            if state in ("LISTEN", "UNCONN"):
                uses.append(f"{dev} has a socket listening on its address ({line})")
            else:
                uses.append(f"{dev} has the connection {local} {peer} from its address")
    return uses


def _ss_argv(fs: Sysfs) -> list[str]:
    """``ss``'s arguments: TCP, UDP and raw sockets, and SCTP ones (``-S``: an Open5GS AMF's
    NGAP listener, an association from the port's address) where the ``sctp`` module is
    loaded: only there can an SCTP socket exist, and asking elsewhere would load it."""
    return _SS + (["-S"] if _loaded(fs, "sctp") else [])


def _read_sockets(fs: Sysfs, ns: Namespace, where: str) -> None:
    """Sockets bound to an interface: ``ss`` (TCP, UDP, raw, SCTP: :func:`_ss_argv`) and
    /proc/net/packet (packet sockets, by interface index; 0 means every interface: bound to
    none). An SCTP association under its listener is a line of its own (`` `- ESTAB ...``),
    whose fields fall where a socket's do."""
    try:
        ss = _run(fs, ns.enter + _ss_argv(fs), ns.fake / "ss.txt", ns.fds, **_by(ns))
        packet = _proc_net_file(fs, ns, "packet")
        if packet is None:
            raise OSError("/proc/net/packet cannot be read")
        if _loaded(fs, "sctp"):
            _read_sctp_addresses(fs, ns)
    except OSError as e:
        ns.problems.append(f"the sockets{where} cannot be read: {e}")
        return
    for line in ss.splitlines():
        for ifname in _SCOPED.findall(line):
            ns.sockets.setdefault(ifname, []).append(" ".join(line.split()))
        f = line.split()
        if len(f) >= 6:  # Netid State Recv-Q Send-Q Local Peer [Process]
            ns.local.setdefault(_address_of(f[4]), []).append(
                (f[1], f[4], f[5], " ".join(f)))
    by_index = {str(link.get("ifindex")): name for name, link in ns.links.items()}
    for line in packet.splitlines()[1:]:
        f = line.split()
        if len(f) >= 5 and f[4] != "0":
            name = by_index.get(f[4], f"ifindex {f[4]}")
            ns.sockets.setdefault(name, []).append(f"packet socket, inode {f[-1]}")


#: /proc/net/sctp's tables: each one's column where the local addresses start, the word
#: after them (None: the line's end), its ``LPORT`` column, and what a row of it is.
_SCTP_TABLES = (("sctp/eps", 8, None, 5, "LISTEN"), ("sctp/assocs", 13, "<->", 11, "ESTAB"))


def _read_sctp_addresses(fs: Sysfs, ns: Namespace) -> None:
    """Every local address of each SCTP endpoint and association (/proc/net/sctp's
    ``LADDRS``), filed in ``ns.local`` as an ``ss`` socket is: ``ss`` shows one address of
    a multi-homed one (``sctp_bindx``: 10.0.6.1 and 10.0.5.1), and a listener or a path
    through the port's address is lost with it all the same. Raises OSError."""
    for name, first, end, port, state in _SCTP_TABLES:
        for line in (_proc_net_file(fs, ns, name) or "").splitlines()[1:]:
            f = line.split()
            stop = f.index(end) if end in f else len(f)
            peer = f[stop + 1].lstrip("*") if stop + 1 < len(f) else "*"
            for address in (a.lstrip("*") for a in f[first:stop] if len(f) > port):
                local = f"{address}:{f[port]}"
                ns.local.setdefault(address, []).append(
                    (state, local, peer, f"sctp {state} {local} {peer} (/proc/net/{name})"))


#: The kernel's own tables of what is bound to an interface with no socket, each as
#: (/proc/net file, the column naming the interface, what a row of it is).
_KERNEL_USERS = (("ip_mr_vif", 1, "vif"), ("ip6_mr_vif", 1, "vif"), ("ptype", 1, "ptype"))


def _read_kernel_users(fs: Sysfs, ns: Namespace, where: str) -> None:
    """What the kernel keeps on an interface with no socket and no route: a multicast
    routing interface (a VIF of smcroute, pimd, FRR's pim: /proc/net/ip_mr_vif and
    ip6_mr_vif; kept while its port is down, deleted at unregister with every forwarding
    entry through it) and a protocol handler bound to the device (a TIPC bearer,
    ``tipc_l2_rcv_msg``: /proc/net/ptype's Device column, which lists the handlers bound to
    a device of the reader's namespace; the cluster's configuration is lost when the port is
    unbound). Filed in ``ns.kernel_users``. A file the kernel does not have (no multicast
    routing built in) lists nothing; one that cannot be read is a problem of ``ns``."""
    for name, column, what in _KERNEL_USERS:
        try:
            text = _proc_net_file(fs, ns, name)
        except OSError as e:
            ns.problems.append(f"/proc/net/{name}{where} cannot be read: {e}")
            return
        for line in (text or "").splitlines()[1:]:
            f = line.split()
            if len(f) <= column or (what == "ptype" and len(f) < 3):
                continue  # (a ptype row with no Device: a handler of every device)
            if what == "vif":
                use = f"carries a multicast routing interface (VIF {f[0]})"
            else:
                use = f"has the protocol handler {' '.join(f[2:])} (type {f[0]}) bound to it"
            ns.kernel_users.setdefault(f[column], []).append(use)


def _read_pktgen(fs: Sysfs, ns: Namespace, where: str) -> None:
    """A port a pktgen thread has (``add_device`` written to /proc/net/pktgen/kpktgend_N: a
    lab's traffic generator, set up and waiting, running or stopped) is a use: the kernel
    removes it from the thread when the port is unregistered (the unbind), with its whole
    setup (rates, sizes, addresses), and nothing adds it back. Each thread's file lists its
    devices (``Running: ...`` and ``Stopped: enp5s0f1@0 ...``, a queue after ``@``), in every
    namespace (pktgen is per namespace). No /proc/net/pktgen: pktgen is not loaded, nothing
    to read (reading loads nothing); a thread's file that cannot be read is a problem."""
    own = fs.proc("net", "pktgen")
    for thread in sorted(p.name for p in own.glob("kpktgend_*")) if own.is_dir() else []:
        try:
            text = _proc_net_file(fs, ns, f"pktgen/{thread}")
        except OSError as e:
            ns.problems.append(f"/proc/net/pktgen/{thread}{where} cannot be read: {e}: a "
                               "port pktgen has is removed from it at the unbind")
            return
        for line in (text or "").splitlines():
            state, _, names = line.partition(":")
            for name in names.split() if state in ("Running", "Stopped") else []:
                ns.kernel_users.setdefault(name.split("@")[0], []).append(
                    f"is a device of pktgen's {thread} ({state.lower()}, as {name}), removed "
                    "from it with its setup at the unbind")


#: ``rdma -j link show``: every port of every RDMA device this namespace sees, with the
#: interface it runs over (``netdev``, ``netdev_index``) when that is in this namespace.
_RDMA = ["rdma", "-j", "link", "show"]


def _rdma_possible(fs: Sysfs) -> bool:
    """Whether an RDMA device can exist: ib_core is there (its class, /sys/class/infiniband,
    is made when it loads) and either lists a device in the harness's namespace or shares
    none (``netns_mode`` N, ``rdma system set netns exclusive``: a device moved to another
    namespace shows only in that one's sysfs). Without ib_core there is none, and asking
    ``rdma`` would load it (its netlink family is ib_core's: ``request_module``)."""
    cls = fs.sys("class", "infiniband")
    try:
        if any(cls.iterdir()):
            return True
    except FileNotFoundError:
        return False
    except OSError:
        return True  # (cannot be listed: read, not ruled out unseen)
    mode = fs.read(fs.sys("module", "ib_core", "parameters", "netns_mode"))
    return mode is not None and mode.strip() not in ("Y", "1")


def _rdma_software(fs: Sysfs, device: str) -> bool:
    """Whether an RDMA device is a software one (Soft-RoCE's ``rxe``, Soft-iWARP's ``siw``):
    registered with no parent device (since 5.10), so it sits in
    /sys/devices/virtual/infiniband, below no PCI function, and the unbind of its port
    unregisters it for good; rxe before 5.10 sat below its port's device, and tells itself
    by its ``parent`` file (the interface it runs over) wherever it sits. One the harness's
    sysfs does not show (another namespace's, in exclusive mode) counts as one: where it
    sits cannot be read."""
    entry = fs.sys("class", "infiniband", device)
    if not entry.exists() or (entry / "parent").exists():
        return True
    virtual = os.path.realpath(fs.sys("devices", "virtual"))
    return os.path.realpath(entry).startswith(virtual + "/")


def _read_rdma(fs: Sysfs, ns: Namespace, where: str) -> None:
    """Each software RDMA device over a port (``rdma link add rxe0 type rxe netdev
    enp5s0f1``, ``type siw``), filed in ``ns.kernel_users`` whatever its port's state: the
    down only marks its port DOWN, the unbind (``NETDEV_UNREGISTER``) unregisters it, and
    nothing makes it again when the port comes back, so an nvmet-rdma port, an ``nvme
    connect -t rdma`` controller, an NFS/RDMA mount or an iSER session on it (no socket shows
    any) are lost for good. A hardware one is the function's own and is judged below it
    (:func:`harness.host.safety._rdma_ports_up`). Read in every namespace (a port is named
    only in its own namespace's listing) where one can exist (:func:`_rdma_possible`), from
    ``rdma -j link show``, or from sysfs (rxe's ``parent``, a port's ``gid_attrs/ndevs``)
    where ``rdma`` is missing. Output that cannot be read is a problem of ``ns``."""
    if not _rdma_possible(fs):
        return
    missing = shutil.which("rdma") is None if fs.real_host else \
        not (ns.fake / "rdma-link.json").exists()
    if missing:
        ports = _rdma_sysfs_ports(fs, ns)
    else:
        try:
            text = _run(fs, ns.enter + _RDMA, ns.fake / "rdma-link.json", ns.fds, **_by(ns))
            ports = _rdma_ports(ns, _ip_json(text or "[]"))
        except (OSError, ValueError, TypeError) as e:
            ns.problems.append(f"`rdma {' '.join(_RDMA[1:])}`{where} cannot be read: {e}: a "
                               "software RDMA device (rxe, siw) on a port is unregistered "
                               "for good at the unbind")
            return
    for device, port, state, netdev in ports:
        if not _rdma_software(fs, device):
            continue
        ns.rdma_seen.add(device)
        if netdev is None:
            continue
        ns.rdma_tied.add(device)
        ns.kernel_users.setdefault(netdev, []).append(
            f"carries the software RDMA device {device} (port {port}, {state}), which the "
            "unbind unregisters for good, with what uses it (an NVMe over RDMA target or "
            "host, an NFS over RDMA mount, an iSER session): nothing makes it again when the "
            f"port comes back (`rdma link delete {device}` first, if it may go)")


def _rdma_ports(ns: Namespace, listing) -> list[tuple[str, str, str, "str | None"]]:
    """(device, port, state, the link of ``ns`` it runs over or None) of each port of ``rdma
    -j link show``: ``netdev``, or ``netdev_index`` as the link of that index. Raises
    ValueError."""
    if not isinstance(listing, list) or not all(isinstance(p, dict) for p in listing):
        raise ValueError("not a list of objects")
    out = []
    for p in listing:
        if not isinstance(p.get("ifname"), str):
            raise ValueError(f"a port with no device: {p!r}")
        netdev = p.get("netdev")
        if not isinstance(netdev, str) and type(p.get("netdev_index")) is int:
            netdev = _link_named(ns, f"if{p['netdev_index']}")
        out.append((p["ifname"].partition("/")[0], str(p.get("port", "?")),
                    str(p.get("state", "?")), netdev if isinstance(netdev, str) else None))
    return out


def _rdma_sysfs_ports(fs: Sysfs, ns: Namespace) -> list[tuple[str, str, str, "str | None"]]:
    """:func:`_rdma_ports` from the harness's sysfs, where ``rdma`` is missing: each device's
    ports, each tied to the links of ``ns`` its device's ``parent`` (rxe) or the port's
    ``gid_attrs/ndevs/N`` (a RoCE GID's interface) names, or to none (siw: sysfs names no
    interface; an unknown name; a device only another namespace shows). A name is matched in
    every namespace (sysfs names no namespace): a false "in use" keeps a port, a miss loses
    the device."""
    out = []
    for dev in sorted(fs.sys("class", "infiniband").glob("*")):
        names = {fs.read(dev / "parent")}
        names |= {fs.read(n) for n in dev.glob("ports/*/gid_attrs/ndevs/*")}
        names = {n.strip() for n in names if n and n.strip()} & ns.links.keys()
        for port in sorted(dev.glob("ports/*")) or [dev / "ports" / "?"]:
            state = (fs.read(port / "state") or "?").partition(":")[2].strip() or "?"
            out += [(dev.name, port.name, state, n) for n in sorted(names)] or \
                [(dev.name, port.name, state, None)]
    return out


def _rdma_untied(fs: Sysfs, spaces: list[Namespace]) -> list[str]:
    """A software RDMA device whose port names an interface in no namespace read (``rdma``
    missing and sysfs silent, siw's; a device in one namespace over a port of another, in
    exclusive mode; or one the harness's sysfs lists and no ``rdma`` listing showed) is a
    problem: which port it is on cannot be told, and the unbind of that port loses it."""
    seen = set().union(*(ns.rdma_seen for ns in spaces))
    seen |= {d.name for d in fs.sys("class", "infiniband").glob("*")
             if _rdma_software(fs, d.name)}
    tied = set().union(*(ns.rdma_tied for ns in spaces))
    return [f"the software RDMA device {d} names no interface the harness can read (`rdma "
            "-j link show` in each namespace, or sysfs where `rdma` is missing): which port "
            "it runs over cannot be told, and the unbind of that port unregisters it for "
            f"good (install iproute2's `rdma`, or `rdma link delete {d}` first, if it may go)"
            for d in sorted(seen - tied)]


#: The groups the kernel joins on an interface by itself, no socket asking: all-hosts, the
#: IPv6 all-nodes, and all-routers (forwarding on); solicited-node ones go by their prefix.
_KERNEL_GROUPS = {"224.0.0.1", "ff01::1", "ff02::1", "ff01::2", "ff02::2", "ff05::2"}
_SOLICITED_NODE = ipaddress.ip_network("ff02::1:ff00:0/104")


def _read_multicast(fs: Sysfs, ns: Namespace, where: str) -> None:
    """A multicast group joined on an interface (``IP_ADD_MEMBERSHIP``/``IPV6_JOIN_GROUP`` by
    its index, from a socket on the wildcard or the group: ``ss`` shows no ``%ifname`` and
    none of the port's addresses) is a use: the kernel keeps the membership through a down
    and rejoins at the up, but frees it when the port is unregistered (the unbind), and the
    port given back has a new ifindex, so the receiver (an ST 2110 red or blue leg, a
    market-data A or B feed) gets nothing for good. Read from /proc/net/igmp and igmp6 in
    every namespace; a group the kernel joins by itself (:data:`_KERNEL_GROUPS`) is none.
    A kernel without the file has no multicast; one that cannot be read is a problem."""
    for name, groups in (("igmp", _igmp_groups), ("igmp6", _igmp6_groups)):
        try:
            text = _proc_net_file(fs, ns, name)
            found = groups(text or "")
        except (OSError, ValueError, IndexError) as e:
            ns.problems.append(f"/proc/net/{name}{where} cannot be read: {e}: a multicast "
                               "group joined on a port is lost at the unbind")
            return
        for ifname, group in found:
            if group not in _KERNEL_GROUPS and ipaddress.ip_address(group) not in \
                    _SOLICITED_NODE:
                ns.kernel_users.setdefault(ifname, []).append(
                    f"has the multicast group {group} joined on it (/proc/net/{name}), "
                    "which the unbind leaves and nothing joins again")


def _igmp_groups(text: str) -> list[tuple[str, str]]:
    """(interface, group) of each line of /proc/net/igmp: a device line (``4\tenp5s0f1  :
    1 V3``; a name of 10 characters or more runs into its colon) and an indented line for
    each of its groups, the address as the kernel holds it (network order) printed as a host
    integer (``010101EF`` is 239.1.1.1 on a little-endian host). Raises ValueError."""
    found, ifname = [], None
    for line in text.splitlines()[1:]:
        if not line.strip():
            continue
        if not line[0].isspace():
            ifname = line.split(None, 1)[1].partition(":")[0].strip()
        elif ifname is None:
            raise ValueError(f"a group with no device: {line.strip()!r}")
        else:
            raw = struct.pack("=I", int(line.split()[0], 16))
            found.append((ifname, str(ipaddress.IPv4Address(raw))))
    return found


def _igmp6_groups(text: str) -> list[tuple[str, str]]:
    """(interface, group) of each line of /proc/net/igmp6 (``4 enp5s0f1 ff15000...01 1
    00000004 0``: the group in 32 hex digits). Raises ValueError."""
    return [(f[1], str(ipaddress.IPv6Address(bytes.fromhex(f[2]))))
            for f in (line.split() for line in text.splitlines()) if f]


# -- what tc and nftables keep on a port --------------------------------------------------------


#: ``sch_ingress``'s two qdiscs, whose filters (a BPF program's ``bpf da``, a ``u32``, a
#: ``matchall``) are listed by hook, and the hooks each has.
_TC_HOOK_QDISCS = {"ingress": ("ingress",), "clsact": ("ingress", "egress")}


def _read_tc(fs: Sysfs, ns: Namespace, where: str) -> None:
    """What tc keeps on a port with no socket or route, each kept through a down and deleted
    (a mirred action's target: cleared) when the port is unregistered, which the unbind does:
    a qdisc someone configured, with the filters on it, or filters on a default root
    (:func:`_read_tc_qdiscs`: Cilium's ``cil_from_netdev`` before tcx, a lab's ``tc filter
    ... bpf da``, an ``htb`` root with a BPF classifier, shaping; and a filter on any link
    that matches it as its input device, ``indev``), a tcx program (:func:`_read_tcx`: Cilium
    or Calico on 6.6+), and a mirred action on any port that sends to it
    (:func:`_read_mirred`: a software SPAN to a capture port). Filed in
    ``ns.kernel_users``; what cannot be read is a problem of ``ns``."""
    for read in (_read_tc_qdiscs, _read_tcx, _read_mirred):
        if not read(fs, ns, where):
            return


def _tc_json(fs: Sysfs, ns: Namespace, args: list[str], fake: str) -> list:
    """``tc -j ARGS`` run in ``ns`` (``<fake>.json`` under a fake root), a list (empty output:
    nothing). Raises OSError or ValueError."""
    text = _run(fs, ns.enter + ["tc", "-j", *args], ns.fake / f"{fake}.json", ns.fds, **_by(ns))
    out = _ip_json(text) if text.strip() else []
    if not isinstance(out, list):
        raise ValueError("not a list")
    return out


#: The qdiscs the kernel attaches to a port by itself (handle ``0:``) that take no filter
#: (tc: "Qdisc not classful", for ``mq`` "Class doesn't support blocks"; ``mq``'s children
#: cannot be named as a parent at all): a port with only these has nothing of tc on it.
#: Another default (``net.core.default_qdisc``: ``fq_codel``, ``cake``, ``sfq``) can hold
#: filters as the root, which are read (:func:`_tc_default_root`).
_TC_FILTERLESS = {"noop", "noqueue", "pfifo_fast", "mq"}
#: The kinds of qdisc that hold no filter wherever they are (no ``tcf_block``: tc says
#: "Class doesn't support blocks" or "Qdisc not classful"; as a root, ``tc filter show`` lists
#: none): shaping (``tbf``, ``netem``, ``taprio``...), FIFOs and AQMs. Not asked for filters:
#: a default ``fq`` on every port, or a configured ``tbf`` root, costs no ``tc``.
_TC_BLOCKLESS = _TC_FILTERLESS | {"tbf", "netem", "pfifo", "bfifo", "pfifo_head_drop", "fq",
                                  "codel", "pie", "red", "gred", "plug", "mqprio", "taprio",
                                  "cbs", "etf"}
#: The kinds of qdisc whose classes hold no filter of their own (the kernel gives a class no
#: ``tcf_block``: "DRR classid must be zero"; ``prio``, ``qfq``, ``ets``, ``multiq``, ``sfb``,
#: ``sfq``, ``fq_codel`` and ``cake`` alike, their filters going on the qdisc, listed at its
#: handle), those with no filter at all, and the hooks (listed by hook): a link whose qdiscs
#: are all of these is not asked for its classes (a default ``fq_codel`` or ``mq`` costs no
#: ``tc``). A class of any other kind (``htb``, ``hfsc``, one not known here) is listed.
_TC_CLASS_BLOCKLESS = _TC_BLOCKLESS | set(_TC_HOOK_QDISCS) | {
    "prio", "drr", "qfq", "ets", "multiq", "sfb", "sfq", "fq_codel", "cake"}
#: The most filter listings below a link's root read (one ``tc`` for each class that holds
#: filters, each qdisc configured below the root): a shaper with thousands of classes would
#: stretch the read to minutes, and the namespaces share one budget. Past it, a filter that
#: matches a port as its input device cannot be ruled out: a problem of the namespace.
_TC_BELOW_ROOT_MAX = 64


def _read_tc_qdiscs(fs: Sysfs, ns: Namespace, where: str) -> bool:
    """A qdisc someone configured on a port that sits on a device (``parentdev``: the ports a
    function can be taken with) is a use, named with its kind and handle: the kernel's own
    have the handle ``0:``, one tc added has another (``8001:`` and up when none is given,
    ``ffff:`` for ``ingress``/``clsact``). Each is kept through a down and deleted with its
    filters (a BPF classifier, a ``u32`` with its actions) or shaping (``netem``, ``tbf``,
    ``taprio``) at the unbind, and the port comes back with the default qdisc. The filters of
    every other link's qdiscs are read too (:func:`_tc_other_link`), and those of every
    link's classes and qdiscs below the root (:func:`_read_tc_below_root`), for one that
    matches a port as its input device. Read from one ``tc -j qdisc show`` per namespace with
    a port (a dump: it loads no module; a filter's input device is of its own namespace, so
    one with no port has none). False: a problem."""
    ports = {n for n, link in ns.links.items() if "parentdev" in link}
    if not ports:
        return True
    try:
        qdiscs = [q for q in _tc_json(fs, ns, ["qdisc", "show"], "tc-qdisc")
                  if isinstance(q, dict)]
        if any("dev" not in q for q in qdiscs):
            raise ValueError("a qdisc is listed with no device")
    except (OSError, ValueError) as e:
        ns.problems.append(f"the tc qdiscs{where} cannot be read (`tc -j qdisc show`: {e}): "
                           "a qdisc configured on a port, with its filters (a BPF program) or "
                           "shaping, is deleted at the unbind; install iproute2's `tc`")
        return False
    for q in (q for q in qdiscs if q["dev"] not in ports):
        try:
            _tc_other_link(fs, ns, str(q["dev"]), q)
        except (OSError, ValueError) as e:
            _tc_unlisted(ns, f"{q['dev']}'s {q.get('kind', '?')} qdisc {q.get('handle', '?')}",
                         e)
            return False
    for q in (q for q in qdiscs if q["dev"] in ports):
        name, kind = str(q["dev"]), str(q.get("kind", "?"))
        if kind in _TC_HOOK_QDISCS:
            used = (f"has a tc {kind} qdisc, whose filters ({_tc_filters(fs, ns, name, kind)}) "
                    "are deleted with it at the unbind")
        elif _tc_handle(q) != 0:
            used = _tc_configured(fs, ns, name, q)
        else:
            used = _tc_default_root(fs, ns, name, q)
        if used:
            ns.kernel_users.setdefault(name, []).append(used)
    return _read_tc_below_root(fs, ns, qdiscs, where)


def _read_tc_below_root(fs: Sysfs, ns: Namespace, qdiscs: list[dict], where: str) -> bool:
    """Lists the filters below the root of every link, a port's too (an uplink is often
    one): those of each class that holds filters (``htb``, ``hfsc``: a filter at ``parent
    1:1``, which ``tc filter show dev X parent 1:`` does not show) and of each qdisc
    configured below the root (``parent 20:``), for one that matches a port as its input
    device (:func:`_tc_list`). At most :data:`_TC_BELOW_ROOT_MAX` a link; more, or a list
    that cannot be read, is a problem of ``ns``. False: a problem."""
    links: dict[str, list[dict]] = {}
    for q in qdiscs:
        links.setdefault(str(q["dev"]), []).append(q)
    for name, mine in links.items():
        try:
            places = _tc_below_root(fs, ns, name, mine)
        except (OSError, ValueError) as e:
            ns.problems.append(f"the tc classes of {name}{where}, and its qdiscs below the "
                               f"root, cannot be listed ({e}): a filter on one that matches a "
                               "port as its input device (`indev`) holds its ifindex, gone "
                               "after the unbind; install iproute2's `tc`")
            return False
        if len(places) > _TC_BELOW_ROOT_MAX:
            ns.problems.append(f"{name}{where} has {len(places)} tc classes and qdiscs below "
                               f"its root that hold filters, more than the "
                               f"{_TC_BELOW_ROOT_MAX} the harness lists: one may match a port "
                               "as its input device (`indev`) and hold its ifindex, gone after "
                               f"the unbind; fewer classes on {name}, or its shaping in a "
                               "network namespace with no port of a device, lets it be read")
            return False
        for parent, fake in places:
            try:
                _tc_list(fs, ns, name, ["parent", parent], f"tc-filter-{name}-{fake}")
            except (OSError, ValueError) as e:
                _tc_unlisted(ns, f"{name} parent {parent}", e)
                return False
    return True


def _tc_below_root(fs: Sysfs, ns: Namespace, name: str, qdiscs: list[dict]
                   ) -> list[tuple[str, str]]:
    """Where below its root ``name``'s qdiscs (``qdiscs``) can hold filters, as (parent,
    fake): each qdisc configured below the root that holds filters (a handle other than
    ``0:``: the kernel's own, ``mq``'s children, cannot be named as a parent) and, when one
    of the qdiscs' classes can hold them (not :data:`_TC_CLASS_BLOCKLESS`), each such class
    of ``tc class show dev NAME`` (:func:`_tc_classes`). Raises OSError or ValueError."""
    places = []
    for q in qdiscs:
        if q.get("root") or q.get("kind") in _TC_BLOCKLESS or q.get("kind") in _TC_HOOK_QDISCS:
            continue
        handle = _tc_handle(q)
        if handle is None:
            raise ValueError(f"a {q.get('kind', '?')} qdisc below the root with the handle "
                             f"{q.get('handle')!r}")
        if handle:
            places.append((f"{handle:x}:", f"{handle:x}"))
    if all(q.get("kind") in _TC_CLASS_BLOCKLESS for q in qdiscs):
        return places
    return places + [(f"{major:x}:{minor:x}", f"{major:x}-{minor:x}")
                     for kind, major, minor in _tc_classes(fs, ns, name)
                     if kind not in _TC_CLASS_BLOCKLESS]


def _tc_classes(fs: Sysfs, ns: Namespace, name: str) -> list[tuple[str, int, int]]:
    """(kind, major, minor) of each class of ``tc class show dev NAME`` (``tc-class-NAME.txt``
    under a fake root): text, which iproute2 before 6.2 (Debian 12's 6.1) prints even with
    ``-j``, and 6.2 and later print without it, one line a class (``class htb 1:10 parent 1:1
    prio 0 rate 10Mbit ...``; what a kind prints after it on lines of its own is indented).
    Raises OSError or ValueError (a line that is no class)."""
    text = _run(fs, ns.enter + ["tc", "class", "show", "dev", name],
                ns.fake / f"tc-class-{name}.txt", ns.fds, **_by(ns))
    found = []
    for line in text.splitlines():
        if not line.strip() or line[0].isspace():
            continue
        words = line.split()
        m = re.fullmatch(r"([0-9a-fA-F]+):([0-9a-fA-F]+)", words[2]) if len(words) > 2 else None
        if words[0] != "class" or not m:
            raise ValueError(f"not a class: {line.strip()!r}")
        found.append((words[1], int(m[1], 16), int(m[2], 16)))
    return found


def _tc_other_link(fs: Sysfs, ns: Namespace, name: str, qdisc: dict) -> None:
    """Lists the filters of a qdisc of a link that is no port (an uplink's ``htb`` root, a
    ``bond0``'s, a bridge's ``clsact``) where it can hold them, as a port's are read: an
    ``ingress``/``clsact`` hook, a configured root, a default root that takes filters (one
    ``tc`` per hook or root; those of its classes and of qdiscs below the root:
    :func:`_read_tc_below_root`). Raises OSError or ValueError."""
    kind = qdisc.get("kind")
    if kind in _TC_HOOK_QDISCS:
        for hook in _TC_HOOK_QDISCS[kind]:
            _tc_list(fs, ns, name, [hook], f"tc-filter-{name}-{hook}")
    elif not qdisc.get("root") or kind in _TC_BLOCKLESS:
        return
    elif _tc_handle(qdisc):
        _tc_list(fs, ns, name, ["parent", str(qdisc.get("handle"))],
                 f"tc-filter-{name}-{_tc_handle(qdisc):x}")
    else:
        _tc_list(fs, ns, name, [], f"tc-filter-{name}-root")


def _tc_handle(qdisc: dict) -> int | None:
    """The major number of a qdisc's ``handle`` (``"8001:"``: 0x8001; the kernel's own:
    0), or None when it cannot be read (counted as configured)."""
    m = re.fullmatch(r"([0-9a-fA-F]+):", str(qdisc.get("handle", "")))
    return int(m[1], 16) if m else None


def _tc_configured(fs: Sysfs, ns: Namespace, name: str, qdisc: dict) -> str:
    """A qdisc someone configured, named with its kind, handle and place, and the filters
    on it where it is the root and can hold them (``tc -j filter show dev X parent H``)."""
    handle, kind = qdisc.get("handle", "?"), qdisc.get("kind", "?")
    place = "root" if qdisc.get("root") else f"parent {qdisc.get('parent', '?')}"
    filters = ""
    if qdisc.get("root") and _tc_handle(qdisc) and kind not in _TC_BLOCKLESS:
        found = _tc_named(fs, ns, name, ["parent", str(handle)],
                          f"tc-filter-{name}-{_tc_handle(qdisc):x}")
        filters = f" with its filters ({found})" if found else ""
    return (f"has the tc {kind} qdisc {handle} ({place}) configured on it{filters}, deleted at "
            f"the unbind (the port comes back with the default qdisc): `tc qdisc del dev "
            f"{name} {place}` if nothing needs it")


def _tc_default_root(fs: Sysfs, ns: Namespace, name: str, qdisc: dict) -> str:
    """The filters someone attached to the port's default root qdisc, when it is one that
    takes filters (not :data:`_TC_BLOCKLESS`): a use, or "" (none, or not the root)."""
    if not qdisc.get("root") or qdisc.get("kind") in _TC_BLOCKLESS:
        return ""
    found = _tc_named(fs, ns, name, [], f"tc-filter-{name}-root")
    return (f"has tc filters ({found}) on its default {qdisc.get('kind')} qdisc, deleted at "
            "the unbind" if found else "")


def _tc_named(fs: Sysfs, ns: Namespace, name: str, parent: list[str], fake: str) -> str:
    """``tc -j filter show dev NAME [parent H]``'s filters, as ``u32, bpf cls.o``
    (:func:`_tc_list`); "" for none; why they cannot be listed (where the qdisc is a use all
    the same, or a problem's text)."""
    try:
        found = _tc_list(fs, ns, name, parent, fake)
    except (OSError, ValueError) as e:
        return _tc_unlisted(ns, f"{name} {' '.join(parent) or 'root'}", e)
    return ", ".join(f"{f.get('kind', '?')} {f['options'].get('bpf_name', '')}".strip()
                     for f in found)


def _tc_filters(fs: Sysfs, ns: Namespace, name: str, kind: str) -> str:
    """The filters under ``name``'s ``kind`` qdisc, as ``ingress: bpf cil_from_netdev``, or
    why they cannot be named (the qdisc is a use all the same)."""
    named = []
    for hook in _TC_HOOK_QDISCS[kind]:
        try:
            found = _tc_list(fs, ns, name, [hook], f"tc-filter-{name}-{hook}")
        except (OSError, ValueError) as e:
            return _tc_unlisted(ns, f"{name} {hook}", e)
        named += [f"{hook}: {f.get('kind', '?')} {f['options'].get('bpf_name', '')}".strip()
                  for f in found]
    return ", ".join(named) or "none now"


def _tc_list(fs: Sysfs, ns: Namespace, name: str, parent: list[str], fake: str) -> list[dict]:
    """``tc -j filter show dev NAME [parent H | ingress | egress]``'s filters that have
    ``options`` (those shown with their options as a dict), their mirred actions and input
    devices filed (:func:`_note_mirreds`, :func:`_note_indev`). Raises OSError or
    ValueError."""
    found = _tc_json(fs, ns, ["filter", "show", "dev", name, *parent], fake)
    filters = [{**f, "options": f["options"] if isinstance(f["options"], dict) else {}}
               for f in found if isinstance(f, dict) and "options" in f]
    for f in filters:
        _note_mirreds(ns, f"{name} {' '.join(parent) or 'root'}", f["options"].get("actions"))
        _note_indev(ns, name, parent, f)
    return filters


def _tc_unlisted(ns: Namespace, place: str, e: Exception) -> str:
    """Files the problem of filters at ``place`` (a link and its qdisc or hook) that cannot
    be listed: one of them may match any port of ``ns`` as its input device
    (:func:`_note_indev`). Returns why, for the use of a port whose qdisc it is."""
    where = f" in network namespace {ns.name}" if ns.name else ""
    ns.problems.append(f"the tc filters of {place}{where} cannot be listed ({e}): one that "
                       "matches a port as its input device (`indev`) holds its ifindex, gone "
                       "after the unbind; install iproute2's `tc`")
    return f"cannot be listed: {e}"


#: Where a tc filter's options name the input device it matches (``tcf_change_indev``: the
#: name resolved once, to a bare ifindex): ``u32 ... indev X``, ``flower indev X``, ``fw ...
#: indev X``; the ``route`` classifier's ``fromif X``.
_TC_INDEV_KEYS = ("input_dev", "indev", "fromif")


def _note_indev(ns: Namespace, name: str, parent: list[str], f: dict) -> None:
    """A filter on ``name`` that matches a port as its input device (``u32 ... indev
    enp5s0f1 classid 1:10`` on an uplink's ``htb``: a segment's forwarded traffic shaped by
    the port it came in on) is a use of that port, filed in ``ns.kernel_users``: the kernel
    keeps its bare ifindex (no reference, no notifier), so after the unbind and the give-back
    the filter matches nothing from it, for good, and its traffic falls to the default."""
    place = " ".join(parent) or "root"
    for key in _TC_INDEV_KEYS:
        if isinstance(f["options"].get(key), str):
            ns.kernel_users.setdefault(_link_named(ns, f["options"][key]), []).append(
                f"is matched as the input device ({key}) of a tc {f.get('kind', '?')} filter "
                f"(pref {f.get('pref', '?')}) on {name} {place}, which holds its ifindex: after "
                "the unbind it matches nothing from it, for good (`tc filter del "
                f"{' '.join(['dev', name, *parent])} pref {f.get('pref', '?')}` first, if it "
                "may go)")


def _note_mirreds(ns: Namespace, where: str, actions) -> None:
    """Files the mirred actions of a filter at ``where`` (a port and hook) by their index in
    ``ns.mirred_from``, so the port a mirror sends to is told which one it is taken from."""
    for a in actions if isinstance(actions, list) else []:
        if isinstance(a, dict) and a.get("kind") == "mirred" and type(a.get("index")) is int:
            ns.mirred_from[a["index"]] = where


#: ``bpftool -j net show``: the BPF programs on each interface (XDP, tc, tcx, netkit...).
_BPFTOOL_NET = ["bpftool", "-j", "net", "show"]
#: ``bpftool -j version``, and the first version whose ``net show`` lists tcx links (7.3.0:
#: "bpftool: Extend net dump with tcx progs"; an older one prints ``"tc": []`` for them).
_BPFTOOL_VERSION, _BPFTOOL_TCX = ["bpftool", "-j", "version"], (7, 3)


def _read_tcx(fs: Sysfs, ns: Namespace, where: str) -> bool:
    """A tcx program on a port (attached with no qdisc, which only ``bpftool`` 7.3+ lists) is
    a use, named. Read where the kernel has tcx (:func:`_tcx_possible`). Without a bpftool
    that lists tcx, none is proven where no ``sched_cls`` program is loaded at all
    (:func:`_sched_cls_programs`: tcx takes no other type); else a problem of ``ns`` that says
    to install bpftool 7.3 or later. False: a problem."""
    if not _tcx_possible(fs):
        return True
    try:
        hooked = _tcx_listed(fs, ns)
    except (OSError, ValueError, TypeError, AttributeError) as e:
        lacking = _tcx_unproven(fs)
        if lacking:
            ns.problems.append(f"the tcx programs{where} cannot be listed ({e}) and {lacking}: "
                               "a program attached to a port at tcx (no qdisc shows it) is "
                               "deleted at the unbind; install bpftool 7.3 or later (Debian, "
                               "Ubuntu: `bpftool`; Debian 12: bookworm-backports')")
        return not lacking
    for p in hooked:
        ns.kernel_users.setdefault(str(p.get("devname")), []).append(
            f"has the BPF program {p.get('name', '?')} (id {p.get('prog_id', '?')}) attached "
            f"at {p['kind']}, deleted at the unbind")
    return True


def _tcx_listed(fs: Sysfs, ns: Namespace) -> list[dict]:
    """The ``tcx/`` entries of ``bpftool -j net show`` in ``ns``, from a bpftool that lists
    them (:func:`_bpftool_lists_tcx`: an older one's empty list proves nothing). Raises
    OSError (with why), ValueError or TypeError."""
    if fs.real_host and shutil.which("bpftool") is None:  # (no process a namespace)
        raise OSError("bpftool is not installed")
    _bpftool_lists_tcx(fs, ns)
    text = _run(fs, ns.enter + _BPFTOOL_NET, ns.fake / "bpftool-net.json", ns.fds, **_by(ns))
    listing = _ip_json(text) if text.strip() else []
    return [p for entry in listing for p in entry.get("tc", [])
            if str(p.get("kind", "")).startswith("tcx/")]


def _bpftool_lists_tcx(fs: Sysfs, ns: Namespace) -> None:
    """Raises OSError unless ``bpftool -j version`` says 7.3 or later (one from before lists
    a port's tcx programs as nothing: Debian 12's 7.1.0 beside a backports kernel; a version
    that cannot be read is as old)."""
    text = _run(fs, _BPFTOOL_VERSION, ns.fake / "bpftool-version.json", **_by(ns))
    said = json.loads(text).get("version") if text.strip().startswith("{") else None
    m = re.match(r"v?(\d+)\.(\d+)", said if isinstance(said, str) else "")
    if not m or (int(m[1]), int(m[2])) < _BPFTOOL_TCX:
        raise OSError(f"`bpftool -j version` says {said or text.strip()[:40]!r}: bpftool lists "
                      "tcx programs from 7.3 on")


def _tcx_possible(fs: Sysfs) -> bool:
    """Whether the running kernel has tcx, as it answers :func:`_tcx_query` (its release says
    nothing: RHEL 9.4+'s 5.14 has tcx). A fake root has no kernel to ask: its ``osrelease``
    plays one (6.6 and later; one that cannot be read or parsed is taken to have it)."""
    if fs.real_host:
        return _tcx_query() != errno.EINVAL
    release = fs.read(fs.proc("sys", "kernel", "osrelease"))
    m = re.match(r"(\d+)\.(\d+)", release or "")
    return not m or (int(m[1]), int(m[2])) >= (6, 6)


def _tcx_query() -> int:
    """The errno of ``BPF_PROG_QUERY`` at ``BPF_TCX_INGRESS`` of ``lo`` (index 1 in the
    harness's own namespace), 0 where it answers: a kernel without tcx answers EINVAL (an
    attach type it does not know); any other failure (no ``CAP_NET_ADMIN``, no bpf system
    call, a machine whose number for it is not known) tells nothing, so tcx is not ruled
    out."""
    try:
        done, err, _ = _bpf(_BPF_QUERY, 1, _TCX_INGRESS, 0)
    except OSError as e:
        return e.errno or errno.ENOSYS
    return err if done < 0 else 0


def _tcx_unproven(fs: Sysfs) -> str:
    """Why no tcx program can be ruled out without bpftool ("": none can exist, as no
    ``sched_cls`` program is loaded)."""
    if not fs.real_host:
        return "a fake root has no kernel to ask"
    try:
        ids = _sched_cls_programs()
    except OSError as e:
        return f"the loaded BPF programs cannot be listed ({e})"
    return (f"tc BPF programs are loaded (ids {', '.join(map(str, ids[:8]))}) whose device "
            "cannot be told") if ids else ""


#: The ``bpf`` system call's number, by machine (``os.uname().machine``).
_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "ppc64": 361,
                "s390x": 351, "i686": 357, "armv7l": 386}
#: ``BPF_PROG_GET_NEXT_ID``, ``BPF_PROG_GET_FD_BY_ID``, ``BPF_OBJ_GET_INFO_BY_FD``,
#: ``BPF_PROG_QUERY``, ``BPF_PROG_TYPE_SCHED_CLS``, ``BPF_TCX_INGRESS`` (linux/bpf.h: 46 in
#: ``enum bpf_attach_type``, from Linux 6.6), and the ``union bpf_attr`` passed (zeros past
#: the fields set: the kernel checks the tail).
_BPF_NEXT, _BPF_FD, _BPF_INFO, _BPF_QUERY, _SCHED_CLS, _TCX_INGRESS, _ATTR = (11, 13, 15, 16,
                                                                             3, 46, 128)


def _bpf(cmd: int, *fields: int, fmt: str = "=III") -> tuple[int, int, ctypes.Array]:
    """One ``bpf`` system call with ``fields`` (packed by ``fmt``) at the head of its
    ``union bpf_attr``: (its result, its errno, the attr as the kernel left it). Raises
    OSError where the machine's number for the call is not known."""
    nr = _BPF_SYSCALL.get(os.uname().machine)
    if nr is None:
        raise OSError(errno.ENOSYS, f"the bpf system call of {os.uname().machine} is not known")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    attr = ctypes.create_string_buffer(struct.pack(fmt, *fields), _ATTR)
    done = libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(_ATTR))
    return done, ctypes.get_errno() if done < 0 else 0, attr


def _sched_cls_programs() -> list[int]:
    """The ids of the loaded BPF programs of type ``sched_cls``, the only type tc's ``bpf``
    filter and tcx run, from the kernel (every program host-wide, whatever holds it: a
    process's fd, a bpffs pin, a link or a tcx entry). Raises OSError (root only)."""
    found, prog = [], 0
    while True:
        done, err, attr = _bpf(_BPF_NEXT, prog, 0, 0)
        if done < 0:
            if err == errno.ENOENT:
                return found
            raise OSError(err, f"BPF_PROG_GET_NEXT_ID: {os.strerror(err)}")
        prog = struct.unpack_from("=I", attr, 4)[0]
        fd, err, _ = _bpf(_BPF_FD, prog, 0, 0)
        if fd < 0:
            if err == errno.ENOENT:
                continue  # (unloaded since it was listed)
            raise OSError(err, f"BPF_PROG_GET_FD_BY_ID {prog}: {os.strerror(err)}")
        if _prog_type(prog, fd) == _SCHED_CLS:
            found.append(prog)


def _prog_type(prog: int, fd: int) -> int:
    """The type of the program ``prog`` open at ``fd`` (closed here). Raises OSError."""
    try:
        info = ctypes.create_string_buffer(8)
        done, err, _ = _bpf(_BPF_INFO, fd, 4, ctypes.addressof(info), fmt="=IIQ")
        if done < 0:
            raise OSError(err, f"BPF_OBJ_GET_INFO_BY_FD {prog}: {os.strerror(err)}")
    finally:
        os.close(fd)
    return struct.unpack_from("=I", info)[0]


def _read_mirred(fs: Sysfs, ns: Namespace, where: str) -> bool:
    """A mirred action whose target is a port (``tc ... action mirred egress mirror dev
    enp5s0f1`` on another port: a software SPAN to a capture port, left while the port is
    down) is a use of it: the unbind clears the action's device for good
    (``tcf_mirred_device_event``). Read where ``act_mirred`` is there. False: a problem."""
    if not _loaded(fs, "act_mirred"):
        return True
    try:
        listing = _tc_json(fs, ns, ["actions", "ls", "action", "mirred"], "tc-mirred")
        actions = [a for entry in listing if isinstance(entry, dict)
                   for a in entry.get("actions", []) if isinstance(a, dict) and a.get("to_dev")]
    except (OSError, ValueError, TypeError) as e:
        ns.problems.append(f"the tc mirred actions{where} cannot be read (`tc -j actions ls "
                           f"action mirred`: {e}): one that sends to a port is cleared at the "
                           "unbind; install iproute2's `tc`")
        return False
    for a in actions:
        index = a.get("index") if type(a.get("index")) is int else None
        source = ns.mirred_from.get(index, "another port (its filter not read)")
        ns.kernel_users.setdefault(str(a["to_dev"]), []).append(
            f"is the target of a tc mirred action ({a.get('mirred_action', '?')} "
            f"{a.get('direction', '?')}, index {a.get('index', '?')}) on {source}, cleared "
            "for good at the unbind")
    return True


#: ``nft -j list ruleset``: every chain, flowtable and rule of every table, in one command;
#: terse (``-t``, nft 0.9.1 and later): no set's elements (a blocklist's million addresses).
_NFT_RULESET = ["nft", "-j", "-t", "list", "ruleset"]
#: In ``nft list chains|flowtables``' text, a hook's devices: ``device "X"``, ``devices = {
#: X, Y }`` (names quoted or not, as nft's version prints them).
_NFT_DEVICES = re.compile(r'\bdevice "([^"]*)"|\bdevices = \{([^}]*)\}')


def _read_nft(fs: Sysfs, ns: Namespace, where: str) -> None:
    """What nftables keeps on a port, each lost at the unbind: a netdev-family base chain (or
    an ``inet`` ingress one) or a flowtable hooked on it (when the port is unregistered the
    kernel drops it from the hook, and releases a chain of that one device with its rules,
    every kernel before 6.16), a rule that sends to it, ``dup to``/``fwd to`` the port from a
    chain on another (the nftables wiki's SPAN), and a rule that matches it by its index,
    ``iif``/``oif`` (a host firewall's ``iif "enp5s0f1" drop`` fencing off a DUT network):
    nft resolved the name to the port's ifindex at load, and the port given back has a new
    one, so the rule sends nowhere, or matches nothing, for good (``iifname``/``oifname``
    match by name, and hold). Read from ``nft -j -t list ruleset`` (:func:`_nft_hooks` for
    the devices the JSON does not name, :func:`_nft_index_sets` for a named set's ports)
    where ``nf_tables`` is there (else there is no ruleset); ``nft`` missing or failing, or a
    device that cannot be told, is a problem of ``ns``."""
    if not _loaded(fs, "nf_tables"):
        return
    try:
        text = _run(fs, ns.enter + _NFT_RULESET, ns.fake / "nft-ruleset.json", ns.fds,
                    **_by(ns))
        items = [(k, v) for i in json.loads(text or "{}").get("nftables", [])
                 if isinstance(i, dict) for k, v in i.items() if isinstance(v, dict)]
        rules = [rule for k, rule in items if k == "rule"]
        hooked = _nft_hooks(fs, ns, items)
        sent = [s for rule in rules for s in _nft_sends(rule)]
        sets = _nft_index_sets(fs, ns, items, rules)
        matched = [m for rule in rules for m in _nft_matches(rule, sets)]
    except (OSError, ValueError, AttributeError, TypeError) as e:
        ns.problems.append(f"the nftables ruleset{where} cannot be read "
                           f"(`{' '.join(_NFT_RULESET)}`: {e}): a netdev chain on a port is "
                           "released at the unbind, and a dup or fwd to it, or an iif or oif "
                           "match on it, holds an index that is gone after it; install "
                           "nftables (its `nft`, 0.9.1 or later)")
        return
    _file_nft(ns, hooked, sent, matched)


def _file_nft(ns: Namespace, hooked: list, sent: list, matched: list) -> None:
    """Files what :func:`_read_nft` found in ``ns.kernel_users``, each rule named with its
    chain (and the devices that chain is hooked on)."""
    chains = {}
    for key, item, devs in hooked:
        chains[item.get("family"), item.get("table"), item.get("name")] = devs
        for dev in devs:
            ns.kernel_users.setdefault(dev, []).append(
                f"has the nftables {key} {item.get('family', '?')} {item.get('table', '?')} "
                f"{item.get('name', '?')} hooked on it ({item.get('hook', '?')}), released "
                "at the unbind")
    for dev, verb, (family, table, chain) in sent:
        on = chains.get((family, table, chain))
        ns.kernel_users.setdefault(dev, []).append(
            f"is sent to by the nftables rule `{verb} to` it in chain {family} {table} {chain}"
            + (f" (on {', '.join(on)})" if on else "") + ", which holds its ifindex: after "
            f"the unbind the {verb} goes nowhere, for good")
    for dev, key, (family, table, chain) in matched:
        ns.kernel_users.setdefault(dev, []).append(
            f"is matched by its index (`{key}`) in an nftables rule of chain {family} {table} "
            f"{chain}: after the unbind the port has a new one and the rule matches nothing, "
            f"for good (`{key}name` matches by name, and holds)")


def _nft_on_devices(key: str, item: dict) -> bool:
    """Whether a chain or flowtable of ``nft -j`` hooks devices: a flowtable, a netdev-family
    base chain, an ``inet`` ingress or egress one."""
    return key == "flowtable" or key == "chain" and "hook" in item and (
        item.get("family") == "netdev" or
        item.get("family") == "inet" and item.get("hook") in ("ingress", "egress"))


def _nft_hooks(fs: Sysfs, ns: Namespace, items: list) -> list[tuple[str, dict, list[str]]]:
    """(chain or flowtable, its JSON, its devices) of each that hooks devices. Its devices are
    its ``dev``; where that is missing they are read from ``nft list chains`` (or
    ``flowtables``), as text: nft 0.9.3 to at least 1.0.6 (Debian 12's, RHEL 8's and 9's,
    Ubuntu 20.04's and 22.04's) print no ``dev`` for a chain listed from the kernel
    (``chain_print_json`` reads the parser's ``dev_expr``, the text printer the kernel's
    ``dev_array``). One the text does not show either cannot be told: ValueError."""
    hooked, texts = [], {}
    for key, item in items:
        if key not in ("chain", "flowtable") or not _nft_on_devices(key, item):
            continue
        devs = item.get("dev")
        if not devs:
            if key not in texts:
                texts[key] = _nft_text_devices(_run(
                    fs, ns.enter + ["nft", "list", f"{key}s"], ns.fake / f"nft-{key}s.txt",
                    ns.fds, **_by(ns)))
            named = (key, item.get("family"), item.get("table"), item.get("name"))
            if named not in texts[key]:
                raise ValueError(f"`nft -j` names no device of the {' '.join(map(str, named))} "
                                 f"and `nft list {key}s` shows none for it")
            devs = texts[key][named]
        hooked.append((key, item, [str(d) for d in (devs if isinstance(devs, list) else
                                                    [devs])]))
    return hooked


def _nft_text_devices(text: str) -> dict[tuple, list[str]]:
    """(``chain`` or ``flowtable``, family, table, name) -> its devices, from ``nft list
    chains|flowtables``: ``table netdev filter {``, ``chain ingress {``, then its declaration
    (a chain's ``type filter hook ingress device "X" priority ...``, a flowtable's ``hook
    ingress ...`` and ``devices = { X, Y };``). Only one whose declaration was seen is in it
    (with no device if it names none)."""
    found, table, current = {}, None, None
    for line in text.splitlines():
        words = line.split()
        if len(words) == 4 and words[0] == "table" and words[3] == "{":
            table, current = (words[1], words[2].strip('"')), None
        elif len(words) == 3 and words[0] in ("chain", "flowtable") and words[2] == "{":
            current = (words[0], *table, words[1].strip('"')) if table else None
        elif current and (words[:1] in (["hook"], ["devices"]) or
                          words[:1] == ["type"] and "hook" in words):
            devs = found.setdefault(current, [])
            for one, several in _NFT_DEVICES.findall(line):
                devs += [one] if one else [d.strip().strip('"') for d in several.split(",")
                                           if d.strip()]
    return found


def _nft_sends(rule: dict) -> list[tuple[str, str, tuple]]:
    """(device, ``dup`` or ``fwd``, (family, table, chain)) of each statement of an ``nft -j``
    rule that sends packets to a device: ``fwd to "X"`` (``{"fwd": {"dev": "X"}}``), ``dup to
    ADDR device "X"`` (``dev``), and in the netdev family ``dup to "X"``, which nft 1.0.6
    prints as ``{"dup": {"addr": "X"}}``. A device an expression picks (a map) cannot be
    told: ValueError."""
    where = (rule.get("family"), rule.get("table"), rule.get("chain"))
    sends = []
    for stmt in rule.get("expr") or []:
        for verb in ("dup", "fwd"):
            args = stmt.get(verb) if isinstance(stmt, dict) else None
            if not isinstance(args, dict):
                continue
            dev = args.get("dev", args.get("addr") if where[0] == "netdev" else None)
            if dev is not None and not isinstance(dev, str):
                raise ValueError(f"a `{verb}` in chain {' '.join(map(str, where))} sends to a "
                                 f"device an expression picks ({json.dumps(dev)[:80]}): which "
                                 "port cannot be told")
            if dev is not None:
                sends.append((dev, verb, where))
    return sends


#: ``meta`` keys whose value is an interface's index, which nft resolves from the name when
#: the rule is loaded (``iifname``/``oifname`` match by name, and hold after a give-back).
_NFT_INDEX_KEYS = ("iif", "oif")


def _nft_matches(rule: dict, sets: dict) -> list[tuple[str, str, tuple]]:
    """(device, ``iif`` or ``oif``, (family, table, chain)) of each port an ``nft -j`` rule
    matches by its index: ``iif "X"``, ``iif { "X", "Y" }``, ``iif . ip saddr { "X" . ADDR
    }``, ``iif vmap { "X" : drop }``, or a named set or map (``iif @dut_ports``: its elements
    in ``sets``, :func:`_nft_index_sets`). An element that names no device cannot be told:
    ValueError."""
    where = (rule.get("family"), rule.get("table"), rule.get("chain"))
    found = []
    for stmt in rule.get("expr") or []:
        for left, right in _nft_compared(stmt):
            keys = _nft_index_keys(left)
            for elem in _nft_elements(right, sets, where) if keys else []:
                parts = elem["concat"] if isinstance(elem, dict) and "concat" in elem else [elem]
                for i, key in keys:
                    name = parts[i] if isinstance(parts, list) and i < len(parts) else None
                    if not isinstance(name, str):
                        raise ValueError(f"an `{key}` match in chain {' '.join(map(str, where))}"
                                         f" compares with {json.dumps(name)[:80]}: which port "
                                         "cannot be told")
                    found.append((name, key, where))
    return found


def _nft_compared(stmt) -> list[tuple]:
    """(what is compared, what with) in a statement of ``nft -j``: a ``match``'s left and
    right, and the key and data of each ``vmap`` or ``map`` lookup anywhere in it: nft puts
    one that computes a value inside the statement that uses it (``snat to oif map {...}``
    is ``{"snat": {"addr": {"map": ...}}}``, ``ct mark set iif map {...}`` a ``mangle``'s
    ``value``), keyed by the port's index all the same. A ``fib`` test, ``fib saddr . iif
    oif missing`` (``"right": false``), names no port: not compared."""
    if not isinstance(stmt, dict):
        return []
    pairs = []
    if isinstance(args := stmt.get("match"), dict) and not isinstance(args.get("right"), bool):
        pairs.append((args.get("left"), args.get("right")))
    return pairs + _nft_lookups(stmt)


def _nft_lookups(expr) -> list[tuple]:
    """(key, data) of every ``map`` or ``vmap`` lookup in an ``nft -j`` expression, at any
    depth (a named map's ``data`` is ``"@NAME"``, read by :func:`_nft_index_sets`)."""
    if isinstance(expr, list):
        return [pair for v in expr for pair in _nft_lookups(v)]
    if not isinstance(expr, dict):
        return []
    pairs = [(args.get("key"), args.get("data")) for verb in ("map", "vmap")
             if isinstance(args := expr.get(verb), dict) and "key" in args]
    return pairs + [pair for v in expr.values() for pair in _nft_lookups(v)]


def _nft_index_keys(expr) -> list[tuple[int, str]]:
    """(position, ``iif``, ``oif`` or ``fib oif``) of each part of an ``nft -j`` expression
    that is an interface's index: the expression itself (position 0), or a part of a
    concatenation (``iif . ip saddr``). nft 0.9.0 printed ``{"meta": "iif"}``, later ones a
    ``key``; a ``fib`` of result ``oif`` (``fib daddr oif "X"``) is an ``iface_index`` too,
    resolved at load (its ``missing`` test is no comparison: :func:`_nft_compared`)."""
    concat = expr.get("concat") if isinstance(expr, dict) else None
    found = []
    for i, part in enumerate(concat if isinstance(concat, list) else [expr]):
        meta = part.get("meta") if isinstance(part, dict) else None
        key = meta.get("key") if isinstance(meta, dict) else meta
        fib = part.get("fib") if isinstance(part, dict) else None
        if key in _NFT_INDEX_KEYS:
            found.append((i, key))
        elif isinstance(fib, dict) and fib.get("result") == "oif":
            found.append((i, "fib oif"))
    return found


def _nft_elements(right, sets: dict, where: tuple) -> list:
    """What ``right`` compares with: one value, an anonymous set's elements (a map's keys),
    or a named set's (``@NAME``, in ``sets``; one not there cannot be told: ValueError)."""
    if isinstance(right, str) and right.startswith("@"):
        named = (where[0], where[1], right[1:])
        if named not in sets:
            raise ValueError(f"the set {' '.join(map(str, named))}, matched by an interface's "
                             "index, is not listed as one")
        elems = sets[named]
    else:
        elems = right["set"] if isinstance(right, dict) and "set" in right else [right]
    elems = [e[0] if isinstance(e, list) and e else e for e in elems]  # (a map's key)
    return [e["elem"].get("val") if isinstance(e, dict) and isinstance(e.get("elem"), dict)
            else e for e in elems]  # (an element with a timeout or comment)


def _nft_index_sets(fs: Sysfs, ns: Namespace, items: list, rules: list) -> dict:
    """(family, table, name) -> the elements of each named set or map of interface indexes
    (type ``iface_index``, alone or in a concatenation) a rule names (``@NAME``): ``-t``
    lists no elements, so each is read, ``nft -j list set|map FAMILY TABLE NAME`` (a few
    ports). Raises OSError or ValueError (it cannot be read: every port is unproven)."""
    named = {(r.get("family"), r.get("table"), ref[1:]) for r in rules
             for ref in _nft_refs(r.get("expr"))}
    found = {}
    for key, item in items:
        ident = (item.get("family"), item.get("table"), item.get("name"))
        types = item.get("type") if isinstance(item.get("type"), list) else [item.get("type")]
        if key not in ("set", "map") or ident not in named or "iface_index" not in types:
            continue
        argv = ["nft", "-j", "list", key, *map(str, ident)]
        text = _run(fs, ns.enter + argv, ns.fake / f"nft-{key}-{'-'.join(map(str, ident))}.json",
                    ns.fds, **_by(ns))
        listed = [v for i in json.loads(text or "{}").get("nftables", []) if isinstance(i, dict)
                  for k, v in i.items() if k == key and isinstance(v, dict) and
                  (v.get("family"), v.get("table"), v.get("name")) == ident]
        if not listed:
            raise ValueError(f"`{' '.join(argv)}` does not list it")
        found[ident] = listed[0].get("elem") or []
    return found


def _nft_refs(expr) -> list[str]:
    """Every named set or map an ``nft -j`` expression refers to (``"@NAME"``)."""
    if isinstance(expr, str):
        return [expr] if expr.startswith("@") else []
    values = expr.values() if isinstance(expr, dict) else expr if isinstance(expr, list) else []
    return [ref for v in values for ref in _nft_refs(v)]


def _proc_net_file(fs: Sysfs, ns: Namespace, name: str) -> str | None:
    """/proc/net/``name`` as ``ns`` sees it, or None when the kernel has none: read directly in
    the harness's own namespace, else ``cat`` entered in ``ns`` (``<fake>/<name>.txt``). The
    same kernel makes the file in every namespace or in none (pernet init), so one the
    harness's own namespace does not have is in none. Raises OSError."""
    own = fs.proc("net", name)
    try:
        text = own.read_text(errors="replace")
    except FileNotFoundError:
        return None
    if not ns.name:
        return text
    return _run(fs, ns.enter + ["cat", f"/proc/net/{name}"], ns.fake / f"{name}.txt", ns.fds,
                **_by(ns))


# -- namespaces ---------------------------------------------------------------------------------


#: The inode of the initial PID namespace's /proc link (``PROC_PID_INIT_INO``, a kernel
#: constant): only a PID 1 in the host's own PID namespace shows it.
INIT_PID_NS = "pid:[4026531836]"
_NAMESPACE_KINDS = ("net", "pid", "mnt")


def namespace_problem(fs: Sysfs) -> str | None:
    """Why this process must not bind host devices at all, or None: it is proven to be in the
    host's network, PID and mount namespaces. Elsewhere (a container, even one sharing the
    host's network: a hostNetwork pod, LXC, nspawn) the interfaces, processes and open files
    it sees are not all the host's, and the checks above would prove nothing: a QEMU holding
    /dev/vfio/N, a live run's pid, would be invisible. The proof: this process's namespaces
    are PID 1's, and PID 1's PID namespace is the initial one (:data:`INIT_PID_NS`); what
    cannot be read proves nothing, and is refused."""
    links, unreadable = {}, []
    for who in ("self", "1"):
        for kind in _NAMESPACE_KINDS:
            try:
                links[who, kind] = os.readlink(fs.proc(who, "ns", kind))
            except OSError as e:
                unreadable.append(f"/proc/{who}/ns/{kind} ({e.strerror or e})")
    mine, init = links.get(("self", "net")), links.get(("1", "net"))
    if mine and init and mine != init:
        return (f"this process is in network namespace {mine}, not the host's ({init}, PID "
                "1's): the routes and connections it sees are not the host's")
    container = _container_marker(fs)
    if container:
        return container
    if unreadable:
        return ("it cannot be proven that this process is in the host's namespaces: "
                f"{', '.join(unreadable)} cannot be read, so the processes, interfaces and "
                "open files it sees may not be the host's")
    for kind in _NAMESPACE_KINDS[1:]:
        if links["self", kind] != links["1", kind]:
            return (f"this process is in {kind} namespace {links['self', kind]}, not PID 1's "
                    f"({links['1', kind]}): the processes and open files it sees are not all "
                    "the host's")
    if links["1", "pid"] != INIT_PID_NS:
        return (f"PID 1 is in PID namespace {links['1', 'pid']}, not the host's initial one "
                f"({INIT_PID_NS}): this runs in a container, whose processes are not all the "
                "host's (a QEMU holding a device, a live run, would be invisible)")
    return _chroot(fs)


def _chroot(fs: Sysfs) -> str | None:
    """A chroot (schroot, debootstrap: a newer Python on an old lab host) shares PID 1's
    namespaces and leaves no container mark, but the kernel prints every ``mountinfo``
    relative to the reader's root and leaves out the mounts outside it (the host's /run/netns
    bind mounts, its disks' mounts), and /var/run/netns is the chroot's own: this process's
    root must be PID 1's (device and inode); one that cannot be compared proves nothing."""
    try:
        mine, init = os.stat(fs.root), os.stat(fs.proc("1", "root"))
    except OSError as e:
        return ("it cannot be proven that this process's root is the host's: /proc/1/root "
                f"cannot be read ({e.strerror or e}), so the mounts and named network "
                "namespaces it sees may not be the host's")
    if (mine.st_dev, mine.st_ino) != (init.st_dev, init.st_ino):
        return ("this process's root is not PID 1's (/proc/1/root): it runs in a chroot, which "
                "sees none of the host's mounts outside it (a disk's mount, a named network "
                "namespace's in /run/netns)")
    return None


def _container_marker(fs: Sysfs) -> str | None:
    """A container's own marks: the files its runtime leaves, or a cgroup naming it."""
    for marker in (".dockerenv", "run/.containerenv"):
        if fs.path(marker).exists():
            return (f"this runs in a container (/{marker} exists): the routes and connections "
                    "it sees are the container's, not the host's")
    cgroup = fs.read(fs.proc("self", "cgroup")) or ""
    if re.search(r"docker|lxc|kubepods|containerd|libpod", cgroup):
        return ("this runs in a container (its cgroup says so): the routes and connections it "
                "sees are the container's, not the host's")
    return None
