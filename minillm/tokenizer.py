r"""Byte-level BPE, the tokenizer of GPT-2 and GPT-4, small enough to read in one sitting.

A token is a byte string; its id is its *rank*, the step at which training created it (the 256
single bytes come first). Encoding a piece of text repeatedly joins the adjacent pair whose
concatenation has the lowest rank, exactly as tiktoken does, so a tokenizer trained here and
``to_tiktoken()`` give the same ids, and ``Tokenizer.from_tiktoken(tiktoken.get_encoding("gpt2"))``
encodes like OpenAI's own tokenizer.

Before BPE, a regex splits the text into pieces (words with their leading space, runs of digits,
punctuation, whitespace); merges never cross a piece boundary, so "dog." and "dog!" share "dog".
The pre-split and its agreement with tiktoken on every character are ``minillm.pretokenize``'s.
"""

from __future__ import annotations

import heapq
import json
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import regex

from minillm.files import atomic_write
from minillm.pretokenize import PATTERNS, split_text, without_surrogates


def pair_counts(ids: list[int], counts: dict | None = None, weight: int = 1) -> dict:
    """Count adjacent pairs: [1, 2, 1, 2] -> {(1, 2): 2, (2, 1): 1} (added to ``counts``)."""
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of ``pair`` (left to right, no overlaps) by ``new_id``."""
    merged, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def bpe_pieces(piece: bytes, ranks: dict[bytes, int]) -> list[bytes]:
    """Split one pre-tokenized piece into tokens: join the lowest-ranked adjacent pair until none
    is in the vocabulary (ties go to the leftmost pair, as in tiktoken).

    >>> bpe_pieces(b"aaab", {b"a": 0, b"b": 1, b"aa": 2, b"ab": 3})
    [b'aa', b'ab']

    (b"aa" has the lowest rank and occurs twice: the left one is joined, then b"ab" is.)
    """
    if len(piece) < SHORT_PIECE:
        return _merge_by_scanning(piece, ranks)
    return _merge_with_heap(piece, ranks)


# Below this many bytes (most pieces of ordinary text) rescanning every pair after each merge is
# faster than keeping a heap; above it the heap wins, by far on long runs: 16 KB of emoji take
# 30 ms instead of 10 s.
SHORT_PIECE = 20


def _merge_by_scanning(piece: bytes, ranks: dict[bytes, int]) -> list[bytes]:
    # O(n^2): each merge rescans all pairs for the lowest rank.
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best_rank, best_i = None, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best_i = rank, i
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def _merge_with_heap(piece: bytes, ranks: dict[bytes, int]) -> list[bytes]:
    # O(n log n): the parts are a doubly linked list of spans of `piece` (the part starting at
    # byte i ends at nxt[i]), and a heap holds (rank, start) for each adjacent pair, so the
    # smallest entry is the lowest-ranked pair, leftmost among equals. A merge changes only the
    # pairs on either side of the new part: those are pushed, and the entries they replace are
    # recognized as stale when popped.
    n = len(piece)
    nxt, prv = list(range(1, n + 1)), list(range(-1, n - 1))
    heap = [(ranks[piece[i : i + 2]], i) for i in range(n - 1) if piece[i : i + 2] in ranks]
    heapq.heapify(heap)
    while heap:
        rank, i = heapq.heappop(heap)
        j = nxt[i]
        if j is None or j == n or ranks.get(piece[i : nxt[j]]) != rank:
            continue  # part i was merged into its left neighbour, or its pair has changed
        k = nxt[j]
        nxt[i], nxt[j] = k, None  # part j joins part i
        if k < n:
            prv[k] = i
        for a in (prv[i], i):  # the pair ending with the new part, and the one starting with it
            if a >= 0 and nxt[a] < n:
                new_rank = ranks.get(piece[a : nxt[nxt[a]]])
                if new_rank is not None:
                    heapq.heappush(heap, (new_rank, a))
    parts, i = [], 0
    while i < n:
        parts.append(piece[i : nxt[i]])
        i = nxt[i]
    return parts


class _TokenizerBase:
    """What every tokenizer shares: special tokens, decoding, files. A subclass sets
    ``_decoder`` (id -> bytes, special tokens included) and implements ``encode_ordinary``."""

    FORMAT = ""
    special_tokens: dict[str, int]
    _decoder: dict[int, bytes]

    def _set_decoder(self, decoder: dict[int, bytes]) -> None:
        decoder.update({i: s.encode("utf-8") for s, i in self.special_tokens.items()})
        self._decoder = decoder
        # One more than the largest id (special tokens included), like tiktoken's n_vocab.
        self.vocab_size = max(decoder) + 1

    def encode_ordinary(self, text: str) -> list[int]:
        raise NotImplementedError

    def _with_special_tokens(self, special_tokens, next_id: int) -> dict[str, int]:
        """The special tokens grown by ``special_tokens``, each new one given the next id from
        ``next_id`` on (ones it has already are skipped), for ``with_tokens``."""
        special = dict(self.special_tokens)
        for token in special_tokens:
            if token not in special:
                special[token], next_id = next_id, next_id + 1
        return special

    def encode(self, text: str, allowed_special=()) -> list[int]:
        """Text to ids. Special-token text is plain text unless named in ``allowed_special``
        (a set of strings, or ``"all"``), so user input can never smuggle in a control token."""
        allowed = self.special_tokens if allowed_special == "all" else set(allowed_special)
        unknown = set(allowed) - set(self.special_tokens)
        if unknown:
            raise ValueError(f"Not special tokens of this tokenizer: {sorted(unknown)}.")
        if not allowed:
            return self.encode_ordinary(text)
        specials = sorted(allowed, key=len, reverse=True)
        splitter = regex.compile("(" + "|".join(regex.escape(s) for s in specials) + ")")
        ids = []
        for k, chunk in enumerate(splitter.split(text)):
            if k % 2:
                ids.append(self.special_tokens[chunk])
            elif chunk:
                ids.extend(self.encode_ordinary(chunk))
        return ids

    def decode_bytes(self, ids) -> bytes:
        """Ids to the exact bytes they stand for (which may end mid-character)."""
        try:
            return b"".join(self._decoder[int(i)] for i in ids)
        except KeyError as err:
            last = self.vocab_size - 1
            raise ValueError(
                f"Token id {err.args[0]} is not in the vocabulary (ids are 0..{last})."
            ) from None

    def decode(self, ids) -> str:
        """Ids to text; bytes that do not form valid UTF-8 become U+FFFD replacement characters."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token."""
        return self.decode_bytes([token_id])

    def to_json(self) -> str:
        raise NotImplementedError

    def save(self, path) -> None:
        """Write the tokenizer as one readable JSON file, atomically."""
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path):
        """Read a file written by ``save``."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"No tokenizer file at {path}.") from None
        try:
            tok = from_json(text)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        if not isinstance(tok, cls):
            raise ValueError(f"{path} holds a {type(tok).__name__}, not a {cls.__name__}.")
        return tok


class Tokenizer(_TokenizerBase):
    """A byte-level BPE tokenizer: ``ranks`` maps each token's bytes to its id."""

    FORMAT = "minillm-tokenizer/1"

    def __init__(self, ranks: dict[bytes, int], pattern: str = "gpt4", special_tokens=None):
        self.pattern = PATTERNS.get(pattern, pattern)
        self.ranks = dict(ranks)
        self.special_tokens = dict(special_tokens or {})
        regex.compile(self.pattern)  # a bad pattern fails here rather than at the first encode
        self._set_decoder({i: b for b, i in self.ranks.items()})
        if len(self._decoder) != len(self.ranks) + len(self.special_tokens):
            raise ValueError("Two tokens share an id; every token needs its own id.")
        self._cache: dict[str, list[int]] = {}

    @property
    def merges(self) -> list[tuple[bytes, ...]]:
        """The merges in rank order, as (left, right) byte strings: the training history,
        recovered from the ranks by encoding each token with only the tokens older than it."""
        merges, earlier = [], {}
        for rank, token in sorted((i, b) for b, i in self.ranks.items()):
            if len(token) > 1:
                merges.append(tuple(bpe_pieces(token, earlier)))
            earlier[token] = rank
        return merges

    # ---- training -------------------------------------------------------------------------

    @classmethod
    def train(cls, text: str, vocab_size: int, pattern: str = "gpt4", special_tokens=None,
              progress: bool = False) -> Tokenizer:
        """Learn ``vocab_size`` tokens from ``text``: 256 bytes, the merges, then the special
        tokens (a list of strings, which take the last ids)."""
        special_tokens = list(special_tokens or [])
        n_merges = vocab_size - 256 - len(special_tokens)
        if n_merges < 0:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: it must hold 256 bytes plus "
                f"{len(special_tokens)} special tokens."
            )
        words = Counter(split_text(text, PATTERNS.get(pattern, pattern)))
        vocab = [bytes([b]) for b in range(256)]
        merges = _learn_merges(words, n_merges, vocab, progress)
        if len(merges) < n_merges:
            warnings.warn(
                f"The text only supports {len(merges)} merges; the vocabulary is "
                f"{256 + len(merges) + len(special_tokens)} tokens, not {vocab_size}.",
                stacklevel=2,
            )
        ranks = {b: i for i, b in enumerate(vocab)}
        specials = {s: len(vocab) + k for k, s in enumerate(special_tokens)}
        return cls(ranks, pattern, specials)

    # ---- encoding and decoding ------------------------------------------------------------

    def encode_ordinary(self, text: str) -> list[int]:
        """Text to ids, treating every character as ordinary text."""
        ids, cache = [], self._cache
        for piece in split_text(without_surrogates(text), self.pattern):
            piece_ids = cache.get(piece)
            if piece_ids is None:
                piece_ids = cache[piece] = self._encode_piece(piece.encode("utf-8"))
            ids.extend(piece_ids)
        return ids

    def _encode_piece(self, piece: bytes) -> list[int]:
        whole = self.ranks.get(piece)
        if whole is not None:
            return [whole]
        return [self.ranks[part] for part in bpe_pieces(piece, self.ranks)]

    def with_tokens(self, chars: str = "", special_tokens=()) -> Tokenizer:
        """This tokenizer grown by ``special_tokens``, each given the next free id (ones it has
        already are skipped): every old id keeps its meaning, so a model trained with the old
        vocabulary needs only new embedding rows (``minillm.model.grow_vocabulary``). Byte-level
        BPE encodes every character already, so ``chars`` adds nothing; it is there so that
        either kind of tokenizer grows the same way (``CharTokenizer.with_tokens``).

        >>> import tiktoken
        >>> gpt2 = Tokenizer.from_tiktoken(tiktoken.get_encoding("gpt2"))  # ids 0..50256
        >>> gpt2.with_tokens(special_tokens=["<|endoftext|>", "<|user|>"]).special_tokens
        {'<|endoftext|>': 50256, '<|user|>': 50257}
        """
        return Tokenizer(self.ranks, self.pattern,
                         self._with_special_tokens(special_tokens, self.vocab_size))

    def truncated(self, n_merges: int) -> Tokenizer:
        """The tokenizer as it was after its first ``n_merges`` merges (special tokens kept)."""
        ranks = {b: i for b, i in self.ranks.items() if i < 256 + n_merges}
        return Tokenizer(ranks, self.pattern, self.special_tokens)

    # ---- interoperability and files -------------------------------------------------------

    def to_tiktoken(self, name: str = "minillm"):
        """The same tokenizer as a ``tiktoken.Encoding`` (Rust speed, identical ids)."""
        import tiktoken

        return tiktoken.Encoding(
            name=name,
            pat_str=self.pattern,
            mergeable_ranks=self.ranks,
            special_tokens=self.special_tokens,
        )

    @classmethod
    def from_tiktoken(cls, encoding) -> Tokenizer:
        """Load a published tiktoken encoding (e.g. ``tiktoken.get_encoding("gpt2")``)."""
        # tiktoken's README shows these attributes as the way to extend an encoding.
        return cls(encoding._mergeable_ranks, encoding._pat_str, encoding._special_tokens)

    def to_json(self) -> str:
        """A token per line as [id, hex bytes, text]: exact, and readable by a person."""
        rows = [
            f"    [{i}, {json.dumps(b.hex())}, "
            f"{json.dumps(b.decode('utf-8', errors='replace'), ensure_ascii=False)}]"
            for i, b in sorted((i, b) for b, i in self.ranks.items())
        ]
        return "\n".join([
            "{",
            f'  "format": {json.dumps(self.FORMAT)},',
            f'  "pattern": {json.dumps(self.pattern)},',
            f'  "special_tokens": {json.dumps(self.special_tokens, ensure_ascii=False)},',
            '  "tokens": [',
            ",\n".join(rows),
            "  ]",
            "}",
        ]) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> Tokenizer:
        ranks = {bytes.fromhex(hexed): i for i, hexed, _ in data["tokens"]}
        return cls(ranks, data["pattern"], data["special_tokens"])

    def __repr__(self) -> str:
        name = next((k for k, v in PATTERNS.items() if v == self.pattern), "custom")
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, pattern={name!r}, "
            f"special_tokens={list(self.special_tokens)})"
        )


class CharTokenizer(_TokenizerBase):
    """One token per character (the tokenizer of char-rnn and nanoGPT's Shakespeare model), with
    the same interface as ``Tokenizer`` so every model and lesson can use either."""

    FORMAT = "minillm-char-tokenizer/1"

    def __init__(self, chars: str, special_tokens=None, added_chars=None):
        self.chars = chars
        self.special_tokens = dict(special_tokens or {})
        # Characters given ids after a model was trained (``with_tokens``), so old ids keep
        # their meaning: {character: id}.
        self.added_chars = dict(added_chars or {})
        self._ids = {c: i for i, c in enumerate(chars)} | self.added_chars
        if len(self._ids) != len(chars) + len(self.added_chars):
            raise ValueError("The character list repeats a character.")
        self._set_decoder({i: c.encode("utf-8") for c, i in self._ids.items()})
        if len(self._decoder) != len(self._ids) + len(self.special_tokens):
            raise ValueError("Two tokens share an id; every token needs its own id.")

    @classmethod
    def train(cls, text: str, special_tokens=None) -> CharTokenizer:
        """The sorted characters of ``text``, then the special tokens (a list of strings)."""
        chars = "".join(sorted(set(text)))
        return cls(chars, {s: len(chars) + k for k, s in enumerate(special_tokens or [])})

    def with_tokens(self, chars: str = "", special_tokens=()) -> CharTokenizer:
        """This tokenizer grown by new ``chars`` and ``special_tokens``, each given the next free
        id: every old id keeps its meaning, so a model trained with the old vocabulary needs only
        new embedding rows (``minillm.model.grow_vocabulary``). Ones it has already are skipped.

        >>> CharTokenizer("ab", {"<|end|>": 2}).with_tokens("7", ["<|calc|>"]).encode("7b")
        [3, 1]
        """
        added, next_id = dict(self.added_chars), self.vocab_size
        for c in chars:
            if c not in self._ids and c not in added:
                added[c], next_id = next_id, next_id + 1
        return CharTokenizer(self.chars, self._with_special_tokens(special_tokens, next_id), added)

    def encode_ordinary(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError as err:
            raise ValueError(
                f"The character {err.args[0]!r} is not in this character-level vocabulary."
            ) from None

    def to_json(self) -> str:
        added = {"added_chars": self.added_chars} if self.added_chars else {}
        return json.dumps({"format": self.FORMAT, "chars": self.chars,
                           "special_tokens": self.special_tokens, **added},
                          ensure_ascii=False, indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> CharTokenizer:
        return cls(data["chars"], data["special_tokens"], data.get("added_chars"))

    def __repr__(self) -> str:
        return (f"CharTokenizer(vocab_size={self.vocab_size}, "
                f"special_tokens={list(self.special_tokens)})")


def from_json(text: str) -> Tokenizer | CharTokenizer:
    """A tokenizer from the JSON text that ``to_json``/``save`` wrote (either kind)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not a minillm tokenizer file ({err})") from None
    kinds = {Tokenizer.FORMAT: Tokenizer, CharTokenizer.FORMAT: CharTokenizer}
    kind = kinds.get(data.get("format")) if isinstance(data, dict) else None
    if kind is None:
        raise ValueError(f"not a minillm tokenizer file (formats: {', '.join(kinds)})")
    return kind.from_dict(data)


def _learn_merges(words: Counter, n_merges: int, vocab: list[bytes], progress: bool) -> list:
    """BPE training on the distinct pieces of the text, weighted by how often each occurs.

    Pair counts are kept up to date incrementally: a merge only revisits the pieces that contain
    the merged pair (``where``), and a heap with lazy deletion finds the most frequent pair.
    Ties go to the pair of smallest ids, so training is deterministic. Appends to ``vocab``.
    """
    from tqdm.auto import tqdm

    pieces = [list(w.encode("utf-8")) for w in words]
    weights = list(words.values())
    counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for k, ids in enumerate(pieces):
        for pair in zip(ids, ids[1:]):
            counts[pair] += weights[k]
            where[pair].add(k)
    heap = [(-c, pair) for pair, c in counts.items()]
    heapq.heapify(heap)
    rank_of = {b: i for i, b in enumerate(vocab)}
    merges = []
    bar = tqdm(total=n_merges, desc="BPE merges", mininterval=1.0, disable=not progress)
    while len(merges) < n_merges and heap:
        negative_count, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -negative_count:
            continue  # a stale heap entry: the pair's count has changed since it was pushed
        token = vocab[pair[0]] + vocab[pair[1]]
        # A pair can spell a token that already exists ("a"+"bc" after "ab"+"c"): reuse its id,
        # so no two ids share bytes, and the vocabulary does not grow for it.
        new_id = rank_of.get(token)
        if new_id is None:
            new_id = rank_of[token] = len(vocab)
            vocab.append(token)
            merges.append(pair)
            bar.update()
        changed = set()
        for k in where.pop(pair):
            old, weight = pieces[k], weights[k]
            new = merge_pair(old, pair, new_id)
            pieces[k] = new
            old_pairs, new_pairs = list(zip(old, old[1:])), list(zip(new, new[1:]))
            for p in old_pairs:
                counts[p] -= weight
            for p in new_pairs:
                counts[p] += weight
            for p in set(old_pairs) - set(new_pairs):
                where[p].discard(k)
            for p in set(new_pairs) - set(old_pairs):
                where[p].add(k)
            changed.update(old_pairs)
            changed.update(new_pairs)
        for p in changed:
            if counts[p] > 0:
                heapq.heappush(heap, (-counts[p], p))
            else:
                del counts[p]
    bar.close()
    return merges
