"""LlamaGen's released text-to-image GPT (``llamagen-t2i``): official-layout state dicts (random values) → our t2i
model, checked against a functional re-implementation of the official t2i network written here from the published
code (autoregressive/models/gpt.py: CaptionEmbedder, training forward; generate.py: the padding mask, prefill,
KV-cached decode, CFG with ``uncond_embedding``; sample_t2i.py: left-padded captions with zero features)."""

import argparse

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, SHIPPED_VQ, script_main
from gft_tokens.conditioning import Caption
from gft_tokens.families import FAMILIES, load_model
from gft_tokens.importers import convert_state_dict, import_checkpoint
from gft_tokens.pretrained import config_replace
from test_importers import _layer, _official_freqs, _rms, official_gpt_shapes, random_state

V, DIM, HEADS, GRID, L, C = 32, 64, 4, 4, 8, 16  # tiny: vocab, width, heads, token grid, caption length and width


def official_t2i_shapes(n_layer=2, dim=DIM, vocab=V, caption_len=L, caption_dim=C, multiple_of=32):
    """A LlamaGen t2i GPT's state dict layout: the c2i transformer with CaptionEmbedder (MLP without biases and the
    uncond_embedding buffer) in place of the class table."""
    shapes = official_gpt_shapes(n_layer, dim, vocab=vocab, multiple_of=multiple_of)
    del shapes["cls_embedding.embedding_table.weight"]
    shapes.update({"cls_embedding.cap_proj.fc1.weight": (dim, caption_dim),
                   "cls_embedding.cap_proj.fc2.weight": (dim, dim),
                   "cls_embedding.uncond_embedding": (caption_len, caption_dim)})
    return shapes


def left_padded(lengths, seed=1, length=L, width=C):
    """sample_t2i.py's captions: valid tokens at the end, zero features and mask False before them."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.stack([torch.arange(length) >= length - n for n in lengths])
    return torch.randn(len(lengths), length, width, generator=g) * mask[..., None], mask


def _caption_embed(sd, feats, drop=None):
    """CaptionEmbedder.forward: dropped rows read uncond_embedding, then fc1 → GELU(tanh) → fc2, no biases."""
    if drop is not None:
        feats = torch.where(drop[:, None, None], sd["cls_embedding.uncond_embedding"], feats)
    h = F.gelu(feats @ sd["cls_embedding.cap_proj.fc1.weight"].T, approximate="tanh")
    return h @ sd["cls_embedding.cap_proj.fc2.weight"].T


def _official_mask(emb_mask, size):
    """The mask of dataset/t2i.py and generate.py: causal, key columns of the caption multiplied by its emb_mask,
    then the diagonal set to 1. (B, size, size) bool."""
    t = emb_mask.shape[1]
    m = torch.tril(torch.ones(size, size))[None].repeat(emb_mask.shape[0], 1, 1)
    m[:, :, :t] = m[:, :, :t] * emb_mask[:, None, :].float()
    eye = torch.eye(size)
    return (m * (1 - eye) + eye).bool()


def _n_layer(sd):
    return 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))


def official_t2i_logits(sd, codes, feats, emb_mask, drop=None, n_head=HEADS, grid=GRID, masked=True):
    """The training forward (train_t2i.py; dropout off, captions dropped where ``drop``): [caption embeddings,
    image tokens 0..N-2] under ``attn_mask[:, :, :-1, :-1]``, RoPE rows 0.. of the table with T zero rows, logits
    from position T-1 on (B, N, V). ``masked=False``: plain causal attention (the control)."""
    sd = {k: v.float() for k, v in sd.items()}
    t = feats.shape[1]
    h = torch.cat([_caption_embed(sd, feats, drop), sd["tok_embeddings.weight"][codes[:, :-1]]], 1)
    fc = _official_freqs(DIM // n_head, grid, t)[: h.shape[1]]
    mask = _official_mask(emb_mask, t + codes.shape[1])[:, None, :-1, :-1]

    def attend(i, q, k, v):
        if masked:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    attend.n_head = n_head
    for i in range(_n_layer(sd)):
        h = _layer(sd, i, h, fc, attend)
    return (_rms(h, sd["norm.weight"]) @ sd["output.weight"].T).float()[:, t - 1:]


def official_t2i_generate(sd, feats, emb_mask, cfg_scale=1.0, codes=None, n_head=HEADS, grid=GRID):
    """generate.py for t2i, written out: T = caption length; with CFG (cfg_scale > 1) the null half is
    ``zeros_like(cond) + uncond_embedding`` under the SAME emb_masks; setup_caches' static KV cache and causal mask
    of find_multiple(T + N, 8) positions, the mask's caption columns times emb_masks and its diagonal 1; prefill at
    input_pos 0..T-1 (mask rows causal_mask[:, None, input_pos]), then one token per step at T, T+1, …; the mix
    ``u + (c - u)·w``. Greedy (sample_logits=False: top-1), or teacher-forced by ``codes``. Returns (tokens (B, N),
    the mixed logits (B, N, V) of each step)."""
    sd = {k: v.float() for k, v in sd.items()}
    t, n, bsz = feats.shape[1], grid * grid, feats.shape[0]
    cfg = cfg_scale > 1.0
    cond, masks = feats, emb_mask
    if cfg:
        cond = torch.cat([feats, torch.zeros_like(feats) + sd["cls_embedding.uncond_embedding"]])
        masks = torch.cat([emb_mask, emb_mask])
    rows, hd, n_layer = cond.shape[0], DIM // n_head, _n_layer(sd)
    size = -(-(t + n) // 8) * 8
    causal = _official_mask(masks, size)
    fc = _official_freqs(hd, grid, t)
    k_cache = [torch.zeros(rows, n_head, size, hd) for _ in range(n_layer)]
    v_cache = [torch.zeros(rows, n_head, size, hd) for _ in range(n_layer)]

    def step(x, pos):
        def attend(i, q, k, v):  # KVCache.update at input_pos, attention over the whole static cache
            k_cache[i][:, :, pos], v_cache[i][:, :, pos] = k, v
            return F.scaled_dot_product_attention(q, k_cache[i], v_cache[i], attn_mask=causal[:, None, pos])

        attend.n_head = n_head
        for i in range(n_layer):
            x = _layer(sd, i, x, fc[pos], attend)
        logits = (_rms(x, sd["norm.weight"]) @ sd["output.weight"].T).float()[:, -1]
        if cfg:
            c, u = logits.chunk(2)
            logits = u + (c - u) * cfg_scale
        return logits

    tokens, all_logits = [], []
    x, pos = _caption_embed(sd, cond), torch.arange(t)
    for j in range(n):
        logits = step(x, pos)
        tok = logits.argmax(-1) if codes is None else codes[:, j]
        tokens.append(tok), all_logits.append(logits)
        x, pos = sd["tok_embeddings.weight"][torch.cat([tok, tok]) if cfg else tok][:, None], torch.tensor([t + j])
    return torch.stack(tokens, 1)[:bsz], torch.stack(all_logits, 1)


def _import(tmp_path, sd, capsys=None, argv=(), name="m"):
    torch.save({"model": sd}, tmp_path / f"{name}.pt")
    script_main("import_checkpoint.py")(["--format", "llamagen-t2i", *argv, str(tmp_path / f"{name}.pt"),
                                         str(tmp_path / name)])
    return load_model(tmp_path / name).eval()


def test_t2i_import_gives_the_official_logits_and_summary(tmp_path, capsys):
    sd = random_state(official_t2i_shapes(), seed=11)
    model = _import(tmp_path, sd, argv=["--grid-size", "4", "--n-head", "4"])
    out = capsys.readouterr().out
    for said in ("read from the weights: captions of 8 positions x 16 features", "token grid 4x4 as given",
                 "without biases", "null_caption_mask 'caption'", "custom size", "zero-initialised",
                 "sampling needs FLAN-T5-XL features"):
        assert said in out, said
    c = model.config
    assert (c.caption_len, c.caption_dim, c.cls_token_num, c.caption_bias, c.null_caption_mask, c.n_head) == (
        L, C, L, False, "caption", HEADS)
    assert model.cls_embedding.cap_proj.fc1.bias is None and model.beta_embedder.mlp[2].weight.abs().sum() == 0

    feats, mask = left_padded((3, 8, 1, 5))
    drop = torch.tensor([False, False, False, True])  # the last row: a dropped caption, its padding mask kept
    cap = Caption(feats, mask).with_dropped(drop)
    codes = torch.randint(V, (4, GRID * GRID), generator=torch.Generator().manual_seed(3))
    ref = official_t2i_logits(sd, codes, feats, mask, drop)
    _, ref_steps = official_t2i_generate(sd, feats[:3], mask[:3], codes=codes[:3])
    assert (ref_steps - ref[:3]).abs().max() < 1e-5  # the two re-implementations agree
    for beta in (None, torch.tensor([0.3, 0.7, 1.0, 0.0])):  # the zero-output β embedder changes nothing
        assert (model(codes, cap, beta) - ref).abs().max() < 1e-5
    cache = model.allocate_cache(4)
    first, pmask = model.prefill(cap, None, cache)
    steps = [first] + [model.decode(codes[:, j - 1:j], cache, pmask) for j in range(1, GRID * GRID)]
    assert (torch.stack(steps, 1) - ref).abs().max() < 1e-5
    for j in (0, 1, 9, 15):
        assert (model.next_logits(codes[:, :j], cap, None) - ref[:, j]).abs().max() < 1e-5

    # controls: the comparison can fail — without the padding mask, and with this toolkit's default null caption
    unmasked = official_t2i_logits(sd, codes, feats, mask, drop, masked=False)
    assert (unmasked[:3] - ref[:3]).abs().max() > 1e-2
    full = type(model)(config_replace(c, null_caption_mask="full")).eval()
    full.load_state_dict(model.state_dict())
    assert (full(codes, cap) - ref)[3].abs().max() > 1e-2 and (full(codes, cap) - ref)[:3].abs().max() < 1e-5


def test_t2i_import_samples_as_generate_py_greedy_with_and_without_cfg(tmp_path):
    sd = random_state(official_t2i_shapes(), seed=12)
    model = _import(tmp_path, sd, argv=["--grid-size", "4", "--n-head", "4"])
    feats, mask = left_padded((2, 8, 4), seed=5)
    cap = Caption(feats, mask)
    sample = FAMILIES["t2i"].sample
    w = 3.0
    # the CFG-mixed logits of each step, teacher-forced: our 2B batch (captions + the same rows dropped) vs theirs
    codes = torch.randint(V, (3, GRID * GRID), generator=torch.Generator().manual_seed(4))
    _, want_logits = official_t2i_generate(sd, feats, mask, cfg_scale=w, codes=codes)
    both = cap.cat(cap.with_dropped(torch.ones(3, dtype=torch.bool)))
    cache = model.allocate_cache(6)
    first, pmask = model.prefill(both, None, cache)
    got = [first] + [model.decode(torch.cat([codes, codes])[:, j - 1:j], cache, pmask) for j in range(1, GRID * GRID)]
    mixed = torch.stack([u + w * (c_ - u) for c_, u in (g.chunk(2) for g in got)], 1)
    assert (mixed - want_logits).abs().max() < 1e-5
    # greedy tokens: CFG, no guidance (cfg_scale 1) and GFT's β (zero-output embedder: the conditional model)
    for guidance, official_w in (({"cfg_scale": w}, w), ({"cfg_scale": 1.5}, 1.5), ({"cfg_scale": 1.0}, 1.0),
                                 ({"beta": 0.4}, 1.0)):
        want, _ = official_t2i_generate(sd, feats, mask, cfg_scale=official_w)
        for use_cache in (True, False):
            assert torch.equal(sample(model, cap, temperature=0.0, use_cache=use_cache, **guidance), want), guidance
    # control: the default null caption (visible at every position) samples another CFG sequence
    full = type(model)(config_replace(model.config, null_caption_mask="full")).eval()
    full.load_state_dict(model.state_dict())
    want, _ = official_t2i_generate(sd, feats, mask, cfg_scale=w)
    assert not torch.equal(sample(full, cap, temperature=0.0, cfg_scale=w), want)


def test_released_gpt_xl_t2i_layout_maps_on_the_meta_device():
    """t2i_XL_stage1_256.pt's layout: GPT-XL, 120 caption positions of FLAN-T5-XL's 2048 features."""
    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in
                 official_t2i_shapes(36, 1280, vocab=16384, caption_len=120, caption_dim=2048, multiple_of=256).items()}
    converted = convert_state_dict("llamagen-t2i", state, grid_size=16)
    c = converted.config
    assert (c.preset, c.n_head, c.caption_len, c.caption_dim, c.cls_token_num, c.max_seq_len) == (
        "GPT-XL", 20, 120, 2048, 120, 376)
    ours = sum(v.numel() for k, v in converted.state.items() if not k.startswith("beta_embedder."))
    assert ours == sum(v.numel() for v in state.values())
    assert any("detected preset GPT-XL" in n for n in converted.notes)
    assert convert_state_dict("llamagen-t2i", state, grid_size=32).config.max_seq_len == 120 + 1024  # stage 2, 512px


def test_t2i_training_args_fill_grid_and_preset_and_contradictions_are_refused(tmp_path):
    sd = random_state(official_t2i_shapes(), seed=13)
    args = argparse.Namespace(gpt_model="GPT-nano", gpt_type="t2i", image_size=64, downsample_size=16, cls_token_num=L)
    torch.save({"model": sd, "args": args, "steps": 10}, tmp_path / "a.pt")
    converted = import_checkpoint("llamagen-t2i", tmp_path / "a.pt", None)
    assert (converted.config.grid_size, converted.config.preset, converted.config.n_head) == (4, "GPT-nano", 2)
    assert any("training args: grid_size 4, cls_token_num 8, preset GPT-nano" in n for n in converted.notes)
    from gft_tokens import GFTError

    with pytest.raises(GFTError, match="--grid-size 8 contradicts the checkpoint's training args"):
        import_checkpoint("llamagen-t2i", tmp_path / "a.pt", None, grid_size=8)
    torch.save({"model": sd, "args": argparse.Namespace(**{**vars(args), "cls_token_num": 120})}, tmp_path / "b.pt")
    with pytest.raises(GFTError, match="cls_token_num 120, the null caption has 8 positions"):
        import_checkpoint("llamagen-t2i", tmp_path / "b.pt", None)


def _text_encoder(tmp_path, width):
    from gft_tokens.text_encoder import build_shapes_t5

    return str(build_shapes_t5(tmp_path / f"t5-{width}", d_model=width, d_kv=8, d_ff=32, num_heads=2, max_length=L))


def _refused(tmp_path, capsys, fmt, state, argv=()):
    torch.save({"model": state}, tmp_path / "x.pt")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        script_main("import_checkpoint.py")(["--format", fmt, *argv, str(tmp_path / "x.pt"), str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "out").exists()
    return err[0]


def test_wrong_format_and_a_text_encoder_of_another_width_are_refused_in_one_line(tmp_path, capsys):
    t2i = random_state(official_t2i_shapes(), seed=14)
    c2i = random_state(official_gpt_shapes(2, DIM, vocab=V, classes=5, multiple_of=32), seed=15)
    err = _refused(tmp_path, capsys, "llamagen-t2i", c2i, ["--grid-size", "4", "--n-head", "4"])
    assert "class-conditional (c2i) LlamaGen checkpoint" in err and "--format llamagen-gpt" in err
    err = _refused(tmp_path, capsys, "llamagen-gpt", t2i, ["--grid-size", "4", "--n-head", "4"])
    assert "text-to-image (t2i) LlamaGen checkpoint" in err and "--format llamagen-t2i" in err
    err = _refused(tmp_path, capsys, "llamagen-t2i", t2i, ["--n-head", "4"])
    assert err.startswith("error: grid_size is required")
    wide = _text_encoder(tmp_path, 32)
    err = _refused(tmp_path, capsys, "llamagen-t2i", t2i, ["--grid-size", "4", "--n-head", "4", "--text-encoder", wide])
    assert f"text encoder {wide} has width 32, the checkpoint takes captions of width 16" in err
    err = _refused(tmp_path, capsys, "llamagen-t2i", t2i, ["--grid-size", "4", "--n-head", "4", "--text-encoder",
                                                           str(tmp_path / "no-t5")])
    assert "is not a directory with a config.json" in err
    err = _refused(tmp_path, capsys, "llamagen-gpt", c2i, ["--grid-size", "4", "--n-head", "4", "--text-encoder",
                                                           wide])
    assert "format 'llamagen-gpt' takes no option 'text_encoder'" in err


def test_imported_t2i_with_its_text_encoder_generates_from_prompts(tmp_path, capsys, monkeypatch):
    """import_checkpoint.py --text-encoder → generate.py --prompt: the recorded encoder turns prompts into the
    checkpoint's captions (here a 16-wide stand-in for FLAN-T5-XL), CFG and GFT both sample an image grid."""
    sd = random_state(official_t2i_shapes(vocab=1024), seed=16)  # fits the shipped 8x8, 1024-code tokenizer
    t5 = _text_encoder(tmp_path, C)
    model = _import(tmp_path, sd, argv=["--grid-size", "8", "--n-head", "4", "--tokenizer", str(SHIPPED_VQ),
                                        "--text-encoder", t5])
    assert f"text encoder {t5} recorded" in capsys.readouterr().out
    assert model.config.text_encoder == {"path": t5, "type": "t5", "hidden_size": C, "max_length": L}
    monkeypatch.chdir(ROOT)
    main = script_main("generate.py")
    for guidance in (["--cfg-scale", "4"], ["--beta", "0.5"]):
        main(["--ckpt", str(tmp_path / "m"), "--prompt", "a red star", "a blue ring", *guidance, "--n-per-class", "1",
              "--out", str(tmp_path / guidance[0][2:])])
        assert (tmp_path / guidance[0][2:] / "grid.png").is_file()
    out = capsys.readouterr().out
    assert "(128 network evaluations per image)" in out and "(64 network evaluations per image)" in out
