"""Graded tests for lesson 01: byte-level BPE (exercises/ex01_tokenization.py).

Expected answers are worked out by hand, or computed by the small independent helpers at the top
of this file; they never come from the code under test. Each test is fast (well under a second)
and works with any tie-breaking between equally frequent pairs.
"""

import random
from collections import Counter

import pytest

# The exercises that each exercise calls: when those fail too, the grader says to fix them first.
EXERCISE_CALLS = {
    "train_bpe": ("get_pair_counts", "merge_pair"),
    "encode": ("get_pair_counts", "merge_pair"),
}

SHAKESPEARE = """\
HAMLET:
To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,
Or to take arms against a sea of troubles
And by opposing end them. To die: to sleep;
No more; and by a sleep to say we end
The heart-ache and the thousand natural shocks
That flesh is heir to, 'tis a consummation
Devoutly to be wish'd. To die, to sleep;
To sleep: perchance to dream: ay, there's the rub;
For in that sleep of death what dreams may come
When we have shuffled off this mortal coil,
Must give us pause.

ANTONY:
Friends, Romans, countrymen, lend me your ears;
I come to bury Caesar, not to praise him.
The evil that men do lives after them;
The good is oft interred with their bones;
So let it be with Caesar. The noble Brutus
Hath told you Caesar was ambitious:
If it were so, it was a grievous fault,
And grievously hath Caesar answer'd it.

SONNET:
Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou owest;
Nor shall Death brag thou wander'st in his shade,
When in eternal lines to time thou growest:
So long as men can breathe or eyes can see,
So long lives this and this gives life to thee.
"""

NON_ASCII = (
    "Ça va? Naïve café, Ünïcödé — «quotes», 日本語のテキスト, Ελληνικά, Кириллица. "
    "Emoji: 👋🌍🎭, a flag 🇬🇧 and a family 👨\u200d👩\u200d👧 joined by zero-width joiners."
)

# "aaaaaa" worked by hand: 5 x (a,a) -> 256 gives [256, 256, 256]; 2 x (256,256) -> 257 gives
# [257, 256]; 1 x (257,256) -> 258 gives [258]. Every step has a unique most frequent pair.
A6_MERGES = {(97, 97): 256, (256, 256): 257, (257, 256): 258}


def count_pairs(ids):
    return Counter(zip(ids, ids[1:], strict=False))


def merge_everywhere(ids, pair, new_id):
    merged = []
    for token in ids:
        # new_id is never part of pair, so a just-merged token cannot be merged again here:
        # that is what makes the occurrences non-overlapping.
        if merged and merged[-1] == pair[0] and token == pair[1]:
            merged[-1] = new_id
        else:
            merged.append(token)
    return merged


def reference_training(text, num_merges):
    """Greedy BPE training: the merges and the training text's ids after the last merge."""
    ids = list(text.encode("utf-8"))
    merges = {}
    for new_id in range(256, 256 + num_merges):
        counts = count_pairs(ids)
        # Highest count, then smallest pair: a fixed tie-break so the helper is deterministic.
        pair = min(counts, key=lambda p: (-counts[p], p))
        ids = merge_everywhere(ids, pair, new_id)
        merges[pair] = new_id
    return merges, ids


def expand_to_bytes(ids, merges):
    parts = {new_id: pair for pair, new_id in merges.items()}

    def expand(token):
        if token < 256:
            return bytes([token])
        left, right = parts[token]
        return expand(left) + expand(right)

    return b"".join(expand(token) for token in ids)


# --- Exercise 01.1: get_pair_counts ---------------------------------------------------------


@pytest.mark.exercise("get_pair_counts", points=1)
def test_pair_counts_of_a_small_list(impl):
    assert impl.get_pair_counts([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}


@pytest.mark.exercise("get_pair_counts", points=1)
def test_pair_counts_include_overlapping_pairs(impl):
    assert impl.get_pair_counts([5, 5, 5]) == {(5, 5): 2}, "[5, 5, 5] holds (5, 5) twice"


@pytest.mark.exercise("get_pair_counts", points=1)
def test_pair_counts_of_lists_without_pairs(impl):
    assert impl.get_pair_counts([]) == {}, "an empty list has no pairs"
    assert impl.get_pair_counts([7]) == {}, "a single id has no pairs"


@pytest.mark.exercise("get_pair_counts", points=1)
def test_pair_counts_of_random_lists(impl):
    rng = random.Random(1)
    for length in (2, 3, 10, 200):
        ids = [rng.randrange(4) for _ in range(length)]
        assert impl.get_pair_counts(ids) == count_pairs(ids), f"wrong counts for {ids}"


# --- Exercise 01.2: merge_pair --------------------------------------------------------------


@pytest.mark.exercise("merge_pair", points=1)
def test_merge_pair_in_a_small_list(impl):
    merged = impl.merge_pair([1, 2, 3, 1, 2], (1, 2), 256)
    assert merged == [256, 3, 256], f"merging (1, 2) in [1, 2, 3, 1, 2] gave {merged}"


@pytest.mark.exercise("merge_pair", points=2)
def test_merge_pair_does_not_overlap(impl):
    assert impl.merge_pair([97, 97, 97], (97, 97), 256) == [256, 97], (
        "merging (a, a) in 'aaa' scans left to right: [256, 97]"
    )
    assert impl.merge_pair([97] * 4, (97, 97), 256) == [256, 256]
    assert impl.merge_pair([97] * 5, (97, 97), 256) == [256, 256, 97]


@pytest.mark.exercise("merge_pair", points=1)
def test_merge_pair_edge_cases(impl):
    assert impl.merge_pair([], (1, 2), 256) == []
    assert impl.merge_pair([1], (1, 2), 256) == [1]
    assert impl.merge_pair([2, 1], (1, 2), 256) == [2, 1], "(2, 1) is not the pair (1, 2)"
    assert impl.merge_pair([3, 1, 2], (1, 2), 256) == [3, 256], "a pair at the very end merges"


@pytest.mark.exercise("merge_pair", points=1)
def test_merge_pair_leaves_its_input_unchanged(impl):
    ids = [1, 2, 3, 1, 2]
    impl.merge_pair(ids, (1, 2), 256)
    assert ids == [1, 2, 3, 1, 2], "merge_pair must return a new list, not edit its input"


# --- Exercise 01.3: train_bpe ---------------------------------------------------------------


@pytest.mark.exercise("train_bpe", points=2)
def test_train_bpe_merges_merged_tokens_again(impl):
    merges = impl.train_bpe("aaaaaa", 259)
    assert list(merges.items()) == list(A6_MERGES.items()), (
        f"train_bpe('aaaaaa', 259) should learn {A6_MERGES}, not {merges}"
    )


@pytest.mark.exercise("train_bpe", points=1)
def test_train_bpe_small_vocabularies(impl):
    assert impl.train_bpe("hello world", 256) == {}, "vocab_size 256 leaves room for no merges"
    assert impl.train_bpe("ab", 300) == {(97, 98): 256}, "stop once no pairs are left"


@pytest.mark.exercise("train_bpe", points=1)
def test_train_bpe_gives_consecutive_new_ids(impl):
    merges = impl.train_bpe(SHAKESPEARE, 256 + 60)
    assert len(merges) == 60
    assert list(merges.values()) == list(range(256, 316)), "new ids are 256, 257, ... in order"


@pytest.mark.exercise("train_bpe", points=3)
def test_train_bpe_always_merges_a_most_frequent_pair(impl):
    merges = impl.train_bpe(SHAKESPEARE, 256 + 60)
    ids = list(SHAKESPEARE.encode("utf-8"))
    for pair, new_id in merges.items():
        counts = count_pairs(ids)
        best = max(counts.values())
        assert counts[pair] == best, (
            f"merge {new_id} is {pair}, which occurs {counts[pair]} times at that step, "
            f"but the most frequent pair occurs {best} times"
        )
        ids = merge_everywhere(ids, pair, new_id)
    assert len(ids) < len(SHAKESPEARE.encode("utf-8"))


# --- Exercise 01.4: encode ------------------------------------------------------------------


@pytest.mark.exercise("encode", points=1)
def test_encode_applies_merges_built_on_merges(impl):
    assert impl.encode("aaaaaa", A6_MERGES) == [258], "later merges apply to merged tokens"
    # [97]*5 -> [256, 256, 97] -> [257, 97]; (257, 97) is not a merge.
    assert impl.encode("aaaaa", A6_MERGES) == [257, 97]


@pytest.mark.exercise("encode", points=2)
def test_encode_merges_the_earliest_learned_pair_first(impl):
    # (b, c) was learned before (a, b): "abc" must become [a, bc], not [ab, c].
    merges = {(98, 99): 256, (97, 98): 257}
    assert impl.encode("abc", merges) == [97, 256], "merge the pair with the lowest id first"


@pytest.mark.exercise("encode", points=1)
def test_encode_without_merges_gives_utf8_bytes(impl):
    assert impl.encode("", A6_MERGES) == []
    assert impl.encode("a", A6_MERGES) == [97]
    assert impl.encode(NON_ASCII, {}) == list(NON_ASCII.encode("utf-8"))


@pytest.mark.exercise("encode", points=2)
def test_encode_reproduces_the_training_tokens(impl):
    # Encoding the training text replays training exactly, so the result is known in advance.
    merges, training_ids = reference_training(SHAKESPEARE, 60)
    ids = impl.encode(SHAKESPEARE, merges)
    assert ids == training_ids, "encoding the training text must give the tokens training made"
    assert len(ids) < len(SHAKESPEARE.encode("utf-8"))


@pytest.mark.exercise("encode", points=1)
def test_encode_unseen_text_fully_and_losslessly(impl):
    merges, _ = reference_training(SHAKESPEARE, 60)
    text = "Now is the winter of our discontent, made glorious summer — 🌞 café."
    ids = impl.encode(text, merges)
    assert expand_to_bytes(ids, merges) == text.encode("utf-8"), "encode lost or changed bytes"
    leftover = [pair for pair in zip(ids, ids[1:], strict=False) if pair in merges]
    assert not leftover, f"these pairs could still be merged: {leftover}"


# --- Exercise 01.5: decode ------------------------------------------------------------------


@pytest.mark.exercise("decode", points=1)
def test_decode_bytes(impl):
    assert impl.decode([], {}) == ""
    assert impl.decode(list(b"hello"), {}) == "hello"
    assert impl.decode(list(NON_ASCII.encode("utf-8")), {}) == NON_ASCII


@pytest.mark.exercise("decode", points=1)
def test_decode_merged_tokens(impl):
    # 258 -> (257, 256) -> ((256, 256), 256) -> six a's; then 256 -> "aa"; then 97 -> "a".
    assert impl.decode([258, 256, 97], A6_MERGES) == "a" * 9
    assert impl.decode([104, 256, 33], {(105, 105): 256}) == "hii!"


@pytest.mark.exercise("decode", points=1)
def test_decode_replaces_invalid_utf8(impl):
    assert impl.decode([0xFF, 104], {}) == "\ufffdh", "0xFF is never valid UTF-8"
    # The first byte of "é" alone is half a character.
    assert impl.decode([0xC3], {}) == "\ufffd"


@pytest.mark.exercise("decode", points=1)
@pytest.mark.parametrize("text", [SHAKESPEARE, NON_ASCII], ids=["shakespeare", "non_ascii"])
def test_decode_inverts_encode(impl, text):
    merges, _ = reference_training(SHAKESPEARE, 60)
    assert impl.decode(impl.encode(text, merges), merges) == text, "decode(encode(text)) != text"
