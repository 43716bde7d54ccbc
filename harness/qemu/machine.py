"""The shape of a guest machine, as plain data, and the one place that turns it into a QEMU
command line.

Nothing here starts a process; :func:`build_argv` is a pure function, unit-tested and printed in
every failure.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shlex
from pathlib import Path

from harness.core.paths import sha256

MACHINES = ("pc", "q35")
ACCESS = ("console", "ssh")
USB_BUSES = ("", "default", "xhci")


@dataclasses.dataclass(frozen=True)
class GuestSpec:
    """Everything that decides how a guest is started. Two equal specs make equal guests, which
    is what lets a clean booted guest serve the next test that asks for the same spec."""

    machine: str = "q35"
    #: ``"acpi"`` (QEMU's default on both machines) or ``"pciehp"`` (q35 only: native PCIe
    #: hotplug through the root ports' attention button).
    pci_hotplug: str = "acpi"
    #: The USB bus: ``""`` none; ``"default"`` the machine's own from ``-usb`` as in the guide
    #: (UHCI on pc, EHCI with UHCI companions on q35); ``"xhci"`` a qemu-xhci controller.
    usb: str = ""
    memory_mb: int = 512
    cpus: int = 1
    #: CPU hot-add room (``-smp cpus,maxcpus=N``); 0 means no room.
    max_cpus: int = 0
    #: Memory hot-add room (``-m size,slots=N,maxmem=M``); 0 slots means no room.
    mem_slots: int = 0
    max_memory_mb: int = 0
    #: Free q35 root ports, each of which can take one hot-added PCIe device.
    root_ports: int = 4
    #: ``console``: no NIC at all, the guest is driven over its serial console (the guide's
    #: ``-net none``). ``ssh``: a virtio management NIC with user networking and SSH.
    access: str = "console"
    #: Extra kernel command-line words (e.g. to disable hotplug in a failure test).
    kernel_args: tuple[str, ...] = ()
    #: Let the guest reboot (a reboot scenario). Otherwise QEMU runs with ``-no-reboot``: a
    #: guest that reboots or panics makes QEMU exit, seen at once as a dead guest.
    reboot: bool = False

    def __post_init__(self):
        if self.machine not in MACHINES:
            raise ValueError(f"machine must be one of {MACHINES}, not {self.machine!r}")
        if self.pci_hotplug not in ("acpi", "pciehp"):
            raise ValueError(f"pci_hotplug must be 'acpi' or 'pciehp', not {self.pci_hotplug!r}")
        if self.pci_hotplug == "pciehp" and self.machine != "q35":
            raise ValueError("native PCIe hotplug (pciehp) needs machine q35")
        if self.usb not in USB_BUSES:
            raise ValueError(f"usb must be one of {USB_BUSES}, not {self.usb!r}")
        if self.access not in ACCESS:
            raise ValueError(f"access must be one of {ACCESS}, not {self.access!r}")

    @property
    def root_port_ids(self) -> tuple[str, ...]:
        """q35's free root ports (none on pc)."""
        return tuple(f"rp{i}" for i in range(self.root_ports)) if self.machine == "q35" else ()

    @property
    def hotplug_bus_ids(self) -> tuple[str, ...]:
        """The buses a PCI device may be hot-added to: q35 root ports, or pc's root bus."""
        return self.root_port_ids or ("pci.0",)

    @property
    def one_device_per_bus(self) -> bool:
        """A q35 root port takes one device; pc's root bus takes many."""
        return self.machine == "q35"

    @property
    def root_bus(self) -> str:
        return "pcie.0" if self.machine == "q35" else "pci.0"

    def fixed_slot(self, role: str, bus: str) -> dict[str, str]:
        """Where the guide puts a role's device on ``bus``: the SATA controller at slot 6 of
        pc's root bus (``addr=0x06``); anywhere else QEMU chooses."""
        return {"addr": "0x06"} if role == "sata-controller" and bus == "pci.0" else {}

    @property
    def usb_controller(self) -> str:
        """The USB host controller type the guest sees: ``uhci``, ``ehci``, ``xhci`` or ``""``."""
        if self.usb == "default":
            return "uhci" if self.machine == "pc" else "ehci"
        return self.usb

    @property
    def label(self) -> str:
        """A short readable name, e.g. ``q35-pciehp-usb``."""
        parts = [self.machine]
        if self.machine == "q35":
            parts.append(self.pci_hotplug)
        if self.usb:
            parts.append(self.usb_controller)
        if self.access == "ssh":
            parts.append("ssh")
        if self.reboot:
            parts.append("reboot")
        return "-".join(parts)


@dataclasses.dataclass(frozen=True)
class Paths:
    """Where the running QEMU's sockets and logs live."""

    qmp_socket: Path
    console_socket: Path
    serial_log: Path
    disk_overlay: Path | None = None


def build_argv(spec: GuestSpec, boot: GuestImage, paths: Paths, *, qemu_binary: str,
               accel: str, name: str = "guest") -> list[str]:
    """The complete QEMU command line for ``spec``. The guest starts paused (``-S``): the caller
    connects QMP and the console first, so not one byte of console output is lost."""
    # -no-reboot: a guest that panics (panic=-1) or reboots makes QEMU exit, so a dead guest is
    # seen at once as an exit status instead of a silent reboot.
    argv = [qemu_binary, "-name", name, "-S", "-nodefaults", "-no-user-config",
            *([] if spec.reboot else ["-no-reboot"]), "-display", "none", "-machine", spec.machine,
            # TCG's translation cache defaults to 1 GiB and fills up over a long-lived guest,
            # which looks like a leak; 128 MiB bounds QEMU's memory and costs no speed here.
            "-accel", "tcg,tb-size=128" if accel == "tcg" else accel,
            "-cpu", "host" if accel == "kvm" else "max"]

    argv += _sizes(spec)
    argv += ["-chardev", f"socket,id=qmp,path={paths.qmp_socket},server=on,wait=off",
             "-mon", "chardev=qmp,mode=control",
             "-chardev", f"socket,id=ser0,path={paths.console_socket},server=on,wait=off,"
                         f"logfile={paths.serial_log}",
             "-serial", "chardev:ser0"]
    argv += _buses(spec)
    if spec.access == "ssh":
        argv += ["-netdev", "user,id=mgmt,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:0-:22",
                 "-device", f"virtio-net-pci,netdev=mgmt,id=mgmt0,bus={spec.root_bus}"]
    argv += _boot(spec, boot, paths)
    return argv


def _sizes(spec: GuestSpec) -> list[str]:
    """CPUs and memory, with room for hot-added ones when the spec asks for it."""
    smp = str(spec.cpus) + (f",maxcpus={spec.max_cpus}" if spec.max_cpus else "")
    mem = f"{spec.memory_mb}M"
    if spec.mem_slots:
        mem += f",slots={spec.mem_slots},maxmem={spec.max_memory_mb}M"
    return ["-smp", smp, "-m", mem]


def _buses(spec: GuestSpec) -> list[str]:
    """q35's root ports (the hotplug slots) and its PCI hotplug path; the USB bus."""
    argv = []
    if spec.machine == "q35":
        for i, port in enumerate(spec.root_port_ids):
            argv += ["-device", f"pcie-root-port,id={port},bus=pcie.0,chassis={i + 1},slot={i + 1}"]
        if spec.pci_hotplug == "pciehp":
            argv += ["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"]
    if spec.usb == "default":
        argv += ["-usb"]
    elif spec.usb == "xhci":
        argv += ["-device", "qemu-xhci,id=xhci"]
    return argv


def _boot(spec: GuestSpec, boot: GuestImage, paths: Paths) -> list[str]:
    """Kernel, initrd and command line; the disk (always through the overlay); a seed."""
    argv = []
    if boot.kernel:
        argv += ["-kernel", str(boot.kernel)]
        if boot.initrd:
            argv += ["-initrd", str(boot.initrd)]
        append = " ".join(filter(None, [boot.append, *spec.kernel_args]))
        if append:
            argv += ["-append", append]
    if boot.disk:
        # Always the overlay (backed by the user's image), never the image itself.
        argv += ["-drive", f"file={paths.disk_overlay},if=virtio,format=qcow2"]
    if boot.seed:
        argv += ["-drive", f"file={boot.seed},if=virtio,format=raw,readonly=on"]
    return argv


def format_argv(argv: list[str]) -> str:
    """The command line as a person would paste it into a shell."""
    lines, i = [shlex.quote(argv[0])], 1
    while i < len(argv):
        if argv[i].startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            lines.append(f"{argv[i]} {shlex.quote(argv[i + 1])}")
            i += 2
        else:
            lines.append(argv[i])
            i += 1
    return " \\\n    ".join(lines)


READY_MARKER = "hh: ready"


@dataclasses.dataclass(frozen=True)
class GuestImage:
    """What a guest boots from: the built-in kernel+initramfs, or a user's kernel/initrd and/or
    disk image, with what the harness needs to reach a shell in it."""

    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""
    #: A bootable disk image; the guest runs on a throw-away qcow2 overlay of it.
    disk: Path | None = None
    disk_format: str = "qcow2"
    ssh_user: str = "root"
    ssh_key: Path | None = None
    #: A regex the serial console prints once the guest is ready for commands (a root shell on
    #: ttyS0 must follow it for console access). None: wait for SSH instead.
    ready_pattern: str | None = READY_MARKER + r" uptime=(\S+)"
    #: A NoCloud seed disk (vfat, label CIDATA) for a cloud image's cloud-init, attached
    #: read-only after the disk (:func:`nocloud_seed`).
    seed: Path | None = None
    builtin: bool = False
    manifest: dict = dataclasses.field(default_factory=dict, compare=False)

    def checksum(self) -> str:
        """sha256 over the files the guest boots from; the suite checks it is unchanged."""
        return hashlib.sha256("".join(sha256(p) for p in (self.kernel, self.initrd, self.disk)
                                      if p is not None).encode()).hexdigest()


def replay_script(argv: list[str], paths: Paths, image: GuestImage, restored: bool) -> str:
    """A script that starts the same guest by hand, with an HMP monitor on a socket: the
    QMP socket left out, a restored guest booted instead (its saved state may be gone), a
    fresh overlay over the same disk image (the run's was temporary)."""
    argv = [a for a in argv if a != "-S"]
    out, skip = [], 0
    for i, a in enumerate(argv):
        if skip:
            skip -= 1
            continue
        if a in ("-chardev", "-mon") and i + 1 < len(argv) and (
                "id=qmp" in argv[i + 1] or "chardev=qmp" in argv[i + 1]):
            skip = 1
            continue
        if a == "-incoming" and restored:
            skip = 1  # a restored guest's replay boots it (the saved state may be gone)
            continue
        out.append(a)
    out += ["-monitor", "unix:./monitor.sock,server=on,wait=off"]
    text = format_argv(out).replace(str(paths.console_socket), "./console.sock")
    text = text.replace(f"logfile={paths.serial_log}", "logfile=./serial-replay.log")
    overlay = ""
    if image.disk:
        # The run's overlay was in its temp folder, gone with the guest: make a fresh one
        # over the same image, so the replay starts the same guest and never writes the image.
        text = text.replace(str(paths.disk_overlay), "./disk-replay.qcow2")
        overlay = (f"rm -f ./disk-replay.qcow2\nqemu-img create -q -f qcow2 -F "
                   f"{image.disk_format} -b {shlex.quote(str(Path(image.disk).resolve()))}"
                   " ./disk-replay.qcow2 || exit 1\n")
    return ("#!/bin/sh\n# Start the same guest by hand. Console: socat -,raw,echo=0 "
            "UNIX-CONNECT:./console.sock\n# Monitor (device_add, info pci): socat - "
            "UNIX-CONNECT:./monitor.sock\ncd \"$(dirname \"$0\")\"\n" + overlay
            + "exec " + text + "\n")
