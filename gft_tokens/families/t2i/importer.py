"""Importer of FoundationVision/LlamaGen's text-to-image GPT (``t2i_XL_stage1_256.pt``, ``t2i_XL_stage2_512.pt``).

``llamagen-t2i``: LlamaGen's t2i network is its c2i transformer with a caption prefix, and our
:class:`~gft_tokens.families.t2i.model.T2ILlamaGen` uses the official names, so the weights map one to one:
``cls_embedding.cap_proj.fc1/fc2`` (the caption MLP), ``cls_embedding.uncond_embedding`` (the null caption, a
(caption_len, caption_dim) buffer there, a parameter here), ``tok_embeddings``, ``layers.N.*``, ``norm``, ``output``.
Read from the weights: the caption length (``uncond_embedding``'s rows, 120) and width (``fc1``'s input, 2048 for
FLAN-T5-XL), the vocabulary, and the preset (n_layer, dim, FFN width; n_head is not in the shapes). The token grid
is not: ``grid_size`` is required (16 for the 256px stage-1 file, 32 for the 512px stage-2 file, VQ-16), unless the
file stores its training ``args`` (``image_size // downsample_size``, ``gpt_model``, ``cls_token_num``).

Where LlamaGen's network differs from this toolkit's default t2i model, the config says so and the import equals
the official network exactly:

* ``caption_bias`` False: LlamaGen's caption MLP has no biases.
* ``null_caption_mask`` ``"caption"``: a dropped caption keeps its caption's padding mask — LlamaGen's CFG runs the
  null half (``uncond_embedding`` at every position) with the captions' ``emb_masks``, and its training keeps the
  dataset's mask when it drops a caption. (The default, ``"full"``, shows the null caption at every position.)

The rest already agrees: captions left-padded with zero features (sample_t2i.py; our text encoder pads left and
zeroes padded rows), the attention mask (causal; a padded caption position is seen by no other position, only by
itself), the RoPE table with caption_len zero rows before the grid, logits from the last caption position on.

A β embedder (GFT's input) is added with its output layer zero, as for the c2i import, so the imported model equals
the published one at every β. Sampling needs the captions' FLAN-T5-XL features: give a local FLAN-T5-XL directory
with ``text_encoder`` (recorded in the model; its width must be the checkpoint's) or ``--text-encoder`` at
generation time.
"""

from __future__ import annotations

import re

import torch

from ...errors import GFTError
from ...importing import Converted, Importer
from ..llamagen.importer import (GPT_IGNORED, _need, sized_config, _tokenizer_record, check_shapes,
                                 fields_from_args, fitting_presets, recorded_args, with_beta_embedder)

_LAYER = re.compile(r"^layers\.(\d+)\.")
WHAT = "LlamaGen t2i GPT"


def t2i_dims(state: dict[str, torch.Tensor]) -> dict:
    """Sizes readable from a LlamaGen t2i GPT state dict's shapes."""
    if "cls_embedding.embedding_table.weight" in state:
        raise GFTError("this is a class-conditional (c2i) LlamaGen checkpoint (it has cls_embedding.embedding_table); "
                       "import it with --format llamagen-gpt")
    tok = _need(state, "tok_embeddings.weight", WHAT)
    fc1 = _need(state, "cls_embedding.cap_proj.fc1.weight", WHAT)
    fc2 = _need(state, "cls_embedding.cap_proj.fc2.weight", WHAT)
    null = _need(state, "cls_embedding.uncond_embedding", WHAT)
    layers = sorted({int(m.group(1)) for k in state if (m := _LAYER.match(k))})
    if not layers:
        raise GFTError(f"not a {WHAT} state dict: no layers.N.* keys")
    qkv = _need(state, "layers.0.attention.wqkv.weight", WHAT)
    w1 = _need(state, "layers.0.feed_forward.w1.weight", WHAT)
    dim = tok.shape[1]
    if null.ndim != 2 or fc1.ndim != 2 or null.shape[1] != fc1.shape[1]:
        raise GFTError(f"the null caption (uncond_embedding {tuple(null.shape)}) and the caption MLP (cap_proj.fc1 "
                       f"{tuple(fc1.shape)}) disagree on the caption width")
    if fc1.shape[0] != dim or tuple(fc2.shape) != (dim, dim):
        raise GFTError(f"the caption MLP (cap_proj.fc1 {tuple(fc1.shape)}, fc2 {tuple(fc2.shape)}) does not map to "
                       f"the model width {dim}")
    return {"dim": dim, "vocab_size": tok.shape[0], "caption_len": null.shape[0], "caption_dim": null.shape[1],
            "n_layer": layers[-1] + 1, "ffn_hidden": w1.shape[0], "qkv_rows": qkv.shape[0]}


def _describe(dims: dict) -> str:
    return (f"n_layer {dims['n_layer']}, dim {dims['dim']}, FFN {dims['ffn_hidden']}, vocab {dims['vocab_size']}, "
            f"captions {dims['caption_len']} x {dims['caption_dim']}")


def _text_encoder_record(path: str | None, caption_dim: int, caption_len: int) -> dict | None:
    if path is None:
        return None
    from ...text_encoder import describe_text_encoder

    record = describe_text_encoder(path, caption_len)
    if record["hidden_size"] != caption_dim:
        raise GFTError(f"text encoder {path} has width {record['hidden_size']}, the checkpoint takes captions of "
                       f"width {caption_dim} (LlamaGen's t2i: FLAN-T5-XL, 2048)")
    return record


def convert_llamagen_t2i(state: dict[str, torch.Tensor], grid_size: int | None = None, preset: str | None = None,
                         n_head: int | None = None, beta_embed: bool = True, tokenizer: str | None = None,
                         text_encoder: str | None = None, recorded: dict | None = None) -> Converted:
    """``recorded``: the file's training args (a dict), which fill grid size and preset (hence n_head); an explicit
    option that contradicts them is refused."""
    from ..llamagen.model import PRESETS
    from .model import T2IConfig, T2ILlamaGen

    notes = []
    found = fields_from_args(recorded)  # what LlamaGen's train_t2i.py args say: grid, cls_token_num, preset
    for key, value in {"grid_size": grid_size, "preset": preset}.items():
        if value is not None and key in found and found[key] != value:
            raise GFTError(f"--{key.replace('_', '-')} {value} contradicts the checkpoint's training args "
                           f"({key} {found[key]}); drop the flag or fix it")
    if found:
        notes.append("read from the checkpoint's training args: " + ", ".join(f"{k} {v}" for k, v in found.items()))
    grid_size = grid_size if grid_size is not None else found.get("grid_size")
    preset = preset if preset is not None else found.get("preset")
    if grid_size is None:
        raise GFTError("grid_size is required: the token grid is not stored in the weights (LlamaGen t2i with "
                       "VQ-16: 16 for the 256px stage-1 checkpoint, 32 for the 512px stage-2 one)")
    if grid_size <= 0:
        raise GFTError(f"grid_size must be positive, got {grid_size}")
    if "grid_size" not in found:
        notes.append(f"token grid {grid_size}x{grid_size} as given (the file records no training args for it)")

    dropped = sorted(k for k in state if GPT_IGNORED.match(k))
    if dropped:
        notes.append(f"dropped {len(dropped)} non-weight entries ({', '.join(dropped[:3])})")
    state = {k: v for k, v in state.items() if not GPT_IGNORED.match(k)}
    dims = t2i_dims(state)
    if "cls_token_num" in found and found["cls_token_num"] != dims["caption_len"]:
        raise GFTError(f"the training args say cls_token_num {found['cls_token_num']}, the null caption has "
                       f"{dims['caption_len']} positions; LlamaGen's t2i prefix is the whole caption, so they must "
                       f"agree")
    caption_bias = "cls_embedding.cap_proj.fc1.bias" in state
    notes.append(f"read from the weights: captions of {dims['caption_len']} positions x {dims['caption_dim']} "
                 f"features (the prefix is the whole caption), vocabulary {dims['vocab_size']}")
    notes.append("LlamaGen's caption layout: left-padded captions with zero features at padding (as our text "
                 "encoder gives), padded positions hidden from every other position, caption MLP "
                 + ("with" if caption_bias else "without") + " biases (caption_bias), and a dropped caption (CFG's "
                 "null half, caption dropout) keeps its caption's padding mask (null_caption_mask 'caption')")
    notes.append("LlamaGen's uncond_embedding (a fixed buffer there) becomes the null caption; a fine-tune here "
                 "trains it like any weight")

    fits = fitting_presets(dims)
    common = dict(vocab_size=dims["vocab_size"], grid_size=grid_size, caption_len=dims["caption_len"],
                  caption_dim=dims["caption_dim"], caption_bias=caption_bias, null_caption_mask="caption",
                  beta_embed=beta_embed, tokenizer=_tokenizer_record(tokenizer, dims["vocab_size"], grid_size),
                  text_encoder=_text_encoder_record(text_encoder, dims["caption_dim"], dims["caption_len"]))
    if preset is not None and preset not in PRESETS and "preset" in found:
        raise GFTError(f"the training args name model {preset!r}, which is not a LlamaGen preset here "
                       f"({', '.join(PRESETS)})")
    config = sized_config(T2IConfig, dims, preset, n_head, fits, common, notes, describe=_describe)
    if text_encoder is None:
        notes.append("no text encoder recorded: sampling needs FLAN-T5-XL features, from a local directory given "
                     "to generate.py --text-encoder (or record it here with --text-encoder)")
    else:
        notes.append(f"text encoder {text_encoder} recorded (width {dims['caption_dim']}, captions of "
                     f"{dims['caption_len']} tokens)")
    state = with_beta_embedder(state, config, beta_embed, notes)
    check_shapes(T2ILlamaGen, config, state, _describe(dims), fits)
    return Converted(T2ILlamaGen, config, state, notes)


T2I_IMPORTER = Importer(
    "llamagen-t2i", "LlamaGen text-to-image GPT (t2i_XL_stage1_256.pt, t2i_XL_stage2_512.pt; FLAN-T5-XL captions)",
    convert_llamagen_t2i,
    {"grid_size": "token grid side (16 for the 256px stage-1 file, 32 for the 512px stage-2 file); required",
     "preset": "model preset (default: detected from the shapes)",
     "n_head": "attention heads, for a size that matches no preset",
     "beta_embed": "add a zero-initialised β embedder (GFT input) if the checkpoint has none (default true)",
     "tokenizer": "tokenizer directory to record in the model (its codebook and grid must fit)",
     "text_encoder": "local text-encoder directory (FLAN-T5-XL) to record in the model; its width must fit"},
    recorded=recorded_args,
)
