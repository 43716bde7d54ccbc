"""Issue 31, seventeenth adversarial read. What it found, one section below each:

1. the files an io_uring has registered (``UserFiles:`` in the ring's fdinfo) and a loop
   device's backing file (``loop/backing_file``) are named by the kernel as a path, and the
   harness looks that path up in *its own* mount namespace (``node_type(path)``), where it may
   be another file or none: the kernel prints the path as the holder's mount namespace has it
   (a container's ``/dev/xvdb``, a pod's volume path, a bind mount of the disk's node in a
   namespace of its own), and ``/`` for a file whose mount is no longer in any namespace (the
   namespace that set the loop up has ended, or the bind mount was lazily unmounted). A
   process in another mount namespace that reads a disk through a registered file, and a loop
   device set up over a disk's node in a namespace since gone, leave the disk idle: the path
   resolves here to a regular file, or to ``/``, a folder, which is "an image file". The
   same holds for a function's BAR files (``resource0``) that a container opens or maps
   through the host's sysfs mounted elsewhere (``/host/sys``, as monitoring and device-plugin
   pods mount it): the path is ``/host/sys/devices/...``, and only ``/sys/devices/...``
   counts, though ``/proc/PID/maps`` gives the mapped file's device and inode, which are the
   BAR file's wherever it is mounted;
2. those same lookups are made by path, with no timeout and whatever filesystem the path is
   on: a registered file or a loop's backing file on a FUSE, NFS or CIFS mount whose server
   does not answer blocks the lookup (``AT_STATX_DONT_SYNC`` spares the getattr, not the
   lookup's revalidation) for good. The fifteenth read made the open-file read skip remote
   mounts and bound the wait on a detached one for just this; these two paths, added by the
   sixteenth, do neither: ``doctor``, ``plan``, a bind and every give-back (``restore``, a
   run's end: ``binding._holders``) hang, the journal's lock held;
3. the kernel's storage targets are read only when ``/sys/module/nvmet`` (or
   ``target_core_mod``) exists, which for a target built into the kernel
   (``CONFIG_NVME_TARGET=y``, a lab's own kernel) it does not: a built-in module shows in
   /sys/module only when it has a parameter or a version, and nvmet has neither (this host's
   built-in veth has no /sys/module/veth either). Disks nvmet (or a built-in LIO without
   one) exports to other machines, and the p2pmem nvmet lends, then read idle although
   configfs names them;
4. a GPIO line of a USB adapter's chip that a kernel consumer elsewhere holds reads idle:
   ``gpio-aggregator`` (``new_device "gpiochip0 0-3"``, how lines are handed to a VM or to
   one user) requests the lines in the kernel, from a platform device that is not below the
   adapter, and the process that drives them holds the aggregator's own chip. No line of
   the adapter's chip is exported or requested by a process, so the controller was taken
   from under the relay the lines drive. (The kernel says which lines are used by anyone:
   ``GPIO_V2_LINE_FLAG_USED`` from the chip's line info, or /sys/kernel/debug/gpio.) And a
   line exported through the per-chip sysfs interface (Linux 6.17: ``echo 1 >
   /sys/class/gpio/chip0/export``) is a group ``gpio1`` below the chip's class device
   ``chip0`` (``<adapter>/gpio/chip0/gpio1/value``); only a legacy ``gpioN`` device below a
   ``gpio`` folder counts, which a kernel without ``CONFIG_GPIO_SYSFS_LEGACY`` never makes;
5. the helper process that :class:`harness.host.nsholders.MountVisits` leaves in a mount
   namespace no process is in (another user's, made in a user namespace of theirs) is a
   Python with the terminal's process group: an operator's Ctrl-C during ``doctor``, ``plan``
   or a bind (a read that user can make as long as they like: each network namespace they
   hold adds its ``ip`` and ``ss`` runs) reaches it as KeyboardInterrupt, and Python 3.13 and
   later print an uncaught exception with the ``traceback`` module, imported then: from that
   namespace's files, where the user has mounted a ``traceback.py`` of theirs over the
   standard library. Root runs it (a fork of it outlives the SIGKILL that follows). The
   helper needs no signal of the terminal's and must never import.
6. a vfio device held by a mapping alone: a user-space driver maps a BAR through its vfio
   device fd (``mmap`` of a region) and closes the device fd and the group's, or a child it
   forks keeps only the mapping (a daemon's ``closefrom(3)``). The mapping holds the device's
   file, so the device stays open, and the group with it; ``/proc/PID/maps`` shows
   ``anon_inode:[vfio-device]``, which the open-file read drops (it keeps only paths and
   io_uring rings). ``doctor``/``plan`` call the function idle on vfio-pci, and the give-back
   unbinds it under the process (vfio-pci's remove then waits in the kernel for it, the
   journal's lock held), as the sixteenth read's seventh finding did for the device fd.
7. the same helpers, one a mount namespace, are all kept alive until the whole network read
   ends, with no bound: a local user binds as many mount namespaces as they like to files in
   a namespace of their own (``unshare --mount=FILE``, in a user namespace: up to
   ``user.max_mnt_namespaces``, 96367 here), and every ``doctor``, ``plan`` or bind makes
   root start one Python per namespace and keep them all. Each is about 9 MB (50 took 444 MB
   here, in 1.6 s): a few thousand fill this host's 24 GB, and the kernel's OOM killer then
   picks the largest processes, a guest's QEMU first.
8. a function on no driver (or pci-stub) that a user-space program drives through
   ``/dev/mem`` reads idle: its BARs are physical memory, which ``/dev/mem`` maps for root
   (``CONFIG_STRICT_DEVMEM`` lets through MMIO that no driver has claimed, as a function on
   no driver's is), and only the function's sysfs ``resource*``/``config``/``rom`` files and
   ``/proc/bus/pci`` (the fifteenth read) count. The mapping names its physical address
   (``/proc/PID/maps``' offset of a ``/dev/mem`` mapping), which the function's ``resource``
   file places in its BAR; an fd of ``/dev/mem`` (``pread``/``pwrite`` at any address) may
   be any function's. The other old user-space interface, beside ``/proc/bus/pci``.
9. any local user stops ``doctor``, ``plan`` and every bind with a traceback again, through
   the network read this time: an interface name is any bytes but ``/``, ``:`` and
   whitespace, and ``ss`` prints the name of the interface a socket is bound to as it is, so
   ``_run`` (``text=True``) raises UnicodeDecodeError, which ``_read_sockets`` does not catch
   (only OSError; ``ip``'s output is read under ``except ValueError`` and is safe). The user
   names their interface (in a network namespace of their own) ``x\\xff`` just while root's
   ``nsenter ... ss`` runs there, which ``/proc`` shows them, and back after.
10. any local user makes every read of the host's open files take hours, the give-back's
   too: the open-file read lists every thread's ``/proc/PID/task/TID/fd`` (for a thread that
   did ``unshare(CLONE_FILES)``), and every thread that shares its process's table lists the
   same fds again, each one read (link, fdinfo, type). One process of nobody's with 400
   threads and 4000 fds (``/dev/null``) made ``OpenFiles`` take 112 s here (0.15 s
   without it); it grows as threads times fds, and nobody may have 20000 fds and thousands
   of threads: hours for ``doctor``, ``plan``, a bind (the journal's lock held) and
   ``restore``/a run's end (``binding._holders``), which a CI job's timeout then kills
   before anything is given back. ``kcmp(KCMP_FILES)`` tells which threads share a table.

Each finding's tests fail on the code as it is (513a381). Cases 1 and 2: real loop devices, a
real io_uring, a real mount namespace and a real FUSE mount served by :mod:`tests.unit.fusestub`,
as root (and a fake tree for a BAR mapped through sysfs elsewhere). Cases 3, 4, 6 and 8: a fake
sysfs and /proc tree. Case 5: a real mount namespace that nobody makes and holds by an fd, the
real helper, and a Python 3.13 if this host has one. Cases 7, 9 and 10: real namespaces,
interfaces, threads and fds of nobody's. No guest is booted.
"""

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from harness.core.errors import HostDeviceError
from harness.host import network, nsholders, storage
from harness.host.binding import VfioBinder
from harness.host.network import NetView
from harness.host.safety import HostUsage
from harness.host.storage import StorageView
from harness.host.sysfs import Sysfs

from . import fakesysfs
from .fusestub import FuseStub
from .test_host_idle_review16 import URING, _cp2102n, read_while_it_reads
from .test_host_idle_review16 import loop_disk as _loop_disk
from .test_paths import NOBODY, as_root

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
loop_disk = _loop_disk  # a fixture: a real loop device, the sixteenth read's
#: These tests make real namespaces, mount namespaces and FUSE mounts and read the whole host:
#: one run's namespaces churning under another's read made it fail closed where the test
#: expected a view. One worker runs them all, one after another.
pytestmark = pytest.mark.xdist_group("real-host-namespaces")
SATA = "0000:06:00.0"     # sdb, not mounted: idle on the lab host
XHCI = "0000:07:00.0"     # USB bus 4
PORT0, PORT1 = "0000:05:00.0", "0000:05:00.1"


def _seen(name: str) -> list[str]:
    view = StorageView.read(Sysfs("/"))
    return view.use_of_block(name) + view.problems



# -- 1. a path the kernel prints for another mount namespace --------------------------------------


@as_root
def test_1_a_disk_read_through_io_uring_from_another_mount_namespace_is_in_use(loop_disk,
                                                                                tmp_path):
    """A container's shape: the process sees the disk at a path of its own mount namespace
    (here a bind mount of the node over a file that, in the host's, is a plain empty file),
    registers it with io_uring and closes its fd."""
    name, plain = os.path.basename(loop_disk), tmp_path / "volume"
    plain.write_bytes(b"")
    assert StorageView.read(Sysfs("/")).use_of_block(name) == []  # (idle before)
    script = tmp_path / "uring.py"
    script.write_text(URING)
    child = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount --bind "$1" "$2" && exec "$3" "$4" "$2" fd', "sh", loop_disk, str(plain),
         sys.executable, str(script)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        seen = read_while_it_reads(child, name, "io_uring or unshare is not usable here")
        assert any(f"pid {child.pid}" in u for u in seen), seen
    finally:
        child.kill()
        child.wait()


@as_root
def test_1_a_loop_device_set_up_in_a_mount_namespace_since_gone_holds_its_disk(loop_disk,
                                                                               tmp_path):
    """``losetup`` over the disk's node bind-mounted in a mount namespace that then ended (a
    container's, a job's): the kernel prints the backing file as ``/``."""
    name, plain = os.path.basename(loop_disk), tmp_path / "volume"
    plain.write_bytes(b"")
    over = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount --bind "$1" "$2" && losetup -f --show "$2"', "sh", loop_disk, str(plain)],
        capture_output=True, text=True)
    if over.returncode != 0:
        pytest.skip(f"no second loop device or no unshare: {over.stderr.strip()}")
    loop = over.stdout.strip()
    try:
        with open(loop, "rb") as f:
            assert f.read(11) == b"HH-REVIEW16"  # the loop reads the disk
        seen = _seen(name)
        assert any(os.path.basename(loop) in u for u in seen), seen
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


def test_1_a_bar_mapped_through_sysfs_mounted_elsewhere_is_in_use(lab):
    """A container with the host's sysfs at /host/sys maps 05:00.1's BAR 0 (on no driver): the
    kernel prints the path as the container's mount namespace has it."""
    lab.kernel(lab.sys / "bus/pci/drivers/ixgbe/unbind", PORT1)
    bar = lab.dev_dir(PORT1) / "resource0"
    bar.write_bytes(b"")
    assert HostUsage.read(lab.root).verdict(PORT1).idle
    st = os.stat(bar)
    where = "/host/sys/" + str(lab.dev_dir(PORT1).relative_to(lab.sys)) + "/resource0"
    lab.proc("5190/comm", "pmd\n")
    lab.proc("5190/maps", f"7f1c40000000-7f1c40080000 rw-s 00000000 "
                          f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x} {st.st_ino} "
                          f"{where}\n")
    v = HostUsage.read(lab.root).verdict(PORT1)
    assert not v.idle
    assert any("resource0" in u for u in v.uses), v.uses


@pytest.mark.parametrize("where", ["sysfs", "tmpfs"])
def test_1_a_bar_mapped_from_another_sysfs_superblock_is_matched_by_its_mounts(lab, where):
    """sysfs mounted in another network namespace is a superblock of its own (another device
    number) with the same inodes: the holder's mountinfo says it is sysfs. The control: a file
    of that name and inode on a tmpfs is not the BAR."""
    lab.kernel(lab.sys / "bus/pci/drivers/ixgbe/unbind", PORT1)
    bar = lab.dev_dir(PORT1) / "resource0"
    bar.write_bytes(b"")
    lab.proc("5191/comm", "pmd\n")
    lab.proc("5191/maps", f"7f1c40000000-7f1c40080000 rw-s 00000000 00:99 {os.stat(bar).st_ino} "
                          "/host/sys/bus/pci/devices/0000:05:00.1/resource0\n")
    lab.proc("5191/mountinfo", f"1210 1190 0:153 / /host/sys rw,nosuid - {where} {where} rw\n")
    v = HostUsage.read(lab.root).verdict(PORT1)
    assert v.idle == (where == "tmpfs"), v.uses


@as_root
def test_1_config_space_open_through_sysfs_of_another_network_namespace_is_held(tmp_path):
    """For real: a process in its own network and mount namespaces mounts sysfs (a superblock
    of its own) and holds a function's config space open through it."""
    bdf = sorted(os.listdir("/sys/bus/pci/devices"))[0] if os.path.isdir(
        "/sys/bus/pci/devices") and os.listdir("/sys/bus/pci/devices") else None
    if bdf is None:
        pytest.skip("this host has no PCI function")
    there = tmp_path / "hostsys"
    there.mkdir()
    child = subprocess.Popen(
        ["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c",
         'mount -t sysfs sysfs "$1" && exec 3<"$1/bus/pci/devices/$2/config" && '
         'echo held && exec sleep 60', "sh", str(there), bdf],
        stdout=subprocess.PIPE, text=True)
    try:
        if child.stdout.readline().strip() != "held":
            pytest.skip(f"unshare or a second sysfs mount is not possible here: {child.wait()}")
        assert os.stat(f"/proc/{child.pid}/fd/3").st_dev != os.stat("/sys").st_dev  # (premise)
        opened = StorageView.read(Sysfs("/")).opened
        held = storage.pci_file_holders(opened, Path(f"/sys/bus/pci/devices/{bdf}/config"),
                                    "sysfs")
        assert child.pid in {pid for pid, _ in held}, held
    finally:
        child.kill()
        child.wait()


def test_8_a_dev_mem_mapping_elsewhere_leaves_the_function_idle(lab):
    """The control: a mapping of /dev/mem outside the function's BARs and the PCI
    configuration windows (the BIOS area, as dmidecode once mapped it)."""
    lab.kernel(lab.sys / "bus/pci/drivers/ixgbe/unbind", PORT1)
    lab.file(f"{lab.dev_dir(PORT1).relative_to(lab.root)}/resource",
             "0x00000000fb000000 0x00000000fb07ffff 0x0000000000140204\n")
    lab.proc("iomem", "e0000000-efffffff : PCI MMCONFIG 0000 [bus 00-ff]\n")
    lab.proc("5181/comm", "dmidecode\n")
    lab.proc("5181/maps", "7f1c40000000-7f1c40010000 r--s 000f0000 00:06 5 /dev/mem\n")
    assert HostUsage.read(lab.root).verdict(PORT1).idle
    lab.proc("5181/maps", "7f1c40000000-7f1c40010000 rw-s e0500000 00:06 5 /dev/mem\n")
    v = HostUsage.read(lab.root).verdict(PORT1)  # (ECAM: the configuration space of all)
    assert any("/dev/mem" in u for u in v.uses), v.uses


# -- 2. a lookup on a file server that does not answer --------------------------------------------


def _read_storage(bound: float) -> "StorageView | None":
    """The real host's StorageView, or None when it did not come in ``bound`` seconds (the read
    is left blocked in a daemon thread, which the FUSE stub's abort frees)."""
    box: list = []

    def read() -> None:
        try:
            box.append(StorageView.read(Sysfs("/")))
        except OSError:
            pass

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(bound)
    return box[0] if box else None


@pytest.fixture
def fuse(tmp_path):
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this host: modprobe fuse")
    with FuseStub(tmp_path / "mnt") as stub:
        yield stub


@as_root
def test_2_a_fuse_file_registered_with_io_uring_does_not_hang_the_read(fuse, tmp_path):
    script = tmp_path / "uring.py"
    script.write_text(URING)
    child = subprocess.Popen([sys.executable, str(script), str(fuse.mountpoint / "f"), "fd"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    fuse.holders.append(child)  # (killed when the stub ends)
    first = child.stdout.readline().strip()  # ("failed": the stub has no READ; registered all
    if not first:                              # the same)
        pytest.skip(f"io_uring is not usable here: {child.wait()}")
    fuse.go_silent()
    start = time.monotonic()
    view = _read_storage(3 * storage.DETACHED_STAT_TIMEOUT + 30)
    assert view is not None, ("the host's storage read hung on a file an io_uring registered, "
                              "on a FUSE mount whose daemon does not answer")
    assert time.monotonic() - start < 3 * storage.DETACHED_STAT_TIMEOUT + 30


@as_root
def test_2_many_files_on_a_silent_server_cost_one_bound_not_one_each(fuse, tmp_path):
    """Four processes each register the FUSE file with an io_uring of theirs, and the daemon
    goes silent: the first lookup waits its bound, and the others are not made (the read has
    failed closed already), so the read costs one bound, not four."""
    script = tmp_path / "uring.py"
    script.write_text(URING)
    children = []
    for _ in range(4):
        child = subprocess.Popen([sys.executable, str(script), str(fuse.mountpoint / "f"), "fd"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        fuse.holders.append(child)  # (killed when the stub ends)
        if not child.stdout.readline().strip():
            pytest.skip(f"io_uring is not usable here: {child.wait()}")
        children.append(child)
    fuse.go_silent()
    start = time.monotonic()
    view = _read_storage(4 * storage.DETACHED_STAT_TIMEOUT + 30)
    took = time.monotonic() - start
    assert view is not None, "the host's storage read hung"
    assert took < 2 * storage.DETACHED_STAT_TIMEOUT + 10, f"the read took {took:.1f} s"
    assert any("not looked at" in p for p in view.problems), view.problems
    assert sum(f"pid {c.pid}" in " ".join(view.problems) for c in children) >= 1


@as_root
def test_2_a_loop_device_over_a_fuse_file_does_not_hang_the_read(fuse):
    made = subprocess.run(["losetup", "-f", "--show", str(fuse.mountpoint / "f")],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"no loop device over the FUSE file: {made.stderr.strip()}")
    loop = made.stdout.strip()
    try:
        fuse.go_silent()
        view = _read_storage(3 * storage.DETACHED_STAT_TIMEOUT + 30)
        assert view is not None, ("the host's storage read hung on a loop device's backing "
                                  "file, on a FUSE mount whose daemon does not answer")
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


# -- 3. a storage target built into the kernel ----------------------------------------------------


@pytest.mark.parametrize("module", ["loaded", "built-in"])
def test_3_a_disk_a_built_in_nvmet_exports_is_in_use(lab, module):
    assert HostUsage.read(lab.root).verdict(SATA).idle  # (idle before the export)
    if module == "loaded":
        lab.file("sys/module/nvmet/refcnt", "1\n")
    # (built in: no /sys/module/nvmet, for nvmet has no parameter; configfs as for a module)
    lab.file("sys/kernel/config/nvmet/subsystems/nqn.lab:san/namespaces/1/device_path",
             "/dev/sdb\n")
    lab.file("sys/kernel/config/nvmet/subsystems/nqn.lab:san/namespaces/1/enable", "1\n")
    v = HostUsage.read(lab.root).verdict(SATA)
    assert not v.idle
    assert any("nvmet" in u for u in v.uses), v.uses


@pytest.mark.parametrize("module", ["loaded", "built-in"])
def test_3_a_disk_a_built_in_lio_exports_is_in_use(lab, module):
    if module == "loaded":
        lab.file("sys/module/target_core_mod/refcnt", "1\n")
    lab.file("sys/kernel/config/target/core/iblock_0/lab-sdb/udev_path", "/dev/sdb\n")
    v = HostUsage.read(lab.root).verdict(SATA)
    assert not v.idle
    assert any("target_core_mod" in u for u in v.uses), v.uses


# -- 4. a GPIO line a kernel consumer holds -------------------------------------------------------


def test_4_a_usb_adapters_gpio_lines_an_aggregator_holds_keep_its_controller(lab):
    """``echo "gpiochip0 0-3" > /sys/bus/platform/drivers/gpio-aggregator/new_device``: the
    aggregator (a platform device, not below the adapter) holds lines 0-3 of the CP2102N's
    chip in the kernel and offers them as gpiochip1, whose lines a relay daemon (or a VM's
    vhost-user-gpio) requests. What the kernel shows: the aggregator's device and chip, the
    daemon's request of gpiochip1, and debugfs's list of used lines."""
    _cp2102n(lab)
    assert HostUsage.read(lab.root).verdict(XHCI).idle  # (idle before the aggregator)
    agg = lab.sys / "devices/platform/gpio-aggregator.0"
    (agg / "gpiochip1").mkdir(parents=True)
    (agg / "gpiochip1/dev").write_text("254:1\n")
    (agg / "gpiochip1/uevent").write_text("MAJOR=254\nMINOR=1\nDEVNAME=gpiochip1\n")
    (lab.sys / "bus/platform/drivers/gpio-aggregator").mkdir(parents=True)
    os.symlink(lab.sys / "bus/platform/drivers/gpio-aggregator", agg / "driver")
    lab.proc("5400/comm", "relayd\n")
    (lab.root / "proc/5400/fd").mkdir(parents=True)
    os.symlink("anon_inode:gpio-line", lab.root / "proc/5400/fd/4")
    lab.proc("5400/fdinfo/4", "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\n"
                              "gpio-chip:\tgpiochip1\ngpio-line:\t0\n")
    lab.file("sys/kernel/debug/gpio",
             "gpiochip0: GPIOs 512-515, parent: usb/4-1:1.0, cp210x, can sleep:\n"
             " gpio-512 (                    |gpio-aggregator.0   ) out hi \n"
             " gpio-513 (                    |gpio-aggregator.0   ) out lo \n"
             " gpio-514 (                    |gpio-aggregator.0   ) in  lo \n"
             " gpio-515 (                    |gpio-aggregator.0   ) in  lo \n\n"
             "gpiochip1: GPIOs 516-519, parent: platform/gpio-aggregator.0, "
             "gpio-aggregator.0, can sleep:\n"
             " gpio-516 (                    |relayd              ) out hi \n")
    v = HostUsage.read(lab.root).verdict(XHCI)
    assert not v.idle
    assert any("gpio" in u.lower() for u in v.uses), v.uses


def test_4_a_line_exported_through_the_per_chip_sysfs_interface_keeps_its_controller(lab):
    """gpiolib-sysfs (6.17) without CONFIG_GPIO_SYSFS_LEGACY: the chip's class device is
    ``chip<id>`` below the chip's parent (the adapter's interface), and an exported line is an
    attribute group ``gpio<offset>`` of it; no ``gpio<N>`` device is made."""
    chip = _cp2102n(lab)
    assert HostUsage.read(lab.root).verdict(XHCI).idle
    cdev = chip.parent / "gpio/chip0"
    cdev.mkdir(parents=True)
    for name, text in (("label", "cp210x\n"), ("ngpio", "4\n"), ("export", ""),
                       ("unexport", "")):
        (cdev / name).write_text(text)
    (cdev / "gpio1").mkdir()  # echo 1 > /sys/class/gpio/chip0/export; echo out > .../direction
    (cdev / "gpio1/direction").write_text("out\n")
    (cdev / "gpio1/value").write_text("1\n")
    v = HostUsage.read(lab.root).verdict(XHCI)
    assert not v.idle
    assert any("gpio" in u.lower() for u in v.uses), v.uses


# -- 5. the helper in a mount namespace no process is in ------------------------------------------


def _python_313() -> str | None:
    """A Python 3.13 or later (which imports ``traceback`` to print an uncaught exception)."""
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for python in [sys.executable] + sorted(glob.glob(f"{pyenv}/versions/3.1[3-9]*/bin/python3")) \
            + [shutil.which(f"python3.{minor}") for minor in range(13, 20)]:
        try:
            if python and subprocess.run([python, "-I", "-S", "-c", "import sys; sys.exit("
                                          "sys.version_info < (3, 13))"], timeout=30,
                                         capture_output=True).returncode == 0:
                return python
        except (OSError, subprocess.TimeoutExpired):
            pass  # (a wrapper that does not run under -I, such as a pyenv shim)
    return None


def _cover(stdlib: str) -> str:
    """Where another user mounts a tmpfs to put their own files at ``stdlib``: the first folder
    on the way they may not search (``/root``, for a Python under root's home), else the
    standard library's folder itself."""
    parts = Path(stdlib).parts
    for i in range(2, len(parts) + 1):
        if not os.stat(os.path.join(*parts[:i])).st_mode & 0o001:
            return os.path.join(*parts[:i])
    return stdlib


NOBODY_RUN = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@as_root
def test_5_a_ctrl_c_does_not_make_the_helper_import_from_the_namespace_it_visits(tmp_path,
                                                                                 monkeypatch):
    python = _python_313()
    if python is None:
        pytest.skip("no Python 3.13 or later on this host (earlier ones print an uncaught "
                    "exception without an import)")
    stdlib = subprocess.run([python, "-I", "-S", "-c", "import os; print(os.path.dirname("
                             "os.__file__))"], capture_output=True, text=True,
                            check=True).stdout.strip()
    marker = tmp_path / "ran-as-root"  # (in root's own folder: nobody cannot write there)
    payload = f"import os\nopen({str(marker)!r}, 'w').write(str(os.getuid()))\n"
    # nobody's namespace, in a user namespace of theirs: their traceback.py where the standard
    # library is; then no process left in it, held by an fd of theirs only.
    maker = subprocess.Popen(
        NOBODY_RUN + ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                      'mount -t tmpfs hh-planted "$1" && mkdir -p "$2" && printf %s "$3" '
                      '> "$2/traceback.py" && echo ready && exec sleep 600', "sh",
                      _cover(stdlib), stdlib, payload],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    holder = None
    try:
        if maker.stdout.readline().strip() != "ready":
            pytest.skip(f"nobody cannot make a user namespace here: {maker.stderr.read()}")
        holder = subprocess.Popen(
            NOBODY_RUN + [sys.executable, "-c", "import os, sys; fd = os.open(f'/proc/{sys.argv"
                          "[1]}/ns/mnt', os.O_RDONLY); print('held', flush=True); "
                          "sys.stdin.readline()", str(maker.pid)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        maker.kill()
        maker.wait()
        monkeypatch.setattr(sys, "executable", python)  # (the harness's Python runs the helper)
        fs, problems = Sysfs("/"), []
        with nsholders.MountVisits(fs) as visits:
            network._holders(fs, visits, problems)  # (as every read of the host's NICs does)
            if not visits.helpers:
                pytest.skip(f"the namespace was not entered here: {problems}")
            helper = visits.helpers[-1]
            helper.send_signal(signal.SIGINT)  # (Ctrl-C: the terminal's whole process group)
            try:
                helper.wait(5)
            except subprocess.TimeoutExpired:
                pass  # (a helper that ignores it)
    finally:
        for proc in (maker, holder):
            if proc is not None:
                proc.kill()
                proc.wait()
    assert not marker.exists(), (f"the helper ran nobody's traceback.py, as uid "
                                 f"{marker.read_text()}")


# -- 6. a vfio device held by a mapping alone -----------------------------------------------------


def test_6_a_vfio_device_held_only_by_a_mapping_is_not_given_back(lab):
    """(No fd is left to have an fdinfo: the kernel names the device nowhere, 6.14 or not.)"""
    journal = lab.root / "var/lib/hotplug-harness/vfio-journal.json"
    lease = VfioBinder(lab.sysfs(), journal=journal).bind(PORT0, {PORT0, PORT1})
    (lab.dev_dir(PORT0) / "enable").write_text("1\n")  # (open: vfio-pci enabled it)
    # a user-space driver mapped BAR 0 through the device fd, then closed every fd it had
    lab.proc("5170/comm", "pmd-poller\n")
    (lab.root / "proc/5170/fd").mkdir(parents=True)
    lab.proc("5170/maps", "55d0c0a00000-55d0c0a21000 r-xp 00000000 fe:01 2163290 "
                          "/usr/bin/pmd-poller\n"
                          "7f3a40000000-7f3a40080000 rw-s 00000000 00:0e 1058 "
                          "anon_inode:[vfio-device]\n")
    assert not HostUsage.read(lab.root).verdict(PORT0).idle
    with pytest.raises(HostDeviceError):
        lease.release()
    assert lab.driver_of(PORT0) == "vfio-pci"


# -- 7. one helper a namespace, all alive at once -------------------------------------------------


@as_root
def test_7_the_mount_namespaces_another_user_binds_do_not_each_keep_a_root_process():
    count = nsholders.MAX_VISITS + 8
    folder = Path(tempfile.mkdtemp(prefix="hh-review17-"))  # (nobody's, in /tmp)
    os.chown(folder, NOBODY, NOBODY)
    # nobody, in a user namespace of theirs: ``count`` mount namespaces bound to files there
    # (``unshare --mount=FILE`` now and then says EINVAL: another file is tried)
    maker = subprocess.Popen(
        NOBODY_RUN + ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                      'mount -t tmpfs hh-bound "$1" && i=0 && j=0 && while [ "$i" -lt "$2" ] '
                      '&& [ "$j" -lt "$(($2 * 4))" ]; do j=$((j + 1)); touch "$1/m$j"; '
                      'unshare --mount="$1/m$j" true 2>/dev/null && i=$((i + 1)); done; '
                      'echo "ready $i"; exec sleep 600', "sh", str(folder), str(count)],
        stdout=subprocess.PIPE, text=True)
    try:
        said = maker.stdout.readline().split()
        if said != ["ready", str(count)]:
            pytest.skip(f"nobody could not bind {count} mount namespaces here: {said}")
        fs, problems = Sysfs("/"), []
        with nsholders.MountVisits(fs) as visits:
            network._holders(fs, visits, problems)  # (as every read of the host's NICs does)
            alive = [h for h in visits.helpers if h.poll() is None]
        assert len(alive) <= nsholders.MAX_VISITS, (
            f"{len(alive)} root processes kept alive at once for the {count} mount namespaces "
            "nobody made")
        assert any(f"more than {nsholders.MAX_VISITS}" in p for p in problems), problems
    finally:
        maker.kill()
        maker.wait()
        folder.rmdir()


# -- 8. a function on no driver driven through /dev/mem -------------------------------------------


@pytest.mark.parametrize("how", ["mapped", "fd"])
def test_8_a_function_a_process_drives_through_dev_mem_is_in_use(lab, how):
    lab.kernel(lab.sys / "bus/pci/drivers/ixgbe/unbind", PORT1)
    # its BAR 0 (512 KiB of MMIO at 0xfb000000) and BAR 4, as the kernel lists them
    lab.file(f"{lab.dev_dir(PORT1).relative_to(lab.root)}/resource",
             "0x00000000fb000000 0x00000000fb07ffff 0x0000000000140204\n"
             + "0x0000000000000000 0x0000000000000000 0x0000000000000000\n" * 3
             + "0x00000000fb100000 0x00000000fb103fff 0x0000000000140204\n"
             + "0x0000000000000000 0x0000000000000000 0x0000000000000000\n" * 8)
    assert HostUsage.read(lab.root).verdict(PORT1).idle
    lab.proc("5180/comm", "legacy-ctl\n")
    (lab.root / "proc/5180/fd").mkdir(parents=True)
    if how == "mapped":  # mmap(/dev/mem, offset 0xfb000000): its BAR 0, the fd closed after
        lab.proc("5180/maps", "7f1c40000000-7f1c40080000 rw-s fb000000 00:06 5 /dev/mem\n")
    else:  # pread/pwrite at its BAR's address
        os.symlink("/dev/mem", lab.root / "proc/5180/fd/3")
        lab.proc("5180/fdinfo/3", "pos:\t0\nflags:\t0100002\nmnt_id:\t20\nino:\t5\n")
    v = HostUsage.read(lab.root).verdict(PORT1)
    assert not v.idle
    assert any("/dev/mem" in u for u in v.uses), v.uses


# -- 9. a name that is not UTF-8 in ss's output ---------------------------------------------------

#: nobody's process in a network namespace of their own (a user namespace too): a veth
#: ``hhok`` with a UDP socket bound to it; whenever a process of the reader (``argv[1]``) runs
#: ``ss`` (``nsenter ... ss -H ...``, in /proc for anyone to see), the veth is named
#: ``x\xff`` until that process ends, then ``hhok`` again.
RENAMER = textwrap.dedent(r"""
    import fcntl, os, socket, struct, subprocess, sys, time
    reader = sys.argv[1]
    if subprocess.run(["ip", "link", "add", "hhok", "type", "veth", "peer", "name",
                       "hhpeer"]).returncode:
        sys.exit("no veth")
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"hhok")
    held.bind(("0.0.0.0", 0))
    def rename(old, new):  # SIOCSIFNAME (the veth is down)
        fcntl.ioctl(held, 0x8923, struct.pack("16s16s", old, new))
    print("ready", flush=True)
    others, seen = set(), set()  # (processes not the reader's, never looked at again)
    while True:
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or pid in others or pid in seen:
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = f.read().rsplit(")", 1)[1].split()[1]
                if ppid != reader:
                    others.add(pid)
                    continue
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except (OSError, IndexError):
                continue
            if b"ss" in argv and b"-H" in argv:
                seen.add(pid)
                rename(b"hhok", b"x\xff")
                while os.path.exists(f"/proc/{pid}"):
                    time.sleep(0.001)
                rename(b"x\xff", b"hhok")
        time.sleep(0.0005)
""")


def _python_nobody_runs_in_a_user_namespace() -> str | None:
    """(an interpreter under root's home cannot be reached from nobody's user namespace)"""
    for python in dict.fromkeys((sys.executable, "/usr/bin/python3")):
        if subprocess.run(NOBODY_RUN + ["unshare", "--user", "--map-root-user", python, "-c",
                                        "pass"], capture_output=True).returncode == 0:
            return python
    return None


@as_root
def test_9_an_interface_name_not_utf8_does_not_stop_the_network_read():
    python = _python_nobody_runs_in_a_user_namespace()
    if python is None:
        pytest.skip("no Python that nobody may run in a user namespace of theirs")
    child = subprocess.Popen(
        NOBODY_RUN + ["unshare", "--user", "--map-root-user", "--net", python, "-c",
                      RENAMER, str(os.getpid())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if child.stdout.readline().strip() != "ready":
            pytest.skip(f"nobody cannot make a network namespace here: {child.stderr.read()}")
        for _ in range(5):  # (the rename races root's ss: it is given five chances)
            try:
                view = NetView.read(Sysfs("/"))
            except UnicodeDecodeError as e:
                pytest.fail(f"the host's network read ended in a traceback: {e!r}")
            assert view is not None
    finally:
        child.kill()
        child.wait()


# -- 10. threads that share their process's files, each listed again ------------------------------

#: nobody's process: ``argv[2]`` fds (of /dev/null) and ``argv[1]`` threads that share them.
THREADS = textwrap.dedent(r"""
    import os, resource, sys, threading
    threads, fds = int(sys.argv[1]), int(sys.argv[2])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, fds + 64), hard))
    null = os.open("/dev/null", os.O_RDONLY)
    kept = [os.dup(null) for _ in range(fds - 1)]
    stop = threading.Event()
    threading.stack_size(64 * 1024)
    for _ in range(threads - 1):
        threading.Thread(target=stop.wait, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.readline()
""")


def read_open_files_with(threads: int, fds: int, script: str = "") -> tuple[int, list[str]]:
    """(how many fd entries one read of every process's open files looked at for nobody's
    process of ``threads`` threads and ``fds`` fds, the read's problems). ``script``: its
    Python, :data:`THREADS`'s arguments; the threads share one table unless it says otherwise.
    Entries, not seconds: the cost that multiplied, counted the same on a slow or busy host."""
    child = subprocess.Popen(NOBODY_RUN + ["/usr/bin/python3", "-c", script or THREADS,
                                           str(threads), str(fds)], cwd="/",
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    seen, add = [0], storage.OpenFiles._add

    def counted(self, fs, fd, who, *rest):
        seen[0] += who[0] == child.pid
        return add(self, fs, fd, who, *rest)
    try:
        if child.stdout.readline().strip() != "ready":
            pytest.skip(f"nobody could not hold {fds} fds in {threads} threads here")
        problems: list[str] = []
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(storage.OpenFiles, "_add", counted)
            storage.OpenFiles(Sysfs("/"), problems)
        return seen[0], problems
    finally:
        child.kill()
        child.wait()


@as_root
def test_10_threads_that_share_their_files_do_not_multiply_the_read():
    if not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("no /usr/bin/python3 for nobody")
    alone, _ = read_open_files_with(1, 2000)
    threaded, _ = read_open_files_with(150, 2000)
    assert alone >= 2000
    assert threaded <= alone + 10, (f"the read looked at {threaded} fds with 150 threads sharing "
                                    f"2000 fds, {alone} with one thread")


def test_4_a_free_line_that_has_a_name_is_not_held(lab):
    """debugfs lists a free line that has a name (from firmware or a board file) too, with no
    consumer: `` gpio-513 (RELAY               )``; only a line with one (after ``|``) is
    held. The control: the same chip with that line requested."""
    _cp2102n(lab)
    debug = lab.sys / "kernel/debug/gpio"
    head = "gpiochip0: GPIOs 512-515, parent: usb/4-1:1.0, cp210x, can sleep:\n"
    debug.write_text(head + " gpio-513 (RELAY               )\n\n")
    assert HostUsage.read(lab.root).verdict(XHCI).idle
    debug.write_text(head + " gpio-513 (RELAY               |relayd              ) out hi \n\n")
    v = HostUsage.read(lab.root).verdict(XHCI)
    assert any("gpio-513" in u and "relayd" in u for u in v.uses), v.uses
