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

2. A BPF program attached to the down port at tc (``clsact`` ingress/egress, ``tc filter ...
   bpf da``, or a ``tcx`` link on 6.6+). :meth:`NetView.use_of` counts an XDP program on a
   down port (``ip -d link``'s ``xdp``: "a program handles its packets before any socket
   sees them"), but the same program attached one hook later, at tc, shows in no output the
   harness reads: ``ip -d link`` prints neither a clsact qdisc's filters nor a tcx link, and
   no socket, route or upper device goes with it. A port's tc programs and qdisc stay
   through a down (``dev_deactivate`` keeps them; ``tcx_uninstall`` runs at unregister) and
   act again when it comes back; taking the port deletes them. Shape: Cilium's or Calico's
   eBPF data path on a lab host's k3s/k8s node (``cil_from_netdev``/``cil_to_netdev`` on each
   device of ``--devices=enp+``, as tcx links on 6.6+ or ``clsact`` filters before), a
   traffic generator's or a lab's own ``tc filter add dev enp5s0f1 ingress bpf da obj
   prog.o``, the kind of program a team moves between XDP and tc as it needs. Safe: a BPF
   program on the port at tc (``tc filter show dev X ingress|egress`` or ``bpftool net
   show``, in each namespace) is a use, named, as XDP is.
3. A ``tc mirred`` action on another port whose target is the down port (a software SPAN:
   ``tc filter add dev enp2s0 ingress matchall action mirred egress mirror dev enp5s0f1``,
   the usual way a lab without a managed switch feeds a capture box or IDS sensor on a
   spare port). The rule counts "a ``tc mirred`` target" only while it is up; the operator
   sets the capture port down while the sensor is away, the mirror stays (it drops what it
   would send, ``tcf_mirred_act``'s "device is down") and mirrors again when the port comes
   back. Unregistering the port (the unbind) clears the action's device
   (``tcf_mirred_device_event``, ``NETDEV_UNREGISTER``): the SPAN mirrors nowhere for good,
   even once the port is back, as an MPLS route through it (read 38b) is gone. Nothing the
   harness reads names it: the filter sits on enp2s0. Safe: a mirred action (``tc actions
   ls action mirred``, or the filters of each link) whose ``to_dev`` is the port is a use.

4. (the journal; runs must not hurt each other) ``restore`` (every session's start, the first
   step of ``make nightly``, the systemd unit's ``ExecStopPost``) acts on a journal entry
   left by a run that a host crash ended as if the device at that address were still the one
   the run moved, in the state the run left it: :func:`harness.host.binding._restore_entry`
   compares neither the device's ids with the entry's ``ids`` (a USB give-back checks it is
   still the device handed over, :func:`_same_usb`; a PCI one does not) nor the entry's boot
   with the host's (the journal is on disk, ``/var/lib``; every binding, ``driver_override``
   and ``sriov_numvfs`` the run wrote died with the boot). So a device the *new* boot put on
   vfio-pci (``driverctl set-override 0000:08:00.0 vfio-pci``, the usual way to reserve a
   card for a libvirt VM, its VM shut off: nothing holds the group) is unbound from
   vfio-pci, its override cleared, and bound to the entry's driver: (a) a card put in that
   slot while the host was down (PCI addresses follow slots: a GPU where the run's ConnectX
   was) is probed by its host driver (nouveau, amdgpu: the GPU reserved for the VM goes to the
   host, the VM's ``managed='no'`` hostdev fails; or, with the entry's driver still loaded,
   it is left on no driver with its pin gone); (b) the same card, reserved for a VM after
   the crash, goes back to mlx5_core (a netdev NetworkManager configures). Shape: a hotplug
   test that takes the host down (an AER fatal error, an IOMMU fault storm, a power cut),
   the operator changing the card or its use before the host comes back, and the nightly
   timer's ``Persistent=true`` run at boot. Safe: an entry from another boot (its ``time``
   before the boot's ``btime``, or a boot id recorded with it that is not this one's) or for
   a device that is not the one journaled (other ``vendor device``) gives back nothing: it
   is dropped (or kept and named), never written to the device.

5. An nftables ``netdev`` base chain on the down port (``table netdev filter { chain ingress {
   type filter hook ingress device "enp5s0f1" priority 0; ... } }``, loaded from
   /etc/nftables.conf at boot: an ingress filter or early drop on a traffic-generator or
   firewall-test port). docs/vfio.md counts "an nftables netdev hook" only while the port is
   up, and nothing the harness reads shows it (no socket, no route; ``ip link`` does not
   list hooks). The chain stays through a down; when the port is unregistered (the unbind),
   ``nft_netdev_event`` drops the device from a chain of several devices and, for a chain of
   this one device, releases the whole base chain with its rules (``__nft_release_basechain``:
   every kernel before 6.16, the one that keeps hooks by name: RHEL 9's 5.14, Debian 12's 6.1,
   Ubuntu 24.04's 6.8), so the ruleset the host loaded is gone when the port comes back.
   Safe: a netdev-family chain or a flowtable whose ``dev`` names the port (``nft -j list
   ruleset``, in each namespace) is a use.

Each test asserts the safe behaviour and fails on ab073e9 (each was also run against a
throw-away fix, not committed: ``ss -S``, ``bpftool -j net show`` and ``tc -j actions ls
action mirred``, ``nft -j list ruleset``, and an entry's ``time`` before ``btime`` or other
ids dropped, under which all pass); the controls show the same shape refused for TCP, the
port taken with tc programs, mirrors and chains on another port only, and a dead run's entry
of this boot still given back. A fake sysfs/proc tree plays the host (:mod:`.fakesysfs`'s lab
host), ``ss``, ``tc``, ``bpftool`` and ``nft`` by monkeypatched output; no guest is booted.

Looked at, no test (each held, or too weak to report): the journal's lock, ``write_atomic``,
``_check_entry``, ``_live_users_of_vfs``/``_vfs_not_idle`` (``release --force`` of a PF's
lease passes only the host's leases as ``journaled``, but a live run's VF held between its
tests is then a forced take-back the operator asked for), ``_leased_on_host`` with SR-IOV
entries, ``refuse_usb_handed`` (own hand-overs), ``hygiene.sweep_stale``/``sweep_run`` and the
owner tag (PID reuse only leaks folders); ci/gitlab-ci.yml, ci/Jenkinsfile, the systemd unit
(grant first, root's check before anything by name, restore after every end, no key
uploaded; ``HH_PYTEST_ARGS`` as a Jenkins build parameter reaches root, held to
``check_pytest_options``: ``--basetemp=DIR`` has pytest empty a root-owned ``DIR``, an
operator's foot-gun, not a user's way to root); /proc/net/ip_mr_vif lists the default
multicast table only (a VIF of another table: FRR's pim in a VRF, whose port is then a VRF
member, an upper device already).
"""

from __future__ import annotations

import json
import os

import pytest

from harness.core.errors import HostDeviceError
from harness.host.binding import restore_from_journal
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


def _with_sctp(lab, monkeypatch, sctp: str) -> None:
    """``ss`` prints ``sctp`` (its SCTP sockets) when it is asked for SCTP ones, as the real
    one does; the other fakes as they are. The ``sctp`` module is loaded (/sys/module/sctp):
    a host with an SCTP socket has it, and the harness asks for SCTP only there (``ss -S``
    would load it)."""
    (lab.sys / "module/sctp").mkdir(exist_ok=True)
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
    _with_sctp(lab, monkeypatch, "sctp LISTEN 0 128 10.0.5.1:38412 *:*\n")
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert any("38412" in u for u in uses), uses


def test_1b_an_sctp_association_from_the_down_ports_address_keeps_it(lab, monkeypatch):
    """An S1AP association of an eNB simulator with the MME, from 10.0.5.1 (multi-homed:
    its other path is up, the association ESTAB through the port's down)."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_sctp(lab, monkeypatch, "sctp ESTAB 0 0 10.0.5.1:36412 10.0.5.50:36412\n")
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert any("36412" in u for u in uses), uses


def test_1c_the_function_is_refused_with_the_sctp_listener_named(lab, monkeypatch):
    """As the binder judges 05:00.1 (HostUsage)."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_sctp(lab, monkeypatch, "sctp LISTEN 0 128 10.0.5.1:38412 *:*\n")
    uses = HostUsage.read(lab.root).verdict("0000:05:00.1").uses
    assert any("38412" in u for u in uses), uses


def test_control_1_a_tcp_listener_on_the_same_address_keeps_it(lab):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP + "tcp LISTEN 0 128 10.0.5.1:38412 0.0.0.0:*\n")
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert any("38412" in u for u in uses), uses


def test_control_1_no_sctp_socket_on_its_address_is_idle(lab, monkeypatch):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_sctp(lab, monkeypatch, "sctp LISTEN 0 128 192.168.1.10:38412 *:*\n")
    uses, evidence = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert uses == [] and "down" in evidence, uses



# -- 2. and 3. what tc holds on the port --------------------------------------------------------

_TC_BPF = [{"protocol": "all", "pref": 1, "kind": "bpf", "chain": 0},
           {"protocol": "all", "pref": 1, "kind": "bpf", "chain": 0,
            "options": {"handle": "0x1", "bpf_name": "cil_from_netdev", "direct-action": True,
                        "not_in_hw": True, "prog": {"id": 421, "name": "cil_from_netdev",
                                                    "tag": "3a1e5c1d2b4f6a7e", "jited": 1}}}]
_MIRRED = {"order": 1, "kind": "mirred", "mirred_action": "mirror", "direction": "egress",
           "to_dev": "enp5s0f1", "control_action": {"type": "pipe"}, "index": 1, "ref": 1,
           "bind": 1}
_TC_MIRROR = [{"protocol": "all", "pref": 49152, "kind": "matchall", "chain": 0},
              {"protocol": "all", "pref": 49152, "kind": "matchall", "chain": 0,
               "options": {"handle": 1, "not_in_hw": True, "actions": [_MIRRED]}}]


def _with_tc(lab, monkeypatch, filters: dict, tcx: list | None = None) -> None:
    """``tc`` and ``bpftool`` as they print on the lab host: ``filters`` maps (device, hook)
    to what ``tc -j filter show dev DEVICE HOOK`` prints (a clsact qdisc on each device
    named), ``tcx`` the tcx links ``bpftool -j net show`` lists; anything else as the fakes
    have it (no tc, no bpftool fake: nothing attached). The host is one that can have them:
    ``sch_ingress`` and ``act_mirred`` loaded, a 6.8 kernel (tcx is 6.6+); the harness asks
    only such a host (asking loads the module)."""
    for module in ("sch_ingress", "act_mirred"):
        (lab.sys / "module" / module).mkdir(exist_ok=True)
    lab.proc("sys/kernel/osrelease", "6.8.0-49-generic\n")
    real = network._run
    devs = {d for d, _ in filters}

    def run(fs, argv, fake, *a, **k):
        words = [str(w) for w in argv]
        names = {w.rsplit("/", 1)[-1] for w in words}
        if "bpftool" in names:
            if "version" in words:  # (Ubuntu 24.04's, from linux-tools 6.8: lists tcx)
                return json.dumps({"version": "7.4.0", "libbpf_version": "1.4"})
            tc = [{"devname": d, "ifindex": 4 if d == "enp5s0f1" else 2, "kind": f"tcx/{h}",
                   "name": n, "prog_id": 421} for d, h, n in (tcx or [])]
            tc += [{"devname": d, "ifindex": 4 if d == "enp5s0f1" else 2,
                    "kind": f"clsact/{h}", "name": "cil_from_netdev", "prog_id": 421}
                   for (d, h), f in filters.items() if any(x.get("kind") == "bpf" for x in f)]
            return json.dumps([{"xdp": [], "tc": tc, "flow_dissector": [], "netfilter": []}])
        if "tc" in names:
            dev = next((d for d in words if d in {li["ifname"] for li in _LINKS}), None)
            if "qdisc" in words:
                return json.dumps([{"kind": "clsact", "handle": "ffff:", "parent": "ffff:fff1",
                                    "options": {}, **({} if dev else {"dev": d})}
                                   for d in sorted(devs) if dev in (d, None)])
            if "filter" in words:
                hook = next((h for h in ("ingress", "egress") if h in words), None)
                if dev is None:
                    return json.dumps([x for f in filters.values() for x in f])
                return json.dumps([x for (d, h), f in filters.items() if d == dev and
                                   (hook is None or h == hook) for x in f])
            if "actions" in words or "action" in words:
                acts = [x for f in filters.values() for e in f
                        for x in e.get("options", {}).get("actions", [])]
                return json.dumps([{"total acts": len(acts)}, {"actions": acts}])
            return "[]"
        return real(fs, argv, fake, *a, **k)

    monkeypatch.setattr(network, "_run", run)


def test_2a_a_tc_bpf_program_on_the_down_port_keeps_it(lab, monkeypatch):
    """``tc filter add dev enp5s0f1 ingress bpf da obj bpf_host.o sec from-netdev`` (Cilium
    before tcx), the port down."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_tc(lab, monkeypatch, {("enp5s0f1", "ingress"): _TC_BPF})
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert any("bpf" in u.lower() or "cil_from_netdev" in u for u in uses), uses


def test_2b_a_tcx_program_on_the_down_port_keeps_it(lab, monkeypatch):
    """Cilium on a 6.6+ kernel: a tcx link (no qdisc, no ``tc filter`` shows it)."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_tc(lab, monkeypatch, {}, tcx=[("enp5s0f1", "ingress", "cil_from_netdev")])
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert any("bpf" in u.lower() or "cil_from_netdev" in u or "tcx" in u for u in uses), uses


def test_2c_the_function_is_refused_with_its_tc_program_named(lab, monkeypatch):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_tc(lab, monkeypatch, {("enp5s0f1", "ingress"): _TC_BPF},
             tcx=[("enp5s0f1", "ingress", "cil_from_netdev")])
    uses = HostUsage.read(lab.root).verdict("0000:05:00.1").uses
    assert any("enp5s0f1" in u and ("bpf" in u.lower() or "cil_from_netdev" in u or "tc" in u)
               for u in uses), uses


def test_3_a_mirred_target_on_the_down_port_keeps_it(lab, monkeypatch):
    """enp2s0's ingress mirrored to the capture port enp5s0f1 (set down: sensor away)."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_tc(lab, monkeypatch, {("enp2s0", "ingress"): _TC_MIRROR})
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert any("mirred" in u or "mirror" in u for u in uses), uses


def test_control_2_3_tc_on_another_port_only_leaves_it_idle(lab, monkeypatch):
    """A BPF program on enp2s0 (the host's uplink), mirroring nothing to enp5s0f1."""
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_tc(lab, monkeypatch, {("enp2s0", "ingress"): _TC_BPF},
             tcx=[("enp2s0", "ingress", "cil_from_netdev")])
    uses, evidence = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert uses == [] and "down" in evidence, uses


# -- 4. a journal entry of a run a host crash ended, after the reboot ---------------------------

#: The boot: the host came up at 2026-12-07 02:12:05 UTC (``btime``), after the crash.
_BTIME = 1796609525
GPU, CX5 = "0000:08:00.0", "0000:08:00.0"


def _rebooted(lab, fake_root, bdf: str, ids: str, driver: str, *, time_: str) -> "os.PathLike":
    """The journal as a run the crash ended left it: ``bdf`` (then ``ids``, on ``driver``)
    moved to vfio-pci by pid 4242 at ``time_``; the new boot's /proc (``btime``, a boot id;
    pid 4242 is no process now)."""
    lab.proc("stat", f"cpu  1 0 1 100 0 0 0 0 0 0\nbtime {_BTIME}\nprocesses 2000\n")
    lab.proc("sys/kernel/random/boot_id", "5f0e0c3a-6b0e-4d53-9d0b-1c2f64a1e001\n")
    journal = fake_root / "var/lib/hotplug-harness/vfio-journal.json"
    journal.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(journal.parent, 0o700)
    entry = {"bdf": bdf, "group": 20, "driver": driver, "driver_override": None,
             "method": "driver_override", "ids": ids.replace(":", " "), "lease": "4f1c2a9e0b7d",
             "pid": 4242, "pid_start": 51234, "time": time_}
    journal.write_text(json.dumps({"version": 1, "entries": [entry]}, indent=1) + "\n")
    return journal


def _reserved_for_a_vm(lab, ids: str, cls: int, host_driver: str) -> None:
    """A card at 08:00.0 (``ids``), pinned to vfio-pci by ``driverctl set-override`` for a
    libvirt VM that is shut off (nothing holds its group); ``host_driver`` is loaded and
    matches it."""
    lab.add_pci("0000:00:1c.6", "8086:a33e", 0x060400, "pcieport", 19)
    lab.add_driver(host_driver, [ids])
    lab.add_pci(GPU, ids, cls, None, 20, parent="0000:00:1c.6")
    (lab.dev_dir(GPU) / "driver_override").write_text("vfio-pci\n")
    lab._probe(GPU)
    assert lab.driver_of(GPU) == "vfio-pci"


def _restore(lab, journal):
    try:
        return restore_from_journal(lab.sysfs(), journal, timeout=0.3)
    except HostDeviceError as e:
        return e


@pytest.mark.parametrize("bdf, now, klass, driver", [
    # 4a: the run had the ConnectX-5 at 08:00.0 (mlx5_core) on vfio-pci when the host went
    # down; the card was taken out (mlx5_core not loaded now) and a GPU put in its slot,
    # reserved for a Windows VM with driverctl
    (GPU, "10de:1eb8", 0x030000, "nouveau"),
    # 4b: the same ConnectX-5, the run's move to vfio-pci gone with the crash; the operator
    # pinned it to vfio-pci for a VM before the host came back (driverctl)
    (CX5, "15b3:1017", 0x020000, "mlx5_core")], ids=["4a-another-card", "4b-reserved"])
def test_4_restore_leaves_alone_what_the_new_boot_has_at_the_journaled_address(
        lab, fake_root, bdf, now, klass, driver):
    """The first `restore` after the boot writes nothing to the card now there."""
    journal = _rebooted(lab, fake_root, bdf, "15b3:1017", "mlx5_core",
                        time_="2026-12-07T01:40:11+00:00")
    _reserved_for_a_vm(lab, now, klass, driver)
    before = len(lab.writes)
    _restore(lab, journal)
    assert (lab.driver_of(bdf), lab.override_of(bdf)) == ("vfio-pci", "vfio-pci"), \
        (lab.driver_of(bdf), lab.override_of(bdf), lab.writes[before:])


def test_control_4_an_entry_of_this_boot_is_given_back(lab, fake_root):
    """A run of this boot, killed (its pid gone), left the ConnectX-5 on vfio-pci (its move
    wrote the override ``vfio-pci``: the same state as 4b's, which only the boot tells
    apart): `restore` gives it back to mlx5_core, as it should."""
    journal = _rebooted(lab, fake_root, CX5, "15b3:1017", "mlx5_core",
                        time_="2026-12-07T03:40:11+00:00")
    lab.add_pci("0000:00:1c.6", "8086:a33e", 0x060400, "pcieport", 19)
    lab.add_driver("mlx5_core", ["15b3:1017"])
    lab.add_pci(CX5, "15b3:1017", 0x020000, None, 20, parent="0000:00:1c.6")
    (lab.dev_dir(CX5) / "driver_override").write_text("vfio-pci\n")
    lab._probe(CX5)
    assert lab.driver_of(CX5) == "vfio-pci"  # (as the run's own move left it: override too)
    results = _restore(lab, journal)
    assert lab.driver_of(CX5) == "mlx5_core", (results, lab.writes)


# -- 5. an nftables netdev chain on the down port -----------------------------------------------


def _with_nft(lab, monkeypatch, items: list) -> None:
    """``nft -j list ...`` prints ``items`` (chains, flowtables, each listed under its own
    ``list chains``/``list flowtables`` too) as nft 1.0.6 does, the version it names: a
    chain with no ``dev`` (read 40b, 2: nft 0.9.3 to 1.0.6 print none for a chain listed from
    the kernel), whose devices ``nft list chains`` prints as text (``device "X"``, ``devices
    = { X, Y }``); anything else as the fakes have it. ``nf_tables`` is loaded (a host with a
    ruleset has it; the harness asks only there)."""
    from .test_host_idle_review40b import _with_nft as printed_as
    shown = [{k: {f: v for f, v in o.items() if k != "chain" or f != "dev"}}
             for i in items for k, o in i.items()]
    printed_as(lab, monkeypatch,
               [{"table": {"family": "netdev", "name": "filter", "handle": 1}}, *shown],
               "".join(_chain_text(i["chain"]) for i in items if "chain" in i))


def _chain_text(chain: dict) -> str:
    """A chain as ``nft list chains`` (1.0.6) prints it."""
    devs = chain["dev"] if isinstance(chain["dev"], list) else [chain["dev"]]
    on = f'device "{devs[0]}"' if len(devs) == 1 else f"devices = {{ {', '.join(devs)} }}"
    return (f"table {chain['family']} {chain['table']} {{\n\tchain {chain['name']} {{\n"
            f"\t\ttype {chain['type']} hook {chain['hook']} {on} priority filter; policy "
            "accept;\n\t}\n}\n")


def _chain(dev) -> dict:
    return {"chain": {"family": "netdev", "table": "filter", "name": "ingress", "handle": 1,
                      "type": "filter", "hook": "ingress", "prio": 0, "dev": dev,
                      "policy": "accept"}}


def test_5a_a_netdev_chain_on_the_down_port_keeps_it(lab, monkeypatch):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_nft(lab, monkeypatch, [_chain("enp5s0f1")])
    uses, _ = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert any("nft" in u.lower() or "ingress" in u or "netdev" in u for u in uses), uses


def test_5b_the_function_is_refused_with_its_netdev_chain_named(lab, monkeypatch):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_nft(lab, monkeypatch, [_chain(["enp2s0", "enp5s0f1"])])
    uses = HostUsage.read(lab.root).verdict("0000:05:00.1").uses
    assert any("enp5s0f1" in u and ("nft" in u.lower() or "ingress" in u) for u in uses), uses


def test_control_5_a_netdev_chain_on_another_port_leaves_it_idle(lab, monkeypatch):
    lab.network(links=_LINKS, addrs=_ADDRS, ss=_TCP)
    _with_nft(lab, monkeypatch, [_chain("enp2s0")])
    uses, evidence = NetView.read(Sysfs(lab.root)).use_of(PORT)
    assert uses == [] and "down" in evidence, uses
