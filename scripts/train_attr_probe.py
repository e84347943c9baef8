#!/usr/bin/env python
"""Train the attribute probe: shape, colour name, size bucket and position bucket of a 32x32 shapes image, the judge
behind GenEval-style attribute accuracy (scripts/evaluate.py --attributes, scripts/sweep.py --model t2i).

    python scripts/train_attr_probe.py --threads 1       # reproduces the shipped tokenizers/shapes-attr-probe
    python scripts/train_attr_probe.py --out /tmp/attr-probe --steps 300

Deterministic for a seed (and a thread count). Reports, per attribute, the accuracy on two fresh splits (the
held-out seed and another one nothing trains on), on the held-out images' tokenizer reconstructions, and for size
and position also without the images within --boundary-margin bucket widths of a bucket boundary.
"""

from __future__ import annotations

from gft_tokens.config import options_from_cli
from gft_tokens.errors import cli_main
from gft_tokens.eval.attr_probe import AttrProbeTrainOptions, train_attribute_probe


@cli_main
def main(argv=None):
    train_attribute_probe(options_from_cli(AttrProbeTrainOptions, argv, description=__doc__,
                                           config_help="YAML file of the options below (e.g. the shipped "
                                                       "recipe.yaml)"))


if __name__ == "__main__":
    main()
