"""Attribute accuracy of text-to-image samples, in the manner of GenEval: does each image show what its prompt asked?

A prompt is parsed back into the attributes it requests with the caption vocabulary of
:mod:`gft_tokens.data.captions` (:func:`parse_prompt`): its shape, colour name, size bucket and position bucket,
each only where the prompt names it ("a red star" requests a shape and a colour, nothing else). The attribute probe
(:mod:`gft_tokens.eval.attr_probe`, shipped in ``tokenizers/shapes-attr-probe``) reads the four attributes off every
image, and :func:`score_attributes` reports, per attribute, the fraction of the images whose prompt requests it
that show it, and the fraction of images showing *every* attribute their prompt requests — each with a bootstrap
standard deviation (images resampled with replacement). Attributes a prompt does not mention are not scored.

A word outside the caption vocabulary, or a prompt naming two values of one attribute ("a red blue star"), is
refused: such a prompt cannot be scored without guessing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.captions import dataset_captions, vocabulary, words
from ..data.shapes import CLASS_NAMES, COLOUR_NAMES, HELDOUT_SEED, SIZE_NAMES, ShapesDataset
from ..errors import GFTError
from .attr_probe import ATTRIBUTE_NAMES, ATTRIBUTES, ShapesAttributeProbe
from .spread import DEFAULT_BOOTSTRAP

DEFAULT_ATTR_PROBE = "tokenizers/shapes-attr-probe"
DEFAULT_PROMPTS = 200
_ROWS, _COLUMNS = ("top", "bottom"), ("left", "right")


def parse_prompt(prompt: str) -> dict[str, str]:
    """The attributes a prompt requests, {attribute: name} for those it names (shape, colour, size, position).

    >>> parse_prompt("a small red star in the top left corner")
    {'shape': 'star', 'colour': 'red', 'size': 'small', 'position': 'top left'}
    >>> parse_prompt("a ring, large, at the bottom")
    {'shape': 'ring', 'size': 'large', 'position': 'bottom'}
    """
    tokens = words(prompt)
    unknown = sorted(set(tokens) - set(_VOCABULARY))
    if unknown:
        raise GFTError(f"prompt {prompt!r} has words outside the caption vocabulary ({', '.join(unknown)}); "
                       f"attribute accuracy reads prompts written in the words of gft_tokens/data/captions.py")
    found: dict[str, list[str]] = {"shape": [], "colour": [], "size": []}
    for kind, names in (("shape", CLASS_NAMES), ("colour", COLOUR_NAMES), ("size", SIZE_NAMES)):
        found[kind] = [t for t in tokens if t in names]
    row = [t for t in tokens if t in _ROWS]
    column = [t for t in tokens if t in _COLUMNS]
    centre = [t for t in tokens if t == "center"]
    for kind, values in (*found.items(), ("row", row), ("column", column), ("center", centre)):
        if len(values) > 1:
            what = kind if kind in found else "position"
            raise GFTError(f"prompt {prompt!r} names more than one {what} ({', '.join(values)}); it cannot be scored")
    if centre and (row or column):
        raise GFTError(f"prompt {prompt!r} names the center and another position; it cannot be scored")
    out = {kind: values[0] for kind, values in found.items() if values}
    position = " ".join(row + column) or (centre[0] if centre else "")
    if position:
        out["position"] = position
    return {a: out[a] for a in ATTRIBUTES if a in out}


_VOCABULARY = vocabulary()


def requested_ids(prompts: list[str]) -> dict[str, np.ndarray]:
    """Class ids of the requested attributes, {attribute: (N,) int64}, -1 where a prompt does not name it."""
    parsed = [parse_prompt(p) for p in prompts]
    return {a: np.array([ATTRIBUTE_NAMES[a].index(q[a]) if a in q else -1 for q in parsed], dtype=np.int64)
            for a in ATTRIBUTES}


def heldout_prompts(n: int = DEFAULT_PROMPTS, seed: int = HELDOUT_SEED) -> list[str]:
    """A fixed prompt set: the captions of the first ``n`` items of the class-balanced held-out split (each
    item's own attributes through its own template, as :mod:`gft_tokens.data.captions` writes them)."""
    if n <= 0:
        raise GFTError(f"the prompt set needs at least one prompt, got {n}")
    return dataset_captions(ShapesDataset(length=n, size=32, seed=seed, balanced=True))


def _rates(hits: np.ndarray, asked: np.ndarray, idx: np.ndarray | None = None) -> float | None:
    if idx is not None:
        hits, asked = hits[idx], asked[idx]
    n = int(asked.sum())
    return float(hits[asked].mean()) if n else None


def score_predictions(predicted: dict[str, np.ndarray], requested: dict[str, np.ndarray],
                      n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict:
    """Per-attribute accuracy and the all-requested-correct rate of ``predicted`` class ids against ``requested``
    ones (-1: not requested), each with its bootstrap standard deviation over ``n_boot`` resamples of the images
    (0: no spreads)."""
    if n_boot == 1 or n_boot < 0:
        raise GFTError(f"a bootstrap spread needs 0 (none) or at least 2 resamples, got {n_boot}")
    n = len(next(iter(requested.values())))
    asked = {a: requested[a] >= 0 for a in ATTRIBUTES}
    hits = {a: (predicted[a] == requested[a]) & asked[a] for a in ATTRIBUTES}
    any_asked = np.logical_or.reduce([asked[a] for a in ATTRIBUTES])
    all_ok = np.logical_and.reduce([hits[a] | ~asked[a] for a in ATTRIBUTES]) & any_asked
    rng = np.random.default_rng(seed)
    boots = [rng.integers(0, n, n) for _ in range(n_boot)] if n_boot and n > 1 else []

    def spread(h, m):
        values = [v for v in (_rates(h, m, idx) for idx in boots) if v is not None]
        return float(np.std(values, ddof=1)) if len(values) > 1 else None

    attributes = {}
    for a in ATTRIBUTES:
        names = ATTRIBUTE_NAMES[a]
        by_value = {names[k]: _rates(hits[a], requested[a] == k) for k in range(len(names))
                    if (requested[a] == k).any()}
        attributes[a] = {"requested": int(asked[a].sum()), "accuracy": _rates(hits[a], asked[a]),
                         "accuracy_std": spread(hits[a], asked[a]), "chance": 1.0 / len(names),
                         "by_value": by_value}
    return {"n": n, "attributes": attributes, "all_correct": _rates(all_ok, any_asked),
            "all_correct_std": spread(all_ok, any_asked), "all_correct_n": int(any_asked.sum()), "n_boot": n_boot}


def score_attributes(images: np.ndarray, prompts: list[str], probe: ShapesAttributeProbe,
                     n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, batch_size: int = 500) -> dict:
    """Attribute accuracy of ``images`` (uint8 (N, H, W, 3)) generated for ``prompts`` (one per image): see
    :func:`score_predictions`; adds the probe's fingerprint."""
    images = np.asarray(images)
    if len(prompts) != len(images):
        raise GFTError(f"{len(images)} images but {len(prompts)} prompts: attribute accuracy needs one prompt per "
                       f"image")
    if len(images) == 0:
        raise GFTError("no images to score")
    size = probe.config.image_size
    if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
        raise GFTError(f"the attribute probe scores uint8 images (N, {size}, {size}, 3), got {images.dtype} "
                       f"{images.shape}")
    requested = requested_ids(list(prompts))
    predicted = probe.predict(images, batch_size=batch_size)
    return {**score_predictions(predicted, requested, n_boot, seed), "probe": probe.fingerprint}


def prompts_of_samples(arrays: dict[str, np.ndarray], path) -> list[str]:
    """One prompt per image of a samples file: ``prompts`` (one per image, or the distinct prompts with ``rows``
    (N,) indexing them, as ``scripts/generate.py --model t2i`` and ``scripts/sweep.py`` write)."""
    images = arrays.get("arr_0", arrays.get("images"))
    if "prompts" not in arrays:
        raise GFTError(f"{path} holds no prompts ('prompts'): --attributes scores text-to-image samples, as "
                       f"scripts/generate.py --model t2i writes them; found keys {sorted(arrays)}")
    prompts = [str(p) for p in np.atleast_1d(arrays["prompts"]).tolist()]
    n = len(images) if images is not None else None
    if "rows" in arrays:
        rows = np.asarray(arrays["rows"])
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer) or (n is not None and len(rows) != n):
            raise GFTError(f"'rows' in {path} must be integers, one per image ({n}), got {rows.dtype} {rows.shape}")
        if len(rows) and (rows.min() < 0 or rows.max() >= len(prompts)):
            raise GFTError(f"'rows' in {path} must index its {len(prompts)} prompts, found {int(rows.max())}")
        return [prompts[i] for i in rows.tolist()]
    if n is not None and len(prompts) != n:
        raise GFTError(f"{path} holds {len(prompts)} prompts for {n} images and no 'rows' saying which is whose")
    return prompts


__all__ = ["DEFAULT_ATTR_PROBE", "DEFAULT_PROMPTS", "heldout_prompts", "parse_prompt",
           "prompts_of_samples", "requested_ids", "score_attributes", "score_predictions"]
