"""Guidance sweeps: sample checkpoints over β (GFT) or the CFG scale w, score every setting, tabulate and plot.

Family-agnostic: checkpoints are opened with :func:`gft_tokens.families.load_model` and sampled with
:func:`gft_tokens.families.sample_images`, so any registered model family sweeps the same way. Network
evaluations per image (NFE) are the samplers' own count (:class:`~gft_tokens.sampling.SamplingStats`).

Besides the generator rows, two *floor* rows put the numbers in scale: ``data`` (real images of the generators'
training split, scored like samples: the best any generator can do at this N) and ``vq-recon`` (those images
encoded and decoded by the tokenizer: the best a generator of this tokenizer's codes can do).

Text-to-image models (the ``t2i`` family) are sampled on a fixed prompt set — by default the captions of the first
200 items of the held-out split (:func:`gft_tokens.eval.attributes.heldout_prompts`), ``n_per_class`` samples per
prompt — and scored with FID etc. against the held-out reference (class accuracy: the probe's class = the shape the
prompt names) and with the attribute probe's GenEval-style accuracy (:mod:`gft_tokens.eval.attributes`: shape,
colour, size and position where the prompt names them, and all of them at once). Their floor rows are real
training-split images scored against their own captions.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..conditioning import Caption
from ..data.captions import dataset_captions
from ..data.shapes import NUM_CLASSES, ShapesDataset
from ..errors import GFTError
from ..fs import atomic_file
from ..nn import sampling_generator
from ..families import check_tokenizer_matches, family_of, load_model, sample_images
from ..sampling import SamplingStats
from ..tokenizers import load_tokenizer
from ..viz import grid, labelled_panels, png_bytes, to_uint8
from ..families.classes import model_class_names
from ..paths import shipped
from .datasets import check_extractor_dataset, data_reference, extractor_dataset, model_dataset
from .evaluate import DEFAULT_REF_SIZE, Reference, evaluate_images, images_reference, shapes_reference
from .features import FeatureExtractor
from .npz import write_samples_npz
from .spread import DEFAULT_BOOTSTRAP, bootstrap_spread, verdict

ATTR_KEYS = ("shape", "colour", "size", "position")

DEFAULT_BETAS = (1.0, 0.8, 0.66, 0.5, 0.4, 0.33, 0.25)
DEFAULT_CFG_SCALES = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
METHODS = ("gft", "cfg")


@dataclass
class RunSpec:
    name: str  # label in tables and plots
    method: str  # "gft" (sweep β, one pass) or "cfg" (sweep w, two passes)
    ckpt: str  # exported model directory


def parse_run(text: str, method: str) -> RunSpec:
    """``NAME=DIR`` or ``DIR`` (named after the directory's parent, e.g. runs/x/cfg/model → cfg)."""
    if method not in METHODS:
        raise GFTError(f"method must be one of {METHODS}, got {method!r}")
    name, sep, ckpt = text.partition("=")
    if not sep:
        ckpt = text
        p = Path(text)
        name = p.parent.name if p.name == "model" and p.parent.name else p.name
    if not name or not ckpt:
        raise GFTError(f"expected NAME=CHECKPOINT_DIR or CHECKPOINT_DIR, got {text!r}")
    return RunSpec(name, method, ckpt)


def checkpoint_digest(ckpt: str | Path) -> str:
    """sha256 (16 hex digits) of a saved model's config.json and weights: a retrained checkpoint is a new one."""
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        path = Path(ckpt) / name
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def guidance_equivalent(method: str, value: float) -> float:
    """The CFG scale a setting corresponds to: w itself, or 1/β for GFT (LlamaGen's convention)."""
    return value if method == "cfg" else (math.inf if value == 0 else 1.0 / value)


@torch.no_grad()
def sample_setting(model, tokenizer, method: str, value: float, labels, batch_size: int, seed: int,
                   family_options: dict | None = None, **sampling) -> tuple[np.ndarray, SamplingStats, float]:
    """Sample one setting: images uint8 (N, H, W, 3), the sampler's cost counts, seconds. ``labels``: class ids
    (N,) or, for a text-to-image model, a :class:`~gft_tokens.conditioning.Caption` of N rows.

    ``family_options`` (``cfg_schedule``, ``steps`` …; None values = the sampler's defaults) are checked against
    the model's family; ``sampling`` (temperature, top-k, top-p) go to every sampler."""
    guidance = {"beta": value} if method == "gft" else {"cfg_scale": value}
    kwargs = family_of(model).sampling_kwargs(**guidance, **(family_options or {}))
    g = sampling_generator(model, seed)
    stats = SamplingStats()
    chunks = []
    t0 = time.perf_counter()
    for i in range(0, len(labels), batch_size):
        chunks.append(sample_images(model, tokenizer, labels[i:i + batch_size], generator=g, stats=stats,
                                    **kwargs, **sampling))
    seconds = time.perf_counter() - t0
    return to_uint8(torch.cat(chunks)), stats, seconds


def _fmt_setting(method: str, value: float) -> str:
    return f"β={value:g}" if method == "gft" else f"w={value:g}"


def _save_json(path: Path, payload: dict) -> None:
    with atomic_file(path, "w") as fh:
        json.dump(payload, fh, indent=1)
        fh.write("\n")


def floor_rows(extractor: FeatureExtractor, reference: Reference, tokenizer, n_per_class: int, num_classes: int,
               seed: int, size: int, attr_probe=None, n_images: int | None = None) -> tuple[dict, dict]:
    """Real training-split images (class-balanced; ``n_images`` of them, default ``n_per_class`` per class) and
    their tokenizer reconstructions, scored like samples; with ``attr_probe`` also their attribute accuracy
    against their own captions."""
    from .attributes import score_attributes

    ds = ShapesDataset(length=n_images or n_per_class * num_classes, size=size, seed=seed, balanced=True)
    images, labels = ds.tensors()
    with torch.no_grad():
        recon = torch.cat([tokenizer.decode(tokenizer.encode(images[i:i + 500])) for i in range(0, len(images), 500)])
    rows = []
    for name, x in (("data", images), ("vq-recon", recon)):
        metrics = evaluate_images(to_uint8(x), labels.numpy(), extractor, reference)
        if attr_probe is not None:
            metrics.update(attribute_summary(score_attributes(to_uint8(x), dataset_captions(ds), attr_probe, 0)))
        rows.append({"run": name, "method": "reference", "setting": None, "value": None, "w_equiv": None,
                     "nfe_per_image": 0.0, "s_per_image": None, **metrics})
    return rows[0], rows[1]


def attribute_summary(scores: dict) -> dict:
    """The table columns of :func:`gft_tokens.eval.attributes.score_attributes`'s result (plus the result itself
    under ``"attributes"``): ``attr_<name>`` and ``attr_<name>_std`` per attribute, ``attr_all``, ``attr_all_std``."""
    out = {"attributes": scores, "attr_all": scores["all_correct"], "attr_all_std": scores["all_correct_std"]}
    for a in ATTR_KEYS:
        out[f"attr_{a}"] = scores["attributes"][a]["accuracy"]
        out[f"attr_{a}_std"] = scores["attributes"][a]["accuracy_std"]
    return out


def run_sweep(runs: list[RunSpec], extractor: FeatureExtractor, out: Path, *, reference: Reference | None = None,
              ref_size: int = DEFAULT_REF_SIZE, family: str | None = None, betas=DEFAULT_BETAS, cfg_scales=DEFAULT_CFG_SCALES, n_per_class: int = 100,
              batch_size: int = 250, seed: int = 0, samples_dir: Path | None = None, floors: bool = True,
              resume: bool = False, grid_per_class: int = 8, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
              family_options: dict | None = None, bootstrap: int = DEFAULT_BOOTSTRAP,
              allow_foreign_extractor: bool = False, reference_data: str | None = None,
              prompts: list[str] | None = None, n_prompts: int | None = None, attr_probe=None, log=print) -> dict:
    """Sample and score every (run, setting); write ``results.json``, ``results.md`` and the plots in ``out``.

    ``reference`` defaults to ``ref_size`` held-out shapes images at the tokenizer's image size, or to the real
    images of ``reference_data`` (a folder, shards or an ``.npz``). Models of another dataset than the extractor's
    are refused unless ``allow_foreign_extractor``.
    ``family_options`` (``cfg_schedule``, ``steps``, ``order`` …) go to every model's sampler, checked against its
    family first. ``bootstrap`` resamples of each setting's samples give ``fid_std`` and ``class_accuracy_std``
    (0: no spreads); the GFT-vs-CFG comparison calls a difference a win or a loss only outside them.

    Text-to-image models are sampled ``n_per_class`` times per prompt of ``prompts`` (default: the captions of the
    first ``n_prompts`` held-out items, 200) and also scored by ``attr_probe`` (a
    :class:`~gft_tokens.eval.attr_probe.ShapesAttributeProbe` or its directory; default the shipped
    ``tokenizers/shapes-attr-probe``).

    ``results.json`` is rewritten after every setting, so an interrupted sweep keeps what it finished and
    ``resume=True`` skips settings already scored with the same options.
    """
    if not runs:
        raise GFTError("nothing to sweep: give at least one GFT or CFG checkpoint")
    if n_per_class <= 0 or batch_size <= 0:
        raise GFTError("n_per_class and batch_size must be positive")
    for b in betas:
        if not 0.0 <= b <= 1.0:
            raise GFTError(f"β values must lie in [0, 1], got {b}")
    for w in cfg_scales:
        if not (math.isfinite(w) and w >= 0):
            raise GFTError(f"CFG scales must be finite and ≥ 0, got {w}")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise GFTError(f"run names must be unique, got {names}")
    out = Path(out)
    # open every checkpoint first: a wrong path or family fails before any sampling or writing
    models = {}
    for spec in runs:
        model = load_model(spec.ckpt)
        fam = family_of(model).name
        if family is not None and fam != family:
            raise GFTError(f"{spec.ckpt} is a {fam!r} model, not {family!r} (--model)")
        family_of(model).sampling_kwargs(**(family_options or {}))  # an option its family does not take fails now
        has_beta = getattr(model, "beta_embedder", None) is not None
        if spec.method == "gft" and not has_beta:
            raise GFTError(f"{spec.ckpt} has no β input (trained with the CFG objective): sweep it with --cfg")
        record = model.config.tokenizer or {}
        if not record.get("path"):
            raise GFTError(f"{spec.ckpt} records no tokenizer path")
        tokenizer = load_tokenizer(shipped(record["path"]))
        check_tokenizer_matches(model, tokenizer)
        models[spec.name] = (model, tokenizer)
    first_model, first_tok = models[runs[0].name]
    text = {bool(getattr(family_of(m), "text_conditioned", False)) for m, _ in models.values()}
    if len(text) > 1:
        raise GFTError("a sweep takes either text-to-image or class-conditional models, not both")
    text = text.pop()
    if not text and (prompts is not None or n_prompts is not None):
        raise GFTError("prompts (--n-prompts) are for text-to-image models; these are class-conditional")
    num_classes = NUM_CLASSES if text else first_model.config.num_classes
    if extractor.num_classes is not None and extractor.num_classes != num_classes:
        raise GFTError(f"the models have {num_classes} classes, the extractor {extractor.num_classes}"
                       if not text else f"the extractor has {extractor.num_classes} classes, not the embedded "
                       f"data's {NUM_CLASSES} shapes the prompts name")
    datasets = {model_dataset(m) for m, _ in models.values()} - {None}
    if len(datasets) > 1:
        raise GFTError(f"the models were trained on different datasets: {sorted(datasets)}")
    dataset = next(iter(datasets), None)
    check_extractor_dataset(extractor, dataset, allow_foreign_extractor)
    condition, prompt_rows, attr = _conditions(models, text, num_classes, n_per_class, prompts, n_prompts,
                                               attr_probe)
    if reference is None and reference_data:
        reference = (images_reference(extractor, reference_data) if str(reference_data).endswith(".npz")
                     else data_reference(extractor, reference_data, size=first_tok.image_size, n=ref_size))
    if reference is None:
        if dataset not in (None, "shapes"):
            raise GFTError(f"the models are of {dataset!r}: give a reference of its real images (--reference: a "
                           "folder, shards or an .npz); the default reference is the embedded shapes data")
        reference = shapes_reference(extractor, n=ref_size, size=first_tok.image_size)

    out.mkdir(parents=True, exist_ok=True)
    family_options = {k: v for k, v in (family_options or {}).items() if v is not None}
    options = {"n_per_class": n_per_class, "seed": seed, "temperature": temperature, "top_k": top_k, "top_p": top_p,
               **family_options, "bootstrap": bootstrap, "extractor": extractor.fingerprint,
               "reference": reference.description}
    if text:
        options.update(prompts=prompt_rows["prompts"], attr_probe=attr.fingerprint)
    results_path = out / "results.json"
    previous = []
    if resume and results_path.is_file():
        saved = json.loads(results_path.read_text())
        if saved.get("options") == options:
            previous = saved.get("rows", [])
        else:
            log("resume: options differ from the saved results; starting over")
    done = {(r["run"], r.get("ckpt_sha256"), r["setting"]): r for r in previous}
    rows: list[dict] = []
    meta = {"options": options, "runs": [vars(r) for r in runs], "dataset": dataset,
            "extractor_dataset": extractor_dataset(extractor),
            "class_names": model_class_names(first_model.config) if not text else None,
            "conditioning": "prompts" if text else "classes"}
    labels = prompt_rows["labels"] if text else torch.arange(num_classes).repeat_interleave(n_per_class)

    def save():
        _save_json(results_path, {**meta, "rows": rows})

    if floors:
        for row in [r for r in previous if r["method"] == "reference"] or list(
                floor_rows(extractor, reference, first_tok, n_per_class, num_classes, seed, reference.image_size,
                           attr_probe=attr, n_images=len(labels) if text else None)):
            rows.append(row)
            log(f"{row['run']:>14s}: FID {row['fid']:.3f}  IS {row['is']:.3f}  P {row['precision']:.3f}  "
                f"R {row['recall']:.3f}  acc {row['class_accuracy']:.4f}" + _attr_log(row))
        save()

    for spec in runs:
        model, tokenizer = models[spec.name]
        values = betas if spec.method == "gft" else cfg_scales
        digest = checkpoint_digest(spec.ckpt)
        for value in values:
            setting = _fmt_setting(spec.method, value)
            if (spec.name, digest, setting) in done:
                rows.append(done[(spec.name, digest, setting)])
                continue
            images, stats, seconds = sample_setting(model, tokenizer, spec.method, value, condition[spec.name],
                                                    batch_size, seed, family_options, temperature=temperature,
                                                    top_k=top_k, top_p=top_p)
            nfe = stats.nfe_per_image
            if samples_dir is not None:
                path = Path(samples_dir) / spec.name / f"{spec.method}_{value:g}.npz"
                extra = ({"prompts": np.array(prompt_rows["prompts"]), "rows": prompt_rows["rows"]} if text
                         else {"classes": np.arange(num_classes)})
                write_samples_npz(path, images, labels.numpy(), **extra,
                                  beta=np.float32(value if spec.method == "gft" else np.nan),
                                  cfg_scale=np.float32(value if spec.method == "cfg" else np.nan))
            metrics = evaluate_images(images, labels.numpy(), extractor, reference, seed=seed)
            if bootstrap:
                spread = bootstrap_spread(images, labels.numpy(), extractor, reference, bootstrap, seed)
                metrics.update(fid_std=spread["fid_std"], class_accuracy_std=spread["class_accuracy_std"])
            if text:
                from .attributes import score_attributes

                metrics.update(attribute_summary(score_attributes(images, prompt_rows["per_image"], attr,
                                                                  bootstrap, seed)))
            row = {"run": spec.name, "ckpt": spec.ckpt, "ckpt_sha256": digest, "method": spec.method, "setting": setting, "value": value,
                   "w_equiv": guidance_equivalent(spec.method, value), "nfe_per_image": nfe,
                   "head_evals_per_image": stats.head_evals_per_image, "s_per_image": seconds / len(labels), **metrics}
            rows.append(row)
            save()
            log(f"{spec.name:>14s} {setting:>7s}: FID {row['fid']:.3f}  IS {row['is']:.3f}  "
                f"P {row['precision']:.3f}  R {row['recall']:.3f}  acc {row['class_accuracy']:.4f}{_attr_log(row)}  "
                f"NFE/img {nfe:g}  ({seconds:.0f}s)")
        best = min((r for r in rows if r["run"] == spec.name), key=lambda r: r["fid"])
        if text:
            _save_best_prompt_grid(out / f"best_{spec.name}.png", model, tokenizer, spec, best,
                                   prompt_rows["prompts"], seed, grid_per_class, family_options,
                                   temperature=temperature, top_k=top_k, top_p=top_p)
        else:
            _save_best_grid(out / f"best_{spec.name}.png", model, tokenizer, spec, best, num_classes, seed,
                            grid_per_class, family_options, temperature=temperature, top_k=top_k, top_p=top_p)

    result = {**meta, "rows": rows, "comparison": comparison(rows)}
    _save_json(results_path, result)
    (out / "results.md").write_text(markdown_report(result))
    plot_sweep(rows, out)
    return result


def _attr_log(row: dict) -> str:
    return f"  attr-all {row['attr_all']:.3f}" if row.get("attr_all") is not None else ""


def _conditions(models: dict, text: bool, num_classes: int, n_per_class: int, prompts, n_prompts, attr_probe):
    """Each run's condition batch ({name: class ids or Caption}), the prompt set ({prompts, rows, per_image,
    labels}; None for class-conditional models) and the attribute probe (None likewise)."""
    if not text:
        labels = torch.arange(num_classes).repeat_interleave(n_per_class)
        return {name: labels for name in models}, None, None
    from ..families.t2i.prompts import encode_prompts
    from .attr_probe import ShapesAttributeProbe, load_attribute_probe
    from .attributes import DEFAULT_ATTR_PROBE, DEFAULT_PROMPTS, heldout_prompts, requested_ids

    attr = attr_probe if isinstance(attr_probe, ShapesAttributeProbe) else \
        load_attribute_probe(attr_probe or DEFAULT_ATTR_PROBE)
    if prompts is None:
        prompts = heldout_prompts(DEFAULT_PROMPTS if n_prompts is None else n_prompts)
    prompts = list(prompts)
    if not prompts:
        raise GFTError("the prompt set is empty")
    shapes = requested_ids(prompts)["shape"]  # also refuses a prompt outside the caption vocabulary
    if (shapes < 0).any():
        bad = prompts[int(np.flatnonzero(shapes < 0)[0])]
        raise GFTError(f"every prompt of a sweep must name a shape (the class the probe scores), {bad!r} does not")
    rows = np.repeat(np.arange(len(prompts)), n_per_class)
    condition = {}
    for name, (model, _) in models.items():
        caption = encode_prompts(model, prompts)
        condition[name] = Caption(caption.features[rows], caption.mask[rows])
    prompt_rows = {"prompts": prompts, "rows": rows, "per_image": [prompts[i] for i in rows],
                   "labels": torch.as_tensor(shapes[rows])}
    return condition, prompt_rows, attr


def _save_best_prompt_grid(path: Path, model, tokenizer, spec: RunSpec, row: dict, prompts: list[str], seed: int,
                           per_prompt: int, family_options: dict | None = None, **sampling) -> None:
    """Samples of the first (up to) ten prompts at a run's best setting, one row per prompt."""
    from ..families.t2i.prompts import encode_prompts

    shown = prompts[:10]
    caption = encode_prompts(model, shown)
    rows = torch.arange(len(shown)).repeat_interleave(per_prompt)
    images, _, _ = sample_setting(model, tokenizer, spec.method, row["value"], Caption(caption.features[rows],
                                  caption.mask[rows]), 250, seed + 1, family_options, **sampling)
    panel = grid(images, nrow=per_prompt, scale=3)
    fig = labelled_panels([panel], [f"{spec.name} {row['setting']} (FID {row['fid']:.2f})"], shown,
                          panel.height // len(shown))
    with atomic_file(path) as fh:
        fh.write(png_bytes(fig))


def _save_best_grid(path: Path, model, tokenizer, spec: RunSpec, row: dict, num_classes: int, seed: int,
                    per_class: int, family_options: dict | None = None, **sampling) -> None:
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images, _, _ = sample_setting(model, tokenizer, spec.method, row["value"], labels, 250, seed + 1, family_options,
                                  **sampling)
    names = model_class_names(model.config)
    panel = grid(images, nrow=per_class, scale=3)
    fig = labelled_panels([panel], [f"{spec.name} {row['setting']} (FID {row['fid']:.2f})"], names,
                          panel.height // num_classes)
    with atomic_file(path) as fh:
        fh.write(png_bytes(fig))


# -- reporting ---------------------------------------------------------------------------------------------------
def _f(v, digits=3, pct=False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f}" if pct else f"{v:.{digits}f}"


def _pm(v, std, digits=3, pct=False) -> str:
    """``v ± std`` (std omitted when unknown)."""
    if std is None or v is None:
        return _f(v, digits, pct)
    return f"{_f(v, digits, pct)} ± {_f(std, digits, pct)}"


def _row_md(r: dict) -> str:
    nfe = "–" if r["method"] == "reference" else f"{r['nfe_per_image']:g}"
    spi = "–" if r.get("s_per_image") is None else f"{1000 * r['s_per_image']:.1f}"
    return (f"| {r['run']} | {r['setting'] or '–'} | {_pm(r['fid'], r.get('fid_std'), 2)} | {_f(r['is'])} | "
            f"{_f(r['precision'])} | {_f(r['recall'])} | "
            f"{_pm(r['class_accuracy'], r.get('class_accuracy_std'), pct=True)} | {nfe} | {spi} |")


HEADER = ("| model | setting | FID ↓ | IS ↑ | precision ↑ | recall ↑ | class acc. % ↑ | NFE / image | ms / image |\n"
          "|---|---|---|---|---|---|---|---|---|")


def best_rows(rows: list[dict]) -> dict[str, dict]:
    out = {}
    for r in rows:
        if r["method"] != "reference" and (r["run"] not in out or r["fid"] < out[r["run"]]["fid"]):
            out[r["run"]] = r
    return out


def comparison(rows: list[dict], fid_ratio: float = 1.05, acc_points: float = 1.0) -> list[dict]:
    """Each GFT run's best-FID row against the (first) CFG run's: the paper's claim as three checks."""
    best = best_rows(rows)
    cfg = next((b for b in best.values() if b["method"] == "cfg"), None)
    if cfg is None:
        return []
    checks = []
    for b in best.values():
        if b["method"] != "gft":
            continue
        acc_std = [r.get("class_accuracy_std") for r in (b, cfg)]
        checks.append({
            "fid_verdict": verdict(b["fid"], b.get("fid_std"), cfg["fid"], cfg.get("fid_std")),
            "acc_verdict": verdict(b["class_accuracy"], acc_std[0], cfg["class_accuracy"], acc_std[1],
                                   lower_is_better=False) if b["class_accuracy"] is not None else "tie",
            "run": b["run"], "cfg_run": cfg["run"], "fid_ratio": b["fid"] / cfg["fid"] if cfg["fid"] > 0 else math.inf,
            "fid_ok": b["fid"] <= fid_ratio * cfg["fid"],
            "acc_diff_points": 100 * (b["class_accuracy"] - cfg["class_accuracy"]),
            "acc_ok": 100 * (b["class_accuracy"] - cfg["class_accuracy"]) >= -acc_points,
            "nfe_ratio": b["nfe_per_image"] / cfg["nfe_per_image"],
            "nfe_ok": b["nfe_per_image"] <= 0.5 * cfg["nfe_per_image"] + 1e-9,
        })
        if b.get("attr_all") is not None and cfg.get("attr_all") is not None:  # text-to-image: all attributes
            checks[-1].update(attr_diff_points=100 * (b["attr_all"] - cfg["attr_all"]),
                              attr_verdict=verdict(b["attr_all"], b.get("attr_all_std"), cfg["attr_all"],
                                                   cfg.get("attr_all_std"), lower_is_better=False))
    return checks


ATTR_HEADER = ("| model | setting | shape % | colour % | size % | position % | all requested % |\n"
               "|---|---|---|---|---|---|---|")


def _attr_row_md(r: dict) -> str:
    cells = [_pm(r.get(f"attr_{a}"), r.get(f"attr_{a}_std"), pct=True) for a in (*ATTR_KEYS, "all")]
    return f"| {r['run']} | {r['setting'] or '–'} | " + " | ".join(cells) + " |"


def markdown_report(result: dict) -> str:
    rows = result["rows"]
    o = result["options"]
    n = o["n_per_class"]
    lines = [
        "# Guidance sweep",
        "",
        f"{n} samples per {'prompt' if o.get('prompts') else 'class'} per setting, sampling temperature {o['temperature']:g}, top-k {o['top_k']}, "
        f"top-p {o['top_p']:g}, seed {o['seed']}. FID and accuracy ± one standard deviation over "
        f"{o.get('bootstrap', 0)} bootstrap resamples of the samples (reference fixed). Features: `{o['extractor']}`; reference: "
        f"{o['reference'].get('n')} images of `{o['reference'].get('source')}`. Precision/recall: k-NN manifolds, "
        f"k = 3, on equal-sized sets. NFE / image = network evaluations per image, counted while sampling "
        f"(transformer rows ÷ images, as the sampler counts them; CFG counts both halves). ms / image: wall time of sampling on a shared CPU (noisy).",
        "",
        "## Best FID per model",
        "",
        HEADER,
        *[_row_md(r) for r in best_rows(rows).values()],
        *[_row_md(r) for r in rows if r["method"] == "reference"],
        "",
    ]
    if any(r.get("attr_all") is not None for r in rows):
        n_prompts = len(o.get("prompts") or [])
        lines += ["## Attribute accuracy (GenEval-style)", "",
                  f"{n} samples for each of {n_prompts} prompts; the attribute probe `{o.get('attr_probe')}` reads "
                  "shape, colour, size bucket and position bucket off every image; each attribute is scored on the "
                  "images whose prompt names it, \"all requested\" on every image (all the attributes its prompt "
                  "names). ± one bootstrap standard deviation. Floor rows: real images against their own captions.",
                  "", ATTR_HEADER, *[_attr_row_md(r) for r in rows], ""]
    checks = comparison(rows)
    if checks:
        lines += ["## GFT vs CFG at their best FID", "",
                  "Verdicts count a difference only beyond 2 standard deviations of it (bootstrap spreads).", "",
                  "| GFT model | FID / CFG FID (goal ≤ 1.05) | FID verdict | class acc. − CFG (points, goal ≥ −1) | "
                  "accuracy verdict | NFE / CFG NFE (goal ≤ 0.5) |",
                  "|---|---|---|---|---|---|"]
        for c in checks:
            mark = lambda ok: "✅" if ok else "❌"  # noqa: E731
            lines.append(f"| {c['run']} | {c['fid_ratio']:.3f} {mark(c['fid_ok'])} | {c['fid_verdict']} | "
                         f"{c['acc_diff_points']:+.1f} {mark(c['acc_ok'])} | {c['acc_verdict']} | "
                         f"{c['nfe_ratio']:.2f} {mark(c['nfe_ok'])} |")
        lines.append("")
        attr = [c for c in checks if "attr_verdict" in c]
        if attr:
            lines += ["| GFT model | all requested attributes − CFG (points) | verdict |", "|---|---|---|",
                      *[f"| {c['run']} | {c['attr_diff_points']:+.1f} | {c['attr_verdict']} |" for c in attr], ""]
    # matched settings: one line per CFG-equivalent scale, every run side by side
    runs = list(dict.fromkeys(r["run"] for r in rows if r["method"] != "reference"))
    by_w: dict[float, dict[str, dict]] = {}
    for r in rows:
        if r["method"] != "reference":
            by_w.setdefault(round(r["w_equiv"] * 4) / 4, {})[r["run"]] = r  # 1/0.66 and 1.5 meet at 1.5
    lines += ["## Matched guidance (CFG scale w ↔ β = 1/w)", "",
              "| w (≈ 1/β, to 0.25) | " + " | ".join(f"{name} FID | {name} acc. %" for name in runs) + " |",
              "|---|" + "---|---|" * len(runs)]
    for w in sorted(by_w):
        cells = []
        for name in runs:
            r = by_w[w].get(name)
            cells += [f"{_f(r['fid'])} ({r['setting']})" if r else "–", _f(r["class_accuracy"], pct=True) if r else "–"]
        lines.append(f"| {w:g} | " + " | ".join(cells) + " |")
    lines += ["", "## All settings", "", HEADER, *[_row_md(r) for r in rows], ""]
    return "\n".join(lines)


def plot_sweep(rows: list[dict], out: Path) -> list[Path]:
    """FID vs class accuracy, FID vs IS and FID vs guidance strength; every run on the same axes. Text-to-image
    sweeps also get FID vs the rate of images showing every attribute their prompt names (fid_vs_attributes.png)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GFTError("plots need matplotlib: pip install 'gft_tokens[plots]'") from None
    runs = list(dict.fromkeys(r["run"] for r in rows if r["method"] != "reference"))
    floors = [r for r in rows if r["method"] == "reference"]
    markers = {"cfg": "s", "gft": "o"}
    paths = []
    plots = [("class_accuracy", "class accuracy (%)", "fid_vs_accuracy.png"),
             ("is", "Inception Score (probe)", "fid_vs_is.png"),
             ("w_equiv", "guidance: CFG scale w (GFT: 1/β)", "fid_vs_guidance.png")]
    if all(r.get("attr_all") is not None for r in rows if r["method"] != "reference"):
        plots.append(("attr_all", "all prompted attributes correct (%)", "fid_vs_attributes.png"))
    percent = {"class_accuracy", "attr_all"}
    for x_key, x_label, fname in plots:
        fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
        for name in runs:
            pts = sorted((r for r in rows if r["run"] == name), key=lambda r: r["w_equiv"])
            method = pts[0]["method"]
            xs = [100 * r[x_key] if x_key in percent else r[x_key] for r in pts]
            ys = [r["fid"] for r in pts]
            nfe = max(r["nfe_per_image"] for r in pts)  # CFG at w = 1 needs only its conditional pass
            ax.plot(xs, ys, marker=markers[method], linestyle="-" if method == "cfg" else "--",
                    label=f"{name} ({method.upper()}, {nfe:g} NFE/img)")
            if x_key != "w_equiv":
                for x, y, r in zip(xs, ys, pts):
                    ax.annotate(r["setting"], (x, y), textcoords="offset points", xytext=(4, 3), fontsize=6)
        for r in floors:
            ax.axhline(r["fid"], color="gray", linestyle=":", linewidth=1)
            ax.annotate(f"{r['run']} floor", (ax.get_xlim()[0], r["fid"]), textcoords="offset points",
                        xytext=(2, 2), fontsize=7, color="gray")
        ax.set_xlabel(x_label)
        ax.set_ylabel("FID (probe features) ↓")
        ax.set_title("FID vs " + x_label.split(" (")[0])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_file(out / fname) as fh:
            fig.savefig(fh, format="png")
        plt.close(fig)
        paths.append(out / fname)
    return paths
