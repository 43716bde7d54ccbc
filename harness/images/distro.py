"""Distribution guests built from Debian packages (root, mmdebstrap): a conventional systemd
Debian with users' habits, and cloud-image stand-ins on networkd, ifupdown and NetworkManager.
Each is a recipe folder under fixtures/images/ with a ``build`` script, cached by its digest."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from harness.core.errors import ConfigError, ImageError, tail
from harness.core.paths import checked_tempdir
from harness.images import debroot
from harness.images.builtin import DEFAULT_CACHE, REPO_ROOT


#: Recipes of conventional distribution guests: ``fixtures/images/<recipe>/build OUT_DIR
#: [VARIANT]``; a guest named ``<recipe>-<variant>`` is its recipe built with that variant (the
#: cloud image whose cloud-init renders ifupdown, or NetworkManager, instead of networkd).
DISTRO_RECIPES = REPO_ROOT / "fixtures" / "images"


DISTROS = ("systemd", "cloudinit", "cloudinit-ifupdown", "cloudinit-nm")
#: Recipes whose variants differ by a few packages: the root they share is bootstrapped once
#: (``build OUT_DIR base``, cached beside them as ``<recipe>-base``) and each variant's script
#: is given it in this environment variable. Three cloud images bootstrapped whole cost about
#: 6 CPU-minutes of make test's 52 (Dec 7).
SHARED_BASE = {"cloudinit": "HH_CLOUDINIT_BASE"}


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


def _recipe_digest(folder: Path) -> str:
    """The digest of a recipe folder: its build script and every file it copies in (the
    systemd guest's habits/*.rules), so changing any of them builds the image anew."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def ensure_distro(name: str, cache: Path = DEFAULT_CACHE, log=print) -> DistroImage:
    """The ``name`` distribution guest, built by its recipe's script the first time (needs root
    and mmdebstrap), cached by the script's digest like the built-in image."""
    if name not in DISTROS:
        raise ConfigError(f"no distribution guest {name!r}", hint=f"one of {', '.join(DISTROS)}")
    recipe, _, variant = name.partition("-")
    script = DISTRO_RECIPES / recipe / "build"
    if not script.is_file():
        raise ImageError(f"the recipe {script} is missing", hint=f"restore {script.parent} from git")
    digest = _recipe_digest(script.parent)
    env = {}
    if recipe in SHARED_BASE:  # (the stacks' images made from one bootstrap, built once)
        base = cache / f"{recipe}-base" / digest
        debroot.build_once(base, lambda dest: _build(f"{recipe}-base", script, "base", dest, log),
                           spare=1)
        env = {SHARED_BASE[recipe]: str(base / "root.tar")}
    out = cache / name / digest
    debroot.build_once(out, lambda dest: _build(name, script, variant, dest, log, env), spare=1)
    return DistroImage(out, json.loads((out / "manifest.json").read_text()))


def _build(name: str, script: Path, variant: str, dest: Path, log, extra_env=None) -> None:
    """Build the ``name`` guest with its recipe's ``script`` and put it at ``dest`` whole."""
    if os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
        raise ImageError(f"building the {name} guest needs root and mmdebstrap",
                         hint="run as root after `apt-get install mmdebstrap` (make setup "
                              "installs it)")
    t0 = time.monotonic()
    # The script makes its work folder with mktemp under $TMPDIR (the guest's root, kernel and
    # initrd go there; root copies them out): only under a temporary folder checked as the
    # harness's own are (another user's TMPDIR would let them swap that folder for a link).
    env = {**os.environ, "TMPDIR": str(checked_tempdir()), **(extra_env or {})}
    # Built in a new folder of a name nobody can predict: a ``.part`` of a predictable name,
    # planted as a link to /etc, had the build write there and chmod all of it 0444.
    aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        part = aside / "out"
        how = ("its packages added to the shared bootstrap with apt" if extra_env else
               "mmdebstrap, a few minutes")
        log(f"{name} guest: building with {script} ({how})")
        p = subprocess.run([str(script), str(part), *([variant] if variant else [])],
                           capture_output=True, text=True, env=env)
        if p.returncode:
            raise ImageError(f"{script} failed (exit {p.returncode})",
                             hint="its output is below", details=tail(p.stdout + p.stderr))
        prompt = part / "console-prompt.txt"
        manifest = {"recipe": str(script.relative_to(REPO_ROOT)),
                    "console_prompt": prompt.read_text().strip() if prompt.exists() else None,
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "build_seconds": round(time.monotonic() - t0, 1)}
        (part / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        for f in part.iterdir():  # the base image is only ever used through overlays
            os.chmod(f, 0o400 if f.name == "id_ed25519" else 0o444)
        part.rename(dest)
    finally:
        shutil.rmtree(aside, ignore_errors=True)
    log(f"{name} guest: built {dest} in {manifest['build_seconds']} s")
