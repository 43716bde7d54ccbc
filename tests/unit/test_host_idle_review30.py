"""Issue 31, thirtieth adversarial read (host code, starting from what read 29's fixes added:
``refuse_other_journal``, ``network._netconsoles``, ``safety._module_nodes`` / ``_ports_off`` /
``_ports_unseen``, ``storage._legacy_gadgets`` / ``_gadget_luns`` / ``_target_devices``,
``runner._report_again``). What it found, one section below each (each test's docstring says
the host shape, why the harness calls it idle or safe, and what would be lost), on main at
59fa9eb:

1. (a) a lease is a host-wide fact, and read 29's fix makes binders take devices only under
   the host's journal, but the give-back side still reads any journal alone: `restore
   --journal OLD` (the very command the refusal's hint gives for "what an old journal
   lists") gives back an entry of the old journal without looking at the host's journal,
   where a live run holds the same group now; it unbinds vfio-pci under that run's lease.
2. (a) ``safety._ports_unseen`` counts a function's ports only for mlx4 (``mlx4_portN``);
   for any other driver that serves several ports from one function (cxgb4, nfp, mlxsw) one
   interface seen is enough, even when that interface's own ``dev_port`` says a lower port
   exists and no namespace read shows it (the NFS-held namespace of review 29b's finding 5).
3. (a) ``network._netconsoles`` reads netconsole's dynamic targets only at
   /sys/kernel/config: a built-in netconsole whose configfs is mounted elsewhere (any mount
   point works: `mount -t configfs none /config`) has its enabled targets unread, and no
   problem is raised (as storage does for nvmet/LIO whose configfs tree cannot be read).
4. (a) a storage target's device path under /dev is resolved by name only
   (``storage.block_name``, ``_exported_controller``); a path that names no disk of this
   host (a node in a container's own /dev, `--device /dev/sdb:/dev/lun0`, written to LIO's
   or nvmet's configfs from the container) resolves to nothing, and as it starts with /dev/
   the look that read 27a's fix gives every other path (``_outside_dev``: a path of another
   mount namespace is a problem) is skipped: the export vanishes with no problem, and the
   disk LIO's fileio (or nvmet) opened with no holder is proven idle.

Controls (pass on main): the same hosts without the use are still idle / given back.
"""

from __future__ import annotations

import os

import pytest

from harness.core.errors import HostDeviceError
from harness.host.binding import Journal, VfioBinder, restore_from_journal
from harness.host.safety import HostUsage

from . import fakesysfs
from .fakesysfs import FakeHost
from .test_host_idle_review29a import _refused_by_bind

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
PORT0, PORT1 = "0000:05:00.0", "0000:05:00.1"
BOTH = {PORT0, PORT1}
DEAD_PID = 999_999   # no /proc entry in the fake root: a run that died


def _verdict(host: FakeHost, bdf: str):
    return HostUsage.read(host.root).verdict(bdf)


@pytest.fixture
def journal(fake_root):
    """The host's journal (the default one, under the fake root)."""
    return fake_root / "var/lib/hotplug-harness/vfio-journal.json"


# -- 1. restore/release with another journal gives back under the host journal's lease ------------


def _old_journal_left_by_a_dead_run(lab: FakeHost, journal, old) -> None:
    """Group 12 moved to vfio-pci by a run (pre-upgrade: it used HH_VFIO_JOURNAL=``old``) that
    died: ``old`` lists both ports (driver ixgbe, a dead pid), the host's journal nothing, the
    ports stay on vfio-pci."""
    VfioBinder(lab.sysfs(), journal=journal).bind(PORT0, BOTH)  # (moves them, journals them)
    entries = [{**e, "pid": DEAD_PID, "pid_start": 1} for e in Journal(journal).read()]
    old.parent.mkdir(parents=True, mode=0o700)
    Journal(old).write(entries)
    Journal(journal).write([])
    assert lab.driver_of(PORT0) == lab.driver_of(PORT1) == "vfio-pci"


def test_1_restore_with_an_old_journal_leaves_a_group_a_live_run_holds(lab, journal, fake_root):
    """Host shape: before read 29's fix, a person ran their trials with
    ``HH_VFIO_JOURNAL=/root/hh/journal.json`` (a shell profile); one run died (OOM-killed)
    and left the 82599's two ports (group 12) on vfio-pci, listed in that old journal only.
    After the upgrade the nightly (the host's journal) binds 05:00.0: the ports are on
    vfio-pci and /dev/vfio/12 is open by no process, so it takes the group as a HOLD lease
    (nothing to move) in the host's journal, and its QEMU opens and closes the group test
    after test. The person, told by the new refusal ("give back what an old journal lists
    with `python -m harness restore --journal PATH`"), runs exactly that.

    Why it is given back: ``restore_from_journal`` reads and locks only the journal named
    (``jr.read()``, ``jr.locked()``); the old entry's pid is dead, so ``_held_elsewhere``
    says it is this restore's, and ``_restore_entry`` finds no process holding
    /dev/vfio/12 between two of the nightly's tests: it unbinds vfio-pci and binds ixgbe under
    the nightly's lease (the next test's QEMU fails "group not viable", or worse, ixgbe is
    probed while the nightly's guest is mid-hotplug). The same holds for an old SR-IOV entry:
    ``_live_users_of_vfs`` is given the old journal alone, so `restore --journal OLD` writes
    0 to the PF's ``sriov_numvfs`` under a VF the nightly relies on (journaled in the host's
    journal). ``refuse_other_journal`` guards the take side only ("release and restore read
    any journal"). Expected: a give-back under any journal also reads (and locks) the host's
    journal, and leaves a group or PF a lease there holds (``in-use``)."""
    old = fake_root / "root/hh/journal.json"
    _old_journal_left_by_a_dead_run(lab, journal, old)
    nightly = VfioBinder(lab.sysfs(), journal=journal)
    lease = nightly.bind(PORT0, BOTH)
    assert lease.moved == [] and any(e["kind"] == "hold" for e in Journal(journal).read())
    try:
        restore_from_journal(lab.sysfs(), old)
    except HostDeviceError:
        pass  # (refusing is fine too)
    assert lab.driver_of(PORT0) == lab.driver_of(PORT1) == "vfio-pci", (
        "restore --journal OLD gave group 12 back to its host driver under the nightly's "
        "lease in the host's journal")


def test_1_control_restore_with_an_old_journal_gives_back_what_nobody_holds(lab, journal,
                                                                            fake_root):
    """Control: with no lease in the host's journal, `restore --journal OLD` gives the
    dead run's group back to ixgbe and empties the old journal."""
    old = fake_root / "root/hh/journal.json"
    _old_journal_left_by_a_dead_run(lab, journal, old)
    results = restore_from_journal(lab.sysfs(), old)
    assert {r.status for r in results} == {"restored"}, results
    assert lab.driver_of(PORT0) == lab.driver_of(PORT1) == "ixgbe"
    assert Journal(old).read() == []


# -- 2. a port below a seen port's dev_port, for drivers other than mlx4 --------------------------


T5 = "0000:0c:00.4"   # Chelsio T520-CR (1425:5401): PF4 is the NIC function for both ports


def _t5(host: FakeHost, both_seen: bool) -> None:
    """A Chelsio T5 on cxgb4, one PCI function for its two ports; port 1 (enp12s0f4d1,
    ``dev_port`` 1) in the host's namespace, down; port 0 (enp12s0f4) seen only if
    ``both_seen``."""
    host.add_pci("0000:00:1c.6", "8086:a33e", 0x060400, "pcieport", 24)
    host.add_pci(T5, "1425:5401", 0x020000, "cxgb4", 25, parent="0000:00:1c.6")
    for name, port in (("enp12s0f4", 0), ("enp12s0f4d1", 1)):
        if port == 0 and not both_seen:
            continue
        host.add_net(name, T5)
        (host.sys / "class/net" / name / "dev_port").write_text(f"{port}\n")


def test_2_a_multi_port_function_whose_port_0_no_namespace_shows_is_in_use(lab):
    """Host shape: review 29b's finding 5 on a Chelsio T5 (cxgb4) instead of a ConnectX-3:
    the storage network lives in a named namespace (`ip link set enp12s0f4 netns storage`,
    port 0), /scratch is NFS-mounted through it (`nsenter --net=/run/netns/storage mount -t
    nfs4 ...`), and a clean-up script's `ip netns del storage` leaves the namespace alive,
    held by the NFS client alone, port 0 up in it carrying /scratch. Port 1, enp12s0f4d1
    (systemd's ``d1`` is its ``dev_port``), is down in the host's namespace: the spare.

    Why it is called idle: the fix for 29b/5 (``safety._ports_unseen``) counts the ports a
    function should show only for mlx4 (``mlx4_portN`` files); cxgb4 (like nfp and mlxsw:
    one function, several ports) has no such file, so ``wanted`` is empty and the one
    interface seen proves the function idle. Yet the interface seen says itself that a port
    is missing: ``dev_port`` numbers a function's ports from 0 (the sysfs-class-net ABI:
    "several independent ports on the same PCI function"), so dev_port 1 means a port 0 that
    no namespace read shows. Taking 0c:00.4 unbinds cxgb4, port 0 goes with it, and every
    process on /scratch hangs (a hard mount). Expected: a port number below the highest
    ``dev_port`` seen (here 0) with no interface in any namespace read leaves the function
    unproven, whatever the driver."""
    _t5(lab, both_seen=False)
    v = _verdict(lab, T5)
    assert not v.idle, f"{T5} judged idle with dev_port 0 unseen: {v.evidence}"
    _refused_by_bind(lab, T5, "nic")


def test_2_control_the_t5_with_both_ports_seen_and_down_is_idle(lab):
    """Control: both ports (dev_port 0 and 1) in the host's namespace, down, and the
    inventory's entry saying the function has 2 (``ports = 2``; review 31b, 3): idle."""
    _t5(lab, both_seen=True)
    v = HostUsage.read(lab.root, nic_ports={T5: 2}).verdict(T5)
    assert v.idle, v.uses


# -- 3. netconsole's dynamic targets on a configfs mounted elsewhere ------------------------------


def _built_in_netconsole(host: FakeHost, configfs: str) -> None:
    """netconsole built in (modules.builtin), one dynamic target ``lablog`` enabled on
    enp5s0f1, in a configfs mounted at ``configfs`` (a path under the root)."""
    host.file(f"lib/modules/{os.uname().release}/modules.builtin",
              "kernel/drivers/net/netconsole.ko\nkernel/fs/configfs/configfs.ko\n")
    host.file(f"{configfs}/netconsole/lablog/enabled", "1\n")
    host.file(f"{configfs}/netconsole/lablog/dev_name", "enp5s0f1\n")
    host.file(f"{configfs}/netconsole/lablog/remote_ip", "10.0.5.9\n")
    mounts = (host.root / "proc/mounts").read_text()
    host.proc("mounts", mounts + f"configfs /{configfs} configfs rw,relatime 0 0\n")


def test_3_a_netconsole_target_in_configfs_mounted_elsewhere_keeps_its_port(lab):
    """Host shape: a lab host with a custom kernel (netconsole built in, with
    CONFIG_NETCONSOLE_DYNAMIC) and no systemd mount unit for configfs; its logging script
    does what netconsole.rst shows, on the mount point its author picked: `mount -t configfs
    none /config; mkdir /config/netconsole/lablog; echo enp5s0f1 > .../dev_name; ...; echo 1
    > .../enabled`. The operator set enp5s0f1 down to offer 05:00.1 (netconsole keeps its
    target across a down; it logs again once the port is up).

    Why it is called idle: ``network._netconsoles`` globs only
    ``/sys/kernel/config/netconsole/*``; it is absent (configfs is mounted at /config), and
    for a built-in netconsole nothing is a problem unless /proc/cmdline cannot be read, so
    no target is found and the port is down with no address, route or socket. Taking 05:00.1
    unregisters enp5s0f1 and netconsole drops the target for good: the log host loses the
    lab host's oopses and panics. (Storage fails closed on the same shape: nvmet or LIO
    loaded with no readable /sys/kernel/config tree is a problem.) Expected: netconsole's
    targets are read in every configfs mount (/proc/mounts), or a built-in netconsole whose
    configfs tree cannot be read at /sys/kernel/config leaves every NIC unproven."""
    _built_in_netconsole(lab, "config")
    v = _verdict(lab, PORT1)
    assert not v.idle and any("netconsole" in u for u in v.uses), (
        f"{PORT1} judged idle while netconsole's target lablog is on enp5s0f1: {v.evidence}")


def test_3_control_the_same_target_at_sys_kernel_config_is_seen_and_port_0_stays_idle(lab):
    """Control: the same target with configfs at /sys/kernel/config is seen, and the other
    port is still idle."""
    _built_in_netconsole(lab, "sys/kernel/config")
    assert _verdict(lab, PORT1).uses == ("enp5s0f1 carries the kernel's netconsole",)
    assert _verdict(lab, PORT0).idle


# -- 4. a target's /dev path from another mount namespace --------------------------------------------


SATA = "0000:06:00.0"   # sdb, not mounted: idle on the lab host


def _lio_fileio_on(host: FakeHost, path: str) -> None:
    """LIO's fileio backstore lun0, enabled by a script through ``control`` (no udev_path
    label), on ``path`` as ``info`` shows it."""
    (host.sys / "module/target_core_mod").mkdir()
    (host.sys / "module/target_core_file").mkdir()
    lun = "sys/kernel/config/target/core/fileio_0/lun0"
    host.file(f"{lun}/udev_path", "")
    host.file(f"{lun}/info", "Status: ACTIVATED  Max Queue Depth: 128  SectorSize: 512  "
                             "HwMaxSectors: 16384\n        TCM FILEIO ID: 0        File: "
                             f"{path}  Size: 164696555520  Mode: O_DSYNC\n")
    host.file(f"{lun}/enable", "1\n")
    host.file(f"{lun}/control", "")


def test_4_a_disk_lio_opened_through_a_containers_dev_node_is_not_proven_idle(lab):
    """Host shape: the iSCSI target is run from a container (a containerised targetcli /
    ceph-iscsi / a storage CSI node plugin), given the spare disk as `--device
    /dev/sdb:/dev/lun0`: the runtime makes a block node ``/dev/lun0`` (8:16) in the
    container's own /dev, and the container's script writes ``fd_dev_name=/dev/lun0`` to
    the backstore's ``control`` and 1 to ``enable``. ``filp_open`` resolves the path in the
    writer's mount namespace at that moment and holds sdb (no claim, no holder, no process
    fd: ``fd_configure_device``); ``info`` says ``File: /dev/lun0``. The host's /dev has no
    lun0.

    Why it reads idle: ``storage._exported`` looks a path outside /dev up by its node
    (``_outside_dev``: "a path that cannot be looked up: another mount namespace's" is a
    problem, its docstring's very case ``/host/dev/sdb`` from a pod), but a path under /dev is
    resolved by name only: ``block_name`` finds no /sys/class/block/lun0,
    ``_exported_blocks`` no NVMe namespace ``lun0n*``, and ``_exported_controller`` returns
    ``["lun0"]`` (a name it never checked exists), which is no disk of any function. The
    export vanishes with no problem; sdb is "open by no process" and the SATA controller is
    proven idle (the same for an nvmet namespace's ``device_path``, also opened with no
    holder, written from a pod). Taking 06:00.0 pulls the disk from under the initiators that
    write to it. Expected: a target's device path under /dev that names no disk or NVMe
    controller of this host is looked at as any other path is (``_outside_dev``: a node it
    cannot look up, or one of no disk listed, is a problem)."""
    _lio_fileio_on(lab, "/dev/lun0")
    v = _verdict(lab, SATA)
    assert not v.idle, f"sdb, which LIO's fileio lun0 may have open as a container's " \
                       f"/dev/lun0, was judged idle: {v.evidence}"
    _refused_by_bind(lab, SATA, "sata-controller")


def test_4_control_lio_on_sdb_by_its_name_keeps_it_and_on_an_image_leaves_it_idle(lab):
    """Control: the same backstore on /dev/sdb is seen (sdb exported, not idle), and on an
    image file sdb is idle."""
    _lio_fileio_on(lab, "/dev/sdb")
    assert _verdict(lab, SATA).uses == ("sdb is exported by target_core_mod (fileio_0)",)
    lab.file("srv/luns/lun0.img", "")
    lab.file("sys/kernel/config/target/core/fileio_0/lun0/info",
             "Status: ACTIVATED        File: /srv/luns/lun0.img  Size: 0\n")
    v = _verdict(lab, SATA)
    assert v.idle, v.uses
