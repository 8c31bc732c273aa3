"""Programmatic dependent launch (PDL, Hopper and later) for the decode step's chain of kernels.

At batch 1 a decode token is ~44 small kernels in a row (the GEMVs, the fused q/k/v, the attention), each
a few µs and most of that the launch and the first loads, not the work (experiments/bench/README.md,
"Seventh session"). With PDL a kernel may start while the one before it is still running: its programs
signal early (``gdc_launch_dependents``) that the next kernel may launch, and the next kernel loads what
no earlier kernel writes (the weights, 99% of a GEMV's bytes) before it waits (``gdc_wait``) for the
previous grid to finish and flush. CUTLASS's example 63 (Hopper GEMM with weight prefetch) is the same
idea.

The rule every kernel here keeps: no load of anything an earlier kernel writes, and no store at all,
before ``gdc_wait``. ``gdc_wait`` waits for the whole previous grid, which itself waited for the one
before it, so the order of the unfused step holds transitively. A kernel launched without PDL (Inductor's,
cuBLAS's) waits for its predecessor as usual, and the gdc instructions are no-ops without PDL.

On by default (``Decoder.pdl``; an H100 decodes HALO-S at 9,117 tokens/s with it, 6,516 without) where
the device allows it: sm_90+, and a Triton with the gdc instructions and the ``launch_pdl`` option. Under ``TRITON_INTERPRET=1`` it is never on (the interpreter
has no grid dependency control).
"""

from __future__ import annotations

import contextlib
import os

import torch

ENABLED = False  # set by the Decoder around its step's capture; the launches read it


def supported(device: torch.device | str) -> bool:
    """Whether the decode kernels can launch with PDL on ``device``."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1" or torch.device(device).type != "cuda":
        return False
    try:
        import triton.language as tl
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    has_gdc = hasattr(tl.extra.cuda, "gdc_wait") and hasattr(tl.extra.cuda, "gdc_launch_dependents")
    has_option = "launch_pdl" in getattr(CUDAOptions, "__dataclass_fields__", {})
    return has_gdc and has_option and torch.cuda.get_device_capability(device)[0] >= 9


def launch_options() -> dict:
    """The kernels' PDL constexpr and launch option: ``kernel[grid](..., **launch_options())``."""
    return {"PDL": True, "launch_pdl": True} if ENABLED else {"PDL": False}


@contextlib.contextmanager
def enabled(on: bool = True):
    """The decode kernels launched inside launch with PDL (``on``), as the Decoder's step does."""
    global ENABLED
    before, ENABLED = ENABLED, on
    try:
        yield
    finally:
        ENABLED = before
