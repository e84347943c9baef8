"""Released checkpoints end to end (VAR's VQVAE, MAR + KL-16, LlamaGen training args): random official-layout
weights converted by the importers and checked against functional re-implementations of the official forward
passes written here (VAR ``models/vqvae.py``/``basic_vae.py``/``quant.py``; MAR ``models/mar.py``,
``models/diffloss.py``, ``models/vae.py``, ``diffusion/``)."""

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import script_main
from gft_tokens import GFTError
from gft_tokens.families import load_model
from gft_tokens.families.var.importer import PATCH_NUMS, var_layout, vqvae_layout
from gft_tokens.importers import convert_state_dict, import_checkpoint
from gft_tokens.tokenizers import load_tokenizer


def rand_state(layout, seed, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in layout.items():
        v = torch.randn(s, generator=g) * scale
        if ("norm" in k or k.endswith("_ln.weight")) and k.endswith(".weight") and len(s) == 1:
            v = v + 1.0  # GroupNorm / LayerNorm gains around 1, so the signal survives the stack
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------------------------
# The LDM encoder/decoder, functionally (VAR's basic_vae.py; MAR's vae.py with separate q/k/v)
# ---------------------------------------------------------------------------------------------------------------
def ldm_stage(sd, h, side):
    def gn(x, p):
        return F.group_norm(x, 32, sd[p + ".weight"], sd[p + ".bias"], 1e-6)

    def conv(x, p, stride=1, pad=1):
        return F.conv2d(x, sd[p + ".weight"], sd[p + ".bias"], stride, pad)

    def res(x, p):
        y = conv(F.silu(gn(conv(F.silu(gn(x, p + ".norm1")), p + ".conv1"), p + ".norm2")), p + ".conv2")
        return (conv(x, p + ".nin_shortcut", pad=0) if p + ".nin_shortcut.weight" in sd else x) + y

    def attn(x, p):
        n = gn(x, p + ".norm")
        B, C, H, W = x.shape
        if p + ".qkv.weight" in sd:  # VAR: fused, q/k/v stacked on the channel axis
            q, k, v = conv(n, p + ".qkv", pad=0).reshape(B, 3, C, H, W).unbind(1)
        else:  # LDM
            q, k, v = (conv(n, f"{p}.{c}", pad=0) for c in "qkv")
        w = torch.softmax(torch.bmm(q.reshape(B, C, -1).permute(0, 2, 1), k.reshape(B, C, -1)) * C ** -0.5, dim=2)
        out = torch.bmm(v.reshape(B, C, -1), w.permute(0, 2, 1)).reshape(B, C, H, W)
        return x + conv(out, p + ".proj_out", pad=0)

    def has_attn(p):
        return p + ".norm.weight" in sd

    def mid(x):
        x = res(x, f"{side}.mid.block_1")
        return res(attn(x, f"{side}.mid.attn_1"), f"{side}.mid.block_2")

    key = "down" if side == "encoder" else "up"
    levels = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith(f"{side}.{key}."))
    h = conv(h, f"{side}.conv_in")
    if side == "decoder":
        h = mid(h)
    order = range(levels) if side == "encoder" else reversed(range(levels))
    for i in order:
        j = 0
        while f"{side}.{key}.{i}.block.{j}.conv1.weight" in sd:
            h = res(h, f"{side}.{key}.{i}.block.{j}")
            if has_attn(f"{side}.{key}.{i}.attn.{j}"):
                h = attn(h, f"{side}.{key}.{i}.attn.{j}")
            j += 1
        if f"{side}.down.{i}.downsample.conv.weight" in sd and side == "encoder":
            h = conv(F.pad(h, (0, 1, 0, 1)), f"{side}.down.{i}.downsample.conv", stride=2, pad=0)
        if f"{side}.up.{i}.upsample.conv.weight" in sd and side == "decoder":
            h = conv(F.interpolate(h, scale_factor=2, mode="nearest"), f"{side}.up.{i}.upsample.conv")
    if side == "encoder":
        h = mid(h)
    return conv(F.silu(gn(h, f"{side}.norm_out")), f"{side}.conv_out")


# ---------------------------------------------------------------------------------------------------------------
# VAR's VQVAE (vqvae.py + quant.py)
# ---------------------------------------------------------------------------------------------------------------
def _phi(sd, h, si, K):
    n = len({k.split(".")[3] for k in sd if k.startswith("quantize.quant_resi.qresi_ls.")})
    ticks = np.linspace(1 / 3 / n, 1 - 1 / 3 / n, n)
    k = int(np.argmin(np.abs(ticks - si / (K - 1))))
    conv = F.conv2d(h, sd[f"quantize.quant_resi.qresi_ls.{k}.weight"], sd[f"quantize.quant_resi.qresi_ls.{k}.bias"],
                    padding=1)
    return h * 0.5 + conv * 0.5


def official_vqvae_encode(sd, x, patch_nums):
    """img_to_idxBl: f = quant_conv(encoder(x)); f_to_idxBl_or_fhat with the L2 lookup."""
    ks = sd["quant_conv.weight"].shape[-1]
    f = F.conv2d(ldm_stage(sd, x, "encoder"), sd["quant_conv.weight"], sd["quant_conv.bias"], padding=ks // 2)
    B, C, H, W = f.shape
    emb = sd["quantize.embedding.weight"]
    f_rest, out, K = f.clone(), [], len(patch_nums)
    for si, pn in enumerate(patch_nums):
        z = (F.interpolate(f_rest, size=(pn, pn), mode="area") if si != K - 1 else f_rest).permute(0, 2, 3, 1)
        z = z.reshape(-1, C)
        d = z.pow(2).sum(1, keepdim=True) + emb.pow(2).sum(1) - 2 * z @ emb.T
        idx = d.argmin(1).view(B, pn, pn)
        h = emb[idx].permute(0, 3, 1, 2)
        if si != K - 1:
            h = F.interpolate(h, size=(H, W), mode="bicubic")
        f_rest = f_rest - _phi(sd, h, si, K)
        out.append(idx)
    return out


def official_vqvae_decode(sd, maps, patch_nums):
    """idxBl_to_img(same_shape=True, last_one=True): embed_to_fhat → post_quant_conv → decoder → clamp."""
    emb, K = sd["quantize.embedding.weight"], len(patch_nums)
    H = patch_nums[-1]
    f_hat = 0
    for si, m in enumerate(maps):
        h = emb[m].permute(0, 3, 1, 2)
        if si < K - 1:
            h = F.interpolate(h, size=(H, H), mode="bicubic")
        f_hat = f_hat + _phi(sd, h, si, K)
    ks = sd["post_quant_conv.weight"].shape[-1]
    z = F.conv2d(f_hat, sd["post_quant_conv.weight"], sd["post_quant_conv.bias"], padding=ks // 2)
    return ldm_stage(sd, z, "decoder").clamp(-1, 1)


SCALES_16 = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]  # VAR's 256px schedule, here on a 32px image (downsample 2)


@pytest.fixture(scope="module")
def official_vae():
    return rand_state(vqvae_layout(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, vocab=64), seed=3)


def test_var_vqvae_import_encodes_and_decodes_as_the_official(official_vae, tmp_path):
    vae = official_vae
    torch.save(vae, tmp_path / "vae.pth")
    converted = import_checkpoint("var-vqvae", tmp_path / "vae.pth", tmp_path / "tok", image_size=32,
                                  scales=",".join(map(str, SCALES_16)))
    assert any("ema_vocab_hit_SV" in n for n in converted.notes)
    tok = load_tokenizer(tmp_path / "tok").eval()
    assert tok.scales == SCALES_16 and tok.codebook_size == 64
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        ref_codes = official_vqvae_encode(vae, x, SCALES_16)
        codes = tok.encode(x)
        assert all(torch.equal(a, b) for a, b in zip(codes, ref_codes))
        maps = [torch.randint(64, (2, p, p), generator=g) for p in SCALES_16]
        ref = official_vqvae_decode(vae, maps, SCALES_16)
        err = (tok.decode(maps) - ref).abs().max().item()
    assert ref.std() > 0.05 and err < 1e-4, err
    # the tokenizer's f̂ path is what the imported VAR transformer reads (quantizer_state)
    assert torch.equal(tok.quantizer_state()["embedding"], vae["quantize.embedding.weight"])


def test_var_vqvae_import_errors(official_vae):
    with pytest.raises(GFTError, match="scale schedules for image sizes"):
        convert_state_dict("var-vqvae", official_vae, image_size=48)
    with pytest.raises(GFTError, match="end at a 16x16 grid"):
        convert_state_dict("var-vqvae", official_vae, image_size=64, scales="1,2,3,4,5,6,8,10,13,16")
    with pytest.raises(GFTError, match="not a VAR VQVAE"):
        convert_state_dict("var-vqvae", {"x.weight": torch.zeros(1)})


def test_imported_var_with_its_vqvae_generates_a_grid(official_vae, tmp_path, capsys):
    g = torch.Generator().manual_seed(5)
    sd = {k: torch.randn(s, generator=g) * 0.1
          for k, s in var_layout(1, patch_nums=PATCH_NUMS[256], num_classes=4, vocab=64, cvae=8).items()}
    torch.save(sd, tmp_path / "var_d1.pth")
    torch.save(official_vae, tmp_path / "vae.pth")
    script_main("import_checkpoint.py")(["--format", "var-vqvae", "--image-size", "32", "--scales",
                                      ",".join(map(str, SCALES_16)), str(tmp_path / "vae.pth"), str(tmp_path / "tok")])
    script_main("import_checkpoint.py")(["--format", "var", "--vqvae", str(tmp_path / "vae.pth"), "--tokenizer",
                                      str(tmp_path / "tok"), str(tmp_path / "var_d1.pth"), str(tmp_path / "m")])
    script_main("generate.py")(["--ckpt", str(tmp_path / "m"), "--classes", "0", "3", "--n-per-class", "2",
                             "--cfg-scale", "1.5", "--out", str(tmp_path / "s")])
    images = np.load(tmp_path / "s" / "samples.npz")["images"]
    assert images.shape == (4, 32, 32, 3) and images.std() > 0
    assert (tmp_path / "s" / "grid.png").stat().st_size > 0
