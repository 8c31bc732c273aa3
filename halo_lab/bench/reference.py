"""The reference package's published configs (``parts=[reference]``): the training step of halo_lab's and
pyhalos's dense and HALO-S models at each config of the spec, measured in this process."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from halo_lab.bench.timing import RowSink, peak_memory_mb, step_functions, time_ms
from halo_lab.config import HaloConfig
from halo_lab.model import build_model


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
    spec: dict, device: torch.device, dtype: torch.dtype, warmup: int, repeats: int, on_row=None
) -> list[dict]:
    """Training step of both packages at the reference's published configs (its README's batch sizes,
    plain PyTorch, no compile), HALO-S and dense of each package measured in this process."""
    rows = RowSink(on_row)
    for name, point in spec["configs"].items():
        model_cfg, n, batch = dict(point["model"]), point["seq_len"], point["batch"]
        model_cfg["max_seq_len"] = max(model_cfg.get("max_seq_len", 0), n)
        makers = _makers(model_cfg)
        params, peaks, errors = _measure_memory(makers, device, n, batch, dtype)
        fitting = {key: make for key, make in makers.items() if key not in errors}
        times = _time_in_turns(fitting, device, n, batch, dtype, warmup, repeats)
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
    return rows


def _makers(model_cfg: dict) -> dict[tuple[str, str], Callable]:
    """{(package, arch): a function that builds the model}: halo_lab's dense and HALO-S, and pyhalos's
    when it is installed (a line says so when it is not)."""
    # The reference's configs as published: a window past the sequence is theirs to choose.
    ours = HaloConfig(**model_cfg, allow_full_window=True)
    makers = {("halo_lab", a): (lambda a=a: build_model(ours, a)) for a in ("dense", "halo")}
    ref = _reference_models(model_cfg)
    if ref is None:
        print("bench reference: pyhalos is not installed (pip install pyhalos==2.2.1): skipped", flush=True)
    else:
        makers.update({("pyhalos", a): make for a, make in ref.items()})
    return makers


def _measure_memory(
    makers: dict, device: torch.device, n: int, batch: int, dtype: torch.dtype
) -> tuple[dict, dict, dict]:
    """(parameter counts, peak memory in MB, errors ("OOM")) by model key. Memory first, one model at a
    time: the allocator's peak counts every live tensor."""
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
    return params, peaks, errors


def _time_in_turns(
    makers: dict, device: torch.device, n: int, batch: int, dtype: torch.dtype, warmup: int, repeats: int
) -> dict[tuple, list[float]]:
    """{key: step times in ms}, every model built and timed in turns, REFERENCE_ROUNDS times. These steps
    are host-bound, and the host's speed drifts within a process (the same HALO-S step took 47 ms and,
    later, 30 ms; experiments/bench/kernel_notes.md, section 2026-12-02c/d): models timed one after the
    other compare the drift, models timed in turns share it."""
    models = {key: _seeded(make, device) for key, make in makers.items()}
    steps = {key: step_functions(model, n, batch, dtype)[1] for key, model in models.items()}
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[tuple, list[float]] = {key: [] for key in steps}
    for _ in range(REFERENCE_ROUNDS):
        for key, step in steps.items():
            times[key].append(time_ms(step, device, 0, repeats))
    del models, steps
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return times
