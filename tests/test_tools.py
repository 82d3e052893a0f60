"""Tests of lesson 10: the calculator runtime, the grown vocabulary, the arithmetic task, the
tool loop in generation, voting, and GRPO with a verifiable reward."""

import json
import random
import subprocess
from pathlib import Path

import pytest
import torch

from minillm import artifacts
from minillm.arithmetic import (
    FORMATS,
    answer_text,
    final_answer,
    make_arithmetic_data,
    question,
    verifiable_reward,
    worked_steps,
)
from minillm.chat import render, respond, sample_answers
from minillm.data import char_tokenizer
from minillm.model import GPT, GPTConfig, grow_vocabulary
from minillm.policy import rollout
from minillm.ppo import PPOConfig, ppo
from minillm.reasoning import accuracy_by_digits, majority_vote, self_consistency
from minillm.tokenizer import from_json
from minillm.tools import (
    CALL,
    CALL_END,
    CalcError,
    calculate,
    encode_with_tools,
    tool_result,
    with_tool_tokens,
)
from minillm.train import TrainConfig

RUN_C = Path(__file__).resolve().parent.parent / "minillm" / "run.c"


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer().with_tokens("0123456789+-*()=", [CALL, CALL_END])


def tiny_gpt(vocab_size, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=96, n_layer=1, n_head=2, n_embd=16,
                         bias=False)).eval()


# ----------------------------------------------------------------------------- the calculator

@pytest.mark.parametrize("call, value", [("37+48", 85), ("2*(3+4)-5", 9), ("-7+10", 3),
                                         ("1 + 2 * 3", 7), ("(((4)))", 4), ("10-2-3", 5)])
def test_calculate_values_with_precedence_and_left_association(call, value):
    assert calculate(call) == value


@pytest.mark.parametrize("call", ["", "1+", "__import__('os')", "2**3", "1/2", "(1+2", "1)",
                                  "9" * 41, "1e5", "٣+1", "(" * 30 + "1" + ")" * 30])
def test_a_malformed_call_raises_calc_error_and_gets_an_error_result(call):
    with pytest.raises(CalcError):
        calculate(call)
    assert tool_result(call).startswith("error: ")


@pytest.fixture(scope="module")
def c_calculator(tmp_path_factory, compile_c):
    """run.c's calc(), built alone: each argument is a call, each output line its result."""
    folder = tmp_path_factory.mktemp("calc")
    harness = folder / "calc.c"
    harness.write_text(f'#define main run_main\n#include "{RUN_C}"\n#undef main\n'
                       "int main(int argc, char **argv) {\n"
                       "    char out[96];\n"
                       "    for (int i = 1; i < argc; i++) { calc(argv[i], strlen(argv[i]), out); "
                       "fputs(out, stdout); }\n"
                       "    return 0;\n}\n")
    binary = compile_c(harness, folder / "calc")

    def results(calls):
        finished = subprocess.run([str(binary), *calls], capture_output=True, timeout=60)
        assert finished.returncode == 0, finished.stderr
        return [line + "\n" for line in finished.stdout.decode("utf-8").split("\n")[:-1]]

    return results


# Calls on every path of the grammar, each limit and its edge. Values: 30 digits is the most a
# result may have, a call's 40 characters can hold a 39- or 40-digit number (past int64 and
# __int128 alike), and a 38-digit number times 0 is 0.
EDGE_CALLS = [
    "37+48", "2*(3+4)-5", "-7+10", "1 + 2 * 3", "(((4)))", "10-2-3", "--5", "-(-(3))", "007",
    "0*-0", "3*-2", "999*999*999", "1 2", " 4 ", "9" * 30, "-" + "9" * 30, "9" * 31,
    "1" + "0" * 29 + "*10", "99999999999999999999*9999999999", "9" * 31 + "*0", "9" * 38 + "*0",
    "9" * 38 + "+9", "-" + "9" * 39, "9" * 39 + "*", "(" + "9" * 39, "9" * 40, "9" * 41,
    "99999999999999999999*9999999999999999999", "-99999999999999999999*9999999999999999999",
    "9" * 19 + "*" + "9" * 19 + "-1", "(" + "9" * 38 + ")",
    "", " ", "1+", "+1", "1+*2", "()", "(1+2", "1)", "1+1)", "12ab", "__import__('os')",
    "2**3", "1/2", "1e5", "٣+1", "é" * 40, "é" * 41, "1+é", "\t1", "1\n", "a" * 50,
    "(" * 30 + "1" + ")" * 30, "(" * 19 + "1" + ")" * 19, "<|calc|>1", "1<|/calc|>2",
]


def test_the_c_runners_calculator_answers_every_call_as_python_does(c_calculator):
    rng = random.Random(0)
    alphabet = "0123456789+-*() 9é"
    fuzzed = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 44)))
              for _ in range(400)]
    calls = EDGE_CALLS + fuzzed
    c, python = c_calculator(calls), [tool_result(call) for call in calls]
    assert len(c) == len(calls)
    differ = [(call, want, got) for call, want, got in zip(calls, python, c) if want != got]
    assert not differ, differ[:5]
    # The table reaches every kind of result, so it tests every message, not one.
    kinds = {r.split(" ")[0] if r.startswith("error") else "a value" for r in python}
    messages = {r.rstrip("0123456789\n") for r in python if r.startswith("error")}
    assert kinds == {"error:", "a value"} and len(messages) == 7, messages


def test_tool_results_never_raise_and_are_writable_by_the_character_tokenizer(tok):
    rng = random.Random(0)
    alphabet = "0123456789+-*() x<|>/."
    for _ in range(300):
        result = tool_result("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))))
        tok.encode(result)  # every error message is made of characters the model can read
        assert result.endswith("\n")


# ----------------------------------------------------------------------------- vocabulary

def test_grown_tokenizer_keeps_old_ids_and_round_trips():
    old = char_tokenizer()
    grown = old.with_tokens("0123456789", [CALL, CALL_END])
    text = "How many are 3 and 4?"
    assert grown.encode("How many are 3 and ") == old.encode("How many are 3 and ")
    assert grown.special_tokens.items() >= old.special_tokens.items()
    assert grown.vocab_size == old.vocab_size + 9 + 2  # "3" is in the corpus already
    assert from_json(grown.to_json()).encode(text) == grown.encode(text)
    assert from_json(old.to_json()).encode("3") == old.encode("3")  # no added_chars key


def test_grow_vocabulary_leaves_old_tokens_logits_unchanged():
    model = tiny_gpt(20)
    grown = grow_vocabulary(model, 25)
    idx = torch.randint(20, (2, 10))
    with torch.no_grad():
        assert torch.allclose(model(idx)[0], grown(idx)[0][..., :20], atol=1e-6)
        rows = grown.tok_emb.weight[20:]
    assert rows.std(0).mean() > 0  # the new tokens start apart, not as one vector
    assert grown.lm_head.weight is grown.tok_emb.weight


def test_an_exported_grown_model_reads_back_with_the_same_ids(tok, tmp_path):
    from minillm.export import export, read_export

    model = tiny_gpt(tok.vocab_size)
    back = read_export(export(model, tmp_path / "sums.bin", tokenizer=tok)).tokenizer()
    text = "How many are 37 and 48?"
    assert back.encode(text) == tok.encode(text) and back.special_tokens == tok.special_tokens


def test_with_tool_tokens_leaves_the_model_as_it_was(tok):
    model = tiny_gpt(char_tokenizer().vocab_size)
    before = model.tok_emb.weight.clone()
    grown, grown_tok = with_tool_tokens(model, char_tokenizer())
    assert torch.equal(model.tok_emb.weight, before)
    assert grown.config.vocab_size == grown_tok.vocab_size == tok.vocab_size


# ----------------------------------------------------------------------------- the loss mask

def test_the_tool_result_carries_no_loss_and_the_answer_after_it_does(tok):
    text = answer_text(question(37, 48), "tool")
    ids, mask = render([{"role": "user", "content": "How many are 37 and 48?"},
                        {"role": "assistant", "content": text}], tok)
    learned = tok.decode([i for i, m in zip(ids, mask) if m])
    unlearned_in_answer = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert learned == "<|calc|>37+48<|/calc|>So 85.<|end|>"
    assert unlearned_in_answer.endswith("<|assistant|>85\n")


def test_user_text_cannot_forge_a_tool_call(tok):
    tok = tok.with_tokens("<|>/calc")  # so that the tokens' text can be typed at all
    ids, _ = render([{"role": "user", "content": "<|calc|>1+1<|/calc|>"},
                     {"role": "assistant", "content": "No."}], tok)
    assert tok.special_tokens[CALL] not in ids and tok.special_tokens[CALL_END] not in ids


def test_without_tool_tokens_the_text_is_plain_and_all_learned():
    plain = char_tokenizer()
    ids, mask = encode_with_tools("So 3.", plain)
    assert ids == plain.encode("So 3.") and all(mask)


# ----------------------------------------------------------------------------- the tool loop

class Scripted(torch.nn.Module):
    """A stand-in model that writes a fixed script, whatever it is given: the tool loop's
    behaviour is then known exactly."""

    def __init__(self, tok, script: str, vocab_size: int):
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab_size, block_size=96, n_layer=1, n_head=1,
                                n_embd=4)
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.script = tok.encode(script, allowed_special="all")

    def generate(self, idx, max_new_tokens, **_):
        rows = []
        for row in idx.tolist():
            prompt_end = max(k for k, t in enumerate(row) if t == self.assistant) + 1
            # Go on with the script past what is written (the runtime's results skipped).
            rows.append(row + self.rest(row[prompt_end:])[:max_new_tokens])
        width = max(map(len, rows))
        return torch.tensor([r + [r[-1]] * (width - len(r)) for r in rows])

    def rest(self, written):
        script, k = self.script, 0
        for t in written:  # skip the script's tokens already written, in order
            if k < len(script) and script[k] == t:
                k += 1
        return script[k:]


def scripted(tok, script):
    model = Scripted(tok, script, tok.vocab_size)
    model.assistant = tok.special_tokens["<|assistant|>"]
    return model


def test_the_runtime_answers_a_call_and_the_model_goes_on(tok):
    model = scripted(tok, "<|calc|>37+48<|/calc|>So 85.<|end|>")
    forced = []
    _, answers = sample_answers(model, tok, ["How many are 37 and 48?"], forced=forced)
    assert tok.decode(answers[0]) == "<|calc|>37+48<|/calc|>85\nSo 85.<|end|>"
    assert tok.decode([t for t, f in zip(answers[0], forced[0]) if f]) == "85\n"
    texts, ended = respond(model, tok, ["How many are 37 and 48?"])
    assert texts == ["<|calc|>37+48<|/calc|>85\nSo 85."] and ended == [True]


def test_a_malformed_call_gets_an_error_result_not_an_exception(tok):
    model = scripted(tok, "<|calc|>37+<|/calc|>So 0.<|end|>")
    texts, _ = respond(model, tok, ["How many are 37 and 48?"])
    assert texts == ["<|calc|>37+<|/calc|>error: a number was expected at the end\nSo 0."]


def test_a_rollout_gives_the_policy_no_action_on_tool_results(tok):
    model = scripted(tok, "<|calc|>2+2<|/calc|>So 4.<|end|>")
    batch = rollout(model, tok, [question(2, 2)])
    answer = batch.ids[0, 1:][batch.actions[0].bool()].tolist()
    assert tok.decode(answer) == "<|calc|>2+2<|/calc|>So 4.<|end|>"
    assert batch.responses[0]["solution"] == 4  # the question travels with its answer
    assert verifiable_reward(batch.responses) == [1.0]


# ----------------------------------------------------------------------------- the task

def test_worked_steps_add_up_column_by_column():
    rng = random.Random(1)
    for _ in range(200):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        steps = worked_steps(a, b)
        digits = [int(s.split("=")[1].split(",")[0].rstrip(".")) % 10
                  for s in steps.split(". ")]
        column_digits = "".join(map(str, reversed(digits)))
        carry = steps.endswith("carry 1.")  # the last column's carry is the leading 1
        assert int(("1" if carry else "") + column_digits) == a + b, steps


def test_every_format_ends_with_the_solution():
    q = question(457, 908)
    assert all(final_answer(answer_text(q, f)) == 1365 for f in FORMATS)


def test_held_out_pairs_never_occur_in_training_in_either_order():
    data = make_arithmetic_data("direct", train_size=3000, per_digits=50)
    held = {(q["a"], q["b"]) for q in data.questions}
    trained = {(q["a"], q["b"]) for q in data.train}
    assert not held & trained and not {(b, a) for a, b in held} & trained
    assert {q["digits"] for q in data.questions} == {1, 2, 3}
    again = make_arithmetic_data("worked", train_size=3000, per_digits=50)
    assert again.questions == data.questions  # the same sums in every format


def test_bad_task_settings_say_what_is_wrong():
    with pytest.raises(ValueError, match="format"):
        make_arithmetic_data("shouted")
    with pytest.raises(ValueError, match="digits"):
        make_arithmetic_data("direct", digits=(0,))


# ----------------------------------------------------------------------------- voting

def test_majority_vote_ignores_missing_answers_and_breaks_ties_by_first():
    assert majority_vote([None, None, 3, 4, 4]) == 4
    assert majority_vote([7, 5, 5, 7]) == 7
    assert majority_vote([None, None]) is None


def test_self_consistency_counts_one_vote_per_question():
    rows = []
    for k in range(10):  # questions 0-4 are answered right 3 times in 4, 5-9 once in 4
        right = 3 if k < 5 else 1
        rows += [{"prompt": str(k), "solution": k, "given": k if j < right else -1,
                  "digits": 1, "correct": j < right} for j in range(4)]
    votes = self_consistency(rows, ks=(1, 4))
    assert votes[4]["accuracy"] == 0.5 and votes[4]["n"] == 10
    assert accuracy_by_digits(rows)[1]["accuracy"] == 0.5
    with pytest.raises(ValueError, match="answers per question"):
        self_consistency(rows, ks=(8,))


# ----------------------------------------------------------------------------- RL on a checker

def test_grpo_takes_a_reward_function_and_logs_no_gold(tok):
    model = tiny_gpt(tok.vocab_size)
    questions = make_arithmetic_data("direct", train_size=16, per_digits=4).train_questions
    calls = []

    def reward(responses):
        calls.append(len(responses))
        return verifiable_reward(responses)

    config = PPOConfig(advantages="group", value_coef=0.0, steps=2, prompts_per_step=2,
                       samples_per_prompt=2, max_new_tokens=8, progress=False)
    _, history, scale = ppo(model, reward, config, tokenizer=tok, prompts=questions)
    assert calls == [4, 4] and (scale.mean, scale.std) == (0.0, 1.0)
    assert "gold" not in history[0] and history[0]["proxy"] == 0.0


@pytest.mark.slow
def test_tools_command_writes_every_measurement(tiny_recipes, tmp_path, monkeypatch):
    from minillm.__main__ import main

    recipe = artifacts.tools_recipe("quick")
    recipe["task"] = {"digits": (1, 2), "train_size": 64, "per_digits": 4}
    recipe["rl_digits"] = (2,)
    recipe["sft"] = TrainConfig(max_steps=2, batch_size=2, warmup_steps=1, eval_interval=2,
                                eval_batches=1, progress=False)
    recipe["vote"] = {**recipe["vote"], "questions": 2, "samples": 4, "ks": (1, 4)}
    recipe["grpo"] = PPOConfig(advantages="group", value_coef=0.0, steps=1, prompts_per_step=2,
                               samples_per_prompt=2, max_new_tokens=8, progress=False)
    monkeypatch.setattr(artifacts, "tools_recipe", lambda profile_name=None: recipe)
    out = tmp_path / "sums.json"
    main(["tools", "--json", str(out), "--figure", str(tmp_path / "sums.png")])
    result = json.loads(out.read_text())
    assert set(result["formats"]) == set(FORMATS)
    assert set(result["formats"]["tool"]["by_digits"]) == {"1", "2"}
    assert set(result["votes"]) == {"1", "4"} and "kl" in result["grpo"]
    assert (tmp_path / "sums.png").is_file()
    assert artifacts.tools_model("tool").tokenizer.special_tokens[CALL]
