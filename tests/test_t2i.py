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
