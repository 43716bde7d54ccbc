"""The time factor and the deadlines derived from it (harness/pace.py)."""

import pytest

from harness.core import pace
from harness.core.pace import Deadlines, Pace


def test_deadlines_are_reference_figures_times_the_factor():
    slow = Pace(2.5, 0.15, 0.06, "host", "measured")
    d = Deadlines.for_run(slow, accel="tcg")
    assert d.qmp_connect == pace.QMP_CONNECT["host"] * 2.5
    assert d.boot == pace.BOOT[("builtin", "tcg")] * 2.5
    assert d.command == pace.COMMAND * 2.5 and d.unplug == pace.UNPLUG * 2.5
    assert d.scaled(10) == 25.0


def test_the_lab_and_user_images_have_their_own_reference_figures():
    lab = Pace(1.0, 1.2, 1.2, "lab", "measured")
    assert Deadlines.for_run(lab, accel="kvm").qmp_connect == pace.QMP_CONNECT["lab"]
    host = Pace(1.0, None, 0.06, "host", "--time-factor")
    assert Deadlines.for_run(host, accel="tcg", image="user").boot == pace.BOOT[("user", "tcg")]
    assert Deadlines.for_run(host, accel="kvm", image="user").boot == pace.BOOT[("user", "kvm")]


def test_boot_timeout_given_by_hand_is_taken_as_given():
    slow = Pace(3.0, None, 0.06, "host", "--time-factor")
    assert Deadlines.for_run(slow, accel="tcg", boot=42.0).boot == 42.0


def test_measured_factor_is_never_below_one_and_override_wins(monkeypatch):
    monkeypatch.setattr(pace, "probe_seconds", lambda rounds=3: 0.001)
    fast = Pace.measure("host")
    assert fast.factor == 1.0 and fast.source == "measured" and fast.probe_seconds == 0.001
    monkeypatch.setattr(pace, "probe_seconds",
                        lambda rounds=3: pace.REFERENCE_PROBE_SECONDS["host"] * 2.2)
    assert Pace.measure("host").factor == 2.2
    assert Pace.measure("host", override=4.0).factor == 4.0
    assert "--time-factor" in Pace.measure("host", override=4.0).describe()
    with pytest.raises(ValueError):
        Pace.measure("moon")


def test_pace_round_trips_through_json():
    p = Pace(1.7, 0.1, 0.06, "lab", "measured")
    assert Pace.from_json(p.to_json()) == p


def test_the_probe_measures_something():
    assert 0 < pace.probe_seconds(rounds=1) < 30


def test_guests_under_tcg_inside_the_lab_get_a_boot_deadline_of_their_own():
    lab = Pace(1.0, 1.2, 1.2, "lab", "measured")
    assert Deadlines.for_run(lab, accel="tcg").boot == pace.NESTED_TCG_BOOT["builtin"]
    assert Deadlines.for_run(lab, accel="kvm").boot == pace.BOOT[("builtin", "kvm")]


def test_deadlines_follow_a_guest_much_slower_than_the_probe_says():
    """L2 under TCG inside the lab: the probe (L1's CPU) says 1.0, the guest was ready in
    155 s against the reference guest's 9.3 s. Commands and unplugs follow the guest; the
    connects (the starting machine's) and the boot deadline (just met) stay."""
    d = Deadlines.for_run(Pace(1.0, 1.2, 1.2, "lab", "measured"), accel="tcg")
    after = d.following(155.0)
    factor = round(155.0 / pace.REFERENCE_READY["builtin"], 2)
    assert after.pace.factor == factor and "155.0 s" in after.pace.source
    assert after.command == round(pace.COMMAND * factor, 1)
    assert after.unplug == round(pace.UNPLUG * factor, 1) and after.scaled(20) == round(20 * factor, 1)
    assert (after.qmp_connect, after.console_connect, after.boot) == (d.qmp_connect,
                                                                      d.console_connect, d.boot)


def test_a_guest_within_the_machines_noise_or_a_factor_given_by_hand_changes_nothing():
    measured = Deadlines.for_run(Pace(1.2, 0.08, 0.065, "host", "measured"), accel="tcg")
    assert measured.following(1.2 * 1.4 * pace.REFERENCE_READY["builtin"]) is measured
    by_hand = Deadlines.for_run(Pace(1.0, None, 0.065, "host", "--time-factor"), accel="tcg")
    assert by_hand.following(300.0) is by_hand
    user = Deadlines.for_run(Pace(1.0, 0.065, 0.065, "host", "measured"), accel="tcg", image="user")
    assert user.following(66.0).pace.factor == 2.0  # a distribution guest against its own 33 s
