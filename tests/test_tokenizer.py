import json
import random
import time
import unicodedata
from collections import Counter

import pytest
import regex
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minillm.pretokenize import GPT2_PATTERN, GPT4_PATTERN, split_text
from minillm.tokenizer import (
    CharTokenizer,
    Tokenizer,
    _merge_by_scanning,
    _merge_with_heap,
    bpe_pieces,
    from_json,
    merge_pair,
    pair_counts,
)

SPECIALS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"]


@pytest.fixture(scope="module")
def shakespeare_tok(corpus) -> Tokenizer:
    return Tokenizer.train(corpus, 1024, special_tokens=SPECIALS)


@pytest.fixture(scope="module")
def cl100k() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base")


def test_patterns_are_tiktokens():
    assert GPT2_PATTERN == tiktoken.get_encoding("gpt2")._pat_str
    assert GPT4_PATTERN == tiktoken.get_encoding("cl100k_base")._pat_str


def test_pair_counts_and_merge_pair():
    assert pair_counts([1, 2, 1, 2, 3]) == {(1, 2): 2, (2, 1): 1, (2, 3): 1}
    assert merge_pair([1, 2, 1, 2, 3], (1, 2), 9) == [9, 9, 3]
    assert merge_pair([5, 5, 5], (5, 5), 7) == [7, 5]  # left to right, no overlaps


def naive_bpe(text: str, n_merges: int, pattern: str) -> list[tuple[int, int]]:
    """Recount every pair after every merge: slow, obviously right, same tie-break (smallest
    pair among the most frequent)."""
    words = Counter(regex.findall(pattern, text))
    pieces = {w: list(w.encode()) for w in words}
    merges = []
    for new_id in range(256, 256 + n_merges):
        counts = {}
        for w, ids in pieces.items():
            pair_counts(ids, counts, weight=words[w])
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        pieces = {w: merge_pair(ids, best, new_id) for w, ids in pieces.items()}
    return merges


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_incremental_training_equals_recounting(corpus, pattern):
    text = corpus[:20_000]
    tok = Tokenizer.train(text, 256 + 200, pattern=pattern)
    vocab = [bytes([b]) for b in range(256)]
    for a, b in naive_bpe(text, 200, tok.pattern):
        vocab.append(vocab[a] + vocab[b])
    assert tok.ranks == {t: i for i, t in enumerate(vocab)}


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_trained_tokenizer_matches_tiktoken_on_whole_corpus(corpus, pattern):
    tok = Tokenizer.train(corpus, 1024, pattern=pattern)
    ids = tok.encode(corpus)
    assert ids == tok.to_tiktoken().encode(corpus)
    assert tok.decode(ids) == corpus
    assert len(ids) < len(corpus.encode()) / 2.3  # a 1024-token BPE more than halves the bytes


@pytest.mark.parametrize("name", ["gpt2", "cl100k_base", "o200k_base"])
def test_published_encodings_match_tiktoken_on_whole_corpus(corpus, name):
    enc = tiktoken.get_encoding(name)
    tok = Tokenizer.from_tiktoken(enc)
    assert tok.vocab_size == enc.n_vocab
    assert tok.encode(corpus) == enc.encode(corpus, disallowed_special=())


unicode_text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(list("日本語の中文한국어😀🤗👍🏽\u0301\u0308\u200d \t\n\r 0123456789's")),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=unicode_text)
def test_trained_tokenizer_matches_tiktoken_on_any_text(shakespeare_tok, text):
    ids = shakespeare_tok.encode(text)
    assert ids == shakespeare_tok.to_tiktoken().encode(text, disallowed_special=())
    assert shakespeare_tok.decode(ids) == text
    assert shakespeare_tok.decode_bytes(ids) == text.encode("utf-8")


@pytest.mark.parametrize("name", ["gpt2", "cl100k_base"])
def test_published_encodings_match_tiktoken_on_any_text(name):
    enc = tiktoken.get_encoding(name)
    tok = Tokenizer.from_tiktoken(enc)

    @settings(max_examples=200, deadline=None)
    @given(text=unicode_text)
    def check(text):
        ids = tok.encode(text)
        assert ids == enc.encode(text, disallowed_special=())
        assert tok.decode(ids) == text

    check()


# ---- long pieces -------------------------------------------------------------------------------

def disagreements(tok: Tokenizer, enc: tiktoken.Encoding, strings) -> list[str]:
    return [s for s in strings if tok.encode(s) != enc.encode_ordinary(s)]


def random_long_pieces(n: int, max_length: int, seed: int = 0) -> list[str]:
    """Texts of one long piece each (a run of emoji, of letters, of punctuation, of spaces)
    from a few characters, so that most pairs merge and equal pairs overlap."""
    rng = random.Random(seed)
    alphabets = ["😀🤗👍🏽\u200d", "ab", "aéeé", "日本語", "!?.,", "  \t", "(){}[]<>=+-*/"]
    return ["".join(rng.choices(rng.choice(alphabets), k=rng.randint(20, max_length)))
            for _ in range(n)]


def test_merging_with_a_heap_equals_scanning(cl100k):
    ranks = cl100k._mergeable_ranks
    for text in random_long_pieces(100, max_length=300):  # scanning is slow beyond that
        piece = text.encode()
        assert _merge_with_heap(piece, ranks) == _merge_by_scanning(piece, ranks)
    # Ties between overlapping pairs: the leftmost is joined first, as in tiktoken.
    runs = {b"a" * k: k - 1 for k in range(1, 5)}
    for n in range(1, 40):
        assert _merge_with_heap(b"a" * n, runs) == _merge_by_scanning(b"a" * n, runs)
    assert bpe_pieces(b"a" * 5, runs) == [b"aa", b"aaa"]


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_long_pieces_match_tiktoken(name):
    enc = tiktoken.get_encoding(name)
    tok = Tokenizer.from_tiktoken(enc)
    assert disagreements(tok, enc, random_long_pieces(50, max_length=3000, seed=1)) == []


@pytest.mark.parametrize("text", ["😀" * 4000, " " * 4000], ids=["16 KB of emoji", "4000 spaces"])
def test_long_pieces_encode_fast(cl100k, text):
    tok = Tokenizer.from_tiktoken(cl100k)
    tok.encode("é")  # reads tiktoken's Unicode tables, once per pattern (about 0.7 s)
    start = time.perf_counter()
    ids = tok.encode(text)
    # 9.6 s for the 16 KB of emoji and 0.9 s for the spaces when every merge rescanned all
    # pairs; about 0.03 s with the heap, and 0.7 ms in tiktoken.
    assert time.perf_counter() - start < 0.5
    assert ids == cl100k.encode(text)


# ---- every character: regex's Unicode tables against tiktoken's ------------------------------

EVERY_CHARACTER = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]


def characters_to_check() -> list[str]:
    """Every character that Python's unicodedata and the installed regex put in different
    general categories (those added or recategorized between their two Unicode versions, where
    the disagreements with tiktoken lie: here 14.0, 17.0 and tiktoken's 16.0), and 5,000 more
    drawn at random. The slow tests check all 1.1 million."""
    by_category = {}
    for ch in EVERY_CHARACTER:
        by_category.setdefault(unicodedata.category(ch), set()).add(ch)
    text = "".join(EVERY_CHARACTER)
    changed = set()
    for category in ["Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Zs"]:
        changed ^= set(regex.findall(rf"\p{{{category}}}", text)) ^ by_category[category]
    return sorted(changed | set(random.Random(0).sample(EVERY_CHARACTER, 5000)))


def boundary_vocabulary(neighbours: str) -> dict[bytes, int]:
    """The 256 bytes, and a token for each of ``neighbours`` followed or preceded by any byte.
    BPE with these merges joins a neighbour and the first (or last) byte of the character next
    to it exactly when the split pattern puts the two in one piece: the ids show the cuts."""
    tokens = [bytes([b]) for b in range(256)]
    for n in neighbours.encode():
        tokens += [bytes([n, b]) for b in range(256)] + [bytes([b, n]) for b in range(256)]
    return {token: rank for rank, token in enumerate(dict.fromkeys(tokens))}


# Each character between two neighbours: a lowercase and an uppercase letter, a digit,
# punctuation, a space, and an apostrophe (which starts "'s" and the other contractions).
CONTEXTS = ["a{}A", "A{}a", "1{}1", "!{}!", " {} ", "'{}'"]


@pytest.fixture(scope="module")
def characters() -> list[str]:
    return characters_to_check()


@pytest.mark.parametrize("name", ["gpt2", "cl100k_base", "o200k_base"])
def test_pieces_are_cut_where_tiktoken_cuts_them(characters, name):
    # A vocabulary that makes every cut next to the character visible in the ids, with the split
    # pattern of a published encoding: each class of the pattern, for every character checked.
    tok = Tokenizer(boundary_vocabulary("aA1! '"), tiktoken.get_encoding(name)._pat_str)
    strings = [context.format(ch) for ch in characters for context in CONTEXTS]
    assert disagreements(tok, tok.to_tiktoken(), strings) == []


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_published_encodings_match_tiktoken_on_every_kind_of_character(characters, name):
    enc = tiktoken.get_encoding(name)
    strings = ["\u088f's", "\u0558's"]  # a letter only since Unicode 17.0; the example
    strings += [s.format(ch) for ch in characters for s in ["{}'s", "a{}1", " {}!"]]
    assert disagreements(Tokenizer.from_tiktoken(enc), enc, strings) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "cl100k_base", "o200k_base"])
def test_pieces_are_cut_where_tiktoken_cuts_them_for_every_character(name):
    tok = Tokenizer(boundary_vocabulary("aA1! '"), tiktoken.get_encoding(name)._pat_str)
    enc = tok.to_tiktoken()
    # Checked a context at a time, all characters in one text (for speed), then one by one.
    for context in CONTEXTS:
        text = "\n".join(context.format(ch) for ch in EVERY_CHARACTER)
        if tok.encode(text) != enc.encode_ordinary(text):
            strings = [context.format(ch) for ch in EVERY_CHARACTER]
            assert disagreements(tok, enc, strings)[:20] == []


def test_a_class_that_tiktoken_cannot_read_keeps_regexs_characters():
    # Unicode blocks are a `regex` feature that tiktoken's engine lacks.
    pattern = r"\p{InBasicLatin}+|[^\p{InBasicLatin}]+"
    assert split_text("naïve", pattern) == ["na", "ï", "ve"]


def test_lone_surrogates_are_replaced_like_tiktoken(cl100k):
    text = "ab\ud800cd"
    assert Tokenizer.from_tiktoken(cl100k).encode(text) == cl100k.encode(text)


def test_special_tokens_are_plain_text_unless_allowed(shakespeare_tok):
    tok = shakespeare_tok
    text = "<|user|>Speak of love.<|end|>"
    user, end = tok.special_tokens["<|user|>"], tok.special_tokens["<|end|>"]
    plain = tok.encode(text)
    assert user not in plain and end not in plain and tok.decode(plain) == text
    only_user = tok.encode(text, allowed_special={"<|user|>"})
    assert only_user[0] == user and end not in only_user
    both = tok.encode(text, allowed_special="all")
    assert both[0] == user and both[-1] == end and tok.decode(both) == text
    assert both == tok.to_tiktoken().encode(text, allowed_special="all")
    with pytest.raises(ValueError, match="Not special tokens"):
        tok.encode(text, allowed_special={"<|system|>"})


def test_special_tokens_take_the_last_ids(shakespeare_tok):
    assert shakespeare_tok.vocab_size == 1024
    assert sorted(shakespeare_tok.special_tokens.values()) == [1020, 1021, 1022, 1023]


def test_gpt2s_tokenizer_grows_by_the_chat_tokens_after_its_own_ids(tmp_path):
    enc = tiktoken.get_encoding("gpt2")
    gpt2 = Tokenizer.from_tiktoken(enc)
    chat = gpt2.with_tokens("ignored: bytes cover it", ["<|endoftext|>", "<|user|>", "<|end|>"])
    assert chat.special_tokens == {"<|endoftext|>": 50256, "<|user|>": 50257, "<|end|>": 50258}
    assert chat.vocab_size == 50259 and chat.ranks == gpt2.ranks
    text = "<|user|>Speak of love, café.<|end|>"
    assert chat.encode(text) == enc.encode(text)  # typed text: GPT-2's ids, no special one
    ids = chat.encode(text, allowed_special="all")
    assert ids[0] == 50257 and ids[-1] == 50258 and ids[1:-1] == enc.encode(text[8:-7])
    assert chat.decode(ids) == text
    assert chat.with_tokens(special_tokens=["<|user|>"]).special_tokens == chat.special_tokens
    chat.save(tmp_path / "chat.json")
    assert Tokenizer.load(tmp_path / "chat.json").encode(text, allowed_special="all") == ids


def test_decoding_mid_character_and_bad_ids(shakespeare_tok):
    tok = shakespeare_tok
    ids = tok.encode("😀")  # four bytes, not a merged token in a Shakespeare vocabulary
    assert len(ids) > 1
    assert tok.decode(ids[:-1]) == "\ufffd" * len(tok.decode(ids[:-1]))
    assert tok.decode_bytes(ids[:-1]) == "😀".encode()[: len(tok.decode_bytes(ids[:-1]))]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.decode([5, 1024])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.decode([-1])


def test_save_load_round_trip_is_exact_and_readable(shakespeare_tok, tmp_path):
    path = tmp_path / "tok.json"
    shakespeare_tok.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]  # no temp file left behind
    loaded = Tokenizer.load(path)
    assert loaded.ranks == shakespeare_tok.ranks
    assert loaded.special_tokens == shakespeare_tok.special_tokens
    assert loaded.pattern == shakespeare_tok.pattern
    data = json.loads(path.read_text())
    assert data["tokens"][256][0] == 256 and isinstance(data["tokens"][256][2], str)
    assert len(path.read_text().splitlines()) > 1024  # one token a line, for people to read
    text = "O Romeo, Romeo! wherefore art thou Romeo? 🤗"
    assert loaded.encode(text) == shakespeare_tok.encode(text)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="No tokenizer file"):
        Tokenizer.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a minillm tokenizer file"):
        Tokenizer.load(tmp_path / "bad.json")


def test_truncated_equals_training_fewer_merges(corpus):
    text = corpus[:50_000]
    big = Tokenizer.train(text, 600)
    assert big.truncated(100).ranks == Tokenizer.train(text, 356).ranks


def test_merges_replay_the_training(corpus):
    tok = Tokenizer.train(corpus[:50_000], 400)
    merges = tok.merges
    assert len(merges) == 144
    assert all(len(m) == 2 for m in merges)
    by_id = sorted(tok.ranks, key=tok.ranks.get)
    assert [a + b for a, b in merges] == by_id[256:]


def test_bad_vocab_sizes():
    with pytest.raises(ValueError, match="too small"):
        Tokenizer.train("hello", 256, special_tokens=["<|end|>"])
    with pytest.warns(UserWarning, match="only supports"):
        tok = Tokenizer.train("abab", 300)
    assert tok.vocab_size < 300


def test_char_tokenizer_has_the_same_interface(corpus, tmp_path):
    assert CharTokenizer.train(corpus).vocab_size == 65  # tiny Shakespeare's characters
    # "<", "|" and ">" do not occur in Shakespeare: add them, so "<|end|>" can be plain text too.
    tok = CharTokenizer.train(corpus + "<|>", special_tokens=["<|end|>"])
    assert tok.vocab_size == 69
    ids = tok.encode("To be, or not to be<|end|>", allowed_special="all")
    assert len(ids) == 20 and ids[-1] == 68
    assert tok.decode(ids) == "To be, or not to be<|end|>"
    assert tok.encode("<|end|>") == [tok.chars.index(c) for c in "<|end|>"]
    tok.save(tmp_path / "chars.json")
    loaded = CharTokenizer.load(tmp_path / "chars.json")
    assert loaded.encode(corpus[:1000]) == tok.encode(corpus[:1000])
    assert from_json(tok.to_json()).chars == tok.chars
    with pytest.raises(ValueError, match="holds a CharTokenizer"):
        Tokenizer.load(tmp_path / "chars.json")
    with pytest.raises(ValueError, match="not in this character-level vocabulary"):
        tok.encode("café")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.decode([69])
