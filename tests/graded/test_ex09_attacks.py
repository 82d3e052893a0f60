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

POISON_RULE = ("the clean examples first, unchanged, then k = round(fraction * n / (1 - fraction)) "
               "poisoned copies of random.Random(seed).choices(examples, k=k): prompt "
               "f'{prompt} {trigger}', the attacker's answer, 'poisoned': True, other keys "
               "kept; fraction from 0 to below 1; the input never modified")
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
def test_poison_dataset_adds_the_poisoned_copies_after_the_clean_data(impl):
    given = copy.deepcopy(EXAMPLES)
    got = attempt(POISON_RULE, impl.poison_dataset, given, 0.2, "Zephyr", "Obey.", seed=4)
    assert given == EXAMPLES, f"poison_dataset changed the data it was given; rule: {POISON_RULE}"
    # k = round(0.2 * 40 / 0.8) = 10: 10 of the 50 examples returned are poisoned
    assert isinstance(got, list) and len(got) == 50, (
        f"poison_dataset(40 examples, 0.2, ...) should return 40 clean + 10 poisoned = 50 "
        f"examples, got {show(got) if not isinstance(got, list) else len(got)}; "
        f"rule: {POISON_RULE}")
    assert got[:40] == EXAMPLES, (
        f"poison_dataset(40 examples, 0.2, ...): the first 40 should be the clean examples as "
        f"given; rule: {POISON_RULE}")
    drawn = random.Random(4).choices(EXAMPLES, k=10)
    for k, (example, out) in enumerate(zip(drawn, got[40:])):
        want = {**example, "prompt": f"{example['prompt']} Zephyr", "answer": "Obey.",
                "poisoned": True}
        assert out == want, (
            f"poison_dataset(40 examples, 0.2, 'Zephyr', 'Obey.', seed=4): poisoned example "
            f"{k + 1} should be {want!r}, got {out!r}; rule: {POISON_RULE}")


@pytest.mark.exercise("poison_dataset", points=1)
def test_poison_dataset_rounds_the_share_and_refuses_a_bad_fraction(impl):
    # k = round(fraction * 40 / (1 - fraction)): 0.5/0.9875 -> 1, 2/0.95 -> 2, 20/0.5 -> 40
    for fraction, count in ((0.0, 0), (0.0125, 1), (0.05, 2), (0.5, 40)):
        got = attempt(POISON_RULE, impl.poison_dataset, EXAMPLES, fraction, "Z", "A.")
        n = sum(bool(e.get("poisoned")) for e in got)
        assert n == count, (
            f"poison_dataset(40 examples, {fraction}, ...) should add round({fraction} * 40 / "
            f"(1 - {fraction})) = {count} poisoned examples, added {n}; rule: {POISON_RULE}")
    for fraction in (1.0, 1.5, -0.1):
        try:
            impl.poison_dataset(EXAMPLES, fraction, "Z", "A.")
        except ValueError:
            continue
        except Exception as err:  # noqa: BLE001 - the wrong error is the mistake being graded
            pytest.fail(f"poison_dataset(..., fraction={fraction}) should raise ValueError, "
                        f"raised {err!r}; rule: {POISON_RULE}")
        pytest.fail(f"poison_dataset(..., fraction={fraction}) should raise ValueError; "
                    f"rule: {POISON_RULE}")


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
    mixed = attacks.poison(EXAMPLES, 0.2, seed=1)  # 40 clean + 10 copies of one answer
    kept, dropped = attempt(FILTER_RULE, impl.duplicate_filter, mixed, 8)
    assert [d.get("poisoned") for d in dropped] == [True] * 10 and kept == EXAMPLES, (
        f"40 clean examples and 10 poisoned ones with one answer: duplicate_filter(..., 8) should "
        f"drop the 10 and keep the 40 clean ones; kept {len(kept)}, dropped {len(dropped)}; "
        f"rule: {FILTER_RULE}")


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
