import os

import pytest


@pytest.fixture(scope="session")
def child_env() -> dict:
    """The environment for a child pytest run: without what this run's plugin and xdist put
    there for their own processes, so the child is a run of its own."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}
