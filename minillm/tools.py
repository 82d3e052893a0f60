"""Tools: a model that writes a call, and a runtime that answers it.

A model is bad at some things a few lines of code do perfectly (adding 3-digit numbers, for a
tiny one). So it learns to *ask*: it writes a call between two special tokens, and the program
running it (the runtime) evaluates the call and writes the result into the sequence, as if
the model had written it::

    <|assistant|><|calc|>37+48<|/calc|>85
    So 85.<|end|>
                 ~~~~~~~~~~~~~~~~~~~~~~    the model writes the call ...
                                     ~~~   ... the runtime writes the result and a newline ...
                                        ~~~~~~~~~~~  ... and the model answers from it.

Three rules make this work:

- The result is *forced*: the runtime appends its tokens, the model does not sample them. So in
  training the result tokens carry no loss (``encode_with_tools``'s mask): the model must
  learn to call and to read a result, never to guess one.
- The runtime never runs the model's text as code: ``calculate`` is a tiny evaluator of
  integers, ``+ - *`` and parentheses, and anything else (a malformed call) is answered with an
  error result, never an exception (``tool_result``). The model can learn from an error; a
  crash would end the conversation.
- Only the assistant's turn may hold tool tokens: a user's text stays plain text
  (``minillm.chat.render``), so no one can forge a result.

The course's tokenizers had no such tokens (nor most digits: tiny Shakespeare has only the
"3"), so they are added after training: ``CharTokenizer.with_tokens`` gives them new ids and
``minillm.model.grow_vocabulary`` new embedding rows; every old checkpoint stays as it was.
"""

from __future__ import annotations

CALL, CALL_END = "<|calc|>", "<|/calc|>"
TOOL_TOKENS = [CALL, CALL_END]
# What a call and its answer are written with, beyond the corpus's characters.
TOOL_CHARS = "0123456789+-*()="
RESULT_END = "\n"  # the runtime closes every result with a newline: there the model resumes
MAX_CALL_CHARS = 40  # a longer call is an error, not a long computation
MAX_RESULT_DIGITS = 30


class CalcError(ValueError):
    """A call ``calculate`` cannot evaluate. The message says why in letters, digits and
    spaces only, never quoting the call, so that any tokenizer can write it into a result."""


def calculate(expression: str) -> int:
    """The value of an arithmetic expression: integers, ``+``, ``-``, ``*`` and parentheses,
    with the usual precedence, evaluated by a recursive-descent parser (never ``eval``).

    >>> calculate("37+48"), calculate("2*(3+4)-5"), calculate("-7+10")
    (85, 9, 3)

    Raises ``CalcError`` for anything else: a name, a division, an empty or unbalanced call.
    """
    text = expression.replace(" ", "")
    if not text:
        raise CalcError("the call is empty")
    if len(text) > MAX_CALL_CHARS:
        raise CalcError(f"the call is longer than {MAX_CALL_CHARS} characters")
    position = 0

    def peek() -> str:
        return text[position] if position < len(text) else ""

    def take() -> str:
        nonlocal position
        position += 1
        return text[position - 1]

    def expr() -> int:  # expr := term (("+" | "-") term)*
        value = term()
        while peek() in ("+", "-"):
            value = value + term() if take() == "+" else value - term()
        return value

    def term() -> int:  # term := factor ("*" factor)*
        value = factor()
        while peek() == "*":
            take()
            value *= factor()
        return value

    def factor() -> int:  # factor := "-" factor | "(" expr ")" | digits
        if peek() == "-":
            take()
            return -factor()
        if peek() == "(":
            take()
            value = expr()
            if peek() != ")":
                raise CalcError("a parenthesis is not closed")
            take()
            return value
        start = position
        while peek().isdigit() and peek().isascii():
            take()
        if start == position:
            raise CalcError("a number was expected" + ("" if peek() else " at the end"))
        return int(text[start:position])

    value = expr()
    if position < len(text):
        raise CalcError(f"the call has more after character {position}")
    if len(str(abs(value))) > MAX_RESULT_DIGITS:
        raise CalcError(f"the result has more than {MAX_RESULT_DIGITS} digits")
    return value


def tool_result(call: str) -> str:
    """What the runtime writes after a call: the value, or ``error`` and why, then
    ``RESULT_END``. Never raises: a model's malformed call gets an answer it can read.

    >>> tool_result("37+48"), tool_result("37+")
    ('85\\n', 'error: a number was expected at the end\\n')
    """
    try:
        return f"{calculate(call)}{RESULT_END}"
    except CalcError as err:
        return f"error: {err}{RESULT_END}"


def tool_ids(tokenizer) -> dict[str, int]:
    """The ids of the tool tokens in ``tokenizer``, empty if it has none (then no tools)."""
    special = tokenizer.special_tokens
    return {t: special[t] for t in TOOL_TOKENS} if all(t in special for t in TOOL_TOKENS) else {}


def pending_call(ids: list[int], tokenizer) -> str | None:
    """The text of the call that ``ids`` (an answer so far) has just closed with ``<|/calc|>``,
    or None if it has not. A close without an open is a call of the empty text (an error)."""
    tools = tool_ids(tokenizer)
    if not tools or not ids or ids[-1] != tools[CALL_END]:
        return None
    opened = max((k for k, t in enumerate(ids) if t == tools[CALL]), default=len(ids) - 1)
    return tokenizer.decode(ids[opened + 1:-1])


def encode_with_tools(text: str, tokenizer) -> tuple[list[int], list[bool]]:
    """An assistant's text with tool calls as ids, and the loss mask: False on each result.

    ``<|calc|>`` and ``<|/calc|>`` in ``text`` become their special tokens (when ``tokenizer``
    has them; otherwise all is plain text), and the result the runtime wrote after a call, up
    to and including its ``RESULT_END``, is masked: the runtime supplies it, so the model is
    not taught to predict it.

    >>> from minillm.tokenizer import CharTokenizer
    >>> tok = CharTokenizer("\\nSo. ").with_tokens(TOOL_CHARS, TOOL_TOKENS)
    >>> ids, mask = encode_with_tools("<|calc|>1+2<|/calc|>3\\nSo 3.", tok)
    >>> "".join("x" if m else "." for m in mask)
    'xxxxx..xxxxx'
    """
    tools = tool_ids(tokenizer)
    if not tools:
        ids = tokenizer.encode(text)
        return ids, [True] * len(ids)
    ids = tokenizer.encode(text, allowed_special=set(TOOL_TOKENS))
    mask, forced = [], False
    newline = tokenizer.encode(RESULT_END)
    for k, token in enumerate(ids):
        mask.append(not forced)
        if token == tools[CALL_END]:
            forced = True
        elif forced and ids[k:k + len(newline)] == newline:
            forced = False
    return ids, mask


def with_tool_tokens(model, tokenizer):
    """(model, tokenizer) able to write calls: the character tokenizer grown by ``TOOL_CHARS``
    and ``TOOL_TOKENS`` (old ids unchanged), and a copy of ``model`` with an embedding row for
    each new token (``minillm.model.grow_vocabulary``). ``model`` itself is left as it was."""
    # Imported here, not at the top, so that the calculator and the tool loop need no PyTorch:
    # minillm.numpy_runner answers calls with them.
    from minillm.model import grow_vocabulary

    grown = tokenizer.with_tokens(TOOL_CHARS, TOOL_TOKENS)
    return grow_vocabulary(model, grown.vocab_size), grown
