"""Tests of minillm.arena (ratings, intervals, the arena, the judge's biases, best-of-n) and
minillm.benchmarks (bits per character, the multiple-choice benchmark), on hand-made data and
tiny models; and the 'arena' command on tiny artifacts (slow)."""

import itertools
import math
import random

import pytest
import torch

from minillm import artifacts
from minillm.arena import (
    PairwiseJudge,
    all_pairs,
    as_games,
    best_of_n,
    best_of_n_kl,
    bootstrap_interval,
    bootstrap_ratings,
    bradley_terry,
    elo_update,
    gold_votes,
    judge_margins,
    judge_report,
    kendall_tau,
    labeler_votes,
    length_slope,
    mitigated,
    online_elo,
    percentile_interval,
    play_arena,
    run_arena,
    settling,
    votes_to_settle,
    win_matrix,
)
from minillm.benchmarks import (
    bits_per_char,
    choice_scores,
    held_out_text,
    multiple_choice,
    next_line_questions,
)
from minillm.checkpoint import Checkpoint
from minillm.model import GPT, GPTConfig
from minillm.policy import token_logprobs
from minillm.reward import RewardModel
from minillm.world import Comparisons, gold_reward

PLAYERS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def tok():
    return artifacts.char_tokenizer()


def tiny_gpt(tok, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2,
                         n_embd=32, bias=False)).eval()


# ----------------------------------------------------------------------------- ratings

def test_elo_update_by_hand():
    assert elo_update(1000, 1000, 1.0) == (1016.0, 984.0)
    # 400 points ahead: expected 10/11, so a win earns 32/11 and a loss costs 320/11
    a, b = elo_update(1400, 1000, 0.0)
    assert a == pytest.approx(1400 - 320 / 11) and a + b == pytest.approx(2400)
    assert elo_update(1000, 1000, 0.5, k=10) == (1000.0, 1000.0)


def test_elo_depends_on_order_and_bradley_terry_does_not():
    rng = random.Random(0)
    games = [("a", "b", 1.0)] * 6 + [("b", "a", 1.0)] * 2 + [("a", "c", 0.5)] * 3 + \
            [("c", "b", 1.0)] * 4 + [("b", "c", 1.0)] * 2
    shuffled = games[:]
    rng.shuffle(shuffled)
    assert online_elo(games, PLAYERS) != pytest.approx(online_elo(shuffled, PLAYERS))
    assert torch.allclose(bradley_terry(win_matrix(games, PLAYERS)),
                          bradley_terry(win_matrix(shuffled, PLAYERS)))


def test_bradley_terry_by_hand_and_recovers_strengths():
    ratings = bradley_terry(torch.tensor([[0.0, 3.0], [1.0, 0.0]], dtype=torch.float64), prior=0)
    assert ratings.tolist() == pytest.approx([1000 + 200 * math.log10(3),
                                              1000 - 200 * math.log10(3)], abs=1e-6)
    true = torch.tensor([1000.0, 1100.0, 1250.0, 900.0])
    expected = 1 / (1 + 10 ** ((true[None, :] - true[:, None]) / 400))
    wins = expected * 1000 * (1 - torch.eye(4))  # 1000 games per pair, won as often as expected
    fitted = bradley_terry(wins.double(), prior=0)
    assert torch.allclose(fitted, true.double() - true.mean() + 1000, atol=0.5)
    batch = bradley_terry(torch.stack((wins, wins.T)).double(), prior=0)
    assert torch.allclose(batch[0], fitted) and torch.allclose(batch[1], 2000 - fitted)


def test_a_player_who_won_everything_keeps_a_finite_rating():
    ratings = bradley_terry(win_matrix([("a", "b", 1.0)] * 5, ["a", "b"]))
    assert torch.isfinite(ratings).all() and ratings[0] > ratings[1]


def test_percentile_and_bootstrap_intervals():
    assert percentile_interval(range(1000)) == (25.0, 974.0)
    values = [0, 1, 1, 1] * 25
    low, high = bootstrap_interval(values, lambda v: sum(v) / len(v), resamples=400, seed=1)
    assert low < 0.75 < high and high - low == pytest.approx(2 * 1.96 * math.sqrt(0.1875 / 100),
                                                             rel=0.3)
    assert bootstrap_interval(values, max, resamples=50, seed=1) == (1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_interval([], max)


def test_bootstrap_leaderboard_brackets_each_rating():
    rng = random.Random(0)
    strength = {"a": 0.0, "b": 1.0, "c": 2.0}
    games = []
    for _ in range(600):
        x, y = rng.sample(PLAYERS, 2)
        games.append((x, y, float(rng.random() < 1 / (1 + math.exp(strength[y] - strength[x])))))
    board = bootstrap_ratings(games, PLAYERS, resamples=200)
    assert all(b["low"] <= b["rating"] <= b["high"] for b in board.values())
    assert board["c"]["low"] > board["a"]["high"]
    assert sum(b["games"] for b in board.values()) == 2 * len(games)


def test_kendall_tau():
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1
    assert kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)


# ----------------------------------------------------------------------------- the arena

def answer(policy, prompt, text, ended=True, topic="love"):
    return {"policy": policy, "prompt": prompt, "topic": topic, "answer": text, "ended": ended,
            "gold": gold_reward(topic, text, ended)}


def toy_pool():
    pool = []
    for p in ("Speak of love.", "What of love?"):
        pool += [answer("a", p, "love love love love"), answer("a", p, "xq"),
                 answer("b", p, "My love is as a fever, longing still."),
                 answer("b", p, "Love is a smoke."), answer("c", p, "My love is a rose.")]
    return pool


def test_matches_are_blind_pairs_of_two_policies_on_one_prompt():
    pool = toy_pool()
    matches = play_arena(pool, 200, seed=3)
    assert matches == play_arena(pool, 200, seed=3) and len(matches) == 200
    for i, j in matches:
        assert pool[i]["prompt"] == pool[j]["prompt"] and pool[i]["policy"] != pool[j]["policy"]
    firsts = {pool[i]["policy"] for i, _ in matches}
    assert firsts == {"a", "b", "c"}  # every policy is shown first sometimes


def test_a_labeler_without_noise_votes_as_gold_and_settles_on_its_ranking():
    pool = toy_pool()
    matches = play_arena(pool, 300)
    assert labeler_votes(pool, matches, agreement=1.0) == gold_votes(pool, matches)
    votes = labeler_votes(pool, matches, agreement=0.8)
    truth = {"a": 0.0, "b": 2.0, "c": 1.0}
    steps = settling(pool, matches, votes, PLAYERS, [10, 100, 200, 300], truth)
    assert [s["votes"] for s in steps] == [10, 100, 200, 300]
    assert steps[-1]["ranking"][-1] == "a" and steps[-1]["tau"] > 0
    settled = votes_to_settle(steps)
    assert settled is None or all(s["ranking"] == steps[-1]["ranking"]
                                  for s in steps if s["votes"] >= settled)
    games = as_games(pool, matches, votes)
    assert games[0][:2] == (pool[matches[0][0]]["policy"], pool[matches[0][1]]["policy"])


def test_swap_averaging_removes_position_bias_and_length_slope_is_recovered():
    pool = toy_pool()
    pairs = all_pairs(pool)
    assert len(pairs) == 2 * 10  # ten pairs of five answers, per prompt
    torch.manual_seed(0)
    judge = PairwiseJudge(4)
    torch.nn.init.normal_(judge.head.weight)
    features = torch.randn(len(pool), 4)
    shown, swapped = judge_margins(judge, features, pairs)
    assert torch.allclose(shown, judge(features[[i for i, _ in pairs]],
                                       features[[j for _, j in pairs]]))
    averaged = mitigated(pool, pairs, shown, swapped, "swap")
    assert judge_report(pool, pairs, *averaged)["flip_rate"] == 0
    # a judge that always prefers the first place flips every verdict
    biased = judge_report(pool, pairs, torch.ones(len(pairs)), torch.ones(len(pairs)))
    assert biased["flip_rate"] == 1 and biased["first_wins"] == 1
    # margins that are policy strength plus 0.7 per 100 characters: the slope is found
    strength = {"a": -1.0, "b": 0.5, "c": 0.2}
    planted = torch.tensor([strength[pool[i]["policy"]] - strength[pool[j]["policy"]]
                            + 0.7 * (len(pool[i]["answer"]) - len(pool[j]["answer"])) / 100
                            for i, j in pairs])
    assert length_slope(pool, pairs, planted) == pytest.approx(0.7, abs=1e-6)
    controlled, _ = mitigated(pool, pairs, planted, -planted, "length")
    assert length_slope(pool, pairs, controlled) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="mitigation"):
        mitigated(pool, pairs, shown, swapped, "shorter")


# ----------------------------------------------------------------------------- best-of-n

def test_best_of_n_kl_by_hand():
    assert best_of_n_kl(1) == 0
    assert best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    with pytest.raises(ValueError):
        best_of_n_kl(0)


def test_best_of_n_is_the_exact_mean_over_subsets():
    rng = random.Random(0)
    rows = [{"prompt": p, "proxy": rng.random(), "gold": rng.random()}
            for p in ("x", "y") for _ in range(6)]
    points = best_of_n(rows, [1, 3, 6])
    for point in points:
        per_prompt = []
        for p in ("x", "y"):
            answers = [r for r in rows if r["prompt"] == p]
            subsets = list(itertools.combinations(answers, point["n"]))
            per_prompt.append(sum(max(s, key=lambda r: r["proxy"])["gold"] for s in subsets)
                              / len(subsets))
        assert point["gold"] == pytest.approx(sum(per_prompt) / 2)
    assert points[0]["gold"] == pytest.approx(sum(r["gold"] for r in rows) / len(rows))
    with pytest.raises(ValueError, match="only 6 answers"):
        best_of_n(rows, [8])


# ----------------------------------------------------------------------------- benchmarks

def test_a_model_that_knows_nothing_needs_log2_v_bits(tok, corpus):
    model = tiny_gpt(tok)
    torch.nn.init.zeros_(model.lm_head.weight)
    m = bits_per_char(model, tok, held_out_text(corpus), windows=4)
    assert m["bits_per_char"] == pytest.approx(math.log2(tok.vocab_size), rel=1e-4)
    assert m["windows"] == 4 and m["chars"] == 4 * 127
    with pytest.raises(ValueError, match="windows"):
        bits_per_char(model, tok, "too short", windows=4)


def test_choice_scores_are_mean_logprobs_of_each_choice(tok):
    model = tiny_gpt(tok)
    context, choices = tok.encode("Speak.\n"), [tok.encode("Aye."), tok.encode("No, sir")]
    scores = choice_scores(model, context, choices)
    for score, choice in zip(scores, choices):
        ids = torch.tensor([context + choice])
        logp = token_logprobs(model(ids)[0], ids)[0, len(context) - 1:]
        assert score == pytest.approx(logp.mean().item(), abs=1e-5)


def test_next_line_questions_hold_the_true_next_line(corpus, tok):
    text = held_out_text(corpus)
    questions = next_line_questions(text, n=20, seed=1)
    assert questions == next_line_questions(text, n=20, seed=1)
    for q in questions:
        right = q["choices"][q["answer"]]
        assert q["context"] + "\n" + right in text or q["context"] + "\n" in text
        assert len(set(q["choices"])) == 4
        assert all(abs(len(c) - len(right)) <= len(right) / 4 for c in q["choices"])
    m = multiple_choice(tiny_gpt(tok), tok, questions[:6])
    assert m["n"] == 6 and m["chance"] == 0.25 and 0 <= m["accuracy"] <= 1


# ----------------------------------------------------------------------------- all of it

def test_run_arena_on_tiny_models(tok):
    sft = tiny_gpt(tok, 1)
    assistant = Checkpoint(model=sft, tokenizer=tok)
    rm = RewardModel.from_gpt(tiny_gpt(tok, 2)).eval()
    torch.nn.init.normal_(rm.head.weight, std=0.1)
    responses = [answer("sft", "Speak of love.", text) for text in
                 ("My love is a rose.", "xq", "love love love", "Love is a smoke.")]
    comparisons = Comparisons(responses, [(0, 1), (0, 2), (3, 1), (3, 2), (0, 3)])
    result = run_arena({"base": tiny_gpt(tok, 3), "sft": sft}, assistant, rm, comparisons,
                       votes=40, samples=1, best_of=2, resamples=20)
    board = result["leaderboard"]
    assert set(board) == {"base", "sft"} and sum(b["games"] for b in board.values()) == 80
    assert result["judge"]["mitigations"]["swap"]["flip_rate"] == 0
    assert [p["n"] for p in result["best_of_n"]] == [1, 2]


@pytest.mark.slow
def test_arena_command_makes_missing_artifacts_and_writes_json(tiny_recipes, monkeypatch,
                                                               capsys):
    import json
    from dataclasses import replace

    from minillm.__main__ import main

    tiny = artifacts.rlhf_recipe  # the fixture's: tiny PPO and DPO runs; GRPO is PPO's kind
    monkeypatch.setattr(artifacts, "rlhf_recipe", lambda method, profile_name=None: replace(
        tiny("ppo"), advantages="group", value_coef=0.0) if method == "grpo" else tiny(method))
    out = tiny_recipes / "arena.json"
    main(["arena", "--votes", "30", "--samples", "1", "--best-of", "2", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "Kendall tau" in printed and "best-of-2" in printed
    result = json.loads(out.read_text())
    assert set(result["leaderboard"]) == {"base", "sft", "ppo", "grpo", "dpo"}
    assert all({"rating", "low", "high", "gold", "gold_se"} <= set(b)
               for b in result["leaderboard"].values())
    assert "flip_rate" in result["judge"]["mitigations"]["none"]
