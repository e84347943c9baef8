import pytest
import torch

from gft_tokens import GFTError
from gft_tokens.pretrained import config_replace
from gft_tokens.families import build_model, load_model
from gft_tokens.families.llamagen.model import PRESETS, LlamaGen, llamagen_config
from gft_tokens.nn import apply_rope, rope_2d_table, swiglu_hidden_dim
from gft_tokens.families.llamagen.sampler import sample
from gft_tokens.sampling.common import filter_logits

NO_DROPOUT = dict(token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)


def tiny(**kw):
    torch.manual_seed(0)
    m = build_model("llamagen", "GPT-nano", **{"vocab_size": 64, "grid_size": 4, "num_classes": 10, **kw})
    # A freshly built model has a zero head and a zero β embedding: randomise both so that tests see real logits.
    torch.nn.init.normal_(m.output.weight, std=0.3)
    if m.beta_embedder is not None:
        torch.nn.init.normal_(m.beta_embedder.mlp[2].weight, std=0.3)
    return m.eval()


@pytest.mark.parametrize("name, layers, heads, dim, ffn, params", [
    ("GPT-B", 12, 12, 768, 2048, 110_888_448),
    ("GPT-L", 24, 16, 1024, 2816, 342_910_976),
    ("GPT-XL", 36, 20, 1280, 3584, None),
    ("GPT-XXL", 48, 24, 1536, 4096, None),
    ("GPT-3B", 24, 32, 3200, 8704, None),
])
def test_official_presets(name, layers, heads, dim, ffn, params):
    cfg = llamagen_config(name, beta_embed=False)
    assert (cfg.n_layer, cfg.n_head, cfg.dim) == (layers, heads, dim)
    assert swiglu_hidden_dim(dim, cfg.multiple_of) == ffn
    if params is not None:  # LlamaGen's own count for c2i, vocab 16384, 1001 class rows
        with torch.device("meta"):
            m = LlamaGen(cfg)
        assert sum(p.numel() for p in m.parameters()) == params


def test_architecture_details():
    m = tiny()
    names = {n for n, _ in m.named_parameters()}
    assert "cls_embedding.embedding_table.weight" in names and "tok_embeddings.weight" in names
    assert "layers.0.attention.wqkv.weight" in names and "layers.1.feed_forward.w3.weight" in names
    assert not any(n.endswith(".bias") for n in names if not n.startswith("beta_embedder"))
    assert m.cls_embedding.embedding_table.weight.shape[0] == 11  # + null class
    fresh = build_model("llamagen", "GPT-nano", vocab_size=64, grid_size=4, num_classes=10)
    assert fresh.output.weight.abs().sum() == 0  # zero-init head
    assert fresh.beta_embedder.mlp[2].weight.abs().sum() == 0 and fresh.beta_embedder.mlp[2].bias.abs().sum() == 0


def test_rope_2d_rows_then_columns_and_zero_class_positions():
    cos, sin = rope_2d_table(grid=3, head_dim=8, base=10000.0, prefix=1)
    assert cos.shape == (10, 4)
    assert cos[0].abs().sum() == 0 and sin[0].abs().sum() == 0  # class token: zero rows, as LlamaGen
    # token at row 2, column 1 = position 1 + 2*3 + 1; pairs 0-1 rotate with the row, 2-3 with the column
    angles = torch.atan2(sin[1 + 7], cos[1 + 7])
    f = torch.tensor([1.0, 10000 ** (-2 / 4)])
    assert torch.allclose(angles[:2], 2 * f, atol=1e-5) and torch.allclose(angles[2:], 1 * f, atol=1e-5)
    x = torch.randn(1, 10, 2, 8)
    y = apply_rope(x, cos, sin)
    assert y[:, 0].abs().sum() == 0
    assert torch.allclose(y[:, 1:].norm(dim=-1), x[:, 1:].norm(dim=-1), atol=1e-5)  # rotations keep norms


def test_teacher_forcing_is_causal():
    m = tiny(**NO_DROPOUT)
    codes = torch.randint(64, (2, 16))
    labels = torch.tensor([1, 2])
    a = m(codes, labels, torch.tensor([0.5, 0.5]))
    codes2 = codes.clone()
    codes2[:, 9:] = (codes2[:, 9:] + 1) % 64
    b = m(codes2, labels, torch.tensor([0.5, 0.5]))
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-5)  # logits for tokens 0..9 only see tokens 0..8
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_kv_cached_sampling_equals_full_recompute():
    m = tiny()
    labels = torch.tensor([0, 3, 9])
    for kw in (dict(beta=0.4), dict(cfg_scale=2.5), dict(beta=torch.tensor([1.0, 0.5, 0.1]), top_k=10, top_p=0.9)):
        a = sample(m, labels, generator=torch.Generator().manual_seed(1), **kw)
        b = sample(m, labels, generator=torch.Generator().manual_seed(1), use_cache=False, **kw)
        assert torch.equal(a, b), kw
        assert a.shape == (3, 16) and a.min() >= 0 and a.max() < 64


def test_cfg_scale_one_equals_conditional_sampling():
    m = tiny()
    labels = torch.tensor([1, 2, 3, 4])
    a = sample(m, labels, cfg_scale=1.0, generator=torch.Generator().manual_seed(5))
    b = sample(m, labels, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_cfg_mixes_conditional_and_unconditional_logits():
    m = tiny()
    labels = torch.tensor([2])
    c = m.prefill(labels, torch.ones(1), None)
    u = m.prefill(torch.tensor([10]), torch.ones(1), None)
    w = 3.0
    expected = torch.softmax(u + w * (c - u), -1)
    # greedy decoding picks the argmax of the guided logits
    tok = sample(m, labels, cfg_scale=w, temperature=0.0)[0, 0]
    assert tok == expected.argmax()


def test_exact_start_from_cfg_checkpoint(tmp_path):
    """A GFT model built from a CFG checkpoint gives, at step 0 and any β, the CFG model's conditional logits."""
    from gft_tokens.train.loop import _load_init_state

    cfg_model = tiny(beta_embed=False, **NO_DROPOUT)
    cfg_model.save_pretrained(tmp_path / "cfg")
    loaded = load_model(tmp_path / "cfg")
    gft = LlamaGen(config_replace(loaded.config, beta_embed=True))
    _load_init_state(gft, loaded.state_dict(), stage=0, rank=0, where="test")
    gft.eval()
    codes = torch.randint(64, (4, 16))
    labels = torch.tensor([0, 1, 2, 10])
    ref = cfg_model(codes, labels)
    for beta in (0.0, 0.3, 0.77, 1.0):
        assert torch.equal(gft(codes, labels, torch.full((4,), beta)), ref)


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.01)).tolist() == [[False, True, True, True]]


# -- bad input -----------------------------------------------------------------------------------------------------
def test_unknown_preset():
    with pytest.raises(GFTError, match="unknown LlamaGen preset 'GPT-XXXXL'.*did you mean"):
        llamagen_config("GPT-XXXXL")


@pytest.mark.parametrize("labels", [torch.tensor([0, 10]), torch.tensor([-1, 0])])
def test_bad_class_id(labels):
    with pytest.raises(GFTError, match="class id .* outside \\[0, 10\\)"):
        sample(tiny(), labels, beta=0.5)


@pytest.mark.parametrize("beta", [1.5, -0.2, float("nan")])
def test_bad_beta(beta):
    with pytest.raises(GFTError, match="beta"):
        sample(tiny(), torch.tensor([0]), beta=beta)


def test_beta_on_cfg_model_is_refused():
    with pytest.raises(GFTError, match="no β input"):
        sample(tiny(beta_embed=False), torch.tensor([0]), beta=0.5)


def test_codes_outside_vocab():
    with pytest.raises(GFTError, match="codes must lie in \\[0, 64\\)"):
        tiny()(torch.full((1, 16), 64), torch.tensor([0]))


def test_presets_have_cpu_sizes():
    assert {"GPT-nano", "GPT-tiny", "GPT-small"} <= set(PRESETS)


def test_categorical_sampler_matches_probabilities_and_skips_zeros():
    from gft_tokens.sampling.common import categorical

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]).expand(20000, -1)
    draws = categorical(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=6).float() / len(draws)
    assert freq[[0, 2, 5]].sum() == 0
    assert torch.allclose(freq, probs[0], atol=0.015)


@pytest.mark.parametrize("vocab", [6, 300, 1024])
def test_categorical_block_inversion_is_exact(vocab):
    from gft_tokens.sampling.common import categorical

    g = torch.Generator().manual_seed(1)
    probs = torch.rand(1, vocab, generator=g) ** 4
    probs[0, torch.randperm(vocab, generator=g)[: vocab // 3]] = 0
    probs /= probs.sum()
    draws = categorical(probs.expand(40000, -1), torch.Generator().manual_seed(0), block=16)
    freq = torch.bincount(draws, minlength=vocab).float() / len(draws)
    assert freq[probs[0] == 0].sum() == 0
    assert (freq - probs[0]).abs().max() < 0.01
