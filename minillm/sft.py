"""Supervised finetuning (SFT): from a model that continues documents to one that answers.

The task, made from the corpus by code (no download, deterministic from a seed): the user
names a topic, and the assistant answers with a line of Shakespeare about it, then ends its
turn::

    <|user|>Speak of love.<|end|><|assistant|>My love as deep; the more I give to thee,<|end|>

The answers are real lines of the play texts that contain the topic word (``is_on_topic``), so
the base model already knows how to write them; finetuning only has to teach it the format (answer
after ``<|assistant|>``, stop with ``<|end|>``) and to pick a line that fits the topic.

What is held out, to measure what the model learned rather than what it memorised:

- a tenth of the lines (no held-out line is ever trained on): the validation loss;
- the prompt phrasings ``HELD_OUT_PHRASINGS``: every evaluation prompt is new to the model;
- ``UNSEEN_TOPICS``, words that are never a topic in training. DESIGN.md's probe found that a
  tiny character-level model does not learn to copy an unseen topic word from the prompt into
  its answer: these prompts show that limit honestly.

Training is the engine of lesson 03 unchanged: ``SFTDataset`` has the ``random_batch`` method
that ``minillm.train`` draws batches from, and its targets are ``IGNORE_INDEX`` wherever no loss
is wanted, so the model's cross-entropy is the masked loss.
"""

from __future__ import annotations

import copy
import math
import os
import random
import re
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from minillm.chat import render, respond
from minillm.checkpoint import load_checkpoint, model_and_tokenizer, save_checkpoint
from minillm.data import load_shakespeare
from minillm.model import GPT, IGNORE_INDEX
from minillm.settings import profile
from minillm.train import TrainConfig, train

# Frequent nouns of the corpus with a clear meaning: each has 60 to 500 lines about it.
TOPICS = ("love", "death", "king", "queen", "heart", "blood", "night", "crown", "god", "heaven",
          "honour", "soul", "fear", "father", "mother", "son", "world", "life", "hand", "peace",
          "war", "grief", "sleep", "earth")
# Never a topic in training (they may still occur inside training answers).
UNSEEN_TOPICS = ("sea", "horse", "fire", "sun", "sword", "gold", "moon", "music")
TRAIN_PHRASINGS = ("Speak of {}.", "Tell me of {}.", "What say you of {}?", "A line on {}.",
                   "Say something of {}.", "Give me a verse of {}.", "Of {}, I pray.",
                   "Let me hear of {}.")
# Short enough that every evaluation prompt leaves room for a 100-character answer in the
# quick model's context of 128 tokens.
HELD_OUT_PHRASINGS = ("Pray, speak of {}.", "What of {}?", "Talk to me of {}.")
# The shortest and longest lines used as answers, in characters (no line of tiny Shakespeare
# is longer than 63): also the range of a sensible answer's length.
LINE_CHARS = (20, 80)


# ----------------------------------------------------------------------------- topics

def topic_forms(topic: str) -> set[str]:
    """The words that count as naming ``topic``: the word itself, its plural and possessive, and
    the usual verb and adjective endings, Shakespeare's elided "'d" and "'st" included.

    As in English spelling, a final "e" drops before an ending that starts with a vowel or an
    apostrophe: ``topic_forms("love")`` is love, loves, love's, loves', lovely, loveful,
    loveless, loved, lov'd, loving, lover, lovers, lovest, lov'st and loveth. Prefixed and
    compound words (beloved, kingdom) and irregular plurals (lives) do not count: the rule
    stays simple enough to check by eye.
    """
    stem = topic[:-1] if topic.endswith("e") else topic
    return ({topic + end for end in ("", "s", "'s", "s'", "ly", "ful", "less")}
            | {stem + end for end in ("ed", "'d", "ing", "er", "ers", "est", "'st", "eth")})


def words(text: str) -> list[str]:
    """The lowercased words of ``text``: letters with inner apostrophes ("lov'd", "king's")."""
    return re.findall(r"[a-z]+(?:'[a-z]+)*", text.lower())


def is_on_topic(text: str, topic: str) -> bool:
    """Whether ``text`` names ``topic``: one of its words is in ``topic_forms(topic)``."""
    forms = topic_forms(topic)
    return any(word in forms for word in words(text))


# ----------------------------------------------------------------------------- the data

def corpus_lines(text: str, min_chars: int = LINE_CHARS[0],
                 max_chars: int = LINE_CHARS[1]) -> list[str]:
    """The distinct spoken lines of the corpus of ``min_chars`` to ``max_chars`` characters, in
    order of first appearance. Speakers' names (the first line of every speech) are left out."""
    lines, seen = [], set()
    previous = ""
    for line in text.split("\n"):
        is_name = previous == ""  # a speech starts after a blank line with "NAME:"
        previous = line
        line = line.strip()
        if not is_name and min_chars <= len(line) <= max_chars and line not in seen:
            seen.add(line)
            lines.append(line)
    return lines


@dataclass
class SFTData:
    """The SFT task's examples; each is a dict with "topic", "prompt" and (for answers) "answer".

    ``train``: the training conversations. ``held_out``: lines never trained on, asked with the
    held-out phrasings (the validation loss). ``prompts``: every held-out phrasing of every
    training topic, to answer and measure. ``unseen_prompts``: the same for ``UNSEEN_TOPICS``.
    """

    train: list[dict]
    held_out: list[dict]
    prompts: list[dict]
    unseen_prompts: list[dict]

    def __repr__(self) -> str:
        return (f"SFTData(train={len(self.train)}, held_out={len(self.held_out)}, "
                f"prompts={len(self.prompts)}, unseen_prompts={len(self.unseen_prompts)})")


def make_sft_data(text: str | None = None, seed: int = 0, held_out_fraction: float = 0.1,
                  phrasings_per_line: int = 2) -> SFTData:
    """The SFT examples made from ``text`` (default: tiny Shakespeare), the same for a seed.

    Every corpus line that names a training topic is an answer to that topic (a line naming two
    topics answers both). The lines are shuffled and ``held_out_fraction`` of them held out;
    each training line is asked with ``phrasings_per_line`` phrasings drawn from
    ``TRAIN_PHRASINGS``, each held-out line with one of ``HELD_OUT_PHRASINGS``.
    """
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must be between 0 and 1, not {held_out_fraction}.")
    if not 1 <= phrasings_per_line <= len(TRAIN_PHRASINGS):
        raise ValueError(f"phrasings_per_line must be from 1 to {len(TRAIN_PHRASINGS)}.")
    rng = random.Random(seed)
    forms = {topic: topic_forms(topic) for topic in TOPICS}
    lines = []  # (line, the topics it names)
    for line in corpus_lines(text or load_shakespeare()):
        named = set(words(line))
        topics = [topic for topic in TOPICS if named & forms[topic]]
        if topics:
            lines.append((line, topics))
    rng.shuffle(lines)
    n_held_out = round(held_out_fraction * len(lines))
    train_set, held_out = [], []
    for k, (line, topics) in enumerate(lines):
        held = k < n_held_out
        for topic in topics:
            phrasings = ([rng.choice(HELD_OUT_PHRASINGS)] if held
                         else rng.sample(TRAIN_PHRASINGS, phrasings_per_line))
            (held_out if held else train_set).extend(
                {"topic": topic, "prompt": phrasing.format(topic), "answer": line}
                for phrasing in phrasings)

    def prompts(topics):
        return [{"topic": t, "prompt": p.format(t)} for t in topics for p in HELD_OUT_PHRASINGS]

    return SFTData(train_set, held_out, prompts(TOPICS), prompts(UNSEEN_TOPICS))


def conversation(example: dict) -> list[dict]:
    """An example as a two-turn conversation: the prompt, then the answer."""
    return [{"role": "user", "content": example["prompt"]},
            {"role": "assistant", "content": example["answer"]}]


class SFTDataset:
    """Rendered conversations that ``minillm.train`` samples batches from, like a token stream.

    ``random_batch`` draws ``batch_size`` conversations at random (with replacement) and returns
    inputs x and targets y (B, T): each conversation's ids without the last token, and the same
    ids shifted left by one, with ``IGNORE_INDEX`` wherever the loss mask is off and on padding.
    Rows are right-padded to the longest conversation of the batch: causal attention never
    looks ahead, so padding after a conversation changes none of its logits and needs no
    attention mask. (The engine's tokens_per_s counts block_size tokens per row, an upper bound
    here.)
    """

    def __init__(self, examples: list[dict], tokenizer):
        if not examples:
            raise ValueError("An SFTDataset needs at least one example.")
        rendered = [render(conversation(e), tokenizer) for e in examples]
        self.lengths = torch.tensor([len(ids) - 1 for ids, _ in rendered])  # tokens per row
        width = int(self.lengths.max())
        self.inputs = torch.zeros(len(rendered), width, dtype=torch.long)
        self.targets = torch.full((len(rendered), width), IGNORE_INDEX, dtype=torch.long)
        for row, (ids, mask) in enumerate(rendered):
            ids, mask = torch.tensor(ids), torch.tensor(mask)
            n = len(ids) - 1
            self.inputs[row, :n] = ids[:-1]
            # Token t + 1 is the target at position t; it counts only if the mask keeps it.
            self.targets[row, :n] = ids[1:].masked_fill(~mask[1:], IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.inputs)

    def random_batch(self, batch_size: int, block_size: int, generator: torch.Generator,
                     device="cpu"):
        """(x, y), each (batch_size, T), with T the longest of the chosen rows."""
        if self.inputs.size(1) > block_size:
            raise ValueError(f"The longest conversation has {self.inputs.size(1) + 1} tokens, "
                             f"more than block_size={block_size} + 1; drop or shorten it.")
        rows = torch.randint(len(self), (batch_size,), generator=generator)
        width = int(self.lengths[rows].max())
        return (self.inputs[rows, :width].to(device), self.targets[rows, :width].to(device))


# ----------------------------------------------------------------------------- finetuning

def sft_recipe(profile_name: str | None = None) -> TrainConfig:
    """The finetuning run of a profile.

    quick: 600 steps of 32 conversations, about two passes over the training set (~2 minutes on
    a 2-core CPU). On that CPU, 300 steps of 16 taught the format (every answer ended its turn)
    but not the topics (5% on topic), and at a fixed budget lr 2e-3 beat 1e-3; more steps kept
    helping. full: for the nanoGPT-sized base on a GPU (not tuned).
    """
    if (profile_name or profile()) == "quick":
        return TrainConfig(max_steps=600, batch_size=32, lr=2e-3, min_lr=2e-4, warmup_steps=30,
                           eval_interval=100, eval_batches=10)
    return TrainConfig(max_steps=1500, batch_size=64, lr=3e-4, min_lr=3e-5, warmup_steps=100,
                       eval_interval=250, eval_batches=20)


def sft(base, config: TrainConfig | None = None, data: SFTData | None = None,
        tokenizer=None) -> tuple[GPT, list[dict]]:
    """Finetune a copy of ``base`` on the SFT task; return (model, history).

    ``base`` is a GPT, a ``Checkpoint`` or a checkpoint's path; a checkpoint brings its tokenizer,
    a bare GPT needs ``tokenizer``. The base itself is left untouched, so both can be compared.
    ``config`` defaults to ``sft_recipe()``, ``data`` to ``make_sft_data()``. With
    ``config.checkpoint_path`` the result is saved (and resumable) like any training run, and
    marked ``stage="sft"`` so that ``python -m minillm chat`` knows it is an assistant.
    """
    base, tokenizer = model_and_tokenizer(base, tokenizer, "sft() needs the base model's tokenizer")
    config = config or sft_recipe()
    data = data or make_sft_data()
    model = copy.deepcopy(base)
    history = train(model, SFTDataset(data.train, tokenizer), SFTDataset(data.held_out, tokenizer),
                    config, tokenizer=tokenizer)
    if config.checkpoint_path is not None and int(os.environ.get("RANK", "0")) == 0:
        saved = load_checkpoint(config.checkpoint_path)
        save_checkpoint(config.checkpoint_path, saved.model, saved.tokenizer,
                        **{**saved.state, "stage": "sft"})
    return model, history


# ----------------------------------------------------------------------------- measuring

def answer_prompts(model: GPT, tokenizer, prompts: list[dict], samples: int = 4,
                   temperature: float = 0.8, max_new_tokens: int = 100, seed: int = 0,
                   batch_size: int = 128, progress: bool = True) -> list[dict]:
    """Sample ``samples`` answers to each prompt; one row per answer.

    Each row is the prompt's dict plus "answer" (the text), "ended" (closed with ``<|end|>``),
    "on_topic" (``is_on_topic``) and "length" (characters). An answer that never ends is cut
    at ``max_new_tokens``. The same seed gives the same answers.
    """
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    asked = [p for p in prompts for _ in range(samples)]
    rows = []
    for start in tqdm(range(0, len(asked), batch_size), desc="answering", mininterval=1.0,
                      disable=not progress):
        chunk = asked[start:start + batch_size]
        texts, ended = respond(model, tokenizer, [p["prompt"] for p in chunk], max_new_tokens,
                               temperature, generator=generator)
        rows += [{**p, "answer": text, "ended": end, "on_topic": is_on_topic(text, p["topic"]),
                  "length": len(text)} for p, text, end in zip(chunk, texts, ended)]
    return rows


def summarize(rows: list[dict]) -> dict:
    """The metrics of ``answer_prompts`` rows: on-topic rate, end-of-turn rate, mean length in
    characters and the share of answers of a sensible length (``LINE_CHARS``, the range of
    the training answers), each with its standard error ("..._se"), and n, the number of answers.

    Answers to the same prompt are alike, so they are not independent: the standard errors
    treat each prompt as one cluster (the spread of the per-prompt means), which is wider,
    and honest, where the binomial formula would be too narrow. A rate of exactly 0 or 1 has a
    standard error of 0 by this formula; that understates the uncertainty (3/n is a usual 95%
    upper bound on a rate seen as 0 in n tries).
    """
    if not rows:
        raise ValueError("There are no answers to summarize.")
    low, high = LINE_CHARS
    values = {"on_topic": [float(r["on_topic"]) for r in rows],
              "ended": [float(r["ended"]) for r in rows],
              "mean_length": [float(r["length"]) for r in rows],
              "sensible_length": [float(low <= r["length"] <= high) for r in rows]}
    prompts = [r["prompt"] for r in rows]
    summary = {"n": len(rows), "prompts": len(set(prompts))}
    for name, xs in values.items():
        summary[name] = sum(xs) / len(xs)
        summary[name + "_se"] = clustered_se(xs, prompts)
    return summary


def clustered_se(values: list[float], clusters: list) -> float:
    """The standard error of the mean of ``values`` when those sharing a cluster are correlated:
    the standard deviation of the cluster means over the square root of their number (for
    clusters of equal size)."""
    groups: dict = {}
    for value, cluster in zip(values, clusters):
        groups.setdefault(cluster, []).append(value)
    means = [sum(g) / len(g) for g in groups.values()]
    if len(means) < 2:
        return float("nan")
    mean = sum(means) / len(means)
    variance = sum((m - mean) ** 2 for m in means) / (len(means) - 1)
    return math.sqrt(variance / len(means))
