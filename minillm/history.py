"""A run's history: one row of metrics per step, kept in memory and written as JSON lines.

Every trainer (the engine of ``minillm.train``, PPO, DPO) returns its history as a list of
dicts that the lessons plot, and with a log path also writes each row as it comes, so a crash
loses at most the row being written. Every row is stamped with ``elapsed_s``.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path


@contextlib.contextmanager
def open_log(path, history: list[dict]):
    """The JSON-lines log, rewritten to hold ``history`` (the rows of a resumed run), or None
    when there is no log."""
    if path is None:
        yield None
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as log:
        log.writelines(json.dumps(row) + "\n" for row in history)
        yield log


def record(row: dict, start: float, history: list, log) -> None:
    """Stamp ``row`` with ``elapsed_s`` (seconds since ``start``, a ``time.perf_counter()``),
    append it to ``history`` and write it to ``log`` (``open_log``) as one JSON line."""
    row["elapsed_s"] = time.perf_counter() - start
    history.append(row)
    if log is not None:
        log.write(json.dumps(row) + "\n")
        log.flush()  # a crash loses at most the row being written
