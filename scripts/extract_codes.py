#!/usr/bin/env python
"""Encode images with a tokenizer once and write shards of codes: <key>.codes.npy (views, *grid) + <key>.cls.

    python scripts/extract_codes.py --data shapes --count 10000 --tokenizer tokenizers/shapes-vq --out shards/shapes-codes
    python scripts/extract_codes.py --data 'shards/in256/{000000..000127}.tar' --tokenizer tokenizers/llamagen-vq16 \\
        --ten-crop --out shards/in256-codes
    python scripts/train_llamagen.py --data 'shards/shapes-codes/{000000..000009}.tar'
    python scripts/extract_codes.py --data 'shards/shapes/*.tar' --tokenizer tokenizers/shapes-vq \\
        --text-encoder tokenizers/shapes-t5-tiny --out shards/shapes-t2i       # + caption features, for train_t2i.py

Augmentation as LlamaGen's extract_codes_c2i.py: each image is centre-cropped to the tokenizer's image size and
stored with its horizontal flip (2 views; --no-flip: 1), or with --ten-crop centre-cropped to int(size x
--crop-range) and cut into the four corners and the centre plus their flips (10 views; --no-flip: 5). Training picks one view
per sample at random. --data is 'shapes', an image folder (one sub-folder per class) or a shard pattern of images.
dataset.json records the tokenizer; training refuses codes made by a different one.

--text-encoder DIR (a local T5 or CLIP text model with its tokenizer, gft_tokens.text_encoder.TextEncoder; default:
none, no captions are stored) also stores each sample's caption as LlamaGen's T5 feature files do: <key>.txt (the
text), <key>.capfeat.npy (the features, (L, C) float32, left-padded, zero at padding) and <key>.capmask.npy ((L,)
bool, True at real tokens); dataset.json records the text encoder (type, width, caption length and a fingerprint of
its weights), and t2i training refuses features of another one. Every sample then needs a caption (the embedded
data's, <key>.txt of image shards from make_shards.py, or an <image>.txt beside a folder's image): a source with
uncaptioned samples is refused (a folder's, and shards whose dataset.json counts them, before anything is encoded;
other shards at the first such sample), nothing is written. A caption longer than the text encoder's caption length
is refused too, not truncated. With --text-encoder the flipped views are off unless --flip is given: a mirror
contradicts a caption that says "left" or "right" (LlamaGen's t2i codes are not flipped either).
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import torch
from tqdm.auto import tqdm

from gft_tokens.data.shards import (CAPTION_KEY, CODES_KEY, FEATURES_KEY, MASK_KEY, encode_codes, image_views,
                                    labelled_images, shard_dir_owned, write_shards)
from gft_tokens.validate import ArgumentParser, bounded, nonnegative, positive
from gft_tokens.fs import check_replaceable
from gft_tokens.errors import GFTError, cli_main
from gft_tokens.tokenizers import load_tokenizer


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@cli_main
def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="'shapes', an image folder, or a shard pattern of images")
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory")
    parser.add_argument("--out", required=True, help="output directory for the code shards")
    parser.add_argument("--ten-crop", action=argparse.BooleanOptionalAction, default=False,
                        help="10 views: corners + centre of a crop_range-enlarged centre crop, and their flips")
    parser.add_argument("--crop-range", type=bounded(float, min=1, max=4), default=1.1, help="ten-crop enlargement (default: 1.1)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="also store the flipped image (with --ten-crop: the flipped crops; --no-flip: 1 view, "
                             "or the 5 crops) (default: yes, but no with --text-encoder)")
    parser.add_argument("--text-encoder", default=None,
                        help="local T5 or CLIP text model directory: also store each sample's caption, its features "
                             "and mask (every sample needs a caption) (default: none)")
    parser.add_argument("--count", type=positive(int), default=None, help="number of images (shapes: default 10000)")
    parser.add_argument("--seed", type=nonnegative(int), default=0, help="shapes: dataset seed; folder: order seed")
    parser.add_argument("--batch-size", type=positive(int), default=64, help="images per tokenizer call")
    parser.add_argument("--shard-size", type=positive(int), default=1000, help="samples per shard")
    parser.add_argument("--threads", type=bounded(int, min=0, max=4096), default=0, help="torch CPU threads (default: 0, torch's default)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out even if it holds files other than shards")
    args = parser.parse_args(argv)
    check_replaceable(args.out, shard_dir_owned, args.overwrite)  # before anything is read or written
    if args.threads < 0:
        raise GFTError(f"--threads must be at least 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.crop_range < 1.0:
        raise GFTError(f"--crop-range must be at least 1, got {args.crop_range}")
    flip = args.flip if args.flip is not None else args.text_encoder is None
    tokenizer = load_tokenizer(args.tokenizer)
    text_encoder = None
    if args.text_encoder is not None:
        from gft_tokens.text_encoder import TextEncoder

        text_encoder = TextEncoder.from_pretrained(args.text_encoder)
    size = tokenizer.image_size
    meta, items = labelled_images(args.data, count=args.count, seed=args.seed, shapes_size=size,
                                  require_captions=text_encoder is not None)
    dtype = np.int16 if tokenizer.codebook_size <= np.iinfo(np.int16).max else np.int32
    skipped = [0]

    def encode(batch):
        views = torch.stack([v for _, _, v, _ in batch])  # (B, V, 3, S, S)
        b, v = views.shape[:2]
        codes = encode_codes(tokenizer, views.flatten(0, 1))
        codes = codes.view(b, v, *codes.shape[1:]).numpy().astype(dtype)
        if text_encoder is not None:  # refuses an overlong caption, naming it (nothing is written)
            feats, masks = text_encoder.encode([text for _, _, _, text in batch])
            feats, masks = feats.cpu().numpy().astype(np.float32), masks.cpu().numpy().astype(bool)
        for i, ((key, label, _, text), c) in enumerate(zip(batch, codes)):
            sample = {"__key__": key, CODES_KEY: npy_bytes(c), "cls": str(label).encode()}
            if text_encoder is not None:
                sample.update({CAPTION_KEY: text.encode("utf-8"), FEATURES_KEY: npy_bytes(feats[i]),
                               MASK_KEY: npy_bytes(masks[i])})
            yield sample

    def samples():
        batch = []
        for key, label, image, text in tqdm(items, desc="encode", total=args.count):
            if image is None:
                skipped[0] += 1
                continue
            views = image_views(image, size, ten_crop=args.ten_crop, crop_range=args.crop_range, flip=flip)
            batch.append((key, label, views, text))
            if len(batch) == args.batch_size:
                yield from encode(batch)
                batch = []
        if batch:
            yield from encode(batch)

    extra = {"kind": "codes", **meta, "tokenizer": {**tokenizer.describe(), "path": args.tokenizer},
             "ten_crop": args.ten_crop, "flip": flip, "crop_range": args.crop_range if args.ten_crop else None,
             "views": (10 if flip else 5) if args.ten_crop else (2 if flip else 1)}
    if text_encoder is not None:
        extra["text_encoder"] = text_encoder.describe()
    written = write_shards(samples(), args.out, args.shard_size, extra, overwrite=args.overwrite)
    captions = (f", with the captions' features of {args.text_encoder} ({text_encoder.max_length} x "
                f"{text_encoder.hidden_size})" if text_encoder is not None else "")
    print(f"wrote codes of {written['count']} images x {written['views']} views in {written['shards']} shard(s) to "
          f"{args.out}/{written['pattern']}{captions} ({skipped[0]} unreadable skipped)")


if __name__ == "__main__":
    main()
