"""The connection to the real libvirt daemon, and libvirt's events.

libvirt's Python binding is imported here only (it is optional: ``--driver qmp`` needs none).
Every libvirt failure the harness can name becomes a :class:`~harness.core.errors.LabError`
with what to do: no daemon, no permission on its socket, an XML it rejects, a name taken.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from harness.core.errors import ConfigError, HarnessError, LabError, QMPCommandError

URI = "qemu:///system"

_loop_lock = threading.Lock()
_loop_started = False
#: (domain name, alias) -> callbacks waiting for that device's removal (or its failure).
_waiters: dict[tuple[str, str], list[Callable[[str], None]]] = {}
_waiters_lock = threading.Lock()
_connections: dict[str, object] = {}
#: Domain name -> guest resets libvirt reported (its reboot event: QEMU's RESET).
_reboots: dict[str, int] = {}


def libvirt_module():
    """The binding, or a clear error if it is not installed."""
    try:
        import libvirt
    except ImportError as e:
        raise ConfigError("--driver libvirt needs libvirt's Python binding, which this "
                          f"environment lacks ({e})",
                          hint="run `make setup` as root (it installs libvirt and the binding), "
                               "or pip install libvirt-python") from None
    # (libvirt prints every error on stderr by default; the harness says them in its own)
    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    return libvirt


def _start_event_loop(libvirt) -> None:
    """libvirt's default event loop, in a daemon thread, once per process (before the first
    connection opens, as libvirt requires for events)."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


def connection(uri: str = URI):
    """The process's connection to ``uri`` (opened once; a dead one is opened again)."""
    libvirt = libvirt_module()
    _start_event_loop(libvirt)
    conn = _connections.get(uri)
    if conn is not None and conn.isAlive():
        return conn
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise _connect_error(uri, e) from None
    for event in (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
                  libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED):
        outcome = "removed" if event == libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED else "failed"
        conn.domainEventRegisterAny(None, event, _on_device_event, outcome)
    conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, _on_reboot, None)
    _connections[uri] = conn
    return conn


def check_emulator(binary: str, qemu_version: str, uri: str = URI) -> str:
    """libvirt can use this QEMU: its capabilities probe works (libvirt 9.0 cannot probe QEMU
    10.0, which exits during the probe). libvirt's version, for the run's header."""
    libvirt, conn = libvirt_module(), connection(uri)
    version = conn.getLibVersion()
    text = f"{version // 1000000}.{version // 1000 % 1000}.{version % 1000}"
    try:
        conn.getDomainCapabilities(binary, "x86_64", None, "qemu", 0)
    except libvirt.libvirtError as e:
        raise ConfigError(f"libvirt {text} cannot use QEMU {qemu_version} ({binary}): its "
                          f"capabilities probe failed ({e})",
                          hint="use a libvirt that knows this QEMU (Debian 12: libvirt 11.3 in "
                               "bookworm-backports for QEMU 10), or --driver qmp; libvirtd's "
                               "log says why the probe failed") from None
    return text


def _connect_error(uri: str, e) -> LabError:
    text = str(e)
    if "No such file" in text or "Connection refused" in text:
        return LabError(f"the libvirt daemon is not running: {uri} cannot be reached ({text})",
                        hint="start it: `systemctl start libvirtd` (or virtqemud), or on a host "
                             "without systemd `make libvirt-daemon`")
    if "Permission denied" in text or "authentication" in text.lower():
        return LabError(f"no permission to use {uri}: {text}",
                        hint="run as root, or as a member of the libvirt group")
    if any(lost in text for lost in _GONE_MID_CONNECT):
        return LabError(f"the libvirt daemon stopped answering while {uri} was being reached "
                        f"({text})", hint="is it still running? (`virsh list`); its log says "
                                          "why it went away")
    return LabError(f"cannot connect to {uri}: {text}", hint="check the daemon's log")


#: What a connection says when the daemon goes away while it is being made (killed after its
#: socket accepted, before it answered): seen as "Cannot recv data: Connection reset by peer".
_GONE_MID_CONNECT = ("Connection reset by peer", "Cannot recv data",
                     "End of file while reading data")


def _on_reboot(conn, dom, opaque) -> None:
    with _waiters_lock:
        _reboots[dom.name()] = _reboots.get(dom.name(), 0) + 1


def reboots(domain: str) -> int:
    """How many times libvirt reported domain ``domain``'s guest reset."""
    with _waiters_lock:
        return _reboots.get(domain, 0)


def _on_device_event(conn, dom, dev_alias: str, outcome: str) -> None:
    with _waiters_lock:
        callbacks = list(_waiters.get((dom.name(), dev_alias), ()))
    for callback in callbacks:
        callback(outcome)


class DeviceEvents:
    """Collects libvirt's ``device-removed`` / ``device-removal-failed`` for one device of one
    domain, from before the request is sent (so a fast removal is never missed)."""

    def __init__(self, domain: str, dev_alias: str):
        self.key = (domain, dev_alias)
        self.outcome: str | None = None
        self.at: float | None = None
        self._cond = threading.Condition()

    def __enter__(self) -> "DeviceEvents":
        with _waiters_lock:
            _waiters.setdefault(self.key, []).append(self._record)
        return self

    def __exit__(self, *exc) -> None:
        with _waiters_lock:
            callbacks = _waiters.get(self.key, [])
            if self._record in callbacks:
                callbacks.remove(self._record)
            if not callbacks:
                _waiters.pop(self.key, None)

    def _record(self, outcome: str) -> None:
        with self._cond:
            if self.outcome is None:
                self.outcome, self.at = outcome, time.monotonic()
            self._cond.notify_all()

    def wait(self, seconds: float) -> str | None:
        """The outcome (``removed`` / ``failed``), or None if none came within ``seconds``."""
        with self._cond:
            self._cond.wait_for(lambda: self.outcome is not None, max(0.0, seconds))
            return self.outcome


class LibvirtCommandError(QMPCommandError):
    """libvirt refused a request (its words in ``qemu_desc``): a QMPCommandError, so a role
    that explains QEMU's refusals explains libvirt's the same way."""

    def __init__(self, what: str, text: str, element: str = ""):
        super().__init__(what, {}, "libvirtError", text)
        HarnessError.__init__(self, f"libvirt: {what} failed: {text}",
                              details=f"element sent:\n{element}" if element else "")
