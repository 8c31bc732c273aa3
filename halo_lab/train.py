"""``python -m halo_lab.train [group=option ...] [key=value ...]``: the Hydra + Lightning entry point.

The lightning-hydra-template's shape: :func:`main` is the task wrapper (the job's teardown, W&B finish,
exit code), :func:`run` composes nothing itself: check, seed, instantiate (``halo_lab.runner.build``),
fit, validate, summarise and export (``halo_lab.runner.summary``). docs/architecture.md maps every
config group to the code that consumes it.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from halo_lab.runner.config import (
    ConfigError,
    ablation_name,
    choice,
    conf_dir,
    register_device_options,
    to_plain,
    validate_config,
)
from halo_lab.runner.ddp import dist_env, global_rank, patch_ddp_relaunch, teardown_distributed
from halo_lab.runner.resume import resolve_ckpt_path
from halo_lab.runner.wandb_run import finish_wandb

log = logging.getLogger("halo_lab.train")

# Absolute: Hydra resolves a relative config_path against the caller, which differs between
# `python -m halo_lab.train`, `from halo_lab.train import main` and console scripts.
CONF_DIR = str(conf_dir())
register_device_options()


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train/validate/export as the config says; returns the summary written to metrics.json."""
    import lightning.pytorch as pl

    from halo_lab.device import apply_profile
    from halo_lab.runner import build, resume, summary
    from halo_lab.runner.callbacks import CheckpointTopK, FinalStepCheckpoint, clean_run_leftovers

    t_start = time.time()
    run_dir = Path(cfg.paths.output_dir)
    _quiet_lightning_console()

    # 1. Everything checkable without data, before any data is touched.
    checked = validate_config(cfg)
    device = checked["device"]
    batch_size, batch_source = build.choose_batch_size(cfg, device)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)
    train = cfg.get("train", True)
    if not train and ckpt_path is None:
        raise ConfigError("train=false: needs ckpt_path (the checkpoint to validate and export)")
    # The checkpoint itself: read with weights_only=True, checksum, same model (one-line errors).
    info = resume.inspect_checkpoint(ckpt_path, checked) if ckpt_path is not None else None
    if global_rank() == 0:
        clean_run_leftovers(run_dir, cfg.paths.ckpt_dir)  # temp files of a killed run in this directory
    if train and info is not None and resume.nothing_to_train(info, cfg):
        done = resume.finished_metrics(run_dir, info)
        if done is not None:
            print(
                f"halo_lab.train: nothing to train: {ckpt_path} is at step {info.global_step}, the end of this "
                f"run (trainer.max_steps={cfg.trainer.max_steps}); raise trainer.max_steps to train further "
                "(last.ckpt and metrics.json left as they are)",
                file=sys.stderr,
                flush=True,
            )
            return done
        log.info(
            "ckpt_path: %s is at step %d, the end of this run: nothing to train; running the final "
            "validation and export that did not finish",
            ckpt_path,
            info.global_step,
        )
        train = False
    pl.seed_everything(cfg.seed, workers=True)
    apply_profile(device)  # per process: TF32 / SDPA kernel flags

    # 2. Objects. Lightning calls prepare_data (rank 0) and setup (every rank) inside fit, then
    # HaloLitModule.configure_model builds the network with the data's vocabulary.
    datamodule = build.build_datamodule(cfg, device, batch_size)
    module = build.build_module(cfg, checked)
    callbacks = build.build_callbacks(cfg, batch_size)
    last_ckpt = Path(cfg.paths.ckpt_dir) / "last.ckpt"
    final_ckpt = FinalStepCheckpoint(last_ckpt)
    callbacks += [final_ckpt, CheckpointTopK()]
    if info is not None:
        callbacks.append(resume.resume_check(info))
    loggers = build.build_loggers(cfg, run_dir, ckpt_path)
    trainer = build.build_trainer(cfg, device, callbacks, loggers)
    if trainer.is_global_zero:
        log.info("run directory: %s", run_dir)
        log.info(
            "model: %s (%s), ablation %s; device %s, precision %s, micro-batch %s (%s)",
            choice(cfg, "model") or "?",
            checked["arch"],
            ablation_name(cfg),
            device["name"],
            trainer.precision,
            batch_size if batch_size is not None else "auto",
            batch_source,
        )
        resolved = to_plain(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
        for lg in loggers:
            lg.log_hyperparams(resolved)

    # 3. Fit and validate.
    if train:
        # weights_only=True passed here too, whatever torch's default or environment says.
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        # last.ckpt always holds the final state: FinalStepCheckpoint wrote it after the last step (the
        # periodic callback may have saved a few steps before); otherwise (max_epochs, Ctrl-C) now.
        if trainer.interrupted or final_ckpt.saved_step != trainer.global_step:
            trainer.save_checkpoint(str(last_ckpt), weights_only=False)
        if trainer.interrupted:  # Lightning swallows Ctrl-C: do not report an interrupted run as done
            raise KeyboardInterrupt(f"interrupted at step {trainer.global_step}; last.ckpt saved")
    train_loss = trainer.callback_metrics.get("train/loss")  # validate() below resets callback_metrics
    val: dict[str, Any] = {}
    if cfg.get("validate", True) or not train:
        trainer.validate(
            module, datamodule=datamodule, ckpt_path=None if train else ckpt_path, weights_only=True
        )
        val = dict(module.last_val)

    # 4. Summary, export, sample (rank 0).
    result: dict[str, Any] = {}
    if trainer.is_global_zero:
        if train_loss is None and info is not None:  # nothing trained in this process: the run's last
            train_loss = summary.last_logged(run_dir / "history.jsonl", "train/loss", info.global_step)
        val["train/loss"] = float(train_loss) if train_loss is not None else None
        model = summary.final_model(trainer, module, cfg)
        backend = summary.attention_backend_ran(
            model, trainer.strategy.root_device, cfg.data.get("seq_len"), getattr(module, "model", None)
        )
        steps = info.global_step if info is not None and not train else None  # validated a checkpoint
        result = summary.write_metrics(
            cfg, checked, trainer, module, model, datamodule, val, ckpt_path, t_start, backend, steps
        )
        sample = summary.final_sample(cfg, callbacks, module, model)
        if sample is not None:
            result["sample"] = sample
        summary.print_locations(run_dir, result)
    return result


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _quiet_lightning_console() -> None:
    """The ``lightning`` package adds its own console handler; under Hydra's root handler every Lightning
    message would print twice."""
    import warnings

    import lightning

    # Lightning's own use of a torch API that torch >= 2.10 deprecates (lightning/pytorch/utilities/
    # _pytree.py): nothing halo_lab can change, printed once per run.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    console = getattr(lightning, "_console", None)
    if console is not None and logging.getLogger().hasHandlers():
        logging.getLogger("lightning").removeHandler(console)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """The task wrapper: one job's run, then its teardown (the next job of a multirun runs in this same
    process), the W&B run closed with the job's status, and a config error as one line + exit code 2."""
    patch_ddp_relaunch()
    env_before = dist_env()
    failed = True
    try:
        result = run(cfg)
        failed = False
    except ConfigError as exc:
        if _multirun():  # Hydra records the failed job and goes on with the sweep's others
            raise
        print(f"halo_lab.train: config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as exc:
        from halo_lab.data import DataError

        if not isinstance(exc, DataError) or _multirun():
            raise
        print(f"halo_lab.train: data error: {' '.join(str(exc).split())}", file=sys.stderr)
        raise SystemExit(2) from None
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
