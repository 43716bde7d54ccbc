"""harness.core.text.shown, where text leaves the harness: a name another user chose that is
not UTF-8 (kept by ``surrogateescape`` as lone surrogates) is printed and written as ``\\xff``,
never a UnicodeEncodeError (issue 31, the eighteenth read's fifth finding; the real
macvlan is tests/unit/test_host_idle_review18.py)."""

import io
import json
import sys
import xml.etree.ElementTree as ET

from harness.cli import main
from harness.core.text import shown
from harness.host.doctor import Check, format_report

from .test_merge import rec, write_run

#: An interface named ``m`` and the byte 0xff, as ``ip`` prints it and the harness reads it.
NAME = b"m\xff".decode("utf-8", "surrogateescape")


def test_bytes_that_are_not_utf8_are_spelt_visibly():
    assert shown(f"{NAME} (netns pid 591) (macvlan)") == "m\\xff (netns pid 591) (macvlan)"
    assert shown("enp5s0 \u00e9\n\tok") == "enp5s0 \u00e9\n\tok"  # (UTF-8, newline, tab: kept)
    assert shown("a\ud800b") == "a\\ud800b"  # (a surrogate no byte stands for: JSON's)
    assert shown("eth0\x1b]0;owned\x07") == "eth0\\x1b]0;owned\\x07"  # (no terminal control)
    shown(NAME + "\ud800\x85").encode("utf-8")  # strict: nothing left that a stream refuses


def test_doctors_report_takes_such_a_name():
    text = format_report([Check("nic", False, f"{NAME} sits on a device of another namespace",
                                "free it")])
    assert "m\\xff sits on" in text
    text.encode("utf-8")


def test_the_cli_prints_what_reaches_it_unshown_to_a_strict_stream(monkeypatch):
    """The backstop: ``python -m harness`` sets its streams to ``backslashreplace``."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "argv", ["harness", "--help"])
    assert main() == 0
    print(NAME)
    out.flush()
    assert out.buffer.getvalue().endswith(b"m\\udcff\n")


def test_a_merged_report_takes_a_failure_that_names_it(tmp_path, capsys):
    """A failure's message carries the name (a bind refused over it): the run's summary.json
    keeps it (JSON's ``\\udcff``), and the merged page and JUnit file are written."""
    reason = f"HostDeviceError: {NAME} (netns pid 591) (macvlan) sits on a device of another " \
             "namespace"
    old = write_run(tmp_path / "a" / "run-1", "run-1", [rec("nic", "pc", "failed")])
    new = write_run(tmp_path / "b" / "run-2", "run-2", [rec("nic", "pc", "failed")],
                    qemu="10.0.2")
    for run in (old, new):
        summary = json.loads((run / "summary.json").read_text())
        summary["tests"][0]["reason"] = reason
        (run / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "merged"
    assert main(["merge", str(old), str(new), "--out", str(out)]) == 0
    assert "m\\xff (netns pid 591)" in (out / "report.html").read_text(encoding="utf-8")
    failures = ET.parse(out / "junit.xml").getroot().iter("failure")
    assert all("m\\xff (netns pid 591)" in f.text for f in failures)
