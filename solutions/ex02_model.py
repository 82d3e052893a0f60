"""Lesson 02 exercises, solved: the core of a GPT, and how it picks the next token.

These are the reference implementations of the stubs in ``exercises/ex02_model.py``: the same
signatures and docstrings, with bodies. ``minillm.model`` has the package's versions of the same
ideas (``causal_attention_explicit``, ``top_k_filter``, ``top_p_filter``, ``sample_next``).
"""

import math

import torch


def causal_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal self-attention: every position takes a weighted average of the values at its own
    position and the positions before it, never after.

    With ``D = q.size(-1)``, the scores are ``q @ k^T / sqrt(D)``, a (T, T) matrix for each
    leading index. Set the scores above the diagonal (query i, key j > i: the future) to
    ``-inf``, take the softmax over the keys (the last dimension), and multiply by ``v``.
    Dividing by sqrt(D) keeps the scores' spread independent of the head size.

    Args:
        q, k, v: queries, keys and values of shape (..., T, D), e.g. (B, H, T, D); any number
            of leading dimensions.

    Returns:
        A tensor of shape (..., T, D), equal to
        ``torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)``.

    Example:
        >>> q = torch.tensor([[1.0], [3.0]]).log()  # T = 2 positions, D = 1
        >>> k = torch.tensor([[0.0], [1.0]])  # row 1's scores: 0 and log 3
        >>> v = torch.tensor([[4.0], [8.0]])
        >>> causal_self_attention(q, k, v).round(decimals=4)  # 1/4 * 4 + 3/4 * 8 = 7
        tensor([[4.],
                [7.]])
    """
    T, D = q.size(-2), q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (..., T, T): query i (row), key j (column)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(diagonal=1)
    weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    return weights @ v


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Layer normalization over the last dimension, as ``torch.nn.LayerNorm`` computes it.

    For each vector along the last dimension: subtract its mean, divide by
    ``sqrt(variance + eps)``, where the variance is the mean of the squared deviations (divide
    by C, not C - 1), then multiply by ``weight`` and add ``bias`` elementwise.

    Args:
        x: a tensor of shape (..., C).
        weight: the gain, shape (C,).
        bias: the shift, shape (C,).
        eps: added to the variance so that a constant vector does not divide by zero.

    Returns:
        A tensor of the same shape as ``x``.

    Example:
        >>> layer_norm(torch.tensor([1.0, 2.0, 3.0]), torch.ones(3), torch.zeros(3), eps=0.0)
        tensor([-1.2247,  0.0000,  1.2247])
    """
    mean = x.mean(dim=-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased: divide by C
    return (x - mean) / torch.sqrt(variance + eps) * weight + bias


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row and set all others to ``-inf``.

    A logit is kept when it is at least as large as the k-th largest value of its row, so
    logits tied with the k-th largest are kept too. A ``k`` at least the row length keeps
    everything. The input is left unchanged.

    Args:
        logits: scores of shape (B, V), one row per sequence.
        k: how many to keep per row, at least 1.

    Returns:
        A new tensor of shape (B, V).

    Example:
        >>> top_k_filter(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), 2)
        tensor([[-inf, 3., 2., -inf]])
    """
    k = min(k, logits.size(-1))
    kth_largest = logits.topk(k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus (top-p) filter: keep the most likely tokens of each row until their total
    probability reaches ``p``, and set the logits of all others to ``-inf``.

    Turn each row into probabilities with a softmax and rank the tokens from most to least
    likely. A token is kept if the probabilities of the tokens ranked above it add up to less
    than ``p``. So the most likely token is always kept, and the last kept token is the one
    that makes the sum reach ``p``. ``p = 1`` keeps every token. The input is left unchanged.

    Args:
        logits: scores of shape (B, V).
        p: the probability mass to keep, in (0, 1].

    Returns:
        A new tensor of shape (B, V).

    Example:
        >>> probs = torch.tensor([[0.2, 0.5, 0.3]])
        >>> top_p_filter(probs.log(), 0.6).exp()  # 0.5 < 0.6, so 0.3 is kept; 0.8 >= 0.6
        tensor([[0.0000, 0.5000, 0.3000]])
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_above = probs.cumsum(dim=-1) - probs  # what the better-ranked tokens already cover
    sorted_logits = sorted_logits.masked_fill(mass_above >= p, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token of each row of ``logits``.

    ``temperature == 0`` means greedy decoding: the index of the largest logit. Otherwise,
    divide the logits by ``temperature``, then apply ``top_k_filter`` (if ``top_k`` is not
    None), then ``top_p_filter`` (if ``top_p`` is not None), turn the result into probabilities
    with a softmax, and draw one index per row with ``torch.multinomial(probs, 1,
    generator=generator)``. The input is left unchanged.

    Args:
        logits: scores of shape (B, V).
        temperature: >= 0; below 1 sharpens the distribution, above 1 flattens it.
        top_k: keep only the k most likely tokens, or None.
        top_p: keep only the nucleus of probability p, or None.
        generator: a ``torch.Generator`` for reproducible draws, or None.

    Returns:
        A tensor of B token ids (dtype torch.long), shape (B,).

    Example:
        >>> sample_next(torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]]), temperature=0)
        tensor([1, 0])
        >>> sample_next(torch.tensor([[0.1, 2.0, -1.0]]), top_k=1)
        tensor([1])
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature  # a new tensor: the caller's logits stay as they were
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
