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

from gft_tokens.errors import cli_main
from gft_tokens.train.loop import TrainOptions, train_cli


@cli_main
def main(argv=None):
    train_cli("llamagen", TrainOptions, argv, description=__doc__)


if __name__ == "__main__":
    main()
