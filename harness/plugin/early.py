"""What root's pytest imports before the harness's first check (``pytest_cmdline_main``): the
conftests and tests of the paths it is given, its ini file, its ``pythonpath``.

pytest imports the ``conftest.py`` of every folder on the way to each path it is given while it
parses its arguments (``pytest_load_initial_conftests``), then every test module and conftest in
them; a path in another user's folder runs their code as root. :func:`check_initial_paths` holds
them, the ini file and the ``pythonpath`` ini option to their owners, from the harness's
``tryfirst`` hook, before pytest's own loads any conftest (the harness is an installed plugin:
entry points are loaded before that hook is called).

Some come earlier still, before any plugin's hook: ``-p NAME`` is imported, ``pythonpath``
(``-o pythonpath=DIR``, or an ini file's) put first on ``sys.path`` (where ``harness`` itself
would then be found), an ini file (``-c``) read, with its ``addopts`` of ``-p`` and
``pythonpath``; an args file (``@FILE``) read as more of the command line; and the ini file
itself chosen from the folders above the paths it is given (another user's checkout has its
own pytest.ini). Nothing of the harness can check those once pytest runs: a caller that hands
pytest options or paths it did not choose refuses them before (``make nightly`` with
``HH_PYTEST_ARGS``, through ``python -m harness check-pytest-args``:
:func:`harness.core.paths.check_pytest_options`), and a direct root ``pytest PATH`` outside
a root-owned checkout is its caller's to check.
"""

from __future__ import annotations

import glob
import os
import shlex
from pathlib import Path

from harness.core.paths import (UnsafePathError, check_search_entries, check_test_path,
                                 check_trusted_file)


def check_initial_paths(config) -> None:
    """As root, before pytest imports a conftest (``config``: its early config): every path it
    will collect (its arguments, else ``testpaths``, else the folder it runs in) passes
    :func:`~harness.core.paths.check_test_path` (``confcutdir`` as pytest has it), the ini file
    it read (``-c``, or the one found) and ``--rootdir`` are root's or the invoking user's in
    folders nobody else can write, and so is each ``pythonpath`` folder (as PYTHONPATH's),
    and each args file (``@FILE``, :func:`_args_files`).
    Not root: nothing to check. Raises UnsafePathError naming the path."""
    if os.geteuid() != 0:
        return
    ns = config.known_args_namespace
    here = Path(config.invocation_params.dir)
    for path in _args_files(config, here):
        try:
            check_trusted_file(path)
        except UnsafePathError as e:
            raise UnsafePathError(
                f"the args file @{path}: {e.finding}; pytest reads its lines as more of its "
                "arguments, as root", hint=_ARGS_FILE_HINT) from e
    cut = here / ns.confcutdir if ns.confcutdir else None
    skip = tuple(config.getini("norecursedirs"))
    for path in _initial_paths(config, here):
        check_test_path(path, cut, skip)
    if config.inipath is not None:
        check_trusted_file(Path(config.inipath))
    if ns.rootdir:
        check_search_entries("--rootdir", [os.path.abspath(here / ns.rootdir)],
                             "files pytest reads and writes there as root", hint=_HINT)
    check_search_entries("pytest's pythonpath", [str(p) for p in config.getini("pythonpath")],
                         "a module there that root's Python imports", hint=_HINT)


_ARGS_FILE_HINT = ("put those arguments on root's pytest command line, or keep the file where "
                   "only root (or you, under sudo) can write; docs/vfio.md, 'What root reads "
                   "and runs'")
_HINT = ("run root's pytest from a checkout only root (or you, under sudo) can write, without "
         "-c, --rootdir or -o pythonpath= naming a folder another user can write; "
         "docs/vfio.md, 'What root reads and runs'")


def _args_files(config, here: Path) -> list[Path]:
    """The args files of a direct ``pytest @FILE`` (its arguments, and ``PYTEST_ADDOPTS``'):
    pytest reads each line as a word of its command line (``fromfile_prefix_chars``, pytest
    8.2+) before this hook, so a ``-c`` or ``-p`` there has acted already, as an ini file's
    ``addopts`` has; what is left to stop is the run itself (its test paths, its conftests)
    on a file another user could have written. ``make nightly`` refuses ``@`` before pytest
    runs (:func:`harness.core.paths.check_pytest_options`)."""
    words = [str(a) for a in config.invocation_params.args]
    try:
        words += shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))
    except ValueError:
        pass  # (pytest has refused it already)
    return [here / w[1:] for w in words if w.startswith("@")]


def _initial_paths(config, here: Path) -> list[Path]:
    """The paths pytest loads its initial conftests from (``Config._decide_args``,
    ``_set_initial_conftests``): its arguments (a node id's path), else each ``testpaths``
    match when it runs in its rootdir; and the folder it runs in when none of those exists
    (``--pyargs`` names, a path not made yet)."""
    args = [a.split("::")[0] for a in config.known_args_namespace.file_or_dir]
    if not args and here == Path(config.rootpath) and not config.known_args_namespace.pyargs:
        args = [m for p in config.getini("testpaths")
                for m in sorted(glob.iglob(p, recursive=True))]
    paths = [here / a for a in args]
    return paths + ([here] if not any(os.path.exists(p) for p in paths) else [])
