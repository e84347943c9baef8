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

from dataclasses import dataclass

from gft_tokens.config import opt
from gft_tokens.errors import cli_main
from gft_tokens.train.loop import TrainOptions, train_cli


@dataclass
class VARTrainOptions(TrainOptions):
    """:class:`TrainOptions` with the defaults of the tiny VAR run."""

    preset: str = opt("d2", "model size preset (see --list-presets): d16/d20/d24/d30 (VAR's), d1-d6 (CPU)")
    tokenizer: str = opt("tokenizers/shapes-msvq", "multi-scale tokenizer directory (config.json + model.safetensors)")
    out: str = opt("runs/var", "run directory: checkpoints/, model/, train_log.jsonl")


def describe_var_preset(name: str, dims: dict) -> str:
    depth = dims["depth"]
    return (f"{name:6s} depth {depth:2d}, width {64 * depth:4d}, {depth:2d} heads"
            + (", shared AdaLN" if dims.get("shared_aln") else ""))


@cli_main
def main(argv=None):
    train_cli("var", VARTrainOptions, argv, description=__doc__, describe_preset=describe_var_preset)


if __name__ == "__main__":
    main()
