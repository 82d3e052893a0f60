import shutil
import subprocess

import pytest
import torch

from minillm import artifacts, pipeline
from minillm.data import load_shakespeare
from minillm.dpo import DPOConfig
from minillm.model import GPTConfig
from minillm.ppo import PPOConfig
from minillm.reward import PreferenceConfig
from minillm.train import TrainConfig


def pytest_collection_modifyitems(items):
    """The lessons' cells (nbval) are slow too: `-m "not slow"` skips them. The hook sees every
    item of the session, the lessons' included, although this file sits in tests/."""
    slow = pytest.mark.slow
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(slow)


@pytest.fixture(scope="session")
def compile_c():
    """A function that builds a C file as the tests hold run.c to it (C99, every warning an
    error) and returns the binary's path; the test is skipped on a machine without a compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        pytest.skip("No C compiler (cc) on this machine, so run.c cannot be built and tested.")

    def build(source, binary):
        subprocess.run([compiler, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic",
                        "-o", str(binary), str(source), "-lm"], check=True, capture_output=True)
        return binary

    return build


@pytest.fixture(scope="session")
def corpus() -> str:
    return load_shakespeare()


@pytest.fixture(autouse=True)
def _one_thread():
    """Small models run fastest on one thread, and pytest runs one test at a time anyway."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def tiny_recipes(home, monkeypatch):
    """Every stage's recipe shrunk to seconds: a 1-layer model, a few steps each."""
    def base_recipe(profile_name=None):
        model = GPTConfig(vocab_size=artifacts.char_tokenizer().vocab_size, block_size=128,
                          n_layer=1, n_head=2, n_embd=32, bias=False)
        return model, TrainConfig(max_steps=4, batch_size=2, warmup_steps=1, eval_interval=2,
                                  eval_batches=1, progress=False)

    def sft_recipe(profile_name=None):
        return TrainConfig(max_steps=2, batch_size=2, warmup_steps=1, eval_interval=2,
                           eval_batches=1, progress=False)

    def reward_recipe(profile_name=None):
        return PreferenceConfig(samples_per_prompt=2), TrainConfig(
            max_steps=2, batch_size=2, warmup_steps=1, eval_interval=2, eval_batches=1,
            progress=False)

    def rlhf_recipe(method, profile_name=None):
        if method == "ppo":
            return PPOConfig(steps=1, prompts_per_step=2, samples_per_prompt=2,
                             max_new_tokens=20, progress=False)
        return DPOConfig(steps=2, batch_size=4, eval_interval=0, progress=False)

    monkeypatch.setitem(artifacts.TOKENIZER_VOCAB, "quick", 260)
    monkeypatch.setattr(artifacts, "base_recipe", base_recipe)
    monkeypatch.setattr(artifacts, "sft_recipe", sft_recipe)
    monkeypatch.setattr(artifacts, "reward_recipe", reward_recipe)
    monkeypatch.setattr(artifacts, "rlhf_recipe", rlhf_recipe)
    monkeypatch.setattr(pipeline, "SFT_SAMPLES", 1)
    monkeypatch.setattr(pipeline, "RLHF_SAMPLES", 1)
    monkeypatch.setattr(pipeline, "SCALE_ANSWERS", 16)
    return home
