"""Saved guest states (harness.snapshot), on real QEMU: a restored guest is ready fast and
cannot be told from a booted one (clock, random state, devices, free slots); a state that does
not load costs a boot, never a test; a state is keyed so that a changed image, QEMU or command
line never uses it."""

import os
import re
import time
from pathlib import Path

import pytest

from harness.guest.guest import Guest
from harness.qemu.machine import GuestImage
from harness.qemu.machine import GuestSpec
from harness.guest.pool import GuestPool, guest_state
from harness.guest.migration import STATE_FILE
from harness.guest.snapshot import META_FILE, RESTORABLE_ARGS, StateCache

pytestmark = pytest.mark.xdist_group("saved-states")


@pytest.fixture
def pool(hotplug_session, tmp_path):
    states = StateCache(tmp_path / "states", qemu_version=hotplug_session.qemu_version)
    pool = GuestPool(hotplug_session.image, qemu_binary=hotplug_session.qemu_binary,
                     accel=hotplug_session.accel, workdir=tmp_path / "guests",
                     deadlines=hotplug_session.deadlines, reuse=False, states=states)
    yield pool
    pool.close()


def urandom(guest: Guest) -> str:
    return guest.shell.succeed("head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'")


def test_a_restored_guest_cannot_be_told_from_a_booted_one(pool):
    """The first guest of a shape boots and is saved; the next two are restored from it: ready
    in a fraction of the boot, with the host's time, random bytes of their own, the same
    devices and free hotplug slots, and a device hot-added and removed as in a booted one."""
    spec = GuestSpec(machine="q35")
    booted = pool.acquire(spec)
    assert booted.started == "booted" and booted.saved and booted.saved["bytes"] > 1 << 20
    assert "-device" in booted.argv and "vmgenid" in booted.argv
    booted_state = guest_state(booted)
    restored = [pool.acquire(spec), pool.acquire(spec)]
    for g in restored:
        assert g.started == "restored" and g.restored_from is not None, g.launch_marks
        assert "loaded" in g.launch_marks and g.boot_seconds < booted.boot_seconds
        # the clock reads now, not the moment of the save (busybox sets whole seconds)
        guest_now = float(g.shell.succeed("date +%s"))
        assert abs(guest_now - time.time()) < 2.5, (guest_now, time.time())
        uptime = float(g.shell.succeed("cut -d' ' -f1 /proc/uptime"))
        assert uptime > 0
        # same devices, same free slots as the guest it was saved from
        assert guest_state(g) == booted_state
        assert g.free_bus() == "rp0"
        # and the replay script boots it (the saved state is not there for a person later)
        assert "-incoming" not in (g.workdir / "replay.sh").read_text()
    # Without vmgenid, two guests restored from one state read the same random bytes (seen).
    seen = {urandom(g) for g in [booted, *restored]}
    assert len(seen) == 3, seen
    # Hotplug works in a restored guest as in a booted one: a disk is added, seen, removed.
    g = restored[0]
    g.qmp("blockdev-add", driver="null-co", **{"node-name": "d0", "size": 64 << 20})
    g.device_add("virtio-blk-pci", "disk0", bus=g.free_bus(), drive="d0")
    g.shell.wait_until_succeeds("test -e /sys/block/vda", 20)
    result = g.device_del("disk0")
    assert result.event, result
    g.shell.wait_until_succeeds("! test -e /sys/block/vda", 20)


def test_a_state_that_does_not_load_costs_a_boot_not_a_test(pool):
    """A damaged saved state: the guest that tried it is closed, another one boots, the test's
    notes say so, the bad state is thrown away and the new boot saves a good one."""
    spec = GuestSpec(machine="pc")
    first = pool.acquire(spec)
    key = first.saved["key"]
    state = pool.states.root / key / STATE_FILE
    state.write_bytes(state.read_bytes()[: 1 << 20])  # cut short, as a full disk would
    second = pool.acquire(spec)
    assert second.started == "booted", second.launch_marks
    tried = [g for g in pool.booted if g.restored_from is not None]
    assert len(tried) == 1 and not tried[0].alive()
    assert len(pool.boot_retries) == 1, pool.boot_retries
    assert re.match(r"restore of g2 \(pc\) from its saved state failed, booted instead: ",
                    pool.boot_retries[0]), pool.boot_retries
    assert second.saved and second.saved["key"] == key
    assert (pool.states.root / key / STATE_FILE).stat().st_size > 1 << 20
    assert pool.acquire(spec).started == "restored"


def test_a_changed_image_qemu_or_command_line_never_uses_a_state(hotplug_session, tmp_path):
    """The key covers the command line, the image files and the QEMU binary and version."""
    cache = StateCache(tmp_path / "states", qemu_version=hotplug_session.qemu_version)
    image = hotplug_session.image
    made = []

    def key(spec=GuestSpec(machine="pc"), image=image, qemu=hotplug_session.qemu_binary,
            extra=RESTORABLE_ARGS):
        g = Guest(spec, image, workdir=tmp_path / f"g{len(made)}", qemu_binary=qemu,
                  accel=hotplug_session.accel, name=f"g{len(made)}", extra_args=extra)
        made.append(g)
        return cache.key(g)

    try:
        base = key()
        assert key() == base  # another guest of the same shape: its own sockets and name
        assert key(GuestSpec(machine="q35")) != base
        # (-no-reboot is QEMU's action on a reset, not guest state: a reboot scenario shares)
        assert key(GuestSpec(machine="pc", reboot=True)) == base
        assert key(GuestSpec(machine="pc", kernel_args=("nokaslr",))) != base
        assert key(extra=()) != base
        # A user image: its files by size and modification time.
        kernel = tmp_path / "vmlinuz"
        kernel.write_bytes(Path(image.kernel).read_bytes())
        user = GuestImage(kernel=kernel, initrd=image.initrd, append=image.append)
        before = key(image=user)
        assert before != base
        kernel.write_bytes(kernel.read_bytes() + b"\0")
        assert key(image=user) != before
        # Another QEMU binary (a wrapper around the same one), and another version string.
        wrapper = tmp_path / "qemu"
        wrapper.write_text(f"#!/bin/sh\nexec {hotplug_session.qemu_binary} \"$@\"\n")
        wrapper.chmod(0o755)
        assert key(qemu=str(wrapper)) != base
        newer = StateCache(tmp_path / "states", qemu_version=hotplug_session.qemu_version + "+1")
        assert newer.key(made[0]) != base
        # A host device on the command line: never saved nor restored.
        assert key(extra=RESTORABLE_ARGS + ("-device", "vfio-pci,host=01:00.0")) is None
    finally:
        for g in made:
            g.close()


def test_the_cache_across_runs_is_pruned_of_unused_states(tmp_path):
    cache = StateCache(tmp_path, qemu_version="7.2.0", persistent=True)
    old, fresh = tmp_path / "a", tmp_path / "b"
    for d in (old, fresh):
        d.mkdir()
        (d / META_FILE).write_text("{}")
    os.utime(old, (time.time() - 30 * 86400,) * 2)
    assert cache.prune() == ["a"]
    assert cache.find("b") is not None and cache.find("a") is None


def test_a_shape_being_booted_is_waited_for_not_booted_twice(tmp_path):
    """A worker that finds another one booting the same shape waits for it (up to its boot
    deadline, then boots on its own); once the state is saved, it gets the state at once."""
    booting, waiting = (StateCache(tmp_path, qemu_version="7.2.0") for _ in range(2))
    with booting.claim("k", wait=1.0) as entry:
        assert entry is None  # nothing saved: this one boots and saves
        t0 = time.monotonic()
        with waiting.claim("k", wait=0.3) as other:
            assert other is None and time.monotonic() - t0 >= 0.3
        (tmp_path / "k").mkdir()
        (tmp_path / "k" / META_FILE).write_text("{}")
    t0 = time.monotonic()
    with waiting.claim("k", wait=5.0) as other:
        assert other == tmp_path / "k" and time.monotonic() - t0 < 1.0
