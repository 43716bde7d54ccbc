"""Hotplug where it breaks in the field: at once, while paused, during boot, across a reboot,
many at once. Each on pc (ACPI), q35 with ACPI and q35 with native PCIe hotplug, with one NIC
model (the slot and the guest are under test here, not the model). ``-k lifecycle`` selects
them all; every test also gets the end-of-test check of the guest kernel's log."""

import time

import pytest

from harness.guest import checks
from harness.guest import probes
from harness.scenario.devices import EmulatedDisk, EmulatedNic
from harness.core.errors import MigrationRefused, PreconditionError, UnplugError
from harness.qemu.monitor import UnplugResult

lifecycle = pytest.mark.scenario("nic", one_device=True, name="lifecycle")
#: The disk the scenarios hot-add beside the NIC (a virtio-blk disk: not one of the guide's roles).
DISK = EmulatedDisk()
#: QEMU's NIC failover pair (docs/system/virtio-net-failover.rst): a virtio-net standby and the
#: primary that stands for an SR-IOV VF; one MAC, one network. The primary must sit on a PCI
#: Express slot of its own: q35 only.
STANDBY, PRIMARY = EmulatedNic("virtio-net", "virtio-net-pci", "virtio_net"), \
    EmulatedNic("e1000e", "e1000e", "e1000e")
FAILOVER_MAC = "52:54:00:fa:11:00"
#: The pair as the guest shows it: the interface with that MAC that is no other's lower (the master).
FAILOVER = checks.NicIdentity("standby0+primary0", FAILOVER_MAC, None)


def nic_works(guest, plugged) -> str:
    """The guide's NIC checks: visible, driver bound, an address, the default route, a ping.
    The interface is found by the NIC's MAC and PCI function (udev renames it as it likes),
    its name read again once it has its address. Returns that name."""
    checks.guest_sees_pci(guest, plugged.function)
    checks.guest_driver_bound(guest, plugged.function, plugged.device.guest_driver)
    _, who = checks.nic_address(guest, plugged,
                                must_configure=plugged.run.guest_must_configure_nic)
    ifname = checks.nic_interface(guest, plugged)
    if who != "guest":
        plugged.run.note(f"{plugged.device_id}: {ifname} configured by the {who}")
    assert checks.default_gateway(guest, ifname) == plugged.facts.gateway
    guest.shell.succeed(f"ping -c 1 -W 2 -I {ifname} {plugged.facts.gateway}")
    return ifname


def gone_everywhere(guest, plugged, interfaces: set[str]) -> None:
    checks.monitor_lacks(guest, plugged.device_id)
    if plugged.function is not None:
        checks.guest_lacks_pci(guest, plugged.function)
    assert checks.net_interfaces(guest) == interfaces, "the interface is still in the guest"


@lifecycle
def test_unplug_at_once(hotplug, platform, device, guest):
    """``device_del`` the moment ``device_add`` returns, no sleep. Since QEMU 6.2 a PCIe slot
    answers "guest is busy (power indicator blinking)" until the guest has powered it on; the
    harness asks again (bounded, no fixed sleep) and reports how long the slot was busy. The
    NIC ends up removed in both views, and the slot takes the next NIC, which works."""
    interfaces = checks.net_interfaces(guest)
    nic = hotplug.plug(guest, device, "nic0")
    result = nic.unplug()
    hotplug.note(f"device_del right after device_add: slot busy {result.busy_seconds:.2f} s, "
                 f"removed {result.seconds:.2f} s after the first request "
                 f"({'DEVICE_DELETED' if result.event else 'no DEVICE_DELETED'})")
    assert result.event, "the NIC left QEMU without a DEVICE_DELETED event"
    gone_everywhere(guest, nic, interfaces)

    again = hotplug.plug(guest, device, "nic1")
    nic_works(guest, again)
    assert again.unplug().event
    gone_everywhere(guest, again, interfaces)


@lifecycle
def test_unplug_while_paused(hotplug, platform, device, guest):
    """``stop``, ``device_del``: no DEVICE_DELETED can come while the VM is paused (the guest
    must eject the device), and the harness says "paused" within seconds instead of waiting
    out a deadline. ``cont``: the standing request completes, gone in both views."""
    interfaces = checks.net_interfaces(guest)
    nic = hotplug.plug(guest, device, "nic0")
    nic_works(guest, nic)
    guest.qmp("stop")
    try:
        t0 = time.monotonic()
        with pytest.raises(UnplugError) as refused:
            nic.unplug()
        verdict_after = time.monotonic() - t0
        assert checks.pci_function(guest, "nic0") is not None, "nic0 left while the VM was paused"
    finally:
        guest.qmp("cont")
    assert refused.value.verdict == "paused", refused.value
    assert verdict_after < guest.deadlines.unplug, f"the verdict took {verdict_after:.1f} s"
    result = nic.wait_removed()
    hotplug.note(f"paused: verdict 'paused' after {verdict_after:.1f} s; after cont the NIC "
                 f"left in {result.seconds:.2f} s")
    gone_everywhere(guest, nic, interfaces)


@pytest.fixture
def booting(hotplug, platform, device, hh_guest, hotplug_session):
    """A new guest with ``nic0`` hot-added right after ``cont``, before its kernel is up."""
    early: dict = {}

    def plug_now(g):
        early["plugged"] = device.plug(g, "nic0")

    guest = boot_with(hotplug, platform, hh_guest, hotplug_session, plug_now)
    return guest, hotplug.adopt(guest, early["plugged"])


def boot_with(hotplug, platform, hh_guest, hotplug_session, on_running):
    """A new guest of the test's shape and guest choice, ``on_running`` called right after
    ``cont`` (the ``guest`` fixture's arguments, with the hook)."""
    return hotplug.guest(platform.spec(), hh_guest.image, access=hh_guest.access,
                         deadlines=hotplug_session.deadlines_for(hh_guest), on_running=on_running)


@lifecycle
def test_plug_during_boot(hotplug, booting):
    """A NIC hot-added while the guest's OS is still booting works once the guest is ready,
    and unplugs cleanly."""
    guest, nic = booting
    marks = guest.launch_marks   # seconds from QEMU's start; the device_add was the hook's work
    lead = marks["ready"] - marks["on_running_done"]
    assert nic.function is not None, "query-pci does not list nic0"
    ifname = nic_works(guest, nic)
    interfaces = checks.net_interfaces(guest) - {ifname}
    removed = nic.unplug()
    assert removed.event
    gone_everywhere(guest, nic, interfaces)
    hotplug.note(f"plugged during boot, {lead:.1f} s before the guest was ready: it worked "
                 f"once up ({ifname}, DHCP, ping); removed {removed.seconds:.2f} s after device_del")


def boot_unplug_verdict(guest, nic) -> tuple[str, UnplugResult | None]:
    """What became of a device_del sent while the guest booted, once the guest is ready."""
    try:   # a guest that processed the request completes it within seconds (pciehp: 5 s blink)
        return "completed", guest.wait_removed(nic.device_id, timeout=8)
    except UnplugError:
        pass
    try:   # lost: ask again now that the guest runs its hotplug driver
        return "lost, re-requested, completed", guest.device_del(nic.device_id)
    except UnplugError as e:
        return f"lost for good ({e.verdict}: {e.message.splitlines()[0]})", None


@lifecycle
def test_unplug_requested_during_boot(hotplug, platform, device, hh_guest, hotplug_session):
    """``device_add`` and ``device_del`` while the guest boots. The verdict QEMU and the guest
    produce (completed, lost and re-requested, lost for good) goes into the notes per machine
    type and QEMU version; whatever it is, QEMU's view and the guest's agree at the end."""
    sent: dict = {}

    def plug_and_unplug(g):
        sent["plugged"] = device.plug(g, "nic0")
        g.qmp("device_del", id="nic0")

    guest = boot_with(hotplug, platform, hh_guest, hotplug_session, plug_and_unplug)
    nic = hotplug.adopt(guest, sent["plugged"])
    verdict, _ = boot_unplug_verdict(guest, nic)
    hotplug.note(f"device_del during boot on {platform.id}: {verdict}")
    in_qemu = checks.pci_function(guest, "nic0") is not None
    # (the guest's view by the NIC's driver: a device removed while the guest booted has no
    # address to look it up by; the management NIC of SSH access is virtio-net, never this one)
    in_guest = f"Kernel driver in use: {device.guest_driver}" in guest.shell.succeed("lspci -k")
    if verdict.startswith("lost for good"):
        assert in_qemu and in_guest, f"QEMU lists nic0: {in_qemu}, the guest: {in_guest}"
        hotplug.allow_kernel(r"pcieport|pciehp|acpiphp")
        pytest.xfail(f"device_del during boot is {verdict}: QEMU keeps the request, the guest "
                     "never completes it")
    nic.removed = True
    nic.device.cleanup(guest, nic)
    assert not in_qemu and not in_guest, f"QEMU lists nic0: {in_qemu}, the guest: {in_guest}"


@lifecycle
@pytest.mark.guest(reboot=True, fresh=True)
def test_reboot_keeps_hot_added_devices(hotplug, platform, device, guest):
    """A hot-added NIC and disk are still there after a reset (QMP ``system_reset``) and after
    a reboot from inside the guest (``reboot -f``), work after each (the guest finds them at
    boot now), and unplug cleanly."""
    interfaces, disks = checks.net_interfaces(guest), checks.disks(guest)
    nic = hotplug.plug(guest, device, "nic0")
    nic_works(guest, nic)
    disk = hotplug.plug(guest, DISK, "disk0")
    checks.new_disk(guest, disks, DISK.disk_bytes)
    for how in ("system_reset", "reboot -f"):
        if how == "system_reset":
            guest.qmp("system_reset")
        else:
            guest.reboot_from_inside()
        guest.wait_rebooted()
        hotplug.note(f"{how}: ready again in {guest.launch_marks['rebooted']} s")
        for plugged in (nic, disk):
            plugged.function = checks.pci_function(guest, plugged.device_id)
            assert plugged.function is not None, f"{plugged.device_id} is gone from QEMU after {how}"
        nic_works(guest, nic)    # found at boot now: its interface is the one at its address
        checks.new_disk(guest, disks, DISK.disk_bytes)
    assert nic.unplug().event and disk.unplug().event
    gone_everywhere(guest, nic, interfaces)
    checks.guest_lacks_pci(guest, disk.function)
    assert checks.disks(guest) == disks


@lifecycle
@pytest.mark.emulated_only("the disk under I/O is QEMU's virtio-blk in every backend: a host "
                           "device plays no part")
def test_unplug_disk_under_io(hotplug, platform, device, guest):
    """A disk is unplugged while the guest reads and writes it in a loop: the unplug completes,
    the I/O errors that follow are expected and counted, the guest kernel logs no Oops, BUG or
    call trace (the end-of-test check), and the guest stays usable."""
    disks = checks.disks(guest)
    disk = hotplug.plug(guest, DISK, "disk0")
    dev = checks.new_disk(guest, disks, DISK.disk_bytes).device
    # The loop holds the disk open (fd 3), as a mounted filesystem would: after the unplug its
    # reads and writes fail instead of creating a regular file named like the vanished node.
    guest.shell.succeed(
        f"(exec 3<>{dev}; while :; do dd if=/proc/self/fd/3 of=/dev/null bs=64k "
        f"count=256; dd if=/dev/zero of=/proc/self/fd/3 bs=64k count=64 conv=notrunc,fsync; "
        "done) > /tmp/io.log 2>&1 & echo $! > /tmp/io.pid")
    name = dev.rsplit("/", 1)[-1]
    guest.shell.wait_until(f"I/O on {dev}", lambda: _sectors(guest, name) > 4096, 10)
    result = disk.unplug()
    guest.shell.succeed("kill $(cat /tmp/io.pid); sleep 0.2; true")
    errors = guest.shell.succeed("grep -c -i -e error -e \"can't\" -e failed /tmp/io.log || true").strip()
    hotplug.note(f"unplug under I/O: removed {result.seconds:.2f} s after device_del; "
                 f"{errors} failed dd runs after it (expected)")
    assert result.event
    checks.monitor_lacks(guest, "disk0")
    assert checks.disks(guest) == disks
    guest.shell.succeed(f"test ! -e {dev}")
    guest.shell.succeed("rm -f /tmp/io.log /tmp/io.pid; true")


def _sectors(guest, name: str) -> int:
    """Sectors read plus written on a block device (/proc/diskstats)."""
    for line in guest.shell.succeed("cat /proc/diskstats").splitlines():
        f = line.split()
        if len(f) > 9 and f[2] == name:
            return int(f[5]) + int(f[9])
    return 0


@lifecycle
def test_unplug_under_ping_flood(hotplug, platform, device, guest):
    """A NIC is unplugged while the guest floods its gateway with pings: the unplug completes,
    the ping ends with an error, the guest kernel logs nothing bad, the guest stays usable."""
    interfaces = checks.net_interfaces(guest)
    nic = hotplug.plug(guest, device, "nic0")
    ifname = nic_works(guest, nic)
    guest.shell.succeed(f"ping -f -I {ifname} {nic.facts.gateway} > /tmp/flood.log 2>&1 & "
                        "echo $! > /tmp/flood.pid")
    guest.shell.wait_until("the flood to be under way", lambda: int(guest.shell.succeed(
        f"cat /sys/class/net/{ifname}/statistics/tx_packets")) > 200, 10)
    result = nic.unplug()
    # (SIGINT: ping prints its statistics, sent and lost, as it ends)
    guest.shell.succeed("kill -INT $(cat /tmp/flood.pid) 2>/dev/null; sleep 0.3; true")
    stats = guest.shell.succeed("grep -i 'transmitted' /tmp/flood.log || true").strip()
    hotplug.note(f"unplug under a ping flood: removed {result.seconds:.2f} s after device_del; "
                 f"ping: {stats or 'no statistics'}")
    assert result.event
    gone_everywhere(guest, nic, interfaces)
    guest.shell.succeed("rm -f /tmp/flood.log /tmp/flood.pid; true")


def guest_pci_addresses(guest) -> set[str]:
    """The PCI functions the guest's kernel has, as lspci writes them (``00:05.0``)."""
    return {name.removeprefix("0000:") for name in guest.shell.succeed("ls /sys/bus/pci/devices").split()}


@lifecycle
@pytest.mark.emulated_only("as many NICs as free slots (up to 31): a host has one or two")
def test_storm_fills_every_slot(hotplug, platform, device, guest):
    """Every free hotplug slot (each q35 root port; every free slot of pc's root bus) gets a
    NIC at once; all are visible on both sides; all are unplugged at once; all are gone."""
    interfaces = checks.net_interfaces(guest)
    free = len(guest.spec.root_port_ids) or 32 - len({f.slot for f in checks.pci_functions(guest)
                                                      if f.bus == 0})
    if free <= 0:
        raise PreconditionError("a free hotplug slot for the storm", "none")
    nics = [hotplug.plug(guest, device, f"storm{i}") for i in range(free)]
    wanted = {n.function.address for n in nics}
    # (the guest enumerates them one by one, and ejects them one by one: a fixed deadline for
    # 30 failed twice on CI machines (30 s, then 60 s x time factor) with two more runs beside
    # them, so both waits go on while the guest makes progress and fail after 20 s of none.
    # Asked of sysfs, every half second: `lspci` reads the config space of every function,
    # and polled in a loop it took the guest's one vCPU from the enumeration it waited for.)
    listed = guest.shell.wait_progress(f"guest to list all {free} NICs in /sys/bus/pci/devices",
                                       lambda: len(wanted & guest_pci_addresses(guest)),
                                       len(wanted), stall=20, limit=max(60, 10 * free))
    ids = [n.device_id for n in nics]
    results = guest.device_del_all(ids, timeout=20,
                                   limit=max(60, 10 * free))
    for nic in nics:
        nic.removed = True
        nic.device.cleanup(guest, nic)
    hotplug.note(f"{free} NICs at once: all listed by the guest {listed:.2f} s after the "
                 f"last device_add returned; all removed {max(r.seconds for r in results):.2f} s after theirs")
    assert not set(ids) & {e.qdev_id for e in probes.parse_info_pci(guest.hmp("info pci"))}
    assert not set(ids) & {d.get("qdev_id") for d in guest.query_pci()}
    guest.shell.wait_until("guest to list none of them", lambda: not wanted & guest_pci_addresses(guest),
                           10, interval=0.5)
    assert checks.net_interfaces(guest) == interfaces


@lifecycle
@pytest.mark.emulated_only("two NICs in one slot: two host NICs of one role")
def test_multifunction_slot(hotplug, platform, device, guest):
    """Two NICs as functions 1 and 0 of one slot, function 0 last (the slot appears to the
    guest when function 0 arrives): both work; ``device_del`` of function 0 removes the whole
    slot, function 1 with it."""
    interfaces = checks.net_interfaces(guest)
    if guest.spec.one_device_per_bus:
        bus, slot = guest.free_bus(), 0
    else:
        bus = guest.spec.root_bus
        slot = min(set(range(1, 32)) - {f.slot for f in checks.pci_functions(guest) if f.bus == 0})
    fn1 = hotplug.plug(guest, device, "mf1", bus=bus, addr=f"{slot:#x}.0x1")
    fn0 = hotplug.plug(guest, device, "mf0", bus=bus, addr=f"{slot:#x}.0x0", multifunction=True)
    assert (fn0.function.slot, fn0.function.function) == (fn1.function.slot, 0)
    first = nic_works(guest, fn0)
    second = nic_works(guest, fn1)
    assert first != second
    result = fn0.unplug()
    fn1.wait_removed()
    hotplug.note(f"slot {slot:#x} on {bus}: functions 0 and 1; device_del of function 0 removed "
                 f"both in {result.seconds:.2f} s")
    for plugged in (fn0, fn1):
        gone_everywhere(guest, plugged, interfaces)


@lifecycle
def test_live_migration_with_hot_added_devices(hotplug, platform, device, guest):
    """A guest with a hot-added NIC and disk migrates to a second QEMU on this machine
    (``-incoming`` on a unix socket, the destination started with both devices on its command
    line, at the same slots, with the same MAC): on the destination the NIC keeps its address
    and pings its gateway, the disk reads, and both unplug there.

    A NIC passed through with vfio-pci (lab, VT-d host) blocks migration: QEMU refuses, the
    harness says which device and what to do; after its ``device_del`` the guest migrates, and
    the host NIC, free again, is hot-added into the destination and works there."""
    interfaces, disks = checks.net_interfaces(guest), checks.disks(guest)
    nic = hotplug.plug(guest, device, "nic0")
    nic_works(guest, nic)
    disk = hotplug.plug(guest, DISK, "disk0")
    dev = checks.new_disk(guest, disks, DISK.disk_bytes).device
    if getattr(device, "passthrough", ""):
        with pytest.raises(MigrationRefused) as refused:
            hotplug.migrate(guest)
        hotplug.note(f"with {device.passthrough} attached: {refused.value.message}")
        assert refused.value.device_id == "nic0" and guest.alive()
        assert nic.unplug().event
        gone_everywhere(guest, nic, interfaces)
    dest = hotplug.migrate(guest)
    hotplug.note(f"migrated to {dest.name} in {dest.launch_marks['migrated']} s")
    assert not guest.alive(), "the source QEMU still runs"
    if getattr(device, "passthrough", ""):
        nic = hotplug.plug(dest, device, "nic1")
        nic_works(dest, nic)
    for plugged in (nic, disk):
        plugged.function = checks.pci_function(dest, plugged.device_id)
        assert plugged.function is not None, f"{plugged.device_id} is not on the destination"
    assert checks.ipv4_address(dest, nic)
    ifname = checks.nic_interface(dest, nic)   # (by its MAC: its name is the guest's to change)
    dest.shell.succeed(f"ping -c 1 -W 2 -I {ifname} {nic.facts.gateway}")
    dest.shell.succeed(f"dd if={dev} of=/dev/null bs=64k count=16")
    assert nic.unplug().event and disk.unplug().event
    gone_everywhere(dest, nic, interfaces)
    assert checks.disks(dest) == disks


def wait_primary(guest, present: bool, timeout: float) -> tuple[str, dict[str, str]]:
    """Wait until the failover master has (or has lost) its primary slave (``timeout``: a
    reference figure). The three are found by their shared MAC and their roles in sysfs,
    whatever udev has named them by then."""
    def look():
        master, slaves = checks.failover_pair(guest, FAILOVER_MAC)
        return (master, slaves) if master and ("primary" in slaves) == present else None
    return guest.shell.wait_until(f"a failover master for {FAILOVER_MAC} "
                                  f"{'with' if present else 'without'} its primary", look, timeout)


def through_primary(guest, master: str, slaves: dict[str, str], gateway: str) -> float:
    """Ping the gateway through the failover master until it answers; then check the primary
    carries the traffic. Returns the seconds until the first answer."""
    t0 = time.monotonic()
    guest.shell.wait_until_succeeds(f"ping -c 1 -W 1 -I {master} {gateway}", timeout=10)
    waited = time.monotonic() - t0
    tx = f"/sys/class/net/{slaves['primary']}/statistics/tx_packets"
    before = int(guest.shell.succeed(f"cat {tx}"))
    guest.shell.succeed(f"ping -c 2 -i 0.2 -W 2 -I {master} {gateway}")
    assert int(guest.shell.succeed(f"cat {tx}")) >= before + 2, "the primary carried no traffic"
    return waited


@pytest.mark.scenario("nic", one_device=True, name="lifecycle", machines=("q35",))
@pytest.mark.emulated_only("with a vfio primary the destination must be another host: the source "
                           "QEMU keeps the primary it unplugged for migration, and its vfio "
                           "group, until it exits")
def test_failover_pair_through_migration(hotplug, platform, device, guest):
    """QEMU's NIC failover, its answer to migrating a guest that has an SR-IOV VF: a
    virtio-net standby (``failover=on``) and an e1000e primary (``failover_pair_id``, the same
    MAC, the same network). The guest's net_failover joins them under one interface whose
    traffic goes through the primary. Migration unplugs the primary by itself (QEMU waits in
    ``wait-unplug`` for the guest to let go), the guest keeps its address and its gateway
    through the standby, and the destination, started with both on its command line, plugs
    the primary back once the guest's virtio-net is known to have accepted failover."""
    standby = hotplug.plug(guest, STANDBY, "standby0", failover=True, mac=FAILOVER_MAC)
    gateway = standby.facts.gateway
    # (no option ROM: a primary QEMU unplugged for migration keeps its ROM's RAM block, which
    # the destination does not have -- "Unknown ramblock ...e1000e.rom"; QEMU's own failover
    # tests plug theirs with rombar=0,romfile= too)
    primary = hotplug.plug(guest, PRIMARY, "primary0", network=standby.own["net"],
                           failover_pair_id="standby0", mac=FAILOVER_MAC, rombar=0, romfile="")
    held_back = primary.function is None  # hidden until the guest's driver acks failover
    master, slaves = wait_primary(guest, True, 10)
    primary.function = checks.pci_function(guest, "primary0")
    hotplug.note("failover: QEMU " + ("held the primary back until the guest's virtio-net had "
                                      "accepted failover" if held_back else "plugged the primary at once"))
    address = checks.ipv4_address(guest, FAILOVER)
    through_primary(guest, master, slaves, gateway)

    dest = hotplug.migrate(guest)
    t0 = time.monotonic()
    master, slaves = wait_primary(dest, True, 20)
    hotplug.note(f"failover: migrated in {dest.launch_marks['migrated']} s (primary unplugged by "
                 f"QEMU on the way); back in the guest {time.monotonic() - t0:.1f} s after it ran")
    assert checks.ipv4_address(dest, FAILOVER) == address, "the failover master lost its address"
    waited = through_primary(dest, master, slaves, gateway)
    hotplug.note(f"failover: the gateway answered through the master {waited:.1f} s after that")
    assert primary.unplug().event
    master, slaves = wait_primary(dest, False, 10)
    dest.shell.succeed(f"ping -c 1 -W 2 -I {master} {gateway}")  # the standby alone
    assert standby.unplug().event
