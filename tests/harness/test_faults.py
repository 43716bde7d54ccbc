"""Bad environments give one clear line; a run leaves nothing behind, and the suite can tell."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.run import hygiene
from harness.images import builtin as images
from harness.qemu.accel import choose
from harness.core.errors import ConfigError, ImageError
from harness.guest.guest import Guest
from harness.qemu.machine import GuestSpec

REPO = Path(__file__).resolve().parents[2]



def run_pytest(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=env)


def fake_qemu(tmp_path: Path, version: str) -> Path:
    exe = tmp_path / "qemu-system-x86_64"
    exe.write_text(f"#!/bin/sh\necho 'QEMU emulator version {version}'\n")
    exe.chmod(0o755)
    return exe


@pytest.mark.parametrize("binary, message", [
    ("/nonexistent/qemu-system-x86_64", "is not usable"),
    ("OLD", "QEMU 4.2.1 (.*) is too old: the harness needs 6.2 or newer"),
])
def test_unusable_qemu_is_one_clear_line(tmp_path, binary, message, child_env):
    if binary == "OLD":
        binary = str(fake_qemu(tmp_path, "4.2.1"))
    # (a run that would start guests: the QEMU is looked at once collection chose such a test;
    # --collect-only and unit runs never look at it)
    p = run_pytest(child_env, "-q", "-p", "no:xdist", "tests/scenarios/test_nic.py", "-k", "pc and e1000e",
                   "--qemu-binary", binary, "--report-dir", str(tmp_path / "r"))
    assert p.returncode == 4, p.stdout + p.stderr  # usage error: nothing ran
    assert re.search(message, p.stderr), p.stderr
    assert "--qemu-binary" in p.stderr


def test_kvm_forced_where_it_cannot_run(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu vme de pse tsc msr\n")
    with pytest.raises(ConfigError, match="--accel kvm, but KVM cannot run guests here: the CPU "
                                          "advertises no vmx/svm; .* does not exist"):
        choose("kvm", cpuinfo_path=str(cpuinfo), kvm_path=str(tmp_path / "kvm"))
    assert choose("auto", cpuinfo_path=str(cpuinfo), kvm_path=str(tmp_path / "kvm")).name == "tcg"


def test_corrupt_image_is_refused_with_the_fix(hotplug_session, tmp_path):
    src = hotplug_session.image.kernel.parent
    copy = tmp_path / src.name
    copy.mkdir()
    for p in src.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    with open(copy / "initrd.cpio", "r+b") as f:
        f.seek(1000)
        f.write(b"\xff")
    with pytest.raises(ImageError, match=r"is corrupt: initrd.cpio does not match its checksum"
                                         r"[\s\S]*run `make image`"):
        images.image_from_dir(copy)


def test_hygiene_check_finds_what_a_run_left(hotplug_session, tmp_path, monkeypatch):
    """A guest deliberately not closed, and a modified image: the end-of-run check reports
    both (and kills the stray QEMU)."""
    owner = f"hygiene{os.getpid()}"  # a run of its own
    before = hygiene.Snapshot.take(owner=owner)
    run_dir = tmp_path / "run"
    g = Guest(GuestSpec(machine="pc"), hotplug_session.image, workdir=run_dir / "guests" / "g1",
              qemu_binary=hotplug_session.qemu_binary, accel=hotplug_session.accel, owner=owner)
    try:
        g.launch()
        problems = hygiene.check(before, run_dir, hotplug_session.image)
        assert any(f"QEMU pid {g.process.pid}" in p and "killed it" in p for p in problems), problems
        assert any(str(g._tmp.name) in p for p in problems), problems
        g.process.wait(10)  # it was killed by the check
    finally:
        g.close()
    assert hygiene.check(before, run_dir, hotplug_session.image) == []


def test_reports_on_a_full_disk_say_so(tmp_path, child_env):
    """The report folder on a full file system (a 64 KiB tmpfs): the run says what happened."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root (CI runs as root)")
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], check=True)
    try:
        (full / "filler").write_bytes(b"\0" * 60_000)
        p = run_pytest(child_env, "-q", "-p", "no:xdist", "tests/scenarios/test_nic.py", "-k",
                       "pc and e1000e", "--report-dir", str(full))
        out = p.stdout + p.stderr
        assert p.returncode != 0
        assert "No space left on device" in out and "free space" in out, out[-2000:]
    finally:
        subprocess.run(["umount", str(full)], check=True)


def test_lab_host_that_never_boots_is_stopped_at_its_boot_deadline(tmp_path):
    """A lab host stuck before its stage 2 (here a real QEMU that never starts its CPUs) is
    stopped at the boot deadline with the console's path, not left until --lab-timeout."""
    import time

    from harness import lab
    from harness.core.errors import LabError

    argv = ["qemu-system-x86_64", "-S", "-M", "q35", "-nodefaults", "-display", "none",
            "-chardev", f"file,id=console,path={tmp_path / 'console.log'}",
            "-serial", "chardev:console"]
    host = lab.LabHost(argv, tmp_path, boot_timeout=2, silence_timeout=600)
    t0 = time.monotonic()
    with pytest.raises(LabError) as info:
        host.run(deadline=time.monotonic() + 3600)
    assert "did not boot in 2 s" in info.value.message and "console.log" in info.value.message
    assert time.monotonic() - t0 < 15
    assert host.process.poll() is not None, "the lab QEMU was left running"


def _lab_host_with_console(tmp_path, console: str, **deadlines):
    """A LabHost whose console log already holds ``console`` (what L1 printed); its QEMU never
    runs its CPUs and sends its own console elsewhere, so nothing else is added."""
    from harness import lab

    (tmp_path / "console.log").write_text(console)
    argv = ["qemu-system-x86_64", "-S", "-M", "q35", "-nodefaults", "-display", "none",
            "-chardev", f"file,id=console,path={tmp_path / 'elsewhere.log'}",
            "-serial", "chardev:console"]
    return lab.LabHost(argv, tmp_path, **{"echo": lambda line: None, "boot_timeout": 300,
                                           "silence_timeout": 600, **deadlines})


def _stopped_with(host) -> str:
    """Run ``host`` to its LabError; check it was quick and left no QEMU; the message."""
    import time

    from harness.core.errors import LabError

    t0 = time.monotonic()
    with pytest.raises(LabError) as info:
        host.run(deadline=time.monotonic() + 3600)
    assert time.monotonic() - t0 < 15
    assert host.process.poll() is not None, "the lab QEMU was left running"
    return info.value.message


def test_lab_host_that_falls_silent_is_stopped(tmp_path):
    """A lab host that booted (its console said "lab: ready") and then prints nothing is hung:
    it is stopped after the silence deadline, not left until --lab-timeout."""
    lines = []
    host = _lab_host_with_console(tmp_path, "lab: ready uptime=1.00 kernel=test kvm=no\n",
                                  echo=lines.append, silence_timeout=2)
    assert "has printed nothing for 2 s" in _stopped_with(host)
    assert lines == ["lab: ready uptime=1.00 kernel=test kvm=no"]


def test_lab_host_that_prints_nothing_but_beats_is_not_taken_for_hung(tmp_path):
    """A test may print nothing for minutes (the SIGTERM test's own pytest inside L1): while
    the job's heartbeat file changes the lab host is alive; once it stops too, it is hung."""
    import threading
    import time

    from harness.lab.host import HEARTBEAT

    host = _lab_host_with_console(tmp_path, "lab: ready uptime=1.00 kernel=test kvm=no\n",
                                  silence_timeout=2)
    stop = time.monotonic() + 5

    def beat():
        while time.monotonic() < stop:
            (tmp_path / HEARTBEAT).write_text(f"{time.monotonic():.2f} 0.00\n")
            time.sleep(0.5)
    beater = threading.Thread(target=beat)
    t0 = time.monotonic()
    beater.start()
    message = _stopped_with(host)
    beater.join()
    assert time.monotonic() - t0 > 6, "stopped while the heartbeat still came"
    assert "printed nothing for 2 s and its job's heartbeat stopped" in message


def test_lab_host_whose_job_stopped_beating_is_stopped_before_the_silence_deadline(tmp_path):
    """Once the job beats, the lab host and its heartbeat both silent for the beat deadline is
    hung, however long the silence deadline (300 s x factor: what a mid-test wedge used to
    cost before the lab ran again). Before the first beat, the silence deadline holds."""
    import time

    from harness.lab.host import HEARTBEAT

    (tmp_path / HEARTBEAT).write_text("12.00 0.00\n")
    host = _lab_host_with_console(tmp_path, "lab: ready uptime=1.00 kernel=test kvm=no\n",
                                  silence_timeout=600, beat_timeout=2)
    t0 = time.monotonic()
    assert "printed nothing for 2 s and its job's heartbeat stopped" in _stopped_with(host)
    assert time.monotonic() - t0 >= 2
    (tmp_path / HEARTBEAT).unlink()
    (tmp_path / "never-beat").mkdir()
    host = _lab_host_with_console(tmp_path / "never-beat", "lab: ready uptime=1.00 kernel=test kvm=no\n",
                                  silence_timeout=3, beat_timeout=1)
    assert "printed nothing for 3 s" in _stopped_with(host)


def test_lab_hosts_job_beats_while_its_pytest_runs(tmp_path):
    """The job starts its heartbeat before its pytest and ends it after; the heartbeat is
    Python (the lab host has no coreutils: a shell loop without sleep spun, Dec 5) and
    writes the uptime every HEARTBEAT_SECONDS."""
    import subprocess
    import time

    from harness.lab.host import HEARTBEAT
    from harness.lab.outer import _BEAT, write_job

    text = write_job(tmp_path, tmp_path / "run.json", tmp_path, tmp_path, ["-k", "nic"]).read_text()
    beat, run = text.index("python3.11 -c "), text.index("-m pytest")
    assert beat < run < text.index("kill $beat") < text.index("echo $status >")
    assert "sleep " not in text and "cat " not in text
    p = subprocess.Popen([sys.executable, "-c", _BEAT.format(path=str(tmp_path / HEARTBEAT), every=0.2)])
    try:
        time.sleep(1.0)
        first = (tmp_path / HEARTBEAT).read_text()
        time.sleep(0.5)
        assert (tmp_path / HEARTBEAT).read_text() != first and len(first.split()) == 2
    finally:
        p.kill()
        p.wait()


def test_lab_host_whose_kernel_reports_a_stuck_cpu_is_stopped_at_once(tmp_path):
    """L1's soft-lockup watchdog saying a CPU has been stuck for a minute (nested KVM on TCG
    wedged, as seen in `make lab`) ends the run at once, naming the line; a shorter stall is
    passed over."""
    message = _stopped_with(_lab_host_with_console(
        tmp_path,
        "lab: ready uptime=7.20 kernel=test kvm=yes\n"
        "[  600.1] watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [kworker/1:2:88]\n"
        "[  621.0] watchdog: BUG: soft lockup - CPU#0 stuck for 71s! [qemu-system-x86:677]\n"))
    assert "wedged" in message and "CPU#0 stuck for 71s" in message and "CPU#1" not in message


def test_lab_host_whose_kernel_reports_an_rcu_stall_is_stopped(tmp_path):
    """The wedge where the stuck CPU's own watchdog cannot speak: an RCU stall report, as L1
    printed it in a CI-like `make lab` (and then nothing more), ends the run at once."""
    message = _stopped_with(_lab_host_with_console(
        tmp_path,
        "lab: ready uptime=7.20 kernel=test kvm=yes\n"
        "tests/scenarios/test_usb.py [  822.172826] rcu: INFO: rcu_preempt self-detected stall "
        "on CPU\n"
        "[  822.172826] rcu: \t0-...!: (1 GPs behind) idle=fcbc/1/0x4000000000000000\n"
        "[  822.172826] rcu: \tPossible timer handling issue on cpu=1 timer-softirq=34033\n"))
    assert "wedged" in message and "self-detected stall" in message


RETRY_PROBE = '''
import os, signal
from pathlib import Path
from harness.qemu.machine import GuestSpec

def test_guest_dies_on_first_attempt(hotplug, tmp_path_factory):
    marker = Path(os.environ["HH_RETRY_MARKER"])
    guest = hotplug.guest(GuestSpec(machine="pc"))
    if not marker.exists():
        marker.write_text("1")
        os.kill(guest.process.pid, signal.SIGKILL)  # QEMU exits on its own, as a reset would
        guest.process.wait(10)
        guest.shell.succeed("true", timeout=5)
    assert guest.shell.succeed("echo alive").strip() == "alive"


def test_guest_hangs_on_first_attempt(hotplug, tmp_path_factory):
    marker = Path(os.environ["HH_RETRY_MARKER"])
    guest = hotplug.guest(GuestSpec(machine="pc"))
    if not marker.exists():
        marker.write_text("1")
        os.kill(guest.process.pid, signal.SIGSTOP)  # alive, but nothing runs: a wedged guest
        guest.shell.succeed("true", timeout=3)
    assert guest.shell.succeed("echo alive").strip() == "alive"
'''


@pytest.mark.parametrize("how, retries", [("dies", 0), ("dies", 1), ("hangs", 1)])
def test_retry_dead_guest_runs_the_test_again_and_says_so(tmp_path, child_env, probe_options, how,
                                                          retries):
    """--retry-dead-guest N: a test that failed while its guest's QEMU exited on its own, or
    while its guest stopped answering, runs again; the first attempt's bundle is kept and the
    notes say so. Without it the death fails the test. Real QEMU, killed (or stopped with
    SIGSTOP) under the test on its first attempt."""
    import json

    probe = tmp_path / "retry_probe_test.py"  # outside the repository: nothing to leave there
    probe.write_text(RETRY_PROBE)
    env = {**child_env, "HH_RETRY_MARKER": str(tmp_path / "attempted")}
    p = run_pytest(env, f"{probe}::test_guest_{how}_on_first_attempt", *probe_options,
                   "--report-dir", str(tmp_path / "r"), "--machine", "pc",
                   "--retry-dead-guest", str(retries))
    out = p.stdout + p.stderr
    [run] = (tmp_path / "r").glob("run-*")
    [result] = json.loads((run / "summary.json").read_text())["tests"]
    if retries == 0:
        assert p.returncode == 1, out[-3000:]
        assert result["outcome"] == "failed" and "attempts" not in result
    else:
        assert p.returncode == 0, out[-3000:]
        assert result["outcome"] == "passed" and result["attempts"] == 2, result
        what = "died under it" if how == "dies" else "stopped answering"
        assert result["notes"][0].startswith(f"attempt 1 failed after its guest main-g1 {what}, "
                                             "so it ran again (--retry-dead-guest): "), result
        assert list((run / "bundles").glob("*.attempt-1")), "the failed attempt's bundle is gone"
        assert ("ran again after a guest died or stopped answering under them "
                f"(--retry-dead-guest): test_guest_{how}_on_first_attempt") in out, out[-3000:]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(text.encode() in a for a in args):
            found.append(f"{cmdline.parent.name}: {b' '.join(args)[:200]!r}")
    return found


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupted_run_leaves_no_qemu_and_no_temp_folder(tmp_path, child_env, how):
    """A run stopped while its guests boot -- Ctrl-C at the terminal (SIGINT to the whole
    foreground process group, xdist workers included), or a cancelled CI job (SIGTERM to the
    runner) -- ends with no QEMU process and no temporary folder of the run left."""
    import tempfile

    from harness.core.waits import wait_until

    reports = tmp_path / "reports"
    # As a terminal's foreground job: SIGINT at its default (a shell starts a background job
    # with SIGINT ignored, and a make test started that way passed that on to this run).
    run = subprocess.Popen([sys.executable, "-c", "import signal, sys, pytest; signal.signal("
                            "signal.SIGINT, signal.default_int_handler); sys.exit(pytest.main())",
                            "tests/scenarios", "-k", "test_nic",
                            "-n", "2", "--dist", "loadgroup", "--no-reuse", "-p", "no:cacheprovider",
                            "--report-dir", str(reports)],
                           cwd=REPO, env=child_env, start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def booting():
        # A QEMU of the run that still runs: the run is mid-way, not finishing.
        return [p for p in reports.glob("run-*/guests/*/qemu.pid")
                if p.read_text().strip() and Path(f"/proc/{p.read_text().strip()}").exists()]

    t0 = time.monotonic()
    try:
        wait_until("a guest of the run to be booting", booting, 120)
        sent_after = time.monotonic() - t0
        if how == "ctrl-c":
            os.killpg(run.pid, signal.SIGINT)
        else:
            os.kill(run.pid, signal.SIGTERM)
        out, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert run.returncode == 2, (f"exit {run.returncode} (expected pytest's 'interrupted'; the "
                                 f"signal went {sent_after:.1f} s after the start):\n{out[-3000:]}")
    left = sorted(Path(tempfile.gettempdir()).glob(f"hh-{run.pid}-*"))
    assert not left, f"temporary folders left: {left}\n{out[-3000:]}"
    assert not _processes_mentioning(str(reports)), _processes_mentioning(str(reports))


NEVER_BOOTS = '''
import pytest
from harness.scenario.devices import PCI_PLATFORMS

@pytest.mark.guest(platform=PCI_PLATFORMS[0], kernel_args=("rdinit=/nonexistent", "init=/nonexistent"))
def test_hotplug_into_a_guest_that_cannot_boot(guest):
    raise AssertionError("the test body ran: the guest fixture should have failed in set-up")
'''


def test_guest_that_cannot_boot_is_an_error_in_set_up_with_its_console_log(tmp_path, child_env,
                                                                           probe_options):
    """A guest whose kernel finds no init panics at boot: its test is an error in set-up (the
    fixture ladder boots the guest before the test body), not a failed hotplug, and the bundle
    holds the guest's serial log with the panic and its command line."""
    import json

    probe = tmp_path / "never_boots_test.py"  # outside the repository: nothing to leave there
    probe.write_text(NEVER_BOOTS)
    p = run_pytest(child_env, str(probe), *probe_options, "--report-dir", str(tmp_path / "r"),
                   "--machine", "pc")
    out = p.stdout + p.stderr
    assert p.returncode == 1, out[-3000:]
    assert "1 error" in out and "test body ran" not in out, out[-3000:]
    [run] = (tmp_path / "r").glob("run-*")
    [result] = json.loads((run / "summary.json").read_text())["tests"]
    assert result["outcome"] == "error", result
    assert result["failure_kind"] == "lab", result  # the guest, not the hotplug, is what broke
    [guest] = result["guests"]
    assert guest["boot_failed"], result
    bundle = Path(result["bundle"])
    assert "Kernel panic" in (bundle / guest["name"] / "serial.log").read_text(errors="replace")
    assert (bundle / guest["name"] / "cmdline.txt").exists()
