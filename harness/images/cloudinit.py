"""What a stock cloud image needs to boot under the harness: an SSH key made for the run and a
NoCloud seed (a vfat disk labelled CIDATA) that hands it to cloud-init."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

from harness.core.errors import ImageError


#: DHCP on NICs that appear later (hot-added ones): the image's cloud-init brings up its first
#: NIC by itself (its fallback network config), and systemd-networkd images get a rule for the
#: rest; NetworkManager images connect new NICs on their own. No network-config: it would
#: replace the fallback, and cloud-init 22.4 cannot say "every NIC" in one that its ifupdown and
#: NetworkManager renderers keep (docs/guests.md, "Why the NoCloud seed has no network-config").
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
