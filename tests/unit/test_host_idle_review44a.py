"""Issue 31, read 44a (devices side: the leases and the journal across runs, after e2de565's
one ``_refuse_leased``/``_stale_refused``), on main at f8b05cf. What it found, one section
below:

1. (low likelihood: a pid that comes round again; a run's give-back breaks a bind by hand)
   "This run's own entries" are told by the pid alone where every other check tells a
   process by its pid *and its start time* (:func:`harness.host.binding.owner_alive`,
   ``pid_start``, written by ``_stamp`` for this very reason: "a pid reused by another
   process is told apart"). The session's end, :meth:`harness.run.backends.Vfio.give_back`
   -> ``restore_from_journal("/", own_pids={os.getpid()})`` -> ``_held_elsewhere``, returns
   "this restore's" for ``entry["pid"] in own_pids`` *before* it looks at ``manual``: a
   bind by hand (``python -m harness bind 06:00.0``: its CLI process exits at once, its
   lease outlives it until ``release``) whose CLI had the pid the session's controller has
   now is given back by that session's end, to ``ahci``, under its user (a VM defined with
   ``<hostdev managed='no'>``, shut off between uses, or a QEMU the user starts by hand
   later: its next start fails, the disk controller back on the host, and nothing tells
   its user why). The same pid-only test is in ``_live_users_of_vfs``
   (``e.get("pid") == os.getpid()``) and ``_drop_own_reliance``; there it is held
   by other rules (checked, no test: a dead run's VFs with one bound by hand under the
   session's pid are kept by ``_vfs_not_idle``'s PF verdict, "its VF is on vfio-pci",
   which fails the session's start instead: a failure the run makes itself, weak;
   ``_drop_own_reliance`` runs only after this process's own count is put back, which a
   bind by hand of an earlier process cannot rely on). Shape: a shared lab host where one
   user keeps a function bound by hand for days for a libvirt VM, and nightly sessions of
   the harness run beside it; the pid comes round within hours where ``kernel.pid_max`` is 32768..131072 (the kernel's
   default, ``max(32768, 1024 * CPUs)``, on distributions whose systemd is older than 243:
   RHEL/CentOS/Rocky 8, Ubuntu 18.04, or set back by a sysctl), so the chance per session is
   about one in pid_max: low, but the test is one line away from the rule the rest of the
   file keeps. Safe: an entry is "own" only when its pid *and* ``pid_start`` are those of
   a process of the run (as ``owner_alive`` compares them); never a ``manual`` one, unless
   releasing.

Looked at, no test (each held, is a stated limit, or an over-refusal):

* e2de565: ``refuse_foreign`` -> ``_refuse_leased`` (stale, by hand, live, dead: the same
  four branches and order as the copy it replaced; only the dead message changed) and
  ``_stale_refused`` for an SR-IOV entry of a member; ``_refuse_below_leased``,
  ``_refuse_pf_leased`` (every member that moves gets an entry; a kept member on no driver
  or pci-stub has no ``sriov_configure`` and no USB bus; a HOLD lease journals every
  non-bridge member); a stale entry refuses (over-refusal) until `restore` drops it.
* what a second run can do to this run's entries: ``owner_alive`` (pid and ``pid_start``,
  this boot's); ``_held_elsewhere`` (a live run's, a bind by hand's left, a dead one's
  given back); ``_restore_sriov``/``_live_users_of_vfs`` (a reliance of a live run or of a
  bind by hand keeps the count; the maker's entry stays for the last run);
  ``enable_vfs``'s reuse (no write; a rely entry), ``_refuse_stale_count``; ``release``'s
  ``only`` (by lease; a live run's left without --force); ``refuse_other_journal`` and
  ``_host_leases`` (one journal, one lock); ``refuse_usb_handed``'s own-lease exemption
  (by lease id, not pid).
* the bind's mechanics on failure: an unbind or probe that fails, a kill between the
  override and the unbind (``_put_back`` puts the override back, binds by name); the
  libvirt lease's release when the attach never happened (``_give_back``: nothing moved).

The tests assert the safe behaviour and fail on f8b05cf; the control shows the session's own
entry (same pid, same start) still given back at its end. A fake sysfs/proc tree plays the
host (:mod:`.fakesysfs`'s lab host); no guest is booted.
"""

from __future__ import annotations

import json
import os

import pytest

from harness.host.binding import VfioBinder, restore_from_journal

from . import fakesysfs  # noqa: F401  (its fixtures: lab, fake_root)
from .fakesysfs import fake_root, lab  # noqa: F401

ALLOWED = {"05:00.0", "05:00.1", "06:00.0", "07:00.0", "02:00.0", "00:1f.6", "00:17.0"}
ASM = "0000:06:00.0"  # ASM1062 SATA (sdb, not mounted), alone in group 13


def _journal(lab):
    return lab.root / "var/lib/hotplug-harness/vfio-journal.json"


def _process(lab, pid: int, comm: str, start: int) -> None:
    """/proc/PID/stat of a process ``comm`` started at ``start`` (clock ticks since boot)."""
    lab.file(f"proc/{pid}/stat", f"{pid} ({comm}) S " + "0 " * 18 + f"{start} 0\n")


def test_1_a_bind_by_hand_whose_pid_the_session_has_now_is_not_given_back_at_its_end(lab):
    me = os.getpid()
    _process(lab, me, "python3", 5500)  # `python -m harness bind 06:00.0`, as root
    VfioBinder(lab.sysfs(), journal=_journal(lab), manual=True).bind(ASM, ALLOWED)
    assert lab.driver_of(ASM) == "vfio-pci"
    # The CLI ended at once (its lease did not). Hours later the pid comes round again: the
    # nightly session's controller is that pid now, another process (another start time).
    _process(lab, me, "pytest", 9_100_000)
    results = restore_from_journal(lab.sysfs(), _journal(lab), own_pids={me})  # its give_back
    assert lab.driver_of(ASM) == "vfio-pci", (
        "the session's end gave back a bind by hand it never made, because the CLI that made "
        f"it had the same pid: {[str(r) for r in results]}")
    assert [e["bdf"] for e in json.loads(_journal(lab).read_text())["entries"]] == [ASM]


def test_1_control_the_sessions_own_entry_same_pid_and_start_is_given_back(lab):
    me = os.getpid()
    _process(lab, me, "pytest", 9_100_000)
    VfioBinder(lab.sysfs(), journal=_journal(lab)).bind(ASM, ALLOWED)  # never released
    [r] = restore_from_journal(lab.sysfs(), _journal(lab), own_pids={me})
    assert r.status == "restored" and lab.driver_of(ASM) == "ahci"

