#!/usr/bin/env python
"""Sweep guidance: sample GFT checkpoints over β and CFG checkpoints over w, score each setting, table + plots.

    python scripts/sweep.py --gft runs/llamagen/model --cfg runs/llamagen-cfg/model --out docs/sweep
    python scripts/sweep.py --model llamagen --gft gft-scratch=runs/x/gft/model --gft gft-ft=runs/x/ft/model \\
        --cfg cfg=runs/x/cfg/model --n-per-class 100 --out docs/gft_vs_cfg --samples-dir runs/x/samples

Every setting draws --n-per-class samples of every class (same seed for every setting), counts the network
evaluations per image while sampling, and is scored by the probe (FID, IS, precision/recall, class accuracy)
against the held-out reference. Writes to --out: results.json (rewritten after every setting; --resume continues
an interrupted sweep), results.md (best rows, GFT-vs-CFG checks, matched settings, all settings),
fid_vs_accuracy.png, fid_vs_is.png, fid_vs_guidance.png and best_<run>.png (samples at each run's best FID).

Text-to-image checkpoints (--model t2i) are sampled --n-per-class times for each of a fixed prompt set, the
captions of the first --n-prompts held-out items (200), and also scored for attribute accuracy (GenEval-style:
shape, colour, size and position where the prompt names them, and all at once) by the attribute probe
(--attr-probe, default tokenizers/shapes-attr-probe):

    python scripts/sweep.py --model t2i --gft runs/t2i/model --cfg runs/t2i-cfg/model --n-per-class 5 --out docs/t2i
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gft_tokens.errors import GFTError, cli_main
from gft_tokens.paths import shipped
from gft_tokens.validate import ArgumentParser, bounded, nonnegative, positive
from gft_tokens.eval import DEFAULT_EXTRACTOR, load_extractor
from gft_tokens.eval.attributes import DEFAULT_ATTR_PROBE, DEFAULT_PROMPTS
from gft_tokens.eval.evaluate import DEFAULT_REF_SIZE
from gft_tokens.eval.sweep import DEFAULT_BETAS, DEFAULT_CFG_SCALES, parse_run, run_sweep
from gft_tokens.families import FAMILIES
from gft_tokens.families.options import add_sampling_arguments, common_sampling, sampling_options


@cli_main
def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llamagen", choices=sorted(FAMILIES), help="model family (default: llamagen)")
    p.add_argument("--gft", action="append", default=[], metavar="[NAME=]DIR",
                   help="a GFT checkpoint to sweep over --betas (repeatable)")
    p.add_argument("--cfg", action="append", default=[], metavar="[NAME=]DIR",
                   help="a checkpoint to sweep with classifier-free guidance over --cfg-scales (repeatable)")
    p.add_argument("--betas", type=bounded(float, min=0, max=1), nargs="+", default=list(DEFAULT_BETAS),
                   help=f"GFT β values (default: {' '.join(map(str, DEFAULT_BETAS))})")
    p.add_argument("--cfg-scales", type=bounded(float, min=0), nargs="+", default=list(DEFAULT_CFG_SCALES),
                   help=f"CFG scales w (default: {' '.join(map(str, DEFAULT_CFG_SCALES))})")
    p.add_argument("--n-per-class", type=positive(int), default=100, help="samples per class per setting (default: 100)")
    p.add_argument("--batch-size", type=positive(int), default=250, help="images per sampling batch (default: 250)")
    p.add_argument("--seed", type=nonnegative(int), default=0, help="sampling seed, the same for every setting (default: 0)")
    p.add_argument("--extractor", default=DEFAULT_EXTRACTOR, help=f"feature extractor (default: {DEFAULT_EXTRACTOR})")
    p.add_argument("--ref-size", type=positive(int), default=DEFAULT_REF_SIZE,
                   help=f"held-out reference images (default: {DEFAULT_REF_SIZE})")
    p.add_argument("--floors", action=argparse.BooleanOptionalAction, default=True,
                   help="also score real training images and their tokenizer reconstructions (default: on)")
    p.add_argument("--samples-dir", help="keep every setting's samples here as .npz (default: not kept)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False,
                   help="reuse settings already in <out>/results.json with the same options (default: off)")
    p.add_argument("--bootstrap", type=bounded(int, min=0, max=10000), default=20,
                   help="bootstrap resamples per setting for the FID / accuracy spreads, 0 = none (default: 20)")
    p.add_argument("--out", default="docs/sweep", help="output directory (default: docs/sweep)")
    p.add_argument("--reference", help="real images of the models' dataset: a folder, shards or an .npz (default: "
                                       "the embedded held-out split)")
    p.add_argument("--allow-foreign-extractor", action=argparse.BooleanOptionalAction, default=False,
                   help="score models of one dataset with an extractor trained on another (default: refused)")
    p.add_argument("--threads", type=bounded(int, min=0, max=4096), default=0, help="torch CPU threads (default: 0, torch's default)")
    p.add_argument("--n-prompts", type=bounded(int, min=1, max=100_000), default=None,
                   help=f"text-to-image models: held-out captions in the prompt set (default: {DEFAULT_PROMPTS})")
    p.add_argument("--attr-probe", default=None,
                   help=f"text-to-image models: the attribute probe (default: {DEFAULT_ATTR_PROBE})")
    add_sampling_arguments(p)
    args = p.parse_args(argv)
    if args.bootstrap == 1:
        raise GFTError("--bootstrap must be 0 (no spreads) or at least 2 resamples, got 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    runs = [parse_run(t, "gft") for t in args.gft] + [parse_run(t, "cfg") for t in args.cfg]
    extractor = load_extractor(shipped(args.extractor) if args.extractor == DEFAULT_EXTRACTOR else args.extractor)
    run_sweep(runs, extractor, Path(args.out), ref_size=args.ref_size, family=args.model, betas=args.betas,
              cfg_scales=args.cfg_scales, n_per_class=args.n_per_class, batch_size=args.batch_size, seed=args.seed,
              samples_dir=Path(args.samples_dir) if args.samples_dir else None, floors=args.floors,
              resume=args.resume, family_options=sampling_options(args), bootstrap=args.bootstrap,
              reference_data=args.reference, allow_foreign_extractor=args.allow_foreign_extractor,
              n_prompts=args.n_prompts, attr_probe=args.attr_probe, **common_sampling(args))
    print(f"wrote {Path(args.out) / 'results.md'}")


if __name__ == "__main__":
    main()
