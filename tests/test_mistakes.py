"""The grader catches learners' real mistakes by name (the mistakes are in tests/mistakes.py).

Each mistake is graded as if it were the learner's exercises/ file, all of them in one Python
process (about 40 s on two cores), and each then has a test of its own here: the mistaken
exercise loses points, its status names the rule the mistake breaks, and the exercises that call
it, where they fail, say that it is the one to fix first.
"""

import importlib
import inspect
import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from mistakes import MISTAKES, REPO_ROOT, mistaken_module

pytestmark = pytest.mark.slow
EXERCISE_MODULES = sorted(path.stem for path in (REPO_ROOT / "exercises").glob("ex[0-9][0-9]_*.py"))


def mistake_id(mistake) -> str:
    return f"{mistake.exercise}: {mistake.what}"


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory) -> dict:
    """Every mistake graded, in one fresh process: {mistake id: verdict}."""
    report = tmp_path_factory.mktemp("mistakes") / "verdicts.json"
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    finished = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "mistakes.py"), "--json", str(report)],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600,
    )
    if not report.exists():
        pytest.fail(f"grading the mistakes crashed:\n{finished.stdout}\n{finished.stderr}")
    return {f"{v['exercise']}: {v['what']}": v for v in json.loads(report.read_text())}


def test_every_exercise_has_at_least_three_mistakes():
    exercises = {
        name
        for module in EXERCISE_MODULES
        for name, function in inspect.getmembers(
            importlib.import_module(f"exercises.{module}"), inspect.isfunction
        )
        if function.__module__ == f"exercises.{module}" and not name.startswith("_")
    }
    counts = Counter(mistake.exercise for mistake in MISTAKES)
    assert len(exercises) == 46  # lessons 01-10
    too_few = {name: counts[name] for name in exercises if counts[name] < 3}
    assert not too_few, f"exercises with fewer than three mistakes: {too_few}"
    assert len({mistake_id(m) for m in MISTAKES}) == len(MISTAKES), "two mistakes share a name"


@pytest.mark.parametrize("mistake", MISTAKES, ids=mistake_id)
def test_the_mistake_is_a_small_change_that_still_imports(mistake):
    module = mistaken_module(mistake)  # the text to replace occurs exactly once
    assert mistake.old != mistake.new and callable(getattr(module, mistake.exercise))


@pytest.mark.parametrize("mistake", MISTAKES, ids=mistake_id)
def test_the_grader_catches_the_mistake_by_name(mistake, verdicts):
    verdict = verdicts[mistake_id(mistake)]
    assert verdict["lost_points"], f"{mistake.exercise} kept every point: {verdict['status']}"
    assert verdict["names_the_rule"], (
        f"the status of {mistake.exercise} does not name the rule /{mistake.rule}/:\n"
        f"{verdict['status']}"
    )
    for caller, status in verdict["others"].items():
        if status != "done":
            assert status.startswith(f"fails because `{mistake.exercise}` fails"), (caller, status)


def test_the_score(verdicts):
    caught = sum(verdict["caught"] for verdict in verdicts.values())
    assert caught == len(MISTAKES) == len(verdicts), f"caught {caught} of {len(MISTAKES)}"
