"""Evaluation: is one model better than another, and by how much, with honest error bars.

Every claim of lessons 04-07 is a mean over answers with a standard error. Answers to the same
prompt are alike, so they are not independent: the standard errors here treat each prompt as one
cluster (``clustered_se``), wider and honest where the binomial formula would be too narrow.

- The SFT model against the base (lesson 04): ``summarize`` the rows of ``answer_prompts``.
- A reward model against the labels and the gold reward (lesson 05): ``evaluate_reward_model``,
  ``feature_accuracy`` (which qualities it learned), ``calibration``; ``spearman`` ranks.
- A tuned policy against the SFT model on held-out prompts (lesson 06): ``sft_reference``
  measures the SFT model once, ``compare_with_sft`` a policy against it, with gains paired by
  prompt (``compare_policies``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from minillm.checkpoint import Checkpoint
from minillm.model import GPT
from minillm.policy import RewardScale, rollout, sequence_kl
from minillm.reward import RewardModel, score_responses
from minillm.world import (
    LINE_CHARS,
    WEIGHTS,
    Comparisons,
    gold_components,
    is_on_topic,
    preference_prompts,
    with_gold,
)

# ----------------------------------------------------------------------------- statistics

def clustered_se(values: list[float], clusters: list) -> float:
    """The standard error of the mean of ``values`` when those sharing a cluster are correlated:
    the standard deviation of the cluster means over the square root of their number (for
    clusters of equal size)."""
    groups: dict = {}
    for value, cluster in zip(values, clusters):
        groups.setdefault(cluster, []).append(value)
    means = [sum(g) / len(g) for g in groups.values()]
    if len(means) < 2:
        return float("nan")
    mean = sum(means) / len(means)
    variance = sum((m - mean) ** 2 for m in means) / (len(means) - 1)
    return math.sqrt(variance / len(means))


def mean_and_se(rows: list[dict], key: str) -> tuple[float, float]:
    """The mean of ``row[key]`` over ``rows`` and its standard error, the answers to one prompt
    forming a cluster (``clustered_se``)."""
    values = [float(r[key]) for r in rows]
    return sum(values) / len(values), clustered_se(values, [r["prompt"] for r in rows])


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation: the Pearson correlation of the ranks of xs and ys (values
    that tie share the mean of their ranks)."""
    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        result = [0.0] * len(values)
        start = 0
        while start < len(order):
            end = start
            while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
                end += 1
            for k in order[start:end + 1]:
                result[k] = (start + end) / 2
            start = end + 1
        return result

    a, b = ranks(xs), ranks(ys)
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    covariance = sum((x - mean_a) * (y - mean_b) for x, y in zip(a, b))
    spread = math.sqrt(sum((x - mean_a) ** 2 for x in a) * sum((y - mean_b) ** 2 for y in b))
    return covariance / spread if spread else float("nan")



# ----------------------------------------------------------------------------- the assistant

def summarize(rows: list[dict]) -> dict:
    """The metrics of ``answer_prompts`` rows: on-topic rate, end-of-turn rate, mean length in
    characters and the share of answers of a sensible length (``LINE_CHARS``, the range of
    the training answers), each with its standard error ("..._se"), and n, the number of answers.

    Answers to the same prompt are alike, so they are not independent: the standard errors
    treat each prompt as one cluster (the spread of the per-prompt means), which is wider,
    and honest, where the binomial formula would be too narrow. A rate of exactly 0 or 1 has a
    standard error of 0 by this formula; that understates the uncertainty (3/n is a usual 95%
    upper bound on a rate seen as 0 in n tries).
    """
    if not rows:
        raise ValueError("There are no answers to summarize.")
    low, high = LINE_CHARS
    values = {"on_topic": [float(r["on_topic"]) for r in rows],
              "ended": [float(r["ended"]) for r in rows],
              "mean_length": [float(r["length"]) for r in rows],
              "sensible_length": [float(low <= r["length"] <= high) for r in rows]}
    prompts = [r["prompt"] for r in rows]
    summary = {"n": len(rows), "prompts": len(set(prompts))}
    for name, xs in values.items():
        summary[name] = sum(xs) / len(xs)
        summary[name + "_se"] = clustered_se(xs, prompts)
    return summary


def answer_stats(responses: list[dict], proxy: list[float]) -> dict:
    """Means of what the logs track about a batch of answers (gold is the labeler's reward,
    and it and on_topic are left out for answers that have no "gold", e.g. sums)."""
    n = len(responses)
    gold = {"gold": sum(r["gold"] for r in responses) / n,
            "on_topic": sum(is_on_topic(r["answer"], r["topic"]) for r in responses) / n,
            } if "gold" in responses[0] else {}
    return {
        "proxy": sum(proxy) / n,
        **gold,
        "ended": sum(r["ended"] for r in responses) / n,
        "length": sum(len(r["answer"]) for r in responses) / n,
        "distinct": len({(r["prompt"], r["answer"]) for r in responses}) / n,
    }


# ----------------------------------------------------------------------------- the reward model

def _agrees(score_c: float, score_r: float, first_is_better: bool) -> float:
    """1 if the scores order a pair as wanted, 0 if not, 1/2 for equal scores (a guess)."""
    if score_c == score_r:
        return 0.5
    return float((score_c > score_r) == first_is_better)


def evaluate_reward_model(model: RewardModel, tokenizer, comparisons: Comparisons) -> dict:
    """How well the RM's scores agree with the labels and with the gold reward.

    ``label_accuracy``: the share of pairs where the RM prefers the labeler's choice; a perfect
    RM reaches only the labeler's own ``agreement``. ``gold_accuracy``: the share where it
    prefers the answer of higher gold reward. Their standard errors (``..._se``) treat each
    prompt's pairs as one cluster, since pairs that share a prompt and answers are not
    independent. ``spearman``: the rank correlation of score and gold reward over all answers.
    ``n_pairs``, ``n_prompts``, ``n_responses``: the sample sizes; ``scores``: each answer's.
    """
    scores = score_responses(model, tokenizer, comparisons.responses)
    gold = [r["gold"] for r in comparisons.responses]
    prompts = [comparisons.responses[c]["prompt"] for c, _ in comparisons.pairs]
    by_label = [_agrees(scores[c], scores[r], True) for c, r in comparisons.pairs]
    by_gold = [_agrees(scores[c], scores[r], gold[c] > gold[r]) for c, r in comparisons.pairs]
    return {"label_accuracy": sum(by_label) / len(by_label),
            "label_accuracy_se": clustered_se(by_label, prompts),
            "gold_accuracy": sum(by_gold) / len(by_gold),
            "gold_accuracy_se": clustered_se(by_gold, prompts),
            "spearman": spearman(scores, gold),
            "n_pairs": len(by_gold),
            "n_prompts": len({r["prompt"] for r in comparisons.responses}),
            "n_responses": len(scores), "scores": scores}


def reward_model_report(m: dict, held_out: Comparisons) -> str:
    """``evaluate_reward_model``'s metrics ``m`` on ``held_out`` as a few lines of text, with the
    accuracy on pairs that differ in one quality only."""
    lines = [f"Held-out: n={m['n_pairs']} pairs of {m['n_responses']} answers to "
             f"{m['n_prompts']} prompts (standard errors clustered by prompt)",
             f"  accuracy against the labels  {m['label_accuracy']:.3f} ± "
             f"{m['label_accuracy_se']:.3f}  (the labels' own agreement with gold: "
             f"{held_out.agreement_with_gold():.3f})",
             f"  accuracy against gold        {m['gold_accuracy']:.3f} ± "
             f"{m['gold_accuracy_se']:.3f}",
             f"  Spearman(score, gold)        {m['spearman']:.3f}",
             "Pairs that differ in one quality only (0.5 is chance):",
             f"  {'quality':<12}{'weight':>7}{'pairs':>7}  accuracy"]
    for name, f in feature_accuracy(held_out, m["scores"]).items():
        accuracy = "-" if f["n"] == 0 else f"{f['accuracy']:.3f}" + (
            f" ± {f['se']:.3f}" if math.isfinite(f["se"]) else "")
        lines.append(f"  {name:<12}{WEIGHTS[name]:>7.1f}{f['n']:>7}  {accuracy}")
    return "\n".join(lines)


def feature_accuracy(comparisons: Comparisons, scores: list[float]) -> dict[str, dict]:
    """Which qualities the RM learned, and which it is blind to.

    For each gold component: the pairs whose two answers differ in that component *only*, and
    the share of them the RM's ``scores`` order as the gold reward does (0.5 is chance; below
    0.5 the RM prefers the worse answer). Returns {component: {"accuracy", "se", "n"}}, with
    the standard error clustered by prompt; accuracy and se are nan when no pair qualifies.
    """
    parts = [gold_components(r["topic"], r["answer"], r["ended"]) for r in comparisons.responses]
    gold = [r["gold"] for r in comparisons.responses]
    alone: dict[str, tuple[list, list]] = {name: ([], []) for name in WEIGHTS}
    for c, r in comparisons.pairs:
        differ = [name for name in WEIGHTS if parts[c][name] != parts[r][name]]
        if len(differ) == 1:
            values, prompts = alone[differ[0]]
            values.append(_agrees(scores[c], scores[r], gold[c] > gold[r]))
            prompts.append(comparisons.responses[c]["prompt"])
    return {name: {"accuracy": sum(v) / len(v) if v else float("nan"),
                   "se": clustered_se(v, p) if v else float("nan"), "n": len(v)}
            for name, (v, p) in alone.items()}


def calibration(comparisons: Comparisons, scores: list[float], bins: int = 10) -> list[dict]:
    """Whether the RM's Bradley-Terry probabilities mean what they say.

    Each pair is looked at from both sides: the RM gives the chosen answer a probability
    sigmoid(r_c - r_r) of winning, which the label bears out (1), and the rejected one the
    complement, which it does not (0). Grouped into ``bins`` equal ranges of probability, a
    calibrated RM's predictions match how often the labels bear them out. (With labels that
    side with the gold reward 80% of the time, no answer should win more than ~80% of its
    comparisons.) Returns one dict per non-empty bin: "predicted" (the mean probability),
    "observed" (the share borne out) and "n".
    """
    tallies = [[0.0, 0.0, 0] for _ in range(bins)]
    for c, r in comparisons.pairs:
        p = 1 / (1 + math.exp(scores[r] - scores[c]))
        for probability, outcome in ((p, 1.0), (1 - p, 0.0)):
            tally = tallies[min(int(probability * bins), bins - 1)]
            tally[0] += probability
            tally[1] += outcome
            tally[2] += 1
    return [{"predicted": total / n, "observed": wins / n, "n": n}
            for total, wins, n in tallies if n]


# ----------------------------------------------------------------------------- a tuned policy

@torch.no_grad()
def evaluate_policy(policy: GPT, reference: GPT, reward_model: RewardModel, scale: RewardScale,
                    tokenizer, prompts: list[dict], samples: int = 8, seed: int = 0,
                    batch_size: int = 256, max_new_tokens: int = 100) -> list[dict]:
    """Sample ``samples`` answers (temperature 1) to each prompt; one row per answer, with its
    gold reward, its proxy reward (the RM, in ``scale`` units) and its KL estimate."""
    device = next(policy.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    asked = [p for p in prompts for _ in range(samples)]
    rows = []
    for start in range(0, len(asked), batch_size):
        batch = rollout(policy, tokenizer, asked[start:start + batch_size], max_new_tokens,
                        1.0, generator)
        kl = sequence_kl(policy, reference, batch).tolist()
        proxy = scale(score_responses(reward_model, tokenizer, batch.responses))
        rows += [{**r, "proxy": p, "kl": k}
                 for r, p, k in zip(with_gold(batch.responses), proxy, kl)]
    return rows


def compare_policies(rows: list[dict], baseline: list[dict], key: str = "gold") -> dict:
    """How much ``rows`` beat ``baseline`` on ``key``, answers to the same prompts: the gain in
    the mean, its standard error, and the gain in standard errors.

    The prompts are the units: the SE is that of the mean over prompts of the per-prompt
    difference (paired), which accounts for answers to one prompt being alike.
    """
    def by_prompt(rs):
        groups: dict[str, list[float]] = {}
        for r in rs:
            groups.setdefault(r["prompt"], []).append(r[key])
        return {p: sum(v) / len(v) for p, v in groups.items()}

    ours, theirs = by_prompt(rows), by_prompt(baseline)
    if set(ours) != set(theirs):
        raise ValueError("The two sets of answers must answer the same prompts.")
    diffs = [ours[p] - theirs[p] for p in ours]
    gain = sum(diffs) / len(diffs)
    se = clustered_se(diffs, list(ours))
    return {"gain": gain, "se": se, "z": gain / se if se > 0 else float("inf"),
            "prompts": len(diffs), "answers": len(rows)}


@dataclass
class SFTReference:
    """What a tuned policy is compared with (``compare_with_sft``): the SFT model (with its
    tokenizer), the reward model, the RM's scale on the SFT model's answers to training
    prompts, and the SFT model's answers to the held-out prompts (``evaluate_policy`` rows)."""

    assistant: Checkpoint
    reward_model: RewardModel
    scale: RewardScale
    rows: list[dict]
    samples: int
    seed: int


def sft_reference(assistant: Checkpoint, reward_model: RewardModel, samples: int = 8,
                  seed: int = 0, scale_answers: int = 256) -> SFTReference:
    """Measure the SFT model as every tuned policy will be measured (``compare_with_sft``).

    The RM's scores are put in units of its standard deviation over ``scale_answers`` answers
    of the SFT model to training prompts (``RewardScale.fit``); then the SFT model answers each
    held-out prompt of ``preference_prompts`` ``samples`` times (temperature 1).
    """
    model, tok = assistant.model, assistant.tokenizer
    train_prompts, held_out = preference_prompts()
    rng = random.Random(seed)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    answers = rollout(model, tok, [rng.choice(train_prompts) for _ in range(scale_answers)],
                      generator=generator)
    scale = RewardScale.fit(score_responses(reward_model, tok, answers.responses))
    rows = evaluate_policy(model, model, reward_model, scale, tok, held_out, samples, seed)
    return SFTReference(assistant, reward_model, scale, rows, samples, seed)


def compare_with_sft(policy: GPT, reference: SFTReference) -> dict:
    """A tuned policy against the SFT model on the held-out prompts (same samples and seed):
    mean gold reward of each, the policy's gain in gold and in proxy (RM) reward with standard
    errors paired by prompt, and its KL to the SFT model (nats per answer)."""
    tok = reference.assistant.tokenizer
    rows = evaluate_policy(policy, reference.assistant.model, reference.reward_model,
                           reference.scale, tok, preference_prompts()[1], reference.samples,
                           reference.seed)
    gold = compare_policies(rows, reference.rows)
    proxy = compare_policies(rows, reference.rows, "proxy")
    (policy_gold, policy_se), (sft_gold, sft_se) = (mean_and_se(rows, "gold"),
                                                    mean_and_se(reference.rows, "gold"))
    return {"gold": policy_gold, "gold_se": policy_se, "sft_gold": sft_gold, "sft_gold_se": sft_se,
            "gold_gain": gold["gain"], "gold_gain_se": gold["se"], "gold_z": gold["z"],
            "proxy_gain": proxy["gain"], "proxy_gain_se": proxy["se"],
            "kl": sum(r["kl"] for r in rows) / len(rows),
            "prompts": gold["prompts"], "answers": gold["answers"]}
