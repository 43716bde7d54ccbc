"""Issue 31, twenty-eighth adversarial read (b: network, safety, SR-IOV, binding, plan,
inventory, the root-owned paths; storage holders left to another read). What it found, one
section below each (the docstring of each test says the host shape, why the harness calls it
idle or safe, and what would be lost), on main at 798bb5e:

1. (a) `python -m harness plan` calls an inventory VF entry "would be taken" whenever the PF
   has enough VFs already, without judging the VF at all: ``harness.host.plan._vf_entry``
   returns True once ``sriov.check_request`` is None (which it is as soon as
   ``numvfs >= vfs``, before it looks at any use), and never runs the proven-idle rule on the
   VF it would bind. A VF another user runs on igbvf with an address and a route (or one a
   guest holds on vfio-pci) is printed under "verdict: every device would be taken".
2. (a) a group that is on vfio-pci already (``vfio-pci.ids=`` on the kernel command line,
   ``driverctl set-override``: the usual set-up of a passthrough host) is bound with no
   journal entry at all (``VfioBinder.bind`` journals only what it moves), so it is held by
   nobody: `python -m harness bind` says it is on vfio-pci "until `harness release`", but a
   nightly (or any second run) proves it idle a moment later (``/dev/vfio/N`` is open by
   nobody until the person starts their QEMU) and passes it to its own guest; `release`
   then says the harness never bound it.
3. (a) `python -m harness discover --write` drafts an entry for every VF of a PF that has VFs
   already, those a guest holds included: ``discover.discover`` asks ``sriov.check_request``
   with the count the PF has (``draft_vfs``), which returns None before it looks at any use,
   and ``draft_inventory`` drafts the VF entries even for a PF it calls NOT safe (its own VF
   is on vfio-pci). The text says "its VFs can be taken"; the docs say a device discover
   calls safe is one a run takes.
4. (a) the harness run from a chroot (schroot/debootstrap: a newer Python on an old lab host)
   passes the "host's namespaces" proof, ``network.namespace_problem``: a chroot shares PID 1's
   network, PID and mount namespaces and leaves no container mark. But the kernel prints every
   ``mountinfo`` relative to the reader's root and leaves out the mounts outside it, and
   /var/run/netns is the chroot's: a named namespace held only by its bind mount in the host's
   /run/netns (`ip netns add blue`, no process in it) is seen nowhere, and the port of a
   multi-port function moved there (ConnectX-3: two ports, one PCI function) is missed while
   the function is judged by its other, idle port. The storage read is as blind to the host's
   mounts (only the O_EXCL claim right before the move catches a mounted disk). The root
   ``/proc/1/root`` and ``/`` differ there (device and inode), which nothing compares.
5. (a) a NIC whose driver lends it to the kernel's crypto API reads idle when its ports are
   down: Chelsio's chcr (a ULD of cxgb4: no device, node or interface of its own) registers
   ``xts(aes)``, ``cbc(aes)``, ``gcm(aes)``... at priority 500 (CHCR_CRA_PRIORITY), above
   AES-NI's 401, so every dm-crypt
   volume (the host's encrypted root), IPsec SA or AF_ALG user set up since it loaded runs
   its crypto on the card. Nothing in the rule looks at modules that work through the
   function's driver (``/sys/module/cxgb4/holders``) or at ``/proc/crypto``; unbinding cxgb4
   detaches chcr under dm-crypt's in-flight requests. A new kind of kernel user of a function
   with no device below it falls through as free.
6. (a) a VF the inventory lists by its own address (``bdf = "0000:08:10.1"``: `discover` calls
   an idle VF "safe to take" on its own line) is relied on for the whole run with no journal
   entry between its tests: ``VfioBinder.enable_vfs`` is the only place that journals reliance
   on a PF's VFs, and a lease's entries are dropped at its release. The run that made the VFs
   (``set``) ends meanwhile, ``_live_users_of_vfs`` finds no live entry of a VF, and it writes
   0 to ``sriov_numvfs``: the VF the live run's next tests take is gone.
7. (b) `.ci/check-root-tree`, the guard that refuses a PATH folder others can write before
   root runs anything by name, runs its own programs by name from that PATH first: its first
   line is ``[ "$(id -u)" = 0 ]``, then ``dirname``, ``stat``, ``find``, ``mktemp`` (the PATH
   check comes after the whole tree is checked). systemd's default PATH (the nightly unit's
   ExecStartPre and ExecStopPost) starts with /usr/local/sbin:/usr/local/bin, and on a Debian
   host installed before Debian 11 /usr/local/bin is 2775 root:staff (docs/vfio.md names
   that very case as one "the harness refuses"): a member of staff who puts an ``id`` there
   runs it as root every night, and the check then refuses the PATH, too late. (The CI jobs'
   own ``test "$(id -u)" -eq 0`` before the check is the same.)
8. (a) a ConnectX-3 (mlx4: both ports on one PCI function) whose second port runs InfiniBand
   (``mlx4_port2 = ib``) with no IPoIB interface up reads idle by its first, Ethernet port:
   mlx4_ib puts its RDMA device below the function itself (``infiniband/mlx4_0``, a class
   device bound to no driver: unlike mlx5's, ice's or bnxt's on the auxiliary bus, which the
   rule refuses), so nothing in the rule sees it. An IB port is ACTIVE with no netdev at all:
   the kernel's SRP/iSER/NVMe-over-RDMA/NFS-over-RDMA initiators and targets (and their
   reconnects) use it, and ``infiniband/mlx4_0/ports/2/state`` says so.
"""

import json
import os

import pytest

from harness.core.errors import HostDeviceError
from harness.host.binding import VfioBinder
from harness.host.inventory import parse_inventory
from harness.host.network import namespace_problem
from harness.host.plan import plan_inventory
from harness.host.safety import HostUsage

from . import fakesysfs
from . import test_host_sriov as sriov
from .fakesysfs import FakeHost

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
sriov_host = sriov.host  # (a fixture: the lab host with an idle 82576 PF at PF, 7 VFs)
PF, VF0, VF1 = sriov.PF, sriov.VF0, sriov.VF1
PORT0, PORT1 = "0000:05:00.0", "0000:05:00.1"


@pytest.fixture
def journal(fake_root):
    return fake_root / "var/lib/hotplug-harness/vfio-journal.json"


def entries(journal) -> list[dict]:
    return json.loads(journal.read_text())["entries"] if journal.exists() else []


def set_links(host: FakeHost, ifname: str, **changes) -> None:
    """Change one interface as `ip -j -d link` shows it (``up=True``: `ip link set X up`)."""
    listed = host.root / "ip/link.json"
    links = json.loads(listed.read_text())
    for li in links:
        if li["ifname"] == ifname and changes.pop("up", False):
            li.update(flags=li["flags"] + ["UP", "LOWER_UP"], operstate="UP")
        if li["ifname"] == ifname:
            li.update(changes)
    listed.write_text(json.dumps(links))


def add_route(host: FakeHost, ifname: str, dst: str) -> None:
    routes = host.root / "ip/route.json"
    routes.write_text(json.dumps(json.loads(routes.read_text()) + [{"dst": dst, "dev": ifname}]))


# -- 1. plan calls an existing VF "would be taken" without judging it ----------------------------


VF_ENTRY = """
[[device]]
role = "nic"
pf = "0000:08:00.0"
vf = 1
vfs = 2
gateway = "10.8.1.1"
"""


def vf_inventory(host: FakeHost):
    return parse_inventory(VF_ENTRY, root=host.sysfs())


def test_1_plan_refuses_an_existing_vf_another_user_runs_with_a_route(sriov_host):
    """Host shape: the 82576 PF at 08:00.0 has 2 VFs already (someone, or an earlier run, set
    sriov_numvfs; the harness's run reuses VFs that are there, "journaled as this run's").
    Another user bound VF 1 (08:10.1) to igbvf and runs enp8s0v1 up, 10.8.1.2/24, with a route.
    The inventory's VF entry is VF 1 of that PF.

    Why it is called safe: ``plan._vf_entry`` asks ``sriov.check_request``, which returns None
    as soon as the PF has enough VFs (it never looks at ``in_use`` then), prints "would use its
    existing VF 1" and returns ok=True; the VF's own proven-idle verdict is never computed
    (the run would only find out at bind time). `make nightly` prints this plan before it
    binds anything, and an operator reads "verdict: every device would be taken" for a VF that
    carries another user's traffic. Expected: the VF judged like any listed device (its
    evidence, or REFUSED naming its use), and the plan's verdict not "would be taken"."""
    host = sriov_host
    sriov.set_numvfs(host, 2)
    if host.driver_of(VF1) != "igbvf":
        host._bind(VF1, "igbvf")
    host.add_net("enp8s0v1", VF1)
    set_links(host, "enp8s0v1", up=True)
    add_route(host, "enp8s0v1", "10.8.1.0/24")
    lines, ok = plan_inventory(host.sysfs(), vf_inventory(host))
    text = "\n".join(lines)
    assert not ok, text
    assert "verdict: every device would be taken" not in text
    assert any(line.strip().startswith("REFUSED") and ("enp8s0v1" in line or VF1 in line)
               for line in lines), text


def test_1_control_plan_takes_an_existing_idle_vf(sriov_host):
    """Control: the same PF with 2 VFs on no driver (nobody's): the plan would use VF 1."""
    host = sriov_host
    sriov.set_numvfs(host, 2)
    for vf in (VF0, VF1):
        if host.driver_of(vf):
            host._unbind(vf)
    lines, ok = plan_inventory(host.sysfs(), vf_inventory(host))
    assert ok, "\n".join(lines)
    assert f"  would use its existing VF 1 ({VF1}), journaled as this run's: sriov_numvfs " \
           "stays while any live run holds a VF of it" in lines


# -- 2. a group on vfio-pci already is leased with no journal entry: held by nobody --------------


def on_vfio_from_boot(host: FakeHost, *bdfs: str) -> None:
    """`vfio-pci.ids=8086:10fb` on the kernel command line: the functions were on vfio-pci
    from boot, with no journal entry of anyone's."""
    for bdf in bdfs:
        host._unbind(bdf)
        host._bind(bdf, "vfio-pci")


def test_2_a_group_bound_by_hand_while_on_vfio_from_boot_is_not_taken_by_a_run(lab, journal):
    """Host shape: the 82599's two ports (group 12) are on vfio-pci from boot
    (``vfio-pci.ids=8086:10fb``). A person runs `python -m harness bind 05:00.0 --with
    05:00.1`, which says "0000:05:00.0 is on vfio-pci ... give it back: python -m harness
    release 05:00", and goes to start their QEMU. Meanwhile the nightly (another run, the
    same journal) binds 05:00.0.

    Why it is called idle: ``VfioBinder.bind`` journals only ``plan.to_move``, which leaves out
    functions on vfio-pci already, so the person's lease is no journal entry; the nightly's
    ``_refuse_foreign`` finds no entry of the group, its verdict finds /dev/vfio/12 open by no
    process (the person's QEMU has not started), and the group is taken: the nightly's guest
    gets the ports, the person's QEMU then fails (the group is busy), and `release 05:00.0`
    says "the harness did not bind it". Expected: a lease the harness hands out holds the
    group in the journal even when nothing moved, and a second run is refused as for a group
    it moved."""
    on_vfio_from_boot(lab, PORT0, PORT1)
    lab.file(f"proc/{os.getpid()}/stat", f"{os.getpid()} (python) S " + "0 " * 18 + "4242 0\n")
    by_hand = VfioBinder(lab.sysfs(), journal=journal, manual=True)
    lease = by_hand.bind(PORT0, {PORT0, PORT1})
    assert lease.moved == [] and lab.driver_of(PORT0) == "vfio-pci"
    lab.writes.clear()
    with pytest.raises(HostDeviceError, match=r"0000:05:00\.[01] \(group 12\)"):
        VfioBinder(lab.sysfs(), journal=journal).bind(PORT0, {PORT0, PORT1})  # the nightly
    assert lab.writes == []


def test_2_control_a_group_on_vfio_from_boot_is_still_taken_when_nobody_holds_it(lab, journal):
    """Control: with no lease of anyone's, a run takes the group that is on vfio-pci from
    boot (nothing to move, /dev/vfio/12 open by nobody) and writes nothing to sysfs."""
    on_vfio_from_boot(lab, PORT0, PORT1)
    lab.writes.clear()
    with VfioBinder(lab.sysfs(), journal=journal).bind(PORT0, {PORT0, PORT1}) as lease:
        assert lease.group == 12 and lab.driver_of(PORT0) == lab.driver_of(PORT1) == "vfio-pci"
    assert lab.writes == []
    assert lab.driver_of(PORT0) == "vfio-pci"


# -- 3. discover drafts the VFs of a PF whose VF a guest holds ------------------------------------


def qemu_holds_group(host: FakeHost, group: int, pid: int = 4321) -> None:
    """A QEMU (another user's guest) holds /dev/vfio/GROUP open."""
    host.proc(f"{pid}/comm", "qemu-system-x86\n")
    (host.root / f"proc/{pid}/fd").mkdir(parents=True)
    os.symlink(f"/dev/vfio/{group}", host.root / f"proc/{pid}/fd/17")


def test_3_discover_drafts_no_vf_a_guest_holds(sriov_host):
    """Host shape: the 82576 PF has 2 VFs; VF 0 (08:10.0, IOMMU group 100) is on vfio-pci and
    a production VM's QEMU holds /dev/vfio/100; VF 1 is on no driver.

    Why it is called takeable: ``discover`` computes ``sriov_refused`` with
    ``check_request(pf, bdf, draft_vfs(7, 2) = 2, in_use=...)``, which returns None as soon as
    ``numvfs >= 2`` (``in_use``, the PF's own verdict, which does name the held VF, is never
    looked at then); ``draft_inventory`` then drafts VF 0 and VF 1 (``pf``/``vf``/``vfs``)
    although the PF itself is NOT safe, and the text says "its VFs can be taken". The operator
    who reviews the draft is told the VM's VF is for the harness. Expected: no entry drafted
    for a VF that is not proven idle (here VF 0), and the PF's VFs not called takeable."""
    from harness.host.discover import discover, draft_inventory

    host = sriov_host
    sriov.set_numvfs(host, 2)
    for vf in (VF0, VF1):
        if host.driver_of(vf):
            host._unbind(vf)
    host._bind(VF0, "vfio-pci")
    qemu_holds_group(host, 100)
    found = {c.address: c for c in discover(host.sysfs())}
    assert not found[VF0].safe  # (its own candidate says so)
    drafted = [(d.pf, d.vf) for d in draft_inventory(list(found.values())).devices if d.pf]
    assert (PF, 0) not in drafted, drafted
    assert found[PF].sriov_refused is not None or drafted == [(PF, 1)]


def test_3_control_discover_drafts_the_vfs_of_an_idle_pf(sriov_host):
    """Control: an idle PF with no VFs yet: the draft asks for VF 0 and VF 1 (vfs = 2)."""
    from harness.host.discover import discover, draft_inventory

    found = discover(sriov_host.sysfs())
    drafted = [(d.pf, d.vf, d.vfs) for d in draft_inventory(found).devices if d.pf]
    assert drafted == [(PF, 0, 2), (PF, 1, 2)]


# -- 4. a chroot passes the proof of the host's namespaces ----------------------------------------


def roots(host: FakeHost, own: "os.PathLike", pid1: "os.PathLike") -> None:
    """/proc/self/root and /proc/1/root: this process's root and PID 1's (the host's /)."""
    for who, where in (("self", own), ("1", pid1)):
        link = host.root / "proc" / who / "root"
        if link.is_symlink():
            link.unlink()
        os.symlink(os.fspath(where), link)


def test_4_a_chroot_is_not_taken_for_the_host(lab, journal, tmp_path):
    """Host shape: the harness runs as root in a chroot (/srv/chroot/bookworm, with /proc,
    /sys and /dev bind-mounted into it, as schroot does): the same network, PID and mount
    namespaces as PID 1, no /.dockerenv, a host cgroup. PID 1's root (``/proc/1/root``: the
    host's /) is not this process's root (``/proc/self/root``: the chroot).

    Why it is called the host: ``namespace_problem`` compares only the ns links (equal in a
    chroot) and looks for container marks. From there the kernel shows this process only the
    mounts under its root in every ``/proc/PID/mountinfo``, so the host's /run/netns bind
    mounts (a named namespace no process is in) and its disks' mounts are not seen, and
    /var/run/netns is the chroot's own folder: a port of a function living in such a namespace
    (up, carrying traffic) is missed. Expected: the proof fails ("this process's root is not
    PID 1's"), and nothing is bound."""
    host_root = tmp_path / "host-root"
    host_root.mkdir()
    roots(lab, lab.root, host_root)
    assert namespace_problem(lab.sysfs()) is not None
    lab.writes.clear()
    with pytest.raises(HostDeviceError, match="refusing to take"):
        VfioBinder(lab.sysfs(), journal=journal).bind(PORT0, {PORT0, PORT1})
    assert lab.writes == [] and entries(journal) == []


def test_4_control_the_hosts_own_root_passes_the_proof(lab):
    """Control: /proc/self/root and /proc/1/root are the same folder (no chroot): the proof
    holds, as on any host."""
    roots(lab, lab.root, lab.root)
    assert namespace_problem(lab.sysfs()) is None


# -- 5. a NIC that serves the kernel's crypto API ---------------------------------------------------


T6 = "0000:09:00.4"
CHCR_CRYPTO = """name         : xts(aes)
driver       : xts-aes-chcr
module       : chcr
priority     : 500
refcnt       : 3
selftest     : passed
internal     : no
type         : skcipher

name         : xts(aes)
driver       : xts-aes-aesni
module       : aesni_intel
priority     : 401
refcnt       : 1
selftest     : passed
internal     : no
type         : skcipher
"""


def chelsio_t6(host: FakeHost) -> None:
    """A Chelsio T6 (cxgb4 drives the adapter from PF4): one port, enp9s0f4, down, no address,
    route or socket."""
    host.add_pci("0000:00:1c.6", "8086:a33e", 0x060400, "pcieport", 19)
    host.add_pci(T6, "1425:6408", 0x020000, "cxgb4", 20, parent="0000:00:1c.6")
    host.add_net("enp9s0f4", T6)
    for module in ("cxgb4", "aesni_intel"):
        (host.sys / "module" / module / "holders").mkdir(parents=True, exist_ok=True)
    host.proc("crypto", CHCR_CRYPTO.split("\n\n")[1])


def test_5_a_nic_whose_driver_lends_it_to_the_crypto_api_is_in_use(lab):
    """Host shape: chcr is loaded (crypto and inline-TLS offload on the T6); the host's
    dm-crypt root volume, opened since, uses ``xts-aes-chcr`` (``/proc/crypto``: module chcr,
    refcnt 3; chcr holds cxgb4: ``/sys/module/cxgb4/holders/chcr``). The port is down: the
    card's crypto needs no link.

    Why it is called idle: the verdict reads the port (down: the whole network evidence), the
    nodes, bound devices and BARs below the function, none of which chcr has; so "enp9s0f4:
    down, no route..." is the evidence and 09:00.4 is taken. Unbinding cxgb4 detaches chcr with
    the root volume's I/O in flight (I/O errors, the root filesystem read-only). Expected: a
    module that works through the function's driver and that the rule does not judge (chcr
    here; a holder of the driver's module) keeps the function, named."""
    chelsio_t6(lab)
    (lab.sys / "module/chcr/holders").mkdir(parents=True)
    os.symlink("../../chcr", lab.sys / "module/cxgb4/holders/chcr")
    lab.proc("crypto", CHCR_CRYPTO)
    verdict = HostUsage.read(lab.root).verdict(T6)
    assert not verdict.idle, verdict
    assert "chcr" in " ".join(verdict.uses)


def test_5_control_the_same_nic_with_no_module_through_its_driver_is_idle(lab):
    """Control: the same T6 with no chcr (cxgb4 holds nothing, /proc/crypto names only
    AES-NI): its down port is the evidence, and its inventory entry says the function has
    one port (``ports = 1``: cxgb4 serves several on one function; review 31b, 3): idle."""
    chelsio_t6(lab)
    verdict = HostUsage.read(lab.root, nic_ports={T6: 1}).verdict(T6)
    assert verdict.idle, verdict


# -- 6. a VF listed by its address is relied on with no journal entry ------------------------------


OTHER_RUN = 4321


def as_another_live_run(host: FakeHost, journal, keep_lease: str) -> None:
    """Every journal entry but those of lease ``keep_lease`` belongs to a run that is still
    alive (pid 4321)."""
    from harness.host.binding import Journal

    host.proc(f"{OTHER_RUN}/stat", f"{OTHER_RUN} (pytest) S 1 " + "0 " * 40 + "\n")
    held = Journal(journal).read()
    with Journal(journal).locked():
        Journal(journal).write([dict(e, pid=OTHER_RUN, pid_start=None)
                                if e.get("lease") != keep_lease else e for e in held])


def test_6_a_vf_a_live_run_lists_by_address_keeps_its_pfs_count(sriov_host, journal):
    """Host shape: run A (an inventory with a VF entry of the 82576: pf, vf, vfs) made 2 VFs
    (journaled, ``set`` 2). Run B, alive, lists VF 1 by its address (``bdf = "0000:08:10.1"``)
    and has run its first test with it (bound, released: back on no driver). A ends.

    Why it is called free: B's lease entries were dropped at its release and B never
    journaled that it relies on VF 1 (only ``enable_vfs`` does that, for pf/vf entries), so
    ``_live_users_of_vfs`` finds no live run; VF 1 is on no driver, idle; A's end writes 0 to
    sriov_numvfs, and the VF B's next tests bind no longer exists (B fails, and had its guest
    been mid-plug, lost the device under it). Expected: a run that binds a VF journals that
    it relies on it (as for VFs that were there already), and A's end leaves the count
    ("in-use"), for the last run to put back."""
    host = sriov_host
    a = VfioBinder(host.sysfs(), journal=journal)
    a.enable_vfs(PF, 2)
    mine = a._sriov[0]["lease"]
    b = VfioBinder(host.sysfs(), journal=journal)
    b.bind(VF1, {VF1}).release()  # B's first test with VF 1
    as_another_live_run(host, journal, keep_lease=mine)  # B goes on (pid 4321)
    a.close()
    assert sriov.numvfs(host) == 2 and host.sysfs().pci_exists(VF1)


def test_6_control_with_no_other_run_the_runs_end_puts_the_count_back(sriov_host, journal):
    """Control: with no other run, A's end puts sriov_numvfs back to 0, as it should."""
    host = sriov_host
    a = VfioBinder(host.sysfs(), journal=journal)
    a.enable_vfs(PF, 2)
    VfioBinder(host.sysfs(), journal=journal).bind(VF1, {VF1}).release()
    a.close()
    assert sriov.numvfs(host) == 0 and entries(journal) == []


# -- 7. check-root-tree runs programs from the PATH it is there to refuse ---------------------------


def staffs_bin(tmp_path, marker) -> "os.PathLike":
    """/usr/local/bin as Debian before 11 made it: root's, 2775, its group (here nobody's,
    standing for staff) may add programs, and a member did: ``id``, ``dirname``, ``stat``,
    ``find``... that leave ``marker`` (in root's own folder) and then do what the real ones do."""
    from .test_paths import NOBODY

    folder = tmp_path / "usr-local-bin"
    folder.mkdir()
    os.chown(folder, 0, NOBODY)
    folder.chmod(0o2775)
    for tool in ("id", "dirname", "basename", "stat", "find", "mktemp", "readlink", "head",
                 "sed", "grep", "tr", "rm"):
        real = next((f"{d}/{tool}" for d in ("/usr/bin", "/bin") if os.path.exists(f"{d}/{tool}")),
                    None)
        if real is None:
            continue
        (folder / tool).write_text(f'#!/bin/sh\n: > {marker}\nexec {real} "$@"\n')
        (folder / tool).chmod(0o755)
        os.chown(folder / tool, NOBODY, NOBODY)
    return folder


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second user (nobody)")
def test_7_check_root_tree_runs_nothing_from_the_path_it_refuses(tmp_path):
    """Host shape: the nightly's systemd unit on a Debian host upgraded from 10, whose
    /usr/local/bin is 2775 root:staff; PATH is systemd's default, /usr/local/bin before
    /usr/bin. A member of staff (here nobody) put an ``id`` (and ``stat``, ``find``...) there.

    Why it runs them: check-root-tree calls ``id -u`` on its first line, then checks the
    checkout with ``dirname``, ``stat`` and ``find``, all looked up on PATH, and looks at PATH
    itself only after that (``check_search PATH``): the check refuses the PATH (exit 1,
    "writable by others than its owner"), but staff's programs have run as root already.
    Expected: the refusal, and nothing of that folder run (its own commands from fixed
    folders, the caller's PATH checked before it is used)."""
    from .test_paths import _check_tree, _checkout

    marker = tmp_path / "root-only" / "ran"
    marker.parent.mkdir()
    top = _checkout(tmp_path / "srv" / "hotplug-harness")
    bad = staffs_bin(tmp_path, marker)
    r = _check_tree(top, PATH=f"{bad}:/usr/bin:/bin")
    assert r.returncode == 1 and "PATH entry" in r.stderr, r.stderr
    assert not marker.exists(), "a program of the folder the check refuses ran as root"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second user (nobody)")
def test_7_control_check_root_tree_passes_with_roots_own_path(tmp_path):
    """Control: the same checkout with root's own PATH passes."""
    from .test_paths import _check_tree, _checkout

    top = _checkout(tmp_path / "srv" / "hotplug-harness")
    r = _check_tree(top, PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    assert r.returncode == 0, r.stderr


# -- 8. an RDMA device below the function itself, its InfiniBand port active ------------------------


CX3 = "0000:0a:00.0"


def connectx3(host: FakeHost, ib_port_state: "str | None") -> None:
    """A ConnectX-3 Pro (15b3:1007, an Ethernet-class function, mlx4_core): port 1 Ethernet
    (enp10s0, down), port 2 InfiniBand (no IPoIB interface). ``ib_port_state``: mlx4_ib's
    RDMA device below the function, its port 2 in that state (None: mlx4_ib not loaded)."""
    host.add_pci("0000:00:1c.7", "8086:a33f", 0x060400, "pcieport", 22)
    host.add_pci(CX3, "15b3:1007", 0x020000, "mlx4_core", 23, parent="0000:00:1c.7")
    (host.dev_dir(CX3) / "mlx4_port1").write_text("eth\n")
    (host.dev_dir(CX3) / "mlx4_port2").write_text("ib\n")
    host.add_net("enp10s0", CX3)
    if ib_port_state is None:
        return
    ib = host.dev_dir(CX3) / "infiniband/mlx4_0"
    for port, (state, layer) in {"1": ("1: DOWN", "Ethernet"),
                                 "2": (ib_port_state, "InfiniBand")}.items():
        (ib / "ports" / port).mkdir(parents=True)
        (ib / "ports" / port / "state").write_text(state + "\n")
        (ib / "ports" / port / "link_layer").write_text(layer + "\n")
    (ib / "node_type").write_text("1: CA\n")
    host._link(host.sys / "class/infiniband/mlx4_0", ib)


def test_8_a_function_whose_infiniband_port_is_active_is_in_use(lab):
    """Host shape: the ConnectX-3's port 2 is on the InfiniBand fabric, ACTIVE; the host's
    scratch filesystem is NVMe over RDMA from a storage target on that fabric (nvme-rdma,
    whose disks live under /sys/devices/virtual/nvme-fabrics, below no function), IPoIB is not
    loaded (or ib0 is down). Port 1 (Ethernet, enp10s0) is down: the spare the operator lists.

    Why it is called idle: the verdict sees the function's one network interface (down: the
    evidence), and no node open, no disk, no bound device below it: mlx4_ib's RDMA device is
    a class device below the function, bound to nothing, and no rule looks at RDMA devices or
    their ports. Taking 0a:00.0 unbinds mlx4_core and drops port 2 off the fabric under the
    mounted NVMe-oF filesystem. Expected: an RDMA device below the function (an active port,
    at least) keeps it, named, as an RDMA device on the auxiliary bus does."""
    connectx3(lab, "4: ACTIVE")
    verdict = HostUsage.read(lab.root).verdict(CX3)
    assert not verdict.idle, verdict
    assert "mlx4_0" in " ".join(verdict.uses)


def test_8_control_the_same_card_without_an_rdma_device_is_idle(lab):
    """Control: the same card with mlx4_ib not loaded: its one Ethernet port down is the
    evidence, and it is idle."""
    connectx3(lab, None)
    verdict = HostUsage.read(lab.root).verdict(CX3)
    assert verdict.idle, verdict
