"""A tiny training run for the tests that need a real separate process (kill/resume, torchrun).

    python tests/train_tiny.py OUT_DIR [--steps N] [--batch-size B] [--accum K] [--dropout P]
                               [--resume] [--fsdp] [--no-bias]

Writes OUT_DIR/model.pt (a checkpoint every 20 steps and at the end) and OUT_DIR/log.jsonl
(with --fsdp, under torchrun, also the sharded OUT_DIR/model.pt.shards/).
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import tiny_model, toy_data  # noqa: E402

from minillm.train import TrainConfig, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--fsdp", action="store_true")
    parser.add_argument("--no-bias", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = TrainConfig(max_steps=args.steps, batch_size=args.batch_size,
                         grad_accum_steps=args.accum, lr=3e-3, min_lr=3e-4, warmup_steps=5,
                         eval_interval=20, eval_batches=4, device="cpu", progress=False,
                         checkpoint_path=args.out / "model.pt", checkpoint_interval=20,
                         log_path=args.out / "log.jsonl", resume=args.resume, fsdp=args.fsdp)
    train(tiny_model(dropout=args.dropout, bias=not args.no_bias), *toy_data(), config)


if __name__ == "__main__":
    main()
