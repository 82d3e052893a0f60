"""Lesson 10 exercises: a calculator the model can call, and learning from a checked answer.

Implement the functions below; each matches a section of the lesson:

1. ``calculate``: the runtime's safe arithmetic evaluator, never ``eval`` (section 4);
2. ``tool_loss_mask``: which tokens of a tool-using answer carry loss (section 4);
3. ``majority_vote``: self-consistency's vote over sampled answers (section 5);
4. ``verifiable_advantages``: GRPO's advantages with the checker as the reward (section 6).

Every docstring says exactly what to return, with an example. Check your work with

    python -m minillm.grade 10

or, from the lesson notebook, ``minillm.grade.grade("10")``.
"""

import re  # noqa: F401  (re.findall finds the numbers of an answer)
from collections import Counter  # noqa: F401  (counts answers)

import torch


def calculate(expression: str) -> int:
    """The value of an arithmetic expression, computed by parsing it, never by ``eval``.

    The expression holds whole numbers (digits 0-9), ``+``, ``-`` (also in front of a number
    or a parenthesis: ``-7``, ``-(2+3)``), ``*``, parentheses and spaces (ignored). ``*`` binds
    tighter than ``+`` and ``-``, and operators of the same strength go from left to right
    (``10-2-3`` is 5). A recursive-descent parser does it in three small functions:
    expression := term (("+" | "-") term)*, term := factor ("*" factor)*,
    factor := "-" factor | "(" expression ")" | number.

    Args:
        expression: the text between ``<|calc|>`` and ``<|/calc|>``, as the model wrote it.

    Returns:
        The value, an int.

    Raises:
        ValueError: for anything else (an empty call, a name, ``/`` or ``**``, a number
            missing after an operator, an unclosed or unopened parenthesis): the runtime turns
            it into an error result, so the model's text is never run as code.

    Example:
        >>> calculate("37+48"), calculate("2*(3+4)-5"), calculate("10-2-3")
        (85, 9, 5)
        >>> calculate("__import__('os')")
        Traceback (most recent call last):
        ...
        ValueError: a number was expected at character 0
    """
    text = expression.replace(" ", "")
    position = 0

    def peek():
        return text[position] if position < len(text) else ""

    def expression_():
        nonlocal position
        value = term()
        while peek() in ("+", "-"):
            operator = peek()
            position += 1
            value = value + term() if operator == "+" else value - term()
        return value

    def term():
        nonlocal position
        value = factor()
        while peek() == "*":
            position += 1
            value *= factor()
        return value

    def factor():
        nonlocal position
        if peek() == "-":
            position += 1
            return -factor()
        if peek() == "(":
            position += 1
            value = expression_()
            if peek() != ")":
                raise ValueError(f"a parenthesis is not closed at character {position}")
            position += 1
            return value
        start = position
        while peek() and peek() in "0123456789":
            position += 1
        if start == position:
            raise ValueError(f"a number was expected at character {position}")
        return int(text[start:position])

    value = expression_()
    if position != len(text):
        raise ValueError(f"unexpected {text[position]!r} at character {position}")
    return value


def tool_loss_mask(ids: list[int], call_end_id: int, result_end_id: int) -> list[bool]:
    """Which tokens of an assistant's answer the model is trained to predict.

    After each ``<|/calc|>`` (``call_end_id``) the runtime wrote the call's result, up to and
    including the token ``result_end_id`` that closes it (a newline). Those result tokens
    are forced into the sequence, not sampled, so they are False; every other token is True:
    the text, the call with its ``<|calc|>`` and its ``<|/calc|>``, and the answer after the
    result. An answer may hold several calls; a result never closed runs to the end.

    Args:
        ids: the answer's token ids.
        call_end_id: the id of ``<|/calc|>``.
        result_end_id: the id of the token that ends a result.

    Returns:
        A list of bools, one per id.

    Example:
        >>> # 7 <|/calc|> 4 2 \\n 9 <|/calc|> 1 \\n  (with <|/calc|> = 0 and "\\n" = 1)
        >>> tool_loss_mask([7, 0, 4, 2, 1, 9, 0, 3, 1], 0, 1)
        [True, True, False, False, False, True, True, False, False]
    """
    mask, in_result = [], False
    for token in ids:
        mask.append(not in_result)
        if token == call_end_id and not in_result:
            in_result = True
        elif in_result and token == result_end_id:
            in_result = False
    return mask


def majority_vote(answers: list):
    """The answer most of the sampled answers agree on (self-consistency's vote).

    ``None`` stands for an answer that gave no number: it never wins unless every answer is
    None. Among answers with the same highest count, the one that occurs first in ``answers``
    wins (so the vote is the same every time).

    Args:
        answers: the final answers of k sampled paths (ints, or None).

    Returns:
        The winning answer, or None if every answer is None (or there are none).

    Example:
        >>> majority_vote([85, 75, 85, None, None, None])
        85
        >>> majority_vote([7, 5, 5, 7])
        7
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def verifiable_advantages(texts: list[str], solutions: list[int], group_size: int) -> torch.Tensor:
    """GRPO's advantages when the reward is a check: 1.0 if an answer is right, 0.0 if not.

    An answer is right when the last whole number in its text (``re.findall(r"\\d+", text)``)
    equals its solution; a text without a number is wrong. The answers come in groups of
    ``group_size`` consecutive answers to the same question; each reward is standardized
    within its group: (reward - group mean) / (group std + 1e-8), with the population std
    (dividing by group_size, not group_size - 1). A group whose answers are all right, or all
    wrong, gets advantage 0: there is nothing in it to prefer.

    Args:
        texts: the answers (length B, a multiple of group_size).
        solutions: the right answer to each one's question (length B).
        group_size: answers per question.

    Returns:
        A float tensor of shape (B,).

    Example:
        >>> verifiable_advantages(["So 85.", "So 84.", "Alas", "8+5=13. So 13."],
        ...                       [85, 85, 13, 13], 2)
        tensor([ 1., -1., -1.,  1.])
    """
    if len(texts) % group_size:
        raise ValueError(f"{len(texts)} answers do not split into groups of {group_size}.")
    rewards = []
    for text, solution in zip(texts, solutions):
        numbers = re.findall(r"\d+", text)
        rewards.append(float(bool(numbers) and int(numbers[-1]) == solution))
    groups = torch.tensor(rewards).view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, unbiased=False, keepdim=True)
    return ((groups - mean) / (std + 1e-8)).flatten()
