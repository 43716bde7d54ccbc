"""Collection: scenario tests parametrized from the backend, -k with whole-word machine names,
tests left out by role or backend, xdist groups.

A scenario test declares its role with ``@pytest.mark.scenario("nic")``; it is parametrized
over the platforms that role runs on and the devices the backend offers (the first one only
with ``one_device=True``), with ids like ``test_nic[emulated-q35-pciehp-e1000e]``.
"""

from __future__ import annotations

import pytest

from harness.core import roles
from harness.scenario import devices
from harness.plugin import keywords

#: Id parts matched as whole words by -k: "pc" must not select "pciehp" tests.
EXACT_KEYWORDS = {"pc", "q35"}


def parametrize_guests(metafunc: pytest.Metafunc, hs) -> None:
    """--guest: every test that boots a guest runs on each (its id ends with the guest's name;
    called after every other parametrization)."""
    if hs.guest_choices and "hh_guest" in metafunc.fixturenames:
        metafunc.parametrize("hh_guest", hs.guest_choices, indirect=True,
                             ids=[c.name for c in hs.guest_choices])


def parametrize_repeat(metafunc: pytest.Metafunc, count: int) -> None:
    """--repeat N: every test N times, the repetition last in its id (``-repeat3``)."""
    if count > 1:
        metafunc.fixturenames.append("hh_repetition")
        metafunc.parametrize("hh_repetition", range(1, count + 1), indirect=True,
                             ids=[f"repeat{k}" for k in range(1, count + 1)])


def parametrize(metafunc: pytest.Metafunc, hs) -> None:
    marker = metafunc.definition.get_closest_marker("scenario")
    if marker is None:
        return
    role = marker.args[0]
    platforms = [p for p in devices.PLATFORMS[role] if p.machine in hs.machines
                 and p.machine in marker.kwargs.get("machines", (p.machine,))]
    if role not in roles.DEVICE_ROLES:
        # CPU and memory are QEMU's own in every backend: the platform is the only axis.
        metafunc.parametrize("platform", platforms, ids=[p.id for p in platforms])
        return
    candidates = hs.backend.candidates(role)
    if marker.kwargs.get("one_device"):
        # (a lifecycle scenario is about the slot and the guest, not the model: one will do)
        candidates = candidates[:1]
    metafunc.parametrize(("platform", "device"), [
        pytest.param(platform, device, id=f"{hs.backend.name}-{platform.id}-{device.id}")
        for platform in platforms for device in candidates])


def select(config: pytest.Config, items: list[pytest.Item], hs) -> None:
    """Apply -k (whole words for machine names), --roles and the backend's choice; then put
    tests that share a guest shape (or a host device) in one xdist group, one after another."""
    select_keywords(config, items)
    by_role = [i for i in items if not hs.wants_role(role_of(i))]
    by_backend = [i for i in items if not hs.backend.keeps(
        i.path, i.get_closest_marker("passthrough") is not None)]
    hs.backend.left_out = len(by_backend)
    # (what a scenario plugs beyond the test's device is QEMU's own, or more of the host's
    # devices than an inventory has: the emulated backend's alone, never a skip elsewhere)
    emulated_only = [i for i in items if hs.backend.takes_host_devices
                     and i.get_closest_marker("emulated_only") is not None and i not in by_backend]
    hs.emulated_only = sorted({i.originalname for i in emulated_only})
    _deselect(config, items, by_role + by_backend + emulated_only)
    if config.pluginmanager.hasplugin("xdist"):
        for item in items:
            group = _xdist_group(item, hs.backend, by_shape=hs.option.no_snapshot)
            if group:
                item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: (getattr(param(item, "platform"), "id", ""),
                                 getattr(param(item, "hh_guest"), "name", "")))


def _xdist_group(item: pytest.Item, backend, *, by_shape: bool) -> str | None:
    """One physical resource, one worker at a time: tests that take host hardware are grouped
    by what they really take. The others go to whichever worker is free: a guest of any shape
    is restored from its saved state in about a second (harness.snapshot). With --no-snapshot
    (``by_shape``) they are grouped by guest shape, so one booted clean guest serves them all
    (a whole shape on one worker: the lifecycle tests of q35-pciehp alone made that worker
    the run's last by a minute)."""
    platform, device = param(item, "platform"), param(item, "device")
    if backend.takes_host_devices and (device is not None or item.get_closest_marker("passthrough")):
        return backend.resource_group(device)
    guest = param(item, "hh_guest")
    if platform is None or not by_shape:
        return None
    return platform.id + (f"-{guest.name}" if guest is not None else "")


def _deselect(config: pytest.Config, items: list[pytest.Item], drop: list[pytest.Item]) -> None:
    if drop:
        config.hook.pytest_deselected(items=drop)
        dropped = set(map(id, drop))
        items[:] = [i for i in items if id(i) not in dropped]


def param(item: pytest.Item, name: str):
    callspec = getattr(item, "callspec", None)
    return callspec.params.get(name) if callspec else None


def role_of(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("scenario")
    return marker.args[0] if marker else None


def select_keywords(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``-k`` with whole-word matching for machine names (harness/keywords.py): ``-k pc`` means
    the pc machine, not every ``pciehp`` test too."""
    expr_text = (config.option.keyword or "").strip()
    if not expr_text:
        return
    try:
        expr = keywords.parse(expr_text)
    except keywords.KeywordSyntaxError as e:
        raise pytest.UsageError(str(e)) from e
    if not {w.lower() for w in keywords.identifiers(expr)} & EXACT_KEYWORDS:
        return  # pytest's own -k does the rest
    drop = [item for item in items
            if not keywords.evaluate(expr, keywords.matcher(item, EXACT_KEYWORDS))]
    _deselect(config, items, drop)
    config.option.keyword = ""  # already applied; pytest's own pass would undo the exact rule


def require_loadgroup(config: pytest.Config, hs) -> None:
    """Host devices are kept to one worker at a time by xdist groups, which only
    ``--dist loadgroup`` honours: any other distribution could give one device to two workers."""
    workers = getattr(config.option, "numprocesses", None)
    dist = getattr(config.option, "dist", "no")
    if hs.backend.takes_host_devices and workers not in (None, 0) and dist != "loadgroup":
        raise pytest.UsageError(f"--backend {hs.backend.name} with -n {workers} needs --dist "
                                f"loadgroup (not {dist}): it keeps each host device to one "
                                "worker at a time")
