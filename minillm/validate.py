"""One way for every config to check itself: a field that is wrong gets one sentence naming it.

Each config dataclass calls these from ``__post_init__``, so a bad value fails where it is
written, not deep inside a training loop::

    >>> PPOConfig(lr=-5)
    ValueError: PPOConfig.lr must be a positive number, not -5.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def is_int(value) -> bool:
    """An integer, and not a bool (True is an int to Python, but never a step count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def require(config, name: str, ok: bool, what: str) -> None:
    """Raise ``ValueError("<Config>.<name> must be <what>, not <value>.")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{type(config).__name__}.{name} must be {what}, "
                         f"not {getattr(config, name)!r}.")


def require_each(config, names, ok: Callable[[object], bool], what: str) -> None:
    """``require`` for each field of ``names``, with ``ok`` judging its value."""
    for name in names:
        require(config, name, ok(getattr(config, name)), what)


def require_positive_ints(config, *names: str) -> None:
    require_each(config, names, lambda v: is_int(v) and v >= 1, "a positive integer")


def require_positive_numbers(config, *names: str) -> None:
    require_each(config, names, lambda v: is_number(v) and v > 0, "a positive number")


def require_non_negative_numbers(config, *names: str) -> None:
    require_each(config, names, lambda v: is_number(v) and v >= 0, "a number >= 0")


def require_bools(config, *names: str) -> None:
    require_each(config, names, lambda v: isinstance(v, bool), "True or False")
