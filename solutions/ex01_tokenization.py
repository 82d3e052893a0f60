"""Lesson 01 exercises, solved: byte-level byte-pair encoding (BPE) from scratch.

These are the reference implementations of the stubs in ``exercises/ex01_tokenization.py``:
the same signatures and docstrings, with bodies. They favour clarity over speed; the package's
``minillm.tokenizer`` is the fast version of the same algorithm.
"""

from itertools import pairwise


def get_pair_counts(ids: list[int]) -> dict[tuple[int, int], int]:
    """Count how often each pair of adjacent ids occurs in ``ids``.

    Every position counts, so overlapping pairs are all counted: ``[5, 5, 5]`` holds the pair
    ``(5, 5)`` twice. A list with fewer than two ids has no pairs.

    Args:
        ids: a sequence of token ids.

    Returns:
        A dict mapping each adjacent pair ``(left, right)`` to its number of occurrences.

    Example:
        >>> get_pair_counts([1, 2, 3, 1, 2])
        {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    """
    counts: dict[tuple[int, int], int] = {}
    for pair in pairwise(ids):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` by the single id ``new_id``.

    Scan from left to right; once two ids have been merged, neither can be part of another
    merge, so occurrences never overlap: merging ``(97, 97)`` in ``[97, 97, 97]`` gives
    ``[256, 97]``. The input list is left unchanged.

    Args:
        ids: a sequence of token ids.
        pair: the two adjacent ids to merge.
        new_id: the id that replaces each merged pair.

    Returns:
        A new list of ids.

    Example:
        >>> merge_pair([1, 2, 3, 1, 2], (1, 2), 256)
        [256, 3, 256]
    """
    merged = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def train_bpe(text: str, vocab_size: int) -> dict[tuple[int, int], int]:
    """Learn ``vocab_size - 256`` BPE merges from ``text``.

    Start from the UTF-8 bytes of ``text`` (ids 0..255). Each step counts the adjacent pairs,
    picks the most frequent one (break ties any way you like), gives it the next free id
    (256, then 257, ...) and merges it everywhere before the next step. Stop early if no pairs
    are left (the whole text has become a single token).

    Args:
        text: the training text.
        vocab_size: the size of the final vocabulary, at least 256.

    Returns:
        The merges, in the order they were learned: ``{(left, right): new_id, ...}``.

    Example:
        >>> train_bpe("aaaaaa", 259)
        {(97, 97): 256, (256, 256): 257, (257, 256): 258}
    """
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be at least 256 (one id per byte), not {vocab_size}.")
    ids = list(text.encode("utf-8"))
    merges: dict[tuple[int, int], int] = {}
    for new_id in range(256, vocab_size):
        counts = get_pair_counts(ids)
        if not counts:
            break
        most_frequent = max(counts, key=counts.get)
        ids = merge_pair(ids, most_frequent, new_id)
        merges[most_frequent] = new_id
    return merges


def encode(text: str, merges: dict[tuple[int, int], int]) -> list[int]:
    """Turn ``text`` into token ids with the learned ``merges``.

    Start from the UTF-8 bytes of ``text``. Then, as long as some adjacent pair is in
    ``merges``, merge the one with the lowest merge id (the one learned first), because
    training applied the merges in that order and later merges were built on earlier ones.
    ``merges`` is left unchanged.

    Args:
        text: the text to encode.
        merges: ``{(left, right): new_id}`` as returned by ``train_bpe``.

    Returns:
        The token ids.

    Example:
        >>> encode("aaab", {(97, 97): 256})
        [256, 97, 98]
    """
    ids = list(text.encode("utf-8"))
    while len(ids) >= 2:
        pairs = get_pair_counts(ids)
        first_learned = min(pairs, key=lambda pair: merges.get(pair, float("inf")))
        if first_learned not in merges:
            break
        ids = merge_pair(ids, first_learned, merges[first_learned])
    return ids


def decode(ids: list[int], merges: dict[tuple[int, int], int]) -> str:
    """Turn token ids back into text.

    Each id stands for a sequence of bytes: ids below 256 are single bytes, and a merged id
    stands for the bytes of its left part followed by those of its right part. Join the bytes
    of all ids and decode them as UTF-8 with ``errors="replace"``: a token sequence can end in
    the middle of a multi-byte character, and that must not crash.

    Args:
        ids: token ids.
        merges: ``{(left, right): new_id}`` as returned by ``train_bpe``.

    Returns:
        The decoded text.

    Example:
        >>> decode([256, 98], {(97, 97): 256})
        'aab'
    """
    token_bytes = {byte: bytes([byte]) for byte in range(256)}
    # Sorting by id makes sure both parts of a merge are known before the merge itself.
    for (left, right), new_id in sorted(merges.items(), key=lambda item: item[1]):
        token_bytes[new_id] = token_bytes[left] + token_bytes[right]
    return b"".join(token_bytes[i] for i in ids).decode("utf-8", errors="replace")
