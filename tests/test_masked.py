"""The MAR/MaskGIT-style masked family: model, training masks, loss, sampler, training loop, CLIs."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import SHIPPED_VQ, run_script, script_main
from gft_tokens import GFTError
from gft_tokens.families import build_model, load_model
from gft_tokens.families.masked.model import PRESETS, MaskedTokenModel, draw_mask_ratio, draw_training_mask, masked_config, sincos_2d
from gft_tokens.objectives import cfg_loss, gft_loss
from gft_tokens.families import sample_codes
from gft_tokens.families.masked.sampler import guidance_scale, masked_after_step, sample
from gft_tokens.families import FAMILIES
from gft_tokens.train.loop import TrainOptions, train

NO_DROPOUT = dict(attn_dropout=0.0, proj_dropout=0.0)
V, G, N = 64, 4, 16  # vocabulary, grid side, tokens of the unit-test models


def tiny(**kw):
    torch.manual_seed(0)
    m = build_model("masked", "MAR-nano", **{"vocab_size": V, "grid_size": G, "num_classes": 10, **kw})
    # A fresh model has a zero head and a zero β embedding: randomise both so that tests see real logits.
    torch.nn.init.normal_(m.output.weight, std=0.3)
    if m.beta_embedder is not None:
        torch.nn.init.normal_(m.beta_embedder.mlp[2].weight, std=0.3)
    return m.eval()


def equal_count_mask(batch, n, masked, seed=0):
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(batch, n, generator=g).argsort(1)
    return torch.zeros(batch, n, dtype=torch.bool).scatter_(1, order[:, :masked], True)


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, dim, depth, heads", [("MAR-B", 768, 12, 12), ("MAR-L", 1024, 16, 16),
                                                     ("MAR-H", 1280, 20, 16)])
def test_mar_presets(name, dim, depth, heads):
    cfg = masked_config(name, vocab_size=1024, grid_size=16)
    assert (cfg.encoder_dim, cfg.encoder_depth, cfg.encoder_heads) == (dim, depth, heads)
    assert (cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads) == (dim, depth, heads)
    assert (cfg.buffer_size, cfg.mask_ratio_min, cfg.mlp_ratio, cfg.attn_dropout) == (64, 0.7, 4.0, 0.1)
    with torch.device("meta"):
        m = MaskedTokenModel(cfg)
    blocks = sum(p.numel() for p in m.encoder_blocks.parameters()) + sum(p.numel() for p in m.decoder_blocks.parameters())
    assert blocks == 2 * depth * (12 * dim * dim + 13 * dim)  # ViT blocks: qkv, proj, 4x MLP, two LayerNorms


def test_cpu_presets_draw_wider_mask_ratios():
    for name in ("MAR-nano", "MAR-tiny", "MAR-small"):
        cfg = masked_config(name, vocab_size=1024, grid_size=8)
        assert (cfg.mask_ratio_min, cfg.mask_ratio_std, cfg.attn_dropout) == (0.3, 0.5, 0.0)
    r = draw_mask_ratio(torch.Generator().manual_seed(0), 0.3, 0.5, shape=(50000,))
    assert r.min() >= 0.3 and r.max() <= 1.0 and (r < 0.7).float().mean() > 0.2  # MAR's draw never goes below 0.7


def test_unknown_preset_and_bad_config():
    with pytest.raises(GFTError, match="did you mean 'MAR-tiny'"):
        masked_config("MAR-tiyn")
    with pytest.raises(GFTError, match="buffer_size"):
        masked_config("MAR-nano", buffer_size=0)
    with pytest.raises(GFTError, match="mask_ratio_min"):
        masked_config("MAR-nano", mask_ratio_min=1.5)
    with pytest.raises(GFTError, match="pos_init must be"):
        masked_config("MAR-nano", pos_init="rope")


def test_sincos_positions_start_from_maes_table_and_stay_learned():
    m = build_model("masked", "MAR-nano", vocab_size=V, grid_size=G, num_classes=10)
    table = m.encoder_pos_embed.weight[4:]  # MAR-nano: 4 buffer rows, then the 4x4 grid in raster order
    ref = sincos_2d(G, 64)
    assert torch.allclose(table / table.pow(2).mean().sqrt(), ref / ref.pow(2).mean().sqrt(), atol=1e-5)
    assert ref[1, :32].equal(ref[0, :32]) and not ref[1, 32:].equal(ref[0, 32:])  # same row, next column
    assert torch.allclose(table.pow(2).mean().sqrt(), torch.tensor(0.02), rtol=1e-3)  # the normal init's RMS
    assert m.encoder_pos_embed.weight.requires_grad
    normal = build_model("masked", "MAR-nano", vocab_size=V, grid_size=G, num_classes=10, pos_init="normal")
    assert not torch.allclose(normal.encoder_pos_embed.weight[4:] / 0.02, ref, atol=0.5)


def test_fresh_model_zero_head_and_beta_embedding_and_roundtrip(tmp_path):
    fresh = build_model("masked", "MAR-nano", vocab_size=V, grid_size=G, num_classes=10)
    assert fresh.output.weight.abs().sum() == 0
    assert fresh.beta_embedder.mlp[2].weight.abs().sum() == 0 and fresh.beta_embedder.mlp[2].bias.abs().sum() == 0
    assert fresh.class_emb.embedding_table.weight.shape[0] == 11  # + null class
    m = tiny()
    m.save_pretrained(tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert isinstance(back, MaskedTokenModel)
    codes, labels, mask = torch.randint(V, (2, N)), torch.tensor([1, 2]), equal_count_mask(2, N, 10)
    assert torch.equal(back(codes, labels, torch.tensor([0.5, 1.0]), mask=mask),
                       m(codes, labels, torch.tensor([0.5, 1.0]), mask=mask))


def test_masking_never_leaks_targets_into_inputs():
    m = tiny(**NO_DROPOUT)
    codes, labels, beta = torch.randint(V, (3, N)), torch.tensor([0, 4, 9]), torch.full((3,), 0.5)
    mask = equal_count_mask(3, N, 11)
    ref = m(codes, labels, beta, mask=mask)
    for fill in (0, V - 1, -1, 10**6):  # whatever sits at masked positions, even out-of-range ids, is never read
        assert torch.equal(m(codes.masked_fill(mask, fill), labels, beta, mask=mask), ref)
    known = (~mask[0]).nonzero()[0, 0]
    changed = codes.clone()
    changed[0, known] = (changed[0, known] + 1) % V
    assert not torch.allclose(m(changed, labels, beta, mask=mask)[0], ref[0])  # known tokens are read

    # through the family adapter the training pipeline sees: the loss inputs depend on unmasked targets only
    g = torch.Generator().manual_seed(3)
    inputs = FAMILIES["masked"].adapter.loss_inputs(m, codes.view(3, G, G), g)
    scrambled = torch.where(inputs.loss_mask, torch.randint(V, codes.shape), codes).view(3, G, G)
    again = FAMILIES["masked"].adapter.loss_inputs(m, scrambled, torch.Generator().manual_seed(3))
    assert torch.equal(again.loss_mask, inputs.loss_mask)
    assert torch.equal(again.logits_fn(labels, beta).logits(), inputs.logits_fn(labels, beta).logits())


def test_mask_validation():
    m = tiny()
    codes, labels = torch.randint(V, (2, N)), torch.tensor([0, 1])
    uneven = torch.zeros(2, N, dtype=torch.bool)
    uneven[0, :3], uneven[1, :4] = True, True
    with pytest.raises(GFTError, match="same number of positions"):
        m(codes, labels, mask=uneven)
    with pytest.raises(GFTError, match="bool"):
        m(codes, labels, mask=uneven.long())
    with pytest.raises(GFTError, match="shape"):
        m(codes, labels, mask=uneven[:, :5])
    bad = codes.clone()
    bad[:, :] = V  # out of range at *known* positions is an error
    with pytest.raises(GFTError, match="must lie in"):
        m(bad, labels, mask=equal_count_mask(2, N, 4))
    with pytest.raises(GFTError, match="expected 16 image tokens"):
        m(codes[:, :9], labels, mask=equal_count_mask(2, 9, 4))


# ---------------------------------------------------------------------------------------------------------------
# Training masks and the loss
# ---------------------------------------------------------------------------------------------------------------
def test_mask_ratio_is_mars_truncated_normal():
    g = torch.Generator().manual_seed(0)
    r = draw_mask_ratio(g, shape=(20000,))
    assert isinstance(draw_mask_ratio(g), float)
    assert r.min() >= 0.7 and r.max() <= 1.0
    # mean of N(1, 0.25²) truncated to [0.7, 1]: 1 + 0.25·(φ(-1.2) - φ(0))/(Φ(0) - Φ(-1.2)) ≈ 0.8670 (scipy's
    # truncnorm(-1.2, 0, loc=1, scale=0.25).mean()); P(r > 0.95) = 0.2059 (its .sf(0.95))
    phi = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    Phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))
    assert abs(r.mean().item() - (1 + 0.25 * (phi(-1.2) - phi(0)) / (Phi(0) - Phi(-1.2)))) < 0.003
    assert abs((r > 0.95).float().mean().item() - 0.2059) < 0.012


def test_training_mask_shared_ratio_random_orders_deterministic_per_seed():
    masks = [draw_training_mask(32, 64, torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])
    counts = masks[0].sum(1)
    assert (counts == counts[0]).all() and 45 <= counts[0] <= 64  # ceil(64·r), r in [0.7, 1], one r per batch
    assert len({tuple(row.tolist()) for row in masks[0]}) == 32  # every sample has its own order
    # over many batches every position is masked about equally often
    g = torch.Generator().manual_seed(0)
    freq = torch.stack([draw_training_mask(16, 64, g) for _ in range(200)]).float().mean((0, 1))
    assert freq.min() > 0.8 and freq.max() < 0.93


def test_loss_counts_masked_positions_only():
    m = tiny(**NO_DROPOUT)
    codes, labels = torch.randint(V, (4, N)), torch.tensor([0, 3, 5, 7])
    g = torch.Generator().manual_seed(1)
    inputs = FAMILIES["masked"].adapter.loss_inputs(m, codes.view(4, G, G), g)
    mask = inputs.loss_mask
    assert mask.any() and not mask.all()

    def hand_ce(logits):  # mean over masked positions of -log softmax(logits)[target], written out
        total, count = 0.0, 0
        for b in range(4):
            for i in range(N):
                if mask[b, i]:
                    total -= torch.log_softmax(logits[b, i].double(), -1)[codes[b, i]].item()
                    count += 1
        return total / count

    drop = torch.tensor([False, True, False, False])
    out = cfg_loss(inputs.logits_fn, inputs.targets, labels, null_cond=10, drop=drop, loss_mask=mask)
    l_cond = m(codes, torch.where(drop, 10, labels), None, mask=mask)
    assert out.loss.item() == pytest.approx(hand_ce(l_cond), rel=1e-5)
    all_positions = F.cross_entropy(l_cond.flatten(0, 1), codes.flatten()).item()
    assert abs(all_positions - out.loss.item()) > 1e-3  # the known positions really are left out

    beta = torch.tensor([0.2, 0.5, 0.9, 1.0])
    out = gft_loss(inputs.logits_fn, inputs.targets, labels, null_cond=10, module=m, beta=beta, drop=drop,
                   loss_mask=mask)
    l_s = m(codes, torch.where(drop, 10, labels), torch.where(drop, 1.0, beta), mask=mask)
    l_u = m(codes, torch.full_like(labels, 10), torch.ones(4), mask=mask)
    mixed = beta[:, None, None] * l_s + (1 - beta[:, None, None]) * l_u
    assert out.loss.item() == pytest.approx(hand_ce(mixed), rel=1e-5)
    assert out.cond_loss.item() == pytest.approx(hand_ce(l_s), rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------------------------------------------
def test_cosine_schedule_matches_mar():
    left, seq = [], 256
    for s in range(64):  # MAR's sample_tokens, 256 tokens, num_iter=64, masked after each step
        left.append(masked_after_step(s, 64, seq, left[-1] if left else seq))
    # floor(256·cos(π/2·(s+1)/64)) is 255, 255, 255, 254, … but the "sum(mask) - 1" clamp fixes ≥ 1 token per step
    assert left[:13] == list(range(255, 242, -1)) and left[12:15] == [243, 241, 238]
    assert left[-5:] == [25, 18, 12, 6, 0]
    assert guidance_scale(3.0, "constant", 256, 100) == 3.0
    assert guidance_scale(3.0, "linear", 256, 255) == pytest.approx(1 + 2 / 256)  # ≈ 1 at the first step
    assert guidance_scale(3.0, "linear", 256, 0) == 3.0  # w at the last step


@pytest.mark.parametrize("order", ["confidence", "random"])
@pytest.mark.parametrize("mode", [dict(beta=0.5), dict(cfg_scale=2.0, cfg_schedule="linear")])
def test_one_token_per_step_fills_every_position_exactly_once(order, mode):
    m = tiny()
    trace = []
    codes = sample(m, torch.tensor([1, 2, 3]), steps=N, order=order, generator=torch.Generator().manual_seed(0),
                   callback=lambda step, c, mask: trace.append((step, c, mask)), **mode)
    assert [t[0] for t in trace] == list(range(N))
    prev_codes, prev_mask = None, torch.ones(3, N, dtype=torch.bool)
    filled_at = torch.full((3, N), -1)
    for step, c, mask in trace:
        newly = prev_mask & ~mask
        assert (newly.sum(1) == 1).all() and not (mask & ~prev_mask).any()  # one per step, never re-masked
        filled_at[newly] = step
        if prev_codes is not None:
            assert torch.equal(c[~prev_mask], prev_codes[~prev_mask])  # a fixed token never changes
        prev_codes, prev_mask = c, mask
    assert not prev_mask.any() and (filled_at >= 0).all()
    assert all(sorted(row.tolist()) == list(range(N)) for row in filled_at)  # every position exactly once
    assert torch.equal(codes, prev_codes) and codes.min() >= 0 and codes.max() < V


def test_few_steps_follow_the_cosine_schedule_and_gft_is_one_pass():
    m = tiny()
    calls = []
    real = m.hidden_at
    m.hidden_at = lambda *a: calls.append((a[0].shape[0], a[4].shape[1])) or real(*a)
    masks = []
    sample(m, torch.tensor([0, 1]), beta=0.5, steps=4, order="random", generator=torch.Generator().manual_seed(0),
           callback=lambda s, c, mask: masks.append(int(mask[0].sum())))
    assert masks == [14, 11, 6, 0]  # floor(16·cos(π/2·k/4)) for k = 1, 2, 3, then all
    assert calls == [(2, 2), (2, 3), (2, 5), (2, 6)]  # B rows per step; the head only on the tokens drawn
    calls.clear()
    sample(m, torch.tensor([0, 1]), cfg_scale=3.0, steps=4, order="confidence")
    assert calls == [(4, 16), (4, 14), (4, 11), (4, 6)]  # 2B rows; confidence needs every masked position


def test_sampling_is_deterministic_per_generator_and_greedy_confidence_is_argmax():
    m = tiny()
    a = sample(m, torch.tensor([3, 4]), beta=0.4, steps=5, generator=torch.Generator().manual_seed(5))
    b = sample(m, torch.tensor([3, 4]), beta=0.4, steps=5, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # one step, greedy: every token is the argmax of the first pass's logits
    greedy = sample(m, torch.tensor([3]), beta=1.0, steps=1, temperature=0.0)
    ref = m(torch.zeros(1, N, dtype=torch.long), torch.tensor([3]), torch.ones(1),
            mask=torch.ones(1, N, dtype=torch.bool)).argmax(-1)
    assert torch.equal(greedy, ref)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
@pytest.mark.parametrize("scale", [2.0, 150.0])  # 150: logits beyond exp's float32 range take the max-shifted path
def test_token_draw_gives_the_log_probability_it_drew_from(temperature, scale):
    from gft_tokens.families.masked.sampler import _draw

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 12, generator=g) * scale
    tokens, logp = _draw(logits.clone(), temperature, 0, 1.0, torch.Generator().manual_seed(1))
    ref = F.log_softmax(logits / (temperature or 1.0), dim=-1)
    assert torch.allclose(logp, ref.gather(1, tokens[:, None]).squeeze(1), atol=1e-4)
    if temperature == 0:
        assert torch.equal(tokens, logits.argmax(-1))
    elif scale == 2.0:  # one fixed row drawn many times follows softmax(ℓ/T)
        row = logits[:1].expand(20000, -1).clone()
        freq = torch.bincount(_draw(row, temperature, 0, 1.0, torch.Generator().manual_seed(2))[0], minlength=12)
        assert (freq / 20000.0 - ref[0].exp()).abs().max() < 0.015


def test_chunked_head_and_cfg_mix_match_full_logits(monkeypatch):
    """Decoder states → head chunk by chunk (here 3 rows at a time) → u + w·(c − u): same tokens and log p as
    the full logits."""
    import gft_tokens.families.masked.sampler as sm

    head = torch.nn.Linear(8, V)
    hidden = torch.randn(2, 10, 8, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(sm, "_CHUNK_ELEMENTS", 3 * V)
    with torch.no_grad():
        c, u = head(hidden[0]), head(hidden[1])
        mixed = u + 2.5 * (c - u)
        tokens, logp = sm._draw_from_states(head, hidden, 2.5, 0.0, 0, 1.0, None)
        assert torch.equal(tokens, mixed.argmax(-1))
        assert torch.allclose(logp, F.log_softmax(mixed, -1).gather(1, tokens[:, None]).squeeze(1), atol=1e-5)
        tokens, logp = sm._draw_from_states(head, hidden[0], None, 0.0, 0, 1.0, None)
        assert torch.equal(tokens, c.argmax(-1))


def test_cfg_mode_mixes_guided_logits():
    """CFG with the constant schedule at scale w, greedy, one step: argmax of u + w·(c − u)."""
    m = tiny(beta_embed=False)
    full = torch.ones(2, N, dtype=torch.bool)
    zeros = torch.zeros(2, N, dtype=torch.long)
    labels = torch.tensor([2, 6])
    c, u = m(zeros, labels, mask=full), m(zeros, torch.full_like(labels, 10), mask=full)
    got = sample(m, labels, cfg_scale=3.0, steps=1, temperature=0.0)
    assert torch.equal(got, (u + 3.0 * (c - u)).argmax(-1))


@pytest.mark.parametrize("kwargs, message", [
    (dict(beta=1.5), "beta must lie in"),
    (dict(beta=float("nan")), "beta is NaN"),
    (dict(beta=0.5, steps=0), "steps must be a positive integer"),
    (dict(beta=0.5, steps=-3), "steps must be a positive integer"),
    (dict(beta=0.5, steps=2.5), "steps must be a positive integer"),
    (dict(beta=0.5, steps=N + 1), "at most the number of tokens"),
    (dict(beta=0.5, order="raster"), "order must be one of"),
    (dict(cfg_scale=2.0, cfg_schedule="cosine"), "cfg_schedule must be one of"),
    (dict(beta=0.5, choice_temperature=-1.0), "choice_temperature"),
    (dict(beta=0.5, temperature=-1.0), "temperature"),
    (dict(beta=0.5, top_p=0.0), "top_p"),
])
def test_sampler_bad_inputs(kwargs, message):
    with pytest.raises(GFTError, match=message):
        sample(tiny(), torch.tensor([0, 1]), **kwargs)


def test_sampler_bad_labels_and_beta_without_beta_input():
    m = tiny()
    with pytest.raises(GFTError, match="class id 10 is outside"):
        sample(m, torch.tensor([0, 10]), beta=0.5)  # the null class is not a sampling target
    with pytest.raises(GFTError, match="class id -1"):
        sample(m, torch.tensor([-1]), beta=0.5)
    with pytest.raises(GFTError, match="integers"):
        sample(m, torch.tensor([0.5]), beta=0.5)
    with pytest.raises(GFTError, match="no β input"):
        sample(tiny(beta_embed=False), torch.tensor([0]), beta=0.5)


# ---------------------------------------------------------------------------------------------------------------
# Training (real DeepSpeed, CPU) and the CLIs
# ---------------------------------------------------------------------------------------------------------------
def options(tmp_path, **kw):
    base = dict(preset="MAR-nano", tokenizer=str(SHIPPED_VQ), train_images=200, steps=4, batch_size=16,
                lr=3e-3, warmup_steps=1, save_every=0, log_every=1, out=str(tmp_path / "run"))
    return TrainOptions(**{**base, **kw})


def test_deepspeed_zero3_run_decreases_loss(tmp_path):
    summary = train("masked", options(tmp_path, zero_stage=3))
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert summary["family"] == "masked" and summary["zero_stage"] == 3
    m = load_model(tmp_path / "run" / "model")
    assert isinstance(m, MaskedTokenModel) and m.config.tokenizer["codebook_size"] == 1024
    assert m.config.grid_size == 8 and m.config.vocab_size == 1024
    assert sample_codes(m, torch.tensor([0, 9]), beta=0.5, steps=4).shape == (2, 64)


def test_gft_finetune_of_a_cfg_checkpoint_starts_exactly_there(tmp_path):
    train("masked", options(tmp_path / "cfg", objective="cfg", steps=2))
    cfg_model = load_model(tmp_path / "cfg" / "run" / "model")
    assert cfg_model.beta_embedder is None
    train("masked", options(tmp_path / "ft", objective="gft", init_from=str(tmp_path / "cfg" / "run" / "model"),
                            steps=1, lr=0.0, weight_decay=0.0))
    ft = load_model(tmp_path / "ft" / "run" / "model")
    assert ft.beta_embedder is not None
    codes, labels = torch.randint(1024, (3, 64)), torch.tensor([0, 5, 10])
    mask = equal_count_mask(3, 64, 50)
    ref = cfg_model(codes, labels, mask=mask)
    for beta in (0.0, 0.1, 0.5, 1.0):
        assert torch.equal(ft(codes, labels, torch.full((3,), beta), mask=mask), ref)


def test_train_masked_script_defaults_and_help():
    proc = run_script("train_masked.py", "--help", env={"COLUMNS": "250"})
    assert proc.returncode == 0
    for field in TrainOptions.__dataclass_fields__:
        if field != "model":
            assert "--" + field.replace("_", "-") in proc.stdout, field
    assert "(default: runs/masked)" in proc.stdout and "(default: MAR-tiny)" in proc.stdout
    assert "optimizer steps; in [1, inf) (default: 1500)" in proc.stdout


def test_generate_and_bench_with_the_masked_family(tmp_path):
    from gft_tokens.tokenizers import load_tokenizer

    from PIL import Image

    tok = load_tokenizer(SHIPPED_VQ)
    torch.manual_seed(0)
    m = build_model("masked", "MAR-nano", vocab_size=1024, grid_size=8, num_classes=10,
                    tokenizer={**tok.describe(), "path": str(SHIPPED_VQ)})
    torch.nn.init.normal_(m.output.weight, std=0.1)
    m.save_pretrained(tmp_path / "m")
    proc = run_script("generate.py", "--model", "masked", "--ckpt", str(tmp_path / "m"), "--beta", "0.5",
                      "--classes", "0", "3", "--n-per-class", "2", "--steps", "4", "--order", "random",
                      "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    Image.open(tmp_path / "out" / "grid.png").verify()
    assert np.load(tmp_path / "out" / "samples.npz")["arr_0"].shape == (4, 32, 32, 3)
    proc = run_script("generate.py", "--model", "masked", "--ckpt", str(tmp_path / "m"), "--cfg-scale", "2",
                      "--cfg-schedule", "linear", "--n-per-class", "1", "--out", str(tmp_path / "cfg"))
    assert proc.returncode == 0, proc.stderr
    bad = run_script("generate.py", "--model", "masked", "--ckpt", str(tmp_path / "m"), "--steps", "0",
                     "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "argument --steps: must lie in [1, inf), got 0" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()

    proc = run_script("bench_sampling.py", "--model", "masked", "--preset", "MAR-nano", "--grid", "4", "--vocabs",
                      "64", "--batch", "2", "--repeats", "1", "--steps", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["model"] == "masked" and result["gft_vs_cfg_speedup"] > 0  # the default (random) order
    assert result["gft_vs_cfg_speedup_confidence"] > 0
