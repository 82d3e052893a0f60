"""Graded tests for lesson 07: evaluating an assistant (exercises/ex07_evaluation.py).

Expected answers are worked out by hand (in the comments) or come from ``minillm.arena`` and
``minillm.benchmarks``, whose semantics are exactly the exercises'; never from the code under
test. Each test runs in well under a second.
"""

import math
import random

import pytest
import torch
from graded_feedback import attempt, show

from minillm import arena, benchmarks
from minillm.model import GPT, GPTConfig

CHOICE_RULE = ("each choice's score is the mean, over the choice's own tokens only (not the "
               "context's), of log p(token | all tokens before it), where logits[0, t] predict "
               "token t + 1")
ELO_RULE = ("a's expected score is E = 1 / (1 + 10 ** ((rating_b - rating_a) / 400)); a gains "
            "k * (score_a - E) and b loses exactly as much")
BT_RULE = ("p_i <- W_i / sum over j != i of N_ij / (p_i + p_j), with W_i = i's wins and "
           "N_ij = wins[i, j] + wins[j, i]; then divide by the geometric mean; ratings "
           "1000 + 400 * log10(p)")
BOOT_RULE = ("one generator random.Random(seed); each resample rng.choices(values, "
             "k=len(values)); sort the statistics; low at index floor((1 - level) / 2 * m), "
             "high at index ceil((1 + level) / 2 * m) - 1")
KL_RULE = "the KL of best-of-n is log n - (n - 1) / n, in nats (the natural log)"


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=11, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()


class TableModel(torch.nn.Module):
    """A bigram model whose logits are a fixed table: log p(b | a) = log_softmax(table[a])[b]."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, ids):
        return self.table[ids], None


# --- Exercise 07.1: choice_scores ----------------------------------------------------------------


@pytest.mark.exercise("choice_scores", points=2)
def test_choice_scores_by_hand(impl):
    table = torch.log(torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25], [0.9, 0.05, 0.05]]))
    # context [0]; choice [2]: log 0.7; choice [1, 0]: (log 0.2 + log 0.5) / 2;
    # choice [2, 0, 0]: (log 0.7 + log 0.9 + log 0.1) / 3
    want = [math.log(0.7), (math.log(0.2) + math.log(0.5)) / 2,
            (math.log(0.7) + math.log(0.9) + math.log(0.1)) / 3]
    got = attempt(CHOICE_RULE, impl.choice_scores, TableModel(table), [0], [[2], [1, 0], [2, 0, 0]])
    got = [float(x) for x in got]
    hint = ""
    if len(got) == 3 and abs(got[1] - (math.log(0.2) + math.log(0.5))) < 1e-5:
        hint = " (that is the sum of the log-probabilities: take the mean over the choice's tokens)"
    assert len(got) == 3 and all(abs(g - w) < 1e-5 for g, w in zip(got, want)), (
        f"for context [0] and choices [[2], [1, 0], [2, 0, 0]] of a bigram table, expected "
        f"{show(want)}, got {show(got)}{hint}: {CHOICE_RULE}")


@pytest.mark.exercise("choice_scores", points=2)
def test_choice_scores_match_minillm_on_a_gpt(impl):
    model = tiny_model()
    rng = random.Random(0)
    for _ in range(3):
        context = [rng.randrange(11) for _ in range(rng.randint(1, 6))]
        choices = [[rng.randrange(11) for _ in range(rng.randint(1, 5))] for _ in range(4)]
        want = benchmarks.choice_scores(model, context, choices)
        got = [float(x) for x in attempt(CHOICE_RULE, impl.choice_scores, model, context, choices)]
        assert len(got) == 4 and all(abs(g - w) < 1e-4 for g, w in zip(got, want)), (
            f"for context {context} and choices {choices}, expected {show(want)} "
            f"(minillm.benchmarks.choice_scores), got {show(got)}: {CHOICE_RULE}")


@pytest.mark.exercise("choice_scores", points=1)
def test_choice_scores_pick_the_likely_answer(impl):
    table = torch.full((3, 3), -5.0)
    table[0, 1] = 5.0  # after token 0 comes token 1, almost surely
    got = [float(x) for x in attempt(CHOICE_RULE, impl.choice_scores, TableModel(table), [2, 0],
                                     [[2], [1], [0]])]
    assert max(range(3), key=got.__getitem__) == 1, (
        f"after context [2, 0], a model that always follows 0 with 1 should score choice [1] "
        f"highest, got scores {show(got)}: {CHOICE_RULE}")


# --- Exercise 07.2: elo_update -------------------------------------------------------------------


@pytest.mark.exercise("elo_update", points=2)
def test_elo_by_hand(impl):
    got = attempt(ELO_RULE, impl.elo_update, 1000, 1000, 1.0)
    assert tuple(map(float, got)) == pytest.approx((1016.0, 984.0)), (
        f"elo_update(1000, 1000, 1.0) should be (1016.0, 984.0) (equal players expect 1/2, "
        f"so a win earns 32 * 1/2), got {show(got)}: {ELO_RULE}")
    # 1400 against 1000: E = 1 / (1 + 10 ** -1) = 10/11, so a loss costs 32 * 10/11 = 29.09
    got = attempt(ELO_RULE, impl.elo_update, 1400, 1000, 0.0)
    want = (1400 - 320 / 11, 1000 + 320 / 11)
    assert tuple(map(float, got)) == pytest.approx(want), (
        f"elo_update(1400, 1000, 0.0) should be {show(want)}: the favourite expected 10/11 "
        f"and scored 0; got {show(got)}: {ELO_RULE}")


@pytest.mark.exercise("elo_update", points=2)
def test_elo_matches_minillm(impl):
    rng = random.Random(1)
    for _ in range(20):
        a, b = rng.uniform(700, 1300), rng.uniform(700, 1300)
        score, k = rng.choice([0.0, 0.5, 1.0]), rng.choice([4, 16, 32])
        want = arena.elo_update(a, b, score, k)
        got = attempt(ELO_RULE, impl.elo_update, a, b, score, k)
        assert tuple(map(float, got)) == pytest.approx(want), (
            f"elo_update({a:.1f}, {b:.1f}, {score}, k={k}) should be {show(want)}, got "
            f"{show(got)}: {ELO_RULE}")


# --- Exercise 07.3: bradley_terry ----------------------------------------------------------------


def check_bt(impl, wins, label):
    want = arena.bradley_terry(wins.double(), prior=0)
    got = torch.as_tensor(attempt(BT_RULE, impl.bradley_terry, wins.clone()), dtype=torch.float64)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-3), (
        f"for {label} wins {show(wins)}, expected ratings {show(want)}, got {show(got)}: "
        f"{BT_RULE}")


@pytest.mark.exercise("bradley_terry", points=2)
def test_bradley_terry_by_hand(impl):
    # 3 wins to 1: p = (sqrt 3, 1/sqrt 3), ratings 1000 +- 200 log10 3
    check_bt(impl, torch.tensor([[0.0, 3.0], [1.0, 0.0]]), "two players")


@pytest.mark.exercise("bradley_terry", points=2)
def test_bradley_terry_matches_minillm(impl):
    generator = torch.Generator().manual_seed(2)
    for n in (3, 4, 5):
        wins = torch.randint(1, 30, (n, n), generator=generator).float() * (1 - torch.eye(n))
        check_bt(impl, wins, f"{n} players'")


@pytest.mark.exercise("bradley_terry", points=1)
def test_bradley_terry_ignores_the_order_of_the_players(impl):
    wins = torch.tensor([[0.0, 8.0, 2.0], [3.0, 0.0, 6.0], [5.0, 1.0, 0.0]])
    order = [2, 0, 1]
    first = torch.as_tensor(attempt(BT_RULE, impl.bradley_terry, wins.clone()), dtype=torch.float64)
    second = torch.as_tensor(attempt(BT_RULE, impl.bradley_terry, wins[order][:, order].clone()),
                             dtype=torch.float64)
    assert torch.allclose(first[order], second, atol=1e-3), (
        f"listing the players in another order should list the same ratings in that order: "
        f"got {show(first)} and, reordered {order}, {show(second)}: {BT_RULE}")


# --- Exercise 07.4: bootstrap_interval -----------------------------------------------------------


def mean(values):
    return sum(values) / len(values)


@pytest.mark.exercise("bootstrap_interval", points=2)
def test_bootstrap_matches_minillm(impl):
    cases = [([0, 1, 1, 1] * 25, mean, 1000, 0.95, 0),
             ([3.0, 1.0, 4.0, 1.0, 5.0, 9.0], max, 200, 0.9, 7),
             (list(range(30)), mean, 50, 0.8, 3)]
    for values, statistic, resamples, level, seed in cases:
        want = arena.bootstrap_interval(values, statistic, resamples, level, seed)
        got = attempt(BOOT_RULE, impl.bootstrap_interval, values, statistic, resamples, level,
                      seed)
        assert tuple(map(float, got)) == pytest.approx(want), (
            f"bootstrap_interval({show(values)}, {statistic.__name__}, resamples={resamples}, "
            f"level={level}, seed={seed}) should be {show(want)}, got {show(got)}: {BOOT_RULE}")


@pytest.mark.exercise("bootstrap_interval", points=2)
def test_bootstrap_interval_is_about_the_normal_one(impl):
    values = [1] * 60 + [0] * 40  # a win rate of 0.6 over 100 votes: SE 0.049
    low, high = map(float, attempt(BOOT_RULE, impl.bootstrap_interval, values, mean, 2000,
                                   0.95, 5))
    se = math.sqrt(0.6 * 0.4 / 100)
    assert low < 0.6 < high and abs((high - low) - 2 * 1.96 * se) < 0.04, (
        f"for 60 wins in 100 votes the 95% interval should be about 0.6 +- {1.96 * se:.3f}, "
        f"got ({low:.3f}, {high:.3f}): {BOOT_RULE}")


# --- Exercise 07.5: best_of_n_kl -----------------------------------------------------------------


@pytest.mark.exercise("best_of_n_kl", points=2)
def test_best_of_n_kl(impl):
    for n in (1, 2, 4, 16, 64):
        want = math.log(n) - (n - 1) / n
        got = float(attempt(KL_RULE, impl.best_of_n_kl, n))
        assert abs(got - want) < 1e-9, (
            f"best_of_n_kl({n}) should be {want:.6f}, got {got:.6f}: {KL_RULE}")
