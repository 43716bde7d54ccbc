"""harness.host.inventory: loading, one line per problem naming file, entry and fix, to_toml."""

import tomllib

import pytest

from harness.core.errors import ConfigError
from harness.host.inventory import (GATEWAY_PLACEHOLDER, Inventory, InventoryDevice,
                                    InventoryError, load_inventory, parse_inventory)

from . import fakesysfs

lab_readonly = fakesysfs.lab_readonly  # fixture
lab, fake_root = fakesysfs.lab, fakesysfs.fake_root  # fixtures

GOOD = """
[[device]]
role = "nic"
name = "82599-port0"
bdf = "0000:05:00.0"
gateway = "192.168.100.1"

[[device]]
role = "sata-controller"
bdf = "06:00.0"
disk_bytes = 164696555520

[[device]]
role = "usb-controller"
bdf = "07:00.0"

[[device]]
role = "usb-device"
hostbus = 3
hostaddr = 3
vendorid = "0x03f0"
productid = "0x8607"
product = "Optical Mobile Mouse"

[[device]]
role = "usb-device"
vendorid = 0x046d
productid = "C31C"
"""


def test_load_good_inventory(tmp_path, lab_readonly):
    path = tmp_path / "inventory.toml"
    path.write_text(GOOD)
    inv = load_inventory(path, lab_readonly.root)
    assert inv.path == path
    [nic] = inv.for_role("nic")
    assert (nic.name, nic.bdf, nic.gateway) == ("82599-port0", "0000:05:00.0", "192.168.100.1")
    [sata] = inv.for_role("sata-controller")
    assert (sata.name, sata.bdf, sata.disk_bytes) == ("sata-controller-06-00.0", "0000:06:00.0",
                                                      164696555520)
    mouse, keyboard = inv.for_role("usb-device")
    assert (mouse.name, mouse.hostbus, mouse.vendorid) == ("usb-device-3-3", 3, "0x03f0")
    assert (keyboard.name, keyboard.vendorid, keyboard.productid) == \
        ("usb-device-046d-c31c", "0x046d", "0xc31c")
    assert inv.pci_addresses() == {"0000:05:00.0", "0000:06:00.0", "0000:07:00.0"}
    assert inv.by_name("82599-port0") is nic
    with pytest.raises(ConfigError, match="no device named 'nope'"):
        inv.by_name("nope")
    with pytest.raises(ConfigError, match="unknown role"):
        inv.for_role("nics")


def entry(**keys) -> str:
    def value(v):
        return f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v
    return "[[device]]\n" + "".join(f"{k} = {value(v)}\n" for k, v in keys.items())


NIC = dict(role="nic", bdf="05:00.0", gateway="192.168.100.1")

BAD = {
    "unknown key": (entry(**NIC, gatway="1.2.3.4"),
                    'inventory.toml: device #1 "nic-05-00.0": unknown key \'gatway\' (did you mean '
                    '\'gateway\'?); keys of nic: role, name, bdf, gateway'),
    "misspelt required key is reported once": (entry(role="nic", bdf="05:00.0", gatewy="1.2.3.4"),
                                               "unknown key 'gatewy' (did you mean 'gateway'?)"),
    "key of another role": (entry(**NIC, disk_bytes=10),
                            "device #1 \"nic-05-00.0\": key 'disk_bytes' does not apply to role 'nic'; remove it"),
    "unknown role": (entry(role="nics", bdf="05:00.0"),
                     "device #1: unknown role 'nics' (did you mean 'nic'?); use one of nic, "
                     "usb-controller, sata-controller, nvme, usb-device"),
    "missing role": (entry(bdf="05:00.0"), "device #1: missing key 'role'; add role = "),
    "missing bdf": (entry(role="usb-controller", name="xhci"),
                    'device #1 "xhci": missing key \'bdf\'; add bdf = "DDDD:BB:DD.F"'),
    "missing gateway": (entry(role="nic", bdf="05:00.0"),
                        "device #1 \"nic-05-00.0\": missing key 'gateway'; add gateway = \"A.B.C.D\""),
    "placeholder gateway": (entry(role="nic", bdf="05:00.0", gateway=GATEWAY_PLACEHOLDER),
                            "gateway is still the placeholder 'FILL-IN' from `discover --write`; "
                            "set the address"),
    "bad gateway": (entry(role="nic", bdf="05:00.0", gateway="192.168.100"),
                    "gateway '192.168.100' is not an IP address"),
    "malformed bdf": (entry(role="nic", bdf="5:00.0", gateway="1.2.3.4"),
                      "malformed PCI address '5:00.0': expected DDDD:BB:DD.F (like 0000:05:00.0) "
                      "or BB:DD.F; write it like 0000:05:00.0"),
    "bdf not a string": (entry(role="usb-controller", bdf=5),
                         "bdf = 5 is not a string like \"0000:05:00.0\""),
    "wrong type": (entry(role="sata-controller", bdf="06:00.0", disk_bytes="160G"),
                   "disk_bytes = '160G' is not a positive integer like 164696555520"),
    "bool is not int": (entry(role="usb-device", hostbus=True, hostaddr=3),
                        "hostbus = True is not a positive integer"),
    "malformed vendorid": (entry(role="usb-device", vendorid="0x3f0", productid="0x8607"),
                           "vendorid = '0x3f0' is not four hex digits like \"0x03f0\""),
    "half a usb address": (entry(role="usb-device", hostbus=3),
                           "missing key 'hostaddr'; give hostbus and hostaddr together"),
    "half usb ids": (entry(role="usb-device", productid="0x8607"),
                     "missing key 'vendorid'; give vendorid and productid together"),
    "usb without anything": (entry(role="usb-device", product="mouse"),
                             "no hostbus/hostaddr and no vendorid/productid"),
    "bad name": (entry(**NIC, name="my nic"), "name 'my nic' is not letters, digits"),
    "duplicate name": (entry(**NIC, name="a") + entry(role="usb-controller", bdf="07:00.0",
                                                      name="a"),
                       'device #2 "a": name \'a\' is also device #1 "a"; give each device its '
                       'own name'),
    "duplicate device": (entry(**NIC) + entry(**{**NIC, "bdf": "0000:05:00.0"}, name="again"),
                         'device #2 "again": same device (0000:05:00.0) as device #1 '
                         '"nic-05-00.0"; list each host device once'),
    "not on this host": (entry(role="nic", bdf="09:00.0", gateway="1.2.3.4"),
                         'device #1 "nic-09-00.0": PCI device 0000:09:00.0 does not exist on '
                         'this host; check `lspci -D`'),
    "class does not match role": (entry(role="nic", bdf="06:00.0", gateway="1.2.3.4"),
                                  "0000:06:00.0 [1b21:0612] is of class SATA controller (AHCI); "
                                  "role 'nic' needs an Ethernet controller; fix the bdf or the "
                                  "role"),
    "usb not on host": (entry(role="usb-device", hostbus=3, hostaddr=9),
                        "no USB device at bus 3 address 9 on this host"),
    "usb ids not on host": (entry(role="usb-device", vendorid="0x1234", productid="0x5678"),
                            "no USB device 1234:5678 on this host"),
    "usb address and ids disagree": (entry(role="usb-device", hostbus=3, hostaddr=4,
                                           vendorid="0x03f0", productid="0x8607"),
                                     "bus 3 address 4 is 046d:c31c, not 03f0:8607"),
    "usb hub": (entry(role="usb-device", hostbus=3, hostaddr=1), "is a USB hub"),
    "not toml": ("[[device]\nrole = 'nic'", "inventory.toml: not valid TOML: "),
    "top-level key": ('devices = 1\n' + entry(**NIC),
                      "inventory.toml: unknown top-level key 'devices' (did you mean 'device'?)"),
    "device not tables": ("device = 3\n", "'device' must be [[device]] tables"),
    "empty": ("# nothing\n", "inventory.toml: no [[device]] entries; `python -m harness discover "
                             "--write"),
}


@pytest.mark.parametrize("text, expected", BAD.values(), ids=BAD.keys())
def test_each_problem_is_one_line_naming_file_entry_and_fix(text, expected, lab_readonly):
    with pytest.raises(InventoryError) as e:
        parse_inventory(text, source="inventory.toml", root=lab_readonly.root)
    assert len(e.value.problems) == 1, e.value.problems
    [line] = e.value.problems
    assert "\n" not in line
    assert line.startswith("inventory.toml: ")
    assert expected in line
    assert str(e.value).startswith(line)  # a single problem is the message itself


def test_all_problems_reported_at_once(tmp_path, lab_readonly):
    path = tmp_path / "lab_readonly.toml"
    path.write_text(entry(role="nic", bdf="05:00.0") + entry(role="usb-device", hostbus=3)
                    + entry(role="nic", bdf="xx", gateway="1.2.3.4"))
    with pytest.raises(InventoryError) as e:
        load_inventory(path, lab_readonly.root)
    assert [p.split(": ")[1] for p in e.value.problems] == \
        ['device #1 "nic-05-00.0"', 'device #2', "device #3"]
    assert all(p.startswith(f"{path}: ") for p in e.value.problems)
    assert e.value.message == "the inventory has 3 problems:"
    assert all(p in str(e.value) for p in e.value.problems)


def test_host_checks_can_be_skipped(lab_readonly):
    inv = parse_inventory(entry(role="nic", bdf="09:00.0", gateway="1.2.3.4"), root=lab_readonly.root,
                          check_host=False)
    assert inv.devices[0].bdf == "0000:09:00.0"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the inventory .*nope.toml"):
        load_inventory(tmp_path / "nope.toml")


def test_to_toml_round_trips(lab_readonly):
    inv = parse_inventory(GOOD, root=lab_readonly.root)
    text = inv.to_toml()
    assert tomllib.loads(text)  # valid TOML
    again = parse_inventory(text, root=lab_readonly.root)
    assert again.devices == inv.devices


def test_to_toml_marks_the_placeholder_and_notes():
    inv = Inventory((InventoryDevice(role="nic", name="nic-05-00.0", bdf="0000:05:00.0",
                                     gateway=GATEWAY_PLACEHOLDER,
                                     note='Intel "82599"\nIOMMU group 12'),))
    text = inv.to_toml()
    assert '# Intel "82599"\n# IOMMU group 12\nrole = "nic"' in text
    assert 'gateway = "FILL-IN"  # FILL IN: the address the guest pings through this NIC' in text
    with pytest.raises(InventoryError, match="placeholder"):
        parse_inventory(text, check_host=False)


def test_nvme_role_takes_an_nvme_controller_only(lab):
    """Role ``nvme``: an NVMe controller (class 0x0108) is accepted, with its disk's size; a
    SATA controller given the role is refused, saying what the role needs."""
    lab.add_pci("0000:00:1c.6", "8086:a33e", 0x060400, "pcieport", 16)
    lab.add_pci("0000:08:00.0", "144d:a808", 0x010802, "nvme", 17, parent="0000:00:1c.6")
    inv = parse_inventory(entry(role="nvme", name="spare-nvme", bdf="08:00.0",
                                disk_bytes=500107862016), root=lab.root)
    [nvme] = inv.for_role("nvme")
    assert (nvme.bdf, nvme.disk_bytes, nvme.is_pci) == ("0000:08:00.0", 500107862016, True)
    with pytest.raises(InventoryError, match="role 'nvme' needs an NVMe controller"):
        parse_inventory(entry(role="nvme", bdf="06:00.0"), root=lab.root)
