"""A language model as a policy: sampling its answers, and the log-probabilities RL needs.

Lessons 04-07 all ask a model the same thing: answer these prompts (``answer_prompts``,
``rollout``), and say how likely each token of an answer was (``token_logprobs``). PPO and GRPO
(``minillm.ppo``), DPO (``minillm.dpo``) and the held-out comparisons (``minillm.evaluate``)
are built on these pieces, and so is ``Monitor``, which warns when a run learns nothing.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from minillm.chat import END, chat_ids, respond, sample_answers
from minillm.model import GPT, at_least_float32
from minillm.tools import tool_ids
from minillm.world import is_on_topic


def answer_prompts(model: GPT, tokenizer, prompts: list[dict], samples: int = 4,
                   temperature: float = 0.8, max_new_tokens: int = 100, seed: int = 0,
                   batch_size: int = 128, progress: bool = True, measure=None) -> list[dict]:
    """Sample ``samples`` answers to each prompt (dicts with "topic" and "prompt"); one row per
    answer.

    Each row is the prompt's dict plus "answer" (the text), "ended" (closed with ``<|end|>``),
    "on_topic" (``is_on_topic``) and "length" (characters); or, with ``measure``, what
    ``measure(prompt, answer)`` returns (a dict) in place of those two. An answer that never ends
    is cut at ``max_new_tokens``. The same seed gives the same answers.
    """
    measure = measure or _topic_and_length
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    asked = [p for p in prompts for _ in range(samples)]
    rows = []
    for start in tqdm(range(0, len(asked), batch_size), desc="answering", mininterval=1.0,
                      disable=not progress):
        chunk = asked[start:start + batch_size]
        texts, ended = respond(model, tokenizer, [p["prompt"] for p in chunk], max_new_tokens,
                               temperature, generator=generator)
        rows += [{**p, "answer": text, "ended": end, **measure(p, text)}
                 for p, text, end in zip(chunk, texts, ended)]
    return rows


def _topic_and_length(prompt: dict, answer: str) -> dict:
    return {"on_topic": is_on_topic(answer, prompt["topic"]), "length": len(answer)}


def on_device(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """``model`` itself if it is on ``device``, else a copy moved there: a trainer that only reads
    a model (a reward model, a reference) never moves the caller's."""
    if next(model.parameters()).device == torch.device(device):
        return model
    return copy.deepcopy(model).to(device)


# ----------------------------------------------------------------------------- log-probabilities

def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` where ``mask`` is 1 (every answer token counts once)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids[:, t + 1] | ids[:, :t + 1]) for each t: (B, T - 1) from logits (B, T, V)."""
    logp = torch.log_softmax(at_least_float32(logits[:, :-1]), dim=-1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """The entropy (nats) of each next-token distribution but the last: (B, T - 1)."""
    logp = torch.log_softmax(at_least_float32(logits[:, :-1]), dim=-1)
    return -(logp.exp() * logp).sum(-1)


# A forward pass holds batch x tokens x vocabulary logits: few with the character model's 69
# tokens, but 50,260 per position with GPT-2's, so that 256 answers of 110 tokens would need
# 5.7 GB of float32 logits (and as much again for their log-softmax). Passes that read many
# answers at once take at most this many logits (256 MiB of float32) each: on a CPU a
# log-softmax over 1 GiB of logits took 6x as long per logit as over a quarter of it.
LOGITS_PER_PASS = 2 ** 26


def rows_per_pass(model: GPT, width: int, most: int | None = None) -> int:
    """How many sequences of ``width`` tokens one forward pass of ``model`` may take, keeping
    its logits within ``LOGITS_PER_PASS`` (at least 1, and at most ``most`` if given)."""
    rows = max(1, LOGITS_PER_PASS // (width * model.config.vocab_size))
    return rows if most is None else min(rows, most)


# ----------------------------------------------------------------------------- rollouts

@dataclass
class Rollout:
    """A batch of sampled answers, laid out for one forward pass.

    ``ids`` (B, T): each prompt left-padded, its answer right after it, then padding;
    ``attention`` (B, T): 1 on prompt and answer tokens; ``actions`` (B, T - 1): 1 where
    ``ids[:, t + 1]`` is an answer token the policy chose (not a tool's result), aligned with
    ``token_logprobs``. ``responses`` are the prompts' dicts with "answer" (the text, without
    its special token) and "ended" added.
    """

    ids: torch.Tensor
    attention: torch.Tensor
    actions: torch.Tensor
    responses: list[dict]


@torch.no_grad()
def rollout(policy: GPT, tokenizer, prompts: list[dict], max_new_tokens: int = 100,
            temperature: float = 1.0, generator: torch.Generator | None = None) -> Rollout:
    """Sample one answer to each prompt (dicts with "prompt", e.g. lesson 04's with "topic")
    from ``policy``."""
    forced: list[list[bool]] = []
    rows, answers = sample_answers(policy, tokenizer, [p["prompt"] for p in prompts],
                                   max_new_tokens, temperature, generator=generator,
                                   forced=forced)
    end = chat_ids(tokenizer)[END]
    stops = set(tokenizer.special_tokens.values()) - set(tool_ids(tokenizer).values())
    width, longest = max(map(len, rows)), max(map(len, answers))
    B, T = len(rows), width + longest
    ids = torch.full((B, T), end, dtype=torch.long)
    attention = torch.zeros(B, T, dtype=torch.long)
    actions = torch.zeros(B, T - 1, dtype=torch.long)
    responses = []
    for k, (prompt, row, answer, written) in enumerate(zip(prompts, rows, answers, forced)):
        start = width - len(row)
        ids[k, start:width + len(answer)] = torch.tensor(row + answer)
        attention[k, start:width + len(answer)] = 1
        # A tool's result is not the policy's doing: no action, no gradient.
        actions[k, width - 1:width - 1 + len(answer)] = torch.tensor([not w for w in written])
        stopped = answer[-1] in stops
        responses.append({**prompt, "answer": tokenizer.decode(answer[:-1] if stopped else answer),
                          "ended": stopped and answer[-1] == end})
    device = next(policy.parameters()).device
    return Rollout(ids.to(device), attention.to(device), actions.to(device), responses)


@torch.no_grad()
def sequence_kl(policy: GPT, reference: GPT, batch: Rollout) -> torch.Tensor:
    """Each answer's KL estimate (B,): the sum over its tokens of log pi - log ref. It is exact
    in expectation over answers sampled from ``policy`` at temperature 1 (one answer's estimate
    can be negative). Computed ``rows_per_pass`` answers at a time."""
    kls = []
    step = rows_per_pass(policy, batch.ids.size(1))
    for k in range(0, len(batch.ids), step):
        ids, attention = batch.ids[k:k + step], batch.attention[k:k + step]
        logp = token_logprobs(policy(ids, attention_mask=attention)[0], ids)
        ref = token_logprobs(reference(ids, attention_mask=attention)[0], ids)
        kls.append(((logp - ref) * batch.actions[k:k + step]).sum(1))
    return torch.cat(kls)


@dataclass
class RewardScale:
    """The reward model's mean and standard deviation on the SFT model's answers: rewards are
    reported as ``(score - mean) / std``, standard deviations above the SFT model's average
    answer, so that a KL coefficient means the same whatever the RM's scale."""

    mean: float
    std: float

    @classmethod
    def fit(cls, scores: list[float]) -> RewardScale:
        """The scale of ``scores``, the RM's scores of the SFT model's answers."""
        scores = torch.tensor(scores)
        if len(scores) < 2 or scores.std().item() < 1e-6:
            raise ValueError("The reward model gives the SFT model's answers all the same score, "
                             "so it cannot tell RL which answers are better (is it trained?).")
        return cls(scores.mean().item(), scores.std().item())

    def __call__(self, scores):
        return [(s - self.mean) / self.std for s in scores]


# ----------------------------------------------------------------------------- watching a run

class RLHFWarning(UserWarning):
    """A run that is learning nothing, or something degenerate (see ``Monitor``)."""


class Monitor:
    """Warns (once per kind, ``RLHFWarning``) when a run learns nothing or degenerates, so that
    a flat or broken curve is not silently plotted."""

    def __init__(self, kl_limit: float = 20.0):
        self.kl_limit = kl_limit
        self.said: set[str] = set()

    def warn(self, kind: str, message: str) -> None:
        if kind not in self.said:
            self.said.add(kind)
            warnings.warn(message, RLHFWarning, stacklevel=3)

    def check_rollout(self, step: int, score_spread: float, kl: float, distinct: float) -> None:
        if score_spread < 1e-6:
            self.warn("flat", f"Step {step}: the reward model gave every answer the same score, "
                              f"so there is no signal to learn from (is it trained?).")
        if kl > self.kl_limit:
            self.warn("kl", f"Step {step}: the KL to the reference is {kl:.1f} nats: the policy "
                            f"has run far from the SFT model; raise kl_coef or lower lr.")
        if distinct < 0.25:
            self.warn("collapse", f"Step {step}: only {distinct:.0%} of the answers differ: the "
                                  f"policy has collapsed to a few answers.")

    def check_dpo(self, step: int, losses: list[float]) -> None:
        # One step's loss is noisy, and a small beta moves it slowly: judge 100 steps at once.
        recent = losses[-100:]
        if len(losses) >= 100 and sum(recent) / len(recent) > math.log(2) - 0.002:
            self.warn("ln2", f"Step {step}: the DPO loss sits at ln 2 = 0.693: the policy does "
                             f"not separate chosen from rejected answers (raise lr or beta?).")
