"""Lesson 04 exercises: the chat template, the loss mask and the masked loss of finetuning.

Implement the four functions below; each matches a section of the lesson:

1. ``render_conversation``: a conversation as token ids, with its loss mask (section 2);
2. ``sft_targets``: the inputs and targets of one training row (section 3);
3. ``masked_cross_entropy``: the loss on the assistant's tokens only (section 3);
4. ``is_on_topic``: does an answer name its topic? (section 4).

Every docstring says exactly what to return, most with an example. Check your work with

    python -m minillm.grade 04

or, from the lesson notebook, ``minillm.grade.grade("04")``.
"""

import re

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # a target that adds nothing to the loss (as in minillm.model)


def render_conversation(conversation: list[dict], tokenizer) -> tuple[list[int], list[bool]]:
    """Write a conversation out in the chat template: token ids and a loss mask.

    Each message ``{"role": "user" | "assistant", "content": text}`` becomes the special token of
    its role (``<|user|>`` or ``<|assistant|>``), then its text encoded as *ordinary* text
    (``tokenizer.encode(text)``, so a message that contains "<|end|>" stays those seven
    characters), then ``<|end|>``. A special token's id is ``tokenizer.special_tokens[name]``.

    The loss mask has one entry per id: True on the assistant's text and on the ``<|end|>`` that
    closes an assistant turn (the model must learn to stop), False everywhere else (user turns,
    their ``<|end|>``, and every role token).

    Args:
        conversation: a list of messages, in order.
        tokenizer: a minillm tokenizer whose special tokens include the three above.

    Returns:
        ``(ids, loss_mask)``: two lists of the same length.

    Example:
        >>> from minillm.tokenizer import CharTokenizer
        >>> tok = CharTokenizer("abc", {"<|user|>": 3, "<|assistant|>": 4, "<|end|>": 5})
        >>> render_conversation([{"role": "user", "content": "ab"},
        ...                      {"role": "assistant", "content": "c"}], tok)
        ([3, 0, 1, 5, 4, 2, 5], [False, False, False, False, False, True, True])
    """
    special = tokenizer.special_tokens
    ids, mask = [], []
    for message in conversation:
        text = tokenizer.encode(message["content"])
        learned = message["role"] == "assistant"
        ids += [special[f"<|{message['role']}|>"], *text, special["<|end|>"]]
        mask += [False] + [learned] * (len(text) + 1)
    return ids, mask


def sft_targets(ids: list[int], loss_mask: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs and targets of one conversation for next-token training.

    The input is every id but the last; the target at position t is the next id, ``ids[t + 1]``,
    or ``IGNORE_INDEX`` where ``loss_mask[t + 1]`` is False, so that only the tokens the mask
    keeps are learned.

    Args:
        ids: a rendered conversation (at least two ids).
        loss_mask: one bool per id.

    Returns:
        ``(x, y)``: two 1-D ``torch.long`` tensors of ``len(ids) - 1`` entries.

    Example:
        >>> x, y = sft_targets([3, 0, 5, 4, 2, 5], [False, False, False, False, True, True])
        >>> x.tolist(), y.tolist()
        ([3, 0, 5, 4, 2], [-100, -100, -100, 2, 5])
    """
    ids, keep = torch.tensor(ids, dtype=torch.long), torch.tensor(loss_mask, dtype=torch.bool)
    return ids[:-1], ids[1:].masked_fill(~keep[1:], IGNORE_INDEX)


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy over the targets that are not ``IGNORE_INDEX``.

    Each kept position t of each row b contributes ``-log softmax(logits[b, t])[targets[b, t]]``;
    the result is the mean of those terms over all kept positions of the whole batch (not a mean
    of per-row means: a long answer counts for more tokens than a short one). Positions whose
    target is ``IGNORE_INDEX`` contribute nothing, however large their logits.

    Args:
        logits: (B, T, V) scores for the next token at every position.
        targets: (B, T) token ids, or ``IGNORE_INDEX``; at least one is kept.

    Returns:
        A scalar tensor, differentiable with respect to ``logits``.

    Example:
        >>> logits = torch.zeros(1, 2, 4)  # uniform over 4 tokens: log 4 at each position
        >>> round(masked_cross_entropy(logits, torch.tensor([[IGNORE_INDEX, 3]])).item(), 4)
        1.3863
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)
    keep = targets != IGNORE_INDEX
    picked = log_probs[keep].gather(-1, targets[keep][:, None]).squeeze(-1)
    return -picked.mean()


def is_on_topic(answer: str, topic: str) -> bool:
    """Whether an answer names its topic, by the lesson's rule.

    Split the answer, lowercased, into words: maximal runs of letters a-z that may contain
    apostrophes between letters (the regular expression ``[a-z]+(?:'[a-z]+)*``, so "Love's"
    gives "love's" and "lov'd" stays one word). The answer is on topic if one of its words is:

    - the topic itself, or the topic followed by one of ``s``, ``'s``, ``s'``, ``ly``, ``ful``,
      ``less``;
    - or the *stem* followed by one of ``ed``, ``'d``, ``ing``, ``er``, ``ers``, ``est``,
      ``'st``, ``eth``, where the stem is the topic without its final "e" if it ends in "e"
      ("love" -> "lov", as in "loving"), else the topic itself ("fear" -> "feared").

    Args:
        answer: the model's answer.
        topic: a lowercase word, such as "love".

    Returns:
        True or False.

    Example:
        >>> is_on_topic("I lov'd her once", "love"), is_on_topic("A kingdom for a horse!", "king")
        (True, False)
    """
    stem = topic[:-1] if topic.endswith("e") else topic
    forms = {topic + end for end in ("", "s", "'s", "s'", "ly", "ful", "less")}
    forms |= {stem + end for end in ("ed", "'d", "ing", "er", "ers", "est", "'st", "eth")}
    return any(word in forms for word in re.findall(r"[a-z]+(?:'[a-z]+)*", answer.lower()))
