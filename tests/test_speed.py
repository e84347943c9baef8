"""Issue 18: the static-shape (compilable) LlamaGen decode step, the draw split from its random numbers, bf16
autocast plumbing, and the benchmark's new modes (--curve, --overhead, --profile, --targets, --compile).

No timing is asserted here: the speed ratios are the benchmark's output, not a unit test's."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import script_main
from gft_tokens.errors import GFTError
from gft_tokens.families import get_family
from gft_tokens.families.llamagen import sampler as llamagen_sampler
from gft_tokens.sampling import common

FAM = get_family("llamagen")


def nano(vocab=64, grid=4, seed=0):
    torch.manual_seed(seed)
    model = FAM.bench.build("GPT-nano", vocab, grid)
    torch.nn.init.normal_(model.output.weight, std=0.5)  # peaked enough that the draws depend on the logits
    return model


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


def test_categorical_from_uniform_is_the_same_draw_as_categorical():
    probs = torch.softmax(torch.randn(5, 300) * 3, dim=-1)
    a = common.categorical(probs, gen(4))
    b = common.categorical_from_uniform(probs, common.uniforms(5, gen(4), probs.device))[0]
    assert torch.equal(a, b)
    # and sample_from_logits with u given follows the same path
    logits = torch.randn(5, 300)
    assert torch.equal(common.sample_from_logits(logits, 0.7, 20, 0.9, gen(5)),
                       common.sample_from_logits(logits, 0.7, 20, 0.9, u=common.uniforms(5, gen(5), "cpu")))


def test_decode_at_gives_the_logits_of_decode_at_every_position():
    """The static step (position as a tensor, whole cache masked) equals the dynamic-length step, token by token."""
    m = nano()
    labels = torch.tensor([3, 7])
    beta = torch.full((2,), 0.5)
    codes = torch.randint(0, 64, (2, 16), generator=gen(2))
    dyn, static = m.allocate_cache(2), m.allocate_cache(2)
    with torch.no_grad():
        a, b = m.prefill(labels, beta, dyn), m.prefill(labels, beta, static)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        for i in range(15):
            a = m.decode(codes[:, i:i + 1], dyn)
            pos = torch.tensor([static.length])
            b = m.decode_at(codes[:, i:i + 1], pos, static)
            static.advance(1)
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dyn.k, static.k, rtol=1e-5, atol=1e-6)  # the same keys written at the same places
    torch.testing.assert_close(dyn.k[0], static.k[0], rtol=0, atol=0)  # layer 0's: the two RoPE forms agree exactly


@pytest.mark.parametrize("kwargs", [dict(beta=0.5), dict(cfg_scale=2.5), dict(beta=0.7, top_k=10, top_p=0.9,
                                                                               temperature=0.8)])
def test_static_step_sampler_equals_the_eager_sampler(kwargs, monkeypatch):
    """compile=True with the compiler replaced by the step itself: the static path alone, against the default."""
    monkeypatch.setattr(llamagen_sampler, "compiled_step", lambda: llamagen_sampler._static_step)
    m = nano()
    labels = torch.tensor([1, 2, 3])
    a = FAM.sample(m, labels, generator=gen(), **kwargs)
    b = FAM.sample(m, labels, generator=gen(), compile=True, **kwargs)
    assert torch.equal(a, b)


def _compiler_unavailable() -> str | None:
    try:
        torch.compile(lambda x: x * 2)(torch.ones(2))
    except Exception as exc:  # no C++ compiler, unsupported platform …
        return f"torch.compile cannot build kernels here: {type(exc).__name__}: {exc}"
    return None


def test_compiled_decode_equals_eager_decode_token_for_token():
    """The torch.compile'd step (fullgraph: one graph, no breaks) draws exactly the eager sampler's tokens. CFG, so
    the guidance mix is inside the graph too. GPT-nano on a 4x4 grid: one compilation, ~25 s on this CPU."""
    reason = _compiler_unavailable()
    if reason:
        pytest.skip(reason)
    m = nano()
    labels = torch.tensor([4, 5])
    eager = FAM.sample(m, labels, cfg_scale=2.0, generator=gen(7))
    compiled = FAM.sample(m, labels, cfg_scale=2.0, generator=gen(7), compile=True)
    again = FAM.sample(m, labels, cfg_scale=2.0, generator=gen(7), compile=True)  # reuses the compiled graph
    assert torch.equal(eager, compiled) and torch.equal(eager, again)
    assert not torch.equal(eager, FAM.sample(m, labels, cfg_scale=2.0, generator=gen(8), compile=True))


def test_compile_needs_the_cache():
    with pytest.raises(GFTError, match="needs use_cache=True"):
        FAM.sample(nano(), torch.tensor([1]), beta=0.5, compile=True, use_cache=False)


def test_compile_is_a_llamagen_switch_and_its_off_form_is_every_familys_default():
    assert FAM.sampling_kwargs(beta=0.5, compile=True) == {"beta": 0.5, "compile": True}
    assert FAM.sampling_kwargs(beta=0.5, compile=False) == {"beta": 0.5}
    assert get_family("var").sampling_kwargs(beta=0.5, compile=False) == {"beta": 0.5}
    with pytest.raises(GFTError, match="--compile does not apply to var models"):
        get_family("var").sampling_kwargs(beta=0.5, compile=True)


def _force_bf16(monkeypatch):
    """Make the samplers believe they run on CUDA: bf16 autocast (here on the CPU) and bf16 KV caches."""
    import gft_tokens.families.t2i.sampler as t2i_sampler
    import gft_tokens.families.var.sampler as var_sampler

    bf16 = lambda device: torch.bfloat16  # noqa: E731
    for module in (common, llamagen_sampler, var_sampler, t2i_sampler):
        monkeypatch.setattr(module, "autocast_dtype", bf16)


@pytest.mark.parametrize("name, preset, grid, vocab, extra", [
    ("llamagen", "GPT-nano", 4, 64, {}),
    ("var", "d1", 8, 64, {}),
    ("masked", "MAR-nano", 4, 64, {"steps": 4}),
    ("mar", "MAR-nano", 4, None, {"steps": 2}),
])
def test_every_sampler_runs_under_bf16_autocast(name, preset, grid, vocab, extra, monkeypatch):
    """The CUDA path's dtype plumbing (bf16 activations, bf16 caches, float32 logits) exercised on the CPU."""
    _force_bf16(monkeypatch)
    fam = get_family(name)
    model = fam.bench.build(preset, vocab, grid)
    caches = []
    if hasattr(model, "allocate_cache"):  # record the dtype of every KV cache the sampler allocates
        allocate = model.allocate_cache
        monkeypatch.setattr(model, "allocate_cache", lambda *a, **k: caches.append(allocate(*a, **k)) or caches[-1])
    labels = torch.tensor([1, 2])
    for guidance in ({"beta": 0.5}, {"cfg_scale": 2.0}):
        out = fam.sample(model, labels, generator=gen(), **guidance, **extra)
        assert out.shape[0] == 2
        if vocab is not None:
            assert int(out.min()) >= 0 and int(out.max()) < vocab
        else:
            assert torch.isfinite(out).all()
    assert all(c.k.dtype == torch.bfloat16 for c in caches) and len(caches) == (2 if fam.bench.cache else 0)


def test_t2i_sampler_runs_under_bf16_autocast(monkeypatch):
    from gft_tokens.conditioning import Caption
    from gft_tokens.families.t2i import T2ILlamaGen, t2i_config

    _force_bf16(monkeypatch)
    torch.manual_seed(0)
    cfg = t2i_config("GPT-nano", vocab_size=64, grid_size=4, caption_dim=8, caption_len=3)
    model = T2ILlamaGen(cfg).eval()
    caption = Caption(torch.randn(2, 3, 8), torch.tensor([[True, True, False], [True, False, False]]))
    codes = get_family("t2i").sample(model, caption, cfg_scale=2.0, generator=gen())
    assert codes.shape == (2, 16) and int(codes.max()) < 64


def test_autocast_is_cuda_only():
    assert common.autocast_dtype("cpu") is None
    assert common.autocast_dtype("cuda:0") is torch.bfloat16
    with common.sampling_autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")


def test_sampling_generators_live_on_the_models_device():
    from gft_tokens.nn import module_device, sampling_generator

    m = nano()
    g = sampling_generator(m, 3)
    assert g.device == module_device(m) == torch.device("cpu")
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=torch.Generator().manual_seed(3)))


# -- the benchmark's modes ----------------------------------------------------------------------------------------
def bench(argv, capsys):
    script_main("bench_sampling.py")(argv)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bench_curve_writes_json_and_plot_for_every_family(tmp_path, capsys):
    r = bench(["--curve", "--sizes", "GPT-tiny", "d2", "MAR-nano", "--batches", "2", "--out", str(tmp_path),
               "--threads", "1", "--json"], capsys)
    assert set(r["families"]) == {"llamagen", "var", "masked", "mar"}
    on_disk = json.loads((tmp_path / "curve-cpu.json").read_text())
    assert on_disk["families"].keys() == r["families"].keys()
    assert (tmp_path / "curve-cpu.png").read_bytes()[:4] == b"\x89PNG"
    for name, entry in r["families"].items():
        for size in entry["sizes"].values():
            assert [p["batch"] for p in size["points"]] == [2] and size["params"] > 0
            for p in size["points"]:
                assert p["cfg_nfe_per_image"] == 2 * p["gft_nfe_per_image"] > 0
                # decoding to pixels comes after the codes: end-to-end throughput is never above codes-only
                assert p["gft_images_per_s"] <= p["gft_codes_images_per_s"]
                assert p["decode_ms_per_image"] > 0
        assert "codebook_size" in entry["tokenizer"] or "latent_channels" in entry["tokenizer"]
        assert entry["wall_s"] > 0 and len(entry["load_average"]) == 2

    # a later run of one size adds (or replaces) that size and keeps every other
    r2 = bench(["--curve", "--model", "llamagen", "--sizes", "GPT-nano", "--batches", "1", "--out", str(tmp_path),
                "--threads", "1", "--json"], capsys)
    assert list(r2["families"]["llamagen"]["sizes"]) == ["GPT-tiny", "GPT-nano"]
    assert r2["families"]["llamagen"]["sizes"]["GPT-tiny"] == r["families"]["llamagen"]["sizes"]["GPT-tiny"]
    assert r2["families"]["var"] == r["families"]["var"] and set(r2["families"]) == set(r["families"])
    before = (tmp_path / "curve-cpu.json").read_text()
    with pytest.raises(SystemExit) as exc:  # other settings are not mixed into the same file
        script_main("bench_sampling.py")(["--curve", "--model", "var", "--cfg-scale", "3", "--out", str(tmp_path),
                                          "--threads", "1"])
    assert exc.value.code == 2 and "measured with other settings (cfg_scale" in capsys.readouterr().err
    assert (tmp_path / "curve-cpu.json").read_text() == before


def test_bench_overhead_profile_and_targets_report_their_ratios(capsys):
    small = ["--preset", "GPT-nano", "--grid", "4", "--vocabs", "64", "--threads", "1", "--json"]
    r = bench(["--overhead", "--repeats", "1", *small], capsys)
    assert r["batch"] == 1 and r["tokens"] == 16
    for mode in ("gft", "cfg"):
        assert r[f"{mode}_sampler_ms_per_token"] > 0 and r[f"{mode}_forward_ms_per_token"] > 0
        assert r[f"{mode}_sampler_overhead"] == pytest.approx(
            r[f"{mode}_sampler_ms_per_token"] / r[f"{mode}_forward_ms_per_token"] - 1, abs=2e-3)
    r = bench(["--profile", "--batch", "2", *small], capsys)
    assert r["gft"]["calls"] > 0 and r["cfg"]["profiled_ms"] > 0
    assert any(k.startswith("matmul") for k in r["gft"]["groups"])
    r = bench(["--targets", "--repeats", "1", "--recompute-batch", "2", *small], capsys)
    assert set(r["measured"]) == set(r["targets"]) == set(r["met"])
    assert r["end_to_end_b32"]["batch"] == 32 and r["kv_vs_recompute"]["kv_vs_recompute_speedup"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--curve", "--preset", "GPT-small"], "choose sizes with --sizes"),
    (["--curve", "--sizes", "GPT-9000"], "not a preset of"),
    (["--batches", "8"], "add --curve"),
    (["--curve", "--compile"], "--compile does not apply to var models"),
    (["--model", "var", "--overhead"], "declares none"),
    (["--curve", "--overhead"], "not allowed with argument"),
    (["--model", "var", "--compile"], "--compile does not apply to var"),
])
def test_bench_refuses_bad_mode_combinations_in_one_line(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        script_main("bench_sampling.py")([*argv, "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not (tmp_path / "never").exists()
