"""StreamingDataset: next-token windows read lazily from text or JSONL files of any size.

Sharding. Every file is cut into ``world_size * num_workers`` byte ranges; DataLoader worker ``w`` of rank
``r`` reads range ``r * num_workers + w`` of every file. A line belongs to the range that holds its first
byte, so the ranges partition the lines exactly: no document (JSONL) or line (text) is read by two
workers or two ranks, and none is dropped. Each shard tokenises its lines into one stream (JSONL
documents followed by the end-of-text id), cuts it into windows of ``max_seq_len + 1`` tokens (windows
share their boundary token, like ``stride = max_seq_len``), and shuffles windows in a bounded buffer of
``buffer_size`` seeded by (seed, epoch, shard). Memory is O(buffer_size * max_seq_len), whatever the file
size. The tail of a shard shorter than a window is dropped.

Epochs. The epoch number seeds the file order and the buffer: ``set_epoch(e)`` sets it, and every new
iteration advances it by one (in each worker too, so persistent workers also reshuffle).

Position (resume). ``state_dict()`` / ``load_state_dict()`` save and restore (epoch, samples yielded): on
restore the same deterministic stream is replayed and the consumed samples are skipped, so nothing is
repeated or lost. Counting in the dataset is exact with ``num_workers=0``; with workers use
:class:`StreamingDataLoader` (what ``HaloDataModule`` returns), which counts batches in the main process
and gives each worker its own share to skip. Lightning saves that loader's state in checkpoints. A
restore with a different number of workers cannot map the position and restarts the epoch (warned).

Distributed. Rank and world size come from the explicit ``rank`` / ``world_size`` arguments, else from
``torch.distributed`` when initialised, else from the ``RANK`` / ``WORLD_SIZE`` environment. Ranks can get
a few windows more or fewer than each other: under DDP use ``infinite=True`` with ``max_steps`` (or
``limit_train_batches``) so no rank runs out of batches while the others wait.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from halo_lab.data._io import _cut_point, as_paths, encode_in_chunks, line_of_offset, line_start_at_or_after
from halo_lab.data.datasets import PathLike, _resolve_tokenizer, check_text_file, parse_jsonl_line
from halo_lab.tokenizers import CharacterTokenizer, Tokenizer

FORMATS = ("jsonl", "txt")
_BLOCK = 1 << 16


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class StreamingDataset(IterableDataset):
    """Lazily read, sharded, buffer-shuffled next-token windows (see the module docstring for the scheme).

    Args:
        file_paths: one file or a list; errors for a missing, empty or directory path are raised here.
        tokenizer: a tokenizer (or a name for ``build_tokenizer``).
        max_seq_len: window length T; items are ``(input_ids, targets)`` LongTensors of shape ``[T]``.
        buffer_size: windows held for shuffling; 0 or 1 keeps the file order (validation).
        text_field: JSONL field holding the text.
        file_format: ``"jsonl"`` (one document per line) or ``"txt"`` (plain text, read by lines).
        seed: seeds the file order and the shuffle buffer (with the epoch and the shard).
        rank, world_size: override the distributed rank and size (tests; normally detected).
        split: ``(start, end)`` byte fractions of every file this dataset reads, e.g. ``(0, 0.95)`` and
            ``(0.95, 1)`` for train/validation; cuts fall on line starts, so the parts are disjoint.
        infinite: start the next epoch when one ends instead of stopping.
        encoding_errors: for ``txt`` with a non-byte tokenizer: ``"replace"`` (U+FFFD, warned) or ``"strict"``.
        skip_bad_lines: skip (and count) malformed JSONL lines instead of raising.
        validate: JSONL only: scan every line of every file once, here, so a malformed line is an error
            naming ``file:line`` before training starts (with ``skip_bad_lines``: one warning with their
            count), instead of a failure when the stream reaches it (and again after each resume).
        cache_dir: where the scan's result is remembered per file (path, size, mtime), so an unchanged
            file is scanned once (the data module passes ``<data_dir>/cache``).
    """

    def __init__(
        self,
        file_paths: PathLike | Sequence[PathLike],
        tokenizer: Tokenizer | str,
        max_seq_len: int,
        buffer_size: int = 1000,
        text_field: str = "text",
        file_format: str = "jsonl",
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        split: tuple[float, float] = (0.0, 1.0),
        infinite: bool = False,
        encoding_errors: str = "replace",
        skip_bad_lines: bool = False,
        validate: bool = True,
        cache_dir: PathLike | None = None,
    ) -> None:
        super().__init__()
        if file_format not in FORMATS:
            raise ValueError(f"file_format must be one of {FORMATS}, got {file_format!r}")
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
        if buffer_size < 0:
            raise ValueError(f"buffer_size must be >= 0, got {buffer_size}")
        a, b = split
        if not 0.0 <= a < b <= 1.0:
            raise ValueError(f"split must satisfy 0 <= start < end <= 1, got {split}")
        if encoding_errors not in ("replace", "strict"):
            raise ValueError(f"encoding_errors must be 'replace' or 'strict', got {encoding_errors!r}")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if world_size is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.files = [check_text_file(p, f"{file_format} file") for p in as_paths(file_paths, "streaming file")]
        resolved = [p.resolve() for p in self.files]
        dupes = sorted({str(p) for p in resolved if resolved.count(p) > 1})
        if dupes:
            raise ValueError(f"StreamingDataset: files listed more than once would repeat samples: {dupes}")
        self.tokenizer = _resolve_tokenizer(tokenizer)
        self.max_seq_len = int(max_seq_len)
        self.buffer_size = int(buffer_size)
        self.text_field = text_field
        self.file_format = file_format
        self.seed = int(seed)
        self.rank, self.world_size = rank, world_size
        self.split = (float(a), float(b))
        self.infinite = bool(infinite)
        self.encoding_errors = encoding_errors
        self.skip_bad_lines = bool(skip_bad_lines)
        # Any tokenizer gives at most one token per byte, so too few bytes means too few tokens.
        nbytes = sum(round(b * p.stat().st_size) - round(a * p.stat().st_size) for p in self.files)
        if nbytes < self.max_seq_len + 1:
            raise ValueError(
                f"StreamingDataset({', '.join(map(str, self.files))}) split {a:g}-{b:g} holds {nbytes} bytes, "
                f"fewer than max_seq_len + 1 = {self.max_seq_len + 1} tokens: use a shorter max_seq_len or more text"
            )
        self.scanned = False
        self.skipped_lines = 0
        if file_format == "jsonl" and validate:
            self._validate_jsonl(Path(cache_dir).expanduser() if cache_dir is not None else None)
        elif file_format == "jsonl" and not self.skip_bad_lines:
            for p in self.files:
                self._check_first_line(p)
        self._epoch = 0
        self._current_epoch = 0
        self._yielded = 0
        self._resume: dict[str, Any] | None = None
        self._pinned_dist: tuple[int, int] | None = None

    def _validate_jsonl(self, cache_dir: Path | None) -> None:
        """Every line of every file checked up front (see ``validate``)."""
        total, first = 0, None
        for p in self.files:
            res = scan_jsonl(p, self.text_field, cache_dir)
            total += res["bad_lines"]
            if res["bad_lines"] and first is None:
                line, err = res["first_bad"]
                first = f"{p}:{line}: {err}"
            if res["documents"] == 0 and (self.skip_bad_lines or not res["bad_lines"]):
                bad = f" ({res['bad_lines']} bad lines)" if res["bad_lines"] else ""
                raise ValueError(f"{p}: no JSONL document with a {self.text_field!r} string in the file{bad}")
        self.scanned = True
        self.skipped_lines = total if self.skip_bad_lines else 0
        if total and not self.skip_bad_lines:
            more = f" ({total} bad lines in all)" if total > 1 else ""
            raise ValueError(f"{first}{more}; fix the file(s), or pass skip_bad_lines=True to skip such lines")
        if total:
            warnings.warn(f"StreamingDataset: skipping {total} bad JSONL line(s); first: {first}", stacklevel=3)

    def _check_first_line(self, path: Path) -> None:
        # Fail at construction, not in a worker mid-epoch, when the file is not JSONL at all.
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                text, err = parse_jsonl_line(raw, self.text_field)
                if err is not None:
                    raise ValueError(f"{path}:{lineno}: {err}")
                if text is not None:
                    return
        raise ValueError(f"{path}: no JSONL document in the file")

    # -------------------------------------------------------------------------------- position
    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def state_dict(self) -> dict[str, Any]:
        """Position of the current epoch in this process (exact with ``num_workers=0``)."""
        return {"epoch": self._current_epoch, "samples": self._yielded, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed", self.seed) != self.seed:
            warnings.warn(
                f"StreamingDataset: restoring a position saved with seed {state['seed']} (now {self.seed})",
                stacklevel=2,
            )
        self.resume(int(state["epoch"]), int(state["samples"]), batch_size=1, num_workers=0)

    def resume(self, epoch: int, batches: int, batch_size: int, num_workers: int) -> None:
        """The next iteration starts epoch ``epoch`` after ``batches`` batches of ``batch_size`` consumed
        from a DataLoader with ``num_workers`` workers (which take batches round-robin)."""
        self._epoch = epoch
        self._resume = {
            "epoch": epoch,
            "batches": batches,
            "batch_size": batch_size,
            "num_workers": num_workers,
        }

    def _skip_for(self, epoch: int, worker: int, num_workers: int) -> int:
        r = self._resume
        self._resume = None
        if r is None or r["epoch"] != epoch or r["batches"] == 0:
            return 0
        saved = max(int(r["num_workers"]), 1)
        if saved != max(num_workers, 1):
            warnings.warn(
                f"StreamingDataset: position saved with {r['num_workers']} workers cannot be mapped onto "
                f"{num_workers}; epoch {epoch} restarts from its beginning",
                stacklevel=2,
            )
            return 0
        k = r["batches"]
        mine = k // saved + (1 if worker < k % saved else 0)
        return mine * int(r["batch_size"])

    # -------------------------------------------------------------------------------- iteration
    def _shard(self) -> tuple[int, int, int, int]:
        if self.rank is not None:
            rank, world = self.rank, self.world_size
        elif self._pinned_dist is not None:
            rank, world = self._pinned_dist
        else:
            rank, world = _distributed()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * nw + wid, world * nw, wid, nw

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Not a generator function: epoch and resume state are taken now, when the loader asks for the
        # iterator (in the worker, or in the main process before the loader forgets the resume state).
        epoch = self._epoch
        self._epoch += 1
        shard, num_shards, wid, nw = self._shard()
        skip = self._skip_for(epoch, wid, nw)
        return self._generate(epoch, shard, num_shards, skip)

    def _generate(self, epoch: int, shard: int, num_shards: int, skip: int):
        while True:
            self._current_epoch, self._yielded = epoch, skip
            produced = 0
            rng = np.random.default_rng([self.seed, epoch, shard])
            windows = self._windows(epoch, shard, num_shards)
            if self.buffer_size > 1:
                windows = _shuffled(windows, rng, self.buffer_size)
            for w in windows:
                produced += 1
                if skip:
                    skip -= 1
                    continue
                self._yielded += 1
                t = torch.from_numpy(w.astype(np.int64))
                yield t[:-1], t[1:]
            if produced == 0:
                raise RuntimeError(
                    f"StreamingDataset shard {shard} of {num_shards} (rank x worker) got no complete window of "
                    f"{self.max_seq_len + 1} tokens from {', '.join(map(str, self.files))} split "
                    f"{self.split[0]:g}-{self.split[1]:g}: use fewer workers/ranks, a shorter max_seq_len, or more data"
                )
            if not self.infinite:
                return
            epoch += 1
            self._epoch = epoch + 1

    def _windows(self, epoch: int, shard: int, num_shards: int) -> Iterator[np.ndarray]:
        need = self.max_seq_len + 1
        order = list(range(len(self.files)))
        if len(order) > 1:
            np.random.default_rng([self.seed, epoch]).shuffle(order)  # same order on every shard
        carry = np.zeros(0, dtype=np.int64)
        for fi in order:
            for ids in self._shard_tokens(self.files[fi], shard, num_shards):
                if len(ids) == 0:
                    continue
                carry = np.concatenate([carry, np.asarray(ids, dtype=np.int64)])
                if len(carry) < need:
                    continue
                n = (len(carry) - 1) // self.max_seq_len
                for i in range(n):
                    yield carry[i * self.max_seq_len : i * self.max_seq_len + need]
                carry = carry[n * self.max_seq_len :]

    def _shard_tokens(self, path: Path, shard: int, num_shards: int) -> Iterator[list[int] | np.ndarray]:
        size = path.stat().st_size
        lo, hi = round(self.split[0] * size), round(self.split[1] * size)
        tok = self.tokenizer
        with open(path, "rb") as f:
            start = line_start_at_or_after(f, lo + (hi - lo) * shard // num_shards, size)
            end = line_start_at_or_after(f, lo + (hi - lo) * (shard + 1) // num_shards, size)
            if start >= end:
                return
            f.seek(start)
            if self.file_format == "jsonl":
                yield from self._jsonl_tokens(f, path, start, end)
                return
            pos = buf_start = start
            carry = b""
            bad = 0
            first_bad = None
            while True:
                block = f.read(min(_BLOCK, end - pos)) if pos < end else b""
                pos += len(block)
                buf = carry + block
                if not buf:
                    break
                cut = _cut_point(buf) if block else len(buf)
                piece, carry = buf[:cut], buf[cut:]
                piece_start, buf_start = buf_start, buf_start + cut
                if isinstance(tok, CharacterTokenizer):
                    yield np.frombuffer(piece, dtype=np.uint8)
                    continue
                try:
                    text = piece.decode("utf-8")
                except UnicodeDecodeError as e:
                    where = piece_start + e.start
                    if self.encoding_errors == "strict":
                        raise ValueError(
                            f"{path}: not valid UTF-8 at line {line_of_offset(path, where)} (byte {where}): {e.reason}"
                        ) from None
                    bad += 1
                    first_bad = where if first_bad is None else first_bad
                    text = piece.decode("utf-8", errors="replace")
                yield tok.encode(text)
            if end == size:
                yield [tok.eos_token_id]
            if bad:
                warnings.warn(
                    f"{path}: invalid UTF-8 in {bad} block(s) (first at line {line_of_offset(path, first_bad)}) "
                    "replaced with U+FFFD; the byte-level 'char' tokenizer keeps raw bytes",
                    stacklevel=2,
                )

    def _jsonl_tokens(self, f, path: Path, start: int, end: int) -> Iterator[np.ndarray]:
        tok = self.tokenizer
        pos = start
        skipped = 0
        while pos < end:
            raw = f.readline()
            if not raw:
                break
            line_start, pos = pos, pos + len(raw)
            text, err = parse_jsonl_line(raw, self.text_field)
            if err is not None:
                if self.skip_bad_lines:
                    skipped += 1
                    continue
                raise ValueError(f"{path}:{line_of_offset(path, line_start)}: {err}")
            if text is None:
                continue
            del raw  # a long line: its bytes are not needed while its text is tokenised
            yield from encode_in_chunks(tok, text)
            yield np.array([tok.eos_token_id], dtype=np.int64)
        if skipped and not self.scanned:  # a scanned file's bad lines were reported once, up front
            warnings.warn(f"{path}: skipped {skipped} bad JSONL line(s) in bytes {start}-{end}", stacklevel=2)


SCAN_FORMAT = 1


def scan_jsonl(path: Path, text_field: str, memo_dir: Path | None = None) -> dict[str, Any]:
    """Every line of a JSONL file checked as the stream would read it: ``{"bad_lines": n, "first_bad":
    [line, reason] or None, "documents": n}``. With ``memo_dir`` the result is remembered per (path, size,
    mtime, text_field) and an unchanged file is not read again."""
    import hashlib
    import json

    from halo_lab.data._io import atomic_write_text

    st = path.stat()
    key = {"format": SCAN_FORMAT, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "text_field": text_field}
    memo = None
    if memo_dir is not None:
        memo = memo_dir / "jsonl-scans" / (hashlib.sha1(str(path.resolve()).encode()).hexdigest() + ".json")
        try:
            saved = json.loads(memo.read_text())
            if saved.get("key") == key:
                return saved["result"]
        except (OSError, ValueError, KeyError):
            pass
    bad, first, docs = 0, None, 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            text, err = parse_jsonl_line(raw, text_field)
            if err is not None:
                bad += 1
                if first is None:
                    first = [lineno, err]
            elif text is not None:
                docs += 1
    result = {"bad_lines": bad, "first_bad": first, "documents": docs}
    if memo is not None:
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(memo, json.dumps({"key": key, "result": result}))
        except OSError:
            pass
    return result


def _shuffled(items: Iterator[np.ndarray], rng: np.random.Generator, size: int) -> Iterator[np.ndarray]:
    buf: list[np.ndarray] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(size))
        out, buf[j] = buf[j], item
        yield out
    rng.shuffle(buf)
    yield from buf


class _CountingIterator:
    def __init__(self, it: Iterator[Any], loader: StreamingDataLoader) -> None:
        self._it, self._loader = it, loader

    def __iter__(self) -> _CountingIterator:
        return self

    def __next__(self) -> Any:
        try:
            batch = next(self._it)
        except StopIteration:
            self._loader._exhausted = True
            raise
        self._loader._batches += 1
        return batch


class StreamingDataLoader(DataLoader):
    """A DataLoader over a :class:`StreamingDataset` whose position can be saved and restored, with any
    number of workers: it counts batches handed out in the main process and, on restore, tells each
    worker how many of its own samples to skip. Lightning stores ``state_dict()`` in checkpoints.

    ``lookahead`` is the number of batches the consumer fetches ahead of the ones it has used (Lightning's
    training loop fetches one ahead when the loader has no length): they are not counted as consumed.
    """

    def __init__(self, dataset: StreamingDataset, *args: Any, lookahead: int = 0, **kwargs: Any) -> None:
        if not isinstance(dataset, StreamingDataset):
            raise TypeError("StreamingDataLoader needs a StreamingDataset")
        super().__init__(dataset, *args, **kwargs)
        self.lookahead = int(lookahead)
        self._next_epoch = 0
        self._current_epoch: int | None = None
        self._batches = 0
        self._exhausted = False
        self._pending: dict[str, Any] | None = None

    def __iter__(self) -> _CountingIterator:  # type: ignore[override]
        ds: StreamingDataset = self.dataset  # type: ignore[assignment]
        epoch = self._next_epoch
        self._next_epoch += 1
        ds.set_epoch(epoch)
        if ds.rank is None:
            ds._pinned_dist = _distributed()  # resolved here: a spawned worker cannot see the process group
        start = 0
        if self._pending is not None and self._pending["epoch"] == epoch:
            start = self._pending["batches"]
            ds.resume(epoch, start, self._pending["batch_size"], self._pending["num_workers"])
        self._pending = None
        self._current_epoch, self._batches, self._exhausted = epoch, start, False
        it = super().__iter__()
        ds._resume = None  # workers (or the single-process fetcher) took their copy of it
        return _CountingIterator(it, self)

    def state_dict(self) -> dict[str, Any]:
        if self._current_epoch is None and self._pending is not None:
            return dict(self._pending)  # restored, never iterated (a resume with nothing to train)
        if self._current_epoch is None:
            epoch, batches = self._next_epoch, 0
        elif self._exhausted:
            epoch, batches = self._current_epoch + 1, 0
        else:
            epoch, batches = self._current_epoch, max(0, self._batches - self.lookahead)
        return {
            "epoch": epoch,
            "batches": batches,
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "seed": self.dataset.seed,  # type: ignore[attr-defined]
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("batch_size", self.batch_size) != self.batch_size:
            warnings.warn(
                f"StreamingDataLoader: position saved with batch_size {state['batch_size']} (now "
                f"{self.batch_size}); the skipped sample count follows the saved one",
                stacklevel=2,
            )
        self._next_epoch = int(state["epoch"])
        self._pending = dict(state) if int(state.get("batches", 0)) > 0 else None
