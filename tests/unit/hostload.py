"""Room for a loaded machine in the tests that read this host whole beside what a user made
to slow the read (reviews 23, 25-27): their bounds, and the product's budgets they rely on,
are the quiet machine's figures times this machine's time factor, measured at the test's
start as the harness measures it for its deadlines (``harness.core.pace``). An unbounded read
grows with what the user made, not with the load: it still ends past the scaled bound. (Fixed
bounds failed four of these tests when two unit suites ran beside `make test`, load 8 on 2
cores, Dec 6.)"""

from harness.core.pace import Pace
from harness.host import network, storage

#: The host read's time budgets, in seconds on a quiet machine.
BUDGETS = ((storage, "MOUNT_TABLES_BUDGET"), (storage, "MAPS_BUDGET"),
           (storage, "RINGS_BUDGET"), (storage, "FDS_BUDGET"),
           (storage, "DETACHED_STAT_TIMEOUT"), (network, "NAMESPACES_BUDGET"))


def factor() -> float:
    """This machine's time factor now (>= 1)."""
    return Pace.measure("host").factor


def scale_budgets(monkeypatch) -> float:
    """The host read's budgets times this machine's time factor, for one test; the factor."""
    f = factor()
    for module, name in BUDGETS:
        monkeypatch.setattr(module, name, getattr(module, name) * f)
    return f
