"""Tests of the MINILLM_REUSE switch of minillm.artifacts: with it, a lesson's training cell
picks up the saved run instead of training again (on tiny recipes, in a temporary home)."""

import pytest
import torch

import minillm.train
from minillm import artifacts
from minillm.checkpoint import save_checkpoint
from minillm.model import GPT


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))


@pytest.mark.parametrize("make, path", [
    (artifacts.train_base_model, artifacts.base_model_path),
    (artifacts.train_sft_model, artifacts.sft_model_path),
])
def test_reuse_resumes_the_finished_run_and_returns_its_history(tiny_recipes, monkeypatch,
                                                                capsys, make, path):
    model, history = make()
    assert "reusing" not in capsys.readouterr().out  # off by default

    monkeypatch.setenv("MINILLM_REUSE", "1")
    with monkeypatch.context() as m:
        m.setattr(minillm.train, "train_step", lambda *a, **k: pytest.fail("a step ran"))
        again, again_history = make()
    assert capsys.readouterr().out == (f"MINILLM_REUSE=1: reusing {path()} instead of "
                                       f"training afresh\n")
    assert again_history == history and again_history[-1]["step"] == history[-1]["step"] > 0
    assert same_weights(again, model)


def test_reuse_trains_when_nothing_is_saved_or_the_recipe_is_overridden(tiny_recipes,
                                                                        monkeypatch, capsys):
    monkeypatch.setenv("MINILLM_REUSE", "1")
    model, history = artifacts.train_base_model()  # nothing saved yet
    assert history[-1]["step"] == 4 and artifacts.base_model_path().is_file()
    other, other_history = artifacts.train_base_model(seed=1)
    assert "reusing" not in capsys.readouterr().out
    assert other_history[-1]["step"] == 4 and other_history != history
    assert not same_weights(other, model)


@pytest.mark.parametrize("method", ["ppo", "dpo"])
def test_reuse_loads_the_saved_policy_instead_of_tuning_again(tiny_recipes, monkeypatch, capsys,
                                                              method):
    tok = artifacts.char_tokenizer()
    torch.manual_seed(0)
    policy = GPT(artifacts.base_recipe()[0])
    history = [{"step": 1, "gold": 0.25, "kl": 0.5}, {"step": 2, "gold": 0.5, "kl": 1.0}]
    save_checkpoint(artifacts.rlhf_policy_path(method), policy, tok, stage=method, history=history)

    def refuse(*args, **kwargs):
        raise AssertionError(f"{method} ran")

    monkeypatch.setattr(artifacts, method, refuse)
    monkeypatch.setenv("MINILLM_REUSE", "1")
    loaded, loaded_history = artifacts.make_rlhf_policy(method)
    assert capsys.readouterr().out == (f"MINILLM_REUSE=1: reusing "
                                       f"{artifacts.rlhf_policy_path(method)} instead of "
                                       f"training afresh\n")
    assert loaded_history == history and same_weights(loaded, policy)

    monkeypatch.setenv("MINILLM_REUSE", "0")
    with pytest.raises(AssertionError, match=f"{method} ran"):
        artifacts.make_rlhf_policy(method)
