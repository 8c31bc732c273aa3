"""Moved to :mod:`halo_lab.runner.module`; kept because checkpoints of earlier runs name
``halo_lab.lit.warmup_cosine_schedule`` as their scheduler's ``_target_``."""

from halo_lab.runner.module import HaloLitModule, param_groups, warmup_cosine_schedule

__all__ = ["HaloLitModule", "param_groups", "warmup_cosine_schedule"]
