"""Pretraining: the loop that turns a GPT and a long stream of token ids into a language model.

One step draws a batch of random windows of the text, computes the next-token loss,
backpropagates, clips the gradient norm and takes an AdamW step at the learning rate the
schedule gives for that step (linear warmup, then cosine decay). Every ``eval_interval`` steps
the loss is estimated on held-out text. The result comes back as data: a history of rows, one
per step, that the lessons plot.

The defaults are a CPU recipe for the 0.83M-parameter character model: many small steps
(batch 12) at a high learning rate (2e-3) beat few large ones (README, "How the recipes were
chosen"). PPO and DPO (``minillm.ppo``, ``minillm.dpo``) take their updates with this module's
``optimizer_step`` and write their histories with ``minillm.history`` too.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import torch
from tqdm.auto import tqdm

from minillm.checkpoint import save_checkpoint
from minillm.hardware import (
    AUTOCAST_DTYPES,
    Distributed,
    autocast_dtype,
    callers_rng_kept,
    gather_across,
    gradient_sync,
    init_distributed,
    launched_by_torchrun,
    mean_across,
    memory_held,
    peak_flops,
    reshard,
    wrap_for_training,
)
from minillm.history import open_log, record
from minillm.lora import LoRAConfig
from minillm.model import GPT
from minillm.settings import pick_device
from minillm.validate import is_int, is_number, require, require_bools
from minillm.validate import require_non_negative_numbers as non_negative
from minillm.validate import require_positive_ints as positive_ints

T = TypeVar("T")


@dataclass
class TrainConfig:
    max_steps: int = 3000  # optimizer updates
    batch_size: int = 12  # windows per step
    block_size: int | None = None  # tokens per window; None: the model's whole context
    lr: float = 2e-3  # the peak learning rate, reached at the end of the warmup
    min_lr: float = 1e-4  # where the cosine decay ends, at max_steps
    warmup_steps: int = 100
    weight_decay: float = 0.1  # on matrices only (see optimizer_groups)
    beta1: float = 0.9
    # Adam's second moment is an average of squared gradients over ~1 / (1 - beta2) steps:
    # 0.99 (nanoGPT's choice for small models; GPT-3 used 0.95, Adam's default is 0.999) is
    # ~100 steps, long enough to smooth small batches' noise, short enough to keep up in a
    # run of a few thousand steps.
    beta2: float = 0.99
    grad_clip: float = 1.0  # the largest global gradient norm; 0 turns clipping off
    eval_interval: int = 250  # estimate the train and val loss every this many steps
    eval_batches: int = 50  # batches per loss estimate
    seed: int = 1337  # seeds the data order and torch's global RNG (dropout)
    device: str = "auto"  # "auto" picks cuda, then mps, then cpu
    log_path: str | Path | None = None  # the history as JSON lines, one row per line
    checkpoint_path: str | Path | None = None  # written at the end (and when interrupted)
    checkpoint_interval: int = 0  # also every this many steps (0: only at the end)
    resume: bool = False  # continue from checkpoint_path if it exists
    grad_accum_steps: int = 1  # micro-batches of batch_size summed into one update
    dtype: str = "auto"  # autocast dtype: "auto" (bfloat16 where the GPU has it), "float32", ...
    compile: bool = False  # torch.compile the model (a GPU speedup; ~20 s to compile on a CPU)
    # Under torchrun: shard the parameters, gradients and optimizer state across the processes
    # (FSDP, each holds 1/N) instead of giving every process a whole copy (DDP). The same
    # updates either way; FSDP trades extra communication for memory.
    fsdp: bool = False
    progress: bool = True  # a tqdm progress bar

    def __post_init__(self):
        positive_ints(self, "max_steps", "batch_size", "eval_interval", "eval_batches",
                              "grad_accum_steps")
        require(self, "warmup_steps",
                is_int(self.warmup_steps) and 0 <= self.warmup_steps <= self.max_steps,
                f"an integer from 0 to max_steps ({self.max_steps})")
        require(self, "lr", is_number(self.lr) and self.lr > 0, "a positive number")
        require(self, "min_lr", is_number(self.min_lr) and 0 <= self.min_lr <= self.lr,
                f"a number from 0 to lr ({self.lr})")
        for name in ("beta1", "beta2"):
            require(self, name, is_number(getattr(self, name)) and 0 <= getattr(self, name) < 1,
                    "a number in [0, 1)")
        non_negative(self, "weight_decay", "grad_clip")
        require(self, "block_size",
                self.block_size is None or (is_int(self.block_size) and self.block_size >= 1),
                "a positive integer or None")
        require(self, "seed", is_int(self.seed), "an integer")
        require(self, "device", isinstance(self.device, str), "a device name such as 'auto'")
        require(self, "checkpoint_interval",
                is_int(self.checkpoint_interval) and self.checkpoint_interval >= 0,
                "an integer >= 0")
        require(self, "dtype", self.dtype in AUTOCAST_DTYPES, f"one of {list(AUTOCAST_DTYPES)}")
        require_bools(self, "progress", "resume", "compile", "fsdp")


# ----------------------------------------------------------------------------- the schedule

def lr_at(step: int, config: TrainConfig) -> float:
    """The learning rate of optimizer update ``step`` (1 to max_steps; 0 is before training).

    It rises linearly from 0 to ``lr`` over ``warmup_steps``: Adam's first updates rest on
    gradient statistics from a handful of batches, so they are kept small. Then it follows half
    a cosine down to ``min_lr`` at ``max_steps`` (Loshchilov & Hutter 2017): large steps while
    the loss falls fast, small ones at the end to settle into a minimum.
    """
    if step < config.warmup_steps:
        return warmup_lr(step, config.lr, config.warmup_steps)
    if step >= config.max_steps:
        return config.min_lr
    progress = (step - config.warmup_steps) / (config.max_steps - config.warmup_steps)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


def warmup_lr(step: int, lr: float, warmup_steps: int) -> float:
    """``lr`` after a linear warmup over ``warmup_steps`` updates (PPO and DPO stay at it)."""
    return lr * min(1.0, step / max(1, warmup_steps))


# ----------------------------------------------------------------------------- the optimizer

def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on the matrices (linear layers, embeddings), none on
    the vectors (biases, norm gains).

    Decay keeps the matrices, which mix features, from growing without need; a bias or a gain
    only shifts or scales one feature, and pulling it towards 0 would fight the normalisation
    rather than regularise. ``model.parameters()`` yields a tied matrix once, so it is decayed
    once.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: str):
    """AdamW over ``optimizer_groups``; on CUDA the fused kernel updates every parameter in one
    launch instead of several small kernels per tensor."""
    return torch.optim.AdamW(optimizer_groups(model, config.weight_decay), lr=config.lr,
                             betas=(config.beta1, config.beta2),
                             fused=torch.device(device).type == "cuda")


# ----------------------------------------------------------------------------- data and loss

def random_batch(data: torch.Tensor, batch_size: int, block_size: int,
                 generator: torch.Generator, device="cpu"):
    """``batch_size`` windows of ``block_size`` tokens from random places in ``data`` (1-D ids):
    inputs x (B, T), and targets y, the same windows shifted left by one (y[:, t] = x[:, t+1]).

    A window may start anywhere, so over many steps every stretch of text is seen at every
    position of the context, and all learned position embeddings get trained.
    """
    if hasattr(data, "random_batch"):  # a token stream on disk (minillm.shards.TokenShards)
        return data.random_batch(batch_size, block_size, generator, device)
    if not isinstance(data, torch.Tensor) or data.dim() != 1:
        raise ValueError("The data must be a 1-D tensor of token ids.")
    if len(data) <= block_size:
        raise ValueError(f"The data has {len(data)} tokens, fewer than the {block_size + 1} "
                         f"that one window of block_size={block_size} needs with its target.")
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    # unfold views every window of block_size + 1 tokens without copying; indexing then copies
    # only the chosen ones. One transfer to the device for inputs and targets together.
    windows = data.unfold(0, block_size + 1, 1)[starts].to(device)  # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]


@torch.no_grad()
def estimate_loss(model: GPT, data: torch.Tensor, config: TrainConfig, block_size: int,
                  generator: torch.Generator) -> float:
    """The mean loss over ``config.eval_batches`` random batches of ``data``, with dropout off
    (eval mode); the model's mode is restored afterwards."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        total = 0.0
        for _ in range(config.eval_batches):
            x, y = random_batch(data, config.batch_size, block_size, generator, device)
            total += model(x, y)[1]  # summed on the device: one synchronisation, at the end
        return total.item() / config.eval_batches
    finally:
        model.train(was_training)


def bits_per_char(loss_nats_per_token: float, tokens: int, chars: int) -> float:
    """A loss in nats per token as bits per character of text: loss / ln 2 * tokens / chars.

    Models with different tokenizers have incomparable losses per token (a BPE token carries
    several characters); per character of the same text, they can be compared directly.
    """
    if tokens < 1 or chars < 1:
        raise ValueError(f"tokens and chars must be positive, not {tokens} and {chars}.")
    return loss_nats_per_token / math.log(2) * tokens / chars


# ----------------------------------------------------------------------------- one update

def optimizer_step(optimizer: torch.optim.Optimizer, parameters, lr: float, grad_clip: float,
                   backward: Callable[[], T]) -> tuple[T, float]:
    """One update of every trainer (pretraining, SFT, reward model, PPO, DPO): set the learning
    rate, clear the gradients, run ``backward`` (it computes the loss and calls ``.backward()``;
    what it returns comes back), clip the global gradient norm of ``parameters`` to
    ``grad_clip`` and step. Returns (what ``backward`` returned, the norm before clipping).

    Rescaling the gradient when its norm exceeds ``grad_clip`` caps the size of any one update,
    so a rare batch with a huge gradient cannot undo training; 0 turns clipping off (the norm is
    still measured).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    result = backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip or math.inf)
    optimizer.step()
    return result, grad_norm.item()


def train_step(model, optimizer: torch.optim.Optimizer, micro_batches, lr: float,
               grad_clip: float, dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """One update at learning rate ``lr`` from a list of (x, y) micro-batches; returns their mean
    loss and the gradient norm (measured before clipping).

    Each micro-batch's loss is divided by their number, so the summed gradients are those of the
    mean loss over all of them: k micro-batches of b windows give the update of one batch of k*b.
    Under DistributedDataParallel or FSDP the gradients are averaged across processes only
    after the last micro-batch (``gradient_sync``).
    """
    device_type = micro_batches[0][0].device.type

    def backward():
        total = 0.0
        for k, (x, y) in enumerate(micro_batches):
            sync = gradient_sync(model, sync=k == len(micro_batches) - 1)
            with sync, torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32):
                _, loss = model(x, y)
            (loss / len(micro_batches)).backward()
            total += loss.detach()
        return total

    total, grad_norm = optimizer_step(optimizer, model.parameters(), lr, grad_clip, backward)
    return (total / len(micro_batches)).item(), grad_norm


def global_batch(data, config: TrainConfig, block_size: int, generator: torch.Generator,
                 dist: Distributed, device):
    """This process's micro-batches of one step.

    Every process draws the same global batch of batch_size * grad_accum_steps * world_size
    windows from the same generator and keeps its own slice, so a run on N processes sees
    exactly the windows a single process with N times the accumulation would.
    """
    per_rank = config.batch_size * config.grad_accum_steps
    x, y = random_batch(data, per_rank * dist.world_size, block_size, generator, device)
    mine = slice(dist.rank * per_rank, (dist.rank + 1) * per_rank)
    return list(zip(x[mine].split(config.batch_size), y[mine].split(config.batch_size)))


# ----------------------------------------------------------------------------- the loop

def train(model: GPT, train_data: torch.Tensor, val_data: torch.Tensor,
          config: TrainConfig | None = None, tokenizer=None, stage: str | None = None
          ) -> list[dict]:
    """Train ``model`` in place (on the config's device) on ``train_data``, a 1-D tensor of token
    ids, and return the history: one dict per step.

    Every row has ``step`` (optimizer updates done), ``lr``, ``train_loss`` (the loss of that
    step's batch), ``grad_norm`` (before clipping), ``tokens_per_s`` and ``flops_per_s`` (of
    that step; ``mfu`` too where the device's peak is known) and ``elapsed_s`` (since the
    start, evaluations included). Evaluation rows (step 0, every ``eval_interval`` steps and the
    last) add ``eval_train_loss`` and ``val_loss``, the model's mean loss after that step on
    ``eval_batches`` batches of each split; row 0 is the evaluation before training and has only
    those, ``lr`` and ``elapsed_s``.

    Checkpoints (every ``checkpoint_interval`` steps and at the end) hold everything needed to
    continue, and ``stage`` (``minillm.checkpoint.STAGES``) if given: with ``resume=True`` a run
    picks up at the checkpoint's step, with the same optimizer state, data order and random
    state, and ends exactly as if it had never stopped. Launched by ``torchrun``, the processes
    split each batch (data parallelism); rank 0 alone logs and writes the checkpoint file, which
    then also holds ``memory_per_rank``: the bytes of parameters, gradients and optimizer state
    each process held (``minillm.hardware.memory_held``). The caller's global random state is
    left as it was.

    With ``fsdp=True`` (under torchrun, even of one process) the model is sharded in place
    (``minillm.hardware.shard``) and stays sharded afterwards. Its checkpoint is then two
    things: each process writes its slices of the weights and optimizer state with
    ``torch.distributed.checkpoint`` into ``<checkpoint_path>.shards/step_N`` (what a resumed
    run reads, in parallel), and rank 0 writes the usual checkpoint file with the whole weights
    gathered, so that every later stage (and ``load_checkpoint``) reads it in one process.

    Ctrl-C (KeyboardInterrupt) stops cleanly: the history so far is returned, and the checkpoint
    is written as at the end.
    """
    config = config or TrainConfig()
    if config.fsdp and not launched_by_torchrun():
        raise ValueError("fsdp=True shards the model across the processes of a torchrun launch; "
                         "run it under torchrun (one process is enough), or without fsdp.")
    device = pick_device(config.device)
    dist = init_distributed(device, group_of_one=config.fsdp)
    if dist.world_size > 1 and torch.device(device).type == "cuda":
        device = f"cuda:{dist.local_rank}"
    block_size = config.block_size or model.config.block_size
    if block_size > model.config.block_size:
        raise ValueError(f"TrainConfig.block_size ({block_size}) exceeds the model's context "
                         f"({model.config.block_size}).")
    was_training = model.training
    with callers_rng_kept(device):
        torch.manual_seed(config.seed)  # dropout's randomness
        # The batches come from their own CPU generator: the data order is the same on any
        # device and does not depend on what else draws random numbers (dropout, evaluation).
        batches = torch.Generator().manual_seed(config.seed)
        model.to(device).train()
        dtype = autocast_dtype(device, config.dtype)
        # FSDP replaces the parameters by sharded ones: the optimizer is made after the wrapping
        stepper = wrap_for_training(model, config.compile, dist, device, config.fsdp, dtype)
        optimizer = make_optimizer(model, config, device)
        history: list[dict] = []
        if config.resume and config.checkpoint_path and Path(config.checkpoint_path).is_file():
            history = _restore(config.checkpoint_path, model, optimizer, batches, device,
                               config.fsdp)
        run = _Run(model, stepper, optimizer, batches, config, dist, device, dtype, block_size,
                   tokenizer, stage)
        try:
            run.loop(train_data, val_data, history)
            if dist.world_size > 1:  # every rank leaves once rank 0's checkpoint is written
                torch.distributed.barrier()
        finally:
            model.train(was_training)
    return history


@dataclass
class _Run:
    """What ``train``'s loop works with, so that its pieces stay short."""

    model: GPT  # sharded in place under FSDP
    stepper: torch.nn.Module  # what the steps call: the model, compiled and/or wrapped in DDP
    optimizer: torch.optim.Optimizer
    batches: torch.Generator
    config: TrainConfig
    dist: Distributed
    device: str
    dtype: torch.dtype  # of autocast
    block_size: int
    tokenizer: object
    stage: str | None

    def checkpoint(self, history: list[dict], rng: dict) -> None:
        """Write the checkpoint (every process calls this: under FSDP, and to gather
        ``memory_per_rank``, they all take part)."""
        path, dist = self.config.checkpoint_path, self.dist
        if path is None:
            return
        state = {"step": _steps_done(history), "history": history,
                 "train_config": _plain(asdict(self.config)), **rng}
        if self.stage is not None:
            state["stage"] = self.stage
        if dist.world_size > 1 or self.config.fsdp:
            state["memory_per_rank"] = gather_across(memory_held(self.model, self.optimizer),
                                                     dist)
        weights = None
        if self.config.fsdp:
            state["shards"], weights = _save_shards(path, state["step"], self.model,
                                                    self.optimizer)
        else:
            state["optimizer"] = self.optimizer.state_dict()
        if dist.is_main:
            save_checkpoint(path, self.model, self.tokenizer, weights=weights, **state)
            if self.config.fsdp:  # the file now names the new shards: the older ones can go
                _remove_shards(path, keep=state["shards"])

    def rng(self) -> dict:
        """The random state after the last completed step: what a resumed run must start from,
        even when Ctrl-C lands in the middle of a step that already drew its batch."""
        return {"batch_rng": self.batches.get_state(), "torch_rng": torch.get_rng_state()}

    def loop(self, train_data, val_data, history: list[dict]) -> None:
        config, dist = self.config, self.dist
        restored_rows, rng = len(history), self.rng()
        first_step = _steps_done(history) + 1
        start = time.perf_counter() - (history[-1]["elapsed_s"] if history else 0.0)
        # Under FSDP every forward pass gathers parameters from all processes, so all evaluate
        evaluate = (dist.is_main or config.fsdp) and (
            lambda: self.evaluate(train_data, val_data))
        with open_log(config.log_path if dist.is_main else None, history) as log, \
                tqdm(total=config.max_steps, initial=first_step - 1, desc="training",
                     mininterval=1.0, disable=not (config.progress and dist.is_main)) as bar:
            try:
                if not history:
                    record({"step": 0, "lr": lr_at(0, config), **(evaluate() if evaluate
                                                                    else {})},
                           start, history, log)
                val = next((r["val_loss"] for r in reversed(history) if "val_loss" in r), None)
                for step in range(first_step, config.max_steps + 1):
                    row = self.step(step, train_data)
                    if evaluate and (step % config.eval_interval == 0
                                     or step == config.max_steps):
                        row.update(evaluate())
                        val = row["val_loss"]
                    record(row, start, history, log)
                    rng = self.rng()
                    if config.checkpoint_interval and step % config.checkpoint_interval == 0 \
                            and step < config.max_steps:
                        self.checkpoint(history, rng)
                    # refresh=False: update() redraws the bar, at most once a second
                    bar.set_postfix(loss=f"{row['train_loss']:.3f}",
                                    val="-" if val is None else f"{val:.3f}", refresh=False)
                    bar.update()
            except KeyboardInterrupt:  # Ctrl-C, or the stop button of a notebook
                if config.progress and dist.is_main:
                    bar.write(f"Interrupted after step {_steps_done(history)}: returning the "
                              f"history so far.")
        if len(history) > restored_rows:  # a resumed run with nothing left to do stays as is
            self.checkpoint(history, rng)

    def evaluate(self, train_data, val_data) -> dict:
        losses = _evaluate(self.model, train_data, val_data, self.config, self.block_size)
        if self.config.fsdp:
            reshard(self.model)  # the evaluation left the root's parameters gathered
        return losses

    @cached_property
    def throughput(self) -> tuple[int, float, float | None]:
        """Tokens per step, model FLOPs per token at this block size, the device's peak FLOP/s."""
        config, dist = self.config, self.dist
        tokens = config.batch_size * config.grad_accum_steps * dist.world_size * self.block_size
        flops = self.model.flops_per_token() * self.block_size / self.model.config.block_size
        return tokens, flops, peak_flops(self.device)

    def step(self, step: int, train_data) -> dict:
        """One optimizer update and its row of the history (before any evaluation)."""
        config, dist = self.config, self.dist
        tokens, flops_per_token, peak = self.throughput
        began = time.perf_counter()
        micro = global_batch(train_data, config, self.block_size, self.batches, dist,
                             self.device)
        lr = lr_at(step, config)
        loss, grad_norm = train_step(self.stepper, self.optimizer, micro, lr, config.grad_clip,
                                     self.dtype)
        seconds = time.perf_counter() - began
        row = {"step": step, "lr": lr,
               "train_loss": mean_across(loss, dist, self.device), "grad_norm": grad_norm,
               "tokens_per_s": tokens / seconds, "flops_per_s": tokens * flops_per_token / seconds}
        if peak:
            row["mfu"] = row["flops_per_s"] / (peak * dist.world_size)
        return row


def _restore(path, model: GPT, optimizer, batches: torch.Generator, device: str,
             fsdp: bool = False) -> list[dict]:
    """Load a training checkpoint into the model, optimizer and generators; its history."""
    state = torch.load(path, map_location=device, weights_only=True)
    if state.get("model_config") != asdict(model.config):
        raise ValueError(f"{path} holds a model with another configuration; resume needs the "
                         "same GPTConfig (or delete the checkpoint to start afresh).")
    saved_lora = state.get("lora") and LoRAConfig(**state["lora"])
    if saved_lora != getattr(model, "lora", None):
        raise ValueError(f"{path} was saved with other LoRA adapters (or none) than this model "
                         f"has; resume needs the same ones (or delete the checkpoint to start "
                         f"afresh).")
    if fsdp != ("shards" in state):
        raise ValueError(f"{path} was written by a run {'without' if fsdp else 'with'} FSDP; "
                         f"resume it {'without' if fsdp else 'with'} fsdp as well.")
    needed = ("shards",) if fsdp else ("optimizer",)
    missing = [k for k in (*needed, "batch_rng", "torch_rng", "history") if k not in state]
    if missing:
        raise ValueError(f"{path} cannot be resumed from: it has no {', '.join(missing)}.")
    if fsdp:
        _load_shards(path, state["shards"], model, optimizer)
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    batches.set_state(state["batch_rng"])
    torch.set_rng_state(state["torch_rng"])
    return state["history"]


# ----------------------------------------------------------------------------- FSDP's checkpoints

def _shards_dir(path) -> Path:
    return Path(f"{os.fspath(path)}.shards")


def _save_shards(path, step: int, model, optimizer) -> tuple[str, dict]:
    """Every process writes its slices of the weights and optimizer state into
    ``<path>.shards/step_N`` (``torch.distributed.checkpoint``: each process its own file, and
    the metadata to reassemble them, for any number of processes). Returns that folder's name
    and the whole weights, gathered on rank 0 (empty elsewhere) for the checkpoint file.

    A new folder per checkpoint, named in the file only once it is complete, so a run killed
    while saving still resumes from the previous one.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_state_dict,
    )

    name = f"step_{step:06d}"
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state},
             storage_writer=dcp.FileSystemWriter(_shards_dir(path) / name, overwrite=True))
    whole = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))
    return name, whole


def _load_shards(path, name: str, model, optimizer) -> None:
    """Read ``_save_shards``'s folder ``name`` into the sharded model and optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    folder = _shards_dir(path) / name
    if not folder.is_dir():
        raise ValueError(f"{path} names its shards {folder}, which is missing; resume needs "
                         "them (or delete the checkpoint to start afresh).")
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=folder)  # in place, into this process's slices
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"])


def _remove_shards(path, keep: str) -> None:
    import shutil

    for folder in _shards_dir(path).glob("step_*"):
        if folder.name != keep:
            shutil.rmtree(folder, ignore_errors=True)


def _evaluate(model, train_data, val_data, config, block_size) -> dict:
    # A generator seeded afresh gives the same batches at every evaluation, so the curve's ups and
    # downs are the model's and not the sample's; and evaluating never draws from the training
    # batches' generator, so how often one evaluates does not change what the model trains on.
    def same_batches():
        return torch.Generator().manual_seed(config.seed + 1)

    return {"eval_train_loss": estimate_loss(model, train_data, config, block_size,
                                             same_batches()),
            "val_loss": estimate_loss(model, val_data, config, block_size, same_batches())}


def _steps_done(history: list) -> int:
    return history[-1]["step"] if history else 0


def _plain(config: dict) -> dict:
    # Paths become strings: a checkpoint holds only data that loads without running code.
    return {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in config.items()}
