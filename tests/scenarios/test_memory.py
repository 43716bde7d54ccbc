"""Guide section 0: memory hot-add (pc-dimm), onlined by the guest, and removed again."""

import pytest

from harness.guest import probes

# The same shape as the CPU scenarios' guests: room for one more CPU and two DIMMs.
HOTPLUG_ROOM = {"cpus": 1, "max_cpus": 2, "mem_slots": 2, "max_memory_mb": 2048}


@pytest.mark.scenario("memory")
@pytest.mark.guest(**HOTPLUG_ROOM)
def test_memory_hotadd(hotplug, platform, guest):
    """``object_add`` a 256 MiB backend and ``device_add`` a pc-dimm; the guest gets new
    memory blocks, onlines them (movable, so they can leave again) and MemTotal grows by
    256 MiB. ``device_del`` the DIMM; the blocks and the memory are gone."""
    size_mb = 256
    mem_before = probes.meminfo_kb(guest.shell.succeed("cat /proc/meminfo"))["MemTotal"]
    blocks_before = set(guest.shell.succeed("ls /sys/devices/system/memory | grep memory").split())

    guest.qmp("object-add", **{"qom-type": "memory-backend-ram", "id": "mem1", "size": size_mb << 20})
    hotplug.record("dimm1.device_add", guest.device_add("pc-dimm", "dimm1", memdev="mem1"))
    block_bytes = int(guest.shell.succeed("cat /sys/devices/system/memory/block_size_bytes"), 16)
    expected_blocks = (size_mb << 20) // block_bytes

    def new_blocks():
        new = set(guest.shell.succeed("ls /sys/devices/system/memory | grep memory").split()) - blocks_before
        return new if len(new) == expected_blocks else None
    new = guest.shell.wait_until(f"{expected_blocks} new memory blocks in /sys/devices/system/memory",
                                 new_blocks, timeout=10)
    for block in sorted(new):
        guest.shell.succeed(f"echo online_movable > /sys/devices/system/memory/{block}/state")
    grown = probes.meminfo_kb(guest.shell.succeed("cat /proc/meminfo"))["MemTotal"] - mem_before
    assert grown == size_mb * 1024, f"MemTotal grew by {grown} kB, expected {size_mb * 1024} kB"

    result = guest.device_del("dimm1")
    hotplug.record("dimm1.device_del_to_event", result.seconds)
    assert result.event
    guest.qmp("object-del", id="mem1")
    after = probes.meminfo_kb(guest.shell.succeed("cat /proc/meminfo"))["MemTotal"]
    assert after == mem_before, f"MemTotal is {after} kB after removal, was {mem_before} kB"
    left = set(guest.shell.succeed("ls /sys/devices/system/memory | grep memory").split()) - blocks_before
    assert not left, f"memory blocks still present after device_del: {sorted(left)}"
