"""SR-IOV on a fake host: making a PF's VFs (journaled, put back), binding a VF, a run killed
half-way and `restore`, the refusals (no SR-IOV, too many VFs, VFs already there, the host's
own NIC, a VF grouped with its PF), and the inventory's VF entries."""

import json
import re
import os

import pytest

from harness.core.errors import HostDeviceError
from harness.host import sriov
from harness.host.binding import Journal, VfioBinder, restore_from_journal
from harness.host.inventory import InventoryError, parse_inventory
from harness.host.safety import HostUsage, plan_group

from . import fakesysfs
from .fakesysfs import FakeHost, Killed

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PF = "0000:08:00.0"
VF0, VF1 = "0000:08:10.0", "0000:08:10.1"


@pytest.fixture
def host(lab: FakeHost) -> FakeHost:
    """The lab host with an 82576 (igb, SR-IOV, 7 VFs) behind its own root port."""
    lab.add_pci("0000:00:1c.6", "8086:a33e", 0x060400, "pcieport", 16)
    lab.add_pci(PF, "8086:10c9", 0x020000, "igb", 17, parent="0000:00:1c.6")
    lab.sriov_capable(PF, 7)
    lab.add_net("enp8s0", PF)  # down, no address: idle
    return lab


@pytest.fixture
def journal(fake_root):
    return fake_root / "var/lib/hotplug-harness/vfio-journal.json"


def entries(journal) -> list[dict]:
    return json.loads(journal.read_text())["entries"] if journal.exists() else []


def set_numvfs(host: FakeHost, n: int, pf: str = PF) -> None:
    """What a person (or another tool) does by hand: echo n > .../sriov_numvfs."""
    host.sysfs().write(host.sys / "bus/pci/devices" / pf / "sriov_numvfs", str(n))


def vf_interfaces(host: FakeHost) -> None:
    """What igbvf makes of VF 0 and 1 once the VFs are there: an interface each, down, no
    address (nobody's: the proof a VF on a host driver is judged by, review 28b)."""
    for n, vf in enumerate((VF0, VF1)):
        host.add_net(f"enp8s0v{n}", vf)


def numvfs(host: FakeHost, pf: str = PF) -> int:
    return int((host.dev_dir(pf) / "sriov_numvfs").read_text())


def autoprobe(host: FakeHost, pf: str = PF) -> str:
    return (host.dev_dir(pf) / "sriov_drivers_autoprobe").read_text().strip()


def test_physical_function_reads_the_capability(host):
    pf = sriov.physical_function(host.sysfs(), "08:00.0")
    assert pf == sriov.PhysicalFunction(PF, totalvfs=7, numvfs=0, vfs=(), driver="igb")
    assert sriov.physical_function(host.sysfs(), "05:00.0") is None  # the 82599 here has none
    set_numvfs(host, 2)
    assert sriov.vfs_of(host.sysfs(), PF) == [VF0, VF1]
    assert sriov.physfn_of(host.sysfs(), VF1) == PF
    assert sriov.physfn_of(host.sysfs(), PF) is None


def test_vfs_made_journaled_first_bound_and_all_put_back(host, journal):
    journaled_before_write = []
    host.on_any_write = lambda rel, v: rel.endswith("sriov_numvfs") and v == "2" and \
        journaled_before_write.append(entries(journal))
    binder = VfioBinder(host.sysfs(), journal=journal)
    vfs = binder.enable_vfs("08:00.0", 2)
    assert vfs == [VF0, VF1] and numvfs(host) == 2
    [[entry]] = journaled_before_write
    assert entry["kind"] == "sriov" and entry["bdf"] == PF and entry["numvfs"] == 0
    assert entry["autoprobe"] == 1
    # the host's igbvf never took them: autoprobe was off before the VFs were made
    assert host.driver_of(VF0) is None and host.driver_of(VF1) is None
    assert autoprobe(host) == "0"

    lease = binder.bind(VF0, allowed={VF0, VF1})
    assert host.driver_of(VF0) == "vfio-pci" and host.driver_of(PF) == "igb"
    assert lease.members == [VF0]  # each VF in its own group; the PF stays on the host
    lease.release()
    assert host.driver_of(VF0) is None  # as the harness found it
    binder.close()
    assert numvfs(host) == 0 and not host.dev_dir(PF).joinpath("virtfn0").exists()
    assert entries(journal) == [] and autoprobe(host) == "1"
    assert host.driver_of(PF) == "igb"
    # VFs made by hand after the harness let go get the host's driver again
    set_numvfs(host, 1)
    assert host.driver_of(VF0) == "igbvf"


def test_a_kernel_without_the_autoprobe_switch(host, journal):
    """Before Linux 4.12 there is no sriov_drivers_autoprobe: VFs are made all the same (the
    host's VF driver takes them; the binding moves them to vfio-pci) and nothing is journaled
    for the switch."""
    host.dev_dir(PF).joinpath("sriov_drivers_autoprobe").unlink()
    binder = VfioBinder(host.sysfs(), journal=journal)
    assert binder.enable_vfs(PF, 1) == [VF0]
    assert "autoprobe" not in entries(journal)[0] and host.driver_of(VF0) == "igbvf"
    host.add_net("enp8s0v0", VF0)  # igbvf's interface, down: the VF is idle
    binder.close()
    assert numvfs(host) == 0 and entries(journal) == []


def test_autoprobe_already_off_is_left_off(host, journal):
    host.dev_dir(PF).joinpath("sriov_drivers_autoprobe").write_text("0\n")
    binder = VfioBinder(host.sysfs(), journal=journal)
    binder.enable_vfs(PF, 1)
    binder.close()
    assert autoprobe(host) == "0" and not [w for w in host.writes if "autoprobe" in w[0]]


def test_vfs_already_there_are_used_as_they_are(host, journal):
    set_numvfs(host, 4)
    host.writes.clear()
    binder = VfioBinder(host.sysfs(), journal=journal)
    assert binder.enable_vfs(PF, 2) == [VF0, VF1]
    binder.close()
    assert host.writes == [] and numvfs(host) == 4 and entries(journal) == []


def test_a_killed_run_is_put_back_by_restore_vf_first(host, journal):
    binder = VfioBinder(host.sysfs(), journal=journal)
    binder.enable_vfs(PF, 2)
    host.kill_at = ("drivers_probe", VF1)
    with pytest.raises(Killed):
        binder.bind(VF1, allowed={VF1})
    host.kill_at = None
    assert {e.get("kind", "vfio") for e in entries(journal)} == {"sriov", "vfio"}
    host.writes.clear()
    results = restore_from_journal(host.sysfs(), journal, include_live=True)
    assert [(r.bdf, r.status) for r in results] == [(VF1, "restored"), (PF, "restored")]
    assert results[1].detail == "sriov_numvfs back to 0 (from 2), sriov_drivers_autoprobe 1"
    assert autoprobe(host) == "1"
    # the VF went back to its driver before the PF's count removed it
    assert [w for w in host.writes if w[0].endswith("sriov_numvfs")] == [
        (f"sys/bus/pci/devices/{PF}/sriov_numvfs", "0")]
    assert numvfs(host) == 0 and entries(journal) == []


def test_restore_leaves_a_pf_whose_vf_a_qemu_holds(host, journal):
    VfioBinder(host.sysfs(), journal=journal).enable_vfs(PF, 2)
    host.file("proc/4321/comm", "qemu-system-x86\n")
    (host.root / "proc/4321/fd").mkdir()
    os.symlink("/dev/vfio/101", host.root / "proc/4321/fd/17")  # VF1's group
    with pytest.raises(HostDeviceError) as e:
        restore_from_journal(host.sysfs(), journal, include_live=True)
    assert (f"{PF}: failed: its VF {VF1} is in use (/dev/vfio/101 open by pid 4321 "
            "(qemu-system-x86)); stop it (kill 4321), then restore again") in e.value.details
    assert numvfs(host) == 2 and len(entries(journal)) == 1


def refusal(host, journal, pf, count) -> str:
    host.writes.clear()
    sysfs_now = lambda: {k: v for k, v in host.snapshot().items() if k.startswith("sys")}  # noqa: E731
    before = sysfs_now()
    with pytest.raises(HostDeviceError) as e:
        VfioBinder(host.sysfs(), journal=journal).enable_vfs(pf, count)
    assert host.writes == [] and sysfs_now() == before
    assert entries(journal) == []
    return e.value.message


def test_refusals_before_any_write(host, journal):
    assert "0000:05:00.0 has no SR-IOV capability (no sriov_totalvfs)" in refusal(
        host, journal, "05:00.0", 1)
    assert f"{PF} offers at most 7 VFs (sriov_totalvfs), 8 asked for" in refusal(
        host, journal, PF, 8)
    assert "PCI device 0000:09:00.0 (an SR-IOV PF in the inventory) does not exist" in refusal(
        host, journal, "09:00.0", 1)
    set_numvfs(host, 1)
    assert (f"{PF} has 1 VFs already and the kernel changes a count only through 0, which "
            "would remove them from whoever uses them") in refusal(host, journal, PF, 2)


def test_refuses_the_pf_that_carries_the_hosts_route(host, journal):
    host.sriov_capable("0000:02:00.0", 7)  # the I210 of the default route, made SR-IOV here
    message = refusal(host, journal, "02:00.0", 1)
    assert "0000:02:00.0 is not proven idle (enp2s0 carries the route default" in message
    assert "writes sriov_numvfs only on an idle PF" in message


def test_a_vf_grouped_with_its_pf_is_refused(host, journal):
    host.sriov_capable(PF, 7, first_group=17)  # no ACS: VF 0 lands in the PF's group
    set_numvfs(host, 1)
    plan = plan_group(host.sysfs(), VF0, HostUsage.read(host.sysfs()),
                      allowed={VF0})
    assert any(f"group 17 holds {VF0}'s own physical function {PF}" in p for p in plan.problems)


def test_a_failed_write_puts_the_count_back(host, journal):
    host.sriov[PF]["vf_driver"] = None
    host.fail[("sriov_numvfs", "2")] = 12  # ENOMEM, as a PF short of MSI-X vectors says
    with pytest.raises(HostDeviceError, match="Cannot allocate memory"):
        VfioBinder(host.sysfs(), journal=journal).enable_vfs(PF, 2)
    assert numvfs(host) == 0 and entries(journal) == []


def test_a_journal_with_a_bad_sriov_entry_is_refused(journal):
    journal.parent.mkdir(parents=True)
    journal.write_text(json.dumps({"entries": [{"kind": "sriov", "bdf": PF, "numvfs": "0; rm",
                                                "pid": 1}]}))
    with pytest.raises(HostDeviceError, match="numvfs '0; rm' is not a VF count"):
        Journal(journal).read()
    journal.write_text(json.dumps({"entries": [{"kind": "sriov", "bdf": PF, "numvfs": 0,
                                                "autoprobe": "1; reboot", "pid": 1}]}))
    with pytest.raises(HostDeviceError, match="autoprobe '1; reboot' is not 0 or 1"):
        Journal(journal).read()


# -- the inventory ---------------------------------------------------------------------------------

VF_ENTRY = """
[[device]]
role = "nic"
pf = "08:00.0"
vf = {vf}
vfs = {vfs}
gateway = "10.0.8.2"
"""


def inventory(host, text):
    return parse_inventory(text, root=host.sysfs())


def test_inventory_vf_entries(host):
    inv = inventory(host, VF_ENTRY.format(vf=0, vfs=2) + VF_ENTRY.format(vf=1, vfs=2))
    a, b = inv.devices
    assert (a.name, a.pf, a.vf, a.vfs, a.bdf) == ("nic-vf0-08-00.0", PF, 0, 2, None)
    assert b.name == "nic-vf1-08-00.0" and a.address == f"VF 0 of {PF}"
    assert inv.vf_counts() == {PF: 2}
    resolved = inv.with_vfs({PF: [VF0, VF1]})
    assert [d.bdf for d in resolved.devices] == [VF0, VF1]
    assert resolved.pci_addresses() == {VF0, VF1}  # never the PF
    default = inventory(host, '[[device]]\nrole = "nic"\npf = "08:00.0"\ngateway = "10.0.8.2"\n')
    assert (default.devices[0].vf, default.devices[0].vfs) == (0, 1)


@pytest.mark.parametrize("text, problem", [
    (VF_ENTRY.format(vf=2, vfs=2), "vf = 2 but vfs = 2: the PF's VFs are numbered 0 to 1"),
    (VF_ENTRY.format(vf=0, vfs=8), f"vfs = 8 but {PF} offers at most 7 (sriov_totalvfs)"),
    (VF_ENTRY.format(vf=-1, vfs=2), "vf = -1 is not a VF index"),
    (VF_ENTRY.format(vf=0, vfs=2).replace('pf = "08:00.0"', 'pf = "05:00.0"'),
     "pf 0000:05:00.0 has no SR-IOV capability (no sriov_totalvfs)"),
    (VF_ENTRY.format(vf=0, vfs=2).replace('pf = "08:00.0"', 'pf = "00:17.0"'),
     "a VF's PF must be an Ethernet controller"),
    (VF_ENTRY.format(vf=0, vfs=2) + 'bdf = "08:10.0"\n', "both 'bdf' and 'pf'"),
    ('[[device]]\nrole = "nic"\nvf = 1\ngateway = "10.0.8.2"\n', "'vf'/'vfs' without 'pf'"),
    (VF_ENTRY.format(vf=0, vfs=2) + VF_ENTRY.format(vf=0, vfs=2), "same device (VF 0 of"),
])
def test_inventory_vf_problems(host, text, problem):
    with pytest.raises(InventoryError) as e:
        inventory(host, text)
    assert any(problem in p for p in e.value.problems), e.value.problems


def test_a_pf_listed_to_be_taken_and_for_its_vfs_is_refused(host):
    text = VF_ENTRY.format(vf=0, vfs=1) + '[[device]]\nrole = "nic"\nbdf = "08:00.0"\ngateway = "10.0.8.2"\n'
    with pytest.raises(InventoryError) as e:
        inventory(host, text)
    assert any(f"{PF} is the PF of VF entries and is also listed to be taken" in p
               for p in e.value.problems), e.value.problems


# -- discovery -----------------------------------------------------------------------------------


def test_discover_lists_sr_iov_pfs_and_drafts_their_vfs(host):
    from harness.host.discover import discover, draft_inventory, format_candidates

    set_numvfs(host, 2)
    vf_interfaces(host)  # (on igbvf with no interface seen, a VF may be a container's)
    found = {c.address: c for c in discover(host.sysfs())}
    assert found[PF].sriov == (7, 2) and found[PF].sriov_refused is None
    assert found[VF0].physfn == PF and found["0000:05:00.0"].sriov is None
    text = format_candidates(list(found.values()))
    assert "SR-IOV PF: 2 of 7 VFs" in text and f"SR-IOV VF of {PF}" in text
    draft = draft_inventory(list(found.values()))
    vfs = [d for d in draft.devices if d.pf]
    assert [(d.name, d.vf, d.vfs) for d in vfs] == [("nic-vf0-08-00.0", 0, 2),
                                                    ("nic-vf1-08-00.0", 1, 2)]
    assert PF not in draft.pci_addresses() and VF0 not in draft.pci_addresses()
    # the draft reads back once the gateway is filled in
    again = parse_inventory(draft.to_toml().replace('"FILL-IN"', '"10.0.8.2"'), check_host=False)
    assert [(d.name, d.pf, d.vf, d.vfs, d.gateway) for d in again.devices if d.pf] == [
        (d.name, d.pf, d.vf, d.vfs, "10.0.8.2") for d in vfs]


def test_discover_says_why_a_pfs_vfs_are_not_for_the_harness(host):
    from harness.host.discover import discover, draft_inventory

    host.sriov_capable("0000:02:00.0", 7)  # the NIC of the default route
    c = next(c for c in discover(host.sysfs()) if c.address == "0000:02:00.0")
    assert "is not proven idle (enp2s0 carries the route default" in c.sriov_refused
    assert not [d for d in draft_inventory([c]).devices]


def test_doctor_checks_a_vf_entry_before_its_vfs_exist(host):
    from harness.host.doctor import _inventory_checks

    inv = inventory(host, VF_ENTRY.format(vf=1, vfs=2))
    [check] = _inventory_checks(host.sysfs(), inv)
    assert check.ok and check.detail == (f"VF 1 of {PF} (igb, up to 7 VFs): the PF has no VF: "
                                         "the run makes 2 (sriov_numvfs, put back at its end)")
    set_numvfs(host, 1)
    [check] = _inventory_checks(host.sysfs(), inv)
    assert not check.ok and "has 1 VFs already" in check.detail


# -- issue 31, item 14: runs that cannot hurt each other ------------------------------------------

OTHER_RUN = 4321


def hand_to_another_live_run(host: FakeHost, journal, bdfs) -> None:
    """Make the journal entries of ``bdfs`` belong to another run, alive (pid 4321)."""
    host.proc(f"{OTHER_RUN}/stat", f"{OTHER_RUN} (pytest) S 1 " + "0 " * 40 + "\n")
    held = Journal(journal).read()
    with Journal(journal).locked():
        Journal(journal).write([dict(e, pid=OTHER_RUN, pid_start=None) if e["bdf"] in bdfs
                                else e for e in held])


def test_a_runs_end_keeps_the_vf_count_while_a_live_run_holds_a_vf(host, journal):
    """Run A made the VFs, run B (alive) has VF0 on vfio-pci: A's end must not write 0 to
    sriov_numvfs (that destroys B's VF); the last run to let go puts it back."""
    a = VfioBinder(host.sysfs(), journal=journal)
    a.enable_vfs(PF, 2)
    VfioBinder(host.sysfs(), journal=journal).bind(VF0, {VF0})  # run B
    hand_to_another_live_run(host, journal, {VF0})
    [result] = a.close()
    assert result.status == "in-use" and "pid 4321 (a live run) holds its VF 0000:08:10.0" \
        in result.detail
    assert numvfs(host) == 2 and host.driver_of(VF0) == "vfio-pci"
    # (A's count, B's VF, and B's reliance on the PF's VFs, journaled by its bind: review 28b)
    assert [e.get("kind", "vfio") for e in entries(journal)] == ["sriov", "vfio", "sriov"]
    (host.root / f"proc/{OTHER_RUN}/stat").unlink()  # B ends (killed): restore finishes it all
    restore_from_journal(host.sysfs(), journal)
    assert numvfs(host) == 0 and entries(journal) == []


def test_vfs_that_were_there_already_are_journaled_as_this_runs(host, journal):
    """Reused VFs: journaled (their count, unchanged), so another run's end knows this run
    relies on them; this run's own end changes nothing."""
    a = VfioBinder(host.sysfs(), journal=journal)
    a.enable_vfs(PF, 2)
    hand_to_another_live_run(host, journal, {PF})  # run A made them and lives on
    b = VfioBinder(host.sysfs(), journal=journal)
    assert b.enable_vfs(PF, 2) == [VF0, VF1]
    mine = [e for e in entries(journal) if e["pid"] == os.getpid()]
    assert [(e["kind"], e["bdf"], e["numvfs"]) for e in mine] == [("sriov", PF, 2)]
    assert "autoprobe" not in mine[0]  # nothing changed, nothing to put back
    b.close()
    assert numvfs(host) == 2 and [e["pid"] for e in entries(journal)] == [OTHER_RUN]
    # A dies while C (pid 77, alive) relies on the VFs it reused: restoring A's entry keeps them
    VfioBinder(host.sysfs(), journal=journal).enable_vfs(PF, 2)
    (host.root / f"proc/{OTHER_RUN}/stat").unlink()
    host.proc("77/stat", "77 (pytest) S 1 " + "0 " * 40 + "\n")
    with Journal(journal).locked():
        held = Journal(journal).read()
        Journal(journal).write(held[:-1] + [dict(held[-1], pid=77, pid_start=None)])
    first, second = restore_from_journal(host.sysfs(), journal)
    assert first.status == "in-use" and "pid 77 (a live run) uses its VFs" in first.detail
    assert second.status == "in-use" and "held by pid 77" in second.detail
    assert numvfs(host) == 2 and len(entries(journal)) == 2


def test_plan_says_what_a_vf_entry_would_write_and_why_the_pf_may_make_them(host):
    from harness.host.plan import plan_inventory

    inv = inventory(host, VF_ENTRY.format(vf=1, vfs=2))
    lines, ok = plan_inventory(host.sysfs(), inv)
    pf_dir = host.root / "sys/bus/pci/devices" / PF
    assert ok and lines[2:10] == [
        f"nic nic-vf1-08-00.0 (VF 1 of {PF})",
        f"  PF {PF} on igb: stays on the host",
        "    idle: enp8s0: down, no route in any table, no upper device, no socket bound to it",
        f"  would write: echo 0 > {pf_dir}/sriov_drivers_autoprobe (journaled, put back)",
        f"  would write: echo 2 > {pf_dir}/sriov_numvfs (journaled: 0, put back at the end of "
        "the run)",
        "  then VF 1 is bound like any listed device (driver_override, drivers_probe), after its "
        "own proven-idle check", "", "verdict: every device would be taken"]
    set_numvfs(host, 2)
    vf_interfaces(host)  # (the existing VF is judged as its bind would judge it)
    lines, ok = plan_inventory(host.sysfs(), inv)
    assert ok and f"  would use its existing VF 1 ({VF1}), journaled as this run's: " \
                  "sriov_numvfs stays while any live run holds a VF of it" in lines


# -- a VF's switchdev representor (read 34a, finding 2) -----------------------------------------


@pytest.mark.parametrize("port_name, why", [
    ("pf0vf1", r"none is named for VF 0 \(pf<N>vf0\)"),
    ("pf0xvf0", r"enp13s0f0npf0vf0 \(pf0xvf0\) name no function the harness can parse"),
])
def test_a_vf_whose_representor_cannot_be_told_is_unproven(lab, port_name, why):
    """A PF in switchdev mode (it shows representors) whose representor of this VF cannot be
    told (only another VF's, or a name that does not parse: a driver's own form) leaves the
    VF unproven: its port on the card's switch may be up in a host bridge."""
    from .test_host_idle_review34a import E810_VF0, _e810_switchdev_vf
    _e810_switchdev_vf(lab, rep_in_bridge=False)
    (lab.sys / "class/net/enp13s0f0npf0vf0/phys_port_name").write_text(port_name + "\n")
    verdict = HostUsage.read(lab.sysfs()).verdict(E810_VF0)
    assert not verdict.idle
    assert any("which representor is its port on the card's switch cannot be told" in u
               for u in verdict.uses), verdict.uses
    assert any(re.search(why, u) for u in verdict.uses), verdict.uses


def test_a_vf_in_legacy_mode_has_no_representor_to_judge(lab):
    """Legacy mode (no representors below the PF: its uplink's phys_port_name is p0, or
    none): the VF is judged as before."""
    from .test_host_idle_review34a import E810_VF0, _e810_switchdev_vf
    _e810_switchdev_vf(lab, rep_in_bridge=False)
    (lab.sys / "class/net/enp13s0f0npf0vf0/phys_port_name").write_text("p1\n")
    verdict = HostUsage.read(lab.sysfs()).verdict(E810_VF0)
    assert verdict.idle and not any("representor" in e for e in verdict.evidence), verdict


def test_a_vf_whose_representor_is_up_in_another_namespace_is_not_idle(lab):
    """The representor moved into a named namespace (``ip link set enp13s0f0npf0vf0 netns
    ovs``) and up there: `ip -d link` there names it (its ``parentdev``, its
    ``phys_port_name``), and it is judged as in the host's."""
    import shutil
    from .test_host_idle_review34a import E810, E810_VF0, _e810_switchdev_vf
    _e810_switchdev_vf(lab, rep_in_bridge=False)
    rep = "enp13s0f0npf0vf0"
    shutil.rmtree(os.path.realpath(lab.sys / "class/net" / rep))
    (lab.sys / "class/net" / rep).unlink()
    links = [li for li in json.loads((lab.root / "ip/link.json").read_text())
             if li["ifname"] != rep]
    (lab.root / "ip/link.json").write_text(json.dumps(links))
    lab.network("ovs", links=[fakesysfs.link(7, rep, E810, up=True, phys_port_name="pf0vf0")])
    verdict = HostUsage.read(lab.sysfs()).verdict(E810_VF0)
    assert any(u.startswith(f"its representor {rep} (netns ovs) is up") for u in verdict.uses), \
        verdict
