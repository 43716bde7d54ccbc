"""Saved guest states: boot a guest shape once, start every later guest of that shape from it.

A guest of a shape (its exact command line, image and QEMU) that booted cold and is ready is
saved with QEMU's own migration into a file (``migrate exec:cat > FILE``: QEMU 7.2 and 10.0
alike; the source is then resumed with ``cont`` and used as usual). Every later guest of the
same shape starts with ``-incoming exec:cat FILE`` and is ready once the stream is loaded and
its console (or SSH) answers: about 0.1 of a cold boot under TCG (``bench/bench.py``).

What makes a restored guest indistinguishable from a booted one:

* a state is saved right after the guest is ready, before any test plugs anything (a guest
  whose command line carries a device given to it from the host, vfio-pci or usb-host, is
  never saved nor restored);
* the guest's clock is set to the host's right after the restore (it would read the moment of
  the save), and host randomness is written into its ``/dev/urandom``;
* every guest that may be saved or restored carries a VM generation ID device (``-device
  vmgenid``, a new ID in every QEMU process): Linux 5.18 and newer reseed their random number
  generator when it changes, so two guests restored from one state do not produce the same
  random bytes (they did, measured, without it);
* a guest with a disk gets a copy of the disk overlay as it was at the save (the file system in
  the saved RAM matches it); the base image is never written.

The key of a state is a hash of everything that shapes the guest: the command line (with the
guest's own socket, log and overlay paths and name left out), the image files (the built-in
image's checksums, a user image's sizes and modification times) and the QEMU binary (path,
size, modification time and the version it prints). A changed image or QEMU is a different
key: a stale state is never used. A state that fails to load is thrown away and the guest boots
cold instead (noted in the test's report), never a failed test.

States live for the run in a private temporary folder (``hh-<owner>-states-XXXXXXXX``, 0700,
made once by the process that decides the run, removed with the run's other temporary folders), or across runs in ``--snapshot-cache DIR``; ``--no-snapshot``
boots every guest from scratch.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from harness.qemu.machine import GuestImage
from harness.core.locks import flock_within
from harness.guest import migration
from harness.guest.migration import DISK_FILE, STATE_FILE
from harness.core.paths import new_private_dir, private_dir, run_tmp_prefix
from harness.qemu.machine import Paths, build_argv

if TYPE_CHECKING:
    from harness.guest.guest import Guest

META_FILE = "meta.json"
#: Arguments every guest that may be saved or restored carries (see the module's text).
RESTORABLE_ARGS = ("-device", "vmgenid")
#: Host devices on a command line: such a guest is never saved nor restored.
_HOST_DEVICES = ("vfio-pci", "usb-host")
#: Do not save a state when the cache's file system has less free than this.
MIN_FREE_BYTES = 2 << 30
#: Inside the lab host the cache is its /tmp, a tmpfs of half its 8 GiB of RAM (an L2 guest's
#: state is 150-300 MB; the lab's guest shapes need about 1.5 GB): keep 1 GiB of it free.
LAB_MIN_FREE_BYTES = 1 << 30
#: --snapshot-cache: states not used for this long are removed when a new one is saved.
KEEP_UNUSED_SECONDS = 14 * 86400


#: In the name of a run's own states folder: ``hh-<owner>-states-XXXXXXXX``.
STATES_TAG = "states"


def new_run_cache_dir(owner: str) -> Path:
    """The run's own cache: a new private folder (0700, a name nobody can predict) in the
    temporary folder with the run's other folders (removed at the run's end, and by the next
    run if this one was killed: harness.run.hygiene). Made once, by the process that decides
    the run; the others find its path in the run configuration."""
    return new_private_dir(f"{run_tmp_prefix(owner)}{STATES_TAG}-")


def _file_identity(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def image_identity(image: GuestImage) -> dict:
    """What the image is: the built-in image's checksums (its manifest), a user image's files
    by size and modification time (hashing a 20 GB disk per run is not affordable)."""
    if image.builtin and image.manifest.get("sha256"):
        return {"builtin": image.manifest["sha256"], "append": image.append}
    return {"files": [_file_identity(Path(p)) for p in (image.kernel, image.initrd, image.disk,
                                                         image.seed) if p is not None],
            "append": image.append, "ready": image.ready_pattern, "user": image.ssh_user}


def qemu_identity(binary: str, version: str) -> str:
    found = shutil.which(binary)
    return f"{_file_identity(Path(found)) if found else binary} {version}"


class StateCache:
    """Saved guest states by key; shared by a run's processes (xdist workers)."""

    def __init__(self, root: Path, *, qemu_version: str, persistent: bool = False,
                 min_free: int = MIN_FREE_BYTES):
        # QEMU restores what is in here as root: a folder another user made or can write to
        # is refused (harness.core.paths), never "used if it exists".
        self.root = private_dir(Path(root))
        self.qemu_version = qemu_version
        self.persistent = persistent
        self.min_free = min_free
        self._qemu_ids: dict[str, str] = {}

    # -- keys ---------------------------------------------------------------------------------

    def key(self, guest: "Guest") -> str | None:
        """The key of ``guest``'s shape, or None if it must never be saved or restored."""
        placeholder = Paths(qmp_socket=Path("QMP"), console_socket=Path("CONSOLE"),
                            serial_log=Path("SERIAL"),
                            disk_overlay=Path("DISK") if guest.image.disk else None)
        argv = build_argv(guest.spec, guest.image, placeholder, qemu_binary=guest.qemu_binary,
                          accel=guest.accel, name="NAME") + list(guest.extra_args)
        if any(d in arg for arg in argv for d in _HOST_DEVICES):
            return None
        # -no-reboot is what QEMU does when the guest resets (exit), not guest state: a guest
        # of a reboot scenario starts from the same saved state as the others.
        argv = [a for a in argv if a != "-no-reboot"]
        if guest.qemu_binary not in self._qemu_ids:
            self._qemu_ids[guest.qemu_binary] = qemu_identity(guest.qemu_binary, self.qemu_version)
        inputs = {"argv": argv, "image": image_identity(guest.image),
                  "qemu": self._qemu_ids[guest.qemu_binary], "access": guest.spec.access}
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]

    def find(self, key: str) -> Path | None:
        entry = self.root / key
        if not (entry / META_FILE).is_file():
            return None
        if self.persistent:
            os.utime(entry)  # last used (for pruning)
        return entry

    def discard(self, key: str) -> None:
        """A state that did not load: never tried again."""
        entry = self.root / key
        if entry.exists():
            gone = entry.with_name(f".{key}.bad-{os.getpid()}")
            try:
                entry.rename(gone)
            except OSError:
                return
            shutil.rmtree(gone, ignore_errors=True)

    # -- saving ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def claim(self, key: str, wait: float):
        """The state of ``key`` if saved; else the right to boot and save it, held until the
        block ends. A process that finds another one booting the same shape waits for it (up to
        ``wait`` seconds, then boots on its own) rather than booting the same guest beside it:
        at a run's start every worker asks for the same shapes, and on 2 cores the extra boots
        slowed everyone."""
        entry = self.find(key)
        if entry is not None:
            yield entry
            return
        lock = open(self.root / f".{key}.lock", "w")
        try:
            # (not held after ``wait``: boot anyway; save() takes a lock of its own)
            flock_within(lock, wait, interval=0.1)
            yield self.find(key)
        finally:
            lock.close()

    def save(self, guest: "Guest", key: str) -> dict | None:
        """Save ``guest`` (booted, ready, nothing plugged) as ``key`` unless it exists; the
        guest is resumed either way. Call it inside :meth:`claim`. Returns the figures of the
        save, or None if nothing was saved (and why, in ``"skipped"``)."""
        if self.find(key) is not None:
            return None
        if shutil.disk_usage(self.root).free < self.min_free:
            return {"skipped": f"less than {self.min_free / (1 << 30):g} GiB free in {self.root}"}
        lock = open(self.root / f".{key}.save", "w")
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # another process is saving this shape now
            if self.find(key) is not None:
                return None
            work = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
            try:
                figures = migration.save_state(guest, work / STATE_FILE, work / DISK_FILE)
                figures.update(key=key, label=guest.spec.label, saved_at=time.time(),
                               bytes=(work / STATE_FILE).stat().st_size)
                (work / META_FILE).write_text(json.dumps(figures, indent=1) + "\n")
                work.rename(self.root / key)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
            if self.persistent:
                self.prune()
            return figures
        finally:
            lock.close()

    def prune(self, now: float | None = None) -> list[str]:
        """--snapshot-cache: remove states not used for KEEP_UNUSED_SECONDS (a changed image
        or QEMU leaves its old states unused)."""
        now = time.time() if now is None else now
        removed = []
        for entry in self.root.iterdir():
            if entry.is_dir() and not entry.name.startswith(".") and \
                    now - entry.stat().st_mtime > KEEP_UNUSED_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return removed
