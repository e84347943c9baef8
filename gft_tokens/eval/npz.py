"""Sample and reference files in the layout the field's evaluators use (OpenAI's ADM evaluator, LlamaGen, VAR, MAR).

* samples: ``arr_0`` uint8 (N, H, W, 3) and, for class-conditional samples, ``arr_1`` int (N,) labels — what ADM's
  ``sample.py`` and LlamaGen/VAR's sampling scripts write and ADM's ``evaluator.py`` reads;
* reference batches (ADM): ``arr_0`` real images and/or precomputed Inception statistics ``mu`` (2048,),
  ``sigma`` (2048, 2048) (ADM's files also hold ``mu_s``/``sigma_s``, the spatial sFID statistics, unused here);
* statistics files (MAR / torch-fidelity ``fid_statistics_file``): ``mu`` and ``sigma`` only.

The older layout of this project (``images`` + ``labels``) is still read.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import GFTError
from ..fs import atomic_file


def write_samples_npz(path: str | Path, images: np.ndarray, labels=None, compress: bool = True, **extra) -> Path:
    """Write generated images as ADM's evaluator reads them: ``arr_0`` uint8 (N, H, W, 3), ``arr_1`` the labels
    (N,) when given, plus any ``extra`` arrays (e.g. ``beta``, ``classes``); atomically. Returns the path."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise GFTError(f"samples must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    arrays = {"arr_0": images}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(images),):
            raise GFTError(f"labels must have shape ({len(images)},), got {labels.shape}")
        arrays["arr_1"] = labels.astype(np.int64)
    clash = sorted(set(extra) & {"arr_0", "arr_1", "images", "labels"})
    if clash:
        raise GFTError(f"extra arrays may not be named {clash}")
    path = Path(path)
    with atomic_file(path) as fh:
        (np.savez_compressed if compress else np.savez)(fh, **arrays, **{k: np.asarray(v) for k, v in extra.items()})
    return path


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` (no pickles); a missing or unreadable file is a :class:`GFTError`."""
    path = Path(path)
    if not path.is_file():
        raise GFTError(f"{str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise GFTError(f"{path} is not a readable .npz file ({exc})") from None


def images_and_labels(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The images (``arr_0`` or ``images``) and labels (``arr_1`` beside ``arr_0``, or ``labels``) of a file's arrays."""
    images = arrays.get("arr_0", arrays.get("images"))
    labels = arrays.get("labels")
    if labels is None and "arr_0" in arrays:
        labels = arrays.get("arr_1")
    return images, labels


def reference_stats(arrays: dict[str, np.ndarray], path, feature_dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(mu, sigma)`` of a reference file (ADM batch or MAR stats) checked against ``feature_dim``, or None."""
    if "mu" not in arrays and "sigma" not in arrays:
        return None
    if "mu" not in arrays or "sigma" not in arrays:
        raise GFTError(f"{path} holds only one of 'mu' and 'sigma'; statistics need both")
    mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
    if mu.shape != (feature_dim,) or sigma.shape != (feature_dim, feature_dim):
        raise GFTError(f"statistics in {path} are for {mu.shape[0] if mu.ndim == 1 else mu.shape}-d features "
                       f"(mu {mu.shape}, sigma {sigma.shape}), the extractor gives {feature_dim}-d features")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise GFTError(f"statistics in {path} contain NaN or infinite values")
    return mu, sigma
