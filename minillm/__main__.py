"""The course's stages from the shell: ``python -m minillm <stage> [options]``."""

from __future__ import annotations

import argparse
import sys


def tokenizer_command(args: argparse.Namespace) -> None:
    from minillm.artifacts import shakespeare_tokenizer, tokenizer_path

    tok = shakespeare_tokenizer(args.vocab)
    print(f"{tok} saved at {tokenizer_path(tok.vocab_size)}")


def prepare_command(args: argparse.Namespace) -> None:
    from minillm.shards import SHARD_TOKENS, load_tokenizer, prepare, text_files

    # Check the folder before choosing the tokenizer: the default one may need training first.
    text_files(args.input_dir)
    if args.char:
        from minillm.artifacts import char_tokenizer

        tok = char_tokenizer()
    elif args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
    else:
        from minillm.artifacts import shakespeare_tokenizer

        tok = shakespeare_tokenizer()
    summary = prepare(args.input_dir, args.output_dir, tok,
                      shard_tokens=args.shard_tokens or SHARD_TOKENS, workers=args.workers)
    print(summary)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m minillm", description=__doc__)
    stages = parser.add_subparsers(dest="stage", required=True)
    tok = stages.add_parser("tokenizer", help="train (or load) the Shakespeare BPE tokenizer")
    tok.add_argument("--vocab", type=int, default=None,
                     help="vocabulary size (default: 1024 in the quick profile, 4096 in full)")
    tok.set_defaults(run=tokenizer_command)
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
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
