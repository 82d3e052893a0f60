"""The chat template: how a conversation becomes one stream of tokens, and how a model answers.

A language model only ever continues a sequence of tokens. To make it *answer*, a conversation
is written out in a fixed format that marks who speaks, with special tokens that ordinary text
can never produce::

    <|user|>Speak of love.<|end|><|assistant|>My love as deep; the more I give to thee,<|end|>

Finetuning teaches the model this format (lesson 04): after ``<|assistant|>`` comes an answer,
and the answer ends with ``<|end|>``. To ask for an answer, the conversation so far is written
out and ends with ``<|assistant|>``: the model's continuation is its turn.

Two rules make the template safe and the training signal clean:

- The messages are encoded as ordinary text, so a message that contains "<|assistant|>" or
  "<|end|>" is just those characters and can never open or close a turn (prompt injection at
  the level of tokens is impossible).
- Only the assistant's tokens and its ``<|end|>`` carry loss (``loss_mask``): the model learns
  to answer, not to predict what users say.
"""

from __future__ import annotations

import torch

from minillm.tools import CALL, encode_with_tools, pending_call, tool_ids, tool_result

USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
ROLES = {"user": USER, "assistant": ASSISTANT}
# The course's tokenizers reserve these from the start (with a document separator), so that the
# chat template of lesson 04 needs no new embeddings.
SPECIAL_TOKENS = ["<|endoftext|>", USER, ASSISTANT, END]


def chat_ids(tokenizer) -> dict[str, int]:
    """The ids of the template's special tokens in ``tokenizer`` (keyed by their text)."""
    missing = [t for t in (USER, ASSISTANT, END) if t not in tokenizer.special_tokens]
    if missing:
        raise ValueError(f"The tokenizer has no chat tokens {missing}; use one made with "
                         f"minillm.chat.SPECIAL_TOKENS (e.g. minillm.data.char_tokenizer()).")
    return {t: tokenizer.special_tokens[t] for t in (USER, ASSISTANT, END)}


def _check(conversation) -> None:
    if not isinstance(conversation, list | tuple) or not conversation:
        raise ValueError("A conversation is a non-empty list of {'role', 'content'} messages.")
    for k, message in enumerate(conversation):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ValueError(f"Message {k} must be a dict whose 'role' is 'user' or "
                             f"'assistant', not {message!r}.")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"Message {k} needs its text as a string in 'content'.")


def render(conversation: list[dict], tokenizer) -> tuple[list[int], list[bool]]:
    """A conversation as token ids, and the loss mask: True where a token is to be learned.

    Each message becomes ``<|role|>`` + its text (as ordinary text) + ``<|end|>``. The mask is
    True on the assistant's text and on the ``<|end|>`` that closes its turn (the model must learn
    to stop), False on everything else: the user's turns and the ``<|assistant|>`` token itself,
    which the prompt always supplies. An assistant's tool calls are the exception to "ordinary
    text" (when the tokenizer has tool tokens): ``minillm.tools.encode_with_tools`` makes them
    tokens and masks the results the runtime wrote.
    """
    _check(conversation)
    special = chat_ids(tokenizer)
    ids, mask = [], []
    for message in conversation:
        if message["role"] == "assistant":  # its tool calls are tokens, their results unlearned
            text, learned = encode_with_tools(message["content"], tokenizer)
        else:  # no allowed_special: plain text only
            text = tokenizer.encode(message["content"])
            learned = [False] * len(text)
        ids += [special[ROLES[message["role"]]], *text, special[END]]
        mask += [False, *learned, message["role"] == "assistant"]
    return ids, mask


def prompt_ids(conversation: list[dict], tokenizer) -> list[int]:
    """The ids that ask for the next assistant turn: the conversation, then ``<|assistant|>``."""
    _check(conversation)
    if conversation[-1]["role"] != "user":
        raise ValueError("To prompt for an answer the conversation must end with a user message.")
    return render(conversation, tokenizer)[0] + [chat_ids(tokenizer)[ASSISTANT]]


def as_conversation(prompt) -> list[dict]:
    """A user's message (a string) as a one-message conversation; a conversation as it is."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


@torch.no_grad()
def sample_answers(model, tokenizer, prompts: list, max_new_tokens: int = 100,
                   temperature: float = 0.8, top_k: int | None = None,
                   top_p: float | None = None, generator: torch.Generator | None = None,
                   forced: list | None = None) -> tuple[list[list[int]], list[list[int]]]:
    """Sample an answer to each prompt, all in one batch: (prompt ids, answer ids) per prompt.

    Each prompt is a user message (a string) or a conversation ending with a user message.
    The prompts are left-padded to one length, and the attention mask hides the padding, so
    every answer is the one that prompt would get alone (exactly so under greedy decoding,
    ``temperature=0``). An answer stops at the first special token, which it keeps as its last
    id (``<|end|>`` when the model closed its turn itself). An answer is at most
    ``max_new_tokens`` long, and shorter if its prompt would otherwise outgrow the model's
    context (block_size).

    With a tokenizer that has tool tokens (``minillm.tools``), an answer that closes a call
    with ``<|/calc|>`` is not finished: the runtime appends the call's result
    (``tool_result``, an error result for a malformed call) and the model goes on from there.
    ``forced``, if given a list, receives one list per answer, True on each id the runtime
    wrote rather than the model.
    """
    if not prompts:
        return [], []
    calling = {tool_ids(tokenizer).get(CALL)}  # opening a call does not end an answer
    stops = set(tokenizer.special_tokens.values()) - calling  # a new turn or document does
    rows = [prompt_ids(as_conversation(p), tokenizer) for p in prompts]
    block = model.config.block_size
    # Each row's own budget keeps prompt + answer within the context the model was trained on.
    budgets = [min(max_new_tokens, block - len(r)) for r in rows]
    if min(budgets) < 1:
        raise ValueError(f"A prompt of {max(map(len, rows))} tokens leaves no room for an answer "
                         f"in the model's context of {block} tokens; shorten it.")
    pad = chat_ids(tokenizer)[END]  # any id will do: padding is masked out, never attended to
    device = next(model.parameters()).device
    answers, written = [[] for _ in rows], [[] for _ in rows]
    waiting = list(range(len(rows)))  # answers not finished: all, then those after a call
    while waiting:
        sequences = [rows[i] + answers[i] for i in waiting]
        width = max(map(len, sequences))
        idx = torch.tensor([[pad] * (width - len(r)) + r for r in sequences])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in sequences])
        rooms = [budgets[i] - len(answers[i]) for i in waiting]
        # The batch runs for the largest room left; each row is then cut to its own.
        out = model.generate(idx.to(device), max(rooms), temperature=temperature, top_k=top_k,
                             top_p=top_p, stop=stops, attention_mask=mask.to(device),
                             generator=generator)
        called = []
        for i, new, room in zip(waiting, out[:, width:].tolist(), rooms):
            new = new[:room]
            length = next((k + 1 for k, t in enumerate(new) if t in stops), len(new))
            answers[i] += new[:length]
            written[i] += [False] * length
            call = pending_call(answers[i], tokenizer)
            if call is not None and len(answers[i]) < budgets[i]:
                result = tokenizer.encode(tool_result(call))[:budgets[i] - len(answers[i])]
                answers[i] += result
                written[i] += [True] * len(result)
                if len(answers[i]) < budgets[i]:
                    called.append(i)
        waiting = called
    if forced is not None:
        forced.extend(written)
    return rows, answers


def respond(model, tokenizer, prompts: list, max_new_tokens: int = 100,
            temperature: float = 0.8, top_k: int | None = None, top_p: float | None = None,
            generator: torch.Generator | None = None) -> tuple[list[str], list[bool]]:
    """The model's answers to a batch of prompts, generated together: (texts, ended).

    ``sample_answers`` does the sampling; ``ended[i]`` says whether answer i stopped at
    ``<|end|>``, i.e. whether the model closed its turn itself. The text leaves out the special
    token that ended it.
    """
    end = chat_ids(tokenizer)[END]
    stops = set(tokenizer.special_tokens.values()) - set(tool_ids(tokenizer).values())
    _, answers = sample_answers(model, tokenizer, prompts, max_new_tokens, temperature, top_k,
                                top_p, generator)
    texts, ended = [], []
    for answer in answers:
        stopped = bool(answer) and answer[-1] in stops
        texts.append(tokenizer.decode(answer[:-1] if stopped else answer))
        ended.append(stopped and answer[-1] == end)
    return texts, ended
