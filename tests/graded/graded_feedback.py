"""Helpers that make a graded test's failure message speak the learner's language.

Every graded assertion says what went in, what was expected, what came back and the rule of the
docstring it breaks. ``show`` writes values compactly; ``attempt`` turns a crash inside the
learner's function into such a message (NotImplementedError passes through: the grader counts
it as "not implemented yet").
"""

import torch


def show(value) -> str:
    """A value as a learner would write it: tensors as (rounded) nested lists."""
    if isinstance(value, torch.Tensor):
        if value.numel() > 40:
            return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
        if value.is_floating_point():
            return str(value.detach().double().round(decimals=4).tolist())
        return str(value.tolist())
    if isinstance(value, list) and len(value) > 40:
        return f"[{', '.join(map(show, value[:12]))}, ... ({len(value)} items)]"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple | list) and any(isinstance(v, torch.Tensor) for v in value):
        return "(" + ", ".join(show(v) for v in value) + ")"
    return repr(value)


def call_text(function, *args, **kwargs) -> str:
    shown = [show(a) for a in args] + [f"{key}={show(value)}" for key, value in kwargs.items()]
    return f"{function.__name__}({', '.join(shown)})"


def attempt(rule: str, function, *args, **kwargs):
    """``function(*args, **kwargs)``; if it crashes, fail with the call, the error and ``rule``."""
    try:
        return function(*args, **kwargs)
    except (NotImplementedError, TimeoutError, AssertionError):
        raise
    except Exception as error:  # the learner's code crashed: say where, and what it should do
        raise AssertionError(
            f"{call_text(function, *args, **kwargs)} raised {type(error).__name__}: {error}; "
            f"{rule}"
        ) from error


def matching_mistake(got, variants: dict, what: str = "your result") -> str:
    """A hint naming the usual mistake whose result ``got`` equals, or "" if none does.

    ``variants`` maps a description ("the margin taken as rejected - chosen; use chosen -
    rejected") to what that mistake would return. A hint is only given where it fits.
    """
    for description, value in variants.items():
        try:
            same = torch.allclose(torch.as_tensor(got, dtype=torch.float64),
                                  torch.as_tensor(value, dtype=torch.float64), atol=1e-6)
        except (RuntimeError, TypeError, ValueError):  # another shape: not this mistake
            same = False
        if same:
            return f" ({what.capitalize()} is what {description}.)"
    return ""
