import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from minillm.scaling import (
    ScalingConfig,
    effective_params,
    fit_frontier,
    fit_parabola,
    fit_power_law,
    run_scaling,
    scaling_model,
    steps_for,
    sweep_widths,
    valleys,
    width_for,
)

# Two budgets, three tiny models each, one check model: a few seconds on a CPU.
TINY = ScalingConfig(budgets=(2e7, 4e7), tokens_per_param=5, sizes=3, size_range=4,
                     check_factor=1.5, check_sizes=1, block_size=16, batch_size=4,
                     warmup_steps=2, device="cpu", progress=False)
RUN_FIELDS = {"budget", "width", "n", "steps", "tokens", "loss", "cpu_s", "wall_s"}


def tiny_data():
    g = torch.Generator().manual_seed(0)
    return torch.randint(20, (4000,), generator=g), torch.randint(20, (1000,), generator=g), 20


def test_power_law_fit_recovers_a_known_exponent():
    c = np.geomspace(1e10, 1e14, 7)
    k, e = fit_power_law(c, 3e-2 * c ** 0.47)
    assert e == pytest.approx(0.47, abs=1e-9)
    assert k == pytest.approx(3e-2, rel=1e-6)


def test_parabola_fit_finds_the_valley_and_its_depth():
    n = np.geomspace(1e3, 1e5, 6)
    n_opt, loss_opt, curvature = fit_parabola(n, 2.0 + 0.3 * (np.log(n) - math.log(7e3)) ** 2)
    assert n_opt == pytest.approx(7e3, rel=1e-6)
    assert loss_opt == pytest.approx(2.0, abs=1e-9)
    assert curvature == pytest.approx(0.3, rel=1e-6)


def test_frontier_fit_recovers_chinchilla_exponents_from_synthetic_valleys():
    # Loss valleys whose minima lie at N_opt = 0.1 C^0.5 with loss 40 C^-0.1.
    runs = []
    for c in (1e10, 1e11, 1e12):
        center = 0.1 * c ** 0.5
        for n in np.geomspace(center / 4, center * 3, 5):
            runs.append({"budget": c, "n": n,
                         "loss": 40 * c ** -0.1 + 0.2 * math.log(n / center) ** 2})
    minima = valleys(runs)
    assert all(v["inside"] for v in minima)
    fit = fit_frontier(minima)
    assert fit["a"] == pytest.approx(0.5, abs=1e-6)
    assert fit["b"] == pytest.approx(0.5, abs=1e-6)
    assert fit["gamma"] == pytest.approx(0.1, abs=1e-6)
    assert fit["alpha"] == pytest.approx(0.2, abs=1e-6)  # L ~ N_opt^-0.2 along the frontier


@pytest.mark.filterwarnings("ignore:Polyfit may be poorly conditioned")
def test_a_minimum_outside_the_sweep_is_not_inside():
    n = [1e3, 2e3, 4e3, 8e3]
    falling = valleys([{"budget": 1.0, "n": x, "loss": 3 - math.log(x) / 10} for x in n])[0]
    assert not falling["inside"] and math.isnan(falling["n_opt"])  # a line: no minimum at all
    beyond = valleys([{"budget": 1.0, "n": x, "loss": (math.log(x / 2e4)) ** 2} for x in n])[0]
    assert beyond["n_opt"] == pytest.approx(2e4) and not beyond["inside"]


@pytest.mark.parametrize("change, field", [
    ({"budgets": (1e10,)}, "budgets"), ({"budgets": (1e10, -1.0)}, "budgets"),
    ({"sizes": 2}, "sizes"), ({"check_sizes": 2}, "check_sizes"),
    ({"check_factor": 0.5}, "check_factor"), ({"lr": 0}, "lr"), ({"min_lr": 1.0}, "min_lr"),
    ({"batch_size": 0}, "batch_size"), ({"seed": 1.5}, "seed"), ({"progress": 1}, "progress"),
    ({"threads": 0}, "threads"),
])
def test_config_names_the_bad_field(change, field):
    with pytest.raises(ValueError, match=rf"^ScalingConfig\.{field} must be"):
        ScalingConfig(**change)


def test_compute_is_six_n_d_with_the_attention_term():
    model = scaling_model(16, TINY, 20)
    c = model.config
    n_attention = 2 * c.n_layer * c.n_embd * c.block_size  # 12 L C T FLOPs per token / 6
    assert effective_params(model) == model.num_params(non_embedding=True) + n_attention
    steps = steps_for(model, 1e9, TINY)
    assert steps == round(1e9 / (6 * effective_params(model) * TINY.tokens_per_step))


def test_sweep_widths_center_on_the_guessed_size():
    widths = sweep_widths(1e9, TINY, 20)
    center = math.sqrt(1e9 / (6 * TINY.tokens_per_param))
    ns = [effective_params(scaling_model(w, TINY, 20)) for w in widths]
    assert len(widths) == 3 and ns[0] < center < ns[-1]
    assert width_for(ns[1], TINY, 20) == widths[1]


def test_tiny_experiment_returns_json_with_every_field():
    train_ids, val_ids, vocab = tiny_data()
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = json.loads(json.dumps(run_scaling(TINY, train_ids, val_ids, vocab)))
        assert torch.get_num_threads() == 2  # the caller's thread count is restored ...
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(torch.get_rng_state(), state)  # ... and its random state kept
    assert len(result["runs"]) == 6 and len(result["check"]["runs"]) == 1
    for run in result["runs"] + result["check"]["runs"]:
        assert set(run) == RUN_FIELDS
        assert run["tokens"] == run["steps"] * TINY.tokens_per_step
        assert 0 < run["loss"] < 2 * math.log(20)
    assert {v["budget"] for v in result["valleys"]} == {2e7, 4e7}
    assert {"a", "b", "alpha", "gamma", "k_n", "k_d", "k_loss"} <= set(result["fit"])
    check = result["check"]
    assert check["budget"] == pytest.approx(1.5 * 4e7)
    assert {"predicted_n", "predicted_loss", "measured_n", "measured_loss"} <= set(check)
    assert result["config"]["budgets"] == [2e7, 4e7]


def test_runs_are_reproducible_from_the_seed():
    train_ids, val_ids, vocab = tiny_data()
    config = replace(TINY, budgets=(2e7, 3e7), check_factor=1.0)
    first = run_scaling(config, train_ids, val_ids, vocab)
    again = run_scaling(config, train_ids, val_ids, vocab)
    assert [r["loss"] for r in first["runs"]] == [r["loss"] for r in again["runs"]]


def test_scaling_command_writes_the_json(tmp_path):
    out = tmp_path / "law.json"
    # Budgets so small that the quick recipe's models are a few hundred parameters (~8 s).
    result = subprocess.run([sys.executable, "-m", "minillm", "scaling", "--budgets", "5e8",
                             "1e9", "--check-factor", "1.5", "--json", out],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "N_opt ~ C^" in result.stdout and "check at C = 1.5e+09" in result.stdout
    data = json.loads(out.read_text())  # standard JSON: a fit without a minimum is null
    assert [v["budget"] for v in data["valleys"]] == [5e8, 1e9]
    assert all(set(run) == RUN_FIELDS for run in data["runs"] + data["check"]["runs"])
    assert data["check"]["budget"] == 1.5e9 and data["check"]["predicted_n"] > 0
    assert isinstance(data["fit"]["a"], float)


def test_scaling_command_errors_are_one_line():
    result = subprocess.run([sys.executable, "-m", "minillm", "scaling", "--budgets", "1e10"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().startswith("error: ScalingConfig.budgets must be two or more")


def test_the_full_recipe_has_500_times_the_quick_budgets():
    from minillm.recipes import scaling_recipe

    quick, full = scaling_recipe("quick"), scaling_recipe("full")
    assert [f / q for q, f in zip(quick.budgets, full.budgets)] == pytest.approx([500] * 3)
    assert quick.threads == 1 and quick.check_sizes == 3
