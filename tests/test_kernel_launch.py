"""kernels/launch.py: the direct launch reuses a compiled kernel only for arguments Triton treats alike."""

from __future__ import annotations

import pytest
import torch

from halo_lab.kernels.launch import Launcher, _arg_key


class FakeJIT:
    """Stands in for a JITFunction: records the JIT-path calls and hands out fake compiled kernels."""

    arg_names = ["x", "n", "A", "B"]

    def __init__(self):
        self.jit_calls, self.direct_calls = [], []

    def __getitem__(self, grid):
        def run(*args, **meta):
            self.jit_calls.append((grid, args, meta))
            return FakeCompiled(self)

        return run


class FakeCompiled:
    def __init__(self, jit):
        self.jit = jit

    def __getitem__(self, grid):
        return lambda *args: self.jit.direct_calls.append((grid, args))


def test_arg_key_holds_what_triton_specialises():
    t = torch.zeros(64)
    assert _arg_key(t) == _arg_key(torch.ones(64)) != _arg_key(t.to(torch.float64))
    assert _arg_key(t) != _arg_key(t[1:])  # 4-byte offset: no longer 16-byte aligned
    assert _arg_key(t) == _arg_key(t[4:])  # 16 bytes in: aligned again
    # ints and floats by value: stricter than Triton's classes (divisibility by 16, == 1, width)
    assert len({_arg_key(v) for v in (1, 3, 32, 48, 2**33)}) == 5
    assert _arg_key(True) != _arg_key(1) and _arg_key(2.0) != _arg_key(2)


def test_direct_launch_after_the_first_call(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    jit = FakeJIT()
    launch = Launcher(jit)
    launch.direct = True
    x = torch.zeros(64)
    meta = {"B": 2, "A": 1, "num_warps": 4}
    launch((3, 2), (x, 32), meta)
    launch(
        (5, 2), (torch.ones(64), 32), meta
    )  # same kind of arguments: the compiled kernel, constexprs in order
    assert len(jit.jit_calls) == 1
    assert jit.direct_calls[0][0] == (5, 2, 1) and jit.direct_calls[0][1][1:] == (32, 1, 2)
    launch((5, 2), (x, 40), meta)  # another int: through the JIT path once
    launch((5, 2), (x[1:], 32), meta)  # an unaligned pointer: another specialisation
    launch((5, 2), (x, 32), {**meta, "num_warps": 8})  # other launch options
    assert len(jit.jit_calls) == 4 and len(jit.direct_calls) == 1


def test_missing_constexpr_keeps_the_jit_path(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    jit = FakeJIT()
    launch = Launcher(jit)
    launch.direct = True
    for _ in range(3):
        launch((1,), (torch.zeros(4), 16), {"A": 1})  # B left to a default
    assert len(jit.jit_calls) == 3 and not jit.direct_calls


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled kernels only")
def test_direct_launch_equals_the_jit_launch_cuda():
    from halo_lab.config import HaloConfig
    from halo_lab.kernels.halo_attention import interface
    from halo_lab.model import attention as attn

    config = HaloConfig()
    for n in (300, 1024):  # text lengths off and on the tiles
        L = n + config.num_globals
        ins = [
            torch.randn(2, h, L, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            for h in (8, 2, 2)
        ]
        g = torch.randn(2, 8, L, 64, device="cuda", dtype=torch.bfloat16)
        results = []
        for direct in (False, True, True):  # JIT path, then the first and a later direct call
            for launcher in (interface._fwd, interface._dq, interface._dkv):
                launcher.direct = direct
            out = attn.halo_attention(*ins, config, 0, 0, "triton")
            results.append((out, *torch.autograd.grad(out, ins, g)))
        for launcher in (interface._fwd, interface._dq, interface._dkv):
            launcher.direct = True
        assert torch.equal(results[0][0], results[2][0])  # the forward has no atomics: bit for bit
        for a, b in zip(results[0][1:], results[2][1:]):  # dK/dV add fp32 atomics in any order
            torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)


def test_raw_launch_passes_the_compiled_kernels_own_arguments(monkeypatch):
    """Where the compiled kernel exposes its launcher (run, function, packed_metadata), a direct call goes
    straight to it as Triton's runner would: the grid, the current stream, the handles, the launch
    metadata and hooks, the arguments and the constexprs."""
    from halo_lab.kernels import launch as launch_mod

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(launch_mod, "_raw_stream", lambda device: 1234)
    raw_calls = []

    class RawCompiled(FakeCompiled):
        function, packed_metadata = "fn-handle", "packed"

        def run(self, *a):
            raw_calls.append(a)

        def launch_metadata(self, grid, stream, *args):
            return ("md", grid, stream)

    jit = FakeJIT()
    jit.__class__ = type(
        "RawJIT", (FakeJIT,), {"__getitem__": lambda self, grid: lambda *a, **m: RawCompiled(self)}
    )
    launch = Launcher(jit)
    launch.direct = True
    x = torch.zeros(64)
    meta = {"A": 1, "B": 2}
    launch((3,), (x, 32), meta)  # compiles (the JIT path)
    launch((4, 2), (torch.ones(64), 32), meta)
    assert len(raw_calls) == 1
    from triton import knobs

    hooks = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    grid_stream_handles, rest = raw_calls[0][:9], raw_calls[0][9:]
    assert grid_stream_handles == (4, 2, 1, 1234, "fn-handle", "packed", ("md", (4, 2, 1), 1234), *hooks)
    assert rest[1:] == (32, 1, 2) and rest[0] is not x  # the second call's tensor
    launch((4, 2), (torch.ones(64, dtype=torch.float64), 32), meta)  # another dtype: not this kernel
    assert len(raw_calls) == 1
