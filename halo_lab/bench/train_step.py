"""A whole training step (``parts=[train]``): dense and HALO-S (once per backend) at the same tokens per step;
``benchmark_speed`` (one model at one shape) and ``estimate_flops`` (FLOPs by part), the public helpers."""

from __future__ import annotations

import torch

from halo_lab.bench.timing import RowSink, peak_memory_mb, step_functions, time_ms
from halo_lab.config import HaloConfig
from halo_lab.model import build_model


def estimate_flops(model_or_config, seq_len: int, arch: str = "halo", device=None) -> dict[str, float]:
    """Forward FLOPs of one sequence by part (see ``HaloSModel.estimate_flops``); ``auto`` backends
    resolve on ``device`` (default: the model's, or for a config the best device here)."""
    model = model_or_config
    if isinstance(model_or_config, (HaloConfig, dict)):
        with torch.device("meta"):
            model = build_model(model_or_config, arch)
    return model.estimate_flops(seq_len, device=device)


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


def compile_blocks(model) -> None:
    """Each block ``torch.compile``d in place with ``fullgraph=True`` (issue 29: the HALO attention traced
    through its torch.library ops): a graph break anywhere in a block is an error, not a silent split."""
    for block in model.layers:
        block.compile(fullgraph=True)


def _graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


def bench_train(
    spec: dict, device: torch.device, dtype: torch.dtype, warmup: int, repeats: int, on_row=None
) -> list[dict]:
    """One row per length, model variant and mode of ``spec["modes"]`` (``eager``, ``compiled``: the blocks
    compiled with fullgraph=True, ``_compiled`` appended to the variant; default eager only)."""
    rows = RowSink(on_row)
    for n in spec["seq_lens"]:
        batch = max(1, spec["tokens"] // n)
        for variant, arch, cfg in _model_variants(spec, n):
            for mode in spec.get("modes") or ["eager"]:
                name = variant if mode == "eager" else f"{variant}_{mode}"
                rows.append(_train_row(cfg, arch, name, mode, n, batch, device, dtype, warmup, repeats))
    return rows


def _train_row(cfg, arch, variant, mode, n, batch, device, dtype, warmup, repeats) -> dict:
    if mode not in ("eager", "compiled"):
        raise ValueError(f"train.modes: {mode!r} is not a mode (eager, compiled)")
    torch.manual_seed(0)
    model = build_model(cfg, arch).to(device)
    if mode == "compiled":
        torch._dynamo.reset()  # each model traced afresh (its own guards, its own recompiles)
    breaks = _graph_breaks()
    try:
        if mode == "compiled":
            compile_blocks(model)
        r = benchmark_speed(model, n, batch, warmup, repeats, dtype)
    except torch.OutOfMemoryError:
        r = {"error": "OOM"}
    except Exception as e:  # noqa: BLE001 - a compile failure (a graph break under fullgraph) is a result
        if mode == "eager":
            raise
        r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    flops = 3 * model.estimate_flops(n)["total"] * batch
    row = {
        "part": "train_step",
        "variant": variant,
        "mode": mode,
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
    if mode == "compiled":
        row["graph_breaks"] = _graph_breaks() - breaks
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row
