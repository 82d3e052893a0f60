"""Is my loss normal? Reference curves of lesson 02's base run, from real runs with several seeds.

``python -m minillm.reference --seeds 4`` trains the profile's base recipe once per seed (seeds
other than the lesson's own) and writes every run's evaluation losses to
``minillm/reference_data/base-<profile>.json``, which ships with the package. The lesson then
draws the band those runs span and says whether the learner's run stays inside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from minillm.artifacts import train_base_model
from minillm.recipes import base_recipe
from minillm.settings import profile

DATA_DIR = Path(__file__).resolve().parent / "reference_data"
# The band is the runs' range widened by this many standard deviations of the seeds at each
# step: a handful of seeds under-samples the spread a new seed can show.
BAND_SIGMAS = 2.0


def reference_path(profile_name: str | None = None) -> Path:
    return DATA_DIR / f"base-{profile_name or profile()}.json"


def make_reference(profile_name: str, seeds: list[int]) -> dict:
    """Train the base recipe once per seed and collect the evaluation rows."""
    model_config, run = base_recipe(profile_name)
    runs = []
    for seed in seeds:
        start = time.perf_counter()
        _, history = train_base_model(profile_name, seed=seed, checkpoint_path=None,
                                      progress=False)
        evals = [row for row in history if "val_loss" in row]
        runs.append({"seed": seed, "wall_s": round(time.perf_counter() - start, 1),
                     "step": [row["step"] for row in evals],
                     "val_loss": [round(row["val_loss"], 4) for row in evals],
                     "train_loss": [round(row["eval_train_loss"], 4) for row in evals]})
    return {"profile": profile_name, "model_config": vars(model_config),
            "train_config": {k: v for k, v in vars(run).items() if not k.endswith("_path")},
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
                       f"torch {torch.__version__}",
            "runs": runs}


def load_reference(profile_name: str | None = None) -> dict | None:
    """The stored reference for a profile, or None if none was made yet (e.g. on a GPU)."""
    path = reference_path(profile_name)
    return json.loads(path.read_text()) if path.is_file() else None


def band(reference: dict, key: str = "val_loss"):
    """(steps, low, high) of the reference runs' ``key`` ("val_loss" or "train_loss")."""
    steps = torch.tensor(reference["runs"][0]["step"])
    losses = torch.tensor([run[key] for run in reference["runs"]])  # (seeds, steps)
    spread = BAND_SIGMAS * losses.std(dim=0) if len(losses) > 1 else torch.zeros(len(steps))
    return steps.tolist(), (losses.min(0).values - spread).tolist(), \
        (losses.max(0).values + spread).tolist()


def compare(history: list[dict], reference: dict) -> str:
    """One sentence: is the run's validation loss inside the reference band at every step?"""
    steps, low, high = band(reference)
    ours = {row["step"]: row["val_loss"] for row in history if "val_loss" in row}
    shared = [k for k, step in enumerate(steps) if step in ours]
    if not shared:
        return "Your run has no evaluation at the reference's steps, so it cannot be compared."
    above = [steps[k] for k in shared if ours[steps[k]] > high[k]]
    below = [steps[k] for k in shared if ours[steps[k]] < low[k]]
    n = len(reference["runs"])
    if not above and not below:
        return (f"Normal: at all {len(shared)} evaluations your validation loss is inside the "
                f"band of {n} reference runs.")
    parts = []
    if above:
        parts.append(f"above the band (worse) at step(s) {above}")
    if below:
        parts.append(f"below the band (better) at step(s) {below}")
    return (f"Unusual: your validation loss is {' and '.join(parts)} of {n} reference runs; "
            "check the learning rate, batch size and data if you changed nothing on purpose.")


def main() -> None:
    parser = argparse.ArgumentParser(description="Make the reference curves of lesson 02.")
    parser.add_argument("--profile", default=None, help="quick or full (default: this machine's)")
    parser.add_argument("--seeds", type=int, default=4, help="how many runs (seeds 1, 2, ...)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.profile or profile()
    reference = make_reference(name, list(range(1, args.seeds + 1)))
    DATA_DIR.mkdir(exist_ok=True)
    reference_path(name).write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {reference_path(name)}")


if __name__ == "__main__":
    main()
