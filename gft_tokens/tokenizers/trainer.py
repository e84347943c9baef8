"""Training loop for the image tokenizers (single process; the tokenizers are small).

A YAML recipe names the tokenizer ``type`` (a config ``model_type``), its ``model`` options, and any of the
:class:`TokenizerTrainOptions` at top level; command-line flags override the file.

Data: the embedded shapes (rendered, ``train_images`` + a held-out split of ``eval_images``) or, with ``data:`` /
``--data``, your own images — an image folder with one sub-folder per class or a shard pattern of images
(``make_shards.py``). Those are read once, centre-cropped to the image size, and a held-out part
(``eval_fraction`` of them, at most ``eval_images``) is kept out of training for the PSNR / codebook-usage
evaluations. The image size is the recipe's ``model.image_size``, or ``--image-size``, or (when the recipe gives
none) the data's; a recipe whose size differs from the data's is refused unless ``--image-size`` says which to use.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..config import check_keys, opt, to_dict
from ..data.shapes import ShapesDataset, heldout
from ..data.shards import data_image_size, load_labelled_images
from ..errors import GFTError
from ..optim import warmup_cosine
from ..pretrained import build_config
from ..fs import check_replaceable, check_writable, load_safetensors, load_torch_file
from . import TOKENIZER_CLASSES
from .losses import codebook_usage, psnr, reconstruction_loss


@dataclass
class TokenizerTrainOptions:
    out: str = opt("tokenizers/shapes-vq", "output directory (config.json + model.safetensors + recipe + log)")
    steps: int = opt(3000, "optimisation steps", min=1)
    batch_size: int = opt(64, "images per step", min=1)
    lr: float = opt(1e-3, "peak learning rate (AdamW, cosine decay to 10% after warm-up)", gt=0)
    warmup_steps: int = opt(100, "linear warm-up steps", min=0)
    weight_decay: float = opt(0.0, "AdamW weight decay", min=0)
    grad_clip: float = opt(1.0, "gradient-norm clipping (0 disables)", min=0)
    l1_weight: float = opt(0.2, "weight of the L1 term added to the MSE reconstruction loss", min=0)
    data: str = opt("shapes", "training images: 'shapes' (the embedded data, rendered) or your own: an image folder "
                              "(one sub-folder per class) or a shard pattern of images, e.g. 'shards/mine/*.tar'")
    image_size: int | None = opt(None, "train at this image size, centre-cropping/resizing the data to it (default: "
                                       "the recipe's model image_size; with --data and none in the recipe, the data's)", min=1)
    flip: bool = opt(True, "random horizontal flips of the training images (off for digits, text, charts)")
    train_images: int = opt(20000, "size of the rendered training pool (embedded shapes data, seed `seed`)", min=1)
    eval_images: int = opt(1000, "held-out images for PSNR / codebook usage (with --data: at most this many)", min=1)
    eval_fraction: float = opt(0.1, "with --data: fraction of the images held out for PSNR / codebook usage", gt=0, lt=1)
    eval_every: int = opt(500, "evaluate every N steps (0: only at the end)", min=0)
    seed: int = opt(0, "seed of the training data and of the initialisation")
    threads: int = opt(0, "torch CPU threads (0: leave torch's default)", min=0, max=4096)
    save_every: int = opt(500, "checkpoint every N steps into <out>.checkpoints, removed once the tokenizer is "
                               "saved (0: no checkpoints)", min=0)
    keep_last: int = opt(2, "keep the N newest checkpoints (0 keeps all)", min=0)
    resume: bool = opt(False, "continue from the newest complete checkpoint in <out>.checkpoints")
    overwrite: bool = opt(False, "replace <out> even if it holds files other than a tokenizer's")


SHIPPED_OUTS = {(Path(__file__).resolve().parents[2] / "tokenizers" / n).resolve() for n in
                ("shapes-vq", "shapes-msvq", "shapes-kl", "shapes-probe")}

RESUME_KEYS = ("batch_size", "train_images", "seed", "l1_weight", "weight_decay", "data", "image_size", "flip",
               "eval_fraction", "eval_images")


class DeadCodeCounter:
    """Counts the dead-code restarts (codes re-seeded from batch vectors because their EMA cluster size fell
    below ``dead_code_threshold``) of every vector-quantize codebook in a tokenizer, while training."""

    def __init__(self, tok):
        self.total, self._books = 0, []
        for module in tok.modules():
            if getattr(module, "has_dead_code_replacement", False) and hasattr(module, "replace"):
                self._wrap(module)

    def _wrap(self, book) -> None:
        original = book.replace

        def counted(batch_samples, batch_mask, seq_mask=None):
            for samples, mask in zip(batch_samples, batch_mask):  # per head: at most as many as there are vectors
                self.total += min(int(mask.sum()), int(samples.shape[0]))
            return original(batch_samples, batch_mask=batch_mask, seq_mask=seq_mask)

        book.replace = counted
        self._books.append(book)

    @property
    def active(self) -> bool:
        return bool(self._books)

    def close(self) -> None:
        for book in self._books:
            del book.replace  # back to the class's method
        self._books = []


def checkpoint_root(o: TokenizerTrainOptions) -> Path:
    """Where the resumable checkpoints of a run writing ``o.out`` live (beside it)."""
    out = Path(o.out)
    return out.parent / f"{out.name}.checkpoints"


def _save_checkpoint(root: Path, step: int, tok, optimizer, gen: torch.Generator, state: dict, keep_last: int):
    from ..train import checkpoints as CK

    tmp = CK.begin(root, step)
    save_file({k: v.detach().contiguous() for k, v in tok.state_dict().items()}, str(tmp / "tokenizer.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({"torch_rng": torch.get_rng_state(), "generator": gen.get_state()}, tmp / "rng.pt")
    (tmp / "training_state.json").write_text(json.dumps({**state, "step": step}, indent=1) + "\n")
    CK.commit(root, step, keep_last)


def _load_checkpoint(directory: Path, tok, optimizer, gen: torch.Generator, state: dict) -> dict:
    """Restore a checkpoint written by :func:`_save_checkpoint`; returns its training state (step, log)."""
    from ..pretrained import check_state_dict

    try:
        saved = json.loads((directory / "training_state.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise GFTError(f"checkpoint {directory} has no readable training_state.json") from None
    if saved.get("type") != state["type"] or saved.get("model") != state["model"]:
        raise GFTError(f"cannot resume: {directory} trained a {saved.get('type')!r} tokenizer with model options "
                       f"{saved.get('model')}, this run asks for {state['type']!r} with {state['model']}")
    was, mine = saved.get("options", {}), state["options"]
    diffs = [k for k in RESUME_KEYS if k in was and was[k] != mine[k]]
    if diffs:
        raise GFTError("cannot resume: options differ from the checkpoint's: "
                       + ", ".join(f"{k} ({was[k]!r} → {mine[k]!r})" for k in diffs))
    weights = load_safetensors(directory / "tokenizer.safetensors")
    check_state_dict(tok.state_dict(), weights, str(directory))
    tok.load_state_dict(weights)
    try:
        optimizer.load_state_dict(load_torch_file(directory / "optimizer.pt"))
    except (ValueError, KeyError) as exc:
        if isinstance(exc, GFTError):
            raise
        raise GFTError(f"optimizer state in {directory} does not fit this tokenizer ({exc})") from None
    rng = load_torch_file(directory / "rng.pt")
    torch.set_rng_state(rng["torch_rng"])
    gen.set_state(rng["generator"])
    return saved


def split_recipe(recipe: dict, where: str) -> tuple[str, dict, dict]:
    """(tokenizer type, model options, train options) of a recipe mapping."""
    check_keys(recipe, {"type", "model", *TokenizerTrainOptions.__dataclass_fields__}, where)
    kind = recipe.get("type", "gft_vq_tokenizer")
    if kind not in TOKENIZER_CLASSES:
        raise GFTError(f"unknown tokenizer type {kind!r} in {where}; known: {sorted(TOKENIZER_CLASSES)}")
    model = recipe.get("model") or {}
    if not isinstance(model, dict):
        raise GFTError(f"'model' in {where} must be a mapping of tokenizer options")
    train = {k: v for k, v in recipe.items() if k not in ("type", "model")}
    return kind, model, train


def _lr_at(step: int, o: TokenizerTrainOptions) -> float:
    return o.lr * warmup_cosine(step, o.steps, o.warmup_steps, 0.1)


@torch.no_grad()
def evaluate_tokenizer(tok, images: torch.Tensor, batch_size: int = 250) -> dict:
    """PSNR and codebook usage of ``tok`` on ``images`` (eval mode; the codebook is not updated).

    A multi-scale tokenizer's ``encode`` returns a list of code maps: usage is then reported over all scales
    together and per scale (``usage_per_scale``).
    """
    was_training = tok.training
    tok.eval()
    recons, codes = [], []
    for i in range(0, len(images), batch_size):
        c = tok.encode(images[i : i + batch_size])
        codes.append(list(c) if isinstance(c, (list, tuple)) else [c])
        recons.append(tok.decode(c))
    tok.train(was_training)
    per_scale = [torch.cat([batch[s] for batch in codes]) for s in range(len(codes[0]))]
    stats = {"psnr": psnr(torch.cat(recons), images)}
    if not hasattr(tok, "codebook_size"):  # continuous latents (KL autoencoder): no codebook to count
        stats["latent_std"] = float(per_scale[0].float().std())
        return stats
    stats.update(codebook_usage(torch.cat([c.flatten() for c in per_scale]), tok.codebook_size))
    if len(per_scale) > 1:
        stats["usage_per_scale"] = [round(codebook_usage(c, tok.codebook_size)["usage"], 4) for c in per_scale]
    return stats


def _image_size(model_options: dict, o: TokenizerTrainOptions, where: str) -> dict:
    """The model options with ``image_size`` settled from the recipe, ``--image-size`` and the data."""
    if o.image_size is not None:
        if o.image_size <= 0:
            raise GFTError(f"--image-size must be positive, got {o.image_size}")
        return {**model_options, "image_size": o.image_size}
    if o.data == "shapes":
        return model_options
    found = data_image_size(o.data)
    given = model_options.get("image_size")
    if given is None:
        return {**model_options, "image_size": found} if found else model_options
    if found is not None and int(given) != found:
        raise GFTError(f"the images of {o.data} are {found} px, the recipe {where} says image_size {given}: pass "
                       f"--image-size {given} to resize them or --image-size {found} to train at the data's size")
    return model_options


def _own_images(o: TokenizerTrainOptions, size: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(training pool, held-out images, the data's metadata) of ``--data``: the held-out part comes first."""
    if not 0.0 < o.eval_fraction < 1.0:
        raise GFTError(f"eval_fraction must lie in (0, 1), got {o.eval_fraction}")
    images, _, meta = load_labelled_images(o.data, size=size, seed=o.seed, desc="read images")
    n_eval = max(1, min(o.eval_images, int(round(len(images) * o.eval_fraction))))
    if len(images) - n_eval < 1:
        raise GFTError(f"{o.data} has only {len(images)} readable image(s): too few to hold {n_eval} out")
    return images[n_eval:], images[:n_eval], meta
TOKENIZER_FILES = {"config.json", "model.safetensors", "manifest.json", "recipe.yaml", "train_log.jsonl"}  # what a save writes


def train_tokenizer(kind: str, model_options: dict, o: TokenizerTrainOptions, where: str = "recipe") -> dict:
    """Train a tokenizer on the embedded shapes data or ``o.data`` and save it to ``o.out``; returns the final
    metrics (held-out PSNR, codebook usage, dead-code restarts)."""
    if o.threads:
        torch.set_num_threads(o.threads)
    if o.steps <= 0 or o.batch_size <= 0:
        raise GFTError("steps and batch_size must be positive")
    if o.data != "shapes" and Path(o.out).resolve() in SHIPPED_OUTS:
        raise GFTError(f"with --data give --out: {o.out} is a shipped tokenizer of the embedded data")
    cls = TOKENIZER_CLASSES[kind]
    model_options = _image_size(model_options, o, where)
    config = build_config(cls.config_class, model_options, where)
    check_writable(o.out)
    check_replaceable(o.out, TOKENIZER_FILES.__contains__, o.overwrite)  # refused now, not after training
    torch.manual_seed(o.seed)
    tok = cls(config).train()
    n_params = sum(p.numel() for p in tok.parameters())

    size = config.image_size
    t0 = time.time()
    if o.data == "shapes":
        train_set = ShapesDataset(length=o.train_images, size=size, seed=o.seed)
        pool = torch.stack([train_set[i][0] for i in tqdm(range(len(train_set)), desc="render train", leave=False)])
        eval_images, _ = heldout(length=o.eval_images, size=size).tensors()
        source = "rendered shapes"
    else:
        pool, eval_images, meta = _own_images(o, size)
        source = f"{o.data} ({meta.get('num_classes')} classes)"
    tqdm.write(f"tokenizer {kind}: {n_params / 1e6:.2f}M params, {size} px, grid {tok.grid_size}, "
               f"{len(pool)} train / {len(eval_images)} held-out images of {source} read in {time.time() - t0:.1f}s, "
               f"flips {'on' if o.flip else 'off'}")
    dead = DeadCodeCounter(tok)
    if hasattr(tok, "codebook_size"):
        if dead.active:
            tqdm.write(f"dead-code restarts on: codes whose EMA cluster size falls below "
                       f"{getattr(config, 'dead_code_threshold', '?')} are re-seeded from batch vectors")
        else:
            tqdm.write("warning: dead-code restarts are off (dead_code_threshold 0): the codebook may collapse")
    restarts_logged = 0

    optimizer = torch.optim.AdamW(tok.parameters(), lr=o.lr, betas=(0.9, 0.95), weight_decay=o.weight_decay)
    gen = torch.Generator().manual_seed(o.seed)
    log: list[dict] = []
    ckpt_root, start = checkpoint_root(o), 0
    state = {"type": kind, "model": json.loads(json.dumps(model_options)), "options": to_dict(o)}
    if o.resume:
        from ..train.checkpoints import latest_tag

        tag = latest_tag(ckpt_root, log=tqdm.write)
        if tag is None:
            tqdm.write(f"--resume: no checkpoint in {ckpt_root}; starting from scratch")
        else:
            saved = _load_checkpoint(ckpt_root / tag, tok, optimizer, gen, state)
            start, log = int(saved["step"]), list(saved.get("log", []))
            tqdm.write(f"resumed from {ckpt_root / tag} at step {start}")
    loss_name = getattr(tok, "loss_name", "vq_loss")  # the regulariser: VQ commitment/codebook or KL
    t0 = time.time()
    bar = tqdm(range(start, o.steps), desc="train tokenizer", dynamic_ncols=True, initial=start, total=o.steps)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, o)
        batch = pool[torch.randint(len(pool), (o.batch_size,), generator=gen)]
        if o.flip:
            flipped = torch.rand(len(batch), generator=gen) < 0.5
            batch = torch.where(flipped[:, None, None, None], batch.flip(-1), batch)
        recon, codes, vq_loss = tok(batch)
        rec = reconstruction_loss(recon, batch, o.l1_weight)
        loss = rec + vq_loss
        if not torch.isfinite(loss):
            raise GFTError(f"non-finite tokenizer loss at step {step + 1}; lower the learning rate (checkpoints in "
                           f"{ckpt_root}, if any, are intact: --resume continues from the newest)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(tok.parameters(), o.grad_clip)
        optimizer.step()
        if step % 10 == 0:
            bar.set_postfix(rec=f"{rec.item():.4f}", reg=f"{vq_loss.item():.4f}", psnr=f"{psnr(recon.detach(), batch):.1f}")
        last = step == o.steps - 1
        if last or (o.eval_every and (step + 1) % o.eval_every == 0):
            stats = evaluate_tokenizer(tok, eval_images)
            entry = {"step": step + 1, "rec_loss": round(rec.item(), 5), loss_name: round(vq_loss.item(), 5),
                     **{k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()},
                     "elapsed_s": round(time.time() - t0, 1)}
            if dead.active:  # restarts since the previous evaluation, and since the start of this process
                entry["dead_code_restarts"] = dead.total - restarts_logged
                entry["dead_code_restarts_total"] = dead.total
                restarts_logged = dead.total
            log.append(entry)
            tqdm.write(json.dumps(entry))
        if o.save_every and (step + 1) % o.save_every == 0 and not last:
            _save_checkpoint(ckpt_root, step + 1, tok, optimizer, gen, {**state, "log": log}, o.keep_last)
    bar.close()
    dead.close()

    tok.eval()
    if hasattr(tok, "calibrate"):  # continuous latents: measure the normalising scale on training images
        log[-1]["latent_scale"] = round(tok.calibrate(pool[:4000]), 5)
        tqdm.write(f"latent_scale {tok.config.latent_scale:.5f} (1 / std of posterior draws on {min(len(pool), 4000)}"
                   " training images)")
    recipe = {"type": kind, "model": model_options, **to_dict(o)}
    tok.save_pretrained(
        o.out, overwrite=o.overwrite,
        extra_files={
            "recipe.yaml": yaml.safe_dump(recipe, sort_keys=False),
            "train_log.jsonl": "".join(json.dumps(e) + "\n" for e in log),
        },
    )
    shutil.rmtree(ckpt_root, ignore_errors=True)  # the saved tokenizer supersedes them
    final = {**log[-1], "params": n_params, "out": o.out}
    usage = (f"codebook usage {final['usage']:.1%}, perplexity {final['perplexity']:.0f}" if "usage" in final
             else f"latent scale {final['latent_scale']:.4f}")
    if "dead_code_restarts_total" in final:
        usage += f", {final['dead_code_restarts_total']} dead-code restarts"
    tqdm.write(f"saved {o.out}: held-out PSNR {final['psnr']:.2f} dB on {len(eval_images)} images, {usage}, "
               f"{final['elapsed_s']:.0f}s")
    return final
