"""Launch a compiled Triton kernel without ``JITFunction.run``'s per-call work.

At the small batches where a training step is host-bound, each ``kernel[grid](...)`` costs tens of µs of
Python: binding ~35 arguments, specialising each, hashing the cache key, and looking the kernel up
(experiments/bench/kernel_notes.md, sections "2026-12-02: host time per layer" and "2026-12-02c/d": the
fused attention's three launches were most of its 0.6-0.9 ms of host time per layer on an H200 host,
against 0.25-0.33 ms for dense SDPA). Inductor avoids it the same
way: it keeps the ``CompiledKernel`` and calls it with the argument list directly.

``Launcher`` does the first call of each key through ``kernel[grid]`` (which compiles, or finds the
kernel in Triton's cache, and returns the ``CompiledKernel``), then calls that kernel's launcher
directly, with the constexprs it was compiled for, as the runner of ``CompiledKernel.__getitem__``
would. The key holds at least what Triton specialises on, so a direct call only ever reuses a kernel
compiled for arguments of the same kind.
Under ``TRITON_INTERPRET=1`` every call goes through ``kernel[grid]`` (the interpreter has no compiled
kernel).
"""

from __future__ import annotations

import operator
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


def _raw_launch(kernel) -> Any:
    """The compiled kernel's own launcher (what ``kernel[grid](...)`` ends in, as Inductor calls it), or
    None where this Triton (or torch) lays it out otherwise: then its runner launches."""
    run, function, packed = (getattr(kernel, n, None) for n in ("run", "function", "packed_metadata"))
    if not callable(run) or function is None or packed is None or _knobs is None or _raw_stream is None:
        return None
    return run, function, packed


class Launcher:
    """``launcher(grid, args, meta)`` runs ``kernel[grid](*args, **meta)``: ``args`` are the runtime
    arguments in signature order, ``meta`` every constexpr and the launch options (num_warps, num_stages).

    The key reads the arguments by the positions of the first call's tensors (a kernel's arguments keep
    their kind at each position): the tensors' dtypes and alignment, the other arguments by value, the meta
    items: half the host time of a key function per argument (10 vs 19 µs for the dQ kernel's 45
    arguments on this project's CPU runner; a layer's five launches pay it)."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.compiled: dict[tuple, Any] = {}
        self.direct = not INTERPRETED
        self._split: tuple | None = None  # (number of args, tensor positions, getter of the others)

    def _key(self, args: tuple, meta: dict) -> tuple:
        split = self._split
        if split is None or split[0] != len(args):
            tensors = tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor))
            others = [i for i in range(len(args)) if i not in tensors]
            get = operator.itemgetter(*others, *others[:1])  # >= 2 indices: always a tuple
            split = self._split = (len(args), tensors, get if others else (lambda a: ()))
        tensors = [args[i] for i in split[1]]
        try:
            dtypes = tuple([t.dtype for t in tensors])
            aligned = tuple([t.data_ptr() % 16 == 0 for t in tensors])
        except AttributeError:  # not a tensor where the first call had one: a key per argument
            return (torch.cuda.current_device(), tuple(meta.items()), *map(_arg_key, args))
        return torch.cuda.current_device(), tuple(meta.items()), split[2](args), dtypes, aligned

    def __call__(self, grid: tuple[int, ...], args: tuple, meta: dict[str, Any]) -> None:
        if not self.direct:
            self.kernel[grid](*args, **meta)
            return
        key = self._key(args, meta)
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
            if all(n in meta for n in names):
                self.compiled[key] = (kernel, tuple(meta[n] for n in names), _raw_launch(kernel))
            else:
                self.compiled[key] = None
            return
        kernel, consts, raw = compiled
        gx, gy, gz = (*grid, 1, 1)[:3]
        if raw is None:
            kernel[(gx, gy, gz)](*args, *consts)
            return
        # the runner's body (compiler.py, CompiledKernel.__getitem__) without its closure and its
        # device / stream lookups through the driver
        run, function, packed = raw
        stream = _raw_stream(key[0])
        hooks = _knobs.runtime
        meta_ = kernel.launch_metadata((gx, gy, gz), stream, *args)
        run(gx, gy, gz, stream, function, packed, meta_, hooks.launch_enter_hook, hooks.launch_exit_hook,
            *args, *consts)  # fmt: skip


try:
    from triton import knobs as _knobs
except ImportError:  # pragma: no cover - a Triton without knobs: always the runner
    _knobs = None

_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # what Triton's driver itself calls
