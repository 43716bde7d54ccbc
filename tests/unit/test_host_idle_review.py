"""Issue 31, a later adversarial read of the proven-idle rule: holes each closed fail-closed,
each test failing on the code before its fix. Fake sysfs, fake `ip -j` output and real files
(tests/unit/fakesysfs.py)."""

import ctypes
import json
import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from harness.core.errors import HostDeviceError
from harness.core.waits import wait_until
from harness.host.binding import VfioBinder
from harness.host import network, storage
from harness.host.safety import HostUsage, plan_group
from harness.host.sysfs import Sysfs

from . import fakesysfs
from . import test_host_proven_idle as proven_idle
from .fakesysfs import FakeHost

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
PORT0, PORT1 = "0000:05:00.0", "0000:05:00.1"
SATA = "0000:06:00.0"     # sdb, not mounted: idle on the lab host
XHCI = "0000:07:00.0"     # USB bus 4, nothing on it


uses, refused = proven_idle.uses, proven_idle.refused  # (a device's uses; a bind refused before any write)


def unreadable(path) -> None:
    """A file that exists but cannot be read (as root, a mode would not stop the read)."""
    path.unlink()
    path.mkdir()


# -- 4. evidence that cannot be read is no evidence ---------------------------------------------


@pytest.mark.parametrize("name", ["swaps", "consoles", "self/mountinfo"])
def test_an_unreadable_proc_file_leaves_every_device_unproven(lab, name):
    """An unreadable /proc/swaps, /proc/consoles or /proc/self/mountinfo read as empty: the
    disks' use (swap, mounts) and the console's nodes went unseen. Now the device is refused,
    naming the file."""
    assert uses(lab, SATA) == ()
    unreadable(lab.root / "proc" / name)
    assert any(f"/proc/{name} cannot be read" in u for u in uses(lab, SATA)), uses(lab, SATA)
    assert f"/proc/{name} cannot be read" in refused(lab, SATA, {SATA})


def test_an_unreadable_mountinfo_of_another_mount_namespace_is_not_an_empty_one(lab):
    (lab.root / "proc/77/ns").mkdir(parents=True)
    os.symlink("mnt:[4026532400]", lab.root / "proc/77/ns/mnt")
    lab.proc("77/mountinfo", "40 30 8:17 / /data rw - ext4 /dev/sdb1 rw\n")
    unreadable(lab.root / "proc/77/mountinfo")
    assert "cannot tell whether 0000:06:00.0 is in use: /proc/77/mountinfo cannot be read: " \
           "what is mounted there is unknown" in uses(lab, SATA)


def test_an_unreadable_input_device_list_keeps_a_controller_with_input_devices(lab):
    """/proc/bus/input/devices says which keyboard feeds the console: unread, a controller
    with an input device below it is unproven (one without any is not concerned)."""
    (lab.dev_dir(XHCI) / "usb4/4-1/4-1:1.0/0003:046D:C31C.0001/input/input4").mkdir(
        parents=True)
    lab.proc("bus/input/devices", "")
    assert uses(lab, XHCI) == ()
    unreadable(lab.root / "proc/bus/input/devices")
    assert uses(lab, XHCI) == (
        "0000:07:00.0: cannot tell whether the input device(s) input4 below it feed the "
        "console: /proc/bus/input/devices cannot be read",)
    assert uses(lab, PORT0) == ()


def test_an_unreadable_iommu_group_is_not_a_group_of_the_device_alone(lab):
    """`iommu_group_members(...) or [bdf]`: a group whose member list could not be read was
    taken as the device alone, so its unlisted companion 05:00.1 (moved to vfio-pci with it by
    the kernel's rule) was never looked at."""
    devices = lab.sys / "kernel/iommu_groups/12/devices"
    shutil.rmtree(devices)
    devices.write_text("")  # listing it fails (not a directory)
    plan = plan_group(lab.root, PORT0, HostUsage.read(lab.root), allowed={PORT0})
    assert not plan.safe
    assert any("the members of IOMMU group 12 cannot be read" in p and str(devices) in p
               for p in plan.problems), plan.problems
    assert "the members of IOMMU group 12 cannot be read" in refused(lab, PORT0, {PORT0})


def test_a_device_missing_from_its_groups_member_list_is_refused(lab):
    (lab.sys / "kernel/iommu_groups/12/devices" / PORT0).unlink()
    plan = plan_group(lab.root, PORT0, HostUsage.read(lab.root), allowed={PORT0, PORT1})
    assert f"{PORT0} is not among the members sysfs lists for IOMMU group 12: the group " \
           "cannot be told" in plan.problems


# -- 8. one notion of "the real host" -----------------------------------------------------------


@pytest.mark.parametrize("spelling", ["/", "//", "/./", "/proc/..", "a link to /"])
def test_every_spelling_of_the_real_root_is_the_real_host(spelling, tmp_path):
    """`fs.root == Path("/")` chose the fake tools: `--root //` (pathlib keeps the two
    slashes) or `/proc/..` read the host as a test's fake tree, whose stand-in files are
    missing, or planted. The root is resolved once and one property decides."""
    if spelling == "a link to /":
        os.symlink("/", tmp_path / "root")
        spelling = str(tmp_path / "root")
    fs = Sysfs(spelling)
    assert fs.real_host and fs.root == Path("/")
    # the host's own tool runs; no stand-in under the root is looked for
    assert network._run(fs, ["echo", "from the real tool"], fs.path("ip", "link.json")) == \
        "from the real tool\n"


def test_a_fake_root_is_not_the_real_host(lab):
    fs = Sysfs(str(lab.root) + "/./")
    assert not fs.real_host and fs.root == lab.root
    assert network._run(fs, ["false"], fs.path("ip", "link.json")).startswith("[")


# -- 7. the evidence is read again under the journal lock ---------------------------------------


class _ChangesWhileWaiting:
    """A journal lock whose wait lets the host change (another run, an operator): ``change``
    runs as the lock is taken, after the binder's first reading of the evidence."""

    def __init__(self, journal, change):
        self.journal, self.change = journal, change

    def locked(self):
        self.change()
        return self.journal.locked()

    def __getattr__(self, name):
        return getattr(self.journal, name)


def _bind_while(host: FakeHost, change) -> str:
    journal = host.root / "var/lib/hotplug-harness/vfio-journal.json"
    binder = VfioBinder(host.sysfs(), journal=journal)
    binder.journal = _ChangesWhileWaiting(binder.journal, change)
    with pytest.raises(HostDeviceError) as e:
        binder.bind(PORT0, {PORT0, PORT1})
    assert host.writes == [] and not journal.exists()
    return e.value.message


def test_an_interface_brought_up_while_the_bind_waits_for_the_lock_is_seen(lab):
    """The verdict was read before the journal lock was taken, and the devices moved after it:
    an interface brought up (and addressed) meanwhile went to vfio-pci."""
    def bring_up():
        lab.network(links=[fakesysfs.link(1, "lo", up=True),
                           fakesysfs.link(3, "enp5s0f0", PORT0, up=True),
                           fakesysfs.link(4, "enp5s0f1", PORT1)],
                    addrs={"enp5s0f0": ["10.0.5.1/24"]})
    assert "while it waited for the vfio journal lock, enp5s0f0 is up with the address " \
           "10.0.5.1/24" in _bind_while(lab, bring_up)


def test_a_group_member_rebound_while_the_bind_waits_for_the_lock_is_refused(lab):
    """The plan moves each member from the driver it had: one rebound meanwhile (to a driver
    the first reading did not judge) is not moved on the old plan."""
    def rebind():
        lab.add_driver("igb", ["8086:10fb"])
        lab.kernel(lab.sys / "bus/pci/drivers/ixgbe/unbind", PORT1)
        lab.kernel(lab.sys / "bus/pci/drivers/igb/bind", PORT1)
        lab.writes.clear()
    message = _bind_while(lab, rebind)
    assert "its IOMMU group 12 changed while it waited for the vfio journal lock" in message
    assert "0000:05:00.1 (moves from igb)" in message


# -- 6. a vfio group held through a node of another path ----------------------------------------


def hold_by_number(host: FakeHost, pid: int, comm: str, major: int, minor: int,
                   node: Path) -> None:
    """Process ``pid`` holds a character device node of MAJ:MIN at ``node`` (a container's
    /dev, as the host sees it: not under /dev): a real node, matched by number only."""
    node.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(major, minor))
    except PermissionError:
        pytest.skip("making a device node needs CAP_MKNOD (run the unit tests as root)")
    host.proc(f"{pid}/comm", f"{comm}\n")
    (host.root / f"proc/{pid}/fd").mkdir(parents=True, exist_ok=True)
    os.symlink(node, host.root / f"proc/{pid}/fd/9")


def test_a_vfio_group_held_through_a_containers_node_is_in_use(lab, tmp_path):
    """Group users were matched by the path /dev/vfio/N only: a QEMU in a container holding
    the same group through its own /dev/vfio/12 was not seen, so the group was judged free
    (and given back under it). Now by device number."""
    journal = lab.root / "var/lib/hotplug-harness/vfio-journal.json"
    binder = VfioBinder(lab.sysfs(), journal=journal)
    lease = binder.bind(PORT0, {PORT0, PORT1})
    hold_by_number(lab, 5150, "qemu-system-x86", fakesysfs.VFIO_MAJOR, 12,
                   tmp_path / "var/lib/containers/ctr1/rootfs/dev/vfio/12")
    assert "0000:05:00.0 is on vfio-pci and /dev/vfio/12 is open by pid 5150 " \
           "(qemu-system-x86)" in uses(lab, PORT0)
    with pytest.raises(HostDeviceError) as e:
        lease.release()
    assert "/dev/vfio/12 is still open by pid 5150 (qemu-system-x86)" in e.value.details
    assert lab.driver_of(PORT0) == "vfio-pci"


def test_a_vfio_group_whose_device_number_cannot_be_read_is_unproven(lab):
    journal = lab.root / "var/lib/hotplug-harness/vfio-journal.json"
    VfioBinder(lab.sysfs(), journal=journal).bind(PORT0, {PORT0, PORT1})
    (lab.sys / "class/vfio/12/dev").unlink()
    assert any("the device number of /dev/vfio/12 cannot be read" in u
               for u in uses(lab, PORT0)), uses(lab, PORT0)


# -- 3. NVMe character devices --------------------------------------------------------------------

NVME = "0000:09:00.0"


def nvme_multipath(host: FakeHost) -> None:
    """An idle NVMe controller with native multipath: its controller node nvme0 (242:0) below
    the PCI function, its namespace's disk nvme0n1 and generic node ng0n1 (238:0) under
    /sys/devices/virtual/nvme-subsystem."""
    host.add_pci(NVME, "144d:a808", 0x010802, "nvme", 21)
    ctrl = host.dev_dir(NVME) / "nvme/nvme0"
    (ctrl / "nvme0c0n1").mkdir(parents=True)
    (ctrl / "dev").write_text("242:0\n")
    subsys = host.sys / "devices/virtual/nvme-subsystem/nvme-subsys0"
    (subsys / "nvme0n1").mkdir(parents=True)
    (subsys / "nvme0n1/dev").write_text("259:0\n")
    (subsys / "ng0n1").mkdir()
    (subsys / "ng0n1/dev").write_text("238:0\n")
    (subsys / "ng0n1/uevent").write_text("MAJOR=238\nMINOR=0\nDEVNAME=ng0n1\n")
    os.symlink(ctrl, subsys / "nvme0")
    os.symlink(subsys / "nvme0n1", host.sys / "class/block/nvme0n1")


def test_an_nvme_multipath_heads_generic_char_device_held_open_is_in_use(lab):
    """/dev/ng0n1 (NVMe passthrough, io_uring) of a multipath namespace lives under the
    subsystem, not below the controller: only its block device was looked at."""
    nvme_multipath(lab)
    assert uses(lab, NVME) == ()
    lab.proc("6060/comm", "fio\n")
    (lab.root / "proc/6060/fd").mkdir()
    os.symlink("/dev/ng0n1", lab.root / "proc/6060/fd/4")
    assert uses(lab, NVME) == ("/dev/ng0n1 (below 0000:09:00.0) is open by pid 6060 (fio)",)
    assert "/dev/ng0n1 (below 0000:09:00.0) is open by pid 6060 (fio)" in \
        refused(lab, NVME, {NVME})


@pytest.mark.parametrize("node, majmin", [("nvme0", (242, 0)), ("ng0n1", (238, 0))])
def test_an_nvme_char_device_held_through_another_path_is_in_use(lab, node, majmin, tmp_path):
    """By device number, not by path: a container's /dev/nvme0 or /dev/ng0n1 is the same
    controller."""
    nvme_multipath(lab)
    hold_by_number(lab, 6061, "nvme", *majmin, tmp_path / f"ctr/rootfs/dev/{node}")
    assert uses(lab, NVME) == (f"/dev/{node} (below 0000:09:00.0) is open by pid 6061 (nvme)",)


# -- 2. every network namespace anything holds --------------------------------------------------

HOST_NS = 4026531840


def in_namespace(host: FakeHost, pid: int, inode: int, where: str = "ns/net") -> None:
    link_path = host.root / f"proc/{pid}/{where}"
    link_path.parent.mkdir(parents=True, exist_ok=True)
    if link_path.is_symlink():  # (the fake host's own: the host's namespace)
        link_path.unlink()
    os.symlink(f"net:[{inode}]", link_path)


def host_namespace(host: FakeHost) -> None:
    """The harness and init in the host's namespace (the fake starts with none: not looked
    for)."""
    in_namespace(host, "self", HOST_NS)
    in_namespace(host, 1, HOST_NS)


def entered_through_a_file(host: FakeHost, inode: int, up_port: str = PORT1) -> None:
    """What `nsenter --net=PATH ip ...` prints in namespace ``inode``: the host's 05:00.1 is up
    there with an address."""
    where = f"ip/nsfs/{inode}"
    host.file(f"{where}/link.json", json.dumps(
        [fakesysfs.link(1, "lo", up=True), fakesysfs.link(7, "p1", up_port, up=True)]))
    host.file(f"{where}/addr.json", json.dumps(
        [{"ifindex": 7, "ifname": "p1", "addr_info": [{"local": "10.7.0.1", "prefixlen": 24}]}]))
    for what in ("route", "route6"):
        host.file(f"{where}/{what}.json", "[]")
    host.file(f"{where}/ss.txt", "")
    host.file(f"{where}/tc-qdisc.json", "[]")  # (`tc -j qdisc show`: nothing configured)
    host.file(f"{where}/packet.txt", "sk RefCnt Type Proto Iface R Rmem User Inode\n")


def test_a_namespace_only_a_thread_lives_in_is_read(lab):
    """(a) `unshare(CLONE_NEWNET)` in one thread: /proc/PID/ns/net is the host's, only
    /proc/PID/task/TID/ns/net shows the other namespace."""
    host_namespace(lab)
    in_namespace(lab, 3000, HOST_NS)
    in_namespace(lab, 3000, HOST_NS, "task/3000/ns/net")
    in_namespace(lab, 3000, 4026532600, "task/3001/ns/net")
    entered_through_a_file(lab, 4026532600)
    assert "p1 (netns thread 3001 of pid 3000) is up with the address 10.7.0.1/24" in \
        uses(lab, PORT1)


def test_a_namespace_held_only_by_an_open_fd_is_read(lab):
    """(c) a process that left a namespace but keeps an fd of it open (`net:[N]`)."""
    host_namespace(lab)
    in_namespace(lab, 3100, HOST_NS)
    in_namespace(lab, 3100, 4026532700, "fd/5")
    entered_through_a_file(lab, 4026532700)
    assert "p1 (netns fd 5 of pid 3100) is up with the address 10.7.0.1/24" in uses(lab, PORT1)


@pytest.mark.parametrize("mount_namespace", ["the harness's", "another"])
def test_a_namespace_bind_mounted_outside_var_run_netns_is_read(lab, mount_namespace):
    """(b) an nsfs bind mount anywhere (a container runtime's /run/docker/netns/...), in the
    harness's own mount namespace or only in another one."""
    host_namespace(lab)
    line = "300 25 0:4 net:[4026532800] /run/docker/netns/ab\\040c rw - nsfs nsfs rw\n"
    if mount_namespace == "another":
        in_namespace(lab, 3200, HOST_NS)
        os.symlink("mnt:[4026532900]", lab.root / "proc/3200/ns/mnt")
        lab.proc("3200/mountinfo", line)
    else:
        lab.proc("self/mountinfo", line)
    entered_through_a_file(lab, 4026532800)
    assert "p1 (netns nsfs mount /run/docker/netns/ab c) is up with the address 10.7.0.1/24" \
        in uses(lab, PORT1)


def test_a_namespace_seen_but_not_entered_leaves_every_nic_unproven(lab):
    host_namespace(lab)
    in_namespace(lab, 3100, HOST_NS)
    in_namespace(lab, 3100, 4026532700, "fd/5")   # no `ip` output for it: it cannot be entered
    why = uses(lab, PORT0)
    assert any("`ip -j -d link show` in network namespace fd 5 of pid 3100 cannot be read" in u
               for u in why), why
    assert "network namespace fd 5 of pid 3100 cannot be read" in refused(lab, PORT0, {PORT0,
                                                                                      PORT1})


@pytest.mark.parametrize("options", ["rw,nosuid,nodev", "rw"])
def test_a_file_on_a_network_filesystem_is_never_stat_ed_unbounded(lab, monkeypatch, options):
    """Matching by number stats every fd's file; a stat of a file on a dead NFS server blocks
    for as long as the server is gone (why `lsof -b` exists). Files on network and FUSE mounts
    (their mount id in fdinfo) mounted ``nodev`` are matched by path only: a node there is no
    device; on one that allows devices (the twenty-fourth read's second), each gets the
    bounded lookup of a file on a detached mount."""
    lab.proc("self/mountinfo", f"99 25 0:77 / /home {options} - nfs4 srv:/home rw\n")
    lab.proc("7070/comm", "vim\n")
    (lab.root / "proc/7070/fd").mkdir()
    (lab.root / "home").mkdir()
    (lab.root / "home/notes.txt").write_text("")
    os.symlink(lab.root / "home/notes.txt", lab.root / "proc/7070/fd/3")
    os.symlink(lab.root / "proc/cmdline", lab.root / "proc/7070/fd/4")  # a local file: stat'ed
    lab.proc("7070/fdinfo/3", "pos:\t0\nflags:\t0100002\nmnt_id:\t99\nino:\t1234\n")
    lab.proc("7070/fdinfo/4", "pos:\t0\nflags:\t0100000\nmnt_id:\t25\nino:\t1235\n")
    stated, bounded = [], []
    real_stat, real_bounded = storage.node_type, storage.Lookups.within
    monkeypatch.setattr(storage, "node_type", lambda p: stated.append(str(p)) or real_stat(p))
    monkeypatch.setattr(storage.Lookups, "within", lambda self, look, what: bounded.append(
        what) or real_bounded(self, look, what))
    assert uses(lab, SATA) == ()
    assert str(lab.root / "proc/7070/fd/4") in stated
    assert (str(lab.root / "proc/7070/fd/3") in stated) is ("nodev" not in options)
    assert ("the files open on network and FUSE mounts" in bounded) is ("nodev" not in options)


def test_a_bind_mounted_namespace_that_cannot_be_entered_is_never_taken_for_gone(lab):
    """Its path (through /proc/PID/root of the process it was seen in) may be gone with that
    process while the mount lives on in its mount namespace: unread is unproven, not gone."""
    host_namespace(lab)
    lab.proc("self/mountinfo", "300 25 0:4 net:[4026532800] /run/netns-elsewhere/x rw - "
                               "nsfs nsfs rw\n")
    assert any("network namespace nsfs mount /run/netns-elsewhere/x cannot be read" in u
               for u in uses(lab, PORT0)), uses(lab, PORT0)


# -- 2, on this host: real namespaces, entered with the real nsenter -------------------------------


def _held_namespaces() -> dict:
    """The network namespaces NetView finds on this host, by name."""
    return network.NetView.read(Sysfs("/")).namespaces


@pytest.fixture
def lone_namespace():
    """A new network namespace (``unshare -n``), and the process that keeps it until the test
    holds it some other way; then that process ends."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("util-linux's unshare and nsenter are not installed")
    proc = subprocess.Popen(["unshare", "-n", "sleep", "60"], stderr=subprocess.DEVNULL)
    path = f"/proc/{proc.pid}/ns/net"
    try:
        wait_until("unshare -n in its own network namespace", lambda: proc.poll() is not None
                   or os.readlink(path) != os.readlink("/proc/self/ns/net"), 10, interval=0.01)
        if proc.poll() is not None:
            pytest.skip("unshare -n is not permitted here")
        yield proc, path
    finally:
        _ends(proc)


def _ends(proc) -> None:
    proc.kill()
    proc.wait()


def _readable(ns) -> bool:
    return ns is not None and not ns.problems and "lo" in ns.links


@pytest.mark.xdist_group("real-host-namespaces")
def test_on_this_host_a_namespace_held_only_by_an_open_fd_is_entered(lone_namespace):
    proc, path = lone_namespace
    fd = os.open(path, os.O_RDONLY)
    try:
        _ends(proc)
        ns = _held_namespaces().get(f"fd {fd} of pid {os.getpid()}")
        assert _readable(ns), ns and ns.problems
    finally:
        os.close(fd)


@pytest.mark.xdist_group("real-host-namespaces")
def test_on_this_host_a_namespace_only_a_thread_lives_in_is_entered():
    """A thread of this process moves to a new namespace (unshare(CLONE_NEWNET)); the process
    itself stays in the host's."""
    libc = ctypes.CDLL(None, use_errno=True)
    moved, done, errs = threading.Event(), threading.Event(), []

    def thread():
        if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
            errs.append(os.strerror(ctypes.get_errno()))
        moved.set()
        done.wait(30)
    t = threading.Thread(target=thread)
    t.start()
    try:
        moved.wait(10)
        if errs:
            pytest.skip(f"unshare(CLONE_NEWNET) is not permitted here: {errs[0]}")
        ns = _held_namespaces().get(f"thread {t.native_id} of pid {os.getpid()}")
        assert _readable(ns), ns and ns.problems
    finally:
        done.set()
        t.join()


@pytest.mark.xdist_group("real-host-namespaces")
def test_on_this_host_a_namespace_bind_mounted_anywhere_is_entered(lone_namespace, tmp_path):
    proc, path = lone_namespace
    target = tmp_path / "a netns"
    target.write_text("")
    if subprocess.run(["mount", "--bind", path, str(target)], capture_output=True).returncode:
        pytest.skip("mount --bind is not permitted here")
    try:
        _ends(proc)
        ns = _held_namespaces().get(f"nsfs mount {target}")
        assert _readable(ns), ns and ns.problems
    finally:
        subprocess.run(["umount", str(target)], check=True)
