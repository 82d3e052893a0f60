"""Train minillm's GPT with nanoGPT's CPU recipe for Shakespeare characters; report speed and loss.

The recipe is the command in nanoGPT's README for a CPU:
    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
      --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
      --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
i.e. a 4-layer, 4-head, 128-wide GPT without biases over a 65-character vocabulary, context 64,
batches of 12 random windows from the first 90% of the corpus, AdamW (lr 1e-3, betas 0.9/0.99,
weight decay 0.1 on matrices only), gradient clipping at 1.0, 100 warmup steps, then cosine decay
to 1e-4 at step 2000. Reference on this kind of 2-core machine: nanoGPT's own train.py reaches
val loss 1.8857 at iteration 2000 in 132-139 s including evaluations (about 60 ms/iteration).

    python benchmarks/bench_model.py                 # the full 2000 iterations (~2 minutes)
    python benchmarks/bench_model.py --iters 20      # a smoke run

Prints training throughput (tokens/s, excluding evaluation), the final validation loss (mean over
--eval-batches random batches) and the wall time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from minillm.data import load_shakespeare
from minillm.model import GPT, GPTConfig
from minillm.tokenizer import CharTokenizer
from minillm.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice; with another busy process, "
                             "1 can beat 2)")
    parser.add_argument("--eval-batches", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    wall_start = time.perf_counter()

    text = load_shakespeare()
    tok = CharTokenizer.train(text)
    data = torch.tensor(tok.encode(text))
    split = int(0.9 * len(data))
    torch.manual_seed(args.seed)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=4, n_head=4,
                          n_embd=128, dropout=0.0, bias=False))
    config = TrainConfig(max_steps=args.iters, batch_size=12, lr=1e-3, min_lr=1e-4,
                         warmup_steps=min(100, args.iters), weight_decay=0.1, beta2=0.99,
                         grad_clip=1.0, eval_interval=args.iters, eval_batches=args.eval_batches,
                         seed=args.seed, device=args.device, progress=False)
    print(f"{model.num_params(non_embedding=True):,} non-embedding parameters, "
          f"{torch.get_num_threads()} threads, {args.iters} iterations of 12x64 tokens")
    history = train(model, data[:split], data[split:], config)

    step_rates = [row["tokens_per_s"] for row in history if "tokens_per_s" in row]
    tokens_per_s = statistics.median(step_rates)
    print(f"training: {tokens_per_s:,.0f} tokens/s (median step), "
          f"{1000 * 12 * 64 / tokens_per_s:.1f} ms/iter, "
          f"{tokens_per_s * model.flops_per_token() / 1e9:.2f} GFLOP/s")
    print(f"val loss: {history[-1]['val_loss']:.4f} (mean of {args.eval_batches} batches; "
          f"nanoGPT: 1.8857 at iteration 2000)")
    print(f"wall time: {time.perf_counter() - wall_start:.1f} s (nanoGPT: 132-139 s)")


if __name__ == "__main__":
    main()
