"""Graded tests for lesson 05: the reward model's loss, head and metrics (exercises/ex05_reward.py).

Expected answers are worked out by hand (in the comments), computed by PyTorch itself
(``F.binary_cross_entropy_with_logits``, autograd), or come from ``minillm.reward``, whose
semantics are exactly the exercises'; never from the code under test. Each test runs in well
under a second.
"""

import math
import random

import pytest
import torch
import torch.nn.functional as F
from graded_feedback import matching_mistake, show

from minillm.evaluate import spearman as package_spearman
from minillm.reward import last_state

# --- Exercise 05.1: bradley_terry_loss --------------------------------------------------------

BT_RULE = ("the loss is the negative log-likelihood of the labels averaged over the pairs, the "
           "mean of -log sigmoid(chosen[i] - rejected[i]), computed with F.logsigmoid so that "
           "it stays finite")


def check_bt(impl, chosen, rejected, want, label=None):
    got = impl.bradley_terry_loss(chosen.clone(), rejected.clone())
    label = label or f"{show(chosen)}, {show(rejected)}"
    margin = (chosen - rejected).double()
    hint = matching_mistake(got.item(), {
        "the margin taken as rejected - chosen gives; use chosen - rejected":
            -F.logsigmoid(-margin).mean().item(),
        "a sum over the pairs gives; take the mean": -F.logsigmoid(margin).sum().item(),
        "-sigmoid(margin) gives, without the log": -torch.sigmoid(margin).mean().item(),
    })
    assert math.isfinite(got.item()) and got.item() == pytest.approx(want), (
        f"bradley_terry_loss({label}) returned {got.item():.6g}, expected {want:.6g}: "
        f"{BT_RULE}.{hint}"
    )


@pytest.mark.exercise("bradley_terry_loss", points=1)
def test_loss_by_hand(impl):
    # equal rewards: P(chosen wins) = 1/2, so the loss is ln 2
    check_bt(impl, torch.zeros(3), torch.zeros(3), math.log(2))
    # margins 1 and -1: (ln(1 + e^-1) + ln(1 + e^1)) / 2
    check_bt(impl, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]),
             (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2)


@pytest.mark.exercise("bradley_terry_loss", points=2)
def test_loss_is_binary_cross_entropy_of_the_margin(impl):
    generator = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(2, 50, generator=generator, dtype=torch.float64)
    want = F.binary_cross_entropy_with_logits(chosen - rejected, torch.ones(50,
                                                                            dtype=torch.float64))
    check_bt(impl, chosen, rejected, want.item(), "50 random pairs")


@pytest.mark.exercise("bradley_terry_loss", points=2)
def test_loss_gradient_pushes_the_chosen_answer_up(impl):
    chosen = torch.tensor([0.5, -1.0], requires_grad=True)
    rejected = torch.tensor([0.0, 2.0], requires_grad=True)
    impl.bradley_terry_loss(chosen, rejected).backward()
    # d/d r_chosen of -log sigmoid(m) / N is -(1 - sigmoid(m)) / N; the opposite for rejected
    want = -(1 - torch.sigmoid(torch.tensor([0.5, -3.0]))) / 2
    assert torch.allclose(chosen.grad, want) and torch.allclose(rejected.grad, -want), (
        f"bradley_terry_loss([0.5, -1], [0, 2]) gave gradients {show(chosen.grad)} for chosen "
        f"and {show(rejected.grad)} for rejected, expected {show(want)} and {show(-want)}: "
        f"{BT_RULE}"
    )


@pytest.mark.exercise("bradley_terry_loss", points=1)
def test_loss_stays_finite_for_huge_margins(impl):
    check_bt(impl, torch.tensor([0.0, 500.0]), torch.tensor([500.0, 0.0]), 250.0)


# --- Exercise 05.2: last_token_pool -----------------------------------------------------------

POOL_RULE = ("row n's result is hidden[n, t], t the last position where mask[n] is 1 (the "
             "prompt before the answer and the padding after it are 0 in the mask)")


def check_pool(impl, hidden, mask, want, label):
    got = impl.last_token_pool(hidden.clone(), mask.clone())
    assert got.shape == want.shape and torch.equal(got, want), (
        f"last_token_pool({label}) returned {show(got)}, expected {show(want)}: {POOL_RULE}"
    )


@pytest.mark.exercise("last_token_pool", points=2)
def test_pool_by_hand(impl):
    hidden = torch.arange(24.0).view(2, 4, 3)
    mask = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0]])
    # row 0: the answer is positions 1-2, its last token position 2 -> [6, 7, 8]
    # row 1: position 0 -> hidden[1, 0] = [12, 13, 14]
    check_pool(impl, hidden, mask, torch.tensor([[6.0, 7.0, 8.0], [12.0, 13.0, 14.0]]),
               f"hidden = arange(24).view(2, 4, 3), mask = {mask.tolist()}")


@pytest.mark.exercise("last_token_pool", points=2)
def test_pool_matches_minillm_on_random_masks(impl):
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(16, 10, 5, generator=generator)
    mask = torch.zeros(16, 10, dtype=torch.long)
    for row in range(16):  # prompt, then answer, then padding, of random lengths
        start = int(torch.randint(0, 9, (), generator=generator))
        end = int(torch.randint(start + 1, 11, (), generator=generator))
        mask[row, start:end] = 1
    check_pool(impl, hidden, mask, last_state(hidden, mask),
               "16 random rows, each a prompt, an answer and padding")


@pytest.mark.exercise("last_token_pool", points=1)
def test_pool_passes_gradients_to_the_last_state_only(impl):
    hidden = torch.randn(1, 3, 2, requires_grad=True)
    impl.last_token_pool(hidden, torch.tensor([[1, 1, 0]])).sum().backward()
    want = [[[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]]
    assert hidden.grad.tolist() == want, (
        f"with mask [[1, 1, 0]] the gradient reached the states as {show(hidden.grad)}, "
        f"expected {want}: only the last token's state is read; {POOL_RULE}"
    )


# --- Exercise 05.3: pairwise_accuracy ---------------------------------------------------------

ACCURACY_RULE = ("the share of pairs (a Python float): 1 where chosen > rejected, 0 where "
                 "chosen < rejected, and 1/2 for a tie")


def check_accuracy(impl, chosen, rejected, want):
    got = impl.pairwise_accuracy(chosen.clone(), rejected.clone())
    hint = matching_mistake(float(got), {
        "counting a tie as wrong gives; a tie counts 1/2": (chosen > rejected).double().mean(),
        "counting a tie as right gives; a tie counts 1/2": (chosen >= rejected).double().mean(),
    }) if float(got) != pytest.approx(want) else ""
    assert isinstance(got, float) and got == pytest.approx(want), (
        f"pairwise_accuracy({show(chosen)}, {show(rejected)}) returned {got!r} (a "
        f"{type(got).__name__}), expected {want!r}: {ACCURACY_RULE}.{hint}"
    )


@pytest.mark.exercise("pairwise_accuracy", points=2)
def test_accuracy_by_hand(impl):
    # right, wrong, right, a tie (1/2), right: 3.5 / 5
    check_accuracy(impl, torch.tensor([1.0, 2.0, 3.0, 0.0, 5.0]),
                   torch.tensor([0.0, 2.5, 1.0, 0.0, 4.0]), 0.7)


@pytest.mark.exercise("pairwise_accuracy", points=1)
def test_an_untrained_model_scores_one_half(impl):
    check_accuracy(impl, torch.zeros(7), torch.zeros(7), 0.5)  # every pair a tie
    check_accuracy(impl, torch.ones(4), torch.zeros(4), 1.0)


@pytest.mark.exercise("pairwise_accuracy", points=1)
def test_swapping_the_sides_gives_one_minus_the_accuracy(impl):
    generator = torch.Generator().manual_seed(2)
    chosen, rejected = torch.randn(2, 101, generator=generator)
    forward = impl.pairwise_accuracy(chosen, rejected)
    backward = impl.pairwise_accuracy(rejected, chosen)
    want = (chosen > rejected).float().mean().item()
    assert forward == pytest.approx(want) and forward + backward == pytest.approx(1.0), (
        f"on 101 random pairs pairwise_accuracy gave {forward!r}, and {backward!r} with the "
        f"sides swapped; expected {want:.6g} and {1 - want:.6g}: {ACCURACY_RULE}"
    )


# --- Exercise 05.4: spearman ------------------------------------------------------------------

SPEARMAN_RULE = ("rank each list from 0 (smallest) up, tied values sharing the mean of the ranks "
                 "they occupy, then return the Pearson correlation of the ranks: the covariance "
                 "over sqrt of the product of the two sums of squares, between -1 and 1")


def pearson(a, b):
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    a, b = a - a.mean(), b - b.mean()
    return ((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum())).item()


def ordinal_ranks(values):
    ranks = [0.0] * len(values)
    for rank, index in enumerate(sorted(range(len(values)), key=lambda k: values[k])):
        ranks[index] = float(rank)
    return ranks


def check_spearman(impl, xs, ys, want, label=None):
    got = impl.spearman(list(xs), list(ys))
    label = label or f"{show(xs)}, {show(ys)}"
    hint = matching_mistake(got, {
        "tied values given different ranks gives; tied values share the mean of their ranks":
            pearson(ordinal_ranks(xs), ordinal_ranks(ys)),
        "the correlation of the values themselves gives; correlate their ranks":
            pearson(xs, ys),
    }) if got != pytest.approx(want) else ""
    assert got == pytest.approx(want), (
        f"spearman({label}) returned {got!r}, expected {want:.6g}: {SPEARMAN_RULE}.{hint}"
    )


@pytest.mark.exercise("spearman", points=1)
def test_spearman_of_monotone_orders(impl):
    xs = [0.5, 3.0, 1.0, 2.0]
    check_spearman(impl, xs, [x ** 3 for x in xs], 1.0)  # the same order: 1
    check_spearman(impl, xs, [-math.exp(x) for x in xs], -1.0)  # the opposite order: -1


@pytest.mark.exercise("spearman", points=2)
def test_spearman_by_hand_with_ties(impl):
    # ranks of xs [2, 3, 4, 1]: [1, 2, 3, 0]; of ys [5, 5, 1, 8]: the two 5s share ranks 1 and 2
    # -> [1.5, 1.5, 0, 3]. Centred: [-0.5, 0.5, 1.5, -1.5] and [0, 0, -1.5, 1.5]: covariance
    # -4.5, spreads 5 and 4.5, so -4.5 / sqrt(22.5) = -0.9487. (Ranks that break the tie give
    # -0.8, ties at their lowest rank -0.923, the sorting order taken as ranks 0.8, and the
    # Pearson correlation of the values -0.944.)
    check_spearman(impl, [2.0, 3.0, 4.0, 1.0], [5.0, 5.0, 1.0, 8.0], -4.5 / math.sqrt(22.5))


@pytest.mark.exercise("spearman", points=2)
def test_spearman_matches_minillm_on_random_data(impl):
    rng = random.Random(3)
    xs = [rng.gauss(0, 1) for _ in range(200)]
    ys = [round(x + rng.gauss(0, 1)) for x in xs]  # rounding makes many ties
    check_spearman(impl, xs, ys, package_spearman(xs, ys),
                   "200 random xs, ys rounded to integers (many ties)")
