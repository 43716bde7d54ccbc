"""CPU hot-add and removal through libvirt: ``setvcpu N --enable/--disable --live``.

A scenario hot-adds a CPU as QMP does: ``device_add`` of the type ``query-hotpluggable-cpus``
offers, with that slot's ``socket-id``/``core-id``/``thread-id``. libvirt has no device
element for a vCPU; it numbers the domain's vCPUs in topology order and plugs one by its
number. So the slot's ids give the number (the domain's ``<topology>``), libvirt plugs it, and
the harness checks that QEMU's slot with those ids is the one now filled. QEMU knows the new
CPU by libvirt's name for it (``vcpu1``), which :meth:`DomainGuest.qemu_id` gives back for
the scenario's id from then on.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

from harness.core.errors import LabError, Unexpressible, UnplugError, WaitTimeout
from harness.core.waits import wait_until
from harness.qemu.monitor import UnplugResult
from harness.virt.connect import LibvirtCommandError

#: device_add properties of a CPU slot that the vCPU number carries.
SLOT_PROPS = ("socket-id", "die-id", "core-id", "thread-id")


def is_cpu(driver: str) -> bool:
    """A CPU model's QOM type, as ``query-hotpluggable-cpus`` gives it (``qemu64-x86_64-cpu``)."""
    return driver.endswith("-cpu")


def vcpu_number(domain_xml_text: str, props: dict) -> int:
    """libvirt's number of the vCPU in the slot ``props`` names (x86: sockets, dies, cores,
    threads, the thread counting fastest)."""
    cpu = ET.fromstring(domain_xml_text).find("cpu/topology")
    if cpu is None:
        raise LabError("the domain has no <topology>: the harness cannot tell which vCPU "
                       "libvirt would plug", hint="a bug in harness/virt/xml.py")
    dies, cores, threads = (int(cpu.get(k, "1")) for k in ("dies", "cores", "threads"))
    socket, die, core, thread = (int(props.get(k, 0)) for k in SLOT_PROPS)
    return ((socket * dies + die) * cores + core) * threads + thread


def add(guest, driver: str, device_id: str, props: dict) -> float:
    """Enable the vCPU of the slot ``props`` names; its QEMU name is remembered for
    ``device_id``. Returns the seconds libvirt took."""
    unmapped = sorted(set(props) - set(SLOT_PROPS) - {"node-id"})
    if unmapped:
        raise Unexpressible(f"device_add {driver} with {', '.join(unmapped)}",
                            "setvcpu takes a vCPU number only", hint="use --driver qmp")
    number = vcpu_number(guest.live_xml(), props)
    t0 = time.monotonic()
    guest._call(lambda: guest.dom.setVcpu(str(number), 1, AFFECT_LIVE),
                f"setvcpu {number} --enable --live")
    seconds = time.monotonic() - t0
    slot = _slot(guest, props)
    if slot is None or "qom-path" not in slot:
        raise LabError(f"libvirt enabled vCPU {number} for the slot {props}, and QEMU's slot "
                       f"with those ids is {'not there' if slot is None else 'still empty'}",
                       hint="the topology in harness/virt/xml.py does not match QEMU's; "
                            "see domain.xml and qmp.jsonl in the bundle")
    guest.renamed[device_id] = slot["qom-path"].rsplit("/", 1)[-1]
    guest.vcpus[device_id] = number
    guest.vcpu_props[device_id] = {k: v for k, v in props.items() if k in SLOT_PROPS}
    return seconds


def request_removal(guest, device_id: str) -> None:
    """``setvcpu N --disable --live``. libvirt waits 5 s for QEMU's DEVICE_DELETED and then
    fails the call while the request stands: the harness's own wait decides the verdict."""
    number = guest.vcpus[device_id]
    try:
        guest._call(lambda: guest.dom.setVcpu(str(number), 0, AFFECT_LIVE),
                    f"setvcpu {number} --disable --live")
    except LibvirtCommandError as e:  # (its own wait timing out is not a refusal)
        if "timed out" not in str(e):
            raise


def verdict(guest, device_id: str, t0: float, timeout: float) -> UnplugResult:
    """A vCPU's removal as QEMU sees it, then libvirt's record of it. QEMU (7.2 and 10.0
    here, TCG) sends no DEVICE_DELETED for a CPU, only for its local APIC
    (``/machine/peripheral/vcpu1/lapic``): the QMP driver reads the slot instead, and so does
    this. libvirt waits 5 s for that event, says "vcpu unplug request timed out" and keeps
    the vCPU enabled in its live XML: that is a failure of its own, said as such."""
    name = guest.qemu_id(device_id)
    try:
        wait_until(f"QEMU to empty the slot of {name}",
                   lambda: "qom-path" not in (_slot(guest, guest.vcpu_props[device_id]) or {}),
                   timeout=max(0.0, t0 + timeout - time.monotonic()), interval=0.2)
    except WaitTimeout:
        raise UnplugError(device_id, "guest-refused", f"setvcpu {guest.vcpus[device_id]} "
                          f"--disable: QEMU still has {name} after {timeout:.1f} s, so the guest "
                          "never ejected it", hint="the guest must offline the CPU and support "
                                                   "ACPI CPU hot-unplug") from None
    seconds = time.monotonic() - t0
    if enabled(guest.live_xml(), guest.vcpus[device_id]):
        raise UnplugError(device_id, "driver-stale", f"QEMU had removed {name} when libvirt "
                          f"let its monitor answer again ({seconds:.2f} s) and the guest let it "
                          f"go, but libvirt still lists vCPU "
                          f"{guest.vcpus[device_id]} enabled: it waited for a DEVICE_DELETED "
                          "of the CPU, which QEMU does not send (only its lapic's), and never "
                          "updated its record", hint="a libvirt/QEMU mismatch, not the guest's: "
                                                     "see events in the bundle; --driver qmp "
                                                     "checks QEMU's own view")
    return UnplugResult(device_id, seconds, event=False)


def enabled(domain_xml_text: str, number: int) -> bool:
    """Whether the live domain XML lists vCPU ``number`` as enabled."""
    for v in ET.fromstring(domain_xml_text).findall("vcpus/vcpu"):
        if v.get("id") == str(number):
            return v.get("enabled") == "yes"
    return False


def _slot(guest, props: dict) -> dict | None:
    for slot in guest.qmp("query-hotpluggable-cpus"):
        if all(slot["props"].get(k) == props[k] for k in props if k in SLOT_PROPS):
            return slot
    return None


#: libvirt's flag for the running domain.
AFFECT_LIVE = 1
