"""PPO and GRPO: tune the assistant to score well with the reward model, without drifting far
from it.

The SFT model of lesson 04 (the *policy*) answers prompts; the reward model (RM) of lesson 05
scores the answers; the policy is pushed towards answers that score high. The RM is only a
proxy for what people want (here the gold reward of ``minillm.world``, which the policy never
sees), and an optimizer finds the proxy's blind spots. So the policy pays for every nat it moves
away from a frozen copy of the SFT model (the *reference*): per token,
``kl_coef * (log pi - log ref)``.

- **PPO** (Schulman et al. 2017; as used for InstructGPT, Ouyang et al. 2022): sample answers
  (*rollouts*), score them, turn score and KL penalty into per-token rewards, estimate how much
  better than expected each token was (*advantages*, by GAE with a learned value head), then
  take a few clipped gradient steps on the same rollouts.
- **GRPO** (Shao et al. 2024, DeepSeekMath): PPO without the value head. Several answers are
  sampled per prompt, and an answer's advantage is how far its reward lies above the mean of
  its prompt's answers, in their standard deviation. ``PPOConfig(advantages="group")``.

Rewards are in units of the RM's standard deviation on the SFT model's own answers
(``minillm.policy.RewardScale``), so ``kl_coef`` means the same whatever the RM's scale: at 0.3
a nat of KL costs 0.3 standard deviations of reward. In place of the RM, ``ppo`` also takes a
reward *function*, such as lesson 10's checker of sums (a verifiable reward), used as it is.

What this deliberately leaves out: no separate critic network (the value head shares the
policy's backbone), no reward whitening across steps, no adaptive KL coefficient, no entropy
bonus, and GRPO keeps the KL penalty in the reward as PPO does (the paper moves it into the
loss). Run it with ``python -m minillm rlhf --method ppo`` (or ``grpo``); ``minillm.recipes``
has the lessons' settings.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from minillm.checkpoint import model_and_tokenizer
from minillm.evaluate import answer_stats
from minillm.hardware import callers_rng_kept
from minillm.history import open_log, record
from minillm.model import GPT
from minillm.policy import (
    Monitor,
    RewardScale,
    Rollout,
    entropy,
    masked_mean,
    on_device,
    rollout,
    token_logprobs,
)
from minillm.reward import RewardModel, score_responses
from minillm.settings import pick_device
from minillm.train import optimizer_step, warmup_lr
from minillm.validate import (
    is_int,
    require,
    require_bools,
    require_non_negative_numbers,
    require_positive_ints,
    require_positive_numbers,
)
from minillm.world import preference_prompts, with_gold

# ----------------------------------------------------------------------------- the pieces

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


# ----------------------------------------------------------------------------- the loop

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

    def __post_init__(self):
        require_positive_ints(self, "steps", "prompts_per_step", "samples_per_prompt",
                              "max_new_tokens", "epochs", "minibatches")
        require(self, "warmup_steps", is_int(self.warmup_steps) and self.warmup_steps >= 0,
                "an integer >= 0")
        require_positive_numbers(self, "clip")
        # lr 0 is allowed: a run that cannot learn, which the Monitor must catch (lesson 06)
        require_non_negative_numbers(self, "lr", "kl_coef", "value_coef", "grad_clip")
        for name in ("gamma", "lam"):
            require(self, name, 0 <= getattr(self, name) <= 1, "a number from 0 to 1")
        require(self, "advantages", self.advantages in ("gae", "group"), "'gae' or 'group'")
        require(self, "samples_per_prompt",
                self.advantages == "gae" or self.samples_per_prompt >= 2,
                "at least 2 with advantages='group' (a group of one has no spread)")
        require(self, "seed", is_int(self.seed), "an integer")
        require_bools(self, "progress")


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
def collect_experience(actor: ActorCritic, reference: GPT, reward: Callable, tokenizer,
                       prompts: list[dict], config: PPOConfig,
                       generator: torch.Generator) -> Experience:
    """Sample an answer to each prompt, score it with ``reward`` (answers to their rewards),
    and turn score and KL into advantages."""
    actor.eval()
    batch = rollout(actor.policy, tokenizer, prompts, config.max_new_tokens, 1.0, generator)
    mask = batch.actions.float()
    logits, values = actor(batch.ids, batch.attention)
    old_logp = token_logprobs(logits, batch.ids)
    values = values[:, :-1] * mask  # the value before each answer token is chosen
    ref_logp = token_logprobs(reference(batch.ids, attention_mask=batch.attention)[0], batch.ids)
    proxy = torch.tensor(reward(batch.responses), device=mask.device, dtype=torch.float32)
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
    # Lesson 04's answers have a gold reward to watch; a checked task's reward is its truth.
    responses = with_gold(batch.responses) if "topic" in prompts[0] else batch.responses
    stats = {**answer_stats(responses, proxy.tolist()),
             "kl": ((old_logp - ref_logp) * mask).sum(1).mean().item(),
             "entropy": masked_mean(entropy(logits), mask).item(),
             "score_spread": (proxy.max() - proxy.min()).item()}
    return Experience(batch, mask, old_logp, values, advantages, returns, stats)


def ppo_update(actor: ActorCritic, optimizer: torch.optim.Optimizer, exp: Experience,
               config: PPOConfig, order: random.Random, lr: float) -> dict:
    """``config.epochs`` passes of ``config.minibatches`` clipped gradient steps at learning rate
    ``lr`` over one batch; returns the mean clip fraction and value loss."""
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
            optimizer_step(optimizer, actor.parameters(), lr, config.grad_clip,
                           (policy_loss + config.value_coef * value_loss).backward)
            clip_fractions.append(clip_fraction.item())
            value_losses.append(value_loss.item())
    return {"clip_fraction": sum(clip_fractions) / len(clip_fractions),
            "value_loss": sum(value_losses) / len(value_losses)}


def ppo(policy, reward_model: RewardModel | Callable, config: PPOConfig | None = None,
        tokenizer=None, prompts: list[dict] | None = None) -> tuple[GPT, list[dict], RewardScale]:
    """Tune a copy of ``policy`` (a GPT, Checkpoint or path: the SFT model) with PPO (or GRPO,
    see ``PPOConfig.advantages``) against ``reward_model``; returns (tuned policy, history, the
    reward scale).

    ``reward_model`` is lesson 05's ``RewardModel`` (its scores put in units of its spread on
    the SFT model's answers), or a function from rollout responses (the prompts' dicts with
    "answer" and "ended") to rewards, used as they are: a *verifiable* reward such as
    ``minillm.arithmetic.verifiable_reward``, which needs no reward model (the scale is then
    mean 0, std 1).

    ``prompts`` default to the training prompts of ``preference_prompts``. Each history row is
    one step: the proxy reward (RM, in SFT standard deviations) and the gold reward of the
    step's answers (which the policy never sees), the mean KL to the reference per answer,
    entropy per token, the clipped share of tokens, the value loss, answer statistics and
    ``elapsed_s``. The caller's models and global random state are left as they were.
    """
    config = config or PPOConfig()
    sft_model, tokenizer = model_and_tokenizer(policy, tokenizer, "ppo() needs the tokenizer")
    prompts = prompts or preference_prompts()[0]
    if config.prompts_per_step > len(prompts):
        raise ValueError(f"PPOConfig.prompts_per_step is {config.prompts_per_step}, but there "
                         f"are only {len(prompts)} prompts.")
    device = pick_device(config.device)
    with callers_rng_kept(device):
        torch.manual_seed(config.seed)  # dropout's randomness
        reference = copy.deepcopy(sft_model).to(device).eval().requires_grad_(False)
        actor = ActorCritic(copy.deepcopy(sft_model)).to(device)
        optimizer = torch.optim.AdamW(actor.parameters(), lr=config.lr, weight_decay=0.0)
        generator = torch.Generator(device=device).manual_seed(config.seed)
        order = random.Random(config.seed)
        if isinstance(reward_model, RewardModel):
            judge = on_device(reward_model, device)
            sft_answers = rollout(reference, tokenizer,
                                  [order.choice(prompts) for _ in range(256)],
                                  config.max_new_tokens, 1.0, generator)
            scale = RewardScale.fit(score_responses(judge, tokenizer, sft_answers.responses))

            def reward(responses):
                return scale(score_responses(judge, tokenizer, responses))
        else:
            scale, reward = RewardScale(0.0, 1.0), reward_model
        history: list[dict] = []
        monitor, start = Monitor(), time.perf_counter()
        with open_log(config.log_path, history) as log, \
                tqdm(total=config.steps, mininterval=1.0, disable=not config.progress,
                     desc="GRPO" if config.advantages == "group" else "PPO") as bar:
            for step in range(1, config.steps + 1):
                asked = [p for p in order.sample(prompts, config.prompts_per_step)
                         for _ in range(config.samples_per_prompt)]
                exp = collect_experience(actor, reference, reward, tokenizer, asked, config,
                                         generator)
                lr = warmup_lr(step, config.lr, config.warmup_steps)
                update = ppo_update(actor, optimizer, exp, config, order, lr)
                stats = exp.stats
                # A checked reward can be the same for a whole batch (all right), and answers to
                # one sum ought to agree: of the checks, only the KL's applies to it.
                judged = isinstance(reward_model, RewardModel)
                monitor.check_rollout(step, stats["score_spread"] if judged else 1.0, stats["kl"],
                                      stats["distinct"] if judged else 1.0)
                record({"step": step, **stats, **update, "lr": lr}, start, history, log)
                bar.set_postfix(proxy=f"{stats['proxy']:+.2f}", kl=f"{stats['kl']:.2f}",
                                **({"gold": f"{stats['gold']:.2f}"} if "gold" in stats else {}),
                                refresh=False)
                bar.update()
    return actor.policy.eval(), history, scale
