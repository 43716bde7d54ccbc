"""Network namespaces held where no process lives and no listed mount shows them.

:mod:`harness.host.network` finds a namespace a process lives in, one a thread or an fd
holds as an nsfs file (``net:[N]``), and one bind-mounted in the mount namespace of some
process. Two more kinds of holder keep a namespace alive with none of those:

* **a socket** (or a tun/tap fd): a process makes a socket inside a namespace and goes back
  to its own (``setns``: a routing daemon's per-VRF sockets, a namespace whose ``ip netns``
  name was deleted while the daemon kept its sockets). Its fd reads ``socket:[N]``; the
  socket's namespace is learnt by taking a copy of the fd (``pidfd_getfd``, Linux 5.6, root)
  and asking the kernel for an fd of it (``SIOCGSKNS``; a tun fd answers it too, with the
  namespace it was opened in, which it holds whether or not it is attached to a device);
* **a mount namespace no process is in** (``unshare --mount=FILE``): it lives through an nsfs
  ``mnt:[N]`` file (a bind mount, an fd, a thread's ``ns/mnt``), and a network namespace
  mounted inside it shows in no process's ``mountinfo``. A helper process enters it (proven
  to be that namespace, as :func:`open_path` proves a file), runs nothing there, and stays
  until the view is read, so its ``/proc/PID/mountinfo`` and ``/proc/PID/root`` show that
  mount namespace from here.

What cannot be told (``pidfd_getfd`` refused or missing, an ioctl the kernel does not have,
a mount namespace that cannot be entered) is returned as a
problem, which makes every NIC unproven. A mount namespace whose way in went away between
being seen and being entered (:func:`went_away`: its holder ended, its file was unmounted or
replaced) is neither: it is named in :attr:`MountVisits.went`, for the caller to search every
holder again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import resource
import select
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from harness.host import storage
from harness.host.storage import (_STATX_INO, _STATX_TYPE, _statx_cached, cached_inode,
                                  call_within, kernel_lines, unescape_mountinfo)
from harness.host.sysfs import Sysfs

#: Run by the helper: enter the mount namespace of the (proven) fd ``argv[1]``, say so, and
#: wait. Nothing is imported or run after ``setns``: the files there are not the host's.
_ENTER_MOUNT_NS = r'''
import ctypes, os, signal, sys
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
            signal.SIGUSR2, signal.SIGPIPE):  # (no Python code runs there: no traceback,
    signal.signal(sig, signal.SIG_IGN)       # whose import would read that namespace's files)
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open("/proc/self/fd/" + sys.argv[1], os.O_RDONLY | os.O_CLOEXEC)
if libc.setns(fd, 0x00020000) != 0:
    os.write(2, ("setns: " + os.strerror(ctypes.get_errno())).encode())
    os._exit(1)
try:  # (an error here must print nothing: printing it imports from that namespace)
    os.write(1, b"in\n")
    os.read(0, 1)
finally:
    os._exit(0)
'''


#: What opening a way into a namespace says when the way itself went away since it was seen:
#: the file is gone (its process or thread ended, the mount was undone: ``ENOENT``,
#: ``ENOTDIR``), its process is being reaped (``ESRCH``), or another file stands there now
#: (``ESTALE``, :func:`open_namespace`'s). It says nothing of the namespace itself, which may
#: live on through another holder.
_WENT_AWAY = {errno.ENOENT, errno.ENOTDIR, errno.ESRCH, errno.ESTALE}


def went_away(error: OSError) -> bool:
    """Whether ``error`` (from :func:`open_namespace`) says the way in went away, not that
    the namespace cannot be entered (permission refused, a lookup that never answers)."""
    return error.errno in _WENT_AWAY


def open_path(path: Path, timeout: float = 20.0) -> tuple[int, os.stat_result]:
    """An ``O_PATH`` fd of ``path`` and its stat, looked up in a thread given up after
    ``timeout`` seconds (a lookup or stat in a FUSE mount of another user's mount namespace
    waits on their daemon, maybe for ever); an fd the thread gets after that is closed.
    Raises OSError."""
    def look() -> tuple[int, os.stat_result]:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            return fd, os.fstat(fd)
        except OSError:
            os.close(fd)
            raise

    return call_within(look, timeout, late=lambda found: os.close(found[0]))


def open_namespace(fs: Sysfs, path: Path, inode: str, kind: str) -> int:
    """An ``O_PATH`` fd of ``path`` proven to be the ``kind`` namespace ``inode``
    (``[4026532000]``): on nsfs (the device of ``/proc/self/ns/<kind>``) with that inode.
    Raises OSError saying what it is instead."""
    fd, st = open_path(path)
    try:
        nsfs = os.stat(fs.proc("self", "ns", kind))
        if (st.st_dev, f"[{st.st_ino}]") != (nsfs.st_dev, inode):
            raise OSError(errno.ESTALE, f"{path} is now inode {st.st_ino} of device "
                          f"{st.st_dev}, not that namespace (it was replaced since it was "
                          "seen)")
    except OSError:
        os.close(fd)
        raise
    return fd


# -- namespace files opened through a bind mount -------------------------------------------

#: ``NS_GET_NSTYPE`` (``linux/nsfs.h``, Linux 4.11): the ``CLONE_NEW*`` flag of a namespace's
#: fd; the kinds that may hold an interface, or a mount of one.
_NS_GET_NSTYPE = 0xB703
_NS_KINDS = {0x40000000: "net", 0x00020000: "mnt"}


def _on_fuse(entry: Path) -> bool:
    """Whether the fd ``entry`` (``/proc/PID/fd/N``) is a file on a FUSE mount: its mount id
    (``fdinfo``) names a ``fuse*`` mount in that process's ``mountinfo``. False when that
    cannot be told. The table is read within :data:`~harness.host.storage.
    DETACHED_STAT_TIMEOUT` (any user stacks mounts thousands deep in a namespace of theirs,
    and the kernel's cost of its table grows with the square of that): one that does not
    come is an OSError (``ETIMEDOUT``), "cannot be told", never a wait for good."""
    proc = entry.parent.parent
    try:
        info = os.fsdecode((proc / "fdinfo" / entry.name).read_bytes())
        mounts = os.fsdecode(call_within((proc / "mountinfo").read_bytes,  # (paths: any bytes)
                                         storage.DETACHED_STAT_TIMEOUT))
    except TimeoutError:
        raise OSError(errno.ETIMEDOUT, f"whether it is a FUSE file cannot be told: "
                      f"{proc}/mountinfo did not come in {storage.DETACHED_STAT_TIMEOUT:g} s "
                      "(mounts stacked thousands deep in its mount namespace)") from None
    except OSError:
        return False
    mount = re.search(r"^mnt_id:\s*(\d+)", info, re.M)
    return bool(mount) and any(
        line.split(maxsplit=1)[0] == mount[1]
        and line.partition(" - ")[2].startswith("fuse") for line in kernel_lines(mounts))


class Identity(NamedTuple):
    """What the kernel's cache says an open file is: its filesystem, inode, type and device
    number (a node's)."""
    dev: int
    ino: int
    mode: int
    rdev: int


def cached_file(path: str) -> Identity:
    """:class:`Identity` of what ``path`` leads to, from the kernel's cache alone (``statx``
    with ``AT_STATX_DONT_SYNC``, as :func:`~harness.host.storage.node_type`): a FUSE daemon is
    not asked. Raises OSError."""
    if storage._statx is None:
        st = os.stat(path)
        return Identity(st.st_dev, st.st_ino, st.st_mode, st.st_rdev)
    raw = _statx_cached(path, _STATX_TYPE | _STATX_INO)
    dev, rdev = (os.makedev(*(int.from_bytes(raw[i:i + 4], "little") for i in (at, at + 4)))
                 for at in (136, 128))
    return Identity(dev, int.from_bytes(raw[32:40], "little"),
                    int.from_bytes(raw[28:30], "little"), rdev)


def fd_namespace(fs: Sysfs, entry: Path, nsfs: int | None = None,
                 seen: "dict[Path, Identity] | None" = None) -> tuple[str, str] | None:
    """(kind, ``[N]``) of the network or mount namespace a process's fd ``entry``
    (``/proc/PID/fd/N``) holds when its link reads as a path: a namespace's file opened
    through its bind mount (as a container runtime keeps ``/var/run/netns/NAME``) reads as
    the mount's path, and as ``/`` once that is unmounted, never ``net:[N]``. None when it is
    no namespace's file (the kernel's cache says so: nothing waits on a FUSE daemon) or one of
    another kind; ``seen`` then gets what it is (:func:`cached_file`). Raises OSError
    (:func:`went_away` when the fd was closed or swapped)."""
    try:
        found = cached_file(str(entry))  # (a FUSE daemon is not asked)
    except PermissionError:
        if _on_fuse(entry):
            return None  # (FUSE refuses even root without allow_other; no namespace is there)
        raise
    device, inode = found.dev, found.ino
    if seen is not None:
        seen[entry] = found
    if device != (nsfs if nsfs is not None else os.stat(fs.proc("self", "ns", "net")).st_dev):
        return None  # (``nsfs``: that device, read once for many)
    fd = open_namespace(fs, entry, f"[{inode}]", "net")  # (nsfs and that inode, any kind)
    try:
        real = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)  # (proven nsfs)
        try:
            kind = _NS_KINDS.get(fcntl.ioctl(real, _NS_GET_NSTYPE))
        finally:
            os.close(real)
    finally:
        os.close(fd)
    return (kind, f"[{inode}]") if kind else None


# -- sockets and tun fds ---------------------------------------------------------------------


#: Run by a child process: for each (pid, fd, tun) of the JSON list on stdin, take a copy of
#: that fd (``pidfd_getfd``), check from the kernel's cache alone that it is still a socket (or
#: the tun device), and send an fd of its network namespace (``SIOCGSKNS``) back over the
#: SOCK_SEQPACKET socket ``argv[1]``, one message each, then "done". Another user may have
#: swapped a file on a FUSE mount of theirs in for the socket since it was listed: a copy that
#: is not a socket is never stat'ed, asked or closed (closing it sends FUSE's FLUSH, which a
#: daemon that never answers makes wait for good); the child exits with it, maybe stuck, and
#: the harness does not wait for it.
_ASK_SOCKETS = r'''
import ctypes, fcntl, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = socket.socket(fileno=int(sys.argv[1]))
kept, pidfds = [], {}
def say(answer, fds=()):
    socket.send_fds(out, [json.dumps(answer).encode()], list(fds))
def kind(fd):  # (st_mode, rdev) of an fd, from the kernel's cache: statx AT_EMPTY_PATH|DONT_SYNC
    buf = ctypes.create_string_buffer(256)
    if libc.statx(fd, b"", 0x1000 | 0x4000, 1, buf) != 0:
        raise OSError(ctypes.get_errno(), "statx")
    raw = buf.raw
    return (int.from_bytes(raw[28:30], "little"),
            (int.from_bytes(raw[128:132], "little"), int.from_bytes(raw[132:136], "little")))
for i, (pid, fd, tun) in enumerate(json.load(sys.stdin)):
    try:
        if pid not in pidfds:
            pidfds[pid] = os.pidfd_open(pid)
        copy = libc.syscall(438, pidfds[pid], fd, 0)  # pidfd_getfd
        if copy < 0:
            err = ctypes.get_errno()
            say({"i": i, "gone": True} if err in (9, 3) else {"i": i, "errno": err,
                                                             "what": "pidfd_getfd"})
            continue
        mode, rdev = kind(copy)
        if not ((mode & 0o170000 == 0o020000 and rdev == (10, 200)) if tun else
                mode & 0o170000 == 0o140000):  # the tun device, or a socket
            kept.append(copy)  # (never closed here: see above)
            say({"i": i, "swapped": True})
            continue
        try:
            ns = fcntl.ioctl(copy, 0x894C)  # SIOCGSKNS
        except OSError as e:
            say({"i": i, "errno": e.errno, "what": "SIOCGSKNS"})
            continue
        finally:
            os.close(copy)  # (a socket or the tun device: no flush to wait for)
        say({"i": i}, [ns])
        os.close(ns)
    except ProcessLookupError:
        say({"i": i, "gone": True})
    except OSError as e:
        say({"i": i, "errno": e.errno or 0, "what": str(e)})
say({"done": True})
os._exit(0)
'''
#: How long the child that asks sockets their namespace has (seconds).
ASK_TIMEOUT = 20.0


def socket_namespaces(fds: list[tuple[str, Path]], known: set[str],
                      problems: list[str]) -> dict[str, tuple[str, int]]:
    """The network namespaces not in ``known`` that the sockets and tun fds ``fds`` ((their
    link, ``/proc/PID/fd/N``)) are in: {inode: (how it is held, an fd of it, to close)}, one
    fd a namespace. Each socket is asked once, however many fds share it, by a child process
    (:data:`_ASK_SOCKETS`), through the first listed; one whose fd was closed by then is asked
    again through every other fd listed that shares it (a fork's, one passed to another
    process: the process asked first may let go of it while another keeps it), and through
    the same fd of the children of its holder (a fork's copy, which the read of fds leaves
    out as its parent's: :func:`_fork_copies`). What cannot be
    asked, or was swapped for another file since it was listed, or got no answer in
    :data:`ASK_TIMEOUT` seconds, or whose namespace's fd did not arrive (past the harness's
    limit of open files the kernel drops it from the message: ``MSG_CTRUNC``), is a problem.
    Hold the fds under :func:`more_open_files`."""
    shared: dict[str, list[tuple[str, Path]]] = {}
    for target, entry in fds:
        key = target if target.startswith("socket:") else f"{entry}"  # (tun fds: all alike)
        shared.setdefault(key, []).append((target, entry))
    out: dict[str, tuple[str, int]] = {}
    gone = _asked([ways[0] for ways in shared.values()], known, out, problems)
    again = [way for n, ways in enumerate(shared.values()) if n in gone
             for way in ways[1:] + _fork_copies(*ways[0])]
    _asked(again, known | out.keys(), out, problems)  # (gone again: every copy was closed)
    return out


def _fork_copies(target: str, entry: Path) -> list[tuple[str, Path]]:
    """The fds of the same number as ``entry`` (``/proc/PID/fd/N``) in the children of its
    process whose link still reads ``target``: a fork's copies of a socket, which the read of
    fds does not list (:class:`harness.host.network._FdsRead`). Read only for a socket whose
    listed fds were all closed when asked."""
    proc, out = entry.parent.parent, []
    try:
        children = {c for task in (proc / "task").iterdir()
                    for c in (task / "children").read_text().split()}
    except OSError:
        return []  # (it ended: its forks, reparented, are listed as its were)
    for child in sorted(children):
        copy = proc.parent / child / "fd" / entry.name
        try:
            if os.readlink(copy) == target:
                out.append((target, copy))
        except OSError:
            pass  # (not open there, or gone)
    return out


def _asked(queries: list[tuple[str, Path]], known: set[str], out: dict[str, tuple[str, int]],
           problems: list[str]) -> set[int]:
    """:func:`socket_namespaces`'s one round: the namespaces ``queries`` name go to ``out``,
    what cannot be told to ``problems``; returns the indexes of those whose fd was closed
    (``gone``: neither a namespace nor a problem)."""
    if not queries:
        return set()
    answers, gone = _ask(queries, known), set()
    for n, (target, entry) in enumerate(queries):
        how = f"{target} (fd {entry.name} of pid {entry.parent.parent.name})"
        answer, inode, ns = answers.get(n, ({"errno": errno.ETIMEDOUT, "what": f"no answer in "
                                             f"{ASK_TIMEOUT:g} s"}, None, None))
        if ns is not None:
            out[inode] = (how, ns)
        elif answer.get("gone"):
            gone.add(n)
        elif inode is None:  # (else a namespace known or sent)
            why = "it was swapped for another file since it was listed" \
                if answer.get("swapped") else \
                f"{answer.get('what', 'its answer')}: " \
                f"{os.strerror(answer.get('errno', errno.EPROTO))}"
            problems.append(f"the network namespace of {how} cannot be told: {why}: the "
                            "interfaces of a namespace held only by it would be missed")
    return gone


def _ask(queries: list[tuple[str, Path]],
         known: set[str]) -> dict[int, tuple[dict, str | None, int | None]]:
    """Run :data:`_ASK_SOCKETS` on ``queries``: {index: (its answer, the namespace it names
    (``[N]``) or None, an fd of it when it is in neither ``known`` nor an earlier answer)};
    those without an answer by the deadline are missing. Every other fd is closed as it
    arrives, so that as many are open as there are namespaces not known."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    child = subprocess.Popen([sys.executable, "-I", "-S", "-c", _ASK_SOCKETS,
                              str(theirs.fileno())], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             pass_fds=(theirs.fileno(),))
    theirs.close()
    answers: dict[int, tuple[dict, str | None, int | None]] = {}
    try:
        child.stdin.write(json.dumps([[int(e.parent.parent.name), int(e.name),
                                       t.startswith("/")] for t, e in queries]).encode())
        child.stdin.close()
        deadline, waiting = time.monotonic() + ASK_TIMEOUT, select.poll()
        waiting.register(mine, select.POLLIN)  # (poll: fd numbers past 1024 are no error)
        seen = set(known)
        while time.monotonic() < deadline:
            if not waiting.poll(max(0.0, deadline - time.monotonic()) * 1000):
                break
            data, fds, flags, _ = socket.recv_fds(mine, 4096, 1)
            if not data:
                break  # (the child ended)
            answer = _answer(data, fds, flags)
            if answer.get("done"):
                break
            answers[answer["i"]] = _keep_new(answer, fds, seen)
    except (OSError, ValueError):
        pass  # (what was not answered is a problem of the caller's)
    finally:
        mine.close()
        child.kill()  # (one stuck closing a swapped-in FUSE file dies when it can)
        try:
            child.wait(1)
        except subprocess.TimeoutExpired:
            pass
    return answers


def _answer(data: bytes, fds: list[int], flags: int) -> dict:
    """The child's answer ``data``, with ``fds`` that came with it; one that should have
    brought an fd and did not (``MSG_CTRUNC``: past the harness's limit of open files the
    kernel drops it) is a failure of its own. Raises ValueError (fds closed) for one that is
    not the child's."""
    try:
        answer = json.loads(data)
        if not answer.get("done"):
            answer["i"] = int(answer["i"])
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        for fd in fds:
            os.close(fd)
        raise ValueError(f"not an answer: {data[:80]!r}") from e
    if fds or set(answer) != {"i"}:
        return answer
    if flags & socket.MSG_CTRUNC:
        return {"i": answer["i"], "errno": errno.EMFILE, "what": "the fd of its namespace was "
                "dropped on the way (MSG_CTRUNC)"}
    return {"i": answer["i"], "errno": errno.EPROTO, "what": "the answer came without the fd "
            "of its namespace"}


def _keep_new(answer: dict, fds: list[int], seen: set[str]) -> tuple[dict, str | None,
                                                                      int | None]:
    """(``answer``, the namespace of its fd, the fd if that namespace is not in ``seen``, which
    it is added to); an fd not kept is closed at once."""
    if not fds:
        return answer, None, None
    inode = f"[{os.fstat(fds[0]).st_ino}]"  # (an nsfs file the kernel made: nothing waits)
    if inode in seen:
        os.close(fds[0])
        return answer, inode, None
    seen.add(inode)
    return answer, inode, fds[0]


@contextlib.contextmanager
def more_open_files():
    """The soft limit of open files raised to the hard one while the host's namespaces are
    read, and set back after: an fd of each namespace not known is kept until it is read (a
    root shell or service on a systemd host has 1024: ``DefaultLimitNOFILE=1024:524288``,
    and another user can make thousands of namespaces). Where it cannot be raised, what
    does not fit is a problem (:func:`socket_namespaces`)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):  # (an unlimited hard limit is past fs.nr_open)
        soft = None
    try:
        yield
    finally:
        if soft is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


#: An open file of a ``/proc/PID/net`` folder, through a procfs mounted anywhere (told by its
#: filesystem: :func:`procfs_devices`): what of it follows ``net/``.
PROC_NET = re.compile(r".*/(?:[0-9]+|self|thread-self)/(?:task/[0-9]+/)?net/(.+?)"
                      r"(?: \(deleted\))?")  # (procfs drops its net/ dentries: "deleted")
#: The tun device's number (misc 200, ``/dev/net/tun`` wherever its node is): an fd of it
#: holds the namespace it was opened in, which ``SIOCGSKNS`` names.
TUN_RDEV = os.makedev(10, 200)


def procfs_devices(infos: list[tuple[Path, str]]) -> set[int]:
    """The filesystems (``st_dev``) of every procfs mounted in the mount namespaces ``infos``
    ((a process of it, its ``mountinfo``)): ``/proc``, a container's ``/host/proc``, any."""
    out = set()
    for _, text in infos:
        for line in kernel_lines(text) if " - proc " in text else ():  # (tables may be long)
            head, _, tail = line.partition(" - ")
            fields = head.split()
            if tail.split()[:1] == ["proc"] and len(fields) >= 3 and \
                    re.fullmatch(r"\d+:\d+", fields[2]):
                out.add(os.makedev(*map(int, fields[2].split(":"))))
    return out


def tap_majors(fs: Sysfs) -> dict[int, str]:
    """The character majors of the queues of macvtap and ipvtap devices (``/dev/tapN``), from
    ``/proc/devices``: an fd of one holds the namespace its socket was made in, which no
    kernel interface names (``tap_ioctl`` has no ``SIOCGSKNS``). Empty where none is loaded."""
    text = (fs.read(fs.proc("devices")) or "").partition("Character devices:")[2]
    text = text.partition("Block devices:")[0]
    return {int(f[0]): f[1] for line in text.splitlines()
            if len(f := line.split()) == 2 and f[0].isdigit() and f[1] in ("macvtap", "ipvtap")}


def node_holds_namespace(ident: Identity, taps: dict[int, str]) -> str | None:
    """What a character device open as ``ident`` is when it holds a network namespace: the
    tun device (``tun``: asked as a socket is) or a macvtap/ipvtap queue (its driver's name:
    which namespace, nothing says); None for any other file."""
    if not stat.S_ISCHR(ident.mode):
        return None
    if ident.rdev == TUN_RDEV:
        return "tun"
    return taps.get(os.major(ident.rdev))


def proc_net_problems(files: list[tuple[str, str, Path]], infos: list[tuple[Path, str]],
                      fs: Sysfs) -> list[str]:
    """Why the open ``/proc/PID/net`` files ``files`` ((link, how, ``/proc/PID/fd/N``)) may
    hold a namespace no one reads: such a file keeps the namespace it shows alive, and no
    kernel interface names it. One is known when it is the file of the harness's own
    namespace or of the one its process is in (the same procfs inode); one whose fd is on no
    procfs mount (``fdinfo``'s ``mnt_id``, from ``infos``) is not such a file at all, and is
    never stat'ed (a FUSE file named so would block the stat)."""
    mounts = {line.split(maxsplit=1)[0]: line.partition(" - ")[2].split()[:1]
              for _, text in infos for line in kernel_lines(text)}
    out = []
    for target, how, entry in files:
        rel, pid = PROC_NET.fullmatch(target)[1], entry.parent.parent.name
        fdinfo = fs.read(entry.parent.parent / "fdinfo" / entry.name) or ""
        mount = re.search(r"^mnt_id:\s*(\d+)", fdinfo, re.M)
        if mount and mounts.get(mount[1], ["proc"]) != ["proc"] or \
                not mount and not os.path.lexists(entry):
            continue  # on a mount seen not to be procfs, or gone
        if mount and mount[1] not in mounts:
            mount = None  # on no mount seen: what it is cannot be told without a stat
        known = set()
        for where in (fs.proc("self", "net", rel), fs.proc(pid, "net", rel)):
            try:
                known.add(os.stat(where).st_ino)
            except OSError:
                pass
        try:  # (from the cache: the fd may be another user's FUSE file by now)
            if mount and ".." not in rel.split("/") and cached_inode(str(entry)) in known:
                continue
        except FileNotFoundError:
            continue
        except OSError:
            pass
        out.append(f"{how} is {target}, which may be a file of a network namespace that is "
                   f"neither this one nor the one pid {pid} is in (no kernel interface names "
                   "which): the interfaces of a namespace held only by it would be missed")
    return out


# -- io_uring registered files ----------------------------------------------------------------


def ring_problems(rings: list[tuple[str, str, Path]], sockets: set[str], namespaces: set[str],
                  budget: "storage.Budget") -> list[str]:
    """Why the io_urings ``rings`` ((link, how, ``/proc/PID/fd/N``)) may hold a network
    namespace no one reads: a socket registered with a ring (``IORING_REGISTER_FILES``, its
    fd closed after; or made as a direct descriptor, with no fd ever) holds the namespace it
    was made in, and cannot be reached to ask which. Its slot is known only when the same
    socket (``socket:[N]``) is among the fds ``sockets`` asked, or an nsfs file's namespace
    among ``namespaces`` read; a slot a kernel before 6.14 prints with no name (a socket or a
    pipe: which, it does not say), a ring whose files cannot be read, or one past ``budget``
    (the fds'), is a problem. The registered files are read as the storage read reads them
    (:func:`harness.host.storage._registered`)."""
    out = []
    for _, how, entry in rings:
        if not budget.allows():
            return out + [f"{how} and maybe more io_urings were not read within the fds' "
                          "budget: a socket registered with one would hold a network "
                          "namespace that is missed"]
        try:
            with budget.timing():
                files = _ring_files(entry)
        except (FileNotFoundError, ProcessLookupError):
            continue  # (closed since, or its process ended: it holds nothing now)
        except OSError as e:
            files = [f"<its registered files cannot be read: {e.strerror or e}>"]
        held = sorted({f for f in files if (f.startswith("socket:") and f not in sockets)
                       or (f.startswith("net:") and f[4:] not in namespaces)
                       or f == "" or f.startswith("<its")})
        if held:
            out.append(f"{how} is an io_uring with {', '.join(map(repr, held[:3]))}"
                       f"{' and more' if len(held) > 3 else ''} registered: a socket there "
                       "holds the network namespace it was made in, which nothing can ask "
                       "(no fd of it): the interfaces of a namespace held only by it would be "
                       f"missed (end pid {entry.parent.parent.name} to prove the host's NICs "
                       "idle)")
    return out


def _ring_files(entry: Path) -> list[str]:
    """The registered files of the io_uring fd ``entry``, from its fdinfo, at most
    :data:`~harness.host.storage.MAX_RING_BYTES` of it (a user chooses how large the table
    is). The kernel leaves the list out while the ring is busy: read again, then an error.
    Raises OSError."""
    for _ in range(3):
        with open(entry.parent.parent / "fdinfo" / entry.name, "rb") as f:
            data = f.read(storage.MAX_RING_BYTES + 1)
        if len(data) > storage.MAX_RING_BYTES:
            raise OSError(errno.EFBIG, f"more than {storage.MAX_RING_BYTES >> 20} MB")
        info = os.fsdecode(data)
        count = re.search(r"^UserFiles:\s*(\d+)", info, re.M)
        files = storage._registered(info)
        if not count or int(count[1]) == 0 or files:
            return files
    raise OSError(errno.EBUSY, f"{count[1]} registered files the kernel did not list (the "
                  "ring was busy, or its table is sparse)")


# -- mount namespaces no process is in -----------------------------------------------------


def nsfs_mounts(infos: list[tuple[Path, str]], root: Path, kind: str) -> list[tuple[str, str, Path]]:
    """(namespace, how, path) of every nsfs file of namespaces of ``kind`` (``net``, ``mnt``)
    bind-mounted in the mount namespaces ``infos`` ((a process of it, its ``mountinfo``)):
    their lines of type nsfs, whose root is ``<kind>:[N]``. The path is reached through the
    process's root; the harness's own (``self``) under ``root``."""
    out = []
    for proc, text in infos:
        base = proc / "root" if proc.name != "self" else root
        for line in kernel_lines(text):
            head, _, tail = line.partition(" - ")
            fields = head.split()
            if tail.split()[:1] == ["nsfs"] and len(fields) >= 5 and \
                    fields[3].startswith(kind + ":["):
                where = unescape_mountinfo(fields[4])
                out.append((fields[3].removeprefix(kind + ":"), f"nsfs mount {where}",
                            base / where.lstrip("/")))
    return out


#: How many mount namespaces no process is in are visited in one read; more is a problem
#: (another user can bind thousands, and each visit keeps a root process alive, about 9 MB,
#: until the read ends). Ubuntu's snapd keeps one for each snap run since boot
#: (``/run/snapd/ns/<snap>.mnt``): a desktop's dozen or two must fit.
MAX_VISITS = 32


def _too_many(inode: str, how: str) -> str:
    return (f"more than {MAX_VISITS} mount namespaces no process is in (mount namespace "
            f"{inode}, {how}, and maybe more): not visited, so a network namespace mounted only "
            "there would be missed" + ("; snapd keeps one for each snap run since boot "
                                       "(`snap-discard-ns SNAP` frees one)"
                                       if "/snapd/ns/" in how else ""))


class MountVisits:
    """Helper processes, each in a mount namespace no process is in, kept until closed: while
    they live, their ``/proc/PID`` shows that namespace's mounts and files."""

    def __init__(self, fs: Sysfs):
        self.fs = fs
        self.helpers: list[subprocess.Popen] = []
        #: The mount namespaces whose way in went away between being seen and being entered
        #: (:func:`went_away`): not visited, and not known to be gone either.
        self.went: list[str] = []

    def __enter__(self) -> "MountVisits":
        return self

    def __exit__(self, *exc) -> None:
        for helper in self.helpers:
            helper.kill()
            helper.wait()
            for stream in (helper.stdin, helper.stdout, helper.stderr):
                stream.close()
        self.helpers.clear()

    def visit(self, infos: list[tuple[Path, str]], held: list[tuple[str, str, Path]],
              problems: list[str]) -> list[tuple[Path, str]]:
        """The ``mountinfo`` of every mount namespace that ``infos`` (every process's) do not
        show but that is held by ``held`` ((``[N]``, how, an nsfs file of it): an fd, a
        thread's link) or by an nsfs ``mnt:`` mount in any mount namespace, this one's
        included: (its helper's /proc entry, its mountinfo). One whose way in went away
        before it was entered (its fd closed, its mount undone) goes to :attr:`went`, never
        taken for gone: it may live on through a holder that was not its first."""
        seen = set()
        for proc, _ in infos:
            try:
                seen.add(os.readlink(proc / "ns" / "mnt").removeprefix("mnt:"))
            except OSError:
                pass  # gone, or already a problem of mountinfos()
        queue = list(held) + nsfs_mounts(infos, self.fs.path(), "mnt")
        out: list[tuple[Path, str]] = []
        deadline = time.monotonic() + storage.MOUNT_TABLES_BUDGET  # (for all tables visited)
        while queue:
            inode, how, path = queue.pop(0)
            if inode in seen:
                continue
            seen.add(inode)
            if len(self.helpers) >= MAX_VISITS:  # (each is a root process, alive until read)
                problems.append(_too_many(inode, how))
                break
            try:
                proc = self._enter(path, inode)
                text = self._table(proc, deadline)
            except TimeoutError:
                problems.append(f"the mount tables of namespaces no process is in took more "
                                f"than {storage.MOUNT_TABLES_BUDGET:g} s to read (mount "
                                f"namespace {inode}, {how}, was the one read then): a network "
                                "namespace mounted there or in those after it would be missed")
                break
            except OSError as e:
                if went_away(e):
                    self.went.append(f"mount namespace {inode} ({how})")
                    continue
                problems.append(f"mount namespace {inode} ({how}) cannot be entered: "
                                f"{e.strerror or e}: a network namespace mounted only there "
                                "would be missed")
                continue
            out.append((proc, text))
            queue += nsfs_mounts([(proc, text)], self.fs.path(), "mnt")
        return out

    def _table(self, proc: Path, deadline: float) -> str:
        """``proc``'s mountinfo, read by ``deadline`` (the kernel's cost of it grows with the
        square of how deep its mounts are stacked, which any user chooses). Raises OSError or
        TimeoutError."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the budget is spent")
        text = call_within(lambda: self.fs.read(proc / "mountinfo"), left)
        if text is None:
            raise OSError(f"{proc}/mountinfo cannot be read")
        return text

    def _enter(self, path: Path, inode: str) -> Path:
        """A helper process in the mount namespace ``inode`` reached through ``path``, proven
        to be it: its /proc entry. Raises OSError."""
        if not self.fs.real_host:
            raise OSError(f"{path} is not entered under a test's fake root")
        fd = open_namespace(self.fs, path, inode, "mnt")
        try:
            helper = subprocess.Popen([sys.executable, "-I", "-S", "-c", _ENTER_MOUNT_NS,
                                       str(fd)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, pass_fds=(fd,),
                                      start_new_session=True)  # (no terminal's Ctrl-C)
        finally:
            os.close(fd)
        self.helpers.append(helper)
        waiting = select.poll()  # (poll: this process may hold fds past 1024, select may not)
        waiting.register(helper.stdout, select.POLLIN)
        ready = waiting.poll(20_000)
        said = os.read(helper.stdout.fileno(), 16) if ready else b""
        if said != b"in\n":
            helper.kill()
            helper.wait()
            raise OSError(errno.EIO, "the helper that enters it " + (
                "failed: " + helper.stderr.read().decode(errors="replace").strip()
                if ready else "gave no answer in 20 s"))
        return self.fs.proc(str(helper.pid))
