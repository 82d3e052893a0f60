"""The simulated world of lessons 04-06: what users ask, what the corpus answers, what a reader
wants, and a labeler who says which of two answers is better.

Everything here is made from tiny Shakespeare by code, deterministically from a seed, so it
needs no download and every claim about it can be checked:

- **The task** (lesson 04). The user names a topic and the assistant answers with a line of
  Shakespeare about it, then ends its turn::

      <|user|>Speak of love.<|end|><|assistant|>My love as deep; the more I give to thee,<|end|>

  The answers are real lines that name the topic (``is_on_topic``). Held out, to measure what a
  model learned rather than what it memorised: a tenth of the lines, the prompt phrasings
  ``HELD_OUT_PHRASINGS``, and ``UNSEEN_TOPICS``, words that are never a topic in training (a tiny
  character-level model does not learn to copy an unseen topic word from the prompt into its
  answer: those prompts show that limit honestly).
- **The gold reward** (lessons 05-06). ``gold_reward`` is a documented function of the topic and
  the answer that scores what a reader cares about (``WEIGHTS``: on topic, real words, a finished
  sentence and turn, a sensible length, no degenerate repetition). No model ever sees it: it is
  the *true* reward that the reward model and the tuned policies are measured against.
- **The labeler** (lesson 05). ``label`` prefers the answer of higher gold reward but, like a
  human annotator, gets a configurable share of comparisons wrong, so that two labelers agree
  about as often as human raters do (~70%).
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from functools import lru_cache

from minillm.data import load_shakespeare

# Frequent nouns of the corpus with a clear meaning: each has 60 to 500 lines about it.
TOPICS = ("love", "death", "king", "queen", "heart", "blood", "night", "crown", "god", "heaven",
          "honour", "soul", "fear", "father", "mother", "son", "world", "life", "hand", "peace",
          "war", "grief", "sleep", "earth")
# Never a topic in training (they may still occur inside training answers).
UNSEEN_TOPICS = ("sea", "horse", "fire", "sun", "sword", "gold", "moon", "music")
TRAIN_PHRASINGS = ("Speak of {}.", "Tell me of {}.", "What say you of {}?", "A line on {}.",
                   "Say something of {}.", "Give me a verse of {}.", "Of {}, I pray.",
                   "Let me hear of {}.")
# Short enough that every evaluation prompt leaves room for a 100-character answer in the
# quick model's context of 128 tokens.
HELD_OUT_PHRASINGS = ("Pray, speak of {}.", "What of {}?", "Talk to me of {}.")
# The shortest and longest lines used as answers, in characters (no line of tiny Shakespeare
# is longer than 63): also the range of a sensible answer's length.
LINE_CHARS = (20, 80)


# ----------------------------------------------------------------------------- topics

def topic_forms(topic: str) -> set[str]:
    """The words that count as naming ``topic``: the word itself, its plural and possessive, and
    the usual verb and adjective endings, Shakespeare's elided "'d" and "'st" included.

    As in English spelling, a final "e" drops before an ending that starts with a vowel or an
    apostrophe: ``topic_forms("love")`` is love, loves, love's, loves', lovely, loveful,
    loveless, loved, lov'd, loving, lover, lovers, lovest, lov'st and loveth. Prefixed and
    compound words (beloved, kingdom) and irregular plurals (lives) do not count: the rule
    stays simple enough to check by eye.
    """
    stem = topic[:-1] if topic.endswith("e") else topic
    return ({topic + end for end in ("", "s", "'s", "s'", "ly", "ful", "less")}
            | {stem + end for end in ("ed", "'d", "ing", "er", "ers", "est", "'st", "eth")})


def words(text: str) -> list[str]:
    """The lowercased words of ``text``: letters with inner apostrophes ("lov'd", "king's")."""
    return re.findall(r"[a-z]+(?:'[a-z]+)*", text.lower())


def is_on_topic(text: str, topic: str) -> bool:
    """Whether ``text`` names ``topic``: one of its words is in ``topic_forms(topic)``."""
    forms = topic_forms(topic)
    return any(word in forms for word in words(text))


# ----------------------------------------------------------------------------- the data

def corpus_lines(text: str, min_chars: int = LINE_CHARS[0],
                 max_chars: int = LINE_CHARS[1]) -> list[str]:
    """The distinct spoken lines of the corpus of ``min_chars`` to ``max_chars`` characters, in
    order of first appearance. Speakers' names (the first line of every speech) are left out."""
    lines, seen = [], set()
    previous = ""
    for line in text.split("\n"):
        is_name = previous == ""  # a speech starts after a blank line with "NAME:"
        previous = line
        line = line.strip()
        if not is_name and min_chars <= len(line) <= max_chars and line not in seen:
            seen.add(line)
            lines.append(line)
    return lines


@dataclass
class SFTData:
    """The SFT task's examples; each is a dict with "topic", "prompt" and (for answers) "answer".

    ``train``: the training conversations. ``held_out``: lines never trained on, asked with the
    held-out phrasings (the validation loss). ``prompts``: every held-out phrasing of every
    training topic, to answer and measure. ``unseen_prompts``: the same for ``UNSEEN_TOPICS``.
    """

    train: list[dict]
    held_out: list[dict]
    prompts: list[dict]
    unseen_prompts: list[dict]

    def __repr__(self) -> str:
        return (f"SFTData(train={len(self.train)}, held_out={len(self.held_out)}, "
                f"prompts={len(self.prompts)}, unseen_prompts={len(self.unseen_prompts)})")


def make_sft_data(text: str | None = None, seed: int = 0, held_out_fraction: float = 0.1,
                  phrasings_per_line: int = 2) -> SFTData:
    """The SFT examples made from ``text`` (default: tiny Shakespeare), the same for a seed.

    Every corpus line that names a training topic is an answer to that topic (a line naming two
    topics answers both). The lines are shuffled and ``held_out_fraction`` of them held out;
    each training line is asked with ``phrasings_per_line`` phrasings drawn from
    ``TRAIN_PHRASINGS``, each held-out line with one of ``HELD_OUT_PHRASINGS``.
    """
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must be between 0 and 1, not {held_out_fraction}.")
    if not 1 <= phrasings_per_line <= len(TRAIN_PHRASINGS):
        raise ValueError(f"phrasings_per_line must be from 1 to {len(TRAIN_PHRASINGS)}.")
    rng = random.Random(seed)
    forms = {topic: topic_forms(topic) for topic in TOPICS}
    lines = []  # (line, the topics it names)
    for line in corpus_lines(text or load_shakespeare()):
        named = set(words(line))
        topics = [topic for topic in TOPICS if named & forms[topic]]
        if topics:
            lines.append((line, topics))
    rng.shuffle(lines)
    n_held_out = round(held_out_fraction * len(lines))
    train_set, held_out = [], []
    for k, (line, topics) in enumerate(lines):
        held = k < n_held_out
        for topic in topics:
            phrasings = ([rng.choice(HELD_OUT_PHRASINGS)] if held
                         else rng.sample(TRAIN_PHRASINGS, phrasings_per_line))
            (held_out if held else train_set).extend(
                {"topic": topic, "prompt": phrasing.format(topic), "answer": line}
                for phrasing in phrasings)

    def prompts(topics):
        return [{"topic": t, "prompt": p.format(t)} for t in topics for p in HELD_OUT_PHRASINGS]

    return SFTData(train_set, held_out, prompts(TOPICS), prompts(UNSEEN_TOPICS))


def conversation(example: dict) -> list[dict]:
    """An example as a two-turn conversation: the prompt, then the answer."""
    return [{"role": "user", "content": example["prompt"]},
            {"role": "assistant", "content": example["answer"]}]


# ----------------------------------------------------------------------------- the gold reward

# What a reader cares about in an answer, and how much. Every quality is a number from 0 to 1,
# so the gold reward lies between -2 (a repeated non-word) and 3.5 (a perfect answer).
WEIGHTS = {
    "on_topic": 1.0,  # it answers what was asked: it names the topic (lesson 04's is_on_topic)
    "real_words": 1.0,  # the share of its words that are words (of the corpus), not gibberish
    "ended": 0.5,  # it closed its turn with <|end|> instead of running to the length limit
    "full_stop": 0.5,  # it ends like a sentence (. ! ?), not mid-clause ("and the,")
    "length": 0.5,  # 1 for a line's length (LINE_CHARS), less the further it strays
    "repetition": -2.0,  # a quarter per word that repeats an earlier one ("love, love"), to 1
}
# Words that a line may repeat without sounding broken ("the king, the queen"): the function
# words among the corpus's most frequent words. Content words (the topics among them) count.
FUNCTION_WORDS = frozenset((
    "the", "and", "to", "i", "of", "you", "my", "a", "an", "that", "in", "is", "not", "for",
    "with", "me", "it", "be", "your", "his", "this", "but", "he", "have", "as", "thou", "him",
    "so", "what", "thy", "will", "by", "no", "all", "we", "shall", "her", "if", "our", "are",
    "do", "thee", "now", "on", "o", "or", "from", "which", "then", "at", "would", "they", "was",
    "how", "she", "than", "their", "them", "am", "hath", "when", "us", "may", "were", "there",
))


@lru_cache(maxsize=1)
def corpus_words() -> frozenset[str]:
    """Every word of tiny Shakespeare (12,373 of them): the labeler's dictionary."""
    return frozenset(words(load_shakespeare()))


def gold_components(topic: str, answer: str, ended: bool) -> dict[str, float]:
    """The qualities of ``WEIGHTS`` of an answer to a prompt about ``topic``, each from 0 to 1.

    ``ended`` says whether the answer closed its turn. Words are lesson 04's ``words``.
    ``length`` rises linearly from 0 (an empty answer) to 1 at 20 characters, stays 1 up to 80
    and falls back linearly to 0 at 160. ``repetition`` is a quarter for each word that already
    occurred in the answer (function words excepted), at most 1: a count, not a share of the
    words, since a reader notices each repeat however long the line.
    """
    found = words(answer)
    low, high = LINE_CHARS
    n = len(answer)
    length = 1.0 if low <= n <= high else n / low if n < low else max(0.0, 2 - n / high)
    repeats, seen = 0, set()
    for word in found:
        repeats += word in seen and word not in FUNCTION_WORDS
        seen.add(word)
    known = corpus_words()
    return {
        "on_topic": float(is_on_topic(answer, topic)),
        "real_words": sum(word in known for word in found) / len(found) if found else 0.0,
        "ended": float(ended),
        "full_stop": float(answer.rstrip().endswith((".", "!", "?"))),
        "length": length,
        "repetition": min(1.0, repeats / 4),
    }


def gold_reward(topic: str, answer: str, ended: bool) -> float:
    """The true reward of an answer: its ``gold_components`` weighted by ``WEIGHTS``.

    Rounded to 6 decimals, so that answers of equal qualities tie exactly.
    """
    parts = gold_components(topic, answer, ended)
    return round(sum(WEIGHTS[name] * value for name, value in parts.items()), 6)


def with_gold(responses: list[dict]) -> list[dict]:
    """Each answer (a dict with "topic", "answer" and "ended") with its "gold" reward added."""
    return [{**r, "gold": gold_reward(r["topic"], r["answer"], r["ended"])} for r in responses]


def label(gold_a: float, gold_b: float, agreement: float, rng: random.Random) -> int | None:
    """A noisy labeler's verdict on two answers: 0 if it prefers the first, 1 the second.

    With probability ``agreement`` it prefers the answer of higher gold reward, otherwise the
    other one. Two such labelers agree with each other with probability p^2 + (1 - p)^2, 0.68
    for p = 0.8: about the agreement reported between human raters (~70%, InstructGPT). Two
    answers of equal gold reward are a tie that it does not call: None.
    """
    if gold_a == gold_b:
        return None
    better = 0 if gold_a > gold_b else 1
    return better if rng.random() < agreement else 1 - better


# ----------------------------------------------------------------------------- comparisons

@dataclass
class Comparisons:
    """Answers to a set of prompts and the labeler's verdicts on pairs of them.

    ``responses``: dicts with "topic", "prompt", "answer", "ended" and "gold" (the gold reward).
    ``pairs``: (chosen, rejected) indices into ``responses``: two answers to the same prompt,
    the first preferred by the labeler.
    """

    responses: list[dict]
    pairs: list[tuple[int, int]]

    def agreement_with_gold(self) -> float:
        """The share of pairs where the labeler preferred the answer of higher gold reward."""
        gold = [r["gold"] for r in self.responses]
        return sum(gold[c] > gold[r] for c, r in self.pairs) / len(self.pairs)

    def __repr__(self) -> str:
        prompts = len({r["prompt"] for r in self.responses})
        return (f"Comparisons(prompts={prompts}, responses={len(self.responses)}, "
                f"pairs={len(self.pairs)})")


def preference_prompts() -> tuple[list[dict], list[dict]]:
    """The prompts whose answers are compared: every topic in each of lesson 04's training
    phrasings (to train on) and in each held-out phrasing (to measure on)."""
    def ask(phrasings):
        return [{"topic": t, "prompt": p.format(t)} for t in TOPICS for p in phrasings]

    return ask(TRAIN_PHRASINGS), ask(HELD_OUT_PHRASINGS)


def compare_all_pairs(responses: list[dict], agreement: float,
                      rng: random.Random) -> Comparisons:
    """Have the labeler compare every pair of answers to the same prompt (ties left out)."""
    by_prompt: dict[str, list[int]] = {}
    for k, response in enumerate(responses):
        by_prompt.setdefault(response["prompt"], []).append(k)
    pairs = []
    for group in by_prompt.values():
        for a, b in itertools.combinations(group, 2):
            verdict = label(responses[a]["gold"], responses[b]["gold"], agreement, rng)
            if verdict is not None:
                pairs.append((a, b) if verdict == 0 else (b, a))
    return Comparisons(responses, pairs)
