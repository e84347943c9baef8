import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_VQ = ROOT / "tokenizers" / "shapes-vq"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Code-extraction cache shared by the session's tests, never the user's ~/.cache."""
    monkeypatch.setenv("GFT_TOKENS_CACHE", str(tmp_path_factory.getbasetemp() / "gft-cache"))
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shipped_tokenizer():
    from gft_tokens.tokenizers import load_tokenizer

    return load_tokenizer(SHIPPED_VQ)


# set in this process by an in-process training run (a one-process group); a child must start its own
DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT")


def child_env(**extra) -> dict:
    """This process's environment for a script run as a child, without the process-group variables."""
    return {**{k: v for k, v in os.environ.items() if k not in DIST_VARS}, "OMP_NUM_THREADS": "2", **extra}


def run_script(name: str, *args: str, cwd=ROOT, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run scripts/<name> with this interpreter; returns the completed process (never raises on failure)."""
    full_env = child_env(**(env or {}))
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def script_main(name: str):
    """The ``main(argv)`` of scripts/<name>, imported in this process (fast, for error-path tests)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{Path(name).stem}", ROOT / "scripts" / name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a script's dataclasses (train_t2i.py's options) look their module up
    spec.loader.exec_module(module)
    return module.main


def solid_image_folder(root: Path, per_class: int, size: tuple[int, int]) -> Path:
    """An image folder of two classes, ``cat`` (red) and ``dog`` (blue), ``per_class`` one-colour PNGs
    ``<class>/<i>.png`` each of ``size`` (width, height)."""
    from PIL import Image

    for c, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", size, colour).save(root / c / f"{i}.png")
    return root
