#!/usr/bin/env python
"""Sample class-conditional images from a trained model and write a PNG grid (one row per class) + an .npz.

    python scripts/generate.py --beta 0.5                     # GFT: one forward pass per token
    python scripts/generate.py --beta 1.0 0.5 0.25 0.1        # one figure comparing β side by side
    python scripts/generate.py --cfg-scale 2.0 --ckpt runs/llamagen-cfg/model   # CFG: two passes per token
    python scripts/generate.py --model masked --beta 0.5 --steps 16           # masked model: 16 parallel steps
    python scripts/generate.py --model var --beta 0.5          # VAR: one pass per scale
    python scripts/generate.py --model mar --beta 0.5 --steps 16   # continuous MAR: diffusion head per token
    python scripts/generate.py --model var --ckpt runs/var-cfg/model --cfg-scale 2.5   # VAR: CFG ramped over scales
    python scripts/generate.py --model t2i --prompt "a red star" "a blue ring in the top left" --beta 0.5

Outputs (in --out): grid.png and samples.npz (ADM's layout: arr_0 images uint8 (N,H,W,3), arr_1 labels) for a single setting; for several
β values, beta_comparison.png plus one samples_beta<β>.npz per value.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from gft_tokens.validate import ArgumentParser, bounded, nonnegative, positive
from gft_tokens.errors import GFTError, cli_main
from gft_tokens.families import FAMILIES, check_tokenizer_matches, family_of, get_family, load_model, sample_images
from gft_tokens.families.classes import model_class_names, resolve_classes
from gft_tokens.families.options import add_sampling_arguments, common_sampling, sampling_options
from gft_tokens.eval.npz import write_samples_npz
from gft_tokens.families.t2i.prompts import check_condition_kind, generate_prompt_grid, read_prompts
from gft_tokens.fs import atomic_file, check_writable
from gft_tokens.nn import sampling_generator
from gft_tokens.paths import shipped
from gft_tokens.sampling import SamplingStats
from gft_tokens.tokenizers import load_tokenizer
from gft_tokens.viz import grid, labelled_panels, png_bytes, to_uint8


def _fmt(x: float) -> str:
    return f"{x:g}"


@cli_main
def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llamagen", choices=sorted(FAMILIES),
                   help="model family of the default --ckpt (default: llamagen); a given --ckpt says its own")
    p.add_argument("--ckpt", help="exported model dir (default: runs/<model>/model, where training writes it)")
    p.add_argument("--tokenizer", help="tokenizer dir (default: the one recorded in the model's config)")
    p.add_argument("--beta", type=bounded(float, min=0, max=1), nargs="+", help="GFT β value(s) in [0, 1]; several give a comparison figure")
    p.add_argument("--cfg-scale", type=bounded(float, min=0),
                   help="classifier-free guidance scale w, u + w(c - u), for every family (2 passes; 1 = one pass)")
    p.add_argument("--cfg", type=bounded(float, min=-1), metavar="T",
                   help="the same in VAR's convention (1 + t)c - t*u: --cfg T is --cfg-scale 1+T")
    p.add_argument("--classes", nargs="+", metavar="CLASS",
                   help="classes by id or by name (the model's dataset record), one row each (default: all)")
    p.add_argument("--class", dest="class_name", metavar="NAME",
                   help="one class, by name or id (the same as --classes NAME)")
    p.add_argument("--prompt", nargs="+", help="text-to-image models: prompts, one row each")
    p.add_argument("--prompts", metavar="FILE", help="text-to-image models: a file of prompts, one per line")
    p.add_argument("--text-encoder", help="text encoder dir (default: the one recorded in a t2i model's config)")
    p.add_argument("--n-per-class", type=positive(int), default=8, help="samples per class (or per prompt; default: 8)")
    p.add_argument("--seed", type=nonnegative(int), default=0, help="random seed (default: 0)")
    p.add_argument("--batch-size", type=positive(int), default=256, help="images per sampling batch (default: 256)")
    p.add_argument("--out", help="output dir (default: samples/<model>)")
    p.add_argument("--scale", type=bounded(int, min=1, max=64), default=4, help="upscale factor of the PNG (default: 4)")
    p.add_argument("--threads", type=bounded(int, min=0, max=4096), default=0, help="torch CPU threads (default: 0, torch's default)")
    add_sampling_arguments(p)
    args = p.parse_args(argv)
    if args.threads < 0:
        raise GFTError(f"--threads must be at least 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)

    ckpt = Path(args.ckpt or f"runs/{args.model}/model")
    if not ckpt.exists():
        hint = f" — train one first: deepspeed {get_family(args.model).train_script}" if not args.ckpt else ""
        raise GFTError(f"checkpoint directory {str(ckpt)!r} does not exist{hint}")
    if args.cfg is not None and args.cfg_scale is not None:
        raise GFTError("give --cfg-scale w or --cfg t (= w - 1), not both")
    cfg_scale = 1.0 + args.cfg if args.cfg is not None else args.cfg_scale
    model = load_model(ckpt)
    family = family_of(model)
    record = model.config.tokenizer or {}
    tok_path = args.tokenizer or shipped(record.get("path"))
    if not tok_path:
        raise GFTError(f"{ckpt} records no tokenizer path; pass --tokenizer")
    tokenizer = load_tokenizer(tok_path)
    check_tokenizer_matches(model, tokenizer)
    options = sampling_options(args)
    if options["cfg_schedule"] is not None and cfg_scale is None:
        raise GFTError("--cfg-schedule shapes classifier-free guidance: give --cfg-scale too")
    family.sampling_kwargs(**options)  # refuses an option this family does not take, before sampling
    prompts = read_prompts(args.prompt, args.prompts)
    if prompts is not None or family.text_conditioned:
        check_condition_kind(family, prompts, args.classes)
        settings = [{"beta": b, "cfg_scale": cfg_scale} for b in args.beta] if args.beta else [{"cfg_scale": cfg_scale}]
        generate_prompt_grid(model, tokenizer, prompts, settings=settings, n_per_prompt=args.n_per_class,
                             seed=args.seed, batch_size=args.batch_size, out=args.out or f"samples/{family.name}",
                             scale=args.scale, text_encoder=args.text_encoder, common=common_sampling(args),
                             sampler_kwargs=lambda setting: family.sampling_kwargs(**setting, **options))
        return

    num_classes = model.config.num_classes
    class_names = model_class_names(model.config)
    if args.class_name is not None and args.classes is not None:
        raise GFTError("give --class NAME or --classes, not both")
    wanted = [args.class_name] if args.class_name is not None else args.classes
    classes = resolve_classes(wanted, class_names) if wanted is not None else list(range(num_classes))
    if args.n_per_class <= 0:
        raise GFTError(f"--n-per-class must be positive, got {args.n_per_class}")
    for b in args.beta or []:
        if not 0.0 <= b <= 1.0:  # NaN fails too
            raise GFTError(f"beta must lie in [0, 1], got {b}")
    if args.beta and cfg_scale is not None and len(args.beta) > 1:
        raise GFTError("give either several --beta values or --cfg-scale, not both")
    if args.beta is None and cfg_scale is None and model.beta_embedder is not None:
        args.beta = [1.0]
    settings = [{"beta": b, "cfg_scale": cfg_scale} for b in args.beta] if args.beta else [{"cfg_scale": cfg_scale}]

    labels = torch.tensor([c for c in classes for _ in range(args.n_per_class)], dtype=torch.long)
    names = [class_names[c] for c in classes]
    dataset = (model.config.dataset or {}).get("name") or ""
    out = Path(args.out or f"samples/{family.name}")
    check_writable(out)  # before sampling, not after
    panels, titles = [], []
    for setting in settings:
        g = sampling_generator(model, args.seed)
        t0 = time.time()
        kwargs = family.sampling_kwargs(**setting, **options)
        stats = SamplingStats()
        chunks = [sample_images(model, tokenizer, labels[i:i + args.batch_size], generator=g, stats=stats,
                                **common_sampling(args), **kwargs)
                  for i in range(0, len(labels), args.batch_size)]
        images = to_uint8(torch.cat(chunks))
        dt = time.time() - t0
        title = " ".join(f"{k}={_fmt(v)}" for k, v in setting.items() if v is not None) or "conditional"
        panel = grid(images, nrow=args.n_per_class, scale=args.scale)
        panels.append(panel)
        titles.append(title.replace("beta", "β").replace("cfg_scale", "cfg"))
        suffix = "" if len(settings) == 1 else f"_beta{_fmt(setting['beta'])}"
        write_samples_npz(out / f"samples{suffix}.npz", images, labels.numpy(), classes=np.array(classes),
                          class_names=np.array(names), dataset=np.array(dataset),
                          beta=np.float32(setting.get("beta") if setting.get("beta") is not None else np.nan),
                          cfg_scale=np.float32(setting["cfg_scale"] if setting["cfg_scale"] is not None else np.nan))
        print(f"{title}: {len(images)} images in {dt:.1f}s ({len(images) / dt:.1f} img/s, "
              f"{stats.nfe_per_image:g} network evaluations per image) -> {out / f'samples{suffix}.npz'}")
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
