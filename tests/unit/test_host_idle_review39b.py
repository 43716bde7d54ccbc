"""Issue 31, read 39b (the network side's sockets, the leases and the journal, temporary
folders, CI files), on main at ab073e9. What it found, one section below each:

1. SCTP sockets on the port's own address. Read 38b's rule (:func:`harness.host.network.
   _on_its_address`, docs/vfio.md "no socket using its address ... a listener on its address
   counts too") judges the sockets ``ss`` prints, but :data:`harness.host.network._SS` asks
   ``ss`` for TCP, UDP and raw sockets only (``-t -u -w``): SCTP (``-S``) is never listed, so
   an SCTP listener or association on the port's address is not seen and the evidence "no
   socket bound to it" is given. Shape: a 5G/4G core test lab (Open5GS's AMF/MME, free5GC's
   AMF: NGAP and S1AP run on SCTP port 38412/36412; SIGTRAN's M3UA on 2905; Diameter over
   SCTP on 3868) with its N2 listener on the lab network's address of a spare-looking NIC
   port, ``ngap: server: - address: 10.0.5.1``; the operator sets the port down (a cable
   swap, a gNB simulator rewired) and the listener stays, as a TCP one would; SCTP
   multi-homing (``sctp_bindx``: 10.0.5.1 and 10.0.6.1) keeps an association ESTAB on its
   other path through that port's down, and uses it again when it comes back. Taking the
   port removes the address: the AMF's N2 listener (or the association's path) is gone for
   good. The same rule read for TCP refuses it (control 1). Safe: SCTP sockets are read
   with the others (``ss -S``), and one on the port's address is a use, as a TCP one is.

Each test asserts the safe behaviour and fails on ab073e9; the controls show the same shape
refused for TCP and the port taken with no socket on its address. A fake sysfs/proc tree
plays the host (:mod:`.fakesysfs`'s lab host), ``ss`` by monkeypatched output; no guest is
booted.
"""

from __future__ import annotations

from harness.host import network
from harness.host.network import NetView, Netdev
from harness.host.safety import HostUsage
from harness.host.sysfs import Sysfs

from . import fakesysfs

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PORT = Netdev("", "enp5s0f1")

# -- 1. SCTP sockets on the port's own address --------------------------------------------------

_LINKS = [fakesysfs.link(1, "lo", up=True),
          fakesysfs.link(2, "enp2s0", "0000:02:00.0", up=True),
          fakesysfs.link(3, "enp5s0f0", "0000:05:00.0"),
          fakesysfs.link(4, "enp5s0f1", "0000:05:00.1"),
          fakesysfs.link(5, "eno1", "0000:00:1f.6")]
_ADDRS = {"lo": ["127.0.0.1/8"], "enp2s0": ["192.168.1.10/24"], "enp5s0f1": ["10.0.5.1/24"]}
_TCP = "tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:*\n"


def _asks_sctp(argv) -> bool:
    """Whether ``argv`` is an ``ss`` that lists SCTP sockets (``-S``, ``--sctp``, ``-A
    sctp``, or ``-S`` among combined short options)."""
    if not any(str(a).endswith("ss") for a in argv):
        return False
    words = [str(a) for a in argv]
    return "--sctp" in words or "sctp" in words or any(
        w.startswith("-") and not w.startswith("--") and "S" in w[1:] for w in words)


def _with_sctp(monkeypatch, sctp: str) -> None:
    """``ss`` prints ``sctp`` (its SCTP sockets) when it is asked for SCTP ones, as the real
    one does; the other fakes as they are."""
    real = network._run

    def run(fs, argv, fake, *a, **k):
        if _asks_sctp(argv):
            tcp = "-t" in argv or any(w.startswith("-") and not w.startswith("--") and
                                       "t" in w[1:] for w in map(str, argv))
            return (real(fs, argv, fake, *a, **k).rstrip("\n") + "\n" if tcp else "") + sctp
        return real(fs, argv, fake, *a, **k)

    monkeypatch.setattr(network, "_run", run)


def test_1a_an_sctp_listener_on_the_down_ports_address_keeps_it(lab, monkeypatch):
    """Open5GS's AMF listens for NGAP on 10.0.5.1:38412 (SCTP), the port set down."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_sctp(monkeypatch, "sctp LISTEN 0 128 10.0.5.1:38412 *:*\n")
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert any("38412" in u for u in uses), uses


def test_1b_an_sctp_association_from_the_down_ports_address_keeps_it(lab, monkeypatch):
    """An S1AP association of an eNB simulator with the MME, from 10.0.5.1 (multi-homed:
    its other path is up, the association ESTAB through the port's down)."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_sctp(monkeypatch, "sctp ESTAB 0 0 10.0.5.1:36412 10.0.5.50:36412\n")
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert any("36412" in u for u in uses), uses


def test_1c_the_function_is_refused_with_the_sctp_listener_named(lab, monkeypatch):
    """As the binder judges 05:00.1 (HostUsage)."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_sctp(monkeypatch, "sctp LISTEN 0 128 10.0.5.1:38412 *:*\n")
    uses = HostUsage.read(lab.root).verdict("0000:05:00.1").uses
    assert any("38412" in u for u in uses), uses


def test_control_1_a_tcp_listener_on_the_same_address_keeps_it(lab):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP + "tcp LISTEN 0 128 10.0.5.1:38412 0.0.0.0:*\n")
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert any("38412" in u for u in uses), uses


def test_control_1_no_sctp_socket_on_its_address_is_idle(lab, monkeypatch):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_sctp(monkeypatch, "sctp LISTEN 0 128 192.168.1.10:38412 *:*\n")
    uses, evidence = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert uses == [] and "down" in evidence, uses

