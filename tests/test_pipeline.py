"""Tests of minillm.pipeline and 'python -m minillm pipeline': which stages a --force redoes,
skipping what exists, the table, the figure and the JSON summary (on stand-in stages), the whole
pipeline end to end on tiny recipes from an empty MINILLM_HOME and again with everything cached,
and (slow) the real pipeline on the lessons' artifacts: it must only measure, and meet the
course's outcomes."""

import json
import math
from dataclasses import replace

import pytest
import torch

import minillm.__main__ as cli
from minillm import artifacts, pipeline, world
from minillm.checkpoint import load_checkpoint
from minillm.pipeline import STAGES, StageResult
from minillm.reward import load_reward_model
from minillm.settings import profile
from minillm.train import TrainConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- redo and skip

@pytest.mark.parametrize("force, redo", [
    ([], set()),
    (["tokenizer"], {"tokenizer"}),
    (["pretrain"], {"pretrain", "sft", "reward", "ppo", "dpo"}),
    (["sft"], {"sft", "reward", "ppo", "dpo"}),
    (["reward"], {"reward", "ppo", "dpo"}),
    (["dpo"], {"dpo"}),
    (["ppo", "tokenizer"], {"ppo", "tokenizer"}),
])
def test_forcing_a_stage_redoes_the_stages_made_from_it(force, redo):
    assert pipeline.stages_to_redo(force) == redo


def test_forcing_an_unknown_stage_is_one_sentence():
    with pytest.raises(ValueError, match=r"^There is no stage 'rlhf'; the stages are "
                                         r"tokenizer, pretrain, sft, reward, ppo, dpo\.$"):
        pipeline.stages_to_redo(["sft", "rlhf"])


def test_make_unless_present_skips_what_exists_and_redoes_it_when_forced(tmp_path, capsys):
    path = tmp_path / "artifact.txt"
    calls = []

    def make():
        calls.append(path.exists())  # a forced stage starts from no artifact
        path.write_text(f"version {len(calls)}")

    assert pipeline.make_unless_present(path, make) > 0
    assert calls == [False] and path.read_text() == "version 1"
    assert capsys.readouterr().out == ""
    assert pipeline.make_unless_present(path, make) == 0.0
    assert calls == [False]
    assert capsys.readouterr().out == f"skipped: {path} exists\n"
    assert pipeline.make_unless_present(path, make, force=True) > 0
    assert calls == [False, False] and path.read_text() == "version 2"
    assert "skipped" not in capsys.readouterr().out


def test_a_stage_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="did not write"):
        pipeline.make_unless_present(tmp_path / "missing.pt", lambda: None)


# ----------------------------------------------------------------------------- the report

def fake_results() -> list[StageResult]:
    """Stage results shaped like the real ones, with what the figure draws."""
    sft_summary = {"on_topic": 0.4, "on_topic_se": 0.03, "ended": 0.98, "ended_se": 0.01,
                   "sensible_length": 0.8, "sensible_length_se": 0.02, "n": 288}
    base_summary = {**sft_summary, "on_topic": 0.05, "ended": 0.0, "sensible_length": 0.1}
    rlhf = {"gold": 1.9, "gold_se": 0.04, "sft_gold": 1.7, "sft_gold_se": 0.05,
            "gold_gain": 0.2, "gold_gain_se": 0.03, "gold_z": 6.7, "proxy_gain": 0.9,
            "proxy_gain_se": 0.1, "kl": 2.5, "prompts": 72, "answers": 576}
    return [
        StageResult("tokenizer", [], False, {"chars_per_token": 3.1}, "3.1 characters per token",
                    make_seconds=0.0, seconds=2.4),
        StageResult("pretrain", [], True, {"val_loss": 1.75, "se": float("nan")},
                    "val loss 1.750 nats/char after 3,000 steps",
                    {"curve": {"step": [0, 250, 500], "val_loss": [4.2, 2.5, 2.1],
                               "train_loss": [4.2, 2.4, 2.0]}}, make_seconds=200.0,
                    seconds=201.0),
        StageResult("sft", [], False, {"n": 288}, "on topic 5% -> 40%",
                    {"base": base_summary, "sft": sft_summary}, seconds=61.0),
        StageResult("reward", [], False, {"gold_accuracy": 0.74}, "gold accuracy 0.740",
                    {"scores": [0.1, -0.3, 0.5, 0.2], "gold": [2.0, 1.0, 3.0, 2.5],
                     "spearman": 0.8}, seconds=5.0),
        StageResult("ppo", [], False, rlhf, "gold +0.200 ± 0.030", seconds=30.0),
        StageResult("dpo", [], True, {**rlhf, "gold": 1.8, "gold_gain": 0.1}, "gold +0.100",
                    make_seconds=170.0, seconds=3725.0),
    ]


def test_the_table_has_one_line_per_stage_and_the_total():
    lines = pipeline.format_table(fake_results(), total=4024.6).splitlines()
    assert lines[0].split() == ["stage", "artifact", "time", "key", "metric"]
    assert lines[1].split()[:3] == ["tokenizer", "skipped", "0:02"]
    assert lines[2].split()[:3] == ["pretrain", "made", "3:21"]
    assert lines[6].split()[:3] == ["dpo", "made", "62:05"]
    assert [line.split()[0] for line in lines[1:7]] == list(STAGES)
    assert lines[3].endswith("on topic 5% -> 40%")  # each stage's headline, whole
    assert lines[-1].split() == ["total", "67:05"]
    assert len(lines) == 8


def test_the_summary_saves_a_figure_and_json_next_to_the_artifacts(home):
    results = fake_results()
    summary = pipeline.save_summary(results, "quick", total=4024.6)
    assert summary["figure"] == str(home / "pipeline-quick.png")
    assert (home / "pipeline-quick.png").read_bytes()[:8] == PNG_MAGIC
    saved = json.loads((home / "pipeline-quick.json").read_text())
    assert saved == summary
    assert list(saved["stages"]) == list(STAGES)
    assert saved["stages"]["dpo"] == {"made": True, "seconds": 3725.0, "make_seconds": 170.0,
                                      "artifacts": [], "headline": "gold +0.100",
                                      "metrics": {**results[5].metrics}}
    assert saved["stages"]["pretrain"]["metrics"] == {"val_loss": 1.75, "se": None}  # NaN


def test_the_figure_has_the_four_panels():
    fig = pipeline.summary_figure(fake_results())
    titles = [ax.get_title() for ax in fig.axes]
    assert [t.split(":")[0] for t in titles] == ["pretraining", "SFT", "reward model", "RLHF"]
    rlhf_ax = fig.axes[3]
    assert [t.get_text() for t in rlhf_ax.get_xticklabels()] == ["SFT", "PPO", "DPO"]
    assert [round(p.get_height(), 6) for p in rlhf_ax.patches] == [1.7, 1.9, 1.8]


def test_run_pipeline_runs_the_stages_in_order_and_reports_them(home, monkeypatch, capsys):
    results = {r.stage: r for r in fake_results()}
    calls = []

    def stand_in(name):
        def stage(profile_name, force=False, reference=None, base="char"):
            calls.append((name, profile_name, force, reference))
            assert base == "char"
            return results[name]
        return stage

    for name in ("tokenizer", "pretrain", "sft", "reward"):
        monkeypatch.setattr(pipeline, f"{name}_stage", stand_in(name))
    monkeypatch.setattr(pipeline, "rlhf_stage",
                        lambda method, *args, **kwargs: stand_in(method)(*args, **kwargs))
    references = []
    monkeypatch.setattr(pipeline, "measure_sft", lambda *args: references.append(args) or "ref")

    summary = pipeline.run_pipeline("full", force=["reward"])
    assert calls == [("tokenizer", "full", False, None), ("pretrain", "full", False, None),
                     ("sft", "full", False, None), ("reward", "full", True, None),
                     ("ppo", "full", True, "ref"), ("dpo", "full", True, "ref")]
    assert references == [("full", "char")]  # measured once, for both policies
    out = capsys.readouterr().out
    assert "[4/6] reward (redo)" in out and "[1/6] tokenizer\n" in out
    assert pipeline.format_table(list(results.values()), summary["total_seconds"]) in out
    assert out.rstrip().splitlines()[-2:] == [f"figure: {home / 'pipeline-full.png'}",
                                              f"summary: {home / 'pipeline-full.json'}"]
    assert summary["profile"] == "full" and list(summary["stages"]) == list(STAGES)
    assert all(summary["stages"][n]["seconds"] >= 0 for n in STAGES)
    assert (home / "pipeline-full.png").is_file()


# ----------------------------------------------------------------------------- the command

def test_the_command_passes_profile_and_stages_to_force(monkeypatch):
    calls = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda *args: calls.append(args))
    cli.main(["pipeline", "--profile", "quick", "--force", "sft", "--force", "ppo"])
    cli.main(["pipeline"])
    cli.main(["pipeline", "--base", "gpt2"])
    assert calls == [("quick", ["sft", "ppo"], "char"), (None, (), "char"), (None, (), "gpt2")]
    for name in STAGES:  # the command offers exactly the pipeline's stages
        cli.main(["pipeline", "--force", name])
    assert [args[1] for args in calls[3:]] == [[name] for name in STAGES]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["pipeline", "--force", "rlhf"])
    assert exit_info.value.code == 2


def test_the_command_reports_errors_in_one_sentence(monkeypatch):
    def broken(*args):
        raise FileNotFoundError("No checkpoint at /nowhere/base.pt.")

    monkeypatch.setattr(pipeline, "run_pipeline", broken)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["pipeline"])
    assert exit_info.value.code == "error: No checkpoint at /nowhere/base.pt."


# ----------------------------------------------------------------------------- end to end, tiny

@pytest.mark.slow
def test_the_pipeline_makes_every_artifact_then_reuses_them(tiny_recipes, capsys):
    home = tiny_recipes
    first = pipeline.run_pipeline("quick")
    paths = [home / "tokenizer-shakespeare-260.json", home / "base-char-quick.pt",
             home / "sft-char-quick.pt", home / "preferences-char-quick.json",
             home / "reward-char-quick.pt", home / "ppo-char-quick.pt", home / "dpo-char-quick.pt"]
    assert all(path.is_file() for path in paths)
    assert [path for s in first["stages"].values() for path in s["artifacts"]] == list(
        map(str, paths))
    assert all(s["made"] and s["make_seconds"] > 0 for s in first["stages"].values())
    assert "skipped" not in capsys.readouterr().out
    m = first["stages"]
    assert m["tokenizer"]["metrics"]["vocab_size"] == 260
    assert m["tokenizer"]["metrics"]["round_trip"] is True
    assert m["pretrain"]["metrics"]["steps"] == 4
    assert m["sft"]["metrics"]["n"] == 72  # lesson 04's held-out prompts, one answer each
    assert m["reward"]["metrics"]["n_prompts"] == 72
    assert m["ppo"]["metrics"]["answers"] == m["dpo"]["metrics"]["answers"] == 72
    assert m["ppo"]["metrics"]["sft_gold"] == m["dpo"]["metrics"]["sft_gold"]  # one reference
    for stage in m.values():
        assert all(v is None or isinstance(v, (bool, int, str)) or math.isfinite(v)
                   for v in stage["metrics"].values())

    stamps = [path.stat().st_mtime_ns for path in paths]
    second = pipeline.run_pipeline("quick")
    out = capsys.readouterr().out
    assert [path.stat().st_mtime_ns for path in paths] == stamps  # nothing remade
    assert [line for line in out.splitlines() if line.startswith("skipped: ")] == [
        f"skipped: {path} exists" for path in paths]
    assert not any(s["made"] or s["make_seconds"] for s in second["stages"].values())
    # The same artifacts, measured with the same seeds, give the same numbers.
    for name in STAGES:
        assert second["stages"][name]["metrics"] == first["stages"][name]["metrics"], name

    third = pipeline.run_pipeline("quick", force=["dpo"])
    assert [name for name, s in third["stages"].items() if s["made"]] == ["dpo"]
    assert [path.stat().st_mtime_ns for path in paths[:-1]] == stamps[:-1]


# ----------------------------------------------------------------------------- a GPT-2 base

def test_the_base_is_the_char_model_a_gpt2_or_a_folder(home):
    assert artifacts.base_model_path("quick") == home / "base-char-quick.pt"
    assert artifacts.sft_model_path("full", "gpt2") == home / "sft-gpt2-full.pt"
    (home / "my-gpt2").mkdir()
    assert artifacts.rlhf_policy_path("dpo", "quick", home / "my-gpt2") == (
        home / "dpo-my-gpt2-quick.pt")
    with pytest.raises(ValueError, match=r"^The base model is 'char' \(lesson 02's\), a "
                                         r"published GPT-2 \(gpt2, gpt2-medium, gpt2-large, "
                                         r"gpt2-xl\) or a folder holding a saved GPT2LMHeadModel, "
                                         r"not 'gpt3'\.$"):
        pipeline.run_pipeline("quick", base="gpt3")
    assert list(home.iterdir()) == [home / "my-gpt2"]  # refused before any stage ran


@pytest.fixture
def tiny_gpt2(tiny_recipes, monkeypatch):
    """A GPT-2 of two 32-wide layers with random weights (GPT-2's 50,257-token vocabulary),
    saved as Hugging Face saves the real one, in a world of two topics. Sampling from 50,260
    tokens costs a CPU ~1.4 ms per answer and token, so the world is small, PPO's answers are
    short, and SFT runs long enough for the model to learn to end its turn (a batch of answers
    runs until its last one ends, and the later stages sample from the SFT model)."""
    transformers = pytest.importorskip("transformers")
    folder = tiny_recipes / "tiny-gpt2"
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    monkeypatch.setattr(world, "TOPICS", ("love", "king"))
    monkeypatch.setattr(artifacts, "sft_recipe", lambda profile_name=None: TrainConfig(
        max_steps=30, batch_size=16, lr=1e-2, warmup_steps=2, eval_interval=10, eval_batches=1,
        progress=False))
    tiny_rlhf = artifacts.rlhf_recipe
    monkeypatch.setattr(artifacts, "rlhf_recipe", lambda method, profile_name=None: (
        replace(tiny_rlhf(method), max_new_tokens=8) if method == "ppo" else tiny_rlhf(method)))
    return folder


@pytest.mark.slow
def test_the_pipeline_starts_from_a_saved_gpt2(tiny_gpt2, monkeypatch, capsys):
    home = tiny_gpt2.parent
    summary = pipeline.run_pipeline("quick", base=str(tiny_gpt2))
    assert summary["json"] == str(home / "pipeline-tiny-gpt2-quick.json")
    stages = summary["stages"]
    paths = [home / "tokenizer-gpt2-chat.json"] + [
        home / f"{kind}-tiny-gpt2-quick.{'json' if kind == 'preferences' else 'pt'}"
        for kind in ("base", "sft", "preferences", "reward", "ppo", "dpo")]
    assert [path for s in stages.values() for path in s["artifacts"]] == list(map(str, paths))
    assert all(s["made"] for s in stages.values())
    m = {name: s["metrics"] for name, s in stages.items()}
    assert m["tokenizer"]["vocab_size"] == 50260 and m["tokenizer"]["round_trip"] is True
    assert m["pretrain"]["vocab_size"] == 50260 and m["pretrain"]["block_size"] == 256
    # Random weights: about as surprised as a uniform guess over the vocabulary, per token.
    assert abs(m["pretrain"]["val_loss"] - math.log(50260)) < 0.5
    assert m["sft"]["n"] == 6  # two topics, three held-out phrasings
    assert m["sft"]["sft_ended"] > m["sft"]["base_ended"]
    for stage in m.values():
        assert all(v is None or isinstance(v, (bool, int, str)) or math.isfinite(v)
                   for v in stage.values())

    tok = artifacts.gpt2_tokenizer()
    chat = {"<|user|>": 50257, "<|assistant|>": 50258, "<|end|>": 50259}
    for text, token_id in chat.items():  # a special token is one id after GPT-2's own
        assert tok.encode(text, allowed_special={text}) == [token_id]
        assert tok.decode([token_id]) == text
        assert all(i < 50257 for i in tok.encode(text))  # typed by a user: plain text
    losses = {"sft": "train_loss", "reward": "train_loss", "ppo": "value_loss", "dpo": "loss"}
    for kind, key in losses.items():
        load = load_reward_model if kind == "reward" else load_checkpoint
        saved = load(home / f"{kind}-tiny-gpt2-quick.pt")
        assert saved.tokenizer.special_tokens == tok.special_tokens
        assert saved.model.config.vocab_size == 50260
        assert saved.state["history"] and all(math.isfinite(row[key])
                                              for row in saved.state["history"] if key in row)

    typed = iter(["Speak of love.", "<|end|>"])

    def user(prompt):
        line = next(typed, None)
        if line is None:
            raise EOFError
        return line

    monkeypatch.setattr("builtins.input", user)
    capsys.readouterr()
    cli.main(["chat", str(home / "dpo-tiny-gpt2-quick.pt"), "--max-new-tokens", "8"])
    out = capsys.readouterr().out
    assert "is an assistant (dpo)" in out
    assert out.count("model> ") == 2 and "error" not in out


# ----------------------------------------------------------------------------- the real thing

@pytest.mark.slow
def test_the_real_pipeline_reuses_the_lessons_artifacts_and_meets_the_course_outcomes():
    """In CI the lessons have run first, under the same MINILLM_HOME: every artifact exists, so
    the pipeline only measures. The outcomes are the course's: a reward model that orders at
    least 70% of held-out pairs as the gold reward does, and PPO and DPO policies whose gold
    reward beats the SFT model's by at least 4 standard errors on held-out prompts."""
    name = profile()
    paths = [artifacts.tokenizer_path(artifacts.TOKENIZER_VOCAB[name]),
             artifacts.base_model_path(), artifacts.sft_model_path(),
             artifacts.preference_data_path(), artifacts.reward_model_path(),
             artifacts.rlhf_policy_path("ppo"), artifacts.rlhf_policy_path("dpo")]
    missing = [str(path) for path in paths if not path.is_file()]
    assert not missing, f"run the lessons first (they make these): {missing}"
    summary = pipeline.run_pipeline()
    stages = summary["stages"]
    assert [n for n, s in stages.items() if s["made"]] == []
    assert all(s["make_seconds"] == 0 for s in stages.values())
    m = {n: s["metrics"] for n, s in stages.items()}
    assert m["tokenizer"]["round_trip"] and m["tokenizer"]["chars_per_token"] > 1
    assert m["sft"]["sft_ended"] > m["sft"]["base_ended"]
    assert m["sft"]["sft_on_topic"] > m["sft"]["base_on_topic"]
    assert m["reward"]["gold_accuracy"] >= 0.70, stages["reward"]["headline"]
    for method in ("ppo", "dpo"):
        assert m[method]["prompts"] == 72, stages[method]["headline"]
        assert m[method]["gold_z"] >= 4, stages[method]["headline"]
    assert json.loads(open(summary["json"]).read()) == summary
    with open(summary["figure"], "rb") as f:
        assert f.read(8) == PNG_MAGIC
