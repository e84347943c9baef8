#!/usr/bin/env python
"""Score generated images: FID, Inception Score, precision/recall (k-NN, k=3) and class accuracy.

    python scripts/generate.py --beta 0.5 --n-per-class 100          # writes samples/llamagen/samples.npz
    python scripts/evaluate.py --samples samples/llamagen/samples.npz --json

The samples file is what scripts/generate.py writes: ``images`` uint8 (N, H, W, 3) and ``labels`` (N,) (the
requested classes). Features come from the shipped shapes probe (tokenizers/shapes-probe) unless --extractor names
another saved extractor or a ``module:factory`` of your own (e.g. an Inception network reading a local weights
file; see gft_tokens.eval). The reference is the held-out split of the embedded data (--ref-size images), or the
real images in --reference FILE.npz; its features are computed once and cached in $GFT_TOKENS_CACHE/eval.

With --json the last line of the output is one JSON object of all metrics. Warnings (e.g. too few samples for a
stable FID) go to stderr and into the JSON's "warnings".
"""

from __future__ import annotations

import argparse
import json
import sys

from gft_tokens.validate import ArgumentParser, nonnegative, positive
from gft_tokens.errors import GFTError, cli_main
from gft_tokens.eval import DEFAULT_EXTRACTOR, evaluate_images, images_reference, load_extractor, load_samples
from gft_tokens.eval import shapes_reference
from gft_tokens.eval.evaluate import DEFAULT_REF_SIZE


@cli_main
def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", required=True, help="samples .npz (images uint8 (N,H,W,3), labels (N,))")
    p.add_argument("--extractor", default=DEFAULT_EXTRACTOR,
                   help=f"feature extractor: a saved directory or 'module:factory' (default: {DEFAULT_EXTRACTOR})")
    p.add_argument("--reference", help="real images .npz to compare against (default: the embedded held-out split)")
    p.add_argument("--ref-size", type=positive(int), default=DEFAULT_REF_SIZE,
                   help=f"held-out images in the embedded reference (default: {DEFAULT_REF_SIZE})")
    p.add_argument("--k", type=positive(int), default=3, help="k of the k-NN manifolds for precision/recall (default: 3)")
    p.add_argument("--is-splits", type=positive(int), default=10, help="random parts of the Inception Score, at most one per 100 samples (default: 10)")
    p.add_argument("--seed", type=nonnegative(int), default=0, help="seed of the precision/recall subsets (default: 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object (last line) instead of a summary")
    args = p.parse_args(argv)
    if args.k < 1:
        raise GFTError(f"--k must be at least 1, got {args.k}")
    if args.is_splits < 1:
        raise GFTError(f"--is-splits must be at least 1, got {args.is_splits}")

    extractor = load_extractor(args.extractor)
    images, labels = load_samples(args.samples, num_classes=extractor.num_classes)
    if args.reference:
        reference = images_reference(extractor, args.reference)
    else:
        reference = shapes_reference(extractor, n=args.ref_size, size=images.shape[1])
    result = evaluate_images(images, labels, extractor, reference, k=args.k, is_splits=args.is_splits, seed=args.seed)
    for w in result["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    result = {"samples": str(args.samples), **result, "extractor": extractor.fingerprint,
              "reference": reference.description}
    if args.json:
        print(json.dumps(result))
    else:
        fmt = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731
        print(f"{args.samples}: {result['n']} images vs {reference.description.get('n')} reference "
              f"({reference.description.get('source')})")
        for key in ("fid", "is", "precision", "recall", "class_accuracy"):
            print(f"  {key:15s} {fmt(result[key])}")
    return result


if __name__ == "__main__":
    main()
