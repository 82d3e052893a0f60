"""The course's stages from the shell: ``python -m minillm <stage> [options]``."""

from __future__ import annotations

import argparse
import sys


def tokenizer_command(args: argparse.Namespace) -> None:
    from minillm.artifacts import shakespeare_tokenizer, tokenizer_path

    tok = shakespeare_tokenizer(args.vocab)
    print(f"{tok} saved at {tokenizer_path(tok.vocab_size)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m minillm", description=__doc__)
    stages = parser.add_subparsers(dest="stage", required=True)
    tok = stages.add_parser("tokenizer", help="train (or load) the Shakespeare BPE tokenizer")
    tok.add_argument("--vocab", type=int, default=None,
                     help="vocabulary size (default: 1024 in the quick profile, 4096 in full)")
    tok.set_defaults(run=tokenizer_command)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
