"""Checkpoints: a model with its config and tokenizer in one file, usable on its own.

A checkpoint is a ``torch.save`` file holding a dict::

    {"format": "minillm-checkpoint/1", "model_config": {...}, "model": state_dict,
     "tokenizer": json_text_or_None, **state}

where ``state`` is whatever the caller adds (step, optimizer state, history, ...). A model
saved with LoRA adapters (``minillm.lora``, e.g. mid-way through a LoRA finetune) also has
``"lora": {...}``, its adapters' config, and its state dict holds the frozen weights and the
adapters apart, so a run can resume from it; ``load_checkpoint`` merges them, so every reader
gets a plain GPT.

Two promises:

- Saving is atomic: the file is written under a temporary name in the same folder, then renamed
  over the old one, so a crash or Ctrl-C mid-save leaves the previous checkpoint intact.
- Loading runs no code: ``torch.load(weights_only=True)`` only rebuilds tensors and plain data
  (numbers, strings, lists, dicts), so a downloaded checkpoint cannot execute anything. To keep
  that possible, saving refuses any other kind of object up front.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from minillm.files import atomic_write
from minillm.lora import LoRAConfig, add_adapters, unload
from minillm.model import GPT, GPTConfig
from minillm.settings import pick_device
from minillm.tokenizer import CharTokenizer, Tokenizer, from_json

FORMAT = "minillm-checkpoint/1"
RESERVED_KEYS = ("format", "model_config", "model", "tokenizer", "lora")

# What made a checkpoint, saved as its state's "stage". A base model's may have none (files
# written before stages were marked).
BASE, SFT, REWARD, PPO, GRPO, DPO = "base", "sft", "reward", "ppo", "grpo", "dpo"
STAGES = (BASE, SFT, REWARD, PPO, GRPO, DPO)
TUNED_POLICIES = (PPO, GRPO, DPO)  # an SFT model tuned further: still an assistant
ASSISTANTS = (SFT, *TUNED_POLICIES)

# What weights_only=True can rebuild (besides tensors), matched by exact type: a subclass such as
# numpy.float64 (a float) or defaultdict (a dict) pickles as its own class and would be refused.
_PLAIN_VALUES = (str, bytes, int, float, complex, bool, type(None), torch.dtype)
_PLAIN_CONTAINERS = (dict, OrderedDict, list, tuple, set, torch.Size)


@dataclass
class Checkpoint:
    model: GPT  # in eval mode, on the device asked for
    tokenizer: Tokenizer | CharTokenizer | None
    state: dict = field(default_factory=dict)  # everything else that was saved

    @property
    def stage(self) -> str:
        """What made it (``STAGES``): "base" for a pretrained model."""
        return self.state.get("stage", BASE)

    @property
    def is_assistant(self) -> bool:
        """Whether it answers in the chat template: an SFT model, or one tuned from it."""
        return self.stage in ASSISTANTS


def save_checkpoint(path, model: GPT, tokenizer=None, *, weights: dict | None = None,
                    **state) -> None:
    """Write ``model`` (its config and weights), its ``tokenizer`` and ``state`` to ``path``.

    ``state`` may hold tensors, numbers, strings, and lists or dicts of them (optimizer state
    dicts, the step, a history of metrics): anything that loads without running code.
    ``weights`` replaces ``model.state_dict()`` where that is not the whole model: the weights
    of a model sharded across processes (FSDP), gathered into one state dict.
    """
    clashes = [key for key in RESERVED_KEYS if key in state]
    if clashes:
        raise ValueError(f"The state keys {clashes} are reserved for the checkpoint itself.")
    if state.get("stage", BASE) not in STAGES:
        raise ValueError(f"A checkpoint's stage is one of {', '.join(STAGES)}, "
                         f"not {state['stage']!r}.")
    for key, value in state.items():
        _check_plain(value, f"state[{key!r}]")
    payload = {
        "format": FORMAT,
        "model_config": asdict(model.config),
        "model": model.state_dict() if weights is None else weights,
        "tokenizer": None if tokenizer is None else tokenizer.to_json(),
        **state,
    }
    if getattr(model, "lora", None) is not None:
        payload["lora"] = asdict(model.lora)
    with atomic_write(path) as f:
        torch.save(payload, f)


def load_checkpoint(path, device: str = "cpu", model_class=GPT) -> Checkpoint:
    """Read a file written by ``save_checkpoint``: the model (in eval mode, on ``device``; LoRA
    adapters, if it was saved with some, merged into its weights), the tokenizer (or None) and
    the rest of the saved state.

    ``model_class`` is what the weights are loaded into: a GPT, or another module built from a
    GPTConfig, such as ``minillm.reward.RewardModel`` (a GPT with a reward head).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    device = pick_device(device)
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises many kinds of error for a file it cannot read
        # weights_only names the class or function a file asks to call, and refuses it.
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))
        if refused:
            raise ValueError(f"{path} holds Python objects ({refused.group(1)}) that loading "
                             f"would have to run as code, so it was refused; a minillm "
                             f"checkpoint holds only tensors and plain data.") from None
        raise ValueError(f"{path} is not a minillm checkpoint (torch cannot read it).") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a minillm checkpoint (it has no {FORMAT!r} marker).")

    model = model_class(GPTConfig(**payload["model_config"]))
    if payload.get("lora") is not None:  # saved with adapters: add them, to merge them below
        add_adapters(model, LoRAConfig(**payload["lora"]))
    if set(payload["model"]) != set(model.state_dict()):  # e.g. a reward model read as a GPT
        reward = payload.get("stage") == REWARD
        raise ValueError(f"{path} holds {'a reward' if reward else 'a language'} model, whose "
                         f"weights do not fit a {model_class.__name__}"
                         + (" (load it with minillm.reward.load_reward_model)." if reward
                            else "."))
    model.load_state_dict(payload["model"])
    unload(model)  # adapters merged into the weights: a plain model (no change without them)
    model.to(device).eval()
    tokenizer = None if payload["tokenizer"] is None else from_json(payload["tokenizer"])
    state = {key: value for key, value in payload.items() if key not in RESERVED_KEYS}
    return Checkpoint(model, tokenizer, state)


def model_and_tokenizer(source, tokenizer, missing: str):
    """(model, tokenizer) from a GPT, a ``Checkpoint`` or a checkpoint's path: a checkpoint
    brings its tokenizer (unless one is passed), a bare model needs ``tokenizer``, else
    ``missing`` (e.g. "sft() needs the tokenizer") starts the error."""
    if isinstance(source, str | Path):
        source = load_checkpoint(source)
    if isinstance(source, Checkpoint):
        tokenizer = tokenizer or source.tokenizer
        source = source.model
    if tokenizer is None:
        raise ValueError(f"{missing}: pass tokenizer=..., or a checkpoint that holds one.")
    return source, tokenizer


def _check_plain(value, where: str) -> None:
    """Raise a TypeError naming the first value inside ``value`` that weights_only cannot load."""
    if isinstance(value, torch.Tensor) or type(value) in _PLAIN_VALUES:
        return
    if type(value) not in _PLAIN_CONTAINERS:
        raise TypeError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}, but a "
                        f"checkpoint holds only tensors, numbers, strings, and lists or dicts "
                        f"of them, so that it loads without running code.")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, f"a key of {where}")
            _check_plain(item, f"{where}[{key!r}]")
    else:
        for k, item in enumerate(value):
            _check_plain(item, f"{where}[{k}]")
