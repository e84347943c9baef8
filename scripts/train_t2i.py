#!/usr/bin/env python
"""Train a text-to-image LlamaGen with Guidance-Free Training (or the CFG baseline) on the captioned shapes data.

    deepspeed scripts/train_t2i.py                            # tiny GFT model, embedded captions, shapes-t5-tiny
    python scripts/train_t2i.py --objective cfg --out runs/t2i-cfg
    python scripts/train_t2i.py --init-from runs/t2i-cfg/model --steps 40 --out runs/t2i-ft
    python scripts/train_t2i.py --text-encoder path/to/flan-t5-base      # any local T5 or CLIP text model

Same options and loop as scripts/train_llamagen.py, plus --text-encoder; --drop-prob is the null-caption rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from gft_tokens.config import opt
from gft_tokens.errors import cli_main
from gft_tokens.train.loop import TrainOptions, train_cli


@dataclass
class T2ITrainOptions(TrainOptions):
    text_encoder: str = opt("tokenizers/shapes-t5-tiny", "frozen text encoder directory (a local T5 or CLIP text "
                                                         "model with its tokenizer; nothing is downloaded)")
    out: str = opt("runs/t2i", "run directory: checkpoints/, model/, train_log.jsonl")


@cli_main
def main(argv=None):
    train_cli("t2i", T2ITrainOptions, argv, description=__doc__)


if __name__ == "__main__":
    main()
