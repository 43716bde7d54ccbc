"""Test ids select what a person expects (docs/scenarios.md, "Test ids and -k"): run pytest's
collection on the real scenario suite and look at what each -k picks."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]



def collect(env: dict, *args: str, where: tuple[str, ...] = ("tests/scenarios",)) -> list[str]:
    p = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *where, *args],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env=env)
    assert p.returncode in (0, 5), p.stdout + p.stderr
    return [line for line in p.stdout.splitlines() if "::" in line]


@pytest.fixture(scope="module")
def everything(child_env):
    return collect(child_env)


def test_pc_selects_no_q35_and_q35_no_pc(everything, child_env):
    pc, q35 = collect(child_env, "-k", "pc"), collect(child_env, "-k", "q35")
    assert pc and q35
    assert not [t for t in pc if "q35" in t], "a q35 test among -k pc"
    assert not [t for t in q35 if "[pc" in t or "-pc-" in t], "a pc test among -k q35"
    assert any("pciehp" in t for t in q35)
    assert set(pc) | set(q35) == set(everything)


@pytest.mark.parametrize("word, module", [("nic", "test_nic.py"), ("sata", "test_sata.py"),
                                          ("cpu", "test_cpu.py"), ("memory", "test_memory.py")])
def test_scenario_words(word, module, child_env):
    picked = collect(child_env, "-k", word)
    assert picked and all(module in t for t in picked), picked


def test_usb_and_pciehp(everything, child_env):
    usb = collect(child_env, "-k", "usb")
    assert usb and all("usb" in t.lower() for t in usb)
    assert {t for t in everything if "test_usb.py" in t} <= set(usb)
    assert all("pciehp" in t for t in collect(child_env, "-k", "pciehp"))


def test_boolean_expressions_keep_exact_words(child_env):
    picked = collect(child_env, "-k", "nic and pc and not virtio and not igb")
    assert picked == ["tests/scenarios/test_nic.py::test_nic[emulated-pc-e1000e]"]
    assert collect(child_env, "-k", "igb") == [
        f"tests/scenarios/test_nic.py::test_nic[emulated-{p}-igb]"
        for p in ("pc", "q35-acpi", "q35-pciehp")]


def test_a_scenario_narrowed_to_q35_has_no_pc_ids(child_env):
    """``scenario(..., machines=("q35",))``: the failover pair needs PCI Express slots."""
    assert collect(child_env, "-k", "failover") == [
        f"tests/scenarios/test_lifecycle.py::test_failover_pair_through_migration[emulated-{p}-e1000e]"
        for p in ("q35-acpi", "q35-pciehp")]


@pytest.mark.parametrize("word", ["nic", "usb", "sata", "vfio"])
def test_k_from_the_repository_root_selects_scenarios_only(word, child_env):
    """``pytest -k nic`` as users type it, with no path: the scenarios and nothing else (not a
    unit test or self-test whose name holds the word, such as ``panic``)."""
    picked = collect(child_env, "-k", word, where=())
    assert all(t.startswith("tests/scenarios/") for t in picked), picked
    if word != "vfio":  # (the emulated backend has no vfio test to select)
        assert picked
