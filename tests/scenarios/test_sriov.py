"""SR-IOV virtual functions (the guide's igbvf/ixgbevf family): VFs of one physical function,
which stays on the host, hot-added through vfio-pci, two into one guest and two into two guests
at once, each with its own address. ``test_nic`` runs each VF alone (``-k vf``).

With ``--backend lab`` (the lab host's igb, 82576) or ``--backend vfio`` (an inventory with
``pf``/``vf`` entries, docs/vfio.md); with ``--backend emulated`` they are deselected: there the
VFs of QEMU's igb exist only inside the guest that has the igb."""

import pytest

from harness.guest import checks
from harness.scenario.devices import PCI_PLATFORMS

pytestmark = pytest.mark.passthrough
Q35 = PCI_PLATFORMS[1]


def two_vfs(hs):
    """Two VF entries of one PF from the inventory, as hotplug devices."""
    by_pf: dict[str, list] = {}
    for d in hs.vfio_devices("nic"):
        if d.entry.pf:
            by_pf.setdefault(d.entry.pf, []).append(d)
    pair = next((vfs[:2] for vfs in by_pf.values() if len(vfs) >= 2), None)
    if pair is None:
        pytest.skip(f"the inventory {hs.inventory.path} has no PF with two VF entries (pf, vf = "
                    "0 and vf = 1, vfs = 2): add them (docs/vfio.md) to run this test")
    return pair


def vf_works(hotplug, guest, vf, device_id: str) -> tuple:
    """Hot-add one VF; the guest sees a Virtual Function, its driver binds, a new interface
    (found by its PCI function: QEMU does not know a host NIC's MAC) gets an address and pings
    the gateway. Returns (plugged, interface, address)."""
    nic = hotplug.plug(guest, vf, device_id)
    seen = checks.guest_sees_pci(guest, nic.function)
    assert "Virtual Function" in seen.description, f"not a VF to the guest: {seen}"
    driver = checks.guest_driver_bound(guest, nic.function, None)
    address = checks.ipv4_address(guest, nic)
    ifname = checks.nic_interface(guest, nic)
    guest.shell.succeed(f"ping -c 2 -W 2 -I {ifname} {nic.facts.gateway}")
    hotplug.note(f"{device_id}: {vf.passthrough}, guest driver {driver}, {ifname} got {address}")
    return nic, ifname, address


def vf_leaves(guest, nic) -> None:
    result = nic.unplug()
    assert result.event, f"{nic.device_id} left QEMU without a DEVICE_DELETED event"
    checks.monitor_lacks(guest, nic.device_id)
    checks.guest_lacks_pci(guest, nic.function)


@pytest.mark.guest(platform=Q35)
def test_two_vfs_of_one_pf_in_one_guest(hotplug, hotplug_session, guest):
    """VF 0 and VF 1 of one PF into one guest: two Virtual Functions, two interfaces, two
    addresses, both ping the gateway; both unplugged; gone on both sides."""
    vf0, vf1 = two_vfs(hotplug_session)
    before = checks.net_interfaces(guest)
    nic0, _, addr0 = vf_works(hotplug, guest, vf0, "vf0")
    nic1, _, addr1 = vf_works(hotplug, guest, vf1, "vf1")
    assert addr0 != addr1, f"both VFs got {addr0}"
    assert nic0.function.address != nic1.function.address
    vf_leaves(guest, nic1)
    vf_leaves(guest, nic0)
    assert checks.net_interfaces(guest) == before


@pytest.mark.guest(platform=Q35)
def test_two_vfs_of_one_pf_in_two_guests(hotplug, hotplug_session, hh_guest, guest):
    """VF 0 into one guest and VF 1 into another, both running at once: each works with its
    own address while the other has its VF."""
    vf0, vf1 = two_vfs(hotplug_session)
    other = hotplug.guest(Q35.spec(), hh_guest.image, access=hh_guest.access,
                          deadlines=hotplug_session.deadlines_for(hh_guest))
    nic0, _, addr0 = vf_works(hotplug, guest, vf0, "vf0")
    nic1, _, addr1 = vf_works(hotplug, other, vf1, "vf1")
    assert addr0 != addr1, f"both VFs got {addr0}"
    vf_leaves(other, nic1)
    vf_leaves(guest, nic0)
