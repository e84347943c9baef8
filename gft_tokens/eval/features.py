"""The feature-extractor interface the metrics are computed through.

A feature extractor is any object with

* ``name`` (str) — shown in reports;
* ``feature_dim`` (int) — D, the width of the features FID and precision/recall use;
* ``num_classes`` (int or None) — K if it also classifies (Inception Score and class accuracy need it), else None;
* ``fingerprint`` (str) — identifies the weights *and* the preprocessing; reference statistics are cached under it,
  so change it whenever either changes;
* ``extract(images) -> ExtractorOutput`` — images float (B, 3, H, W) in [-1, 1] → features (B, D) and class
  probabilities (B, K) or None.

It is a :class:`typing.Protocol`: nothing needs to be subclassed. The shipped
:class:`~gft_tokens.eval.probe.ShapesProbe` is one; an Inception network is plugged in the same way (see the
package docstring of :mod:`gft_tokens.eval`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import GFTError
from ..fs import read_config_dict


@dataclass
class ExtractorOutput:
    features: torch.Tensor  # (B, D) float
    probs: torch.Tensor | None = None  # (B, K), rows summing to 1, or None


@runtime_checkable
class FeatureExtractor(Protocol):
    name: str
    feature_dim: int
    num_classes: int | None
    fingerprint: str

    def extract(self, images: torch.Tensor) -> ExtractorOutput: ...


EXTRACTORS: dict[str, type] = {}


def register_extractor(model_type: str, cls) -> None:
    """Make :func:`load_extractor` open a directory whose ``config.json`` has this ``model_type`` with
    ``cls.from_pretrained(dir)``."""
    EXTRACTORS[model_type] = cls


def check_extractor(obj) -> FeatureExtractor:
    missing = [a for a in ("name", "feature_dim", "num_classes", "fingerprint", "extract") if not hasattr(obj, a)]
    if missing:
        raise GFTError(f"{type(obj).__name__} is not a feature extractor: it lacks {', '.join(missing)} "
                       f"(see gft_tokens.eval.features)")
    return obj


def load_extractor(spec: str) -> FeatureExtractor:
    """A feature extractor from a saved directory (dispatch on ``config.json``'s ``model_type``) or from
    ``"package.module:factory"`` — an importable callable returning an extractor (your own, e.g. an Inception
    network reading a local weights file)."""
    path = Path(spec)
    if path.exists():
        model_type = read_config_dict(path).get("model_type")
        if model_type not in EXTRACTORS:
            raise GFTError(f"{spec} is not a feature-extractor checkpoint (model_type {model_type!r}; known: "
                           f"{sorted(EXTRACTORS)})")
        return check_extractor(EXTRACTORS[model_type].from_pretrained(path))
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise GFTError(f"cannot import the extractor factory {spec!r}: {exc}") from None
        return check_extractor(factory())
    raise GFTError(f"feature extractor {spec!r} is neither an existing directory nor a 'module:factory' name")


def uint8_to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float32 in [-1, 1] (the inverse of :func:`gft_tokens.viz.to_uint8`)."""
    x = torch.as_tensor(np.asarray(images))
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@torch.no_grad()
def extract_all(extractor: FeatureExtractor, images, batch_size: int = 500,
                progress: bool | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Run ``extractor`` over images given as uint8 (N, H, W, 3) or float (N, 3, H, W) in [-1, 1], in batches, with a
    progress bar on stderr (``progress=None``: only when stderr is a terminal and there is more than one batch).

    Returns features (N, D) float64 and probabilities (N, K) float64 (None if the extractor does not classify).
    """
    feats, probs = [], []
    starts = range(0, len(images), batch_size)
    if progress is None:
        disable = None if len(starts) > 1 else True  # tqdm: None = only on a terminal
    else:
        disable = not progress
    bar = tqdm(total=len(images), desc=f"{extractor.name} features", unit="img", disable=disable, leave=False)
    for i in starts:
        chunk = images[i:i + batch_size]
        x = uint8_to_float(chunk) if isinstance(chunk, np.ndarray) and chunk.dtype == np.uint8 else torch.as_tensor(chunk)
        out = extractor.extract(x)
        f = out.features.detach().double().cpu()
        if f.shape != (len(x), extractor.feature_dim):
            raise GFTError(f"extractor {extractor.name} returned features of shape {tuple(f.shape)}, expected "
                           f"({len(x)}, {extractor.feature_dim})")
        feats.append(f.numpy())
        if out.probs is not None:
            probs.append(out.probs.detach().double().cpu().numpy())
        bar.update(len(x))
    bar.close()
    features = np.concatenate(feats)
    return features, (np.concatenate(probs) if probs else None)
