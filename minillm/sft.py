"""Supervised finetuning (SFT): from a model that continues documents to one that answers.

The task is lesson 04's, made from the corpus in ``minillm.world``: the user names a topic and
the assistant answers with a line of Shakespeare about it, then ends its turn. The base model
already knows how to write such lines; finetuning only has to teach it the format (answer after
``<|assistant|>``, stop with ``<|end|>``) and to pick a line that fits the topic.

Training is the engine of lesson 03 unchanged: ``SFTDataset`` has the ``random_batch`` method
that ``minillm.train`` draws batches from, and its targets are ``IGNORE_INDEX`` wherever no loss
is wanted (the user's turn, padding), so the model's cross-entropy is the masked loss.

With ``lora=LoRAConfig(...)`` only low-rank adapters are trained (``minillm.lora``): the engine
builds its optimizer from the trainable parameters, so it holds the adapters alone.
"""

from __future__ import annotations

import copy

import torch

from minillm.chat import render
from minillm.checkpoint import SFT, model_and_tokenizer
from minillm.lora import LoRAConfig, add_adapters, unload
from minillm.model import GPT, IGNORE_INDEX
from minillm.train import TrainConfig, train
from minillm.world import SFTData, conversation, make_sft_data


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


def sft(base, config: TrainConfig, data: SFTData | None = None, tokenizer=None,
        lora: LoRAConfig | None = None) -> tuple[GPT, list[dict]]:
    """Finetune a copy of ``base`` on the SFT task; return (model, history).

    ``base`` is a GPT, a ``Checkpoint`` or a checkpoint's path; a checkpoint brings its tokenizer,
    a bare GPT needs ``tokenizer``. The base itself is left untouched, so both can be compared.
    ``config`` is a training run (``minillm.recipes.sft_recipe()`` is the lessons'), ``data``
    defaults to ``make_sft_data()``. With ``config.checkpoint_path`` the result is saved (and
    resumable) like any training run, marked as an assistant (stage "sft") so that
    ``python -m minillm chat`` answers with it.

    ``lora`` trains LoRA adapters on the frozen copy instead of every weight; the model returned
    has them merged in (a plain GPT). Its checkpoint holds the frozen weights and the adapters
    apart, so that the run can resume, and ``load_checkpoint`` merges them: later stages read it
    like any SFT checkpoint.

    Example::

        >>> adapters, run = minillm.recipes.lora_recipe()  # rank 4, alpha 8, lr 1e-2
        >>> model, history = sft(base_checkpoint, run, lora=adapters)
    """
    base, tokenizer = model_and_tokenizer(base, tokenizer, "sft() needs the base model's tokenizer")
    data = data or make_sft_data()
    model = copy.deepcopy(base)
    if lora is not None:
        add_adapters(model, lora)
    history = train(model, SFTDataset(data.train, tokenizer), SFTDataset(data.held_out, tokenizer),
                    config, tokenizer=tokenizer, stage=SFT)
    return unload(model), history
