"""Issue 31, the fixes of read 34b's findings, beyond the reviewer's tests
(test_host_idle_review34b.py): the edges of each rule.

1. under the claim, the open files are read before and after the network's read again, once
   each (no loop);
2. the nodes read again are the proof's: a device's PPS sources and NVMe multipath generic
   heads are among ``nodes_below``'s;
3. an ``@`` word is refused wherever it stands; a direct root ``pytest @FILE`` of another
   user's file stops before collecting, one of root's runs;
4. every word pytest may take as a path (an option's value, a node id's path part, one that
   does not exist yet) is held to its owner by ``check-pytest-args``; the harness's own
   options and selections pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core.errors import ConfigError
from harness.core.paths import check_pytest_options, code_loading_options, path_words
from harness.host import binding
from harness.host.safety import nodes_below
from harness.host.sysfs import Sysfs

from . import fakesysfs
from .test_host_idle_review import NVME, nvme_multipath
from .test_host_idle_review31b import PORT0, _phc_with_pps
from .test_paths import as_nobody, as_root, shared_tmp  # noqa: F401 (a fixture)

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
CHECKOUT = Path(__file__).resolve().parents[2]


# -- 1 ---------------------------------------------------------------------------------------


def test_1_the_open_files_are_read_on_both_sides_of_the_network_once(lab, monkeypatch):
    reads: list[str] = []
    monkeypatch.setattr(binding, "_held_since",
                        lambda fs, below, before, view=None, held_groups=frozenset():
                        reads.append("open files"))
    monkeypatch.setattr(binding, "_network_since",
                        lambda fs, below, before, nic_ports=None: reads.append("network"))
    fs = Sysfs(lab.root)
    with binding.disks_claimed(fs, [], below=[("refusing", str(fs.pci_device(PORT0).path))]):
        pass
    assert reads == ["open files", "network", "open files"]


# -- 2 ---------------------------------------------------------------------------------------


def test_2_a_clocks_pps_source_is_among_the_nodes_read_again(lab):
    _phc_with_pps(lab)
    fs = Sysfs(lab.root)
    names = [node.name for node, _ in nodes_below(fs, str(fs.pci_device(PORT0).path))]
    assert "ptp0" in names and "pps0" in names, names


def test_2_an_nvme_multipath_generic_head_is_among_the_nodes_read_again(lab):
    nvme_multipath(lab)
    fs = Sysfs(lab.root)
    names = [node.name for node, _ in nodes_below(fs, str(fs.pci_device(NVME).path))]
    assert "nvme0" in names and "ng0n1" in names, names


# -- 3 ---------------------------------------------------------------------------------------


def test_3_an_at_word_counts_wherever_it_stands():
    for words in (["@x"], ["-k", "@x"], ["--qemu-binary", "@x"], ["--", "@x"]):
        assert code_loading_options(words) == ["@x"], words
    with pytest.raises(ConfigError, match="put the test selection in HH_PYTEST_ARGS itself"):
        check_pytest_options("-k nic @nightly.args", "HH_PYTEST_ARGS")


def _collect(*args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    return subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider",
                           *args], cwd=CHECKOUT, env=env, capture_output=True, text=True,
                          timeout=120)


@as_root
def test_3_a_direct_root_pytest_at_file_of_another_users_is_refused(shared_tmp):
    theirs = shared_tmp / "theirs"
    as_nobody(f"mkdir {theirs}; echo tests/unit/test_keywords.py > {theirs}/args")
    r = _collect(f"@{theirs}/args")
    assert r.returncode == 4 and f"the args file @{theirs}/args" in r.stderr, (
        r.stdout + r.stderr)
    assert "what to do:" in r.stderr


@as_root
def test_3_control_a_direct_root_pytest_at_file_of_roots_runs(tmp_path):
    (tmp_path / "args").write_text("tests/unit/test_keywords.py\n")
    r = _collect(f"@{tmp_path}/args")
    assert r.returncode == 0 and "test_keywords.py::" in r.stdout, r.stdout + r.stderr


# -- 4 ---------------------------------------------------------------------------------------


def test_4_the_words_pytest_may_take_as_paths():
    assert path_words(["-k", "nic", "--keep-runs=60", "--qemu-binary", "/opt/q",
                       "tests/t.py::test_a[x::y]", "-x", "--", "-odd"]) == [
        "nic", "60", "/opt/q", "tests/t.py", "-odd"]  # (a value joined with =: review 35b)


@as_root
def test_4_an_options_value_in_another_users_folder_is_refused(shared_tmp):
    """pytest does not know the harness's options when it chooses its ini file: the value is
    one of its paths then, and an ini beside it is read."""
    theirs = shared_tmp / "theirs"
    as_nobody(f"mkdir {theirs}; touch {theirs}/qemu")
    with pytest.raises(ConfigError, match=f"holds {theirs}/qemu, which pytest takes as a path"):
        check_pytest_options(f"--qemu-binary {theirs}/qemu", "HH_PYTEST_ARGS")


@as_root
def test_4_a_path_not_made_yet_where_others_could_make_it_is_refused(shared_tmp):
    """Made after the check, it would be theirs when pytest runs."""
    with pytest.raises(ConfigError, match="does not exist and the folder .*, where it would be made, is writable"):
        check_pytest_options(f"{shared_tmp}/later/test_x.py", "HH_PYTEST_ARGS")


@as_root
def test_4_control_the_harness_options_and_selections_pass(monkeypatch):
    monkeypatch.chdir(CHECKOUT)
    check_pytest_options("--keep-runs 60 -k 'a b' -m 'not slow' -x -ra -n 4 "
                         "--qemu-binary /usr/bin/env tests/unit/test_keywords.py::test_a",
                         "HH_PYTEST_ARGS")


@as_root
@pytest.mark.parametrize("ini", ["pytest.ini", None], ids=["with-its-ini", "no-ini"])
def test_4_a_checkout_below_a_sticky_folder_is_checked_up_to_its_ini(shared_tmp, monkeypatch,
                                                                     ini):
    """CI clones into /tmp: pytest, given a path of the checkout, takes the checkout's
    pytest.ini and looks no higher, for its ini or a conftest.py; with no ini in it, it looks
    in every folder above, the sticky one included, where anyone may make either."""
    checkout = shared_tmp / "clone"
    (checkout / "tests").mkdir(mode=0o755, parents=True)
    checkout.chmod(0o755)
    (checkout / "tests" / "test_t.py").write_text("def test_t():\n    pass\n")
    if ini:
        (checkout / ini).write_text("[pytest]\n")
    monkeypatch.chdir(checkout)
    if ini:
        check_pytest_options("-k t tests/test_t.py", "HH_PYTEST_ARGS")
    else:
        with pytest.raises(ConfigError, match=f"the folder {shared_tmp} .*sticky"):
            check_pytest_options("-k t tests/test_t.py", "HH_PYTEST_ARGS")
