#!/usr/bin/env python
"""Write webdataset tar shards of images + class ids (+ captions): <key>.png (or .jpg), <key>.cls, <key>.txt.

    python scripts/make_shards.py --source shapes --count 10000 --out shards/shapes           # the embedded data
    python scripts/make_shards.py --source /data/imagenet/train --image-size 256 --out shards/in256
    python scripts/train_llamagen.py --data 'shards/shapes/{000000..000009}.tar'           # train on them

--source is 'shapes' (the embedded dataset) or an image folder with one sub-folder per class (sorted folder
names give the class ids). Folder images are shuffled before sharding, so every shard mixes the classes. Without
--image-size the original files are stored as they are (after a check that they decode); with it they are
centre-cropped and resized (as LlamaGen's preprocessing) and re-encoded as --format. The output directory gets
000000.tar … and dataset.json (kind, classes, count, captions: how many samples have one); it appears only when
complete. Unreadable images are skipped and counted. Samples of the embedded data also get <key>.json, the
sample's attributes (gft_tokens.data.shapes.describe: shape, colour name, size and position buckets, raw values;
shard readers ignore it).

Captions (text-to-image, scripts/train_t2i.py): each sample of the embedded data gets its caption as <key>.txt
(gft_tokens.data.captions.caption(seed, index), the text the in-memory t2i data uses). An image of a folder gets
one when a caption file of the same name lies beside it — my_images/cat/1.png → my_images/cat/1.txt (UTF-8, one
caption; an empty file counts as none); images without one are sharded without a caption. Then
scripts/extract_codes.py --text-encoder stores the captions' features beside the codes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm.auto import tqdm

from gft_tokens.data.shapes import ShapesDataset
from gft_tokens.data.shards import (
    CAPTION_KEY,
    IMAGE_KEYS,
    center_crop,
    decode_image,
    encode_jpg,
    encode_png,
    image_folder_items,
    labelled_images,
    read_caption,
    shard_dir_owned,
    write_shards,
)
from gft_tokens.validate import ArgumentParser, bounded, nonnegative, positive
from gft_tokens.fs import check_replaceable
from gft_tokens.errors import GFTError, cli_main


@cli_main
def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="'shapes' or an image folder (one sub-folder per class)")
    parser.add_argument("--out", required=True, help="output directory for the shards")
    parser.add_argument("--shard-size", type=positive(int), default=1000, help="samples per shard (default: 1000)")
    parser.add_argument("--count", type=positive(int), default=None,
                        help="number of images (shapes: default 10000; folder: default all)")
    parser.add_argument("--image-size", type=bounded(int, min=8, max=4096), default=None,
                        help="centre-crop and resize to this size (shapes: 32 or 64, default 32; folder: keep "
                             "the originals when not given)")
    parser.add_argument("--format", choices=("png", "jpg"), default="png", help="encoding of re-encoded images")
    parser.add_argument("--seed", type=nonnegative(int), default=0, help="shapes: dataset seed; folder: shuffling seed")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out even if it holds files other than shards")
    args = parser.parse_args(argv)
    check_replaceable(args.out, shard_dir_owned, args.overwrite)  # before anything is read or written
    if args.count is not None and args.count <= 0:
        raise GFTError(f"--count must be positive, got {args.count}")
    encode = encode_png if args.format == "png" else encode_jpg
    skipped = [0]

    if args.source == "shapes" or args.image_size is not None:
        meta, items = labelled_images(args.source, count=args.count, seed=args.seed, shapes_size=args.image_size or 32)
        # the embedded data's keys are the dataset indices: the same dataset gives each sample's attributes
        shapes = ShapesDataset(length=args.count or 10000, seed=args.seed) if args.source == "shapes" else None

        def samples():
            for key, label, image, text in tqdm(items, desc="shard", total=args.count):
                if image is None:
                    skipped[0] += 1
                    continue
                if args.image_size is not None and image.size != (args.image_size, args.image_size):
                    image = center_crop(image, args.image_size)
                sample = {"__key__": key, args.format: encode(image), "cls": str(label).encode()}
                if text is not None:
                    sample[CAPTION_KEY] = text.encode("utf-8")
                if shapes is not None:
                    sample["json"] = json.dumps(shapes.metadata(int(key)), sort_keys=True).encode()
                yield sample
    else:  # keep the original files
        files, classes = image_folder_items(args.source, args.seed)
        files = files[: args.count] if args.count else files
        meta = {"num_classes": len(classes), "class_names": classes, "source": args.source}

        def samples():
            for i, (path, label) in enumerate(tqdm(files, desc="shard")):
                data = path.read_bytes()
                try:
                    decode_image(data)
                except Exception:
                    skipped[0] += 1
                    continue
                ext = path.suffix.lower().lstrip(".")
                if ext not in IMAGE_KEYS:
                    ext, data = args.format, encode(decode_image(data))
                sample = {"__key__": f"{i:08d}", ext: data, "cls": str(label).encode()}
                text = read_caption(path)
                if text is not None:
                    sample[CAPTION_KEY] = text.encode("utf-8")
                yield sample

    name = "shapes" if args.source == "shapes" else Path(args.source.rstrip("/")).name
    written = write_shards(samples(), args.out, args.shard_size,
                           {"kind": "images", "name": name, **meta, "image_size": args.image_size},
                           overwrite=args.overwrite)
    print(f"wrote {written['count']} images in {written['shards']} shard(s) to {args.out}/{written['pattern']}"
          f" ({written['num_classes']} classes, {written['captions']} with a caption; {skipped[0]} unreadable "
          f"skipped)")


if __name__ == "__main__":
    main()
