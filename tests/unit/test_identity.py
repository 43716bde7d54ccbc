"""harness.identity: what summary.json says about the host, QEMU and harness of a run."""

import subprocess

from harness.images import builtin as images
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
