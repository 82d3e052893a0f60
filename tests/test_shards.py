"""Tests of minillm.shards: the shard file format, prepare, TokenShards and the prepare command
(small texts made here; each test takes well under a second, the command's a few)."""

import json
import os
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import torch

from minillm import shards
from minillm.__main__ import main
from minillm.shards import (
    HEADER,
    TokenShards,
    prepare,
    read_shard,
    shard_header,
    write_shard,
)
from minillm.tokenizer import CharTokenizer, Tokenizer
from minillm.train import random_batch

REPO_ROOT = Path(__file__).resolve().parents[1]
EOT = "<|endoftext|>"
WORDS = "to be or not that is the question whether tis nobler in mind suffer slings".split()


def verse(seed: int, lines: int) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choices(WORDS, k=rng.randint(3, 8))).capitalize() + ".\n"
                   for _ in range(lines))


# Written in an order that is not the sorted one, with a subfolder, to test the file order.
TEXTS = {"b.txt": verse(1, 12), "sub/c.txt": verse(2, 9), "a.txt": verse(3, 15)}
SORTED = ["a.txt", "b.txt", "sub/c.txt"]
TOKENIZER = Tokenizer.train("".join(TEXTS.values()), 300, special_tokens=[EOT])


def write_texts(folder: Path, texts: dict) -> Path:
    for name, text in texts.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    return write_texts(tmp_path / "texts", TEXTS)


def expected_ids(tokenizer=TOKENIZER, texts=TEXTS) -> list[int]:
    return tokenizer.encode(EOT.join(texts[name] for name in SORTED), allowed_special={EOT})


def run_prepare(corpus_dir, out, tokenizer=TOKENIZER, **options):
    return prepare(corpus_dir, out, tokenizer, **{"workers": 1, "progress": False, **options})


# ----------------------------------------------------------------------------- prepare

def test_round_trip(corpus_dir, tmp_path):
    summary = run_prepare(corpus_dir, tmp_path / "out", shard_tokens=10_000)
    shards = TokenShards(tmp_path / "out")
    assert shards[:].tolist() == expected_ids()
    assert shards[:].dtype == torch.long and shards.vocab_size == TOKENIZER.vocab_size
    assert (summary.files, summary.tokens, summary.shards) == (3, len(expected_ids()), 1)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [s["file"] for s in index["sources"]] == SORTED
    assert [s["tokens"] for s in index["sources"]] == [
        len(TOKENIZER.encode(TEXTS[name])) for name in SORTED]
    assert shards.tokenizer().to_json() == TOKENIZER.to_json()


def test_without_an_end_of_text_token_files_are_simply_concatenated(corpus_dir, tmp_path):
    chars = CharTokenizer.train("".join(TEXTS.values()))
    run_prepare(corpus_dir, tmp_path / "out", chars)
    assert TokenShards(tmp_path / "out")[:].tolist() == chars.encode(
        "".join(TEXTS[name] for name in SORTED))


def test_end_of_text_written_in_a_file_stays_plain_text(tmp_path):
    texts = {"a.txt": f"one {EOT} two", "b.txt": "three"}
    run_prepare(write_texts(tmp_path / "texts", texts), tmp_path / "out")
    ids = TokenShards(tmp_path / "out")[:].tolist()
    assert ids.count(TOKENIZER.special_tokens[EOT]) == 1  # only the separator
    assert TOKENIZER.decode(ids) == f"one {EOT} two{EOT}three"


def test_shard_size_limit_and_slices_across_boundaries(corpus_dir, tmp_path):
    summary = run_prepare(corpus_dir, tmp_path / "out", shard_tokens=37)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    sizes = [s["tokens"] for s in index["shards"]]
    assert sizes[:-1] == [37] * (len(sizes) - 1) and 1 <= sizes[-1] <= 37
    assert [s["file"] for s in index["shards"]][:2] == ["shard_00000.bin", "shard_00001.bin"]
    assert summary.shards == len(sizes) >= 4

    shards, full = TokenShards(tmp_path / "out"), torch.tensor(expected_ids())
    assert len(shards) == len(full)
    rng = random.Random(0)
    for _ in range(200):
        a, b = sorted(rng.sample(range(len(full) + 1), 2))
        assert torch.equal(shards[a:b], full[a:b])
    for a, b in [(36, 38), (0, 37), (37, 74), (30, 120), (None, 5), (-40, None), (-3, -1),
                 (50, 20), (None, None)]:
        assert torch.equal(shards[a:b], full[a:b])
    with pytest.raises(TypeError):
        shards[::2]


def test_worker_count_does_not_change_a_byte(corpus_dir, tmp_path):
    for workers in (1, 2):
        run_prepare(corpus_dir, tmp_path / f"out{workers}", shard_tokens=50, workers=workers)
    names = sorted(p.name for p in (tmp_path / "out1").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "out2").iterdir())
    assert len(names) > 4  # the shards, index.json and tokenizer.json
    for name in names:
        assert (tmp_path / "out1" / name).read_bytes() == (tmp_path / "out2" / name).read_bytes()


def test_a_new_run_replaces_the_shards_of_the_last(corpus_dir, tmp_path):
    run_prepare(corpus_dir, tmp_path / "out", shard_tokens=20)
    run_prepare(corpus_dir, tmp_path / "out", shard_tokens=10_000)
    assert sorted(p.name for p in (tmp_path / "out").glob("shard_*")) == ["shard_00000.bin"]
    assert TokenShards(tmp_path / "out")[:].tolist() == expected_ids()


@pytest.mark.parametrize("texts, message", [
    ({}, "There are no .txt files in"),
    ({"a.txt": "", "b.md": "not a .txt file"}, "hold no text"),
])
def test_nothing_to_tokenize(tmp_path, texts, message):
    folder = tmp_path / "texts"
    folder.mkdir()
    with pytest.raises(ValueError, match=message):
        run_prepare(write_texts(folder, texts), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="No folder at"):
        run_prepare(tmp_path / "nowhere", tmp_path / "out")


def test_a_file_that_is_not_utf8_is_named_and_nothing_is_written(tmp_path):
    texts = write_texts(tmp_path / "texts", {"a.txt": TEXTS["a.txt"]})
    (texts / "b.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    # a.txt fills several shards before b.txt fails.
    with pytest.raises(ValueError, match=r"b\.txt is not UTF-8 text \(byte 3: invalid"):
        run_prepare(texts, tmp_path / "out", shard_tokens=5)
    assert [p.name for p in tmp_path.iterdir()] == ["texts"]  # no output, no temporary folder

    run_prepare(write_texts(tmp_path / "good", TEXTS), tmp_path / "out", shard_tokens=50)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    with pytest.raises(ValueError, match=r"b\.txt is not UTF-8 text"):
        run_prepare(texts, tmp_path / "out", shard_tokens=5)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good", "out", "texts"]


def test_a_bpe_tokenizer_encodes_through_tiktoken_with_the_same_ids(tmp_path):
    # Text in many scripts, long runs, and characters whose Unicode class changed in 17.0.
    text = ("Ἐν ἀρχῇ ἦν ὁ λόγος. 日本語のテキスト، مرحبا 123456 \u088f's \u0295a "
            + "😀" * 300 + " " * 300 + "x!\n\n")
    texts = {"a.txt": text * 3, "b.txt": f"one {EOT} two"}
    run_prepare(write_texts(tmp_path / "texts", texts), tmp_path / "out")
    # The ids of minillm's own encoder, file by file (the <|endoftext|> in b.txt is plain text).
    expected = (TOKENIZER.encode(texts["a.txt"]) + [TOKENIZER.special_tokens[EOT]]
                + TOKENIZER.encode(texts["b.txt"]))
    assert TokenShards(tmp_path / "out")[:].tolist() == expected
    shards._start_worker(TOKENIZER.to_json())  # what each worker process does first
    assert isinstance(shards._worker_encode.__self__, tiktoken.Encoding)


# ----------------------------------------------------------------------------- the file format

def test_read_shard_maps_the_file_instead_of_reading_it(tmp_path):
    ids = np.arange(4_000_000) % 1000  # 8 MB on disk
    write_shard(tmp_path / "big.bin", ids, vocab_size=1000)
    tracemalloc.start()
    try:
        shard = read_shard(tmp_path / "big.bin")
        allocated = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(shard, np.memmap) and shard.dtype == np.dtype("<u2")
    assert allocated < 100_000  # np.fromfile would allocate the file's 8 MB
    assert shard.offset == HEADER.size and np.array_equal(shard[-5:], ids[-5:])
    with pytest.raises(ValueError):
        shard[0] = 1  # read-only


def test_large_vocabularies_get_32_bit_tokens(tmp_path):
    ids = [0, 65_535, 65_536, 99_999]
    write_shard(tmp_path / "s.bin", ids, vocab_size=100_000)
    assert shard_header(tmp_path / "s.bin").token_bytes == 4
    assert read_shard(tmp_path / "s.bin").tolist() == ids
    with pytest.raises(ValueError, match=r"ids must be in 0\.\.99"):
        write_shard(tmp_path / "bad.bin", [5, 100], vocab_size=100)


def test_truncated_shard(tmp_path):
    path = tmp_path / "s.bin"
    write_shard(path, range(100), vocab_size=100)
    path.write_bytes(path.read_bytes()[:HEADER.size + 150])
    with pytest.raises(ValueError, match=r"s\.bin is truncated: header says 100 tokens, file "
                                         r"holds 75\."):
        read_shard(path)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match="is truncated: it ends inside its 32-byte header"):
        read_shard(path)


@pytest.mark.parametrize("content", [
    b"\x89PNG\r\n\x1a\n" + bytes(100),
    bytes(random.Random(0).randrange(256) for _ in range(1000)),
    b"",
])
def test_foreign_file(tmp_path, content):
    (tmp_path / "x.bin").write_bytes(content)
    with pytest.raises(ValueError, match=r"x\.bin is not a minillm token shard\."):
        read_shard(tmp_path / "x.bin")


def test_other_version(tmp_path):
    path = tmp_path / "s.bin"
    write_shard(path, range(10), vocab_size=10)
    raw = bytearray(path.read_bytes())
    raw[8:12] = (2).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="version 2 token shard; this minillm reads version 1"):
        read_shard(path)


def test_a_shard_that_disagrees_with_the_index(corpus_dir, tmp_path):
    run_prepare(corpus_dir, tmp_path / "out", shard_tokens=50)
    write_shard(tmp_path / "out" / "shard_00001.bin", range(10), TOKENIZER.vocab_size)
    with pytest.raises(ValueError, match=r"shard_00001\.bin does not match index\.json"):
        TokenShards(tmp_path / "out")


def test_a_folder_without_shards(tmp_path):
    with pytest.raises(FileNotFoundError, match="No index.json in .*minillm prepare"):
        TokenShards(tmp_path)


# ----------------------------------------------------------------------------- batches

def test_random_batch_is_train_random_batch_on_the_whole_stream(corpus_dir, tmp_path):
    run_prepare(corpus_dir, tmp_path / "out", shard_tokens=37)
    shards, full = TokenShards(tmp_path / "out"), torch.tensor(expected_ids())
    block, seed = 16, 5
    ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    for _ in range(50):
        x, y = shards.random_batch(8, block, ours)
        x_ref, y_ref = random_batch(full, 8, block, theirs)
        assert x.shape == y.shape == (8, block) and x.dtype == torch.long
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)

    # The same draws again: windows start everywhere, and many straddle a shard boundary.
    again = torch.Generator().manual_seed(seed)
    starts = torch.cat([torch.randint(len(full) - block, (8,), generator=again)
                        for _ in range(50)]).tolist()
    assert min(starts) < 10 and max(starts) > len(full) - block - 10
    assert sum(s // 37 != (s + block) // 37 for s in starts) > 50


def test_random_batch_needs_a_window_and_its_target(tmp_path):
    run_prepare(write_texts(tmp_path / "texts", {"a.txt": "To be."}), tmp_path / "out")
    shards = TokenShards(tmp_path / "out")
    with pytest.raises(ValueError, match="fewer than the"):
        shards.random_batch(2, len(shards), torch.Generator())


# ----------------------------------------------------------------------------- the command

def test_prepare_command_end_to_end(corpus_dir, tmp_path):
    TOKENIZER.save(tmp_path / "tok.json")
    env = {**os.environ, "MINILLM_HOME": str(tmp_path / "home")}
    command = [sys.executable, "-m", "minillm", "prepare", str(corpus_dir), str(tmp_path / "out"),
               "--tokenizer", str(tmp_path / "tok.json"), "--shard-tokens", "64",
               "--workers", "2"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    shards = TokenShards(tmp_path / "out")
    assert shards[:].tolist() == expected_ids()
    n_shards = -(-len(shards) // 64)
    assert done.stdout.startswith(f"3 files, {len(shards):,} tokens in {n_shards} shards at ")
    assert "MB/s" in done.stdout


def test_prepare_command_with_the_character_tokenizer(corpus_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    main(["prepare", str(corpus_dir), str(tmp_path / "out"), "--char", "--workers", "1"])
    shards = TokenShards(tmp_path / "out")
    assert shards.tokenizer().decode(shards[:]) == EOT.join(TEXTS[name] for name in SORTED)
    assert capsys.readouterr().out.startswith("3 files, ")


@pytest.mark.parametrize("make, message", [
    (lambda folder: None, "error: No folder at "),
    (lambda folder: folder.mkdir(), "error: There are no .txt files in "),
])
def test_prepare_command_errors_are_one_sentence(tmp_path, make, message):
    make(tmp_path / "texts")
    with pytest.raises(SystemExit) as stop:
        main(["prepare", str(tmp_path / "texts"), str(tmp_path / "out"), "--tokenizer", "x.json"])
    assert str(stop.value.code).startswith(message)
