#!/usr/bin/env python
"""Train the shapes probe: the classifier and feature extractor behind FID / IS / precision / recall / accuracy.

    python scripts/train_probe.py                        # reproduces the shipped tokenizers/shapes-probe
    python scripts/train_probe.py --out /tmp/probe --steps 300

Deterministic for a seed (and a thread count); about 1.5 minutes on a 2-core CPU (90 s measured: 82 s training, 8 s rendering).
"""

from __future__ import annotations

from gft_tokens.config import options_from_cli
from gft_tokens.errors import cli_main
from gft_tokens.eval.probe import ProbeTrainOptions, train_probe


@cli_main
def main(argv=None):
    train_probe(options_from_cli(ProbeTrainOptions, argv, description=__doc__,
                                 config_help="YAML file of the options below (e.g. a shipped recipe.yaml)"))


if __name__ == "__main__":
    main()
