"""Issue 31, read 40a (storage, USB, IOMMU groups, SR-IOV, the bind's mechanics, the libvirt
hand-over), on main at a12d4d4. What it found, one section below:

1. (a, low likelihood: a tool started in a window of seconds that any user can stretch, as
   reviews 31a/1, 32a/3, 34b/1-2 and 39a/1's re-read test) the re-reads under the claim
   (:func:`harness.host.binding.disks_claimed`: ``_used_since``, ``_nodes_opened_since``,
   ``_network_since``, ``_used_since`` again) look again only at the disks and at the nodes
   *below* what moves (``safety.nodes_below``), not at the rest of what the proof judged as a
   use of the function through a node *below no device*: its driver's management node
   (``/dev/mpt3ctl``, ``/dev/megaraid_sas_ioctl_node``: :func:`safety._tool_node_uses`), a
   NIC vendor's raw-access node (``/dev/iqvlinux``, ``pgdrv``: read 39a's fix,
   :func:`safety._raw_access_uses`), an open ``/dev/mem`` or ``/dev/port``, or its own BAR and
   config files (``resource0``..., ``/proc/bus/pci``: :meth:`HostUsage._bars`), or a GPIO
   line of a chip below it held by a line request (``anon_inode:gpio-line``) or by the kernel
   (/sys/kernel/debug/gpio: :meth:`HostUsage._gpio`). So a flash
   tool started while the bind's proof under the journal lock reads the network, or while the
   re-reads under the claim read it (``ip``/``ss`` in every namespace, every process's
   sockets: budgets any user fills, reviews 31a/34b), is not seen, and the function is
   unbound and handed to vfio-pci (its reset on QEMU's open, the guest driver's reset) in the
   middle of a firmware or NVM write: read 39a's own reason for the rule ("a flash write that
   takes minutes may be going to any function"). Shapes: an admin or a vendor update bundle
   (Dell DUP, HPE SPP, Lenovo OneCLI) runs ``sas3flash -f`` or ``storcli64 /c0 download`` on
   a lab host's Broadcom SAS3008/9300-8e HBA, ``nvmupdate64e`` on its Intel X710/82599 card
   (with ``iqvlinux.ko``), or ``bootutil64e`` on a 6.8+ kernel, where it falls back to
   ``/dev/mem``. The same tool started during the *first* proof's network read is refused
   (the proof under the lock sees it: the controls), so the rule is there; only the last
   seconds before the unbind are unwatched for it. Safe: the re-reads under the claim judge,
   for each function that moves, everything the proof judged through the open files
   (``_tool_node_uses``, ``_raw_access_uses``, ``_bars``/``_devmem``), not only its disks and
   the nodes below it; docs/vfio.md's "The nodes read again are the ones the proof judged"
   then holds. The same for a GPIO line: a lab's relay on a CP2102N's GPIO (``gpioset``,
   libgpiod v2, which holds only the line request) switched while the re-read under the
   claim reads the network is not seen, and the xHCI is reset under it (the relay drops).
   And for the drivers below: a USB device put on ``usbip-host`` (``usbip bind``) then is not
   seen either (the re-reads list new disks, not what the devices below are bound to). The
   usb-host hand-over (:func:`harness.host.usbhost.handed`) runs the same re-reads, with the
   same gap (its test: the relay adapter itself handed to a guest).

The tests assert the safe behaviour and fail on a12d4d4; the controls (the same tool started
during the first proof's network read) pass. A fake sysfs/proc tree plays the host
(:mod:`.fakesysfs`'s lab host, a SAS HBA added); the tool's open is played at the end of a
network read (:func:`.test_host_idle_review31a.during_the_network_read`); no guest is booted.

Looked at, no test (each held, or is a stated limit, or an over-refusal):

* read 39a's fixes: :func:`harness.host.storage.other_paths`/``scsi_nodes`` (the twin's
  partitions and holders through ``use_of_block``'s recursion; twins below the same HBA, one
  HBA's two connectors to both expanders of a JBOD; twins that appear during the move, which
  ``_nothing_new_below`` lists; a twin's sg node held after the move, which ``_holders`` no
  longer lists since the disk is gone from the host with the function);
  ``binding.disks_claimed``'s one claim per disk; ``_raw_access_uses`` (misc device or bare
  major, by number; ``pgdrv`` registered with a class device is still found by its major in
  /proc/devices).
* ``_of_another_boot``/``_stale``/``_other_pci_device``: SR-IOV and USB entries are checked
  for another boot too; same-model card swaps within one boot need PCIe hot-plug of the slot
  (the stale entry then finds the new card on its host driver and writes nothing harmful).
* ``_libvirt_gives_back`` (libvirt's bus reset refuses active devices on the bus; vfio's own
  hot reset needs every affected group), ``handover``'s re-proof.
* USB: usb-host is always given hostbus/hostaddr of the proven device (no auto-match of a
  twin after a re-enumeration); BMC virtual hubs (their keyboard keeps the xHCI).
* ``acs_off``: Sunrise Point root ports' dword layout is read; Union Point's (8086:a290-a29f,
  a2e7-a2ee, in the kernel's ``pci_quirk_intel_spt_pch_acs_match`` beside Sunrise Point) is
  read as the standard one, its control word taken from the capability dword's upper half:
  where that is 0, every device behind a Kaby Lake (200-series) PCH root port is refused as
  "ACS off" (an over-refusal, not a finding; ``_acs_registers`` could list Union Point's ids
  with Sunrise Point's).
* SR-IOV: ``enable_vfs``' reuse, ``_restore_sriov`` under a VF another binder of the same
  process holds (one binder per process in harness/run/backends.py).
"""

from __future__ import annotations

import pytest

from . import fakesysfs
from .fakesysfs import bind_outcome
from .test_host_binding import journal
from .test_host_idle_review31a import opened_during_the_network_read

fake_root, lab = fakesysfs.fake_root, fakesysfs.lab  # fixtures
journal = journal  # (a fixture: the journal in the fake root's /var/lib)

HBA = "0000:08:00.0"  # (a Broadcom SAS3008 on mpt3sas, group 43, an idle disk sdx below it)
PORT0, PORT1 = "0000:05:00.0", "0000:05:00.1"  # (the lab's 82599, ixgbe, group 12, both down)


def _sas_hba(lab) -> None:
    """The HBA, its disk sdx (not mounted, open by no one), and mpt3sas's management node
    /dev/mpt3ctl, a misc device below no function (``sys/devices/virtual/misc``)."""
    lab.add_pci(HBA, "1000:0097", 0x010700, "mpt3sas", 43)
    lab.add_disk("sdx", lab.dev_dir(HBA) / "host9/target9:0:0/9:0:0:0", ("sdx1",))
    lab.file("sys/devices/virtual/misc/mpt3ctl/dev", "10:222\n")


def _iqvlinux(lab) -> None:
    """Intel's QV driver loaded (``iqvlinux.ko``, a bare character major, 240 here), held by
    no one yet (read 39a's shape)."""
    lab.proc("devices", "Character devices:\n  1 mem\n  4 /dev/vc/0\n  4 tty\n 10 misc\n"
                        "189 usb_device\n240 iqvlinux\n\nBlock devices:\n  8 sd\n259 blkext\n")
    (lab.sys / "module/iqvlinux").mkdir(parents=True, exist_ok=True)


#: The tool, what it holds, the function it reaches, the inventory's allow-list, the set-up.
TOOLS = {
    "sas3flash": ("/dev/mpt3ctl", HBA, {HBA}, _sas_hba),
    "nvmupdate64e": ("/dev/iqvlinux", PORT0, {PORT0, PORT1}, _iqvlinux),
    "bootutil64e": ("/dev/mem", PORT0, {PORT0, PORT1}, lambda lab: None),
}


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_1_control_a_flash_tool_started_during_the_first_proof_is_refused(
        lab, journal, monkeypatch, tool):
    """Control: the same tool started while the *first* proof reads the network (before the
    journal lock): the proof under the lock sees it, and the bind is refused, naming it."""
    node, bdf, allowed, setup = TOOLS[tool]
    setup(lab)
    driver_before = lab.driver_of(bdf)
    opened_during_the_network_read(lab, monkeypatch, 1, node, pid=5421, comm=tool, fd=3)
    refused, driver = bind_outcome(lab, journal, bdf, allowed)
    assert "5421" in refused and driver == driver_before, (refused, driver)


@pytest.mark.parametrize("on_call", [2, 3], ids=["during-the-proof-under-the-lock",
                                                 "during-the-read-under-the-claim"])
@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_1_a_flash_tool_started_during_the_last_reads_keeps_the_function(
        lab, journal, monkeypatch, tool, on_call):
    """(finding 1) Host shape: a lab host's Broadcom SAS3008 HBA (mpt3sas, 08:00.0, an idle
    disk below it) or Intel 82599 card (ixgbe, 05:00.0/.1, both ports down), listed in the
    inventory. While a run binds it, an admin (or a vendor update bundle: Dell DUP, HPE SPP,
    Lenovo OneCLI) starts ``sas3flash -f`` (``/dev/mpt3ctl``), ``nvmupdate64e`` with
    ``iqvlinux.ko`` (``/dev/iqvlinux``) or ``bootutil64e`` on a 6.8+ kernel (``/dev/mem``):
    a flash write that takes minutes, through a node below no device, whose ioctl or address
    picks the function. Started while the bind's proof under the journal lock reads the
    network (call 2) or while the re-read under the claim reads it (call 3): seconds, which
    any user stretches to the namespaces' budgets.

    Path: :meth:`VfioBinder.bind` -> ``_proven_plan`` (its :class:`HostUsage` read the open
    files before the network) -> ``_move_all`` -> :func:`disks_claimed`: ``_opened_since``
    reads the open files again but judges only the claimed disks (``_used_since``) and
    ``nodes_below`` (``_nodes_opened_since``); ``_tool_node_uses``, ``_raw_access_uses``,
    ``_bars``/``_devmem`` are not asked again. The function is unbound from its driver and
    bound to vfio-pci under the flash write (vfio-pci and the guest's driver reset it).

    On a12d4d4: moved to vfio-pci. Safe: refused, naming the tool's pid (as the proof does
    when the tool was started a moment earlier: the control)."""
    node, bdf, allowed, setup = TOOLS[tool]
    setup(lab)
    driver_before = lab.driver_of(bdf)
    calls = opened_during_the_network_read(lab, monkeypatch, on_call, node, pid=5421,
                                           comm=tool, fd=3)
    refused, driver = bind_outcome(lab, journal, bdf, allowed)
    assert len(calls) >= on_call
    assert "5421" in refused and driver == driver_before, (
        f"{bdf} was moved to {driver} while {tool} (pid 5421) holds {node}, opened during "
        f"network read {on_call} of the bind ({len(calls)} in all): "
        + (f"refused: {refused}" if refused else "not refused"))


# -- 1, the same window: a GPIO line of a USB serial adapter requested during the last reads ----

XHCI = "0000:07:00.0"  # (the lab's free uPD720202 xHCI, USB bus 4, group 14)


def _line_requested(lab) -> None:
    """``gpioset`` (libgpiod v2: the chip's fd closed once the line is requested) holds line 1
    of the CP2102N's chip, as the kernel shows it: its line request fd, whose fdinfo names the
    chip, and the line held in /sys/kernel/debug/gpio."""
    if (lab.root / "proc/5300/fd/4").is_symlink():
        return
    lab.proc("5300/comm", "gpioset\n")
    (lab.root / "proc/5300/fd").mkdir(parents=True)
    (lab.root / "proc/5300/fd/4").symlink_to("anon_inode:gpio-line")
    lab.proc("5300/fdinfo/4", "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\n"
                              "gpio-chip:\tgpiochip0\ngpio-line:\t1\n")
    (lab.sys / "kernel/debug/gpio").write_text(
        "gpiochip0: GPIOs 512-515, parent: usb/4-1:1.0, cp210x, can sleep:\n"
        " gpio-513 (                    |gpioset             ) out hi \n\n")


@pytest.mark.parametrize("on_call", [1, 2, 3], ids=["control-during-the-first-proof",
                                                    "control-during-the-proof-under-the-lock",
                                                    "during-the-read-under-the-claim"])
def test_1_a_gpio_line_requested_during_the_last_reads_keeps_the_controller(
        lab, journal, monkeypatch, on_call):
    """(finding 1, a GPIO line) Host shape: a hardware lab's relay board on a CP2102N
    (cp210x registers a GPIO chip below its interface) on the lab's free xHCI (07:00.0): the
    rig's power script (``gpioset -c gpiochip0 1=1``, libgpiod v2, which closes the chip's fd
    once the line is requested and holds only the line request) switches a board under test
    on while a run binds the xHCI. Read 16's rule keeps the controller while a line is held
    (debugfs lists it; the request's fdinfo names the chip), but the re-reads under the claim
    look at ``nodes_below`` only (``/dev/gpiochip0``, which nobody holds): a request made while
    the proof under the lock, or the re-read under the claim, reads the network is not seen,
    and the controller is reset under the line (cp210x's GPIO state is lost, the relay drops:
    the board under test loses power). (The proof under the lock reads debugfs after its
    network read, lazily, in the verdict: a request during that read is seen, the control of
    call 2; the re-read under the claim reads neither debugfs nor the line requests again.)
    On a12d4d4 calls 1 and 2 are refused and call 3 is moved to vfio-pci. Safe: refused,
    naming the held line."""
    from .test_host_idle_review16 import _cp2102n
    _cp2102n(lab)
    calls = _requested_during(lab, monkeypatch, on_call)
    refused, driver = bind_outcome(lab, journal, XHCI, {XHCI})
    assert len(calls) >= on_call
    assert "gpio" in refused.lower() and driver == "xhci_hcd", (
        f"{XHCI} was moved to {driver} while gpioset (pid 5300) holds a line of the CP2102N's "
        f"chip below it, requested during network read {on_call} of the bind: "
        + (f"refused: {refused}" if refused else "not refused"))


def _requested_during(lab, monkeypatch, on_call: int) -> list:
    from .test_host_idle_review31a import during_the_network_read
    return during_the_network_read(monkeypatch, on_call, lambda: _line_requested(lab))


# -- 1, the same window: a USB device below exported with usbip during the read under the claim --


def _usbip_bound(lab) -> None:
    """``usbip bind -b 4-1``: usbip-host takes the whole device (its interface's driver let go),
    for usbipd to serve it to another machine."""
    dev = lab.sys / "bus/usb/devices/4-1"
    driver = lab.sys / "bus/usb/drivers/usbip-host"
    if (dev / "driver").is_symlink():
        return
    driver.mkdir(parents=True, exist_ok=True)
    (dev / "driver").symlink_to(driver.resolve())


@pytest.mark.parametrize("on_call", [1, 2, 3], ids=["control-during-the-first-proof",
                                                    "control-during-the-proof-under-the-lock",
                                                    "during-the-read-under-the-claim"])
def test_1_a_usb_device_exported_during_the_last_reads_keeps_the_controller(
        lab, journal, monkeypatch, on_call):
    """(finding 1, a driver below) Host shape: a lab that shares its debug probes and boards'
    USB ports over the network with usbip (``usbipd``, a script's ``usbip bind -b 4-1`` when a
    colleague asks for the ST-LINK on the lab's free xHCI, 07:00.0). The rule keeps a
    controller while a USB device below it is on ``usbip-host`` (the kernel serves it to
    another machine: no node, interface or process here shows it). Bound while the re-read
    under the claim reads the network: the re-reads list the disks again
    (``_nothing_new_below``) and the nodes' holders, but not the drivers of what sits below,
    so the controller is moved under the export (the remote ``usbip attach`` is cut, the
    probe's session to its board with it). The proof under the lock builds its subtree after
    its network read (the control of call 2). On a12d4d4 call 3 is moved to vfio-pci. Safe:
    refused, naming usbip."""
    lab.add_usb("4-1", 2, "0483:3748", "STM32 STLink", "STMicroelectronics",
                iface_driver=None)
    from .test_host_idle_review31a import during_the_network_read
    calls = during_the_network_read(monkeypatch, on_call, lambda: _usbip_bound(lab))
    fakesysfs.assert_kept(lab, journal, XHCI, {XHCI}, "xhci_hcd", "usbip", calls, on_call,
                          "its USB device 4-1 was put on usbip-host")


# -- 1, the usb-host side: the relay adapter itself handed to a guest ----------------------------


def test_1_a_gpio_line_requested_while_the_usb_hand_over_rereads_keeps_the_adapter(
        lab, monkeypatch):
    """(finding 1, the usb-host side) The same relay adapter (the CP2102N, 4-1) in the
    inventory as a ``usb-device`` for a guest's serial tests, handed to usb-host: the
    hand-over's re-reads under the claim (:func:`harness.host.usbhost.handed` ->
    :func:`disks_claimed`, with the device's path as ``below``) look at its disks, nodes and
    interfaces again, not at the GPIO lines :meth:`HostUsage.usb_verdict` judged. A line
    requested by the rig's ``gpioset`` while they read the network (call 3) is not seen, and
    QEMU detaches cp210x from the adapter (its GPIO chip, and the line's state, gone with it).
    On a12d4d4 the plug goes ahead. Safe: refused, naming the held line."""
    from types import SimpleNamespace

    from harness.core.errors import HostDeviceError
    from harness.host import usbhost
    from harness.host.binding import VfioBinder

    from .test_host_idle_review16 import _cp2102n
    _cp2102n(lab)
    entry = SimpleNamespace(name="relay", hostbus=4, hostaddr=2, vendorid="0x10c4",
                            productid="0xea60")
    binder = VfioBinder(lab.sysfs(), journal=lab.root / "var/lib/hotplug-harness/"
                                                        "vfio-journal.json", timeout=0.3)
    calls = _requested_during(lab, monkeypatch, 3)
    refused = ""
    try:
        with usbhost.handed(binder, entry, "busaddr"):
            pass
    except HostDeviceError as e:
        refused = e.message
    assert len(calls) >= 3
    assert "gpio" in refused.lower(), (
        "the CP2102N (4-1) was handed to usb-host while gpioset (pid 5300) holds a line of its "
        "GPIO chip, requested during the hand-over's network read 3: "
        + (f"refused: {refused}" if refused else "not refused"))


def test_1_control_a_gpio_line_held_before_the_hand_over_keeps_the_adapter(lab):
    """Control: the line held before the plug: the hand-over's proof refuses it."""
    from types import SimpleNamespace

    from harness.core.errors import HostDeviceError
    from harness.host import usbhost
    from harness.host.binding import VfioBinder

    from .test_host_idle_review16 import _cp2102n
    _cp2102n(lab)
    _line_requested(lab)
    entry = SimpleNamespace(name="relay", hostbus=4, hostaddr=2, vendorid="0x10c4",
                            productid="0xea60")
    binder = VfioBinder(lab.sysfs(), journal=lab.root / "var/lib/hotplug-harness/"
                                                        "vfio-journal.json", timeout=0.3)
    with pytest.raises(HostDeviceError, match=r"(?i)gpio"):
        with usbhost.handed(binder, entry, "busaddr"):
            pytest.fail("the plug must not happen")
