"""A GPT language model in one file: the network of lesson 02, reused by every later stage.

The defaults give GPT-2's architecture (learned positions, LayerNorm, GELU MLP, output layer
tied to the token embedding). Three switches swap in the parts most newer models use instead:
rotary positions (RoPE), RMSNorm and a SwiGLU MLP. ``GPT.from_pretrained("gpt2")`` loads
OpenAI's published GPT-2 weights (through the optional ``transformers`` package). Shapes in
comments use B = batch, T = new tokens, S = tokens attended to (T, or more with a KV cache),
C = n_embd, H = n_head, D = C // H (the head size), V = vocab_size.

What the later stages rely on:
- ``forward_hidden`` returns the final hidden states, for a reward or value head on top;
- ``attention_mask`` (1 = token, 0 = padding) makes padding invisible: padding is never attended
  to, and positions count real tokens only, so a left-padded prompt gives the same logits as the
  unpadded one;
- ``generate`` samples with temperature, top-k and top-p, stops at stop tokens, and uses a KV cache.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from minillm.validate import is_number, require, require_bools, require_positive_ints

IGNORE_INDEX = -100  # targets equal to this add nothing to the loss (padding, masked prompt tokens)
ROPE_BASE = 10000.0  # RoPE's wavelengths range from 2*pi to about 2*pi * ROPE_BASE tokens

_CHOICES = {"positions": ("learned", "rotary"), "norm": ("layernorm", "rmsnorm"),
            "mlp": ("gelu", "gelu_tanh", "swiglu")}
# GPT-2's published models on the Hugging Face hub: 124M, 355M, 774M and 1.5B parameters
GPT2_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


@dataclass
class GPTConfig:
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64, as nanoGPT does
    block_size: int = 1024  # the longest context the model sees
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in the linear layers and LayerNorms
    positions: str = "learned"  # "learned" (GPT-2) or "rotary" (RoPE)
    norm: str = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm"
    # "gelu" (exact), "gelu_tanh" (GPT-2's tanh approximation, which its weights were trained
    # with) or "swiglu"
    mlp: str = "gelu"
    tie_embeddings: bool = True  # the output layer reuses the token embedding matrix (GPT-2)

    def __post_init__(self):
        require_positive_ints(self, "vocab_size", "block_size", "n_layer", "n_head", "n_embd")
        require(self, "n_embd", self.n_embd % self.n_head == 0,
                f"divisible by n_head ({self.n_head}), since each head gets n_embd // n_head "
                f"dimensions")
        for name, allowed in _CHOICES.items():
            require(self, name, getattr(self, name) in allowed, f"one of {allowed}")
        head_size = self.n_embd // self.n_head
        require(self, "n_head", self.positions == "learned" or head_size % 2 == 0,
                f"such that the head size n_embd // n_head is even for rotary positions, and it "
                f"is {head_size}")
        require(self, "dropout", is_number(self.dropout) and 0.0 <= self.dropout < 1.0,
                "a number in [0, 1)")
        require_bools(self, "bias", "tie_embeddings")


# ----------------------------------------------------------------------------- attention

def attention_weights(q, k, mask=None):
    """softmax(q k^T / sqrt(D)) under a mask: (B, H, T, D) x (B, H, S, D) -> (B, H, T, S).

    ``mask`` is a boolean tensor broadcastable to (B, H, T, S), True where a query may look;
    None means causal: query i sees the keys up to its own position (the last T of the S keys).
    """
    T, S = q.size(-2), k.size(-2)
    # Dividing by sqrt(D) keeps the scores at unit variance whatever the head size, so the
    # softmax does not saturate into a one-hot at init.
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is None:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)


def causal_attention_explicit(q, k, v, mask=None):
    """The textbook attention, equal to ``F.scaled_dot_product_attention(q, k, v, is_causal=True)``
    when ``mask`` is None; (B, H, T, D) each -> (B, H, T, D)."""
    return attention_weights(q, k, mask) @ v


def apply_rotary(x, cos, sin):
    """Rotate the pairs (x[i], x[i + D/2]) of queries or keys by angles that grow with position.

    After rotation the dot product q.k depends on the positions only through their difference
    (RoFormer, Su et al. 2021), so attention sees relative positions. x: (B, H, T, D);
    cos, sin: (B or 1, 1, T, D/2).
    """
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class KVCache:
    """Every layer's keys and values for the tokens seen so far, in buffers of one block.

    The buffers are allocated once (no torch.cat per new token). ``valid`` marks real tokens,
    so padding stays invisible to later tokens and is not counted in their positions.
    """

    def __init__(self, config: GPTConfig, batch_size: int, device, dtype):
        shape = (config.n_layer, batch_size, config.n_head, config.block_size,
                 config.n_embd // config.n_head)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.ones(batch_size, config.block_size, dtype=torch.bool, device=device)
        self.length = 0  # tokens stored so far


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # one matmul
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x, rope=None, mask=None, kv=None, past=0, maps=None):
        B, T, C = x.shape
        # (B, T, 3C) -> three (B, H, T, D): each head attends in its own D-dimensional subspace
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if kv is not None:  # store this step's keys and values, attend to all stored so far
            kv[0][:, :, past:past + T], kv[1][:, :, past:past + T] = k, v
            k, v = kv[0][:, :, :past + T], kv[1][:, :, :past + T]
        if maps is not None:  # the explicit path, to hand the weights to an attention viewer
            att = attention_weights(q, k, mask)
            maps.append(att)
            y = att @ v
        else:  # a fused kernel (flash attention on a GPU) that never stores the (T, S) weights
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                               dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)  # heads side by side again
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        self.gelu_approximation = "tanh" if config.mlp == "gelu_tanh" else "none"
        if self.swiglu:
            # SwiGLU has three matrices where GELU has two, so a hidden size of 2/3 * 4C
            # (rounded up to a multiple of 8) keeps the parameter count about the same.
            hidden = 8 * math.ceil(8 * config.n_embd / 3 / 8)
            self.fc = nn.Linear(config.n_embd, 2 * hidden, bias=config.bias)  # gate and value
        else:
            hidden = 4 * config.n_embd
            self.fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.fc(x)
        if self.swiglu:
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        else:
            h = F.gelu(h, approximate=self.gelu_approximation)
        return self.drop(self.proj(h))


def _norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=1e-5)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


class Block(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm1, self.attn = _norm(config), CausalSelfAttention(config)
        self.norm2, self.mlp = _norm(config), MLP(config)

    def forward(self, x, rope=None, mask=None, kv=None, past=0, maps=None):
        x = x + self.attn(self.norm1(x), rope, mask, kv, past, maps)
        return x + self.mlp(self.norm2(x))


# ----------------------------------------------------------------------------- sampling

def at_least_float32(logits):
    """Half-precision (float16, bfloat16) logits as float32; float32 and float64 unchanged.

    A softmax over a whole vocabulary, or a loss averaged over many tokens, loses too much in half
    precision (bfloat16 keeps 8 significant bits); float64 stays float64, so gradcheck can work.
    """
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def top_k_filter(logits, k: int):
    """Keep the k largest logits of each row (ties at the border included), set the rest to -inf."""
    if k < 1:
        raise ValueError(f"top_k must be at least 1, not {k}.")
    kth = logits.topk(min(k, logits.size(-1)), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits, p: float):
    """Nucleus filter: keep the most likely tokens until their probability reaches p; -inf the rest.

    The most likely token always stays, so p -> 0 becomes greedy and p = 1 keeps every token.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], not {p}.")
    if p == 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    drop = probs.cumsum(dim=-1) - probs >= p  # the tokens ranked above already reach p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Draw one token id per row of (B, V) logits; temperature 0 means greedy (argmax)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, not {temperature}.")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = at_least_float32(logits) / temperature  # before top_p's softmax and cumsum
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ----------------------------------------------------------------------------- the model

class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        C = config.n_embd
        self.tok_emb = nn.Embedding(config.vocab_size, C)
        self.pos_emb = nn.Embedding(config.block_size, C) if config.positions == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = _norm(config)
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # One matrix both reads tokens in and scores them out (Press & Wolf 2017): fewer
            # parameters, and rare tokens' output rows learn from their input use too.
            self.lm_head.weight = self.tok_emb.weight
        if config.positions == "rotary":
            # angle of pair i at position t: t / ROPE_BASE^(2i/D); not saved (derived from config)
            D = C // config.n_head
            freqs = ROPE_BASE ** (-torch.arange(0, D, 2, dtype=torch.float32) / D)
            angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32), freqs)
            self.register_buffer("rope_cos", angles.cos(), persistent=False)  # (block_size, D/2)
            self.register_buffer("rope_sin", angles.sin(), persistent=False)

        # GPT-2's init: N(0, 0.02) weights, zero biases. Each block adds two residual branches
        # (attention and MLP) to the residual stream, so at init its variance grows with the
        # 2 * n_layer terms summed into it; scaling the weights that write into the stream by
        # 1/sqrt(2 * n_layer) keeps that variance independent of depth (Radford et al. 2019).
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                std = 0.02 / math.sqrt(2 * config.n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    @classmethod
    def from_pretrained(cls, name, block_size: int | None = None) -> GPT:
        """GPT-2's published weights (``GPT2_MODELS``: "gpt2", the 124M model, to "gpt2-xl") as a
        minillm GPT, in eval mode; its tokenizer is tiktoken's "gpt2" encoding, e.g.
        ``minillm.tokenizer.Tokenizer.from_tiktoken(tiktoken.get_encoding("gpt2"))``.

        Needs the optional ``transformers`` package (``pip install -e '.[hf]'``), which
        downloads the weights once into its cache. ``name`` may also be a folder where a
        ``GPT2LMHeadModel`` was saved (``save_pretrained``), or such a model already in memory:
        the same conversion, with no download (the tests use small random ones). The logits
        equal Hugging Face's to float rounding.

        ``block_size`` keeps only the first positions of GPT-2's 1024 (as nanoGPT's
        ``crop_block_size`` does): a shorter context costs nothing on short texts, and the KV
        cache of generation shrinks in proportion.

        Example::

            >>> model = GPT.from_pretrained("gpt2")
            >>> model.num_params()
            124439808
            >>> GPT.from_pretrained("gpt2", block_size=256).config.block_size
            256
        """
        if isinstance(name, str | os.PathLike):
            if name not in GPT2_MODELS and not Path(name).is_dir():
                raise ValueError(f"The published GPT-2 models are {', '.join(GPT2_MODELS)}; "
                                 f"there is no {str(name)!r} (nor a folder of that name).")
            try:
                from transformers import GPT2LMHeadModel
            except ImportError:
                raise ImportError("GPT.from_pretrained needs the transformers package: "
                                  "pip install -e '.[hf]'.") from None
            name = GPT2LMHeadModel.from_pretrained(name)
        return _from_gpt2(name, block_size)

    def num_params(self, non_embedding: bool = False) -> int:
        """The number of parameters (a tied matrix counts once).

        ``non_embedding=True`` leaves out the lookup tables: the position embedding, and the token
        embedding unless it is tied to the output layer (where it does a matmul). That is the N of
        the 6N FLOPs per token below.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.tok_emb.weight.numel()
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs (forward + backward) per token at full context: 6N + 12 * L * C * T.

        A matmul with an N-parameter weight costs 2N FLOPs per token forward and 4N backward
        (Kaplan et al. 2020, section 2.1). Attention adds q.k^T and att.v, 2 * T * C FLOPs each
        per layer and token forward, hence 3 * 4 * L * C * T with the backward. Like PaLM's
        appendix B (Chowdhery et al. 2022) and unlike Kaplan et al., this does not halve the
        attention term for the causal mask; it is the convention MFU figures are quoted in.
        """
        c = self.config
        return 6 * self.num_params(non_embedding=True) + 12 * c.n_layer * c.n_embd * c.block_size

    def _check_tokens(self, idx):
        if idx.dim() != 2:
            raise ValueError(f"idx must be a (batch, time) tensor of token ids, not shape "
                             f"{tuple(idx.shape)}.")
        if idx.size(1) == 0:
            raise ValueError("The prompt is empty: give at least one token (e.g. a newline).")
        # (skipped inside torch.compile, where this data-dependent branch would split the graph)
        out_of_vocab = (idx < 0) | (idx >= self.config.vocab_size)
        if not torch.compiler.is_compiling() and out_of_vocab.any():
            raise ValueError(f"Token ids must be in [0, {self.config.vocab_size}), but idx holds "
                             f"values from {idx.min().item()} to {idx.max().item()}.")

    def forward_hidden(self, idx, attention_mask=None, *, cache=None, maps=None):
        """Final hidden states (B, T, C), after the last norm: what the output layer, a reward head
        or a value head reads.

        ``attention_mask`` (B, T), 1 for tokens and 0 for padding, may pad on either side.
        ``cache`` (a KVCache) holds the earlier tokens' keys and values: idx then holds only the
        new ones. ``maps``, a list, collects each layer's (B, H, T, S) attention weights.
        """
        self._check_tokens(idx)
        B, T = idx.shape
        past = 0 if cache is None else cache.length
        if past + T > self.config.block_size:
            raise ValueError(f"The model sees at most block_size={self.config.block_size} tokens, "
                             f"but got {past + T}; keep only the last {self.config.block_size}.")
        valid = None  # (B, S) True for real tokens; None when all are real and nothing is cached
        if attention_mask is not None:
            if attention_mask.shape != idx.shape:
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but "
                                 f"idx has shape {tuple(idx.shape)}; they must match.")
            valid = attention_mask.bool()
        if cache is not None:
            cache.valid[:, past:past + T] = True if valid is None else valid
            valid = cache.valid[:, :past + T]

        if valid is None:  # plain causal attention: SDPA's is_causal path (flash on a GPU)
            pos, mask = torch.arange(T, device=idx.device)[None], None  # (1, T)
        else:
            # A token's position is the number of real tokens before it, so padding shifts
            # nothing and learned positions stay < block_size. Padding itself gets position 0.
            pos = (valid.long().cumsum(dim=1) - 1).clamp(min=0)[:, past:]  # (B, T)
            q_at = torch.arange(past, past + T, device=idx.device)[:, None]  # (T, 1)
            k_at = torch.arange(past + T, device=idx.device)[None]  # (1, S)
            mask = (k_at <= q_at) & valid[:, None, :]  # (B, T, S): causal, and real keys only
            # Every query also sees itself: a padding query would otherwise have no key left,
            # and a softmax over nothing is NaN (which would then spread through the backward).
            mask = (mask | (k_at == q_at))[:, None]  # (B, 1, T, S), the same for every head

        x = self.tok_emb(idx)  # (B, T, C)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(pos)
        else:
            rope = (self.rope_cos[pos][:, None], self.rope_sin[pos][:, None])  # (B|1, 1, T, D/2)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            kv = None if cache is None else (cache.keys[i], cache.values[i])
            x = block(x, rope, mask, kv, past, maps)
        if cache is not None:
            cache.length += T
        return self.norm_f(x)

    def forward(self, idx, targets=None, attention_mask=None):
        """Logits (B, T, V) for the next token at every position, and the mean cross-entropy
        against ``targets`` (B, T) if given (targets equal to IGNORE_INDEX are skipped)."""
        logits = self.lm_head(self.forward_hidden(idx, attention_mask))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(at_least_float32(logits.flatten(0, 1)), targets.flatten(),
                               ignore_index=IGNORE_INDEX)
        return logits, loss

    @torch.no_grad()
    def attention_maps(self, idx, attention_mask=None):
        """Attention weights of every layer and head: (B, n_layer, n_head, T, T)."""
        maps = []
        self.forward_hidden(idx, attention_mask, maps=maps)
        return torch.stack(maps, dim=1)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop=None,
                 attention_mask=None, use_cache=True, generator=None):
        """Extend each row of idx (B, T) by up to ``max_new_tokens`` sampled tokens: (B, T + n).

        ``stop`` is a token id or a collection of ids: once a row samples one, it repeats that
        token in later columns, and generation ends when every row has stopped, so trim each row
        after its first stop token. ``attention_mask`` marks the padding of a padded prompt batch
        (left padding is usual). Dropout is off while sampling.

        The model attends to a window idx[:, s:] of at most block_size tokens, with positions
        counted from s (and the window's mask attention_mask[:, s:], sliced like the ids).
        With ``use_cache=False`` every step runs the last block_size tokens: the reference, one
        full forward per token. With the KV cache, sliding by one token per step would cost a
        full forward per step too, since every cached key depends on the whole window (through
        positions and earlier layers). So the window grows one cached token a step up to
        block_size tokens, then restarts as the last block_size - slide tokens, where
        slide = max(1, block_size // 4): one full forward every slide + 1 tokens. Exactly:
        - first step, prompt of length P: s = max(0, P - block_size), and one forward over tokens
          [s, P) fills the cache;
        - each later step, sequence length n (the newest token is n - 1): if n - s <= block_size,
          the newest token alone runs, against the cache; otherwise s = n - (block_size - slide)
          and one forward over tokens [s, n) rebuilds the cache (with block_size 1, where that
          window would be empty, s = n - 1).
        Within the block (n <= block_size) both paths attend to the whole sequence and generate
        the same tokens; past it the cached path sees between block_size - slide and block_size
        tokens, the reference always block_size, so their tokens may differ.
        """
        self._check_tokens(idx)
        bs = self.config.block_size
        slide = max(1, bs // 4)
        keep = max(1, bs - slide)  # tokens in the window just after it slides
        stop_ids = None
        if stop is not None:
            stop_ids = torch.tensor([stop] if isinstance(stop, int) else sorted(stop),
                                    device=idx.device, dtype=idx.dtype)
        valid = None if attention_mask is None else attention_mask.bool()
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        cache, s = None, 0  # the window is idx[:, s:]
        was_training = self.training
        self.eval()
        try:
            for _ in range(max_new_tokens):
                n = idx.size(1)
                if cache is not None and n - s <= bs:  # the cache holds the window but the newest
                    h = self.forward_hidden(idx[:, -1:], cache=cache)
                else:  # first step, no cache, or the window outgrew the block
                    s = max(0, n - bs) if cache is None else n - keep
                    window_mask = None if valid is None else valid[:, s:]
                    cache = KVCache(self.config, idx.size(0), idx.device,
                                    self.lm_head.weight.dtype) if use_cache else None
                    h = self.forward_hidden(idx[:, s:], window_mask, cache=cache)
                next_id = sample_next(self.lm_head(h[:, -1]), temperature, top_k, top_p,
                                      generator)
                if stop_ids is not None:
                    next_id = torch.where(done, idx[:, -1], next_id)
                    done |= torch.isin(next_id, stop_ids)
                idx = torch.cat((idx, next_id[:, None]), dim=1)
                if valid is not None:
                    valid = torch.cat((valid, torch.ones_like(valid[:, :1])), dim=1)
                if done.all():
                    break
        finally:
            self.train(was_training)
        return idx


# ----------------------------------------------------------------------------- GPT-2's weights

# Hugging Face's names for GPT-2's modules -> ours (the same network, other names)
_GPT2_NAMES = {"wte": "tok_emb", "wpe": "pos_emb", "ln_f": "norm_f", "ln_1": "norm1",
               "ln_2": "norm2", "c_attn": "qkv", "c_proj": "proj", "c_fc": "fc"}
_GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def _from_gpt2(hf_model, block_size: int | None = None) -> GPT:
    """A GPT with the weights of a Hugging Face ``GPT2LMHeadModel`` (and its first
    ``block_size`` positions, if given)."""
    c = hf_model.config
    block_size = c.n_positions if block_size is None else block_size
    if not (isinstance(block_size, int) and 1 <= block_size <= c.n_positions):
        raise ValueError(f"block_size keeps some of the model's {c.n_positions} positions: it "
                         f"must be an integer from 1 to {c.n_positions}, not {block_size!r}.")
    unsupported = {"activation_function": c.activation_function not in _GPT2_ACTIVATIONS,
                   "n_inner": c.n_inner not in (None, 4 * c.n_embd),
                   "layer_norm_epsilon": c.layer_norm_epsilon != 1e-5,  # nn.LayerNorm's
                   "scale_attn_by_inverse_layer_idx": c.scale_attn_by_inverse_layer_idx,
                   "scale_attn_weights": not c.scale_attn_weights}
    differs = [name for name, differ in unsupported.items() if differ]
    if differs:
        raise ValueError(f"This GPT-2 variant's {', '.join(differs)} differs from GPT-2's, "
                         f"which minillm's GPT implements.")
    config = GPTConfig(vocab_size=c.vocab_size, block_size=block_size, n_layer=c.n_layer,
                       n_head=c.n_head, n_embd=c.n_embd, dropout=0.0, bias=True,
                       mlp=_GPT2_ACTIVATIONS[c.activation_function], tie_embeddings=True)
    state = {}
    for key, value in hf_model.state_dict().items():
        if re.fullmatch(r"transformer\.h\.\d+\.attn\.(masked_)?bias", key):
            continue  # the causal mask, stored as a buffer by older versions of transformers
        parts = [_GPT2_NAMES.get(part, part) for part in key.split(".")]
        if parts[0] == "transformer":
            parts = parts[1:]
        if parts[0] == "h":
            parts[0] = "blocks"
        name = ".".join(parts)
        # GPT-2's linear layers are Conv1D modules, whose weight is stored (in, out): the
        # transpose of nn.Linear's (out, in).
        if name.endswith(("qkv.weight", "proj.weight", "fc.weight")):
            value = value.t()
        if name == "pos_emb.weight":  # a shorter context needs only the first positions
            value = value[:block_size]
        state[name] = value
    model = GPT(config)
    model.load_state_dict(state)
    return model.eval()


def grow_vocabulary(model: GPT, vocab_size: int, seed: int = 0) -> GPT:
    """A copy of ``model`` that reads and writes ``vocab_size`` tokens: the old ids keep their
    embeddings, and each new token starts as a draw from a normal distribution with the old
    embeddings' mean and spread (per dimension; Hewitt 2021 suggests the mean). The mean keeps
    the new tokens' first logits ordinary; the spread tells them apart, so that finetuning
    need not first break their symmetry. (With tied embeddings the output row is the same.)
    """
    old = model.config.vocab_size
    if vocab_size < old:
        raise ValueError(f"The vocabulary can only grow: the model has {old} tokens, not "
                         f"fewer ({vocab_size}).")
    grown = GPT(GPTConfig(**{**model.config.__dict__, "vocab_size": vocab_size}))
    state = model.state_dict()
    draws = torch.Generator().manual_seed(seed)
    for name in ("tok_emb.weight", "lm_head.weight"):
        rows = state[name].float().cpu()
        new = torch.randn(vocab_size - old, rows.size(1), generator=draws)
        new = rows.mean(0) + new * rows.std(0)
        state[name] = torch.cat([state[name], new.to(state[name])])
    grown.load_state_dict(state)
    return grown.to(next(model.parameters()).device).train(model.training)
