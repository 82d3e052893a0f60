import re
from pathlib import Path

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
