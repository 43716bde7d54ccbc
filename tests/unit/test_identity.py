"""harness.identity: what summary.json says about the host, QEMU and harness of a run."""

import os
import subprocess

import pytest

from harness.images import builtin as images
from harness.report import summary as summary_mod
from harness.run import identity
from harness.run.identity import run_identity


def test_run_identity_names_host_cpu_iommu_inventory_qemu_and_commit(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold 6338\n")
    (tmp_path / "proc/cmdline").write_text("root=/dev/sda2 ro intel_iommu=on iommu=pt\n")
    for g in ("0", "1", "12"):
        (tmp_path / "sys/kernel/iommu_groups" / g).mkdir(parents=True)
    inventory = tmp_path / "inventory.toml"
    inventory.write_text('[[device]]\nrole = "nic"\n')
    i = run_identity(qemu_binary="/nonexistent/qemu", qemu_version="7.2.22", inventory=inventory,
                     args=["tests/scenarios", "-k", "nic and q35"], root=tmp_path)
    assert i["cpu"] == "Intel(R) Xeon(R) Gold 6338"
    assert i["iommu"] == "3 IOMMU groups (intel_iommu=on iommu=pt)"
    assert len(i["inventory_sha256"]) == 64
    assert i["inventory_roles"] == ["nic"]
    assert i["qemu"] == {"binary": "/nonexistent/qemu", "version": "7.2.22", "build": None}
    assert i["command"] == "pytest tests/scenarios -k 'nic and q35'"
    head = subprocess.run(["git", "-C", str(images.REPO_ROOT), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    assert i["harness"]["commit"] == head and i["harness"]["version"]


def _repo_with_fsmonitor(tmp_path):
    """A real repository whose .git/config names an fsmonitor hook that leaves a mark when run
    (what a group member who can write .git/config would plant)."""
    repo, mark = tmp_path / "repo", tmp_path / "ran-as-root"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    (repo / "f").write_text("one\n")
    subprocess.run(git + ["add", "f"], check=True)
    subprocess.run(git + ["commit", "-qm", "one"], check=True)
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ntouch {mark}\n")
    hook.chmod(0o755)
    with open(repo / ".git/config", "a") as f:
        f.write(f"[core]\n\tfsmonitor = {hook}\n")
    head = subprocess.run(git[:3] + ["rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    return repo, mark, head


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give .git/config to another "
                                              "user (nobody): run as root, as CI does")
def test_as_root_git_never_runs_on_a_git_config_others_can_write(tmp_path, monkeypatch):
    """Issue 31, third review, item 2: root ran `git status` on the repository, and a
    group-writable .git/config's core.fsmonitor ran a group member's code as root."""
    repo, mark, head = _repo_with_fsmonitor(tmp_path)
    os.chown(repo / ".git/config", 65534, 65534)
    (repo / ".git/config").chmod(0o664)
    monkeypatch.setattr(images, "REPO_ROOT", repo)
    h = identity._harness_version()
    assert not mark.exists(), "the fsmonitor hook ran as root"
    assert h["commit"] == head
    assert h["dirty"] == "not checked (.git writable by others)"
    assert "local changes not checked (.git writable by others)" in summary_mod.identity_line(
        {"identity": {"harness": h}})


@pytest.mark.skipif(os.geteuid() != 0, reason="checks what root runs: run as root, as CI does")
def test_as_root_git_runs_no_fsmonitor_even_on_roots_own_git(tmp_path, monkeypatch):
    """On a .git only root can write, git runs, with the fsmonitor and the hooks turned off."""
    repo, mark, head = _repo_with_fsmonitor(tmp_path)
    monkeypatch.setattr(images, "REPO_ROOT", repo)
    assert identity._harness_version()["dirty"] is False
    (repo / "f").write_text("two\n")
    h = identity._harness_version()
    assert not mark.exists(), "the fsmonitor hook ran as root"
    assert h["commit"] == head and h["dirty"] is True
