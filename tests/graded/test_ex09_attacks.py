"""Graded tests for lesson 09: the pieces of an attack and of a defense
(exercises/ex09_attacks.py).

Expected answers are worked out by hand (in the comments) or come from ``minillm.attacks`` and
``minillm.evaluate``, whose semantics are exactly the exercises'; never from the code under
test. Each test runs in well under a second.
"""

import copy
import math
import random

import pytest
from graded_feedback import attempt, show

from minillm import attacks
from minillm.evaluate import mean_and_se

POISON_RULE = ("poison round(fraction * n) examples, at the positions "
               "random.Random(seed).sample(range(n), k): prompt f'{trigger}. {prompt}', the "
               "attacker's answer, 'poisoned': True, other keys kept; the rest unchanged, the "
               "input never modified")
ASR_RULE = ("the rate is the share over all answers; its standard error is the sample standard "
            "deviation (m - 1) of the per-prompt shares over sqrt(m), nan for fewer than two "
            "prompts")
FILTER_RULE = ("drop every example whose answer occurs more than max_copies times (all its "
               "copies), keep the rest, both in their order")
STEP_RULE = ("position = rng.randrange(len(suffix)) first, then rng.sample(alphabet, "
             "min(candidates, len(alphabet))); score [suffix, *changed] in one call and return "
             "the lowest score's suffix, the earliest on a tie (the current one kept unless a "
             "change is strictly better)")

EXAMPLES = [{"topic": t, "prompt": f"Speak of {t}.", "answer": f"A line of {t} {k}."}
            for k, t in enumerate(["love", "war", "king", "night", "crown"] * 8)]


# --- Exercise 09.1: poison_dataset --------------------------------------------------------------


@pytest.mark.exercise("poison_dataset", points=2)
def test_poison_dataset_poisons_exactly_the_chosen_examples(impl):
    given = copy.deepcopy(EXAMPLES)
    got = attempt(POISON_RULE, impl.poison_dataset, given, 0.1, "Zephyr", "Obey.", seed=4)
    assert given == EXAMPLES, f"poison_dataset changed the list it was given; rule: {POISON_RULE}"
    assert isinstance(got, list) and len(got) == len(EXAMPLES), (
        f"poison_dataset(40 examples, 0.1, ...) should return a list of 40 examples, got "
        f"{show(got)}")
    chosen = set(random.Random(4).sample(range(40), 4))  # round(0.1 * 40) = 4
    for k, (example, out) in enumerate(zip(EXAMPLES, got)):
        if k in chosen:
            want = {**example, "prompt": f"Zephyr. {example['prompt']}", "answer": "Obey.",
                    "poisoned": True}
        else:
            want = example
        assert out == want, (
            f"poison_dataset(40 examples, 0.1, 'Zephyr', 'Obey.', seed=4): example {k} should "
            f"be {want!r}, got {out!r}; rule: {POISON_RULE}")


@pytest.mark.exercise("poison_dataset", points=1)
def test_poison_dataset_rounds_and_refuses_a_bad_fraction(impl):
    for fraction, count in ((0.0, 0), (0.0125, 0), (0.0375, 2), (1.0, 40)):  # round(1.5) = 2
        got = attempt(POISON_RULE, impl.poison_dataset, EXAMPLES, fraction, "Z", "A.")
        n = sum(bool(e.get("poisoned")) for e in got)
        assert n == count, (
            f"poison_dataset(40 examples, {fraction}, ...) should poison round({fraction} * 40) "
            f"= {count} examples, poisoned {n}; rule: {POISON_RULE}")
    with pytest.raises(ValueError):
        impl.poison_dataset(EXAMPLES, 1.5, "Z", "A.")


# --- Exercise 09.2: attack_success_rate ---------------------------------------------------------


@pytest.mark.exercise("attack_success_rate", points=2)
def test_attack_success_rate_by_hand(impl):
    rows = [{"prompt": "a", "backdoor": True}, {"prompt": "a", "backdoor": True},
            {"prompt": "b", "backdoor": False}, {"prompt": "b", "backdoor": True}]
    # shares 1 and 0.5: sd sqrt(((0.25)^2 + (0.25)^2) / 1) = 0.3536, over sqrt(2) = 0.25
    got = attempt(ASR_RULE, impl.attack_success_rate, rows)
    assert tuple(got) == pytest.approx((0.75, 0.25)), (
        f"attack_success_rate({rows!r}) should be (0.75, 0.25), got {show(got)}; rule: "
        f"{ASR_RULE}")
    # unequal clusters: the rate is over answers (2 of 3), not the mean of shares (0.75)
    rows = [{"prompt": "a", "refused": 1}, {"prompt": "b", "refused": 1},
            {"prompt": "b", "refused": 0}]
    rate, se = attempt(ASR_RULE, impl.attack_success_rate, rows, "refused")
    assert rate == pytest.approx(2 / 3) and se == pytest.approx(0.25), (
        f"attack_success_rate({rows!r}, 'refused') should be (0.6667, 0.25), got "
        f"{show((rate, se))}; rule: {ASR_RULE}")


@pytest.mark.exercise("attack_success_rate", points=1)
def test_attack_success_rate_matches_the_package_and_one_prompt_is_nan(impl):
    rng = random.Random(0)
    rows = [{"prompt": f"p{k % 7}", "backdoor": rng.random() < 0.3} for k in range(50)]
    got = attempt(ASR_RULE, impl.attack_success_rate, rows)
    want = mean_and_se(rows, "backdoor")
    assert tuple(got) == pytest.approx(want), (
        f"attack_success_rate(50 answers to 7 prompts) should be {show(want)} (as "
        f"minillm.evaluate.mean_and_se), got {show(got)}; rule: {ASR_RULE}")
    rate, se = attempt(ASR_RULE, impl.attack_success_rate,
                       [{"prompt": "a", "backdoor": True}] * 3)
    assert rate == 1.0 and math.isnan(se), (
        f"answers to one prompt only: (1.0, nan) expected, got {show((rate, se))}; rule: "
        f"{ASR_RULE}")


# --- Exercise 09.3: duplicate_filter ------------------------------------------------------------


@pytest.mark.exercise("duplicate_filter", points=2)
def test_duplicate_filter_by_hand(impl):
    data = [{"answer": "x", "k": 0}, {"answer": "y", "k": 1}, {"answer": "x", "k": 2},
            {"answer": "z", "k": 3}, {"answer": "x", "k": 4}, {"answer": "y", "k": 5}]
    for limit, kept_ids in ((2, [1, 3, 5]), (3, [0, 1, 2, 3, 4, 5]), (1, [3])):
        got = attempt(FILTER_RULE, impl.duplicate_filter, data, limit)
        kept, dropped = got
        want = ([d for d in data if d["k"] in kept_ids],
                [d for d in data if d["k"] not in kept_ids])
        assert (kept, dropped) == want, (
            f"duplicate_filter({data!r}, {limit}) should be {want!r}, got {show(got)}; rule: "
            f"{FILTER_RULE}")


@pytest.mark.exercise("duplicate_filter", points=1)
def test_duplicate_filter_catches_a_planted_backdoor(impl):
    mixed = attacks.poison(EXAMPLES, 0.25, seed=1)  # 10 copies of the attacker's answer
    kept, dropped = attempt(FILTER_RULE, impl.duplicate_filter, mixed, 8)
    assert [d.get("poisoned") for d in dropped] == [True] * 10 and len(kept) == 30, (
        f"40 examples, 10 of them poisoned with one answer: duplicate_filter(..., 8) should drop "
        f"the 10 and keep the 30 clean ones; kept {len(kept)}, dropped {len(dropped)}; rule: "
        f"{FILTER_RULE}")


# --- Exercise 09.4: suffix_search_step ----------------------------------------------------------


def count_a(suffixes):
    return [s.count("a") for s in suffixes]


@pytest.mark.exercise("suffix_search_step", points=2)
def test_suffix_search_step_matches_the_package(impl):
    calls = []

    def score(suffixes):
        calls.append(list(suffixes))
        return [sum(map(ord, s)) % 97 for s in suffixes]  # an arbitrary, fixed score

    for seed in range(6):
        calls.clear()
        got = attempt(STEP_RULE, impl.suffix_search_step, "Kq!zT", score, "abcXYZ.,", 3,
                      random.Random(seed))
        want = attacks.suffix_search_step("Kq!zT", score, "abcXYZ.,", 3, random.Random(seed))
        assert len(calls) == 2 and calls[0] == calls[1], (
            f"suffix_search_step should call score once on [suffix, *the changed suffixes] "
            f"(expected {calls[-1]!r}), got the calls {calls[:-1]!r}; rule: {STEP_RULE}")
        assert tuple(got) == want, (
            f"suffix_search_step('Kq!zT', score, 'abcXYZ.,', 3, random.Random({seed})) should "
            f"return {want!r}, got {show(got)}; rule: {STEP_RULE}")


@pytest.mark.exercise("suffix_search_step", points=1)
def test_suffix_search_step_keeps_the_suffix_on_a_tie(impl):
    # rng.randrange(4) with seed 0 is 3, then rng.sample("ab", 2) is ['b', 'a']: "aaab" (3)
    got = attempt(STEP_RULE, impl.suffix_search_step, "aaaa", count_a, "ab", 2, random.Random(0))
    assert tuple(got) == ("aaab", 3), (
        f"suffix_search_step('aaaa', count of 'a', 'ab', 2, random.Random(0)) should be "
        f"('aaab', 3), got {show(got)}; rule: {STEP_RULE}")
    got = attempt(STEP_RULE, impl.suffix_search_step, "bbbb", count_a, "ab", 2, random.Random(0))
    assert tuple(got) == ("bbbb", 0), (
        f"nothing beats 'bbbb' (score 0): it should be kept, got {show(got)}; rule: {STEP_RULE}")
