"""Guide section 0: CPU hot-add, and CPU hot-unplug (which the guide, of an older QEMU, says is not
supported)."""

import pytest

from harness.core.errors import UnplugError


# Room for one more CPU and two DIMMs (the memory scenarios' guests have the same shape).
HOTPLUG_ROOM = {"cpus": 1, "max_cpus": 2, "mem_slots": 2, "max_memory_mb": 2048}


def add_and_online_cpu(hotplug, guest, cpu_id: str) -> int:
    """Hot-add a CPU into the first empty slot ``query-hotpluggable-cpus`` offers; online it."""
    slot = next(c for c in guest.qmp("query-hotpluggable-cpus") if "qom-path" not in c)
    hotplug.record(f"{cpu_id}.device_add", guest.device_add(slot["type"], cpu_id, **slot["props"]))
    index = len(guest.qmp("query-cpus-fast")) - 1
    guest.shell.wait_until_succeeds(f"test -e /sys/devices/system/cpu/cpu{index}/online", 10)
    guest.shell.succeed(f"echo 1 > /sys/devices/system/cpu/cpu{index}/online")
    return index


@pytest.mark.scenario("cpu")
@pytest.mark.guest(**HOTPLUG_ROOM, fresh=True)
def test_cpu_hotadd(hotplug, platform, guest):
    """``device_add`` a CPU into a free slot; the guest sees a new CPU, onlines it, and runs
    with two."""
    assert guest.shell.succeed("cat /sys/devices/system/cpu/online").strip() == "0"
    index = add_and_online_cpu(hotplug, guest, "cpu1")
    assert guest.shell.succeed("cat /sys/devices/system/cpu/online").strip() == f"0-{index}"
    assert guest.shell.succeed("nproc").strip() == "2"
    assert len(guest.qmp("query-cpus-fast")) == 2


@pytest.mark.scenario("cpu")
@pytest.mark.guest(**HOTPLUG_ROOM, fresh=True)
def test_cpu_unplug(hotplug, platform, guest):
    """The guide (section 0) says CPU hot-unplug is not supported; that was true of its QEMU and
    RHEL 7 kernel, not of the QEMU versions this harness accepts (x86 CPU unplug through ACPI
    exists since QEMU 2.7). So this is a real test: hot-add, offline in the guest, ``device_del``
    with DEVICE_DELETED, and the CPU is gone from QEMU and from the guest. A QEMU or guest that
    refuses or crashes fails it, with what happened in the report."""
    index = add_and_online_cpu(hotplug, guest, "cpu1")
    guest.shell.succeed(f"echo 0 > /sys/devices/system/cpu/cpu{index}/online")
    stale = None
    try:
        result = guest.device_del("cpu1", timeout=10, grace=2)
        hotplug.note(f"CPU unplug completed in {result.seconds:.2f} s (event={result.event}); "
                     "the guide says CPU hot-unplug is not supported")
    except UnplugError as e:
        if e.verdict != "driver-stale":
            raise
        stale = e  # (libvirt's record, not QEMU's or the guest's: both are checked below)
    assert len(guest.qmp("query-cpus-fast")) == 1
    guest.shell.wait_until_succeeds(f"! test -e /sys/devices/system/cpu/cpu{index}", 10)
    assert guest.shell.succeed("cat /sys/devices/system/cpu/online").strip() == "0"
    if stale is not None:
        # libvirt 9.0 with QEMU 7.2/10.0 (docs/libvirt.md): QEMU and the guest removed the CPU,
        # libvirt kept it in its live XML. Expected, said, and tried again on every run: once
        # libvirt updates its record, this passes.
        pytest.xfail(f"--driver libvirt: {stale.message}")
