"""The guests a run covers: ``--guest`` given more than once makes the guest an axis of the
scenario matrix (``test_nic[emulated-q35-acpi-e1000e-systemd]``).

A ``--guest`` value is ``builtin``, a distribution guest the harness builds from Debian
packages (``systemd``, ``systemd:console``, ``cloudinit``), or a TOML file of your own guests::

    [[guest]]
    name = "rhel7"                    # part of the test ids
    disk = "/images/rhel7.qcow2"      # and/or kernel, initrd, append
    key = "/images/rhel7_id_ed25519"  # SSH; or ready = "REGEX" for a root shell on ttyS0,
    access = "ssh"                    # or cloud_init = true for a stock cloud image

Knows nothing of pytest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

from harness.images import builtin as images
from harness.images import cloudinit
from harness.images import distro
from harness.core.errors import ConfigError
from harness.core.paths import (UnsafePathError, check_trusted_file, private_dir,
                                read_trusted_file)
from harness.qemu.machine import GuestImage
import fcntl

BUILTIN = "builtin"
_KEYS = {"name", "kernel", "initrd", "append", "disk", "disk_format", "user", "key", "ready",
         "access", "cloud_init"}


@dataclasses.dataclass(frozen=True)
class GuestChoice:
    """One guest of the run: its name (in test ids), its image and how tests reach it."""

    name: str
    image: GuestImage
    access: str

    @property
    def builtin(self) -> bool:
        return self.image.builtin

    def __repr__(self) -> str:
        return f"<guest {self.name} ({self.access})>"


def resolve(values: list[str], cache: Path, seed_folder: Path) -> list[GuestChoice]:
    """The ``--guest`` values as guests, in order; distribution guests are built first if their
    recipe never was. ``seed_folder``: where cloud images' SSH keys and NoCloud seeds go."""
    out: list[GuestChoice] = []
    for value in values:
        name, _, access = value.partition(":")
        if name == BUILTIN:
            out.append(GuestChoice(BUILTIN, images.ensure_builtin(cache, log=lambda s: None),
                                   access or "console"))
        elif name in distro.DISTROS:
            out.append(_distro(name, access, cache, seed_folder))
        elif Path(value).is_file():
            out += [_from_table(t, value, seed_folder) for t in _tables(Path(value))]
        else:
            raise ConfigError(f"--guest {value}: not {BUILTIN}, a distribution guest "
                              f"({', '.join(distro.DISTROS)}) or a guests file",
                              hint="e.g. --guest builtin --guest systemd, or --guest guests.toml "
                                   "(format: harness/guests.py, README)")
    names = [c.name for c in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"--guest names {', '.join(twice)} more than once",
                          hint="give each guest once (a guests file's guests need distinct names)")
    return out


def _distro(name: str, access: str, cache: Path, seed_folder: Path) -> GuestChoice:
    d = distro.ensure_distro(name, cache)
    cloud = not (d.folder / "id_ed25519").exists()
    access = access or "ssh"
    if access not in ("ssh", "console"):
        raise ConfigError(f"--guest {name}:{access}: access is ssh or console")
    if access == "console" and not d.manifest.get("console_prompt"):
        raise ConfigError(f"--guest {name}:console: this guest has no root shell on ttyS0",
                          hint=f"use --guest {name} (SSH)")
    image = GuestImage(kernel=d.folder / "vmlinuz", initrd=d.folder / "initrd.img",
                       append=(d.folder / "append.txt").read_text().strip(),
                       disk=d.folder / "disk.qcow2", ssh_key=None if cloud else d.folder / "id_ed25519",
                       ready_pattern=re.escape(d.manifest["console_prompt"])
                       if access == "console" else None, manifest=d.manifest)
    if cloud:
        image = cloud_seeded(image, seed_folder / name)
    label = name if access == "ssh" else f"{name}-console"
    return GuestChoice(label, image, access)


def cloud_seeded(image: GuestImage, folder: Path) -> GuestImage:
    """A stock cloud image with an SSH key made for the run, handed to its cloud-init by a
    NoCloud seed. One key and one seed per ``folder``, made by the first of the run's processes
    to get there (the others wait for it and use them): guests of one shape on two xdist
    workers then have one command line, so one saved state serves both (harness.snapshot)."""
    private_dir(folder)  # (root's key goes here: no link or folder another user made)
    done = folder / "seed.done"
    with open(folder / ".seed.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        key, public = cloudinit.run_ssh_key(folder)
        if done.exists():
            seed = folder / "seed.vfat"
        else:
            seed = cloudinit.nocloud_seed(folder, public)
            done.touch()
    return dataclasses.replace(image, ssh_key=key, seed=seed)


def _tables(path: Path) -> list[dict]:
    try:  # (as root, like the inventory: a file another user could write is refused)
        data = tomllib.loads(read_trusted_file(path) if os.geteuid() == 0 else path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"--guest {path}: {e}", hint="fix the guests file (TOML, [[guest]] "
                                                       "tables: harness/guests.py)") from e
    tables = data.get("guest")
    tables = [tables] if isinstance(tables, dict) else tables
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"--guest {path}: no [[guest]] table",
                          hint="describe each guest in a [[guest]] table (harness/guests.py)")
    return tables


def _from_table(t: dict, source: str, seed_folder: Path) -> GuestChoice:
    where = f"--guest {source}: guest {t.get('name', '?')!r}"
    unknown = sorted(set(t) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}",
                          hint=f"keys: {', '.join(sorted(_KEYS))}")
    if not isinstance(t.get("name"), str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", t["name"]):
        raise ConfigError(f"{where}: name must be letters, digits, '.', '_' or '-' (it is part "
                          "of the test ids)")
    paths = {k: Path(os.path.abspath(Path(t[k]).expanduser()))
             for k in ("kernel", "initrd", "disk", "key") if t.get(k)}
    for key, path in paths.items():
        if not path.is_file():
            raise ConfigError(f"{where}: {key} {path}: no such file")
    if "kernel" not in paths and "disk" not in paths:
        raise ConfigError(f"{where}: give a kernel or a disk")
    cloud = bool(t.get("cloud_init"))
    if not (t.get("ready") or paths.get("key") or cloud):
        raise ConfigError(f"{where}: no way in: give key (SSH), ready (a root shell on ttyS0) or "
                          "cloud_init = true")
    paths = trusted_image_files(where, paths, t.get("disk_format", "qcow2"))
    access = t.get("access") or ("console" if t.get("ready") and not paths.get("key") and not cloud
                                 else "ssh")
    image = GuestImage(kernel=paths.get("kernel"), initrd=paths.get("initrd"),
                       append=t.get("append", ""), disk=paths.get("disk"),
                       disk_format=t.get("disk_format", "qcow2"), ssh_user=t.get("user", "root"),
                       ssh_key=paths.get("key"), ready_pattern=t.get("ready"))
    if cloud:
        image = cloud_seeded(image, seed_folder / t["name"])
    return GuestChoice(t["name"], image, access)


def user_image(opt) -> GuestImage | None:
    """Your own guest from the --guest-* options (None: the built-in guest). Bad input is a
    :class:`ConfigError` that says which option and what to pass."""
    if opt.guest and (opt.guest_kernel or opt.guest_disk):
        raise ConfigError("--guest and --guest-kernel/--guest-disk: with --guest, describe your "
                          "own image in a guests file",
                          hint="a TOML [[guest]] table with name, disk/kernel, key or ready "
                               "(harness/guests.py), given as --guest FILE")
    if not (opt.guest_kernel or opt.guest_disk):
        if opt.guest_initrd or opt.guest_key or opt.guest_ready:
            raise ConfigError("--guest-initrd/--guest-key/--guest-ready describe your own "
                              "image: also pass --guest-kernel or --guest-disk")
        return None
    for flag, value in (("--guest-kernel", opt.guest_kernel), ("--guest-initrd", opt.guest_initrd),
                        ("--guest-disk", opt.guest_disk), ("--guest-key", opt.guest_key)):
        if value and not Path(value).is_file():
            raise ConfigError(f"{flag} {value}: no such file (or not a regular file)")
    if opt.guest_cloud_init and not opt.guest_disk:
        raise ConfigError("--guest-cloud-init seeds a cloud image's cloud-init: pass "
                          "the image with --guest-disk")
    if not opt.guest_ready and not opt.guest_key and not opt.guest_cloud_init:
        raise ConfigError("your own guest needs a way in: --guest-key (SSH), "
                          "--guest-cloud-init (a cloud image: the key is made for the "
                          "run) and/or --guest-ready REGEX (a root shell on ttyS0)")
    real = trusted_image_files("your own guest", {
        k: Path(v) for k, v in (("--guest-kernel", opt.guest_kernel),
                                ("--guest-initrd", opt.guest_initrd),
                                ("--guest-disk", opt.guest_disk),
                                ("--guest-key", opt.guest_key)) if v},
        opt.guest_disk_format, disk="--guest-disk")
    return GuestImage(kernel=real.get("--guest-kernel"), initrd=real.get("--guest-initrd"),
                      append=opt.guest_append, disk=real.get("--guest-disk"),
                      disk_format=opt.guest_disk_format, ssh_user=opt.guest_user,
                      ssh_key=real.get("--guest-key"), ready_pattern=opt.guest_ready)


def trusted_image_files(where: str, paths: dict[str, Path], disk_format: str,
                        disk: str = "disk") -> dict[str, Path]:
    """Where the files a guest is made of (``paths``, as given: its disk, kernel, initrd, key)
    are, to be used from now on: as root, the real paths :func:`check_trusted_file` judged
    (each link on the way judged too, and no link left to re-point after the check), ones no
    other user can write (the file and the folders on the way to it); and its disk refers to
    no other file (``disk``: its key in ``paths``), or root's QEMU would open whatever that
    user chose (a backing file /dev/nvme0n1: the host's disk in the guest). Not root: the
    paths resolved, nothing checked."""
    if os.geteuid() != 0:
        return {key: Path(path).resolve() for key, path in paths.items()}
    real = {}
    for key, path in paths.items():
        try:
            real[key] = check_trusted_file(path)
        except UnsafePathError as e:
            raise UnsafePathError(f"{where}: {key}: {e.message}", hint=e.hint) from e
    if disk in real:
        refs = _references(real[disk], disk_format)
        if refs:
            raise ConfigError(
                f"{where}: {disk} {real[disk]} refers to other files ({', '.join(refs)}), "
                "which root's QEMU would open too: a guest image must be whole",
                hint=f"flatten it: qemu-img convert -O {disk_format} {real[disk]} FLAT "
                     "(then give FLAT)")
    return real


def _references(disk: Path, disk_format: str) -> list[str]:
    """The files ``qemu-img info`` says ``disk`` refers to besides itself (a backing file, a
    qcow2 external data file, a VMDK's extents)."""
    r = subprocess.run(["qemu-img", "info", "--output=json", "-U", "-f", disk_format,
                        str(disk)], capture_output=True, text=True, timeout=60)
    if r.returncode:
        raise ConfigError(f"{disk}: qemu-img cannot read it as {disk_format}: "
                          f"{r.stderr.strip()}", hint="give the image's format (disk_format, "
                                                      "--guest-disk-format)")
    refs: list[str] = []

    def walk(value, key=""):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif key in ("backing-filename", "data-file", "filename") and value != str(disk):
            refs.append(str(value))
    walk(json.loads(r.stdout))
    return sorted(set(refs))

