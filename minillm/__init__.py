"""minillm: the building blocks of the minillm course, from raw text to an RLHF-tuned assistant.

Modules, in the order the lessons use them: ``data`` (the tiny Shakespeare corpus),
``tokenizer`` (byte-level BPE), ``artifacts`` (what each lesson leaves for the next),
``grade`` (the exercise grader), ``settings`` (profiles and the artifact folder).
"""

__version__ = "0.1.0"
