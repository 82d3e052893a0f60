"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): finetune a few
thin matrices instead of every weight.

Finetuning changes each weight matrix W (out x in) by some update dW. LoRA bets that the update
a finetune needs has low rank, and writes it as a product of two thin matrices:

    W' = W + (alpha / r) * B @ A,        A: (r, in),  B: (out, r),  r << min(in, out)

W stays frozen; only A and B are trained: r * (in + out) numbers instead of in * out. The
gradients and AdamW's two moment estimates exist only for those, so gradient and optimizer
memory shrink by the same factor. (The activations do not: the backward pass still runs through
every layer to reach the adapters of the first.)

- B starts at zero, so B @ A = 0 and the adapted model starts as exactly the base model;
  A starts random (nn.Linear's own initialization), so that B's first gradient, which is the
  gradient of dW times A^T, is not zero.
- alpha / r scales the update: with alpha fixed, a larger rank does not make the first steps
  larger, so a learning rate found at one rank roughly carries over to another.
- The forward pass never forms the (out x in) matrix B @ A: it adds two thin matmuls,
  y = x W^T + b + (alpha / r) * (x A^T) B^T.
- ``train_embeddings=True`` also trains the token embedding (tied to the output layer) in full,
  as is usual when a chat template brings tokens that pretraining never saw as inputs.

Three operations make adapters practical:

- **merge**: W <- W + (alpha / r) * B @ A. The model then runs at the base's cost, and
  ``unmerge`` subtracts the same product again (equal to within float rounding);
- **switch off**: inside ``with adapters_disabled(model):`` the model is the base model again.
  DPO needs the frozen start as its reference: that is the same model with its adapters off,
  not a second copy of the weights;
- **unload**: merge and put plain ``nn.Linear`` layers back, leaving a plain GPT (what
  ``minillm.sft.sft`` returns, and what ``minillm.checkpoint.load_checkpoint`` gives for a
  checkpoint saved with adapters, so every later stage reads it as any other SFT model).

Example::

    >>> model = GPT(GPTConfig(vocab_size=69, block_size=32, n_layer=2, n_head=2, n_embd=32))
    >>> model.num_params()
    28704
    >>> model = add_adapters(model, LoRAConfig(rank=4, alpha=8))  # 2 blocks x 4 layers
    >>> trainable_parameters(model)  # 4 * (in + out) per layer: 4 * (32 + 96 + ... + 32)
    4096
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minillm.validate import is_int, is_number, require, require_bools, require_positive_ints

# The linear layers of a block (minillm.model.Block) an adapter can be put on, by their names.
TARGETS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")


@dataclass
class LoRAConfig:
    rank: int = 4  # r: the rank of every update B @ A
    alpha: float = 8.0  # the update is scaled by alpha / rank
    targets: tuple[str, ...] = TARGETS  # which linear layers of each block get an adapter
    layers: tuple[int, ...] | None = None  # which blocks (by index); None: every block
    dropout: float = 0.0  # dropout on the adapter's input (the frozen path has none of its own)
    # Also train the token embedding (tied to the output layer) in full: a chat template's
    # special tokens were never inputs in pretraining, and their rows may need to move.
    train_embeddings: bool = False

    def __post_init__(self):
        # Lists (as a checkpoint stores them) become tuples, so equal configs compare equal.
        self.targets = tuple(self.targets)
        self.layers = None if self.layers is None else tuple(self.layers)
        require_positive_ints(self, "rank")
        require(self, "alpha", is_number(self.alpha) and self.alpha > 0, "a positive number")
        require(self, "targets", bool(self.targets) and set(self.targets) <= set(TARGETS),
                f"a non-empty selection of {TARGETS}")
        require(self, "layers", self.layers is None or (
            bool(self.layers) and all(is_int(i) and i >= 0 for i in self.layers)),
                "None (every block) or a non-empty tuple of block indices")
        require(self, "dropout", is_number(self.dropout) and 0.0 <= self.dropout < 1.0,
                "a number in [0, 1)")
        require_bools(self, "train_embeddings")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` whose frozen weight W (and bias) is used as it is, plus a trainable
    low-rank update: y = x W^T + b + scale * (dropout(x) A^T) B^T.

    It keeps the original layer's parameters under the same names (``weight``, ``bias``), so a
    state dict of an adapted model holds the base's weights unchanged, plus ``lora_A`` and
    ``lora_B``.
    """

    def __init__(self, linear: nn.Linear, config: LoRAConfig):
        # Built on the meta device (no memory), then given the original layer's own parameters.
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device="meta")
        self.weight, self.bias = linear.weight, linear.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        like = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(config.rank, linear.in_features, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initializes W
        self.lora_B = nn.Parameter(torch.zeros(linear.out_features, config.rank, **like))
        self.scale = config.scale
        self.lora_dropout = nn.Dropout(config.dropout)
        self.merged = False  # whether W already holds scale * B @ A
        self.enabled = True  # False inside adapters_disabled

    def delta(self) -> torch.Tensor:
        """The update scale * B @ A, as a full (out, in) matrix (for merging)."""
        return self.scale * self.lora_B @ self.lora_A

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if self.enabled and not self.merged:
            y = y + self.scale * F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return y


def add_adapters(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Freeze every parameter of ``model`` (a GPT, or a module holding one) and put a LoRA
    adapter on each linear layer that ``config`` names; returns the model, changed in place.

    Afterwards the adapters' A and B are the only parameters with ``requires_grad``, so an
    optimizer built from the trainable parameters (as ``minillm.train`` builds it) holds only
    them. ``model.lora`` keeps the config, for checkpoints.
    """
    if adapters(model):
        raise ValueError("This model already has LoRA adapters; unload them first.")
    model.requires_grad_(False)
    blocks = _blocks(model)
    layers = range(len(blocks)) if config.layers is None else config.layers
    missing = [i for i in layers if i >= len(blocks)]
    if missing:
        raise ValueError(f"LoRAConfig.layers names blocks {missing}, but the model has only "
                         f"{len(blocks)} (0 to {len(blocks) - 1}).")
    for i in layers:
        for target in config.targets:
            parent_name, name = target.split(".")
            parent = getattr(blocks[i], parent_name)
            setattr(parent, name, LoRALinear(getattr(parent, name), config))
    if config.train_embeddings:
        _token_embedding(model).requires_grad_(True)
    model.lora = config
    return model


def adapters(model: nn.Module) -> list[LoRALinear]:
    """Every adapted layer of ``model`` (empty for a plain model)."""
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def trainable_parameters(model: nn.Module) -> int:
    """The number of parameters an optimizer would train (those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def merge(model: nn.Module) -> None:
    """W <- W + scale * B @ A in every adapted layer: the same outputs, at the base's cost."""
    for layer in _adapted(model):
        if not layer.merged:
            layer.weight += layer.delta()
            layer.merged = True


@torch.no_grad()
def unmerge(model: nn.Module) -> None:
    """Undo ``merge``: W <- W - scale * B @ A (the base weights again, up to float rounding)."""
    for layer in _adapted(model):
        if layer.merged:
            layer.weight -= layer.delta()
            layer.merged = False


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Inside the block, ``model`` computes what the base model computes: its adapters are off.

    DPO's reference model is this: the policy's own frozen weights, with no second copy. The
    adapters must not be merged (the base weights would then be gone from W)."""
    layers = _adapted(model)
    if any(layer.merged for layer in layers):
        raise ValueError("The adapters are merged into the weights; unmerge them before "
                         "switching them off.")
    for layer in layers:
        layer.enabled = False
    try:
        yield model
    finally:
        for layer in layers:
            layer.enabled = True


class AdaptersOff:
    """Call it like the model: ``AdaptersOff(model)(idx)`` runs ``model`` with its adapters
    switched off, for code that wants the reference as a model of its own (e.g. a KL to it)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, *args, **kwargs):
        with adapters_disabled(self.model):
            return self.model(*args, **kwargs)


@torch.no_grad()
def unload(model: nn.Module) -> nn.Module:
    """Merge the adapters and put plain ``nn.Linear`` layers back: a plain model again (every
    parameter trainable, ``model.lora`` gone), whose outputs are the adapted model's. In place;
    returns the model. A model without adapters is returned unchanged."""
    if not adapters(model):
        return model
    merge(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                plain = nn.Linear(child.in_features, child.out_features,
                                  bias=child.bias is not None, device="meta")
                plain.weight, plain.bias = child.weight, child.bias
                setattr(parent, name, plain)
    model.requires_grad_(True)
    if hasattr(model, "lora"):
        del model.lora
    return model


def _adapted(model: nn.Module) -> list[LoRALinear]:
    layers = adapters(model)
    if not layers:
        raise ValueError("This model has no LoRA adapters (add them with add_adapters).")
    return layers


def _token_embedding(model: nn.Module) -> nn.Embedding:
    for module in model.modules():
        if isinstance(getattr(module, "tok_emb", None), nn.Embedding):
            return module.tok_emb
    raise ValueError(f"A {type(model).__name__} has no token embedding to train.")


def _blocks(model: nn.Module) -> nn.ModuleList:
    # A GPT has .blocks; a reward model holds its GPT as a submodule.
    for module in model.modules():
        if isinstance(getattr(module, "blocks", None), nn.ModuleList):
            return module.blocks
    raise ValueError(f"A {type(model).__name__} has no transformer blocks to put adapters on.")
