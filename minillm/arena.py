"""Judging assistants: a judge and its biases, an arena of blind votes, and best-of-n.

An assistant's answers are open-ended, so no reference answer and no loss can say which of two
assistants is better. Labs ask people, or a model standing in for them, to compare answers:

- **The arena** (Chatbot Arena): two anonymous assistants answer the same prompt, a voter picks
  the better answer (or calls a tie), and many such votes become a leaderboard. Ratings come
  from online **Elo** updates (``elo_update``, ``online_elo``: they depend on the order of the
  votes and on K) or from a **Bradley-Terry** fit to the win counts (``bradley_terry``: the
  maximum-likelihood strengths, which do not), with **bootstrap** intervals
  (``bootstrap_ratings``, ``bootstrap_interval``).
- **The judge** (AlpacaEval, MT-Bench): a model reads both answers and gives the verdict, in
  minutes instead of weeks. Here it is a pairwise head on lesson 05's reward model
  (``train_judge``): it reads the RM's view of the answer shown first and of the one shown
  second. Reading both in order, it can prefer a *position* (verdicts that flip when the answers
  swap places) and, like the RM it is made from, it can prefer *length*; both are measured
  against the gold reward (``judge_report``) with the standard mitigations: averaging the two
  orders, and a length-controlled margin (``length_slope``).
- **Best-of-n** (``best_of_n``): sample n answers from the SFT model and keep the one the RM
  likes best. No training, and its distance from the SFT model has a formula,
  KL = log n - (n - 1)/n (``best_of_n_kl``), so it sits on the same axes as PPO, GRPO and DPO:
  the over-optimization curve of Gao et al. (2022) on the learner's own models.

The voters of the arena are the simulated world's: the noisy labeler (``minillm.world.label``)
plays the crowd, the gold reward plays the truth, and the judge plays an LLM judge.
"""

from __future__ import annotations

import itertools
import math
import random

import torch
import torch.nn as nn
import torch.nn.functional as F

from minillm.checkpoint import Checkpoint
from minillm.evaluate import clustered_se, evaluate_policy, mean_and_se, sft_reference
from minillm.model import GPT
from minillm.policy import RewardScale
from minillm.reward import RewardModel, read_responses
from minillm.world import Comparisons, label, preference_prompts

# ----------------------------------------------------------------------------- the answers

def answer_pool(policies: dict[str, GPT], reference: GPT, reward_model: RewardModel,
                scale: RewardScale, tokenizer, prompts: list[dict],
                samples: int | dict[str, int] = 4, seed: int = 0) -> list[dict]:
    """Every policy's answers to ``prompts`` (temperature 1), in one list: ``evaluate_policy``'s
    rows (gold, proxy reward, KL to ``reference``) with "policy" (its name in ``policies``).

    ``samples`` is the number of answers per prompt, for all policies or per name (best-of-n
    needs more of the SFT model's). The arena draws its matches from this pool.
    """
    pool = []
    for name, policy in policies.items():
        n = samples[name] if isinstance(samples, dict) else samples
        rows = evaluate_policy(policy, reference, reward_model, scale, tokenizer, prompts, n, seed)
        pool += [{**row, "policy": name} for row in rows]
    return pool


def gold_means(pool: list[dict]) -> dict[str, dict]:
    """Each policy's mean gold reward in ``pool``, with its standard error clustered by prompt
    and its number of answers: {name: {"gold", "se", "n"}}, the truth the arena is judged by."""
    result = {}
    for name in dict.fromkeys(r["policy"] for r in pool):
        rows = [r for r in pool if r["policy"] == name]
        gold, se = mean_and_se(rows, "gold")
        result[name] = {"gold": gold, "se": se, "n": len(rows)}
    return result


# ----------------------------------------------------------------------------- ratings

def elo_update(rating_a: float, rating_b: float, score_a: float,
               k: float = 32) -> tuple[float, float]:
    """Both ratings after one game of a against b: ``score_a`` is 1 (a won), 0 (b won) or 1/2.

    a's expected score is 1 / (1 + 10^((rating_b - rating_a) / 400)); a gains k times what it
    scored above that, and b loses exactly as much (the ratings' sum never changes).

    Example: ``elo_update(1000, 1000, 1.0)`` is (1016.0, 984.0): equal players expect 1/2.
    """
    expected = 1 / (1 + 10 ** ((rating_b - rating_a) / 400))
    change = k * (score_a - expected)
    return rating_a + change, rating_b - change


def online_elo(games: list[tuple[str, str, float]], players: list[str], k: float = 32,
               initial: float = 1000) -> dict[str, float]:
    """Every player's Elo rating after ``games`` (a, b, score of a), played in that order, each
    player starting at ``initial``. The same games in another order give other ratings."""
    ratings = dict.fromkeys(players, float(initial))
    for a, b, score in games:
        ratings[a], ratings[b] = elo_update(ratings[a], ratings[b], score, k)
    return ratings


def win_matrix(games: list[tuple[str, str, float]], players: list[str]) -> torch.Tensor:
    """wins[i, j]: how often player i beat player j in ``games``, a tie counting 1/2 for each."""
    index = {name: k for k, name in enumerate(players)}
    wins = torch.zeros(len(players), len(players), dtype=torch.float64)
    for a, b, score in games:
        wins[index[a], index[b]] += score
        wins[index[b], index[a]] += 1 - score
    return wins


def bradley_terry(wins: torch.Tensor, prior: float = 1.0, iterations: int = 500) -> torch.Tensor:
    """Bradley-Terry ratings on the Elo scale from win counts ``wins`` (n, n), or a batch of
    them (..., n, n): the strengths p that make the wins most likely under P(i beats j) =
    p_i / (p_i + p_j), as 400 log10(p) centred on 1000.

    The fit is Hunter's (2004) minorize-maximize update, p_i <- W_i / sum_j N_ij / (p_i + p_j)
    (W_i: i's wins, N_ij: games of i and j), with the strengths rescaled each time to a
    geometric mean of 1. ``prior`` adds that many drawn games between every two players, split
    as halves, so that a player who won (or lost) every game gets a finite rating. The ratings
    depend on the win counts only, never on the order the games were played in.

    Example: two players, 3 wins to 1 and no prior: p = (3, 1) / sqrt(3), ratings 1000 +- 200
    log10(3), i.e. (1095.4, 904.6); a rating gap of 400 log10(3) means odds of 3 to 1.
    """
    n = wins.size(-1)
    off_diagonal = 1 - torch.eye(n, dtype=wins.dtype)
    wins = wins + prior / 2 * off_diagonal
    games = wins + wins.transpose(-1, -2)
    total = wins.sum(-1)
    p = torch.ones_like(total)
    for _ in range(iterations):
        p = total / (games / (p[..., :, None] + p[..., None, :])).sum(-1)
        p = p / p.log().mean(-1, keepdim=True).exp()
    return 1000 + 400 * torch.log10(p)


def percentile_interval(values, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` of ``values``: the value at index floor((1 - level)/2 * m) and the
    one at index ceil((1 + level)/2 * m) - 1 of the m values sorted (for m = 1000 and 0.95, the
    25th and the 975th smallest: index 25 and 974)."""
    ordered = sorted(float(v) for v in values)
    m = len(ordered)
    return (ordered[math.floor((1 - level) / 2 * m)],
            ordered[math.ceil((1 + level) / 2 * m) - 1])


def bootstrap_interval(values: list, statistic, resamples: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval of ``statistic(values)``.

    ``resamples`` times, draw len(values) values with replacement
    (``random.Random(seed).choices``, one generator for all draws) and compute the statistic;
    the interval is the central ``level`` of those (``percentile_interval``). It says how much
    the statistic would move if the same number of votes were collected again.

    Example: ``bootstrap_interval([0, 1, 1, 1], lambda v: sum(v) / len(v))`` is about (0.25, 1.0).
    """
    if not values or resamples < 1:
        raise ValueError("The bootstrap needs at least one value and one resample.")
    rng = random.Random(seed)
    stats = [statistic(rng.choices(values, k=len(values))) for _ in range(resamples)]
    return percentile_interval(stats, level)


def bootstrap_ratings(games: list[tuple[str, str, float]], players: list[str],
                      resamples: int = 500, level: float = 0.95, seed: int = 0,
                      prior: float = 1.0) -> dict[str, dict]:
    """The Bradley-Terry leaderboard of ``games`` with percentile bootstrap intervals: the games
    resampled with replacement ``resamples`` times, all refitted at once as a batch.
    Returns {player: {"rating", "low", "high", "games", "wins"}} (a tie counts 1/2 a win)."""
    if not games:
        raise ValueError("The leaderboard needs at least one game.")
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(games), (resamples, len(games)), generator=generator)
    index = {name: k for k, name in enumerate(players)}
    a = torch.tensor([index[g[0]] for g in games])
    b = torch.tensor([index[g[1]] for g in games])
    score = torch.tensor([float(g[2]) for g in games], dtype=torch.float64)
    n = len(players)
    wins = torch.zeros(resamples, n * n, dtype=torch.float64)
    wins.scatter_add_(1, (a * n + b)[picks], score[picks])
    wins.scatter_add_(1, (b * n + a)[picks], 1 - score[picks])
    spread = bradley_terry(wins.view(resamples, n, n), prior)
    full = win_matrix(games, players)
    ratings = bradley_terry(full, prior)
    board = {}
    for k, name in enumerate(players):
        low, high = percentile_interval(spread[:, k].tolist(), level)
        board[name] = {"rating": ratings[k].item(), "low": low, "high": high,
                       "games": int((full[k] + full[:, k]).sum()), "wins": full[k].sum().item()}
    return board


def kendall_tau(xs: list[float], ys: list[float]) -> float:
    """Kendall's rank correlation: over all pairs of items, the share ordered alike by xs and ys
    minus the share ordered oppositely (a pair tied in either counts as neither). 1: the same
    ranking; -1: reversed."""
    pairs = list(itertools.combinations(range(len(xs)), 2))
    if not pairs:
        raise ValueError("Kendall's tau needs at least two items.")
    signs = [math.copysign(1, (xs[i] - xs[j]) * (ys[i] - ys[j]))
             if (xs[i] - xs[j]) * (ys[i] - ys[j]) else 0 for i, j in pairs]
    return sum(signs) / len(pairs)


# ----------------------------------------------------------------------------- the arena

def play_arena(pool: list[dict], votes: int, seed: int = 0) -> list[tuple[int, int]]:
    """``votes`` blind matches drawn from ``pool``: a held-out prompt at random, two different
    policies at random, one answer of each at random, shown in a random order. Each match is
    (i, j), indices into ``pool`` of the answer shown first and the one shown second."""
    by_prompt: dict[str, dict[str, list[int]]] = {}
    for k, row in enumerate(pool):
        by_prompt.setdefault(row["prompt"], {}).setdefault(row["policy"], []).append(k)
    prompts = [p for p, answers in by_prompt.items() if len(answers) >= 2]
    if not prompts:
        raise ValueError("The arena needs at least two policies answering the same prompt.")
    rng = random.Random(seed)
    matches = []
    for _ in range(votes):
        answers = by_prompt[rng.choice(prompts)]
        first, second = rng.sample(sorted(answers), 2)
        matches.append((rng.choice(answers[first]), rng.choice(answers[second])))
    return matches


def all_pairs(pool: list[dict], seed: int = 0) -> list[tuple[int, int]]:
    """Every pair of answers to the same prompt in ``pool``, each in a random order (the judge
    is measured on these: many more pairs than the arena's matches, ties of gold included)."""
    by_prompt: dict[str, list[int]] = {}
    for k, row in enumerate(pool):
        by_prompt.setdefault(row["prompt"], []).append(k)
    rng = random.Random(seed)
    return [(i, j) if rng.random() < 0.5 else (j, i)
            for group in by_prompt.values() for i, j in itertools.combinations(group, 2)]


def as_games(pool: list[dict], matches: list[tuple[int, int]],
          verdicts: list[float]) -> list[tuple[str, str, float]]:
    """The matches as games for the ratings: (first policy, second policy, score of the first)."""
    return [(pool[i]["policy"], pool[j]["policy"], v) for (i, j), v in zip(matches, verdicts)]


def labeler_votes(pool: list[dict], matches: list[tuple[int, int]], agreement: float = 0.8,
                  seed: int = 0) -> list[float]:
    """The crowd's vote on each match, from lesson 05's noisy labeler: 1 if it prefers the answer
    shown first, 0 the second, 1/2 for answers of equal gold reward (a tie it does not call)."""
    rng = random.Random(seed)
    verdicts = []
    for i, j in matches:
        verdict = label(pool[i]["gold"], pool[j]["gold"], agreement, rng)
        verdicts.append(0.5 if verdict is None else float(verdict == 0))
    return verdicts


def gold_votes(pool: list[dict], matches: list[tuple[int, int]]) -> list[float]:
    """What a voter who knew the gold reward would say (1, 0, or 1/2 for a tie)."""
    return [0.5 if pool[i]["gold"] == pool[j]["gold"] else float(pool[i]["gold"] > pool[j]["gold"])
            for i, j in matches]


def agreement_rate(x: list[float], y: list[float]) -> dict:
    """How often two voters pick the same answer, over the matches that neither calls a tie:
    {"rate", "se" (binomial), "n"}."""
    both = [(a, b) for a, b in zip(x, y) if a != 0.5 and b != 0.5]
    if not both:
        return {"rate": float("nan"), "se": float("nan"), "n": 0}
    rate = sum(a == b for a, b in both) / len(both)
    return {"rate": rate, "se": math.sqrt(rate * (1 - rate) / len(both)), "n": len(both)}


def settling(pool: list[dict], matches: list[tuple[int, int]], verdicts: list[float],
             players: list[str], checkpoints: list[int], truth: dict[str, float]) -> list[dict]:
    """How the Bradley-Terry leaderboard grows with the votes: after each of ``checkpoints``
    votes, the ratings, the ranking (best first) and Kendall's tau with ``truth`` (e.g. the gold
    means)."""
    rows = []
    for m in checkpoints:
        ratings = bradley_terry(win_matrix(as_games(pool, matches[:m], verdicts[:m]), players))
        board = dict(zip(players, ratings.tolist()))
        rows.append({"votes": m, "ratings": board,
                     "ranking": sorted(players, key=board.__getitem__, reverse=True),
                     "tau": kendall_tau([board[p] for p in players], [truth[p] for p in players])})
    return rows


def votes_to_settle(steps: list[dict]) -> int | None:
    """The fewest votes of ``settling``'s checkpoints from which on the ranking never changed
    again (None if it changed at the last one)."""
    final = steps[-1]["ranking"]
    settled = None
    for step in reversed(steps):
        if step["ranking"] != final:
            break
        settled = step["votes"]
    return settled if len(steps) > 1 and settled != steps[-1]["votes"] else None


# ----------------------------------------------------------------------------- the judge

class PairwiseJudge(nn.Module):
    """A judge that reads two answers in order: a linear head on the reward model's features of
    the answer shown first and of the one shown second (``RewardModel.features``), giving the
    log-odds that the first is better. Nothing forces it to be symmetric in the two places,
    which is how a judge comes to prefer a position."""

    def __init__(self, features: int):
        super().__init__()
        self.head = nn.Linear(2 * features, 1)
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """The log-odds that ``first`` is better than ``second``, features (N, F) each -> (N,)."""
        x = torch.cat(((first - self.mean) / self.std, (second - self.mean) / self.std), -1)
        return self.head(x).squeeze(-1)


def answer_features(reward_model: RewardModel, tokenizer, responses: list[dict]) -> torch.Tensor:
    """The reward model's features of each answer (N, 3C): what the judge reads."""
    return read_responses(reward_model, tokenizer, responses, reward_model.features)


def train_judge(reward_model: RewardModel, tokenizer, comparisons: Comparisons,
                prompts: int = 64, steps: int = 300, lr: float = 0.01,
                weight_decay: float = 1e-3, seed: int = 0) -> PairwiseJudge:
    """Train a ``PairwiseJudge`` on the labeled pairs of ``prompts`` prompts of ``comparisons``
    (lesson 05's training comparisons), each pair shown in a random order (a coin flip per
    pair, so that neither place wins more often in the data), by full-batch Adam on the
    Bradley-Terry loss. The reward model is only read."""
    rng = random.Random(seed)
    by_prompt: dict[str, list[int]] = {}
    for k, response in enumerate(comparisons.responses):
        by_prompt.setdefault(response["prompt"], []).append(k)
    chosen_prompts = set(rng.sample(sorted(by_prompt), min(prompts, len(by_prompt))))
    used = [k for p in sorted(chosen_prompts) for k in by_prompt[p]]
    row = {k: n for n, k in enumerate(used)}
    features = answer_features(reward_model, tokenizer, [comparisons.responses[k] for k in used])
    pairs = [(c, r) for c, r in comparisons.pairs if comparisons.responses[c]["prompt"]
             in chosen_prompts]
    flips = [rng.random() < 0.5 for _ in pairs]
    first = torch.tensor([row[r if f else c] for (c, r), f in zip(pairs, flips)])
    second = torch.tensor([row[c if f else r] for (c, r), f in zip(pairs, flips)])
    target = torch.tensor([0.0 if f else 1.0 for f in flips])  # 1: the first shown was chosen
    judge = PairwiseJudge(features.size(1))
    judge.mean.copy_(features.mean(0))
    judge.std.copy_(features.std(0).clamp(min=1e-6))
    nn.init.zeros_(judge.head.weight)
    nn.init.zeros_(judge.head.bias)
    standardized = (features - judge.mean) / judge.std
    optimizer = torch.optim.Adam(judge.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():  # a caller may have turned gradients off to read models
        _fit(judge, standardized, first, second, target, optimizer, steps)
    return judge.eval()


def _fit(judge: PairwiseJudge, standardized: torch.Tensor, first: torch.Tensor,
         second: torch.Tensor, target: torch.Tensor, optimizer, steps: int) -> None:
    """``train_judge``'s loop: full-batch steps on the Bradley-Terry loss of the pairs."""
    for _ in range(steps):
        # The head is linear, so each answer's two projections (read first, read second) are
        # computed once per step and the pairs only gather them: the same logits as
        # judge(features[first], features[second]), at a fraction of the cost.
        projected = standardized @ judge.head.weight.view(2, -1).T  # (answers, 2)
        logits = projected[first, 0] + projected[second, 1] + judge.head.bias
        loss = F.binary_cross_entropy_with_logits(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@torch.no_grad()
def judge_margins(judge: PairwiseJudge, features: torch.Tensor,
                  matches: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The judge's log-odds for each match as shown (first answer first) and with the two
    answers swapped; ``features`` are the pool's (``answer_features``)."""
    i = torch.tensor([m[0] for m in matches])
    j = torch.tensor([m[1] for m in matches])
    return judge(features[i], features[j]), judge(features[j], features[i])


def length_slope(pool: list[dict], matches: list[tuple[int, int]],
                 margins: torch.Tensor) -> float:
    """How much the judge's log-odds rise per 100 characters that the first answer is longer,
    with the two policies' strengths held fixed: the least-squares fit of
    margin = s(first policy) - s(second policy) + c + slope * (length difference / 100),
    AlpacaEval's length control in its simplest form. No gold reward is used: a lab can do this."""
    players = sorted({pool[i]["policy"] for m in matches for i in m})
    # the first policy is the reference (strength 0): the differences determine the others
    index = {name: k - 1 for k, name in enumerate(players)}
    design = torch.zeros(len(matches), len(players) + 1, dtype=torch.float64)
    for row, (i, j) in enumerate(matches):
        for k, sign in ((index[pool[i]["policy"]], 1), (index[pool[j]["policy"]], -1)):
            if k >= 0:
                design[row, k] += sign
        design[row, -2] = 1
        design[row, -1] = (len(pool[i]["answer"]) - len(pool[j]["answer"])) / 100
    fit = torch.linalg.lstsq(design, margins.double()[:, None], driver="gelsd").solution
    return fit[-1, 0].item()


MITIGATIONS = ("none", "swap", "length", "swap+length")


def mitigated(pool: list[dict], matches: list[tuple[int, int]], shown: torch.Tensor,
              swapped: torch.Tensor, mitigation: str,
              slope: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The judge's margins (as shown, swapped) after a ``mitigation`` of ``MITIGATIONS``.

    "swap": each order's margin becomes the average of the two orders' (the swapped one with
    its sign turned), so the verdict no longer depends on the order. "length": the margin less
    ``slope`` (``length_slope``, fitted if not given) times the length difference / 100.
    """
    if mitigation not in MITIGATIONS:
        raise ValueError(f"The mitigation is one of {', '.join(MITIGATIONS)}, not {mitigation!r}.")
    if "swap" in mitigation:
        shown, swapped = (shown - swapped) / 2, (swapped - shown) / 2
    if "length" in mitigation:
        slope = length_slope(pool, matches, shown) if slope is None else slope
        longer = torch.tensor([(len(pool[i]["answer"]) - len(pool[j]["answer"])) / 100
                               for i, j in matches], dtype=shown.dtype)
        shown, swapped = shown - slope * longer, swapped + slope * longer
    return shown, swapped


def verdicts_of(margins: torch.Tensor) -> list[float]:
    """Votes from log-odds: 1 (the first shown is better), 0, or 1/2 for exactly 0."""
    return [0.5 if m == 0 else float(m > 0) for m in margins.tolist()]


def judge_report(pool: list[dict], matches: list[tuple[int, int]], shown: torch.Tensor,
                 swapped: torch.Tensor) -> dict:
    """The judge's biases on ``matches``, measured against the gold reward.

    - "flip_rate": the share of matches whose winner changes when the answers swap places (the
      same *place* wins both times); "first_wins": the share of verdicts, both orders counted,
      that go to the answer shown first (1/2 for a judge without position bias).
    - "accuracy": the share of matches of unequal gold whose verdict (as shown) agrees with gold.
    - "longer_wins_tied": on matches whose answers have equal gold reward but different lengths
      (the content a reader values held fixed), the share the judge gives to the longer answer
      (1/2 without length bias), with "tied_n"; "longer_wins" and "gold_longer_wins": the share
      of matches of unequal gold and length won by the longer answer, by the judge and by gold.
    Each rate has a binomial standard error ("..._se") and each its sample size ("n...").
    """
    def rate(hits: list[bool]) -> tuple[float, float, int]:
        n = len(hits)
        if n == 0:
            return float("nan"), float("nan"), 0
        p = sum(hits) / n
        return p, math.sqrt(p * (1 - p) / n), n

    a, b = shown.tolist(), swapped.tolist()
    flips = [(x > 0 and y > 0) or (x < 0 and y < 0) for x, y in zip(a, b)]
    firsts = [x > 0 for x in a] + [y > 0 for y in b]
    gold = [(pool[i]["gold"], pool[j]["gold"]) for i, j in matches]
    lengths = [(len(pool[i]["answer"]), len(pool[j]["answer"])) for i, j in matches]
    right = [(x > 0) == (g1 > g2) for x, (g1, g2) in zip(a, gold) if g1 != g2]
    tied = [(x > 0) == (l1 > l2) for x, (g1, g2), (l1, l2) in zip(a, gold, lengths)
            if g1 == g2 and l1 != l2]
    unequal = [(x, g1 > g2, l1 > l2) for x, (g1, g2), (l1, l2) in zip(a, gold, lengths)
               if g1 != g2 and l1 != l2]
    report = {}
    for name, hits in (("flip_rate", flips), ("first_wins", firsts), ("accuracy", right),
                       ("longer_wins_tied", tied),
                       ("longer_wins", [(x > 0) == longer for x, _, longer in unequal]),
                       ("gold_longer_wins", [g == longer for _, g, longer in unequal])):
        report[name], report[name + "_se"], report[name + "_n"] = rate(hits)
    return report


# ----------------------------------------------------------------------------- best-of-n

def best_of_n_kl(n: int) -> float:
    """The KL (nats) from the SFT model to best-of-n sampling from it: log n - (n - 1)/n.

    The formula of Stiennon et al. (2020), exact for a continuous reward with no ties (and an
    upper bound otherwise, Beirami et al., 2024). Example: ``best_of_n_kl(1)`` is 0 (one sample
    is the SFT model itself); ``best_of_n_kl(16)`` is log 16 - 15/16 = 1.835 nats.
    """
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be a positive integer, not {n!r}.")
    return math.log(n) - (n - 1) / n


def best_of_n(rows: list[dict], ns: list[int]) -> list[dict]:
    """Best-of-n of one policy's answers ``rows`` (N per prompt, with "proxy" and "gold"): for
    each n of ``ns``, the expected gold and proxy reward of the answer the RM ranks highest among
    n drawn at random from a prompt's N, averaged over prompts.

    The expectation over all C(N, n) subsets is exact: with a prompt's answers sorted by proxy
    reward, the k-th lowest (k = 1..N) is the best of a random subset with probability
    C(k - 1, n - 1) / C(N, n). Returns one dict per n: "n", "gold", "gold_se", "proxy",
    "proxy_se" (standard errors over prompts) and "kl" (``best_of_n_kl``).
    """
    by_prompt: dict[str, list[dict]] = {}
    for row in rows:
        by_prompt.setdefault(row["prompt"], []).append(row)
    smallest = min(len(v) for v in by_prompt.values())
    if max(ns) > smallest:
        raise ValueError(f"n goes up to {max(ns)}, but a prompt has only {smallest} answers.")
    result = []
    for n in ns:
        values = {"gold": [], "proxy": []}
        for answers in by_prompt.values():
            ranked = sorted(answers, key=lambda r: r["proxy"])
            weights = [math.comb(k - 1, n - 1) / math.comb(len(ranked), n)
                       for k in range(1, len(ranked) + 1)]
            for key in values:
                values[key].append(sum(w * r[key] for w, r in zip(weights, ranked)))
        point = {"n": n, "kl": best_of_n_kl(n)}
        for key, xs in values.items():
            point[key] = sum(xs) / len(xs)
            point[key + "_se"] = clustered_se(xs, list(range(len(xs))))
        result.append(point)
    return result


# ----------------------------------------------------------------------------- all of it

def run_arena(policies: dict[str, GPT], assistant: Checkpoint, reward_model: RewardModel,
              comparisons: Comparisons, votes: int = 2000, samples: int = 4, best_of: int = 16,
              resamples: int = 500, seed: int = 0) -> dict:
    """The lesson's evaluation in one call, as plain data (what ``python -m minillm arena``
    prints and saves).

    ``policies`` are the contestants by name, the SFT model (``assistant``) among them under
    "sft"; each answers every held-out prompt ``samples`` times, the SFT model ``best_of`` times
    (its answers are best-of-n's candidates). ``votes`` labeler votes make the leaderboard;
    ``comparisons`` (lesson 05's training pairs) train the judge, whose biases are measured on
    the same matches with each mitigation. Returns a dict with "leaderboard" (rating, interval,
    games, gold mean and SE per policy), "kendall_tau" (labeler ranking against gold),
    "judge" (``judge_report`` per mitigation, and the judge's leaderboard's tau), "agreement"
    (between voters), "best_of_n" and "rl" (gold and KL of the tuned policies).
    """
    if "sft" not in policies:
        raise ValueError("The contestants must include the SFT model, named 'sft'.")
    if best_of < samples:
        raise ValueError(f"best_of ({best_of}) must be at least samples ({samples}): the arena "
                         f"draws the SFT model's answers from best-of-n's.")
    reference = sft_reference(assistant, reward_model, samples=best_of, seed=seed)
    tok = assistant.tokenizer
    others = {name: model for name, model in policies.items() if name != "sft"}
    pool = [{**row, "policy": "sft"} for row in reference.rows]
    pool += answer_pool(others, assistant.model, reward_model, reference.scale, tok,
                        preference_prompts()[1], samples, seed)
    # The arena draws from as many SFT answers per prompt as the others have: the first
    # ``samples`` of each prompt's ``best_of`` (evaluate_policy lists a prompt's answers together).
    arena_pool = [r for r in pool if r["policy"] != "sft"] + [
        r for k, r in enumerate(pool[:len(reference.rows)]) if k % best_of < samples]
    players = list(policies)
    matches = play_arena(arena_pool, votes, seed)
    crowd = labeler_votes(arena_pool, matches, seed=seed)
    truth = gold_means(arena_pool)
    board = bootstrap_ratings(as_games(arena_pool, matches, crowd), players, resamples,
                              seed=seed)
    gold_order = [truth[p]["gold"] for p in players]
    judge = train_judge(reward_model, tok, comparisons, seed=seed)
    features = answer_features(reward_model, tok, arena_pool)
    pairs = all_pairs(arena_pool, seed)
    shown, swapped = judge_margins(judge, features, pairs)
    slope = length_slope(arena_pool, pairs, shown)
    reports = {m: judge_report(arena_pool, pairs,
                               *mitigated(arena_pool, pairs, shown, swapped, m, slope))
               for m in MITIGATIONS}
    shown = judge_margins(judge, features, matches)[0]
    judge_board = bootstrap_ratings(as_games(arena_pool, matches, verdicts_of(shown)), players,
                                    resamples, seed=seed)
    second_crowd = labeler_votes(arena_pool, matches, seed=seed + 1)
    gold = gold_votes(arena_pool, matches)
    judged = verdicts_of(shown)
    rl = {}
    for name in policies:
        rows = [r for r in pool if r["policy"] == name]
        (gold_mean, gold_se), (kl, kl_se) = mean_and_se(rows, "gold"), mean_and_se(rows, "kl")
        rl[name] = {"gold": gold_mean, "gold_se": gold_se, "kl": kl, "kl_se": kl_se,
                    "n": len(rows)}
    return {
        "votes": votes, "prompts": len({r["prompt"] for r in arena_pool}),
        "answers": len(arena_pool),
        "leaderboard": {p: {**board[p], "gold": truth[p]["gold"], "gold_se": truth[p]["se"]}
                        for p in players},
        "kendall_tau": kendall_tau([board[p]["rating"] for p in players], gold_order),
        "judge": {"length_slope": slope, "pairs": len(pairs), "mitigations": reports,
                  "kendall_tau": kendall_tau([judge_board[p]["rating"] for p in players],
                                             gold_order)},
        "agreement": {"labeler_vs_labeler": agreement_rate(crowd, second_crowd),
                      "labeler_vs_gold": agreement_rate(crowd, gold),
                      "judge_vs_gold": agreement_rate(judged, gold),
                      "judge_vs_labeler": agreement_rate(judged, crowd)},
        "best_of_n": best_of_n([r for r in pool if r["policy"] == "sft"],
                               [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= best_of]),
        "rl": rl,
    }


def arena_summary(result: dict) -> str:
    """``run_arena``'s result as a few lines of text: the leaderboard beside the gold truth,
    the judge's biases, best-of-n."""
    lines = [f"Arena: {result['votes']} labeler votes on {result['prompts']} held-out prompts "
             f"({result['answers']} answers); Bradley-Terry ratings, 95% bootstrap intervals",
             f"  {'policy':<8}{'rating':>8}  {'interval':<15}{'games':>6}  gold mean ± SE"]
    board = result["leaderboard"]
    for name in sorted(board, key=lambda p: board[p]["rating"], reverse=True):
        b = board[name]
        interval = f"[{b['low']:.0f}, {b['high']:.0f}]"
        lines.append(f"  {name:<8}{b['rating']:>8.0f}  {interval:<15}{b['games']:>6}  "
                     f"{b['gold']:.3f} ± {b['gold_se']:.3f}")
    lines.append(f"Kendall tau, labeler ranking vs gold: {result['kendall_tau']:+.2f}; "
                 f"judge ranking vs gold: {result['judge']['kendall_tau']:+.2f}")
    lines.append(f"Judge on {result['judge']['pairs']} pairs: flip rate, accuracy vs gold, "
                 f"longer answer's win rate where gold ties")
    for name, r in result["judge"]["mitigations"].items():
        lines.append(f"  {name:<12}{r['flip_rate']:>9.3f} ± {r['flip_rate_se']:.3f}"
                     f"   {r['accuracy']:.3f} ± {r['accuracy_se']:.3f}"
                     f"   {r['longer_wins_tied']:.3f} ± {r['longer_wins_tied_se']:.3f}"
                     f" (n={r['longer_wins_tied_n']})")
    lines.append("Best-of-n of the SFT model (KL = log n - (n-1)/n) and the tuned policies:")
    for p in result["best_of_n"]:
        lines.append(f"  best-of-{p['n']:<3} KL {p['kl']:5.2f}  gold {p['gold']:.3f} ± "
                     f"{p['gold_se']:.3f}")
    for name, r in result["rl"].items():
        if name not in ("sft", "base"):
            lines.append(f"  {name:<11} KL {r['kl']:5.2f}  gold {r['gold']:.3f} ± "
                         f"{r['gold_se']:.3f}")
    return "\n".join(lines)
