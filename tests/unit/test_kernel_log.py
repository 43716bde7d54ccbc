"""The end-of-test kernel check's parsing: one entry per problem, its call trace with it."""

from harness.guest.checks import _split_problems

WARN = ["[69.7] WARNING: CPU: 0 PID: 24 at kernel/workqueue.c:635 __cancel_work_timer+0x10b/0x1a0",
        "[69.7] RIP: 0010:__cancel_work_timer+0x10b/0x1a0", "[69.7] Call Trace:",
        "[69.7]  virtscsi_remove+0x96/0xa0 [virtio_scsi]"]


def test_a_warning_keeps_its_call_trace():
    assert _split_problems(WARN) == ["\n".join(WARN)]


def test_two_problems_close_together_are_two_entries():
    hung = ["[80.0] INFO: task dd:312 blocked for more than 120 seconds.", "[80.0] Call Trace:"]
    assert _split_problems(WARN + hung) == ["\n".join(WARN), "\n".join(hung)]


def test_a_lone_call_trace_is_a_problem_and_quiet_lines_are_none():
    assert _split_problems(["[1.0] ok", "[2.0] Call Trace:", "[2.0]  f"]) == ["[2.0] Call Trace:\n[2.0]  f"]
    assert _split_problems(["[1.0] e1000e: eth0 NIC Link is Up"]) == []
