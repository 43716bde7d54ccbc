"""A test's bundle: what a person needs to act on a failure (docs/reports.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from harness.core.errors import tail
from harness.guest.guest import Guest


def write_record(bundle_dir: Path, record: dict, plugged: list) -> None:
    """The test's record, and the host's vfio state of each device it passed through."""
    bundle_dir.mkdir(parents=True, exist_ok=True)
    (bundle_dir / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    host = {p.device_id: p.device.host_state() for _, p in plugged}
    host = {k: v for k, v in host.items() if v is not None}
    if host:
        (bundle_dir / "host-vfio-state.json").write_text(json.dumps(host, indent=2) + "\n")


def write_guest_bundle(bundle_dir: Path, guest: Guest, marks: dict[str, int], passed: bool,
                       answers: bool = True) -> None:
    """What a person needs of one guest of a test: its command line and replay script, this
    test's slice of its logs, and for a failed test its kernel log and hotplug events."""
    out = bundle_dir / guest.name
    out.mkdir(parents=True, exist_ok=True)
    for name in ("cmdline.txt", "replay.sh"):
        if (guest.workdir / name).exists():
            shutil.copy2(guest.workdir / name, out / name)
    if not passed and guest.alive() and guest.migrated_to is not None:
        (out / "console.txt").write_text(
            f"not read: this QEMU is the source of a completed live migration (postmigrate,"
            f" its vCPUs stopped for good); the guest went on as {guest.migrated_to.name}\n")
    elif not passed and guest.alive() and not answers:
        (out / "console.txt").write_text("not read: the guest stopped answering (`true` did not "
                                         "finish); its serial log is beside this file\n")
    elif not passed and guest.alive():
        # (the kernel log's last 400 lines: the whole log over a serial console took more
        # than the deadline in the lab, and the bundle kept its first 2 KB, the boot's start)
        for cmd, fname in (("dmesg | tail -n 400", "dmesg.txt"),
                           ("cat /run/hh/events", "events.txt"),
                           ("cat /run/hh/uevent.log 2>/dev/null", "uevent.log")):
            try:
                (out / fname).write_text(guest.shell.run(cmd, timeout=30).output)
            except Exception as e:
                (out / fname).write_text(f"could not read: {e}\n")
    # This test's slice of each log of a guest that may have served other tests before.
    for path in (guest.workdir.iterdir() if guest.workdir.exists() else ()):
        if path.suffix not in (".log", ".jsonl"):
            continue
        with open(path, "rb") as f:
            f.seek(marks.get(path.name, 0))
            (out / path.name).write_bytes(f.read())
    status = guest.process.poll() if guest.process else None
    if status is not None:
        (out / "qemu-exit.txt").write_text(
            f"QEMU exit status: {status}\nlast output:\n{tail(guest.qemu_output())}\n")
