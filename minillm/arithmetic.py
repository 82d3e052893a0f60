"""The simulated world of lesson 10: sums to do, three ways to answer them, and a checker.

Lessons 04-06 judged answers by taste (the gold reward of ``minillm.world``); this task has a
right answer, so a program can check it exactly. The user asks for a sum in the course's
voice, and the assistant answers in one of three *formats*:

- ``direct``: the answer alone, ``85.``: the model must find every digit, carries included,
  in the one forward pass of each answer token;
- ``worked``: the column sums written out from the right before the answer,
  ``7+8=15, carry 1. 3+4+1=8. So 85.``: each token's pass only has one small step left to do;
- ``tool``: a call to the calculator and the answer read from its result,
  ``<|calc|>37+48<|/calc|>85\\nSo 85.`` (``minillm.tools`` runs the call).

Questions are sized by their number of digits (both numbers have that many). Held out, to
measure what a model learned rather than memorised: a set of number pairs that never occur in
training, in either order. ``final_answer`` reads the last number of an answer, and
``verifiable_reward`` is 1 for a right answer and 0 otherwise: a reward no model has to learn.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from minillm.tools import CALL, CALL_END, tool_result

FORMATS = ("direct", "worked", "tool")
PHRASINGS = ("How many are {a} and {b}?", "What make {a} and {b}?", "Add {a} to {b}, I pray.",
             "Tell me the sum of {a} and {b}.", "{a} and {b} make how many?")


def operands(digits: int, rng: random.Random) -> tuple[int, int]:
    """Two numbers of ``digits`` digits each (one-digit numbers include 0)."""
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10 ** digits - 1), rng.randint(low, 10 ** digits - 1)


def question(a: int, b: int, phrasing: str = PHRASINGS[0]) -> dict:
    """The question "how many are a and b?" as a dict: "prompt" (the user's words), "a", "b",
    "digits" (of the larger number) and "solution".

    >>> question(37, 48)["prompt"], question(37, 48)["solution"]
    ('How many are 37 and 48?', 85)
    """
    return {"prompt": phrasing.format(a=a, b=b), "a": a, "b": b,
            "digits": len(str(max(a, b))), "solution": a + b}


def worked_steps(a: int, b: int) -> str:
    """The column sums of a + b from the right, as a pupil writes them, without the answer.

    >>> worked_steps(37, 48)
    '7+8=15, carry 1. 3+4+1=8.'
    >>> worked_steps(5, 8)
    '5+8=13, carry 1.'
    """
    steps, carry = [], 0
    xs, ys = str(a)[::-1], str(b)[::-1]
    for k in range(max(len(xs), len(ys))):
        column = [int(s[k]) for s in (xs, ys) if k < len(s)] + ([carry] if carry else [])
        total = sum(column)
        carry = total // 10
        step = "+".join(map(str, column)) + f"={total}"
        steps.append(step + (f", carry {carry}." if carry else "."))
    return " ".join(steps)


def answer_text(q: dict, format: str) -> str:
    """The assistant's answer to question ``q`` in ``format`` (one of ``FORMATS``).

    >>> q = question(37, 48)
    >>> [answer_text(q, f) for f in FORMATS]
    ['85.', '7+8=15, carry 1. 3+4+1=8. So 85.', '<|calc|>37+48<|/calc|>85\\nSo 85.']
    """
    a, b, solution = q["a"], q["b"], q["solution"]
    if format == "direct":
        return f"{solution}."
    if format == "worked":
        return f"{worked_steps(a, b)} So {solution}."
    if format == "tool":
        call = f"{a}+{b}"
        return f"{CALL}{call}{CALL_END}{tool_result(call)}So {solution}."
    raise ValueError(f"The format is one of {', '.join(FORMATS)}, not {format!r}.")


def final_answer(text: str) -> int | None:
    """The answer an assistant gave: the last whole number in its text (None if it wrote none).

    >>> final_answer("7+8=15, carry 1. 3+4+1=8. So 85."), final_answer("Alas.")
    (85, None)
    """
    numbers = re.findall(r"\d+", text)
    return int(numbers[-1]) if numbers else None


def is_correct(q: dict, text: str) -> bool:
    """Whether ``text`` answers question ``q`` right (its ``final_answer`` is the solution)."""
    return final_answer(text) == q["solution"]


def verifiable_reward(responses: list[dict]) -> list[float]:
    """The checker as a reward: 1.0 for each right answer, 0.0 otherwise. ``responses`` are
    questions with the model's "answer" (the rows of ``minillm.policy.rollout``)."""
    return [float(is_correct(r, r["answer"])) for r in responses]


@dataclass
class ArithmeticData:
    """The task in one format. ``train`` and ``held_out`` are examples (questions with the
    "answer" text) for finetuning and its validation loss; ``questions`` are held-out
    questions to measure on, ``per_digits`` of each size; ``train_questions`` are training
    questions without answers (RL's prompts)."""

    format: str
    train: list[dict]
    held_out: list[dict]
    questions: list[dict]
    train_questions: list[dict]

    def __repr__(self) -> str:
        return (f"ArithmeticData(format={self.format!r}, train={len(self.train)}, "
                f"held_out={len(self.held_out)}, questions={len(self.questions)})")


def make_arithmetic_data(format: str, digits: tuple[int, ...] = (1, 2, 3), train_size: int = 20000,
                         per_digits: int = 200, seed: int = 0) -> ArithmeticData:
    """The examples of the task in ``format``, the same for a seed (and the same questions in
    every format, so the formats are compared on the same sums).

    For each size in ``digits``, ``per_digits`` pairs of numbers are held out (at most a third
    of the pairs there are: one-digit sums are few) and asked once each; ``train_size``
    training questions are drawn evenly over the sizes from the remaining pairs, each in a
    random phrasing. Held-out pairs are excluded in both orders: 37 + 48 teaches 48 + 37.
    """
    if format not in FORMATS:
        raise ValueError(f"The format is one of {', '.join(FORMATS)}, not {format!r}.")
    if not digits or any(not isinstance(d, int) or d < 1 for d in digits):
        raise ValueError(f"digits must be sizes of 1 or more, not {digits!r}.")
    rng = random.Random(seed)
    questions, held = [], set()
    for d in digits:
        pairs = set()
        span = 10 ** d - (0 if d == 1 else 10 ** (d - 1))
        while len(pairs) < min(per_digits, span * span // 3):
            a, b = operands(d, rng)
            if (a, b) not in pairs and (b, a) not in pairs:
                pairs.add((a, b))
        held |= pairs | {(b, a) for a, b in pairs}
        questions += [question(a, b, rng.choice(PHRASINGS)) for a, b in sorted(pairs)]
    train_questions = []
    while len(train_questions) < train_size:
        a, b = operands(digits[len(train_questions) % len(digits)], rng)
        if (a, b) not in held:
            train_questions.append(question(a, b, rng.choice(PHRASINGS)))

    def examples(qs):
        return [{**q, "answer": answer_text(q, format)} for q in qs]

    return ArithmeticData(format, examples(train_questions), examples(questions), questions,
                          train_questions)
