"""LTH14/mar checkpoints: MAR-B/L/H (``checkpoint-last.pth``: ``model`` and ``model_ema``) and the KL-16 VAE.

``mar``: the released training checkpoint holds ``model``, ``model_ema`` (what MAR evaluates; read by default,
``--key model`` for the raw weights), ``optimizer``, ``epoch`` and ``args``. Its names map onto
:class:`~gft_tokens.families.mar.model.MARModel`:

* ``class_emb.weight`` (1000 rows) + ``fake_latent`` (MAR's unconditional vector) → ``class_emb.embedding_table``
  (row 1000 is our null class); ``encoder_pos_embed_learned`` / ``decoder_pos_embed_learned`` /
  ``diffusion_pos_embed_learned`` (1, L, D) → ``encoder_pos_embed`` / ``decoder_pos_embed`` /
  ``diffusion_pos_embed`` (L, D); ``mask_token`` (1, 1, D) → (1, D); the timm blocks, ``z_proj``, ``z_proj_ln``,
  norms and ``decoder_embed`` keep their names;
* ``diffloss.net.*`` (SimpleMLPAdaLN) keeps its names, except the last projection: MAR's head learns the reverse
  variance too (``learn_sigma``: ``final_layer.linear`` outputs 2·C, ε then the variance interpolation v), ours
  predicts ε only and samples with the fixed posterior variance β̃_t. The ε half (rows 0 … C−1) is kept and the v
  half dropped (said in the import's notes). The ε predictions are exactly MAR's; a draw equals MAR's where v = −1
  (MAR's learned log-variance is (v+1)/2·log β_t + (1−v)/2·log β̃_t, so −1 is β̃_t); elsewhere the step noise
  differs in scale only.

The transformer's head counts are not in the weights: they come from the preset whose sizes match (MAR-B/L/H), or
``n_head`` for other sizes. The token grid is √(rows of ``diffusion_pos_embed_learned``), the latent width the
input of ``z_proj`` (MAR's ``vae_embed_dim × patch_size²``; patch size 1 only), ``buffer_size`` the extra rows of
the encoder's position table. A zero-initialised β embedder is added (``beta_embed``, default on).

``mar-kl16``: MAR's ``AutoencoderKL`` (``kl16.ckpt``, ``{"model": …}``) into
:class:`gft_tokens.tokenizers.LDMKLTokenizer`: the encoder's separate attention ``q``/``k``/``v`` convs are stacked
into one ``qkv`` conv; the LDM training loss (``loss.*``: discriminator, LPIPS) is dropped.
"""

from __future__ import annotations

import math
import re

import torch

from ...conditioning import add_fresh_beta_embedder
from ...errors import GFTError
from ...importing import Converted, Importer

_SIZES = ("MAR-B", "MAR-L", "MAR-H")
_ARG_MODELS = {"mar_base": "MAR-B", "mar_large": "MAR-L", "mar_huge": "MAR-H"}


def mar_layout(*, encoder_dim: int, encoder_depth: int, decoder_dim: int, decoder_depth: int, seq_len: int,
               buffer_size: int = 64, token_dim: int = 16, num_classes: int = 1000, diffloss_w: int = 1024,
               diffloss_d: int = 3, mlp_ratio: float = 4.0, learn_sigma: bool = True) -> dict[str, tuple]:
    """Key → shape of the official ``MAR`` state dict (``models/mar.py``, patch size 1, learned positions)."""
    e, d, w = encoder_dim, decoder_dim, diffloss_w
    out = {"class_emb.weight": (num_classes, e), "fake_latent": (1, e), "z_proj.weight": (e, token_dim),
           "z_proj.bias": (e,), "z_proj_ln.weight": (e,), "z_proj_ln.bias": (e,),
           "encoder_pos_embed_learned": (1, seq_len + buffer_size, e)}

    def blocks(prefix, n, c):
        h = int(c * mlp_ratio)
        for i in range(n):
            b = f"{prefix}.{i}."
            out.update({b + "norm1.weight": (c,), b + "norm1.bias": (c,), b + "attn.qkv.weight": (3 * c, c),
                        b + "attn.qkv.bias": (3 * c,), b + "attn.proj.weight": (c, c), b + "attn.proj.bias": (c,),
                        b + "norm2.weight": (c,), b + "norm2.bias": (c,), b + "mlp.fc1.weight": (h, c),
                        b + "mlp.fc1.bias": (h,), b + "mlp.fc2.weight": (c, h), b + "mlp.fc2.bias": (c,)})

    blocks("encoder_blocks", encoder_depth, e)
    out.update({"encoder_norm.weight": (e,), "encoder_norm.bias": (e,), "decoder_embed.weight": (d, e),
                "decoder_embed.bias": (d,), "mask_token": (1, 1, d),
                "decoder_pos_embed_learned": (1, seq_len + buffer_size, d)})
    blocks("decoder_blocks", decoder_depth, d)
    out.update({"decoder_norm.weight": (d,), "decoder_norm.bias": (d,), "diffusion_pos_embed_learned": (1, seq_len, d)})
    n = "diffloss.net."
    out.update({n + "time_embed.mlp.0.weight": (w, 256), n + "time_embed.mlp.0.bias": (w,),
                n + "time_embed.mlp.2.weight": (w, w), n + "time_embed.mlp.2.bias": (w,),
                n + "cond_embed.weight": (w, d), n + "cond_embed.bias": (w,),
                n + "input_proj.weight": (w, token_dim), n + "input_proj.bias": (w,)})
    for i in range(diffloss_d):
        b = f"{n}res_blocks.{i}."
        out.update({b + "in_ln.weight": (w,), b + "in_ln.bias": (w,), b + "mlp.0.weight": (w, w),
                    b + "mlp.0.bias": (w,), b + "mlp.2.weight": (w, w), b + "mlp.2.bias": (w,),
                    b + "adaLN_modulation.1.weight": (3 * w, w), b + "adaLN_modulation.1.bias": (3 * w,)})
    c_out = 2 * token_dim if learn_sigma else token_dim
    out.update({n + "final_layer.linear.weight": (c_out, w), n + "final_layer.linear.bias": (c_out,),
                n + "final_layer.adaLN_modulation.1.weight": (2 * w, w),
                n + "final_layer.adaLN_modulation.1.bias": (2 * w,)})
    return out


def _count(state, prefix: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(rf"^{re.escape(prefix)}\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def inspect_mar(state: dict[str, torch.Tensor]) -> dict:
    """Sizes of an official MAR state dict, checked key by key against :func:`mar_layout`."""
    from ..var.importer import compare_layout

    for key in ("z_proj.weight", "class_emb.weight", "diffusion_pos_embed_learned", "encoder_pos_embed_learned",
                "decoder_embed.weight", "diffloss.net.input_proj.weight", "diffloss.net.final_layer.linear.weight"):
        if key not in state:
            raise GFTError(f"not a MAR state dict: it has no {key!r} (its keys start: {', '.join(sorted(state)[:4])} …)")
    e, token_dim = state["z_proj.weight"].shape
    seq_len = state["diffusion_pos_embed_learned"].shape[1]
    grid = math.isqrt(seq_len)
    if grid * grid != seq_len:
        raise GFTError(f"diffusion_pos_embed_learned has {seq_len} positions, not a square token grid")
    token_out = state["diffloss.net.final_layer.linear.weight"].shape[0]
    if token_out not in (token_dim, 2 * token_dim):
        raise GFTError(f"the DiffLoss head outputs {token_out} channels for {token_dim}-channel tokens (expected "
                       f"{token_dim} or {2 * token_dim} with learn_sigma)")
    info = {"encoder_dim": e, "encoder_depth": _count(state, "encoder_blocks"),
            "decoder_dim": state["decoder_embed.weight"].shape[0], "decoder_depth": _count(state, "decoder_blocks"),
            "seq_len": seq_len, "grid_size": grid, "token_dim": token_dim,
            "buffer_size": state["encoder_pos_embed_learned"].shape[1] - seq_len,
            "num_classes": state["class_emb.weight"].shape[0],
            "diffloss_w": state["diffloss.net.input_proj.weight"].shape[0],
            "diffloss_d": _count(state, "diffloss.net.res_blocks"), "learn_sigma": token_out == 2 * token_dim}
    mlp = state.get("encoder_blocks.0.mlp.fc1.weight")
    ratio = mlp.shape[0] / e if mlp is not None else 4.0
    compare_layout(state, mar_layout(**{k: v for k, v in info.items() if k != "grid_size"}, mlp_ratio=ratio),
                   f"MAR (encoder {e} x {info['encoder_depth']}, decoder {info['decoder_dim']} x "
                   f"{info['decoder_depth']})")
    info["mlp_ratio"] = ratio
    return info


def _recorded(obj) -> dict | None:
    """The training ``args`` (argparse.Namespace) stored beside the weights, as a dict (None if absent)."""
    args = obj.get("args") if isinstance(obj, dict) else None
    return dict(vars(args)) if args is not None and hasattr(args, "__dict__") else None


def convert_mar(state: dict[str, torch.Tensor], preset: str | None = None, n_head: int | None = None,
                beta_embed: bool = True, tokenizer: str | None = None, num_sampling_steps: int | None = None,
                recorded: dict | None = None) -> Converted:
    """Official MAR (``model`` or ``model_ema``) → :class:`~gft_tokens.families.mar.model.MARModel`."""
    from .model import PRESETS, MARConfig, MARModel

    info = inspect_mar(state)
    notes = []
    sizes = ("encoder_dim", "encoder_depth", "decoder_dim", "decoder_depth")
    fits = [p for p in _SIZES if all(PRESETS[p][k] == info[k] for k in sizes)]
    if recorded and recorded.get("model") in _ARG_MODELS:
        named = _ARG_MODELS[recorded["model"]]
        if preset is not None and preset != named:
            raise GFTError(f"the checkpoint's training args say model {recorded['model']} ({named}), not {preset}")
        preset = named
    if preset is not None:
        if preset not in PRESETS:
            raise GFTError(f"unknown MAR preset {preset!r}; known: {', '.join(PRESETS)}")
        if preset not in fits and not all(PRESETS[preset][k] == info[k] for k in sizes):
            raise GFTError(f"preset {preset} does not fit: the checkpoint has encoder {info['encoder_dim']} x "
                           f"{info['encoder_depth']}, decoder {info['decoder_dim']} x {info['decoder_depth']}"
                           + (f" (it fits {fits[0]})" if fits else ""))
        heads = (PRESETS[preset]["encoder_heads"], PRESETS[preset]["decoder_heads"])
        if n_head is not None and n_head not in heads:
            raise GFTError(f"preset {preset} has {heads[0]} heads, not {n_head}")
    elif n_head is not None:
        heads = (n_head, n_head)
        preset = None
    elif len(fits) == 1:
        preset = fits[0]
        heads = (PRESETS[preset]["encoder_heads"], PRESETS[preset]["decoder_heads"])
    else:
        raise GFTError(f"no MAR preset fits encoder {info['encoder_dim']} x {info['encoder_depth']}, decoder "
                       f"{info['decoder_dim']} x {info['decoder_depth']} (MAR-B/L/H); pass n_head (--n-head)")
    steps = num_sampling_steps
    if steps is None and recorded and str(recorded.get("num_sampling_steps", "")).isdigit():
        steps = int(recorded["num_sampling_steps"])
    steps = steps or 100
    record = {"type": "gft_ldm_kl_tokenizer", "latent_channels": info["token_dim"],
              "grid_size": [info["grid_size"]] * 2}
    if tokenizer is not None:
        from ...tokenizers import load_tokenizer

        desc = load_tokenizer(tokenizer).describe()
        if desc.get("latent_channels") != info["token_dim"] or list(desc["grid_size"]) != record["grid_size"]:
            raise GFTError(f"tokenizer {tokenizer} has {desc.get('latent_channels')} latent channels and grid "
                           f"{desc['grid_size']}, the checkpoint needs {info['token_dim']} and {record['grid_size']}")
        record = {**desc, "path": str(tokenizer)}
    config = MARConfig(encoder_dim=info["encoder_dim"], encoder_depth=info["encoder_depth"], encoder_heads=heads[0],
                       decoder_dim=info["decoder_dim"], decoder_depth=info["decoder_depth"], decoder_heads=heads[1],
                       mlp_ratio=info["mlp_ratio"], buffer_size=info["buffer_size"], num_classes=info["num_classes"],
                       token_dim=info["token_dim"], grid_size=info["grid_size"], diffloss_d=info["diffloss_d"],
                       diffloss_w=info["diffloss_w"], num_sampling_steps=steps, diffusion_batch_mul=4,
                       beta_embed=beta_embed, pos_init="normal", preset=preset, tokenizer=record)
    rename = {"encoder_pos_embed_learned": "encoder_pos_embed.weight",
              "decoder_pos_embed_learned": "decoder_pos_embed.weight",
              "diffusion_pos_embed_learned": "diffusion_pos_embed.weight", "mask_token": "mask_token.weight"}
    out = {}
    for k, v in state.items():
        if k in ("class_emb.weight", "fake_latent"):
            continue
        out[rename.get(k, k)] = v.reshape(v.shape[-2], v.shape[-1]) if k in rename else v
    out["class_emb.embedding_table.weight"] = torch.cat([state["class_emb.weight"], state["fake_latent"]])
    c = info["token_dim"]
    if info["learn_sigma"]:
        for part in ("weight", "bias"):
            key = f"diffloss.net.final_layer.linear.{part}"
            out[key] = state[key][:c].clone()
        notes.append(f"DiffLoss head: kept the ε half of final_layer.linear ({c} of {2 * c} outputs); MAR's learned "
                     f"variance half is dropped — this head samples with the fixed posterior variance (MAR's "
                     f"learned range at v = -1)")
    notes.insert(0, f"{preset or 'custom size'}: encoder {info['encoder_dim']} x {info['encoder_depth']} "
                    f"({heads[0]} heads), decoder {info['decoder_dim']} x {info['decoder_depth']}, DiffLoss "
                    f"{info['diffloss_d']} x {info['diffloss_w']}, {info['grid_size']}x{info['grid_size']} tokens of "
                    f"{c} channels, {info['num_classes']} classes (fake_latent is the null class), "
                    f"{steps} diffusion steps")
    if beta_embed:
        add_fresh_beta_embedder(out, notes, config.encoder_dim, config.beta_freq_dim, config.initializer_range)
    return Converted(MARModel, config, out, notes)


def convert_mar_kl16(state: dict[str, torch.Tensor], image_size: int = 256) -> Converted:
    """MAR's KL-16 ``AutoencoderKL`` → :class:`gft_tokens.tokenizers.LDMKLTokenizer` (q/k/v stacked into qkv)."""
    from ...tokenizers.ldm import LDMKLConfig, LDMKLTokenizer

    for key in ("encoder.conv_in.weight", "quant_conv.weight", "post_quant_conv.weight", "decoder.conv_in.weight"):
        if key not in state:
            raise GFTError(f"not an LDM AutoencoderKL state dict: it has no {key!r} "
                           f"(its keys start: {', '.join(sorted(state)[:4])} …)")
    if "quantize.embedding.weight" in state:
        raise GFTError("this autoencoder has a codebook (quantize.embedding): it is a VQ model, not MAR's KL VAE "
                       "(VAR's VQVAE imports with --format var-vqvae)")
    notes = []
    loss = [k for k in state if k.startswith("loss.")]
    if loss:
        notes.append(f"dropped {len(loss)} training-loss entries (loss.*: discriminator, LPIPS)")
    state = {k: v for k, v in state.items() if not k.startswith("loss.")}
    ch = state["encoder.conv_in.weight"].shape[0]
    levels = _count(state, "encoder.down")
    mult = []
    for i in range(levels):
        w = state.get(f"encoder.down.{i}.block.0.conv1.weight")
        if w is None or w.shape[0] % ch:
            raise GFTError(f"encoder.down.{i}.block.0 is missing or not a multiple of conv_in's {ch} channels")
        mult.append(w.shape[0] // ch)
    blocks = _count(state, "encoder.down.0.block")
    e = state["post_quant_conv.weight"].shape[0]
    if state["quant_conv.weight"].shape[:2] != (2 * e, 2 * e):
        raise GFTError(f"quant_conv is {tuple(state['quant_conv.weight'].shape)}; a KL VAE with {e} latent channels "
                       f"has ({2 * e}, {2 * e}, 1, 1) (use_variational)")
    out = {}
    for k, v in state.items():
        m = re.match(r"^(.*\.(?:attn\.\d+|attn_1))\.([qkv])\.(weight|bias)$", k)
        if m is None:
            out[k] = v
        elif m.group(2) == "q":
            p, part = m.group(1), m.group(3)
            try:
                out[f"{p}.qkv.{part}"] = torch.cat([state[f"{p}.{c}.{part}"] for c in "qkv"])
            except KeyError as exc:
                raise GFTError(f"attention block {p} lacks {exc.args[0]}") from None
    config = LDMKLConfig(image_size=image_size, in_channels=state["encoder.conv_in.weight"].shape[1], channels=ch,
                         channel_mult=mult, num_res_blocks=blocks, latent_channels=e)
    notes.insert(0, f"KL VAE: ch {ch}, ch_mult {mult}, {blocks} res blocks, {e} latent channels, downsample "
                    f"{config.downsample} ({image_size}px → {image_size // config.downsample}x"
                    f"{image_size // config.downsample}), latent scale 0.2325 (MAR's)")
    return Converted(LDMKLTokenizer, config, out, notes)


MAR_IMPORTER = Importer(
    "mar", "MAR-B/L/H with its DiffLoss head (checkpoint-last.pth; model_ema by default, --key model)", convert_mar,
    {"preset": "MAR-B, MAR-L or MAR-H (default: from the training args or the shapes)",
     "n_head": "attention heads, for a size that matches no preset",
     "beta_embed": "add a zero-initialised β embedder (GFT input; default true)",
     "tokenizer": "tokenizer directory to record in the model (mar-kl16 import)",
     "num_sampling_steps": "diffusion steps per token at sampling (default: the training args' or 100)"},
    default_key="model_ema", recorded=_recorded,
)
KL16_IMPORTER = Importer(
    "mar-kl16", "MAR's KL-16 VAE (kl16.ckpt) into an LDMKLTokenizer", convert_mar_kl16,
    {"image_size": "image side the tokenizer is used at (default 256)"},
)
