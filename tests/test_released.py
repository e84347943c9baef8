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
    torch.save({k: v for k, v in official_vae.items() if k != "quantize.ema_vocab_hit_SV"}, tmp_path / "vae4.pth")
    import_checkpoint("var-vqvae", tmp_path / "vae4.pth", tmp_path / "tok6", image_size=16, scales="1,2,4,8")
    script_main("import_checkpoint.py")(["--format", "var", "--vqvae", str(tmp_path / "vae.pth"), "--tokenizer",
                                      str(tmp_path / "tok"), str(tmp_path / "var_d1.pth"), str(tmp_path / "m")])
    with pytest.raises(GFTError, match="does not fit VAR-d1: scales"):  # a tokenizer at another schedule
        convert_state_dict("var", sd, vqvae=official_vae, tokenizer=str(tmp_path / "tok6"))
    script_main("generate.py")(["--ckpt", str(tmp_path / "m"), "--classes", "0", "3", "--n-per-class", "2",
                             "--cfg-scale", "1.5", "--out", str(tmp_path / "s")])
    images = np.load(tmp_path / "s" / "samples.npz")["arr_0"]
    assert images.shape == (4, 32, 32, 3) and images.std() > 0
    assert (tmp_path / "s" / "grid.png").stat().st_size > 0


# ---------------------------------------------------------------------------------------------------------------
# MAR (models/mar.py sample_tokens, models/diffloss.py, diffusion/ with learn_sigma) and its KL-16 VAE
# ---------------------------------------------------------------------------------------------------------------
from gft_tokens.families.mar.importer import mar_layout  # noqa: E402

MAR_SIZES = dict(encoder_dim=32, encoder_depth=1, decoder_dim=32, decoder_depth=1, seq_len=16, buffer_size=4,
                 token_dim=4, num_classes=5, diffloss_w=32, diffloss_d=2)


def _ln(x, sd, p, eps=1e-6):
    return F.layer_norm(x, (x.shape[-1],), sd[p + ".weight"], sd[p + ".bias"], eps)


def _lin(x, sd, p):
    return F.linear(x, sd[p + ".weight"], sd[p + ".bias"])


def _timm_block(sd, p, x, heads):
    B, N, C = x.shape
    qkv = _lin(_ln(x, sd, p + ".norm1"), sd, p + ".attn.qkv").reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(B, N, C)
    x = x + _lin(a, sd, p + ".attn.proj")
    return x + _lin(F.gelu(_lin(_ln(x, sd, p + ".norm2"), sd, p + ".mlp.fc1")), sd, p + ".mlp.fc2")


def official_mar_z(sd, tokens, mask, class_embedding, heads, buffer):
    """forward_mae_encoder + forward_mae_decoder (+ diffusion_pos_embed_learned)."""
    x = _lin(tokens, sd, "z_proj")
    bsz, seq, D = x.shape
    x = torch.cat([torch.zeros(bsz, buffer, D), x], dim=1)
    mwb = torch.cat([torch.zeros(bsz, buffer), mask], dim=1)
    x[:, :buffer] = class_embedding.unsqueeze(1)
    x = _ln(x + sd["encoder_pos_embed_learned"], sd, "z_proj_ln")
    x = x[(1 - mwb).nonzero(as_tuple=True)].reshape(bsz, -1, D)
    for i in range(1 + max(int(k.split(".")[1]) for k in sd if k.startswith("encoder_blocks."))):
        x = _timm_block(sd, f"encoder_blocks.{i}", x, heads)
    x = _lin(_ln(x, sd, "encoder_norm"), sd, "decoder_embed")
    pad = sd["mask_token"].repeat(bsz, mwb.shape[1], 1).to(x.dtype)
    pad[(1 - mwb).nonzero(as_tuple=True)] = x.reshape(x.shape[0] * x.shape[1], x.shape[2])
    x = pad + sd["decoder_pos_embed_learned"]
    for i in range(1 + max(int(k.split(".")[1]) for k in sd if k.startswith("decoder_blocks."))):
        x = _timm_block(sd, f"decoder_blocks.{i}", x, heads)
    return _ln(x, sd, "decoder_norm")[:, buffer:] + sd["diffusion_pos_embed_learned"]


def official_diffloss_net(sd, x, t, c):
    """SimpleMLPAdaLN.forward: 2·C outputs (ε, variance interpolation)."""
    n = "diffloss.net."
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    y = _lin(F.silu(_lin(t_freq, sd, n + "time_embed.mlp.0")), sd, n + "time_embed.mlp.2") + _lin(c, sd, n + "cond_embed")
    h = _lin(x, sd, n + "input_proj")
    for i in range(1 + max(int(k.split(".")[3]) for k in sd if k.startswith(n + "res_blocks."))):
        p = f"{n}res_blocks.{i}."
        shift, scale, gate = _lin(F.silu(y), sd, p + "adaLN_modulation.1").chunk(3, dim=-1)
        m = _ln(h, sd, p + "in_ln") * (1 + scale) + shift
        h = h + gate * _lin(F.silu(_lin(m, sd, p + "mlp.0")), sd, p + "mlp.2")
    shift, scale = _lin(F.silu(y), sd, n + "final_layer.adaLN_modulation.1").chunk(2, dim=-1)
    h = F.layer_norm(h, (h.shape[-1],), eps=1e-6) * (1 + scale) + shift
    return _lin(h, sd, n + "final_layer.linear")


def adm_schedule(num_sampling_steps):
    """create_diffusion(str(steps), noise_schedule='cosine', learn_sigma=True): respaced DDPM quantities."""
    alpha_bar = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = np.array([min(1 - alpha_bar((i + 1) / 1000) / alpha_bar(i / 1000), 0.999) for i in range(1000)])
    ac = np.cumprod(1.0 - betas)
    frac_stride = (1000 - 1) / (num_sampling_steps - 1)
    use = {round(i * frac_stride) for i in range(num_sampling_steps)}
    new_betas, tmap, last = [], [], 1.0
    for i, a in enumerate(ac):
        if i in use:
            new_betas.append(1 - a / last)
            last = a
            tmap.append(i)
    b = np.array(new_betas)
    ac = np.cumprod(1.0 - b)
    prev = np.append(1.0, ac[:-1])
    pv = b * (1.0 - prev) / (1.0 - ac)
    return dict(betas=b, tmap=np.array(tmap), sqrt_recip=np.sqrt(1.0 / ac), sqrt_recipm1=np.sqrt(1.0 / ac - 1),
                logvar_clipped=np.log(np.append(pv[1], pv[1:])), c1=b * np.sqrt(prev) / (1.0 - ac),
                c2=(1.0 - prev) * np.sqrt(1.0 - b) / (1.0 - ac))


def official_diffloss_sample(sd, z, temperature, cfg, sched, g, g_discard):
    """DiffLoss.sample → p_sample_loop with forward_with_cfg; learned-range variance. Noise the result never
    reads (the unconditional half of x, the zero-masked draw at t = 0) comes from ``g_discard``."""
    C = sd["z_proj.weight"].shape[1]
    use_cfg = cfg != 1.0
    rows = z.shape[0] // 2 if use_cfg else z.shape[0]
    noise = torch.randn(rows, C, generator=g)
    x = torch.cat([noise, noise]) if use_cfg else noise
    ex = lambda arr, t: torch.from_numpy(arr)[t].float()[:, None]  # noqa: E731
    for i in reversed(range(len(sched["betas"]))):
        t = torch.full((x.shape[0],), i, dtype=torch.long)
        tm = torch.from_numpy(sched["tmap"])[t]
        if use_cfg:
            half = x[: len(x) // 2]
            out = official_diffloss_net(sd, torch.cat([half, half]), tm, z)
            eps, rest = out[:, :C], out[:, C:]
            ce, ue = eps.chunk(2)
            he = ue + cfg * (ce - ue)
            out = torch.cat([torch.cat([he, he]), rest], dim=1)
        else:
            out = official_diffloss_net(sd, x, tm, z)
        eps, v = out[:, :C], out[:, C:]
        min_log, max_log = ex(sched["logvar_clipped"], t), ex(np.log(sched["betas"]), t)
        frac = (v + 1) / 2
        logvar = frac * max_log + (1 - frac) * min_log
        x0 = ex(sched["sqrt_recip"], t) * x - ex(sched["sqrt_recipm1"], t) * eps
        mean = ex(sched["c1"], t) * x0 + ex(sched["c2"], t) * x
        if i > 0:
            n = torch.randn(rows, C, generator=g)
            n = torch.cat([n, torch.randn(rows, C, generator=g_discard)]) if use_cfg else n
            x = mean + torch.exp(0.5 * logvar) * n * temperature
        else:
            x = mean
    return x[:rows]


def official_sample_tokens(sd, labels, num_iter, cfg, cfg_schedule, temperature, heads, buffer, steps, g, g_discard):
    """MAR.sample_tokens with a given generator (orders drawn as our sampler draws them: a random permutation)."""
    bsz, seq_len, C = len(labels), sd["diffusion_pos_embed_learned"].shape[1], sd["z_proj.weight"].shape[1]
    sched = adm_schedule(steps)
    mask, tokens = torch.ones(bsz, seq_len), torch.zeros(bsz, seq_len, C)
    orders = torch.rand(bsz, seq_len, generator=g).argsort(dim=1)
    for step in range(num_iter):
        cur = tokens.clone()
        ce = sd["class_emb.weight"][labels]
        if cfg != 1.0:
            tokens, mask = torch.cat([tokens, tokens]), torch.cat([mask, mask])
            ce = torch.cat([ce, sd["fake_latent"].repeat(bsz, 1)])
        z = official_mar_z(sd, tokens, mask, ce, heads, buffer)
        mask_ratio = np.cos(math.pi / 2.0 * (step + 1) / num_iter)
        mask_len = torch.Tensor([np.floor(seq_len * mask_ratio)])
        mask_len = torch.maximum(torch.Tensor([1]), torch.minimum(torch.sum(mask, dim=-1, keepdims=True) - 1, mask_len))
        nxt = torch.zeros(bsz, seq_len).scatter(-1, orders[:, : int(mask_len[0].item())], 1.0)
        to_pred = mask[:bsz].bool() if step >= num_iter - 1 else torch.logical_xor(mask[:bsz].bool(), nxt.bool())
        mask = nxt
        if cfg != 1.0:
            to_pred = torch.cat([to_pred, to_pred])
        z = z[to_pred.nonzero(as_tuple=True)]
        cfg_iter = 1 + (cfg - 1) * (seq_len - mask_len[0]) / seq_len if cfg_schedule == "linear" else cfg
        drawn = official_diffloss_sample(sd, z, temperature, float(cfg_iter), sched, g, g_discard)
        if cfg != 1.0:
            to_pred, _ = to_pred.chunk(2)
        cur[to_pred.nonzero(as_tuple=True)] = drawn
        tokens = cur.clone()
    return tokens


@pytest.fixture(scope="module")
def official_mar():
    sd = rand_state(mar_layout(**MAR_SIZES), seed=7, scale=0.2)
    # the variance half of the head at v = -1 (MAR's learned range = the fixed posterior variance ours samples with)
    C = MAR_SIZES["token_dim"]
    sd["diffloss.net.final_layer.linear.weight"][C:] = 0.0
    sd["diffloss.net.final_layer.linear.bias"][C:] = -1.0
    return sd


@pytest.mark.parametrize("cfg,schedule", [(1.0, "linear"), (2.5, "linear"), (2.0, "constant")])
def test_mar_import_samples_as_mars_sample_tokens(official_mar, cfg, schedule):
    from gft_tokens.families.mar.model import MARModel
    from gft_tokens.families.mar.sampler import sample

    sd = official_mar
    converted = convert_state_dict("mar", sd, n_head=2, num_sampling_steps=10)
    assert any("ε half" in n for n in converted.notes)
    model = MARModel(converted.config)
    model.load_state_dict(converted.state)
    model.eval()
    labels = torch.tensor([0, 3, 4])
    with torch.no_grad():
        ref = official_sample_tokens(sd, labels, 4, cfg, schedule, 0.9, heads=2, buffer=4, steps=10,
                                     g=torch.Generator().manual_seed(11), g_discard=torch.Generator().manual_seed(99))
        ours = sample(model, labels, cfg_scale=cfg, cfg_schedule=schedule, steps=4, temperature=0.9,
                      generator=torch.Generator().manual_seed(11))
    err = (ours - ref).abs().max().item()
    assert ref.abs().max() > 0.1 and err < 1e-4, err


def test_mar_import_from_a_training_checkpoint_reads_model_ema_and_args(official_mar, tmp_path):
    sd = official_mar
    raw = {k: v + 1.0 for k, v in sd.items()}
    args = argparse.Namespace(model="mar_tiny", num_sampling_steps="7", buffer_size=4)
    torch.save({"model": raw, "model_ema": sd, "args": args, "epoch": 3}, tmp_path / "checkpoint-last.pth")
    converted = import_checkpoint("mar", tmp_path / "checkpoint-last.pth", n_head=2)
    assert converted.config.num_sampling_steps == 7
    assert torch.equal(converted.state["z_proj.weight"], sd["z_proj.weight"])  # the EMA weights
    converted = import_checkpoint("mar", tmp_path / "checkpoint-last.pth", key="model", n_head=2)
    assert torch.equal(converted.state["z_proj.weight"], raw["z_proj.weight"])
    with pytest.raises(GFTError, match="no MAR preset fits"):
        convert_state_dict("mar", sd)
    with pytest.raises(GFTError, match="preset MAR-B does not fit"):
        convert_state_dict("mar", sd, preset="MAR-B")
    bad = {k: v for k, v in sd.items() if k != "fake_latent"}
    with pytest.raises(GFTError, match="missing 1: fake_latent"):
        convert_state_dict("mar", bad, n_head=2)


@pytest.mark.parametrize("preset,e,d,w,dd", [("MAR-B", 768, 12, 1024, 6), ("MAR-L", 1024, 16, 1280, 8),
                                           ("MAR-H", 1280, 20, 1536, 12)])
def test_released_mar_sizes_map_on_the_meta_device(preset, e, d, w, dd):
    layout = mar_layout(encoder_dim=e, encoder_depth=d, decoder_dim=e, decoder_depth=d, seq_len=256,
                        diffloss_w=w, diffloss_d=dd)
    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in layout.items()}
    converted = convert_state_dict("mar", state)
    assert converted.config.preset == preset and converted.config.grid_size == 16


def kl16_layout(ch=32, ch_mult=(1, 2), blocks=1, e=4):
    """MAR's AutoencoderKL keys: LDM q/k/v attention, double-z encoder, no attention in the decoder's up levels."""
    base = vqvae_layout(ch=ch, ch_mult=ch_mult, num_res_blocks=blocks, z_channels=e, buffers=False)
    out = {}
    for k, s in base.items():
        if k.startswith("quantize.") or k.startswith("quant_conv") or k.startswith("post_quant_conv"):
            continue
        if k.startswith("decoder.up.") and ".attn." in k:
            continue
        if ".qkv." in k:
            for c in "qkv":
                out[k.replace(".qkv.", f".{c}.")] = (s[0] // 3, *s[1:])
            continue
        if k == "encoder.conv_out.weight":
            s = (2 * e, *s[1:])
        if k == "encoder.conv_out.bias":
            s = (2 * e,)
        out[k] = s
    out.update({"quant_conv.weight": (2 * e, 2 * e, 1, 1), "quant_conv.bias": (2 * e,),
                "post_quant_conv.weight": (e, e, 1, 1), "post_quant_conv.bias": (e,),
                "loss.logvar": ()})
    return out


def test_kl16_import_encodes_and_decodes_as_mars_vae(tmp_path):
    sd = rand_state(kl16_layout(), seed=2)
    torch.save({"model": sd}, tmp_path / "kl16.ckpt")
    converted = import_checkpoint("mar-kl16", tmp_path / "kl16.ckpt", tmp_path / "kl", image_size=16)
    assert any("loss.*" in n for n in converted.notes)
    tok = load_tokenizer(tmp_path / "kl").eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        moments = F.conv2d(ldm_stage(sd, x, "encoder"), sd["quant_conv.weight"], sd["quant_conv.bias"])
        ref_z = moments.chunk(2, dim=1)[0] * 0.2325  # posterior mode, MAR's scale
        z = tok.encode(x)
        ref_img = ldm_stage(sd, F.conv2d(ref_z / 0.2325, sd["post_quant_conv.weight"], sd["post_quant_conv.bias"]),
                            "decoder").clamp(-1, 1)
        img = tok.decode(ref_z)
    assert (z - ref_z).abs().max() < 1e-5 and (img - ref_img).abs().max() < 1e-4
    assert ref_img.std() > 0.05


def test_imported_mar_with_kl16_generates_a_grid(official_mar, tmp_path):
    torch.save({"model": rand_state(kl16_layout(), seed=2)}, tmp_path / "kl16.ckpt")
    torch.save({"model_ema": official_mar, "model": official_mar}, tmp_path / "mar.pth")
    script_main("import_checkpoint.py")(["--format", "mar-kl16", "--image-size", "8", str(tmp_path / "kl16.ckpt"),
                                         str(tmp_path / "kl")])
    script_main("import_checkpoint.py")(["--format", "mar", "--n-head", "2", "--num-sampling-steps", "5",
                                         "--tokenizer", str(tmp_path / "kl"), str(tmp_path / "mar.pth"),
                                         str(tmp_path / "m")])
    script_main("generate.py")(["--ckpt", str(tmp_path / "m"), "--classes", "0", "4", "--n-per-class", "2",
                                "--cfg-scale", "2.0", "--steps", "2", "--out", str(tmp_path / "s")])
    images = np.load(tmp_path / "s" / "samples.npz")["arr_0"]
    assert images.shape == (4, 8, 8, 3) and images.std() > 0
    assert (tmp_path / "s" / "grid.png").stat().st_size > 0


# ---------------------------------------------------------------------------------------------------------------
# LlamaGen / GFT training checkpoints: the recorded args
# ---------------------------------------------------------------------------------------------------------------
def _llamagen_ckpt(tmp_path, classes_rows_null=True, **args):
    from test_importers import official_gpt_shapes, random_state

    shapes = official_gpt_shapes(n_layer=2, dim=64, vocab=32, classes=5, multiple_of=32)
    sd = random_state(shapes, seed=1)
    if not classes_rows_null:  # trained with class_dropout_prob = 0: 5 rows, no null row
        sd["cls_embedding.embedding_table.weight"] = sd["cls_embedding.embedding_table.weight"][:5].clone()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": sd, "steps": 10, **({"args": argparse.Namespace(**args)} if args else {})}, path)
    return sd, path


def test_llamagen_args_fill_grid_preset_cls_tokens_and_dropout(tmp_path):
    from test_importers import official_gpt_logits

    sd, path = _llamagen_ckpt(tmp_path, gpt_model="GPT-nano", image_size=64, downsample_size=16, cls_token_num=1,
                              class_dropout_prob=0.1, num_classes=5, vocab_size=32)
    converted = import_checkpoint("llamagen-gpt", path, tmp_path / "m")
    c = converted.config
    assert (c.grid_size, c.n_head, c.cls_token_num, c.num_classes, c.class_dropout_prob) == (4, 2, 1, 5, 0.1)
    assert any("training args" in n for n in converted.notes)
    model = load_model(tmp_path / "m").eval()
    codes, labels = torch.randint(32, (2, 16)), torch.tensor([1, 5])
    ref = official_gpt_logits(sd, codes, labels, n_head=2, grid=4)
    assert torch.allclose(model(codes, labels), ref, atol=1e-5, rtol=1e-4)
    for flag, value in (("grid_size", 8), ("preset", "GPT-tiny"), ("cls_token_num", 2), ("class_dropout_prob", 0.0)):
        with pytest.raises(GFTError, match="contradicts the checkpoint's training args"):
            import_checkpoint("llamagen-gpt", path, **{flag: value})
    with pytest.raises(GFTError, match="n_head 2, not 4"):  # the wrong head count the weights cannot show
        import_checkpoint("llamagen-gpt", path, n_head=4)


def test_llamagen_cls_token_num_from_args_or_flag(tmp_path):
    _, path = _llamagen_ckpt(tmp_path, gpt_model="GPT-nano", image_size=64, downsample_size=16, cls_token_num=2)
    converted = import_checkpoint("llamagen-gpt", path)  # read, never imported as 1: the official layout
    assert (converted.config.cls_token_num, converted.config.class_token_layout) == (2, "official")
    _, path = _llamagen_ckpt(tmp_path)  # no args: grid required, cls_token_num from the flag
    with pytest.raises(GFTError, match="grid_size is required"):
        import_checkpoint("llamagen-gpt", path)
    converted = import_checkpoint("llamagen-gpt", path, grid_size=4, cls_token_num=2)
    assert (converted.config.cls_token_num, converted.config.class_token_layout) == (2, "official")
    assert any("official c2i layout" in n for n in converted.notes)
    converted = import_checkpoint("llamagen-gpt", path, grid_size=4, cls_token_num=1)
    assert (converted.config.cls_token_num, converted.config.class_token_layout) == (1, "repeat")
    assert any("assumed a null-class row" in n for n in converted.notes)
    assert any("assumed" in n and "cls_token_num" in n
               for n in import_checkpoint("llamagen-gpt", path, grid_size=4).notes)


def test_llamagen_table_without_a_null_row_keeps_every_class(tmp_path, capsys):
    from test_importers import official_gpt_logits

    sd, path = _llamagen_ckpt(tmp_path, classes_rows_null=False, gpt_model="GPT-nano", image_size=64,
                              downsample_size=16, class_dropout_prob=0.0, num_classes=5)
    script_main("import_checkpoint.py")(["--format", "llamagen-gpt", str(path), str(tmp_path / "m")])
    assert "no null row" in capsys.readouterr().out
    model = load_model(tmp_path / "m").eval()
    assert model.config.num_classes == 5
    assert not model.cls_embedding.embedding_table.weight[5].any()
    codes, labels = torch.randint(32, (2, 16)), torch.tensor([0, 4])  # class 4 is a real class, not the null one
    assert torch.allclose(model(codes, labels), official_gpt_logits(sd, codes, labels, n_head=2, grid=4), atol=1e-5)
    # without args, the flag says there is no null row
    _, path = _llamagen_ckpt(tmp_path, classes_rows_null=False)
    converted = import_checkpoint("llamagen-gpt", path, grid_size=4, class_dropout_prob=0.0)
    assert converted.config.num_classes == 5


@pytest.mark.parametrize("argv,message", [
    (["--format", "var-vqvae", "--scales", "1,x,3"], "scales must be comma-separated integers"),
    (["--format", "mar-kl16"], "it is a VQ model, not MAR's KL VAE"),
    (["--format", "mar"], "not a MAR state dict"),
])
def test_import_script_bad_input_is_one_error_line(official_vae, tmp_path, capsys, argv, message):
    torch.save(official_vae, tmp_path / "vae.pth")
    with pytest.raises(SystemExit) as exc:
        script_main("import_checkpoint.py")([*argv, str(tmp_path / "vae.pth"), str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not (tmp_path / "out").exists()
