"""A scenario repeated 50 times on one guest: nothing may leak (QEMU memory and file
descriptors, guest devices and interfaces). The figures go into the report."""

import os
from pathlib import Path

import pytest

from harness.guest import checks
from harness.scenario import devices
from harness.guest.pool import guest_state

CYCLES = int(os.environ.get("HH_SOAK_CYCLES", "50"))


def rss_kb(pid: int) -> int:
    line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("VmRSS:"))
    return int(line.split()[1])


@pytest.mark.slow
def test_nic_add_remove_soak(hotplug):
    """virtio-net added, brought up by DHCP and removed, CYCLES times on one pc guest."""
    guest = hotplug.guest(devices.PCI_PLATFORMS[0].spec(), fresh=True)
    nic = devices.EMULATED["nic"][1]
    baseline = guest_state(guest)
    pid = guest.process.pid
    warm_rss = None
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    for i in range(CYCLES):
        plugged = hotplug.plug(guest, nic, f"soak{i}")
        checks.ipv4_address(guest, plugged)
        result = hotplug.unplug(guest, plugged)
        assert result.event, f"cycle {i}: no DEVICE_DELETED"
        guest.shell.wait_until(f"cycle {i}: the interface to leave the guest",
                               lambda: checks.net_interfaces(guest) == {"lo"}, 10)
        if i == 9:
            warm_rss = rss_kb(pid)  # QEMU's allocator has reached its working set
    end_rss = rss_kb(pid)
    growth = end_rss - warm_rss
    hotplug.note(f"{CYCLES} cycles: QEMU RSS {warm_rss} kB after 10, {end_rss} kB after {CYCLES} "
                 f"({growth:+d} kB); open files {fds} -> {len(os.listdir(f'/proc/{pid}/fd'))}")
    assert len(os.listdir(f"/proc/{pid}/fd")) == fds, "QEMU leaks file descriptors"
    assert growth < 16 * 1024, f"QEMU grew by {growth} kB over {CYCLES - 10} cycles"
    assert guest_state(guest) == baseline, "the guest did not return to its state at boot"
