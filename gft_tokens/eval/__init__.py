"""Evaluation, offline: a feature extractor → FID, Inception Score, precision/recall and class accuracy.

>>> from gft_tokens.eval import load_extractor, shapes_reference, load_samples, evaluate_images
>>> probe = load_extractor("tokenizers/shapes-probe")     # the shipped probe for the embedded shapes data
>>> ref = shapes_reference(probe)                          # held-out features, computed once, then cached
>>> images, labels = load_samples("samples/llamagen/samples.npz")
>>> evaluate_images(images, labels, probe, ref)            # {"fid": ..., "is": ..., "precision": ..., ...}

Metrics (:mod:`gft_tokens.eval.metrics`) work on features and class probabilities, whatever produced them.
Features come through one interface (:class:`~gft_tokens.eval.features.FeatureExtractor`, a Protocol: no
subclassing needed): ``name``, ``feature_dim``, ``num_classes`` (None if it does not classify), ``fingerprint``
(identifies the weights + preprocessing; reference statistics are cached under it) and
``extract(images) -> ExtractorOutput(features, probs)`` for images float (B, 3, H, W) in [-1, 1].

The FID Inception-v3 (ImageNet numbers comparable to papers) ships as :class:`~gft_tokens.eval.inception.InceptionExtractor`,
loaded from pytorch-fid's weights file: ``load_inception("pt_inception-2015-12-05-6726825d.pth")``.

Plugging in your own extractor (e.g. another network, offline)
--------------------------------------------------------------------------------
Write a class with those five members around your network, loading its weights from a local file, and a
zero-argument factory; nothing here downloads anything::

    # my_inception.py
    import hashlib, torch, torch.nn.functional as F
    from gft_tokens.eval import ExtractorOutput

    class InceptionExtractor:
        name, feature_dim, num_classes = "inception-v3", 2048, 1008
        def __init__(self, weights="/data/weights/pt_inception-2015-12-05.pth"):
            self.net = build_fid_inception()                     # your architecture (e.g. from torchvision)
            self.net.load_state_dict(torch.load(weights, weights_only=True))
            self.net.eval()
            self.fingerprint = "inception-" + hashlib.sha256(open(weights, "rb").read()).hexdigest()[:16]
        @torch.no_grad()
        def extract(self, images):                               # (B, 3, H, W) in [-1, 1]
            x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
            pool, logits = self.net(x)                           # pool3 features (B, 2048), logits (B, 1008)
            return ExtractorOutput(pool, logits.softmax(-1))

    def make():
        return InceptionExtractor()

then ``python scripts/evaluate.py --samples samples.npz --extractor my_inception:make --reference real.npz`` (the
module must be importable, e.g. on PYTHONPATH; ``real.npz`` holds ``images`` uint8 (N, H, W, 3) of real data, e.g.
50k ImageNet validation images), or in Python ``evaluate_images(images, labels, InceptionExtractor(),
images_reference(extractor, "real.npz"))``. A saved extractor directory can be made loadable by
``load_extractor(dir)`` with :func:`~gft_tokens.eval.features.register_extractor`. Class accuracy needs the
extractor's class ids to be the generator's (ImageNet's 1000, in the extractor's order).
"""

from .evaluate import Reference, evaluate_images, file_reference, images_reference, load_samples, shapes_reference
from .features import ExtractorOutput, FeatureExtractor, extract_all, load_extractor, register_extractor
from .metrics import (class_accuracy, fid_from_features, frechet_distance, gaussian_stats, inception_score,
                      precision_recall)
from .inception import InceptionExtractor, load_inception
from .npz import read_npz, write_samples_npz
from .probe import ShapesProbe

DEFAULT_EXTRACTOR = "tokenizers/shapes-probe"

__all__ = [
    "DEFAULT_EXTRACTOR", "ExtractorOutput", "FeatureExtractor", "InceptionExtractor", "Reference",
    "ShapesProbe", "class_accuracy", "evaluate_images", "extract_all", "fid_from_features", "file_reference",
    "frechet_distance", "gaussian_stats", "images_reference", "inception_score", "load_extractor", "load_inception",
    "load_samples", "precision_recall", "read_npz", "register_extractor", "shapes_reference", "write_samples_npz",
]
