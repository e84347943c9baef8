#!/usr/bin/env python
"""Train MAR over continuous tokens (KL-autoencoder latents, diffusion head) with GFT on ε, or the CFG baseline.

    python scripts/train_mar.py                               # tiny GFT model on the embedded shapes data
    python scripts/train_mar.py --objective cfg --out runs/mar-cfg
    python scripts/train_mar.py --init-from runs/mar-cfg/model --steps 100 --out runs/mar-ft
    deepspeed --num_gpus 8 scripts/train_mar.py --preset MAR-B --zero-stage 2 --out runs/mar-b

Same options and loop as scripts/train_masked.py; the defaults of --preset, --tokenizer, --steps, --lr and --out
differ. Options come from the dataclass defaults, then --config YAML, then the flags below.
"""

from __future__ import annotations

from dataclasses import dataclass

from gft_tokens.config import opt
from gft_tokens.errors import cli_main
from gft_tokens.train.loop import TrainOptions, train_cli


@dataclass
class MARTrainOptions(TrainOptions):
    preset: str = opt("MAR-tiny", "model size preset (see --list-presets)")
    tokenizer: str = opt("tokenizers/shapes-kl", "continuous (KL) tokenizer directory (config.json + model.safetensors)")
    steps: int = opt(500, "optimizer steps", min=1)
    lr: float = opt(1e-3, "peak learning rate (AdamW; MAR: 1e-4 x batch/256 for its own sizes)", gt=0)
    out: str = opt("runs/mar", "run directory: checkpoints/, model/, train_log.jsonl")


@cli_main
def main(argv=None):
    train_cli("mar", MARTrainOptions, argv, description=__doc__)


if __name__ == "__main__":
    main()
