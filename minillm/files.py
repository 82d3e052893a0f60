"""Writing files so that a crash never leaves half of one: every artifact goes through here."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", encoding: str | None = None):
    """Open ``path`` for writing through a temporary file that replaces it only when the block
    finishes: readers see the old file or the new one, never a half-written one.

    The temporary file sits in the same folder (a rename across file systems is not atomic)
    and is flushed to disk before the rename, so a power cut cannot leave an empty file. On any
    error, Ctrl-C included, it is removed and the old file stays as it was. The new file gets
    the usual permissions (umask), unlike ``tempfile.mkstemp``'s private 0600 ones.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
