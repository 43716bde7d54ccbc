"""The guide's checks, from the monitor side and from inside the guest.

Each check waits on a condition with a deadline (never a bare sleep) and, when it fails, says
what it expected and what it last saw.
"""

from __future__ import annotations

import dataclasses
import json
import re

from harness.guest import probes
from harness.core.errors import GuestCheckError, PreconditionError, QMPCommandError, WaitTimeout


@dataclasses.dataclass(frozen=True)
class PciFunction:
    """Where QEMU put a device, as ``query-pci`` reports it."""

    bus: int
    slot: int
    function: int
    vendor: str
    device: str
    class_desc: str

    @property
    def address(self) -> str:
        """The guest's ``lspci`` address: QEMU reports the bus numbers the guest programmed."""
        return f"{self.bus:02x}:{self.slot:02x}.{self.function:x}"

    @property
    def ids(self) -> str:
        return f"{self.vendor}:{self.device}"


def _function(d: dict) -> PciFunction:
    return PciFunction(d["bus"], d["slot"], d["function"], f"{d['id']['vendor']:04x}",
                       f"{d['id']['device']:04x}", d["class_info"].get("desc", ""))


def pci_function(guest, device_id: str) -> PciFunction | None:
    qdev_id = guest.qemu_id(device_id)
    return next((_function(d) for d in guest.query_pci() if d.get("qdev_id") == qdev_id), None)


def pci_functions(guest) -> list[PciFunction]:
    """Every PCI function QEMU's ``query-pci`` lists."""
    return [_function(d) for d in guest.query_pci()]


def monitor_shows(guest, device_id: str) -> probes.InfoPciEntry:
    """``info pci`` lists a function with ``id "<device_id>"`` (guide 2.1 step 4); through
    libvirt, its live domain XML lists the device too."""
    driver_view(guest, device_id, present=True)
    text, qdev_id = guest.hmp("info pci"), guest.qemu_id(device_id)
    for e in probes.parse_info_pci(text):
        if e.qdev_id == qdev_id:
            return e
    raise GuestCheckError(f'`info pci` shows no device with id "{qdev_id}"',
                          details="ids listed: " + ", ".join(
                              repr(e.qdev_id) for e in probes.parse_info_pci(text)))


def driver_view(guest, device_id: str, *, present: bool) -> None:
    """What the driver above QEMU keeps of the device agrees (``--driver libvirt``: the live
    domain XML lists it while plugged and not after); the QMP driver keeps nothing of its own."""
    listed = guest.driver_lists(device_id)
    if listed is not None and listed != present:
        raise GuestCheckError(f"the live domain XML {'lacks' if present else 'still lists'} "
                              f"{guest.qemu_id(device_id)} "
                              f"{'after the hot-add' if present else 'after its removal'}")


def monitor_lacks(guest, device_id: str) -> None:
    """Neither ``info pci`` nor ``query-pci`` (nor libvirt's live XML) knows ``device_id``."""
    driver_view(guest, device_id, present=False)
    ids = [e.qdev_id for e in probes.parse_info_pci(guest.hmp("info pci"))]
    if guest.qemu_id(device_id) in ids:
        raise GuestCheckError(f'`info pci` still shows id "{guest.qemu_id(device_id)}" after device_del')
    if pci_function(guest, device_id) is not None:
        raise GuestCheckError(f"query-pci still lists {device_id} after device_del")


def guest_sees_pci(guest, fn: PciFunction, timeout: float = 10.0) -> probes.LspciEntry:
    """Guest ``lspci`` shows the function at its address with QEMU's vendor:device ids."""
    def look():
        entries = probes.parse_lspci_nn(guest.shell.run(f"lspci -nn -s {fn.address}").output)
        return next((e for e in entries if e.ids == fn.ids), None)
    return guest.shell.wait_until(f"guest lspci to show {fn.ids} at {fn.address}", look, timeout)


def guest_driver_bound(guest, fn: PciFunction, driver: str | None, timeout: float = 10.0) -> str:
    """``lspci -k`` says ``Kernel driver in use: <driver>`` for the function (any driver if
    ``driver`` is None: a host device's guest driver is not always known in advance)."""
    def look():
        info = probes.parse_lspci_k(guest.shell.run(f"lspci -k -s {fn.address}").output)
        return next((v["driver"] for v in info.values()
                     if v.get("driver") and driver in (None, v["driver"])), None)
    return guest.shell.wait_until(f"guest driver {driver or '(any)'} to bind {fn.address}", look, timeout)


def guest_lacks_pci(guest, fn: PciFunction, timeout: float = 10.0) -> None:
    """Guest ``lspci`` no longer shows the function (guide 2.1 step 6)."""
    def gone():
        entries = probes.parse_lspci_nn(guest.shell.run("lspci -nn").output)
        return not any(e.slot.endswith(fn.address) and e.ids == fn.ids for e in entries)
    guest.shell.wait_until(f"guest lspci to stop showing {fn.ids} at {fn.address}", gone, timeout)


def settle_udev(guest) -> None:
    """Let the guest's udev finish the events it has (renaming a NIC, onlining memory by a
    rule) before the harness reads what they change; a guest without udevadm has none."""
    guest.shell.run("! command -v udevadm >/dev/null || udevadm settle --timeout=10", 15)


# -- network interfaces: a NIC is its MAC and its PCI function, not its name --------------------

#: Every interface in one pass: ``name MAC device-path|- driver|- [lower...]`` (parsed by
#: probes.parse_net_links). A name that vanishes while it is read (udev renamed it) makes the
#: pass fail on stderr, and so does a set of names that changed between its start and its end:
#: a half-renamed view is never data.
NET_LINKS = (
    'cd /sys/class/net || exit 1; names="$(echo *)"; for n in $names; do '
    'a=$(cat $n/address) || exit 1; d=-; v=-; '
    'if [ -e $n/device ]; then d=$(readlink -f $n/device) && [ -n "$d" ] '
    '|| { echo "$n: its device link vanished" >&2; exit 1; }; '
    'if [ -e $n/device/driver ]; then v=$(readlink $n/device/driver) '
    '|| { echo "$n: its driver link vanished" >&2; exit 1; }; v=${v##*/}; fi; fi; '
    'l=; for x in $n/lower_*; do [ -e "$x" ] && l="$l ${x##*/lower_}"; done; '
    'echo "$n $a $d $v$l"; done; '
    '[ "$(echo *)" = "$names" ] || { echo "renamed while read: $names -> $(echo *)" >&2; exit 1; }')


@dataclasses.dataclass(frozen=True)
class NicIdentity:
    """What QEMU gave a NIC, by which the guest's interface is found at the moment of use."""

    device_id: str
    mac: str | None     # None: QEMU does not know it (a passed-through host NIC)
    pci: str | None     # "01:00.0", as lspci writes it

    def __str__(self) -> str:
        return f"{self.device_id} (MAC {self.mac or '?'}, PCI {self.pci or '?'})"


def nic_identity(guest, plugged) -> NicIdentity:
    """The MAC QEMU gave the plugged NIC and the PCI function it sits at."""
    try:
        mac = guest.qmp("qom-get", path=f"/machine/peripheral/{guest.qemu_id(plugged.device_id)}",
                        property="mac")
    except QMPCommandError:
        mac = None   # vfio-pci has no "mac": the host NIC's own, which only the guest reads
    fn = plugged.function or pci_function(guest, plugged.device_id)
    return NicIdentity(plugged.device_id, mac, fn.address if fn else None)


def _read_links(guest) -> list[probes.NetLink]:
    settle_udev(guest)
    return probes.parse_net_links(guest.shell.read(
        NET_LINKS, "one line per network interface: name, MAC, device, driver, lowers"))


def net_links(guest, timeout: float = 10.0) -> list[probes.NetLink]:
    """Every network interface, once the guest's udev has settled, read in one steady pass
    (a pass that saw a rename is read again, within ``timeout``)."""
    return guest.shell.wait_until("a steady view of /sys/class/net", lambda: _read_links(guest),
                                  timeout)


def net_interfaces(guest) -> set[str]:
    """The interfaces' names once udev has settled (for "the same as before" comparisons)."""
    return {link.name for link in net_links(guest)}


def _current_name(guest, nic) -> str | None:
    if isinstance(nic, str):
        return nic
    link = probes.interface_of(_read_links(guest), nic.mac, nic.pci)
    return link.name if link else None


def nic_interface(guest, nic, timeout: float = 10.0) -> str:
    """The name the guest's interface for ``nic`` (a Plugged NIC or its :class:`NicIdentity`)
    has now, found by its MAC (the interface carrying its traffic: a failover pair's master)
    or its PCI function, after the guest's udev has settled. Resolve it again after anything
    that may rename it (a reboot, a migration): the name is the guest's to change."""
    ident = nic if isinstance(nic, NicIdentity) else nic_identity(guest, nic)
    return guest.shell.wait_until(f"the guest's interface of {ident}",
                                  lambda: _current_name(guest, ident), timeout)


def ipv4_address(guest, nic, timeout: float = 20.0) -> str:
    """The IPv4 address of ``nic`` (an interface name, or a NIC's identity, resolved to its
    current name at every look: udev may rename it while DHCP runs), once it has one."""
    ident = nic if isinstance(nic, (str, NicIdentity)) else nic_identity(guest, nic)

    def look():
        ifname = _current_name(guest, ident)
        out = guest.shell.run(f"ip -j addr show dev {ifname}").output if ifname else ""
        try:
            return (probes.ipv4_addresses(out).get(ifname) or [None])[0]
        except json.JSONDecodeError:
            return None
    return guest.shell.wait_until(f"an IPv4 address on {ident}", look, timeout)


#: The guest's own ways to start DHCP on one interface, in order of preference: (name, test
#: that the guest has it and it runs, command). ``{i}``: the interface. networkd and ifupdown
#: take a one-interface configuration first, NetworkManager makes its own connection. ifupdown's
#: default route gets a metric of its own (100 + ifindex): dhclient-script's plain one failed
#: with "File exists" beside the management NIC's, and the NIC had an address but no route.
#: (ifdown first: ifupdown's state may still have a removed NIC of the same name as up.)
NETWORK_TOOLS = (
    ("networkctl", "command -v networkctl && systemctl is-active -q systemd-networkd",
     "mkdir -p /run/systemd/network && printf '[Match]\\nName={i}\\n[Network]\\nDHCP=ipv4\\n' "
     "> /run/systemd/network/10-hh-{i}.network && networkctl reload && networkctl reconfigure {i}"),
    ("nmcli", "command -v nmcli && nmcli -t -f RUNNING general | grep -qx running",
     "nmcli device connect {i}"),
    ("ifup", "command -v ifup && grep -qs '^source.*/etc/network/interfaces.d' /etc/network/interfaces",
     "printf 'iface {i} inet dhcp\\n    metric %s\\n' $((100 + $(cat /sys/class/net/{i}/ifindex))) "
     "> /etc/network/interfaces.d/hh-{i} && {{ ifdown --force {i}; ifup {i}; }}"),
    ("dhclient", "command -v dhclient", "dhclient -1 {i}"),
    ("udhcpc", "command -v udhcpc", "udhcpc -n -q -i {i}"),
)


def configure_dhcp(guest, ifname: str) -> str:
    """Start DHCP on ``ifname`` with the first of the guest's own tools it has
    (:data:`NETWORK_TOOLS`); returns the tool's name."""
    for name, present, command in NETWORK_TOOLS:
        if guest.shell.run(f"{{ {present}; }} >/dev/null 2>&1", 10).ok:
            r = guest.shell.run(command.format(i=ifname), 30)
            if not r.ok:
                raise GuestCheckError(f"{name} could not start DHCP on {ifname}",
                                      details=r.described())
            return name
    raise GuestCheckError(f"the guest has none of {', '.join(n for n, _, _ in NETWORK_TOOLS)} to "
                          f"start DHCP on {ifname} with", hint="configure the guest's network "
                          "for hot-added NICs (DHCP on every Ethernet interface)")


#: What in the guest could configure a new interface by itself (parsed by
#: probes.network_stacks): the processes that run, the udev rules that start DHCP, and the
#: interfaces ifupdown brings up on hotplug.
NETWORK_STACKS = (
    'for c in /proc/[0-9]*/comm; do read -r n < "$c" && echo "process $n"; done 2>/dev/null; '
    "grep -lsE 'dhclient|udhcpc|dhcpcd|networkctl|nmcli|hook-hotplug' /etc/udev/rules.d/* "
    "/run/udev/rules.d/* /lib/udev/rules.d/* /usr/lib/udev/rules.d/* | sed 's/^/rule /'; "
    "if command -v ifquery >/dev/null; then l=$(ifquery -l --allow=hotplug 2>/dev/null) "
    "&& echo ifupdown-hotplug $l || echo ifupdown-unreadable; fi; true")

_SELF_HINT = ("give the guest DHCP on every Ethernet NIC (a udev rule, a networkd .network, "
              "NetworkManager's default, allow-hotplug in ifupdown)")


def guest_may_configure(guest, nic: NicIdentity) -> tuple[list[str], str]:
    """Read the guest's state, once udev has named the interface (it appears, udev settles,
    and its name is read again: ifupdown's list names interfaces as udev leaves them): what
    of its own may configure ``nic`` (an empty list: nothing will), and the evidence
    (probes.network_stacks)."""
    nic_interface(guest, nic)
    settle_udev(guest)
    ifname = nic_interface(guest, nic)
    return probes.network_stacks(guest.shell.succeed(NETWORK_STACKS, 15), ifname)


def nic_address(guest, nic, *, must_configure: bool = False,
                timeout: float = 20.0) -> tuple[str, str]:
    """The hot-added NIC's IPv4 address and who configured it. The guest's state is read
    first: when something of its own may configure the NIC (networkd, NetworkManager, ifupdown
    naming it for hotplug, an unknown stack), it is given ``timeout`` to; when the state proves
    nothing will (ifupdown as Debian's cloud images render it), no time is spent waiting. Then
    the harness starts DHCP with the guest's own tool and says so ("harness (ifup)"), unless
    ``must_configure`` (``--guest-must-configure-nic``) makes the guest's silence a failure."""
    ident = nic if isinstance(nic, NicIdentity) else nic_identity(guest, nic)
    may, read = guest_may_configure(guest, ident)
    if not may and must_configure:
        raise GuestCheckError(f"nothing in the guest would configure {ident} by itself "
                              f"(--guest-must-configure-nic): {read}", hint=_SELF_HINT)
    if may:
        try:
            return ipv4_address(guest, ident, timeout), "guest"
        except WaitTimeout as e:
            if must_configure:
                raise GuestCheckError(f"the guest did not configure {ident} by itself within "
                                      f"{timeout:g} s (--guest-must-configure-nic; {read})",
                                      hint=_SELF_HINT, details=e.details) from e
    tool = configure_dhcp(guest, nic_interface(guest, ident))
    return ipv4_address(guest, ident, timeout), f"harness ({tool})"


def default_gateway(guest, ifname: str, timeout: float = 10.0) -> str:
    """The gateway of the interface's default route (the guide's ``route -n``). Waited for: a
    DHCP client may set the route a moment after the address, and ``ip -j route`` prints cut
    JSON when the route table changes during its dump (seen with systemd-networkd)."""
    def look():
        try:
            return probes.default_gateways(guest.shell.succeed("ip -j route show default")).get(ifname)
        except json.JSONDecodeError as e:
            raise GuestCheckError(f"`ip -j route` printed cut JSON (the table changed): {e}")
    try:
        return guest.shell.wait_until(f"a default route through {ifname}", look, timeout)
    except WaitTimeout as e:
        raise GuestCheckError(f"no default route through {ifname}",
                              details=guest.shell.run("ip route").output) from e


def failover_pair(guest, mac: str) -> tuple[str | None, dict[str, str]]:
    """net_failover's master for ``mac`` and its slaves by role ({"standby": ..., "primary":
    ...}; the primary absent while unplugged). All three share the MAC: the master is the one
    with lower interfaces, the standby the lower that virtio_net drives. Names as udev left
    them (enp1s0, enp1s0nsby, enp2s0), read in one steady pass."""
    links = net_links(guest)
    masters = [n for n in links if n.mac == mac.lower() and n.lowers]
    if len(masters) > 1:
        raise GuestCheckError(f"expected one failover master for {mac}, the guest has "
                              f"{[m.name for m in masters]}", details="\n".join(map(str, links)))
    if not masters:
        return None, {}
    by_name = {n.name: n for n in links}
    return masters[0].name, {("standby" if by_name[s].driver == "virtio_net" else "primary"): s
                             for s in masters[0].lowers if s in by_name}


# -- USB ---------------------------------------------------------------------------------------


def lsusb(guest) -> list[probes.LsusbEntry]:
    # lsusb exits 1 when the guest has no USB bus at all; that is an empty list, not an error.
    return probes.parse_lsusb(guest.shell.run("lsusb").output)


#: The device's own strings, as lsusb prints them when its ID database does not know the device:
#: "<busnum> <devnum> <manufacturer> <product>" per USB device in sysfs.
USB_STRINGS_COMMAND = ("for d in /sys/bus/usb/devices/*; do [ -f $d/devnum ] && echo $(cat $d/busnum) "
                       "$(cat $d/devnum) $(cat $d/manufacturer $d/product 2>/dev/null); done")


def usb_device_strings(guest) -> dict[tuple[int, int], str]:
    """(bus, device) -> "manufacturer product" as the device itself reports them."""
    out = {}
    for line in guest.shell.run(USB_STRINGS_COMMAND).output.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            out[(int(parts[0]), int(parts[1]))] = parts[2] if len(parts) == 3 else ""
    return out


def guest_usb_appears(guest, before: list[probes.LsusbEntry], product: str,
                      timeout: float = 10.0) -> probes.LsusbEntry:
    """A new ``lsusb`` entry of the device named ``product`` (by name: tablet and mouse share an
    ID). lsusb names a device from its ID database when it has one (a distribution's usbutils
    says "Adomax Technology Co., Ltd QEMU Tablet"), else from the device's own strings ("QEMU
    QEMU USB Tablet"): the device's own strings are read from sysfs when lsusb's name differs."""
    old = {(e.bus, e.device) for e in before}

    def look():
        new = [e for e in lsusb(guest) if (e.bus, e.device) not in old]
        named = next((e for e in new if product in e.name), None)
        if named is not None or not new:
            return named
        strings = usb_device_strings(guest)
        return next((e for e in new if product in strings.get((e.bus, e.device), "")), None)
    return guest.shell.wait_until(f"guest lsusb to show a new '{product}'", look, timeout)


def new_usb_bus(guest, before: list[probes.LsusbEntry], timeout: float = 10.0) -> probes.LsusbEntry:
    """The root hub (vendor 1d6b, Linux Foundation) of a USB bus that was not there before."""
    old = {e.bus for e in before}

    def look():
        return next((e for e in lsusb(guest) if e.vendor == "1d6b" and e.bus not in old), None)
    return guest.shell.wait_until("guest lsusb to show a new USB bus", look, timeout)


def guest_usb_gone(guest, entry: probes.LsusbEntry, timeout: float = 10.0) -> None:
    def gone():
        return not any((e.bus, e.device, e.ids) == (entry.bus, entry.device, entry.ids)
                       for e in lsusb(guest))
    guest.shell.wait_until(f"guest lsusb to stop showing Bus {entry.bus:03d} Device {entry.device:03d} "
               f"{entry.name}", gone, timeout)


def _info_usb_match(entries, device_id: str, product: str):
    # `info usb` names the qdev id since QEMU 5.x; older ones only the product.
    return [e for e in entries if e.qdev_id == device_id or (not e.qdev_id and e.product == product)]


def monitor_usb_shows(guest, device_id: str, product: str) -> probes.InfoUsbEntry:
    """``info usb`` lists the device (guide 2.2 step 4)."""
    driver_view(guest, device_id, present=True)
    entries = probes.parse_info_usb(guest.hmp("info usb"))
    found = _info_usb_match(entries, guest.qemu_id(device_id), product)
    if not found:
        raise GuestCheckError(f"`info usb` does not list {device_id} ({product})",
                              details="listed: " + "; ".join(f"{e.product} {e.qdev_id}" for e in entries))
    if found[0].product != product:
        raise GuestCheckError(f"`info usb` names {device_id} '{found[0].product}', expected '{product}'")
    return found[0]


def monitor_usb_lacks(guest, device_id: str, product: str) -> None:
    driver_view(guest, device_id, present=False)
    if _info_usb_match(probes.parse_info_usb(guest.hmp("info usb")), guest.qemu_id(device_id), product):
        raise GuestCheckError(f"`info usb` still lists {device_id} after device_del")


# -- disks -------------------------------------------------------------------------------------


def disks(guest) -> list[probes.FdiskDisk]:
    return probes.parse_fdisk_l(guest.shell.succeed("fdisk -l"))


def new_disk(guest, before: list[probes.FdiskDisk], size_bytes: int | None,
             timeout: float = 15.0) -> probes.FdiskDisk:
    """A disk ``fdisk -l`` did not list before, of ``size_bytes`` (any size if None)."""
    return new_disk_behind(guest, before, size_bytes, (), timeout)[0]


def new_disk_behind(guest, before: list[probes.FdiskDisk], size_bytes: int | None,
                    functions, timeout: float = 15.0) -> tuple[probes.FdiskDisk, str]:
    """A new disk as :func:`new_disk`, and who found it: "guest" when its kernel scanned the
    controller by itself; when ``timeout`` passes without one, the SCSI hosts hanging off
    ``functions`` (the PCI functions the disk sits behind) are read first, and only a host
    that found no target is scanned, with the guest's own sysfs interface (``echo "- - -" >
    /sys/class/scsi_host/hostN/scan``, what rescan-scsi-bus does); then "harness (scanned
    hostN)". No host behind them, or still no disk, fails with what the guest shows."""
    old = {d.device for d in before}
    disk = f"new {size_bytes}-byte disk" if size_bytes else "new disk"

    def look():
        return next((d for d in disks(guest) if d.device not in old
                     and (size_bytes is None or d.size_bytes == size_bytes)), None)

    try:
        return guest.shell.wait_until(f"a {disk} in the guest's fdisk -l", look, timeout), "guest"
    except WaitTimeout as e:
        if not functions:
            raise GuestCheckError(f"no {disk} in the guest's fdisk -l within {timeout:g} s",
                                  details=_disk_evidence(guest, e)) from e
        first = e
    addresses = [fn.address for fn in functions]
    hosts = [h for h in scsi_hosts(guest) if any(h.behind(a) for a in addresses)]
    idle = [h for h in hosts if not h.targets]
    if not idle:
        why = (f"its SCSI hosts {[h.name for h in hosts]} found their targets" if hosts
               else "the guest has no SCSI host behind them")
        raise GuestCheckError(f"no {disk} in the guest's fdisk -l within {timeout:g} s "
                              f"behind {', '.join(addresses)}: {why}",
                              details=_disk_evidence(guest, first))
    for h in idle:
        guest.shell.succeed(f'echo "- - -" > /sys/class/scsi_host/{h.name}/scan')
    names = ", ".join(f"{h.name} ({h.driver})" for h in idle)
    try:
        found = guest.shell.wait_until(f"a {disk} after scanning {names}", look, timeout)
    except WaitTimeout as e:
        raise GuestCheckError(f"no {disk} in the guest's fdisk -l, neither within "
                              f"{timeout:g} s nor after the harness scanned {names}",
                              details=_disk_evidence(guest, e)) from e
    return found, f"harness (scanned {names}: the guest had not)"


def scsi_hosts(guest) -> list[probes.ScsiHost]:
    return probes.parse_scsi_hosts(guest.shell.read(probes.SCSI_HOSTS, "one line per SCSI host"))


def _disk_evidence(guest, timeout: WaitTimeout) -> str:
    """What a missing disk's error carries: the last wait's, the SCSI hosts, the kernel's tail."""
    hosts = guest.shell.run(probes.SCSI_HOSTS).output.strip() or "(no SCSI host)"
    return (f"{timeout}: {timeout.details}\nSCSI hosts (name driver path targets):\n{hosts}\n"
            f"kernel log, last lines:\n{guest.shell.run('dmesg | tail -n 25').output}")


def disk_gone(guest, disk: probes.FdiskDisk, timeout: float = 10.0) -> None:
    guest.shell.wait_until(f"{disk.device} to leave the guest's fdisk -l",
               lambda: all(d.device != disk.device for d in disks(guest)), timeout)


# -- memory ------------------------------------------------------------------------------------

#: Each memory block with its state and valid zones (parsed by probes.parse_memory_blocks).
MEMORY_BLOCKS = ("cd /sys/devices/system/memory && for b in memory[0-9]*; do "
                 "echo $b $(cat $b/state) $(cat $b/valid_zones); done")


def memory_blocks(guest) -> dict[str, probes.MemoryBlock]:
    """The guest's memory blocks by name. A block read mid-removal (its files gone) fails the
    read, which a wait tries again: a half-read block is not data."""
    out = guest.shell.read(MEMORY_BLOCKS, "one line per memory block: name, state, zones")
    return {b.name: b for b in probes.parse_memory_blocks(out)}


@dataclasses.dataclass(frozen=True)
class OnlinedBlock:
    name: str
    by: str      # "harness" or "guest" (a udev rule, the kernel's memhp_default_state)
    zone: str    # "Movable": it can leave again; "Normal": the kernel may refuse


def online_memory(guest, names: set[str]) -> list[OnlinedBlock]:
    """Bring the new blocks ``names`` online, acting only where the guest did not: its udev is
    let finish first (a rule like RHEL's 40-redhat.rules onlines them itself), each block's
    ``state`` is read, and only an offline one is onlined by the harness, movable where its
    ``valid_zones`` offer Movable. Says per block who onlined it and into which zone."""
    settle_udev(guest)
    before = memory_blocks(guest)
    if missing := names - set(before):
        raise PreconditionError(f"the new memory blocks {sorted(names)}",
                                f"{sorted(missing)} gone from /sys/devices/system/memory")
    written = {}
    for name in sorted(names):
        if before[name].state == "offline":
            how = "online_movable" if "Movable" in before[name].zones else "online"
            written[name] = guest.shell.run(f"echo {how} > /sys/devices/system/memory/{name}/state")
    after = memory_blocks(guest)
    out = []
    for name in sorted(names):
        block = after.get(name)
        if block is None or block.state != "online":
            r = written.get(name)
            raise GuestCheckError(f"memory block {name} is not online: it is "
                                  f"{block.state if block else 'gone'}",
                                  details=r.described() if r else f"before: {before[name]}")
        # (a write that failed because the guest onlined the block in between is the guest's)
        by = "harness" if name in written and written[name].ok else "guest"
        out.append(OnlinedBlock(name, by, block.zone))
    return out


def describe_onlined(blocks: list[OnlinedBlock]) -> str:
    """"memory32, memory33 onlined by the guest into Normal", grouped by who and where."""
    groups: dict[tuple[str, str], list[str]] = {}
    for b in blocks:
        groups.setdefault((b.by, b.zone), []).append(b.name)
    return "; ".join(f"{', '.join(names)} onlined by the {by} into {zone}"
                     for (by, zone), names in groups.items())


# -- the guest kernel's health ---------------------------------------------------------------

#: What a healthy hotplug never makes a kernel log (an extended regex, for grep -E in the guest).
KERNEL_PROBLEM = (r"Oops|BUG:|WARNING: CPU|WARNING: at |general protection fault|Kernel panic|"
                  r"INFO: task [^ ]+ blocked for more than|soft lockup|hard LOCKUP|Call Trace:")
_STAMP = re.compile(r"^\[\s*(\d+\.\d+)\]")


def kernel_log_mark(guest) -> float | None:
    """The kernel log's last timestamp now (None: no log to read, e.g. no dmesg)."""
    r = guest.shell.run("dmesg | tail -n 1", timeout=10)
    m = _STAMP.match(r.output.strip()) if r.ok else None
    # (no timestamps: old lines cannot be told from new ones, so no check)
    return float(m.group(1)) if m else None


def kernel_problems(guest, since: float | None) -> list[str]:
    """Each problem the guest kernel logged after ``since`` (a :func:`kernel_log_mark`), with up
    to 25 lines that follow it (the call trace). The guest filters its log itself: a whole
    dmesg over a nested guest's serial console takes longer than a command may."""
    if since is None:
        return []
    r = guest.shell.run(f"dmesg | grep -E -A 25 '{KERNEL_PROBLEM}' || true",
                        timeout=15)
    if not r.ok:
        return []
    out = []
    for group in r.output.split("\n--\n"):
        lines = [ln for ln in group.splitlines()
                 if (m := _STAMP.match(ln)) is None or float(m.group(1)) > since]
        out += _split_problems(lines)
    return out


def _split_problems(lines: list[str]) -> list[str]:
    """One entry per problem: its line and what follows, up to 25 lines or the next problem.
    A call trace belongs to the problem above it; alone (a hung task's) it is one."""
    starts = [i for i, ln in enumerate(lines) if re.search(KERNEL_PROBLEM, ln)]
    starts = [i for n, i in enumerate(starts) if "Call Trace:" not in lines[i]
              or not n or i - starts[n - 1] > 25]
    return ["\n".join(lines[i:min(i + 26, *(j for j in starts if j > i), len(lines))])
            for i in starts]
