"""The nested lab host (``--backend lab``): the real vfio path on a machine without VT-d.

The lab host (L1) is a QEMU guest under TCG with an emulated Intel IOMMU
(``-M q35 -cpu max -device intel-iommu,intremap=on,caching-mode=on``, kernel ``intel_iommu=on``)
and emulated devices that play the host devices of a VT-d lab:

====================  ==============  ===================================================
role                  L1 address      device
====================  ==============  ===================================================
nic                   0000:00:03.0    e1000e on QEMU user networking (gateway 10.0.5.2)
sata-controller       0000:00:04.0    ich9-ahci with a 64 MiB disk
usb-controller        0000:00:05.0    qemu-xhci with a usb-tablet behind it
usb-device            (EHCI bus)      usb-storage (32 MiB) on a usb-ehci at 0000:00:06.0
nvme                  0000:00:08.0    nvme with one 64 MiB namespace
====================  ==============  ===================================================

Inside L1 those devices are real PCI and USB devices of a real Linux host: the harness binds them
to vfio-pci through sysfs, and the L2 guests (QEMU with KVM on L1's emulated SVM) take them with
``device_add vfio-pci,host=...`` and ``usb-host`` (libusb), exactly as on a VT-d host.

How the run crosses into the lab: the outer ``pytest --backend lab`` does not collect anything.
It builds the lab image (cached like the guest image), boots L1 once with the repository (and the
report and image folders) shared in at the same paths over virtio-9p, and runs the same pytest
command line inside L1, where :func:`write_inventory` discovers the lab's devices and writes the
lab's own inventory, and the vfio backend's code runs unchanged. The report, written by the run
inside, names the backend ``lab`` and, per test, the host device it passed through.

The lab root is Debian packages (QEMU, Python, busybox, ...) unpacked without root, plus the
harness's Python dependencies copied from ``.venv``; it is read-only to L1 (a tmpfs overlay takes
the writes), so no run can change it.

Modules: ``devices`` (the one table of the lab's devices: L1's command line and the lab's
inventory), ``image`` (the lab image and the QEMU that runs L1), ``host`` (L1's command line and
process), ``outer`` (the outer run and what the run inside leaves for it).
"""

from harness.core.errors import LabError
from harness.lab.devices import (DEVICES, EHCI_BDF, NVME_BDF, NVME_DISK_BYTES, SRIOV_GATEWAY, SRIOV_PORT_BDF,
                                          rearm_vfs, GROUPED_BDF, LAB_GATEWAY, NIC_BDF, SATA_BDF,
                                          SATA_DISK_BYTES, STICK_BYTES, STICK_IDS, STICK_PRODUCT,
                                          TABLET_PRODUCT, XHCI_BDF, find_usb, write_inventory)
from harness.lab.host import DEFAULT_LAB_ACCEL, LAB_ACCELS, MAX_SHARES, SHARE_SLOT, LabHost, lab_argv, shares_for
from harness.lab.image import (BACKPORTS, LabImage, LabQemu, backports_qemu, build_lab, choose_lab_qemu, ensure_lab,
                                        ensure_lab_qemu, lab_digest, lab_dir, resolve_closure)
from harness.lab.outer import INSIDE_FIGURES, run_outer, write_inside_figures, write_job


__all__ = ["BACKPORTS", "DEFAULT_LAB_ACCEL", "DEVICES", "EHCI_BDF", "LAB_ACCELS", "NVME_BDF", "NVME_DISK_BYTES", "GROUPED_BDF", "INSIDE_FIGURES", "LAB_GATEWAY", "MAX_SHARES",
           "NIC_BDF", "SATA_BDF", "SATA_DISK_BYTES", "SHARE_SLOT", "SRIOV_GATEWAY", "SRIOV_PORT_BDF", "STICK_BYTES", "STICK_IDS",
           "STICK_PRODUCT", "TABLET_PRODUCT", "XHCI_BDF", "LabError", "LabHost", "LabImage",
           "LabQemu", "backports_qemu", "build_lab", "choose_lab_qemu", "ensure_lab", "ensure_lab_qemu",
           "find_usb", "lab_argv", "lab_digest", "lab_dir", "rearm_vfs", "resolve_closure", "run_outer",
           "shares_for", "write_inside_figures", "write_inventory", "write_job"]
