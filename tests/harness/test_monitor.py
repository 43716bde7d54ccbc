"""The async QMP core (harness.monitor.Monitor) against a real QEMU, without a guest OS: a paused
machine is enough for everything that needs no guest cooperation (USB devices leave at once)."""

import asyncio
import json
import subprocess
import time

import pytest

from harness.core.errors import GuestDiedError, QMPCommandError, WaitTimeout
from harness.qemu.monitor import Monitor


@pytest.fixture
def qemu(hotplug_session, tmp_path):
    """A paused q35 QEMU with a USB bus and two root ports; reaped at the end."""
    sock = tmp_path / "qmp.sock"
    proc = subprocess.Popen([hotplug_session.qemu_binary, "-S", "-nodefaults", "-display", "none",
                             "-machine", "q35", "-accel", "tcg", "-usb",
                             "-device", "pcie-root-port,id=rp0,chassis=1",
                             "-device", "pcie-root-port,id=rp1,chassis=2",
                             "-qmp", f"unix:{sock},server=on,wait=off"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield sock
    proc.kill()
    proc.wait(10)


@pytest.mark.asyncio
async def test_device_add_del_with_transcript(qemu, tmp_path):
    mon = Monitor(tmp_path / "qmp.jsonl")
    await mon.connect(str(qemu), timeout=10)
    try:
        assert mon.version["qemu"]["major"] >= 6
        await mon.device_add("usb-tablet", "tab0")
        result = await mon.device_del("tab0", timeout=5)
        assert result.event and result.device_id == "tab0" and result.seconds < 5
    finally:
        await mon.close()
    lines = [json.loads(l) for l in (tmp_path / "qmp.jsonl").read_text().splitlines()]
    sent = [l["msg"]["execute"] for l in lines if l["dir"] == "send"]
    assert sent[:3] == ["query-version", "device_add", "device_del"]
    assert any(l["dir"] == "event" and l["msg"]["event"] == "DEVICE_DELETED"
               and l["msg"]["data"].get("device") == "tab0" for l in lines)


@pytest.mark.asyncio
async def test_concurrent_commands_and_errors(qemu, tmp_path):
    mon = Monitor(tmp_path / "qmp.jsonl")
    await mon.connect(str(qemu), timeout=10)
    try:
        await asyncio.gather(mon.device_add("usb-tablet", "t1"), mon.device_add("usb-mouse", "m1"))
        results = await asyncio.gather(mon.device_del("t1", timeout=5), mon.device_del("m1", timeout=5))
        assert [r.device_id for r in results] == ["t1", "m1"] and all(r.event for r in results)
        with pytest.raises(QMPCommandError) as info:
            await mon.execute("device_del", {"id": "t1"})
        assert (info.value.qemu_class, info.value.qemu_desc) == ("DeviceNotFound", "Device 't1' not found")
    finally:
        await mon.close()


@pytest.mark.asyncio
async def test_query_pci_flattens_bridges(qemu, tmp_path):
    mon = Monitor(tmp_path / "qmp.jsonl")
    await mon.connect(str(qemu), timeout=10)
    try:
        await mon.device_add("e1000e", "nic0", bus="rp1")
        await mon.execute("cont")  # the firmware numbers the bridges' buses, then idles

        async def numbered():
            while True:
                devices = await mon.query_pci()
                rp1 = next(d for d in devices if d.get("qdev_id") == "rp1")
                if rp1["pci_bridge"]["bus"]["secondary"]:
                    return devices, rp1
                await asyncio.sleep(0.1)  # SeaBIOS is still enumerating; bounded below
        devices, rp1 = await asyncio.wait_for(numbered(), 20)
        nic = [d for d in devices if d.get("qdev_id") == "nic0"]
        assert len(nic) == 1, devices
        assert nic[0]["bus"] == rp1["pci_bridge"]["bus"]["secondary"] and nic[0]["slot"] == 0
    finally:
        await mon.close()


@pytest.mark.asyncio
async def test_connect_has_a_deadline(tmp_path):
    mon = Monitor(tmp_path / "qmp.jsonl")
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout, match="no QMP connection .* within 1 s .*was not created"):
        await mon.connect(str(tmp_path / "nobody.sock"), timeout=1)
    assert time.monotonic() - t0 < 3
    await mon.close()


@pytest.mark.asyncio
async def test_connect_ends_at_once_when_qemu_is_gone(tmp_path):
    """A QEMU that exited cannot answer: the wait ends with why, not at the deadline."""
    mon = Monitor(tmp_path / "qmp.jsonl")
    t0 = time.monotonic()
    with pytest.raises(GuestDiedError, match="QEMU exited with status 1"):
        await mon.connect(str(tmp_path / "nobody.sock"), timeout=30,
                          gone=lambda: "QEMU exited with status 1")
    assert time.monotonic() - t0 < 3
    await mon.close()
