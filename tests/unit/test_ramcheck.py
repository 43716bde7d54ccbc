"""--check-migrated-ram's comparison of two guest memory dumps, on ELF64 core files written
here in the layout QEMU's dump-guest-memory writes (a PT_NOTE, then one PT_LOAD per RAM
block). The end-to-end check against two real QEMUs is tests/harness/test_migration_ram.py."""

import struct
import uuid

import pytest

from harness.guest import ramcheck
from harness.core.errors import ProductError

PAGE = ramcheck.PAGE


def write_core(path, segments: list[tuple[int, bytes]]) -> None:
    """An ELF64 core file: a PT_NOTE and a PT_LOAD per (guest-physical address, bytes)."""
    phnum = 1 + len(segments)
    offset = 64 + 56 * phnum
    headers, body = [struct.pack("<IIQQQQQQ", 4, 0, offset, 0, 0, 0, 0, 0)], b""
    for paddr, data in segments:
        headers.append(struct.pack("<IIQQQQQQ", ramcheck.PT_LOAD, 0, offset + len(body), 0,
                                   paddr, len(data), len(data), 0))
        body += data
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    elf = ident + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 0, 0, 0)
    path.write_bytes(elf + b"".join(headers) + body)


def ram(pages: int, seed: int = 7) -> bytearray:
    return bytearray((i * seed + i // PAGE) % 251 for i in range(pages * PAGE))


def test_segments_are_read_with_their_guest_physical_addresses(tmp_path):
    write_core(tmp_path / "a.elf", [(0, bytes(2 * PAGE)), (0x100000000, bytes(PAGE))])
    segments = ramcheck.load_segments(tmp_path / "a.elf")
    assert [(s.paddr, s.size) for s in segments] == [(0, 2 * PAGE), (0x100000000, PAGE)]


def test_the_same_ram_has_no_differing_page(tmp_path):
    low, high = ram(300), ram(5, seed=3)
    for name in ("src", "dst"):
        write_core(tmp_path / name, [(0, bytes(low)), (0x100000000, bytes(high))])
    pages, compared, masked = ramcheck.differing_pages(tmp_path / "src", tmp_path / "dst")
    assert (pages, compared, masked) == ([], 305 * PAGE, 0)


def test_a_lost_page_is_named_by_its_guest_physical_address(tmp_path):
    low, high = ram(300), ram(5, seed=3)
    write_core(tmp_path / "src", [(0, bytes(low)), (0x100000000, bytes(high))])
    low[257 * PAGE + 12] ^= 0xFF  # beyond the first 1 MiB chunk
    high[2 * PAGE] ^= 1
    write_core(tmp_path / "dst", [(0, bytes(low)), (0x100000000, bytes(high))])
    pages, _, _ = ramcheck.differing_pages(tmp_path / "src", tmp_path / "dst")
    assert pages == [257 * PAGE, 0x100000000 + 2 * PAGE]


def test_the_vmgenid_guid_is_the_one_difference_allowed(tmp_path):
    """Each QEMU writes its own vmgenid GUID into the guest; those 16 bytes alone may differ,
    and only where each side holds its own GUID."""
    a, b = uuid.uuid4().bytes_le, uuid.uuid4().bytes_le
    src, dst = ram(4), ram(4)
    at = 3 * PAGE + 40
    src[at:at + 16], dst[at:at + 16] = a, b
    write_core(tmp_path / "src", [(0, bytes(src))])
    write_core(tmp_path / "dst", [(0, bytes(dst))])
    assert ramcheck.differing_pages(tmp_path / "src", tmp_path / "dst", same_at=(a, b))[::2] == ([], 1)
    assert ramcheck.differing_pages(tmp_path / "src", tmp_path / "dst")[0] == [3 * PAGE]
    dst[at + 20] ^= 1  # one more byte on the same page: a lost write after all
    write_core(tmp_path / "dst", [(0, bytes(dst))])
    assert ramcheck.differing_pages(tmp_path / "src", tmp_path / "dst", same_at=(a, b))[0] == [3 * PAGE]


def test_a_different_layout_is_a_product_error(tmp_path):
    write_core(tmp_path / "src", [(0, bytes(2 * PAGE))])
    write_core(tmp_path / "dst", [(0, bytes(3 * PAGE))])
    with pytest.raises(ProductError, match="RAM layout differs"):
        ramcheck.differing_pages(tmp_path / "src", tmp_path / "dst")


def test_a_file_that_is_not_a_core_is_refused(tmp_path):
    (tmp_path / "x").write_bytes(b"not an elf file at all" * 4)
    with pytest.raises(ValueError, match="not a little-endian ELF64"):
        ramcheck.load_segments(tmp_path / "x")
