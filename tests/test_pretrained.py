"""Tests of GPT.from_pretrained: GPT-2's weights, converted from Hugging Face's GPT2LMHeadModel,
give Hugging Face's logits. Offline: a small GPT2LMHeadModel is built at random from a config
and handed to from_pretrained, which converts it exactly as it converts a downloaded one."""

import dataclasses
import math

import pytest
import tiktoken
import torch

from minillm.export import header_of
from minillm.model import GPT, MLP, GPTConfig
from minillm.tokenizer import Tokenizer


def random_gpt2(**changes):
    """A small GPT2LMHeadModel with every parameter random (biases and norms too, so that a
    weight loaded into the wrong place shows), in eval mode."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=101, n_positions=32, n_embd=48, n_layer=2,
                                     n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     **changes)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(std=0.2)
    return hf


def test_gpt2_weights_give_hugging_faces_logits():
    hf = random_gpt2()  # activation "gelu_new", GPT-2's tanh approximation
    model = GPT.from_pretrained(hf)
    assert model.config.mlp == "gelu_tanh" and model.config.vocab_size == 101
    assert model.num_params() == sum(p.numel() for p in hf.parameters())
    idx = torch.randint(101, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits
        torch.testing.assert_close(model(idx)[0], expected, atol=1e-5, rtol=0)
        # The activation matters at this tolerance: the exact GELU misses it.
        exact = GPT(dataclasses.replace(model.config, mlp="gelu"))
        exact.load_state_dict(model.state_dict())
        assert (exact(idx)[0] - expected).abs().max() > 1e-4


def test_exact_gelu_gpt2_variant_and_unsupported_ones():
    hf = random_gpt2(activation_function="gelu")
    idx = torch.randint(101, (2, 8), generator=torch.Generator().manual_seed(2))
    model = GPT.from_pretrained(hf)
    assert model.config.mlp == "gelu"
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="variant's n_inner differs from GPT-2's"):
        GPT.from_pretrained(random_gpt2(n_inner=64))


def test_unknown_model_names_and_the_tokenizer():
    with pytest.raises(ValueError, match="are gpt2, gpt2-medium, gpt2-large, gpt2-xl; there is "
                                         "no 'gpt-2'"):
        GPT.from_pretrained("gpt-2")
    enc = tiktoken.get_encoding("gpt2")  # GPT-2's tokenizer (offline from TIKTOKEN_CACHE_DIR)
    tok = Tokenizer.from_tiktoken(enc)
    text = "Hello world, said the model."
    assert tok.encode(text) == enc.encode(text) and tok.vocab_size == 50257


def test_a_saved_folder_loads_and_the_context_can_be_cut(tmp_path):
    hf = random_gpt2()
    hf.save_pretrained(tmp_path / "tiny")
    idx = torch.randint(101, (2, 12), generator=torch.Generator().manual_seed(3))
    whole = GPT.from_pretrained(tmp_path / "tiny")
    cut = GPT.from_pretrained(str(tmp_path / "tiny"), block_size=12)
    assert whole.config.block_size == 32 and cut.config.block_size == 12
    assert cut.pos_emb.weight.shape == (12, 48)
    with torch.no_grad():
        expected = hf(idx).logits
        torch.testing.assert_close(whole(idx)[0], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(cut(idx)[0], expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="must be an integer from 1 to 32, not 33"):
        GPT.from_pretrained(hf, block_size=33)
    with pytest.raises(ValueError, match="there is no '.*missing' \\(nor a folder"):
        GPT.from_pretrained(tmp_path / "missing")


def test_the_tanh_gelu_is_refused_by_the_export_format():
    model = GPT.from_pretrained(random_gpt2())
    with pytest.raises(ValueError, match="tanh approximation"):
        header_of(model.config, None, "fp32")


def test_the_tanh_gelu_switch_computes_gpt2s_formula():
    # GELU(x) ~ 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) (Hendrycks & Gimpel 2016)
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=1, n_embd=4,
                       mlp="gelu_tanh")
    torch.manual_seed(0)
    mlp = MLP(config)
    x = torch.randn(2, 3, 4)
    h = mlp.fc(x)
    by_hand = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    torch.testing.assert_close(mlp(x), mlp.proj(by_hand))
    exact = MLP(dataclasses.replace(config, mlp="gelu"))
    exact.load_state_dict(mlp.state_dict())
    assert not torch.allclose(exact(x), mlp(x))  # the same weights, the other activation
