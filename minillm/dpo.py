"""DPO (Rafailov et al. 2023): RLHF without sampling and without a reward model.

Under the KL-regularized objective that PPO optimizes, the best policy is the reference
reweighted by exp(reward / beta); turned around, every policy *defines* a reward,
``beta * (log pi(y) - log ref(y))``. DPO trains the policy directly on lesson 05's labeled pairs
so that this implicit reward ranks them as the labeler did: the Bradley-Terry loss of lesson 05
on implicit rewards. The same optimum as PPO's, reached by supervised learning.

What this deliberately leaves out: no label smoothing (conservative DPO), no IPO or other loss
variants, no reference-free mode; the reference's log-probabilities of every answer are computed
once, before training. Run it with ``python -m minillm rlhf --method dpo``.

With ``lora=LoRAConfig(...)`` the policy trains LoRA adapters on frozen SFT weights
(``minillm.lora``), and the reference is the same model with its adapters switched off: the
frozen weights *are* the reference, so no second copy is kept.
"""

from __future__ import annotations

import contextlib
import copy
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from minillm.checkpoint import model_and_tokenizer
from minillm.evaluate import answer_stats
from minillm.hardware import callers_rng_kept
from minillm.history import open_log, record
from minillm.lora import AdaptersOff, LoRAConfig, adapters_disabled, add_adapters, unload
from minillm.model import GPT
from minillm.policy import Monitor, rollout, rows_per_pass, sequence_kl, token_logprobs
from minillm.reward import encode_responses
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
from minillm.world import Comparisons, preference_prompts, with_gold


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
    log_path: str | Path | None = None  # the history as JSON lines, one row per step

    def __post_init__(self):
        require_positive_ints(self, "steps", "batch_size", "eval_answers")
        for name in ("warmup_steps", "eval_interval"):  # an eval_interval of 0: never measure
            require(self, name, is_int(getattr(self, name)) and getattr(self, name) >= 0,
                    "an integer >= 0")
        require_positive_numbers(self, "beta")
        # lr 0 is allowed: a run that cannot learn, which the Monitor must catch (lesson 06)
        require_non_negative_numbers(self, "lr", "grad_clip")
        require(self, "seed", is_int(self.seed), "an integer")
        require_bools(self, "progress")


def answer_logprobs(model: GPT, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The summed log-probability of each answer (N,) under ``model``, from the layout of
    ``encode_responses`` (mask 1 on ``<|assistant|>``, the answer and its ``<|end|>``): the
    answer's tokens are those whose previous token is in the turn too."""
    logp = token_logprobs(model(ids, attention_mask=None)[0], ids)
    answer = mask[:, 1:] * mask[:, :-1]
    return (logp * answer).sum(1)


def dpo(policy, comparisons: Comparisons, config: DPOConfig | None = None,
        tokenizer=None, lora: LoRAConfig | None = None) -> tuple[GPT, list[dict]]:
    """Tune a copy of ``policy`` (the SFT model) with DPO on ``comparisons`` (lesson 05's
    training pairs); returns (tuned policy, history).

    Each history row is one step: the loss, the share of pairs the implicit reward orders as the
    labels do, how far the policy moved the chosen and rejected answers' log-probabilities, and
    ``elapsed_s``. Every ``eval_interval`` steps the row also has the gold reward, KL to the
    reference and answer statistics of ``eval_answers`` answers sampled from the policy
    (temperature 1). The caller's model and global random state are left as they were.

    ``lora`` trains adapters only (module docstring); the policy returned has them merged in.
    """
    config = config or DPOConfig()
    sft_model, tokenizer = model_and_tokenizer(policy, tokenizer, "dpo() needs the tokenizer")
    device = pick_device(config.device)
    with callers_rng_kept(device):
        torch.manual_seed(config.seed)  # dropout's randomness
        policy = copy.deepcopy(sft_model).to(device)
        if lora is not None:
            add_adapters(policy, lora)
        ids, mask = (t.to(device) for t in encode_responses(comparisons.responses, tokenizer))
        lengths = (mask * torch.arange(mask.size(1), device=device)).argmax(1) + 1
        with adapters_disabled(policy) if lora else contextlib.nullcontext():
            ref_logp = reference_logprobs(policy, ids, mask)
        optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad],
                                      lr=config.lr, weight_decay=0.0)
        pairs = torch.tensor(comparisons.pairs, device=device)
        generator = torch.Generator(device=device).manual_seed(config.seed)
        order = random.Random(config.seed)
        asked = [order.choice(preference_prompts()[0]) for _ in range(config.eval_answers)]
        reference = AdaptersOff(policy) if lora else \
            copy.deepcopy(sft_model).to(device).eval().requires_grad_(False)
        history: list[dict] = []
        losses, monitor, start = [], Monitor(), time.perf_counter()
        policy.train()
        with open_log(config.log_path, history) as log, \
                tqdm(total=config.steps, desc="DPO", mininterval=1.0,
                     disable=not config.progress) as bar:
            for step in range(1, config.steps + 1):
                rows = pairs[torch.randint(len(pairs), (config.batch_size,), device=device,
                                           generator=generator)].flatten()  # chosen, rejected, ...
                width = int(lengths[rows].max())  # cut the padding no row of this batch needs
                lr = warmup_lr(step, config.lr, config.warmup_steps)
                loss, moved = dpo_step(policy, optimizer, ids[rows][:, :width],
                                       mask[rows][:, :width], ref_logp[rows].view(-1, 2), lr,
                                       config)
                losses.append(loss)
                monitor.check_dpo(step, losses)
                row = {"step": step, "loss": loss,
                       "accuracy": (moved[:, 0] > moved[:, 1]).float().mean().item(),
                       "chosen_shift": moved[:, 0].mean().item(),
                       "rejected_shift": moved[:, 1].mean().item(), "lr": lr}
                if config.eval_interval and (step % config.eval_interval == 0
                                             or step == config.steps):
                    row.update(sample_stats(policy, reference, tokenizer, asked, generator))
                record(row, start, history, log)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                bar.update()
    return unload(policy).eval(), history


def dpo_step(policy: GPT, optimizer: torch.optim.Optimizer, ids: torch.Tensor,
             mask: torch.Tensor, ref: torch.Tensor, lr: float, config: DPOConfig
             ) -> tuple[float, torch.Tensor]:
    """One update on a batch of pairs whose rows are laid out chosen, rejected, chosen, ...;
    ``ref`` (N, 2) holds the reference's log-probabilities of each pair's answers. Returns the
    loss and how far the policy has moved each answer's log-probability from the reference."""
    def backward():
        logp = answer_logprobs(policy, ids, mask).view(-1, 2)
        loss = dpo_loss(logp[:, 0], logp[:, 1], ref[:, 0], ref[:, 1], config.beta)
        loss.backward()
        return loss.item(), (logp - ref).detach()

    return optimizer_step(optimizer, policy.parameters(), lr, config.grad_clip, backward)[0]


@torch.no_grad()
def reference_logprobs(model: GPT, ids: torch.Tensor, mask: torch.Tensor,
                       batch_size: int = 512) -> torch.Tensor:
    """``answer_logprobs`` of every answer under ``model`` in eval mode, computed once, at most
    ``batch_size`` answers at a time (fewer where their logits would outgrow
    ``minillm.policy.LOGITS_PER_PASS``: GPT-2's vocabulary)."""
    was_training = model.training
    model.eval()
    batch_size = rows_per_pass(model, ids.size(1), batch_size)
    logp = torch.cat([answer_logprobs(model, ids[k:k + batch_size], mask[k:k + batch_size])
                      for k in range(0, len(ids), batch_size)])
    model.train(was_training)
    return logp


@torch.no_grad()
def sample_stats(policy: GPT, reference: GPT | AdaptersOff, tokenizer, asked: list[dict],
                 generator: torch.Generator) -> dict:
    """Gold reward, KL to ``reference`` and answer statistics of the policy's answers to
    ``asked`` (temperature 1); DPO has no reward model, so no proxy reward."""
    was_training = policy.training
    policy.eval()
    batch = rollout(policy, tokenizer, asked, generator=generator)
    kl = sequence_kl(policy, reference, batch).mean().item()
    stats = answer_stats(with_gold(batch.responses), [0.0] * len(asked))
    del stats["proxy"]
    policy.train(was_training)
    return {**stats, "kl": kl}
