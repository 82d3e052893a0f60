"""Graded tests for lesson 02: attention, layer norm and sampling (exercises/ex02_model.py).

Expected answers are worked out by hand (in the comments), or come from PyTorch's own functions
(``scaled_dot_product_attention``, ``layer_norm``), never from the code under test. Each test
runs in well under a second.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from graded_feedback import attempt, show

# The exercises that each exercise calls: when those fail too, the grader says to fix them first.
EXERCISE_CALLS = {"sample_next": ("top_k_filter", "top_p_filter")}

INF = float("inf")


def random_tensors(*shape, count=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator) for _ in range(count)]


# --- Exercise 02.1: causal_self_attention ----------------------------------------------------


def attention_hint(q, k, v, out):
    """What the output equals, among the usual mistakes (empty if none)."""
    T, D = q.size(-2), q.size(-1)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    variants = {
        "no causal mask; set the scores of the future (key j > query i) to -inf":
            F.scaled_dot_product_attention(q, k, v),
        "scores divided by D; divide them by sqrt(D)": F.scaled_dot_product_attention(
            q / math.sqrt(D), k, v, is_causal=True),
        "a softmax over the queries; take it over the keys (the last dimension)":
            ((q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(future, -INF)
             .softmax(-2).nan_to_num() @ v),
    }
    for what, variant in variants.items():
        if out.shape == variant.shape and torch.allclose(out, variant, atol=1e-5):
            return f" Your output is what attention gives with {what}."
    return ""


@pytest.mark.exercise("causal_self_attention", points=2)
def test_attention_by_hand(impl):
    # D = 1, so the scale is 1. Row 0 sees only key 0: its output is v[0]. Row 1's scores are
    # log 3 * 0 = 0 and log 3 * 1 = log 3: softmax weights 1/4 and 3/4, output 1 + 6 = 7.
    q = torch.tensor([[0.0], [math.log(3)]])
    k = torch.tensor([[0.0], [1.0]])
    v = torch.tensor([[4.0], [8.0]])
    out = impl.causal_self_attention(q, k, v)
    assert out.shape == (2, 1), f"q, k, v of shape (2, 1) gave shape {tuple(out.shape)}, not (2, 1)"
    assert torch.allclose(out, torch.tensor([[4.0], [7.0]]), atol=1e-5), (
        f"q = [[0], [log 3]], k = [[0], [1]], v = [[4], [8]] gave {show(out)}, expected "
        "[[4], [7]]: position 0 sees only its own position (never the future), position 1 "
        "weighs the values 1/4 and 3/4 (a softmax over the keys)." + attention_hint(q, k, v, out)
    )


@pytest.mark.exercise("causal_self_attention", points=1)
def test_attention_divides_by_sqrt_of_head_size(impl):
    # D = 4, so the raw score 2 * log 3 becomes log 3 after dividing by sqrt(4) = 2: again 7.
    q = torch.tensor([[0.0, 0, 0, 0], [2 * math.log(3), 0, 0, 0]])
    k = torch.tensor([[0.0, 0, 0, 0], [1.0, 0, 0, 0]])
    v = torch.tensor([[4.0, 0, 0, 0], [8.0, 0, 0, 0]])
    out = impl.causal_self_attention(q, k, v)
    assert torch.allclose(out[1, 0], torch.tensor(7.0), atol=1e-5), (
        f"with D = 4 and a raw score of 2 log 3, position 1's output was {out[1, 0].item():.4f}, "
        "expected 7: divide the scores by sqrt(D) = 2." + attention_hint(q, k, v, out)
    )


@pytest.mark.exercise("causal_self_attention", points=2)
def test_attention_matches_pytorch(impl):
    for shape in [(2, 3, 7, 8), (5, 16), (1, 1, 1, 4)]:
        q, k, v = random_tensors(*shape)
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out = impl.causal_self_attention(q, k, v)
        assert out.shape == expected.shape, (
            f"q, k, v of shape {shape} gave shape {tuple(out.shape)}: the output has the shape "
            "of q (any number of leading dimensions)"
        )
        assert torch.allclose(out, expected, atol=1e-5), (
            f"random q, k, v of shape {shape}: the output differs from "
            "F.scaled_dot_product_attention(q, k, v, is_causal=True) by up to "
            f"{(out - expected).abs().max().item():.4g}." + attention_hint(q, k, v, out)
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
        "changing the keys and values of positions 5 to 8 changed the output at positions 0 to "
        "4: a position must never see the future (mask the scores of keys j > i)"
    )
    assert not torch.allclose(out[..., 5:, :], out2[..., 5:, :]), (
        "changing the keys and values of positions 5 to 8 did not change their own outputs: "
        "each position sees its own position and the ones before it (mask only j > i)"
    )


@pytest.mark.exercise("causal_self_attention", points=1)
def test_attention_weights_sum_to_one(impl):
    q, k, _ = random_tensors(3, 6, 4, seed=2)
    ones = torch.ones(3, 6, 4)
    out = impl.causal_self_attention(q, k, ones)
    assert torch.allclose(out, ones, atol=1e-5), (
        f"with every value equal to 1 the output was {show(out[0, :, 0])} (first column of the "
        "first batch), expected all 1: each query's weights must sum to 1, a softmax over the "
        "keys (the last dimension) that includes its own position"
    )


# --- Exercise 02.2: layer_norm ---------------------------------------------------------------


def layer_norm_hint(x, weight, bias, eps, out):
    """Which usual mistake the output matches (empty if none): a hint only where it applies."""
    centred = x - x.mean(-1, keepdim=True)
    variance = centred.pow(2).mean(-1, keepdim=True)
    variants = {
        "the variance divided by C - 1; divide it by C":
            centred / torch.sqrt(x.var(-1, keepdim=True) + eps) * weight + bias,
        "eps added outside the square root; use sqrt(variance + eps)":
            centred / (torch.sqrt(variance) + eps) * weight + bias,
        "a division by the variance; divide by sqrt(variance + eps)":
            centred / (variance + eps) * weight + bias,
        "the bias added before the gain; multiply by weight, then add bias":
            (centred / torch.sqrt(variance + eps) + bias) * weight,
    }
    if x.dim() > 1:
        first = x - x.mean(0, keepdim=True)
        variants["statistics over the first dimension; normalize over the last one"] = (
            first / torch.sqrt(first.pow(2).mean(0, keepdim=True) + eps) * weight + bias)
    for what, variant in variants.items():
        if torch.allclose(out, variant, atol=1e-5, equal_nan=True):
            return f" Your output is what layer norm gives with {what}."
    return ""


def check_layer_norm(impl, x, weight, bias, eps, rule):
    out = impl.layer_norm(x.clone(), weight.clone(), bias.clone(), eps=eps)
    want = F.layer_norm(x, (x.size(-1),), weight, bias, eps=eps)
    assert out.shape == x.shape, f"layer_norm of shape {tuple(x.shape)} gave {tuple(out.shape)}"
    assert torch.allclose(out, want, atol=1e-5), (
        f"layer_norm({show(x)}, weight={show(weight)}, bias={show(bias)}, eps={eps}) returned "
        f"{show(out)}, expected {show(want)}: {rule}."
        + layer_norm_hint(x, weight, bias, eps, out)
    )


@pytest.mark.exercise("layer_norm", points=2)
def test_layer_norm_by_hand(impl):
    # [1, 2, 3]: mean 2, variance (1 + 0 + 1) / 3 = 2/3, so (x - 2) / sqrt(2/3) = [-1.22, 0, 1.22]
    check_layer_norm(impl, torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(3), torch.zeros(3), 0.0,
                     "subtract the mean of the last dimension and divide by sqrt(variance + eps), "
                     "the variance being the mean of the squared deviations")


@pytest.mark.exercise("layer_norm", points=1)
def test_layer_norm_applies_gain_and_shift(impl):
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 16.0]])
    check_layer_norm(impl, x, torch.tensor([2.0, 1.0, -1.0]), torch.tensor([0.5, 0.0, 1.0]), 0.0,
                     "normalize, then multiply by weight, then add bias, elementwise")


@pytest.mark.exercise("layer_norm", points=2)
def test_layer_norm_matches_pytorch(impl):
    x, weight, bias = random_tensors(4, 5, 16, seed=2)
    weight, bias = weight[0, 0], bias[0, 0]
    for eps in (1e-5, 0.1):
        check_layer_norm(impl, x, weight, bias, eps,
                         "normalize each vector along the last dimension with "
                         "sqrt(variance + eps), then multiply by weight and add bias")


@pytest.mark.exercise("layer_norm", points=1)
def test_layer_norm_of_a_constant_vector(impl):
    out = impl.layer_norm(torch.full((2, 8), 3.0), torch.ones(8), torch.full((8,), 0.25))
    assert torch.isfinite(out).all() and torch.allclose(out, torch.full((2, 8), 0.25)), (
        f"a constant vector [3, 3, ...] with bias 0.25 gave {show(out[0])}, expected 0.25 "
        "everywhere: its deviations are 0, and eps inside sqrt(variance + eps) keeps the "
        "division finite"
    )


# --- Exercise 02.3: top_k_filter -------------------------------------------------------------

TOP_K_RULE = ("keep every logit at least as large as the k-th largest of its row (ties with it "
              "too) and set the others to -inf; k at least the row length keeps everything")


def check_top_k(impl, logits, k, want):
    out = attempt(TOP_K_RULE, impl.top_k_filter, logits.clone(), k)
    assert torch.equal(out, want), (
        f"top_k_filter({show(logits)}, {k}) returned {show(out)}, expected {show(want)}: "
        f"{TOP_K_RULE}"
    )


@pytest.mark.exercise("top_k_filter", points=2)
def test_top_k_keeps_the_largest(impl):
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [5.0, -1.0, 4.0, 4.5]])
    check_top_k(impl, logits, 2, torch.tensor([[-INF, 3.0, 2.0, -INF], [5.0, -INF, -INF, 4.5]]))
    check_top_k(impl, logits, 1, torch.tensor([[-INF, 3.0, -INF, -INF], [5.0, -INF, -INF, -INF]]))


@pytest.mark.exercise("top_k_filter", points=1)
def test_top_k_edge_cases(impl):
    logits = torch.tensor([[1.0, 2.0, 2.0, 0.0]])
    check_top_k(impl, logits, 4, logits)  # k = V keeps everything
    check_top_k(impl, logits, 10, logits)  # k > V keeps everything
    check_top_k(impl, logits, 2, torch.tensor([[-INF, 2.0, 2.0, -INF]]))
    # the k-th largest (k = 1) is 2.0, and the other 2.0 is tied with it: kept too
    check_top_k(impl, logits, 1, torch.tensor([[-INF, 2.0, 2.0, -INF]]))


@pytest.mark.exercise("top_k_filter", points=1)
def test_top_k_on_random_rows(impl):
    (logits,) = random_tensors(8, 100, count=1, seed=3)
    before = logits.clone()
    out = impl.top_k_filter(logits, 7)
    assert torch.equal(logits, before), (
        "top_k_filter(logits, 7) changed the logits it was given: the input is left unchanged "
        "(return a new tensor; sample_next's caller reuses its logits)"
    )
    kept = torch.isfinite(out)
    assert (kept.sum(dim=-1) == 7).all(), (
        f"top_k_filter of 8 random rows of 100 with k = 7 kept {kept.sum(dim=-1).tolist()} "
        "logits per row: each row keeps its own 7 largest"
    )
    assert torch.equal(out[kept], logits[kept]), "top_k_filter changed the values of kept logits"
    assert (
        logits[kept].view(8, 7).min(-1).values >= logits[~kept].view(8, 93).max(-1).values
    ).all(), "top_k_filter kept a logit smaller than one it dropped: keep each row's largest"


# --- Exercise 02.4: top_p_filter -------------------------------------------------------------

TOP_P_RULE = ("rank by probability (softmax) from most to least likely and keep a token when "
              "the probabilities ranked above it add up to less than p, so the most likely token "
              "is always kept; kept logits keep their values and positions")


def check_top_p(impl, logits, p, keep):
    out = impl.top_p_filter(logits.clone(), p)
    kept = torch.isfinite(out)
    assert kept.tolist() == keep and torch.equal(out[kept], logits[kept]), (
        f"top_p_filter(logits with probabilities {show(logits.softmax(-1))}, p={p}) returned "
        f"{show(out)}; expected to keep {keep}: {TOP_P_RULE}"
    )


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
        check_top_p(impl, probs.log(), p, [keep])


@pytest.mark.exercise("top_p_filter", points=1)
def test_top_p_at_the_boundary(impl):
    # Four equal logits: probabilities exactly 1/4 each, mass above them 0, 1/4, 1/2, 3/4.
    # With p = 1/2 the third token's mass above is exactly p, not less than p: it is dropped.
    out = impl.top_p_filter(torch.zeros(1, 4), 0.5)
    assert int(torch.isfinite(out).sum()) == 2, (
        f"top_p_filter([[0, 0, 0, 0]], p=0.5) kept {int(torch.isfinite(out).sum())} tokens, "
        "expected 2: a token is kept only when the mass ranked above it is less than p (a mass "
        "of exactly p is not less than p)"
    )


@pytest.mark.exercise("top_p_filter", points=1)
def test_top_p_always_keeps_the_most_likely(impl):
    check_top_p(impl, torch.tensor([[0.0, 9.0, 1.0], [4.0, 3.0, 2.0]]), 1e-6,
                [[False, True, False], [True, False, False]])


@pytest.mark.exercise("top_p_filter", points=1)
def test_top_p_works_on_probabilities_not_raw_logits(impl):
    # Adding a constant changes no probability, so it must change nothing that is kept.
    probs = torch.tensor([[0.1, 0.25, 0.05, 0.35, 0.25 - 1e-3, 1e-3]])
    for shift in (0.0, 7.0, -20.0):
        # ranked 0.35, 0.25, 0.249, ...: mass above them 0, 0.35, 0.6, 0.849: three kept
        check_top_p(impl, probs.log() + shift, 0.7, [[False, True, False, True, True, False]])


@pytest.mark.exercise("top_p_filter", points=1)
def test_top_p_on_random_rows(impl):
    (logits,) = random_tensors(6, 50, count=1, seed=4)
    before = logits.clone()
    out = impl.top_p_filter(logits, 0.8)
    assert torch.equal(logits, before), (
        "top_p_filter(logits, 0.8) changed the logits it was given: the input is left unchanged"
    )
    probs = logits.softmax(-1)
    for row in range(6):
        ranked = probs[row].sort(descending=True).values
        n_keep = int((ranked.cumsum(0) - ranked < 0.8).sum())
        kept = torch.isfinite(out[row])
        assert int(kept.sum()) == n_keep and probs[row][kept].min() >= probs[row][~kept].max(), (
            f"top_p_filter of random rows with p = 0.8: row {row} kept {int(kept.sum())} "
            f"tokens, expected its {n_keep} most likely: {TOP_P_RULE}"
        )


# --- Exercise 02.5: sample_next --------------------------------------------------------------

LOGITS = torch.tensor([[0.0, math.log(2), math.log(3), -INF]])  # probabilities 1/6, 2/6, 3/6, 0
N_DRAWS = 20_000  # a frequency's standard error is then at most 0.0036
ORDER = ("divide the logits by temperature first, then apply top_k_filter, then top_p_filter "
         "(each on the result of the one before), then softmax and draw")


def frequencies(impl, logits, **kwargs):
    ids = impl.sample_next(
        logits.expand(N_DRAWS, -1).clone(), generator=torch.Generator().manual_seed(0), **kwargs
    )
    assert ids.shape == (N_DRAWS,), (
        f"sample_next on {N_DRAWS} rows returned shape {tuple(ids.shape)}: one id per row, "
        f"shape ({N_DRAWS},)"
    )
    assert ids.dtype == torch.long, f"sample_next returned {ids.dtype} ids, expected torch.long"
    return torch.bincount(ids, minlength=logits.size(-1)).float() / N_DRAWS


def check_frequencies(impl, want, rule, mistakes=None, **kwargs):
    """Draw with ``kwargs`` and compare with the weights ``want``; ``mistakes`` maps what a
    usual mistake does to the weights it would give, for a hint where the draws match them."""
    freq = frequencies(impl, LOGITS, **kwargs)
    want = torch.tensor(want, dtype=torch.float32)
    options = ", ".join(f"{key}={value}" for key, value in kwargs.items()) or "defaults"
    hint = ""
    for what, weights in (mistakes or {}).items():
        weights = torch.tensor(weights, dtype=torch.float32)
        if torch.allclose(freq, weights / weights.sum(), atol=0.02):
            hint = f" (Your frequencies are those of {what}.)"
    assert torch.allclose(freq, want / want.sum(), atol=0.02), (
        f"sampling probabilities [1/6, 2/6, 3/6, 0] with {options}: frequencies "
        f"{show(freq)}, expected {show(want / want.sum())}: {rule}.{hint}"
    )


@pytest.mark.exercise("sample_next", points=1)
def test_temperature_zero_is_greedy(impl):
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5], [-5.0, -6.0, -4.0]])
    ids = impl.sample_next(logits, temperature=0)
    assert ids.tolist() == [1, 0, 2], (
        f"sample_next({show(logits)}, temperature=0) returned {show(ids)}, expected [1, 0, 2]: "
        "temperature 0 is greedy, the index of the largest logit of each row"
    )


@pytest.mark.exercise("sample_next", points=2)
def test_samples_follow_the_softmax(impl):
    check_frequencies(impl, [1, 2, 3, 0], "draw from the softmax of the logits (-inf never)")


@pytest.mark.exercise("sample_next", points=2)
def test_temperature_reshapes_the_distribution(impl):
    rule = "divide the logits by temperature before the softmax"
    # logits / 2 turn the probabilities 1 : 2 : 3 into 1 : sqrt 2 : sqrt 3,
    # and logits / 0.5 into 1 : 4 : 9
    check_frequencies(impl, [1.0, math.sqrt(2), math.sqrt(3), 0.0], rule, temperature=2.0)
    check_frequencies(impl, [1, 4, 9, 0], rule, temperature=0.5)


@pytest.mark.exercise("sample_next", points=2)
def test_sampling_applies_top_k_and_top_p(impl):
    # only 2/6 and 3/6 remain: 2/5 and 3/5
    check_frequencies(impl, [0, 2, 3, 0], "with top_k=2 only the two most likely tokens remain",
                      top_k=2)
    # mass above 3/6 is 0 and above 2/6 is 0.5
    check_frequencies(impl, [0, 2, 3, 0], "with top_p=0.6 the nucleus is the two most likely",
                      top_p=0.6)


@pytest.mark.exercise("sample_next", points=2)
def test_temperature_comes_before_top_p(impl):
    # At temperature 0.5 the probabilities 1 : 2 : 3 become 1 : 4 : 9 (1/14, 4/14, 9/14): the
    # mass above the second token is 9/14 >= 0.6, so the nucleus of p = 0.6 is the top token
    # alone. Filtering first (at temperature 1) would keep two tokens.
    late = {"filtering before dividing by the temperature": [0, 4, 9, 0]}
    check_frequencies(impl, [0, 0, 1, 0], ORDER, late, temperature=0.5, top_p=0.6)
    # At temperature 2 they become 1 : sqrt 2 : sqrt 3 (0.24, 0.34, 0.42): the mass above the
    # second token is 0.42 < 0.45, so top_p = 0.45 keeps two tokens (at temperature 1, only one).
    late = {"filtering before dividing by the temperature": [0, 0, 1, 0]}
    check_frequencies(impl, [0, math.sqrt(2), math.sqrt(3), 0], ORDER, late, temperature=2.0,
                      top_p=0.45)


@pytest.mark.exercise("sample_next", points=2)
def test_top_k_comes_before_top_p(impl):
    # top_k = 2 leaves 2/6 and 3/6, renormalized to 2/5 and 3/5; then top_p = 0.55 keeps the
    # top token alone (3/5 >= 0.55). Top-p first would keep both (mass above 2/6 is 1/2 < 0.55).
    swapped = {"applying top_p_filter before top_k_filter": [0, 2, 3, 0]}
    check_frequencies(impl, [0, 0, 1, 0], ORDER, swapped, top_k=2, top_p=0.55)
    # top_k = 3 keeps all three; top_p = 0.55 then keeps 3/6 and 2/6 (mass above 2/6 is 0.5)
    check_frequencies(impl, [0, 2, 3, 0], ORDER, top_k=3, top_p=0.55)


@pytest.mark.exercise("sample_next", points=1)
def test_sampling_is_reproducible_with_a_generator(impl):
    logits = torch.zeros(64, 10)
    first = impl.sample_next(logits, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(123)  # the global random state must not matter
    second = impl.sample_next(logits, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, second), (
        "two calls with generators seeded alike drew different tokens: draw with "
        "torch.multinomial(probs, 1, generator=generator)"
    )


@pytest.mark.exercise("sample_next", points=2)
def test_sample_next_leaves_its_input_unchanged(impl):
    for options in ({}, {"temperature": 0.5}, {"temperature": 2.0, "top_k": 1, "top_p": 0.5},
                    {"temperature": 0}):
        logits = LOGITS.clone()
        attempt("the input is left unchanged: divide into a new tensor, not in place",
                impl.sample_next, logits, **options)
        assert torch.equal(logits, LOGITS), (
            f"sample_next(logits, {options}) changed the caller's logits to {show(logits)}: the "
            "input is left unchanged (the caller reuses them); divide into a new tensor"
        )
