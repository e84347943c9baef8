"""Crash-safe checkpoint directories, shared by every trainer (the DeepSpeed loop and the tokenizer trainer).

Layout under a checkpoint root::

    root/
      step00000400/        a complete checkpoint (whatever files the trainer writes + manifest.json)
      step00000600/
      latest               the newest tag (DeepSpeed's convention; its tools read it)
      .tmp-step00000800/   a save in progress, or one a killed run left behind: never used

The protocol that makes a kill at any instant harmless:

1. every file of step N is written into ``root/.tmp-stepN``;
2. ``manifest.json`` (every file with its size) is written last, and all files are fsynced;
3. the directory is renamed to ``root/stepN`` in one step, so a ``stepN`` directory is complete by construction;
4. ``latest`` is replaced (write a temporary file, rename) only after that;
5. complete checkpoints beyond the ``keep_last`` newest are first renamed away (``.old-stepM``), then
   deleted.

On resume :func:`latest_tag` returns the newest checkpoint whose manifest checks out (files present, sizes as
recorded), reporting every half-written or damaged directory it skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

from ..errors import GFTError
from ..fs import atomic_file, fsync_path, sha256_file

LATEST = "latest"
MANIFEST = "manifest.json"
TAG_RE = re.compile(r"^step(\d+)$")
_PARTIAL_GLOBS = (".tmp-step*", ".old-step*")


def tag_of(step: int) -> str:
    return f"step{step:08d}"


def checkpoint_tags(root: Path) -> list[tuple[int, str]]:
    """Checkpoint directories under ``root`` as (step, tag), oldest first (complete or not: see :func:`verify`)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = TAG_RE.match(d.name)
        if m and d.is_dir():
            found.append((int(m.group(1)), d.name))
    return sorted(found)


def stale_partial_dirs(root: Path) -> list[Path]:
    """Directories a killed save or rotation left behind (``.tmp-stepN``, ``.old-stepN``)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(d for pattern in _PARTIAL_GLOBS for d in root.glob(pattern) if d.is_dir())


def begin(root: Path, step: int) -> Path:
    """A fresh, empty ``root/.tmp-stepN`` to write step N's files into (call on one process)."""
    tmp = Path(root) / f".tmp-{tag_of(step)}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise GFTError(f"cannot write checkpoints to {root}: {exc.strerror or exc}") from None
    return tmp


def _files(directory: Path) -> dict[str, dict]:
    return {str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST}


def commit(root: Path, step: int, keep_last: int) -> Path:
    """Seal ``root/.tmp-stepN`` (manifest, fsync), rename it to ``root/stepN``, move ``latest``, rotate.

    Call on one process after every process has finished writing its files into the temporary directory.
    """
    root = Path(root)
    tag = tag_of(step)
    tmp, final = root / f".tmp-{tag}", root / tag
    files = _files(tmp)  # sizes and sha256 of every file: resume refuses a checkpoint altered since
    for name in files:
        fsync_path(tmp / name)
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1) + "\n")
    fsync_path(tmp / MANIFEST)
    fsync_path(tmp)
    if final.exists():  # the same step saved again (a run resumed from an older checkpoint): move it away first
        os.replace(final, root / f".old-{tag}")
    os.replace(tmp, final)
    fsync_path(root)
    with atomic_file(root / LATEST, "w") as fh:
        fh.write(tag)
    if keep_last > 0:  # count complete checkpoints only: a damaged one must never push out a good one
        complete = [t for _, t in checkpoint_tags(root) if verify(root / t) is None]
        for old in complete[:-keep_last]:
            os.replace(root / old, root / f".old-{old}")
    for partial in stale_partial_dirs(root):
        shutil.rmtree(partial, ignore_errors=True)
    return final


def verify(directory: Path) -> str | None:
    """Why ``directory`` is not a complete checkpoint (``None`` if it is)."""
    directory = Path(directory)
    if not directory.is_dir():
        return "it does not exist"
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return f"it has no {MANIFEST} (the save did not finish)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return f"its {MANIFEST} is corrupt"
    for name, entry in files.items():
        size, digest = (entry, None) if isinstance(entry, int) else (entry.get("size"), entry.get("sha256"))
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} is truncated or altered ({path.stat().st_size} bytes, {size} when saved)"
        if digest is not None and sha256_file(path) != digest:
            return f"{name} is corrupt or truncated: its content does not match the sha256 recorded when it was saved"
    return None


def latest_tag(root: Path, log: Callable[[str], None] = print) -> str | None:
    """The newest complete checkpoint under ``root`` (``None`` when there is none at all).

    Half-written saves (``.tmp-…``) and checkpoint directories that fail :func:`verify` are reported through
    ``log`` and skipped. If checkpoint directories exist but none is complete, a :class:`GFTError` says so
    rather than silently starting over.
    """
    root = Path(root)
    for partial in stale_partial_dirs(root):
        log(f"ignoring half-written checkpoint {partial} (left by an interrupted save or rotation)")
    tags = checkpoint_tags(root)
    chosen, damaged = None, []
    for _, tag in reversed(tags):
        problem = verify(root / tag)
        if problem is None:
            chosen = tag
            break
        damaged.append(f"{root / tag}: {problem}")
        log(f"skipping incomplete checkpoint {root / tag}: {problem}")
    pointer = root / LATEST
    if pointer.is_file():
        named = pointer.read_text().strip()
        if named != chosen:
            state = "is complete but older" if TAG_RE.match(named) and verify(root / named) is None else \
                "is missing or incomplete"
            log(f"'latest' names {named!r}, which {state}; using {chosen or 'no checkpoint'}")
    if chosen is None and damaged:
        raise GFTError(f"no usable checkpoint in {root}: " + "; ".join(damaged)
                       + " — delete the directory to start over")
    return chosen
