"""``python -m halo_lab.train [group=option ...] [key=value ...]``: the Hydra + Lightning entry point.

The lightning-hydra-template's shape: :func:`main` is the task wrapper (the job's teardown, W&B finish,
exit code), :func:`run` composes nothing itself: check, plan the resume (``halo_lab.runner.resume``),
seed, instantiate (``halo_lab.runner.build``: every callback in one list), fit, validate, then summarise
and export in one call (``halo_lab.runner.summary``). docs/architecture.md maps every
config group to the code that consumes it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from halo_lab.runner.config import conf_dir, validate_config
from halo_lab.runner.console import quiet_lightning_console
from halo_lab.runner.ddp import dist_env, patch_ddp_relaunch, teardown_distributed
from halo_lab.runner.options import register_options
from halo_lab.runner.rundir import remove_untouched_run_dir
from halo_lab.runner.user_errors import user_error
from halo_lab.runner.wandb_run import finish_wandb

# Absolute: Hydra resolves a relative config_path against the caller, which differs between
# `python -m halo_lab.train`, `from halo_lab.train import main` and console scripts.
CONF_DIR = str(conf_dir())
register_options()  # model= and device= options from their tables (PRESETS, PROFILES)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train/validate/export as the config says; returns the summary written to metrics.json."""
    import lightning.pytorch as pl

    from halo_lab.device import apply_profile
    from halo_lab.runner import build, summary
    from halo_lab.runner.checkpointing import save_final_state
    from halo_lab.runner.launches import restore_run_config
    from halo_lab.runner.lock import hold_run_dir
    from halo_lab.runner.resume import plan_resume

    t_start = time.time()
    run_dir = Path(cfg.paths.output_dir)
    hold_run_dir(run_dir)  # one run per directory: a second one stops here, naming the holder's pid
    cfg = restore_run_config(cfg, run_dir)  # ckpt_path=auto: the run's own config + this command line's
    quiet_lightning_console()

    # 1. Everything checkable without data, before any data is touched: the config, then the checkpoint
    # itself (read with weights_only=True, checksum, same model; one-line errors) and what is left to do.
    checked = validate_config(cfg)
    device = checked["device"]
    batch_size, batch_source = build.choose_batch_size(cfg, device)
    plan = plan_resume(cfg, checked, run_dir)
    if plan.finished is not None:  # the checkpoint is at the end of a finished run: nothing to do
        return plan.finished
    pl.seed_everything(cfg.seed, workers=True)
    apply_profile(device)  # per process: TF32 / SDPA kernel flags

    # 2. Objects. Lightning calls prepare_data (rank 0) and setup (every rank) inside fit, then
    # HaloLitModule.configure_model builds the network with the data's vocabulary.
    datamodule = build.build_datamodule(cfg, device, batch_size)
    module = build.build_module(cfg, checked)
    callbacks = build.build_callbacks(cfg, batch_size, plan)
    loggers = build.build_loggers(cfg, run_dir, plan.ckpt_path)
    trainer = build.build_trainer(cfg, device, callbacks, loggers)
    build.log_run_start(cfg, checked, trainer, loggers, batch_size, batch_source)

    # 3. Fit and validate.
    if plan.train:
        # weights_only=True passed here too, whatever torch's default or environment says.
        trainer.fit(module, datamodule=datamodule, ckpt_path=plan.ckpt_path, weights_only=True)
        save_final_state(trainer)  # last.ckpt holds the final step; an interrupted fit raises here
    train_loss = trainer.callback_metrics.get("train/loss")  # validate() below resets callback_metrics
    val: dict[str, Any] = {}
    if cfg.get("validate", True) or not plan.train:
        ckpt_path = None if plan.train else plan.ckpt_path
        trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        val = dict(module.last_val)

    # 4. Summary, export, sample, where things are (rank 0).
    if not trainer.is_global_zero:
        return {}
    return summary.finish_run(cfg, checked, trainer, module, datamodule, val, train_loss, plan, t_start)


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """The task wrapper: one job's run, then its teardown (the next job of a multirun runs in this same
    process), the W&B run closed with the job's status. A mistake of the user's or the machine's (config,
    data, a diverging loss, a full disk) is one line naming the key, file or path, and a failing exit code
    (2: config and data, 1: the run); a run directory that a config error left holding nothing but
    Hydra's own files is removed."""
    patch_ddp_relaunch()
    env_before = dist_env()
    failed = True
    try:
        result = run(cfg)
        failed = False
    except Exception as exc:
        found = user_error(exc, cfg)
        if found is None or _multirun():  # a multirun: Hydra records the failed job, goes on with the others
            raise
        line, code = found
        print(f"halo_lab.train: {line}", file=sys.stderr)
        if code == 2:
            remove_untouched_run_dir()
        raise SystemExit(code) from None
    finally:
        finish_wandb(failed)
        teardown_distributed(env_before)
    metric = cfg.get("optimized_metric")
    if not metric:
        return None
    value = result.get(metric.replace("/", "_"), result.get(metric))
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
