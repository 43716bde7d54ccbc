"""Issue 31, thirteenth adversarial read. What it found, one section below each:

1. a ``PATH`` or ``PYTHONPATH`` entry that did not exist was accepted when the folders above
   it passed check_ancestors, which lets a sticky folder through: with ``/tmp/tools/bin`` on
   root's PATH (a stale entry, a tool folder not made yet), another user made it, put an
   ``ip`` there, and root's next ``python -m harness ...`` ran theirs (.ci/check-root-tree,
   which judges the nearest existing folder's mode, refused it; the Python check did not).
   So did a QEMU path that did not exist yet (``--qemu-binary /tmp/qemu/bin/...``), "checked
   so that nobody else can put a program there in between".
2. .ci/check-root-tree skipped a ``.pth`` entry of the .venv that did not exist, and every
   relative one: Python adds an entry to root's path once it exists, and joins a relative one
   to the .pth's folder (``../../../../../../tmp/x`` leaves the tree). An entry naming a
   folder in /tmp that is gone (an editable install from a build folder since cleaned, a
   tool's stale line) was made again by another user, with a module or a pytest plugin
   (an entry point in a ``.dist-info``) there, and root's ``make nightly`` imported it. The
   check now judges a missing entry by the folder it would be made in, as for PATH, and
   follows relative entries like absolute ones.
3. a network namespace held only by an nsfs bind mount in another mount namespace (or by a
   process's fd) was entered with ``nsenter --net=/proc/PID/root/<mount point>``: nsenter,
   as root, opened that path, which lies in the other user's own mount namespace (an
   unprivileged user namespace gives them one). They mounted something else over the nsfs
   mount (or a tmpfs with a link over its folder), and root opened it: a FIFO of theirs, or
   the host's ``/dev/watchdog``, which arms on open and reboots the host. The namespace is
   now reached with ``O_PATH`` (which opens nothing), proven to be the one seen, and
   entered through that fd; one replaced since is unreadable, and so in use.
4. a USB device that usbip exports to another machine (``usbip bind``: its own driver is
   ``usbip-host`` in place of the generic ``usb``, its interfaces on no driver, no process
   holding its node) read idle, and so did its controller: the harness took the xHCI
   controller (or, through usb-host, the device) from under the machine that uses it over
   the network. A USB device on any driver but ``usb`` now keeps itself and its controller.

Each finding's tests fail on the code before its fix. Real files and folders, a second user
(nobody) who makes what root would run in a sticky folder and mounts over an nsfs mount in a
user namespace of their own, and a fake sysfs lab host for the USB device; no guest is
booted.
"""

import os
import signal
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.core.paths import UnsafePathError, check_search_path, trusted_program
from harness.host.network import NetView
from harness.host.safety import HostUsage
from harness.host.sysfs import Sysfs

from . import test_paths
from .test_paths import _check_tree, _checkout
from . import fakesysfs

NOBODY = test_paths.NOBODY
as_nobody = test_paths.as_nobody    # (the local attacker)
shared_tmp = test_paths.shared_tmp  # (a fixture: a sticky folder others can write, like /tmp)
fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures (a fake sysfs lab host)

as_root = test_paths.as_root


# -- 1. a search path entry (or a QEMU) that does not exist yet, in a sticky folder -------------


@as_root
def test_1_a_missing_path_entry_in_a_sticky_folder_is_refused(shared_tmp, monkeypatch):
    """PATH=/tmp/tools/bin:/usr/bin:/bin with no /tmp/tools yet: nobody makes it, with an
    `ip` of theirs in it, and root runs that `ip` for the host's evidence."""
    entry = shared_tmp / "tools" / "bin"
    monkeypatch.setenv("PATH", f"{entry}:/usr/bin:/bin")
    with pytest.raises(UnsafePathError, match=f"PATH entry {entry}: .*does not exist.*"
                                              f"{shared_tmp}.*mode 1777"):
        check_search_path()
    as_nobody(f"mkdir -p {entry}; printf '#!/bin/sh\\nid -u > {shared_tmp}/ran\\n' > "
              f"{entry}/ip; chmod 755 {entry}/ip")
    subprocess.run(["ip", "-V"], check=True, env={"PATH": f"{entry}:/usr/bin:/bin"})
    assert (shared_tmp / "ran").read_text() == "0\n"  # (what root would have run)


@as_root
def test_1_a_missing_pythonpath_entry_in_a_sticky_folder_is_refused(shared_tmp, monkeypatch):
    entry = shared_tmp / "build" / "lib"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("PYTHONPATH", str(entry))
    with pytest.raises(UnsafePathError, match=f"PYTHONPATH entry {entry}: .*does not exist"):
        check_search_path()


@as_root
def test_1_a_missing_entry_behind_roots_link_into_a_sticky_folder_is_refused(
        tmp_path, shared_tmp, monkeypatch):
    """/opt/tools/bin -> /tmp/tools/bin (root's link, its target not made yet)."""
    link = tmp_path / "opt" / "bin"
    link.parent.mkdir()
    link.symlink_to(shared_tmp / "tools")
    monkeypatch.setenv("PATH", f"{link}:/usr/bin:/bin")
    with pytest.raises(UnsafePathError, match=f"PATH entry {link}: .*{shared_tmp}"):
        check_search_path()


@as_root
def test_1_a_qemu_that_does_not_exist_yet_in_a_sticky_folder_is_refused(shared_tmp):
    qemu = shared_tmp / "qemu" / "bin" / "qemu-system-x86_64"
    with pytest.raises(UnsafePathError, match=f"{qemu} does not exist"):
        trusted_program(str(qemu))


@as_root
def test_1_missing_entries_in_roots_own_folders_still_pass(tmp_path, monkeypatch):
    """A folder of root's, 0755 or 0700, that nobody else can make anything in."""
    (tmp_path / "opt").mkdir(mode=0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'opt' / 'x' / 'bin'}:{tmp_path / 'y'}:/usr/bin:/bin")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "opt" / "lib"))
    check_search_path()
    assert trusted_program(str(tmp_path / "opt" / "qemu")) == str(tmp_path / "opt" / "qemu")


# -- 2. check-root-tree: a .pth entry that does not exist yet, or a relative one ---------------


def _site(top: Path) -> Path:
    site_dir = top / ".venv" / "lib" / "python3.11" / "site-packages"
    site_dir.mkdir(parents=True)
    return site_dir


@as_root
def test_2_a_pth_entry_that_does_not_exist_yet_in_a_sticky_folder_is_refused(
        tmp_path, shared_tmp):
    """A stale line of a .pth in root's .venv names /tmp/hh-src, gone since: nobody makes it,
    and root's Python adds it to its path (and pytest loads a plugin it finds there)."""
    top = _checkout(tmp_path / "srv" / "hotplug-harness")
    site_dir = _site(top)
    theirs = shared_tmp / "hh-src"
    (site_dir / "stale.pth").write_text(f"# a comment\n{theirs}\n")
    r = _check_tree(top, PATH="/usr/bin:/bin")
    assert r.returncode == 1 and f"{theirs} (a path entry of {site_dir / 'stale.pth'}) does " \
        f"not exist, and {shared_tmp}" in r.stderr, r.stderr
    as_nobody(f"mkdir {theirs}")  # (and what root would then have imported from it:)
    before = list(sys.path)
    try:
        site.addpackage(str(site_dir), "stale.pth", None)
        assert str(theirs) in sys.path
    finally:
        sys.path[:] = before


@as_root
def test_2_a_relative_pth_entry_that_leaves_the_tree_is_followed(tmp_path, shared_tmp):
    """``../../../..`` from site-packages: site.py joins it to the .pth's folder; the check
    looked only at entries that began with /."""
    top = _checkout(tmp_path / "srv" / "hotplug-harness")
    site_dir = _site(top)
    as_nobody(f"mkdir {shared_tmp}/lib")
    (site_dir / "rel.pth").write_text(os.path.relpath(shared_tmp / "lib", site_dir) + "\n")
    r = _check_tree(top, PATH="/usr/bin:/bin")
    assert r.returncode == 1 and f"{shared_tmp / 'lib'}" in r.stderr, r.stderr


@as_root
def test_2_roots_own_pth_entries_still_pass(tmp_path):
    """Absolute and relative entries inside the tree, one not made yet, and import lines."""
    top = _checkout(tmp_path / "srv" / "hotplug-harness")
    site_dir = _site(top)
    (site_dir / "ok.pth").write_text(f"{top / 'harness'}\nsub\n{top / 'not-yet'}\n"
                                     "import os; os.getpid()\n\n")
    (site_dir / "sub").mkdir()
    r = _check_tree(top, PATH="/usr/bin:/bin")
    assert r.returncode == 0, r.stderr


# -- 3. a namespace held by a bind mount in another user's mount namespace ----------------------


_OVER_MOUNT = """
touch "$1/ns"; mkfifo "$1/fifo"
unshare -n sh -c "mount --bind /proc/self/ns/net '$1/ns'"
mount --bind "$1/fifo" "$1/ns"
(echo x > "$1/ns" && touch "$1/root-opened-it") &
touch "$1/ready"
exec sleep 300
"""


@pytest.mark.xdist_group("real-host-namespaces")
@as_root
def test_3_roots_nsenter_never_opens_a_path_in_another_users_mount_namespace(shared_tmp):
    """nobody, in a user and mount namespace of their own, bind-mounts a new network namespace
    onto a file and mounts a FIFO of theirs over it: mountinfo still lists the nsfs mount, and
    root's `nsenter --net=/proc/PID/root/...` opened the FIFO (had it been the host's
    /dev/watchdog, it would have armed it)."""
    work = shared_tmp / "userns"
    work.mkdir()
    os.chown(work, NOBODY, NOBODY)
    (shared_tmp / "over.sh").write_text(_OVER_MOUNT)
    attacker = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "unshare",
         "-Urm", "--propagation", "private", "sh", str(shared_tmp / "over.sh"), str(work)],
        start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not (work / "ready").exists():
            assert attacker.poll() is None and time.monotonic() < deadline, \
                "no user namespace for nobody on this host"
            time.sleep(0.05)
        view = NetView.read(Sysfs("/"))
        assert not (work / "root-opened-it").exists(), "root opened nobody's FIFO"
        assert any(f"{work}/ns" in p and "not that namespace" in p for p in view.problems), \
            view.problems
    finally:
        os.killpg(attacker.pid, signal.SIGKILL)  # (the processes this test started)
        attacker.wait()


# -- 4. a USB device usbip exports to another machine ------------------------------------------


def _exported_by_usbip(h) -> None:
    """`usbip bind -b 4-1`: usbip-host takes the device itself (its interfaces leave their
    drivers), and the kernel serves it to the remote machine over TCP."""
    iface = h.add_usb("4-1", 2, "0529:0001", "HASP license key", iface_driver=None)
    (h.sys / "bus/usb/drivers/usbip-host").mkdir(parents=True, exist_ok=True)
    os.symlink(h.sys / "bus/usb/drivers/usbip-host", iface.parent / "driver")


def test_4_a_usb_device_exported_by_usbip_keeps_its_controller(lab):
    assert HostUsage.read(lab.root).verdict("0000:07:00.0").idle  # (free before)
    _exported_by_usbip(lab)
    uses = HostUsage.read(lab.root).verdict("0000:07:00.0").uses
    assert uses == ("USB device 4-1 (below 0000:07:00.0) is on usbip-host, not the generic usb "
                    "driver: usbip exports it to another machine",), uses


def test_4_a_usb_device_exported_by_usbip_is_not_handed_to_usb_host(lab):
    _exported_by_usbip(lab)
    [dev] = [u for u in Sysfs(lab.root).usb_devices() if u.name == "4-1"]
    verdict = HostUsage.read(lab.root).usb_verdict(dev)
    assert not verdict.idle and "usbip exports it" in verdict.uses[0], verdict


def test_4_usb_devices_on_the_generic_driver_still_pass(lab):
    iface = lab.add_usb("4-1", 2, "0781:5581", "Ultra", iface_driver=None)
    (lab.sys / "bus/usb/drivers/usb").mkdir(parents=True, exist_ok=True)
    os.symlink(lab.sys / "bus/usb/drivers/usb", iface.parent / "driver")
    os.symlink(lab.sys / "bus/usb/drivers/usb", iface.parent.parent / "driver")  # (usb4)
    eeprom = lab.dev_dir("0000:07:00.0") / "i2c-3" / "3-0050"  # (an i2c client, named alike)
    eeprom.mkdir(parents=True)  # (unbound: bound to at24 it would keep the controller, review 16)
    assert HostUsage.read(lab.root).verdict("0000:07:00.0").idle
