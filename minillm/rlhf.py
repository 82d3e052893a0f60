"""RLHF: tune the assistant to score well with the reward model, without drifting far from it.

The SFT model of lesson 04 (the *policy*) answers prompts; the reward model (RM) of lesson 05
scores the answers; the policy is pushed towards answers that score high. The RM is only a
proxy for what people want (here the labeler's gold reward, which the policy never sees), and
an optimizer finds the proxy's blind spots. So the policy pays for every nat it moves away from
a frozen copy of the SFT model (the *reference*): per token, ``kl_coef * (log pi - log ref)``.

Three ways to do it:

- **PPO** (Schulman et al. 2017; as used for InstructGPT, Ouyang et al. 2022): sample answers
  (*rollouts*), score them, turn score and KL penalty into per-token rewards, estimate how much
  better than expected each token was (*advantages*, by GAE with a learned value head), then
  take a few clipped gradient steps on the same rollouts.
- **GRPO** (Shao et al. 2024, DeepSeekMath): PPO without the value head. Several answers are
  sampled per prompt, and an answer's advantage is how far its reward lies above the mean of
  its prompt's answers, in their standard deviation. Here the KL penalty stays in the reward,
  as for PPO (the paper moves it into the loss). ``PPOConfig(advantages="group")``.
- **DPO** (Rafailov et al. 2023): no sampling and no reward model at all. The policy is trained
  directly on the labeled pairs, so that its log-probability ratio to the reference rises more
  on the chosen answer than on the rejected one. Under the KL-regularized objective that PPO
  optimizes, this is the same optimum, reached by supervised learning.

Rewards are measured in units of the RM's standard deviation on the SFT model's own answers
(``RewardScale``), so that ``kl_coef`` means the same whatever the RM's scale: at 0.3 a nat of
KL costs 0.3 standard deviations of reward.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from minillm.chat import END, chat_ids, sample_answers
from minillm.checkpoint import Checkpoint, model_and_tokenizer, save_checkpoint
from minillm.model import GPT
from minillm.reward import (
    Comparisons,
    RewardModel,
    encode_responses,
    gold_reward,
    preference_prompts,
    score_responses,
)
from minillm.settings import pick_device, profile
from minillm.sft import clustered_se, is_on_topic


class RLHFWarning(UserWarning):
    """A run that is learning nothing, or something degenerate (see ``Monitor``)."""


# ----------------------------------------------------------------------------- the pieces

def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` where ``mask`` is 1 (every answer token counts once)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def kl_penalty_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor,
                       mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards (B, T): ``-kl_coef * (logp - ref_logp)`` on every answer token, plus
    the RM's score of the whole answer on its last token.

    ``logp - ref_logp`` of a sampled token is an unbiased one-sample estimate of that step's
    KL(pi || ref); summed over the answer it estimates the answer's KL, so the total reward of
    an answer is its score minus ``kl_coef`` times its KL.
    """
    mask = mask.to(logp.dtype)
    rewards = torch.where(mask.bool(), -kl_coef * (logp - ref_logp), torch.zeros_like(logp))
    last = (mask * torch.arange(mask.size(1), device=mask.device)).argmax(dim=1)
    rewards[torch.arange(mask.size(0), device=mask.device), last] += scores
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016): (advantages, returns), (B, T).

    ``values[:, t]`` is the value head's estimate before token t is chosen. The TD error
    ``delta_t = r_t + gamma * V_{t+1} - V_t`` says how much better token t turned out than
    expected; the advantage is their sum discounted by ``gamma * lam``, over the answer's
    remaining tokens (``mask`` marks them; after the last one the value is 0). ``lam`` trades
    the value head's bias (lam = 0: one step) against the variance of the sampled rewards
    (lam = 1: the whole return). Returns = advantages + values: the value head's targets.
    """
    mask = mask.to(values.dtype)
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
        next_value = values[:, t] * mask[:, t]
    return advantages, advantages + values


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """GRPO's advantages: each reward standardized among the ``group_size`` answers to the same
    prompt (consecutive entries of ``rewards``); a group whose rewards are all equal gets 0."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}.")
    groups = rewards.view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, unbiased=False, keepdim=True)  # the paper's normalization
    return ((groups - mean) / (std + 1e-8)).flatten()


def ppo_clipped_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                     mask: torch.Tensor, clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate loss over answer tokens, and the share of tokens it clipped.

    With ratio = pi(token) / pi_old(token), the objective per token is
    ``min(ratio * A, clamp(ratio, 1 - clip, 1 + clip) * A)``: once a token's probability has
    moved by more than ``clip`` in the direction its advantage favours, the gradient stops, so
    several steps on the same rollouts cannot run far from the policy that sampled them.
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip, 1 + clip) * advantages
    loss = masked_mean(-torch.minimum(unclipped, clipped), mask)
    clip_fraction = masked_mean(((ratio - 1).abs() > clip).float(), mask)
    return loss, clip_fraction


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float = 0.1) -> torch.Tensor:
    """The DPO loss of a batch of pairs, from each answer's summed log-probability (N,).

    ``beta * (log pi(y) - log ref(y))`` is the reward the policy implicitly assigns to y; the loss
    is the Bradley-Terry loss of lesson 05 on those implicit rewards:
    ``-log sigmoid(beta * ((pc - rc) - (pr - rr)))``, averaged over pairs. At the start
    (policy = reference) it is ln 2.
    """
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean()


# ----------------------------------------------------------------------------- rollouts

class ActorCritic(nn.Module):
    """The policy (a GPT) and a value head on its final hidden states.

    The head shares the policy's backbone, so one forward pass gives both the next-token
    logits and the value estimates; it starts at zero (no opinion) and learns from the returns.
    """

    def __init__(self, policy: GPT):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(policy.config.n_embd, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, ids: torch.Tensor, attention: torch.Tensor):
        hidden = self.policy.forward_hidden(ids, attention)
        return self.policy.lm_head(hidden), self.value_head(hidden).squeeze(-1)


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids[:, t + 1] | ids[:, :t + 1]) for each t: (B, T - 1) from logits (B, T, V)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """The entropy (nats) of each next-token distribution but the last: (B, T - 1)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


@dataclass
class Rollout:
    """A batch of sampled answers, laid out for one forward pass.

    ``ids`` (B, T): each prompt left-padded, its answer right after it, then padding;
    ``attention`` (B, T): 1 on prompt and answer tokens; ``actions`` (B, T - 1): 1 where
    ``ids[:, t + 1]`` is an answer token, aligned with ``token_logprobs``. ``responses`` are
    dicts with "topic", "prompt", "answer" (the text, without its special token) and "ended".
    """

    ids: torch.Tensor
    attention: torch.Tensor
    actions: torch.Tensor
    responses: list[dict]


@torch.no_grad()
def rollout(policy: GPT, tokenizer, prompts: list[dict], max_new_tokens: int = 100,
            temperature: float = 1.0, generator: torch.Generator | None = None) -> Rollout:
    """Sample one answer to each prompt (dicts with "topic" and "prompt") from ``policy``."""
    rows, answers = sample_answers(policy, tokenizer, [p["prompt"] for p in prompts],
                                   max_new_tokens, temperature, generator=generator)
    end = chat_ids(tokenizer)[END]
    stops = set(tokenizer.special_tokens.values())
    width, longest = max(map(len, rows)), max(map(len, answers))
    B, T = len(rows), width + longest
    ids = torch.full((B, T), end, dtype=torch.long)
    attention = torch.zeros(B, T, dtype=torch.long)
    actions = torch.zeros(B, T - 1, dtype=torch.long)
    responses = []
    for k, (prompt, row, answer) in enumerate(zip(prompts, rows, answers)):
        start = width - len(row)
        ids[k, start:width + len(answer)] = torch.tensor(row + answer)
        attention[k, start:width + len(answer)] = 1
        actions[k, width - 1:width - 1 + len(answer)] = 1
        stopped = answer[-1] in stops
        responses.append({"topic": prompt["topic"], "prompt": prompt["prompt"],
                          "answer": tokenizer.decode(answer[:-1] if stopped else answer),
                          "ended": stopped and answer[-1] == end})
    device = next(policy.parameters()).device
    return Rollout(ids.to(device), attention.to(device), actions.to(device), responses)


@dataclass
class RewardScale:
    """The RM's mean and standard deviation on the SFT model's answers: rewards are reported
    as ``(score - mean) / std``, standard deviations above the SFT model's average answer."""

    mean: float
    std: float

    def __call__(self, scores):
        return [(s - self.mean) / self.std for s in scores]


def reward_scale(reward_model: RewardModel, tokenizer, responses: list[dict]) -> RewardScale:
    """The ``RewardScale`` of the RM's scores of ``responses`` (the SFT model's answers)."""
    scores = torch.tensor(score_responses(reward_model, tokenizer, responses))
    if len(scores) < 2 or scores.std().item() < 1e-6:
        raise ValueError("The reward model gives the SFT model's answers all the same score, so "
                         "it cannot tell RL which answers are better (is it trained?).")
    return RewardScale(scores.mean().item(), scores.std().item())


# ----------------------------------------------------------------------------- measuring

@torch.no_grad()
def sequence_kl(policy: GPT, reference: GPT, batch: Rollout) -> torch.Tensor:
    """Each answer's KL estimate (B,): the sum over its tokens of log pi - log ref. It is exact
    in expectation over answers sampled from ``policy`` at temperature 1 (one answer's estimate
    can be negative)."""
    logp = token_logprobs(policy(batch.ids, attention_mask=batch.attention)[0], batch.ids)
    ref = token_logprobs(reference(batch.ids, attention_mask=batch.attention)[0], batch.ids)
    return ((logp - ref) * batch.actions).sum(1)


def answer_stats(responses: list[dict], proxy: list[float]) -> dict:
    """Means of what the logs track about a batch of answers (gold is the labeler's reward)."""
    n = len(responses)
    return {
        "proxy": sum(proxy) / n,
        "gold": sum(r["gold"] for r in responses) / n,
        "on_topic": sum(is_on_topic(r["answer"], r["topic"]) for r in responses) / n,
        "ended": sum(r["ended"] for r in responses) / n,
        "length": sum(len(r["answer"]) for r in responses) / n,
        "distinct": len({(r["prompt"], r["answer"]) for r in responses}) / n,
    }


def with_gold(responses: list[dict]) -> list[dict]:
    return [{**r, "gold": gold_reward(r["topic"], r["answer"], r["ended"])} for r in responses]


@torch.no_grad()
def evaluate_policy(policy: GPT, reference: GPT, reward_model: RewardModel, scale: RewardScale,
                    tokenizer, prompts: list[dict], samples: int = 8, seed: int = 0,
                    batch_size: int = 256, max_new_tokens: int = 100) -> list[dict]:
    """Sample ``samples`` answers (temperature 1) to each prompt; one row per answer, with its
    gold reward, its proxy reward (the RM, in ``scale`` units) and its KL estimate."""
    device = next(policy.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    asked = [p for p in prompts for _ in range(samples)]
    rows = []
    for start in range(0, len(asked), batch_size):
        batch = rollout(policy, tokenizer, asked[start:start + batch_size], max_new_tokens,
                        1.0, generator)
        kl = sequence_kl(policy, reference, batch).tolist()
        proxy = scale(score_responses(reward_model, tokenizer, batch.responses))
        rows += [{**r, "proxy": p, "kl": k}
                 for r, p, k in zip(with_gold(batch.responses), proxy, kl)]
    return rows


def compare_policies(rows: list[dict], baseline: list[dict], key: str = "gold") -> dict:
    """How much ``rows`` beat ``baseline`` on ``key``, answers to the same prompts: the gain in
    the mean, its standard error, and the gain in standard errors.

    The prompts are the units: the SE is that of the mean over prompts of the per-prompt
    difference (paired), which accounts for answers to one prompt being alike.
    """
    def by_prompt(rs):
        groups: dict[str, list[float]] = {}
        for r in rs:
            groups.setdefault(r["prompt"], []).append(r[key])
        return {p: sum(v) / len(v) for p, v in groups.items()}

    ours, theirs = by_prompt(rows), by_prompt(baseline)
    if set(ours) != set(theirs):
        raise ValueError("The two sets of answers must answer the same prompts.")
    diffs = [ours[p] - theirs[p] for p in ours]
    gain = sum(diffs) / len(diffs)
    se = clustered_se(diffs, list(ours))
    return {"gain": gain, "se": se, "z": gain / se if se > 0 else float("inf"),
            "prompts": len(diffs), "answers": len(rows)}


@dataclass
class SFTReference:
    """What a tuned policy is compared with (``compare_with_sft``): the SFT model (with its
    tokenizer), the reward model, the RM's scale on the SFT model's answers to training
    prompts, and the SFT model's answers to the held-out prompts (``evaluate_policy`` rows)."""

    assistant: Checkpoint
    reward_model: RewardModel
    scale: RewardScale
    rows: list[dict]
    samples: int
    seed: int


def sft_reference(assistant: Checkpoint, reward_model: RewardModel, samples: int = 8,
                  seed: int = 0, scale_answers: int = 256) -> SFTReference:
    """Measure the SFT model as every tuned policy will be measured (``compare_with_sft``).

    The RM's scores are put in units of its standard deviation over ``scale_answers`` answers
    of the SFT model to training prompts (``reward_scale``); then the SFT model answers each
    held-out prompt of ``preference_prompts`` ``samples`` times (temperature 1).
    """
    model, tok = assistant.model, assistant.tokenizer
    train_prompts, held_out = preference_prompts()
    rng = random.Random(seed)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    answers = rollout(model, tok, [rng.choice(train_prompts) for _ in range(scale_answers)],
                      generator=generator)
    scale = reward_scale(reward_model, tok, answers.responses)
    rows = evaluate_policy(model, model, reward_model, scale, tok, held_out, samples, seed)
    return SFTReference(assistant, reward_model, scale, rows, samples, seed)


def compare_with_sft(policy: GPT, reference: SFTReference) -> dict:
    """A tuned policy against the SFT model on the held-out prompts (same samples and seed):
    mean gold reward of each, the policy's gain in gold and in proxy (RM) reward with standard
    errors paired by prompt, and its KL to the SFT model (nats per answer)."""
    tok = reference.assistant.tokenizer
    rows = evaluate_policy(policy, reference.assistant.model, reference.reward_model,
                           reference.scale, tok, preference_prompts()[1], reference.samples,
                           reference.seed)
    gold = compare_policies(rows, reference.rows)
    proxy = compare_policies(rows, reference.rows, "proxy")

    def mean_and_se(rs):
        values = [r["gold"] for r in rs]
        return sum(values) / len(values), clustered_se(values, [r["prompt"] for r in rs])

    (policy_gold, policy_se), (sft_gold, sft_se) = mean_and_se(rows), mean_and_se(reference.rows)
    return {"gold": policy_gold, "gold_se": policy_se, "sft_gold": sft_gold, "sft_gold_se": sft_se,
            "gold_gain": gold["gain"], "gold_gain_se": gold["se"], "gold_z": gold["z"],
            "proxy_gain": proxy["gain"], "proxy_gain_se": proxy["se"],
            "kl": sum(r["kl"] for r in rows) / len(rows),
            "prompts": gold["prompts"], "answers": gold["answers"]}


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


def _log_row(row: dict, history: list[dict], log) -> None:
    history.append(row)
    if log is not None:
        log.write(json.dumps(row) + "\n")
        log.flush()


# ----------------------------------------------------------------------------- PPO

@dataclass
class PPOConfig:
    """A PPO run (``ppo``), or GRPO's with ``advantages="group"`` (and ``value_coef=0``).
    Rewards are in RM standard deviations (``RewardScale``)."""

    steps: int = 60  # rollout-and-update iterations
    prompts_per_step: int = 16  # training prompts per rollout
    samples_per_prompt: int = 4  # answers sampled per prompt
    max_new_tokens: int = 100
    kl_coef: float = 0.3  # reward lost per nat of KL to the reference
    lr: float = 1e-4
    warmup_steps: int = 5
    epochs: int = 2  # passes over each rollout
    minibatches: int = 2  # gradient steps per pass
    clip: float = 0.2  # of the probability ratio (policy) and of the value change
    value_coef: float = 0.1  # weight of the value loss against the policy loss
    advantages: str = "gae"  # "gae": the value head and GAE; "group": GRPO's, no value head
    gamma: float = 1.0  # no discount: an answer is short and only its whole counts
    lam: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    log_path: str | Path | None = None  # the history as JSON lines, one row per step


@dataclass
class Experience:
    """One PPO batch, ready for the update: the rollout, its per-token quantities (B, T - 1)
    under the policy that sampled it, and what the logs report about it."""

    batch: Rollout
    mask: torch.Tensor  # 1 on answer tokens
    old_logp: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor  # whitened
    returns: torch.Tensor
    stats: dict


@torch.no_grad()
def collect_experience(actor: ActorCritic, reference: GPT, reward_model: RewardModel,
                       scale: RewardScale, tokenizer, prompts: list[dict], config: PPOConfig,
                       generator: torch.Generator) -> Experience:
    """Sample an answer to each prompt, score it, and turn score and KL into advantages."""
    actor.eval()
    batch = rollout(actor.policy, tokenizer, prompts, config.max_new_tokens, 1.0, generator)
    mask = batch.actions.float()
    logits, values = actor(batch.ids, batch.attention)
    old_logp = token_logprobs(logits, batch.ids)
    values = values[:, :-1] * mask  # the value before each answer token is chosen
    ref_logp = token_logprobs(reference(batch.ids, attention_mask=batch.attention)[0], batch.ids)
    raw = score_responses(reward_model, tokenizer, batch.responses)
    proxy = torch.tensor(scale(raw), device=mask.device)
    rewards = kl_penalty_rewards(proxy, old_logp, ref_logp, mask, config.kl_coef)
    if config.advantages == "group":
        # Every token of an answer gets the answer's advantage; the returns are the values
        # themselves, so an untrained value head stays as it is.
        per_answer = group_advantages(rewards.sum(1), config.samples_per_prompt)
        advantages, returns = per_answer[:, None] * mask, values
    else:
        advantages, returns = gae(rewards, values, mask, config.gamma, config.lam)
        # Whitened over the batch's tokens: the step size no longer depends on the reward's
        # scale, and about half the tokens are pushed up, half down.
        mean = masked_mean(advantages, mask)
        std = masked_mean((advantages - mean) ** 2, mask).sqrt()
        advantages = (advantages - mean) / (std + 1e-8) * mask
    stats = {**answer_stats(with_gold(batch.responses), proxy.tolist()),
             "kl": ((old_logp - ref_logp) * mask).sum(1).mean().item(),
             "entropy": masked_mean(entropy(logits), mask).item(),
             "score_spread": max(raw) - min(raw)}
    return Experience(batch, mask, old_logp, values, advantages, returns, stats)


def ppo_update(actor: ActorCritic, optimizer: torch.optim.Optimizer, exp: Experience,
               config: PPOConfig, order: random.Random) -> dict:
    """``config.epochs`` passes of ``config.minibatches`` clipped gradient steps over one batch;
    returns the mean clip fraction and value loss."""
    actor.train()
    clip_fractions, value_losses = [], []
    rows = exp.mask.size(0)
    for _ in range(config.epochs):
        shuffle = torch.Generator().manual_seed(order.randrange(2**31))
        for chunk in torch.randperm(rows, generator=shuffle).chunk(config.minibatches):
            chunk = chunk.to(exp.mask.device)
            mask, old_values, returns = exp.mask[chunk], exp.values[chunk], exp.returns[chunk]
            logits, values = actor(exp.batch.ids[chunk], exp.batch.attention[chunk])
            policy_loss, clip_fraction = ppo_clipped_loss(
                token_logprobs(logits, exp.batch.ids[chunk]), exp.old_logp[chunk],
                exp.advantages[chunk], mask, config.clip)
            values = values[:, :-1]
            # The value change is clipped like the ratio (as in OpenAI's baselines).
            kept = old_values + (values - old_values).clamp(-config.clip, config.clip)
            value_loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2,
                                                         (kept - returns) ** 2), mask)
            optimizer.zero_grad(set_to_none=True)
            (policy_loss + config.value_coef * value_loss).backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(actor.parameters(), config.grad_clip)
            optimizer.step()
            clip_fractions.append(clip_fraction.item())
            value_losses.append(value_loss.item())
    return {"clip_fraction": sum(clip_fractions) / len(clip_fractions),
            "value_loss": sum(value_losses) / len(value_losses)}


def ppo(policy, reward_model: RewardModel, config: PPOConfig | None = None, tokenizer=None,
        prompts: list[dict] | None = None) -> tuple[GPT, list[dict], RewardScale]:
    """Tune a copy of ``policy`` (a GPT, Checkpoint or path: the SFT model) with PPO (or GRPO,
    see ``PPOConfig.advantages``) against ``reward_model``; returns (tuned policy, history, the
    reward scale).

    ``prompts`` default to the training prompts of ``preference_prompts``. Each history row is
    one step: the proxy reward (RM, in SFT standard deviations) and the gold reward of the
    step's answers (which the policy never sees), the mean KL to the reference per answer,
    entropy per token, the clipped share of tokens, the value loss, and answer statistics.
    """
    config = config or PPOConfig()
    sft_model, tokenizer = model_and_tokenizer(policy, tokenizer, "ppo() needs the tokenizer")
    prompts = prompts or preference_prompts()[0]
    if config.advantages not in ("gae", "group"):
        raise ValueError(f"PPOConfig.advantages is 'gae' or 'group', not {config.advantages!r}.")
    if config.prompts_per_step > len(prompts):
        raise ValueError(f"PPOConfig.prompts_per_step is {config.prompts_per_step}, but there "
                         f"are only {len(prompts)} prompts.")
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    reference = copy.deepcopy(sft_model).to(device).eval().requires_grad_(False)
    actor = ActorCritic(copy.deepcopy(sft_model)).to(device)
    reward_model = reward_model.to(device).eval()
    optimizer = torch.optim.AdamW(actor.parameters(), lr=config.lr, weight_decay=0.0)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    order = random.Random(config.seed)
    monitor = Monitor()
    sft_answers = rollout(reference, tokenizer, [order.choice(prompts) for _ in range(256)],
                          config.max_new_tokens, 1.0, generator)
    scale = reward_scale(reward_model, tokenizer, sft_answers.responses)

    history: list[dict] = []
    log = None if config.log_path is None else open(config.log_path, "w", encoding="utf-8")
    start = time.perf_counter()
    bar = tqdm(range(1, config.steps + 1), mininterval=1.0,
               desc="GRPO" if config.advantages == "group" else "PPO",
               disable=not config.progress)
    try:
        for step in bar:
            asked = [p for p in order.sample(prompts, config.prompts_per_step)
                     for _ in range(config.samples_per_prompt)]
            exp = collect_experience(actor, reference, reward_model, scale, tokenizer, asked,
                                     config, generator)
            lr = config.lr * min(1.0, step / max(1, config.warmup_steps))
            for group in optimizer.param_groups:
                group["lr"] = lr
            update = ppo_update(actor, optimizer, exp, config, order)
            stats = exp.stats
            monitor.check_rollout(step, stats["score_spread"], stats["kl"], stats["distinct"])
            row = {"step": step, **stats, **update, "lr": lr,
                   "time": time.perf_counter() - start}
            _log_row(row, history, log)
            bar.set_postfix(proxy=f"{stats['proxy']:+.2f}", gold=f"{stats['gold']:.2f}",
                            kl=f"{stats['kl']:.2f}", refresh=False)
    finally:
        bar.close()
        if log is not None:
            log.close()
    return actor.policy.eval(), history, scale


# ----------------------------------------------------------------------------- DPO

@dataclass
class DPOConfig:
    """A DPO run (``dpo``) on labeled pairs."""

    steps: int = 200
    batch_size: int = 32  # pairs per step
    beta: float = 0.1  # strength of the implicit KL constraint (higher: stay closer)
    lr: float = 5e-5
    warmup_steps: int = 10
    grad_clip: float = 1.0
    eval_interval: int = 50  # sample answers to measure gold reward and KL every this many steps
    eval_answers: int = 128  # answers (to training prompts) per measurement
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    log_path: str | Path | None = None


def answer_logprobs(model: GPT, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The summed log-probability of each answer (N,) under ``model``, from the layout of
    ``encode_responses`` (mask 1 on ``<|assistant|>``, the answer and its ``<|end|>``): the
    answer's tokens are those whose previous token is in the turn too."""
    logp = token_logprobs(model(ids, attention_mask=None)[0], ids)
    answer = mask[:, 1:] * mask[:, :-1]
    return (logp * answer).sum(1)


def dpo(policy, comparisons: Comparisons, config: DPOConfig | None = None,
        tokenizer=None) -> tuple[GPT, list[dict]]:
    """Tune a copy of ``policy`` (the SFT model) with DPO on ``comparisons`` (lesson 05's
    training pairs); returns (tuned policy, history).

    The reference's log-probabilities of every answer are computed once, before training. Each
    history row is one step: the loss, the share of pairs the implicit reward orders as the
    labels do, and how far the policy moved the chosen and rejected answers' log-probabilities.
    Every ``eval_interval`` steps the row also has the gold reward, KL to the reference and
    answer statistics of ``eval_answers`` answers sampled from the policy (temperature 1).
    """
    config = config or DPOConfig()
    sft_model, tokenizer = model_and_tokenizer(policy, tokenizer, "dpo() needs the tokenizer")
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    policy = copy.deepcopy(sft_model).to(device)
    ids, mask = encode_responses(comparisons.responses, tokenizer)
    ids, mask = ids.to(device), mask.to(device)
    lengths = (mask * torch.arange(mask.size(1), device=device)).argmax(1) + 1
    with torch.no_grad():
        policy.eval()
        ref_logp = torch.cat([answer_logprobs(policy, ids[k:k + 512], mask[k:k + 512])
                              for k in range(0, len(ids), 512)])
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=0.0)
    pairs = torch.tensor(comparisons.pairs, device=device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    prompts = preference_prompts()[0]
    order = random.Random(config.seed)
    asked = [order.choice(prompts) for _ in range(config.eval_answers)]
    sft_model = sft_model.to(device).eval()
    monitor = Monitor()
    history: list[dict] = []
    losses: list[float] = []
    log = None if config.log_path is None else open(config.log_path, "w", encoding="utf-8")
    start = time.perf_counter()
    bar = tqdm(range(1, config.steps + 1), desc="DPO", mininterval=1.0,
               disable=not config.progress)
    policy.train()
    try:
        for step in bar:
            pick = pairs[torch.randint(len(pairs), (config.batch_size,), device=device,
                                       generator=generator)]
            rows = pick.flatten()  # chosen, rejected, chosen, rejected, ...
            width = int(lengths[rows].max())  # cut the padding that no row of this batch needs
            batch_ids, batch_mask = ids[rows][:, :width], mask[rows][:, :width]
            logp = answer_logprobs(policy, batch_ids, batch_mask).view(-1, 2)
            ref = ref_logp[rows].view(-1, 2)
            loss = dpo_loss(logp[:, 0], logp[:, 1], ref[:, 0], ref[:, 1], config.beta)
            lr = config.lr * min(1.0, step / max(1, config.warmup_steps))
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip)
            optimizer.step()
            moved = (logp - ref).detach()
            losses.append(loss.item())
            monitor.check_dpo(step, losses)
            row = {"step": step, "loss": loss.item(),
                   "accuracy": (moved[:, 0] > moved[:, 1]).float().mean().item(),
                   "chosen_shift": moved[:, 0].mean().item(),
                   "rejected_shift": moved[:, 1].mean().item(), "lr": lr}
            if config.eval_interval and (step % config.eval_interval == 0
                                         or step == config.steps):
                policy.eval()
                batch = rollout(policy, tokenizer, asked, generator=generator)
                kl = sequence_kl(policy, sft_model, batch).mean().item()
                responses = with_gold(batch.responses)
                row.update(answer_stats(responses, [0.0] * len(responses)), kl=kl)
                del row["proxy"]  # DPO has no reward model
                policy.train()
            row["time"] = time.perf_counter() - start
            _log_row(row, history, log)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    finally:
        bar.close()
        if log is not None:
            log.close()
    return policy.eval(), history


def save_policy(path, policy: GPT, tokenizer, method: str, history: list[dict]) -> None:
    """Save a tuned policy as a checkpoint marked ``stage=method`` (load it with
    ``minillm.checkpoint.load_checkpoint``)."""
    save_checkpoint(path, policy, tokenizer, stage=method, history=history)


def rlhf_recipe(method: str, profile_name: str | None = None) -> PPOConfig | DPOConfig:
    """The profile's PPO, GRPO or DPO run.

    quick (about a minute each on a 2-core CPU). Measured against the SFT model on the 72
    held-out prompts x 8 answers at temperature 1 (gold gain, paired standard errors, KL), with
    the models of lesson 06's committed run (reward model started from the SFT model):

    - PPO, 60 steps of 64 answers at lr 1e-4, KL coefficient 0.3: +0.331 (14.9 SE), KL 1.8.
      With the earlier reward model (started from the base): +0.314 (12.8 SE), KL 2.0 (seed 0)
      and +0.325 (11.4 SE), KL 2.3 (seed 1); 100 steps at lr 3e-5: +0.295 (11.4 SE), KL 1.3,
      in twice the time. The same run with the KL coefficient at 0 hacks the RM: proxy +3.3
      standard deviations, gold -1.43 (-27.8 SE), KL 93, answers such as
      "I hon hon honou hone hon honour." (with the earlier RM: -0.08, "I   hear  hear  hear.").
    - DPO, 200 steps of 32 pairs at lr 5e-5, beta 0.1: +0.342 (11.3 SE), KL 3.3. 300 steps at
      lr 3e-5: +0.261 (9.3 SE), KL 2.1.

    - GRPO, 60 steps of 8 prompts x 8 answers, otherwise PPO's recipe without the value head:
      +0.384 (14.1 SE), KL 3.2, next to PPO +0.366 (13.6 SE), KL 1.9 and DPO +0.341 (13.0 SE),
      KL 3.3 on one SFT sample (seed 0): a little more gold than PPO for 1.6x its KL.

    On the models the lessons make on a fresh machine (as in CI), on one SFT sample: PPO +0.358
    (14.0 SE), KL 1.8; GRPO +0.428 (14.8 SE), KL 3.0; DPO +0.293 (10.1 SE), KL 2.8.

    full: longer runs for the nanoGPT-sized models on a GPU (not tuned).
    """
    quick = (profile_name or profile()) == "quick"
    if method == "ppo":
        return PPOConfig() if quick else PPOConfig(steps=400, prompts_per_step=32)
    if method == "grpo":  # as many answers per step as PPO's, in groups of 8
        grpo = PPOConfig(advantages="group", value_coef=0.0, prompts_per_step=8,
                         samples_per_prompt=8)
        return grpo if quick else replace(grpo, steps=400, prompts_per_step=16)
    if method == "dpo":
        return DPOConfig() if quick else DPOConfig(steps=1000, batch_size=64)
    raise ValueError(f"The method is 'ppo', 'grpo' or 'dpo', not {method!r}.")
