#!/usr/bin/env python
"""Train a text-to-image LlamaGen with Guidance-Free Training (or the CFG baseline) on captioned images.

    deepspeed scripts/train_t2i.py                            # tiny GFT model, embedded captions, shapes-t5-tiny
    python scripts/train_t2i.py --objective cfg --out runs/t2i-cfg
    python scripts/train_t2i.py --init-from runs/t2i-cfg/model --steps 40 --out runs/t2i-ft
    python scripts/train_t2i.py --text-encoder path/to/flan-t5-base      # any local T5 or CLIP text model

From shards (--data), captioned by make_shards.py and with their features stored by extract_codes.py:

    python scripts/make_shards.py --source shapes --count 10000 --out shards/shapes
    python scripts/extract_codes.py --data 'shards/shapes/*.tar' --tokenizer tokenizers/shapes-vq \\
        --text-encoder tokenizers/shapes-t5-tiny --out shards/shapes-t2i
    python scripts/train_t2i.py --data 'shards/shapes-t2i/{000000..000009}.tar' --val-fraction 0.05

Code shards give the stored caption features (refused unless --text-encoder is the text encoder that made them);
image shards carrying captions (<key>.txt) have them encoded by --text-encoder on the fly, and are not flipped.
Shards without captions are refused. Same options and loop as scripts/train_llamagen.py, plus --text-encoder;
--drop-prob is the null-caption rate. --resume refuses a --text-encoder other than the run's.
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
