"""How every part measures: the dtypes, a device's name, milliseconds per call, peak memory, and the
(forward, train step) closures of one model at one shape."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


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


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class RowSink(list):
    """A bench part's rows; ``on_row`` sees each one as it is appended (the partial results file: a part
    cut short by a crash or a time limit still leaves the rows before it)."""

    def __init__(self, on_row: Callable[[dict], None] | None = None):
        super().__init__()
        self.on_row = on_row

    def append(self, row: dict) -> None:
        super().append(row)
        if self.on_row is not None:
            self.on_row(row)


def partial_writer(out_dir: Path, result: dict) -> Callable[[dict], None]:
    """An ``on_row`` that rewrites ``out_dir/results.partial.json`` (``result`` with the rows so far) at
    each row: a bench cut short (a crash, a time limit) still leaves the rows measured before it."""
    rows: list[dict] = []

    def save(row: dict) -> None:
        rows.append(row)
        (out_dir / "results.partial.json").write_text(json.dumps({**result, "rows": rows}, indent=2))

    return save
