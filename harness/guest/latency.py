"""Hotplug latencies from guest-side timestamps.

The built-in guest's kernel records, through kprobes on ``device_add``, ``driver_bound`` and
``device_del``, every device's name on the clock of ``/proc/uptime`` (tracefs, trace_clock
"boot"); its DHCP hook logs each lease to ``/run/hh/events``. With the offset between the host's
monotonic clock and the guest's uptime (one shell round trip, good to half of it), each guest
event becomes a host time, and each latency runs from the moment ``device_add`` /
``device_del`` was sent, not from when a poll happened to look.
"""

from __future__ import annotations

import dataclasses
import re
import time

TRACE_COMMAND = "grep -v '^#' /sys/kernel/tracing/trace; echo --events; cat /run/hh/events"

_TRACE_LINE = re.compile(r"\s(\d+\.\d+): (dev_add|dev_del|bound): \([^)]*\) name=\"([^\"]*)\"")
_USB_DEVICE = re.compile(r"^\d+-[\d.]+$")            # "1-1", "2-1.3"; interfaces have a colon
_NET = re.compile(r"^(eth|en|wl)\w+$")
_DISK = re.compile(r"^(sd[a-z]+|vd[a-z]+|nvme\d+n\d+)$")


@dataclasses.dataclass(frozen=True)
class ClockOffset:
    """host_monotonic = guest_uptime + offset, within +/- ``error`` seconds."""

    offset: float
    error: float

    def to_host(self, uptime: float) -> float:
        return uptime + self.offset


def measure_offset(guest, tries: int = 3) -> ClockOffset:
    """Keep the tightest of a few round trips of ``cat /proc/uptime``."""
    best: ClockOffset | None = None
    for _ in range(tries):
        t0 = time.monotonic()
        out = guest.shell.succeed("cat /proc/uptime", timeout=10)
        t1 = time.monotonic()
        c = ClockOffset((t0 + t1) / 2 - float(out.split()[0]), (t1 - t0) / 2)
        if best is None or c.error < best.error:
            best = c
    return best


@dataclasses.dataclass(frozen=True)
class GuestEvent:
    uptime: float
    kind: str      # dev_add, bound, dev_del (kernel), dhcp-bound (DHCP hook)
    name: str      # device name ("0000:01:00.0", "eth0", "1-1", "sda"), or interface


def parse_trace(text: str) -> list[GuestEvent]:
    """The output of :data:`TRACE_COMMAND`: kprobe trace lines, then the events log."""
    trace, _, log = text.partition("--events")
    out = [GuestEvent(float(m[1]), m[2], m[3]) for m in _TRACE_LINE.finditer(trace)]
    for line in log.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "dhcp-bound":
            out.append(GuestEvent(float(parts[0]), "dhcp-bound", parts[2]))
    return sorted(out, key=lambda e: e.uptime)


def _after(events: list[GuestEvent], clock: ClockOffset, since: float):
    # The offset is only known to +/- its error: keep events up to that much "early".
    return [(clock.to_host(e.uptime) - since, e) for e in events
            if clock.to_host(e.uptime) >= since - clock.error]


def plug_latencies(events: list[GuestEvent], clock: ClockOffset, add_sent: float,
                   pci_address: str | None) -> dict[str, float]:
    """From ``device_add`` sent to: the device added in the guest kernel, its driver bound, a
    network interface added and addressed, a disk present -- whichever happened.

    ``pci_address`` (``01:00.0``) names a PCI device; None means the first new USB device."""
    out: dict[str, float] = {}
    device = f"0000:{pci_address}" if pci_address else None
    iface = None
    for dt, e in _after(events, clock, add_sent):
        if "guest_visible" not in out:
            if e.kind == "dev_add" and (e.name == device or (device is None and _USB_DEVICE.match(e.name))):
                device = e.name
                out["guest_visible"] = dt
            continue
        if e.kind == "bound" and e.name == device:
            out.setdefault("driver_bound", dt)
        elif e.kind == "dev_add" and _NET.match(e.name) and iface is None:
            iface = e.name
            out["interface_added"] = dt
        elif e.kind == "dhcp-bound" and e.name == iface:
            out.setdefault("interface_addressed", dt)
        elif e.kind == "dev_add" and _DISK.match(e.name):
            out.setdefault("disk_present", dt)
    return {k: round(v, 4) for k, v in out.items()}


def unplug_latency(events: list[GuestEvent], clock: ClockOffset, del_sent: float,
                   pci_address: str | None, usb_name: str | None = None) -> dict[str, float]:
    """From ``device_del`` sent to the device leaving the guest kernel (``device_del``)."""
    name = f"0000:{pci_address}" if pci_address else usb_name
    for dt, e in _after(events, clock, del_sent):
        if e.kind == "dev_del" and name and e.name == name:
            return {"guest_gone": round(dt, 4)}
    return {}


def usb_device_name(events: list[GuestEvent], clock: ClockOffset, add_sent: float) -> str | None:
    """The kernel name ("1-1") of the first USB device added after ``add_sent``."""
    for _, e in _after(events, clock, add_sent):
        if e.kind == "dev_add" and _USB_DEVICE.match(e.name):
            return e.name
    return None
