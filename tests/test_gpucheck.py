"""Tests of minillm.gpucheck: the full profile's smoke test (on the CPU, in CI) and the GPU
command's report on a machine without a GPU."""

import json

import pytest
import torch

from minillm.__main__ import main
from minillm.gpucheck import GPU_CHECKS, lessons, smoke_full_profile
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
