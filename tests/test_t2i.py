"""Text-to-image LlamaGen: caption prefix with padding mask, null-caption dropout, exact GFT start from a CFG
checkpoint, KV cache vs recompute with a caption prefix, the sampler's network-evaluation counts."""

import pytest
import torch

from gft_tokens.conditioning import Caption
from gft_tokens.errors import GFTError
from gft_tokens.families.t2i import FAMILY, T2ILlamaGen, caption_attention_mask, t2i_config
from gft_tokens.objectives import gft_loss
from gft_tokens.pretrained import config_replace
from gft_tokens.sampling import SamplingStats
from gft_tokens.train.loop import _load_init_state

V, G, L, C = 32, 3, 5, 8


def tiny(beta_embed=True, seed=0):
    torch.manual_seed(seed)
    m = T2ILlamaGen(t2i_config("GPT-nano", vocab_size=V, grid_size=G, caption_dim=C, caption_len=L,
                               beta_embed=beta_embed)).eval()
    torch.nn.init.normal_(m.output.weight, std=0.2)  # a trained-looking head (the fresh one is zero)
    if beta_embed:  # and a β embedding that does something
        torch.nn.init.normal_(m.beta_embedder.mlp[2].weight, std=0.2)
    return m


def captions(seed=1, lengths=(2, 4, 5)):
    g = torch.Generator().manual_seed(seed)
    mask = torch.stack([torch.arange(L) >= L - n for n in lengths])  # left padding
    return Caption(torch.randn(len(lengths), L, C, generator=g) * mask[..., None], mask)


def test_attention_mask_is_causal_and_hides_padded_caption_positions_from_others():
    pmask = torch.tensor([[False, False, True, True, True]])
    m = caption_attention_mask(pmask, 0, L + 2)[0, 0]
    assert m.shape == (L + 2, L + 2) and not m.triu(1).any()  # causal
    assert m[0, 0] and m[1, 1] and not m[1, 0] and not m[4, :2].any() and not m[6, :2].any()
    assert m[6, 2:].all()
    step = caption_attention_mask(pmask, L + 2, 1)[0, 0]  # one decode step after the prefix and two tokens
    assert step.shape == (1, L + 3) and step[0].tolist() == [False, False] + [True] * (L + 1)


def test_padded_caption_positions_change_nothing():
    m, cap = tiny(), captions()
    codes = torch.randint(V, (3, G * G), generator=torch.Generator().manual_seed(2))
    beta = torch.tensor([0.3, 0.7, 1.0])
    ref = m(codes, cap, beta)
    noisy = cap.features + torch.randn(cap.features.shape) * (~cap.mask)[..., None] * 10
    torch.testing.assert_close(m(codes, Caption(noisy, cap.mask), beta), ref, rtol=0, atol=0)
    real = cap.features + torch.randn(cap.features.shape) * cap.mask[..., None]  # but the words do change it
    assert not torch.allclose(m(codes, Caption(real, cap.mask), beta), ref)
    a = FAMILY.sample(m, cap, beta=0.5, temperature=0.0)
    assert torch.equal(FAMILY.sample(m, Caption(noisy, cap.mask), beta=0.5, temperature=0.0), a)


def test_null_caption_dropout_uses_the_learned_null_whatever_the_caption():
    m, cap = tiny(), captions()
    codes = torch.randint(V, (3, G * G), generator=torch.Generator().manual_seed(2))
    dropped = cap.with_dropped(torch.tensor([True, False, True]))
    other = Caption(torch.randn(3, L, C), torch.ones(3, L, dtype=torch.bool)).with_dropped(torch.ones(3, dtype=torch.bool))
    a, b = m(codes, dropped, None), m(codes, other, None)
    torch.testing.assert_close(a[[0, 2]], b[[0, 2]], rtol=0, atol=0)  # the null caption ignores features and mask
    assert not torch.allclose(a[1], b[1])
    null = Caption.null(3, L, C)
    torch.testing.assert_close(m(codes, null, None), b, rtol=0, atol=0)
    # the objective drops about 10 % of the rows and feeds the null caption to every row of the unconditional branch
    seen = []
    n = 4000
    big = Caption(torch.randn(n, L, C), torch.ones(n, L, dtype=torch.bool))
    out = gft_loss(lambda cond, beta: (seen.append(cond), torch.zeros(n, 1, V))[1], torch.zeros(n, 1, dtype=torch.long),
                   big, null_cond=m.null_class, drop_prob=0.1, generator=torch.Generator().manual_seed(0))
    assert seen[0].drop.all() and torch.equal(seen[1].drop, out.dropped)
    assert 0.08 < out.dropped.float().mean().item() < 0.12
    assert torch.equal(seen[1].features, big.features)  # rows are marked, the embedder swaps the null in


def test_gft_fine_tune_starts_exactly_at_a_cfg_t2i_checkpoint(tmp_path):
    cfg = tiny(beta_embed=False)
    cfg.save_pretrained(tmp_path / "cfg")
    src = T2ILlamaGen.from_pretrained(tmp_path / "cfg")
    torch.manual_seed(5)
    gft = T2ILlamaGen(config_replace(src.config, beta_embed=True)).eval()
    _load_init_state(gft, src.state_dict(), 0, 0, str(tmp_path / "cfg"))
    assert gft.beta_embedder is not None and (gft.beta_embedder.mlp[2].weight == 0).all()
    cap = captions()
    codes = torch.randint(V, (3, G * G), generator=torch.Generator().manual_seed(3))
    ref = cfg(codes, cap, None)
    for beta in (torch.zeros(3), torch.tensor([0.2, 0.5, 1.0])):
        torch.testing.assert_close(gft(codes, cap, beta), ref, rtol=0, atol=0)


def test_kv_cache_equals_recompute_with_a_caption_prefix():
    m, cap = tiny(), captions()
    beta = torch.tensor([0.4, 0.9, 1.0])
    codes = torch.randint(V, (3, G * G), generator=torch.Generator().manual_seed(4))
    cache = m.allocate_cache(3)
    logits, pmask = m.prefill(cap, beta, cache)
    torch.testing.assert_close(logits, m.next_logits(codes[:, :0], cap, beta), rtol=1e-5, atol=1e-5)
    teacher = m(codes, cap, beta)
    torch.testing.assert_close(logits, teacher[:, 0], rtol=1e-5, atol=1e-5)
    for i in range(1, G * G):
        step = m.decode(codes[:, i - 1:i], cache, pmask)
        torch.testing.assert_close(step, m.next_logits(codes[:, :i], cap, beta), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(step, teacher[:, i], rtol=1e-5, atol=1e-5)
    for kw in ({"beta": 0.5}, {"cfg_scale": 3.0}):
        a = FAMILY.sample(m, cap, generator=torch.Generator().manual_seed(7), **kw)
        b = FAMILY.sample(m, cap, generator=torch.Generator().manual_seed(7), use_cache=False, **kw)
        assert torch.equal(a, b)


def test_nfe_gft_one_pass_cfg_two_and_cfg_mix():
    m, cap = tiny(), captions()
    counts = {}
    for name, kw in {"gft": {"beta": 0.5}, "cfg": {"cfg_scale": 2.0}, "cond": {"cfg_scale": 1.0}}.items():
        stats = SamplingStats()
        FAMILY.sample(m, cap, temperature=0.0, stats=stats, **kw)
        counts[name] = (stats.nfe_per_image, stats.passes, stats.images)
    n = G * G
    assert counts == {"gft": (n, n, 3), "cfg": (2 * n, n, 3), "cond": (n, n, 3)}
    # CFG's first token is u + w (c - u) of the caption and null-caption logits
    w = 2.0
    c = m.next_logits(torch.zeros(3, 0, dtype=torch.long), cap, torch.ones(3))
    u = m.next_logits(torch.zeros(3, 0, dtype=torch.long), Caption.null(3, L, C), torch.ones(3))
    assert torch.equal(FAMILY.sample(m, cap, cfg_scale=w, temperature=0.0)[:, 0], (u + w * (c - u)).argmax(-1))


def test_wrong_conditions_are_refused_in_one_line():
    m = tiny()
    with pytest.raises(GFTError, match="not class ids"):
        FAMILY.sample(m, torch.tensor([0, 1]), beta=0.5)
    with pytest.raises(GFTError, match="text encoder width 16 does not match the model's caption width 8"):
        FAMILY.sample(m, Caption(torch.randn(1, L, 16), torch.ones(1, L, dtype=torch.bool)), beta=0.5)
    with pytest.raises(GFTError, match="no β input"):
        FAMILY.sample(tiny(beta_embed=False), captions(), beta=0.5)



ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
TRAIN = dict(preset="GPT-nano", steps=2, train_images=20, batch_size=4, save_every=0, zero_stage=0,
             tokenizer=str(ROOT / "tokenizers" / "shapes-vq"))


@pytest.fixture(scope="module")
def t2i_run(tmp_path_factory):
    from gft_tokens.train.loop import TrainOptions, train

    out = tmp_path_factory.mktemp("t2i") / "run"
    return train("t2i", TrainOptions(**TRAIN, out=str(out))), out / "model"


def test_the_training_loop_trains_t2i_on_encoded_captions_and_records_the_text_encoder(t2i_run, tmp_path):
    from gft_tokens.families import load_model, sample_images
    from gft_tokens.text_encoder import TextEncoder
    from gft_tokens.tokenizers import load_tokenizer
    from gft_tokens.train.loop import TrainOptions, train

    import io

    import numpy as np

    from gft_tokens.data.shards import write_shards

    buf = io.BytesIO()
    np.save(buf, np.zeros((1, 8, 8), dtype=np.int16))
    write_shards(iter([{"__key__": "a", "codes.npy": buf.getvalue(), "cls": b"0"}]), tmp_path / "codes", 10,
                 {"kind": "codes", "num_classes": 10})
    with pytest.raises(GFTError, match="a t2i run needs captions; these shards have none"):  # tests/test_t2i_shards.py
        train("t2i", TrainOptions(**TRAIN, data=str(tmp_path / "codes" / "000000.tar"), out=str(tmp_path / "s")))
    assert not (tmp_path / "s").exists()
    summary, path = t2i_run
    assert summary["family"] == "t2i" and summary["final_loss"] > 0
    model = load_model(path)
    te = model.config.text_encoder
    assert isinstance(model, T2ILlamaGen) and te["type"] == "t5" and (te["hidden_size"], te["max_length"]) == (64, 16)
    assert (model.config.caption_dim, model.config.caption_len, model.config.cls_token_num) == (64, 16, 16)
    feats, mask = TextEncoder.from_pretrained(ROOT / te["path"]).encode(["a red star", "a blue ring"])
    images = sample_images(model, load_tokenizer(TRAIN["tokenizer"]), Caption(feats, mask), beta=0.5)
    assert images.shape == (2, 3, 32, 32) and images.abs().max() <= 1


def test_generate_prompts_gives_one_row_per_prompt(t2i_run, tmp_path, capsys, monkeypatch):
    import numpy as np
    from conftest import script_main

    monkeypatch.chdir(ROOT)  # the model records the text encoder as tokenizers/shapes-t5-tiny
    main = script_main("generate.py")
    main(["--ckpt", str(t2i_run[1]), "--prompt", "a red star", "a blue ring in the top left", "--beta", "0.5",
          "--n-per-class", "3", "--out", str(tmp_path / "g")])
    out = capsys.readouterr().out
    assert "beta=0.5: 6 images" in out and "(64 network evaluations per image)" in out  # 8x8 tokens, one pass
    data = np.load(tmp_path / "g" / "samples.npz")
    assert data["images"].shape == (6, 32, 32, 3) and list(data["prompts"]) == ["a red star", "a blue ring in the top left"]
    assert (tmp_path / "g" / "grid.png").is_file()
    (tmp_path / "p.txt").write_text("a red star\n\na green plus\n")
    main(["--ckpt", str(t2i_run[1]), "--prompts", str(tmp_path / "p.txt"), "--cfg-scale", "2", "--n-per-class", "1",
          "--out", str(tmp_path / "h")])
    out = capsys.readouterr().out
    assert "cfg_scale=2: 2 images" in out and "(128 network evaluations per image)" in out  # CFG: two passes


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "  "], "empty prompt"),
    (["--prompt", " ".join(["a red star"] * 6)], "19 tokens long, more than the model's caption length 16"),
    (["--classes", "1"], "text-to-image model: it takes --prompt/--prompts, not class ids"),
    ([], "text-to-image model: give --prompt"),
    (["--prompt", "a red star", "--prompts", "x.txt"], "not both"),
    (["--prompts", "no-such-file.txt"], "does not exist"),
    (["--prompt", "a red star", "--text-encoder", "CLIP"], "has width 32, the model takes captions of width 64"),
])
def test_generate_refuses_bad_prompt_requests_in_one_line(t2i_run, tmp_path, capsys, monkeypatch, argv, message):
    from conftest import script_main

    monkeypatch.chdir(ROOT)
    if "CLIP" in argv:  # a local CLIP text model of another width
        from transformers import CLIPTextConfig, CLIPTextModel

        clip = tmp_path / "clip"
        CLIPTextModel(CLIPTextConfig(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, max_position_embeddings=16, pad_token_id=0,
                                     bos_token_id=1, eos_token_id=1)).save_pretrained(clip)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (clip / name).write_bytes((ROOT / "tokenizers" / "shapes-t5-tiny" / name).read_bytes())
        argv = [str(clip) if a == "CLIP" else a for a in argv]
        capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        script_main("generate.py")(["--ckpt", str(t2i_run[1]), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "o").exists()


def test_a_class_conditional_checkpoint_refuses_prompts(tmp_path, capsys):
    from conftest import script_main
    from gft_tokens.families import build_model

    build_model("llamagen", "GPT-nano", vocab_size=1024, grid_size=8, num_classes=10,
                tokenizer={"path": TRAIN["tokenizer"]}).save_pretrained(tmp_path / "c2i")
    with pytest.raises(SystemExit) as exc:
        script_main("generate.py")(["--ckpt", str(tmp_path / "c2i"), "--prompt", "a red star", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err == "error: this is a class-conditional llamagen model: it takes --classes, not prompts"


def test_a_validation_split_of_captioned_data_keeps_each_image_with_its_own_caption(tmp_path):
    """--val-fraction on t2i data: the held-out rows are validated with their own captions (the null-caption loss
    included), and the training rows keep theirs."""
    from gft_tokens.families.t2i.adapter import CaptionedCodes
    from gft_tokens.train.loop import TrainOptions, _validation_set, train

    codes = torch.arange(10)[:, None, None].expand(10, 1, 4)
    feats = torch.arange(10.0)[:, None, None].expand(10, 2, 3)
    data = CaptionedCodes(codes, torch.zeros(10, dtype=torch.long), 0, feats, torch.ones(10, 2, dtype=torch.bool),
                          [f"caption {i}" for i in range(10)], {"path": "x"})
    o = TrainOptions(val_fraction=0.3, val_samples=100)
    (val_codes, val_cond), rest = _validation_set(o, None, data)
    assert isinstance(val_cond, Caption) and isinstance(rest, CaptionedCodes)
    assert val_codes[:, 0].tolist() == [7, 8, 9] and val_cond.features[:, 0, 0].tolist() == [7.0, 8.0, 9.0]
    assert rest.captions == [f"caption {i}" for i in range(7)] and rest.features[:, 0, 0].tolist() == list(range(7))

    summary = train("t2i", TrainOptions(**{**TRAIN, "train_images": 24}, val_fraction=0.25, val_samples=6,
                                        val_every=1, out=str(tmp_path / "v")))
    assert [c["step"] for c in summary["val_curve"]] == [1, 2]
    assert all(c["val_null_loss"] > 0 and c["val_cond_loss"] > 0 for c in summary["val_curve"])
