"""stderr is never data: a command's complaint cannot become what a parser reads.

The console channel is driven against a real ``/bin/sh`` behind a unix socket, as QEMU's serial
chardev socket puts a guest's shell behind one: stdout and stderr share the one stream there,
the way they share a terminal, so only the framing can tell them apart.
"""

import socket
import subprocess
import threading
import time

import pytest

from harness.core.errors import GuestCheckError, WaitTimeout
from harness.core.waits import Deadline
from harness.guest.access import ConsoleChannel, Shell

from .test_contention import GrowingMeter


@pytest.fixture
def console(tmp_path):
    """A ConsoleChannel to a real shell whose stdout and stderr both go to the socket."""
    path = tmp_path / "console.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    shells = []

    def serve():
        conn, _ = server.accept()
        shells.append(subprocess.Popen(["sh"], stdin=conn, stdout=conn, stderr=conn, cwd=tmp_path))
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    channel = ConsoleChannel(path, timeout=5, name="unit", stderr_file=str(tmp_path / "stderr"))
    t.join(5)
    yield channel
    channel.close()
    server.close()
    for p in shells:
        p.kill()
        p.wait(5)


#: net_failover's interfaces read mid-rename (issue 33): readlink of a name udev had just
#: replaced printed nothing, and basename's complaint became three "failover masters".
MID_RENAME = ("for m in eth0; do echo $m $(basename $(readlink /nonexistent/$m/device/driver)); "
              "done")


def test_console_returns_stdout_and_stderr_apart(console):
    status, out, err = console.run("echo data; echo 'complaint' >&2; echo more; exit 3", 5)
    assert (status, out, err) == (3, "data\nmore\n", "complaint\n")


def test_a_complaint_mid_rename_is_not_parsed_as_a_row(console, tmp_path):
    shell = Shell(tmp_path / "commands.log", console, default_timeout=5)
    r = shell.run(MID_RENAME)
    rows = [line.split() for line in r.output.splitlines()]
    assert rows == [["eth0"]], rows       # basename's words are not in the data
    assert "basename" in r.stderr and "missing operand" in r.stderr
    assert "### stderr:" in (tmp_path / "commands.log").read_text()


def test_read_fails_a_command_that_complains_saying_what_was_expected(console, tmp_path):
    shell = Shell(tmp_path / "commands.log", console, default_timeout=5)
    with pytest.raises(GuestCheckError) as e:
        shell.read(MID_RENAME, "one line per failover slave: master slave driver")
    text = str(e.value)
    assert "expected one line per failover slave: master slave driver" in text
    assert "wrote to stderr" in text and "missing operand" in text and "stdout:\neth0" in text
    assert shell.read("echo ok", "the word ok") == "ok\n"


def test_exit_status_and_output_survive_a_stderr_without_newline(console):
    status, out, err = console.run("printf out; printf err >&2; false", 5)
    assert (status, out, err) == (1, "out", "err")


def test_a_console_command_is_given_the_time_its_guest_lost(console, tmp_path):
    """A command that needs 1.5 s, with a 1 s deadline: a guest that could not run most of
    that time gets it (harness.core.contention: by 1.5 s the deadline is 2.35 s, with room
    for a loaded machine), and the command log says the deadline moved; one that lost no
    time fails on time, saying the deadline was not moved."""
    shell = Shell(tmp_path / "commands.log", console, default_timeout=1.0,
                  meters=lambda: GrowingMeter(0.9))
    assert shell.run("sleep 1.5; echo done").output == "done\n"
    assert "past its 1 s deadline" in (tmp_path / "commands.log").read_text()
    with pytest.raises(WaitTimeout) as e:
        console.run("sleep 1.5; echo done", 1.0, lambda: GrowingMeter(0.0))
    assert "did not finish within 1.0 s (stretched by 0.0 s" in str(e.value)
    assert "had the host's CPU throughout" in str(e.value)


def test_the_last_step_of_a_boot_has_the_whole_boots_room(console):
    """The boot's console, SSH login and cloud-init are steps of one deadline: a step handed
    that Deadline gets the whole boot's room for lost time (a loaded run, Dec 6: cloud-init's
    wait was handed what was left, 5.7 s, so its guest, which had waited 10.1 s for a CPU,
    had 11.3 s of room where the boot had 2 x its whole). A guest that lost no time still
    fails on time."""
    boot = Deadline(1.0, lambda: GrowingMeter(0.9))
    time.sleep(0.7)  # (the earlier steps: 0.3 s of the boot's 1 s left)
    assert console.run("sleep 1.5; echo done", boot)[1] == "done\n"
    plain = Deadline(1.0, lambda: GrowingMeter(0.0))
    time.sleep(0.7)
    with pytest.raises(WaitTimeout) as e:
        console.run("sleep 1.5; echo done", plain)
    assert "did not finish within 1.0 s (stretched by 0.0 s" in str(e.value)
