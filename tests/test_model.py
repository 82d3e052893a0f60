"""Tests of minillm.model on tiny configurations (each runs in well under a second)."""

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from minillm.model import (
    GPT,
    IGNORE_INDEX,
    GPTConfig,
    KVCache,
    attention_weights,
    causal_attention_explicit,
    sample_next,
    top_k_filter,
    top_p_filter,
)

V = 37


def tiny(**overrides) -> GPTConfig:
    settings = dict(vocab_size=V, block_size=8, n_layer=2, n_head=2, n_embd=16)
    return GPTConfig(**{**settings, **overrides})


def make_model(seed=0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny(**overrides)).eval()


def test_shapes():
    model = make_model()
    idx = torch.randint(0, V, (3, 8))
    logits, loss = model(idx)
    assert logits.shape == (3, 8, V) and loss is None
    assert model.forward_hidden(idx).shape == (3, 8, 16)
    logits, loss = model(idx, targets=idx)
    assert loss.shape == ()
    maps = model.attention_maps(idx)
    assert maps.shape == (3, 2, 2, 8, 8)
    torch.testing.assert_close(maps.sum(-1), torch.ones(3, 2, 2, 8))
    assert (maps.triu(diagonal=1) == 0).all()  # causal: nothing from the future


@pytest.mark.parametrize("tie", [True, False])
def test_loss_at_init_is_that_of_uniform_guessing(tie):
    model = make_model(vocab_size=101, n_embd=32, tie_embeddings=tie)
    idx, targets = torch.randint(0, 101, (2, 16, 8))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(101)) < 0.1


def test_ignored_targets_do_not_count():
    model = make_model()
    idx, targets = torch.randint(0, V, (2, 2, 8))
    logits, _ = model(idx)
    masked = targets.clone()
    masked[:, :5] = IGNORE_INDEX
    _, loss = model(idx, masked)
    torch.testing.assert_close(loss, F.cross_entropy(logits[:, 5:].flatten(0, 1),
                                                     targets[:, 5:].flatten()))


def test_float64_model_gives_a_float64_loss_that_passes_gradcheck():
    model = make_model().double()
    idx, targets = torch.randint(0, V, (2, 2, 8))
    assert model(idx, targets)[1].dtype == torch.float64

    def loss_of(norm_weight):  # the final norm's 16 scales: few inputs keep gradcheck fast
        return torch.func.functional_call(model, {"norm_f.weight": norm_weight},
                                          (idx, targets))[1]

    weight = model.norm_f.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(loss_of, (weight,))


def test_bfloat16_logits_give_a_float32_loss():
    model = make_model().to(torch.bfloat16)
    idx, targets = torch.randint(0, V, (2, 2, 8))
    logits, loss = model(idx, targets)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32


def test_explicit_attention_matches_sdpa():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 7, 8)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(causal_attention_explicit(q, k, v), expected)
    mask = torch.rand(2, 1, 7, 7) > 0.3
    mask |= torch.eye(7, dtype=torch.bool)
    torch.testing.assert_close(causal_attention_explicit(q, k, v, mask),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_explicit_causal_mask_aligns_queries_with_the_last_keys():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 2, 4), torch.randn(1, 1, 5, 4)
    att = attention_weights(q, k)
    assert (att[..., 0, 4] == 0).all() and (att[..., 1, :] > 0).all()


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_model_attention_maps_path_matches_sdpa_path(positions):
    model = make_model(positions=positions)
    idx = torch.randint(0, V, (2, 8))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    for attention_mask in (None, mask):
        maps = []
        torch.testing.assert_close(model.forward_hidden(idx, attention_mask, maps=maps),
                                   model.forward_hidden(idx, attention_mask))
        assert len(maps) == 2


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_cached_steps_give_the_logits_of_a_full_forward(positions):
    model = make_model(positions=positions)
    idx = torch.randint(0, V, (2, 8))
    full = model.lm_head(model.forward_hidden(idx))
    cache = KVCache(model.config, 2, "cpu", torch.float32)
    steps = [model.forward_hidden(idx[:, :5], cache=cache)]
    steps += [model.forward_hidden(idx[:, t:t + 1], cache=cache) for t in range(5, 8)]
    torch.testing.assert_close(model.lm_head(torch.cat(steps, dim=1)), full)


# A random model with tied embeddings mostly repeats its last token whatever the context, so the
# generation tests that compare contexts untie them.
SWITCHES = [dict(tie_embeddings=False),
            dict(tie_embeddings=False, positions="rotary", norm="rmsnorm", mlp="swiglu")]


@pytest.mark.parametrize("switches", SWITCHES)
def test_kv_cache_and_no_cache_agree_within_the_block(switches):
    model = make_model(**switches)
    prompt = torch.randint(0, V, (2, 3))
    greedy = model.generate(prompt, 6, temperature=0)  # the last step runs all 8 tokens
    assert greedy.shape == (2, 9) and torch.equal(greedy[:, :3], prompt)
    assert torch.equal(greedy, model.generate(prompt, 6, temperature=0, use_cache=False))
    with_cache, without = (model.generate(prompt, 6, generator=torch.Generator().manual_seed(0),
                                          use_cache=use_cache) for use_cache in (True, False))
    assert torch.equal(with_cache, without)


def sliding_window_reference(model, idx, max_new_tokens, attention_mask=None):
    """Greedy tokens under the window policy of GPT.generate's docstring, from a forward without a
    cache over each step's window idx[:, s:]."""
    bs = model.config.block_size
    slide = max(1, bs // 4)
    s = max(0, idx.size(1) - bs)  # the first window: at most block_size prompt tokens
    for _ in range(max_new_tokens):
        n = idx.size(1)
        if n - s > bs:
            s = n - (bs - slide)
        mask = None if attention_mask is None else attention_mask[:, s:]
        logits, _ = model(idx[:, s:], attention_mask=mask)
        idx = torch.cat((idx, logits[:, -1].argmax(dim=-1, keepdim=True)), dim=1)
        if attention_mask is not None:
            attention_mask = torch.cat((attention_mask, torch.ones_like(idx[:, :1])), dim=1)
    return idx


@pytest.mark.parametrize("switches", SWITCHES)
@pytest.mark.parametrize("prompt_len, pad", [(3, 0), (12, 0), (6, 3), (12, 5)])  # block_size 8
def test_kv_cache_past_the_block_follows_the_sliding_window_policy(switches, prompt_len, pad):
    model = make_model(**switches)
    prompt = torch.randint(0, V, (2, prompt_len))
    mask = None
    if pad:  # row 0 is left-padded
        mask = torch.ones_like(prompt)
        mask[0, :pad] = 0
    out = model.generate(prompt, 30, temperature=0, attention_mask=mask)
    assert torch.equal(out, sliding_window_reference(model, prompt, 30, mask))


def test_block_size_one_generates_from_the_newest_token_alone():
    model = make_model(block_size=1, tie_embeddings=False)
    prompt = torch.randint(0, V, (2, 3))
    assert torch.equal(model.generate(prompt, 5, temperature=0),
                       model.generate(prompt, 5, temperature=0, use_cache=False))


@pytest.mark.parametrize("use_cache", [True, False])
def test_kv_cache_past_the_block_is_rebuilt_every_slide_plus_one_tokens(monkeypatch, use_cache):
    model = make_model()  # block_size 8, so slide = 2
    lengths = []  # tokens run by each forward
    forward_hidden = model.forward_hidden

    def counted(idx, *args, **kwargs):
        lengths.append(idx.size(1))
        return forward_hidden(idx, *args, **kwargs)

    monkeypatch.setattr(model, "forward_hidden", counted)
    model.generate(torch.randint(0, V, (1, 3)), 40, temperature=0, use_cache=use_cache)
    if use_cache:
        # The prompt, then one token a step until the window holds 8 tokens; from there on, a
        # rebuild over the last 6 tokens every third step (at sequence lengths 9, 12, ..., 42).
        assert lengths == [3] + [1] * 5 + [6, 1, 1] * 11 + [6]
    else:  # the reference runs the whole window every step
        assert lengths == [min(n, 8) for n in range(3, 43)]


@pytest.mark.parametrize("positions, norm, mlp, tie, bias", list(itertools.product(
    ["learned", "rotary"], ["layernorm", "rmsnorm"], ["gelu", "swiglu"], [True, False],
    [True, False])))
def test_every_switch_combination_trains(positions, norm, mlp, tie, bias):
    torch.manual_seed(0)
    model = GPT(tiny(positions=positions, norm=norm, mlp=mlp, tie_embeddings=tie, bias=bias,
                     dropout=0.1))
    idx, targets = torch.randint(0, V, (2, 2, 8))
    _, loss = model(idx, targets)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.generate(idx[:, :2], 3).shape == (2, 5)


def test_swiglu_keeps_the_parameter_count_close_to_gelu():
    gelu, swiglu = make_model(n_embd=96), make_model(n_embd=96, mlp="swiglu")
    assert abs(swiglu.num_params() / gelu.num_params() - 1) < 0.02


def test_tied_embeddings_share_one_matrix():
    tied, untied = make_model(), make_model(tie_embeddings=False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert untied.num_params() - tied.num_params() == V * 16
    opt = torch.optim.SGD(tied.parameters(), lr=0.1)
    _, loss = tied.train()(*torch.randint(0, V, (2, 2, 8)))
    loss.backward()
    opt.step()
    assert torch.equal(tied.lm_head.weight, tied.tok_emb.weight)


def test_param_and_flop_counts():
    model = make_model()
    C, L, T = 16, 2, 8
    per_layer = 2 * C + 3 * C * C + 3 * C + C * C + C + 2 * C + 4 * C * C + 4 * C + 4 * C * C + C
    assert model.num_params() == V * C + T * C + L * per_layer + 2 * C
    assert model.num_params(non_embedding=True) == V * C + L * per_layer + 2 * C
    untied = make_model(tie_embeddings=False, positions="rotary")
    assert untied.num_params(non_embedding=True) == V * C + L * per_layer + 2 * C
    assert model.flops_per_token() == 6 * model.num_params(non_embedding=True) + 12 * L * C * T


def test_residual_projections_start_smaller():
    model = make_model(n_embd=64, n_layer=8)
    std = model.blocks[0].attn.proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(16)) < 0.001
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.002


def test_top_k_filter():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [0.0, -1.0, 5.0, 2.0]])
    kept = top_k_filter(logits, 2).isfinite()
    assert kept.tolist() == [[False, True, True, False], [False, False, True, True]]
    assert top_k_filter(logits, 10).isfinite().all()
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        top_k_filter(logits, 0)


def test_top_p_filter():
    logits = torch.tensor([[0.05, 0.5, 0.15, 0.3]]).log()

    def kept(p):
        return top_p_filter(logits, p).isfinite().squeeze(0).tolist()

    assert kept(0.4) == [False, True, False, False]  # the top token alone reaches 0.4
    assert kept(0.7) == [False, True, False, True]
    assert kept(0.9) == [False, True, True, True]
    assert kept(1.0) == [True] * 4
    assert kept(1e-6) == [False, True, False, False]
    torch.testing.assert_close(top_p_filter(logits, 0.7)[0, [1, 3]], logits[0, [1, 3]])
    for p in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
            top_p_filter(logits, p)


def test_sampling():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]]).repeat(200, 1)
    assert (sample_next(logits, temperature=0) == 1).all()
    assert (sample_next(logits, top_k=1) == 1).all()
    gen = torch.Generator().manual_seed(0)
    draws = sample_next(logits, top_k=2, generator=gen)
    assert set(draws.tolist()) == {1, 3}
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(draws, sample_next(logits, top_k=2, generator=gen))
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        sample_next(logits, temperature=-1)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match=r"GPTConfig.n_embd must be divisible by n_head \(3\)"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="positions must be one of"):
        GPTConfig(positions="alibi")
    with pytest.raises(ValueError, match="vocab_size must be a positive integer"):
        GPTConfig(vocab_size=0)
    model = make_model()
    with pytest.raises(ValueError, match=rf"Token ids must be in \[0, {V}\)"):
        model(torch.tensor([[1, V]]))
    with pytest.raises(ValueError, match="Token ids must be in"):
        model.generate(torch.tensor([[-1, 2]]), 3)
    with pytest.raises(ValueError, match="The prompt is empty"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="tensor of token ids"):
        model(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="at most block_size=8 tokens"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 3))


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_padding_is_invisible(positions):
    model = make_model(positions=positions)
    tokens = torch.randint(0, V, (1, 5))
    alone, _ = model(tokens)
    pad = torch.zeros(1, 3, dtype=torch.long)
    left, _ = model(torch.cat((pad, tokens), 1), attention_mask=torch.tensor([[0] * 3 + [1] * 5]))
    right, _ = model(torch.cat((tokens, pad), 1), attention_mask=torch.tensor([[1] * 5 + [0] * 3]))
    torch.testing.assert_close(left[:, 3:], alone)
    torch.testing.assert_close(right[:, :5], alone)
    assert left.isfinite().all() and right.isfinite().all()  # padding queries see themselves


def test_padding_gives_finite_gradients():
    model = make_model().train()
    idx = torch.randint(0, V, (2, 8))
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8])
    targets = idx.masked_fill(mask == 0, IGNORE_INDEX)
    _, loss = model(idx, targets, attention_mask=mask)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("switches", SWITCHES)
# Past the block the cached window slides at the same columns in every row, padding included, so
# a padded row's windows differ from its prompt's alone: the cached case stays within the block.
@pytest.mark.parametrize("use_cache, max_new_tokens", [(True, 4), (False, 12)])
def test_left_padded_batch_generates_what_each_prompt_does_alone(switches, use_cache,
                                                                 max_new_tokens):
    model = make_model(**switches)
    short, long = torch.randint(0, V, (1, 2)), torch.randint(0, V, (1, 5))
    batch = torch.cat((torch.cat((torch.zeros(1, 3, dtype=torch.long), short), 1), long))
    mask = torch.tensor([[0, 0, 0, 1, 1], [1] * 5])
    out = model.generate(batch, max_new_tokens, temperature=0, attention_mask=mask,
                         use_cache=use_cache)
    alone = [model.generate(prompt, max_new_tokens, temperature=0, use_cache=use_cache)[0]
             for prompt in (short, long)]
    assert torch.equal(out[0, 3:], alone[0]) and torch.equal(out[1], alone[1])


def test_tiny_model_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = GPT(tiny(block_size=16, n_embd=32))
    idx, targets = torch.randint(0, V, (2, 4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(50):
        _, loss = model(idx, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 < math.log(V)


def sampled(model, prompts, stop=None):
    """Sample 12 tokens at temperature 1 from a fixed seed: varied, yet reproducible."""
    gen = torch.Generator().manual_seed(0)
    return model.generate(prompts, 12, stop=stop, generator=gen)[:, prompts.size(1):]


def test_stop_tokens_end_generation():
    model = make_model()
    prompt = torch.randint(0, V, (1, 3))
    free = sampled(model, prompt)[0].tolist()
    stop = free[6]
    first = free.index(stop)
    assert sampled(model, prompt, stop=stop)[0].tolist() == free[:first + 1]
    assert sampled(model, prompt, stop={stop, V + 5})[0].tolist() == free[:first + 1]


def test_stopped_rows_repeat_their_stop_token_until_all_rows_stop():
    model = make_model()
    prompts = torch.randint(0, V, (2, 3))
    free = sampled(model, prompts)
    stops = {free[0, 1].item(), free[1, 7].item()}
    ends = [next(t for t, tok in enumerate(row.tolist()) if tok in stops) for row in free]
    assert ends[0] < ends[1]  # row 0 stops first, then keeps repeating its stop token
    out = sampled(model, prompts, stop=stops)
    assert out.size(1) == ends[1] + 1  # ends as soon as every row has stopped
    for row, end in enumerate(ends):
        assert torch.equal(out[row, :end + 1], free[row, :end + 1])
        assert (out[row, end:] == out[row, end]).all()


def test_generate_restores_training_mode_and_config_is_plain_data():
    model = make_model(dropout=0.5).train()
    a = model.generate(torch.tensor([[1, 2]]), 6, temperature=0)
    b = model.generate(torch.tensor([[1, 2]]), 6, temperature=0)
    assert torch.equal(a, b) and model.training  # dropout off while sampling, then back on
    config = tiny(positions="rotary", mlp="swiglu")
    assert GPTConfig(**dataclasses.asdict(config)) == config
