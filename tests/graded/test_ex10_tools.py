"""Graded tests for lesson 10: a calculator the model can call, and learning from a checked
answer (exercises/ex10_tools.py).

Expected answers are worked out by hand (in the comments) or come from ``minillm.tools``,
``minillm.reasoning`` and ``minillm.ppo``, whose semantics are exactly the exercises'; never
from the code under test. Each test runs in well under a second.
"""

import builtins
import random

import pytest
import torch
from graded_feedback import attempt, show

from minillm.arithmetic import verifiable_reward
from minillm.ppo import group_advantages
from minillm.reasoning import majority_vote
from minillm.tools import CalcError
from minillm.tools import calculate as reference_calculate

CALC_RULE = ("calculate parses integers, + - * and parentheses, with * before + and -, and "
             "left to right otherwise (10-2-3 is 5)")
SAFE_RULE = ("calculate raises ValueError for anything but numbers, + - * and parentheses; "
             "never eval")
MASK_RULE = ("tool_loss_mask is False on a call's result: from the token after <|/calc|> up to and "
             "including the result_end_id that closes it; True everywhere else (the call and "
             "its <|/calc|> included)")
VOTE_RULE = ("majority_vote returns the answer given most often, None left out unless every "
             "answer is None, a tie going to the answer that occurs first")
ADVANTAGE_RULE = ("the reward is 1.0 when the last number in the text equals the solution, else "
                  "0.0, standardized within each group of group_size: (r - mean) / (std + 1e-8) "
                  "with the population std")


def random_expression(rng: random.Random, depth: int = 0) -> str:
    if depth > 2 or rng.random() < 0.4:
        return ("-" if rng.random() < 0.15 else "") + str(rng.randint(0, 99))
    if rng.random() < 0.25:
        return f"({random_expression(rng, depth + 1)})"
    op = rng.choice("+-*")
    return f"{random_expression(rng, depth + 1)}{op}{random_expression(rng, depth + 1)}"


# --- Exercise 10.1: calculate -----------------------------------------------------------------


BY_HAND = [
    ("37+48", 85),  # the lesson's call
    ("2+3*4", 14),  # * binds tighter: 2 + 12, not 5 * 4 = 20
    ("10-2-3", 5),  # left to right: (10 - 2) - 3, not 10 - (2 - 3) = 11
    ("2*(3+4)-5", 9),
    ("-7+10", 3),
    ("-(2+3)*2", -10),
    (" 1 + 2 ", 3),  # spaces are ignored
]


@pytest.mark.exercise("calculate", points=2)
def test_calculate_by_hand(impl):
    for expression, value in BY_HAND:
        got = attempt(CALC_RULE, impl.calculate, expression)
        assert got == value, (
            f"calculate({expression!r}) returned {got!r}, expected {value}: {CALC_RULE}")


@pytest.mark.exercise("calculate", points=1)
def test_calculate_agrees_with_the_runtime_on_random_expressions(impl):
    rng = random.Random(10)
    for _ in range(200):
        expression = random_expression(rng)
        want = reference_calculate(expression)
        got = attempt(CALC_RULE, impl.calculate, expression)
        assert got == want, (
            f"calculate({expression!r}) returned {got!r}, expected {want}: {CALC_RULE}")


REFUSED = ["", "1+", "__import__('os').getcwd()", "2**3", "1/2", "(1+2", "1+2)", "abs(-3)",
           "1e3", "0x1f"]


@pytest.mark.exercise("calculate", points=2)
def test_calculate_refuses_what_is_not_a_sum_and_never_evals(impl, monkeypatch):
    def no_eval(*args, **kwargs):
        raise AssertionError("calculate called eval or exec: the model's text must never run "
                             f"as code; {SAFE_RULE}")

    monkeypatch.setattr(builtins, "eval", no_eval)
    monkeypatch.setattr(builtins, "exec", no_eval)
    for expression in REFUSED:
        with pytest.raises(CalcError):  # the reference refuses it too
            reference_calculate(expression)
        try:
            got = impl.calculate(expression)
        except ValueError:
            continue
        except (NotImplementedError, AssertionError):
            raise
        except Exception as error:  # a crash is not a refusal the runtime can turn into text
            raise AssertionError(f"calculate({expression!r}) raised {type(error).__name__}: "
                                 f"{error}, expected a ValueError: {SAFE_RULE}") from error
        raise AssertionError(f"calculate({expression!r}) returned {got!r}, expected a "
                             f"ValueError: {SAFE_RULE}")


# --- Exercise 10.2: tool_loss_mask ------------------------------------------------------------


@pytest.mark.exercise("tool_loss_mask", points=2)
def test_tool_loss_mask_by_hand(impl):
    # ids: "7" <|/calc|>=0 "4" "2" "\n"=1 "9" <|/calc|>=0 "3" "\n"=1 "5"
    ids = [7, 0, 4, 2, 1, 9, 0, 3, 1, 5]
    want = [True, True, False, False, False, True, True, False, False, True]
    got = attempt(MASK_RULE, impl.tool_loss_mask, ids, 0, 1)
    assert list(got) == want, (
        f"tool_loss_mask({ids}, call_end_id=0, result_end_id=1) returned {show(list(got))}, "
        f"expected {want}: {MASK_RULE}")


@pytest.mark.exercise("tool_loss_mask", points=1)
def test_tool_loss_mask_without_a_call_learns_everything_and_an_open_result_runs_on(impl):
    for ids, want in (([5, 1, 6], [True, True, True]),  # a newline outside a result is text
                      ([5, 0, 6, 7], [True, True, False, False])):  # result never closed
        got = attempt(MASK_RULE, impl.tool_loss_mask, ids, 0, 1)
        assert list(got) == want, (
            f"tool_loss_mask({ids}, call_end_id=0, result_end_id=1) returned "
            f"{show(list(got))}, expected {want}: {MASK_RULE}")


# --- Exercise 10.3: majority_vote -------------------------------------------------------------


VOTES = [
    [85, 75, 85, None, None, None],  # None is no answer: 85 wins, not None
    [7, 5, 5, 7],  # a tie at two votes each: 7 came first
    [3, 9, 9],
    [None, None],
    [],
    [12],
]


@pytest.mark.exercise("majority_vote", points=2)
def test_majority_vote_by_hand(impl):
    for answers in VOTES:
        want = majority_vote(answers)
        got = attempt(VOTE_RULE, impl.majority_vote, list(answers))
        assert got == want, (
            f"majority_vote({answers}) returned {got!r}, expected {want!r}: {VOTE_RULE}")


@pytest.mark.exercise("majority_vote", points=1)
def test_majority_vote_on_random_samples(impl):
    rng = random.Random(3)
    for _ in range(100):
        answers = [rng.choice([None, 1, 2, 3, 4]) for _ in range(rng.randint(1, 16))]
        want = majority_vote(answers)
        got = attempt(VOTE_RULE, impl.majority_vote, list(answers))
        assert got == want, (
            f"majority_vote({answers}) returned {got!r}, expected {want!r}: {VOTE_RULE}")


# --- Exercise 10.4: verifiable_advantages -----------------------------------------------------


def reference_advantages(texts, solutions, group_size):
    rewards = verifiable_reward([{"answer": t, "solution": s} for t, s in zip(texts, solutions)])
    return group_advantages(torch.tensor(rewards), group_size)


@pytest.mark.exercise("verifiable_advantages", points=2)
def test_verifiable_advantages_by_hand(impl):
    # group 1: right, wrong -> rewards 1, 0: mean 0.5, std 0.5 -> +1, -1
    # group 2: no number, right (the last number, 13, not 8 or 5) -> -1, +1
    # group 3: all right -> 0, 0
    texts = ["So 85.", "So 84.", "Alas", "8+5=13. So 13.", "4", "So 4."]
    solutions = [85, 85, 13, 13, 4, 4]
    want = torch.tensor([1.0, -1.0, -1.0, 1.0, 0.0, 0.0])
    got = attempt(ADVANTAGE_RULE, impl.verifiable_advantages, texts, solutions, 2)
    assert torch.allclose(torch.as_tensor(got, dtype=torch.float32), want, atol=1e-4), (
        f"verifiable_advantages({texts}, {solutions}, group_size=2) returned {show(got)}, "
        f"expected {show(want)}: {ADVANTAGE_RULE}")


@pytest.mark.exercise("verifiable_advantages", points=1)
def test_verifiable_advantages_in_groups_of_four(impl):
    rng = random.Random(4)
    texts, solutions = [], []
    for _ in range(5):  # five questions, four answers each, some right
        solution = rng.randint(10, 99)
        for _ in range(4):
            given = solution if rng.random() < 0.5 else solution + 1
            texts.append(f"{rng.randint(1, 9)}+{rng.randint(1, 9)}={rng.randint(2, 18)}. "
                         f"So {given}.")
            solutions.append(solution)
    want = reference_advantages(texts, solutions, 4)
    got = attempt(ADVANTAGE_RULE, impl.verifiable_advantages, texts, solutions, 4)
    assert torch.allclose(torch.as_tensor(got, dtype=torch.float32), want, atol=1e-4), (
        f"verifiable_advantages(<20 worked answers>, {solutions}, group_size=4) returned "
        f"{show(got)}, expected {show(want)}: {ADVANTAGE_RULE}")
