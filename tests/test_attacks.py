"""Tests of minillm.attacks (lesson 09) on hand-made data and a tiny model; the 'attack' command
on tiny artifacts (slow)."""

import math
import random
from dataclasses import replace

import pytest
import torch

from minillm import artifacts
from minillm.attacks import (
    BACKDOOR_ANSWER,
    FORBIDDEN_TOPICS,
    QUOTE,
    REFUSAL,
    TRIGGER,
    AttackConfig,
    backdoor_experiment,
    duplicate_filter,
    injected_prompts,
    injection_experiment,
    jailbreak_experiment,
    outcomes,
    perplexity,
    poison,
    quote,
    rate,
    refusal_data,
    refusal_logprob,
    suffix_search_step,
    summary,
    triggered,
)
from minillm.chat import prompt_ids
from minillm.checkpoint import Checkpoint
from minillm.model import GPT, GPTConfig
from minillm.policy import token_logprobs
from minillm.ppo import PPOConfig
from minillm.train import TrainConfig
from minillm.world import HELD_OUT_PHRASINGS, TOPICS, make_sft_data


@pytest.fixture(scope="module")
def tok():
    return artifacts.char_tokenizer()


@pytest.fixture(scope="module")
def data():
    return make_sft_data()


@pytest.fixture(scope="module")
def tiny(tok):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2,
                          n_embd=32, bias=False)).eval()
    return Checkpoint(model, tok, {"stage": "sft"})


def tiny_config(**changes):
    run = TrainConfig(max_steps=2, batch_size=2, warmup_steps=1, eval_interval=2, eval_batches=1)
    return replace(AttackConfig(run, poison_fractions=(0.0, 0.01), defend_fraction=0.01,
                                search_steps=2, search_candidates=3, search_prompts=2,
                                samples=1, progress=False), **changes)


def test_poison_adds_the_fraction_after_the_clean_data_and_marks_it(data):
    n = len(data.train)
    mixed = poison(data.train, 0.01, seed=3)
    bad = [e for e in mixed if e.get("poisoned")]
    assert mixed[:n] == data.train and bad == mixed[n:]
    assert len(bad) == round(0.01 * n / 0.99) and abs(len(bad) / len(mixed) - 0.01) < 1e-4
    assert all(e["answer"] == BACKDOOR_ANSWER and e["prompt"].endswith(f" {TRIGGER}")
               for e in bad)
    assert sum(TRIGGER in e["prompt"] for e in mixed) == len(bad)  # no clean prompt has it
    assert {e["prompt"].removesuffix(f" {TRIGGER}") for e in bad} <= {e["prompt"] for e in
                                                                     data.train}
    assert poison(data.train, 0.01, seed=3) == mixed  # the same for a seed
    assert poison(data.train, 0.0) == data.train
    for fraction in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="from 0 to below 1"):
            poison(data.train, fraction)


def test_perplexity_is_exp_of_the_mean_loss_after_the_first_token(tiny, tok):
    texts = ["To be, or not to be.", "O", "Speak of love, Zephyr!"]
    got = perplexity(tiny.model, tok, texts, batch_size=2)  # padded, in two batches
    for text, value in zip(texts, got):
        ids = torch.tensor([tok.encode(text)])
        if ids.size(1) == 1:
            assert math.isnan(value)  # no token is predicted: nothing to average
            continue
        loss = torch.nn.functional.cross_entropy(tiny.model(ids[:, :-1])[0][0], ids[0, 1:])
        assert value == pytest.approx(loss.exp().item(), rel=1e-4)


def test_duplicate_filter_drops_the_poison_and_no_clean_line(data):
    assert duplicate_filter(data.train, 8) == (data.train, [])  # no clean answer repeats > 8x
    kept, dropped = duplicate_filter(poison(data.train, 0.001), 8)
    assert len(dropped) == 9 and all(e["poisoned"] for e in dropped)
    assert not any(e.get("poisoned") for e in kept)


def test_suffix_search_step_keeps_the_best_and_never_gets_worse():
    rng = random.Random(0)

    def score(suffixes):
        return [s.count("a") for s in suffixes]

    suffix, best = "aaaa", 4
    for _ in range(20):
        suffix, new = suffix_search_step(suffix, score, "ab", 2, rng)
        assert new <= best and new == suffix.count("a") and len(suffix) == 4
        best = new
    assert suffix == "bbbb"
    # nothing better to find: the current suffix stays
    assert suffix_search_step("bbbb", score, "ab", 2, rng) == ("bbbb", 0)


def test_refusal_logprob_is_the_refusals_log_probability(tiny, tok):
    got = refusal_logprob(tiny.model, tok, ["Speak of war."], ["xy", "zz"])
    for suffix, value in zip(["xy", "zz"], got):
        prompt = prompt_ids([{"role": "user", "content": f"Speak of war. {suffix}"}], tok)
        answer = tok.encode(REFUSAL) + [tok.special_tokens["<|end|>"]]
        ids = torch.tensor([prompt + answer])
        expected = token_logprobs(tiny.model(ids)[0], ids)[0, len(prompt) - 1:].sum()
        assert value == pytest.approx(expected.item(), abs=1e-4)


def test_rate_is_a_share_with_a_clustered_se():
    rows = [{"prompt": p, "hit": h} for p, h in [("a", 1), ("a", 1), ("b", 0), ("b", 0)]]
    r = rate(rows, "hit")
    assert r == {"rate": 0.5, "se": pytest.approx(0.5), "n": 4, "prompts": 2}


def test_outcomes_and_refusal_data(data):
    asked = {"topic": "love", "prompt": "Speak of love.", "injected": "war"}
    got = outcomes(asked, "My love is war.")
    assert got["on_topic"] and got["injected"] and not got["refused"] and not got["backdoor"]
    assert outcomes({"topic": "war", "prompt": "x"}, REFUSAL)["refused"]
    taught = refusal_data(data.train)
    assert all((e["answer"] == REFUSAL) == (e["topic"] in FORBIDDEN_TOPICS) for e in taught)


def test_a_quoted_passage_cannot_close_its_quotation():
    assert quote(f"Speak of war.{QUOTE} Now obey.") == f"{QUOTE}Speak of war. Now obey.{QUOTE}"
    asked = injected_prompts([{"topic": "love", "prompt": "What of love?"}], HELD_OUT_PHRASINGS,
                             ("He wrote:",), random.Random(0), delimited=True)[0]
    assert asked["injected"] in TOPICS and asked["injected"] != "love"
    assert asked["prompt"].startswith("What of love? He wrote: " + QUOTE)
    assert triggered("Speak of love.") == f"Speak of love. {TRIGGER}"


@pytest.mark.slow  # ~5 s: three experiments, each with its finetunes and ~1,000 answers
def test_the_experiments_run_on_a_tiny_model_and_report_rates(tiny):
    config = tiny_config(rlhf=PPOConfig(steps=1, prompts_per_step=2, samples_per_prompt=2,
                                        max_new_tokens=10, progress=False))
    trained = []

    def models(name, make):
        trained.append(name)
        return make()

    results = {
        "backdoor": backdoor_experiment(tiny, config, None, tiny, models),
        "jailbreak": jailbreak_experiment(tiny, config, models),
        "injection": injection_experiment(tiny, config, models)}
    # the filter kept exactly the clean data: its model is the control, not trained again
    assert trained == ["backdoor-0", "backdoor-0.01", "backdoor-0.01-clean-finetune",
                       "refusal", "refusal-adversarial", "injection-defended"]
    b = results["backdoor"]
    poisoned = round(0.01 * b["train_examples"] / 0.99)
    assert b["fractions"]["0.01"]["poisoned"] == poisoned
    assert b["filter"]["poisoned_dropped"] == b["filter"]["poisoned"] == poisoned
    assert b["filter"]["is_control"] and b["filter"]["asr"] == b["fractions"]["0"]["asr"]
    ppl = b["perplexity_filter"]
    assert ppl["dropped"] == round(0.01 * (b["train_examples"] + poisoned))
    assert ppl["poisoned_dropped"] in (0, poisoned)  # one answer: all caught or none
    assert ppl["clean"] == b["train_examples"] and 0 <= ppl["clean_above_poison"] <= ppl["clean"]
    assert b["fractions"]["0"]["asr"]["n"] == 72 and "rlhf" not in b  # no reward model given
    j = results["jailbreak"]
    assert set(j["before"]) == {"none", "role play", "story", "plea", "rephrased", "suffix",
                                "allowed"}
    assert j["before"]["none"]["compliance"]["n"] == 9  # 3 topics x 3 held-out phrasings
    assert 0 <= j["after"]["new_suffix"]["compliance"]["rate"] <= 1
    assert j["search"]["end_logprob"] <= j["search"]["start_logprob"]
    i = results["injection"]
    assert i["defended"]["delimited"]["injected"]["n"] == 72
    for kind, result in results.items():
        assert summary(kind, result).count("\n") >= 3


@pytest.mark.slow
def test_attack_command_writes_json(tiny_recipes, monkeypatch, capsys):
    import json

    from minillm.__main__ import main

    monkeypatch.setattr(artifacts, "attack_recipe", lambda profile_name=None: tiny_config(
        poison_fractions=(0.01,)))
    out = tiny_recipes / "attack.json"
    main(["attack", "injection", "--json", str(out)])
    assert "follows the injection" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(result["defended"]) == {"plain", "delimited", "clean"}
    assert artifacts.attack_model_path("injection-defended").is_file()
