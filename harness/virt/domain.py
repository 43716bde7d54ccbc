"""DomainGuest: a guest whose QEMU libvirt starts and whose devices libvirt hot-adds.

It is a :class:`~harness.guest.guest.Guest` in everything a scenario sees (the same serial
console and shell, the same device ids, the same unplug verdicts), so the scenarios and their
guest-side checks run unchanged. What differs is underneath:

* the guest is a transient domain (``virsh create``) defined from the same
  :class:`~harness.qemu.machine.GuestSpec`, started paused, on the real daemon;
* ``device_add`` is ``attach-device --live`` with the element :func:`harness.virt.xml.device_xml`
  writes; ``device_del`` is ``detach-device-alias --live`` and waits for libvirt's
  ``device-removed`` event (``device-removal-failed`` is the guest refusing);
* QEMU's own view (``query-pci``, ``info pci``, ``info usb``) is asked through libvirt's
  ``qemu-monitor-command``; the domain's live XML is read with :meth:`live_xml`;
* a device is known to QEMU and to the live XML by libvirt's user alias ``ua-<id>``
  (:meth:`qemu_id`), which every monitor-side check uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from harness.core.errors import (GuestDiedError, HarnessError, LabError, QMPCommandError,
                                 Unexpressible, WaitTimeout)
from harness.core import contention
from harness.core.waits import wait_until
from harness.guest.access import ConsoleChannel, Shell
from harness.guest.guest import Guest, _make_overlay
from harness.qemu.monitor import UnplugResult, flatten_pci
from harness.qemu.process import record_pid
from harness.virt import connect, removal, vcpus, xml
from harness.virt.connect import LibvirtCommandError

#: libvirt's flags (virDomainModificationImpact, virDomainCreateFlags, qemu-monitor-command).
AFFECT_LIVE, START_PAUSED, MONITOR_HMP = 1, 1, 1


class DomainGuest(Guest):
    """A running guest driven through libvirt (``--driver libvirt``)."""

    driver = "libvirt"

    def __init__(self, *args, uri: str = connect.URI, **kwargs):
        super().__init__(*args, **kwargs)
        self.uri = uri
        self.domain_name = f"hh-{self.owner or os.getpid()}-{self.name}"
        self.dom = None
        self.qemu_pid: int | None = None
        self.backends = xml.Backends()
        #: Scenario ids QEMU knows by another name than libvirt's alias (a vCPU: ``vcpu1``),
        #: and hot-added vCPUs' libvirt numbers (harness.virt.vcpus).
        self.renamed: dict[str, str] = {}
        self.vcpus: dict[str, int] = {}
        self.vcpu_props: dict[str, dict] = {}
        self.xml = ""
        #: (request, answer) pairs sent to QEMU through libvirt, for the bundle.
        self._transcript = None

    # -- life cycle ---------------------------------------------------------------------------

    def _command(self) -> None:
        """The domain's XML (in the bundle as domain.xml), instead of QEMU's command line."""
        self.xml = xml.domain_xml(self.spec, self.image, self.paths, name=self.domain_name,
                                  emulator=shutil.which(self.qemu_binary) or self.qemu_binary,
                                  accel=self.accel)
        (self.workdir / "domain.xml").write_text(self.xml + "\n")

    def launch(self, on_running=None, *, restore: Path | None = None) -> "DomainGuest":
        if restore is not None:
            raise Unexpressible("a guest restored from a saved state", "virsh restore",
                                not_built=True)
        return super().launch(on_running)

    def _connect(self, t0: float) -> None:
        """Create the transient domain (paused), then connect the serial console."""
        conn = connect.connection(self.uri)
        self._check_files()
        if self.image.disk:
            _make_overlay(self.image, self.paths.disk_overlay, None)
        libvirt = connect.libvirt_module()
        self._transcript = open(self.workdir / "qmp.jsonl", "a")
        try:
            self.dom = conn.createXML(self.xml, START_PAUSED)
        except libvirt.libvirtError as e:
            raise _rejected(self, e) from None
        self.qemu_pid = _read_pid(self.domain_name)
        record_pid(self.workdir, self.qemu_pid)
        (self.workdir / "domain-live.xml").write_text(self.live_xml() + "\n")
        self.launch_marks["qmp"] = round(time.monotonic() - t0, 2)
        console = ConsoleChannel(self.paths.console_socket, timeout=self.deadlines.console_connect,
                                 name=self.name)
        self.launch_marks["console"] = round(time.monotonic() - t0, 2)
        self.shell = Shell(self.workdir / "commands.log", console,
                           default_timeout=self.deadlines.command, scale=self.deadlines.scaled,
                           meters=contention.meters(self.qemu_pid))

    def _check_files(self) -> None:
        for f in (self.image.kernel, self.image.initrd, self.image.disk):
            if f is not None and not Path(f).is_file():
                raise LabError(f"guest image file {f} does not exist",
                               hint="run `make image`, or fix the --guest-* option")

    def migrate_on_this_host(self) -> None:
        """Live migration through libvirt, asked for as ``virsh migrate --live --p2p DOMAIN
        qemu:///system`` would: libvirt migrates between hosts only (9.0: "Attempt to migrate
        guest to the same host <uuid>"), and the migration scenarios have one host. Asked on
        every run, so that a libvirt that takes it is noticed; its refusal is the test's
        expected failure, in libvirt's words."""
        libvirt = connect.libvirt_module()
        try:
            self.dom.migrateToURI3(self.uri, {}, libvirt.VIR_MIGRATE_LIVE
                                   | libvirt.VIR_MIGRATE_PEER2PEER)
        except libvirt.libvirtError as e:
            words = e.get_error_message() or str(e)
            if "same host" not in words:
                raise _failed(self, "migrate --live --p2p to this host", e) from None
            raise Unexpressible("a live migration on one host", f"libvirt refused: {words}",
                                hint="libvirt migrates between two hosts; run the migration "
                                     "scenarios with --driver qmp") from None
        raise HarnessError(f"libvirt migrated {self.domain_name} to this same host, which "
                           "libvirt 9.0 refuses and the harness cannot check yet",
                           hint="report it; run the migration scenarios with --driver qmp")

    @property
    def process(self) -> "QemuPid | None":
        """The QEMU libvirt started (its PID; signals go to it), None before the launch."""
        return QemuPid(self.qemu_pid) if self.qemu_pid else None

    def alive(self) -> bool:
        return self.dom is not None and _active(self.dom)

    def died(self) -> bool:
        return self.dom is not None and not self._closed and not _active(self.dom)

    def _stop_vm(self) -> None:
        """Destroy the domain (transient: gone with its QEMU). A daemon that no longer answers
        cannot destroy it: then its QEMU is ended by its PID, checked to be this domain's."""
        if self.dom is not None:
            _destroy(self)

    def _release_vm(self) -> None:
        if self._transcript is not None:
            self._transcript.close()

    def _raise_if_dead(self) -> None:
        if self.dom is not None and not _active(self.dom):
            raise GuestDiedError(f"domain {self.domain_name} is no longer running",
                                 details="QEMU's log (libvirt):\n" + self.qemu_output()[-4000:])

    def qemu_output(self) -> str:
        try:
            return Path(f"/var/log/libvirt/qemu/{self.domain_name}.log").read_text(errors="replace")
        except OSError:
            return ""

    # -- QEMU's view, through libvirt ---------------------------------------------------------

    def qemu_id(self, device_id: str) -> str:
        return self.renamed.get(device_id) or xml.alias(device_id)

    def lists(self, device_id: str, live_xml: str) -> bool:
        """Whether the live domain XML still has the device (a vCPU: enabled)."""
        if device_id in self.vcpus:
            return vcpus.enabled(live_xml, self.vcpus[device_id])
        return self.qemu_id(device_id) in xml.live_aliases(live_xml)

    def _monitor(self) -> "DomainGuest":
        return self  # (all a reboot from inside asks of the monitor: its resets, below)

    @property
    def resets(self) -> int:
        """Guest resets libvirt reported (its reboot event, from QEMU's RESET)."""
        return connect.reboots(self.domain_name)

    def driver_lists(self, device_id: str) -> bool:
        return self.lists(device_id, self.live_xml())

    def live_xml(self) -> str:
        return self._call(lambda: self.dom.XMLDesc(0), "read the live domain XML")

    def qmp(self, command: str, timeout: float = 30.0, **arguments: Any) -> Any:
        """QMP through ``qemu-monitor-command``; the back ends QMP would add before a
        ``device_add`` are kept for its XML (in libvirt they are part of the device)."""
        if command in ("cont", "stop"):  # (through libvirt, which keeps the domain's state)
            return self._call(self.dom.resume if command == "cont" else self.dom.suspend,
                              f"{'resume' if command == 'cont' else 'suspend'} the domain")
        if command in ("device_add", "device_del"):
            # (behind libvirt's back the live XML would lie: a test of QEMU's own answer to a
            # raw command has no libvirt equivalent)
            raise Unexpressible(f"a raw QMP {command}", "with --driver libvirt every hot-add "
                                "and removal goes through attach-device / detach-device; this "
                                "test asserts QEMU's own answer to the raw command",
                                hint="run it with --driver qmp")
        if command in ("netdev_add", "netdev_del"):
            self._backend(self.backends.netdevs, arguments["id"], command, arguments)
            return {}
        if (command == "object-add" and arguments.get("qom-type") == "memory-backend-ram"
                or command == "object-del" and arguments.get("id") in self.backends.memdevs):
            # (a DIMM's memory: in libvirt part of its <memory model='dimm'>)
            self._backend(self.backends.memdevs, arguments["id"], command, arguments.get("size"))
            return {}
        if command in ("blockdev-add", "blockdev-del"):
            node = arguments["node-name"]
            self._backend(self.backends.disks, node, command, Path(arguments.get("file", {})
                                                                  .get("filename", "")))
            return {}
        return self._monitor_command({"execute": command, "arguments": arguments}, command)

    @staticmethod
    def _backend(table: dict, key: str, command: str, value) -> None:
        if command.endswith("_add") or command.endswith("-add"):
            table[key] = value
        else:
            table.pop(key, None)

    def hmp(self, command_line: str, timeout: float = 30.0) -> str:
        return self._monitor_command(command_line, command_line.split()[0], hmp=True)

    def query_pci(self) -> list[dict]:
        return flatten_pci(self.qmp("query-pci"))

    def _monitor_command(self, request, name: str, hmp: bool = False) -> Any:
        libvirt_qemu = _libvirt_qemu()
        text = request if hmp else json.dumps(request)
        answer = self._call(lambda: libvirt_qemu.qemuMonitorCommand(
            self.dom, text, MONITOR_HMP if hmp else 0), f"qemu-monitor-command {name}")
        self._transcript.write(json.dumps({"t": time.time(), "via": "libvirt", "sent": text,
                                           "got": answer}) + "\n")
        self._transcript.flush()
        if hmp:
            return answer
        reply = json.loads(answer)
        if "error" in reply:
            raise QMPCommandError(name, request.get("arguments", {}),
                                  reply["error"].get("class", ""), reply["error"].get("desc", ""))
        return reply.get("return")

    def _call(self, fn, what: str):
        libvirt = connect.libvirt_module()
        try:
            if not self.dom.connect().isAlive():
                # (the daemon restarted: the domain lives on; find it through a new connection)
                self.dom = connect.connection(self.uri).lookupByName(self.domain_name)
            return fn()
        except libvirt.libvirtError as e:
            raise _failed(self, what, e) from None

    # -- hot-add and removal through libvirt --------------------------------------------------

    def device_add(self, driver: str, device_id: str, **props: Any) -> float:
        """``attach-device --live`` of the element for ``device_add driver,id=..,props``
        (a CPU: ``setvcpu --enable --live``)."""
        if vcpus.is_cpu(driver):
            return vcpus.add(self, driver, device_id, props)
        self.backends.indexes = xml.controller_indexes(self.live_xml())
        element = xml.device_xml(self.spec, driver, device_id, props, self.backends)
        (self.workdir / f"attach-{device_id}.xml").write_text(element + "\n")
        libvirt = connect.libvirt_module()
        t0 = time.monotonic()
        try:
            self.dom.attachDeviceFlags(element, AFFECT_LIVE)
        except libvirt.libvirtError as e:
            raise _attach_refused(driver, device_id, element, e) from None
        seconds = time.monotonic() - t0
        if "bus" in props:
            self._used_buses[props["bus"]] = device_id
        return seconds

    def device_del(self, device_id: str, timeout: float = 20.0, grace: float = 10.0) -> UnplugResult:
        return self.device_del_all([device_id], timeout, timeout, grace=grace)[0]

    def device_del_all(self, ids: list[str], timeout: float, limit: float | None = None, *,
                       grace: float = 0.0) -> list[UnplugResult]:
        """``detach-device-alias --live`` for each, then the verdicts as QMP's: removed (with
        or without libvirt's event), or ``guest-refused`` / ``guest-slow`` / ``qemu-stuck``."""
        timeout, limit = self.deadlines.scaled(timeout), self.deadlines.scaled(limit or timeout)
        with contextlib.ExitStack() as stack:  # (listening from before the first request)
            waits = {i: stack.enter_context(connect.DeviceEvents(self.domain_name, self.qemu_id(i)))
                     for i in ids}
            t0 = time.monotonic()
            busy = {i: removal.detach(self, i, t0 + timeout) for i in ids}
            removal.unless_paused(self, ids, waits, t0, timeout)
            results = [dataclasses.replace(removal.verdict(self, i, waits[i], t0, max(timeout, limit),
                                                           self.deadlines.scaled(grace)),
                                           busy_seconds=busy[i]) for i in ids]
        self._used_buses = {b: d for b, d in self._used_buses.items() if d not in ids}
        return results

    def wait_removed(self, device_id: str, timeout: float = 20.0) -> UnplugResult:
        """Wait (no new request) for a device whose removal was requested earlier."""
        with connect.DeviceEvents(self.domain_name, self.qemu_id(device_id)) as w:
            result = removal.verdict(self, device_id, w, time.monotonic(),
                                     self.deadlines.scaled(timeout))
        self._used_buses = {b: d for b, d in self._used_buses.items() if d != device_id}
        return result


class QemuPid:
    """As much of a ``Popen`` as the harness uses, for a QEMU that is libvirt's child."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def poll(self) -> int | None:
        return None if Path(f"/proc/{self.pid}").exists() else 0


def _libvirt_qemu():
    try:
        import libvirt_qemu
    except ImportError as e:
        raise LabError(f"libvirt's QEMU binding is missing ({e})", hint="pip install libvirt-python")
    return libvirt_qemu


def _active(dom) -> bool:
    try:
        return bool(dom.isActive())
    except Exception:  # (libvirtError: the daemon is gone; the domain is judged by its QEMU)
        return False


def _read_pid(name: str) -> int | None:
    try:
        return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _destroy(guest: DomainGuest) -> None:
    libvirt = connect.libvirt_module()
    try:
        guest.dom.destroy()
        guest.exit_status = 0
        return
    except libvirt.libvirtError as e:
        if "not running" in str(e) or "no domain" in str(e).lower():
            return
        reason = str(e)
    pid = guest.qemu_pid
    if pid is None or not _is_domains_qemu(pid, guest.domain_name):
        return
    os.kill(pid, signal.SIGTERM)
    try:
        wait_until(f"QEMU {pid} of {guest.domain_name} to exit", lambda: not Path(f"/proc/{pid}").exists(), 10)
    except WaitTimeout:
        os.kill(pid, signal.SIGKILL)
        wait_until(f"QEMU {pid} to exit after SIGKILL", lambda: not Path(f"/proc/{pid}").exists(), 10)
    guest.exit_status = -signal.SIGTERM
    guest.launch_marks["closed_without_libvirt"] = reason[:200]


def _is_domains_qemu(pid: int, name: str) -> bool:
    """PID ``pid`` is still the QEMU libvirt started for domain ``name`` (not a reused PID)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(a.startswith(b"guest=" + name.encode() + b",") or a == b"guest=" + name.encode()
               for a in argv)


def _rejected(guest: DomainGuest, e) -> LabError:
    text = str(e)
    if "already exists" in text:
        return LabError(f"a domain named {guest.domain_name} already exists", details=text,
                        hint=f"a run with the same tag is running, or one left it: "
                             f"`virsh destroy {guest.domain_name}` if it is stale")
    return LabError(f"libvirt refused to create domain {guest.domain_name}: {text}",
                    hint="read libvirt's message; the domain XML is in the bundle (domain.xml)",
                    details=guest.xml)


def _attach_refused(driver: str, device_id: str, element: str, e):
    text = str(e)
    if ("cannot be hot plugged" in text or "not supported" in text.lower()
            or "Only PCI device addresses with function=0" in text):
        return Unexpressible(f"a hot-added {driver}", f"libvirt refused: {text}",
                             details=f"element sent:\n{element}")
    return LibvirtCommandError(f"attach-device {device_id}", text, element)


def _failed(guest: DomainGuest, what: str, e) -> HarnessError:
    text = str(e)
    if _connection_lost(e):
        return LabError(f"libvirt stopped answering while the harness was to {what} "
                        f"({guest.domain_name}): {text}",
                        hint="is the daemon still running? (`virsh list`); its log says why")
    return LibvirtCommandError(what, text)


# What libvirt's RPC layer says when the daemon went away under an open connection: the first
# call after a SIGKILL may still find the connection "alive" and fail writing to it.
_LOST = ("Cannot recv data", "Cannot write data", "client socket is closed",
         "End of file while reading data", "not running")


def _connection_lost(e) -> bool:
    libvirt = connect.libvirt_module()
    text = str(e)
    return (any(m.lower() in text.lower() for m in _LOST)
            or (e.get_error_domain() == libvirt.VIR_FROM_RPC
                and e.get_error_code() == libvirt.VIR_ERR_SYSTEM_ERROR))
