"""Graded tests for lesson 02: attention, layer norm and sampling (exercises/ex02_model.py).

Expected answers are worked out by hand (in the comments), or come from PyTorch's own functions
(``scaled_dot_product_attention``, ``layer_norm``), never from the code under test. Each test
runs in well under a second.
"""

import math

import pytest
import torch
import torch.nn.functional as F

# The exercises that each exercise calls: when those fail too, the grader says to fix them first.
EXERCISE_CALLS = {"sample_next": ("top_k_filter", "top_p_filter")}

INF = float("inf")


def random_tensors(*shape, count=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator) for _ in range(count)]


# --- Exercise 02.1: causal_self_attention ----------------------------------------------------


@pytest.mark.exercise("causal_self_attention", points=2)
def test_attention_by_hand(impl):
    # D = 1, so the scale is 1. Row 0 sees only key 0: its output is v[0]. Row 1's scores are
    # log 3 * 0 = 0 and log 3 * 1 = log 3: softmax weights 1/4 and 3/4, output 1 + 6 = 7.
    q = torch.tensor([[0.0], [math.log(3)]])
    k = torch.tensor([[0.0], [1.0]])
    v = torch.tensor([[4.0], [8.0]])
    out = impl.causal_self_attention(q, k, v)
    assert out.shape == (2, 1), f"expected shape (2, 1), got {tuple(out.shape)}"
    assert torch.allclose(out, torch.tensor([[4.0], [7.0]]), atol=1e-5), (
        f"expected [[4], [7]] (row 1 weighs the values 1/4 and 3/4), got {out.tolist()}"
    )


@pytest.mark.exercise("causal_self_attention", points=1)
def test_attention_divides_by_sqrt_of_head_size(impl):
    # D = 4, so the raw score 2 * log 3 becomes log 3 after dividing by sqrt(4) = 2: again 7.
    q = torch.tensor([[0.0, 0, 0, 0], [2 * math.log(3), 0, 0, 0]])
    k = torch.tensor([[0.0, 0, 0, 0], [1.0, 0, 0, 0]])
    v = torch.tensor([[4.0, 0, 0, 0], [8.0, 0, 0, 0]])
    out = impl.causal_self_attention(q, k, v)
    assert torch.allclose(out[1, 0], torch.tensor(7.0), atol=1e-5), (
        f"expected 7 (scores divided by sqrt(D) = 2), got {out[1, 0].item():.4f}"
    )


@pytest.mark.exercise("causal_self_attention", points=2)
def test_attention_matches_pytorch(impl):
    for shape in [(2, 3, 7, 8), (5, 16), (1, 1, 1, 4)]:
        q, k, v = random_tensors(*shape)
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out = impl.causal_self_attention(q, k, v)
        assert out.shape == expected.shape, f"shape {tuple(out.shape)} for inputs {shape}"
        assert torch.allclose(out, expected, atol=1e-5), (
            f"differs from F.scaled_dot_product_attention(is_causal=True) for shape {shape}"
        )


@pytest.mark.exercise("causal_self_attention", points=2)
def test_attention_never_looks_ahead(impl):
    q, k, v = random_tensors(2, 4, 9, 8, seed=1)
    out = impl.causal_self_attention(q, k, v)
    k2, v2 = k.clone(), v.clone()
    k2[..., 5:, :] += 10.0  # change the keys and values of positions 5 to 8 only
    v2[..., 5:, :] -= 10.0
    out2 = impl.causal_self_attention(q, k2, v2)
    assert torch.allclose(out[..., :5, :], out2[..., :5, :], atol=1e-5), (
        "changing positions 5 and later changed the output at earlier positions: mask the future"
    )
    assert not torch.allclose(out[..., 5:, :], out2[..., 5:, :]), (
        "positions 5 and later must see their own (changed) keys and values"
    )


# --- Exercise 02.2: layer_norm ---------------------------------------------------------------


@pytest.mark.exercise("layer_norm", points=2)
def test_layer_norm_by_hand(impl):
    # [1, 2, 3]: mean 2, variance (1 + 0 + 1) / 3 = 2/3,
    # so (x - 2) / sqrt(2/3) = [-1.2247, 0, 1.2247]
    x = torch.tensor([[1.0, 2.0, 3.0]])
    out = impl.layer_norm(x, torch.ones(3), torch.zeros(3), eps=0.0)
    expected = torch.tensor([[-math.sqrt(1.5), 0.0, math.sqrt(1.5)]])
    assert torch.allclose(out, expected, atol=1e-5), (
        f"expected {expected.tolist()}, got {out.tolist()} (divide the variance by C, not C - 1)"
    )


@pytest.mark.exercise("layer_norm", points=1)
def test_layer_norm_applies_gain_and_shift(impl):
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 16.0]])
    weight, bias = torch.tensor([2.0, 1.0, -1.0]), torch.tensor([0.5, 0.0, 1.0])
    # row 1: mean 12, variance (4 + 4 + 16) / 3 = 8: normalized [-1, -1, 2] / sqrt(2)
    r = math.sqrt(1.5)
    s = 1 / math.sqrt(2)
    expected = torch.tensor([[-2 * r + 0.5, 0.0, -r + 1.0], [-2 * s + 0.5, -s, -2 * s + 1.0]])
    out = impl.layer_norm(x, weight, bias, eps=0.0)
    assert torch.allclose(out, expected, atol=1e-5), f"expected {expected.tolist()}, got {out}"


@pytest.mark.exercise("layer_norm", points=2)
def test_layer_norm_matches_pytorch(impl):
    x, weight, bias = random_tensors(4, 5, 16, seed=2)
    weight, bias = weight[0, 0], bias[0, 0]
    for eps in (1e-5, 0.1):
        expected = F.layer_norm(x, (16,), weight, bias, eps=eps)
        out = impl.layer_norm(x, weight, bias, eps=eps)
        assert out.shape == x.shape
        assert torch.allclose(out, expected, atol=1e-5), f"differs from F.layer_norm (eps={eps})"


@pytest.mark.exercise("layer_norm", points=1)
def test_layer_norm_of_a_constant_vector(impl):
    out = impl.layer_norm(torch.full((2, 8), 3.0), torch.ones(8), torch.full((8,), 0.25))
    assert torch.isfinite(out).all(), "a constant vector must not divide by zero: add eps"
    assert torch.allclose(out, torch.full((2, 8), 0.25)), "a constant vector normalizes to 0"


# --- Exercise 02.3: top_k_filter -------------------------------------------------------------


@pytest.mark.exercise("top_k_filter", points=2)
def test_top_k_keeps_the_largest(impl):
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [5.0, -1.0, 4.0, 4.5]])
    out = impl.top_k_filter(logits, 2)
    expected = torch.tensor([[-INF, 3.0, 2.0, -INF], [5.0, -INF, -INF, 4.5]])
    assert torch.equal(out, expected), f"expected {expected.tolist()}, got {out.tolist()}"
    assert torch.equal(
        impl.top_k_filter(logits, 1),
        torch.tensor([[-INF, 3.0, -INF, -INF], [5.0, -INF, -INF, -INF]]),
    )


@pytest.mark.exercise("top_k_filter", points=1)
def test_top_k_edge_cases(impl):
    logits = torch.tensor([[1.0, 2.0, 2.0, 0.0]])
    assert torch.equal(impl.top_k_filter(logits, 4), logits), "k = V keeps everything"
    assert torch.equal(impl.top_k_filter(logits, 10), logits), "k > V keeps everything"
    assert torch.equal(impl.top_k_filter(logits, 2), torch.tensor([[-INF, 2.0, 2.0, -INF]]))
    assert torch.equal(impl.top_k_filter(logits, 1), torch.tensor([[-INF, 2.0, 2.0, -INF]])), (
        "logits tied with the k-th largest are kept"
    )


@pytest.mark.exercise("top_k_filter", points=1)
def test_top_k_on_random_rows(impl):
    (logits,) = random_tensors(8, 100, count=1, seed=3)
    before = logits.clone()
    out = impl.top_k_filter(logits, 7)
    assert torch.equal(logits, before), "top_k_filter must not change its input"
    assert (torch.isfinite(out).sum(dim=-1) == 7).all(), "every row keeps exactly 7 logits"
    kept = torch.isfinite(out)
    assert torch.equal(out[kept], logits[kept]), "kept logits keep their values"
    assert (
        logits[kept].view(8, 7).min(-1).values >= logits[~kept].view(8, 93).max(-1).values
    ).all()


# --- Exercise 02.4: top_p_filter -------------------------------------------------------------


@pytest.mark.exercise("top_p_filter", points=2)
def test_top_p_by_hand(impl):
    # Ranked 0.5, 0.3, 0.2. Mass above each: 0, 0.5, 0.8. Keep where that mass < p.
    probs = torch.tensor([[0.2, 0.5, 0.3]])
    for p, keep in [
        (0.45, [False, True, False]),
        (0.6, [False, True, True]),
        (0.85, [True, True, True]),
        (1.0, [True, True, True]),
    ]:
        out = impl.top_p_filter(probs.log(), p)
        assert torch.isfinite(out)[0].tolist() == keep, (
            f"probabilities [0.2, 0.5, 0.3] with p={p}: keep {keep}, got {out.tolist()}"
        )
        assert torch.allclose(out[0, keep], probs.log()[0, keep]), "kept logits keep their values"


@pytest.mark.exercise("top_p_filter", points=1)
def test_top_p_always_keeps_the_most_likely(impl):
    logits = torch.tensor([[0.0, 9.0, 1.0], [4.0, 3.0, 2.0]])
    out = impl.top_p_filter(logits, 1e-6)
    assert torch.isfinite(out).tolist() == [[False, True, False], [True, False, False]]


@pytest.mark.exercise("top_p_filter", points=1)
def test_top_p_works_on_probabilities_not_raw_logits(impl):
    # Adding a constant changes no probability, so it must change nothing that is kept.
    probs = torch.tensor([[0.1, 0.25, 0.05, 0.35, 0.25 - 1e-3, 1e-3]])
    for shift in (0.0, 7.0, -20.0):
        out = impl.top_p_filter(probs.log() + shift, 0.7)
        # ranked 0.35, 0.25, 0.249, ...: mass above them 0, 0.35, 0.6, 0.849: three kept
        assert torch.isfinite(out)[0].tolist() == [False, True, False, True, True, False], shift


@pytest.mark.exercise("top_p_filter", points=1)
def test_top_p_on_random_rows(impl):
    (logits,) = random_tensors(6, 50, count=1, seed=4)
    before = logits.clone()
    out = impl.top_p_filter(logits, 0.8)
    assert torch.equal(logits, before), "top_p_filter must not change its input"
    probs = logits.softmax(-1)
    for row in range(6):
        ranked = probs[row].sort(descending=True).values
        n_keep = int((ranked.cumsum(0) - ranked < 0.8).sum())
        kept = torch.isfinite(out[row])
        assert int(kept.sum()) == n_keep, f"row {row}: keep {n_keep} tokens, kept {int(kept.sum())}"
        assert probs[row][kept].min() >= probs[row][~kept].max(), "keep the most likely tokens"


# --- Exercise 02.5: sample_next --------------------------------------------------------------

LOGITS = torch.tensor([[0.0, math.log(2), math.log(3), -INF]])  # probabilities 1/6, 2/6, 3/6, 0
N_DRAWS = 20_000  # a frequency's standard error is then at most 0.0036


def frequencies(impl, logits, **kwargs):
    ids = impl.sample_next(
        logits.expand(N_DRAWS, -1), generator=torch.Generator().manual_seed(0), **kwargs
    )
    assert ids.shape == (N_DRAWS,), f"one id per row: expected shape ({N_DRAWS},), got {ids.shape}"
    assert ids.dtype == torch.long, f"ids are torch.long, not {ids.dtype}"
    return torch.bincount(ids, minlength=logits.size(-1)).float() / N_DRAWS


@pytest.mark.exercise("sample_next", points=1)
def test_temperature_zero_is_greedy(impl):
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5], [-5.0, -6.0, -4.0]])
    ids = impl.sample_next(logits, temperature=0)
    assert ids.tolist() == [1, 0, 2], f"greedy picks the largest logit of each row, got {ids}"


@pytest.mark.exercise("sample_next", points=2)
def test_samples_follow_the_softmax(impl):
    freq = frequencies(impl, LOGITS)
    assert freq[3] == 0, "a token with logit -inf must never be drawn"
    assert torch.allclose(freq, torch.tensor([1 / 6, 2 / 6, 3 / 6, 0]), atol=0.02), (
        f"at temperature 1 the frequencies should be 1/6, 2/6, 3/6; got {freq.tolist()}"
    )


@pytest.mark.exercise("sample_next", points=2)
def test_temperature_reshapes_the_distribution(impl):
    # logits / 2 turn the probabilities 1 : 2 : 3 into 1 : sqrt 2 : sqrt 3
    weights = torch.tensor([1.0, math.sqrt(2), math.sqrt(3), 0.0])
    freq = frequencies(impl, LOGITS, temperature=2.0)
    assert torch.allclose(freq, weights / weights.sum(), atol=0.02), (
        f"at temperature 2 the frequencies should be 1 : sqrt 2 : sqrt 3; got {freq.tolist()}"
    )
    # and logits / 0.5 into 1 : 4 : 9
    freq = frequencies(impl, LOGITS, temperature=0.5)
    assert torch.allclose(freq, torch.tensor([1, 4, 9, 0]) / 14, atol=0.02), freq.tolist()


@pytest.mark.exercise("sample_next", points=2)
def test_sampling_applies_top_k_and_top_p(impl):
    freq = frequencies(impl, LOGITS, top_k=2)  # only 2/6 and 3/6 remain: 2/5 and 3/5
    assert torch.allclose(freq, torch.tensor([0, 0.4, 0.6, 0]), atol=0.02), (
        f"with top_k=2 only the two most likely tokens remain; got {freq.tolist()}"
    )
    freq = frequencies(impl, LOGITS, top_p=0.6)  # mass above 3/6 is 0 and above 2/6 is 0.5
    assert torch.allclose(freq, torch.tensor([0, 0.4, 0.6, 0]), atol=0.02), (
        f"with top_p=0.6 the nucleus is the two most likely tokens; got {freq.tolist()}"
    )
    logits = LOGITS.clone()
    impl.sample_next(logits, temperature=0.5, top_k=1, top_p=0.5)
    assert torch.equal(logits, LOGITS), "sample_next must not change its input"
