"""Issue 31, read 36a (storage, USB, IOMMU groups, SR-IOV, the bind's mechanics, the libvirt
hand-over). What it found, one section below each:

1. read 35a's fix (:func:`harness.host.binding._libvirt_gives_back`, ``_probed_driver``)
   leaves the move to libvirt when the one loaded driver whose ``modules.alias`` entries
   match the device is the driver it is on; but libvirt's give-back (override cleared,
   unbind, ``drivers_probe``) hands the device to the first *registered* driver that matches
   it, and a driver's dynamic ids (``pci-stub.ids=`` on the kernel command line, the
   classic KVM device-assignment recipe, or ``options pci_stub ids=`` in the initramfs; a
   ``new_id`` written by hand) are in no alias file. pci-stub has no id table of its own, so
   it matches by those ids alone, and it registers before the host driver (built in on
   Fedora/RHEL, and ``drivers/pci`` links before ``drivers/nvme`` and ``drivers/net``; a
   module loaded from the initramfs on Debian/Ubuntu). A host that reserves a model for
   guests that way and keeps one device of it on the host (``driverctl set-override
   0000:08:00.0 nvme``, which ``_libvirt_gives_back`` accepts as "an override that names
   that same driver"; or ``echo ... > nvme/bind`` at boot) has it left to libvirt, whose
   detach puts it on pci-stub: ``_give_back`` waits for nvme in vain and ``_restore_entry``
   refuses a driver that is "neither vfio-pci nor its original": the host's drive stays off
   nvme (its namespaces, its filesystems gone from the host), the release fails, and every
   session's `restore` after fails the same way until someone rebinds it by hand.

Each section's test asserts the safe behaviour and fails on 3d4d6b2; the controls show that
the idle shape is still taken, and given back right by the harness's own move (pci-stub's
dynamic ids are shown nowhere: no sysfs file, ``ids`` has mode 0, so telling them apart from
an aliasless driver loaded with none is not asked of the fix). A fake sysfs/proc tree plays the host (:mod:`.fakesysfs`'s lab
host) and libvirt's own sysfs writes; no guest is booted.
"""

from __future__ import annotations

import pytest

from . import fakesysfs
from .test_host_binding import binder, entries, journal
from .test_host_idle_review35a import SPDK, libvirt_round, spdk_drive

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
journal = journal  # (a fixture: the journal in the fake root's /var/lib)


# -- 1. libvirt's give-back and a stub driver's dynamic ids ------------------------------------

def probes_in_registration_order(lab, monkeypatch, order: list[str]) -> None:
    """The kernel's ``drivers_probe`` tries the bus's drivers in the order they registered
    (``bus_for_each_drv``), not by name as the fake does: ``order`` first, then the rest."""
    def probe(bdf: str) -> None:
        if lab.driver_of(bdf):
            return
        rest = [d for d in sorted(lab.ids) if d not in order]
        for driver in [*order, *rest]:
            if (lab.sys / "bus/pci/drivers" / driver).is_dir() and lab._matches(driver, bdf):
                lab._bind(bdf, driver)
                return
    monkeypatch.setattr(lab, "_probe", probe)


def reserved_model(lab, monkeypatch, override: str | None) -> None:
    """``pci-stub.ids=144d:a808`` on the kernel command line (the model reserved for guests:
    pci-stub, built in, took every drive of it at boot), and this one kept on the host's
    nvme: by ``driverctl set-override 0000:08:00.0 nvme`` (``override="nvme"``) or bound by
    hand at boot (None). Idle: nothing mounted, /dev/nvme1 open by nobody."""
    spdk_drive(lab, driver="nvme", override=override)
    lab.add_driver("pci-stub")  # (no id table: no alias in modules.alias)
    lab.dynids["pci-stub"].add("144d:a808")
    probes_in_registration_order(lab, monkeypatch, ["pci-stub", "nvme", "vfio-pci"])


@pytest.mark.parametrize("override", ["nvme", None], ids=["driverctl", "bound-by-hand"])
def test_a_drive_whose_ids_a_stub_driver_holds_is_not_left_to_libvirts_give_back(
        lab, journal, monkeypatch, override):
    """Path: ``_libvirt_gives_back`` -> ``_probed_driver``: the modalias matches nvme's alias
    alone (pci-stub's ids are dynamic), so libvirt moves the drive; libvirt's detach clears
    the override and writes ``drivers_probe``, and pci-stub (registered first, its dynamic id
    matching) takes the drive; the release finds it on pci-stub and leaves it there. Safe:
    the harness moves it itself (its give-back binds through nvme's ``bind`` by name and puts
    the override back), or refuses libvirt's move naming the stub driver's ids."""
    reserved_model(lab, monkeypatch, override)
    lease, results = libvirt_round(lab, journal)
    assert (lab.driver_of(SPDK), lab.override_of(SPDK)) == ("nvme", override), \
        f"left on {lab.driver_of(SPDK)}: {results}"
    assert entries(journal) == []


@pytest.mark.parametrize("override", ["nvme", None], ids=["driverctl", "bound-by-hand"])
def test_the_harness_own_move_gives_the_same_drive_back_to_nvme(lab, journal, monkeypatch,
                                                                override):
    """Control: on the same host the harness's own move and give-back (``moved_by`` None:
    ``driver_override``, then nvme's ``bind`` by name) bring the drive back on nvme with its
    override, pci-stub's ids notwithstanding: the safe path exists."""
    reserved_model(lab, monkeypatch, override)
    b = binder(lab, journal, timeout=0.2)
    lease = b.bind(SPDK, {SPDK})
    assert lab.driver_of(SPDK) == "vfio-pci"
    results = lease.release()
    assert [r.status for r in results] == ["restored"]
    assert (lab.driver_of(SPDK), lab.override_of(SPDK)) == ("nvme", override)
    assert entries(journal) == []
