"""Captions of the embedded shapes data, written from each sample's own attributes.

A caption names the sample's shape and some of its colour, size bucket and position bucket
(:func:`gft_tokens.data.shapes.describe`), through one of :data:`TEMPLATES`; which template is a pure function of
``(seed, index)``, so the same dataset always gets the same captions. Colour and shape are drawn independently in
the data, so a caption's colour word says nothing of its shape word.
"""

from __future__ import annotations

import re

import numpy as np

from .shapes import CLASS_NAMES, COLOUR_NAMES, POSITION_NAMES, SIZE_NAMES, ShapesDataset, describe, sample_params


def _where(position: str) -> str:
    if position == "center":
        return "in the center"
    if " " in position:  # "top left" …
        return f"in the {position} corner"
    return f"at the {position}"


# Each template reads the attributes dict (shape, colour, size, position) and returns a caption.
TEMPLATES = (
    lambda a: f"a {a['size']} {a['colour']} {a['shape']} {_where(a['position'])}",
    lambda a: f"a {a['colour']} {a['shape']}",
    lambda a: f"a {a['shape']}, {a['size']}, {_where(a['position'])}",
    lambda a: f"a {a['colour']} {a['shape']} {_where(a['position'])}",
    lambda a: f"a {a['size']} {a['shape']}",
    lambda a: f"a {a['shape']} in {a['colour']}",
)

_WORD = re.compile(r"[a-z]+|,")


def caption_of(attributes: dict, template: int) -> str:
    """Caption of a sample's attributes (``describe(params)``) through template number ``template``."""
    return TEMPLATES[template % len(TEMPLATES)](attributes)


def template_index(seed: int, index: int) -> int:
    """Which template sample ``index`` of the dataset of ``seed`` uses (deterministic, independent of its content)."""
    rng = np.random.default_rng([seed, index, 0xCA97])
    return int(rng.integers(len(TEMPLATES)))


def caption(seed: int, index: int) -> str:
    """The caption of item ``index`` of ``ShapesDataset(seed=seed)`` (unbalanced)."""
    return caption_of(describe(sample_params(seed, index)), template_index(seed, index))


def dataset_captions(ds: ShapesDataset) -> list[str]:
    """One caption per item of ``ds``."""
    return [caption_of(ds.metadata(i), template_index(ds.seed, i)) for i in range(len(ds))]


def words(text: str) -> list[str]:
    """Lower-cased words (and commas) of a caption, as the word-level tokenizer splits it."""
    return _WORD.findall(text.lower())


def vocabulary() -> list[str]:
    """Every word any template can write, sorted."""
    found = set()
    for shape in CLASS_NAMES:
        for colour in COLOUR_NAMES:
            for size in SIZE_NAMES:
                for row in POSITION_NAMES:
                    for position in row:
                        a = {"shape": shape, "colour": colour, "size": size, "position": position}
                        for t in range(len(TEMPLATES)):
                            found.update(words(caption_of(a, t)))
    return sorted(found)
