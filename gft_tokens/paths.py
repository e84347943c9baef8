"""Where the shipped files are: default paths (tokenizers/shapes-vq, tokenizers/shapes-probe, configs/…) resolve
against the repository this package lives in, not the working directory."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def shipped(path: str | Path | None) -> str | None:
    """``path`` as given when it exists (or is absolute, or None); else the same path under the repository when it
    exists there; else ``path`` unchanged (so the caller's "does not exist" error names what was asked for)."""
    if path is None or path == "":
        return path
    p = Path(path)
    if p.is_absolute() or p.exists():
        return str(path)
    q = REPO / p
    return str(q) if q.exists() else str(path)
