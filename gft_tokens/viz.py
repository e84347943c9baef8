"""Image grids and annotated figures (PIL only)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] → (N, H, W, 3) uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def grid(images: np.ndarray, nrow: int, pad: int = 2, scale: int = 1, bg: int = 255) -> Image.Image:
    """Tile (N, H, W, 3) uint8 images into rows of ``nrow``, upscaled ``scale``x (nearest)."""
    n, h, w, _ = images.shape
    rows = (n + nrow - 1) // nrow
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), bg, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = images[i]
    img = Image.fromarray(canvas)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale != 1 else img


def labelled_panels(panels: list[Image.Image], titles: list[str], row_labels: list[str] | None = None,
                    row_height: int | None = None) -> Image.Image:
    """Place panels side by side with a title above each and optional labels left of the rows."""
    font = ImageFont.load_default()
    title_h, gap = 16, 12
    left = 0
    if row_labels:
        left = max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(t, font=font) for t in row_labels) + 8
    width = int(left) + sum(p.width for p in panels) + gap * (len(panels) - 1)
    height = title_h + max(p.height for p in panels)
    out = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(out)
    x = int(left)
    for p, t in zip(panels, titles):
        t = t.replace("β", "beta")  # PIL's built-in font has no Greek glyphs (β would print as a box)
        out.paste(p, (x, title_h))
        tw = draw.textlength(t, font=font)
        draw.text((x + (p.width - tw) / 2, 2), t, fill="black", font=font)
        x += p.width + gap
    if row_labels and row_height:
        for i, t in enumerate(row_labels):
            draw.text((2, title_h + i * row_height + row_height / 2 - 5), t, fill="black", font=font)
    return out


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
