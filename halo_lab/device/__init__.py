"""Devices: which card this is, what it supports, and how to train on it.

- :mod:`~halo_lab.device.profiles`: the one table of device profiles and detection of this device.
- :mod:`~halo_lab.device.conf`: the ``device`` config group -> a resolved profile (table + overrides).
- :mod:`~halo_lab.device.flags`: process-wide torch flags (TF32, SDPA kernels) and in-place compile.
- :mod:`~halo_lab.device.batch`: micro-batch size from a memory model or a measured CUDA probe.

Everything that touches hardware is failsafe: it logs what it applied and what it skipped and falls
back instead of raising (except on invalid user input, which raises ValueError).
"""

from __future__ import annotations

from halo_lab.device.batch import (
    estimate_batch_size,
    estimate_num_parameters,
    estimate_training_memory,
    get_optimal_batch_size,
    search_batch_size,
)
from halo_lab.device.conf import OVERRIDABLE_KEYS, resolve_device_config
from halo_lab.device.flags import apply_profile, optimize_for_device
from halo_lab.device.profiles import (
    COMPILE_MODES,
    LIGHTNING_PRECISIONS,
    MATMUL_PRECISIONS,
    PROFILES,
    DeviceProfile,
    detect_device_profile,
    device_info,
    get_optimal_device,
    get_profile,
    match_profile_name,
    profile_from_capability,
)

__all__ = [
    "COMPILE_MODES",
    "LIGHTNING_PRECISIONS",
    "MATMUL_PRECISIONS",
    "OVERRIDABLE_KEYS",
    "PROFILES",
    "DeviceProfile",
    "apply_profile",
    "detect_device_profile",
    "device_info",
    "estimate_batch_size",
    "estimate_num_parameters",
    "estimate_training_memory",
    "get_optimal_batch_size",
    "get_optimal_device",
    "get_profile",
    "match_profile_name",
    "optimize_for_device",
    "profile_from_capability",
    "resolve_device_config",
    "search_batch_size",
]
