"""FoundationVision/VAR checkpoints: the official key layout of VAR-dN and of its multi-scale VQVAE, and their checks.

The released files (``var_d16.pth`` … ``var_d30.pth``, ``var_d36.pth``, ``vae_ch160v4096z32.pth``) are raw state
dicts. VAR-dN has width 64·N, N heads, attention with l2-normalised q/k (``scale_mul_1H11``), per-block AdaLN
(``ada_lin.1``) or one shared AdaLN (``shared_ada_lin.1`` + per-block ``ada_gss``, the d36-s model), a class
table of 1001 rows (row 1000 is the null class) and a head over the VAE's 4096 codes; ``pos_1LC`` has one row per
token of all scales (680 for 256px, 2240 for 512px). The VAE is the LDM-style conv encoder/decoder (``ch`` 160,
``ch_mult`` 1,1,2,2,4, fused-qkv attention) with a 4096 x 32 codebook and four partially shared φ convolutions.

:func:`inspect_var` / :func:`inspect_vqvae` read the sizes from a state dict and check every key and shape
against :func:`var_layout` / :func:`vqvae_layout`, naming what differs.

The ``var`` format converts VAR-dN into :class:`gft_tokens.families.var.model.VAR`, whose parameters are VAR's one to one
(``pos_start`` / ``pos_1LC`` / ``lvl_embed`` live under ``pos.``; the recomputable buffers ``lvl_1L``,
``attn_bias_for_masking`` and ``zero_k_bias`` are dropped). The transformer reads its inputs through the VQVAE's
codebook and φ convolutions (VAR's ``idxBl_to_var_input``), so ``vqvae=`` (the released VAE file, or its state
dict) is required: its ``quantize.embedding`` and ``quantize.quant_resi.qresi_ls.*`` become the model's frozen
``quantizer.*`` buffers. A zero-initialised β embedder is added (``beta_embed``, default on), so a GFT fine-tune
starts exactly at the published model. ``var-vqvae`` converts the VAE into
:class:`gft_tokens.tokenizers.VARVQVAE` (:mod:`gft_tokens.tokenizers.ldm`: the LDM encoder/decoder with attention
and VAR's quantizer, the official parameter names), the tokenizer an imported VAR decodes with.
"""

from __future__ import annotations

import re

import torch

from ...conditioning import add_fresh_beta_embedder
from ...errors import GFTError
from ...importing import Converted, Importer

PATCH_NUMS = {
    256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
    1024: (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64),
}


def var_layout(depth: int, *, shared_aln: bool = False, attn_l2_norm: bool = True,
               patch_nums=PATCH_NUMS[256], num_classes: int = 1000, vocab: int = 4096, cvae: int = 32,
               buffers: bool = True) -> dict[str, tuple[int, ...]]:
    """Key → shape of the official ``VAR`` state dict built by ``build_vae_var(depth=depth, ...)``."""
    c, h, L = 64 * depth, depth, sum(p * p for p in patch_nums)
    out: dict[str, tuple[int, ...]] = {"pos_start": (1, 1, c), "pos_1LC": (1, L, c)}
    if buffers:
        out.update({"lvl_1L": (1, L), "attn_bias_for_masking": (1, 1, L, L)})
    out.update({"word_embed.weight": (c, cvae), "word_embed.bias": (c,), "class_emb.weight": (num_classes + 1, c),
                "lvl_embed.weight": (len(patch_nums), c)})
    if shared_aln:
        out.update({"shared_ada_lin.1.weight": (6 * c, c), "shared_ada_lin.1.bias": (6 * c,)})
    for i in range(depth):
        b = f"blocks.{i}."
        if attn_l2_norm:
            out[b + "attn.scale_mul_1H11"] = (1, h, 1, 1)
        out.update({b + "attn.q_bias": (c,), b + "attn.v_bias": (c,), b + "attn.mat_qkv.weight": (3 * c, c),
                    b + "attn.proj.weight": (c, c), b + "attn.proj.bias": (c,),
                    b + "ffn.fc1.weight": (4 * c, c), b + "ffn.fc1.bias": (4 * c,),
                    b + "ffn.fc2.weight": (c, 4 * c), b + "ffn.fc2.bias": (c,)})
        if buffers:
            out[b + "attn.zero_k_bias"] = (c,)
        if shared_aln:
            out[b + "ada_gss"] = (1, 1, 6, c)
        else:
            out.update({b + "ada_lin.1.weight": (6 * c, c), b + "ada_lin.1.bias": (6 * c,)})
    out.update({"head_nm.ada_lin.1.weight": (2 * c, c), "head_nm.ada_lin.1.bias": (2 * c,),
                "head.weight": (vocab, c), "head.bias": (vocab,)})
    return out


VAR_BUFFERS = re.compile(r"^(lvl_1L|attn_bias_for_masking|blocks\.\d+\.attn\.zero_k_bias)$")


def _res(prefix: str, c_in: int, c_out: int) -> dict[str, tuple[int, ...]]:
    out = {f"{prefix}.norm1.weight": (c_in,), f"{prefix}.norm1.bias": (c_in,),
           f"{prefix}.conv1.weight": (c_out, c_in, 3, 3), f"{prefix}.conv1.bias": (c_out,),
           f"{prefix}.norm2.weight": (c_out,), f"{prefix}.norm2.bias": (c_out,),
           f"{prefix}.conv2.weight": (c_out, c_out, 3, 3), f"{prefix}.conv2.bias": (c_out,)}
    if c_in != c_out:
        out.update({f"{prefix}.nin_shortcut.weight": (c_out, c_in, 1, 1), f"{prefix}.nin_shortcut.bias": (c_out,)})
    return out


def _attn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.norm.weight": (c,), f"{prefix}.norm.bias": (c,), f"{prefix}.qkv.weight": (3 * c, c, 1, 1),
            f"{prefix}.qkv.bias": (3 * c,), f"{prefix}.proj_out.weight": (c, c, 1, 1), f"{prefix}.proj_out.bias": (c,)}


def _conv(prefix: str, c_out: int, c_in: int, k: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (c_out, c_in, k, k), f"{prefix}.bias": (c_out,)}


def vqvae_layout(*, ch: int = 160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks: int = 2, z_channels: int = 32,
                 vocab: int = 4096, n_phi: int = 4, n_scales: int = 10, quant_conv_ks: int = 3,
                 in_channels: int = 3, buffers: bool = True) -> dict[str, tuple[int, ...]]:
    """Key → shape of the official ``VQVAE`` (``build_vae_var``: ch 160, share_quant_resi 4) state dict."""
    out: dict[str, tuple[int, ...]] = {}
    last = len(ch_mult) - 1
    out.update(_conv("encoder.conv_in", ch, in_channels, 3))
    c_in = ch
    for i, m in enumerate(ch_mult):
        for j in range(num_res_blocks):
            out.update(_res(f"encoder.down.{i}.block.{j}", c_in, ch * m))
            c_in = ch * m
            if i == last:
                out.update(_attn(f"encoder.down.{i}.attn.{j}", c_in))
        if i != last:
            out.update(_conv(f"encoder.down.{i}.downsample.conv", c_in, c_in, 3))
    out.update(_res("encoder.mid.block_1", c_in, c_in) | _attn("encoder.mid.attn_1", c_in)
               | _res("encoder.mid.block_2", c_in, c_in))
    out.update({"encoder.norm_out.weight": (c_in,), "encoder.norm_out.bias": (c_in,)}
               | _conv("encoder.conv_out", z_channels, c_in, 3))
    c_in = ch * ch_mult[-1]
    out.update(_conv("decoder.conv_in", c_in, z_channels, 3) | _res("decoder.mid.block_1", c_in, c_in)
               | _attn("decoder.mid.attn_1", c_in) | _res("decoder.mid.block_2", c_in, c_in))
    for i in reversed(range(len(ch_mult))):
        for j in range(num_res_blocks + 1):
            out.update(_res(f"decoder.up.{i}.block.{j}", c_in, ch * ch_mult[i]))
            c_in = ch * ch_mult[i]
            if i == last:
                out.update(_attn(f"decoder.up.{i}.attn.{j}", c_in))
        if i != 0:
            out.update(_conv(f"decoder.up.{i}.upsample.conv", c_in, c_in, 3))
    out.update({"decoder.norm_out.weight": (c_in,), "decoder.norm_out.bias": (c_in,)}
               | _conv("decoder.conv_out", in_channels, c_in, 3))
    if buffers:
        out["quantize.ema_vocab_hit_SV"] = (n_scales, vocab)
    for k in range(n_phi):
        out.update(_conv(f"quantize.quant_resi.qresi_ls.{k}", z_channels, z_channels, 3))
    out["quantize.embedding.weight"] = (vocab, z_channels)
    out.update(_conv("quant_conv", z_channels, z_channels, quant_conv_ks)
               | _conv("post_quant_conv", z_channels, z_channels, quant_conv_ks))
    return out


def compare_layout(state: dict[str, torch.Tensor], layout: dict[str, tuple], what: str,
                   optional=re.compile(r"^$")) -> None:
    """Raise a :class:`GFTError` naming keys that are missing, unexpected or of another shape than ``layout``."""
    missing = sorted(k for k in layout.keys() - state.keys() if not optional.match(k))
    unexpected = sorted(state.keys() - layout.keys())
    differ = [f"{k} {tuple(state[k].shape)} (expected {layout[k]})" for k in sorted(layout.keys() & state.keys())
              if tuple(state[k].shape) != tuple(layout[k])]
    parts = []
    if differ:
        parts.append(f"{len(differ)} keys differ in shape: " + "; ".join(differ[:4]))
    if missing:
        parts.append(f"missing {len(missing)}: " + ", ".join(missing[:4]))
    if unexpected:
        parts.append(f"unexpected {len(unexpected)}: " + ", ".join(unexpected[:4]))
    if parts:
        raise GFTError(f"the checkpoint does not match {what}: " + " | ".join(parts))


def inspect_var(state: dict[str, torch.Tensor]) -> dict:
    """Sizes of an official VAR state dict, checked key by key against :func:`var_layout`."""
    for key in ("class_emb.weight", "pos_1LC", "head.weight", "lvl_embed.weight"):
        if key not in state:
            raise GFTError(f"not a VAR state dict: it has no {key!r} (its keys start: {', '.join(sorted(state)[:4])} …)")
    depths = {int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))}
    depth = max(depths) + 1 if depths else 0
    c = state["class_emb.weight"].shape[1]
    if depth == 0 or c != 64 * depth:
        raise GFTError(f"VAR-dN has width 64·N; this checkpoint has {depth} blocks and width {c}")
    L, n_scales = state["pos_1LC"].shape[1], state["lvl_embed.weight"].shape[0]
    matches = [r for r, p in PATCH_NUMS.items() if sum(x * x for x in p) == L and len(p) == n_scales]
    if not matches:
        raise GFTError(f"pos_1LC has {L} positions over {n_scales} scales, which fits none of the released patch "
                       f"schedules ({', '.join(f'{r}px: {sum(x * x for x in p)}' for r, p in PATCH_NUMS.items())})")
    info = {"depth": depth, "width": c, "heads": depth, "shared_aln": "shared_ada_lin.1.weight" in state,
            "attn_l2_norm": "blocks.0.attn.scale_mul_1H11" in state, "resolution": matches[0],
            "patch_nums": PATCH_NUMS[matches[0]], "num_classes": state["class_emb.weight"].shape[0] - 1,
            "vocab_size": state["head.weight"].shape[0], "cvae": state["word_embed.weight"].shape[1]
            if "word_embed.weight" in state else 32}
    layout = var_layout(depth, shared_aln=info["shared_aln"], attn_l2_norm=info["attn_l2_norm"],
                        patch_nums=info["patch_nums"], num_classes=info["num_classes"], vocab=info["vocab_size"],
                        cvae=info["cvae"])
    compare_layout(state, layout, f"VAR-d{depth}", optional=VAR_BUFFERS)  # buffers are recomputable
    return info


def inspect_vqvae(state: dict[str, torch.Tensor]) -> dict:
    """Sizes of an official VAR VQVAE state dict, checked key by key against :func:`vqvae_layout`."""
    for key in ("encoder.conv_in.weight", "quantize.embedding.weight", "quant_conv.weight"):
        if key not in state:
            raise GFTError(f"not a VAR VQVAE state dict: it has no {key!r} "
                           f"(its keys start: {', '.join(sorted(state)[:4])} …)")
    ch = state["encoder.conv_in.weight"].shape[0]
    levels = sorted({int(m.group(1)) for k in state if (m := re.match(r"^encoder\.down\.(\d+)\.", k))})
    mult = []
    for i in levels:
        key = f"encoder.down.{i}.block.0.conv1.weight"
        if key not in state:
            raise GFTError(f"not a VAR VQVAE state dict: it has no {key!r}")
        mult.append(state[key].shape[0] // ch)
    blocks = len({m.group(1) for k in state if (m := re.match(r"^encoder\.down\.0\.block\.(\d+)\.", k))})
    phis = {int(m.group(1)) for k in state if (m := re.match(r"^quantize\.quant_resi\.qresi_ls\.(\d+)\.", k))}
    if not phis:
        raise GFTError("only the partially shared φ layout of the released VAE (quantize.quant_resi.qresi_ls.K) is "
                       "supported")
    vocab, z = state["quantize.embedding.weight"].shape
    hit = state.get("quantize.ema_vocab_hit_SV")
    info = {"ch": ch, "ch_mult": mult, "num_res_blocks": blocks, "z_channels": z, "vocab_size": vocab,
            "n_phi": max(phis) + 1, "quant_conv_ks": state["quant_conv.weight"].shape[-1],
            "n_scales": hit.shape[0] if hit is not None else len(PATCH_NUMS[256])}
    layout = vqvae_layout(ch=ch, ch_mult=mult, num_res_blocks=blocks, z_channels=z, vocab=vocab, n_phi=info["n_phi"],
                          n_scales=info["n_scales"], quant_conv_ks=info["quant_conv_ks"])
    compare_layout(state, layout, f"the VAR VQVAE (ch {ch}, ch_mult {mult})",
                   optional=re.compile(r"^quantize\.ema_vocab_hit_SV$"))
    return info


def _vqvae_state(vqvae) -> dict[str, torch.Tensor]:
    if vqvae is None:
        raise GFTError("the VAR transformer reads its inputs through the VQVAE's codebook and φ convs: pass the "
                       "released VAE too (vqvae=PATH, or --vqvae vae_ch160v4096z32.pth)")
    if isinstance(vqvae, dict):
        return vqvae
    from ...importing import extract_state_dict, load_checkpoint_file

    return extract_state_dict(load_checkpoint_file(vqvae), where=str(vqvae))


def convert_var(state: dict[str, torch.Tensor], vqvae=None, beta_embed: bool = True,
                tokenizer: str | None = None) -> Converted:
    """Official VAR-dN (+ its VQVAE's quantizer) → :class:`gft_tokens.families.var.model.VAR` with VAR's names."""
    from .model import VAR, VARConfig

    info = inspect_var(state)
    vae = _vqvae_state(vqvae)
    vinfo = inspect_vqvae(vae)
    if (vinfo["vocab_size"], vinfo["z_channels"]) != (info["vocab_size"], info["cvae"]):
        raise GFTError(f"the VQVAE (codebook {vinfo['vocab_size']} x {vinfo['z_channels']}) does not fit VAR-d"
                       f"{info['depth']} (head over {info['vocab_size']} codes, word_embed from {info['cvae']} dims)")
    if vinfo["n_scales"] != len(info["patch_nums"]):
        raise GFTError(f"the VQVAE was trained for {vinfo['n_scales']} scales, VAR-d{info['depth']} has "
                       f"{len(info['patch_nums'])}")
    n_phi = vinfo["n_phi"]
    if tokenizer is not None:  # the tokenizer to decode with must be this VAE at this schedule
        from ...tokenizers import load_tokenizer

        desc = load_tokenizer(tokenizer).describe()
        want = {"type": "gft_var_vqvae", "codebook_size": info["vocab_size"], "scales": list(info["patch_nums"])}
        bad = [f"{k} {desc.get(k)} (needs {v})" for k, v in want.items() if desc.get(k) != v]
        if bad:
            raise GFTError(f"tokenizer {tokenizer} does not fit VAR-d{info['depth']}: " + "; ".join(bad)
                           + " — import the VAE with --format var-vqvae at the model's image size")
    config = VARConfig(depth=info["depth"], shared_aln=info["shared_aln"], attn_l2_norm=info["attn_l2_norm"],
                       num_classes=info["num_classes"], vocab_size=info["vocab_size"],
                       scales=list(info["patch_nums"]), cvae=info["cvae"], quant_resi=0.5,
                       share_quant_resi=1 if n_phi == 1 else n_phi, beta_embed=beta_embed,
                       preset=f"d{info['depth']}" + ("-s" if info["shared_aln"] else ""),
                       tokenizer={"type": "gft_var_vqvae", "codebook_size": info["vocab_size"],
                                  "grid_size": [info["patch_nums"][-1]] * 2, "scales": list(info["patch_nums"]),
                                  **({"path": tokenizer} if tokenizer else {})})
    moved = {"pos_start": "pos.pos_start", "pos_1LC": "pos.pos_1LC", "lvl_embed.weight": "pos.lvl_embed.weight"}
    out = {moved.get(k, k): v for k, v in state.items() if not VAR_BUFFERS.match(k)}
    notes = [f"VAR-d{info['depth']}: width {info['width']}, {info['heads']} heads, scales {list(info['patch_nums'])}"
             f" ({info['resolution']}px), {info['num_classes']} classes, vocabulary {info['vocab_size']}"]
    dropped = sorted(k for k in state if VAR_BUFFERS.match(k))
    if dropped:
        notes.append(f"dropped {len(dropped)} recomputable buffers (lvl_1L, attn_bias_for_masking, zero_k_bias)")
    out["quantizer.embedding"] = vae["quantize.embedding.weight"]
    out["quantizer.resi_weight"] = torch.stack([vae[f"quantize.quant_resi.qresi_ls.{i}.weight"] for i in range(n_phi)])
    out["quantizer.resi_bias"] = torch.stack([vae[f"quantize.quant_resi.qresi_ls.{i}.bias"] for i in range(n_phi)])
    out["quantizer.loaded"] = torch.tensor(True)
    notes.append(f"inputs through the VQVAE's codebook {tuple(out['quantizer.embedding'].shape)} and {n_phi} φ convs "
                 f"(frozen quantizer.* buffers)")
    if beta_embed:
        add_fresh_beta_embedder(out, notes, config.embed_dim, config.beta_freq_dim, config.std)
    return Converted(VAR, config, out, notes)


def _parse_scales(scales) -> list[int] | None:
    if scales is None or isinstance(scales, (list, tuple)):
        return None if scales is None else [int(s) for s in scales]
    try:
        return [int(s) for s in str(scales).split(",") if s.strip()]
    except ValueError:
        raise GFTError(f"scales must be comma-separated integers such as 1,2,3,4,5,6,8,10,13,16, got {scales!r}") from None


def convert_var_vqvae(state: dict[str, torch.Tensor], image_size: int = 256, scales=None) -> Converted:
    """Official VAR VQVAE → :class:`gft_tokens.tokenizers.VARVQVAE` (the same names; ``ema_vocab_hit_SV``, a
    training statistic, is dropped). The VAE itself does not fix the scale schedule: ``image_size`` picks VAR's
    (256 → 1 … 16, 512 → 1 … 32), or ``scales`` gives one ending at the token grid."""
    from ...tokenizers.ldm import VARVQVAE, VARVQVAEConfig

    info = inspect_vqvae(state)
    down = 2 ** (len(info["ch_mult"]) - 1)
    chosen = _parse_scales(scales)
    if chosen is None:
        if image_size not in PATCH_NUMS:
            raise GFTError(f"VAR has scale schedules for image sizes {sorted(PATCH_NUMS)}, not {image_size}; give "
                           f"the scales (--scales 1,2,...,{image_size // down})")
        chosen = list(PATCH_NUMS[image_size])
    if chosen[-1] * down != image_size:
        raise GFTError(f"scales {chosen} end at a {chosen[-1]}x{chosen[-1]} grid, i.e. {chosen[-1] * down}px "
                       f"images with this VAE (downsample {down}), not {image_size}px")
    if "quantize.ema_vocab_hit_SV" in state and state["quantize.ema_vocab_hit_SV"].shape[0] != len(chosen):
        raise GFTError(f"the VQVAE was trained with {state['quantize.ema_vocab_hit_SV'].shape[0]} scales, the "
                       f"schedule {chosen} has {len(chosen)}")
    n_phi = info["n_phi"]
    config = VARVQVAEConfig(image_size=image_size, channels=info["ch"], channel_mult=info["ch_mult"],
                            num_res_blocks=info["num_res_blocks"], codebook_size=info["vocab_size"],
                            codebook_dim=info["z_channels"], scales=chosen, quant_resi=0.5,
                            share_quant_resi=1 if n_phi == 1 else n_phi, quant_conv_ks=info["quant_conv_ks"])
    out = {k: v for k, v in state.items() if k != "quantize.ema_vocab_hit_SV"}
    notes = [f"VAR VQVAE: ch {info['ch']}, ch_mult {info['ch_mult']}, codebook {info['vocab_size']} x "
             f"{info['z_channels']}, {n_phi} φ convs, scales {chosen} ({image_size}px)"]
    if "quantize.ema_vocab_hit_SV" in state:
        notes.append("dropped the training statistic quantize.ema_vocab_hit_SV")
    return Converted(VARVQVAE, config, out, notes)


VAR_IMPORTER = Importer("var", "VAR-dN transformer (var_d16.pth … var_d36.pth) with the quantizer of its VQVAE "
                                  "(--vqvae)", convert_var,
                           {"vqvae": "the released VQVAE file (vae_ch160v4096z32.pth) or its state dict; required",
                            "beta_embed": "add a zero-initialised β embedder (GFT input; default true)",
                            "tokenizer": "tokenizer directory to record in the model"})
VQVAE_IMPORTER = Importer("var-vqvae", "VAR's multi-scale VQVAE (vae_ch160v4096z32.pth) into a VARVQVAE tokenizer",
                          convert_var_vqvae,
                          {"image_size": "image side: picks VAR's scale schedule (256 default, 512)",
                           "scales": "scale schedule, comma-separated (default: VAR's for image_size)"})
