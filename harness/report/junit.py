"""The run's JUnit XML (pytest writes it): the run's identity added to it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from xml.etree import ElementTree as ET

from harness.report import summary
from harness.core.paths import UnsafePathError, check_private

FILE = "junit.xml"


def add_junit_identity(run_dir: Path, report_root: Path) -> None:
    """Put the run's identity into its junit.xml as test-suite properties (pytest has written
    the file by now), and refresh latest/'s copy."""
    junit, summary_file = run_dir / FILE, run_dir / "summary.json"
    if not (junit.exists() and summary_file.exists()):
        return
    tree = ET.parse(junit)
    props = summary.identity_properties(json.loads(summary_file.read_text()))
    for suite in tree.getroot().iter("testsuite"):
        el = suite.find("properties")
        if el is None:
            el = ET.Element("properties")
            suite.insert(0, el)
        for k, v in props.items():
            ET.SubElement(el, "property", name=f"hotplug.{k}", value=v)
    tree.write(junit, encoding="utf-8", xml_declaration=True)
    latest = report_root / "latest"
    # (only a `latest` of our own, which nobody else can write into: in a shared report folder
    # another user's may hold a link named junit.xml that root would write through)
    if _ours(latest) and (latest / "summary.json").exists() and \
            json.loads((latest / "summary.json").read_text()).get("run") == run_dir.name:
        shutil.copy2(junit, latest / "junit.xml")


def _ours(folder: Path) -> bool:
    """A real folder (not a link) of this process's user that nobody else can write."""
    try:
        check_private(folder)
    except (UnsafePathError, FileNotFoundError):
        return False
    return True
