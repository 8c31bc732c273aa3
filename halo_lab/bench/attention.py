"""The attention layer alone (``parts=[attention]``): forward + backward of dense attention and of each HALO
backend at B*N tokens, and the check of the fast backends against the reference that runs first."""

from __future__ import annotations

import torch

from halo_lab import graph
from halo_lab.bench.timing import RowSink, peak_memory_mb, time_ms
from halo_lab.config import HaloConfig
from halo_lab.graph import selection
from halo_lab.model import attention as attn

SELECT = dict(
    select_blocks=4,
    select_pooling="learned",
    select_score="bound",
    select_summary_bias=-4.0,
    select_token_bias=-2.0,
)


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
        # content-selected blocks at the variant's settings (variant=halo_select: 4 blocks of 16, learned
        # pooling, the bound score, the summary bias from -4, the chosen tokens' from -2); its keys per query
        # are the graph's plus the chosen blocks and the summaries. _mean: the settings of the rows before
        # 2026-12-05 (mean score, no bias)
        "triton_select": ("triton", base.replace(**SELECT)),
        "triton_select_mean": ("triton", base.replace(select_blocks=4, select_pooling="learned")),
        "masked": ("masked", base),  # SDPA with the graph as a boolean mask: auto on the CPU (CPU training)
        "reference": ("reference", base),
    }


def selection_parameters(cfg: HaloConfig, device) -> dict[str, torch.Tensor]:
    """The layer's trained selection parameters at their init (learned pooling's u, the biases), as the
    model passes them to ``halo_attention``; none without selection."""
    out = {}
    if cfg.selects and cfg.select_pooling == "learned":
        out["pool"] = torch.zeros(cfg.num_kv_heads, cfg.head_dim, device=device, requires_grad=True)
    for name, value in (("bias", cfg.select_summary_bias), ("token_bias", cfg.select_token_bias)):
        if cfg.selects and value is not None and (name != "bias" or cfg.select_summary_keys):
            out[name] = torch.full((cfg.num_kv_heads,), float(value), device=device, requires_grad=True)
    return out


def _edges(config: HaloConfig, backend: str, n: int) -> float:
    if backend == "dense":
        return n * (n + 1) / 2
    fixed = float((graph.full_neighbor_index(config, 0, 0, n, "cpu") >= 0).sum())
    return fixed + float(selection.keys_per_query(config, torch.arange(n)).sum())


def check_backends(device: torch.device, dtype: torch.dtype, n: int = 700) -> dict[str, float]:
    """Relative error of the fast backends vs the reference (values, and gradients on CUDA)."""
    errors = {}
    fixed = ("triton", "flex", "hybrid") if device.type == "cuda" else ("flex", "hybrid")
    fused = fixed[:1] if device.type == "cuda" else ()  # the content-selected blocks: fused kernels only
    cases = {
        "block": (HaloConfig(random_edges="block", graph_seed=7), fixed),
        "token": (HaloConfig(random_edges="token", graph_seed=7), fixed),
        "select": (HaloConfig(select_blocks=4, graph_seed=7), fused),  # mean score, no parameters
        # the variant's settings with both biases, its parameters off their init
        "select_variant": (HaloConfig(**SELECT, graph_seed=7), fused),
    }
    for mode, (c, backends) in cases.items():
        for backend in backends:
            errors.update(_check_one(c, backend, mode, device, dtype, n))
    return errors


def _check_one(c: HaloConfig, backend: str, mode: str, device, dtype, n: int) -> dict[str, float]:
    grads = device.type == "cuda"
    L = n + c.num_globals
    gen = torch.Generator(device=device).manual_seed(0)
    ins = [torch.randn(2, h, L, 64, device=device, dtype=dtype, generator=gen) for h in (8, 2, 2)]
    extras = selection_parameters(c, device)
    with torch.no_grad():
        for t in extras.values():
            t.add_(torch.randn(t.shape, device=device, generator=gen))
    leaves = [t.requires_grad_(grads) for t in ins] + list(extras.values())
    ref = attn.reference_attention(*[t.float() for t in ins], c, 1, 3, **extras)
    with torch.set_grad_enabled(grads):
        fast = attn.halo_attention(*ins, c, 1, 3, backend, **extras)
    errors = {f"{backend}_{mode}_out": ((fast.float() - ref).norm() / ref.norm()).item()}
    if grads:
        g = torch.randn_like(ref)
        ref_grads = torch.autograd.grad(ref, leaves, g, retain_graph=True)
        names = ["q", "k", "v", *extras]
        for name, a, b in zip(names, ref_grads, torch.autograd.grad(fast, leaves, g.to(dtype))):
            errors[f"{backend}_{mode}_d{name}"] = ((b.float() - a.float()).norm() / a.float().norm()).item()
    return errors


def bench_attention(
    spec: dict, device: torch.device, dtype: torch.dtype, warmup: int, repeats: int, on_row=None
) -> list[dict]:
    rows = RowSink(on_row)
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
            extras = selection_parameters(cfg, device)

            def step(q=q, k=k, v=v, grad=grad, backend=backend, cfg=cfg, extras=extras):
                out = (
                    attn.dense_attention(q, k, v)
                    if backend == "dense"
                    else attn.halo_attention(q, k, v, cfg, 0, 0, backend, **extras)
                )
                out.backward(grad)
                q.grad = k.grad = v.grad = None
                for t in extras.values():
                    t.grad = None

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
