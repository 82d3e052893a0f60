"""Token shards on disk: a corpus tokenized once, then read without loading it into memory.

``prepare`` tokenizes a folder of ``.txt`` files in parallel processes and streams the ids into
binary shards of at most ``shard_tokens`` tokens; ``TokenShards`` maps those shards into memory
with ``numpy.memmap``, so the operating system pages in only the windows a batch reads, and a
corpus larger than memory can be trained on.

A shard is a 32-byte header followed by the token ids as a raw little-endian array:

    offset  size  field
    0       8     magic, b"MINILLMT"
    8       4     format version (1)
    12      4     bytes per token: 2 (uint16, when vocab_size <= 65536) or 4 (uint32)
    16      8     number of tokens
    24      8     vocab_size of the tokenizer that made the ids

All integers are little-endian and unsigned. Next to the shards, ``prepare`` writes
``tokenizer.json`` and ``index.json`` (the shards and source files with their token counts).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from minillm.files import atomic_write
from minillm.tokenizer import Tokenizer, from_json

MAGIC = b"MINILLMT"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ")  # magic, version, bytes per token, tokens, vocab_size
TOKEN_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
INDEX_FORMAT = "minillm-token-shards/1"
END_OF_TEXT = "<|endoftext|>"
# 100M tokens (200 MB as uint16), the shard size of nanoGPT's and llm.c's FineWeb scripts:
# few enough files to list at a glance, small enough to write from one buffer in memory.
SHARD_TOKENS = 100_000_000


# ----------------------------------------------------------------------------- one shard file

@dataclass(frozen=True)
class ShardHeader:
    version: int
    token_bytes: int
    tokens: int
    vocab_size: int


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest dtype that holds every id: uint16 up to 65,536 tokens (GPT-2's 50,257
    fit), uint32 beyond (cl100k's 100,277 do not fit in 16 bits)."""
    return TOKEN_DTYPES[2] if vocab_size <= 2**16 else TOKEN_DTYPES[4]


def write_shard(path, ids, vocab_size: int) -> None:
    """Write ``ids`` (any 1-D sequence of ids in 0..vocab_size-1) as one shard, atomically:
    the file appears complete or not at all."""
    path = Path(path)
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"A shard holds a 1-D sequence of ids, not an array of shape {ids.shape}.")
    if len(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"Token ids must be in 0..{vocab_size - 1}; these span "
                         f"{ids.min()}..{ids.max()}.")
    dtype = token_dtype(vocab_size)
    header = HEADER.pack(MAGIC, VERSION, dtype.itemsize, len(ids), vocab_size)
    with atomic_write(path) as f:
        f.write(header)
        ids.astype(dtype, copy=False).tofile(f)


def shard_header(path) -> ShardHeader:
    """Read and check a shard's header; raise ValueError if the file is not a complete shard."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(HEADER.size)
    except FileNotFoundError:
        raise FileNotFoundError(f"No token shard at {path}.") from None
    if not raw.startswith(MAGIC):
        raise ValueError(f"{path} is not a minillm token shard.")
    if len(raw) < HEADER.size:
        raise ValueError(f"{path} is truncated: it ends inside its {HEADER.size}-byte header.")
    header = ShardHeader(*HEADER.unpack(raw)[1:])
    if header.version != VERSION:
        raise ValueError(f"{path} is a version {header.version} token shard; this minillm reads "
                         f"version {VERSION}.")
    if header.token_bytes not in TOKEN_DTYPES:
        raise ValueError(f"{path} is corrupted: its header gives {header.token_bytes} bytes per "
                         f"token (2 or 4 expected).")
    size = path.stat().st_size
    if size != HEADER.size + header.tokens * header.token_bytes:
        held = (size - HEADER.size) / header.token_bytes
        raise ValueError(f"{path} is truncated: header says {header.tokens} tokens, file holds "
                         f"{held:g}.")
    return header


def read_shard(path) -> np.memmap:
    """A shard's ids as a read-only ``numpy.memmap``: nothing is read until it is indexed."""
    header = shard_header(path)
    return np.memmap(path, dtype=TOKEN_DTYPES[header.token_bytes], mode="r",
                     offset=HEADER.size, shape=(header.tokens,))


# ----------------------------------------------------------------------------- preparing a folder

@dataclass
class PrepareSummary:
    """What ``prepare`` did; ``str()`` gives the one-line report the command prints."""

    files: int
    tokens: int
    shards: int
    text_bytes: int  # of the input files, for the throughput
    seconds: float
    output_dir: Path

    def __str__(self) -> str:
        mb_per_s = self.text_bytes / 1e6 / max(self.seconds, 1e-9)
        return (f"{_count(self.files, 'file')}, {_count(self.tokens, 'token')} in "
                f"{_count(self.shards, 'shard')} at {self.output_dir} "
                f"({self.seconds:.1f} s, {mb_per_s:.2f} MB/s)")


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def text_files(input_dir) -> list[Path]:
    """The ``.txt`` files under ``input_dir`` (subfolders included), in a fixed order: sorted by
    their path relative to the folder, so the order is the same on every machine."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"No folder at {input_dir}.")
    files = sorted((p for p in input_dir.rglob("*.txt") if p.is_file()),
                   key=lambda p: p.relative_to(input_dir).as_posix())
    if not files:
        raise ValueError(f"There are no .txt files in {input_dir}.")
    return files


def prepare(input_dir, output_dir, tokenizer, shard_tokens: int = SHARD_TOKENS,
            workers: int | None = None, progress: bool = True) -> PrepareSummary:
    """Tokenize every ``.txt`` file under ``input_dir`` into shards in ``output_dir``.

    The files are read in ``text_files`` order and each is encoded on its own (special-token
    text in them stays plain text); ``<|endoftext|>``, if the tokenizer has it, separates one
    file from the next. The stream is cut into shards of ``shard_tokens`` tokens (the last may
    be shorter), named ``shard_00000.bin``, ``shard_00001.bin``, … ``workers`` processes
    (default: one per CPU) encode files in parallel; the output is byte-identical for any
    number of workers. Each file must fit in memory, the corpus need not. Nothing is written to
    ``output_dir`` until every file is tokenized: a run that fails (a file that is not UTF-8,
    Ctrl-C) leaves it as it was, or absent.
    """
    start = time.perf_counter()
    if shard_tokens < 1 or (workers is not None and workers < 1):
        raise ValueError(f"shard_tokens and workers must be positive, not {shard_tokens} and "
                         f"{workers}.")
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    files = text_files(input_dir)
    # The shards are made in a temporary folder next to the output (a move across file systems
    # would copy them) and moved in at the end.
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        shards, sources = _tokenize(files, input_dir, work, tokenizer, shard_tokens, workers,
                                    progress)
        output_dir.mkdir(exist_ok=True)
        _forget_earlier_run(output_dir)
        for name in ["tokenizer.json", *(shard["file"] for shard in shards)]:
            os.replace(work / name, output_dir / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _write_index(output_dir, tokenizer.vocab_size, shards, sources)
    return PrepareSummary(files=len(files), tokens=sum(shard["tokens"] for shard in shards),
                          shards=len(shards), text_bytes=sum(p.stat().st_size for p in files),
                          seconds=time.perf_counter() - start, output_dir=output_dir)


def _tokenize(files: list[Path], input_dir: Path, folder: Path, tokenizer, shard_tokens: int,
              workers: int | None, progress: bool) -> tuple[list[dict], list[dict]]:
    """Write ``tokenizer.json`` and the shards of ``files`` into ``folder``; return the shards
    and the source files, as index.json lists them."""
    tokenizer.save(folder / "tokenizer.json")
    writer = _ShardWriter(folder, shard_tokens, tokenizer.vocab_size)
    separator = np.array([tokenizer.special_tokens[END_OF_TEXT]]
                         if END_OF_TEXT in tokenizer.special_tokens else [],
                         dtype=token_dtype(tokenizer.vocab_size))
    sources = []
    workers = min(workers or os.cpu_count() or 1, len(files))
    with ProcessPoolExecutor(workers, initializer=_start_worker,
                             initargs=(tokenizer.to_json(),)) as pool, \
            tqdm(total=len(files), desc="tokenizing", unit="file", disable=not progress) as bar:
        for path, ids in zip(files, _in_order(pool, _encode_file, files, ahead=2 * workers)):
            if sources:
                writer.add(separator)
            writer.add(ids)
            sources.append({"file": path.relative_to(input_dir).as_posix(), "tokens": len(ids)})
            bar.update()
    writer.close()
    if writer.tokens == 0:
        raise ValueError(f"The .txt files in {input_dir} hold no text.")
    return writer.shards, sources


class _ShardWriter:
    """Collects ids and writes a shard each time ``shard_tokens`` of them have come in."""

    def __init__(self, folder: Path, shard_tokens: int, vocab_size: int):
        self.folder, self.shard_tokens, self.vocab_size = folder, shard_tokens, vocab_size
        self.shards: list[dict] = []  # {"file", "tokens"} of each shard written
        self.tokens = 0
        self._chunks: list[np.ndarray] = []
        self._buffered = 0

    def add(self, ids: np.ndarray) -> None:
        while len(ids):
            room = self.shard_tokens - self._buffered
            chunk, ids = ids[:room], ids[room:]
            self._chunks.append(chunk)
            self._buffered += len(chunk)
            if self._buffered == self.shard_tokens:
                self._flush()

    def close(self) -> None:
        if self._buffered:
            self._flush()

    def _flush(self) -> None:
        name = f"shard_{len(self.shards):05d}.bin"
        write_shard(self.folder / name, np.concatenate(self._chunks), self.vocab_size)
        self.shards.append({"file": name, "tokens": self._buffered})
        self.tokens += self._buffered
        self._chunks, self._buffered = [], 0


def _forget_earlier_run(folder: Path) -> None:
    # A new run replaces an earlier one in the same folder. Its index goes first, so a run that
    # stops half-way leaves no index that points at a mix of old and new shards.
    index = folder / "index.json"
    if not index.is_file():
        return
    try:
        old_shards = [Path(shard["file"]).name
                      for shard in json.loads(index.read_text(encoding="utf-8"))["shards"]]
    except (ValueError, KeyError, TypeError):
        old_shards = []  # not an index we wrote: replace it, and delete nothing else
    index.unlink()
    for name in old_shards:
        (folder / name).unlink(missing_ok=True)


def _write_index(folder: Path, vocab_size: int, shards: list[dict], sources: list[dict]) -> None:
    index = {"format": INDEX_FORMAT, "vocab_size": vocab_size,
             "tokens": sum(s["tokens"] for s in shards), "tokenizer": "tokenizer.json",
             "shards": shards, "sources": sources}
    with atomic_write(folder / "index.json", "w", encoding="utf-8") as f:
        f.write(json.dumps(index, indent=1, ensure_ascii=False) + "\n")


def _in_order(pool: ProcessPoolExecutor, fn, items: list, ahead: int) -> Iterator:
    """``pool.map(fn, items)`` with at most ``ahead`` tasks in flight. ``map`` submits every
    task at once, and the results of files finished early wait in memory for the ones before
    them: on a large corpus that could be most of it."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# Each worker process rebuilds the tokenizer once, from its JSON, rather than receiving it with
# every file: it crosses the process boundary once. A BPE tokenizer encodes through its
# tiktoken twin, which gives the very same ids (see minillm.tokenizer), faster.
_worker_tokenizer = None
_worker_encode = None


def _start_worker(tokenizer_json: str) -> None:
    global _worker_tokenizer, _worker_encode
    _worker_tokenizer = from_json(tokenizer_json)
    encoder = (_worker_tokenizer.to_tiktoken() if isinstance(_worker_tokenizer, Tokenizer)
               else _worker_tokenizer)
    _worker_encode = encoder.encode_ordinary


def _encode_file(path: Path) -> np.ndarray:
    # A numpy array crosses the process boundary as one block of bytes, a list as many objects.
    try:
        text = path.read_text(encoding="utf-8")
        ids = _worker_encode(text)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}).") from None
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return np.array(ids, dtype=token_dtype(_worker_tokenizer.vocab_size))


# ----------------------------------------------------------------------------- reading a folder

def load_tokenizer(path):
    """A tokenizer (BPE or character-level) from a file written by its ``save``."""
    path = Path(path)
    try:
        return from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"No tokenizer file at {path}.") from None
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


class TokenShards:
    """The shards of a folder made by ``prepare``, read as one stream of ``len(self)`` tokens.

    ``shards[a:b]`` is a LongTensor of tokens a..b-1, even where they span shards;
    ``random_batch`` draws training windows like ``minillm.train.random_batch``. Only the
    tokens asked for are read from disk.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        index_path = self.folder / "index.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"No index.json in {self.folder}: make the shards with "
                                    f"`python -m minillm prepare`.")
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except ValueError:
            index = None
        if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
            raise ValueError(f"{index_path} is not a minillm shard index.")
        self.vocab_size: int = index["vocab_size"]
        self._shards = [self._open(entry) for entry in index["shards"]]
        # Where each shard starts in the stream, and the end of the last one.
        self._offsets = np.cumsum([0] + [len(s) for s in self._shards])

    def _open(self, entry: dict) -> np.memmap:
        path = self.folder / entry["file"]
        header = shard_header(path)
        if header.tokens != entry["tokens"] or header.vocab_size != self.vocab_size:
            raise ValueError(f"{path} does not match index.json ({header.tokens} tokens of a "
                             f"{header.vocab_size}-token vocabulary, not {entry['tokens']} of "
                             f"{self.vocab_size}): prepare the folder again.")
        return read_shard(path)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, key: slice) -> torch.Tensor:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("TokenShards can be sliced (shards[a:b]), not indexed or strided.")
        start, stop, _ = key.indices(len(self))
        return torch.from_numpy(self._read(start, max(start, stop)))

    def _read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty(stop - start, dtype=np.int64)
        # side="right" skips any empty shard that starts at the same place as the one we want.
        k = int(np.searchsorted(self._offsets, start, side="right")) - 1
        done = 0
        while done < len(out):
            first = start + done - int(self._offsets[k])
            piece = self._shards[k][first: first + len(out) - done]
            out[done: done + len(piece)] = piece
            done += len(piece)
            k += 1
        return out

    def random_batch(self, batch_size: int, block_size: int, generator: torch.Generator,
                     device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs x (B, T) and targets y (y[:, t] = x[:, t+1]) from ``batch_size`` windows that
        start anywhere in the stream; with the same generator, the very batch that
        ``minillm.train.random_batch`` draws from the concatenated ids."""
        if len(self) <= block_size:
            raise ValueError(f"The shards hold {len(self)} tokens, fewer than the "
                             f"{block_size + 1} that one window of block_size={block_size} "
                             f"needs with its target.")
        starts = torch.randint(len(self) - block_size, (batch_size,), generator=generator)
        windows = np.stack([self._read(s, s + block_size + 1) for s in starts.tolist()])
        windows = torch.from_numpy(windows).to(device)  # one transfer for inputs and targets
        return windows[:, :-1], windows[:, 1:]

    def tokenizer(self):
        """The tokenizer that made the ids (saved next to the shards)."""
        return load_tokenizer(self.folder / "tokenizer.json")

    def __repr__(self) -> str:
        return (f"TokenShards({str(self.folder)!r}, tokens={len(self):,}, "
                f"shards={len(self._shards)}, vocab_size={self.vocab_size})")
