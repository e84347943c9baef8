"""DeepSpeed plumbing: process group, ZeRO config, engine, atomic checkpoints, weight export, EMA.

Works on GPUs and on a CPU (DeepSpeed's "cpu" accelerator with the gloo backend). A script started with plain
``python`` (no launcher) becomes a one-process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import GFTError
from ..io import atomic_file

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"
LATEST = "latest"
_TAG_RE = re.compile(r"^step(\d+)$")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int]:
    """Initialise the process group (one process when started without a launcher); returns (rank, world)."""
    import deepspeed

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if not torch.distributed.is_initialized():
        backend = None if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def load_ds_config(path: str | os.PathLike | None, zero_stage: int | None) -> dict:
    """The ZeRO config: ``path`` if given, else ``configs/deepspeed/zero{zero_stage}.json``."""
    if path is None:
        path = CONFIG_DIR / f"zero{zero_stage if zero_stage is not None else 1}.json"
    path = Path(path)
    if not path.is_file():
        raise GFTError(f"DeepSpeed config {str(path)!r} does not exist (stages ship as configs/deepspeed/zero{{0,1,2,3}}.json)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GFTError(f"DeepSpeed config {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if zero_stage is not None:
        cfg.setdefault("zero_optimization", {})["stage"] = int(zero_stage)
    return cfg


def finalize_ds_config(cfg: dict, *, micro_batch: int, grad_accum: int, world: int, grad_clip: float,
                       bf16: bool) -> dict:
    """Fill in the sizes and switches our options own (they override whatever the file says)."""
    cfg = json.loads(json.dumps(cfg))
    cfg["train_micro_batch_size_per_gpu"] = micro_batch
    cfg["gradient_accumulation_steps"] = grad_accum
    cfg["train_batch_size"] = micro_batch * grad_accum * world
    cfg["gradient_clipping"] = grad_clip
    cfg["bf16"] = {**cfg.get("bf16", {}), "enabled": bool(bf16)}
    cfg.setdefault("zero_allow_untested_optimizer", True)
    cfg.setdefault("steps_per_print", 10**9)
    offload = cfg.get("zero_optimization", {}).get("offload_optimizer", {}) or {}
    if offload.get("device", "none") != "none":
        cfg["zero_force_ds_cpu_optimizer"] = False  # our AdamW is torch's; DeepSpeed would otherwise insist on CPUAdam
    return cfg


def zero_stage(cfg: dict) -> int:
    return int(cfg.get("zero_optimization", {}).get("stage", 0))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """LlamaGen's grouping: weight decay on matrices and embeddings (ndim ≥ 2), none on norms and biases, nor on
    the parameters a model names in ``no_weight_decay()`` (VAR: position/level embeddings, attention scales)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        shape = getattr(p, "ds_shape", p.shape)
        (decay if len(shape) >= 2 and name not in skip else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@contextlib.contextmanager
def gathered(params, enabled: bool, modifier_rank=None):
    """All-gather ZeRO-3 partitioned ``params`` inside the block (a no-op for stages 0–2)."""
    if not enabled:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(params), modifier_rank=modifier_rank):
        yield


def consolidated_state_dict(module: nn.Module, stage: int, rank: int) -> dict[str, torch.Tensor] | None:
    """Full fp32 state dict on rank 0 (``None`` elsewhere), gathering ZeRO-3 partitions one module at a time."""
    state: dict[str, torch.Tensor] = {}
    for prefix, sub in module.named_modules():
        own = list(sub.named_parameters(recurse=False))
        with gathered([p for _, p in own], stage == 3):
            if rank == 0:
                for name, p in own:
                    state[f"{prefix}.{name}" if prefix else name] = p.detach().float().cpu().clone()
        if rank == 0:
            for name, b in sub.named_buffers(recurse=False):
                key = f"{prefix}.{name}" if prefix else name
                if name not in sub._non_persistent_buffers_set:
                    state[key] = b.detach().cpu().clone()
    return state if rank == 0 else None


# ---------------------------------------------------------------------------------------------------------------
# EMA of the parameters this rank holds (whole tensors for stages 0–2, the local partition for stage 3)
# ---------------------------------------------------------------------------------------------------------------
def _local(p: torch.Tensor, stage: int) -> torch.Tensor:
    return p.ds_tensor if stage == 3 else p


class EMA:
    def __init__(self, module: nn.Module, decay: float, stage: int):
        self.decay, self.stage = float(decay), stage
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        self.params = [p for _, p in module.named_parameters() if p.requires_grad]
        self.shadow = [_local(p, stage).detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params):
            s.lerp_(_local(p, self.stage).detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": {n: s for n, s in zip(self.names, self.shadow)}}

    def load_state_dict(self, state: dict) -> None:
        for i, n in enumerate(self.names):
            self.shadow[i].copy_(state["shadow"][n])

    @contextlib.contextmanager
    def swapped_in(self):
        """Temporarily put the EMA weights into the module (to export or evaluate them)."""
        saved = [_local(p, self.stage).detach().clone() for p in self.params]
        with torch.no_grad():
            for s, p in zip(self.shadow, self.params):
                _local(p, self.stage).copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for s, p in zip(saved, self.params):
                    _local(p, self.stage).copy_(s)


# ---------------------------------------------------------------------------------------------------------------
# Atomic checkpoints on top of engine.save_checkpoint
# ---------------------------------------------------------------------------------------------------------------
def checkpoint_tags(root: Path) -> list[tuple[int, str]]:
    """Complete checkpoints under ``root`` as (step, tag), oldest first."""
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _TAG_RE.match(d.name)
        if m and d.is_dir():
            found.append((int(m.group(1)), d.name))
    return sorted(found)


def stale_partial_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.glob(".tmp-step*") if d.is_dir()) if root.is_dir() else []


def latest_tag(root: Path, log=print) -> str | None:
    """The tag the ``latest`` pointer names, if complete; else the newest complete checkpoint; else None.

    Half-written checkpoints (a ``.tmp-…`` directory left by a killed run) are reported and ignored.
    """
    for partial in stale_partial_dirs(root):
        log(f"ignoring half-written checkpoint {partial} (left by an interrupted save)")
    pointer = root / LATEST
    tags = checkpoint_tags(root)
    if pointer.is_file():
        tag = pointer.read_text().strip()
        if (root / tag).is_dir() and _TAG_RE.match(tag):
            return tag
        log(f"'latest' names {tag!r}, which is missing or incomplete; using the newest complete checkpoint")
    return tags[-1][1] if tags else None


def save_checkpoint(engine, root: Path, step: int, client_state: dict, rank_state: dict, keep_last: int,
                    rank: int, world: int) -> Path:
    """Save to ``root/.tmp-stepN`` on all ranks, then (rank 0) rename to ``root/stepN``, move ``latest``, rotate."""
    tag = f"step{step:08d}"
    tmp_tag = f".tmp-{tag}"
    if rank == 0:
        shutil.rmtree(root / tmp_tag, ignore_errors=True)
    barrier()
    engine.save_checkpoint(str(root), tag=tmp_tag, client_state=client_state, save_latest=False)
    torch.save(rank_state, root / tmp_tag / f"rank_state_{rank:03d}.pt")
    barrier()
    if rank == 0:
        final = root / tag
        if final.exists():
            shutil.rmtree(final)
        os.replace(root / tmp_tag, final)
        with atomic_file(root / LATEST, "w") as fh:
            fh.write(tag)
        for _, old in checkpoint_tags(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(root / old, ignore_errors=True)
        for partial in stale_partial_dirs(root):
            shutil.rmtree(partial, ignore_errors=True)
    barrier()
    return root / tag


def load_rank_state(root: Path, tag: str, rank: int) -> dict:
    path = root / tag / f"rank_state_{rank:03d}.pt"
    if not path.is_file():
        raise GFTError(f"checkpoint {root / tag} has no state for rank {rank} (saved with another world size?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise GFTError(f"checkpoint file {path} is corrupt or truncated ({type(exc).__name__})") from None
