"""The artifact each lesson leaves for the next, loaded from ``MINILLM_HOME`` or made on demand.

Every lesson starts by asking this module for what the previous lesson produced; when it is
missing (a learner starting at lesson 04, or a fresh CI machine), it is made here, with the
same code and sizes the earlier lesson uses, and cached for next time.

The ``train_*``/``make_*`` functions a lesson calls to make its own artifact train afresh,
unless ``MINILLM_REUSE=1`` is set, the artifact exists and the recipe is not overridden: then
a run of the training engine resumes from its checkpoint (a finished run trains no further
step), and a PPO, GRPO or DPO policy is loaded, each with the history saved with it.

The stages after pretraining (lessons 04-06) can also start from a published GPT-2 instead of
lesson 02's model: ``base="gpt2"`` (or another of ``GPT2_MODELS``, or a folder where a
``GPT2LMHeadModel`` was saved) makes GPT-2 the base model, with GPT-2's tokenizer grown by the
chat tokens (``gpt2_base_model``), and every artifact made from it is named for that base
("sft-gpt2-full.pt" beside lesson 04's "sft-char-full.pt"). Each checkpoint carries its
tokenizer, so every later stage reads text the way its model does.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from minillm.arithmetic import ArithmeticData, make_arithmetic_data, verifiable_reward
from minillm.attacks import EXPERIMENTS
from minillm.chat import SPECIAL_TOKENS, chat_ids
from minillm.checkpoint import (
    BASE,
    GRPO,
    SFT,
    TUNED_POLICIES,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from minillm.data import char_tokenizer, load_shakespeare
from minillm.dpo import dpo
from minillm.model import GPT, GPT2_MODELS, grow_vocabulary
from minillm.ppo import ppo
from minillm.recipes import (
    GPT2_BLOCK_SIZE,
    attack_recipe,
    base_recipe,
    reward_recipe,
    rlhf_recipe,
    sft_recipe,
    tools_recipe,
)
from minillm.reward import (
    PreferenceData,
    load_reward_model,
    make_preference_data,
    train_reward_model,
)
from minillm.settings import home_dir, pick_device, profile, reuse_artifacts
from minillm.sft import sft
from minillm.tokenizer import Tokenizer
from minillm.tools import with_tool_tokens
from minillm.train import TrainConfig, train

TOKENIZER_VOCAB = {"quick": 1024, "full": 4096}
CHAR = "char"  # the default base: lesson 02's character-level model of tiny Shakespeare


def tokenizer_path(vocab_size: int) -> Path:
    return home_dir() / f"tokenizer-shakespeare-{vocab_size}.json"


def shakespeare_tokenizer(vocab_size: int | None = None) -> Tokenizer:
    """Lesson 01's BPE tokenizer of tiny Shakespeare (GPT-4 split pattern, chat tokens reserved)."""
    vocab_size = vocab_size or TOKENIZER_VOCAB[profile()]
    path = tokenizer_path(vocab_size)
    if path.is_file():
        return Tokenizer.load(path)
    tok = Tokenizer.train(load_shakespeare(), vocab_size, special_tokens=SPECIAL_TOKENS,
                          progress=True)
    tok.save(path)
    return tok


# ---- lesson 02: the character-level base model --------------------------------------------

def reusing(path: Path, overrides: dict) -> bool:
    """Whether to reuse the saved run at ``path`` rather than train afresh (module docstring)."""
    if reuse_artifacts() and not overrides and path.is_file():
        print(f"MINILLM_REUSE=1: reusing {path} instead of training afresh")
        return True
    return False


def _engine_run(recipe: TrainConfig, path: Path, overrides: dict) -> TrainConfig:
    """The recipe with ``overrides``, checkpointing to ``path`` (and resuming from it if
    ``reusing``)."""
    return replace(recipe, **{"checkpoint_path": path, "resume": reusing(path, overrides),
                              **overrides})


def shakespeare_splits(tokenizer, val_fraction: float = 0.1):
    """The corpus as token ids: the first 90% to train on, the last 10% held out."""
    ids = torch.tensor(tokenizer.encode(load_shakespeare()), dtype=torch.long)
    split = int((1 - val_fraction) * len(ids))
    return ids[:split], ids[split:]


def base_tag(base) -> str:
    """The name of ``base`` in its artifacts' file names: "char" (lesson 02's model), the
    GPT-2 model's name ("gpt2", ...), or the name of the folder a GPT-2 was saved in."""
    if base == CHAR or base in GPT2_MODELS:
        return base
    if isinstance(base, str | Path) and Path(base).is_dir():
        return Path(base).resolve().name
    raise ValueError(f"The base model is {CHAR!r} (lesson 02's), a published GPT-2 "
                     f"({', '.join(GPT2_MODELS)}) or a folder holding a saved "
                     f"GPT2LMHeadModel, not {base!r}.")


def _artifact(kind: str, profile_name: str | None, base, suffix: str = ".pt") -> Path:
    return home_dir() / f"{kind}-{base_tag(base)}-{profile_name or profile()}{suffix}"


def base_model_path(profile_name: str | None = None, base=CHAR) -> Path:
    return _artifact("base", profile_name, base)


def train_base_model(profile_name: str | None = None, **overrides):
    """Train the base model of the profile's recipe and save it as the lesson 02 artifact.

    Returns (model, history). ``overrides`` replace TrainConfig fields (e.g. ``seed``).
    """
    model_config, recipe = base_recipe(profile_name)
    run = _engine_run(recipe, base_model_path(profile_name), overrides)
    tok = char_tokenizer()
    train_ids, val_ids = shakespeare_splits(tok)
    torch.manual_seed(run.seed)
    model = GPT(model_config)
    history = train(model, train_ids, val_ids, run, tokenizer=tok, stage=BASE)
    return model, history


def base_model(profile_name: str | None = None, base=CHAR) -> Checkpoint:
    """Lesson 02's pretrained base model (with its tokenizer), trained first if missing; with
    a GPT-2 ``base``, that GPT-2 ready for the chat template (``gpt2_base_model``)."""
    path = base_model_path(profile_name, base)
    if not path.is_file():
        if base == CHAR:
            train_base_model(profile_name)
        else:
            gpt2_base_model(base, profile_name)
    return load_checkpoint(path, device=pick_device())


def gpt2_tokenizer_path() -> Path:
    return home_dir() / "tokenizer-gpt2-chat.json"


def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's byte-level BPE (tiktoken's "gpt2" encoding, ids 0-50256, 50256 its
    ``<|endoftext|>``) with the chat template's tokens after it (ids 50257-50259)."""
    path = gpt2_tokenizer_path()
    if path.is_file():
        return Tokenizer.load(path)
    import tiktoken

    gpt2 = Tokenizer.from_tiktoken(tiktoken.get_encoding("gpt2"))
    tok = gpt2.with_tokens(special_tokens=SPECIAL_TOKENS)
    tok.save(path)
    return tok


def gpt2_base_model(base: str = "gpt2", profile_name: str | None = None) -> GPT:
    """A published GPT-2 (or a ``GPT2LMHeadModel`` saved in the folder ``base``) as the base
    model of the later stages, saved as their base artifact with ``gpt2_tokenizer``.

    Two changes make it fit the course: its context is cut to ``GPT2_BLOCK_SIZE`` positions
    (the recipe says why), and its vocabulary grows by the chat tokens, whose new embedding
    rows start near the mean of GPT-2's (``grow_vocabulary``), so that before finetuning
    they are as likely as an ordinary token rather than far likelier or unreachable.
    """
    path = base_model_path(profile_name, base)
    tok = gpt2_tokenizer()
    model = GPT.from_pretrained(base, block_size=GPT2_BLOCK_SIZE)
    gpt2_ids = min(chat_ids(tok).values())  # GPT-2's own ids are those before the chat tokens
    if model.config.vocab_size != gpt2_ids:
        raise ValueError(f"{base} reads {model.config.vocab_size:,} tokens, but GPT-2's "
                         f"tokenizer has {gpt2_ids:,}: it is not a GPT-2 that tokenizer fits.")
    model = grow_vocabulary(model, tok.vocab_size)
    save_checkpoint(path, model, tok, stage=BASE, pretrained=str(base))
    return model


# ---- lesson 04: the finetuned assistant ----------------------------------------------------

def sft_model_path(profile_name: str | None = None, base=CHAR) -> Path:
    return _artifact("sft", profile_name, base)


def train_sft_model(profile_name: str | None = None, base=CHAR, **overrides):
    """Finetune lesson 02's base model (or the GPT-2 ``base``) with the profile's SFT recipe
    and save the result as the lesson 04 artifact. Returns (model, history); ``overrides``
    replace TrainConfig fields."""
    run = _engine_run(sft_recipe(profile_name), sft_model_path(profile_name, base), overrides)
    return sft(base_model(profile_name, base), run)


def sft_model(profile_name: str | None = None, base=CHAR) -> Checkpoint:
    """Lesson 04's finetuned assistant (with its tokenizer), made first if missing (and the base
    model before it, if that is missing too)."""
    path = sft_model_path(profile_name, base)
    if not path.is_file():
        train_sft_model(profile_name, base)
    return load_checkpoint(path, device=pick_device())


# ---- lesson 05: the reward model -----------------------------------------------------------

def preference_data_path(profile_name: str | None = None, base=CHAR) -> Path:
    return _artifact("preferences", profile_name, base, ".json")


def preference_data(profile_name: str | None = None, base=CHAR) -> PreferenceData:
    """Lesson 05's comparisons: answers of the SFT model, labeled pair by pair by the simulated
    labeler; made first if missing (and the SFT model before them, if that is missing too)."""
    path = preference_data_path(profile_name, base)
    if path.is_file():
        return PreferenceData.load(path)
    assistant = sft_model(profile_name, base)
    data = make_preference_data(assistant.model, assistant.tokenizer,
                                reward_recipe(profile_name)[0])
    data.save(path)
    return data


def reward_model_path(profile_name: str | None = None, base=CHAR) -> Path:
    return _artifact("reward", profile_name, base)


def make_reward_model(profile_name: str | None = None, base=CHAR, **overrides):
    """Train a reward model on lesson 05's comparisons with the profile's recipe, its backbone
    starting from the SFT model (see ``reward_recipe``), and save it as the lesson 05 artifact.

    Returns (model, history); ``overrides`` replace TrainConfig fields.
    """
    run = _engine_run(reward_recipe(profile_name)[1], reward_model_path(profile_name, base),
                      overrides)
    return train_reward_model(sft_model(profile_name, base), preference_data(profile_name, base),
                              run)


def reward_model(profile_name: str | None = None, base=CHAR) -> Checkpoint:
    """Lesson 05's reward model (with its tokenizer), made first if missing (and the comparisons,
    the SFT model and the base model before it, if they are missing too)."""
    path = reward_model_path(profile_name, base)
    if not path.is_file():
        make_reward_model(profile_name, base)
    return load_reward_model(path, device=pick_device())


# ---- lesson 06: the RLHF-tuned assistants ---------------------------------------------------

def rlhf_policy_path(method: str, profile_name: str | None = None, base=CHAR) -> Path:
    return _artifact(method, profile_name, base)


def make_rlhf_policy(method: str, profile_name: str | None = None, base=CHAR, **overrides):
    """Tune lesson 04's SFT model with the profile's ``method`` recipe and save it as a lesson 06
    artifact: "ppo" or "grpo" against lesson 05's reward model, "dpo" on lesson 05's training
    comparisons.

    Returns (policy, history); ``overrides`` replace fields of the PPOConfig or DPOConfig.
    With ``MINILLM_REUSE=1`` a saved policy is loaded instead, with its history.
    """
    if method not in TUNED_POLICIES:
        raise ValueError(f"The method is one of {', '.join(TUNED_POLICIES)}, not {method!r}.")
    path = rlhf_policy_path(method, profile_name, base)
    if reusing(path, overrides):
        saved = load_checkpoint(path, device=pick_device())
        return saved.model, saved.state["history"]
    config = replace(rlhf_recipe(method, profile_name), **overrides)
    assistant = sft_model(profile_name, base)
    if method == "dpo":
        policy, history = dpo(assistant, preference_data(profile_name, base).train, config)
    else:
        policy, history, _ = ppo(assistant, reward_model(profile_name, base).model, config)
    save_checkpoint(path, policy, assistant.tokenizer, stage=method, history=history)
    return policy, history


def rlhf_policy(method: str, profile_name: str | None = None, base=CHAR) -> Checkpoint:
    """Lesson 06's PPO, GRPO or DPO assistant (with its tokenizer), made first if missing (and
    what it needs before it, if that is missing too)."""
    path = rlhf_policy_path(method, profile_name, base)
    if not path.is_file():
        make_rlhf_policy(method, profile_name, base)
    return load_checkpoint(path, device=pick_device())


# ---- lesson 10: sums answered three ways, and RL on the checker -----------------------------

def arithmetic_data(format: str, profile_name: str | None = None) -> ArithmeticData:
    """Lesson 10's task in ``format`` at the profile's sizes (made in code: nothing to cache)."""
    return make_arithmetic_data(format, **tools_recipe(profile_name)["task"])


def tools_model_path(format: str, profile_name: str | None = None) -> Path:
    return _artifact(f"sums-{format}", profile_name, CHAR)


def train_tools_model(format: str, profile_name: str | None = None, **overrides):
    """Finetune lesson 04's assistant to answer sums in ``format`` ("direct", "worked" or
    "tool"), its vocabulary first grown by the digits and tool tokens (``with_tool_tokens``),
    and save it as a lesson 10 artifact. Returns (model, history); ``overrides`` replace
    TrainConfig fields."""
    data = arithmetic_data(format, profile_name)
    run = _engine_run(tools_recipe(profile_name)["sft"], tools_model_path(format, profile_name),
                      overrides)
    assistant = sft_model(profile_name)
    model, tokenizer = with_tool_tokens(assistant.model, assistant.tokenizer)
    return sft(model, run, data, tokenizer)


def tools_model(format: str, profile_name: str | None = None) -> Checkpoint:
    """Lesson 10's assistant for sums in ``format`` (with its grown tokenizer), made first if
    missing (and lesson 04's assistant before it, if that is missing too)."""
    path = tools_model_path(format, profile_name)
    if not path.is_file():
        train_tools_model(format, profile_name)
    return load_checkpoint(path, device=pick_device())


def sums_grpo_path(profile_name: str | None = None) -> Path:
    return _artifact("sums-grpo", profile_name, CHAR)


def make_sums_grpo(profile_name: str | None = None, **overrides):
    """Tune lesson 10's worked-format assistant with GRPO, the checker (``verifiable_reward``)
    as the reward, on the training sums of the recipe's sizes (``rl_digits``), and save it.
    Returns (policy, history); ``overrides`` replace PPOConfig fields. With ``MINILLM_REUSE=1``
    a saved policy is loaded instead, with its history."""
    path = sums_grpo_path(profile_name)
    if reusing(path, overrides):
        saved = load_checkpoint(path, device=pick_device())
        return saved.model, saved.state["history"]
    recipe = tools_recipe(profile_name)
    start = recipe["vote"]["start"]
    assistant = tools_model(start, profile_name)
    questions = [q for q in arithmetic_data(start, profile_name).train_questions
                 if q["digits"] in recipe["rl_digits"]]
    policy, history, _ = ppo(assistant, verifiable_reward, replace(recipe["grpo"], **overrides),
                             prompts=questions)
    save_checkpoint(path, policy, assistant.tokenizer, stage=GRPO, history=history)
    return policy, history


# ---- lesson 09: attacks and defenses --------------------------------------------------------

def attack_model_path(name: str, profile_name: str | None = None) -> Path:
    return _artifact(f"attack-{name}", profile_name, CHAR)


def run_attack(kind: str, profile_name: str | None = None, **overrides) -> dict:
    """Lesson 09's experiment ``kind`` ("backdoor", "jailbreak" or "injection") on lesson 04's
    assistant with the profile's ``attack_recipe``; returns its figures. Every model it trains
    is saved in ``MINILLM_HOME`` (``attack_model_path``) and, with ``MINILLM_REUSE=1``, loaded
    instead of trained again. ``overrides`` replace AttackConfig fields."""
    if kind not in EXPERIMENTS:
        raise ValueError(f"The attack is one of {', '.join(EXPERIMENTS)}, not {kind!r}.")
    config = replace(attack_recipe(profile_name), **overrides)
    assistant = sft_model(profile_name)

    def models(name, make):
        path = attack_model_path(name, profile_name)
        if reusing(path, overrides):
            return load_checkpoint(path, device=pick_device()).model
        model = make()
        save_checkpoint(path, model, assistant.tokenizer, stage=SFT)
        return model

    extra = ({"reward_model": reward_model(profile_name).model, "base": base_model(profile_name)}
             if kind == "backdoor" else {})
    return EXPERIMENTS[kind](assistant, config, models=models, **extra)
