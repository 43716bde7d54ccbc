"""A FUSE filesystem of one file, served straight from ``/dev/fuse`` (no libfuse), that can be
told to stop answering: a daemon that hangs, as a local user's can. Root only.

    >>> with FuseStub(tmp_path / "m") as fuse:           # doctest: +SKIP
    ...     holder = fuse.hold_file()                      # a process keeps m/f open
    ...     fuse.go_silent()                               # no request is answered from now
    ...     fuse.detach()                                  # umount -l: in no mount list now

Leaving the ``with`` closes ``/dev/fuse``, which aborts the connection: every request still
waiting fails (ENOTCONN) and whatever waited on it goes on.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import subprocess
import sys
import threading
from pathlib import Path

_LOOKUP, _FORGET, _GETATTR, _OPEN, _RELEASE, _FLUSH, _INIT, _INTERRUPT, _BATCH_FORGET = \
    1, 2, 3, 14, 18, 25, 26, 36, 42
_NO_REPLY = {_FORGET, _INTERRUPT, _BATCH_FORGET}
_IN_HEADER = struct.Struct("<IIQQIIII")
_OUT_HEADER = struct.Struct("<IiQ")
_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def _attr(ino: int, mode: int) -> bytes:
    return _ATTR.pack(ino, 0, 0, 0, 0, 0, 0, 0, 0, mode, 1, 0, 0, 0, 4096, 0)


class FuseStub:
    """``mountpoint``/f, a regular file; attributes are never cached (``attr_valid`` 0), so
    every plain ``stat`` of it asks the daemon."""

    #: Whose mount it is (``user_id``/``group_id``); without ``allow_other`` the kernel lets
    #: no other user, root included, look at its files.
    OWNER = 0
    #: Mount flags (``MS_NOSUID | MS_NODEV``: as ``fusermount`` mounts a user's filesystem).
    FLAGS = 0

    def __init__(self, mountpoint: Path):
        self.mountpoint = mountpoint
        self.answering = threading.Event()
        self.answering.set()
        self.holders: list[subprocess.Popen] = []
        self.mounted = False

    def __enter__(self) -> "FuseStub":
        self.mountpoint.mkdir()
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        options = f"fd={self.fd},rootmode=40000,user_id={self.OWNER},group_id={self.OWNER}" \
            .encode()
        if _libc.mount(b"hh-fusestub", os.fsencode(self.mountpoint), b"fuse", self.FLAGS,
                       options):
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, os.strerror(err), "mount -t fuse")
        self.mounted = True
        self.thread = threading.Thread(target=self._serve, name="fusestub", daemon=True)
        self.thread.start()
        return self

    def hold_file(self) -> subprocess.Popen:
        """A process that opens ``f`` and keeps it open (returns once it is open)."""
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys, time; f = open(sys.argv[1]); print('open', "
             "flush=True); time.sleep(600)", str(self.mountpoint / "f")],
            stdout=subprocess.PIPE, text=True)
        self.holders.append(proc)
        assert proc.stdout.readline() == "open\n"
        return proc

    def go_silent(self) -> None:
        self.answering.clear()
        self.thread.join()  # (it reads /dev/fuse no more)

    def detach(self) -> None:
        if _libc.umount2(os.fsencode(self.mountpoint), _MNT_DETACH):
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), "umount -l")
        self.mounted = False

    def __exit__(self, *exc) -> None:
        self.answering.clear()
        self.thread.join()
        for proc in self.holders:
            proc.kill()
        os.close(self.fd)  # aborts the connection: waiting requests fail
        for proc in self.holders:
            proc.wait()
        if self.mounted:
            _libc.umount2(os.fsencode(self.mountpoint), _MNT_DETACH)

    def _serve(self) -> None:
        poll = select.poll()
        poll.register(self.fd, select.POLLIN)
        while self.answering.is_set():
            if not poll.poll(100):
                continue
            try:
                request = os.read(self.fd, 1 << 17)
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue
                return  # aborted
            length, opcode, unique, node, *_ = _IN_HEADER.unpack_from(request)
            if opcode in _NO_REPLY:
                continue
            error, body = self._answer(opcode, node, request[_IN_HEADER.size:length])
            try:
                os.write(self.fd, _OUT_HEADER.pack(_OUT_HEADER.size + len(body), -error, unique)
                         + body)
            except OSError:
                pass  # (the request was interrupted meanwhile)

    @staticmethod
    def _answer(opcode: int, node: int, body: bytes) -> tuple[int, bytes]:
        if opcode == _INIT:  # fuse_init_out, 7.31, no features
            return 0, struct.pack("<IIIIHHIIHHI7I", 7, 31, 0, 0, 1, 1, 4096, 1, 1, 0, 0,
                                  *[0] * 7)
        if opcode == _GETATTR:
            attr = _attr(1, 0o40755) if node == 1 else _attr(2, 0o100644)
            return 0, struct.pack("<QII", 0, 0, 0) + attr
        if opcode == _LOOKUP:
            if node == 1 and body.rstrip(b"\0") == b"f":
                return 0, struct.pack("<QQQQII", 2, 0, 0, 0, 0, 0) + _attr(2, 0o100644)
            return errno.ENOENT, b""
        if opcode == _OPEN:
            return 0, struct.pack("<QII", 0, 0, 0)
        if opcode in (_FLUSH, _RELEASE):
            return 0, b""
        return errno.ENOSYS, b""
