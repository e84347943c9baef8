#!/usr/bin/env python
"""Train a VAR-style next-scale model with Guidance-Free Training (or the CFG baseline).

    deepspeed scripts/train_var.py                            # tiny GFT VAR (d2) on the embedded shapes data
    python scripts/train_var.py --objective cfg --out runs/var-cfg
    python scripts/train_var.py --init-from runs/var-cfg/model --steps 40 --out runs/var-ft
    deepspeed --num_gpus 8 scripts/train_var.py --preset d16 --tokenizer my-msvq-tokenizer --zero-stage 2

It needs a multi-scale tokenizer (default tokenizers/shapes-msvq, scales 1,2,3,4,6,8): the model's scale schedule,
vocabulary and input path (the tokenizer's codebook and φ convs) come from it. Options come from the dataclass
defaults, then --config YAML, then the flags below; they are the LlamaGen script's, with VAR defaults.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from gft_tokens.config import add_arguments, load_yaml, opt, resolve
from gft_tokens.errors import cli_main
from gft_tokens.models.var import PRESETS
from gft_tokens.train.loop import TrainOptions, train


@dataclass
class VARTrainOptions(TrainOptions):
    """:class:`TrainOptions` with the defaults of the tiny VAR run."""

    preset: str = opt("d2", "model size preset (see --list-presets): d16/d20/d24/d30 (VAR's), d1-d6 (CPU)")
    tokenizer: str = opt("tokenizers/shapes-msvq", "multi-scale tokenizer directory (config.json + model.safetensors)")
    out: str = opt("runs/var", "run directory: checkpoints/, model/, train_log.jsonl")


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of training options (keys as the flags, with _), "
                                         "plus `model:` config overrides")
    parser.add_argument("--list-presets", action="store_true", help="print the model presets and exit")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher
    add_arguments(parser, VARTrainOptions, "training options")
    args = parser.parse_args(argv)
    if args.list_presets:
        for name, dims in PRESETS.items():
            depth = dims["depth"]
            print(f"{name:6s} depth {depth:2d}, width {64 * depth:4d}, {depth:2d} heads"
                  + (", shared AdaLN" if dims.get("shared_aln") else ""))
        return
    options = resolve(VARTrainOptions, load_yaml(args.config) if args.config else None, args,
                      where=args.config or "command line")
    train("var", options)


if __name__ == "__main__":
    main()
