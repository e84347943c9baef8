import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, SHIPPED_VQ, run_script, script_main
from gft_tokens.errors import GFTError
from gft_tokens.eval import ExtractorOutput, load_extractor
from gft_tokens.eval import metrics as M

SHIPPED_PROBE = ROOT / "tokenizers" / "shapes-probe"


# -- FID ----------------------------------------------------------------------------------------------------------
def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert M.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # 1-D: (μ1 − μ2)² + (σ1 − σ2)²
    assert M.frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0)


def test_frechet_distance_non_commuting_covariances():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = x @ x.T + 0.1 * np.eye(5), y @ y.T + 0.1 * np.eye(5)
    # reference: tr((Σ1 Σ2)^½) = Σ √eig(Σ1 Σ2) (real, non-negative eigenvalues for PSD Σ1, Σ2)
    eig = np.linalg.eigvals(s1 @ s2)
    expected = np.trace(s1) + np.trace(s2) - 2 * np.sqrt(eig.real.clip(0)).sum()
    assert M.frechet_distance(np.zeros(5), s1, np.zeros(5), s2) == pytest.approx(expected, rel=1e-9)
    # a second, independent route: tr((Σ1 Σ2)^½) = tr((Σ1^½ Σ2 Σ1^½)^½), both roots of symmetric matrices via eigh
    w1, v1 = np.linalg.eigh(s1)
    root1 = (v1 * np.sqrt(w1)) @ v1.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    assert M.trace_sqrt_product(s1, s2) == pytest.approx(np.sqrt(inner.clip(0)).sum(), rel=1e-8)
    # a singular covariance (rank 2 of 5) stays finite and real
    low = x[:, :2] @ x[:, :2].T
    assert np.isfinite(M.frechet_distance(np.zeros(5), low, np.zeros(5), s2))


def test_fid_from_gaussian_samples_converges_to_closed_form():
    rng = np.random.default_rng(2)
    d = 4
    mu1, mu2 = np.zeros(d), np.array([1.0, -0.5, 0.0, 0.25])
    a, b = np.array([1.0, 2.0, 0.5, 1.0]), np.array([0.5, 2.0, 2.0, 1.0])
    f1 = rng.normal(size=(40000, d)) * np.sqrt(a) + mu1
    f2 = rng.normal(size=(40000, d)) * np.sqrt(b) + mu2
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert M.fid_from_features(f1, f2) == pytest.approx(expected, abs=0.03)


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_a_shift():
    f = np.random.default_rng(3).normal(size=(500, 16))
    assert M.fid_from_features(f, f) == pytest.approx(0.0, abs=1e-8)
    shifts = [0.1, 0.5, 1.0, 2.0]
    fids = [M.fid_from_features(f, f + t / 4.0) for t in shifts]  # shift every one of 16 coords by t/4: ‖δ‖ = t
    assert fids == pytest.approx([t ** 2 for t in shifts], rel=1e-6)


def test_fid_rejects_bad_features():
    with pytest.raises(GFTError, match="2-D"):
        M.fid_from_features(np.zeros(5), np.zeros((5, 2)))
    with pytest.raises(GFTError, match="NaN"):
        M.fid_from_features(np.full((5, 2), np.nan), np.zeros((5, 2)))
    with pytest.raises(GFTError, match="covariances"):
        M.frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))


# -- IS, precision/recall, accuracy -------------------------------------------------------------------------------
def test_inception_score_bounds():
    k = 10
    confident = np.eye(k)[np.arange(1000) % k]  # sure and uniform over classes: IS = K
    assert M.inception_score(confident, splits=1)[0] == pytest.approx(k, rel=1e-6)
    # ordered by class, as sample files are: the splits must still each see every class (a random partition)
    ordered = np.eye(k)[np.repeat(np.arange(k), 100)]
    assert M.inception_score(ordered, splits=10)[0] > 0.9 * k  # contiguous slices would give 1
    same = np.tile(np.eye(k)[3], (100, 1))  # always the same class: IS = 1
    assert M.inception_score(same, splits=1)[0] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(GFTError, match="summing to 1"):
        M.inception_score(np.ones((4, 3)))


def test_knn_radii_brute_force():
    pts = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])
    # neighbours of 0: 1, 3, 6 → 3rd-NN distance 6; of 10: 6, 3, 1 → 9
    assert M.knn_radii(pts, k=3).tolist() == [6.0, 5.0, 3.0, 5.0, 9.0]
    assert M.knn_radii(pts, k=1).tolist() == [1.0, 1.0, 2.0, 3.0, 4.0]


def test_precision_recall_on_synthetic_clouds():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(1000, 8))
    same = rng.normal(size=(1000, 8))
    p, r = M.precision_recall(real, same)
    assert p > 0.7 and r > 0.7
    far = rng.normal(size=(1000, 8)) + 20.0
    assert M.precision_recall(real, far) == (0.0, 0.0)
    collapsed = 0.2 * rng.normal(size=(1000, 8))  # mode collapse: inside the real manifold, covers little of it
    p, r = M.precision_recall(real, collapsed)
    assert p > 0.95 and r < 0.3
    spread = 3.0 * rng.normal(size=(1000, 8))  # too diverse: covers the real data, mostly outside it
    p, r = M.precision_recall(real, spread)
    assert p < 0.3 and r > 0.9


def test_class_accuracy():
    probs = np.eye(3)[[0, 1, 2, 2]]
    assert M.class_accuracy(probs, [0, 1, 2, 0]) == 0.75
    assert M.per_class_accuracy(probs, np.array([0, 1, 2, 0]), 4) == [0.5, 1.0, 1.0, None]


# -- the shipped probe --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def probe():
    return load_extractor(str(SHIPPED_PROBE))


@pytest.fixture(scope="module")
def heldout_500():
    from gft_tokens.data.shapes import heldout

    return heldout(500).tensors()


def test_probe_classifies_heldout_data(probe, heldout_500):
    from gft_tokens.eval.probe import probe_accuracy

    images, labels = heldout_500
    assert probe_accuracy(probe, images, labels) >= 0.99
    out = probe.extract(images[:7])
    assert out.features.shape == (7, probe.feature_dim) and out.probs.shape == (7, 10)
    assert torch.allclose(out.probs.sum(-1), torch.ones(7))


def test_probe_classifies_tokenizer_reconstructions(probe, heldout_500, shipped_tokenizer):
    from gft_tokens.eval.probe import probe_accuracy

    images, labels = heldout_500
    with torch.no_grad():
        recon = shipped_tokenizer.decode(shipped_tokenizer.encode(images))
    assert probe_accuracy(probe, recon, labels) >= 0.98


def test_probe_fid_real_halves_small_and_corruption_large(probe, heldout_500):
    from gft_tokens.eval import extract_all

    images, _ = heldout_500
    a, _ = extract_all(probe, images[:250])
    b, _ = extract_all(probe, images[250:])
    # the probe is trained to ignore a decoder's blur and grain, not wrong colours or a collapse of diversity
    # (colours come from the whole wheel whatever the class, so a channel permutation stays in distribution;
    # grey shapes do not)
    recoloured, _ = extract_all(probe, images[250:].mean(1, keepdim=True).expand(-1, 3, -1, -1).contiguous())
    collapsed, _ = extract_all(probe, images[250:260].repeat(25, 1, 1, 1))
    assert M.fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    same = M.fid_from_features(a, b)
    assert M.fid_from_features(a, recoloured) > 3 * same
    assert M.fid_from_features(a, collapsed) > 3 * same


def test_probe_training_is_deterministic(tmp_path):
    from gft_tokens.eval.probe import ProbeTrainOptions, ShapesProbe, train_probe

    fingerprints = []
    for name in ("a", "b"):
        o = ProbeTrainOptions(out=str(tmp_path / name), train_images=48, eval_images=10, steps=3, batch_size=16,
                              warmup_steps=1, tokenizer="")
        fingerprints.append(train_probe(o, log=lambda *_: None)["fingerprint"])
    assert fingerprints[0] == fingerprints[1]
    assert ShapesProbe.from_pretrained(tmp_path / "a").fingerprint == fingerprints[0]


# -- NFE -----------------------------------------------------------------------------------------------------------
def test_sampler_stats_count_one_pass_for_gft_two_for_cfg_and_accumulate():
    from gft_tokens.families import build_model, sample_codes
    from gft_tokens.sampling import SamplingStats

    torch.manual_seed(0)
    m = build_model("llamagen", "GPT-nano", vocab_size=64, grid_size=4, num_classes=10)
    labels = torch.arange(3)
    gft, cfg, one = SamplingStats(), SamplingStats(), SamplingStats()
    sample_codes(m, labels, beta=0.5, stats=gft)
    assert (gft.nfe_per_image, gft.passes, gft.images) == (16, 16, 3)
    sample_codes(m, labels, cfg_scale=2.0, stats=cfg)
    assert (cfg.nfe_per_image, cfg.passes) == (32, 16)
    sample_codes(m, labels[:1], cfg_scale=1.0, stats=one)  # w = 1 is the conditional model: one pass
    assert one.nfe_per_image == 16
    sample_codes(m, labels[:1], beta=0.5, stats=gft)  # a second call adds to the same counter
    assert (gft.images, gft.forward_rows, gft.nfe_per_image) == (4, 64, 16)
    assert SamplingStats().nfe_per_image == 0.0


# -- evaluate.py ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def samples_npz(tmp_path_factory):
    """120 real training-split images (balanced) written like scripts/generate.py writes samples."""
    from gft_tokens.data.shapes import ShapesDataset
    from gft_tokens.viz import to_uint8

    images, labels = ShapesDataset(120, seed=0, balanced=True).tensors()
    path = tmp_path_factory.mktemp("samples") / "samples.npz"
    np.savez_compressed(path, images=to_uint8(images), labels=labels.numpy())
    return path


def test_evaluate_json_schema(samples_npz, capsys):
    result = script_main("evaluate.py")(["--samples", str(samples_npz), "--ref-size", "200", "--json"])
    captured = capsys.readouterr()
    last = json.loads(captured.out.strip().splitlines()[-1])
    assert last == json.loads(json.dumps(result))
    for key, kind in [("n", int), ("fid", float), ("is", float), ("is_std", float), ("precision", float),
                      ("recall", float), ("k", int), ("class_accuracy", float), ("per_class_accuracy", list),
                      ("warnings", list), ("extractor", str), ("reference", dict)]:
        assert isinstance(last[key], kind), key
    assert last["n"] == 120 and last["k"] == 3 and len(last["per_class_accuracy"]) == 10
    assert last["class_accuracy"] >= 0.99 and last["is"] > 8  # real images
    assert 0 <= last["precision"] <= 1 and 0 <= last["recall"] <= 1
    assert last["reference"]["n"] == 200 and last["reference"]["source"] == "shapes-heldout"
    # too few samples for a stable FID: a warning naming the number, on stderr and in the JSON
    assert any("120 samples" in w for w in last["warnings"])
    assert "warning: FID from 120 samples" in captured.err


def test_evaluate_reference_is_cached(samples_npz, tmp_path, monkeypatch):
    monkeypatch.setenv("GFT_TOKENS_CACHE", str(tmp_path / "cache"))
    script_main("evaluate.py")(["--samples", str(samples_npz), "--ref-size", "40"])
    cached = list((tmp_path / "cache" / "eval").glob("ref-*.safetensors"))
    assert len(cached) == 1 and "n40" in cached[0].name
    stamp = cached[0].stat().st_mtime_ns
    script_main("evaluate.py")(["--samples", str(samples_npz), "--ref-size", "40"])
    assert cached[0].stat().st_mtime_ns == stamp  # reused, not recomputed
    # other data (a new shapes.DATA_VERSION) never reuses it
    from gft_tokens.data import shapes

    monkeypatch.setattr(shapes, "DATA_VERSION", shapes.DATA_VERSION + 1)
    script_main("evaluate.py")(["--samples", str(samples_npz), "--ref-size", "40"])
    assert len(list((tmp_path / "cache" / "eval").glob("ref-*.safetensors"))) == 2


def test_evaluate_subprocess_last_line_is_json(samples_npz):
    proc = run_script("evaluate.py", "--samples", str(samples_npz), "--ref-size", "200", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["n"] == 120


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays, message", [
    (dict(pictures=np.zeros((4, 32, 32, 3), np.uint8), labels=np.zeros(4, int)), "must hold 'images' and 'labels'"),
    (dict(images=np.zeros((4, 32, 32, 3), np.uint8)), "found keys ['images']"),
    (dict(images=np.zeros((4, 3, 32, 32), np.uint8), labels=np.zeros(4, int)), "must have shape (N, H, W, 3)"),
    (dict(images=np.zeros((4, 32, 32, 3), np.float32), labels=np.zeros(4, int)), "must be uint8 in [0, 255], got float32"),
    (dict(images=np.full((4, 32, 32, 3), -1.0), labels=np.zeros(4, int)), "values in [-1, -1]"),
    (dict(images=np.zeros((4, 32, 32, 3), np.uint8), labels=np.array([0, 1, 2, 10])), "must lie in [0, 10)"),
    (dict(images=np.zeros((4, 32, 32, 3), np.uint8), labels=np.array([0, -1, 2, 3])), "found -1"),
    (dict(images=np.zeros((4, 32, 32, 3), np.uint8), labels=np.zeros(3, int)), "one per image"),
    (dict(images=np.zeros((4, 32, 32, 3), np.uint8), labels=np.zeros(4)), "must be integers"),
    (dict(images=np.zeros((3, 32, 32, 3), np.uint8), labels=np.zeros(3, int)), "need more than k = 3"),
    (dict(images=np.zeros((4, 24, 24, 3), np.uint8), labels=np.zeros(4, int)), "sizes (32, 64), not 24"),
])
def test_evaluate_bad_input_exits_2(tmp_path, capsys, arrays, message):
    path = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(SystemExit) as exc:
        script_main("evaluate.py")(["--samples", str(path), "--ref-size", "20", "--json"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_evaluate_missing_or_corrupt_file(tmp_path):
    proc = run_script("evaluate.py", "--samples", str(tmp_path / "nope.npz"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    proc = run_script("evaluate.py", "--samples", str(tmp_path / "junk.npz"))
    assert proc.returncode == 2 and "not a readable .npz" in proc.stderr


# -- plugging in another extractor ----------------------------------------------------------------------------------
class PixelExtractor:
    """A stand-in for a user's network: 4x4-average-pooled pixels as features, no classifier."""

    name, feature_dim, num_classes, fingerprint = "pixels-8x8", 192, None, "pixels-8x8-v1"

    def extract(self, images):
        return ExtractorOutput(torch.nn.functional.avg_pool2d(images, 4).flatten(1))


def make_pixel_extractor():
    return PixelExtractor()


def test_own_extractor_plugs_in_through_module_factory(samples_npz, tmp_path, capsys):
    from gft_tokens.data.shapes import heldout
    from gft_tokens.viz import to_uint8

    images, _ = heldout(60).tensors()
    real = _write(tmp_path / "real.npz", images=to_uint8(images))
    result = script_main("evaluate.py")(["--samples", str(samples_npz), "--extractor", "test_eval:make_pixel_extractor",
                                         "--reference", str(real), "--json"])
    assert result["extractor"] == "pixels-8x8-v1" and result["reference"]["n"] == 60
    assert result["fid"] > 0 and result["is"] is None and result["class_accuracy"] is None
    with pytest.raises(SystemExit):
        script_main("evaluate.py")(["--samples", str(samples_npz), "--extractor", "test_eval:no_such_factory"])
    assert "cannot import the extractor factory" in capsys.readouterr().err


# -- sweep ---------------------------------------------------------------------------------------------------------
def test_sweep_tiny_end_to_end(tmp_path):
    from gft_tokens.eval.sweep import parse_run, run_sweep
    from gft_tokens.families import build_model
    from gft_tokens.tokenizers import load_tokenizer

    tok = load_tokenizer(SHIPPED_VQ)
    record = {**tok.describe(), "path": str(SHIPPED_VQ)}
    torch.manual_seed(0)
    for name, beta_embed in (("gft", True), ("cfg", False)):
        m = build_model("llamagen", "GPT-nano", vocab_size=1024, grid_size=8, num_classes=10, tokenizer=record,
                        beta_embed=beta_embed)
        torch.nn.init.normal_(m.output.weight, std=0.1)
        m.save_pretrained(tmp_path / name / "model")
    runs = [parse_run(str(tmp_path / "gft" / "model"), "gft"), parse_run(f"base={tmp_path / 'cfg' / 'model'}", "cfg")]
    assert [r.name for r in runs] == ["gft", "base"]
    out = tmp_path / "sweep"
    result = run_sweep(runs, load_extractor(str(SHIPPED_PROBE)), out, ref_size=40, family="llamagen",
                       betas=[1.0, 0.5], cfg_scales=[2.0], n_per_class=1, batch_size=8, grid_per_class=1, log=lambda *_: None)
    rows = {(r["run"], r["setting"]): r for r in result["rows"]}
    assert set(rows) == {("data", None), ("vq-recon", None), ("gft", "β=1"), ("gft", "β=0.5"), ("base", "w=2")}
    assert rows[("gft", "β=0.5")]["nfe_per_image"] == 64 and rows[("base", "w=2")]["nfe_per_image"] == 128
    assert rows[("data", None)]["class_accuracy"] == 1.0
    for name in ("results.json", "results.md", "fid_vs_accuracy.png", "fid_vs_is.png", "fid_vs_guidance.png",
                 "best_gft.png", "best_base.png"):
        assert (out / name).is_file(), name
    assert not (out / "fid_vs_attributes.png").exists()  # class-conditional: no attribute plot
    md = (out / "results.md").read_text()
    assert "| gft | β=" in md and "GFT vs CFG" in md and "| 2 |" in md  # best rows, checks, matched w = 2 ↔ β = 0.5
    # --resume reuses every scored setting
    again = run_sweep(runs, load_extractor(str(SHIPPED_PROBE)), out, ref_size=40, family="llamagen",
                      betas=[1.0, 0.5], cfg_scales=[2.0], n_per_class=1, batch_size=8, grid_per_class=1, resume=True,
                      log=lambda *_: None)
    assert [r["fid"] for r in again["rows"]] == [r["fid"] for r in result["rows"]]
    with pytest.raises(GFTError, match="no β input"):
        run_sweep([parse_run(str(tmp_path / "cfg" / "model"), "gft")], load_extractor(str(SHIPPED_PROBE)),
                  tmp_path / "x", ref_size=40)
    assert not (tmp_path / "x").exists()
