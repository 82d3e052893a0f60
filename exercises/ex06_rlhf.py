"""Lesson 06 exercises: the four formulas that RLHF is made of.

Implement the functions below; each matches a section of the lesson:

1. ``kl_penalty_rewards``: the reward of each token, the RM's score less the KL penalty
   (section 2);
2. ``gae``: generalized advantage estimation, how much better than expected each token was
   (section 2);
3. ``ppo_clipped_loss``: PPO's clipped surrogate, which keeps each update close to the policy
   that sampled the answers (section 3);
4. ``dpo_loss``: direct preference optimization's loss on a batch of labeled pairs (section 5).

Every docstring says exactly what to return, with an example. Check your work with

    python -m minillm.grade 06

or, from the lesson notebook, ``minillm.grade.grade("06")``.
"""

import torch


def kl_penalty_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor,
                       mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards of a batch of answers: the KL penalty on every answer token, and the
    reward model's score of the whole answer added on its last token.

    Row b of ``mask`` is 1 on the positions of answer b's tokens (one contiguous run) and 0
    elsewhere. On each answer token the reward is ``-kl_coef * (logp - ref_logp)``: the policy
    pays for making a token more likely than the reference does. Elsewhere it is 0. Then
    ``scores[b]`` is added at the last position where ``mask[b]`` is 1.

    Args:
        scores: (B,) the reward model's score of each answer.
        logp: (B, T) log-probability of each sampled token under the policy.
        ref_logp: (B, T) log-probability of the same tokens under the reference model.
        mask: (B, T) zeros and ones; every row has at least one 1.
        kl_coef: the price of one nat of KL, in units of reward.

    Returns:
        (B, T) rewards (a new tensor; the inputs are left unchanged).

    Example:
        >>> kl_penalty_rewards(torch.tensor([2.0]), torch.tensor([[-1.0, -1.0, -2.0, 0.0]]),
        ...                    torch.tensor([[-1.0, -2.0, -1.0, 0.0]]),
        ...                    torch.tensor([[0, 1, 1, 0]]), kl_coef=0.5)
        tensor([[ 0.0000, -0.5000,  2.5000,  0.0000]])
    """
    raise NotImplementedError(
        "Exercise 06.1: implement kl_penalty_rewards in exercises/ex06_rlhf.py"
    )


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation: (advantages, returns), each (B, T).

    ``values[b, t]`` is the value head's estimate of the reward still to come before token t is
    chosen; ``mask`` marks each answer's tokens (one contiguous run per row), and after an
    answer's last token the value is 0. Working backwards from the end of each answer:

        delta_t = rewards_t + gamma * V_{t+1} - V_t        (V_{t+1} = 0 after the last token)
        A_t     = delta_t + gamma * lam * A_{t+1}          (A_{t+1} = 0 after the last token)

    Advantages are 0 where the mask is 0. Returns are ``advantages + values`` (the targets of
    the value head; their value where the mask is 0 does not matter).

    Args:
        rewards, values: (B, T) floats (``kl_penalty_rewards`` and the value head).
        mask: (B, T) zeros and ones.
        gamma: discount per token; lam: how far the estimate looks ahead (0 to 1).

    Returns:
        (advantages, returns), two (B, T) tensors.

    Example:
        >>> advantages, returns = gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.5]]),
        ...                           torch.tensor([[1, 1]]), gamma=1.0, lam=0.5)
        >>> advantages  # delta = [0 + 0.5 - 0.5, 1 + 0 - 0.5] = [0, 0.5]; A_0 = 0 + 0.5 * 0.5
        tensor([[0.2500, 0.5000]])
    """
    raise NotImplementedError(
        "Exercise 06.2: implement gae in exercises/ex06_rlhf.py"
    )


def ppo_clipped_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                     mask: torch.Tensor, clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate loss, averaged over answer tokens, and the share of those tokens
    whose probability ratio was clipped.

    Per token, with ``ratio = exp(logp - old_logp)`` (new over old probability), the objective
    is ``min(ratio * A, clamp(ratio, 1 - clip, 1 + clip) * A)``; the loss is minus its mean over
    the positions where ``mask`` is 1. The clip fraction is the share of those positions where
    ``|ratio - 1| > clip``.

    Args:
        logp: (B, T) log-probabilities of the sampled tokens under the policy being trained.
        old_logp: (B, T) the same under the policy that sampled them (no gradient).
        advantages: (B, T) the advantage of each token.
        mask: (B, T) zeros and ones, 1 on answer tokens.
        clip: how far the ratio may move before the gradient stops.

    Returns:
        (loss, clip_fraction): a scalar tensor differentiable with respect to ``logp``, and a
        scalar tensor.

    Example:
        >>> loss, clipped = ppo_clipped_loss(torch.log(torch.tensor([[1.5, 1.0]])),
        ...                                  torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]),
        ...                                  torch.ones(1, 2), clip=0.2)
        >>> round(loss.item(), 4), clipped.item()  # -(min(1.5, 1.2) * 1 + 1 * -1) / 2
        (-0.1, 0.5)
    """
    raise NotImplementedError(
        "Exercise 06.3: implement ppo_clipped_loss in exercises/ex06_rlhf.py"
    )


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float = 0.1) -> torch.Tensor:
    """The DPO loss of a batch of labeled pairs.

    Each input holds one summed log-probability per pair: of the chosen answer under the policy,
    of the rejected answer under the policy, and of both under the reference model. The implicit
    reward of an answer is ``beta * (log pi - log ref)``; the loss is the Bradley-Terry loss of
    lesson 05 on those rewards, ``-log sigmoid(beta * ((pc - rc) - (pr - rr)))``, averaged over
    the pairs (use ``torch.nn.functional.logsigmoid`` so that it stays finite).

    Args:
        policy_chosen, policy_rejected, ref_chosen, ref_rejected: (N,) tensors.
        beta: the strength of the implicit KL constraint.

    Returns:
        A scalar tensor, differentiable with respect to the policy's log-probabilities.

    Example:
        >>> round(dpo_loss(torch.tensor([-5.0]), torch.tensor([-5.0]), torch.tensor([-5.0]),
        ...                torch.tensor([-5.0])).item(), 4)  # policy = reference: ln 2
        0.6931
        >>> round(dpo_loss(torch.tensor([-4.0]), torch.tensor([-6.0]), torch.tensor([-5.0]),
        ...                torch.tensor([-5.0]), beta=0.5).item(), 4)  # -log sigmoid(1)
        0.3133
    """
    raise NotImplementedError(
        "Exercise 06.4: implement dpo_loss in exercises/ex06_rlhf.py"
    )
