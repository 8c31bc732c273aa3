"""Cached decoding (``parts=[decode]``): ``benchmark_generation`` (one model through the compiled decode step:
prefill, ms per token, tokens/s, KV-cache MB), ``kernels_per_step`` (what one step launches) and
``bench_decode`` (dense, HALO-S and HALO-S with the ring cache at each batch and context)."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from halo_lab.bench.tables import format_table
from halo_lab.bench.timing import _sync
from halo_lab.bench.train_step import _model_config
from halo_lab.model import build_model


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
        fuse_weights=True
        if gemv
        else None,  # the GEMV step runs on the fused weights (an eager CPU step too)
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


# variant: (arch, cache, HaloConfig fields over the model's); halo_select: variant=halo_select's selection
SELECT = {"select_blocks": 4, "select_pooling": "learned"}
DECODE_VARIANTS = {
    "dense": ("dense", "full", {}),
    "halo": ("halo", "full", {}),
    "halo_ring": ("halo", "ring", {}),
    "halo_select": ("halo", "full", SELECT),
}


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
            for step in spec.get("steps") or ["default"]:
                with _decoder_step(step):
                    rows += _decode_rows(
                        spec, device, dtype, variants, batch, ctx, step, prefill_at, counted, on_row
                    )
    return rows


STEPS = ("default", "persistent")


@contextlib.contextmanager
def _decoder_step(step: str):
    """``Decoder.persistent_step`` for the rows of ``step`` (``persistent``: the one-launch step at batch 1,
    halo_lab/kernels/decode_step.py), restored after."""
    if step not in STEPS:
        raise ValueError(f"decode steps={step!r}: each one of {STEPS}")
    from halo_lab.generation import Decoder

    before = Decoder.persistent_step
    Decoder.persistent_step = step == "persistent"
    try:
        yield
    finally:
        Decoder.persistent_step = before


def _decode_rows(spec, device, dtype, variants, batch, ctx, step, prefill_at, counted, on_row) -> list[dict]:
    """One row per variant at (batch, ctx); a persistent step's rows are named ``<variant>_persistent``
    with mode ``persistent``, so that their ratio is to dense's persistent row."""
    rows = []
    dense_kv = None
    for variant in variants:
        arch, cache, fields = DECODE_VARIANTS[variant]
        torch.manual_seed(0)
        config = _model_config(spec, ctx + spec["new_tokens"] + 1).replace(**fields)
        model = build_model(config, arch).to(device, dtype)
        row = {"part": "decode", "variant": variant, "seq_len": ctx, "batch": batch}
        if step != "default":
            row.update(variant=f"{variant}_{step}", mode=step)
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
                count_kernels=(variant, batch, step) not in counted,
                gemv=spec.get("triton_gemv"),
            )
            counted.add((variant, batch, step))
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
