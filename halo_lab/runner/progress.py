"""What a run reports while it trains: tokens/s and peak memory, plain progress lines, the metrics history.

- :class:`TokenThroughput`: tokens/s of the training steps and peak memory (totals for metrics.json).
- :class:`ProgressLog`: log lines when there is no progress bar.
- :class:`MetricsHistory`: every logged metric as JSON lines (loss curves for reports, any logger).
"""

from __future__ import annotations

import json
import logging
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

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
    whole run are in :attr:`summary` (the runner writes them to metrics.json), over every process that
    trained it: the totals go into each checkpoint (``state_dict``) and come back on resume, so a resumed
    run counts the steps of the processes before it up to the checkpoint (steps replayed after a kill
    count once). ``tokens_per_sec`` leaves out the first ``warmup_steps`` steps of each process
    (compilation, allocator warm-up), unless the run had no more than those; ``tokens_per_sec_all``
    counts every step; ``steps_this_run`` is this process's steps.
    """

    _TOTALS = ("tokens", "time", "warm_tokens", "warm_time", "steps")

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
        self.before = dict.fromkeys(self._TOTALS, 0)  # the run's processes before this one (a resume)

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

    def state_dict(self) -> dict[str, Any]:
        """The run's totals so far (every process's): saved in each checkpoint."""
        mine = {
            "tokens": self.total_tokens,
            "time": self.total_time,
            "warm_tokens": self.warm_tokens,
            "warm_time": self.warm_time,
            "steps": self.steps,
        }
        return {k: self.before[k] + mine[k] for k in self._TOTALS}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A resume (or a validation of a checkpoint): the totals of the processes before this one."""
        self.before = {k: state_dict.get(k, 0) or 0 for k in self._TOTALS}

    @property
    def tokens_per_sec(self) -> float:
        run = self.state_dict()
        if run["warm_time"] > 0:
            return run["warm_tokens"] / run["warm_time"]
        return run["tokens"] / run["time"] if run["time"] > 0 else float("nan")

    def summary(self, device: Any = None) -> dict[str, Any]:
        """Totals for metrics.json (the whole run's; ``steps_this_run``: this process's); peak memory of the
        device training ran on (``device`` if not trained)."""
        peak, kind = peak_memory_mb(self.device if self.device is not None else device)
        run = self.state_dict()
        return {
            "tokens_per_sec": self.tokens_per_sec,
            "tokens_per_sec_all": run["tokens"] / run["time"] if run["time"] > 0 else None,
            "train_tokens": run["tokens"],
            "train_step_time_s": run["time"],
            "steps_this_run": self.steps,
            "peak_mem_mb": peak,
            "peak_mem_kind": kind,
        }


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
    A resumed run appends to the same file, so the history of a run stays in one place; at the start of
    training the records past the step it starts from are dropped first (the file rewritten atomically):
    the steps a killed process logged after its last checkpoint are trained, and logged, again, so each
    step appears once. (A fresh start in a used directory starts the history over.) A validation
    outside fit (a resume that only validates and exports) is recorded at its checkpoint's step, and not
    again when the file's last validation record is the same (the final validation of a run killed during
    its export).
    """

    def __init__(self, path: str):
        self.path = Path(path)
        self._last_val: dict[str, Any] | None = None
        self._ckpt_step = 0  # the step of the checkpoint this process loaded (validate: no loop state)

    @rank_zero_only
    def _write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    @rank_zero_only
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        drop_records_after(self.path, trainer.global_step)
        self._last_val = self._last_val_record()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "validate":
            self._last_val = self._last_val_record()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self._ckpt_step = int(checkpoint.get("global_step", 0) or 0)

    def _last_val_record(self) -> dict[str, Any] | None:
        """The file's last validation record, as :meth:`on_validation_end` compares them."""
        last = None
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return None
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            val = {k: v for k, v in rec.items() if k.startswith("val/")} if isinstance(rec, dict) else {}
            if val:
                last = {"step": rec.get("step"), **val}
        return last

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
        rec = {"step": max(trainer.global_step, self._ckpt_step), **self._metrics(trainer, ("val/",))}
        # The runner validates the final weights again after fit: when fit's last validation was at
        # that same step with the same values, that row is already here.
        if len(rec) > 1 and rec != self._last_val:
            self._last_val = rec
            self._write({"step": rec["step"], "stage": trainer.state.stage.value, **rec})


def drop_records_after(path: Path, step: int) -> int:
    """Remove the records of a history.jsonl past ``step`` (and lines cut off by a kill), rewriting the
    file atomically; returns how many went."""
    from halo_lab.utils import atomic_write_text

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return 0
    kept = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or int(rec.get("step", 0) or 0) <= step:
            kept.append(line)
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(x + "\n" for x in kept))
        log.info(
            "history.jsonl: dropped %d record(s) past step %d (logged before a kill)",
            len(lines) - len(kept),
            step,
        )
    return len(lines) - len(kept)
