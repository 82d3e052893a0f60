"""Lesson 08 exercises, solved: the parameters file and the code that runs it.

These are the reference implementations of the stubs in ``exercises/ex08_two_files.py``: the
same signatures and docstrings, with bodies. ``minillm.export`` has the package's versions
(``pack_header``, ``unpack_header``, ``quantize_int8``, ``dequantize_int8``) and
``minillm.numpy_runner.forward`` runs whole models the way ``block_step`` runs one block.
"""

import math
import struct

import numpy as np

MAGIC = b"MLLM"
VERSION = 1
FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_hidden", "flags",
          "dtype", "tokenizer", "n_tokens", "n_special")


def pack_header(header: dict) -> bytes:
    """The first 52 bytes of an exported model: what a reader needs before any weight.

    The 4 bytes ``MAGIC`` (b"MLLM"), then ``VERSION`` (1), then the 11 values of ``header``
    in the order of ``FIELDS``, each as an unsigned 32-bit integer in little-endian byte order
    (the least significant byte first; ``struct``'s format character ``<I``).

    Args:
        header: a dict with an int (0 to 2**32 - 1) for each name in ``FIELDS``; other keys
            are ignored.

    Returns:
        52 bytes.

    Example:
        >>> h = dict.fromkeys(FIELDS, 0) | {"vocab_size": 65, "n_embd": 258}
        >>> data = pack_header(h)
        >>> len(data), data[:12], data[24:28]
        (52, b'MLLM\\x01\\x00\\x00\\x00A\\x00\\x00\\x00', b'\\x02\\x01\\x00\\x00')
    """
    return MAGIC + struct.pack("<12I", VERSION, *(header[name] for name in FIELDS))


def unpack_header(data: bytes) -> dict:
    """Read the header that ``pack_header`` writes, refusing what it cannot trust.

    Check, in this order, and raise a ``ValueError`` with one sentence for the first that fails:
    the data starts with ``MAGIC`` (else the file is not an exported model: say so, with the
    word "not"); it has at least 52 bytes (else say "truncated"); the version is ``VERSION``
    (else name the version found, e.g. "version 2"). Bytes after the first 52 are ignored.

    Args:
        data: the start of a file (at least its first 52 bytes, if it is a good one).

    Returns:
        A dict from each name in ``FIELDS`` to its int (the magic and version are not in it).

    Example:
        >>> h = dict.fromkeys(FIELDS, 7)
        >>> unpack_header(pack_header(h) + b"weights...") == h
        True
        >>> unpack_header(b"PK\\x03\\x04 a zip file")
        Traceback (most recent call last):
        ...
        ValueError: This is not a minillm export: it does not start with b'MLLM'.
    """
    if data[:4] != MAGIC:
        raise ValueError(f"This is not a minillm export: it does not start with {MAGIC!r}.")
    if len(data) < 52:
        raise ValueError(f"The header is truncated: {len(data)} bytes of 52.")
    version, *values = struct.unpack_from("<12I", data, 4)
    if version != VERSION:
        raise ValueError(f"The file has format version {version}; this reader knows {VERSION}.")
    return dict(zip(FIELDS, values))


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8 quantization of a matrix: one float scale for each row.

    For row r, ``scale[r] = max(|w[r]|) / 127``, and ``q[r] = round(w[r] / scale[r])``, so the
    largest magnitude of the row becomes ±127 and every value is within ``scale[r] / 2`` of
    ``scale[r] * q[r]``. A row of zeros gets scale 0 and q 0 (do not divide by zero).

    Args:
        w: a (rows, cols) float array.

    Returns:
        (q, scales): q an int8 array of w's shape, scales a float32 array of shape (rows,).

    Example:
        >>> q, scales = quantize_int8(np.array([[0.5, -1.27, 0.0], [2.54, 1.0, -0.02]]))
        >>> q
        array([[  50, -127,    0],
               [ 127,   50,   -1]], dtype=int8)
        >>> scales.round(6)
        array([0.01, 0.02], dtype=float32)
    """
    w = np.asarray(w, dtype=np.float32)
    scales = (np.abs(w).max(axis=1) / 127).astype(np.float32)
    safe = np.where(scales > 0, scales, 1).astype(np.float32)
    q = np.clip(np.round(w / safe[:, None]), -127, 127).astype(np.int8)
    return q, scales


def dequantize_int8(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The float matrix that int8 values and per-row scales stand for: row r times scales[r].

    Args:
        q: a (rows, cols) int8 array; scales: a (rows,) float array.

    Returns:
        A float32 array of q's shape. (Convert q to float before multiplying: int8 arithmetic
        overflows past 127.)

    Example:
        >>> dequantize_int8(np.array([[50, -127], [127, -1]], dtype=np.int8),
        ...                 np.array([0.01, 0.02], dtype=np.float32)).round(4)
        array([[ 0.5 , -1.27],
               [ 2.54, -0.02]], dtype=float32)
    """
    return q.astype(np.float32) * np.asarray(scales, dtype=np.float32)[:, None]


def _layer_norm(x, weight, bias):
    x = x - x.mean()
    return x / np.sqrt((x * x).mean() + 1e-5) * weight + bias


def block_step(x: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, weights: dict,
               n_head: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One GPT-2 transformer block, for one new token, with a KV cache (NumPy only).

    The block is minillm's ``Block`` with its defaults (pre-norm, LayerNorm, GELU, biases):

        a = LayerNorm1(x)                        # eps 1e-5, then * weight + bias
        q, k, v = split(W_qkv a + b_qkv)         # three C-vectors, each n_head heads of D = C/H
        append k and v to the caches             # the new token attends to itself too
        head h: att = softmax(q_h . K_h^T / sqrt(D)) over the S + 1 cached positions
                y_h = att @ V_h                  # heads side by side again: y of size C
        x = x + W_proj y + b_proj                # the attention's residual
        x = x + W_fc2 GELU(W_fc a2 + b_fc) + b_fc2, with a2 = LayerNorm2(x)

    GELU is the exact one, ``0.5 * z * (1 + erf(z / sqrt(2)))`` (``math.erf``, e.g. through
    ``np.vectorize``). No causal mask is needed: the cache holds only earlier tokens. Matrices
    are (out, in) as in ``nn.Linear``: ``W @ a``. Head h of q, k or v is its slice
    ``[h * D:(h + 1) * D]``.

    Args:
        x: (C,) the new token's input to the block (the residual stream).
        k_cache, v_cache: (n_head, S, D) the keys and values of the S earlier tokens (S may be 0).
        weights: the block's parameters as NumPy arrays, named as in ``Block.state_dict()``:
            "norm1.weight", "norm1.bias", "attn.qkv.weight" (3C, C), "attn.qkv.bias",
            "attn.proj.weight" (C, C), "attn.proj.bias", "norm2.weight", "norm2.bias",
            "mlp.fc.weight" (4C, C), "mlp.fc.bias", "mlp.proj.weight" (C, 4C), "mlp.proj.bias".
        n_head: the number of heads H.

    Returns:
        (out, k_cache, v_cache): the block's output (C,) for the new token, and the caches with
        its key and value appended: (n_head, S + 1, D) each.

    Example:
        >>> C, H = 4, 2
        >>> w = {"norm1.weight": np.ones(C), "norm1.bias": np.zeros(C),
        ...      "attn.qkv.weight": np.zeros((3 * C, C)), "attn.qkv.bias": np.arange(3.0 * C),
        ...      "attn.proj.weight": np.eye(C), "attn.proj.bias": np.zeros(C),
        ...      "norm2.weight": np.ones(C), "norm2.bias": np.zeros(C),
        ...      "mlp.fc.weight": np.zeros((4 * C, C)), "mlp.fc.bias": np.zeros(4 * C),
        ...      "mlp.proj.weight": np.zeros((C, 4 * C)), "mlp.proj.bias": np.zeros(C)}
        >>> out, k, v = block_step(np.zeros(C), np.zeros((H, 0, 2)), np.zeros((H, 0, 2)), w, H)
        >>> out            # alone in the cache, the token's attention returns its own value
        array([ 8.,  9., 10., 11.])
        >>> k.shape, v[:, 0]
        ((2, 1, 2), array([[ 8.,  9.],
               [10., 11.]]))
    """
    C = x.shape[0]
    D = C // n_head
    w = weights
    a = _layer_norm(x, w["norm1.weight"], w["norm1.bias"])
    q, k, v = np.split(w["attn.qkv.weight"] @ a + w["attn.qkv.bias"], 3)
    k_cache = np.concatenate((k_cache, k.reshape(n_head, 1, D)), axis=1)
    v_cache = np.concatenate((v_cache, v.reshape(n_head, 1, D)), axis=1)
    scores = np.einsum("hd,hsd->hs", q.reshape(n_head, D), k_cache) / math.sqrt(D)
    att = np.exp(scores - scores.max(axis=1, keepdims=True))
    att /= att.sum(axis=1, keepdims=True)
    y = np.einsum("hs,hsd->hd", att, v_cache).reshape(C)
    x = x + w["attn.proj.weight"] @ y + w["attn.proj.bias"]
    h = w["mlp.fc.weight"] @ _layer_norm(x, w["norm2.weight"], w["norm2.bias"]) + w["mlp.fc.bias"]
    h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    return x + w["mlp.proj.weight"] @ h + w["mlp.proj.bias"], k_cache, v_cache
