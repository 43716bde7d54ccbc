"""The nested lab host (``--backend lab``): the real vfio path on a machine without VT-d.

The lab host (L1) is a QEMU guest under TCG with an emulated Intel IOMMU
(``-M q35 -cpu max -device intel-iommu,intremap=on,caching-mode=on``, kernel ``intel_iommu=on``)
and emulated devices that play the host devices of a VT-d lab:

====================  ==============  ===================================================
role                  L1 address      device
====================  ==============  ===================================================
nic                   0000:00:03.0    e1000e on QEMU user networking (gateway 10.0.5.2)
sata-controller       0000:00:04.0    ich9-ahci with a 64 MiB disk
usb-controller        0000:00:05.0    qemu-xhci with a usb-tablet behind it
usb-device            (EHCI bus)      usb-storage (32 MiB) on a usb-ehci at 0000:00:06.0
====================  ==============  ===================================================

Inside L1 those devices are real PCI and USB devices of a real Linux host: the harness binds them
to vfio-pci through sysfs, and the L2 guests (QEMU with KVM on L1's emulated SVM) take them with
``device_add vfio-pci,host=...`` and ``usb-host`` (libusb), exactly as on a VT-d host.

How the run crosses into the lab: the outer ``pytest --backend lab`` does not collect anything.
It builds the lab image (cached like the guest image), boots L1 once with the repository (and the
report and image folders) shared in at the same paths over virtio-9p, and runs the same pytest
command line inside L1, where :func:`write_inventory` discovers the lab's devices and writes the
lab's own inventory, and the vfio backend's code runs unchanged. The report, written by the run
inside, names the backend ``lab`` and, per test, the host device it passed through.

The lab root is Debian packages (QEMU, Python, busybox, ...) unpacked without root, plus the
harness's Python dependencies copied from ``.venv``; it is read-only to L1 (a tmpfs overlay takes
the writes), so no run can change it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from . import images, pace
from .errors import ConfigError, HarnessError, ImageError, LabError, QemuLaunchError
from .host.sysfs import Sysfs
from .machine import MACHINES
from .process import QemuProcess
from .runconfig import LabContext, RunConfig

LAB_RECIPE = images.REPO_ROOT / "fixtures" / "images" / "lab"
#: The QEMU that runs L1 when the host's is too old for nested KVM on TCG (see its recipe).
LAB_QEMU_RECIPE = images.REPO_ROOT / "fixtures" / "images" / "lab-qemu" / "recipe.toml"
#: Part of the lab image's cache key: change it whenever build_lab() changes what it builds.
LAB_IMAGE_VERSION = "1"
#: Inside L1: the folder the outer run writes the job into, and the lab's own inventory.

#: The lab's devices, by role: (L1 PCI address, what the L2 guest must see).
NIC_BDF = "0000:00:03.0"
SATA_BDF = "0000:00:04.0"
XHCI_BDF = "0000:00:05.0"
EHCI_BDF = "0000:00:06.0"
#: Q35's own AHCI, sharing IOMMU group with the LPC bridge and SMBus: never viable alone.
GROUPED_BDF = "0000:00:1f.2"
LAB_GATEWAY = "10.0.5.2"
SHARE_SLOT = 0x10  # the lab root's 9p device; the shared folders' follow it
MAX_SHARES = 8
SATA_DISK_BYTES = 64 << 20
STICK_BYTES = 32 << 20
STICK_IDS = ("0x46f4", "0x0001")
STICK_PRODUCT = "QEMU USB HARDDRIVE"
TABLET_PRODUCT = "QEMU USB Tablet"


# -- the lab image -----------------------------------------------------------------------------


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
    h.update(Path(images.__file__).read_bytes())
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
        out = images._run(["apt-cache", "depends", "--no-recommends", "--no-suggests",
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
        versions = images.unpack_debs(closure, debs, root)
        for link, target in (("usr/bin/sh", "dash"), ("usr/bin/python3", "python3.11")):
            (root / link).unlink(missing_ok=True)
            (root / link).symlink_to(target)
        images._check_libraries(root, ("/usr/bin/qemu-system-x86_64", "/usr/bin/qemu-img",
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
    """Stage 2, the mount points and the accounts of the lab's root file system."""
    (root / "etc/hh").mkdir(parents=True, exist_ok=True)
    shutil.copy2(LAB_RECIPE / "stage2", root / "etc/hh/lab-stage2")
    for d in ("proc", "sys", "dev", "run", "tmp", "root"):
        (root / d).mkdir(exist_ok=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nkvm:x:36:\n")


def lab_dir(cache: Path = images.DEFAULT_CACHE) -> Path:
    return cache / "lab" / lab_digest()


def ensure_lab(cache: Path = images.DEFAULT_CACHE, log=print) -> LabImage:
    """The lab image, built first if this recipe (and these Python dependencies) never was."""
    out = lab_dir(cache)
    built_now = images.build_once(out, lambda d: build_lab(d, log=log), spare=1)
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


# -- the QEMU that runs the lab host -------------------------------------------------------------


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
    from .process import version_tuple

    data = images.read_recipe_toml(LAB_QEMU_RECIPE)
    minimum = version_tuple(str(data.get("min_version", "")))
    if minimum is None:
        raise ImageError(f"{LAB_QEMU_RECIPE}: min_version is not a version like \"10.0\"",
                         hint="restore fixtures/images/lab-qemu from git")
    return {"release": data["release"], "packages": list(data["packages"]), "min_version": minimum}


def ensure_lab_qemu(cache: Path, log=print) -> LabQemu:
    """The recipe's QEMU, unpacked (without root) into the image cache once."""
    from .process import qemu_version

    recipe = _lab_qemu_recipe()
    digest = hashlib.sha256(LAB_QEMU_RECIPE.read_bytes()
                            + Path(images.__file__).read_bytes()).hexdigest()[:16]
    out = cache / "lab-qemu" / digest

    def build(dest: Path) -> None:
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="hh-lab-qemu-", dir=dest.parent) as tmp:
            root, debs = Path(tmp) / "out", Path(tmp) / "debs"
            root.mkdir()
            debs.mkdir()
            log(f"lab QEMU: downloading {', '.join(recipe['packages'])} from {recipe['release']}")
            try:
                versions = images.unpack_debs(
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

    images.build_once(out, build, spare=1)
    binary = out / "usr/bin/qemu-system-x86_64"
    return LabQemu(str(binary), qemu_version(str(binary)),
                   f"{recipe['release']}, unpacked in {out}",
                   (out / "usr/share/qemu", out / "usr/share/seabios"))


def choose_lab_qemu(requested: str, host_binary: str, cache: Path, log=print) -> LabQemu:
    """``--lab-qemu``: ``auto`` takes the host's QEMU if it is new enough to run nested KVM on
    TCG reliably (the recipe's ``min_version``), else the recipe's; a path is taken as given."""
    from .process import qemu_version, version_tuple

    if requested != "auto":
        version = qemu_version(requested)
        if version_tuple(version) is None:
            raise ConfigError(f"--lab-qemu {requested}: not a QEMU that runs ({version})",
                              hint="pass the path of a qemu-system-x86_64, or --lab-qemu auto")
        return LabQemu(requested, version, "--lab-qemu")
    version = qemu_version(host_binary)
    have = version_tuple(version)
    if have is not None and have >= _lab_qemu_recipe()["min_version"]:
        return LabQemu(host_binary, version, "the host's")
    return ensure_lab_qemu(cache, log=log)


# -- the lab host (L1) ---------------------------------------------------------------------------


def _lab_devices(disk: Path, stick: Path) -> list[str]:
    """The emulated devices that play the lab's host devices (see the table above)."""
    return [
        "-netdev", "user,id=labnet,net=10.0.5.0/24",
        "-device", "e1000e,netdev=labnet,id=labnic,bus=pcie.0,addr=0x3,romfile=",
        "-drive", f"if=none,id=labdisk,file={disk},format=raw",
        "-device", "ich9-ahci,id=labahci,bus=pcie.0,addr=0x4",
        "-device", "ide-hd,drive=labdisk,bus=labahci.0",
        "-device", "qemu-xhci,id=labxhci,bus=pcie.0,addr=0x5",
        "-device", "usb-tablet,bus=labxhci.0",
        "-device", "usb-ehci,id=labehci,bus=pcie.0,addr=0x6",
        "-drive", f"if=none,id=labstick,file={stick},format=raw",
        "-device", "usb-storage,drive=labstick,bus=labehci.0",
    ]


def lab_argv(image: LabImage, qemu: list[str], workdir: Path, shares: dict[str, Path],
             job: Path | None, memory_mb: int = 4096, cpus: int = 2) -> list[str]:
    """L1's command line; ``qemu`` is the emulator's own part (:meth:`LabQemu.argv`)."""
    disk, stick = workdir / "sata-disk.raw", workdir / "usb-stick.raw"
    from .devices import _disk_image

    for path, size in ((disk, SATA_DISK_BYTES), (stick, STICK_BYTES)):
        _disk_image(path, size)  # two partitions, like the guide's /dev/sdb
    share_arg = ",".join(f"{tag}:{path}" for tag, path in shares.items())
    append = ("console=ttyS0 intel_iommu=on iommu=pt panic=-1 quiet loglevel=3 "
              f"hh.shares={share_arg} hh.job={job or ''}")
    argv = [*qemu, "-name", "hh-lab", "-M", "q35", "-accel", "tcg,tb-size=512",
            "-cpu", "max", "-smp", str(cpus), "-m", str(memory_mb),
            "-nodefaults", "-display", "none", "-no-reboot",
            "-chardev", f"file,id=console,path={workdir / 'console.log'}", "-serial", "chardev:console",
            "-device", "intel-iommu,intremap=on,caching-mode=on",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", append,
            "-fsdev", f"local,id=labroot,path={image.root},security_model=none,readonly=on,"
                      "multidevs=remap",
            "-device", f"virtio-9p-pci,fsdev=labroot,mount_tag=labroot,addr={SHARE_SLOT:#x}"]
    # The shares at fixed slots too: auto-assigned ones took 00:03.0 from the lab NIC when a
    # run had more shares than usual (a --report-dir outside the repository).
    if len(shares) > MAX_SHARES:
        raise ConfigError(f"the lab host takes at most {MAX_SHARES} shared folders, not "
                          f"{len(shares)}", hint="keep the report folder and image cache under "
                                                 "the repository")
    for i, (tag, path) in enumerate(shares.items(), start=1):
        argv += ["-fsdev", f"local,id={tag},path={path},security_model=none,multidevs=remap",
                 "-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag},addr={SHARE_SLOT + i:#x}"]
    return argv + _lab_devices(disk, stick)


def shares_for(paths: list[Path]) -> dict[str, Path]:
    """The host folders to share into the lab (each at its own path), without nesting."""
    out: list[Path] = []
    for p in sorted({p.resolve() for p in paths}, key=lambda p: (len(p.parts), str(p))):
        if any(p == q or q in p.parents for q in out):
            continue
        if p.parts[1:2] and p.parts[1] in ("proc", "sys", "dev"):
            raise ConfigError(f"cannot share {p} into the lab host: the lab host has its own "
                              f"/{p.parts[1]}", hint="run from (and report into) a plain path")
        if re.search(r"[\s,:]", str(p)):
            raise ConfigError(f"cannot share {p} into the lab host: its path has a space, comma "
                              "or colon", hint="run from (and report into) a plain path")
        out.append(p)
    return {f"share{i}": p for i, p in enumerate(out)}


class LabHost:
    """One L1 QEMU process running one job, its console copied to a log and to ``echo``."""

    def __init__(self, argv: list[str], workdir: Path, *, boot_timeout: float,
                 silence_timeout: float, echo=None):
        """``boot_timeout``: QEMU start to "lab: ready" (a lab not up by then hangs in its
        boot and would otherwise be noticed only at --lab-timeout). ``silence_timeout``: after
        "lab: ready" the run inside prints at least a character a test; a lab host silent for
        this long is hung (seen once: nested KVM on TCG wedged L1), not slow."""
        self.argv = argv
        self.boot_timeout = boot_timeout
        self.silence_timeout = silence_timeout
        self.workdir = workdir
        self.console_log = workdir / "console.log"
        self.qemu_log = workdir / "qemu.log"
        self.echo = echo
        self.qemu = QemuProcess(argv, self.qemu_log)
        self.marks: dict[str, float] = {}

    @property
    def process(self) -> subprocess.Popen | None:
        return self.qemu.popen

    def run(self, deadline: float) -> int:
        """Start L1 and copy its console until it powers off; QEMU's exit status."""
        (self.workdir / "lab.cmdline").write_text(shlex.join(self.argv) + "\n")
        t0 = time.monotonic()
        self.console_log.touch()
        try:
            self.qemu.start()
        except QemuLaunchError as e:
            raise LabError(f"cannot start the lab host: {e.message}", hint=e.hint) from e
        self._pos, self._pending, heard = 0, b"", t0
        try:
            while True:
                done = self.process.poll() is not None
                if self._copy_console(t0):
                    heard = time.monotonic()
                if done:
                    return self._ended()
                self._check_deadlines(t0, heard, deadline)
                time.sleep(0.2)
        finally:
            self.stop()

    def _copy_console(self, t0: float) -> bool:
        """Copy what the console log gained to ``echo``, noting the lab's marks; whether it
        gained anything."""
        with open(self.console_log, "rb") as f:
            f.seek(self._pos)
            chunk = f.read()
        self._pos += len(chunk)
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            m = re.match(r"lab: (stage 1 done|ready)", line)
            if m:
                self.marks[m.group(1)] = round(time.monotonic() - t0, 2)
            if self.echo:
                self.echo(line)
        return bool(chunk)

    def _ended(self) -> int:
        if self._pending and self.echo:
            self.echo(self._pending.decode("utf-8", "replace"))
        if self.process.returncode and self.echo:
            for line in self.qemu_log.read_text(errors="replace").splitlines()[-10:]:
                self.echo(f"lab QEMU: {line}")
        return self.process.returncode

    def _check_deadlines(self, t0: float, heard: float, deadline: float) -> None:
        now = time.monotonic()
        if "ready" not in self.marks and now > t0 + self.boot_timeout:
            raise LabError(f"the lab host did not boot in {self.boot_timeout:g} s (no "
                           f"'lab: ready' on its console {self.console_log})",
                           hint="its last console lines say where it stopped")
        if "ready" in self.marks and now > heard + self.silence_timeout:
            raise LabError(f"the lab host has printed nothing for {self.silence_timeout:g} s:"
                           f" it is hung (console: {self.console_log})",
                           hint="the guests of the test that was running are in the run "
                                "folder's guests/; run again, and if it recurs, report it "
                                "with the console log")
        if now > deadline:
            raise LabError(f"the lab host did not finish in time (console: {self.console_log})",
                           hint="look at the console log; raise --lab-timeout if the run "
                                "was only slow")

    def stop(self) -> None:
        """L1 has no QMP: SIGTERM (QEMU powers the lab off), then SIGKILL; always reaped."""
        self.qemu.stop(waits=(0.0, 10.0, 10.0))


# -- the outer run -------------------------------------------------------------------------------


def run_outer(config, echo=print) -> int:
    """``pytest --backend lab`` on the host: build, boot L1, run the same pytest inside it."""
    opt = config.option
    t0 = time.monotonic()
    cache = Path(opt.image_cache or images.DEFAULT_CACHE).resolve()
    guest = images.ensure_builtin(cache, log=echo)
    image = ensure_lab(cache, log=echo)
    l1_qemu = choose_lab_qemu(opt.lab_qemu, opt.qemu_binary, cache, log=echo)
    report_root = Path(opt.report_dir).resolve()
    run = RunConfig.new(report_root, backend="lab", qemu_binary=opt.qemu_binary,
                        machines=tuple(opt.machine or MACHINES))
    workdir = run.run_dir / "lab"
    workdir.mkdir(parents=True)
    run.lab = LabContext(workdir, {"folder": str(image.folder),
                                   "build_seconds": image.manifest.get("build_seconds"),
                                   "built_now": image.built_now,
                                   "l1_qemu": f"{l1_qemu.version} ({l1_qemu.origin})"})
    invocation = Path(config.invocation_params.dir).resolve()
    shares = shares_for([Path(config.rootpath), invocation, report_root, cache])
    job = write_job(workdir, run.write(), invocation, Path(config.rootpath).resolve(),
                    [str(a) for a in config.invocation_params.args])
    return _boot_and_wait(opt, image, l1_qemu, guest, workdir, shares, job, t0, echo)


def _boot_and_wait(opt, image, l1_qemu, guest, workdir: Path, shares, job: Path, t0: float,
                   echo) -> int:
    """Boot L1 with the job, copy its console until it powers off, write lab.json."""
    echo(f"hotplug-harness: backend=lab: lab host image {image.folder.name} "
         f"({'built in ' + str(image.manifest.get('build_seconds')) + ' s' if image.built_now else 'cached'}), "
         f"guest image {guest.manifest.get('kernel_version', '')}")
    echo(f"hotplug-harness: booting the lab host (L1: q35, TCG, emulated Intel IOMMU) with QEMU "
         f"{l1_qemu.version} ({l1_qemu.origin}); its console: {workdir / 'console.log'}")
    host_pace = pace.Pace.measure("host", opt.time_factor)
    boot_timeout, silence_timeout = host_pace(pace.LAB_BOOT), host_pace(pace.LAB_SILENCE)
    echo(f"hotplug-harness: {host_pace.describe()}; lab host deadlines: ready {boot_timeout:g} s, "
         f"silence {silence_timeout:g} s")
    host = LabHost(lab_argv(image, l1_qemu.argv(), workdir, shares, job), workdir, echo=echo,
                   boot_timeout=boot_timeout, silence_timeout=silence_timeout)
    try:
        qemu_status = host.run(time.monotonic() + opt.lab_timeout)
    except HarnessError as e:
        echo(f"hotplug-harness: ERROR [{e.kind}] {e}")
        return 3
    figures = {"lab_boot_seconds": host.marks.get("ready"), "lab_qemu": l1_qemu.version,
               "wall_seconds": round(time.monotonic() - t0, 1), "qemu_exit_status": qemu_status,
               "host_pace": dataclasses.asdict(host_pace),
               "host_deadlines": {"lab_ready": boot_timeout, "lab_silence": silence_timeout},
               "inside": _read_json(workdir / INSIDE_FIGURES)}
    (workdir / "lab.json").write_text(json.dumps(figures, indent=2) + "\n")
    return _outcome(workdir, host, figures, echo)


def _outcome(workdir: Path, host: "LabHost", figures: dict, echo) -> int:
    """The exit status of the run inside, or 3 when the lab host stopped before it ended."""
    status_file = workdir / "exit_status"
    qemu_status = figures["qemu_exit_status"]
    if not status_file.exists():
        echo(f"hotplug-harness: ERROR [lab] the lab host stopped (QEMU exit status {qemu_status}) "
             f"before the test run inside it finished")
        echo(f"  what to do: read {host.console_log} (the lab host's console)")
        return 3
    echo(f"hotplug-harness: lab host ready in {figures['lab_boot_seconds']} s; whole lab run "
         f"{figures['wall_seconds']} s")
    return int(status_file.read_text().strip() or 3)


def write_job(workdir: Path, run_config: Path, invocation: Path, root: Path, args: list[str]) -> Path:
    """The job the lab host's stage 2 runs (given the lab host's uptime at "lab: ready"): the
    same pytest command, inside, reading the run configuration the outer run wrote."""
    job = workdir / "job.sh"
    job.write_text(
        "# Written by the outer `pytest --backend lab`; run by the lab host's stage 2 with its\n"
        "# uptime at ready as $1.\n"
        f"echo \"$1\" > {shlex.quote(str(workdir / LabContext.READY_FILE))}\n"
        f"export PYTHONPATH={shlex.quote(str(root))} PYTHONDONTWRITEBYTECODE=1\n"
        f"cd {shlex.quote(str(invocation))} || exit 2\n"
        f"python3.11 -m pytest {shlex.join(['--hh-run-config', str(run_config), *args])}\n"
        f"echo $? > {shlex.quote(str(workdir / 'exit_status'))}\n")
    return job


# -- inside the lab ------------------------------------------------------------------------------

#: What the run inside measured (its time factor and the L2 guests' deadlines), for lab.json.
INSIDE_FIGURES = "inside-pace.json"


def write_inside_figures(workdir: Path, deadlines: "pace.Deadlines") -> None:
    figures = dataclasses.asdict(deadlines)
    (workdir / INSIDE_FIGURES).write_text(json.dumps(figures, indent=2) + "\n")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def find_usb(vendorid: str, productid: str, root: "str | Path" = "/") -> tuple[int, int]:
    """(bus, address) of the one USB device with these ids."""
    ids = f"{vendorid[2:]}:{productid[2:]}"
    found = [(u.busnum, u.devnum) for u in Sysfs.of(root).usb_devices() if u.ids == ids]
    if len(found) != 1:
        raise LabError(f"the lab host has {len(found)} USB devices {ids} (expected the one "
                       "usb-storage behind its EHCI controller)",
                       hint="the lab host's devices are set in harness/lab.py (_lab_devices)")
    return found[0]


def write_inventory(workdir: Path, root: "str | Path" = "/") -> Path:
    """The lab's own inventory (the format of docs/vfio.md), from what the lab host has."""
    bus, addr = find_usb(*STICK_IDS, root=root)
    text = f"""# The lab host's devices (written by harness/lab.py inside the lab host).
[[device]]
role = "nic"
name = "e1000e"
bdf = "{NIC_BDF}"
gateway = "{LAB_GATEWAY}"

[[device]]
role = "sata-controller"
name = "ahci"
bdf = "{SATA_BDF}"
disk_bytes = {SATA_DISK_BYTES}

[[device]]
role = "usb-controller"
name = "xhci"
bdf = "{XHCI_BDF}"
product = "{TABLET_PRODUCT}"

[[device]]
role = "usb-device"
name = "stick"
hostbus = {bus}
hostaddr = {addr}
vendorid = "{STICK_IDS[0]}"
productid = "{STICK_IDS[1]}"
product = "{STICK_PRODUCT}"
disk_bytes = {STICK_BYTES}
"""
    path = workdir / "inventory.toml"
    path.write_text(text)
    return path
