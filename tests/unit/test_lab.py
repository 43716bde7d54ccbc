"""harness.lab's host-side logic: apt's dependency choices, the folders shared into the lab host,
and the lab's own inventory read from a fake sysfs with the lab host's devices."""

from pathlib import Path

import pytest

from harness import lab
from harness.lab import image as lab_image
from harness.core.errors import ConfigError
from harness.host.inventory import load_inventory

from .fakesysfs import FakeHost

# `apt-cache depends --no-recommends ... python3.11 libkmod2 libpam-runtime` (Debian 12).
APT_DEPENDS = """\
python3.11
  Depends: python3.11-minimal
  Depends: libpython3.11-stdlib
 |Depends: media-types
  Depends: mime-support
libkmod2
  Depends: libc6
  Depends: liblzma5
  Depends: libssl3
  Depends: libzstd1
libpam-runtime
 |Depends: debconf
  Depends: <debconf-2.0>
    cdebconf
    debconf
 |Depends: debconf
  Depends: cdebconf
  Depends: libpam-modules
"""


def test_first_alternatives_picks_the_first_of_each_group():
    assert lab_image._first_alternatives(APT_DEPENDS, exclude=set()) == [
        "python3.11-minimal", "libpython3.11-stdlib", "media-types",
        "libc6", "liblzma5", "libssl3", "libzstd1", "debconf", "debconf", "libpam-modules"]


def test_first_alternatives_skips_excluded_ones():
    """An excluded package (one the lab takes from elsewhere, or must not have) gives way to the
    next alternative, a virtual package to its first provider that is not excluded."""
    picks = lab_image._first_alternatives(APT_DEPENDS, exclude={"media-types", "debconf", "libssl3"})
    assert picks == ["python3.11-minimal", "libpython3.11-stdlib", "mime-support",
                     "libc6", "liblzma5", "libzstd1", "cdebconf", "cdebconf", "libpam-modules"]


def test_shares_drop_nested_folders(tmp_path):
    repo, reports = tmp_path / "repo", tmp_path / "repo" / "reports"
    cache = tmp_path / "cache"
    for d in (repo, reports, cache):
        d.mkdir(parents=True, exist_ok=True)
    assert lab.shares_for([repo, reports, cache, repo]) == {"share0": cache, "share1": repo}


@pytest.mark.parametrize("name", ["my repo", "a,b", "c:d"])
def test_shares_refuse_paths_the_kernel_command_line_cannot_carry(tmp_path, name):
    (tmp_path / name).mkdir()
    with pytest.raises(ConfigError, match="cannot share .* into the lab host"):
        lab.shares_for([tmp_path / name])


def test_shares_refuse_the_lab_hosts_own_file_systems():
    with pytest.raises(ConfigError, match="the lab host has its own /dev"):
        lab.shares_for([Path("/dev/shm/repo")])


def test_shares_under_tmp_are_fine(tmp_path):
    """A clone in /tmp: stage 1 mounts the lab's /tmp first, then the share on top of it."""
    assert lab.shares_for([tmp_path]) == {"share0": tmp_path.resolve()}


def lab_host_sysfs(root) -> FakeHost:
    """The lab host's PCI and USB devices as its kernel shows them (harness/lab/devices.py)."""
    h = FakeHost(root)
    h.add_pci(lab.NIC_BDF, "8086:10d3", 0x020000, "e1000e", 3)
    h.add_pci(lab.SATA_BDF, "8086:2922", 0x010601, "ahci", 4)
    h.add_pci(lab.XHCI_BDF, "1b36:000d", 0x0c0330, "xhci_hcd", 5)
    h.add_pci(lab.EHCI_BDF, "8086:24cd", 0x0c0320, "ehci-pci", 6)
    h.add_pci(lab.NVME_BDF, "1b36:0010", 0x010802, "nvme", 9)
    h.add_pci(lab.SRIOV_PORT_BDF, "1b36:000c", 0x060400, "pcieport", 7)
    h.add_pci("0000:01:00.0", "8086:10c9", 0x020000, "igb", 8, parent=lab.SRIOV_PORT_BDF)
    h.sriov_capable("0000:01:00.0", 7)
    h.add_usb_bus(2, lab.XHCI_BDF)
    h.add_usb_bus(3, lab.EHCI_BDF)
    h.add_usb("2-1", 2, "0627:0001", lab.TABLET_PRODUCT, "QEMU")
    h.add_usb("3-1", 4, "46f4:0001", lab.STICK_PRODUCT, "QEMU", iface_driver="usb-storage")
    return h


def test_write_inventory_describes_the_lab_host(tmp_path):
    host = lab_host_sysfs(tmp_path / "root")
    path = lab.write_inventory(tmp_path, root=host.root)
    inv = load_inventory(path, root=host.root)
    by_role = {d.role: d for d in inv.devices if not d.pf}
    assert by_role["nic"].bdf == lab.NIC_BDF and by_role["nic"].gateway == lab.LAB_GATEWAY
    assert not [d for d in inv.devices if d.pf]  # the lab's SR-IOV NIC is not in DEVICES yet
    assert by_role["sata-controller"].disk_bytes == lab.SATA_DISK_BYTES
    assert by_role["usb-controller"].bdf == lab.XHCI_BDF
    assert (by_role["nvme"].bdf, by_role["nvme"].disk_bytes) == (lab.NVME_BDF, lab.NVME_DISK_BYTES)
    stick = by_role["usb-device"]
    assert (stick.hostbus, stick.hostaddr) == (3, 4)
    assert (stick.vendorid, stick.productid) == lab.STICK_IDS


def test_write_inventory_with_roles_lists_only_their_devices(tmp_path):
    """--roles in the lab: a host with less hardware (its inventory, and so its digest, differ)."""
    host = lab_host_sysfs(tmp_path / "root")
    inv = load_inventory(lab.write_inventory(tmp_path, root=host.root, roles={"nic", "sata-controller"}),
                         root=host.root)
    assert sorted(d.role for d in inv.devices) == ["nic", "sata-controller"]


def test_write_inventory_needs_exactly_one_stick(tmp_path):
    host = lab_host_sysfs(tmp_path / "root")
    host.add_usb("3-2", 5, "46f4:0001", lab.STICK_PRODUCT, "QEMU", iface_driver="usb-storage")
    with pytest.raises(lab.LabError, match="the lab host has 2 USB devices 46f4:0001"):
        lab.write_inventory(tmp_path, root=host.root)


def test_lab_devices_keep_their_slots_whatever_is_shared(tmp_path):
    """Every PCI device of the lab host has a fixed slot, so the NIC is 00:03.0 however many
    folders are shared (an auto-assigned 9p device once took 00:03.0)."""
    image = lab.LabImage(tmp_path / "img", {})
    shares = {f"share{i}": tmp_path / f"d{i}" for i in range(lab.MAX_SHARES)}
    argv = lab.lab_argv(image, ["qemu-system-x86_64"], tmp_path, shares, job=None)
    pci = [a for a in argv if a.split(",")[0] in ("virtio-9p-pci", "e1000e", "ich9-ahci",
                                                  "qemu-xhci", "usb-ehci")]
    slots = [dict(kv.split("=", 1) for kv in a.split(",")[1:])["addr"] for a in pci]
    assert len(pci) == 5 + lab.MAX_SHARES and len(set(int(s, 16) for s in slots)) == len(pci)
    assert "e1000e,netdev=labnet,id=labnic,bus=pcie.0,addr=0x3,romfile=" in argv
    with pytest.raises(ConfigError, match="at most 8 shared folders"):
        lab.lab_argv(image, ["qemu-system-x86_64"], tmp_path, {**shares, "x": tmp_path}, job=None)


def _fake_qemu(path: Path, version: str) -> str:
    path.write_text(f"#!/bin/sh\necho 'QEMU emulator version {version} (fake)'\n")
    path.chmod(0o755)
    return str(path)


def test_lab_qemu_auto_takes_a_new_enough_host_qemu(tmp_path):
    host = _fake_qemu(tmp_path / "qemu", "10.1.0")
    chosen = lab.choose_lab_qemu("auto", host, tmp_path / "cache")
    assert (chosen.binary, chosen.version, chosen.origin) == (host, "10.1.0", "the host's")
    assert chosen.argv() == [host]
    assert not (tmp_path / "cache").exists(), "nothing to unpack for a new enough host QEMU"


def test_lab_qemu_given_is_taken_as_given_and_checked(tmp_path):
    mine = _fake_qemu(tmp_path / "qemu-7", "7.2.22")
    chosen = lab.choose_lab_qemu(mine, "qemu-system-x86_64", tmp_path / "cache")
    assert (chosen.version, chosen.origin) == ("7.2.22", "--lab-qemu")
    with pytest.raises(ConfigError, match="--lab-qemu /nonexistent/qemu: not a QEMU that runs"):
        lab.choose_lab_qemu("/nonexistent/qemu", "qemu-system-x86_64", tmp_path / "cache")


def test_an_unpacked_lab_qemu_finds_its_own_firmware(tmp_path):
    unpacked = lab.LabQemu("/cache/q/usr/bin/qemu-system-x86_64", "10.0.2", "backports",
                           (Path("/cache/q/usr/share/qemu"), Path("/cache/q/usr/share/seabios")))
    argv = lab.lab_argv(lab.LabImage(tmp_path / "img", {}), unpacked.argv(), tmp_path, {}, None)
    assert argv[:5] == ["/cache/q/usr/bin/qemu-system-x86_64", "-L", "/cache/q/usr/share/qemu",
                        "-L", "/cache/q/usr/share/seabios"]


def test_lab_qemu_recipe_names_a_minimum_version():
    recipe = lab_image._lab_qemu_recipe()
    assert recipe["min_version"] >= (8, 0) and "qemu-system-x86" in recipe["packages"]
