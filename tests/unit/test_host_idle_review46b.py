"""Issue 31, read 46b (the network side: what the kernel keeps on a down port that is made on
top of it and goes away with it at the unbind; the shared paths), on main at aff6134. What it
found, one section below:

1. A software RDMA device on the port: Soft-RoCE (``rdma link add rxe0 type rxe netdev
   enp5s0f1``) or Soft-iWARP (``rdma link add siw0 type siw netdev enp5s0f1``). Since Linux
   5.10 neither sets a parent device (``ib_register_device(..., NULL)``: no DMA device), so
   the RDMA device lives at ``/sys/devices/virtual/infiniband/rxe0``, not below the PCI
   function: :func:`harness.host.safety._rdma_ports_up` (which judges the RDMA devices
   *below* the function, mlx4_ib's) never sees it, and :mod:`harness.host.network` reads no
   RDMA state at all. The device is kept through a down (``rxe_notify``/``siw_netdev_event``
   on ``NETDEV_DOWN`` only mark its port DOWN, ``IB_EVENT_PORT_ERR``), and it is
   *unregistered* at ``NETDEV_UNREGISTER`` (``ib_unregister_device_queued``), which the
   unbind is; nothing makes it again when the port comes back (``rdma link add`` is run by
   hand, or by a boot-time unit, never on a hot-plug of the port; siw's own notifier says so
   at ``NETDEV_REGISTER``: "Device registration now handled only by rdma netlink commands"),
   so every user of it loses
   it for good: an nvmet-rdma port (``/sys/kernel/config/nvmet/ports/N``, ``trtype rdma``)
   or an NVMe-oF/RDMA host controller (``nvme connect -t rdma``, reconnecting every 10 s
   while the port is down, its ``/dev/nvmeXnY`` kept until ``ctrl_loss_tmo``; with
   ``--ctrl-loss-tmo=-1`` kept for ever), an NFS-over-RDMA mount, an iSER session, a
   ``perftest``/``rping`` set-up -- all of which resume when the port is set up again, and
   none of which shows as a socket (the RDMA CM's listeners and connections are no
   ``ss`` socket; rxe's one UDP socket, port 4791, is on the wildcard). This is the same kind
   of use as the pktgen device, the multicast VIF and the TIPC bearer the harness refuses
   already (a kernel object configured on the port, kept through a down, destroyed at the
   unbind, and never made again): read 37b set Soft-RoCE aside because "their port is down
   with it", which is true of the pktgen device too. Shape: a lab host that tests NVMe over
   Fabrics, NFS over RDMA or an RDMA application without RDMA hardware (rdma-core's Soft-RoCE
   and Soft-iWARP are in every distribution kernel: Fedora, RHEL 8/9's ``rdma_rxe``, Ubuntu,
   Debian; the NVMe-oF and SPDK guides' way to try RDMA), the rxe device made on a spare port
   that is set down between campaigns. ``rdma -j link show`` names it: ``{"ifname": "rxe0",
   "port": 1, "state": "DOWN", "physical_state": "DISABLED", "netdev": "enp5s0f1"}``
   (``RDMA_NLDEV_ATTR_NDEV_NAME``, from ``ib_device_get_netdev``, for rxe and siw alike;
   sysfs also: rxe's ``parent`` file and a RoCE port's ``gid_attrs/ndevs/N``). Not checked on
   this host (its kernel has no modules: no ``rdma_rxe``, no ``siw``); the sysfs and JSON
   shapes below are from the kernel's ``drivers/infiniband/sw/rxe`` and iproute2's
   ``rdma/link.c``. Safe: every RDMA device of the host (``/sys/class/infiniband``, or ``rdma
   -j link show``: RDMA devices are shared by every namespace by default), whatever its place
   in sysfs, whose port's netdev is the port (or, in ``exclusive`` netns mode, a device the
   harness cannot list: a problem) is a use, named (``rdma link delete rxe0`` first, if it may
   go); a software one (no parent device) even with its port DOWN.

The tests assert the safe behaviour and fail on aff6134; the control shows an rxe device on
another port (the uplink) leaving the down port idle. A fake sysfs/proc tree plays the host
(:mod:`.fakesysfs`'s lab host), ``rdma`` by monkeypatched output; no guest is booted.

Looked at, no test (each held, is refused already, is a fail-closed over-refusal, or not a
real shape):

* read 45b's fixes: ``_read_xfrm``/``_xfrm_policies`` (PF_KEY's ``setkey`` cannot set a
  selector's ``dev``; strongSwan sets ``sel.ifindex`` on policies only), ``_tc_other_link``/
  ``_note_indev``: a filter on a *shared block* (``tc qdisc add dev d2 ingress_block 22
  clsact``, ``tc filter add block 22 ... u32 ... indev d0``) is dumped by ``tc -j filter
  show dev d2 ingress`` with its ``input_dev`` (checked on this host, kernel 6.18, iproute2
  6.1), so it is read. (The known gap, filters on an htb/hfsc class or a non-root qdisc, is
  being fixed elsewhere.)
* nftables netdev chains hooked by an *altname* (``ip link property add dev d0 altname
  uplink0``; ``device "uplink0"``): checked here, on 6.18 the hook does not attach to ``d0``
  at all (its counter stays 0 while ``d0``'s own chain counts), and before 6.16 the dump
  names the device by its primary name: nothing missed. netconsole by an altname: its
  ``local_mac`` names the port once enabled (read already).
* what a down flushes, checked here (a namespace of its own): permanent and proxy
  neighbours, nexthop objects, IPv4/IPv6 routes through it; a route on another port with
  ``src`` = the port's address stays, but that address is not local while the port is down
  (its local route is flushed), so that route is broken already. Kept with a stale index:
  ``ip addrlabel add prefix ... dev d0`` (``dev if3`` after the port is made again) and a
  static multicast MAC (``ip maddr add``, ``/proc/net/dev_mcast`` global use 1): no lab
  software found that sets either.
* network storage initiators over the down port (NVMe/TCP ``--host-iface``/
  ``--host-traddr``, iSCSI iface binding, NFS): they bind by name or by the port's address
  on each reconnect, so the port given back is used again (the address's loss is the rule's
  own, for a down port); a connected one is a socket on its address (read).
* `.ci/check-root-tree`'s ``find -xdev``: a filesystem mounted inside the checkout (a data
  disk at ``fixtures/images/build``) is not looked into, nor are links in it followed
  (checked here: a file of ``nobody``'s in a tmpfs mounted there passes; without ``-xdev``
  it is refused); but every part of the image cache root uses is checked again at run time
  by :func:`harness.core.paths.check_trusted_tree` (``os.walk``, which crosses mounts:
  ``debroot.build_once`` for the built-in image, the lab image and its QEMU), so that
  fails closed; a mount over code (``.venv``, ``harness/``) is not a real shape.
* :mod:`harness.report.retention` ``prune`` and :mod:`harness.run.hygiene` (real folders of
  ours only); ``ci/`` (protected refs only, the root grant, the checked tree before make,
  ``restore`` after; keys excluded from the artifacts); ``_nothing_tested`` and the give-back
  failing the run.
"""

from __future__ import annotations

import json

import pytest

from harness.host import network
from harness.host.safety import HostUsage

from . import fakesysfs

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

_BDF = "0000:05:00.1"


def _soft_rdma(lab, monkeypatch, name: str, kind: str, netdev: str) -> None:
    """``rdma link add NAME type KIND netdev NETDEV`` with NETDEV down, as sysfs and ``rdma -j
    link show`` show it: a virtual device (no ``device`` link, no parent), port 1 DOWN."""
    virt = lab.root / "sys/devices/virtual/infiniband" / name
    (virt / "ports/1/gid_attrs/ndevs").mkdir(parents=True)
    (virt / "ports/1/state").write_text("1: DOWN\n")
    (virt / "ports/1/phys_state").write_text("3: Disabled\n")
    (virt / "ports/1/link_layer").write_text("Ethernet\n")
    (virt / "node_type").write_text("1: CA\n" if kind == "rxe" else "4: RNIC\n")
    if kind == "rxe":
        (virt / "parent").write_text(f"{netdev}\n")
        (virt / "ports/1/gid_attrs/ndevs/0").write_text(f"{netdev}\n")
    cls = lab.root / "sys/class/infiniband"
    cls.mkdir(parents=True, exist_ok=True)
    (cls / name).symlink_to(f"../../devices/virtual/infiniband/{name}")
    listing = [{"ifindex": 0, "ifname": name, "port": 1, "state": "DOWN",
                "physical_state": "DISABLED", "netdev": netdev, "netdev_index": 4}]
    for where in ("rdma-link.json", "ip/rdma-link.json"):  # (a fake root's, either place)
        lab.file(where, json.dumps(listing))
    real = network._run

    def run(fs, argv, fake, *a, **k):
        if any(str(w).endswith("rdma") for w in argv):
            return json.dumps(listing)
        return real(fs, argv, fake, *a, **k)

    monkeypatch.setattr(network, "_run", run)


@pytest.mark.parametrize("name,kind", [("rxe0", "rxe"), ("siw0", "siw")])
def test_1a_a_soft_rdma_device_on_the_down_port_keeps_it(lab, monkeypatch, name, kind):
    _soft_rdma(lab, monkeypatch, name, kind, "enp5s0f1")
    uses = HostUsage.read(lab.root).verdict(_BDF).uses
    assert any(name in u for u in uses), uses


def test_control_1_a_soft_rdma_device_on_the_uplink_leaves_it_idle(lab, monkeypatch):
    _soft_rdma(lab, monkeypatch, "rxe0", "rxe", "enp2s0")
    verdict = HostUsage.read(lab.root).verdict(_BDF)
    assert not verdict.uses, verdict.uses

