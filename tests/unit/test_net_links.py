"""The one-pass read of /sys/class/net (checks.NET_LINKS), run by a real ``sh`` on a tree laid
out as a guest's sysfs is: a NIC is found by its MAC and PCI function, never by its name, and a
pass that meets a vanished link says so on stderr instead of printing a short row."""

import subprocess

from harness.guest import checks, probes

PCI = "devices/pci0000:00/0000:00:02.0/0000:01:00.0"


def sysfs(root):
    """lo, a failover master enp1s0 over its standby enp1s0nsby (virtio) and primary enp2s0."""
    net = root / "class" / "net"
    drivers = root / "bus"
    for d in ("virtio_net", "e1000e"):
        (drivers / d).mkdir(parents=True)
    (root / PCI / "virtio1").mkdir(parents=True)
    (root / "devices/pci0000:00/0000:00:02.1/0000:02:00.0").mkdir(parents=True)
    (root / PCI / "virtio1" / "driver").symlink_to(drivers / "virtio_net")
    (root / "devices/pci0000:00/0000:00:02.1/0000:02:00.0/driver").symlink_to(drivers / "e1000e")
    for name, mac, dev in (("lo", "00:00:00:00:00:00", None),
                           ("enp1s0", "52:54:00:fa:11:00", PCI + "/virtio1"),
                           ("enp1s0nsby", "52:54:00:fa:11:00", PCI + "/virtio1"),
                           ("enp2s0", "52:54:00:fa:11:00", "devices/pci0000:00/0000:00:02.1/0000:02:00.0")):
        (net / name).mkdir(parents=True)
        (net / name / "address").write_text(mac + "\n")
        if dev:
            (net / name / "device").symlink_to(root / dev)
    for lower in ("enp1s0nsby", "enp2s0"):
        (net / "enp1s0" / f"lower_{lower}").symlink_to(net / lower)
    return net


def run(net):
    return subprocess.run(["sh", "-c", checks.NET_LINKS.replace("/sys/class/net", str(net))],
                          capture_output=True, text=True, timeout=10)


def test_a_failover_pair_is_read_by_mac_and_roles(tmp_path):
    p = run(sysfs(tmp_path))
    assert (p.returncode, p.stderr) == (0, "")
    links = probes.parse_net_links(p.stdout)
    master = probes.interface_of(links, "52:54:00:fa:11:00", None)
    assert master.name == "enp1s0" and master.lowers == ("enp1s0nsby", "enp2s0")
    assert {n.name: (n.pci, n.driver) for n in links if n.name != "enp1s0"} == {
        "lo": (None, None), "enp1s0nsby": ("0000:01:00.0", "virtio_net"),
        "enp2s0": ("0000:02:00.0", "e1000e")}


def test_a_vanished_link_is_an_error_on_stderr_not_a_short_row(tmp_path):
    net = sysfs(tmp_path)
    (net / "enp2s0" / "address").unlink()   # as when udev renames it under the loop
    p = run(net)
    assert p.returncode != 0 and "address" in p.stderr


def test_every_network_tool_command_names_the_interface_and_parses_in_sh():
    """The guest-tool DHCP commands are format strings full of shell braces: each formats,
    names the interface, and is valid sh (``sh -n``) as the guest will get it."""
    for name, present, command in checks.NETWORK_TOOLS:
        line = command.format(i="ens5")
        assert "ens5" in line and "{i}" not in line, name
        for text in (present, line):
            p = subprocess.run(["sh", "-n", "-c", text], capture_output=True, text=True)
            assert p.returncode == 0, (name, text, p.stderr)
