#!/usr/bin/env python
"""Sampling throughput: GFT (one pass per token) vs CFG (two passes), and KV cache vs full recompute.

Same random weights, same batch of labels, same static cache implementation; measured at a tiny vocabulary (1024)
and at LlamaGen's real one (16384) on a 16x16 token grid. GFT's advantage is in compute: when a decode step is
bound by reading the weights (a large model at a small batch) the CFG pass's second half of the batch comes almost
free, so the default batch is large enough for the step to be compute-bound. Prints a table and, with --json, one JSON object as the
last line: ``gft_vs_cfg_speedup`` and ``kv_vs_recompute_speedup`` hold the vocab-16384 figures, ``..._v1024`` the
small ones.

    python scripts/bench_sampling.py --json
    python scripts/bench_sampling.py --quick --json      # < 60 s on a 2-core CPU
    python scripts/bench_sampling.py --model masked --json   # masked model: GFT vs CFG per decoding step, no cache
    python scripts/bench_sampling.py --model var --json      # VAR: scale-wise sampling (see bench_var)
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gft_tokens.errors import GFTError, cli_main
from gft_tokens.models import FAMILIES, build_model
from gft_tokens.sampling import sample_codes


def timed(fn, repeats: int, warmup: bool = True) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up run unless ``warmup`` is False)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def bench_one(family: str, preset: str, vocab: int, grid: int, batch: int, recompute_batch: int, repeats: int,
              device: str, dtype: torch.dtype, warmup: bool = True) -> dict:
    torch.manual_seed(0)
    model = build_model(family, preset, vocab_size=vocab, grid_size=grid, num_classes=1000).to(device, dtype).eval()
    torch.nn.init.normal_(model.output.weight, std=0.02)  # a trained-looking head (the fresh one is all zeros)
    labels = torch.arange(batch, device=device) % 1000

    def run(n, **kw):
        return lambda: sample_codes(model, labels[:n], generator=None, **kw)

    if not warmup:  # one small run still pays the one-time costs (allocator, kernels) before anything is timed
        run(2, beta=0.5)()
        run(2, cfg_scale=2.0)()

    t_gft = timed(run(batch, beta=0.5), repeats, warmup)
    t_cfg = timed(run(batch, cfg_scale=2.0), repeats, warmup)
    t_kv = timed(run(recompute_batch, beta=0.5), repeats, warmup)
    t_re = timed(run(recompute_batch, beta=0.5, use_cache=False), 1, warmup=False)
    return {
        "vocab": vocab,
        "gft_images_per_s": batch / t_gft,
        "cfg_images_per_s": batch / t_cfg,
        "gft_vs_cfg_speedup": t_cfg / t_gft,
        "kv_images_per_s": recompute_batch / t_kv,
        "recompute_images_per_s": recompute_batch / t_re,
        "kv_vs_recompute_speedup": t_re / t_kv,
    }


MASKED_BATCH = 32  # --model masked defaults
MASKED_REPEATS = 3


def bench_masked(args, preset: str) -> dict:
    """The masked family: GFT (B rows per step) vs CFG (2B rows per step), same weights, same decoding steps.

    A bidirectional model recomputes every position at every step (its encoder sees the buffer + known tokens, its
    decoder every position), so there is no KV cache and no cache-vs-recompute figure; both random-order (MAR, the
    sampler's default: keys without suffix) and confidence-order (MaskGIT: keys ``*_confidence``) decoding are timed.
    """
    out = {"model": "masked", "preset": preset, "grid": args.grid, "tokens": args.grid * args.grid,
           "steps": args.steps, "batch": args.batch, "device": args.device, "dtype": args.dtype,
           "torch_threads": torch.get_num_threads(),
           "kv_cache": "none: a bidirectional model recomputes all positions every step"}
    main_vocab = 16384 if 16384 in args.vocabs else max(args.vocabs)
    for vocab in args.vocabs:
        torch.manual_seed(0)
        model = build_model("masked", preset, vocab_size=vocab, grid_size=args.grid, num_classes=1000)
        model = model.to(args.device, getattr(torch, args.dtype)).eval()
        torch.nn.init.normal_(model.output.weight, std=0.02)  # a trained-looking head (the fresh one is all zeros)
        labels = torch.arange(args.batch, device=args.device) % 1000
        suffix = "" if vocab == main_vocab else f"_v{vocab}"
        for order in ("random", "confidence"):
            runs = {mode: (lambda kw=kw: sample_codes(model, labels, steps=args.steps, order=order, **kw))
                    for mode, kw in (("gft", dict(beta=0.5)), ("cfg", dict(cfg_scale=2.0)))}
            times = {mode: [] for mode in runs}
            for mode in runs:  # warm-up
                runs[mode]()
            for _ in range(args.repeats):  # interleaved, so both see the same machine load
                for mode, fn in runs.items():
                    t0 = time.perf_counter()
                    fn()
                    times[mode].append(time.perf_counter() - t0)
            t_gft, t_cfg = (sorted(times[m])[len(times[m]) // 2] for m in ("gft", "cfg"))
            key = suffix if order == "random" else f"_confidence{suffix}"  # the sampler's default order: no suffix
            out[f"gft_images_per_s{key}"] = round(args.batch / t_gft, 4)
            out[f"cfg_images_per_s{key}"] = round(args.batch / t_cfg, 4)
            out[f"gft_vs_cfg_speedup{key}"] = round(t_cfg / t_gft, 4)
            print(f"vocab {vocab:6d} {order:10s}: GFT {args.batch / t_gft:8.2f} img/s | CFG {args.batch / t_cfg:8.2f} "
                  f"img/s | speedup {t_cfg / t_gft:.2f}x", flush=True)
    return out

VAR_BENCH = {"preset": "d4", "vocabs": [4096], "batch": 16}  # VAR's codebook size; used unless given


def bench_var(args, parser) -> None:
    """VAR: GFT (β, one pass per scale, B rows) vs CFG (VAR's (1+t)c − t·u, linear ramp, 2B rows), and the
    scale-wise KV cache vs recomputing every coarser scale at each scale, on VAR's 1…16 schedule (680 tokens).

    Same random weights and labels for each pair. Options left at the LlamaGen defaults take VAR_BENCH's values.
    """
    from gft_tokens.tokenizers.multiscale import DEFAULT_SCALES, VAR_SCALES_256

    given = {k: getattr(args, k) != parser.get_default(k) for k in VAR_BENCH}
    preset = args.preset if given["preset"] else VAR_BENCH["preset"]
    vocabs = args.vocabs if given["vocabs"] else VAR_BENCH["vocabs"]
    batch = args.batch if given["batch"] or args.quick else VAR_BENCH["batch"]
    schedules = {16: list(VAR_SCALES_256), 8: list(DEFAULT_SCALES)}
    if args.grid not in schedules:
        raise GFTError(f"--model var benchmarks --grid 16 (VAR's scales 1..16) or 8 (1,2,3,4,6,8), got {args.grid}")
    scales = schedules[args.grid]
    dtype = getattr(torch, args.dtype)
    result = {"model": "var", "preset": preset, "scales": scales, "tokens": sum(s * s for s in scales),
              "batch": batch, "recompute_batch": args.recompute_batch, "device": args.device, "dtype": args.dtype,
              "torch_threads": torch.get_num_threads(), "cfg": 1.5, "cfg_schedule": "linear"}
    for i, vocab in enumerate(vocabs):
        torch.manual_seed(0)
        model = build_model("var", preset, vocab_size=vocab, scales=scales, cvae=32, num_classes=1000)
        g = torch.Generator().manual_seed(0)
        n_phi = len(model.quantizer.resi_weight)
        model.load_quantizer({"embedding": torch.randn(vocab, 32, generator=g),
                              "resi_weight": torch.randn(n_phi, 32, 32, 3, 3, generator=g) * 0.05,
                              "resi_bias": torch.zeros(n_phi, 32)})
        model = model.to(args.device, dtype).eval()
        torch.nn.init.normal_(model.head.weight, std=0.02)  # a trained-looking head
        labels = torch.arange(batch, device=args.device) % 1000

        def run(n, **kw):
            return lambda: sample_codes(model, labels[:n], generator=None, **kw)

        t_gft = timed(run(batch, beta=0.5), args.repeats)
        t_cfg = timed(run(batch, cfg=1.5), args.repeats)
        t_kv = timed(run(args.recompute_batch, beta=0.5), args.repeats)
        t_re = timed(run(args.recompute_batch, beta=0.5, use_cache=False), args.repeats)
        r = {"gft_images_per_s": batch / t_gft, "cfg_images_per_s": batch / t_cfg, "gft_vs_cfg_speedup": t_cfg / t_gft,
             "kv_images_per_s": args.recompute_batch / t_kv, "recompute_images_per_s": args.recompute_batch / t_re,
             "kv_vs_recompute_speedup": t_re / t_kv}
        print(f"var {preset} vocab {vocab:5d}, {result['tokens']} tokens: GFT {r['gft_images_per_s']:8.2f} img/s | "
              f"CFG {r['cfg_images_per_s']:8.2f} img/s | speedup {r['gft_vs_cfg_speedup']:.2f}x || scale-wise KV "
              f"{r['kv_images_per_s']:8.2f} img/s | recompute {r['recompute_images_per_s']:8.2f} img/s | speedup "
              f"{r['kv_vs_recompute_speedup']:.2f}x", flush=True)
        suffix = "" if i == 0 else f"_v{vocab}"
        result.update({k + suffix: round(v, 4) for k, v in r.items()})
    if args.json:
        print(json.dumps(result))


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llamagen", choices=sorted(FAMILIES), help="model family")
    p.add_argument("--preset", default="GPT-small", help="model preset (default: GPT-small)")
    p.add_argument("--grid", type=int, default=16, help="token grid side (default: 16 → 256 tokens)")
    p.add_argument("--batch", type=int, default=256,
                   help="images per GFT batch; CFG runs 2x rows. Large enough that a decode step is compute-bound "
                        "rather than bound by per-step overheads or weight reads (default: 256; 32 for --model "
                        "masked, 16 for --model var)")
    p.add_argument("--recompute-batch", type=int, default=16, help="batch for the cache-vs-recompute pair (default: 16)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per measurement (median) (default: 1; 3 for --model masked)")
    p.add_argument("--vocabs", type=int, nargs="+", default=[1024, 16384], help="vocabulary sizes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--quick", action="store_true", help="smaller batch and one repeat: under a minute on a CPU")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--steps", type=int, default=16,
                   help="--model masked: decoding steps (default: 16, as generate.py; MAR samples with 64-256)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:  # a small warm-up instead of full ones, smaller batches
        args.batch, args.recompute_batch, args.repeats = min(args.batch, 32), min(args.recompute_batch, 4), 1
    if args.batch <= 0 or args.recompute_batch <= 0 or args.repeats <= 0:
        raise GFTError("--batch, --recompute-batch and --repeats must be positive")
    if args.model == "masked":  # no KV cache: its own measurement (preset default MAR-tiny)
        preset = "MAR-tiny" if args.preset == p.get_default("preset") else args.preset
        if args.batch == p.get_default("batch"):
            args.batch = MASKED_BATCH
        if args.repeats == p.get_default("repeats") and not args.quick:  # seconds per run: take a median of 3
            args.repeats = MASKED_REPEATS
        result = bench_masked(args, preset)
        if args.json:
            print(json.dumps(result))
        return

    if args.model == "var":
        return bench_var(args, p)
    dtype = getattr(torch, args.dtype)
    rows = {}
    for vocab in args.vocabs:
        r = bench_one(args.model, args.preset, vocab, args.grid, args.batch, args.recompute_batch, args.repeats,
                      args.device, dtype, warmup=not args.quick)
        rows[vocab] = r
        print(f"vocab {vocab:6d}: GFT {r['gft_images_per_s']:8.2f} img/s | CFG {r['cfg_images_per_s']:8.2f} img/s | "
              f"speedup {r['gft_vs_cfg_speedup']:.2f}x || KV {r['kv_images_per_s']:8.2f} img/s | recompute "
              f"{r['recompute_images_per_s']:8.3f} img/s | speedup {r['kv_vs_recompute_speedup']:.1f}x", flush=True)
    result = {"model": args.model, "preset": args.preset, "grid": args.grid, "tokens": args.grid * args.grid,
              "batch": args.batch, "recompute_batch": args.recompute_batch, "device": args.device,
              "dtype": args.dtype, "torch_threads": torch.get_num_threads()}
    main_vocab = 16384 if 16384 in rows else max(rows)
    for vocab, r in rows.items():
        suffix = "" if vocab == main_vocab else f"_v{vocab}"
        for k, v in r.items():
            if k != "vocab":
                result[k + suffix] = round(v, 4)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
