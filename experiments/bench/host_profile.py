"""Where a small-batch training step spends its host time (GPU only, no Hydra needed).

python experiments/bench/host_profile.py OUT_DIR

At the reference package's small batches both models are launch-bound, so HALO-S's extra step time is
host work. This prints and writes (OUT_DIR/host_profile.txt):
* the attention layer alone (bench setting, N = 1K): wall time per fwd+bwd synced each call, and the
  host time per call with the GPU left to run behind (CPU-bound if the two agree);
* the same step through ``bench.benchmark_speed`` (make bench's timing), to compare in one process;
* a cProfile of HALO-S training steps (reference medium_1k config), the top functions by own time;
* torch.profiler tables of one HALO-S and one dense step (host ops by self CPU time).
"""

from __future__ import annotations

import contextlib
import cProfile
import gc
import io
import pstats
import sys
import time
import warnings

import torch

from halo_lab.model import attention as attn
from halo_lab import bench
from halo_lab.config import HaloConfig
from halo_lab.kernels.halo_attention import interface
from halo_lab.model import build_model

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a dry run of the script (interpreter)
SMALL = DEV == "cpu"


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


MEDIUM_1K = {"vocab_size": 256, "hidden_size": 512, "num_layers": 8, "num_heads": 8, "num_kv_heads": 2}


def per_call(fn, n: int = 50) -> tuple[float, float]:
    """(ms per call synced every call, host ms per call without syncing)."""
    for _ in range(5):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(n):
        fn()
        sync()
    synced = (time.perf_counter() - t) / n * 1e3
    t = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t) / n * 1e3
    sync()
    return synced, host


@contextlib.contextmanager
def jit_launches():
    """The fused kernels launched through JITFunction.run (as before kernels/launch.py), for comparison."""
    launchers = (interface._fwd, interface._dq, interface._dkv)
    before = [x.direct for x in launchers]
    for x in launchers:
        x.direct = False
    try:
        yield
    finally:
        for x, d in zip(launchers, before):
            x.direct = d


@contextlib.contextmanager
def gc_off():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def attention_layer(log) -> None:
    config = HaloConfig()
    L = (64 if SMALL else 1024) + config.num_globals
    q = torch.randn(1 if SMALL else 64, 8, L, 64, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1 if SMALL else 64, 2, L, 64, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1 if SMALL else 64, 2, L, 64, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn_like(q)
    for name, f in {
        "dense": lambda: attn.dense_attention(q, k, v).backward(g),
        "triton": lambda: attn.halo_attention(q, k, v, config, 0, 0, "triton").backward(g),
        "triton_fwd_only": lambda: attn.halo_attention(
            q.detach(), k.detach(), v.detach(), config, 0, 0, "triton"
        ),
    }.items():
        synced, host = per_call(f, 2 if SMALL else 50)
        log(f"attention N=1024 {name:16s} synced {synced:.3f} ms/call  host {host:.3f} ms/call")
        if name != "dense":
            with jit_launches():
                synced, host = per_call(f, 2 if SMALL else 50)
            log(
                f"attention N=1024 {name + ' (jit)':16s} synced {synced:.3f} ms/call  host {host:.3f} ms/call"
            )
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(2 if SMALL else 50):
        attn.halo_attention(q, k, v, config, 0, 0, "triton").backward(g)
    pr.disable()
    sync()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(30)
    log("cProfile, 50 triton fwd+bwd calls (tottime):\n" + s.getvalue())


def host_pieces(log) -> None:
    """Host µs per call of each piece of the triton layer's fwd + bwd (no sync; the GPU runs behind), to
    find which part of its host time is launches, allocations, the autograd engine or Python."""
    config = HaloConfig()
    B, L = (1, 66) if SMALL else (64, 1026)
    q = torch.randn(B, 8, L, 64, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, 2, L, 64, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, 2, L, 64, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn_like(q)
    calls: dict = {}
    launchers = {"fwd": interface._fwd, "dq": interface._dq, "dkv": interface._dkv}

    class Recorder:  # keeps one call's arguments of each kernel
        def __init__(self, name, launcher):
            self.name, self.launcher = name, launcher

        def __call__(self, grid, args, meta):
            calls[self.name] = (grid, args, meta)
            self.launcher(grid, args, meta)

    interface._fwd, interface._dq, interface._dkv = (Recorder(n, x) for n, x in launchers.items())
    try:
        attn.halo_attention(q, k, v, config, 0, 0, "triton").backward(g)
    finally:
        interface._fwd, interface._dq, interface._dkv = launchers.values()
    sync()

    class Noop(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            return q.view_as(q)

        @staticmethod
        def backward(ctx, do):
            return do, None, None

    pieces = {
        **{f"launch {name}": (lambda x=launchers[name], c=calls[name]: x(*c)) for name in launchers},
        "empty_like(q)": lambda: torch.empty_like(q),
        "zeros dK/dV fp32 buffers": lambda: torch.zeros(2, B, 2, L, 64, device=DEV, dtype=torch.float32),
        "graph_tables": lambda: interface.graph_tables(config, 0, 0, L, q.device),
        "no-op Function fwd+bwd": lambda: Noop.apply(q, k, v).backward(g),
        "triton fwd only": lambda: attn.halo_attention(
            q.detach(), k.detach(), v.detach(), config, 0, 0, "triton"
        ),
        "triton fwd+bwd": lambda: attn.halo_attention(q, k, v, config, 0, 0, "triton").backward(g),
        "triton fwd+bwd, no launches": lambda: no_launch(
            lambda: attn.halo_attention(q, k, v, config, 0, 0, "triton").backward(g)
        ),
        "dense fwd+bwd": lambda: attn.dense_attention(q, k, v).backward(g),
    }

    def no_launch(fn):
        saved = interface._fwd, interface._dq, interface._dkv
        interface._fwd = interface._dq = interface._dkv = lambda *a: None
        try:
            fn()
        finally:
            interface._fwd, interface._dq, interface._dkv = saved

    # host µs per call over n calls from an idle GPU: when the n-call figure grows with n, the host waited
    # for the GPU (a full launch queue, or a synchronising call), and the small-n figure is the host's own
    stats = torch.cuda.memory_stats if DEV == "cuda" else (lambda: {})
    with gc_off():
        for name, fn in pieces.items():
            for _ in range(5):
                fn()
            sync()
            row = []
            before = stats()
            for n in (5, 20, 100) if not SMALL else (2,):
                sync()
                t = time.perf_counter()
                for _ in range(n):
                    fn()
                row.append(f"n={n}: {(time.perf_counter() - t) / n * 1e6:7.1f}")
            sync()
            after = stats()
            mallocs = {
                key: after.get(key, 0) - before.get(key, 0)
                for key in (
                    "num_device_alloc",
                    "num_device_free",
                    "num_alloc_retries",
                    "num_sync_all_streams",
                )
            }
            log(f"host piece {name:28s} µs/call {'  '.join(row)}  allocator {mallocs}")
            q.grad = k.grad = v.grad = None


def sync_check(log) -> None:
    """Any op of a HALO-S / dense training step that synchronises the host with the GPU (a sync in a
    host-bound step stalls the host for the GPU's queue): torch's sync debug mode warns at each one."""
    if DEV != "cuda":
        return
    cfg = HaloConfig(**MEDIUM_1K, max_seq_len=1024)
    x = torch.randint(0, 256, (8, 1024), device=DEV)
    for arch in ("dense", "halo"):
        model = build_model(cfg, arch).to(DEV)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        for i in range(3):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if i == 2:  # the first two steps compile and allocate
                    torch.cuda.set_sync_debug_mode("warn")
                try:
                    with torch.autocast(DEV, dtype=torch.bfloat16):
                        _, loss = model(x, x)
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                finally:
                    torch.cuda.set_sync_debug_mode(0)
        syncs = sorted({f"{w.filename}:{w.lineno}: {str(w.message)[:100]}" for w in caught})
        log(
            f"sync check {arch}: {len(caught)} synchronising calls in one step"
            + "".join(f"\n  {s}" for s in syncs)
        )
        del model, opt


def train_steps(log) -> None:
    cfg = HaloConfig(**MEDIUM_1K, max_seq_len=1024)
    x = torch.randint(0, 256, (1, 64) if SMALL else (8, 1024), device=DEV)
    for arch in ("dense", "halo"):
        torch.manual_seed(0)
        model = build_model(cfg, arch).to(DEV)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=DEV == "cuda")
        state = {"step": 0}

        def step(model=model, opt=opt, state=state):
            with torch.autocast(DEV, dtype=torch.bfloat16):
                _, loss = model(x, x)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            state["step"] += 1

        synced, host = per_call(step, 2 if SMALL else 20)
        log(f"train step medium_1k {arch:6s} synced {synced:.2f} ms  host {host:.2f} ms")
        with gc_off():
            synced, host = per_call(step, 2 if SMALL else 20)
        log(f"train step medium_1k {arch:6s} synced {synced:.2f} ms  host {host:.2f} ms  (gc off)")
        if arch == "halo":
            with jit_launches():
                synced, host = per_call(step, 2 if SMALL else 20)
            log(f"train step medium_1k {arch:6s} synced {synced:.2f} ms  host {host:.2f} ms  (jit launches)")
            for layers in (2, 4):  # a cost per step that does not grow with the layers (issue 12)?
                for a2 in ("dense", "halo"):
                    m2 = build_model(HaloConfig(**{**MEDIUM_1K, "num_layers": layers}, max_seq_len=1024), a2)
                    m2 = m2.to(DEV)
                    ms2 = bench.benchmark_speed(
                        m2, x.shape[1], x.shape[0], 1 if SMALL else 3, 2 if SMALL else 10,
                        torch.float32 if SMALL else None,
                    )  # fmt: skip
                    log(
                        f"train step {layers} layers {a2:6s} via bench.benchmark_speed {ms2['train_step_ms']:.2f} ms"
                    )
                    del m2
        # the same model and shape through make bench's own timing (bench.benchmark_speed, a fresh AdamW):
        # the bench's reference part gave 32.3 / 39.6 ms here where this script gave 23.3 / 24.0 (2026-12-02)
        B, N = x.shape
        ms = bench.benchmark_speed(
            model, N, B, 1 if SMALL else 3, 2 if SMALL else 10, torch.float32 if SMALL else None
        )
        log(f"train step medium_1k {arch:6s} via bench.benchmark_speed {ms['train_step_ms']:.2f} ms")
        if arch == "halo":
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(10):
                step()
            pr.disable()
            sync()
            s = io.StringIO()
            pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(40)
            log("cProfile, 10 HALO-S steps (tottime):\n" + s.getvalue())
            s = io.StringIO()
            pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(40)
            log("cProfile, 10 HALO-S steps (cumulative):\n" + s.getvalue())
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(3):
                step()
            sync()
        log(
            f"torch.profiler {arch}, 3 steps:\n"
            + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        )
        del model, opt


def main(out: str) -> None:
    name = torch.cuda.get_device_name() if DEV == "cuda" else "cpu"
    lines: list[str] = [f"device: {name} torch {torch.__version__}"]

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    try:
        host_pieces(log)
        attention_layer(log)
        sync_check(log)
        train_steps(log)
    finally:
        with open(f"{out}/host_profile.txt", "w") as f:
            f.write("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1])
