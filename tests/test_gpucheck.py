"""Tests of minillm.gpucheck: the full profile's smoke test (on the CPU, in CI) and the GPU
command's report on a machine without a GPU."""

import json

import nbformat
import pytest
import torch

from minillm.__main__ import main
from minillm.gpucheck import GPU_CHECKS, lessons, run_lesson, smoke_full_profile
from minillm.recipes import base_recipe


@pytest.mark.slow
def test_every_stage_of_the_full_profile_builds_and_steps_at_full_size():
    rows = smoke_full_profile()
    assert [r["status"] for r in rows] == ["passed"] * 8, rows
    base = rows[0]
    full = base_recipe("full")[0]
    assert base["block_size"] == full.block_size == 256
    assert base["parameters"] > 10_000_000  # nanoGPT's Shakespeare model, not a small stand-in
    assert rows[-1]["models"] == 15  # every model of the three budgets' sweeps


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report without a GPU")
def test_gpucheck_without_a_gpu_skips_the_gpu_checks(tmp_path, capsys):
    report_path = tmp_path / "report.json"
    main(["gpucheck", "--json", str(report_path), "--lessons", "--no-smoke"])
    report = json.loads(report_path.read_text())
    assert [r["name"] for r in report["gpu_checks"]] == list(GPU_CHECKS)
    assert {r["status"] for r in report["gpu_checks"]} == {"skipped"}
    assert report["lessons"] == [] and report["environment"]["gpus"] == []
    assert "6 checks" in capsys.readouterr().out


def test_lessons_are_chosen_by_number():
    assert [p.name[:2] for p in lessons(["03", "01"])] == ["01", "03"]
    with pytest.raises(ValueError, match="No lesson 99"):
        lessons(["99"])


@pytest.mark.slow
def test_a_lesson_stopped_at_its_timeout_reports_the_last_cell_that_passed(tmp_path):
    cells = ["print('first')", "print('second')", "import time\ntime.sleep(300)"]
    notebook = tmp_path / "99_slow.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]),
                   notebook)
    row = run_lesson(notebook, tmp_path, timeout=15)
    assert row["status"] == "timed out" and 15 <= row["seconds"] < 60, row
    assert row["output"] == "stopped after 15 s; the last cell to pass: Cell 1", row
