"""A compute-optimal scaling law by Chinchilla's IsoFLOP method (Hoffmann et al. 2022, approach 2).

At a fixed compute budget C a bigger model sees fewer tokens, so there is a best size. For each
of a few budgets, train models of several widths with exactly that compute, measure each one's
held-out loss, and fit a parabola to loss against log N: its minimum is the budget's best size
N_opt (an "IsoFLOP valley"). Then fit power laws through the minima,

    N_opt = k_N * C^a        D_opt = C / (6 N_opt) = k_D * C^b,   b = 1 - a,

(Chinchilla found a ~ b ~ 0.5: grow the model and its data in equal proportion), and check the
fit: predict the best size and its loss at a larger budget, train there, and compare.

How compute is counted. C = 6 N D, with N the *effective* parameter count
``GPT.flops_per_token() / 6``: the non-embedding parameters (6 FLOPs per token each, forward and
backward) plus the attention products' 12 * L * C * T FLOPs per token, divided by 6. For models
this small the attention term is a large share of the work, so leaving it out would mis-state
every run's compute. Every model takes the same tokens per step (``batch_size * block_size``),
so a model gets ``steps = C / (6 N * tokens per step)`` updates.

Every width trains with one small-model recipe (a warmup, then a cosine decay from ``lr`` to
``min_lr`` over its own steps, via ``minillm.train``), at a fixed depth, and is measured on every
window of the held-out text, so the comparison has no sampling noise from the evaluation.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from minillm.data import char_tokenizer, load_shakespeare
from minillm.model import GPT, GPTConfig
from minillm.train import TrainConfig, train
from minillm.validate import is_int, is_number, require, require_bools, require_positive_ints


@dataclass
class ScalingConfig:
    budgets: tuple[float, ...] = (1e10, 3e10, 1e11)  # FLOPs per run, C: one IsoFLOP curve each
    tokens_per_param: float = 100.0  # a guess of D / N at the optimum, where each sweep centers
    sizes: int = 5  # models per budget, their N spaced evenly in log N ...
    size_range: float = 8.0  # ... from center / sqrt(size_range) to center * sqrt(size_range)
    check_factor: float = 4.0  # the check's budget, as a multiple of the largest budget
    check_sizes: int = 3  # models at the check budget: the predicted best (1), or N/2, N, 2N (3)
    n_layer: int = 2  # every model has this depth; only the width changes
    n_head: int = 2
    block_size: int = 64  # tokens per window
    batch_size: int = 16  # windows per step: tokens per step = batch_size * block_size
    lr: float = 1e-2  # one small-model recipe for every width
    min_lr: float = 1e-3
    warmup_steps: int = 20  # at most a tenth of a run's steps
    seed: int = 0  # seeds the initialization and the data order of every run
    device: str = "auto"
    # CPU threads during the runs (None: leave torch's setting). Tiny models gain nothing from a
    # second thread and lose a lot when the other core is busy (4-15x slower, measured).
    threads: int | None = 1
    progress: bool = True  # a tqdm progress bar over the runs

    def __post_init__(self):
        self.budgets = tuple(self.budgets)
        require(self, "budgets", len(self.budgets) >= 2 and all(
            is_number(c) and c > 0 for c in self.budgets), "two or more positive FLOP counts")
        require(self, "sizes", is_int(self.sizes) and self.sizes >= 3,
                "an integer >= 3 (a parabola needs three points)")
        require(self, "check_sizes", self.check_sizes in (1, 3), "1 or 3")
        for name in ("tokens_per_param", "size_range", "check_factor"):
            require(self, name, is_number(getattr(self, name)) and getattr(self, name) >= 1,
                    "a number >= 1")
        require_positive_ints(self, "n_layer", "n_head", "block_size", "batch_size",
                              "warmup_steps")
        require(self, "lr", is_number(self.lr) and self.lr > 0, "a positive number")
        require(self, "min_lr", is_number(self.min_lr) and 0 <= self.min_lr <= self.lr,
                f"a number from 0 to lr ({self.lr})")
        require(self, "seed", is_int(self.seed), "an integer")
        require(self, "device", isinstance(self.device, str), "a device name such as 'auto'")
        require(self, "threads",
                self.threads is None or (is_int(self.threads) and self.threads >= 1),
                "a positive integer or None")
        require_bools(self, "progress")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size


# ----------------------------------------------------------------------------- one run

def scaling_model(width: int, config: ScalingConfig, vocab_size: int) -> GPT:
    """The model of the sweep with ``n_embd = width`` (initialized from ``config.seed``)."""
    torch.manual_seed(config.seed)
    return _model(width, config, vocab_size)


def _model(width: int, config: ScalingConfig, vocab_size: int) -> GPT:
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=config.block_size,
                         n_layer=config.n_layer, n_head=config.n_head, n_embd=width, bias=False))


def effective_params(model: GPT) -> float:
    """N = flops_per_token / 6: non-embedding parameters plus attention's 2 * L * C * T."""
    return model.flops_per_token() / 6


def steps_for(model: GPT, budget: float, config: ScalingConfig) -> int:
    """Updates that spend ``budget`` FLOPs: C / (6 N * tokens per step), at least 1."""
    return max(1, round(budget / (model.flops_per_token() * config.tokens_per_step)))


@torch.no_grad()
def heldout_loss(model: GPT, val_ids: torch.Tensor, block_size: int, batch: int = 256) -> float:
    """The mean loss over every non-overlapping window of ``val_ids``, in nats per token."""
    device = next(model.parameters()).device
    model.eval()
    n = (len(val_ids) - 1) // block_size
    x = val_ids[:n * block_size].view(n, block_size)
    y = val_ids[1:n * block_size + 1].view(n, block_size)
    total = sum(model(x[i:i + batch].to(device), y[i:i + batch].to(device))[1].item()
                * len(x[i:i + batch]) for i in range(0, n, batch))
    return total / n


def train_at_budget(width: int, budget: float, train_ids: torch.Tensor, val_ids: torch.Tensor,
                    config: ScalingConfig, vocab_size: int) -> dict:
    """Train the model of ``width`` with ``budget`` FLOPs; its row: budget, width, n (effective
    parameters), steps, tokens, loss (held out), cpu_s and wall_s (this process's seconds)."""
    model = scaling_model(width, config, vocab_size)
    steps = steps_for(model, budget, config)
    run = TrainConfig(max_steps=steps, batch_size=config.batch_size,
                      block_size=config.block_size, lr=config.lr, min_lr=config.min_lr,
                      warmup_steps=min(config.warmup_steps, steps // 10), eval_interval=steps,
                      eval_batches=1, seed=config.seed, device=config.device, progress=False)
    wall, cpu = time.perf_counter(), time.process_time()
    train(model, train_ids, val_ids, run)
    loss = heldout_loss(model, val_ids, config.block_size)
    return {"budget": budget, "width": width, "n": effective_params(model), "steps": steps,
            "tokens": steps * config.tokens_per_step, "loss": loss,
            "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}


# ----------------------------------------------------------------------------- the fits

def fit_parabola(n: list[float], losses: list[float]) -> tuple[float, float, float]:
    """The valley of one IsoFLOP curve: least squares L = c0 + c1 x + c2 x^2 with x = ln N, whose
    minimum is at x* = -c1 / (2 c2). Returns (N_opt = e^x*, L(x*), c2); c2 > 0 for a valley, and
    without one (c2 <= 0, or a line so straight that x* lies beyond any float) N_opt and L are
    NaN."""
    c2, c1, c0 = np.polyfit(np.log(n), losses, 2)
    x = -c1 / (2 * c2) if c2 > 0 else math.inf
    if not abs(x) < 700:  # e^700 is near the largest float
        return math.nan, math.nan, c2
    return math.exp(x), c0 + c1 * x + c2 * x * x, c2


def fit_power_law(x: list[float], y: list[float]) -> tuple[float, float]:
    """(k, e) of y = k * x^e: a least-squares line ln y = ln k + e ln x."""
    e, ln_k = np.polyfit(np.log(x), np.log(y), 1)
    return math.exp(ln_k), e


def valleys(runs: list[dict]) -> list[dict]:
    """Each budget's parabola fit: budget, n_opt, loss_opt, curvature, and inside (whether the
    minimum lies between the budget's smallest and largest model, in a valley)."""
    out = []
    for budget in sorted({r["budget"] for r in runs}):
        ns, losses = zip(*[(r["n"], r["loss"]) for r in runs if r["budget"] == budget])
        n_opt, loss_opt, curvature = fit_parabola(ns, losses)
        out.append({"budget": budget, "n_opt": n_opt, "d_opt": budget / (6 * n_opt),
                    "loss_opt": loss_opt, "curvature": curvature,
                    "inside": bool(curvature > 0 and min(ns) < n_opt < max(ns))})
    return out


def fit_frontier(minima: list[dict]) -> dict:
    """Power laws through the budgets' minima: N_opt = k C^a, D_opt = k C^b,
    L_opt = k C^(-gamma) and, along the frontier, L_opt = k N_opt^(-alpha) (Kaplan's sign:
    alpha > 0 when bigger compute-optimal models are better)."""
    c, n, d, loss = ([m[k] for m in minima] for k in ("budget", "n_opt", "d_opt", "loss_opt"))
    (k_n, a), (k_d, b) = fit_power_law(c, n), fit_power_law(c, d)
    (k_l, e_l), (_, e_ln) = fit_power_law(c, loss), fit_power_law(n, loss)
    return {"a": a, "k_n": k_n, "b": b, "k_d": k_d, "gamma": -e_l, "k_loss": k_l,
            "alpha": -e_ln}


def width_for(n_target: float, config: ScalingConfig, vocab_size: int) -> int:
    """The width (a multiple of n_head) whose effective N is nearest ``n_target``, in log N."""
    def n_of(heads):  # N of the width heads * n_head; it grows with the width, so bisect
        with torch.device("meta"):  # shapes only: no memory, no initialization
            return effective_params(_model(heads * config.n_head, config, vocab_size))

    low, high = 1, 2
    while n_of(high) < n_target:
        low, high = high, 2 * high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if n_of(mid) < n_target else (low, mid)
    best = min((low, high), key=lambda h: abs(math.log(n_of(h) / n_target)))
    return best * config.n_head


def sweep_widths(budget: float, config: ScalingConfig, vocab_size: int) -> list[int]:
    """The widths swept at ``budget``: ``sizes`` values of N evenly spaced in log N over
    ``size_range``, centered on N = sqrt(C / (6 * tokens_per_param)), the size whose
    D / N is tokens_per_param (from C = 6 N D)."""
    center = math.sqrt(budget / (6 * config.tokens_per_param))
    half = math.sqrt(config.size_range)
    return sorted({width_for(n, config, vocab_size)
                   for n in np.geomspace(center / half, center * half, config.sizes)})


# ----------------------------------------------------------------------------- the experiment

def char_splits(val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Tiny Shakespeare in characters: the first 90% to train on, the last 10% held out, and the
    vocabulary size (as ``minillm.artifacts.shakespeare_splits(char_tokenizer())``)."""
    tok = char_tokenizer()
    ids = torch.tensor(tok.encode(load_shakespeare()), dtype=torch.long)
    split = int((1 - val_fraction) * len(ids))
    return ids[:split], ids[split:], tok.vocab_size


def sweep(config: ScalingConfig, train_ids, val_ids, vocab_size: int, bar=None) -> list[dict]:
    """Each budget's ``sweep_widths``, each trained with that budget: ``train_at_budget`` rows."""
    runs = []
    for budget in config.budgets:
        for width in sweep_widths(budget, config, vocab_size):
            runs.append(train_at_budget(width, budget, train_ids, val_ids, config, vocab_size))
            _advance(bar, runs[-1])
    return runs


def check(fit: dict, config: ScalingConfig, train_ids, val_ids, vocab_size: int,
          bar=None) -> dict:
    """Train at ``check_factor`` times the largest budget the width the fit calls best (and,
    with ``check_sizes`` = 3, one on each side, N about halved and doubled), and compare.

    Predicted: N_opt = k_N C^a and L_opt = k_L C^(-gamma). Measured: with three models, the
    minimum of their parabola; with one, that model's N and loss.
    """
    budget = config.check_factor * max(config.budgets)
    n_pred, loss_pred = fit["k_n"] * budget ** fit["a"], fit["k_loss"] * budget ** -fit["gamma"]
    targets = [n_pred] if config.check_sizes == 1 else [n_pred / 2, n_pred, n_pred * 2]
    widths = sorted({width_for(n, config, vocab_size) for n in targets})
    runs = []
    for width in widths:
        runs.append(train_at_budget(width, budget, train_ids, val_ids, config, vocab_size))
        _advance(bar, runs[-1])
    if len(runs) >= 3:
        n_opt, loss_opt, _ = fit_parabola([r["n"] for r in runs], [r["loss"] for r in runs])
    else:
        best = min(runs, key=lambda r: r["loss"])
        n_opt, loss_opt = best["n"], best["loss"]
    return {"budget": budget, "predicted_n": n_pred, "predicted_loss": loss_pred,
            "measured_n": n_opt, "measured_loss": loss_opt, "runs": runs}


def run_scaling(config: ScalingConfig | None = None, train_ids=None, val_ids=None,
                vocab_size: int | None = None) -> dict:
    """The whole experiment: the sweep, each budget's valley, the power laws through the minima
    and the check at a larger budget, as plain data (``json.dumps`` writes it as it is). With
    fewer than two curves that have a minimum, ``fit`` and ``check`` are None.

    It runs on ``config.threads`` CPU threads; the caller's thread count and global random state
    are left as they were.

    Without data it trains on the character-level tiny Shakespeare (``char_splits``).
    """
    config = config or ScalingConfig()
    if train_ids is None:
        train_ids, val_ids, vocab_size = char_splits()
    total = sum(len(sweep_widths(c, config, vocab_size)) for c in config.budgets) \
        + config.check_sizes
    wall, cpu = time.perf_counter(), time.process_time()
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    torch.set_num_threads(config.threads or threads)
    try:
        with tqdm(total=total, desc="scaling runs", disable=not config.progress) as bar:
            runs = sweep(config, train_ids, val_ids, vocab_size, bar)
            minima = valleys(runs)
            usable = [m for m in minima if not math.isnan(m["n_opt"])]  # curves with a minimum
            fit = fit_frontier(usable) if len(usable) >= 2 else None
            checked = fit and check(fit, config, train_ids, val_ids, vocab_size, bar)
    finally:
        torch.set_rng_state(state)
        torch.set_num_threads(threads)
    return _plain({"config": asdict(config), "runs": runs, "valleys": minima, "fit": fit,
                   "check": checked, "cpu_s": time.process_time() - cpu,
                   "wall_s": time.perf_counter() - wall})


def summary(result: dict) -> str:
    """The experiment in a few lines: each budget's best size, the exponents, the check."""
    fit, chk = result["fit"], result["check"]
    runs = len(result["runs"]) + (len(chk["runs"]) if chk else 0)
    lines = [f"{'budget C':>10}{'best N':>9}{'tokens D':>11}{'D/N':>6}{'loss':>8}  valley"]
    for v in result["valleys"]:
        ratio = None if v["n_opt"] is None else v["d_opt"] / v["n_opt"]
        lines.append(f"{v['budget']:>10.2g}{_fmt(v['n_opt'], '>9,.0f')}"
                     f"{_fmt(v['d_opt'], '>11,.0f')}{_fmt(ratio, '>6.0f')}"
                     f"{_fmt(v['loss_opt'], '>8.3f')}  "
                     f"{'inside the sweep' if v['inside'] else 'NOT inside the sweep'}")
    if fit is None:
        return "\n".join(lines + ["fewer than two curves have a minimum: no power law to fit "
                                  "(move tokens_per_param or widen size_range)"])
    lines += [f"N_opt ~ C^{fit['a']:.2f}, D_opt ~ C^{fit['b']:.2f} (Chinchilla: about 0.5 and "
              f"0.5); along the frontier L ~ N^{-fit['alpha']:.2f} (falls with N: "
              f"{'yes' if fit['alpha'] > 0 else 'no'})",
              f"check at C = {chk['budget']:.2g}: best N predicted {chk['predicted_n']:,.0f}, "
              f"measured {_fmt(chk['measured_n'], ',.0f')}; loss predicted "
              f"{chk['predicted_loss']:.3f}, measured {_fmt(chk['measured_loss'], '.3f')}",
              f"{runs} runs, {result['cpu_s']:.0f} s of CPU "
              f"time, {result['wall_s']:.0f} s wall time"]
    return "\n".join(lines)


def _advance(bar, run: dict) -> None:
    if bar is not None:
        bar.set_postfix(C=f"{run['budget']:.2g}", width=run["width"], loss=f"{run['loss']:.3f}",
                        refresh=False)
        bar.update()


def _plain(value):
    """Python floats, ints, bools, lists and dicts only: numpy scalars become Python numbers,
    and NaN (a fit with no minimum) becomes None, so the JSON is standard."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)
