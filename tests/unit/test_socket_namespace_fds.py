"""harness.host.nsholders.socket_namespaces at the harness's limit of open files (issue 31, the
eighteenth read's seventh finding; the whole read with 1100 namespaces is
tests/unit/test_host_idle_review18.py).

The child that asks each socket its namespace sends back an fd of it over SCM_RIGHTS. An fd
of a namespace already known, or already sent, is closed as it arrives, so the harness holds
one a namespace it has still to read; what does not fit under the soft limit (the kernel
drops it from the message: MSG_CTRUNC) is a problem that names the socket, never a
traceback. NetView.read holds them under :func:`more_open_files`."""

import contextlib
import os
import resource
import subprocess
import textwrap
from pathlib import Path

import pytest

from harness.host.nsholders import more_open_files, socket_namespaces

from .test_host_idle_review17 import NOBODY_RUN
from .test_paths import as_root

pytestmark = pytest.mark.xdist_group("real-host-namespaces")

#: nobody's process, in a user namespace of theirs: ``argv[1]`` network namespaces, each made
#: and left holding ``argv[2]`` UDP sockets (the process lives in the last one).
SOCKETS = textwrap.dedent(r"""
    import ctypes, resource, socket, sys
    n, each = int(sys.argv[1]), int(sys.argv[2])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    libc = ctypes.CDLL(None, use_errno=True)
    held = []
    for _ in range(n):
        if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
            sys.exit("unshare failed")
        held += [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(each)]
    print("ready", flush=True)
    sys.stdin.readline()
""")


@contextlib.contextmanager
def nobodys_sockets(namespaces: int, each: int):
    """nobody's namespaces with ``each`` sockets in every one: their (link, fd path) list."""
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        pytest.skip("no /usr/bin/python3 for nobody")
    maker = subprocess.Popen(NOBODY_RUN + ["unshare", "--user", "--map-root-user", python, "-c",
                                           SOCKETS, str(namespaces), str(each)], cwd="/",
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        if maker.stdout.readline().strip() != "ready":
            pytest.skip(f"nobody cannot make network namespaces here: {maker.stderr.read()}")
        fds = Path(f"/proc/{maker.pid}/fd")
        # (unshare execs python: the same pid)
        sockets = [(os.readlink(e), e) for e in sorted(fds.iterdir(), key=lambda e: int(e.name))
                   if os.readlink(e).startswith("socket:")]
        assert len(sockets) == namespaces * each
        yield sockets
    finally:
        maker.kill()
        maker.wait()


@contextlib.contextmanager
def soft_limit(headroom: int):
    """The soft limit of open files set to what is open now and ``headroom`` more."""
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + headroom,
                                                limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def _own() -> str:
    return os.readlink("/proc/self/ns/net").removeprefix("net:")


@as_root
def test_namespaces_that_do_not_fit_under_the_limit_are_problems_not_a_traceback():
    """120 namespaces, room for 40 fds: those that came are returned, each other one is a
    problem that names its socket and why, and no fd is left open but the returned ones."""
    with nobodys_sockets(120, 1) as sockets:
        before = len(os.listdir("/proc/self/fd"))
        problems: list[str] = []
        with soft_limit(40):
            found = socket_namespaces(sockets, {_own()}, problems)
        try:
            assert 0 < len(found) < 120
            assert len(found) + len(problems) == 120, problems[:3]
            assert all("cannot be told: the fd of its namespace was dropped on the way "
                       "(MSG_CTRUNC): Too many open files" in p for p in problems), problems[:3]
            assert all(f"[{os.fstat(fd).st_ino}]" == inode for inode, (_, fd) in found.items())
        finally:
            for _, fd in found.values():
                os.close(fd)
        assert len(os.listdir("/proc/self/fd")) == before


@as_root
def test_an_fd_of_a_namespace_already_sent_is_closed_as_it_arrives():
    """3 namespaces of 200 sockets each, room for 40 fds: one fd a namespace is kept, the 597
    others are closed on arrival, so all three come back and nothing is a problem."""
    with nobodys_sockets(3, 200) as sockets:
        problems: list[str] = []
        with soft_limit(40):
            found = socket_namespaces(sockets, {_own()}, problems)
        for _, fd in found.values():
            os.close(fd)
        assert problems == []
        assert len(found) == 3


def test_the_limit_is_raised_while_namespaces_are_read_and_set_back_after():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard // 2, hard))
    lowered = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with more_open_files():
            assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
