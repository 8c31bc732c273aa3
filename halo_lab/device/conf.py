"""``device`` config -> a resolved profile dict: the table's values with the user's overrides applied."""

from __future__ import annotations

import logging
from typing import Any

from halo_lab.device.profiles import (
    COMPILE_MODES,
    LIGHTNING_PRECISIONS,
    MATMUL_PRECISIONS,
    DeviceProfile,
    detect_device_profile,
    get_profile,
)

logger = logging.getLogger("halo_lab.device")

# The keys a conf/device/*.yaml may set besides ``name``; null keeps the profile's value.
OVERRIDABLE_KEYS = (
    "precision",
    "matmul_precision",
    "flash_sdpa",
    "mem_efficient_sdpa",
    "compile",
    "batch_size",
)
_PRECISION_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}
_OFF = ("false", "none", "off", "no", "eager", "0")


def _normalize_precision(value: Any) -> str:
    p = str(value).strip().lower()
    p = _PRECISION_ALIASES.get(p, p)
    if p not in LIGHTNING_PRECISIONS:
        raise ValueError(f"device.precision={value!r}: must be one of {LIGHTNING_PRECISIONS}")
    return p


def _normalize_compile(value: Any, profile_mode: str | None) -> str | None:
    if value is True:
        return profile_mode or "default"
    if value is False or str(value).strip().lower() in _OFF:
        return None
    mode = str(value).strip()
    if mode not in COMPILE_MODES:
        raise ValueError(f"device.compile={value!r}: must be false, true or one of {COMPILE_MODES}")
    return mode


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("true", "1", "yes", "on"):
        return True
    if s in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"device.{key}={value!r}: must be true or false")


def _read_precision(key: str, value: Any, profile: DeviceProfile) -> str:
    value = _normalize_precision(value)
    if value.startswith("bf16") and not profile.bf16:
        logger.warning("device.precision=%s on %s, which has no native bf16", value, profile.name)
    return value


def _read_matmul_precision(key: str, value: Any, profile: DeviceProfile) -> str:
    value = str(value).strip().lower()
    if value not in MATMUL_PRECISIONS:
        raise ValueError(f"device.matmul_precision={value!r}: must be one of {MATMUL_PRECISIONS}")
    return value


def _read_sdpa(key: str, value: Any, profile: DeviceProfile) -> bool:
    value = _as_bool(key, value)
    if value and not profile.to_dict()[key]:
        logger.warning("device.%s=true on %s: torch will not select that kernel here", key, profile.name)
    return value


def _read_compile(key: str, value: Any, profile: DeviceProfile) -> str | None:
    return _normalize_compile(value, profile.compile)


def _read_batch_size(key: str, value: Any, profile: DeviceProfile) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"device.batch_size={value!r}: must be a positive integer")
    return int(value)


# How each of OVERRIDABLE_KEYS is read: (key, the user's value (not None), the profile) -> the value.
_OVERRIDE_READERS = {
    "precision": _read_precision,
    "matmul_precision": _read_matmul_precision,
    "flash_sdpa": _read_sdpa,
    "mem_efficient_sdpa": _read_sdpa,
    "compile": _read_compile,
    "batch_size": _read_batch_size,
}


def resolve_device_config(cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fill a ``conf/device`` dict from the profile table.

    In: ``{"name": "h100" | "auto" | ..., "precision": None, ...}`` (plain dict; null = the profile's).
    Out: the profile as a plain dict (``DeviceProfile`` fields) with the user's overrides applied, plus
    ``requested`` (the name asked for) and ``overrides`` (sorted keys the user set). ``compile`` is a
    mode string or None (eager). Raises ValueError on an unknown name, key or value.
    """
    cfg = dict(cfg or {})
    requested = cfg.pop("name", None) or "auto"
    unknown = sorted(set(cfg) - set(OVERRIDABLE_KEYS))
    if unknown:
        raise ValueError(f"conf/device: unknown keys {unknown}; allowed: ['name', *{list(OVERRIDABLE_KEYS)}]")
    profile = get_profile(requested)
    out = profile.to_dict()
    overrides = []
    for key in OVERRIDABLE_KEYS:
        value = cfg.get(key)
        if value is None:
            continue
        out[key] = _OVERRIDE_READERS[key](key, value, profile)
        overrides.append(key)
    out["requested"] = str(requested)
    out["overrides"] = sorted(overrides)
    return out


def _as_profile_dict(profile: DeviceProfile | dict[str, Any] | str | None) -> dict[str, Any]:
    if profile is None:
        return detect_device_profile().to_dict()
    if isinstance(profile, DeviceProfile):
        return profile.to_dict()
    if isinstance(profile, str):
        return get_profile(profile).to_dict()
    return dict(profile)
