"""Official-checkpoint importers: published weights → our save format (``config.json`` + ``model.safetensors``).

An importer is registered under a *format name* and chosen by that name only — never guessed from a file name:

    from gft_tokens.importers import import_checkpoint
    import_checkpoint("llamagen-gpt", "c2i_3B_384.pt", "models/llamagen-3b", grid_size=24)

or ``scripts/import_checkpoint.py --format llamagen-gpt --grid-size 24 c2i_3B_384.pt models/llamagen-3b``.

This module is the top of the package's import graph: it imports every family's ``importer`` module, and nothing in
the package imports it (only the CLIs and tests). Adding a format: write ``convert(state, **options) -> Converted``
in the family's ``importer.py``, wrap it in an :class:`~gft_tokens.importing.Importer` and list it in
:data:`IMPORTERS` below. The driver checks the converted keys and shapes against the target class built on the
meta device (no weights allocated) and writes the result atomically.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import torch

from .errors import GFTError
from .fs import check_replaceable
from .families.llamagen.importer import GPT_IMPORTER, VQ_IMPORTER
from .families.mar.importer import KL16_IMPORTER, MAR_IMPORTER
from .families.t2i.importer import T2I_IMPORTER
from .families.var.importer import VAR_IMPORTER, VQVAE_IMPORTER
from .importing import Converted, Importer, extract_state_dict, load_checkpoint_file
from .pretrained import check_state_dict

IMPORTERS: dict[str, Importer] = {i.name: i for i in (GPT_IMPORTER, VQ_IMPORTER, T2I_IMPORTER, VAR_IMPORTER,
                                                      VQVAE_IMPORTER, MAR_IMPORTER, KL16_IMPORTER)}


def register_importer(importer: Importer) -> None:
    """Make ``import_checkpoint`` and ``scripts/import_checkpoint.py --format`` know ``importer.name``."""
    IMPORTERS[importer.name] = importer


def get_importer(name: str) -> Importer:
    if name not in IMPORTERS:
        close = difflib.get_close_matches(name, IMPORTERS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise GFTError(f"unknown checkpoint format {name!r}{hint}; known: {', '.join(sorted(IMPORTERS))}")
    return IMPORTERS[name]


def convert_state_dict(fmt: str, state: dict[str, torch.Tensor], recorded: dict | None = None,
                       **options) -> Converted:
    """Run importer ``fmt`` on an already-loaded official state dict and check the result (no file IO).

    ``recorded``: what the file stores beside the weights (its training args as a dict), for importers that read it.
    """
    importer = get_importer(fmt)
    unknown = [k for k in options if k not in importer.options]
    if unknown:
        raise GFTError(f"format {fmt!r} takes no option {unknown[0]!r}; its options: "
                       f"{', '.join(importer.options) or 'none'}")
    if importer.recorded is not None:
        options["recorded"] = recorded
    converted = importer.convert(state, **options)
    with torch.device("meta"):
        target = converted.model_class(converted.config)
    check_state_dict(target.state_dict(), converted.state, f"the converted {fmt} checkpoint")
    return converted


def import_checkpoint(fmt: str, src: str | Path, out: str | Path | None = None, key: str | None = None,
                      overwrite: bool = False, **options) -> Converted:
    """Convert the official checkpoint ``src`` of format ``fmt``; write it to ``out`` (atomically) if given.

    ``options`` are the importer's own (``grid_size``, ``preset`` …; see ``IMPORTERS[fmt].options``). Load the
    result with :func:`gft_tokens.families.load_model` or :func:`gft_tokens.tokenizers.load_tokenizer`.
    """
    importer = get_importer(fmt)  # a bad format name fails before the (possibly large) file is read
    if out is not None:
        check_replaceable(out, {"config.json", "model.safetensors", "manifest.json"}.__contains__, overwrite)
    obj = load_checkpoint_file(src)
    if key is None and importer.default_key and isinstance(obj, dict) and isinstance(obj.get(importer.default_key), dict):
        key = importer.default_key
    state = extract_state_dict(obj, key=key, where=str(src))
    recorded = importer.recorded(obj) if importer.recorded is not None else None
    converted = convert_state_dict(fmt, state, recorded=recorded, **options)
    for name, value in converted.state.items():  # NaN weights would only surface later, deep inside sampling
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise GFTError(f"{src}: weight {name} holds non-finite values (NaN or inf); refusing to import it")
    if out is not None:
        with torch.device("meta"):
            target = converted.model_class(converted.config)
        target.save_pretrained(out, state_dict=converted.state, overwrite=overwrite)
    return converted


__all__ = ["IMPORTERS", "Converted", "Importer", "convert_state_dict", "extract_state_dict", "get_importer",
           "import_checkpoint", "load_checkpoint_file", "register_importer"]
