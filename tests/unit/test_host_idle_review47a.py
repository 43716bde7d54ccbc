"""Issue 31, read 47a (devices side: what the kernel opens by itself for a device below a
USB controller, storage controller or NIC, after 46a's ``kernel_ttys``), on main at 458a7c1.
What it found, one section below (numbered as its tests):

1. (low likelihood: a pointer user that reads the PS/2 name; the node itself is on every
   Debian kernel, whose ``debian/config/config`` sets ``CONFIG_INPUT_MOUSEDEV=y`` and
   ``CONFIG_INPUT_MOUSEDEV_PSAUX=y``) ``/dev/psaux`` is the same multiplexed mouse as
   ``/dev/input/mice``, under another name and number. mousedev registers it as the misc
   device ``psaux`` (10:1, ``PSMOUSE_MINOR``, ``/sys/devices/virtual/misc/psaux``: below no
   device), and ``mousedev_open`` opens ``mousedev_mix`` for any node of ``MISC_MAJOR``:
   every mouse, touchpad and tablet with a ``mouseN`` node feeds it, exactly as they feed
   ``mice`` (13:63). :meth:`harness.host.safety.HostUsage._nodes` asks who holds the mixed
   device by ``opened.users("char", "input/mice", "13:63")`` alone, so a process that reads
   the pointer through ``/dev/psaux`` (gpm's ``-m /dev/psaux -t imps2``, an old ``xorg.conf``
   ``InputDevice`` with ``Option "Device" "/dev/psaux"``, a kiosk container given
   ``--device /dev/psaux``) holds no node below the controller and is not seen; the USB mouse
   4-1 and the xHCI above it read idle ("device node(s) below ... open by no process"), and
   the take silences the console's pointer, which the rule's own "a mouse below it feeds
   /dev/input/mice, open by ..." refusal is there to prevent. Safe: the mixed device is held
   through either of its nodes, ``input/mice`` (13:63) or ``psaux`` (10:1), by path or number
   (tests 1, 1b; control 1c: ``psaux`` held with no mouse below the controller takes nothing
   from it).

Looked at, no finding (each held, is a stated limit, an over-refusal, or not a real shape):

* fix 46a (:func:`harness.host.storage._kernel_ttys`): speakup's synths map one to one to
  their modules (``speakup_<synth>``: acntsa, apollo, audptr, bns, decext, dectlk, dummy,
  ltlk, spkout, txprt; the ISA ones, acntpc, dtlk, keypc, have no ``dev`` and fail closed);
  ``get_dev_to_use`` is mirrored by :func:`_speakup_tty`; the braille console's ``brl=OPTS,``
  form (``_braille_console_setup``) works only since ``str_has_prefix`` (the older code
  compared the pointer, ``memcmp(str, "brl=", 4)``), ``braille_register_console`` ignores
  the options, and only ``console=brl,`` is documented: not a shape a host shows; the
  usb-serial console registers only for the minor-0 port, whose name the regex takes;
  bootconfig's ``kernel.console`` is in /proc/cmdline.
* other in-kernel tty openers: ``tty_kopen_exclusive`` has speakup alone, ``tty_kopen_shared``
  ledtrig-tty alone; kgdboc needs ``poll_init``/``poll_get_char``, which no usb-serial or
  cdc-acm driver has (its ``kbd`` reads the i8042 only); line disciplines live only while a
  process keeps the tty open (``tty_release`` drops them): pps-ldisc, n_gsm, slcan, hci_uart,
  6pack/mkiss, can327.
* input: the ``kbd`` handler attaches to every keyboard on a VT kernel (``sysrq`` and
  ``leds`` only beside it); ``rfkill``'s and ``apm-power``'s handlers act on key presses
  only; joydev/evdev nodes are below the device; ``inputattach``'s serio sits below the tty.
* sound: the sequencer's kernel-to-kernel subscriptions made by ``aconnect``, which then
  exits, leave the dead opener's ``Owner PID`` in /proc/asound (``pid_vnr`` of the pid kept
  by ``get_pid``), which :func:`_midi_held_by_the_kernel` counts whatever the pid.
* storage, non-exclusive kernel openers (the claim catches every exclusive one: md, dm,
  bcache, zram, DRBD, block2mtd, pstore/blk's ``O_EXCL``, swap, every filesystem and its
  external log, LIO iblock): nvmet bdev/passthru, LIO fileio and pscsi (a pscsi non-disk
  with no ``udev_path`` fails closed), xen-blkback and rnbd_server (the name pattern), the
  USB gadget's LUNs, pktcdvd, o2hb, the pNFS block layout, loop's direct backing; a
  lazily unmounted filesystem keeps its claim; blktrace's sysfs ``trace/enable`` is no use.
* USB controller: DbC, the kept early consoles, ``kgdbdbgp``/``earlyprintk`` parameters,
  usbmon; EHCI companions share their slot's IOMMU group (multifunction without ACS; the
  override is refused); the whitelisted interface drivers' kernel users (hiddev, hidraw,
  the HID battery's power_supply, ALSA's ``ctl-led``: none that holds or harms).
* NIC (devices side): ULDs that attach through ``symbol_get`` (cnic on bnx2x) put their SCSI
  hosts below the function and need the port up; soft RoCE/iWARP (rxe, siw), AoE, FCoE need
  it up; PTP pins, PPS pulses, PHYs on another MAC's bus were read already. Not a test, a
  note: a driver built into the kernel has no ``holders`` folder, so a ULD module that
  works through it (chcr on a ``CONFIG_CHELSIO_T4=y`` kernel) shows in no holders list
  (:func:`_modules_through_driver` then returns none); only custom kernels build it so.

Tests 1 and 1b fail on 458a7c1; 1c is a control and passes. A fake sysfs/proc tree plays the
host (:mod:`.fakesysfs`'s lab host); no guest is booted.
"""

from __future__ import annotations

import os

from harness.host.safety import HostUsage
from harness.host.sysfs import Sysfs

from . import fakesysfs
from .fakesysfs import FakeHost
from .test_host_idle_review import hold_by_number

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
XHCI = "0000:07:00.0"  # USB bus 4, nothing on it: idle on the lab host
MISC_MAJOR, PSMOUSE_MINOR = 10, 1


def _usb_mouse(host: FakeHost) -> None:
    """A USB mouse 4-1 on 07:00.0, its input device with ``mouse1`` and ``event9``, as
    /proc/bus/input/devices lists it (no kbd handler: not a console keyboard)."""
    iface = host.add_usb("4-1", 2, "046d:c077", "USB Optical Mouse", "Logitech")
    inp = iface / "0003:046D:C077.0009/input/input9"
    for name, majmin in (("mouse1", "13:33"), ("event9", "13:73")):
        (inp / name).mkdir(parents=True)
        (inp / name / "dev").write_text(f"{majmin}\n")
        (inp / name / "uevent").write_text(f"DEVNAME=input/{name}\n")
    host.proc("bus/input/devices",
              'I: Bus=0003 Vendor=046d Product=c077\nN: Name="Logitech USB Optical Mouse"\n'
              f"S: Sysfs=/{inp.relative_to(host.sys)}\nH: Handlers=mouse1 event9\n\n")


def _psaux(host: FakeHost) -> None:
    """mousedev's PS/2 name of the mixed device (``CONFIG_INPUT_MOUSEDEV_PSAUX``): the misc
    device ``psaux``, 10:1, below no device."""
    d = host.sys / "devices/virtual/misc/psaux"
    d.mkdir(parents=True)
    (d / "dev").write_text(f"{MISC_MAJOR}:{PSMOUSE_MINOR}\n")
    (d / "uevent").write_text(f"MAJOR={MISC_MAJOR}\nMINOR={PSMOUSE_MINOR}\nDEVNAME=psaux\n")
    (host.sys / "class/misc").mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(d, host.sys / "class/misc"), host.sys / "class/misc/psaux")


def _gpm_on_psaux(host: FakeHost, tmp_path) -> None:
    """gpm reading the pointer through /dev/psaux (``gpm -m /dev/psaux -t imps2``): a real
    node of 10:1, matched by number (the fake tree's /dev holds no nodes)."""
    _psaux(host)
    hold_by_number(host, 4107, "gpm", MISC_MAJOR, PSMOUSE_MINOR, tmp_path / "dev/psaux")


def test_1_a_mouse_whose_psaux_node_gpm_holds_is_not_handed_to_usb_host(lab, tmp_path):
    """usb-host of the mouse 4-1 (an inventory usb-device): gpm reads every mouse through
    /dev/psaux, mousedev's other name of /dev/input/mice; the verdict must not be idle, and
    must name the holder."""
    _usb_mouse(lab)
    [usb] = [u for u in Sysfs(lab.root).usb_devices() if u.name == "4-1"]
    assert HostUsage.read(lab.root).usb_verdict(usb).idle  # (nothing holds the mix yet)
    _gpm_on_psaux(lab, tmp_path)
    v = HostUsage.read(lab.root).usb_verdict(usb)
    assert not v.idle, f"the mouse gpm reads through /dev/psaux was judged idle: {v.evidence}"
    assert any("4107" in u for u in v.uses), v.uses


def test_1b_the_xhci_below_which_that_mouse_sits_is_not_taken(lab, tmp_path):
    """Binding the spare xHCI 07:00.0 (an inventory usb-controller) takes the mouse with it."""
    _usb_mouse(lab)
    _gpm_on_psaux(lab, tmp_path)
    v = HostUsage.read(lab.root).verdict(XHCI)
    assert not v.idle, f"the xHCI whose mouse gpm reads through /dev/psaux is idle: {v.evidence}"
    assert any("4107" in u for u in v.uses), v.uses


def test_1c_control_psaux_held_with_no_mouse_below_takes_nothing_from_the_xhci(lab, tmp_path):
    """Control: gpm on /dev/psaux, but no mouse below 07:00.0 (only its root hubs): the xHCI
    is still idle, as with /dev/input/mice held and no mouse below."""
    _gpm_on_psaux(lab, tmp_path)
    v = HostUsage.read(lab.root).verdict(XHCI)
    assert v.idle, v.uses
