"""The FID Inception extractor against torch-fidelity 0.4.0's pure-torch port (same random weights, offline), the
metrics against independent re-implementations, the ADM npz formats, and the CLI paths."""

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import script_main
from gft_tokens.errors import GFTError
from gft_tokens.eval import ExtractorOutput, evaluate_images
from gft_tokens.eval import metrics as M
from gft_tokens.eval.evaluate import file_reference, load_samples
from gft_tokens.eval.inception import FIDInceptionV3, InceptionExtractor, load_inception, resize_bilinear_tf1
from gft_tokens.eval.npz import write_samples_npz

FIDELITY_MODULES = ("interpolate_compat_tensorflow", "feature_extractor_inceptionv3", "metric_fid", "metric_prc")


def _load_fidelity_modules() -> dict:
    """torch-fidelity's pure-torch modules, loaded from its files without running its package ``__init__`` (which
    imports torchvision, broken beside this torch); ``torch_fidelity.utils`` (torchvision too) is a stub."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None:
        pytest.skip("torch-fidelity 0.4.0 is not installed (make setup installs it with --no-deps)")
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "torch_fidelity"}
    package = types.ModuleType("torch_fidelity")
    package.__path__ = [str(Path(spec.origin).parent)]
    utils = types.ModuleType("torch_fidelity.utils")
    utils.__getattr__ = lambda name: None  # names the metric modules import but the tested functions never use
    sys.modules.update({"torch_fidelity": package, "torch_fidelity.utils": utils})
    try:
        return {name: importlib.import_module(f"torch_fidelity.{name}") for name in FIDELITY_MODULES}
    finally:
        for k in [k for k in sys.modules if k.split(".")[0] == "torch_fidelity"]:
            del sys.modules[k]
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def fidelity():
    return _load_fidelity_modules()


def random_inception_state(seed: int = 0) -> dict:
    """Deterministic random weights that keep activations O(1) through the 94 conv layers (He-scaled convs,
    BatchNorm statistics near identity)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in FIDInceptionV3().state_dict().items():
        if k.endswith("conv.weight"):
            fan_in = v[0].numel()
            state[k] = torch.randn(v.shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif k.endswith("running_var") or k.endswith("bn.weight"):
            state[k] = 0.8 + 0.4 * torch.rand(v.shape, generator=g)
        elif k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(0)
        elif k.startswith("fc."):
            state[k] = torch.randn(v.shape, generator=g) * (0.05 if k.endswith("weight") else 0.5)
        else:  # bn.bias, running_mean
            state[k] = 0.1 * (torch.rand(v.shape, generator=g) - 0.5)
    return state


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(random_inception_state(), path)
    return path


@pytest.fixture(scope="module")
def ours(weights_file):
    return InceptionExtractor(weights_file)


def _uint8_images(n, h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def _to_float(u8):
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# -- parity with torch-fidelity ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(17, 23), (64, 64), (299, 299), (333, 320)])
def test_tf1_resize_equals_torch_fidelity(fidelity, size):
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1)) * 255
    ref = fidelity["interpolate_compat_tensorflow"].interpolate_bilinear_2d_like_tensorflow1x(
        x, size=(299, 299), align_corners=False)
    assert (resize_bilinear_tf1(x) - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("hw", [(64, 64), (299, 299)])
def test_features_and_logits_equal_torch_fidelity(fidelity, weights_file, ours, hw):
    theirs = fidelity["feature_extractor_inceptionv3"].FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(weights_file))
    u8 = _uint8_images(2, *hw, seed=hw[0])
    with torch.no_grad():
        ref_pool, ref_logits = theirs(torch.from_numpy(u8).permute(0, 3, 1, 2).contiguous())
    pool, logits = ours.forward_logits(_to_float(u8))
    assert ref_pool.abs().max() > 0.1 and ref_pool.std() > 1e-3  # the random network is not degenerate
    feat_err = (pool - ref_pool).abs().max().item()
    logit_err = (logits - ref_logits).abs().max().item()
    print(f"parity {hw}: max |features| error {feat_err:.2e}, max |logits| error {logit_err:.2e}")
    assert feat_err <= 1e-4 and logit_err <= 1e-4
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)


def test_frechet_distance_equals_torch_fidelity(fidelity):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 64))
    b = rng.normal(size=(300, 64)) @ rng.normal(size=(64, 64)) * 0.3 + 0.2
    mf = fidelity["metric_fid"]
    sa, sb = mf.fid_features_to_statistics(torch.from_numpy(a)), mf.fid_features_to_statistics(torch.from_numpy(b))
    ref = mf.fid_statistics_to_metric(sa, sb, verbose=False)["frechet_inception_distance"]
    assert M.fid_from_features(a, b) == pytest.approx(ref, rel=1e-8)
    assert M.frechet_distance(sa["mu"], sa["sigma"], sb["mu"], sb["sigma"]) == pytest.approx(ref, rel=1e-8)


def test_inception_score_equals_reimplementation():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(1000, 1008)) * 3
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)

    def improved_gan_is(p, splits):  # Salimans et al.: exp(E KL(p(y|x) || p(y))) on contiguous parts
        scores = []
        for i in range(splits):
            part = p[i * len(p) // splits:(i + 1) * len(p) // splits]
            py = part.mean(0, keepdims=True)
            scores.append(np.exp((part * (np.log(part) - np.log(py))).sum(1).mean()))
        return np.mean(scores), np.std(scores)

    assert M.inception_score(probs, 10, shuffle=False) == pytest.approx(improved_gan_is(probs, 10), rel=1e-9)
    perm = np.random.default_rng(7).permutation(len(probs))
    assert M.inception_score(probs, 10, seed=7) == pytest.approx(improved_gan_is(probs[perm], 10), rel=1e-9)


def test_precision_recall_equals_reimplementation(fidelity):
    rng = np.random.default_rng(4)
    real = rng.normal(size=(300, 32))
    fake = rng.normal(size=(300, 32)) * 1.2 + 0.3

    def knn_pr(r, f, k=3):  # Kynkäänniemi et al. / ADM's ManifoldEstimator: squared distances, k-th neighbour, <=
        d = lambda a, b: ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)  # noqa: E731
        r_rad, f_rad = np.sort(d(r, r), 1)[:, k], np.sort(d(f, f), 1)[:, k]
        return (d(f, r) <= r_rad[None]).any(1).mean(), (d(r, f) <= f_rad[None]).any(1).mean()

    expected = knn_pr(real, fake)
    assert M.precision_recall(real, fake, 3) == pytest.approx(expected, abs=1e-12)
    theirs = fidelity["metric_prc"].calculate_precision_recall_part(torch.from_numpy(fake), torch.from_numpy(real), 3)
    assert theirs == pytest.approx(expected, abs=1e-6)  # torch-fidelity averages in float32


# -- weights file and input checks -----------------------------------------------------------------------------------
def test_bad_weights_files_are_one_clear_error(tmp_path, weights_file):
    with pytest.raises(GFTError, match="does not exist"):
        InceptionExtractor(tmp_path / "nope.pth")
    state = random_inception_state()
    other = {k.replace("Mixed_5b", "Mixed_5x"): v for k, v in state.items()}
    torch.save(other, tmp_path / "keys.pth")
    with pytest.raises(GFTError, match="missing.*unexpected"):
        InceptionExtractor(tmp_path / "keys.pth")
    state["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(GFTError, match=r"fc.weight has shape \(1000, 2048\)"):
        InceptionExtractor(tmp_path / "shape.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(GFTError, match="not a state dict"):
        InceptionExtractor(tmp_path / "list.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(GFTError):
        InceptionExtractor(tmp_path / "junk.pth")
    with pytest.raises(GFTError, match="resize"):
        InceptionExtractor(weights_file, resize="nearest")


def test_non_rgb_images_and_missing_weights_path(ours, monkeypatch):
    with pytest.raises(GFTError, match="RGB"):
        ours.extract(torch.zeros(2, 1, 32, 32))
    monkeypatch.delenv("GFT_TOKENS_INCEPTION", raising=False)
    with pytest.raises(GFTError, match="GFT_TOKENS_INCEPTION"):
        load_inception()


def test_fingerprint_follows_weights_and_resize(weights_file, ours, tmp_path):
    torch.save(random_inception_state(seed=1), tmp_path / "other.pth")
    assert InceptionExtractor(tmp_path / "other.pth").fingerprint != ours.fingerprint
    pf = InceptionExtractor(weights_file, resize="pytorch-fid")
    assert pf.fingerprint != ours.fingerprint
    x = _to_float(_uint8_images(1, 40, 40, seed=5))
    expected = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    assert torch.equal(pf.preprocess(x), expected) and not torch.allclose(ours.preprocess(x), expected, atol=1e-3)


# -- ADM npz in and out ----------------------------------------------------------------------------------------------
class MeanColour:
    """A cheap stand-in extractor: per-image channel means and a 2-class softmax."""
    name, feature_dim, num_classes, fingerprint = "mean-colour", 3, 2, "mean-colour-v1"

    def extract(self, images):
        f = images.mean(dim=(2, 3)) + 0.01 * images.std(dim=(2, 3))
        return ExtractorOutput(f, torch.stack([f[:, 0], -f[:, 0]], 1).softmax(-1))


def test_samples_npz_round_trip_in_adm_layout(tmp_path):
    images, labels = _uint8_images(6, 8, 8, seed=0), np.arange(6) % 3
    path = write_samples_npz(tmp_path / "s.npz", images, labels, beta=np.float32(0.5))
    with np.load(path) as data:
        assert sorted(data.files) == ["arr_0", "arr_1", "beta"] and data["arr_0"].dtype == np.uint8
    got, got_labels = load_samples(path)
    assert (got == images).all() and (got_labels == labels).all()
    np.savez(tmp_path / "old.npz", images=images, labels=labels)  # the layout generate.py wrote before
    assert (load_samples(tmp_path / "old.npz")[0] == images).all()
    np.savez(tmp_path / "unlabelled.npz", images)  # ADM/LlamaGen: arr_0 alone
    assert load_samples(tmp_path / "unlabelled.npz", require_labels=False)[1] is None


def test_reference_formats_adm_batch_and_mar_stats(tmp_path):
    ext = MeanColour()
    real, fake = _uint8_images(200, 8, 8, seed=1), _uint8_images(150, 8, 8, seed=2)
    fake[..., 0] //= 2
    np.savez(tmp_path / "ref_images.npz", real)
    from gft_tokens.eval.features import extract_all
    feats, _ = extract_all(ext, real)
    st = M.gaussian_stats(feats)
    np.savez(tmp_path / "mar_stats.npz", mu=st.mu, sigma=st.sigma)
    np.savez(tmp_path / "adm_batch.npz", arr_0=real[:50], mu=st.mu, sigma=st.sigma)
    by_images = evaluate_images(fake, None, ext, file_reference(ext, tmp_path / "ref_images.npz"))
    by_stats = evaluate_images(fake, None, ext, file_reference(ext, tmp_path / "mar_stats.npz"))
    by_batch = evaluate_images(fake, None, ext, file_reference(ext, tmp_path / "adm_batch.npz"))
    assert by_images["fid"] > 0.1 and by_images["fid"] == pytest.approx(by_stats["fid"], rel=1e-9)
    assert by_batch["fid"] == pytest.approx(by_stats["fid"], rel=1e-9)  # FID from mu/sigma, P/R from arr_0
    assert by_stats["precision"] is None and by_batch["precision"] is not None
    assert any("precision" in w for w in by_stats["warnings"])
    np.savez(tmp_path / "wrong_dim.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(GFTError, match="2048.*3|3.*2048"):
        file_reference(ext, tmp_path / "wrong_dim.npz")
    np.savez(tmp_path / "nothing.npz", foo=np.zeros(3))
    with pytest.raises(GFTError, match="arr_0"):
        file_reference(ext, tmp_path / "nothing.npz")


def test_samples_to_npz_folder_of_pngs(tmp_path, capsys):
    folder = tmp_path / "pngs"
    folder.mkdir()
    images = _uint8_images(5, 12, 12, seed=3)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:06d}_class{i % 2}.png")
    main = script_main("samples_to_npz.py")
    main([str(folder), "--out", str(tmp_path / "s.npz"), "--label-regex", r"class(\d+)"])
    got, labels = load_samples(tmp_path / "s.npz")
    assert (got == images).all() and labels.tolist() == [0, 1, 0, 1, 0]
    Image.fromarray(_uint8_images(1, 10, 12, seed=4)[0]).save(folder / "999999_class0.png")
    with pytest.raises(SystemExit) as exc:
        main([str(folder), "--out", str(tmp_path / "t.npz")])
    assert exc.value.code == 2 and "size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "empty"), "--out", str(tmp_path / "u.npz")])


# -- the command line ------------------------------------------------------------------------------------------------
def test_evaluate_cli_inception_fid_between_two_adm_npz(tmp_path, weights_file, monkeypatch, capsys):
    write_samples_npz(tmp_path / "samples.npz", _uint8_images(4, 16, 16, seed=8), np.arange(4) % 2)
    np.savez(tmp_path / "ref.npz", _uint8_images(4, 16, 16, seed=9))
    monkeypatch.setenv("GFT_TOKENS_INCEPTION", str(weights_file))
    script_main("evaluate.py")(["--samples", str(tmp_path / "samples.npz"), "--reference", str(tmp_path / "ref.npz"),
                                "--features", "inception", "--json"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["extractor"].startswith("inception-fid-") and result["fid"] > 0
    assert result["is"] is not None and result["precision"] is not None and result["class_accuracy"] is None


def test_evaluate_cli_inception_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GFT_TOKENS_INCEPTION", raising=False)
    write_samples_npz(tmp_path / "samples.npz", _uint8_images(8, 8, 8, seed=8), np.arange(8) % 2)
    main = script_main("evaluate.py")
    for extra, message in ([[], "--inception-weights"],
                           [["--inception-weights", str(tmp_path / "missing.pth")], "does not exist"]):
        with pytest.raises(SystemExit) as exc:
            main(["--samples", str(tmp_path / "samples.npz"), "--features", "inception", *extra])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and err.startswith("error: ") and "Traceback" not in err
