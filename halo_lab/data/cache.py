"""On-disk token cache: a text is tokenised once into a flat binary array that later runs memory-map.

Layout: ``<cache_dir>/<stem>-<key16>.bin`` (raw little-endian ids, uint8 for vocab <= 256, uint16 below
65,536, else uint32) next to ``<stem>-<key16>.json`` (dtype, token count, sources, tokenizer). The key is
the sha256 of the source files' contents (their paths do not matter), the tokenizer's fingerprint and
the dataset's own parameters, so editing a file or changing the tokenizer gives a new key and a fresh
tokenisation; an unchanged input reuses the array without reading the text again (only its hash, which
a size+mtime memo also skips). Writes are atomic and build under a file lock, so concurrent ranks are
safe and tokenise once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from halo_lab.data._io import atomic_write_text, file_lock, file_sha256, pid_alive
from halo_lab.tokenizers import Tokenizer

CACHE_FORMAT = 1
_FLUSH_TOKENS = 1 << 20
# Temp files of the writers here: "<name>.bin.tmp<pid>" (the array) and "<name>.tmp<pid>.<thread>"
# (halo_lab.data._io.atomic_write_text: metadata, hash memos).
_TMP = re.compile(r"^(?P<base>.+)\.tmp(?P<pid>\d+)(?:\.\d+)?$")
_BIN_KEY = re.compile(r"-(?P<key>[0-9a-f]{16})\.bin$")
_STALE_SMALL_S = 60.0


def token_dtype(vocab_size: int) -> np.dtype:
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise ValueError(f"vocab_size {vocab_size} does not fit in uint32")


@dataclass
class CachedTokens:
    tokens: np.ndarray  # read-only memmap (or an empty array)
    path: Path
    meta: dict[str, Any]
    reused: bool


def open_tokens(bin_path: Path, dtype: str, n: int) -> np.ndarray:
    if n == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(bin_path, dtype=dtype, mode="r", shape=(n,))


@contextlib.contextmanager
def _try_lock(path: Path):
    """Yields True when the exclusive lock was free (and holds it), False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: never delete what might be in use
        yield False
        return
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def clean_stale_temp_files(cache_dir: str | os.PathLike) -> list[Path]:
    """Remove temp files a killed tokenisation left in ``cache_dir`` (and its ``hashes`` memo): an array
    ``*.bin.tmp<pid>`` whose build lock is free (nobody, on any host sharing the directory, is building
    it), and small metadata temp files whose process is gone and that are older than a minute."""
    removed: list[Path] = []
    root = Path(cache_dir)
    now = time.time()
    for d in (root, root / "hashes"):
        try:
            entries = list(d.iterdir())
        except OSError:
            continue
        for f in entries:
            m = _TMP.match(f.name)
            if m is None or not f.is_file():
                continue
            pid = int(m.group("pid"))
            if pid == os.getpid():
                continue
            key = _BIN_KEY.search(m.group("base"))
            try:
                if key is not None:
                    with _try_lock(root / f".{key.group('key')}.lock") as free:
                        if free:
                            f.unlink()
                            removed.append(f)
                elif not pid_alive(pid) and now - f.stat().st_mtime > _STALE_SMALL_S:
                    f.unlink()
                    removed.append(f)
            except OSError:
                pass
    return removed


def cached_tokens(
    sources: list[Path],
    tokenizer: Tokenizer,
    cache_dir: str | os.PathLike,
    kind: str,
    params: dict[str, Any],
    build: Callable[[dict[str, Any]], Iterable[Any]],
) -> CachedTokens:
    """Return the token array for ``sources``, building it with ``build(report)`` when not cached.

    ``build`` yields id sequences (lists or arrays) in order and may put JSON-able facts into ``report``
    (e.g. skipped lines); they are stored in the metadata and returned on reuse too.
    """
    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_temp_files(cache_dir)  # what a killed tokenisation left behind
    hashes = [file_sha256(p, memo_dir=cache_dir / "hashes") for p in sources]
    key_src = {
        "format": CACHE_FORMAT,
        "kind": kind,
        "params": params,
        "tokenizer": tokenizer.fingerprint(),
        "files": hashes,
    }
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in sources[0].stem)[:40] or "data"
    # Reuse an array built from the same contents under another file name (the key ignores paths).
    found = sorted(cache_dir.glob(f"*-{key[:16]}.json"))
    name = found[0].name[: -len(".json")] if found else f"{stem}-{key[:16]}"
    bin_path, meta_path = cache_dir / f"{name}.bin", cache_dir / f"{name}.json"

    def try_load() -> CachedTokens | None:
        try:
            meta = json.loads(meta_path.read_text())
            dtype = np.dtype(meta["dtype"])
            n = int(meta["num_tokens"])
            if meta.get("key") != key or bin_path.stat().st_size != n * dtype.itemsize:
                return None
            return CachedTokens(open_tokens(bin_path, meta["dtype"], n), bin_path, meta, True)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    hit = try_load()
    if hit is not None:
        return hit
    with file_lock(cache_dir / f".{key[:16]}.lock"):
        hit = try_load()  # another process may have built it while we waited
        if hit is not None:
            return hit
        dtype = token_dtype(tokenizer.vocab_size)
        report: dict[str, Any] = {}
        tmp = bin_path.with_name(f"{bin_path.name}.tmp{os.getpid()}")
        n = 0
        try:
            with open(tmp, "wb") as f:
                pending: list[np.ndarray] = []
                pending_n = 0
                for ids in build(report):
                    arr = np.asarray(ids)
                    if arr.size == 0:
                        continue
                    if arr.min() < 0 or arr.max() >= tokenizer.vocab_size:
                        raise ValueError(
                            f"token id outside [0, {tokenizer.vocab_size}) while tokenising {sources}"
                        )
                    pending.append(arr.astype(dtype, copy=False))
                    pending_n += arr.size
                    if pending_n >= _FLUSH_TOKENS:
                        np.concatenate(pending).tofile(f)
                        n += pending_n
                        pending, pending_n = [], 0
                if pending:
                    np.concatenate(pending).tofile(f)
                    n += pending_n
            os.replace(tmp, bin_path)
        finally:
            if tmp.exists():
                tmp.unlink()
        meta = {
            "key": key,
            "dtype": dtype.name,
            "num_tokens": n,
            "kind": kind,
            "params": params,
            "sources": [str(p) for p in sources],
            "sha256": hashes,
            "tokenizer": tokenizer.to_dict() if tokenizer.type_name != "word" else {"type": "word"},
            "report": report,
        }
        atomic_write_text(meta_path, json.dumps(meta, indent=1))
        return CachedTokens(open_tokens(bin_path, dtype.name, n), bin_path, meta, False)
