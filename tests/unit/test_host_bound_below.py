"""Issue 31, sixteenth read, findings 3 and 4 seen from the other side: what the kernel of a
real host binds below the functions the lab takes (root hubs on ``usb``, their interfaces on
``hub``, port and endpoint devices, a tablet's HID device on ``hid-generic``, a stick's SCSI
disk on ``sd``, a cp210x's tty port and its GPIO chip on ``gpio_stub_drv``) leaves them idle;
what the rule cannot judge (a SCSI enclosure on ``ses``, a GPIO line request of a kernel that
does not name its chip, nvmet taking p2pmem from any controller) keeps them, named."""

import os

from harness.host.safety import HostUsage
from harness.host.sysfs import Sysfs

from . import fakesysfs
from .test_host_idle_review11 import NVME, _nvme_controller
from .test_host_idle_review16 import _cp2102n, _p2pmem
from .test_host_proven_idle import lab_l1

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures


def _bind(host, device, bus: str, driver: str) -> None:
    """``device/driver`` as the kernel links it: to /sys/bus/BUS/drivers/DRIVER."""
    drivers = host.sys / "bus" / bus / "drivers" / driver
    drivers.mkdir(parents=True, exist_ok=True)
    device.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(drivers, device), device / "driver")


def _root_hub(host, bdf: str, bus: int, ports: int) -> None:
    """A root hub as Linux shows it: ``usbN`` on usb, its interface ``N-0:1.0`` on hub, a
    ``usbN-portM`` device per port (no bus, no driver), endpoint devices, power and wakeup."""
    usb = host.dev_dir(bdf) / f"usb{bus}"
    _bind(host, usb, "usb", "usb")
    hub = usb / f"{bus}-0:1.0"
    _bind(host, hub, "usb", "hub")
    for port in range(1, ports + 1):
        (hub / f"usb{bus}-port{port}/power").mkdir(parents=True)
        (hub / f"usb{bus}-port{port}/connect_type").write_text("hotplug\n")
    _bind(host, hub / f"usb{bus}-port1", "usb", "usb")  # (were a port's own driver linked)
    for d in (hub / "ep_81", usb / "ep_00", usb / "power", host.dev_dir(bdf) / "power",
              host.dev_dir(bdf) / f"wakeup/wakeup{bus}", host.dev_dir(bdf) / "msi_irqs"):
        d.mkdir(parents=True, exist_ok=True)


def test_the_lab_hosts_devices_stay_idle_with_what_the_kernel_binds_below_them(fake_root):
    h = lab_l1(fake_root)
    _root_hub(h, "0000:00:05.0", 1, 4)  # qemu-xhci: the tablet
    _root_hub(h, "0000:00:06.0", 2, 6)  # usb-ehci: the stick
    tablet = h.dev_dir("0000:00:05.0") / "usb1/1-1"
    _bind(h, tablet, "usb", "usb")
    hid = tablet / "1-1:1.0/0003:0627:0001.0001"
    _bind(h, hid, "hid", "hid-generic")
    h.file(str((hid / "hidraw/hidraw0/dev").relative_to(fake_root)), "246:0\n")
    (tablet / "1-1:1.0/ep_81").mkdir()
    stick = h.dev_dir("0000:00:06.0") / "usb2/2-1"
    _bind(h, stick, "usb", "usb")
    _bind(h, stick / "2-1:1.0/host1/target1:0:0/1:0:0:0", "scsi", "sd")
    h.file(str((stick / "2-1:1.0/host1/target1:0:0/1:0:0:0/scsi_generic/sg1/dev")
               .relative_to(fake_root)), "21:1\n")
    _bind(h, h.sata_port("0000:00:04.0"), "scsi", "sd")
    h.file(str((h.dev_dir("0000:00:03.0") / "ptp/ptp0/dev").relative_to(fake_root)), "248:0\n")
    h.file(str((h.dev_dir("0000:00:03.0") / "ptp/ptp0/n_periodic_outputs")  # (e1000e: none)
               .relative_to(fake_root)), "0\n")
    _bind(h, h.dev_dir("0000:00:03.0") / "mdio_bus/e1000e-0-300/e1000e-0-300:00", "mdio_bus",
          "RTL8168h!8111h Gigabit Ethernet")  # (a PHY of the NIC, as r8169 has; / is ! in sysfs)
    usage = HostUsage.read(fake_root)
    for bdf in ("0000:00:03.0", "0000:00:04.0", "0000:00:05.0", "0000:00:06.0", "0000:00:08.0"):
        verdict = usage.verdict(bdf)
        assert verdict.idle, verdict
    [dev] = [u for u in Sysfs(fake_root).usb_devices() if u.name == "2-1"]
    assert usage.usb_verdict(dev).idle
    # ...and a device below that the rule cannot judge keeps its controller, named
    _bind(h, h.sata_port("0000:00:04.0").parent / "0:0:1:0", "scsi", "ses")
    assert HostUsage.read(fake_root).verdict("0000:00:04.0").uses == (
        "a SCSI device 0:0:1:0 (below 0000:00:04.0) is on the driver ses, whose use the "
        "harness cannot judge (a kernel driver may use it with no node or process to show it)",)


def test_an_idle_usb_serial_adapter_with_a_gpio_chip_stays_idle(lab):
    """As Linux binds it: the tty port on the usb-serial bus's cp210x, the GPIO chip on
    gpio_stub_drv (a placeholder for firmware links); no line held."""
    chip = _cp2102n(lab)
    _bind(lab, chip.parent / "ttyUSB0", "usb-serial", "cp210x")
    _bind(lab, chip, "gpio", "gpio_stub_drv")
    verdict = HostUsage.read(lab.root).verdict("0000:07:00.0")
    assert verdict.idle, verdict


def test_a_gpio_line_request_whose_chip_a_kernel_does_not_name_keeps_every_chip(lab):
    """A v1 line handle's fdinfo (and before Linux 6.7 a v2 request's) does not name its
    chip: any chip may be it."""
    _cp2102n(lab)
    lab.proc("5301/comm", "relayd\n")
    (lab.root / "proc/5301/fd").mkdir(parents=True)
    os.symlink("anon_inode:gpio-linehandle", lab.root / "proc/5301/fd/5")
    lab.proc("5301/fdinfo/5", "pos:\t0\nflags:\t02000002\nmnt_id:\t16\n")
    assert HostUsage.read(lab.root).verdict("0000:07:00.0").uses == (
        "pid 5301 (relayd) holds a GPIO line request whose chip its fdinfo does not name (a "
        "v1 line handle or event, or a kernel before 6.7): it may be one of gpiochip0 (below "
        "0000:07:00.0)",)
    assert HostUsage.read(lab.root).verdict("0000:06:00.0").idle  # (no chip below it)


def _nvmet_p2pmem(host, value: str) -> None:
    # (the namespace's disk is another controller's, 0a:00.0's: a path that names no disk of
    # the host is one nvmet opened in another mount namespace, which is a problem of its own)
    host.add_pci("0000:0a:00.0", "144d:a808", 0x010802, "nvme", 22)
    host.add_disk("nvme7n1", host.dev_dir("0000:0a:00.0") / "nvme/nvme7")
    host.file("sys/module/nvmet/refcnt", "1\n")
    ns = "sys/kernel/config/nvmet/subsystems/nqn.lab:data/namespaces/1"
    host.file(f"{ns}/device_path", "/dev/nvme7n1\n")
    host.file(f"{ns}/p2pmem", value + "\n")


def test_nvmet_taking_p2pmem_from_any_controller_keeps_those_that_publish_it(lab):
    _nvme_controller(lab, namespace=False)
    _p2pmem(lab)
    _nvmet_p2pmem(lab, "1")  # (`echo 1 > p2pmem`: the kernel picks one that publishes)
    assert any("publishes peer-to-peer memory" in u and "nqn.lab:data" in u
               for u in HostUsage.read(lab.root).verdict(NVME).uses)
    (lab.dev_dir(NVME) / "p2pmem/published").write_text("0\n")
    assert HostUsage.read(lab.root).verdict(NVME).idle  # (unpublished: not picked)


def test_nvmet_without_p2pmem_leaves_a_controller_that_publishes_it_idle(lab):
    _nvme_controller(lab, namespace=False)
    _p2pmem(lab)
    _nvmet_p2pmem(lab, "0")
    assert HostUsage.read(lab.root).verdict(NVME).idle
