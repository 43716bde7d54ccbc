"""Issue 31, read 45a (devices side: the leases and the journal across runs and binds by hand,
after 15f236c's ``_own``), on main at 15f236c. What it found, one section below:

1. `release PF` gives back another lease's VF: ``python -m harness release BDF`` ->
   ``restore_from_journal(only={BDF})`` picks every lease with an entry whose ``bdf`` is BDF.
   A run (or a `bind` by hand) that binds a VF journals that it *relies* on its PF's VFs: an
   SR-IOV entry whose ``bdf`` is the PF, under the VF's own lease (``_hold_and_rely``). So
   `release` of the PF -- which `restore` itself tells the operator to type: its line for
   that reliance entry is "0000:08:00.0: in-use: bound by hand ...; `python -m harness
   release 08:00.0` gives it back" (``_held_elsewhere`` names the entry's ``bdf``, the PF),
   and what one types to clear the count a run that died left on it (refused since by
   ``_refuse_stale_count`` and ``_refuse_pf_of_vfs``, both naming the PF) -- drags in the lease of every VF bound by hand
   below it: that VF is given back (vfio-pci -> the driver it had, igbvf or none), the lease
   dropped with its reliance, and the VF is left unleased for any run to take; the count
   stays at this release only because the dead run's entry came first in the journal, while
   the reliance was still there: the next `release 08:00.0` or `restore` writes 0 to
   ``sriov_numvfs`` and removes the VF. Its user keeps it for a VM (a libvirt domain with
   ``<hostdev managed='no'>``, shut off between uses): its next start fails, and
   nothing tells the user why). ``restore`` of the same journal leaves both ("bound by hand";
   the count ``in-use``): only ``release PF`` breaks it. Shape: a lab host with an 82576 /
   X710 whose VFs a nightly made (``[[sriov]] vfs = 2``) and died (OOM, a reboot of the
   controller VM...), one user who bound VF 0 by hand for their VM, and a second user
   cleaning up with `release 08:00.0`. Safe: a reliance entry (SR-IOV, no ``set``, no
   ``autoprobe``) names the PF but is no lease *of* it: ``only`` picks the leases that hold
   the named function (its vfio/HOLD entry, or a count it set), not those that merely rely on
   it; or the release refuses, naming the VF bound by hand; and ``_held_elsewhere``'s line
   for a reliance entry names the VF of its lease, not the PF (tests 1, 1c; control 1b).

Looked at, no test (each held, is a stated limit, or an over-refusal):

* 15f236c's ``_own`` (pid and ``pid_start``, never a start-less bind by hand) in
  ``_held_elsewhere``, ``_live_users_of_vfs`` and ``_drop_own_reliance``: a bind by hand's
  entries under a reused pid are not the session's; an entry without a start time is
  "alive" to ``owner_alive`` (in-use: over-refusal); xdist workers' entries are given back
  by the controller only once their process is gone.
* `release`/`restore` selection (``only`` by lease): HOLD leases, a dead run's lease with its
  reliance entry, a live run's reliance (left ``in-use``, and it keeps the count), `restore
  --journal OLD` with ``_leased_on_host``; `--force` takes live leases by design.
* SR-IOV: ``enable_vfs``' reuse (no write, a reliance entry), ``_restore_sriov``'s early
  returns, ``_vfs_not_idle`` (a count set again by hand to the same number is not told from
  the run's: its VFs are proven idle first; not shown to be a real shape).
* the bind's mechanics: ``_move_to_vfio`` (override/new_id), ``_new_id_strays``,
  ``vfs_removed``, ``_put_back``; the libvirt hand-over (``_libvirt_gives_back``,
  ``handover``'s re-proof; libvirt skips its own reset for a vfio-bound device); usb-host
  both forms and libvirt's ``<hostdev type='usb'>`` (bus and address always given).

The tests assert the safe behaviour and fail on 15f236c. A fake sysfs/proc tree plays the host
(:mod:`.fakesysfs`); no guest is booted.
"""

from __future__ import annotations

import json
import os

import pytest

from harness.core.errors import HostDeviceError
from harness.host.binding import Journal, VfioBinder, restore_from_journal

from . import fakesysfs
from .fakesysfs import FakeHost

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures

PF = "0000:08:00.0"  # an 82576 (igb, SR-IOV, 7 VFs), alone in group 17
VF0, VF1 = "0000:08:10.0", "0000:08:10.1"
DEAD = 4_000_001  # a pid no process has (above any pid_max): the nightly that died
CLI = 4_000_002  # the `bind` by hand's process, ended


@pytest.fixture
def host(lab: FakeHost) -> FakeHost:
    lab.add_pci("0000:00:1c.6", "8086:a33e", 0x060400, "pcieport", 16)
    lab.add_pci(PF, "8086:10c9", 0x020000, "igb", 17, parent="0000:00:1c.6")
    lab.sriov_capable(PF, 7)
    lab.add_net("enp8s0", PF)  # down, no address: idle
    # (this process is a live process with a start time: its entries are told by it)
    lab.file(f"proc/{os.getpid()}/stat", f"{os.getpid()} (python) S " + "0 " * 18 + "4242 0\n")
    return lab


@pytest.fixture
def journal(fake_root):
    return fake_root / "var/lib/hotplug-harness/vfio-journal.json"


def _entries(journal) -> list[dict]:
    return json.loads(journal.read_text())["entries"] if journal.exists() else []


def _numvfs(host: FakeHost) -> int:
    return int((host.dev_dir(PF) / "sriov_numvfs").read_text())


def _nightly_died_with_vfs(host: FakeHost, journal) -> None:
    """A nightly made 2 VFs of the PF (``[[sriov]] vfs = 2``) and died before its end put the
    count back: its entry is left with a pid no process has now."""
    VfioBinder(host.sysfs(), journal=journal).enable_vfs(PF, 2)
    jr = Journal(journal)
    with jr.locked():
        jr.write([{**e, "pid": DEAD, "pid_start": 777} for e in jr.read()])
    assert _numvfs(host) == 2 and [e["kind"] for e in _entries(journal)] == ["sriov"]


def _user_binds_vf0_by_hand(host: FakeHost, journal) -> None:
    """`python -m harness bind 08:10.0`: VF 0 on vfio-pci for the user's VM (shut off now)."""
    lease = VfioBinder(host.sysfs(), journal=journal, manual=True).bind(VF0, {VF0})
    assert lease.moved == [VF0] and host.driver_of(VF0) == "vfio-pci"
    jr = Journal(journal)  # (its CLI ended: its entries carry that process's pid, not ours)
    with jr.locked():
        jr.write([{**e, "pid": CLI, "pid_start": 888} if e.get("manual") else e
                  for e in jr.read()])


def test_1_release_of_the_pf_leaves_a_vf_bound_by_hand_below_it(host, journal):
    """The dead nightly's count left on the PF, VF 0 bound by hand: `release 08:00.0` must not
    give VF 0 back nor remove it (sriov_numvfs 0): that lease is the user's, named by VF 0,
    not by the PF."""
    _nightly_died_with_vfs(host, journal)
    _user_binds_vf0_by_hand(host, journal)
    try:
        restore_from_journal(host.sysfs(), journal, only={"08:00.0"})  # `release 08:00.0`
    except HostDeviceError:
        pass  # (a refusal naming VF 0 is safe too)
    assert host.driver_of(VF0) == "vfio-pci" and _numvfs(host) == 2, (
        f"VF 0 bound by hand: now {host.driver_of(VF0) if host.sysfs().pci_exists(VF0) else 'removed'}"
        f", sriov_numvfs {_numvfs(host)}")
    assert any(e["bdf"] == VF0 and e.get("manual") for e in _entries(journal))


def test_1b_control_restore_leaves_both_and_release_of_the_vf_gives_it_back(host, journal):
    """Control: `restore` leaves the VF bound by hand ("bound by hand") and the count the
    nightly left (the VF relies on it: in-use); `release 08:10.0` (the user) gives VF 0 back
    and drops its reliance; then `restore` puts the dead nightly's count back to 0."""
    _nightly_died_with_vfs(host, journal)
    _user_binds_vf0_by_hand(host, journal)
    results = restore_from_journal(host.sysfs(), journal)
    assert {(r.bdf, r.status) for r in results} == {(VF0, "in-use"), (PF, "in-use")}, results
    # (the line that sent the operator to test 1 named the PF; since the fix, the VF of the
    # reliance's lease)
    assert any(r.bdf == PF and "release 08:10.0` gives it back" in r.detail for r in results)
    assert host.driver_of(VF0) == "vfio-pci" and _numvfs(host) == 2
    restore_from_journal(host.sysfs(), journal, only={"08:10.0"})
    assert host.driver_of(VF0) is None and _numvfs(host) == 2
    assert [(e["kind"], e.get("set")) for e in _entries(journal)] == [("sriov", 2)]
    restore_from_journal(host.sysfs(), journal)
    assert _numvfs(host) == 0 and _entries(journal) == []


def test_1c_the_cli_release_of_the_pf_that_restore_names_leaves_the_vf(host, journal, capsys):
    """The same through the command `restore` points to: `python -m harness restore` says
    "0000:08:00.0: in-use: bound by hand ...; `python -m harness release 08:00.0` gives it
    back"; the operator runs it (twice: the first exits 1, the count "in-use"). VF 0, bound by
    hand by another user, must still be on vfio-pci and still be there."""
    from harness.cli.host import release_main, restore_main
    _nightly_died_with_vfs(host, journal)
    _user_binds_vf0_by_hand(host, journal)
    assert restore_main(["--root", str(host.root), "--journal", str(journal)]) == 1
    # (on 15f236c it said "`release 08:00.0` gives it back"; since the fix it names VF 0; the
    # operator may still type `release 08:00.0`, as the dead run's count's refusals name it)
    said = capsys.readouterr().out
    assert "`python -m harness release 08:10.0` gives it back" in said
    assert "release 08:00.0` gives it back" not in said
    for _ in range(2):
        try:
            release_main(["08:00.0", "--journal", str(journal)], fs=host.sysfs())
        except HostDeviceError:
            pass
    present = host.sysfs().pci_exists(VF0)
    assert present and host.driver_of(VF0) == "vfio-pci", (
        f"VF 0 {'on ' + str(host.driver_of(VF0)) if present else 'removed'}, "
        f"sriov_numvfs {_numvfs(host)}")
