import json

import pytest
import torch

from conftest import ROOT, script_main
from gft_tokens import GFTError
from gft_tokens.data import ShapesDataset, heldout
from gft_tokens.tokenizers import MultiScaleVQConfig, MultiScaleVQTokenizer, load_tokenizer
from gft_tokens.tokenizers.losses import psnr
from gft_tokens.tokenizers.multiscale import VAR_SCALES_256, flatten_scales, phi_indices, split_scales
from gft_tokens.tokenizers.trainer import evaluate_tokenizer

SHIPPED_MSVQ = ROOT / "tokenizers" / "shapes-msvq"
TINY = dict(channels=8, channel_mult=[1, 2, 2], z_channels=8, codebook_size=64, codebook_dim=8)


@pytest.fixture(scope="module")
def tiny():
    """A tiny multi-scale tokenizer after one training step (k-means initialises the codebook)."""
    torch.manual_seed(0)
    tok = MultiScaleVQTokenizer(MultiScaleVQConfig(**TINY))
    x, _ = ShapesDataset(8).tensors()
    tok.train()
    tok(x)
    return tok.eval()


@pytest.fixture(scope="module")
def images():
    return ShapesDataset(6, seed=3).tensors()[0]


def test_encode_returns_one_code_map_per_scale(tiny, images):
    codes = tiny.encode(images)
    assert [tuple(c.shape) for c in codes] == [(6, s, s) for s in (1, 2, 3, 4, 6, 8)]
    assert all(c.dtype == torch.int64 and c.min() >= 0 and c.max() < 64 for c in codes)
    recon = tiny.decode(codes)
    assert recon.shape == (6, 3, 32, 32) and recon.min() >= -1 and recon.max() <= 1
    assert tiny.grid_size == (8, 8) and tiny.codebook_size == 64 and tiny.num_tokens == 130
    assert tiny.describe()["scales"] == [1, 2, 3, 4, 6, 8]


def test_decode_is_the_residual_sum_of_the_training_forward(tiny, images):
    recon, codes, _ = tiny(images)  # eval mode: no codebook update
    again = tiny.encode(images)
    assert all(torch.equal(a, b) for a, b in zip(codes, again))
    assert torch.allclose(recon.clamp(-1, 1), tiny.decode(again), atol=1e-4)  # f + sg(f̂ − f) vs f̂
    # f̂ is the sum of every scale's φ(upsample(codebook[codes])) contribution
    f_hat = sum(tiny.contribution(c, k) for k, c in enumerate(again))
    assert torch.allclose(tiny.codes_to_latents(again), f_hat, atol=1e-6)


def test_encode_does_not_update_the_codebook(tiny, images):
    tiny.train()
    try:
        before = tiny.quantize.codebook.clone()
        tiny.encode(images)
        assert torch.equal(before, tiny.quantize.codebook) and tiny.training
    finally:
        tiny.eval()


def test_training_step_updates_the_shared_codebook_once_from_all_scales():
    torch.manual_seed(0)
    tok = MultiScaleVQTokenizer(MultiScaleVQConfig(**TINY)).train()
    x, _ = ShapesDataset(8).tensors()
    recon, codes, loss = tok(x)
    assert bool(tok.quantize._codebook.initted)  # k-means on vectors of every scale, 8·130 ≥ 64 codes
    assert loss.ndim == 0 and loss > 0
    loss.backward()
    assert all(conv.weight.grad is not None for conv in tok.quant_resi)  # φ convs learn through VAR's loss
    assert tok.encoder.conv_in.weight.grad is not None


def test_save_load_round_trip(tiny, images, tmp_path):
    tiny.save_pretrained(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert isinstance(again, MultiScaleVQTokenizer) and again.scales == tiny.scales
    a, b = tiny.encode(images), again.encode(images)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(tiny.decode(a), again.decode(b))
    flat = flatten_scales(a)
    assert flat.shape == (6, 130)
    assert all(torch.equal(x, y) for x, y in zip(split_scales(flat, tiny.scales), a))


def test_phi_assignment_is_vars():
    assert phi_indices(10, 4) == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]  # VAR's 256px schedule, 4 partially shared φ
    assert phi_indices(14, 4) == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    assert phi_indices(6, 4) == [0, 0, 1, 2, 3, 3]
    assert phi_indices(6, 1) == [0] * 6 and phi_indices(6, 0) == list(range(6))
    assert len(MultiScaleVQTokenizer(MultiScaleVQConfig(**TINY, share_quant_resi=0)).quant_resi) == 6
    assert len(MultiScaleVQTokenizer(MultiScaleVQConfig(**TINY, quant_resi=0.0)).quant_resi) == 0


def test_vars_schedule_is_selectable():
    tok = MultiScaleVQTokenizer(MultiScaleVQConfig(**{**TINY, "image_size": 64, "scales": list(VAR_SCALES_256)}))
    codes = tok.encode(ShapesDataset(2, size=64).tensors()[0])
    assert [c.shape[-1] for c in codes] == list(VAR_SCALES_256) and tok.num_tokens == 680


def test_trainer_logs_usage_per_scale(tiny, images):
    stats = evaluate_tokenizer(tiny, images)
    assert len(stats["usage_per_scale"]) == 6 and all(0 < u <= 1 for u in stats["usage_per_scale"])


def test_train_tokenizer_script_on_a_tiny_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({"type": "gft_msvq_tokenizer", "model": TINY}))
    out = tmp_path / "tok"
    script_main("train_tokenizer.py")(["--config", str(recipe), "--steps", "2", "--batch-size", "8",
                                       "--train-images", "16", "--eval-images", "10", "--warmup-steps", "1",
                                       "--out", str(out)])
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log[-1]["usage_per_scale"]) == 6
    assert load_tokenizer(out).scales == [1, 2, 3, 4, 6, 8]


# -- the shipped tokenizer ---------------------------------------------------------------------------------------
@pytest.mark.skipif(not SHIPPED_MSVQ.is_dir(), reason="tokenizers/shapes-msvq not trained yet")
def test_shipped_multiscale_tokenizer():
    files = {p.name for p in SHIPPED_MSVQ.iterdir()}
    assert {"config.json", "model.safetensors", "recipe.yaml", "train_log.jsonl"} <= files
    assert sum(p.stat().st_size for p in SHIPPED_MSVQ.iterdir()) <= 10 * 1024 * 1024
    tok = load_tokenizer(SHIPPED_MSVQ)
    x, _ = heldout(200).tensors()
    assert psnr(tok.decode(tok.encode(x)), x) >= 26.0  # the shipped 800-step run: 28.5 dB on 500 held-out images
    stats = evaluate_tokenizer(tok, x)
    assert stats["usage_per_scale"][-1] >= 0.3


@pytest.mark.skipif(not SHIPPED_MSVQ.is_dir(), reason="tokenizers/shapes-msvq not trained yet")
def test_residual_quantisation_reduces_the_error_scale_by_scale():
    """Each scale quantises what the coarser ones left: f̂ after k scales gets closer to f, and so do the images."""
    tok = load_tokenizer(SHIPPED_MSVQ)
    x, _ = heldout(100).tensors()
    with torch.no_grad():
        f = tok.quant_conv(tok.encoder(x))
        codes = tok.encode(x)
        errors, psnrs, f_hat = [], [], torch.zeros_like(f)
        for k, c in enumerate(codes):
            f_hat = f_hat + tok.contribution(c, k)
            errors.append((f - f_hat).pow(2).mean().item())
            psnrs.append(psnr(tok.decode_latents(f_hat), x))
    assert errors == sorted(errors, reverse=True), errors
    assert psnrs[-1] > psnrs[0] + 5, psnrs


# -- bad input -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scales, message", [
    ([1, 2, 4], "must end at the token grid 8x8"),
    ([1, 2, 8, 16], "must end at the token grid 8x8"),
    ([1, 3, 2, 8], "strictly increasing"),
    ([0, 8], "positive integers"),
    ("1_2_8", "list of integers"),
])
def test_bad_scale_schedules(scales, message):
    with pytest.raises(GFTError, match=message):
        MultiScaleVQConfig(**TINY, scales=scales)


def test_bad_code_maps(tiny, images):
    codes = tiny.encode(images)
    with pytest.raises(GFTError, match="expected 6 per-scale code maps"):
        tiny.decode(codes[:-1])
    with pytest.raises(GFTError, match=r"codes of scale 2 must have shape \(B, 3, 3\)"):
        tiny.decode([*codes[:2], codes[3], *codes[3:]])
    with pytest.raises(GFTError, match=r"list of 6 per-scale maps.*split_scales"):
        tiny.decode(flatten_scales(codes))
    bad = [c.clone() for c in codes]
    bad[4][0, 1, 1] = 64
    with pytest.raises(GFTError, match=r"codes of scale 4 must lie in \[0, 64\).*found 64"):
        tiny.decode(bad)
    with pytest.raises(GFTError, match="codes of scale 0 must be an integer tensor"):
        tiny.decode([codes[0].float(), *codes[1:]])
    with pytest.raises(GFTError, match="batch size"):
        tiny.decode([codes[0][:2], *codes[1:]])


def test_images_that_do_not_fit_the_schedule(tiny):
    with pytest.raises(GFTError, match="scale schedule .* ends at 8"):
        tiny.encode(torch.zeros(1, 3, 64, 64))
