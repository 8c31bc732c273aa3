"""Process-wide torch flags from a profile, and :func:`optimize_for_device` (flags, move, compile)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from halo_lab.device.conf import _as_profile_dict
from halo_lab.device.profiles import (
    COMPILE_MODES,
    MATMUL_PRECISIONS,
    PROFILES,
    DeviceProfile,
    detect_device_profile,
    get_optimal_device,
)

logger = logging.getLogger("halo_lab.device")


def apply_profile(profile: DeviceProfile | dict[str, Any] | str | None = None) -> dict[str, list[str]]:
    """Set process-wide torch flags from a profile (or a ``resolve_device_config`` dict).

    float32 matmul precision (TF32 with "high"), and on CUDA which SDPA kernels may be used (the math
    kernel always stays on as the fallback). Never raises; returns ``{"applied": [...], "skipped": [...]}``.
    Call it in every process: the flags are per process, and DDP ranks are separate processes.
    """
    applied: list[str] = []
    skipped: list[str] = []
    try:
        p = _as_profile_dict(profile)
    except Exception as exc:
        logger.warning("apply_profile: cannot read profile %r (%s): nothing applied", profile, exc)
        return {"applied": applied, "skipped": [f"profile: {exc}"]}
    try:
        mp = p.get("matmul_precision") or "highest"
        if mp not in MATMUL_PRECISIONS:
            raise ValueError(f"unknown matmul precision {mp!r}")
        torch.set_float32_matmul_precision(mp)
        applied.append(f"float32_matmul_precision={mp}")
    except Exception as exc:
        skipped.append(f"matmul precision ({exc})")
    if p.get("accelerator") == "gpu":
        try:
            if not torch.cuda.is_available():
                raise RuntimeError("CUDA is not available")
            flash, mem_eff = bool(p.get("flash_sdpa")), bool(p.get("mem_efficient_sdpa"))
            torch.backends.cuda.enable_flash_sdp(flash)
            torch.backends.cuda.enable_mem_efficient_sdp(mem_eff)
            torch.backends.cuda.enable_math_sdp(True)
            applied.append(f"sdpa flash={flash} mem_efficient={mem_eff} math=True")
        except Exception as exc:
            skipped.append(f"SDPA backends ({exc})")
    else:
        skipped.append(f"SDPA backends (no CUDA kernels on {p.get('accelerator')})")
    logger.info("apply_profile(%s): applied %s; skipped %s", p.get("name"), applied, skipped)
    return {"applied": applied, "skipped": skipped}


# ---------------------------------------------------------------------------------------------- model
_PROFILE_COMPILE = object()  # sentinel: take the compile mode from the profile


def _compile_blocker(device: torch.device) -> str | None:
    """Why torch.compile cannot run on this device, or None."""
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton

            if not has_triton():
                return "Triton is not installed or the GPU is older than sm70"
        except Exception as exc:
            return f"cannot check for Triton ({exc})"
    elif device.type == "cpu":
        import shutil

        if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            return "no C++ compiler for Inductor's CPU backend"
    elif device.type == "mps":
        return "Inductor has no production MPS backend"
    return None


def optimize_for_device(
    model: nn.Module,
    device: str | torch.device | None = None,
    mode: str = "training",
    *,
    profile: DeviceProfile | dict[str, Any] | str | None = None,
    compile_mode: Any = _PROFILE_COMPILE,
    move: bool = True,
    fallback_to_eager: bool = True,
) -> nn.Module:
    """Prepare ``model`` for ``device`` ("cuda", "cuda:1", "mps", "cpu"; None = the best one here).

    Applies the profile's global flags (:func:`apply_profile`), moves the model (``move=False`` when
    Lightning places it, e.g. under DDP), sets train()/eval() for ``mode`` ("training" | "inference"),
    and compiles it *in place* with ``model.compile(mode=...)`` when the profile (or ``compile_mode``,
    None/False = eager) asks for it: never wraps, so state-dict keys stay free of ``_orig_mod.``.
    ``profile`` may be a ``resolve_device_config`` dict so user overrides win. With
    ``fallback_to_eager`` dynamo falls back to eager if a graph fails to compile at run time.

    Never raises: a step that does not apply is logged (info), one that fails is logged as a warning
    and skipped; the model is always returned.
    """
    applied: list[str] = []
    skipped: list[str] = []  # not applicable here (info)
    failed: list[str] = []  # tried and failed (warning)
    try:
        if mode not in ("training", "inference"):
            skipped.append(f"mode={mode!r} unknown: treated as 'training'")
            mode = "training"
        dev = _pick_device(device, failed)
        prof = _pick_profile(profile, dev, failed)
        applied.append(f"profile={prof.get('name')}")

        flags = apply_profile(prof)
        applied += flags["applied"]
        skipped += flags["skipped"]

        if move:
            try:
                model.to(dev)
                applied.append(f"moved to {dev}")
            except Exception as exc:
                failed.append(f"move to {dev} ({exc})")

        try:
            model.train(mode == "training")
            applied.append("train()" if mode == "training" else "eval()")
        except Exception as exc:
            failed.append(f"train/eval ({exc})")

        _compile_in_place(model, dev, prof, compile_mode, fallback_to_eager, applied, skipped, failed)
    except Exception as exc:  # the contract: never raise
        failed.append(f"optimisation aborted ({type(exc).__name__}: {exc})")
    logger.info("optimize_for_device: applied %s", applied)
    if skipped:
        logger.info("optimize_for_device: skipped %s", skipped)
    if failed:
        logger.warning("optimize_for_device: failed and skipped %s", failed)
    return model


def _pick_device(device: str | torch.device | None, failed: list[str]) -> torch.device:
    """``device`` (None: the best one here); cpu, with a note in ``failed``, if it cannot be read."""
    try:
        return torch.device(device) if device is not None else torch.device(get_optimal_device())
    except Exception as exc:
        failed.append(f"device {device!r} ({exc}): using cpu")
        return torch.device("cpu")


def _pick_profile(
    profile: DeviceProfile | dict[str, Any] | str | None, dev: torch.device, failed: list[str]
) -> dict[str, Any]:
    """``profile`` as a dict (None: the one detected for ``dev``); the cpu profile, with a note in
    ``failed``, if it cannot be read."""
    try:
        if profile is None:
            return detect_device_profile(device=dev).to_dict()
        return _as_profile_dict(profile)
    except Exception as exc:
        failed.append(f"profile ({exc}): cpu profile")
        return PROFILES["cpu"].to_dict()


def _compile_skip_reason(model: nn.Module, dev: torch.device, cm: Any, from_profile: bool) -> str | None:
    """Why ``model`` is not compiled with mode ``cm`` on ``dev`` (a ``skipped`` entry), or None."""
    if not cm:
        return "compile (the profile runs eager)" if from_profile else "compile (off)"
    if cm not in COMPILE_MODES:
        return f"compile (unknown mode {cm!r})"
    if not callable(getattr(model, "compile", None)):
        return "compile (this torch has no nn.Module.compile)"
    if getattr(model, "_compiled_call_impl", None) is not None:
        return "compile (already compiled)"
    blocker = _compile_blocker(dev)
    if blocker:
        return f"compile ({blocker})"
    return None


def _compile_in_place(
    model: nn.Module,
    dev: torch.device,
    prof: dict[str, Any],
    compile_mode: Any,
    fallback_to_eager: bool,
    applied: list[str],
    skipped: list[str],
    failed: list[str],
) -> None:
    """``model.compile`` with the mode of ``compile_mode`` (the profile's if ``_PROFILE_COMPILE``; True =
    the profile's or "default"), unless :func:`_compile_skip_reason` gives a reason."""
    cm = prof.get("compile") if compile_mode is _PROFILE_COMPILE else compile_mode
    if cm is True:
        cm = prof.get("compile") or "default"
    reason = _compile_skip_reason(model, dev, cm, from_profile=compile_mode is _PROFILE_COMPILE)
    if reason:
        skipped.append(reason)
        return
    try:
        if fallback_to_eager:
            from torch._dynamo import config as dynamo_config

            dynamo_config.suppress_errors = True
        model.compile(mode=cm)  # in place: no _orig_mod. wrapper, so state-dict keys stay
        applied.append(f"compile(mode={cm}) in place")
    except Exception as exc:
        failed.append(f"compile ({type(exc).__name__}: {exc})")
