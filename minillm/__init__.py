"""minillm: the building blocks of the minillm course, from raw text to an RLHF-tuned assistant.

Modules, in the order the lessons use them: ``data`` (the tiny Shakespeare corpus),
``tokenizer`` (byte-level BPE and characters), ``model`` (the GPT), ``train`` (the training
engine), ``checkpoint`` (saving and loading models), ``shards`` (token streams on disk),
``artifacts`` (what each lesson leaves for the next), ``reference`` (is my loss normal?),
``chat`` (the chat template and batched answers), ``sft`` (supervised finetuning: its data,
training and metrics), ``reward`` (the simulated labeler, comparisons and the reward model),
``grade`` (the exercise grader), ``settings`` (profiles, devices and
the artifact folder).
``export``, ``numpy_runner`` and ``run.c``: a model as one flat file, run without PyTorch (08).
"""

__version__ = "0.1.0"
