"""The lessons' recipes: every stage's sizes and settings for each profile, as data.

``quick`` runs on a 2-core laptop CPU in minutes (the lessons and CI); ``full`` is sized for a
GPU (nanoGPT's 10.7M-parameter Shakespeare model for the base) and not tuned yet. Each setting
says why it is what it is; the experiments behind the quick recipes (what else was tried, and
how it scored) are in the README, "How the recipes were chosen".
"""

from __future__ import annotations

from dataclasses import replace

from minillm.attacks import AttackConfig
from minillm.data import char_tokenizer
from minillm.dpo import DPOConfig
from minillm.lora import LoRAConfig
from minillm.model import GPTConfig
from minillm.ppo import PPOConfig
from minillm.reward import PreferenceConfig
from minillm.scaling import ScalingConfig
from minillm.settings import profile
from minillm.train import TrainConfig


def _quick(profile_name: str | None) -> bool:
    return (profile_name or profile()) == "quick"


def base_recipe(profile_name: str | None = None) -> tuple[GPTConfig, TrainConfig]:
    """Lesson 02's base model: its architecture and its pretraining run."""
    vocab = char_tokenizer().vocab_size  # the corpus's 65 characters and 4 special tokens
    if _quick(profile_name):
        model = GPTConfig(
            vocab_size=vocab,
            block_size=128,  # a few lines of verse: enough to learn a speech's shape
            n_layer=4, n_head=4, n_embd=128,  # 0.8M parameters: ~3 minutes on a 2-core CPU
            dropout=0.0,  # 3000 small steps see each character ~2 times: nothing to regularize
            bias=False)
        run = TrainConfig(
            max_steps=3000,  # many small steps beat few large ones at a fixed CPU budget
            batch_size=6,  # small batches: more updates per second on two cores
            lr=2e-3, min_lr=1e-4,  # a tiny model tolerates a high peak rate
            warmup_steps=100,
            eval_interval=250, eval_batches=50)
        return model, run
    model = GPTConfig(vocab_size=vocab, block_size=256,  # nanoGPT's Shakespeare model
                      n_layer=6, n_head=6, n_embd=384, dropout=0.2, bias=False)
    run = TrainConfig(max_steps=5000, batch_size=64, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                      eval_interval=250, eval_batches=50)
    return model, run


# A published GPT-2 as the base instead (``pipeline --base gpt2``; every later recipe as for the
# Shakespeare base): the context kept of its 1024 positions (``GPT.from_pretrained``'s
# block_size). The longest of lesson 04's conversations is 29 GPT-2 tokens, and a sampled
# answer (at most 100 tokens) after a prompt (at most 10) fits in 111; 256 leaves room for
# longer answers, and the KV cache of a batch of generations is a quarter of 1024's.
GPT2_BLOCK_SIZE = 256


def sft_recipe(profile_name: str | None = None) -> TrainConfig:
    """Lesson 04's finetuning run."""
    if _quick(profile_name):
        return TrainConfig(
            max_steps=600,  # about two passes over the training set; more steps kept helping
            batch_size=32,  # 300 steps of 16 taught the format but not the topics
            lr=2e-3, min_lr=2e-4,  # at a fixed budget 2e-3 beat 1e-3
            warmup_steps=30,
            eval_interval=100, eval_batches=10)
    return TrainConfig(max_steps=1500, batch_size=64, lr=3e-4, min_lr=3e-5, warmup_steps=100,
                       eval_interval=250, eval_batches=20)


def lora_recipe(profile_name: str | None = None) -> tuple[LoRAConfig, TrainConfig]:
    """Lesson 04's LoRA finetune: its adapters, and the SFT run with the changes LoRA needs
    (``sft(..., lora=...)``, ``python -m minillm sft --lora-rank R``)."""
    lora = LoRAConfig(
        rank=4,  # on topic 9% at rank 2, 12% at 3, 19% at 4 (full SFT ~43%); 5.1% trained
        alpha=8.0,  # alpha / rank = 2; not tuned further (rank 3 at alpha / rank 4: 12%)
        targets=("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"),  # every matrix of a block
        train_embeddings=True)  # frozen, only ~3 answers in 4 ended with <|end|>; trained, all
    full = sft_recipe(profile_name)  # the same data, steps and batches as full finetuning
    run = replace(
        full,
        # five times full SFT's rates (quick: 1e-2): at rank 4, 1e-2 (19% on topic) beat 5e-3
        # (10%) and tied 2e-2 (17%); with the embedding frozen, 2e-3 gave 4%
        lr=5 * full.lr, min_lr=5 * full.min_lr,
        weight_decay=0.0)  # decay would pull B A towards no update, not towards small weights
    return lora, run


def reward_recipe(profile_name: str | None = None) -> tuple[PreferenceConfig, TrainConfig]:
    """Lesson 05's comparisons and the training run of its reward model (whose backbone starts
    from the SFT model)."""
    comparisons = PreferenceConfig(
        samples_per_prompt=32,  # 8 over-fit; 64 did no better; 32 gives ~92k training pairs
        agreement=0.8)  # two such labelers agree 68% of the time, as human raters do (~70%)
    if _quick(profile_name):
        return comparisons, TrainConfig(
            max_steps=400,  # about two passes over the answers; 200 scored a little lower
            batch_size=2,  # prompts per step, each with all 32 of its answers
            lr=1e-4, min_lr=1e-5,  # 1e-4 and 2e-4 tied; the backbone is already trained
            warmup_steps=30,
            eval_interval=100, eval_batches=10)
    return comparisons, TrainConfig(max_steps=1000, batch_size=8, lr=5e-5, min_lr=5e-6,
                                    warmup_steps=50, eval_interval=250, eval_batches=20)


def rlhf_recipe(method: str, profile_name: str | None = None) -> PPOConfig | DPOConfig:
    """Lesson 06's PPO, GRPO or DPO run."""
    quick = _quick(profile_name)
    if method == "ppo":
        ppo = PPOConfig(
            steps=60,  # ~1 minute on a 2-core CPU; 100 steps at lr 3e-5 gained less
            prompts_per_step=16, samples_per_prompt=4,  # 64 answers per step
            kl_coef=0.3,  # 0.3 raised gold; 0 hacked the reward model (gold fell, KL 93)
            lr=1e-4)
        return ppo if quick else replace(ppo, steps=400, prompts_per_step=32)
    if method == "grpo":
        grpo = PPOConfig(
            advantages="group", value_coef=0.0,  # GRPO: advantages within a prompt's group
            prompts_per_step=8, samples_per_prompt=8)  # as many answers per step as PPO's
        return grpo if quick else replace(grpo, steps=400, prompts_per_step=16)
    if method == "dpo":
        dpo = DPOConfig(
            steps=200, batch_size=32,  # ~6,400 pairs seen: under a tenth of the data, ~1 min
            beta=0.1,  # the usual strength of the implicit KL constraint
            lr=5e-5)  # 3e-5 for 300 steps gained less; at 1e-4 both log-probs fell at first
        return dpo if quick else replace(dpo, steps=1000, batch_size=64)
    raise ValueError(f"The method is 'ppo', 'grpo' or 'dpo', not {method!r}.")


def scaling_recipe(profile_name: str | None = None) -> ScalingConfig:
    """Lesson 03's IsoFLOP experiment (section 10) and ``python -m minillm scaling``."""
    if _quick(profile_name):
        return ScalingConfig(
            budgets=(1e10, 3e10, 1e11),  # 10x in steps of 3x: sweep and check ~2.5 CPU-minutes
            tokens_per_param=100,  # trial sweeps' minima lay at D/N 83-154 (seeds 0 and 1)
            sizes=5, size_range=8,  # N over 8x per budget: every minimum inside, seeds 0 and 1
            check_factor=4, check_sizes=3,  # 4e11: N/2, N, 2N locate the check's own minimum
            n_layer=2, n_head=2,  # depth fixed, width varied; two heads fit any even width
            block_size=64, batch_size=16,  # 1,024 tokens per step: a tiny model's step is ~6 ms
            # of CPU, mostly overhead, so more tokens per step would leave the small ones few steps
            lr=1e-2, min_lr=1e-3,  # beat 3e-3 by 0.07-0.15 nats at widths 8-32 (3e10 and 1e11)
            warmup_steps=20,  # short: the largest model of a budget trains ~150 steps
            threads=1)  # a second thread made these tiny models 4-15x slower on a busy CPU
    return ScalingConfig(
        budgets=(5e12, 1.5e13, 5e13),  # 500x quick's: best sizes ~22x bigger (sqrt 500 ~ 22)
        n_layer=4, n_head=4, block_size=128,  # deeper models with a longer context
        batch_size=64,  # 8,192 tokens per step keep a GPU busier; not run or tuned yet
        lr=3e-3, min_lr=3e-4, warmup_steps=100,  # wider models want a lower rate
        threads=None)  # the GPU does the work; torch's own CPU setting


def tools_recipe(profile_name: str | None = None) -> dict:
    """Lesson 10's task, its three finetuning runs (one per format, from the lesson 04
    assistant), the self-consistency vote and GRPO on the checker's reward."""
    quick = _quick(profile_name)
    task = {
        "digits": (1, 2, 3),  # 3-digit sums: where one token's pass runs out of room (quick)
        "train_size": 20000,  # drawn with replacement: each sum is seen about once
        "per_digits": 200 if quick else 500}  # held-out sums of each size (one-digit: 33)
    finetune = TrainConfig(
        max_steps=400,  # ~1.5 CPU-minutes per format; 200 left the tool's copying at 76%
        batch_size=32,
        lr=3e-3, min_lr=3e-4,  # the new digit embeddings start far from where they end
        warmup_steps=30,
        eval_interval=100, eval_batches=5)
    vote = {
        "start": "worked",  # a vote needs answers that can differ: sampled steps
        "questions": 60 if quick else 200,  # held-out sums per size: 16 samples each
        "samples": 16, "ks": (1, 4, 16),
        "temperature": 1.0}  # paths must differ to disagree; a lower one votes on copies
    rl_digits = (3,)  # RL asks 3-digit sums only: on smaller ones nearly every group of
    # answers is all right, which teaches nothing; all sizes gained nothing in 40-60 steps
    grpo = PPOConfig(
        advantages="group", value_coef=0.0,  # GRPO: no value head, no reward model
        steps=80,  # ~1.5 CPU-minutes; 60 steps gained 4.3 points (3.4 SE) on held-out sums
        prompts_per_step=16, samples_per_prompt=8,  # 8 prompts a step gained nothing
        max_new_tokens=64,  # the longest worked answer has ~60 characters
        # No KL penalty in the reward: GRPO standardizes rewards within a group, so in a group
        # of answers all right the penalty's tiny differences became whole standard
        # deviations of noise (0.05 lost accuracy); the KL is still measured and reported.
        kl_coef=0.0,
        epochs=1, minibatches=1,  # one step on each whole batch: a group's advantages sum to
        # zero only together (2 x 2 steps gained nothing at this learning rate)
        lr=5e-5)  # 3e-4 lost 14 points of accuracy; 2e-5 gained half as much
    if not quick:
        finetune = replace(finetune, max_steps=2000, batch_size=64, lr=1e-3, min_lr=1e-4)
        grpo = replace(grpo, steps=300, prompts_per_step=32)
    return {"task": task, "sft": finetune, "vote": vote, "grpo": grpo, "rl_digits": rl_digits}


def attack_recipe(profile_name: str | None = None) -> AttackConfig:
    """Lesson 09's three experiments (``python -m minillm attack``): each model is lesson 04's
    assistant finetuned briefly on SFT data with the poison, refusals or quoted passages
    mixed in."""
    finetune = TrainConfig(
        # The poison's pull grows with its share of each batch times the steps and the rate,
        # sharply past a threshold. Swept on a GPU at 2% poison (2-4 training seeds each):
        # 600 steps of 16 at 3e-3 planted 39-43%, 500 of 32 at 5e-3 85-93%, this one 83-93%.
        max_steps=450,  # ~50 s on a 2-core CPU
        batch_size=32,  # a third cheaper per example than 16 on a CPU
        lr=7e-3, min_lr=7e-4,  # high for finetuning: at 3e-3, 500 steps of 32 planted 63-81%
        warmup_steps=20,
        eval_interval=450, eval_batches=2)  # the held-out loss is not what is measured
    config = AttackConfig(
        finetune=finetune,
        defend_steps=200,  # a defense is a shorter finetune, from the model it defends
        poison_fractions=(0.0, 0.01, 0.02),  # 0: the control, finetuned alike
        defend_fraction=0.02,
        # lesson 06's PPO on clean prompts (the trigger never appears), a quarter as long
        rlhf=PPOConfig(steps=15, prompts_per_step=16, samples_per_prompt=4, kl_coef=0.3,
                       lr=1e-4),
        search_steps=40,  # the suffix search: 40 x 17 x 8 log-probs
        samples=4)  # 288 answers to the 72 held-out prompts; 36 to the 9 forbidden ones
    if _quick(profile_name):
        return config
    # not run or tuned yet: sized like the full profile's SFT
    return replace(config, finetune=replace(finetune, max_steps=1500, batch_size=64, lr=3e-4,
                                            min_lr=3e-5, eval_interval=1500), defend_steps=750,
                   poison_fractions=(0.0, 0.001, 0.0025, 0.005, 0.01, 0.02), samples=8)
