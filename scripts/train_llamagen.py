#!/usr/bin/env python
"""Train a LlamaGen-style class-conditional model with Guidance-Free Training (or the CFG baseline).

    deepspeed scripts/train_llamagen.py                       # tiny GFT model on the embedded shapes data
    python scripts/train_llamagen.py --objective cfg --out runs/llamagen-cfg
    python scripts/train_llamagen.py --init-from runs/llamagen-cfg/model --steps 40 --out runs/llamagen-ft
    deepspeed --num_gpus 8 scripts/train_llamagen.py --config configs/llamagen/gpt-b.yaml --zero-stage 2
    deepspeed --num_gpus 8 scripts/train_llamagen.py --data 'shards/{000000..000031}.tar' --zero-stage 3 --bf16

Options come from the dataclass defaults, then --config YAML, then the flags below.
"""

from __future__ import annotations

import argparse

from gft_tokens.config import add_arguments, load_yaml, resolve
from gft_tokens.errors import cli_main
from gft_tokens.models.llamagen import PRESETS
from gft_tokens.train.loop import TrainOptions, train


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of training options (keys as the flags, with _), "
                                         "plus `model:` config overrides")
    parser.add_argument("--list-presets", action="store_true", help="print the model presets and exit")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher
    add_arguments(parser, TrainOptions, "training options")
    args = parser.parse_args(argv)
    if args.list_presets:
        for name, dims in PRESETS.items():
            print(f"{name:10s} {dims}")
        return
    options = resolve(TrainOptions, load_yaml(args.config) if args.config else None, args,
                      where=args.config or "command line")
    train("llamagen", options)


if __name__ == "__main__":
    main()
