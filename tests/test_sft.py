"""Tests of minillm.sft: the task's data, the masked batches, finetuning through the engine, the
metrics, the 'sft' and 'chat' commands, and (slow) that finetuning really makes an assistant."""

import math
import os
import subprocess
import sys

import pytest
import torch

from minillm import artifacts
from minillm.chat import prompt_ids, render
from minillm.checkpoint import load_checkpoint, save_checkpoint
from minillm.evaluate import clustered_se, summarize
from minillm.model import GPT, IGNORE_INDEX, GPTConfig
from minillm.policy import answer_prompts
from minillm.recipes import sft_recipe
from minillm.sft import SFTDataset, sft
from minillm.train import TrainConfig
from minillm.world import (
    HELD_OUT_PHRASINGS,
    LINE_CHARS,
    TOPICS,
    TRAIN_PHRASINGS,
    UNSEEN_TOPICS,
    conversation,
    corpus_lines,
    is_on_topic,
    make_sft_data,
    topic_forms,
)


@pytest.fixture(scope="module")
def tok():
    return artifacts.char_tokenizer()


@pytest.fixture(scope="module")
def data(corpus):
    return make_sft_data(corpus)


def tiny_base(tok, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2,
                         n_embd=32, bias=False))


# ----------------------------------------------------------------------------- topics

def test_topic_forms_follow_the_spelling_rule():
    assert topic_forms("love") == {"love", "loves", "love's", "loves'", "lovely", "loveful",
                                   "loveless", "loved", "lov'd", "loving", "lover", "lovers",
                                   "lovest", "lov'st", "loveth"}
    assert {"fears", "feared", "fear'd", "fearful", "fearing"} <= topic_forms("fear")
    assert "wares" not in topic_forms("war") and "ward" not in topic_forms("war")


@pytest.mark.parametrize("text, topic, expected", [
    ("My love is as a fever", "love", True),
    ("LOVE'S labour's lost", "love", True),
    ("the gods themselves", "god", True),
    ("A kingdom for a horse!", "king", False),
    ("So well beloved", "love", False),
    ("gloves and hose", "love", False),
])
def test_is_on_topic(text, topic, expected):
    assert is_on_topic(text, topic) is expected


# ----------------------------------------------------------------------------- the data

def test_corpus_lines_leave_out_speakers_and_odd_lengths():
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
    assert corpus_lines(text) == ["Before we proceed any further, hear me speak."]
    assert corpus_lines(text, min_chars=5) == ["Before we proceed any further, hear me speak.",
                                               "Speak, speak."]


def test_data_is_the_same_for_a_seed_and_differs_across_seeds(corpus, data):
    assert make_sft_data(corpus, seed=0) == data
    other = make_sft_data(corpus, seed=1)
    assert other.train != data.train
    assert other.prompts == data.prompts  # the evaluation prompts do not depend on the seed


def test_held_out_lines_and_phrasings_are_never_trained_on(data):
    train_lines = {e["answer"] for e in data.train}
    held_out_lines = {e["answer"] for e in data.held_out}
    assert train_lines.isdisjoint(held_out_lines)
    assert 0.08 < len(held_out_lines) / (len(train_lines) + len(held_out_lines)) < 0.12
    train_prompts = {e["prompt"] for e in data.train}
    evaluation = {p["prompt"] for p in data.prompts + data.unseen_prompts + data.held_out}
    assert train_prompts.isdisjoint(evaluation)
    assert {e["topic"] for e in data.train} == set(TOPICS)
    assert not set(UNSEEN_TOPICS) & set(TOPICS)


def test_examples_answer_their_topic_with_a_corpus_line(corpus, data):
    lines = set(corpus_lines(corpus))
    assert 5000 < len(data.train) < 20000
    for example in data.train + data.held_out:
        assert example["answer"] in lines
        assert is_on_topic(example["answer"], example["topic"])
        assert LINE_CHARS[0] <= len(example["answer"]) <= LINE_CHARS[1]
    assert {e["prompt"] for e in data.train} == {p.format(t) for p in TRAIN_PHRASINGS
                                                 for t in TOPICS}
    assert len(data.prompts) == len(TOPICS) * len(HELD_OUT_PHRASINGS)


@pytest.mark.parametrize("kwargs, error", [({"held_out_fraction": 1.0}, "held_out_fraction"),
                                           ({"phrasings_per_line": 0}, "phrasings_per_line")])
def test_bad_data_settings_are_one_clear_sentence(corpus, kwargs, error):
    with pytest.raises(ValueError, match=error):
        make_sft_data(corpus, **kwargs)


# ----------------------------------------------------------------------------- batches

def test_batches_carry_loss_only_on_answers(tok, data):
    examples = data.train[:3]
    expected = []  # each example's (x, y), worked out from the template
    for example in examples:
        ids, mask = render(conversation(example), tok)
        expected.append((ids[:-1], [t if keep else IGNORE_INDEX
                                    for t, keep in zip(ids[1:], mask[1:])]))
        learned = [t for t in expected[-1][1] if t != IGNORE_INDEX]
        assert learned == tok.encode(example["answer"]) + [tok.special_tokens["<|end|>"]]
    x, y = SFTDataset(examples, tok).random_batch(16, 128, torch.Generator().manual_seed(0))
    assert x.shape == y.shape and x.dtype == y.dtype == torch.long
    assert x.size(1) == max(len(e[0]) for e in expected)  # padded to the longest drawn
    drawn = set()
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        k = next(k for k, (ex, _) in enumerate(expected) if row_x[:len(ex)] == ex)
        n = len(expected[k][0])
        assert row_y[:n] == expected[k][1]
        assert row_y[n:] == [IGNORE_INDEX] * (x.size(1) - n)  # padding carries no loss
        drawn.add(k)
    assert drawn == {0, 1, 2}


def test_batches_are_drawn_from_the_generator(tok, data):
    dataset = SFTDataset(data.train[:100], tok)
    first = dataset.random_batch(4, 128, torch.Generator().manual_seed(3))
    again = dataset.random_batch(4, 128, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_conversations_longer_than_the_block_are_refused(tok, data):
    dataset = SFTDataset(data.train[:10], tok)
    with pytest.raises(ValueError, match="more than block_size=16"):
        dataset.random_batch(2, 16, torch.Generator())
    with pytest.raises(ValueError, match="at least one example"):
        SFTDataset([], tok)


# ----------------------------------------------------------------------------- finetuning

def tiny_run(**overrides) -> TrainConfig:
    settings = dict(max_steps=40, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=4,
                    eval_interval=20, eval_batches=4, device="cpu", progress=False)
    return TrainConfig(**{**settings, **overrides})


def test_finetuning_lowers_the_masked_loss_and_leaves_the_base_alone(tok, data, tmp_path):
    base = tiny_base(tok)
    before = [p.detach().clone() for p in base.parameters()]
    path = tmp_path / "sft.pt"
    model, history = sft(base, tiny_run(checkpoint_path=path), data, tokenizer=tok)
    assert history[-1]["val_loss"] < history[0]["val_loss"] - 0.5
    assert all(torch.equal(p, b) for p, b in zip(base.parameters(), before))
    saved = load_checkpoint(path)
    assert saved.state["stage"] == "sft" and saved.state["step"] == 40
    assert all(torch.equal(p, q) for p, q in zip(saved.model.parameters(), model.parameters()))


def test_a_finetuned_checkpoint_can_be_trained_further(tok, data, tmp_path):
    path = tmp_path / "sft.pt"
    with pytest.raises(ValueError, match="needs the base model's tokenizer"):
        sft(tiny_base(tok), tiny_run(), data)
    sft(tiny_base(tok), tiny_run(max_steps=20, checkpoint_path=path), data, tokenizer=tok)
    sft(load_checkpoint(path), tiny_run(max_steps=30, checkpoint_path=path, resume=True), data)
    saved = load_checkpoint(path)
    assert saved.state["stage"] == "sft"
    assert [row["step"] for row in saved.state["history"]] == list(range(31))


def test_the_task_fits_the_quick_models_context(tok, data):
    block = artifacts.base_recipe("quick")[0].block_size
    longest = SFTDataset(data.train + data.held_out, tok).inputs.size(1) + 1
    assert longest <= block
    # every evaluation prompt leaves room for a 100-token answer, more than any line needs
    prompts = data.prompts + data.unseen_prompts
    assert max(len(prompt_ids([{"role": "user", "content": p["prompt"]}], tok))
               for p in prompts) + 100 <= block
    assert sft_recipe("quick").block_size is None  # the model's whole context


# ----------------------------------------------------------------------------- metrics

def test_answers_and_their_summary(tok, data):
    model = tiny_base(tok)
    prompts = data.prompts[:5]
    rows = answer_prompts(model, tok, prompts, samples=3, max_new_tokens=20, progress=False)
    assert len(rows) == 15 and [r["prompt"] for r in rows[:3]] == [prompts[0]["prompt"]] * 3
    assert rows == answer_prompts(model, tok, prompts, samples=3, max_new_tokens=20,
                                  progress=False)  # the seed fixes the answers
    for row in rows:
        assert row["length"] == len(row["answer"]) <= 20
        assert row["on_topic"] == is_on_topic(row["answer"], row["topic"])
    summary = summarize(rows)
    assert summary["n"] == 15 and summary["prompts"] == 5
    assert summary["mean_length"] == pytest.approx(sum(r["length"] for r in rows) / 15)
    assert summary["ended"] == pytest.approx(sum(r["ended"] for r in rows) / 15)


def test_clustered_standard_error_by_hand():
    # cluster means 1, 0.5 and 0: their standard deviation is 0.5, over sqrt(3) clusters
    values, clusters = [1, 1, 1, 0, 0, 0], ["a", "a", "b", "b", "c", "c"]
    assert clustered_se(values, clusters) == pytest.approx(0.5 / math.sqrt(3))
    assert math.isnan(clustered_se([1, 0], ["a", "a"]))
    with pytest.raises(ValueError, match="no answers"):
        summarize([])


# ----------------------------------------------------------------------------- the commands

def run_cli(*args, stdin=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "minillm", *map(str, args)], input=stdin,
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_sft_and_chat_commands_on_a_tiny_model(tok, tmp_path):
    base_path, out = tmp_path / "base.pt", tmp_path / "sft.pt"
    save_checkpoint(base_path, tiny_base(tok), tok)
    result = run_cli("sft", "--base", base_path, "--out", out, "--steps", "30",
                     "--batch-size", "8", "--eval-samples", "1", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("SFTData(train=9410, held_out=506, prompts=72")
    assert lines[1].startswith("step 30: val loss")
    assert lines[2] == "Answers to 72 held-out prompts x 1 (n=72):"
    assert [line.split()[0] for line in lines[-2:]] == ["base", "sft"]
    assert load_checkpoint(out).state["stage"] == "sft"

    chat = run_cli("chat", out, "--max-new-tokens", "20", stdin="Speak of love.\n\n<|end|>\n")
    assert chat.returncode == 0, chat.stderr
    assert "is an assistant (sft)" in chat.stdout
    answers = [part for part in chat.stdout.split("you> ") if part.startswith("model> ")]
    assert len(answers) == 1
    assert "error: The character '<' is not in this character-level vocabulary." in chat.stdout

    base_chat = run_cli("chat", base_path, "--max-new-tokens", "20", stdin="Speak of love.\n")
    assert base_chat.returncode == 0, base_chat.stderr
    assert "is a base model" in base_chat.stdout and "model> ..." in base_chat.stdout


def test_chat_errors_are_one_line(tmp_path):
    result = run_cli("chat", tmp_path / "missing.pt")
    assert result.returncode != 0
    assert result.stderr.strip() == f"error: No checkpoint at {tmp_path / 'missing.pt'}."


# ----------------------------------------------------------------------------- the real thing

def z_score(sft_summary: dict, base_summary: dict, metric: str, rate: bool = True) -> float:
    """The difference of a metric between two models in standard errors.

    The standard error combines the two models' errors clustered by prompt (treating the two
    samples as independent ignores that they share prompts, which is conservative here). For a
    rate it is at least the pooled two-proportion standard error, so that a rate of exactly 0
    or 1 (whose clustered error is 0) does not make any difference look infinitely sure.
    """
    se = math.hypot(sft_summary[metric + "_se"], base_summary[metric + "_se"])
    if rate:
        n1, n2 = sft_summary["n"], base_summary["n"]
        pooled = (sft_summary[metric] * n1 + base_summary[metric] * n2) / (n1 + n2)
        se = max(se, math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2)))
    return (sft_summary[metric] - base_summary[metric]) / se


@pytest.mark.slow
def test_finetuning_makes_an_assistant_that_beats_the_base(data):
    # The lesson artifacts themselves (trained and cached under MINILLM_HOME if missing), so the
    # lessons that run after the tests reuse them instead of training them again.
    base, assistant = artifacts.base_model("quick"), artifacts.sft_model("quick")
    measured = {}
    for name, model in (("base", base.model), ("sft", assistant.model)):
        rows = answer_prompts(model, base.tokenizer, data.prompts, samples=4, progress=False)
        measured[name] = summarize(rows)
    b, s = measured["base"], measured["sft"]
    report = (f"n={s['n']} answers to {s['prompts']} held-out prompts: "
              + "; ".join(f"{m} {b[m]:.3f} -> {s[m]:.3f}"
                          for m in ("on_topic", "ended", "mean_length", "sensible_length")))
    assert s["n"] == b["n"] == 288, report
    # each improvement at least 4 standard errors (a 1-in-30,000 fluke), and large in itself
    assert z_score(s, b, "on_topic") > 4 and s["on_topic"] - b["on_topic"] > 0.15, report
    assert z_score(s, b, "ended") > 4 and s["ended"] > 0.9, report
    assert z_score(s, b, "sensible_length") > 4 and s["sensible_length"] > 0.9, report
    assert z_score(s, b, "mean_length", rate=False) < -4, report
