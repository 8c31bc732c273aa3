"""Launch a compiled Triton kernel without ``JITFunction.run``'s per-call work.

At the small batches where a training step is host-bound, each ``kernel[grid](...)`` costs tens of µs of
Python: binding ~35 arguments, specialising each, hashing the cache key, and looking the kernel up
(experiments/bench/host_profile.py: the fused attention's three launches were most of its 0.6-0.9 ms of
host time per layer on an H200 host, against 0.25-0.33 ms for dense SDPA). Inductor avoids it the same
way: it keeps the ``CompiledKernel`` and calls it with the argument list directly.

``Launcher`` does the first call of each key through ``kernel[grid]`` (which compiles, or finds the
kernel in Triton's cache, and returns the ``CompiledKernel``), then calls that kernel directly. The key
(``_arg_key``) holds at least what Triton specialises on, so a direct call only ever reuses a kernel
compiled for arguments of the same kind.
Under ``TRITON_INTERPRET=1`` every call goes through ``kernel[grid]`` (the interpreter has no compiled
kernel).
"""

from __future__ import annotations

import os
from typing import Any

import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
MAX_KEYS = 1024


def _arg_key(a: Any) -> Any:
    """One argument's part of the key: a tensor by its dtype and 16-byte alignment (what Triton specialises
    a pointer on); anything else by its value, which is stricter than Triton's specialisation of ints (width,
    divisibility by 16, == 1) and cheaper to compute. A new value only costs one JIT-path call, which
    finds Triton's compiled kernel in its cache."""
    if type(a) is int:  # most arguments (strides, lengths)
        return a
    if isinstance(a, torch.Tensor):
        return a.dtype, a.data_ptr() % 16 == 0
    return type(a), a  # else 2.0 and 2, or True and 1, would be one key


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
        if len(self.compiled) > MAX_KEYS:  # many lengths (generation's prefills): keep the cache bounded
            self.compiled.clear()
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
