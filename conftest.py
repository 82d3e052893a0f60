"""Pytest setup for the whole repository.

The repository root goes on ``sys.path`` so that tests can import ``exercises`` and
``solutions``: they are plain folders next to the package, not installed with it.

``--impl`` is declared here rather than in ``tests/graded/conftest.py`` because pytest only
accepts options from conftest files it loads at start-up, and this one is always loaded.
"""

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from minillm.grade import IMPLEMENTATIONS  # noqa: E402  (needs the path set above)


def pytest_addoption(parser):
    parser.addoption(
        "--impl",
        choices=IMPLEMENTATIONS,
        default=os.environ.get("MINILLM_IMPL", "solutions"),
        help="which implementation the graded tests import: exercises or solutions "
        "(default: $MINILLM_IMPL, else solutions)",
    )


def pytest_configure(config):
    # argparse checks --impl against its choices but not the default taken from $MINILLM_IMPL.
    impl = config.getoption("impl")
    if impl not in IMPLEMENTATIONS:
        raise pytest.UsageError(f"MINILLM_IMPL must be one of {IMPLEMENTATIONS}, not {impl!r}.")


def pytest_collection_modifyitems(items):
    # nbval waits only 5 s for a cell's output messages once the cell has finished. After a
    # minutes-long training cell the kernel may still be flushing a long queue of progress-bar
    # updates, and on a busy machine that has taken longer than 5 s.
    for item in items:
        if hasattr(item, "output_timeout"):
            item.output_timeout = 60
