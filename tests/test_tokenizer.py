import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import ROOT, SHIPPED_VQ
from gft_tokens import GFTError
from gft_tokens.data import ShapesDataset, heldout
from gft_tokens.tokenizers import VQConfig, VQTokenizer, load_tokenizer
from gft_tokens.tokenizers.losses import codebook_usage, psnr


def tiny_tokenizer(**kw):
    torch.manual_seed(0)
    tok = VQTokenizer(VQConfig(channels=16, channel_mult=[1, 2, 2], z_channels=16, codebook_size=64, **kw))
    x, _ = ShapesDataset(8).tensors()
    tok.train()
    tok(x)  # k-means initialises the codebook on the first training batch
    return tok.eval()


def test_encode_decode_shapes_and_dtype():
    tok = tiny_tokenizer()
    x, _ = ShapesDataset(4).tensors()
    codes = tok.encode(x)
    assert codes.shape == (4, 8, 8) and codes.dtype == torch.int64
    assert codes.min() >= 0 and codes.max() < tok.codebook_size
    recon = tok.decode(codes)
    assert recon.shape == (4, 3, 32, 32) and recon.dtype == torch.float32
    assert recon.min() >= -1 and recon.max() <= 1
    assert tok.grid_size == (8, 8) and tok.codebook_size == 64


def test_downsample_factor_8():
    tok = VQTokenizer(VQConfig(channels=16, channel_mult=[1, 1, 2, 2], z_channels=16, codebook_size=32))
    assert tok.downsample == 8 and tok.grid_size == (4, 4)
    assert tok.encode(ShapesDataset(2).tensors()[0]).shape == (2, 4, 4)


def test_decode_matches_training_forward():
    tok = tiny_tokenizer()
    x, _ = ShapesDataset(4).tensors()
    recon, codes, _ = tok(x)
    assert torch.equal(codes, tok.encode(x))
    assert torch.allclose(recon.clamp(-1, 1), tok.decode(codes), atol=1e-5)


def test_encode_does_not_update_codebook():
    tok = tiny_tokenizer()
    tok.train()
    before = tok.quantize.codebook.clone()
    tok.encode(ShapesDataset(4).tensors()[0])
    assert torch.equal(before, tok.quantize.codebook) and tok.training


def test_save_load_round_trip_identical_codes(tmp_path):
    tok = tiny_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["config.json", "manifest.json", "model.safetensors"]
    again = load_tokenizer(tmp_path / "tok")
    x, _ = ShapesDataset(6, seed=9).tensors()
    assert torch.equal(tok.encode(x), again.encode(x))
    assert torch.equal(tok.decode(tok.encode(x)), again.decode(again.encode(x)))


def test_shipped_tokenizer_quality(shipped_tokenizer):
    tok = shipped_tokenizer
    images, _ = heldout(1000).tensors()
    codes = torch.cat([tok.encode(images[i:i + 250]) for i in range(0, 1000, 250)])
    recon = torch.cat([tok.decode(codes[i:i + 250]) for i in range(0, 1000, 250)])
    value = psnr(recon, images)
    usage = codebook_usage(codes, tok.codebook_size)["usage"]
    assert value >= 24.0, f"held-out PSNR {value:.2f} dB"
    assert usage >= 0.5, f"codebook usage {usage:.1%}"


def test_shipped_tokenizer_files():
    files = {p.name for p in SHIPPED_VQ.iterdir()}
    assert {"config.json", "model.safetensors"} <= files
    assert sum(p.stat().st_size for p in SHIPPED_VQ.iterdir()) <= 10 * 1024 * 1024
    assert not list((ROOT / "tokenizers").rglob("__init__.py"))


# -- bad input -----------------------------------------------------------------------------------------------------
def test_load_missing_dir(tmp_path):
    with pytest.raises(GFTError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")


def test_load_dir_without_weights(tmp_path):
    shutil.copy(SHIPPED_VQ / "config.json", tmp_path / "config.json")
    with pytest.raises(GFTError, match="no weights file"):
        load_tokenizer(tmp_path)


def test_load_weights_not_matching_config(tmp_path):
    shutil.copytree(SHIPPED_VQ, tmp_path / "tok")
    cfg = json.loads((tmp_path / "tok" / "config.json").read_text())
    cfg["codebook_size"] = 512
    (tmp_path / "tok" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GFTError, match="do not match the config.*quantize"):
        load_tokenizer(tmp_path / "tok")


def test_load_truncated_weights(tmp_path):
    shutil.copytree(SHIPPED_VQ, tmp_path / "tok")
    w = tmp_path / "tok" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(GFTError, match="corrupt or truncated"):
        load_tokenizer(tmp_path / "tok")


def test_load_unknown_config_key(tmp_path):
    shutil.copytree(SHIPPED_VQ, tmp_path / "tok")
    cfg = json.loads((tmp_path / "tok" / "config.json").read_text())
    cfg["codebok_size"] = cfg.pop("codebook_size")
    (tmp_path / "tok" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GFTError, match="did you mean 'codebook_size'"):
        load_tokenizer(tmp_path / "tok")


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.zeros(2, 1, 32, 32), "3 channels"),
        (torch.zeros(2, 3, 30, 30), "not divisible by the tokenizer's downsample factor 4"),
        (torch.full((2, 3, 32, 32), 200.0), r"must be in \[-1, 1\]"),
        (torch.zeros(3, 32, 32), "shape"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "float"),
    ],
)
def test_encode_bad_images(shipped_tokenizer, images, message):
    with pytest.raises(GFTError, match=message):
        shipped_tokenizer.encode(images)


@pytest.mark.parametrize("value, message", [(1024, r"\[0, 1024\).*found 1024"), (-1, "found -1")])
def test_decode_bad_codes(shipped_tokenizer, value, message):
    codes = torch.zeros(1, 8, 8, dtype=torch.long)
    codes[0, 3, 3] = value
    with pytest.raises(GFTError, match=message):
        shipped_tokenizer.decode(codes)


def test_decode_float_codes(shipped_tokenizer):
    with pytest.raises(GFTError, match="integer"):
        shipped_tokenizer.decode(torch.zeros(1, 8, 8))
