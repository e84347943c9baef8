#!/usr/bin/env python
"""Training-step cost of GFT vs CFG on the same model and batch: time and peak memory.

A GFT step is the CFG step plus one no-grad, eval-mode forward of the unconditional branch; the two logit sets are
mixed inside the cross-entropy. With ``--loss fused`` (the default, what training uses) the mix and the CE run in
chunks fused with the output projection, so neither branch's (batch x tokens x vocab) logits are materialised;
``--loss naive`` materialises them (the reference). Peak memory is measured per variant in a fresh subprocess as
the resident-set high-water mark over one optimizer step above the memory live before it (CPU; glibc's mmap
threshold is fixed so freed tensors leave the resident set), or ``max_memory_allocated`` (CUDA).

Prints a table and, with --json, one JSON object as the last line: ``gft_vs_cfg_step_time`` and
``gft_vs_cfg_peak_memory`` hold the vocab-16384 figures, ``..._v1024`` the small ones.

    python scripts/bench_training.py --json
    python scripts/bench_training.py --quick --json      # < 60 s on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from gft_tokens.validate import ArgumentParser, bounded, device, positive
from gft_tokens.errors import GFTError, cli_main
from gft_tokens.families import FAMILIES, build_model, get_family
from gft_tokens.objectives import HeadInputs


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as fh:  # "5" resets VmHWM (Linux ≥ 4.0)
        fh.write("5")


def materialised(logits_fn):
    """The naive reference: full (batch x tokens x vocab) logits for each branch."""

    def fn(cond, beta):
        out = logits_fn(cond, beta)
        return out.logits() if isinstance(out, HeadInputs) else out

    return fn


def make_step(args, vocab: int, objective: str):
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = build_model(args.model, args.preset, vocab_size=vocab, grid_size=args.grid, num_classes=1000,
                        beta_embed=True).to(dev)
    torch.nn.init.normal_(model.output.weight, std=0.02)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    family = get_family(args.model)
    shape = family.adapter.token_shape(model.config)
    codes = torch.randint(vocab, (args.batch, *shape), device=dev)
    labels = torch.randint(1000, (args.batch,), device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    loss_fn = family.objective(objective)

    def step():
        inputs = family.adapter.loss_inputs(model, codes, gen)
        fn = materialised(inputs.logits_fn) if args.loss == "naive" else inputs.logits_fn
        # want_own=False: the training loop computes the network's own CE (one more projection, for the log) only
        # on its logging steps, one in --log-every (10)
        out = loss_fn(fn, inputs.targets, labels, null_cond=model.null_class, module=model, generator=gen,
                      loss_mask=inputs.loss_mask, want_own=False)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        return out.loss

    return step


def measure_time(args, vocab: int) -> dict:
    steps = {name: make_step(args, vocab, name) for name in ("cfg", "gft")}
    for fn in steps.values():  # warm up (allocations, optimizer state)
        fn()
    times = {name: [] for name in steps}
    for _ in range(args.repeats):  # interleave so that drifts in machine load hit both alike
        for name, fn in steps.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    med = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    # the ratio is the median over back-to-back (CFG, GFT) pairs: robust to slow drifts of the machine's speed
    ratios = sorted(g / c for c, g in zip(times["cfg"], times["gft"]))
    return {"cfg_step_s": med["cfg"], "gft_step_s": med["gft"], "gft_vs_cfg_step_time": ratios[len(ratios) // 2]}


def measure_peak_in_subprocess(args, vocab: int, objective: str) -> int:
    cmd = [sys.executable, __file__, "--_peak", objective, "--vocabs", str(vocab), "--model", args.model,
           "--preset", args.preset, "--grid", str(args.grid), "--batch", str(args.batch), "--loss", args.loss,
           "--device", args.device, "--threads", str(args.threads)]
    # Fixed mmap threshold: every block ≥ 64 KiB is its own mapping and goes back to the OS when freed, so the
    # resident set follows the live tensors and its high-water mark is the step's peak.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"peak-memory subprocess failed:\n{proc.stderr}")
    return int(proc.stdout.strip().splitlines()[-1])


def peak_of_one_step(args, vocab: int, objective: str) -> int:
    """Peak memory of one optimizer step above what is live before it (after a warm-up step)."""
    import gc

    step = make_step(args, vocab, objective)
    step()  # warm-up: optimizer state, library workspaces, code pages
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    _reset_peak_rss()
    base = _status_kb("VmRSS")
    step()
    return max(0, _status_kb("VmHWM") - base) * 1024


@cli_main
def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llamagen", choices=sorted(FAMILIES), help="model family")
    p.add_argument("--preset", default="GPT-tiny", help="model preset (default: GPT-tiny)")
    p.add_argument("--grid", type=positive(int), default=16, help="token grid side (default: 16 → 256 tokens)")
    p.add_argument("--batch", type=positive(int), default=16, help="batch size (default: 16)")
    p.add_argument("--repeats", type=positive(int), default=9, help="timed steps per variant (median) (default: 9)")
    p.add_argument("--vocabs", type=bounded(int, min=2), nargs="+", default=[1024, 16384], help="vocabulary sizes")
    p.add_argument("--loss", default="fused", choices=["fused", "naive"], help="CE implementation (default: fused)")
    p.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=bounded(int, min=0, max=4096), default=0, help="torch CPU threads (0: default)")
    p.add_argument("--quick", action="store_true", help="smaller batch and fewer repeats: under a minute on a CPU")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--_peak", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._peak:
        print(peak_of_one_step(args, args.vocabs[0], args._peak))
        return
    if args.quick:
        args.batch, args.repeats = min(args.batch, 8), min(args.repeats, 5)
    if args.batch <= 0 or args.repeats <= 0:
        raise GFTError("--batch and --repeats must be positive")
    rows = {}
    for vocab in args.vocabs:
        r = measure_time(args, vocab)
        mem = {name: measure_peak_in_subprocess(args, vocab, name) for name in ("cfg", "gft")}
        r.update(cfg_peak_mb=mem["cfg"] / 2**20, gft_peak_mb=mem["gft"] / 2**20,
                 gft_vs_cfg_peak_memory=mem["gft"] / max(1, mem["cfg"]))
        rows[vocab] = r
        print(f"vocab {vocab:6d} ({args.loss}): step CFG {r['cfg_step_s'] * 1e3:7.1f} ms | GFT "
              f"{r['gft_step_s'] * 1e3:7.1f} ms | ratio {r['gft_vs_cfg_step_time']:.3f} || peak CFG "
              f"{r['cfg_peak_mb']:7.1f} MB | GFT {r['gft_peak_mb']:7.1f} MB | ratio {r['gft_vs_cfg_peak_memory']:.3f}",
              flush=True)
    result = {"model": args.model, "preset": args.preset, "grid": args.grid, "tokens": args.grid * args.grid,
              "batch": args.batch, "loss": args.loss, "device": args.device, "torch_threads": torch.get_num_threads()}
    main_vocab = 16384 if 16384 in rows else max(rows)
    for vocab, r in rows.items():
        suffix = "" if vocab == main_vocab else f"_v{vocab}"
        for k, v in r.items():
            result[k + suffix] = round(v, 4)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
