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

Modes besides that default measurement (one at a time):

* ``--curve``: end-to-end images/s — codes, and codes decoded to pixels by a random tokenizer of the family's
  shipped architecture — for GFT and CFG over each family's curve sizes (``Family.bench.curve``: LlamaGen GPT-tiny,
  GPT-small, GPT-B …) and batch sizes (1, 8, 32, 128), every family unless ``--model`` is given; writes
  ``curve-<device>.json`` and ``curve-<device>.png`` (speedup vs batch, one line per size) into ``--out``. A run
  of some families or sizes (``--model var``, ``--sizes GPT-B``) replaces those in an existing curve of the same
  settings and keeps the rest, so the curve can be measured piece by piece.
* ``--overhead``: the sampler's per-token time over the bare forward (the same network passes, no mix, filtering
  or draw) at ``--batch`` (default 1), GFT and CFG.
* ``--profile``: torch.profiler over one sampling step in mid-generation at ``--batch`` (default 32): a table.
* ``--targets``: issue 18's three ratios in one run — end-to-end GFT/CFG at batch 32, KV cache vs recompute,
  sampler overhead at batch 1 — each against its target.

    python scripts/bench_sampling.py --json                  # LlamaGen GPT-small
    python scripts/bench_sampling.py --quick --json          # < 60 s on a 2-core CPU
    python scripts/bench_sampling.py --model masked --json   # per decoding step (no cache), random + confidence order
    python scripts/bench_sampling.py --model var --json      # scale-wise sampling on VAR's 1..16 scales
    python scripts/bench_sampling.py --model mar --json      # continuous tokens, diffusion head
    python scripts/bench_sampling.py --curve --threads 1     # every family, writes docs/speed/curve-cpu.*
    python scripts/bench_sampling.py --targets --threads 1   # the three ratios of issue 18
    python scripts/bench_sampling.py --overhead --compile    # the compiled decode step's overhead at batch 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from gft_tokens.errors import GFTError, cli_main
from gft_tokens.families import FAMILIES, get_family
from gft_tokens.families.base import CurveSize
from gft_tokens.families.options import add_family_option, family_options
from gft_tokens.fs import atomic_file, check_writable
from gft_tokens.sampling import SamplingStats
from gft_tokens.validate import ArgumentParser, bounded, device, positive

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = [time.perf_counter]


def clock() -> float:
    """The timer of every measurement: wall time, or with ``--clock cpu`` this process's CPU time — on a CPU
    shared with other jobs (or deprioritised under them) the CPU seconds a run used, not the ones it waited."""
    return _clock[0]()


TARGETS = {"end_to_end_gft_vs_cfg_b32": 1.8, "kv_vs_recompute": 8.0, "sampler_overhead_b1": 0.20}
CURVE_BATCHES = (1, 8, 32, 128)


def interleaved(runs: dict, repeats: int, warmup: bool = True) -> dict[str, float]:
    """Median wall time of each ``runs[name]()``, the runs interleaved ``repeats`` times (after one warm-up each)."""
    times = interleaved_parts(runs, repeats, warmup)
    return {name: t["total"] for name, t in times.items()}


def interleaved_parts(runs: dict, repeats: int, warmup: bool = True) -> dict[str, dict[str, float]]:
    """As :func:`interleaved`; a run may return a dict of partial times (seconds since its start, e.g. when its
    codes were ready), whose medians are reported beside ``total``."""
    if warmup:
        for fn in runs.values():
            fn()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = clock()
            parts = fn()
            parts = {**(parts if isinstance(parts, dict) else {}), "total": clock() - t0}
            times[name].append(parts)
    out = {name: {key: median([r[key] for r in rs]) for key in rs[0]} for name, rs in times.items()}
    for name, rs in times.items():
        out[name]["runs"] = rs
    return out


def median(xs):
    return sorted(xs)[len(xs) // 2]


def paired_ratio(slow: list[dict], fast: list[dict], key: str) -> float:
    """Median over the repeats of slow/fast for runs made side by side: a load change between repeats moves both
    runs of a pair, so the ratio is steadier than the ratio of the two medians."""
    return median([s[key] / f[key] for s, f in zip(slow, fast)])


def synchronize(dev: str) -> None:
    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize()


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
        out[""].update(bench_recompute(family, model, labels[:recompute_batch], repeats, warmup))
    return out


def bench_recompute(family, model, labels, repeats: int, warmup: bool) -> dict:
    """KV-cached sampling vs recomputing the whole prefix at every step (same labels, GFT)."""
    spec, n = family.bench, len(labels)
    opts = {k: v for k, v in spec.options.items() if k != "compile"}
    t = interleaved({"kv": lambda: family.sample(model, labels, beta=0.5, **spec.options),
                     "recompute": lambda: family.sample(model, labels, beta=0.5, use_cache=False, **opts)},
                    1 if not warmup else max(1, repeats), warmup=warmup)
    return {"kv_images_per_s": n / t["kv"], "recompute_images_per_s": n / t["recompute"],
            "kv_vs_recompute_speedup": t["recompute"] / t["kv"]}


# -- end to end: codes, then pixels -----------------------------------------------------------------------------
def end_to_end(family, model, tokenizer, batch: int, repeats: int, cfg_scale: float, device: str,
               compiled: bool) -> dict:
    """One point of the curve: GFT and CFG at ``batch``, each run timed to its codes and to its decoded images."""
    spec = family.bench
    labels = torch.arange(batch, device=device) % 1000
    stats = {"gft": SamplingStats(), "cfg": SamplingStats()}

    def run(name, guidance):
        def fn():
            t0 = clock()
            codes = family.sample(model, labels, stats=stats[name], **guidance, **spec.options)
            synchronize(device)
            t_codes = clock() - t0
            tokenizer.decode(family.to_tokenizer_input(model, codes))
            synchronize(device)
            return {"codes": t_codes}
        return fn

    runs = {"gft": run("gft", {"beta": 0.5}), "cfg": run("cfg", {"cfg_scale": cfg_scale})}
    # one-time costs (allocator, kernels; compilation, which is per batch) paid before anything is timed: a full
    # warm-up where it is cheap or compiled, otherwise a batch of 2
    full_warmup = compiled or repeats > 1
    if not full_warmup:
        for guidance in ({"beta": 0.5}, {"cfg_scale": cfg_scale}):
            codes = family.sample(model, labels[:2], **guidance, **spec.options)
            tokenizer.decode(family.to_tokenizer_input(model, codes))
    t = interleaved_parts(runs, repeats, warmup=full_warmup)
    gft, cfg = t["gft"], t["cfg"]
    return {"batch": batch, "repeats": repeats,
            "gft_codes_images_per_s": batch / gft["codes"], "cfg_codes_images_per_s": batch / cfg["codes"],
            "gft_images_per_s": batch / gft["total"], "cfg_images_per_s": batch / cfg["total"],
            "codes_speedup": paired_ratio(cfg["runs"], gft["runs"], "codes"),
            "speedup": paired_ratio(cfg["runs"], gft["runs"], "total"),
            "decode_ms_per_image": 1e3 * ((gft["total"] - gft["codes"]) + (cfg["total"] - cfg["codes"])) / 2 / batch,
            "gft_nfe_per_image": stats["gft"].nfe_per_image, "cfg_nfe_per_image": stats["cfg"].nfe_per_image}


def family_vocab(spec, vocabs) -> int | None:
    vocabs = list(vocabs or spec.vocabs)
    return 16384 if 16384 in vocabs else max(vocabs, key=lambda v: v or 0)


def curve_sizes(family, wanted) -> list:
    """The family's curve sizes, or those of ``wanted`` (any of its presets: a preset off its curve is timed once
    per point) when given."""
    if not wanted:
        return list(family.bench.curve)
    declared = {s.preset: s for s in family.bench.curve}
    return [declared.get(p, CurveSize(p)) for p in wanted if p in family.presets]


def run_curve(args, families, dtype) -> dict:
    batches = tuple(args.batches) if args.batches else None
    result = {"device": args.device, "device_name": device_name(args.device), "dtype": args.dtype,
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "grid": args.grid,
              "cfg_scale": args.cfg_scale, "compile": bool(args.compile), "clock": args.clock, "families": {}}
    t_start = time.perf_counter()
    for family in families:
        spec = family.bench
        sizes = curve_sizes(family, args.sizes)
        if not sizes:
            continue
        t_family, load_before = time.perf_counter(), os.getloadavg()[0]
        vocab = family_vocab(spec, args.vocabs)
        entry = {"vocab": vocab, "sampler_options": {**spec.options, **({"compile": True} if args.compile else {})},
                 "sizes": {}}
        for size in sizes:
            model = spec.build(size.preset, vocab, args.grid).to(args.device, dtype)
            tokenizer = spec.tokenizer(vocab, args.grid, model).to(args.device)
            entry.setdefault("tokenizer", tokenizer.describe())
            params = sum(p.numel() for p in model.parameters())
            points = []
            for batch in batches or size.batches:
                t0 = time.perf_counter()
                repeats = args.repeats or size.repeats_at(batch)
                p = end_to_end(family, model, tokenizer, batch, repeats, args.cfg_scale, args.device, bool(args.compile))
                p["wall_s"] = round(time.perf_counter() - t0, 1)
                points.append({k: round(v, 4) if isinstance(v, float) else v for k, v in p.items()})
                print(f"{family.name:8s} {size.preset:9s} batch {batch:3d}: codes GFT {p['gft_codes_images_per_s']:8.2f} "
                      f"CFG {p['cfg_codes_images_per_s']:8.2f} img/s ({p['codes_speedup']:.2f}x) | pixels GFT "
                      f"{p['gft_images_per_s']:8.2f} CFG {p['cfg_images_per_s']:8.2f} img/s ({p['speedup']:.2f}x) | "
                      f"decode {p['decode_ms_per_image']:.2f} ms/img [{p['wall_s']:.0f}s]", flush=True)
            entry["sizes"][size.preset] = {"params": params, "points": points}
            del model, tokenizer
        # what else ran meanwhile: the machine's 1-minute load average before and after this family
        entry.update(wall_s=round(time.perf_counter() - t_family, 1), measured=time.strftime("%Y-%m-%d %H:%M"),
                     load_average=[round(load_before, 2), round(os.getloadavg()[0], 2)])
        result["families"][family.name] = entry
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    return result


CURVE_SETTINGS = ("device", "device_name", "dtype", "torch_threads", "grid", "cfg_scale", "compile", "clock")


def previous_curve(path: Path, settings: dict) -> dict | None:
    """The curve already at ``path`` when it was measured with the same settings (a run of some families updates
    their panels and keeps the others'); a file with other settings is refused rather than mixed."""
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text())
        mismatch = [k for k in CURVE_SETTINGS if old.get(k) != settings[k]]
        old["families"].items()
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        raise GFTError(f"{path} exists but is not a curve this script wrote; choose another --out") from None
    if mismatch:
        raise GFTError(f"{path} holds a curve measured with other settings ("
                       + ", ".join(f"{k} {old.get(k)!r} vs {settings[k]!r}" for k in mismatch)
                       + "); choose another --out")
    return old


def device_name(dev: str) -> str:
    if torch.device(dev).type == "cuda":
        return torch.cuda.get_device_name(torch.device(dev))
    return "cpu"


def plot_curve(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GFTError("the curve's plot needs matplotlib: pip install 'gft_tokens[plots]'") from None
    fams = result["families"]
    fig, axes = plt.subplots(1, len(fams), figsize=(4.2 * len(fams), 3.6), squeeze=False)
    for ax, (name, entry) in zip(axes[0], fams.items()):
        for i, (preset, size) in enumerate(entry["sizes"].items()):
            pts = size["points"]
            xs = [p["batch"] for p in pts]
            color = f"C{i}"
            ax.plot(xs, [p["speedup"] for p in pts], "o-", color=color,
                    label=f"{preset} ({size['params'] / 1e6:.1f}M)")
            ax.plot(xs, [p["codes_speedup"] for p in pts], ":", color=color, alpha=0.6)
        ax.axhline(2.0, color="grey", lw=0.8, ls="--")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        batches = sorted({p["batch"] for size in entry["sizes"].values() for p in size["points"]})
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch (images)")
        ax.set_title(f"{name} (vocab {entry['vocab']})" if entry["vocab"] else name)
        values = [p[k] for size in entry["sizes"].values() for p in size["points"] for k in ("speedup", "codes_speedup")]
        ax.set_ylim(min(values + [0.8]) - 0.1, max(values + [2.2]) + 0.1)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("GFT / CFG images/s (end to end)")
    where = result["device_name"] + (f", {result['torch_threads']} thread(s), {result.get('clock', 'wall')} time"
                                      if result["device"] == "cpu" else "")
    fig.suptitle(f"GFT vs CFG sampling speed, {result['dtype']}, {where}, {result['grid']}x{result['grid']} tokens "
                 f"(solid: decoded pixels, dotted: codes)", fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


# -- the sampler's own cost over the network's --------------------------------------------------------------------
def overhead(family, model, batch: int, repeats: int, cfg_scale: float, device: str) -> dict:
    """Per-token time of sampling over the bare forward (same passes, no mix/filter/draw), GFT and CFG."""
    spec = family.bench
    labels = torch.arange(batch, device=device) % 1000
    steps = getattr(model.config, "block_size", None) or 1
    runs = {}
    for mode, guidance in (("gft", {"beta": 0.5}), ("cfg", {"cfg_scale": cfg_scale})):
        runs[f"{mode}_sampler"] = (lambda g=guidance: family.sample(model, labels, **g, **spec.options))
        runs[f"{mode}_forward"] = (lambda g=guidance: spec.forward_passes(model, labels, **g))
    t = interleaved(runs, repeats)
    out = {"batch": batch, "repeats": repeats, "tokens": steps}
    for mode in ("gft", "cfg"):
        out[f"{mode}_sampler_ms_per_token"] = 1e3 * t[f"{mode}_sampler"] / steps
        out[f"{mode}_forward_ms_per_token"] = 1e3 * t[f"{mode}_forward"] / steps
        out[f"{mode}_sampler_overhead"] = t[f"{mode}_sampler"] / t[f"{mode}_forward"] - 1.0
    return out


PROFILE_GROUPS = {
    "matmul (linear layers, head)": ("aten::mm", "aten::addmm", "aten::bmm"),
    "attention kernel (SDPA)": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                                "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_flash_attention",
                                "aten::_flash_attention_forward", "aten::_efficient_attention_forward"),
    "softmax + draw (CDF inversion)": ("aten::_softmax", "aten::cumsum", "aten::searchsorted", "aten::sum",
                                       "aten::gather", "aten::nextafter", "aten::minimum", "aten::where",
                                       "aten::clamp_min", "aten::uniform_", "aten::_to_copy"),
}


def _profile_one(step, device: str, reps: int = 20) -> dict:
    from torch.profiler import ProfilerActivity, profile

    def timed():
        t0 = time.perf_counter()
        for _ in range(reps):
            step()
        synchronize(device)
        return (time.perf_counter() - t0) / reps * 1e3

    timed()  # warm-up
    wall = timed()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
    with profile(activities=activities) as prof:
        profiled = timed()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    per_op = {e.key: (e.count / reps, e.self_cpu_time_total / reps / 1e3) for e in events}
    total_self = sum(t for _, t in per_op.values())
    groups = {g: sum(per_op[k][1] for k in names if k in per_op) for g, names in PROFILE_GROUPS.items()}
    groups["every other operator (norms, RoPE, cache writes, views, CFG mix …)"] = total_self - sum(groups.values())
    groups["Python between operators (module calls, dispatch, profiler)"] = max(profiled - total_self, 0.0)
    return {"wall_ms": wall, "profiled_ms": profiled, "calls": sum(c for c, _ in per_op.values()), "groups": groups,
            "ops": per_op}


def profile_step(family, model, batch: int, device: str, cfg_scale: float = 2.0, rows: int = 12) -> tuple[str, dict]:
    """torch.profiler over one sampling step in mid-generation at ``batch``, GFT and CFG side by side: where a
    step's time goes — matmuls, attention, the draw, every other operator, and the Python around them (the profiled
    step's wall time less its operators' self times; it includes the profiler's own per-operator cost) — then the
    costliest operators. CFG's column shows what a second half of the batch really costs."""
    labels = torch.arange(batch, device=device) % 1000
    prof = {"gft": _profile_one(family.bench.decode_step(model, labels, beta=0.5), device),
            "cfg": _profile_one(family.bench.decode_step(model, labels, cfg_scale=cfg_scale), device)}
    g, c = prof["gft"], prof["cfg"]
    lines = [f"one sampling step at batch {batch} (CFG: {2 * batch} rows), unprofiled: GFT {g['wall_ms']:.2f} ms, "
             f"CFG {c['wall_ms']:.2f} ms (x{c['wall_ms'] / g['wall_ms']:.2f}); operator calls GFT {g['calls']:.0f}, "
             f"CFG {c['calls']:.0f}", "",
             "| where the profiled step's time goes | GFT ms | share | CFG ms | CFG / GFT |", "|---|---:|---:|---:|---:|"]
    for name in g["groups"]:
        tg, tc = g["groups"][name], c["groups"][name]
        lines.append(f"| {name} | {tg:.2f} | {tg / g['profiled_ms']:.0%} | {tc:.2f} | "
                     f"{tc / tg if tg else float('nan'):.2f} |")
    lines.append(f"| **step under the profiler** | **{g['profiled_ms']:.2f}** | | **{c['profiled_ms']:.2f}** | "
                 f"**{c['profiled_ms'] / g['profiled_ms']:.2f}** |")
    lines += ["", "| operator (GFT step) | calls | self ms | CFG calls | CFG self ms |", "|---|---:|---:|---:|---:|"]
    for key, (n, t) in sorted(g["ops"].items(), key=lambda kv: -kv[1][1])[:rows]:
        nc, tc = c["ops"].get(key, (0, 0.0))
        lines.append(f"| `{key}` | {n:.0f} | {t:.3f} | {nc:.0f} | {tc:.3f} |")
    summary = {"batch": batch, **{m: {k: v for k, v in r.items() if k != "ops"} for m, r in prof.items()}}
    return "\n".join(lines), summary


def run_targets(args, family, dtype) -> dict:
    """Issue 18's three ratios, one run: end to end at batch 32, KV cache vs recompute, overhead at batch 1."""
    spec = family.bench
    if spec.tokenizer is None or spec.forward_passes is None or not spec.cache:
        raise GFTError(f"--targets needs a KV-cached family with a bare-forward split; {family.name} has none")
    preset = args.preset or spec.preset
    vocab = family_vocab(spec, args.vocabs)
    model = spec.build(preset, vocab, args.grid).to(args.device, dtype)
    tokenizer = spec.tokenizer(vocab, args.grid, model).to(args.device)
    repeats = args.repeats or 3
    e2e = end_to_end(family, model, tokenizer, 32, repeats, args.cfg_scale, args.device, bool(args.compile))
    labels = torch.arange(args.recompute_batch, device=args.device) % 1000
    kv = bench_recompute(family, model, labels, 1, warmup=False)  # the runs above paid the one-time costs
    ov = overhead(family, model, 1, repeats, args.cfg_scale, args.device)
    got = {"end_to_end_gft_vs_cfg_b32": e2e["speedup"], "kv_vs_recompute": kv["kv_vs_recompute_speedup"],
           "sampler_overhead_b1": ov["gft_sampler_overhead"]}
    met = {k: (got[k] <= TARGETS[k]) if k == "sampler_overhead_b1" else (got[k] >= TARGETS[k]) for k in got}
    print(f"{family.name} {preset}, vocab {vocab}, {args.grid}x{args.grid} tokens, {args.dtype}, "
          f"{torch.get_num_threads()} thread(s), compile {bool(args.compile)}, {args.clock} clock:")
    print(f"  end-to-end GFT/CFG at batch 32 (codes + pixels): {got['end_to_end_gft_vs_cfg_b32']:.2f}x "
          f"(codes only {e2e['codes_speedup']:.2f}x)  target >= {TARGETS['end_to_end_gft_vs_cfg_b32']}x  "
          f"{'met' if met['end_to_end_gft_vs_cfg_b32'] else 'NOT MET'}")
    print(f"  KV-cached decode vs full recompute (batch {args.recompute_batch}): {got['kv_vs_recompute']:.1f}x  "
          f"target >= {TARGETS['kv_vs_recompute']}x  {'met' if met['kv_vs_recompute'] else 'NOT MET'}")
    print(f"  sampler overhead over the bare forward at batch 1: GFT {ov['gft_sampler_overhead']:+.1%} "
          f"({ov['gft_sampler_ms_per_token']:.3f} vs {ov['gft_forward_ms_per_token']:.3f} ms/token), CFG "
          f"{ov['cfg_sampler_overhead']:+.1%}  target <= {TARGETS['sampler_overhead_b1']:.0%}  "
          f"{'met' if met['sampler_overhead_b1'] else 'NOT MET'}", flush=True)
    rounded = lambda d: {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}  # noqa: E731
    return {"model": family.name, "preset": preset, "vocab": vocab, "grid": args.grid, "device": args.device,
            "dtype": args.dtype, "torch_threads": torch.get_num_threads(), "compile": bool(args.compile),
            "clock": args.clock, "targets": TARGETS, "measured": rounded(got), "met": met, "end_to_end_b32": rounded(e2e),
            "kv_vs_recompute": rounded(kv), "overhead_b1": rounded(ov)}


@cli_main
def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(FAMILIES),
                   help="model family (default: llamagen; --curve: every family with a benchmark)")
    p.add_argument("--preset", help="model preset (default: the family's: GPT-small, d4, MAR-tiny)")
    p.add_argument("--grid", type=positive(int), help="token grid side (default: 16 → 256 tokens; VAR: scales "
                   "1..16; --curve: 8, the shipped tokenizers' grid, so that it fits a CPU)")
    p.add_argument("--batch", type=positive(int),
                   help="images per GFT batch; CFG runs 2x rows. Large enough that a step is compute-bound rather "
                        "than bound by per-step overheads or weight reads (default: the family's: 256 llamagen, "
                        "32 masked, 16 var and mar; --overhead 1, --profile 32)")
    p.add_argument("--recompute-batch", type=positive(int), default=16, help="batch for the cache-vs-recompute pair (default: 16)")
    p.add_argument("--repeats", type=positive(int), help="timed runs per measurement, median (default: the family's: 1; 3 masked)")
    p.add_argument("--vocabs", type=bounded(int, min=2), nargs="+",
                   help="vocabulary sizes (default: the family's: 1024 16384 llamagen/masked, 4096 var)")
    p.add_argument("--cfg-scale", type=bounded(float, min=1), default=2.0, help="CFG scale of the CFG runs (default: 2.0)")
    p.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=bounded(int, min=0, max=4096), default=0, help="torch CPU threads (0: default)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="what a measurement times: wall (default) or cpu, this process's CPU time (CPU device; "
                        "for a machine shared with other jobs: the scheduler's waits are not counted)")
    p.add_argument("--quick", action="store_true", help="smaller batch and one repeat: under a minute on a CPU")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--curve", action="store_true", help="end-to-end GFT/CFG images/s over sizes and batches; "
                      "writes curve-<device>.json and .png into --out")
    mode.add_argument("--overhead", action="store_true", help="the sampler's per-token overhead over the bare "
                      "forward at --batch (default 1)")
    mode.add_argument("--profile", action="store_true", help="torch.profiler table of one sampling step at --batch "
                      "(default 32)")
    mode.add_argument("--targets", action="store_true", help="issue 18's three ratios in one run, against targets")
    p.add_argument("--sizes", nargs="+", metavar="PRESET", help="--curve: these presets instead of the families' "
                   "curve sizes (each family times those it has; e.g. GPT-B GPT-L on a GPU)")
    p.add_argument("--batches", type=positive(int, max=4096), nargs="+",
                   help=f"--curve: these batch sizes (default: each size's, {' '.join(map(str, CURVE_BATCHES))})")
    p.add_argument("--out", default="docs/speed", help="--curve: output folder (default: docs/speed)")
    for option, families in family_options():
        add_family_option(p, option, families)
    args = p.parse_args(argv)

    family = get_family(args.model or "llamagen")
    if args.preset is not None:
        family.check_options(args.preset, {})  # an unknown preset fails before anything is built
    if args.curve and args.preset is not None:
        raise GFTError("--curve times each family's curve sizes: choose sizes with --sizes, not --preset")
    if (args.sizes or args.batches) and not args.curve:
        raise GFTError("--sizes and --batches shape the --curve; add --curve")
    families = [family] if args.model or not args.curve else [f for f in FAMILIES.values() if f.bench and f.bench.curve]
    spec = family.bench
    if spec is None:
        raise GFTError(f"the {family.name} family declares no sampling benchmark")
    options = {o.name: getattr(args, o.name) for o, _ in family_options()}
    if args.curve:
        for f in families:
            f.sampling_kwargs(**options)  # --compile on a family that cannot compile is refused up front
        if args.sizes:
            unknown = [s for s in args.sizes if not any(s in f.presets for f in families)]
            if unknown:
                raise GFTError(f"--sizes {' '.join(unknown)}: not a preset of {'/'.join(f.name for f in families)} "
                               f"(curve sizes: {', '.join(s.preset for f in families for s in f.bench.curve)})")
        if any(f.bench.tokenizer is None for f in families):
            raise GFTError("a family without a benchmark tokenizer cannot run the end-to-end curve")
        check_writable(args.out)
    given = family.sampling_kwargs(**options) if not args.curve else {}
    if given:
        spec = dataclasses.replace(spec, options={**spec.options, **given})
        family = dataclasses.replace(family, bench=spec)
    if args.curve and args.compile:
        families = [dataclasses.replace(f, bench=dataclasses.replace(
            f.bench, options={**f.bench.options, **f.sampling_kwargs(**options)})) for f in families]
    if spec.vocabs == (None,) and args.vocabs:
        raise GFTError(f"--vocabs does not apply to the {family.name} family (continuous tokens)")
    if (args.overhead or args.profile) and (spec.forward_passes is None or spec.decode_step is None):
        raise GFTError(f"--overhead and --profile need a sampler split into network passes and draws; the "
                       f"{family.name} family declares none")
    if args.clock == "cpu" and torch.device(args.device).type != "cpu":
        raise GFTError("--clock cpu times this process's CPU work; on a GPU the kernels run elsewhere: use --clock wall")
    _clock[0] = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile:
        import torch._dynamo as dynamo

        dynamo.config.recompile_limit = 64  # one graph per model shape and batch: a curve has many
    dtype = getattr(torch, args.dtype)

    if args.curve:
        args.grid = args.grid or 8
        out = Path(args.out)
        tag = torch.device(args.device).type + ("-compiled" if args.compile else "")
        settings = {"device": args.device, "device_name": device_name(args.device), "dtype": args.dtype,
                    "torch_threads": torch.get_num_threads(), "grid": args.grid, "cfg_scale": args.cfg_scale,
                    "compile": bool(args.compile), "clock": args.clock}
        old = previous_curve(out / f"curve-{tag}.json", settings)  # before anything is measured
        result = run_curve(args, families, dtype)
        if old is not None:
            merged = {**old, **{k: v for k, v in result.items() if k != "families"}}
            merged["families"] = dict(old["families"])
            for name, entry in result["families"].items():  # the sizes measured now replace theirs, others stay
                before = old["families"].get(name)
                if before and before.get("vocab") == entry["vocab"]:
                    entry = {**entry, "sizes": {**before["sizes"], **entry["sizes"]},
                             "wall_s": round(before.get("wall_s", 0) + entry["wall_s"], 1)}
                merged["families"][name] = entry
            result = merged
        result["wall_s"] = round(sum(f.get("wall_s", 0) for f in result["families"].values()), 1)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_file(out / f"curve-{tag}.json", "w") as fh:
            fh.write(json.dumps(result, indent=1) + "\n")
        plot_curve(result, out / f"curve-{tag}.png")
        print(f"wrote {out / f'curve-{tag}.json'} and {out / f'curve-{tag}.png'}; the curve's families took "
              f"{result['wall_s']:.0f}s in all")
        if args.json:
            print(json.dumps(result))
        return
    args.grid = args.grid or 16
    if args.targets:
        result = run_targets(args, family, dtype)
        if args.json:
            print(json.dumps(result))
        return
    preset = args.preset or spec.preset
    if args.overhead or args.profile:
        vocab = family_vocab(spec, args.vocabs)
        model = spec.build(preset, vocab, args.grid).to(args.device, dtype)
        head = (f"{family.name} {preset}, vocab {vocab}, {args.grid}x{args.grid} tokens, {args.dtype}, "
                f"{torch.get_num_threads()} thread(s), compile {bool(args.compile)}, {args.clock} clock")
        if args.profile:
            table, result = profile_step(family, model, args.batch or 32, args.device)
            print(head)
            print(table)
        else:
            result = overhead(family, model, args.batch or 1, args.repeats or 3, args.cfg_scale, args.device)
            print(f"{head}, batch {result['batch']}: per token, sampler vs bare forward — GFT "
                  f"{result['gft_sampler_ms_per_token']:.3f} vs {result['gft_forward_ms_per_token']:.3f} ms "
                  f"(overhead {result['gft_sampler_overhead']:+.1%}); CFG {result['cfg_sampler_ms_per_token']:.3f} vs "
                  f"{result['cfg_forward_ms_per_token']:.3f} ms (overhead {result['cfg_sampler_overhead']:+.1%})")
        if args.json:
            print(json.dumps({"model": family.name, "preset": preset, "vocab": vocab, "grid": args.grid,
                              "compile": bool(args.compile), **{k: round(v, 4) if isinstance(v, float) else v
                                                                 for k, v in result.items()}}))
        return

    batch = args.batch or spec.batch
    repeats = args.repeats or spec.repeats
    vocabs = list(args.vocabs) if args.vocabs else list(spec.vocabs)
    recompute_batch = args.recompute_batch
    if args.quick:  # a small warm-up instead of full ones, smaller batches
        batch, recompute_batch, repeats = min(batch, 32), min(recompute_batch, 4), 1
    result = {"model": family.name, "preset": preset, "grid": args.grid, "batch": batch,
              "recompute_batch": recompute_batch if spec.cache else None, "repeats": repeats, "device": args.device,
              "dtype": args.dtype, "torch_threads": torch.get_num_threads(), "cfg_scale": args.cfg_scale,
              "sampler_options": spec.options,
              "kv_cache": "static" if spec.cache else "none: a bidirectional model recomputes all positions every step"}
    main_vocab = family_vocab(spec, vocabs)
    for vocab in vocabs:
        model = spec.build(preset, vocab, args.grid).to(args.device, dtype)
        rows = bench_vocab(family, model, batch, recompute_batch, repeats, args.device,
                           not args.quick or bool(args.compile), args.cfg_scale)
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
