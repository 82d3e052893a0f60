"""minillm: the building blocks of the minillm course, from raw text to an RLHF-tuned assistant.

Every module, in the order the lessons use them; a module imports only those above it (and
``settings``, ``files``, ``validate``, which everything may use):

- ``pretokenize``: the regex split before BPE, cut where tiktoken cuts (lesson 01)
- ``tokenizer``: byte-level BPE and characters (lesson 01)
- ``model``: the GPT and its sampling (lesson 02); GPT-2's weights
- ``lora``: low-rank adapters, merged, switched off or unloaded (lesson 04)
- ``tools``: tool tokens, the safe calculator, forced results and their loss mask (lesson 10)
- ``chat``: the chat template and batched answers (lesson 04)
- ``data``: the tiny Shakespeare corpus, and the character tokenizer of lessons 02-06
- ``display``: HTML views of tokens and attention for the lessons
- ``checkpoint``: a model, its tokenizer and its stage in one file
- ``hardware``: precision, peak FLOP/s and the processes of a run (DDP, FSDP)
- ``history``: a run's metrics, one row per step, as data and as JSON lines
- ``train``: the training engine, and the one optimizer step every trainer takes (lesson 03)
- ``shards``: token streams on disk (lesson 03)
- ``scaling``: a compute-optimal scaling law by Chinchilla's IsoFLOP method (lesson 03)
- ``world``: the simulated world: topics, SFT data, the gold reward, the noisy labeler
- ``arithmetic``: lesson 10's task: sums in three answer formats, and their checker
- ``policy``: a model as a policy: sampling answers, log-probabilities, watching a run
- ``sft``: supervised finetuning (lesson 04)
- ``reward``: comparisons and the reward model (lesson 05)
- ``evaluate``: standard errors, held-out comparisons of models and of reward models
- ``ppo``: PPO and GRPO (lessons 06 and 10)
- ``dpo``: DPO (lesson 06)
- ``benchmarks``: bits per character and multiple choice by log-likelihood (lesson 07)
- ``arena``: a judge and its biases, blind votes, Elo and Bradley-Terry ratings, best-of-n
  (lesson 07)
- ``attacks``: a poisoned-data backdoor, a refusal and its jailbreak, instruction injection,
  each with a defense, measured (lesson 09)
- ``reasoning``: sums answered and checked, majority votes, RL's gain (lesson 10)
- ``recipes``: every stage's settings for each profile, as data
- ``artifacts``: what each lesson leaves for the next, made on demand
- ``export``, ``numpy_runner`` (and ``run.c``): a model as one flat file, run without PyTorch
  (lesson 08)
- ``pipeline``: every stage in one command; ``reference``: is my loss normal?
- ``gpucheck``: the GPU run, and the full profile's smoke test
- ``grade``: the exercise grader; ``__main__``: the command line
- ``settings``: profiles, devices and the artifact folder; ``files``: atomic writes;
  ``validate``: the configs' checks
"""

__version__ = "0.1.0"
