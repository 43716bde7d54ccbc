"""Issue 31, read 46a (devices side: the leases and the journal after 16a9c14's ``_named_by``
and 15f236c's ``_own``; SR-IOV counts; the bind's mechanics; usb-host), on main at 16a9c14.
What it found, one section below (numbered as its tests; test 1 is a control):

2. (low likelihood: a console user's speech synthesizer) A tty the kernel opened for
   itself shows no holder. Speakup, the kernel's screen reader for blind users, drives a
   hardware speech synthesizer (DoubleTalk LT, Apollo, DECtalk Express, LiteTalk...) through
   a serial port, and on a machine without one through a USB serial adapter:
   ``speakup_ltlk.dev=ttyUSB0`` (the module's own parameter description: "Set the device
   e.g. ttyUSB0, for the synthesizer"; or ``speakup.synth=ltlk`` on the command line, or
   ``echo ltlk > /sys/accessibility/speakup/synth`` at run time). Its ``spk_ttyio`` opens
   the tty with ``tty_kopen_exclusive`` and sets its own line discipline: no process has
   ``/dev/ttyUSB0`` open, it is in no ``/proc/consoles`` line, and the adapter's interface
   is on ``ftdi_sio``/``pl2303``/``cp210x``, drivers the rule judges "by their tty"
   (``USB_DRIVERS_JUDGED``, ``_BOUND_JUDGED``'s usb-serial ports). So
   :meth:`HostUsage.usb_verdict` reads the adapter as idle ("2 device node(s) below 4-1
   open by no process") and :meth:`HostUsage.verdict` reads the USB controller above it so
   too: a usb-host hand-over detaches the serial driver (QEMU's ``USBDEVFS_DISCONNECT``), a
   bind takes the whole bus; the kernel's tty goes away under speakup, which does not open
   it again by itself, and the console's user hears nothing more (nor that the synth must be
   selected again). Any module that opens a tty in the kernel (``tty_kopen_exclusive``: an
   out-of-tree NFC or radio bridge does) leaves the same nothing to see per tty. Shape: a
   lab host run from its console by a blind engineer, a hardware synthesizer on an
   FTDI/PL2303 cable in the host's spare xHCI, or the cable itself the inventory's
   usb-device. Safe: the tty a loaded speakup synth names (``/sys/module/speakup_*/
   parameters/dev``, 0444, or its ``ser`` index for ``ttyS``) is in use while that synth is
   the one selected (``/sys/accessibility/speakup/synth``; a synth with no tty, ``soft``,
   ``none``, holds none), named; speakup loaded with either unreadable leaves every tty
   below a USB device or controller unproven (tests 2, 2b; control 2c: ``speakup_soft``,
   the software synth espeakup speaks through, holds no tty).

Looked at, no finding (each held, is a stated limit, an over-refusal, or not a real shape):

* 16a9c14's ``_named_by`` in ``restore_from_journal``'s ``only`` selection, in
  ``_held_elsewhere``'s hint and in ``_live_users_of_vfs``: a reliance entry (SR-IOV, no
  ``set``, no ``autoprobe``) is named by the first non-SR-IOV entry of its lease; a lease of
  VFs of two PFs (two cards behind a switch without ACS, one group) is named by either VF,
  never by a PF, and `release` of either VF gives back the whole lease, as a lease should;
  a reliance entry whose lease's VF entry was dropped already (``Lease.release`` drops the
  group's entries, the reliance stays in ``_sriov`` to ``close``) falls back to the PF: a
  live run's is then left ``in-use`` by `release PF` (control 1), a dead run's is its to
  drop, and the VF count itself stays while any VF entry (by hand or live) is in the
  journal (``_live_users_of_vfs`` looks at VF entries as well as reliances).
* ``_own`` (pid and ``pid_start``) in ``_held_elsewhere``, ``_live_users_of_vfs`` (this
  process only: the session's controller gives back its dead workers' entries, whose
  reliances are then not live) and ``_drop_own_reliance``.
* ``_restore_sriov`` / ``_vfs_not_idle``: with `--force` (no journaled live users) a VF
  bound by hand on vfio-pci, its VM shut off, still fails the write through the PF's own
  verdict ("its VF ... is on vfio-pci"); a count changed by someone else is left.
* ``_hold_and_rely``: HOLD entries only when nothing moves; a group member already on
  vfio-pci beside a member that moves gets no entry of its own, but ``refuse_foreign``
  refuses by group membership, a kept member on no driver or ``pci-stub`` has no
  ``sriov_configure`` and no USB bus; VFs of a vfio-pci PF (``vfio-pci enable_sriov=1``)
  with no entry were considered and not shown to hurt the lease (not a finding).
* A failed release of a group (its node open by another process) leaves the group in the
  binder's ``_holds``, so a later bind of it by the same run treats its members on vfio-pci
  as the run's own (no holder check); the next QEMU then fails to open the group (the group
  node is single-open): a failing test, not a device taken from a user; stated ("a group
  this run holds is its own QEMU's").
* The bind's mechanics: ``_move_to_vfio`` (override then unbind then ``drivers_probe``;
  ``new_id``), ``_move_all``'s undo (the libvirt ``keep`` entry too), ``_put_back`` (override
  restored before the bind by name; a device on a third driver left), ``_other_pci_device``,
  ``_stale``.
* usb-host: ``find_for_plug`` (both forms), the proof again under the lock, the
  hand-over's journal entry before QEMU opens, ``refuse_usb_handed`` (own lease by lease id)
  and ``_refuse_below_leased``; ``usb_verdict`` (interfaces, disks, nodes, GPIO, drivers
  below).
* Storage: kernel users of a disk with no holder link and no process (zram's
  ``backing_dev``, DRBD, block2mtd, pktcdvd) open it exclusively, so the claim under the
  move refuses them even where the proof does not name them (an over-refusal at worst in
  `plan`, never a take).
* ACS (``acs_off``, ``pcie_acs_override``, ``pci=disable_acs_redir``/``config_acs``, which act at
  boot before the groups are made and show in the config space read).
* Other kernel users of a node below a USB device with no process fd: ttys (``ldattach``,
  ``slcand``, ``btattach``, ``kissattach``, pppd keep the tty open: a process; serdev binds
  no USB serial port; ``ledtrig-tty``'s shared open harms nothing); USB CAN adapters
  (``gs_usb``, ``peak_usb``: AF_CAN sockets, which ``ss`` does not list, and ``cangw``
  rules in the kernel) are on drivers the rule does not judge, so refused (fail-closed);
  an slcan adapter on ``ftdi_sio`` is held by ``slcand``.
* A stated-limit candidate, not a finding (no evidence the host shows): a console server
  that opens its tty only when a client connects (ser2net 4's ``connector: serialdev``,
  ``socat TCP-LISTEN:...,fork /dev/ttyUSB0``) leaves the tty unopened while nobody is
  connected; taking the adapter breaks the lab's console access to the board on the other
  end until the give-back. docs/vfio.md could say so beside the BMC's shared port.

Tests 2 and 2b assert the safe behaviour and fail on 16a9c14; 1 and 2c are controls and pass.
Tests 2d-2i (fix 46a) hold the fix's edges: speakup loaded with its synth, ``dev`` or ``ser``
unreadable (unproven, named), ``none`` and another synth's ``ttyS<ser>`` (controls), a synth
selected after the proof (refused under the claim), the braille console (``console=brl,``).
A fake sysfs/proc tree plays the host (:mod:`.fakesysfs`); no guest is booted.
"""

from __future__ import annotations

import json
import os

import pytest

from harness.core.errors import HostDeviceError
from harness.host.binding import Journal, VfioBinder, restore_from_journal

from . import fakesysfs
from .fakesysfs import FakeHost

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PF = "0000:08:00.0"  # an 82576 (igb, SR-IOV, 7 VFs), alone in group 17
VF0 = "0000:08:10.0"
OTHER = 4_000_003  # a pid no process has: the live run below is played by this process


@pytest.fixture
def host(lab: FakeHost) -> FakeHost:
    lab.add_pci("0000:00:1c.6", "8086:a33e", 0x060400, "pcieport", 16)
    lab.add_pci(PF, "8086:10c9", 0x020000, "igb", 17, parent="0000:00:1c.6")
    lab.sriov_capable(PF, 7)
    lab.add_net("enp8s0", PF)  # down, no address: idle
    lab.file(f"proc/{os.getpid()}/stat", f"{os.getpid()} (python) S " + "0 " * 18 + "4242 0\n")
    return lab


@pytest.fixture
def journal(fake_root):
    return fake_root / "var/lib/hotplug-harness/vfio-journal.json"


def _entries(journal) -> list[dict]:
    return json.loads(journal.read_text())["entries"] if journal.exists() else []


def _numvfs(host: FakeHost) -> int:
    return int((host.dev_dir(PF) / "sriov_numvfs").read_text())


def test_1_control_release_pf_leaves_a_live_runs_reliance_after_its_vf_lease_ended(host, journal):
    """Control: a live run made 2 VFs and bound VF 0 for a test, which ended (``Lease.release``
    dropped VF 0's entry; the count's entry stays to the run's ``close``). Another user's
    `release 08:00.0` (no --force) now names the run's count entry by the PF (its own
    lease): it is a live run's, so it stays ``in-use``, the count and the entry with it."""
    binder = VfioBinder(host.sysfs(), journal=journal)
    vfs = binder.enable_vfs(PF, 2)
    assert vfs[0] == VF0 and _numvfs(host) == 2
    lease = binder.bind(VF0, {VF0})
    assert host.driver_of(VF0) == "vfio-pci"
    lease.release()
    assert host.driver_of(VF0) is None
    kinds = sorted((e.get("kind", "vfio"), "set" in e) for e in _entries(journal))
    assert kinds == [("sriov", True)], kinds  # (this binder set the count: no reliance)
    # (the run is alive: another process, not this one, is its owner to `release`)
    jr = Journal(journal)
    with jr.locked():
        jr.write([{**e, "pid": os.getpid()} for e in jr.read()])
    try:
        results = restore_from_journal(host.sysfs(), journal, only={"08:00.0"},
                                       own_pids={OTHER})
    except HostDeviceError:
        results = []
    assert _numvfs(host) == 2, "a live run's VF count was written back by another's release"
    assert [e["bdf"] for e in _entries(journal)] == [PF]
    assert all(r.status == "in-use" for r in results), results


# -- 2. speakup's hardware synthesizer on a USB serial adapter --------------------------------

XHCI = "0000:07:00.0"  # the lab host's spare uPD720202 xHCI (USB bus 4)


def _synth_on_ttyusb0(host: FakeHost, synth: str = "ltlk", module: str | None = None) -> None:
    """A DoubleTalk LT on an FTDI FT232R cable in the spare xHCI's port (4-1, its tty
    ttyUSB0, 188:0), and speakup driving it: ``modprobe speakup_ltlk dev=ttyUSB0`` (the
    module's parameters are 0444 in sysfs; ``synth`` is the one speakup selected)."""
    iface = host.add_usb("4-1", 2, "0403:6001", "FT232R USB UART", "FTDI",
                         iface_driver="ftdi_sio")
    port = iface / "ttyUSB0"
    (host.sys / "bus/usb-serial/drivers/ftdi_sio").mkdir(parents=True, exist_ok=True)
    port.mkdir()
    os.symlink(host.sys / "bus/usb-serial/drivers/ftdi_sio", port / "driver")
    tty = port / "tty/ttyUSB0"
    tty.mkdir(parents=True)
    (tty / "dev").write_text("188:0\n")
    (tty / "uevent").write_text("MAJOR=188\nMINOR=0\nDEVNAME=ttyUSB0\n")
    module = module or f"speakup_{synth}"
    (host.sys / "module/speakup/parameters").mkdir(parents=True, exist_ok=True)
    params = host.sys / "module" / module / "parameters"
    params.mkdir(parents=True, exist_ok=True)
    if module != "speakup_soft":
        (params / "dev").write_text("ttyUSB0\n")
        (params / "ser").write_text("-1\n")  # (ser unset: dev names the tty)
    (params / "start").write_text("1\n")
    (host.sys / "accessibility/speakup").mkdir(parents=True, exist_ok=True)
    (host.sys / "accessibility/speakup/synth").write_text(f"{synth}\n")


def _usb(host: FakeHost, name: str):
    from harness.host.sysfs import Sysfs
    [usb] = [u for u in Sysfs(host.root).usb_devices() if u.name == name]
    return usb


def test_2_a_usb_serial_adapter_speakup_drives_is_not_handed_to_usb_host(host):
    """usb-host of the FT232R (the inventory's usb-device entry ``0403:6001``, or by its bus
    address): the kernel holds ttyUSB0 for speakup's synthesizer; the verdict must not be
    idle, and must name it."""
    from harness.host.safety import HostUsage
    _synth_on_ttyusb0(host)
    verdict = HostUsage.read(host.root).usb_verdict(_usb(host, "4-1"))
    assert not verdict.idle, verdict
    assert any("speakup" in u for u in verdict.uses), verdict.uses


def test_2b_the_xhci_above_it_is_not_taken_either(host):
    """Binding the spare xHCI (an inventory usb-controller) takes bus 4 with the synthesizer's
    adapter on it."""
    from harness.host.safety import HostUsage
    _synth_on_ttyusb0(host)
    verdict = HostUsage.read(host.root).verdict(XHCI)
    assert not verdict.idle, verdict
    assert any("speakup" in u for u in verdict.uses), verdict.uses


def test_2c_control_speakup_soft_holds_no_tty(host):
    """Control: speakup_soft (espeakup's software synth, /dev/softsynth) opens no tty: the idle
    adapter, and the xHCI above it, are still taken."""
    from harness.host.safety import HostUsage
    _synth_on_ttyusb0(host, "soft")
    usage = HostUsage.read(host.root)
    assert usage.usb_verdict(_usb(host, "4-1")).idle
    assert usage.verdict(XHCI).idle, usage.verdict(XHCI)


# -- fix 46a: the rule's edges (speakup loaded but unreadable, ser's ttyS, the re-read) --------

def test_2d_speakup_loaded_with_its_synth_unreadable_leaves_the_tty_unproven(host):
    """Speakup loaded, ``/sys/accessibility/speakup/synth`` unreadable (gone: a kernel without
    the sysfs interface): which tty it holds cannot be told, so a tty below the adapter, and
    the xHCI above it, are unproven, named."""
    from harness.host.safety import HostUsage
    _synth_on_ttyusb0(host)
    (host.sys / "accessibility/speakup/synth").unlink()
    usage = HostUsage.read(host.root)
    for verdict in (usage.usb_verdict(_usb(host, "4-1")), usage.verdict(XHCI)):
        assert not verdict.idle, verdict
        assert any("speakup" in u and "cannot be read" in u for u in verdict.uses), verdict


def test_2e_the_synths_dev_unreadable_leaves_the_tty_unproven(host):
    """The selected synth's module shows no ``dev`` parameter: unproven, named."""
    from harness.host.safety import HostUsage
    _synth_on_ttyusb0(host)
    (host.sys / "module/speakup_ltlk/parameters/dev").unlink()
    verdict = HostUsage.read(host.root).usb_verdict(_usb(host, "4-1"))
    assert not verdict.idle and any("speakup_ltlk/parameters/dev" in u for u in verdict.uses)


def test_2f_control_speakup_none_and_another_synths_tty(host):
    """Control: no synth selected (``none``) holds no tty; a synth on ``ttyS1`` (``dev`` the
    default ``ttyS0`` and ``ser=1``, speakup's ``get_dev_to_use``) holds ttyS1, not the
    adapter's ttyUSB0."""
    from harness.host.safety import HostUsage
    from harness.host.storage import _speakup_tty
    _synth_on_ttyusb0(host, "none", module="speakup_ltlk")
    assert HostUsage.read(host.root).usb_verdict(_usb(host, "4-1")).idle
    assert _speakup_tty("ttyS0", "1") == "ttyS1" and _speakup_tty("ttyS0", "0") == "ttyS0"
    assert _speakup_tty("ttyUSB0", "-1") == "ttyUSB0" and _speakup_tty(None, "0") is None
    (host.sys / "module/speakup_ltlk/parameters/dev").write_text("ttyS0\n")
    (host.sys / "module/speakup_ltlk/parameters/ser").write_text("1\n")
    (host.sys / "accessibility/speakup/synth").write_text("ltlk\n")
    assert HostUsage.read(host.root).usb_verdict(_usb(host, "4-1")).idle


def test_2g_a_synth_selected_after_the_proof_is_refused_under_the_claim(host):
    """Selected between the proof and the hand-over (``echo ltlk > .../speakup/synth``): the
    re-read under the claim (:func:`_held_since`, the proof's own code) refuses it."""
    from harness.host.binding import _claimed_view, _held_since
    _synth_on_ttyusb0(host, "none", module="speakup_ltlk")
    fs = host.sysfs()
    path = str(_usb(host, "4-1").path)
    _held_since(fs, [("usb-host 4-1", path)], "the hand-over", _claimed_view(fs, [], set()))
    (host.sys / "accessibility/speakup/synth").write_text("ltlk\n")
    with pytest.raises(HostDeviceError, match="speakup"):
        _held_since(fs, [("usb-host 4-1", path)], "the hand-over", _claimed_view(fs, [], set()))


def test_2h_the_braille_console_on_the_adapter_is_not_taken(host):
    """``console=brl,ttyUSB0`` on the command line: the kernel's braille console reads the
    console out on a braille display through the adapter, in no /proc/consoles line and with
    no process fd; the adapter and the xHCI above it are in use, named. Control: a serial
    console elsewhere (``console=ttyS0``) is not the adapter's."""
    from harness.host.safety import HostUsage
    _synth_on_ttyusb0(host, "none", module="speakup_ltlk")
    host.file("proc/cmdline", "BOOT_IMAGE=/vmlinuz ro console=ttyS0,115200n8\n")
    assert HostUsage.read(host.root).usb_verdict(_usb(host, "4-1")).idle
    host.file("proc/cmdline", "BOOT_IMAGE=/vmlinuz ro console=brl,ttyUSB0 quiet\n")
    usage = HostUsage.read(host.root)
    for verdict in (usage.usb_verdict(_usb(host, "4-1")), usage.verdict(XHCI)):
        assert not verdict.idle, verdict
        assert any("braille console" in u for u in verdict.uses), verdict


def test_2i_the_default_dev_with_ser_unreadable_is_unproven_naming_ser(host):
    """``dev`` the default ``ttyS0`` and ``ser`` unreadable: ttyS0 or ttyS<ser> cannot be told
    apart, so the tty is unproven, naming ``ser``."""
    from harness.host.safety import HostUsage
    _synth_on_ttyusb0(host)
    (host.sys / "module/speakup_ltlk/parameters/dev").write_text("ttyS0\n")
    (host.sys / "module/speakup_ltlk/parameters/ser").unlink()
    verdict = HostUsage.read(host.root).usb_verdict(_usb(host, "4-1"))
    assert not verdict.idle and any("parameters/ser cannot be read" in u for u in verdict.uses)
