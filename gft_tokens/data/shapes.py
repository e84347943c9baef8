"""The embedded dataset: procedurally rendered coloured shapes whose class is the shape alone.

Every image is a pure function of ``(seed, index)``: nothing is downloaded, nothing is read from disk. A class is
a *shape*; every other attribute is drawn independently of the class, so the class can only be read from the
shape (a colour-only classifier scores at chance, ``tests/test_data.py``), and a generator is judged on class
fidelity (does a row show its shape?) and on diversity:

* colour     -- a colour name drawn uniformly from :data:`COLOUR_NAMES`, then a hue inside that name's range
                (:data:`COLOUR_HUE_RANGES`, degrees; the ranges are separated by gaps, so the name is never
                ambiguous), saturation 0.6 .. 1, value 0.7 .. 1
* size       -- the radius of the disc of equal area, 0.34 .. 0.56 canvas units (the canvas is [-1, 1]²): every
                shape is scaled to its area, so the area (and with it the mean colour of the image) says nothing
                about the class; plus an area-preserving aspect stretch 0.85 .. 1.15
* position   -- the centre moves up to ``travel(size) = 0.9 - 1.3·size`` from the middle along each axis (a large
                shape moves less; it stays on the canvas but for the tip of a pointed shape, now and then)
* rotation   -- uniform in [0, 2π) (circles and rings are invariant, by nature)
* background -- a dark, low-saturation colour of any hue with a linear gradient of random direction and strength

Each sample's attributes are available as metadata (:func:`describe`, :meth:`ShapesDataset.metadata`): the shape,
the colour name, a size bucket (small / medium / large: thirds of the size range), a position bucket (3×3: top
left … center … bottom right: thirds of the travel along each axis) and the raw values. ``make_shards.py`` stores
them as ``<key>.json`` beside each image.

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

# Bump when the parameter draws or the rendering change: data fingerprints (and so every cache derived from the
# data: extracted codes, evaluation reference features) change with it. 1: hue per class; 2: class = shape only.
DATA_VERSION = 2

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
# Radius of the disc with the area of each unit-size shape (as `_inside` draws it, measured on a 4000² grid):
# a shape is scaled by size / this, so that every class covers the same area at the same size.
UNIT_EQUAL_AREA_RADIUS = (0.90000, 0.81243, 0.67519, 0.61808, 0.86388, 0.66485, 0.76009, 0.77459, 0.66956, 0.91770)

# Colour names and their hue ranges in degrees (start, end), going round the wheel; red wraps through 0°.
COLOUR_HUE_RANGES = {
    "red": (-10.0, 10.0),
    "orange": (22.0, 38.0),
    "yellow": (50.0, 64.0),
    "green": (85.0, 150.0),
    "cyan": (170.0, 195.0),
    "blue": (210.0, 245.0),
    "purple": (262.0, 288.0),
    "pink": (305.0, 335.0),
}
COLOUR_NAMES = tuple(COLOUR_HUE_RANGES)
SATURATION_RANGE = (0.6, 1.0)
VALUE_RANGE = (0.7, 1.0)
SIZE_RANGE = (0.34, 0.56)  # radius of the disc of equal area, canvas units
SIZE_NAMES = ("small", "medium", "large")  # thirds of SIZE_RANGE
ASPECT_RANGE = (0.85, 1.15)
POSITION_NAMES = (("top left", "top", "top right"),
                  ("left", "center", "right"),
                  ("bottom left", "bottom", "bottom right"))  # [row][column]; image y grows downwards
SUPPORTED_SIZES = (32, 64)
_SUPERSAMPLE = 4


def travel(size: float) -> float:
    """How far (canvas units) the centre of a shape of ``size`` may move from the middle along each axis."""
    return 0.9 - 1.3 * size


@dataclass(frozen=True)
class ShapeParams:
    """The random draws behind one image (lengths in canvas units, the canvas being [-1, 1]²)."""

    label: int
    colour: str  # one of COLOUR_NAMES
    hue: float  # degrees in [0, 360), inside the colour's range
    saturation: float
    value: float
    size: float  # radius of the disc of equal area
    aspect: float
    cx: float
    cy: float
    angle: float
    bg: tuple[float, float, float]
    grad_dir: float
    grad_amp: float

    @property
    def fg(self) -> tuple[float, float, float]:
        """The shape's RGB colour in [0, 1]."""
        return _hsv_to_rgb(self.hue / 360.0, self.saturation, self.value)

    @property
    def scale(self) -> float:
        """Factor from the unit shape of the class to this one (same area for every class at one size)."""
        return self.size / UNIT_EQUAL_AREA_RADIUS[self.label]


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def colour_name(hue: float) -> str | None:
    """The colour name whose range holds ``hue`` (degrees), or None when it falls in a gap between two ranges."""
    hue = hue % 360.0
    for name, (lo, hi) in COLOUR_HUE_RANGES.items():
        if lo <= hue <= hi or lo <= hue - 360.0 <= hi:
            return name
    return None


def sample_params(seed: int, index: int, label: int | None = None) -> ShapeParams:
    """Draw the parameters of image ``index`` of the dataset with ``seed`` (deterministic).

    ``label`` overrides the drawn class and changes nothing else: every other attribute is drawn the same way
    whatever the class.
    """
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index)])
    drawn_label = int(rng.integers(NUM_CLASSES))
    label = drawn_label if label is None else int(label)
    if not 0 <= label < NUM_CLASSES:
        raise GFTError(f"shapes class must be in [0, {NUM_CLASSES}), got {label}")
    colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
    lo, hi = COLOUR_HUE_RANGES[colour]
    hue = float(rng.uniform(lo, hi)) % 360.0
    saturation = float(rng.uniform(*SATURATION_RANGE))
    value = float(rng.uniform(*VALUE_RANGE))
    size = float(rng.uniform(*SIZE_RANGE))
    aspect = float(rng.uniform(*ASPECT_RANGE))
    cx, cy = (float(v) for v in rng.uniform(-1.0, 1.0, size=2) * travel(size))
    angle = float(rng.uniform(0.0, 2.0 * math.pi))
    bg = _hsv_to_rgb(float(rng.uniform()), float(rng.uniform(0.0, 0.35)), float(rng.uniform(0.05, 0.35)))
    return ShapeParams(
        label=label,
        colour=colour,
        hue=hue,
        saturation=saturation,
        value=value,
        size=size,
        aspect=aspect,
        cx=cx,
        cy=cy,
        angle=angle,
        bg=bg,
        grad_dir=float(rng.uniform(0.0, 2.0 * math.pi)),
        grad_amp=float(rng.uniform(0.0, 0.2)),
    )


def _bucket(x: float, lo: float, hi: float) -> int:
    """Which third of [lo, hi] holds ``x`` (0, 1 or 2)."""
    return min(2, max(0, int((x - lo) / (hi - lo) * 3.0)))


def describe(params: ShapeParams) -> dict:
    """A sample's attributes as a JSON-ready dict: names (shape, colour, size and position buckets) and raw values.

    >>> describe(sample_params(0, 0))["shape"] in CLASS_NAMES
    True
    """
    t = travel(params.size)
    column = _bucket(params.cx, -t, t)
    row = _bucket(params.cy, -t, t)
    return {
        "label": params.label,
        "shape": CLASS_NAMES[params.label],
        "colour": params.colour,
        "size": SIZE_NAMES[_bucket(params.size, *SIZE_RANGE)],
        "position": POSITION_NAMES[row][column],
        "raw": {
            "hue": params.hue,  # degrees
            "saturation": params.saturation,
            "value": params.value,
            "rgb": list(params.fg),  # in [0, 1]
            "size": params.size,  # radius of the disc of equal area, canvas units ([-1, 1]²)
            "aspect": params.aspect,
            "cx": params.cx,  # canvas units; x grows to the right, y downwards
            "cy": params.cy,
            "angle": params.angle,  # radians
            "background_rgb": list(params.bg),
            "gradient_direction": params.grad_dir,
            "gradient_amplitude": params.grad_amp,
        },
        "version": DATA_VERSION,
    }


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


def _supersampled(params: ShapeParams, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The supersampled canvas of an image of ``size`` px: x, y coordinates and the shape's 0/1 mask."""
    if size not in SUPPORTED_SIZES:
        raise GFTError(f"shapes image size must be one of {SUPPORTED_SIZES}, got {size}")
    s = size * _SUPERSAMPLE
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s * 2.0 - 1.0
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    # Shape-local coordinates: translate, rotate, scale (with aspect stretch).
    dx, dy = xx - params.cx, yy - params.cy
    c, s_ = math.cos(params.angle), math.sin(params.angle)
    lx = (c * dx + s_ * dy) / (params.scale * params.aspect)
    ly = (-s_ * dx + c * dy) / (params.scale / params.aspect)
    return xx, yy, _inside(params.label, lx, ly).to(torch.float32)


def coverage(params: ShapeParams, size: int = 32) -> torch.Tensor:
    """The fraction of each pixel the shape covers, float32 (size, size) in [0, 1] (the anti-aliased mask that
    :func:`render` blends the shape's colour over the background with)."""
    mask = _supersampled(params, size)[2]
    return F.avg_pool2d(mask[None, None], _SUPERSAMPLE)[0, 0]


def render(params: ShapeParams, size: int = 32) -> torch.Tensor:
    """Render one image, float32 (3, size, size) in [-1, 1]."""
    xx, yy, mask = _supersampled(params, size)
    # Background: colour plus a linear gradient along grad_dir.
    ramp = xx * math.cos(params.grad_dir) + yy * math.sin(params.grad_dir)
    bg = torch.tensor(params.bg).view(3, 1, 1) * (1.0 + params.grad_amp * ramp)
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

    def metadata(self, index: int) -> dict:
        """Attributes of item ``index`` (:func:`describe`: shape, colour, size, position and raw values)."""
        return describe(self.params(index))

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

    h = hashlib.sha256(f"shapes-v{DATA_VERSION}".encode())
    for i in range(4):
        h.update(render(sample_params(0, i), size).numpy().tobytes())
    return h.hexdigest()[:12]


def heldout(length: int = 1000, size: int = 32, balanced: bool = True) -> ShapesDataset:
    """The held-out split (a seed the training split never uses)."""
    return ShapesDataset(length=length, size=size, seed=HELDOUT_SEED, balanced=balanced)
