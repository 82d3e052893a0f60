"""Tests of minillm.checkpoint: round trip, atomic writes, and loading that runs no code."""

import pytest
import torch

from minillm import checkpoint
from minillm.checkpoint import load_checkpoint, save_checkpoint
from minillm.model import GPT, GPTConfig
from minillm.tokenizer import CharTokenizer, Tokenizer

TEXT = "To be, or not to be, that is the question.\n"


def tiny_model(vocab_size=24, **overrides) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32,
                       **overrides)
    return GPT(config).eval()


def files_in(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("tokenizer", [CharTokenizer.train(TEXT, ["<|end|>"]),
                                       Tokenizer.train(TEXT * 3, 270, special_tokens=["<|end|>"]),
                                       None])
def test_round_trip(tmp_path, tokenizer):
    model = tiny_model(vocab_size=270 if isinstance(tokenizer, Tokenizer) else 24)
    state = {"step": 7, "history": [{"step": 7, "val_loss": 1.5}], "rng": torch.get_rng_state()}
    save_checkpoint(tmp_path / "model.pt", model, tokenizer, **state)

    loaded = load_checkpoint(tmp_path / "model.pt")
    assert loaded.model.config == model.config and not loaded.model.training
    idx = torch.randint(0, model.config.vocab_size, (2, 16))
    assert torch.equal(loaded.model(idx)[0], model(idx)[0])
    assert loaded.state["step"] == 7 and loaded.state["history"] == state["history"]
    assert torch.equal(loaded.state["rng"], state["rng"])
    if tokenizer is None:
        assert loaded.tokenizer is None
    else:
        assert type(loaded.tokenizer) is type(tokenizer)
        text = TEXT + "<|end|>"
        assert loaded.tokenizer.encode(text, "all") == tokenizer.encode(text, "all")


def test_round_trip_keeps_tied_and_untied_weights(tmp_path):
    for tie in (True, False):
        save_checkpoint(tmp_path / "model.pt", tiny_model(tie_embeddings=tie))
        model = load_checkpoint(tmp_path / "model.pt").model
        assert (model.lm_head.weight is model.tok_emb.weight) == tie


def test_optimizer_state_round_trips(tmp_path):
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 24, (2, 16)), torch.randint(0, 24, (2, 16)))[1].backward()
    optimizer.step()
    save_checkpoint(tmp_path / "model.pt", model, optimizer=optimizer.state_dict())
    restored = torch.optim.AdamW(model.parameters(), lr=1e-3)
    restored.load_state_dict(load_checkpoint(tmp_path / "model.pt").state["optimizer"])
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"],
                       optimizer.state_dict()["state"][0]["exp_avg"])


def test_save_leaves_no_temporary_file(tmp_path):
    save_checkpoint(tmp_path / "model.pt", tiny_model())
    save_checkpoint(tmp_path / "model.pt", tiny_model(), step=2)  # over an existing file
    assert files_in(tmp_path) == ["model.pt"]
    assert load_checkpoint(tmp_path / "model.pt").state == {"step": 2}


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch, failure):
    path = tmp_path / "model.pt"
    save_checkpoint(path, tiny_model(), step=1)
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise failure

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(type(failure)):
        save_checkpoint(path, tiny_model(), step=2)
    assert path.read_bytes() == before
    assert files_in(tmp_path) == ["model.pt"]


def test_save_creates_the_folder(tmp_path):
    save_checkpoint(tmp_path / "runs" / "a" / "model.pt", tiny_model())
    assert (tmp_path / "runs" / "a" / "model.pt").is_file()


def test_save_refuses_what_would_not_load(tmp_path):
    with pytest.raises(TypeError, match=r"state\['config'\]\['log'\] is a pathlib"):
        save_checkpoint(tmp_path / "model.pt", tiny_model(), config={"log": tmp_path})
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "model.pt", tiny_model(), model_config={})
    assert files_in(tmp_path) == []


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint at .*nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(ValueError, match="is not a minillm checkpoint"):
        load_checkpoint(tmp_path / "notes.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")  # a torch file, not ours
    with pytest.raises(ValueError, match="is not a minillm checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


CALLS = []


def record_call():
    CALLS.append("ran")


class Payload:
    """Unpickling this object calls record_call: what a malicious file would do with os.system."""

    def __reduce__(self):
        return (record_call, ())


def test_loading_runs_no_code(tmp_path):
    model = tiny_model()
    payload = {"format": checkpoint.FORMAT, "model_config": model.config.__dict__,
               "model": model.state_dict(), "tokenizer": None, "extra": Payload()}
    torch.save(payload, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"Python objects \(.*record_call\).*refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert CALLS == []
