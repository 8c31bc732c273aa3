"""Device profiles (one table) and detection of the device this process runs on.

One table (``PROFILES``) states, per card, what the runner needs: Lightning precision, float32 matmul
precision (TF32), which SDPA kernels exist, bf16 support, a ``torch.compile`` mode and a default
micro-batch. The ``device`` config group names a profile and holds ``null`` overrides;
:func:`halo_lab.device.conf.resolve_device_config` fills them from this table, so the values live here.

Hardware facts behind the table (PyTorch >= 2.2):
- bf16 and TF32 tensor cores need Ampere (sm80) or newer: P100 (sm60), V100 (sm70) and T4 (sm75) train
  in fp16 with loss scaling (Lightning "16-mixed") or fp32.
- SDPA's flash kernel (FlashAttention-2) needs sm80+; the memory-efficient kernel runs from sm50, so
  T4/P100 use that one.
- Inductor (the torch.compile backend) generates Triton kernels, which need sm70+: P100 gets no compile.
- P100 has fast fp16 arithmetic (no tensor cores), so fp16 mixed precision still pays off there.

Detection is failsafe: a failing query logs and falls back to the CPU profile instead of raising.
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


# The one table. Compile: torch.compile's "default" mode on every card that can compile (sm70+): it
# starts in seconds. max-autotune (device.compile=max-autotune-no-cudagraphs) autotunes every matrix
# product first: minutes before the first step of a medium model on an H200, so only when asked for.
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
    "l40": _gpu("l40", "NVIDIA L40 / L40S", (8, 9), 48, "bf16-mixed", "default", 64),
    "rtx_6000": _gpu("rtx_6000", "NVIDIA RTX 6000 Ada", (8, 9), 48, "bf16-mixed", "default", 64),
    "a100": _gpu("a100", "NVIDIA A100", (8, 0), 80, "bf16-mixed", "default", 64),
    "h100": _gpu("h100", "NVIDIA H100", (9, 0), 80, "bf16-mixed", "default", 64),
    "h200": _gpu("h200", "NVIDIA H200", (9, 0), 141, "bf16-mixed", "default", 128),
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
        return _listed_profile(key, name, capability, memory_gb)
    if capability is not None:
        return profile_from_capability(tuple(capability), memory_gb, name or None)
    logger.warning("unknown device %r without a compute capability: conservative fp32 profile", name)
    return dataclasses.replace(
        profile_from_capability((5, 0), memory_gb, name or None), name="cuda_unknown", compile=None
    )


def _listed_profile(
    key: str, name: str, capability: tuple[int, int] | None, memory_gb: float | None
) -> DeviceProfile:
    """The table's GPU entry ``key`` for a card called ``name``: memory and default batch scaled to
    ``memory_gb``; the capability rules instead when ``capability`` is of another generation."""
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
