"""Batch-1 generation: the C runner, NumPy and PyTorch (KV cache) on lesson 02's base model.

Prints, from one run with one thread each: tokens per second of the three runners (greedy,
within the context window, best of several repeats), the file size and held-out bits per
character of the fp32, fp16 and int8 exports, and the memory-bandwidth bound (tokens/s <=
bandwidth / bytes read per token) measured with a large NumPy copy; then checks that 200
greedy tokens from C and NumPy equal PyTorch's for the base, SFT and PPO models.

    python benchmarks/bench_inference.py            # needs a C compiler (cc) for the C column

The models come from ``MINILLM_HOME`` (made first if missing: the base model takes ~3 minutes
on a 2-core CPU, the SFT and PPO models ~7 more).
"""

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"  # one thread for NumPy's matrix products, set before importing it

import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from minillm import artifacts  # noqa: E402
from minillm import numpy_runner as nr  # noqa: E402
from minillm.export import export, held_out_bits, memory_bandwidth, read_export  # noqa: E402

RUN_C = Path(__file__).resolve().parent.parent / "minillm" / "run.c"
PROMPT = "ROMEO:"
REPEATS = 5


def best_rate(generate, n: int) -> float:
    """Tokens per second of ``generate()`` (which makes n tokens), best of REPEATS runs."""
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        generate()
        best = min(best, time.perf_counter() - start)
    return n / best


def c_rate(binary: Path, file: Path, n: int) -> float:
    """The C runner's own figure (generation only, not loading the file), best of REPEATS."""
    rates = []
    for _ in range(REPEATS):
        out = subprocess.run([str(binary), str(file), "-p", PROMPT, "-n", str(n), "-t", "0"],
                             capture_output=True, text=True, check=True)
        rates.append(float(re.search(r"([\d.]+) tokens/s", out.stderr).group(1)))
    return max(rates)


def greedy_agreement(binary: Path | None, folder: Path, n: int = 200) -> None:
    """200 greedy tokens from C and NumPy against PyTorch, for the base, SFT and PPO models."""
    from minillm.chat import prompt_ids

    print(f"\n{n} greedy tokens, past the context window, against PyTorch:")
    for name, checkpoint in [("base", artifacts.base_model()), ("SFT", artifacts.sft_model()),
                             ("PPO", artifacts.rlhf_policy("ppo"))]:
        model, tok = checkpoint.model.cpu().eval(), checkpoint.tokenizer
        ids = (tok.encode(PROMPT) if name == "base"
               else prompt_ids([{"role": "user", "content": "Speak of love."}], tok))
        path = export(checkpoint, folder / f"{name}.bin")
        # GPT.generate's KV cache follows the window policy that run.c and the NumPy runner use
        want = model.generate(torch.tensor([ids]), n, temperature=0)[0, len(ids):].tolist()
        numpy_same = sum(a == b for a, b in zip(nr.generate(read_export(path), ids, n), want))
        line = f"  {name:5} NumPy {numpy_same}/{n} equal"
        if binary:
            out = subprocess.run([str(binary), str(path), "-i", ",".join(map(str, ids)), "-n",
                                  str(n), "-t", "0", "-I"], capture_output=True, text=True,
                                 check=True)
            c_same = sum(a == b for a, b in zip(map(int, out.stdout.split()), want))
            line += f", C {c_same}/{n} equal"
        print(line)


def main() -> None:
    torch.set_num_threads(1)
    base = artifacts.base_model()
    model, tok = base.model.cpu().eval(), base.tokenizer
    _, val_ids = artifacts.shakespeare_splits(tok)
    ids = tok.encode(PROMPT)
    n = model.config.block_size - len(ids)  # every token within the window: no re-encoding
    folder = Path(tempfile.mkdtemp())
    try:
        files = {dtype: export(base, folder / f"base-{dtype}.bin", dtype)
                 for dtype in ("fp32", "fp16", "int8")}
        compiler = shutil.which("cc") or shutil.which("gcc")
        binary = folder / "run"
        if compiler:
            subprocess.run([compiler, "-O2", "-o", str(binary), str(RUN_C), "-lm"], check=True)
        params = model.num_params()
        print(f"lesson 02's base model: {params:,} parameters, context "
              f"{model.config.block_size}; greedy, batch 1, one thread, {n} tokens from "
              f"{PROMPT!r}, best of {REPEATS}\n")

        prompt = torch.tensor([ids])
        torch_rate = best_rate(lambda: model.generate(prompt, n, temperature=0), n)
        exported = {dtype: read_export(path) for dtype, path in files.items()}
        numpy_rate = best_rate(lambda: nr.generate(exported["fp32"], ids, n), n)
        bandwidth = memory_bandwidth()
        print(f"{'file':6}{'bytes':>11}{'bits/char':>11}{'C tok/s':>10}{'bound tok/s':>13}")
        rows = {}
        for dtype, path in files.items():
            size = path.stat().st_size
            bits = held_out_bits(exported[dtype].to_gpt(), val_ids)
            c = c_rate(binary, path, n) if compiler else float("nan")
            rows[dtype] = (size, bits, c)
            print(f"{dtype:6}{size:>11,}{bits:>11.4f}{c:>10,.0f}{bandwidth / size:>13,.0f}")
        print(f"\nNumPy runner: {numpy_rate:,.0f} tokens/s (it dequantizes fp16 and int8 when "
              f"loading, so every file runs at this speed)")
        print(f"PyTorch (GPT.generate, KV cache): {torch_rate:,.0f} tokens/s")
        if compiler:
            print(f"C runner (fp32) / PyTorch: {rows['fp32'][2] / torch_rate:.1f}x")
        else:
            print("C runner: no C compiler (cc) on this machine, so it was not measured")
        print(f"held-out bits/char, int8 - fp32: {rows['int8'][1] - rows['fp32'][1]:+.5f}; "
              f"fp16 - fp32: {rows['fp16'][1] - rows['fp32'][1]:+.5f}")
        print(f"memory bandwidth (NumPy copy of 256 MiB): {bandwidth / 1e9:.1f} GB/s; the bound "
              f"is that divided by the bytes a token reads (the whole file). This model fits in "
              f"the CPU's caches, so its real limit is arithmetic; Llama-2-70B in fp16 reads "
              f"140 GB a token: {bandwidth / 140e9:.2f} tokens/s here at most.")
        greedy_agreement(binary if compiler else None, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
