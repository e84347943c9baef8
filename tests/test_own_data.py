"""Your own images, end to end: the README walkthrough on a generated folder, and the pieces it rests on
(tokenizer training on user data, flips, hold-out splits, validation loss, class names, dataset-aware metrics,
default paths, help rendering)."""

import json
import math
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, run_script, script_main
from gft_tokens import GFTError

NAMES = ("disc", "bar")  # the generated classes: a disc or a horizontal bar, random colours and places


def make_folder(root: Path, per_class: int = 40, size: int = 32, seed: int = 0) -> Path:
    """A user-style image folder: one sub-folder per class of PNGs."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for c, name in enumerate(NAMES):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 120, 3)))
            draw = ImageDraw.Draw(im)
            x, y = (int(v) for v in rng.integers(0, size // 2, 2))
            fill = tuple(int(v) for v in rng.integers(140, 256, 3))
            if c == 0:
                draw.ellipse([x, y, x + size // 2, y + size // 2], fill=fill)
            else:
                draw.rectangle([x, y, x + size // 2, y + size // 6], fill=fill)
            im.save(d / f"{i:03d}.png")
    return root


def readme_walkthrough() -> list[list[str]]:
    """The commands of README's "Train on your own images" block, each as argv (continuation lines joined)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Train on your own images", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


# a few steps per stage: appended flags override the README's (argparse keeps the last)
FAST = {
    "make_shards.py": ["--shard-size", "30"],
    "train_tokenizer.py": ["--steps", "3", "--eval-every", "3", "--batch-size", "8", "--threads", "1"],
    "extract_codes.py": ["--threads", "1"],
    "train_llamagen.py": ["--steps", "4", "--val-every", "2", "--batch-size", "8", "--preset", "GPT-nano",
                          "--data-workers", "0", "--save-every", "0", "--threads", "1"],
    "generate.py": ["--n-per-class", "3", "--threads", "1"],
    "train_probe.py": ["--steps", "5", "--batch-size", "16", "--threads", "1"],
    "evaluate.py": ["--threads", "1"],
}


def test_readme_walkthrough_runs_on_a_generated_folder(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"  # not the repository: default paths must resolve there by themselves
    work.mkdir()
    make_folder(work / "my_images")
    monkeypatch.chdir(work)
    commands = readme_walkthrough()
    assert [Path(c[1]).name for c in commands] == list(FAST)
    for argv in commands:
        assert argv[0] in ("python", "deepspeed") and argv[1].startswith("scripts/")
        name, args = Path(argv[1]).name, argv[2:]
        capsys.readouterr()
        script_main(name)(args + FAST[name])
    out = capsys.readouterr().out

    meta = json.loads((work / "shards/mine/dataset.json").read_text())
    assert meta["class_names"] == sorted(NAMES) and meta["name"] == "my_images"
    tok_log = [json.loads(line) for line in (work / "tokenizers/mine-vq/train_log.jsonl").read_text().splitlines()]
    assert {"psnr", "usage", "perplexity", "dead_code_restarts"} <= set(tok_log[-1])
    recipe = (work / "tokenizers/mine-vq/recipe.yaml").read_text()
    assert "flip: false" in recipe and "data: shards/mine/*.tar" in recipe
    codes_meta = json.loads((work / "shards/mine-codes/dataset.json").read_text())
    assert codes_meta["views"] == 1 and codes_meta["flip"] is False
    config = json.loads((work / "runs/mine/model/config.json").read_text())
    assert config["dataset"] == {"name": "my_images", "class_names": sorted(NAMES)}
    run_log = [json.loads(line) for line in (work / "runs/mine/train_log.jsonl").read_text().splitlines()]
    val = [e for e in run_log if "val_loss" in e]
    assert [e["step"] for e in val] == [2, 4] and all(math.isfinite(e["val_cond_loss"]) for e in val)
    assert (work / "samples/mine/grid.png").is_file()
    with np.load(work / "samples/mine/samples.npz") as s:
        assert list(s["class_names"]) == sorted(NAMES) and str(s["dataset"]) == "my_images"
    probe = json.loads((work / "tokenizers/mine-probe/config.json").read_text())
    assert probe["dataset"]["name"] == "my_images" and probe["num_classes"] == 2
    result = json.loads(out.strip().splitlines()[-1])
    assert result["dataset"] == result["extractor_dataset"] == "my_images" and result["n"] == 6
    assert set(result["per_class_accuracy_by_name"]) == set(NAMES)


# -- tokenizer training on your data -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("own") / "imgs")


@pytest.mark.parametrize("recipe", ["shapes-vq", "shapes-msvq", "shapes-kl"])
def test_every_tokenizer_kind_trains_on_a_folder_with_held_out_metrics(folder, tmp_path, recipe):
    from gft_tokens.config import load_yaml, resolve
    from gft_tokens.tokenizers import load_tokenizer
    from gft_tokens.tokenizers.trainer import TokenizerTrainOptions, split_recipe, train_tokenizer

    path = ROOT / "configs/tokenizer" / f"{recipe}.yaml"
    kind, model, train = split_recipe(load_yaml(path), str(path))
    o = resolve(TokenizerTrainOptions, {**train, "data": str(folder), "steps": 2, "batch_size": 4, "eval_every": 1,
                                        "save_every": 0, "out": str(tmp_path / "tok")})
    final = train_tokenizer(kind, model, o)
    log = [json.loads(x) for x in (tmp_path / "tok/train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2] and math.isfinite(final["psnr"])
    if recipe == "shapes-kl":
        assert "usage" not in final and "dead_code_restarts" not in final
    else:
        assert 0 < final["usage"] <= 1 and final["dead_code_restarts_total"] >= 0
        if recipe == "shapes-msvq":
            assert len(final["usage_per_scale"]) == 6
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.image_size == 32
    # the counter leaves the codebooks as they were: no wrapper left on any instance
    assert not any("replace" in vars(m) for m in tok.modules())


def test_image_size_from_the_data_or_refused_when_it_contradicts_the_recipe(tmp_path):
    from gft_tokens.tokenizers.trainer import TokenizerTrainOptions, train_tokenizer

    small = make_folder(tmp_path / "small", per_class=6, size=16)
    o = TokenizerTrainOptions(data=str(small), steps=1, batch_size=4, out=str(tmp_path / "tok"), save_every=0)
    with pytest.raises(GFTError, match="are 16 px, the recipe r says image_size 32: pass --image-size 32"):
        train_tokenizer("gft_vq_tokenizer", {"image_size": 32, "channel_mult": [1, 2]}, o, where="r")
    assert not (tmp_path / "tok").exists()
    train_tokenizer("gft_vq_tokenizer", {"channel_mult": [1, 2], "codebook_size": 64}, o)  # size from the data
    assert json.loads((tmp_path / "tok/config.json").read_text())["image_size"] == 16
    train_tokenizer("gft_vq_tokenizer", {"image_size": 32, "channel_mult": [1, 2], "codebook_size": 64},
                    TokenizerTrainOptions(**{**o.__dict__, "image_size": 32, "out": str(tmp_path / "t32")}))
    assert json.loads((tmp_path / "t32/config.json").read_text())["image_size"] == 32


def test_vq16_recipe_has_llamagens_layout_and_trains(tmp_path):
    """The shipped VQ-16 recipe: 16384 x 8 codebook, downsample 16; two steps on 64 px images (same network,
    4 x 4 codes; 256 px takes minutes per step on this CPU)."""
    from gft_tokens.config import load_yaml, resolve
    from gft_tokens.tokenizers.trainer import TokenizerTrainOptions, split_recipe, train_tokenizer
    from gft_tokens.tokenizers.vq import VQConfig

    path = ROOT / "configs/tokenizer/llamagen-vq16.yaml"
    kind, model, train = split_recipe(load_yaml(path), str(path))
    config = VQConfig(**model)
    assert (config.image_size, config.downsample, config.codebook_size, config.codebook_dim) == (256, 16, 16384, 8)
    assert config.dead_code_threshold > 0
    data = make_folder(tmp_path / "big", per_class=3, size=64)
    o = resolve(TokenizerTrainOptions, {**train, "data": str(data), "image_size": 64, "steps": 2, "batch_size": 2,
                                        "eval_every": 2, "save_every": 0, "out": str(tmp_path / "vq16"),
                                        "threads": 1})
    final = train_tokenizer(kind, model, o)
    assert math.isfinite(final["psnr"]) and final["dead_code_restarts_total"] > 0  # 16384 codes, few vectors


def test_help_strings_render_with_percent_signs():
    for script in ("train_tokenizer.py", "train_probe.py", "train_llamagen.py"):
        proc = run_script(script, "--help")
        assert proc.returncode == 0, proc.stderr
        assert "{'default'" not in proc.stdout
    assert "10%" in run_script("train_tokenizer.py", "--help").stdout


@pytest.mark.parametrize("script", ["generate.py", "sweep.py", "evaluate.py", "extract_codes.py",
                                    "train_tokenizer.py", "train_probe.py", "train_llamagen.py"])
def test_heavy_scripts_take_threads(script, capsys):
    main = script_main(script)
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "--threads" in capsys.readouterr().out


# -- shards: flips and the hold-out split --------------------------------------------------------------------------
def _asymmetric_shards(tmp_path, n=20):
    from PIL import Image

    from gft_tokens.data.shards import encode_png, write_shards

    arr = np.zeros((8, 8, 3), np.uint8)
    arr[:, :2] = 255  # a bright left edge: a flip moves it right
    image = Image.fromarray(arr)
    samples = [{"__key__": f"{i:06d}", "png": encode_png(image), "cls": b"0"} for i in range(n)]
    write_shards(samples, tmp_path / "asym", 10, {"kind": "images", "num_classes": 1, "class_names": ["edge"]})
    return str(tmp_path / "asym" / "*.tar")


def test_no_flip_keeps_every_image_as_it_is_and_flip_mirrors_some(tmp_path):
    from gft_tokens.data.shards import _Samples, expand_shards

    shards = expand_shards(_asymmetric_shards(tmp_path))
    def lefts(flip):
        it = iter(_Samples(shards, "images", 1, 8, seed=0, rank=0, skip=0, buffer=4, flip=flip))
        return [bool(next(it)[0][0, 0, 0] > 0) for _ in range(40)]
    assert all(lefts(False))
    assert not all(lefts(True)) and any(lefts(True))


def test_holdout_split_is_disjoint_deterministic_and_about_the_fraction(tmp_path):
    from gft_tokens.data.shards import _Samples, expand_shards, in_holdout, validation_codes
    from gft_tokens.data.shards import _raw_samples

    keys = [f"{i:08d}" for i in range(2000)]
    assert 0.15 < np.mean([in_holdout(k, 0.2) for k in keys]) < 0.25
    pattern = _asymmetric_shards(tmp_path, n=60)
    shards = expand_shards(pattern)
    held = {s["__key__"] for s in _raw_samples(shards, None) if in_holdout(s["__key__"], 0.3)}
    assert 0 < len(held) < 60

    class Tok:  # images pass through as "codes" of their pixels
        image_size = 8

        def encode(self, x):
            return (x[:, 0] > 0).long()

    codes, labels = validation_codes(pattern, Tok(), fraction=0.3, limit=1000)
    assert len(codes) == len(held) and codes.shape[1:] == (8, 8)
    seen = set()
    ds = _Samples(shards, "codes", 1, 8, seed=0, rank=0, skip=0, buffer=4, holdout=0.3)
    ds._decode = lambda sample, aug: (sample["__key__"], 0, None)  # report which samples are trained on
    it = iter(ds)
    for _ in range(100):
        seen.add(next(it)[0])
    assert seen and not seen & held and len(seen) == 60 - len(held)


# -- the validation loss in the training loop, every family -------------------------------------------------------
TINY = {
    "llamagen": ("GPT-nano", "shapes-vq", {}),
    "var": ("d1", "shapes-msvq", {}),
    "masked": ("MAR-nano", "shapes-vq", {}),
    "mar": ("MAR-nano", "shapes-kl", {"num_sampling_steps": 5}),
}


@pytest.mark.parametrize("family", list(TINY))
def test_validation_loss_for_every_family(tmp_path, family):
    from gft_tokens.train.loop import TrainOptions, train

    preset, tok, overrides = TINY[family]
    o = TrainOptions(preset=preset, tokenizer=str(ROOT / "tokenizers" / tok), train_images=60, steps=2,
                     batch_size=8, warmup_steps=1, save_every=0, log_every=1, out=str(tmp_path / "run"),
                     model=dict(overrides), val_fraction=0.2, val_every=1)
    summary = train(family, o)
    assert [p["step"] for p in summary["val_curve"]] == [1, 2]
    assert all(math.isfinite(p["val_loss"]) and math.isfinite(p["val_cond_loss"]) for p in summary["val_curve"])
    assert summary["val_loss"] == summary["val_curve"][-1]["val_loss"] and summary["dataset"] == "shapes"
    log = [json.loads(x) for x in (tmp_path / "run/train_log.jsonl").read_text().splitlines()]
    assert [e["val_loss"] for e in log if "val_loss" in e] == [p["val_loss"] for p in summary["val_curve"]]
    config = json.loads((tmp_path / "run/model/config.json").read_text())
    assert config["dataset"]["name"] == "shapes" and len(config["dataset"]["class_names"]) == 10


def test_llamagen_val_cond_loss_is_the_held_out_cross_entropy_at_beta_1(tmp_path):
    """Recomputed from the exported model: CE of ℓ_s(x | c, β = 1) on the last 12 of 60 images (view 0)."""
    from gft_tokens.data.codes import shapes_codes
    from gft_tokens.families import load_model
    from gft_tokens.tokenizers import load_tokenizer
    from gft_tokens.train.loop import TrainOptions, train

    tok_dir = ROOT / "tokenizers/shapes-vq"
    o = TrainOptions(preset="GPT-nano", tokenizer=str(tok_dir), train_images=60, steps=2, batch_size=8,
                     warmup_steps=1, save_every=0, out=str(tmp_path / "run"), val_fraction=0.2, val_every=2)
    summary = train("llamagen", o)
    data = shapes_codes(load_tokenizer(tok_dir), str(tok_dir), 60, seed=0)
    codes, labels = data.codes[-12:, 0].flatten(1), data.labels[-12:]
    model = load_model(tmp_path / "run/model").eval()
    with torch.no_grad():
        logits = model(codes, labels, torch.ones(12))
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), codes.reshape(-1))
    assert abs(ce.item() - summary["val_cond_loss"]) < 1e-4, (ce.item(), summary["val_cond_loss"])
    assert summary["val_loss"] != summary["val_cond_loss"]  # the mixed logits at β ~ U(0, 1)
    with torch.no_grad():  # val_null_loss: the same at the null class (β = 1)
        logits = model(codes, torch.full_like(labels, model.null_class), torch.ones(12))
    ce_null = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), codes.reshape(-1))
    assert abs(ce_null.item() - summary["val_null_loss"]) < 1e-4, (ce_null.item(), summary["val_null_loss"])
    assert summary["val_null_loss"] != summary["val_cond_loss"]


def test_beta_embed_lr_puts_the_beta_embedder_in_its_own_groups():
    """--beta-embed-lr s: the β embedder's parameters train at lr·s (weight decay kept as before); s = 1 gives the
    paper's two groups at one rate."""
    from gft_tokens.families.llamagen.model import LlamaGen, llamagen_config
    from gft_tokens.train.engine import param_groups

    model = LlamaGen(llamagen_config("GPT-nano", vocab_size=16, grid_size=2, num_classes=3))
    plain = param_groups(model, 0.05, 1e-3)
    assert len(plain) == 2 and all("lr" not in g for g in plain)
    groups = param_groups(model, 0.05, 1e-3, beta_embed_lr=0.1)
    beta_ids = {id(p) for p in model.beta_embedder.parameters()}
    scaled = [g for g in groups if "lr" in g]
    assert {id(p) for g in scaled for p in g["params"]} == beta_ids
    assert all(g["lr"] == pytest.approx(1e-4) for g in scaled)
    assert sorted(g["weight_decay"] for g in scaled) == [0.0, 0.05]  # MLP weights decayed, biases not
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_beta_embed_lr_default_is_a_tenth_from_scratch_and_one_for_a_fine_tune():
    from gft_tokens.train.loop import TrainOptions, beta_embed_lr

    assert beta_embed_lr(TrainOptions()) == 0.1
    assert beta_embed_lr(TrainOptions(init_from="runs/cfg/model")) == 1.0
    assert beta_embed_lr(TrainOptions(beta_embed_lr=1.0)) == 1.0  # the paper's single rate, one flag away
    assert beta_embed_lr(TrainOptions(init_from="x", beta_embed_lr=0.5)) == 0.5


def test_val_data_and_val_fraction_together_are_refused(tmp_path):
    from gft_tokens.train.loop import TrainOptions, train

    o = TrainOptions(preset="GPT-nano", tokenizer=str(ROOT / "tokenizers/shapes-vq"), train_images=20, steps=1,
                     out=str(tmp_path / "run"), val_fraction=0.1, val_data="x/*.tar")
    with pytest.raises(GFTError, match="--val-data or --val-fraction, not both"):
        train("llamagen", o)
    assert not (tmp_path / "run").exists()


# -- class names, extractors, paths -------------------------------------------------------------------------------
def test_class_selection_by_name_or_id():
    from types import SimpleNamespace

    from gft_tokens.families.classes import model_class_names, resolve_classes

    names = ["cat", "dog", "7"]
    assert resolve_classes(["dog", "0", "7"], names) == [1, 0, 2]  # a name wins over an id
    with pytest.raises(GFTError, match="unknown class 'cow'; the model's classes: cat, dog, 7"):
        resolve_classes(["cow"], names)
    with pytest.raises(GFTError, match="class id 5 is outside"):
        resolve_classes(["5"], names)
    cfg = SimpleNamespace(num_classes=3, dataset={"name": "pets", "class_names": names}, tokenizer={})
    assert model_class_names(cfg) == names
    assert model_class_names(SimpleNamespace(num_classes=2, dataset=None, tokenizer={})) == ["0", "1"]


def test_an_extractor_of_another_dataset_is_refused_unless_allowed():
    from types import SimpleNamespace

    from gft_tokens.eval import load_extractor
    from gft_tokens.eval.datasets import check_extractor_dataset

    probe = load_extractor(str(ROOT / "tokenizers/shapes-probe"))
    assert probe.dataset == "shapes"
    check_extractor_dataset(probe, "shapes")
    check_extractor_dataset(probe, None)  # unknown samples: nothing to compare
    with pytest.raises(GFTError, match="trained on 'shapes', the samples are of 'mine'.*--allow-foreign-extractor"):
        check_extractor_dataset(probe, "mine")
    check_extractor_dataset(probe, "mine", allow_foreign=True)
    check_extractor_dataset(SimpleNamespace(name="inception", dataset=None), "mine")  # neutral


def test_evaluate_refuses_the_shapes_probe_on_other_samples_in_one_line(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, images=np.zeros((8, 32, 32, 3), np.uint8), labels=np.zeros(8, np.int64), dataset=np.array("mine"))
    proc = run_script("evaluate.py", "--samples", str(path), cwd=tmp_path)  # outside the repo: default probe found
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: the extractor shapes-probe was trained on 'shapes', the samples are of 'mine': its features and "
        "classes do not measure them — train one on your data (scripts/train_probe.py --data …) or pass "
        "--allow-foreign-extractor"]


def test_default_paths_resolve_in_the_repository(tmp_path, monkeypatch):
    from gft_tokens.paths import shipped

    monkeypatch.chdir(tmp_path)
    assert Path(shipped("tokenizers/shapes-probe")) == ROOT / "tokenizers/shapes-probe"
    assert shipped("does/not/exist") == "does/not/exist"
    (tmp_path / "tokenizers/shapes-probe").mkdir(parents=True)  # a local one wins
    assert shipped("tokenizers/shapes-probe") == "tokenizers/shapes-probe"


def test_own_data_never_overwrites_a_shipped_tokenizer_or_probe(folder):
    from gft_tokens.eval.probe import ProbeTrainOptions, train_probe
    from gft_tokens.tokenizers.trainer import TokenizerTrainOptions, train_tokenizer

    before = (ROOT / "tokenizers/shapes-vq/model.safetensors").stat().st_mtime
    with pytest.raises(GFTError, match="with --data give --out"):
        train_tokenizer("gft_vq_tokenizer", {}, TokenizerTrainOptions(data=str(folder), steps=1,
                                                                     out=str(ROOT / "tokenizers/shapes-vq")))
    with pytest.raises(GFTError, match="with --data give --out"):
        train_probe(ProbeTrainOptions(data=str(folder), steps=1))
    assert (ROOT / "tokenizers/shapes-vq/model.safetensors").stat().st_mtime == before


def test_export_every_writes_loadable_snapshots_along_the_run(tmp_path):
    """--export-every N: <out>/snapshots/step-N… hold the weights of those steps (the learning curve of one run);
    the last step is the usual <out>/model."""
    from gft_tokens.families import load_model
    from gft_tokens.train.loop import TrainOptions, train

    o = TrainOptions(preset="GPT-nano", tokenizer=str(ROOT / "tokenizers/shapes-vq"), train_images=40, steps=3,
                     batch_size=8, warmup_steps=1, save_every=0, export_every=2, out=str(tmp_path / "run"))
    train("llamagen", o)
    snaps = sorted(p.name for p in (tmp_path / "run/snapshots").iterdir())
    assert snaps == ["step-000002"]
    early, final = load_model(tmp_path / "run/snapshots/step-000002"), load_model(tmp_path / "run/model")
    diff = max((a - b).abs().max().item() for a, b in zip(early.state_dict().values(), final.state_dict().values()))
    assert diff > 0  # step 3 moved the weights after the snapshot
