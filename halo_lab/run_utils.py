"""Moved to :mod:`halo_lab.runner` (config, resume, wandb_run, ddp); kept so existing imports work."""

from halo_lab.runner.callbacks import peak_memory_mb
from halo_lab.runner.config import (
    ConfigError,
    build_model_config,
    compose_config,
    conf_dir,
    job_dirname,
    open_dict_rw,
    register_resolvers,
    to_plain,
    validate_config,
)
from halo_lab.runner.ddp import ddp_rank_command, global_rank, patch_ddp_relaunch
from halo_lab.runner.resume import resolve_ckpt_path
from halo_lab.runner.wandb_run import WANDB_ID_FILE, wandb_mode, wandb_run_id

__all__ = [
    "WANDB_ID_FILE",
    "ConfigError",
    "build_model_config",
    "compose_config",
    "conf_dir",
    "ddp_rank_command",
    "global_rank",
    "job_dirname",
    "open_dict_rw",
    "patch_ddp_relaunch",
    "peak_memory_mb",
    "register_resolvers",
    "resolve_ckpt_path",
    "to_plain",
    "validate_config",
    "wandb_mode",
    "wandb_run_id",
]
