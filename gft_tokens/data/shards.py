"""webdataset shards: image folders / the embedded data → tar shards, and the sharded training stream.

A shard is a tar file of samples, one sample per key: ``<key>.cls`` (the class id as text) plus either an image
(``<key>.png`` / ``.jpg`` / ``.jpeg`` / ``.webp``) or tokenizer codes (``<key>.codes.npy``, int array of shape
(views, *token_shape), written by ``scripts/extract_codes.py``). Other members (e.g. ``<key>.json``, the
attributes ``make_shards.py`` stores for the embedded data) are ignored by the readers. ``dataset.json`` beside the
shards records the kind, the number of classes, how many samples carry a caption and, for codes, the tokenizer
that produced them.

Captions (text-to-image): ``<key>.txt``, the caption text (UTF-8; ``make_shards.py`` writes the embedded data's
captions and the ``<image>.txt`` files found beside an image folder's images), and, in code shards written by
``extract_codes.py --text-encoder``, the text encoder's features ``<key>.capfeat.npy`` (L, C) float32 (left-padded,
zero at padding) and mask ``<key>.capmask.npy`` (L,) bool, as LlamaGen's precomputed T5 feature files;
``dataset.json`` then records the text encoder (:meth:`gft_tokens.text_encoder.TextEncoder.describe`, with its
weights' fingerprint). A stream given :class:`ShardCaptions` (a t2i run) yields each sample's
:class:`~gft_tokens.conditioning.Caption` instead of its class id: the stored features, refused unless the run's
text encoder made them, or else the caption text encoded by the run's text encoder in the training process (as
images are encoded by the tokenizer there). Shards without captions are refused for such a run; a class-conditional
run reads caption shards as any others (the captions are ignored).

Training reads ``--data 'shards/{000000..000031}.tar'`` (brace ranges and globs): shards are split by rank
(``shards[rank::world]``) and then by DataLoader worker, the shard order is reshuffled every epoch and samples pass
through a shuffle buffer, all from the run's seed. Images are encoded with the run's tokenizer in the training
process (centre-cropped to its image size, randomly flipped unless ``flip=False``, ``--no-flip``); codes shards
give one random view per sample. ``holdout`` (``--val-fraction``) drops the samples whose key hashes into that
fraction (:func:`in_holdout`); :func:`validation_codes` reads exactly those once, as the validation set.
Samples that cannot be read (a broken tar member, a missing ``cls``, an undecodable image, a class id out of
range) are skipped and counted; the count reaches the training log.

Data position: the stream of each rank is a deterministic function of (seed, rank, world size, number of
workers, the shards). Its position is the number of samples the rank has consumed, ``step × grad_accum ×
batch_size``; resuming skips that many samples of the same stream (reading them, without decoding images), so a
resumed run sees the samples an uninterrupted one would — exactly, unless a sample in the skipped range failed to
decode or had a caption too long for the text encoder (those are not counted when skipping) or the world size /
worker count changed. There is no epoch counter:
each rank cycles through its shards indefinitely.
"""

from __future__ import annotations

import glob
import io
import itertools
import json
import random
import tarfile
import zlib
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ..errors import GFTError

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
CODES_KEY = "codes.npy"
CAPTION_KEY = "txt"  # the caption text
FEATURES_KEY = "capfeat.npy"  # its text-encoder features (L, C) float32
MASK_KEY = "capmask.npy"  # and their mask (L,) bool, True at real tokens
META_NAME = "dataset.json"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


# ---------------------------------------------------------------------------------------------------------------
# Shard specs
# ---------------------------------------------------------------------------------------------------------------
def expand_shards(spec: str) -> list[str]:
    """``'dir/{000000..000031}.tar'`` (brace ranges and lists) or ``'dir/*.tar'`` (globs) → the existing files."""
    from braceexpand import braceexpand

    if not spec or not spec.strip():
        raise GFTError("the shard pattern is empty")
    out, missing = [], []
    for item in braceexpand(spec):
        if any(ch in item for ch in "*?["):
            out.extend(sorted(glob.glob(item)))
        elif Path(item).is_file():
            out.append(item)
        else:
            missing.append(item)
    if not out:
        raise GFTError(f"the shard pattern {spec!r} matches no files")
    if missing:
        raise GFTError(f"{len(missing)} shard(s) of {spec!r} do not exist: {', '.join(missing[:3])}")
    return out


def read_meta(shards: list[str]) -> dict:
    """``dataset.json`` from the first shard's directory ({} if there is none)."""
    path = Path(shards[0]).parent / META_NAME
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GFTError(f"{path} is not valid JSON ({exc.msg})") from None


def check_shard(path: str) -> None:
    """Refuse a shard that is empty or not a readable tar file."""
    try:
        with tarfile.open(path, "r") as tf:
            if tf.next() is None:
                raise GFTError(f"shard {path} is empty (a tar file with no members)")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise GFTError(f"shard {path} is not a readable tar file (corrupt or empty): {exc}") from None


def _raw_samples(urls: Iterable[str], handler) -> Iterator[dict]:
    import webdataset as wds

    return wds.tarfile_samples([{"url": u} for u in urls], handler=handler)


def first_sample(path: str) -> dict:
    def reraise(exn):
        raise GFTError(f"shard {path} cannot be read: {exn}")

    for sample in _raw_samples([path], reraise):
        return sample
    raise GFTError(f"shard {path} holds no samples")


def sample_kind(sample: dict, where: str) -> str:
    """'images' or 'codes' from a raw sample's keys; refuses samples without ``cls`` or data."""
    keys = sorted(k for k in sample if not k.startswith("__"))
    if "cls" not in sample:
        raise GFTError(f"shards have no 'cls' entry: sample {sample.get('__key__')!r} in {where} has only "
                       f"{keys}; each sample needs <key>.cls (make_shards.py writes it)")
    if CODES_KEY in sample:
        return "codes"
    if any(k in sample for k in IMAGE_KEYS):
        return "images"
    raise GFTError(f"sample {sample.get('__key__')!r} in {where} has neither an image ({', '.join(IMAGE_KEYS)}) "
                   f"nor {CODES_KEY}: {keys}")


# ---------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------
def center_crop(image, size: int):
    """ADM/LlamaGen centre crop: halve with a box filter while ≥ 2×size, bicubic-resize the short side to
    ``size``, crop the centre. PIL image in, PIL image (size × size, RGB) out."""
    from PIL import Image

    image = image.convert("RGB")
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_tensor(image) -> torch.Tensor:
    """PIL RGB image → float tensor (3, H, W) in [-1, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous() / 127.5 - 1.0


def decode_image(data: bytes):
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


def image_views(image, size: int, ten_crop: bool = False, crop_range: float = 1.1, flip: bool = True) -> torch.Tensor:
    """Augmented views as LlamaGen's code extraction makes them: (views, 3, size, size) in [-1, 1].

    ``ten_crop``: centre-crop to ``int(size·crop_range)``, then the four corners and the centre at ``size`` and
    their horizontal flips (torchvision's TenCrop order) — 10 views (5 with ``flip=False``). Otherwise the centre crop at ``size`` and its
    flip (2 views), or only the crop (``flip=False``).
    """
    if ten_crop:
        big = to_tensor(center_crop(image, int(size * crop_range)))
        s, h = size, big.shape[-1]
        c = int(round((h - s) / 2.0))
        crops = [big[:, :s, :s], big[:, :s, h - s:], big[:, h - s:, :s], big[:, h - s:, h - s:],
                 big[:, c:c + s, c:c + s]]
        if flip:
            crops += [torch.flip(x, dims=[-1]) for x in crops]
        return torch.stack(crops)
    x = to_tensor(center_crop(image, size))
    return torch.stack([x, torch.flip(x, dims=[-1])] if flip else [x])


def encode_codes(tokenizer, images: torch.Tensor) -> torch.Tensor:
    """``tokenizer.encode`` with the scales of a multi-scale tokenizer concatenated (flattened) per image."""
    codes = tokenizer.encode(images)
    if isinstance(codes, (list, tuple)):
        codes = torch.cat([c.flatten(1) for c in codes], dim=1)
    return codes.cpu()


def encode_png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def encode_jpg(image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Sources (for make_shards.py / extract_codes.py): (key, label, PIL image or None if unreadable, caption or None)
# ---------------------------------------------------------------------------------------------------------------
def image_folder_items(root: str | Path, seed: int = 0) -> tuple[list[tuple[Path, int]], list[str]]:
    """Files of an image folder with one sub-folder per class: shuffled (file, class id) pairs and class names."""
    root = Path(root)
    if not root.is_dir():
        raise GFTError(f"image folder {str(root)!r} does not exist")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise GFTError(f"{root} has no class sub-folders (expected {root}/<class name>/<image files>)")
    items = [(f, i) for i, c in enumerate(classes) for f in sorted((root / c).rglob("*"))
             if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise GFTError(f"{root} has no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in its class folders")
    random.Random(seed).shuffle(items)
    return items, classes


def caption_file(image: str | Path) -> Path:
    """Where an image's optional caption lives: the ``.txt`` file of the same name beside it (``cat/1.png`` →
    ``cat/1.txt``)."""
    return Path(image).with_suffix(".txt")


def read_caption(image: str | Path) -> str | None:
    """The caption of an image folder's image (its :func:`caption_file`, UTF-8, stripped), None if it has none (no
    file, or an empty one)."""
    path = caption_file(image)
    if not path.is_file():
        return None
    try:
        text = path.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise GFTError(f"caption file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return text or None


def shard_caption(sample: dict) -> str | None:
    """The caption text of a raw shard sample (``<key>.txt``), None if it has none."""
    try:
        return sample[CAPTION_KEY].decode("utf-8").strip() or None
    except (KeyError, UnicodeDecodeError, AttributeError):
        return None


def _missing_captions(problem: str) -> GFTError:
    return GFTError(f"{problem}; caption features need a caption for every sample — add the captions (an "
                    f"<image>.txt beside each image, then make_shards.py), or leave out --text-encoder")


def labelled_images(data: str, count: int | None = None, seed: int = 0, shapes_size: int = 32,
                    require_captions: bool = False):
    """``(meta, iterator of (key, label, PIL image or None when unreadable, caption or None))`` for ``data``:
    ``'shapes'`` (the embedded dataset, ``count`` images, each with its caption
    :func:`gft_tokens.data.captions.caption`), an image folder with one sub-folder per class (captions: the
    optional :func:`caption_file` of each image), or a shard pattern (captions: ``<key>.txt``).

    ``require_captions``: refuse a sample without a caption — for a folder, and shards whose ``dataset.json`` counts
    their captions, before any image is read (naming how many lack one and the first); otherwise at the first such
    sample (a GFTError raised by the iterator)."""
    if data == "shapes":
        from .captions import caption
        from .shapes import CLASS_NAMES, ShapesDataset, render

        from PIL import Image

        ds = ShapesDataset(length=count or 10000, size=shapes_size, seed=seed)

        def shapes():
            for i in range(len(ds)):
                p = ds.params(i)
                arr = ((render(p, shapes_size) + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
                yield f"{i:08d}", p.label, Image.fromarray(arr), caption(seed, i)

        return {"num_classes": len(CLASS_NAMES), "class_names": list(CLASS_NAMES), "source": "shapes"}, shapes()
    if Path(data).is_dir():
        items, classes = image_folder_items(data, seed)
        items = items[:count] if count else items
        if require_captions:
            missing = [path for path, _ in items if read_caption(path) is None]
            if missing:
                raise _missing_captions(f"{len(missing)} of {len(items)} images of {data} have no caption (first: "
                                        f"{missing[0]}, no {caption_file(missing[0]).name} beside it)")

        def folder():
            for i, (path, label) in enumerate(items):
                try:
                    image = decode_image(path.read_bytes())
                except Exception:
                    image = None
                yield f"{i:08d}", label, image, read_caption(path)

        return {"num_classes": len(classes), "class_names": classes, "source": str(data)}, folder()
    shards = expand_shards(data)
    for path in shards:
        check_shard(path)
    meta = read_meta(shards)
    kind = sample_kind(first_sample(shards[0]), shards[0])
    if kind != "images":
        raise GFTError(f"{data} holds {kind}, not images")
    if require_captions and isinstance(meta.get("captions"), int) and isinstance(meta.get("count"), int):
        if meta["captions"] < meta["count"]:
            raise _missing_captions(f"{meta['count'] - meta['captions']} of {meta['count']} samples of {data} have "
                                    f"no caption (its {META_NAME} counts {meta['captions']} captions)")
    skipped = [0]

    def count_error(_exn) -> bool:
        skipped[0] += 1
        return True

    def from_shards():
        n = 0
        for sample in _raw_samples(shards, count_error):
            if count and n >= count:
                return
            n += 1
            key = sample.get("__key__", f"{n:08d}")
            try:
                label = int(sample["cls"].decode().strip())
                image = decode_image(next(sample[k] for k in IMAGE_KEYS if k in sample))
            except Exception:
                yield key, -1, None, None
                continue
            text = shard_caption(sample)
            if require_captions and text is None:
                raise _missing_captions(f"sample {key!r} of {data} has no caption (no <key>.{CAPTION_KEY}; it is "
                                        f"sample {n}, the first without one)")
            yield sample["__key__"], label, image, text
        for _ in range(skipped[0]):
            yield "unreadable", -1, None, None

    meta = {k: meta[k] for k in ("num_classes", "class_names", "name") if k in meta}
    return {**meta, "source": data}, from_shards()


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------
def shard_dir_owned(name: str) -> bool:
    """Whether ``name`` in a shard directory is one :func:`write_shards` writes."""
    return name == "dataset.json" or (name.endswith(".tar") and name[:-4].isdigit())


def write_shards(samples: Iterable[dict], out: str | Path, shard_size: int, meta: dict,
                 overwrite: bool = False) -> dict:
    """Write ``samples`` (dicts of ``__key__`` and bytes per extension) as ``out/000000.tar`` … + ``dataset.json``
    (``meta`` plus ``count``, ``shards``, ``pattern`` and ``captions``, the number of samples with a caption).

    The directory appears only when complete (written beside it and renamed). Returns the metadata written.
    """
    import webdataset as wds

    from ..fs import atomic_dir

    if shard_size <= 0:
        raise GFTError(f"shard size must be positive, got {shard_size}")
    count, shards, captions, writer = 0, 0, 0, None
    with atomic_dir(out, owned=shard_dir_owned, overwrite=overwrite) as tmp:
        try:
            for sample in samples:
                if count % shard_size == 0:
                    if writer is not None:
                        writer.close()
                    writer = wds.TarWriter(str(tmp / f"{shards:06d}.tar"), encoder=False)
                    shards += 1
                writer.write(sample)
                count += 1
                captions += CAPTION_KEY in sample
        finally:
            if writer is not None:
                writer.close()
        if count == 0:
            raise GFTError("no samples to write (every input was unreadable?)")
        meta = {**meta, "count": count, "shards": shards,
                "pattern": f"{{000000..{shards - 1:06d}}}.tar", "captions": captions}
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# ---------------------------------------------------------------------------------------------------------------
# The training stream
# ---------------------------------------------------------------------------------------------------------------
def in_holdout(key: str, fraction: float) -> bool:
    """Whether the sample ``key`` falls in the held-out ``fraction`` (a hash of the key: the same split on every
    rank, worker, epoch and resume, whatever the shard order)."""
    return zlib.crc32(str(key).encode()) / 2**32 < fraction


def _complete(sample: dict) -> bool:
    return "cls" in sample and (CODES_KEY in sample or any(k in sample for k in IMAGE_KEYS))


class ShardCaptions:
    """The captions a text-to-image run reads from shards, for its text encoder at ``path`` (see the module doc).

    :meth:`mode` checks a set of shards: ``'features'`` when they store caption features (``extract_codes.py
    --text-encoder``), refused unless this text encoder made them (type, width, caption length and weights
    fingerprint; the path may differ); ``'text'`` when they carry only caption text (``make_shards.py``), which is
    encoded by this text encoder in the training process — a caption too long for it is skipped and counted like
    an unreadable sample (refused at once if it is the first sample's). Shards with neither are refused.
    The record (:attr:`record`) is read from the directory without loading the weights; they are loaded only to
    encode text.
    """

    def __init__(self, path: str):
        from ..text_encoder import describe_text_encoder

        self.path = str(path)
        self.record = describe_text_encoder(self.path, fingerprint=True)
        self._encoder = self._tokenizer = None
        self._device = None

    @property
    def shape(self) -> tuple[int, int]:
        """(L, C) of one caption's features."""
        return self.record["max_length"], self.record["hidden_size"]

    def __getstate__(self):  # a DataLoader worker gets the record, and loads the tokenizer itself if it needs it
        return {**self.__dict__, "_encoder": None, "_tokenizer": None}

    def encoder(self):
        if self._encoder is None:
            from ..text_encoder import TextEncoder

            self._encoder = TextEncoder.from_pretrained(self.path, max_length=self.record["max_length"])
            if self._device is not None:
                self._encoder.to(self._device)
        return self._encoder

    def to(self, device) -> None:
        self._device = device
        if self._encoder is not None:
            self._encoder.to(device)

    def tokens(self, text: str) -> int:
        """How many tokens the text encoder's tokenizer makes of ``text`` (its end-of-text token included)."""
        if self._tokenizer is None:  # the encoder's, or (in a DataLoader worker) the tokenizer alone
            if self._encoder is not None:
                self._tokenizer = self._encoder.tokenizer
            else:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        return len(self._tokenizer(text, add_special_tokens=True)["input_ids"])

    def mode(self, spec: str, meta: dict, sample: dict, kind: str) -> str:
        """'features' or 'text' for the shards ``spec`` (``meta``: their dataset.json; ``sample``: their first raw
        sample); refuses shards without captions and features of another text encoder (see the class doc)."""
        from ..text_encoder import text_encoder_differences

        key = sample.get("__key__")
        if meta.get("captions") == 0 or (FEATURES_KEY not in sample and CAPTION_KEY not in sample):
            held = sorted(k for k in sample if not k.startswith("__"))
            raise GFTError(f"a t2i run needs captions; these shards have none — sample {key!r} of {spec} holds "
                           f"{held}" + (f" and {META_NAME} counts 0 captions" if meta.get("captions") == 0 else "")
                           + ": shard captioned images with make_shards.py (the embedded data, or an <image>.txt "
                           "beside each image) and store their features with extract_codes.py --text-encoder DIR")
        if FEATURES_KEY in sample:
            made = meta.get("text_encoder")
            if not isinstance(made, dict):
                raise GFTError(f"the caption features in {spec} do not say which text encoder made them (no "
                               f"text_encoder in {META_NAME}): extract them again with extract_codes.py "
                               f"--text-encoder {self.path}")
            diffs = text_encoder_differences(made, self.record)
            if diffs:
                raise GFTError(f"the caption features in {spec} were made by the text encoder {made.get('path')}, "
                               f"not by this run's --text-encoder {self.path} ({'; '.join(diffs)}): train with "
                               f"--text-encoder {made.get('path')}, or extract the features again with "
                               f"extract_codes.py --text-encoder {self.path}")
            return "features"
        text = shard_caption(sample)
        if text is not None and self.tokens(text) > self.shape[0]:
            raise GFTError(f"the caption of sample {key!r} of {spec} is {self.tokens(text)} tokens long, more than "
                           f"the text encoder {self.path} takes ({self.shape[0]}): use a text encoder with a longer "
                           f"caption length (captions are skipped, not truncated)")
        return "text"

    def decode(self, sample: dict, mode: str):
        """One raw sample's caption: (features (L, C) float32, mask (L,) bool) or its text (raises if it has none,
        or one too long for the text encoder: the sample is skipped)."""
        if mode == "features":
            feats = np.load(io.BytesIO(sample[FEATURES_KEY]), allow_pickle=False)
            mask = np.load(io.BytesIO(sample[MASK_KEY]), allow_pickle=False)
            if feats.shape != self.shape or mask.shape != self.shape[:1]:
                raise ValueError(f"caption features of shape {feats.shape} / mask {mask.shape}, not {self.shape}")
            return torch.from_numpy(feats.astype(np.float32)), torch.from_numpy(mask.astype(bool))
        text = shard_caption(sample)
        if text is None:
            raise ValueError("no caption")
        if self.tokens(text) > self.shape[0]:
            raise ValueError(f"caption longer than {self.shape[0]} tokens")
        return text

    def batch(self, captions: list, mode: str, batch_size: int = 256):
        """The :class:`~gft_tokens.conditioning.Caption` of decoded captions (text encoded ``batch_size`` at a time)."""
        from ..conditioning import Caption

        if mode == "features":
            return Caption(torch.stack([f for f, _ in captions]), torch.stack([m for _, m in captions]))
        return Caption(*self.encoder().encode_batched(captions, batch_size))  # at the record's caption length

    def describe(self, mode: str) -> str:
        if mode == "features":
            return f"captions: stored features of {self.path}"
        return f"captions encoded by {self.path} on the fly"


class _Samples(torch.utils.data.IterableDataset):
    """One rank's endless stream of decoded samples ``(tensor, label, caption or None, skipped_since_last)``; see
    the module doc."""

    def __init__(self, shards, kind, num_classes, image_size, seed, rank, skip, buffer, flip=True,
                 holdout=0.0, captions: ShardCaptions | None = None, caption_mode: str | None = None):
        super().__init__()
        self.shards, self.kind, self.num_classes, self.image_size = shards, kind, num_classes, image_size
        self.seed, self.rank, self.skip, self.buffer = seed, rank, skip, buffer
        self.flip, self.holdout = flip, holdout
        self.captions, self.caption_mode = captions, caption_mode

    def _decode(self, sample: dict, aug: int):
        label = int(sample["cls"].decode().strip())
        if self.captions is None and not 0 <= label < self.num_classes:  # captioned: the class id is no condition
            raise ValueError(f"class id {label} outside [0, {self.num_classes})")
        cap = self.captions.decode(sample, self.caption_mode) if self.captions is not None else None
        if self.kind == "codes":
            codes = np.load(io.BytesIO(sample[CODES_KEY]), allow_pickle=False)
            codes = codes[aug % codes.shape[0]] if codes.ndim >= 2 else codes
            return torch.from_numpy(codes.astype(np.int64)), label, cap
        data = next(sample[k] for k in IMAGE_KEYS if k in sample)
        x = to_tensor(center_crop(decode_image(data), self.image_size))
        return (torch.flip(x, dims=[-1]) if self.flip and aug & 1 else x), label, cap

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # samples of this worker among the first `skip` the main process consumed (round-robin over workers)
        to_skip = max(0, (self.skip - worker + workers - 1) // workers)
        skipped = [0]

        def count(_exn) -> bool:
            skipped[0] += 1
            return True

        rng = random.Random(f"{self.seed}/{self.rank}/{worker}")
        for epoch in itertools.count():
            order = list(self.shards)
            random.Random(f"{self.seed}/{self.rank}/epoch{epoch}").shuffle(order)
            good, buf = 0, []
            stream = _raw_samples(order[worker::workers], count)
            for sample in itertools.chain(stream, [None] * self.buffer):
                if sample is not None:
                    if not _complete(sample):
                        skipped[0] += 1
                        continue
                    if self.holdout and in_holdout(sample.get("__key__", ""), self.holdout):
                        continue  # the validation split (--val-fraction): never trained on
                    buf.append(sample)
                    if len(buf) < self.buffer:
                        continue
                if not buf:
                    break
                sample = buf.pop(rng.randrange(len(buf)))
                aug = rng.getrandbits(31)
                if to_skip:
                    to_skip -= 1
                    good += 1
                    continue
                try:
                    x, label, cap = self._decode(sample, aug)
                except Exception:
                    skipped[0] += 1
                    continue
                good += 1
                yield x, label, cap, skipped[0]
                skipped[0] = 0
            if good == 0:
                raise GFTError(f"no readable samples in shards {', '.join(order[worker::workers][:3])} "
                               f"({skipped[0]} unreadable)")


class ShardStream:
    """Micro-batches of codes from webdataset shards for one rank of a training run.

    >>> stream = ShardStream("shards/{000000..000031}.tar", tokenizer=tok, rank=0, world=1, batch_size=64)
    >>> stream.start(skip=0)
    >>> codes, labels = stream.next_batch()       # (64, *token grid) int64, (64,) int64

    With ``captions`` (a :class:`ShardCaptions`, a text-to-image run) the condition of a batch is the
    :class:`~gft_tokens.conditioning.Caption` of its samples instead of their class ids.
    """

    def __init__(self, spec: str, *, tokenizer, rank: int, world: int, batch_size: int, seed: int = 0,
                 workers: int = 2, num_classes: int | None = None, buffer: int = 1000, flip: bool = True,
                 holdout: float = 0.0, captions: ShardCaptions | None = None):
        self.spec, self.tokenizer, self.batch_size = spec, tokenizer, batch_size
        self.rank, self.seed, self.buffer, self.flip, self.holdout = rank, seed, buffer, flip, holdout
        self.all_shards = None
        shards = expand_shards(spec)
        if len(shards) < world:
            raise GFTError(f"{len(shards)} shard(s) cannot be split over {world} processes: make at least {world}")
        self.all_shards, self.shards = shards, shards[rank::world]
        for path in self.shards:
            check_shard(path)
        self.meta = read_meta(shards)
        first = first_sample(self.shards[0])
        self.kind = sample_kind(first, self.shards[0])
        if self.meta.get("kind") not in (None, self.kind):
            raise GFTError(f"{META_NAME} says the shards hold {self.meta['kind']}, but they hold {self.kind}")
        self.captions = captions
        self.caption_mode = captions.mode(spec, self.meta, first, self.kind) if captions is not None else None
        self.num_classes = num_classes if num_classes is not None else self.meta.get("num_classes")
        if captions is not None:
            self.num_classes = 0  # the captions are the condition; class ids are read but not used
        if self.num_classes is None:
            raise GFTError(f"the number of classes is unknown: the shards have no {META_NAME} with num_classes; "
                           "pass --num-classes")
        if self.kind == "codes":
            made_with = self.meta.get("tokenizer") or {}
            mine = tokenizer.describe()
            for key in ("type", "codebook_size", "grid_size"):
                if key in made_with and made_with[key] != mine.get(key):
                    raise GFTError(f"the codes in {spec} were made by a tokenizer with {key} {made_with[key]}; "
                                   f"the run's tokenizer has {mine.get(key)}")
        self.workers = max(0, min(workers, len(self.shards)))
        self.skipped = 0
        self._iter = None
        self._expect = None

    def expect(self, vocab_size: int, token_shape: tuple[int, ...]) -> None:
        """Check every batch against the model: codes shape and vocabulary."""
        self._expect = (vocab_size, tuple(token_shape))

    def start(self, skip: int = 0) -> None:
        """Begin the stream after ``skip`` samples of this rank (the position of a resumed run)."""
        dataset = _Samples(self.shards, self.kind, self.num_classes, self.tokenizer.image_size, self.seed,
                           self.rank, skip, self.buffer, flip=self.flip, holdout=self.holdout,
                           captions=self.captions, caption_mode=self.caption_mode)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self.workers,
                                             persistent_workers=False)
        self._iter = iter(loader)

    @property
    def text_encoder(self) -> dict | None:
        """The record of the text encoder whose features a captioned stream gives (None for class ids)."""
        return self.captions.record if self.captions is not None else None

    def next_batch(self):
        """Codes (B, *token grid) and the batch's condition: class ids (B,), or a Caption with ``captions``."""
        if self._iter is None:
            self.start(0)
        xs, labels, caps = [], [], []
        for _ in range(self.batch_size):
            try:
                x, label, cap, skipped = next(self._iter)
            except GFTError as exc:  # raised in a DataLoader worker: keep the message, drop the traceback
                raise GFTError(str(exc).strip().splitlines()[-1].split("GFTError: ")[-1]) from None
            xs.append(x)
            labels.append(int(label))
            caps.append(cap)
            self.skipped += int(skipped)
        want = self._expect[1] if self._expect is not None and self.kind == "codes" else tuple(xs[0].shape)
        odd = next((i for i, x in enumerate(xs) if tuple(x.shape) != want), None)
        if odd is not None:  # a shard mixing grid sizes: one sentence naming both, not a stack error
            raise GFTError(f"{self.kind} from {self.spec} mix shapes: a sample has shape {tuple(xs[odd].shape)}, "
                           f"expected {want} like {'the model' if self._expect is not None else 'the first sample'}"
                           f" (were the shards written with different tokenizers or image sizes?)")
        x = torch.stack(xs)
        if self.kind == "images":
            codes = encode_codes(self.tokenizer, x)
        else:
            codes = x
        if self._expect is not None:
            vocab, shape = self._expect
            if tuple(codes.shape[1:]) != shape:
                raise GFTError(f"codes from {self.spec} have token shape {tuple(codes.shape[1:])}, the model "
                               f"expects {shape}")
            if int(codes.max()) >= vocab or int(codes.min()) < 0:
                raise GFTError(f"codes from {self.spec} contain ids outside the vocabulary [0, {vocab})")
        if self.captions is not None:
            return codes, self.captions.batch(caps, self.caption_mode)
        return codes, torch.tensor(labels, dtype=torch.long)

    def describe(self) -> str:
        aug = "" if self.kind == "codes" else (", random flips" if self.flip else ", no flips")
        held = f", {self.holdout:.0%} held out for validation" if self.holdout else ""
        caps = f", {self.captions.describe(self.caption_mode)}" if self.captions is not None else ""
        return f"{len(self.shards)} shard(s) of {self.kind} on this rank ({self.spec}{aug}{held}{caps})"

    def class_names(self) -> list[str] | None:
        names = self.meta.get("class_names")
        return [str(n) for n in names] if isinstance(names, list) else None


def dataset_record(meta: dict, source: str, num_classes: int) -> dict:
    """The ``dataset`` record a trained model keeps: ``{name, class_names}`` (names from ``dataset.json`` or the
    class folders; ids as strings when unknown)."""
    names = meta.get("class_names")
    if not isinstance(names, list) or len(names) != num_classes:
        names = [str(i) for i in range(num_classes)]
    name = meta.get("name") or meta.get("source") or source
    if name not in ("shapes",):
        name = Path(str(name).rstrip("/")).name or str(name)
        if name.endswith(".tar") or "{" in name or "*" in name:  # a shard pattern: name it by its folder
            name = Path(str(meta.get("source") or source)).parent.name or name
    return {"name": str(name), "class_names": [str(n) for n in names]}


def validation_codes(spec: str, tokenizer, *, fraction: float | None, limit: int, batch_size: int = 64,
                     captions: ShardCaptions | None = None):
    """Codes and labels of a validation set, read once without augmentation (the first view of codes samples).

    ``fraction`` None: every sample of ``spec`` (``--val-data``); else the samples whose key falls in the held-out
    ``fraction`` of the training shards (``--val-fraction``, see :func:`in_holdout`). At most ``limit`` samples.
    With ``captions`` (a text-to-image run) the conditions are the samples' Caption instead of their labels.
    """
    shards = expand_shards(spec)
    for path in shards:
        check_shard(path)
    first = first_sample(shards[0])
    kind = sample_kind(first, shards[0])
    mode = captions.mode(spec, read_meta(shards), first, kind) if captions is not None else None
    xs, labels, out, caps = [], [], [], []

    def flush():
        if xs:
            x = torch.stack(xs)
            out.append(encode_codes(tokenizer, x) if kind == "images" else x)
            xs.clear()

    for sample in _raw_samples(shards, lambda _exn: True):
        if len(labels) >= limit:
            break
        if not _complete(sample):
            continue
        if fraction is not None and not in_holdout(sample.get("__key__", ""), fraction):
            continue
        try:
            label = int(sample["cls"].decode().strip())
            cap = captions.decode(sample, mode) if captions is not None else None
            if kind == "codes":
                codes = np.load(io.BytesIO(sample[CODES_KEY]), allow_pickle=False)
                x = torch.from_numpy((codes[0] if codes.ndim >= 2 else codes).astype(np.int64))
            else:
                x = to_tensor(center_crop(decode_image(next(sample[k] for k in IMAGE_KEYS if k in sample)),
                                          tokenizer.image_size))
        except Exception:
            continue
        xs.append(x)
        labels.append(label)
        caps.append(cap)
        if len(xs) == batch_size:
            flush()
    flush()
    if not labels:
        what = f"the held-out {fraction:.0%} of {spec}" if fraction is not None else spec
        raise GFTError(f"no validation samples in {what}")
    if captions is not None:
        return torch.cat(out), captions.batch(caps, mode)
    return torch.cat(out), torch.tensor(labels, dtype=torch.long)


def load_labelled_images(data: str, *, size: int | None = None, count: int | None = None, seed: int = 0,
                         desc: str = "read images") -> tuple[torch.Tensor, torch.Tensor, dict]:
    """All images of ``data`` (an image folder, a shard pattern of images, or 'shapes') as one tensor
    (N, 3, S, S) in [-1, 1], their labels (N,) and the data's metadata (``num_classes``, ``class_names``,
    ``image_size`` = S).

    ``size`` None takes S from the data: the size of the first image (its shorter side); every image is
    centre-cropped (and resized, as :func:`center_crop`) to S. Unreadable images are skipped.
    """
    from tqdm.auto import tqdm

    meta, items = labelled_images(data, count=count, seed=seed, shapes_size=size or 32)
    images, labels = [], []
    for _, label, image, _ in tqdm(items, desc=desc, leave=False, total=count):
        if image is None or label < 0:
            continue
        if size is None:
            size = min(image.size)
        images.append(to_tensor(center_crop(image, size) if image.size != (size, size) else image))
        labels.append(label)
    if not images:
        raise GFTError(f"no readable images in {data}")
    if meta.get("num_classes") is None:
        meta["num_classes"] = max(labels) + 1
    return torch.stack(images), torch.tensor(labels, dtype=torch.long), {**meta, "image_size": size}


def data_image_size(data: str) -> int | None:
    """The image size of ``data`` without reading it all: the first readable image's shorter side (None for
    'shapes')."""
    if data == "shapes":
        return None
    _, items = labelled_images(data, count=1)
    for _, _, image, _ in items:
        if image is not None:
            return min(image.size)
    return None
