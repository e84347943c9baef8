"""What an official-checkpoint importer is made of: the :class:`Converted` result, the :class:`Importer` record, and
reading a checkpoint file without running code (:func:`load_checkpoint_file`, :func:`extract_state_dict`).

A leaf below the importers: the converters in ``families/<name>/importer.py`` use it, and
:mod:`gft_tokens.importers` (the top of the import graph) collects them into the format registry.

Files are read without executing code: safetensors, or ``torch.load(weights_only=True)`` (plus
``argparse.Namespace``, which some training scripts store beside the weights and which cannot run code). A pickle
that needs anything else is refused with a :class:`~gft_tokens.errors.GFTError`. The state dict may be the whole
file or sit under a container key (``model``, ``module``, ``state_dict``, or the one named by ``key=``); a
``module.`` / ``_orig_mod.`` prefix shared by every key (DDP / ``torch.compile``) is removed.
"""

from __future__ import annotations

import argparse
import pickle
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .errors import GFTError

CONTAINER_KEYS = ("model", "module", "state_dict")
STRIP_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class Converted:
    """What an importer produces: the target class, its config and the state dict in our names."""

    model_class: type
    config: object
    state: dict[str, torch.Tensor]
    notes: list[str] = field(default_factory=list)  # what was done: dropped keys, detected preset, added layers


@dataclass
class Importer:
    name: str
    description: str
    convert: Callable[..., Converted]  # convert(state, **options)
    options: dict[str, str] = field(default_factory=dict)  # keyword options of convert → help text
    # container key read when none is named and the file has it (MAR: "model_ema"), before CONTAINER_KEYS
    default_key: str | None = None
    # what the file records beside the weights (training args), passed to convert as ``recorded=`` (None if absent)
    recorded: Callable[[object], dict | None] | None = None


# ---------------------------------------------------------------------------------------------------------------
# Reading files safely
# ---------------------------------------------------------------------------------------------------------------
def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= path.stat().st_size and head[8:9] == b"{"


def load_checkpoint_file(path: str | Path):
    """The object stored in ``path`` (safetensors or a torch pickle), loaded without running any code."""
    path = Path(path)
    if not path.exists():
        raise GFTError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise GFTError(f"checkpoint {str(path)!r} is not a file")
    if path.stat().st_size == 0:
        raise GFTError(f"checkpoint {path} is empty")
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise GFTError(f"checkpoint {path} is a corrupt safetensors file ({exc})") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" (it references {found.group(1)})" if found else ""
        raise GFTError(
            f"refusing to load {path}: it is a pickle that needs code execution to unpickle{what}. Only tensors "
            "and plain containers are loaded (torch.load weights_only=True). If you trust the file, re-save just "
            "its state dict: torch.save(torch.load(src, weights_only=False)['model'], 'weights.pt')"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GFTError(f"checkpoint {path} is not a readable PyTorch file (corrupt or truncated?): {first}") from None


def extract_state_dict(obj, key: str | None = None, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: ``obj[key]``, a known container key, or ``obj`` itself."""
    if not isinstance(obj, dict):
        raise GFTError(f"{where} holds a {type(obj).__name__}, not a state dict or a dict containing one")
    if key is not None:
        if key not in obj:
            raise GFTError(f"{where} has no key {key!r}; its top-level keys: {', '.join(map(str, list(obj)[:10]))}")
        state = obj[key]
    elif obj and all(torch.is_tensor(v) for v in obj.values()):
        state = obj
    else:
        found = [k for k in CONTAINER_KEYS if isinstance(obj.get(k), dict)]
        if not found:
            raise GFTError(f"{where} is neither a state dict nor a dict with one of {list(CONTAINER_KEYS)}; its "
                           f"top-level keys: {', '.join(map(str, list(obj)[:10]))} (name the right one with --key)")
        state = obj[found[0]]
    if not isinstance(state, dict) or not state:
        raise GFTError(f"{where}: the state dict is empty or not a dict")
    bad = [k for k, v in state.items() if not torch.is_tensor(v)]
    if bad:
        raise GFTError(f"{where}: entries that are not tensors: {', '.join(map(str, bad[:5]))}")
    for prefix in STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)
