"""Issue 31, thirty-third adversarial read, part b (NICs and their netdevs in every namespace,
leases and the host journal between runs, shared paths, CI files, exit status). Findings, one
section below each (each test's docstring: the host shape, why the harness calls it idle, what
would be lost), on main at fdaa4af:

1. (a) an upper device in a namespace other than the harness's own is looked for only as a
   ``master`` or a top-level ``link`` of `ip -j -d link`; a VXLAN device bound to the port
   (``ip link add vx100 type vxlan id 100 dev enp5s0f1 ...``) has neither: the kernel links it
   as an upper of its lower device (``netdev_upper_dev_link`` in ``__vxlan_dev_create``, so
   the harness's own namespace shows it in sysfs ``upper_vx100``), but it has no
   ``ndo_get_iflink``, so `ip` prints its lower device only inside ``linkinfo.info_data``
   (``"link": "enp5s0f1"``; checked on Linux 6.18 with iproute2 6.1). A port moved into a
   named or container namespace with a VXLAN on top of it, down, reads idle; unbinding it
   deletes the VXLAN device (``vxlan_handle_lowerdev_unregister``), which the give-back never
   makes again. The same holds for an HSR or PRP device (IEC 62439-3 redundancy:
   ``ip link add hsr0 type hsr slave1 enp5s0f1 slave2 eno1``): where ``hsr_portdev_setup``
   links each slave with ``netdev_upper_dev_link`` (Linux 5.x and 6.x; a 2025 patch for HSR
   offload moves it to ``netdev_master_upper_dev_link``), `ip link` shows no ``master`` for
   a slave (read from the kernel source, not on a running kernel: the test host has no
   hsr module), and hsr0 names its slaves only in
   ``info_data`` (``slave1``, ``slave2``): a slave port set down in another namespace (the
   ring runs on the other slave) reads idle, and unbinding it removes it from the ring for
   good (``hsr_del_port`` on ``NETDEV_UNREGISTER``).
2. (a) namespaces the holder search finds are told apart by a label, not by their inode:
   ``NetView`` keys them by ``Namespace.name``, which for one held only by a bind mount is
   ``nsfs mount <mount point>``, the path inside its own mount namespace. Two containers
   (LXC/LXD system containers cloned from one template, each running the same ``ip netns add
   test`` set-up) each keep a namespace mounted at /run/netns/test in a mount namespace of
   their own: the two namespaces get one name, the second read replaces the first in
   ``NetView.namespaces``, and ``_parents`` keeps the first one's ``parentdev`` for a link
   name they share. The port up in the first (a physical port the container was given) is
   judged by the second's link of the same name (a down dummy): idle, and taken.
3. (b) `make nightly` hands ``HH_PYTEST_ARGS`` (a GitLab pipeline variable, a Jenkins build
   parameter, the systemd unit's Environment) to root's pytest through ``PYTEST_ADDOPTS``,
   which pytest splits and reads like its command line: a path there is collected, and
   pytest imports every ``conftest.py`` on its way (and ``-o pythonpath=DIR`` puts DIR first
   on root's ``sys.path``), before any check of the harness runs (``pytest_cmdline_main``,
   where PATH and PYTHONPATH are checked, comes after the initial conftests). A test path
   in a folder another user owns (an operator narrowing the nightly to a scenario of a
   colleague's checkout, ``HH_PYTEST_ARGS=/home/alice/hh/tests/scenarios/test_nic.py``, or
   anyone allowed to start the protected pipeline with variables) runs that user's code as
   root: the check that guards PYTHONPATH and the checkout does not guard this way in.

Controls (pass on main): the same hosts without the VXLAN are still idle and taken; the
container's namespace alone (no second one at the same path) keeps the port, in use.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from harness.host.safety import HostUsage, plan_group

from . import fakesysfs
from .fakesysfs import FakeHost, link
from .test_paths import NOBODY, as_nobody, as_root, shared_tmp  # noqa: F401 (a fixture)

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PORT0, PORT1 = "0000:05:00.0", "0000:05:00.1"   # the lab host's 82599, ports 0 and 1
HOST_LINKS = [link(1, "lo", up=True), link(2, "enp2s0", "0000:02:00.0", up=True),
              link(3, "enp5s0f0", PORT0), link(5, "eno1", "0000:00:1f.6")]
HOST_ADDRS = {"lo": ["127.0.0.1/8"], "enp2s0": ["192.168.1.10/24"]}


# -- 1. a VXLAN bound to the port, in a namespace other than the harness's own ----------------


def _port1_in_namespace(host: FakeHost, name: str, *, vxlan: bool) -> None:
    """The 82599's port 1, enp5s0f1, moved into the named namespace ``name`` (``ip link set
    enp5s0f1 netns NAME``): gone from the harness's namespace (its sysfs ``net/`` and `ip
    link`), shown there by `ip -d` on its PCI function, down. With ``vxlan``, a VXLAN device
    vx100 bound to it (``ip -n NAME link add vx100 type vxlan id 100 dev enp5s0f1 local
    10.20.0.1 remote 10.20.0.2 dstport 4789``), up and enslaved to the namespace's bridge
    br-lab, printed as `ip -j -d link show` prints it (no top-level ``link``: the lower device
    is only in ``linkinfo.info_data``)."""
    host.network(links=HOST_LINKS, addrs=HOST_ADDRS,
                 routes=[{"dst": "default", "gateway": "192.168.1.1", "dev": "enp2s0"}])
    sysfs_net = host.dev_dir(PORT1) / "net/enp5s0f1"
    sysfs_net.rename(host.root / "moved-enp5s0f1")
    (host.sys / "class/net/enp5s0f1").unlink()
    links = [link(1, "lo", up=True), link(7, "enp5s0f1", PORT1)]
    if vxlan:
        links += [link(8, "br-lab", up=True, linkinfo={"info_kind": "bridge"}),
                  link(9, "vx100", up=True, master="br-lab", linkinfo={
                      "info_kind": "vxlan",
                      "info_data": {"id": 100, "remote": "10.20.0.2", "local": "10.20.0.1",
                                    "link": "enp5s0f1", "port": 4789, "learning": True}})]
    host.network(name, links=links, addrs={"lo": ["127.0.0.1/8"]})


def test_1_a_vxlan_on_the_port_in_another_namespace_is_an_upper_device(lab):
    """Host shape: the lab host isolates a spare port per tenant: the 82599's port 1,
    enp5s0f1, is in the named namespace ``overlay`` (``ip link set enp5s0f1 netns overlay``),
    where the tenant's test network stretches to a second lab host over a VXLAN bound to it
    (``ip -n overlay link add vx100 type vxlan id 100 dev enp5s0f1 local 10.20.0.1 remote
    10.20.0.2 dstport 4789``; vx100 enslaved to the namespace's bridge br-lab, where the
    tenant's guests' taps are). The tenant has set the port down for the night (``ip -n
    overlay link set enp5s0f1 down``, its underlay address flushed with it); vx100 and br-lab
    stay, configured, to carry the overlay again in the morning. The inventory lists both
    82599 ports (group 12) as spare NICs.

    Why it is called idle: ``network._uppers`` finds, in a namespace other than the harness's
    own, only a ``master`` of the port and a link whose top-level ``link`` is the port (a VLAN,
    macvlan or ipvlan); sysfs ``upper_*`` is read only for the harness's own namespace. A
    VXLAN device is linked by the kernel as an upper of its lower device
    (``netdev_upper_dev_link(remote_dev, dev)`` in ``__vxlan_dev_create``: in the harness's
    own namespace it shows as ``upper_vx100``), but it has no ``ndo_get_iflink``, so `ip`
    prints no top-level ``link`` for it: its lower device is printed inside ``linkinfo``'s
    ``info_data`` alone (``"link": "enp5s0f1"``, as Linux 6.18 and iproute2 6.1 print it). So
    enp5s0f1 is down, with no route, socket or upper device: idle, and group 12 is taken.
    Unbinding ixgbe from 05:00.1 unregisters enp5s0f1, and the kernel deletes every VXLAN
    device bound to it (``vxlan_handle_lowerdev_unregister``): vx100 leaves br-lab and is gone
    when the harness gives the port back, so the tenant's overlay is lost, with nothing to say
    so. Expected: a link whose ``linkinfo.info_data.link`` is the port (a VXLAN bound to it)
    is an upper device of it, as a VLAN on it is, in any namespace."""
    _port1_in_namespace(lab, "overlay", vxlan=True)
    usage = HostUsage.read(lab.root)
    v = usage.verdict(PORT1)
    assert not v.idle, (f"{PORT1} judged idle with the VXLAN vx100 bound to its port "
                        f"enp5s0f1 in netns overlay: {v.evidence}")
    assert any("vx100" in u for u in v.uses), v.uses
    assert not plan_group(lab.root, PORT0, usage, allowed={PORT0, PORT1}).safe
    refused, driver = fakesysfs.bind_outcome(
        lab, lab.root / "var/lib/hotplug-harness/vfio-journal.json", PORT1, {PORT0, PORT1})
    assert refused and driver == "ixgbe", (
        f"`harness bind {PORT1}` took it (now on {driver}) with vx100 bound to enp5s0f1")


def test_1_control_the_port_in_another_namespace_without_a_vxlan_is_idle(lab):
    """Control: the same port in ``overlay``, down, with no VXLAN (nor bridge) there: idle,
    and group 12 would be taken."""
    _port1_in_namespace(lab, "overlay", vxlan=False)
    usage = HostUsage.read(lab.root)
    assert usage.verdict(PORT1).idle, usage.verdict(PORT1)
    assert plan_group(lab.root, PORT0, usage, allowed={PORT0, PORT1}).safe
    refused, driver = fakesysfs.bind_outcome(
        lab, lab.root / "var/lib/hotplug-harness/vfio-journal.json", PORT1, {PORT0, PORT1})
    assert not refused and driver == "vfio-pci", refused


def test_1_an_hsr_slave_in_another_namespace_is_an_upper_device(lab):
    """Host shape: the lab host is a node of the lab's HSR ring (IEC 62439-3: the industrial
    controllers under test send every frame both ways round the ring), run in the named
    namespace ``ring``: ``ip -n ring link add hsr0 type hsr slave1 enp5s0f1 slave2 eno1
    version 1``, hsr0 up with the ring's address. Port A of the ring, the 82599's enp5s0f1,
    has been set down while its cable is re-routed (``ip -n ring link set enp5s0f1 down``):
    HSR keeps the ring running on port B (eno1) alone, and takes port A back as soon as it is
    up. The inventory lists both 82599 ports (group 12) as spare NICs; port 0 is down in the
    host's namespace.

    Why it is called idle: as in the VXLAN case above, ``network._uppers`` looks in another
    namespace only for the port's ``master`` and for a link whose top-level ``link`` is the
    port. HSR (Linux 5.x and 6.x, before a 2025 patch for offload) links each slave with
    ``netdev_upper_dev_link(dev, hsr_dev)`` in ``hsr_portdev_setup``: no ``IFLA_MASTER``,
    so `ip` prints no ``master`` for enp5s0f1 (in the harness's own namespace sysfs would
    show ``upper_hsr0``), and hsr0 names its slaves only in ``linkinfo.info_data``
    (``slave1``, ``slave2``, as iproute2's iplink_hsr prints them). So enp5s0f1 is down with
    no route, socket or upper device: idle, and group 12 is taken. Unbinding ixgbe from
    05:00.1 unregisters enp5s0f1 and HSR removes the port from the ring (``hsr_del_port`` on
    ``NETDEV_UNREGISTER``): when the harness gives the port back, it is no slave of hsr0, and
    the ring stays without its redundancy until someone notices. Expected: a link whose
    ``info_data`` names the port (``slave1``/``slave2`` of an HSR/PRP device, ``link`` of a
    VXLAN) is an upper device of the port, in any namespace."""
    _port1_in_namespace(lab, "ring", vxlan=False)
    (lab.dev_dir("0000:00:1f.6") / "net/eno1").rename(lab.root / "moved-eno1")
    (lab.sys / "class/net/eno1").unlink()
    lab.network(links=HOST_LINKS[:3], addrs=HOST_ADDRS,
                routes=[{"dst": "default", "gateway": "192.168.1.1", "dev": "enp2s0"}])
    lab.network("ring", links=[
        link(1, "lo", up=True), link(7, "enp5s0f1", PORT1),
        link(8, "eno1", "0000:00:1f.6", up=True),
        link(9, "hsr0", up=True, linkinfo={"info_kind": "hsr", "info_data": {
            "slave1": "enp5s0f1", "slave2": "eno1", "seq_nr": 64880,
            "supervision": "01:15:4e:00:01:00", "proto": 0}})],
        addrs={"lo": ["127.0.0.1/8"], "hsr0": ["10.77.0.5/24"]},
        routes=[{"dst": "10.77.0.0/24", "dev": "hsr0", "scope": "link"}])
    # (ip/netns.json lists "ring" twice now: the helper adds the name at each call)
    lab.file("ip/netns.json", json.dumps([{"name": "ring"}]))
    usage = HostUsage.read(lab.root)
    v = usage.verdict(PORT1)
    assert not v.idle, (f"{PORT1} judged idle with its port enp5s0f1 a slave of hsr0 in "
                        f"netns ring: {v.evidence}")
    assert any("hsr0" in u for u in v.uses), v.uses
    assert not plan_group(lab.root, PORT0, usage, allowed={PORT0, PORT1}).safe


# -- 2. two namespaces held by bind mounts at the same path in two mount namespaces -------------


HOST_NS = 4026531840
NS_A, NS_B = 4026532801, 4026532802   # "test" in container 1 (the port), in container 2


def _ns_link(host: FakeHost, pid: int, inode: int, where: str) -> None:
    path = host.root / f"proc/{pid}/{where}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    path.symlink_to(f"{where.split('/')[-1]}:[{inode}]")


def _namespace_output(host: FakeHost, inode: int, links, addrs=None, routes=()) -> None:
    """What `nsenter --net=... ip/ss/cat` prints in the namespace ``inode``."""
    where = f"ip/nsfs/{inode}"
    addrs = addrs or {}
    host.file(f"{where}/link.json", json.dumps(links))
    host.file(f"{where}/addr.json", json.dumps(
        [{"ifindex": li["ifindex"], "ifname": li["ifname"], "addr_info": [
            {"local": a.split("/")[0], "prefixlen": int(a.split("/")[1])}
            for a in addrs.get(li["ifname"], [])]} for li in links]))
    host.file(f"{where}/route.json", json.dumps(list(routes)))
    host.file(f"{where}/route6.json", "[]")
    host.file(f"{where}/ss.txt", "")
    host.file(f"{where}/tc-qdisc.json", "[]")  # (`tc -j qdisc show`: nothing configured)
    host.file(f"{where}/packet.txt", "sk RefCnt Type Proto Iface R Rmem User Inode\n")


def _two_containers_with_a_test_namespace(host: FakeHost, *, second: bool) -> None:
    """Container 1 (init pid 3200, its own mount namespace) was given the 82599's port 1 (LXC
    ``lxc.net.0.type = phys``, renamed eth1) and moved it into its namespace ``test`` (``ip
    netns add test; ip link set eth1 netns test``): up, 10.50.0.1/24, the route to the
    device under test's network. With ``second``, container 2 (init pid 3300, a clone of the
    same template) has run the same set-up with no port to give: its ``test`` holds a dummy
    named eth1, down. Neither ``test`` has a process in it (``ip netns exec`` runs there now
    and then): each is held by the bind mount at /run/netns/test in its container's mount
    namespace alone."""
    host.network(links=HOST_LINKS, addrs=HOST_ADDRS,
                 routes=[{"dst": "default", "gateway": "192.168.1.1", "dev": "enp2s0"}])
    (host.dev_dir(PORT1) / "net/enp5s0f1").rename(host.root / "moved-enp5s0f1")
    (host.sys / "class/net/enp5s0f1").unlink()
    for pid in ("self", 1):
        _ns_link(host, pid, HOST_NS, "ns/net")
    containers = [(3200, 4026532901, NS_A)] + ([(3300, 4026532902, NS_B)] if second else [])
    for pid, mnt, net in containers:
        _ns_link(host, pid, HOST_NS + pid, "ns/net")  # (its init's own namespace: lo only)
        _ns_link(host, pid, mnt, "ns/mnt")
        host.proc(f"{pid}/mountinfo",
                  "500 400 0:60 / / rw - overlay overlay rw\n"
                  f"501 500 0:4 net:[{net}] /run/netns/test rw - nsfs nsfs rw\n")
        host.file(f"ip/pidns/{pid}/link.json", json.dumps([link(1, "lo", up=True)]))
        for what in ("addr", "route", "route6"):
            host.file(f"ip/pidns/{pid}/{what}.json", "[]")
        host.file(f"ip/pidns/{pid}/ss.txt", "")
        host.file(f"ip/pidns/{pid}/packet.txt", "sk RefCnt Type Proto Iface R Rmem User Inode\n")
    _namespace_output(host, NS_A, [link(1, "lo", up=True), link(2, "eth1", PORT1, up=True)],
                      addrs={"eth1": ["10.50.0.1/24"]},
                      routes=[{"dst": "10.50.0.0/24", "dev": "eth1", "scope": "link"}])
    if second:
        _namespace_output(host, NS_B, [link(1, "lo", up=True),
                                       link(2, "eth1", linkinfo={"info_kind": "dummy"})])


def test_2_two_namespaces_mounted_at_one_path_are_two_namespaces(lab):
    """Host shape: the lab host runs two LXD system containers cloned from one network-test
    template. Container 1 was given the 82599's port 1 (``lxc config device add c1 eth1 nic
    nictype=physical parent=enp5s0f1``) and its set-up script put it in a namespace of its own,
    ``ip netns add test; ip link set eth1 netns test``, where it is up and carries the test
    network (10.50.0.1/24). Container 2 ran the same script with no port to give: its ``test``
    namespace holds only the script's fallback, a dummy named eth1, down. Neither namespace has
    a process in it: each is held by the bind mount ``ip netns add`` made at /run/netns/test,
    in its container's mount namespace (not the host's /run/netns). The inventory lists both
    82599 ports (group 12); port 0 is down in the host's namespace.

    Why it is called idle: the holder search finds both namespaces (the nsfs lines of the two
    containers' mountinfo) and reads each; ``_held_namespace`` (on the host, ``_pin``) names
    each by how it is held, ``nsfs mount /run/netns/test``: the path inside its own mount
    namespace, the same for both. ``NetView`` keys its namespaces by that name, so the
    second one read (container 2's) replaces the first in ``NetView.namespaces``, while
    ``_parents``, keyed by (name, link), keeps the first one's eth1 -> 05:00.1 (the dummy has
    no parent to write over it). ``netdevs_of(05:00.1)`` then finds "eth1" in the surviving
    namespace, container 2's, and ``use_of`` judges container 2's dummy eth1: down, no route,
    no socket. The driver (ixgbe, one port a function) wants one interface, and there is one:
    idle. Taking 05:00.1 unbinds ixgbe under container 1's test network. Expected: namespaces
    are told apart by their identity (inode), not by a label two of them can share; each
    interface is judged in the namespace it is in."""
    _two_containers_with_a_test_namespace(lab, second=True)
    usage = HostUsage.read(lab.root)
    v = usage.verdict(PORT1)
    assert not v.idle, (f"{PORT1} judged idle with its port up in container 1's namespace "
                        f"test, another container's namespace mounted at the same path: "
                        f"{v.evidence}")
    assert any("10.50.0.1/24" in u for u in v.uses), v.uses
    assert not plan_group(lab.root, PORT0, usage, allowed={PORT0, PORT1}).safe
    refused, driver = fakesysfs.bind_outcome(
        lab, lab.root / "var/lib/hotplug-harness/vfio-journal.json", PORT1, {PORT0, PORT1})
    assert refused and driver == "ixgbe", (
        f"`harness bind {PORT1}` took it (now on {driver}) from under container 1")


def test_2_control_one_container_with_the_port_up_is_in_use(lab):
    """Control: container 1 alone (no second ``test``): its namespace is read, and the port,
    up there with its address and route, keeps 05:00.1."""
    _two_containers_with_a_test_namespace(lab, second=False)
    v = HostUsage.read(lab.root).verdict(PORT1)
    assert not v.idle
    assert any("10.50.0.1/24" in u for u in v.uses), v.uses


# -- 3. a test path in HH_PYTEST_ARGS, in a folder another user owns --------------------------

CHECKOUT = Path(__file__).resolve().parents[2]


@as_root
def test_3_a_conftest_another_user_owns_is_not_imported_by_roots_run(shared_tmp):
    """Host shape: the nightly of a VT-d host, as root (the systemd unit, or GitLab's/Jenkins'
    protected job): ``make nightly`` runs ``PYTEST_ADDOPTS="${PYTEST_ADDOPTS:-}
    ${HH_PYTEST_ARGS:-}" pytest tests/scenarios --backend vfio ...``. To narrow a night to one
    scenario under work, the lab's operator sets ``HH_PYTEST_ARGS`` to a path in a
    colleague's checkout on the host (``/home/alice/hh/tests/scenarios/test_nic.py``), or
    someone allowed to start the protected pipeline (GitLab "Run pipeline" with variables,
    Jenkins "Build with Parameters": the job defines HH_PYTEST_ARGS as a parameter) gives one.
    The folder is the other user's (here: nobody's, in a sticky /tmp-like folder), with a
    ``conftest.py`` of theirs.

    Why it runs: pytest reads ``PYTEST_ADDOPTS`` as command-line arguments, collects the path,
    and imports each ``conftest.py`` on the way to it while it parses its arguments
    (``pytest_load_initial_conftests``), before the harness's first check
    (``pytest_cmdline_main``: PATH and PYTHONPATH, as root). docs/fleet.md trusts the options
    themselves (only administrators may "Build with Parameters"; "pytest ... splits it into
    words and runs nothing in it"), but docs/vfio.md, "What root reads and runs", holds every
    file an option names to its owner: ``--qemu-binary``, ``--guest`` files, the inventory,
    PYTHONPATH and the checkout are refused when another user could have written them. A test
    path is not looked at, and pytest imports code from it. The conftest runs as root: the
    other user owns the host. Expected: as root, a pytest run refuses (before it imports
    anything from it) a path argument, an ini file (``-c``), a ``--rootdir`` or
    ``--confcutdir``, or a ``pythonpath`` (``-o pythonpath=``) in a folder another user owns
    or can write, as PYTHONPATH is refused; or ``make nightly`` refuses HH_PYTEST_ARGS that
    name paths or load code (``-p``, ``-c``, ``-o``)."""
    theirs = shared_tmp / "alice-hh"
    marker = shared_tmp / "ran-as"
    as_nobody(f"mkdir -m 755 {theirs}; printf '%s\\n' 'import os' "
              f"'open(\"{marker}\", \"w\").write(str(os.geteuid()))' > {theirs}/conftest.py; "
              f"printf 'def test_nic():\\n    pass\\n' > {theirs}/test_nic.py; "
              f"touch {marker}; chmod 666 {marker}")
    assert (theirs / "conftest.py").stat().st_uid == NOBODY
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
           "PYTEST_ADDOPTS": f" {theirs}/test_nic.py"}
    subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider",
                    "tests/unit/test_keywords.py"], cwd=CHECKOUT, env=env, timeout=120,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ran = marker.read_text()
    assert ran != "0", (f"root's pytest imported {theirs}/conftest.py, a file of uid {NOBODY}, "
                        "given through PYTEST_ADDOPTS (make nightly's HH_PYTEST_ARGS): it ran "
                        "as uid 0")
