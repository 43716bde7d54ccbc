"""The Debian-root toolkit: what builds a root file system from Debian packages without root,
for the built-in guest (harness/images.py) and the lab host (harness/lab/).

``unpack_debs`` (apt-get download + dpkg-deb -x, /usr merged), ``library_closure`` (the
shared libraries ELF files load, read from them, symlinks followed inside the root) and
``check_libraries`` on it (every program's libraries are there), the ELF and kernel-module readers,
``extract_vmlinux``, ``write_cpio`` (an initramfs with uid/gid 0), and ``build_once``: a cache
folder built at most once, by one process, under a lock, with the old ones pruned.
"""

from __future__ import annotations

import fcntl
import io
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
from pathlib import Path

from harness.core.errors import ImageError
from harness.core.paths import (check_ancestors, check_trusted_tree, invoking_uids,
                                open_nofollow)


def elf_sections(data: bytes) -> dict[str, bytes]:
    """Sections of a 64-bit little-endian ELF file, by name."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    e_shoff, = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = []
    for i in range(e_shnum):
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", data, e_shoff + i * e_shentsize)
        headers.append((name, offset, size))
    _, stroff, strsize = headers[e_shstrndx]
    strtab = data[stroff:stroff + strsize]
    out = {}
    for name, offset, size in headers:
        end = strtab.index(b"\0", name)
        out[strtab[name:end].decode()] = data[offset:offset + size]
    return out


def elf_needed(data: bytes) -> list[str]:
    """DT_NEEDED entries (shared libraries) of an ELF executable or library."""
    sections = elf_sections(data)
    dynamic, dynstr = sections.get(".dynamic", b""), sections.get(".dynstr", b"")
    needed = []
    for off in range(0, len(dynamic) - 15, 16):
        tag, val = struct.unpack_from("<qQ", dynamic, off)
        if tag == 0:
            break
        if tag == 1:  # DT_NEEDED
            needed.append(dynstr[val:dynstr.index(b"\0", val)].decode())
    return needed


def module_depends(ko: bytes) -> list[str]:
    """The ``depends=`` list of a kernel module's .modinfo section."""
    for entry in elf_sections(ko).get(".modinfo", b"").split(b"\0"):
        if entry.startswith(b"depends="):
            return [d for d in entry[8:].decode().split(",") if d]
    return []


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The uncompressed kernel ELF inside an xz-compressed bzImage."""
    start = bzimage.find(b"\xfd7zXZ\x00")
    if start < 0:
        raise ImageError("kernel image has no xz payload", hint="use a CONFIG_KERNEL_XZ kernel")
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    out = dec.decompress(bzimage[start:])
    if not out.startswith(b"\x7fELF"):
        raise ImageError("xz payload of the kernel is not an ELF file")
    return out


def write_cpio(root: Path, out: io.BufferedWriter) -> None:
    """Write ``root`` as a newc cpio archive with every file owned by root."""
    ino = 1

    def entry(name: str, mode: int, data: bytes, nlink: int = 1, mtime: int = 0) -> None:
        nonlocal ino
        namez = name.encode() + b"\0"
        hdr = b"070701" + b"".join(b"%08X" % v for v in (
            ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, 0, 0, len(namez), 0))
        ino += 1
        out.write(hdr + namez)
        out.write(b"\0" * (-(110 + len(namez)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))

    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            entry(rel, stat.S_IFDIR | 0o755, b"", nlink=2)
        for fn in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            full = os.path.join(dirpath, fn)
            name = os.path.normpath(os.path.join(rel, fn))
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                entry(name, stat.S_IFLNK | 0o777, os.readlink(full).encode())
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    entry(name, stat.S_IFREG | (st.st_mode & 0o7777), f.read())
        # symlinked dirs were emitted as links; do not descend into them
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    entry("TRAILER!!!", 0, b"")


def run(cmd: list[str], what: str, **kw) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    except FileNotFoundError as e:
        raise ImageError(f"{what}: {cmd[0]} is not installed",
                         hint="run `make setup` (installs dpkg and apt tools)") from e
    if p.returncode != 0:
        raise ImageError(f"{what} failed: {' '.join(cmd)}\n{p.stderr.strip()}",
                         hint="run `apt-get update` as root, then try again")
    return p.stdout


def resolve_kernel_package(meta: str) -> str:
    out = run(["apt-cache", "show", "--no-all-versions", meta], f"looking up {meta}")
    m = re.search(r"^Depends: (linux-image-[^\s,]+)", out, re.M)
    if not m:
        raise ImageError(f"{meta} does not name a linux-image package", hint="check apt sources")
    return m.group(1)


def merge_usr(root: Path) -> None:
    """Debian 12 packages still ship /bin, /sbin, /lib: fold them into /usr with symlinks."""
    for d in ("bin", "sbin", "lib", "lib64"):
        top = root / d
        if top.is_symlink() or not top.exists():
            continue
        dest = root / "usr" / d
        dest.mkdir(parents=True, exist_ok=True)
        for item in top.iterdir():
            target = dest / item.name
            if target.is_dir() and not target.is_symlink() and item.is_dir() and not item.is_symlink():
                shutil.copytree(item, target, symlinks=True, dirs_exist_ok=True)
                shutil.rmtree(item)
            else:
                if target.exists() or target.is_symlink():
                    target.unlink() if not target.is_dir() else shutil.rmtree(target)
                item.rename(target)
        top.rmdir()
        top.symlink_to(f"usr/{d}")


def unpack_debs(packages: list[str], debs: Path, root: Path, *,
                elsewhere: dict[str, Path] | None = None) -> dict[str, str]:
    """``apt-get download`` the packages into ``debs`` and ``dpkg-deb -x`` each into ``root``
    (or the folder ``elsewhere`` names for it), without root; merge /usr and drop the docs.
    Returns each package's version."""
    elsewhere = elsewhere or {}
    run(["apt-get", "download", "-q", *packages], "apt-get download", cwd=debs)
    versions = {}
    for deb in sorted(debs.glob("*.deb")):
        name, version = deb.name.split("_")[:2]
        versions[name] = version.replace("%3a", ":")
        run(["dpkg-deb", "-x", str(deb), str(elsewhere.get(name, root))], f"unpacking {deb.name}")
    merge_usr(root)
    for junk in ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info",
                 "usr/share/lintian", "usr/share/bug"):
        shutil.rmtree(root / junk, ignore_errors=True)
    return versions


def in_root(root: Path, p: Path) -> Path:
    """``p`` with its symlinks followed inside ``root``: an absolute link target (Debian's
    ``libz.so -> /lib/x86_64-linux-gnu/libz.so.1.2.13``) means the root's file, not the host's."""
    for _ in range(40):
        if not p.is_symlink():
            return p.resolve()
        target = os.readlink(p)
        p = root / target.lstrip("/") if target.startswith("/") else p.parent / target
    raise ImageError(f"{p}: too many levels of symbolic links in the image",
                     hint="a package unpacked a symlink loop; check the recipe's packages")


def library_closure(root: Path, elves: list[Path], also: tuple[str, ...] = ()
                    ) -> tuple[set[str], set[Path], list[str]]:
    """The shared libraries ``elves`` (ELF files under ``root``) load, directly or through each
    other, plus the ``also`` names: the names asked for, the files they are (in ``root``), and
    what is missing ("libx.so.1 (needed by prog)")."""
    libdirs = [root / "usr/lib/x86_64-linux-gnu", root / "usr/lib"]
    todo = [(lib, p.name) for p in elves for lib in elf_needed(in_root(root, p).read_bytes())]
    todo += [(lib, "the loader") for lib in also]
    names: set[str] = set()
    files: set[Path] = set()
    missing: list[str] = []
    while todo:
        lib, by = todo.pop()
        if lib in names:
            continue
        names.add(lib)
        found = next((in_root(root, d / lib) for d in libdirs if (d / lib).is_symlink() or (d / lib).exists()), None)
        if found is None or not found.is_file():
            missing.append(f"{lib} (needed by {by})")
        elif found not in files:
            files.add(found)
            todo += [(dep, lib) for dep in elf_needed(found.read_bytes())]
    return names, files, missing


def check_libraries(root: Path, programs: tuple[str, ...]) -> None:
    """Fail the build if a required program, or a library it loads, lacks a shared library."""
    paths = [root / p.lstrip("/") for p in programs]
    missing = [f"{p.relative_to(root)} (the program itself)" for p in paths if not p.exists()]
    missing += library_closure(root, [p for p in paths if p.exists()])[2]
    if missing:
        raise ImageError("the guest image lacks shared libraries: " + ", ".join(missing),
                         hint="add the Debian package that ships them to recipe.toml")


def build_once(out: Path, build_into, spare: int = 2, guest_trees: tuple[str, ...] = ()) -> bool:
    """Build into ``out`` (a cache folder named by what it is built from) unless it is there.
    Safe from several processes at once: one builds, the others wait on the cache's lock. The
    build must appear at ``out`` whole (built aside, then renamed). Older builds beyond ``spare``
    are pruned. True if this call built it.

    As root, the image cache may be one others can write (``--image-cache DIR``), and its
    folder names are predictable: before anything is made, locked, built or removed there, the
    folders above ``out`` must be root's (or the invoking user's) and writable by nobody else
    (a sticky folder above the cache aside), looked at again once ``out``'s folder exists; and
    ``out``, built now or found, must be root's through and through
    (:func:`harness.core.paths.check_trusted_tree`, ``guest_trees`` its guest root trees)
    before anyone uses it. Raises UnsafePathError naming the path."""
    uids = invoking_uids() if os.geteuid() == 0 else None
    if uids:
        check_ancestors(out, uids)
    built = False
    if not os.path.lexists(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        if uids:
            check_ancestors(out, uids)  # (a folder another user made first, or a link)
        with os.fdopen(open_nofollow(out.parent / ".lock", os.O_RDWR | os.O_CREAT)) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.lexists(out):
                build_into(out)
                prune(out.parent, keep=out, spare=spare)
                built = True
    check_trusted_tree(out, guest_trees)
    _hold(out)
    return built


#: Builds this process uses, each held with a shared lock on its folder for as long as the
#: process lives: another checkout's run sharing the cache must not prune a build from under
#: a run that boots from it (seen Dec 5: a run on a newer commit pruned the built-in image an
#: older commit's run was using, whose report then failed: "image ... is incomplete").
_HELD: dict[Path, int] = {}


def _hold(build: Path) -> None:
    if build in _HELD:
        return
    try:
        fd = os.open(build, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:  # (never waits: only a prune that is removing this very build holds it exclusively)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:  # (that, or a file system without flock: nothing to hold it with)
        os.close(fd)
        return
    _HELD[build] = fd


def _remove_unless_in_use(build: Path) -> None:
    """``rmtree`` a build no process holds (:func:`_hold`); one held, or one whose lock
    cannot be taken, stays."""
    try:
        fd = os.open(build, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        shutil.rmtree(build, ignore_errors=True)
    except OSError:
        pass  # (in use by a live run, or no locks here: not ours to remove now)
    finally:
        os.close(fd)


def prune(cache: Path, keep: Path, spare: int = 2) -> None:
    """Remove builds of older recipes, keeping the newest ``spare`` besides ``keep`` (another
    branch may still want them). Only real folders with a manifest are builds: a symlink (to
    a folder of root's, planted in a cache another user could write) is never followed, and
    ``rmtree`` removes what is below a build without following a link in it. Only our own
    builds count: another user's, in a cache others share, are neither removed nor counted
    (newer ones planted there would push ours out)."""
    old = []
    for d in cache.iterdir():
        st = os.lstat(d)
        if d == keep or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            continue
        try:
            if stat.S_ISREG(os.lstat(d / "manifest.json").st_mode):
                old.append((st.st_mtime, d))
        except FileNotFoundError:
            continue
    for _, d in sorted(old, reverse=True)[spare:]:
        _remove_unless_in_use(d)
