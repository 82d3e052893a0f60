import subprocess
import sys

import pytest

from minillm.checkpoint import load_checkpoint


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "minillm", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_pretrain_writes_a_resumable_checkpoint(tmp_path):
    out = tmp_path / "run" / "model.pt"
    first = run_cli("pretrain", "--steps", "20", "--batch-size", "2", "--out", out,
                    "--checkpoint-every", "10")
    assert first.returncode == 0, first.stderr
    assert "step 20: val loss" in first.stdout
    assert load_checkpoint(out).state["step"] == 20
    longer = run_cli("pretrain", "--steps", "30", "--batch-size", "2", "--out", out, "--resume")
    assert longer.returncode == 0, longer.stderr
    checkpoint = load_checkpoint(out)
    assert checkpoint.state["step"] == 30
    assert [row["step"] for row in checkpoint.state["history"]] == list(range(31))
    assert checkpoint.tokenizer.decode(checkpoint.tokenizer.encode("O Romeo")) == "O Romeo"


def test_pretrain_errors_are_one_line(tmp_path):
    result = run_cli("pretrain", "--data", tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip() == "error: --data needs --val-data: a second shard folder to " \
                                    "measure on."


def test_tokenizer_command_trains_and_caches(tmp_path):
    import os

    env = {**os.environ, "MINILLM_HOME": str(tmp_path)}
    result = run_cli("tokenizer", "--vocab", "300", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tokenizer-shakespeare-300.json").is_file()
    assert "vocab_size=300" in result.stdout
