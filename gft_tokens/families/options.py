"""The sampling options every sampling CLI shares (``generate.py``, ``sweep.py``, the benchmarks), declared once.

Family-specific options (``--steps``, ``--order`` …) come from the families' own
:class:`~gft_tokens.families.base.SamplerOption` lists: each is offered once, defaults to None (the sampler's
default), and :meth:`Family.sampling_kwargs <gft_tokens.families.base.Family.sampling_kwargs>` refuses one given
to a family that does not take it.
"""

from __future__ import annotations

import argparse

from ..validate import bounded
from . import FAMILIES


def _schedules() -> list[str]:
    return sorted({s for f in FAMILIES.values() for s in f.cfg_schedules})


def family_options():
    """Every family's sampler options, each name once (first declaration wins)."""
    seen = {}
    for fam in FAMILIES.values():
        for o in fam.sampler_options:
            seen.setdefault(o.name, (o, []))[1].append(fam.name)
    return list(seen.values())


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """``--cfg-schedule``, ``--temperature``, ``--top-k``, ``--top-p`` and every family's own options."""
    g = p.add_argument_group("sampling")
    g.add_argument("--cfg-schedule", choices=_schedules(),
                   help="how the CFG scale evolves over the steps: constant, or the family's linear ramp (VAR's over "
                        "the scales, MAR's over the decoding steps); default: the family's own (linear for VAR, "
                        "constant otherwise)")
    g.add_argument("--temperature", type=bounded(float, gt=0), default=1.0, help="softmax temperature (default: 1.0)")
    g.add_argument("--top-k", type=bounded(int, min=0), default=0, help="top-k filtering, 0 = off (default: 0)")
    g.add_argument("--top-p", type=bounded(float, gt=0, max=1), default=1.0, help="nucleus filtering, 1 = off (default: 1.0)")
    for option, families in family_options():
        add_family_option(g, option, families)


def add_family_option(parser, option, families) -> None:
    """``--<name>`` for a family's sampler option: a number/choice, or a switch (``--compile`` / ``--no-compile``)
    for a boolean one; it defaults to None (the sampler's own default), and ``--no-…`` means that default too."""
    text = f"{' and '.join(families)} only: {option.help}"
    if option.type is bool:
        parser.add_argument(option.flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        return
    kw = {"choices": list(option.choices)} if option.choices else {}
    parser.add_argument(option.flag, type=option.arg_type(), help=text, **kw)


def sampling_options(args: argparse.Namespace) -> dict:
    """The values of :func:`add_sampling_arguments`'s flags, for ``Family.sampling_kwargs`` (None = default)."""
    out = {"cfg_schedule": args.cfg_schedule}
    out.update({o.name: getattr(args, o.name) for o, _ in family_options()})
    return out


def common_sampling(args: argparse.Namespace) -> dict:
    """temperature / top-k / top-p (every family)."""
    return {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
