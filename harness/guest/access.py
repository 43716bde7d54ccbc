"""A guest shell over SSH (paramiko) or the serial console (pexpect), behind one verb API.

Every command runs with a deadline, and every command, its output and exit status go to the
guest's command log (part of the test bundle).

On the console, each command is framed by markers that only its own execution can print
(``@@HH-B-<n>@@`` stdout ``@@HH-S-<n>@@ <status>`` stderr ``@@HH-E-<n>@@``), so the output and
the exit status come back reliably even if a prompt, an echo or a stale line sits in between.

stderr is never data: a command's standard output and its standard error come back apart, on
both channels (over the console, stderr goes to a file in the guest's /tmp and is printed after
the status). ``Result.output`` is stdout alone; a tool's complaint ("basename: missing operand")
can never be parsed as what it was asked for. :meth:`Shell.read` goes further for commands whose
output is parsed: any word on stderr fails the check, naming what was expected and what came back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import re
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Protocol

import pexpect
import pexpect.spawnbase

from harness.core.errors import GuestCheckError, GuestDiedError, LabError, WaitTimeout, tail
from harness.core.contention import Meters
from harness.core.waits import Deadline, wait_progress, wait_until


@dataclasses.dataclass(frozen=True)
class Result:
    command: str
    status: int
    #: The command's standard output alone.
    output: str
    seconds: float
    channel: str
    #: Its standard error, kept apart: for people and error messages, never for parsing.
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 0

    def described(self) -> str:
        """Exit status, stdout and stderr, for an error's details."""
        return (f"exit status {self.status}\nstdout:\n{tail(self.output) or '(nothing)'}\n"
                f"stderr:\n{tail(self.stderr) or '(nothing)'}")


class Channel(Protocol):
    name: str

    def run(self, command: str, timeout: "float | Deadline",
            meters: Meters = None) -> tuple[int, str, str]: ...

    def exec(self, command: str, timeout: "float | Deadline",
             meters: Meters = None) -> tuple[int, str]: ...

    def close(self) -> None: ...


class _MergedExec:
    """``exec``: a command's status and what it printed on stdout and stderr together, for
    callers that only show it to people (a failed clock set's message); parsers use ``run``."""

    def exec(self, command: str, timeout: "float | Deadline",
             meters: Meters = None) -> tuple[int, str]:
        status, out, err = self.run(command, timeout, meters)
        return status, out + err


class DrainedConsole(pexpect.spawnbase.SpawnBase):
    """A pexpect spawn over QEMU's console socket that a thread reads all the time.

    A client connected to QEMU's serial chardev that does not read stops the guest's serial
    output after about 280 bytes, and the guest kernel then crawls in printk for every console
    line (measured on QEMU 7.2: a systemd guest reached no login in 60 s over SSH, while the same
    command line with nothing attached booted in 33 s). So the harness never leaves the socket
    unread: a thread moves everything QEMU sends into a queue (QEMU also writes it to the
    serial log), and ``expect`` reads from that queue. Console output that nobody waits for is
    kept until the next ``expect``, which skips it (every command is framed by its own markers).
    """

    def __init__(self, sock: socket.socket, name: str):
        super().__init__(timeout=30, maxread=65536, encoding="utf-8", codec_errors="replace")
        self.delayafterread = None  # read_nonblocking blocks on the queue: no need to nap
        self._sock = sock
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._buf = ""
        self._eof = False
        self.closed = False
        self._reader = threading.Thread(target=self._drain, daemon=True, name=f"console-{name}")
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                data = b""
            self._queue.put(data or None)
            if not data:
                return

    def read_nonblocking(self, size=1, timeout=-1):
        if timeout == -1:
            timeout = self.timeout
        if not self._buf and not self._eof:
            try:
                chunk = self._queue.get(timeout=max(0.0, timeout or 0.0))
            except queue.Empty:
                raise pexpect.TIMEOUT("no console output within the timeout") from None
            while chunk is not None:
                self._buf += self._decoder.decode(chunk, final=False)
                try:
                    chunk = self._queue.get_nowait()
                except queue.Empty:
                    break
            if chunk is None:
                self._eof = True
        if not self._buf and self._eof:
            self.flag_eof = True
            raise pexpect.EOF("the console socket closed")
        out, self._buf = self._buf[:size], self._buf[size:]
        self._log(out, "read")
        return out

    def send(self, s) -> int:
        data = self._encoder.encode(self._coerce_send_string(s), final=False)
        self._log(s, "send")
        self._sock.sendall(data)
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._reader.join(5)


#: Terminal control sequences (colours, cursor moves) that tools print on a tty.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]")


def _connected(socket_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(socket_path))
    except OSError:
        sock.close()
        raise
    return sock


#: Where a console command's stderr waits in the guest until the status is printed.
CONSOLE_STDERR = "/tmp/.hh-stderr"


class ConsoleChannel(_MergedExec):
    """A root shell on the guest's serial console, through QEMU's chardev unix socket.
    Standard error comes back apart from standard output: see :data:`CONSOLE_STDERR`."""

    name = "console"

    def __init__(self, socket_path: Path, timeout: float, name: str = "guest", *,
                 stderr_file: str = CONSOLE_STDERR):
        self.stderr_file = stderr_file
        try:  # (QEMU may not have created the socket yet)
            sock = wait_until(f"the serial console {socket_path}", lambda: _connected(socket_path),
                              timeout, interval=0.05, retry_on=(OSError,))
        except WaitTimeout as e:
            raise LabError(f"cannot connect to the serial console {socket_path} within "
                           f"{timeout:g} s: {e.details}",
                           hint="QEMU did not create its console socket; see its output") from e
        self._spawn = DrainedConsole(sock, name)
        self._counter = 0
        self._lock = threading.Lock()

    def expect(self, pattern: str, timeout: float) -> re.Match:
        """Wait for ``pattern`` on the console. Raises :class:`WaitTimeout` with the tail seen."""
        try:
            self._spawn.expect(pattern, timeout=max(0.01, timeout))
        except pexpect.TIMEOUT:
            raise WaitTimeout(f"console: no {pattern!r} within {timeout:.1f} s",
                              details="last console output:\n" + tail(self._spawn.before))
        except pexpect.EOF:
            raise GuestDiedError(f"console closed while waiting for {pattern!r} (QEMU exited?)",
                                 details="last console output:\n" + tail(self._spawn.before))
        return self._spawn.match

    def forget_output(self, seconds: float = 0.5) -> None:
        """Drop what the console printed that nobody read (the prompt after the last command:
        after a reset, a ready pattern that is a shell prompt would match that stale one)."""
        deadline = time.monotonic() + seconds
        with self._lock:
            while time.monotonic() < deadline and self._spawn.expect(
                    [r"(?s).+", pexpect.TIMEOUT, pexpect.EOF], timeout=0.1) == 0:
                pass

    def send_line(self, line: str) -> None:
        """Type a line and do not wait for it (a command that never returns, like a reboot)."""
        with self._lock:
            self._spawn.send(line + "\n")

    def expect_by(self, pattern: str, deadline: Deadline) -> re.Match:
        """:meth:`expect` until ``deadline``, however far the guest's lost time moves it."""
        while True:
            try:
                return self.expect(pattern, max(0.01, deadline.left()))
            except WaitTimeout:
                if deadline.passed():
                    raise

    def run(self, command: str, timeout: "float | Deadline",
            meters: Meters = None) -> tuple[int, str, str]:
        """Run ``command``: (exit status, stdout, stderr)."""
        with self._lock:
            self._counter += 1
            n = self._counter
            # The markers are printed with a split literal, so an echo of the typed line
            # (should the terminal echo) can never match them. The stderr file is removed once
            # read: a background job the command left keeps writing to an unlinked file.
            err = self.stderr_file
            self._spawn.send(f"echo '@@HH-B-{n}''@@'; ( {command}\n) 2>{err}; "
                             f"echo '@@HH-S-{n}''@@' $?; cat {err}; rm -f {err}; "
                             f"echo '@@HH-E-{n}''@@'\n")
            deadline = Deadline.of(timeout, meters)
            try:
                self.expect_by(f"@@HH-B-{n}@@\r?\n", deadline)
                m = self.expect_by(f"@@HH-S-{n}@@ (\\d+)\r?\n", deadline)
                stdout = self._spawn.before
                self.expect_by(f"@@HH-E-{n}@@\r?\n", deadline)
            except WaitTimeout as e:
                self._spawn.send("\x03")  # interrupt the command; the next marker resyncs
                raise WaitTimeout(f"console: `{command}` did not finish within {deadline.seconds:.1f} s"
                                  f"{deadline.said()}", details=e.details) from None
            return int(m.group(1)), _terminal_text(stdout), _terminal_text(self._spawn.before)

    def close(self) -> None:
        try:
            self._spawn.close()
        except OSError:
            pass


@contextlib.contextmanager
def _paramiko_quiet():
    """No paramiko transport log while sshd starts: each try it refuses or resets is logged as
    an ERROR with a traceback (dozens per boot, which buried a failing test's own message in
    its captured log); the wait's own error says what the last try met."""
    logger = logging.getLogger("paramiko.transport")
    drop = logging.Filter("(none)")  # a name no record has: every record is dropped
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


class SSHChannel(_MergedExec):
    """A root shell over SSH (paramiko) to the guest's forwarded port on loopback."""

    name = "ssh"

    def __init__(self, host: str, port: int, user: str, key_path: Path,
                 timeout: "float | Deadline", meters: Meters = None):
        import paramiko

        try:
            key = paramiko.PKey.from_path(str(key_path))
        except (OSError, paramiko.SSHException) as e:
            raise LabError(f"cannot load the SSH key {key_path}: {e}",
                           hint="pass an unencrypted private key with --guest-key") from e
        def login():
            client = paramiko.SSHClient()
            # The guest is a throw-away VM of ours on loopback, with a host key made at boot.
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            try:
                # Short per-try timeouts: a guest without an address yet would otherwise hold
                # each try for the whole connect timeout.
                client.connect(host, port=port, username=user, pkey=key, timeout=2,
                               banner_timeout=3, auth_timeout=3, allow_agent=False,
                               look_for_keys=False)
            except Exception:  # paramiko raises many types while sshd starts
                client.close()
                raise
            return client
        # (every failure is retried until the deadline: sshd not up yet)
        with _paramiko_quiet():
            self._client = wait_until(f"ssh {user}@{host}:{port} to let us log in", login,
                                      timeout, interval=0.2, retry_on=(Exception,),
                                      meters=meters)

    def run(self, command: str, timeout: "float | Deadline",
            meters: Meters = None) -> tuple[int, str, str]:
        """Run ``command``: (exit status, stdout, stderr), read from SSH's two streams."""
        import paramiko

        try:
            deadline = Deadline.of(timeout, meters)
            _, stdout, _ = self._client.exec_command(f"( {command}\n)",
                                                     timeout=max(1.0, deadline.left()))
            chan = stdout.channel
            out, err = [], []
            while not (chan.exit_status_ready() and not chan.recv_ready()
                       and not chan.recv_stderr_ready()):
                if chan.recv_ready():
                    out.append(chan.recv(65536))
                elif chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(65536))
                elif deadline.passed():
                    chan.close()
                    raise WaitTimeout(f"ssh: {command!r} did not finish within {deadline.seconds:g} s"
                                      f"{deadline.said()}",
                                      details="stdout so far:\n" + tail(b"".join(out).decode(errors="replace"))
                                      + "\nstderr so far:\n" + tail(b"".join(err).decode(errors="replace")))
                else:
                    chan.status_event.wait(0.05)
            return (chan.recv_exit_status(), b"".join(out).decode(errors="replace"),
                    b"".join(err).decode(errors="replace"))
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise GuestDiedError(f"ssh connection lost while running {command!r}: {e}") from e

    def alive(self, timeout: float = 3.0) -> bool:
        """Whether the SSH link still carries a command (``true``) within ``timeout``."""
        try:
            return self.run("true", timeout)[0] == 0
        except (GuestDiedError, WaitTimeout):
            return False

    def close(self) -> None:
        self._client.close()


def _terminal_text(text: str) -> str:
    """What a command printed on the console, as it would have printed it to a file: a console
    is a terminal, and tools colour their output there (util-linux's fdisk printed
    "\x1b[1mDisk /dev/vda" on a systemd guest); the escapes and the CRs are not output."""
    return _ANSI.sub("", text.replace("\r\n", "\n"))


def _lines(text: str) -> str:
    return text + ("" if text.endswith("\n") or not text else "\n")


class Shell:
    """The verb API tests use: ``run``, ``succeed``, ``fail``, ``wait_until``.

    Commands go to the preferred channel (SSH when the guest has one); when it drops, for
    instance because the NIC it used was removed, they go on over the serial console.

    Every ``timeout`` given to a verb is a reference figure (what the reference machine needs,
    see :mod:`harness.pace`); ``scale`` turns it into this machine's seconds. ``default_timeout``
    is already in this machine's seconds. ``meters`` (the guest's QEMU process's, see
    :mod:`harness.core.contention`) moves every deadline later by the time the guest could not
    run meanwhile.
    """

    def __init__(self, log_path: Path, console: ConsoleChannel | None = None, *,
                 default_timeout: float, scale: Callable[[float], float] = lambda s: s,
                 meters: Meters = None):
        self.console = console
        self.ssh: SSHChannel | None = None
        self.default_timeout = default_timeout
        self.scale = scale
        self.meters = meters
        self._log = open(log_path, "a", buffering=1)

    def close(self) -> None:
        for ch in (self.ssh, self.console):
            if ch is not None:
                ch.close()
        self.ssh = self.console = None
        self._log.close()

    def _channel(self) -> Channel:
        ch = self.ssh or self.console
        if ch is None:
            raise LabError("the guest has no shell channel", hint="the guest was closed")
        return ch

    def run(self, command: str, timeout: float | None = None) -> Result:
        """Run ``command`` in the guest; never raises for a non-zero exit status."""
        timeout = self.scale(timeout) if timeout else self.default_timeout
        return self._run_on(self._channel(), command, timeout)

    def _run_on(self, ch: Channel, command: str, timeout: float) -> Result:
        t0 = time.monotonic()
        try:
            status, output, stderr = ch.run(command, timeout, self.meters)
        except (GuestDiedError, WaitTimeout) as e:
            # A removed management NIC leaves the SSH session hanging, not closed: tell a dead
            # link from a slow command by asking the link for a trivial command.
            if ch is self.ssh and self.console is not None and not self.ssh.alive():
                self._log.write(f"### ssh link is dead ({type(e).__name__}); falling back to the "
                                f"serial console and running the command there\n")
                self.ssh.close()
                self.ssh = None
                return self._run_on(self._channel(), command, timeout)
            raise
        result = Result(command, status, output, time.monotonic() - t0, ch.name, stderr)
        if result.seconds > timeout:  # (its deadline moved: harness.core.contention)
            self._log.write(f"### took {result.seconds:.1f} s, past its {timeout:g} s deadline, "
                            f"which the guest's lost time to host contention moved\n")
        self._log.write(f"### [{time.strftime('%H:%M:%S')}] ({ch.name}, {result.seconds:.2f} s, "
                        f"exit {status}) $ {command}\n{_lines(output)}"
                        + (f"### stderr:\n{_lines(stderr)}" if stderr else ""))
        return result

    def succeed(self, command: str, timeout: float | None = None) -> str:
        """Run ``command``; raise :class:`GuestCheckError` unless it exits 0. Returns output."""
        r = self.run(command, timeout)
        if not r.ok:
            raise GuestCheckError(f"guest command failed (exit {r.status}): {command}",
                                  details=r.described())
        return r.output

    def read(self, command: str, expected: str, timeout: float | None = None) -> str:
        """The stdout of ``command``, whose output is ``expected`` (what a parser will read:
        "one line per NIC: name MAC"). Anything on stderr, or a non-zero exit, fails the check
        with what was expected and what came back: a half-done command's output is not data."""
        r = self.run(command, timeout)
        if not r.ok or r.stderr.strip():
            raise GuestCheckError(f"expected {expected} from `{command}`; it "
                                  + ("wrote to stderr" if r.ok else f"exited {r.status}"),
                                  details=r.described())
        return r.output

    def fail(self, command: str, timeout: float | None = None) -> str:
        """Run ``command``; raise :class:`GuestCheckError` if it exits 0. Returns what it
        printed, stdout then stderr (a failing command's complaint is what its caller checks)."""
        r = self.run(command, timeout)
        if r.ok:
            raise GuestCheckError(f"guest command unexpectedly succeeded: {command}",
                                  details=r.described())
        return r.output + r.stderr

    def wait_until(self, what: str, check: Callable[[], object], timeout: float,
                   interval: float = 0.1):
        """Call ``check`` until it returns something truthy, or raise :class:`WaitTimeout`
        naming ``what`` and the last value (or error) seen."""
        return wait_until(what, check, self.scale(timeout), interval, meters=self.meters)

    def wait_progress(self, what: str, count: Callable[[], int], want: int, *, stall: float,
                      limit: float, interval: float = 0.5) -> float:
        """:func:`wait_progress` with reference-figure deadlines (scaled here)."""
        return wait_progress(what, count, want, stall=self.scale(stall), limit=self.scale(limit),
                             interval=interval)

    def wait_until_succeeds(self, command: str, timeout: float, interval: float = 0.1) -> str:
        """Run ``command`` until it exits 0; return its output."""
        def attempt():
            r = self.run(command, timeout=max(1.0, min(10.0, timeout)))
            if r.ok:
                return r.output or "ok"
            raise GuestCheckError(f"exit {r.status}: {tail(r.output + r.stderr, 5)}")
        return wait_until(f"`{command}` to succeed", attempt, self.scale(timeout), interval,
                          meters=self.meters)
