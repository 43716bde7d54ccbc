"""harness.host.binding.explain_vfio_add_error: QEMU's refusal of ``device_add vfio-pci`` becomes
what is wrong on this host, read from a fake sysfs, with QEMU's words kept in the details."""

from harness.core.errors import HostDeviceError
from harness.host.binding import explain_vfio_add_error

from . import fakesysfs

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

# QEMU 7.2's words for each case, as the lab host's QMP logs recorded them (addresses changed).
NO_DEVICE = "vfio /sys/bus/pci/devices/0000:00:1e.0: no such host device: No such file or directory"
NO_GROUP = "vfio 0000:00:1b.0: no iommu_group found: No such file or directory"  # from the source
ON_HOST_DRIVER = "vfio 0000:05:00.0: failed to open /dev/vfio/12: No such file or directory"
NOT_VIABLE = "vfio 0000:00:1f.6: group 15 is not viable"
ATTACHED = "vfio 0000:05:00.0: device is already attached"


def explain(host, bdf, desc) -> HostDeviceError:
    err = explain_vfio_add_error(host.sysfs(), bdf, desc)
    assert isinstance(err, HostDeviceError)
    assert err.details == f"  QEMU said: {desc}"
    assert err.hint, "every explanation says what to do"
    return err


def bind_to_vfio(host, bdf):
    host._unbind(bdf)
    host._bind(bdf, "vfio-pci")


def test_missing_device(lab):
    err = explain(lab, "00:1e.0", NO_DEVICE)
    assert err.message == "there is no PCI device 0000:00:1e.0 on this host"
    assert "harness discover" in err.hint


def test_not_an_address(lab):
    err = explain(lab, "eth0", NO_DEVICE)
    assert err.message == "vfio-pci host='eth0' is not a PCI address"
    assert "0000:05:00.0" in err.hint


def test_device_on_its_host_driver(lab):
    err = explain(lab, "0000:05:00.0", ON_HOST_DRIVER)
    assert err.message == "0000:05:00.0 is on its host driver ixgbe, not on vfio-pci"


def test_device_on_no_driver(lab):
    lab._unbind("0000:02:00.0")
    err = explain(lab, "0000:02:00.0", ON_HOST_DRIVER)
    assert err.message == "0000:02:00.0 is on its host driver (none), not on vfio-pci"


def test_no_iommu_group(lab):
    lab.add_pci("0000:00:1b.0", "8086:1533", 0x020000, "igb")  # IOMMU off: no group link
    err = explain(lab, "0000:00:1b.0", NO_GROUP)
    assert err.message == "0000:00:1b.0 has no IOMMU group: the IOMMU is off"
    assert "intel_iommu=on" in err.hint


def test_group_not_viable_names_each_blocker(lab):
    bind_to_vfio(lab, "0000:00:1f.6")
    err = explain(lab, "0000:00:1f.6", NOT_VIABLE)
    assert err.message == ("IOMMU group 15 of 0000:00:1f.6 is not viable: 0000:00:1f.0 (ISA bridge, "
                           "lpc_ich), 0000:00:1f.3 (SMBus, i801_smbus) still on a host driver")


def test_group_viable_once_every_endpoint_is_on_vfio(lab):
    for bdf in ("0000:05:00.0", "0000:05:00.1"):
        bind_to_vfio(lab, bdf)
    err = explain(lab, "0000:05:00.0", "vfio 0000:05:00.0: some other error")
    assert err.message == "QEMU refused to pass through 0000:05:00.0: vfio 0000:05:00.0: some other error"


def test_already_attached(lab):
    bind_to_vfio(lab, "0000:05:00.0")
    bind_to_vfio(lab, "0000:05:00.1")
    err = explain(lab, "05:00.0", ATTACHED)
    assert err.message == "0000:05:00.0 is already passed through to this QEMU by another vfio-pci device"
    assert "device_del" in err.hint


def test_explaining_changes_nothing(lab):
    before = lab.snapshot()
    for bdf, desc in (("00:1e.0", NO_DEVICE), ("05:00.0", ON_HOST_DRIVER),
                      ("00:1f.6", NOT_VIABLE), ("05:00.0", ATTACHED)):
        explain(lab, bdf, desc)
    assert lab.snapshot() == before and lab.writes == []


def test_libvirts_refusal_is_explained_the_same_way_with_its_words(lab):
    """--driver libvirt: libvirt's refusal of a <hostdev> (its own words, or QEMU's through
    it), explained from sysfs like QEMU's, said as libvirt's in the details."""
    in_use = "Requested operation is not valid: PCI device 0000:05:00.0 is in use by driver QEMU, domain hh-1-g0"
    bind_to_vfio(lab, "0000:05:00.0")
    bind_to_vfio(lab, "0000:05:00.1")
    err = explain_vfio_add_error(lab.sysfs(), "05:00.0", in_use, who="libvirt")
    assert err.message == ("0000:05:00.0 is already passed through to this QEMU by another "
                           "vfio-pci device")
    assert err.details == f"  libvirt said: {in_use}"
