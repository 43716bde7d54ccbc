"""Guide 2.1: hot-add a NIC to a guest started with no network, use it, remove it."""

import pytest

from harness.core.errors import PreconditionError
from harness.guest import checks


@pytest.mark.scenario("nic")
def test_nic(hotplug, platform, device, guest):
    """A guest booted with no NIC at all (the guide's ``-net none``), driven over its serial
    console (with ``--guest-access ssh`` it also has a management NIC, which the checks skip). ``device_add`` the NIC as ``nic0``; the monitor lists it (``info pci`` shows
    ``id "nic0"``); the guest's ``lspci`` shows the Ethernet controller and its driver binds; a
    new interface gets an address by DHCP, has the default route, and pings its gateway.
    ``device_del nic0``; it is gone from ``info pci``, ``query-pci`` and the guest's ``lspci``.
    """
    interfaces = checks.net_interfaces(guest)
    if guest.spec.access == "console" and interfaces != {"lo"}:
        raise PreconditionError("a guest with no network (lo alone), as the guide starts it",
                                f"the interfaces {sorted(interfaces)}")

    nic = hotplug.plug(guest, device, "nic0")
    fn = nic.function
    assert fn is not None, "query-pci does not list nic0 after device_add"
    info = checks.monitor_shows(guest, "nic0")
    assert info.class_name == "Ethernet controller", info
    seen = checks.guest_sees_pci(guest, fn)
    assert seen.class_name == "Ethernet controller", seen
    driver = checks.guest_driver_bound(guest, fn, device.guest_driver)
    if getattr(getattr(device, "entry", None), "pf", None):  # an SR-IOV VF (-k vf)
        assert "Virtual Function" in seen.description, f"not a VF to the guest: {seen}"
        hotplug.note(f"VF {device.entry.vf} of {device.entry.pf}: {seen.description}, "
                     f"guest driver {driver}")

    # (found by its MAC, whatever udev names it; configured by the guest's own network stack,
    # or by the harness with the guest's own tool once the guest had its chance)
    address, configured_by = checks.nic_address(guest, nic,
                                                must_configure=hotplug.guest_must_configure_nic)
    ifname = checks.nic_interface(guest, nic)
    gateway = checks.default_gateway(guest, ifname)
    assert gateway == nic.facts.gateway, f"default route via {gateway}, expected {nic.facts.gateway}"
    guest.shell.succeed(f"ping -c 2 -W 2 -I {ifname} {gateway}")
    hotplug.note(f"{ifname} got {address} (configured by the {configured_by}), "
                 f"default via {gateway}")

    result = nic.unplug()
    assert result.event, "the NIC left QEMU without a DEVICE_DELETED event"
    checks.monitor_lacks(guest, "nic0")
    checks.guest_lacks_pci(guest, fn)
    assert checks.net_interfaces(guest) == interfaces, "the interface is still in the guest"
