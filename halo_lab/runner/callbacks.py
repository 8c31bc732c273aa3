"""Lightning callbacks and the checkpoint plugin of the runner.

- :class:`TokenThroughput`: tokens/s of the training steps and peak memory.
- :class:`SampleGeneration`: sample text every N steps (a W&B table, else the log and samples.txt).
- :class:`MetricsHistory`: every logged metric as JSON lines (loss curves for reports, any logger).
- :class:`AtomicCheckpointIO`: checkpoint files written to a temp file in the same directory, fsynced,
  then renamed, so a crash or SIGKILL never leaves a truncated ``last.ckpt``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from halo_lab.data._io import pid_alive

log = logging.getLogger("halo_lab.train")


def _scalar(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return v.item() if v.numel() == 1 else v.tolist()
    return v


def peak_memory_mb(device: Any = None) -> tuple[float, str]:
    """(peak MB, kind): CUDA max allocated on a GPU, else the process's peak resident set size."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(dev) / 2**20, "cuda_max_allocated"
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024  # bytes on macOS, KiB on Linux
    return rss_kb * scale, "cpu_peak_rss"


# ---------------------------------------------------------------------------------------------- checkpoints
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
    """Writes ``path`` (last.ckpt) right after the last training step (``trainer.max_steps``), from the
    same hook as the periodic checkpoints: a run resumed from it continues with the same steps, epochs
    and data as an uninterrupted run (a checkpoint written after ``fit`` returns resumes one epoch
    number ahead). Skipped when a ``save_last`` ModelCheckpoint writes last.ckpt at that step anyway."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.saved_step: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if trainer.max_steps <= 0 or step < trainer.max_steps or self.saved_step == step:
            return
        self.saved_step = step
        for cb in trainer.checkpoint_callbacks:
            every = getattr(cb, "_every_n_train_steps", 0)
            if getattr(cb, "save_last", False) and every and step % every == 0:
                if Path(cb.dirpath or "").resolve() / "last.ckpt" == Path(self.path).resolve():
                    return  # that callback writes the same file at this step (it runs after this one)
        trainer.save_checkpoint(self.path)


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
        others: set[str] = set()
        for other in trainer.checkpoint_callbacks:  # never touch another callback's files
            if other is not cb:
                others.update(os.path.abspath(p) for p in getattr(other, "best_k_models", {}))
                for attr in ("last_model_path", "best_model_path"):
                    if getattr(other, attr, ""):
                        others.add(os.path.abspath(getattr(other, attr)))
        if cb.last_model_path:
            others.add(os.path.abspath(cb.last_model_path))
        known = {p: v for p, v in cb.best_k_models.items() if os.path.isfile(p)}
        known_abs = {os.path.abspath(p) for p in known}
        candidates = [
            f
            for f in self._matching(cb)
            if str(f.resolve()) not in others and os.path.abspath(f) not in others
        ]
        unknown = [f for f in candidates if os.path.abspath(f) not in known_abs]
        if adopt:
            for f in unknown:
                score = _stored_score(f, cb)
                if score is not None:
                    known[os.path.join(str(cb.dirpath), f.name)] = score
        ranked = sorted(known.items(), key=lambda kv: float(kv[1]), reverse=cb.mode == "max")
        keep = dict(ranked[: cb.save_top_k])
        keep_abs = {os.path.abspath(p) for p in keep}
        drop = [p for p, _ in ranked[cb.save_top_k :]]
        if not adopt:  # after a save: whatever else matches is an orphan
            drop += [str(f) for f in unknown if os.path.abspath(f) not in keep_abs]
        if keep != cb.best_k_models:
            cb.best_k_models = keep
            if keep:
                worst = ranked[len(keep) - 1]
                cb.best_model_path, cb.best_model_score = ranked[0][0], ranked[0][1]
                cb.kth_best_model_path, cb.kth_value = worst[0], worst[1]
            else:
                cb.best_model_path, cb.best_model_score, cb.kth_best_model_path = "", None, ""
                cb.kth_value = torch.tensor(float("inf") if cb.mode == "min" else -float("inf"))
        if trainer.is_global_zero:
            for p in drop:
                try:
                    Path(p).unlink()
                    log.info("checkpoint save_top_k=%d: removed %s (not among the best)", cb.save_top_k, p)
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


# ---------------------------------------------------------------------------------------------- throughput
class TokenThroughput(pl.Callback):
    """Logs ``perf/tokens_per_sec`` (all ranks together) and ``perf/peak_mem_mb`` every log step.

    Kept instead of Lightning's ``ThroughputMonitor``, which times from batch end to batch end since
    the train start (data loading and validation included), sends its values to the loggers only (not
    ``callback_metrics``: history.jsonl and the progress lines would lose them; with ``logger=none``
    nothing), and keeps no whole-run totals for metrics.json.

    Time counts each training step from ``on_train_batch_start`` to ``on_train_batch_end`` (forward,
    backward, optimizer step; on CUDA synchronised at the step's end), so validation, checkpointing and
    sample generation do not dilute it. Input tokens count every position of ``input_ids``. Totals of the
    whole run are in :attr:`summary` (the runner writes them to metrics.json): ``tokens_per_sec`` leaves out
    the first ``warmup_steps`` steps of this process (compilation, allocator warm-up), unless the run had
    no more than those; ``tokens_per_sec_all`` counts every step.
    """

    def __init__(self, log_every_n_steps: int | None = None, warmup_steps: int = 5):
        self.log_every_n_steps = log_every_n_steps
        self.warmup_steps = warmup_steps
        self.warm_tokens = 0
        self.warm_time = 0.0
        self._t0: float | None = None
        self.total_tokens = 0
        self.total_time = 0.0
        self._win_tokens = 0
        self._win_time = 0.0
        self.steps = 0
        self.device: torch.device | None = None

    def _sync(self, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Kept for summary(): after fit Lightning's teardown moves the module back to the CPU.
        self.device = pl_module.device
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        else:
            # Linux: restart the process's peak RSS (getrusage's ru_maxrss too), so each job of a multirun
            # (one process) reports its own peak, not the largest of the jobs before it.
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(pl_module)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._t0 is None:
            return
        self._sync(pl_module)
        dt = time.perf_counter() - self._t0
        self._t0 = None
        x = batch["input_ids"] if isinstance(batch, dict) else batch[0]
        tokens = int(x.numel()) * trainer.world_size
        self.total_tokens += tokens
        self.total_time += dt
        if self.steps >= self.warmup_steps:
            self.warm_tokens += tokens
            self.warm_time += dt
        self._win_tokens += tokens
        self._win_time += dt
        self.steps += 1
        every = self.log_every_n_steps or trainer.log_every_n_steps
        if every and trainer.global_step % every == 0 and self._win_time > 0:
            pl_module.log("perf/tokens_per_sec", self._win_tokens / self._win_time, on_step=True)
            pl_module.log("perf/peak_mem_mb", peak_memory_mb(pl_module.device)[0], on_step=True)
            self._win_tokens, self._win_time = 0, 0.0

    @property
    def tokens_per_sec(self) -> float:
        if self.warm_time > 0:
            return self.warm_tokens / self.warm_time
        return self.total_tokens / self.total_time if self.total_time > 0 else float("nan")

    def summary(self, device: Any = None) -> dict[str, Any]:
        """Totals for metrics.json; peak memory of the device training ran on (``device`` if not trained)."""
        peak, kind = peak_memory_mb(self.device if self.device is not None else device)
        return {
            "tokens_per_sec": self.tokens_per_sec,
            "tokens_per_sec_all": self.total_tokens / self.total_time if self.total_time > 0 else None,
            "train_tokens": self.total_tokens,
            "train_step_time_s": self.total_time,
            "steps_this_run": self.steps,
            "peak_mem_mb": peak,
            "peak_mem_kind": kind,
        }


# ---------------------------------------------------------------------------------------------- samples
def generate_sample(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str | torch.Tensor,
    max_new_tokens: int = 120,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
) -> tuple[str, str]:
    """(prompt text, continuation text) from ``halo_lab.generation.generate``; max_new_tokens shrinks to fit
    max_seq_len."""
    from halo_lab.generation import generate

    device = next(model.parameters()).device
    ids = (
        prompt
        if isinstance(prompt, torch.Tensor)
        else torch.tensor(tokenizer.encode(prompt), dtype=torch.long)
    )
    ids = ids.reshape(-1).to(device)
    if ids.numel() == 0:
        ids = torch.tensor([getattr(tokenizer, "eos_token_id", 0) or 0], dtype=torch.long, device=device)
    room = model.config.max_seq_len - ids.numel()
    n_new = max(0, min(max_new_tokens, room))
    gen = torch.Generator(device=device).manual_seed(seed)
    out = generate(
        model,
        ids,
        None,
        max_new_tokens=n_new,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=gen,
    )
    prompt_ids = ids.tolist()
    new_ids = out.reshape(-1).tolist()[len(prompt_ids) :]
    return tokenizer.decode(prompt_ids), tokenizer.decode(new_ids)


class SampleGeneration(pl.Callback):
    """Generates a sample every ``every_n_steps`` optimizer steps (and at the end of training) on rank 0.

    ``prompt`` null takes the first ``prompt_tokens`` tokens of the first validation sequence, which
    suits any dataset and tokenizer. With a WandbLogger the samples accumulate in a W&B table
    ``samples``; otherwise they go to the log. They are always appended to ``path`` when given.
    Skipped under FSDP (parameters are sharded across ranks).
    """

    def __init__(
        self,
        every_n_steps: int = 200,
        prompt: str | None = None,
        prompt_tokens: int = 32,
        max_new_tokens: int = 120,
        temperature: float = 0.8,
        top_k: int = 0,
        top_p: float = 1.0,
        path: str | None = None,
        on_train_end: bool = True,
    ):
        if every_n_steps < 0:
            raise ValueError(
                f"callbacks.samples.every_n_steps={every_n_steps}: must be >= 0 (0 = only at the end)"
            )
        self.every_n_steps = every_n_steps
        self.prompt = prompt
        self.prompt_tokens = prompt_tokens
        self.kw = {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
        }
        self.path = Path(path) if path else None
        self.at_end = on_train_end
        self._val_prompt: torch.Tensor | None = None
        self._from_train = False
        self.rows: list[list[Any]] = []
        self._last_step = -1

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if (self._val_prompt is None or self._from_train) and batch_idx == 0:
            self._from_train = False
            x = batch["input_ids"] if isinstance(batch, dict) else batch[0]
            self._val_prompt = x[0, : self.prompt_tokens].detach().cpu()

    def get_prompt(self) -> str | torch.Tensor | None:
        return self.prompt if self.prompt is not None else self._val_prompt

    def _skip(self, trainer: pl.Trainer) -> bool:
        from lightning.pytorch.strategies import FSDPStrategy

        return isinstance(trainer.strategy, FSDPStrategy)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step:
            if self.prompt is None and self._val_prompt is None:  # no validation yet: a training prefix
                x = batch["input_ids"] if isinstance(batch, dict) else batch[0]
                self._val_prompt = x[0, : self.prompt_tokens].detach().cpu()
                self._from_train = True
            self.sample(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.at_end and trainer.global_step != self._last_step:
            self.sample(trainer, pl_module)

    def sample(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step
        if not trainer.is_global_zero or self._skip(trainer):
            return
        tokenizer = pl_module.get_tokenizer() if hasattr(pl_module, "get_tokenizer") else None
        prompt = self.get_prompt()
        if tokenizer is None or prompt is None or pl_module.model is None:
            return
        try:
            p, text = generate_sample(pl_module.model, tokenizer, prompt, seed=trainer.global_step, **self.kw)
        except Exception as exc:  # a sample must never stop training
            log.warning("sample generation failed at step %d: %s", trainer.global_step, exc)
            return
        self.rows.append([trainer.global_step, p, text])
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        for lg in wandb_loggers:
            lg.log_text(
                key="samples", columns=["step", "prompt", "sample"], data=self.rows, step=trainer.global_step
            )
        if not wandb_loggers:
            log.info("sample at step %d:\n%s|%s", trainer.global_step, p, text)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(f"=== step {trainer.global_step} ===\n{p}|{text}\n\n")


# ---------------------------------------------------------------------------------------------- progress
class ProgressLog(pl.Callback):
    """Plain log lines when there is no progress bar (batch jobs, pipes): every ``every_n_steps`` steps,
    and at least every ``max_interval_s`` seconds (a slow, shared machine must not look hung), plus one
    line after each validation with the loss just measured. A training line shows the latest validation
    loss with the step it was measured at (``val/loss 1.7 @400``), so it is never mistaken for a fresh one.
    """

    def __init__(self, every_n_steps: int = 50, max_interval_s: float = 20.0):
        self.every_n_steps = every_n_steps
        self.max_interval_s = max_interval_s
        self._t0 = 0.0
        self._step0 = 0
        self._last_line = 0.0
        self._val: tuple[float, int] | None = None  # (latest val/loss, its step)

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = self._last_line = time.time()
        self._step0 = trainer.global_step

    def _active(self, trainer) -> bool:
        return trainer.progress_bar_callback is None and trainer.is_global_zero

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._active(trainer):
            return
        step = trainer.global_step
        due = bool(self.every_n_steps) and step % self.every_n_steps == 0
        late = self.max_interval_s > 0 and time.time() - self._last_line >= self.max_interval_s
        if due or late:
            self._line(trainer, step, ("train/loss", "perf/tokens_per_sec", "train/lr"))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self._active(trainer) or trainer.state.fn != "fit":
            return
        val = trainer.callback_metrics.get("val/loss")
        if val is not None:
            self._val = (float(val), trainer.global_step)
            self._line(trainer, trainer.global_step, (), validation=True)

    def _line(self, trainer, step: int, keys: tuple[str, ...], validation: bool = False) -> None:
        m = trainer.callback_metrics
        parts = [f"step {step}/{trainer.max_steps if trainer.max_steps > 0 else '?'}"]
        fmts = {"train/loss": "{:.4f}", "perf/tokens_per_sec": "{:,.0f}", "train/lr": "{:.2e}"}
        parts += [f"{k} {fmts[k].format(float(m[k]))}" for k in keys if k in m]
        if self._val is not None:
            v, at = self._val
            parts.append(f"val/loss {v:.4f}" + ("" if validation else f" @{at}"))
        elapsed = time.time() - self._t0
        done = step - self._step0
        if trainer.max_steps > 0 and done > 0:
            parts.append(f"elapsed {elapsed:.0f}s, ~{elapsed / done * (trainer.max_steps - step):.0f}s left")
        log.info(" | ".join(parts))
        self._last_line = time.time()


# ---------------------------------------------------------------------------------------------- history
class MetricsHistory(pl.Callback):
    """Appends ``{"step": ..., metric: value, ...}`` to a JSON-lines file (rank 0).

    Train metrics every ``trainer.log_every_n_steps`` steps, validation metrics after each validation.
    A resumed run appends to the same file, so the history of a run stays in one place.
    """

    def __init__(self, path: str):
        self.path = Path(path)
        self._last_val: dict[str, Any] | None = None

    @rank_zero_only
    def _write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    @staticmethod
    def _metrics(trainer: pl.Trainer, prefix: tuple[str, ...]) -> dict[str, Any]:
        out = {}
        for k, v in trainer.callback_metrics.items():
            if k.startswith(prefix):
                v = _scalar(v)
                if isinstance(v, float) and not math.isfinite(v):
                    v = str(v)
                out[k] = v
        return out

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        every = trainer.log_every_n_steps
        if every and trainer.global_step % every == 0:
            rec = self._metrics(trainer, ("train/", "perf/"))
            if rec:
                self._write({"step": trainer.global_step, "epoch": trainer.current_epoch, **rec})

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        rec = {"step": trainer.global_step, **self._metrics(trainer, ("val/",))}
        # The runner validates the final weights again after fit: when fit's last validation was at
        # that same step with the same values, that row is already here.
        if len(rec) > 1 and rec != self._last_val:
            self._last_val = rec
            self._write({"step": rec["step"], "stage": trainer.state.stage.value, **rec})
