"""Options as dataclasses: one definition gives the defaults, the YAML schema and the documented CLI.

Each field's ``metadata["help"]`` is its documentation. :func:`add_arguments` turns a dataclass into argparse
options (``lr`` → ``--lr``; booleans get ``--flag/--no-flag`` so every switch can be turned off), and
:func:`resolve` merges, in increasing priority: dataclass defaults, a YAML file, command-line flags. Unknown YAML
keys are refused with a "did you mean" hint.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

import yaml

from .errors import GFTError
from .validate import BOUND_KEYS, bounded, check_value, describe_range


def opt(default, help: str, **kwargs):
    """A dataclass field with a help string and its valid values: ``choices=``, ``min=``/``max=`` (inclusive),
    ``gt=``/``lt=`` (exclusive); a float must be finite unless ``finite=False``. :func:`resolve` checks them."""
    unknown = set(kwargs) - {"choices", *BOUND_KEYS}
    if unknown:
        raise TypeError(f"opt() got unknown keys {sorted(unknown)}")
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def _base_type(tp):
    """(scalar type, is_list) of a field annotation like ``int``, ``str | None`` or ``list[float]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple):
        return typing.get_args(tp)[0], True
    return tp, False


def _convert(value, tp, key: str):
    base, is_list = _base_type(tp)
    if value is None:
        return None
    if is_list:
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_convert(v, base, key) for v in items]
    if base is dict:
        if isinstance(value, dict):
            return value
        raise GFTError(f"option {key!r} must be a mapping, got {value!r}")
    if base is bool:
        if isinstance(value, bool):
            return value
        raise GFTError(f"option {key!r} must be true or false, got {value!r}")
    if base in (int, float, str):
        try:
            if base is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return base(value)
        except (TypeError, ValueError):
            raise GFTError(f"option {key!r} must be a {base.__name__}, got {value!r}") from None
    return value


def add_arguments(parser: argparse.ArgumentParser, cls, group_title: str | None = None) -> None:
    """Add one ``--option`` per dataclass field (default ``None`` = not given, so YAML values survive)."""
    group = parser.add_argument_group(group_title) if group_title else parser
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help strings with %
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        base, is_list = _base_type(hints[f.name])
        if base is dict:  # mappings are given in the YAML file only
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": None}
        bounds = {k: f.metadata[k] for k in ("min", "max", "gt", "lt") if k in f.metadata}
        if bounds:
            help_text = f"{help_text}; in {describe_range(**bounds)}"
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if base is bool and not is_list:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, help=f"{help_text} (default: {default})", **kwargs)
            continue
        if is_list:
            kwargs["nargs"] = "+"
        arg_type = bounded(base, **bounds) if base in (int, float) else base  # the range named at parse time
        group.add_argument(flag, type=arg_type, metavar=f.name.upper(), help=f"{help_text} (default: {default})", **kwargs)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise GFTError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise GFTError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise GFTError(f"config file {path} must hold a mapping of options, got {type(data).__name__}")
    return data


def check_keys(values: dict, known, where: str) -> None:
    """Refuse keys of ``values`` not in ``known``, suggesting the closest known key."""
    known = sorted(known)
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise GFTError(f"unknown option {key!r} in {where}{hint}")


def resolve(cls, yaml_values: dict | None = None, args: argparse.Namespace | None = None, where: str = "config"):
    """Build ``cls`` from defaults < ``yaml_values`` < explicitly given ``args``."""
    names = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    if yaml_values:
        check_keys(yaml_values, names, where)
        values.update(yaml_values)
    if args is not None:
        values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    converted = {k: _convert(v, hints[k], k) for k, v in values.items()}
    for f in dataclasses.fields(cls):  # every option's range, choices and finiteness, in this one place
        check_value(f.name, converted.get(f.name, f.default if f.default is not dataclasses.MISSING else None),
                    f.metadata)
    return cls(**converted)


def options_from_cli(cls, argv=None, *, description: str | None = None, config_help: str,
                     group_title: str = "training options"):
    """The command line of a script run by the options dataclass ``cls``: ``--config`` (a YAML file of them,
    ``config_help``) and every field as a flag (:func:`add_arguments`); returns ``cls`` resolved from defaults <
    YAML < flags (:func:`resolve`). ``description`` (the script's docstring) heads ``--help`` as written."""
    from .validate import ArgumentParser

    parser = ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=config_help)
    add_arguments(parser, cls, group_title)
    args = parser.parse_args(argv)
    return resolve(cls, load_yaml(args.config) if args.config else None, args, where=args.config or "command line")


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)
