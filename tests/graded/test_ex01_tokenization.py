"""Graded tests for lesson 01: byte-level BPE (exercises/ex01_tokenization.py).

Expected answers are worked out by hand, or computed by the small independent helpers at the top
of this file; they never come from the code under test. Each test is fast (well under a second)
and works with any tie-breaking between equally frequent pairs.
"""

import random
from collections import Counter

import pytest
from graded_feedback import attempt, show

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


def check_pair_counts(impl, ids):
    got = impl.get_pair_counts(list(ids))
    want = dict(count_pairs(ids))
    if got == want:
        return
    hint = ""
    if set(got) == set(want):
        hint = " Each pair maps to its number of occurrences, not just 1."
    elif set(got) < set(want):
        missing = sorted(set(want) - set(got))
        hint = (f" Missing pairs {missing}: every adjacent pair counts, overlapping pairs and the "
                "last pair included.")
    elif set(got) > set(want):
        hint = f" {sorted(set(got) - set(want))} are not adjacent pairs of the list (no wraps)."
    raise AssertionError(
        f"get_pair_counts({show(list(ids))}) returned {got}, expected {want}: every adjacent "
        f"pair is counted, overlapping pairs included, and fewer than two ids have no pairs.{hint}"
    )


@pytest.mark.exercise("get_pair_counts", points=1)
def test_pair_counts_of_a_small_list(impl):
    check_pair_counts(impl, [1, 2, 3, 1, 2])


@pytest.mark.exercise("get_pair_counts", points=1)
def test_pair_counts_include_overlapping_pairs(impl):
    check_pair_counts(impl, [5, 5, 5])  # (5, 5) twice: overlapping pairs both count
    check_pair_counts(impl, [5, 5, 5, 5, 6])


@pytest.mark.exercise("get_pair_counts", points=1)
def test_pair_counts_of_lists_without_pairs(impl):
    check_pair_counts(impl, [])
    check_pair_counts(impl, [7])


@pytest.mark.exercise("get_pair_counts", points=1)
def test_pair_counts_of_random_lists(impl):
    rng = random.Random(1)
    for length in (2, 3, 10, 200):
        check_pair_counts(impl, [rng.randrange(4) for _ in range(length)])


# --- Exercise 01.2: merge_pair --------------------------------------------------------------


def check_merge(impl, ids, pair, new_id, rule):
    got = impl.merge_pair(list(ids), pair, new_id)
    want = merge_everywhere(ids, pair, new_id)
    assert got == want, (
        f"merge_pair({ids}, {pair}, {new_id}) returned {show(got)}, expected {want}: {rule}"
    )


@pytest.mark.exercise("merge_pair", points=1)
def test_merge_pair_in_a_small_list(impl):
    check_merge(impl, [1, 2, 3, 1, 2], (1, 2), 256, "replace every occurrence of the pair")


@pytest.mark.exercise("merge_pair", points=2)
def test_merge_pair_does_not_overlap(impl):
    rule = ("scan from left to right; once two ids are merged neither can be part of another "
            "merge, so occurrences never overlap")
    for n in (3, 4, 5):
        check_merge(impl, [97] * n, (97, 97), 256, rule)


@pytest.mark.exercise("merge_pair", points=1)
def test_merge_pair_edge_cases(impl):
    check_merge(impl, [], (1, 2), 256, "an empty list stays empty")
    check_merge(impl, [1], (1, 2), 256, "a single id has no pair")
    check_merge(impl, [2, 1], (1, 2), 256,
                "(2, 1) is not the pair (1, 2): the two ids must come in that order")
    check_merge(impl, [3, 1, 2], (1, 2), 256, "a pair at the very end merges too")


@pytest.mark.exercise("merge_pair", points=2)
def test_merge_pair_leaves_its_input_unchanged(impl):
    ids = [1, 2, 3, 1, 2]
    impl.merge_pair(ids, (1, 2), 256)
    assert ids == [1, 2, 3, 1, 2], (
        f"merge_pair([1, 2, 3, 1, 2], (1, 2), 256) changed its argument to {ids}: the input "
        "list is left unchanged (train_bpe and encode reuse it); build and return a new list"
    )


# --- Exercise 01.3: train_bpe ---------------------------------------------------------------

STOP = "stop early once no pairs are left (the whole text is a single token)"


@pytest.mark.exercise("train_bpe", points=2)
def test_train_bpe_merges_merged_tokens_again(impl):
    merges = attempt(STOP, impl.train_bpe, "aaaaaa", 259)
    assert list(merges.items()) == list(A6_MERGES.items()), (
        f"train_bpe('aaaaaa', 259) returned {merges}, expected {A6_MERGES}: merge the chosen "
        "pair everywhere before the next step, so that later merges are built on merged tokens"
    )


@pytest.mark.exercise("train_bpe", points=1)
def test_train_bpe_small_vocabularies(impl):
    merges = attempt(STOP, impl.train_bpe, "hello world", 256)
    assert merges == {}, (
        f"train_bpe('hello world', 256) returned {merges}: it learns vocab_size - 256 merges, "
        "so none"
    )
    merges = attempt(STOP, impl.train_bpe, "ab", 300)
    assert merges == {(97, 98): 256}, (
        f"train_bpe('ab', 300) returned {merges}, expected {{(97, 98): 256}}: {STOP}"
    )


@pytest.mark.exercise("train_bpe", points=1)
def test_train_bpe_gives_consecutive_new_ids(impl):
    merges = attempt(STOP, impl.train_bpe, SHAKESPEARE, 256 + 60)
    assert list(merges.values()) == list(range(256, 316)), (
        f"train_bpe(text, 316) gave the new ids {show(list(merges.values()))}, expected "
        "256, 257, ..., 315: vocab_size - 256 merges, each with the next free id"
    )


@pytest.mark.exercise("train_bpe", points=3)
def test_train_bpe_always_merges_a_most_frequent_pair(impl):
    merges = attempt(STOP, impl.train_bpe, SHAKESPEARE, 256 + 60)
    ids = list(SHAKESPEARE.encode("utf-8"))
    for pair, new_id in merges.items():
        counts = count_pairs(ids)
        best = max(counts.values())
        assert counts[pair] == best, (
            f"train_bpe(text, 316): merge {new_id} is {pair}, which occurs {counts[pair]} times "
            f"at that step, but the most frequent pair occurs {best} times: each step merges "
            "the most frequent pair, counted after merging it everywhere before the next step"
        )
        ids = merge_everywhere(ids, pair, new_id)


@pytest.mark.exercise("train_bpe", points=1)
def test_train_bpe_works_on_utf8_bytes(impl):
    text = "日本語 " * 5
    merges = attempt(STOP, impl.train_bpe, text, 256 + 8)
    want, _ = reference_training(text, 8)
    tokens = [token for pair in merges for token in pair]
    assert all(token < 256 + 8 for token in tokens) and len(merges) == 8, (
        f"train_bpe({text!r}, 264) returned {merges}: start from the UTF-8 bytes of the text "
        f"(ids 0..255, not characters' code points); for example the first merge is "
        f"{next(iter(want))}"
    )


# --- Exercise 01.4: encode ------------------------------------------------------------------


def check_encode(impl, text, merges, want, rule):
    got = impl.encode(text, dict(merges))  # a copy: a learner's encode may edit its merges
    assert got == want, (
        f"encode({show(text)}, {show(merges) if len(merges) < 5 else 'merges'}) returned "
        f"{show(got)}, expected {show(want)}: {rule}"
    )


@pytest.mark.exercise("encode", points=1)
def test_encode_applies_merges_built_on_merges(impl):
    rule = "merge as long as some adjacent pair is in merges: later merges apply to merged tokens"
    check_encode(impl, "aaaaaa", A6_MERGES, [258], rule)
    # [97]*5 -> [256, 256, 97] -> [257, 97]; (257, 97) is not a merge.
    check_encode(impl, "aaaaa", A6_MERGES, [257, 97], rule)


@pytest.mark.exercise("encode", points=2)
def test_encode_merges_the_earliest_learned_pair_first(impl):
    # (b, c) was learned before (a, b): "abc" must become [a, bc], not [ab, c].
    rule = "merge the pair with the lowest merge id (learned first), not the most frequent one"
    check_encode(impl, "abc", {(98, 99): 256, (97, 98): 257}, [97, 256], rule)
    # "abab": (a, b) occurs twice but (b, a) was learned first: [a, ba, b]
    check_encode(impl, "abab", {(98, 97): 256, (97, 98): 257}, [97, 256, 98], rule)


@pytest.mark.exercise("encode", points=1)
def test_encode_without_merges_gives_utf8_bytes(impl):
    rule = "start from the UTF-8 bytes of the text (ids 0..255)"
    check_encode(impl, "", A6_MERGES, [], rule)
    check_encode(impl, "a", A6_MERGES, [97], rule)
    check_encode(impl, NON_ASCII, {}, list(NON_ASCII.encode("utf-8")), rule)


@pytest.mark.exercise("encode", points=2)
def test_encode_reproduces_the_training_tokens(impl):
    # Encoding the training text replays training exactly, so the result is known in advance.
    merges, training_ids = reference_training(SHAKESPEARE, 60)
    ids = impl.encode(SHAKESPEARE, dict(merges))
    assert ids == training_ids, (
        f"encode(training text, its 60 merges) gave {len(ids)} ids, not the {len(training_ids)} "
        "that training made: merge, as long as one is left, the pair learned first"
    )


@pytest.mark.exercise("encode", points=1)
def test_encode_unseen_text_fully_and_losslessly(impl):
    merges, _ = reference_training(SHAKESPEARE, 60)
    text = "Now is the winter of our discontent, made glorious summer — 🌞 café."
    ids = impl.encode(text, dict(merges))
    assert expand_to_bytes(ids, merges) == text.encode("utf-8"), (
        f"encode({text!r}, merges) gave ids whose bytes are not the text's UTF-8 bytes"
    )
    leftover = [pair for pair in zip(ids, ids[1:], strict=False) if pair in merges]
    assert not leftover, (
        f"encode({text!r}, merges) returned ids in which these pairs could still be merged: "
        f"{leftover}; merge as long as some adjacent pair is in merges"
    )


@pytest.mark.exercise("encode", points=1)
def test_encode_leaves_the_merges_unchanged(impl):
    merges = dict(A6_MERGES)
    impl.encode("aaaaaaa", merges)
    assert list(merges.items()) == list(A6_MERGES.items()), (
        f"encode('aaaaaaa', {A6_MERGES}) changed merges to {merges}: merges is left unchanged; "
        "leave the merges as they are (the tokenizer reuses them for every text)"
    )


# --- Exercise 01.5: decode ------------------------------------------------------------------

REPLACE = ('decode the joined bytes as UTF-8 with errors="replace": a token sequence can end '
           "in the middle of a character")


def check_decode(impl, ids, merges, want, rule):
    got = attempt(REPLACE, impl.decode, list(ids), dict(merges))
    assert got == want, (
        f"decode({show(ids)}, {show(merges) if len(merges) < 5 else 'merges'}) returned "
        f"{got!r}, expected {want!r}: {rule}"
    )


@pytest.mark.exercise("decode", points=1)
def test_decode_bytes(impl):
    rule = "join the bytes of all ids, then decode them as UTF-8 (a character may span ids)"
    check_decode(impl, [], {}, "", rule)
    check_decode(impl, list(b"hello"), {}, "hello", rule)
    check_decode(impl, list("é".encode()), {}, "é", rule)
    check_decode(impl, list(NON_ASCII.encode("utf-8")), {}, NON_ASCII, rule)


@pytest.mark.exercise("decode", points=1)
def test_decode_merged_tokens(impl):
    # 258 -> (257, 256) -> ((256, 256), 256) -> six a's; then 256 -> "aa"; then 97 -> "a".
    rule = ("a merged id stands for the bytes of its left part followed by those of its right "
            "part, which may be merged ids themselves")
    check_decode(impl, [258, 256, 97], A6_MERGES, "a" * 9, rule)
    check_decode(impl, [104, 256, 33], {(105, 105): 256}, "hii!", rule)


@pytest.mark.exercise("decode", points=1)
def test_decode_replaces_invalid_utf8(impl):
    check_decode(impl, [0xFF, 104], {}, "\ufffdh", f"0xFF is never valid UTF-8; {REPLACE}")
    # The first byte of "é" alone is half a character.
    check_decode(impl, [0xC3], {}, "\ufffd", f"0xC3 alone is half a character; {REPLACE}")


@pytest.mark.exercise("decode", points=1)
@pytest.mark.parametrize("text", [SHAKESPEARE, NON_ASCII], ids=["shakespeare", "non_ascii"])
def test_decode_inverts_encode(impl, text):
    merges, _ = reference_training(SHAKESPEARE, 60)
    ids = list(text.encode("utf-8"))
    for pair, new_id in merges.items():
        ids = merge_everywhere(ids, pair, new_id)
    got = attempt(REPLACE, impl.decode, ids, dict(merges))
    assert got == text, (
        f"decode(encode(text)) gave back {got[:60]!r}..., not the text {text[:60]!r}...: "
        "a merged id stands for the bytes of its left part followed by those of its right part, "
        "and the joined bytes decode as UTF-8"
    )
