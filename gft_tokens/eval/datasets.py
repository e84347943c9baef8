"""Which data an extractor fits: extractors may carry a ``dataset`` attribute (the name of the data they were
trained on; None = dataset-neutral, e.g. an Inception network), generated samples name theirs (``dataset`` in the
``.npz`` generate.py writes, the model's dataset record), and scoring one dataset's samples with another dataset's
extractor is refused unless asked for. Also a reference built from your own real images (a folder or shards)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import GFTError


def extractor_dataset(extractor) -> str | None:
    value = getattr(extractor, "dataset", None)
    if isinstance(value, dict):
        value = value.get("name")
    return str(value) if value else None


def model_dataset(model) -> str | None:
    record = getattr(model.config, "dataset", None) or {}
    return record.get("name") or None


def samples_dataset(path: str | Path) -> str | None:
    """The ``dataset`` name stored in a samples ``.npz`` (None when absent or empty)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "dataset" in data.files:
                return str(data["dataset"]) or None
    except Exception:
        return None
    return None


def samples_class_names(path: str | Path) -> list[str] | None:
    """The class names of a samples ``.npz`` in class-id order (generate.py stores the rows' names in
    ``class_names`` beside their ids in ``classes``); None when absent."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "class_names" not in data.files or "classes" not in data.files:
                return None
            by_id = dict(zip(data["classes"].tolist(), data["class_names"].tolist()))
    except Exception:
        return None
    return [str(by_id.get(i, i)) for i in range(max(by_id) + 1)] if by_id else None


def check_extractor_dataset(extractor, dataset: str | None, allow_foreign: bool = False) -> None:
    """Refuse, in one line, an extractor trained on another dataset than ``dataset`` (unless ``allow_foreign``,
    or either side is unknown / neutral)."""
    mine = extractor_dataset(extractor)
    if allow_foreign or mine is None or dataset is None or mine == dataset:
        return
    raise GFTError(f"the extractor {getattr(extractor, 'name', type(extractor).__name__)} was trained on {mine!r}, "
                   f"the samples are of {dataset!r}: its features and classes do not measure them — train one on "
                   f"your data (scripts/train_probe.py --data …) or pass --allow-foreign-extractor")


def data_reference(extractor, data: str, size: int, n: int | None = None, batch_size: int = 500):
    """Reference features of real images from an image folder or image shards (centre-cropped to ``size``)."""
    from ..data.shards import load_labelled_images
    from . import metrics as M
    from .evaluate import Reference
    from .features import extract_all

    images, labels, meta = load_labelled_images(data, size=size, count=n, desc="reference images")
    uint8 = ((images.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    features, probs = extract_all(extractor, uint8, batch_size)
    return Reference(features, probs, labels.numpy(), M.gaussian_stats(features), size,
                     {"source": str(data), "n": len(features), "image_size": size, "dataset": meta.get("name"),
                      "extractor": extractor.fingerprint})
