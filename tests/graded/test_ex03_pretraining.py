"""Graded tests for lesson 03: pretraining arithmetic and mechanics (exercises/ex03_pretraining.py).

Expected answers are worked out by hand (in the comments), computed by PyTorch itself (autograd
on one large batch, AdamW's update), or come from ``minillm.train`` where its semantics are
exactly the exercise's (``lr_at``, ``optimizer_groups``); never from the code under test. Each
test runs in well under a second.
"""

import math
import random

import pytest
import torch
from graded_feedback import attempt, show

from minillm.model import GPT, GPTConfig
from minillm.train import TrainConfig, lr_at, optimizer_groups


def tiny_gpt(bias=True, tie=True, seed=0):
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=11,
        block_size=8,
        n_layer=2,
        n_head=2,
        n_embd=8,
        bias=bias,
        tie_embeddings=tie,
    )
    return GPT(config).double()  # float64: sums in another order agree to ~1e-15


def batch(size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(11, (size, 8), generator=generator)
    y = torch.randint(11, (size, 8), generator=generator)
    return x, y


def gradients(model):
    return [p.grad.clone() for p in model.parameters()]


# --- Exercise 03.1: flops_per_token ----------------------------------------------------------

FLOPS_RULE = ("6 FLOPs per parameter and token (forward 2, backward 4), and attention adds "
              "12 * n_layer * n_embd * block_size, with no halving for the causal mask")


def check_flops(impl, n_params, n_layer, n_embd, block_size):
    got = impl.flops_per_token(n_params, n_layer, n_embd, block_size)
    want = 6 * n_params + 12 * n_layer * n_embd * block_size
    hints = {
        2 * n_params + 12 * n_layer * n_embd * block_size: " (That is 2 FLOPs per parameter.)",
        6 * n_params + 6 * n_layer * n_embd * block_size: " (That halves attention.)",
        6 * n_params: " (That leaves attention out.)",
    }
    assert got == want, (
        f"flops_per_token({n_params}, n_layer={n_layer}, n_embd={n_embd}, "
        f"block_size={block_size}) returned {got}, expected {want}: {FLOPS_RULE}."
        + hints.get(got, "")
    )
    assert isinstance(got, int), (
        f"flops_per_token returned {got!r}, a {type(got).__name__}: return an int (FLOPs are "
        "counted, and the inputs are ints)"
    )


@pytest.mark.exercise("flops_per_token", points=1)
def test_flops_per_token_by_hand(impl):
    # 6 * 1000 = 6000 for the weights; 12 * 2 layers * 8 wide * 16 positions = 3072 for attention
    check_flops(impl, 1000, 2, 8, 16)


@pytest.mark.exercise("flops_per_token", points=1)
def test_flops_per_token_of_gpt2_small(impl):
    # GPT-2 small: 12 blocks of 12 * 768^2 weights and 13 * 768 biases and gains, the final
    # norm, and the tied 50257 x 768 matrix: N = 123,653,376 (124.4M with the positions).
    # Attention adds 12 * 12 layers * 768 * 1024 = 113,246,208.
    n = 12 * (12 * 768 * 768 + 13 * 768) + 2 * 768 + 50257 * 768
    check_flops(impl, n, 12, 768, 1024)


@pytest.mark.exercise("flops_per_token", points=1)
def test_flops_per_token_matches_the_model(impl):
    for n_layer, n_embd, block_size in [(2, 16, 32), (4, 128, 128), (6, 384, 256)]:
        config = GPTConfig(
            vocab_size=65, block_size=block_size, n_layer=n_layer, n_head=4, n_embd=n_embd
        )
        model = GPT(config)
        n = model.num_params(non_embedding=True)
        assert 6 * n + 12 * n_layer * n_embd * block_size == model.flops_per_token(), (
            "minillm's GPT.flops_per_token() no longer counts as this test does"
        )
        check_flops(impl, n, n_layer, n_embd, block_size)


# --- Exercise 03.2: mfu -----------------------------------------------------------------------

MFU_RULE = ("MFU is the model's FLOP/s (tokens_per_s * flops_per_token, which already counts "
            "the 6 FLOPs per parameter) divided by the peak FLOP/s, as a fraction (0.4 = 40%)")


def check_mfu(impl, tokens_per_s, flops, peak, want):
    got = impl.mfu(tokens_per_s, flops, peak)
    assert got == pytest.approx(want), (
        f"mfu(tokens_per_s={tokens_per_s:g}, flops_per_token={flops:g}, peak_flops={peak:g}) "
        f"returned {got!r}, expected {want}: {MFU_RULE}"
    )


@pytest.mark.exercise("mfu", points=1)
def test_mfu_by_hand(impl):
    # 100k tokens/s * 1 GFLOP/token = 100 TFLOP/s, a quarter of 400 TFLOP/s
    check_mfu(impl, 100_000, 1e9, 400e12, 0.25)
    # 2,000 tokens/s * 5.6 MFLOP/token = 11.2 GFLOP/s of a 112 GFLOP/s CPU: 10%
    check_mfu(impl, 2_000, 5.6e6, 112e9, 0.1)


@pytest.mark.exercise("mfu", points=1)
def test_mfu_is_a_fraction_not_a_percentage(impl):
    check_mfu(impl, 1.0, 312e12, 312e12, 1.0)  # the whole peak is 1.0


# --- Exercise 03.3: accumulate_gradients -------------------------------------------------------


@pytest.mark.exercise("accumulate_gradients", points=2)
def test_accumulated_gradients_equal_one_large_batch(impl):
    x, y = batch(8)
    model = tiny_gpt()
    _, loss = model(x, y)
    loss.backward()
    expected = gradients(model)
    model.zero_grad()
    micro = list(zip(x.split(2), y.split(2)))  # 4 micro-batches of 2 windows
    impl.accumulate_gradients(model, micro)
    got = gradients(model)
    if all(torch.allclose(g, w, rtol=1e-9, atol=1e-12) for g, w in zip(got, expected)):
        return
    ratio = sum(g.abs().sum() for g in got) / sum(w.abs().sum() for w in expected)
    hint = ""
    if abs(ratio - 4) < 1e-6:
        hint = " Your gradients are 4 times too large: the losses were not divided."
    elif abs(ratio - 2) < 1e-6:
        hint = " Your gradients are 2 times too large: divide by the number of micro-batches."
    raise AssertionError(
        "accumulate_gradients(model, 4 micro-batches of 2 windows) left gradients that differ "
        "from those of one batch of all 8 windows (the ratio of their sizes is "
        f"{float(ratio):.4g}): scale each loss by 1 / len(micro_batches) before its backward "
        f"pass.{hint}"
    )


@pytest.mark.exercise("accumulate_gradients", points=1)
def test_accumulate_gradients_returns_the_mean_loss(impl):
    x, y = batch(6, seed=1)
    model = tiny_gpt()
    with torch.no_grad():
        losses = [model(a, b)[1].item() for a, b in zip(x.split(2), y.split(2))]
    got = impl.accumulate_gradients(model, list(zip(x.split(2), y.split(2))))
    assert isinstance(got, float), (
        f"accumulate_gradients returned a {type(got).__name__}: return a Python float (.item())"
    )
    want = sum(losses) / len(losses)
    assert got == pytest.approx(want, rel=1e-9), (
        f"accumulate_gradients on micro-batches with losses {show(losses)} returned "
        f"{got:.6g}, expected {want:.6g}: return the mean of the micro-batches' losses"
    )


@pytest.mark.exercise("accumulate_gradients", points=1)
def test_accumulate_gradients_clears_old_gradients(impl):
    x, y = batch(4, seed=2)
    model = tiny_gpt()
    micro = list(zip(x.split(2), y.split(2)))
    impl.accumulate_gradients(model, micro)
    first = gradients(model)
    for p in model.parameters():  # leftovers from an earlier step
        p.grad = torch.full_like(p, 5.0)
    impl.accumulate_gradients(model, micro)
    assert all(torch.allclose(got, want) for got, want in zip(gradients(model), first)), (
        "with gradients of 5 left from an earlier step, accumulate_gradients gave different "
        "gradients than from zero: clear the gradients first (model.zero_grad())"
    )


@pytest.mark.exercise("accumulate_gradients", points=1)
def test_accumulate_gradients_takes_no_step(impl):
    x, y = batch(4, seed=3)
    model = tiny_gpt()
    before = [p.detach().clone() for p in model.parameters()]
    impl.accumulate_gradients(model, [(x, y)])
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before)), (
        "accumulate_gradients changed the model's parameters: it only computes gradients; take "
        "no optimizer step"
    )


# --- Exercise 03.4: adamw_param_groups --------------------------------------------------------

GROUPS_RULE = ("the first group holds the matrices (parameters with 2 or more dimensions) with "
               "weight_decay, the second the vectors (biases, LayerNorm gains) with 0.0; "
               "parameters that do not require gradients are left out, and none appears twice")


def names(model, params):
    by_id = {id(p): name for name, p in model.named_parameters(remove_duplicate=False)}
    return [by_id.get(id(p), "?") for p in params]


def check_groups(impl, model, weight_decay, label):
    groups = impl.adamw_param_groups(model, weight_decay)
    expected = optimizer_groups(model, weight_decay)
    got = [(g["weight_decay"], names(model, g["params"])) for g in groups]
    want = [(g["weight_decay"], names(model, g["params"])) for g in expected]
    assert len(groups) == 2 and [g["weight_decay"] for g in groups] == [weight_decay, 0.0], (
        f"adamw_param_groups({label}, {weight_decay}) gave groups with weight decays "
        f"{[g.get('weight_decay') for g in groups]}, expected [{weight_decay}, 0.0]: "
        f"{GROUPS_RULE}"
    )
    every = [id(p) for g in groups for p in g["params"]]
    assert len(every) == len(set(every)), (
        f"adamw_param_groups({label}) lists a parameter twice ({got}): take them from "
        "model.parameters(), which yields a tied matrix once"
    )
    assert got == want, (
        f"adamw_param_groups({label}, {weight_decay}) gave {got}, expected {want}: {GROUPS_RULE}"
    )


@pytest.mark.exercise("adamw_param_groups", points=1)
def test_param_groups_of_a_linear_layer(impl):
    check_groups(impl, torch.nn.Linear(3, 2), 0.1, "Linear(3, 2)")


@pytest.mark.exercise("adamw_param_groups", points=2)
def test_param_groups_of_a_gpt(impl):
    for bias, tie in [(True, True), (False, False)]:
        check_groups(impl, tiny_gpt(bias=bias, tie=tie), 0.1,
                     f"a GPT with bias={bias} and tied embeddings={tie}")


@pytest.mark.exercise("adamw_param_groups", points=1)
def test_param_groups_leave_out_frozen_parameters(impl):
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    model[0].requires_grad_(False)
    check_groups(impl, model, 0.1, "Linear(3, 3) frozen, then LayerNorm(3)")


@pytest.mark.exercise("adamw_param_groups", points=1)
def test_adamw_decays_only_the_matrices(impl):
    # With zero gradients Adam's step is 0, and AdamW only shrinks decayed parameters by
    # lr * weight_decay: 1 - 0.1 * 0.5 = 0.95. Undecayed ones stay as they are.
    layer = torch.nn.Linear(3, 2)
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    optimizer = torch.optim.AdamW(impl.adamw_param_groups(layer, 0.5), lr=0.1)
    for p in layer.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert torch.allclose(layer.weight, 0.95 * weight) and torch.equal(layer.bias, bias), (
        "one AdamW step (lr 0.1, zero gradients) with your groups of Linear(3, 2) and weight "
        "decay 0.5 should shrink the weight matrix by 5% and leave the bias: "
        f"{GROUPS_RULE}"
    )


# --- Exercise 03.5: warmup_cosine_lr ----------------------------------------------------------

SCHEDULE_RULE = ("warmup: lr * step / warmup_steps (0 at step 0); then half a cosine from lr at "
                 "warmup_steps down to min_lr at max_steps; min_lr from max_steps on; with "
                 "warmup_steps = 0 there is no warmup")


@pytest.mark.exercise("warmup_cosine_lr", points=2)
def test_schedule_by_hand(impl):
    # lr 1, min_lr 0.1, warmup 10, 110 steps: the cosine runs over steps 10..110, so step 60 is
    # half-way, where cos(pi / 2) = 0 gives the mean of 1 and 0.1; a quarter of the way (step
    # 35), cos(pi / 4) = sqrt(2) / 2.
    quarter = 0.1 + 0.9 * (1 + math.sqrt(2) / 2) / 2
    expected = {0: 0.0, 5: 0.5, 10: 1.0, 35: quarter, 60: 0.55, 110: 0.1, 500: 0.1}
    for step, lr in expected.items():
        got = attempt(SCHEDULE_RULE, impl.warmup_cosine_lr, step, 110, 10, 1.0, 0.1)
        assert got == pytest.approx(lr, abs=1e-12), (
            f"warmup_cosine_lr({step}, max_steps=110, warmup_steps=10, lr=1.0, min_lr=0.1) "
            f"returned {got!r}, expected {lr:.6g}: {SCHEDULE_RULE}"
        )


@pytest.mark.exercise("warmup_cosine_lr", points=2)
def test_schedule_matches_minillm(impl):
    for max_steps, warmup, lr, min_lr in [
        (3000, 100, 2e-3, 1e-4),
        (50, 0, 1.0, 0.0),
        (20, 20, 3e-4, 3e-5),
        (7, 3, 1e-2, 1e-2),
    ]:
        config = TrainConfig(max_steps=max_steps, warmup_steps=warmup, lr=lr, min_lr=min_lr)
        for step in range(max_steps + 3):
            got = attempt(SCHEDULE_RULE, impl.warmup_cosine_lr, step, max_steps, warmup, lr,
                          min_lr)
            want = lr_at(step, config)
            assert got == pytest.approx(want, rel=1e-12, abs=1e-15), (
                f"warmup_cosine_lr({step}, max_steps={max_steps}, warmup_steps={warmup}, "
                f"lr={lr:g}, min_lr={min_lr:g}) returned {got!r}, expected {want!r}: "
                f"{SCHEDULE_RULE}"
            )


@pytest.mark.exercise("warmup_cosine_lr", points=1)
def test_schedule_never_increases_after_the_warmup(impl):
    values = [impl.warmup_cosine_lr(s, 300, 30, 6e-4, 6e-5) for s in range(30, 320)]
    rises = [30 + i for i, (a, b) in enumerate(zip(values, values[1:])) if b > a]
    assert not rises and max(values) == pytest.approx(6e-4) and min(values) == pytest.approx(
        6e-5), (
        f"warmup_cosine_lr(step, 300, 30, 6e-4, 6e-5) for steps 30 to 319 ranged from "
        f"{min(values):.3g} to {max(values):.3g} and rose after steps {rises[:5]}: it falls "
        f"from lr to min_lr and never rises again; {SCHEDULE_RULE}"
    )


# --- Exercise 03.6: fit_power_law -------------------------------------------------------------

FIT_RULE = ("fit log(loss) = log(a) - alpha * log(n) by ordinary least squares (minimising the "
            "vertical distances of the log-log points), then alpha is minus the slope and a is "
            "exp(intercept)")


def least_squares_line(xs, ys):
    # The normal equations of y = c0 + c1 x, solved by PyTorch in float64.
    design = torch.tensor([[1.0, x] for x in xs], dtype=torch.float64)
    target = torch.tensor(ys, dtype=torch.float64)[:, None]
    c0, c1 = torch.linalg.lstsq(design, target).solution.flatten().tolist()
    return c0, c1


def check_fit(impl, sizes, losses, want_a, want_alpha, rel=1e-6):
    a, alpha = impl.fit_power_law(sizes, losses)
    assert (a, alpha) == (pytest.approx(want_a, rel=rel), pytest.approx(want_alpha, rel=rel)), (
        f"fit_power_law({show(sizes)}, {show(losses)}) returned (a, alpha) = ({a:.6g}, "
        f"{alpha:.6g}), expected ({want_a:.6g}, {want_alpha:.6g}): {FIT_RULE}"
    )


@pytest.mark.exercise("fit_power_law", points=1)
def test_power_law_through_two_points(impl):
    # 4 = a * 10^-alpha and 1 = a * 1000^-alpha: 100^alpha = 4, alpha = log 4 / log 100 and
    # a = 4 * 10^alpha = 4 * 2 = 8.
    check_fit(impl, [10, 1000], [4.0, 1.0], 8.0, math.log(4) / math.log(100))


@pytest.mark.exercise("fit_power_law", points=1)
def test_power_law_recovers_an_exact_law(impl):
    sizes = [2e4, 5e4, 1e5, 3e5, 1e6]
    check_fit(impl, sizes, [11.0 * n**-0.076 for n in sizes], 11.0, 0.076)  # Kaplan's alpha_N


@pytest.mark.exercise("fit_power_law", points=2)
def test_power_law_is_a_least_squares_fit_in_log_space(impl):
    rng = random.Random(0)
    sizes = [1e4 * 2**k for k in range(6)]
    losses = [5.0 * n**-0.1 * math.exp(rng.gauss(0, 0.03)) for n in sizes]
    c0, c1 = least_squares_line([math.log(n) for n in sizes], [math.log(v) for v in losses])
    check_fit(impl, sizes, losses, math.exp(c0), -c1, rel=1e-9)
