"""The family contract, end to end for every family on tiny configs: train (GFT and CFG, real DeepSpeed on the CPU)
→ sample in both modes → sweep both methods over two settings → evaluate, with the samplers' own cost counts
checked exactly."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import ROOT, script_main
from gft_tokens import GFTError
from gft_tokens.eval import load_extractor
from gft_tokens.eval.sweep import parse_run, run_sweep
from gft_tokens.families import FAMILIES, Family, family_of, get_family, load_model, sample_codes, sample_images
from gft_tokens.sampling import SamplingStats
from gft_tokens.tokenizers import load_tokenizer
from gft_tokens.train.loop import TrainOptions, train

TOK = ROOT / "tokenizers"
STEPS = 4  # decoding steps of the masked and mar samplers in these tests
# family → (tiny preset, tokenizer, model overrides)
TINY = {
    "llamagen": ("GPT-nano", TOK / "shapes-vq", {}),
    "var": ("d1", TOK / "shapes-msvq", {}),
    "masked": ("MAR-nano", TOK / "shapes-vq", {}),
    "mar": ("MAR-nano", TOK / "shapes-kl", {"num_sampling_steps": 5}),
}


def expected_nfe(family: str, model) -> int:
    """Network evaluations per image of one pass per step: tokens, scales, or decoding steps."""
    return {"llamagen": lambda: model.config.grid_size ** 2, "var": lambda: len(model.scales),
            "masked": lambda: STEPS, "mar": lambda: STEPS}[family]()


def family_options(family: str) -> dict:
    return {"steps": STEPS} if family in ("masked", "mar") else {}


def test_every_family_is_registered_once_with_the_whole_contract():
    assert list(FAMILIES) == ["llamagen", "var", "masked", "mar", "t2i"]
    assert [n for n, f in FAMILIES.items() if f.bench is None] == ["t2i"]  # its sampler takes captions, not labels
    model_types = [f.model_type for f in FAMILIES.values()]
    assert len(set(model_types)) == len(model_types)
    for name, fam in FAMILIES.items():
        assert isinstance(fam, Family) and fam.name == name and get_family(name) is fam
        assert fam.presets and callable(fam.sample) and callable(fam.to_tokenizer_input)
        assert fam.cfg_schedules and fam.cfg_schedules[0] in ("constant", "linear")
        assert fam.bench is None or fam.bench.preset in fam.presets
        assert (ROOT / fam.train_script).is_file()
    assert {f for fam in FAMILIES.values() for f in fam.importers} <= set(__import__("gft_tokens.importers").importers.IMPORTERS)
    with pytest.raises(GFTError, match="unknown model family 'dit'"):
        get_family("dit")


@pytest.fixture(scope="module", params=list(TINY))
def trained(request, tmp_path_factory):
    """GFT and CFG runs of one family (a few steps each), exported."""
    name = request.param
    preset, tok, overrides = TINY[name]
    root = tmp_path_factory.mktemp(name)
    runs = {}
    for objective in ("gft", "cfg"):
        out = root / objective
        o = TrainOptions(preset=preset, tokenizer=str(tok), objective=objective, train_images=60, steps=3,
                         batch_size=8, lr=1e-3, warmup_steps=1, save_every=0, log_every=1, out=str(out),
                         model=dict(overrides))
        summary = train(name, o)
        assert summary["family"] == name and summary["steps"] == 3
        losses = [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()
                  if "loss" in json.loads(line)]
        assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
        runs[objective] = out / "model"
    return name, runs, root


def test_train_sample_sweep_evaluate(trained, tmp_path):
    name, runs, _ = trained
    gft, cfg = load_model(runs["gft"]), load_model(runs["cfg"])
    assert family_of(gft).name == family_of(cfg).name == name
    assert gft.beta_embedder is not None and cfg.beta_embedder is None
    tokenizer = load_tokenizer(gft.config.tokenizer["path"])
    fam, n = get_family(name), expected_nfe(name, gft)
    labels = torch.tensor([0, 3, 7])
    opts = family_options(name)

    # sampling in both modes: one pass per step for GFT (and for w = 1), two for CFG
    cases = [(gft, dict(beta=0.5), n), (cfg, dict(cfg_scale=2.0), 2 * n), (cfg, dict(cfg_scale=1.0), n),
             (gft, dict(cfg_scale=1.5, beta=0.8), 2 * n)]
    for model, guidance, nfe in cases:
        stats = SamplingStats()
        images = sample_images(model, tokenizer, labels, generator=torch.Generator().manual_seed(0), stats=stats,
                               **fam.sampling_kwargs(**guidance, **opts))
        assert images.shape == (3, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
        assert stats.images == 3 and stats.nfe_per_image == nfe, (guidance, stats)
        if name == "mar":  # the diffusion head is counted apart: every denoising step of every token
            per_pass = 2 if nfe == 2 * n else 1
            assert stats.head_evals_per_image == per_pass * gft.config.seq_len * 5
        else:
            assert stats.head_rows == 0
    # the same seed gives the same codes (the generator is the only source of randomness)
    a = sample_codes(gft, labels, beta=0.5, generator=torch.Generator().manual_seed(1), **opts)
    b = sample_codes(gft, labels, beta=0.5, generator=torch.Generator().manual_seed(1), **opts)
    assert torch.equal(a, b)

    # the sweep over two settings per method reads the samplers' counts
    extractor = load_extractor(str(TOK / "shapes-probe"))
    result = run_sweep([parse_run(f"gft={runs['gft']}", "gft"), parse_run(f"cfg={runs['cfg']}", "cfg")], extractor,
                       tmp_path / "sweep", ref_size=100, family=name, betas=(1.0, 0.5), cfg_scales=(1.0, 2.0),
                       n_per_class=2, batch_size=20, floors=False, grid_per_class=1, family_options=opts,
                       log=lambda *_: None)
    rows = {(r["run"], r["setting"]): r for r in result["rows"]}
    assert set(rows) == {("gft", "β=1"), ("gft", "β=0.5"), ("cfg", "w=1"), ("cfg", "w=2")}
    assert [rows[k]["nfe_per_image"] for k in sorted(rows)] == [n, 2 * n, n, n]  # cfg w=1, w=2, gft β=0.5, β=1
    for r in rows.values():
        assert math.isfinite(r["fid"]) and 0.0 <= r["class_accuracy"] <= 1.0
    assert result["comparison"][0]["nfe_ratio"] in (0.5, 1.0, 2.0)  # best rows: either setting's exact count
    assert (tmp_path / "sweep" / "results.md").is_file() and (tmp_path / "sweep" / "fid_vs_accuracy.png").is_file()

    # generate.py → evaluate.py on the samples it wrote
    out = tmp_path / "gen"
    flags = ["--steps", str(STEPS)] if opts else []
    script_main("generate.py")(["--ckpt", str(runs["cfg"]), "--cfg-scale", "2", "--n-per-class", "1", "--out",
                                str(out), *flags])
    data = np.load(out / "samples.npz")
    assert data["arr_0"].shape == (10, 32, 32, 3) and data["arr_1"].tolist() == list(range(10))
    assert (out / "grid.png").is_file()


def test_sweep_comparison_nfe_ratio_is_exactly_half_for_cfg_at_w2(trained, tmp_path):
    name, runs, _ = trained
    extractor = load_extractor(str(TOK / "shapes-probe"))
    result = run_sweep([parse_run(f"gft={runs['gft']}", "gft"), parse_run(f"cfg={runs['cfg']}", "cfg")], extractor,
                       tmp_path / "sweep", ref_size=100, betas=(0.5,), cfg_scales=(2.0,), n_per_class=1,
                       batch_size=10, floors=False, grid_per_class=1, family_options=family_options(name),
                       log=lambda *_: None)
    assert result["comparison"][0]["nfe_ratio"] == 0.5 and result["comparison"][0]["nfe_ok"]


def test_family_options_are_refused_where_they_do_not_apply():
    with pytest.raises(GFTError, match="--steps does not apply to llamagen"):
        get_family("llamagen").sampling_kwargs(beta=0.5, steps=4)
    with pytest.raises(GFTError, match="--clip-x0 does not apply to masked"):
        get_family("masked").sampling_kwargs(clip_x0=1.0)
    with pytest.raises(GFTError, match="cfg schedule 'linear' is not available for llamagen"):
        get_family("llamagen").sampling_kwargs(cfg_scale=2.0, cfg_schedule="linear")
    assert get_family("var").sampling_kwargs(cfg_scale=2.0, cfg_schedule=None, steps=None) == {"cfg_scale": 2.0}
    assert get_family("mar").sampling_kwargs(beta=0.5, steps=8, clip_x0=None) == {"beta": 0.5, "steps": 8}


def test_var_cfg_scale_is_converted_to_vars_strength():
    """cfg_scale w in LlamaGen's convention is VAR's t = w − 1: greedy codes equal VAR's own mix at the last scale."""
    torch.manual_seed(0)
    fam = get_family("var")
    m = fam.bench.build("d1", 64, 8)
    torch.nn.init.normal_(m.head.weight, std=0.5)
    labels = torch.tensor([4])
    w = 3.0
    codes = fam.sample(m, labels, cfg_scale=w, cfg_schedule="constant", temperature=0.0)
    c = m.recompute_logits([], m.condition(labels, torch.ones(1)))
    u = m.recompute_logits([], m.condition(torch.tensor([m.null_class]), torch.ones(1)))
    t = w - 1
    assert codes[0, 0] == ((1 + t) * c - t * u).argmax() == (u + w * (c - u)).argmax()


@pytest.mark.parametrize("name, preset, grid, extra", [
    ("llamagen", "GPT-nano", 4, ["--vocabs", "64"]),
    ("var", "d1", 8, ["--vocabs", "64"]),
    ("masked", "MAR-nano", 4, ["--vocabs", "64", "--steps", "4"]),
    ("mar", "MAR-nano", 4, ["--steps", "4"]),
])
def test_bench_sampling_reaches_every_family_and_reports_the_samplers_counts(name, preset, grid, extra, capsys):
    script_main("bench_sampling.py")(["--model", name, "--preset", preset, "--grid", str(grid), "--batch", "2",
                                      "--quick", "--json", *extra])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["model"] == name and result["gft_vs_cfg_speedup"] > 0
    assert result["cfg_nfe_per_image"] == 2 * result["gft_nfe_per_image"] > 0
    assert ("kv_vs_recompute_speedup" in result) == get_family(name).bench.cache
