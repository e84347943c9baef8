"""The embedded dataset: procedurally rendered, class-conditional coloured shapes.

Every image is a pure function of ``(seed, index)``: nothing is downloaded, nothing is read from disk. A class is
a *shape* drawn in the class's *hue family*; everything else varies inside a class, so a generator can be judged on
class fidelity (does a row show its shape, in its colour?) and on diversity (positions, sizes, rotations, shades
and backgrounds):

* position   -- the centre moves as far as the shape's size allows while it stays (almost) on the canvas
* size       -- radius 0.22 .. 0.37 of the canvas side, plus a mild aspect stretch (0.85 .. 1.15)
* rotation   -- uniform in [0, 2π) (circles and rings are invariant, by nature)
* colour     -- the class hue ± 11°, saturation 0.55 .. 1, value 0.65 .. 1
* background -- a dark, low-saturation colour with a linear gradient of random direction and strength

Images are anti-aliased by 4x supersampling and returned as float tensors in [-1, 1], shape (3, H, W).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import GFTError

CLASS_NAMES = (
    "circle",
    "square",
    "triangle",
    "diamond",
    "hexagon",
    "star",
    "plus",
    "ring",
    "crescent",
    "heart",
)
NUM_CLASSES = len(CLASS_NAMES)
# Each class has its own hue family (hues 36° apart); a sample's shade varies around it by ±HUE_JITTER (±11°)
# and in saturation and brightness. Shape and hue together make the class.
CLASS_HUES = tuple(i / NUM_CLASSES for i in range(NUM_CLASSES))
HUE_JITTER = 0.03
SUPPORTED_SIZES = (32, 64)
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeParams:
    """The random draws behind one image (all in canvas units, the canvas being [-1, 1]²)."""

    label: int
    cx: float
    cy: float
    radius: float
    aspect: float
    angle: float
    fg: tuple[float, float, float]
    bg: tuple[float, float, float]
    grad_dir: float
    grad_amp: float


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def sample_params(seed: int, index: int, label: int | None = None) -> ShapeParams:
    """Draw the parameters of image ``index`` of the dataset with ``seed`` (deterministic)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index)])
    drawn_label = int(rng.integers(NUM_CLASSES))
    label = drawn_label if label is None else int(label)
    radius = float(rng.uniform(0.45, 0.75))  # canvas units: the canvas [-1, 1]² has side 2
    cx, cy = (float(v) for v in rng.uniform(-0.8, 0.8, size=2) * (1.0 - radius))
    hue = (CLASS_HUES[label] + float(rng.uniform(-HUE_JITTER, HUE_JITTER))) % 1.0
    fg = _hsv_to_rgb(hue, float(rng.uniform(0.55, 1.0)), float(rng.uniform(0.65, 1.0)))
    bg = _hsv_to_rgb(float(rng.uniform()), float(rng.uniform(0.0, 0.35)), float(rng.uniform(0.05, 0.35)))
    return ShapeParams(
        label=label,
        cx=cx,
        cy=cy,
        radius=radius,
        aspect=float(rng.uniform(0.85, 1.15)),
        angle=float(rng.uniform(0.0, 2.0 * math.pi)),
        fg=fg,
        bg=bg,
        grad_dir=float(rng.uniform(0.0, 2.0 * math.pi)),
        grad_amp=float(rng.uniform(0.0, 0.2)),
    )


def _star_polygon_radius(phi: torch.Tensor, outer: torch.Tensor, inner: torch.Tensor, n: int) -> torch.Tensor:
    """Radius of the boundary along angle ``phi`` of a star-shaped polygon with ``n`` tips.

    Tips at radius ``outer`` and angles 2πk/n, notches at radius ``inner`` halfway between. A regular polygon is
    the case ``inner = outer * cos(π/n)``.
    """
    sector = 2.0 * math.pi / n
    half = sector / 2.0
    a = torch.remainder(phi, sector)
    a = torch.where(a > half, sector - a, a)  # fold to [0, half]: tip at 0, notch at half
    # Edge from P1 = (outer, 0) to P2 = inner * (cos half, sin half); ray direction d = (cos a, sin a).
    p2x, p2y = inner * math.cos(half), inner * math.sin(half)
    ex, ey = p2x - outer, p2y
    # r * d = P1 + t * e  ->  r = cross(P1, e) / cross(d, e)
    num = outer * ey
    den = torch.cos(a) * ey - torch.sin(a) * ex
    return num / den


def _inside(label: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the unit-size shape ``label`` at shape-local coordinates (x, y)."""
    r = torch.sqrt(x * x + y * y)
    phi = torch.atan2(y, x)
    one = torch.ones((), dtype=x.dtype)
    name = CLASS_NAMES[label]
    if name == "circle":
        return r <= 0.9
    if name == "square":
        return (x.abs() <= 0.72) & (y.abs() <= 0.72)
    if name == "triangle":
        return r <= _star_polygon_radius(phi + math.pi / 2, one, one * math.cos(math.pi / 3), 3) * 1.05
    if name == "diamond":
        return x.abs() / 0.6 + y.abs() / 1.0 <= 1.0
    if name == "hexagon":
        return r <= _star_polygon_radius(phi, one * 0.95, one * 0.95 * math.cos(math.pi / 6), 6)
    if name == "star":
        return r <= _star_polygon_radius(phi + math.pi / 2, one * 1.05, one * 0.45, 5)
    if name == "plus":
        return ((x.abs() <= 0.28) & (y.abs() <= 0.95)) | ((y.abs() <= 0.28) & (x.abs() <= 0.95))
    if name == "ring":
        return (r <= 0.95) & (r >= 0.55)
    if name == "crescent":
        return (r <= 0.95) & ((x - 0.42) ** 2 + y**2 >= 0.72**2)
    if name == "heart":
        hx, hy = x / 0.85, -(y / 0.85) + 0.15  # image y grows downwards; the heart's lobes sit on top
        return (hx * hx + hy * hy - 1.0) ** 3 - hx * hx * hy**3 <= 0.0
    raise AssertionError(name)


def render(params: ShapeParams, size: int = 32) -> torch.Tensor:
    """Render one image, float32 (3, size, size) in [-1, 1]."""
    if size not in SUPPORTED_SIZES:
        raise GFTError(f"shapes image size must be one of {SUPPORTED_SIZES}, got {size}")
    s = size * _SUPERSAMPLE
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s * 2.0 - 1.0
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    # Background: colour plus a linear gradient along grad_dir.
    ramp = xx * math.cos(params.grad_dir) + yy * math.sin(params.grad_dir)
    bg = torch.tensor(params.bg).view(3, 1, 1) * (1.0 + params.grad_amp * ramp)
    # Shape-local coordinates: translate, rotate, scale (with aspect stretch).
    dx, dy = xx - params.cx, yy - params.cy
    c, s_ = math.cos(params.angle), math.sin(params.angle)
    lx = (c * dx + s_ * dy) / (params.radius * params.aspect)
    ly = (-s_ * dx + c * dy) / (params.radius / params.aspect)
    mask = _inside(params.label, lx, ly).to(torch.float32)
    fg = torch.tensor(params.fg).view(3, 1, 1)
    img = bg * (1.0 - mask) + fg * mask
    img = F.avg_pool2d(img.unsqueeze(0), _SUPERSAMPLE).squeeze(0)
    return (img.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()


class ShapesDataset(Dataset):
    """``length`` images of the embedded shapes data; item ``i`` is ``(image (3,H,W) in [-1,1], label)``.

    ``seed`` selects the split: the training split uses seed 0 by convention and held-out evaluation uses
    :data:`HELDOUT_SEED`. Labels are drawn uniformly at random per index, or cycle through the classes when
    ``balanced=True`` (index ``i`` has label ``i % 10``).
    """

    def __init__(self, length: int = 50_000, size: int = 32, seed: int = 0, balanced: bool = False):
        if size not in SUPPORTED_SIZES:
            raise GFTError(f"shapes image size must be one of {SUPPORTED_SIZES}, got {size}")
        if length <= 0:
            raise GFTError(f"dataset length must be positive, got {length}")
        self.length, self.size, self.seed, self.balanced = int(length), int(size), int(seed), bool(balanced)
        self.num_classes = NUM_CLASSES
        self.class_names = CLASS_NAMES

    def __len__(self) -> int:
        return self.length

    def params(self, index: int) -> ShapeParams:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length}")
        return sample_params(self.seed, index, label=index % NUM_CLASSES if self.balanced else None)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        p = self.params(int(index))
        return render(p, self.size), p.label

    def tensors(self, indices=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Render ``indices`` (default: all) into one (N, 3, H, W) image tensor and an (N,) label tensor."""
        indices = range(self.length) if indices is None else indices
        items = [self[i] for i in indices]
        return torch.stack([im for im, _ in items]), torch.tensor([lb for _, lb in items], dtype=torch.long)


HELDOUT_SEED = 1_000_003


def fingerprint(size: int = 32) -> str:
    """A short hash of a few rendered images: changes whenever the rendering or the parameter draws change, so
    caches derived from the data (extracted codes, reference statistics) can key on it."""
    import hashlib

    h = hashlib.sha256()
    for i in range(4):
        h.update(render(sample_params(0, i), size).numpy().tobytes())
    return h.hexdigest()[:12]


def heldout(length: int = 1000, size: int = 32, balanced: bool = True) -> ShapesDataset:
    """The held-out split (a seed the training split never uses)."""
    return ShapesDataset(length=length, size=size, seed=HELDOUT_SEED, balanced=balanced)
