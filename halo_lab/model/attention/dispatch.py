"""Which attention runs: ``resolve_backend`` (what ``auto`` means on a device), ``halo_attention`` (the
named backend, with the compile fallback), the dense baseline's causal SDPA, the choice of the Triton
decode kernel, and ``BackendRecord``: what really ran, fallbacks included, per model."""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings

import torch
import torch.nn.functional as F

from halo_lab.config import HaloConfig
from halo_lab.graph.reference import reference_attention
from halo_lab.model.attention.flex import HAS_FLEX, flex_graph_attention
from halo_lab.model.attention.hybrid import hybrid_attention
from halo_lab.model.attention.masked import masked_attention

MASKED_MAX_LEN = 4096  # an L x L boolean mask is cheap on a CPU up to here
AUTO_CUDA_BACKEND = "triton"  # fastest attention and training step at every length (experiments/bench)
# auto uses the fused kernels up to this head_dim: the shapes measured on an H200 (16-64; smaller or odd
# ones run zero-padded). head_dim 128 in bf16 hit a CUDA error there (experiments/bench/kernel_notes.md,
# section "head_dim 128 in bf16");
# it stays selectable with attention_backend=triton, and auto uses flex for it.
TRITON_AUTO_MAX_HEAD_DIM = 64


class BackendRecord:
    """The backend that last ran in a model, by grad mode ("training" / "inference"): what a fallback
    really ran, for the runner's metrics.json (``resolve_backend`` only says what was asked for). Each
    model owns one, so a multirun's jobs never see each other's."""

    def __init__(self) -> None:
        self.ran: dict[str, str] = {}

    def note(self, backend: str) -> str:
        self.ran["training" if torch.is_grad_enabled() else "inference"] = backend
        return backend

    def get(self, mode: str) -> str | None:
        return self.ran.get(mode)

    def clear(self) -> None:
        self.ran.clear()


@functools.cache
def _has_triton() -> bool:  # asked on every layer call: look the package up once
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    """Triton kernels run on CPU tensors only under its interpreter (TRITON_INTERPRET=1, read at import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1" and _has_triton()


def resolve_backend(config: HaloConfig, device: torch.device, seq_len: int | None = None) -> str:
    """``auto``: the fused Triton kernels on CUDA (flex for a head_dim or a query heads per KV head ratio
    they do not cover: the ratio must be a power of two); elsewhere SDPA
    with the graph as a boolean mask up to MASKED_MAX_LEN positions, the reference gather beyond. Never a
    backend that would drop the content-selected blocks (flex, hybrid) when ``select_blocks`` > 0."""
    if config.attention_backend != "auto":
        return config.attention_backend
    # FlexAttention compiles through Triton, which needs compute capability 7.0 or newer
    fused = HAS_FLEX and device.type == "cuda" and torch.cuda.get_device_capability(device) >= (7, 0)
    if fused:
        group = config.num_heads // config.num_kv_heads
        covered = config.head_dim <= TRITON_AUTO_MAX_HEAD_DIM and group & (group - 1) == 0
        if _has_triton() and covered:
            return AUTO_CUDA_BACKEND
        if not config.selects:
            return "flex"
    return "masked" if seq_len is not None and seq_len <= MASKED_MAX_LEN else "reference"


_warned: set[str] = set()
_compile_failed: set[tuple] = set()  # (backend, dtype, q shape, kv heads, device type) that did not compile


def _compile_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = []
    try:
        from torch._dynamo.exc import BackendCompilerFailed

        errors.append(BackendCompilerFailed)
    except ImportError:  # pragma: no cover - old torch
        pass
    import torch._inductor.exc as inductor_exc

    # InductorError wraps lowering failures in recent torch ("LoweringException: NoValidChoicesError: ..")
    errors += [
        getattr(inductor_exc, n) for n in ("InductorError", "LoweringException") if hasattr(inductor_exc, n)
    ]
    return tuple(errors)


_COMPILE_ERRORS = _compile_errors()


def _note(record: BackendRecord | None, backend: str) -> None:
    if record is not None:
        record.note(backend)


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


def dense_attention(q, k, v) -> torch.Tensor:
    """Causal SDPA (flash / memory-efficient kernels where available)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])


def halo_attention(
    q, k, v, config: HaloConfig, layer: int, step: int, backend: str, record: BackendRecord | None = None,
    pool: torch.Tensor | None = None, bias: torch.Tensor | None = None, token_bias: torch.Tensor | None = None,
    router: tuple | None = None,
) -> torch.Tensor:  # fmt: skip
    """Full-sequence HALO attention with the named backend (q/k/v include the global positions); ``record``
    notes what really ran; ``pool``: the learned summary pooling's u, ``bias``: the summary keys' logit
    bias [Hkv], ``token_bias``: the chosen tokens' [Hkv], ``router``: the choice's router
    (content-selected blocks; None: none)."""
    if backend in ("flex", "hybrid"):
        if q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad:
            _warn_once("FlexAttention has no backward on CPU: using the reference backend for this pass")
            _note(record, "reference")
            return reference_attention(q, k, v, config, layer, step, pool, bias, token_bias, router)
        key = (backend, q.dtype, tuple(q.shape[1:]), k.shape[1], q.device.type)
        if key not in _compile_failed:
            try:
                out = (hybrid_attention if backend == "hybrid" else flex_graph_attention)(
                    q, k, v, config, layer, step
                )
                _note(record, backend)
                return out
            except _COMPILE_ERRORS as e:
                # Inductor can find no kernel for some shapes/dtypes (seen: float32 prefill, 8 query heads
                # on 2 KV heads, H200). Same function, another backend; never retry the failed compile.
                _compile_failed.add(key)
                _warn_once(
                    f"attention_backend={backend} failed to compile for {q.dtype} q{tuple(q.shape)} "
                    f"({type(e).__name__}): using the masked/reference backend for this shape"
                )
        fallback = "masked" if q.shape[2] <= MASKED_MAX_LEN else "reference"
        return halo_attention(q, k, v, config, layer, step, fallback, record, pool, bias, token_bias, router)
    if backend == "triton":
        if q.is_cuda or triton_interpreted():
            from halo_lab.kernels.halo_attention import halo_triton_attention

            _note(record, backend)
            return halo_triton_attention(q, k, v, config, layer, step, pool, bias, token_bias, router)
        _warn_once("attention_backend=triton needs CUDA (or TRITON_INTERPRET=1): using the reference backend")
        _note(record, "reference")
        return reference_attention(q, k, v, config, layer, step, pool, bias, token_bias, router)
    if backend == "reference":
        _note(record, backend)
        return reference_attention(q, k, v, config, layer, step, pool, bias, token_bias, router)
    if backend == "masked":
        _note(record, backend)
        return masked_attention(q, k, v, config, layer, step, pool, bias, token_bias, router)
    raise ValueError(
        f"attention_backend={backend!r} is not a HALO backend (reference, masked, triton, flex, hybrid, auto)"
    )


# ------------------------------------------------------------------------------------ decode kernel

DECODE_KERNEL = "auto"  # "auto": the Triton kernel on CUDA when it imports and passes its check; "torch"
_decode_kernel_ok: dict[tuple, bool] = {}


def check_decode_kernel(device, dtype) -> bool:
    """Run the Triton decode kernel once on a small input (eagerly: call before compiling or capturing) and
    remember whether it matches the gather path; a failing kernel is warned about and not used."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (str(device), dtype)
    if key in _decode_kernel_ok:
        return _decode_kernel_ok[key]
    ok = False
    if DECODE_KERNEL != "torch" and device.type == "cuda":
        try:
            from halo_lab.kernels import decode as kdecode

            if kdecode.available():
                g = torch.Generator(device=device).manual_seed(0)
                q = torch.randn(2, 4, 1, 64, device=device, dtype=dtype, generator=g)
                k, v = (torch.randn(2, 2, 100, 64, device=device, dtype=dtype, generator=g) for _ in range(2))
                slots = torch.tensor([0, 1, 5, -1, 50, 99, 7], device=device)
                out = kdecode.halo_decode_attention_op(q, k, v, slots)
                ref = kdecode.reference_decode_attention(q, k, v, slots)
                ok = bool((out.float() - ref.float()).abs().max() < 5e-2)
                if not ok:
                    _warn_once("the Triton decode kernel disagrees with the gather path: not using it")
        except Exception as e:  # noqa: BLE001 - any failure: the gather path is exact
            _warn_once(f"the Triton decode kernel failed ({type(e).__name__}: {e}): using the gather path")
    _decode_kernel_ok[key] = ok
    return ok


def decode_kernel_op(device, dtype):
    """The Triton decode kernel as a torch op for ``device``/``dtype``, or None (use the gather path)."""
    if not check_decode_kernel(device, dtype):
        return None
    return torch.ops.halo_lab.halo_decode_attention.default
