"""Files: atomic writes (a file or a whole directory swapped in one rename) and safe reading of untrusted files.

A leaf of the package: it imports nothing above :mod:`gft_tokens.errors`.

* :func:`atomic_file` / :func:`atomic_dir` write beside the target and rename on success, so a crash never leaves
  a half-written file; temporaries of a killed process are removed by the next write.
* :func:`load_torch_file` reads ``torch.save`` files with ``weights_only=True`` after checking what unpickling
  would import; :func:`load_safetensors` and :func:`read_config_dict` turn missing or corrupt files into one
  :class:`~gft_tokens.errors.GFTError`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import GFTError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_MANIFEST = "manifest.json"  # sizes and sha256 of the exported files, checked on load


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_path(path: Path) -> None:
    """Flush a file's (or a directory's entries') contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _default_modes(root: Path) -> None:
    """Temporary files and dirs are created private (0600/0700); give the final ones the usual umask modes.

    Every file is also flushed to disk, so that the rename that follows publishes complete contents."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for p in root.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
        if p.is_file():
            fsync_path(p)
    fsync_path(root)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``.<name>.tmp-<pid>-…`` / ``.<name>.old-<pid>`` siblings of ``path`` left by a killed process."""
    for p in path.parent.glob(f".{path.name}.*-*"):
        rest = p.name[len(path.name) + 2:]
        kind, _, tail = rest.partition("-")
        pid = tail.split("-", 1)[0]
        if kind in ("tmp", "old") and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()


def _mkstemp_beside(path: Path, directory: bool):
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(parent / path.name)
        prefix = f".{path.name}.tmp-{os.getpid()}-"
        if directory:
            return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        return tempfile.mkstemp(prefix=prefix, dir=parent)
    except OSError as exc:
        raise GFTError(f"cannot write to {parent}: {exc.strerror or exc}") from None


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported here."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def foreign_entries(path: str | os.PathLike, owned) -> list[str]:
    """Entries of directory ``path`` that ``owned`` (a predicate on a name) does not claim; [] if it is absent."""
    path = Path(path)
    if not path.exists():
        return []
    if not path.is_dir():
        return [path.name]
    return sorted(e.name for e in path.iterdir() if not owned(e.name))


def check_replaceable(path: str | os.PathLike, owned, overwrite: bool = False) -> None:
    """Refuse to replace ``path`` if it holds anything this tool did not write (``owned(name)`` false), unless
    ``overwrite``: a user's files are never deleted by a write. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise GFTError(f"cannot write to {path}: it is a file, not a directory")
    foreign = [] if overwrite else foreign_entries(path, owned)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise GFTError(f"{path} already exists and holds files this tool did not write ({', '.join(foreign[:3])}"
                       f"{more}); pass --overwrite to replace it, or choose another output directory")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, owned=None, overwrite: bool = True):
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` in one rename.

    On any exception the temporary directory is removed and ``path`` is left exactly as it was. Replacing an
    existing directory swaps the two atomically where the filesystem supports it (Linux), so ``path`` is never
    missing, even for an instant; temporaries left by a killed process are removed by the next write.
    With ``owned`` (a predicate on file names), an existing ``path`` holding anything else is refused unless
    ``overwrite``.
    """
    path = Path(path)
    if owned is not None:  # replace only what this tool wrote there
        check_replaceable(path, owned, overwrite)
    tmp = _mkstemp_beside(path, directory=True)
    try:
        yield tmp
        _default_modes(tmp)
        if path.is_dir() and not path.is_symlink():
            if _exchange(tmp, path):
                shutil.rmtree(tmp, ignore_errors=True)  # now holds the previous contents
            else:
                old = path.parent / f".{path.name}.old-{os.getpid()}"
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary file beside ``path`` for writing; it is renamed onto ``path`` only on success."""
    path = Path(path)
    fd, tmp = _mkstemp_beside(path, directory=False)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's content (recorded in manifests, checked before a file is trusted)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is the filesystem running out of space (torch reports it as a RuntimeError)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, RuntimeError) and ("No space left on device" in str(exc) or "file write failed" in str(exc))


def disk_full_error(path: str | os.PathLike, needed_bytes: int) -> GFTError:
    return GFTError(f"disk full while writing {path} (needs ~{max(1, round(needed_bytes / 2**20))} MB); "
                    f"nothing was left behind — free some space and run again")


def check_writable(path: str | os.PathLike) -> None:
    """Raise a :class:`GFTError` unless ``path`` is, or can be created as, a writable directory (creates nothing)."""
    path = Path(path)
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise GFTError(f"cannot write to {path}: {probe} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise GFTError(f"cannot write to {path}: {exc.strerror or exc}") from None


def unsafe_pickle_globals(path: str | os.PathLike, allowed: Iterable[str] = ()) -> list[str]:
    """What unpickling the ``torch.save`` file at ``path`` would import beyond tensors, plain containers and
    ``allowed`` — read from the pickle opcodes, nothing is executed. A file that is not a readable ``torch.save``
    archive raises a :class:`GFTError`."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError/ValueError/pickle errors on bad files
        raise GFTError(f"{path} is corrupt or truncated, or not a torch.save file ({type(exc).__name__})") from None
    allowed = set(allowed)
    return [g for g in found if g not in allowed]


def load_torch_file(path: str | os.PathLike, map_location="cpu", allowed: Iterable[type] = ()):
    """``torch.load`` for files from anywhere: only tensors and plain containers (plus the classes ``allowed``)
    are unpickled (``weights_only=True``). A file whose unpickling would import or call anything else is refused
    with a :class:`GFTError` (nothing in it runs), as is a missing, truncated or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise GFTError(f"{str(path)!r} does not exist")
    names = {f"{c.__module__}.{c.__qualname__}" for c in allowed}
    try:
        unsafe = unsafe_pickle_globals(path, names)
    except GFTError:
        unsafe = []  # not a zip archive: let the restricted unpickler below decide
    if unsafe:
        raise GFTError(f"refusing to load {path}: unpickling it would import {', '.join(unsafe[:3])} "
                       "and could run code; only tensors and plain containers are loaded")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise GFTError(f"refusing to load {path}: it holds objects that only a full unpickler (able to run code) "
                       "could rebuild, or it is corrupt; only tensors and plain containers are loaded") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise GFTError(f"{path} is corrupt or truncated ({type(exc).__name__})") from None


def load_json(path: Path, name: str | None = None):
    """The parsed JSON of the file ``path``; invalid JSON is one :class:`GFTError` naming the file as ``name``
    (default: its path), the problem and its line."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GFTError(f"{name or path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def read_config_dict(path: str | os.PathLike) -> dict:
    """The parsed ``config.json`` of a saved model directory (clear errors for missing/corrupt files)."""
    path = Path(path)
    if not path.exists():
        raise GFTError(f"checkpoint directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise GFTError(f"{str(path)!r} is not a directory (expected config.json + {WEIGHTS_NAME} inside)")
    cfg = path / CONFIG_NAME
    if not cfg.is_file():
        raise GFTError(f"{str(path)!r} has no {CONFIG_NAME}")
    data = load_json(cfg)
    if not isinstance(data, dict):
        raise GFTError(f"{cfg} must hold a JSON object of settings, got a {type(data).__name__}")
    return data


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing, truncated or corrupt file raises one clear :class:`GFTError`."""
    path = Path(path)
    if not path.is_file():
        raise GFTError(f"{str(path.parent)!r} has no weights file {path.name}")
    manifest = path.parent / WEIGHTS_MANIFEST
    if manifest.is_file():  # written by save_pretrained: the content must be what was saved
        try:
            entry = json.loads(manifest.read_text())["files"].get(path.name)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise GFTError(f"{manifest} is corrupt") from None
        if isinstance(entry, dict) and sha256_file(path) != entry.get("sha256"):
            raise GFTError(f"weights file {path} is corrupt or truncated: its content does not match the sha256 in {manifest}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise GFTError(f"weights file {path} is corrupt or truncated ({exc})") from None
    for name, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise GFTError(f"weights file {path}: tensor {name} holds non-finite values (NaN or inf)")
    return state
