#!/usr/bin/env python
"""Score generated images: FID, Inception Score, precision/recall (k-NN, k=3) and class accuracy.

    python scripts/generate.py --beta 0.5 --n-per-class 100          # writes samples/llamagen/samples.npz
    python scripts/evaluate.py --samples samples/llamagen/samples.npz --json

The samples file is ADM's layout (``arr_0`` uint8 (N, H, W, 3), labels in ``arr_1``, as LlamaGen/VAR/ADM and
scripts/samples_to_npz.py write) or this project's earlier ``images`` + ``labels``.

Field-standard FID / IS / precision-recall (Inception-v3, comparable to papers):

    python scripts/evaluate.py --samples samples.npz --reference VIRTUAL_imagenet256_labeled.npz \
        --features inception --inception-weights pt_inception-2015-12-05-6726825d.pth --json

(or set $GFT_TOKENS_INCEPTION). --reference takes ADM reference batches (``arr_0`` images and/or ``mu``,
``sigma``) and MAR-style statistics files (``mu``, ``sigma``: FID only). Features come from the shipped shapes probe (tokenizers/shapes-probe) unless --extractor names
another saved extractor or a ``module:factory`` of your own (e.g. an Inception network reading a local weights
file; see gft_tokens.eval). The reference is the held-out split of the embedded data (--ref-size images), or the
real images in --reference FILE.npz; its features are computed once and cached in $GFT_TOKENS_CACHE/eval.

Text-to-image samples (scripts/generate.py --model t2i writes their prompts into the npz: ``prompts`` and ``rows``,
the prompt of each image) are also scored for attribute accuracy, GenEval-style, with --attributes: the attribute
probe (--attr-probe, default tokenizers/shapes-attr-probe) reads shape, colour, size and position bucket off each
image, scored where the image's prompt names them, plus the rate of images showing every attribute they asked for
(± bootstrap spreads, --bootstrap); class accuracy is then the probe's class against the shape the prompt names:

    python scripts/generate.py --model t2i --ckpt runs/t2i/model --prompts prompts.txt --beta 0.5 --out samples/t2i
    python scripts/evaluate.py --samples samples/t2i/samples.npz --attributes --json

With --json the last line of the output is one JSON object of all metrics. Warnings (e.g. too few samples for a
stable FID) go to stderr and into the JSON's "warnings".
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from gft_tokens.validate import ArgumentParser, bounded, nonnegative, positive
from gft_tokens.errors import GFTError, cli_main
from gft_tokens.eval import DEFAULT_EXTRACTOR, evaluate_images, file_reference, load_extractor, load_samples
from gft_tokens.eval import shapes_reference
from gft_tokens.eval.datasets import (check_extractor_dataset, data_reference, extractor_dataset, samples_class_names,
                                      samples_dataset)
from gft_tokens.data.shapes import NUM_CLASSES
from gft_tokens.eval.attr_probe import load_attribute_probe
from gft_tokens.eval.attributes import DEFAULT_ATTR_PROBE, prompts_of_samples, requested_ids, score_attributes
from gft_tokens.eval.evaluate import DEFAULT_REF_SIZE
from gft_tokens.eval.npz import read_npz
from gft_tokens.eval.inception import load_inception
from gft_tokens.paths import shipped


@cli_main
def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", required=True, help="samples .npz (arr_0 or images uint8 (N,H,W,3); labels)")
    p.add_argument("--features", choices=("probe", "inception"), default="probe",
                   help="probe: --extractor (default); inception: the FID Inception-v3 from --inception-weights")
    p.add_argument("--inception-weights", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                   "(default: $GFT_TOKENS_INCEPTION)")
    p.add_argument("--inception-resize", choices=("tf1", "pytorch-fid"), default="tf1",
                   help="299x299 resize: tf1 as the TF graph / torch-fidelity (default), or pytorch-fid's")
    p.add_argument("--device", default="cpu", help="device of the Inception network (default: cpu)")
    p.add_argument("--extractor", default=DEFAULT_EXTRACTOR,
                   help=f"feature extractor: a saved directory or 'module:factory' (default: {DEFAULT_EXTRACTOR})")
    p.add_argument("--reference", help="real images to compare against: an .npz (images uint8 (N,H,W,3)), an image "
                                       "folder or a shard pattern of images (default: the embedded held-out split)")
    p.add_argument("--allow-foreign-extractor", action=argparse.BooleanOptionalAction, default=False,
                   help="score samples of one dataset with an extractor trained on another (default: refused)")
    p.add_argument("--threads", type=bounded(int, min=0, max=4096), default=0, help="torch CPU threads (default: 0, torch's default)")
    p.add_argument("--ref-size", type=positive(int), default=DEFAULT_REF_SIZE,
                   help=f"held-out images in the embedded reference (default: {DEFAULT_REF_SIZE})")
    p.add_argument("--k", type=positive(int), default=3, help="k of the k-NN manifolds for precision/recall (default: 3)")
    p.add_argument("--is-splits", type=positive(int), default=10, help="random parts of the Inception Score, at most one per 100 samples (default: 10)")
    p.add_argument("--seed", type=nonnegative(int), default=0, help="seed of the precision/recall subsets (default: 0)")
    p.add_argument("--attributes", action=argparse.BooleanOptionalAction, default=False,
                   help="text-to-image samples: also score attribute accuracy against the prompts in the file "
                        "(default: off)")
    p.add_argument("--attr-probe", default=DEFAULT_ATTR_PROBE,
                   help=f"with --attributes: the attribute probe (default: {DEFAULT_ATTR_PROBE})")
    p.add_argument("--bootstrap", type=bounded(int, min=0, max=10000), default=20,
                   help="with --attributes: bootstrap resamples for the accuracies' spreads, 0 = none (default: 20)")
    p.add_argument("--json", action="store_true", help="print one JSON object (last line) instead of a summary")
    args = p.parse_args(argv)
    if args.bootstrap == 1:
        raise GFTError("--bootstrap must be 0 (no spreads) or at least 2 resamples, got 1")
    if args.k < 1:
        raise GFTError(f"--k must be at least 1, got {args.k}")
    if args.is_splits < 1:
        raise GFTError(f"--is-splits must be at least 1, got {args.is_splits}")

    if args.threads < 0:
        raise GFTError(f"--threads must be at least 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.features == "inception":
        extractor = load_inception(args.inception_weights, resize=args.inception_resize, device=args.device)
    else:
        extractor = load_extractor(shipped(args.extractor) if args.extractor == DEFAULT_EXTRACTOR else args.extractor)
    dataset = samples_dataset(args.samples)
    check_extractor_dataset(extractor, dataset, args.allow_foreign_extractor)
    prompts = attr_probe = None
    if args.attributes:  # refused before any feature is computed: a file without prompts, a prompt we cannot read
        prompts = prompts_of_samples(read_npz(args.samples), args.samples)
        shapes = requested_ids(prompts)["shape"]
        attr_probe = load_attribute_probe(args.attr_probe)
    images, labels = load_samples(args.samples, num_classes=extractor.num_classes,
                                  require_labels=getattr(extractor, "label_classes", True) and not args.attributes)
    if args.attributes and labels is None and (shapes >= 0).all() and extractor.num_classes == NUM_CLASSES:
        labels = shapes  # the class a prompt asks for is the shape it names
    if args.reference and not str(args.reference).endswith(".npz"):
        reference = data_reference(extractor, args.reference, size=images.shape[1], n=args.ref_size)
    elif args.reference:
        reference = file_reference(extractor, args.reference)
    elif dataset not in (None, "shapes"):
        raise GFTError(f"the samples are of {dataset!r}: give --reference (its real images: a folder, shards or an "
                       ".npz); the default reference is the embedded shapes data")
    else:
        reference = shapes_reference(extractor, n=args.ref_size, size=images.shape[1])
    result = evaluate_images(images, labels, extractor, reference, k=args.k, is_splits=args.is_splits, seed=args.seed)
    if args.attributes:
        result["attributes"] = score_attributes(images, prompts, attr_probe, n_boot=args.bootstrap, seed=args.seed)
    for w in result["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    names = samples_class_names(args.samples)
    if names is not None and result.get("per_class_accuracy") is not None:
        result["per_class_accuracy_by_name"] = dict(zip(names, result["per_class_accuracy"]))
    result = {"samples": str(args.samples), "dataset": dataset, **result, "extractor": extractor.fingerprint,
              "extractor_dataset": extractor_dataset(extractor),
              "reference": reference.description}
    if args.json:
        print(json.dumps(result))
    else:
        fmt = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731
        print(f"{args.samples}: {result['n']} images vs {reference.description.get('n')} reference "
              f"({reference.description.get('source')})")
        for key in ("fid", "is", "precision", "recall", "class_accuracy"):
            print(f"  {key:15s} {fmt(result[key])}")
        if args.attributes:
            scores = result["attributes"]
            pm = lambda v, s: fmt(v) if s is None else f"{fmt(v)} ± {fmt(s)}"  # noqa: E731
            for name, a in scores["attributes"].items():
                print(f"  {name + '_accuracy':17s} {pm(a['accuracy'], a['accuracy_std'])} ({a['requested']} "
                      f"images asked for it; chance {a['chance']:.3g})")
            print(f"  {'all_requested':17s} {pm(scores['all_correct'], scores['all_correct_std'])}")
    return result


if __name__ == "__main__":
    main()
