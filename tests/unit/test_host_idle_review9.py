"""Issue 31, ninth adversarial read. What it found, one section below each:

1. through ``--driver libvirt``, a ``device_add vfio-pci`` that did not say ``managed`` became
   ``<hostdev managed='yes'>``: libvirt unbound the device from its host driver itself, a
   device the harness had neither proven idle nor journaled (any scenario's plain
   ``devices.add_vfio``);
2. with ``--libvirt-managed yes`` the proof was read under the journal lock, the lock let go,
   and libvirt moved the device later, at ``attach-device``, looking at nothing: a disk
   mounted or an interface brought up in between was taken all the same;
3. libvirt's give-back (``driver_override`` cleared, unbind, ``drivers_probe``) was trusted for
   a device on no driver or ``pci-stub`` (which it hands to whichever host driver claims it)
   and for a device that shares its IOMMU group (libvirt gives it back while a guest may
   have another member: the harness never does, eighth read, item 10);
4. ``bind``/``release``/``restore --root COPY`` wrote a copy's sysfs files as root through
   whatever a folder of the copy held: another user who owned it chose, with a link, which
   file of root's was truncated and written;
5. the run's end SIGKILLed any live process at a PID one of its guests' QEMUs once had whose
   command line said qemu-system: on a shared host, another user's QEMU that got the PID.

Each finding's tests fail on the code before its fix. A fake sysfs tree plays the host and
plays libvirt's own sysfs writes (virPCIDeviceBindToStub, virPCIDeviceUnbindFromStub), and a
second user (nobody) owns part of a copy's tree; no guest is booted."""

import os
import signal
import subprocess
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pytest

from harness.core.errors import HostDeviceError
from harness.core.locks import flock_within
from harness.qemu.machine import GuestSpec
from harness.qemu.process import process_start, record_pid
from harness.run import hygiene
from harness.scenario.devices import VfioPci
from harness.virt import xml as vx

from . import fakesysfs
from .test_host_binding import ALLOWED, PORT0, PORT1, binder, entries, journal, libvirt_moves
from .test_host_idle_review5 import NOBODY, as_nobody, as_root

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
journal = journal  # (a fixture: the journal in the fake root's /var/lib)

ASM = "0000:06:00.0"  # the ASM1062 SATA controller, alone in IOMMU group 13; sdb, not mounted
LONE = "0000:08:00.0"  # added below: a NIC on no driver, alone in group 20


# -- 1. managed='yes' only when asked ---------------------------------------------------------


def test_a_plain_vfio_device_add_through_libvirt_takes_the_device_as_it_is():
    """libvirt's managed='yes' unbinds the host's driver with no proof and no journal: a
    device_add that does not ask for it must get managed='no' (libvirt then uses the device
    only if it is on vfio-pci already, as QEMU's device_add does)."""
    spec, b = GuestSpec(machine="q35"), vx.Backends()
    plain = ET.fromstring(vx.device_xml(spec, "vfio-pci", "v0", {"host": "0000:05:00.0"}, b))
    assert plain.get("managed") == "no"
    asked = ET.fromstring(vx.device_xml(spec, "vfio-pci", "v0",
                                        {"host": "0000:05:00.0", "managed": "yes"}, b))
    assert asked.get("managed") == "yes"


# -- 2. proven idle again right before libvirt moves it ---------------------------------------


def libvirt_guest(lab, journal, seen: dict, meanwhile=None):
    """A guest driven through libvirt: ``device_add`` of ``<hostdev managed='yes'>`` does what
    libvirt's attach does to the host (unless the device is on vfio-pci already) and notes
    whether the vfio journal was locked then; ``meanwhile`` runs between the bind and the
    attach (the host at work)."""
    def free_bus():
        if meanwhile:
            meanwhile()
        return "rp0"

    def device_add(driver, device_id, host, managed=None, **props):
        seen["managed"] = managed
        lock = os.open(journal.with_name(journal.name + ".lock"), os.O_RDWR)
        try:
            seen["journal_locked"] = not flock_within(lock, 0)
        finally:
            os.close(lock)
        if managed == "yes" and lab.driver_of(host) != "vfio-pci":
            libvirt_moves(lab, host, "vfio-pci")
        return 0.1

    return SimpleNamespace(free_bus=free_bus, spec=GuestSpec(machine="q35"),
                           device_add=device_add)


def asm_device(lab, journal) -> VfioPci:
    entry = SimpleNamespace(bdf=ASM, role="sata-controller", name="asm")
    return VfioPci(entry, binder(lab, journal), ALLOWED, managed="yes")


def test_a_disk_mounted_between_the_bind_and_libvirts_attach_is_not_taken(lab, journal):
    """The bind proved 06:00.0 idle (sdb not mounted); before libvirt's attach-device the host
    mounts sdb1. The harness's own move happens under the journal lock right after its proof;
    libvirt's happened later with no look at all, and took the host's mounted disk."""
    seen: dict = {}

    def mount_sdb1():
        lab.proc("mounts", (lab.root / "proc/mounts").read_text() + "/dev/sdb1 /srv ext4 rw 0 0\n")

    device = asm_device(lab, journal)
    with pytest.raises(HostDeviceError) as e:
        device.plug(libvirt_guest(lab, journal, seen, meanwhile=mount_sdb1), "sata")
    assert "managed" not in seen, "libvirt was asked to take a device in use"
    assert e.value.message.startswith(f"refusing to take {ASM}: right before libvirt moves it, ")
    assert "sdb1 is mounted on /srv" in e.value.message, e.value.message
    assert e.value.hint
    assert lab.driver_of(ASM) == "ahci" and entries(journal) == []


def test_libvirts_attach_runs_under_the_journal_lock_once_proven_again(lab, journal):
    """Nothing changed meanwhile: libvirt moves it, under the journal lock (no other run binds
    or restores in between), and gives it back on detach."""
    seen: dict = {}
    device = asm_device(lab, journal)
    plugged = device.plug(libvirt_guest(lab, journal, seen), "sata")
    assert seen == {"managed": "yes", "journal_locked": True}
    assert lab.driver_of(ASM) == "vfio-pci"
    libvirt_moves(lab, ASM, None)  # detach-device
    plugged.run = None
    device.cleanup(None, plugged)
    assert lab.driver_of(ASM) == "ahci" and entries(journal) == []


def test_a_device_rebound_between_the_bind_and_libvirts_attach_is_not_taken(lab, journal):
    """Proven idle on ahci; by the attach something loaded another driver and moved it there:
    not the device that was proven idle and journaled. (Loaded after the bind: with two
    drivers matching its ids at the bind, libvirt's give-back could pick either, and the
    harness moves it itself: ``_libvirt_gives_back``.)"""
    seen: dict = {}

    def rebind():
        lab.add_driver("ahci-alt", ids={"1b21:0612"})
        lab._unbind(ASM)
        lab._bind(ASM, "ahci-alt")

    with pytest.raises(HostDeviceError) as e:
        asm_device(lab, journal).plug(libvirt_guest(lab, journal, seen, meanwhile=rebind), "sata")
    assert "managed" not in seen
    assert e.value.message == (f"refusing to let libvirt take {ASM}: it is on ahci-alt, not the "
                               "ahci it was proven idle on"), e.value.message


# -- 3. libvirt gives back only what its give-back restores ----------------------------------


def test_a_device_on_no_driver_is_moved_by_the_harness_not_libvirt(lab, journal):
    """libvirt's give-back writes drivers_probe: a NIC the host keeps on no driver would come
    back on e1000e (an interface the host then configures). The harness moves it itself;
    libvirt finds it on vfio-pci and, on detach, leaves it there (it unbinds only what it
    bound); the harness gives it back to no driver."""
    lab.add_driver("e1000e", ids={"8086:10d3"})
    lab.add_pci(LONE, "8086:10d3", 0x020000, None, group=20)
    b = binder(lab, journal)
    lease = b.bind(LONE, {LONE}, moved_by="libvirt")
    assert lab.driver_of(LONE) == "vfio-pci"
    assert [e.get("moved_by") for e in entries(journal)] == [None]
    assert lease.left_to is None and lease.moved == [LONE]
    seen: dict = {}
    guest = libvirt_guest(lab, journal, seen)
    with b.handover(lease):  # (nothing to prove again: the binder moved it)
        guest.device_add("vfio-pci", "nic0", LONE, managed="yes")
    assert seen["managed"] == "yes" and lab.driver_of(LONE) == "vfio-pci"
    assert {r.bdf: r.status for r in lease.release()} == {LONE: "restored"}
    assert lab.driver_of(LONE) is None and entries(journal) == []


def test_a_device_on_pci_stub_is_moved_by_the_harness_not_libvirt(lab, journal):
    lab.add_driver("pci-stub")
    lab.add_driver("e1000e", ids={"8086:10d3"})
    lab.add_pci(LONE, "8086:10d3", 0x020000, "pci-stub", group=20)
    lease = binder(lab, journal).bind(LONE, {LONE}, moved_by="libvirt")
    assert lab.driver_of(LONE) == "vfio-pci" and lease.left_to is None
    lease.release()
    assert lab.driver_of(LONE) == "pci-stub"


def test_a_device_that_shares_its_group_is_moved_by_the_harness_not_libvirt(lab, journal):
    """05:00.0 and 05:00.1 share group 12, both in the inventory: with a lease on each, a test
    can have both in a guest. libvirt's detach of 05:00.0 gives it back to ixgbe at once,
    while the guest still has 05:00.1 (DMA shared with the host); the binder gives a group
    back only once its last lease lets go. So the harness moves both."""
    b = binder(lab, journal)
    first = b.bind(PORT0, ALLOWED, moved_by="libvirt")
    second = b.bind(PORT1, ALLOWED, moved_by="libvirt")
    assert lab.driver_of(PORT0) == lab.driver_of(PORT1) == "vfio-pci"
    assert first.moved == [PORT0, PORT1]
    assert (first.left_to, second.left_to) == (None, None)
    assert [e.get("moved_by") for e in entries(journal)] == [None, None]
    first.release()
    assert lab.driver_of(PORT0) == "vfio-pci"  # (the other lease still holds the group)
    second.release()
    assert lab.driver_of(PORT0) == lab.driver_of(PORT1) == "ixgbe" and entries(journal) == []


# -- 4. --root: root writes into a copy's tree only where nobody else can choose the file ----


@as_root
def test_root_writes_into_a_copy_of_a_host_only_where_nobody_else_can_swap_a_file(lab, journal):
    """`bind --root COPY` (a copy of a host's tree, for tests) writes its sysfs files as root.
    A copy whose driver folder another user owns lets them put a link where root writes
    `unbind` (past the check that it leads inside the tree, or swapped in just after it):
    root truncated and wrote whatever it led to."""
    secret = lab.file("etc/secret", "root's own\n")
    ixgbe = lab.sys / "bus/pci/drivers/ixgbe"
    lab.root.chmod(0o755)  # (a copy others can reach, as one in a shared folder)
    os.chown(ixgbe, NOBODY, NOBODY)
    as_nobody(f"rm {ixgbe}/unbind; ln -s {secret} {ixgbe}/unbind")
    with pytest.raises(HostDeviceError) as e:
        binder(lab, journal).bind(PORT0, ALLOWED)
    assert secret.read_text() == "root's own\n"
    assert e.value.message.startswith(
        "refusing to write '0000:05:00.0' as root into a copy of a host's tree: the folder "
        f"{ixgbe} above {ixgbe}/unbind is owned by uid {NOBODY}"), e.value.message
    assert "chown -R root" in e.value.hint
    assert lab.driver_of(PORT0) == lab.driver_of(PORT1) == "ixgbe"  # (the half-move undone)


# -- 5. the run's end kills its leftover QEMUs only while their PIDs are still theirs --------


def someones_qemu(uid: int | None = None) -> subprocess.Popen:
    """A process whose command line says qemu-system-x86_64 (another user's VM, say)."""
    drop = (lambda: (os.setgroups([]), os.setgid(uid), os.setuid(uid))) if uid is not None \
        else None
    return subprocess.Popen(["/usr/bin/python3", "-c", "import time; time.sleep(60)",
                             "qemu-system-x86_64"], preexec_fn=drop, cwd="/")


@as_root
def test_the_run_end_never_kills_a_process_that_got_a_guests_old_pid(tmp_path):
    """Every guest of a run leaves qemu.pid in its folder; at the run's end root SIGKILLed any
    live process at each recorded PID whose command line said qemu-system. On a shared host a
    PID of a QEMU closed hours ago is reused, and another user's QEMU that got it was killed."""
    run_dir = tmp_path / "run"
    theirs = someones_qemu(NOBODY)
    try:
        old = run_dir / "guests/g1-q35"
        old.mkdir(parents=True)
        (old / "qemu.pid").write_text(f"{theirs.pid}\n")  # (this run's QEMU had it, once)
        (old / "qemu.start").write_text(f"{process_start(theirs.pid) - 100}\n")
        assert hygiene.check(hygiene.Snapshot(set()), run_dir, None) == []
        assert hygiene.sweep_run(run_dir, "4242") == []
        assert theirs.poll() is None, "root killed another user's QEMU"
    finally:
        theirs.kill()
        theirs.wait()


def test_the_run_end_still_kills_a_qemu_its_guest_left(tmp_path):
    ours = someones_qemu()
    try:
        left = tmp_path / "run/guests/g1-q35"
        left.mkdir(parents=True)
        record_pid(left, ours.pid)
        problems = hygiene.check(hygiene.Snapshot(set()), tmp_path / "run", None)
        assert problems and problems[0].startswith(f"QEMU pid {ours.pid} (g1-q35) was still running")
        assert ours.wait(timeout=10) == -signal.SIGKILL
    finally:
        ours.kill()
        ours.wait()
