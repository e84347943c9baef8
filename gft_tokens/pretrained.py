"""The pretrained base class and config building: ``config.json`` + ``model.safetensors`` (the HuggingFace layout).

Every model and tokenizer in the package derives from :class:`GFTPreTrainedModel`, a ``transformers``
``PreTrainedModel`` whose ``save_pretrained``/``from_pretrained`` write and read exactly the HF layout, but with
checks that turn every problem (missing directory, missing or truncated weights, keys or shapes that do not fit
the config) into one :class:`~gft_tokens.errors.GFTError` naming it, and with writes that never leave a
half-written directory behind. A leaf above :mod:`gft_tokens.fs` only.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import PretrainedConfig, PreTrainedModel

from .errors import GFTError
from .fs import (CONFIG_NAME, WEIGHTS_MANIFEST, WEIGHTS_NAME, atomic_dir, load_safetensors, read_config_dict,
                 sha256_file)

def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], where: str) -> None:
    """Raise a :class:`GFTError` listing missing/unexpected keys and shape mismatches (at most 5 of each)."""

    def some(keys):
        keys = sorted(keys)
        return ", ".join(keys[:5]) + (f" (and {len(keys) - 5} more)" if len(keys) > 5 else "")

    missing = expected.keys() - found.keys()
    unexpected = found.keys() - expected.keys()
    mismatched = [
        f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(expected.keys() & found.keys())
        if tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {some(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {some(unexpected)}")
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched[:5]))
    if problems:
        raise GFTError(f"weights in {where} do not match the config: " + " | ".join(problems))


@functools.lru_cache(maxsize=1)
def _base_config_keys() -> frozenset[str]:
    return frozenset(PretrainedConfig().to_dict()) | {"architectures", "model_type", "transformers_version",
                                                      "dtype", "torch_dtype", "_name_or_path"}


def preset_config(config_class: type[PretrainedConfig], presets: dict, preset: str, label: str, overrides: dict,
                  strict: bool = False) -> PretrainedConfig:
    """``config_class`` from ``presets[preset]`` plus ``overrides``; an unknown preset is refused with a did-you-mean
    naming the ``label`` (e.g. "LlamaGen preset"). ``strict`` also refuses override keys the class does not take."""
    if preset not in presets:
        close = difflib.get_close_matches(preset, presets, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise GFTError(f"unknown {label} {preset!r}{hint}; known: {', '.join(presets)}")
    values = {**presets[preset], "preset": preset, **overrides}
    if strict:
        return build_config(config_class, values, f"{preset} overrides")
    return config_class(**values)


def config_keys(config_class: type[PretrainedConfig]) -> set[str]:
    """The keyword arguments ``config_class`` takes: its constructor's and those of its bases up to
    ``PretrainedConfig`` (a config may extend another family's)."""
    known = set()
    for cls in config_class.__mro__:
        if cls is PretrainedConfig or not issubclass(cls, PretrainedConfig):
            break
        if "__init__" in cls.__dict__:
            known |= {p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")}
    return known


def build_config(config_class: type[PretrainedConfig], values: dict, where: str) -> PretrainedConfig:
    """Instantiate ``config_class`` from ``values`` refusing keys its constructor does not know."""
    known = config_keys(config_class)
    ignored = _base_config_keys()  # keys PretrainedConfig itself writes into config.json
    for key in values:
        if key not in known and key not in ignored:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise GFTError(f"unknown {config_class.__name__} key {key!r} in {where}{hint}")
    try:
        return config_class(**{k: v for k, v in values.items() if k in known})
    except (TypeError, ValueError) as exc:
        if isinstance(exc, GFTError):
            raise
        raise GFTError(f"invalid {config_class.__name__} in {where}: {exc}") from None


def config_replace(config: PretrainedConfig, **changes) -> PretrainedConfig:
    """A copy of ``config`` with ``changes`` applied (validated like a loaded config)."""
    return build_config(type(config), {**config.to_diff_dict(), **changes}, f"{type(config).__name__} update")


class GFTPreTrainedModel(PreTrainedModel):
    """Base class: HF layout, strict loading, atomic saving.

    Sub-modules initialise themselves (see :mod:`gft_tokens.nn`), so ``_init_weights`` is a no-op: a model is
    fully initialised by its constructor, also under ``deepspeed.zero.Init`` where each sub-module is partitioned
    right after its own constructor returns.
    """

    base_model_prefix = "model"
    _supports_param_buffer_assignment = False

    def _init_weights(self, module):  # modules initialise themselves
        pass

    def save_pretrained(
        self, save_directory, state_dict: dict | None = None, extra_files: dict[str, str] | None = None,
        overwrite: bool = False, **_ignored
    ) -> Path:
        """Write ``config.json`` + ``model.safetensors`` to ``save_directory`` atomically.

        ``state_dict`` overrides the module's own (e.g. a consolidated ZeRO-3 state dict); ``extra_files`` maps
        file names to text written alongside (a training recipe, a log) in the same atomic step. An existing
        ``save_directory`` holding other files than these is refused unless ``overwrite``.
        """
        state = self.state_dict() if state_dict is None else state_dict
        state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        config = self.config.to_diff_dict()
        config["architectures"] = [type(self).__name__]
        names = {CONFIG_NAME, WEIGHTS_NAME, WEIGHTS_MANIFEST, *(extra_files or {})}
        with atomic_dir(save_directory, owned=names.__contains__, overwrite=overwrite) as tmp:
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
            files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(tmp.iterdir())}
            (tmp / WEIGHTS_MANIFEST).write_text(json.dumps({"files": files}, indent=1) + "\n")
        return Path(save_directory)

    @classmethod
    def config_from_pretrained(cls, path) -> PretrainedConfig:
        values = read_config_dict(path)
        model_type = values.get("model_type")
        if model_type != cls.config_class.model_type:
            raise GFTError(
                f"{path} holds a {model_type!r} checkpoint, not a {cls.config_class.model_type!r} "
                f"({cls.__name__}); check the path"
            )
        return build_config(cls.config_class, values, f"{path}/{CONFIG_NAME}")

    @classmethod
    def from_pretrained(cls, path, map_location: str | torch.device = "cpu", **_ignored):
        """Load a directory written by :meth:`save_pretrained`, checking keys and shapes against the config."""
        config = cls.config_from_pretrained(path)
        model = cls(config)
        state = load_safetensors(Path(path) / WEIGHTS_NAME)
        check_state_dict(model.state_dict(), state, str(path))
        model.load_state_dict(state, strict=True)
        return model.to(map_location).eval()
