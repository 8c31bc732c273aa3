"""Speed and memory benchmark: HALO-S backends against dense attention, measured in the same process.

``python -m halo_lab.bench`` (or ``make bench``) sweeps sequence length x {dense, HALO backends} at three
levels: the attention layer alone (forward + backward), a whole training step, and cached decoding. It
checks the HALO backends against the reference first, prints a table and writes ``results.json`` and
``bench.png`` to its run directory under ``outputs/bench/``. Without a GPU it runs a quick CPU mode.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from halo_lab import graph
from halo_lab.config import HaloConfig
from halo_lab.model import attention as attn
from halo_lab.model import build_model

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# ------------------------------------------------------------------------------------ timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], device: torch.device, warmup: int = 3, repeats: int = 10) -> float:
    """Milliseconds per call of ``fn``. On GPU: CUDA events around ``repeats`` back-to-back calls (the host
    queues ahead, as it does in a training loop; a sync per call would add the host's launch latency to
    every sample), the median of three such rounds. On CPU: the median of ``repeats`` timed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    if device.type == "cuda":
        for _ in range(3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeats):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / repeats)
        return statistics.median(times)
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Peak allocated memory (MB) during one call of ``fn``; None on CPU (no allocator statistics)."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


# ------------------------------------------------------------------------------------ public helpers


def estimate_flops(model_or_config, seq_len: int, arch: str = "halo", device=None) -> dict[str, float]:
    """Forward FLOPs of one sequence by part (see ``HaloSModel.estimate_flops``); ``auto`` backends
    resolve on ``device`` (default: the model's, or for a config the best device here)."""
    model = model_or_config
    if isinstance(model_or_config, (HaloConfig, dict)):
        with torch.device("meta"):
            model = build_model(model_or_config, arch)
    return model.estimate_flops(seq_len, device=device)


def step_functions(model, seq_len: int, batch_size: int, dtype: torch.dtype | None = None):
    """(forward, train_step) closures of one model at one shape: a random batch, AdamW, autocast to ``dtype``
    (default bf16 on GPU, fp32 on CPU)."""
    device = next(model.parameters()).device
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    x = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def forward():
        with torch.no_grad(), autocast:
            model(x)

    def train_step():
        with autocast:
            _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return forward, train_step


def benchmark_speed(
    model,
    seq_len: int,
    batch_size: int,
    warmup: int = 3,
    repeats: int = 10,
    dtype: torch.dtype | None = None,
    train: bool = True,
) -> dict[str, float | None]:
    """Forward and training-step time (AdamW, autocast to ``dtype`` on GPU) of one model at one shape."""
    device = next(model.parameters()).device
    forward, train_step = step_functions(model, seq_len, batch_size, dtype)

    model.train()
    out: dict[str, float | None] = {"forward_ms": time_ms(forward, device, warmup, repeats)}
    if train:
        out["train_step_ms"] = time_ms(train_step, device, warmup, repeats)
        out["tokens_per_sec"] = batch_size * seq_len / out["train_step_ms"] * 1e3
        out["peak_mem_mb"] = peak_memory_mb(train_step, device)
    else:
        out["tokens_per_sec"] = batch_size * seq_len / out["forward_ms"] * 1e3
        out["peak_mem_mb"] = peak_memory_mb(forward, device)
    return out


@torch.inference_mode()
def benchmark_generation(
    model,
    context_len: int,
    new_tokens: int = 128,
    batch_size: int = 1,
    cuda_graph: bool = True,
    repeats: int = 3,
    *,
    cache: str = "full",
    compile: bool | None = None,
    prefill: bool = True,
    count_kernels: bool = True,
    gemv: bool | None = None,
) -> dict[str, Any]:
    """Cached greedy decoding after a ``context_len`` prompt with the compiled decode step (halo_lab.generation):
    prefill time (None with ``prefill=False``: a synthetic random cache stands in for the prompt, which
    times the decode alone), decode ms per step and tokens/s (all rows), KV-cache MB, kernels per step."""
    from halo_lab.generation import Decoder

    device = next(model.parameters()).device
    model.eval()
    dec = Decoder(
        model,
        batch_size,
        context_len,
        new_tokens + 1,
        temperature=0.0,
        cache=cache,
        compile=compile,
        cuda_graph=cuda_graph,
        sync_every=new_tokens + 1,
        gemv=gemv,
    )
    best_prefill = None
    if prefill:
        prompt = torch.randint(0, model.config.vocab_size, (batch_size, context_len), device=device)
        best_prefill = math.inf
        for _ in range(repeats):
            dec.reset()
            _sync(device)
            t0 = time.perf_counter()
            dec.prefill(prompt)
            _sync(device)
            best_prefill = min(best_prefill, time.perf_counter() - t0)
    else:
        dec.fill_random()
    t0 = time.perf_counter()
    dec._run_step = dec._build()  # compile and capture outside the timed loop
    build_s = time.perf_counter() - t0
    best_decode = math.inf
    for _ in range(repeats):
        dec.pos.fill_(dec.start)
        dec.generated = 1
        _sync(device)
        t0 = time.perf_counter()
        dec.decode(new_tokens)
        _sync(device)
        best_decode = min(best_decode, time.perf_counter() - t0)
    return {
        "prefill_ms": best_prefill * 1e3 if best_prefill is not None else None,
        "ms_per_token": best_decode * 1e3 / new_tokens,
        "tokens_per_sec": batch_size * new_tokens / best_decode,
        "kv_cache_mb": dec.kv_cache_bytes / 2**20,
        "decode_path": dec.path,
        "build_s": build_s,
        "kernels_per_token": kernels_per_step(dec) if count_kernels else None,
    }


# aten ops that launch no kernel of their own (views, allocation, no-op dropout in eval)
_NO_KERNEL = {
    "aten::" + n
    for n in (
        "as_strided view _unsafe_view empty empty_strided empty_like resolve_conj resolve_neg t transpose "
        "expand reshape slice select unsqueeze squeeze detach alias permute chunk split lift_fresh "
        "dropout scalar_tensor _reshape_alias unbind narrow contiguous"
    ).split()
}


def _count_kernel_ops(event) -> int:
    if event.name in _NO_KERNEL:
        return 0
    inner = sum(_count_kernel_ops(c) for c in event.cpu_children)
    return inner if inner else (1 if event.name.startswith("aten::") else 0)


def kernels_per_step(dec) -> int | None:
    """Kernels one decode step launches: on GPU the CUDA kernels (and copies) of one step of the compiled
    (or eager) step that the CUDA graph replays; on CPU the innermost compute ops of the step (views and
    allocations excluded): what eager CUDA would launch. None when the profiler fails."""
    from torch.profiler import ProfilerActivity, profile

    cuda = dec.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    step = getattr(dec, "_fn", None) or dec._step  # the compiled step launch by launch (not the graph)
    state = dec._snapshot()
    dec.pos.fill_(dec.start)  # a step at the first decode position (the cache has room for it)
    try:
        with profile(activities=acts) as prof:
            step()
            _sync(dec.device)
        events = prof.events()
        if cuda:
            return sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        return sum(_count_kernel_ops(e) for e in events if e.cpu_parent is None)
    except Exception as e:  # noqa: BLE001 - profiling is best effort
        print(f"kernels_per_step: profiler failed ({type(e).__name__}: {e})", file=sys.stderr)
        return None
    finally:
        dec._restore(state)


# ------------------------------------------------------------------------------------ parts


def _attention_variants(base: HaloConfig) -> dict[str, tuple[str, HaloConfig]]:
    return {
        "dense": ("dense", base),
        "triton": ("triton", base),
        "triton_token": ("triton", base.replace(random_edges="token")),
        "flex": ("flex", base),
        "flex_token": ("flex", base.replace(random_edges="token")),
        "hybrid": ("hybrid", base),
        "hybrid_token": ("hybrid", base.replace(random_edges="token")),
        "window": ("flex", base.replace(dilated_offsets=[], num_random=0)),
        "reference": ("reference", base),
    }


def _edges(config: HaloConfig, backend: str, n: int) -> float:
    if backend == "dense":
        return n * (n + 1) / 2
    return float((graph.full_neighbor_index(config, 0, 0, n, "cpu") >= 0).sum())


def check_backends(device: torch.device, dtype: torch.dtype, n: int = 700) -> dict[str, float]:
    """Relative error of the fast backends vs the reference (values, and gradients on CUDA)."""
    errors = {}
    grads = device.type == "cuda"
    for mode in ("block", "token"):
        c = HaloConfig(random_edges=mode, graph_seed=7)
        L = n + c.num_globals
        ins = [torch.randn(2, h, L, 64, device=device, dtype=dtype, requires_grad=grads) for h in (8, 2, 2)]
        ref = attn.reference_attention(*[t.float() for t in ins], c, 1, 3)
        g = torch.randn_like(ref)
        for backend in ("triton", "flex", "hybrid") if device.type == "cuda" else ("flex", "hybrid"):
            with torch.set_grad_enabled(grads):
                fast = attn.halo_attention(*ins, c, 1, 3, backend)
            errors[f"{backend}_{mode}_out"] = ((fast.float() - ref).norm() / ref.norm()).item()
            if grads:
                ref_grads = torch.autograd.grad(ref, ins, g, retain_graph=True)
                for name, a, b in zip("qkv", ref_grads, torch.autograd.grad(fast, ins, g.to(dtype))):
                    errors[f"{backend}_{mode}_d{name}"] = (
                        (b.float() - a.float()).norm() / a.float().norm()
                    ).item()
    return errors


def bench_attention(
    spec: dict, device: torch.device, dtype: torch.dtype, warmup: int, repeats: int
) -> list[dict]:
    rows = []
    base = HaloConfig(
        num_heads=spec["heads"], num_kv_heads=spec["kv_heads"], hidden_size=spec["heads"] * spec["head_dim"]
    )
    for n in spec["seq_lens"]:
        batch = max(1, spec["tokens"] // n)
        for name, (backend, cfg) in _attention_variants(base).items():
            if name not in spec["backends"] or (name == "reference" and n > spec["reference_max_len"]):
                continue
            if backend in ("triton", "flex", "hybrid") and device.type != "cuda":
                continue  # no CPU backward for FlexAttention; Triton kernels need a GPU
            L = n + (0 if backend == "dense" else cfg.num_globals)
            q = torch.randn(
                batch, cfg.num_heads, L, cfg.head_dim, device=device, dtype=dtype, requires_grad=True
            )
            k = torch.randn(
                batch, cfg.num_kv_heads, L, cfg.head_dim, device=device, dtype=dtype, requires_grad=True
            )
            v = torch.randn_like(k, requires_grad=True)
            grad = torch.randn_like(q)

            def step(q=q, k=k, v=v, grad=grad, backend=backend, cfg=cfg):
                out = (
                    attn.dense_attention(q, k, v)
                    if backend == "dense"
                    else attn.halo_attention(q, k, v, cfg, 0, 0, backend)
                )
                out.backward(grad)
                q.grad = k.grad = v.grad = None

            try:
                ms = time_ms(step, device, warmup, repeats)
                mem = peak_memory_mb(step, device)
            except torch.OutOfMemoryError:
                rows.append(
                    {"part": "attention", "variant": name, "seq_len": n, "batch": batch, "error": "OOM"}
                )
                continue
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            flops = 3 * 4 * cfg.num_heads * cfg.head_dim * _edges(cfg, backend, n) * batch  # fwd + 2x bwd
            rows.append(
                {
                    "part": "attention",
                    "variant": name,
                    "seq_len": n,
                    "batch": batch,
                    "ms": ms,
                    "tokens_per_sec": batch * n / ms * 1e3,
                    "peak_mem_mb": mem,
                    "tflops": flops / ms / 1e9,
                }
            )
    return rows


def _model_config(spec: dict, seq_len: int) -> HaloConfig:
    return HaloConfig(**{**spec["model"], "max_seq_len": seq_len})


def _model_variants(spec: dict, seq_len: int) -> list[tuple[str, str, HaloConfig]]:
    """dense, then HALO-S once per backend in ``spec["halo_backends"]`` (default: the auto choice)."""
    cfg = _model_config(spec, seq_len)
    backends = spec.get("halo_backends") or ["auto"]
    halo = [
        (f"halo_{b}" if len(backends) > 1 else "halo", "halo", cfg.replace(attention_backend=b))
        for b in backends
    ]
    return [("dense", "dense", cfg)] + halo


def bench_train(
    spec: dict, device: torch.device, dtype: torch.dtype, warmup: int, repeats: int
) -> list[dict]:
    rows = []
    for n in spec["seq_lens"]:
        batch = max(1, spec["tokens"] // n)
        for variant, arch, cfg in _model_variants(spec, n):
            torch.manual_seed(0)
            model = build_model(cfg, arch).to(device)
            try:
                r = benchmark_speed(model, n, batch, warmup, repeats, dtype)
            except torch.OutOfMemoryError:
                r = {"error": "OOM"}
            flops = 3 * model.estimate_flops(n)["total"] * batch
            rows.append(
                {
                    "part": "train_step",
                    "variant": variant,
                    "seq_len": n,
                    "batch": batch,
                    "params": model.count_parameters(),
                    "ms": r.get("train_step_ms"),
                    "forward_ms": r.get("forward_ms"),
                    "tokens_per_sec": r.get("tokens_per_sec"),
                    "peak_mem_mb": r.get("peak_mem_mb"),
                    "tflops": flops / r["train_step_ms"] / 1e9 if "train_step_ms" in r else None,
                    **({"error": r["error"]} if "error" in r else {}),
                }
            )
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _reference_models(cfg: dict):
    """The reference package's (pyhalos) dense and HALO-S models for one config, or None if not installed."""
    try:
        from halo.core.config import HaloConfig as RefConfig
        from halo.models.baseline_model import BaselineModel as RefBaseline
        from halo.models.halo_model import HaloSModel as RefHalo
    except ImportError:
        return None
    return {"dense": lambda: RefBaseline(RefConfig(**cfg)), "halo": lambda: RefHalo(RefConfig(**cfg))}


REFERENCE_ROUNDS = 5  # turns of every model of a config (bench_reference)


def _seeded(make: Callable, device: torch.device):
    torch.manual_seed(0)
    return make().to(device).train()


def bench_reference(
    spec: dict, device: torch.device, dtype: torch.dtype, warmup: int, repeats: int
) -> list[dict]:
    """Training step of both packages at the reference's published configs (its README's batch sizes,
    plain PyTorch, no compile), HALO-S and dense of each package measured in this process."""
    rows = []
    for name, point in spec["configs"].items():
        model_cfg, n, batch = dict(point["model"]), point["seq_len"], point["batch"]
        model_cfg["max_seq_len"] = max(model_cfg.get("max_seq_len", 0), n)
        # The reference's configs as published: a window past the sequence is theirs to choose.
        ours = HaloConfig(**model_cfg, allow_full_window=True)
        makers = {("halo_lab", a): (lambda a=a: build_model(ours, a)) for a in ("dense", "halo")}  # noqa: B023
        ref = _reference_models(model_cfg)
        if ref is None:
            print(
                "bench reference: pyhalos is not installed (pip install pyhalos==2.2.1): skipped", flush=True
            )
        else:
            makers.update({("pyhalos", a): make for a, make in ref.items()})
        # Memory first, one model at a time: the allocator's peak counts every live tensor.
        params, peaks, errors = {}, {}, {}
        for key, make in makers.items():
            model = _seeded(make, device)
            params[key] = sum(p.numel() for p in model.parameters())
            step = step_functions(model, n, batch, dtype)[1]
            try:
                step()
                peaks[key] = peak_memory_mb(step, device)
            except torch.OutOfMemoryError:
                errors[key] = "OOM"
            del model, step
            if device.type == "cuda":
                torch.cuda.empty_cache()
        # Then time: every model of the config built and timed in turns, REFERENCE_ROUNDS times. These steps
        # are host-bound, and the host's speed drifts within a process (the same HALO-S step took 47 ms
        # and, later, 30 ms; experiments/bench/kernel_notes.md, section 2026-12-02c/d): models timed
        # one after the other compare the drift, models timed in turns share it.
        models = {key: _seeded(make, device) for key, make in makers.items() if key not in errors}
        steps = {key: step_functions(model, n, batch, dtype)[1] for key, model in models.items()}
        for step in steps.values():
            for _ in range(warmup):
                step()
        times: dict[tuple, list[float]] = {key: [] for key in steps}
        for _ in range(REFERENCE_ROUNDS):
            for key, step in steps.items():
                times[key].append(time_ms(step, device, 0, repeats))
        for package, arch in makers:
            key = (package, arch)
            ms = statistics.median(times[key]) if key in times else None
            rows.append(
                {
                    "part": f"reference_{name}",
                    "variant": arch if package == "halo_lab" else f"pyhalos_{arch}",
                    "seq_len": n,
                    "batch": batch,
                    "params": params[key],
                    "ms": ms,
                    "ms_rounds": [round(t, 3) for t in times.get(key, [])],
                    "tokens_per_sec": batch * n / ms * 1e3 if ms else None,
                    "peak_mem_mb": peaks.get(key),
                    **({"error": errors[key]} if key in errors else {}),
                }
            )
        del models, steps
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


DECODE_VARIANTS = {"dense": ("dense", "full"), "halo": ("halo", "full"), "halo_ring": ("halo", "ring")}


def bench_decode(
    spec: dict, device: torch.device, dtype: torch.dtype, on_row: Callable | None = None
) -> list[dict]:
    """Cached decoding, HALO-S (full and ring cache) and dense through the same compiled step.

    spec: ``new_tokens``, ``model``; ``runs`` [{batch, contexts}] (or ``contexts``, batch 1);
    ``variants`` (default dense, halo); ``prefill_contexts`` (contexts whose prefill is timed; default all,
    the others decode after a synthetic cache); ``compile`` (default: on CUDA), ``cuda_graph``, ``repeats``.
    ``on_row`` is called with each row as it is measured (e.g. to save partial results)."""
    rows = []
    runs = spec.get("runs") or [{"batch": 1, "contexts": spec["contexts"]}]
    variants = spec.get("variants") or ["dense", "halo"]
    prefill_at = spec.get("prefill_contexts")
    counted: set[tuple] = set()  # kernels per step do not depend on the context: profile once per kind
    for run_spec in runs:
        batch = int(run_spec.get("batch", 1))
        for ctx in run_spec["contexts"]:
            dense_kv = None
            for variant in variants:
                arch, cache = DECODE_VARIANTS[variant]
                torch.manual_seed(0)
                model = build_model(_model_config(spec, ctx + spec["new_tokens"] + 1), arch).to(device, dtype)
                row = {"part": "decode", "variant": variant, "seq_len": ctx, "batch": batch}
                try:
                    r = benchmark_generation(
                        model,
                        ctx,
                        spec["new_tokens"],
                        batch,
                        cuda_graph=spec.get("cuda_graph", True),
                        repeats=spec.get("repeats", 3),
                        cache=cache,
                        compile=spec.get("compile"),
                        prefill=prefill_at is None or ctx in prefill_at,
                        count_kernels=(variant, batch) not in counted,
                        gemv=spec.get("triton_gemv"),
                    )
                    counted.add((variant, batch))
                    row.update(
                        params=model.count_parameters(),
                        ms=r["ms_per_token"],
                        tokens_per_sec=r["tokens_per_sec"],
                        prefill_ms=r["prefill_ms"],
                        kv_cache_mb=r["kv_cache_mb"],
                        decode_path=r["decode_path"],
                        build_s=r["build_s"],
                        kernels_per_token=r["kernels_per_token"],
                    )
                    if variant == "dense":
                        dense_kv = r["kv_cache_mb"]
                    if dense_kv:
                        row["kv_ratio_to_dense"] = r["kv_cache_mb"] / dense_kv
                except torch.OutOfMemoryError:
                    row["error"] = "OOM"
                except Exception as e:  # noqa: BLE001 - one failing row must not lose the others
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                print(format_table([row]).splitlines()[-1], flush=True)
                rows.append(row)
                if on_row is not None:
                    on_row(row)
                del model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


def add_ratios(rows: list[dict]) -> None:
    """ratio_to_dense: time (decode: tokens/s) and memory relative to the dense row of the same part and length."""
    dense = {
        (r["part"], r["seq_len"], r.get("batch")): r for r in rows if r["variant"] == "dense" and "ms" in r
    }
    for r in rows:
        d = dense.get((r["part"], r["seq_len"], r.get("batch")))
        if d is None or r.get("ms") is None or d.get("ms") is None:
            continue
        r["ratio_to_dense"] = r["ms"] / d["ms"]
        if r.get("peak_mem_mb") and d.get("peak_mem_mb"):
            r["mem_ratio_to_dense"] = r["peak_mem_mb"] / d["peak_mem_mb"]


# ------------------------------------------------------------------------------------ output


def format_table(rows: list[dict]) -> str:
    head = f"{'part':<11}{'variant':<12}{'N':>7}{'B':>5}{'ms':>11}{'tok/s':>13}{'peak MB':>10}{'TFLOP/s':>9}{'x dense':>9}{'mem x':>7}"
    lines = [head, "-" * len(head)]

    def f(v, fmt):
        width = int(fmt.split(".")[0].rstrip(",")) if fmt[0].isdigit() else 0
        return format(v, fmt) if isinstance(v, (int, float)) else "-".rjust(width)

    for r in rows:
        if "error" in r:
            lines.append(f"{r['part']:<11}{r['variant']:<12}{r['seq_len']:>7}{r['batch']:>5}  {r['error']}")
            continue
        lines.append(
            f"{r['part']:<11}{r['variant']:<12}{r['seq_len']:>7}{r['batch']:>5}{f(r.get('ms'), '11.3f')}"
            f"{f(r.get('tokens_per_sec'), '13,.0f')}{f(r.get('peak_mem_mb'), '10.0f')}{f(r.get('tflops'), '9.1f')}"
            f"{f(r.get('ratio_to_dense'), '9.2f')}{f(r.get('mem_ratio_to_dense'), '7.2f')}"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in ("attention", "train_step", "decode") if any(r["part"] == p for r in rows)]
    if not parts:  # e.g. parts=[reference]: its rows are a table, not a curve over N
        return
    fig, axes = plt.subplots(1, len(parts), figsize=(5 * len(parts), 4), squeeze=False)
    for ax, part in zip(axes[0], parts):
        sel = [r for r in rows if r["part"] == part and r.get("ms") is not None]
        many = part == "decode" and len({r.get("batch") for r in sel}) > 1

        def label(r, many=many):
            return f"{r['variant']} B={r['batch']}" if many else r["variant"]

        for variant in dict.fromkeys(label(r) for r in sel):
            pts = sorted(
                (r["seq_len"], r["tokens_per_sec"] if part == "decode" else r["ms"])
                for r in sel
                if label(r) == variant
            )
            ax.plot(*zip(*pts), marker="o", label=variant)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length" if part == "decode" else "sequence length N")
        ax.set_ylabel("tokens/s (all rows)" if part == "decode" else "median ms")
        ax.set_title(part)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run(cfg: dict, out_dir: Path) -> dict:
    """Run the benchmark described by a plain dict (the Hydra config) and write its outputs."""
    mode = cfg["mode"]
    if mode == "auto":
        mode = "gpu" if torch.cuda.is_available() else "cpu"
    device = torch.device("cuda" if mode == "gpu" else "cpu")
    spec = cfg[mode]
    dtype = DTYPES[cfg["dtype"]] if mode == "gpu" else torch.float32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    parts = list(cfg["parts"])
    result: dict[str, Any] = {
        "device": device_name(device),
        "mode": mode,
        "dtype": str(dtype),
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
        "rows": [],
    }
    print(f"halo_lab bench on {result['device']} ({mode} mode, {dtype})", flush=True)
    if cfg.get("check", True):
        result["check"] = check_backends(device, dtype if device.type == "cuda" else torch.float32)
        worst = max(result["check"].values())
        print(f"correctness vs reference: worst relative error {worst:.2e}", flush=True)
        if worst > (2e-2 if device.type == "cuda" else 1e-4):
            raise RuntimeError(f"HALO backend disagrees with the reference: {result['check']}")
    warmup, repeats = cfg["warmup"], cfg["repeats"]
    if "attention" in parts:
        result["rows"] += bench_attention(spec["attention"], device, dtype, warmup, repeats)
    if "train" in parts:
        result["rows"] += bench_train(spec["train"], device, dtype, warmup, repeats)
    if "reference" in parts:
        result["rows"] += bench_reference(spec["reference"], device, dtype, warmup, repeats)
    if "decode" in parts:
        result["rows"] += bench_decode(
            spec["decode"], device, dtype if device.type == "cuda" else torch.float32
        )
    add_ratios(result["rows"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result, indent=2))
    plot(result["rows"], out_dir / "bench.png", f"halo_lab bench: {result['device']}, {dtype}")
    print(format_table(result["rows"]))
    print(f"\nresults: {out_dir / 'results.json'}\nplot:    {out_dir / 'bench.png'}")
    return result


def main() -> None:
    import hydra
    from omegaconf import OmegaConf

    @hydra.main(
        version_base="1.3",
        config_path=str(Path(__file__).resolve().parent.parent / "conf"),
        config_name="bench",
    )
    def _main(cfg) -> None:
        from hydra.core.hydra_config import HydraConfig

        run(OmegaConf.to_container(cfg, resolve=True), Path(HydraConfig.get().runtime.output_dir))

    _main()


if __name__ == "__main__":
    main()
