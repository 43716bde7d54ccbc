"""Host-side vfio: what the host has, what it may give away, and binding devices to vfio-pci.

Knows nothing of QEMU guests. Every entry point takes ``root`` (default ``/``): sysfs and procfs
are read under ``root/sys`` and ``root/proc``, so unit tests run on a fake tree.

    sysfs       readers of root/sys (PCI, IOMMU groups, USB), BDF parsing, class names
    inventory   the TOML inventory of host devices a run may take
    safety      proven idle: the evidence that nothing on the host uses a device; group plans
    network     interfaces, routes, addresses and sockets in every network namespace
    storage     mounts (every mount namespace), swap, holders, open device nodes
    plan        ``python -m harness plan``: what a run would change, and the evidence
    discover    candidate devices per role, and a draft inventory of the safe ones
    binding     VfioBinder/Lease (driver_override + journal) and restore_from_journal
    doctor      host prerequisite checks for --backend vfio
    cli         ``python -m harness discover|doctor|plan|restore`` (harness/cli/host.py)
"""
