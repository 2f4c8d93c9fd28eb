"""Crash-safe on-disk cache for converted models, tokenizers and trained sentencepiece files.

Everything textenv builds once (the dequantized SmolLM2 copy, the tiny random models, the sentencepiece
tokenizer) lives under one cache root: ``~/.cache/textenv`` unless the ``TEXTENV_CACHE`` environment variable
points elsewhere. An entry is a directory that is either complete or absent: it is built under a temporary
name and moved into place with one ``os.rename``. A lock file serialises builders across processes (for
example two pytest-xdist workers), and a lost rename race is tolerated.

>>> import tempfile, os
>>> root = tempfile.mkdtemp()
>>> path = cached_dir("demo", lambda d: (d / "hello.txt").write_text("hi"), root=root)
>>> (path / "hello.txt").read_text()
'hi'
>>> cached_dir("demo", lambda d: 1 / 0, root=root) == path   # already built: the builder is not called
True
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

CACHE_ENV_VAR = "TEXTENV_CACHE"


def cache_root() -> Path:
    """The cache root: ``$TEXTENV_CACHE`` if set, else ``~/.cache/textenv``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "textenv"


def cached_dir(key: str, build: Callable[[Path], object], root: str | Path | None = None) -> Path:
    """Return ``<root>/<key>``, calling ``build(tmp_dir)`` once to create it if it does not exist yet.

    ``build`` writes into an empty temporary directory. On success the directory is renamed to its final
    name in one step; on failure it is removed and the exception propagates, so a crash never leaves a
    half-written entry behind.
    """
    base = Path(root) if root is not None else cache_root()
    final = base / key
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if final.is_dir():  # another process finished it while we waited for the lock
            return final
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            build(tmp)
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
