#!/usr/bin/env python
"""Pack a folder of generated images (PNG, JPEG) into one ADM-style .npz: ``arr_0`` uint8 (N, H, W, 3), labels in
``arr_1`` when --label-regex reads them from the file names. This is what ADM's evaluator, LlamaGen and VAR use, and
what scripts/evaluate.py reads.

    python scripts/samples_to_npz.py samples/png --out samples.npz
    python scripts/samples_to_npz.py samples/png --out samples.npz --label-regex 'class(\\d+)'

Files are taken in sorted name order; every image must have the same size (converted to RGB).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from gft_tokens.validate import ArgumentParser, positive
from gft_tokens.errors import GFTError, cli_main
from gft_tokens.eval.npz import write_samples_npz

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


@cli_main
def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="folder of images (not searched recursively)")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--label-regex", help="regular expression whose first group is each file name's integer label")
    p.add_argument("--max", type=positive(int), help="take at most this many images (the first in name order)")
    p.add_argument("--no-compress", action="store_true", help="write an uncompressed .npz (as ADM's np.savez)")
    args = p.parse_args(argv)
    folder = Path(args.folder)
    if not folder.is_dir():
        raise GFTError(f"{str(folder)!r} is not a folder")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in EXTENSIONS and f.is_file())
    if args.max is not None:
        files = files[:args.max]
    if not files:
        raise GFTError(f"{folder} holds no images ({', '.join(EXTENSIONS)})")
    pattern = re.compile(args.label_regex) if args.label_regex else None
    if pattern is not None and pattern.groups < 1:
        raise GFTError(f"--label-regex {args.label_regex!r} needs a group, e.g. 'class(\\d+)'")
    images, labels = None, []
    for i, f in enumerate(tqdm(files, desc="reading", unit="img", disable=None, leave=False)):
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise GFTError(f"cannot read {f} as an image ({exc})") from None
        if images is None:
            images = np.empty((len(files), *arr.shape), dtype=np.uint8)
        elif arr.shape != images.shape[1:]:
            raise GFTError(f"{f.name} has size {arr.shape[1]}x{arr.shape[0]}, the first image "
                           f"{images.shape[2]}x{images.shape[1]}: all images must have one size")
        images[i] = arr
        if pattern is not None:
            m = pattern.search(f.name)
            if m is None or not m.group(1).isdigit():
                raise GFTError(f"--label-regex {args.label_regex!r} finds no integer label in {f.name}")
            labels.append(int(m.group(1)))
    out = write_samples_npz(args.out, images, labels if pattern is not None else None, compress=not args.no_compress)
    print(f"{len(images)} images {images.shape[2]}x{images.shape[1]} -> {out}")
    return out


if __name__ == "__main__":
    main()
