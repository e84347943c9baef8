#!/usr/bin/env python
"""Train a MAR/MaskGIT-style masked token model with Guidance-Free Training (or the CFG baseline).

    deepspeed scripts/train_masked.py                         # tiny GFT model on the embedded shapes data
    python scripts/train_masked.py --objective cfg --out runs/masked-cfg
    python scripts/train_masked.py --init-from runs/masked-cfg/model --steps 40 --out runs/masked-ft
    deepspeed --num_gpus 8 scripts/train_masked.py --preset MAR-B --zero-stage 2 --out runs/mar-b

Same options and loop as scripts/train_llamagen.py (only the defaults of --preset and --out differ). Options come
from the dataclass defaults, then --config YAML, then the flags below.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from gft_tokens.config import add_arguments, load_yaml, opt, resolve
from gft_tokens.errors import cli_main
from gft_tokens.models.masked import PRESETS
from gft_tokens.train.loop import TrainOptions, train


@dataclass
class MaskedTrainOptions(TrainOptions):
    preset: str = opt("MAR-tiny", "model size preset (see --list-presets)")
    out: str = opt("runs/masked", "run directory: checkpoints/, model/, train_log.jsonl")


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of training options (keys as the flags, with _), "
                                         "plus `model:` config overrides")
    parser.add_argument("--list-presets", action="store_true", help="print the model presets and exit")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher
    add_arguments(parser, MaskedTrainOptions, "training options")
    args = parser.parse_args(argv)
    if args.list_presets:
        for name, dims in PRESETS.items():
            print(f"{name:10s} {dims}")
        return
    options = resolve(MaskedTrainOptions, load_yaml(args.config) if args.config else None, args,
                      where=args.config or "command line")
    train("masked", options)


if __name__ == "__main__":
    main()
