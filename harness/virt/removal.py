"""Removal through libvirt: ``detach-device-alias`` and the verdicts, named as the QMP
driver names them (harness.qemu.monitor): removed (with or without libvirt's
``device-removed``), ``paused``, ``guest-refused``, ``guest-slow``, ``qemu-stuck``."""

from __future__ import annotations

import threading
import time

from harness.core.errors import HarnessError, UnplugError
from harness.qemu.monitor import BUSY, Monitor, UnplugResult
from harness.virt import connect, vcpus
from harness.virt.connect import LibvirtCommandError

#: libvirt's flag for the running domain, and its state "paused" (virDomainState).
AFFECT_LIVE, PAUSED = 1, 3


def detach(guest, device_id: str, deadline: float) -> float:
    """``detach-device-alias``; how long QEMU answered that the slot was busy. libvirt
    (9.0) hands QEMU's "guest is busy (power indicator blinking)" to its caller as is: a
    PCIe slot still blinking from the hot-add. As the QMP driver does, the request is sent
    again (20 ms, doubling to 0.5 s) until QEMU takes it or the deadline passes."""
    t0, wait = time.monotonic(), 0.02
    while True:
        try:
            _detach_once(guest, device_id, deadline)
            return time.monotonic() - t0 if wait > 0.02 else 0.0
        except LibvirtCommandError as e:
            if not BUSY.search(e.qemu_desc) or time.monotonic() + wait > deadline:
                raise
        time.sleep(wait)  # (the slot's answer to the next request is the signal: no event)
        wait = min(wait * 2, 0.5)

def _detach_once(guest, device_id: str, deadline: float) -> None:
    """One request. libvirt waits for QEMU's answer as long as it takes, so it runs in a
    thread: no answer by ``deadline`` is the verdict ``qemu-stuck``."""
    name, box = guest.qemu_id(device_id), {}

    def request() -> None:
        try:
            if device_id in guest.vcpus:
                vcpus.request_removal(guest, device_id)
                return
            guest._call(lambda: guest.dom.detachDeviceAlias(name, AFFECT_LIVE),
                       f"detach-device-alias {name}")
        except HarnessError as e:
            box["error"] = e

    worker = threading.Thread(target=request, name=f"detach-{name}", daemon=True)
    worker.start()
    worker.join(max(1.0, deadline - time.monotonic()))
    if worker.is_alive():
        raise UnplugError(device_id, "qemu-stuck", f"detach {name}: libvirt did not answer in "
                          f"{guest.deadlines.unplug:g} s: its monitor waits for QEMU, which does "
                          "not answer", hint="QEMU is hung: see its log in the bundle")
    if "error" in box:
        raise box["error"]

def unless_paused(guest, ids: list[str], waits: dict, t0: float, timeout: float) -> None:
    """A paused domain's guest cannot release anything: after a short look, say so."""
    state = guest._call(lambda: guest.dom.state()[0], "read the domain's state")
    if state != PAUSED:
        return
    for i in ids:
        if waits[i].wait(t0 + min(timeout, Monitor.stopped_window) - time.monotonic()) != "removed":
            raise UnplugError(i, "paused", f"detach {guest.qemu_id(i)}: the domain is paused, "
                              "so the guest cannot release the device; no device-removed in "
                              f"{time.monotonic() - t0:.1f} s. The request stands: it completes "
                              "once the domain runs", hint="resume it (virsh resume) and wait")


def verdict(guest, device_id: str, events: connect.DeviceEvents, t0: float,
             timeout: float, grace: float = 0.0) -> UnplugResult:
    if device_id in guest.vcpus:
        return vcpus.verdict(guest, device_id, t0, timeout)
    name = guest.qemu_id(device_id)
    outcome = events.wait(t0 + timeout - time.monotonic())
    if outcome is None and grace and events.wait(grace) == "removed":
        raise UnplugError(device_id, "guest-slow", f"detach {name}: device-removed came after "
                          f"{events.at - t0:.1f} s, past the {timeout:.1f} s deadline",
                          hint="the guest is slow to release the device; raise the deadline "
                               "only if this is expected")
    if outcome == "removed":
        return UnplugResult(device_id, events.at - t0, event=True)
    if outcome == "failed":
        raise UnplugError(device_id, "guest-refused", f"detach {name}: libvirt reported "
                          f"device-removal-failed after {events.at - t0:.2f} s",
                          hint="check the guest's dmesg in the bundle")
    try:
        present = guest.lists(device_id, guest.live_xml())
    except HarnessError:
        raise UnplugError(device_id, "qemu-stuck", f"detach {name}: no device-removed in "
                          f"{timeout:.1f} s and libvirt no longer answers for the domain",
                          hint="see libvirt's log and QEMU's log in the bundle") from None
    if not present:
        late = events.wait(Monitor.settle_seconds)
        return UnplugResult(device_id, time.monotonic() - t0, event=late == "removed")
    raise UnplugError(device_id, "guest-refused",
                      f"detach {name}: no device-removed in {timeout:.1f} s; libvirt answers "
                      "and the live XML still lists the device, so the guest never released it",
                      hint="the guest must support PCI hotplug and its driver must let go")
