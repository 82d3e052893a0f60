"""Lesson 10's methods: answering sums in each format, voting, and RL on a checked answer.

- ``solve``: a model's answers to arithmetic questions (``minillm.arithmetic``), checked;
  ``accuracy_by_digits`` summarizes them with standard errors (``minillm.evaluate``).
- Self-consistency (Wang et al. 2023): sample k worked answers at temperature > 0 and keep the
  answer most of them reach (``majority_vote``): independent paths make different slips, and
  the right answer is the one they agree on. ``self_consistency`` measures accuracy against k.
- GRPO on a verifiable reward (DeepSeekMath, DeepSeek-R1): lesson 06's GRPO
  (``minillm.ppo``) with the checker (``verifiable_reward``) in place of a reward model: no
  reward model to fool, so the only thing to gain is right answers.
"""

from __future__ import annotations

import random
from collections import Counter

import torch

from minillm.arithmetic import final_answer
from minillm.evaluate import compare_policies, mean_and_se
from minillm.policy import answer_prompts, rollout, sequence_kl


def solve(model, tokenizer, questions: list[dict], samples: int = 1, temperature: float = 0.0,
          max_new_tokens: int = 64, seed: int = 0, batch_size: int = 256,
          progress: bool = True) -> list[dict]:
    """Answer each question ``samples`` times; one row per answer: the question's dict with
    "answer" (the text, tool calls and results included), "given" (its ``final_answer``),
    "correct" and "ended". ``temperature=0`` is greedy (then one sample says it all)."""
    return answer_prompts(model, tokenizer, questions, samples, temperature, max_new_tokens, seed,
                          batch_size, progress, measure=_checked)


def _checked(question: dict, answer: str) -> dict:
    given = final_answer(answer)
    return {"given": given, "correct": given == question["solution"]}


def accuracy(rows: list[dict]) -> dict:
    """The share of right answers with its standard error, answers to one question forming a
    cluster (``clustered_se``), and the counts: {"accuracy", "se", "n", "questions"}."""
    if not rows:
        raise ValueError("There are no answers to score.")
    share, se = mean_and_se(rows, "correct")
    return {"accuracy": share, "se": se, "n": len(rows),
            "questions": len({r["prompt"] for r in rows})}


def accuracy_by_digits(rows: list[dict]) -> dict[int, dict]:
    """``accuracy`` for each question size (number of digits), smallest first."""
    sizes = sorted({r["digits"] for r in rows})
    return {d: accuracy([r for r in rows if r["digits"] == d]) for d in sizes}


def majority_vote(answers: list) -> object:
    """The answer given most often, ``None`` (no answer) left out unless nothing else was
    given; a tie goes to the answer that occurs first.

    >>> majority_vote([85, 75, 85, None, None, None])
    85
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == top)


def self_consistency(rows: list[dict], ks: tuple[int, ...] = (1, 4, 16),
                     seed: int = 0) -> dict[int, dict]:
    """Accuracy of the majority vote of k sampled answers per question, for each k in ``ks``.

    ``rows`` are ``solve`` rows with at least max(ks) samples per question. For each question
    and k, the vote is over k of its answers drawn without replacement (a fresh draw per
    question, from ``seed``). Returns {k: ``accuracy`` of the votes, one per question}.
    """
    by_question: dict[str, list[dict]] = {}
    for r in rows:
        by_question.setdefault(r["prompt"], []).append(r)
    fewest = min(map(len, by_question.values()))
    if max(ks) > fewest:
        raise ValueError(f"A vote of {max(ks)} needs that many answers per question; some "
                         f"question has only {fewest}.")
    rng = random.Random(seed)
    result = {}
    for k in ks:
        votes = []
        for prompt, answers in by_question.items():
            drawn = rng.sample(answers, k)
            voted = majority_vote([a["given"] for a in drawn])
            votes.append({"prompt": prompt, "correct": voted == answers[0]["solution"]})
        result[k] = accuracy(votes)
    return result


# ----------------------------------------------------------------------------- RL on the checker

@torch.no_grad()
def rl_gain(policy, start, tokenizer, questions: list[dict], samples: int = 4,
            max_new_tokens: int = 64, seed: int = 0) -> dict:
    """A tuned ``policy`` against the model it ``start``ed from, on the same held-out questions:
    the accuracy of each (``samples`` answers per question at temperature 1, the distribution
    RL changed), the gain paired by question with its SE (``compare_policies``), and the
    policy's KL to the start (nats per answer, ``sequence_kl`` over the policy's answers)."""
    before = solve(start, tokenizer, questions, samples, 1.0, max_new_tokens, seed,
                   progress=False)
    after = solve(policy, tokenizer, questions, samples, 1.0, max_new_tokens, seed,
                  progress=False)
    gain = compare_policies([{**r, "correct": float(r["correct"])} for r in after],
                            [{**r, "correct": float(r["correct"])} for r in before], "correct")
    generator = torch.Generator(device=next(policy.parameters()).device).manual_seed(seed)
    kls = []
    for begin in range(0, len(questions), 128):
        batch = rollout(policy, tokenizer, questions[begin:begin + 128], max_new_tokens, 1.0,
                        generator)
        kls += sequence_kl(policy, start, batch).tolist()
    return {"before": accuracy(before), "after": accuracy(after), "gain": gain["gain"],
            "gain_se": gain["se"], "z": gain["z"], "kl": sum(kls) / len(kls),
            "before_by_digits": accuracy_by_digits(before),
            "after_by_digits": accuracy_by_digits(after)}


# ----------------------------------------------------------------------------- figures

def plot_formats(by_format: dict[str, dict[int, dict]], ax=None):
    """Held-out accuracy of each format by number of digits, with 1-SE error bars and each
    size's number of questions under it."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    sizes = sorted(next(iter(by_format.values())))
    width = 0.8 / len(by_format)
    for k, (name, by_digits) in enumerate(by_format.items()):
        xs = [i + (k - (len(by_format) - 1) / 2) * width for i in range(len(sizes))]
        ax.bar(xs, [by_digits[d]["accuracy"] for d in sizes], width,
               yerr=[by_digits[d]["se"] for d in sizes], capsize=3, label=name)
    n = next(iter(by_format.values()))
    ax.set_xticks(range(len(sizes)), [f"{d} digit{'s' * (d > 1)}\n(n={n[d]['n']})"
                                      for d in sizes])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out accuracy")
    ax.legend(title="format", fontsize=8)
    return ax


def plot_votes(votes: dict[int, dict], ax=None):
    """Accuracy of the majority vote against the number of votes k, with 1-SE error bars."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(4, 3.5))[1]
    ks = sorted(votes)
    ax.errorbar(ks, [votes[k]["accuracy"] for k in ks], [votes[k]["se"] for k in ks],
                marker="o", capsize=3)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel(f"answers voted on, k (n={votes[ks[0]]['n']} questions)")
    ax.set_ylabel("accuracy of the vote")
    return ax
