"""``python -m halo_lab.train [group=option ...] [key=value ...]``: the Hydra + Lightning entry point.

Thin on purpose (the lightning-hydra-template shape): compose, check, seed, instantiate datamodule,
module, callbacks, loggers and trainer, fit, validate, then write ``metrics.json``, export ``hub/`` and
print where everything is. Returns the metric named by ``optimized_metric`` for sweepers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from halo_lab.run_utils import (
    ConfigError,
    conf_dir,
    global_rank,
    patch_ddp_relaunch,
    resolve_ckpt_path,
    to_plain,
    validate_config,
    wandb_mode,
    wandb_run_id,
)

log = logging.getLogger("halo_lab.train")

# Absolute, so that `python -m halo_lab.train`, `from halo_lab.train import main` and console scripts
# all find the same conf/ (pitfall 6).
CONF_DIR = str(conf_dir())


# ---------------------------------------------------------------------------------------------- builders
def _instantiate_group(cfg: DictConfig | None, what: str) -> list[Any]:
    from hydra.utils import instantiate

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

    loggers_cfg = cfg.get("logger") or {}
    for sub in loggers_cfg.values():
        if not (isinstance(sub, DictConfig) and str(sub.get("_target_", "")).endswith("WandbLogger")):
            continue
        with open_dict(sub):
            sub.mode = wandb_mode(sub.get("mode"))
            if sub.get("id") is None and sub.mode != "disabled":
                sub.id = wandb_run_id(run_dir, ckpt_path, write=global_rank() == 0)
            if sub.get("id") is not None:
                sub.resume = "allow"  # same id on resume: the W&B run continues
            if not sub.get("name"):
                try:
                    sub.name = HydraConfig.get().job.override_dirname or None
                except ValueError:
                    sub.name = None
                sub.name = sub.name or f"{cfg.task_name}-{run_dir.name}"
    return _instantiate_group(loggers_cfg, "logger")


def _choose_batch_size(cfg: DictConfig, device: dict[str, Any]) -> tuple[int | None, str]:
    """data.batch_size if set; else ``trainer.auto_batch_size`` (decided after setup); else the device's."""
    bs = cfg.data.get("batch_size")
    if bs is not None:
        return int(bs), "data.batch_size"
    if cfg.trainer.get("auto_batch_size"):
        return None, "auto"
    return int(device["batch_size"]), f"device profile {device['name']}"


def _auto_batch_callback(seq_len: int, set_eval_batch: bool):
    """On setup, picks the micro-batch with halo_lab.device.get_optimal_batch_size from the real vocabulary
    (rank 0 decides, every rank uses it)."""
    import lightning.pytorch as pl

    class _AutoBatch(pl.Callback):
        def setup(self, trainer, pl_module, stage):
            from halo_lab.config import HaloConfig
            from halo_lab.device import get_optimal_batch_size

            dm = trainer.datamodule
            mc = {**pl_module.hparams.model_config}
            mc["vocab_size"] = mc.get("vocab_size") or dm.vocab_size
            bs = get_optimal_batch_size(
                HaloConfig(**mc),
                seq_len,
                arch=pl_module.hparams.arch,
                device=trainer.strategy.root_device,
                precision=str(trainer.precision),
            )
            bs = int(trainer.strategy.broadcast(bs, src=0))
            dm.batch_size = bs
            if set_eval_batch and hasattr(dm, "eval_batch_size"):
                dm.eval_batch_size = bs  # it followed the placeholder batch size
            log.info("trainer.auto_batch_size: micro-batch %d", bs)

    return _AutoBatch()


# ---------------------------------------------------------------------------------------------- the run
def run(cfg: DictConfig) -> dict[str, Any]:
    """Train/validate/export as the config says; returns the summary written to metrics.json."""
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    from halo_lab.callbacks import AtomicCheckpointIO, SampleGeneration, generate_sample
    from halo_lab.device import apply_profile
    from halo_lab.lit import HaloLitModule

    t_start = time.time()
    run_dir = Path(cfg.paths.output_dir)
    _quiet_lightning_console()

    # 1. Everything checkable without data, before any data is touched.
    checked = validate_config(cfg)
    device = checked["device"]
    batch_size, batch_source = _choose_batch_size(cfg, device)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)
    if not cfg.get("train", True) and ckpt_path is None:
        raise ConfigError("train=false: needs ckpt_path (the checkpoint to validate and export)")

    pl.seed_everything(cfg.seed, workers=True)
    apply_profile(device)  # per process: TF32 / SDPA kernel flags

    # 2. Objects. The datamodule's constructor reads nothing; Lightning calls prepare_data (rank 0) and
    # setup (every rank) inside fit, then HaloLitModule.configure_model builds the model with the data's
    # vocabulary.
    data_cfg = to_plain(cfg.data)
    if batch_size is not None:
        data_cfg["batch_size"] = batch_size
    elif "batch_size" in data_cfg:
        data_cfg["batch_size"] = int(device["batch_size"])  # placeholder until _AutoBatch decides
    try:
        datamodule = instantiate(data_cfg, _convert_="all")
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"data: {exc}") from exc

    _resumable_train_loader(datamodule)

    module = HaloLitModule(
        model_config=checked["model_config"],
        arch=checked["arch"],
        optimizer=to_plain(cfg.optimizer),
        scheduler=to_plain(cfg.get("scheduler")),
        gradient_checkpointing=checked["gradient_checkpointing"],
        device_profile=device,
    )

    callbacks = _instantiate_group(cfg.get("callbacks"), "callbacks")
    if batch_size is None:
        callbacks.append(_auto_batch_callback(int(cfg.data.seq_len), cfg.data.get("eval_batch_size") is None))
    loggers = build_loggers(cfg, run_dir, ckpt_path)

    trainer_cfg = to_plain(cfg.trainer)
    trainer_cfg.pop("auto_batch_size", None)
    if trainer_cfg.get("enable_progress_bar") and not sys.stderr.isatty():
        # A progress bar in a log file is one endless line; ProgressLog writes plain lines instead.
        trainer_cfg["enable_progress_bar"] = False
    if trainer_cfg.get("precision") is None:
        trainer_cfg["precision"] = device["precision"]
    if trainer_cfg.get("accelerator") in (None, "auto") and device.get("accelerator"):
        trainer_cfg["accelerator"] = device["accelerator"]
    trainer: pl.Trainer = instantiate(
        trainer_cfg,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        _convert_="all",
    )

    if trainer.is_global_zero:
        log.info("run directory: %s", run_dir)
        log.info(
            "model: %s (%s), ablation %s; device %s, precision %s, micro-batch %s (%s)",
            _choice("model"),
            checked["arch"],
            OmegaConf.select(cfg, "ablation.name", default="full"),
            device["name"],
            trainer_cfg["precision"],
            batch_size if batch_size is not None else "auto",
            batch_source,
        )
        resolved = to_plain(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
        for lg in loggers:
            lg.log_hyperparams(resolved)

    # 3. Fit and validate.
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        # last.ckpt always holds the final state (the periodic callback may have saved a few steps ago).
        trainer.save_checkpoint(str(Path(cfg.paths.ckpt_dir) / "last.ckpt"), weights_only=False)
        if trainer.interrupted:  # Lightning swallows Ctrl-C: do not report an interrupted run as done
            raise KeyboardInterrupt(f"interrupted at step {trainer.global_step}; last.ckpt saved")
    train_loss = trainer.callback_metrics.get("train/loss")  # validate() below resets callback_metrics
    val: dict[str, Any] = {}
    if cfg.get("validate", True) or not cfg.get("train", True):
        trainer.validate(
            module, datamodule=datamodule, ckpt_path=None if cfg.get("train", True) else ckpt_path
        )
        val = dict(module.last_val)

    # 4. Summary, export, sample (rank 0).
    summary: dict[str, Any] = {}
    if trainer.is_global_zero:
        val["train/loss"] = float(train_loss) if train_loss is not None else None
        model = _final_model(trainer, module, cfg)
        summary = _write_outputs(
            cfg, checked, trainer, module, model, datamodule, val, ckpt_path, t_start, run_dir
        )
        sample_cb = next((c for c in callbacks if isinstance(c, SampleGeneration)), None)
        prompt = sample_cb.get_prompt() if sample_cb else None
        if cfg.sample.get("prompt") is not None:
            prompt = cfg.sample.prompt
        tok = module.get_tokenizer()
        if prompt is not None and tok is not None and model is not None:
            p, text = generate_sample(
                model,
                tok,
                prompt,
                max_new_tokens=cfg.sample.max_new_tokens,
                temperature=cfg.sample.temperature,
                top_k=cfg.sample.top_k,
                seed=cfg.seed,
            )
            summary["sample"] = p + text
            print(f"\n--- sample (prompt | continuation) ---\n{p}|{text}\n---")
        _print_locations(run_dir, summary)
    return summary


def _resumable_train_loader(datamodule: Any) -> None:
    """Make the datamodule's map-style train loader remember its position in checkpoints (resume
    continues the data where it stopped instead of restarting the epoch). Lightning builds the loader
    inside its own hook, so DDP sampler injection still applies."""
    from halo_lab.run_utils import make_resumable

    original = datamodule.train_dataloader

    def train_dataloader():
        return make_resumable(original())

    datamodule.train_dataloader = train_dataloader


def _choice(group: str) -> str:
    """The option chosen for a config group (``model=halo_small`` -> "halo_small")."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return "?"
    return str(HydraConfig.get().runtime.choices.get(group, "?"))


def _quiet_lightning_console() -> None:
    """The ``lightning`` package adds its own console handler; under Hydra's root handler every Lightning
    message would print twice."""
    import lightning

    console = getattr(lightning, "_console", None)
    if console is not None and logging.getLogger().hasHandlers():
        logging.getLogger("lightning").removeHandler(console)


def _final_model(trainer: Any, module: Any, cfg: DictConfig) -> Any:
    """The trained model for export and the final sample: the module's own, except under FSDP, where
    parameters are sharded across ranks and the consolidated last.ckpt is loaded instead."""
    from lightning.pytorch.strategies import FSDPStrategy

    from halo_lab.lit import HaloLitModule

    if not isinstance(trainer.strategy, FSDPStrategy):
        return module.model
    full = HaloLitModule.load_from_checkpoint(
        Path(cfg.paths.ckpt_dir) / "last.ckpt", map_location="cpu", weights_only=True
    )
    return full.model


def _backend_used(model, trainer, cfg) -> str:
    """The attention backend training ran (what ``auto`` resolved to on the training device)."""
    from halo_lab import attention
    from halo_lab.model import HaloSModel

    if not isinstance(model, HaloSModel):
        return "dense"
    config = model.config
    seq_len = OmegaConf.select(cfg, "data.seq_len")
    length = None if seq_len is None else int(seq_len) + config.num_globals
    return attention.resolve_backend(config, trainer.strategy.root_device, length)


def _write_outputs(
    cfg, checked, trainer, module, model, datamodule, val, ckpt_path, t_start, run_dir
) -> dict[str, Any]:
    from halo_lab.callbacks import TokenThroughput
    from halo_lab.utils import count_parameters

    perf = next((c for c in trainer.callbacks if isinstance(c, TokenThroughput)), None)
    summary: dict[str, Any] = {
        "status": "ok",
        "val_loss": val.get("val/loss"),
        "val_ppl": val.get("val/ppl"),
        "val_bpt": val.get("val/bpt"),
    }
    if "val/acc" in val:
        summary["val_acc"] = val["val/acc"]
        summary["val_acc_by_distance"] = {
            str(k): v for k, v in sorted(val.get("val/acc_by_distance", {}).items())
        }
        buckets = getattr(getattr(datamodule, "val_dataset", None), "distance_buckets", None)
        if buckets is not None:  # mqar: the keys above are bucket edges, one accuracy per query
            summary["distance_buckets"] = [int(e) for e in buckets]
    summary.update(
        {
            "train_loss": val.get("train/loss"),
            "params": count_parameters(model),
            "steps": int(trainer.global_step),
        }
    )
    summary.update(perf.summary(module.device) if perf else {"tokens_per_sec": None, "peak_mem_mb": None})
    summary.update(
        {
            "wall_time_s": time.time() - t_start,
            "arch": checked["arch"],
            "ablation": OmegaConf.select(cfg, "ablation.name", default="full"),
            "task_name": cfg.task_name,
            "seed": cfg.seed,
            "seq_len": OmegaConf.select(cfg, "data.seq_len"),
            "batch_size": getattr(datamodule, "batch_size", None),
            "world_size": trainer.world_size,
            "device": checked["device"]["name"],
            "attention_backend": _backend_used(model, trainer, cfg),
            "precision": str(trainer.precision),
            "resumed_from": ckpt_path,
            "model_config": dict(module.hparams.model_config),
            "run_dir": str(run_dir),
        }
    )
    if cfg.get("export_hub", True):
        hub_dir = run_dir / "hub"
        try:
            from halo_lab.hub import save_for_hub
        except ModuleNotFoundError as exc:
            if exc.name != "halo_lab.hub":
                raise
            log.warning("halo_lab.hub is not available: no hub/ export")
        else:
            save_for_hub(model, model.config, str(hub_dir), tokenizer=module.get_tokenizer())
            summary["hub_dir"] = str(hub_dir)
    summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
    tmp = run_dir / ".metrics.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, run_dir / "metrics.json")
    return summary


def _print_locations(run_dir: Path, summary: dict[str, Any]) -> None:
    def show(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [
        "",
        f"run directory : {run_dir}",
        f"  config      : {run_dir / '.hydra' / 'config.yaml'}",
        f"  checkpoints : {run_dir / 'checkpoints'} (last.ckpt; resume: hydra.run.dir={run_dir} ckpt_path=auto)",
        f"  metrics     : {run_dir / 'metrics.json'} (history: history.jsonl)",
    ]
    if summary.get("hub_dir"):
        lines.append(f"  hub export  : {summary['hub_dir']}")
    if (run_dir / "wandb").is_dir():
        lines.append(
            f"  W&B files   : {run_dir / 'wandb'} (offline runs: wandb sync {run_dir / 'wandb'}/offline-run-*)"
        )
    lines.append(
        "result        : "
        + ", ".join(
            f"{k}={show(summary.get(k))}"
            for k in (
                "val_loss",
                "val_ppl",
                "val_acc",
                "params",
                "steps",
                "tokens_per_sec",
                "peak_mem_mb",
                "wall_time_s",
            )
            if summary.get(k) is not None
        )
    )
    print("\n".join(lines), flush=True)


# ---------------------------------------------------------------------------------------------- entry point
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    patch_ddp_relaunch()
    env_before = {k: os.environ.get(k) for k in _DIST_ENV}
    failed = True
    try:
        summary = run(cfg)
        failed = False
    finally:
        _finish_wandb(failed)
        _teardown_distributed(env_before)
    metric = cfg.get("optimized_metric")
    if not metric:
        return None
    value = summary.get(metric.replace("/", "_"), summary.get(metric))
    return float(value) if value is not None else None


# Variables Lightning's DDP launcher sets in the launching process (plus the seed it exports).
_DIST_ENV = (
    "LOCAL_RANK",
    "NODE_RANK",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "PL_GLOBAL_SEED",
    "PL_SEED_WORKERS",
)


def _teardown_distributed(env_before: dict[str, str | None]) -> None:
    """Leave the process as the job found it, so the next job of a multirun starts its own DDP group:
    destroy this job's process group and restore the launcher's variables (with LOCAL_RANK left set,
    Lightning would think the next job's ranks are launched externally and wait for them forever)."""
    torch_dist = sys.modules.get("torch.distributed")
    if torch_dist is not None and torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
    for k, v in env_before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _finish_wandb(failed: bool) -> None:
    """Close the W&B run of this job (pitfall 3: otherwise sweep jobs merge), failing on error."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)


if __name__ == "__main__":
    main()
