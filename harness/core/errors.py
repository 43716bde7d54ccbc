"""One error tree for the whole harness.

Nightly CI sorts failures on the first split:

* :class:`LabError` -- the lab is broken (QEMU missing, image cannot be built, no IOMMU, a
  device is busy, a port is taken). Nothing was learned about hotplug; fix the host.
* :class:`ProductError` -- the product misbehaved (a guest check failed, an unplug was refused
  or never completed, QEMU rejected a command it should accept, QEMU died).

Every error carries a one-line ``hint`` saying what to do, and keeps its cause chained.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Base of every error the harness raises on purpose."""

    kind = "harness"

    def __init__(self, message: str, *, hint: str = "", details: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text += f"\n  what to do: {self.hint}"
        if self.details:
            text += "\n" + self.details
        return text


class LabError(HarnessError):
    """The environment cannot run the test; the product was not exercised."""

    kind = "lab"


class ProductError(HarnessError):
    """QEMU or the guest did not behave as hotplug requires."""

    kind = "product"


# -- lab ---------------------------------------------------------------------------------------


class ConfigError(LabError):
    """Bad input: an option, an inventory entry, a user image description."""


class ImageError(LabError):
    """The guest image is missing, corrupt, or cannot be built."""


class QemuLaunchError(LabError):
    """QEMU could not be started (binary missing, bad command line, port taken)."""


class HostDeviceError(LabError):
    """A host device cannot be used (not present, busy, group not viable, no IOMMU)."""


# -- product -----------------------------------------------------------------------------------


class QMPCommandError(ProductError):
    """QEMU answered a QMP command with an error. ``qemu_class``/``qemu_desc`` are QEMU's words."""

    def __init__(self, command: str, arguments: dict, qemu_class: str, qemu_desc: str):
        super().__init__(f"QMP {command} {arguments} failed: {qemu_class}: {qemu_desc}")
        self.command = command
        self.arguments = arguments
        self.qemu_class = qemu_class
        self.qemu_desc = qemu_desc


class UnplugError(ProductError):
    """device_del did not complete. ``verdict`` says why.

    * ``guest-refused``: QEMU reported DEVICE_UNPLUG_GUEST_ERROR, or the guest never ejected the
      device although QEMU delivered the request and stayed responsive.
    * ``qemu-stuck``: QEMU stopped answering QMP while the unplug was pending.
    * ``paused``: the VM is stopped, so the guest cannot release the device yet; the request
      stands and completes once the VM runs.
    * ``driver-stale``: QEMU and the guest let the device go, but the driver above QEMU
      (libvirt) still lists it.
    """

    def __init__(self, device_id: str, verdict: str, message: str, *, hint: str = ""):
        super().__init__(message, hint=hint)
        self.device_id = device_id
        self.verdict = verdict


class GuestCheckError(ProductError):
    """A check inside the guest did not hold (a command failed or its output was wrong)."""


class GuestDiedError(ProductError):
    """The QEMU process exited, or the guest kernel panicked, while a test used it."""


class WaitTimeout(ProductError):
    """A condition was not met by its deadline. The message names what was awaited and what was
    last seen."""


class Unexpressible(HarnessError):
    """The driver cannot say this (``--driver libvirt``: a device or guest shape libvirt has no
    XML for, or refuses to hot-plug; or one the harness does not drive through libvirt yet).
    Not a failure of the product: the test says which and why, and ends as an expected
    failure, tried each run (so it runs once libvirt, or the harness, can)."""

    kind = "unexpressible"

    def __init__(self, what: str, why: str, *, hint: str = "", details: str = "",
                 not_built: bool = False):
        """``not_built``: libvirt could, the harness does not drive it through libvirt yet."""
        super().__init__(f"{'not built for --driver libvirt yet' if not_built else 'libvirt cannot express'}"
                         f" {what}: {why}", hint=hint, details=details)
        self.what, self.why, self.not_built = what, why, not_built


class PreconditionError(HarnessError):
    """What the harness counted on before it acted did not hold (the guest was to start with
    no NIC, a slot was to be free): the harness's failure, never the product's, since the
    product was not exercised yet. Says what was expected and what was found."""

    def __init__(self, expected: str, found: str, *, hint: str = ""):
        super().__init__(f"precondition not met: expected {expected}; found {found}",
                         hint=hint or "the harness assumed something of this guest or machine "
                                      "that is not so: see what was found, and fix the harness "
                                      "or the guest description")
        self.expected = expected
        self.found = found


class MigrationRefused(HarnessError):
    """QEMU refused to migrate a guest that has a passed-through host device (a vfio-pci
    device without migration support blocks migration); ``qemu_desc``: QEMU's words."""

    def __init__(self, guest: str, device_id: str, passthrough: str, qemu_desc: str):
        super().__init__(
            f"cannot migrate {guest}: {device_id} is a passed-through host device "
            f"({passthrough}), and QEMU refuses to migrate while it is attached: {qemu_desc}",
            hint=f"device_del {device_id} first (hotplug.unplug), migrate, then hot-add the "
                 "device on the destination")
        self.device_id = device_id
        self.qemu_desc = qemu_desc


def tail(text, lines: int = 30) -> str:
    if not isinstance(text, str):
        text = str(text)
    return "\n".join(text.replace("\r\n", "\n").splitlines()[-lines:])
