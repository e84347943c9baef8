#!/usr/bin/env python
"""Train a MAR/MaskGIT-style masked token model with Guidance-Free Training (or the CFG baseline).

    deepspeed scripts/train_masked.py                         # tiny GFT model on the embedded shapes data
    python scripts/train_masked.py --objective cfg --out runs/masked-cfg
    python scripts/train_masked.py --init-from runs/masked-cfg/model --steps 40 --out runs/masked-ft
    deepspeed --num_gpus 8 scripts/train_masked.py --preset MAR-B --zero-stage 2 --out runs/mar-b

Same options and loop as scripts/train_llamagen.py (only the defaults of --preset, --steps and --out differ). Options come
from the dataclass defaults, then --config YAML, then the flags below.
"""

from __future__ import annotations

from dataclasses import dataclass

from gft_tokens.config import opt
from gft_tokens.errors import cli_main
from gft_tokens.train.loop import TrainOptions, train_cli


@dataclass
class MaskedTrainOptions(TrainOptions):
    preset: str = opt("MAR-tiny", "model size preset (see --list-presets)")
    steps: int = opt(1500, "optimizer steps", min=1)
    out: str = opt("runs/masked", "run directory: checkpoints/, model/, train_log.jsonl")


@cli_main
def main(argv=None):
    train_cli("masked", MaskedTrainOptions, argv, description=__doc__)


if __name__ == "__main__":
    main()
