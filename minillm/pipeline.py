"""The whole course in one command: ``python -m minillm pipeline``.

The stages of the lessons, in order: the BPE tokenizer (lesson 01), the pretrained base model
(02), the finetuned assistant (04), the comparisons and the reward model (05), and the assistant
tuned by PPO and by DPO (06). Each stage function below

1. makes the stage's artifact in ``MINILLM_HOME`` with the lesson's own code and recipe
   (``minillm.artifacts``), unless it is there already: then it says "skipped: <path> exists";
2. measures the artifact on held-out data, and returns its key metrics in a ``StageResult``.

``run_pipeline`` runs them in order and times them, prints a table of each stage's key metric,
and saves a summary figure and the metrics as JSON next to the artifacts. Measuring every
stage, made or reused, means a second run costs only the measurements (under a minute on a
2-core CPU) and always reports the models that are actually on disk.

Redoing a stage (``force``) redoes the stages made from it too: a new base model makes the old
assistant, comparisons, reward model and policies stale.

``--base gpt2`` (``run_pipeline(base="gpt2")``) starts the assistant from OpenAI's GPT-2 instead
of lesson 02's model: the tokenizer stage makes GPT-2's tokenizer with the chat tokens, the
pretrain stage trains nothing but loads GPT-2 and grows it by them
(``artifacts.gpt2_base_model``), and the later stages run their recipes on it as they do on the
Shakespeare model, into artifacts named for the base ("sft-gpt2-full.pt").
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from minillm import artifacts
from minillm.arithmetic import FORMATS
from minillm.artifacts import CHAR
from minillm.data import load_shakespeare
from minillm.evaluate import (
    SFTReference,
    compare_with_sft,
    evaluate_reward_model,
    sft_reference,
    summarize,
)
from minillm.files import atomic_write
from minillm.policy import answer_prompts
from minillm.reasoning import accuracy_by_digits, rl_gain, self_consistency, solve
from minillm.settings import PROFILES, home_dir, profile
from minillm.train import bits_per_char, estimate_loss
from minillm.world import WEIGHTS, make_sft_data

STAGES = ("tokenizer", "pretrain", "sft", "reward", "ppo", "dpo")
# The stages whose artifacts each stage's artifacts are made from.
MADE_FROM = {"tokenizer": (), "pretrain": (), "sft": ("pretrain",),
             "reward": ("pretrain", "sft"),  # answers of the SFT model, backbone from the base
             "ppo": ("sft", "reward"), "dpo": ("sft", "reward")}
SFT_SAMPLES = 4  # answers per held-out prompt when comparing the base and SFT models
RLHF_SAMPLES = 8  # answers per held-out prompt when comparing the tuned policies with SFT
SCALE_ANSWERS = 256  # SFT answers to training prompts that set the RM's scale


@dataclass
class StageResult:
    """What one stage left and how good it is."""

    stage: str
    artifacts: list[Path]  # the files the stage makes
    made: bool  # False: they all existed and were reused
    metrics: dict  # the key numbers, for the JSON summary
    headline: str  # the key metric in words, for the table
    plot: dict = field(default_factory=dict)  # what the summary figure draws
    make_seconds: float = 0.0  # spent making the artifacts (0 when reused)
    seconds: float = 0.0  # making and measuring (set by run_pipeline)


def stages_to_redo(force: Iterable[str]) -> set[str]:
    """The stages in ``force`` and every stage made from them, directly or not."""
    force = list(force)
    unknown = [name for name in force if name not in STAGES]
    if unknown:
        raise ValueError(f"There is no stage {unknown[0]!r}; the stages are "
                         f"{', '.join(STAGES)}.")
    redo = set(force)
    for name in STAGES:  # in order, so that a stage's sources are settled before it
        if any(source in redo for source in MADE_FROM[name]):
            redo.add(name)
    return redo


def make_unless_present(path: Path, make: Callable[[], object], force: bool = False) -> float:
    """Run ``make`` (which writes ``path``) unless ``path`` exists; with ``force``, delete it and
    run ``make`` anyway. Returns the seconds spent making (0.0 when skipped)."""
    if path.is_file() and not force:
        tqdm.write(f"skipped: {path} exists")
        return 0.0
    path.unlink(missing_ok=True)
    start = time.perf_counter()
    make()
    if not path.is_file():  # a broken recipe should not pass for a skipped stage next time
        raise RuntimeError(f"The stage ran but did not write {path}.")
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- the stages

def held_out_text() -> str:
    """The last tenth of tiny Shakespeare, which no base model of the course trains on."""
    text = load_shakespeare()
    return text[int(0.9 * len(text)):]


def tokenizer_stage(profile_name: str, force: bool = False, base=CHAR) -> StageResult:
    """Lesson 01's byte-level BPE tokenizer of tiny Shakespeare, and how much it compresses
    the held-out tenth of the corpus (characters per token; the later, character-level models
    use 1). The models of lessons 02-06 read characters (``artifacts.char_tokenizer``); the BPE
    tokenizer is lesson 01's artifact, and the one ``prepare`` uses for token shards.

    With a GPT-2 ``base``: GPT-2's own BPE with the chat tokens appended
    (``artifacts.gpt2_tokenizer``), the tokenizer that base and every model made from it read."""
    if base == CHAR:
        vocab = artifacts.TOKENIZER_VOCAB[profile_name]
        path, name = artifacts.tokenizer_path(vocab), "BPE"
        make = partial(artifacts.shakespeare_tokenizer, vocab)
    else:
        path, name, make = artifacts.gpt2_tokenizer_path(), "GPT-2 BPE", artifacts.gpt2_tokenizer
    seconds = make_unless_present(path, make, force)
    tok = make()
    held_out = held_out_text()
    ids = tok.encode(held_out)
    metrics = {"vocab_size": tok.vocab_size, "chars_per_token": len(held_out) / len(ids),
               "round_trip": tok.decode(ids) == held_out, "held_out_chars": len(held_out)}
    headline = (f"{tok.vocab_size:,}-token {name}: {metrics['chars_per_token']:.2f} characters "
                f"per token on the held-out tenth"
                + ("" if metrics["round_trip"] else " (decoding does NOT give the text back)"))
    return StageResult("tokenizer", [path], seconds > 0, metrics, headline, make_seconds=seconds)


def pretrain_stage(profile_name: str, force: bool = False, base=CHAR) -> StageResult:
    """Lesson 02's character-level base model, and its loss on the held-out tenth of the corpus
    (nats per character, from the evaluations in the checkpoint's history). With a GPT-2
    ``base``, ``gpt2_base_stage`` instead."""
    if base != CHAR:
        return gpt2_base_stage(profile_name, force, base)
    path = artifacts.base_model_path(profile_name)
    seconds = make_unless_present(path, lambda: artifacts.train_base_model(profile_name), force)
    checkpoint = artifacts.base_model(profile_name)
    evals = [row for row in checkpoint.state["history"] if "val_loss" in row]
    last = evals[-1]
    metrics = {"val_loss": last["val_loss"], "bits_per_char": last["val_loss"] / math.log(2),
               "steps": last["step"],
               "parameters": sum(p.numel() for p in checkpoint.model.parameters())}
    headline = (f"val loss {metrics['val_loss']:.3f} nats/char ({metrics['bits_per_char']:.2f} "
                f"bits), {metrics['steps']:,} steps, {metrics['parameters'] / 1e6:.2f}M params")
    curve = {"step": [row["step"] for row in evals], "val_loss": [row["val_loss"] for row in evals],
             "train_loss": [row.get("eval_train_loss") for row in evals]}
    return StageResult("pretrain", [path], seconds > 0, metrics, headline, {"curve": curve},
                       make_seconds=seconds)


def gpt2_base_stage(profile_name: str, force: bool = False, base="gpt2") -> StageResult:
    """The pretrain stage with a GPT-2 base: nothing is trained; GPT-2 is loaded and grown by
    the chat tokens (``artifacts.gpt2_base_model``), and its loss on the held-out tenth of
    tiny Shakespeare measured, per GPT-2 token and per character (comparable with lesson 02's
    model), on as many batches as lesson 02's evaluations (seeded: the same every run)."""
    path = artifacts.base_model_path(profile_name, base)
    seconds = make_unless_present(path, lambda: artifacts.gpt2_base_model(base, profile_name),
                                  force)
    checkpoint = artifacts.base_model(profile_name, base)
    model, tok = checkpoint.model, checkpoint.tokenizer
    held_out = held_out_text()
    ids = torch.tensor(tok.encode(held_out))
    run = artifacts.base_recipe(profile_name)[1]
    loss = estimate_loss(model, ids, run, model.config.block_size,
                         torch.Generator().manual_seed(run.seed + 1))
    metrics = {"val_loss": loss, "bits_per_char": bits_per_char(loss, len(ids), len(held_out)),
               "parameters": sum(p.numel() for p in model.parameters()),
               "vocab_size": model.config.vocab_size, "block_size": model.config.block_size}
    headline = (f"{checkpoint.state['pretrained']} (not trained here): val loss "
                f"{loss:.3f} nats/token ({metrics['bits_per_char']:.2f} bits/char), "
                f"{metrics['parameters'] / 1e6:.2f}M params")
    return StageResult("pretrain", [path], seconds > 0, metrics, headline, make_seconds=seconds)


def sft_stage(profile_name: str, force: bool = False, base=CHAR) -> StageResult:
    """Lesson 04's assistant, compared with the base model it was finetuned from on lesson 04's
    held-out prompts (``SFT_SAMPLES`` answers each, temperature 0.8): how often an answer names
    the topic and ends its turn."""
    path = artifacts.sft_model_path(profile_name, base)
    seconds = make_unless_present(path, lambda: artifacts.train_sft_model(profile_name, base),
                                  force)
    start = artifacts.base_model(profile_name, base)
    assistant = artifacts.sft_model(profile_name, base)
    prompts = make_sft_data().prompts
    before = summarize(answer_prompts(start.model, start.tokenizer, prompts, SFT_SAMPLES))
    after = summarize(answer_prompts(assistant.model, assistant.tokenizer, prompts, SFT_SAMPLES))
    metrics = {f"{when}_{name}": summary[name] for when, summary in (("base", before),
                                                                      ("sft", after))
               for name in ("on_topic", "on_topic_se", "ended", "ended_se", "mean_length")}
    metrics["n"] = after["n"]
    headline = (f"on topic {before['on_topic']:.0%} -> {after['on_topic']:.0%} ± "
                f"{after['on_topic_se']:.0%}, ended turn {before['ended']:.0%} -> "
                f"{after['ended']:.0%} (n={after['n']} answers)")
    return StageResult("sft", [path], seconds > 0, metrics, headline,
                       {"base": before, "sft": after}, make_seconds=seconds)


def reward_stage(profile_name: str, force: bool = False, base=CHAR) -> StageResult:
    """Lesson 05's comparisons (the SFT model's answers, labeled by the simulated labeler) and
    the reward model trained on them, measured on the held-out prompts' pairs: how often it
    prefers the answer of higher gold reward, and the rank correlation of its scores with gold."""
    data_path = artifacts.preference_data_path(profile_name, base)
    rm_path = artifacts.reward_model_path(profile_name, base)
    seconds = make_unless_present(data_path,
                                  lambda: artifacts.preference_data(profile_name, base), force)
    seconds += make_unless_present(rm_path,
                                   lambda: artifacts.make_reward_model(profile_name, base), force)
    data = artifacts.preference_data(profile_name, base)
    rm = artifacts.reward_model(profile_name, base)
    m = evaluate_reward_model(rm.model, rm.tokenizer, data.held_out)
    metrics = {key: m[key] for key in ("gold_accuracy", "gold_accuracy_se", "label_accuracy",
                                       "label_accuracy_se", "spearman", "n_pairs", "n_prompts",
                                       "n_responses")}
    metrics["labeler_agreement"] = data.held_out.agreement_with_gold()
    headline = (f"gold accuracy {m['gold_accuracy']:.3f} ± {m['gold_accuracy_se']:.3f}, "
                f"Spearman {m['spearman']:.2f} (n={m['n_pairs']:,} held-out pairs)")
    plot = {"scores": m["scores"], "gold": [r["gold"] for r in data.held_out.responses],
            "spearman": m["spearman"]}
    return StageResult("reward", [data_path, rm_path], seconds > 0, metrics, headline, plot,
                       make_seconds=seconds)


def measure_sft(profile_name: str, base=CHAR) -> SFTReference:
    """The SFT model on the held-out prompts, as the tuned policies will be measured."""
    return sft_reference(artifacts.sft_model(profile_name, base),
                         artifacts.reward_model(profile_name, base).model, RLHF_SAMPLES, 0,
                         SCALE_ANSWERS)


def rlhf_stage(method: str, profile_name: str, force: bool = False,
               reference: SFTReference | None = None, base=CHAR) -> StageResult:
    """Lesson 06's PPO or DPO policy, compared with the SFT model it was tuned from
    (``compare_with_sft``). ``reference`` (``measure_sft``) is measured here if not given;
    PPO and DPO share one."""
    path = artifacts.rlhf_policy_path(method, profile_name, base)
    seconds = make_unless_present(
        path, lambda: artifacts.make_rlhf_policy(method, profile_name, base), force)
    if reference is None:
        reference = measure_sft(profile_name, base)
    policy = artifacts.rlhf_policy(method, profile_name, base)
    metrics = compare_with_sft(policy.model, reference)
    headline = (f"gold {metrics['gold_gain']:+.3f} ± {metrics['gold_gain_se']:.3f} "
                f"({metrics['gold_z']:.1f} SE) over SFT, KL {metrics['kl']:.2f} nats "
                f"(n={metrics['answers']} answers)")
    return StageResult(method, [path], seconds > 0, metrics, headline, make_seconds=seconds)


# ----------------------------------------------------------------------------- the whole run

def run_pipeline(profile_name: str | None = None, force: Iterable[str] = (), base=CHAR) -> dict:
    """Run every stage in order (making what is missing, redoing ``force`` and what is made from
    it), print the table of key metrics, and save the figure and the JSON summary in
    ``MINILLM_HOME``. Returns the summary (what the JSON file holds).

    ``base`` is what the assistant starts from: "char", lesson 02's model, trained here; or a
    published GPT-2 ("gpt2", ...; a GPU's work) or a folder where one was saved.
    """
    profile_name = profile_name or profile()
    if profile_name not in PROFILES:
        raise ValueError(f"The profile is one of {', '.join(PROFILES)}, not {profile_name!r}.")
    artifacts.base_tag(base)  # an unknown base fails here, before any stage runs
    redo = stages_to_redo(force)
    results: list[StageResult] = []
    reference = None
    start = time.perf_counter()
    for number, name in enumerate(STAGES, 1):
        tqdm.write(f"[{number}/{len(STAGES)}] {name}" + (" (redo)" if name in redo else ""))
        began = time.perf_counter()
        if name in ("ppo", "dpo"):
            if reference is None:  # after the reward stage: the SFT model and RM are final
                reference = measure_sft(profile_name, base)
            result = rlhf_stage(name, profile_name, name in redo, reference, base=base)
        else:
            stage = {"tokenizer": tokenizer_stage, "pretrain": pretrain_stage,
                     "sft": sft_stage, "reward": reward_stage}[name]
            result = stage(profile_name, name in redo, base=base)
        result.seconds = time.perf_counter() - began
        tqdm.write(f"    {result.headline} [{format_seconds(result.seconds)}]")
        results.append(result)
    total = time.perf_counter() - start
    print(format_table(results, total))
    summary = save_summary(results, profile_name, total, base)
    print(f"figure: {summary['figure']}\nsummary: {summary['json']}")
    return summary


def format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}:{seconds:02d}"


def format_table(results: list[StageResult], total: float) -> str:
    """One line per stage: its name, whether its artifacts were made or reused, its time
    (making and measuring) and its key metric; then the total time."""
    lines = [f"{'stage':<10}{'artifact':<10}{'time':>6}  key metric"]
    for r in results:
        lines.append(f"{r.stage:<10}{'made' if r.made else 'skipped':<10}"
                     f"{format_seconds(r.seconds):>6}  {r.headline}")
    lines.append(f"{'total':<20}{format_seconds(total):>6}")
    return "\n".join(lines)


def summary_figure(results: list[StageResult]):
    """A 2 x 2 figure: the pretraining loss curve, the SFT model's answers against the base
    model's, the RM's scores against the gold reward of held-out answers, and the gold reward
    of the SFT, PPO and DPO policies (with standard errors and the KL to the SFT model)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    by_stage = {r.stage: r for r in results}
    fig = Figure(figsize=(12, 9), layout="constrained")
    (loss_ax, sft_ax), (rm_ax, rl_ax) = fig.subplots(2, 2)

    if "pretrain" in by_stage and "curve" not in by_stage["pretrain"].plot:  # a GPT-2 base
        loss_ax.set_axis_off()
        loss_ax.set_title(f"pretraining: none here; held-out loss "
                          f"{by_stage['pretrain'].metrics['bits_per_char']:.2f} bits/char")
    elif "pretrain" in by_stage:
        curve = by_stage["pretrain"].plot["curve"]
        loss_ax.plot(curve["step"], curve["train_loss"], label="train")
        loss_ax.plot(curve["step"], curve["val_loss"], label="held out")
        loss_ax.set(xlabel="step", ylabel="loss (nats per character)",
                    title=f"pretraining: held-out loss "
                          f"{by_stage['pretrain'].metrics['val_loss']:.3f} nats/char")
        loss_ax.legend()

    if "sft" in by_stage:
        names = [("on_topic", "on topic"), ("ended", "ended turn"),
                 ("sensible_length", "sensible length")]
        x = list(range(len(names)))
        for shift, who in ((-0.2, "base"), (0.2, "sft")):
            summary = by_stage["sft"].plot[who]
            sft_ax.bar([k + shift for k in x], [summary[n] for n, _ in names], width=0.4,
                       yerr=[summary[n + "_se"] for n, _ in names], capsize=3,
                       label="base model" if who == "base" else "SFT model")
        sft_ax.set_xticks(x, [label for _, label in names])
        sft_ax.set(ylim=(0, 1.05), ylabel="share of answers",
                   title=f"SFT: held-out prompts (n={by_stage['sft'].metrics['n']} answers each)")
        sft_ax.legend()

    if "reward" in by_stage:
        plot = by_stage["reward"].plot
        rm_ax.scatter(plot["scores"], plot["gold"], s=4, alpha=0.3)
        rm_ax.set(xlabel="reward model score", ylabel="gold reward",
                  title=f"reward model: held-out answers (Spearman {plot['spearman']:.2f}, "
                        f"n={len(plot['scores'])})")

    tuned = [by_stage[m] for m in ("ppo", "dpo") if m in by_stage]
    if tuned:
        first = tuned[0].metrics
        labels = ["SFT"] + [r.stage.upper() for r in tuned]
        means = [first["sft_gold"]] + [r.metrics["gold"] for r in tuned]
        errors = [first["sft_gold_se"]] + [r.metrics["gold_se"] for r in tuned]
        bars = rl_ax.bar(labels, means, yerr=errors, capsize=4,
                         color=["tab:gray"] + ["tab:green"] * len(tuned))
        notes = ["reference"] + [f"{r.metrics['gold_gain']:+.3f} ± {r.metrics['gold_gain_se']:.3f}"
                                 f"\nKL {r.metrics['kl']:.2f} nats" for r in tuned]
        rl_ax.bar_label(bars, notes, label_type="center", color="white")
        best = sum(w for w in WEIGHTS.values() if w > 0)  # every quality perfect, no repeats
        rl_ax.axhline(best, color="black", linestyle="--", linewidth=1)
        rl_ax.text(-0.4, best, "a perfect answer", va="bottom")
        rl_ax.set(ylim=(0, best * 1.08), ylabel="mean gold reward (± SE)",
                  title=f"RLHF: held-out prompts (n={first['answers']} answers each; gain ± "
                        f"paired SE)")
    return fig


def save_summary(results: list[StageResult], profile_name: str, total: float,
                 base=CHAR) -> dict:
    """Write ``pipeline-<profile>.png`` (``summary_figure``) and ``pipeline-<profile>.json``
    (each stage's artifacts, whether they were made, times and key metrics) to
    ``MINILLM_HOME`` (``pipeline-<base>-<profile>.*`` for a GPT-2 base); return what the JSON
    holds."""
    home = home_dir()
    stem = "pipeline" if base == CHAR else f"pipeline-{artifacts.base_tag(base)}"
    figure_path = home / f"{stem}-{profile_name}.png"
    json_path = figure_path.with_suffix(".json")
    with atomic_write(figure_path) as f:
        summary_figure(results).savefig(f, format="png", dpi=100)
    summary = {
        "profile": profile_name, "base": str(base), "total_seconds": total,
        "figure": str(figure_path), "json": str(json_path),
        "stages": {r.stage: {"made": r.made, "seconds": r.seconds,
                             "make_seconds": r.make_seconds,
                             "artifacts": [str(p) for p in r.artifacts],
                             "headline": r.headline, "metrics": _plain(r.metrics)}
                   for r in results},
    }
    with atomic_write(json_path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    return summary


def _plain(metrics: dict) -> dict:
    """Numbers JSON can hold: NaN and infinities (e.g. a standard error of one cluster) as None."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in metrics.items()}


# ----------------------------------------------------------------------------- lesson 10

def run_sums(profile_name: str | None = None, progress: bool = True) -> dict:
    """Lesson 10's experiment: finetune (or load) the three formats, measure each on the
    held-out sums by number of digits, vote over sampled worked answers, and tune the worked
    model by GRPO on the checker. Returns the measurements as plain data (JSON-ready)."""
    recipe = artifacts.tools_recipe(profile_name)
    vote = recipe["vote"]
    result: dict = {"profile": profile_name or profile(), "formats": {}}
    models = {f: artifacts.tools_model(f, profile_name) for f in FORMATS}
    data = artifacts.arithmetic_data(vote["start"], profile_name)
    for name, checkpoint in models.items():
        rows = solve(checkpoint.model, checkpoint.tokenizer, data.questions, progress=progress)
        result["formats"][name] = {"by_digits": accuracy_by_digits(rows),
                                   "examples": [r["answer"] for r in rows[::100]]}
    start = models[vote["start"]]
    asked = [q for d in recipe["task"]["digits"]
             for q in [q for q in data.questions if q["digits"] == d][:vote["questions"]]]
    sampled = solve(start.model, start.tokenizer, asked, vote["samples"], vote["temperature"],
                    progress=progress)
    result["votes"] = self_consistency(sampled, vote["ks"])
    policy, history = artifacts.make_sums_grpo(profile_name)
    result["grpo"] = {**rl_gain(policy, start.model, start.tokenizer, data.questions),
                      "steps": len(history)}
    return result
