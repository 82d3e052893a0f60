"""Graded tests reach the code under test only through the ``impl`` fixture.

``tests/graded/test_exNN_topic.py`` gets the module ``exNN_topic`` from the package chosen by
``--impl`` (``exercises`` or ``solutions``), so the same tests grade a learner's stubs and check
the reference solutions. A new lesson adds its test file and needs nothing here.
"""

import importlib

import pytest


@pytest.fixture(scope="module")
def impl(request):
    """The module being graded, e.g. ``exercises.ex01_tokenization`` for test_ex01_*.py."""
    package = request.config.getoption("impl")
    module_name = f"{package}.{request.path.stem.removeprefix('test_')}"
    try:
        return importlib.import_module(module_name)
    except Exception as error:
        # A learner's syntax error must fail each test with one readable line, not crash
        # collection, so the grader can still show the table.
        pytest.fail(f"{type(error).__name__}: {error}", pytrace=False)
