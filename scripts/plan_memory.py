#!/usr/bin/env python
"""Plan GPU memory for training a model with DeepSpeed: model states per ZeRO stage and offload option, plus
activations for the chosen micro-batch — without allocating the model.

    python scripts/plan_memory.py --model GPT-3B --gpus 8 --nodes 1
    python scripts/plan_memory.py --model GPT-XXL --gpus 8 --nodes 2 --micro-batch 32 --grid-size 16 --json

Parameters are counted on the meta device (and the largest layer, which ZeRO-3 gathers whole). Model states for
ZeRO-2 and ZeRO-3 are DeepSpeed's own estimates (deepspeed.runtime.zero ... estimate_zero{2,3}_model_states_mem_needs,
16-bit training, ZeRO-3 with zero.Init as the training loop uses); stages 0 and 1 follow the same byte counts
(2 bytes/param 16-bit weights, 2 16-bit gradients, 16 bytes of fp32 gradients, master weights and Adam moments —
the last 16 partitioned by ZeRO-1). Activations are measured, not guessed: one transformer block, the embedding
stem and the output head run forward once on fake (shape-only) CPU tensors in the chosen dtype, and every tensor
autograd keeps for the backward pass is added up (storage by storage, parameters excluded). The attention kernel
is then the fused one (flash / memory-efficient: no seq x seq scores kept), as on GPUs. With
--grad-checkpointing only each block's input is kept, plus one block's activations while it is recomputed.
Not included: CUDA context and allocator fragmentation (budget a few GB), communication buckets, the GFT
unconditional pass (run without gradient; it holds one block's working set at a time).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

import torch

from gft_tokens.validate import ArgumentParser, bounded, positive
from gft_tokens.errors import GFTError, cli_main
from gft_tokens.families import build_config, get_family

PLANNED = ("llamagen",)  # families whose activation memory this planner models

GIB = 2**30


def count_parameters(model_class, config) -> tuple[int, str, int]:
    """(total parameters, name of the largest single module, its own parameters) from a meta-device model."""
    with torch.device("meta"):
        model = model_class(config)
    total = sum(p.numel() for p in model.parameters())
    name, largest = "", 0
    for mod_name, module in model.named_modules():
        n = sum(p.numel() for p in module.parameters(recurse=False))
        if n > largest:
            name, largest = mod_name, n
    return total, name, largest


@contextlib.contextmanager
def _default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _saved_bytes(fn, modules) -> int:
    """Bytes of the distinct storages autograd saves while ``fn()`` runs (parameters of ``modules`` excluded)."""
    params = {p.untyped_storage()._cdata for m in modules for p in m.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage._cdata not in params:
            seen[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def llamagen_activations(config, micro_batch: int, dtype: torch.dtype) -> dict[str, int]:
    """Bytes autograd keeps per micro-batch: the stem, one block, the head, and one block's input."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from gft_tokens.conditioning import BetaEmbedder
    from gft_tokens.families.llamagen.model import Block
    from gft_tokens.nn import Embedding, OutputHead, RMSNorm, rope_2d_table, rope_cis

    c = config
    b, s, d = micro_batch, c.max_seq_len - 1, c.dim  # the class token(s) + all image tokens but the last
    with FakeTensorMode(), _default_dtype(dtype):
        block = Block(c, 0, 0.0).train()
        cos, sin = rope_2d_table(c.grid_size, c.head_dim, c.rope_base, c.cls_token_num)
        x = torch.empty(b, s, d, requires_grad=True)
        per_block = _saved_bytes(lambda: block(x, rope_cis(cos[:s], sin[:s])), [block])

        tok, cls = Embedding(c.vocab_size, d), Embedding(c.num_classes + 1, d)
        beta_emb = BetaEmbedder(d, c.beta_freq_dim) if c.beta_embed else None
        drop = torch.nn.Dropout(c.token_dropout_p).train()
        codes = torch.zeros(b, s - c.prefix_len, dtype=torch.long)  # the prefix + these = s positions
        labels, beta = torch.zeros(b, dtype=torch.long), torch.rand(b)

        def stem():
            cond = cls(labels) + (beta_emb(beta) if beta_emb is not None else 0)
            return drop(torch.cat([cond[:, None].expand(-1, c.prefix_len, -1), tok(codes)], 1))

        stem_bytes = _saved_bytes(stem, [m for m in (tok, cls, beta_emb) if m is not None])

        norm, head = RMSNorm(d), OutputHead(d, c.vocab_size, zero_init=True)
        rows = b * s
        h, h_u = torch.empty(rows, d, requires_grad=True), torch.empty(rows, d)
        targets, mix = torch.zeros(rows, dtype=torch.long), torch.rand(rows, dtype=torch.float32)
        head_bytes = _saved_bytes(lambda: head(norm(h), targets=targets, hidden_u=h_u, beta=mix), [norm, head])
    block_input = b * s * d * torch.empty((), dtype=dtype).element_size()
    n = c.n_layer
    return {"stem": stem_bytes, "per_block": per_block, "head": head_bytes, "block_input": block_input,
            "total": stem_bytes + n * per_block + head_bytes,
            "total_grad_checkpointing": stem_bytes + n * block_input + per_block + head_bytes,
            "tokens": s, "micro_batch": b}


def model_state_rows(total: int, largest: int, gpus: int, nodes: int) -> list[dict]:
    """Per-GPU and per-node CPU bytes of params + gradients + optimizer states for each ZeRO setup."""
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed logs its accelerator choice to stdout; keep --json clean
        return _model_state_rows(total, largest, gpus, nodes)


def _model_state_rows(total: int, largest: int, gpus: int, nodes: int) -> list[dict]:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    n = gpus * nodes
    rows = [
        {"stage": 0, "offload": "none", "gpu": 20 * total, "cpu": 0, "source": "same byte counts"},
        {"stage": 1, "offload": "none", "gpu": 4 * total + 16 * total // n, "cpu": 0, "source": "same byte counts"},
    ]
    for offload in (False, True):
        cpu, gpu = estimate_zero2_model_states_mem_needs(total, gpus, nodes, cpu_offload=offload)
        rows.append({"stage": 2, "offload": "optimizer" if offload else "none", "gpu": gpu, "cpu": cpu,
                     "source": "DeepSpeed estimate"})
    for opt, par, label in ((False, False, "none"), (True, False, "optimizer"), (True, True, "optimizer+params")):
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(total, largest, gpus, nodes, cpu_offload=opt,
                                                            cpu_offload_params=par, zero_init=True)
        rows.append({"stage": 3, "offload": label, "gpu": gpu, "cpu": cpu, "source": "DeepSpeed estimate"})
    return rows


def plan(model: str, gpus: int, nodes: int, micro_batch: int, gpu_memory: float, family: str = "llamagen",
         dtype: str = "bf16", **overrides) -> dict:
    if family not in PLANNED:
        raise GFTError(f"activation estimates are implemented for the {', '.join(PLANNED)} family only, not "
                       f"{family!r}")
    if gpus <= 0 or nodes <= 0 or micro_batch <= 0:
        raise GFTError("--gpus, --nodes and --micro-batch must be positive")
    config = build_config(family, model, **overrides)
    total, largest_name, largest = count_parameters(get_family(family).model_class, config)
    act = llamagen_activations(config, micro_batch, {"bf16": torch.bfloat16, "fp16": torch.float16,
                                                     "fp32": torch.float32}[dtype])
    rows = model_state_rows(total, largest, gpus, nodes)
    for r in rows:
        r["total"] = r["gpu"] + act["total"]
        r["total_grad_checkpointing"] = r["gpu"] + act["total_grad_checkpointing"]
        r["fits"] = r["total"] <= gpu_memory * GIB
        r["fits_grad_checkpointing"] = r["total_grad_checkpointing"] <= gpu_memory * GIB
    return {"model": model, "family": family, "params": total, "largest_layer": {"name": largest_name,
            "params": largest}, "gpus_per_node": gpus, "nodes": nodes, "gpu_memory_gib": gpu_memory,
            "dtype": dtype, "config": {k: getattr(config, k) for k in ("n_layer", "dim", "n_head", "vocab_size",
                                                                         "grid_size", "num_classes")},
            "activations": act, "rows": rows}


def format_table(p: dict) -> str:
    a, g = p["activations"], lambda x: f"{x / GIB:.2f}"
    lines = [
        f"{p['model']}: {p['params']:,} parameters (largest layer {p['largest_layer']['name']}: "
        f"{p['largest_layer']['params']:,}); {p['gpus_per_node']} GPU(s) x {p['nodes']} node(s) of "
        f"{p['gpu_memory_gib']:g} GiB",
        f"activations per GPU, micro-batch {a['micro_batch']} x {a['tokens']} tokens, {p['dtype']}: {g(a['total'])} GiB "
        f"(stem {g(a['stem'])} + {p['config']['n_layer']} blocks x {g(a['per_block'])} + head {g(a['head'])}); "
        f"with --grad-checkpointing {g(a['total_grad_checkpointing'])} GiB",
        "",
        "| ZeRO | offload          | states/GPU GiB | CPU/node GiB | total/GPU GiB | fits | +grad ckpt GiB | fits | source |",
        "|------|------------------|---------------:|-------------:|--------------:|------|---------------:|------|--------|",
    ]
    for r in p["rows"]:
        lines.append(f"| {r['stage']}    | {r['offload']:16s} | {g(r['gpu']):>14s} | {g(r['cpu']):>12s} | "
                     f"{g(r['total']):>13s} | {'yes' if r['fits'] else 'no':4s} | "
                     f"{g(r['total_grad_checkpointing']):>14s} | {'yes' if r['fits_grad_checkpointing'] else 'no':4s} | "
                     f"{r['source']} |")
    return "\n".join(lines)


@cli_main
def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model preset, e.g. GPT-3B")
    parser.add_argument("--family", default="llamagen", help="model family (default: llamagen, the only one planned)")
    parser.add_argument("--gpus", type=positive(int), default=8, help="GPUs per node (default: 8)")
    parser.add_argument("--nodes", type=positive(int), default=1, help="nodes (default: 1)")
    parser.add_argument("--micro-batch", type=positive(int), default=16, help="micro-batch per GPU (default: 16, as the "
                                                                      "GFT GPT-3B fine-tune)")
    parser.add_argument("--grid-size", type=positive(int), default=24, help="token grid side (default: 24, 384px with VQ-16)")
    parser.add_argument("--vocab-size", type=bounded(int, min=2), default=16384, help="codebook size (default: 16384)")
    parser.add_argument("--num-classes", type=positive(int), default=1000, help="classes (default: 1000)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="training precision")
    parser.add_argument("--gpu-memory", type=bounded(float, gt=0), default=80.0, help="GiB per GPU for the 'fits' column")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = parser.parse_args(argv)
    result = plan(args.model, args.gpus, args.nodes, args.micro_batch, args.gpu_memory, family=args.family,
                  dtype=args.dtype, grid_size=args.grid_size, vocab_size=args.vocab_size,
                  num_classes=args.num_classes)
    print(json.dumps(result, indent=2) if args.json else format_table(result))


if __name__ == "__main__":
    main()
