"""Reward modeling: a network that scores answers the way a person would rank them.

A person can rarely write the ideal answer, but can almost always say which of two answers is
better. So the third stage collects *comparisons*: the SFT model answers each prompt several
times, a labeler picks the better answer of each pair, and a reward model (RM) learns a score
r(prompt, answer) that ranks the answers as the labeler did. The Bradley-Terry model turns
scores into preferences,

    P(a is preferred to b) = sigmoid(r(a) - r(b)),

and the RM is trained to make the labels likely: its loss is -log sigmoid(r(chosen) -
r(rejected)), averaged over the labeled pairs.

The labeler and the gold reward it follows are simulated (``minillm.world``), so that every
claim can be checked; how well the RM agrees with them is measured in ``minillm.evaluate``.
The RM is the GPT of lesson 02 with a scalar head, trained by the engine of lesson 03.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from minillm.chat import END, chat_ids, prompt_ids
from minillm.checkpoint import REWARD, Checkpoint, load_checkpoint, model_and_tokenizer
from minillm.files import atomic_write
from minillm.model import GPT, GPTConfig
from minillm.policy import answer_prompts
from minillm.train import TrainConfig, train
from minillm.validate import require, require_positive_numbers
from minillm.world import Comparisons, compare_all_pairs, gold_reward, preference_prompts

# ----------------------------------------------------------------------------- the data

@dataclass
class PreferenceConfig:
    """How the comparisons are made (``make_preference_data``)."""

    samples_per_prompt: int = 32  # answers sampled per prompt; all their pairs are compared
    agreement: float = 0.8  # the labeler's chance of siding with the gold reward
    temperature: float = 1.0  # of the sampling: the SFT model as it is, mistakes included
    seed: int = 0  # fixes the answers and the labels

    def __post_init__(self):
        require(self, "samples_per_prompt",
                isinstance(self.samples_per_prompt, int) and self.samples_per_prompt >= 2,
                "an integer >= 2 (one pair)")
        require(self, "agreement", 0.5 <= self.agreement <= 1,
                "from 0.5 (coin flips) to 1 (no noise)")
        require_positive_numbers(self, "temperature")
        require(self, "seed", isinstance(self.seed, int), "an integer")


@dataclass
class PreferenceData:
    """Comparisons to train the RM on, and comparisons on held-out prompts to measure it with
    (no held-out prompt, answer or pair is ever trained on)."""

    train: Comparisons
    held_out: Comparisons

    def save(self, path) -> None:
        """Write the data to ``path`` as JSON (atomically)."""
        payload = {name: {"responses": part.responses, "pairs": part.pairs}
                   for name, part in (("train", self.train), ("held_out", self.held_out))}
        with atomic_write(path, "w", encoding="utf-8") as f:
            json.dump(payload, f)

    @classmethod
    def load(cls, path) -> PreferenceData:
        """Read data written by ``save``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No preference data at {path}.")
        payload = json.loads(path.read_text(encoding="utf-8"))
        return cls(*(Comparisons(payload[name]["responses"],
                                 [tuple(pair) for pair in payload[name]["pairs"]])
                     for name in ("train", "held_out")))

    def __repr__(self) -> str:
        return f"PreferenceData(train={self.train}, held_out={self.held_out})"


def make_preference_data(model: GPT, tokenizer, config: PreferenceConfig | None = None,
                         progress: bool = True) -> PreferenceData:
    """Sample answers to every prompt of ``preference_prompts`` from ``model`` (the SFT
    assistant) and have the labeler compare all pairs of answers to the same prompt.

    k answers give k(k-1)/2 comparisons per prompt for the cost of k samples, and the RM learns
    them all from one forward pass of each answer (``PreferenceDataset``). The same config
    gives the same data.
    """
    config = config or PreferenceConfig()
    rng = random.Random(config.seed)
    return PreferenceData(*(compare_answers(model, tokenizer, prompts, config, config.seed + k,
                                            rng, progress)
                            for k, prompts in enumerate(preference_prompts())))


def compare_answers(model: GPT, tokenizer, prompts: list[dict], config: PreferenceConfig,
                    seed: int, rng: random.Random, progress: bool = True) -> Comparisons:
    """``config.samples_per_prompt`` answers of ``model`` to each of ``prompts`` (sampled from
    ``seed``), each scored by the gold reward, and every pair of answers to the same prompt
    compared by the labeler (drawing from ``rng``): one split of ``make_preference_data``."""
    rows = answer_prompts(model, tokenizer, prompts, config.samples_per_prompt,
                          config.temperature, seed=seed, batch_size=256, progress=progress)
    responses = [{"topic": r["topic"], "prompt": r["prompt"], "answer": r["answer"],
                  "ended": r["ended"], "gold": gold_reward(r["topic"], r["answer"], r["ended"])}
                 for r in rows]
    return compare_all_pairs(responses, config.agreement, rng)


# ----------------------------------------------------------------------------- batches

def encode_responses(responses: list[dict], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Each answer in its conversation, as the RM reads it: ids and response mask, (N, T) each.

    The ids are the chat template's (lesson 04), right-padded with 0; an answer that did not end
    its turn has no closing ``<|end|>``. The mask is 1 on the assistant's turn, the tokens the
    reward head reads: its ``<|assistant|>`` token (so that even an empty answer has a state),
    the answer and its ``<|end|>``. Causal attention never looks ahead, so the padding after a
    conversation changes nothing before it.
    """
    end = chat_ids(tokenizer)[END]
    rows = []
    for r in responses:
        prompt = prompt_ids([{"role": "user", "content": r["prompt"]}], tokenizer)
        turn = tokenizer.encode(r["answer"]) + ([end] if r["ended"] else [])
        rows.append((prompt + turn, [0] * (len(prompt) - 1) + [1] * (len(turn) + 1)))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for k, (row_ids, row_mask) in enumerate(rows):
        ids[k, :len(row_ids)] = torch.tensor(row_ids)
        mask[k, :len(row_mask)] = torch.tensor(row_mask)
    return ids, mask


class PreferenceDataset:
    """Comparisons grouped by prompt, for ``minillm.train`` to draw batches from.

    A batch is ``batch_size`` prompts (drawn at random, with replacement) with all k of their
    answers: inputs x (B, k, 2, T), each answer's ids and response mask (``encode_responses``),
    and targets y (B, k, k), where y[b, i, j] = 1 if the labeler preferred answer i to answer j
    of prompt b. As in InstructGPT, every comparison among a prompt's k answers is learned from
    one forward pass of each answer, instead of two passes per comparison. (The engine's
    tokens_per_s counts block_size tokens per prompt, not what the batch holds.)
    """

    def __init__(self, comparisons: Comparisons, tokenizer):
        groups: dict[str, list[int]] = {}
        for k, response in enumerate(comparisons.responses):
            groups.setdefault(response["prompt"], []).append(k)
        sizes = {len(group) for group in groups.values()}
        if len(sizes) != 1:
            raise ValueError("Every prompt needs the same number of answers.")
        n_groups, k_answers = len(groups), sizes.pop()
        order = [k for group in groups.values() for k in group]
        slot = {k: divmod(n, k_answers) for n, k in enumerate(order)}  # answer -> (group, i)
        ids, mask = encode_responses([comparisons.responses[k] for k in order], tokenizer)
        self.inputs = torch.stack((ids, mask), dim=1).view(n_groups, k_answers, 2, -1)
        # each group's longest conversation, in tokens (its answer ends it, so its mask does)
        lengths = mask.size(1) - mask.flip(-1).argmax(-1)
        self.lengths = lengths.view(n_groups, k_answers).amax(-1)
        self.targets = torch.zeros(n_groups, k_answers, k_answers)
        for chosen, rejected in comparisons.pairs:
            (group, i), (other, j) = slot[chosen], slot[rejected]
            if group != other:
                raise ValueError("A pair compares answers to two different prompts.")
            self.targets[group, i, j] = 1.0

    def __len__(self) -> int:
        return len(self.inputs)

    def random_batch(self, batch_size: int, block_size: int, generator: torch.Generator,
                     device="cpu"):
        """(x, y) for ``batch_size`` prompts, cut to the longest conversation among them."""
        if self.inputs.size(-1) > block_size:
            raise ValueError(f"The longest conversation has {self.inputs.size(-1)} tokens, more "
                             f"than block_size={block_size}.")
        rows = torch.randint(len(self), (batch_size,), generator=generator)
        width = int(self.lengths[rows].max())
        return self.inputs[rows, ..., :width].to(device), self.targets[rows].to(device)


# ----------------------------------------------------------------------------- the model

def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """The mean of -log sigmoid(r_chosen - r_rejected) over pairs: the negative log-likelihood
    of the labels under the Bradley-Terry model (``logsigmoid`` stays finite for any margin)."""
    return -F.logsigmoid(chosen - rejected).mean()


def last_state(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The state of each row's last masked token, (N, T, C) and (N, T) -> (N, C): under causal
    attention, the one state that has seen the whole conversation."""
    positions = torch.arange(mask.size(1), device=mask.device)
    last = (positions * mask.bool()).argmax(dim=1)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


def mean_state(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of each row's masked states: the answer as a whole."""
    weights = mask[..., None].to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1)


def max_state(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The elementwise max of each row's masked states: is a feature present anywhere in the
    answer (a topic word, a misspelling)?"""
    return hidden.masked_fill(~mask.bool()[..., None], float("-inf")).amax(1)


class RewardModel(nn.Module):
    """A GPT backbone and a linear head that maps an answer's hidden states to one number.

    The head reads the states of the assistant's turn (``encode_responses``), pooled three
    ways: the last one, their mean and their elementwise max. On this task the three together
    ranked held-out answers better than the last state alone, the usual choice for large models
    (README, "How the recipes were chosen"). ``config`` is the backbone's, so the engine
    checkpoints and resumes a reward model like any GPT.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.backbone = GPT(config)
        self.head = nn.Linear(3 * config.n_embd, 1)
        # Every answer scores 0 at first: no preference until the comparisons teach one.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_gpt(cls, gpt: GPT) -> RewardModel:
        """A reward model whose backbone starts as a copy of ``gpt`` (base or SFT model)."""
        model = cls(gpt.config)
        model.backbone.load_state_dict(gpt.state_dict())
        return model.to(next(gpt.parameters()).device)

    def flops_per_token(self) -> int:
        return self.backbone.flops_per_token()

    def features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """What the head reads of each conversation: the answer's states pooled three ways,
        ids and response mask (N, T) -> (N, 3C) (a judge of two answers reads them too)."""
        hidden = self.backbone.forward_hidden(ids)
        return torch.cat((last_state(hidden, mask), mean_state(hidden, mask),
                          max_state(hidden, mask)), dim=-1)

    def score(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The reward of each conversation: ids and response mask (N, T) -> (N,)."""
        return self.head(self.features(ids, mask)).squeeze(-1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """The scores (B, k) of a ``PreferenceDataset`` batch, and the Bradley-Terry loss over
        its labeled pairs if the preferences y (B, k, k) are given."""
        B, k, _, T = x.shape
        scores = self.score(x[:, :, 0].reshape(B * k, T), x[:, :, 1].reshape(B * k, T))
        scores = scores.view(B, k)
        if y is None:
            return scores, None
        group, chosen, rejected = y.nonzero(as_tuple=True)  # the labeled pairs
        return scores, bradley_terry_loss(scores[group, chosen], scores[group, rejected])


# ----------------------------------------------------------------------------- training

def train_reward_model(init, data: PreferenceData, config: TrainConfig,
                       tokenizer=None) -> tuple[RewardModel, list[dict]]:
    """Train a reward model whose backbone starts from ``init`` on ``data.train`` (the held-out
    loss is measured on ``data.held_out``); returns (model, history).

    ``init`` is a GPT, a ``Checkpoint`` or a checkpoint's path; a checkpoint brings its
    tokenizer, a bare GPT needs ``tokenizer``. ``config`` is a training run
    (``minillm.recipes.reward_recipe()`` has the lessons'). With ``config.checkpoint_path`` the
    model is saved (and resumable) like any training run, marked as a reward model;
    ``load_reward_model`` reads it back.
    """
    init, tokenizer = model_and_tokenizer(init, tokenizer,
                                          "train_reward_model() needs the tokenizer")
    model = RewardModel.from_gpt(copy.deepcopy(init))
    history = train(model, PreferenceDataset(data.train, tokenizer),
                    PreferenceDataset(data.held_out, tokenizer), config, tokenizer=tokenizer,
                    stage=REWARD)
    return model, history


def load_reward_model(path, device: str = "cpu") -> Checkpoint:
    """A reward model saved by ``train_reward_model`` (in eval mode, with its tokenizer)."""
    return load_checkpoint(path, device, model_class=RewardModel)


# ----------------------------------------------------------------------------- scoring

@torch.no_grad()
def read_responses(model: RewardModel, tokenizer, responses: list[dict], read=None,
                   batch_size: int = 256) -> torch.Tensor:
    """``read(ids, mask)`` of each answer (dicts with "prompt", "answer", "ended"), in batches,
    the model in eval mode: its scores by default (N,), or e.g. ``model.features`` (N, 3C)."""
    read = read or model.score
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(responses), batch_size):
            ids, mask = encode_responses(responses[start:start + batch_size], tokenizer)
            out.append(read(ids.to(device), mask.to(device)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def score_responses(model: RewardModel, tokenizer, responses: list[dict],
                    batch_size: int = 256) -> list[float]:
    """The reward model's score of each answer (dicts with "prompt", "answer", "ended")."""
    return read_responses(model, tokenizer, responses, batch_size=batch_size).tolist()
