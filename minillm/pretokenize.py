r"""The split before BPE: a regex cuts text into pieces, and merges never cross a piece boundary.

The pieces are words with their leading space, runs of digits, punctuation and whitespace, so
"dog." and "dog!" share "dog". ``split_text`` cuts exactly where tiktoken does.

The ids are tiktoken's for every text (lone surrogates become U+FFFD in both), whatever the
versions of `regex` and tiktoken, for split patterns whose Unicode-dependent parts are \p{...}
classes, \s and case-insensitive ASCII letters, as in GPT-2's, GPT-4's and GPT-4o's patterns:
each \p{...} class is given the characters that the installed tiktoken puts in it (see
``tiktoken_equivalent``), and \s and ASCII case folding are the same in both engines, as the
tests check for every character. Other Unicode-dependent syntax (\w, \d, \b, \P{...}, non-ASCII
case folding) follows `regex`'s own tables.
"""

from __future__ import annotations

import functools

import regex

# The split patterns of GPT-2 (tiktoken's r50k_base) and GPT-4 (cl100k_base).
GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}


def split_text(text: str, pattern: str) -> list[str]:
    """Cut ``text`` into the pieces that BPE merges within, exactly where tiktoken cuts them.

    >>> split_text("Hello world's 2024!!", GPT4_PATTERN)
    ['Hello', ' world', "'s", ' ', '202', '4', '!!']
    """
    # ASCII letters, digits and spaces are the same in every Unicode version, so ASCII text
    # needs no correction (and this keeps the common case on the faster, plain pattern).
    compiled = regex.compile(pattern) if text.isascii() else tiktoken_equivalent(pattern)
    return compiled.findall(text)


# ---- Unicode tables ----------------------------------------------------------------------------
# \p{L} (letters), \p{N} (numbers) and the other classes of a pattern are looked up in Unicode
# tables, and the `regex` module and tiktoken's Rust regex engine each carry their own copy. When
# the copies are from different Unicode versions they disagree about the characters added or
# recategorized in between: regex 2026.5.9 follows Unicode 17.0 and tiktoken 0.14 Unicode 16.0,
# so to regex the ~4,700 characters new in 17.0 are letters and numbers, to tiktoken unassigned,
# and "\u088f's" is cut differently (and "\u0295", a lowercase letter until 17.0, too). So that
# the ids are tiktoken's whatever either package's version, each \p{...} class of a pattern is
# rewritten to hold exactly the characters tiktoken puts in it, measured by asking tiktoken.

_CLASS = r"\\p\{[^}]*\}"  # a character class of a pattern, such as \p{L} or \p{Lu}


@functools.cache
def tiktoken_equivalent(pattern: str) -> regex.Pattern:
    r"""``pattern`` compiled so that each of its ``\p{...}`` classes holds tiktoken's characters.

    A class is kept as it is where the two agree; otherwise the characters only regex puts in
    it are subtracted and those only tiktoken puts in it are added, e.g. ``\p{L}`` becomes
    ``[\p{L}--[\U0000088f-\U00033479&&[\U0000088f\U00000c5c...]]]``. Takes about 0.2 s per
    class, once per pattern.
    """
    every_character = "".join(map(chr, [*range(0xD800), *range(0xE000, 0x110000)]))
    classes = set(regex.findall(_CLASS, pattern))
    exact = {cls: _as_tiktoken_reads_it(cls, every_character) for cls in classes}
    rewritten = regex.sub(_CLASS, lambda match: exact[match.group()], pattern)
    if rewritten == pattern:
        return regex.compile(pattern)
    # Set difference (--) needs regex's version 1 syntax; (?-f) turns off the full case folding
    # that comes with it, keeping the simple folding of version 0 and of tiktoken.
    return regex.compile("(?-f)" + rewritten, regex.V1)


def _as_tiktoken_reads_it(cls: str, every_character: str) -> str:
    r"""The class ``cls`` (e.g. ``\p{L}``) as a regex set of the characters tiktoken puts in it."""
    import tiktoken

    # A pattern of just the class matches one of its characters at a time; tiktoken skips the
    # text between matches, and with no merges each match encodes to its own bytes.
    try:
        probe = tiktoken.Encoding("probe", pat_str=cls, special_tokens={},
                                  mergeable_ranks={bytes([b]): b for b in range(256)})
    except ValueError:
        return cls  # tiktoken cannot read this class: there are no tiktoken ids to agree with
    theirs = set(probe.decode(probe.encode_ordinary(every_character)))
    ours = set(regex.findall(cls, every_character))
    if ours - theirs:
        cls = f"[{cls}--{_regex_set(ours - theirs)}]"
    if theirs - ours:
        cls = f"[{cls}{_regex_set(theirs - ours)}]"
    return cls


def _regex_set(chars: set[str]) -> str:
    r"""A regex set (version 1 syntax) of ``chars``, as ranges within their span:

    {"a", "b", "c", "x"} -> "[\U00000061-\U00000078&&[\U00000061-\U00000063\U00000078]]"

    The span is tested first: one comparison spares most characters the scan of every range
    (it makes the split of non-ASCII text about 20% faster).
    """
    points, ranges = sorted(map(ord, chars)), []
    for point in points:
        if ranges and ranges[-1][1] == point - 1:
            ranges[-1][1] = point
        else:
            ranges.append([point, point])
    listed = "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)
    return f"[\\U{points[0]:08x}-\\U{points[-1]:08x}&&[{listed}]]"


def without_surrogates(text: str) -> str:
    # Lone surrogates cannot be UTF-8 encoded; tiktoken replaces them with U+FFFD, and so do we.
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
