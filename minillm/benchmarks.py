"""Likelihood benchmarks: what a language model's probabilities say, and what they cannot.

The cheapest evaluation of a language model reads no answer it writes: it asks how probable
the model finds text it has never seen.

- **Bits per character** on held-out text (``bits_per_char``): the pretraining loss in units a
  reader can compare across tokenizers. It says how well a model knows the *language*; it
  cannot rank assistants, because finetuning for answers moves a model away from raw text (the
  assistants of lessons 04-06 all score worse than the base model they came from, and answer
  far better).
- **Multiple choice scored by log-likelihood**, as MMLU-style harnesses do
  (``next_line_questions``, ``multiple_choice``): the model never writes; each candidate is
  scored by the mean log-probability of its tokens after the question, and the most probable
  one is the model's answer. Here the question is a line of Shakespeare held out from training
  and the candidates are four lines, one of which really follows it. Chance is 1/4; a
  *corrupted-input control* asks the same candidates after another question's line, so that
  what the model gets right without reading the question shows up.

Every figure comes with its standard error, as in ``minillm.evaluate``.
"""

from __future__ import annotations

import math
import random

import torch

from minillm.model import GPT
from minillm.policy import token_logprobs
from minillm.validate import is_int

# ----------------------------------------------------------------------------- bits per character

def held_out_text(text: str, fraction: float = 0.1) -> str:
    """The last ``fraction`` of ``text``: the part lessons 02-06 never trained on."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, not {fraction}.")
    return text[int((1 - fraction) * len(text)):]


@torch.no_grad()
def bits_per_char(model: GPT, tokenizer, text: str, windows: int = 64) -> dict:
    """How many bits per character ``model`` needs to encode ``text``, in ``windows`` windows of
    ``block_size`` tokens cut one after another from the start of ``text``.

    Each window's first token is context only; the others are predicted. Returns "bits_per_char"
    (total nats / ln 2 / characters predicted), its standard error "se" over windows, "windows"
    and "chars". For a character-level model bits per character is the loss in bits.

    Example: a model that knows nothing spreads its probability evenly over the 65 characters
    of tiny Shakespeare, log2(65) = 6.02 bits per character; lesson 02's base model needs ~2.5.
    """
    ids = tokenizer.encode(text)
    width = model.config.block_size
    available = len(ids) // width
    if not (is_int(windows) and windows >= 2):
        raise ValueError(f"windows must be an integer >= 2 (for a standard error), not {windows}.")
    if available < windows:
        raise ValueError(f"The text holds {available} windows of {width} tokens, fewer than "
                         f"windows={windows}.")
    device = next(model.parameters()).device
    batch = torch.tensor(ids[:windows * width], device=device).view(windows, width)
    nats = -token_logprobs(model(batch)[0], batch).sum(1).double().cpu()
    chars = torch.tensor([len(tokenizer.decode(row[1:].tolist())) for row in batch],
                         dtype=torch.float64)
    per_window = nats / math.log(2) / chars
    return {"bits_per_char": (nats.sum() / math.log(2) / chars.sum()).item(),
            "se": (per_window.std() / math.sqrt(windows)).item(),
            "windows": windows, "chars": int(chars.sum())}


# ----------------------------------------------------------------------------- multiple choice

def speeches(text: str) -> list[list[str]]:
    """The speeches of tiny Shakespeare: blocks separated by a blank line, each without its
    first line (the speaker's name), as lists of stripped lines."""
    return [[line.strip() for line in block.split("\n")[1:] if line.strip()]
            for block in text.split("\n\n")]


def next_line_questions(text: str, n: int = 200, choices: int = 4, seed: int = 0,
                        max_chars: int = 60) -> list[dict]:
    """``n`` questions "which line follows this one?" made from ``text`` (held-out text).

    A question is two consecutive lines of one speech, each of 20 to ``max_chars`` characters
    (so that a question and a candidate fit the quick model's context), and ``choices - 1``
    distractors: other lines of ``text`` whose length is within a quarter of the answer's, so
    that length gives nothing away. Returns dicts with "context", "choices" (shuffled) and
    "answer" (the index of the true next line); the same seed gives the same questions.

    Example: {"context": "That we may praise them or themselves prevent", "choices": [...,
    "Our after-meeting sorrows.", ...], "answer": 2}.
    """
    if not (is_int(choices) and choices >= 2):
        raise ValueError(f"choices must be an integer >= 2, not {choices}.")
    fits = [line for speech in speeches(text) for line in speech if 20 <= len(line) <= max_chars]
    pairs = [(a, b) for speech in speeches(text) for a, b in zip(speech, speech[1:])
             if 20 <= len(a) <= max_chars and 20 <= len(b) <= max_chars]
    rng = random.Random(seed)
    rng.shuffle(pairs)
    questions = []
    for context, follows in pairs:
        similar = [line for line in fits if line not in (context, follows)
                   and abs(len(line) - len(follows)) <= len(follows) / 4]
        if len(similar) < choices - 1:
            continue
        options = [follows] + rng.sample(similar, choices - 1)
        rng.shuffle(options)
        questions.append({"context": context, "choices": options,
                          "answer": options.index(follows)})
        if len(questions) == n:
            return questions
    raise ValueError(f"The text holds only {len(questions)} questions, fewer than n={n}.")


@torch.no_grad()
def choice_scores(model: GPT, context: list[int], choices: list[list[int]]) -> list[float]:
    """The mean log-probability per token of each candidate continuation of ``context``.

    Each candidate is appended to the context and read in one batch (right-padded); its score
    is the mean over its own tokens of log p(token | everything before it). The mean, not the
    sum: a sum would favour the shortest candidate, whatever it says (harnesses report both;
    the mean is their "normalized" accuracy).

    Example: with context "a" and candidates "b" and "cd", the scores are log p(b | a) and
    (log p(c | a) + log p(d | ac)) / 2.
    """
    if not context or not choices or not all(choices):
        raise ValueError("The context and every choice need at least one token.")
    width = len(context) + max(map(len, choices))
    ids = torch.zeros(len(choices), width, dtype=torch.long)
    mask = torch.zeros(len(choices), width - 1)
    for k, choice in enumerate(choices):
        ids[k, :len(context) + len(choice)] = torch.tensor(context + choice)
        # position t of token_logprobs predicts token t + 1: the choice's tokens
        mask[k, len(context) - 1:len(context) - 1 + len(choice)] = 1
    device = next(model.parameters()).device
    logp = token_logprobs(model(ids.to(device))[0], ids.to(device)).cpu()
    return ((logp * mask).sum(1) / mask.sum(1)).tolist()


def multiple_choice(model: GPT, tokenizer, questions: list[dict], corrupt: bool = False) -> dict:
    """The share of ``questions`` whose true next line ``model`` finds most probable
    (``choice_scores``), after the question's line and a newline.

    With ``corrupt``, each question is asked after the *next* question's line instead (a
    control: what is still right comes from the candidates alone, not from reading the
    question). Returns "accuracy", its binomial standard error "se", "chance" (1 / choices) and
    "n"; questions are independent, so the binomial formula holds.
    """
    if len(questions) < 2:
        raise ValueError(f"A benchmark needs at least two questions, not {len(questions)}.")
    right = 0
    for k, q in enumerate(questions):
        context = questions[(k + 1) % len(questions)]["context"] if corrupt else q["context"]
        scores = choice_scores(model, tokenizer.encode(context + "\n"),
                               [tokenizer.encode(c) for c in q["choices"]])
        right += max(range(len(scores)), key=scores.__getitem__) == q["answer"]
    n = len(questions)
    accuracy = right / n
    return {"accuracy": accuracy, "se": math.sqrt(accuracy * (1 - accuracy) / n),
            "chance": 1 / len(questions[0]["choices"]), "n": n}
