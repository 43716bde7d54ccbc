"""Issue 31, read 37b (NICs and their netdevs in every namespace, leases and the journal, the
VF give-back, temporary folders, CI files, exit status), on main at dc8e894. What it found:
nothing it could show with a failing test in the time it had. What it looked at, and why each
held:

* :meth:`NetView.use_of` for a port that is down: every other use a lab host's software makes
  of a down port was checked against the rule. Routes: the kernel flushes a down link's IPv4
  and IPv6 routes and its nexthop objects (``fib_disable_ip``, ``fib6_ifdown``,
  ``nexthop_flush_dev``), so ``nexthop_compat_mode=0`` (routes shown by ``nhid`` alone) hides
  nothing on a down port. Uppers: xfrm interfaces, ip6tnl/ip6gre ``dev`` (top-level ``link``
  through ``ndo_get_iflink``), macsec, macvtap/ipvtap, failover, batman-adv and VRF
  (``master``), VXLAN moved to a container (``link_netnsid`` with ``info_data.link``: a
  problem). Sockets: ``ss -t -u -w`` prints ``%ifname`` for a wildcard bound with
  ``SO_BINDTODEVICE``; MPTCP subflows and listeners are TCP sockets there; what it does not
  ask for (SCTP ``-S``, ICMP ping sockets, AF_XDP, AF_CAN) was judged not a use of a *down*
  port (no traffic; AF_XDP's TX needs ``IFF_UP``, its RX an XDP program, which shows; a CAN
  raw socket gets ``ENETDOWN``). netconsole: a boot target's interface cannot be renamed by
  udev once netpoll brought it up (``dev_change_name``: ``-EBUSY``), and a configfs target
  follows renames (``NETDEV_CHANGENAME``), so matching by name holds. Soft-RoCE (``rdma link
  add rxe0 ... netdev``) and siw over a down port: their port is down with it.
* :func:`_physical` and :func:`_parents`: a physical link with a kind (IPoIB, CAN, WWAN) in
  another namespace carries ``parentdev`` on any kernel that shows it for Ethernet; without
  ``parentdev`` every NIC is unproven already (a port in the harness's namespace).
* :func:`harness.core.paths.path_words`, :func:`_ini_folder`, :func:`check_test_path`
  against pytest 9.1's ``determine_setup``/``locate_config`` (``pytest.toml`` first, taken
  even empty; the invocation folder not in the common ancestor when paths are given; the
  rootdir as confcutdir when no config is found): every folder pytest reads a config or a
  ``conftest.py`` in is one the checks walk (the folders between pytest's ancestor and the
  harness's are the test path's parents, which :func:`check_test_path` judges below the cut);
  pytest's parser takes no abbreviations (``allow_abbrev=False``).
* the run's owner tag (``starter``, :func:`pytest_configure_node` for replaced workers too),
  :func:`hygiene.sweep_stale`, :func:`hygiene.sweep_run`, ``Snapshot.for_owner``.
* :mod:`harness.host.sriov`'s ``check_request`` (a count only from 0, on an idle PF; a PF with
  VFs never moves, ``safety``), ci/gitlab-ci.yml's order.

The controls below show the down-port rule as it stands (a socket bound to the port in a
container's namespace keeps it; the same port with none is taken).
"""

from __future__ import annotations

from harness.host.network import NetView, Netdev
from harness.host.sysfs import Sysfs

from . import fakesysfs
from .fakesysfs import link
from .test_host_idle_review33b import PORT1

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures


def _container(lab, ss: str) -> NetView:
    lab.network("ctr", links=[link(1, "lo", up=True), link(7, "enp5s0f1", PORT1)], ss=ss)
    return NetView.read(Sysfs(lab.root))


def test_control_a_down_port_with_a_socket_bound_to_it_in_a_container_is_in_use(lab):
    view = _container(lab, "UNCONN 0 0 0.0.0.0%enp5s0f1:319 0.0.0.0:*\n")
    uses, _ = view.use_of(Netdev("ctr", "enp5s0f1"))
    assert any("socket bound to it" in u for u in uses), uses


def test_control_the_same_port_down_with_nothing_on_it_is_idle(lab):
    view = _container(lab, "")
    uses, evidence = view.use_of(Netdev("ctr", "enp5s0f1"))
    assert uses == [] and "down" in evidence, uses
