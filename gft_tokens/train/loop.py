"""The one training loop for every model family: DeepSpeed engine, GFT or CFG objective, checkpoints, export.

``train(family, options)`` runs on every rank of a ``deepspeed`` launch (or as one process under plain
``python``). Rank 0 shows the progress bar, writes ``<out>/train_log.jsonl`` and exports the weights to
``<out>/model`` (config.json + model.safetensors, recording the tokenizer) whenever it checkpoints and at the end.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import opt, to_dict
from ..data.codes import batch_indices
from ..data.shapes import CLASS_NAMES
from ..data.shards import ShardStream, dataset_record
from ..errors import GFTError
from ..fs import atomic_file, check_writable
from ..paths import shipped
from ..locks import run_lock
from ..pretrained import config_replace
from ..optim import warmup_cosine
from ..objectives import OBJECTIVES  # noqa: F401  (the families look objectives up in this same dict)
from ..tokenizers import load_tokenizer
from . import engine as E
from ..families import Family, get_family


@dataclass
class TrainOptions:
    preset: str = opt("GPT-tiny", "model size preset (see --list-presets)")
    objective: str = opt("gft", "training objective: gft (guidance-free) or cfg (the baseline)", choices=("gft", "cfg"))
    init_from: str | None = opt(None, "start from this exported model dir (e.g. a CFG model, to GFT-fine-tune it)")
    tokenizer: str = opt("tokenizers/shapes-vq", "tokenizer directory (config.json + model.safetensors)")
    data: str = opt("shapes", "training data: 'shapes' (the embedded dataset) or webdataset shards of images or "
                              "codes, e.g. 'shards/{000000..000031}.tar' (see gft_tokens/data/shards.py)")
    num_classes: int | None = opt(None, "number of classes of shard data (default: from the shards' dataset.json)", min=1)
    data_workers: int = opt(2, "DataLoader worker processes per rank reading shards (0: read in the main process)", min=0, max=256)
    train_images: int = opt(10000, "number of embedded-shapes images to train on (each also flipped, unless --no-flip)", min=1)
    flip: bool = opt(True, "horizontal-flip augmentation: random flips of image shards, the flipped view of the "
                           "embedded data (codes shards carry the views extract_codes.py stored)")
    val_data: str | None = opt(None, "validation shards (images or codes) for the held-out loss")
    val_fraction: float = opt(0.0, "hold this fraction of the training data out as the validation set (by sample "
                                   "key for shards; the last images of the embedded data); 0: none", min=0, lt=1)
    val_every: int = opt(100, "evaluate the validation loss every N steps (and at the end)", min=1)
    val_samples: int = opt(1000, "at most this many validation samples", min=1)
    steps: int = opt(1000, "optimizer steps", min=1)
    batch_size: int = opt(64, "micro-batch size per process", min=1)
    grad_accum: int = opt(1, "gradient accumulation steps (global batch = batch_size x grad_accum x processes)", min=1)
    lr: float = opt(2e-3, "peak learning rate (AdamW; LlamaGen's GPT-B+ recipe uses 1e-4)", gt=0)
    min_lr_ratio: float = opt(0.1, "cosine schedule floor as a fraction of lr", min=0, max=1)
    warmup_steps: int = opt(50, "linear warm-up steps", min=0)
    weight_decay: float = opt(0.05, "AdamW weight decay on matrices and embeddings", min=0)
    beta1: float = opt(0.9, "AdamW beta1", min=0, lt=1)
    beta2: float = opt(0.95, "AdamW beta2", min=0, lt=1)
    grad_clip: float = opt(1.0, "gradient-norm clipping (0 disables)", min=0)
    drop_prob: float = opt(0.1, "probability of training a sample at the null class", min=0, lt=1)
    beta_embed_lr: float | None = opt(None, "learning-rate multiplier of the β embedder (GFT); 1 = the paper's one "
                                            "rate for every parameter. Default: 0.1 from scratch, where at the full "
                                            "rate the β embedding outgrows the class embedding and the class is "
                                            "learned far later (docs/gft_vs_cfg); 1 with --init-from", gt=0, max=1)
    zero_stage: int | None = opt(None, "ZeRO stage 0-3 (selects configs/deepspeed/zero{N}.json; default 1)", choices=(0, 1, 2, 3))
    ds_config: str | None = opt(None, "DeepSpeed JSON config file (overrides --zero-stage's file)")
    bf16: bool = opt(False, "train in bfloat16")
    ema: bool = opt(False, "keep an exponential moving average of the weights (exported to <out>/model_ema)")
    ema_decay: float = opt(0.999, "EMA decay per optimizer step", min=0, lt=1)
    grad_checkpointing: bool = opt(False, "recompute each block's activations in backward (saves memory)")
    out: str = opt("runs/llamagen", "run directory: checkpoints/, model/, train_log.jsonl")
    save_every: int = opt(200, "checkpoint every N optimizer steps (0: only at the end)", min=0)
    export_every: int = opt(0, "also export the weights every N steps to <out>/snapshots/step-NNNNNN (a learning "
                               "curve from one run; 0: none)", min=0)
    keep_last: int = opt(2, "keep the N newest checkpoints (0 keeps all)", min=0)
    resume: bool = opt(False, "continue from the newest complete checkpoint in <out>/checkpoints")
    overwrite: bool = opt(False, "replace the run already in <out> (its checkpoints, log and exports)")
    on_nonfinite: str = opt("stop", "on a non-finite loss: stop (the last checkpoint stays intact) or skip that "
                            "optimizer update (counted and logged)", choices=("stop", "skip"))
    seed: int = opt(0, "seed of initialisation, data order and the β / label-dropout draws")
    log_every: int = opt(10, "write a loss line every N steps", min=1)
    threads: int = opt(0, "torch CPU threads per process (0: leave the default)", min=0, max=4096)
    model: dict = opt({}, "model config overrides (YAML only), e.g. {token_dropout_p: 0.0}")


SCRATCH_BETA_EMBED_LR = 0.1


def beta_embed_lr(o: "TrainOptions") -> float:
    """The β embedder's learning-rate multiplier: ``--beta-embed-lr`` when given, else 0.1 from scratch and 1 (the
    paper's single rate) for a fine-tune (``--init-from``), whose class embedding is already trained."""
    if o.beta_embed_lr is not None:
        return o.beta_embed_lr
    return 1.0 if o.init_from else SCRATCH_BETA_EMBED_LR


RESUME_KEYS = ("preset", "objective", "tokenizer", "data", "train_images", "batch_size", "grad_accum", "seed", "model",
               "flip", "val_fraction")


def _lr_lambda(o: TrainOptions):
    return lambda step: warmup_cosine(step, o.steps, o.warmup_steps, o.min_lr_ratio)


class _Log:
    """Rank-0 JSON-lines log; truncated to the resumed step so a resumed run's log reads as one run."""

    def __init__(self, path: Path, rank: int, resume_step: int | None):
        self.path, self.rank = path, rank
        if rank != 0:
            return
        kept = []
        if resume_step is not None and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if entry.get("step", 0) <= resume_step:
                    kept.append(line)
        with atomic_file(path, "w") as fh:
            fh.write("".join(k + "\n" for k in kept))

    def write(self, entry: dict) -> None:
        if self.rank == 0:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(entry) + "\n")


def _draws(o: TrainOptions, step: int, offset: int, global_bs: int):
    """β ~ U(0,1), label dropout and a view pick for rows ``offset …`` of the step's global batch.

    They depend on a row's place in the global batch only, not on the process that trains it, so the same global
    batch gives the same run on any number of processes.
    """
    u = torch.rand(3, global_bs, generator=torch.Generator().manual_seed(o.seed * 1_000_003 + step))
    u = u[:, offset:offset + o.batch_size]
    return u[0], u[1] < o.drop_prob, u[2]


def _build_model(family: Family, o: TrainOptions, tokenizer, num_classes: int, ds_cfg: dict, rank: int,
                 dataset: dict | None = None, data=None):
    """The model (partitioned at construction under ZeRO-3) and the state to load into it, if any."""
    import deepspeed

    cls = family.model_class
    overrides = dict(o.model)
    init_state = None
    if o.init_from:
        src = cls.from_pretrained(o.init_from)
        changes = {**overrides, "tokenizer": {**tokenizer.describe(), "path": o.tokenizer}, "dataset": dataset}
        changes.update(family.adapter.fine_tune_config(data))
        if o.objective == "gft":
            changes["beta_embed"] = True
        config = config_replace(src.config, **changes)
        recorded = src.config.tokenizer or {}
        mine = tokenizer.describe()
        for key in ("codebook_size", "grid_size", "type"):
            if key in recorded and recorded[key] != mine.get(key):
                raise GFTError(f"{o.init_from} was trained with a tokenizer of {key} {recorded[key]}, but "
                               f"{o.tokenizer} has {mine.get(key)}")
        init_state = src.state_dict()
        del src
    else:
        config = family.adapter.config(o.preset, tokenizer, num_classes, {**overrides, **family.adapter.data_config(data)})
        config.tokenizer = {**tokenizer.describe(), "path": o.tokenizer}
        config.dataset = dataset
        if o.objective == "cfg" and "beta_embed" not in overrides:
            config.beta_embed = False
    torch.manual_seed(o.seed)
    with deepspeed.zero.Init(config_dict_or_path=ds_cfg, enabled=E.zero_stage(ds_cfg) == 3):
        model = cls(config)
    if init_state is not None:
        _load_init_state(model, init_state, E.zero_stage(ds_cfg), rank, o.init_from)
    family.adapter.prepare_model(model, tokenizer)
    if o.grad_checkpointing:
        model.gradient_checkpointing = True
    return model


def _load_init_state(model, state: dict, stage: int, rank: int, where: str) -> None:
    """Copy ``state`` into ``model``; keys the source lacks must be the (zero-initialised) β embedder."""
    own = {n: getattr(p, "ds_shape", p.shape) for n, p in model.named_parameters()}
    missing = [k for k in own if k not in state]
    bad_missing = [k for k in missing if not k.startswith("beta_embedder.")]
    unexpected = [k for k in state if k not in own and k not in dict(model.named_buffers())]
    if bad_missing or unexpected:
        raise GFTError(f"{where} does not fit the model: missing {bad_missing[:5]}, unexpected {unexpected[:5]}")
    for prefix, sub in model.named_modules():
        params = list(sub.named_parameters(recurse=False))
        with E.gathered([p for _, p in params], stage == 3, modifier_rank=0):
            if rank == 0 or stage != 3:
                for name, p in params:
                    key = f"{prefix}.{name}" if prefix else name
                    if key in state:
                        if tuple(state[key].shape) != tuple(p.shape):
                            raise GFTError(f"{where}: {key} has shape {tuple(state[key].shape)}, model {tuple(p.shape)}")
                        with torch.no_grad():
                            p.copy_(state[key])


@torch.no_grad()
def _validate(module, adapter, objective, val, o: TrainOptions, device) -> dict:
    """Held-out loss, in eval mode, with fixed draws: ``val_loss`` (the objective's loss; for GFT that of the mixed
    logits at β ~ U(0, 1)), ``val_cond_loss`` (the conditional loss at β = 1, i.e. of ℓ_s(x | c, 1) alone; for
    CFG the conditional loss) and ``val_null_loss`` (the same at the null condition). ``val_null_loss −
    val_cond_loss`` is what the condition is worth to the model (per token, or per masked position): how far it
    has learned to use the class."""
    codes, labels = val  # labels: class ids, or a Caption (text-to-image)
    was_training = module.training
    module.eval()
    totals, n = {"val_loss": 0.0, "val_cond_loss": 0.0, "val_null_loss": 0.0}, 0
    try:
        for i in range(0, len(codes), o.batch_size):
            c, y = codes[i:i + o.batch_size].to(device), labels[i:i + o.batch_size].to(device)
            b = len(c)
            g = torch.Generator().manual_seed(o.seed * 7919 + i)
            beta = torch.rand(b, generator=g).to(device)
            no_drop = torch.zeros(b, dtype=torch.bool, device=device)
            ones = torch.ones(b, device=device)
            settings = {"val_loss": (beta if o.objective == "gft" else ones, no_drop),
                        "val_cond_loss": (ones, no_drop),
                        "val_null_loss": (ones, ~no_drop)}
            for key, (b_values, drop) in settings.items():
                gen = torch.Generator().manual_seed(o.seed * 7919 + i)  # the same masks for every setting
                inputs = adapter.loss_inputs(module, c, gen)
                result = objective(inputs.logits_fn, inputs.targets, y, null_cond=module.null_class, module=module,
                                   drop_prob=0.0, generator=gen, loss_mask=inputs.loss_mask, want_own=False,
                                   beta=b_values, drop=drop)
                totals[key] += float(result.loss) * b
            n += b
    finally:
        module.train(was_training)
    return {k: round(v / n, 5) for k, v in totals.items()}


def _validation_set(o: TrainOptions, tokenizer, data, captions=None):
    """(codes, labels) of the validation set, or None; for the embedded data with --val-fraction, also the
    training data with the held-out images removed. ``captions`` (a ShardCaptions, text-to-image): validation
    shards give (codes, Caption)."""
    from ..data.shards import validation_codes

    if o.val_data and o.val_fraction:
        raise GFTError("give --val-data or --val-fraction, not both")
    if not 0.0 <= o.val_fraction < 1.0:
        raise GFTError(f"val_fraction must lie in [0, 1), got {o.val_fraction}")
    if o.val_every <= 0 or o.val_samples <= 0:
        raise GFTError("val_every and val_samples must be positive")
    if o.val_data:
        return validation_codes(o.val_data, tokenizer, fraction=None, limit=o.val_samples, captions=captions), data
    if not o.val_fraction:
        return None, data
    if data is None:  # shards: the samples whose key hashes into the held-out fraction
        return validation_codes(o.data, tokenizer, fraction=o.val_fraction, limit=o.val_samples,
                                captions=captions), data
    n_val = min(o.val_samples, max(1, int(round(len(data) * o.val_fraction))))
    if len(data) - n_val < 1:
        raise GFTError(f"val_fraction {o.val_fraction} leaves no training images")
    held = torch.arange(len(data) - n_val, len(data))
    val = data.batch(held, torch.zeros_like(held))  # (codes, labels), or (codes, Caption) for text-to-image data
    return val, data.subset(slice(0, len(data) - n_val))


def _check_val(val, vocab_size: int | None, token_shape) -> None:
    codes = val[0]
    if tuple(codes.shape[1:]) != tuple(token_shape):
        raise GFTError(f"validation codes have token shape {tuple(codes.shape[1:])}, the model expects "
                       f"{tuple(token_shape)}")
    if vocab_size is not None and not codes.is_floating_point() and (int(codes.max()) >= vocab_size
                                                                      or int(codes.min()) < 0):
        raise GFTError(f"validation codes contain ids outside the vocabulary [0, {vocab_size})")
RUN_FILES = ("checkpoints", "model", "model_ema", "snapshots", "train_log.jsonl")  # what a run writes into <out>


def check_run_dir(out: Path, o: TrainOptions) -> None:
    """A run already in ``out`` is continued (``--resume``) or replaced (``--overwrite``), never silently mixed."""
    held = [name for name in RUN_FILES if (out / name).exists()]
    if o.resume and o.overwrite:
        raise GFTError("--resume and --overwrite contradict each other: choose one")
    if held and not (o.resume or o.overwrite):
        raise GFTError(f"{out} already holds a run ({', '.join(held)}): pass --resume to continue it or --overwrite "
                       f"to replace it")


def _check_resume_pairing(directory: Path, tokenizer, o: TrainOptions, adapter=None, data=None) -> None:
    """The checkpoint's tokenizer, conditions (the family's ``check_resume``: t2i, the text encoder) and EMA must
    be this run's, checked before DeepSpeed reads a byte."""
    try:
        saved = json.loads((directory / E.TRAINING_STATE).read_text())
    except (OSError, json.JSONDecodeError):
        return  # load_checkpoint reports an unreadable state
    was, mine = saved.get("tokenizer"), tokenizer.describe()
    if was is not None and json.loads(json.dumps(mine)) != was:
        raise GFTError(f"cannot resume: {directory} was trained with the tokenizer {was}, but --tokenizer "
                       f"{o.tokenizer} is {mine}")
    if adapter is not None:
        adapter.check_resume(saved, data, o, directory)
    if o.ema and saved.get("ema") is False:
        raise GFTError(f"cannot resume with --ema: {directory} was saved without EMA weights (resume without --ema, "
                       f"or start a new run with --overwrite)")


def train(family_name: str, o: TrainOptions) -> dict:
    """Train one model; returns a summary (final loss, steps, wall time, paths). ``<out>`` is locked meanwhile."""
    import contextlib

    with contextlib.ExitStack() as stack:
        return _train(family_name, o, stack)


def _train(family_name: str, o: TrainOptions, stack) -> dict:
    import deepspeed
    from tqdm.auto import tqdm

    family = get_family(family_name)
    adapter = family.adapter
    family.check_options(None if o.init_from else o.preset, o.model)  # before any data is read
    if o.threads:
        torch.set_num_threads(o.threads)
    if o.steps <= 0 or o.batch_size <= 0 or o.grad_accum <= 0:
        raise GFTError("steps, batch_size and grad_accum must be positive")
    if not 0.0 <= o.drop_prob < 1.0:
        raise GFTError(f"drop_prob must lie in [0, 1), got {o.drop_prob}")
    if o.data != "shapes" and adapter.inputs != "codes":
        raise GFTError(f"the {family_name} family trains on continuous latents of the embedded shapes data only "
                       f"(--data shapes); shard data holds integer codes or images encoded to codes")

    adapter.check_source(o.data)
    out = Path(o.out)
    ckpt_root = out / "checkpoints"
    rank, world = E.init_distributed()
    log = print if rank == 0 else (lambda *_: None)

    o = dataclasses.replace(o, tokenizer=shipped(o.tokenizer))  # the default resolves in this repository
    tokenizer = load_tokenizer(o.tokenizer)
    continuous = "codebook_size" not in tokenizer.describe()
    if continuous != (adapter.inputs == "latents"):  # tokenizer kind vs family, before anything is built
        want = "a continuous (KL) tokenizer" if adapter.inputs == "latents" else "a discrete (VQ) tokenizer"
        raise GFTError(f"the {family_name} family needs {want}, but {o.tokenizer} is a "
                       f"{tokenizer.describe().get('type')} tokenizer with {'continuous' if continuous else 'discrete'}"
                       f" tokens")
    ds_cfg = E.finalize_ds_config(E.load_ds_config(o.ds_config, o.zero_stage), micro_batch=o.batch_size,
                                  grad_accum=o.grad_accum, world=world, grad_clip=o.grad_clip, bf16=o.bf16)
    stage = E.zero_stage(ds_cfg)
    data = stream = None
    # what the family reads from shards besides codes and class ids (t2i: captions, unflipped images)
    shard_options = adapter.stream_options(o) if o.data != "shapes" or o.val_data else {}
    if o.data != "shapes":  # webdataset shards, a stream per rank (checked before anything is written)
        stream = ShardStream(o.data, tokenizer=tokenizer, rank=rank, world=world, batch_size=o.batch_size,
                             seed=o.seed, workers=o.data_workers, num_classes=o.num_classes,
                             holdout=o.val_fraction if not o.val_data else 0.0, **{"flip": o.flip, **shard_options})
    if rank == 0:
        check_writable(out)  # created (with what goes in it) only once the inputs have checked out
        check_run_dir(out, o)
    if stream is None:
        if rank == 0:
            data = adapter.shapes_data(tokenizer, o)
        E.barrier()
        if rank != 0:
            data = adapter.shapes_data(tokenizer, o)
    num_classes = data.num_classes if stream is None else stream.num_classes
    val, data = _validation_set(o, tokenizer, data, shard_options.get("captions"))
    if stream is None:
        dataset = {"name": "shapes", "class_names": list(CLASS_NAMES)}
    else:
        dataset = dataset_record(stream.meta, o.data, num_classes)

    source = data if stream is None else stream  # what the adapter's condition hooks read
    model = _build_model(family, o, tokenizer, num_classes, ds_cfg, rank, dataset, source)
    if num_classes > model.config.num_classes:
        raise GFTError(f"the data has {num_classes} classes, the model only {model.config.num_classes}")
    if stream is None:
        adapter.check_data(data, model.config)
    else:
        stream.expect(model.config.vocab_size, adapter.token_shape(model.config))
        adapter.check_stream(stream, model.config)
    if val is not None:
        _check_val(val, getattr(model.config, "vocab_size", None), adapter.token_shape(model.config))
    if rank == 0:  # every input has checked out: from here on this process owns <out>
        stack.enter_context(run_lock(out))  # a second trainer on this --out is refused while this one runs
        if o.overwrite:
            for name in RUN_FILES:
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    held = torch.zeros(world, dtype=torch.long)  # parameters this rank stores (its ZeRO-3 partition)
    held[rank] = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in model.parameters())
    if world > 1:
        torch.distributed.all_reduce(held)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model,
        model_parameters=E.param_groups(model, o.weight_decay, o.lr, beta_embed_lr(o)),
        optimizer=lambda params: torch.optim.AdamW(params, lr=o.lr, betas=(o.beta1, o.beta2)),
        lr_scheduler=lambda opt_: torch.optim.lr_scheduler.LambdaLR(opt_, _lr_lambda(o)),
        config=ds_cfg,
    )
    module = engine.module
    if stream is not None and stream.kind == "images":
        tokenizer.to(engine.device)  # images are encoded on the fly, on the training device
    if stream is not None and stream.captions is not None:
        stream.captions.to(engine.device)  # and caption text (when the shards store no features)
    conditions = adapter.condition_record(source)  # kept in every checkpoint
    ema = E.EMA(module, o.ema_decay, stage) if o.ema else None
    gen = torch.Generator().manual_seed(o.seed * 1000 + rank)
    objective = family.objective(o.objective)

    start_step, skipped = 0, 0
    if o.resume:
        tag = E.latest_tag(ckpt_root, log=log)
        if tag is None:
            log(f"--resume: no checkpoint in {ckpt_root}; starting from scratch")
        else:
            _check_resume_pairing(ckpt_root / tag, tokenizer, o, adapter, source)
            client = E.load_checkpoint(engine, ckpt_root, tag, to_dict(o), RESUME_KEYS, world)
            start_step, skipped = int(client["step"]), int(client.get("skipped", 0))
            rs = E.load_rank_state(ckpt_root, tag, rank)
            torch.set_rng_state(rs["torch_rng"])
            gen.set_state(rs["generator"])
            if ema is not None:
                if "ema" not in rs:
                    raise GFTError(f"cannot resume with --ema: {ckpt_root / tag} holds no EMA weights (resume "
                                   f"without --ema, or start a new run with --overwrite)")
                ema.load_state_dict(rs["ema"])
            log(f"resumed from {ckpt_root / tag} at step {start_step}")
    train_log = _Log(out / "train_log.jsonl", rank, start_step if o.resume else None)
    if stream is not None:
        stream.start(skip=start_step * o.grad_accum * o.batch_size)  # this rank's position in its stream
    global_bs = o.batch_size * o.grad_accum * world

    source = f"{len(data)} training images x {data.views} views" if stream is None else stream.describe()
    log(f"{family_name} {module.config.preset or ''}: {n_params / 1e6:.2f}M params, objective {o.objective}, "
        f"ZeRO-{stage}, {world} process(es), global batch {global_bs}, {source}, {o.steps} steps")
    log(f"parameters held per rank: {held.tolist()} (of {n_params})")
    if getattr(module, "beta_embedder", None) is not None:
        log(f"β embedder at {beta_embed_lr(o):g} × the learning rate"
            + (" (--beta-embed-lr 1 for the paper's single rate)" if beta_embed_lr(o) != 1 else ""))
    if conditions is not None and "path" in conditions:  # text-to-image: the condition is each image's caption
        condition = f"captions encoded by {conditions.get('path')}"
    else:
        condition = (f"{num_classes} classes ({', '.join(dataset['class_names'][:10])}"
                     f"{' …' if num_classes > 10 else ''})")
    # t2i data keeps one view and t2i image shards are not flipped (a mirror flips "left"); code shards carry the
    # views their extraction stored
    if stream is None:
        flips = o.flip and data.views > 1
    else:
        flips = stream.flip if stream.kind == "images" else bool(stream.meta.get("flip", o.flip))
    log(f"dataset {dataset['name']}: {condition}; flips {'on' if flips else 'off'}; validation: "
        + (f"{len(val[0])} samples every {o.val_every} steps" if val is not None else "none"))

    def export(step: int) -> None:
        state = E.consolidated_state_dict(module, stage, rank)
        if rank == 0:
            module.save_pretrained(out / "model", state_dict=state)
        if ema is not None:
            with ema.swapped_in():
                state = E.consolidated_state_dict(module, stage, rank)
            if rank == 0:
                module.save_pretrained(out / "model_ema", state_dict=state)

    def checkpoint(step: int) -> None:
        client = {"step": step, "options": to_dict(o), "skipped": skipped, "tokenizer": tokenizer.describe(),
                  "ema": ema is not None, "conditions": conditions}
        rank_state = {"torch_rng": torch.get_rng_state(), "generator": gen.get_state()}
        if ema is not None:
            rank_state["ema"] = ema.state_dict()
        E.save_checkpoint(engine, ckpt_root, step, client, rank_state, o.keep_last, rank, world)
        export(step)

    t0 = time.time()
    last, val_last, val_curve = {}, {}, []
    bar = tqdm(range(start_step, o.steps), desc=f"train {family_name} ({o.objective})", disable=rank != 0,
               initial=start_step, total=o.steps, dynamic_ncols=True)
    for step in bar:
        losses, own_losses, nonfinite = [], [], False
        val_step = val is not None and ((step + 1) % o.val_every == 0 or step + 1 == o.steps)
        log_step = (step + 1) % o.log_every == 0 or step + 1 == o.steps or val_step
        for micro in range(o.grad_accum):
            beta, drop, view = _draws(o, step, (micro * world + rank) * o.batch_size, global_bs)
            if stream is None:
                idx = batch_indices(len(data), step, micro, rank, world, o.batch_size, o.grad_accum, o.seed)
                codes, labels = data.batch(idx, (view * data.views).long())
            else:
                codes, labels = stream.next_batch()
            codes, labels = codes.to(engine.device), labels.to(engine.device)
            inputs = adapter.loss_inputs(module, codes, gen)
            result = objective(inputs.logits_fn, inputs.targets, labels, null_cond=module.null_class,
                               module=module, drop_prob=o.drop_prob, generator=gen, loss_mask=inputs.loss_mask,
                               want_own=log_step, beta=beta.to(engine.device), drop=drop.to(engine.device))
            finite = torch.tensor([float(torch.isfinite(result.loss))])
            if world > 1:
                torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
            if finite.item() < 1 and o.on_nonfinite == "stop":
                raise GFTError(f"non-finite loss at step {step + 1} (micro-batch {micro}); the last good checkpoint"
                               f" in {ckpt_root} is intact — lower the learning rate or check the data, then --resume")
            nonfinite |= finite.item() < 1
            engine.backward(result.loss)  # also when non-finite: the update is cancelled at the boundary below
            if micro + 1 < o.grad_accum:
                engine.step()
            elif not E.optimizer_step(engine, cancel=nonfinite) and not nonfinite:
                if o.on_nonfinite == "stop":  # DeepSpeed found non-finite gradients and dropped the update
                    raise GFTError(f"non-finite gradients at step {step + 1}; the last good checkpoint in "
                                   f"{ckpt_root} is intact — lower the learning rate, then --resume")
                nonfinite = True
            losses.append(result.loss.item())
            own_losses.append(result.cond_loss.item())
        done = step + 1
        if nonfinite:
            skipped += 1
            log(f"step {done}: non-finite loss, update skipped ({skipped} skipped so far)")
            train_log.write({"step": done, "skipped": True, "skipped_total": skipped,
                             "lr": scheduler.get_last_lr()[0], "elapsed_s": round(time.time() - t0, 2)})
            if (o.save_every and done % o.save_every == 0) or done == o.steps:
                checkpoint(done)
            continue
        if ema is not None:
            ema.update()
        loss = sum(losses) / len(losses)
        if world > 1:
            t = torch.tensor([loss])
            torch.distributed.all_reduce(t)
            loss = t.item() / world
        lr = scheduler.get_last_lr()[0]
        last = {"step": done, "loss": loss, "lr": lr, "elapsed_s": round(time.time() - t0, 2)}
        if val_step:
            val_last = _validate(module, adapter, objective, val, o, engine.device)
            val_curve.append({"step": done, **val_last})
            last.update(val_last)
        if rank == 0:
            shown = {"val": f"{val_last['val_loss']:.4f}"} if val_last else {}
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", **shown)
        if log_step:
            # the network's own CE: for GFT that of ℓ_s(x | c, β) alone, before mixing in the unconditional logits
            last["own_loss"] = round(sum(own_losses) / len(own_losses), 5)
            if stream is not None:  # unreadable samples skipped by all ranks since this process started
                unreadable = torch.tensor([stream.skipped])
                if world > 1:
                    torch.distributed.all_reduce(unreadable)
                last["skipped_samples"] = int(unreadable.item())
            train_log.write(last)
        if (o.save_every and done % o.save_every == 0) or done == o.steps:
            checkpoint(done)
        if o.export_every and done % o.export_every == 0 and done != o.steps:
            state = E.consolidated_state_dict(module, stage, rank)
            if rank == 0:
                module.save_pretrained(out / "snapshots" / f"step-{done:06d}", state_dict=state)
    bar.close()
    summary = {"family": family_name, "objective": o.objective, "steps": o.steps, "params": n_params,
               "final_loss": last.get("loss"), "wall_s": round(time.time() - t0, 1), "model": str(out / "model"),
               "world_size": world, "zero_stage": stage, "params_per_rank": held.tolist(), "skipped_steps": skipped}
    if "skipped_samples" in last:
        summary["skipped_samples"] = last["skipped_samples"]
    if val_curve:
        summary.update(val_curve[-1])
        summary.pop("step")
        summary["val_curve"] = val_curve
    summary["dataset"] = dataset["name"]
    summary["flip"] = o.flip
    log(json.dumps(summary))
    engine.destroy()
    return summary


def option_dict(o: TrainOptions) -> dict:
    return dataclasses.asdict(o)


def train_cli(family_name: str, options_cls: type = TrainOptions, argv=None, *, description: str | None = None,
              describe_preset=lambda name, dims: f"{name:10s} {dims}") -> dict | None:
    """The command line of ``scripts/train_<family>.py``: every field of ``options_cls`` as a flag (defaults, then
    ``--config`` YAML, then flags), ``--list-presets`` (one line per preset from ``describe_preset``), then
    :func:`train`. Wrap the caller in :func:`gft_tokens.errors.cli_main` for clean errors."""
    import argparse

    from ..config import add_arguments, load_yaml, resolve

    from ..validate import ArgumentParser

    parser = ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of training options (keys as the flags, with _), "
                                         "plus `model:` config overrides")
    parser.add_argument("--list-presets", action="store_true", help="print the model presets and exit")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher
    add_arguments(parser, options_cls, "training options")
    args = parser.parse_args(argv)
    if args.list_presets:
        for name, dims in get_family(family_name).presets.items():
            print(describe_preset(name, dims))
        return None
    options = resolve(options_cls, load_yaml(args.config) if args.config else None, args,
                      where=args.config or "command line")
    return train(family_name, options)
