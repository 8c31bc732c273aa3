"""Checkpoint files of a run: written atomically and checksummed, last.ckpt at the last step, save_top_k
across kills, and the temp files a killed run leaves.

- :class:`AtomicCheckpointIO`: checkpoint files written to a temp file in the same directory, fsynced,
  then renamed, so a crash or SIGKILL never leaves a truncated ``last.ckpt``; every load safe.
- :class:`FinalStepCheckpoint`: last.ckpt right after the last training step; :func:`save_final_state`
  after ``fit``.
- :class:`CheckpointTopK`: ``save_top_k`` true across kills.
- :func:`clean_run_leftovers`: the temp files of a killed run in the same run directory.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from halo_lab.data._io import pid_alive

log = logging.getLogger("halo_lab.train")

TMP_MARK = ".tmp-"


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into ``.<name>.tmp-<pid>-<random>`` next to the target, fsync, ``os.replace``, fsync the
    directory; and every load through :func:`halo_lab.checkpoint.integrity.load_checkpoint_file`.

    Lightning's own save goes through fsspec, whose local "transaction" writes to the system temp dir and
    then moves the file: across filesystems that move is a copy, which a kill can interrupt halfway.
    Remote paths (``s3://`` ...) keep Lightning's behaviour. Every checkpoint gets a checksum of its
    contents (:func:`halo_lab.checkpoint.integrity.add_checksum`). Loads pass ``weights_only=True`` themselves,
    whatever the caller or torch's environment asks, and check that checksum. A kill leaves at most a
    temp file, which :func:`clean_run_leftovers` removes at the next start in the same run directory.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        from halo_lab.checkpoint.integrity import add_checksum

        add_checksum(checkpoint)
        spath = str(path)
        if "://" in spath and not spath.startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint does not take storage_options")
        target = Path(spath.removeprefix("file://"))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}{TMP_MARK}{os.getpid()}-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a checkpoint is an ordinary file
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        try:  # make the rename itself durable
            dfd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass

    def load_checkpoint(
        self, path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        from halo_lab.checkpoint.integrity import load_checkpoint_file

        spath = str(path)
        if "://" in spath and not spath.startswith("file://"):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint_file(spath.removeprefix("file://"))


def clean_run_leftovers(run_dir: str | os.PathLike, ckpt_dir: str | os.PathLike | None = None) -> list[Path]:
    """Remove what a killed run of this directory left behind: partial checkpoint temp files
    (``checkpoints/.<name>.tmp-*``) and atomic-write temp files of the run's own files
    (``.metrics.json.tmp<pid>`` ...) whose writing process is gone. Returns the removed paths."""
    removed: list[Path] = []
    dirs = [Path(run_dir)] + ([Path(ckpt_dir)] if ckpt_dir is not None else [])
    seen: set[Path] = set()
    for d in dirs:
        if d in seen or not d.is_dir():
            continue
        seen.add(d)
        for f in d.iterdir():
            name = f.name
            if not name.startswith(".") or not f.is_file():
                continue
            if TMP_MARK in name:  # .last.ckpt.tmp-<pid>-xxxx (older: .last.ckpt.tmp-xxxx)
                tail = name.rsplit(TMP_MARK, 1)[1]
                head = tail.split("-", 1)[0]
                pid = int(head) if head.isdigit() and "-" in tail else -1
            else:
                m = _ATOMIC_TMP.match(name)  # .metrics.json.tmp<pid> (halo_lab.utils.atomic_write_text)
                if m is None:
                    continue
                pid = int(m.group(1))
            if pid == os.getpid() or pid_alive(pid):
                continue
            try:
                f.unlink()
                removed.append(f)
            except OSError:
                pass
    if removed:
        log.info(
            "removed %d leftover temp file(s) of an interrupted run: %s",
            len(removed),
            [p.name for p in removed],
        )
    return removed


_ATOMIC_TMP = re.compile(r"^\..+\.tmp(\d+)$")


class FinalStepCheckpoint(pl.Callback):
    """The one writer of ``path`` (last.ckpt): every N training steps, right after the last training step
    (``trainer.max_steps``), and on Ctrl-C (then the command that resumes the run); :func:`save_final_state`
    after ``fit`` (epoch-based runs).

    Why one writer: a ``save_last`` ModelCheckpoint writes last.ckpt on its own schedule, and Lightning
    (2.6) makes it save once more at the end of training when it has not saved in this process; finding a
    last.ckpt it did not write, it versions its file, so every run whose ``trainer.max_steps`` is not a
    multiple of the interval ended with ``last.ckpt`` and ``last-v1.ckpt`` at the same step. So at the start
    of fit this callback adopts every ``save_last`` ModelCheckpoint whose last file is ``path``: it takes
    that callback's ``every_n_train_steps`` and turns its ``save_last`` off (the callback keeps its top-k
    files and its state in the checkpoint).

    The final save runs from the same hook as the periodic ones: a run resumed from it continues with the
    same steps, epochs and data as an uninterrupted run (a checkpoint written after ``fit`` returns resumes
    one epoch number ahead).
    """

    def __init__(self, path: str | os.PathLike, run_dir: str | os.PathLike | None = None):
        self.path = str(path)
        self.run_dir = str(run_dir) if run_dir is not None else str(Path(self.path).parent.parent)
        self.every_n_train_steps = 0
        self.saved_step: int | None = None

    def on_fit_start(self, trainer, pl_module) -> None:  # every ModelCheckpoint's dirpath is resolved now
        target = Path(self.path).resolve()
        for cb in trainer.checkpoint_callbacks:
            if not getattr(cb, "save_last", False) or not getattr(cb, "dirpath", None):
                continue
            last = Path(cb.dirpath).resolve() / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
            if last == target:
                cb.save_last = False
                every = int(getattr(cb, "_every_n_train_steps", 0) or 0)
                if every > 0 and (self.every_n_train_steps == 0 or every < self.every_n_train_steps):
                    self.every_n_train_steps = every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        final = 0 < trainer.max_steps <= step
        periodic = self.every_n_train_steps > 0 and step % self.every_n_train_steps == 0
        if (final or periodic) and step != self.saved_step and not trainer.fast_dev_run:
            self.save(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Ctrl-C: Lightning calls this, then exits the process (status 1). last.ckpt is written now only
        when no training step was in flight (the interrupt came during validation, a checkpoint, the
        logging): a step cut off halfway has its batch already taken from the loader (the saved data
        position would skip it) and perhaps half of its optimizer update applied, so then last.ckpt stays
        the last complete one. Then the command that resumes the run."""
        if not isinstance(exception, KeyboardInterrupt) or trainer.state.fn != "fit":
            return
        if self.saved_step != trainer.global_step and not _step_in_flight(trainer):
            self.save(trainer)
        _say_interrupted(trainer, self)

    def save(self, trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved_step = trainer.global_step


def _step_in_flight(trainer) -> bool:
    """A training batch fetched and not finished (Lightning's progress counters)."""
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    return progress.ready != progress.completed


def _say_interrupted(trainer, final: FinalStepCheckpoint) -> None:
    from halo_lab.runner.launches import resume_command

    if not trainer.is_global_zero:
        return
    if final.saved_step is not None:
        where = f"last.ckpt holds step {final.saved_step}"
    elif Path(final.path).is_file():
        where = "last.ckpt is the one this run resumed from"
    else:
        where = "no checkpoint yet (a resume starts from step 0)"
    print(
        f"halo_lab.train: interrupted at step {trainer.global_step}; {where}; resume with: "
        f"{resume_command(final.run_dir)}",
        file=sys.stderr,
        flush=True,
    )


def save_final_state(trainer: pl.Trainer) -> None:
    """After ``fit``: last.ckpt always holds the final state. :class:`FinalStepCheckpoint` wrote it after
    the last step; otherwise (``max_epochs``) it is written now. Ctrl-C: Lightning (2.6) calls
    ``on_exception`` (last.ckpt when no step was in flight, and the resume command) and exits the process
    inside ``fit``; where fit returns interrupted instead (older Lightning), the resume command is printed
    here and KeyboardInterrupt raised, so an interrupted run is never reported as done."""
    final = next(c for c in trainer.callbacks if isinstance(c, FinalStepCheckpoint))
    interrupted = trainer.interrupted
    if final.saved_step != trainer.global_step and not (interrupted and _step_in_flight(trainer)):
        final.save(trainer)
    if interrupted:
        _say_interrupted(trainer, final)
        raise KeyboardInterrupt(f"interrupted at step {trainer.global_step}")


class CheckpointTopK(pl.Callback):
    """Keeps ``save_top_k`` true across kills for every ModelCheckpoint whose file name is a template with
    a literal prefix (``best-step{step:06d}``).

    On resume the callbacks' state comes from the checkpoint resumed from, which can be older than the
    files on disk: a best file written after it is unknown to the restored state, and the file it
    replaced is gone. So at the start of a resumed fit, entries whose file is gone are dropped, and files
    of the callback's pattern that it does not know are ranked with the others by the score each stores
    for itself; files outside the top k are removed. After each validation of a resumed fit (once the
    callback has saved), files of the pattern outside its top k are removed too. A fresh fit is left to
    Lightning alone (files of an earlier run in the same directory are not touched).
    """

    def __init__(self) -> None:
        self._active = False
        self._pending = False

    def on_train_start(self, trainer, pl_module) -> None:
        self._active = trainer.ckpt_path is not None
        if self._active:
            for cb in self._managed(trainer):
                self._reconcile(trainer, cb, adopt=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._pending = self._active and not trainer.sanity_checking

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending:
            self._pending = False
            for cb in self._managed(trainer):
                self._reconcile(trainer, cb, adopt=False)

    def on_train_end(self, trainer, pl_module) -> None:
        self.on_train_batch_start(trainer, pl_module, None, 0)

    @staticmethod
    def _managed(trainer) -> list[Any]:
        from lightning.pytorch.callbacks import ModelCheckpoint

        return [
            cb
            for cb in trainer.checkpoint_callbacks
            if isinstance(cb, ModelCheckpoint)
            and cb.save_top_k > 0
            and cb.dirpath
            and cb.monitor
            and cb.filename
            and "{" in cb.filename
            and not cb.filename.startswith("{")
        ]

    @staticmethod
    def _matching(cb) -> list[Path]:
        parts = re.split(r"\{[^}]*\}", cb.filename)
        body = "(.+)".join(re.escape(p) for p in parts)
        pattern = re.compile(f"^{body}(-v\\d+)?{re.escape(cb.FILE_EXTENSION)}$")
        d = Path(cb.dirpath)
        return sorted(f for f in d.iterdir() if f.is_file() and pattern.match(f.name)) if d.is_dir() else []

    def _reconcile(self, trainer, cb, adopt: bool) -> None:
        others = _files_of_others(trainer, cb)  # never touch another callback's files
        known = {p: v for p, v in cb.best_k_models.items() if os.path.isfile(p)}
        known_abs = {os.path.abspath(p) for p in known}
        candidates = [
            f
            for f in self._matching(cb)
            if str(f.resolve()) not in others and os.path.abspath(f) not in others
        ]
        unknown = [f for f in candidates if os.path.abspath(f) not in known_abs]
        if adopt:
            known.update(_stored_scores(unknown, cb))
        ranked = sorted(known.items(), key=lambda kv: float(kv[1]), reverse=cb.mode == "max")
        keep = dict(ranked[: cb.save_top_k])
        keep_abs = {os.path.abspath(p) for p in keep}
        drop = [p for p, _ in ranked[cb.save_top_k :]]
        if not adopt:  # after a save: whatever else matches is an orphan
            drop += [str(f) for f in unknown if os.path.abspath(f) not in keep_abs]
        if keep != cb.best_k_models:
            _set_best(cb, ranked, keep)
        if trainer.is_global_zero:
            _remove(drop, cb.save_top_k)


def _files_of_others(trainer, cb) -> set[str]:
    """The files other checkpoint callbacks know (and ``cb``'s own last file), as absolute paths."""
    others: set[str] = set()
    for other in trainer.checkpoint_callbacks:
        if other is not cb:
            others.update(os.path.abspath(p) for p in getattr(other, "best_k_models", {}))
            for attr in ("last_model_path", "best_model_path"):
                if getattr(other, attr, ""):
                    others.add(os.path.abspath(getattr(other, attr)))
    if cb.last_model_path:
        others.add(os.path.abspath(cb.last_model_path))
    return others


def _stored_scores(files: list[Path], cb: Any) -> dict[str, torch.Tensor]:
    """The files of ``cb``'s pattern it does not know, by the score each stores for itself (if any)."""
    scores = {}
    for f in files:
        score = _stored_score(f, cb)
        if score is not None:
            scores[os.path.join(str(cb.dirpath), f.name)] = score
    return scores


def _set_best(cb: Any, ranked: list[tuple[str, Any]], keep: dict[str, Any]) -> None:
    """``cb``'s top-k state: ``keep`` (the first of ``ranked``, best first)."""
    cb.best_k_models = keep
    if keep:
        worst = ranked[len(keep) - 1]
        cb.best_model_path, cb.best_model_score = ranked[0][0], ranked[0][1]
        cb.kth_best_model_path, cb.kth_value = worst[0], worst[1]
    else:
        cb.best_model_path, cb.best_model_score, cb.kth_best_model_path = "", None, ""
        cb.kth_value = torch.tensor(float("inf") if cb.mode == "min" else -float("inf"))


def _remove(paths: list[str], top_k: int) -> None:
    for p in paths:
        try:
            Path(p).unlink()
            log.info("checkpoint save_top_k=%d: removed %s (not among the best)", top_k, p)
        except FileNotFoundError:
            pass


def _stored_score(path: Path, cb: Any) -> torch.Tensor | None:
    """The monitored score a ModelCheckpoint file holds for itself (its own callback state)."""
    from halo_lab.checkpoint.integrity import CheckpointFileError, safe_torch_load

    try:
        ck = safe_torch_load(path, mmap=True)
    except CheckpointFileError:
        return None
    states = ck.get("callbacks", {}) if isinstance(ck, dict) else {}
    for key, st in states.items():
        if not (isinstance(key, str) and key.startswith("ModelCheckpoint") and isinstance(st, dict)):
            continue
        if st.get("monitor") != cb.monitor:
            continue
        for p, v in (st.get("best_k_models") or {}).items():
            if Path(p).name == path.name:
                return v.detach().clone() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
        if st.get("current_score") is not None:
            v = st["current_score"]
            return v.detach().clone() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
    return None
