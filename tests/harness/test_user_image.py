"""Pointing the harness at your own guest: kernel/initrd/disk options, end to end in a child
pytest run, and the base disk image is never written."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(env, *args):
    return subprocess.run([sys.executable, "-m", "pytest", "tests/scenarios", "-q", "-p", "no:xdist", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def test_own_kernel_initrd_and_disk(hotplug_session, tmp_path, child_env):
    image = hotplug_session.image
    disk = tmp_path / "data.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    before = sha256(disk)
    p = run(child_env, "--guest-kernel", str(image.kernel), "--guest-initrd", str(image.initrd),
            "--guest-append", "console=ttyS0 panic=-1 quiet", "--guest-ready", r"hh: ready",
            "--guest-disk", str(disk), "--report-dir", str(tmp_path / "reports"),
            "-k", "test_nic and pc and virtio or test_prerequisites and pc")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "warning" not in p.stdout.splitlines()[-1], p.stdout[-1500:]
    summary = json.loads((tmp_path / "reports/latest/summary.json").read_text())
    assert summary["counts"]["passed"] == 2
    assert summary["image"] == {}  # not the built-in image's manifest: the user's files ran
    assert summary["hygiene"].startswith("clean")
    assert sha256(disk) == before, "the user's disk image was written"


def test_bad_image_options_are_refused_before_anything_runs(tmp_path, child_env):
    p = run(child_env, "--guest-disk", str(tmp_path / "missing.qcow2"), "--guest-key", str(tmp_path / "key"))
    assert p.returncode == 4 and "--guest-disk" in p.stderr and "no such file" in p.stderr
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"x")
    p = run(child_env, "--guest-kernel", str(kernel))
    assert p.returncode == 4 and "needs a way in" in p.stderr
