"""Graded tests for lesson 06: the formulas of RLHF (exercises/ex06_rlhf.py).

Expected answers are worked out by hand (in the comments), computed by autograd, or come from
``minillm.ppo`` and ``minillm.dpo``, whose semantics are exactly the exercises'; never from the
code under test.
Each test runs in well under a second.
"""

import math

import pytest
import torch

from minillm.dpo import dpo_loss
from minillm.ppo import gae, kl_penalty_rewards, ppo_clipped_loss


def answer_masks(B: int, T: int, generator: torch.Generator) -> torch.Tensor:
    """(B, T) masks with one contiguous run of ones per row (a prompt before, padding after)."""
    mask = torch.zeros(B, T, dtype=torch.long)
    for row in range(B):
        start = int(torch.randint(0, T - 1, (), generator=generator))
        end = int(torch.randint(start + 1, T + 1, (), generator=generator))
        mask[row, start:end] = 1
    return mask


# --- Exercise 06.1: kl_penalty_rewards --------------------------------------------------------


@pytest.mark.exercise("kl_penalty_rewards", points=2)
def test_rewards_by_hand(impl):
    scores = torch.tensor([1.0, -2.0])
    logp = torch.tensor([[-1.0, -0.5, -0.2], [-3.0, -1.0, -1.0]])
    ref_logp = torch.tensor([[-1.0, -1.5, -0.2], [-1.0, -2.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    # row 0: tokens 0-1, penalties -0.1 * [0, 1]; score 1 on token 1
    # row 1: tokens 1-2, penalties -0.1 * [1, 0]; score -2 on token 2
    want = torch.tensor([[0.0, -0.1 + 1.0, 0.0], [0.0, -0.1, -2.0]])
    got = impl.kl_penalty_rewards(scores, logp, ref_logp, mask, kl_coef=0.1)
    assert torch.allclose(got, want)


@pytest.mark.exercise("kl_penalty_rewards", points=2)
def test_rewards_match_minillm_on_random_batches(impl):
    generator = torch.Generator().manual_seed(3)
    mask = answer_masks(12, 9, generator)
    scores = torch.randn(12, generator=generator)
    logp, ref_logp = -torch.rand(2, 12, 9, generator=generator) * 4
    got = impl.kl_penalty_rewards(scores, logp.clone(), ref_logp.clone(), mask.clone(), 0.3)
    want = kl_penalty_rewards(scores, logp, ref_logp, mask, 0.3)
    assert torch.allclose(got, want, atol=1e-6)
    # an answer's rewards add up to its score less kl_coef times its KL estimate
    kl = ((logp - ref_logp) * mask).sum(1)
    assert torch.allclose(got.sum(1), scores - 0.3 * kl, atol=1e-5)


# --- Exercise 06.2: gae -----------------------------------------------------------------------


@pytest.mark.exercise("gae", points=2)
def test_gae_by_hand(impl):
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[9.0, 0.5, 0.5, 9.0]])  # the 9s are outside the answer: unused
    mask = torch.tensor([[0, 1, 1, 0]])
    advantages, returns = impl.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # delta_2 = 1 + 0 - 0.5 = 0.5, A_2 = 0.5; delta_1 = 0 + 0.5 - 0.5 = 0, A_1 = 0 + 0.5 * 0.5
    assert torch.allclose(advantages, torch.tensor([[0.0, 0.25, 0.5, 0.0]]))
    assert torch.allclose(returns[mask.bool()], torch.tensor([0.75, 1.0]))


@pytest.mark.exercise("gae", points=2)
def test_gae_with_lambda_one_is_the_return_minus_the_value(impl):
    # lam = gamma = 1: A_t = (sum of the rewards from t on) - V_t, whatever the values are
    generator = torch.Generator().manual_seed(4)
    mask = answer_masks(6, 8, generator).float()
    rewards, values = torch.randn(2, 6, 8, generator=generator) * mask
    advantages, returns = impl.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    to_go = rewards.flip(1).cumsum(1).flip(1)
    assert torch.allclose(advantages, (to_go - values) * mask, atol=1e-5)
    assert torch.allclose(returns * mask, to_go * mask, atol=1e-5)


@pytest.mark.exercise("gae", points=2)
def test_gae_matches_minillm_on_random_batches(impl):
    generator = torch.Generator().manual_seed(5)
    mask = answer_masks(10, 12, generator)
    rewards, values = torch.randn(2, 10, 12, generator=generator)
    for gamma, lam in ((1.0, 0.95), (0.9, 0.0), (0.99, 0.7)):
        got_a, got_r = impl.gae(rewards.clone(), values.clone(), mask.clone(), gamma, lam)
        want_a, want_r = gae(rewards, values, mask, gamma, lam)
        assert torch.allclose(got_a, want_a, atol=1e-5), f"gamma={gamma}, lam={lam}"
        assert torch.allclose(got_r[mask.bool()], want_r[mask.bool()], atol=1e-5)


# --- Exercise 06.3: ppo_clipped_loss ----------------------------------------------------------


@pytest.mark.exercise("ppo_clipped_loss", points=2)
def test_clipped_loss_by_hand(impl):
    old = torch.zeros(1, 4)
    # ratios 1.5, 0.5, 1.1, 2.0 (the last is masked out); advantages +1, +1, -1, +5
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 2.0]]))
    advantages = torch.tensor([[1.0, 1.0, -1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clipped = impl.ppo_clipped_loss(logp, old, advantages, mask, clip=0.2)
    # objectives: min(1.5, 1.2) = 1.2; min(0.5, 0.8) = 0.5; min(-1.1, -1.1) = -1.1
    assert loss.item() == pytest.approx(-(1.2 + 0.5 - 1.1) / 3)
    assert clipped.item() == pytest.approx(2 / 3)  # 1.5 and 0.5 moved more than 0.2


@pytest.mark.exercise("ppo_clipped_loss", points=2)
def test_clipped_loss_gradient_stops_past_the_clip(impl):
    # a token already 50% more likely with a positive advantage gets no more push; one that
    # became less likely with a positive advantage still does
    logp = torch.log(torch.tensor([[1.5, 0.5]])).requires_grad_()
    loss, _ = impl.ppo_clipped_loss(logp, torch.zeros(1, 2), torch.ones(1, 2),
                                    torch.ones(1, 2), clip=0.2)
    loss.backward()
    assert logp.grad[0, 0].item() == 0.0
    assert logp.grad[0, 1].item() == pytest.approx(-0.5 / 2)  # d(-ratio)/dlogp / 2 tokens


@pytest.mark.exercise("ppo_clipped_loss", points=1)
def test_clipped_loss_matches_minillm_on_random_batches(impl):
    generator = torch.Generator().manual_seed(6)
    mask = answer_masks(8, 10, generator)
    logp, old, advantages = torch.randn(3, 8, 10, generator=generator) * 0.3
    got = impl.ppo_clipped_loss(logp, old, advantages, mask, 0.2)
    want = ppo_clipped_loss(logp, old, advantages, mask, 0.2)
    assert got[0].item() == pytest.approx(want[0].item(), abs=1e-6)
    assert float(got[1]) == pytest.approx(want[1].item(), abs=1e-6)


# --- Exercise 06.4: dpo_loss ------------------------------------------------------------------


@pytest.mark.exercise("dpo_loss", points=2)
def test_dpo_loss_by_hand(impl):
    same = torch.tensor([-10.0, -3.0])
    assert impl.dpo_loss(same, same, same, same).item() == pytest.approx(math.log(2))
    # margins (1 - (-1)) = 2 and (0 - 2) = -2 at beta 0.5: mean of -log sigmoid(1), -log sigmoid(-1)
    loss = impl.dpo_loss(torch.tensor([-4.0, -5.0]), torch.tensor([-6.0, -3.0]),
                         torch.tensor([-5.0, -5.0]), torch.tensor([-5.0, -5.0]), beta=0.5)
    want = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert loss.item() == pytest.approx(want)


@pytest.mark.exercise("dpo_loss", points=2)
def test_dpo_loss_gradient_raises_chosen_and_lowers_rejected(impl):
    chosen = torch.tensor([-5.0], requires_grad=True)
    rejected = torch.tensor([-5.0], requires_grad=True)
    impl.dpo_loss(chosen, rejected, torch.tensor([-5.0]), torch.tensor([-5.0]), 0.1).backward()
    # at margin 0: d/dchosen of -log sigmoid(0.1 m) = -0.1 * (1 - 1/2)
    assert chosen.grad.item() == pytest.approx(-0.05)
    assert rejected.grad.item() == pytest.approx(0.05)


@pytest.mark.exercise("dpo_loss", points=1)
def test_dpo_loss_is_finite_and_matches_minillm(impl):
    huge = impl.dpo_loss(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]),
                         torch.tensor([-20000.0]), beta=0.1)
    assert math.isfinite(huge.item()), "use F.logsigmoid: log(sigmoid(-2000)) underflows"
    assert huge.item() == pytest.approx(2000.0)
    generator = torch.Generator().manual_seed(7)
    pc, pr, rc, rr = -torch.rand(4, 32, generator=generator) * 30
    assert impl.dpo_loss(pc, pr, rc, rr, 0.2).item() == pytest.approx(
        dpo_loss(pc, pr, rc, rr, 0.2).item(), abs=1e-6)
