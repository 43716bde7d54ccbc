"""Issue 31, the fixes of read 33b's findings, beyond the reviewer's tests
(test_host_idle_review33b.py): the edges of each rule.

1. an upper device named in ``info_data`` by the port's ifindex (``if7``: `ip` prints that when
   it cannot name it) counts too; a VXLAN moved into another namespace, which names its lower
   device by an ifindex of the namespace it came from, leaves every NIC unproven;
2. two namespaces of one name that cannot be told apart (an identity unknown) leave every NIC
   unproven;
3. ``make nightly``'s check of ``HH_PYTEST_ARGS`` refuses the options pytest acts on before
   any check of the harness (``-p``, ``-p no:hotplug`` too, ``-c``, ``-o``, ``--rootdir``,
   ``--confcutdir``) and lets the harness's options and selections through; root's pytest refuses a test
   path below a sticky folder it would import a ``conftest.py`` from, and collects one in a
   folder of root's own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness.host import network
from harness.host.network import NetView
from harness.host.safety import HostUsage
from harness.host.sysfs import Sysfs
from harness.core.paths import code_loading_options

from . import fakesysfs
from .fakesysfs import link
from .test_host_idle_review33b import HOST_ADDRS, HOST_LINKS, PORT1, _port1_in_namespace
from .test_paths import as_root, shared_tmp  # noqa: F401 (a fixture)

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
CHECKOUT = Path(__file__).resolve().parents[2]


# -- 1 ---------------------------------------------------------------------------------------


def test_1_an_upper_device_that_names_the_port_by_its_ifindex_is_one(lab):
    """`ip` prints ``if7`` for an ifindex it cannot name: that is the port as well."""
    _port1_in_namespace(lab, "overlay", vxlan=False)
    lab.network("overlay", links=[
        link(1, "lo", up=True), link(7, "enp5s0f1", PORT1),
        link(9, "vx100", linkinfo={"info_kind": "vxlan", "info_data": {"id": 100,
                                                                       "link": "if7"}})])
    v = HostUsage.read(lab.root).verdict(PORT1)
    assert not v.idle and any("vx100" in u for u in v.uses), v


def test_1_a_vxlan_moved_from_another_namespace_leaves_every_nic_unproven(lab):
    """Made in another namespace and moved (``link_netnsid``), a VXLAN names its lower device
    by an ifindex of that one, which `ip` spells as a name of this one: which it sits on
    cannot be told."""
    _port1_in_namespace(lab, "overlay", vxlan=False)
    lab.network("overlay", links=[
        link(1, "lo", up=True), link(7, "enp5s0f1", PORT1),
        link(9, "vx100", link_netnsid=0, linkinfo={"info_kind": "vxlan", "info_data": {
            "id": 100, "link": "eth3"}})])
    view = NetView.read(Sysfs(lab.root))
    assert any("vx100 (netns overlay) (vxlan) sits on a device of another namespace" in p
               for p in view.problems), view.problems
    assert not HostUsage.read(lab.root).verdict(PORT1).idle


# -- 2 ---------------------------------------------------------------------------------------


def _space(name: str, ident: str | None) -> network.Namespace:
    ns = network.Namespace(name, [], [], Path("/nonexistent"))
    ns.ident = ident
    return ns


def test_2_namespaces_of_one_name_are_named_by_their_identity():
    problems: list[str] = []
    spaces = network._told_apart([_space("nsfs mount /run/netns/test", "[1]"),
                                  _space("nsfs mount /run/netns/test", "[2]"),
                                  _space("pid 7", "[3]")], problems)
    assert [ns.name for ns in spaces] == ["nsfs mount /run/netns/test, net:[1]",
                                          "nsfs mount /run/netns/test, net:[2]", "pid 7"]
    assert problems == []


def test_2_namespaces_of_one_name_that_cannot_be_told_apart_are_a_problem():
    problems: list[str] = []
    network._told_apart([_space("nsfs mount /run/netns/test", "[1]"),
                         _space("nsfs mount /run/netns/test", None)], problems)
    assert problems and "cannot be told apart" in problems[0], problems


def test_2_control_the_harness_alone_is_not_renamed(lab):
    lab.network(links=HOST_LINKS, addrs=HOST_ADDRS)
    view = NetView.read(Sysfs(lab.root))
    assert network.OWN in view.namespaces and not view.problems, view.problems


# -- 3 ---------------------------------------------------------------------------------------


def test_3_the_options_pytest_acts_on_before_the_harness_are_found():
    for words in (["-p", "evil"], ["-pevil"], ["-vp", "evil"], ["-o", "pythonpath=/tmp"],
                  ["--override-ini=addopts=-p evil"], ["-c", "/tmp/x.ini"],
                  ["--config-file=/tmp/x.ini"], ["--rootdir", "/tmp"], ["--confcutdir=/"],
                  ["-p", "no:hotplug"], ["--disable-plugin-autoload"]):  # (no checks)
        assert code_loading_options(words), words
    assert code_loading_options(["--keep-runs", "60", "-k", "nic and not slow", "-x", "-ra",
                                 "-n", "4", "--co", "--qemu-binary",
                                 "/opt/qemu/bin/qemu-system-x86_64"]) == []


def _check_args(value: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
           "HH_PYTEST_ARGS": value}
    return subprocess.run([sys.executable, "-m", "harness", "check-pytest-args"], cwd=CHECKOUT,
                          env=env, capture_output=True, text=True, timeout=120)


@as_root
def test_3_make_nightlys_check_refuses_p_in_hh_pytest_args():
    r = _check_args("--keep-runs 60 -p evil_plugin")
    assert r.returncode == 1 and "HH_PYTEST_ARGS holds -p" in r.stderr, r.stdout + r.stderr
    assert "what to do:" in r.stderr
    r = _check_args("--keep-runs 60 -k 'a b' -m 'not slow'")
    assert r.returncode == 0, r.stdout + r.stderr


def _collect(*args: str, cwd: Path = CHECKOUT) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    return subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider",
                           *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


@as_root
def test_3_a_test_path_below_a_sticky_folder_pytest_looks_in_is_refused(shared_tmp):
    """With a path of the checkout beside it, pytest's rootdir is ``/``: it imports the
    ``conftest.py`` of every folder above the other path, the sticky one (anyone may make
    ``conftest.py`` there) included."""
    mine = shared_tmp / "roots"
    mine.mkdir(mode=0o755)
    (mine / "test_r.py").write_text("def test_r():\n    pass\n")
    r = _collect(str(mine / "test_r.py"), "tests/unit/test_keywords.py")
    assert r.returncode == 4 and f"the folder {shared_tmp} (of the test path" in r.stderr, (
        r.stdout + r.stderr)
    assert "what to do:" in r.stderr


@as_root
def test_3_control_a_test_path_in_roots_own_folder_is_collected(shared_tmp):
    """Alone, and run from its folder, its folder is pytest's rootdir and confcutdir: nothing
    above it is imported. (Run from a checkout under /tmp, the rootdir would be /tmp, the two
    folders' common ancestor, and the sticky folder between would be refused, rightly.)"""
    mine = shared_tmp / "roots"
    mine.mkdir(mode=0o755)
    (mine / "test_r.py").write_text("def test_r():\n    pass\n")
    r = _collect(str(mine / "test_r.py"), cwd=mine)
    assert r.returncode == 0 and "test_r.py::test_r" in r.stdout, r.stdout + r.stderr
    assert os.stat(mine).st_uid == 0
