import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHIPPED_VQ, run_script, script_main
from gft_tokens.families import build_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small untrained GFT model recording the shipped tokenizer, exported like training does."""
    from gft_tokens.tokenizers import load_tokenizer

    tok = load_tokenizer(SHIPPED_VQ)
    torch.manual_seed(0)
    m = build_model("llamagen", "GPT-nano", vocab_size=1024, grid_size=8, num_classes=10,
                    tokenizer={**tok.describe(), "path": str(SHIPPED_VQ)})
    torch.nn.init.normal_(m.output.weight, std=0.1)
    path = tmp_path_factory.mktemp("model") / "model"
    m.save_pretrained(path)
    return path


def test_generate_writes_png_grid_and_npz(exported, tmp_path):
    proc = run_script("generate.py", "--ckpt", str(exported), "--beta", "0.5", "--classes", "0", "3",
                      "--n-per-class", "3", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    img = Image.open(tmp_path / "out" / "grid.png")
    img.verify()
    data = np.load(tmp_path / "out" / "samples.npz")
    assert data["arr_0"].shape == (6, 32, 32, 3) and data["arr_0"].dtype == np.uint8
    assert data["arr_1"].tolist() == [0, 0, 0, 3, 3, 3]
    assert float(data["beta"]) == 0.5


def test_generate_beta_comparison_figure(exported, tmp_path):
    proc = run_script("generate.py", "--ckpt", str(exported), "--beta", "1.0", "0.5", "0.25", "0.1",
                      "--n-per-class", "2", "--classes", "1", "2", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    fig = Image.open(tmp_path / "beta_comparison.png")
    single = run_script("generate.py", "--ckpt", str(exported), "--beta", "1.0", "--n-per-class", "2",
                        "--classes", "1", "2", "--out", str(tmp_path / "one"))
    assert single.returncode == 0
    assert fig.width > 3 * Image.open(tmp_path / "one" / "grid.png").width
    assert sorted(p.name for p in tmp_path.glob("samples_beta*.npz")) == [
        "samples_beta0.1.npz", "samples_beta0.25.npz", "samples_beta0.5.npz", "samples_beta1.npz"]


def test_generate_cfg_mode(exported, tmp_path):
    proc = run_script("generate.py", "--ckpt", str(exported), "--cfg-scale", "2.0", "--n-per-class", "1",
                      "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "samples.npz")["arr_0"].shape[0] == 10


def test_generate_bad_input_exits_2_without_traceback(exported, tmp_path):
    proc = run_script("generate.py", "--ckpt", str(exported), "--classes", "12", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "error: class id 12 is outside [0, 10)" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--beta", "1.5"], "argument --beta: must lie in [0, 1], got 1.5"),
    (["--beta", "nan"], "argument --beta: must be a finite number in [0, 1], got nan"),
    (["--ckpt", "no/such/dir"], "does not exist"),
    (["--n-per-class", "0"], "argument --n-per-class: must lie in [1, inf), got 0"),
])
def test_generate_bad_input(exported, tmp_path, capsys, args, message):
    base = ["--ckpt", str(exported)] if "--ckpt" not in args else []
    with pytest.raises(SystemExit) as exc:
        script_main("generate.py")([*base, *args, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_generate_tokenizer_mismatch(tmp_path, capsys):
    from gft_tokens.tokenizers import load_tokenizer

    tok = load_tokenizer(SHIPPED_VQ)
    m = build_model("llamagen", "GPT-nano", vocab_size=512, grid_size=8, num_classes=10,
                    tokenizer={**tok.describe(), "codebook_size": 512, "path": str(SHIPPED_VQ)})
    m.save_pretrained(tmp_path / "m")
    with pytest.raises(SystemExit) as exc:
        script_main("generate.py")(["--ckpt", str(tmp_path / "m"), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and "tokenizer mismatch" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
