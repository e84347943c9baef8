#!/usr/bin/env python
"""Print how a model's condition vector is made up: class-embedding rows vs the β embedding (GFT).

    python scripts/inspect_condition.py --ckpt runs/llamagen/model
    python scripts/inspect_condition.py --ckpt runs/gft_vs_cfg/llamagen/gft/model --json

A β embedding many times the spread between class rows drowns the class: see docs/gft_vs_cfg/learning_curve.md.
"""

from __future__ import annotations

import argparse
import json

from gft_tokens.errors import cli_main
from gft_tokens.eval.condition import condition_report
from gft_tokens.families import load_model
from gft_tokens.validate import ArgumentParser


@cli_main
def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="exported model directory (config.json + model.safetensors)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    report = condition_report(load_model(args.ckpt))
    if args.json:
        print(json.dumps(report))
        return
    print(f"class rows: mean norm {report['class_row_norm']:.3f}, spread (mean distance from the class mean) "
          f"{report['class_spread']:.3f}; null row norm {report['null_row_norm']:.3f}")
    if not report["beta"]:
        print("no β embedder (a CFG model)")
    for b, r in report["beta"].items():
        print(f"β = {b}: β-embedding norm {r['norm']:.3f} = {r['ratio_to_class_spread']:.1f} × the class spread")


if __name__ == "__main__":
    main()
