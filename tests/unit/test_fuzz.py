"""Property tests (hypothesis) of the tool-output parsers: arbitrary text never crashes them,
and well-formed lines made from random fields parse back to those fields."""

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.guest import latency
from harness.guest import probes
from harness.scenario.prereq import parse_kernel_config

hexid = st.text("0123456789abcdef", min_size=4, max_size=4)
name = st.text(string.ascii_letters + string.digits + " ,.-/()[]", max_size=40).map(str.strip)
PARSERS = (probes.parse_lspci_nn, probes.parse_lspci_k, probes.parse_lsusb, probes.parse_info_pci,
           probes.parse_info_usb, probes.parse_fdisk_l, probes.parse_events, probes.meminfo_kb,
           parse_kernel_config, latency.parse_trace)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_no_parser_crashes_on_any_text(text):
    for parse in PARSERS:
        parse(text)


@given(st.integers(0, 999), st.integers(0, 999), hexid, hexid, name)
def test_lsusb_roundtrip(bus, dev, vendor, product, label):
    [e] = probes.parse_lsusb(f"Bus {bus:03d} Device {dev:03d}: ID {vendor}:{product} {label}")
    assert (e.bus, e.device, e.vendor, e.product, e.name) == (bus, dev, vendor, product, label)


@given(st.integers(0, 255), st.integers(0, 31), st.integers(0, 7), hexid, hexid,
       st.text(string.ascii_letters + " ", min_size=1, max_size=30).map(str.strip).filter(bool),
       st.text(string.ascii_letters + string.digits + "-_", max_size=12))
def test_info_pci_roundtrip(bus, slot, fn, vendor, device, cls, qdev_id):
    text = (f"  Bus {bus:2d}, device {slot:3d}, function {fn}:\n    {cls}: PCI device {vendor}:{device}\n"
            f"      IRQ 10, pin A\n      id \"{qdev_id}\"\n")
    [e] = probes.parse_info_pci(text)
    assert (e.bus, e.device, e.function, e.class_name, e.ids, e.qdev_id) == (bus, slot, fn, cls, f"{vendor}:{device}", qdev_id)


@given(st.integers(0, 255), st.integers(0, 31), st.integers(0, 7), hexid, hexid, name)
def test_lspci_nn_roundtrip(bus, slot, fn, vendor, device, desc):
    line = f"{bus:02x}:{slot:02x}.{fn} Ethernet controller [0200]: {desc} [{vendor}:{device}] (rev 01)"
    [e] = probes.parse_lspci_nn(line)
    assert (e.slot, e.ids, e.class_name) == (f"{bus:02x}:{slot:02x}.{fn}", f"{vendor}:{device}", "Ethernet controller")
