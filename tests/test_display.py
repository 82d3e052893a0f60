import matplotlib
import pytest
import torch

from minillm.display import attention_heatmap, tokens_html, visible

matplotlib.use("Agg")


def test_visible_whitespace():
    assert visible("a b\nc\td") == "a·b↵c→d"
    assert visible("") == ""


def test_tokens_html_one_box_per_piece_escaped():
    out = tokens_html(["<b>", " x", "\n"], titles=[1, 2, 3])
    assert out.count("<span") == 3
    assert "&lt;b&gt;" in out and "<b>" not in out
    assert "·x" in out and "↵<br>" in out
    assert 'title="2"' in out
    with pytest.raises(ValueError, match="one each"):
        tokens_html(["a", "b"], titles=[1])


def test_attention_heatmap_labels_both_axes():
    import matplotlib.pyplot as plt

    weights = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    ax = attention_heatmap(weights, ["a", " "], title="layer 0, head 0")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "·"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "·"]
    assert ax.get_title() == "layer 0, head 0"
    assert ax.images[0].get_array().shape == (2, 2)
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="labels"):
        attention_heatmap(weights, ["a"])
    with pytest.raises(ValueError, match="square"):
        attention_heatmap(torch.ones(2, 3), ["a", "b"])
