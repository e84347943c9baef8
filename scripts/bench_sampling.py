#!/usr/bin/env python
"""Sampling throughput of any family: GFT (one pass per step) vs CFG (two), and KV cache vs full recompute.

Same random weights, same batch of labels; each family's defaults (preset, batch, vocabularies) come from its
registry record (``Family.bench``); options left at their defaults take those. GFT's advantage is in compute:
when a decode step is bound by reading the weights (a large model at a small batch) the CFG pass's second half of
the batch comes almost free, so the default batch is large enough for the step to be compute-bound. GFT and CFG
runs are interleaved so that both see the same machine load; each figure is the median of ``--repeats`` runs.
Prints a table and, with --json, one JSON object as the last line: ``gft_vs_cfg_speedup`` and
``kv_vs_recompute_speedup`` hold the figures at the family's main vocabulary (16384 for LlamaGen), ``..._v<V>``
the others; the sampler's own count of network evaluations per image is reported for both modes.

    python scripts/bench_sampling.py --json                  # LlamaGen GPT-small
    python scripts/bench_sampling.py --quick --json          # < 60 s on a 2-core CPU
    python scripts/bench_sampling.py --model masked --json   # per decoding step (no cache), random + confidence order
    python scripts/bench_sampling.py --model var --json      # scale-wise sampling on VAR's 1..16 scales
    python scripts/bench_sampling.py --model mar --json      # continuous tokens, diffusion head
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from gft_tokens.validate import ArgumentParser, bounded, device, positive
from gft_tokens.errors import GFTError, cli_main
from gft_tokens.families import FAMILIES, get_family
from gft_tokens.families.options import family_options
from gft_tokens.sampling import SamplingStats


def interleaved(runs: dict, repeats: int, warmup: bool = True) -> dict[str, float]:
    """Median wall time of each ``runs[name]()``, the runs interleaved ``repeats`` times (after one warm-up each)."""
    if warmup:
        for fn in runs.values():
            fn()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def bench_vocab(family, model, batch: int, recompute_batch: int, repeats: int, device: str, warmup: bool,
                cfg_scale: float) -> dict:
    spec = family.bench
    labels = torch.arange(batch, device=device) % 1000
    out = {}
    for suffix, variant in spec.variants.items():
        stats = {"gft": SamplingStats(), "cfg": SamplingStats()}
        opts = {**spec.options, **variant}
        runs = {"gft": lambda: family.sample(model, labels, beta=0.5, stats=stats["gft"], **opts),
                "cfg": lambda: family.sample(model, labels, cfg_scale=cfg_scale, stats=stats["cfg"], **opts)}
        if not warmup:  # one small run still pays the one-time costs (allocator, kernels) before anything is timed
            family.sample(model, labels[:2], beta=0.5, **opts)
            family.sample(model, labels[:2], cfg_scale=cfg_scale, **opts)
        t = interleaved(runs, repeats, warmup)
        out[suffix] = {"gft_images_per_s": batch / t["gft"], "cfg_images_per_s": batch / t["cfg"],
                       "gft_vs_cfg_speedup": t["cfg"] / t["gft"], "gft_nfe_per_image": stats["gft"].nfe_per_image,
                       "cfg_nfe_per_image": stats["cfg"].nfe_per_image}
    if spec.cache:
        small = labels[:recompute_batch]
        t = interleaved({"kv": lambda: family.sample(model, small, beta=0.5, **spec.options),
                         "recompute": lambda: family.sample(model, small, beta=0.5, use_cache=False, **spec.options)},
                        1 if not warmup else max(1, repeats), warmup=warmup)
        out[""].update({"kv_images_per_s": recompute_batch / t["kv"],
                        "recompute_images_per_s": recompute_batch / t["recompute"],
                        "kv_vs_recompute_speedup": t["recompute"] / t["kv"]})
    return out


@cli_main
def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llamagen", choices=sorted(FAMILIES), help="model family (default: llamagen)")
    p.add_argument("--preset", help="model preset (default: the family's: GPT-small, d4, MAR-tiny)")
    p.add_argument("--grid", type=positive(int), default=16, help="token grid side (default: 16 → 256 tokens; VAR: scales 1..16)")
    p.add_argument("--batch", type=positive(int),
                   help="images per GFT batch; CFG runs 2x rows. Large enough that a step is compute-bound rather "
                        "than bound by per-step overheads or weight reads (default: the family's: 256 llamagen, "
                        "32 masked, 16 var and mar)")
    p.add_argument("--recompute-batch", type=positive(int), default=16, help="batch for the cache-vs-recompute pair (default: 16)")
    p.add_argument("--repeats", type=positive(int), help="timed runs per measurement, median (default: the family's: 1; 3 masked)")
    p.add_argument("--vocabs", type=bounded(int, min=2), nargs="+",
                   help="vocabulary sizes (default: the family's: 1024 16384 llamagen/masked, 4096 var)")
    p.add_argument("--cfg-scale", type=bounded(float, min=1), default=2.0, help="CFG scale of the CFG runs (default: 2.0)")
    p.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=bounded(int, min=0, max=4096), default=0, help="torch CPU threads (0: default)")
    p.add_argument("--quick", action="store_true", help="smaller batch and one repeat: under a minute on a CPU")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    for option, families in family_options():
        kw = {"choices": list(option.choices)} if option.choices else {}
        p.add_argument(option.flag, type=option.arg_type(), help=f"{' and '.join(families)} only: {option.help}", **kw)
    args = p.parse_args(argv)
    family = get_family(args.model)
    spec = family.bench
    if spec is None:
        raise GFTError(f"the {family.name} family declares no sampling benchmark")
    given = family.sampling_kwargs(**{o.name: getattr(args, o.name) for o, _ in family_options()})
    if given:
        spec = dataclasses.replace(spec, options={**spec.options, **given})
    preset = args.preset or spec.preset
    batch = args.batch or spec.batch
    repeats = args.repeats or spec.repeats
    vocabs = list(args.vocabs) if args.vocabs else list(spec.vocabs)
    recompute_batch = args.recompute_batch
    if args.quick:  # a small warm-up instead of full ones, smaller batches
        batch, recompute_batch, repeats = min(batch, 32), min(recompute_batch, 4), 1
    if batch <= 0 or recompute_batch <= 0 or repeats <= 0:
        raise GFTError("--batch, --recompute-batch and --repeats must be positive")
    if spec.vocabs == (None,) and args.vocabs:
        raise GFTError(f"--vocabs does not apply to the {family.name} family (continuous tokens)")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    result = {"model": family.name, "preset": preset, "grid": args.grid, "batch": batch,
              "recompute_batch": recompute_batch if spec.cache else None, "repeats": repeats, "device": args.device,
              "dtype": args.dtype, "torch_threads": torch.get_num_threads(), "cfg_scale": args.cfg_scale,
              "sampler_options": spec.options,
              "kv_cache": "static" if spec.cache else "none: a bidirectional model recomputes all positions every step"}
    main_vocab = 16384 if 16384 in vocabs else max(vocabs, key=lambda v: v or 0)
    for vocab in vocabs:
        model = spec.build(preset, vocab, args.grid).to(args.device, dtype)
        rows = bench_vocab(family, model, batch, recompute_batch, repeats, args.device, not args.quick, args.cfg_scale)
        for suffix, r in rows.items():
            line = (f"{family.name} {preset} vocab {vocab}{suffix or ''}: GFT {r['gft_images_per_s']:8.2f} img/s "
                    f"({r['gft_nfe_per_image']:g} NFE) | CFG {r['cfg_images_per_s']:8.2f} img/s "
                    f"({r['cfg_nfe_per_image']:g} NFE) | speedup {r['gft_vs_cfg_speedup']:.2f}x")
            if "kv_images_per_s" in r:
                line += (f" || KV {r['kv_images_per_s']:8.2f} img/s | recompute {r['recompute_images_per_s']:8.3f} "
                         f"img/s | speedup {r['kv_vs_recompute_speedup']:.1f}x")
            print(line, flush=True)
            key = suffix + ("" if vocab == main_vocab else f"_v{vocab}")
            result.update({k + key: round(v, 4) for k, v in r.items()})
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
