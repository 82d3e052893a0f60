"""An exported model run by NumPy alone: the forward pass and generation, no PyTorch.

It reads the file ``minillm.export`` writes and does what ``GPT.forward`` and ``GPT.generate``
do, with the same KV-cache window policy as ``minillm/run.c``, so that greedy generation gives
the same tokens as both. The window policy: with bs = block_size and slide = max(1, bs // 4),
the first step runs the last (at most bs) prompt tokens from window start s; each later step
feeds the newest token through the cache while the window [s, n) still fits in bs tokens, and
otherwise moves s to n - (bs - slide) and rebuilds the cache from the window, whose positions
start again at 0.

A model that can call the calculator (lesson 10: its tokenizer has ``<|calc|>`` and
``<|/calc|>``) gets its calls answered as ``minillm.chat.respond`` answers them, by the same
code (``minillm.tools``): after ``<|/calc|>`` the result's tokens go into the sequence as if
sampled, and the model goes on from them.
"""

from __future__ import annotations

import numpy as np

from minillm.export import FLAGS, Exported, read_export
from minillm.tools import pending_call, tool_ids, tool_result

ROPE_BASE = 10000.0


def erf(x):
    """erf to within 1.5e-7 (Abramowitz & Stegun 7.1.26); NumPy has no erf of its own."""
    x = x.astype(np.float64)
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                         + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


def norm(x, w, name, rms):
    """LayerNorm (or RMSNorm) of each row of x, eps 1e-5, with the file's weight and bias."""
    if rms:
        x = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5)
    else:
        x = x - x.mean(-1, keepdims=True)
        x = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5)
    x = x * w[name + ".weight"]
    return x + w[name + ".bias"] if name + ".bias" in w else x


def linear(x, w, name):
    y = x @ w[name + ".weight"].T  # the matrix is (out, in), as nn.Linear stores it
    return y + w[name + ".bias"] if name + ".bias" in w else y


def rotate(x, pos, D):
    """RoPE: rotate the pairs (x[i], x[i + D/2]) of (H, T, D) by pos / ROPE_BASE^(2i/D)."""
    freqs = ROPE_BASE ** (-np.arange(0, D, 2, dtype=np.float32) / D)
    angles = np.outer(pos.astype(np.float32), freqs.astype(np.float32))
    cos, sin = np.cos(angles), np.sin(angles)
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return np.concatenate((x1 * cos - x2 * sin, x1 * sin + x2 * cos), axis=-1)


def forward(m: Exported, ids, cache=None, start: int = 0):
    """Logits (T, V) for the tokens ``ids`` at positions start, start + 1, ...

    ``cache`` (from ``new_cache``) holds each layer's keys and values (H, S, D) of the S tokens
    before them; they are attended to, and this call's keys and values are appended to it.
    """
    h, w = m.header, m.weights
    H, C, flags = h["n_head"], h["n_embd"], h["flags"]
    D, T, rms = C // H, len(ids), bool(flags & FLAGS["rmsnorm"])
    pos = np.arange(start, start + T)
    x = w["tok_emb.weight"][np.asarray(ids)]
    if not flags & FLAGS["rotary"]:
        x = x + w["pos_emb.weight"][pos]
    for layer in range(h["n_layer"]):
        p = f"blocks.{layer}."
        q, k, v = linear(norm(x, w, p + "norm1", rms), w, p + "attn.qkv").reshape(
            T, 3, H, D).transpose(1, 2, 0, 3)  # three (H, T, D)
        if flags & FLAGS["rotary"]:
            q, k = rotate(q, pos, D), rotate(k, pos, D)
        if cache is not None:  # the earlier tokens' keys and values, then this call's
            k = cache[layer][0] = np.concatenate((cache[layer][0], k), axis=1)
            v = cache[layer][1] = np.concatenate((cache[layer][1], v), axis=1)
        S = k.shape[1]
        scores = q @ k.transpose(0, 2, 1) / np.float32(np.sqrt(D))  # (H, T, S)
        scores = np.where(np.tri(T, S, S - T, dtype=bool), scores, -np.inf)  # causal
        att = np.exp(scores - scores.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        x = x + linear((att @ v).transpose(1, 0, 2).reshape(T, C), w, p + "attn.proj")
        f = linear(norm(x, w, p + "norm2", rms), w, p + "mlp.fc")
        if flags & FLAGS["swiglu"]:
            gate, value = np.split(f, 2, axis=-1)
            f = gate / (1 + np.exp(-gate)) * value  # SiLU(gate) * value
        else:
            f = (0.5 * f * (1 + erf(f / np.sqrt(2)))).astype(np.float32)  # exact GELU
        x = x + linear(f, w, p + "mlp.proj")
    head = "tok_emb.weight" if flags & FLAGS["tied"] else "lm_head.weight"
    return norm(x, w, "norm_f", rms) @ w[head].T


def new_cache(m: Exported) -> list:
    h = m.header
    empty = np.zeros((h["n_head"], 0, h["n_embd"] // h["n_head"]), np.float32)
    return [[empty, empty] for _ in range(h["n_layer"])]


def sample(logits, temperature=0.0, top_k=None, top_p=None, rng=None) -> int:
    """One token id: argmax at temperature 0, else drawn after the top-k and top-p filters."""
    if temperature == 0:
        return int(np.argmax(logits))
    logits = logits.astype(np.float64) / temperature
    if top_k is not None:
        logits = np.where(logits < np.sort(logits)[-min(top_k, len(logits))], -np.inf, logits)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if top_p is not None and top_p < 1:
        order = np.argsort(-probs, kind="stable")
        before = np.cumsum(probs[order]) - probs[order]  # probability of the tokens ranked above
        probs[order[before >= top_p]] = 0
        probs /= probs.sum()
    return int((rng or np.random.default_rng()).choice(len(probs), p=probs))


def generate(m: Exported, ids, max_new_tokens: int, temperature=0.0, top_k=None, top_p=None,
             seed=None, stop=()) -> list[int]:
    """The new token ids after the prompt ``ids`` (up to ``max_new_tokens``; generation ends
    after a token in ``stop``), with the window policy of the module docstring.

    If the file's tokenizer has the tool tokens, a call closed by ``<|/calc|>`` (in ``stop`` or
    not) is answered: the result's ids (``minillm.tools.tool_result``, an error result for a
    malformed call) are appended, count towards ``max_new_tokens``, and generation goes on.
    """
    bs = m.header["block_size"]
    slide, ids = max(1, bs // 4), list(ids)
    rng = np.random.default_rng(seed)
    tokenizer = m.tokenizer()
    calls = tokenizer is not None and bool(tool_ids(tokenizer))
    s = fed = max(0, len(ids) - bs)  # the window starts at s; ids[s:fed] are in the cache
    cache = new_cache(m)
    new = []
    while len(new) < max_new_tokens:
        if len(ids) - s > bs:  # slide the window and rebuild the cache, positions from 0 again
            s = fed = len(ids) - (bs - slide)
            cache = new_cache(m)
        # The tokens the cache has not seen: the prompt, the newest token, or a call's result.
        logits = forward(m, ids[fed:], cache, start=fed - s)[-1]
        fed = len(ids)
        token = sample(logits, temperature, top_k, top_p, rng)
        ids.append(token)
        new.append(token)
        call = pending_call(new, tokenizer) if calls else None
        if call is not None:
            result = tokenizer.encode(tool_result(call))[:max_new_tokens - len(new)]
            ids += result
            new += result
        elif token in stop:
            break
    return new


def load(path) -> Exported:
    """The exported model at ``path`` (``minillm.export.read_export``)."""
    return read_export(path)
