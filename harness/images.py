"""The built-in guest image: recipe, build, cache.

The image is a Debian kernel plus an initramfs holding the real ``lspci``, ``lsusb``, ``fdisk``,
``ip``, ``ping``, dropbear and busybox, all taken from Debian packages with ``apt-get download``
and ``dpkg-deb -x``. No root is needed: the cpio archive is written here with uid/gid 0.

The kernel is booted uncompressed (``vmlinux``, through QEMU's PVH entry), which saves the few
seconds a bzImage spends decompressing itself under TCG.

Images are cached under ``<cache>/<recipe digest>/``; the digest covers the recipe folder and this
module, so any change builds a new image. A finished image is never written again: QEMU only reads
the kernel and initramfs, and disks given to tests are separate per-test files.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path

from .errors import ConfigError, ImageError

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILTIN_RECIPE = REPO_ROOT / "fixtures" / "images" / "builtin"
DEFAULT_CACHE = REPO_ROOT / "fixtures" / "images" / "build"
READY_MARKER = "hh: ready"


@dataclasses.dataclass(frozen=True)
class GuestImage:
    """What a guest boots from: the built-in kernel+initramfs, or a user's kernel/initrd and/or
    disk image, with what the harness needs to reach a shell in it."""

    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""
    #: A bootable disk image; the guest runs on a throw-away qcow2 overlay of it.
    disk: Path | None = None
    disk_format: str = "qcow2"
    ssh_user: str = "root"
    ssh_key: Path | None = None
    #: A regex the serial console prints once the guest is ready for commands (a root shell on
    #: ttyS0 must follow it for console access). None: wait for SSH instead.
    ready_pattern: str | None = READY_MARKER + r" uptime=(\S+)"
    #: A NoCloud seed disk (vfat, label CIDATA) for a cloud image's cloud-init, attached
    #: read-only after the disk (:func:`nocloud_seed`).
    seed: Path | None = None
    builtin: bool = False
    manifest: dict = dataclasses.field(default_factory=dict, compare=False)

    def checksum(self) -> str:
        """sha256 over the files the guest boots from; the suite checks it is unchanged."""
        return hashlib.sha256("".join(_sha256(p) for p in (self.kernel, self.initrd, self.disk)
                                      if p is not None).encode()).hexdigest()


# -- recipe ------------------------------------------------------------------------------------


def read_recipe_toml(path: Path) -> dict:
    """An image recipe file, or an ImageError that says how to get it back."""
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        try:
            where = path.parent.resolve().relative_to(REPO_ROOT)
        except ValueError:
            where = path.parent
        raise ImageError(f"cannot read the image recipe {path}: {e}",
                         hint=f"restore {where} from git (git checkout -- {where})") from e


@dataclasses.dataclass(frozen=True)
class Recipe:
    folder: Path
    kernel_package: str
    packages: tuple[str, ...]
    modules: tuple[str, ...]
    required_programs: tuple[str, ...]

    @classmethod
    def load(cls, folder: Path = BUILTIN_RECIPE) -> "Recipe":
        path = folder / "recipe.toml"
        data = read_recipe_toml(path)
        known = {"kernel_package", "packages", "modules", "required_programs"}
        unknown = set(data) - known
        if unknown:
            raise ImageError(f"{path}: unknown keys {sorted(unknown)}",
                             hint=f"the recipe knows only {sorted(known)}")
        return cls(folder, data["kernel_package"], tuple(data["packages"]),
                   tuple(data["modules"]), tuple(data.get("required_programs", ())))

    def digest(self) -> str:
        h = hashlib.sha256()
        for p in sorted(self.folder.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(self.folder)).encode() + b"\0")
                h.update(p.read_bytes())
        h.update(Path(__file__).read_bytes())
        return h.hexdigest()[:16]


# -- small pure helpers (unit-tested) ------------------------------------------------------------


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


# -- build ---------------------------------------------------------------------------------------


def _run(cmd: list[str], what: str, **kw) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    except FileNotFoundError as e:
        raise ImageError(f"{what}: {cmd[0]} is not installed",
                         hint="run `make setup` (installs dpkg and apt tools)") from e
    if p.returncode != 0:
        raise ImageError(f"{what} failed: {' '.join(cmd)}\n{p.stderr.strip()}",
                         hint="run `apt-get update` as root, then try again")
    return p.stdout


def _resolve_kernel_package(meta: str) -> str:
    out = _run(["apt-cache", "show", "--no-all-versions", meta], f"looking up {meta}")
    m = re.search(r"^Depends: (linux-image-[^\s,]+)", out, re.M)
    if not m:
        raise ImageError(f"{meta} does not name a linux-image package", hint="check apt sources")
    return m.group(1)


def _merge_usr(root: Path) -> None:
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
    _run(["apt-get", "download", "-q", *packages], "apt-get download", cwd=debs)
    versions = {}
    for deb in sorted(debs.glob("*.deb")):
        name, version = deb.name.split("_")[:2]
        versions[name] = version.replace("%3a", ":")
        _run(["dpkg-deb", "-x", str(deb), str(elsewhere.get(name, root))], f"unpacking {deb.name}")
    _merge_usr(root)
    for junk in ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info",
                 "usr/share/lintian", "usr/share/bug"):
        shutil.rmtree(root / junk, ignore_errors=True)
    return versions


def _check_libraries(root: Path, programs: tuple[str, ...]) -> None:
    """Fail the build if a required program, or a library it loads, lacks a shared library."""
    libdirs = [root / "usr/lib/x86_64-linux-gnu", root / "usr/lib"]
    seen: set[str] = set()
    missing: list[str] = []
    todo = [root / p.lstrip("/") for p in programs]
    for p in todo:
        if not p.exists():
            missing.append(f"{p.relative_to(root)} (the program itself)")
    todo = [p for p in todo if p.exists()]
    while todo:
        path = todo.pop()
        for lib in elf_needed(path.resolve().read_bytes()):
            if lib in seen:
                continue
            seen.add(lib)
            found = next((d / lib for d in libdirs if (d / lib).exists()), None)
            if found is None:
                missing.append(f"{lib} (needed by {path.name})")
            else:
                todo.append(found)
    if missing:
        raise ImageError("the guest image lacks shared libraries: " + ", ".join(missing),
                         hint="add the Debian package that ships them to recipe.toml")


def _add_modules(root: Path, kroot: Path, kver: str, wanted: tuple[str, ...]) -> list[str]:
    """Copy the wanted modules and their dependencies; return the load order."""
    src = kroot / "lib/modules" / kver
    by_name = {}
    for ko in (src / "kernel").rglob("*.ko"):
        by_name[ko.stem.replace("-", "_")] = ko
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        key = name.replace("-", "_")
        if key in order:
            return
        if key not in by_name:
            raise ImageError(f"kernel {kver} has no module {name} (wanted by {' <- '.join(chain) or 'recipe'})",
                             hint="it may be built in: remove it from recipe.toml modules")
        for dep in module_depends(by_name[key].read_bytes()):
            visit(dep, chain + (name,))
        order.append(key)

    for m in wanted:
        visit(m, ())
    dest = root / "usr/lib/modules" / kver
    for key in order:
        rel = by_name[key].relative_to(src)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(by_name[key], dest / rel)
    # busybox's modprobe ignores modules.dep, so init insmods this list, dependencies first.
    for f in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (src / f).exists():
            shutil.copy2(src / f, dest / f)
    # The real depmod, run from the new root with its own loader and libraries, writes the
    # indexes libkmod needs (lspci -k prints "Kernel modules:" from them).
    _run([str(root / "usr/lib64/ld-linux-x86-64.so.2"), "--library-path",
          str(root / "usr/lib/x86_64-linux-gnu"), "--argv0", "depmod", str(root / "usr/bin/kmod"),
          "-b", str(root), kver],
         "depmod")
    (root / "etc/hh").mkdir(parents=True, exist_ok=True)
    (root / "etc/hh/modules").write_text(
        "".join(f"{by_name[k].relative_to(src)}\n" for k in order))
    return order


def _link_busybox_applets(root: Path) -> None:
    """Link each busybox applet that no real tool provides into /usr/bin, so every shell (the
    console's, and dropbear's with its fixed PATH) finds the real tools first."""
    applets = _run([str(root / "usr/bin/busybox"), "--list"], "listing busybox applets").split()
    for applet in applets:
        if not any((root / d / applet).exists() or (root / d / applet).is_symlink()
                   for d in ("usr/bin", "usr/sbin")):
            (root / "usr/bin" / applet).symlink_to("busybox")


def _make_ssh_key(out: Path) -> str:
    import paramiko

    key = paramiko.ECDSAKey.generate(bits=256)
    key.write_private_key_file(str(out / "id_ecdsa"))
    os.chmod(out / "id_ecdsa", 0o600)
    pub = f"{key.get_name()} {key.get_base64()} hotplug-harness"
    (out / "id_ecdsa.pub").write_text(pub + "\n")
    return pub


def _finish_root(recipe: Recipe, root: Path, kroot: Path, kver: str) -> None:
    """The kernel's config, the recipe's overlay, mount points, busybox applets, /bin/sh."""
    (root / "boot").mkdir(exist_ok=True)
    shutil.copy2(kroot / f"boot/config-{kver}", root / f"boot/config-{kver}")
    shutil.copytree(recipe.folder / "overlay", root, symlinks=True, dirs_exist_ok=True)
    for d in ("proc", "sys", "dev", "run", "tmp", "root/.ssh", "mnt"):
        (root / d).mkdir(parents=True, exist_ok=True)
    _link_busybox_applets(root)
    (root / "bin/sh").unlink(missing_ok=True)
    (root / "usr/bin/sh").unlink(missing_ok=True)
    (root / "usr/bin/sh").symlink_to("dash")


def build(recipe: Recipe, out_dir: Path, log=print) -> dict:
    """Build the image into ``out_dir`` (which must not exist yet). Returns the manifest."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hh-image-") as tmp:
        tmp = Path(tmp)
        debs, root, kroot = tmp / "debs", tmp / "root", tmp / "kernel"
        for d in (debs, root, kroot):
            d.mkdir()
        kpkg = _resolve_kernel_package(recipe.kernel_package)
        log(f"image: downloading {len(recipe.packages) + 1} Debian packages")
        versions = unpack_debs([kpkg, *recipe.packages], debs, root, elsewhere={kpkg: kroot})
        _check_libraries(root, recipe.required_programs)

        kver = kpkg.removeprefix("linux-image-")
        order = _add_modules(root, kroot, kver, recipe.modules)
        _finish_root(recipe, root, kroot, kver)

        stage = tmp / "out"
        stage.mkdir()
        pub = _make_ssh_key(stage)
        (root / "root/.ssh/authorized_keys").write_text(pub + "\n")
        os.chmod(root / "root/.ssh", 0o700)
        os.chmod(root / "root", 0o700)

        bz = (kroot / f"boot/vmlinuz-{kver}").read_bytes()
        (stage / "bzImage").write_bytes(bz)
        (stage / "vmlinux").write_bytes(extract_vmlinux(bz))
        with open(stage / "initrd.cpio", "wb") as f:
            write_cpio(root, f)
        manifest = {
            "recipe_digest": recipe.digest(),
            "sha256": {n: _sha256(stage / n) for n in ("vmlinux", "initrd.cpio")},
            "kernel_version": kver,
            "packages": versions,
            "modules": order,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - t0, 2),
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        for p in stage.iterdir():
            os.chmod(p, 0o400 if p.name == "id_ecdsa" else 0o444)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        stage.rename(out_dir)
    log(f"image: built {out_dir} in {manifest['build_seconds']} s")
    return manifest


BUILTIN_APPEND = "console=ttyS0 panic=-1 quiet"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def image_from_dir(d: Path, verify: bool = True) -> GuestImage:
    """A GuestImage from a finished build folder, verified to be complete."""
    need = ("vmlinux", "initrd.cpio", "id_ecdsa", "manifest.json")
    missing = [n for n in need if not (d / n).is_file()]
    if missing:
        raise ImageError(f"guest image {d} is incomplete (missing {', '.join(missing)})",
                         hint=f"delete {d} and run `make image` to rebuild it")
    try:
        manifest = json.loads((d / "manifest.json").read_text())
    except ValueError as e:
        raise ImageError(f"guest image {d} has a corrupt manifest.json: {e}",
                         hint=f"delete {d} and run `make image` to rebuild it") from e
    if verify:
        for name, want in manifest.get("sha256", {}).items():
            if _sha256(d / name) != want:
                raise ImageError(f"guest image {d} is corrupt: {name} does not match its checksum",
                                 hint=f"delete {d} and run `make image` to rebuild it")
    return GuestImage(kernel=d / "vmlinux", initrd=d / "initrd.cpio", append=BUILTIN_APPEND,
                      ssh_key=d / "id_ecdsa", builtin=True, manifest=manifest)


def builtin_dir(cache: Path = DEFAULT_CACHE, recipe_dir: Path = BUILTIN_RECIPE) -> Path:
    """Where the current recipe's image is (or will be) built."""
    return cache / Recipe.load(recipe_dir).digest()


def ensure_builtin(cache: Path = DEFAULT_CACHE, recipe_dir: Path = BUILTIN_RECIPE, log=print) -> GuestImage:
    """Return the built-in image, building it first if this recipe was never built.

    Safe to call from several processes at once (xdist workers): one builds, the others wait.
    """
    recipe = Recipe.load(recipe_dir)
    out = builtin_dir(cache, recipe_dir)
    build_once(out, lambda d: build(recipe, d, log=log))
    return image_from_dir(out)


def build_once(out: Path, build_into, spare: int = 2) -> bool:
    """Build into ``out`` (a cache folder named by what it is built from) unless it is there.
    Safe from several processes at once: one builds, the others wait on the cache's lock. The
    build must appear at ``out`` whole (built aside, then renamed). Older builds beyond ``spare``
    are pruned. True if this call built it."""
    if out.exists():
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():
            return False
        build_into(out)
        _prune(out.parent, keep=out, spare=spare)
    return True


def _prune(cache: Path, keep: Path, spare: int = 2) -> None:
    """Remove builds of older recipes, keeping the newest ``spare`` besides ``keep`` (another
    branch may still want them)."""
    old = sorted((d for d in cache.iterdir() if d.is_dir() and d != keep and (d / "manifest.json").exists()),
                 key=lambda d: d.stat().st_mtime, reverse=True)
    for d in old[spare:]:
        for p in d.iterdir():
            if p.is_file():  # the image's files are read-only
                os.chmod(p, 0o600)
        shutil.rmtree(d, ignore_errors=True)


# -- distribution guests (your own guest, as users have it) --------------------------------------

#: Recipes of conventional distribution guests: ``fixtures/images/<name>/build OUT_DIR``.
DISTRO_RECIPES = REPO_ROOT / "fixtures" / "images"
DISTROS = ("systemd", "cloudinit")


@dataclasses.dataclass(frozen=True)
class DistroImage:
    """A distribution guest built by its recipe: what ``--guest-*`` options it takes."""

    folder: Path
    manifest: dict

    def pytest_args(self, access: str = "ssh") -> list[str]:
        args = ["--guest-kernel", str(self.folder / "vmlinuz"),
                "--guest-initrd", str(self.folder / "initrd.img"),
                "--guest-append", (self.folder / "append.txt").read_text().strip(),
                "--guest-disk", str(self.folder / "disk.qcow2"), "--guest-access", access]
        if not (self.folder / "id_ed25519").exists():  # a cloud image: no key baked in
            return args + ["--guest-cloud-init"]
        if access == "ssh":
            return args + ["--guest-key", str(self.folder / "id_ed25519")]
        return args + ["--guest-ready", self.manifest["console_prompt"]]


def ensure_distro(name: str, cache: Path = DEFAULT_CACHE, log=print) -> DistroImage:
    """The ``name`` distribution guest, built by its recipe's script the first time (needs root
    and mmdebstrap), cached by the script's digest like the built-in image."""
    if name not in DISTROS:
        raise ConfigError(f"no distribution guest {name!r}", hint=f"one of {', '.join(DISTROS)}")
    script = DISTRO_RECIPES / name / "build"
    if not script.is_file():
        raise ImageError(f"the recipe {script} is missing", hint=f"restore {script.parent} from git")
    out = cache / name / hashlib.sha256(script.read_bytes()).hexdigest()[:16]

    def build(dest: Path) -> None:
        if os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
            raise ImageError(f"building the {name} guest needs root and mmdebstrap",
                             hint="run as root after `apt-get install mmdebstrap` (make setup "
                                  "installs it)")
        t0 = time.monotonic()
        part = dest.with_name(dest.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        log(f"{name} guest: building with {script} (mmdebstrap, about a minute)")
        p = subprocess.run([str(script), str(part)], capture_output=True, text=True)
        if p.returncode:
            shutil.rmtree(part, ignore_errors=True)
            from .access import _tail

            raise ImageError(f"{script} failed (exit {p.returncode})",
                             hint="its output is below", details=_tail(p.stdout + p.stderr))
        prompt = part / "console-prompt.txt"
        manifest = {"recipe": str(script.relative_to(REPO_ROOT)),
                    "console_prompt": prompt.read_text().strip() if prompt.exists() else None,
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "build_seconds": round(time.monotonic() - t0, 1)}
        (part / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        for f in part.iterdir():  # the base image is only ever used through overlays
            os.chmod(f, 0o400 if f.name == "id_ed25519" else 0o444)
        part.rename(dest)
        log(f"{name} guest: built {dest} in {manifest['build_seconds']} s")

    build_once(out, build, spare=1)
    return DistroImage(out, json.loads((out / "manifest.json").read_text()))


# -- cloud images: a NoCloud seed for cloud-init ------------------------------------------------

#: DHCP on NICs that appear later (hot-added ones): the image's cloud-init brings up its first
#: NIC by itself (its fallback network config, which a seed's network-config would replace, and
#: cloud-init 22.4's networkd renderer cannot express "every NIC"), and systemd-networkd
#: images get a rule for the rest; NetworkManager images connect new NICs on their own.
NOCLOUD_LATER_NICS = """write_files:
  - path: /etc/systemd/network/90-hh-dhcp-every-nic.network
    content: |
      [Match]
      Type=ether
      [Network]
      DHCP=yes
runcmd:
  - [sh, -c, "! command -v networkctl >/dev/null || networkctl reload"]
"""


def nocloud_seed(folder: Path, public_key: str) -> Path:
    """A NoCloud seed for an unmodified cloud image (Debian genericcloud, RHEL/Rocky/Alma KVM
    guest images, Ubuntu cloud images): root and the image's default user get ``public_key``,
    passwords stay off, NICs that appear later use DHCP too. Written as a 1 MiB vfat disk labelled
    CIDATA with mkfs.vfat and mcopy (dosfstools, mtools), no root needed."""
    import uuid

    for tool, package in (("mkfs.vfat", "dosfstools"), ("mcopy", "mtools")):
        if shutil.which(tool) is None:
            raise ImageError(f"making a cloud-init seed needs {tool}",
                             hint=f"apt-get install {package} (make setup installs it)")
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "meta-data": f"instance-id: hh-{uuid.uuid4().hex[:12]}\nlocal-hostname: hh-cloud\n",
        "user-data": ("#cloud-config\n"
                      f"ssh_authorized_keys:\n  - {json.dumps(public_key.strip())}\n"
                      "disable_root: false\nssh_pwauth: false\n" + NOCLOUD_LATER_NICS),
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    seed = folder / "seed.vfat"
    seed.unlink(missing_ok=True)
    for argv in (["mkfs.vfat", "-n", "CIDATA", "-C", str(seed), "1024"],
                 ["mcopy", "-o", "-i", str(seed), *(str(folder / n) for n in files), "::"]):
        p = subprocess.run(argv, capture_output=True, text=True)
        if p.returncode:
            raise ImageError(f"making the cloud-init seed failed: {' '.join(argv)}: "
                             f"{(p.stderr or p.stdout).strip()}", hint="see the message")
    return seed


def run_ssh_key(folder: Path) -> tuple[Path, str]:
    """An ed25519 key made for this run (private key path, public key line)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / "id_ed25519"
    if not key.exists():
        if shutil.which("ssh-keygen") is None:
            raise ImageError("making the run's SSH key needs ssh-keygen",
                             hint="apt-get install openssh-client")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hotplug-harness run",
                        "-f", str(key)], check=True, capture_output=True)
    return key, (folder / "id_ed25519.pub").read_text()
