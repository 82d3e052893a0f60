"""Presentation helpers for the lessons: text made visible, tokens as boxes, attention heatmaps.

Nothing here computes anything a model needs; these functions only draw. They take plain data
(strings, lists, tensors or arrays) so that any lesson can reuse them.
"""

from __future__ import annotations

import html

# Soft colours that tell neighbouring tokens apart on a white or a dark background.
PASTELS = ["#ffd6a5", "#caffbf", "#a0c4ff", "#ffc6ff", "#fdffb6", "#9bf6ff"]
_VISIBLE = {" ": "·", "\n": "↵", "\t": "→"}


def visible(text: str) -> str:
    """``text`` with spaces, newlines and tabs shown as ``·``, ``↵`` and ``→``."""
    return "".join(_VISIBLE.get(c, c) for c in text)


def tokens_html(pieces: list[str], titles: list[str] | None = None) -> str:
    """The strings ``pieces`` (one per token) as coloured boxes in one line of HTML.

    Whitespace is made visible; a newline also breaks the line. ``titles`` (one per piece, e.g.
    the token id) appear when the mouse hovers over a box.
    """
    if titles is not None and len(titles) != len(pieces):
        raise ValueError(f"Got {len(titles)} titles for {len(pieces)} pieces; give one each.")
    boxes = []
    for k, piece in enumerate(pieces):
        shown = html.escape(visible(piece)).replace("↵", "↵<br>")
        title = "" if titles is None else f' title="{html.escape(str(titles[k]))}"'
        boxes.append(f'<span{title} style="background:{PASTELS[k % len(PASTELS)]};color:#000;'
                     f'border-radius:3px;padding:1px 0">{shown}</span>')
    return ('<div style="font-family:monospace;font-size:14px;line-height:1.9">'
            f'{"".join(boxes)}</div>')


def attention_heatmap(weights, labels: list[str], ax=None, title: str | None = None):
    """Draw a (T, T) attention matrix: row i is where query position i looks, column j the key.

    ``labels`` name the T positions (characters or tokens; whitespace is made visible) and mark
    both axes. Returns the matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    weights = weights.detach().cpu().numpy() if hasattr(weights, "detach") else weights
    if weights.ndim != 2 or weights.shape[0] != weights.shape[1]:
        raise ValueError(f"Attention weights must be a square (T, T) matrix, not {weights.shape}.")
    if len(labels) != weights.shape[0]:
        raise ValueError(f"Got {len(labels)} labels for {weights.shape[0]} positions.")
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(weights, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = range(len(labels))
    shown = [visible(label) for label in labels]
    ax.set_xticks(ticks, shown, fontsize=7, fontfamily="monospace")
    ax.set_yticks(ticks, shown, fontsize=7, fontfamily="monospace")
    ax.tick_params(length=0)
    ax.set_xlabel("key (looked at)")
    ax.set_ylabel("query (looking)")
    if title:
        ax.set_title(title, fontsize=9)
    return ax
