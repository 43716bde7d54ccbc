"""Backends: who plays each device role, and what that takes from the host.

``Emulated`` (everywhere): QEMU's own device models. ``Vfio`` (a VT-d host): the inventory's
host devices through vfio-pci and usb-host. ``Lab`` (inside the nested lab host): ``Vfio``
with the lab's own inventory, more patience with nested guests, and the scenarios only.

The plugin asks the run's backend instead of branching on its name: the devices it offers
for a role, which collected tests it leaves out, the xdist group of a test that takes host
hardware, whether a run that passed nothing through tested nothing, what it gives back at the
end and what it adds to the report. Knows nothing of pytest.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.scenario import devices
from harness.core.errors import ConfigError, LabError
from harness.host import binding
from harness.host.inventory import load_inventory
from harness.host import sriov
from harness.host import doctor
from harness.host.inventory import find_usb_device
from harness.host.plan import plan_inventory
from harness.host.sysfs import Sysfs, bdfs_in_path
from harness import lab as lab_mod

NAMES = ("emulated", "vfio", "lab")


class Backend:
    name = ""
    #: Boots of one guest before a test's set-up fails (the lab replaces hung L2 boots).
    boot_attempts = 1
    #: --retry-dead-guest's default.
    dead_guest_retries = 0
    #: Tests take host hardware: xdist groups by resource, --dist loadgroup, the end-of-run
    #: give-back, and a run that passed nothing through fails as having tested nothing.
    takes_host_devices = False

    def __init__(self, *, worker: str, qemu_binary: str, pace, managed: str | None = None):
        self.worker = worker
        #: --driver libvirt: a host PCI device's <hostdev managed=...> ('yes': libvirt moves it
        #: to vfio-pci and back); None: the QMP driver (the harness binds).
        self.managed = managed
        self.qemu_binary = qemu_binary
        self.pace = pace
        self.inventory = None
        self.binder = None
        #: How many collected tests this backend left out (see :meth:`collection_note`).
        self.left_out = 0

    def setup(self, inventory: str | None) -> None:
        """Prepare the host at session start (``inventory``: --host-inventory)."""

    def candidates(self, role: str) -> list:
        """The devices that play ``role`` in this run."""
        raise NotImplementedError

    def keeps(self, path: Path, passthrough: bool) -> bool:
        """Whether a collected test (by its file and its passthrough marker) runs here."""
        return True

    def collection_note(self) -> str | None:
        """A line for the collection summary about the tests this backend left out."""
        return None

    def resource_group(self, device) -> str | None:
        """The xdist group of a test taking ``device`` (None: grouped by guest shape)."""
        return None

    def report_meta(self) -> dict | None:
        return None

    def give_back(self) -> list:
        """At the end of the run (controller): what went back to its host driver."""
        return []

    def close(self) -> None:
        pass


class Emulated(Backend):
    name = "emulated"

    def candidates(self, role: str) -> list:
        return list(devices.EMULATED[role])

    def keeps(self, path: Path, passthrough: bool) -> bool:
        # Real passthrough's failure paths have no emulated equivalent: not run, not "skipped".
        return not passthrough


class Vfio(Backend):
    name = "vfio"
    takes_host_devices = True

    def setup(self, inventory: str | None) -> None:
        """Give back what a killed run left on vfio-pci, load the inventory, ask the doctor.
        A host that cannot run vfio ends the session with the doctor's reasons: a nightly on a
        broken VT-d host must fail, not pass having skipped everything."""
        self._require_root()
        if not self.worker:
            for r in binding.restore_from_journal("/"):
                print(f"hotplug-harness: {r.bdf} left by a killed run (on vfio-pci, or a USB "
                      f"device handed to usb-host): {r.status} "
                      f"({r.detail})")
        if not inventory:
            raise ConfigError("--backend vfio needs --host-inventory TOML naming the host devices to "
                              "use", hint="`python -m harness discover --write inventory.toml`, "
                                          "then review it (docs/vfio.md)")
        self.inventory = load_inventory(inventory)  # bad input stops here, one line each
        self._ask_the_doctor()
        self.binder = binding.VfioBinder("/", timeout=self.pace(5.0),
                                         cleared_storage=self.inventory.cleared_storage(),
                                         nic_ports=self.inventory.nic_ports())
        self._make_vfs()

    def _make_vfs(self) -> None:
        """The inventory's SR-IOV VF entries get their addresses. The run's first process (the
        xdist controller, which starts before its workers, or the only one) makes each PF's
        VFs, journaled, put back at the end of the run (:meth:`give_back`); workers find them."""
        found = {}
        for pf, count in self.inventory.vf_counts().items():
            if not self.worker:
                found[pf] = self.binder.enable_vfs(pf, count)
                print(f"hotplug-harness: {pf} has {count} VFs for this run: "
                      f"{', '.join(found[pf])}")
                continue
            found[pf] = sriov.vfs_of("/", pf)
            if len(found[pf]) < count:
                raise LabError(f"{pf} has {len(found[pf])} VFs, the inventory asks for {count}",
                               hint="the run's controller makes them before its workers start: "
                                    "did another process set sriov_numvfs meanwhile?")
        if found:
            self.inventory = self.inventory.with_vfs(found)

    def _require_root(self) -> None:
        if os.geteuid() != 0:
            # Before any host step: binding goes through sysfs and the journal lives in /var/lib.
            raise ConfigError("--backend vfio needs root: it binds host devices to vfio-pci "
                              "through sysfs and journals them in /var/lib/hotplug-harness",
                              hint="run it as root (sudo .venv/bin/pytest ...)")

    def _ask_the_doctor(self, where: str = "this host", fix: str = "") -> None:
        # The inventory's devices are proven idle by the run's first process, before its
        # workers start; a worker that starts later would find the devices the others hold
        # (a QEMU has /dev/vfio/N or the USB node open) in use. The binder proves each device
        # idle again when it takes it.
        checks = doctor.run_checks("/", self.qemu_binary, None if self.worker else self.inventory,
                                   qemu_timeout=self.pace(20.0))
        if doctor.exit_code(checks):
            raise LabError(f"--backend {self.name}: {where} cannot run vfio-pci: "
                           + doctor.verdict(checks).removeprefix("verdict: "),
                           hint="fix what the doctor lists below (`python -m harness doctor` "
                                "runs the same checks)" + fix,
                           details=doctor.format_report(checks))

    def candidates(self, role: str) -> list:
        # A role the inventory cannot play is "not covered": its tests fail in set-up, saying
        # so, unless the run was narrowed to other roles on purpose (--roles).
        return self.host_devices(role) or [devices.Placeholder(
            role, f"not covered: the inventory {self.inventory.path} has no {role!r} entry")]

    def host_devices(self, role: str) -> list:
        """The inventory's devices for ``role`` as hotplug devices (usb-host in both of the
        guide's devname forms when the inventory gives both)."""
        out = []
        for entry in self.inventory.for_role(role):
            if entry.is_pci:
                out.append(devices.VfioPci(entry, self.binder, self.inventory.pci_addresses(),
                                           prepare=self.before_plug(entry), managed=self.managed))
            else:
                if entry.hostbus is not None:
                    out.append(devices.UsbHost(entry, "busaddr", self.binder))
                if entry.vendorid is not None:
                    out.append(_usb_by_ids(entry, self.binder))
        return out

    def before_plug(self, entry):
        """What to do once ``entry``'s device is on vfio-pci, right before its ``device_add``
        (None: nothing; a VT-d host's devices need nothing)."""
        return None

    def resource_group(self, device) -> str:
        """The IOMMU group of a PCI device (two inventory entries in one group are one
        resource), the USB port path of a USB device (its hostbus/hostaddr and
        vendorid/productid forms are one device), or the group of the nearest PCI function
        above it that the inventory lists (a stick on a listed xHCI: a test of one takes the
        other from the host, so they run on one worker, in turn). The vfio failure-path tests
        bind the inventory's first NIC by hand: they go with its group."""
        fs = Sysfs.of("/")
        entry = getattr(device, "entry", None)
        if entry is None:  # a failure-path test, or a role nobody plays
            nics = self.inventory.for_role("nic") if self.inventory else []
            entry = nics[0] if nics else None
            if entry is None:
                return "host-failure-paths"
        if entry.is_pci:
            return _pci_group(fs, entry.bdf)
        usb = find_usb_device(fs, entry)
        if usb is None:
            return f"host-{entry.name}"
        listed = self.inventory.pci_addresses() if self.inventory else set()
        above = [bdf for bdf in bdfs_in_path(usb.path) if bdf in listed]
        return _pci_group(fs, above[-1]) if above else f"usb-{usb.name}"

    def give_back(self) -> list:
        """Every journal entry of this run goes back to its host driver, its dead workers'
        and its own included (a worker killed mid-test, a release that failed while a QEMU held
        the group, a SIGTERM). Raises if a device cannot be given back."""
        return binding.restore_from_journal("/", own_pids={os.getpid()})

    def close(self) -> None:
        if self.binder is not None:
            self.binder.close()  # gives back anything a test could not


class Lab(Vfio):
    """Inside the lab host (pytest_cmdline_main sends the outer run there): the lab writes its
    own inventory, then it is the vfio backend."""

    name = "lab"
    #: Guests booted inside the lab host (L2, nested KVM on TCG) sometimes hang before they
    #: are ready (1 boot in 42 here, with QEMU 10 running L1): the lab boots another.
    boot_attempts = 3
    #: Nested KVM on TCG sometimes resets an L2 guest under a test (about 1 test in 40 here).
    dead_guest_retries = 1

    def __init__(self, *, lab, roles=None, **kw):
        super().__init__(**kw)
        self.lab = lab
        #: --roles: the lab host's inventory lists only these roles' devices, as a host with
        #: less hardware would (two such runs merge as two hosts; docs/fleet.md).
        self.roles = roles

    def before_plug(self, entry):
        """A VF's PF is re-armed before each hot-add (:func:`harness.lab.devices.rearm_vfs`:
        QEMU's igb tells a VF "PF reset done" once per PF open, and each VF driver that starts
        uses it up)."""
        return (lambda: lab_mod.rearm_vfs(entry.pf)) if entry.pf else None

    def setup(self, inventory: str | None) -> None:
        if self.lab is None:
            raise ConfigError("--backend lab runs inside the lab host only",
                              hint="run `pytest --backend lab` on the host: it boots the lab")
        if inventory:
            raise ConfigError("--backend lab writes its own inventory: drop --host-inventory",
                              hint="--host-inventory is for --backend vfio on a VT-d host")
        workdir = self.lab.workdir
        path = (workdir / "inventory.toml" if self.worker else
                lab_mod.write_inventory(workdir, roles=self.roles))

        self.inventory = load_inventory(path)
        self._ask_the_doctor("the lab host", ": a bug in the lab image (harness/lab/)")
        if not self.worker:
            # (what `python -m harness plan` says inside the lab host, before any bind: the
            # lab's devices are proven idle by the same rule as a VT-d host's; in the run
            # folder as lab/plan.txt)
            lines, ok = plan_inventory("/", self.inventory)
            (workdir / "plan.txt").write_text("\n".join(lines) + "\n")
            print(f"hotplug-harness: lab host plan: {lines[-1].removeprefix('verdict: ')} "
                  f"({workdir / 'plan.txt'})", flush=True)
        self.binder = binding.VfioBinder("/", timeout=self.pace(5.0),
                                         cleared_storage=self.inventory.cleared_storage(),
                                         nic_ports=self.inventory.nic_ports())
        self._make_vfs()
        if not self.worker:
            for pf in self.inventory.vf_counts():
                lab_mod.rearm_vfs(pf)

    def keeps(self, path: Path, passthrough: bool) -> bool:
        # The lab is for the scenarios' real passthrough; the unit and self-tests (emulated
        # devices only) are `make test`'s, and nested they take minutes for nothing new.
        return "scenarios" in path.parts

    def collection_note(self) -> str | None:
        if self.left_out:
            return (f"hotplug-harness: --backend lab runs tests/scenarios only: {self.left_out} "
                    "unit and self-tests deselected (`make test` runs them)")
        return None

    def report_meta(self) -> dict:
        """What the report says about the lab host this run ran in."""
        return {**self.lab.image, "kernel": os.uname().release,
                "ready_seconds": self.lab.ready_seconds()}


def make(name: str, **kw) -> Backend:
    if name == "lab":
        return Lab(**kw)
    kw.pop("lab", None)
    kw.pop("roles", None)
    return {"emulated": Emulated, "vfio": Vfio}[name](**kw)


def _pci_group(fs: Sysfs, bdf: str) -> str:
    """The xdist group of the PCI function ``bdf``: its IOMMU group's."""
    group = fs.pci_device(bdf).iommu_group if fs.pci_dir(bdf).exists() else None
    return f"iommu-group-{group}" if group is not None else f"host-{bdf}"


def _usb_by_ids(entry, binder):
    """The guide's ``usb_add host:VVVV:PPPP`` form, unless those ids name more than one device
    on this host: usb-host would take whichever it finds first, maybe one the host needs, so
    that form is refused (its tests fail in set-up saying why)."""
    ids = f"{entry.vendorid[2:]}:{entry.productid[2:]}"
    twins = [u for u in Sysfs.of("/").usb_devices() if u.ids == ids]
    if len(twins) > 1:
        where = ", ".join(f"bus {u.busnum} addr {u.devnum}" for u in twins)
        return devices.Placeholder(
            "usb-device", f"refusing usb-host vendorid={entry.vendorid},productid="
                          f"{entry.productid} for {entry.name}: {len(twins)} devices on this "
                          f"host have those ids ({where}) and usb-host would take whichever "
                          "it finds first; the hostbus/hostaddr form names one",
            id=f"{entry.name}-vidpid")
    return devices.UsbHost(entry, "vidpid", binder)

