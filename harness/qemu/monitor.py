"""Async QMP verbs over ``qemu.qmp``: the monitor side of every hotplug.

Every message sent and received, and every event, goes to a JSON-lines transcript with a
timestamp, so a failure bundle shows exactly what QEMU was told and what it said.

No call waits without a deadline: each verb takes one, or uses ``Monitor.command_timeout``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any, Callable

from qemu.qmp import ConnectError, ExecuteError, QMPClient

from harness.core.errors import GuestDiedError, QMPCommandError, UnplugError, WaitTimeout


@dataclasses.dataclass(frozen=True)
class UnplugResult:
    """How a ``device_del`` ended. ``event`` is False when the device left QEMU's device tree
    without a DEVICE_DELETED event (a QEMU bug the caller must report, not hide)."""

    device_id: str
    seconds: float
    event: bool
    #: How long QEMU answered that the slot was busy before it took the request (a PCIe slot
    #: whose power indicator still blinks from the hot-add; 0 when it took it at once).
    busy_seconds: float = 0.0


#: QEMU's answer to a device_del it cannot take yet: since 6.2, a PCIe slot whose power
#: indicator still blinks from the hot-add ("guest is busy (power indicator blinking)").
BUSY = re.compile(r"busy|blinking", re.I)
#: ... and to one it already has (an earlier request stands: only its completion is left).
_PENDING = re.compile(r"already in the process of unplug", re.I)


class Monitor:
    """One QMP connection to one QEMU, with a transcript.

    >>> mon = Monitor(Path("qmp.jsonl"))                                   # doctest: +SKIP
    >>> await mon.connect("/tmp/hh-x/qmp.sock", timeout=10)                # doctest: +SKIP
    >>> await mon.device_add("e1000e", "nic0", bus="rp0", netdev="n0")     # doctest: +SKIP
    >>> (await mon.device_del("nic0", timeout=10)).seconds                 # doctest: +SKIP
    0.21
    """

    command_timeout = 30.0
    #: How long a device that left the device tree may take to send DEVICE_DELETED.
    settle_seconds = 2.0
    #: How long device_del watches a stopped VM before its verdict "paused" (its caller's
    #: deadline when shorter).
    stopped_window = 3.0

    def __init__(self, transcript: Path):
        self._qmp = QMPClient("hotplug-harness")
        self._transcript = open(transcript, "a", buffering=1)
        self._events_task: asyncio.Task | None = None
        self.version: dict = {}
        self.connect_seconds: float | None = None
        self.resets = 0  # RESET events seen: a reboot started inside the guest has happened

    def _record(self, direction: str, message: Any) -> None:
        if not self._transcript.closed:
            self._transcript.write(json.dumps({"t": round(time.time(), 6), "dir": direction,
                                               "msg": message}, default=str) + "\n")

    async def _drain_events(self) -> None:
        # Draining the client's default listener records every event and keeps its queue short.
        async for event in self._qmp.events:
            self._record("event", dict(event))
            self.resets += event.get("event") == "RESET"

    # -- connection ---------------------------------------------------------------------------

    async def connect(self, path: str, timeout: float,
                      gone: Callable[[], str | None] = lambda: None) -> None:
        """Connect to QEMU's QMP socket, retrying until ``timeout`` while QEMU creates it.

        ``gone`` says why QEMU can no longer answer (it exited), or None: a QEMU that died
        ends the wait at once instead of at the deadline. No connection by the deadline raises
        :class:`WaitTimeout` (a QEMU that starts too slowly, like a guest that boots too
        slowly: the caller may start another)."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            why = gone()
            if why:
                raise GuestDiedError(f"QEMU exited before its QMP socket {path} answered: {why}",
                                     hint="see QEMU's output below")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(f"no QMP connection on {path} within {timeout:g} s (the "
                                  "socket "
                                  f"{'does not answer' if Path(path).exists() else 'was not created'})",
                                  hint="QEMU starts too slowly on this machine: see the time "
                                       "factor in the run header, or pass --time-factor")
            if not Path(path).exists():
                await asyncio.sleep(min(0.05, remaining))  # QEMU creates it early in its start-up
                continue
            try:
                await asyncio.wait_for(self._qmp.connect(path), max(0.1, remaining))
                break
            except (ConnectError, asyncio.TimeoutError):
                await asyncio.sleep(0.05)  # the socket exists but does not accept yet
        self.connect_seconds = time.monotonic() - t0
        self._events_task = asyncio.get_running_loop().create_task(self._drain_events())
        self.version = await self.execute("query-version", timeout=timeout)

    async def close(self) -> None:
        if self._events_task:
            self._events_task.cancel()
            try:
                await self._events_task
            except (asyncio.CancelledError, Exception):
                pass
            self._events_task = None
        try:
            await asyncio.wait_for(self._qmp.disconnect(), 5)
        except Exception:
            pass  # QEMU is gone or going; the process owner reaps it
        self._transcript.close()

    # -- commands -----------------------------------------------------------------------------

    async def execute(self, command: str, arguments: dict | None = None, *,
                      timeout: float | None = None, record: bool = True) -> Any:
        """Run one QMP command. QEMU's refusal becomes :class:`QMPCommandError`."""
        arguments = arguments or {}
        if record:
            self._record("send", {"execute": command, "arguments": arguments})
        try:
            result = await asyncio.wait_for(self._qmp.execute(command, arguments),
                                            timeout or self.command_timeout)
        except ExecuteError as e:
            if record:
                self._record("recv", {"error": {"class": e.error_class, "desc": e.error.error.desc}})
            raise QMPCommandError(command, arguments, e.error_class, e.error.error.desc) from e
        if record:
            self._record("recv", {"return": result})
        return result

    async def hmp(self, command_line: str, *, timeout: float | None = None) -> str:
        """A human monitor command (``info pci``, ``info usb``) as the guide types it."""
        return await self.execute("human-monitor-command", {"command-line": command_line},
                                  timeout=timeout)

    async def device_add(self, driver: str, device_id: str, **props: Any) -> float:
        """``device_add driver,id=device_id,props...``; returns the seconds it took."""
        t0 = time.monotonic()
        await self.execute("device_add", {"driver": driver, "id": device_id, **props})
        return time.monotonic() - t0

    async def _present(self, device_id: str) -> bool:
        children = await self.execute("qom-list", {"path": "/machine/peripheral"},
                                      timeout=5, record=False)
        return any(c["name"] == device_id for c in children)

    async def device_del(self, device_id: str, *, timeout: float, grace: float = 10.0,
                         poll: float = 0.25) -> UnplugResult:
        """``device_del`` and wait for this device's DEVICE_DELETED.

        The listener is opened before the command, so a fast unplug cannot be missed. While
        waiting, the device tree is checked every ``poll`` seconds, so a device that leaves
        without an event (QEMU 7.2's xhci does) ends the wait at once with ``event=False``.

        On no completion by ``timeout``, one of :class:`UnplugError`'s verdicts:
        ``guest-slow`` (the event came within ``grace`` after the deadline), ``guest-refused``
        (DEVICE_UNPLUG_GUEST_ERROR, or no event while QEMU stayed responsive) or ``qemu-stuck``.
        """
        names = ("DEVICE_DELETED", "DEVICE_UNPLUG_GUEST_ERROR")
        with self._qmp.listener(names) as listener:
            t0 = time.monotonic()
            busy = await self._request_unplug(device_id, t0 + timeout)
            status = (await self.execute("query-status", timeout=5, record=False))["status"]
            if status != "running":
                # A stopped VM's guest cannot release anything: no DEVICE_DELETED can come (a
                # suite that waits 120 s for one learns nothing). Watch a short window, then say so.
                done = await self._until_deleted(listener, device_id, t0, t0 + min(timeout, self.stopped_window), poll)
                if done is None:
                    raise UnplugError(device_id, "paused",
                                      f"device_del {device_id}: the VM is {status}, so the guest "
                                      f"cannot release the device; no DEVICE_DELETED in "
                                      f"{time.monotonic() - t0:.1f} s. The request stands: it "
                                      "completes once the VM runs (cont)",
                                      hint="resume the VM (QMP cont) and wait for the removal")
                return dataclasses.replace(done, busy_seconds=busy)
            done = await self._until_deleted(listener, device_id, t0, t0 + timeout, poll)
            result = done or await self._verdict_after_deadline(listener, device_id, t0, timeout, grace)
            return dataclasses.replace(result, busy_seconds=busy)

    async def _request_unplug(self, device_id: str, deadline: float) -> float:
        """Send ``device_del``. While QEMU answers that the slot is busy, ask again (20 ms,
        doubling to 0.5 s, bounded by ``deadline``): the answer to each request is the signal,
        there is no QMP event for a power indicator. Returns how long the slot was busy (0.0 when
        the first request was taken)."""
        t0, wait = time.monotonic(), 0.02
        while True:
            try:
                await self.execute("device_del", {"id": device_id},
                                   timeout=max(1.0, min(deadline - time.monotonic(), self.command_timeout)))
                return time.monotonic() - t0 if wait > 0.02 else 0.0
            except asyncio.TimeoutError:
                raise UnplugError(device_id, "qemu-stuck",
                                  f"device_del {device_id}: QEMU did not answer the command",
                                  hint="QEMU is hung: see its output and the QMP transcript") from None
            except QMPCommandError as e:
                if _PENDING.search(e.qemu_desc):
                    return time.monotonic() - t0 if wait > 0.02 else 0.0  # an earlier request stands
                if not BUSY.search(e.qemu_desc) or time.monotonic() + wait > deadline:
                    raise
            await asyncio.sleep(wait)
            wait = min(wait * 2, 0.5)

    async def device_del_all(self, ids: list[str], *, timeout: float, poll: float = 0.25,
                             limit: float | None = None) -> list[UnplugResult]:
        """``device_del`` all of ``ids`` at once, then wait for all to leave (results in the
        order of ``ids``): at most ``timeout`` without one leaving (the guest ejects them one by
        one), at most ``limit`` (default ``timeout``) in all."""
        names = ("DEVICE_DELETED", "DEVICE_UNPLUG_GUEST_ERROR")
        limit = max(limit or timeout, timeout)
        with self._qmp.listener(names) as listener:
            t0 = time.monotonic()
            busy = {i: await self._request_unplug(i, t0 + timeout) for i in ids}
            done: dict[str, UnplugResult] = {}

            def deadline() -> float:
                last = max((t0 + r.seconds for r in done.values()), default=t0)
                return min(t0 + limit, last + timeout)

            while len(done) < len(ids) and (now := time.monotonic()) < deadline():
                try:
                    event = await asyncio.wait_for(listener.get(), min(poll, deadline() - now))
                except asyncio.TimeoutError:
                    present = {c["name"] for c in await self.execute(
                        "qom-list", {"path": "/machine/peripheral"}, timeout=5, record=False)}
                    done.update({i: UnplugResult(i, time.monotonic() - t0, False, busy[i])
                                 for i in ids if i not in present and i not in done})
                    continue
                dev = event["data"].get("device")
                if dev in busy and (dev not in done or not done[dev].event):
                    if event["event"] == "DEVICE_UNPLUG_GUEST_ERROR":
                        raise UnplugError(dev, "guest-refused", f"device_del {dev}: the guest "
                                          "reported an error (DEVICE_UNPLUG_GUEST_ERROR)")
                    done[dev] = UnplugResult(dev, time.monotonic() - t0, True, busy[dev])
            left = [i for i in ids if i not in done]
            if left:
                raise _still_attached(left, len(ids), time.monotonic() - t0, timeout)
            return [done[i] for i in ids]

    async def wait_removed(self, device_id: str, *, timeout: float, poll: float = 0.25) -> UnplugResult:
        """Wait for a device whose unplug was requested earlier (say, while the VM was stopped)
        to leave; no new request. ``event`` is True only if DEVICE_DELETED came after this call."""
        with self._qmp.listener(("DEVICE_DELETED", "DEVICE_UNPLUG_GUEST_ERROR")) as listener:
            t0 = time.monotonic()
            done = await self._until_deleted(listener, device_id, t0, t0 + timeout, poll)
            if done is None:
                raise UnplugError(device_id, "guest-refused",
                                  f"{device_id}: still attached {timeout:.1f} s after the wait began",
                                  hint="the guest never completed the earlier unplug request")
            return done

    async def _until_deleted(self, listener, device_id: str, t0: float, deadline: float,
                             poll: float) -> UnplugResult | None:
        """Wait until ``deadline`` for the device's DEVICE_DELETED, or for it to leave the device
        tree without one; None if neither happened."""
        while (now := time.monotonic()) < deadline:
            try:
                event = await asyncio.wait_for(listener.get(), min(poll, deadline - now))
            except asyncio.TimeoutError:
                try:
                    present = await self._present(device_id)
                except asyncio.TimeoutError:
                    raise UnplugError(device_id, "qemu-stuck",
                                      f"device_del {device_id}: QEMU stopped answering QMP "
                                      f"{time.monotonic() - t0:.1f} s after the request",
                                      hint="QEMU is hung: see its output and the QMP transcript")
                if not present:
                    return await self._settle(listener, device_id, t0)
                continue
            if event["data"].get("device") != device_id:
                continue  # a child object's event, or another device's
            if event["event"] == "DEVICE_UNPLUG_GUEST_ERROR":
                raise UnplugError(device_id, "guest-refused",
                                  f"device_del {device_id}: the guest reported an error "
                                  f"(DEVICE_UNPLUG_GUEST_ERROR) after {time.monotonic() - t0:.2f} s",
                                  hint="check the guest's dmesg in the bundle")
            return UnplugResult(device_id, time.monotonic() - t0, event=True)
        return None

    async def _verdict_after_deadline(self, listener, device_id: str, t0: float, timeout: float,
                                      grace: float) -> UnplugResult:
        """The deadline passed. Did the guest answer late? Is QEMU alive? A device that left
        the tree after all is a result; anything else raises :class:`UnplugError`."""
        try:
            event = await asyncio.wait_for(_event_of(listener, device_id), grace)
        except asyncio.TimeoutError:
            event = None
        waited = time.monotonic() - t0
        if event is not None and event["event"] == "DEVICE_DELETED":
            raise UnplugError(device_id, "guest-slow",
                              f"device_del {device_id}: DEVICE_DELETED came after {waited:.1f} s, "
                              f"past the {timeout} s deadline",
                              hint="the guest is slow to release the device; raise the deadline "
                                   "only if this is expected")
        try:
            present = await self._present(device_id)
        except asyncio.TimeoutError:
            raise UnplugError(device_id, "qemu-stuck",
                              f"device_del {device_id}: no DEVICE_DELETED in {waited:.1f} s and "
                              "QEMU no longer answers QMP",
                              hint="QEMU is hung: see its output and the QMP transcript")
        if not present:
            return await self._settle(listener, device_id, t0)
        raise UnplugError(device_id, "guest-refused",
                          f"device_del {device_id}: no DEVICE_DELETED in {waited:.1f} s "
                          f"({timeout} s deadline + {grace} s grace); QEMU answers and the "
                          "device is still attached, so the guest never released it",
                          hint="the guest must support PCI hotplug (CONFIG_HOTPLUG_PCI_ACPI / "
                               "_PCIE, or modprobe acpiphp on old kernels) and its driver must "
                               "let go of the device")

    async def _settle(self, listener, device_id: str, t0: float) -> UnplugResult:
        """The device has left the device tree. DEVICE_DELETED comes when it is finalized, which
        can trail its removal from the tree (RCU): give the event a moment before giving up."""
        try:
            await asyncio.wait_for(_event_of(listener, device_id), self.settle_seconds)
            return UnplugResult(device_id, time.monotonic() - t0, event=True)
        except asyncio.TimeoutError:
            return UnplugResult(device_id, time.monotonic() - t0, event=False)

    async def query_pci(self) -> list[dict]:
        """Every PCI device of the guest, flattened across bridges, each with its ``bus``."""
        return flatten_pci(await self.execute("query-pci"))

    async def quit(self, timeout: float) -> None:
        await self.execute("quit", timeout=timeout)


async def _event_of(listener, device_id: str) -> dict:
    """The next event of ``listener`` about ``device_id``."""
    while True:
        event = await listener.get()
        if event["data"].get("device") == device_id:
            return event


def _still_attached(left: list[str], asked: int, elapsed: float, timeout: float) -> UnplugError:
    return UnplugError(left[0], "guest-refused",
                       f"{len(left)} of {asked} devices still attached {elapsed:.1f} s after "
                       f"device_del (none left in the last {min(timeout, elapsed):.1f} s): "
                       f"{', '.join(left)}",
                       hint="the guest never released them: see its dmesg in the bundle")


def flatten_pci(buses: list[dict]) -> list[dict]:
    """``query-pci``'s tree as one list across bridges, each device with its ``bus``."""
    flat: list[dict] = []

    def walk(devices: list[dict], bus: int) -> None:
        for d in devices:
            flat.append({**d, "bus": bus})
            bridge = d.get("pci_bridge")
            if bridge:
                walk(bridge.get("devices", []), bridge["bus"]["secondary"])

    for bus in buses:
        walk(bus["devices"], bus["bus"])
    return flat
