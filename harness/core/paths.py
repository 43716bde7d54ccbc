"""Folders and files that root writes where other users could reach them.

The harness runs as root on shared lab hosts. A folder it keeps state in (saved guest states
that QEMU restores, the vfio journal that says which driver a device goes back to) must be one
that nobody else can have made, swapped or filled: otherwise a local user plants a symlink that
root then truncates, or a state root's QEMU loads. The rules here:

* every folder on the path is owned by root or by us and writable by nobody else, except a
  sticky folder such as /tmp above our own (nobody else may rename or remove what we made there);
* the folder itself is a real folder (not a symlink), ours, that only we can write to (we
  make it 0700);
* a folder we make, we make with ``mkdir`` (never "use it if it exists"); one a second process
  of the same run finds must pass the same checks;
* files in it are opened with ``O_NOFOLLOW``, and new ones with ``O_EXCL`` under a name
  nobody can predict.

    >>> import tempfile, pathlib
    >>> d = private_dir(pathlib.Path(tempfile.mkdtemp()) / "state")
    >>> oct(d.stat().st_mode & 0o777)
    '0o700'
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import os
import shlex
import shutil
import stat
import tempfile
from pathlib import Path

from harness.core.errors import ConfigError


class UnsafePathError(ConfigError):
    """A path root would write through is not safe from other users. ``finding``: what was
    found, without the consequence the message goes on to ("the folder X is writable by its
    group"), for a caller that says what follows from it in its own words."""

    def __init__(self, message: str, *, hint: str = "", details: str = "", finding: str = ""):
        super().__init__(message, hint=hint, details=details)
        self.finding = finding or message


def _owner_ok(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid())


def invoking_uids() -> set[int]:
    """Root, this process's user and, under sudo, the user who ran sudo: whoever may own what
    root reads and acts on (they could run as root anyway)."""
    uids = {0, os.geteuid()}
    sudo = os.environ.get("SUDO_UID", "")
    if sudo.isdigit():
        uids.add(int(sudo))
    return uids


def read_trusted_file(path: Path) -> str:
    """The text of a file root acts on, read only if nobody else can have written or swapped
    it: every link on the way to it lies in folders only root or the invoking user
    (:func:`invoking_uids`) can write (a sticky folder such as /tmp aside), and so does the
    file; the path is resolved once, the file opened there with ``O_NOFOLLOW``, judged by its
    open fd (owner, mode: writable by nobody else) and read from that fd, so a link or a file
    swapped after the checks is never what is read. Raises UnsafePathError naming what is
    wrong, OSError when it cannot be read."""
    real, fd = _open_trusted(Path(path))
    with os.fdopen(fd, encoding="utf-8") as f:
        return f.read()


def read_plain_file(path: Path, limit: int = 16 << 20) -> str:
    """The text of a file root only reads (a record, a git ref) from a folder others may
    write: opened without following a link at its name and without blocking (O_NOFOLLOW,
    O_NONBLOCK), read only when it is a regular file, at most ``limit`` bytes. So a FIFO
    planted there cannot hang root, nor a link lead root to open a device (``/dev/watchdog``
    arms on open, ``/dev/zero`` never ends). Raises OSError (ELOOP, or EINVAL naming what it
    is) otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
    return data.decode("utf-8", errors="replace")


def check_trusted_file(path: Path) -> Path:
    """Where ``path`` leads, checked as :func:`read_trusted_file` checks (for a file root hands
    to a program rather than reads: a guest's disk, kernel, key). Raises UnsafePathError."""
    real, fd = _open_trusted(Path(path))
    os.close(fd)
    return real


def trusted_program(program: str) -> str:
    """The program root runs for ``program`` (a name looked up on PATH, or a path). As root:
    the real path :func:`shutil.which` finds, checked as :func:`check_trusted_file` checks (the
    file, the folders above it and every link on the way owned by root or the invoking user
    and writable by nobody else), so root never runs what another user could have written or
    swapped; run that path, not ``program``. What a wrapper script runs in turn is the
    wrapper's business. Nothing to run there: ``program`` unchanged (running it fails), once
    its folders are checked and the one it would be made in is writable by nobody else (a
    sticky /tmp included: :func:`check_missing`), so nobody else can put a program there in
    between. Not root:
    ``program`` unchanged. Raises UnsafePathError."""
    if os.geteuid() != 0:
        return program
    found = shutil.which(program)
    if found is not None:
        return str(check_trusted_file(Path(found)))
    if os.sep in program:
        if os.path.lexists(program):  # (not executable now: nor may another user make it so)
            check_trusted_file(Path(program))
        else:
            check_ancestors(Path(program), invoking_uids())
            check_missing(Path(program))
    return program


def check_search_path(search: str | None = None) -> None:
    """As root: every folder on ``PATH`` (``search``, else ``$PATH``) is one nobody else can
    have put a program in, since root runs ``ip``, ``ss``, ``nsenter``, ``setpriv`` (which
    execs QEMU), ``qemu-img``, ``git``, ``ssh-keygen``... by name from it, and so do the
    programs it runs; and so is every folder on ``$PYTHONPATH`` (root's Python imports from
    it). Each entry is an absolute path whose existing folders, and the entry itself, are
    owned by root or the invoking user (:func:`invoking_uids`) and writable by nobody else;
    the entry itself may not be a sticky folder others can write either (anyone may add a new
    ``ip`` to /tmp). An entry that does not exist is fine when the folders above it pass and
    the one it would be made in is writable by nobody else, sticky or not (anyone may make
    /tmp/bin: :func:`check_missing`). Not root: nothing to check. Raises UnsafePathError naming the
    entry."""
    if os.geteuid() != 0:
        return
    search = os.environ.get("PATH", os.defpath) if search is None else search
    _check_search("PATH", search, "a program there that root runs by name (ip, ss, setpriv, "
                                  "qemu-img...)")
    if os.environ.get("PYTHONPATH"):
        _check_search("PYTHONPATH", os.environ["PYTHONPATH"], "a module there that root's "
                                                              "Python imports")


def _check_search(var: str, search: str, what: str, hint: str = "") -> None:
    uids = invoking_uids()
    hint = hint or _SEARCH_HINT.format(var=var)
    for entry in search.split(os.pathsep):
        if not os.path.isabs(entry):
            raise UnsafePathError(
                f"{var} holds the relative entry {entry!r}: another user could put {what}, "
                "in whatever folder root happens to be in", hint=hint)
        try:
            check_ancestors(Path(entry, "x"), uids)
            st = os.stat(entry)
        except FileNotFoundError:
            try:
                check_missing(Path(entry))
            except UnsafePathError as e:
                raise UnsafePathError(f"{var} entry {entry}: {e.finding}, so another user could "
                                      f"put {what}", hint=hint) from e
            continue
        except UnsafePathError as e:
            found = e.finding.replace(f" above {Path(entry, 'x')}", "")  # (x: the entry's own)
            raise UnsafePathError(f"{var} entry {entry}: {found}, so another user could put "
                                  f"{what}", hint=hint) from e
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UnsafePathError(
                f"{var} entry {entry} is writable by "
                f"{'every user' if st.st_mode & stat.S_IWOTH else 'its group'} (mode "
                f"{st.st_mode & 0o7777:o}), so another user could put {what}",
                hint=hint)


def check_search_entries(var: str, entries: list[str], what: str, hint: str = "") -> None:
    """:func:`check_search_path`'s rule for the folders ``entries`` of ``var`` (pytest's
    ``pythonpath`` ini option, which puts them first on root's ``sys.path``; its
    ``--rootdir``), ``hint`` saying what to do instead. As root only. Raises UnsafePathError
    naming the entry."""
    if os.geteuid() == 0 and entries:
        _check_search(var, os.pathsep.join(entries), what, hint)


def check_test_path(path: Path, cut: "Path | None", skip: "tuple[str, ...]" = ()) -> None:
    """As root, a path pytest is given to collect (an argument, a ``testpaths`` entry, the
    folder it runs in), before pytest imports anything from it: it imports the
    ``conftest.py`` of the path's folder and of every folder above it but those above ``cut``
    (its ``confcutdir``: out of it, every one), and then every test module and
    ``conftest.py`` in it. So the folders above it pass :func:`check_ancestors` (owned by root
    or the invoking user, :func:`invoking_uids`, links judged hop by hop), those pytest looks
    for a ``conftest.py`` in may not be writable by others even when sticky (anyone may make
    ``/tmp/conftest.py``), and the file, or every folder and ``.py`` file below the folder
    (but folders named by ``skip``, pytest's ``norecursedirs``, and hidden ones), is owned by
    root or the invoking user and writable by nobody else. A path that does not exist is fine
    when nobody else could make it (:func:`check_missing`). Not root: nothing to check.
    Raises UnsafePathError naming the path."""
    if os.geteuid() != 0:
        return
    uids = invoking_uids()
    path = Path(os.path.abspath(path))
    try:
        check_ancestors(path, uids)
        if not os.path.exists(path):
            check_missing(path)
            return
    except UnsafePathError as e:
        raise UnsafePathError(f"the test path {path}: {e.finding}, and pytest imports what is "
                              "there as root, so another user could choose what root runs",
                              hint=_TEST_PATH_HINT) from e
    folder = path if os.path.isdir(path) else path.parent
    for f in (folder, *folder.parents):
        if cut is None or f not in Path(os.path.abspath(cut)).parents:
            _check_test_entry(path, f, uids, "pytest imports its conftest.py")
    if not os.path.isdir(path):
        _check_test_entry(path, path, uids, "pytest imports it")
        return
    for top, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")
                   and not any(fnmatch.fnmatch(d, pattern) for pattern in skip)]
        for name in dirs + [f for f in files if f.endswith(".py")]:
            _check_test_entry(path, Path(top, name), uids, "pytest imports what is in it")


def _check_test_entry(path: Path, p: Path, uids: set[int], why: str) -> None:
    """One folder or file of :func:`check_test_path`: it (and a link at its name) root's or the
    invoking user's, and writable by nobody else, sticky or not."""
    lst = os.lstat(p)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        st = lst  # (a link that leads nowhere: judged by itself)
    if lst.st_uid in uids and st.st_uid in uids and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return
    what = "the folder" if stat.S_ISDIR(st.st_mode) else "the file"
    who = (f"owned by uid {lst.st_uid if lst.st_uid not in uids else st.st_uid}"
           if lst.st_uid not in uids or st.st_uid not in uids else
           f"writable by {'every user' if st.st_mode & stat.S_IWOTH else 'its group'}"
           + (" (sticky: anyone may add a file)" if st.st_mode & stat.S_ISVTX else ""))
    raise UnsafePathError(
        f"{what} {p}" + (f" (of the test path {path})" if p != path else " (a test path)")
        + f" is {who}, and {why} as root, so another user could choose what root runs",
        hint=(_CONFCUT_HINT if p != path and why.endswith("conftest.py") else "") + _TEST_PATH_HINT)


_TEST_PATH_HINT = ("give root's pytest only test paths in a checkout only root (or you, under "
                   "sudo) can write, such as the one it runs from (copy a colleague's test "
                   "there after reading it), or run that test as its owner without root; "
                   "docs/vfio.md, 'What root reads and runs'")
_CONFCUT_HINT = ("for a test file in a folder only root can write below that one (a temporary "
                 "folder of root's), --confcutdir naming its folder stops pytest looking above "
                 "it; otherwise ")


#: pytest's options that load code or configuration before any plugin's hook (the short ones
#: may be joined to their value or to other short flags: ``-pNAME``, ``-vp NAME``), and those
#: that choose where conftests are looked for (``--rootdir``, ``--confcutdir``) or keep the
#: harness's checks from loading (``--disable-plugin-autoload``: its entry point). And any
#: word that starts with ``@`` (:data:`_ARGS_FILE`).
_PYTEST_SHORT = "pco"
_PYTEST_LONG = ("--config-file", "--override-ini", "--rootdir", "--confcutdir",
                "--disable-plugin-autoload")
#: pytest's parser reads ``@FILE`` as the lines of FILE (``fromfile_prefix_chars="@"``, pytest
#: 8.2+), wherever the word stands (an option's value too), before its first parse: each line
#: is then a word of its command line, ``-c``, ``-p`` and a test path included, read as root
#: from a file nothing of the harness has looked at.
_ARGS_FILE = "@"
#: The folders pytest does not collect in unless its ini says otherwise (its ``norecursedirs``
#: default; the checkout's pytest.ini keeps it).
_PYTEST_NORECURSE = ("*.egg", ".*", "_darcs", "build", "CVS", "dist", "node_modules", "venv",
                     "{arch}")


def code_loading_options(words: list[str]) -> list[str]:
    """Of pytest arguments, those that load code or configuration before any check of the
    harness can run, or choose where conftests are looked for: ``-p``, ``-c``/``--config-file``,
    ``-o``/``--override-ini`` (``pythonpath``, ``addopts``), ``--rootdir``, ``--confcutdir``,
    ``--disable-plugin-autoload``; and an args file, ``@FILE``, wherever it stands (pytest
    reads its lines as more of these words).
    A short flag group that holds p, c or o counts (``-vp NAME`` is ``-v -p NAME``), a ``-r``
    of such characters too (fail closed: the refusal says how to do without); and so does
    ``-p no:NAME``: ``-p no:hotplug`` keeps the harness's own checks from loading."""
    return [w for w in words
            if (w.startswith("-") and not w.startswith("--") and set(w[1:]) & set(_PYTEST_SHORT))
            or w.split("=")[0] in _PYTEST_LONG or w.startswith(_ARGS_FILE)]


def path_words(words: list[str]) -> list[str]:
    """Of pytest arguments, the words pytest may take as paths (a node id's path part,
    ``path::test``, only): every one that is not an option, an option's value included (the
    harness's options are not known when pytest chooses its ini file, so
    ``--qemu-binary /opt/...``'s value is one of its paths then), the value of any long
    option joined to it with ``=`` too (``--junitxml=PATH``, ``--debug=PATH``,
    ``--log-file=PATH``: files root's pytest opens for writing, following links, some before
    any plugin's hook), and every one after ``--``. pytest looks for its ini file in the
    folders above each that exists (``determine_setup``) before any plugin's hook, and
    collects it."""
    out, rest = [], False
    for w in words:
        if rest or not w.startswith("-"):
            out.append(w.split("::", 1)[0])
        elif w == "--":
            rest = True
        elif w.startswith("--") and "=" in w:
            out.append(w.split("=", 1)[1].split("::", 1)[0])
    return out


def check_pytest_options(text: str, where: str) -> None:
    """``text`` (pytest options as ``PYTEST_ADDOPTS`` holds them, split as pytest splits them)
    holds none of :func:`code_loading_options`, and each word pytest may take as a path
    (:func:`path_words`) passes :func:`check_test_path` (relative ones from the folder it runs
    in, as pytest takes them): pytest picks its ini file from the folders above them, and
    acts on that ini's ``pythonpath`` and ``addopts`` ``-p``, before the harness's plugin can
    look, so another user's checkout (its own pytest.ini) or a folder others can write (an
    ini made there) is refused before root's pytest runs. Raises ConfigError naming them."""
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise ConfigError(f"{where} cannot be split into words ({e})",
                          hint=f"close the quote in {where}") from e
    found = code_loading_options(words)
    files = [w for w in found if w.startswith(_ARGS_FILE)]
    if files:
        raise ConfigError(
            f"{where} holds {shlex.join(files)}, whose file pytest reads as more of its "
            "arguments (a -c, -p or test path there included), as root, before the harness "
            "can check who could have written it or what it says",
            hint=f"put the test selection in {where} itself (-k, -m, test paths of the "
                 "checkout), not in a file; docs/fleet.md")
    if found:
        raise ConfigError(
            f"{where} holds {shlex.join(found)}, with which pytest loads code or configuration "
            "(a plugin, an ini file, a pythonpath) or chooses where it imports conftest.py "
            "from, as root, before the harness can check who could have written it",
            hint="give the nightly only the harness's options and -k/-m selections there; "
                 "install a plugin into root's venv, and put ini settings in the checkout's "
                 "pytest.ini; docs/fleet.md")
    paths = path_words(words)
    cut = _ini_folder(paths, where)
    for word in paths:
        try:
            check_test_path(Path(word), cut, _PYTEST_NORECURSE)
        except UnsafePathError as e:
            raise _path_word_refused(where, word, e) from e
        except OSError as e:
            raise ConfigError(f"{where} holds {word}, which pytest takes as a path, and it "
                              f"cannot be looked at ({e.strerror})",
                              hint=_TEST_PATH_HINT) from e


def _path_word_refused(where: str, word: str, e: UnsafePathError) -> UnsafePathError:
    return UnsafePathError(f"{where} holds {word}, which pytest takes as a path, choosing its "
                           "ini file (its pythonpath, its addopts' -p) from the folders above "
                           f"it before the harness's plugin can look: {e.message}",
                           hint=e.hint, finding=e.finding)


def _ini_folder(paths: list[str], where: str) -> "Path | None":
    """The folder of the ini file pytest would choose, given ``paths`` (of ``where``) before
    the command line's own (in the checkout it runs from), once each folder it would look in
    on the way proves to be one nobody else can write (else another user's ``pytest.ini``
    made there would win): raises UnsafePathError naming it and the word it came from. pytest (``determine_setup``) looks from the
    common ancestor of the paths that exist upward, then from each one's folder upward in
    turn, and takes the first config file it accepts; it imports no ``conftest.py`` above
    that file's folder (its ``confcutdir``). Only ``pytest.ini`` and ``.pytest.ini`` count
    here (pytest takes them even empty; a ``pyproject.toml`` or ``setup.cfg`` may hold no
    section for it), so the folder found is never below pytest's. None: no such file, or a
    ``setup.py`` makes the rootdir: every folder above counts."""
    here = os.getcwd()
    found = {p: os.path.abspath(os.path.join(here, p)) for p in paths
             if os.path.exists(os.path.join(here, p))}
    dirs = {w: Path(d if os.path.isdir(d) else os.path.dirname(d))
            for w, d in [*found.items(), ("the folder it runs in", here)]}
    uids, ancestor = invoking_uids(), Path(os.path.commonpath(list(dirs.values())))
    for word, chain in [(next(iter(dirs)), ancestor), (None, None), *dirs.items()]:
        if chain is None:  # (no ini above the ancestor: pytest looks for setup.py there)
            if any(os.path.isfile(b / "setup.py") for b in (ancestor, *ancestor.parents)):
                return None
            continue
        for base in (chain, *chain.parents):
            try:
                _check_test_entry(Path(found.get(word, here)), base, uids,
                                  "pytest looks for its ini file there")
            except UnsafePathError as e:
                raise _path_word_refused(where, word, e) from e
            if any(os.path.isfile(base / n) for n in ("pytest.ini", ".pytest.ini")):
                return base
    return None


def check_missing(path: Path) -> None:
    """``path`` does not exist (yet): the folder nearest to it that does, where it would be
    made (links above it followed), is one nobody else can write, sticky or not. A sticky
    folder such as /tmp keeps others from renaming what is there, not from making a new name:
    a folder or program root would use, made there first by another user, is theirs. Call it
    after :func:`check_ancestors`, which judges the owners and links on the way. Raises
    UnsafePathError."""
    at = Path(os.path.realpath(path))
    while not os.path.exists(at) and at != at.parent:
        at = at.parent
    st = os.stat(at)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "its group" if st.st_mode & stat.S_IWGRP and not st.st_mode & stat.S_IWOTH \
            else "every user"
        finding = (f"{path} does not exist and the folder {at}, where it would be made, is "
                   f"writable by {who} (mode {st.st_mode & 0o7777:o})")
        raise UnsafePathError(f"{finding}: another user could make it first", hint=_HINT,
                              finding=finding)


_SEARCH_HINT = ("run as root with a {var} of folders only root can write (sudo's secure_path "
                "and env_reset; PATH=/usr/sbin:/usr/bin:/sbin:/bin), or chown root and chmod "
                "go-w that folder; docs/vfio.md, 'What root reads and runs'")


def _open_trusted(path: Path) -> tuple[Path, int]:
    uids = invoking_uids()
    real = _follow_trusted_links(path, uids)
    for folder in real.parents:
        _check_trusted(path, folder, os.stat(folder), uids)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafePathError(f"{real} (of {path}) became a symlink while it was checked, "
                                  "so another user could choose what root reads",
                                  hint=_TRUSTED_HINT.format(p=real.parent)) from e
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(f"{real} (of {path}) is not a regular file",
                                  hint="give the path of the file itself")
        _check_trusted(path, real, st, uids)
    except BaseException:
        os.close(fd)
        raise
    return real, fd


def _follow_trusted_links(path: Path, uids: set[int]) -> Path:
    """Where ``path`` leads, each link on the way checked like a file: a link in a folder
    another user can write (its group included) is swapped as easily as the file."""
    hop = Path(os.path.abspath(path))
    for _ in range(40):  # (Linux's own limit)
        check_ancestors(hop, uids)
        st = os.lstat(hop)
        if not stat.S_ISLNK(st.st_mode):
            return Path(os.path.realpath(hop))
        if st.st_uid not in uids:
            raise UnsafePathError(f"the link {hop} (of {path}) is owned by uid {st.st_uid}, so "
                                  "another user could choose what root reads through it",
                                  hint=_TRUSTED_HINT.format(p=hop))
        hop = Path(os.path.abspath(Path(os.path.realpath(hop.parent)) / os.readlink(hop)))
    raise UnsafePathError(f"{path}: too many levels of symbolic links",
                          hint="give the path of the file itself")


def _check_trusted(path: Path, p: Path, st: os.stat_result, uids: set[int]) -> None:
    sticky = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if st.st_uid in uids and not (writable and not sticky):
        return
    what = "the folder" if stat.S_ISDIR(st.st_mode) else "the file"
    who = (f"owned by uid {st.st_uid}" if st.st_uid not in uids else
           f"writable by {'its group' if st.st_mode & stat.S_IWGRP else 'every user'}")
    raise UnsafePathError(
        f"{what} {p}" + (f" (of {path})" if p != Path(path) else "") + f" is {who}, "
        "so another user could choose what root does with it",
        hint=_TRUSTED_HINT.format(p=p))


_TRUSTED_HINT = ("chown root and chmod go-w {p} (and the folders above it), or keep the file "
                 "in a folder only root can write such as /etc/hotplug-harness")


def check_trusted_tree(top: Path, guest_trees: tuple[str, ...] = ()) -> None:
    """As root, before root runs a program from ``top`` (a cache folder a program was unpacked
    into): ``top`` and every folder above it are owned by root or the invoking user
    (:func:`invoking_uids`) and writable by nobody else (a sticky folder above it aside), and
    so is every file and folder below it; a symlink below it is the invoking user's and leads
    to a place inside ``top``, followed hop by hop (each link on the way the invoking user's,
    in folders only they can write). Nobody else can then have planted or swapped what root runs.
    ``guest_trees``: folders below ``top`` (relative names) that are a guest's root file
    system (the lab host's ``root``): the same rule for their files and folders, but a link
    in them means a path inside the guest (``etc/rmt -> /usr/sbin/rmt``), so it is judged by
    its owner only and never followed here (nor by QEMU's 9p server, which serves the tree
    without following links out of it).

    Not root: nothing to check (a user runs what their own cache holds). Raises
    UnsafePathError naming the path."""
    if os.geteuid() != 0:
        return
    uids = invoking_uids()
    top = Path(os.path.abspath(top))
    check_ancestors(top, uids)
    real_top = os.path.realpath(top)
    guests = tuple(str(top / g) for g in guest_trees)
    _check_tree_entry(top, top, real_top, uids)
    for folder, dirs, files in os.walk(top):
        in_guest = any(folder == g or folder.startswith(g + "/") for g in guests)
        for name in dirs + files:
            _check_tree_entry(top, Path(folder) / name, real_top, uids, in_guest)


def _check_tree_entry(top: Path, p: Path, real_top: str, uids: set[int],
                      in_guest: bool = False) -> None:
    st = os.lstat(p)
    if stat.S_ISLNK(st.st_mode):
        # (out of a guest's tree, hop by hop: another user's link on the way is theirs to
        # repoint, wherever the chain ends now)
        target = os.path.realpath(p)
        if not in_guest and st.st_uid in uids:
            with contextlib.suppress(FileNotFoundError):  # (a dangling end: judged by where)
                target = str(_follow_trusted_links(p, uids))
        if st.st_uid not in uids or p == top or not (
                in_guest or target == real_top or target.startswith(real_top + "/")):
            raise UnsafePathError(
                f"the link {p} (in {top}) " + (
                    f"is owned by uid {st.st_uid}" if st.st_uid not in uids else
                    f"leads to {target}, out of it") + ", so another user could choose what "
                "root runs from it", hint=_TREE_HINT.format(p=top))
        return
    if st.st_uid not in uids or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        what = "the folder" if stat.S_ISDIR(st.st_mode) else "the file"
        who = (f"owned by uid {st.st_uid}" if st.st_uid not in uids else
               f"writable by others than its owner (mode {st.st_mode & 0o7777:o})")
        raise UnsafePathError(f"{what} {p} (in {top}) is {who}, so another user could choose "
                              "what root runs from it", hint=_TREE_HINT.format(p=top))


_TREE_HINT = ("remove {p} (it is unpacked again), and keep the image cache (--image-cache) in a "
              "folder only root (or you) can write")


def check_ancestors(path: Path, owners: "set[int] | None" = None, _hops: int = 0) -> None:
    """Every existing folder above ``path`` (``path`` itself excluded) is owned by root or us
    (or one of ``owners``) and writable by nobody else unless it is sticky; a link among them
    is judged hop by hop: its owner, then where its one hop leads, checked the same way (so a
    link of another user's further down the chain, which they may repoint at any time, is
    refused although the chain's end is root's now)."""
    path = Path(os.path.abspath(path))
    owner_ok = _owner_ok if owners is None else (lambda st: st.st_uid in owners)
    for folder in reversed(path.parents):
        try:
            st = os.lstat(folder)
        except FileNotFoundError:
            return  # the rest will be made by us
        if stat.S_ISLNK(st.st_mode):
            # a link is as safe as its owner, and the next hop of where it leads
            if not owner_ok(st):
                raise UnsafePathError(f"{folder} above {path} is a symlink owned by "
                                      f"uid {st.st_uid}", hint=_HINT,
                                      finding=f"{folder} above {path} is a symlink owned by uid {st.st_uid}")
            if _hops >= 40:  # (Linux's own limit)
                raise UnsafePathError(f"{folder} above {path}: too many levels of symbolic "
                                      "links", hint=_HINT,
                                      finding=f"{folder} above {path}: too many levels of symbolic links")
            hop = Path(os.path.realpath(folder.parent)) / os.readlink(folder)
            check_ancestors(Path(os.path.abspath(hop)) / "x", owners, _hops + 1)
            continue
        sticky = bool(st.st_mode & stat.S_ISVTX)
        if not owner_ok(st) or (st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky):
            why = (f"owned by uid {st.st_uid}" if not owner_ok(st) else
                   f"writable by {'its group' if st.st_mode & stat.S_IWGRP else 'every user'}")
            raise UnsafePathError(
                f"the folder {folder} above {path} is {why}, so another user could replace "
                "what the harness keeps there", hint=_HINT,
                finding=f"the folder {folder} above {path} is {why}")


_HINT = ("keep it in a folder only root (or you) can write, such as one under /var/lib or your "
         "home; see docs/vfio.md, 'What the harness writes as root'")


def check_private(path: Path) -> Path:
    """``path`` is a real folder, ours, that nobody else can write to (the harness makes its
    own 0700; one made 0755 by an older version is accepted)."""
    st = os.lstat(path)
    problem = ("is a symlink" if stat.S_ISLNK(st.st_mode) else
               "is not a folder" if not stat.S_ISDIR(st.st_mode) else
               f"is owned by uid {st.st_uid}, not {os.geteuid()}" if st.st_uid != os.geteuid()
               else f"has mode {st.st_mode & 0o7777:o}: others can write to it"
               if st.st_mode & 0o022 else "")
    if problem:
        raise UnsafePathError(f"{path} {problem}, so another user could have made or changed "
                              "what the harness keeps there", hint=_HINT)
    return path


def private_dir(path: Path) -> Path:
    """``path`` as a private folder: made now (mode 0700, parents 0755), or found and checked
    (a second process of the same run). Raises UnsafePathError naming what is wrong."""
    path = Path(os.path.abspath(path))
    check_ancestors(path)
    missing = [p for p in [*reversed(path.parents), path] if not os.path.lexists(p)]
    if missing:
        _make_below(missing[0].parent, [p.name for p in missing])
    check_ancestors(path)  # again: a folder made between our look and our mkdir is looked at
    return check_private(path)


def _make_below(base: Path, names: list[str]) -> None:
    """Make ``base/names[0]/names[1]/...``, each relative to an fd of the one above and opened
    without following a link: a link another user plants in place of a folder not yet made
    (in a shared sticky folder) is refused, never followed by our ``mkdir`` below it."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    here = base
    try:
        for i, name in enumerate(names):
            here = here / name
            try:
                os.mkdir(name, 0o700 if i == len(names) - 1 else 0o755, dir_fd=fd)
            except FileExistsError:
                pass  # (a second process of the run made it: looked at below)
            try:
                below = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                dir_fd=fd)
            except OSError as e:
                raise UnsafePathError(
                    f"{here} is not a folder ({e.strerror}): something was put there while "
                    "the harness made the folders above its own",
                    hint=f"remove {here} if it is not yours, or choose a folder only you can "
                         "write") from None
            os.close(fd)
            fd = below
    finally:
        os.close(fd)


def new_private_dir(prefix: str, parent: Path | None = None) -> Path:
    """A new private folder whose name nobody can predict (``mkdtemp``), in ``parent`` or the
    system's temporary folder (:func:`checked_tempdir`)."""
    base = Path(parent) if parent else checked_tempdir()
    check_ancestors(base / "x")
    return check_private(Path(tempfile.mkdtemp(prefix=prefix, dir=base)))


def checked_tempdir() -> Path:
    """The system's temporary folder (``$TMPDIR``, else /tmp), once it and every folder above
    it are checked as :func:`check_ancestors` checks: a ``mkdtemp`` folder there is then one
    nobody else can rename or swap (a TMPDIR another user owns, or can write without the
    sticky bit, is refused: UnsafePathError)."""
    base = Path(tempfile.gettempdir())
    check_ancestors(base / "x")
    return base


def open_nofollow(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that never follows a symlink at the last component."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data``: written to a new file of an unpredictable name in the
    same folder (``O_EXCL``, ``mode`` if given, else 0600), synced, renamed over ``path`` (a
    link there is replaced, never followed), the folder synced."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)



def run_tmp_prefix(owner: str | None = None) -> str:
    """Prefix of a run's temporary folders (guests' sockets and overlays, saved states):
    ``hh-<owner>-``, the owner being the run's tag (harness.core.runconfig; by default this
    process's PID), so the end-of-run check finds this run's leftovers and not another's."""
    return f"hh-{owner or os.getpid()}-"


def sha256(path: Path) -> str:
    """The sha256 of a file's content, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
