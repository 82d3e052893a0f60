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


@pytest.mark.exercise("flops_per_token", points=1)
def test_flops_per_token_by_hand(impl):
    # 6 * 1000 = 6000 for the weights; 12 * 2 layers * 8 wide * 16 positions = 3072 for attention
    assert impl.flops_per_token(1000, 2, 8, 16) == 9072


@pytest.mark.exercise("flops_per_token", points=1)
def test_flops_per_token_of_gpt2_small(impl):
    # GPT-2 small: 12 blocks of 12 * 768^2 weights and 13 * 768 biases and gains, the final
    # norm, and the tied 50257 x 768 matrix: N = 123,653,376 (124.4M with the positions).
    # Attention adds 12 * 12 layers * 768 * 1024 = 113,246,208.
    n = 12 * (12 * 768 * 768 + 13 * 768) + 2 * 768 + 50257 * 768
    assert impl.flops_per_token(n, 12, 768, 1024) == 6 * n + 113_246_208


@pytest.mark.exercise("flops_per_token", points=1)
def test_flops_per_token_matches_the_model(impl):
    for n_layer, n_embd, block_size in [(2, 16, 32), (4, 128, 128), (6, 384, 256)]:
        config = GPTConfig(
            vocab_size=65, block_size=block_size, n_layer=n_layer, n_head=4, n_embd=n_embd
        )
        model = GPT(config)
        got = impl.flops_per_token(
            model.num_params(non_embedding=True), n_layer, n_embd, block_size
        )
        assert got == model.flops_per_token(), f"for {n_layer} layers x {n_embd} x {block_size}"


# --- Exercise 03.2: mfu -----------------------------------------------------------------------


@pytest.mark.exercise("mfu", points=1)
def test_mfu_by_hand(impl):
    # 100k tokens/s * 1 GFLOP/token = 100 TFLOP/s, a quarter of 400 TFLOP/s
    assert impl.mfu(100_000, 1e9, 400e12) == pytest.approx(0.25)
    # 2,000 tokens/s * 5.6 MFLOP/token = 11.2 GFLOP/s of a 112 GFLOP/s CPU: 10%
    assert impl.mfu(2_000, 5.6e6, 112e9) == pytest.approx(0.1)


@pytest.mark.exercise("mfu", points=1)
def test_mfu_is_a_fraction_not_a_percentage(impl):
    # the whole peak is 1.0
    assert impl.mfu(1.0, 312e12, 312e12) == pytest.approx(1.0)


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
    for got, want in zip(gradients(model), expected):
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), (
            "the gradients differ from those of one batch of all 8 windows: "
            "did you divide each loss by the number of micro-batches?"
        )


@pytest.mark.exercise("accumulate_gradients", points=1)
def test_accumulate_gradients_returns_the_mean_loss(impl):
    x, y = batch(6, seed=1)
    model = tiny_gpt()
    with torch.no_grad():
        expected = model(x, y)[1].item()
    got = impl.accumulate_gradients(model, list(zip(x.split(2), y.split(2))))
    assert isinstance(got, float), f"return a Python float, not {type(got).__name__}"
    assert got == pytest.approx(expected, rel=1e-9), "the mean of the micro-batches' losses"


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
    for got, want in zip(gradients(model), first):
        assert torch.allclose(got, want), "start from zero: clear the gradients of earlier steps"


@pytest.mark.exercise("accumulate_gradients", points=1)
def test_accumulate_gradients_takes_no_step(impl):
    x, y = batch(4, seed=3)
    model = tiny_gpt()
    before = [p.detach().clone() for p in model.parameters()]
    impl.accumulate_gradients(model, [(x, y)])
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before)), (
        "accumulate_gradients only computes gradients; the optimizer takes the step"
    )


# --- Exercise 03.4: adamw_param_groups --------------------------------------------------------


def ids(params):
    return [id(p) for p in params]


@pytest.mark.exercise("adamw_param_groups", points=1)
def test_param_groups_of_a_linear_layer(impl):
    layer = torch.nn.Linear(3, 2)
    groups = impl.adamw_param_groups(layer, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert ids(groups[0]["params"]) == [id(layer.weight)], "the matrix is decayed"
    assert ids(groups[1]["params"]) == [id(layer.bias)], "the bias is not"


@pytest.mark.exercise("adamw_param_groups", points=2)
def test_param_groups_of_a_gpt(impl):
    for bias, tie in [(True, True), (False, False)]:
        model = tiny_gpt(bias=bias, tie=tie)
        groups = impl.adamw_param_groups(model, 0.1)
        expected = optimizer_groups(model, 0.1)
        for got, want in zip(groups, expected):
            assert got["weight_decay"] == want["weight_decay"]
            assert ids(got["params"]) == ids(want["params"]), (
                f"wrong parameters in the group with weight decay {want['weight_decay']} "
                f"(bias={bias}, tied embeddings={tie})"
            )
        every = ids(groups[0]["params"]) + ids(groups[1]["params"])
        assert len(every) == len(set(every)), "a parameter appears twice (tied embeddings?)"


@pytest.mark.exercise("adamw_param_groups", points=1)
def test_param_groups_leave_out_frozen_parameters(impl):
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    model[0].requires_grad_(False)
    groups = impl.adamw_param_groups(model, 0.1)
    assert groups[0]["params"] == [], "the frozen linear layer's weight does not train"
    assert ids(groups[1]["params"]) == [id(model[1].weight), id(model[1].bias)]


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
    assert torch.allclose(layer.weight, 0.95 * weight)
    assert torch.equal(layer.bias, bias)


# --- Exercise 03.5: warmup_cosine_lr ----------------------------------------------------------


@pytest.mark.exercise("warmup_cosine_lr", points=2)
def test_schedule_by_hand(impl):
    # lr 1, min_lr 0.1, warmup 10, 110 steps: the cosine runs over steps 10..110, so step 60 is
    # half-way, where cos(pi / 2) = 0 gives the mean of 1 and 0.1.
    expected = {0: 0.0, 5: 0.5, 10: 1.0, 60: 0.55, 110: 0.1, 500: 0.1}
    for step, lr in expected.items():
        got = impl.warmup_cosine_lr(step, 110, 10, 1.0, 0.1)
        assert got == pytest.approx(lr, abs=1e-12), f"step {step}: expected {lr}, got {got}"
    # a quarter of the way, cos(pi / 4) = sqrt(2) / 2
    quarter = 0.1 + 0.9 * (1 + math.sqrt(2) / 2) / 2
    assert impl.warmup_cosine_lr(35, 110, 10, 1.0, 0.1) == pytest.approx(quarter)


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
            got = impl.warmup_cosine_lr(step, max_steps, warmup, lr, min_lr)
            assert got == pytest.approx(lr_at(step, config), rel=1e-12, abs=1e-15), (
                f"step {step} of {max_steps} (warmup {warmup}): {got} != {lr_at(step, config)}"
            )


@pytest.mark.exercise("warmup_cosine_lr", points=1)
def test_schedule_never_increases_after_the_warmup(impl):
    values = [impl.warmup_cosine_lr(s, 300, 30, 6e-4, 6e-5) for s in range(30, 320)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert max(values) == pytest.approx(6e-4) and min(values) == pytest.approx(6e-5)


# --- Exercise 03.6: fit_power_law -------------------------------------------------------------


def least_squares_line(xs, ys):
    # The normal equations of y = c0 + c1 x, solved by PyTorch in float64.
    design = torch.tensor([[1.0, x] for x in xs], dtype=torch.float64)
    target = torch.tensor(ys, dtype=torch.float64)[:, None]
    c0, c1 = torch.linalg.lstsq(design, target).solution.flatten().tolist()
    return c0, c1


@pytest.mark.exercise("fit_power_law", points=1)
def test_power_law_through_two_points(impl):
    # 4 = a * 10^-alpha and 1 = a * 1000^-alpha: 100^alpha = 4, alpha = log 4 / log 100 and
    # a = 4 * 10^alpha = 4 * 2 = 8.
    a, alpha = impl.fit_power_law([10, 1000], [4.0, 1.0])
    assert alpha == pytest.approx(math.log(4) / math.log(100))
    assert a == pytest.approx(8.0)


@pytest.mark.exercise("fit_power_law", points=1)
def test_power_law_recovers_an_exact_law(impl):
    sizes = [2e4, 5e4, 1e5, 3e5, 1e6]
    losses = [11.0 * n**-0.076 for n in sizes]  # Kaplan et al.'s alpha_N
    a, alpha = impl.fit_power_law(sizes, losses)
    assert (a, alpha) == (pytest.approx(11.0), pytest.approx(0.076)), (a, alpha)


@pytest.mark.exercise("fit_power_law", points=2)
def test_power_law_is_a_least_squares_fit_in_log_space(impl):
    rng = random.Random(0)
    sizes = [1e4 * 2**k for k in range(6)]
    losses = [5.0 * n**-0.1 * math.exp(rng.gauss(0, 0.03)) for n in sizes]
    c0, c1 = least_squares_line([math.log(n) for n in sizes], [math.log(v) for v in losses])
    a, alpha = impl.fit_power_law(sizes, losses)
    assert alpha == pytest.approx(-c1, rel=1e-9), "alpha is minus the slope of the log-log line"
    assert a == pytest.approx(math.exp(c0), rel=1e-9), "a is exp(intercept) of the log-log line"
