"""On-disk token cache: a text is tokenised once into a flat binary array that later runs memory-map.

Layout: ``<cache_dir>/<stem>-<key16>.bin`` (raw little-endian ids, uint8 for vocab <= 256, uint16 below
65,536, else uint32) next to ``<stem>-<key16>.json`` (dtype, token count, sources, tokenizer, and
``tokens_sha256``: the sha256 of the ``.bin`` file's bytes). The key is
the sha256 of the source files' contents (their paths do not matter), the tokenizer's fingerprint and
the dataset's own parameters, so editing a file or changing the tokenizer gives a new key and a fresh
tokenisation; an unchanged input reuses the array without reading the text again (only its hash, which
a size+mtime memo also skips). Writes are atomic and build under a file lock, so concurrent ranks are
safe and tokenise once.

A reused array is checked by content, not size alone: one pass over it compares its sha256 with
``tokens_sha256`` and its ids with the tokenizer's vocabulary (once per process and file: path, size,
mtime and inode). A mismatch (same-size garbage, an id beyond the vocabulary, an entry written before
checksums) rebuilds the entry from the sources with a one-line warning naming the file; a ValueError
(one line) when it cannot be rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from halo_lab.data._io import atomic_write_text, file_lock, file_sha256, pid_alive
from halo_lab.tokenizers import Tokenizer

CACHE_FORMAT = 1
_FLUSH_TOKENS = 1 << 20
_CHECK_BYTES = 1 << 24
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


# Token arrays whose content was checked in this process: (real path, size, mtime_ns, inode, sha256).
_VERIFIED: set[tuple[str, int, int, int, str]] = set()


def _check_tokens(bin_path: Path, meta: dict[str, Any], vocab_size: int) -> str | None:
    """Why the cached array at ``bin_path`` cannot be trusted (None when it can): one pass over its bytes
    for the sha256 stored in ``meta`` and the largest id (below ``vocab_size``)."""
    want = meta.get("tokens_sha256")
    if not isinstance(want, str):
        return "no checksum (written by an older halo_lab)"
    st = bin_path.stat()
    ident = (os.path.realpath(bin_path), st.st_size, st.st_mtime_ns, st.st_ino, want)
    if ident in _VERIFIED:
        return None
    digest, top = _scan_tokens(bin_path, np.dtype(meta["dtype"]), vocab_size)
    if digest != want:
        return "checksum mismatch: its contents changed after it was written"
    if top >= vocab_size:
        return f"token id {top} beyond the tokenizer's vocabulary ({vocab_size} ids)"
    _VERIFIED.add(ident)
    return None


def _scan_tokens(bin_path: Path, dtype: np.dtype, vocab_size: int) -> tuple[str, int]:
    """(sha256 of the file's bytes, its largest id or -1 when every id the dtype holds is in the vocabulary),
    in one pass of bounded memory."""
    check_ids = vocab_size <= np.iinfo(dtype).max
    h = hashlib.sha256()
    top = -1
    step = _CHECK_BYTES - _CHECK_BYTES % dtype.itemsize
    with open(bin_path, "rb") as f:
        while block := f.read(step):
            h.update(block)
            if check_ids and len(block) >= dtype.itemsize:
                ids = np.frombuffer(block, dtype=dtype, count=len(block) // dtype.itemsize)
                top = max(top, int(ids.max()))
    return h.hexdigest(), top


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

    bad: list[str] = []  # why the entry found on disk was not used

    def try_load() -> CachedTokens | None:
        try:
            meta = json.loads(meta_path.read_text())
            dtype = np.dtype(meta["dtype"])
            n = int(meta["num_tokens"])
            if meta.get("key") != key or bin_path.stat().st_size != n * dtype.itemsize:
                return None
            why = _check_tokens(bin_path, meta, tokenizer.vocab_size)
            if why is not None:
                bad.append(why)
                return None
            return CachedTokens(open_tokens(bin_path, meta["dtype"], n), bin_path, meta, True)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    hit = try_load()
    if hit is not None:
        return hit
    with file_lock(cache_dir / f".{key[:16]}.lock"):
        bad.clear()
        hit = try_load()  # another process may have built (or rebuilt) it while we waited
        if hit is not None:
            return hit
        if bad:
            warnings.warn(
                f"token cache {bin_path}: {bad[0]}; rebuilding it from {_names(sources)}", stacklevel=3
            )
        try:
            return _build(sources, tokenizer, bin_path, meta_path, key, kind, params, hashes, build)
        except OSError as e:
            if not bad:
                raise
            raise ValueError(
                f"token cache {bin_path}: {bad[0]}, and rebuilding it from {_names(sources)} failed "
                f"({e.strerror or e}): delete {bin_path} and its .json, or use another cache directory"
            ) from None


def _names(sources: list[Path]) -> str:
    return ", ".join(str(p) for p in sources[:3]) + (
        f" (+{len(sources) - 3} more)" if len(sources) > 3 else ""
    )


def _build(
    sources: list[Path],
    tokenizer: Tokenizer,
    bin_path: Path,
    meta_path: Path,
    key: str,
    kind: str,
    params: dict[str, Any],
    hashes: list[str],
    build: Callable[[dict[str, Any]], Iterable[Any]],
) -> CachedTokens:
    """Tokenise ``sources`` into ``bin_path`` (a temp file renamed into place) and write its metadata,
    with the sha256 of the array's bytes."""
    dtype = token_dtype(tokenizer.vocab_size)
    report: dict[str, Any] = {}
    tmp = bin_path.with_name(f"{bin_path.name}.tmp{os.getpid()}")
    h = hashlib.sha256()
    n = 0
    try:
        with open(tmp, "wb") as f:
            pending: list[np.ndarray] = []
            pending_n = 0

            def flush() -> None:
                block = np.ascontiguousarray(np.concatenate(pending))
                h.update(block.data)
                block.tofile(f)

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
                    flush()
                    n += pending_n
                    pending, pending_n = [], 0
            if pending:
                flush()
                n += pending_n
        # A kill between the two renames leaves no metadata (a silent rebuild), never a stale checksum.
        meta_path.unlink(missing_ok=True)
        os.replace(tmp, bin_path)
    finally:
        if tmp.is_file():
            tmp.unlink()
    meta = {
        "key": key,
        "dtype": dtype.name,
        "num_tokens": n,
        "tokens_sha256": h.hexdigest(),
        "kind": kind,
        "params": params,
        "sources": [str(p) for p in sources],
        "sha256": hashes,
        "tokenizer": tokenizer.to_dict() if tokenizer.type_name != "word" else {"type": "word"},
        "report": report,
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=1))
    return CachedTokens(open_tokens(bin_path, dtype.name, n), bin_path, meta, False)
