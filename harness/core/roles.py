"""The roles of the guide's scenarios: what a hot-added device is for. The words of test ids,
``--roles``, the inventory and the reports; how each backend plays a role is harness.scenario."""

#: Roles a host device can play (through --backend vfio or the lab); cpu and memory are always
#: QEMU's own.
DEVICE_ROLES = ("nic", "usb-device", "usb-controller", "sata-controller", "nvme")
#: Every scenario role (``--roles``), in the order reports show them.
ROLES = ("nic", "usb-controller", "sata-controller", "nvme", "usb-device", "cpu", "memory")
