"""GuestSpec -> QEMU command line: the one place a guest's shape becomes argv."""

from pathlib import Path

import pytest

from harness.qemu.machine import GuestImage
from harness.qemu.machine import GuestSpec, Paths, build_argv, format_argv

PATHS = Paths(Path("/t/qmp.sock"), Path("/t/console.sock"), Path("/r/serial.log"))
IMAGE = GuestImage(kernel=Path("/i/vmlinux"), initrd=Path("/i/initrd.cpio"), append="console=ttyS0")


def argv(spec: GuestSpec, image: GuestImage = IMAGE, accel: str = "tcg", paths: Paths = PATHS) -> list[str]:
    return build_argv(spec, image, paths, qemu_binary="qemu-system-x86_64", accel=accel)


def opt_values(args: list[str], opt: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == opt]


def test_pc_console_guest_has_no_network_and_starts_paused():
    a = argv(GuestSpec(machine="pc"))
    assert "-S" in a and "-nodefaults" in a
    assert opt_values(a, "-machine") == ["pc"]
    assert not any(v.startswith("pcie-root-port") for v in opt_values(a, "-device"))
    assert opt_values(a, "-netdev") == []  # the guide's -net none
    assert opt_values(a, "-cpu") == ["max"] and opt_values(a, "-accel") == ["tcg,tb-size=128"]


def test_q35_root_ports_and_pciehp():
    a = argv(GuestSpec(machine="q35", root_ports=3, pci_hotplug="pciehp"))
    ports = [v for v in opt_values(a, "-device") if v.startswith("pcie-root-port")]
    assert ports == [f"pcie-root-port,id=rp{i},bus=pcie.0,chassis={i + 1},slot={i + 1}" for i in range(3)]
    assert "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off" in opt_values(a, "-global")
    assert GuestSpec(machine="q35", root_ports=3).hotplug_bus_ids == ("rp0", "rp1", "rp2")


def test_usb_buses():
    assert "-usb" in argv(GuestSpec(machine="pc", usb="default"))
    assert "qemu-xhci,id=xhci" in opt_values(argv(GuestSpec(machine="q35", usb="xhci")), "-device")
    assert GuestSpec(machine="pc", usb="default").usb_controller == "uhci"
    assert GuestSpec(machine="q35", usb="default").usb_controller == "ehci"


def test_ssh_access_adds_management_nic_with_ephemeral_forward():
    a = argv(GuestSpec(machine="q35", access="ssh"))
    assert opt_values(a, "-netdev") == ["user,id=mgmt,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:0-:22"]


def test_kvm_uses_host_cpu_and_hotplug_room():
    a = argv(GuestSpec(cpus=1, max_cpus=4, mem_slots=2, max_memory_mb=2048), accel="kvm")
    assert opt_values(a, "-cpu") == ["host"]
    assert opt_values(a, "-smp") == ["1,maxcpus=4"]
    assert opt_values(a, "-m") == ["512M,slots=2,maxmem=2048M"]


def test_user_disk_runs_on_overlay_only():
    image = GuestImage(disk=Path("/images/rhel7.qcow2"), ready_pattern=None)
    paths = Paths(PATHS.qmp_socket, PATHS.console_socket, PATHS.serial_log, Path("/t/disk.qcow2"))
    a = argv(GuestSpec(), image, paths=paths)
    assert opt_values(a, "-drive") == ["file=/t/disk.qcow2,if=virtio,format=qcow2"]
    assert "/images/rhel7.qcow2" not in " ".join(a)


def test_kernel_args_are_appended():
    a = argv(GuestSpec(kernel_args=("acpi=off",)))
    assert opt_values(a, "-append") == ["console=ttyS0 acpi=off"]


@pytest.mark.parametrize("kwargs, message", [
    ({"machine": "virt"}, "machine must be one of"),
    ({"machine": "pc", "pci_hotplug": "pciehp"}, "needs machine q35"),
    ({"usb": "ohci"}, "usb must be one of"),
    ({"access": "telnet"}, "access must be one of"),
])
def test_bad_specs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GuestSpec(**kwargs)


def test_format_argv_pairs_options():
    text = format_argv(["qemu", "-machine", "pc", "-S", "-append", "a b"])
    assert text.splitlines() == ["qemu \\", "    -machine pc \\", "    -S \\", "    -append 'a b'"]


def test_labels():
    assert GuestSpec(machine="q35", pci_hotplug="pciehp", usb="xhci").label == "q35-pciehp-xhci"
    assert GuestSpec(machine="pc", access="ssh").label == "pc-ssh"


def test_cloud_image_seed_is_a_read_only_disk_after_the_overlay():
    image = GuestImage(disk=Path("/images/cloud.qcow2"), ready_pattern=None,
                       seed=Path("/r/cloud-init/main/seed.vfat"))
    paths = Paths(PATHS.qmp_socket, PATHS.console_socket, PATHS.serial_log, Path("/t/disk.qcow2"))
    assert opt_values(argv(GuestSpec(access="ssh"), image, paths=paths), "-drive") == [
        "file=/t/disk.qcow2,if=virtio,format=qcow2",
        "file=/r/cloud-init/main/seed.vfat,if=virtio,format=raw,readonly=on"]
