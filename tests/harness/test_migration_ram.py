"""--check-migrated-ram end to end: a real guest live-migrates between two real QEMUs; the
destination holds the source's RAM page for page (the vmgenid GUID aside); and a byte changed
in the stopped source's RAM behind QEMU's back (through /proc/PID/mem, at the host address
QEMU's ``gpa2hva`` gives) is named by its guest-physical page -- the check finds what a lost
page would look like."""

import re

import pytest

from harness.guest import migration
from harness.guest import ramcheck
from harness.guest import snapshot
from harness.core.errors import ProductError
from harness.guest.guest import Guest, without_incoming
from harness.qemu.machine import GuestSpec

#: A guest-physical address in RAM, away from the firmware and the vmgenid page.
GPA = 0x1234000


@pytest.fixture
def guests(hotplug_session, tmp_path):
    made = []

    def make(name: str, *extra: str, spec=None) -> Guest:
        g = Guest(spec or GuestSpec(machine="q35"), hotplug_session.image, workdir=tmp_path / name,
                  qemu_binary=hotplug_session.qemu_binary, accel=hotplug_session.accel,
                  deadlines=hotplug_session.deadlines, name=name, extra_args=extra)
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()


def destination(make, source: Guest, name: str) -> Guest:
    return make(name, *without_incoming(source.extra_args), "-incoming",
                f"unix:{source.scratch_path('migration.sock')}", spec=source.spec).receive()


def flip_byte(guest: Guest, gpa: int) -> None:
    out = guest.hmp(f"gpa2hva {gpa:#x}")
    hva = int(re.search(r"is (0x[0-9a-f]+)", out).group(1), 16)
    with open(f"/proc/{guest.process.pid}/mem", "r+b", buffering=0) as mem:
        mem.seek(hva)
        byte = mem.read(1)
        mem.seek(hva)
        mem.write(bytes([byte[0] ^ 0x5A]))


def test_migrated_ram_is_compared_page_by_page(guests):
    source = guests("src", *snapshot.RESTORABLE_ARGS).launch()  # vmgenid, as the pool's guests
    first = destination(guests, source, "dst1")
    lines = []
    migration.migrate(source, first, before_running=lambda s, d: lines.append(
        ramcheck.check(s, d, timeout=120)))
    assert re.fullmatch(r"RAM check: the destination held the source's \d+ MiB, page for page "
                        r"\(\d+\.\d s\); the vmgenid GUID differs by design \(1 page\)", lines[0])
    assert first.shell.succeed("echo $((6 * 7))").strip() == "42"  # and it runs on

    second = destination(guests, first, "dst2")

    def lose_a_page(s, d):
        flip_byte(s, GPA)
        ramcheck.check(s, d, timeout=120)

    with pytest.raises(ProductError) as lost:
        migration.migrate(first, second, before_running=lose_a_page)
    assert "1 page(s) of " in lost.value.message and f": {GPA:#x}" in lost.value.message
    assert "QEMU's migration is at fault" in lost.value.hint
    assert not list(first.scratch_path("").glob("ram.elf")), "the dumps are removed"
