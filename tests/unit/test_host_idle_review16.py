"""Issue 31, sixteenth adversarial read. What it found, one section below each:

1. a process that uses a disk (or any device node) through io_uring's registered files holds
   it with no fd of its own: it opens ``/dev/sdb``, registers it
   (``IORING_REGISTER_FILES``) and closes the fd, and goes on reading and writing it by its
   fixed index. ``/proc/PID/fd`` lists only ``anon_inode:[io_uring]`` (the kernel lists the
   file in that fd's ``fdinfo``, ``UserFiles:``, which nothing reads); the open is not
   exclusive, so the ``O_EXCL`` probe says nothing either. With the ring's own fd registered
   (``IORING_REGISTER_RING_FDS``) and closed too, the process has no fd at all, and only an
   ``anon_inode:[io_uring]`` mapping in ``/proc/PID/maps`` is left to show it (none with
   ``IORING_SETUP_NO_MMAP``). The disk read idle while the process read it.
2. a loop device whose backing file is a block device node outside ``/dev`` was not looked
   at: only ``/dev/...`` backing paths were tied to a disk, by name. kubelet pins a raw block
   volume with a loop device over the disk's node bind-mounted for the pod
   (``/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/<pv>/dev/<pod uid>``); so does
   a node made with ``mknod`` anywhere, or a container's own /dev seen from the host. The
   loop opens the disk with no claim, no holders/ link and no process fd, and the disk read
   idle under the loop device the pod's volume is.
3. an NVMe controller's peer-to-peer memory (its CMB published as ``p2pmem``) is used with no
   node, no disk and no BAR file: a process maps ``p2pmem/allocate`` (only ``resource*``,
   ``config`` and ``rom`` files count as BARs), and nvmet hands it to the RDMA NIC as its
   buffers (``namespaces/N/p2pmem`` names the controller), so the controller read idle.
4. GPIO lines of a USB serial adapter (cp210x and ftdi_sio, judged drivers, register a
   gpiochip below their interface) that are held (exported through
   ``/sys/class/gpio/export``, or requested by a process, which keeps an
   ``anon_inode:gpio-line`` fd and may close the chip's) drive something on the host (a lab's
   power relay) with ``/dev/gpiochipN`` open by no process: the controller read idle, and
   taking it drops the lines. The same for what a USB-to-I2C/GPIO bridge behind usbhid (a
   judged driver) carries: its HID device is on a driver of its own (hid-cp2112,
   hid-mcp2221, hid-ft260), whose I2C bus has kernel drivers bound (a sensor, a PSU monitor,
   an EEPROM) that no node or process shows; only USB interfaces' drivers are judged, not
   those of the devices below them.
5. a network namespace held only by a socket is never read: a process that made a socket in a
   namespace and went back to the host's (``setns``: a routing daemon's per-VRF sockets; a
   namespace whose ``ip netns`` name was deleted while such a daemon kept its sockets) holds
   it with a ``socket:[N]`` fd, which is neither ``net:[N]`` nor a process or thread living
   there, nor an nsfs mount. The interfaces in it are in no namespace the harness reads, and
   no problem says so. A NIC whose other netdevs are visible then reads idle while that one
   carries traffic: the second port of a function that drives two (cxgb4, mlx4, nfp), an
   mlx5 sub-function's or a switchdev representor's netdev (``parentdev`` under the PF), all
   made to be moved into namespaces. (A tun/tap fd and an open ``/proc/PID/net/*`` file hold
   a namespace the same way.) So does an nsfs mount of the namespace inside a mount namespace
   no process is in (``unshare --mount=FILE``: that one is held by an nsfs ``mnt:[N]`` mount
   here, whose mounts are in no process's ``mountinfo``).
6. any local user stops every read of the host's open files: a mapping of a file whose name is
   not UTF-8 (``/tmp/x\\xff``, nobody's own) makes ``/proc/PID/maps`` undecodable, and
   ``OpenFiles`` reads it with ``read_text()`` (strict), so ``UnicodeDecodeError`` ends
   ``doctor``, ``plan``, ``discover``, every bind and usb-host plug, and the give-back
   (``restore``, a run's end: ``_holders``) with a traceback instead of a refusal that names
   the evidence: for as long as that user keeps the mapping, nothing the harness took goes
   back to the host.
7. a process that holds a vfio device through its device fd alone (``VFIO_GROUP_GET_DEVICE_FD``,
   then the group's fd closed: the device fd keeps a reference to the group's file, so the
   group stays open, in no process's fd table) shows only ``anon_inode:[vfio-device]``: "/dev/
   vfio/N is open by no process" is then no evidence. ``release``/``restore`` gave the group
   back under it (vfio-pci's remove then waits in the kernel for that process, the journal
   lock held), and ``doctor``/``plan`` call it idle. The kernel names the device in the fd's
   ``fdinfo`` (``vfio-device-syspath``, recent kernels); nothing reads it.

Each finding's tests fail on the code as it is (403a42e); all seven were fixed the same round
(1, 2, 6 and 7 in 7eb98a9, 3 and 4 in a46ce60, 5 in 513a381). Cases 1, 2 (on this host), 5
and 6: real loop devices, a real io_uring, a real namespace and veth pair, a second user (nobody), as root.
Cases 2 to 4 and 7: a fake sysfs and /proc tree. No guest is booted.
"""

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

from harness.core.errors import HostDeviceError
from harness.host.binding import VfioBinder, _holders
from harness.host.network import NetView
from harness.host.nsholders import socket_namespaces
from harness.host.safety import HostUsage
from harness.host.storage import StorageView
from harness.host.sysfs import Sysfs

from . import fakesysfs
from .test_host_idle_review11 import NVME, _nvme_controller
from .test_host_idle_review import host_namespace, uses
from .test_host_idle_review15 import silent_fuse as _silent_fuse
from .test_paths import NOBODY, as_root

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
#: These tests make real namespaces, mount namespaces and FUSE mounts and read the whole host:
#: one run's namespaces churning under another's read made it fail closed where the test
#: expected a view. One worker runs them all, one after another.
pytestmark = pytest.mark.xdist_group("real-host-namespaces")
silent_fuse = _silent_fuse  # a fixture (tests/unit/fusestub.py)

# -- 1. a disk held through io_uring's registered files -----------------------------------------

#: A process that opens a device, registers it with io_uring, closes its fd (and with ``ring``
#: the ring's fd too, once the ring is registered) and then reads it by fixed index, before and
#: after the harness looks: proof that it still uses the device.
URING = textwrap.dedent(r'''
    import ctypes, os, struct, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    SETUP, ENTER, REGISTER = 425, 426, 427
    U32 = ctypes.c_uint32
    class Off(ctypes.Structure):
        _fields_ = [(f"f{i}", U32) for i in range(8)] + [("user_addr", ctypes.c_uint64)]
    class Params(ctypes.Structure):
        _fields_ = [(n, U32) for n in ("sq_entries", "cq_entries", "flags", "cpu", "idle",
                                       "features", "wq_fd")] + [
            ("resv", U32 * 3), ("sq_off", Off), ("cq_off", Off)]
    def check(r):
        if r < 0:
            sys.exit(f"io_uring: {os.strerror(ctypes.get_errno())}")
        return r
    p = Params()
    ring = check(libc.syscall(SETUP, 4, ctypes.byref(p)))
    fd = os.open(sys.argv[1], os.O_RDONLY)
    check(libc.syscall(REGISTER, ring, 2, (ctypes.c_int * 1)(fd), 1))  # REGISTER_FILES
    os.close(fd)
    # sq_off: head tail ring_mask ring_entries flags dropped array; cq_off: ... cqes at f5
    size = max(p.sq_off.f6 + 4 * p.sq_entries, p.cq_off.f5 + 16 * p.cq_entries)
    rings = (ctypes.c_char * size).from_address(libc.mmap(None, size, 3, 1, ring, 0))
    sqes = (ctypes.c_char * (64 * p.sq_entries)).from_address(
        libc.mmap(None, 64 * p.sq_entries, 3, 1, ring, 0x10000000))
    enter_flags = 1  # GETEVENTS
    if sys.argv[2] == "ring":  # REGISTER_RING_FDS, then no fd of the ring either
        class Update(ctypes.Structure):
            _fields_ = [("offset", U32), ("resv", U32), ("data", ctypes.c_uint64),
                        ("resv2", ctypes.c_uint64)]
        up = Update(0xFFFFFFFF, 0, ring, 0)
        check(libc.syscall(REGISTER, ring, 20, ctypes.byref(up), 1))
        os.close(ring)
        ring, enter_flags = up.offset, 1 | 16  # ENTER_REGISTERED_RING
    buf = ctypes.create_string_buffer(512)
    def read():
        u32 = lambda off: struct.unpack_from("I", rings, off)[0]
        tail = u32(p.sq_off.f1)
        i = tail & u32(p.sq_off.f2)
        sqe = struct.pack("<BBHiQQIIQ", 22, 1, 0, 0, 0, ctypes.addressof(buf), 512, 0, 1)
        sqes[64 * i:64 * i + 64] = sqe.ljust(64, b"\0")  # OP_READ, FIXED_FILE, index 0
        struct.pack_into("I", rings, p.sq_off.f6 + 4 * i, i)
        struct.pack_into("I", rings, p.sq_off.f1, tail + 1)
        check(libc.syscall(ENTER, ring, 1, 1, enter_flags, None, 0))
        head = u32(p.cq_off.f0)
        res = struct.unpack_from("<QiI", rings, p.cq_off.f5 + 16 * (head & u32(p.cq_off.f2)))[1]
        struct.pack_into("I", rings, p.cq_off.f0, head + 1)
        return res == 512 and buf.raw.startswith(b"HH-REVIEW16")
    print("reading" if read() else "failed", flush=True)
    sys.stdin.readline()
    print("still reading" if read() else "failed", flush=True)
''')


@pytest.fixture
def loop_disk(tmp_path):
    """A real block device, ``loopN`` over a file of this test, whose first bytes say what it
    is."""
    image = tmp_path / "disk.img"
    image.write_bytes(b"HH-REVIEW16".ljust(1 << 20, b"\0"))
    try:
        dev = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True,
                             text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"no loop device to play the disk: {e}")
    yield dev
    subprocess.run(["losetup", "-d", dev], check=False)


@as_root
@pytest.mark.parametrize("ring", ["fd", "ring"], ids=["ring-fd-kept", "ring-fd-registered"])
def test_1_a_disk_read_through_io_uring_registered_files_is_in_use(loop_disk, ring):
    name = os.path.basename(loop_disk)
    assert StorageView.read(Sysfs("/")).use_of_block(name) == []  # (idle before)
    child = subprocess.Popen([sys.executable, "-c", URING, loop_disk, ring],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        seen = read_while_it_reads(child, name, "io_uring is not usable here", lambda: {
            os.readlink(f"/proc/{child.pid}/fd/{fd}") for fd in
            os.listdir(f"/proc/{child.pid}/fd")})
        assert any(f"pid {child.pid}" in u for u in seen), seen
    finally:
        child.kill()
        child.wait()


def read_while_it_reads(child, name: str, unusable: str, fds=None) -> list[str]:
    """Once the :data:`URING` reader ``child`` has read the disk ``name``: what the host's
    storage read says of the disk, and its problems; then that the reader still reads it (it
    was in use all along). ``fds``: a call that lists the reader's open files, which must not
    hold the disk (only the ring does)."""
    first = child.stdout.readline().strip()
    if first != "reading":
        pytest.skip(f"{unusable}: {first or child.wait()}")
    if fds is not None:
        assert f"/dev/{name}" not in fds()  # no fd of the disk: only the ring holds it
    view = StorageView.read(Sysfs("/"))
    child.stdin.write("\n")
    child.stdin.flush()
    assert child.stdout.readline().strip() == "still reading"
    return view.use_of_block(name) + view.problems


# -- 2. a loop device over a disk's node outside /dev -------------------------------------------

#: kubelet's global map path of a raw block volume for one pod: a bind mount of the disk's node,
#: with a loop device over it (``losetup -f --show PATH``) "to keep the block device opened".
PUBLISHED = ("/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/pvc-7f3a/dev/"
             "0c1e5d2a-5b7e-4d1c-9a43-2f0b6e8d4c11")


@pytest.mark.parametrize("where", ["node", "gone"])
def test_2_a_disk_a_loop_device_reads_through_a_node_outside_dev_is_in_use(lab, where):
    """kubelet's loop device over a raw block volume's published node (here a real block node
    of sdb's number, 8:16); or a backing path that no longer leads anywhere the harness can
    see (another mount namespace's node): which disk it is cannot be told."""
    sdb = lab.sys / "class/block/sdb"
    (sdb / "dev").write_text("8:16\n")
    os.symlink(os.path.realpath(sdb), lab.sys / "dev/block/8:16")
    assert HostUsage.read(lab.root).verdict("0000:06:00.0").idle  # (free before)
    loop = lab.sys / "devices/virtual/block/loop0"
    lab.file(str((loop / "loop/backing_file").relative_to(lab.root)), PUBLISHED + "\n")
    (loop / "dev").write_text("7:0\n")
    os.symlink(loop, lab.sys / "class/block/loop0")
    if where == "node":
        node = lab.root / PUBLISHED.lstrip("/")
        node.parent.mkdir(parents=True)
        try:
            os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(8, 16))
        except PermissionError:
            pytest.skip("making a device node needs CAP_MKNOD (run the unit tests as root)")
    verdict = HostUsage.read(lab.root).verdict("0000:06:00.0")
    assert not verdict.idle
    assert any("loop0" in u for u in verdict.uses), verdict.uses



@as_root
def test_2_on_this_host_a_loop_device_over_a_disks_node_outside_dev_holds_the_disk(
        loop_disk, tmp_path):
    """The same on the real host: ``loop_disk`` plays the disk, a node of its number made in
    a folder of the test (``mknod``) the pod's bind-mounted node; a second loop device over
    it. No holders/ link, no claim (the exclusive open succeeds), no process fd."""
    st = os.stat(loop_disk)
    node = tmp_path / "pod-volume"
    try:
        os.mknod(node, 0o600 | stat.S_IFBLK, st.st_rdev)
    except PermissionError:
        pytest.skip("making a device node needs CAP_MKNOD")
    over = subprocess.run(["losetup", "-f", "--show", str(node)], capture_output=True,
                          text=True)
    if over.returncode:
        pytest.skip(f"no second loop device: {over.stderr.strip()}")
    try:
        uses = StorageView.read(Sysfs("/")).use_of_block(os.path.basename(loop_disk))
        assert any(os.path.basename(over.stdout.strip()) in u for u in uses), uses
    finally:
        subprocess.run(["losetup", "-d", over.stdout.strip()], check=False)

# -- 3. an NVMe controller's peer-to-peer memory in use -----------------------------------------


def _p2pmem(host) -> str:
    """The controller's CMB, published as peer-to-peer memory (4 MiB); its sysfs path as the
    host sees it."""
    p2p = host.dev_dir(NVME) / "p2pmem"
    p2p.mkdir()
    (p2p / "size").write_text("4194304\n")
    (p2p / "available").write_text("4194304\n")
    (p2p / "published").write_text("1\n")
    (p2p / "allocate").write_text("")
    return "/" + os.path.relpath(p2p / "allocate", host.root)


def test_3_an_nvme_controllers_p2pmem_a_process_maps_is_in_use(lab):
    _nvme_controller(lab, namespace=False)
    allocate = _p2pmem(lab)
    assert HostUsage.read(lab.root).verdict(NVME).idle  # (free before)
    lab.proc("5200/comm", "rdma-app\n")
    lab.proc("5200/maps", f"7f2a00000000-7f2a00200000 rw-s 00000000 00:15 4077 {allocate}\n")
    (lab.sys / os.path.relpath(allocate, "/sys")).parent.joinpath("available") \
        .write_text("2097152\n")
    verdict = HostUsage.read(lab.root).verdict(NVME)
    assert not verdict.idle
    assert any("pid 5200" in u for u in verdict.uses), verdict.uses


def test_3_an_nvme_controllers_p2pmem_nvmet_uses_is_in_use(lab):
    """nvmet-rdma's namespace on another drive takes its data buffers from this controller's
    CMB (``p2pmem`` names it): the kernel allocates from it, no process, node or disk."""
    _nvme_controller(lab, namespace=False)
    _p2pmem(lab)
    assert HostUsage.read(lab.root).verdict(NVME).idle  # (free before)
    lab.file("sys/module/nvmet/refcnt", "1\n")
    ns = "sys/kernel/config/nvmet/subsystems/nqn.lab:data/namespaces/1"
    lab.file(f"{ns}/device_path", "/dev/nvme7n1\n")  # (a drive elsewhere)
    lab.file(f"{ns}/enable", "1\n")
    lab.file(f"{ns}/p2pmem", f"{NVME}\n")
    (lab.dev_dir(NVME) / "p2pmem/available").write_text("0\n")
    verdict = HostUsage.read(lab.root).verdict(NVME)
    assert not verdict.idle
    assert any("p2pmem" in u for u in verdict.uses), verdict.uses


# -- 4. GPIO lines of a USB serial adapter held --------------------------------------------------


def _cp2102n(host):
    """A CP2102N on the free xHCI (07:00.0, bus 4): its tty and its gpiochip (254:0) below its
    interface, as cp210x registers them."""
    iface = host.add_usb("4-1", 2, "10c4:ea60", "CP2102N USB to UART Bridge Controller",
                         "Silicon Labs", iface_driver="cp210x")
    tty = iface / "ttyUSB0/tty/ttyUSB0"
    tty.mkdir(parents=True)
    (tty / "dev").write_text("188:0\n")
    (tty / "uevent").write_text("MAJOR=188\nMINOR=0\nDEVNAME=ttyUSB0\n")
    chip = iface / "gpiochip0"
    chip.mkdir()
    (chip / "dev").write_text("254:0\n")
    (chip / "uevent").write_text("MAJOR=254\nMINOR=0\nDEVNAME=gpiochip0\n")
    (chip / "gpio/gpiochip512").mkdir(parents=True)  # (the legacy class's view of the chip)
    (chip / "gpio/gpiochip512/base").write_text("512\n")
    (chip / "gpio/gpiochip512/ngpio").write_text("4\n")
    debug = host.sys / "kernel/debug/gpio"  # (debugfs: every chip, and the lines held: none)
    debug.parent.mkdir(parents=True, exist_ok=True)
    debug.write_text("gpiochip0: GPIOs 512-515, parent: usb/4-1:1.0, cp210x, can sleep:\n\n")
    return chip


@pytest.mark.parametrize("how", ["sysfs-export", "line-request"])
def test_4_a_usb_adapters_gpio_line_held_keeps_its_controller(lab, how):
    chip = _cp2102n(lab)
    if how == "sysfs-export":  # echo 513 > /sys/class/gpio/export; echo high > .../direction
        line = chip / "gpio/gpio513"
        line.mkdir()
        (line / "direction").write_text("out\n")
        (line / "value").write_text("1\n")
        (lab.sys / "class/gpio").mkdir(parents=True, exist_ok=True)
        os.symlink(line, lab.sys / "class/gpio/gpio513")
    else:  # gpioset's line request: its own fd; the chip's was closed after the request
        lab.proc("5300/comm", "gpioset\n")
        (lab.root / "proc/5300/fd").mkdir(parents=True)
        os.symlink("anon_inode:gpio-line", lab.root / "proc/5300/fd/4")
        lab.proc("5300/fdinfo/4", "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\n"
                                  "gpio-chip:\tgpiochip0\ngpio-line:\t1\n")
    verdict = HostUsage.read(lab.root).verdict("0000:07:00.0")
    assert not verdict.idle
    assert any("gpio" in u.lower() for u in verdict.uses), verdict.uses



def test_4_an_i2c_client_bound_behind_a_usb_hid_bridge_keeps_its_controller(lab):
    """A CP2112 (usbhid; its HID device on hid-cp2112) whose I2C bus carries an lm75 sensor
    the host's fan control reads (``echo lm75 0x48 > .../new_device``): bound in the kernel,
    no node open, nothing below is a USB interface on a driver the rule does not know."""
    iface = lab.add_usb("4-1", 2, "10c4:ea90", "CP2112 HID USB-to-SMBus Bridge",
                        "Silicon Labs")
    hid = iface / "0003:10C4:EA90.0001"
    hid.mkdir()
    (lab.sys / "bus/hid/drivers/hid-cp2112").mkdir(parents=True)
    os.symlink(lab.sys / "bus/hid/drivers/hid-cp2112", hid / "driver")
    raw = hid / "hidraw/hidraw0"
    raw.mkdir(parents=True)
    (raw / "dev").write_text("247:0\n")
    (raw / "uevent").write_text("MAJOR=247\nMINOR=0\nDEVNAME=hidraw0\n")
    bus = hid / "i2c-7"
    (bus / "i2c-dev/i2c-7").mkdir(parents=True)
    (bus / "i2c-dev/i2c-7/dev").write_text("89:7\n")
    (bus / "i2c-dev/i2c-7/uevent").write_text("MAJOR=89\nMINOR=7\nDEVNAME=i2c-7\n")
    client = bus / "7-0048"
    (client / "hwmon/hwmon3").mkdir(parents=True)
    (client / "name").write_text("lm75\n")
    (lab.sys / "bus/i2c/drivers/lm75").mkdir(parents=True)
    os.symlink(lab.sys / "bus/i2c/drivers/lm75", client / "driver")
    verdict = HostUsage.read(lab.root).verdict("0000:07:00.0")
    assert not verdict.idle
    assert any("7-0048" in u or "hid-cp2112" in u for u in verdict.uses), verdict.uses


# -- 5. a network namespace held only by a socket -----------------------------------------------

#: A process that makes a network namespace (``unshare``), runs a body of code there with
#: ``name`` (``sys.argv[1]``), and goes back to the namespace it came from: "ready INODE".
IN_A_NAMESPACE = textwrap.dedent(r'''
    import ctypes, fcntl, os, socket, struct, subprocess, sys
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
        sys.exit("unshare: " + os.strerror(ctypes.get_errno()))
    name = sys.argv[1]
    {body}
    inode = os.readlink("/proc/self/ns/net")
    if libc.setns(home, 0x40000000) != 0:
        sys.exit("setns: " + os.strerror(ctypes.get_errno()))
    os.close(home)
    print("ready", inode, flush=True)
    sys.stdin.readline()
''')

#: A veth pair (``name`` up, with an address) and a socket there: the socket alone holds the
#: namespace once the process is back.
SOCKET_NS = """
for argv in (["link", "add", name, "type", "veth", "peer", "name", name + "p"],
             ["addr", "add", "10.216.16.1/30", "dev", name], ["link", "set", name, "up"],
             ["link", "set", name + "p", "up"]):
    if subprocess.run(["ip", *argv]).returncode:
        sys.exit("ip " + " ".join(argv) + " failed")
held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
held.bind(("10.216.16.1", 0))
"""


@contextlib.contextmanager
def _left_namespace(body: str, what: str, *args: str):
    """A process of :data:`IN_A_NAMESPACE` running ``body``, back home: (it, the inode of
    the namespace it left)."""
    code = IN_A_NAMESPACE.replace("{body}", body.strip())
    child = subprocess.Popen([sys.executable, "-c", code, *args],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        first = child.stdout.readline().split()
        if first[:1] != ["ready"]:
            pytest.skip(f"no network namespace with {what} here: {child.wait()}")
        yield child, first[1]
    finally:
        child.kill()
        child.wait()


@as_root
def test_5_a_network_namespace_held_only_by_a_socket_is_read():
    with _left_namespace(SOCKET_NS, "a veth pair", "hh16sk") as (child, inode):
        fds = [os.readlink(f"/proc/{child.pid}/fd/{fd}") for fd in
               os.listdir(f"/proc/{child.pid}/fd")]
        assert os.readlink(f"/proc/{child.pid}/ns/net") != inode  # back home
        assert not any(t.startswith("net:") for t in fds)  # only socket:[N] holds it
        view = NetView.read(Sysfs("/"))
        seen = [name for name, ns in view.namespaces.items() if "hh16sk" in ns.links]
        told = [p for p in view.problems if f"pid {child.pid}" in p or inode in p]
        assert seen or told, (list(view.namespaces), view.problems)


@as_root
def test_5_a_network_namespace_mounted_only_in_a_mount_namespace_no_process_is_in_is_read(
        tmp_path):
    """``unshare --mount=FILE``, and in that mount namespace ``unshare --net=PATH``: both
    processes end; the network namespace lives on through its nsfs mount there, and that
    mount namespace through its own nsfs mount here (``mnt:[N]``, which is not ``net:``)."""
    keep = tmp_path / "keep"
    keep.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "hh16", str(keep)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        subprocess.run(["mount", "--make-private", str(keep)], check=True)
        (keep / "mnt").touch()
        made = subprocess.run(
            ["unshare", f"--mount={keep}/mnt", "--propagation", "private", "sh", "-ec",
             "mkdir -p /run/hh16; mount -t tmpfs hh16 /run/hh16; touch /run/hh16/net; "
             "unshare --net=/run/hh16/net sh -ec 'ip link add hh16mn type veth peer name "
             "hh16mnp; ip addr add 10.216.17.1/30 dev hh16mn; ip link set hh16mn up; "
             "ip link set hh16mnp up'"], capture_output=True, text=True)
        if made.returncode:
            pytest.skip(f"no namespaces to make here: {made.stderr.strip()}")
        view = NetView.read(Sysfs("/"))
        seen = [name for name, ns in view.namespaces.items() if "hh16mn" in ns.links]
        told = [p for p in view.problems if str(keep) in p]
        assert seen or told, (list(view.namespaces), view.problems)
    finally:
        subprocess.run(["umount", "-l", f"{keep}/mnt"], check=False)
        subprocess.run(["umount", "-l", str(keep)], check=False)


#: A veth pair (``name``) and /dev/net/tun opened there (with ``sys.argv[2]``, a tap device
#: made of it): its tun fd alone holds the namespace once the process is back.
TUN_NS = """
if subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name",
                   name + "p"]).returncode:
    sys.exit("ip link add failed")
tun = os.open("/dev/net/tun", os.O_RDWR)
if sys.argv[2]:  # TUNSETIFF, IFF_TAP | IFF_NO_PI
    fcntl.ioctl(tun, 0x400454CA, struct.pack("16sH22x", sys.argv[2].encode(), 0x1002))
"""


@as_root
@pytest.mark.parametrize("tap", ["hh16tap", ""], ids=["attached", "attached-to-no-device"])
def test_5_a_network_namespace_held_only_by_a_tun_fd_is_read(tap):
    """A tun fd holds the namespace it was opened in, whether it made a device or not."""
    with _left_namespace(TUN_NS, "a tun fd", "hh16tn", tap) as (child, _):
        fds = [os.readlink(f"/proc/{child.pid}/fd/{fd}") for fd in
               os.listdir(f"/proc/{child.pid}/fd")]
        assert "/dev/net/tun" in fds and not any(t.startswith(("net:", "socket:"))
                                                 for t in fds)
        view = NetView.read(Sysfs("/"))
        # (found by its links: it is named after the first holder found, which may be
        # another reader's fd of it, such as another worker's read of the whole host)
        seen = [ns for ns in view.namespaces.values() if "hh16tn" in ns.links]
        assert seen, (list(view.namespaces), view.problems)
        assert (tap in seen[0].links) if tap else len(seen[0].links) == 3  # lo and the pair


#: A process that opens its /proc/self/net/dev (in a namespace of its own with
#: ``sys.argv[1]``, which it then leaves) and keeps it open.
PROC_NET_FILE = textwrap.dedent(r"""
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    if sys.argv[1] and libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
        sys.exit("unshare: " + os.strerror(ctypes.get_errno()))
    kept = open("/proc/self/net/dev")
    if sys.argv[1] and libc.setns(home, 0x40000000) != 0:
        sys.exit("setns: " + os.strerror(ctypes.get_errno()))
    os.close(home)
    print("ready", flush=True)
    sys.stdin.readline()
""")


@as_root
@pytest.mark.parametrize("elsewhere", [True, False], ids=["other-namespace", "its-own"])
def test_5_an_open_proc_net_file_of_a_namespace_left_is_named(elsewhere):
    """A /proc/PID/net file holds the namespace it shows, and nothing names which: one of a
    namespace its process has left leaves every NIC unproven; one of its own does not."""
    child = subprocess.Popen([sys.executable, "-c", PROC_NET_FILE, "x" if elsewhere else ""],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if child.stdout.readline().strip() != "ready":
            pytest.skip(f"no network namespace to make here: {child.wait()}")
        view = NetView.read(Sysfs("/"))
        told = [p for p in view.problems if f"pid {child.pid}" in p and "/net/dev" in p]
        assert bool(told) == elsewhere, view.problems
    finally:
        child.kill()
        child.wait()


@as_root
def test_5_a_mount_namespace_held_only_by_an_fd_is_visited(tmp_path):
    """A process in a mount namespace mounts a network namespace there; another holds the
    mount namespace by an fd (``mnt:[N]``) and the first one ends."""
    made = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec",
         "mkdir -p /run/hh16f; mount -t tmpfs hh16 /run/hh16f; touch /run/hh16f/net; "
         "unshare --net=/run/hh16f/net ip link add hh16fd type veth peer name hh16fdp; "
         "echo ready; read x"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    holder = None
    try:
        if made.stdout.readline().strip() != "ready":
            pytest.skip(f"no namespaces to make here: {made.wait()}")
        holder = subprocess.Popen(
            [sys.executable, "-c", "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
             "print('ready', flush=True); sys.stdin.readline()",
             f"/proc/{made.pid}/ns/mnt"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True)
        assert holder.stdout.readline().strip() == "ready"
        made.kill()
        made.wait()
        view = NetView.read(Sysfs("/"))
        seen = [name for name, ns in view.namespaces.items() if "hh16fd" in ns.links]
        assert seen, (list(view.namespaces), view.problems)
    finally:
        for child in (made, holder):
            if child:
                child.kill()
                child.wait()


def test_5_a_mount_namespace_that_cannot_be_entered_leaves_every_nic_unproven(lab):
    """Held by an nsfs ``mnt:`` mount here (on a fake root nothing is entered): a network
    namespace mounted only there would be missed, so no NIC is proven idle."""
    host_namespace(lab)
    lab.proc("self/mountinfo", "300 25 0:4 mnt:[4026532950] /run/keep/mnt rw - nsfs nsfs rw\n")
    why = uses(lab, PORT0)
    assert any("mount namespace [4026532950] (nsfs mount /run/keep/mnt) cannot be entered" in u
               for u in why), why


# -- 6. a mapped file whose name is not UTF-8 -----------------------------------------------------

#: nobody maps a file of theirs whose name ends in the byte 0xff, and keeps it mapped.
MAP_ODD_NAME = textwrap.dedent(r'''
    import mmap, os, sys
    path = os.fsencode(sys.argv[1]) + b"/map-\xff"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, b"x" * 4096)
    kept = mmap.mmap(fd, 4096)
    print("ready", flush=True)
    sys.stdin.readline()
''')


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@as_root
def test_6_a_mapping_of_a_file_with_a_name_not_utf8_does_not_stop_the_read():
    folder = tempfile.mkdtemp(prefix="hh-review16-")  # (pytest's tmp_path: root's alone)
    os.chown(folder, NOBODY, NOBODY)
    for python in dict.fromkeys((sys.executable, "/usr/bin/python3")):
        try:
            child = subprocess.Popen([python, "-c", MAP_ODD_NAME, str(folder)], cwd="/",
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True,
                                     preexec_fn=_drop_to_nobody)
        except PermissionError:
            continue  # (an interpreter under root's home)
        if child.stdout.readline().strip() == "ready":
            break
        child.wait()
    else:
        pytest.skip("no Python that the user nobody may run")
    try:
        StorageView.read(Sysfs("/"))  # doctor, plan, discover, bind: HostUsage.read
        assert _holders(Sysfs("/"), None) is None  # restore and a run's give-back
    finally:
        child.kill()
        child.wait()
        shutil.rmtree(folder, ignore_errors=True)


# -- 7. a vfio device held by its device fd alone --------------------------------------------------

PORT0, PORT1 = "0000:05:00.0", "0000:05:00.1"


def test_7_a_vfio_device_held_only_by_its_device_fd_is_not_given_back(lab):
    journal = lab.root / "var/lib/hotplug-harness/vfio-journal.json"
    lease = VfioBinder(lab.sysfs(), journal=journal).bind(PORT0, {PORT0, PORT1})
    # a user-space driver took the device fd from /dev/vfio/12, then closed the group's fd
    lab.proc("5160/comm", "spdk_tgt\n")
    (lab.root / "proc/5160/fd").mkdir(parents=True)
    os.symlink("anon_inode:[vfio-device]", lab.root / "proc/5160/fd/23")
    lab.proc("5160/fdinfo/23", "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1058\n"
                               "vfio-device-syspath: /sys/devices/pci0000:00/0000:00:1c.0/"
                               f"{PORT0}\n")
    with pytest.raises(HostDeviceError):
        lease.release()
    assert lab.driver_of(PORT0) == "vfio-pci"


@pytest.mark.parametrize("enabled", ["1", "0"])
def test_7_on_a_kernel_that_does_not_name_the_device_an_enabled_group_member_is_held(lab,
                                                                                   enabled):
    """Before 6.14 (Debian 12's 6.1, the lab's L1) a device fd's fdinfo does not name its
    device. vfio-pci enables a function while a device fd of it is open, and only then: a
    group with a member enabled is held by the unnamed device fd; one whose members are all
    disabled is not (a QEMU passing another group through does not hold this one)."""
    journal = lab.root / "var/lib/hotplug-harness/vfio-journal.json"
    lease = VfioBinder(lab.sysfs(), journal=journal).bind(PORT0, {PORT0, PORT1})
    for bdf in (PORT0, PORT1):
        (lab.dev_dir(bdf) / "enable").write_text("0\n")
    (lab.dev_dir(PORT1) / "enable").write_text(f"{enabled}\n")
    lab.proc("5160/comm", "qemu-system-x86\n")
    (lab.root / "proc/5160/fd").mkdir(parents=True)
    os.symlink("anon_inode:[vfio-device]", lab.root / "proc/5160/fd/23")
    lab.proc("5160/fdinfo/23", "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1058\n")
    if enabled == "1":
        with pytest.raises(HostDeviceError, match=r"pid 5160 \(qemu-system-x86\)"):
            lease.release()
        assert lab.driver_of(PORT0) == "vfio-pci"
    else:
        lease.release()
        assert lab.driver_of(PORT0) == "ixgbe"


# -- 5, as fixed: a socket swapped for a file on a silent FUSE mount -----------------------------


@as_root
def test_5_a_socket_swapped_for_a_file_of_a_silent_fuse_daemon_does_not_hang_the_read(
        silent_fuse):
    """Found while merging finding 5's fix: the fd a process had as ``socket:[N]`` when it was
    listed may be another file when root takes its copy (``dup2`` of a file on the user's own
    FUSE mount over it, retried until it lands). Root's ``fstat`` of that copy asked the
    daemon, and closing the copy sends FUSE's FLUSH, which waits for good (uninterruptibly)
    on a daemon that never answers: the read, and a bind holding the journal lock, hung. The
    copies are now taken by a child that checks the type from the kernel's cache only and
    never closes a copy that is not a socket; the read names the fd and goes on."""
    problems: list = []
    holder = f"/proc/{silent_fuse.pid}/fd/3"  # (the FUSE file, listed as a socket)
    box: list = []
    thread = threading.Thread(target=lambda: box.append(socket_namespaces(
        [("socket:[4242]", Path(holder))], set(), problems)), daemon=True)
    thread.start()
    thread.join(60)
    assert box == [{}], "the socket read hung on the silent FUSE daemon"
    assert problems == [f"the network namespace of socket:[4242] (fd 3 of pid "
                        f"{silent_fuse.pid}) cannot be told: it was swapped for another file "
                        "since it was listed: the interfaces of a namespace held only by it "
                        "would be missed"]
