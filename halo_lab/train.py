"""``python -m halo_lab.train [group=option ...] [key=value ...]``: the Hydra + Lightning entry point.

The lightning-hydra-template's shape: :func:`main` is the task wrapper (the job's teardown, W&B finish,
exit code), :func:`run` composes nothing itself: check, plan the resume (``halo_lab.runner.resume``),
seed, instantiate (``halo_lab.runner.build``: every callback in one list), fit, validate, then summarise
and export in one call (``halo_lab.runner.summary``). docs/architecture.md maps every
config group to the code that consumes it.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from halo_lab.runner.config import ConfigError, conf_dir, validate_config
from halo_lab.runner.ddp import dist_env, patch_ddp_relaunch, teardown_distributed
from halo_lab.runner.options import register_options
from halo_lab.runner.rundir import remove_untouched_run_dir
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
    _quiet_lightning_console()

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


def _quiet_lightning_console() -> None:
    """The ``lightning`` package adds its own console handler; under Hydra's root handler every Lightning
    message would print twice."""
    import warnings

    import lightning

    # Lightning's own use of a torch API that torch >= 2.10 deprecates (lightning/pytorch/utilities/
    # _pytree.py): nothing halo_lab can change, printed once per run.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Lightning's advertisement for its hosted logger, printed by every Trainer without one.
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _drop_tips not in tips.filters:
        tips.addFilter(_drop_tips)
    console = getattr(lightning, "_console", None)
    if console is not None and logging.getLogger().hasHandlers():
        logging.getLogger("lightning").removeHandler(console)


def _drop_tips(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip:")


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


# ---------------------------------------------------------------------------------------------- user errors
def user_error(exc: BaseException, cfg: DictConfig | None = None) -> tuple[str, int] | None:
    """The one line (after ``halo_lab.train: ``) and the exit code for a mistake of the user's or the
    machine's; None for anything else (a bug: its traceback is what helps)."""
    from halo_lab.data import DataError

    disk = disk_full_line(exc)
    if disk is not None:
        return disk + _resume_hint(cfg), 1
    if isinstance(exc, ConfigError):
        return f"config error: {exc}", 2
    if isinstance(exc, DataError):
        return f"data error: {' '.join(str(exc).split())}", 2
    if isinstance(exc, FloatingPointError):  # HaloLitModule: a non-finite loss, with its step and what to try
        return f"training error: {' '.join(str(exc).split())}{_kept_checkpoint(cfg)}", 1
    return None


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_PATH_LOCALS = ("target", "filepath", "path", "file_path", "filename")


def disk_full_line(exc: BaseException) -> str | None:
    """``disk error: no space left on device writing PATH`` when ENOSPC is anywhere in ``exc``'s chain
    (torch.save reports it as ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``
    with the OSError only as its context); PATH is the file being written, read from the traceback: the
    innermost halo_lab or Lightning frame holding a path (``target``, ``filepath``, ``path``) or an open
    file."""
    chain = _chain(exc)
    if not any(_no_space(e) for e in chain):
        return None
    path = next((p for e in chain if (p := _written_path(e))), None)
    where = f" writing {path}" if path else ""
    return (
        f"disk error: no space left on device{where}; free space there or write elsewhere (HALO_LAB_ROOT=DIR)"
    )


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _no_space(e: BaseException) -> bool:
    return (isinstance(e, OSError) and e.errno in _NO_SPACE) or "No space left on device" in str(e)


def _written_path(e: BaseException) -> str | None:
    if isinstance(e, OSError) and e.filename:
        return str(e.filename)
    frames = []
    tb = e.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):  # innermost first
        name = frame.f_code.co_filename
        if f"{os.sep}halo_lab{os.sep}" in name or f"{os.sep}lightning{os.sep}" in name:
            found = _path_in(frame.f_locals)
            if found:
                return found
    return None


def _path_in(local_vars: dict[str, Any]) -> str | None:
    for key in _PATH_LOCALS:
        value = local_vars.get(key)
        if isinstance(value, str | os.PathLike) and str(value):
            return str(value)
    for value in local_vars.values():
        if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
            return value.name
    return None


def _run_paths(cfg: DictConfig | None) -> tuple[Path, Path] | None:
    """(run directory, last.ckpt) of this run, when the config can say."""
    try:
        return Path(cfg.paths.output_dir), Path(cfg.paths.ckpt_dir) / "last.ckpt"
    except Exception:  # noqa: BLE001 - no config, or no Hydra context to resolve it
        return None


def _kept_checkpoint(cfg: DictConfig | None) -> str:
    paths = _run_paths(cfg)
    if paths is None:
        return ""
    if paths[1].is_file():
        return f"; the last checkpoint from before it is kept: {paths[1]}"
    return "; no checkpoint was written before it"


def _resume_hint(cfg: DictConfig | None) -> str:
    """``; then resume: COMMAND`` (the run's config comes back from its launches.jsonl) when a checkpoint
    was kept."""
    from halo_lab.runner.launches import resume_command

    paths = _run_paths(cfg)
    if paths is None or not paths[1].is_file():
        return ""
    return f"; then resume: {resume_command(paths[0])}"


if __name__ == "__main__":
    main()
