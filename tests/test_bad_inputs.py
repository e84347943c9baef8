"""A catalogue of bad inputs: each gets one clear error (exit code 2 and ``error: ...`` from a CLI) and leaves no
partial output behind. Most CLI cases run the script's ``main`` in this process (fast); a few run it for real."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import ROOT, SHIPPED_VQ, run_script, script_main
from gft_tokens import GFTError
from gft_tokens.data import ShapesDataset
from gft_tokens.fs import load_torch_file
from gft_tokens.families import build_model, load_model
from gft_tokens.tokenizers import VQConfig, VQTokenizer, load_tokenizer
from gft_tokens.train import checkpoints as CK
from gft_tokens.train.loop import TrainOptions, train


def fails(script: str, argv, capsys) -> str:
    """Run scripts/<script> in this process; it must exit with code 2 and print exactly one ``error:`` line."""
    with pytest.raises(SystemExit) as exc:
        script_main(script)([str(a) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


def snapshot(root: Path) -> dict:
    """Every file under ``root`` with its bytes (to show nothing was written, half-written or removed)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, shipped_tokenizer):
    """An (untrained) GPT-nano LlamaGen recording the shipped tokenizer, as training would export it."""
    torch.manual_seed(0)
    model = build_model("llamagen", "GPT-nano", vocab_size=1024, grid_size=8, num_classes=10,
                        tokenizer={**shipped_tokenizer.describe(), "path": str(SHIPPED_VQ)})
    path = tmp_path_factory.mktemp("bad") / "model"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 2-step training run with a checkpoint (each test copies it before damaging it)."""
    out = tmp_path_factory.mktemp("bad") / "run"
    train("llamagen", run_options(out, steps=2))
    return out


def run_options(out, **kw):
    base = dict(preset="GPT-nano", tokenizer=str(SHIPPED_VQ), train_images=64, batch_size=8, steps=4, save_every=2,
                log_every=1, out=str(out))
    return TrainOptions(**{**base, **kw})


def train_argv(out, *extra):
    return ["--preset", "GPT-nano", "--tokenizer", SHIPPED_VQ, "--train-images", 64, "--batch-size", 8,
            "--steps", 4, "--out", out, *extra]


class Evil:
    """Unpickling this object would create ``self.marker`` (standing in for any code an attacker wants run)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---------------------------------------------------------------------------------------------------------------
# presets, classes, β, codes
# ---------------------------------------------------------------------------------------------------------------
def test_unknown_preset_cli(tmp_path, capsys):
    line = fails("train_llamagen.py", train_argv(tmp_path / "run", "--preset", "GPT-nan"), capsys)
    assert line == ("error: unknown llamagen preset 'GPT-nan' (did you mean 'GPT-nano'?); known: GPT-B, GPT-L, "
                    "GPT-XL, GPT-XXL, GPT-XXXL, GPT-1B, GPT-3B, GPT-7B, GPT-nano, GPT-tiny, GPT-small")
    assert not (tmp_path / "run").exists()


def test_unknown_preset_api():
    with pytest.raises(GFTError, match=r"unknown LlamaGen preset 'GPT-Xl' \(did you mean 'GPT-XL'\?\)"):
        build_model("llamagen", "GPT-Xl")


@pytest.mark.parametrize("classes, bad", [(["3", "10"], 10), (["-1"], -1)])
def test_class_id_out_of_range_cli(tmp_path, capsys, model_dir, classes, bad):
    line = fails("generate.py", ["--ckpt", model_dir, "--classes", *classes, "--out", tmp_path / "samples"], capsys)
    assert line == f"error: class id {bad} is outside [0, 10) (the model has 10 classes)"
    assert not (tmp_path / "samples").exists()


def test_class_id_out_of_range_api(model_dir, shipped_tokenizer):
    from gft_tokens.families import sample_images

    with pytest.raises(GFTError, match=r"class id 11 is outside \[0, 10\)"):
        sample_images(load_model(model_dir), shipped_tokenizer, torch.tensor([1, 11]), beta=0.5)


@pytest.mark.parametrize("beta", ["1.5", "-0.1", "nan"])
def test_beta_outside_unit_interval_or_nan_cli(tmp_path, capsys, model_dir, beta):
    line = fails("generate.py", ["--ckpt", model_dir, "--beta", beta, "--out", tmp_path / "samples"], capsys)
    why = "must be a finite number in" if beta == "nan" else "must lie in"  # refused as the flag is parsed
    assert line == f"error: argument --beta: {why} [0, 1], got {beta}"
    assert not (tmp_path / "samples").exists()


@pytest.mark.parametrize("beta", [float("nan"), 1.01])
def test_beta_outside_unit_interval_or_nan_api(model_dir, beta):
    model = load_model(model_dir)
    with pytest.raises(GFTError, match="beta"):
        model(torch.zeros(1, 64, dtype=torch.long), torch.tensor([0]), torch.tensor([beta]))


def test_codes_beyond_vocabulary(model_dir, shipped_tokenizer):
    model = load_model(model_dir)
    codes = torch.zeros(2, 64, dtype=torch.long)
    codes[1, 7] = 1024
    with pytest.raises(GFTError, match=r"codes must lie in \[0, 1024\) \(the codebook size\), found 1024"):
        model(codes, torch.tensor([0, 1]), torch.tensor([0.5, 0.5]))
    with pytest.raises(GFTError, match=r"found 1024"):
        shipped_tokenizer.decode(codes.view(2, 8, 8))


def test_model_option_set_by_the_tokenizer_is_refused(tmp_path, capsys):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("model: {vocab_size: 512}\n")
    line = fails("train_llamagen.py", ["--config", cfg, *train_argv(tmp_path / "run")], capsys)
    assert line == "error: model option 'vocab_size' is set from the tokenizer and the data; remove it from `model:`"
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------------------
# tokenizers and checkpoints
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad") / "vq64"
    VQTokenizer(VQConfig(channels=16, channel_mult=[1, 2, 2], z_channels=16, codebook_size=64)).save_pretrained(path)
    return path


def test_tokenizer_model_mismatch_cli(tmp_path, capsys, model_dir, other_tokenizer):
    line = fails("generate.py", ["--ckpt", model_dir, "--tokenizer", other_tokenizer, "--out", tmp_path / "s"], capsys)
    assert line == "error: tokenizer mismatch: the model was trained with codebook_size 1024, the tokenizer has 64"
    assert not (tmp_path / "s").exists()


def test_tokenizer_model_mismatch_when_fine_tuning(tmp_path, capsys, model_dir, other_tokenizer):
    line = fails("train_llamagen.py", train_argv(tmp_path / "run", "--init-from", model_dir, "--tokenizer",
                                                 other_tokenizer), capsys)
    assert "was trained with a tokenizer of codebook_size 1024, but" in line and line.endswith("has 64")
    assert not (tmp_path / "run").exists()


def test_truncated_safetensors(tmp_path, capsys, model_dir):
    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    line = fails("generate.py", ["--ckpt", broken, "--out", tmp_path / "s"], capsys)
    assert line.startswith(f"error: weights file {weights} is corrupt or truncated")
    assert not (tmp_path / "s").exists()


def _resume_fails(run_dir, tmp_path, capsys, damage) -> str:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    damage(run / "checkpoints" / "step00000002")
    before = snapshot(run)
    line = fails("train_llamagen.py", train_argv(run, "--resume"), capsys)
    assert snapshot(run) == before  # nothing written, nothing rotated away
    return line


def test_truncated_deepspeed_checkpoint(run_dir, tmp_path, capsys):
    def truncate(ckpt):
        f = ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
        f.write_bytes(f.read_bytes()[:4096])

    line = _resume_fails(run_dir, tmp_path, capsys, truncate)
    assert line.startswith(f"error: no usable checkpoint in {tmp_path / 'run' / 'checkpoints'}: ")
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt is truncated or altered (4096 bytes" in line


def test_corrupted_deepspeed_checkpoint_of_the_right_size(run_dir, tmp_path, capsys):
    def scramble(ckpt):  # same size: the sha256 in the manifest catches it
        f = ckpt / "mp_rank_00_model_states.pt"
        data = bytearray(f.read_bytes())
        data[-2000:] = bytes(2000)
        f.write_bytes(bytes(data))

    line = _resume_fails(run_dir, tmp_path, capsys, scramble)
    assert line.startswith("error: ") and "mp_rank_00_model_states.pt is corrupt or truncated" in line


def _replace_and_reseal(ckpt: Path, name: str, obj) -> None:
    """Swap a checkpoint file for ``obj`` and rewrite the manifest, as someone handing over a doctored
    checkpoint would: the size check passes, so only the unpickling check stands in the way."""
    torch.save(obj, ckpt / name)
    manifest = json.loads((ckpt / CK.MANIFEST).read_text())
    manifest["files"][name] = (ckpt / name).stat().st_size
    (ckpt / CK.MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["rank_state_000.pt", "mp_rank_00_model_states.pt"])
def test_pt_that_would_run_code_is_refused_on_resume(run_dir, tmp_path, capsys, name):
    marker = tmp_path / "pwned"
    line = _resume_fails(run_dir, tmp_path, capsys, lambda ckpt: _replace_and_reseal(ckpt, name, {"x": Evil(marker)}))
    assert line.startswith(f"error: refusing to load {tmp_path / 'run' / 'checkpoints' / 'step00000002' / name}: "
                           "unpickling it would import io.open")
    assert not marker.exists()


def test_pt_that_would_run_code_is_refused_by_the_loader(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"weights": torch.ones(2), "payload": Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(GFTError, match=r"refusing to load .*evil.pt: unpickling it would import io.open"):
        load_torch_file(tmp_path / "evil.pt")
    assert not marker.exists()
    torch.save({"weights": torch.ones(2)}, tmp_path / "plain.pt")
    assert torch.equal(load_torch_file(tmp_path / "plain.pt")["weights"], torch.ones(2))


def test_resume_with_another_zero_stage(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = snapshot(run)
    line = fails("train_llamagen.py", train_argv(run, "--resume", "--zero-stage", "3"), capsys)
    assert snapshot(run) == before
    assert line == (f"error: cannot resume: {run / 'checkpoints' / 'step00000002'} was saved with ZeRO stage 1, "
                    "this run uses 3")


# ---------------------------------------------------------------------------------------------------------------
# data: corrupt code cache, corrupt tokenizer, empty directory, wrong image size
# (this branch has no shard input; these stand in for a corrupt or empty shard)
# ---------------------------------------------------------------------------------------------------------------
def test_corrupt_code_cache_is_rebuilt_with_a_message(shipped_tokenizer, capsys):
    from gft_tokens.data.codes import cache_dir, shapes_codes

    first = shapes_codes(shipped_tokenizer, SHIPPED_VQ, 24, seed=5)
    [entry] = [p for p in (cache_dir() / "codes").glob("shapes-*-32-n24-s5-*.safetensors")]
    entry.write_bytes(entry.read_bytes()[:100])
    capsys.readouterr()
    again = shapes_codes(shipped_tokenizer, SHIPPED_VQ, 24, seed=5)
    said = capsys.readouterr()
    assert f"code cache {entry} is unreadable (corrupt or truncated); rebuilding it" in said.out + said.err
    assert torch.equal(first.codes, again.codes) and torch.equal(first.labels, again.labels)
    assert shapes_codes(shipped_tokenizer, SHIPPED_VQ, 24, seed=5).codes.equal(first.codes)  # the rebuilt entry reads


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "config.json").write_text('{"model_type": "gft_vq_tokenizer",'), "config.json is not valid JSON"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 64), "model.safetensors is corrupt or truncated"),
    (lambda d: (d / "model.safetensors").unlink(), "has no weights file model.safetensors"),
])
def test_corrupt_tokenizer(tmp_path, capsys, damage, message):
    tok = tmp_path / "tok"
    shutil.copytree(SHIPPED_VQ, tok)
    damage(tok)
    line = fails("train_llamagen.py", train_argv(tmp_path / "run", "--tokenizer", tok), capsys)
    assert line.startswith("error: ") and message in line
    assert not (tmp_path / "run").exists()


def test_empty_directory_as_tokenizer_or_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = fails("train_llamagen.py", train_argv(tmp_path / "run", "--tokenizer", tmp_path / "empty"), capsys)
    assert line == f"error: '{tmp_path / 'empty'}' has no config.json"
    line = fails("generate.py", ["--ckpt", tmp_path / "empty", "--out", tmp_path / "s"], capsys)
    assert line == f"error: '{tmp_path / 'empty'}' has no config.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


@pytest.mark.parametrize("images, message", [
    (torch.zeros(2, 3, 64, 64), "images are 64x64, this tokenizer encodes 32x32 images (to a 8x8 grid)"),
    (torch.zeros(2, 3, 30, 30), "images size 30x30 is not divisible by the tokenizer's downsample factor 4"),
    (torch.zeros(2, 1, 32, 32), "images must have 3 channels, got 1"),
])
def test_wrong_image_size(shipped_tokenizer, images, message):
    with pytest.raises(GFTError) as exc:
        shipped_tokenizer.encode(images)
    assert message in str(exc.value)


# ---------------------------------------------------------------------------------------------------------------
# configuration and output
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("yaml_text, message", [
    ("warmup_step: 3\n", "error: unknown option 'warmup_step' in {cfg} (did you mean 'warmup_steps'?)"),
    ("model: {n_layr: 3}\n", "error: unknown model option 'n_layr' in `model:` (did you mean 'n_layer'?)"),
])
def test_unknown_yaml_key_train(tmp_path, capsys, yaml_text, message):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml_text)
    line = fails("train_llamagen.py", ["--config", cfg, *train_argv(tmp_path / "run")], capsys)
    assert line == message.format(cfg=cfg)
    assert not (tmp_path / "run").exists()


def test_unknown_yaml_key_tokenizer(tmp_path, capsys):
    cfg = tmp_path / "vq.yaml"
    cfg.write_text("type: gft_vq_tokenizer\nmodel: {codebok_size: 64}\nsteps: 2\n")
    line = fails("train_tokenizer.py", ["--config", cfg, "--out", tmp_path / "tok"], capsys)
    assert line == f"error: unknown VQConfig key 'codebok_size' in {cfg} (did you mean 'codebook_size'?)"
    cfg.write_text("type: gft_vq_tokenizer\nstpes: 2\n")
    line = fails("train_tokenizer.py", ["--config", cfg, "--out", tmp_path / "tok"], capsys)
    assert line == f"error: unknown option 'stpes' in {cfg} (did you mean 'steps'?)"
    assert not (tmp_path / "tok").exists()


def test_output_dir_not_writable(tmp_path, capsys, model_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for script, argv in [("train_llamagen.py", train_argv(blocker / "run")),
                         ("train_tokenizer.py", ["--config", ROOT / "configs" / "tokenizer" / "shapes-vq.yaml",
                                                 "--out", blocker / "tok", "--steps", 2]),
                         ("generate.py", ["--ckpt", model_dir, "--classes", 0, "--n-per-class", 1, "--out",
                                          blocker / "samples"])]:
        line = fails(script, argv, capsys)
        assert line.startswith(f"error: cannot write to {blocker}") and "directory" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to any directory")
def test_output_dir_without_permission(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        line = fails("train_llamagen.py", train_argv(locked / "run"), capsys)
        assert line == f"error: cannot write to {locked / 'run'}: Permission denied"
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------------------------------------------------------
# real subprocesses: exit code 2, one `error:` line on stderr, nothing written
# ---------------------------------------------------------------------------------------------------------------
def test_cli_subprocess_unknown_preset(tmp_path):
    proc = run_script("train_llamagen.py", *map(str, train_argv(tmp_path / "run", "--preset", "GPT-Tiny")))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("error: unknown llamagen preset 'GPT-Tiny' (did you mean "
                                                     "'GPT-tiny'?); known: GPT-B, GPT-L, GPT-XL, GPT-XXL, GPT-XXXL, "
                                                     "GPT-1B, GPT-3B, GPT-7B, GPT-nano, GPT-tiny, GPT-small")
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_cli_subprocess_diverging_learning_rate(tmp_path):
    """A learning rate of 1e30 blows up at step 2: the run stops naming the step; step 1's checkpoint is kept."""
    run = tmp_path / "run"
    proc = run_script("train_llamagen.py", *map(str, train_argv(run, "--lr", "1e30", "--warmup-steps", "0",
                                                                 "--save-every", "1", "--threads", "1")))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"error: non-finite gradients at step 2; the last good checkpoint in "
                                                     f"{run / 'checkpoints'} is intact — lower the learning rate, "
                                                     "then --resume")
    assert CK.latest_tag(run / "checkpoints") == "step00000001"
    assert "Traceback" not in proc.stderr


def test_cli_subprocess_generate_bad_beta(tmp_path, model_dir):
    proc = run_script("generate.py", "--ckpt", str(model_dir), "--beta", "0.5", "nan", "--out", str(tmp_path / "s"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: argument --beta: must be a finite number in [0, 1], got nan"]
    assert "Traceback" not in proc.stderr and not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------------------------------------------
# shard input through the training CLI: nothing matched, empty, corrupt, no class entry
# ---------------------------------------------------------------------------------------------------------------
def _file(name, data):
    def make(d):
        (d / name).write_bytes(data)
        return d / name

    return make


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "none-{000000..000003}.tar", "matches no files"),
    (_file("empty.tar", b""), "empty.tar"),
    (_file("corrupt.tar", bytes(range(256)) * 8), "corrupt.tar is not a readable tar file"),
    (lambda d: _shard_without_cls(d), "no 'cls' entry"),
])
def test_bad_shards_through_the_training_cli(tmp_path, capsys, make, message):
    spec = make(tmp_path)
    run = tmp_path / "run"
    line = fails("train_llamagen.py", train_argv(run, "--data", spec, "--num-classes", 10, "--data-workers", 0), capsys)
    assert message in line, line
    assert not run.exists()


def _shard_without_cls(d):
    import io as _io
    import tarfile

    from PIL import Image

    buf = _io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="PNG")
    path = d / "nocls.tar"
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo("a.png")
        info.size = len(buf.getvalue())
        tf.addfile(info, _io.BytesIO(buf.getvalue()))
    return path
