import json

import numpy as np
import pytest
import torch

from conftest import ROOT, run_script, script_main
from gft_tokens import GFTError
from gft_tokens.pretrained import config_replace
from gft_tokens.families import build_model, load_model
from gft_tokens.families.var.model import PRESETS, VAR, var_config
from gft_tokens.families import sample_codes
from gft_tokens.families.var.sampler import guidance_strengths, sample
from gft_tokens.tokenizers import MultiScaleVQConfig, MultiScaleVQTokenizer
from gft_tokens.tokenizers.multiscale import split_scales

SCALES = [1, 2, 3, 4]  # L = 30 tokens
VOCAB = 48


def quantizer_state(seed=0, cvae=8, vocab=VOCAB, n_phi=4):
    g = torch.Generator().manual_seed(seed)
    return {"embedding": torch.randn(vocab, cvae, generator=g),
            "resi_weight": torch.randn(n_phi, cvae, cvae, 3, 3, generator=g) * 0.1,
            "resi_bias": torch.randn(n_phi, cvae, generator=g) * 0.1}


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    m = build_model("var", "d1", **{"vocab_size": VOCAB, "scales": SCALES, "cvae": 8, "num_classes": 10, **kw})
    m.load_quantizer(quantizer_state())
    # A fresh model has near-zero AdaLN gates, a small head and a zero β embedding: randomise them so that the
    # tests see every path (attention, FFN, β) in the logits.
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "ada_lin" in name or "ada_gss" in name or name.startswith(("head.", "beta_embedder.mlp.2")):
                p.normal_(0, 0.3)
    return m.eval()


def codes_batch(b=3, seed=0):
    return torch.randint(VOCAB, (b, 30), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("preset, width, params", [
    ("d16", 1024, 310_283_520),  # VAR-d16's own count (README: 310M), same parameter layout
    ("d20", 1280, None), ("d24", 1536, None), ("d30", 1920, None),
])
def test_presets_follow_vars_depth_rule(preset, width, params):
    cfg = var_config(preset, beta_embed=False)
    assert (cfg.embed_dim, cfg.num_heads, cfg.head_dim) == (width, cfg.depth, 64)
    assert cfg.num_tokens == 680 and cfg.drop_path_rate == pytest.approx(0.1 * cfg.depth / 24)
    if params is not None:
        with torch.device("meta"):
            m = VAR(cfg)
        assert sum(p.numel() for p in m.parameters()) == params
    assert {"d1", "d2", "d3", "d4", "d6"} <= set(PRESETS)


def test_block_causal_mask():
    m = tiny()
    level = torch.tensor([k for k, s in enumerate(SCALES) for _ in range(s * s)])
    assert torch.equal(m.attn_mask, level[:, None] >= level[None, :])


@pytest.mark.parametrize("changed_scale", [0, 1, 2])
def test_a_token_never_sees_a_finer_scale(changed_scale):
    """Changing the codes of scale j changes the inputs of scales > j only: logits of scales ≤ j stay put."""
    m = tiny()
    codes, labels, beta = codes_batch(), torch.tensor([1, 2, 3]), torch.tensor([0.3, 0.7, 1.0])
    bounds = m.bounds
    start, end = bounds[changed_scale]
    changed = codes.clone()
    changed[:, start:end] = (changed[:, start:end] + 1) % VOCAB
    a, b = m(codes, labels, beta), m(changed, labels, beta)
    assert torch.allclose(a[:, :end], b[:, :end], atol=1e-5)
    nxt = slice(*bounds[changed_scale + 1])
    assert not torch.allclose(a[:, nxt], b[:, nxt], atol=1e-3)
    # and the finest scale's codes never enter the model at all (they are only targets)
    last = codes.clone()
    last[:, bounds[-1][0]:] = 0
    assert torch.equal(m(last, labels, beta), a)


def test_teacher_forcing_matches_scale_by_scale_recompute():
    m = tiny()
    codes, labels = codes_batch(), torch.tensor([0, 4, 9])
    maps = split_scales(codes, SCALES)
    full = m(codes, labels, torch.full((3,), 0.5))
    cond = m.condition(labels, torch.full((3,), 0.5))
    for k, (s, e) in enumerate(m.bounds):
        assert torch.allclose(m.recompute_logits(maps[:k], cond), full[:, s:e], atol=1e-5)


def test_inputs_follow_the_tokenizers_fhat():
    """The model's input for scale k+1 is the tokenizer's f̂ after scales ≤ k, area-downsampled (VAR's route)."""
    torch.manual_seed(0)
    tok = MultiScaleVQTokenizer(MultiScaleVQConfig(channels=8, z_channels=8, codebook_size=VOCAB, codebook_dim=8,
                                                   scales=[1, 2, 4, 8]))
    tok.quantize.codebook = torch.randn(VOCAB, 8)
    m = build_model("var", "d1", vocab_size=VOCAB, scales=[1, 2, 4, 8], cvae=8, num_classes=10)
    m.load_quantizer(tok)
    maps = [torch.randint(VOCAB, (2, s, s)) for s in (1, 2, 4)]
    with torch.no_grad():
        x = m.teacher_inputs(maps)  # inputs of scales 1, 2, 3: 4 + 16 + 64 tokens
        f1 = tok.contribution(maps[0], 0) + tok.contribution(maps[1], 1)
        f2 = f1 + tok.contribution(maps[2], 2)
    area = torch.nn.functional.interpolate
    assert x.shape == (2, 84, 8)
    assert torch.allclose(x[:, :4], area(tok.contribution(maps[0], 0), size=(2, 2), mode="area").flatten(2).mT)
    assert torch.allclose(x[:, 4:20], area(f1, size=(4, 4), mode="area").flatten(2).mT, atol=1e-6)
    assert torch.allclose(x[:, 20:], f2.flatten(2).mT, atol=1e-6)


def test_beta_reaches_the_start_token_and_every_adaln():
    m = tiny()
    labels = torch.tensor([3])
    cond_a, cond_b = m.condition(labels, torch.tensor([1.0])), m.condition(labels, torch.tensor([0.2]))
    assert not torch.allclose(cond_a, cond_b)
    assert not torch.allclose(m.start_tokens(cond_a), m.start_tokens(cond_b))
    for block in m.blocks:
        assert not torch.allclose(block.ada_lin(cond_a), block.ada_lin(cond_b))
    fresh = build_model("var", "d1", vocab_size=VOCAB, scales=SCALES, cvae=8, num_classes=10)
    assert fresh.beta_embedder.mlp[2].weight.abs().sum() == 0  # zero-init: a fresh β branch changes nothing


def test_weight_decay_groups_follow_var():
    from gft_tokens.train.engine import param_groups

    m = tiny(shared_aln=True)
    decay, no_decay = param_groups(m, 0.05)
    names = {id(p): n for n, p in m.named_parameters()}
    off = {names[id(p)] for p in no_decay["params"]}
    on = {names[id(p)] for p in decay["params"]}
    assert {"pos.pos_start", "pos.pos_1LC", "pos.lvl_embed.weight", "blocks.0.attn.scale_mul_1H11",
            "blocks.0.ada_gss", "blocks.0.attn.q_bias"} <= off
    assert {"class_emb.weight", "word_embed.weight", "head.weight", "blocks.0.attn.mat_qkv.weight"} <= on
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_shared_adaln_variant():
    m = tiny(shared_aln=True)
    assert m.shared_ada_lin is not None and not hasattr(m.blocks[0], "ada_lin")
    assert m(codes_batch(), torch.tensor([0, 1, 2]), torch.full((3,), 0.5)).shape == (3, 30, VOCAB)


@pytest.mark.parametrize("kw", [
    dict(beta=0.4),
    dict(cfg_scale=2.5),
    dict(cfg_scale=4.0, cfg_schedule="constant", top_k=10, top_p=0.9),
    dict(beta=torch.tensor([1.0, 0.5, 0.1]), temperature=0.8),
])
def test_cached_scalewise_sampling_equals_recompute(kw):
    m = tiny()
    labels = torch.tensor([0, 3, 9])
    a = sample(m, labels, generator=torch.Generator().manual_seed(1), **kw)
    b = sample(m, labels, generator=torch.Generator().manual_seed(1), use_cache=False, **kw)
    assert torch.equal(a, b), kw
    assert a.shape == (3, 30) and a.min() >= 0 and a.max() < VOCAB


def test_cfg_uses_vars_convention_and_ramp():
    assert guidance_strengths(1.5, 4) == [0.0, 0.5, 1.0, 1.5]
    assert guidance_strengths(1.5, 4, "constant") == [1.5] * 4
    m = tiny()
    labels = torch.tensor([2])
    t = 2.0
    codes = sample(m, labels, cfg_scale=1 + t, cfg_schedule="constant", temperature=0.0)  # greedy: t = w - 1
    c = m.recompute_logits([], m.condition(labels, torch.ones(1)))
    u = m.recompute_logits([], m.condition(torch.tensor([10]), torch.ones(1)))
    assert codes[0, 0] == ((1 + t) * c - t * u).argmax()
    # the linear ramp starts at t = 0: the first scale is the conditional model's
    assert sample(m, labels, cfg_scale=1 + t, temperature=0.0)[0, 0] == c.argmax()
    # w = 1 (t = 0) is the conditional model, sampled in one pass
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    assert torch.equal(sample(m, labels, cfg_scale=1.0, generator=g()), sample(m, labels, generator=g()))


def test_exact_start_from_cfg_checkpoint(tmp_path):
    """A GFT model built from a CFG VAR checkpoint gives, at step 0 and any β, the CFG model's logits."""
    from gft_tokens.train.loop import _load_init_state

    cfg_model = tiny(beta_embed=False)
    cfg_model.save_pretrained(tmp_path / "cfg")
    loaded = load_model(tmp_path / "cfg")
    gft = VAR(config_replace(loaded.config, beta_embed=True))
    _load_init_state(gft, loaded.state_dict(), stage=0, rank=0, where="test")
    gft.load_quantizer(quantizer_state())
    gft.eval()
    codes, labels = codes_batch(4), torch.tensor([0, 1, 2, 10])
    ref = cfg_model(codes, labels)
    for beta in (0.0, 0.3, 0.77, 1.0):
        assert torch.equal(gft(codes, labels, torch.full((4,), beta)), ref)


def test_save_load_keeps_the_quantizer(tmp_path):
    m = tiny()
    m.save_pretrained(tmp_path / "m")
    again = load_model(tmp_path / "m")
    codes, labels, beta = codes_batch(), torch.tensor([1, 2, 3]), torch.full((3,), 0.5)
    assert torch.equal(again(codes, labels, beta), m(codes, labels, beta))


# -- training through the shared loop ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def msvq_dir(tmp_path_factory):
    """A small multi-scale tokenizer (one k-means step), saved like a shipped one."""
    torch.manual_seed(0)
    from gft_tokens.data import ShapesDataset

    tok = MultiScaleVQTokenizer(MultiScaleVQConfig(channels=8, z_channels=8, codebook_size=64, codebook_dim=8))
    tok.train()
    tok(ShapesDataset(16).tensors()[0])
    path = tmp_path_factory.mktemp("tok") / "msvq"
    tok.eval().save_pretrained(path)
    return path


def train_options(tmp_path, tok, **kw):
    from gft_tokens.train.loop import TrainOptions

    base = dict(preset="d1", tokenizer=str(tok), train_images=200, steps=4, batch_size=8, lr=3e-3, warmup_steps=1,
                save_every=0, log_every=1, out=str(tmp_path / "run"))
    return TrainOptions(**{**base, **kw})


def test_deepspeed_gft_run_decreases_loss_then_cfg_to_gft_exact_start(tmp_path, msvq_dir):
    from gft_tokens.train.loop import train

    summary = train("var", train_options(tmp_path / "gft", msvq_dir))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "gft" / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert summary["family"] == "var"
    model = load_model(tmp_path / "gft" / "run" / "model")
    assert model.config.tokenizer["scales"] == [1, 2, 3, 4, 6, 8] and bool(model.quantizer.loaded)

    train("var", train_options(tmp_path / "cfg", msvq_dir, objective="cfg", steps=2))
    cfg_model = load_model(tmp_path / "cfg" / "run" / "model")
    assert cfg_model.beta_embedder is None
    train("var", train_options(tmp_path / "ft", msvq_dir, objective="gft", steps=1, lr=0.0, weight_decay=0.0,
                               init_from=str(tmp_path / "cfg" / "run" / "model")))
    ft = load_model(tmp_path / "ft" / "run" / "model")
    codes = torch.randint(64, (3, 130))
    labels = torch.tensor([0, 5, 10])
    ref = cfg_model(codes, labels)
    for beta in (0.1, 0.5, 1.0):
        assert torch.equal(ft(codes, labels, torch.full((3,), beta)), ref)


def test_var_training_refuses_a_single_scale_tokenizer(tmp_path):
    from gft_tokens.train.loop import train

    with pytest.raises(GFTError, match="multi-scale tokenizer"):
        train("var", train_options(tmp_path, ROOT / "tokenizers" / "shapes-vq", steps=1))


def test_train_var_script_help_has_var_defaults():
    proc = run_script("train_var.py", "--help")
    assert proc.returncode == 0
    assert "tokenizers/shapes-msvq" in proc.stdout and "runs/var" in proc.stdout and "d2" in proc.stdout


# -- generate.py ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory, msvq_dir):
    from gft_tokens.tokenizers import load_tokenizer

    tok = load_tokenizer(msvq_dir)
    torch.manual_seed(0)
    m = build_model("var", "d1", vocab_size=64, scales=tok.scales, cvae=8, num_classes=10,
                    tokenizer={**tok.describe(), "path": str(msvq_dir)})
    m.load_quantizer(tok)
    path = tmp_path_factory.mktemp("var") / "model"
    m.save_pretrained(path)
    return path


def test_generate_var_gft_and_cfg(exported, tmp_path):
    proc = run_script("generate.py", "--model", "var", "--ckpt", str(exported), "--beta", "0.5", "--classes", "0", "3",
                      "--n-per-class", "2", "--out", str(tmp_path / "gft"))
    assert proc.returncode == 0, proc.stderr
    data = np.load(tmp_path / "gft" / "samples.npz")
    assert data["arr_0"].shape == (4, 32, 32, 3) and data["arr_1"].tolist() == [0, 0, 3, 3]
    proc = run_script("generate.py", "--model", "var", "--ckpt", str(exported), "--cfg", "1.5", "--top-k", "20",
                      "--n-per-class", "1", "--out", str(tmp_path / "cfg"))
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "cfg" / "samples.npz")["arr_0"].shape[0] == 10
    assert (tmp_path / "cfg" / "grid.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--cfg-scale", "2", "--cfg", "1"], "not both"),
    (["--cfg-schedule", "linear"], "give --cfg-scale too"),
    (["--steps", "4"], "--steps does not apply to var models"),
    (["--beta", "1.5"], "argument --beta: must lie in [0, 1], got 1.5"),
])
def test_generate_var_bad_input(exported, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        script_main("generate.py")(["--model", "var", "--ckpt", str(exported), *args, "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_generate_refuses_a_tokenizer_with_other_scales(msvq_dir, tmp_path, capsys):
    from gft_tokens.tokenizers import load_tokenizer

    tok = load_tokenizer(msvq_dir)
    m = build_model("var", "d1", vocab_size=64, scales=[1, 2, 4, 8], cvae=8, num_classes=10,
                    tokenizer={**tok.describe(), "scales": [1, 2, 4, 8], "path": str(msvq_dir)})
    m.load_quantizer({**tok.quantizer_state()})
    m.save_pretrained(tmp_path / "m")
    with pytest.raises(SystemExit) as exc:
        script_main("generate.py")(["--model", "var", "--ckpt", str(tmp_path / "m"), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "tokenizer mismatch: the model was trained with scales" in capsys.readouterr().err


def test_sample_codes_dispatches_to_the_next_scale_sampler():
    m = tiny()
    codes = sample_codes(m, torch.tensor([1, 2]), beta=0.5, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, 30)


# -- bad input -----------------------------------------------------------------------------------------------------
def test_unknown_preset():
    with pytest.raises(GFTError, match="unknown VAR preset 'd17'.*did you mean"):
        var_config("d17")


@pytest.mark.parametrize("codes, message", [
    (torch.zeros(2, 29, dtype=torch.long), r"shape \(B, 30\)"),
    (torch.full((2, 30), VOCAB), r"\[0, 48\)"),
    (torch.zeros(2, 30), "integer"),
])
def test_bad_codes(codes, message):
    with pytest.raises(GFTError, match=message):
        tiny()(codes, torch.tensor([0, 1]))


@pytest.mark.parametrize("beta", [1.5, -0.2, float("nan")])
def test_bad_beta(beta):
    with pytest.raises(GFTError, match="beta"):
        sample(tiny(), torch.tensor([0]), beta=beta)


def test_beta_on_cfg_model_and_bad_cfg():
    with pytest.raises(GFTError, match="no β input"):
        sample(tiny(beta_embed=False), torch.tensor([0]), beta=0.5)
    with pytest.raises(GFTError, match="cfg_schedule"):
        sample(tiny(), torch.tensor([0]), cfg_scale=2.0, cfg_schedule="cosine")
    with pytest.raises(GFTError, match="class id 10"):
        sample(tiny(), torch.tensor([10]), beta=0.5)


def test_model_without_quantizer_is_refused():
    m = build_model("var", "d1", vocab_size=VOCAB, scales=SCALES, cvae=8, num_classes=10)
    with pytest.raises(GFTError, match="load_quantizer"):
        m(codes_batch(), torch.tensor([0, 1, 2]))
    with pytest.raises(GFTError, match="does not fit this VAR model"):
        m.load_quantizer(quantizer_state(cvae=4))


def test_scale_schedule_errors():
    with pytest.raises(GFTError, match="strictly increasing"):
        var_config("d1", scales=[1, 4, 2])


# ---------------------------------------------------------------------------------------------------------------
# Official VAR checkpoints: the `var` importer against a functional re-implementation of VAR's forward pass
# ---------------------------------------------------------------------------------------------------------------
def official_var_logits(sd, vae, labels, maps, patch_nums):
    """Teacher-forced logits of an official VAR state dict, written from VAR's published forward pass."""
    import math

    import torch.nn.functional as F

    C = sd["class_emb.weight"].shape[1]
    H, g, K = C // 64, patch_nums[-1], len(patch_nums)
    cond = sd["class_emb.weight"][labels]
    emb = vae["quantize.embedding.weight"]
    n_phi = len({k.split(".")[3] for k in vae if k.startswith("quantize.quant_resi.qresi_ls.")})
    ticks = np.linspace(1 / 3 / n_phi, 1 - 1 / 3 / n_phi, n_phi)
    f_hat, inputs = torch.zeros(len(labels), emb.shape[1], g, g), []
    for si in range(K - 1):  # idxBl_to_var_input
        h = F.interpolate(emb[maps[si]].permute(0, 3, 1, 2), size=(g, g), mode="bicubic")
        k = int(np.argmin(np.abs(ticks - si / (K - 1))))
        conv = F.conv2d(h, vae[f"quantize.quant_resi.qresi_ls.{k}.weight"],
                        vae[f"quantize.quant_resi.qresi_ls.{k}.bias"], padding=1)
        f_hat = f_hat + 0.5 * h + 0.5 * conv
        nxt = patch_nums[si + 1]
        inputs.append(F.interpolate(f_hat, size=(nxt, nxt), mode="area").flatten(2).transpose(1, 2))
    words = F.linear(torch.cat(inputs, 1), sd["word_embed.weight"], sd["word_embed.bias"])
    x = torch.cat([cond[:, None] + sd["pos_start"], words], 1)
    lvl = torch.cat([torch.full((p * p,), i) for i, p in enumerate(patch_nums)])
    x = x + sd["lvl_embed.weight"][lvl][None] + sd["pos_1LC"]
    bias = torch.where(lvl[:, None] >= lvl[None, :], 0.0, -math.inf)
    B, L = x.shape[:2]

    def ln(t):
        return F.layer_norm(t, (C,), eps=1e-6)

    for i in range(len({k.split(".")[1] for k in sd if k.startswith("blocks.")})):
        p = lambda n: sd[f"blocks.{i}.{n}"]  # noqa: E731
        g1, g2, s1, s2, b1, b2 = F.linear(F.silu(cond), p("ada_lin.1.weight"), p("ada_lin.1.bias")).view(
            B, 1, 6, C).unbind(2)
        qkv_bias = torch.cat([p("attn.q_bias"), torch.zeros(C), p("attn.v_bias")])
        qkv = F.linear(ln(x) * (1 + s1) + b1, p("attn.mat_qkv.weight"), qkv_bias)
        q, k, v = qkv.view(B, L, 3, H, C // H).permute(2, 0, 3, 1, 4).unbind(0)
        q = F.normalize(q, dim=-1) * p("attn.scale_mul_1H11").clamp_max(math.log(100)).exp()
        k = F.normalize(k, dim=-1)
        att = ((q @ k.transpose(-1, -2)) + bias).softmax(-1) @ v
        x = x + F.linear(att.transpose(1, 2).reshape(B, L, C), p("attn.proj.weight"), p("attn.proj.bias")) * g1
        hid = F.gelu(F.linear(ln(x) * (1 + s2) + b2, p("ffn.fc1.weight"), p("ffn.fc1.bias")), approximate="tanh")
        x = x + F.linear(hid, p("ffn.fc2.weight"), p("ffn.fc2.bias")) * g2
    scale, shift = F.linear(F.silu(cond), sd["head_nm.ada_lin.1.weight"], sd["head_nm.ada_lin.1.bias"]).view(
        B, 1, 2, C).unbind(2)
    return F.linear(ln(x) * (1 + scale) + shift, sd["head.weight"], sd["head.bias"])


@pytest.fixture(scope="module")
def official_var():
    """Random weights in the official layouts: VAR-d2 at VAR's 256px schedule, and a narrow VQVAE."""
    from gft_tokens.families.var.importer import PATCH_NUMS, var_layout, vqvae_layout

    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) * 0.1
          for k, s in var_layout(2, patch_nums=PATCH_NUMS[256], num_classes=10, vocab=64, cvae=8).items()}
    for i in range(2):
        sd[f"blocks.{i}.attn.scale_mul_1H11"] = torch.full((1, 2, 1, 1), 1.4) + torch.randn(1, 2, 1, 1, generator=g)
    vae = {k: torch.randn(s, generator=g) * 0.1
           for k, s in vqvae_layout(ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, vocab=64).items()}
    return sd, vae, list(PATCH_NUMS[256])


def test_official_var_import_equals_vars_forward(official_var, tmp_path):
    from gft_tokens.importers import import_checkpoint

    sd, vae, patch_nums = official_var
    torch.save(sd, tmp_path / "var_d2.pth")
    torch.save(vae, tmp_path / "vae.pth")
    converted = import_checkpoint("var", tmp_path / "var_d2.pth", tmp_path / "m", vqvae=str(tmp_path / "vae.pth"))
    assert any("zero-initialised" in n for n in converted.notes)
    model = load_model(tmp_path / "m").eval()
    assert model.scales == patch_nums and model.config.depth == 2 and model.config.share_quant_resi == 4
    g = torch.Generator().manual_seed(1)
    maps = [torch.randint(64, (3, p, p), generator=g) for p in patch_nums]
    labels = torch.tensor([0, 5, 10])  # 10: the null class
    ref = official_var_logits(sd, vae, labels, maps, patch_nums)
    codes = torch.cat([m.flatten(1) for m in maps], 1)
    with torch.no_grad():
        for beta in (None, torch.tensor([0.0, 0.5, 1.0])):  # the added β embedder starts at exactly zero
            torch.testing.assert_close(model(codes, labels, beta), ref, atol=2e-5, rtol=1e-4)
        cfg_model = VAR(config_replace(model.config, beta_embed=False))  # and every tensor made the trip
    state = model.state_dict()
    for k, v in sd.items():
        if k in ("lvl_1L", "attn_bias_for_masking") or k.endswith("zero_k_bias"):
            continue
        assert torch.equal(state[{"pos_start": "pos.pos_start", "pos_1LC": "pos.pos_1LC",
                                  "lvl_embed.weight": "pos.lvl_embed.weight"}.get(k, k)], v), k
    assert torch.equal(state["quantizer.resi_weight"][3], vae["quantize.quant_resi.qresi_ls.3.weight"])
    assert len(cfg_model.state_dict()) == len(state) - 4


def test_official_var_import_errors(official_var, tmp_path):
    from gft_tokens.importers import convert_state_dict

    sd, vae, _ = official_var
    with pytest.raises(GFTError, match="reads its inputs through the VQVAE"):
        convert_state_dict("var", sd)
    small = {**vae, "quantize.embedding.weight": torch.zeros(32, 8)}
    with pytest.raises(GFTError, match="differ in shape|does not fit"):
        convert_state_dict("var", sd, vqvae=small)
    with pytest.raises(GFTError, match="trained with 10 scales"):
        convert_state_dict("var-vqvae", vae, image_size=8, scales="1,2,4")
    with pytest.raises(GFTError, match="takes no option 'grid_size'"):
        convert_state_dict("var", sd, vqvae=vae, grid_size=16)
