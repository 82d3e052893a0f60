"""Train and encode tiny Shakespeare with minillm, tiktoken and HuggingFace `tokenizers`.

    python benchmarks/bench_tokenizer.py [--vocab 1024 4096] [--repeats 3]

Every tokenizer sees the same text with GPT-4's split pattern, in this one run, so the ratios
compare like with like on this machine. Timings are the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import time

from tokenizers import Regex, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from minillm.data import load_shakespeare
from minillm.pretokenize import GPT4_PATTERN
from minillm.tokenizer import Tokenizer


def best_time(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def train_hf(text: str, vocab_size: int) -> HFTokenizer:
    tok = HFTokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = BpeTrainer(vocab_size=vocab_size, show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer=trainer)
    return tok


def measure(text: str, vocab: int, repeats: int) -> dict:
    """Seconds to train, MB/s to encode (minillm, tiktoken, HF) and tokens per byte."""
    mb = len(text.encode("utf-8")) / 1e6
    t_ours, tok = best_time(lambda: Tokenizer.train(text, vocab), repeats)
    t_hf, hf = best_time(lambda: train_hf(text, vocab), repeats)
    # A fresh tokenizer each time, so the piece cache starts empty as for a new text.
    e_ours, ids = best_time(lambda: Tokenizer(tok.ranks, tok.pattern).encode(text), repeats)
    enc = tok.to_tiktoken()
    e_tt, tt_ids = best_time(lambda: enc.encode(text), repeats)
    e_hf, _ = best_time(lambda: hf.encode(text).ids, repeats)
    assert ids == tt_ids, "minillm and tiktoken disagree"
    return dict(train=t_ours, train_hf=t_hf, enc=mb / e_ours, enc_tt=mb / e_tt,
                enc_hf=mb / e_hf, tokens_per_byte=len(ids) / (mb * 1e6))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    text = load_shakespeare()
    print(f"tiny Shakespeare: {len(text.encode()) / 1e6:.2f} MB, best of {args.repeats} runs\n")
    header = (f"{'vocab':>6} | {'train minillm':>13} | {'train HF':>8} | {'ratio':>5} | "
              f"{'encode minillm':>14} | {'tiktoken':>8} | {'HF':>8} | tokens/byte")
    print(header)
    print("-" * len(header))
    for vocab in args.vocab:
        m = measure(text, vocab, args.repeats)
        print(f"{vocab:>6} | {m['train']:>11.2f} s | {m['train_hf']:>6.2f} s | "
              f"{m['train'] / m['train_hf']:>5.1f} | {m['enc']:>9.2f} MB/s | "
              f"{m['enc_tt']:>8.2f} | {m['enc_hf']:>8.2f} | {m['tokens_per_byte']:.3f}")
    print("\nencode columns are MB/s; ratio = minillm training time / HF training time")


if __name__ == "__main__":
    main()
