"""Tests of minillm.lora: zero-initialized adapters change nothing, merge and unmerge keep the
outputs, only the adapters train, switching them off gives the base model (DPO's reference),
and a LoRA finetune's checkpoint resumes and loads as a plain GPT."""

import copy
import math

import pytest
import torch

from minillm import artifacts
from minillm.__main__ import main
from minillm.checkpoint import load_checkpoint, save_checkpoint
from minillm.dpo import DPOConfig, answer_logprobs, dpo, reference_logprobs
from minillm.lora import (
    AdaptersOff,
    LoRAConfig,
    adapters,
    adapters_disabled,
    add_adapters,
    merge,
    trainable_parameters,
    unload,
    unmerge,
)
from minillm.model import GPT, GPTConfig
from minillm.recipes import lora_recipe
from minillm.reward import encode_responses
from minillm.sft import sft
from minillm.train import TrainConfig, make_optimizer
from minillm.world import Comparisons, gold_reward, make_sft_data


@pytest.fixture(scope="module")
def tok():
    return artifacts.char_tokenizer()


def tiny_gpt(vocab_size=69, seed=0, **changes) -> GPT:
    torch.manual_seed(seed)
    config = dict(vocab_size=vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)
    return GPT(GPTConfig(**{**config, **changes}))


def with_random_adapters(model: GPT, config: LoRAConfig, seed=1) -> GPT:
    """``model`` with adapters whose B is random, so that they change the outputs."""
    add_adapters(model, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in adapters(model):
            layer.lora_B.normal_(std=0.5)
    return model


def tokens(vocab_size=69, seed=2):
    return torch.randint(vocab_size, (3, 16), generator=torch.Generator().manual_seed(seed))


def test_zero_initialized_adapters_leave_the_logits_unchanged():
    model = tiny_gpt()
    before = model(tokens())[0]
    add_adapters(model, LoRAConfig(rank=4, alpha=8))
    assert len(adapters(model)) == 2 * 4  # two blocks, four layers each
    assert torch.equal(model(tokens())[0], before)  # B = 0: exactly the base model


def test_merge_and_unmerge_keep_the_outputs_and_switching_off_gives_the_base():
    model = tiny_gpt()
    base_weights = copy.deepcopy(model.state_dict())
    base_logits = model(tokens())[0]
    with_random_adapters(model, LoRAConfig(rank=2, alpha=4, dropout=0.1))
    model.eval()  # adapter dropout off
    adapted = model(tokens())[0]
    assert (adapted - base_logits).abs().max() > 0.1  # the adapters matter
    with adapters_disabled(model):
        assert torch.equal(model(tokens())[0], base_logits)
    assert torch.equal(model(tokens())[0], adapted)  # on again after the block

    merge(model)
    qkv = model.blocks[0].attn.qkv
    assert not torch.equal(qkv.weight, base_weights["blocks.0.attn.qkv.weight"])
    torch.testing.assert_close(model(tokens())[0], adapted, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unmerge them before switching them off"):
        with adapters_disabled(model):
            pass
    unmerge(model)
    torch.testing.assert_close(qkv.weight, base_weights["blocks.0.attn.qkv.weight"],
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(model(tokens())[0], adapted, atol=1e-5, rtol=0)
    with adapters_disabled(model):  # W is the base's again, up to float rounding
        torch.testing.assert_close(model(tokens())[0], base_logits, atol=1e-5, rtol=0)


def test_only_the_adapters_train_and_the_optimizer_holds_only_them():
    model = tiny_gpt(bias=True)
    config = LoRAConfig(rank=4, alpha=8, targets=("attn.qkv", "mlp.proj"), layers=(1,))
    add_adapters(model, config)
    C = 32
    # r * (in + out) per adapted layer: qkv is C -> 3C, the MLP's output 4C -> C
    assert trainable_parameters(model) == 4 * (C + 3 * C) + 4 * (4 * C + C)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "blocks.1.attn.qkv.lora_A", "blocks.1.attn.qkv.lora_B",
        "blocks.1.mlp.proj.lora_A", "blocks.1.mlp.proj.lora_B"]

    x = tokens()
    model(x[:, :-1], x[:, 1:])[1].backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == ("lora" in name), name
    optimized = [p for group in make_optimizer(model, TrainConfig(), "cpu").param_groups
                 for p in group["params"]]
    assert {id(p) for p in optimized} == {id(p) for n, p in model.named_parameters()
                                          if "lora" in n}


def test_train_embeddings_adds_the_token_embedding_to_what_trains():
    model = add_adapters(tiny_gpt(), LoRAConfig(rank=1, alpha=1, targets=("mlp.fc",),
                                                train_embeddings=True))
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained == ["tok_emb.weight", "blocks.0.mlp.fc.lora_A", "blocks.0.mlp.fc.lora_B",
                       "blocks.1.mlp.fc.lora_A", "blocks.1.mlp.fc.lora_B"]
    assert trainable_parameters(model) == 69 * 32 + 2 * (32 + 4 * 32)  # tied: counted once


def test_a_zero_b_still_gives_a_gradient_to_b_but_not_to_a():
    # The reason B starts at zero and A random: the first step moves B only.
    model = add_adapters(tiny_gpt(), LoRAConfig(rank=2, alpha=2))
    x = tokens()
    model(x[:, :-1], x[:, 1:])[1].backward()
    layer = model.blocks[0].mlp.fc
    assert layer.lora_A.grad.abs().max() == 0 and layer.lora_B.grad.abs().max() > 0


def test_unload_leaves_a_plain_gpt_with_the_adapted_outputs():
    model = with_random_adapters(tiny_gpt(), LoRAConfig(rank=2, alpha=4))
    adapted = model(tokens())[0]
    unload(model)
    assert not adapters(model) and not hasattr(model, "lora")
    assert set(model.state_dict()) == set(tiny_gpt().state_dict())
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model(tokens())[0], adapted, atol=1e-5, rtol=0)


def test_bad_adapter_settings_are_one_sentence():
    with pytest.raises(ValueError, match=r"^LoRAConfig.rank must be a positive integer, not 0.$"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="LoRAConfig.targets must be a non-empty selection"):
        LoRAConfig(targets=("attn.qkv", "lm_head"))
    with pytest.raises(ValueError, match="names blocks \\[5\\], but the model has only 2"):
        add_adapters(tiny_gpt(), LoRAConfig(layers=(0, 5)))
    model = add_adapters(tiny_gpt(), LoRAConfig())
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_adapters(model, LoRAConfig())
    with pytest.raises(ValueError, match="has no LoRA adapters"):
        merge(tiny_gpt())


# ----------------------------------------------------------------------------- DPO

def comparisons_for() -> Comparisons:
    texts = ["My love is true.", "love love love love", "Death comes for all.", "xq zzv"]
    responses = [{"topic": t, "prompt": f"Speak of {t}.", "answer": a, "ended": True,
                  "gold": gold_reward(t, a, True)}
                 for t in ("love", "death") for a in texts]
    return Comparisons(responses, [(0, 1), (0, 3), (2, 3), (4, 5), (6, 7), (6, 5)])


def test_adapters_off_is_the_base_model_as_dpo_reference(tok):
    base = tiny_gpt(tok.vocab_size, block_size=64)
    ids, mask = encode_responses(comparisons_for().responses, tok)
    expected = answer_logprobs(base, ids, mask)
    policy = with_random_adapters(copy.deepcopy(base), LoRAConfig(rank=2, alpha=4))
    assert (answer_logprobs(policy, ids, mask) - expected).abs().max() > 0.1
    with adapters_disabled(policy):
        assert torch.equal(reference_logprobs(policy, ids, mask), expected)
    assert torch.equal(AdaptersOff(policy)(ids)[0], base(ids)[0])


def test_dpo_with_adapters_moves_each_matrix_by_a_low_rank_update(tok):
    sft_model = tiny_gpt(tok.vocab_size, block_size=64)
    kept = copy.deepcopy(sft_model.state_dict())
    config = DPOConfig(steps=30, batch_size=6, beta=0.5, lr=3e-3, eval_interval=30,
                       eval_answers=8, device="cpu", progress=False)
    lora = LoRAConfig(rank=2, alpha=4, targets=("attn.qkv", "mlp.fc"))
    policy, history = dpo(sft_model, comparisons_for(), config, tokenizer=tok, lora=lora)
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy = reference
    # KL to the adapters-off reference: exactly 0 if the reference were the policy itself
    assert history[-1]["loss"] < history[0]["loss"] and history[-1]["kl"] != 0
    assert not adapters(policy) and set(policy.state_dict()) == set(kept)
    for name, tensor in policy.state_dict().items():
        moved = tensor - kept[name]
        if name.endswith(("attn.qkv.weight", "mlp.fc.weight")):
            assert moved.abs().max() > 0
            assert torch.linalg.matrix_rank(moved, atol=1e-6).item() <= 2, name
        else:  # embeddings, norms, the other matrices: frozen
            assert torch.equal(moved, torch.zeros_like(moved)), name
    assert all(torch.equal(t, kept[n]) for n, t in sft_model.state_dict().items())  # untouched


# ----------------------------------------------------------------------------- SFT

@pytest.fixture(scope="module")
def few_examples(corpus):
    data = make_sft_data(corpus)
    return type(data)(data.train[:200], data.held_out[:20], data.prompts, data.unseen_prompts)


def run(**changes) -> TrainConfig:
    config = dict(max_steps=10, batch_size=2, warmup_steps=1, eval_interval=5, eval_batches=1,
                  progress=False, device="cpu")
    return TrainConfig(**{**config, **changes})


def test_lora_sft_checkpoint_resumes_and_loads_as_a_plain_gpt(tok, few_examples, tmp_path):
    base = tiny_gpt(tok.vocab_size, block_size=128)
    lora = LoRAConfig(rank=2, alpha=4)
    path = tmp_path / "sft.pt"
    model, _ = sft(base, run(max_steps=6, checkpoint_path=path), few_examples, tokenizer=tok,
                   lora=lora)
    assert not adapters(model) and not adapters(base)  # a plain GPT; the base untouched
    state = torch.load(path, weights_only=True)
    assert state["lora"]["rank"] == 2 and "blocks.0.attn.qkv.lora_A" in state["model"]
    # AdamW's two moments, for the adapters only
    optimizer_numbers = sum(v.numel() for s in state["optimizer"]["state"].values()
                            for k, v in s.items() if k != "step")
    assert optimizer_numbers == 2 * trainable_parameters(
        add_adapters(tiny_gpt(tok.vocab_size), lora))

    loaded = load_checkpoint(path)
    assert type(loaded.model) is GPT and not adapters(loaded.model)
    assert set(loaded.model.state_dict()) == set(base.state_dict())
    x = tokens(tok.vocab_size)
    torch.testing.assert_close(loaded.model(x)[0], model(x)[0], atol=1e-5, rtol=0)

    with pytest.raises(ValueError, match="other LoRA adapters"):
        sft(base, run(checkpoint_path=path, resume=True), few_examples, tokenizer=tok)
    with pytest.raises(ValueError, match="other LoRA adapters"):
        sft(base, run(checkpoint_path=path, resume=True), few_examples, tokenizer=tok,
            lora=LoRAConfig(rank=3, alpha=4))
    sft(base, run(checkpoint_path=path, resume=True), few_examples, tokenizer=tok, lora=lora)
    resumed = load_checkpoint(path)
    assert [row["step"] for row in resumed.state["history"]] == list(range(11))
    fc = resumed.model.blocks[0].mlp.fc.weight
    assert not torch.equal(fc, loaded.model.blocks[0].mlp.fc.weight)  # trained further
    assert torch.equal(resumed.model.tok_emb.weight, base.tok_emb.weight)  # frozen throughout


def test_sft_command_with_lora_rank(tok, tmp_path, capsys):
    base_path, out = tmp_path / "base.pt", tmp_path / "sft.pt"
    save_checkpoint(base_path, tiny_gpt(tok.vocab_size, block_size=128), tok)
    main(["sft", "--base", str(base_path), "--out", str(out), "--steps", "4", "--batch-size",
          "2", "--eval-samples", "0", "--device", "cpu", "--lora-rank", "2"])
    assert "with LoRA adapters (rank 2, alpha 8)" in capsys.readouterr().out
    saved = load_checkpoint(out)
    assert saved.state["stage"] == "sft" and not adapters(saved.model)
    with pytest.raises(SystemExit, match="--lora-alpha scales LoRA adapters: give --lora-rank"):
        main(["sft", "--lora-alpha", "4"])
    assert lora_recipe("quick")[1].max_steps > 0
