"""``SweepReport``: the Hydra callback that writes a sweep's report after every job and at its end."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from halo_lab.report.writer import build_report

log = logging.getLogger("halo_lab.report")

# ---------------------------------------------------------------------------------------------- Hydra hook
try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra is a dependency
    _HydraCallback = object


class SweepReport(_HydraCallback):
    """Hydra callback (``hydra.callbacks.report`` in conf/experiment/): rebuilds the sweep's report after
    every job (so a failed job still leaves a report of the others) and, when the sweep ends, logs the
    summary table to W&B. Also refuses to start a sweep in an existing sweep directory (two launches in
    the same second), so a re-run never writes into an earlier sweep. Never fails a job."""

    def __init__(self, wandb: str = "auto", plots: bool = True):
        self.wandb = wandb
        self.plots = plots

    @staticmethod
    def _sweep_dir(config: Any) -> Path | None:
        try:
            return Path(str(config.hydra.sweep.dir))
        except Exception:
            return None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        sweep = self._sweep_dir(config)
        if sweep is None:
            return
        try:
            sweep.mkdir(parents=True, exist_ok=False)  # atomic: exactly one launch owns the directory
        except FileExistsError:
            msg = (
                f"sweep directory {sweep} already exists (another sweep started in the same second?): "
                "refusing to write into it; start again or pass hydra.sweep.dir=<a new directory>"
            )
            log.error(msg)
            print(f"halo_lab: error: {msg}", file=sys.stderr, flush=True)
            # SystemExit, not an exception: Hydra turns a callback's exception into a warning and goes on.
            raise SystemExit(1) from None

    def _report(self, config: Any, wandb: str) -> None:
        from hydra.types import RunMode

        try:
            if config.hydra.mode != RunMode.MULTIRUN:
                return  # a single run (or a DDP rank relaunched by Lightning) has no sweep to report
        except Exception:
            return
        sweep = self._sweep_dir(config)
        if sweep is None:
            return
        try:
            path = build_report(sweep, wandb=wandb, plots=self.plots)
            log.info("sweep report: %s", path)
        except Exception as exc:  # a report must never fail the sweep
            log.warning("sweep report not written: %s", exc)

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        self._report(config, wandb="off")

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        self._report(config, wandb=self.wandb)
