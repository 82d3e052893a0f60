import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    command = next(b.strip() for b in blocks if "pytest" in b and "pip install" not in b)
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines


def test_every_lesson_in_the_map_exists():
    readme = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\((lessons/[^)]+\.ipynb)\)", readme):
        assert (ROOT / link).is_file(), link


@pytest.mark.slow
def test_readme_python_examples_run(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    monkeypatch.chdir(tmp_path)  # the examples write files
    for block in re.findall(r"```python\n(.*?)```", readme, flags=re.S):
        exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "shakespeare.json").is_file() and (tmp_path / "model.pt").is_file()


# What a learner reading a lesson on GitHub must never see in its saved outputs: this machine's
# paths, a traceback, or Python's own warnings (the lessons' own RLHFWarning is part of the story).
UNFIT_FOR_LEARNERS = re.compile(r"/tmp/|/work/|/root/|/home/|site-packages|Traceback"
                                r"|(?:User|Deprecation|Future|Runtime)Warning")


def test_saved_outputs_show_no_machine_paths_tracebacks_or_warnings():
    import json

    found = []
    for lesson in sorted((ROOT / "lessons").glob("*.ipynb")):
        for number, cell in enumerate(json.loads(lesson.read_text())["cells"]):
            for output in cell.get("outputs", []):
                text = "".join(output.get("text", "")) + "".join(output.get("traceback", [])) \
                    + "".join(output.get("data", {}).get("text/plain", ""))
                found += [f"{lesson.name} cell {number}: …{text[max(0, m.start() - 60):m.end()]}"
                          for m in UNFIT_FOR_LEARNERS.finditer(text)]
    assert not found, "saved outputs a learner should not see:\n" + "\n".join(found)


def test_imports_point_down_the_readmes_module_list():
    """The README's module table is in import order: a module imports none listed below it."""
    import ast

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| module | what it holds | lesson |"):]
    rank = {name: row for row, line in enumerate(table[:table.index("\n\n")].splitlines()[2:])
            for name in re.findall(r"`(\w+)`", line.split("|")[1])}
    upward = []
    for name, row in rank.items():
        tree = ast.parse((ROOT / "minillm" / f"{name}.py").read_text())
        imported = {node.module.split(".")[1] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom)
                    and (node.module or "").startswith("minillm.")}
        upward += [f"{name} imports {other}" for other in imported if rank.get(other, -1) > row]
    assert len(rank) > 20 and not upward, upward
