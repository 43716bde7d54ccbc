"""harness.guests: --guest values and guests files become the run's guests; bad ones are one
clear error saying what to write."""

import subprocess

import pytest

from harness.core.errors import ConfigError
from harness.run.guests import resolve


def qcow2(path):
    """A real disk image (as root the harness asks qemu-img what it refers to)."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1M"], check=True,
                   timeout=30)
    return path


def test_a_guests_file_describes_your_own_guests(tmp_path):
    disk, key, kernel = qcow2(tmp_path / "rhel7.qcow2"), tmp_path / "id", tmp_path / "vmlinuz"
    for f in (key, kernel):
        f.write_text("x")
    guests = tmp_path / "guests.toml"
    guests.write_text(f'[[guest]]\nname = "rhel7"\ndisk = "{disk}"\nkey = "{key}"\n\n'
                      f'[[guest]]\nname = "tiny"\nkernel = "{kernel}"\nready = "# $"\n'
                      f'append = "console=ttyS0"\n')
    rhel, tiny = resolve([str(guests)], tmp_path / "cache", tmp_path / "seeds")
    assert (rhel.name, rhel.access, rhel.image.disk, rhel.image.ssh_key) == ("rhel7", "ssh", disk, key)
    assert (tiny.name, tiny.access, tiny.image.ready_pattern) == ("tiny", "console", "# $")
    assert not rhel.builtin and rhel.image.ready_pattern is None


def test_a_cloud_image_in_a_guests_file_gets_a_key_and_a_seed_for_the_run(tmp_path):
    disk = qcow2(tmp_path / "debian-12-genericcloud-amd64.qcow2")
    guests = tmp_path / "g.toml"
    guests.write_text(f'[[guest]]\nname = "deb12"\ndisk = "{disk}"\ncloud_init = true\n')
    [cloud] = resolve([str(guests)], tmp_path / "cache", tmp_path / "seeds")
    assert cloud.access == "ssh" and cloud.image.ssh_key.exists() and cloud.image.seed.exists()
    # A second process of the run (an xdist worker) gets the same key and the very same seed
    # file, not a new one: one command line per guest shape, one saved state for all workers.
    seed_stat = cloud.image.seed.stat()
    [again] = resolve([str(guests)], tmp_path / "cache", tmp_path / "seeds")
    assert (again.image.ssh_key, again.image.seed) == (cloud.image.ssh_key, cloud.image.seed)
    assert again.image.seed.stat().st_mtime_ns == seed_stat.st_mtime_ns
    assert cloud.image.seed.parent == tmp_path / "seeds" / "deb12"


@pytest.mark.parametrize("text, message", [
    ('[[guest]]\nname = "a b"\ndisk = "/etc/hostname"\nkey = "/etc/hostname"\n', "name must be"),
    ('[[guest]]\nname = "x"\nkey = "/etc/hostname"\n', "give a kernel or a disk"),
    ('[[guest]]\nname = "x"\ndisk = "/etc/hostname"\n', "no way in"),
    ('[[guest]]\nname = "x"\ndisk = "/nonexistent.qcow2"\nkey = "/etc/hostname"\n',
     "disk /nonexistent.qcow2: no such file"),
    ('[[guest]]\nname = "x"\ndisk = "/etc/hostname"\nkey = "/etc/hostname"\nram = 4\n',
     "unknown key"),
    ('name = "x"\n', "no \\[\\[guest\\]\\] table"),
])
def test_bad_guests_files_are_refused_saying_what_to_fix(tmp_path, text, message):
    guests = tmp_path / "g.toml"
    guests.write_text(text)
    with pytest.raises(ConfigError, match=message):
        resolve([str(guests)], tmp_path / "cache", tmp_path / "seeds")


def test_unknown_guest_names_and_twice_the_same_guest_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="not builtin, a distribution guest"):
        resolve(["fedora"], tmp_path, tmp_path)
    guests = tmp_path / "g.toml"
    guests.write_text('[[guest]]\nname = "x"\nkernel = "/etc/hostname"\nready = "#"\n')
    with pytest.raises(ConfigError, match="names x more than once"):
        resolve([str(guests), str(guests)], tmp_path, tmp_path)
