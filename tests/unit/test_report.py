"""harness.report: the terminal summary and the HTML say each test's backend and whether it ran
through real passthrough (vfio-pci, usb-host) or an emulated stand-in."""

from harness.report import records
from harness.report import summary as report
from harness.report import html as reporthtml


def result(nodeid, outcome="passed", passthrough="", backend="lab", scenario="nic"):
    return {"nodeid": nodeid, "test": nodeid.split("::")[-1].split("[")[0], "id": "",
            "scenario": scenario, "platform": "q35-acpi", "device": "", "backend": backend,
            "passthrough": passthrough, "outcome": outcome, "reason": "", "duration": 1.0}


def summary(tests, lab=None, backend="lab"):
    return {"run": "run-1", "finished_at": "2026-11-25T10:00:00+0000", "backend": backend,
            "accel": "kvm", "accel_reason": "nested", "qemu_binary": "qemu-system-x86_64",
            "qemu_version": "7.2.22", "image": {"kernel_version": "6.1.0-56-amd64"},
            "counts": {o: sum(t["outcome"] == o for t in tests) for o in report.OUTCOMES},
            "latencies": {}, "tests": tests, "lab": lab, "html": "r/report.html",
            "latest": "latest/report.html", "boot_seconds_median": 4.0}


LAB = {"folder": "/c/lab/bca0c5cede676532", "build_seconds": 14.1, "built_now": True,
       "kernel": "6.1.0-56-amd64", "ready_seconds": 5.85,
       "l1_qemu": "10.0.2 (bookworm-backports, unpacked in /c/lab-qemu/aee89aa02fde1b93)"}
TESTS = [result("test_nic.py::test_nic[q35-acpi-nic]", passthrough="vfio-pci host=0000:00:03.0"),
         result("test_usb.py::test_usb_device[q35-xhci-stick-vidpid]",
                passthrough="usb-host vendorid=0x46f4,productid=0x0001"),
         result("test_passthrough_failures.py::test_missing_device",
                passthrough="vfio-pci (failure path)"),
         result("test_cpu.py::test_cpu_hotplug[q35]", scenario="cpu")]


def test_passthrough_counts():
    """A failure-path test (test_missing_device) passes no host device through: it is counted
    apart, never as vfio-pci (issue 31, third review, item 1)."""
    assert records.passthrough_counts(TESTS) == {"vfio-pci": 1, "usb-host": 1}
    assert records.failure_path_count(TESTS) == 1
    assert records.passthrough_counts([result("a"), result("b")]) == {}


def test_skipped_tests_never_count_as_passthrough():
    """Issue 31, item 15: a vfio run whose tests all skipped counted them as passthrough, and
    its "nothing tested" check let it exit 0."""
    skipped = [dict(t, outcome="skipped") for t in TESTS] + [
        result("test_sata.py::test_sata[q35]", outcome="error", passthrough="vfio-pci host=x")]
    assert records.passthrough_counts(skipped) == {}
    assert records.passthrough_counts(skipped + [TESTS[0]]) == {"vfio-pci": 1}


def test_summary_lines_say_how_many_tests_went_through_real_passthrough():
    lines = report.summary_lines(summary(TESTS, LAB))
    assert lines[0] == "backend lab, accel kvm, QEMU 7.2.22: 4 passed"
    assert lines[1] == "through real passthrough: 2 of 4 tests (usb-host 1, vfio-pci 1)"
    assert lines[2] == ("failure paths of real passthrough: 1 tests "
                        "(no host device passed through, not counted above)")
    assert lines[3] == ("lab host: kernel 6.1.0-56-amd64, ready 5.85 s after boot; image "
                        "bca0c5cede676532 built in 14.1 s; run by QEMU 10.0.2 (bookworm-backports, "
                        "unpacked in /c/lab-qemu/aee89aa02fde1b93)")


def test_summary_lines_of_an_emulated_run_have_no_passthrough_line():
    tests = [result("a", backend="emulated"), result("b", backend="emulated")]
    lines = report.summary_lines(summary(tests, backend="emulated"))
    assert not any("passthrough" in l or "lab host" in l for l in lines), lines


def test_html_gives_each_test_its_backend_and_device_path():
    page = report.render_html(summary(TESTS, LAB))
    assert ("<td><code>test_nic.py::test_nic[q35-acpi-nic]</code></td><td>lab</td>"
            "<td>vfio-pci host=0000:00:03.0</td><td>passed</td>") in page
    assert "<td><code>test_cpu.py::test_cpu_hotplug[q35]</code></td><td>lab</td><td>emulated</td>" in page
    assert "through real passthrough: <b>2</b> of 4 tests (usb-host 1, vfio-pci 1)" in page
    assert "failure paths of real passthrough: <b>1</b> tests" in page
    assert "lab host: kernel <b>6.1.0-56-amd64</b>, ready 5.85 s after boot" in page


def test_a_reused_guest_boot_counts_once():
    g1 = {"name": "main-g1-q35-acpi", "boot_seconds": 9.9, "after_test": "kept for reuse (state equals the clean baseline)"}
    g2 = {"name": "main-g2-pc", "boot_seconds": 24.8, "after_test": "closed (state differs from the clean baseline)"}
    tests = [{**result("a"), "guests": [g1]}, {**result("b"), "guests": [g1]},
             {**result("c"), "guests": [g1]}, {**result("d"), "guests": [g2]}]
    assert records.guest_boots(tests) == {"main-g1-q35-acpi": 9.9, "main-g2-pc": 24.8}


def test_wall_time_is_in_the_first_line_and_the_page():
    s = summary([result("a", backend="emulated")], backend="emulated")
    s["wall_seconds"] = 185.4
    assert report.summary_lines(s)[0] == "backend emulated, accel kvm, QEMU 7.2.22: 1 passed in 185.4 s"
    assert "finished 2026-11-25T10:00:00+0000 after 185.4 s<br>" in report.render_html(s)


def test_latencies_pool_per_scenario_and_per_kind_of_lifecycle_test():
    """A scenario of one kind of test pools its latencies over its tests (device ids folded
    out); a scenario of several kinds (``lifecycle``: its record's ``cell``) pools per kind, so
    a storm's 30 NICs do not make an unplug-at-once's p95. Records from before ``cell``
    pool per scenario."""
    def lat(scenario, cell, **latencies):
        return {**result("t", scenario=scenario), "cell": cell, "latencies": latencies}

    stats = records.latency_stats(
        [lat("nic", "", **{"nic0.guest_visible": 0.1}), lat("nic", "", **{"nic0.guest_visible": 0.3}),
         lat("lifecycle", "unplug_at_once", **{"nic0.guest_visible": 0.2}),
         lat("lifecycle", "storm_fills_every_slot",
             **{f"storm{i}.guest_visible": 40.0 for i in range(30)}),
         {**result("t", scenario="lifecycle"), "latencies": {"nic0.guest_visible": 0.5}}])
    assert stats["nic.guest_visible"] == {"n": 2, "median": 0.2, "p95": 0.3, "max": 0.3}
    assert stats["lifecycle.unplug_at_once.guest_visible"]["max"] == 0.2
    assert stats["lifecycle.storm_fills_every_slot.guest_visible"]["n"] == 30
    assert stats["lifecycle.guest_visible"]["n"] == 1
    results = [lat("lifecycle", "unplug_at_once", **{"nic0.guest_visible": 0.2}),
              lat("lifecycle", "storm_fills_every_slot", **{"storm0.guest_visible": 40.0})]
    pictures = reporthtml.latency_pictures(results)
    assert pictures.count("<figure>") == 2
    assert "lifecycle.storm_fills_every_slot: each test" in pictures
