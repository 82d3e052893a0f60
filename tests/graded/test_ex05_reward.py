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

from minillm.evaluate import spearman as package_spearman
from minillm.reward import last_state

# --- Exercise 05.1: bradley_terry_loss --------------------------------------------------------


@pytest.mark.exercise("bradley_terry_loss", points=1)
def test_loss_by_hand(impl):
    # equal rewards: P(chosen wins) = 1/2, so the loss is ln 2
    loss = impl.bradley_terry_loss(torch.zeros(3), torch.zeros(3))
    assert loss.item() == pytest.approx(math.log(2))
    # margins 1 and -1: (ln(1 + e^-1) + ln(1 + e^1)) / 2
    loss = impl.bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert loss.item() == pytest.approx(expected)


@pytest.mark.exercise("bradley_terry_loss", points=2)
def test_loss_is_binary_cross_entropy_of_the_margin(impl):
    generator = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(2, 50, generator=generator, dtype=torch.float64)
    want = F.binary_cross_entropy_with_logits(chosen - rejected, torch.ones(50,
                                                                            dtype=torch.float64))
    assert impl.bradley_terry_loss(chosen, rejected).item() == pytest.approx(want.item())


@pytest.mark.exercise("bradley_terry_loss", points=2)
def test_loss_gradient_pushes_the_chosen_answer_up(impl):
    chosen = torch.tensor([0.5, -1.0], requires_grad=True)
    rejected = torch.tensor([0.0, 2.0], requires_grad=True)
    impl.bradley_terry_loss(chosen, rejected).backward()
    # d/d r_chosen of -log sigmoid(m) / N is -(1 - sigmoid(m)) / N; the opposite for rejected
    margins = torch.tensor([0.5, -3.0])
    want = -(1 - torch.sigmoid(margins)) / 2
    assert torch.allclose(chosen.grad, want) and torch.allclose(rejected.grad, -want)


@pytest.mark.exercise("bradley_terry_loss", points=1)
def test_loss_stays_finite_for_huge_margins(impl):
    loss = impl.bradley_terry_loss(torch.tensor([0.0, 500.0]), torch.tensor([500.0, 0.0]))
    assert math.isfinite(loss.item()), "use F.logsigmoid: log(sigmoid(-500)) underflows to -inf"
    assert loss.item() == pytest.approx(250.0)  # (500 + 0) / 2


# --- Exercise 05.2: last_token_pool -----------------------------------------------------------


@pytest.mark.exercise("last_token_pool", points=2)
def test_pool_by_hand(impl):
    hidden = torch.arange(24.0).view(2, 4, 3)
    mask = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0]])
    # row 0: the answer is positions 1-2, its last token position 2 -> [6, 7, 8]
    # row 1: position 0 -> hidden[1, 0] = [12, 13, 14]
    assert impl.last_token_pool(hidden, mask).tolist() == [[6.0, 7.0, 8.0], [12.0, 13.0, 14.0]]


@pytest.mark.exercise("last_token_pool", points=2)
def test_pool_matches_minillm_on_random_masks(impl):
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(16, 10, 5, generator=generator)
    mask = torch.zeros(16, 10, dtype=torch.long)
    for row in range(16):  # prompt, then answer, then padding, of random lengths
        start = int(torch.randint(0, 9, (), generator=generator))
        end = int(torch.randint(start + 1, 11, (), generator=generator))
        mask[row, start:end] = 1
    assert torch.equal(impl.last_token_pool(hidden, mask), last_state(hidden, mask))


@pytest.mark.exercise("last_token_pool", points=1)
def test_pool_passes_gradients_to_the_last_state_only(impl):
    hidden = torch.randn(1, 3, 2, requires_grad=True)
    impl.last_token_pool(hidden, torch.tensor([[1, 1, 0]])).sum().backward()
    assert hidden.grad.tolist() == [[[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]]


# --- Exercise 05.3: pairwise_accuracy ---------------------------------------------------------


@pytest.mark.exercise("pairwise_accuracy", points=2)
def test_accuracy_by_hand(impl):
    chosen = torch.tensor([1.0, 2.0, 3.0, 0.0, 5.0])
    rejected = torch.tensor([0.0, 2.5, 1.0, 0.0, 4.0])
    # right, wrong, right, a tie (1/2), right: 3.5 / 5
    accuracy = impl.pairwise_accuracy(chosen, rejected)
    assert isinstance(accuracy, float) and accuracy == pytest.approx(0.7)


@pytest.mark.exercise("pairwise_accuracy", points=1)
def test_an_untrained_model_scores_one_half(impl):
    assert impl.pairwise_accuracy(torch.zeros(7), torch.zeros(7)) == pytest.approx(0.5)
    assert impl.pairwise_accuracy(torch.ones(4), torch.zeros(4)) == pytest.approx(1.0)


@pytest.mark.exercise("pairwise_accuracy", points=1)
def test_swapping_the_sides_gives_one_minus_the_accuracy(impl):
    generator = torch.Generator().manual_seed(2)
    chosen, rejected = torch.randn(2, 101, generator=generator)
    forward, backward = impl.pairwise_accuracy(chosen, rejected), \
        impl.pairwise_accuracy(rejected, chosen)
    assert forward + backward == pytest.approx(1.0)
    assert forward == pytest.approx((chosen > rejected).float().mean().item())


# --- Exercise 05.4: spearman ------------------------------------------------------------------


@pytest.mark.exercise("spearman", points=1)
def test_spearman_of_monotone_orders(impl):
    xs = [0.5, 3.0, 1.0, 2.0]
    assert impl.spearman(xs, [x ** 3 for x in xs]) == pytest.approx(1.0)
    assert impl.spearman(xs, [-math.exp(x) for x in xs]) == pytest.approx(-1.0)


@pytest.mark.exercise("spearman", points=2)
def test_spearman_by_hand_with_ties(impl):
    # ranks of xs: [0, 1, 2, 3]; of ys [5, 5, 1, 7]: the two 5s share ranks 1 and 2 -> [1.5,
    # 1.5, 0, 3]. Centred: [-1.5, -0.5, 0.5, 1.5] and [0, 0, -1.5, 1.5]: covariance 1.5,
    # spreads 5 and 4.5, so 1.5 / sqrt(22.5).
    assert impl.spearman([1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 1.0, 7.0]) == \
        pytest.approx(1.5 / math.sqrt(22.5))


@pytest.mark.exercise("spearman", points=2)
def test_spearman_matches_minillm_on_random_data(impl):
    rng = random.Random(3)
    xs = [rng.gauss(0, 1) for _ in range(200)]
    ys = [round(x + rng.gauss(0, 1)) for x in xs]  # rounding makes many ties
    assert impl.spearman(xs, ys) == pytest.approx(package_spearman(xs, ys))
