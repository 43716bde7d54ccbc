"""Issue 31, read 31a (storage, USB, display, IOMMU groups, the bind's mechanics, ``plan``).

What it found, one section below each:

1. a disk opened without O_EXCL (a libvirt guest's QEMU, ``dd``, ``losetup``, an nvmet or LIO
   fileio export) after the last proof's storage read, while that proof reads the network,
   is taken: ``_disks_claimed`` stops exclusive users only, and nothing looks again;
2. usb-host's plug claims nothing at all: a stick mounted while the plug's last proof reads
   the network is handed to QEMU, which detaches usb-storage under the mount;
3. the ids form gives QEMU a standing filter (``vendorid``/``productid`` only): once the
   proven device leaves the bus, QEMU's auto-connect takes any twin that appears, unproven
   (docs/vfio.md mentions it as a caveat; the harness could pin the proven device);
4. IOMMU groups split by ``pcie_acs_override`` (Proxmox's kernel, linux-zen) are trusted as
   isolation: a function is taken while its sibling, the host's NIC, is reachable peer to
   peer from the guest.

Each section's test asserts the safe behaviour (refused, or
unproven, with the use named) and fails on b2c7379, except the controls, which show that the
idle shape is still taken. A fake sysfs/proc tree plays the host (:mod:`.fakesysfs`'s lab
host); no guest is booted.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from harness.core.errors import HostDeviceError
from harness.host import safety, usbhost
from harness.host.binding import VfioBinder
from harness.scenario.devices import UsbHost

from . import fakesysfs, test_host_usbhost
from .test_host_usbhost import MOUNTS

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures (a fake sysfs lab host)

ASM = "0000:06:00.0"  # the lab's ASM1062 SATA controller, alone in group 13: sdb, not mounted
ALLOWED = {"05:00.0", "05:00.1", "06:00.0", "07:00.0"}


def _journal(fake_root):
    return fake_root / "var/lib/hotplug-harness/vfio-journal.json"


def _bind(lab, fake_root, bdf: str, allowed=ALLOWED) -> tuple[str, str | None]:
    return fakesysfs.bind_outcome(lab, _journal(fake_root), bdf, allowed)


# -- 1. a disk opened while the bind's last proof reads the network ---------------------------


def _opened_during_the_network_read(h, monkeypatch, on_call: int) -> list:
    """From the ``on_call``-th read of the host's network on, pid 4711 (a libvirt guest's QEMU
    started meanwhile, ``<disk type='block'><source dev='/dev/sdb'/>``) holds /dev/sdb open
    once that read ends: what the host does while the read takes its seconds."""
    return opened_during_the_network_read(h, monkeypatch, on_call, "/dev/sdb")


def opened_during_the_network_read(h, monkeypatch, on_call: int, path: str, pid: int = 4711,
                                   comm: str = "qemu-system-x86", fd: int = 12) -> list:
    """From the ``on_call``-th read of the host's network on, ``pid`` (``comm``) holds ``path``
    open once that read ends. The reads so far, one item each."""
    def open_it():
        if not (h.root / f"proc/{pid}/fd/{fd}").is_symlink():
            h.proc(f"{pid}/comm", f"{comm}\n")
            (h.root / f"proc/{pid}/fd").mkdir(parents=True, exist_ok=True)
            os.symlink(path, h.root / f"proc/{pid}/fd/{fd}")
    return during_the_network_read(monkeypatch, on_call, open_it)


def during_the_network_read(monkeypatch, on_call: int, act) -> list:
    """``act()`` at the end of the host's network read, from its ``on_call``-th on: what the
    host does while the read takes its seconds. The reads so far, one item each."""
    calls: list = []
    real = safety.NetView.read

    def net_read(fs):
        view = real(fs)
        calls.append(1)
        if len(calls) >= on_call:
            act()
        return view
    monkeypatch.setattr(safety.NetView, "read", staticmethod(net_read))
    return calls


@pytest.mark.parametrize("on_call", [2, 1], ids=["opened-during-the-last-read",
                                                 "control-opened-during-the-first-read"])
def test_1_a_disk_opened_while_the_bind_reads_the_network_is_not_taken(
        lab, fake_root, monkeypatch, on_call):
    """(a, low likelihood: it takes the host's own activity in a window of seconds, which any
    user can stretch) Host shape: the lab's ASM1062 (06:00.0, group 13) with sdb, idle when
    the bind's last proof reads the storage; while that proof then reads the network (``ip``
    in every namespace, ``ss``, every process's sockets: each with a budget of seconds, which
    any user fills with namespaces and fds, review 27b item 4 made it the last read on
    purpose), libvirt starts a guest whose disk is /dev/sdb: QEMU opens the node O_RDWR
    (O_DIRECT, no O_EXCL; its image locking is an OFD lock, no block-layer claim). So does a
    backup's ``dd``, ``losetup``, an nvmet or LIO fileio export made then.

    Path: :meth:`harness.host.binding.VfioBinder.bind` -> ``_proven_plan`` ->
    :meth:`harness.host.safety.HostUsage.read` (storage, then network) -> journal -> the move,
    whose only guard for disks is ``_disks_claimed``: an exclusive open, which fails only for
    exclusive users (a mount, swap, md, dm). A non-exclusive opener since the storage read
    is never looked for again: the controller is unbound under the guest's disk (its I/O
    fails, the guest's filesystem is lost).

    On b2c7379: 06:00.0 is moved to vfio-pci with /dev/sdb open by the QEMU (the control,
    opened during the first proof's network read, is refused by the second proof's storage read). Fix: once the disks are claimed
    (``_disks_claimed``), read again who holds them (and their partitions) open, by path and
    by number (``OpenFiles``), and refuse if anyone does; the same right before usb-host's
    open in :func:`harness.host.usbhost.handed`."""
    calls = _opened_during_the_network_read(lab, monkeypatch, on_call)
    refused, driver = _bind(lab, fake_root, ASM)
    assert len(calls) >= 2  # (the proof, then the proof again under the journal's lock)
    assert "sdb is open by pid 4711" in refused, (
        f"06:00.0 was moved to {driver} with /dev/sdb open by pid 4711 (qemu-system-x86), "
        f"opened after the last storage read ({'refused: ' + refused if refused else 'not refused'})")
    assert driver == "ahci"


def test_1_control_an_idle_sata_controller_is_still_taken(lab, fake_root):
    """The control for the file: nothing uses sdb, and the ASM1062 goes to vfio-pci."""
    refused, driver = _bind(lab, fake_root, ASM)
    assert refused == "" and driver == "vfio-pci"


# -- 2. a USB stick mounted while its usb-host plug is proven ----------------------------------

#: The stick the inventory hands to usb-host (as tests/unit/test_host_usbhost.py's).
STICK = SimpleNamespace(name="stick", hostbus=4, hostaddr=2, vendorid="0x0781",
                        productid="0x5567", product="Cruzer Blade", disk_bytes=None,
                        no_host_filesystems=False)
stick = test_host_usbhost.stick  # a fixture: the SanDisk stick on bus 4, its sdd1 not mounted


def mounted_twin(stick):
    """A twin of the stick (the same ids) at 4-2, bus 4 address 7, its sde1 mounted on
    /media/backup: or the stick itself, re-enumerated."""
    iface = stick.add_usb("4-2", 7, "0781:5567", "Cruzer Blade", "SanDisk",
                          iface_driver="usb-storage")
    stick.add_disk("sde", iface / "host7/target7:0:0/7:0:0:0", ("sde1",), sectors=65536)
    stick.proc("mounts", MOUNTS + "/dev/sde1 /media/backup vfat rw 0 0\n")
    return next(u for u in stick.sysfs().usb_devices() if u.name == "4-2")


def _usb_binder(h):
    return VfioBinder(h.sysfs(), journal=h.root / "var/lib/hotplug-harness/vfio-journal.json",
                      timeout=0.3)


def _mounted_during_the_network_read(h, monkeypatch, on_call: int) -> list:
    """From the ``on_call``-th read of the host's network on, the stick's sdd1 is mounted on
    /media/backup once that read ends (udisks' automount, a backup job's mount)."""
    return during_the_network_read(monkeypatch, on_call, lambda: h.proc(
        "mounts", MOUNTS + "/dev/sdd1 /media/backup vfat rw 0 0\n"))


@pytest.mark.parametrize("on_call", [2, 1], ids=["mounted-during-the-last-read",
                                                 "control-mounted-during-the-first-read"])
def test_2_a_stick_mounted_while_its_plug_reads_the_network_is_not_handed_over(
        stick, monkeypatch, on_call):
    """(a, low likelihood: the host's own activity in a window of seconds that any user can
    stretch) Host shape: the inventory's USB stick (4-1, sdd) is idle when the plug's last
    proof, under the journal lock, reads the storage; while that proof then reads the network
    (its seconds: every namespace's ``ip``, every process's sockets), the desktop's udisks or
    a backup job mounts sdd1.

    Path: :func:`harness.host.usbhost.handed` -> :func:`proven_idle` ->
    :meth:`harness.host.safety.HostUsage.read` (storage, then network) -> yield -> QEMU's
    ``device_add usb-host``, which detaches usb-storage: the mounted filesystem loses its disk
    (a vfat stick's last writes are lost). Unlike vfio's bind, which claims each disk
    exclusively right before the move (``_disks_claimed``: a mount after the proof fails),
    usb-host's plug claims nothing, so not even a mount is stopped.

    On b2c7379: the stick is handed to usb-host with sdd1 mounted on /media/backup (the
    control, mounted during the first proof, is refused by the second). Fix: claim the
    stick's disks (O_EXCL, as ``_disks_claimed``) from the proof until QEMU has opened the
    device, and read their users again once claimed."""
    calls = _mounted_during_the_network_read(stick, monkeypatch, on_call)
    handed = None
    try:
        with usbhost.handed(_usb_binder(stick), STICK, "busaddr") as usb:
            handed = usb.name
    except HostDeviceError as e:
        assert "/media/backup" in e.message
    assert len(calls) >= 2  # (the proof outside the lock, then under it)
    assert handed is None, ("USB 4-1 was handed to usb-host with sdd1 mounted on /media/backup "
                            "since the last storage read")


# -- 3. usb-host's ids form leaves QEMU a standing filter --------------------------------------


def _qemu_would_attach(props: dict, usb) -> bool:
    """Whether QEMU's usb-host with ``props`` opens ``usb`` when it appears: its auto-connect
    timer (hw/usb/host-libusb.c ``usb_host_auto_check``, every 2 s, for each usb-host device
    with no host device open) takes the first device that matches every filter property set
    (``hostbus``, ``hostaddr``, ``hostport``, ``vendorid``, ``productid``; 0 or unset: any)."""
    vendor, product = (int(x, 16) for x in usb.ids.split(":"))
    port = usb.name.split("-", 1)[1]
    return all([
        not props.get("hostbus") or int(props["hostbus"]) == usb.busnum,
        not props.get("hostaddr") or int(props["hostaddr"]) == usb.devnum,
        not props.get("hostport") or str(props["hostport"]) == port,
        not props.get("vendorid") or int(props["vendorid"]) == vendor,
        not props.get("productid") or int(props["productid"]) == product])


@pytest.mark.parametrize("form", ["vidpid", "busaddr"])
def test_3_usb_host_takes_no_device_that_appears_after_its_plug(stick, form):
    """(a) Host shape: the inventory's SanDisk stick (0781:5567, 4-1) is handed to usb-host in
    the ids form (the guide's ``usb_add host:0781:5567``), proven idle and alone with those
    ids at the plug (``find_for_plug`` refuses twins). Later in the run the stick leaves the
    host's bus for a moment (the guest's usb-storage error handling resets it and it
    re-enumerates, a loose cable, a hub's power glitch), and a colleague's own stick of the
    same, very common model is in the lab host's other port, mounted on /media/backup.

    Path: :meth:`harness.scenario.devices.UsbHost.plug` hands QEMU only ``vendorid`` and
    ``productid``: that is a standing filter, not a device. When the proven device goes away,
    QEMU's auto-connect timer (``usb_host_auto_check``, every 2 s for the life of the
    usb-host device) opens the first device matching the filter and detaches its host
    drivers: the twin, never proven idle, leaves the host under its mount. (The busaddr form
    is pinned: QEMU's ``usb_host_realize`` opens that one device and sets no autoscan when
    only ``hostbus``/``hostaddr`` are given; a re-enumerated device gets a new address.) The
    same filter takes a twin when the stick is gone by the time QEMU realizes the device:
    usb-host then waits, without an error, for the first device with those ids.

    docs/vfio.md says as much ("Mind that the ids form is a standing match ... use the
    hostbus/hostaddr form"), but leaves it to the operator: a run still plugs the ids form,
    and the device QEMU takes then is one no rule looked at.

    On b2c7379: the props match the twin (the busaddr control passes). Fix: give QEMU the
    proven device's ``hostbus`` and ``hostaddr`` in both forms (the ids as well, for the
    ids form's test), so that nothing that appears later matches."""
    seen: dict = {}

    class Guest:
        def device_add(self, driver, device_id, **props):
            seen.update(props, driver=driver)
            return 0.1

    UsbHost(STICK, form, _usb_binder(stick)).plug(Guest(), "usb0")
    assert seen["driver"] == "usb-host"
    proven = next(u for u in stick.sysfs().usb_devices() if u.name == "4-1")
    assert _qemu_would_attach(seen, proven)  # (it is the device that was proven idle)
    # Later: the stick re-enumerates (a new address), and a twin is plugged and mounted.
    twin = mounted_twin(stick)
    assert not _qemu_would_attach(seen, twin), (
        f"QEMU's usb-host {seen} would open the twin 4-2 (bus 4 address 7, 0781:5567, sde1 "
        "mounted on /media/backup) as soon as the proven stick leaves the bus: never proven "
        "idle")


# -- 4. IOMMU groups the kernel was told to split (pcie_acs_override) -------------------------


def _up(h, ifname: str, address: str) -> None:
    """``ifname`` up with ``address`` in the harness's own namespace's `ip -j` output."""
    links = json.loads((h.root / "ip/link.json").read_text())
    for li in links:
        if li["ifname"] == ifname:
            li.update(fakesysfs.link(li["ifindex"], ifname, li.get("parentdev"), up=True))
    (h.root / "ip/link.json").write_text(json.dumps(links))
    addrs = json.loads((h.root / "ip/addr.json").read_text())
    local, prefix = address.split("/")
    addrs = [a for a in addrs if a["ifname"] != ifname] + [
        {"ifindex": next(li["ifindex"] for li in links if li["ifname"] == ifname),
         "ifname": ifname, "addr_info": [{"local": local, "prefixlen": int(prefix)}]}]
    (h.root / "ip/addr.json").write_text(json.dumps(addrs))


def _dual_port_card(lab) -> None:
    """An i350 dual-port card below a root port: 03:00.0 carries the host's storage network
    (igb, up, 10.0.3.1/24), 03:00.1 is down and listed; one group per function (as the ACS
    override, or real ACS, makes them)."""
    lab.add_pci("0000:00:1c.6", "8086:a33e", 0x060400, "pcieport", 20)
    lab.add_pci("0000:03:00.0", "8086:1521", 0x020000, "igb", 21, parent="0000:00:1c.6")
    lab.add_pci("0000:03:00.1", "8086:1521", 0x020000, "igb", 22, parent="0000:00:1c.6")
    lab.add_net("enp3s0f0", "0000:03:00.0")
    lab.add_net("enp3s0f1", "0000:03:00.1")
    _up(lab, "enp3s0f0", "10.0.3.1/24")


@pytest.mark.parametrize("cmdline", [
    "BOOT_IMAGE=/vmlinuz root=/dev/sda2 ro intel_iommu=on "
    "pcie_acs_override=downstream,multifunction",
    "BOOT_IMAGE=/vmlinuz root=/dev/sda2 ro intel_iommu=on"],
    ids=["acs-override", "control-real-acs"])
def test_4_a_group_split_by_pcie_acs_override_is_no_isolation(lab, fake_root, cmdline):
    """(a) Host shape: a lab host set up the way Proxmox's and many VFIO guides' PCI
    passthrough pages say when groups are too big: the ACS override patch (Proxmox VE's
    kernel, linux-zen, linux-vfio builds) with ``pcie_acs_override=downstream,multifunction``
    on the kernel command line. An i350 dual-port card (03:00.0, 03:00.1: one multifunction
    device without ACS, one IOMMU group in truth) now shows one group per function: 03:00.0
    carries the host's storage network (igb, up, 10.0.3.1/24), 03:00.1 is down and listed.

    Path: :func:`harness.host.safety.plan_group` trusts the kernel's
    ``/sys/kernel/iommu_groups``; nothing reads /proc/cmdline for the override. The override
    makes the kernel *pretend* the functions are isolated: the card still routes a function's
    DMA to a sibling's BARs peer to peer, untranslated (that is what ACS, and an IOMMU
    group, is about), so the guest's igb driver, or any guest code that programs a DMA
    address in 03:00.0's BAR window, writes 03:00.0's registers: the host's NIC (and its
    traffic, and its DMA into host memory) is shared with the guest without ever being proven
    idle or listed as a companion. No malice is needed: a guest with 3 GB of RAM or more DMAs
    to guest-physical addresses in the 2-4 GB range, where the host's 32-bit MMIO window (and
    03:00.0's BARs) usually sits, and the card routes such a write to its sibling function.

    On b2c7379: 03:00.1 is moved to vfio-pci (the control, the same groups without the
    override, i.e. real ACS, is taken too, rightly). Fix: with ``pcie_acs_override`` on the
    command line (or /proc/cmdline unreadable), groups are no proof of isolation: refuse,
    naming the parameter (or judge the device's real isolation domain: every function of
    the slot and everything below a bridge without ACS, each listed and proven idle)."""
    lab.file("proc/cmdline", cmdline + "\n")
    _dual_port_card(lab)
    assert any("enp3s0f0 is up with the address 10.0.3.1/24" in u
               for u in safety.HostUsage.read(lab.sysfs()).verdict("0000:03:00.0").uses)
    refused, driver = _bind(lab, fake_root, "0000:03:00.1", ALLOWED | {"03:00.1"})
    if "pcie_acs_override" not in cmdline:
        assert refused == "" and driver == "vfio-pci", refused
        return
    assert "pcie_acs_override" in refused, (
        f"03:00.1 was moved to {driver} although pcie_acs_override split its group from "
        f"03:00.0, the host's NIC on the same card ({'refused: ' + refused if refused else 'not refused'})")
    assert driver == "igb"
