"""Importers for FoundationVision/LlamaGen checkpoints: the c2i GPT (GPT-B … GPT-3B, GPT-7B) and the VQ tokenizer.

``llamagen-gpt``: our :class:`~gft_tokens.families.llamagen.model.LlamaGen` uses the official parameter names, 2D RoPE
(class-token rows zero) and SwiGLU sizes, so the weights map one to one. What the weights do not say is supplied or
detected: the preset (n_head is not visible in the shapes; it is found from n_layer, dim and the FFN width), the
token grid (``grid_size``: 16 for 256px, 24 for 384px images with VQ-16; required, never guessed from a file
name). A stray ``freqs_cis`` (some consolidated FSDP checkpoints carry the RoPE table) and KV-cache buffers are
dropped. A GFT checkpoint's ``t_embedder.*`` (thu-ml/GFT) becomes our ``beta_embedder.*`` (same sinusoid of β·1000
and MLP); a plain LlamaGen checkpoint gets the β embedder added with its last layer zero-initialised, so the
imported model equals the published one at every β until GFT fine-tuning moves it.

Training checkpoints (LlamaGen's ``train_c2i.py``, GFT's) store their ``args`` Namespace beside the weights; it fills
the grid (``image_size // downsample_size``), the preset (``gpt_model``, hence n_head), ``cls_token_num``,
``class_dropout_prob`` and ``num_classes``, and an explicit option contradicting it is refused. Without args, the
grid is required and ``cls_token_num`` 1 / a null-class row (LlamaGen's released c2i) are assumed and said in the
notes. A class table without a null row (trained with ``class_dropout_prob`` 0) keeps every row as a class and gets a
zero null-class row.

``cls_token_num`` k > 1 (from the args or ``cls_token_num``) imports with ``class_token_layout="official"``: the
official c2i network keeps one class vector (its LabelEmbedder's (B, 1, D) sliced to ``[:, :k]``) while its RoPE
table has k zero rows before the grid, so at inference (prefix of one position) image token j reads row 1 + j:
tokens 0 … k-2 get zero rows, token j ≥ k-1 grid position j - (k-1). That is not the toolkit's default (the class
vector repeated k times), so the layout is recorded in the config and said in the summary. Only the official
inference path is reproduced: its training forward with k > 1 returns k-1 fewer logits than targets and is not a
well-defined network; fine-tuning the import trains the inference network (position i predicts image token i).

``llamagen-vq``: the VQ-16 / VQ-8 tokenizer into :class:`~gft_tokens.tokenizers.llamagen_vq.LlamaGenVQ` (same
names); the channel layout is read from the shapes, ``image_size`` is required.
"""

from __future__ import annotations

import re

import torch

from ...conditioning import add_fresh_beta_embedder
from ...errors import GFTError
from ...importing import Converted, Importer

GPT_IGNORED = re.compile(r"^(freqs_cis|causal_mask|layers\.\d+\.attention\.kv_cache\.[kv]_cache)$")
_LAYER = re.compile(r"^layers\.(\d+)\.")


def _need(state: dict, key: str, what: str) -> torch.Tensor:
    if key not in state:
        sample = ", ".join(sorted(state)[:4])
        raise GFTError(f"not a {what} state dict: it has no {key!r} (its keys start: {sample} …)")
    return state[key]


def gpt_dims(state: dict[str, torch.Tensor]) -> dict:
    """Sizes readable from a LlamaGen c2i GPT state dict's shapes."""
    if any(k.startswith("cls_embedding.cap_proj") for k in state):
        raise GFTError("this is a text-to-image (t2i) LlamaGen checkpoint (it has cls_embedding.cap_proj); "
                       "import it with --format llamagen-t2i")
    tok = _need(state, "tok_embeddings.weight", "LlamaGen c2i GPT")
    cls = _need(state, "cls_embedding.embedding_table.weight", "LlamaGen c2i GPT")
    layers = sorted({int(m.group(1)) for k in state if (m := _LAYER.match(k))})
    if not layers:
        raise GFTError("not a LlamaGen c2i GPT state dict: no layers.N.* keys")
    qkv = _need(state, "layers.0.attention.wqkv.weight", "LlamaGen c2i GPT")
    w1 = _need(state, "layers.0.feed_forward.w1.weight", "LlamaGen c2i GPT")
    return {"dim": tok.shape[1], "vocab_size": tok.shape[0], "num_classes": cls.shape[0] - 1,
            "n_layer": layers[-1] + 1, "ffn_hidden": w1.shape[0], "qkv_rows": qkv.shape[0]}


def fitting_presets(dims: dict) -> list[str]:
    """Presets whose n_layer, dim, FFN width and (MHA) qkv size match ``dims``."""
    from .model import PRESETS
    from ...nn import swiglu_hidden_dim

    out = []
    for name, p in PRESETS.items():
        if (p["n_layer"], p["dim"]) != (dims["n_layer"], dims["dim"]) or dims["qkv_rows"] != 3 * dims["dim"]:
            continue
        if swiglu_hidden_dim(p["dim"], p.get("multiple_of", 256), p.get("ffn_dim_multiplier")) == dims["ffn_hidden"]:
            out.append(name)
    return out


def _describe(dims: dict) -> str:
    return (f"n_layer {dims['n_layer']}, dim {dims['dim']}, FFN {dims['ffn_hidden']}, vocab {dims['vocab_size']}, "
            f"{dims['num_classes']} classes")


def _tokenizer_record(tokenizer: str | None, vocab: int, grid: int) -> dict:
    if tokenizer is None:
        return {"codebook_size": vocab, "grid_size": [grid, grid]}
    from ...tokenizers import load_tokenizer

    tok = load_tokenizer(tokenizer)
    desc = tok.describe()
    if desc["codebook_size"] != vocab or list(desc["grid_size"]) != [grid, grid]:
        raise GFTError(f"tokenizer {tokenizer} has codebook {desc['codebook_size']} and grid {desc['grid_size']}, "
                       f"the checkpoint needs codebook {vocab} and grid [{grid}, {grid}]")
    return {**desc, "path": str(tokenizer)}


def _custom_multiple_of(dim: int, hidden: int) -> int:
    from ...nn import swiglu_hidden_dim

    for m in (256, 128, 64, 32, 16, 8, 4, 2, 1):
        if swiglu_hidden_dim(dim, m) == hidden:
            return m
    raise GFTError(f"FFN width {hidden} is not LlamaGen's SwiGLU width for dim {dim} at any multiple_of")


def sized_config(config_cls, dims: dict, preset: str | None, n_head: int | None, fits: list[str], common: dict,
                 notes: list[str], describe=None):
    """The config of a LlamaGen-layout checkpoint (``config_cls``: the c2i or t2i config): ``preset`` when given,
    else a custom size from ``n_head``, else the one preset that fits the weights' shapes (``fits``)."""
    from .model import PRESETS

    describe = describe or _describe
    if preset is not None:
        if preset not in PRESETS:
            raise GFTError(f"unknown LlamaGen preset {preset!r}; known: {', '.join(PRESETS)}")
        config = config_cls(**{**PRESETS[preset], "preset": preset, **common})
        if n_head is not None and n_head != config.n_head:
            raise GFTError(f"preset {preset} has n_head {config.n_head}, not {n_head}")
    elif n_head is not None:
        if dims["dim"] % n_head:
            raise GFTError(f"dim {dims['dim']} is not divisible by n_head {n_head}")
        head_dim = dims["dim"] // n_head
        kv = (dims["qkv_rows"] // head_dim - n_head) // 2
        config = config_cls(dim=dims["dim"], n_layer=dims["n_layer"], n_head=n_head,
                            n_kv_head=None if kv == n_head else kv,
                            multiple_of=_custom_multiple_of(dims["dim"], dims["ffn_hidden"]), **common)
        notes.append(f"custom size: {describe(dims)}, n_head {n_head}")
    elif len(fits) == 1:
        preset = fits[0]
        config = config_cls(**{**PRESETS[preset], "preset": preset, **common})
        notes.append(f"detected preset {preset} ({describe(dims)})")
    else:
        raise GFTError(f"no LlamaGen preset fits this checkpoint ({describe(dims)}); presets: "
                       + ", ".join(f"{k} (n_layer {v['n_layer']}, dim {v['dim']})" for k, v in PRESETS.items()
                                   if "multiple_of" not in v)
                       + ". For a custom size pass n_head (--n-head)")

    return config


def recorded_args(obj) -> dict | None:
    """The ``args`` Namespace LlamaGen's (and GFT's) training scripts store beside the weights, as a dict."""
    args = obj.get("args") if isinstance(obj, dict) else None
    return dict(vars(args)) if args is not None and hasattr(args, "__dict__") else None


def fields_from_args(recorded: dict | None, ints: tuple[str, ...] = ("cls_token_num",),
                     floats: tuple[str, ...] = ()) -> dict:
    """What the args of LlamaGen's training scripts say about the model (only the fields present): ``grid_size``
    (image_size // downsample_size), the integer fields ``ints``, the number fields ``floats`` and ``preset``
    (gpt_model)."""
    if not recorded:
        return {}
    out = {}
    if isinstance(recorded.get("image_size"), int) and isinstance(recorded.get("downsample_size"), int):
        out["grid_size"] = recorded["image_size"] // recorded["downsample_size"]
    for key in ints:
        if isinstance(recorded.get(key), int):
            out[key] = recorded[key]
    for key in floats:
        if isinstance(recorded.get(key), (int, float)):
            out[key] = float(recorded[key])
    if isinstance(recorded.get("gpt_model"), str):
        out["preset"] = recorded["gpt_model"]
    return out


def _from_args(recorded: dict | None) -> dict:
    """What LlamaGen's train_c2i.py args say about the model."""
    return fields_from_args(recorded, ints=("cls_token_num", "num_classes"), floats=("class_dropout_prob",))


def with_beta_embedder(state: dict, config, beta_embed: bool, notes: list[str]) -> dict:
    """``state`` with a GFT checkpoint's ``t_embedder.*`` renamed to ``beta_embedder.*``, or (``beta_embed`` and none
    there) a fresh β embedder whose output layer is zero, so the model equals the checkpoint at every β."""
    beta_keys = {k: v for k, v in state.items() if k.startswith("t_embedder.")}
    state = {k: v for k, v in state.items() if not k.startswith("t_embedder.")}
    if beta_keys:
        if not beta_embed:
            raise GFTError("the checkpoint has a GFT β embedder (t_embedder.*); import it with beta_embed "
                           "(drop --no-beta-embed)")
        state.update({"beta_embedder." + k[len("t_embedder."):]: v for k, v in beta_keys.items()})
        notes.append("β embedder imported from the GFT checkpoint's t_embedder")
    elif beta_embed:
        add_fresh_beta_embedder(state, notes, config.dim, config.beta_freq_dim, config.initializer_range)
    return state


def check_shapes(model_class, config, state: dict, described: str, fits: list[str]) -> None:
    """Refuse ``state`` unless its keys and shapes are those of ``model_class(config)`` (built on the meta device),
    naming the differing, missing and unexpected keys and the presets the checkpoint fits."""
    with torch.device("meta"):
        model = model_class(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    differ = [f"{k} {tuple(state[k].shape)} (preset wants {expected[k]})"
              for k in sorted(expected.keys() & state.keys()) if tuple(state[k].shape) != expected[k]]
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if differ or missing or unexpected:
        parts = []
        if differ:
            parts.append(f"{len(differ)} keys differ in shape: " + "; ".join(differ[:4]))
        if missing:
            parts.append(f"missing: {', '.join(missing[:4])}" + (f" (+{len(missing) - 4})" if len(missing) > 4 else ""))
        if unexpected:
            parts.append(f"unexpected: {', '.join(unexpected[:4])}"
                         + (f" (+{len(unexpected) - 4})" if len(unexpected) > 4 else ""))
        fit = f"it fits preset {', '.join(fits)}" if fits else "it fits no preset"
        raise GFTError(f"checkpoint ({described}) does not match {config.preset or 'the given size'}: "
                       + " | ".join(parts) + f"; {fit}")


def convert_llamagen_gpt(state: dict[str, torch.Tensor], grid_size: int | None = None, preset: str | None = None,
                         n_head: int | None = None, beta_embed: bool = True, tokenizer: str | None = None,
                         cls_token_num: int | None = None, class_dropout_prob: float | None = None,
                         recorded: dict | None = None) -> Converted:
    """``recorded``: the file's training args (a dict), which fill grid size, preset (hence n_head),
    cls_token_num, class dropout and num_classes; an explicit option that contradicts them is refused."""
    from .model import PRESETS, LlamaGen, LlamaGenConfig

    notes = []
    found = _from_args(recorded)
    given = {"grid_size": grid_size, "preset": preset, "cls_token_num": cls_token_num,
             "class_dropout_prob": class_dropout_prob}
    for key, value in given.items():
        if value is not None and key in found and found[key] != value:
            flag = "--" + key.replace("_", "-")
            raise GFTError(f"{flag} {value} contradicts the checkpoint's training args ({key} {found[key]}); drop "
                           f"the flag or fix it")
    if found:
        notes.append("read from the checkpoint's training args: "
                     + ", ".join(f"{k} {v}" for k, v in found.items()))
    grid_size = grid_size if grid_size is not None else found.get("grid_size")
    preset = preset if preset is not None else found.get("preset")
    if preset is not None and preset not in PRESETS and "preset" in found:
        raise GFTError(f"the training args name model {preset!r}, which is not a LlamaGen preset here "
                       f"({', '.join(PRESETS)})")
    if grid_size is None:
        raise GFTError("grid_size is required: the token grid is not stored in the weights (LlamaGen with VQ-16: "
                       "16 for 256px images, 24 for 384px)")
    if grid_size <= 0:
        raise GFTError(f"grid_size must be positive, got {grid_size}")
    if cls_token_num is None:
        cls_token_num = found.get("cls_token_num")
    if class_dropout_prob is None:
        class_dropout_prob = found.get("class_dropout_prob")
    assumed = []
    if cls_token_num is None:
        cls_token_num = 1
        assumed.append("cls_token_num 1")
    if cls_token_num < 1:
        raise GFTError(f"cls_token_num must be ≥ 1, got {cls_token_num}")
    layout = {}
    if cls_token_num > 1:
        # official c2i: one class vector (LabelEmbedder's (B, 1, D) sliced to [:cls_token_num]) with the RoPE table
        # offset by cls_token_num zero rows; the toolkit's default repeats the class vector, a different network
        layout = {"class_token_layout": "official"}
        k = cls_token_num
        zero = "image token 0 reads a zero row" if k == 2 else f"image tokens 0-{k - 2} read zero rows"
        notes.append(f"cls_token_num {k}: imported with the official c2i layout (class_token_layout 'official'): one "
                     f"class vector at position 0, RoPE rows 0-{k - 1} zero, so {zero} and token j >= {k - 1} grid "
                     f"position j-{k - 1}, as LlamaGen's generate.py runs it (not the default repeated class token)")
    if class_dropout_prob is not None and not 0.0 <= class_dropout_prob < 1.0:
        raise GFTError(f"class_dropout_prob must lie in [0, 1), got {class_dropout_prob}")

    dropped = sorted(k for k in state if GPT_IGNORED.match(k))
    if dropped:
        notes.append(f"dropped {len(dropped)} non-weight entries ({', '.join(dropped[:3])})")
    state = {k: v for k, v in state.items() if not GPT_IGNORED.match(k)}
    dims = gpt_dims(state)
    rows = dims["num_classes"] + 1
    # LlamaGen's LabelEmbedder has a null row only when trained with class dropout (use_cfg_embedding)
    if "num_classes" in found:
        if rows not in (found["num_classes"], found["num_classes"] + 1):
            raise GFTError(f"the class table has {rows} rows, the training args say {found['num_classes']} classes")
        null_row = rows == found["num_classes"] + 1
    elif class_dropout_prob is not None:
        null_row = class_dropout_prob > 0
    else:
        null_row = True
        assumed.append("a null-class row (class dropout > 0)")
    if assumed:
        notes.append("the file records no training args for this: assumed " + " and ".join(assumed)
                     + " (LlamaGen's released c2i); say otherwise with --cls-token-num / --class-dropout-prob")
    if not null_row:
        table = state["cls_embedding.embedding_table.weight"]
        state["cls_embedding.embedding_table.weight"] = torch.cat([table, table.new_zeros(1, table.shape[1])])
        dims = {**dims, "num_classes": rows}
        notes.append(f"the class table has no null row (trained without class dropout): {rows} classes, a zero "
                     f"null-class embedding added as row {rows} (the unconditional model is untrained)")
    fits = fitting_presets(dims)
    extra = {"cls_token_num": cls_token_num, **layout}
    if class_dropout_prob is not None:
        extra["class_dropout_prob"] = class_dropout_prob
    common = dict(vocab_size=dims["vocab_size"], num_classes=dims["num_classes"], grid_size=grid_size,
                  beta_embed=beta_embed, tokenizer=_tokenizer_record(tokenizer, dims["vocab_size"], grid_size),
                  **extra)
    config = sized_config(LlamaGenConfig, dims, preset, n_head, fits, common, notes)

    state = with_beta_embedder(state, config, beta_embed, notes)
    check_shapes(LlamaGen, config, state, _describe(dims), fits)
    return Converted(LlamaGen, config, state, notes)


def convert_llamagen_vq(state: dict[str, torch.Tensor], image_size: int | None = None) -> Converted:
    from ...tokenizers.llamagen_vq import VQ_PRESETS, LlamaGenVQ, LlamaGenVQConfig

    if image_size is None:
        raise GFTError("image_size is required: it sets the token grid the tokenizer reports (LlamaGen c2i: 256 "
                       "or 384)")
    notes = []
    state = dict(state)
    if "quantize.codebook_used" in state:
        del state["quantize.codebook_used"]
        notes.append("dropped quantize.codebook_used (a training-time usage counter)")
    what = "LlamaGen VQ tokenizer"
    codebook = _need(state, "quantize.embedding.weight", what)
    conv_in = _need(state, "encoder.conv_in.weight", what)
    quant = _need(state, "quant_conv.weight", what)
    levels = sorted({int(m.group(1)) for k in state if (m := re.match(r"^encoder\.conv_blocks\.(\d+)\.", k))})
    if not levels:
        raise GFTError(f"not a {what} state dict: no encoder.conv_blocks.N.* keys")
    ch = conv_in.shape[0]
    mult = []
    for i in levels:
        w = _need(state, f"encoder.conv_blocks.{i}.res.0.conv1.weight", what)
        if w.shape[0] % ch:
            raise GFTError(f"encoder.conv_blocks.{i} has {w.shape[0]} channels, not a multiple of conv_in's {ch}")
        mult.append(w.shape[0] // ch)
    blocks = len({m.group(1) for k in state if (m := re.match(r"^encoder\.conv_blocks\.0\.res\.(\d+)\.", k))})
    config = LlamaGenVQConfig(image_size=image_size, in_channels=conv_in.shape[1], channels=ch, channel_mult=mult,
                              num_res_blocks=blocks, z_channels=quant.shape[1], codebook_size=codebook.shape[0],
                              codebook_dim=codebook.shape[1])
    name = next((k for k, v in VQ_PRESETS.items() if v == mult and ch == 128 and blocks == 2), "custom")
    notes.append(f"{name}: channels {ch} x {mult}, {blocks} res blocks, codebook {codebook.shape[0]} x "
                 f"{codebook.shape[1]}, downsample {config.downsample}, grid {image_size // config.downsample}")
    return Converted(LlamaGenVQ, config, state, notes)


GPT_IMPORTER = Importer(
    "llamagen-gpt", "LlamaGen class-conditional GPT ({'model': ...} or a raw state dict; GPT-B … GPT-3B, GPT-7B; "
    "GFT checkpoints with t_embedder too)", convert_llamagen_gpt,
    {"grid_size": "token grid side (16 for 256px, 24 for 384px images with VQ-16); required",
     "preset": "model preset (default: detected from the shapes)",
     "n_head": "attention heads, for a size that matches no preset",
     "beta_embed": "add a zero-initialised β embedder (GFT input) if the checkpoint has none (default true)",
     "tokenizer": "tokenizer directory to record in the model (its codebook and grid must fit)",
     "cls_token_num": "class-token positions (default: the training args', else 1); > 1 imports the official "
                      "c2i layout (one class vector, RoPE shifted)",
     "class_dropout_prob": "the training class dropout; 0: the class table has no null row (default: the "
                           "training args', else LlamaGen's 0.1)"},
    recorded=recorded_args,
)
VQ_IMPORTER = Importer(
    "llamagen-vq", "LlamaGen VQ tokenizer (VQ-16 / VQ-8) weights", convert_llamagen_vq,
    {"image_size": "image side the tokenizer is used at (LlamaGen c2i: 256 or 384); required"},
)
