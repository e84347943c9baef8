"""The frozen text encoders: the shipped word-level T5, any local T5/CLIP directory, bad prompts refused."""

from pathlib import Path

import pytest
import torch

from gft_tokens.data.captions import vocabulary
from gft_tokens.errors import GFTError
from gft_tokens.text_encoder import TextEncoder, build_shapes_t5, describe_text_encoder, text_encoder_differences

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "tokenizers" / "shapes-t5-tiny"


@pytest.fixture(scope="module")
def enc():
    return TextEncoder.from_pretrained(SHIPPED)


def test_shipped_encoder_is_frozen_left_padded_and_rebuilds_bit_for_bit(enc, tmp_path):
    record = enc.describe()
    assert record == {"path": str(SHIPPED), "type": "t5", "hidden_size": 64, "max_length": 16,
                      "fingerprint": record["fingerprint"]} and len(record["fingerprint"]) == 16
    assert describe_text_encoder(SHIPPED, fingerprint=True) == record  # the same record without loading weights
    assert not any(p.requires_grad for p in enc.model.parameters()) and not enc.model.training
    feats, mask = enc.encode(["a red star", "a small blue ring in the top left corner"])
    assert feats.shape == (2, 16, 64) and mask.shape == (2, 16) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [4, 10]  # words + </s>
    assert mask[:, -1].all() and not mask[0, :12].any()  # left padding: real tokens at the end
    assert (feats[~mask] == 0).all() and (feats[mask].abs().sum(-1) > 0).all()
    alone, _ = enc.encode(["a red star"])
    torch.testing.assert_close(alone, feats[:1])  # padding does not leak into the real positions
    assert "not a pretrained language model" in (SHIPPED / "README.md").read_text()
    rebuilt = TextEncoder.from_pretrained(build_shapes_t5(tmp_path / "t5"))
    torch.testing.assert_close(rebuilt.encode(["a red star"])[0], alone, rtol=0, atol=0)
    assert set(vocabulary()) <= set(enc.tokenizer.get_vocab())
    assert rebuilt.describe()["fingerprint"] == record["fingerprint"]  # the same files, wherever they lie


def test_the_fingerprint_tells_encoders_of_the_same_shape_apart(enc, tmp_path):
    """Another seed gives a T5 of the same type, width and caption length: only the weights' fingerprint differs."""
    other = TextEncoder.from_pretrained(build_shapes_t5(tmp_path / "seed1", seed=1)).describe()
    mine = enc.describe()
    assert other["fingerprint"] != mine["fingerprint"]
    assert text_encoder_differences(mine, other) == [f"fingerprint {mine['fingerprint']} → {other['fingerprint']}"]
    assert text_encoder_differences(mine, {**mine, "path": "elsewhere"}) == []  # moved files are the same encoder
    old = {k: v for k, v in mine.items() if k != "fingerprint"}  # a record from before fingerprints: not compared
    assert text_encoder_differences(old, other) == []
    assert text_encoder_differences(mine, {**mine, "hidden_size": 32}) == ["hidden_size 64 → 32"]


def test_empty_and_overlong_prompts_are_refused_not_truncated(enc):
    with pytest.raises(GFTError, match="empty prompt"):
        enc.encode(["a red star", "  "])
    long = " ".join(["a red star"] * 6)
    with pytest.raises(GFTError, match=r"19 tokens long, more than the model's caption length 16.*not truncated"):
        enc.encode([long])


def test_a_local_clip_text_model_loads_too_and_nothing_else_does(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=len(vocabulary()) + 3, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                            pad_token_id=0, bos_token_id=1, eos_token_id=1)
    CLIPTextModel(config).save_pretrained(tmp_path / "clip")
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the word-level tokenizer serves the CLIP model too
        (tmp_path / "clip" / name).write_bytes((SHIPPED / name).read_bytes())
    clip = TextEncoder.from_pretrained(tmp_path / "clip", max_length=16)
    feats, mask = clip.encode(["a red star"])
    assert clip.kind == "clip" and feats.shape == (1, 16, 32) and mask.sum() == 4
    with pytest.raises(GFTError, match="not a directory with a config.json"):
        TextEncoder.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(GFTError, match="model_type 'bert'"):
        TextEncoder.from_pretrained(tmp_path / "bert")
