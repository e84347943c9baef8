"""Option values checked where they are declared: ranges, finiteness and choices, in one sentence naming the option.

Two places declare options and both use this module:

- the options dataclasses, through :func:`gft_tokens.config.opt` (``min=``, ``max=``, ``gt=``, ``lt=``,
  ``choices=``; a float must be finite unless ``finite=False``), checked by :func:`check_value` when
  :func:`gft_tokens.config.resolve` builds the options;
- the scripts' own argparse flags, through :func:`bounded` (``type=bounded(int, min=1)``) and
  :class:`ArgumentParser`, whose errors are a :class:`~gft_tokens.errors.GFTError` (one ``error:`` line, exit 2,
  before anything is read or written) and which refuses NaN/inf for every ``type=float`` flag.
"""

from __future__ import annotations

import argparse
import math

from .errors import GFTError


def describe_range(min=None, max=None, gt=None, lt=None) -> str:
    lo = f"[{min}" if min is not None else f"({gt}" if gt is not None else "(-inf"
    hi = f"{max}]" if max is not None else f"{lt})" if lt is not None else "inf)"
    return f"{lo}, {hi}"


def range_problem(value, *, min=None, max=None, gt=None, lt=None, finite=True) -> str | None:
    """Why ``value`` is out of range (a phrase), or None when it is fine."""
    if isinstance(value, float) and finite and not math.isfinite(value):
        return f"must be a finite number in {describe_range(min, max, gt, lt)}"
    if any(b is not None for b in (min, max, gt, lt)):
        ok = ((min is None or value >= min) and (max is None or value <= max)
              and (gt is None or value > gt) and (lt is None or value < lt))
        if not ok:
            return f"must lie in {describe_range(min, max, gt, lt)}"
    return None


BOUND_KEYS = ("min", "max", "gt", "lt", "finite")


def check_value(name: str, value, meta: dict) -> None:
    """Refuse ``value`` of option ``name`` if it breaks the bounds/choices in ``meta`` (a field's metadata)."""
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            check_value(name, v, meta)
        return
    choices = meta.get("choices")
    if choices and value not in choices:
        raise GFTError(f"option {name!r} must be one of {list(choices)}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        bounds = {k: meta[k] for k in BOUND_KEYS if k in meta}
        problem = range_problem(value, **bounds)
        if problem:
            raise GFTError(f"option {name!r} {problem}, got {value!r}")


def bounded(base: type = int, *, min=None, max=None, gt=None, lt=None, finite=True):
    """An argparse ``type=`` that converts with ``base`` and refuses values out of the given range (and NaN/inf)."""
    kind = "an integer" if base is int else "a number"

    def convert(text: str):
        try:
            value = base(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(
                f"must be {kind} in {describe_range(min, max, gt, lt)}, got {text!r}") from None
        problem = range_problem(value, min=min, max=max, gt=gt, lt=lt, finite=finite)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value

    convert.__name__ = base.__name__
    convert.bounds = {"min": min, "max": max, "gt": gt, "lt": lt}
    return convert


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


_finite_float.__name__ = "float"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes end as one ``error:`` line (a :class:`GFTError`), and whose float flags are finite."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("type", float, _finite_float)  # type=float looks up the registry first

    def error(self, message):  # noqa: D401 - argparse's hook
        raise GFTError(message)


def positive(base: type = int, **kw):
    return bounded(base, min=1 if base is int else None, gt=None if base is int else 0, **kw)


def nonnegative(base: type = int, **kw):
    return bounded(base, min=0, **kw)


def device(text: str):
    """An argparse ``type=`` for ``--device``: a torch device this build of torch can use."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"device {text!r} is not available: this torch has no usable CUDA; use cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"device {text!r} is not available; use cpu")
    return text
