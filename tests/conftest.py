import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def child_env() -> dict:
    """The environment for a child pytest run: without what this run's plugin and xdist put
    there for their own processes, so the child is a run of its own."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}


@pytest.fixture
def probe_options(tmp_path) -> list:
    """The options of a child pytest run of a test file written in ``tmp_path`` (outside the
    checkout, so nothing is left there): the checkout's ini file and rootdir, and
    ``--confcutdir`` at ``tmp_path``. Without it pytest would import a ``conftest.py`` from
    every folder above the file, ``/tmp`` among them, which anyone may write: root's run
    refuses that (``harness.plugin.early``), and would be right to. (A checkout under
    ``/tmp`` hides it: ``/tmp`` is then above the ini file's folder.)"""
    repo = Path(__file__).resolve().parents[1]
    return ["-c", str(repo / "pytest.ini"), "--rootdir", str(repo), "--confcutdir", str(tmp_path)]
