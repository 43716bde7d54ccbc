"""A host USB device handed to QEMU's ``usb-host``, proven idle again right before each plug.

The session's doctor proves the inventory's USB devices idle when the run starts; a run lasts
hours, and in between someone may mount the stick, start a serial console on it, or replug it
(another device then gets its bus address, or a twin with the same ids appears, and usb-host's
``vendorid``/``productid`` form would take whichever it finds first). So each plug finds the
device again from the inventory entry, checks it is still the one named, reads the host's
evidence again (:meth:`harness.host.safety.HostUsage.usb_verdict`) and refuses, naming what it
saw, unless it is idle. The check and QEMU's open of ``/dev/bus/usb/BBB/DDD`` happen under the
vfio journal's lock, so that another run of the harness cannot take the device in between, and
with the device's disks claimed (as vfio's move claims them), so that nothing mounts them.

Right after a guest gives the device back, the host's drivers take it again and udev probes
it (blkid opens a stick's disk for a moment): evidence of use is read again for a short while
before the plug is refused.

QEMU detaches the host drivers of the device's interfaces when it opens it and binds them back
only when it closes it cleanly: one that aborts or is killed leaves them on no driver (the
stick's disk, a USB NIC's interface, a serial adapter's tty gone until someone replugs it). So
each hand-over is journaled before QEMU opens the device (:meth:`UsbHandovers.handed`), and
given back when its plug ends (:meth:`UsbHandovers.give_back`, from the plug's clean-up once
the guest let it go or is gone), by the binder's close, or by `restore` after a run that died.
Until then the device, idle as it reads, is refused to every other hand-over (another run's, a
dead run's left for `restore`), as the PCI bind refuses a group another lease holds.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from harness.core.errors import HostDeviceError, WaitTimeout
from harness.core.waits import wait_until
from harness.host.binding import (VfioBinder, disks_claimed, refuse_outside_host,
                                  refuse_usb_handed)
from harness.host.safety import HostUsage, Verdict, disks_below
from harness.host.sysfs import Sysfs, UsbDevice

#: The inventory's forms of naming a USB device to usb-host (the guide's ``usb_add host:...``).
FORMS = ("busaddr", "vidpid")


def find_for_plug(fs: Sysfs, entry, form: str) -> UsbDevice:
    """The one host USB device ``entry`` names in ``form``, or a HostDeviceError saying why
    there is none or more than one (a replugged device, a twin plugged in since the start)."""
    wanted = f"{entry.vendorid[2:]}:{entry.productid[2:]}" if entry.vendorid else None
    usb = fs.usb_devices()
    if form == "busaddr":
        at = [u for u in usb if (u.busnum, u.devnum) == (entry.hostbus, entry.hostaddr)]
        if not at:
            raise HostDeviceError(f"refusing usb-host for {entry.name}: no USB device at bus "
                                  f"{entry.hostbus} address {entry.hostaddr} any more",
                                  hint="it was unplugged or replugged (its address changes): "
                                       "`lsusb`, then fix the inventory")
        if wanted and at[0].ids != wanted:
            raise HostDeviceError(f"refusing usb-host for {entry.name}: bus {entry.hostbus} "
                                  f"address {entry.hostaddr} is now {at[0].ids}, not {wanted}",
                                  hint="the device was replugged and another one took its "
                                       "address: `lsusb`, then fix the inventory")
        return at[0]
    twins = [u for u in usb if u.ids == wanted]
    if len(twins) != 1:
        where = ", ".join(f"bus {u.busnum} addr {u.devnum}" for u in twins) or "none"
        raise HostDeviceError(f"refusing usb-host vendorid=0x{entry.vendorid[2:]},productid="
                              f"0x{entry.productid[2:]} for {entry.name}: {len(twins)} devices "
                              f"on this host have those ids ({where})",
                              hint="usb-host would take whichever it finds first: plug only "
                                   "the one, or use the hostbus/hostaddr form")
    return twins[0]


def proven_idle(fs: Sysfs, entry, form: str, settle: float) -> tuple[UsbDevice, Verdict]:
    """The device and its verdict once it reads idle, within ``settle`` seconds; raises with
    the last evidence of use otherwise."""
    seen: dict = {}

    def idle() -> bool:
        usb = find_for_plug(fs, entry, form)
        seen["usb"], seen["verdict"] = usb, HostUsage.read(fs).usb_verdict(
            usb, bool(getattr(entry, "no_host_filesystems", False)))
        return seen["verdict"].idle

    try:
        wait_until(f"USB {entry.name} idle", idle, timeout=settle, interval=0.25)
    except WaitTimeout:
        usb, verdict = seen["usb"], seen["verdict"]
        raise HostDeviceError(f"refusing usb-host for {entry.name} (USB {usb.name} "
                              f"[{usb.ids}]): " + "; ".join(verdict.uses),
                              hint="something on the host took it since the run started: "
                                   "stop that, or take it out of the inventory") from None
    return seen["usb"], seen["verdict"]


@contextlib.contextmanager
def handed(binder: VfioBinder, entry, form: str) -> Iterator[UsbDevice]:
    """Hold the vfio journal lock while ``entry``'s device is proven idle and the caller's
    ``device_add usb-host`` opens it."""
    if form not in FORMS:
        raise ValueError(f"form {form!r} is not one of {FORMS}")
    refuse_outside_host(binder.fs, f"hand {entry.name} to usb-host", journal=binder.journal.path)
    proven_idle(binder.fs, entry, form, binder.timeout)  # (the settle, outside the lock)
    with binder.journal.locked():
        usb, _ = proven_idle(binder.fs, entry, form, 0.0)
        refusing = f"refusing usb-host for {entry.name} (USB {usb.name} [{usb.ids}])"
        # Another hand-over of it still journaled (a killed QEMU's, its interfaces on no
        # driver: idle to the proof) is that run's, or `restore`'s, to give back first.
        refuse_usb_handed(binder.fs, usb, binder.journal.read(), refusing, binder.usb.entries)
        # Its disks claimed from the proof until QEMU has opened the device (usb-storage lets
        # go of them then), and their users read again once claimed: the proof read the
        # storage seconds before its network read, and a mount in between (udisks' automount,
        # a backup job) would lose its disk under it. The open files are read again before
        # and after its network interfaces (a USB NIC that NetworkManager brings up
        # meanwhile), and judged as the proof judges them: its nodes, a GPIO line requested
        # of its chip (a relay's), a driver that took it (usbip-host).
        # Journaled before QEMU opens it: QEMU detaches its interfaces' drivers, and only a
        # clean close binds them back (a QEMU that aborts or is killed leaves them on none).
        with binder.usb.handed(usb), \
                disks_claimed(binder.fs, [(refusing, name) for name in
                                          disks_below(binder.fs, usb.path)], "QEMU opens it",
                              [(refusing, usb.path)]):  # (its nodes, GPIO lines, drivers)
            yield usb
