"""The grader: full marks for the solutions, none for the untouched stubs, and a readable table."""

import ast
import doctest
import importlib
import inspect
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from minillm.grade import (
    FAILED,
    NOT_IMPLEMENTED,
    PASSED,
    STATUS_WIDTH,
    GradedTest,
    GradeResult,
    GradingError,
    grade,
    time_limit,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
LESSON_MODULES = sorted(path.stem for path in (REPO_ROOT / "exercises").glob("ex[0-9][0-9]_*.py"))


def run_grader(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "minillm.grade", *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def graded_run(impl: str, folder: Path) -> tuple[subprocess.CompletedProcess, GradeResult]:
    report = folder / f"{impl}.json"
    finished = run_grader("--impl", impl, "--json", str(report))
    return finished, GradeResult.from_json(json.loads(report.read_text()))


@pytest.fixture(scope="module")
def solutions_run(tmp_path_factory):
    return graded_run("solutions", tmp_path_factory.mktemp("grades"))


@pytest.fixture(scope="module")
def stubs_run(tmp_path_factory):
    return graded_run("exercises", tmp_path_factory.mktemp("grades"))


def public_functions(module) -> dict:
    return {
        name: function
        for name, function in inspect.getmembers(module, inspect.isfunction)
        if function.__module__ == module.__name__ and not name.startswith("_")
    }


def lesson_modules(name: str) -> tuple:
    """The (exercises, solutions) modules of one lesson."""
    return tuple(importlib.import_module(f"{impl}.{name}") for impl in ("exercises", "solutions"))


# --- The grader against both implementations -------------------------------------------------


def test_solutions_earn_every_point(solutions_run):
    finished, result = solutions_run
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert result.tests and result.all_passed
    assert result.points == result.points_possible > 0
    assert all(score.status == "done" for score in result.exercises)
    assert finished.stdout.splitlines()[-1].startswith("total")


def test_untouched_stubs_fail_every_graded_test(stubs_run):
    finished, result = stubs_run
    assert finished.returncode == 1, finished.stdout + finished.stderr
    assert result.points == 0
    stub_names = {
        name for module in LESSON_MODULES for name in public_functions(lesson_modules(module)[0])
    }
    for test in result.tests:
        # Every graded test must reach a stub: none may pass (or fail) without calling one.
        assert test.outcome == NOT_IMPLEMENTED, f"{test.name} does not depend on its exercise"
        assert test.detail in stub_names, f"{test.name} stopped in {test.detail}, not in a stub"
    for score in result.exercises:
        assert score.status == "not implemented yet", score
        assert re.search(rf"\b{score.name}\b.*not implemented yet", finished.stdout)


def test_every_exercise_function_is_graded(solutions_run):
    _, result = solutions_run
    graded = {(test.lesson, test.exercise) for test in result.tests}
    expected = {
        (module[2:4], name)
        for module in LESSON_MODULES
        for name in public_functions(lesson_modules(module)[1])
    }
    assert graded == expected


def test_grade_function_runs_the_grader_for_a_notebook():
    result = grade("01", impl="exercises")
    assert not result.all_passed
    assert {test.outcome for test in result.tests} == {NOT_IMPLEMENTED}
    table = result._repr_html_()
    assert table.startswith("<table>") and "get_pair_counts" in table
    assert "not implemented yet" in str(result)


@pytest.mark.parametrize(
    "lesson, message",
    [("99", "no graded tests for lesson 99"), ("x", "a lesson is a number")],
)
def test_a_bad_lesson_is_one_clear_sentence(lesson, message):
    finished = run_grader(lesson)
    assert finished.returncode == 2
    assert finished.stdout == ""
    assert len(finished.stderr.strip().splitlines()) == 1
    assert message in finished.stderr.lower()
    with pytest.raises(GradingError, match=f"(?i){message}"):
        grade(lesson)


# --- Exercises and solutions match ------------------------------------------------------------


@pytest.mark.parametrize("module_name", LESSON_MODULES)
def test_exercises_and_solutions_have_the_same_functions(module_name):
    stubs, solutions = (public_functions(module) for module in lesson_modules(module_name))
    assert stubs.keys() == solutions.keys()
    for name, stub in stubs.items():
        assert inspect.signature(stub) == inspect.signature(solutions[name]), name
        assert stub.__doc__ and stub.__doc__ == solutions[name].__doc__, name


@pytest.mark.parametrize("module_name", LESSON_MODULES)
def test_stubs_name_their_exercise(module_name):
    stubs, _ = lesson_modules(module_name)
    lesson = module_name[2:4]
    for name, stub in public_functions(stubs).items():
        arguments = [None] * len(inspect.signature(stub).parameters)
        with pytest.raises(NotImplementedError) as raised:
            stub(*arguments)
        expected = rf"Exercise {lesson}\.\d+: implement {name} in exercises/{module_name}\.py"
        assert re.fullmatch(expected, str(raised.value))


@pytest.mark.parametrize("module_name", LESSON_MODULES)
def test_solution_docstring_examples_hold(module_name):
    _, solutions = lesson_modules(module_name)
    failed, attempted = doctest.testmod(solutions)
    assert attempted > 0 and failed == 0


# --- How outcomes are recorded ----------------------------------------------------------------

FAKE_GRADED_TESTS = """
import pytest


def stub():
    raise NotImplementedError("Exercise 99.1: implement stub")


@pytest.mark.exercise("passes", points=2)
def test_pass():
    assert 1 + 1 == 2


@pytest.mark.exercise("fails", points=1)
def test_assertion():
    assert [1, 2] == [1, 3], "the second id is wrong"


@pytest.mark.exercise("fails", points=1)
def test_error():
    {}["missing"]


@pytest.mark.exercise("stub", points=1)
def test_stub():
    stub()


@pytest.mark.exercise("uses_stub", points=3)
def test_uses_stub():
    stub()


@pytest.mark.exercise("calls_fails", points=1)
def test_calls_fails():
    assert False, "the merged\\nlist is wrong"


@pytest.mark.exercise("calls_fails", points=1)
def test_calls_fails_but_passes():
    pass


@pytest.mark.exercise("bare", points=1)
def test_bare_assert():
    assert [1] == [2]


EXERCISE_CALLS = {"calls_fails": ("fails", "passes")}
"""

COLLECT_OUTCOMES = """
import json, sys
from dataclasses import asdict
import pytest
from minillm.grade import OutcomeCollector
collector = OutcomeCollector()
pytest.main([sys.argv[1], "-q", "--tb=no", "-p", "no:cacheprovider"], plugins=[collector])
with open(sys.argv[2], "w") as file:
    json.dump([asdict(test) for test in collector.results()], file)
"""


def test_collector_records_each_kind_of_outcome(tmp_path):
    test_file = tmp_path / "test_ex99_fake.py"
    test_file.write_text(FAKE_GRADED_TESTS)
    report = tmp_path / "outcomes.json"
    command = [sys.executable, "-c", COLLECT_OUTCOMES, str(test_file), str(report)]
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    subprocess.run(command, cwd=tmp_path, env=environment, check=True, capture_output=True)
    tests = [GradedTest(**test) for test in json.loads(report.read_text())]

    assert [(test.lesson, test.exercise, test.points) for test in tests] == [
        ("99", "passes", 2),
        ("99", "fails", 1),
        ("99", "fails", 1),
        ("99", "stub", 1),
        ("99", "uses_stub", 3),
        ("99", "calls_fails", 1),
        ("99", "calls_fails", 1),
        ("99", "bare", 1),
    ]
    assert [(test.outcome, test.detail) for test in tests] == [
        (PASSED, ""),
        (FAILED, "the second id is wrong"),  # the message, without pytest's "assert ..." lines
        (FAILED, "KeyError: 'missing'"),
        (NOT_IMPLEMENTED, "stub"),
        (NOT_IMPLEMENTED, "stub"),
        (FAILED, "the merged list is wrong"),  # a message of several lines, whole
        (PASSED, ""),
        (FAILED, "assert [1] == [2]"),  # no message: pytest's explanation rather than nothing
    ]
    assert {test.calls for test in tests if test.exercise == "calls_fails"} == {
        ("fails", "passes")
    }
    statuses = [score.status for score in GradeResult("exercises", tests).exercises]
    assert statuses == [
        "done",
        "failing (2 of 2 tests fail)\ntest_assertion: the second id is wrong",
        "not implemented yet",
        "not implemented yet (needs stub)",
        # "fails" fails and "calls_fails" calls it: that one is the one to fix ("passes" is done)
        "fails because `fails` fails; fix that first (1 of 2 tests fail)\n"
        "test_calls_fails: the merged list is wrong",
        "failing (1 of 1 tests fail)\ntest_bare_assert: assert [1] == [2]",
    ]
    verbose = GradeResult("exercises", tests, verbose=True).exercises[1].status
    assert verbose.splitlines() == [
        "failing (2 of 2 tests fail)",
        "test_assertion: the second id is wrong",
        "test_error: KeyError: 'missing'",
    ]


@pytest.mark.skipif(not hasattr(signal, "SIGALRM"), reason="needs an alarm signal")
def test_time_limit_stops_an_endless_loop():
    with pytest.raises(TimeoutError, match="endless loop"), time_limit(0.05):
        while True:
            pass


# --- The table --------------------------------------------------------------------------------


LONG_MESSAGE = "expected <b> but got " + " ".join(["x" * 9] * 20) + " (the last words)"


def sample_result(verbose=False) -> GradeResult:
    def graded(exercise, points, outcome, detail="", name=None):
        return GradedTest("01", exercise, points, name or f"test_{exercise}", outcome, detail,
                          ("decode",) if exercise == "encode" else ())

    return GradeResult(
        "exercises",
        [
            graded("encode", 2, PASSED),
            graded("encode", 1, PASSED),
            graded("decode", 3, FAILED, LONG_MESSAGE),
            graded("decode", 1, FAILED, "the second failure", name="test_decode_again"),
            graded("decode", 1, PASSED),
            graded("train_bpe", 4, NOT_IMPLEMENTED, "train_bpe"),
        ],
        verbose,
    )


def test_text_table_has_a_row_per_exercise_and_a_total():
    lines = str(sample_result()).splitlines()
    assert lines[0] == "Grades for exercises/"
    assert lines[1].split() == ["lesson", "exercise", "tests", "passed", "points", "status"]
    assert lines[3].split() == ["01", "encode", "2/2", "3/3", "done"]
    assert lines[4].split() == ["01", "decode", "1/3", "1/5", "failing", "(2", "of", "3", "tests",
                                "fail)"]
    assert lines[-3].split()[:4] == ["01", "train_bpe", "0/1", "0/4"]
    assert lines[-1].split() == ["total", "3/6", "4/12", "1", "of", "3", "exercises", "done"]
    assert lines[1].index("status") == lines[3].index("done"), "columns are aligned"


def test_text_table_wraps_the_whole_message_and_names_the_test():
    lines = str(sample_result()).splitlines()
    status_column = lines[1].index("status")
    message = lines[5:-3]  # the decode row's message, under its status
    assert len(message) >= 3, "a long message is wrapped over several lines"
    assert all(line[:status_column].strip() == "" for line in message), "it stays in its column"
    assert all(len(line) <= status_column + STATUS_WIDTH for line in lines), "within the table"
    text = " ".join(line.strip() for line in message)
    assert text == f"test_decode: {LONG_MESSAGE}", "the whole message, with the test's name"
    assert "..." not in str(sample_result()) and "the second failure" not in str(sample_result())


def test_verbose_table_lists_every_failing_test():
    text = " ".join(str(sample_result(verbose=True)).split())
    assert f"test_decode: {LONG_MESSAGE}" in text
    assert "test_decode_again: the second failure" in text


def test_dependency_is_named_in_the_row_of_the_caller():
    tests = [*sample_result().tests, GradedTest("01", "encode", 1, "test_encode_more", FAILED,
                                                "wrong ids", ("decode",))]
    statuses = {score.name: score.status for score in GradeResult("exercises", tests).exercises}
    assert statuses["encode"].startswith("fails because `decode` fails; fix that first (1 of 3")
    assert statuses["decode"].startswith("failing (2 of 3 tests fail)")


def test_html_table_escapes_and_colours_statuses():
    table = sample_result()._repr_html_()
    assert "expected &lt;b&gt; but got" in table and "<b>" not in table
    assert "(the last words)" in table and "<br>test_decode: " in table
    assert table.count("<tr") == 1 + 3 + 1  # header, one per exercise, total
    assert 'color: green' in table and 'color: firebrick' in table


def test_every_graded_assertion_has_a_message():
    bare = []
    for path in sorted((REPO_ROOT / "tests" / "graded").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assert) and node.msg is None:
                bare.append(f"{path.name}:{node.lineno}")
    assert not bare, f"assertions without a message for the learner: {bare}"


def test_results_survive_a_json_round_trip():
    result = sample_result()
    assert GradeResult.from_json(json.loads(json.dumps(result.to_json()))) == result
