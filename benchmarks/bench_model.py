"""Train minillm's GPT with nanoGPT's CPU recipe for Shakespeare characters; report speed and loss.

The recipe is the command in nanoGPT's README for a CPU:
    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
      --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
      --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
i.e. a 4-layer, 4-head, 128-wide GPT without biases over a 65-character vocabulary, context 64,
batches of 12 random windows from the first 90% of the corpus, AdamW (lr 1e-3, betas 0.9/0.99,
weight decay 0.1 on matrices only), gradient clipping at 1.0, 100 warmup steps, then cosine decay
to 1e-4 at step 2000. nanoGPT's README reports a validation loss of about 1.88 for it.

    python benchmarks/bench_model.py                 # the full 2000 iterations (a few minutes)
    python benchmarks/bench_model.py --iters 20      # a smoke run

Prints training throughput (tokens/s, excluding evaluation), the final validation loss (mean
over --eval-iters random batches) and the wall time.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from minillm.data import load_shakespeare
from minillm.model import GPT, GPTConfig

BATCH_SIZE, BLOCK_SIZE = 12, 64
LR, MIN_LR, WARMUP = 1e-3, 1e-4, 100


def learning_rate(it: int, total: int) -> float:
    """Linear warmup to LR, then a half cosine that reaches MIN_LR after `total` iterations."""
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    progress = min(1.0, (it - WARMUP) / max(1, total - WARMUP))
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * progress)) * (LR - MIN_LR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice; with another busy process, "
                             "1 can beat 2)")
    parser.add_argument("--eval-iters", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    wall_start = time.perf_counter()

    text = load_shakespeare()
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    data = torch.tensor([stoi[ch] for ch in text], dtype=torch.long)
    split = int(0.9 * len(data))
    # every window of BLOCK_SIZE + 1 characters, as a view: row i is data[i : i + BLOCK_SIZE + 1]
    windows = {"train": data[:split].unfold(0, BLOCK_SIZE + 1, 1),
               "val": data[split:].unfold(0, BLOCK_SIZE + 1, 1)}

    def get_batch(name: str):
        rows = windows[name][torch.randint(len(windows[name]), (BATCH_SIZE,))]
        rows = rows.to(args.device)
        return rows[:, :-1], rows[:, 1:]  # inputs, and the next character at each position

    config = GPTConfig(vocab_size=len(chars), block_size=BLOCK_SIZE, n_layer=4, n_head=4,
                       n_embd=128, dropout=0.0, bias=False)
    model = GPT(config).to(args.device)
    # weight decay on matrices (matmul weights, embeddings) only, not on biases and norm gains
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=LR, betas=(0.9, 0.99))
    print(f"{model.num_params():,} parameters, {torch.get_num_threads()} threads, "
          f"{args.iters} iterations of {BATCH_SIZE}x{BLOCK_SIZE} tokens")

    model.train()
    train_start = time.perf_counter()
    for it in range(args.iters):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(it, args.iters)
        x, y = get_batch("train")
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if it % max(1, args.iters // 10) == 0 or it == args.iters - 1:
            print(f"iter {it:5d}  train loss {loss.item():.4f}")
    train_time = time.perf_counter() - train_start

    model.eval()
    with torch.no_grad():
        val_loss = sum(model(*get_batch("val"))[1].item() for _ in range(args.eval_iters))
    val_loss /= args.eval_iters

    tokens_per_s = args.iters * BATCH_SIZE * BLOCK_SIZE / train_time
    print(f"training: {tokens_per_s:,.0f} tokens/s, {1000 * train_time / args.iters:.1f} ms/iter, "
          f"{tokens_per_s * model.flops_per_token() / 1e9:.2f} GFLOP/s")
    print(f"val loss: {val_loss:.4f} (mean of {args.eval_iters} batches; nanoGPT's README: "
          f"about 1.88 after 2000 iterations)")
    print(f"wall time: {time.perf_counter() - wall_start:.1f} s")


if __name__ == "__main__":
    main()
