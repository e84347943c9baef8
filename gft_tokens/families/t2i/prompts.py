"""Prompts → images for a text-to-image model, and what ``scripts/generate.py --prompt/--prompts`` runs.

Prompts are encoded by the text encoder the model records (``config.text_encoder``), or one given, which must have
the model's caption width. A prompt longer than the model's caption length is refused, not truncated
(:meth:`gft_tokens.text_encoder.TextEncoder.encode`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ...conditioning import Caption
from ...errors import GFTError
from ...nn import sampling_generator
from ...fs import atomic_file, check_writable
from ...sampling import SamplingStats
from ...text_encoder import TextEncoder


def read_prompts(prompt: list[str] | None, prompts_file: str | None) -> list[str] | None:
    """The prompts of ``--prompt`` or ``--prompts FILE`` (one per line, blank lines skipped); None if neither."""
    if prompt and prompts_file:
        raise GFTError("give --prompt or --prompts FILE, not both")
    if prompts_file is None:
        return list(prompt) if prompt is not None else None
    path = Path(prompts_file)
    if not path.is_file():
        raise GFTError(f"prompts file {prompts_file!r} does not exist")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise GFTError(f"prompts file {prompts_file!r} holds no prompt")
    return lines


def check_condition_kind(family, prompts, classes) -> None:
    """Refuse prompts for a class-conditional model and class ids for a text-to-image one."""
    text = getattr(family, "text_conditioned", False)
    if prompts is not None and not text:
        raise GFTError(f"this is a class-conditional {family.name} model: it takes --classes, not prompts")
    if text and classes is not None:
        raise GFTError("this is a text-to-image model: it takes --prompt/--prompts, not class ids (--classes)")
    if text and prompts is None:
        raise GFTError("this is a text-to-image model: give --prompt \"a red star\" … or --prompts FILE")


def load_text_encoder(model, path: str | None = None) -> TextEncoder:
    record = model.config.text_encoder or {}
    path = path or record.get("path")
    if not path:
        raise GFTError("the model records no text encoder; pass --text-encoder")
    enc = TextEncoder.from_pretrained(path, max_length=model.config.caption_len)
    if enc.hidden_size != model.config.caption_dim:
        raise GFTError(f"text encoder {path} has width {enc.hidden_size}, the model takes captions of width "
                       f"{model.config.caption_dim}")
    return enc


def encode_prompts(model, prompts: list[str], text_encoder: str | None = None) -> Caption:
    enc = load_text_encoder(model, text_encoder)
    feats, mask = enc.encode(prompts, max_length=model.config.caption_len)
    return Caption(feats, mask)


def generate_prompt_grid(model, tokenizer, prompts: list[str], *, settings: list[dict], n_per_prompt: int, seed: int,
                         batch_size: int, out: str | Path, scale: int, text_encoder: str | None = None,
                         sampler_kwargs=lambda setting: setting, common: dict | None = None) -> Path:
    """One grid row per prompt (``n_per_prompt`` samples each) per guidance setting; writes grid.png (or
    beta_comparison.png) and samples*.npz to ``out``; prints one line per setting. Returns the figure's path."""
    from ...viz import grid, labelled_panels, png_bytes, to_uint8
    from .. import sample_images

    if n_per_prompt <= 0:
        raise GFTError(f"--n-per-class must be positive, got {n_per_prompt}")
    caption = encode_prompts(model, prompts, text_encoder)  # bad prompts refused before anything is written
    rows = torch.arange(len(prompts)).repeat_interleave(n_per_prompt)
    out = Path(out)
    check_writable(out)
    panels, titles = [], []
    for setting in settings:
        g = sampling_generator(model, seed)
        stats, t0 = SamplingStats(), time.time()
        chunks = [sample_images(model, tokenizer, Caption(caption.features[r], caption.mask[r]), generator=g,
                                stats=stats, **(common or {}), **sampler_kwargs(setting))
                  for r in rows.split(batch_size)]
        images = to_uint8(torch.cat(chunks))
        title = " ".join(f"{k}={v:g}" for k, v in setting.items() if v is not None) or "conditional"
        suffix = "" if len(settings) == 1 else f"_beta{setting['beta']:g}"
        with atomic_file(out / f"samples{suffix}.npz") as fh:
            np.savez_compressed(fh, images=images, prompts=np.array(prompts), rows=rows.numpy())
        print(f"{title}: {len(images)} images in {time.time() - t0:.1f}s ({stats.nfe_per_image:g} network "
              f"evaluations per image) -> {out / f'samples{suffix}.npz'}")
        panels.append(grid(images, nrow=n_per_prompt, scale=scale))
        titles.append(title.replace("beta", "β").replace("cfg_scale", "cfg"))
    fig = labelled_panels(panels, titles, list(prompts), panels[0].height // len(prompts))
    target = out / ("grid.png" if len(settings) == 1 else "beta_comparison.png")
    with atomic_file(target) as fh:
        fh.write(png_bytes(fig))
    print(f"wrote {target}")
    return target
