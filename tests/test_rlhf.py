"""Tests of minillm.policy, minillm.ppo and minillm.dpo: rollouts and their layout, the
log-probabilities read from them, the PPO, GRPO and DPO loops on tiny models (what they log,
that they warn when nothing can be learned), the paired comparison of policies, and (slow) that
the PPO, GRPO and DPO policies beat the SFT model on gold reward on held-out prompts."""

import math
import os
import subprocess
import sys
import warnings

import pytest
import torch

from minillm import artifacts
from minillm.chat import prompt_ids
from minillm.checkpoint import load_checkpoint, save_checkpoint
from minillm.dpo import DPOConfig, answer_logprobs, dpo
from minillm.evaluate import compare_policies, compare_with_sft, sft_reference
from minillm.model import GPT, GPTConfig
from minillm.policy import Monitor, RLHFWarning, rollout, sequence_kl, token_logprobs
from minillm.ppo import PPOConfig, group_advantages, ppo
from minillm.recipes import rlhf_recipe
from minillm.reward import PreferenceData, RewardModel, encode_responses
from minillm.world import Comparisons, gold_reward, preference_prompts

PROMPTS = [{"topic": "love", "prompt": "Speak of love."},
           {"topic": "death", "prompt": "What say you of death, my lord?"},
           {"topic": "king", "prompt": "A line on the king."}]


@pytest.fixture(scope="module")
def tok():
    return artifacts.char_tokenizer()


def tiny_gpt(tok, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2,
                         n_embd=32, bias=False))


def tiny_reward_model(tok, seed=1) -> RewardModel:
    model = RewardModel.from_gpt(tiny_gpt(tok, seed))
    torch.nn.init.normal_(model.head.weight, std=0.5)  # a head that tells answers apart
    return model


def test_rollout_layout_and_log_probabilities_match_each_answer_alone(tok):
    policy = tiny_gpt(tok)
    batch = rollout(policy, tok, PROMPTS, max_new_tokens=12,
                         generator=torch.Generator().manual_seed(0))
    logp = token_logprobs(policy(batch.ids, attention_mask=batch.attention)[0], batch.ids)
    for k, (prompt, response) in enumerate(zip(PROMPTS, batch.responses)):
        real = batch.ids[k][batch.attention[k].bool()].tolist()
        asked = prompt_ids([{"role": "user", "content": prompt["prompt"]}], tok)
        answer = real[len(asked):]
        assert real[:len(asked)] == asked and 1 <= len(answer) <= 12
        assert int(batch.actions[k].sum()) == len(answer)
        ended = answer[-1] == tok.special_tokens["<|end|>"]
        assert response["ended"] == ended
        # the answer's log-probabilities in the padded batch equal those of the row alone
        alone = token_logprobs(policy(torch.tensor([real]))[0], torch.tensor([real]))
        assert torch.allclose(logp[k][batch.actions[k].bool()], alone[0, len(asked) - 1:],
                              atol=1e-5)


def test_sequence_kl_is_zero_against_itself_and_positive_on_average_against_another(tok):
    policy, other = tiny_gpt(tok, 0), tiny_gpt(tok, 5)
    batch = rollout(policy, tok, PROMPTS * 20, max_new_tokens=10,
                         generator=torch.Generator().manual_seed(1))
    assert torch.equal(sequence_kl(policy, policy, batch), torch.zeros(60))
    assert sequence_kl(policy, other, batch).mean() > 0


def test_answer_logprobs_sum_the_answer_tokens_only(tok):
    model = tiny_gpt(tok)
    responses = [{"prompt": "Speak of love.", "answer": "My love.", "ended": True},
                 {"prompt": "What of death?", "answer": "No", "ended": False}]
    ids, mask = encode_responses(responses, tok)
    got = answer_logprobs(model, ids, mask)
    for k, r in enumerate(responses):
        asked = prompt_ids([{"role": "user", "content": r["prompt"]}], tok)
        answer = tok.encode(r["answer"]) + ([tok.special_tokens["<|end|>"]] if r["ended"] else [])
        row = torch.tensor([asked + answer])
        logp = torch.log_softmax(model(row)[0][0], -1)
        want = sum(logp[len(asked) - 1 + j, t] for j, t in enumerate(answer))
        assert got[k].item() == pytest.approx(want.item(), abs=1e-4)


def test_compare_policies_pairs_answers_by_prompt():
    def rows(values):
        return [{"prompt": p, "gold": v} for p, vs in values.items() for v in vs]

    baseline = rows({"a": [1.0, 1.0], "b": [2.0, 2.0], "c": [0.0, 0.0]})
    tuned = rows({"a": [2.0, 2.0], "b": [2.5, 3.5], "c": [0.5, 0.5]})
    result = compare_policies(tuned, baseline)
    # per-prompt gains 1, 1, 0.5: mean 5/6, SE = sd([1, 1, .5]) / sqrt(3)
    assert result["gain"] == pytest.approx(5 / 6)
    assert result["se"] == pytest.approx(math.sqrt(((1 / 6) ** 2 * 2 + (1 / 3) ** 2) / 2 / 3))
    assert result["prompts"] == 3 and result["answers"] == 6
    with pytest.raises(ValueError, match="same prompts"):
        compare_policies(tuned, rows({"a": [1.0]}))


def test_ppo_logs_every_step_and_moves_the_policy(tok):
    sft = tiny_gpt(tok)
    before = {k: v.clone() for k, v in sft.state_dict().items()}
    config = PPOConfig(steps=3, prompts_per_step=3, samples_per_prompt=2, max_new_tokens=8,
                            lr=1e-3, device="cpu", progress=False)
    policy, history, scale = ppo(sft, tiny_reward_model(tok), config, tokenizer=tok,
                                      prompts=PROMPTS)
    assert [row["step"] for row in history] == [1, 2, 3]
    for key in ("proxy", "gold", "kl", "entropy", "clip_fraction", "value_loss", "distinct"):
        assert all(math.isfinite(row[key]) for row in history), key
    assert scale.std > 0
    assert all(torch.equal(before[k], v) for k, v in sft.state_dict().items())  # a copy is tuned
    assert any(not torch.equal(before[k], v) for k, v in policy.state_dict().items())
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the first rollout is the SFT's


def test_group_advantages_standardize_the_answers_to_each_prompt():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0, -1.0, 1.0, -1.0, 1.0])
    got = group_advantages(rewards, 4)
    spread = math.sqrt(1.25)  # the population standard deviation of 1, 2, 3, 4
    want = [-1.5 / spread, -0.5 / spread, 0.5 / spread, 1.5 / spread, 0, 0, 0, 0, -1, 1, -1, 1]
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="12 rewards do not split into groups of 5"):
        group_advantages(rewards, 5)


def test_grpo_tunes_the_policy_and_never_trains_the_value_head(tok):
    config = PPOConfig(steps=3, prompts_per_step=3, samples_per_prompt=4, max_new_tokens=8,
                            lr=1e-3, advantages="group", value_coef=0.0, device="cpu",
                            progress=False)
    sft = tiny_gpt(tok)
    policy, history, _ = ppo(sft, tiny_reward_model(tok), config, tokenizer=tok,
                                  prompts=PROMPTS)
    assert [row["step"] for row in history] == [1, 2, 3]
    assert all(math.isfinite(row["proxy"]) and math.isfinite(row["kl"]) for row in history)
    # The zero-initialized head gets no gradient: its values, and so the value loss, stay 0.
    assert all(row["value_loss"] == 0.0 for row in history)
    assert any(not torch.equal(a, b) for a, b in zip(sft.state_dict().values(),
                                                     policy.state_dict().values()))
    with pytest.raises(ValueError, match="'gae' or 'group', not 'vtrace'"):
        ppo(sft, tiny_reward_model(tok), PPOConfig(advantages="vtrace"),
                 tokenizer=tok, prompts=PROMPTS)


def test_ppo_refuses_a_reward_model_that_scores_everything_alike(tok):
    untrained = RewardModel.from_gpt(tiny_gpt(tok, 1))  # its head starts at zero
    config = PPOConfig(steps=1, prompts_per_step=3, samples_per_prompt=2, max_new_tokens=6,
                            device="cpu", progress=False)
    with pytest.raises(ValueError, match="all the same score"):
        ppo(tiny_gpt(tok), untrained, config, tokenizer=tok, prompts=PROMPTS)


def test_monitor_warns_once_per_kind():
    monitor = Monitor(kl_limit=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor.check_rollout(1, 0.4, kl=3.0, distinct=1.0)  # healthy: silent
        monitor.check_rollout(2, 0.4, kl=12.0, distinct=0.1)
        monitor.check_rollout(3, 0.4, kl=15.0, distinct=0.1)
        monitor.check_rollout(4, 0.0, kl=1.0, distinct=1.0)
        monitor.check_dpo(99, [math.log(2)] * 99)  # too early to tell
        monitor.check_dpo(100, [0.7] * 50 + [0.68] * 50)  # falling: silent
        monitor.check_dpo(101, [math.log(2)] * 101)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 4
    assert "12.0 nats" in messages[0] and "10%" in messages[1]
    assert "same score" in messages[2] and "ln 2" in messages[3]


def comparisons_for(tok) -> Comparisons:
    texts = ["My love is true.", "love love love love", "Death comes for all.", "xq zzv"]
    responses = [{"topic": t, "prompt": f"Speak of {t}.", "answer": a, "ended": True,
                  "gold": gold_reward(t, a, True)}
                 for t in ("love", "death") for a in texts]
    return Comparisons(responses, [(0, 1), (0, 3), (2, 3), (4, 5), (6, 7), (6, 5)])


def test_dpo_starts_at_ln2_and_learns_the_pairs(tok):
    config = DPOConfig(steps=60, batch_size=6, beta=0.5, lr=3e-3, eval_interval=30,
                            eval_answers=16, device="cpu", progress=False)
    policy, history = dpo(tiny_gpt(tok), comparisons_for(tok), config, tokenizer=tok)
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy = reference
    assert history[-1]["loss"] < 0.3 and history[-1]["accuracy"] == 1.0
    assert history[-1]["chosen_shift"] > history[-1]["rejected_shift"]
    measured = [row["step"] for row in history if "gold" in row]
    assert measured == [30, 60] and all(history[s - 1]["kl"] > 0 for s in measured)


def test_dpo_that_cannot_learn_warns(tok):
    config = DPOConfig(steps=100, batch_size=4, lr=0.0, eval_interval=0, device="cpu",
                            progress=False)
    with pytest.warns(RLHFWarning, match="ln 2"):
        dpo(tiny_gpt(tok), comparisons_for(tok), config, tokenizer=tok)


def test_recipes_name_their_method():
    ppo = rlhf_recipe("ppo", "quick")
    assert isinstance(ppo, PPOConfig) and ppo.advantages == "gae"
    assert isinstance(rlhf_recipe("dpo", "full"), DPOConfig)
    for name in ("quick", "full"):
        grpo, ppo = rlhf_recipe("grpo", name), rlhf_recipe("ppo", name)
        assert grpo.advantages == "group" and grpo.value_coef == 0.0
        # as many answers per step as PPO's, several to each prompt
        assert grpo.prompts_per_step * grpo.samples_per_prompt == \
            ppo.prompts_per_step * ppo.samples_per_prompt
        assert grpo.samples_per_prompt >= 4
    with pytest.raises(ValueError, match="'ppo', 'grpo' or 'dpo', not 'rloo'"):
        rlhf_recipe("rloo")


def test_held_out_prompts_are_never_trained_on():
    train, held_out = preference_prompts()
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in held_out}


def run_cli(*args, home):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MINILLM_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "minillm", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ppo", "grpo", "dpo"])
def test_rlhf_command_on_tiny_models(tok, tmp_path, method):
    home = tmp_path / "home"
    home.mkdir()
    sft_path = tmp_path / "sft.pt"
    save_checkpoint(sft_path, tiny_gpt(tok), tok, stage="sft")
    save_checkpoint(home / "reward-char-quick.pt", tiny_reward_model(tok), tok, stage="reward")
    comparisons = comparisons_for(tok)
    PreferenceData(comparisons, comparisons).save(home / "preferences-char-quick.json")
    out = tmp_path / f"{method}.pt"
    result = run_cli("rlhf", "--method", method, "--profile", "quick", "--sft", sft_path,
                     "--out", out, "--steps", "2", "--eval-samples", "1", "--device", "cpu",
                     home=home)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{method.upper()} from {sft_path}")
    assert lines[1] == f"checkpoint {out}; history {out.with_suffix('.jsonl')}"
    assert lines[2] == "Held-out: 72 prompts x 1 answers (temperature 1; standard errors paired " \
                       "by prompt)"
    assert lines[3].split()[:2] == ["gold", "reward"] and "SE)" in lines[3]
    saved = load_checkpoint(out)
    assert saved.state["stage"] == method and len(saved.state["history"]) == 2
    assert len(out.with_suffix(".jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_lesson_policies_beat_the_sft_model_on_gold_reward_on_held_out_prompts():
    """The required outcome of lesson 06, on the artifacts it leaves (made here if missing, as
    GRPO's always is): each tuned policy's mean gold reward over 72 held-out prompts x 8 answers
    beats the SFT model's by at least 4 standard errors (paired by prompt)."""
    reference = sft_reference(artifacts.sft_model(), artifacts.reward_model().model,
                                   samples=8, seed=1)
    for method in ("ppo", "grpo", "dpo"):
        m = compare_with_sft(artifacts.rlhf_policy(method).model, reference)
        print(f"{method}: gold {m['gold_gain']:+.3f} ± {m['gold_gain_se']:.3f} ({m['gold_z']:.1f} "
              f"SE, {m['prompts']} prompts, {m['answers']} answers), KL {m['kl']:.2f}")
        assert m["prompts"] == 72 and m["answers"] == 576
        assert m["gold_z"] >= 4, f"{method} gains {m['gold_gain']:+.3f} ± {m['gold_gain_se']:.3f}"


@pytest.mark.parametrize("make, field", [
    (lambda: PPOConfig(steps=-1), "PPOConfig.steps must be a positive integer"),
    (lambda: PPOConfig(lr=-5), "PPOConfig.lr must be a number >= 0"),
    (lambda: PPOConfig(clip=-1), "PPOConfig.clip must be a positive number"),
    (lambda: PPOConfig(lam=1.5), "PPOConfig.lam must be a number from 0 to 1"),
    (lambda: PPOConfig(advantages="group", samples_per_prompt=1),
     "PPOConfig.samples_per_prompt must be at least 2"),
    (lambda: DPOConfig(beta=-1), "DPOConfig.beta must be a positive number"),
    (lambda: DPOConfig(batch_size=0), "DPOConfig.batch_size must be a positive integer"),
    (lambda: DPOConfig(progress="yes"), "DPOConfig.progress must be True or False"),
])
def test_bad_rl_settings_are_one_sentence_naming_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_ppo_and_dpo_leave_the_callers_models_and_random_state_as_they_were(tok):
    sft, rm = tiny_gpt(tok).train(), tiny_reward_model(tok).train()
    weights = {k: v.clone() for k, v in sft.state_dict().items()}
    torch.manual_seed(7)
    before = torch.get_rng_state()
    ppo(sft, rm, PPOConfig(steps=1, prompts_per_step=3, samples_per_prompt=2, max_new_tokens=6,
                           device="cpu", progress=False), tokenizer=tok, prompts=PROMPTS)
    dpo(sft, comparisons_for(tok), DPOConfig(steps=2, batch_size=2, eval_interval=1,
                                             eval_answers=4, device="cpu", progress=False),
        tokenizer=tok)
    assert torch.equal(torch.get_rng_state(), before)
    assert sft.training and rm.training  # not switched to eval mode behind the caller's back
    assert all(torch.equal(v, sft.state_dict()[k]) for k, v in weights.items())


def test_log_probabilities_keep_float64_for_gradient_checks(tok):
    model = tiny_gpt(tok).double()
    ids = torch.tensor([tok.encode("To be, or not")])
    weight = model.lm_head.weight

    def mean_logprob(w):
        hidden = model.forward_hidden(ids)
        return token_logprobs(hidden @ w.T, ids).mean()

    assert mean_logprob(weight).dtype == torch.float64
    probe = weight.detach()[:, :4].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda p: mean_logprob(torch.cat((p, weight.detach()[:, 4:]), dim=1)), (probe,))
