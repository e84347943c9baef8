"""The FID Inception-v3: the network every FID/IS/precision-recall number in the papers is measured with.

This is the PyTorch port of TensorFlow's 2015-12-05 Inception graph (the one behind ADM's evaluator, TTUR,
pytorch-fid and torch-fidelity), loaded from a weights file the user already has; nothing is downloaded. It is the
torchvision Inception-v3 layout with the graph's differences:

* the average pools inside the A, C and first E blocks ignore the zero padding (``count_include_pad=False``);
* the last E block (``Mixed_7c``) pools its side branch with a 3×3 *max* pool;
* BatchNorm ε = 1e-3, no auxiliary head, a 1008-way classifier (``fc``, 1001 ImageNet-2012 classes + 7 unused).

Weights: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` or torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth`` (the same tensors, the same state-dict keys); give the path with
``--inception-weights`` or ``$GFT_TOKENS_INCEPTION``. The file is read with ``torch.load(weights_only=True)`` and its
keys and shapes are checked against the network before anything runs.

Preprocessing (``resize``):

* ``"tf1"`` (default) — as the TF graph and torch-fidelity: pixels back to [0, 255], TensorFlow-1 bilinear resize to
  299×299 (``align_corners=False``, no half-pixel offset, no antialiasing), then ``(x − 128) / 128``;
* ``"pytorch-fid"`` — as pytorch-fid 0.3: ``F.interpolate(bilinear, align_corners=False)`` to 299×299 on [-1, 1].

Outputs: the 2048-d ``pool_3`` features (FID, precision/recall) and, for the Inception Score, the softmax of the
1008 logits computed *without* the classifier bias, as ADM's evaluator and torch-fidelity do.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import GFTError
from ..fs import load_torch_file
from .features import ExtractorOutput

INPUT_SIZE = 299
ENV_WEIGHTS = "GFT_TOKENS_INCEPTION"
RESIZE_MODES = ("tf1", "pytorch-fid")
PREPROCESS_VERSION = 1  # bump when the preprocessing changes (it is part of the fingerprint)


def resize_bilinear_tf1(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """TensorFlow 1.x ``resize_bilinear(align_corners=False)``: output pixel i samples the input at i · in/out
    (no half-pixel offset), the lower neighbour floor of that, the upper one clamped to the last row/column."""

    def axis(n_in: int):
        pos = torch.arange(size, dtype=torch.float32, device=x.device) * (n_in / size)
        lo = pos.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, (pos - lo.float()).to(x.dtype)

    ylo, yhi, wy = axis(x.shape[-2])
    xlo, xhi, wx = axis(x.shape[-1])
    rows_lo, rows_hi = x[..., ylo, :], x[..., yhi, :]
    top = rows_lo[..., xlo] + (rows_lo[..., xhi] - rows_lo[..., xlo]) * wx
    bottom = rows_hi[..., xlo] + (rows_hi[..., xhi] - rows_hi[..., xlo]) * wx
    return top + (bottom - top) * wy[:, None]


class Conv(nn.Module):
    """conv (no bias) → BatchNorm(ε = 1e-3) → ReLU; the checkpoint keys are ``conv.*`` and ``bn.*``."""

    def __init__(self, c_in: int, c_out: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _chain(x, *layers):
    for layer in layers:
        x = layer(x)
    return x


class BlockA(nn.Module):  # Mixed_5b/c/d, 35×35
    def __init__(self, c: int, pool_features: int):
        super().__init__()
        self.branch1x1 = Conv(c, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = Conv(c, 48, 1), Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = Conv(c, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(c, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x),
                          _chain(x, self.branch5x5_1, self.branch5x5_2),
                          _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                          self.branch_pool(_avg3(x))], 1)


class BlockB(nn.Module):  # Mixed_6a, 35×35 → 17×17
    def __init__(self, c: int):
        super().__init__()
        self.branch3x3 = Conv(c, 384, 3, stride=2)
        self.branch3x3dbl_1 = Conv(c, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x),
                          _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                          F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):  # Mixed_6b…6e, 17×17, factorised 7×7
    def __init__(self, c: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = Conv(c, 192, 1)
        self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = Conv(c, c7, 1), Conv(c7, c7, **row), Conv(c7, 192, **col)
        self.branch7x7dbl_1 = Conv(c, c7, 1)
        self.branch7x7dbl_2, self.branch7x7dbl_3 = Conv(c7, c7, **col), Conv(c7, c7, **row)
        self.branch7x7dbl_4, self.branch7x7dbl_5 = Conv(c7, c7, **col), Conv(c7, 192, **row)
        self.branch_pool = Conv(c, 192, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x),
                          _chain(x, self.branch7x7_1, self.branch7x7_2, self.branch7x7_3),
                          _chain(x, self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                                 self.branch7x7dbl_4, self.branch7x7dbl_5),
                          self.branch_pool(_avg3(x))], 1)


class BlockD(nn.Module):  # Mixed_7a, 17×17 → 8×8
    def __init__(self, c: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = Conv(c, 192, 1), Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = Conv(c, 192, 1)
        self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

    def forward(self, x):
        return torch.cat([_chain(x, self.branch3x3_1, self.branch3x3_2),
                          _chain(x, self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4),
                          F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):  # Mixed_7b (average pool) and Mixed_7c (max pool, as in the TF graph), 8×8
    def __init__(self, c: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
        self.branch1x1 = Conv(c, 320, 1)
        self.branch3x3_1 = Conv(c, 384, 1)
        self.branch3x3_2a, self.branch3x3_2b = Conv(384, 384, **row), Conv(384, 384, **col)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(c, 448, 1), Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a, self.branch3x3dbl_3b = Conv(384, 384, **row), Conv(384, 384, **col)
        self.branch_pool = Conv(c, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b), self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """(B, 3, 299, 299) normalised input → (pool_3 features (B, 2048), unbiased logits (B, 1008))."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b, self.Mixed_6c = BlockC(768, 128), BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = BlockC(768, 160), BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b, self.Mixed_7c = BlockE(1280, max_pool=False), BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x):
        x = _chain(x, self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3)
        x = F.max_pool2d(x, 3, stride=2)
        x = _chain(x, self.Conv2d_3b_1x1, self.Conv2d_4a_3x3)
        x = F.max_pool2d(x, 3, stride=2)
        x = _chain(x, self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                   self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c)
        pool = x.mean(dim=(2, 3))
        return pool, pool @ self.fc.weight.T


def _expected_state(model: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def load_inception_weights(model: FIDInceptionV3, path: str | os.PathLike) -> None:
    """Load a pytorch-fid-format state dict into ``model``; any mismatch is one :class:`GFTError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise GFTError(f"Inception weights file {str(path)!r} does not exist (pytorch-fid's "
                       f"pt_inception-2015-12-05-6726825d.pth is expected; nothing is downloaded)")
    state = load_torch_file(path)
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise GFTError(f"{path} is not a state dict of tensors (expected pytorch-fid's Inception weights)")
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    expected = _expected_state(model)
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        parts = ([f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []) + \
                ([f"{len(extra)} unexpected (e.g. {extra[0]})"] if extra else [])
        raise GFTError(f"{path} does not hold the FID Inception-v3 weights: keys {', '.join(parts)}")
    for k, shape in expected.items():
        if state[k].shape != shape:
            raise GFTError(f"{path} does not hold the FID Inception-v3 weights: {k} has shape "
                           f"{tuple(state[k].shape)}, expected {tuple(shape)}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class InceptionExtractor:
    """The FID Inception-v3 behind the feature-extractor interface (see :mod:`gft_tokens.eval.features`).

    Dataset-neutral: it was trained on ImageNet, not on the data the generator learns, and its 1008 class ids are the
    TF graph's, not ImageNet's usual 1000 ids, so it gives the Inception Score but no class accuracy
    (``label_classes = False``).
    """

    name = "inception-v3-fid"
    feature_dim = 2048
    num_classes = 1008
    label_classes = False  # its class ids are not the generator's labels: no class accuracy
    dataset = None  # dataset-neutral

    def __init__(self, weights: str | os.PathLike, resize: str = "tf1", device: str | torch.device = "cpu",
                 batch_size: int = 50):
        if resize not in RESIZE_MODES:
            raise GFTError(f"Inception resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.weights = Path(weights)
        self.resize = resize
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.net = FIDInceptionV3()
        load_inception_weights(self.net, self.weights)
        self.net.to(self.device).eval().requires_grad_(False)
        self.fingerprint = f"inception-fid-{_file_digest(self.weights)[:16]}-{resize}-p{PREPROCESS_VERSION}"

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images float (B, 3, H, W) in [-1, 1] → the network's (B, 3, 299, 299) input."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise GFTError(f"the Inception extractor takes RGB images (B, 3, H, W), got shape {tuple(images.shape)}")
        x = images.to(self.device, torch.float32)
        if self.resize == "pytorch-fid":
            return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        pixels = (x + 1.0) * 127.5
        return (resize_bilinear_tf1(pixels) - 128.0) / 128.0

    @torch.no_grad()
    def forward_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool_3 features (B, 2048), unbiased logits (B, 1008)), computed in chunks of ``batch_size``."""
        pools, logits = [], []
        for chunk in images.split(self.batch_size):
            p, l = self.net(self.preprocess(chunk))
            pools.append(p.cpu())
            logits.append(l.cpu())
        return torch.cat(pools), torch.cat(logits)

    def extract(self, images: torch.Tensor) -> ExtractorOutput:
        pool, logits = self.forward_logits(images)
        return ExtractorOutput(pool, logits.softmax(-1))


def inception_weights_path(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$GFT_TOKENS_INCEPTION``; a clear error when neither is given."""
    path = path or os.environ.get(ENV_WEIGHTS)
    if not path:
        raise GFTError(f"the Inception extractor needs its weights file: pass --inception-weights PATH or set "
                       f"${ENV_WEIGHTS} (pytorch-fid's pt_inception-2015-12-05-6726825d.pth; nothing is downloaded)")
    return Path(path)


def load_inception(weights: str | os.PathLike | None = None, **kwargs) -> InceptionExtractor:
    """The FID Inception extractor from ``weights`` or ``$GFT_TOKENS_INCEPTION``."""
    return InceptionExtractor(inception_weights_path(weights), **kwargs)
