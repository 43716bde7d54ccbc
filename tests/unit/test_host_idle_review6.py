"""Issue 31, sixth adversarial read: root built into, booted from and chmod-ed through an image
cache others could write; wrote a lab run's folder, disks and summary through what another
user planted; and judged a guest's disk by where its link led at one moment, then used where it
led the next. Each test fails on the code before its fix. Real files, real links, and a second
user (nobody); builders and the lab's boot stubbed (no image is built, no guest booted)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.core.paths import UnsafePathError
from harness.images import builtin as builtin_images
from harness.images import debroot, distro
from harness.lab import image as lab_image
from harness.lab import outer, reruns
from harness.run import guests

from . import test_host_idle_review5 as review5
from .test_host_idle_review5 import NOBODY, as_nobody, as_root, qcow2, user_guest
from .test_paths import _check_tree, _checkout

shared_tmp = review5.shared_tmp  # (a fixture: a sticky folder others can write, like /tmp)


def mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o7777


def roots_secret(folder: Path) -> Path:
    """A folder of root's with a private file in it: what a planted link points root at."""
    folder.mkdir(mode=0o700)
    secret = folder / "id_rsa"
    secret.write_text("PRIVATE")
    secret.chmod(0o600)
    return secret


# -- 1. the image cache: checked before anything is made or run there --------------------------


@as_root
def test_1_a_part_link_in_a_cache_another_user_owns_is_not_built_into(tmp_path, monkeypatch):
    """--image-cache DIR of nobody's: nobody plants DIR/systemd/<digest>.part -> a folder of
    root's; ``rmtree(part, ignore_errors=True)`` failed silently on the link, the build wrote
    through it and chmod-ed every file there 0444."""
    secret = roots_secret(tmp_path / "roots")
    cache = tmp_path / "cache"
    (cache / "systemd").mkdir(parents=True)
    digest = distro._recipe_digest(distro.DISTRO_RECIPES / "systemd")
    part = cache / "systemd" / f"{digest}.part"
    part.symlink_to(secret.parent)
    subprocess.run(["chown", "-hR", f"{NOBODY}:{NOBODY}", str(cache)], check=True)
    built = []
    real_run = subprocess.run

    def builder(argv, **kw):  # the recipe's build script: its files into OUT_DIR
        if argv[0] != str(distro.DISTRO_RECIPES / "systemd" / "build"):
            return real_run(argv, **kw)
        built.append(argv[1])
        Path(argv[1]).mkdir(exist_ok=True)
        for name in ("disk.qcow2", "vmlinuz", "initrd.img", "append.txt"):
            (Path(argv[1]) / name).write_text("x")
        return SimpleNamespace(returncode=0, stdout="", stderr="")

    monkeypatch.setattr(subprocess, "run", builder)
    monkeypatch.setattr(distro.shutil, "which", lambda name: f"/usr/bin/{name}")
    with pytest.raises(UnsafePathError, match=f"{cache}.* is owned by uid {NOBODY}"):
        distro.ensure_distro("systemd", cache, log=lambda s: None)
    assert built == [] and mode(secret) == 0o600 and sorted(os.listdir(secret.parent)) == \
        ["id_rsa"]


@as_root
def test_1_a_distribution_guest_builds_aside_under_a_name_nobody_can_predict(tmp_path,
                                                                              monkeypatch):
    """In root's own cache the build goes to a new folder (mkdtemp), never ``<digest>.part``."""
    cache = tmp_path / "cache"
    seen = []

    def builder(argv, **kw):
        seen.append(Path(argv[1]))
        Path(argv[1]).mkdir()
        for name in ("disk.qcow2", "vmlinuz", "initrd.img", "append.txt"):
            (Path(argv[1]) / name).write_text("x")
        return SimpleNamespace(returncode=0, stdout="", stderr="")

    monkeypatch.setattr(distro.subprocess, "run", builder)
    monkeypatch.setattr(distro.shutil, "which", lambda name: f"/usr/bin/{name}")
    image = distro.ensure_distro("systemd", cache, log=lambda s: None)
    [out_dir] = seen
    assert not out_dir.name.endswith(".part") and out_dir.parent.parent == image.folder.parent
    assert not out_dir.parent.exists(), "the folder built aside is removed"
    assert mode(image.folder / "disk.qcow2") == 0o444


def planted_lab_image(cache: Path) -> Path:
    """A lab image "already built" in ``cache`` (its folder name is predictable)."""
    out = cache / "lab" / lab_image.lab_digest()
    for rel in ("root/usr/bin", "root/etc/hh"):
        (out / rel).mkdir(parents=True)
    for rel in ("vmlinux", "initrd.cpio", "root/usr/bin/qemu-system-x86_64",
                "root/etc/hh/lab-stage2"):
        (out / rel).write_text("")
    (out / "manifest.json").write_text("{}\n")
    (out / "root/bin").symlink_to("usr/bin")
    (out / "root/etc/rmt").symlink_to("/usr/sbin/rmt")  # a path inside L1, not on this host
    return out


@as_root
def test_1_a_lab_image_planted_in_a_cache_others_can_write_is_not_booted(tmp_path):
    """ensure_lab checked nothing: a kernel, initrd and root file system nobody planted in an
    others-writable cache were booted as L1, which runs as root with the checkout shared into
    it writable."""
    cache = tmp_path / "cache"
    out = planted_lab_image(cache)
    assert lab_image.ensure_lab(cache, log=lambda s: None).folder == out  # links in root/: ok
    cache.chmod(0o777)
    with pytest.raises(UnsafePathError, match=f"the folder {cache} above .* is writable by"):
        lab_image.ensure_lab(cache, log=lambda s: None)
    cache.chmod(0o755)
    (out / "root/etc/hh/lab-stage2").chmod(0o666)  # what L1 runs as root at its start
    with pytest.raises(UnsafePathError, match="lab-stage2 .* is writable by others"):
        lab_image.ensure_lab(cache, log=lambda s: None)
    (out / "root/etc/hh/lab-stage2").chmod(0o644)
    os.lchown(out / "root/bin", NOBODY, NOBODY)
    with pytest.raises(UnsafePathError, match=f"the link {out}/root/bin .* is owned by uid "
                                              f"{NOBODY}"):
        lab_image.ensure_lab(cache, log=lambda s: None)


@as_root
def test_1_a_builtin_image_planted_in_a_cache_others_can_write_is_not_booted(tmp_path):
    cache = tmp_path / "cache"
    out = builtin_images.builtin_dir(cache)
    out.mkdir(parents=True)
    for name in ("vmlinux", "initrd.cpio", "id_ecdsa"):
        (out / name).write_text("")
    (out / "manifest.json").write_text("{}\n")
    assert builtin_images.ensure_builtin(cache, log=lambda s: None).kernel == out / "vmlinux"
    os.chown(out / "initrd.cpio", NOBODY, NOBODY)
    with pytest.raises(UnsafePathError, match=f"{out}/initrd.cpio .* is owned by uid {NOBODY}"):
        builtin_images.ensure_builtin(cache, log=lambda s: None)


@as_root
def test_1_prune_leaves_what_a_link_leads_to_alone(tmp_path):
    """An old build holding ``x -> /etc/passwd`` (here a file of root's): prune chmod-ed the
    link's target 0600 (``is_file()`` and ``chmod`` follow links); and a build folder that is
    a link was looked into the same way."""
    secret = roots_secret(tmp_path / "roots")
    secret.chmod(0o644)
    cache = tmp_path / "cache"
    for name in ("new", "old"):
        (cache / name).mkdir(parents=True)
        (cache / name / "manifest.json").write_text("{}\n")
    (cache / "old" / "x").symlink_to(secret)
    (secret.parent / "manifest.json").write_text("{}\n")
    (cache / "linked").symlink_to(secret.parent)
    debroot.prune(cache, keep=cache / "new", spare=0)
    assert mode(secret) == 0o644 and secret.read_text() == "PRIVATE"
    assert not (cache / "old").exists() and (cache / "new").is_dir()
    assert sorted(os.listdir(secret.parent)) == ["id_rsa", "manifest.json"]
    assert mode(secret.parent / "manifest.json") == 0o644


@as_root
def test_1_check_root_tree_looks_at_the_lab_and_distribution_images(tmp_path):
    """It pruned fixtures/images/build/*/*/*, which skipped lab/<digest>/vmlinux, initrd.cpio
    and root/ (booted as L1, root on this host) and every distribution guest's disk."""
    top = _checkout(tmp_path / "srv" / "hotplug-harness")
    build = top / "fixtures/images/build"
    (build / "systemd/737cd9c22fe5fdfe").mkdir(parents=True)
    files = [build / "lab/4567/vmlinux", build / "lab/4567/root/etc/hh-lab-stage2",
             build / "systemd/737cd9c22fe5fdfe/disk.qcow2"]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("")
    (build / "lab/4567/root/etc/rmt").symlink_to("/usr/sbin/rmt-not-on-this-host")
    assert _check_tree(top).returncode == 0, _check_tree(top).stderr
    for f in files:
        f.chmod(0o666)
        r = _check_tree(top)
        assert r.returncode == 1 and str(f) in r.stderr, r.stderr
        f.chmod(0o644)
    os.lchown(build / "lab/4567/root/etc/rmt", NOBODY, NOBODY)
    r = _check_tree(top)
    assert r.returncode == 1 and "4567/root/etc/rmt" in r.stderr, r.stderr


# -- 2. the lab's run folder, its disks and console, and lab-runs' summary ----------------------


def lab_config(report_root: Path, cache: Path) -> SimpleNamespace:
    opt = SimpleNamespace(qemu_binary="qemu-system-x86_64", image_cache=str(cache),
                          report_dir=str(report_root), machine=None, lab_qemu="auto")
    root = str(Path(outer.__file__).parents[2])
    return SimpleNamespace(option=opt, rootpath=root,
                           invocation_params=SimpleNamespace(dir=root, args=[]))


@as_root
def test_2_a_lab_run_folder_planted_in_a_shared_report_folder_is_refused(shared_tmp, tmp_path,
                                                                        monkeypatch):
    """--report-dir a sticky folder others can write: nobody makes run-<time>-<pid> for the
    next seconds (the PID is seen before); the lab's run wrote its job (run by L1 as root), its
    disks and its run configuration into nobody's folder."""
    now = time.time()
    planted = [shared_tmp / f"run-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now + s))}-"
                            f"{os.getpid()}" for s in range(0, 20)]
    as_nobody(" ".join(["mkdir", "-m", "777", *map(str, planted)]))
    monkeypatch.setattr(outer.images, "ensure_builtin", lambda cache, log: SimpleNamespace(
        manifest={}))
    monkeypatch.setattr(outer, "ensure_lab", lambda cache, log: SimpleNamespace(
        folder=Path("/x"), manifest={}, built_now=False))
    monkeypatch.setattr(outer, "choose_lab_qemu", lambda *a, **k: SimpleNamespace(
        version="10", origin="stub", argv=lambda: ["qemu"]))
    booted = []
    monkeypatch.setattr(outer, "_boot_and_wait", lambda *a: booted.append(a) or 0)
    with pytest.raises(UnsafePathError, match=f"is owned by uid {NOBODY}"):
        outer.run_outer(lab_config(shared_tmp, tmp_path / "cache"), echo=lambda s: None)
    assert booted == [] and all(list(p.iterdir()) == [] for p in planted)


def test_2_the_lab_hosts_disks_are_new_files_never_written_through_a_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"host data")
    (tmp_path / "sata-disk.raw").symlink_to(victim)
    image = lab_image.LabImage(tmp_path / "img", {})
    with pytest.raises(OSError):
        lab_image_argv(image, tmp_path)
    assert victim.read_bytes() == b"host data"


def lab_image_argv(image, workdir: Path) -> list[str]:
    from harness.lab import lab_argv
    return lab_argv(image, ["qemu-system-x86_64"], workdir, {}, None)


FAKE_LAB_PYTEST = r'''
import os, sys
from pathlib import Path
args = sys.argv[1:]
report = Path(args[args.index("--report-dir") + 1])
mine = report / f"run-20261205-000000-{{os.getpid()}}"
mine.mkdir(mode=0o700)
# nobody, who sees the PID, plants look-alikes that sort after it
theirs = report / f"run-20991231-235959-{{os.getpid()}}"
theirs.symlink_to({victim!r})
os.lchown(theirs, {nobody}, {nobody})
other = report / f"run-20991231-235958-{{os.getpid()}}"
other.mkdir(mode=0o777)
os.chmod(other, 0o777)
os.chown(other, {nobody}, {nobody})
sys.exit(0)
'''


@as_root
def test_2_lab_runs_takes_only_its_own_run_folder(tmp_path):
    """``sorted(glob("run-*-<pid>"))[-1]``: a link (or a folder) nobody planted with a later
    time was taken as the run's, and lab-runs.json written through the link."""
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    fake = tmp_path / "fake_pytest.py"
    fake.write_text(FAKE_LAB_PYTEST.format(victim=str(victim), nobody=NOBODY))
    report = tmp_path / "reports"
    report.mkdir()
    status = reruns.run([sys.executable, str(fake)], [], report, runs=1, echo=lambda s: None)
    assert status == 0 and list(victim.iterdir()) == []
    [summary] = report.glob("run-*/lab-runs.json")
    assert summary.parent.name == f"run-20261205-000000-{summary.parent.name.rsplit('-', 1)[1]}"
    assert json.loads(summary.read_text())["runs"][0]["run_dir"] == str(summary.parent)


# -- 3. your own guest's files: the link judged, and what was judged is what is used ----------


@as_root
def test_3_a_guest_disk_through_another_users_link_is_refused(shared_tmp, tmp_path):
    """``Path(v).resolve()`` before the check: the link itself, nobody's, was never judged."""
    disk, key = qcow2(tmp_path / "flat.qcow2"), tmp_path / "id_ed25519"
    key.write_text("")
    link = shared_tmp / "disk.qcow2"
    as_nobody(f"ln -s {disk} {link}")
    with pytest.raises(UnsafePathError, match=f"--guest-disk: the link {link} .* is owned by "
                                              f"uid {NOBODY}"):
        guests.user_image(user_guest(tmp_path, guest_disk=str(link), guest_key=str(key)))
    listed = tmp_path / "guests.toml"
    listed.write_text(f'[[guest]]\nname = "rhel"\ndisk = "{link}"\nready = "# "\n')
    with pytest.raises(UnsafePathError, match=f"guest 'rhel': disk: the link {link} .* is "
                                              f"owned by uid {NOBODY}"):
        guests.resolve([str(listed)], tmp_path, tmp_path / "seeds")


@as_root
def test_3_the_disk_root_uses_is_the_one_that_was_checked(tmp_path, monkeypatch):
    """The disk was checked through its link, then ``GuestImage(disk=_path(...))`` resolved
    the link again: re-pointed meanwhile (to a qcow2 backed by the host's disk), root's QEMU
    got a disk nobody checked."""
    good, key = qcow2(tmp_path / "flat.qcow2"), tmp_path / "id_ed25519"
    key.write_text("")
    base = tmp_path / "nvme0n1"
    base.write_bytes(b"\0" * (1 << 20))
    evil = qcow2(tmp_path / "evil.qcow2", backing=base)
    link = tmp_path / "disk.qcow2"
    link.symlink_to(good)
    real_references, asked = guests._references, []

    def references_then_swap(disk, fmt):
        asked.append(Path(disk))
        out = real_references(disk, fmt)
        link.unlink()
        link.symlink_to(evil)
        return out

    monkeypatch.setattr(guests, "_references", references_then_swap)
    image = guests.user_image(user_guest(tmp_path, guest_disk=str(link), guest_key=str(key)))
    assert asked == [good] and image.disk == good
