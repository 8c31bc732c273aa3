"""Device profiles, global torch settings, model optimisation and batch-size selection.

One table (``PROFILES``) states, per card, what the runner needs: Lightning precision, float32 matmul
precision (TF32), which SDPA kernels exist, bf16 support, a ``torch.compile`` mode and a default
micro-batch. ``conf/device/*.yaml`` only *name* a profile and hold ``null`` overrides;
:func:`resolve_device_config` fills them from this table, so the values live in one place.

Hardware facts behind the table (PyTorch >= 2.2):
- bf16 and TF32 tensor cores need Ampere (sm80) or newer: P100 (sm60), V100 (sm70) and T4 (sm75) train
  in fp16 with loss scaling (Lightning "16-mixed") or fp32.
- SDPA's flash kernel (FlashAttention-2) needs sm80+; the memory-efficient kernel runs from sm50, so
  T4/P100 use that one.
- Inductor (the torch.compile backend) generates Triton kernels, which need sm70+: P100 gets no compile.
- P100 has fast fp16 arithmetic (no tensor cores), so fp16 mixed precision still pays off there.

Every function here that touches hardware is failsafe: it logs what it applied and what it skipped
and falls back instead of raising (except on invalid user input, which raises ValueError).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import re
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("halo_lab.device")

_GIB = 2**30
LIGHTNING_PRECISIONS = ("64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")
MATMUL_PRECISIONS = ("highest", "high", "medium")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    """Key in PROFILES (or ``cuda_smXY`` for a card matched only by its compute capability)."""
    display_name: str
    accelerator: str
    """Lightning accelerator: "gpu", "mps" or "cpu"."""
    compute_capability: tuple[int, int] | None
    memory_gb: float | None
    """Device memory in GiB (what the vendor sells as "80GB" reads as 79.2); for cpu/mps the host RAM,
    filled in by detection (None in the table)."""
    precision: str
    """Lightning ``Trainer(precision=...)``."""
    bf16: bool
    """Native bf16 arithmetic (tensor cores on CUDA)."""
    tf32: bool
    """TF32 tensor-core matmuls; used through ``matmul_precision="high"``."""
    matmul_precision: str
    """``torch.set_float32_matmul_precision`` value."""
    flash_sdpa: bool
    """SDPA flash kernel (FlashAttention-2, sm80+)."""
    mem_efficient_sdpa: bool
    """SDPA memory-efficient kernel (sm50+)."""
    flex_attention: bool
    """FlexAttention can be compiled to Triton kernels (sm75+); otherwise it only runs slowly in eager."""
    compile: str | None
    """``module.compile(mode=...)``; None = run eager."""
    batch_size: int
    """Default micro-batch when neither the user nor ``trainer.auto_batch_size`` chooses one."""
    generic: bool = False
    """True when derived from the compute capability instead of a named table entry."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.compute_capability is not None:
            d["compute_capability"] = list(self.compute_capability)
        return d


def _gpu(name, display, cc, mem, precision, compile_mode, batch_size) -> DeviceProfile:
    ampere = cc >= (8, 0)
    return DeviceProfile(
        name=name,
        display_name=display,
        accelerator="gpu",
        compute_capability=cc,
        memory_gb=mem,
        precision=precision,
        bf16=ampere,
        tf32=ampere,
        matmul_precision="high" if ampere else "highest",
        flash_sdpa=ampere,
        mem_efficient_sdpa=cc >= (5, 0),
        flex_attention=cc >= (7, 5),
        compile=compile_mode,
        batch_size=batch_size,
    )


# The one table. Compile: "default" on cards with little memory (compile time and autotuning buffers
# matter more there); "max-autotune-no-cudagraphs" on big cards: autotuned matmuls, but no CUDA graphs,
# which would pin memory per shape and break with per-step graph resampling and variable lengths.
PROFILES: dict[str, DeviceProfile] = {
    "cpu": DeviceProfile(
        name="cpu",
        display_name="CPU",
        accelerator="cpu",
        compute_capability=None,
        memory_gb=None,
        # bf16 autocast on CPU is only faster with AVX512-BF16/AMX and hurts accuracy: stay in fp32.
        precision="32-true",
        bf16=False,
        tf32=False,
        matmul_precision="highest",
        flash_sdpa=False,
        mem_efficient_sdpa=False,
        flex_attention=False,
        # Inductor on CPU needs a C++ toolchain and its compile time dominates short CPU runs.
        compile=None,
        batch_size=16,
    ),
    "mps": DeviceProfile(
        name="mps",
        display_name="Apple MPS",
        accelerator="mps",
        compute_capability=None,
        memory_gb=None,
        precision="32-true",
        bf16=False,
        tf32=False,
        matmul_precision="highest",
        flash_sdpa=False,
        mem_efficient_sdpa=False,
        flex_attention=False,
        compile=None,
        batch_size=16,
    ),
    "p100": _gpu("p100", "NVIDIA Tesla P100", (6, 0), 16, "16-mixed", None, 16),
    "t4": _gpu("t4", "NVIDIA Tesla T4", (7, 5), 16, "16-mixed", "default", 16),
    "l4": _gpu("l4", "NVIDIA L4", (8, 9), 24, "bf16-mixed", "default", 32),
    "l40": _gpu("l40", "NVIDIA L40 / L40S", (8, 9), 48, "bf16-mixed", "max-autotune-no-cudagraphs", 64),
    "rtx_6000": _gpu(
        "rtx_6000", "NVIDIA RTX 6000 Ada", (8, 9), 48, "bf16-mixed", "max-autotune-no-cudagraphs", 64
    ),
    "a100": _gpu("a100", "NVIDIA A100", (8, 0), 80, "bf16-mixed", "max-autotune-no-cudagraphs", 64),
    "h100": _gpu("h100", "NVIDIA H100", (9, 0), 80, "bf16-mixed", "max-autotune-no-cudagraphs", 64),
    "h200": _gpu("h200", "NVIDIA H200", (9, 0), 141, "bf16-mixed", "max-autotune-no-cudagraphs", 128),
}

# Name patterns (lower-case device name) -> profile, first match wins. Word boundaries keep "gh200"
# (Grace Hopper) away from h200 and "l40" away from l4. H800/A800 are export variants of H100/A100.
# "Quadro RTX 6000" (Turing) and "RTX A6000" (Ampere) are not the Ada card: they fall to the
# capability rule.
_NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"\bh200\b", "h200"),
    (r"\bh[18]00\b", "h100"),
    (r"\ba[18]00\b", "a100"),
    (r"\bl40s?\b", "l40"),
    (r"\bl4\b", "l4"),
    (r"\brtx 6000 ada\b", "rtx_6000"),
    (r"\bt4\b", "t4"),
    (r"\bp100\b", "p100"),
)


def list_profiles() -> list[str]:
    return list(PROFILES)


def get_profile(name: str) -> DeviceProfile:
    """Table entry by key (``"auto"`` detects the current device)."""
    key = str(name).lower().strip()
    if key == "auto":
        return detect_device_profile()
    if key not in PROFILES:
        raise ValueError(f"device profile {name!r} unknown; choose one of {['auto', *PROFILES]}")
    return PROFILES[key]


def match_profile_name(device_name: str) -> str | None:
    """Table key for a device name such as "NVIDIA H100 80GB HBM3", or None."""
    low = device_name.lower().strip()
    if low in PROFILES:
        return low
    for pattern, key in _NAME_PATTERNS:
        if re.search(pattern, low):
            return key
    return None


def profile_from_capability(
    capability: tuple[int, int], memory_gb: float | None = None, display_name: str | None = None
) -> DeviceProfile:
    """Profile of an unlisted CUDA card from its compute capability (the rules the table follows)."""
    cc = (int(capability[0]), int(capability[1]))
    ampere = cc >= (8, 0)
    # sm60 (P100) and sm62 have fast fp16; sm61 (GTX 10xx) runs fp16 at 1/64 rate: fp32 there.
    fast_fp16 = cc >= (7, 0) or cc in ((6, 0), (6, 2))
    precision = "bf16-mixed" if ampere else ("16-mixed" if fast_fp16 else "32-true")
    if cc < (7, 0):
        compile_mode = None
    elif ampere and memory_gb is not None and memory_gb >= 40:
        compile_mode = "max-autotune-no-cudagraphs"
    else:
        compile_mode = "default"
    base = _nearest_by_memory(memory_gb)
    profile = _gpu(
        f"cuda_sm{cc[0]}{cc[1]}",
        display_name or f"CUDA sm{cc[0]}{cc[1]}",
        cc,
        memory_gb,
        precision,
        compile_mode,
        _scaled_batch(base.batch_size, base.memory_gb, memory_gb),
    )
    return dataclasses.replace(profile, generic=True)


def _nearest_by_memory(memory_gb: float | None) -> DeviceProfile:
    gpus = [p for p in PROFILES.values() if p.accelerator == "gpu"]
    if memory_gb is None:
        return PROFILES["t4"]
    return min(gpus, key=lambda p: abs(math.log(p.memory_gb / max(memory_gb, 1e-3))))


def _scaled_batch(batch: int, table_gb: float | None, actual_gb: float | None) -> int:
    """Scale a default batch to a card with another memory size (power of two, at least 1)."""
    if not table_gb or not actual_gb or abs(actual_gb / table_gb - 1) < 0.15:
        return batch
    scaled = batch * actual_gb / table_gb
    return max(1, 2 ** int(math.floor(math.log2(max(scaled, 1)))))


def _memory_from_name(device_name: str) -> float | None:
    m = re.search(r"(\d+)\s*gb", device_name.lower())
    return float(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------- detection
def get_optimal_device() -> str:
    """ "cuda", "mps" or "cpu": the best accelerator torch can use here."""
    try:
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
    except Exception as exc:  # a broken driver must not stop a CPU run
        logger.warning("device query failed (%s): using cpu", exc)
    return "cpu"


def _cuda_index(device: Any = None) -> int:
    """CUDA index of ``device``; a bare "cuda" means this process's GPU: LOCAL_RANK under a DDP launcher
    (before Lightning has called set_device), else the current device."""
    if device is not None:
        d = torch.device(device)
        if d.type == "cuda" and d.index is not None:
            return d.index
    local = os.environ.get("LOCAL_RANK")
    if local is not None and local.isdigit() and int(local) < torch.cuda.device_count():
        return int(local)
    return torch.cuda.current_device()


def detect_device_profile(
    device_name: str | None = None,
    capability: tuple[int, int] | None = None,
    memory_gb: float | None = None,
    device: Any = None,
) -> DeviceProfile:
    """The profile of a device.

    With nothing given it reads the current device (``device`` picks a CUDA index, or "cpu"/"mps").
    Tests and tools inject ``device_name`` ("NVIDIA A100-SXM4-40GB", or a table key such as "cpu"),
    ``capability`` ((8, 6)) and ``memory_gb``. A listed name gives its table entry, with memory
    (and the default batch) adjusted to the card's real size; an unlisted name with a capability gets
    :func:`profile_from_capability`; with neither, a conservative fp32 CUDA profile.
    """
    if device_name is None and capability is None:
        kind = torch.device(device).type if device is not None else get_optimal_device()
        if kind == "cuda" and torch.cuda.is_available():
            try:
                idx = _cuda_index(device)
                props = torch.cuda.get_device_properties(idx)
                device_name = props.name
                capability = (props.major, props.minor)
                memory_gb = props.total_memory / _GIB if memory_gb is None else memory_gb
            except Exception as exc:
                logger.warning("reading CUDA device properties failed (%s): cpu profile", exc)
                kind = "cpu"
        if kind in ("cpu", "mps") or device_name is None:
            key = "mps" if kind == "mps" else "cpu"
            ram = memory_gb if memory_gb is not None else _host_memory_gb()
            return dataclasses.replace(PROFILES[key], memory_gb=ram)

    name = str(device_name) if device_name is not None else ""
    key = match_profile_name(name) if name else None
    if memory_gb is None and name:
        memory_gb = _memory_from_name(name)
    if key in ("cpu", "mps"):
        return dataclasses.replace(PROFILES[key], memory_gb=memory_gb if memory_gb else _host_memory_gb())
    if key is not None:
        profile = PROFILES[key]
        if capability is not None and tuple(capability)[0] != profile.compute_capability[0]:
            # A name we know with a capability from another generation: trust the hardware query.
            logger.warning("%r reports sm%s%s, not %s's: using the capability rules", name, *capability, key)
            return profile_from_capability(tuple(capability), memory_gb, name)
        if memory_gb is not None:
            profile = dataclasses.replace(
                profile,
                memory_gb=round(float(memory_gb), 1),
                batch_size=_scaled_batch(profile.batch_size, profile.memory_gb, memory_gb),
            )
        return profile
    if capability is not None:
        return profile_from_capability(tuple(capability), memory_gb, name or None)
    logger.warning("unknown device %r without a compute capability: conservative fp32 profile", name)
    return dataclasses.replace(
        profile_from_capability((5, 0), memory_gb, name or None), name="cuda_unknown", compile=None
    )


def _host_memory_gb(available: bool = False) -> float | None:
    b = _host_memory_bytes(available)
    return round(b / _GIB, 1) if b else None


def _host_memory_bytes(available: bool = True) -> int | None:
    """Available (or total) host RAM in bytes, bounded by a cgroup v2 limit when one is set."""
    value = None
    try:
        import psutil  # optional

        vm = psutil.virtual_memory()
        value = int(vm.available if available else vm.total)
    except Exception:
        try:
            with open("/proc/meminfo") as fh:
                info = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in fh if ":" in ln}
            value = info.get("MemAvailable" if available else "MemTotal")
        except Exception:
            try:
                pages = os.sysconf("SC_AVPHYS_PAGES" if available else "SC_PHYS_PAGES")
                value = int(pages * os.sysconf("SC_PAGE_SIZE"))
            except Exception:
                value = None
    try:  # containers: the cgroup limit is what the OOM killer enforces
        with open("/sys/fs/cgroup/memory.max") as fh:
            raw = fh.read().strip()
        if raw != "max":
            limit = int(raw)
            if available:
                with open("/sys/fs/cgroup/memory.current") as fh:
                    limit -= int(fh.read().strip())
            value = min(value, limit) if value else limit
    except Exception:
        pass
    return value


def device_info() -> dict[str, Any]:
    """A JSON-able description of this machine and of the profile it resolves to."""
    info: dict[str, Any] = {
        "device": get_optimal_device(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gb": _host_memory_gb(available=False),
        "num_gpus": 0,
        "name": platform.processor() or platform.machine(),
        "capability": None,
        "memory_gb": None,
    }
    try:
        if torch.backends.cudnn.is_available():
            info["cudnn"] = torch.backends.cudnn.version()
        if torch.cuda.is_available():
            idx = torch.cuda.current_device()
            props = torch.cuda.get_device_properties(idx)
            info.update(
                num_gpus=torch.cuda.device_count(),
                name=props.name,
                capability=[props.major, props.minor],
                memory_gb=round(props.total_memory / _GIB, 1),
            )
    except Exception as exc:
        logger.warning("device_info: CUDA query failed (%s)", exc)
    try:
        info["profile"] = detect_device_profile().name
    except Exception as exc:
        logger.warning("device_info: profile detection failed (%s)", exc)
        info["profile"] = None
    return info


# ---------------------------------------------------------------------------------------------- config
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
        if key == "precision":
            value = _normalize_precision(value)
            if value.startswith("bf16") and not profile.bf16:
                logger.warning("device.precision=%s on %s, which has no native bf16", value, profile.name)
        elif key == "matmul_precision":
            value = str(value).strip().lower()
            if value not in MATMUL_PRECISIONS:
                raise ValueError(f"device.matmul_precision={value!r}: must be one of {MATMUL_PRECISIONS}")
        elif key in ("flash_sdpa", "mem_efficient_sdpa"):
            value = _as_bool(key, value)
            if value and not profile.to_dict()[key]:
                logger.warning(
                    "device.%s=true on %s: torch will not select that kernel here", key, profile.name
                )
        elif key == "compile":
            value = _normalize_compile(value, profile.compile)
        elif key == "batch_size":
            if isinstance(value, bool) or int(value) != value or int(value) < 1:
                raise ValueError(f"device.batch_size={value!r}: must be a positive integer")
            value = int(value)
        out[key] = value
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


# ---------------------------------------------------------------------------------------------- global flags
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
        try:
            dev = torch.device(device) if device is not None else torch.device(get_optimal_device())
        except Exception as exc:
            failed.append(f"device {device!r} ({exc}): using cpu")
            dev = torch.device("cpu")
        try:
            if profile is None:
                prof = detect_device_profile(device=dev).to_dict()
            else:
                prof = _as_profile_dict(profile)
        except Exception as exc:
            failed.append(f"profile ({exc}): cpu profile")
            prof = PROFILES["cpu"].to_dict()
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

        cm = prof.get("compile") if compile_mode is _PROFILE_COMPILE else compile_mode
        if cm is True:
            cm = prof.get("compile") or "default"
        if not cm:
            skipped.append(
                "compile (the profile runs eager)" if compile_mode is _PROFILE_COMPILE else "compile (off)"
            )
        elif cm not in COMPILE_MODES:
            skipped.append(f"compile (unknown mode {cm!r})")
        elif not callable(getattr(model, "compile", None)):
            skipped.append("compile (this torch has no nn.Module.compile)")
        elif getattr(model, "_compiled_call_impl", None) is not None:
            skipped.append("compile (already compiled)")
        else:
            blocker = _compile_blocker(dev)
            if blocker:
                skipped.append(f"compile ({blocker})")
            else:
                try:
                    if fallback_to_eager:
                        from torch._dynamo import config as dynamo_config

                        dynamo_config.suppress_errors = True
                    model.compile(mode=cm)  # in place: no _orig_mod. wrapper (pitfall 11)
                    applied.append(f"compile(mode={cm}) in place")
                except Exception as exc:
                    failed.append(f"compile ({type(exc).__name__}: {exc})")
    except Exception as exc:  # the contract: never raise
        failed.append(f"optimisation aborted ({type(exc).__name__}: {exc})")
    logger.info("optimize_for_device: applied %s", applied)
    if skipped:
        logger.info("optimize_for_device: skipped %s", skipped)
    if failed:
        logger.warning("optimize_for_device: failed and skipped %s", failed)
    return model


# ---------------------------------------------------------------------------------------------- batch size
def _as_config(config: Any):
    from halo_lab.config import HaloConfig

    if isinstance(config, HaloConfig):
        return config
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return HaloConfig.from_dict(dict(config))


def _precision_bytes(precision: str) -> tuple[float, int]:
    """(bytes of weights+grads+AdamW state per parameter, bytes per activation element)."""
    if precision.endswith("-true") and not precision.startswith(("32", "64")):
        return 8.0, 2  # half weights, grads and moments
    if precision.endswith("-mixed"):
        return 18.0, 2  # fp32 weights/grads/moments (16) + autocast's half weight copies (2)
    if precision.startswith("64"):
        return 32.0, 8
    return 16.0, 4


def estimate_num_parameters(config: Any, arch: str = "halo") -> int:
    """Parameter count of ``build_model(config, arch)`` from the config alone."""
    c = _as_config(config)
    h, d, layers = c.hidden_size, c.head_dim, c.num_layers
    kv = c.num_kv_heads * d
    inner = c.ffn_mult * h
    norm = h if c.norm == "rmsnorm" else 2 * h
    attn = h * c.num_heads * d * 2 + h * kv * 2  # q, o and k, v projections (no biases)
    ffn = (3 if c.use_swiglu else 2) * h * inner
    total = layers * (attn + ffn + 2 * norm) + norm + c.vocab_size * h
    if not c.tie_embeddings:
        total += c.vocab_size * h
    if arch == "halo":
        total += c.num_globals * h
    return int(total)


def estimate_training_memory(
    config: Any, seq_len: int, batch_size: int = 1, arch: str = "halo", precision: str = "32-true"
) -> dict[str, float]:
    """Memory model of one training step with AdamW, in bytes.

    ``static`` = parameters x (weights + grads + optimizer state). ``per_sample`` = activations kept
    for the backward pass of one sequence: per layer and token the norms, q/k/v (+ RoPE copies), the
    attention (HALO: the reference gather's K neighbour keys/values per KV head and the float
    scores/probabilities per query head, K = num_neighbors capped by the length; dense: the score
    matrix of the math SDPA path, T keys), the FFN; plus the logits (logits, float upcast, gradient).
    A 1.3 overhead factor covers temporaries, dropout masks and allocator fragmentation.
    """
    c = _as_config(config)
    param_bytes, act = _precision_bytes(_normalize_precision(precision))
    n_params = estimate_num_parameters(c, arch)
    h, nh, d = c.hidden_size, c.num_heads, c.head_dim
    kv = c.num_kv_heads * d
    inner = c.ffn_mult * h
    t = seq_len + (c.num_globals if arch == "halo" else 0)
    keys = min(c.num_neighbors, t)
    dense_like = 7 * h + 2 * kv + 2 * kv  # ln in/out x2, q, o-proj out, residual; k, v; RoPE'd q/k extra
    ffn = (4 if c.use_swiglu else 2) * inner
    if arch == "halo":
        # gathered keys/values, and scores + probs kept in float32 (upcast before the softmax)
        attn = 2 * keys * kv + 3 * nh * keys * max(4 // act, 1)
    else:
        # SDPA's fused kernels (flash on CPU and CUDA) hold no T x T matrix; measured on CPU (torch 2.13)
        # their GQA-expanded K/V, output, log-sum-exp and backward scratch come to ~12 x hidden per token
        attn = 12 * h
    per_token_layer = dense_like + ffn + attn
    logits = 3 * c.vocab_size * max(4 // act, 1)
    per_sample = 1.3 * act * (t * c.num_layers * per_token_layer + seq_len * logits + t * h)
    static = n_params * param_bytes
    return {
        "params": float(n_params),
        "static": float(static),
        "per_sample": float(per_sample),
        "total": float(static + batch_size * per_sample),
    }


def _available_memory_bytes(dev: torch.device) -> int | None:
    if dev.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(_cuda_index(dev))
        return int(free)
    return _host_memory_bytes(available=True)


def estimate_batch_size(
    config: Any,
    seq_len: int,
    arch: str = "halo",
    memory_bytes: float | None = None,
    precision: str = "32-true",
    safety: float = 0.8,
    max_batch: int = 1024,
) -> int:
    """Largest batch whose modelled training memory fits ``safety * memory_bytes`` (default: free RAM)."""
    if memory_bytes is None:
        memory_bytes = _host_memory_bytes(available=True) or 0
    est = estimate_training_memory(config, seq_len, 1, arch, precision)
    budget = safety * float(memory_bytes) - est["static"]
    if budget < est["per_sample"]:
        logger.warning(
            "estimated memory for one sequence of %d tokens (%.2f GB) exceeds the budget (%.2f GB): batch 1",
            seq_len,
            (est["static"] + est["per_sample"]) / 1e9,
            safety * float(memory_bytes) / 1e9,
        )
        return 1
    return int(max(1, min(max_batch, budget // est["per_sample"])))


def search_batch_size(trial, budget: float, max_batch: int = 1024, max_trials: int = 12) -> int:
    """Largest batch b <= max_batch with ``trial(b) <= budget`` (within about 5%).

    ``trial(b)`` runs one step and returns its peak memory in bytes, or raises on out-of-memory (any
    exception counts as "does not fit"). Trials are costly (a GPU step, and a recompile for kernels
    compiled per shape), so this is a safeguarded secant search (Brent-style): batches 1 and 2 fit
    the line peak = fixed + b * slope, the line through the two largest measured batches predicts the
    next candidate, and whenever a step did not halve the interval between the largest fitting and
    the smallest failing batch (or the prediction falls outside it) the next step bisects.
    """
    lo, hi = 0, max_batch + 1  # lo fits (0: none known), hi does not
    points: dict[int, float] = {}
    tried: set[int] = set()

    def run(b: int) -> None:
        nonlocal lo, hi
        tried.add(b)
        try:
            peak = float(trial(b))
        except Exception as exc:
            logger.info("batch-size probe: batch %d failed (%s)", b, type(exc).__name__)
            hi = min(hi, b)
            return
        points[b] = peak
        logger.debug("batch-size probe: batch %d peak %.3g of budget %.3g", b, peak, budget)
        if peak <= budget:
            lo = max(lo, b)
        else:
            hi = min(hi, b)

    def predict() -> int | None:
        if len(points) < 2:
            return None
        (b1, p1), (b2, p2) = sorted(points.items())[-2:]
        slope = (p2 - p1) / (b2 - b1)
        if slope <= 0:  # memory flat in b (a tiny model): aim at the cap
            return hi - 1
        return int((budget - (p2 - slope * b2)) // slope)

    for b in (1, 2):
        if b <= max_batch and lo < b < hi:
            run(b)
    if lo == 0:
        return 1
    bisect = False
    while hi - lo > max(1, lo // 20) and len(tried) < max_trials:
        gap = hi - lo
        guess = None if bisect else predict()
        if guess is not None and guess >= hi and hi > max_batch:
            guess = max_batch  # the prediction is beyond the cap: try the cap itself
        if guess is None or guess in tried or not lo < guess < hi:
            guess = (lo + hi) // 2
        run(guess)
        bisect = hi - lo > gap // 2  # too little progress: bisect next
    return max(1, lo)


def _probe_gpu_batch_size(config, seq_len, arch, dev, safety, max_batch, precision) -> int:
    import gc

    from halo_lab.model import build_model  # lazy: the device module must not need the model

    c = _as_config(config)
    if c.max_seq_len < seq_len:
        c = c.replace(max_seq_len=seq_len)
    idx = _cuda_index(dev)
    dev = torch.device("cuda", idx)
    gc.collect()
    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info(idx)
    budget = safety * free + torch.cuda.memory_allocated(idx)
    dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(precision.split("-")[0])
    model = build_model(c, arch)
    if precision.endswith("-true") and dtype is not None:
        model = model.to(dtype)
    model.to(dev).train()
    # held in a dict so that the finally below can drop the last references before empty_cache()
    state = {"model": model, "opt": torch.optim.AdamW(model.parameters(), lr=0.0)}
    del model
    autocast = dtype is not None and precision.endswith("-mixed")

    def trial(b: int) -> int:
        torch.cuda.reset_peak_memory_stats(idx)
        try:
            x = torch.randint(0, c.vocab_size, (b, seq_len), device=dev)
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=autocast):
                _, loss = state["model"](x, x)
            loss.backward()
            state["opt"].step()  # AdamW state is allocated by the first step and stays: part of the peak
            torch.cuda.synchronize(idx)
            return torch.cuda.max_memory_allocated(idx)
        finally:
            state["opt"].zero_grad(set_to_none=True)

    try:
        best = search_batch_size(trial, budget, max_batch)
    finally:
        state.clear()
        gc.collect()
        torch.cuda.empty_cache()
    # Multiples of 8 keep DDP ranks on equal cards in agreement despite tiny allocator differences.
    return best - best % 8 if best >= 16 else best


def get_optimal_batch_size(
    config: Any,
    seq_len: int,
    arch: str = "halo",
    device: str | torch.device | None = None,
    safety: float = 0.8,
    max_batch: int = 1024,
    precision: str | None = None,
    memory_bytes: float | None = None,
) -> int:
    """Micro-batch size for training ``build_model(config, arch)`` on sequences of ``seq_len``.

    On a CUDA device: measured with a short probe of the real model (forward + backward + AdamW step
    in the profile's precision, peak from ``torch.cuda.max_memory_allocated``, a few batch sizes
    around a linear fit, binary search on OOM), keeping the peak under ``safety`` x free memory.
    On CPU/MPS (or when the probe cannot run, or ``memory_bytes`` is given): the memory model of
    :func:`estimate_training_memory` against the available memory. ``precision`` defaults to the
    device profile's. Never a lookup table. Returns an int in [1, max_batch].
    """
    if not 0 < safety <= 1:
        raise ValueError(f"safety={safety}: must be in (0, 1]")
    if seq_len < 1 or max_batch < 1:
        raise ValueError("seq_len and max_batch must be positive")
    try:
        dev = torch.device(device) if device is not None else torch.device(get_optimal_device())
    except Exception:
        dev = torch.device("cpu")
    if precision is None:
        try:
            precision = detect_device_profile(device=dev).precision
        except Exception:
            precision = "32-true"
    try:
        precision = _normalize_precision(precision)
    except ValueError:  # e.g. a Lightning plugin name: size for full precision, the safe side
        logger.warning("batch size: precision %r not modelled, sizing for 32-true", precision)
        precision = "32-true"
    if dev.type == "cuda" and memory_bytes is None and torch.cuda.is_available():
        try:
            b = _probe_gpu_batch_size(config, seq_len, arch, dev, safety, max_batch, precision)
            logger.info("batch size %d measured on %s (seq_len=%d, %s, %s)", b, dev, seq_len, arch, precision)
            return b
        except Exception as exc:
            logger.warning(
                "GPU batch-size probe failed (%s: %s): using the memory model", type(exc).__name__, exc
            )
    if memory_bytes is None:
        memory_bytes = _available_memory_bytes(dev) or 0
    b = estimate_batch_size(config, seq_len, arch, memory_bytes, precision, safety, max_batch)
    logger.info(
        "batch size %d estimated for %s (seq_len=%d, %s, %s, %.1f GB available)",
        b,
        dev,
        seq_len,
        arch,
        precision,
        memory_bytes / 1e9,
    )
    return b


def choose_batch_size(
    device_cfg: dict[str, Any],
    requested: int | None = None,
    auto: bool = False,
    config: Any = None,
    seq_len: int | None = None,
    arch: str = "halo",
    **kwargs: Any,
) -> int:
    """The runner's micro-batch: ``auto`` (trainer.auto_batch_size) measures/estimates it with
    :func:`get_optimal_batch_size` in the resolved device precision; else the user's ``requested``
    batch; else the resolved device config's ``batch_size``."""
    if auto:
        if config is None or seq_len is None:
            raise ValueError("auto batch size needs the model config and seq_len")
        return get_optimal_batch_size(config, seq_len, arch, precision=device_cfg.get("precision"), **kwargs)
    if requested is not None:
        return int(requested)
    return int(device_cfg["batch_size"])
