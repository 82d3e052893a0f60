"""A language model is two files: this one writes and reads the first, the parameters file.

``export`` turns any course checkpoint of a language model (base, SFT, PPO/GRPO/DPO policy;
character or BPE tokenizer; every architecture switch of ``GPTConfig``) into one flat binary
file that a C program of under 500 lines (``minillm/run.c``) or a NumPy forward pass
(``minillm/numpy_runner.py``) can run with no PyTorch. ``read_export`` reads it back, into NumPy
arrays (``load``) or into a ``GPT`` (``to_gpt``), whose logits equal the checkpoint's bit for
bit when the weights were written as fp32.

The file, byte by byte. Every integer is an unsigned 32-bit little-endian number ("u32"),
every float a little-endian IEEE 754 number, and nothing is padded or aligned::

    offset  size  field
         0     4  magic: the bytes b"MLLM"
         4     4  version: 1 (a reader refuses a larger one)
         8     4  vocab_size     V   rows of the embedding and of the output layer
        12     4  block_size     T   the longest context (rows of the position table)
        16     4  n_layer        L
        20     4  n_head         H   (head size D = C / H)
        24     4  n_embd         C
        28     4  mlp_hidden     F   the MLP's hidden width (4C for GELU; SwiGLU's, see model.py)
        32     4  flags          bit 0: biases; bit 1: rotary positions (else learned);
                                 bit 2: RMSNorm (else LayerNorm); bit 3: SwiGLU (else GELU);
                                 bit 4: output layer tied to the token embedding
        36     4  dtype          0: fp32, 1: fp16, 2: int8 (of the matrices; see below)
        40     4  tokenizer      0: none, 1: characters, 2: byte-level BPE
        44     4  n_tokens       N   entries in the token table (at most V)
        48     4  n_special      S
        52   4*S  the ids of the special tokens ("<|user|>", "<|end|>", ...)
         .        N tokens, for id 0, 1, ..., N-1: u32 length, then that many bytes (UTF-8
                  text of the token; length 0 for an id no token has)
         .        u32 length, then the BPE split pattern (UTF-8; length 0 for characters)
         .        the weights, each tensor right after the one before, in this order:
                    tok_emb.weight (V, C); pos_emb.weight (T, C) if learned positions;
                    for each layer l = 0..L-1, with p = "blocks.l.":
                      p+norm1.weight (C), p+norm1.bias (C) if LayerNorm with biases;
                      p+attn.qkv.weight (3C, C), p+attn.qkv.bias (3C) if biases;
                      p+attn.proj.weight (C, C), p+attn.proj.bias (C) if biases;
                      p+norm2.weight (C), p+norm2.bias (C) as norm1;
                      p+mlp.fc.weight (F, C) or (2F, C) for SwiGLU (gate rows, then value
                      rows), p+mlp.fc.bias if biases;
                      p+mlp.proj.weight (C, F), p+mlp.proj.bias (C) if biases;
                    norm_f.weight (C), norm_f.bias (C) as norm1;
                    lm_head.weight (V, C) unless tied.
                  The file ends right after the last tensor.

Vectors (norm weights, biases) are always fp32. Matrices (every 2-D tensor, the embedding
tables included) are stored row after row in the file's dtype: fp32 or fp16 values; for int8,
first one fp32 scale per row, then the int8 values of all rows. Row r is ``scale[r] * q[r]``,
with ``scale = max|row| / 127`` and ``q = round(row / scale)`` (symmetric, per-row).
A linear layer's matrix is (out, in), as ``nn.Linear`` keeps it: y = W x + b.
"""

from __future__ import annotations

import math
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minillm.files import atomic_write

MAGIC = b"MLLM"
VERSION = 1
HEADER_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_hidden",
                 "flags", "dtype", "tokenizer", "n_tokens", "n_special")
HEADER_SIZE = 8 + 4 * len(HEADER_FIELDS)  # 52 bytes
DTYPES = {"fp32": 0, "fp16": 1, "int8": 2}
FLAGS = {"bias": 1, "rotary": 2, "rmsnorm": 4, "swiglu": 8, "tied": 16}
TOKENIZERS = {"none": 0, "char": 1, "bpe": 2}


class ExportError(ValueError):
    """A file that is not a readable minillm export (the message is one sentence)."""


# ----------------------------------------------------------------------------- the header

def pack_header(header: dict) -> bytes:
    """The first 52 bytes: magic, version and the 11 ``HEADER_FIELDS`` as little-endian u32."""
    return MAGIC + struct.pack("<12I", VERSION, *(header[name] for name in HEADER_FIELDS))


def unpack_header(data: bytes, name: str = "the data") -> dict:
    """The fields of ``pack_header``; an ExportError for a foreign, future or short file."""
    if len(data) < 4 or data[:4] != MAGIC:
        raise ExportError(f"{name} is not a minillm export (it does not start with {MAGIC!r}).")
    if len(data) < HEADER_SIZE:
        raise ExportError(f"{name} is truncated: it ends inside the {HEADER_SIZE}-byte header.")
    version, *values = struct.unpack_from("<12I", data, 4)
    if version != VERSION:
        raise ExportError(f"{name} has format version {version}, but this minillm reads version "
                          f"{VERSION}; update minillm to read it.")
    return dict(zip(HEADER_FIELDS, values))


def mlp_hidden(config) -> int:
    """The MLP's hidden width F, as ``minillm.model.MLP`` computes it."""
    if config.mlp == "swiglu":
        return 8 * math.ceil(8 * config.n_embd / 3 / 8)
    return 4 * config.n_embd


def layout(h: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor of the file, in order: (state-dict name, shape), from the header ``h``."""
    C, F, flags = h["n_embd"], h["mlp_hidden"], h["flags"]
    bias, layernorm = bool(flags & FLAGS["bias"]), not flags & FLAGS["rmsnorm"]
    fc_rows = 2 * F if flags & FLAGS["swiglu"] else F

    def norm(prefix):
        return [(prefix + ".weight", (C,))] + ([(prefix + ".bias", (C,))] if bias and layernorm
                                               else [])

    def linear(prefix, rows, cols):
        return [(prefix + ".weight", (rows, cols))] + ([(prefix + ".bias", (rows,))] if bias
                                                       else [])

    tensors = [("tok_emb.weight", (h["vocab_size"], C))]
    if not flags & FLAGS["rotary"]:
        tensors.append(("pos_emb.weight", (h["block_size"], C)))
    for layer in range(h["n_layer"]):
        p = f"blocks.{layer}."
        tensors += (norm(p + "norm1") + linear(p + "attn.qkv", 3 * C, C)
                    + linear(p + "attn.proj", C, C) + norm(p + "norm2")
                    + linear(p + "mlp.fc", fc_rows, C) + linear(p + "mlp.proj", C, F))
    tensors += norm("norm_f")
    if not flags & FLAGS["tied"]:
        tensors.append(("lm_head.weight", (h["vocab_size"], C)))
    return tensors


def tensor_bytes(shape: tuple[int, ...], dtype: int) -> int:
    """Bytes one tensor takes in the file."""
    n = int(np.prod(shape))
    if len(shape) == 1 or dtype == DTYPES["fp32"]:
        return 4 * n
    if dtype == DTYPES["fp16"]:
        return 2 * n
    return 4 * shape[0] + n  # int8: a scale per row, then a byte per value


# ----------------------------------------------------------------------------- int8

def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: (q, scales) with ``w[r] ~ scales[r] * q[r]`` and |q| <= 127."""
    w = np.asarray(w, dtype=np.float32)
    scales = (np.abs(w).max(axis=1) / 127).astype(np.float32)
    safe = np.where(scales > 0, scales, 1).astype(np.float32)  # an all-zero row stays zero
    q = np.clip(np.round(w / safe[:, None]), -127, 127).astype(np.int8)
    return q, scales


def dequantize_int8(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The float32 matrix an int8 matrix stands for: row r times scales[r]."""
    return q.astype(np.float32) * scales.astype(np.float32)[:, None]


def encode_tensor(w: np.ndarray, dtype: int) -> bytes:
    """One tensor as the file stores it (little-endian)."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim == 1 or dtype == DTYPES["fp32"]:
        return w.astype("<f4").tobytes()
    if dtype == DTYPES["fp16"]:
        return w.astype("<f2").tobytes()
    q, scales = quantize_int8(w)
    return scales.astype("<f4").tobytes() + q.tobytes()


def decode_tensor(data: bytes, offset: int, shape: tuple[int, ...], dtype: int) -> np.ndarray:
    """The float32 values of one tensor stored at ``offset`` (fp16 and int8 dequantized)."""
    n = int(np.prod(shape))
    if len(shape) == 1 or dtype == DTYPES["fp32"]:
        return np.frombuffer(data, "<f4", n, offset).astype(np.float32).reshape(shape)
    if dtype == DTYPES["fp16"]:
        return np.frombuffer(data, "<f2", n, offset).astype(np.float32).reshape(shape)
    scales = np.frombuffer(data, "<f4", shape[0], offset)
    q = np.frombuffer(data, np.int8, n, offset + 4 * shape[0]).reshape(shape)
    return dequantize_int8(q, scales)


# ----------------------------------------------------------------------------- writing

def header_of(config, tokenizer, dtype: str) -> dict:
    """The header fields of a GPTConfig, its tokenizer (or None) and a dtype name."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, not {dtype!r}.")
    if config.mlp == "gelu_tanh":
        raise ValueError("The runners compute the exact GELU, and this model was trained with "
                         "GPT-2's tanh approximation (mlp='gelu_tanh'), so it cannot be exported.")
    flags = ((config.bias and FLAGS["bias"]) | (config.positions == "rotary" and FLAGS["rotary"])
             | (config.norm == "rmsnorm" and FLAGS["rmsnorm"])
             | (config.mlp == "swiglu" and FLAGS["swiglu"])
             | (config.tie_embeddings and FLAGS["tied"]))
    kind = "none" if tokenizer is None else "char" if hasattr(tokenizer, "chars") else "bpe"
    return {"vocab_size": config.vocab_size, "block_size": config.block_size,
            "n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
            "mlp_hidden": mlp_hidden(config), "flags": int(flags), "dtype": DTYPES[dtype],
            "tokenizer": TOKENIZERS[kind],
            "n_tokens": 0 if tokenizer is None else tokenizer.vocab_size,
            "n_special": 0 if tokenizer is None else len(tokenizer.special_tokens)}


def tokenizer_bytes(tokenizer) -> bytes:
    """The special ids, the token table and the split pattern, as the format lays them out."""
    if tokenizer is None:
        return struct.pack("<I", 0)
    out = [struct.pack(f"<{len(tokenizer.special_tokens)}I",
                       *sorted(tokenizer.special_tokens.values()))]
    for i in range(tokenizer.vocab_size):
        try:
            token = tokenizer.token_bytes(i)
        except ValueError:  # an id no token has
            token = b""
        out.append(struct.pack("<I", len(token)) + token)
    pattern = getattr(tokenizer, "pattern", "").encode("utf-8")
    out.append(struct.pack("<I", len(pattern)) + pattern)
    return b"".join(out)


def _language_model(source, tokenizer):
    """(GPT, tokenizer) from a checkpoint path, a Checkpoint or a GPT; one sentence otherwise."""
    from minillm.checkpoint import Checkpoint, load_checkpoint
    from minillm.model import GPT

    if isinstance(source, str | Path):
        try:
            source = load_checkpoint(source)
        except ValueError as err:
            if "reward" in str(err):
                raise ValueError(f"{source} is a reward model: it scores text rather than "
                                 f"writing it, so there is nothing for a runner to generate; "
                                 f"export a language model (base, SFT, PPO, GRPO or DPO)."
                                 ) from None
            raise
    if isinstance(source, Checkpoint):
        tokenizer = tokenizer or source.tokenizer
        source = source.model
    if type(source) is not GPT:
        raise ValueError(f"Only a minillm GPT language model exports, not a "
                         f"{type(source).__name__}.")
    return source, tokenizer


def export(source, path, dtype: str = "fp32", tokenizer=None) -> Path:
    """Write ``source`` (a checkpoint's path, a ``Checkpoint`` or a ``GPT``) to ``path`` in the
    format of the module docstring, with its tokenizer (a checkpoint's own, unless one is given).
    ``dtype``: "fp32", "fp16" or "int8" for the matrices. Returns the path."""
    model, tokenizer = _language_model(source, tokenizer)
    h = header_of(model.config, tokenizer, dtype)
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    with atomic_write(path) as f:
        f.write(pack_header(h))
        f.write(tokenizer_bytes(tokenizer))
        for name, shape in layout(h):
            if state[name].shape != shape:  # cannot happen for a GPT; guards the layout
                raise AssertionError(f"{name}: {state[name].shape} != {shape}")
            f.write(encode_tensor(state[name], h["dtype"]))
    return Path(path)


# ----------------------------------------------------------------------------- reading

@dataclass
class Exported:
    """A file read back: its header, tokenizer table and float32 weights (NumPy, by name)."""
    header: dict
    special: list[int] = field(default_factory=list)  # the special tokens' ids
    tokens: list[bytes] = field(default_factory=list)  # the bytes of token 0, 1, ...
    pattern: str = ""
    weights: dict = field(default_factory=dict)
    size: int = 0  # bytes

    @property
    def dtype(self) -> str:
        return {v: k for k, v in DTYPES.items()}[self.header["dtype"]]

    def config(self):
        """The ``GPTConfig`` the file was written from."""
        from minillm.model import GPTConfig

        h, flags = self.header, self.header["flags"]
        return GPTConfig(vocab_size=h["vocab_size"], block_size=h["block_size"],
                         n_layer=h["n_layer"], n_head=h["n_head"], n_embd=h["n_embd"],
                         bias=bool(flags & FLAGS["bias"]),
                         positions="rotary" if flags & FLAGS["rotary"] else "learned",
                         norm="rmsnorm" if flags & FLAGS["rmsnorm"] else "layernorm",
                         mlp="swiglu" if flags & FLAGS["swiglu"] else "gelu",
                         tie_embeddings=bool(flags & FLAGS["tied"]))

    def tokenizer(self):
        """The tokenizer rebuilt from the token table (None if the file has none)."""
        from minillm.tokenizer import CharTokenizer, Tokenizer

        kind = self.header["tokenizer"]
        if kind == TOKENIZERS["none"]:
            return None
        special = {self.tokens[i].decode("utf-8"): i for i in self.special}
        if kind == TOKENIZERS["char"]:
            plain = [(i, t.decode("utf-8")) for i, t in enumerate(self.tokens)
                     if i not in self.special]
            # Characters added after the special tokens (lesson 10's digits) keep their ids.
            chars = "".join(c for k, (i, c) in enumerate(plain) if i == k)
            added = {c: i for k, (i, c) in enumerate(plain) if i != k}
            return CharTokenizer(chars, special, added)
        ranks = {t: i for i, t in enumerate(self.tokens) if t and i not in self.special}
        return Tokenizer(ranks, self.pattern, special)

    def to_gpt(self):
        """A ``GPT`` holding the file's weights (fp16 and int8 dequantized to float32)."""
        import torch

        from minillm.model import GPT

        model = GPT(self.config())
        state = model.state_dict()
        for name, value in self.weights.items():
            state[name] = torch.from_numpy(value.copy())
        if self.header["flags"] & FLAGS["tied"]:
            state["lm_head.weight"] = state["tok_emb.weight"]
        model.load_state_dict(state)
        return model.eval()


def read_export(path) -> Exported:
    """Read a file written by ``export``; an ExportError (one sentence) for a foreign, future,
    truncated or overlong file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No exported model at {path}.")
    data = path.read_bytes()
    name = path.name
    h = unpack_header(data, name)
    sizes = [h[k] for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd",
                            "mlp_hidden")]
    if (min(sizes) < 1 or max(sizes) > 2**24 or h["n_layer"] > 4096 or h["n_embd"] % h["n_head"]
            or h["dtype"] not in DTYPES.values() or h["tokenizer"] not in TOKENIZERS.values()
            or h["n_special"] > h["n_tokens"] or h["n_tokens"] > h["vocab_size"]
            or (h["tokenizer"] == TOKENIZERS["none"]) != (h["n_tokens"] == 0)
            or h["flags"] >= 2 * max(FLAGS.values())):
        raise ExportError(f"{name} has a damaged header (impossible sizes).")
    offset = HEADER_SIZE

    def take(n: int) -> bytes:
        nonlocal offset
        if offset + n > len(data):
            raise ExportError(f"{name} is truncated: it ends at byte {len(data):,}, inside its "
                              f"tokenizer table.")
        offset += n
        return data[offset - n:offset]

    special = list(struct.unpack(f"<{h['n_special']}I", take(4 * h["n_special"])))
    tokens = [take(struct.unpack("<I", take(4))[0]) for _ in range(h["n_tokens"])]
    pattern = take(struct.unpack("<I", take(4))[0]).decode("utf-8")
    tensors = layout(h)
    expected = offset + sum(tensor_bytes(shape, h["dtype"]) for _, shape in tensors)
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise ExportError(f"{name} is {what}: its header promises {expected:,} bytes, and it "
                          f"has {len(data):,}.")
    weights = {}
    for tensor_name, shape in tensors:
        weights[tensor_name] = decode_tensor(data, offset, shape, h["dtype"])
        offset += tensor_bytes(shape, h["dtype"])
    return Exported(h, special, tokens, pattern, weights, len(data))


def encode_prompt(exported: Exported, text: str) -> list[int]:
    """A prompt's ids with the file's own tokenizer (special-token text stays plain text)."""
    tok = exported.tokenizer()
    if tok is None:
        raise ValueError("This file holds no tokenizer: pass token ids instead of text.")
    return tok.encode(text)


# ----------------------------------------------------------------------------- measuring

def held_out_bits(model, ids, batch_size: int = 32) -> float:
    """Mean bits per token of ``model`` on ``ids`` (a 1-D tensor), cut into windows of
    block_size tokens, each predicted from its own start; for a character model, bits per
    character."""
    import torch

    bs = model.config.block_size
    n = (len(ids) - 1) // bs
    x, y = ids[:n * bs].view(n, bs), ids[1:n * bs + 1].view(n, bs)
    total = 0.0
    model.eval()
    with torch.no_grad():
        for i in range(0, n, batch_size):
            _, loss = model(x[i:i + batch_size], y[i:i + batch_size])
            total += loss.item() * len(x[i:i + batch_size])
    return total / n / math.log(2)


def memory_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """This machine's memory bandwidth in bytes per second: the best of ``repeats`` copies of a
    ``megabytes`` array (each copy reads and writes every byte, so it moves twice its size)."""
    a = np.ones(megabytes * 2**20 // 8)
    b = np.empty_like(a)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - start)
    return 2 * a.nbytes / best
