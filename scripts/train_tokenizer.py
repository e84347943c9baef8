#!/usr/bin/env python
"""Train an image tokenizer (VQ, multi-scale VQ or KL) on the embedded shapes data or on your own images.

    python scripts/train_tokenizer.py                                          # the shipped tokenizers/shapes-vq
    python scripts/train_tokenizer.py --config configs/tokenizer/shapes-vq.yaml --steps 500 --out /tmp/vq
    python scripts/train_tokenizer.py --data 'shards/mine/*.tar' --no-flip --out tokenizers/mine-vq   # your images
    python scripts/train_tokenizer.py --config configs/tokenizer/llamagen-vq16.yaml --data 'shards/in256/*.tar'

--data takes an image folder (one sub-folder per class) or shards of images; a held-out part of them
(--eval-fraction) gives the PSNR / codebook usage / dead-code restarts logged to <out>/train_log.jsonl.
"""

from __future__ import annotations

import argparse

from gft_tokens.config import add_arguments, load_yaml, resolve
from gft_tokens.validate import ArgumentParser
from gft_tokens.errors import cli_main
from gft_tokens.paths import shipped
from gft_tokens.tokenizers.trainer import TokenizerTrainOptions, split_recipe, train_tokenizer


@cli_main
def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None,
                        help="YAML recipe: `type`, `model` options, and any training option below (default: "
                             "configs/tokenizer/shapes-vq.yaml of this repository)")
    add_arguments(parser, TokenizerTrainOptions, "training options (override the YAML)")
    args = parser.parse_args(argv)
    if args.config is None:
        args.config = shipped("configs/tokenizer/shapes-vq.yaml")
    kind, model_options, train_values = split_recipe(load_yaml(args.config), args.config)
    options = resolve(TokenizerTrainOptions, train_values, args, where=args.config)
    train_tokenizer(kind, model_options, options, where=args.config)


if __name__ == "__main__":
    main()
