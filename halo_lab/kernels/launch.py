"""Launch a compiled Triton kernel without ``JITFunction.run``'s per-call work.

At the small batches where a training step is host-bound, each ``kernel[grid](...)`` costs tens of µs of
Python: binding ~35 arguments, specialising each, hashing the cache key, and looking the kernel up
(experiments/bench/host_profile.py: the fused attention's three launches were most of its 0.6-0.9 ms of
host time per layer on an H200 host, against 0.25-0.33 ms for dense SDPA). Inductor avoids it the same
way: it keeps the ``CompiledKernel`` and calls it with the argument list directly.

``Launcher`` does the first call of each specialisation through ``kernel[grid]`` (which compiles and
returns the ``CompiledKernel``), then calls that kernel directly. Its key holds what Triton specialises
on (``_arg_key``), so a direct call only ever reuses a kernel compiled for arguments of the same kind.
Under ``TRITON_INTERPRET=1`` every call goes through ``kernel[grid]`` (the interpreter has no compiled
kernel).
"""

from __future__ import annotations

import os
from typing import Any

import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
_I32 = 2**31


def _arg_key(a: Any) -> Any:
    """What Triton's specialisation sees of one argument: a tensor's dtype and 16-byte alignment; an int's
    width, divisibility by 16 and whether it is 1; a float is fp32. Anything else is keyed by value."""
    if isinstance(a, torch.Tensor):
        return a.dtype, a.data_ptr() % 16 == 0
    if isinstance(a, bool):
        return "b", a
    if isinstance(a, int):
        return -_I32 <= a < _I32, a % 16 == 0, a == 1
    if isinstance(a, float):
        return "f"
    return a


class Launcher:
    """``launcher(grid, args, meta)`` runs ``kernel[grid](*args, **meta)``: ``args`` are the runtime
    arguments in signature order, ``meta`` every constexpr and the launch options (num_warps, num_stages)."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.compiled: dict[tuple, Any] = {}
        self.direct = not INTERPRETED

    def __call__(self, grid: tuple[int, ...], args: tuple, meta: dict[str, Any]) -> None:
        if not self.direct:
            self.kernel[grid](*args, **meta)
            return
        key = (torch.cuda.current_device(), tuple(meta.items()), *map(_arg_key, args))
        compiled = self.compiled.get(key, False)
        if compiled is None:
            self.kernel[grid](*args, **meta)
            return
        if compiled is False:
            kernel = self.kernel[grid](*args, **meta)
            names = self.kernel.arg_names[len(args) :]
            # a constexpr left to its default is not in meta: such a call keeps the JIT path
            self.compiled[key] = (kernel, names) if all(n in meta for n in names) else None
            return
        kernel, names = compiled
        kernel[(*grid, 1, 1)[:3]](*args, *(meta[n] for n in names))
