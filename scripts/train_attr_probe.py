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

import argparse

from gft_tokens.config import add_arguments, load_yaml, resolve
from gft_tokens.errors import cli_main
from gft_tokens.eval.attr_probe import AttrProbeTrainOptions, train_attribute_probe
from gft_tokens.validate import ArgumentParser


@cli_main
def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of the options below (e.g. the shipped recipe.yaml)")
    add_arguments(parser, AttrProbeTrainOptions, "training options")
    args = parser.parse_args(argv)
    options = resolve(AttrProbeTrainOptions, load_yaml(args.config) if args.config else None, args,
                      where=args.config or "command line")
    train_attribute_probe(options)


if __name__ == "__main__":
    main()
