"""Lesson 07 exercises: the arithmetic of evaluating an assistant.

Implement the functions below; each matches a section of the lesson:

1. ``choice_scores``: a multiple-choice question scored by log-likelihood (section 1);
2. ``elo_update``: one game of the arena's online rating (section 3);
3. ``bradley_terry``: ratings fitted to all the win counts at once (section 3);
4. ``bootstrap_interval``: how much a statistic would move with new votes (section 3);
5. ``best_of_n_kl``: how far best-of-n sampling is from the model it samples (section 5).

Every docstring says exactly what to return, with an example. Check your work with

    python -m minillm.grade 07

or, from the lesson notebook, ``minillm.grade.grade("07")``.
"""

import math  # noqa: F401  (math.log, math.floor, math.ceil: you will need them)
import random  # noqa: F401  (random.Random(seed).choices)

import torch
import torch.nn.functional as F  # noqa: F401  (F.log_softmax)


def choice_scores(model, context: list[int], choices: list[list[int]]) -> list[float]:
    """Score each candidate continuation of ``context`` by the model's log-likelihood.

    For each choice c, read the tokens ``context + c`` with ``model`` (``model(ids)`` returns
    ``(logits, loss)``, logits of shape (1, T, V), where logits[0, t] predict token t + 1), and
    average log p(token | all tokens before it) over the choice's own tokens only, never the
    context's. The mean, not the sum: a sum would favour the shortest choice, whatever it says.
    Use ``torch.log_softmax`` over the vocabulary, and no gradients.

    Args:
        model: a language model (a ``minillm.model.GPT``).
        context: the question's token ids (at least one).
        choices: each candidate's token ids (each at least one).

    Returns:
        One float per choice, in the order given: its mean log-probability per token.

    Example:
        With context [a] and choices [[b], [c, d]], the scores are
        [log p(b | a), (log p(c | a) + log p(d | a c)) / 2].
    """
    raise NotImplementedError(
        "Exercise 07.1: implement choice_scores in exercises/ex07_evaluation.py"
    )


def elo_update(rating_a: float, rating_b: float, score_a: float,
               k: float = 32) -> tuple[float, float]:
    """Both players' ratings after one game of a against b.

    a's expected score is E = 1 / (1 + 10 ** ((rating_b - rating_a) / 400)); a gains
    k * (score_a - E), and b loses exactly as much (the sum of the ratings never changes).

    Args:
        rating_a, rating_b: the ratings before the game.
        score_a: 1 if a won, 0 if b won, 0.5 for a tie.
        k: the largest change one game can make.

    Returns:
        (new rating of a, new rating of b).

    Example:
        >>> elo_update(1000, 1000, 1.0)
        (1016.0, 984.0)
    """
    raise NotImplementedError(
        "Exercise 07.2: implement elo_update in exercises/ex07_evaluation.py"
    )


def bradley_terry(wins: torch.Tensor, iterations: int = 500) -> torch.Tensor:
    """Bradley-Terry ratings on the Elo scale from a table of win counts.

    Under Bradley-Terry, player i beats j with probability p_i / (p_i + p_j). Fit the
    strengths p by Hunter's minorize-maximize update, repeated ``iterations`` times from
    p = 1 for everyone:

        p_i <- W_i / sum over j != i of N_ij / (p_i + p_j)

    where W_i = sum_j wins[i, j] (i's wins) and N_ij = wins[i, j] + wins[j, i] (the games of i
    and j); after each update, divide every p by their geometric mean (so the p's multiply to 1).
    Return the ratings 1000 + 400 * log10(p_i). (Every player must have won and lost at least
    once, or a strength runs off to 0 or infinity.)

    Args:
        wins: (n, n) float tensor; wins[i, j] is how often i beat j (a tie counts 1/2 to each).
        iterations: how many updates.

    Returns:
        A float tensor (n,) of ratings, whose mean is 1000.

    Example:
        >>> bradley_terry(torch.tensor([[0.0, 3.0], [1.0, 0.0]]))  # 3 wins to 1: odds 3 to 1
        tensor([1095.4243,  904.5757], dtype=torch.float64)
    """
    raise NotImplementedError(
        "Exercise 07.3: implement bradley_terry in exercises/ex07_evaluation.py"
    )


def bootstrap_interval(values: list, statistic, resamples: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval of ``statistic(values)``.

    Make one generator, ``rng = random.Random(seed)``; ``resamples`` times, draw a resample
    ``rng.choices(values, k=len(values))`` (with replacement, as many values as there are) and
    compute the statistic of it. Sort the m = ``resamples`` results; the interval runs from the
    one at index floor((1 - level) / 2 * m) to the one at index ceil((1 + level) / 2 * m) - 1
    (for m = 1000 and level 0.95: indices 25 and 974).

    Args:
        values: the observations (e.g. 1 for each vote won, 0 for each lost).
        statistic: a function of a list of values (e.g. the mean).
        resamples: how many resamples.
        level: the share of the resampled statistics the interval holds.
        seed: seeds the generator.

    Returns:
        (low, high), two floats.

    Example (a win rate of 0.75 over 100 votes, give or take about 1.96 standard errors):
        >>> bootstrap_interval([0, 1, 1, 1] * 25, lambda v: sum(v) / len(v))
        (0.67, 0.83)
    """
    raise NotImplementedError(
        "Exercise 07.4: implement bootstrap_interval in exercises/ex07_evaluation.py"
    )


def best_of_n_kl(n: int) -> float:
    """The KL divergence (nats) of best-of-n sampling from the model it samples from.

    Best-of-n draws n answers and keeps the one a reward model scores highest. For a reward
    with no ties its KL to the model is log n - (n - 1) / n (natural log).

    Args:
        n: the number of answers drawn (1 or more).

    Returns:
        The KL in nats, a float.

    Example:
        >>> best_of_n_kl(1), round(best_of_n_kl(16), 4)
        (0.0, 1.8351)
    """
    raise NotImplementedError(
        "Exercise 07.5: implement best_of_n_kl in exercises/ex07_evaluation.py"
    )
