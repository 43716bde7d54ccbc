"""Pure pieces of the image builder: cpio writer, ELF readers, kernel extraction, recipe."""

import io
import lzma
import os
import sys
from pathlib import Path

import pytest

from harness.images import debroot
from harness.images import builtin as images
from harness.images import cloudinit
from harness.core.errors import ImageError


def read_cpio(data: bytes) -> dict[str, tuple[int, int, int, bytes]]:
    """name -> (mode, uid, gid, data) of a newc archive (an independent reader)."""
    out, off = {}, 0
    while True:
        assert data[off:off + 6] == b"070701"
        fields = [int(data[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i in range(13)]
        mode, uid, gid, size, namesize = fields[1], fields[2], fields[3], fields[6], fields[11]
        name = data[off + 110: off + 110 + namesize - 1].decode()
        off += 110 + namesize
        off += -off % 4
        body = data[off: off + size]
        off += size + (-size % 4)
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, uid, gid, body)


def test_cpio_roundtrip_with_links_and_root_owner(tmp_path):
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "usr/bin/tool", 0o755)
    (root / "bin").symlink_to("usr/bin")
    buf = io.BytesIO()
    debroot.write_cpio(root, buf)
    entries = read_cpio(buf.getvalue())
    assert entries["usr/bin/tool"][3] == b"#!/bin/sh\necho hi\n"
    assert entries["usr/bin/tool"][0] & 0o777 == 0o755
    assert entries["bin"][3] == b"usr/bin" and entries["bin"][0] & 0o170000 == 0o120000
    assert all(uid == 0 and gid == 0 for _, uid, gid, _ in entries.values())
    assert "bin/tool" not in entries  # a symlinked dir is stored as the link, not walked


def test_elf_needed_reads_a_real_binary():
    needed = debroot.elf_needed(Path(sys.executable).resolve().read_bytes())
    assert any(n.startswith("libc.so") for n in needed) or needed == []


def test_elf_sections_refuses_non_elf():
    with pytest.raises(ValueError):
        debroot.elf_sections(b"not an elf")


def test_extract_vmlinux():
    payload = b"\x7fELF" + b"\0" * 100
    bz = b"MZ header" + lzma.compress(payload, format=lzma.FORMAT_XZ) + b"trailing"
    assert debroot.extract_vmlinux(bz) == payload
    with pytest.raises(ImageError, match="no xz payload"):
        debroot.extract_vmlinux(b"plain")


def test_recipe_digest_changes_with_any_file(tmp_path):
    (tmp_path / "overlay").mkdir()
    (tmp_path / "recipe.toml").write_text('kernel_package="k"\npackages=["a"]\nmodules=[]\n')
    (tmp_path / "overlay/init").write_text("one")
    r = images.Recipe.load(tmp_path)
    first = r.digest()
    (tmp_path / "overlay/init").write_text("two")
    assert images.Recipe.load(tmp_path).digest() != first


def test_recipe_unknown_key_is_refused(tmp_path):
    (tmp_path / "recipe.toml").write_text('kernel_package="k"\npackages=[]\nmodules=[]\npackage=["x"]\n')
    with pytest.raises(ImageError, match=r"unknown keys \['package'\]"):
        images.Recipe.load(tmp_path)


def test_incomplete_image_dir_says_how_to_rebuild(tmp_path):
    (tmp_path / "vmlinux").write_bytes(b"x")
    with pytest.raises(ImageError, match="make image"):
        images.image_from_dir(tmp_path)


def test_corrupt_manifest(tmp_path):
    for n in ("vmlinux", "initrd.cpio", "id_ecdsa"):
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ImageError, match="corrupt manifest"):
        images.image_from_dir(tmp_path)


def test_nocloud_seed_gives_the_runs_key_to_root_on_a_cidata_disk(tmp_path):
    """The seed cloud-init's NoCloud datasource reads: a vfat disk labelled CIDATA with
    meta-data and user-data (the run's key for root and the default user, passwords off, DHCP
    on NICs that appear later)."""
    import shutil
    import subprocess

    if not (shutil.which("mkfs.vfat") and shutil.which("mtype")):
        pytest.skip("needs dosfstools and mtools (make setup installs them as root)")
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheTest hotplug-harness run"
    seed = cloudinit.nocloud_seed(tmp_path / "seed", key)

    def read(name: str) -> str:
        return subprocess.run(["mtype", "-i", str(seed), f"::{name}"], capture_output=True,
                              text=True, check=True).stdout

    label = subprocess.run(["mlabel", "-s", "-i", str(seed), "::"], capture_output=True,
                           text=True, check=True).stdout
    assert "CIDATA" in label
    user_data = read("user-data")
    assert user_data.startswith("#cloud-config\n") and key in user_data
    assert "disable_root: false" in user_data and "ssh_pwauth: false" in user_data
    assert "Type=ether" in user_data and "DHCP=yes" in user_data
    assert read("meta-data").startswith("instance-id: hh-")


def test_prune_keeps_what_the_programs_need_and_drops_the_rest(tmp_path):
    """A fake root with real ELF files: /usr/bin/true needs libc, libc needs the loader; libz
    is needed by nothing (its absolute dev symlink must not reach the host's copy), and the
    recipe's ``drop`` globs go first."""
    host = Path("/usr/lib/x86_64-linux-gnu")
    if not (host / "libz.so.1").exists():
        pytest.skip("needs the host's zlib1g (a Debian base package) as a spare library")
    root = tmp_path / "root"
    lib = root / "usr/lib/x86_64-linux-gnu"
    lib.mkdir(parents=True)
    (root / "usr/bin").mkdir()
    (root / "lib").symlink_to("usr/lib")
    (root / "usr/share/doc/x").mkdir(parents=True)
    (root / "usr/share/doc/x/README").write_text("doc")
    (root / "usr/bin/true").write_bytes(Path("/usr/bin/true").read_bytes())
    for name in ("libc.so.6", "ld-linux-x86-64.so.2"):
        (lib / name).write_bytes((host / name).read_bytes())
    zlib = (host / "libz.so.1").resolve()
    (lib / zlib.name).write_bytes(zlib.read_bytes())
    (lib / "libz.so.1").symlink_to(zlib.name)
    (lib / "libz.so").symlink_to(f"/lib/x86_64-linux-gnu/{zlib.name}")

    removed = images._prune(root, ("usr/share/doc",))

    left = sorted(p.name for p in lib.iterdir())
    assert left == ["ld-linux-x86-64.so.2", "libc.so.6"]
    assert not (root / "usr/share/doc").exists() and (root / "usr/bin/true").exists()
    assert removed == zlib.stat().st_size + len("doc")
    assert (host / "libz.so.1").exists()  # the host's own copy is untouched


def test_recipe_drop_key_is_read(tmp_path):
    (tmp_path / "recipe.toml").write_text(
        'kernel_package="k"\npackages=[]\nmodules=[]\ndrop=["usr/share/doc"]\n')
    assert images.Recipe.load(tmp_path).drop == ("usr/share/doc",)


def test_check_libraries_names_what_is_missing_and_who_needs_it(tmp_path):
    root = tmp_path / "root"
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "usr/bin").mkdir()
    (root / "usr/bin/true").write_bytes(Path("/usr/bin/true").read_bytes())
    with pytest.raises(ImageError, match=r"lacks shared libraries: usr/bin/ip \(the program "
                                         r"itself\), libc\.so\.6 \(needed by true\)\n  what to do: add the "):
        debroot.check_libraries(root, ("/usr/bin/true", "/usr/bin/ip"))
