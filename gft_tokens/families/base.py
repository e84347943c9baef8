"""What a model family is: the record the registry holds, and the training adapter the shared loop drives.

A :class:`Family` names everything the CLIs, the training loop, the sweep and the benchmarks need to reach a family
— model and config classes, presets, the training :class:`Adapter`, the sampler, how sampled codes become the
tokenizer's input, the sampler's own options and the official-checkpoint formats it imports from. Nothing outside
``gft_tokens/families/`` branches on a family's name.

An :class:`Adapter` builds the model config from a preset, the tokenizer and the data, and turns a batch of codes
into what the objective consumes: ``logits_fn(cond, beta)``, the targets and an optional loss mask.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..data.codes import check_codes_match, shapes_codes
from ..errors import GFTError
from ..objectives import CROSS_ENTROPY, OBJECTIVES, GFTLossPlugin
from ..pretrained import config_keys


@dataclass
class LossInputs:
    logits_fn: Callable
    targets: torch.Tensor
    loss_mask: torch.Tensor | None = None


@dataclass(frozen=True)
class SamplerOption:
    """A family-specific sampling option (``steps``, ``order``, ``compile`` …), exposed as ``--<name>`` on the CLIs
    (a ``bool`` one as a ``--<name>`` / ``--no-<name>`` switch whose off form is the sampler's default)."""

    name: str
    type: type
    help: str
    choices: tuple | None = None
    min: float | None = None  # valid range (inclusive / exclusive lower bound), checked when the flag is parsed
    gt: float | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def arg_type(self):
        """The argparse ``type=``: numbers checked against the option's range (and finite)."""
        from ..validate import bounded

        return bounded(self.type, min=self.min, gt=self.gt) if self.type in (int, float) else self.type


@dataclass(frozen=True)
class CurveSize:
    """One model size of the speed curve (``bench_sampling.py --curve``): its preset, the batch sizes it is timed
    at and the timed runs per point (median; one at batches of ``LARGE_BATCH`` and more, where a run is long and
    steady). A size too slow for a CPU at some batch lists fewer batches."""

    preset: str
    batches: tuple[int, ...] = (1, 8, 32, 128)
    repeats: int = 1

    LARGE_BATCH = 128

    def repeats_at(self, batch: int) -> int:
        return self.repeats if batch < self.LARGE_BATCH else 1


@dataclass(frozen=True)
class BenchSpec:
    """How ``scripts/bench_sampling.py`` measures a family: its defaults and a random, trained-looking model.

    ``build(preset, vocab, grid)`` returns a model in eval mode with a non-zero output head (a fresh head is all
    zeros); ``vocab`` is None for continuous tokens. ``variants`` maps a key suffix to extra sampler options timed
    as well (e.g. the masked family's confidence order); ``cache``: whether the sampler has ``use_cache=False``
    to compare its KV cache against.

    For the end-to-end curve: ``tokenizer(vocab, grid, model)`` builds a random tokenizer of the family's shipped
    architecture that decodes the sampler's codes (through ``Family.to_tokenizer_input``) to pixels, and ``curve``
    lists the model sizes timed. ``forward_passes(model, labels, beta=…, cfg_scale=…)`` runs only the network
    passes one sampling call makes (no guidance mix, filtering or draw: the "bare forward" that
    ``--overhead`` compares the sampler with) and ``decode_step(model, labels, beta=…, cfg_scale=…)`` returns a
    prepared zero-argument call of one sampling step (``--profile``); None where a family has no such split.
    """

    build: Callable[..., Any]
    preset: str
    batch: int
    vocabs: tuple = (1024, 16384)
    repeats: int = 1
    cache: bool = True
    variants: dict = field(default_factory=lambda: {"": {}})
    options: dict = field(default_factory=dict)  # sampler options every timed run uses (e.g. steps)
    tokenizer: Callable[..., Any] | None = None
    curve: tuple[CurveSize, ...] = ()
    forward_passes: Callable[..., Any] | None = None
    decode_step: Callable[..., Any] | None = None


def _hint(word: str, known) -> str:
    close = difflib.get_close_matches(word, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Adapter:
    """How the shared training loop feeds one family (subclassed in ``families/<name>/adapter.py``)."""

    # what the model trains on: "codes" (integer ids of a VQ tokenizer) or "latents" (a continuous tokenizer's)
    inputs: str = "codes"
    # config fields the loop sets from the tokenizer and the data (not settable through model overrides)
    derived_keys: tuple[str, ...] = ("vocab_size", "grid_size", "num_classes", "tokenizer")
    # the GFT objective's loss plug-in: cross-entropy on logits, or MAR's ε-MSE
    loss: GFTLossPlugin = CROSS_ENTROPY

    def config(self, preset: str, tokenizer, num_classes: int, overrides: dict):
        raise NotImplementedError

    def token_shape(self, config) -> tuple[int, ...]:
        """Shape of one sample's codes as stored in the code dataset (after the views axis)."""
        raise NotImplementedError

    def loss_inputs(self, model, codes: torch.Tensor, generator: torch.Generator) -> LossInputs:
        raise NotImplementedError

    def prepare_model(self, model, tokenizer) -> None:
        """Give a freshly built (or initialised) model what it needs from the tokenizer; nothing by default."""

    def shapes_data(self, tokenizer, options, flip: bool | None = None):
        """The training data on the embedded shapes (``--data shapes``): codes and their conditions (each image
        also mirrored unless ``flip`` — default ``options.flip`` — is False)."""
        flip = getattr(options, "flip", True) if flip is None else flip
        return shapes_codes(tokenizer, options.tokenizer, options.train_images, seed=options.seed, flip=flip)

    def data_config(self, data) -> dict:
        """Config fields a fresh model takes from its training data (none by default; t2i: the caption width)."""
        return {}

    def check_source(self, data: str) -> None:
        """Refuse a training source (``--data``) this family cannot train on; every source by default is fine."""

    def check_data(self, data, config) -> None:
        """Refuse extracted training data that does not fit the model."""
        check_codes_match(data, config.vocab_size, self.token_shape(config))

    def fine_tune_config(self, data) -> dict:
        """Config fields a fine-tune (``--init-from``) takes from its own data rather than from the source model:
        what sampling must reproduce (none by default; t2i: the text encoder). The condition's shape stays the
        source model's and is checked against the data."""
        return {}

    def stream_options(self, options) -> dict:
        """Keyword arguments the family adds to its shard streams (:class:`~gft_tokens.data.shards.ShardStream`,
        and ``validation_codes`` for ``captions``); none by default (t2i: the captions and no flips)."""
        return {}

    def check_stream(self, stream, config) -> None:
        """Refuse a shard stream whose conditions do not fit the model (the codes are checked by the stream)."""

    def condition_record(self, data) -> dict | None:
        """What the conditions of ``data`` (extracted data or a shard stream) were made with, kept in every
        checkpoint and compared on ``--resume``; None (class ids) by default, t2i: the text encoder's record."""
        return None

    def check_resume(self, saved: dict, data, options, where) -> None:
        """Refuse to resume the checkpoint ``where`` (its training state ``saved``) with conditions made otherwise
        than by this run's; checked before anything of the checkpoint is loaded."""


def square_grid(tokenizer, family: str) -> int:
    h, w = tokenizer.grid_size
    if h != w:
        raise GFTError(f"the {family} family needs a square token grid, the tokenizer has {h}x{w}")
    return h


class RasterAdapter(Adapter):
    """A family over a VQ tokenizer's square grid of codes, read in raster order as (B, N)."""

    family = ""

    @staticmethod
    def config_fn(preset, **overrides):
        raise NotImplementedError

    def config(self, preset, tokenizer, num_classes, overrides):
        grid = square_grid(tokenizer, self.family)
        return self.config_fn(preset, vocab_size=tokenizer.codebook_size, grid_size=grid, num_classes=num_classes,
                              tokenizer=tokenizer.describe(), **overrides)

    def token_shape(self, config):
        return (config.grid_size, config.grid_size)


def raster_to_grid(model, codes: torch.Tensor) -> torch.Tensor:
    """A raster family's sampled codes (B, N) → the VQ tokenizer's input (B, g, g) (``Family.to_tokenizer_input``)."""
    g = model.config.grid_size
    return codes.view(codes.shape[0], g, g)


def raster_bench_model(model_class: type, config_fn: Callable[..., Any]) -> Callable[..., Any]:
    """``BenchSpec.build`` of a raster family whose fresh ``output`` head is all zeros: the preset at the given
    vocabulary and grid with 1000 classes, seeded, in eval mode, the head made random (trained-looking)."""

    def build(preset, vocab, grid):
        torch.manual_seed(0)
        model = model_class(config_fn(preset, vocab_size=vocab, grid_size=grid, num_classes=1000)).eval()
        torch.nn.init.normal_(model.output.weight, std=0.02)  # a trained-looking head (the fresh one is all zeros)
        return model

    return build


def vq_bench_tokenizer(vocab, grid, model):
    """The shipped VQ tokenizer's architecture (4x downsampling) at this grid and codebook, random weights
    (``BenchSpec.tokenizer`` of the raster families)."""
    from ..paths import shipped
    from ..tokenizers import random_tokenizer

    return random_tokenizer(shipped("tokenizers/shapes-vq"), codebook_size=vocab, image_size=4 * grid)


@dataclass(frozen=True)
class Family:
    """One model family, as the registry (:mod:`gft_tokens.families`) holds it."""

    name: str
    model_class: type  # a GFTPreTrainedModel subclass; ``model_class.config_class`` is its config
    config_fn: Callable[..., Any]  # config_fn(preset, **overrides) -> config
    presets: dict
    adapter: Adapter
    sample: Callable[..., torch.Tensor]  # sample(model, labels, *, beta, cfg_scale, cfg_schedule, …, stats)
    to_tokenizer_input: Callable  # (model, codes) -> what tokenizer.decode takes
    cfg_schedules: tuple[str, ...] = ("constant",)  # supported; the first is the default
    sampler_options: tuple[SamplerOption, ...] = ()
    importers: tuple[str, ...] = ()  # official-checkpoint format names (gft_tokens.importers)
    description: str = ""
    bench: BenchSpec | None = None
    text_conditioned: bool = False  # conditioned on captions (prompts through a text encoder), not class ids

    @property
    def config_class(self):
        return self.model_class.config_class

    @property
    def model_type(self) -> str:
        return self.config_class.model_type

    @property
    def train_script(self) -> str:
        return f"scripts/train_{self.name}.py"

    def build_config(self, preset: str, **overrides):
        """The config of ``preset`` plus ``overrides`` (an unknown preset is refused by ``config_fn``)."""
        return self.config_fn(preset, **overrides)

    def objective(self, name: str):
        """The training objective ``name`` ("gft" or "cfg") with this family's loss plug-in."""
        if name not in OBJECTIVES:
            raise GFTError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")

        def objective(*args, **kwargs):
            return OBJECTIVES[name](*args, loss=self.adapter.loss, **kwargs)

        return objective

    def check_options(self, preset: str | None, overrides: dict) -> None:
        """Refuse an unknown preset or model-override key up front, before any data is read or written."""
        if preset is not None and preset not in self.presets:
            raise GFTError(f"unknown {self.name} preset {preset!r}{_hint(preset, self.presets)}; known: "
                           f"{', '.join(self.presets)}")
        known = config_keys(self.config_class)
        for key in overrides:
            if key in self.adapter.derived_keys:
                raise GFTError(f"model option {key!r} is set from the tokenizer and the data; remove it from `model:`")
            if key not in known:
                raise GFTError(f"unknown model option {key!r} in `model:`{_hint(str(key), known)}")

    def sampling_kwargs(self, *, beta=None, cfg_scale=None, cfg_schedule=None, **options) -> dict:
        """Check guidance and family options for this family's sampler; return its keyword arguments.

        ``options`` whose value is None (or False: a switch left off) are left to the sampler's defaults; one this
        family does not take is refused naming the families that do.
        """
        mine = {o.name for o in self.sampler_options}
        kwargs = {}
        for key, value in options.items():
            if value is None or value is False:
                continue  # the sampler's default (a switch left off, ``--no-compile``, is every family's default)
            if key not in mine:
                flag = "--" + key.replace("_", "-")
                takes = ", ".join(o.flag for o in self.sampler_options) or "no family options"
                raise GFTError(f"{flag} does not apply to {self.name} models (they take {takes})")
            kwargs[key] = value
        if cfg_schedule is not None and cfg_schedule not in self.cfg_schedules:
            raise GFTError(f"cfg schedule {cfg_schedule!r} is not available for {self.name} models (they take "
                           f"{', '.join(self.cfg_schedules)})")
        if cfg_schedule is not None:
            kwargs["cfg_schedule"] = cfg_schedule
        if beta is not None:
            kwargs["beta"] = beta
        if cfg_scale is not None:
            kwargs["cfg_scale"] = cfg_scale
        return kwargs
