"""Lesson 05 exercises: the pieces of a reward model and of measuring it.

Implement the four functions below; each matches a section of the lesson:

1. ``bradley_terry_loss``: the loss that turns comparisons into a reward (section 3);
2. ``last_token_pool``: the reward head's input, the state of an answer's last token (section 4);
3. ``pairwise_accuracy``: how often the reward model agrees with a ranking (section 5);
4. ``spearman``: the rank correlation of the reward model's scores with the gold reward
   (section 5).

Every docstring says exactly what to return, with an example. Check your work with

    python -m minillm.grade 05

or, from the lesson notebook, ``minillm.grade.grade("05")``.
"""

import torch


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """The Bradley-Terry loss of a batch of comparisons.

    Under the Bradley-Terry model the probability that a labeler prefers answer a to answer b
    is ``sigmoid(r_a - r_b)``. The loss is the negative log-likelihood of the labels, averaged
    over the pairs: the mean of ``-log sigmoid(chosen[i] - rejected[i])``. Compute it in a way
    that stays finite for any margin, however large (``torch.nn.functional.logsigmoid``).

    Args:
        chosen: (N,) rewards of the answers the labeler preferred.
        rejected: (N,) rewards of the answers it turned down, pair by pair.

    Returns:
        A scalar tensor, differentiable with respect to both inputs.

    Example:
        >>> round(bradley_terry_loss(torch.tensor([0.0]), torch.tensor([0.0])).item(), 4)  # ln 2
        0.6931
        >>> round(bradley_terry_loss(torch.tensor([3.0, 0.0]), torch.tensor([1.0, 1.0])).item(), 4)
        0.7201
    """
    raise NotImplementedError(
        "Exercise 05.1: implement bradley_terry_loss in exercises/ex05_reward.py"
    )


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden state of each answer's last token: what a last-token reward head reads.

    Row n of ``mask`` is 1 on the tokens of answer n (its ``<|assistant|>`` token, its text and
    its ``<|end|>``) and 0 elsewhere (the prompt before it, padding after it). The last token of
    the answer is the last position where the mask is 1; under causal attention its state is the
    only one that has seen the whole conversation.

    Args:
        hidden: (N, T, C) final hidden states of N conversations.
        mask: (N, T) zeros and ones; every row has at least one 1.

    Returns:
        (N, C): ``hidden[n, t_n]`` for each row, t_n the last position where ``mask[n]`` is 1.

    Example:
        >>> hidden = torch.arange(12.0).view(2, 3, 2)  # rows [[0,1],[2,3],[4,5]], [[6,7],...]
        >>> last_token_pool(hidden, torch.tensor([[0, 1, 1], [1, 1, 0]]))
        tensor([[4., 5.],
                [8., 9.]])
    """
    raise NotImplementedError(
        "Exercise 05.2: implement last_token_pool in exercises/ex05_reward.py"
    )


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """The share of pairs that a reward model orders as the labels do.

    Pair i counts 1 if ``chosen[i] > rejected[i]``, 0 if ``chosen[i] < rejected[i]``, and 1/2 if
    the two are equal: a model that cannot tell two answers apart is right half the time when it
    has to guess (so an untrained model whose scores are all 0 gets 0.5, not 0).

    Args:
        chosen: (N,) scores of the answers that should win, N >= 1.
        rejected: (N,) scores of the answers that should lose, pair by pair.

    Returns:
        A Python float between 0 and 1.

    Example:
        >>> chosen = torch.tensor([2.0, 0.0, 1.0, 5.0])
        >>> rejected = torch.tensor([1.0, 3.0, 1.0, 4.0])
        >>> pairwise_accuracy(chosen, rejected)  # right, wrong, a tie, right
        0.625
    """
    raise NotImplementedError(
        "Exercise 05.3: implement pairwise_accuracy in exercises/ex05_reward.py"
    )


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation: the Pearson correlation of the ranks of ``xs`` and ``ys``.

    Rank each list from 0 (smallest) upwards; values that tie share the mean of the ranks they
    occupy (the ranks of [10, 20, 20, 30] are [0, 1.5, 1.5, 3]). Then return
    ``sum((a - mean_a) * (b - mean_b)) / sqrt(sum((a - mean_a) ** 2) * sum((b - mean_b) ** 2))``
    over the ranks a of xs and b of ys. It is 1 when ys grows whenever xs does (in any fashion),
    -1 when it always shrinks, and near 0 when their orders are unrelated.

    Args:
        xs: numbers (e.g. the reward model's scores), at least two distinct.
        ys: as many numbers (e.g. the gold rewards of the same answers), at least two distinct.

    Returns:
        A Python float between -1 and 1.

    Example:
        >>> spearman([1.0, 2.0, 3.0, 4.0], [10.0, 40.0, 90.0, 160.0])
        1.0
        >>> round(spearman([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 2.0]), 4)  # a tie in ys
        0.3162
    """
    raise NotImplementedError(
        "Exercise 05.4: implement spearman in exercises/ex05_reward.py"
    )
