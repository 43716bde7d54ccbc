"""Guide section 0: memory hot-add (pc-dimm), onlined by the guest, and removed again."""

import pytest

from harness.core.errors import UnplugError
from harness.guest import checks
from harness.guest import probes

# The same shape as the CPU scenarios' guests: room for one more CPU and two DIMMs.
HOTPLUG_ROOM = {"cpus": 1, "max_cpus": 2, "mem_slots": 2, "max_memory_mb": 2048}


def mem_total_kb(guest) -> int:
    return probes.meminfo_kb(guest.shell.read("cat /proc/meminfo", "/proc/meminfo"))["MemTotal"]


@pytest.mark.scenario("memory")
@pytest.mark.guest(**HOTPLUG_ROOM)
def test_memory_hotadd(hotplug, platform, guest):
    """``object_add`` a 256 MiB backend and ``device_add`` a pc-dimm; the guest gets new
    memory blocks. The harness reads each block's ``state`` and ``valid_zones`` once the
    guest's udev has settled and onlines only what is still offline (movable, so it can leave
    again): a guest may online hot-added memory itself (a udev rule like RHEL's
    40-redhat.rules, the kernel's memhp_default_state), and the notes say who onlined which
    block into which zone. MemTotal grows by 256 MiB. ``device_del`` the DIMM; the blocks and
    the memory are gone -- unless the guest put a block in a kernel zone (Normal), where the
    kernel may refuse to offline it: then the guest's refusal is the expected outcome, and the
    DIMM and its memory must still be there."""
    size_mb = 256
    mem_before = mem_total_kb(guest)
    blocks_before = set(checks.memory_blocks(guest))

    guest.qmp("object-add", **{"qom-type": "memory-backend-ram", "id": "mem1", "size": size_mb << 20})
    hotplug.record("dimm1.device_add", guest.device_add("pc-dimm", "dimm1", memdev="mem1"))
    block_bytes = int(guest.shell.read("cat /sys/devices/system/memory/block_size_bytes",
                                       "the memory block size in hex"), 16)
    expected_blocks = (size_mb << 20) // block_bytes

    def new_blocks():
        new = set(checks.memory_blocks(guest)) - blocks_before
        return new if len(new) == expected_blocks else None
    new = guest.shell.wait_until(f"{expected_blocks} new memory blocks in /sys/devices/system/memory",
                                 new_blocks, timeout=10)
    onlined = checks.online_memory(guest, new)
    hotplug.note(checks.describe_onlined(onlined))
    grown = mem_total_kb(guest) - mem_before
    assert grown == size_mb * 1024, f"MemTotal grew by {grown} kB, expected {size_mb * 1024} kB"

    in_kernel_zone = [b for b in onlined if b.zone != "Movable"]
    try:
        result = guest.device_del("dimm1")
    except UnplugError as e:
        if not in_kernel_zone or e.verdict != "guest-refused":
            raise
        refused_as_expected(hotplug, guest, in_kernel_zone, e, mem_before + size_mb * 1024)
        return
    hotplug.record("dimm1.device_del_to_event", result.seconds)
    assert result.event
    guest.qmp("object-del", id="mem1")
    after = mem_total_kb(guest)
    assert after == mem_before, f"MemTotal is {after} kB after removal, was {mem_before} kB"
    left = set(checks.memory_blocks(guest)) - blocks_before
    assert not left, f"memory blocks still present after device_del: {sorted(left)}"
    if in_kernel_zone:
        hotplug.note("the kernel offlined the blocks in a kernel zone after all: removed")


def refused_as_expected(hotplug, guest, stuck, error: UnplugError, mem_total: int) -> None:
    """The guest refused to give back a DIMM whose blocks it put in a kernel zone: expected.
    The DIMM stays in QEMU and its memory in the guest; the guest is not given to another test."""
    hotplug.note(f"device_del dimm1 refused ({error.verdict}), as expected: "
                 f"{', '.join(b.name for b in stuck)} in {stuck[0].zone}, which the kernel "
                 "need not offline")
    assert any(d.get("data", {}).get("id") == guest.qemu_id("dimm1")
               for d in guest.qmp("query-memory-devices")), \
        "QEMU no longer lists dimm1 although the guest refused the unplug"
    assert mem_total_kb(guest) == mem_total, "the guest refused the unplug but lost the memory"
    hotplug.fresh_only = True   # (a guest holding a DIMM is no one else's starting point)
