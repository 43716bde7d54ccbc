"""Issue 31, fourth adversarial read: seven holes in the host code, each closed fail-closed,
each test failing on the code before its fix. Fake sysfs and fake `ip -j` output
(tests/unit/fakesysfs.py), real files, real threads, and a second user (nobody)."""

import json
import os
import shutil

import pytest

from harness.core.errors import HostDeviceError
from harness.host.binding import VfioBinder
from harness.host.network import namespace_problem

from . import fakesysfs
from . import test_host_idle_review3 as review3
from .fakesysfs import FakeHost

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
PORT0 = "0000:05:00.0"
PF = review3.PF


@pytest.fixture
def journal(fake_root):
    return fake_root / "var/lib/hotplug-harness/vfio-journal.json"


def entries(journal) -> list[dict]:
    return json.loads(journal.read_text())["entries"] if journal.exists() else []


# -- 2. a container that shares the host's network but not its processes ------------------------


def pid_one_in(host: FakeHost, **links: str) -> None:
    """PID 1 (and this process) in these namespaces instead of the host's: a container's init."""
    host.host_namespaces()
    for who in ("1", "self"):
        for kind, target in links.items():
            (host.root / "proc" / who / "ns" / kind).unlink()
            os.symlink(target, host.root / "proc" / who / "ns" / kind)


def test_2_a_container_sharing_only_the_hosts_network_is_refused(lab, journal):
    """A hostNetwork pod (or LXC, nspawn) with its own PID and mount namespaces, a cgroup
    namespace (/proc/self/cgroup reads 0::/) and no /.dockerenv passed: the host's processes
    were invisible, so a QEMU holding /dev/vfio/N or a live run's pid looked gone."""
    pid_one_in(lab, pid="pid:[4026532710]", mnt="mnt:[4026532709]")
    lab.proc("self/cgroup", "0::/\n")
    assert namespace_problem(lab.sysfs()) == (
        "PID 1 is in PID namespace pid:[4026532710], not the host's initial one "
        "(pid:[4026531836]): this runs in a container, whose processes are not all the host's "
        "(a QEMU holding a device, a live run, would be invisible)")
    with pytest.raises(HostDeviceError, match="refusing to take 0000:05:00.0: PID 1 is in PID "
                                              "namespace pid:"):
        VfioBinder(lab.sysfs(), journal=journal).bind(PORT0, {PORT0})
    assert lab.writes == [] and entries(journal) == []


def test_2_a_pid_or_mount_namespace_of_its_own_or_one_unread_is_refused(lab):
    """The proof is positive: this process's PID and mount namespaces are PID 1's, and what
    cannot be read proves nothing."""
    lab.host_namespaces(mnt="mnt:[4026532800]")
    assert namespace_problem(lab.sysfs()).startswith(
        "this process is in mnt namespace mnt:[4026532800], not PID 1's (mnt:[4026531841])")
    lab.host_namespaces(pid="pid:[4026532801]")
    assert namespace_problem(lab.sysfs()).startswith(
        "this process is in pid namespace pid:[4026532801], not PID 1's (pid:[4026531836])")
    lab.host_namespaces()
    assert namespace_problem(lab.sysfs()) is None
    (lab.root / "proc/1/ns/pid").unlink()
    assert namespace_problem(lab.sysfs()) == (
        "it cannot be proven that this process is in the host's namespaces: /proc/1/ns/pid "
        "(No such file or directory) cannot be read, so the processes, interfaces and open "
        "files it sees may not be the host's")


# -- 1. the run's end does not reset a PF that came to carry host traffic ------------------------


sriov_host = review3.sriov_host  # (a fixture: the lab host with an idle 82576 PF at PF)


def carries_host_traffic(host: FakeHost, ifname: str, route: str) -> None:
    """`ip link set IFNAME up; ip route add ROUTE dev IFNAME`, as `ip -j` then shows it."""
    links = host.root / "ip/link.json"
    links.write_text(json.dumps([dict(li, flags=li["flags"] + ["UP", "LOWER_UP"],
                                      operstate="UP") if li["ifname"] == ifname else li
                                 for li in json.loads(links.read_text())]))
    routes = host.root / "ip/route.json"
    routes.write_text(json.dumps(json.loads(routes.read_text()) + [{"dst": route,
                                                                     "dev": ifname}]))


def numvfs(host: FakeHost) -> int:
    return int((host.dev_dir(PF) / "sriov_numvfs").read_text())


def test_1_the_runs_end_leaves_the_count_of_a_pf_that_came_into_use(sriov_host, journal):
    """The PF stays on igb through the run; hours later it carries a route. The end of the run
    checked only the VFs and wrote sriov_numvfs=0 on it (which resets the PF). Now: no write,
    "failed" with the PF's uses, and the entry kept for a later restore."""
    from harness.host.binding import restore_from_journal

    host = sriov_host
    binder = VfioBinder(host.sysfs(), journal=journal)
    binder.enable_vfs(PF, 2)
    carries_host_traffic(host, "enp8s0", "10.8.0.0/16")
    host.writes.clear()
    with pytest.raises(HostDeviceError) as e:
        binder.close()
    assert e.value.message == (
        f"{PF}: {PF} itself is not proven idle (enp8s0 carries the route 10.8.0.0/16 (table "
        "main); enp8s0 is up (with no address)); sriov_numvfs stays 2: free it (down, no "
        "address, route or socket), then restore again")
    assert host.writes == [] and numvfs(host) == 2
    assert [(x["kind"], x["bdf"]) for x in entries(journal)] == [("sriov", PF)]
    with pytest.raises(HostDeviceError, match="could not be given back"):
        restore_from_journal(host.sysfs(), journal, include_live=True)  # still in use: kept
    assert host.writes == [] and len(entries(journal)) == 1
    (host.root / "ip/route.json").write_text(json.dumps(
        [r for r in json.loads((host.root / "ip/route.json").read_text())
         if r.get("dev") != "enp8s0"]))
    link_down(host, "enp8s0")
    [result] = restore_from_journal(host.sysfs(), journal, include_live=True)
    assert result.status == "restored" and numvfs(host) == 0 and entries(journal) == []


def link_down(host: FakeHost, ifname: str) -> None:
    links = host.root / "ip/link.json"
    links.write_text(json.dumps([dict(li, flags=["BROADCAST", "MULTICAST"], operstate="DOWN")
                                 if li["ifname"] == ifname else li
                                 for li in json.loads(links.read_text())]))


# -- 3. a USB4 NHI is no USB host controller; no evidence proves nothing ------------------------

NHI = "0000:00:0d.2"


def test_3_a_usb4_nhi_has_no_role_and_is_refused(lab):
    """A USB4/Thunderbolt NHI (class 0x0c0340, driver thunderbolt) was a "usb-controller":
    nothing below it is a USB device, so no rule read anything, and it was called idle (while
    a dock's tunnelled PCIe NIC or display hangs off it)."""
    from harness.host.inventory import InventoryError, parse_inventory
    from harness.host.safety import HostUsage, plan_group, role_of

    d = lab.add_pci(NHI, "8086:9a1b", 0x0c0340, "thunderbolt", 30)
    for rel in ("domain0/0-0", "domain0/0-0/0-1"):  # the domain and a dock's router below it
        (d / rel).mkdir(parents=True)
        (d / rel / "uevent").write_text("DEVTYPE=thunderbolt_device\n")
    assert role_of(lab.sysfs().pci_device(NHI)) is None
    verdict = HostUsage.read(lab.sysfs()).verdict(NHI)
    assert not verdict.idle and verdict.uses == (
        f"{NHI} is a USB controller (usb4): the harness has no role for that class, so no rule "
        "that could prove it idle",)
    plan = plan_group(lab.sysfs(), NHI, HostUsage.read(lab.sysfs()), allowed={NHI})
    assert not plan.safe
    with pytest.raises(InventoryError, match=r"0000:00:0d.2 \[8086:9a1b\] is of class USB "
                                             r"controller \(usb4\); role 'usb-controller' needs "
                                             r"a USB host controller \(UHCI, OHCI, EHCI or xHCI\)"):
        parse_inventory(f'[[device]]\nrole = "usb-controller"\nbdf = "{NHI}"\n', root=lab.sysfs())


def test_3_a_verdict_with_no_evidence_at_all_is_unproven(lab):
    """A function with a role, on its host driver, below which nothing was read (an xHCI whose
    root hubs sysfs does not show): no use found is not proof of idleness."""
    from harness.host.safety import HostUsage, Verdict

    lab.add_pci("0000:00:0d.0", "8086:9a13", 0x0c0330, "xhci_hcd", 31)
    verdict = HostUsage.read(lab.sysfs()).verdict("0000:00:0d.0")
    assert not verdict.idle and verdict.evidence == () and verdict.uses == (
        "0000:00:0d.0: nothing was read that shows it idle (no interface, disk or device node "
        "below it, no driver state that proves it)",)
    assert not Verdict("0000:00:0d.0", (), ()).idle
    # an AHCI controller with no drive on its ports says so: that is what was read
    lab.add_pci("0000:00:0e.0", "1b21:0612", 0x010601, "ahci", 32)
    empty = HostUsage.read(lab.sysfs()).verdict("0000:00:0e.0")
    assert empty.idle and empty.evidence == ("0000:00:0e.0: no disk below it (no drive on its "
                                             "ports)",)


# -- 4. a thread's own file table ----------------------------------------------------------------

CLONE_FILES = 0x400


def test_4_a_file_only_a_thread_with_its_own_fd_table_holds_is_seen(tmp_path):
    """A thread that did unshare(CLONE_FILES) holds files only /proc/PID/task/TID/fd lists:
    OpenFiles read /proc/PID/fd alone, so a disk (or /dev/vfio/N) open there looked unused."""
    import ctypes
    import threading

    from harness.host.storage import OpenFiles
    from harness.host.sysfs import Sysfs

    libc = ctypes.CDLL(None, use_errno=True)
    held = tmp_path / "held-by-a-thread"
    held.write_text("")
    opened, done, failed = threading.Event(), threading.Event(), []

    def thread() -> None:
        if libc.unshare(CLONE_FILES) != 0:
            failed.append(os.strerror(ctypes.get_errno()))
            opened.set()
            return
        fd = os.open(held, os.O_RDONLY)  # in this thread's own table only
        opened.set()
        done.wait(30)
        os.close(fd)

    t = threading.Thread(target=thread)
    t.start()
    try:
        assert opened.wait(30) and not failed, failed
        main_table = {os.readlink(f"/proc/self/fd/{n}") for n in os.listdir("/proc/self/fd")
                      if os.path.islink(f"/proc/self/fd/{n}")}
        assert str(held) not in main_table  # the main thread's table does not show it
        problems: list[str] = []
        files = OpenFiles(Sysfs("/"), problems)
        assert os.getpid() in {pid for pid, _ in files.paths.get(str(held), ())}, problems
    finally:
        done.set()
        t.join(30)


def test_4_a_threads_fds_that_cannot_be_read_leave_every_device_unproven(lab):
    """As an unreadable /proc/PID/fd does: files held there may be the device's."""
    from harness.host.storage import OpenFiles

    lab.proc("77/comm", "qemu-system-x86\n")
    lab.file("proc/77/task/77/fd/0")  # the main thread: /proc/77/fd
    lab.file("proc/77/task/78/fd", "not a folder")
    problems: list[str] = []
    OpenFiles(lab.sysfs(), problems)
    assert problems == ["the open files of pid 77's thread 78 cannot be read (Not a directory): "
                        "run as root"]
    shutil.rmtree(lab.root / "proc/77/task")
    lab.file("proc/77/task", "not a folder")
    problems = []
    OpenFiles(lab.sysfs(), problems)
    assert problems == ["the threads of pid 77 cannot be read (Not a directory): files only one "
                        "of them holds would be missed; run as root"]


# -- 5. the PF of a live run's VFs --------------------------------------------------------------

OTHER_RUN = 4321


def test_5_the_pf_of_a_live_runs_vfs_is_not_taken(sriov_host, journal):
    """Run A made VFs of the PF and relies on them (journaled, alive); `harness bind` (or
    another run) took the PF: _refuse_foreign skipped SR-IOV entries, and unbinding igb
    removes A's VFs."""
    from harness.host.binding import Journal

    host = sriov_host
    VfioBinder(host.sysfs(), journal=journal).enable_vfs(PF, 2)  # run A ...
    host.proc(f"{OTHER_RUN}/stat", f"{OTHER_RUN} (pytest) S 1 " + "0 " * 40 + "\n")
    with Journal(journal).locked():  # ... is pid 4321, alive
        Journal(journal).write([dict(e, pid=OTHER_RUN, pid_start=None)
                                for e in Journal(journal).read()])
    host.writes.clear()
    with pytest.raises(HostDeviceError) as e:
        VfioBinder(host.sysfs(), journal=journal, manual=True).bind(PF, {PF})
    assert e.value.message.startswith(f"{PF} (group 17) is the PF whose VFs pid 4321 (a live "
                                      "run) relies on since ")
    assert e.value.message.endswith(": unbinding its driver would remove them")
    assert host.writes == [] and host.driver_of(PF) == "igb" and numvfs(host) == 2
    assert [x["kind"] for x in entries(journal)] == ["sriov"]
    (host.root / f"proc/{OTHER_RUN}/stat").unlink()  # A died: its count is restore's to put back
    with pytest.raises(HostDeviceError, match=f"{PF} \\(group 17\\) is the PF whose sriov_numvfs "
                                              "a run that died \\(pid 4321\\) changed") as e:
        VfioBinder(host.sysfs(), journal=journal, manual=True).bind(PF, {PF})
    assert "python -m harness restore" in e.value.hint and host.writes == []


# -- 7. one BDF pattern: what is journaled can be read back -------------------------------------

VMD_DISK = "10000:01:00.0"


def test_7_a_device_in_a_five_digit_vmd_domain_is_journaled_and_given_back(lab, journal):
    """parse_bdf takes 4 to 8 domain digits (Linux prints %04x: a VMD domain is 10000), the
    journal check only 4: bind wrote an entry the journal then refused to read, and neither
    release nor restore could give the device back."""
    from harness.host.binding import Journal, restore_from_journal

    lab.add_pci(VMD_DISK, "1b21:0612", 0x010601, "ahci", 40)
    lease = VfioBinder(lab.sysfs(), journal=journal).bind(VMD_DISK, {VMD_DISK})
    assert lab.driver_of(VMD_DISK) == "vfio-pci"
    assert [e["bdf"] for e in Journal(journal).read()] == [VMD_DISK]
    [result] = lease.release()
    assert result.status == "restored" and lab.driver_of(VMD_DISK) == "ahci"
    assert entries(journal) == [] and restore_from_journal(lab.sysfs(), journal) == []


def test_7_the_journal_never_holds_what_it_cannot_read_back(journal):
    """Entries are checked before they are written, as they are when read."""
    from harness.host.binding import Journal

    jr = Journal(journal)
    with jr.locked():
        jr.write([{"bdf": "0000:05:00.0", "pid": 1, "driver": "ixgbe"}])
        with pytest.raises(HostDeviceError) as e:
            jr.write([{"bdf": "0000:05:00.0/../../..", "pid": 1, "driver": "ixgbe"}])
    assert e.value.message == (f"refusing to write the vfio journal {journal}: entry 1: bdf "
                               "'0000:05:00.0/../../..' is not a PCI address like 0000:05:00.0")
    assert [x["bdf"] for x in jr.read()] == ["0000:05:00.0"]


# -- 6. the inventory: resolved once, judged by what is read, its links' folders too -------------

NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act for a second user (nobody): "
                                               "run as root, as CI does")
def test_6_an_inventory_link_in_a_folder_others_can_write_is_refused(tmp_path, monkeypatch):
    """The inventory was judged where its link led, then read through the link again: a link
    in a group-writable folder can be swapped between the check and the read (to a file the
    group wrote), so such a link is refused, as root, whatever it leads to."""
    from harness.core.paths import UnsafePathError
    from harness.host.inventory import load_inventory

    monkeypatch.delenv("SUDO_UID", raising=False)
    etc = tmp_path / "etc"
    etc.mkdir()
    real = etc / "inventory.toml"
    real.write_text('[[device]]\nrole = "nic"\nbdf = "0000:05:00.0"\ngateway = "10.0.5.1"\n')
    real.chmod(0o644)
    team = tmp_path / "team"
    team.mkdir()
    os.chown(team, 0, NOBODY)
    team.chmod(0o775)
    link = team / "inventory.toml"
    link.symlink_to(real)
    with pytest.raises(UnsafePathError) as e:
        load_inventory(link, check_host=False)
    assert e.value.message == (f"refusing the inventory {link}: the folder {team} above {link} "
                               "is writable by its group, so another user could replace what "
                               "the harness keeps there")
    assert [d.bdf for d in load_inventory(real, check_host=False).devices] == ["0000:05:00.0"]
    team.chmod(0o755)  # a folder only root can write: the link is as safe as its target
    assert [d.bdf for d in load_inventory(link, check_host=False).devices] == ["0000:05:00.0"]


def test_6_the_inventory_is_read_from_the_fd_that_was_judged(tmp_path, monkeypatch):
    """Resolve once, open with O_NOFOLLOW, fstat the fd, read the fd: a path swapped for a
    link after it was resolved is refused, never read through."""
    from harness.core import paths

    real = tmp_path / "inventory.toml"
    real.write_text("x = 1\n")
    real.chmod(0o644)
    planted = tmp_path / "planted.toml"
    planted.write_text("swapped\n")
    follow = paths._follow_trusted_links

    def swap_after_resolving(path, uids):  # what a race would do, made certain
        resolved = follow(path, uids)
        real.unlink()
        real.symlink_to(planted)
        return resolved
    monkeypatch.setattr(paths, "_follow_trusted_links", swap_after_resolving)
    with pytest.raises(paths.UnsafePathError, match="became a symlink while it was checked"):
        paths.read_trusted_file(real)
