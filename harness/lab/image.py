"""The lab host's image (its kernel, its stage-1 initramfs and its root of Debian packages with
the harness's Python dependencies) and the QEMU that runs it."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from harness.images import debroot
from harness.images import builtin as images
from harness.core.errors import ConfigError, ImageError, LabError
from harness.core.paths import (check_ancestors, check_trusted_tree, invoking_uids, trusted_program,
                                write_atomic)
from harness.qemu.process import qemu_version, version_tuple

LAB_RECIPE = images.REPO_ROOT / "fixtures" / "images" / "lab"
#: The QEMU that runs L1 when the host's is too old for nested KVM on TCG (see its recipe).
LAB_QEMU_RECIPE = images.REPO_ROOT / "fixtures" / "images" / "lab-qemu" / "recipe.toml"
#: Part of the lab image's cache key: change it whenever build_lab() changes what it builds.
LAB_IMAGE_VERSION = "2"


@dataclasses.dataclass(frozen=True)
class LabImage:
    folder: Path
    manifest: dict
    built_now: bool = False

    @property
    def kernel(self) -> Path:
        return self.folder / "vmlinux"

    @property
    def initrd(self) -> Path:
        return self.folder / "initrd.cpio"

    @property
    def root(self) -> Path:
        return self.folder / "root"


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def _python_deps(site: Path) -> list[str]:
    """The harness's installed Python dependencies (name-version), from the running venv."""
    return sorted(p.name.removesuffix(".dist-info") for p in site.glob("*.dist-info")
                  if not p.name.lower().startswith(("hotplug_harness", "pip-", "setuptools-")))


def lab_digest(site: Path | None = None) -> str:
    h = hashlib.sha256()
    for p in sorted(LAB_RECIPE.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(LAB_RECIPE)).encode() + b"\0" + p.read_bytes())
    h.update(Path(__file__).read_bytes())  # (build_lab and _finish_root: what is built)
    h.update(Path(images.__file__).read_bytes())
    h.update(Path(debroot.__file__).read_bytes())
    h.update(LAB_IMAGE_VERSION.encode())
    h.update("\n".join(_python_deps(site or _site_packages())).encode())
    h.update(sys.version.encode())
    return h.hexdigest()[:16]


def resolve_closure(packages: list[str], exclude: set[str]) -> list[str]:
    """The packages and everything they depend on (Depends and Pre-Depends, first installable
    alternative of each group, first provider of a virtual package), like apt would choose."""
    chosen: list[str] = []
    seen: set[str] = set(exclude)
    todo = [p for p in packages if p not in seen]
    while todo:
        batch = list(dict.fromkeys(p for p in todo if p not in seen))
        todo = []
        if not batch:
            break
        seen.update(batch)
        chosen += batch
        out = debroot.run(["apt-cache", "depends", "--no-recommends", "--no-suggests",
                           "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances",
                           *batch], "resolving the lab's packages")
        todo += _first_alternatives(out, exclude)
    return sorted(chosen)


def _first_alternatives(apt_depends: str, exclude: set[str]) -> list[str]:
    """Parse ``apt-cache depends`` output: the package chosen for each dependency group.
    `` |Depends: A`` means "A, or the next one"; a ``<virtual>`` is followed by its providers."""
    picks: list[str] = []
    alts: list[list[str]] = []
    closed = False

    def decide() -> None:
        for name, *providers in alts:
            if name.startswith("<"):
                real = [p for p in providers if p not in exclude]
                if real:
                    picks.append(real[0])
                    return
            elif name not in exclude:
                picks.append(name)
                return

    for line in apt_depends.splitlines():
        m = re.match(r"^ ([| ])(?:Pre)?Depends: (\S+)", line)
        if m:
            if closed:
                decide()
                alts = []
            alts.append([m.group(2).split(":")[0]])
            closed = m.group(1) == " "
        elif line.startswith("    ") and alts:
            alts[-1].append(line.strip().split(":")[0])
        else:
            if closed:
                decide()
            alts, closed = [], False
    if closed:
        decide()
    return picks


def _load_root_recipe() -> tuple[list[str], set[str]]:
    data = images.read_recipe_toml(LAB_RECIPE / "root.toml")
    return list(data["packages"]), set(data.get("exclude", ()))


def build_lab(out_dir: Path, log=print) -> dict:
    """Build the lab image into ``out_dir`` (which must not exist): vmlinux + initrd.cpio (the
    stage-1 initramfs) and root/ (the lab's root file system). Returns the manifest."""
    t0 = time.monotonic()
    site = _site_packages()
    packages, exclude = _load_root_recipe()
    with tempfile.TemporaryDirectory(prefix="hh-lab-image-", dir=out_dir.parent) as tmp:
        tmp = Path(tmp)
        stage, debs = tmp / "out", tmp / "debs"
        debs.mkdir()
        boot = images.build(images.Recipe.load(LAB_RECIPE / "initramfs"), tmp / "boot",
                            log=lambda s: None)
        stage.mkdir()
        for name in ("vmlinux", "initrd.cpio"):
            shutil.copy2(tmp / "boot" / name, stage / name)
        closure = resolve_closure(packages, exclude)
        log(f"lab image: downloading {len(closure)} Debian packages")
        root = stage / "root"
        root.mkdir()
        versions = debroot.unpack_debs(closure, debs, root)
        for link, target in (("usr/bin/sh", "dash"), ("usr/bin/python3", "python3.11")):
            (root / link).unlink(missing_ok=True)
            (root / link).symlink_to(target)
        debroot.check_libraries(root, ("/usr/bin/qemu-system-x86_64", "/usr/bin/qemu-img",
                                       "/usr/bin/python3.11", "/usr/bin/dash"))
        _copy_python_deps(site, root / "usr/local/lib/python3.11/dist-packages")
        _finish_root(root)
        manifest = {
            "lab_digest": lab_digest(site),
            "kernel_version": boot["kernel_version"],
            "packages": versions,
            "python_packages": _python_deps(site),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - t0, 2),
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        stage.rename(out_dir)
    log(f"lab image: built {out_dir} in {manifest['build_seconds']} s")
    return manifest


def _copy_python_deps(site: Path, dest: Path) -> None:
    """The harness's Python dependencies, as pinned in .venv (the harness itself comes from the
    shared repository through PYTHONPATH)."""
    dest.mkdir(parents=True)
    for item in site.iterdir():
        low = item.name.lower()
        if low.startswith(("hotplug_harness", "__editable__", "_hotplug", "pip", "setuptools",
                           "_distutils_hack", "distutils-precedence", "__pycache__")):
            continue
        if item.is_dir():
            shutil.copytree(item, dest / item.name, symlinks=True)
        else:
            shutil.copy2(item, dest / item.name)


def _finish_root(root: Path) -> None:
    """Stage 2, the mount points and the accounts of the lab's root file system, without the
    packages' set-user-ID bits (:func:`drop_set_ids`)."""
    drop_set_ids(root)
    (root / "etc/hh").mkdir(parents=True, exist_ok=True)
    shutil.copy2(LAB_RECIPE / "stage2", root / "etc/hh/lab-stage2")
    for d in ("proc", "sys", "dev", "run", "tmp", "root"):
        (root / d).mkdir(exist_ok=True)
    if not (root / "var/run").is_symlink():  # (base-files' link, which libvirt's socket needs)
        (root / "var").mkdir(exist_ok=True)
        (root / "var/run").symlink_to("/run")
    # (libvirt-qemu: libvirtd looks up its built-in QEMU account before it reads qemu.conf,
    # which makes QEMU run as root; nothing runs as libvirt-qemu)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                     "libvirt-qemu:x:64055:64055::/var/lib/libvirt:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nkvm:x:36:\nlibvirt-qemu:x:64055:\n")
    # (libvirt-daemon-system, which has Debian's configuration, needs systemd: libvirtd runs
    # on its built-in defaults and this QEMU driver configuration)
    for d in ("etc/libvirt", "var/log/libvirt/qemu", "var/lib/libvirt/qemu", "var/cache/libvirt/qemu"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(LAB_RECIPE / "libvirt-qemu.conf", root / "etc/libvirt/qemu.conf")


def drop_set_ids(top: Path) -> list[Path]:
    """Clear the set-user-ID and set-group-ID bits of every file below ``top``; the files that
    had them. Root unpacks Debian packages with their modes: the lab's root file system held
    ``su``, ``passwd``, ``chsh``, ``chfn``, ``gpasswd``, ``unix_chkpwd`` setuid root (and
    ``chage`` setgid shadow) in the image cache, where any local user could run them on the
    host, copies apt never updates (a hole the host's packages fix stays open in them). L1
    runs everything as root: it needs none of the bits. No link is followed, and each file is
    changed through the folder it was found in (``os.fwalk``), so a folder swapped for a link
    meanwhile leads nowhere else."""
    dropped = []
    set_ids = stat.S_ISUID | stat.S_ISGID
    for folder, _dirs, files, dir_fd in os.fwalk(top):
        for name in files:
            try:
                first = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not (stat.S_ISREG(first.st_mode) and first.st_mode & set_ids):
                continue  # (nothing opened that is not a set-id file: no device, no FIFO)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=dir_fd)
            except OSError:  # (a link, or gone)
                continue
            try:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode) and st.st_mode & set_ids:
                    os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~set_ids)
                    dropped.append(Path(folder) / name)
            finally:
                os.close(fd)
    return dropped


def _drop_lab_set_ids(labs: Path) -> None:
    """:func:`drop_set_ids` on the root file system of every lab image of ours in ``labs``
    (the one in use, and older ones kept beside it, built before the bits were dropped)."""
    for build in labs.iterdir():
        st = os.lstat(build)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and \
                not os.path.islink(build / "root") and (build / "root").is_dir():
            drop_set_ids(build / "root")


def lab_dir(cache: Path = images.DEFAULT_CACHE) -> Path:
    return cache / "lab" / lab_digest()


def ensure_lab(cache: Path = images.DEFAULT_CACHE, log=print) -> LabImage:
    """The lab image, built first if this recipe (and these Python dependencies) never was.
    As root, refused unless the cache's folders and the whole image are root's (its root file
    system's links, paths inside L1, judged by their owner only): L1 runs as root with the
    checkout shared into it writable, so what it boots is root on this host."""
    out = lab_dir(cache)
    built_now = debroot.build_once(out, lambda d: build_lab(d, log=log), spare=1,
                                   guest_trees=("root",))
    _drop_lab_set_ids(out.parent)  # (checked: build_once judged the cache's folders)
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except ValueError as e:
        raise ImageError(f"lab image {out} has a corrupt manifest.json: {e}",
                         hint=f"delete {out} and run again to rebuild it") from e
    for need in ("vmlinux", "initrd.cpio", "root/usr/bin/qemu-system-x86_64"):
        if not (out / need).exists():
            raise ImageError(f"lab image {out} is incomplete (missing {need})",
                             hint=f"delete {out} and run again to rebuild it")
    return LabImage(out, manifest, built_now)


@dataclasses.dataclass(frozen=True)
class LabQemu:
    """The QEMU that runs L1 (not the QEMU under test, which is the lab root's, inside L1)."""
    binary: str
    version: str
    origin: str
    #: ``-L`` each: the firmware folders of a QEMU unpacked into the image cache, so that it
    #: does not take the host QEMU's (older) firmware.
    data_dirs: tuple[Path, ...] = ()

    def argv(self) -> list[str]:
        return [self.binary] + [a for d in self.data_dirs for a in ("-L", str(d))]


def _lab_qemu_recipe() -> dict:
    data = images.read_recipe_toml(LAB_QEMU_RECIPE)
    minimum = version_tuple(str(data.get("min_version", "")))
    if minimum is None:
        raise ImageError(f"{LAB_QEMU_RECIPE}: min_version is not a version like \"10.0\"",
                         hint="restore fixtures/images/lab-qemu from git")
    return {"release": data["release"], "packages": list(data["packages"]), "min_version": minimum}


def lab_qemu_folder(cache: Path) -> Path:
    """Where the recipe's QEMU is unpacked in the image cache (named by what it is built from)."""
    digest = hashlib.sha256(LAB_QEMU_RECIPE.read_bytes()
                            + Path(images.__file__).read_bytes()).hexdigest()[:16]
    return cache / "lab-qemu" / digest


def ensure_lab_qemu(cache: Path, log=print) -> LabQemu:
    """The recipe's QEMU, unpacked (without root) into the image cache once."""
    recipe = _lab_qemu_recipe()
    out = lab_qemu_folder(cache)
    # Root runs what is unpacked here: its folder chain first (root's lock file and build
    # folder go there), the whole tree before anything of it runs.
    if os.geteuid() == 0:
        check_ancestors(out, invoking_uids())

    def build(dest: Path) -> None:
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="hh-lab-qemu-", dir=dest.parent) as tmp:
            root, debs = Path(tmp) / "out", Path(tmp) / "debs"
            root.mkdir()
            debs.mkdir()
            log(f"lab QEMU: downloading {', '.join(recipe['packages'])} from {recipe['release']}")
            try:
                versions = debroot.unpack_debs(
                    [f"{p}/{recipe['release']}" for p in recipe["packages"]], debs, root)
            except ImageError as e:
                raise LabError(
                    f"cannot get the lab host's QEMU from {recipe['release']}: {e.message}",
                    hint=f"add {recipe['release']} to apt's sources and run apt-get update (as "
                         "root, `make setup` does both), or pass --lab-qemu PATH to a QEMU "
                         f"{'.'.join(map(str, recipe['min_version']))} or newer") from e
            # It runs on this host's libraries (Debian 12's: the host's own QEMU needs the same).
            ldd = subprocess.run(["ldd", str(root / "usr/bin/qemu-system-x86_64")],
                                 capture_output=True, text=True)
            missing = sorted({line.split()[0] for line in ldd.stdout.splitlines()
                              if "not found" in line})
            if ldd.returncode or missing:
                raise LabError(f"the lab host's QEMU cannot run here: missing {', '.join(missing)}"
                               f" {ldd.stderr.strip()}".rstrip(),
                               hint="install qemu-system-x86 from Debian 12 (`make setup`): its "
                                    "libraries are the ones the backported QEMU needs")
            # A manifest, as every cached build has one: the cache prunes old builds by it.
            (root / "manifest.json").write_text(json.dumps({"packages": versions}, indent=2) + "\n")
            root.rename(dest)
        log(f"lab QEMU: unpacked into {dest} in {time.monotonic() - t0:.1f} s")

    debroot.build_once(out, build, spare=1)
    check_trusted_tree(out)
    binary = out / "usr/bin/qemu-system-x86_64"
    return LabQemu(str(binary), qemu_version(str(binary)),
                   f"{recipe['release']}, unpacked in {out}",
                   (out / "usr/share/qemu", out / "usr/share/seabios"))


def choose_lab_qemu(requested: str, host_binary: str, cache: Path, log=print) -> LabQemu:
    """``--lab-qemu``: ``auto`` takes the host's QEMU if it is new enough to run nested KVM on
    TCG reliably (the recipe's ``min_version``), else the recipe's; a path is taken as given.
    As root, either is run (and kept) as the real path of a program nobody else can have
    written (:func:`trusted_program`)."""
    if requested != "auto":
        binary = trusted_program(requested)
        version = qemu_version(binary)
        if version_tuple(version) is None:
            raise ConfigError(f"--lab-qemu {requested}: not a QEMU that runs ({version})",
                              hint="pass the path of a qemu-system-x86_64, or --lab-qemu auto")
        return LabQemu(binary, version, "--lab-qemu")
    host_binary = trusted_program(host_binary)
    version = qemu_version(host_binary)
    have = version_tuple(version)
    if have is not None and have >= _lab_qemu_recipe()["min_version"]:
        return LabQemu(host_binary, version, "the host's")
    return ensure_lab_qemu(cache, log=log)



#: ``--qemu-binary backports``: the QEMU under test is the lab host's (QEMU 10 from
#: bookworm-backports, unpacked into the image cache), beside Debian 12's 7.2.
BACKPORTS = "backports"


def backports_qemu(cache: Path, log=print) -> str:
    """The recipe's QEMU as one program for ``--qemu-binary``: a wrapper in its cache folder
    that runs it with its own firmware first (``-L``), then the host's."""
    q = ensure_lab_qemu(cache, log=log)
    wrapper = Path(q.binary).parents[2] / "bin" / "qemu-system-x86_64"
    text = backports_wrapper_text(q)
    if not _wrapper_is(wrapper, text):
        with contextlib.suppress(FileExistsError):
            wrapper.parent.mkdir(mode=0o755)
        check_trusted_tree(wrapper.parent)  # (a folder another user made is no place for it)
        write_atomic(wrapper, text.encode(), mode=0o755)
    check_trusted_tree(wrapper.parent)
    return str(wrapper)


def backports_wrapper_text(q: LabQemu) -> str:
    return ("#!/bin/sh\n# hotplug-harness: --qemu-binary backports (harness/lab/image.py)\n"
            f"exec {shlex.join(q.argv())} -L /usr/share/qemu \"$@\"\n")


def _wrapper_is(wrapper: Path, text: str) -> bool:
    """Whether ``wrapper`` is the wrapper with ``text`` as made: a regular file (not a link),
    ours, executable and writable by nobody else."""
    try:
        st = os.lstat(wrapper)
    except FileNotFoundError:
        return False
    return (stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and
            st.st_mode & 0o777 == 0o755 and wrapper.read_text() == text)
