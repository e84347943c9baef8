"""The probe: a small CNN that classifies the embedded shapes data and gives the features the metrics use.

It is trained (``scripts/train_probe.py``, about 1.5 minutes on a 2-core CPU, deterministic for a seed) on its own split of
the shapes data — a seed that neither the generators' training split (0) nor the held-out split uses — to
predict the class, and, as an auxiliary regression, the shape's position, size, colour and background colour.
The auxiliary targets make the 128-wide penultimate layer (the *features*) carry the within-class variation a
generator must reproduce, not only the class, so FID and precision/recall notice a collapse of positions or
colours and not just a wrong shape. Augmentation: the eight flips/transposes of the square (every shape class has
a mirror axis and appears at every rotation, so these stay in the data distribution; position targets are
transformed with the image), and random blur and noise (the softness and grain a tokenizer's decoder adds).

The shipped weights live in ``tokenizers/shapes-probe`` (config.json + model.safetensors + recipe + log).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig

from ..config import opt, to_dict
from ..data.shapes import NUM_CLASSES, ShapesDataset, heldout
from ..errors import GFTError
from ..pretrained import GFTPreTrainedModel
from .features import ExtractorOutput, register_extractor

PROBE_SEED = 2_000_029  # the probe's training split: neither the generators' (0) nor the held-out one
NUM_AUX = 9  # cx, cy, size, foreground rgb, background rgb


class ProbeConfig(PretrainedConfig):
    model_type = "gft_shapes_probe"

    def __init__(self, image_size: int = 32, channels: tuple[int, ...] | list[int] = (16, 32, 64),
                 convs_per_level: int = 1, feature_dim: int = 128, num_classes: int = NUM_CLASSES,
                 num_aux: int = NUM_AUX, dataset: dict | None = None, **kwargs):
        self.image_size = int(image_size)
        self.channels = [int(c) for c in channels]
        self.convs_per_level = int(convs_per_level)
        self.feature_dim, self.num_classes, self.num_aux = int(feature_dim), int(num_classes), int(num_aux)
        self.dataset = dataset  # {name, class_names} of the data it was trained on; None: the embedded shapes
        super().__init__(**kwargs)
        if self.image_size % (2 ** len(self.channels)):
            raise GFTError(f"image_size {self.image_size} is not divisible by 2^{len(self.channels)}")


def conv_trunk(c_in: int, channels, convs_per_level: int, image_size: int,
               feature_dim: int) -> tuple[nn.Sequential, nn.Linear]:
    """The probes' trunk: per level of ``channels``, 3x3 conv(s) + BN + ReLU then halve the resolution; and the
    Linear from the last map, flattened (not pooled: it keeps where things are), to ``feature_dim`` features."""
    layers = []
    for width in channels:
        for _ in range(convs_per_level):
            layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            c_in = width
        layers.append(nn.MaxPool2d(2))
    side = image_size // 2 ** len(channels)
    return nn.Sequential(*layers), nn.Linear(c_in * side * side, feature_dim)


class ProbeModel(GFTPreTrainedModel):
    """What the probes share: images in, and a ``fingerprint`` of their config and weights."""

    main_input_name = "images"
    name = "probe"

    @property
    def fingerprint(self) -> str:
        """sha256 of the config and the weights (independent of where they were loaded from)."""
        h = hashlib.sha256(json.dumps(self.config.to_diff_dict(), sort_keys=True, default=str).encode())
        for key, value in sorted(self.state_dict().items()):
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        return f"{self.name}-{h.hexdigest()[:16]}"


class ShapesProbe(ProbeModel):
    """Images (B, 3, H, W) in [-1, 1] → features (B, 128), class logits (B, 10), auxiliary regression (B, 9).

    Implements the :class:`~gft_tokens.eval.features.FeatureExtractor` protocol (``extract``).
    """

    config_class = ProbeConfig

    def __init__(self, config: ProbeConfig):
        super().__init__(config)
        c = config
        self.convs, self.fc = conv_trunk(3, c.channels, c.convs_per_level, c.image_size, c.feature_dim)
        self.classifier = nn.Linear(c.feature_dim, c.num_classes)
        self.aux = nn.Linear(c.feature_dim, c.num_aux) if c.num_aux else None  # none for class-only probes
        self.post_init()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.config
        if images.ndim != 4 or images.shape[1:] != (3, c.image_size, c.image_size):
            raise GFTError(f"the probe takes images (B, 3, {c.image_size}, {c.image_size}), got {tuple(images.shape)}")
        features = F.relu(self.fc(self.convs(images).flatten(1)))
        aux = self.aux(features) if self.aux is not None else features.new_zeros(len(features), 0)
        return features, self.classifier(features), aux

    # -- the FeatureExtractor protocol ---------------------------------------------------------------------------
    name = "shapes-probe"

    @property
    def dataset(self) -> str:
        """The data the probe was trained on (``dataset`` of its config; the embedded shapes when absent)."""
        return (self.config.dataset or {}).get("name") or "shapes"

    @property
    def feature_dim(self) -> int:
        return self.config.feature_dim

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> ExtractorOutput:
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            features, logits, _ = self(images.to(device=device, dtype=torch.float32))
            return ExtractorOutput(features, torch.softmax(logits.float(), dim=-1))
        finally:
            self.train(was_training)


register_extractor(ProbeConfig.model_type, ShapesProbe)


# -- training ------------------------------------------------------------------------------------------------------
@dataclass
class ProbeTrainOptions:
    out: str = opt("tokenizers/shapes-probe", "output directory (config.json + model.safetensors + recipe + log); "
                                              "required with --data")
    data: str = opt("shapes", "training data: 'shapes' (rendered, with the auxiliary targets) or any labelled "
                              "images: an image folder (one sub-folder per class) or a shard pattern of images")
    eval_fraction: float = opt(0.1, "with --data: fraction of the images held out for the accuracy (at most "
                                    "eval_images)", gt=0, lt=1)
    flip: bool = opt(True, "with --data: random horizontal flips (off for digits, text, charts)")
    train_images: int = opt(5000, "rendered training images (shapes data, the probe's own seed)", min=1)
    eval_images: int = opt(1000, "held-out images to report accuracy on (balanced)", min=1)
    steps: int = opt(2000, "optimisation steps", min=1)
    batch_size: int = opt(64, "images per step", min=1)
    lr: float = opt(3e-3, "peak learning rate (AdamW, cosine to 0 after warm-up)", gt=0)
    warmup_steps: int = opt(50, "linear warm-up steps", min=0)
    weight_decay: float = opt(1e-4, "AdamW weight decay", min=0)
    aux_weight: float = opt(1.0, "weight of the auxiliary regression (position, size, colours) loss", min=0)
    tokenizer: str | None = opt("tokenizers/shapes-vq", "also report accuracy on this tokenizer's reconstructions "
                                                        "of the held-out images ('' to skip; with --data: only when "
                                                        "given)")
    seed: int = opt(0, "seed of initialisation, batch order and augmentation")
    threads: int = opt(0, "torch CPU threads (0: leave torch's default)", min=0, max=4096)


def dataset_record_classes(record: dict) -> int:
    return len(record["class_names"])


def aux_targets(ds: ShapesDataset, indices) -> torch.Tensor:
    """Normalised regression targets (N, 9): centre, size, foreground and background colour."""
    rows = []
    for i in indices:
        p = ds.params(i)
        rows.append([p.cx / 0.3, p.cy / 0.3, (p.size - 0.45) / 0.065, *(2 * v - 1 for v in p.fg),
                     *(4 * v - 1 for v in p.bg)])
    return torch.tensor(rows, dtype=torch.float32)


def degrade(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random blur (a per-image mix of the sharp and a Gaussian-blurred image) and noise, applied to half the
    images each: the softness and grain a tokenizer's decoder adds, so generated images are classified like real
    ones."""
    n = len(images)
    k = torch.tensor([1.0, 2.0, 1.0])
    kernel = (k[:, None] * k[None, :] / 16.0).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    blurred = F.conv2d(F.pad(blurred, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    alpha = torch.rand(n, generator=generator) * (torch.rand(n, generator=generator) < 0.5)
    out = images + alpha.view(n, 1, 1, 1) * (blurred - images)
    sigma = 0.06 * torch.rand(n, generator=generator) * (torch.rand(n, generator=generator) < 0.5)
    out = out + sigma.view(n, 1, 1, 1) * torch.randn(out.shape, generator=generator)
    return out.clamp(-1.0, 1.0)


def d4_augment(images: torch.Tensor, aux: torch.Tensor, generator: torch.Generator):
    """Random flips of each axis and a random transpose, applied to images and to the centre targets."""
    images, aux = images.clone(), aux.clone()
    n = len(images)
    flip_x, flip_y, swap = (torch.rand(n, generator=generator) < 0.5 for _ in range(3))
    images[flip_x] = images[flip_x].flip(-1)
    aux[flip_x, 0] *= -1
    images[flip_y] = images[flip_y].flip(-2)
    aux[flip_y, 1] *= -1
    images[swap] = images[swap].transpose(-1, -2)
    aux[swap, 0], aux[swap, 1] = aux[swap, 1].clone(), aux[swap, 0].clone()
    return images, aux


@torch.no_grad()
def probe_accuracy(probe: ShapesProbe, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    hits = 0
    for i in range(0, len(images), batch_size):
        hits += int((probe.extract(images[i:i + batch_size]).probs.argmax(-1) == labels[i:i + batch_size]).sum())
    return hits / len(images)


def _own_data(o: ProbeTrainOptions):
    """(train images, labels, held-out images, labels, dataset record, image size) of ``o.data``."""
    from ..data.shards import dataset_record, load_labelled_images

    if o.out == ProbeTrainOptions.out:
        raise GFTError("with --data give --out (the default is the shipped shapes probe)")
    if not 0.0 < o.eval_fraction < 1.0:
        raise GFTError(f"eval_fraction must lie in (0, 1), got {o.eval_fraction}")
    images, labels, meta = load_labelled_images(o.data, seed=o.seed, desc="read images")
    n_eval = max(1, min(o.eval_images, int(round(len(images) * o.eval_fraction))))
    if len(images) - n_eval < 1:
        raise GFTError(f"{o.data} has only {len(images)} readable image(s): too few to hold {n_eval} out")
    record = dataset_record(meta, o.data, int(meta["num_classes"]))
    return images[n_eval:], labels[n_eval:], images[:n_eval], labels[:n_eval], record, int(meta["image_size"])


PROBE_FILES = {"config.json", "model.safetensors", "manifest.json", "recipe.yaml", "train_log.jsonl"}  # what a save writes


def probe_optimizer(probe: nn.Module, o):
    """AdamW (decay on matrices, none on norms and biases) with linear warm-up then cosine decay to 0 over
    ``o.steps`` — the probes' recipe (``o``: options with lr, weight_decay, warmup_steps, steps)."""
    decay = [p for p in probe.parameters() if p.ndim > 1]
    no_decay = [p for p in probe.parameters() if p.ndim <= 1]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=o.lr)

    def lr_at(step):
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        return 0.5 * (1 + np.cos(np.pi * (step - o.warmup_steps) / max(1, o.steps - o.warmup_steps)))

    return optim, torch.optim.lr_scheduler.LambdaLR(optim, lr_at)


def start_probe_run(o):
    """Before a probe's training (``o``: its options): set ``o.threads``; refuse, up front rather than after
    minutes of training, an output folder the save would refuse (unwritable, or holding files other than
    :data:`PROBE_FILES`); return the tokenizer ``o.tokenizer`` whose reconstructions are scored (None for '')."""
    from ..fs import check_replaceable, check_writable
    from ..paths import shipped
    from ..tokenizers import load_tokenizer

    if o.threads:
        torch.set_num_threads(o.threads)
    check_writable(o.out)
    check_replaceable(o.out, PROBE_FILES.__contains__)
    return load_tokenizer(shipped(o.tokenizer)) if o.tokenizer else None


def fit_probe(probe: nn.Module, o, n_train: int, step_loss, log, cpu_time: bool = False):
    """Train ``probe`` on ``n_train`` examples with the probes' recipe (:func:`probe_optimizer`; ``o.steps`` batches
    of ``o.batch_size`` drawn without replacement, reshuffled when too few are left, from a generator seeded
    ``o.seed``). ``step_loss(idx, gen)`` gives the loss of the batch ``idx`` (augmenting with ``gen``) and a
    function returning what the log records of it, called every 100 steps and at the last (with ``elapsed_s``,
    and ``cpu_s`` when ``cpu_time``). Returns the log entries and the (wall-clock, CPU) time training started;
    the probe is left in eval mode."""
    optim, sched = probe_optimizer(probe, o)
    gen = torch.Generator().manual_seed(o.seed)
    history = []
    probe.train()
    t1, c1 = time.time(), time.process_time()
    batch = min(o.batch_size, n_train)
    perm, pos = torch.randperm(n_train, generator=gen), 0
    for step in range(o.steps):
        if pos + batch > n_train:
            perm, pos = torch.randperm(n_train, generator=gen), 0
        idx = perm[pos:pos + batch]
        pos += batch
        loss, logged = step_loss(idx, gen)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sched.step()
        if (step + 1) % 100 == 0 or step + 1 == o.steps:
            entry = {"step": step + 1, **logged(), "elapsed_s": round(time.time() - t1, 1)}
            if cpu_time:
                entry["cpu_s"] = round(time.process_time() - c1, 1)
            history.append(entry)
            log(json.dumps(entry))
    probe.eval()
    return history, (t1, c1)


@torch.no_grad()
def reconstructions(tokenizer, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """``images`` encoded and decoded by ``tokenizer``, ``batch_size`` at a time."""
    return torch.cat([tokenizer.decode(tokenizer.encode(images[i:i + batch_size]))
                      for i in range(0, len(images), batch_size)])


def save_probe(probe: nn.Module, o, history: list[dict], result: dict) -> None:
    """Save a trained probe to ``o.out`` with its recipe (the options ``o``) and its log (then the result)."""
    import yaml

    recipe = yaml.safe_dump(to_dict(o), sort_keys=False)
    logs = "".join(json.dumps(e) + "\n" for e in [*history, result])
    probe.save_pretrained(o.out, extra_files={"recipe.yaml": recipe, "train_log.jsonl": logs})


def train_probe(o: ProbeTrainOptions, log=print) -> dict:
    """Train the probe, save it to ``o.out`` (with its recipe and log) and return the final metrics."""
    if o.steps <= 0 or o.batch_size <= 0 or o.train_images <= 0 or o.eval_images <= 0:
        raise GFTError("steps, batch_size, train_images and eval_images must be positive")
    tokenizer = start_probe_run(o)
    t0 = time.time()
    own = o.data != "shapes"
    if own:  # class labels only: no auxiliary targets (num_aux 0)
        images, labels, val_images, val_labels, dataset, size = _own_data(o)
        targets = torch.zeros(len(images), 0)
        config = ProbeConfig(image_size=size, num_classes=dataset_record_classes(dataset), num_aux=0,
                             dataset=dataset)
        log(f"read {len(images)} training and {len(val_images)} held-out images of {o.data} "
            f"({config.num_classes} classes, {size} px) in {time.time() - t0:.1f}s")
        if o.tokenizer == ProbeTrainOptions.tokenizer:  # the shapes tokenizer says nothing about your data
            tokenizer = None
        elif tokenizer is not None and tokenizer.image_size != size:
            log(f"not scoring reconstructions: {o.tokenizer} takes {tokenizer.image_size} px images, the data is "
                f"{size} px")
            tokenizer = None
    else:
        ds = ShapesDataset(length=o.train_images, size=32, seed=PROBE_SEED)
        images, labels = ds.tensors()
        targets = aux_targets(ds, range(len(ds)))
        val_images, val_labels = heldout(o.eval_images).tensors()
        config = ProbeConfig()
        log(f"rendered {len(ds)} training and {len(val_images)} held-out images in {time.time() - t0:.1f}s")

    def step_loss(idx, gen):
        if own:  # your data: horizontal flips only (when on), blur and noise
            x, aux = images[idx], targets[idx]
            if o.flip:
                flipped = torch.rand(len(x), generator=gen) < 0.5
                x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
        else:
            x, aux = d4_augment(images[idx], targets[idx], gen)
        x = degrade(x, gen)
        _, logits, pred = probe(x)
        ce = F.cross_entropy(logits, labels[idx])
        reg = F.mse_loss(pred, aux) if aux.shape[1] else torch.zeros(())
        return ce + o.aux_weight * reg, lambda: {"ce": round(ce.item(), 5), "aux_mse": round(reg.item(), 5)}

    torch.manual_seed(o.seed)
    probe = ShapesProbe(config)
    history, (t1, _) = fit_probe(probe, o, len(images), step_loss, log)
    result = {"heldout_accuracy": probe_accuracy(probe, val_images, val_labels), "heldout_images": len(val_images),
              "dataset": probe.dataset,
              "train_s": round(time.time() - t1, 1), "total_s": round(time.time() - t0, 1)}
    if tokenizer is not None:
        result["heldout_reconstruction_accuracy"] = probe_accuracy(probe, reconstructions(tokenizer, val_images),
                                                                   val_labels)
        result["reconstruction_tokenizer"] = o.tokenizer
    result["fingerprint"] = probe.fingerprint
    log(json.dumps(result))
    save_probe(probe, o, history, result)
    return result
