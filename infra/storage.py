"""Files on disk, shared by every textenv package: the cache root, atomic writes and the build-once cache.

This module sits at the bottom of the import order (``rewards`` imports nothing of ours), so ``textenv``,
``agents`` and ``benchmarks`` all write through it. Every write is atomic and durable:

- :func:`atomic_write_text` / :func:`atomic_write_bytes`: one file, written under a temporary name in the
  same directory, fsynced, renamed over the target, and the directory fsynced.
- :func:`atomic_directory`: a directory built under a temporary name, every file fsynced, then moved into
  place. Replacing an existing directory keeps it whole until the new one is complete; on Linux the two are
  swapped in one ``renameat2(RENAME_EXCHANGE)`` call, elsewhere the old one is renamed aside first and
  :func:`recover_directory` finds it again if the process died between the two renames.
- :func:`cached_dir`: ``<cache root>/<key>``, built once (under a lock shared by processes) and then reused.

The cache root is ``$TEXTENV_CACHE`` if set, else ``~/.cache/textenv``.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> atomic_write_text(root / "a.txt", "hi")
>>> (root / "a.txt").read_text()
'hi'
>>> with atomic_directory(root / "ckpt") as tmp:
...     _ = (tmp / "weights.txt").write_text("1")
>>> sorted(p.name for p in (root / "ckpt").iterdir())
['weights.txt']
>>> path = cached_dir("demo", lambda d: (d / "hello.txt").write_text("hi"), root=root)
>>> cached_dir("demo", lambda d: 1 / 0, root=root) == path   # already built: the builder is not called
True
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CACHE_ENV_VAR = "TEXTENV_CACHE"
TMP_MARK = ".tmp-"
OLD_MARK = ".old-"


def cache_root() -> Path:
    """The cache root: ``$TEXTENV_CACHE`` if set, else ``~/.cache/textenv``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "textenv"


def _fsync_path(path: Path) -> None:
    """fsync a file or a directory (directories: where the OS allows opening them)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. directories on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (deepest first), then ``root`` itself."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


def _temp_sibling(path: Path, mark: str) -> Path:
    return path.with_name(f".{path.name}{mark}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary sibling, fsync, rename, fsync of the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, TMP_MARK)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_path(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _rename_exchange(src: Path, dst: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_exchange)
    return result == 0


def leftovers(path: Path) -> list[Path]:
    """Temporary and set-aside siblings of ``path`` that interrupted writes left behind."""
    if not path.parent.is_dir():
        return []
    prefixes = (f".{path.name}{TMP_MARK}", f".{path.name}{OLD_MARK}")
    return [p for p in path.parent.iterdir() if p.name.startswith(prefixes)]


def recover_directory(path: Path) -> Path:
    """``path`` itself, or, if a replacement died between its two renames, the set-aside old directory."""
    if path.exists():
        return path
    olds = sorted((p for p in leftovers(path) if OLD_MARK in p.name), key=lambda p: p.stat().st_mtime)
    return olds[-1] if olds else path


def clean_leftovers(path: Path) -> None:
    """Remove what interrupted writes of ``path`` left behind; an orphaned old copy is moved back first."""
    recovered = recover_directory(path)
    if recovered != path:
        os.replace(recovered, path)
    for leftover in leftovers(path):
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory at ``path`` atomically: write into the yielded temporary directory.

    On a clean exit the files are fsynced and the directory replaces ``path`` (an existing one stays whole
    until then; see the module docstring). On an exception the temporary directory is removed and ``path``
    is untouched. Whether ``path`` may be replaced at all is the caller's decision.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    tmp = _temp_sibling(path, TMP_MARK)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not path.exists():
        os.replace(tmp, path)
    elif _rename_exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # now holds the old directory
    else:
        old = _temp_sibling(path, OLD_MARK)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_path(path.parent)


OWNER_FILE = "textenv-output.json"
"""Written into every directory textenv builds for a user (exports, checkpoints, reward models): the mark
that lets a later save replace it. A directory without it is the user's, and is never replaced."""


def mark_owned(directory: Path, kind: str) -> None:
    """Mark ``directory`` (being built) as textenv's own ``kind`` of output (see :data:`OWNER_FILE`)."""
    (directory / OWNER_FILE).write_text(json.dumps({"written_by": "textenv", "kind": kind}) + "\n")


def check_replaceable(
    path: str | os.PathLike[str], kind: str, legacy: Callable[[Path], bool] | None = None
) -> None:
    """Refuse to replace ``path`` unless it is absent, an empty directory, or a ``kind`` of output textenv
    wrote there (its :data:`OWNER_FILE`; ``legacy`` recognises outputs written before the mark existed).

    >>> import tempfile
    >>> mine = Path(tempfile.mkdtemp())
    >>> _ = (mine / "config.json").write_text("{}")
    >>> check_replaceable(mine, "export")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    FileExistsError: ... is a directory that textenv did not write as an export ...
    """
    path = Path(path)
    if path.is_symlink() or path.is_file():
        raise FileExistsError(f"{str(path)!r} is a file; the {kind} is a directory. Choose another path")
    if not path.is_dir() or not any(path.iterdir()):
        return
    marker = path / OWNER_FILE
    owner: Any = None
    if marker.is_file():
        with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
            owner = json.loads(marker.read_text())
    if isinstance(owner, dict) and owner.get("written_by") == "textenv":
        if owner.get("kind") == kind:
            return
        raise FileExistsError(
            f"{str(path)!r} holds a textenv {owner.get('kind')}, not a {kind}; writing the {kind} there "
            "would replace it. Choose another path"
        )
    if legacy is not None and legacy(path):
        return
    article = "an" if kind[0] in "aeiou" else "a"
    raise FileExistsError(
        f"{str(path)!r} is a directory that textenv did not write as {article} {kind} (no {OWNER_FILE} in "
        "it); writing there would delete its files. Choose a new or empty directory, or move the files away "
        "first"
    )


def jsonl_objects(
    path: str | os.PathLike[str], example: str, error: type[Exception] = ValueError
) -> Iterator[tuple[str, dict]]:
    """``(where, object)`` for every non-blank line of a UTF-8 JSON-lines file, ``where`` being ``file:line``.

    A line that is not UTF-8, not JSON or not an object raises ``error`` naming ``file:line``; ``example``
    (e.g. ``'{"prompt": "Once upon a time"}'``) shows in the message what a good line looks like. A UTF-8
    byte-order mark (as spreadsheet programs write it) is accepted.
    """
    path = Path(path)
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as problem:
                raise error(f"{where} is not UTF-8 text ({problem}); save the file as UTF-8.") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as problem:
                raise error(f"{where} is not valid JSON ({problem}); write one object per line.") from None
            if not isinstance(record, dict):
                raise error(
                    f"{where} is a JSON {type(record).__name__}, not an object; write one object per line, "
                    f"e.g. {example}."
                )
            yield where, record


def cached_dir(key: str, build: Callable[[Path], object], root: str | Path | None = None) -> Path:
    """Return ``<root>/<key>``, calling ``build(tmp_dir)`` once to create it if it does not exist yet.

    ``build`` writes into an empty temporary directory, which is renamed into place in one step on success
    and removed on failure, so a crash never leaves a half-written entry. A lock file serialises builders
    across processes (for example two pytest-xdist workers).
    """
    from filelock import FileLock

    base = Path(root) if root is not None else cache_root()
    final = base / key
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if final.is_dir():  # another process finished it while we waited for the lock
            return final
        tmp = _temp_sibling(final, TMP_MARK)
        tmp.mkdir()
        try:
            build(tmp)
            fsync_tree(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():  # a real failure, not a lost race
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final
