#!/usr/bin/env python
"""Train an image tokenizer on the embedded shapes data.

    python scripts/train_tokenizer.py                                          # the shipped tokenizers/shapes-vq
    python scripts/train_tokenizer.py --config configs/tokenizer/shapes-vq.yaml --steps 500 --out /tmp/vq
"""

from __future__ import annotations

import argparse

from gft_tokens.config import add_arguments, load_yaml, resolve
from gft_tokens.validate import ArgumentParser
from gft_tokens.errors import cli_main
from gft_tokens.tokenizers.trainer import TokenizerTrainOptions, split_recipe, train_tokenizer


@cli_main
def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tokenizer/shapes-vq.yaml",
                        help="YAML recipe: `type`, `model` options, and any training option below")
    add_arguments(parser, TokenizerTrainOptions, "training options (override the YAML)")
    args = parser.parse_args(argv)
    kind, model_options, train_values = split_recipe(load_yaml(args.config), args.config)
    options = resolve(TokenizerTrainOptions, train_values, args, where=args.config)
    train_tokenizer(kind, model_options, options, where=args.config)


if __name__ == "__main__":
    main()
