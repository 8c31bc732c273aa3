"""Checkpoint integrity: loading torch files safely by itself, and a content checksum.

- :func:`safe_torch_load`: ``torch.load(..., weights_only=True)`` passed explicitly, so no setting of
  torch's (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` included) can make a checkpoint run code; every failure
  (an empty, truncated, random or pickled-code file) is a :class:`CheckpointFileError` whose one-line
  message names the file and what to do.
- :func:`add_checksum` / :func:`verify_checksum`: a sha256 over every tensor and plain value of a
  checkpoint (keys, dtypes, shapes, bytes), stored in the checkpoint itself under :data:`CHECKSUM_KEY`;
  a flipped bit anywhere in the data gives a clear error instead of a silently different model. The
  runner's checkpoint plugin adds it to every checkpoint it writes.

Plain torch: no Lightning, Hydra or model import (the weights readers below the model use it too).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

CHECKSUM_KEY = "halo_lab_checksum"
CHECKSUM_ALGORITHM = "sha256-v1"


class CheckpointFileError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what to do."""


# -------------------------------------------------------------------------------------------- loading
def safe_torch_load(path: str | os.PathLike, *, mmap: bool = False, what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; a one-line CheckpointFileError if the
    file is not a readable torch file of tensors and plain containers. ``mmap=True`` maps the tensor data
    instead of reading it (falls back to a plain read for the legacy non-zip format)."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise CheckpointFileError(f"{p}: cannot read the {what} ({e.strerror or e})") from None
    if size == 0:
        raise CheckpointFileError(
            f"{p}: an empty file (0 bytes), not a {what}; it was probably cut off by a crash: use another "
            "checkpoint, or start fresh"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's legacy-format notes: the error below says it all
            return torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if mmap and "mmap" in str(e):
            return safe_torch_load(p, mmap=False, what=what)
        text = " ".join(str(e).split())
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
        if found:
            raise CheckpointFileError(
                f"{p}: the {what} holds Python objects other than tensors and plain containers "
                f"({found.group(1)} is not allowed); halo_lab loads torch files only with weights_only=True, "
                "so no code in a file ever runs: use a checkpoint written by halo_lab, or re-save this one "
                "with plain dicts of tensors"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?: Check the documentation|$)", text)
        why = f"unreadable pickle data: {detail.group(1)[:120]}" if detail else _short(e)
        raise CheckpointFileError(f"{p}: not a readable {what} ({why}); {_ADVICE}") from None
    except RuntimeError as e:
        if mmap and "mmap" in str(e).lower():
            return safe_torch_load(p, mmap=False, what=what)
        raise CheckpointFileError(f"{p}: not a readable {what} ({_describe(p, e)}); {_ADVICE}") from None
    except (EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise CheckpointFileError(f"{p}: not a readable {what} ({_describe(p, e)}); {_ADVICE}") from None


_ADVICE = "the file is truncated, corrupted or not a torch checkpoint: use another checkpoint, or start fresh"


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]


def _describe(p: Path, e: BaseException) -> str:
    if isinstance(e, EOFError):
        return "it ends early"
    if isinstance(e, KeyError | IndexError | TypeError):
        return "unexpected content"
    msg = str(e)
    if "central directory" in msg or "zip archive" in msg or isinstance(e, zipfile.BadZipFile):
        head = b""
        try:
            with open(p, "rb") as f:
                head = f.read(4)
        except OSError:
            pass
        if head.startswith(b"PK"):
            return "a zip archive that is cut off or damaged"
        return "neither a zip-format torch file nor a legacy one"
    return _short(e)


# -------------------------------------------------------------------------------------------- checksum
def _update(h: Any, obj: Any, skip_top: bool) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.is_sparse or t.layout != torch.strided or t.is_quantized:
            h.update(b"?")  # unusual layouts: described, not hashed
            return
        t = t.cpu().contiguous().reshape(-1)
        if t.numel():
            h.update(memoryview(t.view(torch.uint8).numpy()))
        return
    if isinstance(obj, Mapping):
        items = sorted(
            ((k, v) for k, v in obj.items() if not (skip_top and k == CHECKSUM_KEY)),
            key=lambda kv: repr(kv[0]),
        )
        h.update(f"M{len(items)}".encode())
        for k, v in items:
            h.update(b"k" + repr(k).encode())
            _update(h, v, False)
        return
    if isinstance(obj, list | tuple):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _update(h, v, False)
        return
    if obj is None or isinstance(obj, bool | int | float | str | bytes):
        h.update(f"V{type(obj).__name__}:{obj!r}".encode())
        return
    h.update(f"O{type(obj).__name__}".encode())  # other leaves (dtypes, sizes...): their type only


def checkpoint_checksum(checkpoint: Mapping[str, Any]) -> str:
    """sha256 (hex) of every key, tensor (dtype, shape, bytes) and plain value of ``checkpoint``, its
    own :data:`CHECKSUM_KEY` entry left out."""
    h = hashlib.sha256(CHECKSUM_ALGORITHM.encode())
    _update(h, checkpoint, True)
    return h.hexdigest()


def add_checksum(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Store the checksum in ``checkpoint`` (in place) and return it."""
    checkpoint.pop(CHECKSUM_KEY, None)
    checkpoint[CHECKSUM_KEY] = {"algorithm": CHECKSUM_ALGORITHM, "sha256": checkpoint_checksum(checkpoint)}
    return checkpoint


def verify_checksum(checkpoint: Any, source: str | os.PathLike) -> bool:
    """True when ``checkpoint`` carries a checksum that matches, False when it carries none (written
    before checksums, or by another program); a CheckpointFileError when it does not match."""
    if not isinstance(checkpoint, Mapping):
        return False
    stored = checkpoint.get(CHECKSUM_KEY)
    if not isinstance(stored, Mapping) or stored.get("algorithm") != CHECKSUM_ALGORITHM:
        return False
    if checkpoint_checksum(checkpoint) != stored.get("sha256"):
        raise CheckpointFileError(
            f"{source}: checksum mismatch: the checkpoint's contents changed after it was written (a "
            "corrupted disk or copy, or an edit); use another checkpoint (an earlier last.ckpt copy or a "
            "best-*.ckpt), or start fresh"
        )
    return True


# -------------------------------------------------------------------------------------------- files
_VERIFIED: set[tuple[str, int, int, int]] = set()


def _identity(path: str | os.PathLike) -> tuple[str, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)


def load_checkpoint_file(path: str | os.PathLike, *, mmap: bool = False, verify: bool = True) -> Any:
    """:func:`safe_torch_load` + :func:`verify_checksum`. A file verified once in this process (same
    path, size, mtime and inode) is not hashed again."""
    ident = _identity(path)
    obj = safe_torch_load(path, mmap=mmap)
    if verify and ident not in _VERIFIED:
        if verify_checksum(obj, path) and ident is not None:
            _VERIFIED.add(ident)
    return obj
