"""The inventory parser under hypothesis: any text, and any [[device]] table built from random
keys and values, either loads or is refused with InventoryError -- never another exception, and
every refusal names the file."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.host.inventory import InventoryError, parse_inventory

KEYS = ["role", "name", "bdf", "gateway", "disk_bytes", "hostbus", "hostaddr", "vendorid",
        "productid", "product", "rol", "bfd", "extra"]
ROLES = ["nic", "usb-controller", "sata-controller", "usb-device", "gpu", ""]
scalar = st.one_of(
    st.sampled_from(ROLES), st.sampled_from(["05:00.0", "0000:00:1f.2", "zz:00.0", "00:14.7", "1:2.3"]),
    st.sampled_from(["0x03f0", "03f0", "0xZZZZ", "192.168.100.1", "300.1.1.1"]),
    st.integers(-5, 2 ** 64), st.booleans(), st.text(max_size=12), st.floats(allow_nan=False))


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(v)  # a JSON string is a valid TOML basic string


def parse(text: str):
    try:
        return parse_inventory(text, source="fuzz.toml", check_host=False)
    except InventoryError as e:
        assert "fuzz.toml" in str(e)
        return None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text(text):
    parse(text)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(KEYS), scalar, max_size=6), max_size=4))
def test_any_device_tables(tables):
    text = "".join("[[device]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in t.items())
                   for t in tables)
    inventory = parse(text)
    if inventory is not None:
        assert len(inventory.devices) == len(tables)
        assert len({d.name for d in inventory.devices}) == len(tables)  # names are unique
