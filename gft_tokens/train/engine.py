"""DeepSpeed plumbing: process group, ZeRO config, engine, atomic checkpoints, weight export, EMA.

Works on GPUs and on a CPU (DeepSpeed's "cpu" accelerator with the gloo backend). A script started with plain
``python`` (no launcher) becomes a one-process group.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import os
import socket
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import GFTError
from ..fs import disk_full_error, is_disk_full, load_json, load_torch_file, unsafe_pickle_globals
from . import checkpoints as CK
from .checkpoints import LATEST, checkpoint_tags, latest_tag, stale_partial_dirs, tag_of  # noqa: F401 (re-exported)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "deepspeed"  # package data (configs/deepspeed links here)


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
    cfg = load_json(path, f"DeepSpeed config {path}")
    if not isinstance(cfg, dict):
        raise GFTError(f"DeepSpeed config {path} must hold a JSON object, got {type(cfg).__name__}")
    if zero_stage is not None:
        cfg.setdefault("zero_optimization", {})["stage"] = int(zero_stage)
    zero = cfg.get("zero_optimization", {})
    if not isinstance(zero, dict) or zero.get("stage", 0) not in (0, 1, 2, 3):
        raise GFTError(f"DeepSpeed config {path}: zero_optimization.stage must be one of 0, 1, 2, 3, got "
                       f"{zero.get('stage') if isinstance(zero, dict) else zero!r}")
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


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None,
                 beta_embed_lr: float = 1.0) -> list[dict]:
    """LlamaGen's grouping: weight decay on matrices and embeddings (ndim ≥ 2), none on norms and biases, nor on
    the parameters a model names in ``no_weight_decay()`` (VAR: position/level embeddings, attention scales).

    ``beta_embed_lr`` ≠ 1 puts the β embedder (``beta_embedder.*``) in groups of their own at ``lr · beta_embed_lr``
    (the schedule scales every group alike); 1 is the paper's single learning rate and gives the two groups only.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        shape = getattr(p, "ds_shape", p.shape)
        decayed = len(shape) >= 2 and name not in skip
        scaled = beta_embed_lr != 1.0 and name.startswith("beta_embedder.")
        groups.setdefault((decayed, scaled), []).append(p)
    out = []
    for scaled in (False, True):
        for decayed in (True, False):
            if scaled and (decayed, scaled) not in groups:
                continue
            group = {"params": groups.get((decayed, scaled), []), "weight_decay": weight_decay if decayed else 0.0}
            if scaled:
                if lr is None:
                    raise ValueError("param_groups: beta_embed_lr needs the base lr")
                group["lr"] = lr * beta_embed_lr
            out.append(group)
    return out


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
# An optimizer step that can be cancelled (for --on-nonfinite skip)
# ---------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _updates_cancelled(optimizer):
    """While active, ``optimizer.step()`` sees no gradients (restored right after, for DeepSpeed's bookkeeping)."""
    held = []

    def hide(opt, args, kwargs):
        for group in opt.param_groups:
            for p in group["params"]:
                held.append((p, p.grad))
                p.grad = None

    def restore(opt, args, kwargs):
        for p, grad in held:
            p.grad = grad
        held.clear()

    handles = (optimizer.register_step_pre_hook(hide), optimizer.register_step_post_hook(restore))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def optimizer_step(engine, cancel: bool = False) -> bool:
    """``engine.step()`` at a gradient-accumulation boundary; returns whether the update was applied.

    With ``cancel`` the update is dropped: DeepSpeed hands every update of every ZeRO stage to the client torch
    optimizer (on the fp32 master partitions); step hooks hide the gradients it was given, and torch optimizers
    leave a parameter without a gradient, and its state, untouched. DeepSpeed then clears the
    accumulated gradients as after any step. DeepSpeed may also drop an update by itself when it finds
    non-finite gradients. Either way the LR schedule advances, so it stays a function of the step count.
    """
    with _updates_cancelled(engine.basic_optimizer) if cancel else contextlib.nullcontext():
        engine.step()
    applied_by_deepspeed = engine.was_step_applied()
    if not applied_by_deepspeed and engine.lr_scheduler is not None:
        engine.lr_scheduler.step()  # DeepSpeed holds the schedule back on an update it dropped; we do not
    return applied_by_deepspeed and not cancel


def parameters_finite(module: nn.Module, stage: int) -> bool:
    """Whether every parameter (every rank's partition of it) is finite; the same answer on all ranks."""
    ok = all(bool(torch.isfinite(_local(p, stage)).all()) for p in module.parameters())
    flag = torch.tensor([float(ok)])
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return flag.item() == 1.0


# ---------------------------------------------------------------------------------------------------------------
# Atomic checkpoints on top of engine.save_checkpoint (the directory protocol is in checkpoints.py)
# ---------------------------------------------------------------------------------------------------------------
TRAINING_STATE = "training_state.json"
# Classes a DeepSpeed optimizer-state file legitimately pickles (besides tensors and containers); a checkpoint
# file naming anything else is refused before DeepSpeed unpickles it (it loads with weights_only=False).
DEEPSPEED_PICKLE_GLOBALS = frozenset({
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
})


def save_checkpoint(engine, root: Path, step: int, client_state: dict, rank_state: dict, keep_last: int,
                    rank: int, world: int) -> Path:
    """Save to ``root/.tmp-stepN`` on all ranks, then (rank 0) seal and rename it to ``root/stepN``, move
    ``latest``, rotate. Refuses (``GFTError``) to save non-finite parameters over a good checkpoint."""
    root = Path(root)
    stage = engine.zero_optimization_stage()
    if not parameters_finite(engine.module, stage):
        raise GFTError(f"the parameters are not finite at step {step}; not saving — the last good checkpoint in "
                       f"{root} is intact (lower the learning rate or check the data, then --resume)")
    tmp_tag = f".tmp-{tag_of(step)}"
    if rank == 0:
        CK.begin(root, step)
    barrier()
    try:
        engine.save_checkpoint(str(root), tag=tmp_tag, client_state=client_state, save_latest=False)
        torch.save(rank_state, root / tmp_tag / f"rank_state_{rank:03d}.pt")
        if rank == 0:
            state = {**client_state, "world_size": world, "zero_stage": stage}
            (root / tmp_tag / TRAINING_STATE).write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    except (OSError, RuntimeError) as exc:
        if not is_disk_full(exc):
            raise
        shutil.rmtree(root / tmp_tag, ignore_errors=True)  # no half-written checkpoint left behind
        needed = sum(p.numel() * p.element_size() for p in engine.module.parameters()) * 4  # weights + 2 moments + master
        raise disk_full_error(root / tmp_tag, needed) from None
    barrier()
    if rank == 0:
        CK.commit(root, step, keep_last)
    barrier()
    return root / tag_of(step)


def load_checkpoint(engine, root: Path, tag: str, options: dict, resume_keys, world: int) -> dict:
    """Load checkpoint ``root/tag`` into ``engine`` (weights, optimizer, LR schedule); returns its client state.

    Before DeepSpeed reads anything: the options in ``resume_keys``, the world size and the ZeRO stage must
    match the checkpoint's, and no file may unpickle anything beyond tensors, containers and DeepSpeed's own
    bookkeeping classes. Every failure is one :class:`GFTError` naming the checkpoint.
    """
    directory = Path(root) / tag
    path = directory / TRAINING_STATE
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise GFTError(f"checkpoint {directory} has no readable {TRAINING_STATE}") from None
    mine = json.loads(json.dumps({k: options.get(k) for k in resume_keys}))
    was = saved.get("options", {})
    diffs = [k for k in resume_keys if k in was and was[k] != mine[k]]
    if diffs:
        raise GFTError("cannot resume: options differ from the checkpoint's: "
                       + ", ".join(f"{k} ({was[k]!r} → {mine[k]!r})" for k in diffs))
    if saved.get("world_size", world) != world:
        raise GFTError(f"cannot resume: {directory} was saved by {saved['world_size']} processes, this run has "
                       f"{world} (resume with the same number, or start a new run with --init-from an export)")
    stage = engine.zero_optimization_stage()
    if saved.get("zero_stage", stage) != stage:
        raise GFTError(f"cannot resume: {directory} was saved with ZeRO stage {saved['zero_stage']}, this run "
                       f"uses {stage}")
    for file in sorted(directory.glob("*.pt")):
        unsafe = unsafe_pickle_globals(file, DEEPSPEED_PICKLE_GLOBALS)
        if unsafe:
            raise GFTError(f"refusing to load {file}: unpickling it would import {', '.join(unsafe[:3])} and could "
                           "run code")
    try:
        loaded, client = engine.load_checkpoint(str(root), tag=tag)
    except GFTError:
        raise
    except Exception as exc:  # noqa: BLE001 - DeepSpeed/torch raise many types for a damaged checkpoint
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise GFTError(f"could not load checkpoint {directory}: {type(exc).__name__}: {first}") from None
    if loaded is None:
        raise GFTError(f"could not load checkpoint {directory}")
    return client


def load_rank_state(root: Path, tag: str, rank: int) -> dict:
    path = Path(root) / tag / f"rank_state_{rank:03d}.pt"
    if not path.is_file():
        raise GFTError(f"checkpoint {Path(root) / tag} has no state for rank {rank} (saved with another world size?)")
    return load_torch_file(path)
