"""Crash-safe writes: after a kill at any instant, a file or folder is its old or its new version.

A single file is written to a hidden temporary sibling, fsynced, and renamed over the target
(``os.replace`` is atomic on POSIX and Windows). A folder is filled as a hidden temporary
sibling ``.NAME.tmp-XXXX``, fsynced file by file, and swapped in with two renames::

    NAME → .NAME.old        (only when NAME exists)
    .NAME.tmp-XXXX → NAME
    remove .NAME.old

A kill between the two renames leaves no ``NAME`` but a complete ``.NAME.old``: readers use it
(:func:`readable`) and the next save renames it back first (:func:`recover`). Temporary
siblings left by a killed save (orphans) are removed by the next save of the same target.
One process writes a given target at a time (a second concurrent writer would remove the
first one's temporary sibling as an orphan).

Every change to the file system goes through :func:`_boundary` first: tests stop a save
there, at every boundary in turn, to check that each intermediate state reads as the old or
the new version (``tests/test_atomic.py``).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import PersistenceError

TMP_INFIX, OLD_SUFFIX = ".tmp-", ".old"

# tests replace this to stop a save at a chosen boundary (see the module docstring)
_hook: Callable[[str], None] | None = None


def _boundary(what: str) -> None:
    if _hook is not None:
        _hook(what)


def backup_path(path: Path) -> Path:
    """Where a folder swap keeps the old version between its two renames: ``.NAME.old``."""
    return path.with_name(f".{path.name}{OLD_SUFFIX}")


def readable(path: str | Path) -> Path:
    """``path``, or its backup when a save was killed between its two renames (nothing is written)."""
    path = Path(path)
    if not os.path.lexists(path) and backup_path(path).is_dir():
        return backup_path(path)
    return path


def _orphans(path: Path) -> list[Path]:
    prefix = f".{path.name}{TMP_INFIX}"
    return [p for p in path.parent.iterdir() if p.name.startswith(prefix)]


def _remove(path: Path) -> None:
    _boundary(f"remove {path.name}")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def recover(path: str | Path) -> None:
    """Finish what a killed save of ``path`` left: put a lone backup back, drop stale ones and orphans."""
    path = Path(path)
    backup = backup_path(path)
    if backup.is_dir():
        if os.path.lexists(path):
            _remove(backup)  # the swap had completed: the backup is what was being removed
        else:
            _boundary(f"rename {backup.name} -> {path.name}")
            os.rename(backup, path)
            _fsync_dir(path.parent)
    for orphan in _orphans(path):
        _remove(orphan)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a folder's entries (names created, renamed or removed in it) durable; a no-op where
    the platform cannot open a folder (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _fsync_tree(root: Path) -> None:
    """fsync every file below ``root``, then every folder bottom-up (``root`` included)."""
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in files:
            file = Path(folder) / name
            if not file.is_symlink():
                _fsync_file(file)
        _fsync_dir(Path(folder))


def write_file(path: str | Path, data: bytes | str | Callable[[Path], object]) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or ``data(tmp_path)`` writing the file) to ``path``
    atomically and durably; returns ``path``. Orphans of an earlier killed write are removed."""
    path = Path(path)
    if path.is_dir():
        raise PersistenceError(f"cannot write the file {path}: it is a folder")
    for orphan in _orphans(path):
        _remove(orphan)
    _boundary(f"create {path.name}")
    tmp, fd = _new_file(path)
    try:
        if callable(data):
            os.close(fd)
            _boundary(f"write {path.name}")
            data(tmp)
        else:
            with os.fdopen(fd, "wb") as f:
                _boundary(f"write {path.name}")
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        _boundary(f"fsync {path.name}")
        _fsync_file(tmp)
        _boundary(f"rename {tmp.name} -> {path.name}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


@contextmanager
def replace_folder(path: str | Path, *, replaceable: Callable[[Path], bool] | None = None,
                   keep: Callable[[Path], bool] | None = None, what: str = "folder") -> Iterator[Path]:
    """Yield an empty temporary sibling of ``path`` to fill; on a clean exit it becomes ``path``.

    ``replaceable(path)`` says whether an existing ``path`` may be replaced (else
    :class:`PersistenceError`, before anything is written); entries of the old folder for which
    ``keep(entry)`` is true and that the new one lacks are carried over (hard links where the file
    system allows, copies otherwise). On an exception the temporary folder is removed and
    ``path`` is as it was.
    """
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise PersistenceError(f"cannot save a {what} to {path}: it is a file, and a {what} is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PersistenceError(f"cannot create the folder {path.parent}: {err}") from None
    recover(path)
    if path.is_dir() and replaceable is not None and not replaceable(path):
        raise PersistenceError(f"refusing to replace {path}: it is not empty and not a {what} "
                               f"(saving replaces the whole folder); choose another path or empty it")
    _boundary(f"create .{path.name}{TMP_INFIX}")
    tmp = _new_folder(path)
    try:
        yield tmp
        if keep is not None and path.is_dir():
            for entry in sorted(path.iterdir()):
                if keep(entry) and not os.path.lexists(tmp / entry.name):
                    _boundary(f"carry {entry.name}")
                    _link_tree(entry, tmp / entry.name)
        _boundary(f"fsync .{path.name}{TMP_INFIX}")
        _fsync_tree(tmp)
        _swap(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_INFIX}{secrets.token_hex(8)}")


def _new_file(path: Path) -> tuple[Path, int]:
    """A new temporary sibling file, opened for writing, with the permissions the umask gives
    (``tempfile.mkstemp`` would make it private, and the renamed file with it)."""
    tmp = _temporary_name(path)  # 64 random bits: a clash is an error (O_EXCL), not a retry
    return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)


def _new_folder(path: Path) -> Path:
    tmp = _temporary_name(path)
    tmp.mkdir(0o777)
    return tmp


def _swap(tmp: Path, path: Path) -> None:
    backup = backup_path(path)
    if path.exists():
        _boundary(f"rename {path.name} -> {backup.name}")
        os.rename(path, backup)
    _boundary(f"rename {tmp.name} -> {path.name}")
    os.rename(tmp, path)
    _fsync_dir(path.parent)
    if backup.exists():
        try:
            _remove(backup)
        except OSError:
            pass  # the new version is in place; the next save removes the stale backup


def _link_tree(src: Path, dst: Path) -> None:
    """A copy of ``src`` at ``dst`` made of hard links (copies where links are refused)."""
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        dst.mkdir()
        for entry in src.iterdir():
            _link_tree(entry, dst / entry.name)
    else:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
