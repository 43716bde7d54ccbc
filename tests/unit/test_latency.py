"""Guest-side latency extraction from kprobe trace lines and the DHCP log."""

from harness.guest import latency

TRACE = """\
    kworker/u2:1-24      [000] .....     4.190538: dev_add: (device_add+0x0/0x8d0) name="0000:00:02.0"
    kworker/u2:1-24      [000] .....     4.191465: dev_add: (device_add+0x0/0x8d0) name="wakeup6"
    kworker/u2:1-24      [000] .....     4.551138: dev_add: (device_add+0x0/0x8d0) name="eth0"
    kworker/u2:1-24      [000] .....     4.553874: bound: (driver_bound+0x0/0xd0) name="0000:00:02.0"
    kworker/u2:1-24      [000] .....     8.383368: dev_del: (device_del+0x0/0x410) name="eth0"
    kworker/u2:1-24      [000] .....     8.672028: dev_del: (device_del+0x0/0x410) name="0000:00:02.0"
--events
3.46 modules-loaded
6.10 dhcp-bound eth0 10.0.3.15 10.0.3.2
"""

CLOCK = latency.ClockOffset(offset=100.0, error=0.005)  # host = uptime + 100


def test_parse_trace_merges_kernel_and_dhcp_events():
    events = latency.parse_trace(TRACE)
    assert [(e.kind, e.name) for e in events][:2] == [("dev_add", "0000:00:02.0"), ("dev_add", "wakeup6")]
    assert latency.GuestEvent(6.10, "dhcp-bound", "eth0") in events


def test_plug_and_unplug_latencies_of_a_nic():
    events = latency.parse_trace(TRACE)
    plug = latency.plug_latencies(events, CLOCK, add_sent=104.0, pci_address="00:02.0")
    assert plug == {"guest_visible": 0.1905, "interface_added": 0.5511, "driver_bound": 0.5539,
                    "interface_addressed": 2.1}
    assert latency.unplug_latency(events, CLOCK, 108.0, "00:02.0") == {"guest_gone": 0.672}


def test_events_before_the_plug_are_ignored():
    events = latency.parse_trace(TRACE)
    assert latency.plug_latencies(events, CLOCK, add_sent=109.0, pci_address="00:02.0") == {}


def test_usb_device_name_skips_interfaces():
    trace = ('x [000] ..... 5.0: dev_add: (device_add+0x0/0x8d0) name="1-1"\n'
             'x [000] ..... 5.1: dev_add: (device_add+0x0/0x8d0) name="1-1:1.0"\n--events\n')
    events = latency.parse_trace(trace)
    assert latency.usb_device_name(events, CLOCK, 104.9) == "1-1"
    assert latency.plug_latencies(events, CLOCK, 104.9, None) == {"guest_visible": 0.1}
