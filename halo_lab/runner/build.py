"""Config nodes -> the run's objects: datamodule, LightningModule, callbacks (every one of the run, in
:func:`build_callbacks`), loggers, trainer.

Every node with a ``_target_`` is built by ``hydra.utils.instantiate``; this module adds only what a
node cannot say by itself: the device profile's precision and batch size, the W&B run id, the atomic
checkpoint plugin, and the architecture choice (``module.arch``: HALO-S or the dense baseline), which
selects the network the LightningModule builds.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from halo_lab.runner.config import ConfigError, ablation_name, choice, to_plain

log = logging.getLogger("halo_lab.train")


def instantiate_group(cfg: DictConfig | None, what: str) -> list[Any]:
    """Every ``_target_`` entry of a group (callbacks, loggers); ``NAME: null`` drops one."""
    objs = []
    for name, sub in (cfg or {}).items():
        if isinstance(sub, DictConfig) and "_target_" in sub:
            try:
                objs.append(instantiate(sub, _convert_="all"))
            except Exception as exc:
                raise ConfigError(f"{what}.{name}: cannot instantiate {sub._target_}: {exc}") from exc
    return objs


def build_loggers(cfg: DictConfig, run_dir: Path, ckpt_path: str | None) -> list[Any]:
    from hydra.core.hydra_config import HydraConfig

    from halo_lab.runner.wandb_run import fill_wandb_logger

    loggers_cfg = cfg.get("logger") or {}
    for sub in loggers_cfg.values():
        if isinstance(sub, DictConfig) and str(sub.get("_target_", "")).endswith("WandbLogger"):
            try:
                name = HydraConfig.get().job.override_dirname or None
            except ValueError:
                name = None
            fill_wandb_logger(sub, run_dir, ckpt_path, name or f"{cfg.task_name}-{run_dir.name}")
    return instantiate_group(loggers_cfg, "logger")


def choose_batch_size(cfg: DictConfig, device: dict[str, Any]) -> tuple[int | None, str]:
    """data.batch_size if set; else ``trainer.auto_batch_size`` (None: decided after setup); else the
    device profile's default."""
    bs = cfg.data.get("batch_size")
    if bs is not None:
        return int(bs), "data.batch_size"
    if cfg.trainer.get("auto_batch_size"):
        return None, "auto"
    return int(device["batch_size"]), f"device profile {device['name']}"


class AutoBatchSize(pl.Callback):
    """``trainer.auto_batch_size``: on setup, picks the micro-batch with
    :func:`halo_lab.device.get_optimal_batch_size` for the real vocabulary (rank 0 decides, every rank
    uses it)."""

    def __init__(self, seq_len: int, set_eval_batch: bool):
        self.seq_len = seq_len
        self.set_eval_batch = set_eval_batch

    def setup(self, trainer, pl_module, stage):
        from halo_lab.config import HaloConfig
        from halo_lab.device import get_optimal_batch_size

        dm = trainer.datamodule
        mc = {**pl_module.hparams.model_config}
        mc["vocab_size"] = mc.get("vocab_size") or dm.vocab_size
        bs = get_optimal_batch_size(
            HaloConfig(**mc),
            self.seq_len,
            arch=pl_module.hparams.arch,
            device=trainer.strategy.root_device,
            precision=str(trainer.precision),
        )
        bs = int(trainer.strategy.broadcast(bs, src=0))
        dm.batch_size = bs
        if self.set_eval_batch and hasattr(dm, "eval_batch_size"):
            dm.eval_batch_size = bs  # it followed the placeholder batch size
        log.info("trainer.auto_batch_size: micro-batch %d", bs)


def build_datamodule(cfg: DictConfig, device: dict[str, Any], batch_size: int | None) -> Any:
    """The data node's object; its constructor reads no data (Lightning calls prepare_data and setup)."""
    data_cfg = to_plain(cfg.data)
    if batch_size is not None:
        data_cfg["batch_size"] = batch_size
    elif "batch_size" in data_cfg:
        data_cfg["batch_size"] = int(device["batch_size"])  # placeholder until AutoBatchSize decides
    from hydra.errors import InstantiationException

    try:
        return instantiate(data_cfg, _convert_="all")
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(f"data: {exc}") from exc
    except InstantiationException as exc:  # Hydra wraps the constructor's own error: report that one
        cause = exc.__cause__
        if isinstance(cause, ValueError | TypeError | OSError):
            raise ConfigError(f"data: {cause}") from exc
        raise


def build_module(cfg: DictConfig, checked: dict[str, Any]) -> pl.LightningModule:
    from halo_lab.runner.module import HaloLitModule

    return HaloLitModule(
        model_config=checked["model_config"],
        arch=checked["arch"],
        optimizer=to_plain(cfg.optimizer),
        scheduler=to_plain(cfg.get("scheduler")),
        gradient_checkpointing=checked["gradient_checkpointing"],
        device_profile=checked["device"],
        select_bias_lr_scale=checked["select_bias_lr_scale"],
        select_routing_loss=checked["select_routing_loss"],
        select_routing_queries=checked["select_routing_queries"],
        select_dense_warmup=checked["select_dense_warmup"],
    )


def build_callbacks(cfg: DictConfig, batch_size: int | None, plan: Any) -> list[pl.Callback]:
    """Every callback of the run, in this one list: the ``callbacks`` group's entries (conf/callbacks),
    then the runner's own: ``AutoBatchSize`` (``trainer.auto_batch_size``), last.ckpt (its one writer:
    every N steps, right after the last step, on Ctrl-C), ``save_top_k`` across kills, and the data checks of a resume (``plan``: the run's
    :class:`~halo_lab.runner.resume.ResumePlan`)."""
    from halo_lab.runner.checkpointing import CheckpointTopK, FinalStepCheckpoint

    callbacks = instantiate_group(cfg.get("callbacks"), "callbacks")
    if batch_size is None:
        callbacks.append(AutoBatchSize(int(cfg.data.seq_len), cfg.data.get("eval_batch_size") is None))
    last = FinalStepCheckpoint(Path(cfg.paths.ckpt_dir) / "last.ckpt", run_dir=cfg.paths.output_dir)
    callbacks += [last, CheckpointTopK()]
    return callbacks + plan.callbacks()


def build_trainer(
    cfg: DictConfig, device: dict[str, Any], callbacks: list[Any], loggers: list[Any]
) -> pl.Trainer:
    """The trainer node with the device's precision and accelerator filled in, and every checkpoint
    written atomically."""
    from halo_lab.runner.checkpointing import AtomicCheckpointIO

    trainer_cfg = to_plain(cfg.trainer)
    trainer_cfg.pop("auto_batch_size", None)  # the runner's key, not a Trainer argument
    if trainer_cfg.get("enable_progress_bar") and not sys.stderr.isatty():
        # A progress bar in a log file is one endless line; ProgressLog writes plain lines instead.
        trainer_cfg["enable_progress_bar"] = False
    if trainer_cfg.get("precision") is None:
        trainer_cfg["precision"] = device["precision"]
    if trainer_cfg.get("accelerator") in (None, "auto") and device.get("accelerator"):
        trainer_cfg["accelerator"] = device["accelerator"]
    return instantiate(
        trainer_cfg,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        _convert_="all",
    )


def log_run_start(
    cfg: DictConfig, checked: dict[str, Any], trainer: pl.Trainer, loggers: list[Any],
    batch_size: int | None, batch_source: str,
) -> None:  # fmt: skip
    """Rank 0: the run directory and what trains on what in the log, the resolved config to every logger."""
    if not trainer.is_global_zero:
        return
    log.info("run directory: %s", Path(cfg.paths.output_dir))
    log.info(
        "model: %s (%s), ablation %s; device %s, precision %s, micro-batch %s (%s)",
        choice(cfg, "model") or "?",
        checked["arch"],
        ablation_name(cfg),
        checked["device"]["name"],
        trainer.precision,
        batch_size if batch_size is not None else "auto",
        batch_source,
    )
    resolved = to_plain(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    for lg in loggers:
        lg.log_hyperparams(resolved)
