"""The GPU run: ``python -m minillm gpucheck --json report.json`` validates, on a GPU, what the
course promises a GPU does, by doing it.

Three parts, each timed, all written to one JSON report:

1. **GPU checks.** Each speed-up the package switches on by itself on CUDA, run and compared
   with the plain path it replaces: bf16 autocast, the fused AdamW kernel, ``torch.compile``,
   the SDPA flash-attention backend, and the ``torchrun`` launches with NCCL (DDP on 2 GPUs or
   more; FSDP on as many as there are, one included). On a machine without CUDA they are
   reported as skipped, never as passed.
2. **The full profile, smoke-tested** (``smoke_full_profile``): every stage's full-size model
   and recipe (``minillm.recipes``, profile "full") built and stepped a few times, so a shape or
   config error shows in seconds. This part also runs on a CPU, in CI.
3. **The lessons**, each executed under nbval in the full profile in one fresh
   ``MINILLM_HOME`` (each loads what the one before it made), with its wall time; then the key
   metrics of the models they trained, read from the checkpoints' histories (tokens/s, MFU,
   validation loss against nanoGPT's 1.4697 for the base model).

Orchestration: it imports the stages and is imported by nothing but ``__main__``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from minillm import artifacts
from minillm.files import atomic_write
from minillm.model import GPT
from minillm.recipes import base_recipe, reward_recipe, scaling_recipe
from minillm.reward import PreferenceData, compare_answers
from minillm.scaling import scaling_model, sweep_widths
from minillm.settings import pick_device
from minillm.train import (
    TrainConfig,
    make_optimizer,
    optimizer_groups,
    random_batch,
    train_step,
)
from minillm.world import preference_prompts

FULL = "full"
NANOGPT_VAL_LOSS = 1.4697  # nanoGPT's Shakespeare model after 5,000 steps, its README
REPO = Path(__file__).resolve().parent.parent
# A long run's short cut for the smoke test: steps and batches shrink, shapes stay.
SMOKE_RUN = dict(max_steps=2, batch_size=2, warmup_steps=1, eval_interval=2, eval_batches=1,
                 progress=False)


# ----------------------------------------------------------------------------- the checks

def timed(name: str, check: Callable[[], dict]) -> dict:
    """Run one check: its result with ``name``, ``status`` ("passed", "failed" or "skipped",
    the last when the check raises ``Skip``), ``seconds``, and the error if it failed."""
    start = time.perf_counter()
    try:
        result = {"status": "passed", **check()}
    except Skip as reason:
        result = {"status": "skipped", "why": str(reason)}
    except Exception as error:  # a failed check is reported, and the others still run
        result = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    return {"name": name, **result, "seconds": round(time.perf_counter() - start, 2)}


class Skip(Exception):
    """A check that does not apply on this machine (no CUDA, one GPU for DDP)."""


def _cuda() -> str:
    if not torch.cuda.is_available():
        raise Skip("no CUDA GPU")
    return "cuda"


def _batch(model: GPT, batch_size: int, device: str, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(model.config.vocab_size, (batch_size * model.config.block_size + 1,),
                        generator=generator)
    return random_batch(ids, batch_size, model.config.block_size, generator, device)


def _base_model(device: str) -> GPT:
    torch.manual_seed(0)
    return GPT(base_recipe(FULL)[0]).to(device)


def _loss(model: GPT, x, y, dtype=torch.float32) -> float:
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        return model(x, y)[1].item()


def check_bf16_autocast() -> dict:
    """The full base model's loss under bf16 autocast is within 0.01 of float32's, and faster."""
    device = _cuda()
    if not torch.cuda.is_bf16_supported():
        raise Skip("this GPU has no bfloat16")
    model = _base_model(device).eval()
    x, y = _batch(model, 64, device)
    exact, fast = _loss(model, x, y), _loss(model, x, y, torch.bfloat16)
    times = {name: _seconds(lambda d=dtype: _loss(model, x, y, d))
             for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))}
    _require(abs(exact - fast) < 0.01, f"bf16 loss {fast:.4f} vs float32 {exact:.4f}")
    return {"loss_float32": exact, "loss_bfloat16": fast,
            "speedup": times["float32"] / times["bfloat16"]}


def check_fused_adamw() -> dict:
    """``make_optimizer`` picks the fused kernel on CUDA, and its step equals the loop's."""
    device = _cuda()
    models = [_base_model(device).eval() for _ in range(2)]  # eval: the same (no) dropout
    config = TrainConfig()
    fused = make_optimizer(models[0], config, device)
    _require(fused.defaults["fused"], "make_optimizer did not pick the fused AdamW on CUDA")
    plain = torch.optim.AdamW(optimizer_groups(models[1], config.weight_decay), lr=config.lr,
                              betas=(config.beta1, config.beta2), foreach=False)
    x, y = _batch(models[0], 8, device)
    for model, optimizer in zip(models, (fused, plain), strict=True):
        model(x, y)[1].backward()
        optimizer.step()
    gap = max((a - b).abs().max().item()
              for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True))
    _require(gap < 1e-5, f"the fused step differs from the plain one by {gap:.1e}")
    return {"largest_difference": gap}


def check_compile() -> dict:
    """``torch.compile`` of the full base model gives eager's loss, and its speed."""
    device = _cuda()
    model = _base_model(device).eval()
    compiled = torch.compile(model)
    x, y = _batch(model, 64, device)
    start = time.perf_counter()
    first = _loss(compiled, x, y, torch.bfloat16)  # compiles
    compile_s = time.perf_counter() - start
    eager = _loss(model, x, y, torch.bfloat16)
    _require(abs(first - eager) < 0.01, f"compiled loss {first:.4f} vs eager {eager:.4f}")
    speedup = (_seconds(lambda: _loss(model, x, y, torch.bfloat16))
               / _seconds(lambda: _loss(compiled, x, y, torch.bfloat16)))
    return {"compile_s": compile_s, "loss_eager": eager, "loss_compiled": first,
            "speedup": speedup}


def check_flash_attention() -> dict:
    """The model's attention runs on SDPA's flash backend (bf16) and agrees with the math one."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    device = _cuda()
    model = _base_model(device).eval()
    x, y = _batch(model, 64, device)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if flash cannot run these inputs
        flash = _loss(model, x, y, torch.bfloat16)
        flash_s = _seconds(lambda: _loss(model, x, y, torch.bfloat16))
    with sdpa_kernel(SDPBackend.MATH):
        math_loss = _loss(model, x, y, torch.bfloat16)
        math_s = _seconds(lambda: _loss(model, x, y, torch.bfloat16))
    _require(abs(flash - math_loss) < 0.01, f"flash {flash:.4f} vs math {math_loss:.4f}")
    return {"loss_flash": flash, "loss_math": math_loss, "speedup": math_s / flash_s}


def check_launch(fsdp: bool) -> Callable[[], dict]:
    """A ``torchrun`` launch of ``pretrain`` with NCCL on every GPU (at most 8): DDP needs two
    or more, FSDP runs on one too. Its last validation loss and median tokens/s and MFU."""
    def check() -> dict:
        _cuda()
        gpus = min(torch.cuda.device_count(), 8)
        if not fsdp and gpus < 2:
            raise Skip("one GPU: DDP needs two or more (FSDP is checked on one)")
        with tempfile.TemporaryDirectory(prefix="minillm-gpucheck-") as folder:
            out = Path(folder) / "model.pt"
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc_per_node", str(gpus), "-m", "minillm", "pretrain",
                       "--profile", FULL, "--steps", "200", "--checkpoint-every", "100",
                       "--out", str(out), *(["--fsdp"] if fsdp else [])]
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
            _require(done.returncode == 0, done.stderr[-2000:])
            history = torch.load(out, weights_only=True, map_location="cpu")["history"]
        return {"gpus": gpus, **run_metrics(history)}
    return check


GPU_CHECKS = {"bf16_autocast": check_bf16_autocast, "fused_adamw": check_fused_adamw,
              "torch_compile": check_compile, "sdpa_flash": check_flash_attention,
              "nccl_ddp": check_launch(fsdp=False), "nccl_fsdp": check_launch(fsdp=True)}


def _seconds(work: Callable[[], object], tries: int = 5) -> float:
    """The fastest of a few timed calls (after one that warms up)."""
    work()
    best = float("inf")
    for _ in range(tries):
        torch.cuda.synchronize()
        start = time.perf_counter()
        work()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


# ----------------------------------------------------------------------------- the smoke test

@contextlib.contextmanager
def temporary_home():
    """``MINILLM_HOME`` pointed at a fresh folder for the duration, then put back (the smoke
    test's tiny models must never be taken for a lesson's artifacts)."""
    before = os.environ.get("MINILLM_HOME")
    with tempfile.TemporaryDirectory(prefix="minillm-smoke-") as folder:
        os.environ["MINILLM_HOME"] = folder
        try:
            yield Path(folder)
        finally:
            if before is None:
                del os.environ["MINILLM_HOME"]
            else:
                os.environ["MINILLM_HOME"] = before


def smoke_full_profile() -> list[dict]:
    """Every stage of the full profile at full size, stepped a few times on this machine.

    The models and recipes are exactly the full profile's (``minillm.recipes``: the 10.7M
    base model at its 256-token context, the SFT, reward, PPO, GRPO and DPO settings, every
    model of the scaling sweep); only the number of steps and the batch sizes shrink to what a
    CPU does in seconds: two steps of batch 2, one RL step of 2 prompts x 2 answers of at most
    8 tokens, 4 answers to 2 prompts of each split for the comparisons. Each stage loads
    the one before it through ``minillm.artifacts``, as the lessons do, in a temporary
    ``MINILLM_HOME``. Returns one
    ``timed`` row per stage, with what it made (parameters, context, rows of history).
    """
    stages = [
        ("base (lesson 02)", lambda: _trained(*artifacts.train_base_model(FULL, **SMOKE_RUN))),
        ("sft (lesson 04)", lambda: _trained(*artifacts.train_sft_model(FULL, **SMOKE_RUN))),
        ("comparisons (lesson 05)", _smoke_comparisons),
        ("reward model (lesson 05)", lambda: _trained(*artifacts.make_reward_model(
            FULL, **{**SMOKE_RUN, "batch_size": 1}))),
        *[(f"{method} (lesson 06)", lambda m=method: _trained(*artifacts.make_rlhf_policy(
            m, FULL, steps=1, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=8,
            progress=False)))
          for method in ("ppo", "grpo")],
        ("dpo (lesson 06)", lambda: _trained(*artifacts.make_rlhf_policy(
            "dpo", FULL, steps=1, batch_size=2, eval_answers=2, progress=False))),
        ("scaling sweep (lesson 03)", _smoke_scaling),
    ]
    rows = []
    with temporary_home():
        for name, make in stages:
            rows.append(timed(name, make))
            if rows[-1]["status"] != "passed":  # the stages after it need what it makes
                break
    return rows


def _trained(model, history: list[dict]) -> dict:
    numbers = [v for row in history for v in row.values() if isinstance(v, float)]
    _require(len(history) > 0 and all(map(_finite, numbers)), "a metric is not finite")
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "block_size": model.config.block_size, "steps": len(history)}


def _smoke_comparisons() -> dict:
    # The full recipe's labeler, on 4 answers to 2 prompts of each split (sampling 32 answers
    # to all 264 prompts with a 10.7M model takes a CPU minutes).
    assistant = artifacts.sft_model(FULL)
    config, rng = replace(reward_recipe(FULL)[0], samples_per_prompt=4), random.Random(0)
    data = PreferenceData(*(compare_answers(assistant.model, assistant.tokenizer, prompts[:2],
                                            config, k, rng, progress=False)
                            for k, prompts in enumerate(preference_prompts())))
    data.save(artifacts.preference_data_path(FULL))
    return {"pairs": len(data.train.pairs) + len(data.held_out.pairs)}


def _smoke_scaling() -> dict:
    config = scaling_recipe(FULL)
    vocab = artifacts.char_tokenizer().vocab_size
    device = pick_device()
    losses = {}
    for budget in config.budgets:
        for width in sweep_widths(budget, config, vocab):
            model = scaling_model(width, config, vocab).to(device)
            optimizer = make_optimizer(model, TrainConfig(), device)
            loss, _ = train_step(model, optimizer, [_batch(model, 2, device)], config.lr,
                                 grad_clip=1.0)
            _require(_finite(loss), f"width {width}: loss {loss}")
            losses[f"{budget:.2g}/{width}"] = loss
    return {"models": len(losses), "widths": sorted({int(k.split("/")[1]) for k in losses})}


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


# ----------------------------------------------------------------------------- the lessons

def lessons(names: list[str] | None = None) -> list[Path]:
    """The course's notebooks in order, or those whose number or name is in ``names``."""
    found = sorted((REPO / "lessons").glob("[0-9][0-9]_*.ipynb"))
    if names is None:
        return found
    chosen = [p for p in found if p.name[:2] in names or p.stem in names]
    unknown = set(names) - {p.name[:2] for p in chosen} - {p.stem for p in chosen}
    if unknown:
        raise ValueError(f"No lesson {', '.join(sorted(unknown))}; the lessons are "
                         f"{', '.join(p.name[:2] for p in found)}.")
    return chosen


def run_lesson(path: Path, home: Path, timeout: float) -> dict:
    """Execute one lesson under nbval in the full profile; its outcome and wall time, and for a
    lesson stopped at ``timeout`` the cells it had finished (pytest's verbose lines)."""
    env = {**os.environ, "MINILLM_PROFILE": FULL, "MINILLM_HOME": str(home),
           "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    try:
        command = [sys.executable, "-m", "pytest", "-v", "-p", "no:randomly",
                   "-c", str(REPO / "pyproject.toml"), str(path)]  # the course's nbval options
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout)
        status, tail = ("passed" if done.returncode == 0 else "failed"), done.stdout[-1500:]
    except subprocess.TimeoutExpired as stopped:
        output = stopped.stdout.decode() if isinstance(stopped.stdout, bytes) else stopped.stdout
        cells = [line.split("::")[-1].split(" PASSED")[0] for line in (output or "").splitlines()
                 if "::Cell" in line and " PASSED" in line]
        status = "timed out"
        tail = (f"stopped after {timeout:.0f} s; the last cell to pass: "
                f"{cells[-1] if cells else 'none'}")
    return {"lesson": path.stem, "status": status, "seconds": round(time.perf_counter() - start, 1),
            **({} if status == "passed" else {"output": tail})}


def run_metrics(history: list[dict]) -> dict:
    """A training history's speed and result: median tokens/s (and MFU where known) of its
    steps, the last and the best validation loss."""
    steps = [r for r in history if r.get("step", 0) > 0 and "tokens_per_s" in r]
    evals = [r["val_loss"] for r in history if "val_loss" in r]
    metrics = {"steps": len(steps)}
    if steps:
        metrics["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in steps)
        if "mfu" in steps[0]:
            metrics["mfu"] = statistics.median(r["mfu"] for r in steps)
    if evals:
        metrics.update(val_loss=evals[-1], best_val_loss=min(evals))
    return metrics


def stage_metrics(home: Path) -> dict:
    """What the lessons trained in ``home``: each checkpoint's ``run_metrics``, and the base
    model's best validation loss against nanoGPT's at the same configuration."""
    metrics = {}
    for path in sorted(home.glob(f"*-{FULL}.pt")):
        state = torch.load(path, weights_only=True, map_location="cpu")
        if isinstance(state.get("history"), list) and state["history"]:
            metrics[path.stem] = run_metrics(state["history"])
    base = metrics.get(f"base-char-{FULL}", {})
    if "best_val_loss" in base:
        base["nanogpt_val_loss"] = NANOGPT_VAL_LOSS
    return metrics


# ----------------------------------------------------------------------------- the report

def environment() -> dict:
    gpu = torch.cuda.is_available()
    return {"torch": torch.__version__, "cuda": torch.version.cuda if gpu else None,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "bf16": gpu and torch.cuda.is_bf16_supported(), "python": sys.version.split()[0]}


def gpu_check(path, lesson_names: list[str] | None = None, smoke: bool = True,
              lesson_timeout: float = 600, progress: Callable[[str], None] = print) -> dict:
    """The whole GPU run (module docstring); writes the report to ``path`` as JSON after each
    part, so a run stopped part-way still leaves what it measured. Returns the report."""
    report = {"environment": environment(), "gpu_checks": [], "smoke_full_profile": [],
              "lessons": [], "stage_metrics": {}}
    started = time.perf_counter()

    def save() -> None:
        report["seconds"] = round(time.perf_counter() - started, 1)
        with atomic_write(path, "w") as f:
            json.dump(report, f, indent=1)

    for name, check in GPU_CHECKS.items():
        report["gpu_checks"].append(timed(name, check))
        progress(_line(report["gpu_checks"][-1]))
        save()
    if smoke:
        report["smoke_full_profile"] = smoke_full_profile()
        for row in report["smoke_full_profile"]:
            progress(_line(row))
        save()
    with tempfile.TemporaryDirectory(prefix="minillm-gpucheck-home-") as home:
        for lesson in lessons(lesson_names):
            report["lessons"].append(run_lesson(lesson, Path(home), lesson_timeout))
            progress(_line({"name": lesson.stem, **report["lessons"][-1]}))
            report["stage_metrics"] = stage_metrics(Path(home))
            save()
    save()
    return report


def _line(row: dict) -> str:
    detail = row.get("why") or row.get("error") or ""
    return f"{row['status']:>9}  {row['name']:<28}{row['seconds']:8.1f} s  {detail}"[:200]
