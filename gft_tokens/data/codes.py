"""Pre-extracted tokenizer codes: what the token models train on.

Images are encoded once (each image and its horizontal flip, as LlamaGen's code extraction does) and kept as
``codes (N, views, ...)`` int + ``labels (N,)`` (float latents for a continuous tokenizer). For the embedded
shapes data the result is cached on disk, keyed
by the data's fingerprint (which changes with ``shapes.DATA_VERSION`` and the rendering), the tokenizer's weights
and the dataset parameters, so a second run starts at once and a cache of other data is never reused.

Batches are a pure function of ``(seed, step, micro_step, rank)``: resuming at an optimizer step replays exactly
the batches an uninterrupted run would have seen, with no iterator state to save.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from ..errors import GFTError
from ..fs import atomic_file
from .shapes import ShapesDataset, fingerprint


@dataclass
class CodeDataset:
    codes: torch.Tensor  # (N, views, *grid) int64
    labels: torch.Tensor  # (N,) int64
    num_classes: int

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def views(self) -> int:
        return self.codes.shape[1]

    def batch(self, index: torch.Tensor, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (B, *grid) of items ``index`` at augmentation ``view`` and their labels (B,)."""
        return self.codes[index, view], self.labels[index]

    def subset(self, rows: slice) -> "CodeDataset":
        """The items ``rows`` (a slice) as a dataset of the same kind, everything kept per item sliced alike."""
        return dataclasses.replace(self, codes=self.codes[rows], labels=self.labels[rows])


def cache_dir() -> Path:
    return Path(os.environ.get("GFT_TOKENS_CACHE", Path.home() / ".cache" / "gft_tokens"))


def _tokenizer_fingerprint(tokenizer_dir: str | os.PathLike) -> str:
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        path = Path(tokenizer_dir) / name
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def encode_images(tokenizer, images: torch.Tensor, flip: bool = True, batch_size: int = 500) -> torch.Tensor:
    """Encode images (N, 3, H, W) → codes (N, views, ...) with views = [image, flipped image] when ``flip``."""
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc="encode", leave=False):
        x = images[i : i + batch_size]
        views = [x, torch.flip(x, dims=[-1])] if flip else [x]
        encoded = [tokenizer.encode(v) for v in views]
        if isinstance(encoded[0], (list, tuple)):  # multi-scale: concatenate the flattened scales
            encoded = [torch.cat([c.flatten(1) for c in e], dim=1) for e in encoded]
        out.append(torch.stack(encoded, dim=1))
    return torch.cat(out)


def shapes_codes(tokenizer, tokenizer_dir, length: int, seed: int = 0, flip: bool = True) -> CodeDataset:
    """Codes of the embedded shapes dataset (``length`` images, ``seed``), cached on disk."""
    size = tokenizer.image_size
    key = f"shapes-{fingerprint(size)}-{size}-n{length}-s{seed}-f{int(flip)}-{_tokenizer_fingerprint(tokenizer_dir)}"
    path = cache_dir() / "codes" / f"{key}.safetensors"
    if path.is_file():
        try:
            data = load_file(str(path))
            codes = data["codes"] if data["codes"].is_floating_point() else data["codes"].long()
            return CodeDataset(codes, data["labels"].long(), ShapesDataset(1).num_classes)
        except Exception:  # a corrupt cache entry is rebuilt
            tqdm.write(f"code cache {path} is unreadable (corrupt or truncated); rebuilding it")
            path.unlink(missing_ok=True)
    ds = ShapesDataset(length=length, size=size, seed=seed)
    images = torch.stack([ds[i][0] for i in tqdm(range(length), desc="render", leave=False)])
    labels = torch.tensor([ds.params(i).label for i in range(length)], dtype=torch.long)
    codes = encode_images(tokenizer, images, flip=flip)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as fh:
        stored = codes.float() if codes.is_floating_point() else codes.to(torch.int32)  # latents stay float
        fh.write(save({"codes": stored.contiguous(), "labels": labels.contiguous()}))
    return CodeDataset(codes, labels, ds.num_classes)


def check_codes_match(data: CodeDataset, vocab_size: int, seq_shape: tuple[int, ...]) -> None:
    """Refuse codes that do not fit the model (vocabulary or token layout)."""
    if tuple(data.codes.shape[2:]) != tuple(seq_shape):
        raise GFTError(f"codes have token shape {tuple(data.codes.shape[2:])}, the model expects {tuple(seq_shape)}")
    hi = int(data.codes.max())
    if hi >= vocab_size:
        raise GFTError(f"codes contain id {hi} ≥ the model's vocabulary size {vocab_size}")


def batch_indices(n: int, step: int, micro: int, rank: int, world: int, micro_bs: int, grad_accum: int,
                  seed: int) -> torch.Tensor:
    """Indices of one micro-batch: epoch-wise permutations of [0, n), consumed in global-batch order."""
    global_bs = micro_bs * grad_accum * world
    start = step * global_bs + (micro * world + rank) * micro_bs
    idx = torch.empty(micro_bs, dtype=torch.long)
    filled = 0
    while filled < micro_bs:
        epoch, offset = divmod(start + filled, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        take = min(micro_bs - filled, n - offset)
        idx[filled:filled + take] = perm[offset:offset + take]
        filled += take
    return idx


def view_indices(count: int, views: int, step: int, micro: int, rank: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(((seed * 7919 + step) * 131 + micro) * 65537 + rank)
    return torch.randint(views, (count,), generator=g)
