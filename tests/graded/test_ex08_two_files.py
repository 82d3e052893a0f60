"""Graded tests for lesson 08: the parameters file and the code that runs it
(exercises/ex08_two_files.py).

Expected answers are worked out by hand (in the comments) or come from ``minillm.export`` and
``minillm.model.Block``, whose semantics are exactly the exercises'; never from the code under
test. Each test runs in well under a second.
"""

import struct

import numpy as np
import pytest
import torch
from graded_feedback import attempt

from minillm import export
from minillm.model import Block, GPTConfig

FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_hidden", "flags",
          "dtype", "tokenizer", "n_tokens", "n_special")
HEADER_RULE = ("the header is the magic b'MLLM', then the version 1 and the 11 fields in the order "
               f"{FIELDS}, each a little-endian unsigned 32-bit integer ('<I')")
UNPACK_RULE = ("unpack_header checks the magic b'MLLM' (else 'not ...') and the length (else "
               "'truncated'), reads the version from bytes 4-8 (a version other than 1: 'version "
               "N'), then the 11 fields from byte 8, each a little-endian unsigned 32-bit integer")
QUANTIZE_RULE = ("each row r gets its own scale max|w[r]| / 127 and q = round(w / scale) as int8, "
                 "so every value is within scale/2 of scale * q")
DEQUANTIZE_RULE = "row r of q times scales[r] (scales[:, None]), as float32"
BLOCK_RULE = ("append the new token's key and value to the caches first, then attend over every "
              "cached token with softmax(q k^T / sqrt(D)) in each head (head h uses features "
              "[h*D:(h+1)*D]), with a residual around the attention and around the MLP")
HEADER = {"vocab_size": 69, "block_size": 128, "n_layer": 4, "n_head": 4, "n_embd": 128,
          "mlp_hidden": 512, "flags": 16, "dtype": 2, "tokenizer": 1, "n_tokens": 69,
          "n_special": 4}


# --- Exercise 08.1: pack_header ----------------------------------------------------------------


@pytest.mark.exercise("pack_header", points=2)
def test_header_bytes_by_hand(impl):
    got = impl.pack_header(HEADER)
    assert isinstance(got, bytes) and len(got) == 52, (
        f"pack_header(...) should return 52 bytes (4 of magic, 4 of version, 11 fields of 4), "
        f"got {type(got).__name__} of length {len(got)}")
    assert got[:4] == b"MLLM", f"the file must start with the magic b'MLLM', got {got[:4]!r}"
    assert got[4:8] == b"\x01\x00\x00\x00", (
        f"bytes 4-8 are the version 1 as a little-endian u32, b'\\x01\\x00\\x00\\x00'; got "
        f"{got[4:8]!r} (b'\\x00\\x00\\x00\\x01' is big-endian: use '<I', not '>I')")
    # vocab_size 69 = 0x45 -> b"E\x00\x00\x00"; n_embd 128 at bytes 24-28; mlp_hidden 512 = 0x200
    assert got[8:12] == b"E\x00\x00\x00", (
        f"bytes 8-12 hold vocab_size=69 little-endian (b'E\\x00\\x00\\x00'), got {got[8:12]!r}")
    want = [HEADER[name] for name in FIELDS]
    values = list(struct.unpack("<11I", got[8:]))
    assert values == want, (
        f"the 11 fields must follow in the order {FIELDS}: expected {want}, got {values}")


@pytest.mark.exercise("pack_header", points=1)
def test_header_matches_minillm(impl):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        header = {name: int(rng.integers(0, 2**32)) for name in FIELDS}
        got, want = attempt(HEADER_RULE, impl.pack_header, header), export.pack_header(header)
        assert got == want, (f"for {header}, expected {want.hex()} (minillm.export.pack_header), "
                             f"got {got.hex()}: {HEADER_RULE}")


# --- Exercise 08.2: unpack_header --------------------------------------------------------------


@pytest.mark.exercise("unpack_header", points=2)
def test_unpack_reads_what_minillm_writes(impl):
    data = export.pack_header(HEADER) + b"\x00" * 100  # the tokenizer and weights follow
    got = attempt(UNPACK_RULE, impl.unpack_header, data)
    assert got == HEADER, (f"unpack_header(the 52 header bytes + 100 more) should give "
                           f"{HEADER}, got {got}: {UNPACK_RULE}")


@pytest.mark.exercise("unpack_header", points=2)
def test_unpack_refuses_bad_files_with_a_sentence(impl):
    good = export.pack_header(HEADER)
    cases = [("a zip file", b"PK\x03\x04" + good[4:], "not"),
             ("a file cut after 30 bytes", good[:30], "truncated"),
             ("a file from format version 2", good[:4] + struct.pack("<I", 2) + good[8:],
              "version 2")]
    for name, data, word in cases:
        try:
            got = impl.unpack_header(data)
        except ValueError as err:
            assert word in str(err), (f"for {name}, the ValueError should say {word!r}; it "
                                      f"says {str(err)!r}: {UNPACK_RULE}")
        else:
            raise AssertionError(f"for {name}, unpack_header should raise ValueError (saying "
                                 f"{word!r}), but it returned {got}: {UNPACK_RULE}")


# --- Exercise 08.3: quantize_int8 --------------------------------------------------------------


@pytest.mark.exercise("quantize_int8", points=2)
def test_quantize_by_hand(impl):
    w = np.array([[0.5, -1.27, 0.0], [2.54, 1.0, -0.02]], dtype=np.float32)
    # row 0: max |w| = 1.27, scale 0.01, q = [50, -127, 0]
    # row 1: max |w| = 2.54, scale 0.02, q = [127, 50, -1]
    q, scales = impl.quantize_int8(w)
    assert np.asarray(q).dtype == np.int8, f"q must be int8, got {np.asarray(q).dtype}"
    assert np.allclose(scales, [0.01, 0.02]), (
        f"scales are max|row| / 127, one per row: expected [0.01, 0.02] for {w.tolist()}, got "
        f"{np.asarray(scales).tolist()}")
    assert np.asarray(q).tolist() == [[50, -127, 0], [127, 50, -1]], (
        f"q = round(w / scale): expected [[50, -127, 0], [127, 50, -1]], got "
        f"{np.asarray(q).tolist()} (truncating instead of rounding turns 49.99 into 49)")


@pytest.mark.exercise("quantize_int8", points=2)
def test_quantize_error_is_at_most_half_a_step(impl):
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(32, 48)) * rng.uniform(0.01, 3, size=(32, 1))).astype(np.float32)
    w[5] = 0.0  # a row of zeros must stay zeros, not NaN
    q, scales = attempt(QUANTIZE_RULE, impl.quantize_int8, w)
    q, scales = np.asarray(q), np.asarray(scales, dtype=np.float32)
    assert q.shape == w.shape and scales.shape == (32,), (
        f"for a (32, 48) matrix expected q (32, 48) and scales (32,), got {q.shape} and "
        f"{scales.shape}")
    assert np.isfinite(scales).all() and (q[5] == 0).all(), (
        f"a row of zeros should get q = 0 (and a finite scale), got q {q[5][:4]}... scale "
        f"{scales[5]}")
    want_q, want_s = export.quantize_int8(w)
    assert np.allclose(scales, want_s), (
        f"each row's scale is its own max|w| / 127: expected {want_s[:3]}..., got {scales[:3]}...")
    err = np.abs(q.astype(np.float32) * scales[:, None] - w).max(axis=1)
    worst = int(np.argmax(err / np.maximum(want_s, 1e-12)))
    assert (err <= want_s / 2 + 1e-6).all(), (
        f"row {worst} is off by {err[worst]:.4g} with scale {want_s[worst]:.4g}: "
        f"{QUANTIZE_RULE}")
    assert (np.abs(q).max(axis=1)[np.arange(32) != 5] == 127).all(), (
        "each row's largest magnitude should become +-127")


# --- Exercise 08.4: dequantize_int8 ------------------------------------------------------------


@pytest.mark.exercise("dequantize_int8", points=2)
def test_dequantize_by_hand_and_without_overflow(impl):
    q = np.array([[50, -127, 0], [127, 127, -1]], dtype=np.int8)
    scales = np.array([0.01, 0.02], dtype=np.float32)
    got = np.asarray(attempt(DEQUANTIZE_RULE, impl.dequantize_int8, q, scales))
    want = np.array([[0.5, -1.27, 0.0], [2.54, 2.54, -0.02]], dtype=np.float32)
    assert got.shape == (2, 3) and np.allclose(got, want), (
        f"row r times scales[r]: expected {want.tolist()}, got {got.tolist()}")
    assert got.dtype == np.float32, f"the result should be float32, got {got.dtype}"


@pytest.mark.exercise("dequantize_int8", points=1)
def test_dequantize_undoes_minillm_quantize(impl):
    w = np.random.default_rng(1).normal(size=(8, 16)).astype(np.float32)
    q, scales = export.quantize_int8(w)
    got = np.asarray(attempt(DEQUANTIZE_RULE, impl.dequantize_int8, q, scales))
    want = export.dequantize_int8(q, scales)
    assert np.allclose(got, want, atol=1e-7), (
        f"expected minillm.export.dequantize_int8's {want[0, :3]}..., got {got[0, :3]}...")


# --- Exercise 08.5: block_step -----------------------------------------------------------------


def torch_block(seed: int, C: int = 16, H: int = 4):
    torch.manual_seed(seed)
    block = Block(GPTConfig(vocab_size=8, block_size=16, n_layer=1, n_head=H, n_embd=C)).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.4)
    weights = {k: v.detach().numpy().astype(np.float64) for k, v in block.state_dict().items()}
    return block, weights


@pytest.mark.exercise("block_step", points=2)
def test_block_step_on_a_first_token(impl):
    block, weights = torch_block(0)
    x = torch.randn(16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = block(x[None, None])[0, 0].numpy()
    empty = np.zeros((4, 0, 4))
    out, k, v = attempt(BLOCK_RULE, impl.block_step, x.numpy().astype(np.float64), empty, empty,
                        weights, 4)
    assert np.asarray(k).shape == (4, 1, 4) and np.asarray(v).shape == (4, 1, 4), (
        f"with an empty cache (4 heads, 0 tokens, D=4), the returned caches should be (4, 1, 4); "
        f"got {np.asarray(k).shape} and {np.asarray(v).shape}")
    assert np.allclose(out, want, atol=1e-4), (
        f"a first token attends only to itself: expected minillm's Block output {want[:4]}..., "
        f"got {np.asarray(out)[:4]}... (the new key and value go into the cache before "
        f"attending)")


@pytest.mark.exercise("block_step", points=3)
def test_block_step_token_by_token_equals_the_full_forward(impl):
    C, H, T = 16, 4, 7
    block, weights = torch_block(2, C, H)
    xs = torch.randn(T, C, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = block(xs[None])[0].numpy()  # causal attention over all T tokens at once
    k = v = np.zeros((H, 0, C // H))
    for t in range(T):
        out, k, v = attempt(BLOCK_RULE, impl.block_step, xs[t].numpy().astype(np.float64), k, v,
                            weights, H)
        assert np.allclose(out, want[t], atol=1e-4), (
            f"token {t}, fed after {t} cached tokens, should give the full causal forward's row "
            f"{t}: expected {want[t][:4]}..., got {np.asarray(out)[:4]}...: {BLOCK_RULE}")
    # the cache holds each token's key: LayerNorm1, then the k third of qkv, split into heads
    with torch.no_grad():
        keys = block.attn.qkv(block.norm1(xs))[:, C:2 * C].reshape(T, H, C // H)
    assert np.allclose(np.asarray(k), keys.permute(1, 0, 2).numpy(), atol=1e-5), (
        "k_cache[h, t] should be token t's key for head h (the middle third of W_qkv a + b)")
