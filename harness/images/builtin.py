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
import hashlib
import json
import os
import shutil
import tempfile
import time
import tomllib
from pathlib import Path

from harness.core.paths import checked_tempdir, sha256
from harness.images import debroot
from harness.qemu.machine import GuestImage
from harness.core.errors import ImageError

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILTIN_RECIPE = REPO_ROOT / "fixtures" / "images" / "builtin"
DEFAULT_CACHE = REPO_ROOT / "fixtures" / "images" / "build"


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
    #: Paths (globs, relative to the root) removed from the image after the packages are
    #: unpacked; shared libraries no program left in it needs go with them (:func:`_prune`).
    drop: tuple[str, ...] = ()

    @classmethod
    def load(cls, folder: Path = BUILTIN_RECIPE) -> "Recipe":
        path = folder / "recipe.toml"
        data = read_recipe_toml(path)
        known = {"kernel_package", "packages", "modules", "required_programs", "drop"}
        unknown = set(data) - known
        if unknown:
            raise ImageError(f"{path}: unknown keys {sorted(unknown)}",
                             hint=f"the recipe knows only {sorted(known)}")
        return cls(folder, data["kernel_package"], tuple(data["packages"]),
                   tuple(data["modules"]), tuple(data.get("required_programs", ())),
                   tuple(data.get("drop", ())))

    def digest(self) -> str:
        h = hashlib.sha256()
        for p in sorted(self.folder.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(self.folder)).encode() + b"\0")
                h.update(p.read_bytes())
        h.update(Path(__file__).read_bytes())
        h.update(Path(debroot.__file__).read_bytes())
        return h.hexdigest()[:16]


# -- build ---------------------------------------------------------------------------------------


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
        for dep in debroot.module_depends(by_name[key].read_bytes()):
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
    debroot.run([str(root / "usr/lib64/ld-linux-x86-64.so.2"), "--library-path",
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
    applets = debroot.run([str(root / "usr/bin/busybox"), "--list"], "listing busybox applets").split()
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


#: Loaded without being named in an ELF file's DT_NEEDED: the dynamic loader itself, and the
#: unwinder glibc opens for pthread_cancel and exit in threads.
_ALWAYS_KEPT_LIBRARIES = frozenset({"ld-linux-x86-64.so.2", "libgcc_s.so.1"})


def _prune(root: Path, drop: tuple[str, ...]) -> int:
    """Remove the recipe's ``drop`` paths, then every shared library in the main library folder
    that no ELF file left in the image needs (directly or through another library). Each byte
    of the initramfs is unpacked again at every boot and reboot: 48 MB took 0.82 s of a 5 s
    boot under TCG (Dec 3). Returns the bytes removed."""
    removed = 0

    def remove(p: Path) -> None:
        nonlocal removed
        if p.is_dir() and not p.is_symlink():
            removed += sum(f.lstat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
            shutil.rmtree(p)
        else:
            removed += p.lstat().st_size if not p.is_symlink() else 0
            p.unlink()

    for pattern in drop:
        for p in sorted(root.glob(pattern), reverse=True):
            if p.exists() or p.is_symlink():
                remove(p)
    libdir = root / "usr/lib/x86_64-linux-gnu"
    if not libdir.is_dir():
        return removed
    elves = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and p.parent != libdir
             and _is_elf(p)]
    needed, kept, _ = debroot.library_closure(root, elves, also=tuple(_ALWAYS_KEPT_LIBRARIES))
    for p in sorted(libdir.iterdir()):
        if ".so" not in p.name or (p.is_dir() and not p.is_symlink()) or p.name in needed:
            continue
        if p.is_symlink() or debroot.in_root(root, p) not in kept:
            remove(p)
    return removed


def _is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


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
    with tempfile.TemporaryDirectory(prefix="hh-image-", dir=checked_tempdir()) as tmp:
        tmp = Path(tmp)
        debs, root, kroot = tmp / "debs", tmp / "root", tmp / "kernel"
        for d in (debs, root, kroot):
            d.mkdir()
        kpkg = debroot.resolve_kernel_package(recipe.kernel_package)
        log(f"image: downloading {len(recipe.packages) + 1} Debian packages")
        versions = debroot.unpack_debs([kpkg, *recipe.packages], debs, root, elsewhere={kpkg: kroot})

        kver = kpkg.removeprefix("linux-image-")
        order = _add_modules(root, kroot, kver, recipe.modules)
        _finish_root(recipe, root, kroot, kver)
        pruned = _prune(root, recipe.drop)
        # After the prune: it removes only what nothing needs, and this proves it.
        debroot.check_libraries(root, recipe.required_programs)

        stage = tmp / "out"
        stage.mkdir()
        pub = _make_ssh_key(stage)
        (root / "root/.ssh/authorized_keys").write_text(pub + "\n")
        os.chmod(root / "root/.ssh", 0o700)
        os.chmod(root / "root", 0o700)

        bz = (kroot / f"boot/vmlinuz-{kver}").read_bytes()
        (stage / "bzImage").write_bytes(bz)
        (stage / "vmlinux").write_bytes(debroot.extract_vmlinux(bz))
        with open(stage / "initrd.cpio", "wb") as f:
            debroot.write_cpio(root, f)
        manifest = {
            "recipe_digest": recipe.digest(),
            "sha256": {n: sha256(stage / n) for n in ("vmlinux", "initrd.cpio")},
            "kernel_version": kver,
            "packages": versions,
            "modules": order,
            "pruned_bytes": pruned,
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


#: cryptomgr.notests: the kernel's crypto self-tests at boot cost 0.7 s of the guest's 5-6 s of CPU
#: under TCG (Dec 3), in every boot and reboot; no scenario uses the algorithms they test.
#: no_timer_check: the kernel's check that the IO-APIC timer ticks within a few jiffies at boot
#: loses to a loaded host under TCG and panics ("IO-APIC + timer doesn't work!", once on Dec 5
#: with five guests on 2 cores); cloud images boot with it for the same reason.
BUILTIN_APPEND = "console=ttyS0 panic=-1 quiet cryptomgr.notests no_timer_check"


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
            if sha256(d / name) != want:
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
    debroot.build_once(out, lambda d: build(recipe, d, log=log))
    return image_from_dir(out)


# -- distribution guests (your own guest, as users have it) --------------------------------------

# -- cloud images: a NoCloud seed for cloud-init ------------------------------------------------
