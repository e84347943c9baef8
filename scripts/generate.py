#!/usr/bin/env python
"""Sample class-conditional images from a trained model and write a PNG grid (one row per class) + an .npz.

    python scripts/generate.py --beta 0.5                     # GFT: one forward pass per token
    python scripts/generate.py --beta 1.0 0.5 0.25 0.1        # one figure comparing β side by side
    python scripts/generate.py --cfg-scale 2.0 --ckpt runs/llamagen-cfg/model   # CFG: two passes per token
    python scripts/generate.py --model masked --beta 0.5 --steps 16           # masked model: 16 parallel steps
    python scripts/generate.py --model var --beta 0.5          # VAR: one pass per scale
    python scripts/generate.py --model mar --beta 0.5 --steps 16   # continuous MAR: diffusion head per token
    python scripts/generate.py --model var --ckpt runs/var-cfg/model --cfg 1.5   # VAR's CFG (1+t)c - t*u, ramped

Outputs (in --out): grid.png and samples.npz (images uint8 (N,H,W,3), labels) for a single setting; for several
β values, beta_comparison.png plus one samples_beta<β>.npz per value.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from gft_tokens.data.shapes import CLASS_NAMES
from gft_tokens.errors import GFTError, cli_main
from gft_tokens.io import atomic_file, check_writable
from gft_tokens.models import FAMILIES, family_of, load_model
from gft_tokens.sampling import check_tokenizer_matches, sample_images
from gft_tokens.tokenizers import load_tokenizer
from gft_tokens.viz import grid, labelled_panels, png_bytes, to_uint8


def _fmt(x: float) -> str:
    return f"{x:g}"


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llamagen", choices=sorted(FAMILIES), help="model family (default: llamagen)")
    p.add_argument("--ckpt", help="exported model dir (default: runs/<model>/model, where training writes it)")
    p.add_argument("--tokenizer", help="tokenizer dir (default: the one recorded in the model's config)")
    p.add_argument("--beta", type=float, nargs="+", help="GFT β value(s) in [0, 1]; several give a comparison figure")
    p.add_argument("--cfg-scale", type=float, help="sample with classifier-free guidance at this scale (2 passes)")
    p.add_argument("--cfg", type=float, help="VAR only: classifier-free guidance (1+t)c - t*u at strength t (2 passes)")
    p.add_argument("--cfg-schedule", choices=["linear", "constant"],
                   help="VAR and masked models: the guidance ramps linearly over the scales / decoding steps to --cfg "
                        "(VAR) or --cfg-scale (masked, MAR's ramp), or stays constant (default: linear for VAR, "
                        "constant for masked)")
    p.add_argument("--classes", type=int, nargs="+", help="class ids, one row each (default: all classes)")
    p.add_argument("--n-per-class", type=int, default=8, help="samples per class (default: 8)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default: 1.0)")
    p.add_argument("--top-k", type=int, default=0, help="top-k filtering, 0 = off (default: 0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus filtering, 1 = off (default: 1.0)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--batch-size", type=int, default=256, help="images per sampling batch (default: 256)")
    p.add_argument("--out", help="output dir (default: samples/<model>)")
    p.add_argument("--scale", type=int, default=4, help="upscale factor of the PNG (default: 4)")
    m = p.add_argument_group("masked family (--model masked; see gft_tokens.sampling.masked; --steps also mar)")
    m.add_argument("--steps", type=int, help="parallel decoding steps, 1 .. number of tokens (default: 16)")
    m.add_argument("--order", choices=["confidence", "random"],
                   help="which masked tokens to fix each step: MAR's random order or MaskGIT's confidence (default: random)")
    m.add_argument("--choice-temperature", type=float,
                   help="Gumbel noise on the confidence order, annealed to 0 (default: 4.5)")
    m.add_argument("--clip-x0", type=float, help="mar only: clamp the diffusion head's x0 estimates to ±this "
                                                 "(normalised latents; default: no clipping, as MAR)")
    args = p.parse_args(argv)
    family_args = {k: v for k, v in dict(steps=args.steps, order=args.order, choice_temperature=args.choice_temperature,
                                         clip_x0=args.clip_x0).items() if v is not None}

    ckpt = Path(args.ckpt or f"runs/{args.model}/model")
    if not ckpt.exists():
        hint = f" — train one first: deepspeed scripts/train_{args.model}.py" if not args.ckpt else ""
        raise GFTError(f"checkpoint directory {str(ckpt)!r} does not exist{hint}")
    model = load_model(ckpt)
    record = model.config.tokenizer or {}
    tok_path = args.tokenizer or record.get("path")
    if not tok_path:
        raise GFTError(f"{ckpt} records no tokenizer path; pass --tokenizer")
    tokenizer = load_tokenizer(tok_path)
    check_tokenizer_matches(model, tokenizer)
    family = family_of(model.config.model_type)
    misplaced = [k for k in family_args if not ((family == "masked" and k != "clip_x0")
                                                or (family == "mar" and k in ("steps", "clip_x0")))]
    if misplaced:
        flag = "--" + misplaced[0].replace("_", "-")
        only = "mar" if misplaced[0] == "clip_x0" else "masked"
        raise GFTError(f"{flag} applies to {only} models only; {ckpt} holds a {family} model")

    num_classes = model.config.num_classes
    classes = args.classes if args.classes is not None else list(range(num_classes))
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise GFTError(f"class id {bad[0]} is outside [0, {num_classes}) (the model has {num_classes} classes)")
    if args.n_per_class <= 0:
        raise GFTError(f"--n-per-class must be positive, got {args.n_per_class}")
    for b in args.beta or []:
        if not 0.0 <= b <= 1.0:  # NaN fails too
            raise GFTError(f"beta must lie in [0, 1], got {b}")
    # the CFG argument is family-specific: LlamaGen's scale w (u + w(c - u)), VAR's strength t ((1 + t)c - t*u)
    guide_key, guide_value, guide_extra = "cfg_scale", args.cfg_scale, {}
    if family_of(model.config.model_type) == "var":
        if args.cfg_scale is not None:
            raise GFTError("VAR takes --cfg t (its (1 + t)c - t*u convention, ramped over the scales by "
                           "--cfg-schedule), not --cfg-scale")
        guide_key, guide_value = "cfg", args.cfg
        guide_extra = {"cfg_schedule": args.cfg_schedule or "linear"} if args.cfg is not None else {}
    elif args.cfg is not None:
        raise GFTError("--cfg is VAR's guidance strength; this model takes --cfg-scale")
    elif args.cfg_schedule is not None:
        if family_of(model.config.model_type) not in ("masked", "mar"):
            raise GFTError(f"--cfg-schedule applies to VAR and masked models; {ckpt} holds a "
                           f"{family_of(model.config.model_type)} model")
        if args.cfg_scale is not None:
            guide_extra = {"cfg_schedule": args.cfg_schedule}
    if args.beta and guide_value is not None and len(args.beta) > 1:
        raise GFTError(f"give either several --beta values or --{guide_key.replace('_', '-')}, not both")
    if args.beta is None and guide_value is None and model.beta_embedder is not None:
        args.beta = [1.0]
    settings = [{"beta": b, guide_key: guide_value} for b in args.beta] if args.beta else [{guide_key: guide_value}]

    labels = torch.tensor([c for c in classes for _ in range(args.n_per_class)], dtype=torch.long)
    names = [CLASS_NAMES[c] if num_classes == len(CLASS_NAMES) and c < len(CLASS_NAMES) else str(c) for c in classes]
    out = Path(args.out or f"samples/{args.model}")
    check_writable(out)  # before sampling, not after
    panels, titles = [], []
    for setting in settings:
        g = torch.Generator().manual_seed(args.seed)
        t0 = time.time()
        chunks = [sample_images(model, tokenizer, labels[i:i + args.batch_size], generator=g,
                                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, **setting,
                                **family_args, **guide_extra)
                  for i in range(0, len(labels), args.batch_size)]
        images = to_uint8(torch.cat(chunks))
        dt = time.time() - t0
        title = " ".join(f"{k}={_fmt(v)}" for k, v in setting.items() if v is not None) or "conditional"
        panel = grid(images, nrow=args.n_per_class, scale=args.scale)
        panels.append(panel)
        titles.append(title.replace("beta", "β").replace("cfg_scale", "cfg"))
        suffix = "" if len(settings) == 1 else f"_beta{_fmt(setting['beta'])}"
        with atomic_file(out / f"samples{suffix}.npz") as fh:
            np.savez_compressed(fh, images=images, labels=labels.numpy(), classes=np.array(classes),
                                beta=np.float32(setting.get("beta") if setting.get("beta") is not None else np.nan),
                                **{guide_key: np.float32(setting[guide_key] if setting[guide_key] is not None else np.nan)})
        print(f"{title}: {len(images)} images in {dt:.1f}s ({len(images) / dt:.1f} img/s) -> {out / f'samples{suffix}.npz'}")
    row_h = panels[0].height // len(classes)
    if len(settings) == 1:
        fig = labelled_panels(panels, titles, names, row_h)
        target = out / "grid.png"
    else:
        fig = labelled_panels(panels, titles, names, row_h)
        target = out / "beta_comparison.png"
    with atomic_file(target) as fh:
        fh.write(png_bytes(fig))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
