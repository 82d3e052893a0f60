"""The artifact each lesson leaves for the next, loaded from ``MINILLM_HOME`` or made on demand.

Every lesson starts by asking this module for what the previous lesson produced; when it is
missing (a learner starting at lesson 04, or a fresh CI machine), it is made here, with the
same code and sizes the earlier lesson uses, and cached for next time.
"""

from __future__ import annotations

from pathlib import Path

from minillm.data import load_shakespeare
from minillm.settings import home_dir, profile
from minillm.tokenizer import Tokenizer

# Reserved from the start so that lesson 04's chat template needs no new embeddings' ids.
SPECIAL_TOKENS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"]
TOKENIZER_VOCAB = {"quick": 1024, "full": 4096}


def tokenizer_path(vocab_size: int) -> Path:
    return home_dir() / f"tokenizer-shakespeare-{vocab_size}.json"


def shakespeare_tokenizer(vocab_size: int | None = None) -> Tokenizer:
    """Lesson 01's BPE tokenizer of tiny Shakespeare (GPT-4 split pattern, chat tokens reserved)."""
    vocab_size = vocab_size or TOKENIZER_VOCAB[profile()]
    path = tokenizer_path(vocab_size)
    if path.is_file():
        return Tokenizer.load(path)
    tok = Tokenizer.train(load_shakespeare(), vocab_size, special_tokens=SPECIAL_TOKENS,
                          progress=True)
    tok.save(path)
    return tok
