"""Issue 31, twenty-first adversarial read. What it found, one section below each:

1. any local user leaves every NIC on the host unproven (a false refusal they keep for as long
   as they like, one command, no privilege): the network read parses ``ip -j``'s output with
   ``json.loads`` (:func:`harness.host.network._read_namespace`), which is strict about control
   characters inside strings (``Invalid control character at ...``), and iproute2's JSON
   writer (``jsonw_puts``; iproute2 6.1 here, Debian 12's) escapes only ``"``, ``\\``,
   ``\\b``, ``\\f``, ``\\n``, ``\\r`` and ``\\t``: any other byte below 0x20 goes out raw.
   An interface name may hold such bytes (the kernel's ``dev_valid_name`` refuses only
   ``/``, ``:`` and white space), and so may its alias
   (``ip link set X alias ...``, up to 255 bytes). nobody makes a user and network namespace of
   their own (``unshare -Urn``) and names a veth there ``a\\x01b`` (or gives it such an alias);
   the read enters every namespace a process holds, ``ip -j -d link show`` there "cannot be
   read", and that namespace's problem goes into every NIC's verdict ("cannot tell whether
   0000:05:00.0's interfaces are in use: ..."): ``plan``, ``doctor`` and every NIC bind refuse.
   Where: network.py ``_read_namespace`` (``json.loads(...)``, no ``strict=False``); the
   seventeenth read's ninth fix (``surrogateescape``) covers bytes that are not UTF-8, not
   these. Who: any local user (user namespaces on: Debian, Ubuntu, Fedora defaults). Likely:
   by intent; bad: no NIC can be taken while it lasts, and the refusal points at the user's
   namespace only as "pid N", with a JSON parser's error for a reason.

2. a storage controller (or a NIC) whose driver is reached through a node that is *not* below
   the function reads idle while a process drives it through that node: the SAS and RAID
   drivers' management nodes are global (``/dev/mpt3ctl``, a misc device under
   ``/sys/devices/virtual/misc``; ``/dev/megaraid_sas_ioctl_node``, a bare character major
   with no sysfs device at all, which ``storcli`` makes itself from /proc/devices), and pick the
   controller by a number in each ioctl; Mellanox's MFT reaches a NIC's configuration space
   through ``/dev/mst/mt4119_pciconf0`` (the ``mst_pciconf`` module's node). The rule looks only
   at nodes below the function (:class:`harness.host.safety._Subtree`: ``char_nodes``), its
   sysfs/procfs BAR and config files and /dev/mem (:meth:`HostUsage._bars`), so a process
   holding one of these nodes is no use of anything. What holds them: ``sas3flash`` /
   ``storcli download`` writing the controller's firmware, ``mstflint``/``flint`` burning a
   NIC's, a RAID monitor (LSI MSM, Dell OMSA, ``megaclisas-status`` in a loop) polling it.
   Unbinding the controller under a firmware download can leave the card unbootable. Who: root
   tools (not another user); likely: low to medium on server lab hosts with SAS HBAs or RAID
   controllers (class 0x0107 and 0x0104 are roles the harness takes); bad: the worst kind, a
   device in use taken with nothing said.

3. on a host where ``kcmp`` cannot be asked, every device is unproven: whether a thread shares
   its process's table of open files is told only by ``kcmp(KCMP_FILES)``
   (:func:`harness.host.storage._same_files`), whose number is taken from a table of five
   machines (``_KCMP``: x86_64, aarch64, riscv64, ppc64/ppc64le, s390x); elsewhere
   (``platform.machine()`` ``loongarch64``, whose kcmp is asm-generic's 272 as on arm64 and
   riscv64; ``armv7l``, ``i686``) and on a kernel built without it (``CONFIG_KCMP`` off: no
   ``CHECKPOINT_RESTORE`` and no DRM to select it; ENOSYS) every thread counts as one "with an
   fd table of its own", and any process with more than
   :data:`~harness.host.storage.MAX_OWN_TABLES` (8) threads (a QEMU, containerd, a JVM,
   polkitd...) is "pid N has 12 threads with fd tables of their own (unshare(CLONE_FILES));
   only 8 were read": a storage problem, which goes into every verdict (``_driver``). No
   intent is needed; the problem names the wrong cause. Likely: low (such hosts and kernels
   are rare among lab hosts, though a lab host may run a kernel under test); bad: nothing can
   be taken there, and ``doctor``/``plan`` say why wrongly.

4. a USB disk that an automount point may hold is taken, with its controller or through
   usb-host: the storage rule's "a filesystem whose disk cannot be told" (an autofs mount:
   fstab's ``x-systemd.automount``, an autofs map; ZFS loaded; a mount that resolves to no
   block device) refuses only functions of class 0x01 (:meth:`HostUsage._storage`:
   ``dev.class_code >> 16 == 0x01``), and :meth:`HostUsage.usb_verdict` passes no function at
   all. A USB controller with a disk on it, and the USB disk itself, read idle while
   ``/backup`` waits to mount it on the next access (the nightly backup, a user's ``cd``):
   the mount then fails, or, once the guest gives the device back, mounts what the guest left.
   The fifth read's fourth finding made this rule for SATA/NVMe controllers; USB storage,
   which is where automount points are most often used (a backup disk, ``noauto`` media),
   was left out. Who: any host with such an fstab line or autofs map; likely: medium on
   hosts with USB backup disks; bad: a disk the host is set up to use taken, nothing said.

5. every NIC is unproven on an Ubuntu host where more than eight snaps have run since boot:
   snap-confine keeps each snap's mount namespace bound at ``/run/snapd/ns/<snap>.mnt`` (an
   nsfs file in a private bind mount of the folder) after the snap's processes end, to reuse
   it; the network read visits every mount namespace no process is in
   (:meth:`harness.host.nsholders.MountVisits.visit`), and the seventeenth read's seventh fix
   bounds the visits at :data:`~harness.host.nsholders.MAX_VISITS` (8) with a problem past
   it ("more than 8 mount namespaces no process is in ... not visited"), which goes into
   every NIC's verdict. The bound is right against another user's thousands; a host's own
   snapd reaches it with no intent (a desktop's firefox, thunderbird, snap-store,
   snapd-desktop-integration, firmware-updater, cups...; a server's lxd, microk8s, kubectl,
   helm, certbot, aws-cli...), and the refusal stays until reboot or ``snap-discard-ns``.
   The twentieth read's docstring saw snapd's namespaces visited; none tested their count.
   Likely: medium on Ubuntu lab hosts that use snaps; bad: no NIC can be taken there (a false
   refusal), and the problem says nothing of snapd.

Case 1: a real user and network namespace of nobody's with a veth pair in it, one end named
(or aliased) with a control character; the whole host's network read as root (the control: a
plain name, no problem of that namespace). Case 2: the fake lab host with an idle SAS HBA, a
RAID controller and a ConnectX NIC added, and a process holding the driver's management node
(the control: no such process, idle: the evidence is there, only the holder is missed). Case
3: a real process of nobody's with twelve threads sharing one table (the nineteenth read's
helper), read with ``_KCMP`` as on loongarch64 (None) and as a kernel without kcmp answers
(ENOSYS); the control: this host's kcmp, no problem. Case 4: the fake lab host, a USB disk
(usb-storage) on its free xHCI and an autofs mount (the fifth read's line); the control: no
automount, idle. Case 5: twelve mount namespaces bound as snap-confine binds them (a private
bind mount of a folder in /run, no process in any), made and removed by the test as root; the
control: eight. Each fails on the code as it is (c9eb2ed): 1 says "`ip -j -d link show` in
network namespace pid N cannot be read: Invalid control character", 2 and 4 read the device
idle, 3 says "pid N has 12 threads with fd tables of their own", 5 says "more than 8 mount
namespaces no process is in"; the controls pass. No guest is booted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.host import nsholders, storage
from harness.host.network import NetView
from harness.host.safety import HostUsage
from harness.host.sysfs import Sysfs

from . import fakesysfs, test_host_idle_review19
from .test_host_idle_review5 import AUTOMOUNT
from .test_host_idle_review17 import NOBODY_RUN
from .test_paths import as_root

#: Cases 1, 3 and 5 make real namespaces and processes and read the whole host.
pytestmark = pytest.mark.xdist_group("real-host-namespaces")
fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures


# -- 1. a control character in an interface's name or alias, in nobody's namespace -------------

#: What nobody's shell does in a user and network namespace of theirs before it waits: a veth
#: pair, one end named with ``\x01`` (or aliased with ``\x02``, or named plainly).
NAMER = {
    "name": "ip link add \"$(printf 'a\\001b')\" type veth peer name hh21p",
    "alias": "ip link add hh21a type veth peer name hh21p && "
             "ip link set hh21a alias \"$(printf 'x\\002y')\"",
    "plain": "ip link add hh21a type veth peer name hh21p",
}


def _nobodys_namespace_problems(how: str) -> list[str]:
    """The network read's problems that name nobody's namespace, made ``how``."""
    child = subprocess.Popen(
        NOBODY_RUN + ["unshare", "--user", "--map-root-user", "--net", "sh", "-c",
                      NAMER[how] + " && echo ready && exec sleep 120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if child.stdout.readline().strip() != "ready":
            pytest.skip(f"nobody cannot make a network namespace here: {child.stderr.read()}")
        view = NetView.read(Sysfs("/"))
        return [p for p in view.problems if f"pid {child.pid}" in p]
    finally:
        child.kill()
        child.wait()


@as_root
@pytest.mark.parametrize("how", ["name", "alias"])
def test_1_a_control_character_in_a_users_interface_leaves_the_nics_provable(how):
    assert _nobodys_namespace_problems(how) == []


@as_root
def test_1_control_a_plainly_named_interface_of_nobodys_is_read():
    assert _nobodys_namespace_problems("plain") == []


# -- 2. a controller driven through its driver's node, which is not below it -------------------

#: (function, ids, class, driver, the node a management or flashing tool holds, its command)
MANAGED = {
    "sas": ("0000:08:00.0", "1000:0097", 0x010700, "mpt3sas", "/dev/mpt3ctl", "sas3flash"),
    "raid": ("0000:09:00.0", "1000:10e2", 0x010400, "megaraid_sas",
             "/dev/megaraid_sas_ioctl_node", "storcli64"),
    "nic": ("0000:0a:00.0", "15b3:1017", 0x020000, "mlx5_core", "/dev/mst/mt4119_pciconf0",
            "mstflint"),
}


def _managed(host, what: str, held: bool) -> str:
    """``what``'s function added to the lab host, idle (a disk below a storage controller,
    not mounted; a NIC's port down), and, if ``held``, a process holding its driver's node."""
    bdf, ids, cls, driver, node, comm = MANAGED[what]
    host.add_pci(bdf, ids, cls, driver, 40 + len(what))
    if cls >> 16 == 0x01:
        host.add_disk("sdx", host.dev_dir(bdf) / "host9/target9:0:0/9:0:0:0", ("sdx1",))
    else:
        host.add_net("enp10s0f0np0", bdf)
    if what == "sas":  # (a misc device: /sys/class/misc/mpt3ctl, 10:222, below no function)
        host.file("sys/devices/virtual/misc/mpt3ctl/dev", "10:222\n")
    if held:
        host.proc("5421/comm", comm + "\n")
        (host.root / "proc/5421/fd").mkdir(parents=True)
        os.symlink(node, host.root / "proc/5421/fd/3")
    return bdf


@pytest.mark.parametrize("what", sorted(MANAGED))
def test_2_a_controller_driven_through_its_drivers_node_is_in_use(lab, what):
    bdf = _managed(lab, what, held=True)
    verdict = HostUsage.read(lab.root).verdict(bdf)
    assert not verdict.idle, f"{bdf} reads idle: {verdict.evidence}"


@pytest.mark.parametrize("what", sorted(MANAGED))
def test_2_control_the_same_controller_with_no_tool_holding_it_is_idle(lab, what):
    bdf = _managed(lab, what, held=False)
    verdict = HostUsage.read(lab.root).verdict(bdf)
    assert verdict.idle, verdict.uses


# -- 3. a host where kcmp cannot be asked ----------------------------------------------------------

#: ``None``: an architecture the table does not name (``platform.machine()`` of loongarch64,
#: whose kcmp is asm-generic's 272, or of 32-bit armv7l and i686); 1023: a number no kernel
#: has, as kcmp is on a kernel built without it (ENOSYS).
@as_root
@pytest.mark.parametrize("number", [None, 1023], ids=["arch-not-in-table", "ENOSYS"])
def test_3_threads_that_share_one_table_where_kcmp_cannot_be_asked(monkeypatch, number):
    monkeypatch.setattr(storage, "_KCMP", number)
    test_host_idle_review19.test_4_threads_of_a_process_whose_main_thread_ended_share_one_table(
        "lives")


@as_root
def test_3_control_where_kcmp_is_known_they_are_read_once():
    test_host_idle_review19.test_4_threads_of_a_process_whose_main_thread_ended_share_one_table(
        "lives")


# -- 4. an automount point and a USB disk ----------------------------------------------------------

XHCI = "0000:07:00.0"  # (the lab's free uPD720202: USB bus 4)


def _usb_disk(host, automount: bool) -> None:
    """A USB disk on bus 4, not mounted; with ``automount``, fstab's ``x-systemd.automount``
    point (/data) that nothing has opened yet."""
    stick = host.add_usb("4-1", 2, "0bc2:2038", "Expansion", "Seagate",
                         iface_driver="usb-storage")
    host.add_disk("sdd", stick / "host7/target7:0:0/7:0:0:0", ("sdd1",))
    if automount:
        mountinfo = host.root / "proc/self/mountinfo"
        mountinfo.write_text(mountinfo.read_text() + AUTOMOUNT)


@pytest.mark.parametrize("automount", [True, False], ids=["automount", "control-none"])
def test_4_a_usb_controller_with_a_disk_an_automount_may_hold(lab, automount):
    _usb_disk(lab, automount)
    verdict = HostUsage.read(lab.root).verdict(XHCI)
    assert verdict.idle is not automount, verdict


def test_4_a_usb_disk_an_automount_may_hold_is_not_handed_to_usb_host(lab):
    _usb_disk(lab, automount=True)
    usage = HostUsage.read(lab.root)
    disk = next(u for u in lab.sysfs().usb_devices() if u.name == "4-1")
    assert not usage.usb_verdict(disk).idle


# -- 5. snapd's mount namespaces, one a snap -------------------------------------------------------

#: Where this test keeps mount namespaces as snapd keeps them in /run/snapd/ns (a private bind
#: mount of the folder, one nsfs file a snap: ``<snap>.mnt``).
SNAP_NS = Path("/run/hh-review21-snapd-ns")


@pytest.fixture
def snap_namespaces(request):
    """``request.param`` mount namespaces no process is in, bound as snap-confine binds them."""
    SNAP_NS.mkdir()
    try:
        subprocess.run(["mount", "--bind", SNAP_NS, SNAP_NS], check=True)
        subprocess.run(["mount", "--make-private", SNAP_NS], check=True)
        for n in range(request.param):
            (SNAP_NS / f"snap{n}.mnt").touch()
            subprocess.run(["unshare", f"--mount={SNAP_NS}/snap{n}.mnt", "true"], check=True)
        yield request.param
    finally:
        # (lazily: another reader of the host's namespaces, a run's host read on another
        # worker, may hold one open right now, and a plain umount then fails with EBUSY and
        # leaves the folder for the next test's mkdir: a fresh clone's make test, Dec 6)
        for bound in sorted(SNAP_NS.glob("*.mnt")):
            subprocess.run(["umount", "--lazy", bound], check=False)
        subprocess.run(["umount", "--lazy", SNAP_NS], check=False)
        shutil.rmtree(SNAP_NS)


@as_root
@pytest.mark.parametrize("snap_namespaces", [12, 8], ids=["twelve-snaps", "control-eight"],
                         indirect=True)
def test_5_the_mount_namespaces_snapd_keeps_leave_the_nics_provable(snap_namespaces):
    view = NetView.read(Sysfs("/"))
    assert not [p for p in view.problems if "mount namespaces no process is in" in p]


@as_root
@pytest.mark.parametrize("snap_namespaces", [nsholders.MAX_VISITS + 1], ids=["past-the-bound"],
                         indirect=True)
def test_5_past_the_bound_they_are_a_problem_that_says_what_it_saw(snap_namespaces):
    """Another user's thousands still cost a bounded read, and fail closed."""
    view = NetView.read(Sysfs("/"))
    assert [p for p in view.problems if f"more than {nsholders.MAX_VISITS} mount namespaces "
            "no process is in" in p and str(SNAP_NS) in p], view.problems
