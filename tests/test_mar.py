"""MAR over continuous tokens: KL tokenizer, diffusion head, GFT on ε, sampler, training loop, CLI."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import ROOT, run_script
from gft_tokens import GFTError
from gft_tokens.families import build_model, load_model
from functools import partial

from gft_tokens.families.mar.diffloss import GaussianDiffusion, cosine_betas, spaced_timesteps
from gft_tokens.objectives import EPS_MSE, cfg_loss, gft_loss

gft_eps_loss = partial(gft_loss, loss=EPS_MSE)
cfg_eps_loss = partial(cfg_loss, loss=EPS_MSE)
from gft_tokens.families.mar.model import MARModel, grid_to_tokens, mar_config, tokens_to_grid
from gft_tokens.families import check_tokenizer_matches, sample_images
from gft_tokens.families.mar.sampler import sample
from gft_tokens.tokenizers import load_tokenizer
from gft_tokens.tokenizers.kl import DiagonalGaussian, KLConfig, KLTokenizer
from gft_tokens.families import FAMILIES
from gft_tokens.train.loop import TrainOptions, train

C, G, N = 4, 4, 16  # latent channels, grid side, tokens of the unit-test models
SHIPPED_KL = ROOT / "tokenizers" / "shapes-kl"


def tiny(**kw):
    """A MAR-nano with the zero-initialised parts (head outputs, adaLN, β embedder) randomised, so that tests see
    real ε predictions."""
    torch.manual_seed(0)
    m = build_model("mar", "MAR-nano", **{"token_dim": C, "grid_size": G, "num_classes": 10,
                                          "num_sampling_steps": 5, "diffusion_batch_mul": 2, **kw})
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.abs().sum() == 0 and p.ndim == 2 and ("diffloss" in name or "beta_embedder" in name):
                p.normal_(std=0.3)
    return m.eval()


def tiny_kl(**kw):
    torch.manual_seed(0)
    return KLTokenizer(KLConfig(**{"channels": 8, "z_channels": 8, "latent_channels": C, "channel_mult": [1, 2, 2],
                                   "image_size": 16, **kw})).eval()


def masked_rows(batch, n, masked, seed=0):
    order = torch.rand(batch, n, generator=torch.Generator().manual_seed(seed)).argsort(1)
    return torch.zeros(batch, n, dtype=torch.bool).scatter_(1, order[:, :masked], True)


# ---------------------------------------------------------------------------------------------------------------
# KL tokenizer
# ---------------------------------------------------------------------------------------------------------------
def test_kl_tokenizer_round_trip_kl_term_and_save_load(tmp_path):
    tok = tiny_kl()
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    z = tok.encode(images)
    assert z.shape == (3, C, 4, 4) and z.dtype == torch.float32 and tok.grid_size == (4, 4)
    recon = tok.decode(z)
    assert recon.shape == images.shape and recon.min() >= -1 and recon.max() <= 1
    # the KL term: 0 for the prior itself, the closed form otherwise, never negative
    assert DiagonalGaussian(torch.zeros(2, 2 * C, 4, 4)).kl().item() == 0.0
    moments = torch.randn(2, 2 * C, 4, 4)
    mean, logvar = moments.chunk(2, dim=1)
    hand = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).mean()
    assert DiagonalGaussian(moments).kl().item() == pytest.approx(hand.item(), rel=1e-6) and hand > 0
    recon_t, z_t, reg = tok.train()(images)
    assert reg.item() >= 0 and recon_t.shape == images.shape and z_t.shape == (3, C, 4, 4)
    tok.eval()
    # calibration: normalised posterior draws get unit std; encode/decode apply and undo the scale
    scale = tok.calibrate(images)
    assert scale == tok.config.latent_scale and scale > 0
    draws = tok.encode(images, sample=True, generator=torch.Generator().manual_seed(0))
    assert draws.std().item() == pytest.approx(1.0, abs=0.2)
    assert torch.allclose(tok.encode(images), tok.posterior(images).mean * scale)
    tok.save_pretrained(tmp_path / "kl")
    again = load_tokenizer(tmp_path / "kl")
    assert isinstance(again, KLTokenizer) and again.config.latent_scale == scale
    assert torch.equal(again.encode(images), tok.encode(images)) and torch.equal(again.decode(z), tok.decode(z))
    assert again.describe() == {"type": "gft_kl_tokenizer", "latent_channels": C, "grid_size": [4, 4],
                                "image_size": 16}


def test_kl_tokenizer_bad_inputs():
    tok = tiny_kl()
    with pytest.raises(GFTError, match=r"must have shape \(B, 4, h, w\)"):
        tok.decode(torch.zeros(1, C + 1, 4, 4))
    with pytest.raises(GFTError, match="float tensor"):
        tok.decode(torch.zeros(1, C, 4, 4, dtype=torch.long))
    with pytest.raises(GFTError, match="grid is"):
        tok.decode(torch.zeros(1, C, 8, 8))
    with pytest.raises(GFTError, match="NaN"):
        tok.decode(torch.full((1, C, 4, 4), float("nan")))
    with pytest.raises(GFTError, match="latent_scale"):
        KLConfig(latent_scale=0.0)
    with pytest.raises(GFTError, match="kl_weight"):
        KLConfig(kl_weight=-1.0)


def test_kl_recipe_trains_through_the_tokenizer_trainer(tmp_path):
    from gft_tokens.tokenizers.trainer import TokenizerTrainOptions, split_recipe, train_tokenizer

    kind, model, _ = split_recipe({"type": "gft_kl_tokenizer", "model": {"channels": 8, "z_channels": 8,
                                                                         "latent_channels": C}}, "test")
    final = train_tokenizer(kind, model, TokenizerTrainOptions(out=str(tmp_path / "kl"), steps=2, batch_size=4,
                                                               train_images=8, eval_images=4, warmup_steps=1,
                                                               save_every=0))
    assert "kl_loss" in final and "latent_scale" in final and "usage" not in final and math.isfinite(final["psnr"])
    tok = load_tokenizer(tmp_path / "kl")
    assert tok.config.latent_scale == pytest.approx(final["latent_scale"], rel=1e-4)
    assert (tmp_path / "kl" / "recipe.yaml").read_text().startswith("type: gft_kl_tokenizer")


@pytest.mark.skipif(not SHIPPED_KL.is_dir(), reason="tokenizers/shapes-kl not trained")
def test_shipped_kl_tokenizer_reconstructs_and_is_normalised():
    from gft_tokens.data.shapes import heldout
    from gft_tokens.tokenizers.losses import psnr

    tok = load_tokenizer(SHIPPED_KL)
    images, _ = heldout(length=64).tensors()
    z = tok.encode(images)
    assert z.shape == (64, 8, 8, 8)
    assert 0.5 < z.std().item() < 1.5  # normalised by the measured latent_scale
    assert psnr(tok.decode(z), images) > 24.0


# ---------------------------------------------------------------------------------------------------------------
# Diffusion schedule and head
# ---------------------------------------------------------------------------------------------------------------
def test_cosine_schedule_and_respacing_match_mar():
    betas = cosine_betas(1000)
    abar = torch.cumprod(1 - betas, 0)
    assert abar[0].item() == pytest.approx(math.cos(1.008 ** -1 * 0.009 * math.pi / 2) ** 2
                                           / math.cos(0.008 / 1.008 * math.pi / 2) ** 2, rel=1e-9)
    assert betas.max().item() == 0.999 and abar[-1].item() < 1e-6
    steps = spaced_timesteps(1000, 100)
    assert len(steps) == 100 and steps[0] == 0 and steps[-1] == 999 and steps[1] == 10  # round(999/99) = 10
    spaced = GaussianDiffusion(betas, steps)
    assert torch.allclose(spaced.alphas_cumprod, abar[steps])  # respacing keeps ᾱ at the kept steps
    assert spaced.timestep_map.tolist() == steps


def test_reverse_process_with_the_true_eps_recovers_a_point_mass():
    """For data that is a single point c, ε(x_t, t) = (x_t − √ᾱ_t·c)/√(1 − ᾱ_t) exactly: sampling must give c."""
    d = GaussianDiffusion(cosine_betas(1000), spaced_timesteps(1000, 50))
    full = GaussianDiffusion(cosine_betas(1000))
    c = torch.tensor([[0.5, -1.0, 2.0]]).repeat(6, 1)

    def eps(x, t):  # t: original step indices
        a = full.alphas_cumprod[t].float()[:, None]
        return (x - a.sqrt() * c) / (1 - a).sqrt()

    out = d.sample_loop(eps, torch.randn(6, 3, generator=torch.Generator().manual_seed(0)),
                        generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out, c, atol=1e-3)
    x_t = full.q_sample(c, torch.full((6,), 500), torch.ones(6, 3))
    assert torch.allclose(eps(x_t, torch.full((6,), 500)), torch.ones(6, 3), atol=1e-5)


def test_fresh_head_is_zero_and_presets_follow_mar():
    m = build_model("mar", "MAR-nano", token_dim=C, grid_size=G, num_classes=10)
    x, t, z = torch.randn(5, C), torch.randint(1000, (5,)), torch.randn(5, 64)
    assert torch.equal(m.diffloss(x, t, z), torch.zeros(5, C))  # zero-init final layer, as MAR's
    for name, (dim, depth, d, w) in {"MAR-B": (768, 12, 6, 1024), "MAR-L": (1024, 16, 8, 1280),
                                     "MAR-H": (1280, 20, 12, 1536)}.items():
        cfg = mar_config(name, token_dim=16, grid_size=16)
        assert (cfg.encoder_dim, cfg.decoder_depth, cfg.diffloss_d, cfg.diffloss_w) == (dim, depth, d, w)
        assert (cfg.buffer_size, cfg.num_sampling_steps, cfg.diffusion_batch_mul) == (64, 100, 4)
    with torch.device("meta"):
        big = MARModel(mar_config("MAR-B", token_dim=16, grid_size=16))
    head = sum(p.numel() for p in big.diffloss.parameters())
    w = 1024  # SimpleMLPAdaLN: time MLP, cond/input proj, 6 blocks (LN, 2 Linear, adaLN 3w), final (adaLN 2w, out)
    assert head == (256 * w + w + w * w + w) + (768 * w + w) + (16 * w + w) \
        + 6 * (2 * w + 2 * (w * w + w) + w * 3 * w + 3 * w) + (w * 2 * w + 2 * w) + (w * 16 + 16)
    with pytest.raises(GFTError, match="did you mean 'MAR-tiny'"):
        mar_config("MAR-tiyn")


# ---------------------------------------------------------------------------------------------------------------
# Model: masking, β conditioning
# ---------------------------------------------------------------------------------------------------------------
def test_masked_latents_never_leak_into_z():
    m = tiny()
    x = torch.randn(2, N, C)
    mask = masked_rows(2, N, 11)
    labels = torch.tensor([3, 4])
    z = m(x, labels, torch.full((2,), 0.5), mask=mask)
    assert z.shape == (2, N, 64)
    poked = x.clone()
    poked[mask] = torch.randn(int(mask.sum()), C) * 100
    assert torch.equal(m(poked, labels, torch.full((2,), 0.5), mask=mask), z)
    known = x.clone()
    known[~mask] += 1.0
    assert not torch.allclose(m(known, labels, torch.full((2,), 0.5), mask=mask), z)  # known tokens do count
    assert grid_to_tokens(tokens_to_grid(x, G)).equal(x) and tokens_to_grid(x, G)[1, :, 0, 1].equal(x[1, 1])


def test_gft_model_starts_exactly_at_the_cfg_model():
    cfg_model = tiny(beta_embed=False)
    gft = build_model("mar", "MAR-nano", token_dim=C, grid_size=G, num_classes=10, num_sampling_steps=5)
    missing, unexpected = gft.load_state_dict(cfg_model.state_dict(), strict=False)
    assert all(k.startswith("beta_embedder.") for k in missing) and not unexpected
    gft.eval()
    x, mask, labels = torch.randn(3, N, C), masked_rows(3, N, 9), torch.tensor([0, 5, 10])
    ref = cfg_model(x, labels, mask=mask)
    x_t, t = torch.randn(3 * N, C), torch.randint(1000, (3 * N,))
    eps_ref = cfg_model.diffloss(x_t, t, ref.flatten(0, 1))
    for beta in (0.0, 0.3, 1.0):
        z = gft(x, labels, torch.full((3,), beta), mask=mask)
        assert torch.equal(z, ref)
        assert torch.equal(gft.diffloss(x_t, t, z.flatten(0, 1)), eps_ref)


# ---------------------------------------------------------------------------------------------------------------
# Objectives
# ---------------------------------------------------------------------------------------------------------------
def test_eps_mix_loss_equals_a_hand_computation():
    m = tiny()
    x, mask = torch.randn(4, N, C), masked_rows(4, N, 12)
    labels = torch.tensor([1, 2, 3, 4])
    beta = torch.tensor([0.2, 0.5, 0.9, 1.0])
    drop = torch.tensor([False, True, False, False])
    fn = lambda cond, b: m.diffusion_inputs(x, cond, b, mask=mask)  # noqa: E731
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    out = gft_eps_loss(fn, x, labels, null_cond=10, module=m, beta=beta, drop=drop, generator=g, loss_mask=mask)

    g.set_state(state)  # replay the objective's draws: t, then ε, for the masked rows repeated batch_mul = 2 times
    x0 = x[mask].repeat(2, 1)
    t = torch.randint(1000, (x0.shape[0],), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    x_t = m.diffloss.train_diffusion.q_sample(x0, t, eps)
    abar = torch.cumprod(1 - cosine_betas(1000), 0)[t].float()[:, None]
    assert torch.allclose(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * eps, atol=1e-6)
    z_s = m(x, torch.where(drop, 10, labels), torch.where(drop, 1.0, beta), mask=mask)
    z_u = m(x, torch.full_like(labels, 10), torch.ones(4), mask=mask)
    e_s = m.diffloss(x_t, t, z_s[mask].repeat(2, 1))
    e_u = m.diffloss(x_t, t, z_u[mask].repeat(2, 1))
    b = beta[:, None].expand(4, N)[mask].repeat(2)[:, None]
    hand = ((b * e_s + (1 - b) * e_u - eps) ** 2).mean()
    assert out.loss.item() == pytest.approx(hand.item(), rel=1e-5)
    assert out.cond_loss.item() == pytest.approx(((e_s - eps) ** 2).mean().item(), rel=1e-5)
    assert torch.equal(out.beta, beta) and torch.equal(out.dropped, drop)

    g.set_state(state)
    cfg = cfg_eps_loss(fn, x, labels, null_cond=10, drop=drop, generator=g, loss_mask=mask)
    z_c = m(x, torch.where(drop, 10, labels), None, mask=mask)
    assert cfg.loss.item() == pytest.approx(((m.diffloss(x_t, t, z_c[mask].repeat(2, 1)) - eps) ** 2).mean().item(),
                                            rel=1e-5)


def test_unconditional_pass_runs_in_eval_mode_without_grad():
    m = tiny(attn_dropout=0.5, proj_dropout=0.5).train()
    seen = []
    m.register_forward_pre_hook(lambda mod, args: seen.append((mod.training, torch.is_grad_enabled(),
                                                               args[1].tolist())))
    x, mask = torch.randn(2, N, C), masked_rows(2, N, 12)
    labels = torch.tensor([1, 2])
    out = gft_eps_loss(lambda c, b: m.diffusion_inputs(x, c, b, mask=mask), x, labels, null_cond=10, module=m,
                       beta=torch.tensor([0.3, 0.7]), drop=torch.tensor([False, False]), loss_mask=mask,
                       generator=torch.Generator().manual_seed(0))
    assert seen == [(False, False, [10, 10]), (True, True, [1, 2])]  # unconditional first: eval, no grad
    assert m.training and all(mod.training for mod in m.modules())  # flags restored
    out.loss.backward()
    assert m.beta_embedder.mlp[2].weight.grad is not None and m.diffloss.net.final_layer.linear.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [dict(beta=0.5), dict(cfg_scale=2.0, cfg_schedule="linear")])
def test_one_token_per_step_fills_every_position_exactly_once(mode):
    m = tiny()
    trace = []
    tokens = sample(m, torch.tensor([1, 2, 3]), steps=N, generator=torch.Generator().manual_seed(0),
                    callback=lambda step, x, mask: trace.append((step, x, mask)), **mode)
    assert [t[0] for t in trace] == list(range(N))
    prev_x, prev_mask = None, torch.ones(3, N, dtype=torch.bool)
    filled_at = torch.full((3, N), -1)
    for step, x, mask in trace:
        newly = prev_mask & ~mask
        assert (newly.sum(1) == 1).all() and not (mask & ~prev_mask).any()
        filled_at[newly] = step
        assert (x[mask] == 0).all() and (x[newly] != 0).all()  # still-masked tokens untouched, new ones drawn
        if prev_x is not None:
            assert torch.equal(x[~prev_mask], prev_x[~prev_mask])  # a drawn token never changes
        prev_x, prev_mask = x, mask
    assert not prev_mask.any() and all(sorted(row.tolist()) == list(range(N)) for row in filled_at)
    assert torch.equal(tokens, prev_x) and tokens.shape == (3, N, C) and torch.isfinite(tokens).all()


def test_gft_is_one_pass_per_step_and_cfg_runs_2b_rows():
    m = tiny()
    passes, head_rows = [], []
    m.register_forward_pre_hook(lambda mod, args: passes.append(args[0].shape[0]))
    m.diffloss.net.register_forward_pre_hook(lambda mod, args: head_rows.append(args[0].shape[0]))
    masks = []
    sample(m, torch.tensor([0, 1]), beta=0.5, steps=4, generator=torch.Generator().manual_seed(0),
           callback=lambda s, x, mask: masks.append(int(mask[0].sum())))
    assert masks == [14, 11, 6, 0]  # the masked family's cosine schedule
    assert passes == [2, 2, 2, 2]  # B rows, one transformer pass per step
    drawn = [2 * k for k in (2, 3, 5, 6)]  # B · tokens drawn per step
    assert head_rows == [r for r in drawn for _ in range(5)]  # one MLP pass per denoising step (5 steps)
    passes.clear(), head_rows.clear()
    sample(m, torch.tensor([0, 1]), cfg_scale=3.0, steps=4, generator=torch.Generator().manual_seed(0))
    assert passes == [4, 4, 4, 4] and head_rows == [2 * r for r in drawn for _ in range(5)]  # 2B rows


def test_cfg_mixes_eps_and_gft_sampling_is_deterministic():
    m = tiny()
    head, rows = m.diffloss, 6
    zc, zu = torch.randn(rows, 64), torch.randn(rows, 64)
    got = head.sample(torch.cat([zc, zu]), cfg_scale=3.0, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)  # replay: x_T for the conditional rows, shared by the unconditional ones
    noise = torch.randn(rows, C, generator=g)
    guided = lambda x, t: head(x, t, zu) + 3.0 * (head(x, t, zc) - head(x, t, zu))  # noqa: E731
    assert torch.allclose(got, head.gen_diffusion.sample_loop(guided, noise, 1.0, g), rtol=1e-4, atol=1e-3)
    assert got.shape == (rows, C)
    one = head.sample(torch.cat([zc, zu]), cfg_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(one, head.sample(zc, generator=torch.Generator().manual_seed(0)), rtol=1e-4, atol=1e-3)
    a = sample(m, torch.tensor([2, 6]), beta=0.4, steps=3, generator=torch.Generator().manual_seed(5))
    b = sample(m, torch.tensor([2, 6]), beta=0.4, steps=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # the last reverse step returns the x0 estimate itself, so clipping it bounds every token
    clipped = sample(m, torch.tensor([2, 6]), beta=0.4, steps=3, clip_x0=2.5, generator=torch.Generator().manual_seed(5))
    assert clipped.abs().max() <= 2.5 and a.abs().max() > 2.5


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs: one GFTError each
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(beta=1.5), "beta must lie in"),
    (dict(beta=-0.1), "beta must lie in"),
    (dict(beta=float("nan")), "beta is NaN"),
    (dict(beta=0.5, steps=0), "steps must be a positive integer"),
    (dict(beta=0.5, steps=N + 1), "at most the number of tokens"),
    (dict(cfg_scale=2.0, cfg_schedule="cosine"), "cfg_schedule must be one of"),
    (dict(beta=0.5, temperature=-1.0), "temperature"),
    (dict(beta=0.5, top_k=5), "continuous tokens"),
    (dict(beta=0.5, clip_x0=0.0), "clip_x0 must be"),
])
def test_sampler_bad_inputs(kwargs, message):
    with pytest.raises(GFTError, match=message):
        sample(tiny(), torch.tensor([0, 1]), **kwargs)


def test_model_bad_inputs():
    m = tiny()
    mask = masked_rows(2, N, 8)
    with pytest.raises(GFTError, match="class id 11 is outside"):
        m(torch.zeros(2, N, C), torch.tensor([0, 11]), mask=mask)
    with pytest.raises(GFTError, match="class id 10 is outside"):
        sample(m, torch.tensor([0, 10]), beta=0.5)  # the null class is not a sampling target
    with pytest.raises(GFTError, match="beta must lie in"):
        m(torch.zeros(2, N, C), torch.tensor([0, 1]), torch.tensor([0.5, 2.0]), mask=mask)
    with pytest.raises(GFTError, match=r"\(B, 16, 4\) \(16 tokens of 4 latent channels\)"):
        m(torch.zeros(2, N, C + 1), torch.tensor([0, 1]), mask=mask)
    with pytest.raises(GFTError, match="float tensor"):
        m(torch.zeros(2, N, C, dtype=torch.long), torch.tensor([0, 1]), mask=mask)
    with pytest.raises(GFTError, match="no β input"):
        sample(tiny(beta_embed=False), torch.tensor([0]), beta=0.5)


def test_tokenizer_and_data_mismatch_are_refused():
    m = tiny(tokenizer={"type": "gft_kl_tokenizer", "latent_channels": C, "grid_size": [4, 4], "image_size": 16})
    check_tokenizer_matches(m, tiny_kl())
    with pytest.raises(GFTError, match="latent_channels"):
        check_tokenizer_matches(m, tiny_kl(latent_channels=C + 2))
    from gft_tokens.data.codes import CodeDataset

    fam = FAMILIES["mar"].adapter
    fam.check_data(CodeDataset(torch.zeros(2, 2, C, G, G), torch.zeros(2, dtype=torch.long), 10), m.config)
    with pytest.raises(GFTError, match="integer codes"):
        fam.check_data(CodeDataset(torch.zeros(2, 2, C, G, G, dtype=torch.long), torch.zeros(2), 10), m.config)
    with pytest.raises(GFTError, match="latents have shape"):
        fam.check_data(CodeDataset(torch.zeros(2, 2, C + 1, G, G), torch.zeros(2), 10), m.config)
    from conftest import SHIPPED_VQ

    with pytest.raises(GFTError, match="needs a continuous tokenizer"):
        fam.config("MAR-nano", load_tokenizer(SHIPPED_VQ), 10, {})


# ---------------------------------------------------------------------------------------------------------------
# Training loop (real DeepSpeed, CPU) and the CLIs
# ---------------------------------------------------------------------------------------------------------------
def test_training_loop_and_generate(tmp_path):
    from PIL import Image

    tok = tiny_kl(image_size=32)
    tok.calibrate(torch.rand(8, 3, 32, 32) * 2 - 1)
    tok.save_pretrained(tmp_path / "kl")
    o = TrainOptions(preset="MAR-nano", tokenizer=str(tmp_path / "kl"), train_images=32, steps=4, batch_size=8,
                     lr=3e-3, warmup_steps=1, save_every=0, log_every=1, out=str(tmp_path / "run"),
                     model={"num_sampling_steps": 4})
    summary = train("mar", o)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and all(math.isfinite(e["loss"]) for e in log) and summary["family"] == "mar"
    m = load_model(tmp_path / "run" / "model")
    assert isinstance(m, MARModel) and m.config.token_dim == C and m.config.grid_size == 8
    assert m.config.tokenizer["path"] == str(tmp_path / "kl")
    images = sample_images(m, tok, torch.tensor([0, 9]), beta=0.5, steps=4)
    assert images.shape == (2, 3, 32, 32)

    proc = run_script("generate.py", "--model", "mar", "--ckpt", str(tmp_path / "run" / "model"), "--beta", "0.5",
                      "--classes", "0", "3", "--n-per-class", "2", "--steps", "4", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    Image.open(tmp_path / "out" / "grid.png").verify()
    assert np.load(tmp_path / "out" / "samples.npz")["arr_0"].shape == (4, 32, 32, 3)
    bad = run_script("generate.py", "--model", "mar", "--ckpt", str(tmp_path / "run" / "model"), "--beta", "0.5",
                     "--order", "random", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "does not apply to mar models" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()
    with pytest.raises(GFTError, match="embedded shapes data only"):
        train("mar", TrainOptions(preset="MAR-nano", tokenizer=str(tmp_path / "kl"), data="shards/{000000..000001}.tar",
                                  out=str(tmp_path / "no")))


def test_train_mar_script_help():
    proc = run_script("train_mar.py", "--help", env={"COLUMNS": "250"})
    assert proc.returncode == 0
    assert "(default: runs/mar)" in proc.stdout and "(default: tokenizers/shapes-kl)" in proc.stdout
