"""Official-checkpoint importers: official-format state dicts (random values) → our models, checked against a
straightforward functional re-implementation of the official forward passes written here from the published code."""

import argparse
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import SHIPPED_VQ, script_main
from gft_tokens import GFTError
from gft_tokens.importers import IMPORTERS, convert_state_dict, import_checkpoint, register_importer
from gft_tokens.importing import Converted, Importer
from gft_tokens.families.var.importer import PATCH_NUMS, inspect_var, inspect_vqvae, var_layout, vqvae_layout
from gft_tokens.families import FAMILIES, load_model
from gft_tokens.tokenizers import load_tokenizer


# ---------------------------------------------------------------------------------------------------------------
# The official LlamaGen c2i GPT: key layout and forward (autoregressive/models/gpt.py), written out functionally
# ---------------------------------------------------------------------------------------------------------------
def ffn_hidden(dim, multiple_of=256):
    h = int(2 * 4 * dim / 3)
    return h if h % multiple_of == 0 else h + multiple_of - h % multiple_of


def official_gpt_shapes(n_layer, dim, vocab=16384, classes=1000, multiple_of=256, gft=False):
    hid = ffn_hidden(dim, multiple_of)
    shapes = {"cls_embedding.embedding_table.weight": (classes + 1, dim), "tok_embeddings.weight": (vocab, dim)}
    for i in range(n_layer):
        p = f"layers.{i}."
        shapes.update({p + "attention.wqkv.weight": (3 * dim, dim), p + "attention.wo.weight": (dim, dim),
                       p + "feed_forward.w1.weight": (hid, dim), p + "feed_forward.w3.weight": (hid, dim),
                       p + "feed_forward.w2.weight": (dim, hid), p + "attention_norm.weight": (dim,),
                       p + "ffn_norm.weight": (dim,)})
    shapes.update({"norm.weight": (dim,), "output.weight": (vocab, dim)})
    if gft:
        shapes.update({"t_embedder.mlp.0.weight": (dim, 256), "t_embedder.mlp.0.bias": (dim,),
                       "t_embedder.mlp.2.weight": (dim, dim), "t_embedder.mlp.2.bias": (dim,)})
    return shapes


def random_state(shapes, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        if "norm" in k and k.endswith("weight") and len(s) == 1:
            out[k] = (1 + 0.1 * torch.randn(s, generator=g)).to(dtype)
        else:
            out[k] = (torch.randn(s, generator=g) / math.sqrt(math.prod(s[1:]) if len(s) > 1 else 8)).to(dtype)
    return out


def _rms(x, w):
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)).type_as(x) * w


def _official_freqs(hd, grid, cls_token_num):
    """precompute_freqs_cis_2d: cls_token_num zero rows, then the grid rows (grid², hd/2, 2)."""
    half = hd // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    f = torch.outer(torch.arange(grid).float(), freqs)
    fg = torch.cat([f[:, None, :].expand(-1, grid, -1), f[None, :, :].expand(grid, -1, -1)], -1)
    cache = torch.stack([torch.cos(fg), torch.sin(fg)], -1).flatten(0, 1)
    return torch.cat([torch.zeros(cls_token_num, half, 2), cache])


def _rotary(x, fc):  # apply_rotary_emb; x (B, S, H, hd), fc (S, hd/2, 2)
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    c = fc.view(1, xs.size(1), 1, xs.size(3), 2)
    out = torch.stack([xs[..., 0] * c[..., 0] - xs[..., 1] * c[..., 1],
                       xs[..., 1] * c[..., 0] + xs[..., 0] * c[..., 1]], -1)
    return out.flatten(3).type_as(x)


def _official_cond(sd, labels, betas=None):
    """LabelEmbedder: ONE vector (B, 1, D) per label [+ thu-ml/GFT's β embedding]."""
    cond = sd["cls_embedding.embedding_table.weight"][labels][:, None]
    if betas is not None:  # thu-ml/GFT: DiT timestep embedder on 1000·β, added to the class token
        t, half = betas * 1000, 128
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
        e = F.silu(emb @ sd["t_embedder.mlp.0.weight"].T + sd["t_embedder.mlp.0.bias"])
        cond = cond + (e @ sd["t_embedder.mlp.2.weight"].T + sd["t_embedder.mlp.2.bias"])[:, None]
    return cond


def _sizes(sd, n_head):
    dim = sd["tok_embeddings.weight"].shape[1]
    return dim, dim // n_head, 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))


def _layer(sd, i, h, q_fc, attend):
    """One TransformerBlock; ``attend(i, q, k, v)`` does the attention (B, H, S, hd) → (B, H, S, hd)."""
    p = f"layers.{i}."
    b, s, dim = h.shape
    n_head = attend.n_head
    hd = dim // n_head
    x = _rms(h, sd[p + "attention_norm.weight"])
    q, k, v = (x @ sd[p + "attention.wqkv.weight"].T).split([dim, dim, dim], -1)
    q, k = _rotary(q.view(b, s, n_head, hd), q_fc), _rotary(k.view(b, s, n_head, hd), q_fc)
    o = attend(i, q.transpose(1, 2), k.transpose(1, 2), v.view(b, s, n_head, hd).transpose(1, 2))
    h = h + o.transpose(1, 2).reshape(b, s, dim) @ sd[p + "attention.wo.weight"].T
    x = _rms(h, sd[p + "ffn_norm.weight"])
    w = F.silu(x @ sd[p + "feed_forward.w1.weight"].T) * (x @ sd[p + "feed_forward.w3.weight"].T)
    return h + w @ sd[p + "feed_forward.w2.weight"].T


def official_gpt_logits(sd, codes, labels, n_head, grid, betas=None, cls_token_num=1, repeat=False):
    """The whole sequence at once: [class vector, image tokens 0..N-2], position p reads RoPE row p (official
    c2i inference, any cls_token_num). ``repeat``: this toolkit's default layout instead (the class vector
    repeated cls_token_num times, logits from position cls_token_num - 1)."""
    sd = {k: v.float() for k, v in sd.items()}
    dim, hd, n_layer = _sizes(sd, n_head)
    cond = _official_cond(sd, labels, betas)
    if repeat:
        cond = cond.expand(-1, cls_token_num, -1)
    h = torch.cat([cond, sd["tok_embeddings.weight"][codes[:, :-1]]], 1)
    fc = _official_freqs(hd, grid, cls_token_num)[: h.shape[1]]

    def attend(i, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    attend.n_head = n_head
    for i in range(n_layer):
        h = _layer(sd, i, h, fc, attend)
    logits = (_rms(h, sd["norm.weight"]) @ sd["output.weight"].T).float()
    return logits[:, cls_token_num - 1:] if repeat else logits


def official_c2i_generate(sd, labels, n_head, grid, cls_token_num, betas=None, cfg_scale=None, codes=None):
    """generate.py for c2i, written out: prefill the class vector at input_pos [0] (T = 1; with CFG the null-class
    rows follow, ``u + (c - u)·w``), then one token per step at input_pos 1, 2, … with a per-layer KV cache, each
    position p reading RoPE row p of ``precompute_freqs_cis_2d(grid, hd, base, cls_token_num)``. Greedy
    (``sample_logits=False``), or teacher-forced by ``codes``. Returns (tokens (B, N), logits (B, N, V) per step,
    after the CFG mix)."""
    sd = {k: v.float() for k, v in sd.items()}
    dim, hd, n_layer = _sizes(sd, n_head)
    n = grid * grid
    fc = _official_freqs(hd, grid, cls_token_num)
    bsz = labels.shape[0]
    if cfg_scale is not None:
        labels = torch.cat([labels, torch.full_like(labels, sd["cls_embedding.embedding_table.weight"].shape[0] - 1)])
        betas = None if betas is None else torch.cat([betas, torch.ones_like(betas)])
    keys, values = [[] for _ in range(n_layer)], [[] for _ in range(n_layer)]

    def attend(i, q, k, v):  # KVCache.update, then the query attends to every cached position
        keys[i].append(k), values[i].append(v)
        return F.scaled_dot_product_attention(q, torch.cat(keys[i], 2), torch.cat(values[i], 2))

    attend.n_head = n_head

    def step(x, pos):
        for i in range(n_layer):
            x = _layer(sd, i, x, fc[pos:pos + 1], attend)
        logits = (_rms(x, sd["norm.weight"]) @ sd["output.weight"].T).float()[:, -1]
        if cfg_scale is not None:
            c, u = logits.chunk(2)
            logits = u + (c - u) * cfg_scale
        return logits

    tokens, all_logits = [], []
    x = _official_cond(sd, labels, betas)
    for j in range(n):
        logits = step(x, j)
        tok = logits.argmax(-1) if codes is None else codes[:, j]
        tokens.append(tok), all_logits.append(logits)
        feed = torch.cat([tok, tok]) if cfg_scale is not None else tok
        x = sd["tok_embeddings.weight"][feed][:, None]
    return torch.stack(tokens, 1)[:bsz], torch.stack(all_logits, 1)


def convert_and_load(tmp_path, state, name="m", **options):
    path = tmp_path / f"{name}.pt"
    torch.save(state, path)
    import_checkpoint("llamagen-gpt", path, tmp_path / name, **options)
    return load_model(tmp_path / name)


@pytest.mark.parametrize("gft", [False, True])
def test_gpt_import_gives_the_official_logits(tmp_path, gft):
    shapes = official_gpt_shapes(n_layer=2, dim=64, vocab=32, classes=5, multiple_of=32, gft=gft)
    sd = random_state(shapes, seed=1)
    model = convert_and_load(tmp_path, sd, grid_size=4, n_head=4).eval()
    assert model.config.n_head == 4 and model.config.num_classes == 5 and model.config.vocab_size == 32
    codes, labels = torch.randint(32, (3, 16)), torch.tensor([0, 4, 5])  # 5 = the null class
    beta = torch.tensor([0.3, 0.7, 1.0])
    ref = official_gpt_logits(sd, codes, labels, n_head=4, grid=4, betas=beta if gft else None)
    ours = model(codes, labels, beta)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-4), (ours - ref).abs().max()
    if not gft:  # the added β embedder is zero at its output: the same logits at every β and without β
        assert torch.equal(model(codes, labels, torch.zeros(3)), ours)
        assert torch.equal(model(codes, labels), ours)
        assert model.beta_embedder.mlp[2].weight.abs().sum() == 0


def test_gpt_b_checkpoint_in_a_training_container(tmp_path):
    """GPT-B detected from the shapes; {'model', 'args' (argparse.Namespace), 'steps'} container; bf16 weights; a
    stray freqs_cis; the GPT-B sizes at a small vocabulary."""
    sd = random_state(official_gpt_shapes(12, 768, vocab=64, classes=10), seed=2, dtype=torch.bfloat16)
    sd_file = {**sd, "freqs_cis": torch.zeros(17, 32, 2)}
    ckpt = {"model": sd_file, "optimizer": None, "steps": 5000, "args": argparse.Namespace(gpt_model="GPT-B")}
    model = convert_and_load(tmp_path, ckpt, grid_size=4).eval()
    assert model.config.preset == "GPT-B" and model.config.n_head == 12
    codes, labels = torch.randint(64, (2, 16)), torch.tensor([3, 10])
    ref = official_gpt_logits(sd, codes, labels, n_head=12, grid=4)
    assert torch.allclose(model(codes, labels, torch.tensor([0.5, 1.0])), ref, atol=1e-4, rtol=1e-4)


# cls_token_num k > 1: the official c2i network keeps one class vector, its RoPE table k zero rows (issue #20)
def _official_k_import(tmp_path, k, gft):
    """An official-layout file with cls_token_num k: k = 2 read from its training args, k = 3 from the flag."""
    sd = random_state(official_gpt_shapes(n_layer=2, dim=64, vocab=32, classes=5, multiple_of=32, gft=gft), seed=k)
    if k == 2:
        args = argparse.Namespace(gpt_model="GPT-nano", image_size=64, downsample_size=16, cls_token_num=2)
        torch.save({"model": sd, "args": args}, tmp_path / "k.pt")
        converted = import_checkpoint("llamagen-gpt", tmp_path / "k.pt", tmp_path / "k")
    else:
        torch.save({"model": sd}, tmp_path / "k.pt")
        converted = import_checkpoint("llamagen-gpt", tmp_path / "k.pt", tmp_path / "k", grid_size=4, n_head=2,
                                      cls_token_num=k)
    assert any(f"cls_token_num {k}: imported with the official c2i layout" in n for n in converted.notes)
    return sd, load_model(tmp_path / "k").eval()


@pytest.mark.parametrize("k,gft", [(2, False), (3, True)])
def test_cls_token_num_above_one_imports_the_official_inference_network(tmp_path, k, gft):
    from gft_tokens.families.llamagen.sampler import sample

    sd, model = _official_k_import(tmp_path, k, gft)
    c = model.config
    assert (c.cls_token_num, c.class_token_layout, c.prefix_len, c.max_seq_len) == (k, "official", 1, 17)
    codes, labels = torch.randint(32, (3, 16)), torch.tensor([0, 4, 5])  # 5 = the null class
    beta = torch.tensor([0.3, 0.7, 1.0])
    betas = beta if gft else None
    ref = official_gpt_logits(sd, codes, labels, n_head=2, grid=4, betas=betas, cls_token_num=k)
    _, ref_steps = official_c2i_generate(sd, labels, n_head=2, grid=4, cls_token_num=k, betas=betas, codes=codes)
    assert torch.allclose(ref_steps, ref, atol=1e-5)  # the two re-implementations agree
    # the repeated class token on the same weights is another network: the comparison can fail
    repeat = type(model)(type(c)(**{**c.to_dict(), "class_token_layout": "repeat"})).eval()
    repeat.load_state_dict(model.state_dict())
    assert (repeat(codes, labels, beta) - ref).abs().max() > 1e-2
    # teacher forcing, prefill + decode with the KV cache, full recompute
    assert (model(codes, labels, beta) - ref).abs().max() < 1e-5
    cache = model.allocate_cache(3)
    steps = [model.prefill(labels, beta, cache)] + [model.decode(codes[:, j - 1:j], cache) for j in range(1, 16)]
    assert (torch.stack(steps, 1) - ref).abs().max() < 1e-5
    for j in (0, 1, k - 1, k, 15):
        assert (model.next_logits(codes[:, :j], labels, beta) - ref[:, j]).abs().max() < 1e-5
    # greedy sampling, with and without the cache, GFT β and CFG, against generate.py written out
    real = labels[:2]
    for guidance in ({"cfg_scale": 2.5}, {"beta": beta[:2]} if gft else {"cfg_scale": 1.5}):
        w = guidance.get("cfg_scale")
        want, _ = official_c2i_generate(sd, real, n_head=2, grid=4, cls_token_num=k, cfg_scale=w,
                                        betas=guidance.get("beta", torch.ones(2) if gft else None))
        for use_cache in (True, False):
            got = sample(model, real, temperature=0.0, use_cache=use_cache, **guidance)
            assert torch.equal(got, want), (use_cache, guidance)


def test_official_layout_trains_on_every_image_token_and_round_trips(tmp_path):
    """Training under the official layout: position i predicts image token i, N logits for N targets, and the
    gradient reaches the class vector; the layout survives save/load and a GFT fine-tune (lr 0: unchanged)."""
    from gft_tokens.train.loop import TrainOptions, train

    sd = random_state(official_gpt_shapes(2, 64, vocab=1024, classes=10, multiple_of=32), seed=4)
    torch.save({"model": sd}, tmp_path / "official.pt")
    import_checkpoint("llamagen-gpt", tmp_path / "official.pt", tmp_path / "imported", grid_size=8, n_head=2,
                      cls_token_num=2, tokenizer=str(SHIPPED_VQ))
    model = load_model(tmp_path / "imported").train()
    codes, labels = torch.randint(1024, (2, 64)), torch.tensor([1, 9])
    assert model.head_inputs(codes, labels, torch.tensor([0.5, 1.0])).hidden.shape[:2] == (2, 64)
    F.cross_entropy(model(codes, labels).flatten(0, 1), codes.flatten()).backward()
    assert model.cls_embedding.embedding_table.weight.grad[[1, 9]].abs().sum() > 0
    train("llamagen", TrainOptions(init_from=str(tmp_path / "imported"), tokenizer=str(SHIPPED_VQ), objective="gft",
                                   train_images=100, steps=1, batch_size=4, lr=0.0, weight_decay=0.0, save_every=0,
                                   warmup_steps=1, out=str(tmp_path / "ft")))
    ft = load_model(tmp_path / "ft" / "model").eval()
    assert ft.config.class_token_layout == "official"
    ref = official_gpt_logits(sd, codes, labels, n_head=2, grid=8, cls_token_num=2)
    assert (ft(codes, labels, torch.full((2,), 0.4)) - ref).abs().max() < 1e-5


def test_default_layout_is_the_repeated_class_token_and_old_configs_load_as_it(tmp_path):
    import json

    from gft_tokens.families.llamagen.model import LlamaGen, llamagen_config

    config = llamagen_config("GPT-nano", vocab_size=32, grid_size=4, num_classes=5, cls_token_num=2)
    assert (config.class_token_layout, config.prefix_len, config.max_seq_len) == ("repeat", 2, 18)
    model = LlamaGen(config).eval()
    torch.nn.init.normal_(model.output.weight, std=0.1)  # the zero-initialised head would hide any difference
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg.pop("class_token_layout") == "repeat"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))  # a config written before the option existed
    old = load_model(tmp_path / "m").eval()
    assert old.config.class_token_layout == "repeat"
    sd = {k: v for k, v in old.state_dict().items() if not k.startswith("beta_embedder.")}
    codes, labels = torch.randint(32, (2, 16)), torch.tensor([1, 5])
    ref = official_gpt_logits(sd, codes, labels, n_head=2, grid=4, cls_token_num=2, repeat=True)
    assert (old(codes, labels) - ref).abs().max() < 1e-5
    with pytest.raises(GFTError, match="class_token_layout must be one of 'repeat', 'official'"):
        llamagen_config("GPT-nano", class_token_layout="shifted")


@pytest.mark.parametrize("args,argv,message", [
    (None, [], "error: grid_size is required"),  # no training args: the grid flag is required
    ({"cls_token_num": 2}, ["--cls-token-num", "3"], "error: --cls-token-num 3 contradicts the checkpoint's "
                                                     "training args (cls_token_num 2)"),
    ({}, ["--grid-size", "8"], "error: --grid-size 8 contradicts the checkpoint's training args (grid_size 4)"),
    ({"class_dropout_prob": 0.1}, ["--class-dropout-prob", "0"], "error: --class-dropout-prob 0.0 contradicts"),
])
def test_import_script_refuses_a_missing_grid_or_a_flag_against_the_args_in_one_line(tmp_path, capsys, args,
                                                                                     argv, message):
    sd = random_state(official_gpt_shapes(2, 64, vocab=32, classes=5, multiple_of=32), seed=5)
    if args is not None:
        args = argparse.Namespace(gpt_model="GPT-nano", image_size=64, downsample_size=16, **args)
    torch.save({"model": sd, **({"args": args} if args is not None else {})}, tmp_path / "c.pt")
    with pytest.raises(SystemExit) as exc:
        script_main("import_checkpoint.py")(["--format", "llamagen-gpt", *argv, str(tmp_path / "c.pt"),
                                             str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith(message), err
    assert not (tmp_path / "out").exists()


def test_import_script_class_table_without_a_null_row_and_no_args(tmp_path, capsys):
    """No args, --class-dropout-prob 0: every row is a class, a zero null row is added, and the summary says so."""
    sd = random_state(official_gpt_shapes(2, 64, vocab=32, classes=5, multiple_of=32), seed=6)
    sd["cls_embedding.embedding_table.weight"] = sd["cls_embedding.embedding_table.weight"][:5].clone()
    torch.save(sd, tmp_path / "c.pt")
    script_main("import_checkpoint.py")(["--format", "llamagen-gpt", "--grid-size", "4", "--n-head", "2",
                                         "--class-dropout-prob", "0", str(tmp_path / "c.pt"), str(tmp_path / "m")])
    out = capsys.readouterr().out
    assert "no null row" in out and "5 classes, a zero null-class embedding added as row 5" in out
    model = load_model(tmp_path / "m").eval()
    assert model.config.num_classes == 5 and model.null_class == 5
    assert not model.cls_embedding.embedding_table.weight[5].any()
    codes, labels = torch.randint(32, (2, 16)), torch.tensor([0, 4])
    assert (model(codes, labels) - official_gpt_logits(sd, codes, labels, n_head=2, grid=4)).abs().max() < 1e-5


OFFICIAL = {"GPT-B": (12, 768, 110_888_448), "GPT-L": (24, 1024, 342_910_976), "GPT-XL": (36, 1280, 774.7e6),
            "GPT-XXL": (48, 1536, 1.411e9), "GPT-XXXL": (48, 2560, 3.893e9), "GPT-1B": (22, 2048, 1.200e9),
            "GPT-3B": (24, 3200, 3.097e9), "GPT-7B": (32, 4096, 6.615e9)}


@pytest.mark.parametrize("preset", OFFICIAL)
def test_every_official_size_maps_on_the_meta_device(preset):
    n_layer, dim, params = OFFICIAL[preset]
    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in official_gpt_shapes(n_layer, dim).items()}
        state["freqs_cis"] = torch.empty(577, dim // 64, 2)
    converted = convert_state_dict("llamagen-gpt", state, grid_size=24)  # checks keys/shapes against the model
    assert converted.config.preset == preset and converted.config.grid_size == 24
    official = sum(v.numel() for k, v in state.items() if k != "freqs_cis")
    assert official == params if isinstance(params, int) else abs(official - params) / params < 1e-3
    ours = sum(v.numel() for k, v in converted.state.items() if not k.startswith("beta_embedder."))
    assert ours == official and "freqs_cis" not in converted.state
    assert any("zero-initialised" in n for n in converted.notes) and any(preset in n for n in converted.notes)


def test_wrong_preset_names_the_differing_keys_and_the_fitting_preset():
    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in official_gpt_shapes(24, 1024).items()}
    with pytest.raises(GFTError, match=r"does not match GPT-B.*layers\.0\.attention\.wqkv\.weight.*fits preset GPT-L"):
        convert_state_dict("llamagen-gpt", state, grid_size=16, preset="GPT-B")
    state["layers.3.feed_forward.w2.weight"] = torch.empty(2816, 1024, device="meta")  # transposed
    with pytest.raises(GFTError, match=r"layers\.3\.feed_forward\.w2\.weight \(2816, 1024\)"):
        convert_state_dict("llamagen-gpt", state, grid_size=16)
    with torch.device("meta"):
        odd = {k: torch.empty(s) for k, s in official_gpt_shapes(5, 1024).items()}
    with pytest.raises(GFTError, match="no LlamaGen preset fits.*n_layer 5.*--n-head"):
        convert_state_dict("llamagen-gpt", odd, grid_size=16)
    with pytest.raises(GFTError, match="grid_size is required"):
        convert_state_dict("llamagen-gpt", state)
    with pytest.raises(GFTError, match="no option 'image_size'"):
        convert_state_dict("llamagen-gpt", state, grid_size=16, image_size=256)
    with pytest.raises(GFTError, match="not a LlamaGen c2i GPT state dict.*tok_embeddings"):
        convert_state_dict("llamagen-gpt", {"foo.weight": torch.zeros(2)}, grid_size=16)


def test_pickles_that_need_code_execution_are_refused(tmp_path):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"model": {"tok_embeddings.weight": torch.zeros(2, 2)}, "extra": Payload()}, path)
    with pytest.raises(GFTError, match="needs code execution to unpickle"):
        import_checkpoint("llamagen-gpt", path, tmp_path / "out", grid_size=4)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_unreadable_files_and_containers_give_clear_errors(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"ema": random_state(official_gpt_shapes(2, 64, 32, 5, 32)), "note": "x"}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(GFTError, match="corrupt or truncated"):
        import_checkpoint("llamagen-gpt", truncated, None, grid_size=4, n_head=4)
    with pytest.raises(GFTError, match="does not exist"):
        import_checkpoint("llamagen-gpt", tmp_path / "nope.pt", None, grid_size=4)
    with pytest.raises(GFTError, match="top-level keys: ema, note.*--key"):
        import_checkpoint("llamagen-gpt", good, None, grid_size=4, n_head=4)
    converted = import_checkpoint("llamagen-gpt", good, None, key="ema", grid_size=4, n_head=4)
    assert converted.config.dim == 64
    with pytest.raises(GFTError, match="unknown checkpoint format 'llamagen-gtp' \\(did you mean 'llamagen-gpt'"):
        import_checkpoint("llamagen-gtp", good, None)


def test_import_script_and_gft_finetune_start_exactly_at_the_imported_model(tmp_path, capsys):
    from gft_tokens.train.loop import TrainOptions, train

    # an official-format model that fits the shipped shapes tokenizer (1024 codes, 8x8 grid) and its 10 classes
    sd = random_state(official_gpt_shapes(2, 64, vocab=1024, classes=10, multiple_of=32), seed=3)
    torch.save({"model": sd}, tmp_path / "official.pt")
    main = script_main("import_checkpoint.py")
    main(["--format", "llamagen-gpt", "--grid-size", "8", "--n-head", "2", "--tokenizer", str(SHIPPED_VQ),
          str(tmp_path / "official.pt"), str(tmp_path / "imported")])
    assert "zero-initialised" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["--format", "llamagen-gpt", str(tmp_path / "official.pt"), str(tmp_path / "x")])
    assert exc.value.code == 2 and "error: grid_size is required" in capsys.readouterr().err
    imported = load_model(tmp_path / "imported")
    assert imported.config.tokenizer["path"] == str(SHIPPED_VQ)

    train("llamagen", TrainOptions(init_from=str(tmp_path / "imported"), tokenizer=str(SHIPPED_VQ), objective="gft",
                                   train_images=100, steps=1, batch_size=4, lr=0.0, weight_decay=0.0, save_every=0,
                                   warmup_steps=1, out=str(tmp_path / "ft")))
    ft = load_model(tmp_path / "ft" / "model")
    codes, labels = torch.randint(1024, (2, 64)), torch.tensor([1, 9])
    ref = official_gpt_logits(sd, codes, labels, n_head=2, grid=8)
    for beta in (0.2, 1.0):
        assert torch.allclose(ft(codes, labels, torch.full((2,), beta)), ref, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# The official LlamaGen VQ tokenizer (tokenizer/tokenizer_image/vq_model.py)
# ---------------------------------------------------------------------------------------------------------------
def official_vq_shapes(ch=128, mult=(1, 1, 2, 2, 4), blocks=2, z=256, n_e=16384, e_dim=8):
    s = {}

    def conv(p, co, ci, k):
        s.update({p + ".weight": (co, ci, k, k), p + ".bias": (co,)})

    def norm(p, c):
        s.update({p + ".weight": (c,), p + ".bias": (c,)})

    def res(p, ci, co):
        norm(p + ".norm1", ci), conv(p + ".conv1", co, ci, 3), norm(p + ".norm2", co), conv(p + ".conv2", co, co, 3)
        if ci != co:
            conv(p + ".nin_shortcut", co, ci, 1)

    def attn(p, c):
        norm(p + ".norm", c)
        for n in ("q", "k", "v", "proj_out"):
            conv(f"{p}.{n}", c, c, 1)

    last = len(mult) - 1
    conv("encoder.conv_in", ch, 3, 3)
    ci = ch
    for i, m in enumerate(mult):
        for j in range(blocks):
            res(f"encoder.conv_blocks.{i}.res.{j}", ci, ch * m)
            ci = ch * m
            if i == last:
                attn(f"encoder.conv_blocks.{i}.attn.{j}", ci)
        if i != last:
            conv(f"encoder.conv_blocks.{i}.downsample.conv", ci, ci, 3)
    res("encoder.mid.0", ci, ci), attn("encoder.mid.1", ci), res("encoder.mid.2", ci, ci)
    norm("encoder.norm_out", ci), conv("encoder.conv_out", z, ci, 3)
    conv("decoder.conv_in", ci, z, 3)
    res("decoder.mid.0", ci, ci), attn("decoder.mid.1", ci), res("decoder.mid.2", ci, ci)
    for j, i in enumerate(reversed(range(len(mult)))):
        for r in range(blocks + 1):
            res(f"decoder.conv_blocks.{j}.res.{r}", ci, ch * mult[i])
            ci = ch * mult[i]
            if i == last:
                attn(f"decoder.conv_blocks.{j}.attn.{r}", ci)
        if i != 0:
            conv(f"decoder.conv_blocks.{j}.upsample.conv", ci, ci, 3)
    norm("decoder.norm_out", ci), conv("decoder.conv_out", 3, ci, 3)
    s["quantize.codebook_used"] = (65536,)
    s["quantize.embedding.weight"] = (n_e, e_dim)
    conv("quant_conv", e_dim, z, 1), conv("post_quant_conv", z, e_dim, 1)
    return s


def official_vq(sd, x=None, codes=None):
    """Encode images to codes (x given) or decode codes to images, as VQModel.encode / decode_code."""

    def gn(h, p):
        return F.group_norm(h, 32, sd[p + ".weight"], sd[p + ".bias"], 1e-6)

    def conv(h, p, stride=1, pad=1):
        return F.conv2d(h, sd[p + ".weight"], sd[p + ".bias"], stride, pad)

    def swish(h):
        return h * torch.sigmoid(h)

    def res(h, p):
        y = conv(swish(gn(conv(swish(gn(h, p + ".norm1")), p + ".conv1"), p + ".norm2")), p + ".conv2")
        return (conv(h, p + ".nin_shortcut", pad=0) if p + ".nin_shortcut.weight" in sd else h) + y

    def attn(h, p):
        n = gn(h, p + ".norm")
        q, k, v = (conv(n, f"{p}.{name}", pad=0) for name in "qkv")
        b, c, hh, ww = q.shape
        w = torch.softmax(torch.bmm(q.reshape(b, c, -1).permute(0, 2, 1), k.reshape(b, c, -1)) * c ** -0.5, dim=2)
        out = torch.bmm(v.reshape(b, c, -1), w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return h + conv(out, p + ".proj_out", pad=0)

    def stage(h, side):
        levels = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith(f"{side}.conv_blocks."))
        if side == "decoder":
            h = res(attn(res(conv(h, "decoder.conv_in"), "decoder.mid.0"), "decoder.mid.1"), "decoder.mid.2")
        else:
            h = conv(h, "encoder.conv_in")
        for i in range(levels):
            p = f"{side}.conv_blocks.{i}"
            r = 0
            while f"{p}.res.{r}.conv1.weight" in sd:
                h = res(h, f"{p}.res.{r}")
                if f"{p}.attn.{r}.q.weight" in sd:
                    h = attn(h, f"{p}.attn.{r}")
                r += 1
            if f"{p}.downsample.conv.weight" in sd:
                h = conv(F.pad(h, (0, 1, 0, 1)), f"{p}.downsample.conv", stride=2, pad=0)
            if f"{p}.upsample.conv.weight" in sd:
                h = conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), f"{p}.upsample.conv")
        if side == "encoder":
            h = res(attn(res(h, "encoder.mid.0"), "encoder.mid.1"), "encoder.mid.2")
        return conv(swish(gn(h, f"{side}.norm_out")), f"{side}.conv_out")

    emb = F.normalize(sd["quantize.embedding.weight"], dim=-1)
    if x is not None:
        z = conv(stage(x, "encoder"), "quant_conv", pad=0).permute(0, 2, 3, 1)
        flat = F.normalize(z.reshape(-1, z.shape[-1]), dim=-1)
        d = flat.pow(2).sum(1, keepdim=True) + emb.pow(2).sum(1) - 2 * flat @ emb.T
        return d.argmin(1).view(z.shape[:3])
    q = emb[codes].permute(0, 3, 1, 2)
    return stage(conv(q, "post_quant_conv", pad=0), "decoder")


def test_vq16_layout_and_parameter_count_on_the_meta_device():
    shapes = official_vq_shapes()
    assert len(shapes) == 344
    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in shapes.items()}
    converted = convert_state_dict("llamagen-vq", state, image_size=384)
    assert sum(v.numel() for v in converted.state.values()) == 71_883_403  # VQ_16, as published
    assert converted.config.downsample == 16 and any(n.startswith("VQ-16") for n in converted.notes)
    with torch.device("meta"):
        vq8 = {k: torch.empty(s) for k, s in official_vq_shapes(mult=(1, 2, 2, 4)).items()}
    assert sum(v.numel() for v in convert_state_dict("llamagen-vq", vq8, image_size=256).state.values()) == 70_109_835


def test_vq_import_encodes_and_decodes_as_the_official_model(tmp_path):
    shapes = official_vq_shapes(ch=32, mult=(1, 2), blocks=2, z=32, n_e=64, e_dim=8)
    sd = random_state(shapes, seed=4)
    for k in shapes:
        if k.endswith(".bias"):
            sd[k] = 0.05 * torch.randn(shapes[k])
    torch.save({"model": sd}, tmp_path / "vq.pt")
    import_checkpoint("llamagen-vq", tmp_path / "vq.pt", tmp_path / "vq", image_size=16)
    tok = load_tokenizer(tmp_path / "vq")
    assert tok.grid_size == (8, 8) and tok.codebook_size == 64
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    codes = tok.encode(images)
    ref = official_vq(sd, x=images)
    assert (codes == ref).float().mean() >= 0.99 and len(codes.unique()) > 4
    out = tok.decode(ref)
    assert torch.allclose(out, official_vq(sd, codes=ref).clamp(-1, 1), atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# VAR: the official layouts are checked; conversion waits for the VAR model family (the seam)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth, shared, res, params", [(16, False, 256, 310.28), (20, False, 256, 600.92),
                                                        (24, False, 256, 1033.40), (30, False, 256, 2010.02),
                                                        (36, True, 512, 2353.89)])
def test_var_layout_matches_the_published_sizes(depth, shared, res, params):
    layout = var_layout(depth, shared_aln=shared, patch_nums=PATCH_NUMS[res], buffers=False)
    assert round(sum(math.prod(s) for s in layout.values()) / 1e6, 2) == params
    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in var_layout(depth, shared_aln=shared, patch_nums=PATCH_NUMS[res]).items()}
    info = inspect_var(state)
    assert (info["depth"], info["shared_aln"], info["resolution"], info["num_classes"]) == (depth, shared, res, 1000)


def test_var_checks_name_differences_and_conversion_needs_the_var_family():
    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in var_layout(16).items()}
        vae = {k: torch.empty(s) for k, s in vqvae_layout().items()}
    assert round(sum(v.numel() for k, v in vae.items() if "ema_vocab" not in k) / 1e6, 2) == 108.95
    assert inspect_vqvae(vae)["ch_mult"] == [1, 1, 2, 2, 4]
    state["blocks.3.ffn.fc1.weight"] = torch.empty(1024, 4096, device="meta")
    with pytest.raises(GFTError, match=r"VAR-d16: 1 keys differ.*blocks\.3\.ffn\.fc1\.weight \(1024, 4096\)"):
        inspect_var(state)
    del vae["quantize.embedding.weight"]
    with pytest.raises(GFTError, match="not a VAR VQVAE state dict.*quantize.embedding.weight"):
        inspect_vqvae(vae)
    if "var" not in FAMILIES:
        with torch.device("meta"):
            good = {k: torch.empty(s) for k, s in var_layout(16).items()}
        with pytest.raises(GFTError, match="check out as the official VAR.*no model to convert them into"):
            convert_state_dict("var", good)


def test_a_registered_format_is_dispatched_by_name_only(tmp_path):
    from gft_tokens.families.llamagen.model import LlamaGen, llamagen_config

    def convert(state, scale=1.0):  # e.g. a family whose official names differ from ours
        config = llamagen_config("GPT-nano", vocab_size=16, grid_size=2, num_classes=3, beta_embed=False)
        with torch.device("meta"):
            names = LlamaGen(config).state_dict()
        return Converted(LlamaGen, config, {k: state["w." + k] * scale for k in names}, ["renamed w.*"])

    register_importer(Importer("renamed-test", "test format", convert, {"scale": "multiplier"}))
    try:
        config = llamagen_config("GPT-nano", vocab_size=16, grid_size=2, num_classes=3, beta_embed=False)
        src = {"w." + k: torch.randn(v.shape) for k, v in LlamaGen(config).state_dict().items()}
        path = tmp_path / "weights.bin"  # the name says nothing; the format is given
        torch.save(src, path)
        import_checkpoint("renamed-test", path, tmp_path / "out", scale=2.0)
        loaded = load_model(tmp_path / "out")
        assert torch.equal(loaded.tok_embeddings.weight, src["w.tok_embeddings.weight"] * 2)
        with pytest.raises(GFTError, match="unknown checkpoint format"):
            import_checkpoint("renamed", path, None)
    finally:
        IMPORTERS.pop("renamed-test")
