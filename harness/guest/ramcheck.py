"""``--check-migrated-ram``: whether the destination of a live migration holds, before it runs,
the RAM the source held when it stopped.

A guest that faults after a migration (a slab freelist gone bad, a SIGSEGV in a command) may
have been handed a page QEMU never sent again after the guest wrote it, or may have broken
itself. The harness tells the two apart: once the migration completed and the destination
loaded the stream (still paused, ``-S``), both QEMUs dump the guest's RAM
(``dump-guest-memory``, ELF, no paging) and the dumps are compared page by page. A page
that differs is QEMU's fault, named by its guest-physical address.

One difference is by design: a ``vmgenid`` device with ``guid=auto`` draws a new GUID in
each QEMU and writes it into the guest at load (the guest then reseeds its RNG); the 16 bytes
where each side holds its own GUID are left out of the comparison, and said so.

It costs two dumps of the guest's RAM (2-25 s for 512 MiB here under TCG, by load), so it is
an option for chasing a post-migration fault, not part of every run.
"""

from __future__ import annotations

import dataclasses
import struct
import time
import uuid
from pathlib import Path

from harness.core.errors import ProductError, QMPCommandError, WaitTimeout
from harness.core.waits import wait_until

PAGE = 4096
CHUNK = 1 << 20
PT_LOAD = 1


@dataclasses.dataclass(frozen=True)
class Segment:
    """One PT_LOAD of a guest memory dump: guest-physical address, offset in the file, size."""

    paddr: int
    offset: int
    size: int


def load_segments(path: Path) -> list[Segment]:
    """The PT_LOAD segments of an ELF64 little-endian core file (QEMU's dump-guest-memory)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            raise ValueError(f"{path}: not a little-endian ELF64 file")
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        if phnum == 0xFFFF:
            raise ValueError(f"{path}: more program headers than e_phnum holds (PN_XNUM): not read")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    out = []
    for i in range(phnum):
        p_type, _flags, offset, _vaddr, paddr, filesz = struct.unpack_from(
            "<IIQQQQ", table, i * phentsize)
        if p_type == PT_LOAD and filesz:
            out.append(Segment(paddr, offset, filesz))
    return out


def differing_pages(src: Path, dst: Path, same_at: tuple[bytes, bytes] | None = None
                    ) -> tuple[list[int], int, int]:
    """Guest-physical addresses of the pages that differ between two dumps, the bytes
    compared, and how many pages differed only by ``same_at`` (a pair of 16-byte values, the
    source's and the destination's, allowed to stand at the same offset of a page).
    A layout that differs (a segment on one side only, or of another size) raises."""
    a, b = load_segments(src), load_segments(dst)
    if [(s.paddr, s.size) for s in a] != [(s.paddr, s.size) for s in b]:
        raise ProductError(
            "live migration: the destination's RAM layout differs from the source's",
            details=f"source {[(hex(s.paddr), s.size) for s in a]}\n"
                    f"destination {[(hex(s.paddr), s.size) for s in b]}")
    pages, compared, masked = [], 0, 0
    with open(src, "rb") as fa, open(dst, "rb") as fb:
        for sa, sb in zip(a, b):
            fa.seek(sa.offset)
            fb.seek(sb.offset)
            done = 0
            while done < sa.size:
                n = min(CHUNK, sa.size - done)
                x, y = fa.read(n), fb.read(n)
                if x != y:
                    for i in range(0, n, PAGE):
                        px, py = x[i:i + PAGE], y[i:i + PAGE]
                        if px == py:
                            continue
                        if same_at and _only(px, py, *same_at):
                            masked += 1
                        else:
                            pages.append(sa.paddr + done + i)
                compared += n
                done += n
    return pages, compared, masked


def _only(px: bytes, py: bytes, vx: bytes, vy: bytes) -> bool:
    """Whether two pages differ only where one holds ``vx`` and the other ``vy``."""
    at = px.find(vx)
    while at >= 0:
        if py[at:at + len(vy)] == vy:
            blank = bytes(len(vx))
            if px[:at] + blank + px[at + len(vx):] == py[:at] + blank + py[at + len(vy):]:
                return True
        at = px.find(vx, at + 1)
    return False


def _guid(guest) -> bytes | None:
    """The guest's vmgenid GUID as QEMU writes it into guest memory (little-endian fields)."""
    try:
        return uuid.UUID(guest.qmp("query-vm-generation-id")["guid"]).bytes_le
    except (QMPCommandError, KeyError, ValueError):
        return None  # no vmgenid device


def check(src, dst, timeout: float) -> str:
    """Compare the RAM of ``src`` (postmigrate) and ``dst`` (loaded, not yet running).
    Returns a line for the report; raises ProductError naming the pages that differ.
    ``timeout``: a reference figure, for the load and for each dump."""
    t0 = time.monotonic()
    try:
        wait_until(f"{dst.name} to finish loading the migration stream",
                   lambda: dst.qmp("query-status").get("status") != "inmigrate",
                   dst.deadlines.scaled(timeout), interval=0.02)
    except WaitTimeout as e:
        raise ProductError(f"live migration: {dst.name} still loading {timeout:.0f} s (reference)"
                           " after the source said completed") from e
    files = [src.scratch_path("ram.elf"), dst.scratch_path("ram.elf")]
    try:
        for guest, path in zip((src, dst), files):
            guest.qmp("dump-guest-memory", paging=False, protocol=f"file:{path}", timeout=timeout)
        guids = (_guid(src), _guid(dst))
        same_at = guids if None not in guids and guids[0] != guids[1] else None
        pages, compared, masked = differing_pages(*files, same_at=same_at)
    finally:
        for path in files:
            path.unlink(missing_ok=True)
    took = time.monotonic() - t0
    if pages:
        listed = ", ".join(hex(p) for p in pages[:16]) + (" ..." if len(pages) > 16 else "")
        raise ProductError(
            f"live migration lost guest RAM: {len(pages)} page(s) of {compared >> 20} MiB differ "
            f"between the source ({src.name}, stopped) and the destination ({dst.name}, loaded, "
            f"before it ran): {listed}",
            hint="QEMU's migration is at fault, not the guest: report it with this run's bundle "
                 "(QEMU version, accelerator, the QMP transcripts of both sides)")
    return (f"RAM check: the destination held the source's {compared >> 20} MiB, page for page "
            f"({took:.1f} s)" + (f"; the vmgenid GUID differs by design ({masked} page)" if masked else ""))
