"""The course's stages from the shell: ``python -m minillm <stage> [options]``."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch


def tokenizer_command(args: argparse.Namespace) -> None:
    from minillm.artifacts import shakespeare_tokenizer, tokenizer_path

    tok = shakespeare_tokenizer(args.vocab)
    print(f"{tok} saved at {tokenizer_path(tok.vocab_size)}")


def prepare_command(args: argparse.Namespace) -> None:
    from minillm.shards import SHARD_TOKENS, load_tokenizer, prepare, text_files

    # Check the folder before choosing the tokenizer: the default one may need training first.
    text_files(args.input_dir)
    if args.char:
        from minillm.data import char_tokenizer

        tok = char_tokenizer()
    elif args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
    else:
        from minillm.artifacts import shakespeare_tokenizer

        tok = shakespeare_tokenizer()
    summary = prepare(args.input_dir, args.output_dir, tok,
                      shard_tokens=args.shard_tokens or SHARD_TOKENS, workers=args.workers)
    print(summary)


def engine_run(recipe, args: argparse.Namespace, out: Path, **changes):
    """The recipe's TrainConfig with the command line's changes, checkpointing to ``out`` (its
    history next to it, as JSON lines)."""
    changes = {"max_steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
               "device": args.device, **changes}
    if args.steps is not None:  # a shorter run keeps its warmup to at most a tenth of it
        changes["warmup_steps"] = min(recipe.warmup_steps, args.steps // 10)
    return replace(recipe, checkpoint_path=out, log_path=out.with_suffix(".jsonl"),
                   checkpoint_interval=args.checkpoint_every, resume=args.resume,
                   **{k: v for k, v in changes.items() if v is not None})


def print_last_evaluation(history: list[dict], out: Path, what: str = "val loss") -> None:
    from minillm.hardware import is_main_process

    if is_main_process():
        last = next(r for r in reversed(history) if "val_loss" in r)
        print(f"step {last['step']}: {what} {last['val_loss']:.4f}; checkpoint {out}")


def pretrain_command(args: argparse.Namespace) -> None:
    from minillm import artifacts
    from minillm.checkpoint import BASE
    from minillm.model import GPT
    from minillm.recipes import base_recipe
    from minillm.train import train

    model_config, recipe = base_recipe(args.profile)
    if args.data:
        from minillm.shards import TokenShards

        if not args.val_data:
            raise ValueError("--data needs --val-data: a second shard folder to measure on.")
        train_data, val_data = TokenShards(args.data), TokenShards(args.val_data)
        tok = train_data.tokenizer()
        model_config = replace(model_config, vocab_size=train_data.vocab_size)
    else:
        tok = artifacts.char_tokenizer()
        train_data, val_data = artifacts.shakespeare_splits(tok)
    out = Path(args.out or artifacts.base_model_path(args.profile))
    run = engine_run(recipe, args, out, grad_accum_steps=args.grad_accum, dtype=args.dtype,
                     compile=args.compile, fsdp=args.fsdp)
    torch.manual_seed(run.seed)
    model = GPT(model_config)
    print_last_evaluation(train(model, train_data, val_data, run, tokenizer=tok, stage=BASE),
                          out)


def sft_command(args: argparse.Namespace) -> None:
    from minillm import artifacts
    from minillm.checkpoint import load_checkpoint
    from minillm.evaluate import summarize
    from minillm.policy import answer_prompts
    from minillm.recipes import lora_recipe, sft_recipe
    from minillm.sft import sft
    from minillm.world import make_sft_data

    recipe, lora = sft_recipe(args.profile), None
    if args.lora_rank is not None:
        lora, recipe = lora_recipe(args.profile)
        lora = replace(lora, rank=args.lora_rank,
                       alpha=lora.alpha if args.lora_alpha is None else args.lora_alpha)
    elif args.lora_alpha is not None:
        raise ValueError("--lora-alpha scales LoRA adapters: give --lora-rank too.")
    base = load_checkpoint(args.base) if args.base else artifacts.base_model(args.profile)
    out = Path(args.out or artifacts.sft_model_path(args.profile))
    data = make_sft_data(seed=args.data_seed)
    print(f"{data}: finetuning {args.base or artifacts.base_model_path(args.profile)}"
          + ("" if lora is None else f" with LoRA adapters (rank {lora.rank}, alpha "
                                     f"{lora.alpha:g})"))
    model, history = sft(base, engine_run(recipe, args, out), data, lora=lora)
    print_last_evaluation(history, out)
    if args.eval_samples > 0:
        n = len(data.prompts) * args.eval_samples
        print(f"Answers to {len(data.prompts)} held-out prompts x {args.eval_samples} "
              f"(n={n}):")
        print(f"{'model':<6}{'on topic':>10}{'ended turn':>12}{'mean length':>13}")
        for name, candidate in (("base", base.model), ("sft", model)):
            m = summarize(answer_prompts(candidate, base.tokenizer, data.prompts,
                                         args.eval_samples, progress=False))
            print(f"{name:<6}{m['on_topic']:>10.0%}{m['ended']:>12.0%}"
                  f"{m['mean_length']:>10.0f} ch")


def reward_command(args: argparse.Namespace) -> None:
    from minillm import artifacts
    from minillm.checkpoint import load_checkpoint
    from minillm.evaluate import evaluate_reward_model, reward_model_report
    from minillm.recipes import reward_recipe
    from minillm.reward import make_preference_data, train_reward_model

    sampling, recipe = reward_recipe(args.profile)
    out = Path(args.out or artifacts.reward_model_path(args.profile))
    changes = {"samples_per_prompt": args.samples_per_prompt, "agreement": args.agreement,
               "seed": args.data_seed}
    if args.sft is None and all(v is None for v in changes.values()):
        data = artifacts.preference_data(args.profile)  # the lesson's comparisons, cached
    else:  # other answers or labels: new comparisons, kept next to the checkpoint
        sampling = replace(sampling, **{k: v for k, v in changes.items() if v is not None})
        assistant = load_checkpoint(args.sft) if args.sft else artifacts.sft_model(args.profile)
        data = make_preference_data(assistant.model, assistant.tokenizer, sampling)
        data.save(out.with_suffix(".preferences.json"))
    print(f"{data}: the labels side with the gold reward on "
          f"{data.train.agreement_with_gold():.1%} of the training pairs")
    init = load_checkpoint(args.init) if args.init else artifacts.sft_model(args.profile)
    print(f"Training a reward model from {args.init or artifacts.sft_model_path(args.profile)}")
    model, history = train_reward_model(init, data, engine_run(recipe, args, out))
    print_last_evaluation(history, out, "held-out loss")
    print(reward_model_report(evaluate_reward_model(model, init.tokenizer, data.held_out),
                              data.held_out))


def rlhf_command(args: argparse.Namespace) -> None:
    from minillm import artifacts
    from minillm.checkpoint import load_checkpoint, save_checkpoint
    from minillm.dpo import dpo
    from minillm.evaluate import compare_with_sft, sft_reference
    from minillm.ppo import ppo
    from minillm.recipes import rlhf_recipe

    assistant = load_checkpoint(args.sft) if args.sft else artifacts.sft_model(args.profile)
    reward = artifacts.reward_model(args.profile).model
    config = rlhf_recipe(args.method, args.profile)
    changes = {"steps": args.steps, "lr": args.lr, "device": args.device, "seed": args.seed}
    if args.kl_coef is not None:
        changes["beta" if args.method == "dpo" else "kl_coef"] = args.kl_coef
    out = Path(args.out or artifacts.rlhf_policy_path(args.method, args.profile))
    config = replace(config, log_path=out.with_suffix(".jsonl"),
                     **{k: v for k, v in changes.items() if v is not None})
    print(f"{args.method.upper()} from {args.sft or artifacts.sft_model_path(args.profile)}: "
          f"{config}")
    if args.method == "dpo":
        policy, history = dpo(assistant, artifacts.preference_data(args.profile).train, config)
    else:
        policy, history, _ = ppo(assistant, reward, config)
    save_checkpoint(out, policy, assistant.tokenizer, stage=args.method, history=history)
    print(f"checkpoint {out}; history {config.log_path}")
    if args.eval_samples > 0:
        m = compare_with_sft(policy, sft_reference(assistant, reward, args.eval_samples))
        print(f"Held-out: {m['prompts']} prompts x {args.eval_samples} answers "
              f"(temperature 1; standard errors paired by prompt)")
        print(f"  gold reward   sft {m['sft_gold']:.3f}  {args.method} {m['gold']:.3f}  gain "
              f"{m['gold_gain']:+.3f} ± {m['gold_gain_se']:.3f} ({m['gold_z']:.1f} SE)")
        print(f"  proxy reward  gain {m['proxy_gain']:+.3f} ± {m['proxy_gain_se']:.3f} RM "
              f"standard deviations")
        print(f"  KL to the SFT model {m['kl']:.2f} nats per answer")


def pipeline_command(args: argparse.Namespace) -> None:
    from minillm.pipeline import run_pipeline

    run_pipeline(args.profile, args.force or (), args.base)


def scaling_command(args: argparse.Namespace) -> None:
    import json

    from minillm.files import atomic_write
    from minillm.recipes import scaling_recipe
    from minillm.scaling import run_scaling, summary

    changes = {"budgets": args.budgets, "check_factor": args.check_factor, "seed": args.seed,
               "device": args.device}
    config = replace(scaling_recipe(args.profile),
                     **{k: v for k, v in changes.items() if v is not None})
    result = run_scaling(config)
    print(summary(result))
    if args.json:
        with atomic_write(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        print(f"every run and fit in {args.json}")


def gpucheck_command(args: argparse.Namespace) -> None:
    from minillm.gpucheck import gpu_check

    report = gpu_check(args.json, args.lessons, smoke=not args.no_smoke,
                       lesson_timeout=args.lesson_timeout)
    rows = report["gpu_checks"] + report["smoke_full_profile"] + report["lessons"]
    failed = [row.get("name") or row.get("lesson") for row in rows
              if row["status"] not in ("passed", "skipped")]
    print(f"{len(rows)} checks in {report['seconds']:.0f} s; the report is in {args.json}")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


def tools_command(args: argparse.Namespace) -> None:
    import json

    import matplotlib
    import matplotlib.pyplot as plt

    from minillm.files import atomic_write
    from minillm.pipeline import run_sums
    from minillm.reasoning import plot_formats, plot_votes
    from minillm.settings import home_dir

    matplotlib.use("Agg")
    result = run_sums(args.profile)
    for name, m in result["formats"].items():
        print(f"{name:>6}: " + "  ".join(f"{d} digits {a['accuracy']:.0%} ± {a['se']:.0%} "
                                         f"(n={a['n']})" for d, a in m["by_digits"].items()))
    print("vote:  " + "  ".join(f"k={k} {a['accuracy']:.0%} ± {a['se']:.0%} (n={a['n']})"
                                for k, a in result["votes"].items()))
    g = result["grpo"]
    print(f"GRPO on the checker: {g['before']['accuracy']:.1%} -> {g['after']['accuracy']:.1%} "
          f"(gain {g['gain']:+.1%} ± {g['gain_se']:.1%}, {g['z']:.1f} SE; KL {g['kl']:.2f} nats; "
          f"n={g['after']['n']} answers)")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5), width_ratios=(3, 2))
    plot_formats({n: m["by_digits"] for n, m in result["formats"].items()}, left)
    plot_votes(result["votes"], right)
    figure = Path(args.figure or home_dir() / f"sums-{result['profile']}.png")
    fig.tight_layout()
    fig.savefig(figure, dpi=100)
    print(f"figure: {figure}")
    if args.json:
        with atomic_write(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        print(f"every measurement in {args.json}")


def chat_command(args: argparse.Namespace) -> None:
    from minillm.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(args.checkpoint)
    if checkpoint.tokenizer is None:
        raise ValueError(f"{args.checkpoint} holds no tokenizer, so its text cannot be read.")
    if checkpoint.is_assistant:
        print(f"{args.checkpoint} is an assistant ({checkpoint.stage}): name a topic "
              f"(\"Speak of love.\").")
    else:
        print(f"{args.checkpoint} is a {checkpoint.stage} model: it has never seen a "
              f"conversation, so it continues your text as the start of a document.")
    print("Ctrl-D or Ctrl-C ends the chat.")
    generator = torch.Generator().manual_seed(args.seed)
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if line:
            try:
                print(f"model> {reply(checkpoint, line, args, generator)}")
            except ValueError as err:  # e.g. a character the model's vocabulary lacks
                print(f"error: {err}")


def reply(checkpoint, line: str, args: argparse.Namespace, generator: torch.Generator) -> str:
    """An assistant's answer to ``line``, or a base model's continuation of it."""
    from minillm.chat import respond

    model, tok = checkpoint.model, checkpoint.tokenizer
    if checkpoint.is_assistant:
        # One exchange at a time: the quick model's 128-token context holds no more.
        (text,), (ended,) = respond(model, tok, [line], args.max_new_tokens, args.temperature,
                                    args.top_k, generator=generator)
        return text + ("" if ended else " [no end of turn]")
    ids = torch.tensor([tok.encode(line + "\n")])
    out = model.generate(ids, args.max_new_tokens, args.temperature, args.top_k,
                         generator=generator)
    return f"...{tok.decode(out[0, ids.size(1):].tolist())}"


def export_command(args: argparse.Namespace) -> None:
    from minillm.export import export, read_export

    out = export(args.checkpoint, args.out, args.dtype)
    exported = read_export(out)
    n = sum(w.size for name, w in exported.weights.items())
    print(f"{out}: {exported.size:,} bytes, {n:,} parameters in {args.dtype}; run it with")
    print(f"  cc -O2 -o run {Path(__file__).with_name('run.c')} -lm && ./run {out} -p 'ROMEO:'")


def arena_command(args: argparse.Namespace) -> None:
    import json

    from minillm import artifacts
    from minillm.arena import arena_summary, run_arena
    from minillm.files import atomic_write

    assistant = artifacts.sft_model(args.profile)
    policies = {"base": artifacts.base_model(args.profile).model, "sft": assistant.model,
                **{m: artifacts.rlhf_policy(m, args.profile).model for m in ("ppo", "grpo", "dpo")}}
    result = run_arena(policies, assistant, artifacts.reward_model(args.profile).model,
                       artifacts.preference_data(args.profile).train, votes=args.votes,
                       samples=args.samples, best_of=args.best_of, seed=args.seed)
    print(arena_summary(result))
    if args.json:
        with atomic_write(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        print(f"the leaderboard, the judge's biases and best-of-n in {args.json}")


def attack_command(args: argparse.Namespace) -> None:
    import json

    from minillm.artifacts import run_attack
    from minillm.attacks import summary
    from minillm.files import atomic_write

    result = run_attack(args.attack, args.profile)
    print(summary(args.attack, result))
    if args.json:
        with atomic_write(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        print(f"every rate, with its standard error and sample size, in {args.json}")


# ----------------------------------------------------------------------------- the parser

def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return int(text)


def _shared_options() -> dict[str, argparse.ArgumentParser]:
    """Parent parsers for the options several stages share."""
    profile = argparse.ArgumentParser(add_help=False)
    profile.add_argument("--profile", choices=["quick", "full"], default=None,
                         help="the recipe's sizes (default: quick on a CPU, full on a GPU)")
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, mps")
    run = argparse.ArgumentParser(add_help=False, parents=[profile, device])
    run.add_argument("--out", metavar="PATH",
                     help="the checkpoint (default: the stage's artifact in MINILLM_HOME)")
    run.add_argument("--steps", type=_positive_int, default=None)
    run.add_argument("--lr", type=float, default=None, help="peak learning rate")
    return {"profile": profile, "run": run}


def _engine_options(shared, checkpoint_every: int) -> argparse.ArgumentParser:
    """The options of a stage that runs the training engine (a new parser each time: a parent's
    options are shared with every stage that uses it, defaults included)."""
    engine = argparse.ArgumentParser(add_help=False, parents=[shared["run"]])
    engine.add_argument("--batch-size", type=_positive_int, default=None)
    engine.add_argument("--checkpoint-every", type=int, default=checkpoint_every, metavar="N",
                        help="steps between checkpoints (default %(default)s; 0: only at the "
                             "end)")
    engine.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint if it exists")
    return engine


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m minillm", description=__doc__)
    stages = parser.add_subparsers(dest="stage", required=True)
    shared = _shared_options()
    for add in (_add_tokenizer, _add_prepare, _add_pretrain, _add_sft, _add_reward, _add_rlhf,
                _add_pipeline, _add_chat, _add_export, _add_scaling, _add_gpucheck,
                _add_tools, _add_arena, _add_attack):
        add(stages, shared)
    return parser


def _add_tokenizer(stages, shared) -> None:
    tok = stages.add_parser("tokenizer", help="train (or load) the Shakespeare BPE tokenizer")
    tok.add_argument("--vocab", type=int, default=None,
                     help="vocabulary size (default: 1024 in the quick profile, 4096 in full)")
    tok.set_defaults(run=tokenizer_command)


def _add_prepare(stages, shared) -> None:
    prep = stages.add_parser("prepare", help="tokenize a folder of .txt files into token shards")
    prep.add_argument("input_dir", help="the folder of .txt files (subfolders included)")
    prep.add_argument("output_dir", help="where the shards, index.json and tokenizer.json go")
    which = prep.add_mutually_exclusive_group()
    which.add_argument("--tokenizer", metavar="PATH",
                       help="a tokenizer JSON file (default: the Shakespeare BPE tokenizer)")
    which.add_argument("--char", action="store_true",
                       help="the course's character-level tokenizer (lesson 02)")
    prep.add_argument("--shard-tokens", type=_positive_int, default=None, metavar="N",
                      help="tokens per shard (default: 100 million)")
    prep.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                      help="tokenizing processes (default: one per CPU)")
    prep.set_defaults(run=prepare_command)


def _add_pretrain(stages, shared) -> None:
    pre = stages.add_parser(
        "pretrain", parents=[_engine_options(shared, checkpoint_every=500)],
        help="train the base model (run it under torchrun for several processes)")
    pre.add_argument("--data", metavar="DIR", help="token shards from 'prepare' (default: "
                     "tiny Shakespeare, character-level)")
    pre.add_argument("--val-data", metavar="DIR", help="held-out token shards, with --data")
    pre.add_argument("--grad-accum", type=_positive_int, default=None,
                     help="micro-batches per update")
    pre.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default=None)
    pre.add_argument("--compile", action="store_true", help="torch.compile the model")
    pre.add_argument("--fsdp", action="store_true",
                     help="under torchrun, shard the parameters, gradients and optimizer state "
                          "across the processes (FSDP) instead of copying them to each (DDP)")
    pre.set_defaults(run=pretrain_command)


def _add_sft(stages, shared) -> None:
    fine = stages.add_parser(
        "sft", parents=[_engine_options(shared, checkpoint_every=100)],
        help="finetune a base model into an assistant, then compare them on held-out prompts")
    fine.add_argument("--base", metavar="PATH",
                      help="the base checkpoint (default: the base-model artifact, trained "
                           "first if missing)")
    fine.add_argument("--data-seed", type=int, default=0,
                      help="the seed that makes the SFT examples and holds some out")
    fine.add_argument("--eval-samples", type=int, default=4, metavar="N",
                      help="answers per held-out prompt in the comparison (default 4; 0 skips it)")
    fine.add_argument("--lora-rank", type=_positive_int, default=None, metavar="R",
                      help="train rank-R LoRA adapters on frozen weights instead of every "
                           "weight (the 'lora' recipe; the checkpoint loads as a plain model)")
    fine.add_argument("--lora-alpha", type=float, default=None, metavar="A",
                      help="scale the adapters' update by A / R (default: the recipe's, 8)")
    fine.set_defaults(run=sft_command)


def _add_reward(stages, shared) -> None:
    rm = stages.add_parser(
        "reward", parents=[_engine_options(shared, checkpoint_every=100)],
        help="compare the SFT model's answers with the simulated labeler, train a reward model "
             "on the comparisons and measure it on held-out prompts")
    rm.add_argument("--sft", metavar="PATH",
                    help="the assistant whose answers are compared (default: the SFT artifact; "
                         "with the defaults the artifact's comparisons are reused)")
    rm.add_argument("--init", metavar="PATH",
                    help="the checkpoint the backbone starts from (default: the SFT model)")
    rm.add_argument("--samples-per-prompt", type=_positive_int, default=None, metavar="K",
                    help="answers per prompt, all pairs compared (default 32 in quick)")
    rm.add_argument("--agreement", type=float, default=None, metavar="P",
                    help="the labeler's chance of siding with the gold reward (default 0.8)")
    rm.add_argument("--data-seed", type=int, default=None,
                    help="the seed of the answers and labels (default 0)")
    rm.set_defaults(run=reward_command)


def _add_rlhf(stages, shared) -> None:
    rl = stages.add_parser(
        "rlhf", parents=[shared["run"]],
        help="tune the SFT model with PPO or GRPO against the reward model, or with DPO on the "
             "comparisons, then compare it with the SFT model on held-out prompts")
    rl.add_argument("--method", choices=["ppo", "grpo", "dpo"], default="ppo")
    rl.add_argument("--sft", metavar="PATH",
                    help="the policy to start from and stay near (default: the SFT artifact)")
    rl.add_argument("--kl-coef", type=float, default=None, metavar="BETA",
                    help="PPO's and GRPO's KL coefficient (RM standard deviations per nat) or "
                         "DPO's beta")
    rl.add_argument("--seed", type=int, default=None)
    rl.add_argument("--eval-samples", type=int, default=8, metavar="N",
                    help="answers per held-out prompt in the comparison (default 8; 0 skips it)")
    rl.set_defaults(run=rlhf_command)


def _add_pipeline(stages, shared) -> None:
    from minillm.pipeline import STAGES

    pipe = stages.add_parser(
        "pipeline", parents=[shared["profile"]],
        help="every stage in order (tokenizer, pretrain, sft, reward, ppo, dpo), skipping those "
             "whose artifacts exist, then a table of key metrics, a figure and a JSON summary "
             "in MINILLM_HOME")
    pipe.add_argument("--force", action="append", metavar="STAGE", choices=STAGES,
                      help="redo this stage and those made from it, even if their artifacts "
                           "exist (repeatable)")
    pipe.add_argument("--base", default="char", metavar="BASE",
                      help="what the assistant starts from: char (default: lesson 02's model, "
                           "trained first), gpt2 (or gpt2-medium, -large, -xl: OpenAI's weights, "
                           "downloaded by transformers; for a GPU), or a folder holding a saved "
                           "GPT2LMHeadModel")
    pipe.set_defaults(run=pipeline_command)


def _add_chat(stages, shared) -> None:
    talk = stages.add_parser("chat", help="chat with a checkpoint in the terminal (an assistant "
                                          "answers; a base model continues your text)")
    talk.add_argument("checkpoint", help="a checkpoint file (e.g. from 'sft' or 'rlhf')")
    talk.add_argument("--temperature", type=float, default=0.8)
    talk.add_argument("--top-k", type=_positive_int, default=None)
    talk.add_argument("--max-new-tokens", type=_positive_int, default=100)
    talk.add_argument("--seed", type=int, default=0, help="seeds the sampling")
    talk.set_defaults(run=chat_command)


def _add_export(stages, shared) -> None:
    exp = stages.add_parser("export", help="write a language model as one flat file that "
                                           "minillm/run.c (C) or minillm.numpy_runner runs")
    exp.add_argument("checkpoint", help="a language model's checkpoint (base, SFT, PPO, GRPO, DPO)")
    exp.add_argument("out", help="the file to write, e.g. model.bin")
    exp.add_argument("--dtype", choices=["fp32", "fp16", "int8"], default="fp32",
                     help="how the matrices are stored (default fp32: exact)")
    exp.set_defaults(run=export_command)


def _add_scaling(stages, shared) -> None:
    law = stages.add_parser(
        "scaling", parents=[shared["profile"]],
        help="a compute-optimal scaling law by Chinchilla's IsoFLOP method: models of several "
             "sizes at each compute budget, each budget's best size, N_opt ~ C^a, and a check "
             "at a larger budget")
    law.add_argument("--budgets", type=float, nargs="+", default=None, metavar="FLOPS",
                     help="compute per run, C ~ 6ND (default: the profile's, e.g. 1e10 3e10 "
                          "1e11 in quick)")
    law.add_argument("--check-factor", type=float, default=None, metavar="X",
                     help="the check's budget as a multiple of the largest (default 4)")
    law.add_argument("--seed", type=int, default=None, help="seeds every run (default 0)")
    law.add_argument("--device", default=None, help="auto (default), cpu, cuda, mps")
    law.add_argument("--json", metavar="FILE",
                     help="write every run (budget, width, N, tokens, held-out loss) and the "
                          "fits to this JSON file")
    law.set_defaults(run=scaling_command)


def _add_gpucheck(stages, shared) -> None:
    check = stages.add_parser(
        "gpucheck",
        help="the GPU run: bf16 autocast, fused AdamW, torch.compile, flash attention, NCCL DDP "
             "and FSDP checked on the GPU, the full profile smoke-tested, and every lesson "
             "executed under nbval in the full profile, into a JSON report")
    check.add_argument("--json", metavar="FILE", required=True, help="where the report goes")
    check.add_argument("--lessons", nargs="*", default=None, metavar="NN",
                       help="only these lessons (numbers such as 02 03; none: no lesson)")
    check.add_argument("--no-smoke", action="store_true",
                       help="skip the full profile's smoke test")
    check.add_argument("--lesson-timeout", type=float, default=600, metavar="S",
                       help="seconds each lesson may take (default 600)")
    check.set_defaults(run=gpucheck_command)


def _add_tools(stages, shared) -> None:
    sums = stages.add_parser(
        "tools", parents=[shared["profile"]],
        help="lesson 10: the assistant answers sums directly, with worked steps, or by calling "
             "a calculator; held-out accuracy by digits, a majority vote over k sampled "
             "answers, and GRPO with the checker as the reward")
    sums.add_argument("--json", metavar="FILE", help="write every measurement to this file")
    sums.add_argument("--figure", metavar="PNG",
                      help="where to save the figure (default: in MINILLM_HOME)")
    sums.set_defaults(run=tools_command)


def _add_arena(stages, shared) -> None:
    arena = stages.add_parser(
        "arena", parents=[shared["profile"]],
        help="lesson 07: blind pairwise votes among the base, SFT, PPO, GRPO and DPO models "
             "(making any that is missing), a Bradley-Terry leaderboard with bootstrap intervals "
             "beside the gold reward, the judge's biases, best-of-n against RL")
    arena.add_argument("--votes", type=_positive_int, default=2000, metavar="N",
                       help="labeler votes (default %(default)s)")
    arena.add_argument("--samples", type=_positive_int, default=4, metavar="K",
                       help="answers of each policy per held-out prompt (default %(default)s)")
    arena.add_argument("--best-of", type=_positive_int, default=16, metavar="N",
                       help="SFT answers per prompt for best-of-n, n up to N (default "
                            "%(default)s; at least --samples)")
    arena.add_argument("--seed", type=int, default=0, help="seeds answers, matches and votes")
    arena.add_argument("--json", metavar="FILE",
                       help="write each policy's rating, interval and gold mean, the judge's "
                            "bias figures and best-of-n to this JSON file")
    arena.set_defaults(run=arena_command)


def _add_attack(stages, shared) -> None:
    attack = stages.add_parser(
        "attack", parents=[shared["profile"]],
        help="lesson 09: plant a backdoor through poisoned SFT data, jailbreak a taught refusal, "
             "or inject an instruction through a quoted passage; each attack and its defense "
             "measured on held-out prompts")
    attack.add_argument("attack", choices=["backdoor", "jailbreak", "injection"])
    attack.add_argument("--json", metavar="FILE",
                        help="write every figure (rates with standard errors and sample sizes)")
    attack.set_defaults(run=attack_command)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()

