"""The guide's section 1 prerequisites, checked in a running guest before a scenario uses it.

(1) firmware, (3) a guest kernel with PCI hotplug (``CONFIG_HOTPLUG_PCI*``, or the ``acpiphp``
module on old kernels), (4) the drivers the device needs. (2), the host's VT-d, is the host
doctor's (``python -m harness doctor``).
"""

from __future__ import annotations

import dataclasses
import re

from harness.core.errors import LabError

HOTPLUG_OPTIONS = ("CONFIG_HOTPLUG_PCI", "CONFIG_HOTPLUG_PCI_ACPI", "CONFIG_HOTPLUG_PCI_PCIE",
                   "CONFIG_HOTPLUG_PCI_SHPC")


class PrerequisiteError(LabError):
    """The guest lacks something the scenario needs; the scenario cannot say anything about
    hotplug until it is fixed."""


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def parse_kernel_config(text: str) -> dict[str, str]:
    """``CONFIG_X=y`` lines of a kernel .config; ``# CONFIG_X is not set`` gives ``"n"``."""
    out = {}
    for line in text.splitlines():
        if m := re.match(r"^(CONFIG_\w+)=(.*)$", line):
            out[m[1]] = m[2].strip('"')
        elif m := re.match(r"^# (CONFIG_\w+) is not set", line):
            out[m[1]] = "n"
    return out


def firmware(dmi: str) -> str:
    """The firmware as the guest's SMBIOS tables name it (``bios_vendor``, ``bios_version``
    lines); SeaBIOS is QEMU's default, as the guide says."""
    words = [w.strip() for w in dmi.splitlines() if w.strip()]
    return " ".join(words) if words else "unknown (the guest has no DMI tables)"


def check_guest(guest, *, machine: str, pci_hotplug: str) -> list[Check]:
    """Read the guest's kernel config (/boot/config-$(uname -r) or /proc/config.gz) and loaded
    hotplug drivers, and say whether this machine's hotplug path can work."""
    dmi = guest.shell.run("cat /sys/class/dmi/id/bios_vendor /sys/class/dmi/id/bios_version").output
    checks = [Check("firmware", True, firmware(dmi))]
    # Only the hotplug lines cross the console (a whole .config is 250 KB: seconds on a slow one).
    text = guest.shell.run("(cat /boot/config-$(uname -r) 2>/dev/null || zcat /proc/config.gz "
                           "2>/dev/null) | grep -E 'CONFIG_HOTPLUG_PCI'").output
    config = parse_kernel_config(text)
    modules = set(guest.shell.run("ls /sys/module").output.split())
    if config:
        detail = ", ".join(f"{o}={config.get(o, 'n')}" for o in HOTPLUG_OPTIONS)
        checks.append(Check("kernel config", True, detail))
        needed = "CONFIG_HOTPLUG_PCI_PCIE" if pci_hotplug == "pciehp" else "CONFIG_HOTPLUG_PCI_ACPI"
        have = config.get(needed, "n") in ("y", "m")
        if config.get(needed) == "m":
            have = (("pciehp" if pci_hotplug == "pciehp" else "acpiphp") in modules)
        checks.append(Check(f"{pci_hotplug} hotplug in the guest kernel", have,
                            f"{needed}={config.get(needed, 'n')}"
                            + ("" if have else " (build it in, or load the module: modprobe acpiphp)")))
    else:
        # No config to read: old kernels need acpiphp loaded (guide section 1 (4)).
        have = "acpiphp" in modules or "pciehp" in modules
        checks.append(Check("PCI hotplug driver", have,
                            "acpiphp/pciehp loaded" if have else
                            "no kernel config readable and neither acpiphp nor pciehp is loaded: "
                            "run modprobe acpiphp in the guest"))
    return checks


def check_driver(guest, driver: str) -> Check:
    """The guest has the driver a device needs: bound already, loadable, or built in."""
    r = guest.shell.run(f"test -d /sys/bus/pci/drivers/{driver} || test -d /sys/bus/usb/drivers/{driver} "
                        f"|| modinfo {driver.replace('-', '_')} >/dev/null 2>&1")
    return Check(f"driver {driver}", r.ok, "present" if r.ok else f"the guest has no {driver} driver")
