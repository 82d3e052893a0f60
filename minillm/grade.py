"""Grade the exercises: run the graded tests and show the points earned per exercise.

At the shell::

    python -m minillm.grade                      # every lesson, your code in exercises/
    python -m minillm.grade 01                   # lesson 01 only
    python -m minillm.grade 01 --impl solutions  # the reference solutions instead
    python -m minillm.grade 01 --verbose         # every failing test, not just the first

In a notebook, ``grade("01")`` runs that same command in a fresh Python process, so the grade
always reflects the exercise file as it is saved now, and shows the table.

The graded tests live in ``tests/graded/test_exNN_<topic>.py``. Each one carries
``@pytest.mark.exercise("<function>", points=N)``; an exercise earns the points of the tests it
passes. A test whose code raises ``NotImplementedError`` counts as "not implemented yet".
A test module may declare ``EXERCISE_CALLS = {"train_bpe": ("get_pair_counts", "merge_pair")}``:
the exercises each one calls, so that when both fail the table points at the one to fix first.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import io
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from unittest import mock

import pytest

IMPLEMENTATIONS = ("exercises", "solutions")
# About 100 times what a graded test takes with the reference solution: generous for slow but
# correct code, and it turns an endless loop (a classic in BPE's encode) into a failure, not a hang.
TEST_TIME_LIMIT_SECONDS = 5
STATUS_WIDTH = 64  # the status column of the text table wraps at this width
GRADED_FILE = re.compile(r"test_ex(\d\d)_\w+\.py")

PASSED, NOT_IMPLEMENTED, FAILED = "passed", "not implemented", "failed"


class GradingError(Exception):
    """Grading could not run; the message says why in one sentence."""


# --- Finding the graded tests ----------------------------------------------------------------


def graded_tests_dir() -> Path:
    """The ``tests/graded`` folder of the course repository this package belongs to."""
    next_to_package = Path(__file__).resolve().parent.parent / "tests" / "graded"
    in_working_dir = Path.cwd() / "tests" / "graded"
    for folder in (next_to_package, in_working_dir):
        if folder.is_dir():
            return folder
    raise GradingError(
        "Cannot find the graded tests: run this inside the course repository "
        "(the folder that holds tests/graded)."
    )


def lesson_number(text: str) -> str:
    """``"1"`` or ``"01"`` -> ``"01"``."""
    if not (text.isdigit() and len(text) <= 2):
        raise GradingError(f"A lesson is a number such as 01 or 1, not {text!r}.")
    return text.zfill(2)


def graded_files(tests_dir: Path, lessons: Iterable[str]) -> list[Path]:
    """The graded test files of ``lessons`` (all lessons if none are given)."""
    files_by_lesson: dict[str, list[Path]] = {}
    for path in sorted(tests_dir.iterdir()):
        match = GRADED_FILE.fullmatch(path.name)
        if match:
            files_by_lesson.setdefault(match[1], []).append(path)
    if not files_by_lesson:
        raise GradingError(f"There are no graded tests (test_exNN_<topic>.py) in {tests_dir}.")
    wanted = [lesson_number(str(lesson)) for lesson in lessons] or sorted(files_by_lesson)
    unknown = [lesson for lesson in wanted if lesson not in files_by_lesson]
    if unknown:
        raise GradingError(
            f"There are no graded tests for lesson {', '.join(unknown)}; "
            f"lessons with graded tests: {', '.join(sorted(files_by_lesson))}."
        )
    return [path for lesson in wanted for path in files_by_lesson[lesson]]


# --- Results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GradedTest:
    """One graded test and how it went."""

    lesson: str
    exercise: str
    points: int
    name: str
    outcome: str  # PASSED, NOT_IMPLEMENTED or FAILED
    # FAILED: the reason (the assertion's message). NOT_IMPLEMENTED: the function that raised.
    detail: str = ""
    calls: tuple[str, ...] = ()  # the other exercises of the lesson this exercise calls

    def __post_init__(self) -> None:
        object.__setattr__(self, "calls", tuple(self.calls))  # JSON gives a list


@dataclass(frozen=True)
class ExerciseScore:
    """The tests of one exercise, summed up."""

    lesson: str
    name: str
    tests_passed: int
    tests_total: int
    points: int
    points_possible: int
    status: str


def exercise_status(name: str, tests: list[GradedTest], failing_exercises: set[str] = frozenset(),
                    verbose: bool = False) -> str:
    """``done``, ``not implemented yet`` or ``failing ...`` for exercise ``name``.

    A failing status names the first failing test and gives its whole message (``verbose``: every
    failing test's), each on a line of its own. When an exercise that this one calls fails too,
    the status says so first: that one is the one to fix.
    """
    missing = [test for test in tests if test.outcome == NOT_IMPLEMENTED]
    if any(test.detail == name for test in missing):
        return "not implemented yet"
    failures = [test for test in tests if test.outcome == FAILED]
    if failures:
        culprits = [f"`{other}`" for other in tests[0].calls if other in failing_exercises]
        count = f"{len(failures)} of {len(tests)} tests fail"
        summary = f"failing ({count})"
        if len(culprits) == 1:
            summary = f"fails because {culprits[0]} fails; fix that first ({count})"
        elif culprits:
            summary = f"fails because {' and '.join(culprits)} fail; fix those first ({count})"
        shown = failures if verbose else failures[:1]
        return "\n".join([summary, *(f"{test.name}: {test.detail}" for test in shown)])
    if missing:
        # This exercise's code runs, but it calls another function that is still a stub.
        return f"not implemented yet (needs {missing[0].detail})"
    return "done"


def score_exercises(tests: list[GradedTest], verbose: bool = False) -> list[ExerciseScore]:
    """One score per exercise, in the order the tests ran."""
    tests_by_exercise: dict[tuple[str, str], list[GradedTest]] = {}
    for test in tests:
        tests_by_exercise.setdefault((test.lesson, test.exercise), []).append(test)
    failing = {key for key, group in tests_by_exercise.items()
               if any(test.outcome != PASSED for test in group)}
    return [
        ExerciseScore(
            lesson=lesson,
            name=name,
            tests_passed=sum(test.outcome == PASSED for test in group),
            tests_total=len(group),
            points=sum(test.points for test in group if test.outcome == PASSED),
            points_possible=sum(test.points for test in group),
            status=exercise_status(
                name, group, {other for other_lesson, other in failing if other_lesson == lesson},
                verbose),
        )
        for (lesson, name), group in tests_by_exercise.items()
    ]


@dataclass
class GradeResult:
    """The outcome of a grading run: a text table in ``str()``, an HTML table in Jupyter."""

    impl: str
    tests: list[GradedTest]
    verbose: bool = False  # list every failing test of an exercise, not only the first

    @property
    def exercises(self) -> list[ExerciseScore]:
        return score_exercises(self.tests, self.verbose)

    @property
    def points(self) -> int:
        return sum(test.points for test in self.tests if test.outcome == PASSED)

    @property
    def points_possible(self) -> int:
        return sum(test.points for test in self.tests)

    @property
    def all_passed(self) -> bool:
        return bool(self.tests) and all(test.outcome == PASSED for test in self.tests)

    def table_rows(self) -> tuple[list[str], list[list[str]], list[str]]:
        """Header, one row per exercise, and the total row, as strings."""
        header = ["lesson", "exercise", "tests passed", "points", "status"]
        scores = self.exercises
        rows = [
            [score.lesson, score.name, f"{score.tests_passed}/{score.tests_total}",
             f"{score.points}/{score.points_possible}", score.status]
            for score in scores
        ]
        done = sum(score.status == "done" for score in scores)
        passed = sum(test.outcome == PASSED for test in self.tests)
        total = ["total", "", f"{passed}/{len(self.tests)}",
                 f"{self.points}/{self.points_possible}", f"{done} of {len(scores)} exercises done"]
        return header, rows, total

    def __str__(self) -> str:
        header, rows, total = self.table_rows()
        widths = [max(len(row[i]) for row in [header, *rows, total]) for i in range(4)]
        widths.append(STATUS_WIDTH)

        def lines(cells: list[str]) -> list[str]:
            # The status is wrapped, never cut: its first line sits in the row, the rest below.
            status = [part for line in cells[-1].splitlines()
                      for part in textwrap.wrap(line, STATUS_WIDTH, subsequent_indent="  ")]
            first = [*cells[:-1], status[0] if status else ""]
            padded = (cell.ljust(width) for cell, width in zip(first, widths, strict=True))
            indent = " " * (sum(widths[:-1]) + 2 * (len(widths) - 1))
            return ["  ".join(padded).rstrip(), *(indent + part for part in status[1:])]

        rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
        title = f"Grades for {self.impl}/"
        body = [text for row in rows for text in lines(row)]
        return "\n".join([title, *lines(header), rule, *body, rule, *lines(total)])

    def _repr_html_(self) -> str:
        header, rows, total = self.table_rows()

        def cells(tag: str, values: list[str]) -> str:
            return "".join(
                f"<{tag}>{'<br>'.join(map(html.escape, value.splitlines()))}</{tag}>"
                for value in values
            )

        body = "".join(
            f'<tr style="color: {status_colour(row[-1])}; text-align: left; '
            f'vertical-align: top">{cells("td", row)}</tr>'
            for row in rows
        )
        return (
            f"<table><caption>Grades for {html.escape(self.impl)}/</caption>"
            f"<thead><tr>{cells('th', header)}</tr></thead><tbody>{body}</tbody>"
            f"<tfoot><tr>{cells('th', total)}</tr></tfoot></table>"
        )

    def to_json(self) -> dict:
        return {"impl": self.impl, "tests": [asdict(test) for test in self.tests]}

    @classmethod
    def from_json(cls, data: dict, verbose: bool = False) -> GradeResult:
        tests = [GradedTest(**test) for test in data["tests"]]
        return cls(impl=data["impl"], tests=tests, verbose=verbose)


def status_colour(status: str) -> str:
    if status == "done":
        return "green"
    return "grey" if status.startswith("not implemented") else "firebrick"


# --- Running the tests -----------------------------------------------------------------------


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise ``TimeoutError`` in the code running inside after ``seconds``."""
    if not hasattr(signal, "SIGALRM"):  # Windows has no alarm signal: run without a limit.
        yield
        return

    def interrupt(signum, frame):
        raise TimeoutError(f"took over {seconds:g} s; an endless loop?")

    previous_handler = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)


def failure_reason(excinfo: pytest.ExceptionInfo) -> str:
    """Why a test failed: the assertion's whole message, or the error and its message."""
    lines = str(excinfo.value).strip().splitlines()
    if excinfo.errisinstance((AssertionError, pytest.fail.Exception, pytest.skip.Exception)):
        # pytest appends its own explanation ("assert [1] == [2]") after a message: drop it.
        message = list(itertools.takewhile(lambda line: not line.startswith("assert "), lines))
        return " ".join(line.strip() for line in message) or (lines or ["an assertion failed"])[0]
    first_line = lines[0] if lines else ""
    return f"{excinfo.typename}: {first_line}" if first_line else excinfo.typename


class OutcomeCollector:
    """A pytest plugin that records each graded test's exercise, points and outcome."""

    def __init__(self, exercises: Iterable[str] | None = None) -> None:
        self.only = set(exercises) if exercises is not None else None  # None: every exercise
        self.marked: dict[str, dict] = {}  # node id -> lesson, exercise, points, name, calls
        self.outcomes: dict[str, tuple[str, str]] = {}  # node id -> outcome, detail
        self.problems: list[str] = []

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        if self.only is not None:
            items[:] = [item for item in items if exercise_of(item) in self.only]
        for item in items:
            marker = item.get_closest_marker("exercise")
            try:
                exercise, points = exercise_and_points(*marker.args, **marker.kwargs)
            except (AttributeError, TypeError):  # no marker, or the wrong arguments
                self.problems.append(f"{item.nodeid} needs @pytest.mark.exercise(name, points=N)")
                continue
            self.marked[item.nodeid] = {
                "lesson": GRADED_FILE.fullmatch(item.path.name)[1],
                "exercise": exercise,
                "points": points,
                "name": item.name,
                "calls": tuple(getattr(item.module, "EXERCISE_CALLS", {}).get(exercise, ())),
            }

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            last_line = str(report.longrepr).strip().splitlines()[-1]
            self.problems.append(f"cannot load {report.nodeid}: {last_line}")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item):
        with time_limit(TEST_TIME_LIMIT_SECONDS):
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        # Setup, call and teardown each report; the first one that does not pass decides.
        failed_before = self.outcomes.get(item.nodeid, (PASSED,))[0] != PASSED
        if not report.passed and not failed_before:
            self.outcomes[item.nodeid] = classify(call.excinfo)
        elif report.when == "call" and report.passed:
            self.outcomes[item.nodeid] = (PASSED, "")
        return report

    def results(self) -> list[GradedTest]:
        results = []
        for node_id, marked in self.marked.items():
            outcome, detail = self.outcomes.get(node_id, (FAILED, "did not run"))
            results.append(GradedTest(**marked, outcome=outcome, detail=detail))
        return results


def exercise_and_points(name: str, points: int) -> tuple[str, int]:
    """Reads the arguments of ``@pytest.mark.exercise(name, points)`` as Python would."""
    return name, points


def exercise_of(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("exercise")
    return marker.args[0] if marker and marker.args else None


def classify(excinfo: pytest.ExceptionInfo | None) -> tuple[str, str]:
    """(outcome, detail) for a test phase that did not pass."""
    if excinfo is None:  # failed without an exception, e.g. a strict xfail that passed
        return FAILED, "failed"
    if excinfo.errisinstance(NotImplementedError):
        return NOT_IMPLEMENTED, excinfo.traceback[-1].name
    return FAILED, failure_reason(excinfo)


def run(lessons: Iterable[str], impl: str, exercises: Iterable[str] | None = None) -> GradeResult:
    """Run the graded tests of ``lessons`` (of ``exercises`` only, if given) against ``impl``."""
    if impl not in IMPLEMENTATIONS:
        raise GradingError(f"impl must be one of {', '.join(IMPLEMENTATIONS)}, not {impl!r}.")
    tests_dir = graded_tests_dir()
    files = graded_files(tests_dir, lessons)
    collector = OutcomeCollector(exercises)
    arguments = [*map(str, files), f"--impl={impl}", f"--rootdir={tests_dir.parent.parent}"]
    # Graded tests need no third-party pytest plugin, and some (nbval) take seconds to import,
    # which a learner would wait through at every grade; the project's addopts name their
    # options, so they go too.
    # (unraisableexception runs the garbage collector five times per run: half a second.)
    arguments += ["-o", "addopts=", "-p", "no:cacheprovider", "-p", "no:unraisableexception"]
    # The table is the interface, so pytest's own report is thrown away. Its terminal plugin
    # must still load: pytest's assertion messages ("assert [1] == [2]") are built with it.
    with (
        mock.patch.dict(os.environ, {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        exit_code = pytest.main([*arguments, "-q", "--tb=no"], plugins=[collector])
    if collector.problems:
        raise GradingError(f"The graded tests are broken: {collector.problems[0]}.")
    allowed = [pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED]
    if exercises is not None:
        allowed.append(pytest.ExitCode.NO_TESTS_COLLECTED)
    if exit_code not in allowed:
        raise GradingError(f"pytest stopped before grading finished (exit code {exit_code}).")
    return GradeResult(impl=impl, tests=collector.results())


# --- From a notebook -------------------------------------------------------------------------


def grade(
    lessons: str | int | Iterable[str | int] | None = "01",
    impl: str = "exercises",
    verbose: bool = False,
) -> GradeResult:
    """Grade ``lessons`` (``"01"``, ``[1, 2]``, or ``None`` for all) and return the table;
    ``verbose=True`` shows every failing test of an exercise, not only the first.

    The tests run in a separate Python process, so an exercise file you have just edited is
    imported afresh, and a crash in it cannot take the notebook down with it.
    """
    if lessons is None:
        lessons = []
    elif isinstance(lessons, str | int):
        lessons = [lessons]
    package_parent = str(Path(__file__).resolve().parent.parent)
    python_path = [package_parent, *filter(None, [os.environ.get("PYTHONPATH")])]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "grades.json"
        command = [sys.executable, "-m", "minillm.grade", *map(str, lessons)]
        command += ["--impl", impl, "--json", str(report)]
        finished = subprocess.run(command, capture_output=True, text=True, env=environment)
        if not report.exists():
            error_lines = finished.stderr.strip().splitlines()
            raise GradingError(error_lines[-1] if error_lines else "The grader did not finish.")
        return GradeResult.from_json(json.loads(report.read_text()), verbose=verbose)


# --- At the shell ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minillm.grade",
        description="Run the graded tests and print the points earned per exercise.",
    )
    parser.add_argument("lessons", nargs="*", metavar="NN", help="lessons to grade (default: all)")
    parser.add_argument(
        "--impl",
        choices=IMPLEMENTATIONS,
        default="exercises",
        help="grade your exercises (default) or the reference solutions",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="list every failing test of an exercise"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    try:
        result = run(args.lessons, args.impl)
    except GradingError as error:
        print(error, file=sys.stderr)
        return 2
    result.verbose = args.verbose
    print(result)
    if args.json:
        args.json.write_text(json.dumps(result.to_json(), indent=2))
    return 0 if result.all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
