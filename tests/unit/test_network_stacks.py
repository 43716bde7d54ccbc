"""Reading a guest's network stacks before the harness acts on a hot-added NIC
(probes.network_stacks over checks.NETWORK_STACKS): the wait for the guest's own stack is
skipped only when its state proves nothing of its own will configure the interface."""

import subprocess

from harness.guest import checks, probes

IFUPDOWN_ONLY = "process systemd\nprocess sshd\nprocess dhclient\nifupdown-hotplug lo ens2\n"


def test_ifupdown_that_does_not_name_the_interface_is_proof_nothing_will():
    may, read = probes.network_stacks(IFUPDOWN_ONLY, "ens5")
    assert may == []
    assert "ifupdown lists lo ens2 for hotplug" in read and "no udev rule" in read


def test_ifupdown_that_names_the_interface_for_hotplug_may():
    may, _ = probes.network_stacks(IFUPDOWN_ONLY, "ens2")
    assert may == ["ifupdown lists ens2 for hotplug"]


def test_a_daemon_that_configures_interfaces_keeps_the_guest_its_chance():
    for comm, name in (("systemd-network", "systemd-network"), ("NetworkManager", "NetworkManager"),
                       ("dhcpcd", "dhcpcd")):
        may, read = probes.network_stacks(IFUPDOWN_ONLY + f"process {comm}\n", "ens5")
        assert may == [f"{name} runs"], may
        assert read == f"{name} runs"


def test_a_udev_rule_that_starts_dhcp_keeps_the_guest_its_chance():
    text = IFUPDOWN_ONLY + "rule /etc/udev/rules.d/10-cloud-init-hook-hotplug.rules\n"
    may, _ = probes.network_stacks(text, "ens5")
    assert may == ["the udev rule /etc/udev/rules.d/10-cloud-init-hook-hotplug.rules may start DHCP"]


def test_an_unknown_stack_or_an_unreadable_ifupdown_is_not_proof():
    may, _ = probes.network_stacks("process init\nprocess uevent\n", "eth1")  # the built-in guest
    assert may and "unknown" in may[0]
    may, _ = probes.network_stacks("process init\nifupdown-unreadable\n", "eth1")
    assert may == ["ifupdown's hotplug list could not be read (ifquery failed)"]


def test_the_command_runs_in_sh_and_parses(tmp_path):
    """The command itself, in a real sh on this machine (read only): every line is one the
    parser knows, and this machine's own processes are listed."""
    out = subprocess.run(["sh", "-c", checks.NETWORK_STACKS], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = {line.partition(" ")[0] for line in out.stdout.splitlines()}
    assert "process" in kinds and kinds <= {"process", "rule", "ifupdown-hotplug",
                                            "ifupdown-unreadable"}, kinds
    may, read = probes.network_stacks(out.stdout, "hh-none0")
    assert read
