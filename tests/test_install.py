import subprocess
import sys

from conftest import ROOT


def test_transformers_imports_from_repo_root():
    """The top-level tokenizers/ folder (checkpoints) must not shadow HuggingFace's `tokenizers` package."""
    code = "import tokenizers, transformers; print(tokenizers.__file__); from transformers import PreTrainedModel"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "site-packages" in proc.stdout


def test_public_tokenizer_api_imports():
    proc = subprocess.run(
        [sys.executable, "-c", "from gft_tokens.tokenizers import load_tokenizer; "
                               "t = load_tokenizer('tokenizers/shapes-vq'); print(t.codebook_size, t.grid_size)"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1024 (8, 8)"


# The torch APIs the package relies on and the release that introduced each: pyproject's floor must be the latest.
TORCH_APIS = {
    "torch.nn.functional.scaled_dot_product_attention(enable_gqa=...)": (2, 5),
    "torch.serialization.safe_globals": (2, 5),
    "torch.serialization.get_unsafe_globals_in_checkpoint": (2, 5),
    "torch.nn.functional.rms_norm": (2, 4),
}


def test_torch_floor_in_pyproject_is_honest():
    import re

    import torch
    import torch.nn.functional as F

    q = torch.zeros(1, 4, 2, 8)
    kv = torch.zeros(1, 2, 2, 8)
    assert F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True).shape == q.shape
    assert hasattr(torch.serialization, "safe_globals")
    assert hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint")
    assert hasattr(F, "rms_norm")
    text = (ROOT / "pyproject.toml").read_text()
    floor = tuple(int(x) for x in re.search(r'"torch>=(\d+)\.(\d+)"', text).groups())
    assert floor == max(TORCH_APIS.values()), f"pyproject says torch>={floor}, the code needs {max(TORCH_APIS.values())}"


def test_deepspeed_configs_ship_inside_the_package():
    """A pip-installed gft_tokens (no repo around it) still finds its ZeRO configs."""
    from gft_tokens.train.engine import CONFIG_DIR, load_ds_config

    assert CONFIG_DIR.is_relative_to(ROOT / "gft_tokens")
    for stage in range(4):
        assert (CONFIG_DIR / f"zero{stage}.json").is_file()
        assert load_ds_config(None, stage)["zero_optimization"]["stage"] == stage
    # hatchling puts every file under the package directory into the wheel; none of these is ignored by git
    ignored = subprocess.run(["git", "check-ignore", *map(str, CONFIG_DIR.glob("*.json"))], cwd=ROOT,
                             capture_output=True, text=True)
    assert ignored.stdout.strip() == ""
