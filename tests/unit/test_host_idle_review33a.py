"""Issue 31, read 33a (storage, USB, display, IOMMU groups, SR-IOV, the bind's mechanics, the
libvirt hand-over). What it found, one section below each:

1. the re-reads under the claim that reads 31a and 32a added (``_used_since``: a whole storage
   read; ``_nodes_opened_since``: every process's fds) now sit between the proof's network
   read and the unbind, and the network is not read again: an interface brought up (and
   addressed) while they take their seconds, which any local user stretches to their budgets,
   is unbound under its address. docs/vfio.md says the network is read last "so [its]
   evidence is the newest of the proof"; for a NIC with a PTP clock (igb, ixgbe, i40e, ice,
   mlx5: all of them), and for every USB NIC handed to usb-host (its /dev/bus/usb node is read
   again), it no longer is;
2. taking an SR-IOV PF whose VFs are idle (on no driver or ``pci-stub``, as a libvirt hostdev
   pool or an operator's boot unit leaves them) removes them (the PF driver's remove calls
   ``pci_disable_sriov``), and nothing puts them back: the give-back rebinds the PF with
   ``sriov_numvfs`` 0, where the host had 2 (and the VFs' MAC/VLAN settings with them);
3. libvirt's ``usb-host`` element drops the proven device's ``hostbus``/``hostaddr`` in the
   ids form (``harness.virt.xml._hostdev_usb`` writes ``<vendor>``/``<product>`` alone, though
   :func:`device_xml` says "a property not mapped is refused, never dropped"), so review 31a's
   finding 3 (pin the proven device) holds for QMP only: with ``--driver libvirt`` the device
   libvirt looks up at attach time is whichever one then has those ids.

Each section's test asserts the safe behaviour and fails on fdaa4af; the controls show that
the idle shape is still taken. A fake sysfs/proc tree plays the host (:mod:`.fakesysfs`'s lab
host); no guest is booted.

Looked at and found covered on fdaa4af (no test): ``_new_id_strays`` (functions of the same
ids on no driver), ``_moves`` comparison of the two proofs, ``refuse_foreign`` /
``_refuse_pf_of_vfs`` for a VF's PF and a PF whose count a run set, ``_restore_sriov``'s
``_vfs_not_idle`` and ``_live_users_of_vfs``, the handover's driver check, kernel bridges of a
group (never judged, never moved, as vfio allows), VMD domains (no IOMMU group: refused),
noiommu groups (no group before the bind: refused), discover's VF drafting against plan's
``_vf_entry``, the ACS read of Intel's Union Point root ports (the kernel's SPT quirk also
covers 0xa290..0xa29f, 0xa2e7..0xa2ee, which ``_acs_registers`` reads as words: an
over-refusal, not a finding).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pytest

from harness.core.errors import HostDeviceError
from harness.host import binding, sriov, usbhost
from harness.host.binding import VfioBinder
from harness.qemu.machine import GuestSpec
from harness.scenario.devices import UsbHost
from harness.virt import xml as vx

from . import fakesysfs
from .test_host_idle_review31a import ALLOWED, STICK, _bind, _journal, _up, mounted_twin, stick  # noqa: F401
from .test_host_idle_review31b import phc

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures (a fake sysfs lab host)

PORT0, PORT1 = "0000:05:00.0", "0000:05:00.1"  # the lab's 82599 (ixgbe), both in group 12


# -- 1. an interface brought up while the claimed re-reads take their seconds -------------------


def _clock(lab) -> None:
    """The 82599's PTP hardware clock ptp0 below port 0 (ixgbe registers one for every port
    it drives: /dev/ptp0, 246:0), with no PPS source, no pins and no periodic output in use:
    an idle clock, one more device node below the function."""
    phc(lab, PORT0, "ixgbe", pps_available=0, outputs=0)


def _up_during_the_claimed_reread(lab, monkeypatch) -> list:
    """Once the bind, its disks claimed, reads every process's fds again for the nodes below
    what moves (``binding._nodes_opened_since``, the first ``OpenFiles`` binding.py builds in
    a bind), enp5s0f0 comes up with 10.0.5.1/24: NetworkManager activating its profile (the
    lab's cable plugged in, a colleague's ``nmcli con up``), or a DHCP client's lease. The
    reads so far, one item each."""
    calls: list = []
    real = binding.OpenFiles.read

    def opened(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            _up(lab, "enp5s0f0", "10.0.5.1/24")
        return real(*args, **kwargs)
    monkeypatch.setattr(binding.OpenFiles, "read", staticmethod(opened))
    return calls


def test_1_control_an_idle_nic_with_a_clock_is_still_taken(lab, fake_root):
    """Control: the same 82599 with its idle clock, nothing brought up: both ports go to
    vfio-pci."""
    _clock(lab)
    refused, driver = _bind(lab, fake_root, PORT0)
    assert refused == "" and driver == "vfio-pci", refused


def test_1_an_interface_brought_up_during_the_claimed_reread_is_not_unbound(
        lab, fake_root, monkeypatch):
    """(a, low likelihood: the host's own activity in a window that any local user stretches
    to seconds) Host shape: the lab's 82599 (05:00.0 and 05:00.1, group 12, both listed), its
    ports down, ixgbe's PTP clock ptp0 below port 0 (every PTP-capable NIC driver registers
    one: igb, ixgbe, i40e, ice, mlx5, bnxt). The bind's last proof, under the journal lock,
    reads the storage and then the network: enp5s0f0 is down. Then the bind claims the
    disks below what moves (none) and reads every device node below it again for openers
    (review 32a's fix, ``_nodes_opened_since``: an ``OpenFiles`` of every process's fds and
    threads, whose budget is 10 s and 1,000,000 fds, which any user fills). While that read
    takes its seconds, NetworkManager activates enp5s0f0's profile (its cable plugged in, a
    ``nmcli con up``): the port is up with 10.0.5.1/24 and its route.

    Path: :meth:`VfioBinder.bind` -> ``_proven_plan`` (network read last) ->
    ``_move_all`` -> ``_disks_claimed`` -> ``disks_claimed`` -> ``_used_since`` (a whole
    ``StorageView.read`` for a group with disks) and ``_nodes_opened_since`` -> the unbind.
    Nothing reads the network after those re-reads, so the interface's evidence is as old as
    they are long; docs/vfio.md ("Each read takes the storage first and the network last ...
    so their evidence is the newest of the proof (an interface brought up while a user makes
    the storage read slow is still seen)") no longer holds for the re-reads reads 31a and 32a
    put after it. ixgbe is unbound under an addressed, routed interface: the host loses that
    network (an NFS or iSCSI session on it, a colleague's SSH).

    On fdaa4af: 05:00.0 goes to vfio-pci with enp5s0f0 up and addressed. Fix: end the
    claimed re-reads with the network, as the proof does: read the interfaces of what moves
    (``NetView`` for every namespace) once ``_used_since`` and ``_nodes_opened_since`` are
    done, right before the first unbind, and refuse an interface that is up, addressed,
    routed or has an upper device by then."""
    _clock(lab)
    calls = _up_during_the_claimed_reread(lab, monkeypatch)
    refused, driver = _bind(lab, fake_root, PORT0)
    assert calls, "the bind read no open files again under its claim (the path changed?)"
    assert "enp5s0f0" in refused and driver == "ixgbe", (
        f"05:00.0 went to {driver} with enp5s0f0 up with 10.0.5.1/24 since the proof's network "
        f"read ({'refused: ' + refused if refused else 'not refused'})")


def test_1_vfs_made_during_the_claimed_reread_are_not_removed(lab, fake_root, monkeypatch):
    """(Added with the fix) The same window, the PF's count: NetworkManager's profile of
    enp5s0f0 with ``sriov.total-vfs 2`` writes ``sriov_numvfs`` when it activates, so the PF
    has 2 VFs by the time of the unbind, which would remove them (finding 2). The claim's
    last read sees them and refuses."""
    _clock(lab)
    lab.sriov_capable(PORT0, 63, vf_ids="8086:10ed", vf_driver=None)
    calls: list = []
    real = binding.OpenFiles.read

    def opened(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            lab.kernel(lab.sys / "bus/pci/devices" / PORT0 / "sriov_numvfs", "2")
        return real(*args, **kwargs)
    monkeypatch.setattr(binding.OpenFiles, "read", staticmethod(opened))
    refused, driver = _bind(lab, fake_root, PORT0)
    assert calls and driver == "ixgbe", refused
    assert "right before the move" in refused and "remove its 2 VFs" in refused, refused


#: A USB-to-Ethernet adapter (Realtek RTL8153, r8152) the inventory hands to usb-host.
DONGLE = SimpleNamespace(name="dongle", hostbus=4, hostaddr=2, vendorid="0x0bda",
                         productid="0x8153", product="USB 10/100/1000 LAN", disk_bytes=None,
                         no_host_filesystems=False)


def _dongle(lab) -> None:
    """The dongle on the lab's uPD720202 (bus 4, 4-1), its interface 4-1:1.0 on r8152 with
    the network interface enx00e04c680001 below it, down (as ``add_net`` makes a PCI port's,
    and ``ip -d link`` ties it to its USB interface: ``parentbus usb``)."""
    iface = lab.add_usb("4-1", 2, "0bda:8153", "USB 10/100/1000 LAN", "Realtek",
                        iface_driver="r8152")
    d = iface / "net" / "enx00e04c680001"
    d.mkdir(parents=True)
    os.symlink(os.path.relpath(d, lab.sys / "class/net"), lab.sys / "class/net" / d.name)
    links = json.loads((lab.root / "ip/link.json").read_text())
    links.append(fakesysfs.link(len(links) + 1, d.name, parentbus="usb", parentdev=iface.name))
    (lab.root / "ip/link.json").write_text(json.dumps(links))


def _dongle_up(lab) -> None:
    """enx00e04c680001 up with 192.168.50.2/24 (``_up``, its link still on the USB bus)."""
    _up(lab, "enx00e04c680001", "192.168.50.2/24")
    links = json.loads((lab.root / "ip/link.json").read_text())
    for li in links:
        if li["ifname"] == "enx00e04c680001":
            li.update(parentbus="usb", parentdev="4-1:1.0")
    (lab.root / "ip/link.json").write_text(json.dumps(links))


def _dongle_up_during_the_claimed_reread(lab, monkeypatch) -> list:
    """As :func:`_up_during_the_claimed_reread`, for the dongle: usb-host's plug reads the
    USB device's node (/dev/bus/usb/004/002) again under its claim, and meanwhile the dongle
    comes up with 192.168.50.2/24. The reads so far, one item each."""
    calls: list = []
    real = binding.OpenFiles.read

    def opened(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            _dongle_up(lab)
        return real(*args, **kwargs)
    monkeypatch.setattr(binding.OpenFiles, "read", staticmethod(opened))
    return calls


@pytest.mark.parametrize("brought_up", [True, False], ids=["up-during-the-reread", "control-idle"])
def test_1_usb_host_hands_over_no_usb_nic_brought_up_during_the_claimed_reread(
        lab, monkeypatch, brought_up):
    """(a, low likelihood, as above) Host shape: the same window in usb-host's plug
    (:func:`harness.host.usbhost.handed`): a USB Ethernet dongle (RTL8153 on r8152, 4-1), its
    interface enx00e04c680001 down when the plug's last proof reads the network; the plug
    then claims its disks (none) and reads every process's fds again for the nodes below it
    (``/dev/bus/usb/004/002``), and meanwhile NetworkManager activates the dongle's profile
    (a docking station's NIC, which NetworkManager manages by default): up with
    192.168.50.2/24. QEMU's usb-host detaches r8152 from under the address.

    On fdaa4af: the dongle is handed over up and addressed (the control, idle, is handed
    over, rightly). Fix: as above, in :func:`binding.disks_claimed` for every caller."""
    _dongle(lab)
    calls = _dongle_up_during_the_claimed_reread(lab, monkeypatch) if brought_up else []
    binder = VfioBinder(lab.sysfs(), journal=_journal(lab.root), timeout=0.3)
    handed, refused = None, ""
    try:
        with usbhost.handed(binder, DONGLE, "busaddr") as usb:
            handed = usb.name
    except HostDeviceError as e:
        refused = e.message
    if not brought_up:
        assert handed == "4-1", refused
        return
    assert calls, "the plug read no open files again under its claim (the path changed?)"
    assert handed is None and "enx00e04c680001" in refused, (
        f"USB 4-1 was handed to usb-host with enx00e04c680001 up with 192.168.50.2/24 since the "
        f"plug's last network read ({'refused: ' + refused if refused else 'not refused'})")


# -- 2. a PF's idle VFs are removed by the move and never made again ---------------------------


def _pf_with_idle_vfs(lab, count: int = 2) -> None:
    """05:00.0 (ixgbe) with ``count`` VFs on no driver (``sriov_drivers_autoprobe`` 0, as a
    libvirt ``<forward mode='hostdev'>`` pool or an operator's boot unit keeps them for VMs
    started later); and the kernel's part: ixgbe's remove (its unbind) disables SR-IOV
    (``ixgbe_remove`` -> ``ixgbe_disable_sriov`` -> ``pci_disable_sriov``: the VFs leave the
    bus), and its probe makes none (``max_vfs`` is 0 by default)."""
    lab.sriov_capable(PORT0, 63, vf_ids="8086:10ed", vf_driver=None)
    pf = lab.dev_dir(PORT0)
    (pf / "sriov_drivers_autoprobe").write_text("0\n")
    lab.kernel(lab.sys / "bus/pci/devices" / PORT0 / "sriov_numvfs", str(count))
    assert sriov.vfs_of(lab.sysfs(), PORT0) == [lab.vf_address(PORT0, i) for i in range(count)]

    def on_write(rel: str, value: str) -> None:
        if rel.endswith("bus/pci/drivers/ixgbe/unbind") and value == PORT0 and \
                lab.sriov[PORT0]["numvfs"]:
            lab._set_numvfs(pf / "sriov_numvfs", PORT0, "0")
    lab.on_any_write = on_write


def test_2_control_a_pf_without_vfs_is_taken_and_given_back(lab, fake_root):
    """Control: the same PF with SR-IOV and no VF is taken, and given back as it was."""
    lab.sriov_capable(PORT0, 63, vf_ids="8086:10ed", vf_driver=None)
    refused, driver = _bind(lab, fake_root, PORT0)
    assert refused == "" and driver == "vfio-pci", refused
    assert lab.driver_of(PORT0) == "ixgbe"
    assert (lab.dev_dir(PORT0) / "sriov_numvfs").read_text().strip() == "0"


def test_2_a_pf_taken_with_idle_vfs_gets_its_vfs_back(lab, fake_root):
    """(b: the host is left changed) Host shape: the lab's 82599 port 0 is an SR-IOV PF whose
    operator made 2 VFs at boot (``echo 2 > sriov_numvfs`` in a systemd unit, autoprobe off,
    or libvirt's hostdev network pool over ``<pf dev='enp5s0f0'/>``), kept on no driver for VMs
    started on demand, their MACs set through the PF (``ip link set enp5s0f0 vf 0 mac ...``).
    The inventory lists the PF itself as a NIC (05:00.0 with its sibling 05:00.1): the rule
    says "every VF is on no driver or pci-stub ... or on a host driver with idle interfaces",
    so the PF is proven idle and taken.

    Path: :meth:`VfioBinder.bind` journals the PF's driver and ``driver_override`` only
    (``_entry``), then ``_move_to_vfio`` unbinds ixgbe, whose remove disables SR-IOV: both VFs
    leave the bus. At the end of the run ``_restore_entry`` binds ixgbe again, which makes no
    VF; nothing journaled the count, nothing writes it back. After the run the PF has
    ``sriov_numvfs`` 0: the libvirt pool has no VF left (its next VM does not start), the VF
    MACs and VLANs are gone, and the next run's VF entries of this PF see "0 VFs" and make
    their own. (A VF on vfio-pci is refused, rightly: "unbinding the PF would remove it";
    an idle one is removed the same way, and only the give-back forgets it.)

    On fdaa4af: the PF is taken and given back with ``sriov_numvfs`` 0 (was 2). Fix: either
    refuse a PF that has VFs (``HostUsage._vf``: "unbinding its driver removes its N VFs"),
    or journal its ``sriov_numvfs`` (and ``sriov_drivers_autoprobe``) in the PF's entry and
    have ``_restore_entry`` write them back once the PF is on its driver again (as
    ``_restore_sriov`` does for a count the harness set)."""
    _pf_with_idle_vfs(lab)
    refused, driver = _bind(lab, fake_root, PORT0)
    numvfs = (lab.dev_dir(PORT0) / "sriov_numvfs").read_text().strip()
    assert lab.driver_of(PORT0) == "ixgbe"
    assert numvfs == "2", (
        f"05:00.0 was {'refused (' + refused + ')' if refused else 'taken'} and given back with "
        f"sriov_numvfs {numvfs}: the 2 idle VFs it had before the run are gone for good")
    # (The fix chosen refuses the PF, naming its VFs and what to do, rather than journal the
    # count: the VFs are never removed, so their MACs and VLANs stay too.)
    assert "remove its 2 VFs (sriov_numvfs = 2)" in refused and "list a VF instead" in refused, \
        refused


def test_2_a_pf_whose_vf_count_cannot_be_read_is_refused(lab, fake_root):
    """The same PF, no VF link below it, its ``sriov_numvfs`` unreadable: whatever VFs it has
    would be lost, so it counts as having some (what cannot be read counts as in use)."""
    lab.sriov_capable(PORT0, 63, vf_ids="8086:10ed", vf_driver=None)
    numvfs = lab.dev_dir(PORT0) / "sriov_numvfs"
    numvfs.unlink()
    numvfs.mkdir()  # (EISDIR: unreadable even as root)
    refused, driver = _bind(lab, fake_root, PORT0)
    assert "sriov_numvfs cannot be read" in refused and lab.driver_of(PORT0) == "ixgbe", refused


# -- 3. libvirt's usb-host element drops the proven device's address -------------------------


def _libvirt_would_take(element: str, usb) -> bool:
    """Whether libvirt's attach of a ``<hostdev type='usb'>`` element takes ``usb``:
    ``virHostdevFindUSBDevice`` looks the device up by every part of ``<source>`` given
    (``<vendor>``/``<product>``, ``<address bus= device=>``), at attach time."""
    src = ET.fromstring(element).find("source")
    vendor, product = (int(x, 16) for x in usb.ids.split(":"))
    checks = []
    if src.find("vendor") is not None:
        checks.append(int(src.find("vendor").get("id"), 16) == vendor)
    if src.find("product") is not None:
        checks.append(int(src.find("product").get("id"), 16) == product)
    if src.find("address") is not None:
        a = src.find("address")
        checks += [int(a.get("bus"), 0) == usb.busnum, int(a.get("device"), 0) == usb.devnum]
    return all(checks)


def _libvirt_element(stick_host, form: str) -> str:
    """The element ``--driver libvirt`` attaches for the inventory's stick in ``form``: the
    props :meth:`UsbHost.plug` gives ``device_add``, as ``harness.virt.domain`` turns them
    into XML (:func:`harness.virt.xml.device_xml`)."""
    seen: dict = {}

    class Guest:
        def device_add(self, driver, device_id, **props):
            seen.update(props, driver=driver)
            return 0.1

    binder = VfioBinder(stick_host.sysfs(), journal=_journal(stick_host.root), timeout=0.3)
    UsbHost(STICK, form, binder).plug(Guest(), "usb0")
    assert seen.pop("driver") == "usb-host"
    return vx.device_xml(GuestSpec(machine="q35", usb="xhci"), "usb-host", "usb0", seen,
                         vx.Backends())


@pytest.mark.parametrize("form", ["vidpid", "busaddr"])
def test_3_libvirts_usb_host_element_names_the_proven_device(stick, form):
    """(a, low likelihood: the proven device must leave the bus and a twin appear between
    the plug's proof and libvirt's attach) Host shape: review 31a's finding 3, run with
    ``--driver libvirt``: the inventory's SanDisk stick (0781:5567, 4-1) in the ids form,
    proven idle and alone with those ids under the journal lock, its disk claimed. Before
    libvirt's ``attach-device`` looks it up, the stick re-enumerates (usb-storage's error
    handling resets it, a hub's power glitch: it comes back at a new address, its disk a new
    sdX that udisks mounts at once) or is swapped for a colleague's twin of the same, very
    common model, mounted on /media/backup.

    Path: :meth:`harness.scenario.devices.UsbHost.plug` gives ``device_add`` the proven
    device's ``hostbus``/``hostaddr`` with the ids (31a's fix), but
    :func:`harness.virt.xml._hostdev_usb` writes only ``<vendor>``/``<product>`` when
    ``vendorid`` is there and drops the address without a word, though
    :func:`~harness.virt.xml.device_xml` promises "a property not mapped is refused, never
    dropped". libvirt then takes whichever device has those ids at attach time
    (``virUSBDeviceFindByVendor``: one found is used), never proven idle, its disk never
    claimed, and detaches usb-storage under its mount.

    On fdaa4af: the vidpid element matches the twin (the busaddr control passes). Fix: write
    ``<address bus= device=>`` beside ``<vendor>``/``<product>`` when both are given
    (libvirt then requires both to match: ``virUSBDeviceFind``), or refuse the element."""
    element = _libvirt_element(stick, form)
    proven = next(u for u in stick.sysfs().usb_devices() if u.name == "4-1")
    assert _libvirt_would_take(element, proven)  # (it is the device that was proven idle)
    # The stick leaves the bus; a twin (or the stick itself, re-enumerated) is there, mounted.
    twin = mounted_twin(stick)
    assert not _libvirt_would_take(element, twin), (
        f"libvirt's element {element} takes the twin 4-2 (bus 4 address 7, 0781:5567, sde1 "
        "mounted on /media/backup) if it is the one with those ids at attach time: the proven "
        "device's bus and address were dropped")
