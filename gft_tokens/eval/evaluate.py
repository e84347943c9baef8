"""Evaluate a set of generated images against reference statistics: the numbers ``scripts/evaluate.py`` prints.

The reference is the held-out split of the embedded shapes data (:func:`shapes_reference`) or any set of real
images in an ``.npz`` (:func:`images_reference`). Its features are computed once per extractor and cached in
``$GFT_TOKENS_CACHE/eval`` (default ``~/.cache/gft_tokens/eval``), keyed by the extractor's fingerprint and the
data's fingerprint and parameters (or the file's hash).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save

from ..data.codes import cache_dir
from ..data.shapes import SUPPORTED_SIZES, heldout
from ..data.shapes import fingerprint as data_fingerprint
from ..errors import GFTError
from ..fs import atomic_file
from .npz import images_and_labels, read_npz, reference_stats
from . import metrics as M
from .features import FeatureExtractor, extract_all

REFERENCE_VERSION = 1  # bump when the way reference features are computed changes
DEFAULT_REF_SIZE = 5000
IS_MIN_PER_SPLIT = 100  # at most n // 100 parts for the inception score
FID_MIN_PER_DIM = 4  # warn below 4·D samples (e.g. 512 for the probe's 128 features)
FID_MIN_SAMPLES = 500


@dataclass
class Reference:
    features: np.ndarray | None  # (M, D); None for a statistics-only reference (no precision/recall)
    probs: np.ndarray | None  # (M, K)
    labels: np.ndarray | None  # (M,)
    stats: M.GaussianStats
    image_size: int | None  # None when the reference holds no images
    description: dict = field(default_factory=dict)


def _cached_reference(key: str, compute) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    path = cache_dir() / "eval" / f"ref-{key}.safetensors"
    if path.is_file():
        try:
            data = load_file(str(path))
            probs = data.get("probs")
            return (data["features"].astype(np.float64), None if probs is None else probs.astype(np.float64),
                    data.get("labels"))
        except Exception:  # a corrupt cache entry is rebuilt
            path.unlink(missing_ok=True)
    features, probs, labels = compute()
    tensors = {"features": features.astype(np.float32)}  # extractors compute in float32: lossless
    if probs is not None:
        tensors["probs"] = probs.astype(np.float32)
    if labels is not None:
        tensors["labels"] = labels.astype(np.int64)
    with atomic_file(path) as fh:
        fh.write(save(tensors))
    return features, probs, labels


def shapes_reference(extractor: FeatureExtractor, n: int = DEFAULT_REF_SIZE, size: int = 32,
                     batch_size: int = 500) -> Reference:
    """Reference features of ``n`` held-out shapes images (class-balanced), computed once and cached."""
    if size not in SUPPORTED_SIZES:
        raise GFTError(f"the embedded shapes data comes in sizes {SUPPORTED_SIZES}, not {size}")
    if n < 2:
        raise GFTError(f"the reference set needs at least 2 images, got {n}")
    key = f"shapes-{data_fingerprint(size)}-heldout-n{n}-s{size}-{extractor.fingerprint}-v{REFERENCE_VERSION}"

    def compute():
        ds = heldout(n, size=size)
        feats, probs, labels = [], [], []
        for i in range(0, n, batch_size):  # render in chunks: never all images in memory at once
            images, y = ds.tensors(range(i, min(n, i + batch_size)))
            f, p = extract_all(extractor, images, batch_size)
            feats.append(f)
            probs.append(p)
            labels.append(y.numpy())
        return np.concatenate(feats), (np.concatenate(probs) if probs[0] is not None else None), np.concatenate(labels)

    features, probs, labels = _cached_reference(key, compute)
    return Reference(features, probs, labels, M.gaussian_stats(features), size,
                     {"source": "shapes-heldout", "n": n, "image_size": size, "extractor": extractor.fingerprint})


def file_reference(extractor: FeatureExtractor, path: str | Path, batch_size: int = 500) -> Reference:
    """The reference in an ``.npz``: real images (``arr_0`` as in ADM's reference batches, or ``images``; optional
    labels) and/or precomputed statistics ``mu``, ``sigma`` (ADM batches, MAR / torch-fidelity stats files).

    With statistics in the file, FID uses them (they must be the extractor's, e.g. Inception pool_3 for the Inception
    extractor) and the images, if any, serve precision/recall only; without images there is no precision/recall.
    Image features are computed once and cached under the file's hash and the extractor's fingerprint.
    """
    path = Path(path)
    if not path.is_file():
        raise GFTError(f"reference file {str(path)!r} does not exist")
    arrays = read_npz(path)
    images, labels = images_and_labels(arrays)
    stats = reference_stats(arrays, path, extractor.feature_dim)
    if images is None and stats is None:
        raise GFTError(f"{path} holds neither images ('arr_0' or 'images') nor statistics ('mu', 'sigma'); "
                       f"found keys {sorted(arrays)}")
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()[:16]
    description = {"source": str(path), "sha256": digest, "extractor": extractor.fingerprint,
                   "statistics": "file" if stats is not None else "images"}
    features = probs = None
    image_size = None
    if images is not None:
        images, labels = _check_images(images, labels, path, "'arr_0'" if "arr_0" in arrays else "'images'")
        key = f"file-{digest}-{extractor.fingerprint}-v{REFERENCE_VERSION}"

        def compute():
            f, p = extract_all(extractor, images, batch_size)
            return f, p, labels

        features, probs, labels = _cached_reference(key, compute)
        image_size = images.shape[1]
    if stats is None:
        gauss = M.gaussian_stats(features)
    else:
        gauss = M.GaussianStats(stats[0], (stats[1] + stats[1].T) / 2.0, 0)
    description["n"] = len(features) if features is not None else None
    return Reference(features, probs, labels, gauss, image_size, description)


images_reference = file_reference  # the earlier name


def _check_images(images, labels, path, name, num_classes=None):
    if images.ndim != 4 or images.shape[-1] != 3:
        raise GFTError(f"{name} in {path} must have shape (N, H, W, 3), got {images.shape}")
    if images.dtype != np.uint8:
        lo, hi = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
        raise GFTError(f"{name} in {path} must be uint8 in [0, 255], got {images.dtype} with values in "
                       f"[{lo:.3g}, {hi:.3g}] (from [-1, 1] floats: ((x + 1) * 127.5).round().astype(uint8))")
    if images.shape[0] == 0:
        raise GFTError(f"{path} holds no images")
    if labels is not None:
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise GFTError(f"the labels in {path} must have shape ({images.shape[0]},) (one per image), "
                           f"got {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise GFTError(f"the labels in {path} must be integers, got {labels.dtype}")
        labels = labels.astype(np.int64)
        if num_classes is not None and len(labels):
            bad = labels[(labels < 0) | (labels >= num_classes)]
            if len(bad):
                raise GFTError(f"the labels in {path} must lie in [0, {num_classes}) (the extractor's classes), "
                               f"found {int(bad[0])}")
    return images, labels


def load_samples(path: str | Path, num_classes: int | None = None, require_labels: bool = True):
    """Read and validate a samples file: images uint8 (N, H, W, 3) as ``arr_0`` (ADM / LlamaGen / VAR layout, labels
    in ``arr_1``) or ``images`` (with ``labels``), as :func:`gft_tokens.eval.npz.write_samples_npz` and earlier
    versions of ``scripts/generate.py`` write.

    Raises :class:`GFTError` naming the problem (missing file or keys, shapes, dtype, labels outside the classes).
    """
    path = Path(path)
    if not path.is_file():
        raise GFTError(f"samples file {str(path)!r} does not exist")
    arrays = read_npz(path)
    images, labels = images_and_labels(arrays)
    if images is None or (require_labels and labels is None):
        want = "'images' and 'labels' (or ADM's 'arr_0' and 'arr_1')" if require_labels else \
            "'images' (or ADM's 'arr_0')"
        raise GFTError(f"{path} must hold {want}, as scripts/generate.py writes; found keys {sorted(arrays)}")
    name = "'arr_0'" if "arr_0" in arrays else "'images'"
    return _check_images(images, labels, path, name, num_classes)


def evaluate_images(images: np.ndarray, labels: np.ndarray | None, extractor: FeatureExtractor,
                    reference: Reference, k: int = 3, is_splits: int = 10, seed: int = 0,
                    batch_size: int = 500) -> dict:
    """All metrics of generated ``images`` (uint8 (N, H, W, 3)) against ``reference``.

    Returns a dict: ``n``, ``fid``, ``is``, ``is_std``, ``precision``, ``recall``, ``k``, ``class_accuracy``,
    ``per_class_accuracy`` (the class ones None when the extractor does not classify or there are no labels),
    ``warnings`` (a list of strings, e.g. too few samples for a stable FID).
    """
    n = len(images)
    if reference.image_size is not None and images.shape[1:3] != (reference.image_size, reference.image_size):
        raise GFTError(f"images are {images.shape[1]}x{images.shape[2]}, the reference is "
                       f"{reference.image_size}x{reference.image_size}")
    if n <= k:
        raise GFTError(f"need more than k = {k} images for precision/recall (and far more for FID), got {n}")
    warnings = []
    recommended = max(FID_MIN_SAMPLES, FID_MIN_PER_DIM * extractor.feature_dim)
    if n < recommended:
        warnings.append(f"FID from {n} samples is biased upwards and unstable; use at least {recommended} "
                        f"({FID_MIN_PER_DIM} x the {extractor.feature_dim} feature dimensions) to compare runs")
    if 0 < reference.stats.n < recommended:  # n = 0: statistics read from a file, their sample count unknown
        warnings.append(f"the reference has only {reference.stats.n} images; use at least {recommended}")
    features, probs = extract_all(extractor, images, batch_size)
    stats = M.gaussian_stats(features)
    fid = M.frechet_distance(stats.mu, stats.sigma, reference.stats.mu, reference.stats.sigma)

    # precision/recall on equal-sized, randomly chosen subsets (k-NN radii depend on the set size)
    precision = recall = None
    if reference.features is None:
        warnings.append("the reference holds statistics only (mu, sigma): no precision/recall without its images")
    elif len(reference.features) <= k:
        warnings.append(f"the reference has {len(reference.features)} images, too few for k = {k} precision/recall")
    else:
        m = min(n, len(reference.features))
        fake_idx = np.random.default_rng(seed).permutation(n)[:m]
        real_idx = np.random.default_rng(seed + 1).permutation(len(reference.features))[:m]
        precision, recall = M.precision_recall(reference.features[real_idx], features[fake_idx], k)

    result = {"n": n, "fid": fid, "is": None, "is_std": None, "precision": precision, "recall": recall, "k": k,
              "class_accuracy": None, "per_class_accuracy": None}
    if probs is not None:
        splits = max(1, min(is_splits, n // IS_MIN_PER_SPLIT))  # small parts bias IS downwards
        result["is"], result["is_std"] = M.inception_score(probs, splits, seed)
        if labels is not None and getattr(extractor, "label_classes", True):
            result["class_accuracy"] = M.class_accuracy(probs, labels)
            result["per_class_accuracy"] = M.per_class_accuracy(probs, labels, probs.shape[1])
    result["warnings"] = warnings
    return result

