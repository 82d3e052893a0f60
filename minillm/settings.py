"""Where minillm keeps its files, and how big the lessons run.

Two environment variables steer every lesson and command:

- ``MINILLM_HOME``: the folder for artifacts (tokenizers, checkpoints, datasets, metric logs).
  Default: ``$XDG_CACHE_HOME/minillm``, i.e. ``~/.cache/minillm`` on most systems.
- ``MINILLM_PROFILE``: ``quick`` (sizes that run in minutes on a laptop CPU) or ``full``
  (sizes meant for a GPU). Default: ``full`` when a CUDA GPU is present, else ``quick``.

and a third lets a lesson be re-run without paying for its training again:

- ``MINILLM_REUSE=1``: a lesson's training cell picks up the run it saved before in
  ``MINILLM_HOME`` (see ``minillm.artifacts``) instead of training afresh. A finished run
  trains no further step and returns its saved history, so the plots are the same; an
  interrupted one continues where it stopped. Default: off, every training cell trains.
"""

from __future__ import annotations

import os
from pathlib import Path

PROFILES = ("quick", "full")


def home_dir() -> Path:
    """The artifact folder (created on first use)."""
    env = os.environ.get("MINILLM_HOME")
    if env:
        path = Path(env).expanduser()
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(cache) / "minillm"
    path.mkdir(parents=True, exist_ok=True)
    return path


def profile() -> str:
    """``"quick"`` or ``"full"``: from ``MINILLM_PROFILE``, else chosen by the hardware."""
    name = os.environ.get("MINILLM_PROFILE", "").strip().lower()
    if not name:
        import torch

        return "full" if torch.cuda.is_available() else "quick"
    if name not in PROFILES:
        raise ValueError(f"MINILLM_PROFILE must be one of {PROFILES}, not {name!r}.")
    return name


def reuse_artifacts(default: bool = False) -> bool:
    """Whether ``MINILLM_REUSE`` asks the lessons' training cells to reuse saved runs
    (``default`` when it is unset or empty)."""
    value = os.environ.get("MINILLM_REUSE", "").strip().lower()
    if value not in ("", "0", "1", "false", "true", "no", "yes"):
        raise ValueError(f"MINILLM_REUSE must be 1 or 0, not {value!r}.")
    return default if not value else value in ("1", "true", "yes")


def pick_device(device: str = "auto") -> str:
    """``"auto"`` picks CUDA, then Apple's MPS, then the CPU; any other name is checked."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind = device.split(":")[0]
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": bool(getattr(torch.backends, "mps", None))
                 and torch.backends.mps.is_available()}
    if kind not in available:
        raise ValueError(f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'mps'.")
    if not available[kind]:
        raise ValueError(f"Device {device!r} is not available on this machine; use 'auto'.")
    return device
