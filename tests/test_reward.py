"""Tests of minillm.reward: the labeler, the comparisons, the batches, the reward model trained
through the engine, the metrics, the 'reward' command, and (slow) that the lesson's reward model
ranks held-out answers as the gold reward does."""

import math
import os
import random
import subprocess
import sys

import pytest
import torch

import minillm.train
from minillm import artifacts
from minillm.checkpoint import load_checkpoint, save_checkpoint
from minillm.evaluate import calibration, evaluate_reward_model, feature_accuracy, spearman
from minillm.model import GPT, GPTConfig
from minillm.recipes import reward_recipe
from minillm.reward import (
    PreferenceConfig,
    PreferenceData,
    PreferenceDataset,
    RewardModel,
    bradley_terry_loss,
    encode_responses,
    load_reward_model,
    make_preference_data,
    train_reward_model,
)
from minillm.train import TrainConfig
from minillm.world import (
    HELD_OUT_PHRASINGS,
    TOPICS,
    TRAIN_PHRASINGS,
    Comparisons,
    gold_components,
    gold_reward,
    label,
    preference_prompts,
)

GOOD = "My love is as a fever, longing still."


@pytest.fixture(scope="module")
def tok():
    return artifacts.char_tokenizer()


def tiny_gpt(tok, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2,
                         n_embd=32, bias=False))


def tiny_run(**overrides) -> TrainConfig:
    settings = dict(max_steps=40, batch_size=4, lr=3e-3, min_lr=3e-4, warmup_steps=4,
                    eval_interval=20, eval_batches=2, device="cpu", progress=False)
    return TrainConfig(**{**settings, **overrides})


def answer(text, prompt="Speak of love.", topic="love", ended=True) -> dict:
    return {"topic": topic, "prompt": prompt, "answer": text, "ended": ended,
            "gold": gold_reward(topic, text, ended)}


# ----------------------------------------------------------------------------- the labeler

def test_a_good_answer_has_every_quality():
    assert gold_components("love", GOOD, True) == {
        "on_topic": 1.0, "real_words": 1.0, "ended": 1.0, "full_stop": 1.0, "length": 1.0,
        "repetition": 0.0}
    assert gold_reward("love", GOOD, True) == 3.5


@pytest.mark.parametrize("topic, text, ended, component, value", [
    ("death", GOOD, True, "on_topic", 0.0),  # off topic
    ("love", "I lov'd her once, and loving still.", True, "on_topic", 1.0),  # another form
    ("love", "In God-call seave me ruppose.", True, "real_words", 4 / 6),  # seave, ruppose
    ("love", GOOD, False, "ended", 0.0),  # ran to the length limit
    ("love", "My love is as a fever, longing still,", True, "full_stop", 0.0),
    ("love", "Thy love? O love!", True, "full_stop", 1.0),
    ("love", "O love!", True, "length", 7 / 20),  # 7 characters: too short
    ("love", "love " * 24, True, "length", 2 - 120 / 80),  # 120 characters: too long
    ("love", "Thy honour honour'd love.", True, "repetition", 0.0),  # two different words
    ("love", "The king, the queen, and the prince.", True, "repetition", 0.0),  # function words
    ("love", "Thy honour, honour thy love.", True, "repetition", 0.25),  # one repeat
    ("love", "Love, love, my love, love the love.", True, "repetition", 1.0),  # four: the most
    ("love", "", True, "real_words", 0.0),
])
def test_gold_components_of_hand_written_answers(topic, text, ended, component, value):
    assert gold_components(topic, text, ended)[component] == pytest.approx(value)


def test_degenerate_repetition_costs_more_than_the_topic_earns():
    # What lesson 06's policy can exploit if the RM is blind to repetition: repeating the topic
    # word keeps an answer on topic and made of real words, yet a reader ranks it last.
    looping = gold_reward("love", "Love, love, my love, love the love.", True)
    off_topic = gold_reward("love", "The quality of mercy is not strain'd.", True)
    assert looping == 1.5 and off_topic == 2.5
    assert gold_reward("love", "In God-call seave me ruppose.", True) > looping


def test_labeler_noise_is_as_configured():
    rng = random.Random(0)
    golds = [(rng.random(), rng.random()) for _ in range(20_000)]
    for agreement in (0.7, 0.8, 1.0):
        first, second = random.Random(1), random.Random(2)  # two independent labelers
        a = [label(x, y, agreement, first) for x, y in golds]
        b = [label(x, y, agreement, second) for x, y in golds]
        truth = [0 if x > y else 1 for x, y in golds]
        with_gold = sum(v == t for v, t in zip(a, truth)) / len(golds)
        with_each_other = sum(v == w for v, w in zip(a, b)) / len(golds)
        # binomial standard errors are below 0.0035: allow about 4
        assert with_gold == pytest.approx(agreement, abs=0.015)
        assert with_each_other == pytest.approx(agreement ** 2 + (1 - agreement) ** 2, abs=0.015)
    assert label(2.5, 2.5, 0.8, rng) is None  # a tie is not called


# ----------------------------------------------------------------------------- the data

@pytest.fixture(scope="module")
def tiny_data(tok):
    return make_preference_data(tiny_gpt(tok), tok, PreferenceConfig(samples_per_prompt=3),
                                progress=False)


def test_preference_data_is_the_same_for_a_seed(tok, tiny_data, tmp_path):
    model = tiny_gpt(tok)
    again = make_preference_data(model, tok, PreferenceConfig(samples_per_prompt=3),
                                 progress=False)
    assert again == tiny_data
    other = make_preference_data(model, tok, PreferenceConfig(samples_per_prompt=3, seed=1),
                                 progress=False)
    assert other.train.responses != tiny_data.train.responses
    tiny_data.save(tmp_path / "prefs.json")
    assert PreferenceData.load(tmp_path / "prefs.json") == tiny_data
    with pytest.raises(FileNotFoundError, match="No preference data at"):
        PreferenceData.load(tmp_path / "missing.json")


def test_held_out_prompts_are_never_trained_on(tiny_data):
    train_prompts = {r["prompt"] for r in tiny_data.train.responses}
    held_prompts = {r["prompt"] for r in tiny_data.held_out.responses}
    assert train_prompts == {p.format(t) for t in TOPICS for p in TRAIN_PHRASINGS}
    assert held_prompts == {p.format(t) for t in TOPICS for p in HELD_OUT_PHRASINGS}
    assert not train_prompts & held_prompts
    assert [len(part) for part in preference_prompts()] == [len(train_prompts), len(held_prompts)]


def test_pairs_compare_answers_to_one_prompt_and_never_ties(tiny_data):
    for part in (tiny_data.train, tiny_data.held_out):
        assert len(part.responses) == 3 * len({r["prompt"] for r in part.responses})
        seen = set()
        for chosen, rejected in part.pairs:
            c, r = part.responses[chosen], part.responses[rejected]
            assert c["prompt"] == r["prompt"] and c["gold"] != r["gold"]
            assert frozenset((chosen, rejected)) not in seen  # each pair once
            seen.add(frozenset((chosen, rejected)))
        for r in part.responses:
            assert r["gold"] == gold_reward(r["topic"], r["answer"], r["ended"])
        assert 0.7 < part.agreement_with_gold() < 0.9  # ~0.8, on a few hundred pairs


@pytest.mark.parametrize("kwargs, error", [
    ({"samples_per_prompt": 1}, "samples_per_prompt must be an integer >= 2"),
    ({"agreement": 0.3}, "agreement must be from 0.5"),
    ({"temperature": 0}, "PreferenceConfig.temperature must be a positive number, not 0"),
])
def test_bad_preference_settings_are_one_clear_sentence(kwargs, error):
    with pytest.raises(ValueError, match=error):
        PreferenceConfig(**kwargs)


# ----------------------------------------------------------------------------- batches

def two_prompts() -> Comparisons:
    responses = [answer(GOOD), answer("My love is as a fever,"), answer("Fever!", ended=False),
                 answer("Of death.", "Speak of death.", "death"),
                 answer("Death, death.", "Speak of death.", "death"),
                 answer("Life.", "Speak of death.", "death")]
    return Comparisons(responses, [(0, 1), (2, 1), (3, 5), (5, 4)])


def test_batches_hold_all_answers_of_a_prompt_and_their_labels(tok):
    data = PreferenceDataset(two_prompts(), tok)
    x, y = data.random_batch(5, 128, torch.Generator().manual_seed(0))
    assert x.shape[:3] == (5, 3, 2) and y.shape == (5, 3, 3)
    assert data.targets[0].tolist() == [[0, 1, 0], [0, 0, 0], [0, 1, 0]]
    assert data.targets[1].tolist() == [[0, 0, 1], [0, 0, 0], [0, 1, 0]]
    ids, mask = data.inputs[0, :, 0], data.inputs[0, :, 1]
    # the mask covers the assistant's turn: its opening token, the answer and its <|end|>
    assert tok.decode(ids[0][mask[0].bool()].tolist()) == f"<|assistant|>{GOOD}<|end|>"
    assert tok.decode(ids[2][mask[2].bool()].tolist()) == "<|assistant|>Fever!"  # no end
    assert tok.decode(ids[0][:mask[0].argmax()].tolist()) == "<|user|>Speak of love.<|end|>"
    assert x.size(-1) == len(encode_responses([two_prompts().responses[0]], tok)[0][0])


def test_answers_need_equal_groups_and_pairs_within_a_prompt(tok):
    uneven = two_prompts()
    uneven.responses.pop()
    with pytest.raises(ValueError, match="same number of answers"):
        PreferenceDataset(Comparisons(uneven.responses, []), tok)
    across = two_prompts()
    across.pairs.append((0, 3))
    with pytest.raises(ValueError, match="two different prompts"):
        PreferenceDataset(across, tok)


def test_padding_changes_no_score(tok):
    model = RewardModel.from_gpt(tiny_gpt(tok))
    torch.nn.init.normal_(model.head.weight)
    responses = two_prompts().responses
    ids, mask = encode_responses(responses, tok)
    together = model.score(ids, mask)
    for k, response in enumerate(responses):
        alone = model.score(*encode_responses([response], tok))
        assert torch.allclose(alone, together[k:k + 1], atol=1e-5)


# ----------------------------------------------------------------------------- the model

def test_bradley_terry_loss_known_values():
    assert bradley_terry_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(math.log(2))
    assert bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0])).item() == \
        pytest.approx(math.log(1 + math.exp(-2)))
    assert bradley_terry_loss(torch.tensor([0.0]), torch.tensor([900.0])).item() == \
        pytest.approx(900.0)  # finite however wrong


def test_the_batch_loss_is_bradley_terry_over_the_labeled_pairs(tok):
    model = RewardModel.from_gpt(tiny_gpt(tok))
    data = PreferenceDataset(two_prompts(), tok)
    x, y = data.inputs, data.targets
    scores, loss = model(x, y)
    assert scores.tolist() == [[0.0] * 3] * 2 and loss.item() == pytest.approx(math.log(2))
    torch.nn.init.normal_(model.head.weight)
    scores, loss = model(x, y)
    chosen = torch.stack([scores[0, 0], scores[0, 2], scores[1, 0], scores[1, 2]])
    rejected = torch.stack([scores[0, 1], scores[0, 1], scores[1, 2], scores[1, 1]])
    assert loss.item() == pytest.approx(bradley_terry_loss(chosen, rejected).item())


def toy_preference(n_prompts: int, seed: int) -> Comparisons:
    """A preference a tiny model learns in a few steps: "!" beats ".", whatever the words."""
    rng = random.Random(seed)
    responses, pairs = [], []
    for k in range(n_prompts):
        prompt = f"Speak of {rng.choice(TOPICS)}, {chr(97 + k % 26)}{chr(97 + k // 26)}."
        text = " ".join(rng.choice(("fair", "foul", "good", "night", "sweet")) for _ in range(4))
        for end, gold in (("!", 1.0), (".", 0.0)):
            responses.append({"topic": "love", "prompt": prompt, "answer": text + end,
                              "ended": True, "gold": gold})
        pairs.append((len(responses) - 2, len(responses) - 1))
    return Comparisons(responses, pairs)


def test_reward_model_learns_a_toy_preference_through_the_engine(tok, tmp_path):
    data = PreferenceData(toy_preference(64, seed=0), toy_preference(32, seed=1))
    path = tmp_path / "rm.pt"
    gpt = tiny_gpt(tok)
    before = [p.detach().clone() for p in gpt.parameters()]
    model, history = train_reward_model(gpt, data, tiny_run(checkpoint_path=path),
                                        tokenizer=tok)
    assert all(torch.equal(p, b) for p, b in zip(gpt.parameters(), before))  # a copy trained
    assert history[0]["val_loss"] == pytest.approx(math.log(2))
    assert history[-1]["val_loss"] < 0.3
    metrics = evaluate_reward_model(model, tok, data.held_out)
    assert metrics["gold_accuracy"] == metrics["label_accuracy"] == 1.0
    assert metrics["n_pairs"] == 32 and metrics["n_prompts"] == 32 and metrics["n_responses"] == 64

    saved = load_reward_model(path)
    assert isinstance(saved.model, RewardModel) and saved.state["stage"] == "reward"
    assert saved.state["step"] == 40 and saved.tokenizer.to_json() == tok.to_json()
    assert evaluate_reward_model(saved.model, tok, data.held_out)["scores"] == \
        pytest.approx(metrics["scores"], abs=1e-5)


def test_reward_training_resumes_exactly(tok, tmp_path, monkeypatch):
    data = PreferenceData(toy_preference(16, seed=0), toy_preference(8, seed=1))
    straight, _ = train_reward_model(tiny_gpt(tok), data, tiny_run(max_steps=20), tokenizer=tok)

    path, steps_taken = tmp_path / "rm.pt", []
    real_step = minillm.train.train_step

    def ctrl_c_at_step_11(*args, **kwargs):
        if len(steps_taken) == 10:
            raise KeyboardInterrupt
        steps_taken.append(1)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(minillm.train, "train_step", ctrl_c_at_step_11)
    train_reward_model(tiny_gpt(tok), data, tiny_run(max_steps=20, checkpoint_path=path),
                       tokenizer=tok)
    assert load_reward_model(path).state["step"] == 10
    monkeypatch.setattr(minillm.train, "train_step", real_step)
    # (the backbone passed in is replaced by the checkpoint's weights)
    resumed, history = train_reward_model(tiny_gpt(tok), data,
                                          tiny_run(max_steps=20, checkpoint_path=path,
                                                   resume=True), tokenizer=tok)
    assert [row["step"] for row in history] == list(range(21))
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_checkpoints_name_what_they_hold(tok, tmp_path):
    data = PreferenceData(toy_preference(4, seed=0), toy_preference(2, seed=1))
    rm_path, gpt_path = tmp_path / "rm.pt", tmp_path / "gpt.pt"
    train_reward_model(tiny_gpt(tok), data, tiny_run(max_steps=2, warmup_steps=1,
                                                      checkpoint_path=rm_path), tokenizer=tok)
    save_checkpoint(gpt_path, tiny_gpt(tok), tok)
    with pytest.raises(ValueError, match="holds a reward model.*load_reward_model"):
        load_checkpoint(rm_path)
    with pytest.raises(ValueError, match="holds a language model, whose weights do not fit a "
                                         "RewardModel"):
        load_reward_model(gpt_path)
    with pytest.raises(ValueError, match="needs the tokenizer"):
        train_reward_model(tiny_gpt(tok), data, tiny_run())


# ----------------------------------------------------------------------------- metrics

def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks [0, 1, 2] and [0.5, 0.5, 2]: covariance 1.5, spreads 2 and 1.5
    assert spearman([1, 2, 3], [7, 7, 9]) == pytest.approx(1.5 / math.sqrt(3))
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))


def test_evaluate_counts_pairs_and_clusters_by_prompt(tok):
    comparisons = two_prompts()
    model = RewardModel.from_gpt(tiny_gpt(tok))
    torch.nn.init.normal_(model.head.weight, generator=torch.Generator().manual_seed(0))
    m = evaluate_reward_model(model, tok, comparisons)
    s, gold = m["scores"], [r["gold"] for r in comparisons.responses]
    by_label = [s[c] > s[r] for c, r in comparisons.pairs]
    by_gold = [(s[c] > s[r]) == (gold[c] > gold[r]) for c, r in comparisons.pairs]
    assert m["label_accuracy"] == sum(by_label) / 4 and m["gold_accuracy"] == sum(by_gold) / 4
    assert (m["n_pairs"], m["n_prompts"], m["n_responses"]) == (4, 2, 6)
    assert m["spearman"] == pytest.approx(spearman(s, gold))
    untrained = evaluate_reward_model(RewardModel.from_gpt(tiny_gpt(tok)), tok, comparisons)
    assert untrained["label_accuracy"] == untrained["gold_accuracy"] == 0.5  # ties: guesses


def test_feature_accuracy_uses_pairs_that_differ_in_one_quality_only():
    responses = [answer(GOOD), answer("My love is as a fever, longing still,"),  # full stop
                 answer("My life is as a fever, longing still."),  # topic
                 answer("My life is as a fever, longing still,")]  # topic and full stop
    pairs = [(0, 1), (0, 2), (0, 3), (2, 3), (1, 3)]
    scores = [3.0, 2.0, 2.5, 0.0]
    result = feature_accuracy(Comparisons(responses, pairs), scores)
    # full stop alone: (0, 1) right, (2, 3) right; topic alone: (0, 2) right, (1, 3) right;
    # (0, 3) differs in two qualities and counts nowhere
    assert result["full_stop"]["n"] == 2 and result["full_stop"]["accuracy"] == 1.0
    assert result["on_topic"]["n"] == 2 and result["on_topic"]["accuracy"] == 1.0
    assert result["repetition"]["n"] == 0 and math.isnan(result["repetition"]["accuracy"])
    worse = feature_accuracy(Comparisons(responses, pairs), [0.0, 1.0, 2.5, 0.0])
    assert worse["full_stop"]["accuracy"] == 0.5  # (0, 1) now wrong


def test_calibration_by_hand():
    comparisons = Comparisons([answer(GOOD), answer("Fie."), answer("O love!")], [(0, 1), (2, 1)])
    # margins 0 and ln 3: probabilities 1/2 (both sides) and 3/4 for the chosen, 1/4 against
    bins = calibration(comparisons, [1.0, 1.0, 1.0 + math.log(3)], bins=4)
    assert bins == [
        {"predicted": pytest.approx(0.25), "observed": 0.0, "n": 1},
        {"predicted": pytest.approx(0.5), "observed": 0.5, "n": 2},
        {"predicted": pytest.approx(0.75), "observed": 1.0, "n": 1},
    ]


# ----------------------------------------------------------------------------- the command

def run_cli(*args, home=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if home is not None:
        env["MINILLM_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "minillm", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_reward_command_on_a_tiny_model(tok, tmp_path):
    sft_path, base_path, out = tmp_path / "sft.pt", tmp_path / "base.pt", tmp_path / "rm.pt"
    save_checkpoint(sft_path, tiny_gpt(tok, seed=1), tok, stage="sft")
    save_checkpoint(base_path, tiny_gpt(tok), tok)
    result = run_cli("reward", "--sft", sft_path, "--init", base_path, "--out", out,
                     "--samples-per-prompt", "2", "--steps", "6", "--batch-size", "2",
                     "--device", "cpu", home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("PreferenceData(train=Comparisons(prompts=192, responses=384")
    assert lines[1] == f"Training a reward model from {base_path}"
    assert lines[2].startswith("step 6: held-out loss")
    assert lines[3].startswith("Held-out: n=") and "of 144 answers to 72 prompts" in lines[3]
    assert [line.split()[0] for line in lines[-6:]] == ["on_topic", "real_words", "ended",
                                                        "full_stop", "length", "repetition"]
    assert load_reward_model(out).state["stage"] == "reward"
    assert PreferenceData.load(out.with_suffix(".preferences.json")).train.responses
    assert not (tmp_path / "home" / "reward-char-quick.pt").exists()  # the artifact untouched


def test_reward_errors_are_one_line(tmp_path):
    result = run_cli("reward", "--agreement", "0.3", home=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip() == ("error: PreferenceConfig.agreement must be from 0.5 (coin "
                                     "flips) to 1 (no noise), not 0.3.")
    result = run_cli("reward", "--sft", tmp_path / "missing.pt", home=tmp_path)
    assert result.stderr.strip() == f"error: No checkpoint at {tmp_path / 'missing.pt'}."


# ----------------------------------------------------------------------------- the real thing

@pytest.mark.slow
def test_the_lessons_reward_model_ranks_held_out_answers_like_the_gold_reward():
    # The lesson artifacts themselves (made and cached under MINILLM_HOME if missing: the SFT
    # model's answers, their comparisons, the reward model), so the lessons reuse them.
    data = artifacts.preference_data("quick")
    rm = artifacts.reward_model("quick")
    m = evaluate_reward_model(rm.model, rm.tokenizer, data.held_out)
    features = feature_accuracy(data.held_out, m["scores"])
    report = (f"n={m['n_pairs']} held-out pairs of {m['n_responses']} answers to "
              f"{m['n_prompts']} held-out prompts: gold accuracy {m['gold_accuracy']:.3f} ± "
              f"{m['gold_accuracy_se']:.3f}, label accuracy {m['label_accuracy']:.3f}, "
              f"Spearman {m['spearman']:.3f}; alone: "
              + ", ".join(f"{k} {v['accuracy']:.2f} (n={v['n']})" for k, v in features.items()))
    samples = reward_recipe("quick")[0].samples_per_prompt
    assert m["n_prompts"] == len(TOPICS) * len(HELD_OUT_PHRASINGS), report
    assert m["n_responses"] == m["n_prompts"] * samples, report
    assert m["n_pairs"] > 30_000, report  # most of the 72 x 496 pairs (ties are left out)
    # The requirement: RLHF can only be as good as its reward model.
    assert m["gold_accuracy"] >= 0.70, report
    # A perfect RM would agree with ~80% of the noisy labels; this one cannot beat that.
    assert m["label_accuracy"] < data.held_out.agreement_with_gold(), report
    assert m["spearman"] > 0.4, report
