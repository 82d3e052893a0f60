"""Lesson 03 exercises: the arithmetic and the moving parts of a pretraining run.

Implement the six functions below; each matches a section of the lesson:

1. ``flops_per_token``: what one token costs to train on (section 1);
2. ``mfu``: how much of the hardware's peak a run uses (section 2);
3. ``accumulate_gradients``: one large batch's gradient from several small ones (section 5);
4. ``adamw_param_groups``: which parameters get weight decay (section 6);
5. ``warmup_cosine_lr``: the learning-rate schedule (section 6);
6. ``fit_power_law``: a scaling law through (parameters, loss) points (section 10).

Every docstring says exactly what to return, most with an example. Check your work with

    python -m minillm.grade 03

or, from the lesson notebook, ``minillm.grade.grade("03")``.
"""

import math

import torch


def flops_per_token(n_params: int, n_layer: int, n_embd: int, block_size: int) -> int:
    """The training FLOPs (forward and backward pass) that a GPT spends on one token.

    Every parameter of a weight matrix takes part in one multiply and one add per token in the
    forward pass (2 FLOPs), and twice that in the backward pass (the gradients with respect to
    the layer's input and to its weight): 6 FLOPs per parameter and token. Attention adds two
    products that have no parameters, the scores ``q @ k.T`` and the weighted sum ``att @ v``:
    each costs 2 * block_size * n_embd FLOPs per token and layer in the forward pass, so with
    the backward pass attention adds 12 * n_layer * n_embd * block_size. Count the full
    (block_size x block_size) score matrix, as PaLM's appendix B does: no halving for the
    causal mask.

    Args:
        n_params: the parameters that take part in matrix multiplications (for minillm's GPT:
            ``model.num_params(non_embedding=True)``).
        n_layer: the number of transformer blocks.
        n_embd: the width of the residual stream (C).
        block_size: the context length (T).

    Returns:
        6 * n_params + 12 * n_layer * n_embd * block_size, as an int.

    Example:
        >>> flops_per_token(1000, n_layer=2, n_embd=8, block_size=16)
        9072
    """
    return 6 * n_params + 12 * n_layer * n_embd * block_size


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: the fraction of the hardware's peak FLOP/s that training uses.

    The model's FLOP/s are the tokens trained on per second times the FLOPs each token costs;
    MFU divides them by the peak FLOP/s of the device (PaLM, Chowdhery et al. 2022,
    appendix B). Only the FLOPs the model needs count: work that is done again (such as
    recomputing activations) does not raise MFU.

    Args:
        tokens_per_s: training throughput, in tokens per second.
        flops_per_token: training FLOPs per token (see ``flops_per_token``).
        peak_flops: the device's peak, in FLOP/s (e.g. 312e12 for an A100 in bfloat16).

    Returns:
        The utilisation as a fraction (0.4 means 40%), a float.

    Example:
        >>> mfu(tokens_per_s=100_000, flops_per_token=1e9, peak_flops=400e12)
        0.25
    """
    return tokens_per_s * flops_per_token / peak_flops


def accumulate_gradients(model: torch.nn.Module, micro_batches: list) -> float:
    """Fill ``model``'s gradients with those of the mean loss over all ``micro_batches``.

    ``model(x, y)`` returns ``(logits, loss)``, the loss being the mean over the micro-batch's
    tokens. Clear any gradients left from before (``model.zero_grad()``), then run forward and
    backward once per micro-batch, scaling each loss by 1 / len(micro_batches) before its
    backward pass, so that the gradients that PyTorch sums up are those of the mean loss. With
    equal-sized micro-batches the result is (up to rounding) the gradient of one batch holding
    all their windows, computed with a fraction of the memory. Take no optimizer step.

    Args:
        model: a module whose call ``model(x, y)`` returns ``(logits, loss)``.
        micro_batches: a list of ``(x, y)`` pairs of equal shape.

    Returns:
        The mean of the micro-batches' losses, as a Python float.
    """
    model.zero_grad()
    total = 0.0
    for x, y in micro_batches:
        _, loss = model(x, y)
        (loss / len(micro_batches)).backward()
        total += loss.item()
    return total / len(micro_batches)


def adamw_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Split ``model``'s trainable parameters into two AdamW parameter groups.

    Matrices (every parameter with 2 or more dimensions: linear weights, embeddings) get
    ``weight_decay``; vectors (biases, LayerNorm gains and biases) get none. Leave out the
    parameters that do not require gradients. Take the parameters from
    ``model.parameters()``, which yields a matrix shared by two layers (tied embeddings) once,
    so that no parameter appears twice.

    Args:
        model: any ``torch.nn.Module``.
        weight_decay: the decoupled weight decay of the matrices.

    Returns:
        ``[{"params": matrices, "weight_decay": weight_decay},
        {"params": vectors, "weight_decay": 0.0}]``, each list in ``model.parameters()``
        order; ready for ``torch.optim.AdamW(groups, lr=...)``.

    Example:
        >>> layer = torch.nn.Linear(3, 2)
        >>> groups = adamw_param_groups(layer, 0.1)
        >>> [[tuple(p.shape) for p in g["params"]] for g in groups]
        [[(2, 3)], [(2,)]]
        >>> [g["weight_decay"] for g in groups]
        [0.1, 0.0]
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine_lr(
    step: int, max_steps: int, warmup_steps: int, lr: float, min_lr: float
) -> float:
    """The learning rate of optimizer update ``step``: linear warmup, then cosine decay.

    - ``step < warmup_steps``: rise linearly from 0 at step 0, ``lr * step / warmup_steps``;
    - ``step >= max_steps``: ``min_lr``;
    - in between: half a cosine from ``lr`` at ``warmup_steps`` down to ``min_lr`` at
      ``max_steps``: ``min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2`` where
      ``p = (step - warmup_steps) / (max_steps - warmup_steps)`` runs from 0 to 1.

    Args:
        step: the update, 0 (before training) to max_steps (or beyond).
        max_steps: the length of the run, in updates.
        warmup_steps: the length of the warmup, 0 to max_steps.
        lr: the peak learning rate, reached at the end of the warmup.
        min_lr: the final learning rate.

    Returns:
        The learning rate, a float.

    Example:
        >>> [warmup_cosine_lr(s, 110, 10, 1.0, 0.1) for s in (0, 5, 10, 60, 110)]
        [0.0, 0.5, 1.0, 0.55, 0.1]
    """
    if step < warmup_steps:
        return lr * step / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / (max_steps - warmup_steps)
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2


def fit_power_law(n_params: list[float], losses: list[float]) -> tuple[float, float]:
    """Fit ``loss = a * n_params ** -alpha`` by least squares on a log-log scale.

    Taking logarithms turns the power law into a straight line,
    ``log(loss) = log(a) - alpha * log(n_params)``: fit that line to the points
    ``(log n, log loss)`` by ordinary least squares (slope and intercept minimising the sum
    of squared vertical distances), then ``alpha = -slope`` and ``a = exp(intercept)``.

    Args:
        n_params: the model sizes, at least two different ones, all positive.
        losses: the loss of each model, all positive, in the same order.

    Returns:
        ``(a, alpha)`` as floats.

    Example:
        >>> a, alpha = fit_power_law([10, 1000], [4.0, 1.0])
        >>> round(a, 6), round(alpha, 6)
        (8.0, 0.30103)
    """
    xs = [math.log(n) for n in n_params]
    ys = [math.log(v) for v in losses]
    x_mean, y_mean = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys)) / sum(
        (x - x_mean) ** 2 for x in xs
    )
    return math.exp(y_mean - slope * x_mean), -slope
