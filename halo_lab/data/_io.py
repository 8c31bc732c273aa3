"""File checks, chunked text reading and tokenising, content hashing and a cross-process lock, shared by the
datasets."""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import os
import re
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from halo_lab.tokenizers import CharacterTokenizer, Tokenizer

CHUNK_BYTES = 1 << 20


def as_paths(paths: str | os.PathLike | Sequence[str | os.PathLike], what: str = "data file") -> list[Path]:
    """Normalise one path or a list of paths; an empty list is an error."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    out = [Path(p).expanduser() for p in paths]
    if not out:
        raise ValueError(f"no {what} given")
    return out


def check_file(path: str | os.PathLike, what: str = "data file") -> Path:
    """The path if it is a non-empty regular file, else an error that names it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {p}")
    if p.is_dir():
        raise IsADirectoryError(f"{what} {p} is a directory; pass the file(s) inside it")
    if not p.is_file():
        raise ValueError(f"{what} {p} is not a regular file")
    if p.stat().st_size == 0:
        raise ValueError(f"{what} {p} is empty")
    return p


def line_of_offset(path: Path, offset: int) -> int:
    """1-based line number of byte ``offset`` (only computed when an error is reported)."""
    line = 1
    done = 0
    with open(path, "rb") as f:
        while done < offset:
            block = f.read(min(CHUNK_BYTES, offset - done))
            if not block:
                break
            line += block.count(b"\n")
            done += len(block)
    return line


# Safe places to cut a text between two tokenizer calls: right after a newline that is followed by a
# non-space, or right before a space/tab that follows a printable ASCII character. No word, whitespace run
# or tiktoken pre-token (gpt2 / cl100k / o200k patterns) spans either place, so chunked tokenisation gives
# the same ids as tokenising the whole text.
_SAFE_CUT = re.compile(rb"(?<=\n)(?=\S)|(?<=[\x21-\x7e])(?=[ \t])")


def _cut_point(buf: bytes) -> int:
    """Where to end a chunk so that no token spans the cut (see ``_SAFE_CUT``). Falls back to a UTF-8
    character boundary when there is no safe place (a very long run without spaces or lines)."""
    for lo in (max(0, len(buf) - (1 << 16)), 0):
        last = None
        for m in _SAFE_CUT.finditer(buf, lo):
            last = m.start()
        if last is not None:
            return last
        if lo == 0:
            break
    i = len(buf) - 1
    while i > 0 and (buf[i] & 0xC0) == 0x80:  # back to the first byte of the last (maybe partial) character
        i -= 1
    return i if i > 0 else len(buf)


# Characters of a document tokenised per call. A 50 MB JSONL line tokenised whole became a Python list
# of 50M ints (8 bytes a pointer), an int64 copy and a concatenated copy, all alive while the shuffle
# buffer held windows viewing them: 1.5 GB of RSS, 30x the line (24x under tracemalloc). In pieces it
# stays ~3x the line (its bytes, the decoded line, the JSON string) plus a piece.
TEXT_CHUNK = 1 << 16
_SAFE_CUT_STR = re.compile(_SAFE_CUT.pattern.decode())


def encode_in_chunks(tok: Tokenizer, text: str, chunk: int = TEXT_CHUNK) -> Iterator[np.ndarray]:
    """The ids of ``text`` as arrays of about ``chunk`` characters each, the same ids as one
    ``tok.encode(text)``: byte-level text is cut anywhere, other tokenizers where no token spans the cut
    (the rule of ``_cut_point``, which the text files' blocks use too; a run of ``chunk`` characters with
    no space or line break is cut at its end)."""
    if isinstance(tok, CharacterTokenizer):
        for i in range(0, len(text), chunk):
            piece = text[i : i + chunk].encode("utf-8", errors="surrogateescape")
            yield np.frombuffer(piece, dtype=np.uint8)
        return
    start = 0
    while start < len(text):
        end = len(text) if len(text) - start <= chunk else _str_cut(text, start, start + chunk)
        yield np.asarray(tok.encode(text[start:end]), dtype=np.int64)
        start = end


def _str_cut(text: str, lo: int, hi: int) -> int:
    """The last safe cut in ``text[lo + 1 : hi]`` (searched near ``hi`` first), else ``hi``."""
    for first in (max(lo + 1, hi - 4096), lo + 1):
        last = None
        for m in _SAFE_CUT_STR.finditer(text, first, hi):
            last = m.start()
        if last is not None:
            return last
    return hi


def line_start_at_or_after(f, pos: int, size: int) -> int:
    """Byte offset of the first line of the open binary file ``f`` that starts at or after ``pos``."""
    if pos <= 0:
        return 0
    if pos >= size:
        return size
    f.seek(pos - 1)
    f.readline()
    return f.tell()


def iter_byte_chunks(
    path: Path, chunk_bytes: int = CHUNK_BYTES, limit: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) chunks of a file, cut at safe token boundaries (see ``_cut_point``). With ``limit``,
    only the lines that start before byte ``limit`` are read."""
    offset = 0
    carry = b""
    with open(path, "rb") as f:
        end = None if limit is None else line_start_at_or_after(f, limit, path.stat().st_size)
        f.seek(0)
        while True:
            block = f.read(
                chunk_bytes if end is None else max(0, min(chunk_bytes, end - offset - len(carry)))
            )
            if not block:
                if carry:
                    yield offset, carry
                return
            buf = carry + block
            cut = _cut_point(buf)
            yield offset, buf[:cut]
            offset += cut
            carry = buf[cut:]


_bad = threading.local()


def _count_and_replace(exc: UnicodeDecodeError) -> tuple[str, int]:
    _bad.count = getattr(_bad, "count", 0) + (exc.end - exc.start)
    return "\ufffd", exc.end


codecs.register_error("halo_count_replace", _count_and_replace)


def iter_text_chunks(
    path: Path, errors: str = "replace", chunk_bytes: int = CHUNK_BYTES, limit: int | None = None
) -> Iterator[str]:
    """Decoded UTF-8 chunks of a text file. ``errors="replace"`` substitutes U+FFFD for invalid bytes and
    warns once per file (naming the file and the first bad line); ``"strict"`` raises a ValueError."""
    if errors not in ("replace", "strict"):
        raise ValueError(f"encoding_errors must be 'replace' or 'strict', got {errors!r}")
    bad = 0
    first = None
    for offset, chunk in iter_byte_chunks(path, chunk_bytes, limit):
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as e:
            where = offset + e.start
            if errors == "strict":
                raise ValueError(
                    f"{path}: not valid UTF-8 at line {line_of_offset(path, where)} (byte {where}): {e.reason}. "
                    "Use encoding_errors='replace', or the byte-level 'char' tokenizer, which reads raw bytes"
                ) from None
            first = where if first is None else first
            _bad.count = 0
            text = chunk.decode("utf-8", errors="halo_count_replace")
            bad += _bad.count
        yield text
    if bad:
        warnings.warn(
            f"{path}: {bad} byte(s) are not valid UTF-8 (first at line {line_of_offset(path, first)}, byte "
            f"{first}); they were replaced with U+FFFD. The byte-level 'char' tokenizer keeps raw bytes.",
            stacklevel=3,
        )


def file_sha256(path: Path, memo_dir: Path | None = None) -> str:
    """sha256 of the file's contents. With ``memo_dir``, a (path, size, mtime) -> hash memo avoids re-reading
    unchanged large files on every run; a changed size or mtime forces a re-hash."""
    st = path.stat()
    memo = None
    if memo_dir is not None:
        key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()
        memo = memo_dir / f"{key}.json"
        try:
            m = json.loads(memo.read_text())
            if m["size"] == st.st_size and m["mtime_ns"] == st.st_mtime_ns:
                return m["sha256"]
        except (OSError, ValueError, KeyError):
            pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(block)
    digest = h.hexdigest()
    if memo is not None:
        with contextlib.suppress(OSError):
            memo_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                memo, json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest})
            )
    return digest


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (True when unsure: its files are then kept)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # alive but not ours (EPERM), or unknown
    return True


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock across processes (every DDP rank may prepare data; only one does the work, the others
    wait and then find it done). A no-op where fcntl does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def default_cache_dir() -> Path:
    """Token cache when none is given: $HALO_CACHE_DIR, else $XDG_CACHE_HOME/halo_lab/tokens (~/.cache)."""
    env = os.environ.get("HALO_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "halo_lab" / "tokens"
