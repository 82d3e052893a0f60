"""Graded tests for lesson 06: the formulas of RLHF (exercises/ex06_rlhf.py).

Expected answers are worked out by hand (in the comments), computed by autograd, or come from
``minillm.ppo`` and ``minillm.dpo``, whose semantics are exactly the exercises'; never from the
code under test.
Each test runs in well under a second.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from graded_feedback import matching_mistake, show

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

KL_RULE = ("on each answer token the reward is -kl_coef * (logp - ref_logp), 0 elsewhere, and "
           "scores[b] is added at the last position where mask[b] is 1")


def check_rewards(impl, scores, logp, ref_logp, mask, kl_coef, label):
    inputs = [scores.clone(), logp.clone(), ref_logp.clone(), mask.clone()]
    got = impl.kl_penalty_rewards(*inputs, kl_coef)
    want = kl_penalty_rewards(scores, logp, ref_logp, mask, kl_coef)
    penalty = -kl_coef * (logp - ref_logp) * mask
    hint = matching_mistake(got, {
        "the penalty with logp and ref_logp swapped gives; it is -kl_coef * (logp - ref_logp)":
            want - 2 * penalty,
        "adding the score on every answer token gives; add it on the last one only":
            penalty + scores[:, None] * mask,
        "charging the penalty outside the answer too gives; it is 0 where mask is 0":
            want - penalty - kl_coef * (logp - ref_logp),
    })
    assert torch.allclose(got, want, atol=1e-6), (
        f"kl_penalty_rewards({label}, kl_coef={kl_coef}) returned {show(got)}, expected "
        f"{show(want)}: {KL_RULE}.{hint}"
    )
    changed = [name for name, before, after in
               zip(("scores", "logp", "ref_logp", "mask"), (scores, logp, ref_logp, mask), inputs)
               if not torch.equal(before, after)]
    assert not changed, (
        f"kl_penalty_rewards({label}) changed its inputs {changed}: the inputs are left "
        "unchanged (PPO reuses logp and ref_logp after computing the rewards); return a new "
        "tensor"
    )


@pytest.mark.exercise("kl_penalty_rewards", points=2)
def test_rewards_by_hand(impl):
    scores = torch.tensor([1.0, -2.0])
    logp = torch.tensor([[-1.0, -0.5, -0.2], [-3.0, -1.0, -1.0]])
    ref_logp = torch.tensor([[-1.0, -1.5, -0.2], [-1.0, -2.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    # row 0: tokens 0-1, penalties -0.1 * [0, 1]; score 1 on token 1
    # row 1: tokens 1-2, penalties -0.1 * [1, 0]; score -2 on token 2
    label = (f"scores {scores.tolist()}, logp {logp.tolist()}, ref_logp {ref_logp.tolist()}, "
             f"mask {mask.tolist()}")
    check_rewards(impl, scores, logp, ref_logp, mask, 0.1, label)


@pytest.mark.exercise("kl_penalty_rewards", points=2)
def test_rewards_match_minillm_on_random_batches(impl):
    generator = torch.Generator().manual_seed(3)
    mask = answer_masks(12, 9, generator)
    scores = torch.randn(12, generator=generator)
    logp, ref_logp = -torch.rand(2, 12, 9, generator=generator) * 4
    check_rewards(impl, scores, logp, ref_logp, mask, 0.3,
                  "12 random answers with a prompt before and padding after")


@pytest.mark.exercise("kl_penalty_rewards", points=2)
def test_rewards_leave_their_inputs_unchanged(impl):
    generator = torch.Generator().manual_seed(8)
    mask = answer_masks(4, 6, generator)
    scores = torch.randn(4, generator=generator)
    logp, ref_logp = -torch.rand(2, 4, 6, generator=generator) * 3
    before = [t.clone() for t in (scores, logp, ref_logp, mask)]
    impl.kl_penalty_rewards(scores, logp, ref_logp, mask, 0.2)
    changed = [name for name, old, new in zip(("scores", "logp", "ref_logp", "mask"), before,
                                              (scores, logp, ref_logp, mask))
               if not torch.equal(old, new)]
    assert not changed, (
        f"kl_penalty_rewards changed its inputs {changed}: the inputs are left unchanged (PPO "
        "reuses logp and ref_logp after computing the rewards); return a new tensor"
    )


# --- Exercise 06.2: gae -----------------------------------------------------------------------

GAE_RULE = ("work backwards from each answer's last token: delta_t = r_t + gamma * V_{t+1} - "
            "V_t and A_t = delta_t + gamma * lam * A_{t+1}, with V and A = 0 after the last "
            "token (never the value of a padding position); advantages 0 where the mask is 0; "
            "returns are advantages + values")


def check_gae(impl, rewards, values, mask, gamma, lam, label):
    got_a, got_r = impl.gae(rewards.clone(), values.clone(), mask.clone(), gamma, lam)
    want_a, want_r = gae(rewards, values, mask, gamma, lam)
    hint = matching_mistake(got_a, {
        "bootstrapping from the value after the last token gives; that value is 0":
            padded_bootstrap_gae(rewards, values, mask, gamma, lam),
        "leaving out lam gives; A_t = delta_t + gamma * lam * A_{t+1}":
            gae(rewards, values, mask, gamma, 1.0)[0],
    }, "your advantages")
    assert torch.allclose(got_a, want_a, atol=1e-5), (
        f"gae({label}, gamma={gamma}, lam={lam}) returned advantages {show(got_a)}, expected "
        f"{show(want_a)}: {GAE_RULE}.{hint}"
    )
    kept = mask.bool()
    assert torch.allclose(got_r[kept], want_r[kept], atol=1e-5), (
        f"gae({label}, gamma={gamma}, lam={lam}) returned returns {show(got_r)} on the answer "
        f"tokens, expected {show(want_r[kept])}: returns are advantages + values"
    )


def padded_bootstrap_gae(rewards, values, mask, gamma, lam):
    """GAE that wrongly takes V_{t+1} from the next position even after an answer's end."""
    advantages = torch.zeros_like(values)
    for b in range(values.size(0)):
        following = 0.0
        for t in reversed(range(values.size(1))):
            if mask[b, t] == 0:
                following = 0.0
                continue
            after = values[b, t + 1] if t + 1 < values.size(1) else 0.0
            following = rewards[b, t] + gamma * after - values[b, t] + gamma * lam * following
            advantages[b, t] = following
    return advantages


@pytest.mark.exercise("gae", points=2)
def test_gae_by_hand(impl):
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[9.0, 0.5, 0.5, 9.0]])  # the 9s are outside the answer: unused
    mask = torch.tensor([[0, 1, 1, 0]])
    # delta_2 = 1 + 0 - 0.5 = 0.5, A_2 = 0.5; delta_1 = 0 + 0.5 - 0.5 = 0, A_1 = 0 + 0.5 * 0.5
    check_gae(impl, rewards, values, mask, 1.0, 0.5,
              "rewards [[0, 0, 1, 0]], values [[9, 0.5, 0.5, 9]], mask [[0, 1, 1, 0]]")


@pytest.mark.exercise("gae", points=2)
def test_gae_with_lambda_one_is_the_return_minus_the_value(impl):
    # lam = gamma = 1: A_t = (sum of the rewards from t on) - V_t, whatever the values are
    generator = torch.Generator().manual_seed(4)
    mask = answer_masks(6, 8, generator).float()
    rewards, values = torch.randn(2, 6, 8, generator=generator) * mask
    to_go = rewards.flip(1).cumsum(1).flip(1)
    advantages, returns = impl.gae(rewards.clone(), values.clone(), mask.clone(), 1.0, 1.0)
    gap = (advantages - (to_go - values) * mask).abs().max().item()
    assert torch.allclose(advantages, (to_go - values) * mask, atol=1e-5) and torch.allclose(
        returns * mask, to_go * mask, atol=1e-5), (
        "with gamma = lam = 1, gae's advantages must be the sum of the rewards still to come "
        "minus the value, and its returns that sum (returns are advantages + values); on 6 "
        f"random answers the advantages differ by up to {gap:.4g}: {GAE_RULE}"
    )


@pytest.mark.exercise("gae", points=2)
def test_gae_matches_minillm_on_random_batches(impl):
    generator = torch.Generator().manual_seed(5)
    mask = answer_masks(10, 12, generator)
    rewards, values = torch.randn(2, 10, 12, generator=generator)
    for gamma, lam in ((1.0, 0.95), (0.9, 0.0), (0.99, 0.7)):
        check_gae(impl, rewards, values, mask, gamma, lam,
                  "10 random answers (random values on prompt and padding too)")


# --- Exercise 06.3: ppo_clipped_loss ----------------------------------------------------------

PPO_RULE = ("with ratio = exp(logp - old_logp) (new over old), the objective per token is "
            "min(ratio * A, clamp(ratio, 1 - clip, 1 + clip) * A); the loss is minus its mean "
            "over the positions where mask is 1, and the clip fraction the share of those "
            "positions where |ratio - 1| > clip")


def check_ppo(impl, logp, old, advantages, mask, clip, label):
    loss, clipped = impl.ppo_clipped_loss(logp.clone(), old.clone(), advantages.clone(),
                                          mask.clone(), clip)
    want_loss, want_clipped = ppo_clipped_loss(logp, old, advantages, mask, clip)
    ratio, kept = torch.exp(logp - old), mask.to(logp.dtype)
    unclipped, clamped = ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages
    hint = matching_mistake(loss.item(), {
        "the max of the two terms gives; PPO takes the min (the pessimistic bound)":
            -(torch.maximum(unclipped, clamped) * kept).sum() / kept.sum(),
        "a mean over every position gives; average over the positions where mask is 1":
            -(torch.minimum(unclipped, clamped) * kept).mean(),
        "the ratio old over new gives; it is exp(logp - old_logp)": ppo_clipped_loss(
            old, logp, advantages, mask, clip)[0],
    }, "your loss")
    assert loss.item() == pytest.approx(want_loss.item(), abs=1e-6), (
        f"ppo_clipped_loss({label}, clip={clip}) returned the loss {loss.item():.6g}, expected "
        f"{want_loss.item():.6g}: {PPO_RULE}.{hint}"
    )
    assert float(clipped) == pytest.approx(want_clipped.item(), abs=1e-6), (
        f"ppo_clipped_loss({label}, clip={clip}) returned the clip fraction {float(clipped):.6g},"
        f" expected {want_clipped.item():.6g}: {PPO_RULE}"
    )


@pytest.mark.exercise("ppo_clipped_loss", points=2)
def test_clipped_loss_by_hand(impl):
    old = torch.zeros(1, 4)
    # ratios 1.5, 0.5, 1.1, 2.0 (the last is masked out); advantages +1, +1, -1, +5
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 2.0]]))
    advantages = torch.tensor([[1.0, 1.0, -1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # objectives: min(1.5, 1.2) = 1.2; min(0.5, 0.8) = 0.5; min(-1.1, -1.1) = -1.1; the loss is
    # -(1.2 + 0.5 - 1.1) / 3 and 2 of the 3 answer tokens (1.5 and 0.5) moved more than 0.2
    check_ppo(impl, logp, old, advantages, mask, 0.2,
              "ratios [[1.5, 0.5, 1.1, 2]], advantages [[1, 1, -1, 5]], mask [[1, 1, 1, 0]]")


@pytest.mark.exercise("ppo_clipped_loss", points=2)
def test_clipped_loss_gradient_stops_past_the_clip(impl):
    # a token already 50% more likely with a positive advantage gets no more push; one that
    # became less likely with a positive advantage still does
    logp = torch.log(torch.tensor([[1.5, 0.5]])).requires_grad_()
    loss, _ = impl.ppo_clipped_loss(logp, torch.zeros(1, 2), torch.ones(1, 2),
                                    torch.ones(1, 2), clip=0.2)
    loss.backward()
    assert logp.grad[0, 0].item() == 0.0 and logp.grad[0, 1].item() == pytest.approx(-0.25), (
        f"ratios [[1.5, 0.5]] with advantages 1 and clip 0.2 gave the gradient "
        f"{show(logp.grad)}, expected [[0, -0.25]]: past 1 + clip a positive advantage gets no "
        f"more push (the min picks the clamped term), below it does; {PPO_RULE}"
    )


@pytest.mark.exercise("ppo_clipped_loss", points=1)
def test_clipped_loss_matches_minillm_on_random_batches(impl):
    generator = torch.Generator().manual_seed(6)
    mask = answer_masks(8, 10, generator)
    logp, old, advantages = torch.randn(3, 8, 10, generator=generator) * 0.3
    check_ppo(impl, logp, old, advantages, mask, 0.2, "8 random answers with padding")


@pytest.mark.exercise("ppo_clipped_loss", points=1)
def test_clip_fraction_at_the_boundary(impl):
    # A ratio exactly 1 + clip has |ratio - 1| = clip, which is not > clip: it is not clipped.
    logp = torch.tensor([[0.3, 0.0]], dtype=torch.float64)
    old = torch.zeros(1, 2, dtype=torch.float64)
    clip = float(torch.exp(logp - old)[0, 0] - 1)
    _, clipped = impl.ppo_clipped_loss(logp, old, torch.ones(1, 2, dtype=torch.float64),
                                       torch.ones(1, 2, dtype=torch.float64), clip)
    assert float(clipped) == 0.0, (
        f"a ratio of exactly 1 + clip (clip = {clip:.6g}) was counted as clipped (clip fraction "
        f"{float(clipped):.6g}, expected 0): a token counts only where |ratio - 1| > clip"
    )


# --- Exercise 06.4: dpo_loss ------------------------------------------------------------------

DPO_RULE = ("-log sigmoid(beta * ((pc - rc) - (pr - rr))) averaged over the pairs: the "
            "implicit reward is beta times the policy's log-probability minus the reference "
            "model's, the chosen answer's reward minus the rejected one's, with F.logsigmoid")


def check_dpo(impl, pc, pr, rc, rr, beta, want, label):
    got = impl.dpo_loss(pc.clone(), pr.clone(), rc.clone(), rr.clone(), beta)
    pc, pr, rc, rr = (t.double() for t in (pc, pr, rc, rr))
    hint = matching_mistake(got.item(), {
        "the loss without the reference model gives; subtract its log-probabilities":
            -F.logsigmoid(beta * (pc - pr)).mean(),
        "the loss without beta gives; multiply the margin by beta":
            -F.logsigmoid((pc - rc) - (pr - rr)).mean(),
        "the loss with chosen and rejected swapped gives":
            -F.logsigmoid(beta * ((pr - rr) - (pc - rc))).mean(),
    }) if got.item() != pytest.approx(want, abs=1e-6) else ""
    assert math.isfinite(got.item()) and got.item() == pytest.approx(want, abs=1e-6), (
        f"dpo_loss({label}, beta={beta}) returned {got.item():.6g}, expected {want:.6g}: "
        f"{DPO_RULE}.{hint}"
    )


@pytest.mark.exercise("dpo_loss", points=2)
def test_dpo_loss_by_hand(impl):
    same = torch.tensor([-10.0, -3.0])
    check_dpo(impl, same, same, same, same, 0.1, math.log(2), "all four equal")
    # margins (1 - (-1)) = 2 and (0 - 2) = -2 at beta 0.5: mean of -log sigmoid(1), -log sigmoid(-1)
    want = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    check_dpo(impl, torch.tensor([-4.0, -5.0]), torch.tensor([-6.0, -3.0]),
              torch.tensor([-5.0, -5.0]), torch.tensor([-5.0, -5.0]), 0.5, want,
              "pc [-4, -5], pr [-6, -3], rc [-5, -5], rr [-5, -5]")


@pytest.mark.exercise("dpo_loss", points=2)
def test_dpo_loss_gradient_raises_chosen_and_lowers_rejected(impl):
    chosen = torch.tensor([-5.0], requires_grad=True)
    rejected = torch.tensor([-5.0], requires_grad=True)
    impl.dpo_loss(chosen, rejected, torch.tensor([-5.0]), torch.tensor([-5.0]), 0.1).backward()
    # at margin 0: d/dchosen of -log sigmoid(0.1 m) = -0.1 * (1 - 1/2)
    assert chosen.grad.item() == pytest.approx(-0.05) and rejected.grad.item() == pytest.approx(
        0.05), (
        f"at policy = reference = -5 and beta 0.1 the gradients were {chosen.grad.item():.4g} "
        f"for the chosen and {rejected.grad.item():.4g} for the rejected log-probability, "
        f"expected -0.05 and 0.05 (raise the chosen, lower the rejected): {DPO_RULE}"
    )


@pytest.mark.exercise("dpo_loss", points=1)
def test_dpo_loss_is_finite_and_matches_minillm(impl):
    check_dpo(impl, torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]),
              torch.tensor([-20000.0]), 0.1, 2000.0, "pc [0], pr [0], rc [0], rr [-20000]")
    generator = torch.Generator().manual_seed(7)
    pc, pr, rc, rr = -torch.rand(4, 32, generator=generator) * 30
    check_dpo(impl, pc, pr, rc, rr, 0.2, dpo_loss(pc, pr, rc, rr, 0.2).item(),
              "32 random pairs")
