"""Map-style next-token datasets over a cached, memory-mapped token array: TextDataset and JSONLDataset."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from halo_lab.data._io import as_paths, check_file, default_cache_dir, iter_byte_chunks, iter_text_chunks
from halo_lab.data.cache import cached_tokens, open_tokens
from halo_lab.tokenizers import CharacterTokenizer, Tokenizer, WordTokenizer, build_tokenizer

PathLike = str | os.PathLike


BINARY_SNIFF_BYTES = 1 << 16


class DataError(ValueError):
    """The data itself cannot be trained on (too short, malformed, binary, ...); the message names the
    file and what to do. The runner prints it as one line."""


@contextlib.contextmanager
def data_errors():
    """Re-raise a ValueError from preparing data as a :class:`DataError` (same message)."""
    try:
        yield
    except DataError:
        raise
    except ValueError as exc:
        raise DataError(str(exc)) from exc


def check_text_file(path: str | os.PathLike, what: str = "text file") -> Path:
    """:func:`check_file` and a NUL-byte check of the first 64 KiB: text (UTF-8, and JSON lines) never
    holds a NUL byte, binaries (executables, archives, tensors) and UTF-16 text almost always do, and the
    byte-level tokenizer would silently read NUL as its end-of-text id."""
    p = check_file(path, what)
    with open(p, "rb") as f:
        head = f.read(BINARY_SNIFF_BYTES)
    at = head.find(b"\0")
    if at >= 0:
        kind = " (UTF-16 text? convert it to UTF-8)" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ValueError(
            f"{what} {p} looks like a binary file: a NUL byte at byte {at}{kind}; pass a UTF-8 text file"
        )
    return p


def _resolve_tokenizer(tokenizer: Tokenizer | str | dict) -> Tokenizer:
    tok = build_tokenizer(tokenizer)
    if isinstance(tok, WordTokenizer) and tok.vocab_size <= 2:
        raise ValueError(
            "the WordTokenizer has no vocabulary yet: call build_vocab(texts) or load a saved one"
        )
    return tok


class TokenWindowDataset(Dataset):
    """Fixed-length windows over a 1-D token array: item i is ``(tokens[s:s+T], tokens[s+1:s+T+1])`` with
    ``s = start + i * stride``. Windows never run past the end; a tail shorter than a window is dropped."""

    def __init__(
        self,
        tokens: np.ndarray,
        max_seq_len: int,
        stride: int | None = None,
        name: str = "dataset",
        span: tuple[int, int] | None = None,
    ) -> None:
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
        stride = max_seq_len if stride is None else int(stride)
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.max_seq_len = int(max_seq_len)
        self.stride = stride
        self.name = name
        self.tokens = tokens
        self.start, self.end = span if span is not None else (0, len(tokens))
        n = self.end - self.start
        need = self.max_seq_len + 1
        if n < need:
            raise ValueError(
                f"{name} has {n} tokens, fewer than max_seq_len + 1 = {need}: use a shorter max_seq_len "
                "(seq_len) or more text"
            )
        self._len = (n - need) // stride + 1

    @property
    def num_tokens(self) -> int:
        return self.end - self.start

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"index {i} out of range for {self.name} of length {self._len}")
        s = self.start + i * self.stride
        chunk = torch.from_numpy(np.asarray(self.tokens[s : s + self.max_seq_len + 1], dtype=np.int64))
        return chunk[:-1], chunk[1:]


def _split_span(n: int, split: tuple[float, float], tokens: np.ndarray | None = None, eos: int | None = None):
    a, b = split
    if not 0.0 <= a < b <= 1.0:
        raise ValueError(f"split must satisfy 0 <= start < end <= 1, got {split}")
    lo, hi = round(a * n), round(b * n)
    if tokens is not None and eos is not None:
        # Move each inner cut to just after the next end-of-text so no document is split across parts.
        lo, hi = (_after_eos(tokens, c, eos) if 0 < c < n else c for c in (lo, hi))
    return lo, hi


def _after_eos(tokens: np.ndarray, pos: int, eos: int) -> int:
    step = 1 << 16
    for s in range(pos, len(tokens), step):
        hits = np.flatnonzero(np.asarray(tokens[s : s + step]) == eos)
        if hits.size:
            return s + int(hits[0]) + 1
    return pos


class _CachedWindowDataset(TokenWindowDataset):
    # The memmap is reopened from its path after unpickling (spawned workers) instead of being copied.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["tokens"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        m = self.cache_meta
        self.tokens = open_tokens(self.cache_path, m["dtype"], int(m["num_tokens"]))


class TextDataset(_CachedWindowDataset):
    """Next-token windows over one or more text files, tokenised once and cached on disk.

    Args:
        paths: a file or a list of files; several files are joined with the end-of-text id between them.
        tokenizer: a :class:`~halo_lab.tokenizers.Tokenizer` (or a name for ``build_tokenizer``).
        max_seq_len: window length T; items are ``(input_ids, targets)`` LongTensors of shape ``[T]`` with
            ``targets[t] == input_ids[t + 1]``.
        stride: start-to-start distance of windows (default T: non-overlapping).
        cache_dir: where the token array lives (default: ``$HALO_CACHE_DIR`` or ``~/.cache/halo_lab/tokens``;
            the data module passes ``<data_dir>/cache``).
        split: ``(start, end)`` fractions of the token array this dataset uses, e.g. ``(0, 0.9)`` for train
            and ``(0.9, 1)`` for validation of a single file.
        encoding_errors: ``"replace"`` (invalid UTF-8 becomes U+FFFD with a warning naming the file) or
            ``"strict"`` (a ValueError). The byte-level tokenizer reads raw bytes and needs neither.

    The cache is keyed by the files' contents and the tokenizer, so a changed file or tokenizer is
    re-tokenised and an unchanged one is memory-mapped without reading the text again.
    """

    def __init__(
        self,
        paths: PathLike | Sequence[PathLike],
        tokenizer: Tokenizer | str,
        max_seq_len: int,
        stride: int | None = None,
        cache_dir: PathLike | None = None,
        split: tuple[float, float] = (0.0, 1.0),
        encoding_errors: str = "replace",
    ) -> None:
        files = [check_text_file(p, "text file") for p in as_paths(paths, "text file")]
        tok = _resolve_tokenizer(tokenizer)
        if encoding_errors not in ("replace", "strict"):
            raise ValueError(f"encoding_errors must be 'replace' or 'strict', got {encoding_errors!r}")
        self.tokenizer = tok
        self.paths = files

        def build(report: dict[str, Any]):
            for k, path in enumerate(files):
                if k:
                    yield [tok.eos_token_id]
                if isinstance(tok, CharacterTokenizer):
                    for _, chunk in iter_byte_chunks(path):
                        yield np.frombuffer(chunk, dtype=np.uint8)
                else:
                    # Groups of 1 MB chunks: a tokenizer with threads (tiktoken) encodes them in parallel.
                    group: list[str] = []
                    for text in iter_text_chunks(path, errors=encoding_errors):
                        group.append(text)
                        if len(group) == 8:
                            yield from tok.encode_batch(group)
                            group = []
                    if group:
                        yield from tok.encode_batch(group)

        params = {"errors": encoding_errors} if not isinstance(tok, CharacterTokenizer) else {}
        cached = cached_tokens(
            files, tok, cache_dir if cache_dir is not None else default_cache_dir(), "text", params, build
        )
        self.cache_path, self.cache_meta, self.cache_reused = cached.path, cached.meta, cached.reused
        name = f"TextDataset({', '.join(str(p) for p in files)})"
        if tuple(split) != (0.0, 1.0):
            name += f" split {split[0]:g}-{split[1]:g}"
        if len(cached.tokens) == 0:
            raise ValueError(f"{name}: tokenising gave no tokens")
        span = _split_span(len(cached.tokens), tuple(split))
        super().__init__(cached.tokens, max_seq_len, stride, name, span)


class JSONLDataset(_CachedWindowDataset):
    """Next-token windows over a JSON-lines file: the ``text_field`` of each line is one document, and
    documents are joined with the end-of-text id (each one followed by it).

    A line that is not valid JSON, not an object, lacks ``text_field`` or holds a non-string there is an
    error naming the file and line number; with ``skip_bad_lines=True`` such lines are skipped and counted
    (``self.skipped_lines``, and a warning). Blank lines are ignored. ``split`` cuts are moved to the next
    document boundary, so a validation part never shares a document with the training part. Other
    arguments as in :class:`TextDataset`.
    """

    def __init__(
        self,
        path: PathLike | Sequence[PathLike],
        tokenizer: Tokenizer | str,
        max_seq_len: int,
        text_field: str = "text",
        skip_bad_lines: bool = False,
        stride: int | None = None,
        cache_dir: PathLike | None = None,
        split: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        files = [check_text_file(p, "JSONL file") for p in as_paths(path, "JSONL file")]
        tok = _resolve_tokenizer(tokenizer)
        self.tokenizer = tok
        self.paths = files
        self.text_field = text_field

        def build(report: dict[str, Any]):
            skipped = 0
            first_bad = None
            docs = 0
            for path in files:
                for lineno, text, err in iter_jsonl_docs(path, text_field):
                    if err is not None:
                        if not skip_bad_lines:
                            raise ValueError(
                                f"{path}:{lineno}: {err} (pass skip_bad_lines=True to skip such lines)"
                            )
                        skipped += 1
                        first_bad = first_bad or f"{path}:{lineno}: {err}"
                        continue
                    docs += 1
                    ids = tok.encode(text)
                    ids.append(tok.eos_token_id)
                    yield ids
            report.update(skipped_lines=skipped, first_bad_line=first_bad, documents=docs)

        params = {"text_field": text_field, "skip_bad_lines": bool(skip_bad_lines)}
        cached = cached_tokens(
            files, tok, cache_dir if cache_dir is not None else default_cache_dir(), "jsonl", params, build
        )
        self.cache_path, self.cache_meta, self.cache_reused = cached.path, cached.meta, cached.reused
        report = cached.meta.get("report", {})
        self.skipped_lines = int(report.get("skipped_lines", 0))
        self.num_documents = int(report.get("documents", 0))
        name = f"JSONLDataset({', '.join(str(p) for p in files)})"
        if self.skipped_lines:
            warnings.warn(
                f"{name}: skipped {self.skipped_lines} bad line(s); first: {report.get('first_bad_line')}",
                stacklevel=2,
            )
        if self.num_documents == 0:
            raise ValueError(f"{name}: no document with a {text_field!r} string field")
        if tuple(split) != (0.0, 1.0):
            name += f" split {split[0]:g}-{split[1]:g}"
        span = _split_span(len(cached.tokens), tuple(split), cached.tokens, tok.eos_token_id)
        super().__init__(cached.tokens, max_seq_len, stride, name, span)


def parse_jsonl_line(raw: bytes, text_field: str) -> tuple[str | None, str | None]:
    """(text, None) for a good line, (None, reason) for a bad one, (None, None) for a blank one."""
    if not raw.strip():
        return None, None
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"not valid UTF-8 ({e.reason} at byte {e.start} of the line)"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON ({e.msg} at column {e.colno})"
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    if text_field not in obj:
        return None, f"missing field {text_field!r} (fields: {sorted(obj)[:10]})"
    value = obj[text_field]
    if not isinstance(value, str):
        return None, f"field {text_field!r} is {type(value).__name__}, not a string"
    return value, None


def iter_jsonl_docs(path: Path, text_field: str):
    """(line number, text or None, error or None) for each non-blank line of a JSONL file."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            text, err = parse_jsonl_line(raw, text_field)
            if text is None and err is None:
                continue
            yield lineno, text, err
