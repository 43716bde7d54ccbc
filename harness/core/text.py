"""Text the harness shows or writes, when part of it is a name another user chose.

An interface's name, a file's path or a mount's source is any bytes its maker chose. Python
keeps bytes that are not UTF-8 as lone surrogates (``surrogateescape``: file names, the
harness's reading of ``ip`` and ``ss``), which a strict UTF-8 stream or file refuses with
``UnicodeEncodeError``: a traceback in place of a plan, a doctor's report or a run's report.
Names are kept raw wherever they are looked up; :func:`shown` is applied where text leaves
the harness, and renders such bytes visibly instead.

    >>> shown("m\\udcff (netns pid 591) (macvlan)")
    'm\\\\xff (netns pid 591) (macvlan)'
    >>> shown("eth0\\x1b[2J")
    'eth0\\\\x1b[2J'
"""

from __future__ import annotations

import re

#: Control characters but newline and tab: a name that carries them would drive the terminal
#: that shows it (an interface may be named ``\x1b]...``).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: Lone surrogates that stand for no byte (``surrogateescape`` makes U+DC80 to U+DCFF only).
_UNPAIRED = re.compile("[\ud800-\udc7f\udd00-\udfff]")


def shown(text: str) -> str:
    """``text`` as it may be printed or written to any UTF-8 stream or file: each byte that
    was not UTF-8 spelt ``\\xff``, any other lone surrogate (JSON's ``"\\ud800"``)
    ``\\ud800``, and control characters but newline and tab ``\\x1b``."""
    text = _UNPAIRED.sub(lambda m: f"\\u{ord(m[0]):04x}", text)
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)
